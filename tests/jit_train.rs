//! End to end with the JIT: the digits MLP and a small CNN with batch norm
//! and dropout train to the accuracy the README promises.

use nnc_runtime::{Jit, Programs};
use std::path::Path;

fn train(name: &str, data_dir: Option<&Path>) -> nnc_runtime::TrainReport {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let path = root.join(format!("examples/{name}.nn"));
    let text = std::fs::read_to_string(&path).unwrap();
    train_source(name, &path, &text, data_dir)
}

fn train_source(
    name: &str,
    path: &Path,
    text: &str,
    data_dir: Option<&Path>,
) -> nnc_runtime::TrainReport {
    let src = nnc_dsl::SourceFile::new(name, text.to_string());
    let module = nnc::driver::compile_source(&src, None).unwrap();
    let step = nnc::driver::train_step(&module).unwrap();
    let spec = module.train.clone().unwrap();
    let base = nnc::driver::data_base(path, data_dir);
    let data = nnc_runtime::loader::load(module.data.as_ref().unwrap(), &base).unwrap();
    let programs = Programs::new(
        module.forward.clone(),
        spec.evaluation.clone(),
        step.clone(),
    );
    let options = nnc_runtime::TrainOptions::default();
    let mut jit = Jit::new(programs, options.seed(&spec)).unwrap();
    nnc_runtime::train(
        &spec,
        &step,
        &data,
        &mut jit,
        &options,
        &mut |_, _| {},
        &mut |r, _| {
            println!("{}", nnc::driver::format_epoch(r));
            Ok(())
        },
    )
    .unwrap()
}

#[test]
fn digits_mlp_reaches_96_percent_with_the_jit() {
    let report = train("digits_mlp", None);
    let test = report.test.unwrap();
    assert!(
        test.accuracy.unwrap() >= 0.96,
        "test accuracy {:?}",
        test.accuracy
    );
}

/// The digits as 1×8×8 images through conv, batch norm, max pooling and
/// dropout: every CNN piece at once, on data that ships with nnc.
#[test]
fn digits_cnn_with_batchnorm_and_dropout_reaches_95_percent() {
    let examples = Path::new(env!("CARGO_MANIFEST_DIR")).join("examples");
    let text = r#"
model DigitsCNN {
    input image: f32[B, 1, 8, 8]
    logits = image
        -> conv2d(16, kernel: 3, pad: 1, bias: false) -> batchnorm -> relu -> maxpool(2)
        -> flatten -> dropout(0.2) -> dense(10)
    output logits
}
data Digits {
    image = csv("data/digits.csv.gz", columns: [0, 64]) -> scale(1 / 16) -> reshape([1, 8, 8])
    label: i32 = csv("data/digits.csv.gz", column: 64)
    test = split(0.2)
}
train DigitsCNN on Digits {
    loss      = cross_entropy(logits, label)
    optimizer = adam(lr: 3e-3)
    batch     = 32
    epochs    = 12
    seed      = 5
    metrics   = [accuracy]
}
"#;
    let report = train_source("digits_cnn", &examples.join("digits_cnn.nn"), text, None);
    let test = report.test.unwrap();
    println!("test accuracy {:?}", test.accuracy);
    assert!(
        test.accuracy.unwrap() >= 0.95,
        "test accuracy {:?}",
        test.accuracy
    );
}

#[test]
fn mnist_mlp_reaches_97_8_percent_in_5_epochs() {
    let data = Path::new(env!("CARGO_MANIFEST_DIR")).join("../shared/data");
    if !data.join("mnist/train-images-idx3-ubyte.gz").exists() {
        println!(
            "skipping: {} not found (MNIST is not shipped with nnc)",
            data.join("mnist").display()
        );
        return;
    }
    let report = train("mnist_mlp", Some(&data));
    let test = report.test.unwrap();
    println!("MNIST test accuracy {:.2}%", test.accuracy.unwrap() * 100.0);
    assert!(
        test.accuracy.unwrap() >= 0.978,
        "MNIST test accuracy {:?}",
        test.accuracy
    );
}

/// An LSTM emitting a label at every step learns the running sum of its
/// inputs (a state is needed: one position alone gives about 25%).
#[test]
fn running_sum_lstm_labels_every_step_above_99_percent() {
    let report = train("running_sum", None);
    let acc = report.test.unwrap().accuracy.unwrap();
    assert!(acc >= 0.99, "running_sum: test accuracy {acc}");
}
