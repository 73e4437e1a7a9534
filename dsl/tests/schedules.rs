//! Lowering of `schedule` and `early_stop`, and their errors.

use nnc_dsl::{compile, SourceFile};
use nnc_ir::{Anneal, Decay, EarlyStop, Monitor, OneCycle, Plateau, Schedule, TrainSpec, Warmup};

/// A classifier trained with the train-block `settings` added.
fn program(settings: &str) -> String {
    format!(
        "model M {{\n    input x: f32[B, 2]\n    y = x -> dense(3)\n    output y\n}}\n\
         data D {{\n    x = csv(\"d.csv\", columns: [0, 2])\n    label: i32 = csv(\"d.csv\", column: 2)\n}}\n\
         train M on D {{\n    loss = cross_entropy(y, label)\n    optimizer = sgd(lr: 0.1)\n{settings}\n}}\n"
    )
}

fn lower(settings: &str) -> TrainSpec {
    match compile(&SourceFile::new("t.nn", program(settings)), None) {
        Ok(module) => module.train.expect("a train block"),
        Err(e) => panic!("{e:?}"),
    }
}

/// The error's message and the source text it points at.
fn error(settings: &str) -> (String, String) {
    let text = program(settings);
    let err = compile(&SourceFile::new("t.nn", text.clone()), None).unwrap_err();
    (err.message, text[err.span.start..err.span.end].to_string())
}

fn monitor(validation: bool, metric: &str) -> Monitor {
    Monitor {
        validation,
        metric: metric.into(),
    }
}

#[test]
fn multistep_lowers_its_milestones() {
    let spec = lower("    schedule = multistep(milestones: [30, 80], gamma: 0.5)");
    assert_eq!(
        spec.schedule,
        Some(Schedule {
            warmup: None,
            decay: Some(Decay::MultiStep {
                milestones: vec![30, 80],
                gamma: 0.5
            }),
        })
    );
    let spec = lower("    schedule = multistep(milestones: [3])");
    assert!(matches!(
        spec.schedule.unwrap().decay,
        Some(Decay::MultiStep { gamma, .. }) if gamma == 0.1
    ));
}

#[test]
fn milestones_out_of_order_are_an_error_at_the_list() {
    let (msg, at) = error("    schedule = multistep(milestones: [30, 30, 80])");
    assert_eq!(
        msg,
        "`milestones` must be strictly increasing, but 30 follows 30"
    );
    assert_eq!(at, "[30, 30, 80]");
    let (msg, at) = error("    schedule = multistep(milestones: [0, 3])");
    assert_eq!(msg, "`milestones` must be positive epoch counts, found 0");
    assert_eq!(at, "[0, 3]");
    let (msg, _) = error("    schedule = multistep(milestones: [])");
    assert_eq!(msg, "`milestones` is empty");
    let (msg, at) = error("    schedule = multistep(gamma: 0.5)");
    assert!(msg.starts_with("`multistep` needs `milestones`"), "{msg}");
    assert_eq!(at, "multistep");
}

#[test]
fn warmup_chains_with_a_decay_or_stands_alone() {
    let spec = lower("    schedule = warmup(steps: 500) -> cosine(min_lr: 0.01)");
    assert_eq!(
        spec.schedule,
        Some(Schedule {
            warmup: Some(Warmup {
                steps: 500,
                start_factor: 1.0 / 3.0
            }),
            decay: Some(Decay::Cosine { min_lr: 0.01 }),
        })
    );
    let spec = lower("    schedule = warmup(steps: 10, start_factor: 0.01)");
    assert_eq!(
        spec.schedule,
        Some(Schedule {
            warmup: Some(Warmup {
                steps: 10,
                start_factor: 0.01
            }),
            decay: None,
        })
    );
}

