//! Reading a file that may or may not be gzipped.
//!
//! A plain file is memory-mapped and parsed in place, so loading a large
//! uncompressed dataset never holds the raw file and the parsed samples in
//! the heap at the same time. A gzipped file is mapped too and streamed
//! through the decoder.

use std::io::Read;
use std::ops::Deref;
use std::path::Path;

use flate2::read::MultiGzDecoder;
use memmap2::Mmap;

use super::error::{DataError, Result};

/// The bytes of a file, decompressed if needed.
pub(crate) struct Loaded {
    pub bytes: Bytes,
    /// Whether `bytes` came out of a gzip stream; error messages need it
    /// because their offsets then refer to the decompressed data.
    pub gzipped: bool,
}

/// A file's contents: mapped (plain files) or in the heap (decompressed,
/// or read normally when the file cannot be mapped, e.g. a pipe).
pub(crate) enum Bytes {
    Mapped(Mmap),
    Owned(Vec<u8>),
}

impl Deref for Bytes {
    type Target = [u8];

    fn deref(&self) -> &[u8] {
        match self {
            Bytes::Mapped(m) => m,
            Bytes::Owned(v) => v,
        }
    }
}

/// Detection goes by the magic bytes rather than the extension because
/// datasets are routinely renamed (or served decompressed by a browser while
/// keeping the `.gz` name).
pub(crate) fn read_maybe_gz(path: &Path) -> Result<Loaded> {
    let io = |source| DataError::Io {
        path: path.to_path_buf(),
        source,
    };
    let file = std::fs::File::open(path).map_err(io)?;
    // SAFETY: the map is read-only and private to this loader, which copies
    // out everything it keeps before the map is dropped. The usual caveat of
    // file-backed maps applies: another process truncating the file while we
    // parse it could fault the read, as with any mmap-based reader.
    let raw = match unsafe { Mmap::map(&file) } {
        Ok(map) => Bytes::Mapped(map),
        // Not mappable (a pipe, a special file): read it the ordinary way.
        Err(_) => {
            let mut buf = Vec::new();
            (&file).read_to_end(&mut buf).map_err(io)?;
            Bytes::Owned(buf)
        }
    };
    if !raw.starts_with(&[0x1f, 0x8b]) {
        return Ok(Loaded {
            bytes: raw,
            gzipped: false,
        });
    }
    let mut out = Vec::with_capacity(capacity_hint(&raw));
    // Multi-member streams are valid gzip (e.g. produced by `cat a.gz b.gz`).
    MultiGzDecoder::new(&raw[..])
        .read_to_end(&mut out)
        .map_err(|err| {
            if err.kind() == std::io::ErrorKind::UnexpectedEof {
                DataError::GzipTruncated {
                    path: path.to_path_buf(),
                }
            } else {
                DataError::GzipCorrupt {
                    path: path.to_path_buf(),
                    message: err.to_string(),
                }
            }
        })?;
    Ok(Loaded {
        bytes: Bytes::Owned(out),
        gzipped: true,
    })
}

/// The gzip trailer stores the uncompressed size modulo 2^32; using it avoids
/// repeated reallocation of a 47 MB buffer. It is only a hint, capped by the
/// maximum deflate ratio so a forged trailer cannot force a huge allocation.
fn capacity_hint(raw: &[u8]) -> usize {
    let tail = raw
        .len()
        .checked_sub(4)
        .and_then(|start| raw.get(start..))
        .and_then(|tail| <[u8; 4]>::try_from(tail).ok());
    let Some(size) = tail else {
        return 0;
    };
    let stated = u32::from_le_bytes(size) as usize;
    stated.min(raw.len().saturating_mul(1032)).min(1 << 30)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::data::testutil::{gzip, TempDir};

    #[test]
    fn plain_files_are_mapped_and_gzip_is_decoded() {
        let dir = TempDir::new("source-map");
        let plain = dir.write("plain.bin", b"\x00\x00\x08\x01\x00\x00\x00\x01\x07");
        let loaded = read_maybe_gz(&plain).unwrap();
        assert!(matches!(loaded.bytes, Bytes::Mapped(_)) && !loaded.gzipped);
        assert_eq!(&loaded.bytes[..], b"\x00\x00\x08\x01\x00\x00\x00\x01\x07");

        let gz = dir.write("packed.gz", &gzip(b"1,2\n"));
        let loaded = read_maybe_gz(&gz).unwrap();
        assert!(matches!(loaded.bytes, Bytes::Owned(_)) && loaded.gzipped);
        assert_eq!(&loaded.bytes[..], b"1,2\n");

        let empty = dir.write("empty.csv", b"");
        assert!(read_maybe_gz(&empty).unwrap().bytes.is_empty());
        // A directory cannot be mapped or read: an I/O error naming it.
        let err = read_maybe_gz(dir.path()).err().unwrap();
        assert!(err.to_string().contains(&dir.path().display().to_string()));
    }
}
