//! Text classification data: tables with a text column and a class-name
//! column, the tokenizer, the vocabulary and the class names.
//!
//! A table is read once (plain or gzipped, UTF-8) into rows of cells, each
//! remembering its line for messages. A text column is tokenized once into
//! ids of a dictionary of every token seen; the vocabulary is then chosen
//! from the counts over the training samples alone, and every sample is
//! encoded to a fixed number of ids: 0 pads, 1 is a token outside the
//! vocabulary, words get ids from 2 by descending count.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use nnc_ir::{TextColumn, TextFormat};
use serde::{Deserialize, Serialize};

use super::error::{DataError, Result};
use super::source::read_maybe_gz;

/// The id of padding after a text's last token.
pub const PAD: i32 = 0;
/// The id of a token outside the vocabulary.
pub const UNKNOWN: i32 = 1;
/// Ids below this are reserved ([`PAD`], [`UNKNOWN`]).
pub const FIRST_WORD: i32 = 2;

/// The rows of a text table.
#[derive(Debug, Clone)]
pub struct TextTable {
    path: PathBuf,
    /// Column names (empty for [`TextFormat::Lines`]).
    header: Vec<String>,
    rows: Vec<Row>,
}

#[derive(Debug, Clone)]
struct Row {
    /// 1-based line of the file (of the decompressed stream when gzipped).
    line: usize,
    cells: Vec<String>,
}

/// Reads `path` (gzip detected by its magic bytes) laid out as `format`.
pub fn load_table(path: &Path, format: TextFormat) -> Result<TextTable> {
    let loaded = read_maybe_gz(path)?;
    parse_table(&loaded.bytes, path, format)
}

/// Parses a table already in memory; `path` is only for messages. Lines
/// holding only whitespace are skipped (the shipped `.tab` files have an
/// empty line after their header); every other line is a sample with
/// exactly as many cells as the header names.
pub fn parse_table(bytes: &[u8], path: &Path, format: TextFormat) -> Result<TextTable> {
    let bytes = bytes.strip_prefix(b"\xEF\xBB\xBF").unwrap_or(bytes);
    let header_lines = match format {
        TextFormat::Lines => 0,
        f => f.header_lines(),
    };
    let mut header = Vec::new();
    let mut rows = Vec::new();
    let mut lines = bytes.split(|&b| b == b'\n').enumerate().peekable();
    let mut line_count = 0;
    while let Some((index, raw)) = lines.next() {
        // The piece after a final newline is not a line.
        if raw.is_empty() && lines.peek().is_none() {
            break;
        }
        let line_no = index + 1;
        line_count = line_no;
        let raw = raw.strip_suffix(b"\r").unwrap_or(raw);
        let line = std::str::from_utf8(raw).map_err(|e| DataError::TextNotUtf8 {
            path: path.to_path_buf(),
            line: line_no,
            column: e.valid_up_to() + 1,
        })?;
        if index < header_lines {
            if index == 0 {
                header = split_line(line, format, path, line_no)?;
            }
            continue;
        }
        if line.trim().is_empty() {
            continue;
        }
        let cells = split_line(line, format, path, line_no)?;
        if format != TextFormat::Lines && cells.len() != header.len() {
            return Err(DataError::TextRaggedRow {
                path: path.to_path_buf(),
                line: line_no,
                found: cells.len(),
                expected: header.len(),
            });
        }
        rows.push(Row {
            line: line_no,
            cells,
        });
    }
    if line_count < header_lines {
        return Err(DataError::TextShortHeader {
            path: path.to_path_buf(),
            format: format.name(),
            expected: header_lines,
            found: line_count,
        });
    }
    if rows.is_empty() {
        return Err(DataError::TextNoSamples {
            path: path.to_path_buf(),
        });
    }
    Ok(TextTable {
        path: path.to_path_buf(),
        header,
        rows,
    })
}

