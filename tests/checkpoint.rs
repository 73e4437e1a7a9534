//! Checkpoints, `--resume`, `--eval`, `--predict` and `--report`, end to end
//! with the interpreter on the small examples (a few epochs each).

use nnc::driver::{self, RunOutcome, RunSettings};
use nnc_runtime::checkpoint::{self, Meta, Scope};
use nnc_runtime::{Executor, Interpreter, Programs, Report, RunOptions, TrainOptions};
use std::path::{Path, PathBuf};
use std::process::Command;

mod common;
use common::Scratch;

fn example(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("examples")
        .join(format!("{name}.nn"))
}

fn settings(epochs: usize) -> RunSettings {
    RunSettings {
        run: RunOptions {
            backend: nnc::driver::Backend::Interp,
            train: TrainOptions {
                epochs: Some(epochs),
                ..Default::default()
            },
            ..Default::default()
        },
        ..Default::default()
    }
}

/// Runs `nnc run FILE` with the backend and train options of `settings`
/// and the rest of `flags`, returning the outcome and the lines.
fn run(
    file: &Path,
    settings: &RunSettings,
    flags: &RunOptions,
) -> Result<(RunOutcome, Vec<String>), String> {
    let settings = RunSettings {
        run: RunOptions {
            backend: settings.run.backend,
            train: settings.run.train.clone(),
            ..flags.clone()
        },
        ..settings.clone()
    };
    let mut lines = Vec::new();
    let outcome =
        driver::run_with(file, &settings, &mut |l| lines.push(l.to_string())).map_err(|f| f.0)?;
    Ok((outcome, lines))
}

fn trained(outcome: RunOutcome) -> nnc_runtime::TrainReport {
    match outcome {
        RunOutcome::Trained(r) => r,
        other => panic!("expected training, got {other:?}"),
    }
}

/// Trains `name` for `epochs`, saving to `path`.
fn train_and_save(name: &str, epochs: usize, path: &Path) -> nnc_runtime::TrainReport {
    let flags = RunOptions {
        save: Some(path.to_path_buf()),
        ..Default::default()
    };
    trained(run(&example(name), &settings(epochs), &flags).unwrap().0)
}

/// The programs, data and a first batch of an example, for executor-level
/// checks.
fn setup(name: &str) -> (String, Programs, nnc_runtime::Batch) {
    let path = example(name);
    let src = driver::read_source(&path).unwrap();
    let module = driver::compile_source(&src, None).unwrap();
    let step = driver::train_step(&module).unwrap();
    let spec = module.train.as_ref().unwrap();
    let data = nnc_runtime::loader::load(
        module.data.as_ref().unwrap(),
        &driver::data_base(&path, None),
    )
    .unwrap();
    let names = nnc_runtime::train::input_names(&step);
    let mut batch = nnc_runtime::Batch::default();
    let indices: Vec<usize> = (0..spec.batch.min(data.train.len())).collect();
    data.fill_batch(&data.train, &names, &indices, &mut batch)
        .unwrap();
    // Every step of these checks runs with the first step's hyperparameters.
    nnc_runtime::train::feed_hyper(&mut batch, &spec.optimizer, spec.optimizer.lr(), 0);
    let programs = Programs::new(module.forward.clone(), spec.evaluation.clone(), step);
    (module.name, programs, batch)
}

#[test]
fn save_then_load_reproduces_the_params_and_the_next_step() {
    let dir = Scratch::new("roundtrip");
    let ckpt = dir.path("digits.safetensors");
    let (model, programs, batch) = setup("digits_mlp");
    let params = checkpoint::param_names(&programs);
    let mut a = Interpreter::new(programs.clone(), 7).unwrap();
    for _ in 0..3 {
        a.train_step(&batch).unwrap();
    }
    let meta = Meta {
        epochs_done: 1,
        params: params.clone(),
        ..Default::default()
    };
    checkpoint::save(&ckpt, &model, &a.state(), &meta).unwrap();

    let loaded = checkpoint::load(&ckpt).unwrap();
    assert_eq!(loaded.model, "DigitsMLP");
    assert_eq!(loaded.epochs_done, 1);
    assert_eq!(loaded.params, params);
    assert_eq!(loaded.fingerprint, checkpoint::fingerprint(&a.state()));
    // A differently seeded model: everything must come from the file.
    let mut b = Interpreter::new(programs, 99).unwrap();
    assert_ne!(a.state(), b.state());
    loaded
        .apply(&mut b, &model, &params, Scope::Everything)
        .unwrap();
    assert_eq!(
        a.state(),
        b.state(),
        "params and optimizer state round-trip exactly"
    );

    let (ma, mb) = (a.train_step(&batch).unwrap(), b.train_step(&batch).unwrap());
    assert_eq!(ma, mb, "the next step's loss and accuracy");
    assert_eq!(a.state(), b.state(), "the next step's updates");
    assert_eq!(
        dir.files(),
        vec!["digits.safetensors"],
        "no temporary files"
    );
}

