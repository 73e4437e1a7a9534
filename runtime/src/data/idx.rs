//! The IDX format (MNIST, Fashion-MNIST), plain or gzipped.
//!
//! Layout: two zero bytes, a type byte, a rank byte, `rank` big-endian `u32`
//! dimensions, then the elements in big-endian row-major order. The whole
//! file must be exactly that long: a short file usually means an interrupted
//! download and extra bytes usually mean a wrong dimension, and both are
//! reported rather than guessed around.

use std::borrow::Cow;
use std::ops::Range;
use std::path::{Path, PathBuf};

use super::error::{DataError, Result};
use super::source::{read_maybe_gz, Bytes};
use super::storage::{ElemType, Storage};

/// An IDX array as stored on disk.
///
/// Fields are private so that `dims` always describes `data` exactly; the
/// row accessors rely on it.
#[derive(Debug, Clone, PartialEq)]
pub struct IdxArray {
    dtype: ElemType,
    dims: Vec<usize>,
    data: Storage,
    path: PathBuf,
}

/// Loads an IDX file, decompressing it first if it starts with the gzip
/// magic bytes.
pub fn load(path: impl AsRef<Path>) -> Result<IdxArray> {
    let path = path.as_ref();
    let loaded = read_maybe_gz(path)?;
    match loaded.bytes {
        // A plain file is parsed straight from its map.
        Bytes::Mapped(map) => parse_bytes(Cow::Borrowed(&map), path, loaded.gzipped),
        Bytes::Owned(bytes) => parse(bytes, path, loaded.gzipped),
    }
}

/// Parses IDX bytes already in memory. `path` is used only in messages and
/// `gzipped` tells them that offsets refer to decompressed data.
pub fn parse(bytes: Vec<u8>, path: &Path, gzipped: bool) -> Result<IdxArray> {
    parse_bytes(Cow::Owned(bytes), path, gzipped)
}

/// [`parse`] on owned bytes (whose buffer `u8` data reuses) or borrowed
/// ones (a memory map, copied out once).
fn parse_bytes(bytes: Cow<'_, [u8]>, path: &Path, gzipped: bool) -> Result<IdxArray> {
    let len = bytes.len();
    let magic = &bytes[..len.min(2)];
    if magic.iter().any(|&b| b != 0) {
        return Err(DataError::IdxBadMagic {
            path: path.to_path_buf(),
            found: magic.to_vec(),
            gzipped,
        });
    }
    let truncated_header = |expected: usize| DataError::IdxTruncatedHeader {
        path: path.to_path_buf(),
        expected,
        found: len,
        gzipped,
    };
    let Some(&code) = bytes.get(2) else {
        return Err(truncated_header(4));
    };
    let Some(dtype) = ElemType::from_idx_code(code) else {
        return Err(DataError::IdxUnknownType {
            path: path.to_path_buf(),
            code,
            gzipped,
        });
    };
    let Some(&rank) = bytes.get(3) else {
        return Err(truncated_header(4));
    };
    if rank == 0 {
        return Err(DataError::IdxZeroRank {
            path: path.to_path_buf(),
            gzipped,
        });
    }
    let header_len = 4 + 4 * usize::from(rank);
    let Some(dim_bytes) = bytes.get(4..header_len) else {
        return Err(truncated_header(header_len));
    };
    let (dim_words, _) = dim_bytes.as_chunks::<4>();
    let dims: Vec<usize> = dim_words
        .iter()
        .map(|w| u32::from_be_bytes(*w) as usize)
        .collect();

    let payload_len = dims
        .iter()
        .try_fold(dtype.size_bytes(), |acc, &d| acc.checked_mul(d))
        .ok_or_else(|| DataError::IdxTooLarge {
            path: path.to_path_buf(),
            dims: dims.clone(),
        })?;
    let available = len - header_len;
    if available < payload_len {
        return Err(DataError::IdxTruncatedPayload {
            path: path.to_path_buf(),
            expected: payload_len,
            offset: header_len,
            found: available,
            gzipped,
        });
    }
    if available > payload_len {
        return Err(DataError::IdxTrailingData {
            path: path.to_path_buf(),
            extra: available - payload_len,
            offset: header_len + payload_len,
            gzipped,
        });
    }

    let payload = &bytes[header_len..];
    let data = match dtype {
        ElemType::U8 => match bytes {
            // Reuse the buffer: for MNIST images this is the whole file.
            Cow::Owned(mut bytes) => {
                bytes.drain(..header_len);
                Storage::U8(bytes)
            }
            Cow::Borrowed(mapped) => Storage::U8(mapped[header_len..].to_vec()),
        },
        ElemType::I8 => Storage::I8(payload.iter().map(|&b| b as i8).collect()),
        ElemType::I16 => {
            let (words, _) = payload.as_chunks::<2>();
            Storage::I16(words.iter().map(|w| i16::from_be_bytes(*w)).collect())
        }
        ElemType::I32 => {
            let (words, _) = payload.as_chunks::<4>();
            Storage::I32(words.iter().map(|w| i32::from_be_bytes(*w)).collect())
        }
        ElemType::F32 => {
            let (words, _) = payload.as_chunks::<4>();
            Storage::F32(words.iter().map(|w| f32::from_be_bytes(*w)).collect())
        }
        ElemType::F64 => {
            let (words, _) = payload.as_chunks::<8>();
            Storage::F64(words.iter().map(|w| f64::from_be_bytes(*w)).collect())
        }
    };
    Ok(IdxArray {
        dtype,
        dims,
        data,
        path: path.to_path_buf(),
    })
}