/// The cells of one line: split on tabs, or on commas outside double
/// quotes for CSV (`""` inside quotes is one quote).
fn split_line(line: &str, format: TextFormat, path: &Path, line_no: usize) -> Result<Vec<String>> {
    match format {
        TextFormat::Lines => Ok(vec![line.to_string()]),
        TextFormat::Tab | TextFormat::Tsv => Ok(line.split('\t').map(str::to_string).collect()),
        TextFormat::Csv => {
            let mut cells = Vec::new();
            let mut cell = String::new();
            let mut chars = line.chars().peekable();
            let mut quoted = false;
            while let Some(c) = chars.next() {
                match (quoted, c) {
                    (true, '"') if chars.peek() == Some(&'"') => {
                        chars.next();
                        cell.push('"');
                    }
                    (true, '"') => quoted = false,
                    (false, '"') if cell.is_empty() => quoted = true,
                    (false, ',') => cells.push(std::mem::take(&mut cell)),
                    (_, c) => cell.push(c),
                }
            }
            if quoted {
                return Err(DataError::TextUnclosedQuote {
                    path: path.to_path_buf(),
                    line: line_no,
                });
            }
            cells.push(cell);
            Ok(cells)
        }
    }
}

impl TextTable {
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Samples (rows after the header).
    pub fn rows(&self) -> usize {
        self.rows.len()
    }

    pub fn header(&self) -> &[String] {
        &self.header
    }

    /// The 0-based index of `column`: a header name or an index.
    pub fn column(&self, column: &TextColumn) -> Result<usize> {
        let cols = self
            .rows
            .first()
            .map_or(self.header.len(), |r| r.cells.len());
        match column {
            TextColumn::Index(i) if *i < cols => Ok(*i),
            TextColumn::Index(i) => Err(DataError::TextColumnIndex {
                path: self.path.clone(),
                index: *i,
                cols,
            }),
            TextColumn::Name(name) => {
                self.header
                    .iter()
                    .position(|h| h == name)
                    .ok_or_else(|| DataError::TextNoColumn {
                        path: self.path.clone(),
                        name: name.clone(),
                        available: self.header.join(", "),
                    })
            }
        }
    }

    /// The cell of `column` in every row, with the row's line.
    fn cells(&self, column: usize) -> impl Iterator<Item = (usize, &str)> {
        self.rows
            .iter()
            .map(move |r| (r.line, r.cells.get(column).map_or("", String::as_str)))
    }
}

/// Appends the tokens of `text` to `out`: the words (runs of letters and
/// digits, lowercased), then for each `n` from 2 to `ngrams` its n-grams,
/// words joined by `_`.
pub fn tokenize(text: &str, ngrams: usize, out: &mut Vec<String>) {
    let mut scratch = Scratch::default();
    scratch.tokens(text, ngrams, |token| out.push(token.to_string()));
}

/// Buffers reused from text to text, so tokenizing allocates only for
/// tokens never seen before.
#[derive(Default)]
struct Scratch {
    /// The lowercased words of the current text, back to back.
    words: String,
    /// Where each word ends in `words`.
    ends: Vec<usize>,
    gram: String,
}

impl Scratch {
    /// Calls `each` with every token of `text`, in [`tokenize`]'s order.
    fn tokens(&mut self, text: &str, ngrams: usize, mut each: impl FnMut(&str)) {
        self.words.clear();
        self.ends.clear();
        let mut in_word = false;
        for c in text.chars() {
            let alphanumeric = if c.is_ascii() {
                c.is_ascii_alphanumeric()
            } else {
                c.is_alphanumeric()
            };
            if alphanumeric {
                if c.is_ascii() {
                    self.words.push(c.to_ascii_lowercase());
                } else {
                    self.words.extend(c.to_lowercase());
                }
                in_word = true;
            } else if in_word {
                self.ends.push(self.words.len());
                in_word = false;
            }
        }
        if in_word {
            self.ends.push(self.words.len());
        }
        let word = |k: usize| {
            let start = if k == 0 { 0 } else { self.ends[k - 1] };
            &self.words[start..self.ends[k]]
        };
        for k in 0..self.ends.len() {
            each(word(k));
        }
        for n in 2..=ngrams {
            for start in 0..self.ends.len().saturating_sub(n - 1) {
                self.gram.clear();
                for k in start..start + n {
                    if k > start {
                        self.gram.push('_');
                    }
                    self.gram.push_str(word(k));
                }
                each(&self.gram);
            }
        }
    }
}