#[test]
fn weights_restore_only_params_and_tolerate_another_optimizer() {
    let dir = Scratch::new("weights-only");
    let ckpt = dir.path("xor.safetensors");
    train_and_save("xor", 2, &ckpt);
    // The same model trained with SGD has no Adam state.
    let sgd = dir.path("xor_sgd.nn");
    let text = std::fs::read_to_string(example("xor")).unwrap();
    std::fs::write(&sgd, text.replace("adam(lr: 0.05)", "sgd(lr: 0.5)")).unwrap();
    let settings = RunSettings {
        data_dir: Some(example("xor").parent().unwrap().to_path_buf()),
        ..settings(1)
    };
    let eval = RunOptions {
        weights: Some(ckpt.clone()),
        eval: true,
        ..Default::default()
    };
    let (outcome, lines) = run(&sgd, &settings, &eval).unwrap();
    assert!(
        matches!(outcome, RunOutcome::Evaluated { train: Some(_), .. }),
        "{lines:?}"
    );
    // But resuming SGD from an Adam checkpoint is refused.
    let resume = RunOptions {
        save: Some(ckpt.clone()),
        resume: true,
        ..Default::default()
    };
    let err = run(&sgd, &settings, &resume).unwrap_err();
    assert!(
        err.contains("does not fit model `Xor`: tensor `adam.step` is in the checkpoint but not in the model"),
        "{err}"
    );
    // And the other way round, the missing state is named.
    let sgd_ckpt = dir.path("sgd.safetensors");
    let save = RunOptions {
        save: Some(sgd_ckpt.clone()),
        ..Default::default()
    };
    run(&sgd, &settings, &save).unwrap();
    let resume = RunOptions {
        save: Some(sgd_ckpt),
        resume: true,
        ..Default::default()
    };
    let err = run(&example("xor"), &settings, &resume).unwrap_err();
    assert!(
        err.contains("optimizer state `adam.step` is in the model but not in the checkpoint"),
        "{err}"
    );
}

#[test]
fn damaged_files_give_located_errors() {
    let dir = Scratch::new("damaged");
    let good = dir.path("good.safetensors");
    train_and_save("xor", 1, &good);
    let bytes = std::fs::read(&good).unwrap();
    let header_len = u64::from_le_bytes(bytes[..8].try_into().unwrap()) as usize;

    let cases: Vec<(&str, Vec<u8>, String)> = vec![
        (
            "data-cut.safetensors",
            bytes[..bytes.len() - 10].to_vec(),
            format!(
                "past the end of the file at byte {} (the file is truncated)",
                bytes.len() - 10
            ),
        ),
        (
            "header-cut.safetensors",
            bytes[..100].to_vec(),
            format!(
                "the header length at byte 0 says {header_len} bytes, but only 92 bytes follow it"
            ),
        ),
        (
            "tiny.safetensors",
            bytes[..5].to_vec(),
            "the file is 5 bytes long".to_string(),
        ),
        (
            "json.safetensors",
            {
                let mut b = bytes.clone();
                b[8 + 15] = b'#';
                b
            },
            "invalid JSON header at byte 23: expected `:`".to_string(),
        ),
        (
            "empty.safetensors",
            Vec::new(),
            "the file is 0 bytes long".to_string(),
        ),
    ];
    for (name, content, expected) in cases {
        let path = dir.path(name);
        std::fs::write(&path, content).unwrap();
        let err = checkpoint::load(&path).unwrap_err().to_string();
        assert!(
            err.contains(&format!("`{}` is not a valid checkpoint", path.display())),
            "{name}: {err}"
        );
        assert!(
            err.contains(&expected),
            "{name}: {err}\nexpected: {expected}"
        );
    }

    // A safetensors file that is not an nnc checkpoint.
    let foreign = dir.path("foreign.safetensors");
    let header = br#"{"w":{"dtype":"F32","shape":[1],"data_offsets":[0,4]}}"#;
    let mut file = (header.len() as u64).to_le_bytes().to_vec();
    file.extend_from_slice(header);
    file.extend_from_slice(&1.0f32.to_le_bytes());
    std::fs::write(&foreign, file).unwrap();
    let err = checkpoint::load(&foreign).unwrap_err().to_string();
    assert!(err.contains("not an nnc checkpoint"), "{err}");

    // The CLI reports the same through `--weights`.
    let flags = RunOptions {
        weights: Some(dir.path("data-cut.safetensors")),
        eval: true,
        ..Default::default()
    };
    let err = run(&example("xor"), &settings(1), &flags).unwrap_err();
    assert!(
        err.starts_with("error: ") && err.contains("truncated"),
        "{err}"
    );
}

