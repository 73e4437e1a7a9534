//! Image folders: one subfolder per class (torchvision's `ImageFolder`),
//! on disk or inside a tar archive, decoded to `u8` samples `[C, H, W]`.
//!
//! Order follows torchvision so that labels mean the same as they would in
//! PyTorch: the classes are the subfolder names sorted, a label is its
//! class's index in that order, and within a class files are taken sorted by
//! folder, then name (torchvision sorts `os.walk`), nested folders included.
//! Files that are not `.jpg`, `.jpeg` or `.png` are skipped (a stray
//! `README` or `.DS_Store` is common), but a class without any image is an
//! error, as in torchvision.
//!
//! Listing and decoding are separate steps: labels need only the listing, so
//! an `image_labels(path)` field never decodes a pixel, and the loader lists
//! a folder (or reads an archive) once for all the fields that use it.

use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::ffi::{OsStr, OsString};
use std::fs::File;
use std::io::{BufRead, BufReader, Read};
use std::num::NonZeroUsize;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::{Component, Path, PathBuf};

use flate2::read::MultiGzDecoder;
use image::imageops::FilterType;
use image::{ColorType, DynamicImage, GrayImage, RgbImage};

use super::error::{DataError, Result};

/// How images become samples.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct ImageOptions {
    /// One channel (luma) instead of three (RGB).
    pub grayscale: bool,
    /// Resize every image to `[height, width]`; without it all images must
    /// already have one size.
    pub size: Option<[usize; 2]>,
}

/// The largest side accepted for `size`: JPEG's own limit, and far beyond
/// any image a network is trained on.
const MAX_SIDE: usize = u16::MAX as usize;

/// Where an image folder is.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Location {
    Dir(PathBuf),
    /// A folder inside a tar archive (plain or gzipped); `inner` is
    /// relative to the archive's root and empty for the root itself.
    Archive {
        archive: PathBuf,
        inner: PathBuf,
    },
}

/// Decides whether `path` is a folder on disk or goes into an archive.
///
/// A path into an archive does not exist on disk, so the first part of it
/// that does exist decides: an existing folder is an image folder, an
/// existing `.tar`, `.tar.gz` or `.tgz` file is an archive whose remaining
/// components name a folder inside it. Anything else is the operating
/// system's own error for the whole path (not found, not a directory).
pub fn locate(path: &Path) -> Result<Location> {
    for (depth, ancestor) in path.ancestors().enumerate() {
        if ancestor.as_os_str().is_empty() {
            break;
        }
        let Ok(meta) = std::fs::metadata(ancestor) else {
            continue;
        };
        if meta.is_file() && is_archive_name(ancestor) {
            let inner = path.strip_prefix(ancestor).unwrap_or(Path::new(""));
            return Ok(Location::Archive {
                archive: ancestor.to_path_buf(),
                inner: inner.to_path_buf(),
            });
        }
        if depth == 0 && meta.is_dir() {
            return Ok(Location::Dir(path.to_path_buf()));
        }
        break;
    }
    Err(folder_error(path))
}

fn is_archive_name(path: &Path) -> bool {
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().to_lowercase())
        .unwrap_or_default();
    [".tar", ".tar.gz", ".tgz"]
        .iter()
        .any(|e| name.ends_with(e))
}

/// The error `read_dir` gives for `path`, so a missing folder is reported
/// in the words of the operating system, like a missing file.
fn folder_error(path: &Path) -> DataError {
    let source = match std::fs::read_dir(path) {
        Err(e) => e,
        Ok(_) => std::io::Error::new(std::io::ErrorKind::NotFound, "not an image folder"),
    };
    DataError::DirIo {
        path: path.to_path_buf(),
        source,
    }
}

fn is_image_name(name: &OsStr) -> bool {
    let name = name.to_string_lossy().to_lowercase();
    [".jpg", ".jpeg", ".png"].iter().any(|e| name.ends_with(e))
}

/// The files of an image folder and their classes, not yet decoded.
#[derive(Debug, Clone)]
pub struct ImageList {
    path: PathBuf,
    classes: Vec<String>,
    items: Vec<Item>,
}

#[derive(Debug, Clone)]
struct Item {
    class: usize,
    /// The file, or for an archive member `archive/inner/class/name`; used
    /// to read it (on disk) and in every message.
    path: PathBuf,
    contents: Contents,
}

#[derive(Debug, Clone)]
enum Contents {
    /// Read when decoded, by the decoding thread.
    OnDisk,
    /// Read from an archive, which is streamed once in order.
    InMemory(Vec<u8>),
}

/// One file found under a class folder: its subfolder within the class
/// (`""` for most) and its name, the torchvision sort key.
struct Found<T> {
    parent: OsString,
    name: OsString,
    data: T,
}

impl ImageList {
    /// Lists the folder at `path` (on disk or in an archive).
    pub fn scan(path: &Path) -> Result<ImageList> {
        let mut lists = scan(&[path.to_path_buf()])?;
        lists.pop().ok_or_else(|| folder_error(path))
    }

