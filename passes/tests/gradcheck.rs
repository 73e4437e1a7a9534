//! Gradient checks: every VJP rule of `nnc_passes::autodiff` against central
//! finite differences of the reference interpreter.
//!
//! Method. Each case builds a graph whose differentiable leaves are `Param`s
//! (typed `f32` in the graph; their values are arbitrary `f64`s drawn from a
//! seeded generator and kept unrounded, because everything is evaluated with
//! `EvalOptions::EXACT`). For an op check the scalar loss is
//! `sum(out * W)` with `W` a fixed random tensor of the output's shape, so
//! every output element contributes with its own weight; whole-model checks
//! use the model's own scalar loss. `gradients` appends the backward graph,
//! which must pass `nnc_ir::verify`; its result for each param element `i`
//! is compared with `(f(x + h e_i) - f(x - h e_i)) / 2h`, `h = 1e-6`.
//!
//! Tolerance: `|analytic - numeric| <= 1e-6 + 1e-5 * |numeric|`. In `f64`
//! the central difference has a truncation error of `O(h^2 f''') ~ 1e-12` and
//! a rounding error of about `eps * |f| / h ~ 1e-10 * |f|`, both far below it,
//! while a wrong VJP (a missing factor, a wrong axis, a transposed operand)
//! is off by O(1). Inputs are kept away from kinks and ties (`abs` at 0,
//! `max`/`min` ties, non-unique `reduce_max` maxima, relu at 0) by more than
//! `h`, and the cases assert so where it is not obvious.

use nnc_ir::interp::{eval, Env, EvalOptions};
use nnc_ir::{
    shape_of, verify, BinaryOp, DType, Dim, Graph, Init, Literal, NodeId, Op, ReduceOp, Tensor,
    TensorType, UnaryOp, Window,
};
use nnc_passes::gradients;

/// Finite-difference step.
const H: f64 = 1e-6;
/// `|analytic - numeric| <= ABS_TOL + REL_TOL * |numeric|`.
const ABS_TOL: f64 = 1e-6;
const REL_TOL: f64 = 1e-5;

// ---------------------------------------------------------------------------
// A tiny seeded PRNG (SplitMix64).

struct Rng(u64);

impl Rng {
    fn new(seed: u64) -> Rng {
        Rng(seed)
    }

    fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// Uniform in `[lo, hi)`.
    fn uniform(&mut self, lo: f64, hi: f64) -> f64 {
        let u = (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64;
        lo + (hi - lo) * u
    }

    fn vec(&mut self, n: usize, lo: f64, hi: f64) -> Vec<f64> {
        (0..n).map(|_| self.uniform(lo, hi)).collect()
    }

    /// `|v|` uniform in `[lo, hi)`, random sign: away from 0.
    fn away_from_zero(&mut self, n: usize, lo: f64, hi: f64) -> Vec<f64> {
        (0..n)
            .map(|_| {
                let v = self.uniform(lo, hi);
                if self.next_u64() & 1 == 0 {
                    v
                } else {
                    -v
                }
            })
            .collect()
    }

    /// `n` values in about `[-2, 2]`, pairwise at least 0.2 apart (a shuffled
    /// grid with small jitter): no ties anywhere.
    fn distinct(&mut self, n: usize) -> Vec<f64> {
        let step = 4.0 / n.max(1) as f64;
        let mut v: Vec<f64> = (0..n)
            .map(|i| -2.0 + step * i as f64 + self.uniform(0.0, 0.1 * step))
            .collect();
        for i in (1..n).rev() {
            let j = (self.next_u64() % (i as u64 + 1)) as usize;
            v.swap(i, j);
        }
        v
    }
}

// ---------------------------------------------------------------------------
// The harness.

fn ty(dtype: DType, dims: &[usize]) -> TensorType {
    TensorType::new(dtype, shape_of(dims))
}

fn numel(dims: &[usize]) -> usize {
    dims.iter().product()
}

/// One gradient check: a graph under construction, the values of its
/// leaves, and the leaves to differentiate with respect to.
struct Check {
    label: String,
    g: Graph,
    env: Env,
    rng: Rng,
    wrt: Vec<(NodeId, String)>,
}

impl Check {
    fn new(label: impl Into<String>, seed: u64) -> Check {
        Check {
            label: label.into(),
            g: Graph::new("gradcheck"),
            env: Env::new(),
            rng: Rng::new(seed),
            wrt: Vec::new(),
        }
    }

    /// An `f32` param with values uniform in `[lo, hi)`.
    fn param(&mut self, name: &str, dims: &[usize], lo: f64, hi: f64) -> NodeId {
        let data = self.rng.vec(numel(dims), lo, hi);
        self.param_with(name, dims, data)
    }

    /// An `f32` param with the given (unrounded) values.
    fn param_with(&mut self, name: &str, dims: &[usize], data: Vec<f64>) -> NodeId {
        let id = self.g.param(name, ty(DType::F32, dims), Init::Zeros);
        let t = Tensor::from_vec(DType::F32, dims, data).unwrap();
        self.env.insert(name, t);
        self.wrt.push((id, name.to_string()));
        id
    }

    /// A non-differentiated input of any type (symbolic dims allowed) with
    /// a concrete value.
    fn input(&mut self, name: &str, ty: TensorType, value: Tensor) -> NodeId {
        let id = self.g.input(name, ty);
        self.env.insert(name, value);
        id
    }

    fn const_input(&mut self, name: &str, dtype: DType, dims: &[usize], data: &[f64]) -> NodeId {
        let t = Tensor::from_vec(dtype, dims, data.to_vec()).unwrap();
        self.input(name, ty(dtype, dims), t)
    }

    /// The value of a node built on a scratch copy of the graph (for
    /// asserting that inputs stay away from kinks).
    fn probe(&self, build: impl FnOnce(&mut Graph) -> NodeId) -> Tensor {
        let mut g = self.g.clone();
        let n = build(&mut g);
        let values = eval(&g, &self.env, EvalOptions::EXACT)
            .unwrap_or_else(|e| panic!("{}: probe: {e}", self.label));
        values[n].clone()
    }

