//! Tidy checks of the workspace itself, in the spirit of rust-analyzer's
//! `tidy.rs`: the architecture's dependency rules and the `unsafe`
//! documentation rule, read from the sources so they cannot drift from
//! what is written in `ARCHITECTURE.md`.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

/// Which of our crates each crate may depend on (normal dependencies), as
/// `ARCHITECTURE.md`'s crate table says: data flows one way, `dsl → ir →
/// passes → codegen → runtime`, and only the CLI sees them all.
const ALLOWED: &[(&str, &[&str])] = &[
    ("ir", &[]),
    ("dsl", &["nnc-ir"]),
    ("passes", &["nnc-ir"]),
    ("kernels", &[]),
    ("codegen", &["nnc-ir", "nnc-kernels"]),
    ("runtime", &["nnc-ir", "nnc-passes", "nnc-codegen"]),
    (
        ".",
        &[
            "nnc-ir",
            "nnc-dsl",
            "nnc-passes",
            "nnc-codegen",
            "nnc-runtime",
        ],
    ),
];

/// Written exceptions for `[dev-dependencies]`: tests and benches may reach
/// further than the library, but only as listed here.
const DEV_EXCEPTIONS: &[(&str, &str, &str)] = &[
    (
        "codegen",
        "nnc-passes",
        "codegen's tests and benches differentiate convolutions to time and check their gradient graphs",
    ),
    (
        "dsl",
        "nnc-passes",
        "dsl's tests check the gradients of the prelude's recurrent layers against finite differences",
    ),
];

/// Third-party crates a crate must never use: `passes` never see
/// Cranelift; the e-graph engine stays in `passes`; the HTTP server and
/// its async runtime stay in the CLI (`nnc serve`).
const BANNED: &[(&str, &str)] = &[
    ("passes", "cranelift"),
    // The host kernels are what an ahead-of-time object links without
    // the compiler: no code generator in them.
    ("kernels", "cranelift"),
    ("ir", "cranelift"),
    ("dsl", "cranelift"),
    ("ir", "egg"),
    ("codegen", "egg"),
    ("runtime", "egg"),
    ("codegen", "pest"),
    ("runtime", "pest"),
    ("ir", "axum"),
    ("dsl", "axum"),
    ("passes", "axum"),
    ("codegen", "axum"),
    ("runtime", "axum"),
    ("ir", "tokio"),
    ("dsl", "tokio"),
    ("passes", "tokio"),
    ("codegen", "tokio"),
    ("runtime", "tokio"),
];

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// `(section, dependency name, line number)` of every dependency in a
/// manifest's `[dependencies]` and `[dev-dependencies]` sections, for both
/// `name = ...` and `name.workspace = true` forms.
fn dependencies(manifest: &Path) -> Vec<(String, String, usize)> {
    let text =
        std::fs::read_to_string(manifest).unwrap_or_else(|e| panic!("{}: {e}", manifest.display()));
    let mut section = String::new();
    let mut deps = Vec::new();
    for (i, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.starts_with('[') {
            section = line.trim_matches(|c| c == '[' || c == ']').to_string();
            continue;
        }
        if !(section == "dependencies" || section == "dev-dependencies") {
            continue;
        }
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let name = line
            .split(['=', '.'])
            .next()
            .unwrap_or_default()
            .trim()
            .to_string();
        if !name.is_empty() {
            deps.push((section.clone(), name, i + 1));
        }
    }
    deps
}

fn members() -> Vec<String> {
    let text = std::fs::read_to_string(root().join("Cargo.toml")).unwrap();
    let line = text
        .lines()
        .find(|l| l.trim_start().starts_with("members"))
        .expect("the workspace lists its members");
    let list = &line[line.find('[').unwrap() + 1..line.rfind(']').unwrap()];
    list.split(',')
        .map(|m| m.trim().trim_matches('"').to_string())
        .filter(|m| !m.is_empty())
        .collect()
}

