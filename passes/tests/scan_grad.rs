//! The gradient of `scan`, checked two ways in exact (f64) evaluation:
//! against central finite differences, and against the gradient of the
//! same recurrence unrolled by hand into a slice per step (which catches a
//! loop differentiated in the wrong order even where finite differences
//! are loose). The body has two carries, a const matrix and bias, a mask
//! sequence that freezes the state on padded steps, and every kind of
//! result read by the loss: the final carries, the stacked outputs and the
//! stacked carries each step began with.

use nnc_ir::interp::{eval, Env, EvalOptions};
use nnc_ir::{
    shape_of, verify, BinaryOp, DType, Dim, Graph, Init, NodeId, ReduceOp, ScanBody, Tensor,
    TensorType, UnaryOp,
};
use nnc_passes::gradients;

const B: usize = 2;
const T: usize = 4;
const H: usize = 3;

fn ty(dims: &[usize]) -> TensorType {
    TensorType::new(DType::F32, shape_of(dims))
}

/// One step on graph `g`: returns `(h', s', y)`.
struct Step {
    h: NodeId,
    s: NodeId,
    y: NodeId,
}

fn step(g: &mut Graph, [w, bias, h, s, x, m]: [NodeId; 6]) -> Step {
    let hw = g.matmul(h, w).unwrap();
    let pre = g.add_(x, hw).unwrap();
    let pre = g.add_(pre, bias).unwrap();
    let cand = g.unary(UnaryOp::Tanh, pre).unwrap();
    // h' = m * cand + (1 - m) * h: padded steps keep the state.
    let one = g.scalar(1.0, DType::F32);
    let keep = g.sub(one, m).unwrap();
    let a = g.mul(m, cand).unwrap();
    let b = g.mul(keep, h).unwrap();
    let h2 = g.add_(a, b).unwrap();
    let sq = g.mul(h2, h2).unwrap();
    let s2 = g.add_(s, sq).unwrap();
    let two = g.scalar(2.0, DType::F32);
    let y = g.mul(h2, two).unwrap();
    let y = g.binary(BinaryOp::Mul, y, s2).unwrap();
    Step { h: h2, s: s2, y }
}

fn body(reverse: bool) -> std::sync::Arc<ScanBody> {
    let mut g = Graph::new("step");
    let w = g.input("w", ty(&[H, H]));
    let bias = g.input("b", ty(&[H]));
    let h = g.input("h", ty(&[B, H]));
    let s = g.input("s", ty(&[B, H]));
    let x = g.input("x", ty(&[B, H]));
    let m = g.input("m", ty(&[B, 1]));
    let out = step(&mut g, [w, bias, h, s, x, m]);
    g.set_output("h", out.h);
    g.set_output("s", out.s);
    g.set_output("y", out.y);
    ScanBody::new(g, vec![w, bias, h, s, x, m], 2, 2, 1, reverse).unwrap()
}

struct Leaves {
    w: NodeId,
    bias: NodeId,
    h0: NodeId,
    s0: NodeId,
    xs: NodeId,
    mask: NodeId,
}

fn leaves(g: &mut Graph) -> Leaves {
    Leaves {
        w: g.param("w", ty(&[H, H]), Init::Zeros),
        bias: g.param("bias", ty(&[H]), Init::Zeros),
        h0: g.param("h0", ty(&[B, H]), Init::Zeros),
        s0: g.param("s0", ty(&[B, H]), Init::Zeros),
        xs: g.param("xs", ty(&[B, T, H]), Init::Zeros),
        mask: g.input("mask", ty(&[B, T, 1])),
    }
}

/// `sum(v * r)` with `r` an input of `v`'s type named `name`.
fn weighted(g: &mut Graph, v: NodeId, name: &str) -> NodeId {
    let r = g.input(name, g.ty(v).clone());
    let p = g.mul(v, r).unwrap();
    let rank = g.ty(p).rank();
    g.reduce(ReduceOp::Sum, p, (0..rank).collect(), false)
        .unwrap()
}

fn loss(g: &mut Graph, h: NodeId, s: NodeId, ys: NodeId, h_in: NodeId) -> NodeId {
    let a = weighted(g, h, "r_h");
    let b = weighted(g, s, "r_s");
    let c = weighted(g, ys, "r_ys");
    let d = weighted(g, h_in, "r_hin");
    let ab = g.add_(a, b).unwrap();
    let cd = g.add_(c, d).unwrap();
    let l = g.add_(ab, cd).unwrap();
    g.set_output("loss", l);
    l
}

fn looped(reverse: bool) -> (Graph, NodeId, Leaves) {
    let mut g = Graph::new("looped");
    let l = leaves(&mut g);
    let body = body(reverse);
    let r = g
        .scan(&body, &[l.w, l.bias, l.h0, l.s0, l.xs, l.mask])
        .unwrap();
    // Results: final h, final s, ys, h at each step, s at each step.
    let loss = loss(&mut g, r[0], r[1], r[2], r[3]);
    (g, loss, l)
}

