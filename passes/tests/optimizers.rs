//! AdamW, RMSprop, Adagrad, `no_decay` param groups and gradient clipping
//! in the training-step graph, against references written from PyTorch's
//! documented algorithms (`torch.optim.AdamW`, `RMSprop`, `Adagrad`,
//! single-tensor path; `torch.nn.utils.clip_grad_value_`/`clip_grad_norm_`).
//!
//! The model is linear regression, whose gradient is known in closed form;
//! the graph runs in the interpreter with `EvalOptions::EXACT`, so both
//! sides compute in `f64` and must agree to 1e-9 after each of 20 steps.
//! Clipping is checked against central finite differences of the loss:
//! with SGD at `lr = 1` the step's update is exactly the clipped gradient.

use nnc_ir::init::init_leaves;
use nnc_ir::interp::{eval, step, Env, EvalOptions};
use nnc_ir::{
    shape_of, verify, DType, Dim, GradClip, Graph, Init, Op, Optimizer, ReduceOp, Tensor,
    TensorType, ADAGRAD_STEP, ADAM_STEP,
};
use nnc_passes::{build_train_step, build_train_step_with};

const TOL: f64 = 1e-9;
const STEPS: usize = 20;
const SEED: u64 = 7;

const X: [[f64; 2]; 4] = [[1.0, 2.0], [-0.5, 1.5], [2.0, -1.0], [0.25, 0.75]];
const Y: [f64; 4] = [1.0, 0.5, -1.5, 2.0];

/// `loss = mean((x @ w + b - y)^2)`, `w: f32[2,1]`, `b: f32[1]`.
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
        Init::Const(0.3),
    );
    let xw = g.matmul(x, w).unwrap();
    let pred = g.add_(xw, b).unwrap();
    let err = g.sub(pred, y).unwrap();
    let sq = g.mul(err, err).unwrap();
    let loss = g.reduce(ReduceOp::Mean, sq, vec![0, 1], false).unwrap();
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

/// `w` then `b`, flat.
type Params = Vec<Vec<f64>>;
const NAMES: [&str; 2] = ["w", "b"];

/// The closed-form gradient of the loss.
fn grad(params: &Params) -> Params {
    let (w, b) = (&params[0], &params[1]);
    let n = X.len() as f64;
    let mut gw = vec![0.0; 2];
    let mut gb = 0.0;
    for (x, y) in X.iter().zip(Y) {
        let r = x[0] * w[0] + x[1] * w[1] + b[0] - y;
        gw[0] += 2.0 * r * x[0] / n;
        gw[1] += 2.0 * r * x[1] / n;
        gb += 2.0 * r / n;
    }
    vec![gw, vec![gb]]
}

/// The reference's optimizer state, by the graph's state names.
type RefState = std::collections::BTreeMap<String, Vec<f64>>;

