//! Lowering of `metrics` and `validate = kfold(k)`, and their errors at
//! the train block.

use nnc_dsl::{compile, SourceFile};
use nnc_ir::{Average, KFold, Metric, SetMetric, TargetKind, TrainSpec};

/// A classifier of 3 classes (`logits`, `label: i32`).
fn classifier(settings: &str) -> String {
    format!(
        "model M {{\n    input x: f32[B, 2]\n    logits = x -> dense(3)\n    output logits\n}}\n\
         data D {{\n    x = csv(\"d.csv\", columns: [0, 2])\n    label: i32 = csv(\"d.csv\", column: 2)\n}}\n\
         train M on D {{\n    loss = cross_entropy(logits, label)\n    optimizer = sgd(lr: 0.1)\n{settings}\n}}\n"
    )
}

/// A regression of one value (`y`, `t: f32`).
fn regression(settings: &str) -> String {
    format!(
        "model M {{\n    input x: f32[B, 2]\n    y = x -> dense(1)\n    output y\n}}\n\
         data D {{\n    x = csv(\"d.csv\", columns: [0, 2])\n    t = csv(\"d.csv\", columns: [2, 3])\n}}\n\
         train M on D {{\n    loss = mse(y, t)\n    optimizer = sgd(lr: 0.1)\n{settings}\n}}\n"
    )
}

/// A binary classifier of probabilities (`p`, `t: f32`).
fn binary(settings: &str) -> String {
    format!(
        "model M {{\n    input x: f32[B, 2]\n    p = x -> dense(1) -> sigmoid\n    output p\n}}\n\
         data D {{\n    x = csv(\"d.csv\", columns: [0, 2])\n    t = csv(\"d.csv\", columns: [2, 3])\n}}\n\
         train M on D {{\n    loss = binary_cross_entropy(p, t)\n    optimizer = sgd(lr: 0.1)\n{settings}\n}}\n"
    )
}

fn lower(text: String) -> TrainSpec {
    match compile(&SourceFile::new("t.nn", text), None) {
        Ok(module) => module.train.expect("a train block"),
        Err(e) => panic!("{e:?}"),
    }
}

/// The error's message and the text it points at.
fn error(text: String) -> (String, String) {
    let err = compile(&SourceFile::new("t.nn", text.clone()), None).unwrap_err();
    (
        err.message.clone(),
        text[err.span.start..err.span.end].to_string(),
    )
}

fn set_metrics(spec: &TrainSpec) -> Vec<(SetMetric, TargetKind, String)> {
    spec.metrics
        .iter()
        .filter_map(|m| match m {
            Metric::Set(s, t) => Some((*s, t.kind, t.label.clone())),
            Metric::Accuracy => None,
        })
        .collect()
}

#[test]
fn classifier_metrics_read_the_class_label() {
    let spec = lower(classifier(
        "    metrics = [accuracy, f1, precision(average: \"micro\"), recall(average: \"weighted\"), top_k(2), confusion]",
    ));
    assert_eq!(spec.metrics[0], Metric::Accuracy);
    let c = TargetKind::Classes(3);
    let label = "label".to_string();
    assert_eq!(
        set_metrics(&spec),
        vec![
            (SetMetric::F1(Average::Macro), c, label.clone()),
            (SetMetric::Precision(Average::Micro), c, label.clone()),
            (SetMetric::Recall(Average::Weighted), c, label.clone()),
            (SetMetric::TopK(2), c, label.clone()),
            (SetMetric::Confusion, c, label),
        ]
    );
    assert_eq!(spec.kfold, None);
}