    /// Checks the gradient of `sum(out * W)` for a fixed random `W`.
    fn check_output(mut self, out: NodeId) {
        let shape = self.probe(|_| out).shape;
        let out_ty = self.g.ty(out).clone();
        let w_data = self.rng.vec(numel(&shape), -1.5, 1.5);
        let w_tensor = Tensor::from_vec(out_ty.dtype, &shape, w_data).unwrap();
        let w = self.input("gradcheck.weight", out_ty.clone(), w_tensor);
        let prod = self.g.mul(out, w).unwrap();
        let loss = if out_ty.rank() == 0 {
            prod
        } else {
            let axes = (0..out_ty.rank()).collect();
            self.g.reduce(ReduceOp::Sum, prod, axes, false).unwrap()
        };
        self.check_loss(loss);
    }

    /// Checks the gradient of the scalar `loss` with respect to every param
    /// by central differences.
    fn check_loss(mut self, loss: NodeId) {
        let label = self.label.clone();
        self.g.set_output("loss", loss);
        let forward = self.g.clone();

        let mut full = self.g.clone();
        let ids: Vec<NodeId> = self.wrt.iter().map(|(n, _)| *n).collect();
        let grads = gradients(&mut full, loss, &ids)
            .unwrap_or_else(|e| panic!("{label}: gradients failed: {e}"));
        assert_eq!(grads.len(), ids.len(), "{label}");
        for ((p, name), &gid) in self.wrt.iter().zip(&grads) {
            assert_eq!(
                full.ty(gid),
                full.ty(*p),
                "{label}: the gradient of `{name}` has the wrong type"
            );
            full.set_output(format!("grad.{name}"), gid);
        }
        if let Err(e) = verify(&full) {
            panic!("{label}: the gradient graph does not verify: {e}\n{full}");
        }

        let values = eval(&full, &self.env, EvalOptions::EXACT)
            .unwrap_or_else(|e| panic!("{label}: eval of the gradient graph: {e}"));
        let f0 = values.output("loss").unwrap().item().unwrap();
        let f = |env: &Env| -> f64 {
            let v = eval(&forward, env, EvalOptions::EXACT)
                .unwrap_or_else(|e| panic!("{label}: eval: {e}"));
            v.output("loss").unwrap().item().unwrap()
        };
        assert_eq!(f(&self.env), f0, "{label}: backward changed the loss");
        assert!(f0.is_finite(), "{label}: loss is {f0}");

        let mut failures = Vec::new();
        for (_, name) in &self.wrt {
            let analytic = values.output(&format!("grad.{name}")).unwrap().clone();
            let x0 = self.env.get(name).unwrap().clone();
            assert_eq!(analytic.shape, x0.shape, "{label}: grad.{name} shape");
            let mut largest = 0.0f64;
            for i in 0..x0.data.len() {
                self.env.get_mut(name).unwrap().data[i] = x0.data[i] + H;
                let plus = f(&self.env);
                self.env.get_mut(name).unwrap().data[i] = x0.data[i] - H;
                let minus = f(&self.env);
                self.env.get_mut(name).unwrap().data[i] = x0.data[i];
                let numeric = (plus - minus) / (2.0 * H);
                let a = analytic.data[i];
                largest = largest.max(numeric.abs());
                // Written so that a NaN on either side fails.
                let ok = (a - numeric).abs() <= ABS_TOL + REL_TOL * numeric.abs();
                if !ok {
                    failures.push(format!(
                        "  {name}[{i}]: analytic {a:.12e}, numeric {numeric:.12e}"
                    ));
                }
            }
            // Guard against a vacuous check (an input that never reaches
            // the loss, a branch that is never taken).
            assert!(
                largest > 1e-3,
                "{label}: the gradient of `{name}` is numerically zero; the case checks nothing"
            );
        }
        if !failures.is_empty() {
            panic!(
                "{label}: analytic and numeric gradients differ:\n{}\n{full}",
                failures.join("\n")
            );
        }
    }
}

// ---------------------------------------------------------------------------
// Unary ops.

#[test]
fn unary_ops() {
    for (k, &op) in UnaryOp::ALL.iter().enumerate() {
        // Their gradient is zero: `round_passes_no_gradient` and
        // `detach_passes_no_gradient` check it.
        if matches!(op, UnaryOp::Round | UnaryOp::Detach) {
            continue;
        }
        let mut c = Check::new(format!("unary {op}"), 100 + k as u64);
        let data = match op {
            UnaryOp::Log | UnaryOp::Sqrt => c.rng.vec(6, 0.3, 2.5),
            UnaryOp::Abs => c.rng.away_from_zero(6, 0.2, 2.0),
            _ => c.rng.vec(6, -2.0, 2.0),
        };
        let x = c.param_with("x", &[2, 3], data);
        let y = c.g.unary(op, x).unwrap();
        c.check_output(y);
    }
}

/// `y + detach(round(y) − y)` is `round(y)` with the gradient of `y`:
/// the straight-through estimator fake quantization trains with.
#[test]
fn detach_passes_no_gradient() {
    let xs = [-1.3, -0.2, 0.3, 1.1, 2.7];
    let mut g = Graph::new("detach");
    let x = g.param("x", ty(DType::F32, &[5]), Init::Zeros);
    let y = g.mul(x, x).unwrap();
    let r = g.unary(UnaryOp::Round, y).unwrap();
    let d = g.sub(r, y).unwrap();
    let stopped = g.unary(UnaryOp::Detach, d).unwrap();
    let out = g.add_(y, stopped).unwrap();
    let loss = g.reduce(ReduceOp::Sum, out, vec![0], false).unwrap();
    let grads = gradients(&mut g, loss, &[x]).unwrap();
    g.set_output("loss", loss);
    g.set_output("grad.x", grads[0]);
    let env = Env::new().with(
        "x",
        Tensor::from_vec(DType::F32, &[5], xs.to_vec()).unwrap(),
    );
    let values = eval(&g, &env, EvalOptions::EXACT).unwrap();
    let rounded: f64 = xs.iter().map(|v: &f64| (v * v).round_ties_even()).sum();
    assert_eq!(values.output("loss").unwrap().item().unwrap(), rounded);
    let want: Vec<f64> = xs.iter().map(|v| 2.0 * v).collect();
    assert_eq!(values.output("grad.x").unwrap().data, want);
}

/// `round` is flat between the half-integers: `x + round(x)` has the
/// gradient 1 where finite differences do not cross a tie.
#[test]
fn round_passes_no_gradient() {
    let mut c = Check::new("round", 9);
    let x = c.param_with("x", &[5], vec![-1.3, -0.2, 0.3, 1.1, 2.7]);
    let r = c.g.unary(UnaryOp::Round, x).unwrap();
    let y = c.g.binary(BinaryOp::Add, x, r).unwrap();
    c.check_output(y);
}

#[test]
fn abs_takes_both_signs() {
    let mut c = Check::new("abs, both signs", 7);
    let x = c.param_with("x", &[4], vec![-1.5, -0.25, 0.3, 1.75]);
    let y = c.g.unary(UnaryOp::Abs, x).unwrap();
    c.check_output(y);
}

/// A value used by several ops accumulates its adjoints.
#[test]
fn fan_out_accumulates() {
    let mut c = Check::new("fan-out", 8);
    let x = c.param("x", &[2, 3], -2.0, 2.0);
    let xx = c.g.mul(x, x).unwrap();
    let ex = c.g.unary(UnaryOp::Exp, x).unwrap();
    let ax = c.g.unary(UnaryOp::Sigmoid, x).unwrap();
    let q = c.g.div(x, ax).unwrap();
    let s = c.g.add_(xx, ex).unwrap();
    let y = c.g.sub(s, q).unwrap();
    c.check_output(y);
}

// ---------------------------------------------------------------------------
// Binary ops, with broadcasting both ways.

const DIFFERENTIABLE_BINARY: [BinaryOp; 7] = [
    BinaryOp::Add,
    BinaryOp::Sub,
    BinaryOp::Mul,
    BinaryOp::Div,
    BinaryOp::Pow,
    BinaryOp::Max,
    BinaryOp::Min,
];

/// Operand shapes: equal, stretched 1s both ways, missing leading dims both
/// ways, scalar with tensor both ways, and both at once.
const SHAPE_PAIRS: [(&[usize], &[usize]); 9] = [
    (&[2, 3], &[2, 3]),
    (&[3, 1], &[1, 4]),
    (&[1, 4], &[3, 1]),
    (&[4], &[2, 3, 4]),
    (&[2, 3, 4], &[4]),
    (&[], &[2, 3]),
    (&[2, 3], &[]),
    (&[2, 1, 4], &[3, 1]),
    (&[3, 1], &[2, 1, 4]),
];

#[test]
fn binary_ops_with_broadcasting() {
    let mut seed = 1000;
    for op in DIFFERENTIABLE_BINARY {
        for (sa, sb) in SHAPE_PAIRS {
            seed += 1;
            let label = format!("{op} {sa:?} with {sb:?}");
            let mut c = Check::new(label.clone(), seed);
            let (na, nb) = (numel(sa), numel(sb));
            let (da, db) = match op {
                BinaryOp::Div => (c.rng.vec(na, -2.0, 2.0), c.rng.away_from_zero(nb, 0.5, 2.0)),
                BinaryOp::Pow => (c.rng.vec(na, 0.3, 2.5), c.rng.vec(nb, -2.0, 2.0)),
                BinaryOp::Max | BinaryOp::Min => {
                    // A scalar operand sits mid-range so both operands win
                    // somewhere (asserted below).
                    let mut pick = |n: usize, dims: &[usize]| {
                        if dims.is_empty() {
                            vec![0.05]
                        } else {
                            c.rng.vec(n, -2.0, 2.0)
                        }
                    };
                    (pick(na, sa), pick(nb, sb))
                }
                _ => (c.rng.vec(na, -2.0, 2.0), c.rng.vec(nb, -2.0, 2.0)),
            };
            let a = c.param_with("a", sa, da);
            let b = c.param_with("b", sb, db);
            if matches!(op, BinaryOp::Max | BinaryOp::Min) {
                let diff = c.probe(|g| g.sub(a, b).unwrap());
                let gap = diff.data.iter().fold(f64::INFINITY, |m, d| m.min(d.abs()));
                assert!(gap > 1e-3, "{label}: a tie within {gap}");
                assert!(diff.data.iter().any(|&d| d > 0.0), "{label}: a never wins");
                assert!(diff.data.iter().any(|&d| d < 0.0), "{label}: b never wins");
            }
            let y = c.g.binary(op, a, b).unwrap();
            c.check_output(y);
        }
    }
}

/// `x op x`: both operand slots of one node feed the same leaf.
#[test]
fn binary_ops_with_one_operand_twice() {
    for (k, op) in [BinaryOp::Mul, BinaryOp::Div, BinaryOp::Pow, BinaryOp::Sub]
        .into_iter()
        .enumerate()
    {
        let mut c = Check::new(format!("{op} x, x"), 1100 + k as u64);
        let x = c.param("x", &[2, 3], 0.4, 2.0);
        let y = c.g.binary(op, x, x).unwrap();
        if matches!(op, BinaryOp::Sub | BinaryOp::Div) {
            // x - x and x / x are constant (their adjoints must cancel);
            // exp(x) keeps the check from being vacuous.
            let e = c.g.unary(UnaryOp::Exp, x).unwrap();
            let z = c.g.add_(y, e).unwrap();
            c.check_output(z);
        } else {
            c.check_output(y);
        }
    }
}

// ---------------------------------------------------------------------------
// select and cast.

/// (cond shape, cond values, a shape, b shape)
type SelectCase = (
    &'static [usize],
    &'static [f64],
    &'static [usize],
    &'static [usize],
);

#[test]
fn select_through_both_branches() {
    let cases: [SelectCase; 4] = [
        (&[3, 1], &[1.0, 0.0, 1.0], &[3, 4], &[4]),
        (&[2, 3], &[1.0, 0.0, 0.0, 1.0, 1.0, 0.0], &[], &[2, 3]),
        (
            &[2, 1, 4],
            &[1.0, 0.0, 0.0, 1.0, 0.0, 1.0, 1.0, 0.0],
            &[3, 1],
            &[1],
        ),
        (&[4], &[0.0, 1.0, 1.0, 0.0], &[2, 4], &[2, 1]),
    ];
    for (k, (sc, cond, sa, sb)) in cases.into_iter().enumerate() {
        let mut c = Check::new(format!("select {sc:?} {sa:?} {sb:?}"), 1200 + k as u64);
        let cnd = c.const_input("cond", DType::Bool, sc, cond);
        let a = c.param("a", sa, -2.0, 2.0);
        let b = c.param("b", sb, -2.0, 2.0);
        let y = c.g.select(cnd, a, b).unwrap();
        c.check_output(y);
    }
}

#[test]
fn cast_f32_f64_f32() {
    let mut c = Check::new("cast f32 -> f64 -> f32", 1300);
    let x = c.param("x", &[2, 3], -2.0, 2.0);
    let x64 = c.g.cast(x, DType::F64).unwrap();
    let t = c.g.unary(UnaryOp::Tanh, x64).unwrap();
    let z = c.g.mul(t, x64).unwrap();
    let y = c.g.cast(z, DType::F32).unwrap();
    assert_eq!(c.g.ty(y).dtype, DType::F32);
    c.check_output(y);
}

/// An `f64` loss of `f32` params: the seed is `f64` and the cast's VJP
/// brings the adjoint back to `f32`.
#[test]
fn cast_to_an_f64_loss() {
    let mut c = Check::new("cast to f64 loss", 1301);
    let x = c.param("x", &[3], -2.0, 2.0);
    let x64 = c.g.cast(x, DType::F64).unwrap();
    let y = c.g.unary(UnaryOp::Exp, x64).unwrap();
    assert_eq!(c.g.ty(y).dtype, DType::F64);
    c.check_output(y);
}

// ---------------------------------------------------------------------------
// Reductions.

#[test]
fn reductions() {
    let axes_sets: [&[usize]; 7] = [&[0], &[1], &[2], &[0, 2], &[2, 0], &[1, 2], &[0, 1, 2]];
    let mut seed = 1400;
    for op in [ReduceOp::Sum, ReduceOp::Mean, ReduceOp::Max] {
        for axes in axes_sets {
            for keepdim in [false, true] {
                seed += 1;
                let label = format!("reduce_{op} axes={axes:?} keepdim={keepdim}");
                let mut c = Check::new(label, seed);
                // Pairwise distinct values: every maximum is unique.
                let data = c.rng.distinct(24);
                let x = c.param_with("x", &[2, 3, 4], data);
                let y = c.g.reduce(op, x, axes.to_vec(), keepdim).unwrap();
                c.check_output(y);
            }
        }
    }
}

/// `reduce_max` with `ties=first` (maxpool's) away from ties: the same
/// derivative as the split one, through its own backward graph (positions,
/// a max of candidates, a routing select).
#[test]
fn reduce_max_first_away_from_ties() {
    let axes_sets: [&[usize]; 7] = [&[0], &[1], &[2], &[0, 2], &[2, 0], &[1, 2], &[0, 1, 2]];
    let mut seed = 1450;
    for axes in axes_sets {
        for keepdim in [false, true] {
            seed += 1;
            let label = format!("reduce_max ties=first axes={axes:?} keepdim={keepdim}");
            let mut c = Check::new(label, seed);
            let data = c.rng.distinct(24);
            let x = c.param_with("x", &[2, 3, 4], data);
            let y = c.g.reduce_max_first(x, axes.to_vec(), keepdim).unwrap();
            c.check_output(y);
        }
    }
}

/// `ties=first` at ties, where finite differences cannot look: the whole
/// adjoint goes to the first maximum in row-major order over the reduced
/// axes (adjacent or not), and to the first NaN when there is one, as
/// PyTorch's max pooling routes it by its indices.
#[test]
fn reduce_max_first_routes_ties_to_the_first_maximum() {
    let mut g = Graph::new("first");
    let x = g.param("x", ty(DType::F32, &[3, 3]), Init::Zeros);
    let m = g.reduce_max_first(x, vec![1], false).unwrap();
    let w = g
        .add(
            Op::Const(Literal::Dense(vec![1.0, 10.0, 100.0])),
            &[],
            Some(ty(DType::F32, &[3])),
        )
        .unwrap();
    let mw = g.mul(m, w).unwrap();
    let loss = g.reduce(ReduceOp::Sum, mw, vec![0], false).unwrap();
    // Over two axes that are not adjacent: rows are [i, ·, k] for i, k.
    let z = g.param("z", ty(DType::F32, &[2, 2, 3]), Init::Zeros);
    let mz = g.reduce_max_first(z, vec![0, 2], false).unwrap();
    let lz = g.reduce(ReduceOp::Sum, mz, vec![0], false).unwrap();
    let loss = g.add_(loss, lz).unwrap();
    let grads = gradients(&mut g, loss, &[x, z]).unwrap();
    g.set_output("gx", grads[0]);
    g.set_output("gz", grads[1]);
    verify(&g).unwrap();
    let nan = f64::NAN;
    #[rustfmt::skip]
    let zs = vec![
        1.0, 5.0, 5.0,   0.0, 0.0, 0.0,
        5.0, 2.0, 0.0,   0.0, 0.0, 0.0,
    ];
    let env = Env::new()
        .with(
            "x",
            Tensor::from_vec(
                DType::F32,
                &[3, 3],
                vec![3.0, 1.0, 3.0, 2.0, 2.0, 2.0, 1.0, nan, nan],
            )
            .unwrap(),
        )
        .with("z", Tensor::from_vec(DType::F32, &[2, 2, 3], zs).unwrap());
    let v = eval(&g, &env, EvalOptions::EXACT).unwrap();
    assert_eq!(
        v.output("gx").unwrap().data,
        vec![1.0, 0.0, 0.0, 10.0, 0.0, 0.0, 0.0, 100.0, 0.0]
    );
    // z[·, 0, ·] has 5 at (0, 1), (0, 2) and (1, 0): (0, 1) is first;
    // z[·, 1, ·] is all zeros: (0, 0) is first.
    #[rustfmt::skip]
    let gz = vec![
        0.0, 1.0, 0.0,   1.0, 0.0, 0.0,
        0.0, 0.0, 0.0,   0.0, 0.0, 0.0,
    ];
    assert_eq!(v.output("gz").unwrap().data, gz);
}

/// `reduce_mean` over a symbolic batch dim: the backward's `1/n` must be
/// the bound size, not a constant.
#[test]
fn reduce_mean_over_a_symbolic_batch() {
    for batch in [4, 7] {
        let mut c = Check::new(format!("reduce_mean over B = {batch}"), 1500 + batch as u64);
        let x_ty = TensorType::new(DType::F32, [Dim::sym("B"), Dim::Const(3)]);
        let x_data = c.rng.vec(batch * 3, -2.0, 2.0);
        let x = c.input(
            "x",
            x_ty,
            Tensor::from_vec(DType::F32, &[batch, 3], x_data).unwrap(),
        );
        let w = c.param("w", &[1, 3], -1.5, 1.5);
        let xw = c.g.mul(x, w).unwrap();
        let t = c.g.unary(UnaryOp::Tanh, xw).unwrap();
        let y = c.g.reduce(ReduceOp::Mean, t, vec![0], false).unwrap();
        assert_eq!(c.g.ty(y).shape, shape_of(&[3]));
        c.check_output(y);
    }
    // Also with the batch-shaped value itself differentiated (its gradient
    // has the symbolic shape `[B,3]`).
    let mut c = Check::new("reduce_mean over B, grad of a [B,3] leaf", 1510);
    let x_ty = TensorType::new(DType::F32, [Dim::sym("B"), Dim::Const(3)]);
    let x = c.g.param("x", x_ty.clone(), Init::Zeros);
    let data = c.rng.vec(12, -2.0, 2.0);
    c.env
        .insert("x", Tensor::from_vec(DType::F32, &[4, 3], data).unwrap());
    c.wrt.push((x, "x".into()));
    let y = c.g.reduce(ReduceOp::Mean, x, vec![0], true).unwrap();
    let e = c.g.unary(UnaryOp::Exp, y).unwrap();
    c.check_output(e);
}

// ---------------------------------------------------------------------------
// matmul.

#[test]
fn matmul_plain_batched_and_broadcast() {
    let cases: [(&[usize], &[usize]); 7] = [
        (&[3, 4], &[4, 5]),
        (&[2, 3, 4], &[2, 4, 5]),
        (&[2, 3, 4], &[4, 5]),
        (&[3, 4], &[2, 4, 5]),
        (&[1, 3, 4], &[2, 4, 5]),
        (&[2, 1, 3, 4], &[3, 4, 2]),
        (&[1, 1], &[1, 3]),
    ];
    for (k, (sa, sb)) in cases.into_iter().enumerate() {
        let mut c = Check::new(format!("matmul {sa:?} @ {sb:?}"), 1600 + k as u64);
        let a = c.param("a", sa, -1.5, 1.5);
        let b = c.param("b", sb, -1.5, 1.5);
        let y = c.g.matmul(a, b).unwrap();
        c.check_output(y);
    }
}

// ---------------------------------------------------------------------------
// Shape ops.

#[test]
fn reshape() {
    for (k, to) in [&[6usize, 4][..], &[4, 3, 2], &[24], &[2, 1, 12]]
        .into_iter()
        .enumerate()
    {
        let mut c = Check::new(format!("reshape [2,3,4] to {to:?}"), 1700 + k as u64);
        let x = c.param("x", &[2, 3, 4], -2.0, 2.0);
        // A nonlinearity after the reshape, so the element order matters
        // beyond the random weights.
        let r = c.g.reshape(x, shape_of(to)).unwrap();
        let y = c.g.unary(UnaryOp::Tanh, r).unwrap();
        c.check_output(y);
    }
}

#[test]
fn transpose() {
    let cases: [(&[usize], &[usize]); 5] = [
        (&[3, 4], &[1, 0]),
        (&[2, 3, 4], &[2, 0, 1]),
        (&[2, 3, 4], &[1, 2, 0]),
        (&[2, 3, 4], &[0, 2, 1]),
        (&[2, 3, 1, 2], &[3, 1, 0, 2]),
    ];
    for (k, (dims, perm)) in cases.into_iter().enumerate() {
        let mut c = Check::new(format!("transpose {dims:?} perm={perm:?}"), 1800 + k as u64);
        let x = c.param("x", dims, -2.0, 2.0);
        let y = c.g.transpose(x, perm.to_vec()).unwrap();
        c.check_output(y);
    }
}

#[test]
fn broadcast() {
    let cases: [(&[usize], &[usize]); 5] = [
        (&[3, 1], &[2, 3, 4]),
        (&[4], &[2, 3, 4]),
        (&[], &[2, 3]),
        (&[2, 1, 4], &[2, 3, 4]),
        (&[1, 1], &[3, 2]),
    ];
    for (k, (from, to)) in cases.into_iter().enumerate() {
        let mut c = Check::new(format!("broadcast {from:?} to {to:?}"), 1900 + k as u64);
        let x = c.param("x", from, -2.0, 2.0);
        let y = c.g.broadcast(x, shape_of(to)).unwrap();
        c.check_output(y);
    }
}

#[test]
fn slice() {
    // (axis, start, end) on [3,5,2]
    let cases = [
        (1, 1, 4), // start > 0 and end < size
        (0, 0, 2), // end < size only
        (1, 2, 5), // start > 0 only
        (2, 1, 2),
        (0, 0, 3), // the whole axis
    ];
    for (k, (axis, start, end)) in cases.into_iter().enumerate() {
        let mut c = Check::new(format!("slice axis={axis} {start}..{end}"), 2000 + k as u64);
        let x = c.param("x", &[3, 5, 2], -2.0, 2.0);
        let y = c.g.slice(x, axis, start, end).unwrap();
        c.check_output(y);
    }
}

#[test]
fn concat_three_operands() {
    let cases: [(usize, [&[usize]; 3]); 3] = [
        (1, [&[2, 1, 3], &[2, 2, 3], &[2, 3, 3]]),
        (0, [&[1, 3], &[2, 3], &[3, 3]]),
        (2, [&[2, 2, 1], &[2, 2, 4], &[2, 2, 2]]),
    ];
    for (k, (axis, shapes)) in cases.into_iter().enumerate() {
        let mut c = Check::new(format!("concat axis={axis} {shapes:?}"), 2100 + k as u64);
        let xs: Vec<NodeId> = ["a", "b", "c"]
            .iter()
            .zip(shapes)
            .map(|(name, dims)| c.param(name, dims, -2.0, 2.0))
            .collect();
        let y = c.g.concat(&xs, axis).unwrap();
        c.check_output(y);
    }
}

/// One operand passed twice: both slices land on the same leaf.
#[test]
fn concat_with_a_repeated_operand() {
    let mut c = Check::new("concat a, b, a", 2110);
    let a = c.param("a", &[2, 2], -2.0, 2.0);
    let b = c.param("b", &[2, 3], -2.0, 2.0);
    let y = c.g.concat(&[a, b, a], 1).unwrap();
    c.check_output(y);
}

/// (data or result shape, axis, index shape, indices)
type IndexCase = (&'static [usize], usize, &'static [usize], &'static [f64]);

#[test]
fn gather_with_duplicate_indices() {
    let cases: [IndexCase; 3] = [
        (&[5, 3], 0, &[5], &[3.0, 0.0, 3.0, 1.0, 3.0]),
        (&[2, 4, 3], 1, &[2, 2], &[1.0, 1.0, 3.0, 0.0]),
        (&[2, 4], 1, &[], &[2.0]),
    ];
    for (k, (dims, axis, idx_dims, idx)) in cases.into_iter().enumerate() {
        let label = format!("gather {dims:?} axis={axis} by {idx:?}");
        let mut c = Check::new(label, 2200 + k as u64);
        let data = c.param("data", dims, -2.0, 2.0);
        let i = c.const_input("idx", DType::I32, idx_dims, idx);
        let y = c.g.gather(data, i, axis).unwrap();
        c.check_output(y);
    }
}

#[test]
fn scatter_add_with_duplicate_indices() {
    let cases: [IndexCase; 2] = [
        (&[5, 3], 0, &[4], &[2.0, 0.0, 2.0, 4.0]),
        (&[2, 4, 3], 1, &[3], &[1.0, 1.0, 0.0]),
    ];
    for (k, (dims, axis, idx_dims, idx)) in cases.into_iter().enumerate() {
        let label = format!("scatter_add into {dims:?} axis={axis} at {idx:?}");
        let mut c = Check::new(label, 2300 + k as u64);
        let i = c.const_input("idx", DType::I32, idx_dims, idx);
        let mut upd_dims = dims[..axis].to_vec();
        upd_dims.extend_from_slice(idx_dims);
        upd_dims.extend_from_slice(&dims[axis + 1..]);
        let upd = c.param("updates", &upd_dims, -2.0, 2.0);
        let s = c.g.scatter_add(upd, i, axis, ty(DType::F32, dims)).unwrap();
        // Squared, so that accumulated duplicates interact.
        let y = c.g.mul(s, s).unwrap();
        c.check_output(y);
    }
}

// ---------------------------------------------------------------------------
// Windows: unfold (im2col), fold (col2im) and the layers built on them.

/// (input dims [n, c, *spatial], kernel, stride, padding, dilation)
type WindowCase = (
    &'static [usize],
    &'static [usize],
    &'static [usize],
    &'static [usize],
    &'static [usize],
);

const WINDOW_CASES: [WindowCase; 6] = [
    (&[1, 1, 5, 5], &[3, 3], &[1, 1], &[0, 0], &[1, 1]),
    (&[2, 3, 6, 5], &[3, 2], &[2, 1], &[1, 0], &[1, 1]),
    (&[1, 2, 7, 6], &[2, 2], &[1, 2], &[2, 1], &[2, 2]),
    (&[2, 1, 4, 4], &[2, 2], &[2, 2], &[0, 0], &[1, 1]),
    (&[2, 2, 9], &[3], &[2], &[1], &[1]),
    (&[1, 3, 8], &[2], &[1], &[0], &[3]),
];

fn window(case: &WindowCase) -> Window {
    Window {
        kernel: case.1.to_vec(),
        stride: case.2.to_vec(),
        padding: case.3.to_vec(),
        dilation: case.4.to_vec(),
    }
}

#[test]
fn unfold_across_strides_paddings_dilations() {
    for (k, case) in WINDOW_CASES.iter().enumerate() {
        let mut c = Check::new(format!("unfold {case:?}"), 2400 + k as u64);
        let x = c.param("x", case.0, -2.0, 2.0);
        let cols = c.g.unfold(x, window(case), 0.0).unwrap();
        // Squared so that the gradient depends on the value read.
        let y = c.g.mul(cols, cols).unwrap();
        c.check_output(y);
    }
}

#[test]
fn fold_across_strides_paddings_dilations() {
    for (k, case) in WINDOW_CASES.iter().enumerate() {
        let mut c = Check::new(format!("fold {case:?}"), 2500 + k as u64);
        let x_ty = ty(DType::F32, case.0);
        let cols_ty = nnc_ir::infer::infer(
            &nnc_ir::Op::Unfold {
                window: window(case),
                fill: 0.0,
            },
            &[&x_ty],
            None,
        )
        .unwrap();
        let dims: Vec<usize> = cols_ty
            .shape
            .iter()
            .map(|d| d.as_const().unwrap())
            .collect();
        let cols = c.param("cols", &dims, -2.0, 2.0);
        let x = c.g.fold(cols, window(case), x_ty).unwrap();
        let y = c.g.mul(x, x).unwrap();
        c.check_output(y);
    }
}

/// Convolution as the prelude builds it: unfold, a broadcast matmul over
/// the batch, a bias; then max pooling as a reduction over an unfold
/// padded with -inf. Distinct values keep the max away from ties.
#[test]
fn conv_bias_relu_maxpool() {
    for (k, groups) in [1usize, 2].into_iter().enumerate() {
        let mut c = Check::new(format!("conv groups={groups}"), 2600 + k as u64);
        let (n, ch, h, w, o, kk) = (2, 2, 6, 6, 4, 3);
        let data = c.rng.distinct(n * ch * h * w);
        let x = c.param_with("x", &[n, ch, h, w], data);
        let per = ch / groups * kk * kk;
        let wt = c.param("w", &[groups, o / groups, per], -1.0, 1.0);
        let b = c.param("b", &[o, 1, 1], -0.5, 0.5);
        let conv = Window {
            kernel: vec![kk, kk],
            stride: vec![1, 1],
            padding: vec![1, 1],
            dilation: vec![1, 1],
        };
        let cols = c.g.unfold(x, conv, 0.0).unwrap();
        let cols =
            c.g.reshape(cols, shape_of(&[n, groups, per, h * w]))
                .unwrap();
        let y = c.g.matmul(wt, cols).unwrap();
        let y = c.g.reshape(y, shape_of(&[n, o, h, w])).unwrap();
        let y = c.g.add_(y, b).unwrap();
        let pool = Window {
            kernel: vec![2, 2],
            stride: vec![2, 2],
            padding: vec![1, 1],
            dilation: vec![1, 1],
        };
        let windows = c.g.unfold(y, pool, f64::NEG_INFINITY).unwrap();
        let pooled =
            c.g.reduce(ReduceOp::Max, windows, vec![2, 3], false)
                .unwrap();
        c.check_output(pooled);
    }
}

// ---------------------------------------------------------------------------
// Whole models.

/// `-mean(sum(one_hot(labels) * log_softmax(logits), 1))`, from primitives.
fn softmax_cross_entropy(g: &mut Graph, logits: NodeId, labels: NodeId, classes: usize) -> NodeId {
    let n = g.ty(logits).shape[0].clone();
    let m = g.reduce(ReduceOp::Max, logits, vec![1], true).unwrap();
    let s = g.sub(logits, m).unwrap();
    let e = g.unary(UnaryOp::Exp, s).unwrap();
    let se = g.reduce(ReduceOp::Sum, e, vec![1], true).unwrap();
    let lse = g.unary(UnaryOp::Log, se).unwrap();
    let logp = g.sub(s, lse).unwrap();
    let classes_ty = TensorType::new(DType::I32, [n.clone(), Dim::Const(classes)]);
    let iota = g.iota(1, classes_ty).unwrap();
    let col = g.reshape(labels, vec![n, Dim::Const(1)]).unwrap();
    let hit = g.binary(BinaryOp::Eq, iota, col).unwrap();
    let one_hot = g.cast(hit, DType::F32).unwrap();
    let picked = g.mul(one_hot, logp).unwrap();
    let ll = g.reduce(ReduceOp::Sum, picked, vec![1], false).unwrap();
    let mean = g.reduce(ReduceOp::Mean, ll, vec![0], false).unwrap();
    g.neg(mean).unwrap()
}

#[test]
fn mlp_with_softmax_cross_entropy() {
    let (n, d, h, k) = (5, 4, 6, 3);
    let mut c = Check::new("mlp + softmax cross-entropy", 3000);
    let x_data = c.rng.vec(n * d, -2.0, 2.0);
    let x = c.const_input("x", DType::F32, &[n, d], &x_data);
    let labels = c.const_input("labels", DType::I32, &[n], &[2.0, 0.0, 1.0, 2.0, 1.0]);
    let w1 = c.param("w1", &[d, h], -1.0, 1.0);
    let b1 = c.param("b1", &[h], -0.5, 0.5);
    let w2 = c.param("w2", &[h, k], -1.0, 1.0);
    let b2 = c.param("b2", &[k], -0.5, 0.5);

    let xw = c.g.matmul(x, w1).unwrap();
    let z1 = c.g.add_(xw, b1).unwrap();
    let zero = c.g.scalar(0.0, DType::F32);
    let h1 = c.g.binary(BinaryOp::Max, z1, zero).unwrap();
    let hw = c.g.matmul(h1, w2).unwrap();
    let z2 = c.g.add_(hw, b2).unwrap();
    let logits = c.g.unary(UnaryOp::Tanh, z2).unwrap();
    let loss = softmax_cross_entropy(&mut c.g, logits, labels, k);

    // Relu inputs away from its kink; both relu branches taken; unique
    // row maxima of the logits.
    let z1v = c.probe(|_| z1);
    assert!(z1v.data.iter().all(|v| v.abs() > 1e-3), "relu kink: {z1v}");
    assert!(z1v.data.iter().any(|&v| v > 0.0) && z1v.data.iter().any(|&v| v < 0.0));
    let lv = c.probe(|_| logits);
    for row in lv.data.chunks(k) {
        let mut s = row.to_vec();
        s.sort_by(f64::total_cmp);
        assert!(s[k - 1] - s[k - 2] > 1e-3, "tied logits: {lv}");
    }
    c.check_loss(loss);
}

#[test]
fn mse_regression() {
    let (n, d, h, o) = (6, 3, 4, 2);
    let mut c = Check::new("mse regression", 3100);
    let x_data = c.rng.vec(n * d, -2.0, 2.0);
    let y_data = c.rng.vec(n * o, -1.0, 1.0);
    let x = c.const_input("x", DType::F32, &[n, d], &x_data);
    let y = c.const_input("y", DType::F32, &[n, o], &y_data);
    let w1 = c.param("w1", &[d, h], -1.0, 1.0);
    let b1 = c.param("b1", &[h], -0.5, 0.5);
    let w2 = c.param("w2", &[h, o], -1.0, 1.0);
    let b2 = c.param("b2", &[1, o], -0.5, 0.5);

    let xw = c.g.matmul(x, w1).unwrap();
    let z1 = c.g.add_(xw, b1).unwrap();
    let h1 = c.g.unary(UnaryOp::Sigmoid, z1).unwrap();
    let hw = c.g.matmul(h1, w2).unwrap();
    let pred = c.g.add_(hw, b2).unwrap();
    let diff = c.g.sub(pred, y).unwrap();
    // pow with a constant exponent and negative bases: the (discarded)
    // exponent-side VJP is NaN there and must not leak.
    let two = c.g.scalar(2.0, DType::F32);
    let sq = c.g.binary(BinaryOp::Pow, diff, two).unwrap();
    let loss = c.g.reduce(ReduceOp::Mean, sq, vec![0, 1], false).unwrap();
    let dv = c.probe(|_| diff);
    assert!(dv.data.iter().any(|&v| v < 0.0), "no negative residual");
    c.check_loss(loss);
}

// ---------------------------------------------------------------------------
// Structure.

/// A param the loss does not depend on gets a zero gradient of its type.
#[test]
fn unused_param_gets_zero_gradient() {
    let mut g = Graph::new("unused");
    let a = g.param("a", ty(DType::F32, &[2]), Init::Zeros);
    let b = g.param("b", ty(DType::F32, &[3, 2]), Init::Zeros);
    let s = g.reduce(ReduceOp::Sum, a, vec![0], false).unwrap();
    let grads = gradients(&mut g, s, &[a, b]).unwrap();
    g.set_output("ga", grads[0]);
    g.set_output("gb", grads[1]);
    verify(&g).unwrap();
    assert_eq!(g.ty(grads[1]), g.ty(b));
    let env = Env::new()
        .with(
            "a",
            Tensor::from_vec(DType::F32, &[2], vec![1.0, 2.0]).unwrap(),
        )
        .with("b", Tensor::zeros(DType::F32, &[3, 2]));
    let v = eval(&g, &env, EvalOptions::EXACT).unwrap();
    assert_eq!(v.output("ga").unwrap().data, vec![1.0, 1.0]);
    assert_eq!(v.output("gb").unwrap().data, vec![0.0; 6]);
}

#[test]
fn non_scalar_loss_is_rejected() {
    let mut g = Graph::new("bad");
    let a = g.param("a", ty(DType::F32, &[2]), Init::Zeros);
    assert!(gradients(&mut g, a, &[a]).is_err());
    let i = g.input("i", ty(DType::I32, &[]));
    assert!(gradients(&mut g, i, &[a]).is_err());
}

/// Where finite differences cannot look: the documented conventions at
/// ties and kinks, checked against exact values. `reduce_max` splits the
/// adjoint evenly among tied maxima (like `torch.amax`); `max`/`min` send
/// it to the second operand on a tie (so `max(x, 0)` has relu's gradient 0
/// at 0); `abs` has gradient 0 at 0.
#[test]
fn tie_and_kink_conventions() {
    let mut g = Graph::new("ties");
    let x = g.param("x", ty(DType::F32, &[2, 3]), Init::Zeros);
    let z = g.param("z", ty(DType::F32, &[2, 3]), Init::Zeros);
    let m = g.reduce(ReduceOp::Max, x, vec![1], false).unwrap();
    let zero = g.scalar(0.0, DType::F32);
    let relu = g.binary(BinaryOp::Max, z, zero).unwrap();
    let neg = g.neg(z).unwrap();
    let mn = g.binary(BinaryOp::Min, z, neg).unwrap();
    let ab = g.unary(UnaryOp::Abs, z).unwrap();
    let w = g
        .add(
            Op::Const(Literal::Dense(vec![1.0, 10.0])),
            &[],
            Some(ty(DType::F32, &[2])),
        )
        .unwrap();
    let mw = g.mul(m, w).unwrap();
    let l1 = g.reduce(ReduceOp::Sum, mw, vec![0], false).unwrap();
    let s = g.add_(relu, mn).unwrap();
    let s = g.add_(s, ab).unwrap();
    let l2 = g.reduce(ReduceOp::Sum, s, vec![0, 1], false).unwrap();
    let loss = g.add_(l1, l2).unwrap();
    let grads = gradients(&mut g, loss, &[x, z]).unwrap();
    g.set_output("gx", grads[0]);
    g.set_output("gz", grads[1]);
    verify(&g).unwrap();
    let env = Env::new()
        .with(
            "x",
            Tensor::from_vec(DType::F32, &[2, 3], vec![3.0, 1.0, 3.0, 2.0, 2.0, 2.0]).unwrap(),
        )
        .with(
            "z",
            Tensor::from_vec(DType::F32, &[2, 3], vec![0.0, 1.0, -1.0, 0.0, 2.0, -2.0]).unwrap(),
        );
    let v = eval(&g, &env, EvalOptions::EXACT).unwrap();
    let third = 10.0 / 3.0;
    assert_eq!(
        v.output("gx").unwrap().data,
        vec![0.5, 0.0, 0.5, third, third, third]
    );
    // d/dz of relu(z) + min(z, -z) + |z|: at 0 each term's convention gives
    // 0 + (-1, second operand -z) + 0; at z > 0: 1 - 1 + 1; at z < 0: 0 + 1 - 1.
    assert_eq!(
        v.output("gz").unwrap().data,
        vec![-1.0, 1.0, 0.0, -1.0, 1.0, 0.0]
    );
}

/// Gradients of disjoint slices of one value add up to one `concat` of
/// their parts (no zero padding summed), and keep their values.
#[test]
fn disjoint_slice_gradients_become_one_concat() {
    let mut g = Graph::new("slices");
    let x = g.param("x", ty(DType::F32, &[2, 8]), Init::Zeros);
    let mut loss = None;
    for (start, end, scale) in [(5, 8, 3.0), (0, 2, 1.0), (2, 5, 2.0)] {
        let s = g.slice(x, 1, start, end).unwrap();
        let k = g.scalar(scale, DType::F32);
        let p = g.mul(s, k).unwrap();
        let r = g.reduce(ReduceOp::Sum, p, vec![0, 1], false).unwrap();
        loss = Some(match loss {
            Some(l) => g.add_(l, r).unwrap(),
            None => r,
        });
    }
    let grads = gradients(&mut g, loss.unwrap(), &[x]).unwrap();
    verify(&g).unwrap();
    assert!(
        matches!(g.node(grads[0]).op, Op::Concat { axis: 1 }),
        "{}",
        g.node(grads[0]).op.mnemonic()
    );
    g.set_output("grad", grads[0]);
    let env = Env::new().with("x", Tensor::zeros(DType::F32, &[2, 8]));
    let values = eval(&g, &env, EvalOptions::EXACT).unwrap();
    let row = [1.0, 1.0, 2.0, 2.0, 2.0, 3.0, 3.0, 3.0];
    let want: Vec<f64> = row.iter().chain(&row).copied().collect();
    assert_eq!(values.output("grad").unwrap().data, want);
}
