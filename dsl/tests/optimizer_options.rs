//! Lowering of `adamw`, `rmsprop`, `adagrad`, the `no_decay` param groups,
//! the clipping settings and the `params()`/`weights()` penalty
//! collections: PyTorch's defaults, and a located error for each bad input.

use nnc_dsl::{compile, SourceFile};
use nnc_ir::{GradClip, Op, Optimizer, TrainSpec};

/// A two-layer model (params `dense.w`, `dense.b`, `dense_1.w`,
/// `dense_1.b`) trained with `loss`, `optimizer` and extra `settings`.
fn program(loss: &str, optimizer: &str, settings: &str) -> String {
    format!(
        "model M {{\n    input x: f32[B, 4]\n    y = x -> dense(3) -> relu -> dense(2)\n    output y\n}}\n\
         data D {{\n    x = csv(\"d.csv\", columns: [0, 4])\n    t = csv(\"d.csv\", columns: [4, 6])\n}}\n\
         train M on D {{\n    loss = {loss}\n    optimizer = {optimizer}\n{settings}\n}}\n"
    )
}

fn lower(loss: &str, optimizer: &str, settings: &str) -> Result<TrainSpec, (String, String)> {
    let source = program(loss, optimizer, settings);
    match compile(&SourceFile::new("t.nn", source.clone()), None) {
        Ok(m) => Ok(m.train.expect("a train block")),
        Err(e) => Err((e.message, source[e.span.start..e.span.end].to_string())),
    }
}

fn optimizer(text: &str) -> Result<TrainSpec, (String, String)> {
    lower("mse(y, t)", text, "")
}

/// The error's message and the source text it points at.
fn error(text: &str) -> (String, String) {
    optimizer(text).map(|t| t.optimizer).unwrap_err()
}

#[test]
fn new_optimizers_take_pytorchs_defaults() {
    assert_eq!(
        optimizer("adamw").unwrap().optimizer,
        Optimizer::AdamW {
            lr: 1e-3,
            beta1: 0.9,
            beta2: 0.999,
            eps: 1e-8,
            weight_decay: 1e-2,
        }
    );
    assert_eq!(
        optimizer("rmsprop").unwrap().optimizer,
        Optimizer::RmsProp {
            lr: 1e-2,
            alpha: 0.99,
            eps: 1e-8,
            weight_decay: 0.0,
            momentum: 0.0,
            centered: false,
        }
    );
    assert_eq!(
        optimizer("adagrad").unwrap().optimizer,
        Optimizer::Adagrad {
            lr: 1e-2,
            lr_decay: 0.0,
            weight_decay: 0.0,
            initial_accumulator_value: 0.0,
            eps: 1e-10,
        }
    );
    assert_eq!(
        optimizer("rmsprop(lr: 0.1, momentum: 0.9, centered: true, alpha: 0.5)")
            .unwrap()
            .optimizer,
        Optimizer::RmsProp {
            lr: 0.1,
            alpha: 0.5,
            eps: 1e-8,
            weight_decay: 0.0,
            momentum: 0.9,
            centered: true,
        }
    );
}

#[test]
fn out_of_range_options_are_located_errors() {
    for (text, message, covered) in [
        ("adamw(lr: 0)", "`lr` must be > 0, found 0", "0"),
        ("adamw(beta2: 1)", "`beta2` must be in [0, 1), found 1", "1"),
        (
            "adamw(weight_decay: -1)",
            "`weight_decay` must be >= 0, found -1",
            "-1",
        ),
        (
            "rmsprop(alpha: 1.0)",
            "`alpha` must be in [0, 1), found 1",
            "1.0",
        ),
        ("rmsprop(eps: -1)", "`eps` must be >= 0, found -1", "-1"),
        (
            "rmsprop(momentum: -0.5)",
            "`momentum` must be in [0, 1), found -0.5",
            "-0.5",
        ),
        (
            "rmsprop(centered: 1)",
            "`centered` must be true or false, found int 1",
            "1",
        ),
        (
            "adagrad(lr_decay: -0.1)",
            "`lr_decay` must be >= 0, found -0.1",
            "-0.1",
        ),
        (
            "adagrad(initial_accumulator_value: -1)",
            "`initial_accumulator_value` must be >= 0, found -1",
            "-1",
        ),
        (
            "adagrad(eps: -1e-10)",
            "`eps` must be >= 0, found -0.0000000001",
            "-1e-10",
        ),
    ] {
        assert_eq!(
            error(text),
            (message.to_string(), covered.to_string()),
            "{text}"
        );
    }
}

#[test]
fn unknown_options_and_optimizers_are_located_errors() {
    let (message, covered) = error("rmsprop(beta1: 0.9)");
    assert!(message.contains("beta1"), "{message}");
    assert_eq!(covered, "beta1");
    let (message, covered) = error("adamv(lr: 1)");
    assert_eq!(message, "unknown optimizer `adamv`");
    assert_eq!(covered, "adamv");
}

