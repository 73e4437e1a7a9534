//! Kernel grouping (`nnc_codegen::group`): every grouping shape, JIT
//! against the reference interpreter (`EvalOptions::F32`), under both the
//! default rule and the greedy baseline (`GroupConfig::greedy`), and the
//! kernels each forms (`Program::kernels`), so that a change in grouping
//! shows as a failed count rather than as a slower step.
//!
//! Tolerances as in `ops.rs`: `|got - want| <= abs + rel * |want|`, NaN
//! meets NaN. Elementwise results are computed op by op in f32 either way
//! (`EXACT` or one rounding of `exp`); sums differ in order (`SUM`).

use nnc_codegen::{GroupConfig, KernelInfo, Program, StateBuffer, StateLayout};
use nnc_ir::interp::{self, Env, EvalOptions};
use nnc_ir::{
    shape_of, BinaryOp, DType, Graph, Init, NodeId, Op, Optimizer, ReduceOp, Tensor, TensorType,
    UnaryOp, Window,
};

#[derive(Debug, Clone, Copy)]
struct Tol {
    rel: f64,
    abs: f64,
}

const EXACT: Tol = Tol { rel: 0.0, abs: 0.0 };
const TRANSC: Tol = Tol {
    rel: 2e-6,
    abs: 1e-30,
};
const SUM: Tol = Tol {
    rel: 1e-5,
    abs: 1e-5,
};

struct Rng(u64);

impl Rng {
    fn unit(&mut self) -> f64 {
        self.0 = self
            .0
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        (self.0 >> 11) as f64 / (1u64 << 53) as f64
    }
    /// f32 values uniform in `[-1, 1)`.
    fn tensor(&mut self, dims: &[usize]) -> Tensor {
        let n = dims.iter().product();
        let data = (0..n)
            .map(|_| (2.0 * self.unit() - 1.0) as f32 as f64)
            .collect();
        Tensor::from_vec(DType::F32, dims, data).unwrap()
    }
}

fn ty(dtype: DType, dims: &[usize]) -> TensorType {
    TensorType::new(dtype, shape_of(dims))
}

fn dims(g: &Graph, n: NodeId) -> Vec<usize> {
    g.ty(n)
        .shape
        .iter()
        .map(|d| d.as_const().unwrap())
        .collect()
}

/// A graph with the values of its leaves and the tolerance of each output.
struct Case {
    name: String,
    g: Graph,
    env: Env,
    outputs: Vec<(String, Tol)>,
}

/// A compiled program with the state it was compiled against (dropped
/// after the program).
struct Jit {
    program: Program,
    state: StateBuffer,
}

impl Case {
    fn new(name: &str) -> Case {
        Case {
            name: name.into(),
            g: Graph::new(name),
            env: Env::new(),
            outputs: Vec::new(),
        }
    }

    fn input(&mut self, name: &str, value: Tensor) -> NodeId {
        let id = self.g.input(name, ty(value.dtype, &value.shape));
        self.env.insert(name, value);
        id
    }

    fn param(&mut self, name: &str, value: Tensor) -> NodeId {
        let id = self
            .g
            .param(name, ty(value.dtype, &value.shape), Init::Zeros);
        self.env.insert(name, value);
        id
    }

    fn out(&mut self, name: &str, node: NodeId, tol: Tol) {
        self.g.set_output(name, node);
        self.outputs.push((name.into(), tol));
    }

    fn compile(&self, config: &GroupConfig) -> Jit {
        let layout = StateLayout::of(&[&self.g]).unwrap();
        let mut state = StateBuffer::new(layout);
        for id in self.g.topo_order() {
            if let Op::Param { name, .. } | Op::State { name, .. } = &self.g.node(id).op {
                state.set(name, self.env.get(name).unwrap()).unwrap();
            }
        }
        let bindings = interp::bind_symbols(&self.g, &self.env).unwrap();
        let program = Program::compile_with(&self.g, &bindings, &state, config)
            .unwrap_or_else(|e| panic!("{}: compile: {}", self.name, e.message));
        Jit { program, state }
    }