fn unrolled(reverse: bool) -> (Graph, NodeId, Leaves) {
    let mut g = Graph::new("unrolled");
    let l = leaves(&mut g);
    let (mut h, mut s) = (l.h0, l.s0);
    let mut ys = vec![None; T];
    let mut h_in = vec![None; T];
    let order: Vec<usize> = if reverse {
        (0..T).rev().collect()
    } else {
        (0..T).collect()
    };
    let at = |g: &mut Graph, seq: NodeId, t: usize, width: usize| {
        let v = g.slice(seq, 1, t, t + 1).unwrap();
        g.reshape(v, vec![Dim::Const(B), Dim::Const(width)])
            .unwrap()
    };
    let stack_1 = |g: &mut Graph, v: NodeId| g.reshape(v, shape_of(&[B, 1, H])).unwrap();
    for t in order {
        let x = at(&mut g, l.xs, t, H);
        let m = at(&mut g, l.mask, t, 1);
        h_in[t] = Some(stack_1(&mut g, h));
        let out = step(&mut g, [l.w, l.bias, h, s, x, m]);
        ys[t] = Some(stack_1(&mut g, out.y));
        (h, s) = (out.h, out.s);
    }
    let ys: Vec<NodeId> = ys.into_iter().map(Option::unwrap).collect();
    let h_in: Vec<NodeId> = h_in.into_iter().map(Option::unwrap).collect();
    let ys = g.concat(&ys, 1).unwrap();
    let h_in = g.concat(&h_in, 1).unwrap();
    let loss = loss(&mut g, h, s, ys, h_in);
    (g, loss, l)
}

struct Rng(u64);

impl Rng {
    fn next(&mut self) -> f64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^= z >> 31;
        (z >> 11) as f64 / (1u64 << 53) as f64 * 2.0 - 1.0
    }

    fn tensor(&mut self, dims: &[usize], scale: f64) -> Tensor {
        let n = dims.iter().product();
        Tensor {
            dtype: DType::F32,
            shape: dims.to_vec(),
            data: (0..n).map(|_| self.next() * scale).collect(),
        }
    }
}

fn env() -> Env {
    let mut rng = Rng(7);
    // The second sample is padded after two steps.
    let mut mask = vec![1.0; B * T];
    mask[T + 2] = 0.0;
    mask[T + 3] = 0.0;
    Env::new()
        .with("w", rng.tensor(&[H, H], 0.8))
        .with("bias", rng.tensor(&[H], 0.3))
        .with("h0", rng.tensor(&[B, H], 0.5))
        .with("s0", rng.tensor(&[B, H], 0.5))
        .with("xs", rng.tensor(&[B, T, H], 1.0))
        .with(
            "mask",
            Tensor {
                dtype: DType::F32,
                shape: vec![B, T, 1],
                data: mask,
            },
        )
        .with("r_h", rng.tensor(&[B, H], 1.0))
        .with("r_s", rng.tensor(&[B, H], 1.0))
        .with("r_ys", rng.tensor(&[B, T, H], 1.0))
        .with("r_hin", rng.tensor(&[B, T, H], 1.0))
}

const PARAMS: [&str; 5] = ["w", "bias", "h0", "s0", "xs"];

/// The loss's gradient for each param, by the gradient graph.
fn analytic(build: fn(bool) -> (Graph, NodeId, Leaves), reverse: bool) -> Vec<Vec<f64>> {
    let (mut g, loss, l) = build(reverse);
    let wrt = [l.w, l.bias, l.h0, l.s0, l.xs];
    let grads = gradients(&mut g, loss, &wrt).unwrap();
    for (name, grad) in PARAMS.iter().zip(&grads) {
        g.set_output(format!("grad.{name}"), *grad);
    }
    verify(&g).unwrap();
    let values = eval(&g, &env(), EvalOptions::EXACT).unwrap();
    PARAMS
        .iter()
        .map(|name| values.output(&format!("grad.{name}")).unwrap().data.clone())
        .collect()
}

fn loss_at(g: &Graph, env: &Env) -> f64 {
    eval(g, env, EvalOptions::EXACT)
        .unwrap()
        .output("loss")
        .unwrap()
        .data[0]
}