    /// The path the folder was given as.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Class names, in label order.
    pub fn classes(&self) -> &[String] {
        &self.classes
    }

    pub fn len(&self) -> usize {
        self.items.len()
    }

    pub fn is_empty(&self) -> bool {
        self.items.is_empty()
    }

    /// The label of every image: its class's index.
    pub fn labels(&self) -> Vec<i32> {
        // Class counts are bounded by the number of folders, far below 2^31.
        self.items.iter().map(|i| i.class as i32).collect()
    }

    /// File paths in sample order.
    pub fn files(&self) -> impl Iterator<Item = &Path> {
        self.items.iter().map(|i| i.path.as_path())
    }

    /// Decodes every image into one buffer of `len()` samples of the
    /// returned shape `[C, H, W]`, on all cores.
    ///
    /// The first image fixes the size unless `options.size` is given. On
    /// several bad files the error names the first in sample order, so the
    /// message does not depend on thread timing.
    pub fn decode(&self, options: &ImageOptions) -> Result<(Vec<u8>, [usize; 3])> {
        if let Some(size) = options.size {
            if size.iter().any(|&s| s == 0 || s > MAX_SIDE) {
                return Err(DataError::ImageTargetSize { size });
            }
        }
        let Some(first) = self.items.first() else {
            return Err(DataError::ImageFolderEmpty {
                path: self.path.clone(),
            });
        };
        let first_image = load_one(first, options)?;
        let [height, width] = first_image.size();
        if height == 0 || width == 0 {
            // Decoders reject such files, but the chunking below needs
            // non-empty samples, so it is not left to them.
            return Err(DataError::ImageDecode {
                path: first.path.clone(),
                message: format!("the image is {height}x{width}, it has no pixels"),
            });
        }
        let shape = [first_image.channels(), height, width];
        let sample: usize = shape.iter().product();
        let too_large = || DataError::ImagesTooLarge {
            path: self.path.clone(),
            images: self.items.len(),
            shape,
            bytes: sample as u128 * self.items.len() as u128,
        };
        let total = sample.checked_mul(self.items.len()).ok_or_else(too_large)?;
        // `try_reserve` turns an impossible request into an error rather
        // than an abort.
        let mut out = Vec::new();
        out.try_reserve_exact(total).map_err(|_| too_large())?;
        out.resize(total, 0);
        let (head, rest) = out.split_at_mut(sample);
        first_image.write_chw(head);

        let check = SizeCheck {
            first: &first.path,
            size: [height, width],
        };
        let items = &self.items[1..];
        let threads = std::thread::available_parallelism()
            .map_or(1, NonZeroUsize::get)
            // Below a few dozen images a thread costs more than it saves.
            .min(items.len().div_ceil(32))
            .max(1);
        let per_thread = items.len().div_ceil(threads).max(1);
        let work = rest
            .chunks_mut(per_thread * sample)
            .zip(items.chunks(per_thread));
        std::thread::scope(|s| {
            let handles: Vec<_> = work
                .map(|(dst, items)| {
                    s.spawn(move || {
                        for (item, dst) in items.iter().zip(dst.chunks_mut(sample)) {
                            let image = load_one(item, options)?;
                            check.check(&item.path, image.size())?;
                            image.write_chw(dst);
                        }
                        Ok(())
                    })
                })
                .collect();
            // Chunks are in sample order and each stops at its first
            // error, so the first failed chunk holds the first bad file.
            let mut result = Ok(());
            for handle in handles {
                let outcome = handle.join().unwrap_or_else(|_| {
                    Err(DataError::ImageDecode {
                        path: self.path.clone(),
                        message: "an image decoding thread crashed".into(),
                    })
                });
                if result.is_ok() {
                    result = outcome;
                }
            }
            result
        })?;
        Ok((out, shape))
    }
}

/// All images must share the first image's size.
#[derive(Clone, Copy)]
struct SizeCheck<'a> {
    first: &'a Path,
    size: [usize; 2],
}

impl SizeCheck<'_> {
    fn check(&self, path: &Path, size: [usize; 2]) -> Result<()> {
        if size == self.size {
            return Ok(());
        }
        Err(DataError::ImageSizeMismatch {
            path: path.to_path_buf(),
            size,
            first: self.first.to_path_buf(),
            first_size: self.size,
        })
    }
}

/// A decoded image in the colour layout the samples use.
enum Pixels {
    Rgb(RgbImage),
    Gray(GrayImage),
}

impl Pixels {
    fn size(&self) -> [usize; 2] {
        let (w, h) = match self {
            Pixels::Rgb(i) => i.dimensions(),
            Pixels::Gray(i) => i.dimensions(),
        };
        [h as usize, w as usize]
    }

    fn channels(&self) -> usize {
        match self {
            Pixels::Rgb(_) => 3,
            Pixels::Gray(_) => 1,
        }
    }