    /// Compiles under `config`, runs once and compares every output.
    #[track_caller]
    fn check_with(&self, config: &GroupConfig) -> Jit {
        let mut jit = self.compile(config);
        feed(&mut jit, &self.g, &self.env);
        jit.program.run().unwrap();
        let want = interp::eval(&self.g, &self.env, EvalOptions::F32).unwrap();
        for (name, tol) in &self.outputs {
            let got = jit.program.output(name, &jit.state).unwrap();
            let case = format!("{} ({config:?}): `{name}`", self.name);
            assert_close(&case, &got, want.output(name).unwrap(), *tol);
        }
        jit
    }

    /// [`Case::check_with`] under the greedy rule, then the default one,
    /// whose program it returns.
    #[track_caller]
    fn check(&self) -> Jit {
        self.check_with(&GroupConfig::greedy());
        self.check_with(&GroupConfig::default())
    }
}

fn feed(jit: &mut Jit, g: &Graph, env: &Env) {
    for (_, name) in g.inputs() {
        let t = env.get(name).unwrap();
        match t.dtype {
            DType::F32 | DType::F64 => {
                let v: Vec<f32> = t.data.iter().map(|&x| x as f32).collect();
                jit.program.set_input_f32(name, &v).unwrap();
            }
            DType::I32 | DType::I8 | DType::U8 | DType::Bool => {
                let v: Vec<i32> = t.data.iter().map(|&x| x as i32).collect();
                jit.program.set_input_i32(name, &v).unwrap();
            }
        }
    }
}

#[track_caller]
fn assert_close(what: &str, got: &Tensor, want: &Tensor, tol: Tol) {
    assert_eq!(got.shape, want.shape, "{what}: shape");
    for (i, (&g, &w)) in got.data.iter().zip(&want.data).enumerate() {
        let ok = if g.is_nan() || w.is_nan() {
            g.is_nan() && w.is_nan()
        } else {
            g == w || (g - w).abs() <= tol.abs + tol.rel * w.abs()
        };
        assert!(ok, "{what}: element {i}: jit {g:e} vs interp {w:e}");
    }
}

/// The compute kernels (no state copies) of a program.
fn kernels(jit: &Jit) -> Vec<&KernelInfo> {
    jit.program
        .kernels()
        .iter()
        .filter(|k| !k.label.starts_with("update ") && !k.label.starts_with("copy "))
        .collect()
}

/// The kernel that stores `n` (`None`: `n` has no kernel of its own).
fn kernel_storing(jit: &Jit, n: NodeId) -> Option<&KernelInfo> {
    kernels(jit).into_iter().find(|k| {
        // A kernel lists the results it stores first, then inline values;
        // its label names as many ops as it stores.
        let stored = k.label.split(' ').next().unwrap().split(',').count();
        k.nodes[..stored.min(k.nodes.len())].contains(&n)
    })
}

/// How many kernels evaluate `n` in registers.
fn evaluated_inline(jit: &Jit, n: NodeId) -> usize {
    kernels(jit)
        .iter()
        .filter(|k| k.nodes.contains(&n) && kernel_storing(jit, n).is_none())
        .count()
}

#[test]
fn a_cheap_value_read_by_three_loops_is_recomputed_in_each() {
    let mut rng = Rng(1);
    let mut c = Case::new("recompute");
    let x = c.input("x", rng.tensor(&[8, 33]));
    let w = c.param("w", rng.tensor(&[33]));
    let y = c.input("y", rng.tensor(&[8, 33]));
    // `p = x * w + 1`: two op units, read by an elementwise loop, a
    // reduction and another elementwise loop.
    let xw = c.g.mul(x, w).unwrap();
    let one = c.g.scalar(1.0, DType::F32);
    let p = c.g.add_(xw, one).unwrap();
    let e = c.g.unary(UnaryOp::Exp, p).unwrap();
    c.out("exp", e, TRANSC);
    let s = c.g.reduce(ReduceOp::Sum, p, vec![1], false).unwrap();
    c.out("sum", s, SUM);
    let py = c.g.mul(p, y).unwrap();
    c.out("p*y", py, EXACT);
    // `exp(y)` is never recomputed: read by two loops, it is stored.
    let ey = c.g.unary(UnaryOp::Exp, y).unwrap();
    let a = c.g.add_(ey, x).unwrap();
    let b = c.g.mul(ey, x).unwrap();
    c.out("a", a, TRANSC);
    c.out("b", b, TRANSC);
    // `sqrt(w)` broadcast over 8 rows by its readers would be evaluated
    // 16 times per element: stored.
    let r = c.g.unary(UnaryOp::Sqrt, w).unwrap();
    let r1 = c.g.mul(x, r).unwrap();
    let r2 = c.g.add_(y, r).unwrap();
    c.out("x*sqrt(w)", r1, EXACT);
    c.out("y+sqrt(w)", r2, EXACT);
    let jit = c.check();
    assert!(
        kernel_storing(&jit, p).is_none(),
        "{:#?}",
        jit.program.kernels()
    );
    // `exp(p)` and `p * y` share a loop (both read `p`): `p` is evaluated
    // there and in the reduction.
    assert_eq!(evaluated_inline(&jit, p), 2);
    assert_eq!(evaluated_inline(&jit, xw), 2);
    let shared = kernel_storing(&jit, e).unwrap();
    assert!(shared.label.starts_with("exp,mul,"), "{}", shared.label);
    assert!(kernel_storing(&jit, ey).is_some());
    assert!(kernel_storing(&jit, r).is_some());
}