#[test]
fn a_checkpoint_of_another_model_is_refused() {
    let dir = Scratch::new("other-model");
    let ckpt = dir.path("xor.safetensors");
    train_and_save("xor", 1, &ckpt);
    let flags = RunOptions {
        weights: Some(ckpt.clone()),
        eval: true,
        ..Default::default()
    };
    let err = run(&example("digits_mlp"), &settings(1), &flags).unwrap_err();
    assert!(
        err.contains(&format!(
            "checkpoint `{}` is for model `Xor`, not `DigitsMLP`: tensor `dense.b` has shape [8] in the checkpoint but [64] in the model",
            ckpt.display()
        )),
        "{err}"
    );

    // Same name, other structure: the first differing tensor is named.
    let wide = dir.path("xor_wide.nn");
    let text = std::fs::read_to_string(example("xor")).unwrap();
    std::fs::write(&wide, text.replace("hidden: int = 8", "hidden: int = 16")).unwrap();
    let settings = RunSettings {
        data_dir: Some(example("xor").parent().unwrap().to_path_buf()),
        ..settings(1)
    };
    let err = run(&wide, &settings, &flags).unwrap_err();
    assert!(
        err.contains("does not fit model `Xor`: tensor `dense.b` has shape [8] in the checkpoint but [16] in the model"),
        "{err}"
    );

    // The executor is untouched by a refused checkpoint.
    let (_, programs, _) = setup("xor");
    let mut exec = Interpreter::new(programs.clone(), 1).unwrap();
    let before = exec.state();
    let loaded = checkpoint::load(&ckpt).unwrap();
    let params = checkpoint::param_names(&programs);
    assert!(loaded
        .apply(&mut exec, "NotXor", &params, Scope::Params)
        .is_err());
    assert_eq!(exec.state(), before);
}