#[test]
fn warmup_errors_are_located() {
    let (msg, at) = error("    schedule = warmup(steps: 0) -> cosine()");
    assert_eq!(msg, "`steps` must be a positive int, found 0");
    assert_eq!(at, "0");
    let (msg, at) = error("    schedule = warmup(steps: 5, start_factor: 0) -> cosine()");
    assert_eq!(msg, "`start_factor` must be in (0, 1], found 0");
    assert_eq!(at, "0");
    let (msg, at) = error("    schedule = cosine() -> warmup(steps: 5)");
    assert_eq!(msg, "`warmup` cannot follow `cosine`");
    assert_eq!(at, "warmup");
    let (msg, at) = error("    schedule = warmup(steps: 5) -> onecycle(max_lr: 0.1)");
    assert_eq!(msg, "`onecycle` cannot follow a warmup");
    assert_eq!(at, "onecycle");
    let (msg, at) = error("    schedule = cosin()");
    assert_eq!(msg, "unknown schedule `cosin`");
    assert_eq!(at, "cosin");
}

#[test]
fn onecycle_takes_pytorchs_defaults() {
    let spec = lower("    schedule = onecycle(max_lr: 0.1)");
    assert_eq!(
        spec.schedule.unwrap().decay,
        Some(Decay::OneCycle(OneCycle {
            max_lr: 0.1,
            pct_start: 0.3,
            div_factor: 25.0,
            final_div_factor: 1e4,
            anneal: Anneal::Cos,
            three_phase: false,
        }))
    );
    let spec = lower(
        "    schedule = onecycle(max_lr: 1, pct_start: 0.25, div_factor: 10, \
         final_div_factor: 100, anneal: \"linear\", three_phase: true)",
    );
    assert_eq!(
        spec.schedule.unwrap().decay,
        Some(Decay::OneCycle(OneCycle {
            max_lr: 1.0,
            pct_start: 0.25,
            div_factor: 10.0,
            final_div_factor: 100.0,
            anneal: Anneal::Linear,
            three_phase: true,
        }))
    );
    let (msg, at) = error("    schedule = onecycle(max_lr: 0.1, anneal: \"cosine\")");
    assert_eq!(msg, "`anneal` must be \"cos\" or \"linear\"");
    assert_eq!(at, "\"cosine\"");
    let (msg, _) = error("    schedule = onecycle()");
    assert_eq!(msg, "`onecycle` needs `max_lr`, the peak learning rate");
    let (msg, at) =
        error("    schedule = onecycle(max_lr: 0.1, pct_start: 0.7, three_phase: true)");
    assert_eq!(
        msg,
        "`pct_start` must be in (0, 0.5] with `three_phase`, found 0.7"
    );
    assert_eq!(at, "0.7");
}

#[test]
fn plateau_watches_validation_loss_by_default() {
    let spec = lower("    schedule = plateau()\n    validate = split(0.2)");
    assert_eq!(
        spec.schedule.unwrap().decay,
        Some(Decay::Plateau(Plateau {
            monitor: monitor(true, "loss"),
            patience: 10,
            factor: 0.1,
            threshold: 1e-4,
            cooldown: 0,
            min_lr: 0.0,
        }))
    );
    let spec = lower(
        "    schedule = plateau(monitor: val_accuracy, patience: 2, factor: 0.5, cooldown: 1, min_lr: 1e-4)\n\
         validate = split(0.2)\n    metrics = [accuracy]",
    );
    assert_eq!(
        spec.schedule.unwrap().decay,
        Some(Decay::Plateau(Plateau {
            monitor: monitor(true, "accuracy"),
            patience: 2,
            factor: 0.5,
            threshold: 1e-4,
            cooldown: 1,
            min_lr: 1e-4,
        }))
    );
}

