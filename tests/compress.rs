//! `nnc prune` and `nnc factorize` end to end on the digits MLP (its data
//! ships with the examples): train, change the structure, evaluate,
//! fine-tune from the smaller checkpoint, compose the two, and the errors
//! a user can run into.

use nnc::driver::{self, CompileOptions, Emit, RunOutcome, RunSettings};
use nnc_ir::StructuralChange;
use nnc_runtime::compress::{FactorizeOptions, PruneOptions, RankChoice, Saliency};
use nnc_runtime::{RunOptions, TrainOptions};
use std::path::{Path, PathBuf};

mod common;
use common::Scratch;

fn digits() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/digits_mlp.nn")
}

fn train(epochs: usize, weights: Option<&Path>, save: &Path) {
    let run = RunOptions {
        save: Some(save.to_path_buf()),
        weights: weights.map(Path::to_path_buf),
        train: TrainOptions {
            epochs: Some(epochs),
            ..Default::default()
        },
        ..Default::default()
    };
    let settings = RunSettings {
        run,
        ..Default::default()
    };
    driver::run_with(&digits(), &settings, &mut |_| {}).unwrap();
}

fn test_accuracy(weights: &Path) -> f64 {
    let run = RunOptions {
        weights: Some(weights.to_path_buf()),
        eval: true,
        ..Default::default()
    };
    let settings = RunSettings {
        run,
        ..Default::default()
    };
    match driver::run_with(&digits(), &settings, &mut |_| {}) {
        Ok(RunOutcome::Evaluated { test, .. }) => test.expect("a test split").accuracy.unwrap(),
        Ok(other) => panic!("expected an evaluation, got {other:?}"),
        Err(f) => panic!("{f}"),
    }
}

fn prune(weights: &Path, output: &Path, options: &PruneOptions) -> Result<Vec<String>, String> {
    let mut lines = Vec::new();
    nnc::compress::prune(&digits(), weights, output, options, None, &mut |l| {
        lines.push(l.to_string())
    })
    .map(|_| lines)
    .map_err(|f| f.to_string())
}

fn factorize(weights: &Path, output: &Path, rank: RankChoice) -> Result<Vec<String>, String> {
    let options = FactorizeOptions {
        rank,
        layers: vec!["dense".into()],
    };
    let mut lines = Vec::new();
    nnc::compress::factorize(&digits(), weights, output, &options, None, &mut |l| {
        lines.push(l.to_string())
    })
    .map(|_| lines)
    .map_err(|f| f.to_string())
}

fn half() -> PruneOptions {
    PruneOptions {
        ratio: 0.5,
        layers: Vec::new(),
        saliency: Saliency::L1,
        global: false,
    }
}

fn shape(ckpt: &nnc_runtime::Checkpoint, name: &str) -> Vec<usize> {
    ckpt.tensor(name)
        .unwrap_or_else(|| panic!("no tensor `{name}`"))
        .shape
        .clone()
}

/// The forward graph's MFLOP at the train block's batch, as
/// `nnc compile --emit inference-kernels --weights W` prints them.
fn inference_mflop(weights: Option<&Path>) -> f64 {
    let src = driver::read_source(&digits()).unwrap();
    let options = CompileOptions {
        weights: weights.map(Path::to_path_buf),
        ..Default::default()
    };
    let text = driver::emit_with(&src, Emit::InferenceKernels, None, &options).unwrap();
    let first = text.lines().next().unwrap();
    let mflop = first
        .split(" MFLOP")
        .next()
        .unwrap()
        .rsplit(' ')
        .next()
        .unwrap();
    mflop.parse().unwrap()
}

