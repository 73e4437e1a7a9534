//! Adam against PyTorch's `torch.optim.Adam` (single-tensor path) from
//! known weights and gradients, on the interpreter and the JIT, with the
//! training step unoptimized (`-O0`) and optimized (`-O2`).
//!
//! The model is `loss = sum(c * w)` over one sample, so the gradient of `w`
//! is exactly the input `c`, chosen per step. Two references:
//! - PyTorch's formula in `f64` (what "Adam" means, up to rounding): every
//!   backend agrees with it to the rounding of `f32`;
//! - the same formula as PyTorch evaluates it on `f32` tensors (Python
//!   floats rounded to `f32` where they meet a tensor, one rounding per
//!   tensor op): the interpreter on the unoptimized step agrees bit for bit.

// The references index params, moments and gradients side by side, as
// PyTorch's formula reads.
#![allow(clippy::needless_range_loop)]

use nnc::driver::{self, OptLevel};
use nnc_ir::{shape_of, DType, Dim, Graph, Init, Optimizer, ReduceOp, Tensor, TensorType};
use nnc_runtime::train::{feed_hyper, steps_taken};
use nnc_runtime::{Batch, BatchData, BatchField, Executor, Interpreter, Jit, Programs};

const N: usize = 8;

/// `loss = sum(c * w)`, `c: f32[B, N]`, `w: f32[N]`.
fn objective() -> Graph {
    let mut g = Graph::new("objective");
    let c = g.input(
        "c",
        TensorType::new(DType::F32, [Dim::sym("B"), Dim::Const(N)]),
    );
    let w = g.param(
        "w",
        TensorType::new(DType::F32, shape_of(&[N])),
        Init::Zeros,
    );
    let cw = g.mul(c, w).unwrap();
    let loss = g.reduce(ReduceOp::Sum, cw, vec![0, 1], false).unwrap();
    g.set_output(nnc_ir::LOSS, loss);
    g
}

#[derive(Debug, Clone, Copy, PartialEq)]
enum Backend {
    Interpreter,
    Jit,
}

/// The executors compared: each backend on the step at `-O0` and `-O2`.
const CASES: [(Backend, OptLevel); 4] = [
    (Backend::Interpreter, OptLevel::O0),
    (Backend::Interpreter, OptLevel::O2),
    (Backend::Jit, OptLevel::O0),
    (Backend::Jit, OptLevel::O2),
];

fn executor(optimizer: &Optimizer, backend: Backend, level: OptLevel) -> Box<dyn Executor> {
    let objective = objective();
    let step = nnc_passes::build_train_step(&objective, optimizer).unwrap();
    let (step, _) = driver::optimize(&step, level).unwrap();
    let programs = Programs {
        forward: objective.clone(),
        evaluation: objective,
        step,
        gradients: None,
        grouping: driver::grouping(level),
    };
    match backend {
        Backend::Interpreter => Box::new(Interpreter::new(programs, 0).unwrap()),
        Backend::Jit => Box::new(Jit::new(programs, 0).unwrap()),
    }
}

/// One training step with gradient `grad` at learning rate `lr`, fed as the
/// training loop feeds it.
fn train_step(exec: &mut dyn Executor, optimizer: &Optimizer, lr: f64, grad: &[f64]) {
    let mut batch = Batch {
        size: 1,
        fields: vec![BatchField {
            name: "c".into(),
            shape: vec![1, N],
            data: BatchData::F32(grad.iter().map(|&g| g as f32).collect()),
        }],
    };
    feed_hyper(&mut batch, optimizer, lr, steps_taken(exec));
    exec.train_step(&batch).unwrap();
}

fn state(exec: &dyn Executor, name: &str) -> Tensor {
    exec.state()
        .into_iter()
        .find(|(n, _)| n == name)
        .unwrap_or_else(|| panic!("no state `{name}`"))
        .1
}

fn set_weights(exec: &mut dyn Executor, w: &[f64]) {
    let t = Tensor::from_vec(DType::F32, &[N], w.to_vec()).unwrap();
    exec.set_state("w", t).unwrap();
}

fn adam(lr: f64, eps: f64, weight_decay: f64) -> Optimizer {
    Optimizer::Adam {
        lr,
        beta1: 0.9,
        beta2: 0.999,
        eps,
        weight_decay,
    }
}

/// PyTorch's Adam state for one tensor.
#[derive(Debug, Clone)]
struct Reference<T> {
    param: Vec<T>,
    exp_avg: Vec<T>,
    exp_avg_sq: Vec<T>,
    step: u64,
}

impl<T: Copy + From<f32>> Reference<T> {
    fn new(param: &[f64]) -> Reference<T> {
        Reference {
            param: param.iter().map(|&p| T::from(p as f32)).collect(),
            exp_avg: vec![T::from(0.0); param.len()],
            exp_avg_sq: vec![T::from(0.0); param.len()],
            step: 0,
        }
    }
}

