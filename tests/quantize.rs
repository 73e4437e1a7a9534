//! `nnc quantize` end to end on the digits MLP (its data ships with the
//! examples): train, quantize, evaluate the int8 model, and the errors a
//! user can run into.

use nnc::driver::{self, QuantizeOptions, RunOutcome, RunSettings};
use nnc_runtime::quantize::Method;
use nnc_runtime::{Backend, RunOptions, TrainOptions};
use std::path::{Path, PathBuf};

mod common;
use common::Scratch;

fn example(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("examples")
        .join(format!("{name}.nn"))
}

fn settings(run: RunOptions) -> RunSettings {
    RunSettings {
        run,
        ..Default::default()
    }
}

/// The test accuracy of `digits_mlp` with `weights`, evaluated by `backend`.
fn test_accuracy(weights: &Path, backend: Backend) -> f64 {
    let run = RunOptions {
        backend,
        weights: Some(weights.to_path_buf()),
        eval: true,
        ..Default::default()
    };
    match driver::run_with(&example("digits_mlp"), &settings(run), &mut |_| {}) {
        Ok(RunOutcome::Evaluated { test, .. }) => test.expect("a test split").accuracy.unwrap(),
        Ok(other) => panic!("expected an evaluation, got {other:?}"),
        Err(f) => panic!("{f}"),
    }
}

fn quantize_options(weights: &Path, output: &Path) -> QuantizeOptions {
    QuantizeOptions {
        weights: weights.to_path_buf(),
        output: output.to_path_buf(),
        batches: 8,
        method: Method::MinMax,
        backend: Backend::Interp,
        data_dir: None,
        model: None,
        qat: false,
    }
}

#[test]
fn an_int8_digits_mlp_scores_as_the_float_one() {
    let dir = Scratch::new("digits");
    let (f32_path, q_path) = (dir.path("d.safetensors"), dir.path("dq.safetensors"));
    let run = RunOptions {
        save: Some(f32_path.clone()),
        train: TrainOptions {
            epochs: Some(8),
            ..Default::default()
        },
        ..Default::default()
    };
    driver::run_with(&example("digits_mlp"), &settings(run), &mut |_| {}).unwrap();
    let mut lines = Vec::new();
    driver::quantize(
        &example("digits_mlp"),
        &quantize_options(&f32_path, &q_path),
        &mut |l| lines.push(l.to_string()),
    )
    .unwrap();
    assert!(lines[0].starts_with("quantized `dense.w`"), "{lines:?}");
    assert!(lines[1].starts_with("quantized `dense_1.w`"), "{lines:?}");
    assert!(
        lines[2].contains("calibrated on 256 samples (minmax)"),
        "{lines:?}"
    );

    let ckpt = nnc_runtime::checkpoint::load(&q_path).unwrap();
    let dtype = |name: &str| {
        ckpt.tensors
            .iter()
            .find(|(n, _)| n == name)
            .unwrap()
            .1
            .dtype
    };
    assert_eq!(dtype("dense.w"), nnc_ir::DType::I8);
    assert_eq!(dtype("dense.b"), nnc_ir::DType::F32);
    assert!(
        !ckpt.tensors.iter().any(|(n, _)| n.starts_with("adam")),
        "no optimizer state"
    );

    let float = test_accuracy(&f32_path, Backend::Interp);
    let int8 = test_accuracy(&q_path, Backend::Interp);
    assert!(float > 0.9, "{float}");
    assert!(
        (float - int8).abs() <= 0.01,
        "int8 {int8} against f32 {float}"
    );
    // The JIT runs the integer products too (through `igemm`, exact); only
    // its f32 arithmetic around them may round differently, so an
    // activation within an ulp of a quantization step may differ.
    let int8_jit = test_accuracy(&q_path, Backend::Jit);
    assert!(
        (int8_jit - int8).abs() <= 0.005,
        "int8 on the JIT {int8_jit} against the interpreter's {int8}"
    );

    // Every calibration method gives a working model.
    for method in [Method::Percentile(99.9), Method::Entropy] {
        let path = dir.path("dm.safetensors");
        let options = QuantizeOptions {
            method,
            ..quantize_options(&f32_path, &path)
        };
        driver::quantize(&example("digits_mlp"), &options, &mut |_| {}).unwrap();
        let acc = test_accuracy(&path, Backend::Interp);
        assert!(acc > float - 0.05, "{}: {acc}", method.name());
    }

    // It predicts the classes the float model predicts on these digits.
    let samples = dir.path("p.csv");
    let rows: Vec<String> = (0..8)
        .map(|d| {
            let pixels: Vec<String> = (0..64)
                .map(|i| ((i * 7 + d * 13) % 17).to_string())
                .collect();
            pixels.join(",")
        })
        .collect();
    std::fs::write(&samples, rows.join("\n")).unwrap();
    let classes = |weights: &Path| {
        let run = RunOptions {
            weights: Some(weights.to_path_buf()),
            predict: Some(samples.clone()),
            ..Default::default()
        };
        match driver::run_with(&example("digits_mlp"), &settings(run), &mut |_| {}) {
            Ok(RunOutcome::Predicted(p)) => p.iter().map(|p| p.class).collect::<Vec<_>>(),
            other => panic!("{other:?}"),
        }
    };
    let (f, q) = (classes(&f32_path), classes(&q_path));
    let agree = f.iter().zip(&q).filter(|(a, b)| a == b).count();
    assert!(agree >= 7, "{f:?} vs {q:?}");

    // A quantized checkpoint evaluates and predicts; it does not train or
    // quantize again.
    let run = RunOptions {
        weights: Some(q_path.clone()),
        ..Default::default()
    };
    let e = driver::run_with(&example("digits_mlp"), &settings(run), &mut |_| {}).unwrap_err();
    assert!(e.to_string().contains("is quantized"), "{e}");
    let e = driver::quantize(
        &example("digits_mlp"),
        &quantize_options(&q_path, &dir.path("again.safetensors")),
        &mut |_| {},
    )
    .unwrap_err();
    assert!(e.to_string().contains("already quantized"), "{e}");
    let options = QuantizeOptions {
        batches: 0,
        ..quantize_options(&f32_path, &dir.path("none.safetensors"))
    };
    let e = driver::quantize(&example("digits_mlp"), &options, &mut |_| {}).unwrap_err();
    assert!(e.to_string().contains("calibration data"), "{e}");
}