#[test]
fn crates_depend_only_as_the_architecture_allows() {
    let mut crates = members();
    crates.push(".".to_string());
    let mut failures = Vec::new();
    let mut seen_ours = 0;
    for krate in &crates {
        let Some((_, allowed)) = ALLOWED.iter().find(|(c, _)| c == krate) else {
            failures.push(format!(
                "workspace member `{krate}` has no row in tests/tidy.rs's ALLOWED table \
                 (add it, and to ARCHITECTURE.md's crate table)"
            ));
            continue;
        };
        let manifest = root().join(krate).join("Cargo.toml");
        for (section, dep, line) in dependencies(&manifest) {
            let at = format!("{}:{line}", manifest.display());
            if dep.starts_with("nnc-") {
                seen_ours += 1;
                let ok = allowed.contains(&dep.as_str())
                    || (section == "dev-dependencies"
                        && DEV_EXCEPTIONS
                            .iter()
                            .any(|(c, d, _)| c == krate && *d == dep));
                if !ok {
                    failures.push(format!(
                        "{at}: `{krate}` depends on `{dep}` ({section}), which ARCHITECTURE.md \
                         forbids: it may depend on {allowed:?}"
                    ));
                }
            }
            for (c, prefix) in BANNED {
                if c == krate && dep.starts_with(prefix) {
                    failures.push(format!(
                        "{at}: `{krate}` must never use `{dep}` (ARCHITECTURE.md's \"never\" rules)"
                    ));
                }
            }
        }
    }
    // The manifests say `nnc-ir.workspace = true`: make sure the parser saw
    // our own crates at all, so that this test cannot pass by reading
    // nothing.
    assert!(
        seen_ours >= 10,
        "read only {seen_ours} dependencies on our own crates"
    );
    assert!(failures.is_empty(), "\n{}", failures.join("\n"));
}

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for entry in entries.flatten() {
        let path = entry.path();
        let name = entry.file_name();
        if name == "target" || name.to_string_lossy().starts_with('.') {
            continue;
        }
        if path.is_dir() {
            rust_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

/// Whether `line` declares an unsafe function (not an unsafe block or
/// an `unsafe fn` pointer type).
fn declares_unsafe_fn(line: &str) -> bool {
    let code = line.split("//").next().unwrap_or_default();
    let Some(at) = code.find("unsafe ") else {
        return false;
    };
    let rest = &code[at + "unsafe ".len()..];
    let rest = rest.strip_prefix("extern \"C\" ").unwrap_or(rest);
    // Only qualifiers may stand before `unsafe` in a declaration.
    let qualifier = |w: &str| w == "pub" || w.starts_with("pub(") || w == "const" || w == "async";
    let declared = code[..at].split_whitespace().all(qualifier);
    declared && rest.starts_with("fn ")
}

/// Whether line `i` lies in an `impl Trait for Type` block: the nearest
/// line above it that is indented less opens such an impl.
fn implements_trait(lines: &[&str], i: usize) -> bool {
    let indent = |l: &str| l.len() - l.trim_start().len();
    let own = indent(lines[i]);
    lines[..i]
        .iter()
        .rev()
        .find(|l| !l.trim().is_empty() && indent(l) < own)
        .is_some_and(|l| {
            let l = l.trim();
            (l.starts_with("impl") || l.starts_with("unsafe impl")) && l.contains(" for ")
        })
}

#[test]
fn every_unsafe_fn_documents_its_safety() {
    let mut files = Vec::new();
    for dir in ["src", "tests", "ir", "dsl", "passes", "codegen", "runtime"] {
        rust_files(&root().join(dir), &mut files);
    }
    files.sort();
    let mut failures = Vec::new();
    let mut checked = BTreeSet::new();
    for file in &files {
        let text = std::fs::read_to_string(file).unwrap();
        let lines: Vec<&str> = text.lines().collect();
        for (i, line) in lines.iter().enumerate() {
            if !declares_unsafe_fn(line) {
                continue;
            }
            checked.insert(file.clone());
            if implements_trait(&lines, i) {
                // The trait's documentation states the contract
                // (`GlobalAlloc::alloc`, say).
                continue;
            }
            // The doc comment right above, over attributes.
            let mut j = i;
            let mut safety = false;
            while j > 0 {
                j -= 1;
                let above = lines[j].trim();
                if above.starts_with("#[") || above.starts_with("#![") {
                    continue;
                }
                if !above.starts_with("///") {
                    break;
                }
                safety |= above.trim_start_matches('/').trim() == "# Safety";
            }
            if !safety {
                failures.push(format!(
                    "{}:{}: `unsafe fn` without a `# Safety` section in its doc comment \
                     (say what the caller must guarantee)",
                    file.strip_prefix(root()).unwrap_or(file).display(),
                    i + 1
                ));
            }
        }
    }
    assert!(
        !checked.is_empty(),
        "found no `unsafe fn` at all: the scan is broken"
    );
    assert!(failures.is_empty(), "\n{}", failures.join("\n"));
}

#[test]
fn the_unsafe_fn_scan_tells_declarations_from_uses() {
    assert!(declares_unsafe_fn("pub unsafe fn f() {"));
    assert!(declares_unsafe_fn("    unsafe fn f() {"));
    assert!(declares_unsafe_fn(
        "pub(crate) unsafe extern \"C\" fn nnc_sgemm("
    ));
    assert!(!declares_unsafe_fn("    unsafe { f() }"));
    assert!(!declares_unsafe_fn("    let f: unsafe fn() = g;"));
    assert!(!declares_unsafe_fn("    // unsafe fn in a comment"));
}