/// The host half of PyTorch's step, on Python floats: `step_size` and
/// `bias_correction2_sqrt` after `step += 1`.
fn host_scalars(beta1: f64, beta2: f64, lr: f64, step: u64) -> (f64, f64) {
    let bias_correction1 = 1.0 - beta1.powf(step as f64);
    let bias_correction2 = 1.0 - beta2.powf(step as f64);
    (lr / bias_correction1, bias_correction2.sqrt())
}

/// `torch.optim.Adam`'s single-tensor step in `f64` throughout.
fn step_f64(r: &mut Reference<f64>, optimizer: &Optimizer, lr: f64, grad: &[f64]) {
    let Optimizer::Adam {
        beta1,
        beta2,
        eps,
        weight_decay,
        ..
    } = *optimizer
    else {
        unreachable!()
    };
    r.step += 1;
    let (step_size, bias_correction2_sqrt) = host_scalars(beta1, beta2, lr, r.step);
    for i in 0..r.param.len() {
        let g = f64::from(grad[i] as f32) + weight_decay * r.param[i];
        r.exp_avg[i] += (1.0 - beta1) * (g - r.exp_avg[i]);
        r.exp_avg_sq[i] = r.exp_avg_sq[i] * beta2 + (1.0 - beta2) * g * g;
        let denom = r.exp_avg_sq[i].sqrt() / bias_correction2_sqrt + eps;
        r.param[i] += -step_size * r.exp_avg[i] / denom;
    }
}

/// The same step as PyTorch computes it on `f32` tensors: each scalar
/// rounded to `f32` where it meets a tensor, each tensor op rounded once
/// (`grad.add(param, alpha=wd)`, `lerp_` with a weight below 0.5,
/// `mul_`, `addcmul_`, `sqrt`, `div`, `add_`, `addcdiv_`).
fn step_f32(r: &mut Reference<f32>, optimizer: &Optimizer, lr: f64, grad: &[f64]) {
    let Optimizer::Adam {
        beta1,
        beta2,
        eps,
        weight_decay,
        ..
    } = *optimizer
    else {
        unreachable!()
    };
    r.step += 1;
    let (step_size, bias_correction2_sqrt) = host_scalars(beta1, beta2, lr, r.step);
    let (weight, beta2_f, one_minus_beta2) =
        ((1.0 - beta1) as f32, beta2 as f32, (1.0 - beta2) as f32);
    for i in 0..r.param.len() {
        let mut g = grad[i] as f32;
        if weight_decay != 0.0 {
            g += weight_decay as f32 * r.param[i];
        }
        r.exp_avg[i] += weight * (g - r.exp_avg[i]);
        r.exp_avg_sq[i] = r.exp_avg_sq[i] * beta2_f + one_minus_beta2 * g * g;
        let denom = r.exp_avg_sq[i].sqrt() / bias_correction2_sqrt as f32 + eps as f32;
        r.param[i] += -(step_size as f32) * r.exp_avg[i] / denom;
    }
}

const WEIGHTS: [f64; N] = [0.5, -1.25, 3.0, 0.125, -7.5, 100.0, 0.75, -0.375];
/// Gradients over eight orders of magnitude, both signs.
const GRADS: [f64; N] = [2.0, -0.003, 1e-3, -50.0, 1e-6, 0.7, -1.0, 123.0];

/// The check: at `lr: 1, eps: 1e-20` Adam's first step moves every
/// param by 1 (`m̂ = g`, `v̂ = g²`); computing `1 - β₂^t` from an `f32` β₂
/// made it 0.9999934. The update equals the f64 formula's to 2e-7
/// relative, before the rounding of the new param to `f32` (half an ulp of
/// it); the interpreter's unoptimized step is PyTorch's `f32` result.
#[test]
fn one_adam_step_is_the_f64_formula_rounded_once() {
    let optimizer = adam(1.0, 1e-20, 0.0);
    let mut exact = Reference::<f64>::new(&WEIGHTS);
    step_f64(&mut exact, &optimizer, 1.0, &GRADS);
    let mut torch = Reference::<f32>::new(&WEIGHTS);
    step_f32(&mut torch, &optimizer, 1.0, &GRADS);
    for (i, (&w, &p)) in WEIGHTS.iter().zip(&exact.param).enumerate() {
        assert!(
            ((w - p).abs() - 1.0).abs() < 1e-12,
            "reference [{i}]: {w} -> {p}"
        );
    }
    for (backend, level) in CASES {
        let mut exec = executor(&optimizer, backend, level);
        set_weights(exec.as_mut(), &WEIGHTS);
        train_step(exec.as_mut(), &optimizer, 1.0, &GRADS);
        let got = state(exec.as_ref(), "w");
        for i in 0..N {
            let (got, want) = (got.data[i], exact.param[i]);
            let half_ulp = f64::from(f32::EPSILON) / 2.0 * want.abs();
            let update = (WEIGHTS[i] - want).abs();
            let err = (got - want).abs();
            assert!(
                err <= 2e-7 * update + half_ulp,
                "{backend:?} {level:?}: w[{i}] = {got:e}, PyTorch {want:e}: the update is off by {:.2e} relative",
                (err - half_ulp).max(0.0) / update
            );
            if (backend, level) == (Backend::Interpreter, OptLevel::O0) {
                assert_eq!(
                    got,
                    f64::from(torch.param[i]),
                    "w[{i}]: PyTorch's f32 result"
                );
            }
        }
        let count = state(exec.as_ref(), nnc_ir::ADAM_STEP);
        assert_eq!((count.dtype, count.data), (DType::I32, vec![1.0]));
    }
}

