//! Numeric CSV tables, plain or gzipped.
//!
//! Only what numeric datasets need: one delimiter, an optional header row,
//! every other field a number. Quoting is tolerated around a whole field
//! (`"1.5"`) because spreadsheet exports add it, but embedded delimiters and
//! multi-line fields are not, since they never occur in numeric data and
//! supporting them would make error locations ambiguous.

use std::ops::Range;
use std::path::{Path, PathBuf};

use super::dataset::Field;
use super::error::{CsvLocation, DataError, Result};
use super::source::read_maybe_gz;
use super::storage::Storage;
use super::MAX_EXACT_F32_INT;

/// Whether the first non-blank line is a header.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum HeaderMode {
    /// A first row that is not entirely numbers is a header. Right for
    /// almost every file, but a data row with a typo in its first line
    /// would be taken as a header; use `Absent` to rule that out.
    #[default]
    Auto,
    Present,
    Absent,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CsvOptions {
    pub header: HeaderMode,
    pub delimiter: u8,
}

impl Default for CsvOptions {
    fn default() -> Self {
        CsvOptions {
            header: HeaderMode::Auto,
            delimiter: b',',
        }
    }
}

/// A rectangular table of `f32`, row-major.
#[derive(Debug, Clone, PartialEq)]
pub struct CsvTable {
    path: PathBuf,
    header: Option<Vec<String>>,
    cols: usize,
    data: Vec<f32>,
    /// Per column, the first value that could not serve as a class label.
    /// Recorded while parsing because by the time a column is selected as
    /// labels only the `f32` is left, and `2.0000001` has become `2.0`.
    label_issues: Vec<Option<LabelIssue>>,
}

#[derive(Debug, Clone, PartialEq)]
struct LabelIssue {
    at: CsvLocation,
    found: String,
    too_large: bool,
}

/// Loads a CSV file, decompressing it first if it starts with the gzip
/// magic bytes.
pub fn load(path: impl AsRef<Path>, options: &CsvOptions) -> Result<CsvTable> {
    let path = path.as_ref();
    let loaded = read_maybe_gz(path)?;
    parse(&loaded.bytes, path, loaded.gzipped, options)
}