#[test]
fn an_interrupted_save_leaves_the_previous_checkpoint_intact() {
    let dir = Scratch::new("interrupted");
    let path = dir.path("model.safetensors");
    train_and_save("xor", 2, &path);
    let original = std::fs::read(&path).unwrap();
    let (model, programs, _) = setup("xor");
    let params = checkpoint::param_names(&programs);
    let other = Interpreter::new(programs, 12345).unwrap().state();
    let meta = Meta {
        epochs_done: 9,
        params,
        ..Default::default()
    };

    // A writer that died mid-write left its temporary file behind.
    let stale = dir.path("model.safetensors.tmp.4242");
    std::fs::write(&stale, &original[..original.len() / 3]).unwrap();
    assert_eq!(checkpoint::load(&path).unwrap().epochs_done, 2);

    // Our own temporary file cannot be created: the save fails, naming it,
    // and the checkpoint is unchanged.
    let ours = dir.path(&format!("model.safetensors.tmp.{}", std::process::id()));
    std::fs::create_dir(&ours).unwrap();
    let err = checkpoint::save(&path, &model, &other, &meta)
        .unwrap_err()
        .to_string();
    assert!(
        err.contains(&format!("cannot save checkpoint `{}`", path.display()))
            && err.contains(&ours.display().to_string()),
        "{err}"
    );
    assert_eq!(std::fs::read(&path).unwrap(), original);
    assert_eq!(checkpoint::load(&path).unwrap().epochs_done, 2);
    std::fs::remove_dir(&ours).unwrap();

    // The rename fails (the target is a directory): the temporary file is
    // removed and the directory untouched.
    let target = dir.path("occupied");
    std::fs::create_dir(&target).unwrap();
    let err = checkpoint::save(&target, &model, &other, &meta)
        .unwrap_err()
        .to_string();
    assert!(err.contains("renaming"), "{err}");
    assert!(target.is_dir());
    assert_eq!(
        dir.files(),
        vec![
            "model.safetensors",
            "model.safetensors.tmp.4242",
            "occupied"
        ]
    );

    // A later save succeeds despite the stale file and replaces the
    // checkpoint whole.
    checkpoint::save(&path, &model, &other, &meta).unwrap();
    let loaded = checkpoint::load(&path).unwrap();
    assert_eq!(loaded.epochs_done, 9);
    assert_eq!(loaded.tensors, other);

    // Through the CLI: a `--save` that cannot be written stops the run.
    let flags = RunOptions {
        save: Some(target),
        ..Default::default()
    };
    let err = run(&example("xor"), &settings(3), &flags).unwrap_err();
    assert!(err.contains("cannot save checkpoint"), "{err}");
}

