//! The one error type of the front end. It carries spans, not rendered
//! text: the CLI owns the single renderer (rustc-style, with the source line
//! and a caret), so library errors stay data.

use crate::span::Span;
use thiserror::Error;

#[derive(Debug, Clone, PartialEq, Error)]
#[error("{message}")]
pub struct Error {
    pub message: String,
    /// Where the problem is, in the user's file.
    pub span: Span,
    /// Text under the caret, e.g. "expected `f32[.., 784]`".
    pub label: Option<String>,
    /// Other places that explain the error (a previous definition).
    pub secondary: Vec<(Span, String)>,
    pub notes: Vec<String>,
    pub help: Option<String>,
}

impl Error {
    pub fn new(span: Span, message: impl Into<String>) -> Error {
        Error {
            message: message.into(),
            span,
            label: None,
            secondary: Vec::new(),
            notes: Vec::new(),
            help: None,
        }
    }

    pub fn with_label(mut self, label: impl Into<String>) -> Error {
        self.label = Some(label.into());
        self
    }

    pub fn with_note(mut self, note: impl Into<String>) -> Error {
        self.notes.push(note.into());
        self
    }

    pub fn with_help(mut self, help: impl Into<String>) -> Error {
        self.help = Some(help.into());
        self
    }

    pub fn with_secondary(mut self, span: Span, label: impl Into<String>) -> Error {
        self.secondary.push((span, label.into()));
        self
    }
}

impl From<crate::parse::ParseError> for Error {
    fn from(e: crate::parse::ParseError) -> Error {
        let mut err = Error::new(e.span, e.message);
        if !e.expected.is_empty() {
            err.label = Some(format!("expected {}", join_or(&e.expected)));
        }
        err.help = e.help;
        err
    }
}

/// `a`, `a or b`, `a, b or c`.
pub fn join_or(items: &[String]) -> String {
    match items {
        [] => String::new(),
        [one] => one.clone(),
        [init @ .., last] => format!("{} or {last}", init.join(", ")),
    }
}

/// The closest candidate within a small edit distance, for "did you mean".
pub fn did_you_mean<'a>(
    name: &str,
    candidates: impl IntoIterator<Item = &'a str>,
) -> Option<String> {
    let limit = (name.chars().count() / 3).max(1);
    candidates
        .into_iter()
        .filter(|c| *c != name)
        .map(|c| (edit_distance(name, c), c))
        .filter(|&(d, _)| d <= limit)
        .min()
        .map(|(_, c)| format!("did you mean `{c}`?"))
}

fn edit_distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut row: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut prev = row[0];
        row[0] = i + 1;
        for (j, &cb) in b.iter().enumerate() {
            let cur = row[j + 1];
            row[j + 1] = (prev + usize::from(ca != cb)).min(row[j] + 1).min(cur + 1);
            prev = cur;
        }
    }
    row[b.len()]
}