/// FNV-1a: tokens are short, and SipHash's protection against chosen
/// collisions buys nothing for a dataset's own words but costs a third of
/// the tokenizing time.
#[derive(Default, Clone, Copy)]
struct Fnv(u64);

impl std::hash::Hasher for Fnv {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        let mut h = if self.0 == 0 {
            0xcbf2_9ce4_8422_2325
        } else {
            self.0
        };
        for &b in bytes {
            h ^= u64::from(b);
            h = h.wrapping_mul(0x0000_0100_0000_01b3);
        }
        self.0 = h;
    }
}

type FnvMap<K, V> = HashMap<K, V, std::hash::BuildHasherDefault<Fnv>>;

/// A text column, tokenized: every sample's tokens as ids into `words`, a
/// dictionary of every distinct token in the column.
#[derive(Debug, Clone)]
pub struct Tokenized {
    words: Vec<String>,
    ids: Vec<u32>,
    /// Where each sample's ids end in `ids`.
    ends: Vec<usize>,
}

/// Tokenizes `column` of every row. A text without a letter or digit is an
/// error naming its line: it would be nothing but padding.
pub fn tokenize_column(table: &TextTable, column: usize, ngrams: usize) -> Result<Tokenized> {
    let mut index: FnvMap<Box<str>, u32> = FnvMap::default();
    let mut words = Vec::new();
    let mut ids = Vec::new();
    let mut ends = Vec::with_capacity(table.rows());
    let mut scratch = Scratch::default();
    for (line, text) in table.cells(column) {
        let before = ids.len();
        scratch.tokens(text, ngrams, |token| {
            let id = match index.get(token) {
                Some(&id) => id,
                None => {
                    let id = words.len() as u32;
                    words.push(token.to_string());
                    index.insert(token.into(), id);
                    id
                }
            };
            ids.push(id);
        });
        if ids.len() == before {
            return Err(DataError::TextEmpty {
                path: table.path.clone(),
                line,
                column: column_name(table, column),
            });
        }
        ends.push(ids.len());
    }
    Ok(Tokenized { words, ids, ends })
}

fn column_name(table: &TextTable, column: usize) -> String {
    match table.header.get(column) {
        Some(name) => format!("`{name}`"),
        None => column.to_string(),
    }
}

impl Tokenized {
    pub fn samples(&self) -> usize {
        self.ends.len()
    }

    fn sample(&self, i: usize) -> &[u32] {
        let start = if i == 0 { 0 } else { self.ends[i - 1] };
        &self.ids[start..self.ends[i]]
    }
}

/// How a vocabulary is chosen.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct VocabularyOptions {
    pub min_count: usize,
    /// Most ids, the two reserved ones included.
    pub max_size: Option<usize>,
    pub ngrams: usize,
}

/// The tokens that get ids: `words[k]` has id `k + 2`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Vocabulary {
    pub options: VocabularyOptions,
    pub words: Vec<String>,
}

impl Vocabulary {
    /// The tokens of the samples `training` of `tokens` occurring at least
    /// `min_count` times, most frequent first (ties by the token, so the
    /// choice is deterministic), at most `max_size - 2` of them. Counts
    /// cover whole texts, also the tokens a sample's `length` cuts off.
    /// `path` and `column` name the source in the error for a vocabulary
    /// without a word.
    pub fn build(
        tokens: &Tokenized,
        training: &[usize],
        options: VocabularyOptions,
        path: &Path,
        column: &TextColumn,
    ) -> Result<Vocabulary> {
        let mut counts = vec![0usize; tokens.words.len()];
        for &i in training {
            for &id in tokens.sample(i) {
                counts[id as usize] += 1;
            }
        }
        let mut kept: Vec<u32> = (0..tokens.words.len() as u32)
            .filter(|&id| counts[id as usize] >= options.min_count.max(1))
            .collect();
        kept.sort_unstable_by(|&a, &b| {
            let (a, b) = (a as usize, b as usize);
            counts[b]
                .cmp(&counts[a])
                .then_with(|| tokens.words[a].cmp(&tokens.words[b]))
        });
        if let Some(max) = options.max_size {
            kept.truncate(max.saturating_sub(FIRST_WORD as usize));
        }
        if kept.is_empty() {
            return Err(DataError::TextEmptyVocabulary {
                path: path.to_path_buf(),
                column: column.to_string(),
                min_count: options.min_count,
                samples: training.len(),
            });
        }
        Ok(Vocabulary {
            options,
            words: kept
                .into_iter()
                .map(|id| tokens.words[id as usize].clone())
                .collect(),
        })
    }

