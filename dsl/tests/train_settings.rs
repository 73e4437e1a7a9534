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

#[test]
fn prune_lowers_with_tf_mot_defaults_and_is_written_as_given() {
    use nnc_ir::{Prune, PruneScope};
    assert_eq!(lower("").prune, None);
    let spec = lower("    prune = magnitude(sparsity: 0.8)");
    let text = program("    prune = magnitude(sparsity: 0.8)");
    let span = spec.prune.as_ref().and_then(|p| p.span).unwrap();
    assert_eq!(
        &text[span.start as usize..span.end as usize],
        "magnitude(sparsity: 0.8)"
    );
    assert_eq!(
        spec.prune.map(|p| Prune { span: None, ..p }),
        Some(Prune {
            sparsity: 0.8,
            start: 1,
            end: None,
            every: 100,
            scope: PruneScope::Layer,
            span: None,
        })
    );
    assert_eq!(
        spec.written.last().map(|(k, v)| (k.as_str(), v.as_str())),
        Some(("prune", "magnitude(sparsity: 0.8)"))
    );
    let spec =
        lower("    prune = magnitude(sparsity: 0.5, start: 2, end: 2, every: 7, scope: global)");
    assert_eq!(
        spec.prune.map(|p| Prune { span: None, ..p }),
        Some(Prune {
            sparsity: 0.5,
            start: 2,
            end: Some(2),
            every: 7,
            scope: PruneScope::Global,
            span: None,
        })
    );
    // `sparsity` is an int or a float; 0 prunes nothing.
    assert_eq!(
        lower("    prune = magnitude(sparsity: 0)")
            .prune
            .unwrap()
            .sparsity,
        0.0
    );
}

#[test]
fn prune_errors_point_at_the_bad_argument() {
    for (setting, message, at) in [
        (
            "magnitude(sparsity: 1.0)",
            "`sparsity` must be in [0, 1), found 1",
            "1.0",
        ),
        (
            "magnitude(sparsity: -0.1)",
            "`sparsity` must be in [0, 1), found -0.1",
            "-0.1",
        ),
        (
            "magnitude(start: 2)",
            "missing argument `sparsity` of `magnitude`",
            "magnitude",
        ),
        (
            "magnitude(sparsity: 0.5, start: 0)",
            "`start` must be a positive int, found 0",
            "0",
        ),
        (
            "magnitude(sparsity: 0.5, every: 2.5)",
            "`every` must be a positive int, found float 2.5",
            "2.5",
        ),
        (
            "magnitude(sparsity: 0.5, start: 3, end: 1)",
            "pruning ends at epoch 1, before it starts at epoch 3",
            "1",
        ),
        (
            "magnitude(sparsity: 0.5, scope: all)",
            "unknown scope `all`",
            "all",
        ),
        (
            "magnitude(sparsity: 0.5, scope: 1)",
            "expected `layer` or `global`",
            "1",
        ),
        ("magnitude(sparsity: 0.5, rate: 1)", "", "rate"),
        ("l1(sparsity: 0.5)", "unknown pruning method `l1`", "l1"),
    ] {
        let text = program(&format!("    prune = {setting}"));
        let err = compile(&SourceFile::new("t.nn", text.clone()), None).unwrap_err();
        if !message.is_empty() {
            assert_eq!(err.message, message, "{setting}");
        }
        let span = &text[err.span.start..err.span.end];
        assert!(span.contains(at), "{setting}: {span:?} ({})", err.message);
    }
}
