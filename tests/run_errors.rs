//! `nnc run` on bad setups: each must stop with a clear message, not a panic
//! and not a silently meaningless run.

use nnc::driver::{self, RunSettings};
use std::path::{Path, PathBuf};

fn examples_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("examples")
}

/// Writes `text` to a fresh temp file and runs it with data from `examples/`.
fn run(name: &str, text: &str) -> Result<nnc_runtime::TrainReport, String> {
    let dir = std::env::temp_dir().join(format!("nnc-run-errors-{}-{name}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join(format!("{name}.nn"));
    std::fs::write(&path, text).unwrap();
    let settings = RunSettings {
        data_dir: Some(examples_dir()),
        ..Default::default()
    };
    let result = driver::run(&path, &settings, &mut |_| {}).map_err(|f| f.0);
    std::fs::remove_dir_all(&dir).ok();
    result
}

const DIGITS_DATA: &str = r#"
data Digits {
    image = csv("data/digits.csv.gz", columns: [0, 64]) -> scale(1 / 16)
    label: i32 = csv("data/digits.csv.gz", column: 64)
}
"#;

#[test]
fn a_diverging_loss_stops_training_naming_epoch_and_step() {
    // `label: i32[B]`: `one_hot` is a builtin, so the annotation gives the type.
    let text = format!(
        "model M {{ input image: f32[B, 64] logits = image -> dense(10) output logits }}\n{}\n\
         train M on Digits {{ loss = mse(softmax(logits), one_hot(label, 10) * 1e30) optimizer = sgd(lr: 1e30) epochs = 3 }}",
        DIGITS_DATA.replace("label: i32 =", "label: i32[B] =")
    );
    let err = run("diverge", &text).unwrap_err();
    assert!(err.contains("the loss became"), "{err}");
    assert!(err.contains("at epoch 1, step"), "{err}");
}

#[test]
fn a_field_that_does_not_fit_the_input_is_reported_before_training() {
    let text = format!(
        "model M {{ input image: f32[B, 60] logits = image -> dense(10) output logits }}\n{DIGITS_DATA}\n\
         train M on Digits {{ loss = cross_entropy(logits, label) optimizer = adam }}"
    );
    let err = run("misfit", &text).unwrap_err();
    assert!(
        err.contains("data field `image` gives f32 samples of shape [64], but the graph input `image` is f32[B,60]"),
        "{err}"
    );
}

#[test]
fn a_missing_data_file_names_the_path() {
    let text = "model M { input image: f32[B, 64] logits = image -> dense(10) output logits }\n\
         data D { image = csv(\"data/nope.csv\", columns: [0, 64]) label: i32 = csv(\"data/nope.csv\", column: 64) }\n\
         train M on D { loss = cross_entropy(logits, label) optimizer = adam }";
    let err = run("missing", text).unwrap_err();
    assert!(err.contains("data/nope.csv: cannot read file"), "{err}");
}

#[test]
fn labels_out_of_range_for_one_hot_are_reported() {
    let text = "model M { input image: f32[B, 64] logits = image -> dense(5) output logits }\n\
         data Digits { image = csv(\"data/digits.csv.gz\", columns: [0, 64]) onehot: f32[B, 1, 5] = csv(\"data/digits.csv.gz\", columns: [64, 65]) -> one_hot(5) }\n\
         train M on Digits { loss = mse(softmax(logits), reshape(onehot, [B, 5])) optimizer = adam }";
    // Labels 5..9 do not fit 5 classes: found when the first batch is built.
    let err = run("onehot", text).unwrap_err();
    assert!(
        err.contains("is out of range for one_hot with 5 classes"),
        "{err}"
    );
}

#[test]
fn running_a_file_without_a_train_block_says_so() {
    let err = run(
        "no_train",
        "model M { input x: f32[B, 3] y = x -> dense(2) output y }",
    )
    .unwrap_err();
    assert!(err.contains("`nnc run` needs a `train` block"), "{err}");
}
