//! Ahead-of-time objects end to end: `nnc compile --weights W -o model.o`,
//! the C example (`examples/c/predict.c`) built with the system `cc`
//! against the object and `libnnc_kernels.a`, and its predictions equal to
//! `nnc run --predict`'s bit for bit, for mnist_mlp and lenet, at batch 1
//! and at a batch the samples do not fill.
//!
//! The models are trained for one short epoch on synthetic MNIST-shaped
//! IDX files (this needs no dataset: the point is the compiled code, not
//! the accuracy). Skips, saying why, where `cc` is absent.

mod common;

use common::Scratch;
use std::path::{Path, PathBuf};
use std::process::Command;

const NNC: &str = env!("CARGO_BIN_EXE_nnc");

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// An IDX file of `n` samples of `dims` unsigned bytes from a simple
/// generator (so images differ and their logits do).
fn idx(path: &Path, n: usize, dims: &[u32], seed: u32) {
    let mut bytes = vec![0, 0, 0x08, (dims.len() + 1) as u8];
    bytes.extend((n as u32).to_be_bytes());
    for d in dims {
        bytes.extend(d.to_be_bytes());
    }
    let per: usize = dims.iter().map(|&d| d as usize).product();
    let mut x = seed;
    for _ in 0..n * per {
        x = x.wrapping_mul(1_103_515_245).wrapping_add(12_345);
        bytes.push((x >> 16) as u8);
    }
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    std::fs::write(path, bytes).unwrap();
}

/// Labels `0..10` as an IDX file.
fn labels(path: &Path, n: usize) {
    let mut bytes = vec![0, 0, 0x08, 1];
    bytes.extend((n as u32).to_be_bytes());
    bytes.extend((0..n).map(|i| (i * 7 % 10) as u8));
    std::fs::write(path, bytes).unwrap();
}

