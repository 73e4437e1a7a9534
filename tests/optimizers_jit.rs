//! AdamW, RMSprop, Adagrad, `no_decay` and gradient clipping through the
//! JIT: 20 steps of the optimized (`-O2`) step on the JIT agree with the
//! unoptimized step in the interpreter (whose formulas
//! `passes/tests/optimizers.rs` checks against PyTorch's) to `f32`
//! rounding, with the `hyper.*` inputs fed as the training loop feeds them.

use nnc::driver::{self, OptLevel};
use nnc_ir::{shape_of, DType, Dim, GradClip, Graph, Init, Optimizer, ReduceOp, TensorType};
use nnc_runtime::train::{feed_hyper, steps_taken};
use nnc_runtime::{Batch, BatchData, BatchField, Executor, Interpreter, Jit, Programs};

const STEPS: usize = 20;

/// `loss = mean((x @ w + b - y)^2)`, `w: f32[3,2]`, `b: f32[2]`.
fn objective() -> Graph {
    let mut g = Graph::new("objective");
    let x = g.input(
        "x",
        TensorType::new(DType::F32, [Dim::sym("B"), Dim::Const(3)]),
    );
    let y = g.input(
        "y",
        TensorType::new(DType::F32, [Dim::sym("B"), Dim::Const(2)]),
    );
    let w = g.param(
        "w",
        TensorType::new(DType::F32, shape_of(&[3, 2])),
        Init::XavierUniform,
    );
    let b = g.param(
        "b",
        TensorType::new(DType::F32, shape_of(&[2])),
        Init::Const(0.5),
    );
    let xw = g.matmul(x, w).unwrap();
    let pred = g.add_(xw, b).unwrap();
    let err = g.sub(pred, y).unwrap();
    let sq = g.mul(err, err).unwrap();
    let loss = g.reduce(ReduceOp::Mean, sq, vec![0, 1], false).unwrap();
    g.set_output(nnc_ir::LOSS, loss);
    g
}

fn executor(
    optimizer: &Optimizer,
    clip: GradClip,
    no_decay: &[String],
    jit: bool,
) -> Box<dyn Executor> {
    let objective = objective();
    let step = nnc_passes::build_train_step_with(&objective, optimizer, clip, no_decay).unwrap();
    let level = if jit { OptLevel::O2 } else { OptLevel::O0 };
    let (step, _) = driver::optimize(&step, level).unwrap();
    let programs = Programs {
        forward: objective.clone(),
        evaluation: objective,
        step,
        gradients: None,
        grouping: driver::grouping(level),
    };
    if jit {
        Box::new(Jit::new(programs, 3).unwrap())
    } else {
        Box::new(Interpreter::new(programs, 3).unwrap())
    }
}

fn batch(k: usize) -> Batch {
    let x: Vec<f32> = (0..12)
        .map(|i| (((i * 5 + k * 3) % 7) as f32 - 3.0) * 0.5)
        .collect();
    let y: Vec<f32> = (0..8).map(|i| ((i * 3 + k) % 5) as f32 - 2.0).collect();
    Batch {
        size: 4,
        fields: vec![
            BatchField {
                name: "x".into(),
                shape: vec![4, 3],
                data: BatchData::F32(x),
            },
            BatchField {
                name: "y".into(),
                shape: vec![4, 2],
                data: BatchData::F32(y),
            },
        ],
    }
}

fn param(exec: &dyn Executor, name: &str) -> Vec<f64> {
    exec.state()
        .into_iter()
        .find(|(n, _)| n == name)
        .unwrap_or_else(|| panic!("no `{name}`"))
        .1
        .data
}

fn agree(label: &str, optimizer: Optimizer, clip: GradClip, no_decay: &[&str]) {
    let no_decay: Vec<String> = no_decay.iter().map(|s| s.to_string()).collect();
    let mut interp = executor(&optimizer, clip, &no_decay, false);
    let mut jit = executor(&optimizer, clip, &no_decay, true);
    let start = param(interp.as_ref(), "w");
    for k in 0..STEPS {
        for exec in [interp.as_mut(), jit.as_mut()] {
            let mut b = batch(k);
            let taken = steps_taken(exec);
            feed_hyper(&mut b, &optimizer, optimizer.lr(), taken);
            exec.train_step(&b).unwrap();
        }
    }
    for name in ["w", "b"] {
        let (a, j) = (param(interp.as_ref(), name), param(jit.as_ref(), name));
        for (i, (a, j)) in a.iter().zip(&j).enumerate() {
            assert!(
                (a - j).abs() <= 2e-5 * (1.0 + a.abs()),
                "{label}: {name}[{i}]: interpreter {a}, JIT {j}"
            );
        }
    }
    assert_ne!(param(interp.as_ref(), "w"), start, "{label}: trained");
}

#[test]
fn new_optimizers_on_the_jit_match_the_interpreter() {
    let none = GradClip::default();
    agree(
        "adamw",
        Optimizer::AdamW {
            lr: 0.01,
            beta1: 0.9,
            beta2: 0.999,
            eps: 1e-8,
            weight_decay: 0.1,
        },
        none,
        &["b"],
    );
    agree(
        "rmsprop centered momentum",
        Optimizer::RmsProp {
            lr: 0.01,
            alpha: 0.9,
            eps: 1e-8,
            weight_decay: 0.01,
            momentum: 0.5,
            centered: true,
        },
        none,
        &[],
    );
    agree(
        "adagrad",
        Optimizer::Adagrad {
            lr: 0.1,
            lr_decay: 0.1,
            weight_decay: 0.01,
            initial_accumulator_value: 0.1,
            eps: 1e-10,
        },
        none,
        &["w"],
    );
    agree(
        "sgd clipped",
        Optimizer::Sgd {
            lr: 0.1,
            momentum: 0.9,
            nesterov: false,
            weight_decay: 0.0,
        },
        GradClip {
            value: Some(0.5),
            norm: Some(0.3),
        },
        &[],
    );
}

/// Adagrad's step count is state the runtime reads back, so a resumed run
/// continues its `lr_decay`.
#[test]
fn adagrad_counts_its_steps_for_the_runtime() {
    let adagrad = Optimizer::Adagrad {
        lr: 0.1,
        lr_decay: 0.1,
        weight_decay: 0.0,
        initial_accumulator_value: 0.0,
        eps: 1e-10,
    };
    let mut jit = executor(&adagrad, GradClip::default(), &[], true);
    for k in 0..5 {
        let mut b = batch(k);
        feed_hyper(&mut b, &adagrad, adagrad.lr(), steps_taken(jit.as_ref()));
        jit.train_step(&b).unwrap();
    }
    assert_eq!(steps_taken(jit.as_ref()), 5);
}
