//! One error type for the whole data layer.
//!
//! A single enum (rather than one per format) lets a training driver load
//! images from IDX, labels from CSV and batch them with one `?` chain, and
//! every message is written to be shown to a user as is: it names the file
//! and, where the problem sits inside it, the exact place.

use std::path::{Path, PathBuf};

/// Result alias used throughout [`crate::data`].
pub type Result<T, E = DataError> = std::result::Result<T, E>;

/// Everything that can go wrong while loading, checking or batching data.
///
/// Variants carry structured fields so callers can react programmatically,
/// but the `Display` text is the primary interface.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum DataError {
    // ----- reading files -------------------------------------------------
    #[error("{}: cannot read file: {source}", path.display())]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },

    /// A folder source (an image folder, a CIFAR batch folder) that is
    /// missing or unreadable; the same shape as [`DataError::Io`] so a
    /// missing folder reads like a missing file.
    #[error("{}: cannot read folder: {source}", path.display())]
    DirIo {
        path: PathBuf,
        source: std::io::Error,
    },

    #[error("{}: gzip stream ends early (the file looks truncated)", path.display())]
    GzipTruncated { path: PathBuf },

    #[error("{}: gzip decompression failed: {message}", path.display())]
    GzipCorrupt { path: PathBuf, message: String },

    // ----- IDX -----------------------------------------------------------
    #[error(
        "{}: not an IDX file: expected two zero bytes at offset 0{}, found {}",
        path.display(), stream_note(*gzipped), hex_bytes(found)
    )]
    IdxBadMagic {
        path: PathBuf,
        found: Vec<u8>,
        gzipped: bool,
    },

    #[error(
        "{}: unknown IDX element type byte {code:#04x} at offset 2{} \
         (known: 0x08 u8, 0x09 i8, 0x0b i16, 0x0c i32, 0x0d f32, 0x0e f64)",
        path.display(), stream_note(*gzipped)
    )]
    IdxUnknownType {
        path: PathBuf,
        code: u8,
        gzipped: bool,
    },

    #[error(
        "{}: IDX rank byte at offset 3{} is 0; an array needs at least one dimension",
        path.display(), stream_note(*gzipped)
    )]
    IdxZeroRank { path: PathBuf, gzipped: bool },

    #[error(
        "{}: truncated IDX header: expected {expected} bytes of header{}, file has only {found}",
        path.display(), stream_note(*gzipped)
    )]
    IdxTruncatedHeader {
        path: PathBuf,
        expected: usize,
        found: usize,
        gzipped: bool,
    },

    #[error("{}: IDX dimensions {dims:?} describe more bytes than can be addressed", path.display())]
    IdxTooLarge { path: PathBuf, dims: Vec<usize> },

    #[error(
        "{}: truncated IDX payload: expected {expected} bytes of payload at offset {offset}{}, \
         file has only {found}",
        path.display(), stream_note(*gzipped)
    )]
    IdxTruncatedPayload {
        path: PathBuf,
        expected: usize,
        offset: usize,
        found: usize,
        gzipped: bool,
    },

    #[error(
        "{}: {extra} bytes of trailing garbage at offset {offset}{} after the IDX payload",
        path.display(), stream_note(*gzipped)
    )]
    IdxTrailingData {
        path: PathBuf,
        extra: usize,
        offset: usize,
        gzipped: bool,
    },

    // ----- CSV -----------------------------------------------------------
    #[error("{}: expected a number, found `{found}`", at.display())]
    CsvNotANumber { at: CsvLocation, found: String },

    #[error("{}: value `{found}` does not fit in f32", at.display())]
    CsvOutOfRange { at: CsvLocation, found: String },

    #[error("{}: row has {found} fields, expected {expected}", at.display())]
    CsvRaggedRow {
        at: CsvLocation,
        found: usize,
        expected: usize,
    },

    #[error("{}: empty CSV file: no data rows", path.display())]
    CsvEmpty { path: PathBuf },

    #[error("{}: CSV file has a header row but no data rows", path.display())]
    CsvOnlyHeader { path: PathBuf },

    #[error(
        "{}: column range {start}..{end} is invalid for a table of {cols} columns \
         (0-based, end exclusive, must be non-empty)",
        path.display()
    )]
    CsvColumnRange {
        path: PathBuf,
        start: usize,
        end: usize,
        cols: usize,
    },

    #[error(
        "{}: label column {column} is out of bounds for a table of {cols} columns (0-based)",
        path.display()
    )]
    CsvLabelColumn {
        path: PathBuf,
        column: usize,
        cols: usize,
    },

    #[error("{}: label `{found}` is not an integer", at.display())]
    CsvLabelNotInteger { at: CsvLocation, found: String },

    #[error(
        "{}: label `{found}` is too large (labels must be within ±{})",
        at.display(), crate::data::MAX_EXACT_F32_INT
    )]
    CsvLabelTooLarge { at: CsvLocation, found: String },

    // ----- image folders -------------------------------------------------
    #[error(
        "{}: no class folders: an image folder holds one subfolder per class \
         (`cat/0001.jpg`, `dog/0002.png`, ...)",
        path.display()
    )]
    ImageFolderEmpty { path: PathBuf },

    #[error(
        "{}: class folder `{class}` holds no images (supported: .jpg, .jpeg, .png)",
        path.display()
    )]
    ImageClassEmpty { path: PathBuf, class: String },

    #[error("{}: cannot decode image: {message}", path.display())]
    ImageDecode { path: PathBuf, message: String },

    #[error(
        "{}: image is {}x{} (height x width) but the first image, {}, is {}x{}; \
         all images must have one size, or give `size: [h, w]` to resize them",
        path.display(), size[0], size[1], first.display(), first_size[0], first_size[1]
    )]
    ImageSizeMismatch {
        path: PathBuf,
        size: [usize; 2],
        first: PathBuf,
        first_size: [usize; 2],
    },

    #[error("image size [{}, {}] is invalid: both sides must be between 1 and 65535", size[0], size[1])]
    ImageTargetSize { size: [usize; 2] },

    #[error(
        "{}: {images} images of shape {shape:?} need {bytes} bytes, more than can be allocated",
        path.display()
    )]
    ImagesTooLarge {
        path: PathBuf,
        images: usize,
        shape: [usize; 3],
        bytes: u128,
    },

    #[error("{}: cannot read tar archive: {message}", path.display())]
    Archive { path: PathBuf, message: String },

    #[error(
        "{}: the archive has no folder `{inner}` (its top-level entries: {top})",
        path.display()
    )]
    ArchiveNoFolder {
        path: PathBuf,
        inner: String,
        top: String,
    },

    // ----- CIFAR-10 binary -------------------------------------------------
    #[error(
        "{}: truncated CIFAR-10 record at offset {offset}{}: {found} of 3073 bytes \
         (1 label byte + 3072 pixel bytes); the file has {len} bytes, not a multiple of 3073",
        path.display(), stream_note(*gzipped)
    )]
    CifarTruncated {
        path: PathBuf,
        offset: usize,
        found: usize,
        len: usize,
        gzipped: bool,
    },

    #[error("{}: empty CIFAR-10 file: no records", path.display())]
    CifarEmpty { path: PathBuf },

    #[error(
        "{}: label byte {value} at offset {offset}{} is not a CIFAR-10 class (0 to 9); \
         is this CIFAR-100 (whose records have 2 label bytes)?",
        path.display(), stream_note(*gzipped)
    )]
    CifarLabel {
        path: PathBuf,
        offset: usize,
        value: u8,
        gzipped: bool,
    },

    #[error(
        "{}: no CIFAR-10 training batches (data_batch_1.bin ... data_batch_5.bin) in this folder; \
         for the test set give the file, e.g. `test_batch.bin`",
        path.display()
    )]
    CifarNoBatches { path: PathBuf },

    // ----- text tables -----------------------------------------------------
    #[error("{}:{line}:{column}: not valid UTF-8 (text files must be UTF-8)", path.display())]
    TextNotUtf8 {
        path: PathBuf,
        line: usize,
        /// 1-based byte of the line where the invalid sequence starts.
        column: usize,
    },

    #[error(
        "{}: the file has {found} lines, but the `{format}` layout starts with {expected} header lines",
        path.display()
    )]
    TextShortHeader {
        path: PathBuf,
        format: &'static str,
        expected: usize,
        found: usize,
    },

    #[error("{}: no samples after the header", path.display())]
    TextNoSamples { path: PathBuf },

    #[error("{}:{line}: row has {found} cells, but the header names {expected} columns", path.display())]
    TextRaggedRow {
        path: PathBuf,
        line: usize,
        found: usize,
        expected: usize,
    },

    #[error("{}:{line}: a double quote opens a field that the line does not close", path.display())]
    TextUnclosedQuote { path: PathBuf, line: usize },

    #[error("{}: no column `{name}`; the header names: {available}", path.display())]
    TextNoColumn {
        path: PathBuf,
        name: String,
        available: String,
    },

    #[error("{}: column {index} is out of bounds for a table of {cols} columns (0-based)", path.display())]
    TextColumnIndex {
        path: PathBuf,
        index: usize,
        cols: usize,
    },

    #[error("{}:{line}: the text in column {column} is empty: it has no letter or digit", path.display())]
    TextEmpty {
        path: PathBuf,
        line: usize,
        column: String,
    },

    #[error("{}:{line}: the class name in column {column} is empty", path.display())]
    TextEmptyClass {
        path: PathBuf,
        line: usize,
        column: String,
    },

    #[error(
        "{}:{line}: class `{class}` is not among the classes of the training samples ({known})",
        path.display()
    )]
    TextUnknownClass {
        path: PathBuf,
        line: usize,
        class: String,
        known: String,
    },

    #[error(
        "{}: the vocabulary of column {column} is empty: no token occurs at least {min_count} times \
         in the {samples} training samples (lower `min_count`)",
        path.display()
    )]
    TextEmptyVocabulary {
        path: PathBuf,
        column: String,
        min_count: usize,
        samples: usize,
    },

    // ----- storage and datasets -----------------------------------------
    #[error("{context}: rows {start}..{end} are out of range for an array of {rows} rows")]
    RowRange {
        context: String,
        start: usize,
        end: usize,
        rows: usize,
    },

    #[error("elements {start}..{end} are out of range for storage of {len} elements")]
    ElementRange {
        start: usize,
        end: usize,
        len: usize,
    },

    #[error("{context}: element {index} holds {value}, which is not a 32-bit integer")]
    NotInteger {
        context: String,
        index: usize,
        value: f64,
    },

    #[error("sample shape {shape:?} has no elements; every sample needs at least one")]
    EmptySampleShape { shape: Vec<usize> },

    #[error("storage of {elements} elements cannot be split into samples of shape {shape:?}")]
    FieldShape { elements: usize, shape: Vec<usize> },

    #[error("a dataset needs at least one field")]
    NoFields,

    #[error("duplicate field name `{0}`")]
    DuplicateField(String),

    #[error(
        "sample count mismatch: field `{first}` has {first_samples} samples ({}) \
         but field `{second}` has {second_samples} samples ({})",
        source_note(first_source.as_deref()), source_note(second_source.as_deref())
    )]
    SampleCountMismatch {
        first: String,
        first_samples: usize,
        first_source: Option<PathBuf>,
        second: String,
        second_samples: usize,
        second_source: Option<PathBuf>,
    },

    #[error("no field named `{name}`; fields are: {available}")]
    UnknownField { name: String, available: String },

    #[error("sample index {index} is out of range for a dataset of {samples} samples")]
    SampleIndex { index: usize, samples: usize },

    #[error("scale factor must be finite, got {0}")]
    BadScale(f32),

    #[error(
        "one_hot needs between 1 and {} classes, got {classes}",
        crate::data::MAX_EXACT_F32_INT
    )]
    OneHotClasses { classes: usize },

    #[error(
        "field `{field}`: label {value} at sample {sample} is out of range for one_hot with {classes} classes"
    )]
    OneHotLabel {
        field: String,
        value: f32,
        sample: usize,
        classes: usize,
    },

    #[error(
        "normalize: {what} has {len} values but samples of field `{field}` have {sample_len} \
         elements (expected 1 or {sample_len})"
    )]
    NormalizeLength {
        field: String,
        what: &'static str,
        len: usize,
        sample_len: usize,
    },

    #[error(
        "normalize: per-channel mean has {mean_len} values and std {std_len}; samples of field \
         `{field}` have {sample_len} elements, which must split into that many equal channels"
    )]
    NormalizeChannels {
        field: String,
        mean_len: usize,
        std_len: usize,
        sample_len: usize,
    },

    #[error(
        "augmenting field `{field}`: the transform is planned for samples of {expected} values, \
         but they have {sample_len} here"
    )]
    AugmentShape {
        field: String,
        expected: usize,
        sample_len: usize,
    },

    #[error(
        "normalize: {what}[{position}] is {value}; mean must be finite and std finite and non-zero"
    )]
    NormalizeValue {
        what: &'static str,
        position: usize,
        value: f32,
    },

    // ----- batching --------------------------------------------------------
    #[error("batch size must be at least 1")]
    ZeroBatchSize,

    #[error("validation fraction must be strictly between 0 and 1, got {0}")]
    SplitFraction(f64),

    #[error(
        "splitting {samples} samples with validation fraction {fraction} leaves the {part} part empty"
    )]
    SplitEmpty {
        samples: usize,
        fraction: f64,
        part: &'static str,
    },
}