#[test]
fn a_pruned_and_factorized_digits_mlp_trains_on_and_scores() {
    let dir = Scratch::new("digits");
    let base = dir.path("base.safetensors");
    train(8, None, &base);
    let float = test_accuracy(&base);
    assert!(float > 0.9, "{float}");

    // Half of the hidden units go, with their bias and the output
    // layer's rows; the output layer's units are the model's output.
    let pruned = dir.path("pruned.safetensors");
    let lines = prune(&base, &pruned, &half()).unwrap();
    assert_eq!(
        lines[0],
        "pruned `dense.w`: 64 -> 32 channels by l1 saliency (with dense.b, dense_1.w)"
    );
    assert_eq!(
        lines[1],
        "kept `dense_1.w` whole: the channels of `dense_1.w` reach the output `logits`"
    );
    assert!(
        lines[2].starts_with("params 4,810 -> 2,410 (0.50x)"),
        "{lines:?}"
    );
    let ckpt = nnc_runtime::checkpoint::load(&pruned).unwrap();
    assert_eq!(shape(&ckpt, "dense.w"), vec![64, 32]);
    assert_eq!(shape(&ckpt, "dense.b"), vec![32]);
    assert_eq!(shape(&ckpt, "dense_1.w"), vec![32, 10]);
    assert!(!ckpt.tensors.iter().any(|(n, _)| n.starts_with("adam")));
    match &ckpt.structure[..] {
        [StructuralChange::PruneChannels { param, kept }] => {
            assert_eq!(param, "dense.w");
            assert_eq!(kept.len(), 32);
            assert!(kept.windows(2).all(|w| w[0] < w[1]));
        }
        other => panic!("{other:?}"),
    }
    assert!(test_accuracy(&pruned) > 0.5);
    assert!(inference_mflop(Some(&pruned)) < inference_mflop(None));

    // Fine-tuning starts from the smaller model, and what it saves
    // records the structure again.
    let tuned = dir.path("tuned.safetensors");
    train(3, Some(&pruned), &tuned);
    assert_eq!(
        nnc_runtime::checkpoint::load(&tuned).unwrap().structure,
        ckpt.structure
    );
    let after = test_accuracy(&tuned);
    assert!(after > float - 0.03, "{after} against {float}");

    // Factorizing the pruned model composes with the pruning.
    let both = dir.path("both.safetensors");
    let lines = factorize(&tuned, &both, RankChoice::Fixed(8)).unwrap();
    assert!(
        lines[0].starts_with("factorized `dense.w`: 64x32 -> rank 8 (keeps "),
        "{lines:?}"
    );
    let ckpt = nnc_runtime::checkpoint::load(&both).unwrap();
    assert_eq!(shape(&ckpt, "dense.w.u"), vec![64, 8]);
    assert_eq!(shape(&ckpt, "dense.w.v"), vec![8, 32]);
    assert!(ckpt.tensor("dense.w").is_none());
    assert_eq!(ckpt.structure.len(), 2);
    assert!(test_accuracy(&both) > 0.5);

    // By energy: a rank that keeps 90% of the squared singular values,
    // applied only where it saves multiply-adds.
    let by_energy = dir.path("energy.safetensors");
    match factorize(&base, &by_energy, RankChoice::Energy(0.9)) {
        Ok(lines) => {
            assert!(lines[0].contains("keeps 9"), "{lines:?}");
            assert!(inference_mflop(Some(&by_energy)) < inference_mflop(None));
        }
        Err(e) => assert!(e.contains("saves no multiply-adds"), "{e}"),
    }
}