#[test]
fn elementwise_loops_that_share_reads_store_several_results() {
    let mut rng = Rng(2);
    let mut c = Case::new("multi-output");
    let g = c.input("g", rng.tensor(&[7, 13]));
    let m = c.input("m", rng.tensor(&[7, 13]));
    let v = c.input("v", rng.tensor(&[7, 13]));
    // Three results reading `g`; the third reads the first two at the same
    // element.
    let half = c.g.scalar(0.5, DType::F32);
    let gm = c.g.mul(half, g).unwrap();
    let m2 = c.g.add_(m, gm).unwrap();
    let gg = c.g.mul(g, g).unwrap();
    let v2 = c.g.add_(v, gg).unwrap();
    let vv = c.g.unary(UnaryOp::Abs, v2).unwrap();
    let q = c.g.div(m2, vv).unwrap();
    c.out("m2", m2, EXACT);
    c.out("v2", v2, EXACT);
    c.out("q", q, EXACT);
    // A result read through a transpose cannot share the loop that writes
    // it: `t` reads `m2` at another element.
    let mt = c.g.transpose(m2, vec![1, 0]).unwrap();
    let gt = c.g.transpose(g, vec![1, 0]).unwrap();
    let t = c.g.add_(mt, gt).unwrap();
    c.out("t", t, EXACT);
    let jit = c.check();
    let k = kernel_storing(&jit, q).unwrap();
    assert_eq!(k.label, "add,add,div [7,13] +4 inline", "{k:?}");
    assert_eq!(&k.nodes[..3], &[m2, v2, q]);
    // Reads g, m and v once; writes three results.
    assert_eq!(
        (k.bytes_read, k.bytes_written),
        (3 * 7 * 13 * 4, 3 * 7 * 13 * 4)
    );
    assert_ne!(kernel_storing(&jit, t).map(|k| &k.label), Some(&k.label));
    assert_eq!(kernels(&jit).len(), 2);
}

#[test]
fn reductions_compute_their_operand_in_their_loop() {
    let mut rng = Rng(3);
    let mut c = Case::new("prologue");
    // Batch norm's statistics: `var = mean(d * d)` with `d = x - mean(x)`.
    let x = c.input("x", rng.tensor(&[4, 3, 10]));
    let mu = c.g.reduce(ReduceOp::Mean, x, vec![0, 2], true).unwrap();
    let d = c.g.sub(x, mu).unwrap();
    let dd = c.g.mul(d, d).unwrap();
    let var = c.g.reduce(ReduceOp::Mean, dd, vec![0, 2], true).unwrap();
    c.out("var", var, SUM);
    // Softmax's denominator, over a transposed inline value.
    let xt = c.g.transpose(x, vec![0, 2, 1]).unwrap();
    let mx = c.g.reduce(ReduceOp::Max, xt, vec![2], true).unwrap();
    let z = c.g.sub(xt, mx).unwrap();
    let ez = c.g.unary(UnaryOp::Exp, z).unwrap();
    let se = c.g.reduce(ReduceOp::Sum, ez, vec![2], false).unwrap();
    c.out("sum exp", se, SUM);
    // A max of a relu, and a sum over a reshape of an inline value.
    let zero = c.g.scalar(0.0, DType::F32);
    let r = c.g.binary(BinaryOp::Max, x, zero).unwrap();
    let rm = c.g.reduce(ReduceOp::Max, r, vec![1], false).unwrap();
    c.out("max relu", rm, EXACT);
    let half = c.g.scalar(0.5, DType::F32);
    let h = c.g.mul(x, half).unwrap();
    let hr = c.g.reshape(h, shape_of(&[12, 10])).unwrap();
    let hs = c.g.reduce(ReduceOp::Sum, hr, vec![0], false).unwrap();
    c.out("sum reshaped", hs, SUM);
    let jit = c.check();
    for n in [d, dd, z, ez, r, h, hr] {
        assert!(
            kernel_storing(&jit, n).is_none(),
            "{n:?}: {:#?}",
            kernels(&jit)
        );
    }
    // mean(x), var, max, sum exp, max relu, sum reshaped.
    assert_eq!(kernels(&jit).len(), 6, "{:#?}", kernels(&jit));
}

