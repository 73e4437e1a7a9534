//! The layering of `codegen/src`: the planning half (`src/plan/`) decides
//! everything as data and imports nothing from Cranelift and nothing from
//! the emitting half (`src/emit/`, and the modules `lib.rs` re-exports
//! from it under their old names, such as `crate::matmul`); the emitting
//! half imports the plan. Comments are not checked (the plan's docs name
//! the emitter's functions that follow its decisions).

use std::path::{Path, PathBuf};

/// The files of the planning half this test must find, so that it cannot
/// pass by reading nothing.
const EXPECTED: [&str; 10] = [
    "mod.rs",
    "arena.rs",
    "expr.rs",
    "group.rs",
    "kind.rs",
    "matmul.rs",
    "scan.rs",
    "split.rs",
    "summary.rs",
    "window.rs",
];

fn src() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("src")
}

/// Every `.rs` file under `dir`, recursively, sorted.
fn rust_files(dir: &Path) -> Vec<PathBuf> {
    let mut files = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for entry in std::fs::read_dir(&d).unwrap_or_else(|e| panic!("{}: {e}", d.display())) {
            let path = entry.unwrap().path();
            if path.is_dir() {
                stack.push(path);
            } else if path.extension().is_some_and(|e| e == "rs") {
                files.push(path);
            }
        }
    }
    files.sort();
    files
}

/// The modules `lib.rs` re-exports from the emitting half
/// (`pub use emit::{matmul, program};` makes `crate::matmul` emitting code).
fn emit_aliases(lib: &str) -> Vec<String> {
    let mut names = Vec::new();
    for line in lib.lines() {
        let Some(rest) = line.trim().strip_prefix("pub use emit::") else {
            continue;
        };
        let rest = rest.trim_end_matches(';');
        let list = rest.trim_start_matches('{').trim_end_matches('}');
        for item in list.split(',') {
            // `a as b` exports the name `b`.
            let name = item.split(" as ").last().unwrap_or("").trim();
            if !name.is_empty() && name.chars().all(|c| c.is_alphanumeric() || c == '_') {
                names.push(name.to_string());
            }
        }
    }
    names
}

fn is_ident(c: char) -> bool {
    c.is_alphanumeric() || c == '_'
}

/// Whether `code` contains `word` as a whole identifier (or path: the
/// characters around it are not identifier characters).
fn has_word(code: &str, word: &str) -> bool {
    code.match_indices(word).any(|(i, _)| {
        let before = code[..i].chars().next_back();
        let after = code[i + word.len()..].chars().next();
        !before.is_some_and(is_ident) && !after.is_some_and(is_ident)
    })
}

/// Whether an identifier in `code` starts with `prefix`: a crate such as
/// `cranelift_codegen`, not a name such as `use_cranelift`.
fn starts_word(code: &str, prefix: &str) -> bool {
    code.match_indices(prefix)
        .any(|(i, _)| !code[..i].chars().next_back().is_some_and(is_ident))
}

/// The lines of `text` (1-based) whose code, comments removed, reaches
/// Cranelift or the emitting half, with the reason.
fn violations(text: &str, aliases: &[String]) -> Vec<(usize, String)> {
    let mut found = Vec::new();
    for (i, line) in text.lines().enumerate() {
        let code = line.split("//").next().unwrap_or("");
        let mut why = Vec::new();
        if starts_word(code, "cranelift") {
            why.push("Cranelift".to_string());
        }
        if has_word(code, "emit") {
            why.push("the emitting half (`emit`)".to_string());
        }
        for alias in aliases {
            if has_word(code, &format!("crate::{alias}")) {
                why.push(format!(
                    "the emitting half (`crate::{alias}` is `emit::{alias}`)"
                ));
            }
        }
        if !why.is_empty() {
            found.push((i + 1, format!("{} ({})", line.trim(), why.join(", "))));
        }
    }
    found
}

#[test]
fn the_planning_half_imports_neither_cranelift_nor_the_emitting_half() {
    let src = src();
    let lib = std::fs::read_to_string(src.join("lib.rs")).unwrap();
    let aliases = emit_aliases(&lib);
    let files = rust_files(&src.join("plan"));
    for name in EXPECTED {
        let path = src.join("plan").join(name);
        assert!(files.contains(&path), "{} is missing", path.display());
    }
    let mut bad = Vec::new();
    for path in &files {
        let text = std::fs::read_to_string(path).unwrap();
        assert!(
            text.lines().count() > 10,
            "{} is nearly empty",
            path.display()
        );
        let rel = path.strip_prefix(&src).unwrap().display().to_string();
        for (line, what) in violations(&text, &aliases) {
            bad.push(format!("src/{rel}:{line}: {what}"));
        }
    }
    assert!(
        bad.is_empty(),
        "the planning half must not import Cranelift or the emitting half:\n{}",
        bad.join("\n")
    );
}

/// The emitting half is where Cranelift is (so the check above looks at
/// the right tree), and it reads the plan.
#[test]
fn the_emitting_half_uses_cranelift_and_the_plan() {
    let files = rust_files(&src().join("emit"));
    assert!(files.len() >= 5, "too few files under src/emit: {files:?}");
    let texts: Vec<String> = files
        .iter()
        .map(|p| std::fs::read_to_string(p).unwrap())
        .collect();
    assert!(texts.iter().any(|t| t.contains("use cranelift_codegen")));
    assert!(texts.iter().any(|t| t.contains("use crate::plan")));
}

#[test]
fn the_check_finds_each_kind_of_import() {
    let aliases = vec!["matmul".to_string(), "program".to_string()];
    let text = "\
use crate::CodegenError;
use cranelift_codegen::ir::Value;
use crate::emit::Kind;
use super::super::emit;
// emit::splits is named in a comment only
let b = crate::matmul::use_cranelift(1, 2, 3, false); // crate::program
use super::matmul::use_cranelift;
fn emit_like() {}
let x = {cranelift_frontend::FunctionBuilder::new};
";
    let lines: Vec<usize> = violations(text, &aliases).iter().map(|v| v.0).collect();
    assert_eq!(lines, vec![2, 3, 4, 6, 9]);
    assert_eq!(
        emit_aliases("pub use emit::{matmul, program as prog};\npub use emit::window;"),
        vec!["matmul", "prog", "window"]
    );
}