/// Where in a CSV file something went wrong.
///
/// Kept as its own type so every CSV message renders the place the same way
/// (`path:line:column (byte N)`), which editors and terminals can jump to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CsvLocation {
    pub path: PathBuf,
    /// 1-based physical line.
    pub line: usize,
    /// 1-based field number within the line.
    pub column: usize,
    /// 0-based byte offset of the field from the start of the data; for a
    /// gzipped file this counts bytes of the decompressed stream.
    pub offset: usize,
    pub gzipped: bool,
}

impl CsvLocation {
    /// Renders the location; a method rather than `Display` so the error
    /// attributes can call it without an extra wrapper type.
    pub fn display(&self) -> String {
        format!(
            "{}:{}:{} (byte {}{})",
            self.path.display(),
            self.line,
            self.column,
            self.offset,
            stream_note(self.gzipped)
        )
    }
}

/// Offsets inside a gzipped file refer to the decompressed bytes, which a
/// user inspecting the file with a hex editor would otherwise misread.
fn stream_note(gzipped: bool) -> &'static str {
    if gzipped {
        " of the decompressed stream"
    } else {
        ""
    }
}

fn hex_bytes(bytes: &[u8]) -> String {
    bytes
        .iter()
        .map(|b| format!("{b:#04x}"))
        .collect::<Vec<_>>()
        .join(" ")
}

fn source_note(source: Option<&Path>) -> String {
    match source {
        Some(path) => format!("from {}", path.display()),
        None => "built in memory".to_string(),
    }
}