#[test]
fn scan_gradients_match_finite_differences() {
    for reverse in [false, true] {
        let grads = analytic(looped, reverse);
        let (g, _, _) = looped(reverse);
        let base = env();
        for (p, name) in PARAMS.iter().enumerate() {
            for (i, &analytic) in grads[p].iter().enumerate() {
                let h = 1e-6;
                let mut plus = base.clone();
                plus.get_mut(name).unwrap().data[i] += h;
                let mut minus = base.clone();
                minus.get_mut(name).unwrap().data[i] -= h;
                let numeric = (loss_at(&g, &plus) - loss_at(&g, &minus)) / (2.0 * h);
                assert!(
                    (analytic - numeric).abs() <= 1e-6 + 1e-5 * numeric.abs(),
                    "reverse={reverse} d loss / d {name}[{i}]: analytic {analytic}, numeric {numeric}"
                );
            }
        }
    }
}

#[test]
fn scan_gradients_equal_the_unrolled_recurrence() {
    for reverse in [false, true] {
        let looped = analytic(looped, reverse);
        let unrolled = analytic(unrolled, reverse);
        for (p, name) in PARAMS.iter().enumerate() {
            for (i, (a, b)) in looped[p].iter().zip(&unrolled[p]).enumerate() {
                assert!(
                    (a - b).abs() <= 1e-12 * (1.0 + b.abs()),
                    "reverse={reverse} d loss / d {name}[{i}]: scan {a}, unrolled {b}"
                );
            }
        }
        // The masked steps pass the state through: no gradient reaches the
        // padded inputs.
        let xs = &looped[4];
        for t in 2..T {
            for j in 0..H {
                assert_eq!(xs[(T + t) * H + j], 0.0, "reverse={reverse} t={t}");
            }
        }
    }
}

#[test]
fn the_optimizer_optimizes_each_body_and_keeps_the_loop() {
    use nnc_passes::opt::{optimize, OptLevel};
    for reverse in [false, true] {
        let (mut g, loss, l) = looped(reverse);
        let wrt = [l.w, l.bias, l.h0, l.s0, l.xs];
        let grads = gradients(&mut g, loss, &wrt).unwrap();
        for (name, grad) in PARAMS.iter().zip(&grads) {
            g.set_output(format!("grad.{name}"), *grad);
        }
        g.prune();
        let (opt, report) = optimize(&g, OptLevel::O2).unwrap();
        verify(&opt).unwrap();
        // The forward body and the backward one, each once.
        assert_eq!(report.loop_bodies, 2, "{report}");
        let before = eval(&g, &env(), EvalOptions::EXACT).unwrap();
        let after = eval(&opt, &env(), EvalOptions::EXACT).unwrap();
        for (name, a) in before.outputs() {
            let b = after.output(name).unwrap();
            for (x, y) in a.data.iter().zip(&b.data) {
                assert!(
                    (x - y).abs() <= 1e-9 * (1.0 + x.abs()),
                    "reverse={reverse} {name}: {x} before, {y} after"
                );
            }
        }
    }
}

/// The backward loop reads the forward step's per-step values instead of
/// recomputing them (no `tanh`, no `h @ w` in its body: the forward loop
/// stacks `tanh(pre)` as an extra output), and the matrix const's gradient
/// `h^T @ d_pre` leaves the loop as one product after it; only the bias,
/// whose gradient is a sum over the batch, keeps an accumulator carry.
#[test]
fn the_backward_loop_saves_forward_values_and_hoists_weight_gradients() {
    use nnc_ir::{Op, OpClass, UnaryOp};
    let (mut g, loss, l) = looped(false);
    let wrt = [l.w, l.bias, l.h0, l.s0, l.xs];
    gradients(&mut g, loss, &wrt).unwrap();
    verify(&g).unwrap();
    let mut bodies: Vec<std::sync::Arc<ScanBody>> = Vec::new();
    for n in g.g.node_indices() {
        if let Op::Scan { body, .. } = &g.node(n).op {
            if !bodies.iter().any(|b| std::sync::Arc::ptr_eq(b, body)) {
                bodies.push(body.clone());
            }
        }
    }
    assert_eq!(bodies.len(), 2, "one forward and one backward body");
    let (backward, forward): (Vec<_>, Vec<_>) = bodies.into_iter().partition(|b| b.reverse);
    let (backward, forward) = (&backward[0], &forward[0]);
    assert!(
        forward
            .graph
            .outputs
            .iter()
            .any(|o| o.name.starts_with("saved.")),
        "the forward body stacks what the gradient reads"
    );
    let ops: Vec<&Op> = backward
        .graph
        .g
        .node_indices()
        .map(|n| &backward.graph.node(n).op)
        .collect();
    assert!(
        !ops.iter().any(|op| matches!(op, Op::Unary(UnaryOp::Tanh))),
        "the backward body recomputes a tanh"
    );
    let products = ops
        .iter()
        .filter(|op| op.class() == OpClass::Contraction)
        .count();
    assert_eq!(
        products, 1,
        "only `d_pre @ w^T` is left in the backward body"
    );
    // Carries: the two states' cotangents and the bias's accumulator.
    assert_eq!(backward.carries, 3);
}