#[test]
fn random_numbers_are_computed_in_the_loop_that_reads_them() {
    let mut rng = Rng(4);
    let mut c = Case::new("dropout");
    let key = c.input(
        "key",
        Tensor::from_vec(DType::I32, &[], vec![12345.0]).unwrap(),
    );
    let x = c.input("x", rng.tensor(&[6, 37]));
    let dy = c.input("dy", rng.tensor(&[6, 37]));
    // Dropout and its gradient: the random numbers are read by two loops,
    // too costly to compute twice; the mask is recomputed from them.
    let u = c.g.random(key, 7, ty(DType::F32, &[6, 37])).unwrap();
    let p = c.g.scalar(0.3, DType::F32);
    let keep = c.g.binary(BinaryOp::Ge, u, p).unwrap();
    let scale = c.g.scalar(1.0 / 0.7, DType::F32);
    let xs = c.g.mul(x, scale).unwrap();
    let zero = c.g.scalar(0.0, DType::F32);
    let y = c.g.select(keep, xs, zero).unwrap();
    let gy = c.g.select(keep, dy, zero).unwrap();
    let gs = c.g.reduce(ReduceOp::Sum, gy, vec![0], false).unwrap();
    c.out("y", y, EXACT);
    c.out("sum dy", gs, SUM);
    // Random numbers with one reader are computed in its loop, here
    // through a transpose, and in a reduction.
    let ut = c.g.random(key, 8, ty(DType::F32, &[37, 6])).unwrap();
    let utt = c.g.transpose(ut, vec![1, 0]).unwrap();
    let w = c.g.add_(utt, x).unwrap();
    c.out("transposed", w, EXACT);
    let ur = c.g.random(key, 10, ty(DType::F32, &[6, 37])).unwrap();
    let urs = c.g.reduce(ReduceOp::Max, ur, vec![1], false).unwrap();
    c.out("max", urs, EXACT);
    let stored = c.g.random(key, 9, ty(DType::F32, &[1001])).unwrap();
    c.out("stored", stored, EXACT);
    let jit = c.check();
    assert!(kernel_storing(&jit, u).is_some());
    assert!(kernel_storing(&jit, keep).is_none());
    assert_eq!(evaluated_inline(&jit, keep), 2);
    assert_eq!(evaluated_inline(&jit, ut), 1);
    assert_eq!(evaluated_inline(&jit, ur), 1);
    let got = jit.program.output("stored", &jit.state).unwrap();
    for (i, &v) in got.data.iter().enumerate() {
        assert_eq!(v, nnc_ir::random_uniform(12345, 9, i as u32), "element {i}");
    }
}

fn window(k: usize, s: usize, p: usize) -> Window {
    Window {
        kernel: vec![k, k],
        stride: vec![s, s],
        padding: vec![p, p],
        dilation: vec![1, 1],
    }
}