    /// Interleaved `HWC` (as decoded) to planar `CHW` (as convolutions
    /// read it). `dst` has exactly `C * H * W` bytes.
    fn write_chw(&self, dst: &mut [u8]) {
        match self {
            Pixels::Gray(image) => {
                // Equal lengths (the size was checked); `min` keeps a
                // mistake from becoming a panic.
                let raw = image.as_raw();
                let n = dst.len().min(raw.len());
                dst[..n].copy_from_slice(&raw[..n]);
            }
            Pixels::Rgb(image) => {
                let plane = dst.len() / 3;
                let (r, gb) = dst.split_at_mut(plane);
                let (g, b) = gb.split_at_mut(plane);
                let pixels = image.as_raw().chunks_exact(3);
                for ((px, r), (g, b)) in pixels.zip(r).zip(g.iter_mut().zip(b)) {
                    (*r, *g, *b) = (px[0], px[1], px[2]);
                }
            }
        }
    }
}

/// Reads (if on disk), decodes, converts and resizes one image.
fn load_one(item: &Item, options: &ImageOptions) -> Result<Pixels> {
    let read;
    let bytes = match &item.contents {
        Contents::InMemory(bytes) => bytes.as_slice(),
        Contents::OnDisk => {
            read = std::fs::read(&item.path).map_err(|source| DataError::Io {
                path: item.path.clone(),
                source,
            })?;
            read.as_slice()
        }
    };
    let decode_error = |message: String| DataError::ImageDecode {
        path: item.path.clone(),
        message,
    };
    // The format is guessed from the content, not the extension, as
    // renamed files are common. Decoders are meant never to panic, but a
    // panic on a hostile file must still become an error naming the file.
    let image = catch_unwind(AssertUnwindSafe(|| image::load_from_memory(bytes)))
        .map_err(|_| decode_error("the decoder crashed on this file".into()))?
        .map_err(|e| decode_error(e.to_string()))?;
    let pixels = if options.grayscale {
        Pixels::Gray(to_gray(image))
    } else {
        // Like PIL's `convert("RGB")`: grey is replicated, alpha dropped.
        Pixels::Rgb(image.into_rgb8())
    };
    let Some([height, width]) = options.size else {
        return Ok(pixels);
    };
    if pixels.size() == [height, width] {
        return Ok(pixels);
    }
    // Checked by `decode` against MAX_SIDE, so the casts are exact.
    let (w, h) = (width as u32, height as u32);
    // Triangle is bilinear; when shrinking, the image crate widens the
    // filter by the scale factor, which antialiases like torchvision's
    // `Resize` on PIL images.
    Ok(match pixels {
        Pixels::Rgb(i) => Pixels::Rgb(image::imageops::resize(&i, w, h, FilterType::Triangle)),
        Pixels::Gray(i) => Pixels::Gray(image::imageops::resize(&i, w, h, FilterType::Triangle)),
    })
}

/// Luma as PIL's `convert("L")` computes it (ITU-R 601-2, in 16-bit fixed
/// point), which is what torchvision's `Grayscale` gives; the image crate's
/// own conversion uses different (Rec. 709) weights. Images that are grey
/// already keep their values.
fn to_gray(image: DynamicImage) -> GrayImage {
    match image.color() {
        ColorType::L8 | ColorType::La8 | ColorType::L16 | ColorType::La16 => image.into_luma8(),
        _ => {
            let rgb = image.into_rgb8();
            let (w, h) = rgb.dimensions();
            let luma = rgb
                .as_raw()
                .chunks_exact(3)
                .map(|p| {
                    let l =
                        u32::from(p[0]) * 19595 + u32::from(p[1]) * 38470 + u32::from(p[2]) * 7471;
                    // At most 255 * 65536 + 0x8000 >> 16 = 255: fits a byte.
                    ((l + 0x8000) >> 16) as u8
                })
                .collect();
            // The buffer has exactly w * h values, so this cannot fail.
            GrayImage::from_raw(w, h, luma).unwrap_or_default()
        }
    }
}

/// Lists several image folders, reading each archive among them once even
/// when several folders (say `train` and `test`) lie inside it. The result
/// is in the order of `paths`.
pub fn scan(paths: &[PathBuf]) -> Result<Vec<ImageList>> {
    // Each path gets its own outcome so that, of several bad paths, the
    // error names the first in order, whether a folder or an archive.
    let mut lists: Vec<Option<Result<ImageList>>> = paths.iter().map(|_| None).collect();
    let mut archives: BTreeMap<PathBuf, Vec<(usize, PathBuf)>> = BTreeMap::new();
    for (k, path) in paths.iter().enumerate() {
        match locate(path) {
            Ok(Location::Dir(dir)) => lists[k] = Some(list_dir(&dir)),
            Ok(Location::Archive { archive, inner }) => {
                archives.entry(archive).or_default().push((k, inner));
            }
            Err(e) => lists[k] = Some(Err(e)),
        }
    }
    let first_error = lists
        .iter()
        .position(|l| matches!(l, Some(Err(_))))
        .unwrap_or(usize::MAX);
    for (archive, wanted) in archives {
        // Indices were pushed in order: the first is the smallest.
        let Some(&(first, _)) = wanted.first() else {
            continue;
        };
        if first > first_error {
            continue; // an earlier path failed; no need to read it
        }
        let inners: Vec<PathBuf> = wanted.iter().map(|(_, inner)| inner.clone()).collect();
        match read_archive(&archive, &inners) {
            Ok(read) => {
                for ((k, _), list) in wanted.into_iter().zip(read) {
                    lists[k] = Some(list);
                }
            }
            Err(e) => lists[first] = Some(Err(e)),
        }
    }
    let mut out = Vec::with_capacity(paths.len());
    for (list, path) in lists.into_iter().zip(paths) {
        // A slot left empty lies after an error, which is returned first.
        out.push(list.unwrap_or_else(|| Err(folder_error(path)))?);
    }
    Ok(out)
}