/// Gradients for step `k`: `GRADS` scaled and with signs varying by step.
fn grads_at(k: usize) -> Vec<f64> {
    GRADS
        .iter()
        .enumerate()
        .map(|(i, &g)| {
            let sign = if (i + k).is_multiple_of(3) { -1.0 } else { 1.0 };
            sign * g * (1.0 + 0.37 * k as f64)
        })
        .collect()
}

/// Ten steps at a changing learning rate (a schedule's), with weight
/// decay: params and moments follow the f64 formula to the rounding of
/// `f32` on every backend, and the interpreter on the unoptimized step is
/// PyTorch's `f32` arithmetic bit for bit.
#[test]
fn several_adam_steps_follow_pytorch() {
    const STEPS: usize = 10;
    let optimizer = adam(1e-2, 1e-8, 1e-2);
    let eps32 = f64::from(f32::EPSILON);
    for (backend, level) in CASES {
        let mut exec = executor(&optimizer, backend, level);
        set_weights(exec.as_mut(), &WEIGHTS);
        let mut exact = Reference::<f64>::new(&WEIGHTS);
        let mut torch = Reference::<f32>::new(&WEIGHTS);
        for k in 1..=STEPS {
            let lr = 1e-2 * 0.9f64.powi(k as i32);
            let grad = grads_at(k);
            train_step(exec.as_mut(), &optimizer, lr, &grad);
            step_f64(&mut exact, &optimizer, lr, &grad);
            step_f32(&mut torch, &optimizer, lr, &grad);
            let at = format!("{backend:?} {level:?} step {k}");
            let scale: f64 = grad.iter().fold(0.0, |a, g| a.max(g.abs()));
            for (name, want, want32, tol) in [
                ("w", &exact.param, &torch.param, None),
                ("w.adam_m", &exact.exp_avg, &torch.exp_avg, Some(scale)),
                (
                    "w.adam_v",
                    &exact.exp_avg_sq,
                    &torch.exp_avg_sq,
                    Some(scale * scale),
                ),
            ] {
                let got = state(exec.as_ref(), name).data;
                for i in 0..N {
                    // A few roundings per step, carried from step to step.
                    let allowed = match tol {
                        None => k as f64 * eps32 * (want[i].abs() + 4.0 * lr),
                        Some(s) => k as f64 * 4.0 * eps32 * s,
                    };
                    let err = (got[i] - want[i]).abs();
                    assert!(
                        err <= allowed,
                        "{at}: {name}[{i}] = {:e}, f64 formula {:e} (error {err:.2e} > {allowed:.2e})",
                        got[i],
                        want[i]
                    );
                    if (backend, level) == (Backend::Interpreter, OptLevel::O0) {
                        assert_eq!(
                            got[i],
                            f64::from(want32[i]),
                            "{at}: {name}[{i}] differs from PyTorch's f32 arithmetic"
                        );
                    }
                }
            }
            let count = state(exec.as_ref(), nnc_ir::ADAM_STEP);
            assert_eq!(count.data, vec![k as f64], "{at}: adam.step");
        }
    }
}

/// `eps: 0` (which PyTorch accepts): the step is `step_size · m / (sqrt(v)
/// / bc2)`, finite wherever the gradient has been nonzero.
#[test]
fn adam_with_eps_zero_takes_finite_steps() {
    let optimizer = adam(1e-2, 0.0, 0.0);
    for (backend, level) in CASES {
        let mut exec = executor(&optimizer, backend, level);
        set_weights(exec.as_mut(), &WEIGHTS);
        let mut exact = Reference::<f64>::new(&WEIGHTS);
        for k in 1..=3 {
            train_step(exec.as_mut(), &optimizer, 1e-2, &grads_at(k));
            step_f64(&mut exact, &optimizer, 1e-2, &grads_at(k));
        }
        let got = state(exec.as_ref(), "w").data;
        for i in 0..N {
            assert!(
                got[i].is_finite(),
                "{backend:?} {level:?}: w[{i}] = {}",
                got[i]
            );
            let err = (got[i] - exact.param[i]).abs();
            assert!(
                err <= 3e-7 * (exact.param[i].abs() + 0.04),
                "{backend:?} {level:?}: w[{i}] = {}, f64 formula {}",
                got[i],
                exact.param[i]
            );
        }
    }
}