#[test]
fn plateau_errors_are_located() {
    let (msg, at) = error("    schedule = plateau()");
    assert_eq!(
        msg,
        "monitor `val_loss` needs validation samples, but the train block holds none out"
    );
    assert_eq!(at, "plateau");
    let (msg, at) = error("    schedule = plateau(factor: 1)\n    validate = split(0.2)");
    assert_eq!(msg, "`factor` must be in (0, 1), found 1");
    assert_eq!(at, "1");
    let (msg, at) = error("    schedule = plateau(patience: -1)\n    validate = split(0.2)");
    assert_eq!(msg, "`patience` must be a non-negative int, found -1");
    assert_eq!(at, "-1");
    let (msg, at) = error("    schedule = plateau(monitor: val_los)\n    validate = split(0.2)");
    assert_eq!(msg, "unknown monitor `val_los`");
    assert_eq!(at, "val_los");
    // Monitoring the training loss needs no validation samples.
    lower("    schedule = plateau(monitor: loss)");
}

#[test]
fn early_stop_lowers_with_keras_defaults_but_restores_best() {
    let spec = lower("    early_stop = early_stop()\n    validate = split(0.2)");
    assert_eq!(
        spec.early_stop,
        Some(EarlyStop {
            monitor: monitor(true, "loss"),
            patience: 5,
            min_delta: 0.0,
            restore_best: true,
        })
    );
    let spec = lower(
        "    early_stop = early_stop(monitor: accuracy, patience: 0, min_delta: 0.01, restore_best: false)\n\
         metrics = [accuracy]",
    );
    assert_eq!(
        spec.early_stop,
        Some(EarlyStop {
            monitor: monitor(false, "accuracy"),
            patience: 0,
            min_delta: 0.01,
            restore_best: false,
        })
    );
    assert_eq!(lower("").early_stop, None);
}

#[test]
fn early_stop_errors_are_located() {
    let (msg, at) =
        error("    early_stop = early_stop(monitor: val_accuracy)\n    validate = split(0.2)");
    assert_eq!(
        msg,
        "monitor `val_accuracy` watches `accuracy`, which the run never computes"
    );
    assert_eq!(at, "val_accuracy");
    let (msg, at) = error("    early_stop = early_stop(monitor: val_loss)");
    assert_eq!(
        msg,
        "monitor `val_loss` needs validation samples, but the train block holds none out"
    );
    assert_eq!(at, "val_loss");
    let (msg, at) =
        error("    early_stop = early_stop(monitor: val_fi)\n    validate = split(0.2)");
    assert_eq!(msg, "unknown monitor `val_fi`");
    assert_eq!(at, "val_fi");
    // The set metrics are measured on held-out samples only.
    let (msg, at) = error("    early_stop = early_stop(monitor: f1)\n    metrics = [f1]");
    assert_eq!(
        msg,
        "`f1` is measured on held-out samples only, not on the training batches"
    );
    assert_eq!(at, "f1");
    let (msg, _) = error("    early_stop = early_stop(monitor: val_f1)\n    validate = split(0.2)");
    assert_eq!(
        msg,
        "monitor `val_f1` watches `f1`, which the run never computes"
    );
    let spec = lower(
        "    early_stop = early_stop(monitor: val_f1_weighted)\n    validate = split(0.2)\n    metrics = [f1(average: \"weighted\")]",
    );
    assert_eq!(
        spec.early_stop.unwrap().monitor,
        monitor(true, "f1_weighted")
    );
    let (msg, at) = error("    early_stop = early_stop(monitor: loss, patience: -2)");
    assert_eq!(msg, "`patience` must be a non-negative int, found -2");
    assert_eq!(at, "-2");
    let (msg, at) = error("    early_stop = early_stop(monitor: loss, min_delta: -0.1)");
    assert_eq!(msg, "`min_delta` must be >= 0, found -0.1");
    assert_eq!(at, "-0.1");
    let (msg, at) = error("    early_stop = early_stopping(monitor: loss)");
    assert_eq!(msg, "expected `early_stop(...)`, found `early_stopping`");
    assert_eq!(at, "early_stopping");
}
