//! The CIFAR-10 binary format (`cifar-10-binary.tar.gz`, unpacked).
//!
//! A file is a run of 3073-byte records: one label byte (0 to 9), then the
//! 32x32 image as three 1024-byte planes, red, green, blue. That is already
//! the `[C, H, W]` layout convolutions read, so a record's pixels are copied
//! as they are. A folder stands for the training set, `data_batch_1.bin` to
//! `data_batch_5.bin`; the test set is its own file, `test_batch.bin`.
//! Files may be gzipped, like every other data file.

use std::path::{Path, PathBuf};

use super::error::{DataError, Result};
use super::source::read_maybe_gz;

/// Pixels of one image: 3 planes of 32x32.
pub const PIXELS: usize = 3 * 32 * 32;
/// A record: the label byte and the pixels.
pub const RECORD: usize = 1 + PIXELS;
/// The shape of one sample.
pub const SHAPE: [usize; 3] = [3, 32, 32];
/// The training batches a folder stands for, in order.
pub const TRAIN_BATCHES: [&str; 5] = [
    "data_batch_1.bin",
    "data_batch_2.bin",
    "data_batch_3.bin",
    "data_batch_4.bin",
    "data_batch_5.bin",
];

/// The images and labels of one or more CIFAR-10 files, concatenated.
#[derive(Debug, Clone, PartialEq)]
pub struct Cifar {
    /// `len()` samples of [`SHAPE`], planar RGB.
    pub pixels: Vec<u8>,
    pub labels: Vec<u8>,
    /// The files read, in order.
    pub files: Vec<PathBuf>,
}

impl Cifar {
    pub fn len(&self) -> usize {
        self.labels.len()
    }

    pub fn is_empty(&self) -> bool {
        self.labels.is_empty()
    }
}

/// Loads one file, or for a folder the training batches in it (all of
/// `data_batch_1.bin` .. `data_batch_5.bin` that exist, in that order).
pub fn load(path: impl AsRef<Path>) -> Result<Cifar> {
    let path = path.as_ref();
    let files = if path.is_dir() {
        let files: Vec<PathBuf> = TRAIN_BATCHES
            .iter()
            .map(|name| path.join(name))
            .filter(|file| file.exists())
            .collect();
        if files.is_empty() {
            return Err(DataError::CifarNoBatches {
                path: path.to_path_buf(),
            });
        }
        files
    } else {
        vec![path.to_path_buf()]
    };
    let mut out = Cifar {
        pixels: Vec::new(),
        labels: Vec::new(),
        files: Vec::new(),
    };
    for file in files {
        let loaded = read_maybe_gz(&file)?;
        parse(&loaded.bytes, &file, loaded.gzipped, &mut out)?;
        out.files.push(file);
    }
    Ok(out)
}