/// Parses CSV bytes already in memory. `path` is used only in messages and
/// `gzipped` tells them that byte offsets refer to decompressed data.
pub fn parse(bytes: &[u8], path: &Path, gzipped: bool, options: &CsvOptions) -> Result<CsvTable> {
    let delim = options.delimiter;
    let start = if bytes.starts_with(b"\xEF\xBB\xBF") {
        3
    } else {
        0
    };
    let mut header: Option<Vec<String>> = None;
    let mut cols: Option<usize> = None;
    let mut data = Vec::new();
    let mut label_issues: Vec<Option<LabelIssue>> = Vec::new();
    let mut seen_first = false;
    let mut line_offset = start;
    let at = |line: usize, column: usize, offset: usize| CsvLocation {
        path: path.to_path_buf(),
        line,
        column,
        offset,
        gzipped,
    };

    for (index, raw) in bytes
        .get(start..)
        .unwrap_or_default()
        .split(|&b| b == b'\n')
        .enumerate()
    {
        let line_no = index + 1;
        let offset = line_offset;
        line_offset += raw.len() + 1;
        let line = raw.strip_suffix(b"\r").unwrap_or(raw);
        if line.trim_ascii().is_empty() {
            continue;
        }
        if !seen_first {
            seen_first = true;
            let is_header = match options.header {
                HeaderMode::Present => true,
                HeaderMode::Absent => false,
                HeaderMode::Auto => !line.split(|&b| b == delim).all(|f| number(f).is_some()),
            };
            if is_header {
                let names: Vec<String> = line
                    .split(|&b| b == delim)
                    .map(|f| String::from_utf8_lossy(clean(f)).into_owned())
                    .collect();
                cols = Some(names.len());
                header = Some(names);
                continue;
            }
        }

        let count = line.iter().filter(|&&b| b == delim).count() + 1;
        let expected = *cols.get_or_insert(count);
        if count != expected {
            let (column, field_offset) = if count > expected {
                // Point at the first field too many.
                let pos = line
                    .iter()
                    .enumerate()
                    .filter(|&(_, &b)| b == delim)
                    .nth(expected - 1)
                    .map_or(line.len(), |(i, _)| i + 1);
                (expected + 1, offset + pos)
            } else {
                // Point just past the end of the line, where the next field
                // should have started.
                (count + 1, offset + line.len())
            };
            return Err(DataError::CsvRaggedRow {
                at: at(line_no, column, field_offset),
                found: count,
                expected,
            });
        }
        if label_issues.len() != expected {
            label_issues = vec![None; expected];
        }

        let mut field_offset = offset;
        for ((column, field), issue) in line
            .split(|&b| b == delim)
            .enumerate()
            .zip(label_issues.iter_mut())
        {
            let here = || at(line_no, column + 1, field_offset);
            let Some(value) = number(field) else {
                return Err(DataError::CsvNotANumber {
                    at: here(),
                    found: shown(field),
                });
            };
            let single = value as f32;
            if single.is_infinite() {
                return Err(DataError::CsvOutOfRange {
                    at: here(),
                    found: shown(field),
                });
            }
            data.push(single);
            if issue.is_none() {
                let not_integer = value.fract() != 0.0;
                let too_large = value.abs() > f64::from(MAX_EXACT_F32_INT);
                if not_integer || too_large {
                    *issue = Some(LabelIssue {
                        at: here(),
                        found: shown(field),
                        too_large: !not_integer,
                    });
                }
            }
            field_offset += field.len() + 1;
        }
    }

    let Some(cols) = cols.filter(|_| !data.is_empty()) else {
        return Err(if header.is_some() {
            DataError::CsvOnlyHeader {
                path: path.to_path_buf(),
            }
        } else {
            DataError::CsvEmpty {
                path: path.to_path_buf(),
            }
        });
    };
    Ok(CsvTable {
        path: path.to_path_buf(),
        header,
        cols,
        data,
        label_issues,
    })
}

/// Strips surrounding whitespace and one pair of enclosing double quotes.
fn clean(field: &[u8]) -> &[u8] {
    let field = field.trim_ascii();
    match field
        .strip_prefix(b"\"")
        .and_then(|f| f.strip_suffix(b"\""))
    {
        Some(inner) => inner.trim_ascii(),
        None => field,
    }
}

/// A finite number, or `None`. `nan` and `inf` parse as `f64` in Rust but
/// are rejected: in a training set they are almost always a missing value
/// that would otherwise poison every gradient.
fn number(field: &[u8]) -> Option<f64> {
    let text = std::str::from_utf8(clean(field)).ok()?;
    let value: f64 = text.parse().ok()?;
    value.is_finite().then_some(value)
}

/// The field as shown in a message, shortened so a runaway field (a binary
/// file read as CSV) cannot produce a megabyte-long error.
fn shown(field: &[u8]) -> String {
    const MAX_CHARS: usize = 40;
    let text = String::from_utf8_lossy(clean(field));
    if text.chars().count() > MAX_CHARS {
        let mut short: String = text.chars().take(MAX_CHARS).collect();
        short.push('…');
        short
    } else {
        text.into_owned()
    }
}

impl CsvTable {
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Column names, if the file had a header row.
    pub fn header(&self) -> Option<&[String]> {
        self.header.as_deref()
    }

    pub fn cols(&self) -> usize {
        self.cols
    }

    pub fn rows(&self) -> usize {
        self.data.len() / self.cols.max(1)
    }

    /// All values, row-major (`rows() * cols()` of them).
    pub fn data(&self) -> &[f32] {
        &self.data
    }

    pub fn row(&self, row: usize) -> Option<&[f32]> {
        let start = row.checked_mul(self.cols)?;
        self.data.get(start..start.checked_add(self.cols)?)
    }

    pub fn into_data(self) -> Vec<f32> {
        self.data
    }