impl IdxArray {
    pub fn dtype(&self) -> ElemType {
        self.dtype
    }

    pub fn dims(&self) -> &[usize] {
        &self.dims
    }

    pub fn data(&self) -> &Storage {
        &self.data
    }

    /// The file this array was loaded from, kept so later errors (such as a
    /// sample-count mismatch in a dataset) can name it.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Splits the array into its parts without copying the data.
    pub fn into_parts(self) -> (ElemType, Vec<usize>, Storage, PathBuf) {
        (self.dtype, self.dims, self.data, self.path)
    }

    /// Length of the first dimension: samples, for every MNIST-style file.
    pub fn rows(&self) -> usize {
        self.dims.first().copied().unwrap_or(0)
    }

    /// Elements per row (the product of the remaining dimensions).
    pub fn row_len(&self) -> usize {
        self.dims.iter().skip(1).product()
    }

    fn element_range(&self, rows: &Range<usize>) -> Result<Range<usize>> {
        let n = self.rows();
        if rows.start > rows.end || rows.end > n {
            return Err(DataError::RowRange {
                context: self.path.display().to_string(),
                start: rows.start,
                end: rows.end,
                rows: n,
            });
        }
        // Cannot overflow: the product of all dims fitted when loading.
        let row_len = self.row_len();
        Ok(rows.start * row_len..rows.end * row_len)
    }

    /// Rows `rows` converted to `f32`, for feeding a network directly.
    pub fn rows_f32(&self, rows: Range<usize>) -> Result<Vec<f32>> {
        let range = self.element_range(&rows)?;
        let mut out = Vec::with_capacity(range.len());
        self.data.extend_f32(range, &mut out)?;
        Ok(out)
    }

    /// Rows `rows` as `i32`, for label files; float files must hold exact
    /// integers.
    pub fn rows_i32(&self, rows: Range<usize>) -> Result<Vec<i32>> {
        let range = self.element_range(&rows)?;
        let mut out = Vec::with_capacity(range.len());
        self.data
            .extend_i32(range, &mut out, &self.path.display().to_string())?;
        Ok(out)
    }
}