/// Adam's step count is an `i32` in the checkpoint and a resumed run
/// continues it exactly: 2 + 2 epochs end with the very tensors of 4
/// (the count feeds the bias corrections, so a wrong one moves every
/// param). A checkpoint written when the count was an `f32` resumes the same.
#[test]
fn resume_continues_adams_step_count_exactly_also_from_an_f32_count() {
    let dir = Scratch::new("adam-step");
    let straight_path = dir.path("straight.safetensors");
    train_and_save("xor", 4, &straight_path);
    let straight = checkpoint::load(&straight_path).unwrap();
    let count = straight.tensor(nnc_ir::ADAM_STEP).unwrap();
    assert_eq!(count.dtype, nnc_ir::DType::I32);
    let per_epoch = count.data[0] / 4.0;
    assert!(per_epoch >= 1.0 && per_epoch.fract() == 0.0, "{count:?}");

    let path = dir.path("xor.safetensors");
    train_and_save("xor", 2, &path);
    let half = checkpoint::load(&path).unwrap();
    assert_eq!(
        half.tensor(nnc_ir::ADAM_STEP).unwrap().data,
        vec![2.0 * per_epoch]
    );
    let old_path = dir.path("old.safetensors");
    let as_f32: Vec<(String, nnc_ir::Tensor)> = half
        .tensors
        .iter()
        .map(|(name, t)| {
            let mut t = t.clone();
            if name == nnc_ir::ADAM_STEP {
                t.dtype = nnc_ir::DType::F32;
            }
            (name.clone(), t)
        })
        .collect();
    let meta = Meta {
        epochs_done: half.epochs_done,
        params: half.params.clone(),
        ..Default::default()
    };
    checkpoint::save(&old_path, &half.model, &as_f32, &meta).unwrap();
    let stored = std::fs::read(&old_path).unwrap();
    assert!(
        String::from_utf8_lossy(&stored).contains(r#""adam.step":{"dtype":"F32""#),
        "the count is stored as an f32"
    );

    for p in [&path, &old_path] {
        let flags = RunOptions {
            save: Some(p.clone()),
            resume: true,
            ..Default::default()
        };
        trained(run(&example("xor"), &settings(4), &flags).unwrap().0);
        let resumed = checkpoint::load(p).unwrap();
        assert_eq!(resumed.epochs_done, 4);
        assert_eq!(resumed.tensors, straight.tensors, "{}", p.display());
    }
}

#[test]
fn resume_continues_from_the_saved_epoch() {
    let dir = Scratch::new("resume");
    let path = dir.path("xor.safetensors");
    let first = train_and_save("xor", 2, &path);
    assert_eq!(first.epochs.len(), 2);
    assert_eq!(checkpoint::load(&path).unwrap().epochs_done, 2);

    let report = dir.path("report.json");
    let flags = RunOptions {
        save: Some(path.clone()),
        resume: true,
        report: Some(report.clone()),
        ..Default::default()
    };
    let (outcome, lines) = run(&example("xor"), &settings(4), &flags).unwrap();
    let resumed = trained(outcome);
    let numbers: Vec<(usize, usize)> = resumed.epochs.iter().map(|e| (e.epoch, e.epochs)).collect();
    assert_eq!(numbers, vec![(3, 4), (4, 4)]);
    assert!(
        lines.iter().any(|l| l.contains("after epoch 2/4")),
        "{lines:?}"
    );
    assert!(
        lines.iter().any(|l| l.starts_with("epoch 3/4")),
        "{lines:?}"
    );
    assert!(
        !lines.iter().any(|l| l.starts_with("epoch 1/")),
        "{lines:?}"
    );
    assert_eq!(checkpoint::load(&path).unwrap().epochs_done, 4);
    let json = Report::from_json(&std::fs::read_to_string(&report).unwrap()).unwrap();
    assert_eq!(
        (json.epochs, json.first_epoch, json.per_epoch.len()),
        (4, 3, 2)
    );

    // The optimizer state carried over: 2 + 2 epochs train like 4 (xor has
    // one batch per epoch, so only the order inside it differs).
    let straight = trained(
        run(&example("xor"), &settings(4), &RunOptions::default())
            .unwrap()
            .0,
    );
    let (a, b) = (straight.epochs[3].train.loss, resumed.epochs[1].train.loss);
    assert!((a - b).abs() < 1e-5, "uninterrupted {a} vs resumed {b}");

    // Nothing left to do: no epoch runs and the checkpoint stays at 4.
    let (outcome, lines) = run(&example("xor"), &settings(4), &flags).unwrap();
    assert!(trained(outcome).epochs.is_empty());
    assert!(
        lines.iter().any(|l| l.contains("nothing left to train")),
        "{lines:?}"
    );
    assert_eq!(checkpoint::load(&path).unwrap().epochs_done, 4);
}

#[test]
fn report_and_eval_on_digits() {
    let dir = Scratch::new("report");
    let ckpt = dir.path("digits.safetensors");
    let report = dir.path("run.json");
    let flags = RunOptions {
        save: Some(ckpt.clone()),
        report: Some(report.clone()),
        ..Default::default()
    };
    let (outcome, _) = run(&example("digits_mlp"), &settings(1), &flags).unwrap();
    let trained = trained(outcome);
    let text = std::fs::read_to_string(&report).unwrap();
    for key in [
        "model",
        "backend",
        "mode",
        "nnc_version",
        "epochs",
        "first_epoch",
        "per_epoch",
        "train",
        "validation",
        "test",
        "samples_per_second",
        "total_seconds",
        "compile_seconds",
        "peak_rss_bytes",
    ] {
        assert!(
            text.contains(&format!("\"{key}\":")),
            "{key} missing:\n{text}"
        );
    }
    let json = Report::from_json(&text).unwrap();
    assert_eq!(
        (json.model.as_str(), json.mode.as_str()),
        ("DigitsMLP", "train")
    );
    assert_eq!((json.epochs, json.per_epoch.len()), (1, 1));
    assert!(json.validation.is_some() && json.test.is_some());
    assert_eq!(json.test.as_ref().unwrap().samples, 359);
    assert!(json.samples_per_second > 0.0);
    assert!(json.compile_seconds > 0.0 && json.compile_seconds <= json.total_seconds);
    if cfg!(target_os = "linux") {
        assert!(json.peak_rss_bytes.is_some_and(|b| b > 1 << 20));
    }

    // `--eval` of the saved weights reproduces the run's final validation
    // and test metrics: same split, same params.
    let eval_report = dir.path("eval.json");
    let flags = RunOptions {
        weights: Some(ckpt),
        eval: true,
        report: Some(eval_report.clone()),
        ..Default::default()
    };
    let (outcome, lines) = run(&example("digits_mlp"), &settings(1), &flags).unwrap();
    let RunOutcome::Evaluated {
        train,
        validation,
        test,
    } = outcome
    else {
        panic!("expected an evaluation");
    };
    assert!(train.is_none());
    assert_eq!(validation.as_ref(), trained.epochs[0].validation.as_ref());
    assert_eq!(test.as_ref(), trained.test.as_ref());
    assert!(lines.iter().any(|l| l.starts_with("test: ")), "{lines:?}");
    assert!(!lines.iter().any(|l| l.starts_with("epoch ")), "{lines:?}");
    let json = Report::from_json(&std::fs::read_to_string(&eval_report).unwrap()).unwrap();
    assert_eq!((json.mode.as_str(), json.epochs), ("eval", 1));
    assert!(json.per_epoch.is_empty() && json.test.is_some());
}

#[test]
fn predict_prints_one_line_per_sample() {
    let dir = Scratch::new("predict");
    let ckpt = dir.path("xor.safetensors");
    train_and_save("xor", 1, &ckpt);
    let input = dir.path("in.csv");
    std::fs::write(&input, "a,b\n0,0\n0,1\n1,0\n1,1\n").unwrap();
    let flags = RunOptions {
        weights: Some(ckpt.clone()),
        predict: Some(input.clone()),
        ..Default::default()
    };
    let (outcome, lines) = run(&example("xor"), &settings(1), &flags).unwrap();
    let RunOutcome::Predicted(predictions) = outcome else {
        panic!("expected predictions");
    };
    assert_eq!(lines.len(), 4, "{lines:?}");
    assert_eq!(predictions.len(), 4);
    for (i, (line, p)) in lines.iter().zip(&predictions).enumerate() {
        assert!(line.starts_with(&format!("{i}: [")), "{line}");
        assert_eq!(p.outputs.len(), 1);
        assert_eq!(p.outputs[0].1.len(), 1);
        assert_eq!(p.class, None, "a sigmoid output has no arg-max class");
    }

    // Through the binary, with a wrong-width file as a clear error.
    let out = Command::new(env!("CARGO_BIN_EXE_nnc"))
        .arg("run")
        .arg(example("xor"))
        .arg("--weights")
        .arg(&ckpt)
        .arg("--predict")
        .arg(&input)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(String::from_utf8_lossy(&out.stdout).lines().count(), 4);
    let wide = dir.path("wide.csv");
    std::fs::write(&wide, "0,0,1\n").unwrap();
    let err = run(
        &example("xor"),
        &settings(1),
        &RunOptions {
            predict: Some(wide),
            ..flags.clone()
        },
    )
    .unwrap_err();
    assert!(
        err.contains(
            "has samples of shape [3] (3 values), but model `Xor` takes `x` samples of shape [2]"
        ),
        "{err}"
    );
    // `--predict` needs `--weights`.
    let out = Command::new(env!("CARGO_BIN_EXE_nnc"))
        .arg("run")
        .arg(example("xor"))
        .arg("--predict")
        .arg(&input)
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("--weights"));
}