/// `relu(x + b)`, max-pooled by `w`, times a fixed tensor, summed; with
/// the gradients of `x` and `b` as autodiff builds them (`cast(eq(cols,
/// y))` mask, count, divide, multiply, `fold`).
fn max_pool_case(name: &str, image: [usize; 4], w: Window, seed: u64) -> (Case, NodeId) {
    let mut rng = Rng(seed);
    let mut c = Case::new(name);
    let x = c.param("x", rng.tensor(&image));
    let b = c.param("b", rng.tensor(&[image[1], 1, 1]));
    let xb = c.g.add_(x, b).unwrap();
    let zero = c.g.scalar(0.0, DType::F32);
    let y = c.g.binary(BinaryOp::Max, xb, zero).unwrap();
    let u = c.g.unfold(y, w, f64::NEG_INFINITY).unwrap();
    let pool = c.g.reduce(ReduceOp::Max, u, vec![2, 3], false).unwrap();
    let t = c.input("t", rng.tensor(&dims(&c.g, pool)));
    let pt = c.g.mul(pool, t).unwrap();
    let loss =
        c.g.reduce(ReduceOp::Sum, pt, vec![0, 1, 2, 3], false)
            .unwrap();
    let grads = nnc_passes::autodiff::gradients(&mut c.g, loss, &[x, b]).unwrap();
    c.out("pool", pool, EXACT);
    c.out("loss", loss, SUM);
    c.out("grad x", grads[0], SUM);
    c.out("grad b", grads[1], SUM);
    c.g.prune();
    (c, grads[0])
}

#[test]
fn max_pool_backward_folds_its_mask_and_share_in_one_loop() {
    let cases = [
        // Windows that tile the image: the fold stores each element.
        ("2x2 stride 2", [2, 3, 8, 8], window(2, 2, 0)),
        // Overlapping windows with padding, and a size the stride does not
        // divide: the fold adds into a zeroed image.
        ("3x3 stride 2 pad 1", [2, 3, 9, 9], window(3, 2, 1)),
        ("2x2 stride 2 on 7x7", [2, 5, 7, 7], window(2, 2, 0)),
    ];
    for (seed, (name, image, w)) in (10..).zip(cases) {
        let (c, _) = max_pool_case(name, image, w, seed);
        let jit = c.check();
        let labels: Vec<&str> = kernels(&jit).iter().map(|k| k.label.as_str()).collect();
        let ops = |op: &str| labels.iter().filter(|l| l.starts_with(op)).count();
        // Forward: the unfold computes relu(x + b); backward: the count
        // reduces the mask, the divide stays (broadcast 4-9 times into its
        // reader), the fold computes mask * share; no mask, multiply or
        // relu kernels.
        assert_eq!(
            (
                ops("unfold "),
                ops("fold "),
                ops("cast"),
                ops("mul"),
                ops("max ")
            ),
            (1, 1, 0, 0, 0),
            "{name}: {labels:#?}"
        );
        let fold = kernels(&jit)
            .into_iter()
            .find(|k| k.label.starts_with("fold "))
            .unwrap();
        assert!(fold.label.ends_with("+3 inline"), "{name}: {}", fold.label);
    }
}

/// A one-layer regression model trained with Adam (and weight decay).
fn adam_case() -> Case {
    let mut rng = Rng(5);
    let mut c = Case::new("adam");
    let x = c.input("x", rng.tensor(&[16, 9]));
    let t = c.input("t", rng.tensor(&[16, 5]));
    let w = c.param("w", rng.tensor(&[9, 5]));
    let b = c.param("b", rng.tensor(&[5]));
    let y = c.g.matmul(x, w).unwrap();
    let y = c.g.add_(y, b).unwrap();
    let e = c.g.sub(y, t).unwrap();
    let ee = c.g.mul(e, e).unwrap();
    let loss = c.g.reduce(ReduceOp::Mean, ee, vec![0, 1], false).unwrap();
    c.g.set_output(nnc_ir::LOSS, loss);
    let mut step = nnc_passes::build_train_step(&c.g, &ADAM).unwrap();
    step.name = "adam".into();
    c.g = step;
    c.outputs.push((nnc_ir::LOSS.into(), SUM));
    feed_adam_hyper(&mut c.env, 0);
    for name in ["w", "b"] {
        let shape = c.env.get(name).unwrap().shape.clone();
        for slot in ["adam_m", "adam_v"] {
            let zeros = Tensor::from_vec(DType::F32, &shape, vec![0.0; shape.iter().product()]);
            c.env.insert(format!("{name}.{slot}"), zeros.unwrap());
        }
    }
    c.env.insert(
        "adam.step",
        Tensor::from_vec(DType::I32, &[], vec![0.0]).unwrap(),
    );
    c
}

const ADAM: Optimizer = Optimizer::Adam {
    lr: 1e-2,
    beta1: 0.9,
    beta2: 0.999,
    eps: 1e-8,
    weight_decay: 1e-2,
};

