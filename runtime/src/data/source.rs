//! Reading a file that may or may not be gzipped.

use std::io::Read;
use std::path::Path;

use flate2::read::MultiGzDecoder;

use super::error::{DataError, Result};

/// The bytes of a file, decompressed if needed.
pub(crate) struct Loaded {
    pub bytes: Vec<u8>,
    /// Whether `bytes` came out of a gzip stream; error messages need it
    /// because their offsets then refer to the decompressed data.
    pub gzipped: bool,
}

/// Detection goes by the magic bytes rather than the extension because
/// datasets are routinely renamed (or served decompressed by a browser while
/// keeping the `.gz` name).
pub(crate) fn read_maybe_gz(path: &Path) -> Result<Loaded> {
    let raw = std::fs::read(path).map_err(|source| DataError::Io {
        path: path.to_path_buf(),
        source,
    })?;
    if !raw.starts_with(&[0x1f, 0x8b]) {
        return Ok(Loaded {
            bytes: raw,
            gzipped: false,
        });
    }
    let mut out = Vec::with_capacity(capacity_hint(&raw));
    // Multi-member streams are valid gzip (e.g. produced by `cat a.gz b.gz`).
    MultiGzDecoder::new(raw.as_slice())
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
        bytes: out,
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