    /// Ids, the two reserved ones included.
    pub fn size(&self) -> usize {
        self.words.len() + FIRST_WORD as usize
    }

    /// Every sample of `tokens` as `length` ids: its first `length` tokens
    /// (words, then n-grams), padded with [`PAD`] at the end.
    pub fn encode(&self, tokens: &Tokenized, length: usize) -> Vec<i32> {
        let ids: FnvMap<&str, i32> = self
            .words
            .iter()
            .enumerate()
            .map(|(k, w)| (w.as_str(), k as i32 + FIRST_WORD))
            .collect();
        let remap: Vec<i32> = tokens
            .words
            .iter()
            .map(|w| ids.get(w.as_str()).copied().unwrap_or(UNKNOWN))
            .collect();
        let mut out = Vec::with_capacity(tokens.samples() * length);
        for i in 0..tokens.samples() {
            let sample = tokens.sample(i);
            let kept = &sample[..sample.len().min(length)];
            out.extend(kept.iter().map(|&id| remap[id as usize]));
            out.resize(out.len() + length - kept.len(), PAD);
        }
        out
    }
}

/// The class names of the training samples, sorted: a class's index is
/// its place in `names`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClassNames {
    pub names: Vec<String>,
}

impl ClassNames {
    /// The distinct names in `column` of the rows `training`, sorted. An
    /// empty name is an error naming its line.
    pub fn build(table: &TextTable, column: usize, training: &[usize]) -> Result<ClassNames> {
        let mut names = Vec::new();
        for &i in training {
            let row = &table.rows[i];
            let name = class_name(table, row, column)?;
            names.push(name.to_string());
        }
        names.sort_unstable();
        names.dedup();
        Ok(ClassNames { names })
    }

    /// Each row's class index; a name absent from the training samples is
    /// an error naming its line.
    pub fn encode(&self, table: &TextTable, column: usize) -> Result<Vec<i32>> {
        table
            .rows
            .iter()
            .map(|row| {
                let name = class_name(table, row, column)?;
                self.names
                    .binary_search_by(|n| n.as_str().cmp(name))
                    .map(|k| k as i32)
                    .map_err(|_| DataError::TextUnknownClass {
                        path: table.path.clone(),
                        line: row.line,
                        class: name.to_string(),
                        known: list_names(&self.names),
                    })
            })
            .collect()
    }
}

fn class_name<'t>(table: &TextTable, row: &'t Row, column: usize) -> Result<&'t str> {
    let name = row.cells.get(column).map_or("", |c| c.trim());
    if name.is_empty() {
        return Err(DataError::TextEmptyClass {
            path: table.path.clone(),
            line: row.line,
            column: column_name(table, column),
        });
    }
    Ok(name)
}

/// The first few names, enough to spot a typo without flooding the
/// terminal with 20 newsgroups.
fn list_names(names: &[String]) -> String {
    const SHOWN: usize = 10;
    let mut list: Vec<String> = names.iter().take(SHOWN).map(|n| format!("`{n}`")).collect();
    if names.len() > SHOWN {
        list.push(format!("and {} more", names.len() - SHOWN));
    }
    format!("{}: {}", names.len(), list.join(", "))
}

/// What a text field's ids or indices mean: saved with a checkpoint so
/// that prediction encodes raw text as training did.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum FieldVocabulary {
    /// A `text` field's vocabulary.
    Tokens(Vocabulary),
    /// A `text_labels` field's class names.
    Classes(ClassNames),
}

/// The vocabularies of a data block's text fields, by field name.
pub type Vocabularies = std::collections::BTreeMap<String, FieldVocabulary>;

#[cfg(test)]
mod tests;