#[test]
fn predict_classifies_digits_from_csv_and_idx() {
    let dir = Scratch::new("predict-digits");
    let ckpt = dir.path("digits.safetensors");
    train_and_save("digits_mlp", 1, &ckpt);
    // Three blank-ish images: raw pixel values 0..16, as in the data file.
    let rows: Vec<Vec<u8>> = (0..3u8)
        .map(|k| (0..64u8).map(|i| (i * (k + 1)) % 17).collect())
        .collect();
    let csv: String = rows
        .iter()
        .map(|r| {
            let cells: Vec<String> = r.iter().map(u8::to_string).collect();
            cells.join(",") + "\n"
        })
        .collect();
    let csv_path = dir.path("three.csv");
    std::fs::write(&csv_path, csv).unwrap();
    // The same samples as an IDX file of 8x8 images: reshaped to the
    // model's 64 inputs.
    let storage = nnc_runtime::data::Storage::U8(rows.concat());
    let idx = nnc_runtime::data::idx::encode(&[3, 8, 8], &storage).unwrap();
    let idx_path = dir.path("three.idx");
    std::fs::write(&idx_path, idx).unwrap();

    let mut results = Vec::new();
    for input in [&csv_path, &idx_path] {
        let flags = RunOptions {
            weights: Some(ckpt.clone()),
            predict: Some(input.clone()),
            ..Default::default()
        };
        let (outcome, lines) = run(&example("digits_mlp"), &settings(1), &flags).unwrap();
        let RunOutcome::Predicted(p) = outcome else {
            panic!("expected predictions");
        };
        assert_eq!(lines.len(), 3, "{lines:?}");
        for (line, p) in lines.iter().zip(&p) {
            let class = p.class.expect("a classifier's class");
            assert!(class < 10);
            assert!(line.ends_with(&format!("  class {class}")), "{line}");
            assert_eq!(p.outputs[0].1.len(), 10);
        }
        results.push(p);
    }
    assert_eq!(
        results[0], results[1],
        "CSV and IDX give the same predictions"
    );
}