#[test]
fn a_checkpoint_of_another_model_is_refused() {
    let dir = Scratch::new("other");
    let xor = dir.path("xor.safetensors");
    let run = RunOptions {
        save: Some(xor.clone()),
        backend: Backend::Interp,
        train: TrainOptions {
            epochs: Some(1),
            ..Default::default()
        },
        ..Default::default()
    };
    driver::run_with(&example("xor"), &settings(run), &mut |_| {}).unwrap();
    let e = driver::quantize(
        &example("digits_mlp"),
        &quantize_options(&xor, &dir.path("q.safetensors")),
        &mut |_| {},
    )
    .unwrap_err();
    assert!(e.to_string().contains("not `DigitsMLP`"), "{e}");
    assert!(!dir.path("q.safetensors").exists(), "nothing written");
}

/// Quantization-aware training: prepare (`--qat`), fine-tune with fake
/// quantization, convert with the learned ranges. The converted int8
/// model computes what the fake-quantized one did.
#[test]
fn a_digits_mlp_trained_quantized_converts_to_the_model_it_trained() {
    let dir = Scratch::new("qat");
    let float = dir.path("f.safetensors");
    let run = RunOptions {
        save: Some(float.clone()),
        train: TrainOptions {
            epochs: Some(4),
            ..Default::default()
        },
        ..Default::default()
    };
    driver::run_with(&example("digits_mlp"), &settings(run), &mut |_| {}).unwrap();

    let prepared = dir.path("prepared.safetensors");
    let mut lines = Vec::new();
    let options = QuantizeOptions {
        qat: true,
        ..quantize_options(&float, &prepared)
    };
    driver::quantize(&example("digits_mlp"), &options, &mut |l| {
        lines.push(l.to_string())
    })
    .unwrap();
    assert!(
        lines[0].starts_with("fake-quantized `dense.w`"),
        "{lines:?}"
    );
    let ckpt = nnc_runtime::checkpoint::load(&prepared).unwrap();
    assert_eq!(ckpt.structure, vec![nnc_ir::StructuralChange::FakeQuantize]);
    let lo = ckpt.tensor("dense.w.act_min").unwrap().item().unwrap();
    let hi = ckpt.tensor("dense.w.act_max").unwrap().item().unwrap();
    assert!(
        lo <= 0.0 && hi > 0.5,
        "the scaled pixels' range: [{lo}, {hi}]"
    );

    // Fine-tuning trains the fake-quantized model and moves the ranges.
    let trained = dir.path("trained.safetensors");
    let run = RunOptions {
        weights: Some(prepared.clone()),
        save: Some(trained.clone()),
        train: TrainOptions {
            epochs: Some(2),
            ..Default::default()
        },
        ..Default::default()
    };
    driver::run_with(&example("digits_mlp"), &settings(run), &mut |_| {}).unwrap();
    let after = nnc_runtime::checkpoint::load(&trained).unwrap();
    let moved = after.tensor("dense_1.w.act_max").unwrap().item().unwrap();
    let before = ckpt.tensor("dense_1.w.act_max").unwrap().item().unwrap();
    assert_ne!(moved, before, "training moves the range states");
    let fake = test_accuracy(&trained, Backend::Interp);

    // Converting needs no calibration: the ranges are the learned ones.
    let q = dir.path("q.safetensors");
    let mut lines = Vec::new();
    let options = QuantizeOptions {
        batches: 0,
        ..quantize_options(&trained, &q)
    };
    driver::quantize(&example("digits_mlp"), &options, &mut |l| {
        lines.push(l.to_string())
    })
    .unwrap();
    assert!(
        lines[2].starts_with("ranges learned in quantization-aware training"),
        "{lines:?}"
    );
    let converted = nnc_runtime::checkpoint::load(&q).unwrap();
    assert!(converted.structure.is_empty());
    assert!(converted.tensor("dense.w.act_min").is_none());
    let int8 = test_accuracy(&q, Backend::Interp);
    assert!((int8 - fake).abs() <= 0.005, "int8 {int8}, fake {fake}");
    assert!(int8 > 0.9, "{int8}");

    // Preparing twice is refused.
    let options = QuantizeOptions {
        qat: true,
        ..quantize_options(&trained, &dir.path("again.safetensors"))
    };
    let e = driver::quantize(&example("digits_mlp"), &options, &mut |_| {}).unwrap_err();
    assert!(e.to_string().contains("already prepared"), "{e}");
}