/// Appends the records of `bytes` to `out`. `path` and `gzipped` are for
/// messages only: offsets in a gzipped file refer to decompressed bytes.
pub fn parse(bytes: &[u8], path: &Path, gzipped: bool, out: &mut Cifar) -> Result<()> {
    if bytes.is_empty() {
        return Err(DataError::CifarEmpty {
            path: path.to_path_buf(),
        });
    }
    let (records, tail) = bytes.as_chunks::<RECORD>();
    if !tail.is_empty() {
        return Err(DataError::CifarTruncated {
            path: path.to_path_buf(),
            offset: records.len() * RECORD,
            found: tail.len(),
            len: bytes.len(),
            gzipped,
        });
    }
    // Check every label before copying anything, so a wrong file fails
    // fast and leaves `out` as it was.
    if let Some(k) = records.iter().position(|r| r[0] > 9) {
        return Err(DataError::CifarLabel {
            path: path.to_path_buf(),
            offset: k * RECORD,
            value: records[k][0],
            gzipped,
        });
    }
    out.labels.reserve(records.len());
    out.pixels.reserve(records.len() * PIXELS);
    for record in records {
        out.labels.push(record[0]);
        out.pixels.extend_from_slice(&record[1..]);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::data::testutil::{gzip, TempDir};

    /// `n` records whose label is `first_label + i` and whose pixel `p` is
    /// `(i + p) % 251`.
    fn records(n: usize, first_label: u8) -> Vec<u8> {
        let mut out = Vec::new();
        for i in 0..n {
            out.push(first_label + i as u8);
            out.extend((0..PIXELS).map(|p| ((i + p) % 251) as u8));
        }
        out
    }

    #[test]
    fn one_file_gives_planar_samples_and_labels() {
        let dir = TempDir::new("cifar-file");
        let path = dir.write("test_batch.bin", &records(3, 4));
        let data = load(&path).unwrap();
        assert_eq!(data.len(), 3);
        assert_eq!(data.labels, [4, 5, 6]);
        assert_eq!(data.pixels.len(), 3 * PIXELS);
        assert_eq!(&data.pixels[PIXELS..PIXELS + 3], [1, 2, 3]);
        assert_eq!(data.files, [path]);
        // Gzipped files load the same.
        let packed = dir.write("test_batch.bin.gz", &gzip(&records(3, 4)));
        assert_eq!(load(&packed).unwrap().pixels, data.pixels);
    }

    #[test]
    fn a_folder_means_the_training_batches_in_order() {
        let dir = TempDir::new("cifar-folder");
        // Written out of order, with batch 3 missing and a test batch that
        // must not be included.
        dir.write("data_batch_2.bin", &records(1, 2));
        dir.write("data_batch_1.bin", &records(2, 0));
        dir.write("data_batch_4.bin", &records(1, 9));
        dir.write("test_batch.bin", &records(5, 0));
        let data = load(dir.path()).unwrap();
        assert_eq!(data.labels, [0, 1, 2, 9]);
        let names: Vec<_> = data
            .files
            .iter()
            .map(|f| f.file_name().unwrap().to_string_lossy().into_owned())
            .collect();
        assert_eq!(
            names,
            ["data_batch_1.bin", "data_batch_2.bin", "data_batch_4.bin"]
        );

        let empty = TempDir::new("cifar-empty");
        assert_eq!(
            load(empty.path()).unwrap_err().to_string(),
            format!(
                "{}: no CIFAR-10 training batches (data_batch_1.bin ... data_batch_5.bin) \
                 in this folder; for the test set give the file, e.g. `test_batch.bin`",
                empty.path().display()
            )
        );
    }

    #[test]
    fn any_length_is_a_result_not_a_panic() {
        let bytes = records(2, 0);
        for len in 0..=bytes.len() {
            let mut out = Cifar {
                pixels: Vec::new(),
                labels: Vec::new(),
                files: Vec::new(),
            };
            let ok = parse(&bytes[..len], Path::new("x.bin"), false, &mut out).is_ok();
            assert_eq!(ok, len > 0 && len % RECORD == 0, "{len}");
        }
    }

    #[test]
    fn truncated_empty_wrong_and_missing_files() {
        let dir = TempDir::new("cifar-errors");
        let mut bytes = records(2, 0);
        bytes.truncate(RECORD + 100);
        let cut = dir.write("cut.bin", &bytes);
        assert_eq!(
            load(&cut).unwrap_err().to_string(),
            format!(
                "{}: truncated CIFAR-10 record at offset 3073: 100 of 3073 bytes \
                 (1 label byte + 3072 pixel bytes); the file has 3173 bytes, not a multiple of 3073",
                cut.display()
            )
        );
        let cut_gz = dir.write("cut.bin.gz", &gzip(&bytes));
        assert!(load(&cut_gz)
            .unwrap_err()
            .to_string()
            .contains("at offset 3073 of the decompressed stream"));
        let empty = dir.write("empty.bin", b"");
        assert_eq!(
            load(&empty).unwrap_err().to_string(),
            format!("{}: empty CIFAR-10 file: no records", empty.display())
        );
        let mut bytes = records(2, 0);
        bytes[RECORD] = 42;
        let wrong = dir.write("wrong.bin", &bytes);
        assert_eq!(
            load(&wrong).unwrap_err().to_string(),
            format!(
                "{}: label byte 42 at offset 3073 is not a CIFAR-10 class (0 to 9); \
                 is this CIFAR-100 (whose records have 2 label bytes)?",
                wrong.display()
            )
        );
        let missing = dir.path().join("nope.bin");
        assert!(load(&missing)
            .unwrap_err()
            .to_string()
            .starts_with(&format!("{}: cannot read file: ", missing.display())));
    }
}