    /// Columns `[range.start, range.end)` of every row, row-major: typically
    /// the feature block of a table whose last column is the label.
    pub fn columns(&self, range: Range<usize>) -> Result<Vec<f32>> {
        if range.start >= range.end || range.end > self.cols {
            return Err(DataError::CsvColumnRange {
                path: self.path.clone(),
                start: range.start,
                end: range.end,
                cols: self.cols,
            });
        }
        let mut out = Vec::with_capacity(self.rows() * range.len());
        for row in self.data.chunks_exact(self.cols) {
            out.extend_from_slice(&row[range.clone()]);
        }
        Ok(out)
    }

    /// One column as integer class labels.
    ///
    /// Fails on the first value that is not an integer, or whose magnitude
    /// exceeds 2^24 (beyond which `f32` cannot tell neighbouring labels
    /// apart), naming its line.
    pub fn labels(&self, column: usize) -> Result<Vec<i32>> {
        if column >= self.cols {
            return Err(DataError::CsvLabelColumn {
                path: self.path.clone(),
                column,
                cols: self.cols,
            });
        }
        if let Some(Some(issue)) = self.label_issues.get(column) {
            let at = issue.at.clone();
            let found = issue.found.clone();
            return Err(if issue.too_large {
                DataError::CsvLabelTooLarge { at, found }
            } else {
                DataError::CsvLabelNotInteger { at, found }
            });
        }
        // Exact: checked above to be integers within ±2^24.
        Ok(self
            .data
            .iter()
            .skip(column)
            .step_by(self.cols)
            .map(|&v| v as i32)
            .collect())
    }