#[test]
fn bad_requests_are_refused_with_what_was_wrong() {
    let dir = Scratch::new("errors");
    let base = dir.path("base.safetensors");
    train(1, None, &base);
    let out = dir.path("out.safetensors");
    let refused = |options: PruneOptions| prune(&base, &out, &options).unwrap_err();

    let e = refused(PruneOptions {
        ratio: 1.0,
        ..half()
    });
    assert!(e.contains("must be in [0, 1)"), "{e}");
    let e = refused(PruneOptions {
        ratio: -0.1,
        ..half()
    });
    assert!(e.contains("must be in [0, 1)"), "{e}");
    let e = refused(PruneOptions {
        layers: vec!["dense_1".into()],
        ..half()
    });
    assert!(e.contains("reach the output `logits`"), "{e}");
    let e = refused(PruneOptions {
        layers: vec!["conv*".into()],
        ..half()
    });
    assert!(
        e.contains("`conv*` is not a dense layer or convolution"),
        "{e}"
    );
    assert!(e.contains("dense, dense_1"), "{e}");
    let e = refused(PruneOptions {
        saliency: Saliency::BatchNorm,
        ..half()
    });
    assert!(e.contains("not followed by a batch norm"), "{e}");

    let e = factorize(&base, &out, RankChoice::Fixed(100)).unwrap_err();
    assert!(
        e.contains("rank 100 is larger than the 64×64 matrix of `dense.w`"),
        "{e}"
    );
    let e = factorize(&base, &out, RankChoice::Energy(1.5)).unwrap_err();
    assert!(e.contains("must be in (0, 1]"), "{e}");
    let e = factorize(&base, &out, RankChoice::Fixed(40)).unwrap_err();
    assert!(e.contains("saves no multiply-adds"), "{e}");
    assert!(!out.exists(), "nothing is written when nothing changes");

    // A checkpoint of another model.
    let xor = dir.path("xor.safetensors");
    let run = RunOptions {
        save: Some(xor.clone()),
        train: TrainOptions {
            epochs: Some(1),
            ..Default::default()
        },
        ..Default::default()
    };
    let xor_nn = Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/xor.nn");
    let settings = RunSettings {
        run,
        ..Default::default()
    };
    driver::run_with(&xor_nn, &settings, &mut |_| {}).unwrap();
    let e = prune(&xor, &out, &half()).unwrap_err();
    assert!(e.contains("is for model `Xor`, not `DigitsMLP`"), "{e}");

    // A checkpoint whose recorded structure the source cannot take.
    let broken = dir.path("broken.safetensors");
    let ckpt = nnc_runtime::checkpoint::load(&base).unwrap();
    let meta = nnc_runtime::CheckpointMeta {
        params: ckpt.params.clone(),
        structure: vec![StructuralChange::PruneChannels {
            param: "dense_9.w".into(),
            kept: vec![0],
        }],
        ..Default::default()
    };
    nnc_runtime::checkpoint::save(&broken, &ckpt.model, &ckpt.tensors, &meta).unwrap();
    let run = RunOptions {
        weights: Some(broken),
        eval: true,
        ..Default::default()
    };
    let settings = RunSettings {
        run,
        ..Default::default()
    };
    let e = driver::run_with(&digits(), &settings, &mut |_| {}).unwrap_err();
    assert!(
        e.to_string()
            .contains("changes the structure of `DigitsMLP` in a way its source does not allow"),
        "{e}"
    );
}

/// A model trained with `prune = magnitude(...)` reads its weights
/// through masks: structured pruning and factorization say so.
#[test]
fn a_masked_model_is_refused_with_the_reason() {
    let dir = Scratch::new("masked");
    let text = std::fs::read_to_string(digits()).unwrap().replace(
        "    epochs    = 20\n",
        "    epochs    = 1\n    prune     = magnitude(sparsity: 0.5)\n",
    );
    assert!(
        text.contains("magnitude"),
        "the recipe gained a prune setting"
    );
    let source = dir.write("masked.nn", &text);
    let base = dir.path("masked.safetensors");
    let run = RunOptions {
        save: Some(base.clone()),
        ..Default::default()
    };
    let settings = RunSettings {
        run,
        data_dir: Some(Path::new(env!("CARGO_MANIFEST_DIR")).join("examples")),
        ..Default::default()
    };
    driver::run_with(&source, &settings, &mut |_| {}).unwrap();
    let out = dir.path("out.safetensors");
    let e = nnc::compress::prune(&source, &base, &out, &half(), None, &mut |_| {}).unwrap_err();
    assert!(e.to_string().contains("read through the mask"), "{e}");
    let options = FactorizeOptions {
        rank: RankChoice::Fixed(4),
        layers: Vec::new(),
    };
    let e =
        nnc::compress::factorize(&source, &base, &out, &options, None, &mut |_| {}).unwrap_err();
    assert!(e.to_string().contains("read through the mask"), "{e}");
}