/// Class names as folder names sort, the order torchvision uses.
fn assemble<T>(
    root: &Path,
    classes: BTreeMap<OsString, Vec<Found<T>>>,
    contents: impl Fn(T) -> Contents,
) -> Result<ImageList> {
    if classes.is_empty() {
        return Err(DataError::ImageFolderEmpty {
            path: root.to_path_buf(),
        });
    }
    let mut names = Vec::with_capacity(classes.len());
    let mut items = Vec::new();
    for (class, (name, mut files)) in classes.into_iter().enumerate() {
        let class_name = name.to_string_lossy().into_owned();
        if files.is_empty() {
            return Err(DataError::ImageClassEmpty {
                path: root.join(&name),
                class: class_name,
            });
        }
        files.sort_by(|a, b| (&a.parent, &a.name).cmp(&(&b.parent, &b.name)));
        for f in files {
            let mut path = root.join(&name);
            if !f.parent.is_empty() {
                path.push(&f.parent);
            }
            path.push(&f.name);
            items.push(Item {
                class,
                path,
                contents: contents(f.data),
            });
        }
        names.push(class_name);
    }
    Ok(ImageList {
        path: root.to_path_buf(),
        classes: names,
        items,
    })
}

fn list_dir(root: &Path) -> Result<ImageList> {
    let dir_io = |source| DataError::DirIo {
        path: root.to_path_buf(),
        source,
    };
    let mut classes: BTreeMap<OsString, Vec<Found<()>>> = BTreeMap::new();
    for entry in std::fs::read_dir(root).map_err(dir_io)? {
        let entry = entry.map_err(dir_io)?;
        // `metadata` follows symlinks: a linked class folder counts, as
        // with torchvision's `entry.is_dir()`.
        if std::fs::metadata(entry.path()).is_ok_and(|m| m.is_dir()) {
            classes.insert(entry.file_name(), Vec::new());
        }
    }
    for (class, files) in classes.iter_mut() {
        let mut visited = HashSet::new();
        walk(&root.join(class), OsString::new(), files, &mut visited)?;
    }
    assemble(root, classes, |()| Contents::OnDisk)
}

/// Collects the image files under `dir`, following symlinks like
/// torchvision (`os.walk(followlinks=True)`) but visiting each real folder
/// once, so a link cycle cannot loop forever.
fn walk(
    dir: &Path,
    parent: OsString,
    out: &mut Vec<Found<()>>,
    visited: &mut HashSet<PathBuf>,
) -> Result<()> {
    let io = |source| DataError::DirIo {
        path: dir.to_path_buf(),
        source,
    };
    let real = std::fs::canonicalize(dir).map_err(io)?;
    if !visited.insert(real) {
        return Ok(());
    }
    for entry in std::fs::read_dir(dir).map_err(io)? {
        let entry = entry.map_err(io)?;
        let path = entry.path();
        let Ok(meta) = std::fs::metadata(&path) else {
            continue; // a dangling link: nothing to read
        };
        let name = entry.file_name();
        if meta.is_dir() {
            walk(&path, join_rel(&parent, &name), out, visited)?;
        } else if meta.is_file() && is_image_name(&name) {
            out.push(Found {
                parent: parent.clone(),
                name,
                data: (),
            });
        }
    }
    Ok(())
}

/// `parent/name` with `/` whatever the platform, so sorting matches the
/// string order torchvision sorts by.
fn join_rel(parent: &OsStr, name: &OsStr) -> OsString {
    let mut out = parent.to_os_string();
    if !out.is_empty() {
        out.push("/");
    }
    out.push(name);
    out
}

/// A path's plain components; `None` for `..`, which cannot lie inside
/// any folder we look for.
fn normal_components(path: &Path) -> Option<Vec<&OsStr>> {
    let mut out = Vec::new();
    for c in path.components() {
        match c {
            Component::Normal(n) => out.push(n),
            Component::CurDir | Component::RootDir | Component::Prefix(_) => {}
            Component::ParentDir => return None,
        }
    }
    Some(out)
}

