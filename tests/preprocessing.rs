//! `standardize()` end to end: fitted on the samples that train (the
//! validation ones are outliers that would move the statistics), saved in
//! the checkpoint, and applied by `--predict` to raw samples.

use nnc::driver::{self, RunSettings};
use nnc_runtime::data::Fitted;
use nnc_runtime::{RunOptions, RunOutcome};
use std::path::Path;

mod common;
use common::Scratch;

const PROGRAM: &str = r#"
model Lin {
    input x: f32[B, 2]
    logits = x -> dense(2)
    output logits
}
data D {
    x = csv("d.csv", columns: [0, 2]) -> standardize()
    label: i32 = csv("d.csv", column: 2)
}
train Lin on D {
    loss = cross_entropy(logits, label)
    optimizer = sgd(lr: 0.1)
    batch = 4
    epochs = 2
    seed = 7
    validate = split(0.25)
}
"#;

fn run(path: &Path, options: RunOptions) -> RunOutcome {
    let settings = RunSettings {
        run: options,
        ..Default::default()
    };
    driver::run_with(path, &settings, &mut |_| {})
        .map_err(|f| f.0)
        .unwrap()
}

#[test]
fn standardize_fits_the_training_split_and_predict_applies_it() {
    let dir = Scratch::new("e2e");
    let n = 24;
    let parts = nnc_runtime::train::partition(n, None, Some(0.25), 7).unwrap();
    let mut table = String::new();
    for i in 0..n {
        let (a, b) = match parts.validation.contains(&i) {
            true => (500.0, -500.0),
            false => (i as f64, (i % 5) as f64 * 3.0),
        };
        table.push_str(&format!("{a},{b},{}\n", i % 2));
    }
    dir.write("d.csv", &table);
    let model = dir.write("m.nn", PROGRAM);
    let ckpt = dir.0.join("m.safetensors");
    run(
        &model,
        RunOptions {
            save: Some(ckpt.clone()),
            ..Default::default()
        },
    );
    let saved = nnc_runtime::checkpoint::load(&ckpt).unwrap();
    let Some([Fitted::Standardize { mean, std, .. }]) = saved.fitted.get("x").map(Vec::as_slice)
    else {
        panic!("{:?}", saved.fitted);
    };
    let rows: Vec<[f64; 2]> = parts
        .train
        .iter()
        .map(|&i| [i as f64, (i % 5) as f64 * 3.0])
        .collect();
    for k in 0..2 {
        let m = rows.iter().map(|r| r[k]).sum::<f64>() / rows.len() as f64;
        let v = rows.iter().map(|r| (r[k] - m).powi(2)).sum::<f64>() / rows.len() as f64;
        assert!((mean[k] - m).abs() < 1e-9, "{mean:?} vs {m}");
        assert!((std[k] - v.sqrt()).abs() < 1e-9, "{std:?} vs {}", v.sqrt());
    }

    // Raw samples through the saved statistics and the saved weights.
    let input = dir.write("p.csv", "3,6\n40,-2\n");
    let RunOutcome::Predicted(predictions) = run(
        &model,
        RunOptions {
            weights: Some(ckpt.clone()),
            predict: Some(input),
            ..Default::default()
        },
    ) else {
        panic!("expected predictions");
    };
    let tensor = |shape: &[usize]| {
        saved
            .tensors
            .iter()
            .find(|(_, t)| t.shape == shape)
            .map(|(_, t)| t.data.clone())
            .unwrap()
    };
    let (w, b) = (tensor(&[2, 2]), tensor(&[2]));
    for (p, raw) in predictions.iter().zip([[3.0, 6.0], [40.0, -2.0]]) {
        let z: Vec<f64> = (0..2).map(|k| (raw[k] - mean[k]) / std[k]).collect();
        let logits: Vec<f64> = (0..2)
            .map(|j| z[0] * w[j] + z[1] * w[2 + j] + b[j])
            .collect();
        let got = &p.outputs[0].1;
        for (g, l) in got.iter().zip(&logits) {
            assert!((g - l).abs() < 1e-4, "{got:?} vs {logits:?}");
        }
    }
}