#[test]
fn regression_and_binary_metrics() {
    let spec = lower(regression("    metrics = [mae, rmse, r2]"));
    let kinds: Vec<_> = set_metrics(&spec)
        .into_iter()
        .map(|(m, k, _)| (m, k))
        .collect();
    assert_eq!(
        kinds,
        vec![
            (SetMetric::Mae, TargetKind::Regression),
            (SetMetric::Rmse, TargetKind::Regression),
            (SetMetric::R2, TargetKind::Regression),
        ]
    );
    let spec = lower(binary(
        "    metrics = [binary_accuracy, f1, precision(threshold: 0.3, logits: false)]",
    ));
    let half = TargetKind::Binary {
        threshold: 0.5,
        logits: false,
    };
    let kinds: Vec<_> = set_metrics(&spec)
        .into_iter()
        .map(|(m, k, _)| (m, k))
        .collect();
    assert_eq!(
        kinds,
        vec![
            (SetMetric::BinaryAccuracy, half),
            (SetMetric::F1(Average::Macro), half),
            (
                SetMetric::Precision(Average::Macro),
                TargetKind::Binary {
                    threshold: 0.3,
                    logits: false
                }
            ),
        ]
    );
}

#[test]
fn kfold_is_stratified_by_the_class_label_of_a_classifier() {
    let spec = lower(classifier("    validate = kfold(5)"));
    assert_eq!(
        spec.kfold,
        Some(KFold {
            k: 5,
            stratify: Some("label".into())
        })
    );
    assert_eq!(spec.validate, None);
    let spec = lower(regression("    validate = kfold(3)"));
    assert_eq!(
        spec.kfold,
        Some(KFold {
            k: 3,
            stratify: None
        })
    );
    assert_eq!(
        lower(regression("    validate = split(0.25)")).validate,
        Some(0.25)
    );
}

#[test]
fn kfold_needs_two_folds() {
    let (message, at) = error(classifier("    validate = kfold(1)"));
    assert_eq!(message, "`kfold` needs at least 2 folds, found 1");
    assert_eq!(at, "1");
    let (message, at) = error(classifier("    validate = kfold(0.5)"));
    assert!(message.contains("number of folds"), "{message}");
    assert_eq!(at, "0.5");
}

#[test]
fn a_metric_that_does_not_fit_the_model_is_an_error_at_the_metric() {
    for m in ["f1", "precision", "confusion", "top_k(1)"] {
        let (message, at) = error(regression(&format!("    metrics = [{m}]")));
        assert!(message.contains("needs a classifier"), "{m}: {message}");
        assert_eq!(at, m.trim_end_matches("(1)"));
    }
    let (message, at) = error(classifier("    metrics = [r2]"));
    assert_eq!(
        message,
        "`r2` needs real-valued targets, but `label` holds integer class labels"
    );
    assert_eq!(at, "r2");
    let (message, _) = error(classifier("    metrics = [binary_accuracy]"));
    assert!(message.contains("needs a binary classifier"), "{message}");
    let (message, at) = error(classifier("    metrics = [top_k(3)]"));
    assert!(message.contains("from 1 to 2"), "{message}");
    assert_eq!(at, "3");
    let (message, at) = error(binary("    metrics = [f1(average: \"micro\")]"));
    assert!(message.contains("positive class"), "{message}");
    assert_eq!(at, "\"micro\"");
    let (message, at) = error(classifier("    metrics = [f1(average: \"samples\")]"));
    assert!(
        message.contains("\"macro\", \"micro\" or \"weighted\""),
        "{message}"
    );
    assert_eq!(at, "\"samples\"");
    let (message, _) = error(binary("    metrics = [binary_accuracy(threshold: 1.5)]"));
    assert!(message.contains("[0, 1]"), "{message}");
}

#[test]
fn unknown_and_repeated_metrics() {
    let err = compile(
        &SourceFile::new("t.nn", classifier("    metrics = [f2]")),
        None,
    )
    .unwrap_err();
    assert_eq!(err.message, "unknown metric `f2`");
    assert_eq!(err.help.as_deref(), Some("did you mean `f1`?"));
    let (message, at) = error(classifier("    metrics = [f1, f1]"));
    assert_eq!(message, "metric `f1` is listed twice");
    assert_eq!(at, "f1");
}
