//! A whole run on a model small enough to build by hand: `y = x @ w`
//! fitted to `t = x0 + 2 x1` by plain gradient steps, with the
//! interpreter. Training, saving, resuming, evaluating and predicting go
//! through [`Run::execute`] as the CLI drives it.

use super::*;
use crate::report::Report;
use nnc_ir::{
    BinaryOp, DType, DataField, DataSpec, Dim, Graph, Init, NodeId, ReduceOp, Source, TensorType,
    Update, LEARNING_RATE, LOSS,
};

fn b_by(n: usize) -> TensorType {
    TensorType::new(DType::F32, [Dim::sym("B"), Dim::Const(n)])
}

/// `x @ w` in `g`, with its inputs and param.
fn linear(g: &mut Graph) -> (NodeId, NodeId, NodeId) {
    let x = g.input("x", b_by(2));
    let w = g.param(
        "w",
        TensorType::new(DType::F32, [Dim::Const(2), Dim::Const(1)]),
        Init::Zeros,
    );
    let y = g.matmul(x, w).unwrap();
    (x, w, y)
}

/// The squared error of `y` against the input `t`: `(error, loss)`.
fn squared_error(g: &mut Graph, y: NodeId) -> (NodeId, NodeId) {
    let t = g.input("t", b_by(1));
    let error = g.binary(BinaryOp::Sub, y, t).unwrap();
    let square = g.binary(BinaryOp::Mul, error, error).unwrap();
    let loss = g.reduce(ReduceOp::Mean, square, vec![0, 1], false).unwrap();
    g.set_output(LOSS, loss);
    (error, loss)
}

/// The model, and its training step (the compiler's work, which a
/// `Module` does not carry).
struct Line {
    module: Module,
    step: Graph,
    /// The loss and `grad.w`, the gradient the step applies.
    gradients: Graph,
}

fn line(dir: &Path) -> Line {
    let mut forward = Graph::new("forward");
    let (_, _, y) = linear(&mut forward);
    forward.set_output("y", y);

    let mut evaluation = Graph::new("evaluation");
    let (_, _, y) = linear(&mut evaluation);
    // The model's output, as the compiler keeps it: set metrics read it.
    evaluation.set_output("y", y);
    squared_error(&mut evaluation, y);

    // `w -= lr * x^T (x w - t)`: the gradient of half the summed error.
    let mut step = Graph::new("train_step");
    let (x, w, y) = linear(&mut step);
    let (error, _) = squared_error(&mut step, y);
    let lr = step.input(LEARNING_RATE, TensorType::scalar(DType::F32));
    let xt = step.transpose(x, vec![1, 0]).unwrap();
    let grad = step.matmul(xt, error).unwrap();
    let lr = step
        .broadcast(lr, vec![Dim::Const(2), Dim::Const(1)])
        .unwrap();
    let delta = step.binary(BinaryOp::Mul, lr, grad).unwrap();
    let new_w = step.binary(BinaryOp::Sub, w, delta).unwrap();
    step.updates.push(Update {
        target: "w".into(),
        value: new_w,
    });

    let mut gradients = Graph::new("gradients");
    let (x, _, y) = linear(&mut gradients);
    let (error, _) = squared_error(&mut gradients, y);
    let xt = gradients.transpose(x, vec![1, 0]).unwrap();
    let grad = gradients.matmul(xt, error).unwrap();
    gradients.set_output("grad.w", grad);

    let rows: String = (0..16)
        .map(|i| {
            let (a, b) = ((i % 4) as f64 / 4.0, (i / 4) as f64 / 4.0);
            format!("{a},{b},{}\n", a + 2.0 * b)
        })
        .collect();
    std::fs::write(dir.join("line.csv"), rows).unwrap();
    let column = |name: &str, from, to| DataField {
        name: name.into(),
        dtype: DType::F32,
        source: Source::CsvColumns {
            path: "line.csv".into(),
            from,
            to,
        },
        transforms: Vec::new(),
    };
    let module = Module {
        name: "Line".into(),
        forward,
        layers: Vec::new(),
        changes: Vec::new(),
        data: Some(DataSpec {
            name: "Points".into(),
            fields: vec![column("x", 0, 2), column("t", 2, 3)],
            test: None,
        }),
        train: Some(TrainSpec {
            objective: evaluation.clone(),
            evaluation,
            data: "Points".into(),
            optimizer: Optimizer::Sgd {
                lr: 0.05,
                momentum: 0.0,
                nesterov: false,
                weight_decay: 0.0,
            },
            no_decay: Vec::new(),
            clip: Default::default(),
            batch: 4,
            epochs: 3,
            seed: 5,
            shuffle: true,
            validate: None,
            kfold: None,
            schedule: None,
            early_stop: None,
            prune: None,
            metrics: Vec::new(),
            written: vec![("optimizer".into(), "sgd(lr: 0.05)".into())],
        }),
    };
    Line {
        module,
        step,
        gradients,
    }
}

