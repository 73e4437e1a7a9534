//! The error corpus: every `spec/errors/*.nn` must fail to compile with a
//! located, rendered diagnostic. The rendered text is snapshot-tested, so a
//! change in wording or location shows up in review.

use nnc::driver;
use std::path::Path;

fn corpus() -> Vec<std::path::PathBuf> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("spec/errors");
    let mut files: Vec<_> = std::fs::read_dir(&dir)
        .expect("spec/errors exists")
        .map(|e| e.expect("readable entry").path())
        .filter(|p| p.extension().is_some_and(|e| e == "nn"))
        .collect();
    files.sort();
    files
}

#[test]
fn every_error_renders_with_a_location() {
    let files = corpus();
    assert!(
        files.len() >= 25,
        "the corpus has only {} cases",
        files.len()
    );
    for path in files {
        let name = path.file_stem().unwrap().to_string_lossy().to_string();
        let text = std::fs::read_to_string(&path).unwrap();
        let src = nnc_dsl::SourceFile::new(format!("spec/errors/{name}.nn"), text);
        let rendered = match driver::compile_source(&src, None) {
            Ok(_) => panic!("{name}.nn compiled, but it is in the error corpus"),
            Err(f) => f.0,
        };
        let location = format!("--> spec/errors/{name}.nn:");
        assert!(
            rendered.contains(&location),
            "{name}: no location in\n{rendered}"
        );
        assert!(rendered.contains('^'), "{name}: no caret in\n{rendered}");
        insta::assert_snapshot!(name, rendered);
    }
}

#[test]
fn the_binary_exits_1_with_the_diagnostic_on_stderr() {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_nnc"))
        .args(["check", "spec/errors/unknown_name.nn"])
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.starts_with("error: unknown name `hiden`"),
        "{stderr}"
    );
    assert!(
        stderr.contains("spec/errors/unknown_name.nn:3:20"),
        "{stderr}"
    );
    assert!(out.stdout.is_empty());
}

#[test]
fn a_missing_file_is_an_error_not_a_panic() {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_nnc"))
        .args(["check", "does/not/exist.nn"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("cannot read `does/not/exist.nn`"));
}
