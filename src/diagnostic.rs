//! The one diagnostic renderer: every error the CLI reports goes through
//! here, so they all look like rustc's.
//!
//! ```text
//! error: unknown name `hiden`
//!  --> model.nn:4:19
//!   |
//! 4 |     h = image -> dense(hiden)
//!   |                        ^^^^^ not found in this scope
//!   |
//!   = help: did you mean `hidden`?
//! ```

use nnc_dsl::{Error, SourceFile, Span};
use std::fmt::Write;

/// Renders a front-end error against its source file, without colour (the
/// output is stable, so it is snapshot-tested).
pub fn render(src: &SourceFile, err: &Error) -> String {
    let mut out = format!("error: {}\n", err.message);
    let (line, col) = src.line_col(err.span.start);
    let mut lines: Vec<usize> = vec![line];
    for (s, _) in &err.secondary {
        lines.push(src.line_col(s.start).0);
    }
    let width = lines.iter().max().copied().unwrap_or(1).to_string().len();
    let pad = " ".repeat(width);
    let _ = writeln!(out, "{pad}--> {}:{line}:{col}", src.path);
    let _ = writeln!(out, "{pad} |");
    // Secondary labels above the primary one when they come first.
    let mut annotated: Vec<(Span, Option<&str>, char)> = err
        .secondary
        .iter()
        .map(|(s, l)| (*s, Some(l.as_str()), '-'))
        .collect();
    annotated.push((err.span, err.label.as_deref(), '^'));
    annotated.sort_by_key(|(s, _, _)| s.start);
    let mut last_line = None;
    for (span, label, mark) in annotated {
        let (l, c) = src.line_col(span.start);
        if let Some(prev) = last_line {
            if l > prev + 1 {
                let _ = writeln!(out, "{pad} ...");
            }
        }
        let text = src.line_text(l).unwrap_or("");
        if last_line != Some(l) {
            let _ = writeln!(out, "{l:>width$} | {}", text.replace('\t', " "));
        }
        last_line = Some(l);
        // Underline within the first line of the span.
        let line_chars = text.chars().count();
        let span_chars = src
            .slice(span)
            .split('\n')
            .next()
            .unwrap_or("")
            .chars()
            .count();
        let len = span_chars.clamp(1, (line_chars + 1).saturating_sub(c - 1).max(1));
        let _ = write!(
            out,
            "{pad} | {}{}",
            " ".repeat(c - 1),
            mark.to_string().repeat(len)
        );
        match label {
            Some(l) => {
                let _ = writeln!(out, " {l}");
            }
            None => out.push('\n'),
        }
    }
    if !err.notes.is_empty() || err.help.is_some() {
        let _ = writeln!(out, "{pad} |");
    }
    for n in &err.notes {
        let _ = writeln!(out, "{pad} = note: {n}");
    }
    if let Some(h) = &err.help {
        let _ = writeln!(out, "{pad} = help: {h}");
    }
    out
}

/// An error that has no source location (I/O, data files, runtime).
pub fn render_plain(message: &str) -> String {
    format!("error: {message}\n")
}