/// A scratch directory, removed on drop.
struct Scratch(PathBuf);

impl Scratch {
    fn new(tag: &str) -> Scratch {
        let dir = std::env::temp_dir().join(format!("nnc-run-unit-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        Scratch(dir)
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// What the events said, as short lines.
fn execute(
    line: &Line,
    dir: &Path,
    options: RunOptions,
) -> Result<(RunOutcome, Vec<String>), RunError> {
    let module = &line.module;
    let programs = if options.predict.is_some() {
        Programs::inference(module.forward.clone())
    } else {
        let train = module.train.as_ref().unwrap();
        Programs {
            gradients: Some(line.gradients.clone()),
            ..Programs::new(
                module.forward.clone(),
                train.evaluation.clone(),
                line.step.clone(),
            )
        }
    };
    let mut seen = Vec::new();
    let run = Run::new(module, programs, dir, options, Instant::now());
    let outcome = run.execute(&mut |e| {
        seen.push(match e {
            Event::WeightsLoaded { epochs_done, .. } => format!("weights {epochs_done}"),
            Event::Resumed {
                epochs_done,
                epochs,
                ..
            } => format!("resumed {epochs_done}/{epochs}"),
            Event::EvaluationStarted { samples, .. } => format!("evaluating {samples}"),
            Event::TrainingStarted {
                first_epoch,
                epochs,
                batch,
                ..
            } => format!("training {first_epoch}..={epochs} by {batch}"),
            Event::NothingLeftToTrain { .. } => "nothing left".into(),
            Event::BatchDone { .. } => return,
            Event::EpochDone(r) => format!("epoch {}", r.epoch),
            Event::TrainingStopped => "stopped".into(),
            Event::EarlyStopped(o) => format!(
                "early stop after {:?}, best {}, kept {}",
                o.stopped_after, o.best_epoch, o.kept_epoch
            ),
            Event::Measured { split, .. } => split.name().into(),
            Event::Predicted { index, .. } => format!("prediction {index}"),
            Event::FoldStarted {
                fold,
                k,
                train,
                validation,
            } => format!("fold {fold}/{k}: {train}+{validation}"),
            Event::FoldDone { fold, .. } => format!("fold {fold} done"),
            Event::CrossValidated(cv) => format!("cross-validated {}", cv.k),
        })
    })?;
    Ok((outcome, seen))
}

fn trained(outcome: RunOutcome) -> TrainReport {
    match outcome {
        RunOutcome::Trained(r) => r,
        other => panic!("expected training, got {other:?}"),
    }
}

fn interp() -> RunOptions {
    RunOptions {
        backend: Backend::Interp,
        ..Default::default()
    }
}

#[test]
fn trains_saves_after_every_epoch_and_resumes() {
    let dir = Scratch::new("resume");
    let line = line(&dir.0);
    let ckpt = dir.0.join("line.safetensors");
    let options = RunOptions {
        save: Some(ckpt.clone()),
        ..interp()
    };
    let (outcome, seen) = execute(&line, &dir.0, options.clone()).unwrap();
    let first = trained(outcome);
    assert_eq!(
        seen,
        [
            "training 1..=3 by 4",
            "epoch 1",
            "epoch 2",
            "epoch 3",
            "stopped"
        ]
    );
    let losses: Vec<f64> = first.epochs.iter().map(|e| e.train.loss).collect();
    assert!(losses[2] < losses[0], "{losses:?}");
    assert_eq!(checkpoint::load(&ckpt).unwrap().epochs_done, 3);

    let report = dir.0.join("report.json");
    let resume = RunOptions {
        resume: true,
        report: Some(report.clone()),
        train: TrainOptions {
            epochs: Some(5),
            ..Default::default()
        },
        ..options
    };
    let (outcome, seen) = execute(&line, &dir.0, resume.clone()).unwrap();
    assert_eq!(
        seen,
        [
            "resumed 3/5",
            "training 4..=5 by 4",
            "epoch 4",
            "epoch 5",
            "stopped"
        ]
    );
    assert_eq!(trained(outcome).epochs.len(), 2);
    assert_eq!(checkpoint::load(&ckpt).unwrap().epochs_done, 5);
    let json = Report::from_json(&std::fs::read_to_string(&report).unwrap()).unwrap();
    assert_eq!(
        (json.epochs, json.first_epoch, json.per_epoch.len()),
        (5, 4, 2)
    );
    assert_eq!(
        (json.backend.as_str(), json.mode.as_str()),
        ("interp", "train")
    );

    // Everything done: no epoch runs, and the checkpoint is saved as it was.
    let (outcome, seen) = execute(&line, &dir.0, resume).unwrap();
    assert!(trained(outcome).epochs.is_empty());
    assert!(seen.contains(&"nothing left".to_string()), "{seen:?}");
    assert_eq!(checkpoint::load(&ckpt).unwrap().epochs_done, 5);
}

#[test]
fn evaluates_and_predicts_from_saved_weights() {
    let dir = Scratch::new("eval");
    let line = line(&dir.0);
    let ckpt = dir.0.join("line.safetensors");
    let train = RunOptions {
        save: Some(ckpt.clone()),
        train: TrainOptions {
            epochs: Some(40),
            ..Default::default()
        },
        ..interp()
    };
    let last = trained(execute(&line, &dir.0, train).unwrap().0)
        .epochs
        .pop()
        .unwrap();

    let eval = RunOptions {
        weights: Some(ckpt.clone()),
        eval: true,
        ..interp()
    };
    let (outcome, seen) = execute(&line, &dir.0, eval).unwrap();
    assert_eq!(seen, ["weights 40", "evaluating 16", "train"]);
    let RunOutcome::Evaluated {
        train: Some(metrics),
        validation: None,
        test: None,
    } = outcome
    else {
        panic!("no held-out samples: the training samples are measured");
    };
    assert_eq!(metrics.samples, 16);
    assert!(metrics.loss <= last.train.loss, "the last step helped");

    let input = dir.0.join("in.csv");
    std::fs::write(&input, "1,0\n0,1\n0.5,0.5\n").unwrap();
    let predict = RunOptions {
        weights: Some(ckpt),
        predict: Some(input),
        ..interp()
    };
    let (outcome, seen) = execute(&line, &dir.0, predict).unwrap();
    assert_eq!(seen, ["prediction 0", "prediction 1", "prediction 2"]);
    let RunOutcome::Predicted(p) = outcome else {
        panic!("expected predictions");
    };
    for (p, want) in p.iter().zip([1.0, 2.0, 1.5]) {
        let [(name, values)] = p.outputs.as_slice() else {
            panic!("one output: {p:?}");
        };
        assert_eq!(name, "y");
        assert!((values[0] - want).abs() < 0.05, "{values:?} vs {want}");
        assert_eq!(p.class, None, "no class labels, no class");
    }
}

#[test]
fn contradictory_options_are_refused_before_anything_runs() {
    let some = || Some(PathBuf::from("x"));
    let cases = [
        (
            RunOptions {
                resume: true,
                ..interp()
            },
            OptionsError::ResumeWithoutSave,
        ),
        (
            RunOptions {
                resume: true,
                save: some(),
                weights: some(),
                ..interp()
            },
            OptionsError::ResumeAndWeights,
        ),
        (
            RunOptions {
                eval: true,
                ..interp()
            },
            OptionsError::NoWeights,
        ),
        (
            RunOptions {
                eval: true,
                predict: some(),
                weights: some(),
                ..interp()
            },
            OptionsError::EvalAndPredict,
        ),
        (
            RunOptions {
                eval: true,
                weights: some(),
                save: some(),
                ..interp()
            },
            OptionsError::SaveWithoutTraining,
        ),
        (
            RunOptions {
                predict: some(),
                weights: some(),
                report: some(),
                ..interp()
            },
            OptionsError::ReportOfPrediction,
        ),
        (
            RunOptions {
                eval: true,
                weights: some(),
                log: some(),
                ..interp()
            },
            OptionsError::TraceWithoutTraining,
        ),
        (
            RunOptions {
                predict: some(),
                weights: some(),
                train: TrainOptions {
                    max_steps: Some(2),
                    ..Default::default()
                },
                ..interp()
            },
            OptionsError::TraceWithoutTraining,
        ),
        (
            RunOptions {
                dump_grads: some(),
                ..interp()
            },
            OptionsError::DumpGradsWithoutSteps,
        ),
        (
            RunOptions {
                predict_out: some(),
                ..interp()
            },
            OptionsError::PredictOutWithoutPredict,
        ),
        (
            RunOptions {
                predict: some(),
                weights: some(),
                predict_out: Some(PathBuf::from("out.txt")),
                ..interp()
            },
            OptionsError::PredictOutFormat(PathBuf::from("out.txt")),
        ),
    ];
    let dir = Scratch::new("options");
    let line = line(&dir.0);
    for (options, want) in cases {
        assert_eq!(options.validate(), Err(want.clone()));
        let err = execute(&line, &dir.0, options).unwrap_err();
        assert!(matches!(err, RunError::Options(e) if e == want));
    }
}

#[test]
fn resuming_without_a_checkpoint_names_the_path() {
    let dir = Scratch::new("no-checkpoint");
    let line = line(&dir.0);
    let ckpt = dir.0.join("none.safetensors");
    let options = RunOptions {
        save: Some(ckpt.clone()),
        resume: true,
        ..interp()
    };
    let err = execute(&line, &dir.0, options).unwrap_err();
    assert_eq!(
        err.to_string(),
        format!(
            "`--resume`: there is no checkpoint at `{0}` yet (a run with `--save {0}` writes one)",
            ckpt.display()
        )
    );
}

#[test]
fn a_module_without_a_train_block_can_only_predict() {
    let dir = Scratch::new("no-train");
    let mut module = line(&dir.0).module;
    module.train = None;
    let programs = Programs::inference(module.forward.clone());
    let run = Run::new(&module, programs, &dir.0, interp(), Instant::now());
    let err = run.execute(&mut |_| {}).unwrap_err();
    assert!(matches!(err, RunError::NotTrainable { ref model } if model == "Line"));
}

/// A gradient file: its metadata and its `w`.
fn read_gradients(path: &Path) -> (std::collections::HashMap<String, String>, Vec<f32>) {
    use safetensors::SafeTensors;
    let bytes = std::fs::read(path).unwrap();
    let (_, meta) = SafeTensors::read_metadata(&bytes).unwrap();
    let st = SafeTensors::deserialize(&bytes).unwrap();
    let names: Vec<String> = st.names().into_iter().map(str::to_string).collect();
    assert_eq!(names, ["w"], "one tensor per param, named like it");
    let w = st.tensor("w").unwrap();
    assert_eq!(w.shape(), [2, 1]);
    let values = w
        .data()
        .chunks_exact(4)
        .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
        .collect();
    (meta.metadata().clone().unwrap(), values)
}

/// The samples of `line.csv`: `x` and `t` of sample `i`.
fn sample(i: usize) -> ([f64; 2], f64) {
    let (a, b) = ((i % 4) as f64 / 4.0, (i / 4) as f64 / 4.0);
    ([a, b], a + 2.0 * b)
}

#[test]
fn unshuffled_steps_are_logged_and_their_gradients_dumped() {
    let dir = Scratch::new("trace");
    let line = line(&dir.0);
    let log = dir.0.join("run.jsonl");
    let grads = dir.0.join("grads");
    let ckpt = dir.0.join("line.safetensors");
    let options = RunOptions {
        train: TrainOptions {
            shuffle: Some(false),
            max_steps: Some(6),
            ..Default::default()
        },
        log: Some(log.clone()),
        dump_grads: Some(grads.clone()),
        save: Some(ckpt.clone()),
        ..interp()
    };
    let (outcome, seen) = execute(&line, &dir.0, options).unwrap();
    // 16 samples by 4: the limit stops training two steps into epoch 2.
    assert_eq!(
        seen,
        ["training 1..=3 by 4", "epoch 1", "epoch 2", "stopped"]
    );
    let report = trained(outcome);
    let steps: Vec<(usize, usize, bool)> = report
        .epochs
        .iter()
        .map(|e| (e.steps, e.batches, e.is_complete()))
        .collect();
    assert_eq!(steps, [(4, 4, true), (2, 4, false)]);
    assert_eq!(
        checkpoint::load(&ckpt).unwrap().epochs_done,
        1,
        "a cut-short epoch is not done"
    );

    // One gradient file per step, each at the params the step started
    // from: the step's update applied to them gives the next step's.
    let lr = 0.05f32;
    let mut w = [0f32; 2];
    let mut files: Vec<String> = std::fs::read_dir(&grads)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    files.sort();
    assert_eq!(files.len(), 6, "{files:?}");
    for (k, file) in files.iter().enumerate() {
        assert_eq!(*file, format!("step-{:06}.safetensors", k + 1));
        let (meta, g) = read_gradients(&grads.join(file));
        // File order: batch k of an epoch is samples 4k..4k+4.
        let first = (k % 4) * 4;
        let batch: Vec<usize> = (first..first + 4).collect();
        assert_eq!(meta["samples"], serde_json::to_string(&batch).unwrap());
        assert_eq!(meta["step"], (k + 1).to_string());
        assert_eq!(meta["epoch"], (k / 4 + 1).to_string());
        assert_eq!(meta["format"], crate::trace::GRADIENTS_FORMAT);
        // x^T (x w - t) over the batch, from the params before the step.
        let want: Vec<f64> = (0..2)
            .map(|j| {
                batch
                    .iter()
                    .map(|&i| {
                        let (x, t) = sample(i);
                        x[j] * (x[0] * f64::from(w[0]) + x[1] * f64::from(w[1]) - t)
                    })
                    .sum()
            })
            .collect();
        for (got, want) in g.iter().zip(&want) {
            assert!(
                (f64::from(*got) - want).abs() < 1e-6,
                "step {}: {g:?} vs {want:?}",
                k + 1
            );
        }
        if k == 0 {
            assert_eq!(g, [-0.875, 0.0], "samples 0..4 at w = 0");
        }
        w = [w[0] - lr * g[0], w[1] - lr * g[1]];
    }
    let saved = checkpoint::load(&ckpt).unwrap();
    let (_, trained_w) = saved.tensors.iter().find(|(n, _)| n == "w").unwrap();
    let trained_w: Vec<f32> = trained_w.data.iter().map(|&v| v as f32).collect();
    assert_eq!(trained_w, w, "the dumped gradients are the ones applied");

    // The log: a line per step, then per epoch, each valid JSON.
    let text = std::fs::read_to_string(&log).unwrap();
    let lines: Vec<serde_json::Value> = text
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let events: Vec<&str> = lines.iter().map(|l| l["event"].as_str().unwrap()).collect();
    assert_eq!(
        events,
        ["step", "step", "step", "step", "epoch", "step", "step", "epoch"]
    );
    let first = &lines[0];
    assert_eq!(first["epoch"], 1);
    assert_eq!(first["step"], 1);
    assert_eq!(first["batch"], 1);
    assert_eq!(first["samples"], 4);
    assert_eq!(first["lr"], 0.05);
    // mean(t^2) over samples 0..4 at w = 0.
    assert_eq!(first["loss"], 0.21875);
    assert_eq!(lines[5]["step"], 5);
    assert_eq!(lines[5]["batch"], 1);
    let epoch2 = &lines[7];
    assert_eq!(epoch2["epoch"], 2);
    assert_eq!(epoch2["steps"], 2);
    assert_eq!(epoch2["train"]["samples"], 8);
    assert_eq!(epoch2["train"]["loss"], report.epochs[1].train.loss);
    assert!(epoch2["validation"].is_null());
}

#[test]
fn unwritable_trace_paths_fail_before_training() {
    let dir = Scratch::new("trace-errors");
    let line = line(&dir.0);
    let missing = dir.0.join("no-such-folder").join("run.jsonl");
    let options = RunOptions {
        log: Some(missing.clone()),
        ..interp()
    };
    let err = execute(&line, &dir.0, options).unwrap_err().to_string();
    assert!(
        err.starts_with(&format!("cannot write the log `{}`: ", missing.display())),
        "{err}"
    );
    // A file where the folder should be.
    let file = dir.0.join("line.csv");
    let options = RunOptions {
        dump_grads: Some(file.clone()),
        train: TrainOptions {
            max_steps: Some(1),
            ..Default::default()
        },
        ..interp()
    };
    let err = execute(&line, &dir.0, options).unwrap_err().to_string();
    assert!(
        err.starts_with(&format!(
            "cannot create the gradient folder `{}`: ",
            file.display()
        )),
        "{err}"
    );
}

#[test]
fn predictions_are_written_to_csv_and_safetensors() {
    let dir = Scratch::new("predict-out");
    let line = line(&dir.0);
    let ckpt = dir.0.join("line.safetensors");
    let train = RunOptions {
        save: Some(ckpt.clone()),
        ..interp()
    };
    execute(&line, &dir.0, train).unwrap();
    let input = dir.0.join("in.csv");
    std::fs::write(&input, "1,0\n0,1\n0.5,0.5\n").unwrap();
    let predict = |out: &str| {
        let options = RunOptions {
            weights: Some(ckpt.clone()),
            predict: Some(input.clone()),
            predict_out: Some(dir.0.join(out)),
            ..interp()
        };
        match execute(&line, &dir.0, options).unwrap().0 {
            RunOutcome::Predicted(p) => p,
            other => panic!("expected predictions, got {other:?}"),
        }
    };
    let predictions = predict("out.csv");
    let values: Vec<f32> = predictions
        .iter()
        .map(|p| p.outputs[0].1[0] as f32)
        .collect();
    let csv = std::fs::read_to_string(dir.0.join("out.csv")).unwrap();
    let mut rows = csv.lines();
    assert_eq!(rows.next(), Some("y"));
    let read: Vec<f32> = rows.map(|r| r.parse().unwrap()).collect();
    assert_eq!(
        read.iter().map(|v| v.to_bits()).collect::<Vec<_>>(),
        values.iter().map(|v| v.to_bits()).collect::<Vec<_>>(),
        "every value reads back to the same f32"
    );

    assert_eq!(predict("out.safetensors"), predictions);
    let bytes = std::fs::read(dir.0.join("out.safetensors")).unwrap();
    let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    let y = st.tensor("y").unwrap();
    assert_eq!(y.shape(), [3, 1]);
    let stored: Vec<f32> = y
        .data()
        .chunks_exact(4)
        .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
        .collect();
    assert_eq!(stored, values);

    let options = RunOptions {
        weights: Some(ckpt.clone()),
        predict: Some(input.clone()),
        predict_out: Some(dir.0.join("no-such-folder").join("out.csv")),
        ..interp()
    };
    let err = execute(&line, &dir.0, options).unwrap_err().to_string();
    assert!(err.starts_with("cannot write the predictions `"), "{err}");
}

#[test]
fn the_html_report_of_a_run_shows_the_json_reports_numbers() {
    let dir = Scratch::new("html");
    let line = line(&dir.0);
    let (json, html) = (dir.0.join("r.json"), dir.0.join("r.html"));
    let options = RunOptions {
        report: Some(json.clone()),
        report_html: Some(html.clone()),
        ..interp()
    };
    execute(&line, &dir.0, options).unwrap();
    let json = Report::from_json(&std::fs::read_to_string(&json).unwrap()).unwrap();
    let html = std::fs::read_to_string(&html).unwrap();
    let doc = roxmltree::Document::parse_with_options(
        &html,
        roxmltree::ParsingOptions {
            allow_dtd: true,
            ..Default::default()
        },
    )
    .unwrap();
    let values: Vec<f64> = doc
        .descendants()
        .filter_map(|n| n.attribute("data-value"))
        .map(|v| v.parse().unwrap())
        .collect();
    // serde_json reads floats back to within an ulp, not exactly.
    let shown = |v: f64| values.iter().any(|&h| (h - v).abs() <= 1e-12 * v.abs());
    for e in &json.per_epoch {
        for v in [e.train.loss, e.lr, e.seconds, e.samples_per_second] {
            assert!(shown(v), "epoch {}: {v} not in the HTML", e.epoch);
        }
    }
    assert!(shown(json.total_seconds));
    // One chart of the loss, one of the learning rate: a point per epoch.
    let points = doc
        .descendants()
        .filter(|n| n.has_tag_name("circle"))
        .count();
    assert_eq!(points, 2 * json.per_epoch.len());
    assert!(html.contains("<h2>Model</h2>") && html.contains("<h2>Settings</h2>"));
    // The train block's settings as written.
    assert!(html.contains("<code>sgd(lr: 0.05)</code>"), "{html}");
}

/// The line with `edit` applied to its train block.
fn line_with(dir: &Path, edit: impl FnOnce(&mut TrainSpec)) -> Line {
    let mut line = line(dir);
    edit(line.module.train.as_mut().unwrap());
    line
}

fn weights(path: &Path) -> Vec<(String, nnc_ir::Tensor)> {
    checkpoint::load(path).unwrap().tensors
}

#[test]
fn early_stopping_stops_and_keeps_the_best_epochs_weights() {
    let dir = Scratch::new("early-stop");
    // Nothing improves on the first epoch by more than `min_delta`, so the
    // first epoch stays the best and training stops two epochs later.
    let line = line_with(&dir.0, |t| {
        t.validate = Some(0.25);
        t.epochs = 10;
        t.early_stop = Some(nnc_ir::EarlyStop {
            monitor: nnc_ir::Monitor {
                validation: true,
                metric: "loss".into(),
            },
            patience: 2,
            min_delta: 1e9,
            restore_best: true,
        });
    });
    let ckpt = dir.0.join("stopped.safetensors");
    let report = dir.0.join("report.json");
    let options = RunOptions {
        save: Some(ckpt.clone()),
        report: Some(report.clone()),
        ..interp()
    };
    let (outcome, seen) = execute(&line, &dir.0, options.clone()).unwrap();
    let run = trained(outcome);
    assert_eq!(
        seen,
        [
            "training 1..=10 by 4",
            "epoch 1",
            "epoch 2",
            "epoch 3",
            "stopped",
            "early stop after Some(3), best 1, kept 1"
        ]
    );
    let outcome = run.early_stop.unwrap();
    assert!(outcome.restored);
    let json = Report::from_json(&std::fs::read_to_string(&report).unwrap()).unwrap();
    let entry = json.early_stop.unwrap();
    assert_eq!(
        (entry.stopped_after, entry.best_epoch, entry.kept_epoch),
        (Some(3), 1, 1)
    );

    // The checkpoint holds exactly what one epoch of the same run trains.
    let one = dir.0.join("one.safetensors");
    let just_one = RunOptions {
        save: Some(one.clone()),
        report: None,
        train: TrainOptions {
            epochs: Some(1),
            ..Default::default()
        },
        ..interp()
    };
    let (outcome, _) = execute(&line, &dir.0, just_one).unwrap();
    let epoch1 = trained(outcome);
    assert_eq!(weights(&ckpt), weights(&one));
    let three = &run.epochs[2];
    assert_ne!(
        three.train.loss, epoch1.epochs[0].train.loss,
        "epochs 2 and 3 did train"
    );
    assert_eq!(checkpoint::load(&ckpt).unwrap().epochs_done, 3);

    // Resuming a run that stopped trains nothing more.
    let resume = RunOptions {
        resume: true,
        report: None,
        ..options
    };
    let (outcome, _) = execute(&line, &dir.0, resume).unwrap();
    assert!(trained(outcome).epochs.is_empty());
    assert_eq!(weights(&ckpt), weights(&one));
}

#[test]
fn a_resumed_run_takes_the_uninterrupted_runs_plateau_rates() {
    let dir = Scratch::new("plateau-resume");
    // A reduction whenever the training loss falls by less than half.
    let line = line_with(&dir.0, |t| {
        t.epochs = 8;
        t.schedule = Some(nnc_ir::Schedule {
            warmup: Some(nnc_ir::Warmup {
                steps: 5,
                start_factor: 0.5,
            }),
            decay: Some(nnc_ir::Decay::Plateau(nnc_ir::Plateau {
                monitor: nnc_ir::Monitor {
                    validation: false,
                    metric: "loss".into(),
                },
                patience: 0,
                factor: 0.5,
                threshold: 0.5,
                cooldown: 1,
                min_lr: 0.0,
            })),
        });
    });
    let lrs = |r: &TrainReport| r.epochs.iter().map(|e| e.lr).collect::<Vec<_>>();
    let whole = trained(execute(&line, &dir.0, interp()).unwrap().0);
    let ckpt = dir.0.join("p.safetensors");
    let first = RunOptions {
        save: Some(ckpt.clone()),
        train: TrainOptions {
            epochs: Some(4),
            ..Default::default()
        },
        ..interp()
    };
    let head = trained(execute(&line, &dir.0, first.clone()).unwrap().0);
    let resume = RunOptions {
        resume: true,
        train: TrainOptions {
            epochs: Some(8),
            ..Default::default()
        },
        ..first
    };
    let tail = trained(execute(&line, &dir.0, resume).unwrap().0);
    let mut joined = lrs(&head);
    joined.extend(lrs(&tail));
    assert_eq!(joined, lrs(&whole));
    // The warmup's first step, then reductions in both halves.
    assert_eq!(whole.epochs[0].lr, 0.025);
    let w = lrs(&whole);
    assert!(w[4] < w[1] && w[7] < w[4], "{w:?}");
    let tail_losses: Vec<f64> = tail.epochs.iter().map(|e| e.train.loss).collect();
    let whole_losses: Vec<f64> = whole.epochs[4..].iter().map(|e| e.train.loss).collect();
    assert_eq!(tail_losses, whole_losses);
}

#[test]
fn per_step_schedules_feed_every_step_its_own_rate() {
    let dir = Scratch::new("onecycle");
    let cycle = nnc_ir::OneCycle {
        max_lr: 0.2,
        pct_start: 0.3,
        div_factor: 10.0,
        final_div_factor: 100.0,
        anneal: nnc_ir::Anneal::Cos,
        three_phase: false,
    };
    let line = line_with(&dir.0, |t| {
        t.schedule = Some(nnc_ir::Schedule {
            warmup: None,
            decay: Some(nnc_ir::Decay::OneCycle(cycle)),
        });
    });
    let log = dir.0.join("log.jsonl");
    let options = RunOptions {
        log: Some(log.clone()),
        ..interp()
    };
    let run = trained(execute(&line, &dir.0, options).unwrap().0);
    let steps: Vec<f64> = std::fs::read_to_string(&log)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
        .filter(|v| v["event"] == "step")
        .map(|v| v["lr"].as_f64().unwrap())
        .collect();
    // 3 epochs of 16 samples in batches of 4: 12 steps in all.
    let want: Vec<f64> = (0..12).map(|t| cycle.lr(t, 12)).collect();
    // The log's decimals go through serde_json's float parsing.
    assert_eq!(steps.len(), 12);
    for (got, want) in steps.iter().zip(&want) {
        assert!((got - want).abs() <= 1e-15 * want, "{steps:?}");
    }
    assert!((steps[0] - 0.02).abs() < 1e-15);
    assert!((steps[11] - 0.0002).abs() < 1e-15);
    let epoch_lrs: Vec<f64> = run.epochs.iter().map(|e| e.lr).collect();
    assert_eq!(
        epoch_lrs,
        [want[0], want[4], want[8]],
        "an epoch's first step"
    );
}

/// `line` cross-validated by `kfold(k)` with MAE, RMSE and R².
fn line_kfold(dir: &Path, k: usize) -> Line {
    let mut l = line(dir);
    let train = l.module.train.as_mut().unwrap();
    train.kfold = Some(nnc_ir::KFold { k, stratify: None });
    let target = nnc_ir::MetricTarget {
        output: "y".into(),
        label: "t".into(),
        kind: nnc_ir::TargetKind::Regression,
    };
    train.metrics = [
        nnc_ir::SetMetric::Mae,
        nnc_ir::SetMetric::Rmse,
        nnc_ir::SetMetric::R2,
    ]
    .map(|m| nnc_ir::Metric::Set(m, target.clone()))
    .to_vec();
    l
}

#[test]
fn kfold_trains_a_model_per_fold_and_summarizes_every_metric() {
    let dir = Scratch::new("kfold");
    let line = line_kfold(&dir.0, 4);
    let report_path = dir.0.join("report.json");
    let ckpt = dir.0.join("line.safetensors");
    let options = RunOptions {
        report: Some(report_path.clone()),
        save: Some(ckpt.clone()),
        ..interp()
    };
    let (outcome, seen) = execute(&line, &dir.0, options.clone()).unwrap();
    let fold_events = |f: usize| {
        vec![
            format!("fold {f}/4: 12+4"),
            "training 1..=3 by 4".to_string(),
            "epoch 1".into(),
            "epoch 2".into(),
            "epoch 3".into(),
            "stopped".into(),
            format!("fold {f} done"),
        ]
    };
    let mut expected: Vec<String> = (1..=4).flat_map(fold_events).collect();
    expected.push("cross-validated 4".into());
    assert_eq!(seen, expected);
    let RunOutcome::CrossValidated(cv) = outcome else {
        panic!("expected cross-validation, got {outcome:?}");
    };
    assert_eq!(cv.folds.len(), 4);
    let mut validated: Vec<usize> = Vec::new();
    for f in &cv.folds {
        assert_eq!((f.train_samples, f.validation.samples), (12, 4));
        assert_eq!(f.trained.epochs.len(), 3);
        // The graph's loss is the mean squared error: RMSE² on the host.
        let rmse = f.validation.value("rmse").unwrap();
        assert!((rmse * rmse - f.validation.loss).abs() <= 1e-5 * f.validation.loss.max(1e-3));
        assert!(f.validation.value("mae").unwrap() <= rmse + 1e-12);
        validated.push(f.validation.samples);
    }
    assert_eq!(
        validated.iter().sum::<usize>(),
        16,
        "every sample validated once"
    );
    let names: Vec<&str> = cv.summary.iter().map(|s| s.name.as_str()).collect();
    assert_eq!(names, ["loss", "mae", "rmse", "r2"]);
    for s in &cv.summary {
        let values: Vec<f64> = cv
            .folds
            .iter()
            .map(|f| f.validation.value(&s.name).unwrap())
            .collect();
        assert_eq!(s.values, values);
        assert_eq!((s.mean, s.std), crate::folds::mean_std(&values));
        assert!(s.std > 0.0, "{}: folds differ", s.name);
    }
    let report = Report::from_json(&std::fs::read_to_string(&report_path).unwrap()).unwrap();
    let entry = report.cross_validation.expect("a cross-validation entry");
    assert_eq!(entry.k, 4);
    assert_eq!(entry.folds.len(), 4);
    assert_eq!(entry.summary["r2"].values, cv.summary[3].values);
    assert_eq!(
        entry.folds[2].validation.metrics["mae"],
        cv.folds[2].validation.value("mae").unwrap()
    );
    assert!(ckpt.exists(), "--save keeps the last fold's model");

    // Seeded: the same folds and values again.
    let (again, _) = execute(&line, &dir.0, options).unwrap();
    let RunOutcome::CrossValidated(again) = again else {
        panic!("expected cross-validation");
    };
    assert_eq!(again.summary, cv.summary);
}

#[test]
fn each_fold_standardizes_by_its_own_training_samples() {
    let dir = Scratch::new("kfold-fit");
    let mut line = line_kfold(&dir.0, 4);
    let data = line.module.data.as_mut().unwrap();
    data.fields[0].transforms = vec![nnc_ir::Transform::Standardize {
        per: nnc_ir::FitAxis::Element,
    }];
    let ckpt = dir.0.join("line.safetensors");
    let options = RunOptions {
        save: Some(ckpt.clone()),
        ..interp()
    };
    execute(&line, &dir.0, options).unwrap();
    // The saved model is the last fold's: trained on the samples outside
    // that fold, and standardized by them alone.
    let base = crate::train::partition(16, None, None, 5).unwrap();
    let folds = crate::folds::kfold(&base.train, 4, None, 5).unwrap();
    let last = folds.last().unwrap();
    let trained: Vec<f64> = (0..16)
        .filter(|i| last.binary_search(i).is_err())
        .map(|i| (i % 4) as f64 / 4.0)
        .collect();
    let mean = trained.iter().sum::<f64>() / trained.len() as f64;
    let all_mean = (0..16).map(|i| (i % 4) as f64 / 4.0).sum::<f64>() / 16.0;
    let fitted = checkpoint::load(&ckpt).unwrap().fitted;
    let Some([crate::data::fit::Fitted::Standardize { mean: m, .. }]) =
        fitted.get("x").map(Vec::as_slice)
    else {
        panic!("{fitted:?}");
    };
    assert!((m[0] - mean).abs() < 1e-12, "{} vs {mean}", m[0]);
    assert!(
        (m[0] - all_mean).abs() > 1e-6,
        "the fold's mean differs from all samples' here, or the test shows nothing"
    );
}

#[test]
fn kfold_with_more_folds_than_samples_is_an_error_with_the_counts() {
    let dir = Scratch::new("kfold-many");
    let line = line_kfold(&dir.0, 17);
    let e = execute(&line, &dir.0, interp()).unwrap_err().to_string();
    assert!(
        e.contains("`kfold(17)`") && e.contains("there are 16"),
        "{e}"
    );
    let options = RunOptions {
        save: Some(dir.0.join("x.safetensors")),
        resume: true,
        ..interp()
    };
    std::fs::write(dir.0.join("x.safetensors"), b"").unwrap();
    let line = line_kfold(&dir.0, 2);
    let e = execute(&line, &dir.0, options).unwrap_err();
    assert!(matches!(e, RunError::ResumeCrossValidation), "{e}");
}