/// Streams a tar archive (gzipped or not, by its magic bytes) once and
/// collects the image folders `inners` from it: an error for the archive as
/// a whole, else one outcome per folder.
fn read_archive(archive: &Path, inners: &[PathBuf]) -> Result<Vec<Result<ImageList>>> {
    let io = |source| DataError::Io {
        path: archive.to_path_buf(),
        source,
    };
    let bad = |e: std::io::Error| DataError::Archive {
        path: archive.to_path_buf(),
        message: e.to_string(),
    };
    let mut reader = BufReader::with_capacity(1 << 16, File::open(archive).map_err(io)?);
    let gzipped = reader.fill_buf().map_err(io)?.starts_with(&[0x1f, 0x8b]);
    let stream: Box<dyn Read> = if gzipped {
        Box::new(MultiGzDecoder::new(reader))
    } else {
        Box::new(reader)
    };
    // A folder with `..` in it cannot be inside the archive: it matches
    // nothing and is reported as missing.
    let wanted: Vec<Option<Vec<&OsStr>>> = inners.iter().map(|p| normal_components(p)).collect();
    let mut classes: Vec<BTreeMap<OsString, Vec<Found<Vec<u8>>>>> =
        inners.iter().map(|_| BTreeMap::new()).collect();
    let mut found = vec![false; inners.len()];
    let mut top: BTreeSet<String> = BTreeSet::new();

    let mut tar = tar::Archive::new(stream);
    for entry in tar.entries().map_err(bad)? {
        let mut entry = entry.map_err(bad)?;
        let kind = entry.header().entry_type();
        let (is_dir, is_file) = (kind.is_dir(), kind.is_file());
        let path = entry.path().map_err(bad)?.into_owned();
        let Some(parts) = normal_components(&path) else {
            continue;
        };
        if let Some(first) = parts.first() {
            top.insert(first.to_string_lossy().into_owned());
        }
        // An image wanted by several folders (`""` and `train`) is read
        // once; the last of them takes the bytes, the others a copy.
        let mut takers: Vec<(usize, OsString, OsString, OsString)> = Vec::new();
        for (k, inner) in wanted.iter().enumerate() {
            let Some(rest) = inner
                .as_ref()
                .and_then(|i| parts.strip_prefix(i.as_slice()))
            else {
                continue;
            };
            found[k] |= is_dir || !rest.is_empty();
            match rest {
                [class] if is_dir => {
                    classes[k].entry(class.to_os_string()).or_default();
                }
                [class, within @ .., name] if is_file => {
                    // A file makes its class exist even when the archive
                    // has no entry for the folder itself.
                    classes[k].entry(class.to_os_string()).or_default();
                    if is_image_name(name) {
                        let parent = within
                            .iter()
                            .fold(OsString::new(), |acc, c| join_rel(&acc, c));
                        takers.push((k, class.to_os_string(), parent, name.to_os_string()));
                    }
                }
                _ => {}
            }
        }
        if takers.is_empty() {
            continue;
        }
        // The header's size is only a hint: capped, so a forged one cannot
        // force a huge allocation.
        let mut bytes = Vec::with_capacity(entry.size().min(1 << 24) as usize);
        entry.read_to_end(&mut bytes).map_err(bad)?;
        let last = takers.len() - 1;
        for (t, (k, class, parent, name)) in takers.into_iter().enumerate() {
            let data = if t == last {
                std::mem::take(&mut bytes)
            } else {
                bytes.clone()
            };
            classes[k]
                .entry(class)
                .or_default()
                .push(Found { parent, name, data });
        }
    }
    let lists = inners.iter().zip(classes).zip(found);
    Ok(lists
        .map(|((inner, classes), found)| {
            if !found {
                return Err(DataError::ArchiveNoFolder {
                    path: archive.to_path_buf(),
                    inner: inner.display().to_string(),
                    top: top_level_note(&top),
                });
            }
            assemble(&archive.join(inner), classes, Contents::InMemory)
        })
        .collect())
}

