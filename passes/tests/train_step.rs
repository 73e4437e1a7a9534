//! The training-step graph against a hand-written reference of PyTorch's
//! optimizers, on linear regression (whose gradient is known in closed
//! form), plus snapshots of the generated graphs.
//!
//! The reference follows `torch.optim.SGD` and `torch.optim.Adam`
//! (single-tensor path, `dampening = 0`, no `amsgrad`/`maximize`) line by
//! line; the graph is run with `EvalOptions::EXACT`, so both sides compute
//! in `f64` and must agree to 1e-9.

use nnc_ir::init::init_leaves;
use nnc_ir::interp::{step, Env, EvalOptions};
use nnc_ir::{
    shape_of, verify, DType, Dim, Graph, Init, Op, Optimizer, ReduceOp, Tensor, TensorType,
};
use nnc_passes::train_step::ADAM_STEP;
use nnc_passes::{build_train_step, differentiate};

const TOL: f64 = 1e-9;
const STEPS: usize = 3;
const SEED: u64 = 42;

/// The samples: `x` is `[B,2]`, `y` is `[B,1]`, `B = 4`.
const X: [[f64; 2]; 4] = [[1.0, 2.0], [-0.5, 1.5], [2.0, -1.0], [0.25, 0.75]];
const Y: [f64; 4] = [1.0, 0.5, -1.5, 2.0];

/// `loss = mean((x @ w + b - y)^2)` with `x: f32[B,2]`, `w: f32[2,1]`,
/// `b: f32[1]`, `y: f32[B,1]`.
fn objective() -> Graph {
    let mut g = Graph::new("objective");
    let b_dim = Dim::sym("B");
    let x = g.input(
        "x",
        TensorType::new(DType::F32, [b_dim.clone(), Dim::Const(2)]),
    );
    let y = g.input("y", TensorType::new(DType::F32, [b_dim, Dim::Const(1)]));
    let w = g.param(
        "w",
        TensorType::new(DType::F32, shape_of(&[2, 1])),
        Init::XavierUniform,
    );
    let b = g.param(
        "b",
        TensorType::new(DType::F32, shape_of(&[1])),
        Init::Const(0.1),
    );
    let xw = g.matmul(x, w).unwrap();
    let pred = g.add_(xw, b).unwrap();
    g.node_mut(pred).name = Some("pred".into());
    let err = g.sub(pred, y).unwrap();
    g.node_mut(err).name = Some("err".into());
    let sq = g.mul(err, err).unwrap();
    let loss = g.reduce(ReduceOp::Mean, sq, vec![0, 1], false).unwrap();
    g.node_mut(loss).name = Some("loss".into());
    g.set_output("loss", loss);
    verify(&g).unwrap();
    g
}

fn data_env() -> Env {
    let x: Vec<f64> = X.iter().flatten().copied().collect();
    Env::new()
        .with("x", Tensor::from_vec(DType::F32, &[4, 2], x).unwrap())
        .with(
            "y",
            Tensor::from_vec(DType::F32, &[4, 1], Y.to_vec()).unwrap(),
        )
}

// ---------------------------------------------------------------------------
// The reference.

