//! The switches that parity with another framework needs, through the
//! binary on `examples/xor.nn`: file-order batches (`--no-shuffle`,
//! `shuffle = false`), `--steps`, the `--log` JSON lines, `--dump-grads`
//! against the interpreter's gradient, and full-precision predictions
//! (`--predict`, `--predict-out`).

use nnc_ir::interp::{eval, Env, EvalOptions};
use nnc_ir::{DType, Tensor};
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

mod common;
use common::Scratch;

fn examples() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("examples")
}

fn nnc(args: &[&dyn AsRef<std::ffi::OsStr>]) -> Output {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_nnc"));
    for a in args {
        cmd.arg(a);
    }
    cmd.output().unwrap()
}

#[track_caller]
fn succeeded(out: &Output) -> String {
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// A gradient file's metadata and tensors (as f32).
fn read_gradients(path: &Path) -> (HashMap<String, String>, HashMap<String, Vec<f32>>) {
    let bytes = std::fs::read(path).unwrap();
    let (_, meta) = safetensors::SafeTensors::read_metadata(&bytes).unwrap();
    let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    let tensors = st
        .tensors()
        .into_iter()
        .map(|(name, view)| {
            let values = view
                .data()
                .chunks_exact(4)
                .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
                .collect();
            (name, values)
        })
        .collect();
    (meta.metadata().clone().unwrap(), tensors)
}

/// The interpreter's gradient of every param of xor's objective at its
/// initial params (seed 1) on the samples `rows` of `xor.csv`.
fn xor_gradients(rows: &[[f64; 3]]) -> HashMap<String, Vec<f64>> {
    let path = examples().join("xor.nn");
    let src = nnc::driver::read_source(&path).unwrap();
    let module = nnc::driver::compile_source(&src, None).unwrap();
    let spec = module.train.unwrap();
    let graph = nnc_passes::gradient_graph(&spec.objective).unwrap();
    let mut env = Env::new();
    nnc_ir::init::init_leaves(&graph, spec.seed, &mut env).unwrap();
    let n = rows.len();
    let x: Vec<f64> = rows.iter().flat_map(|r| [r[0], r[1]]).collect();
    let y: Vec<f64> = rows.iter().map(|r| r[2]).collect();
    env.insert("x", Tensor::from_vec(DType::F32, &[n, 2], x).unwrap());
    env.insert("y", Tensor::from_vec(DType::F32, &[n, 1], y).unwrap());
    let values = eval(&graph, &env, EvalOptions::F32).unwrap();
    values
        .outputs()
        .filter_map(|(name, t)| {
            name.strip_prefix("grad.")
                .map(|p| (p.to_string(), t.data.clone()))
        })
        .collect()
}

const XOR: [[f64; 3]; 4] = [
    [0.0, 0.0, 0.0],
    [0.0, 1.0, 1.0],
    [1.0, 0.0, 1.0],
    [1.0, 1.0, 0.0],
];

#[test]
fn dumped_gradients_are_the_autograd_gradients_on_file_order_batches() {
    for backend in ["interp", "jit"] {
        let dir = Scratch::new(&format!("grads-{backend}"));
        let log = dir.path("run.jsonl");
        let grads = dir.path("grads");
        let out = nnc(&[
            &"run",
            &examples().join("xor.nn"),
            &"--backend",
            &backend,
            &"--no-shuffle",
            &"--batch",
            &"1",
            &"--steps",
            &"3",
            &"--log",
            &log,
            &"--dump-grads",
            &grads,
        ]);
        let stdout = succeeded(&out);
        assert!(
            stdout.contains("epoch   1/300 (stopped after 3 of 4 steps)"),
            "{stdout}"
        );
        let mut files: Vec<String> = std::fs::read_dir(&grads)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        files.sort();
        assert_eq!(
            files,
            [
                "step-000001.safetensors",
                "step-000002.safetensors",
                "step-000003.safetensors"
            ]
        );
        for (k, file) in files.iter().enumerate() {
            let (meta, _) = read_gradients(&grads.join(file));
            assert_eq!(meta["samples"], format!("[{k}]"), "file order");
            assert_eq!(meta["model"], "Xor");
        }
        // Step 1 starts from the initial params: its gradient is the
        // interpreter's on sample 0.
        let (_, got) = read_gradients(&grads.join(&files[0]));
        let want = xor_gradients(&XOR[..1]);
        assert_eq!(
            got.keys().collect::<std::collections::BTreeSet<_>>(),
            want.keys().collect(),
            "one tensor per param"
        );
        for (name, want) in &want {
            for (g, w) in got[name].iter().zip(want) {
                let err = (f64::from(*g) - w).abs();
                assert!(err <= 1e-6 + 1e-5 * w.abs(), "{backend} {name}: {g} vs {w}");
            }
        }

        let text = std::fs::read_to_string(&log).unwrap();
        let lines: Vec<serde_json::Value> = text
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        assert_eq!(lines.len(), 4, "3 steps and the cut-short epoch: {text}");
        for (k, line) in lines[..3].iter().enumerate() {
            assert_eq!(line["event"], "step");
            assert_eq!(line["epoch"], 1);
            assert_eq!(line["step"], k + 1);
            assert_eq!(line["batch"], k + 1);
            assert_eq!(line["samples"], 1);
            assert_eq!(line["lr"], 0.05);
            assert!(line["loss"].as_f64().is_some_and(f64::is_finite), "{line}");
        }
        assert_eq!(lines[3]["event"], "epoch");
        assert_eq!(lines[3]["steps"], 3);
        assert_eq!(lines[3]["train"]["samples"], 3);
    }
}

#[test]
fn shuffle_false_in_the_train_block_keeps_file_order() {
    let dir = Scratch::new("shuffle");
    let text = std::fs::read_to_string(examples().join("xor.nn")).unwrap();
    let orders = |text: &str, tag: &str| -> Vec<String> {
        let file = dir.path(&format!("{tag}.nn"));
        std::fs::write(&file, text).unwrap();
        let grads = dir.path(tag);
        succeeded(&nnc(&[
            &"run",
            &file,
            &"--data-dir",
            &examples(),
            &"--batch",
            &"1",
            &"--steps",
            &"4",
            &"--dump-grads",
            &grads,
        ]));
        (1..=4)
            .map(|k| {
                read_gradients(&grads.join(format!("step-{k:06}.safetensors"))).0["samples"].clone()
            })
            .collect()
    };
    let unshuffled = text.replace("seed      = 1", "seed      = 1\n    shuffle   = false");
    assert_ne!(unshuffled, text);
    assert_eq!(
        orders(&unshuffled, "unshuffled"),
        ["[0]", "[1]", "[2]", "[3]"]
    );
    let shuffled = orders(&text, "shuffled");
    assert_ne!(shuffled, ["[0]", "[1]", "[2]", "[3]"], "seed 1 shuffles");
    let mut sorted = shuffled.clone();
    sorted.sort();
    assert_eq!(sorted, ["[0]", "[1]", "[2]", "[3]"]);
}

#[test]
fn predictions_print_and_write_at_full_precision() {
    let dir = Scratch::new("predict");
    let ckpt = dir.path("xor.safetensors");
    let xor = examples().join("xor.nn");
    succeeded(&nnc(&[&"run", &xor, &"--epochs", &"20", &"--save", &ckpt]));
    let input = dir.path("in.csv");
    std::fs::write(&input, "0,0\n0,1\n1,0\n1,1\n").unwrap();

    // The outputs as the library computes them.
    let settings = nnc::driver::RunSettings {
        run: nnc_runtime::RunOptions {
            weights: Some(ckpt.clone()),
            predict: Some(input.clone()),
            ..Default::default()
        },
        ..Default::default()
    };
    let outcome = nnc::driver::run_with(&xor, &settings, &mut |_| {}).unwrap();
    let nnc::driver::RunOutcome::Predicted(predictions) = outcome else {
        panic!("expected predictions");
    };
    let values: Vec<u32> = predictions
        .iter()
        .map(|p| (p.outputs[0].1[0] as f32).to_bits())
        .collect();

    let stdout = succeeded(&nnc(&[
        &"run",
        &xor,
        &"--weights",
        &ckpt,
        &"--predict",
        &input,
    ]));
    let printed: Vec<u32> = stdout
        .lines()
        .enumerate()
        .map(|(i, line)| {
            let list = line
                .strip_prefix(&format!("{i}: ["))
                .and_then(|l| l.strip_suffix(']'))
                .unwrap_or_else(|| panic!("{line}"));
            list.parse::<f32>().unwrap().to_bits()
        })
        .collect();
    assert_eq!(printed, values, "printed values read back bit for bit");

    let csv = dir.path("out.csv");
    let stdout = succeeded(&nnc(&[
        &"run",
        &xor,
        &"--weights",
        &ckpt,
        &"--predict",
        &input,
        &"--predict-out",
        &csv,
    ]));
    assert_eq!(
        stdout.trim(),
        format!("wrote 4 predictions to {}", csv.display())
    );
    let text = std::fs::read_to_string(&csv).unwrap();
    let mut rows = text.lines();
    assert_eq!(rows.next(), Some("prob"));
    let read: Vec<u32> = rows.map(|r| r.parse::<f32>().unwrap().to_bits()).collect();
    assert_eq!(read, values);

    let st = dir.path("out.safetensors");
    succeeded(&nnc(&[
        &"run",
        &xor,
        &"--weights",
        &ckpt,
        &"--predict",
        &input,
        &"--predict-out",
        &st,
    ]));
    let bytes = std::fs::read(&st).unwrap();
    let tensors = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    let prob = tensors.tensor("prob").unwrap();
    assert_eq!(prob.shape(), [4, 1]);
    let stored: Vec<u32> = prob
        .data()
        .chunks_exact(4)
        .map(|c| u32::from_le_bytes([c[0], c[1], c[2], c[3]]))
        .collect();
    assert_eq!(stored, values);
}

#[test]
fn unwritable_paths_and_missing_steps_fail_clearly() {
    let dir = Scratch::new("errors");
    let xor = examples().join("xor.nn");
    let missing = dir.path("no-such-folder").join("run.jsonl");
    let out = nnc(&[&"run", &xor, &"--log", &missing]);
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains(&format!("cannot write the log `{}`", missing.display())),
        "{stderr}"
    );
    assert!(
        String::from_utf8_lossy(&out.stdout).is_empty(),
        "fails before training"
    );

    let out = nnc(&[&"run", &xor, &"--dump-grads", &dir.path("g")]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("--steps"));

    let ckpt = dir.path("xor.safetensors");
    succeeded(&nnc(&[&"run", &xor, &"--epochs", &"1", &"--save", &ckpt]));
    let input = dir.path("in.csv");
    std::fs::write(&input, "0,0\n").unwrap();
    for (out_path, message) in [
        (
            dir.path("no-such-folder").join("p.csv"),
            "cannot write the predictions",
        ),
        (
            dir.path("p.txt"),
            "expected a `.csv` or `.safetensors` file",
        ),
    ] {
        let out = nnc(&[
            &"run",
            &xor,
            &"--weights",
            &ckpt,
            &"--predict",
            &input,
            &"--predict-out",
            &out_path,
        ]);
        assert_eq!(out.status.code(), Some(1));
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(stderr.contains(message), "{stderr}");
    }
}