/// A batch norm's running statistics are model state, not optimizer
/// state: `--weights` restores them with the params, so evaluation after
/// loading matches evaluation before saving.
#[test]
fn weights_carry_batchnorm_running_statistics() {
    let dir = Scratch::new("batchnorm");
    let file = dir.path("bn.nn");
    let text = std::fs::read_to_string(example("digits_mlp"))
        .unwrap()
        .replace(
            "-> dense(hidden) -> relu",
            "-> dense(hidden) -> batchnorm -> relu -> dropout(0.2)",
        );
    assert!(text.contains("batchnorm"));
    std::fs::write(&file, text).unwrap();
    let src = driver::read_source(&file).unwrap();
    let module = driver::compile_source(&src, None).unwrap();
    let step = driver::train_step(&module).unwrap();
    let spec = module.train.as_ref().unwrap();
    let data_dir = example("digits_mlp").parent().unwrap().to_path_buf();
    let data = nnc_runtime::loader::load(module.data.as_ref().unwrap(), &data_dir).unwrap();
    let programs = Programs::new(
        module.forward.clone(),
        spec.evaluation.clone(),
        step.clone(),
    );
    let params = checkpoint::param_names(&programs);
    for stat in ["batchnorm.running_mean", "batchnorm.running_var"] {
        assert!(params.iter().any(|p| p == stat), "{stat} in {params:?}");
    }
    assert!(!params.iter().any(|p| p.contains("adam")), "{params:?}");

    let mut batch = nnc_runtime::Batch::default();
    let names = nnc_runtime::train::input_names(&step);
    let indices: Vec<usize> = (0..32).collect();
    data.fill_batch(&data.train, &names, &indices, &mut batch)
        .unwrap();
    let mut a = Interpreter::new(programs.clone(), 3).unwrap();
    for i in 0..3 {
        nnc_runtime::train::feed_hyper(&mut batch, &spec.optimizer, 1e-2, i as u64);
        nnc_runtime::train::set_key(&mut batch, nnc_ir::RNG_KEY, i);
        a.train_step(&batch).unwrap();
    }
    let ckpt = dir.path("bn.safetensors");
    let meta = Meta {
        epochs_done: 1,
        params: params.clone(),
        ..Default::default()
    };
    checkpoint::save(&ckpt, &module.name, &a.state(), &meta).unwrap();
    let mut b = Interpreter::new(programs, 4).unwrap();
    checkpoint::load(&ckpt)
        .unwrap()
        .apply(&mut b, &module.name, &params, Scope::Params)
        .unwrap();
    let get =
        |e: &Interpreter, n: &str| e.state().into_iter().find(|(name, _)| name == n).unwrap().1;
    let trained_mean = get(&a, "batchnorm.running_mean");
    assert!(
        trained_mean.data.iter().any(|&v| v != 0.0),
        "the steps moved it"
    );
    assert_eq!(get(&b, "batchnorm.running_mean"), trained_mean);
    assert_eq!(
        get(&b, "batchnorm.running_var"),
        get(&a, "batchnorm.running_var")
    );
    // Evaluation reads the running statistics and draws no random numbers.
    assert_eq!(a.evaluate(&batch).unwrap(), b.evaluate(&batch).unwrap());
}