/// One step of PyTorch's algorithm for `opt` at step `t` (1-based), with
/// weight decay 0 for the params in `no_decay` (a second param group).
fn reference_step(
    opt: &Optimizer,
    params: &mut Params,
    state: &mut RefState,
    t: f64,
    no_decay: &[&str],
) {
    let grads = grad(params);
    for (k, (p, g)) in params.iter_mut().zip(grads).enumerate() {
        let name = NAMES[k];
        let len = p.len();
        let mut slot = |s: &str, init: f64| -> Vec<f64> {
            state
                .entry(format!("{name}.{s}"))
                .or_insert_with(|| vec![init; len])
                .clone()
        };
        let group_decay = |wd: f64| if no_decay.contains(&name) { 0.0 } else { wd };
        let mut new_state: Vec<(&str, Vec<f64>)> = Vec::new();
        match *opt {
            Optimizer::Sgd {
                lr, weight_decay, ..
            } => {
                let wd = group_decay(weight_decay);
                for i in 0..p.len() {
                    p[i] -= lr * (g[i] + wd * p[i]);
                }
            }
            Optimizer::Adam {
                lr,
                beta1,
                beta2,
                eps,
                weight_decay,
            }
            | Optimizer::AdamW {
                lr,
                beta1,
                beta2,
                eps,
                weight_decay,
            } => {
                let decoupled = matches!(opt, Optimizer::AdamW { .. });
                let wd = group_decay(weight_decay);
                let mut g = g.clone();
                if decoupled {
                    // param.mul_(1 - lr * weight_decay)
                    for pv in p.iter_mut() {
                        *pv *= 1.0 - lr * wd;
                    }
                } else {
                    for (gv, pv) in g.iter_mut().zip(p.iter()) {
                        *gv += wd * pv;
                    }
                }
                let (mut m, mut v) = (slot("adam_m", 0.0), slot("adam_v", 0.0));
                let step_size = lr / (1.0 - beta1.powf(t));
                let bc2_sqrt = (1.0 - beta2.powf(t)).sqrt();
                for i in 0..p.len() {
                    m[i] += (1.0 - beta1) * (g[i] - m[i]);
                    v[i] = v[i] * beta2 + (1.0 - beta2) * g[i] * g[i];
                    let denom = v[i].sqrt() / bc2_sqrt + eps;
                    p[i] -= step_size * m[i] / denom;
                }
                new_state.push(("adam_m", m));
                new_state.push(("adam_v", v));
            }
            Optimizer::RmsProp {
                lr,
                alpha,
                eps,
                weight_decay,
                momentum,
                centered,
            } => {
                let wd = group_decay(weight_decay);
                let mut sq = slot("rmsprop_square_avg", 0.0);
                let mut ga = slot("rmsprop_grad_avg", 0.0);
                let mut buf = slot("rmsprop_momentum", 0.0);
                for i in 0..p.len() {
                    let g = g[i] + wd * p[i];
                    sq[i] = sq[i] * alpha + (1.0 - alpha) * g * g;
                    let avg = if centered {
                        ga[i] += (1.0 - alpha) * (g - ga[i]);
                        (sq[i] - ga[i] * ga[i]).sqrt()
                    } else {
                        sq[i].sqrt()
                    } + eps;
                    if momentum > 0.0 {
                        buf[i] = buf[i] * momentum + g / avg;
                        p[i] -= lr * buf[i];
                    } else {
                        p[i] -= lr * g / avg;
                    }
                }
                new_state.push(("rmsprop_square_avg", sq));
                if centered {
                    new_state.push(("rmsprop_grad_avg", ga));
                }
                if momentum > 0.0 {
                    new_state.push(("rmsprop_momentum", buf));
                }
            }
            Optimizer::Adagrad {
                lr,
                lr_decay,
                weight_decay,
                initial_accumulator_value,
                eps,
            } => {
                let wd = group_decay(weight_decay);
                let clr = lr / (1.0 + (t - 1.0) * lr_decay);
                // torch.full_like(p, initial_accumulator_value): in the
                // param's f32.
                let mut sum = slot("adagrad_sum", initial_accumulator_value as f32 as f64);
                for i in 0..p.len() {
                    let g = g[i] + wd * p[i];
                    sum[i] += g * g;
                    p[i] -= clr * g / (sum[i].sqrt() + eps);
                }
                new_state.push(("adagrad_sum", sum));
            }
        }
        for (s, v) in new_state {
            state.insert(format!("{name}.{s}"), v);
        }
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

/// Builds the step for `opt` (with `no_decay`), checks its state names, and
/// runs `STEPS` steps against the reference, comparing params and every
/// state after each.
fn run_against_reference(label: &str, opt: Optimizer, no_decay: &[&str], states: &[&str]) {
    let objective = objective();
    let skip: Vec<String> = no_decay.iter().map(|s| s.to_string()).collect();
    let graph = build_train_step_with(&objective, &opt, GradClip::default(), &skip).unwrap();
    verify(&graph).unwrap_or_else(|e| panic!("{label}: {e}\n{graph}"));
    let mut want_states: Vec<String> = states.iter().map(|s| s.to_string()).collect();
    want_states.sort();
    assert_eq!(state_names(&graph), want_states, "{label}: states");

    let mut env = data_env();
    init_leaves(&graph, SEED, &mut env).unwrap();
    let mut params: Params = NAMES
        .iter()
        .map(|n| env.get(n).unwrap().data.clone())
        .collect();
    let mut state = RefState::new();
    for k in 1..=STEPS {
        for (name, value) in opt.hyper_inputs(opt.lr(), (k - 1) as u64).iter() {
            env.insert(name, Tensor::scalar(DType::F32, value));
        }
        step(&graph, &mut env, EvalOptions::EXACT)
            .unwrap_or_else(|e| panic!("{label}: step {k}: {e}"));
        reference_step(&opt, &mut params, &mut state, k as f64, no_decay);
        for (name, want) in NAMES.iter().zip(&params) {
            assert_close(
                &format!("{label}: step {k}: {name}"),
                &env.get(name).unwrap().data,
                want,
            );
        }
        for (name, want) in &state {
            if want_states.contains(name) {
                assert_close(
                    &format!("{label}: step {k}: {name}"),
                    &env.get(name).unwrap().data,
                    want,
                );
            }
        }
        for counter in [ADAM_STEP, ADAGRAD_STEP] {
            if want_states.iter().any(|s| s == counter) {
                let count = env.get(counter).unwrap();
                assert_eq!(count.dtype, DType::I32, "{label}: {counter}");
                assert_eq!(count.data, vec![k as f64], "{label}: {counter}");
            }
        }
    }
}

fn adamw(weight_decay: f64) -> Optimizer {
    Optimizer::AdamW {
        lr: 0.05,
        beta1: 0.8,
        beta2: 0.95,
        eps: 1e-6,
        weight_decay,
    }
}

fn rmsprop(momentum: f64, centered: bool, weight_decay: f64) -> Optimizer {
    Optimizer::RmsProp {
        lr: 0.01,
        alpha: 0.9,
        eps: 1e-6,
        weight_decay,
        momentum,
        centered,
    }
}

const ADAM_STATES: [&str; 5] = [ADAM_STEP, "w.adam_m", "w.adam_v", "b.adam_m", "b.adam_v"];

#[test]
fn adamw_matches_pytorch_over_20_steps() {
    run_against_reference("adamw", adamw(0.1), &[], &ADAM_STATES);
    // Without decay AdamW is Adam.
    run_against_reference("adamw wd 0", adamw(0.0), &[], &ADAM_STATES);
}

/// The decay reads `1 - lr * weight_decay` from its own input: the step
/// reads the plain learning rate, not Adam's step size.
#[test]
fn adamw_decays_by_the_plain_learning_rate() {
    let graph = build_train_step(&objective(), &adamw(0.1)).unwrap();
    let inputs: Vec<&str> = graph.inputs().into_iter().map(|(_, n)| n).collect();
    assert!(inputs.contains(&nnc_ir::ADAMW_DECAY), "{inputs:?}");
    let graph = build_train_step(&objective(), &adamw(0.0)).unwrap();
    let inputs: Vec<&str> = graph.inputs().into_iter().map(|(_, n)| n).collect();
    assert!(!inputs.contains(&nnc_ir::ADAMW_DECAY), "{inputs:?}");
}

#[test]
fn rmsprop_matches_pytorch_over_20_steps() {
    let sq = ["w.rmsprop_square_avg", "b.rmsprop_square_avg"];
    run_against_reference("rmsprop", rmsprop(0.0, false, 0.0), &[], &sq);
    let mut with_momentum = sq.to_vec();
    with_momentum.extend(["w.rmsprop_momentum", "b.rmsprop_momentum"]);
    run_against_reference(
        "rmsprop momentum",
        rmsprop(0.9, false, 0.0),
        &[],
        &with_momentum,
    );
    let mut centered = sq.to_vec();
    centered.extend(["w.rmsprop_grad_avg", "b.rmsprop_grad_avg"]);
    run_against_reference("rmsprop centered", rmsprop(0.0, true, 0.05), &[], &centered);
    let mut all = with_momentum.clone();
    all.extend(["w.rmsprop_grad_avg", "b.rmsprop_grad_avg"]);
    run_against_reference(
        "rmsprop centered momentum",
        rmsprop(0.5, true, 0.05),
        &[],
        &all,
    );
}

#[test]
fn adagrad_matches_pytorch_over_20_steps() {
    let states = [ADAGRAD_STEP, "w.adagrad_sum", "b.adagrad_sum"];
    let plain = Optimizer::Adagrad {
        lr: 0.1,
        lr_decay: 0.0,
        weight_decay: 0.0,
        initial_accumulator_value: 0.0,
        eps: 1e-10,
    };
    run_against_reference("adagrad", plain, &[], &states);
    let decayed = Optimizer::Adagrad {
        lr: 0.1,
        lr_decay: 0.05,
        weight_decay: 0.02,
        initial_accumulator_value: 0.1,
        eps: 1e-10,
    };
    run_against_reference("adagrad lr_decay, weight decay", decayed, &[], &states);
}

/// PyTorch's two-group setup: `b` in a group with `weight_decay=0`.
#[test]
fn no_decay_params_are_not_decayed() {
    run_against_reference("adamw no_decay", adamw(0.1), &["b"], &ADAM_STATES);
    let adam = Optimizer::Adam {
        lr: 0.05,
        beta1: 0.9,
        beta2: 0.999,
        eps: 1e-8,
        weight_decay: 0.1,
    };
    run_against_reference("adam no_decay", adam, &["b"], &ADAM_STATES);
    let sgd = Optimizer::Sgd {
        lr: 0.05,
        momentum: 0.0,
        nesterov: false,
        weight_decay: 0.3,
    };
    run_against_reference("sgd no_decay", sgd, &["w"], &[]);
    run_against_reference(
        "rmsprop no_decay",
        rmsprop(0.0, false, 0.2),
        &["b"],
        &["w.rmsprop_square_avg", "b.rmsprop_square_avg"],
    );
    let adagrad = Optimizer::Adagrad {
        lr: 0.1,
        lr_decay: 0.0,
        weight_decay: 0.2,
        initial_accumulator_value: 0.0,
        eps: 1e-10,
    };
    run_against_reference(
        "adagrad no_decay",
        adagrad,
        &["b"],
        &[ADAGRAD_STEP, "w.adagrad_sum", "b.adagrad_sum"],
    );
}

#[test]
fn no_decay_must_name_params() {
    let err = build_train_step_with(
        &objective(),
        &adamw(0.1),
        GradClip::default(),
        &["c".to_string()],
    )
    .unwrap_err();
    assert!(err.to_string().contains("`c`"), "{err}");
}

// ---------------------------------------------------------------------------
// Clipping against finite differences.

/// Central finite differences of the objective's loss at `params`, in f64.
fn numeric_gradient(params: &Params) -> Params {
    const H: f64 = 1e-6;
    let objective = objective();
    let loss_at = |params: &Params| {
        let mut env = data_env();
        for (name, p) in NAMES.iter().zip(params) {
            let shape: &[usize] = if *name == "w" { &[2, 1] } else { &[1] };
            env.insert(
                *name,
                Tensor::from_vec(DType::F32, shape, p.clone()).unwrap(),
            );
        }
        eval(&objective, &env, EvalOptions::EXACT)
            .unwrap()
            .output("loss")
            .unwrap()
            .item()
            .unwrap()
    };
    let mut out = Vec::new();
    for k in 0..params.len() {
        let mut g = Vec::new();
        for i in 0..params[k].len() {
            let mut plus = params.clone();
            plus[k][i] += H;
            let mut minus = params.clone();
            minus[k][i] -= H;
            g.push((loss_at(&plus) - loss_at(&minus)) / (2.0 * H));
        }
        out.push(g);
    }
    out
}

/// The gradient the step applies: with SGD at `lr = 1`, `p - p'`.
fn applied_gradient(clip: GradClip) -> (Params, Params) {
    let sgd = Optimizer::Sgd {
        lr: 1.0,
        momentum: 0.0,
        nesterov: false,
        weight_decay: 0.0,
    };
    let graph = build_train_step_with(&objective(), &sgd, clip, &[]).unwrap();
    verify(&graph).unwrap();
    let mut env = data_env();
    init_leaves(&graph, SEED, &mut env).unwrap();
    let before: Params = NAMES
        .iter()
        .map(|n| env.get(n).unwrap().data.clone())
        .collect();
    env.insert("hyper.lr", Tensor::scalar(DType::F32, 1.0));
    step(&graph, &mut env, EvalOptions::EXACT).unwrap();
    let applied = NAMES
        .iter()
        .zip(&before)
        .map(|(n, b)| {
            b.iter()
                .zip(&env.get(n).unwrap().data)
                .map(|(b, a)| b - a)
                .collect()
        })
        .collect();
    (before, applied)
}

fn assert_near(what: &str, got: &Params, want: &Params) {
    for (k, (g, w)) in got.iter().zip(want).enumerate() {
        for (i, (&g, &w)) in g.iter().zip(w).enumerate() {
            assert!(
                (g - w).abs() <= 1e-7 + 1e-6 * w.abs(),
                "{what}: {}[{i}]: step {g:.12e}, expected {w:.12e}",
                NAMES[k]
            );
        }
    }
}

fn global_norm(g: &Params) -> f64 {
    g.iter().flatten().map(|v| v * v).sum::<f64>().sqrt()
}

fn scaled(g: &Params, c: f64) -> Params {
    g.iter()
        .map(|v| v.iter().map(|x| x * c).collect())
        .collect()
}

fn clamped(g: &Params, v: f64) -> Params {
    g.iter()
        .map(|p| p.iter().map(|x| x.clamp(-v, v)).collect())
        .collect()
}

#[test]
fn clip_grad_norm_scales_by_the_global_norm() {
    let (params, _) = applied_gradient(GradClip::default());
    let fd = numeric_gradient(&params);
    let total = global_norm(&fd);
    assert!(
        total > 0.5,
        "the case must have a sizeable gradient: {total}"
    );
    // Clips: every gradient times max_norm / (total + 1e-6).
    let max_norm = total / 4.0;
    let (_, applied) = applied_gradient(GradClip {
        value: None,
        norm: Some(max_norm),
    });
    let coef = max_norm / (total + 1e-6);
    assert_near("clipped", &applied, &scaled(&fd, coef));
    assert!((global_norm(&applied) - max_norm).abs() < 1e-5);
    // Does not clip: the coefficient is clamped to 1.
    let (_, applied) = applied_gradient(GradClip {
        value: None,
        norm: Some(total * 2.0),
    });
    assert_near("unclipped", &applied, &fd);
}

#[test]
fn clip_grad_value_clamps_each_element() {
    let (params, _) = applied_gradient(GradClip::default());
    let fd = numeric_gradient(&params);
    let mut magnitudes: Vec<f64> = fd.iter().flatten().map(|v| v.abs()).collect();
    magnitudes.sort_by(f64::total_cmp);
    // Between the smallest and the largest: some elements clamp, some not.
    let v = (magnitudes[0] + magnitudes[magnitudes.len() - 1]) / 2.0;
    assert!(magnitudes.iter().any(|&m| m < v) && magnitudes.iter().any(|&m| m > v));
    let (_, applied) = applied_gradient(GradClip {
        value: Some(v),
        norm: None,
    });
    assert_near("clamped", &applied, &clamped(&fd, v));
    let big = magnitudes[magnitudes.len() - 1] * 2.0;
    let (_, applied) = applied_gradient(GradClip {
        value: Some(big),
        norm: None,
    });
    assert_near("not clamped", &applied, &fd);
}

/// Both: values clamped first, then the norm of the clamped gradients.
#[test]
fn clipping_by_value_comes_before_the_norm() {
    let (params, _) = applied_gradient(GradClip::default());
    let fd = numeric_gradient(&params);
    let mut magnitudes: Vec<f64> = fd.iter().flatten().map(|v| v.abs()).collect();
    magnitudes.sort_by(f64::total_cmp);
    let v = (magnitudes[0] + magnitudes[magnitudes.len() - 1]) / 2.0;
    let after_value = clamped(&fd, v);
    let max_norm = global_norm(&after_value) / 3.0;
    let (_, applied) = applied_gradient(GradClip {
        value: Some(v),
        norm: Some(max_norm),
    });
    let coef = max_norm / (global_norm(&after_value) + 1e-6);
    assert_near("value then norm", &applied, &scaled(&after_value, coef));
}

/// Weight decay is added to the clipped gradient, inside the optimizer.
#[test]
fn weight_decay_is_not_clipped() {
    let (params, _) = applied_gradient(GradClip::default());
    let fd = numeric_gradient(&params);
    let max_norm = global_norm(&fd) / 4.0;
    let wd = 0.5;
    let sgd = Optimizer::Sgd {
        lr: 1.0,
        momentum: 0.0,
        nesterov: false,
        weight_decay: wd,
    };
    let clip = GradClip {
        value: None,
        norm: Some(max_norm),
    };
    let graph = build_train_step_with(&objective(), &sgd, clip, &[]).unwrap();
    let mut env = data_env();
    init_leaves(&graph, SEED, &mut env).unwrap();
    env.insert("hyper.lr", Tensor::scalar(DType::F32, 1.0));
    step(&graph, &mut env, EvalOptions::EXACT).unwrap();
    let coef = max_norm / (global_norm(&fd) + 1e-6);
    let got: Params = NAMES
        .iter()
        .zip(&params)
        .map(|(n, b)| {
            b.iter()
                .zip(&env.get(n).unwrap().data)
                .map(|(b, a)| b - a)
                .collect()
        })
        .collect();
    let want: Params = fd
        .iter()
        .zip(&params)
        .map(|(g, p)| g.iter().zip(p).map(|(g, p)| g * coef + wd * p).collect())
        .collect();
    assert_near("decay after clipping", &got, &want);
}