    /// Features `[features.start, features.end)` and a label column, as
    /// dataset fields (`f32` of shape `[width]` and `i32` of shape `[]`)
    /// that remember this file as their source.
    pub fn features_and_labels(
        &self,
        features: Range<usize>,
        label: usize,
    ) -> Result<(Field, Field)> {
        let width = features.len();
        let x = self.columns(features)?;
        let y = self.labels(label)?;
        let x = Field::new(Storage::F32(x), vec![width])?.with_source(&self.path);
        let y = Field::new(Storage::I32(y), Vec::new())?.with_source(&self.path);
        Ok((x, y))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::data::testutil::{gzip, shared_data, TempDir};

    fn opts(header: HeaderMode) -> CsvOptions {
        CsvOptions {
            header,
            ..CsvOptions::default()
        }
    }

    fn err(text: &str, header: HeaderMode) -> String {
        parse(text.as_bytes(), Path::new("t.csv"), false, &opts(header))
            .unwrap_err()
            .to_string()
    }

    #[test]
    fn loads_plain_and_gzipped_with_auto_header() {
        let dir = TempDir::new("csv-load");
        let text = "a,b,label\n1,2.5,0\n-3,4e2,1\r\n\n 5 , \"6\" ,2\n";
        for (name, bytes) in [
            ("t.csv", text.as_bytes().to_vec()),
            ("t.csv.gz", gzip(text.as_bytes())),
            ("t.dat", gzip(text.as_bytes())),
        ] {
            let path = dir.write(name, &bytes);
            let t = load(&path, &CsvOptions::default()).unwrap();
            assert_eq!(t.header().unwrap(), ["a", "b", "label"]);
            assert_eq!((t.rows(), t.cols()), (3, 3));
            assert_eq!(t.data(), [1.0, 2.5, 0.0, -3.0, 400.0, 1.0, 5.0, 6.0, 2.0]);
            assert_eq!(t.row(1).unwrap(), [-3.0, 400.0, 1.0]);
            assert_eq!(t.row(3), None);
            assert_eq!(t.path(), path);
        }
    }

    #[test]
    fn header_modes() {
        let p = Path::new("t.csv");
        let t = parse(b"1,2\n3,4", p, false, &CsvOptions::default()).unwrap();
        assert_eq!((t.header(), t.rows()), (None, 2));
        let t = parse(b"1,2\n3,4", p, false, &opts(HeaderMode::Present)).unwrap();
        assert_eq!(t.header().unwrap(), ["1", "2"]);
        assert_eq!(t.data(), [3.0, 4.0]);
        assert_eq!(
            err("x,2\n3,4\n", HeaderMode::Absent),
            "t.csv:1:1 (byte 0): expected a number, found `x`"
        );
        // BOM is skipped but still counted in offsets.
        let t = parse(b"\xEF\xBB\xBFid,v\n1,2\n", p, false, &CsvOptions::default()).unwrap();
        assert_eq!(t.header().unwrap(), ["id", "v"]);
        let semi = CsvOptions {
            delimiter: b';',
            ..CsvOptions::default()
        };
        let t = parse(b"1;2\n3;4\n", p, false, &semi).unwrap();
        assert_eq!(t.cols(), 2);
    }

    #[test]
    fn non_numeric_field_names_line_column_and_offset() {
        assert_eq!(
            err("a,b\n1,2\n3,abc\n", HeaderMode::Auto),
            "t.csv:3:2 (byte 10): expected a number, found `abc`"
        );
        assert_eq!(
            err("1,2\n3,\n", HeaderMode::Auto),
            "t.csv:2:2 (byte 6): expected a number, found ``"
        );
        assert_eq!(
            err("1,2\n3,nan\n", HeaderMode::Auto),
            "t.csv:2:2 (byte 6): expected a number, found `nan`"
        );
        assert_eq!(
            err("1,2\n3,1e39\n", HeaderMode::Auto),
            "t.csv:2:2 (byte 6): value `1e39` does not fit in f32"
        );
        let long = format!("1\n{}\n", "x".repeat(100));
        assert_eq!(
            err(&long, HeaderMode::Auto),
            format!(
                "t.csv:2:1 (byte 2): expected a number, found `{}…`",
                "x".repeat(40)
            )
        );
    }

    #[test]
    fn ragged_rows() {
        // Too few: points just past the end of the short line.
        assert_eq!(
            err("1,2,3\n4,5\n", HeaderMode::Auto),
            "t.csv:2:3 (byte 9): row has 2 fields, expected 3"
        );
        // Too many: points at the first extra field.
        assert_eq!(
            err("1,2\n4,5,6,7\n", HeaderMode::Auto),
            "t.csv:2:3 (byte 8): row has 4 fields, expected 2"
        );
        // The header fixes the column count.
        assert_eq!(
            err("a,b,c\n1,2\n", HeaderMode::Auto),
            "t.csv:2:3 (byte 9): row has 2 fields, expected 3"
        );
        let wide: Vec<String> = (0..63).map(|i| i.to_string()).collect();
        let text = format!("{}\n{}\n", vec!["0"; 65].join(","), wide.join(","));
        let msg = err(&text, HeaderMode::Absent);
        assert!(msg.ends_with(": row has 63 fields, expected 65"), "{msg}");
    }

    #[test]
    fn empty_files() {
        assert_eq!(
            err("", HeaderMode::Auto),
            "t.csv: empty CSV file: no data rows"
        );
        assert_eq!(
            err("\n \r\n\n", HeaderMode::Auto),
            "t.csv: empty CSV file: no data rows"
        );
        assert_eq!(
            err("a,b\n\n", HeaderMode::Auto),
            "t.csv: CSV file has a header row but no data rows"
        );
    }

    #[test]
    fn gzipped_errors_name_the_file_and_decompressed_offsets() {
        let dir = TempDir::new("csv-gz");
        let path = dir.write("d.csv.gz", &gzip(b"1,2\n3,abc\n"));
        assert_eq!(
            load(&path, &CsvOptions::default()).unwrap_err().to_string(),
            format!(
                "{}:2:2 (byte 6 of the decompressed stream): expected a number, found `abc`",
                path.display()
            )
        );
        let path = dir.write("empty.csv.gz", &gzip(b""));
        assert_eq!(
            load(&path, &CsvOptions::default()).unwrap_err().to_string(),
            format!("{}: empty CSV file: no data rows", path.display())
        );
        let gz = gzip(b"1,2\n3,4\n");
        let path = dir.write("cut.csv.gz", &gz[..gz.len() - 6]);
        assert_eq!(
            load(&path, &CsvOptions::default()).unwrap_err().to_string(),
            format!(
                "{}: gzip stream ends early (the file looks truncated)",
                path.display()
            )
        );
    }

    #[test]
    fn column_selection_and_labels() {
        let p = Path::new("t.csv");
        let t = parse(
            b"1,2,3,0\n4,5,6,1\n7,8,9,2\n",
            p,
            false,
            &CsvOptions::default(),
        )
        .unwrap();
        assert_eq!(t.columns(1..3).unwrap(), [2.0, 3.0, 5.0, 6.0, 8.0, 9.0]);
        assert_eq!(t.labels(3).unwrap(), [0, 1, 2]);
        let (x, y) = t.features_and_labels(0..3, 3).unwrap();
        assert_eq!((x.samples(), x.sample_shape()), (3, &[3][..]));
        assert_eq!((y.samples(), y.sample_shape()), (3, &[][..]));
        assert_eq!(y.storage(), &Storage::I32(vec![0, 1, 2]));
        assert_eq!(x.source(), Some(p));
        assert_eq!(
            t.columns(2..5).unwrap_err().to_string(),
            "t.csv: column range 2..5 is invalid for a table of 4 columns \
             (0-based, end exclusive, must be non-empty)"
        );
        assert!(t.columns(2..2).is_err());
        assert_eq!(
            t.labels(4).unwrap_err().to_string(),
            "t.csv: label column 4 is out of bounds for a table of 4 columns (0-based)"
        );
    }

    #[test]
    fn non_integer_labels_name_the_line() {
        let p = Path::new("t.csv");
        let t = parse(
            b"h1,h2\n1,0\n2,1.5\n3,2.25\n",
            p,
            false,
            &CsvOptions::default(),
        )
        .unwrap();
        assert_eq!(
            t.labels(1).unwrap_err().to_string(),
            "t.csv:3:2 (byte 12): label `1.5` is not an integer"
        );
        // Too close to an integer for f32 to notice, but still caught.
        let t = parse(b"0,2.0000001\n", p, false, &CsvOptions::default()).unwrap();
        assert_eq!(t.data()[1], 2.0);
        assert_eq!(
            t.labels(1).unwrap_err().to_string(),
            "t.csv:1:2 (byte 2): label `2.0000001` is not an integer"
        );
        let t = parse(b"0,16777217\n", p, false, &CsvOptions::default()).unwrap();
        assert_eq!(
            t.labels(1).unwrap_err().to_string(),
            "t.csv:1:2 (byte 2): label `16777217` is too large (labels must be within ±16777216)"
        );
        assert_eq!(t.labels(0).unwrap(), [0]);
    }

    #[test]
    fn never_panics_on_odd_input() {
        let inputs: [&[u8]; 8] = [
            b"\xff\xfe,\x00\n1,2",
            b",,,\n,,,",
            b"\r\r\r",
            b"\"",
            b"\"\"\n1",
            b"1,2\n\xEF\xBB\xBF3,4",
            b"\xEF\xBB",
            b"1e999999,0",
        ];
        for mode in [HeaderMode::Auto, HeaderMode::Present, HeaderMode::Absent] {
            for input in inputs {
                let _ = parse(input, Path::new("x"), false, &opts(mode));
            }
        }
    }

    #[test]
    fn real_digits_if_present() {
        let Some(path) = shared_data("digits/digits.csv.gz") else {
            return;
        };
        let t = load(&path, &CsvOptions::default()).unwrap();
        assert_eq!(t.header(), None);
        assert_eq!((t.rows(), t.cols()), (1797, 65));
        let labels = t.labels(64).unwrap();
        assert!(labels.iter().all(|&l| (0..10).contains(&l)));
        for class in 0..10 {
            assert!(labels.contains(&class), "class {class} missing");
        }
        let pixels = t.columns(0..64).unwrap();
        assert!(pixels.iter().all(|&v| (0.0..=16.0).contains(&v)));
    }
}
