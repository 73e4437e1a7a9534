//! Lowering of train-block settings that only the runtime acts on
//! (`shuffle`), and their errors.

use nnc_dsl::{compile, SourceFile};
use nnc_ir::TrainSpec;

/// A linear model trained with the train-block `settings` added.
fn program(settings: &str) -> String {
    format!(
        "model M {{\n    input x: f32[B, 2]\n    y = x -> dense(1)\n    output y\n}}\n\
         data D {{\n    x = csv(\"d.csv\", columns: [0, 2])\n    t = csv(\"d.csv\", columns: [2, 3])\n}}\n\
         train M on D {{\n    loss = mse(y, t)\n    optimizer = sgd(lr: 0.1)\n{settings}\n}}\n"
    )
}

fn lower(settings: &str) -> TrainSpec {
    match compile(&SourceFile::new("t.nn", program(settings)), None) {
        Ok(module) => module.train.expect("a train block"),
        Err(e) => panic!("{e:?}"),
    }
}

#[test]
fn shuffle_defaults_to_true_and_can_be_turned_off() {
    assert!(lower("").shuffle);
    assert!(lower("    shuffle = true").shuffle);
    assert!(!lower("    shuffle = false").shuffle);
}

#[test]
fn shuffle_must_be_a_bool() {
    let text = program("    shuffle = 0");
    let err = compile(&SourceFile::new("t.nn", text.clone()), None).unwrap_err();
    assert_eq!(
        err.message,
        "`shuffle` must be `true` or `false`, found int 0"
    );
    assert_eq!(&text[err.span.start..err.span.end], "0");
}

/// The settings as reports show them: in the source's syntax (calls,
/// keywords, lists, pipes), numbers as parsed.
#[test]
fn settings_are_kept_in_source_syntax_for_reports() {
    let spec = lower(
        "    schedule = warmup(steps: 100) -> cosine()\n    metrics = [mae, rmse]\n    clip_grad_norm = 1e-8",
    );
    let written: Vec<(&str, &str)> = spec
        .written
        .iter()
        .map(|(k, v)| (k.as_str(), v.as_str()))
        .collect();
    assert_eq!(
        written,
        [
            ("loss", "mse(y, t)"),
            ("optimizer", "sgd(lr: 0.1)"),
            ("schedule", "warmup(steps: 100) -> cosine()"),
            ("metrics", "[mae, rmse]"),
            ("clip_grad_norm", "1e-8"),
        ]
    );
}