fn top_level_note(top: &BTreeSet<String>) -> String {
    const SHOWN: usize = 8;
    if top.is_empty() {
        return "none, the archive is empty".into();
    }
    let mut names: Vec<String> = top.iter().take(SHOWN).map(|t| format!("`{t}`")).collect();
    if top.len() > SHOWN {
        names.push(format!("and {} more", top.len() - SHOWN));
    }
    names.join(", ")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::data::testutil::{gzip, TempDir};
    use image::{ImageFormat, Rgb};
    use std::io::Cursor;

    /// A `w`x`h` RGB image whose pixel (x, y) is (base + x, base + y, base),
    /// encoded as `format`.
    fn encoded(w: u32, h: u32, base: u8, format: ImageFormat) -> Vec<u8> {
        let img = RgbImage::from_fn(w, h, |x, y| Rgb([base + x as u8, base + y as u8, base]));
        let mut out = Cursor::new(Vec::new());
        DynamicImage::ImageRgb8(img)
            .write_to(&mut out, format)
            .expect("encode test image");
        out.into_inner()
    }

    fn png(w: u32, h: u32, base: u8) -> Vec<u8> {
        encoded(w, h, base, ImageFormat::Png)
    }

    /// `cat/` with two PNGs, `dog/` with one PNG and a non-image file;
    /// listed in an order unlike the sorted one.
    fn folder(dir: &TempDir) -> PathBuf {
        let root = dir.path().join("pets");
        for class in ["dog", "cat"] {
            std::fs::create_dir_all(root.join(class)).unwrap();
        }
        std::fs::write(root.join("dog/1.png"), png(3, 2, 100)).unwrap();
        std::fs::write(root.join("dog/notes.txt"), b"not an image").unwrap();
        std::fs::write(root.join("cat/b.png"), png(3, 2, 20)).unwrap();
        std::fs::write(root.join("cat/a.PNG"), png(3, 2, 10)).unwrap();
        // A stray file at the top level is not a class.
        std::fs::write(root.join("README"), b"").unwrap();
        root
    }

    /// The planar `[3, h, w]` sample `png(w, h, base)` decodes to.
    fn planar(w: usize, h: usize, base: u8) -> Vec<u8> {
        let mut out = Vec::new();
        for c in 0..3 {
            for y in 0..h {
                for x in 0..w {
                    out.push(base + [x as u8, y as u8, 0][c]);
                }
            }
        }
        out
    }

    #[test]
    fn folder_classes_sorted_and_chw_layout() {
        let dir = TempDir::new("images-folder");
        let root = folder(&dir);
        let list = ImageList::scan(&root).unwrap();
        assert_eq!(list.classes(), ["cat", "dog"]);
        assert_eq!(list.labels(), [0, 0, 1]);
        let names: Vec<_> = list
            .files()
            .map(|p| p.strip_prefix(&root).unwrap().display().to_string())
            .collect();
        assert_eq!(names, ["cat/a.PNG", "cat/b.png", "dog/1.png"]);
        let (pixels, shape) = list.decode(&ImageOptions::default()).unwrap();
        assert_eq!(shape, [3, 2, 3]);
        let want: Vec<u8> = [planar(3, 2, 10), planar(3, 2, 20), planar(3, 2, 100)].concat();
        assert_eq!(pixels, want);
    }

    #[test]
    fn nested_files_sort_like_torchvision() {
        let dir = TempDir::new("images-nested");
        let root = dir.path().join("d");
        std::fs::create_dir_all(root.join("c/sub")).unwrap();
        std::fs::write(root.join("c/sub/a.png"), png(1, 1, 0)).unwrap();
        std::fs::write(root.join("c/z.png"), png(1, 1, 1)).unwrap();
        let list = ImageList::scan(&root).unwrap();
        let names: Vec<_> = list
            .files()
            .map(|p| p.strip_prefix(&root).unwrap().display().to_string())
            .collect();
        // os.walk sorted: the class folder's own files, then its subfolders.
        assert_eq!(names, ["c/z.png", "c/sub/a.png"]);
    }

    #[test]
    fn many_images_decode_in_parallel_in_order() {
        let dir = TempDir::new("images-many");
        let root = dir.path().join("set");
        for class in ["a", "b"] {
            std::fs::create_dir_all(root.join(class)).unwrap();
            for i in 0..60u8 {
                let name = root.join(class).join(format!("{i:03}.png"));
                std::fs::write(name, png(2, 2, i)).unwrap();
            }
        }
        let list = ImageList::scan(&root).unwrap();
        let (pixels, shape) = list.decode(&ImageOptions::default()).unwrap();
        assert_eq!(shape, [3, 2, 2]);
        let want: Vec<u8> = (0..120u8).flat_map(|i| planar(2, 2, i % 60)).collect();
        assert_eq!(pixels, want);
        assert_eq!(list.labels().iter().filter(|&&l| l == 1).count(), 60);
    }

    #[test]
    fn jpeg_decodes_close_to_the_original() {
        let dir = TempDir::new("images-jpeg");
        let root = dir.path().join("j");
        std::fs::create_dir_all(root.join("only")).unwrap();
        // A flat colour survives JPEG almost exactly.
        let img = RgbImage::from_pixel(8, 8, Rgb([200, 100, 50]));
        let mut jpg = Cursor::new(Vec::new());
        img.write_to(&mut jpg, ImageFormat::Jpeg).unwrap();
        std::fs::write(root.join("only/x.jpg"), jpg.into_inner()).unwrap();
        let (pixels, shape) = ImageList::scan(&root)
            .unwrap()
            .decode(&ImageOptions::default())
            .unwrap();
        assert_eq!(shape, [3, 8, 8]);
        for (c, want) in [200i32, 100, 50].into_iter().enumerate() {
            let plane = &pixels[c * 64..(c + 1) * 64];
            assert!(
                plane.iter().all(|&v| (i32::from(v) - want).abs() <= 3),
                "{plane:?}"
            );
        }
    }

    #[test]
    fn grayscale_uses_pil_weights() {
        let dir = TempDir::new("images-gray");
        let root = dir.path().join("g");
        std::fs::create_dir_all(root.join("k")).unwrap();
        let img = RgbImage::from_pixel(2, 1, Rgb([255, 0, 0]));
        let mut buf = Cursor::new(Vec::new());
        img.write_to(&mut buf, ImageFormat::Png).unwrap();
        std::fs::write(root.join("k/red.png"), buf.into_inner()).unwrap();
        let mut buf = Cursor::new(Vec::new());
        GrayImage::from_pixel(2, 1, image::Luma([77]))
            .write_to(&mut buf, ImageFormat::Png)
            .unwrap();
        std::fs::write(root.join("k/so_grey.png"), buf.into_inner()).unwrap();
        let options = ImageOptions {
            grayscale: true,
            size: None,
        };
        let (pixels, shape) = ImageList::scan(&root).unwrap().decode(&options).unwrap();
        assert_eq!(shape, [1, 1, 2]);
        // PIL: L = R * 299/1000 + ... = 76.245 -> 76; a grey PNG keeps 77.
        assert_eq!(pixels, [76, 76, 77, 77]);
        // Without the flag a grey image becomes three equal planes.
        let (pixels, shape) = ImageList::scan(&root)
            .unwrap()
            .decode(&ImageOptions::default())
            .unwrap();
        assert_eq!(shape, [3, 1, 2]);
        assert_eq!(&pixels[6..], [77; 6]);
    }

    #[test]
    fn resize_makes_every_image_one_size() {
        let dir = TempDir::new("images-resize");
        let root = dir.path().join("r");
        std::fs::create_dir_all(root.join("k")).unwrap();
        std::fs::write(root.join("k/a.png"), png(4, 2, 0)).unwrap();
        let flat = RgbImage::from_pixel(6, 6, Rgb([9, 99, 199]));
        let mut buf = Cursor::new(Vec::new());
        flat.write_to(&mut buf, ImageFormat::Png).unwrap();
        std::fs::write(root.join("k/b.png"), buf.into_inner()).unwrap();
        let list = ImageList::scan(&root).unwrap();
        // Without `size` the two sizes clash.
        let err = list
            .decode(&ImageOptions::default())
            .unwrap_err()
            .to_string();
        assert_eq!(
            err,
            format!(
                "{}: image is 6x6 (height x width) but the first image, {}, is 2x4; \
                 all images must have one size, or give `size: [h, w]` to resize them",
                root.join("k/b.png").display(),
                root.join("k/a.png").display()
            )
        );
        let options = ImageOptions {
            grayscale: false,
            size: Some([3, 2]),
        };
        let (pixels, shape) = list.decode(&options).unwrap();
        assert_eq!(shape, [3, 3, 2]);
        assert_eq!(pixels.len(), 2 * 18);
        // A flat image stays flat under a bilinear filter.
        assert_eq!(&pixels[18..], [[9; 6], [99; 6], [199; 6]].concat());
        let bad = ImageOptions {
            grayscale: false,
            size: Some([0, 2]),
        };
        assert_eq!(
            list.decode(&bad).unwrap_err().to_string(),
            "image size [0, 2] is invalid: both sides must be between 1 and 65535"
        );
    }

    #[test]
    fn corrupt_missing_and_empty_folders_are_errors() {
        let dir = TempDir::new("images-errors");
        let root = folder(&dir);
        let broken = root.join("dog/2.png");
        let mut bytes = png(3, 2, 0);
        bytes.truncate(bytes.len() / 2);
        std::fs::write(&broken, &bytes).unwrap();
        let err = ImageList::scan(&root)
            .unwrap()
            .decode(&ImageOptions::default())
            .unwrap_err()
            .to_string();
        assert!(
            err.starts_with(&format!("{}: cannot decode image: ", broken.display())),
            "{err}"
        );
        std::fs::write(&broken, b"hello").unwrap();
        let err = ImageList::scan(&root)
            .unwrap()
            .decode(&ImageOptions::default())
            .unwrap_err()
            .to_string();
        assert!(err.contains("could not be determined"), "{err}");

        let missing = dir.path().join("nope");
        let err = ImageList::scan(&missing).unwrap_err().to_string();
        assert!(
            err.starts_with(&format!("{}: cannot read folder: ", missing.display())),
            "{err}"
        );
        let empty = dir.path().join("empty");
        std::fs::create_dir_all(&empty).unwrap();
        assert_eq!(
            ImageList::scan(&empty).unwrap_err().to_string(),
            format!(
                "{}: no class folders: an image folder holds one subfolder per class \
                 (`cat/0001.jpg`, `dog/0002.png`, ...)",
                empty.display()
            )
        );
        std::fs::create_dir_all(empty.join("bird")).unwrap();
        std::fs::write(empty.join("bird/x.bmp"), b"").unwrap();
        assert_eq!(
            ImageList::scan(&empty).unwrap_err().to_string(),
            format!(
                "{}: class folder `bird` holds no images (supported: .jpg, .jpeg, .png)",
                empty.join("bird").display()
            )
        );
        // A plain file is not a folder.
        let file = dir.write("file.png", &png(1, 1, 0));
        let err = ImageList::scan(&file).unwrap_err().to_string();
        assert!(err.contains("cannot read folder"), "{err}");
    }

    /// A tar archive of `files` (path, bytes), directories implied.
    fn tar_of(files: &[(&str, Vec<u8>)]) -> Vec<u8> {
        let mut builder = tar::Builder::new(Vec::new());
        for (path, bytes) in files {
            let mut header = tar::Header::new_gnu();
            header.set_size(bytes.len() as u64);
            header.set_mode(0o644);
            header.set_cksum();
            builder.append_data(&mut header, path, &bytes[..]).unwrap();
        }
        builder.into_inner().unwrap()
    }

    #[test]
    fn truncated_or_flipped_archives_are_errors_not_panics() {
        let dir = TempDir::new("images-tar-cut");
        let tar = tar_of(&[
            ("t/a/0.png", png(2, 2, 0)),
            ("t/b/0.png", png(2, 2, 1)),
            ("t/b/1.jpg", encoded(4, 4, 7, ImageFormat::Jpeg)),
        ]);
        for (name, bytes) in [("cut.tar", tar.clone()), ("cut.tar.gz", gzip(&tar))] {
            let step = (bytes.len() / 40).max(1);
            for len in (0..bytes.len()).step_by(step) {
                let path = dir.write(name, &bytes[..len]);
                if let Ok(list) = ImageList::scan(&path.join("t")) {
                    let _ = list.decode(&ImageOptions::default());
                }
                let mut flipped = bytes.clone();
                flipped[len] ^= 0x55;
                let path = dir.write(name, &flipped);
                if let Ok(list) = ImageList::scan(&path.join("t")) {
                    let _ = list.decode(&ImageOptions::default());
                }
            }
        }
    }

    #[test]
    fn folders_inside_tar_and_tar_gz_archives() {
        let dir = TempDir::new("images-tar");
        let files = [
            ("./set/train/dog/0.png", png(2, 2, 100)),
            ("./set/train/cat/1.png", png(2, 2, 20)),
            ("./set/train/cat/0.png", png(2, 2, 10)),
            ("./set/test/dog/0.png", png(2, 2, 50)),
            ("./set/test/cat/0.png", png(2, 2, 5)),
            ("./set/test/cat/readme.md", b"# hi".to_vec()),
        ];
        let tar = tar_of(&files);
        let plain = dir.write("set.tar", &tar);
        let packed = dir.write("set.TGZ", &gzip(&tar));
        for archive in [&plain, &packed] {
            let train = archive.join("set/train");
            assert_eq!(
                locate(&train).unwrap(),
                Location::Archive {
                    archive: archive.to_path_buf(),
                    inner: PathBuf::from("set/train")
                }
            );
            let lists = scan(&[train.clone(), archive.join("set/test")]).unwrap();
            let (pixels, shape) = lists[0].decode(&ImageOptions::default()).unwrap();
            assert_eq!(shape, [3, 2, 2]);
            let want = [planar(2, 2, 10), planar(2, 2, 20), planar(2, 2, 100)].concat();
            assert_eq!(pixels, want);
            assert_eq!(lists[0].labels(), [0, 0, 1]);
            assert_eq!(lists[1].labels(), [0, 1]);
            assert_eq!(
                lists[1].files().next().unwrap(),
                archive.join("set/test/cat/0.png")
            );
            let err = ImageList::scan(&archive.join("set/valid"))
                .unwrap_err()
                .to_string();
            assert_eq!(
                err,
                format!(
                    "{}: the archive has no folder `set/valid` (its top-level entries: `set`)",
                    archive.display()
                )
            );
        }
        let err = ImageList::scan(&plain.join("set/../set/train"))
            .unwrap_err()
            .to_string();
        assert!(err.contains("has no folder `set/../set/train`"), "{err}");
        // Of several bad paths, the first is reported, archive or not.
        let err = scan(&[plain.join("set/nope"), dir.path().join("nope")])
            .unwrap_err()
            .to_string();
        assert!(err.contains("has no folder `set/nope`"), "{err}");
        let err = scan(&[dir.path().join("nope"), plain.join("set/nope")])
            .unwrap_err()
            .to_string();
        assert!(err.contains("cannot read folder"), "{err}");
        // The archive root itself can be the image folder.
        let flat = dir.write("flat.tar", &tar_of(&[("a/x.png", png(1, 1, 0))]));
        assert_eq!(ImageList::scan(&flat).unwrap().classes(), ["a"]);
        // Errors inside an archive name the member.
        let bad = tar_of(&[("k/ok.png", png(1, 1, 0)), ("k/zz.png", b"junk".to_vec())]);
        let bad = dir.write("bad.tar.gz", &gzip(&bad));
        let err = ImageList::scan(&bad)
            .unwrap()
            .decode(&ImageOptions::default())
            .unwrap_err()
            .to_string();
        assert!(
            err.starts_with(&format!(
                "{}: cannot decode image",
                bad.join("k/zz.png").display()
            )),
            "{err}"
        );
        // Not a tar file at all.
        let junk = dir.write("junk.tar", &[7u8; 1000]);
        let err = ImageList::scan(&junk).unwrap_err().to_string();
        assert!(
            err.starts_with(&format!("{}: cannot read tar archive", junk.display())),
            "{err}"
        );
    }
}
