//! Every example compiles; its IR, gradient and training-step graphs are
//! snapshot-tested, verify, and print back identically after a round trip
//! through the textual parser. Small examples train end to end with the
//! interpreter to the loss the issue promises.

use nnc::driver::{self, Emit, RunSettings};
use nnc_dsl::SourceFile;
use std::path::{Path, PathBuf};

mod common;
use common::EXAMPLES;

fn example(name: &str) -> (PathBuf, SourceFile) {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join(format!("examples/{name}.nn"));
    let text = std::fs::read_to_string(&path).unwrap();
    (path, SourceFile::new(format!("examples/{name}.nn"), text))
}

#[test]
fn examples_check_and_snapshot_every_stage() {
    for name in EXAMPLES {
        let (_, src) = example(name);
        for (stage, label) in [
            (Emit::Ir, "ir"),
            (Emit::Grad, "grad"),
            (Emit::TrainStep, "train_step"),
        ] {
            let text = driver::emit(&src, stage, None).unwrap_or_else(|f| panic!("{name}: {f}"));
            insta::assert_snapshot!(format!("{name}__{label}"), text);
        }
    }
}

/// Every `.nn` file in `examples/`, the long runs that the lists above
/// leave out for time too, compiles to a training step.
#[test]
fn every_example_file_compiles_to_a_training_step() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("examples");
    let mut seen = Vec::new();
    for entry in std::fs::read_dir(&dir).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_none_or(|e| e != "nn") {
            continue;
        }
        let name = path.file_stem().unwrap().to_string_lossy().into_owned();
        let (_, src) = example(&name);
        let module = driver::compile_source(&src, None).unwrap_or_else(|f| panic!("{name}: {f}"));
        driver::train_step(&module).unwrap_or_else(|f| panic!("{name}: {f}"));
        seen.push(name);
    }
    for name in EXAMPLES {
        assert!(seen.iter().any(|s| s == name), "{name} is not in examples/");
    }
    assert!(seen.len() > EXAMPLES.len(), "{seen:?}");
}

#[test]
fn printed_ir_parses_back_to_the_same_text() {
    for name in EXAMPLES {
        let (_, src) = example(name);
        let module = driver::compile_source(&src, None).unwrap();
        let step = driver::train_step(&module).unwrap();
        let objective = &module.train.as_ref().unwrap().objective;
        for graph in [&module.forward, objective, &step] {
            let text = graph.to_string();
            let parsed =
                nnc_ir::parse_graph(&text).unwrap_or_else(|e| panic!("{name}: {e}\n{text}"));
            nnc_ir::verify(&parsed).unwrap();
            assert_eq!(
                parsed.to_string(),
                text,
                "{name}: round trip changed the text"
            );
        }
    }
}

#[test]
fn ast_of_every_example_prints() {
    for name in EXAMPLES {
        let (_, src) = example(name);
        let ast = driver::emit(&src, Emit::Ast, None).unwrap();
        assert!(ast.contains("model"), "{name}: {ast}");
    }
}

fn train(name: &str) -> nnc_runtime::TrainReport {
    let (path, _) = example(name);
    let settings = RunSettings {
        run: nnc_runtime::RunOptions {
            backend: nnc::driver::Backend::Interp,
            ..Default::default()
        },
        ..Default::default()
    };
    driver::run(&path, &settings, &mut |_| {}).unwrap_or_else(|f| panic!("{name}: {f}"))
}

#[test]
fn xor_learns_with_the_interpreter() {
    let report = train("xor");
    let last = report.epochs.last().unwrap();
    assert!(last.train.loss < 0.01, "xor loss {}", last.train.loss);
}

#[test]
fn digits_mlp_trains_below_0_3_with_the_interpreter() {
    let report = train("digits_mlp");
    let last = report.epochs.last().unwrap();
    assert!(last.train.loss < 0.3, "digits loss {}", last.train.loss);
    let test = report.test.expect("digits holds out a test split");
    assert!(
        test.accuracy.unwrap() > 0.9,
        "digits test accuracy {:?}",
        test.accuracy
    );
}

/// `nnc summary` of every example: the rows are reviewed in the snapshots
/// (parameter counts as PyTorch's `sum(p.numel() for p in m.parameters())`
/// gives them per layer), and every param is owned by a row, since no
/// example declares params in the model body itself.
#[test]
fn summaries_of_every_example() {
    for name in EXAMPLES {
        let (_, src) = example(name);
        let module = driver::compile_source(&src, None).unwrap();
        let summary = module.summary();
        let owned: usize = summary.rows.iter().map(|r| r.params + r.states).sum();
        assert_eq!(owned, summary.params + summary.states, "{name}");
        insta::assert_snapshot!(format!("{name}__summary"), nnc::summary::render(&module));
    }
}