/// Adam's per-step scalars, as the runtime feeds them before each step.
fn feed_adam_hyper(env: &mut nnc_ir::Env, steps_taken: u64) {
    for (name, value) in ADAM.hyper_inputs(ADAM.lr(), steps_taken).iter() {
        env.insert(name, Tensor::scalar(DType::F32, value));
    }
}

#[test]
fn adam_updates_each_param_in_one_loop_in_place() {
    let c = adam_case();
    for config in [GroupConfig::greedy(), GroupConfig::default()] {
        let mut jit = c.compile(&config);
        let mut env = c.env.clone();
        for run in 0..4 {
            feed_adam_hyper(&mut env, run);
            feed(&mut jit, &c.g, &env);
            jit.program.run().unwrap();
            let want = interp::step(&c.g, &mut env, EvalOptions::F32).unwrap();
            let loss = jit.program.output(nnc_ir::LOSS, &jit.state).unwrap();
            assert_close(
                &format!("{config:?} run {run}: loss"),
                &loss,
                want.output(nnc_ir::LOSS).unwrap(),
                SUM,
            );
            for name in [
                "w",
                "b",
                "w.adam_m",
                "w.adam_v",
                "b.adam_m",
                "b.adam_v",
                "adam.step",
            ] {
                let got = jit.state.get(name).unwrap();
                let what = format!("{config:?} run {run}: `{name}`");
                // Gradients are sums: their rounding carries into the state.
                assert_close(&what, &got, env.get(name).unwrap(), SUM);
            }
        }
        let labels: Vec<&str> = jit
            .program
            .kernels()
            .iter()
            .map(|k| k.label.as_str())
            .collect();
        let shape_of = |l: &str| l.split(' ').nth(1).unwrap_or("").to_string();
        let per_param = |shape: &str| labels.iter().filter(|l| shape_of(l) == shape).count();
        if config == GroupConfig::default() {
            // One loop stores m', v' and the param, all in place; the
            // step counter's update too.
            assert_eq!(
                labels.iter().filter(|l| l.starts_with("update ")).count(),
                0
            );
            for shape in ["[9,5]", "[5]"] {
                let adam: Vec<_> = labels
                    .iter()
                    .filter(|l| shape_of(l) == shape && l.starts_with("add,add,sub "))
                    .collect();
                assert_eq!(adam.len(), 1, "{labels:#?}");
            }
            assert_eq!(
                per_param("[9,5]"),
                2,
                "the weight gradient and Adam: {labels:#?}"
            );
        } else {
            // The gradient, the decayed gradient, m', v', the param.
            assert_eq!(per_param("[9,5]"), 5, "{labels:#?}");
        }
    }
}

#[test]
fn in_place_updates_never_read_what_they_overwrote() {
    let mut rng = Rng(6);
    let mut c = Case::new("hazards");
    // `s := -(s^T)` reads its old value at another element: not in place.
    let s = c.param("s", rng.tensor(&[5, 5]));
    let st = c.g.transpose(s, vec![1, 0]).unwrap();
    let s2 = c.g.neg(st).unwrap();
    // `p := p - 0.1 g` in place, unless a later loop reads the old `p`:
    // `q := q + p` comes later and shares no loop with it.
    let p = c.param("p", rng.tensor(&[6]));
    let q = c.param("q", rng.tensor(&[6]));
    let g = c.input("g", rng.tensor(&[6]));
    let lr = c.g.scalar(0.1, DType::F32);
    let d = c.g.mul(lr, g).unwrap();
    let p2 = c.g.sub(p, d).unwrap();
    let pe = c.g.unary(UnaryOp::Exp, p).unwrap();
    let pes = c.g.reduce(ReduceOp::Sum, pe, vec![0], true).unwrap();
    let q2 = c.g.add_(q, pes).unwrap();
    // `r := r * 2` and `a := r` in one step: `a` gets the old `r`.
    let r = c.param("r", rng.tensor(&[3]));
    c.param("a", rng.tensor(&[3]));
    let two = c.g.scalar(2.0, DType::F32);
    let r2 = c.g.mul(r, two).unwrap();
    for (target, value) in [("s", s2), ("p", p2), ("q", q2), ("r", r2), ("a", r)] {
        c.g.updates.push(nnc_ir::Update {
            target: target.into(),
            value,
        });
    }
    for config in [GroupConfig::greedy(), GroupConfig::default()] {
        let mut jit = c.compile(&config);
        let mut env = c.env.clone();
        for run in 0..3 {
            feed(&mut jit, &c.g, &env);
            jit.program.run().unwrap();
            interp::step(&c.g, &mut env, EvalOptions::F32).unwrap();
            for name in ["s", "p", "q", "r", "a"] {
                let got = jit.state.get(name).unwrap();
                let what = format!("{config:?} run {run}: `{name}`");
                assert_close(&what, &got, env.get(name).unwrap(), TRANSC);
            }
        }
    }
}