#[test]
fn no_decay_patterns_select_params_by_glob() {
    let t = optimizer("adamw(no_decay: [\"*.b\"])").unwrap();
    assert_eq!(t.no_decay, vec!["dense.b", "dense_1.b"]);
    let t = optimizer("sgd(lr: 0.1, weight_decay: 1e-4, no_decay: [\"dense_1*\", \"dense.b\"])")
        .unwrap();
    assert_eq!(t.no_decay, vec!["dense.b", "dense_1.w", "dense_1.b"]);
    let t = optimizer("rmsprop(weight_decay: 0.1, no_decay: [\"*\"])").unwrap();
    assert_eq!(t.no_decay.len(), 4);
    let t = optimizer("adagrad(weight_decay: 0.1, no_decay: [\"d*e*.*w\"])").unwrap();
    assert_eq!(t.no_decay, vec!["dense.w", "dense_1.w"]);
    assert!(optimizer("adamw").unwrap().no_decay.is_empty());
}

#[test]
fn bad_no_decay_is_a_located_error() {
    let (message, covered) = error("adamw(no_decay: [\"*.b\", \"batchnorm*\"])");
    assert_eq!(
        message,
        "the `no_decay` pattern \"batchnorm*\" matches no param"
    );
    assert_eq!(covered, "\"batchnorm*\"");
    let (message, covered) = error("adamw(no_decay: [\"dense.w.\"])");
    assert!(message.contains("matches no param"), "{message}");
    assert_eq!(covered, "\"dense.w.\"");
    let (message, covered) = error("adamw(no_decay: \"*.b\")");
    assert!(message.contains("takes a list"), "{message}");
    assert_eq!(covered, "\"*.b\"");
    let (message, covered) = error("adamw(no_decay: [1])");
    assert!(message.contains("a string"), "{message}");
    assert_eq!(covered, "1");
    // Without weight decay the option would be silently ignored.
    let (message, covered) = error("adam(no_decay: [\"*.b\"])");
    assert_eq!(message, "`no_decay` has no effect without weight decay");
    assert_eq!(covered, "[\"*.b\"]");
}

#[test]
fn clipping_settings() {
    let t = optimizer("adam").unwrap();
    assert_eq!(t.clip, GradClip::default());
    let t = lower(
        "mse(y, t)",
        "adam",
        "    clip_grad_norm = 1\n    clip_grad_value = 0.5",
    )
    .unwrap();
    assert_eq!(
        t.clip,
        GradClip {
            value: Some(0.5),
            norm: Some(1.0)
        }
    );
    for (setting, message, covered) in [
        (
            "clip_grad_norm = 0",
            "`clip_grad_norm` must be a positive number, found 0",
            "0",
        ),
        (
            "clip_grad_value = -0.5",
            "`clip_grad_value` must be a positive number, found -0.5",
            "-0.5",
        ),
        (
            "clip_grad_norm = true",
            "`clip_grad_norm` must be a positive number",
            "true",
        ),
    ] {
        let err = lower("mse(y, t)", "adam", &format!("    {setting}")).unwrap_err();
        assert_eq!(err, (message.to_string(), covered.to_string()), "{setting}");
    }
}

/// `params()` is every param flattened and joined; `weights()` only those
/// of rank 2 or more. The penalty is part of the objective's loss.
#[test]
fn penalties_collect_the_models_params() {
    let count_concat = |t: &TrainSpec| {
        t.objective
            .topo_order()
            .into_iter()
            .filter_map(|n| match &t.objective.node(n).op {
                Op::Concat { .. } => Some(t.objective.operands(n).len()),
                _ => None,
            })
            .collect::<Vec<_>>()
    };
    let t = lower("mse(y, t) + 1e-5 * sum(abs(params()))", "adam", "").unwrap();
    assert_eq!(count_concat(&t), vec![4]);
    let t = lower("mse(y, t) + 1e-4 * sum(square(weights()))", "adam", "").unwrap();
    assert_eq!(count_concat(&t), vec![2]);
    // The evaluation graph has the same loss.
    assert_eq!(count_concat(&t).len(), 1);
    let eval_concats = t
        .evaluation
        .topo_order()
        .into_iter()
        .filter(|&n| matches!(t.evaluation.node(n).op, Op::Concat { .. }))
        .count();
    assert_eq!(eval_concats, 1);
}

#[test]
fn penalties_outside_the_loss_are_located_errors() {
    let source = "model M {\n    input x: f32[B, 4]\n    y = x -> dense(2)\n    z = sum(params())\n    output y\n}\n";
    let err = compile(&SourceFile::new("t.nn", source.to_string()), None).unwrap_err();
    assert_eq!(
        err.message,
        "`params()` is usable only in the train block's `loss`"
    );
    assert_eq!(&source[err.span.start..err.span.end], "params()");
    // A model of biases only has no weights.
    let source = program("mse(y, t) + sum(square(weights()))", "adam", "")
        .replace("x -> dense(3) -> relu -> dense(2)", "x -> slice(1, 0, 2)");
    let err = compile(&SourceFile::new("t.nn", source.clone()), None).unwrap_err();
    assert!(err.message.contains("is empty"), "{}", err.message);
    assert_eq!(&source[err.span.start..err.span.end], "weights()");
}