/// Encodes an array as IDX bytes; the tests use it to build files, and it is
/// handy for writing small fixtures or caching preprocessed data.
///
/// Returns `None` when the result could not be loaded back: more than 255
/// dimensions, or dimensions that do not multiply to `data.len()`.
pub fn encode(dims: &[u32], data: &Storage) -> Option<Vec<u8>> {
    let rank = u8::try_from(dims.len()).ok()?;
    let count = dims
        .iter()
        .try_fold(1usize, |acc, &d| acc.checked_mul(d as usize))?;
    if count != data.len() {
        return None;
    }
    let code = match data.elem() {
        ElemType::U8 => 0x08,
        ElemType::I8 => 0x09,
        ElemType::I16 => 0x0B,
        ElemType::I32 => 0x0C,
        ElemType::F32 => 0x0D,
        ElemType::F64 => 0x0E,
    };
    let mut out = vec![0, 0, code, rank];
    for d in dims {
        out.extend_from_slice(&d.to_be_bytes());
    }
    match data {
        Storage::U8(v) => out.extend_from_slice(v),
        Storage::I8(v) => out.extend(v.iter().map(|&x| x as u8)),
        Storage::I16(v) => v.iter().for_each(|x| out.extend(x.to_be_bytes())),
        Storage::I32(v) => v.iter().for_each(|x| out.extend(x.to_be_bytes())),
        Storage::F32(v) => v.iter().for_each(|x| out.extend(x.to_be_bytes())),
        Storage::F64(v) => v.iter().for_each(|x| out.extend(x.to_be_bytes())),
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::data::testutil::{gzip, shared_data, TempDir};

    fn images() -> Vec<u8> {
        // 3 images of 2x2 pixels.
        encode(&[3, 2, 2], &Storage::U8((0..12).collect())).unwrap()
    }

    #[test]
    fn loads_plain_and_gzipped_u8() {
        let dir = TempDir::new("idx-u8");
        for (name, bytes) in [
            ("images.idx", images()),
            // Misleading extension: detection must use the magic bytes.
            ("images.idx.gz.bin", gzip(&images())),
            ("not-really.gz", images()),
        ] {
            let path = dir.write(name, &bytes);
            let a = load(&path).unwrap();
            assert_eq!(a.dtype(), ElemType::U8);
            assert_eq!(a.dims(), [3, 2, 2]);
            assert_eq!(a.rows(), 3);
            assert_eq!(a.row_len(), 4);
            assert_eq!(a.path(), path);
            assert_eq!(a.data(), &Storage::U8((0..12).collect()));
            assert_eq!(
                a.rows_f32(1..3).unwrap(),
                [4., 5., 6., 7., 8., 9., 10., 11.]
            );
            assert_eq!(a.rows_i32(2..3).unwrap(), [8, 9, 10, 11]);
        }
    }

    #[test]
    fn loads_every_element_type_big_endian() {
        let dir = TempDir::new("idx-types");
        let cases = [
            Storage::I8(vec![-128, -1, 0, 127]),
            Storage::I16(vec![-32768, -2, 258, 32767]),
            Storage::I32(vec![i32::MIN, -3, 0x0102_0304, i32::MAX]),
            Storage::F32(vec![-1.5, 0.0, 3.25, 1e-3]),
            Storage::F64(vec![-1.5, 0.0, 3.25, 1e300]),
        ];
        for storage in cases {
            let bytes = encode(&[2, 2], &storage).unwrap();
            let path = dir.write("a.idx", &bytes);
            let a = load(&path).unwrap();
            assert_eq!(a.dtype(), storage.elem());
            assert_eq!(a.dims(), [2, 2]);
            assert_eq!(a.data(), &storage);
            let path = dir.write("a.idx.gz", &gzip(&bytes));
            assert_eq!(load(&path).unwrap().data(), &storage);
        }
        // Big-endian on disk, checked byte by byte.
        let bytes = encode(&[1], &Storage::I16(vec![0x0102])).unwrap();
        assert_eq!(bytes, [0, 0, 0x0B, 1, 0, 0, 0, 1, 0x01, 0x02]);
        assert_eq!(encode(&[3], &Storage::U8(vec![1, 2])), None);
        assert_eq!(encode(&[1; 256], &Storage::U8(vec![1])), None);
    }

    #[test]
    fn row_conversions_check_ranges_and_integers() {
        let path = Path::new("mem.idx");
        let a = parse(
            encode(&[2], &Storage::F32(vec![1.0, 2.5])).unwrap(),
            path,
            false,
        )
        .unwrap();
        assert_eq!(a.rows_f32(0..2).unwrap(), [1.0, 2.5]);
        assert_eq!(a.rows_i32(0..1).unwrap(), [1]);
        assert_eq!(
            a.rows_i32(0..2).unwrap_err().to_string(),
            "mem.idx: element 1 holds 2.5, which is not a 32-bit integer"
        );
        assert_eq!(
            a.rows_f32(1..3).unwrap_err().to_string(),
            "mem.idx: rows 1..3 are out of range for an array of 2 rows"
        );
        let (dtype, dims, data, p) = a.into_parts();
        assert_eq!(
            (dtype, dims, data.len(), p),
            (ElemType::F32, vec![2], 2, path.to_path_buf())
        );
    }

    #[test]
    fn header_errors_name_file_and_offset() {
        let dir = TempDir::new("idx-header");
        let check = |bytes: &[u8], expected: &str| {
            let path = dir.write("bad.idx", bytes);
            let msg = load(&path).unwrap_err().to_string();
            assert_eq!(msg, format!("{}: {expected}", path.display()));
        };
        check(
            b"\x01\x00\x08\x01",
            "not an IDX file: expected two zero bytes at offset 0, found 0x01 0x00",
        );
        check(
            b"P",
            "not an IDX file: expected two zero bytes at offset 0, found 0x50",
        );
        check(
            b"\x00\x00\x07\x01\x00\x00\x00\x01\x05",
            "unknown IDX element type byte 0x07 at offset 2 \
             (known: 0x08 u8, 0x09 i8, 0x0b i16, 0x0c i32, 0x0d f32, 0x0e f64)",
        );
        check(
            b"\x00\x00\x08\x00",
            "IDX rank byte at offset 3 is 0; an array needs at least one dimension",
        );
        check(
            b"",
            "truncated IDX header: expected 4 bytes of header, file has only 0",
        );
        check(
            b"\x00\x00\x08",
            "truncated IDX header: expected 4 bytes of header, file has only 3",
        );
        check(
            b"\x00\x00\x08\x03\x00\x00\x00\x02\x00\x00",
            "truncated IDX header: expected 16 bytes of header, file has only 10",
        );
        check(
            b"\x00\x00\x08\x02\xff\xff\xff\xff\xff\xff\xff\xff",
            if usize::BITS == 64 {
                "truncated IDX payload: expected 18446744065119617025 bytes of payload at offset 12, \
                 file has only 0"
            } else {
                "IDX dimensions [4294967295, 4294967295] describe more bytes than can be addressed"
            },
        );
        check(
            b"\x00\x00\x0e\x03\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff",
            "IDX dimensions [4294967295, 4294967295, 4294967295] describe more bytes than can be addressed",
        );
    }

    #[test]
    fn gzipped_header_errors_say_offsets_are_decompressed() {
        let dir = TempDir::new("idx-gz-header");
        let path = dir.write("bad.idx.gz", &gzip(b"\x00\x00\x10\x01"));
        assert_eq!(
            load(&path).unwrap_err().to_string(),
            format!(
                "{}: unknown IDX element type byte 0x10 at offset 2 of the decompressed stream \
                 (known: 0x08 u8, 0x09 i8, 0x0b i16, 0x0c i32, 0x0d f32, 0x0e f64)",
                path.display()
            )
        );
        // A doubly gzipped file: after one decompression the magic is wrong.
        let path = dir.write("twice.gz", &gzip(&gzip(&images())));
        assert_eq!(
            load(&path).unwrap_err().to_string(),
            format!(
                "{}: not an IDX file: expected two zero bytes at offset 0 of the decompressed \
                 stream, found 0x1f 0x8b",
                path.display()
            )
        );
    }

    #[test]
    fn payload_errors_name_sizes_and_offsets() {
        let dir = TempDir::new("idx-payload");
        let mut short = images();
        short.truncate(short.len() - 5);
        let path = dir.write("short.idx", &short);
        assert_eq!(
            load(&path).unwrap_err().to_string(),
            format!(
                "{}: truncated IDX payload: expected 12 bytes of payload at offset 16, \
                 file has only 7",
                path.display()
            )
        );
        let path = dir.write("short.idx.gz", &gzip(&short));
        assert_eq!(
            load(&path).unwrap_err().to_string(),
            format!(
                "{}: truncated IDX payload: expected 12 bytes of payload at offset 16 of the \
                 decompressed stream, file has only 7",
                path.display()
            )
        );
        let mut long = images();
        long.extend_from_slice(b"junk");
        let path = dir.write("long.idx", &long);
        assert_eq!(
            load(&path).unwrap_err().to_string(),
            format!(
                "{}: 4 bytes of trailing garbage at offset 28 after the IDX payload",
                path.display()
            )
        );
        let path = dir.write("long.idx.gz", &gzip(&long));
        assert_eq!(
            load(&path).unwrap_err().to_string(),
            format!(
                "{}: 4 bytes of trailing garbage at offset 28 of the decompressed stream \
                 after the IDX payload",
                path.display()
            )
        );
        // Multi-byte types count bytes, not elements.
        let mut ints = encode(&[3], &Storage::I32(vec![1, 2, 3])).unwrap();
        ints.pop();
        let path = dir.write("ints.idx", &ints);
        assert_eq!(
            load(&path).unwrap_err().to_string(),
            format!(
                "{}: truncated IDX payload: expected 12 bytes of payload at offset 8, \
                 file has only 11",
                path.display()
            )
        );
    }

    #[test]
    fn gzip_and_io_errors_name_the_file() {
        let dir = TempDir::new("idx-gzip");
        let gz = gzip(&images());

        let path = dir.write("truncated.gz", &gz[..gz.len() / 2]);
        assert_eq!(
            load(&path).unwrap_err().to_string(),
            format!(
                "{}: gzip stream ends early (the file looks truncated)",
                path.display()
            )
        );

        // Flip the stored CRC so the deflate data decodes but fails the check.
        let mut bad_crc = gz.clone();
        let crc_at = bad_crc.len() - 8;
        bad_crc[crc_at] ^= 0xff;
        let path = dir.write("crc.gz", &bad_crc);
        assert_eq!(
            load(&path).unwrap_err().to_string(),
            format!(
                "{}: gzip decompression failed: corrupt gzip stream does not have a matching checksum",
                path.display()
            )
        );

        // Garbage right after the gzip magic: an invalid header.
        let path = dir.write("header.gz", b"\x1f\x8b\x00\x00garbage-garbage-garbage");
        assert_eq!(
            load(&path).unwrap_err().to_string(),
            format!(
                "{}: gzip decompression failed: invalid gzip header",
                path.display()
            )
        );

        let missing = dir.path().join("missing.idx");
        let msg = load(&missing).unwrap_err().to_string();
        let expected = format!("{}: cannot read file: ", missing.display());
        assert!(msg.starts_with(&expected), "{msg}");
        #[cfg(unix)]
        assert_eq!(
            msg,
            format!("{expected}No such file or directory (os error 2)")
        );
    }

    #[test]
    fn never_panics_on_arbitrary_prefixes_or_byte_flips() {
        let mut bytes = encode(&[2, 3], &Storage::F64((0..6).map(f64::from).collect())).unwrap();
        for cut in 0..bytes.len() {
            let _ = parse(bytes[..cut].to_vec(), Path::new("x"), false);
        }
        for i in 0..bytes.len() {
            for flip in [0x01, 0x80, 0xff] {
                bytes[i] ^= flip;
                let _ = parse(bytes.clone(), Path::new("x"), false);
                bytes[i] ^= flip;
            }
        }
    }

    #[test]
    fn real_mnist_labels_if_present() {
        let Some(path) = shared_data("mnist/train-labels-idx1-ubyte.gz") else {
            return;
        };
        let labels = load(&path).unwrap();
        assert_eq!(labels.dtype(), ElemType::U8);
        assert_eq!(labels.dims(), [60000]);
        let values = labels.rows_i32(0..60000).unwrap();
        assert_eq!(values.len(), 60000);
        assert!(values.iter().all(|&l| (0..10).contains(&l)));
    }

    #[test]
    fn real_mnist_images_if_present() {
        let Some(path) = shared_data("mnist/train-images-idx3-ubyte.gz") else {
            return;
        };
        let images = load(&path).unwrap();
        assert_eq!(images.dtype(), ElemType::U8);
        assert_eq!(images.dims(), [60000, 28, 28]);
        assert_eq!(images.rows_f32(59999..60000).unwrap().len(), 784);
    }
}