#[test]
fn a_reshape_no_view_expresses_stores_the_value_under_it() {
    let mut rng = Rng(7);
    let mut c = Case::new("reshape");
    let x = c.input("x", rng.tensor(&[2, 3, 4, 5]));
    let bias = c.param("bias", rng.tensor(&[3, 1, 1]));
    // `x + bias` flattened: the bias leaf is broadcast over the merged
    // dims, which no strided view of it expresses.
    let z = c.g.add_(x, bias).unwrap();
    let flat = c.g.reshape(z, shape_of(&[2, 60])).unwrap();
    let y = c.input("y", rng.tensor(&[2, 60]));
    let e = c.g.mul(flat, y).unwrap();
    c.out("z*y", e, EXACT);
    let s = c.g.reduce(ReduceOp::Sum, flat, vec![1], false).unwrap();
    c.out("sum", s, SUM);
    // A reshape that only splits dims composes with any leaf.
    let split = c.g.reshape(z, shape_of(&[2, 3, 2, 2, 5])).unwrap();
    let sm = c.g.reduce(ReduceOp::Max, split, vec![2], false).unwrap();
    c.out("max split", sm, EXACT);
    let jit = c.check();
    assert!(kernel_storing(&jit, z).is_some(), "{:#?}", kernels(&jit));
}

/// Kernel counts of small graphs under both rules: a change in grouping
/// shows here.
#[test]
fn kernel_counts_of_small_graphs() {
    let count = |c: &Case, config: &GroupConfig| kernels(&c.compile(config)).len();
    let mut rng = Rng(8);

    // A dense layer's forward and loss: matmul; bias + relu fused into
    // the sum (greedy: into one elementwise kernel, then the sum).
    let mut c = Case::new("dense");
    let x = c.input("x", rng.tensor(&[16, 8]));
    let w = c.param("w", rng.tensor(&[8, 4]));
    let b = c.param("b", rng.tensor(&[4]));
    let y = c.g.matmul(x, w).unwrap();
    let y = c.g.add_(y, b).unwrap();
    let zero = c.g.scalar(0.0, DType::F32);
    let r = c.g.binary(BinaryOp::Max, y, zero).unwrap();
    let s = c.g.reduce(ReduceOp::Sum, r, vec![0, 1], false).unwrap();
    c.out("s", s, SUM);
    c.check();
    assert_eq!(
        (
            count(&c, &GroupConfig::greedy()),
            count(&c, &GroupConfig::default())
        ),
        (3, 2)
    );

    // The max-pool case: the unfold computing relu(x + b), the max, the
    // loss, the count of the mask, the share, the fold computing mask *
    // share, the relu gradient and the bias gradient's two sums (greedy
    // adds x + b, relu, the loss's product, the mask, the multiply and
    // the loss gradient's scale).
    let (c, _) = max_pool_case("pool", [2, 3, 8, 8], window(2, 2, 0), 9);
    let counts = (
        count(&c, &GroupConfig::greedy()),
        count(&c, &GroupConfig::default()),
    );
    assert_eq!(
        counts,
        (15, 9),
        "{:#?}",
        kernels(&c.compile(&GroupConfig::default()))
    );

    // The Adam step of a one-layer model (its bias corrections are inputs,
    // computed on the host: the step counter is its only scalar kernel).
    let c = adam_case();
    let counts = (
        count(&c, &GroupConfig::greedy()),
        count(&c, &GroupConfig::default()),
    );
    assert_eq!(
        counts,
        (18, 10),
        "{:#?}",
        kernels(&c.compile(&GroupConfig::default()))
    );
}
