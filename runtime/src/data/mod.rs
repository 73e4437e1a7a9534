//! Loading training data from disk and turning it into batches.
//!
//! Data is kept in the type it was stored in (MNIST pixels stay `u8`) and
//! converted to `f32` one batch at a time: this keeps a 60 000-image dataset
//! at 47 MB instead of 188 MB, and lets transforms such as `one_hot` see the
//! exact stored labels.
//!
//! * [`idx`]: the IDX format used by MNIST and Fashion-MNIST, plain or gzipped.
//! * [`csv`]: numeric CSV tables, plain or gzipped.
//! * [`images`]: image folders (a subfolder per class), on disk or in a tar
//!   archive, decoded to `u8` samples `[C, H, W]` on all cores.
//! * [`cifar`]: the CIFAR-10 binary format.
//! * [`text`]: text tables (Orange `.tab`, TSV, CSV), the tokenizer, the
//!   vocabulary and class names.
//! * [`dataset`]: named, equally long fields and per-batch gathering.
//! * [`batch`]: seeded shuffling, batching and train/validation splits.
//! * [`augment`]: training-only random image transforms, seeded per sample.
//! * [`fit`]: statistics fitted on the training samples (`standardize`,
//!   `minmax`).

pub mod augment;
pub mod batch;
pub mod cifar;
pub mod csv;
pub mod dataset;
mod error;
pub mod fit;
pub mod idx;
pub mod images;
mod source;
mod storage;
pub mod text;

// Crate-visible so the loader's tests can build files the same way.
#[cfg(test)]
pub(crate) mod testutil;

pub use augment::Mode;
pub use batch::{train_val_split, Batches, Split, SplitMix64};
pub use csv::{CsvOptions, CsvTable, HeaderMode};
pub use dataset::{Dataset, Field, Transform};
pub use error::{CsvLocation, DataError, Result};
pub use fit::{Fitted, FittedStats};
pub use idx::IdxArray;
pub use images::{ImageList, ImageOptions};
pub use storage::{ElemType, Storage};

/// Largest integer magnitude an `f32` represents exactly (2^24).
///
/// Labels travel through `f32` batches, so any label beyond this could be
/// silently rounded to a neighbouring class; loaders reject such values.
pub const MAX_EXACT_F32_INT: u32 = 1 << 24;