fn run(cmd: &mut Command) -> String {
    let out = cmd.output().unwrap_or_else(|e| panic!("{cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?} failed:\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

/// The static library cargo built beside this test (the newest, should
/// several profiles have built one).
fn kernels_library() -> PathBuf {
    let deps = std::env::current_exe()
        .unwrap()
        .parent()
        .unwrap()
        .to_path_buf();
    std::fs::read_dir(&deps)
        .unwrap()
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| {
            let name = p.file_name().unwrap().to_string_lossy();
            name.starts_with("libnnc_kernels-") && name.ends_with(".a")
        })
        .max_by_key(|p| p.metadata().and_then(|m| m.modified()).ok())
        .unwrap_or_else(|| panic!("no libnnc_kernels-*.a in {}", deps.display()))
}

/// Every f32 of each row of a CSV of numbers (a header line skipped).
fn values(text: &str, header: bool) -> Vec<Vec<u32>> {
    text.lines()
        .skip(usize::from(header))
        .map(|line| {
            line.split(',')
                .map(|v| v.parse::<f32>().unwrap().to_bits())
                .collect()
        })
        .collect()
}

/// Compiles `model` with `weights` into an object (with `extra` options),
/// builds the C example against it, and checks its predictions of
/// `samples` equal `nnc run --predict`'s at the same batch, bit for bit.
fn check(
    dir: &Scratch,
    model: &str,
    weights: &Path,
    samples: &Path,
    library: &Path,
    batch: usize,
    extra: &[&str],
) {
    let source = root().join(format!("examples/{model}.nn"));
    let what = format!(
        "{model} with {} at batch {batch} {extra:?}",
        weights.display()
    );
    let object = dir.path(&format!("{model}.o"));
    let said = run(Command::new(NNC)
        .arg("compile")
        .arg(&source)
        .arg("--weights")
        .arg(weights)
        .args([
            "-o",
            object.to_str().unwrap(),
            "--batch",
            &batch.to_string(),
        ])
        .args(extra));
    assert!(said.contains(&format!("C symbols `{model}_*`")), "{said}");
    let header = std::fs::read_to_string(dir.path(&format!("{model}.h"))).unwrap();
    assert!(header.contains(&format!("#define {}_BATCH {batch}", model.to_uppercase())));
    let exe = dir.path(&format!("predict_{model}"));
    run(Command::new("cc")
        .args(["-O2", "-std=c11", "-Wall", "-Werror", "-ffp-contract=off"])
        .arg(format!("-DMODEL={model}"))
        .arg("-I")
        .arg(dir.path(""))
        .arg(root().join("examples/c/predict.c"))
        .arg(&object)
        .arg(library)
        .args(["-lpthread", "-ldl", "-lm", "-o"])
        .arg(&exe));
    // The weights path: read by an external-weights object, ignored by
    // one that embeds them.
    let c = run(Command::new(&exe).arg(samples).arg(weights));
    let out = dir.path("predictions.csv");
    run(Command::new(NNC)
        .arg("run")
        .arg(&source)
        .arg("--weights")
        .arg(weights)
        .arg("--predict")
        .arg(samples)
        .arg("--predict-out")
        .arg(&out)
        .args(["--batch", &batch.to_string()]));
    let nnc = std::fs::read_to_string(&out).unwrap();
    let (c, nnc) = (values(&c, false), values(&nnc, true));
    assert_eq!(c.len(), 11, "{what}: one row per sample");
    assert_eq!(
        c, nnc,
        "{what}: the object's outputs and classes differ from `nnc run --predict`"
    );
}

#[test]
fn the_c_example_predicts_as_nnc_run_does_bit_for_bit() {
    if Command::new("cc").arg("--version").output().is_err() {
        eprintln!("skipping: no `cc` on this machine to build the C example with");
        return;
    }
    let dir = Scratch::new("aot");
    let data = dir.path("data");
    let mnist = data.join("mnist");
    idx(&mnist.join("train-images-idx3-ubyte.gz"), 96, &[28, 28], 1);
    labels(&mnist.join("train-labels-idx1-ubyte.gz"), 96);
    idx(&mnist.join("t10k-images-idx3-ubyte.gz"), 32, &[28, 28], 2);
    labels(&mnist.join("t10k-labels-idx1-ubyte.gz"), 32);
    let samples = dir.path("samples.idx");
    idx(&samples, 11, &[28, 28], 3);
    let library = kernels_library();

    for model in ["mnist_mlp", "lenet"] {
        let source = root().join(format!("examples/{model}.nn"));
        let weights = dir.path(&format!("{model}.safetensors"));
        run(Command::new(NNC).arg("run").arg(&source).args([
            "--data-dir",
            data.to_str().unwrap(),
            "--epochs",
            "1",
            "--batch",
            "32",
            "--save",
            weights.to_str().unwrap(),
        ]));
        // Batch 1, and a batch of 4 that the last of 11 samples do not fill.
        for batch in [1, 4] {
            check(&dir, model, &weights, &samples, &library, batch, &[]);
        }
        // Weights read at start from the checkpoint instead of embedded.
        check(
            &dir,
            model,
            &weights,
            &samples,
            &library,
            1,
            &["--weights-external"],
        );
    }
    // The last object reads its weights at start: another model's
    // checkpoint is refused there, naming the tensor it lacks.
    let out = Command::new(dir.path("predict_lenet"))
        .arg(&samples)
        .arg(dir.path("mnist_mlp.safetensors"))
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("is not in the file"), "{err}");
    // A quantized checkpoint compiles its int8 products, with the same
    // results as `--predict`'s; its scales are code, so it cannot be
    // read at start.
    let quantized = dir.path("lenet_q.safetensors");
    run(Command::new(NNC)
        .arg("quantize")
        .arg(root().join("examples/lenet.nn"))
        .args([
            "--data-dir",
            data.to_str().unwrap(),
            "--calibration-batches",
            "2",
        ])
        .arg("--weights")
        .arg(dir.path("lenet.safetensors"))
        .arg("-o")
        .arg(&quantized));
    check(&dir, "lenet", &quantized, &samples, &library, 1, &[]);
    let out = Command::new(NNC)
        .arg("compile")
        .arg(root().join("examples/lenet.nn"))
        .arg("--weights")
        .arg(&quantized)
        .args([
            "-o",
            dir.path("q.o").to_str().unwrap(),
            "--weights-external",
        ])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("quantized"), "{err}");
    // Another model's checkpoint is refused, naming a tensor that differs.
    let out = Command::new(NNC)
        .arg("compile")
        .arg(root().join("examples/lenet.nn"))
        .arg("--weights")
        .arg(dir.path("mnist_mlp.safetensors"))
        .args(["-o", dir.path("other.o").to_str().unwrap()])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("mnist_mlp") && err.contains('`'), "{err}");
    assert!(!dir.path("other.o").exists());
}

#[test]
fn compile_o_refuses_what_it_cannot_build_with_a_message() {
    let dir = Scratch::new("aot-errors");
    let source = root().join("examples/lenet.nn");
    // No weights: clap says it needs them.
    let out = Command::new(NNC)
        .arg("compile")
        .arg(&source)
        .args(["-o", dir.path("lenet.o").to_str().unwrap()])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("--weights"));
    // A name that cannot start C symbols.
    let weights = dir.write("w.safetensors", "not a checkpoint");
    let out = Command::new(NNC)
        .arg("compile")
        .arg(&source)
        .args(["--weights", weights.to_str().unwrap()])
        .args(["-o", dir.path("1model.o").to_str().unwrap()])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("must start with a letter"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // A corrupt checkpoint: the loader's located error, and nothing written.
    let out = Command::new(NNC)
        .arg("compile")
        .arg(&source)
        .args(["--weights", weights.to_str().unwrap()])
        .args(["-o", dir.path("lenet.o").to_str().unwrap()])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("w.safetensors"), "{err}");
    assert!(!dir.path("lenet.o").exists() && !dir.path("lenet.h").exists());
    // A batch of 0.
    let out = Command::new(NNC)
        .arg("compile")
        .arg(&source)
        .args(["--weights", weights.to_str().unwrap()])
        .args(["-o", dir.path("lenet.o").to_str().unwrap(), "--batch", "0"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("batch size must be at least 1"), "{err}");
}
