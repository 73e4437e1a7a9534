//! Gradual magnitude pruning end to end (`prune = magnitude(...)`): an
//! MLP on the digits that ship with nnc reaches its target sparsity
//! exactly and still learns; the masks are model state, so a checkpoint
//! holds them, `--resume` continues from them and `--weights --eval`
//! evaluates the sparse model.

use nnc::driver::{self, Backend, RunOutcome, RunSettings};
use nnc_passes::compress::sparsity::pruned_count;
use nnc_runtime::{Report, RunOptions, TrainOptions};
use std::path::{Path, PathBuf};

mod common;
use common::Scratch;

/// The digits MLP of `examples/digits_mlp.nn` (64 → 32 → 10), pruned as
/// `prune` says (no pruning when empty), written into `dir`.
fn source(dir: &Scratch, prune: &str, epochs: usize) -> PathBuf {
    let prune = match prune {
        "" => String::new(),
        p => format!("prune     = {p}"),
    };
    let text = format!(
        "model DigitsMLP {{
    input image: f32[B, 64]
    logits = image -> dense(32) -> relu -> dense(10)
    output logits
}}

data Digits {{
    image = csv(\"data/digits.csv.gz\", columns: [0, 64]) -> scale(1 / 16)
    label: i32 = csv(\"data/digits.csv.gz\", column: 64)
    test = split(0.2)
}}

train DigitsMLP on Digits {{
    loss      = cross_entropy(logits, label)
    optimizer = adam(lr: 3e-3)
    batch     = 32
    epochs    = {epochs}
    seed      = 3
    metrics   = [accuracy]
    {prune}
}}
"
    );
    let path = dir.path("digits_pruned.nn");
    std::fs::write(&path, text).unwrap();
    path
}

fn settings(backend: Backend, flags: RunOptions) -> RunSettings {
    RunSettings {
        data_dir: Some(Path::new(env!("CARGO_MANIFEST_DIR")).join("examples")),
        run: RunOptions { backend, ..flags },
        ..Default::default()
    }
}

fn run(path: &Path, settings: &RunSettings) -> (RunOutcome, Vec<String>) {
    let mut lines = Vec::new();
    let outcome = driver::run_with(path, settings, &mut |l| lines.push(l.to_string()))
        .unwrap_or_else(|f| panic!("{}", f.0));
    (outcome, lines)
}

fn report(path: &Path) -> Report {
    serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
}

/// The value after `key ` on an epoch line.
fn value(line: &str, key: &str) -> f64 {
    let at = line
        .find(&format!("  {key} "))
        .unwrap_or_else(|| panic!("{line}"));
    line[at + key.len() + 3..]
        .split_whitespace()
        .next()
        .unwrap()
        .trim_end_matches('%')
        .parse()
        .unwrap()
}

#[test]
fn per_layer_pruning_reaches_its_target_exactly_and_the_model_still_learns() {
    let dir = Scratch::new("layer");
    // 45 training steps an epoch (1,438 samples by 32): masks every 10
    // steps from the start of epoch 2 (step 45) and at the end of epoch 4
    // (step 180).
    let path = source(
        &dir,
        "magnitude(sparsity: 0.75, start: 2, end: 4, every: 10)",
        6,
    );
    let json = dir.path("report.json");
    let html = dir.path("report.html");
    let ckpt = dir.path("pruned.safetensors");
    let flags = RunOptions {
        report: Some(json.clone()),
        report_html: Some(html.clone()),
        save: Some(ckpt.clone()),
        ..Default::default()
    };
    let (_, lines) = run(&path, &settings(Backend::Jit, flags));
    let epochs: Vec<&String> = lines.iter().filter(|l| l.starts_with("epoch ")).collect();
    assert_eq!(epochs.len(), 6, "{lines:?}");
    let shown: Vec<f64> = epochs.iter().map(|l| value(l, "sparsity")).collect();
    assert_eq!(shown[0], 0.0, "{lines:?}");
    assert!(
        shown[1] > 0.3 && shown[2] > shown[1] && shown[2] < 0.75,
        "{lines:?}"
    );
    assert_eq!(&shown[3..], [0.75; 3], "{lines:?}");

    let r = report(&json);
    let s = r.sparsity.expect("a pruned run reports its sparsity");
    assert_eq!((s.target, s.scope.as_str()), (0.75, "layer"));
    let names: Vec<&str> = s.weights.iter().map(|w| w.name.as_str()).collect();
    assert_eq!(names, ["dense.w", "dense_1.w"]);
    for w in &s.weights {
        assert_eq!(w.zeros, pruned_count(w.size, 0.75), "{w:?}");
    }
    assert_eq!(s.weights[0].size, 64 * 32);
    // The per-epoch train metrics hold the sparsity: the HTML report
    // draws its curve and lists the weights.
    let per_epoch: Vec<f64> = r
        .per_epoch
        .iter()
        .map(|e| e.train.metrics["sparsity"])
        .collect();
    assert_eq!(&per_epoch[3..], [0.75; 3]);
    let page = std::fs::read_to_string(&html).unwrap();
    assert!(page.contains("<h2>Sparsity</h2>") && page.contains("<td>dense_1.w</td>"));
    let test = r.test.unwrap().accuracy.unwrap();
    assert!(test > 0.9, "test accuracy of the 75% sparse MLP: {test}");

    // The checkpoint holds the masks and zero weights where they are 0.
    let saved = nnc_runtime::checkpoint::load(&ckpt).unwrap();
    let tensor = |n: &str| {
        saved
            .tensors
            .iter()
            .find(|(name, _)| name == n)
            .map(|(_, t)| t.clone())
            .unwrap_or_else(|| panic!("no `{n}` in the checkpoint"))
    };
    let (w, mask) = (tensor("dense.w"), tensor("dense.w.mask"));
    let zeros = w.data.iter().filter(|v| **v == 0.0).count();
    assert_eq!(zeros, pruned_count(64 * 32, 0.75));
    assert!(w
        .data
        .iter()
        .zip(&mask.data)
        .all(|(w, m)| (*m == 0.0) == (*w == 0.0)));

    // `--weights --eval` scores the sparse model: the same test accuracy.
    let eval_json = dir.path("eval.json");
    let flags = RunOptions {
        weights: Some(ckpt.clone()),
        eval: true,
        report: Some(eval_json.clone()),
        ..Default::default()
    };
    run(&path, &settings(Backend::Jit, flags));
    let e = report(&eval_json);
    assert_eq!(e.test.unwrap().accuracy.unwrap(), test);
    assert_eq!(e.sparsity.unwrap().weights, s.weights);
}