/// Params as named flat vectors, in the order `w`, `b`.
type Params = Vec<(&'static str, Vec<f64>)>;

/// Loss and gradient of linear regression in closed form:
/// `r_i = x_i . w + b - y_i`, `L = mean(r^2)`, `dL/dw_j = 2/B sum_i r_i x_ij`,
/// `dL/db = 2/B sum_i r_i`.
fn loss_and_grad(params: &Params) -> (f64, Params) {
    let (w, b) = (&params[0].1, &params[1].1);
    let n = X.len() as f64;
    let mut loss = 0.0;
    let mut gw = [0.0; 2];
    let mut gb = 0.0;
    for (x, y) in X.iter().zip(Y) {
        let r = x[0] * w[0] + x[1] * w[1] + b[0] - y;
        loss += r * r / n;
        gw[0] += 2.0 * r * x[0] / n;
        gw[1] += 2.0 * r * x[1] / n;
        gb += 2.0 * r / n;
    }
    (loss, vec![("w", gw.to_vec()), ("b", vec![gb])])
}

/// Optimizer state of the reference, by state name.
#[derive(Default)]
struct RefState {
    /// `momentum_buffer` per param; `None` before the first step, as in PyTorch.
    momentum: Vec<Option<Vec<f64>>>,
    exp_avg: Vec<Vec<f64>>,
    exp_avg_sq: Vec<Vec<f64>>,
    step: f64,
}

/// One step of `torch.optim.SGD` / `torch.optim.Adam`; returns the loss at
/// the params before the step.
fn reference_step(opt: &Optimizer, params: &mut Params, state: &mut RefState) -> f64 {
    let (loss, grads) = loss_and_grad(params);
    match *opt {
        Optimizer::Sgd {
            lr,
            momentum,
            nesterov,
            weight_decay,
        } => {
            state.momentum.resize(params.len(), None);
            for (k, ((_, p), (_, grad))) in params.iter_mut().zip(&grads).enumerate() {
                // d_p = grad (+ weight_decay * p)
                let mut d_p: Vec<f64> = grad.clone();
                if weight_decay != 0.0 {
                    for (d, &pv) in d_p.iter_mut().zip(p.iter()) {
                        *d += weight_decay * pv;
                    }
                }
                if momentum != 0.0 {
                    // buf = clone(d_p) on the first step, else
                    // buf = momentum * buf + (1 - dampening) * d_p
                    let buf = match state.momentum[k].take() {
                        None => d_p.clone(),
                        Some(mut buf) => {
                            for (bv, &d) in buf.iter_mut().zip(&d_p) {
                                *bv = momentum * *bv + d;
                            }
                            buf
                        }
                    };
                    if nesterov {
                        for (d, &bv) in d_p.iter_mut().zip(&buf) {
                            *d += momentum * bv;
                        }
                    } else {
                        d_p = buf.clone();
                    }
                    state.momentum[k] = Some(buf);
                }
                // p.add_(d_p, alpha=-lr)
                for (pv, d) in p.iter_mut().zip(d_p) {
                    *pv += -lr * d;
                }
            }
        }
        Optimizer::Adam {
            lr,
            beta1,
            beta2,
            eps,
            weight_decay,
        } => {
            if state.exp_avg.is_empty() {
                state.exp_avg = params.iter().map(|(_, p)| vec![0.0; p.len()]).collect();
                state.exp_avg_sq = state.exp_avg.clone();
            }
            state.step += 1.0;
            let t = state.step;
            for (k, ((_, p), (_, grad))) in params.iter_mut().zip(&grads).enumerate() {
                let mut grad = grad.clone();
                if weight_decay != 0.0 {
                    for (gv, &pv) in grad.iter_mut().zip(p.iter()) {
                        *gv += weight_decay * pv;
                    }
                }
                let m = &mut state.exp_avg[k];
                let v = &mut state.exp_avg_sq[k];
                let bias_correction1 = 1.0 - beta1.powf(t);
                let bias_correction2 = 1.0 - beta2.powf(t);
                let step_size = lr / bias_correction1;
                let bias_correction2_sqrt = bias_correction2.sqrt();
                for i in 0..p.len() {
                    // exp_avg.lerp_(grad, 1 - beta1)
                    m[i] += (1.0 - beta1) * (grad[i] - m[i]);
                    // exp_avg_sq.mul_(beta2).addcmul_(grad, grad, value=1 - beta2)
                    v[i] = v[i] * beta2 + (1.0 - beta2) * grad[i] * grad[i];
                    // denom = exp_avg_sq.sqrt() / bias_correction2_sqrt + eps
                    let denom = v[i].sqrt() / bias_correction2_sqrt + eps;
                    // param.addcdiv_(exp_avg, denom, value=-step_size)
                    p[i] += -step_size * m[i] / denom;
                }
            }
        }
        // Their references are in `optimizers.rs`.
        Optimizer::AdamW { .. } | Optimizer::RmsProp { .. } | Optimizer::Adagrad { .. } => {
            panic!("no reference here for {opt}")
        }
    }
    loss
}

// ---------------------------------------------------------------------------
// Running the graph against the reference.

/// The step's `hyper.*` inputs, as the runtime feeds them (learning rate,
/// Adam's step size and bias correction from the steps taken so far).
fn feed_hyper(env: &mut Env, opt: &Optimizer, steps_taken: usize) {
    for (name, value) in opt.hyper_inputs(opt.lr(), steps_taken as u64).iter() {
        env.insert(name, Tensor::scalar(DType::F32, value));
    }
}

fn assert_close(what: &str, got: &[f64], want: &[f64]) {
    assert_eq!(got.len(), want.len(), "{what}: length");
    for (i, (&g, &w)) in got.iter().zip(want).enumerate() {
        assert!(
            (g - w).abs() <= TOL,
            "{what}[{i}]: graph {g:.15e}, reference {w:.15e} (diff {:.3e})",
            (g - w).abs()
        );
    }
}

/// Names of the graph's `State` leaves, sorted.
fn state_names(g: &Graph) -> Vec<String> {
    let mut names: Vec<String> = g
        .topo_order()
        .into_iter()
        .filter_map(|n| match &g.node(n).op {
            Op::State { name, .. } => Some(name.clone()),
            _ => None,
        })
        .collect();
    names.sort();
    names
}

fn update_targets(g: &Graph) -> Vec<String> {
    let mut t: Vec<String> = g.updates.iter().map(|u| u.target.clone()).collect();
    t.sort();
    t
}

fn strings(v: &[&str]) -> Vec<String> {
    let mut v: Vec<String> = v.iter().map(|s| s.to_string()).collect();
    v.sort();
    v
}

/// Builds the train step for `opt`, checks its structure, runs `STEPS`
/// steps in the interpreter and compares params, optimizer state and loss
/// with the reference after every step.
fn run_against_reference(label: &str, opt: Optimizer, expected_states: &[&str]) {
    let objective = objective();
    let graph = build_train_step(&objective, &opt).unwrap();
    verify(&graph).unwrap_or_else(|e| panic!("{label}: {e}\n{graph}"));
    assert_eq!(graph.name, "train_step");
    assert!(graph.output("loss").is_some(), "{label}: loss output kept");
    assert_eq!(
        state_names(&graph),
        strings(expected_states),
        "{label}: states"
    );
    let mut targets = vec!["w", "b"];
    targets.extend_from_slice(expected_states);
    assert_eq!(
        update_targets(&graph),
        strings(&targets),
        "{label}: updates"
    );

    let mut env = data_env();
    let added = init_leaves(&graph, SEED, &mut env).unwrap();
    assert_eq!(
        added,
        2 + expected_states.len(),
        "{label}: initialized leaves"
    );
    for s in expected_states {
        assert!(
            env.get(s).unwrap().data.iter().all(|&v| v == 0.0),
            "{label}: `{s}` starts at zero"
        );
    }

    let mut params: Params = vec![
        ("w", env.get("w").unwrap().data.clone()),
        ("b", env.get("b").unwrap().data.clone()),
    ];
    assert_eq!(params[1].1, vec![0.1f32 as f64], "{label}: b's init");
    assert!(params[0].1.iter().all(|&v| v != 0.0), "{label}: w's init");
    let mut state = RefState::default();

    for k in 1..=STEPS {
        feed_hyper(&mut env, &opt, k - 1);
        let values = step(&graph, &mut env, EvalOptions::EXACT)
            .unwrap_or_else(|e| panic!("{label}: step {k}: {e}"));
        let want_loss = reference_step(&opt, &mut params, &mut state);
        let loss = values.output("loss").unwrap().item().unwrap();
        let at = |what: &str| format!("{label}: step {k}: {what}");
        assert_close(&at("loss"), &[loss], &[want_loss]);
        for (name, want) in &params {
            assert_close(&at(name), &env.get(name).unwrap().data, want);
        }
        for (i, name) in ["w", "b"].iter().enumerate() {
            if let Some(Some(buf)) = state.momentum.get(i) {
                let got = &env.get(&format!("{name}.momentum")).unwrap().data;
                assert_close(&at(&format!("{name}.momentum")), got, buf);
            }
            if let Some(m) = state.exp_avg.get(i) {
                let got = &env.get(&format!("{name}.adam_m")).unwrap().data;
                assert_close(&at(&format!("{name}.adam_m")), got, m);
                let got = &env.get(&format!("{name}.adam_v")).unwrap().data;
                assert_close(&at(&format!("{name}.adam_v")), got, &state.exp_avg_sq[i]);
            }
        }
        if matches!(opt, Optimizer::Adam { .. }) {
            let count = env.get(ADAM_STEP).unwrap();
            assert_eq!(
                count.dtype,
                DType::I32,
                "{label}: the step count is an integer"
            );
            assert_eq!(count.data, vec![k as f64]);
        }
    }
    // The run moved somewhere: the loss went down over the steps.
    let (final_loss, _) = loss_and_grad(&params);
    let (first_loss, _) = loss_and_grad(&vec![("w", init_w()), ("b", vec![0.1f32 as f64])]);
    assert!(
        final_loss < first_loss,
        "{label}: {final_loss} >= {first_loss}"
    );
}

fn init_w() -> Vec<f64> {
    let mut env = Env::new();
    init_leaves(&objective(), SEED, &mut env).unwrap();
    env.get("w").unwrap().data.clone()
}

fn sgd(lr: f64, momentum: f64, nesterov: bool, weight_decay: f64) -> Optimizer {
    Optimizer::Sgd {
        lr,
        momentum,
        nesterov,
        weight_decay,
    }
}

fn adam(lr: f64, weight_decay: f64) -> Optimizer {
    Optimizer::Adam {
        lr,
        beta1: 0.9,
        beta2: 0.999,
        eps: 1e-8,
        weight_decay,
    }
}

#[test]
fn sgd_plain() {
    run_against_reference("sgd", sgd(0.1, 0.0, false, 0.0), &[]);
}

#[test]
fn sgd_momentum() {
    run_against_reference(
        "sgd momentum",
        sgd(0.1, 0.9, false, 0.0),
        &["w.momentum", "b.momentum"],
    );
}

#[test]
fn sgd_nesterov() {
    run_against_reference(
        "sgd nesterov",
        sgd(0.05, 0.9, true, 0.0),
        &["w.momentum", "b.momentum"],
    );
}

#[test]
fn sgd_weight_decay() {
    run_against_reference("sgd weight decay", sgd(0.1, 0.0, false, 0.05), &[]);
}

#[test]
fn sgd_nesterov_weight_decay() {
    run_against_reference(
        "sgd nesterov + weight decay",
        sgd(0.05, 0.8, true, 0.05),
        &["w.momentum", "b.momentum"],
    );
}

#[test]
fn adam_plain() {
    run_against_reference(
        "adam",
        adam(0.05, 0.0),
        &[ADAM_STEP, "w.adam_m", "w.adam_v", "b.adam_m", "b.adam_v"],
    );
}

#[test]
fn adam_weight_decay() {
    run_against_reference(
        "adam weight decay",
        adam(0.05, 0.1),
        &[ADAM_STEP, "w.adam_m", "w.adam_v", "b.adam_m", "b.adam_v"],
    );
}

/// β₁ below 0.5: PyTorch's `lerp` then computes `g - (g - m)·β₁`.
#[test]
fn adam_small_beta1() {
    let opt = Optimizer::Adam {
        lr: 0.05,
        beta1: 0.3,
        beta2: 0.9,
        eps: 1e-8,
        weight_decay: 0.0,
    };
    run_against_reference(
        "adam beta1 0.3",
        opt,
        &[ADAM_STEP, "w.adam_m", "w.adam_v", "b.adam_m", "b.adam_v"],
    );
}

/// PyTorch accepts `eps=0`: the step is finite wherever `v > 0`.
#[test]
fn adam_eps_zero() {
    let opt = Optimizer::Adam {
        lr: 0.05,
        beta1: 0.9,
        beta2: 0.999,
        eps: 0.0,
        weight_decay: 0.0,
    };
    run_against_reference(
        "adam eps 0",
        opt,
        &[ADAM_STEP, "w.adam_m", "w.adam_v", "b.adam_m", "b.adam_v"],
    );
}

#[test]
fn adam_step_state_is_named_adam_step() {
    assert_eq!(ADAM_STEP, "adam.step");
}

/// `differentiate` adds `grad.<param>` outputs whose values are the
/// closed-form gradient.
#[test]
fn differentiate_matches_the_closed_form_gradient() {
    let g = differentiate(&objective(), "loss").unwrap();
    verify(&g).unwrap();
    let names: Vec<&str> = g.outputs.iter().map(|o| o.name.as_str()).collect();
    assert_eq!(names, ["loss", "grad.w", "grad.b"]);
    let mut env = data_env();
    init_leaves(&g, SEED, &mut env).unwrap();
    let params: Params = vec![
        ("w", env.get("w").unwrap().data.clone()),
        ("b", env.get("b").unwrap().data.clone()),
    ];
    let (loss, grads) = loss_and_grad(&params);
    let v = nnc_ir::eval(&g, &env, EvalOptions::EXACT).unwrap();
    assert_close("loss", &v.output("loss").unwrap().data, &[loss]);
    assert_close("grad.w", &v.output("grad.w").unwrap().data, &grads[0].1);
    assert_close("grad.b", &v.output("grad.b").unwrap().data, &grads[1].1);
    assert!(differentiate(&objective(), "nope").is_err());
}

// ---------------------------------------------------------------------------
// Snapshots of the generated graphs (reviewed by hand).

#[test]
fn snapshot_differentiate() {
    let g = differentiate(&objective(), "loss").unwrap();
    insta::assert_snapshot!("differentiate", format!("{g}"));
}

#[test]
fn snapshot_sgd_momentum() {
    let g = build_train_step(&objective(), &sgd(0.1, 0.9, false, 0.0)).unwrap();
    insta::assert_snapshot!("sgd_momentum", format!("{g}"));
}

#[test]
fn snapshot_adam() {
    let g = build_train_step(&objective(), &adam(0.001, 0.0)).unwrap();
    insta::assert_snapshot!("adam", format!("{g}"));
}

// ---------------------------------------------------------------------------
// Model state: updates already on the objective (a layer's running
// statistics) survive the training step, next to the optimizer's.

/// The regression objective plus a state `stat: [1]` (zeros) updated to
/// `0.5 * stat + 0.5 * mean(pred)`, the way batch norm tracks a running
/// mean: its value is computed from this step's forward pass.
fn objective_with_state() -> Graph {
    let mut g = objective();
    let pred = g
        .topo_order()
        .into_iter()
        .find(|&n| g.node(n).name.as_deref() == Some("pred"))
        .unwrap();
    let stat = g.state(
        "stat",
        TensorType::new(DType::F32, shape_of(&[1])),
        Init::Zeros,
    );
    let m = g.reduce(ReduceOp::Mean, pred, vec![0], false).unwrap();
    let half = g.scalar(0.5, DType::F32);
    let old = g.mul(half, stat).unwrap();
    let new = g.mul(half, m).unwrap();
    let value = g.add_(old, new).unwrap();
    g.updates.push(nnc_ir::Update {
        target: "stat".into(),
        value,
    });
    verify(&g).unwrap();
    g
}

#[test]
fn model_updates_are_kept_and_read_the_step_before() {
    for opt in [sgd(0.1, 0.9, false, 0.0), adam(0.05, 0.0)] {
        let graph = build_train_step(&objective_with_state(), &opt).unwrap();
        verify(&graph).unwrap();
        // The model's update comes first, then the optimizer's, all kept.
        assert_eq!(graph.updates[0].target, "stat");
        let plain = build_train_step(&objective(), &opt).unwrap();
        let rest: Vec<&str> = graph.updates[1..]
            .iter()
            .map(|u| u.target.as_str())
            .collect();
        let want: Vec<&str> = plain.updates.iter().map(|u| u.target.as_str()).collect();
        assert_eq!(rest, want);

        let mut env = data_env();
        init_leaves(&graph, SEED, &mut env).unwrap();
        let mut stat = 0.0;
        for k in 1..=STEPS {
            // mean(pred) at the params before this step.
            let (w, b) = (
                env.get("w").unwrap().data.clone(),
                env.get("b").unwrap().data[0],
            );
            let mean_pred: f64 =
                X.iter().map(|x| x[0] * w[0] + x[1] * w[1] + b).sum::<f64>() / X.len() as f64;
            stat = 0.5 * stat + 0.5 * mean_pred;
            feed_hyper(&mut env, &opt, k - 1);
            step(&graph, &mut env, EvalOptions::EXACT).unwrap();
            assert_close(
                &format!("stat after step {k}"),
                &env.get("stat").unwrap().data,
                &[stat],
            );
        }
        // The params trained exactly as without the state.
        let mut env2 = data_env();
        init_leaves(&plain, SEED, &mut env2).unwrap();
        for k in 0..STEPS {
            feed_hyper(&mut env2, &opt, k);
            step(&plain, &mut env2, EvalOptions::EXACT).unwrap();
        }
        for p in ["w", "b"] {
            assert_close(p, &env.get(p).unwrap().data, &env2.get(p).unwrap().data);
        }
    }
}

#[test]
fn a_model_update_of_a_param_is_rejected() {
    let mut g = objective();
    let (w, _) = g.params()[0];
    g.updates.push(nnc_ir::Update {
        target: "w".into(),
        value: w,
    });
    let err = build_train_step(&g, &sgd(0.1, 0.0, false, 0.0)).unwrap_err();
    assert!(
        err.to_string().contains("`w` is a trainable param"),
        "{err}"
    );
}

#[test]
fn optimizer_state_may_not_reuse_a_model_state_name() {
    let mut g = objective();
    let s = g.state("w.momentum", TensorType::scalar(DType::F32), Init::Zeros);
    let one = g.scalar(1.0, DType::F32);
    let v = g.add_(s, one).unwrap();
    g.updates.push(nnc_ir::Update {
        target: "w.momentum".into(),
        value: v,
    });
    let err = build_train_step(&g, &sgd(0.1, 0.9, false, 0.0)).unwrap_err();
    assert!(err.to_string().contains("`w.momentum`"), "{err}");
}

/// A user layer named `adam` with a `state step` is the model state
/// `adam.step`: Adam's own counter may not take its name, whatever its
/// dtype (the model's is an `f32` here, Adam's an `i32`).
#[test]
fn adams_step_counter_may_not_reuse_a_model_state_name() {
    let mut g = objective();
    let s = g.state(ADAM_STEP, TensorType::scalar(DType::F32), Init::Zeros);
    let one = g.scalar(1.0, DType::F32);
    let v = g.add_(s, one).unwrap();
    g.updates.push(nnc_ir::Update {
        target: ADAM_STEP.into(),
        value: v,
    });
    let err = build_train_step(&g, &adam(0.05, 0.0)).unwrap_err();
    assert!(
        err.to_string()
            .contains("the optimizer's state `adam.step` has the name of a state of the model"),
        "{err}"
    );
    // With SGD the same model trains: the name is free.
    build_train_step(&g, &sgd(0.1, 0.0, false, 0.0)).unwrap();
}