#[test]
fn global_pruning_has_one_threshold_and_resumes_from_its_masks() {
    let dir = Scratch::new("global");
    let path = source(
        &dir,
        "magnitude(sparsity: 0.9, start: 1, end: 2, scope: global, every: 20)",
        3,
    );
    let ckpt = dir.path("pruned.safetensors");
    let json = dir.path("report.json");
    // Two epochs, then a resumed third: the masks come from the checkpoint.
    let first = RunOptions {
        save: Some(ckpt.clone()),
        train: TrainOptions {
            epochs: Some(2),
            ..Default::default()
        },
        ..Default::default()
    };
    run(&path, &settings(Backend::Interp, first));
    let resumed = RunOptions {
        save: Some(ckpt.clone()),
        resume: true,
        report: Some(json.clone()),
        ..Default::default()
    };
    let (_, lines) = run(&path, &settings(Backend::Interp, resumed));
    assert!(
        lines.iter().any(|l| l.starts_with("epoch 3/3")),
        "{lines:?}"
    );
    let s = report(&json).sparsity.unwrap();
    let size: usize = s.weights.iter().map(|w| w.size).sum();
    let zeros: usize = s.weights.iter().map(|w| w.zeros).sum();
    assert_eq!(zeros, pruned_count(size, 0.9));
    assert_eq!(s.overall, zeros as f64 / size as f64);
    // One threshold over both: the layers end at different sparsities.
    assert_ne!(
        s.weights[0].zeros * s.weights[1].size,
        s.weights[1].zeros * s.weights[0].size
    );
}

#[test]
fn a_pruning_run_starts_from_weights_trained_without_pruning() {
    let dir = Scratch::new("warm");
    let dense = dir.path("dense.safetensors");
    let flags = RunOptions {
        save: Some(dense.clone()),
        ..Default::default()
    };
    run(&source(&dir, "", 2), &settings(Backend::Jit, flags));
    let path = source(&dir, "magnitude(sparsity: 0.5, end: 1, every: 15)", 2);
    // Evaluated as it is, the dense model: its masks are ones.
    let json = dir.path("eval.json");
    let flags = RunOptions {
        weights: Some(dense.clone()),
        eval: true,
        report: Some(json.clone()),
        ..Default::default()
    };
    run(&path, &settings(Backend::Jit, flags));
    assert_eq!(report(&json).sparsity.unwrap().overall, 0.0);
    // Fine-tuned with pruning from those weights.
    let json = dir.path("pruned.json");
    let flags = RunOptions {
        weights: Some(dense),
        report: Some(json.clone()),
        ..Default::default()
    };
    run(&path, &settings(Backend::Jit, flags));
    let r = report(&json);
    for w in &r.sparsity.unwrap().weights {
        assert_eq!(w.zeros, pruned_count(w.size, 0.5), "{w:?}");
    }
    assert!(r.test.unwrap().accuracy.unwrap() > 0.85);
}
