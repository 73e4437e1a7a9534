//! Differential tests of every IR op: the JIT (`nnc_codegen::Program`)
//! against the reference interpreter (`nnc_ir::interp::eval` with
//! `EvalOptions::F32`), which defines the semantics.
//!
//! Each test builds a small graph whose leaves are `Input`s (fed with
//! `set_input_f32/i32`) and `Param`s (written with `StateBuffer::set`),
//! makes the results graph outputs, compiles and runs it once, and compares
//! every `Program::output` with the interpreter's value of the same output.
//! Many results share one graph, so one compile covers many cases.
//!
//! Tolerances (`|got - want| <= abs + rel * |want|`; NaN must meet NaN, and
//! infinities and signed zeros compare with `==`):
//! - `EXACT`: copies, layout ops, casts, integer and bool ops, comparisons,
//!   `max`/`min`, `argmax`, gathers, iota and constants.
//! - `ARITH` (1e-6 rel + 1e-7 abs): f32 `add`/`sub`/`mul`/`div`/`sqrt`,
//!   `scatter_add`.
//! - `TRANSC` (2e-6 rel, + two subnormal ulps so that results that underflow
//!   to subnormals may round differently): `exp`, `log`, `tanh`, `sigmoid`,
//!   `pow`.
//! - `SUM` (1e-5 rel + 1e-5 abs): `matmul` and `reduce_sum`/`reduce_mean`,
//!   which sum in a different order (and `gemm` uses FMA); the inputs of
//!   those tests lie in [-1, 1], so the absolute part only covers sums that
//!   cancel to near zero.
//! - `CHAIN` (1e-5 rel + 1e-6 abs): results of long op chains (the memory
//!   plan test), where per-op rounding differences compound; a clobbered
//!   buffer shows as garbage, far outside it.

use nnc_codegen::{CodegenError, Fault, Program, StateBuffer, StateLayout};
use nnc_ir::interp::{self, Env, EvalOptions};
use nnc_ir::{
    shape_of, BinaryOp, DType, Dim, Graph, Init, Literal, NodeId, Op, ReduceOp, Tensor, TensorType,
    UnaryOp, Window,
};

#[derive(Debug, Clone, Copy)]
struct Tol {
    rel: f64,
    abs: f64,
}

const EXACT: Tol = Tol { rel: 0.0, abs: 0.0 };
const ARITH: Tol = Tol {
    rel: 1e-6,
    abs: 1e-7,
};
/// For results of long chains of ops, where each op's rounding differences
/// propagate (the memory-plan test: a wrong buffer gives garbage, not 1e-5).
const CHAIN: Tol = Tol {
    rel: 1e-5,
    abs: 1e-6,
};
/// Two units of the smallest f32 subnormal, `2^-149`.
const SUBNORMAL_ULPS: f64 = 2.0 * 1.401_298_464_324_817e-45;
const TRANSC: Tol = Tol {
    rel: 2e-6,
    abs: SUBNORMAL_ULPS,
};
const SUM: Tol = Tol {
    rel: 1e-5,
    abs: 1e-5,
};

fn close(got: f64, want: f64, tol: Tol) -> bool {
    if want.is_nan() || got.is_nan() {
        return want.is_nan() && got.is_nan();
    }
    got == want || (got - want).abs() <= tol.abs + tol.rel * want.abs()
}

fn unary_tol(u: UnaryOp) -> Tol {
    match u {
        UnaryOp::Neg | UnaryOp::Abs | UnaryOp::Round | UnaryOp::Detach => EXACT,
        UnaryOp::Sqrt => ARITH,
        UnaryOp::Exp | UnaryOp::Log | UnaryOp::Tanh | UnaryOp::Sigmoid => TRANSC,
    }
}

fn binary_tol(op: BinaryOp) -> Tol {
    match op {
        BinaryOp::Add | BinaryOp::Sub | BinaryOp::Mul | BinaryOp::Div => ARITH,
        BinaryOp::Pow => TRANSC,
        _ => EXACT,
    }
}

// ---- data ----

struct Rng(u64);

impl Rng {
    fn unit(&mut self) -> f64 {
        self.0 = self
            .0
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        (self.0 >> 11) as f64 / (1u64 << 53) as f64
    }
    /// `n` f32 values uniform in `[lo, hi)`.
    fn floats(&mut self, n: usize, lo: f64, hi: f64) -> Vec<f64> {
        (0..n)
            .map(|_| (lo + (hi - lo) * self.unit()) as f32 as f64)
            .collect()
    }
    /// `n` integers uniform in `lo..=hi`.
    fn ints(&mut self, n: usize, lo: i32, hi: i32) -> Vec<f64> {
        (0..n)
            .map(|_| {
                let span = (hi as i64 - lo as i64 + 1) as f64;
                (lo as i64 + (self.unit() * span) as i64) as f64
            })
            .collect()
    }
    fn bools(&mut self, n: usize) -> Vec<f64> {
        (0..n)
            .map(|_| if self.unit() < 0.5 { 0.0 } else { 1.0 })
            .collect()
    }
    /// A tensor of random values for `dtype` (floats in `[-2, 2)`).
    fn tensor(&mut self, dtype: DType, dims: &[usize]) -> Tensor {
        let n = dims.iter().product();
        let data = match dtype {
            DType::F32 | DType::F64 => self.floats(n, -2.0, 2.0),
            DType::I32 => self.ints(n, -50, 50),
            DType::I8 => self.ints(n, -128, 127),
            DType::U8 => self.ints(n, 0, 255),
            DType::Bool => self.bools(n),
        };
        tensor(dtype, dims, data)
    }
    /// f32 values in `[-1, 1)` (for sums and products).
    fn unit_tensor(&mut self, dims: &[usize]) -> Tensor {
        let n = dims.iter().product();
        tensor(DType::F32, dims, self.floats(n, -1.0, 1.0))
    }
}

fn ty(dtype: DType, dims: &[usize]) -> TensorType {
    TensorType::new(dtype, shape_of(dims))
}

fn tensor(dtype: DType, dims: &[usize], data: Vec<f64>) -> Tensor {
    Tensor::from_vec(dtype, dims, data).unwrap()
}

fn f32s(dims: &[usize], data: &[f64]) -> Tensor {
    tensor(
        DType::F32,
        dims,
        data.iter().map(|&v| v as f32 as f64).collect(),
    )
}

fn i32s(dims: &[usize], data: &[i64]) -> Tensor {
    tensor(DType::I32, dims, data.iter().map(|&v| v as f64).collect())
}

fn dims_name(dims: &[usize]) -> String {
    let d: Vec<String> = dims.iter().map(|d| d.to_string()).collect();
    format!("[{}]", d.join(","))
}

/// Every permutation of `0..n`.
fn perms(n: usize) -> Vec<Vec<usize>> {
    if n == 0 {
        return vec![Vec::new()];
    }
    let mut out = Vec::new();
    for p in perms(n - 1) {
        for i in 0..n {
            let mut q = p.clone();
            q.insert(i, n - 1);
            out.push(q);
        }
    }
    out
}

/// Every subset of `0..n`, as sorted axis lists.
fn subsets(n: usize) -> Vec<Vec<usize>> {
    (0..1usize << n)
        .map(|mask| (0..n).filter(|i| mask & (1 << i) != 0).collect())
        .collect()
}

// ---- the harness ----

/// A compiled program with the state buffer it was compiled against. The
/// program is declared first so it is dropped before the state.
struct Jit {
    program: Program,
    state: StateBuffer,
}

/// Lays out the graph's params and state, writes their values from `env`,
/// binds the symbolic dims from `env` and compiles.
fn compile(g: &Graph, env: &Env) -> Result<Jit, CodegenError> {
    let layout = StateLayout::of(&[g])?;
    let mut state = StateBuffer::new(layout);
    for id in g.topo_order() {
        if let Op::Param { name, .. } | Op::State { name, .. } = &g.node(id).op {
            state.set(name, env.get(name).expect("every param has a value"))?;
        }
    }
    let bindings = interp::bind_symbols(g, env).expect("the env binds every symbol");
    let program = Program::compile(g, &bindings, &state)?;
    Ok(Jit { program, state })
}

impl Jit {
    /// Writes every input leaf's value from `env`.
    fn feed(&mut self, g: &Graph, env: &Env) {
        for (_, name) in g.inputs() {
            let t = env.get(name).expect("every input has a value");
            match t.dtype {
                DType::F32 | DType::F64 => {
                    let v: Vec<f32> = t.data.iter().map(|&x| x as f32).collect();
                    self.program.set_input_f32(name, &v).unwrap();
                }
                DType::I32 | DType::I8 | DType::U8 | DType::Bool => {
                    let v: Vec<i32> = t.data.iter().map(|&x| x as i32).collect();
                    self.program.set_input_i32(name, &v).unwrap();
                }
            }
        }
    }

    /// Compares every listed output with the interpreter's value.
    #[track_caller]
    fn compare(&self, case: &str, g: &Graph, env: &Env, outputs: &[(String, Tol)]) {
        let want = interp::eval(g, env, EvalOptions::F32).unwrap();
        for (name, tol) in outputs {
            let w = want.output(name).unwrap();
            let got = self
                .program
                .output(name, &self.state)
                .unwrap_or_else(|| panic!("{case}: the program has no output `{name}`"));
            assert_tensor(&format!("{case}: `{name}`"), &got, w, *tol);
        }
    }
}

#[track_caller]
fn assert_tensor(what: &str, got: &Tensor, want: &Tensor, tol: Tol) {
    assert_eq!(got.dtype, want.dtype, "{what}: dtype");
    assert_eq!(got.shape, want.shape, "{what}: shape");
    for (i, (&g, &w)) in got.data.iter().zip(&want.data).enumerate() {
        assert!(
            close(g, w, tol),
            "{what}: element {i} of {}: jit {g:e} vs interp {w:e} (tolerance {tol:?})\n\
             jit    {:?}\ninterp {:?}",
            dims_name(&want.shape),
            got.data,
            want.data
        );
    }
}

#[derive(Debug, Clone, Copy, PartialEq)]
enum Leaf {
    Input,
    Param,
}

/// A graph under construction with the values of its leaves and the
/// tolerance of each output.
struct Case {
    name: String,
    g: Graph,
    env: Env,
    outputs: Vec<(String, Tol)>,
}

impl Case {
    fn new(name: &str) -> Case {
        Case {
            name: name.to_string(),
            g: Graph::new(name),
            env: Env::new(),
            outputs: Vec::new(),
        }
    }

    /// A leaf declared as `declared` (which may have symbolic dims), fed `value`.
    fn leaf(&mut self, kind: Leaf, name: &str, declared: TensorType, value: Tensor) -> NodeId {
        let id = match kind {
            Leaf::Input => self.g.input(name, declared),
            Leaf::Param => self.g.param(name, declared, Init::Zeros),
        };
        assert!(
            self.env.insert(name, value).is_none(),
            "leaf `{name}` twice"
        );
        id
    }

    fn input(&mut self, name: &str, value: Tensor) -> NodeId {
        let t = ty(value.dtype, &value.shape);
        self.leaf(Leaf::Input, name, t, value)
    }

    fn param(&mut self, name: &str, value: Tensor) -> NodeId {
        let t = ty(value.dtype, &value.shape);
        self.leaf(Leaf::Param, name, t, value)
    }

    fn value(&mut self, kind: Leaf, name: &str, value: Tensor) -> NodeId {
        match kind {
            Leaf::Input => self.input(name, value),
            Leaf::Param => self.param(name, value),
        }
    }

    fn out(&mut self, name: impl Into<String>, node: NodeId, tol: Tol) {
        let name = name.into();
        assert!(self.g.output(&name).is_none(), "output `{name}` twice");
        self.g.set_output(name.clone(), node);
        self.outputs.push((name, tol));
    }

    /// Compiles, runs once and compares every output; returns the program.
    #[track_caller]
    fn check(&self) -> Jit {
        let mut jit = compile(&self.g, &self.env)
            .unwrap_or_else(|e| panic!("{}: compile: {}", self.name, e.message));
        jit.feed(&self.g, &self.env);
        jit.program
            .run()
            .unwrap_or_else(|f| panic!("{}: run: {f}", self.name));
        jit.compare(&self.name, &self.g, &self.env, &self.outputs);
        jit
    }
}

// ---- elementwise ----

/// Inputs that probe the edges of every unary op.
fn extreme_values() -> Vec<f64> {
    vec![
        -100.0,
        -89.0,
        -88.0,
        -10.0,
        -1.0,
        -0.5,
        -1e-30,
        -0.0,
        0.0,
        1e-30,
        1e-40, // subnormal
        0.5,
        1.0,
        2.0,
        10.0,
        88.0,
        89.0,
        100.0,
        3.0e38,
        f64::NAN,
        f64::INFINITY,
        f64::NEG_INFINITY,
        -3.0e38,
    ]
}

#[test]
fn unary_ops_match_on_extreme_and_random_inputs() {
    let mut rng = Rng(1);
    let mut c = Case::new("unary");
    let extreme = extreme_values();
    let x = c.input("x", f32s(&[extreme.len()], &extreme));
    let p = c.param("p", rng.tensor(DType::F32, &[3, 5, 7]));
    // A non-contiguous operand: the kernel walks a transposed view.
    let pt = c.g.transpose(p, vec![2, 0, 1]).unwrap();
    let mut odd = Vec::new();
    for n in [1usize, 3, 4, 5, 7, 17] {
        let t = tensor(DType::F32, &[n], rng.floats(n, -5.0, 5.0));
        odd.push((n, c.input(&format!("v{n}"), t)));
    }
    for &u in UnaryOp::ALL {
        let tol = unary_tol(u);
        let y = c.g.unary(u, x).unwrap();
        c.out(format!("{u}(extreme)"), y, tol);
        let y = c.g.unary(u, p).unwrap();
        c.out(format!("{u}(param)"), y, tol);
        let y = c.g.unary(u, pt).unwrap();
        c.out(format!("{u}(transposed)"), y, tol);
        for &(n, v) in &odd {
            let y = c.g.unary(u, v).unwrap();
            c.out(format!("{u}([{n}])"), y, tol);
        }
    }
    c.check();
}

/// Operand shape pairs: equal, every broadcasting direction, scalars.
const BROADCASTS: &[(&[usize], &[usize])] = &[
    (&[17], &[17]),
    (&[3, 5], &[3, 5]),
    (&[3, 1], &[1, 4]),
    (&[1, 4], &[3, 1]),
    (&[], &[5]),
    (&[5], &[]),
    (&[], &[]),
    (&[2, 3, 4], &[4]),
    (&[7], &[2, 3, 7]),
    (&[2, 1, 5], &[3, 1]),
    (&[7, 1], &[7]),
    (&[1], &[1, 1]),
    (&[2, 3, 1], &[2, 1, 9]),
];

fn binary_case(name: &str, dtype: DType, ops: &[BinaryOp], seed: u64) -> Case {
    let mut rng = Rng(seed);
    let mut c = Case::new(name);
    for (i, (sa, sb)) in BROADCASTS.iter().enumerate() {
        // The second operand is a param wherever its shape is constant.
        let a = c.input(&format!("a{i}"), rng.tensor(dtype, sa));
        let b = c.param(&format!("b{i}"), rng.tensor(dtype, sb));
        for &op in ops {
            let y = c.g.binary(op, a, b).unwrap();
            let tol = binary_tol(op);
            c.out(format!("{op} {}x{}", dims_name(sa), dims_name(sb)), y, tol);
        }
    }
    c
}

#[test]
fn binary_f32_ops_match_with_broadcasting() {
    binary_case("binary f32", DType::F32, BinaryOp::ALL, 2).check();
}

#[test]
fn binary_f32_ops_match_on_special_values() {
    let nan = f64::NAN;
    let inf = f64::INFINITY;
    let a = [
        nan, inf, -inf, 0.0, -0.0, 1.0, 1.0, nan, 2.0, -3.0, 0.0, inf, 5.5, -2.0, -2.0, 0.0, 1e-40,
    ];
    let b = [
        1.0, inf, 2.0, 0.0, 0.0, nan, 1.0, nan, 0.0, -3.0, -0.0, -inf, 5.5, 3.0, 0.5, -1.0, 1e30,
    ];
    let mut c = Case::new("binary f32 specials");
    let x = c.input("a", f32s(&[a.len()], &a));
    let y = c.input("b", f32s(&[b.len()], &b));
    for &op in BinaryOp::ALL {
        let r = c.g.binary(op, x, y).unwrap();
        c.out(format!("{op}(a, b)"), r, binary_tol(op));
        let r = c.g.binary(op, y, x).unwrap();
        c.out(format!("{op}(b, a)"), r, binary_tol(op));
    }
    // pow over a meaningful range: positive bases, mixed exponents.
    let mut rng = Rng(3);
    let base = c.input(
        "base",
        tensor(DType::F32, &[3, 7], rng.floats(21, 0.01, 4.0)),
    );
    let exp = c.param("exp", tensor(DType::F32, &[7], rng.floats(7, -4.0, 4.0)));
    let r = c.g.binary(BinaryOp::Pow, base, exp).unwrap();
    c.out("pow(base, exp)", r, TRANSC);
    let ints = c.input("int exps", f32s(&[5], &[0.0, 1.0, 2.0, 3.0, -1.0]));
    let neg = c.param("neg bases", f32s(&[5, 1], &[-2.0, -0.5, -1.0, 0.0, -3.0]));
    let r = c.g.binary(BinaryOp::Pow, neg, ints).unwrap();
    c.out("pow(negative, integer)", r, TRANSC);
    c.check();
}

const I32_OPS: &[BinaryOp] = &[
    BinaryOp::Add,
    BinaryOp::Sub,
    BinaryOp::Mul,
    BinaryOp::Max,
    BinaryOp::Min,
    BinaryOp::Lt,
    BinaryOp::Le,
    BinaryOp::Gt,
    BinaryOp::Ge,
    BinaryOp::Eq,
    BinaryOp::Ne,
];

#[test]
fn binary_i32_ops_match_with_broadcasting_and_wrapping() {
    binary_case("binary i32", DType::I32, I32_OPS, 4).check();
    // Wrapping at the ends of the range, and equal operands.
    let (min, max) = (i32::MIN as i64, i32::MAX as i64);
    let a = [min, max, max, min, -1, 0, 7, -7, 65536, 3, 3];
    let b = [-1, 1, max, min, min, 0, -7, -7, 65536, -3, 3];
    let mut c = Case::new("binary i32 specials");
    let x = c.input("a", i32s(&[a.len()], &a));
    let y = c.param("b", i32s(&[b.len()], &b));
    for &op in I32_OPS {
        let r = c.g.binary(op, x, y).unwrap();
        c.out(format!("{op}"), r, EXACT);
    }
    c.check();
}

#[test]
fn integer_div_and_pow_are_rejected_with_an_error() {
    for op in [BinaryOp::Div, BinaryOp::Pow] {
        for dims in [&[1usize][..], &[9]] {
            let mut rng = Rng(5);
            let mut c = Case::new("i32 div");
            let a = c.input("a", rng.tensor(DType::I32, dims));
            let b = c.input("b", i32s(dims, &vec![3; dims[0]]));
            let y = c.g.binary(op, a, b).unwrap();
            c.out("y", y, EXACT);
            match compile(&c.g, &c.env) {
                Ok(_) => panic!("integer `{op}` compiled"),
                Err(e) => assert!(
                    e.message.contains(&format!("integer `{op}`"))
                        && e.message.contains("not supported"),
                    "unclear error for integer `{op}`: {}",
                    e.message
                ),
            }
        }
    }
}

#[test]
fn bool_eq_and_ne_match() {
    let mut rng = Rng(6);
    let mut c = Case::new("bool");
    for (i, (sa, sb)) in [
        (&[3usize, 1][..], &[1usize, 4][..]),
        (&[9], &[9]),
        (&[], &[5]),
        (&[17], &[]),
    ]
    .into_iter()
    .enumerate()
    {
        let a = c.input(&format!("a{i}"), rng.tensor(DType::Bool, sa));
        let b = c.param(&format!("b{i}"), rng.tensor(DType::Bool, sb));
        for op in [BinaryOp::Eq, BinaryOp::Ne] {
            let y = c.g.binary(op, a, b).unwrap();
            c.out(
                format!("{op} {}x{}", dims_name(sa), dims_name(sb)),
                y,
                EXACT,
            );
        }
    }
    c.check();
}

#[test]
fn symbolic_batch_dims_bound_to_1_and_5() {
    for batch in [1usize, 5] {
        let mut rng = Rng(7 + batch as u64);
        let mut c = Case::new(&format!("B={batch}"));
        let b = Dim::sym("B");
        let sym = |dtype, rest: &[usize]| {
            TensorType::new(
                dtype,
                std::iter::once(b.clone()).chain(rest.iter().map(|&d| Dim::Const(d))),
            )
        };
        let x = c.leaf(
            Leaf::Input,
            "x",
            sym(DType::F32, &[3]),
            rng.tensor(DType::F32, &[batch, 3]),
        );
        let idx = c.leaf(
            Leaf::Input,
            "idx",
            sym(DType::I32, &[]),
            tensor(DType::I32, &[batch], rng.ints(batch, 0, 5)),
        );
        let w = c.param("w", rng.unit_tensor(&[3, 4]));
        let bias = c.param("bias", rng.tensor(DType::F32, &[4]));
        let table = c.param("table", rng.tensor(DType::F32, &[6, 3]));
        let two = c.g.scalar(2.0, DType::F32);
        let y = c.g.mul(x, two).unwrap();
        c.out("x * 2", y, ARITH);
        let xw = c.g.matmul(x, w).unwrap();
        let y = c.g.add_(xw, bias).unwrap();
        c.out("x @ w + bias", y, SUM);
        let s = c.g.reduce(ReduceOp::Sum, y, vec![1], false).unwrap();
        c.out("sum over 1", s, SUM);
        let m = c.g.reduce(ReduceOp::Max, y, vec![0], true).unwrap();
        c.out("max over B", m, SUM); // of a matmul result
        let mean = c.g.reduce(ReduceOp::Mean, x, vec![0, 1], false).unwrap();
        c.out("mean", mean, SUM);
        let am = c.g.argmax(y, 1).unwrap();
        c.out("argmax", am, EXACT);
        let am0 = c.g.argmax(y, 0).unwrap();
        c.out("argmax over B", am0, EXACT);
        let rows = c.g.gather(table, idx, 0).unwrap();
        c.out("gather", rows, EXACT);
        let back =
            c.g.scatter_add(rows, idx, 0, ty(DType::F32, &[6, 3]))
                .unwrap();
        c.out("scatter_add", back, ARITH);
        let zero = c.g.scalar(0.0, DType::F32);
        let pos = c.g.binary(BinaryOp::Gt, x, zero).unwrap();
        let relu = c.g.select(pos, x, zero).unwrap();
        c.out("relu", relu, EXACT);
        let xi = c.g.cast(x, DType::I32).unwrap();
        c.out("cast", xi, EXACT);
        let xt = c.g.transpose(x, vec![1, 0]).unwrap();
        let nt = c.g.neg(xt).unwrap();
        c.out("neg(x^T)", nt, EXACT);
        let r =
            c.g.reshape(xt, vec![Dim::Const(3), b.clone(), Dim::Const(1)]);
        let r = r.unwrap();
        c.out("reshape(x^T)", r, EXACT);
        let e = c.g.unary(UnaryOp::Exp, x).unwrap();
        c.out("exp", e, TRANSC);
        c.check();
    }
}

#[test]
fn select_with_broadcast_condition() {
    let mut rng = Rng(8);
    let mut c = Case::new("select");
    let c31 = c.input("c31", rng.tensor(DType::Bool, &[3, 1]));
    let c0 = c.param("c0", tensor(DType::Bool, &[], vec![1.0]));
    let c4 = c.input("c4", rng.tensor(DType::Bool, &[4]));
    let a34 = c.param("a34", rng.tensor(DType::F32, &[3, 4]));
    let s = c.input("s", rng.tensor(DType::F32, &[]));
    let b31 = c.input("b31", rng.tensor(DType::F32, &[3, 1]));
    let i34 = c.input("i34", rng.tensor(DType::I32, &[3, 4]));
    let i1 = c.param("i1", rng.tensor(DType::I32, &[1]));
    let y = c.g.select(c31, a34, s).unwrap();
    c.out("select([3,1], [3,4], [])", y, EXACT);
    let y = c.g.select(c0, s, a34).unwrap();
    c.out("select([], [], [3,4])", y, EXACT);
    let y = c.g.select(c4, a34, b31).unwrap();
    c.out("select([4], [3,4], [3,1])", y, EXACT);
    let y = c.g.select(c31, i34, i1).unwrap();
    c.out("select i32", y, EXACT);
    let y = c.g.select(c4, b31, s).unwrap();
    c.out("select([4], [3,1], [])", y, EXACT);
    // Condition computed in the graph, odd length (vector body + tail).
    let v = c.input("v", rng.tensor(DType::F32, &[17]));
    let w = c.param("w", rng.tensor(DType::F32, &[17]));
    let lt = c.g.binary(BinaryOp::Lt, v, w).unwrap();
    let y = c.g.select(lt, v, w).unwrap();
    c.out("select(v < w, v, w)", y, EXACT);
    let bv = c.input("bv", rng.tensor(DType::Bool, &[17]));
    let bw = c.param("bw", rng.tensor(DType::Bool, &[17]));
    let y = c.g.select(lt, bv, bw).unwrap();
    c.out("select bool", y, EXACT);
    c.check();
}

#[test]
fn casts_between_f32_i32_and_bool() {
    let nan = f64::NAN;
    let inf = f64::INFINITY;
    let floats = [
        -2.7,
        -2.5,
        -1.0,
        -0.9,
        -0.0,
        0.0,
        0.4,
        0.5,
        1.9,
        2.5,
        nan,
        inf,
        -inf,
        3e9,
        -3e9,
        16777217.0,
        1e-40,
        2147483520.0,
        -2147483648.0,
        127.9,
        128.0,
        -128.9,
        -129.0,
        255.5,
        256.0,
    ];
    let ints = [
        -300,
        -129,
        -128,
        127,
        128,
        255,
        256,
        i32::MIN as i64,
        -16777217,
        -5,
        -1,
        0,
        1,
        7,
        16777217,
        i32::MAX as i64,
    ];
    let mut c = Case::new("cast");
    let f = c.input("f", f32s(&[floats.len()], &floats));
    let i = c.input("i", i32s(&[ints.len()], &ints));
    let b = c.param(
        "b",
        tensor(DType::Bool, &[5], vec![0.0, 1.0, 1.0, 0.0, 1.0]),
    );
    let mut rng = Rng(9);
    let p = c.param("p", rng.tensor(DType::F32, &[3, 5]));
    let pt = c.g.transpose(p, vec![1, 0]).unwrap();
    // Quantized values, saturated at their ranges on the way in (never
    // wrapped) and widened exactly on the way out.
    let all = [DType::F32, DType::I32, DType::I8, DType::U8, DType::Bool];
    for (name, x) in [("f32", f), ("i32", i), ("bool", b), ("f32^T", pt)] {
        for to in all {
            let y = c.g.cast(x, to).unwrap();
            c.out(format!("{name} -> {to}"), y, EXACT);
            if to.is_byte() {
                for back in all {
                    let z = c.g.cast(y, back).unwrap();
                    c.out(format!("{name} -> {to} -> {back}"), z, EXACT);
                }
            }
        }
    }
    c.check();
}

#[test]
fn byte_comparisons_and_argmax_run_on_the_widened_values() {
    let a: Vec<f64> = vec![-128.0, -1.0, 0.0, 5.0, 127.0];
    let b: Vec<f64> = vec![0.0, 255.0, 7.0, 128.0, 5.0];
    let mut c = Case::new("bytes");
    let x = c.input("x", tensor(DType::I8, &[5], a));
    let y = c.param("y", tensor(DType::U8, &[5], b));
    let x2 = c.param(
        "x2",
        tensor(DType::I8, &[5], vec![127.0, -1.0, -128.0, 6.0, 127.0]),
    );
    for op in [BinaryOp::Lt, BinaryOp::Eq, BinaryOp::Ge, BinaryOp::Max] {
        let r = c.g.binary(op, x, x2);
        match op.is_comparison() {
            true => c.out(format!("{op}(i8)"), r.unwrap(), EXACT),
            // Arithmetic on quantized values is a type error.
            false => assert!(r.is_err(), "{op} on i8 is refused"),
        }
    }
    let r = c.g.argmax(y, 0).unwrap();
    c.out("argmax(u8)", r, EXACT);
    c.check();
}

// ---- reductions ----

#[test]
fn reductions_over_every_axis_subset() {
    let mut rng = Rng(10);
    let mut c = Case::new("reduce");
    let x = c.param("x", rng.unit_tensor(&[3, 5, 7]));
    // The same data through a transposed view, and a shape whose innermost
    // dim is a multiple of 4 (vector accumulation).
    let xt = c.g.transpose(x, vec![2, 0, 1]).unwrap();
    let y = c.input("y", rng.unit_tensor(&[2, 4, 8]));
    for (name, v) in [("x", x), ("x^T", xt), ("y", y)] {
        for axes in subsets(3) {
            for keepdim in [false, true] {
                for op in [ReduceOp::Sum, ReduceOp::Mean, ReduceOp::Max] {
                    let r = c.g.reduce(op, v, axes.clone(), keepdim).unwrap();
                    let tol = if op == ReduceOp::Max { EXACT } else { SUM };
                    c.out(format!("{op:?} {name} {axes:?} keepdim={keepdim}"), r, tol);
                }
            }
        }
    }
    // Axes listed out of order.
    let r = c.g.reduce(ReduceOp::Sum, x, vec![2, 0], false).unwrap();
    c.out("sum x [2,0]", r, SUM);
    // Max with NaN and infinities: NaN propagates.
    let nan = f64::NAN;
    let inf = f64::INFINITY;
    let m = c.input(
        "m",
        f32s(
            &[3, 6],
            &[
                1.0, nan, 3.0, 2.0, 0.0, -1.0, //
                -inf, -inf, -inf, -inf, -inf, -inf, //
                5.0, 1.0, 2.0, 3.0, 4.0, inf,
            ],
        ),
    );
    for axes in subsets(2) {
        let r = c.g.reduce(ReduceOp::Max, m, axes.clone(), false).unwrap();
        c.out(format!("max m {axes:?}"), r, EXACT);
    }
    c.check();
}

#[test]
fn integer_reductions_are_rejected_with_an_error() {
    let mut rng = Rng(11);
    let mut c = Case::new("reduce i32");
    let x = c.input("x", rng.tensor(DType::I32, &[3, 4]));
    let r = c.g.reduce(ReduceOp::Sum, x, vec![1], false).unwrap();
    c.out("sum", r, EXACT);
    match compile(&c.g, &c.env) {
        Ok(mut jit) => {
            // If the JIT learns integer reductions, they must be right.
            jit.feed(&c.g, &c.env);
            jit.program.run().unwrap();
            jit.compare("reduce i32", &c.g, &c.env, &c.outputs);
        }
        Err(e) => assert!(e.message.contains("f32"), "unclear error: {}", e.message),
    }
}

/// A tensor of one repeated pattern of byte values.
fn pattern(dtype: DType, dims: &[usize], values: &[i64]) -> Tensor {
    let n: usize = dims.iter().product();
    let data = (0..n).map(|i| values[i % values.len()] as f64).collect();
    tensor(dtype, dims, data)
}

/// The extreme values of a byte dtype, the largest in magnitude first.
fn byte_extremes(dtype: DType) -> [i64; 2] {
    match dtype {
        DType::I8 => [-128, 127],
        _ => [255, 0],
    }
}

/// Byte matmuls (`i8`/`u8` operands, any mix) compile and give the
/// interpreter's exact `i32` sums: `nnc_igemm` per product, with the sign
/// corrections of `igemm::igemm_words` for everything but `u8 @ i8`.
#[test]
fn byte_matmul_is_exact() {
    let mut rng = Rng(13);
    let mut c = Case::new("byte matmul");
    let pairs = [
        (DType::U8, DType::I8),
        (DType::I8, DType::I8),
        (DType::U8, DType::U8),
        (DType::I8, DType::U8),
    ];
    let name = |what: &str, ta: DType, tb: DType, dims: &[usize]| {
        format!("{what} {ta} @ {tb} {}", dims_name(dims))
    };
    for (ta, tb) in pairs {
        // Sizes from one element to past igemm's blocks (k > KC = 512,
        // m > MC = 144) and its tiles' edges.
        for (m, k, n) in [
            (1, 1, 1),
            (3, 5, 4),
            (7, 33, 9),
            (64, 300, 17),
            (150, 600, 40),
        ] {
            let what = name("random", ta, tb, &[m, k, n]);
            let a = c.input(&format!("a {what}"), rng.tensor(ta, &[m, k]));
            let b = c.param(&format!("b {what}"), rng.tensor(tb, &[k, n]));
            let r = c.g.matmul(a, b).unwrap();
            assert_eq!(c.g.ty(r).dtype, DType::I32);
            c.out(what, r, EXACT);
        }
        // The largest sums: every value at its extreme (255 · -128 · 1100
        // for u8 @ i8), and alternating extremes, with k over two blocks.
        let (xa, xb) = (byte_extremes(ta), byte_extremes(tb));
        let dims = [9, 1100, 37];
        for (what, va, vb) in [
            ("extreme", &xa[..1], &xb[..1]),
            ("mixed", &xa[..], &[xb[1], xb[0], xb[0]][..]),
        ] {
            let what = name(what, ta, tb, &dims);
            let a = c.input(&format!("a {what}"), pattern(ta, &[9, 1100], va));
            let b = c.param(&format!("b {what}"), pattern(tb, &[1100, 37], vb));
            let r = c.g.matmul(a, b).unwrap();
            c.out(what, r, EXACT);
        }
        // Transposed operands: `a` column-major, `b` column-major, both.
        let (m, k, n) = (13, 70, 21);
        let at = c.input(&name("at", ta, tb, &[]), rng.tensor(ta, &[k, m]));
        let bt = c.param(&name("bt", ta, tb, &[]), rng.tensor(tb, &[n, k]));
        let a = c.input(&name("a", ta, tb, &[]), rng.tensor(ta, &[m, k]));
        let b = c.param(&name("b", ta, tb, &[]), rng.tensor(tb, &[k, n]));
        let a_t = c.g.transpose(at, vec![1, 0]).unwrap();
        let b_t = c.g.transpose(bt, vec![1, 0]).unwrap();
        for (what, x, y) in [("a^T", a_t, b), ("b^T", a, b_t), ("a^T b^T", a_t, b_t)] {
            let r = c.g.matmul(x, y).unwrap();
            c.out(name(what, ta, tb, &[m, k, n]), r, EXACT);
        }
        // Batched: a weight broadcast over the batch, and one per index.
        let x = c.input(&name("x", ta, tb, &[]), rng.tensor(ta, &[2, 3, k]));
        let r = c.g.matmul(x, b).unwrap();
        c.out(name("broadcast weight", ta, tb, &[2, 3, k, n]), r, EXACT);
        let x = c.input(&name("x2", ta, tb, &[]), rng.tensor(ta, &[2, 5, k]));
        let w = c.param(&name("w2", ta, tb, &[]), rng.tensor(tb, &[2, k, n]));
        let r = c.g.matmul(x, w).unwrap();
        c.out(name("batched", ta, tb, &[2, 5, k, n]), r, EXACT);
        // A batch of transposed `a`s against a broadcast `b^T`.
        let xt = c.g.transpose(x, vec![0, 2, 1]).unwrap();
        let y = c.input(&name("y", ta, tb, &[]), rng.tensor(tb, &[2, 5, n]));
        let r = c.g.matmul(xt, y).unwrap();
        c.out(name("batched a^T", ta, tb, &[2, k, 5, n]), r, EXACT);
        // A quantized convolution's form: a weight `[G, O/G, K]` on the
        // left, broadcast over the samples of columns `[N, G, K, L]`.
        let wl = c.param(&name("wl", ta, tb, &[]), rng.tensor(ta, &[2, 4, 27]));
        let cols = c.input(&name("cols", ta, tb, &[]), rng.tensor(tb, &[3, 2, 27, 50]));
        let r = c.g.matmul(wl, cols).unwrap();
        c.out(
            name("weight @ columns", ta, tb, &[3, 2, 4, 27, 50]),
            r,
            EXACT,
        );
    }
    // The quantized dense layer: f32 activations quantized to u8 (scale,
    // zero point 128, round, saturating cast), times i8 weights, the sums
    // dequantized (cast to f32, times a per-column scale) by the kernels
    // around the product; the product itself no output.
    let (m, k, n) = (6, 45, 11);
    let x = c.input("x", rng.tensor(DType::F32, &[2, m, k]));
    let inv = c.g.scalar(70.0, DType::F32);
    let zero = c.g.scalar(128.0, DType::F32);
    let scaled = c.g.binary(BinaryOp::Mul, x, inv).unwrap();
    let shifted = c.g.binary(BinaryOp::Add, scaled, zero).unwrap();
    let rounded = c.g.unary(UnaryOp::Round, shifted).unwrap();
    let q = c.g.cast(rounded, DType::U8).unwrap();
    let w = c.param("wq", rng.tensor(DType::I8, &[k, n]));
    let acc = c.g.matmul(q, w).unwrap();
    let sums = c.g.cast(acc, DType::F32).unwrap();
    let scale = c.param("scale", rng.tensor(DType::F32, &[n]));
    let y = c.g.binary(BinaryOp::Mul, sums, scale).unwrap();
    c.out("dequantized", y, EXACT);
    c.check();
}

/// Byte products large enough to split over two threads: by `igemm`'s
/// columns and rows (one product), and by batch index (a split kernel
/// whose tasks each narrow into their own thread's buffers), with sign
/// corrections; the same on one thread.
#[test]
fn byte_matmul_split_over_two_threads_is_exact() {
    nnc_codegen::set_threads(2).unwrap();
    let mut rng = Rng(44);
    let mut c = Case::new("byte split");
    let p = c.input("p", rng.tensor(DType::U8, &[128, 300]));
    let w1 = c.param("w1", rng.tensor(DType::I8, &[300, 256]));
    let w2 = c.param("w2", rng.tensor(DType::U8, &[300, 20]));
    let m1 = c.g.matmul(p, w1).unwrap();
    c.out("by columns", m1, EXACT);
    let q = c.input("q", rng.tensor(DType::I8, &[700, 300]));
    let m2 = c.g.matmul(q, w2).unwrap();
    c.out("by rows", m2, EXACT);
    let x = c.input("x", rng.tensor(DType::I8, &[4, 64, 128]));
    let y = c.param("y", rng.tensor(DType::U8, &[4, 128, 96]));
    let m3 = c.g.matmul(x, y).unwrap();
    c.out("by batch", m3, EXACT);
    let mut two = c.check();
    two.program.run().unwrap();
    two.compare("byte split, second run", &c.g, &c.env, &c.outputs);
    nnc_codegen::set_threads(1).unwrap();
    let one = c.check();
    for name in ["by columns", "by rows", "by batch"] {
        let a = two.program.output(name, &two.state).unwrap();
        let b = one.program.output(name, &one.state).unwrap();
        assert_eq!(a.data, b.data, "{name}: 1 and 2 threads differ");
    }
}

#[test]
fn argmax_over_each_axis_with_ties_and_nan() {
    let mut rng = Rng(12);
    let mut c = Case::new("argmax");
    // Values in {0, 1, 2}: many ties, the first maximum must win.
    let ties = tensor(DType::F32, &[3, 5, 7], rng.ints(105, 0, 2));
    let x = c.param("x", ties);
    let xt = c.g.transpose(x, vec![1, 2, 0]).unwrap();
    for axis in 0..3 {
        let r = c.g.argmax(x, axis).unwrap();
        c.out(format!("argmax x {axis}"), r, EXACT);
        let r = c.g.argmax(xt, axis).unwrap();
        c.out(format!("argmax x^T {axis}"), r, EXACT);
    }
    let nan = f64::NAN;
    let inf = f64::INFINITY;
    let m = c.input(
        "m",
        f32s(
            &[5, 5],
            &[
                1.0, nan, 3.0, nan, 0.0, // a NaN after a number: the first NaN
                nan, 5.0, 9.0, 1.0, 2.0, // NaN first: index 0
                2.0, 2.0, 2.0, 2.0, 2.0, // all equal: 0
                -inf, -inf, -inf, -inf, -3.0, // -inf ties
                0.0, -0.0, 1.0, inf, inf,
            ],
        ),
    );
    for axis in 0..2 {
        let r = c.g.argmax(m, axis).unwrap();
        c.out(format!("argmax m {axis}"), r, EXACT);
    }
    let one = c.input("one", rng.tensor(DType::F32, &[4, 1]));
    let r = c.g.argmax(one, 1).unwrap();
    c.out("argmax over size 1", r, EXACT);
    let v = c.input("v", rng.tensor(DType::F32, &[17]));
    let r = c.g.argmax(v, 0).unwrap();
    c.out("argmax rank 1", r, EXACT);
    c.check();
}

#[test]
fn argmax_of_i32_matches() {
    let mut c = Case::new("argmax i32");
    let x = c.input(
        "x",
        i32s(
            &[3, 4],
            &[-5, -3, -4, -3, 7, -100, 8, 8, i32::MIN as i64, -1, 0, 1],
        ),
    );
    for axis in 0..2 {
        let r = c.g.argmax(x, axis).unwrap();
        c.out(format!("argmax {axis}"), r, EXACT);
    }
    c.check();
}

// ---- matrix products ----

#[test]
fn matmul_2d_every_small_size() {
    let sizes = [1usize, 2, 3, 4, 5, 7, 17];
    let mut rng = Rng(13);
    let mut c = Case::new("matmul 2d");
    let mut lhs = std::collections::HashMap::new();
    let mut rhs = std::collections::HashMap::new();
    for &m in &sizes {
        for &k in &sizes {
            lhs.insert(
                (m, k),
                c.input(&format!("a{m}x{k}"), rng.unit_tensor(&[m, k])),
            );
            rhs.insert(
                (m, k),
                c.param(&format!("b{m}x{k}"), rng.unit_tensor(&[m, k])),
            );
        }
    }
    for &m in &sizes {
        for &k in &sizes {
            for &n in &sizes {
                let y = c.g.matmul(lhs[&(m, k)], rhs[&(k, n)]).unwrap();
                c.out(format!("[{m},{k}]@[{k},{n}]"), y, SUM);
            }
        }
    }
    c.check();
}

#[test]
fn matmul_batched_broadcast_and_transposed() {
    let mut rng = Rng(14);
    let mut c = Case::new("matmul batched");
    let mm = |c: &mut Case, name: &str, a: NodeId, b: NodeId| {
        let y = c.g.matmul(a, b).unwrap();
        c.out(name, y, SUM);
    };
    let a234 = c.input("a234", rng.unit_tensor(&[2, 3, 4]));
    let b245 = c.param("b245", rng.unit_tensor(&[2, 4, 5]));
    let b45 = c.param("b45", rng.unit_tensor(&[4, 5]));
    let b145 = c.input("b145", rng.unit_tensor(&[1, 4, 5]));
    let a34 = c.input("a34", rng.unit_tensor(&[3, 4]));
    mm(&mut c, "[2,3,4]@[2,4,5]", a234, b245);
    mm(&mut c, "[2,3,4]@[4,5] (folded)", a234, b45);
    mm(&mut c, "[2,3,4]@[1,4,5] (folded)", a234, b145);
    mm(&mut c, "[3,4]@[2,4,5]", a34, b245);
    let a3234 = c.input("a3234", rng.unit_tensor(&[3, 2, 3, 4]));
    mm(&mut c, "[3,2,3,4]@[4,5] (folded, 2 batch dims)", a3234, b45);
    mm(&mut c, "[3,2,3,4]@[2,4,5]", a3234, b245);
    let a2134 = c.input("a2134", rng.unit_tensor(&[2, 1, 3, 4]));
    let b345 = c.param("b345", rng.unit_tensor(&[3, 4, 5]));
    mm(&mut c, "[2,1,3,4]@[3,4,5]", a2134, b345);
    // Transposed operands (strided views into gemm).
    let x43 = c.input("x43", rng.unit_tensor(&[4, 3]));
    let x54 = c.param("x54", rng.unit_tensor(&[5, 4]));
    let at = c.g.transpose(x43, vec![1, 0]).unwrap();
    let bt = c.g.transpose(x54, vec![1, 0]).unwrap();
    mm(&mut c, "[4,3]^T@[4,5]", at, b45);
    mm(&mut c, "[3,4]@[5,4]^T", a34, bt);
    mm(&mut c, "[4,3]^T@[5,4]^T", at, bt);
    let x243 = c.input("x243", rng.unit_tensor(&[2, 4, 3]));
    let a_t = c.g.transpose(x243, vec![0, 2, 1]).unwrap();
    mm(&mut c, "[2,4,3]^T@[2,4,5]", a_t, b245);
    mm(&mut c, "[2,4,3]^T@[4,5]", a_t, b45);
    let x254 = c.param("x254", rng.unit_tensor(&[2, 5, 4]));
    let b_t = c.g.transpose(x254, vec![0, 2, 1]).unwrap();
    mm(&mut c, "[2,3,4]@[2,5,4]^T", a234, b_t);
    // Batch axes swapped: batch stride smaller than the row stride.
    let x324 = c.input("x324", rng.unit_tensor(&[3, 2, 4]));
    let sw = c.g.transpose(x324, vec![1, 0, 2]).unwrap();
    mm(&mut c, "[3,2,4]^(1,0,2)@[4,5]", sw, b45);
    // Strided (sliced) lhs that still folds, and one that must not.
    let x236 = c.input("x236", rng.unit_tensor(&[2, 3, 6]));
    let sk = c.g.slice(x236, 2, 1, 5).unwrap();
    mm(&mut c, "slice k [2,3,6][..,1..5]@[4,5]", sk, b45);
    let x254b = c.input("x254b", rng.unit_tensor(&[2, 5, 4]));
    let sm = c.g.slice(x254b, 1, 1, 4).unwrap();
    mm(&mut c, "slice m [2,5,4][:,1..4]@[4,5]", sm, b45);
    // Broadcast views (stride 0) as operands.
    let bc = c.g.broadcast(a34, shape_of(&[2, 3, 4])).unwrap();
    mm(&mut c, "broadcast([3,4])@[4,5]", bc, b45);
    mm(&mut c, "broadcast([3,4])@[2,4,5]", bc, b245);
    // m = 1 through a transposed [.., k, 1].
    let x241 = c.input("x241", rng.unit_tensor(&[2, 4, 1]));
    let row = c.g.transpose(x241, vec![0, 2, 1]).unwrap();
    mm(&mut c, "[2,4,1]^T@[4,5]", row, b45);
    mm(&mut c, "[2,4,1]^T@[2,4,5]", row, b245);
    // A product feeding a product (buffers reused between gemm calls).
    let h = c.g.matmul(a234, b245).unwrap();
    let b53 = c.param("b53", rng.unit_tensor(&[5, 3]));
    mm(&mut c, "([2,3,4]@[2,4,5])@[5,3]", h, b53);
    c.check();
}

/// A matmul summed over batch dims by its only user accumulates into the
/// sum (`sgemm` sizes): every subset of two batch dims, with and without
/// keepdim, a weight broadcast against the batch, transposed operands; and
/// a product that is also an output, so it is stored and summed separately.
#[test]
fn matmul_summed_over_its_batch_dims() {
    let mut rng = Rng(16);
    let mut c = Case::new("summed matmul");
    let (m, k, n) = (16, 50, 24);
    let a = c.input("a", rng.unit_tensor(&[3, 2, m, k]));
    let b = c.param("b", rng.unit_tensor(&[3, 2, k, n]));
    let w = c.param("w", rng.unit_tensor(&[2, m, k]));
    let bt = c.input("bt", rng.unit_tensor(&[3, 2, n, k]));
    let bt = c.g.transpose(bt, vec![0, 1, 3, 2]).unwrap();
    for (name, x, y) in [("a @ b", a, b), ("w @ b", w, b), ("a @ bt^T", a, bt)] {
        for axes in [vec![0], vec![1], vec![0, 1]] {
            for keepdim in [false, true] {
                let p = c.g.matmul(x, y).unwrap();
                let r = c.g.reduce(ReduceOp::Sum, p, axes.clone(), keepdim).unwrap();
                c.out(format!("sum{axes:?} keepdim {keepdim} of {name}"), r, SUM);
            }
        }
    }
    let p = c.g.matmul(a, b).unwrap();
    c.out("product", p, SUM);
    let r = c.g.reduce(ReduceOp::Sum, p, vec![0], false).unwrap();
    c.out("sum of an output product", r, SUM);
    let mut jit = c.check();
    let labels: Vec<String> = jit
        .program
        .profile()
        .unwrap()
        .into_iter()
        .map(|(l, _)| l)
        .collect();
    let summed = labels
        .iter()
        .filter(|l| l.starts_with("matmul+reduce_sum"))
        .count();
    assert_eq!(summed, 18, "kernels: {labels:?}");

    // The only product of a program runs inside the sum's kernel (which
    // must still get the program's GEMM scratch).
    let mut c = Case::new("lone summed matmul");
    let a = c.input("a", rng.unit_tensor(&[3, m, k]));
    let b = c.param("b", rng.unit_tensor(&[3, k, n]));
    let p = c.g.matmul(a, b).unwrap();
    let r = c.g.reduce(ReduceOp::Sum, p, vec![0], false).unwrap();
    c.out("sum", r, SUM);
    c.check();

    // A weight gradient over stacked steps, `Σ_t h_t^T @ g_t` with
    // `h: [T, B, H]` and `g: [T, B, G]` contiguous: the batch continues the
    // shared dim, so it runs as one `[H, T·B] @ [T·B, G]` product; also
    // over two stacked dims.
    let mut c = Case::new("summed matmul as one deep product");
    let h = c.input("h", rng.unit_tensor(&[6, 32, 40]));
    let g = c.input("g", rng.unit_tensor(&[6, 32, 48]));
    let ht = c.g.transpose(h, vec![0, 2, 1]).unwrap();
    let p = c.g.matmul(ht, g).unwrap();
    let r = c.g.reduce(ReduceOp::Sum, p, vec![0], false).unwrap();
    c.out("sum over steps of h^T @ g", r, SUM);
    let h4 = c.input("h4", rng.unit_tensor(&[3, 2, 32, 40]));
    let g4 = c.input("g4", rng.unit_tensor(&[3, 2, 32, 48]));
    let ht4 = c.g.transpose(h4, vec![0, 1, 3, 2]).unwrap();
    let p = c.g.matmul(ht4, g4).unwrap();
    let r = c.g.reduce(ReduceOp::Sum, p, vec![0, 1], false).unwrap();
    c.out("sum over two stacked dims", r, SUM);
    let jit = c.check();
    let deep = jit
        .program
        .kernels()
        .iter()
        .filter(|k| k.label.starts_with("matmul+reduce_sum"))
        .count();
    assert_eq!(deep, 2, "{:?}", jit.program.kernels());
}

// ---- layout ops ----

#[test]
fn reshape_of_contiguous_and_strided_views() {
    let mut rng = Rng(15);
    let mut c = Case::new("reshape");
    let x = c.input("x", rng.tensor(DType::F32, &[3, 4]));
    let to = |dims: &[usize]| shape_of(dims);
    for dims in [&[2usize, 6][..], &[12], &[4, 3], &[1, 12, 1], &[2, 2, 3]] {
        let r = c.g.reshape(x, to(dims)).unwrap();
        c.out(format!("reshape [3,4] -> {}", dims_name(dims)), r, EXACT);
        let n = c.g.neg(r).unwrap();
        c.out(
            format!("neg(reshape [3,4] -> {})", dims_name(dims)),
            n,
            EXACT,
        );
    }
    // A transposed view is not contiguous: reshape materializes it.
    let xt = c.g.transpose(x, vec![1, 0]).unwrap();
    for dims in [&[12usize][..], &[2, 6], &[6, 2], &[3, 2, 2], &[4, 3, 1]] {
        let r = c.g.reshape(xt, to(dims)).unwrap();
        c.out(format!("reshape [3,4]^T -> {}", dims_name(dims)), r, EXACT);
        let n = c.g.neg(r).unwrap();
        c.out(
            format!("neg(reshape [3,4]^T -> {})", dims_name(dims)),
            n,
            EXACT,
        );
    }
    // A slice with a gap between rows, a broadcast (stride 0), rank 3 and i32.
    let s = c.g.slice(x, 1, 1, 3).unwrap();
    let r = c.g.reshape(s, to(&[6])).unwrap();
    c.out("reshape slice -> [6]", r, EXACT);
    let row = c.param("row", rng.tensor(DType::F32, &[4]));
    let bc = c.g.broadcast(row, to(&[3, 4])).unwrap();
    let r = c.g.reshape(bc, to(&[2, 6])).unwrap();
    c.out("reshape broadcast -> [2,6]", r, EXACT);
    let y = c.param("y", rng.tensor(DType::I32, &[2, 3, 5]));
    let yt = c.g.transpose(y, vec![2, 0, 1]).unwrap();
    let r = c.g.reshape(yt, to(&[5, 6])).unwrap();
    c.out("reshape i32 [2,3,5]^(2,0,1) -> [5,6]", r, EXACT);
    let r2 = c.g.reshape(r, to(&[30])).unwrap();
    c.out("reshape of a reshape", r2, EXACT);
    // A contiguous slice (offset, no gap) stays a view.
    let s0 = c.g.slice(x, 0, 1, 3).unwrap();
    let r = c.g.reshape(s0, to(&[8])).unwrap();
    c.out("reshape row slice -> [8]", r, EXACT);
    c.check();
}

#[test]
fn transpose_every_perm_of_rank_2_3_4() {
    let mut rng = Rng(16);
    let mut c = Case::new("transpose");
    for dims in [&[3usize, 5][..], &[2, 3, 5], &[2, 3, 4, 5]] {
        let name = dims_name(dims);
        let x = c.input(&format!("x{name}"), rng.tensor(DType::F32, dims));
        let i = c.param(&format!("i{name}"), rng.tensor(DType::I32, dims));
        for perm in perms(dims.len()) {
            let t = c.g.transpose(x, perm.clone()).unwrap();
            c.out(format!("{name}^{perm:?}"), t, EXACT);
            // Through a kernel: a strided read, a contiguous write.
            let n = c.g.neg(t).unwrap();
            c.out(format!("neg({name}^{perm:?})"), n, EXACT);
            let ti = c.g.transpose(i, perm.clone()).unwrap();
            let f = c.g.cast(ti, DType::F32).unwrap();
            c.out(format!("cast(i{name}^{perm:?})"), f, EXACT);
        }
    }
    // Transpose of a transpose.
    let y = c.input("y", rng.tensor(DType::F32, &[2, 3, 4]));
    let t1 = c.g.transpose(y, vec![2, 0, 1]).unwrap();
    let t2 = c.g.transpose(t1, vec![2, 0, 1]).unwrap();
    let n = c.g.neg(t2).unwrap();
    c.out("neg(y^T^T)", n, EXACT);
    c.check();
}

#[test]
fn broadcast_op() {
    let mut rng = Rng(17);
    let mut c = Case::new("broadcast");
    let cases: &[(&[usize], &[usize])] = &[
        (&[], &[5]),
        (&[3, 1], &[2, 3, 4]),
        (&[4], &[3, 4]),
        (&[1, 4], &[5, 4]),
        (&[3, 1], &[3, 17]),
        (&[1], &[1, 1, 7]),
    ];
    for (i, (from, to)) in cases.iter().enumerate() {
        let x = c.value(
            if i % 2 == 0 { Leaf::Input } else { Leaf::Param },
            &format!("x{i}"),
            rng.tensor(DType::F32, from),
        );
        let b = c.g.broadcast(x, shape_of(to)).unwrap();
        let what = format!("{} -> {}", dims_name(from), dims_name(to));
        c.out(format!("broadcast {what}"), b, EXACT);
        let n = c.g.neg(b).unwrap();
        c.out(format!("neg(broadcast {what})"), n, EXACT);
        let xi = c.input(&format!("i{i}"), rng.tensor(DType::I32, from));
        let bi = c.g.broadcast(xi, shape_of(to)).unwrap();
        let f = c.g.cast(bi, DType::F32).unwrap();
        c.out(format!("cast(broadcast i32 {what})"), f, EXACT);
    }
    c.check();
}

#[test]
fn slice_on_each_axis() {
    let mut rng = Rng(18);
    let mut c = Case::new("slice");
    let x = c.input("x", rng.tensor(DType::F32, &[3, 5, 7]));
    let p = c.param("p", rng.tensor(DType::I32, &[3, 5, 7]));
    let ranges: &[(usize, usize, usize)] = &[
        (0, 0, 1),
        (0, 1, 3),
        (0, 0, 3),
        (1, 2, 5),
        (1, 1, 4),
        (1, 4, 5),
        (2, 3, 7),
        (2, 0, 5),
        (2, 6, 7),
        (2, 1, 6),
    ];
    for &(axis, start, end) in ranges {
        let what = format!("axis {axis} {start}..{end}");
        let s = c.g.slice(x, axis, start, end).unwrap();
        c.out(format!("slice {what}"), s, EXACT);
        let n = c.g.neg(s).unwrap();
        c.out(format!("neg(slice {what})"), n, EXACT);
        let si = c.g.slice(p, axis, start, end).unwrap();
        let f = c.g.cast(si, DType::F32).unwrap();
        c.out(format!("cast(slice i32 {what})"), f, EXACT);
    }
    // Slice of a slice, and of a transposed view.
    let s1 = c.g.slice(x, 2, 1, 6).unwrap();
    let s2 = c.g.slice(s1, 1, 1, 4).unwrap();
    let s3 = c.g.slice(s2, 2, 2, 5).unwrap();
    let n = c.g.neg(s3).unwrap();
    c.out("neg(slice of slice of slice)", n, EXACT);
    let xt = c.g.transpose(x, vec![2, 1, 0]).unwrap();
    let st = c.g.slice(xt, 0, 2, 6).unwrap();
    let n = c.g.neg(st).unwrap();
    c.out("neg(slice of x^T)", n, EXACT);
    c.check();
}

#[test]
fn concat_of_three_operands_on_each_axis() {
    let mut rng = Rng(19);
    let mut c = Case::new("concat");
    let base = [2usize, 3, 4];
    for axis in 0..3 {
        let sizes = [base[axis], 1, 5];
        let mut parts = Vec::new();
        let mut parts_i = Vec::new();
        for (j, &s) in sizes.iter().enumerate() {
            let mut dims = base;
            dims[axis] = s;
            let kind = if j == 1 { Leaf::Param } else { Leaf::Input };
            let name = format!("a{axis}_{j}");
            let v = if j == 2 {
                // The third operand is a transposed (strided) view.
                let mut rev = dims;
                rev.reverse();
                let t = c.value(kind, &name, rng.tensor(DType::F32, &rev));
                c.g.transpose(t, vec![2, 1, 0]).unwrap()
            } else {
                c.value(kind, &name, rng.tensor(DType::F32, &dims))
            };
            parts.push(v);
            let vi = c.value(kind, &format!("i{axis}_{j}"), rng.tensor(DType::I32, &dims));
            parts_i.push(vi);
        }
        let y = c.g.concat(&parts, axis).unwrap();
        c.out(format!("concat f32 axis {axis}"), y, EXACT);
        let y = c.g.concat(&parts_i, axis).unwrap();
        c.out(format!("concat i32 axis {axis}"), y, EXACT);
    }
    let b0 = c.input("b0", rng.tensor(DType::Bool, &[3]));
    let b1 = c.param("b1", rng.tensor(DType::Bool, &[7]));
    let b2 = c.input("b2", rng.tensor(DType::Bool, &[1]));
    let y = c.g.concat(&[b0, b1, b2], 0).unwrap();
    c.out("concat bool", y, EXACT);
    let y = c.g.concat(&[b1, b1, b1], 0).unwrap();
    c.out("concat of one operand thrice", y, EXACT);
    c.check();
}

// ---- indexing ----

#[test]
fn gather_and_scatter_add_with_duplicate_indices() {
    let mut rng = Rng(20);
    let mut c = Case::new("gather");
    let data = c.param("data", rng.tensor(DType::F32, &[5, 4]));
    let idx0 = c.input("idx0", i32s(&[7], &[4, 0, 4, 2, 2, 1, 4]));
    let g0 = c.g.gather(data, idx0, 0).unwrap();
    c.out("gather axis 0", g0, EXACT);
    let idx1 = c.input("idx1", i32s(&[2, 3], &[3, 0, 3, 1, 1, 2]));
    let g1 = c.g.gather(data, idx1, 1).unwrap();
    c.out("gather axis 1 (2-D indices)", g1, EXACT);
    let g2 = c.g.gather(data, idx1, 0).unwrap();
    c.out("gather axis 0 (2-D indices)", g2, EXACT);
    let d3 = c.input("d3", rng.tensor(DType::F32, &[3, 4, 5]));
    let idx6 = c.param("idx6", i32s(&[6], &[3, 3, 0, 1, 3, 2]));
    let g = c.g.gather(d3, idx6, 1).unwrap();
    c.out("gather rank 3 axis 1", g, EXACT);
    let idx_s = c.input("idx_s", i32s(&[], &[4]));
    let g = c.g.gather(d3, idx_s, 2).unwrap();
    c.out("gather rank 3 axis 2 scalar index", g, EXACT);
    let di = c.param("di", rng.tensor(DType::I32, &[5, 3]));
    let g = c.g.gather(di, idx0, 0).unwrap();
    c.out("gather i32", g, EXACT);
    let dt = c.g.transpose(d3, vec![2, 0, 1]).unwrap();
    let g = c.g.gather(dt, idx0, 0).unwrap();
    c.out("gather from transposed view", g, EXACT);
    // The embedding pattern: a 17-wide table, a long index list.
    let emb = c.param("emb", rng.tensor(DType::F32, &[6, 17]));
    let ids = c.input("ids", tensor(DType::I32, &[11], rng.ints(11, 0, 5)));
    let g = c.g.gather(emb, ids, 0).unwrap();
    c.out("embedding", g, EXACT);

    // scatter_add accumulates duplicates.
    let u0 = c.input("u0", rng.tensor(DType::F32, &[7, 4]));
    let s =
        c.g.scatter_add(u0, idx0, 0, ty(DType::F32, &[5, 4]))
            .unwrap();
    c.out("scatter_add axis 0", s, ARITH);
    let u1 = c.param("u1", rng.tensor(DType::F32, &[5, 2, 3]));
    let s =
        c.g.scatter_add(u1, idx1, 1, ty(DType::F32, &[5, 4]))
            .unwrap();
    c.out("scatter_add axis 1 (2-D indices)", s, ARITH);
    let s =
        c.g.scatter_add(g0, idx0, 0, ty(DType::F32, &[5, 4]))
            .unwrap();
    c.out("scatter_add of a gather", s, ARITH);
    let ge = c.g.gather(emb, ids, 0).unwrap();
    let s =
        c.g.scatter_add(ge, ids, 0, ty(DType::F32, &[6, 17]))
            .unwrap();
    c.out("embedding gradient", s, ARITH);
    c.check();
}

#[test]
fn scatter_add_of_i32_matches() {
    let mut c = Case::new("scatter_add i32");
    let idx = c.input("idx", i32s(&[5], &[1, 0, 1, 1, 3]));
    let u = c.input("u", i32s(&[5, 2], &[1, 2, 3, 4, 5, 6, -7, 8, 100, -100]));
    let s = c.g.scatter_add(u, idx, 0, ty(DType::I32, &[4, 2])).unwrap();
    c.out("scatter_add i32", s, EXACT);
    c.check();
}

#[test]
fn out_of_range_index_faults_and_the_next_run_succeeds() {
    let mut rng = Rng(21);
    let mut c = Case::new("fault");
    let data = c.param("data", rng.tensor(DType::F32, &[3, 4]));
    let idx = c.input("idx", i32s(&[3], &[0, 2, 1]));
    let g = c.g.gather(data, idx, 0).unwrap();
    c.out("gather", g, EXACT);
    let u = c.input("u", rng.tensor(DType::F32, &[3, 4]));
    let s = c.g.scatter_add(u, idx, 0, ty(DType::F32, &[3, 4])).unwrap();
    c.out("scatter_add", s, ARITH);
    let mut jit = c.check();
    for bad in [[0, 3, 1], [-1, 0, 0], [0, 1, i32::MAX], [i32::MIN, 0, 0]] {
        jit.program.set_input_i32("idx", &bad).unwrap();
        assert_eq!(
            jit.program.run(),
            Err(Fault::IndexOutOfRange),
            "index {bad:?}"
        );
        // The interpreter agrees that this is an error.
        let mut env = c.env.clone();
        env.insert("idx", i32s(&[3], &bad.map(i64::from)));
        assert!(matches!(
            interp::eval(&c.g, &env, EvalOptions::F32),
            Err(interp::EvalError::IndexOutOfRange { .. })
        ));
        // A valid run afterwards succeeds and is right.
        let mut env = c.env.clone();
        env.insert("idx", i32s(&[3], &[2, 2, 0]));
        jit.feed(&c.g, &env);
        assert_eq!(jit.program.run(), Ok(()));
        jit.compare("after a fault", &c.g, &env, &c.outputs);
    }
}

// ---- leaves ----

#[test]
fn iota_and_constants() {
    let mut c = Case::new("constants");
    let i0 = c.g.iota(0, ty(DType::F32, &[3, 4])).unwrap();
    c.out("iota f32 axis 0", i0, EXACT);
    let i1 = c.g.iota(1, ty(DType::F32, &[3, 4])).unwrap();
    c.out("iota f32 axis 1", i1, EXACT);
    let i2 = c.g.iota(2, ty(DType::I32, &[2, 3, 5])).unwrap();
    c.out("iota i32 axis 2", i2, EXACT);
    let i3 = c.g.iota(1, ty(DType::I32, &[2, 3, 5])).unwrap();
    c.out("iota i32 axis 1", i3, EXACT);
    let dense = |c: &mut Case, dtype, dims: &[usize], v: Vec<f64>| {
        c.g.add(Op::Const(Literal::Dense(v)), &[], Some(ty(dtype, dims)))
            .unwrap()
    };
    let d = dense(
        &mut c,
        DType::F32,
        &[2, 3],
        vec![1.5, -2.0, 0.1, 1e-40, -0.0, 7.0],
    );
    c.out("dense f32", d, EXACT);
    let di = dense(&mut c, DType::I32, &[5], vec![-3.0, 0.0, 2.0, 9.0, 2.7]);
    c.out("dense i32", di, EXACT);
    let db = dense(&mut c, DType::Bool, &[4], vec![0.0, 1.0, 1.0, 0.0]);
    c.out("dense bool", db, EXACT);
    let s = c.g.splat(-1.25, ty(DType::F32, &[7]));
    c.out("splat f32", s, EXACT);
    let s = c.g.splat(3.0, ty(DType::I32, &[2, 2]));
    c.out("splat i32", s, EXACT);
    let s = c.g.scalar(1.0, DType::Bool);
    c.out("splat bool", s, EXACT);
    // Constants as operands, next to inputs.
    let mut rng = Rng(22);
    let x = c.input("x", rng.tensor(DType::F32, &[3, 4]));
    let y = c.g.mul(x, i0).unwrap();
    let y = c.g.add_(y, i1).unwrap();
    c.out("x * iota0 + iota1", y, ARITH);
    let xs = c.g.slice(x, 0, 0, 2).unwrap();
    let xs = c.g.slice(xs, 1, 0, 3).unwrap();
    let y = c.g.mul(xs, d).unwrap();
    c.out("x[..2,..3] * dense", y, ARITH);
    let pi = c.g.scalar(3.25, DType::F32);
    let y = c.g.add_(x, pi).unwrap();
    c.out("x + 3.25", y, ARITH);
    c.check();
}

#[test]
fn non_normalized_bool_constants_match() {
    // The interpreter normalizes every bool value to 0/1 (`x != 0`).
    let mut c = Case::new("bool constants");
    let db =
        c.g.add(
            Op::Const(Literal::Dense(vec![0.0, 2.0, -1.0, 0.5, f64::NAN])),
            &[],
            Some(ty(DType::Bool, &[5])),
        )
        .unwrap();
    c.out("dense bool", db, EXACT);
    let t = c.g.scalar(1.0, DType::Bool);
    let eq = c.g.binary(BinaryOp::Eq, db, t).unwrap();
    c.out("dense == true", eq, EXACT);
    let s = c.g.splat(2.0, ty(DType::Bool, &[3]));
    let f = c.g.cast(s, DType::F32).unwrap();
    c.out("cast(splat 2 as bool)", f, EXACT);
    // A bool param written through `StateBuffer::set` is normalized too.
    let p = c.param("p", tensor(DType::Bool, &[3], vec![0.0, 2.0, -1.0]));
    c.out("bool param", p, EXACT);
    let f = c.g.cast(p, DType::I32).unwrap();
    c.out("cast(bool param)", f, EXACT);
    c.check();
}

#[test]
fn leaves_as_outputs() {
    let mut rng = Rng(23);
    let mut c = Case::new("leaves");
    let x = c.input("x", rng.tensor(DType::F32, &[3, 5]));
    let p = c.param("p", rng.tensor(DType::F32, &[5, 3]));
    let i = c.param("i", rng.tensor(DType::I32, &[4]));
    c.out("input", x, EXACT);
    c.out("param", p, EXACT);
    c.out("i32 param", i, EXACT);
    let pt = c.g.transpose(p, vec![1, 0]).unwrap();
    c.out("param^T", pt, EXACT);
    let s = c.g.add_(x, pt).unwrap();
    c.out("x + p^T", s, ARITH);
    c.check();
}

// ---- whole programs ----

#[test]
fn memory_plan_reuses_buffers_correctly() {
    let mut rng = Rng(24);
    let mut c = Case::new("chain");
    let x = c.input("x", rng.tensor(DType::F32, &[4, 33]));
    let w = c.param("w", rng.tensor(DType::F32, &[33]));
    let half = c.g.scalar(0.5, DType::F32);
    // A long elementwise chain: each intermediate dies right after its use.
    let mut h = c.g.mul(x, w).unwrap();
    let a1 = h;
    let early_t = c.g.transpose(a1, vec![1, 0]).unwrap(); // a view kept alive
    let early_s = c.g.slice(a1, 1, 3, 20).unwrap(); // another view of a1
    let _dead = c.g.unary(UnaryOp::Exp, a1).unwrap(); // computed, never read
    let mut skip = h;
    for i in 0..14 {
        h = match i % 5 {
            0 => c.g.unary(UnaryOp::Tanh, h).unwrap(),
            1 => c.g.add_(h, w).unwrap(),
            2 => c.g.mul(h, half).unwrap(),
            3 => c.g.unary(UnaryOp::Sigmoid, h).unwrap(),
            _ => c.g.sub(h, x).unwrap(),
        };
        if i == 2 {
            skip = h;
        }
    }
    let y = c.g.add_(h, skip).unwrap();
    c.out("chain + skip", y, CHAIN);
    let yt = c.g.transpose(y, vec![1, 0]).unwrap();
    let z = c.g.add_(yt, early_t).unwrap();
    c.out("late use of an early view", z, CHAIN);
    let s = c.g.slice(h, 1, 3, 20).unwrap();
    let z2 = c.g.mul(s, early_s).unwrap();
    c.out("late use of an early slice", z2, CHAIN);
    // A reduction and a product in the middle of the chain.
    let r = c.g.reduce(ReduceOp::Sum, z, vec![0], true).unwrap();
    let m = c.param("m", rng.unit_tensor(&[4, 6]));
    let q = c.g.matmul(r, m).unwrap();
    let q2 = c.g.unary(UnaryOp::Tanh, q).unwrap();
    let q3 = c.g.mul(q2, q).unwrap();
    c.out("tail", q3, CHAIN);
    let mut jit = c.check();
    assert!(
        jit.program.stats.arena_bytes < jit.program.stats.unshared_bytes,
        "no buffer was reused: {:?}",
        jit.program.stats
    );
    // Run again with other inputs: constants and params are not clobbered.
    for seed in [25, 26] {
        let mut env = c.env.clone();
        env.insert("x", Rng(seed).tensor(DType::F32, &[4, 33]));
        jit.feed(&c.g, &env);
        jit.program.run().unwrap();
        jit.compare("chain, rerun", &c.g, &env, &c.outputs);
    }
}

#[test]
fn updates_write_state_and_the_next_run_sees_them() {
    let mut rng = Rng(27);
    let mut c = Case::new("update");
    let w = c.param("w", rng.tensor(DType::F32, &[5]));
    let m = c.param("m", rng.tensor(DType::F32, &[2, 3]));
    let step = c.leaf(
        Leaf::Param,
        "step",
        TensorType::scalar(DType::I32),
        tensor(DType::I32, &[], vec![0.0]),
    );
    // `step` is declared as a state tensor, the way optimizers keep counters.
    c.g.node_mut(step).op = Op::State {
        name: "step".into(),
        init: Init::Zeros,
    };
    let x = c.input("x", rng.tensor(DType::F32, &[5]));
    let y = c.g.mul(w, x).unwrap();
    c.out("y", y, ARITH);
    let one = c.g.scalar(1.0, DType::I32);
    let next_step = c.g.add_(step, one).unwrap();
    c.out("step + 1", next_step, EXACT);
    let lr = c.g.scalar(0.1, DType::F32);
    let dw = c.g.mul(x, lr).unwrap();
    let new_w = c.g.sub(w, dw).unwrap();
    // The new `m` is a transposed view of a computed value.
    let mt = c.g.transpose(m, vec![1, 0]).unwrap();
    let m2 = c.g.unary(UnaryOp::Neg, mt).unwrap();
    let new_m = c.g.transpose(m2, vec![1, 0]).unwrap();
    c.g.updates.push(nnc_ir::Update {
        target: "w".into(),
        value: new_w,
    });
    c.g.updates.push(nnc_ir::Update {
        target: "step".into(),
        value: next_step,
    });
    c.g.updates.push(nnc_ir::Update {
        target: "m".into(),
        value: new_m,
    });
    let mut jit = compile(&c.g, &c.env).unwrap();
    let mut env = c.env.clone();
    for run in 0..3 {
        env.insert("x", Rng(30 + run).tensor(DType::F32, &[5]));
        jit.feed(&c.g, &env);
        jit.program.run().unwrap();
        // The outputs are computed from the state before the update.
        jit.compare(&format!("run {run}"), &c.g, &env, &c.outputs);
        interp::step(&c.g, &mut env, EvalOptions::F32).unwrap();
        for name in ["w", "m", "step"] {
            let got = jit.state.get(name).unwrap();
            let want = env.get(name).unwrap();
            assert_tensor(&format!("run {run}: state `{name}`"), &got, want, ARITH);
        }
    }
    assert_eq!(jit.state.get("step").unwrap().data, vec![3.0]);
}

#[test]
fn updates_read_the_values_from_before_the_step() {
    // `a := b; b := a` swaps: every update value is computed before any
    // state is written (as `interp::run_updates` does).
    let mut c = Case::new("swap");
    let a = c.param("a", f32s(&[3], &[1.0, 2.0, 3.0]));
    let b = c.param("b", f32s(&[3], &[4.0, 5.0, 6.0]));
    let bt = c.g.reshape(b, shape_of(&[3])).unwrap();
    c.g.updates.push(nnc_ir::Update {
        target: "a".into(),
        value: bt,
    });
    c.g.updates.push(nnc_ir::Update {
        target: "b".into(),
        value: a,
    });
    c.out("a", a, EXACT);
    // In place: `s := s^T` would overwrite elements it has yet to read.
    let sq = c.param(
        "s",
        tensor(DType::F32, &[3, 3], (0..9).map(f64::from).collect()),
    );
    let st = c.g.transpose(sq, vec![1, 0]).unwrap();
    c.g.updates.push(nnc_ir::Update {
        target: "s".into(),
        value: st,
    });
    // A param updated from a view of another updated param, and unchanged.
    let w = c.param("w", f32s(&[2, 3], &[1.0, 2.0, 3.0, 4.0, 5.0, 6.0]));
    c.param("u", f32s(&[3], &[7.0, 8.0, 9.0]));
    let w1 = c.g.slice(w, 0, 1, 2).unwrap();
    let w1 = c.g.reshape(w1, shape_of(&[3])).unwrap();
    c.g.updates.push(nnc_ir::Update {
        target: "u".into(),
        value: w1,
    });
    let w2 = c.g.neg(w).unwrap();
    c.g.updates.push(nnc_ir::Update {
        target: "w".into(),
        value: w2,
    });
    let mut jit = compile(&c.g, &c.env).unwrap();
    jit.program.run().unwrap();
    let mut env = c.env.clone();
    interp::step(&c.g, &mut env, EvalOptions::F32).unwrap();
    for name in ["a", "b", "s", "u", "w"] {
        let got = jit.state.get(name).unwrap();
        assert_tensor(
            &format!("state `{name}`"),
            &got,
            env.get(name).unwrap(),
            EXACT,
        );
    }
}

/// Empty tensors: a reduction over no elements gives 0 (sum), NaN (mean)
/// and -inf (max).
#[test]
fn zero_size_slices_and_empty_reductions() {
    let mut rng = Rng(40);
    let mut c = Case::new("zero");
    let x = c.input("x", rng.tensor(DType::F32, &[3, 5, 7]));
    let s = c.g.slice(x, 1, 2, 2).unwrap();
    c.out("empty slice", s, EXACT);
    let n = c.g.neg(s).unwrap();
    c.out("neg(empty slice)", n, EXACT);
    for op in [ReduceOp::Sum, ReduceOp::Mean, ReduceOp::Max] {
        let r = c.g.reduce(op, s, vec![1], false).unwrap();
        c.out(format!("{op:?} over empty"), r, EXACT);
    }
    c.check();
}

// ---- sliding windows and random numbers ----

fn window(kernel: &[usize], stride: &[usize], padding: &[usize], dilation: &[usize]) -> Window {
    Window {
        kernel: kernel.to_vec(),
        stride: stride.to_vec(),
        padding: padding.to_vec(),
        dilation: dilation.to_vec(),
    }
}

/// Every window of `kernel` with strides 1–3, paddings 0–2 and dilations
/// 1–2 (the same along every dim) that fits `spatial`.
fn windows(kernel: &[usize], spatial: &[usize]) -> Vec<Window> {
    let d = kernel.len();
    let mut out = Vec::new();
    for s in 1..=3 {
        for p in 0..=2 {
            for dil in 1..=2 {
                let w = window(kernel, &vec![s; d], &vec![p; d], &vec![dil; d]);
                if (0..d).all(|i| w.out_size(i, spatial[i]).is_some()) {
                    out.push(w);
                }
            }
        }
    }
    out
}

fn window_name(w: &Window) -> String {
    format!(
        "k{:?} s{:?} p{:?} d{:?}",
        w.kernel, w.stride, w.padding, w.dilation
    )
}

/// The unfolded shape `[N, C, *kernel, *out]` of `image` by `w`.
fn unfolded_dims(w: &Window, image: &[usize]) -> Vec<usize> {
    let mut dims = image[..2].to_vec();
    dims.extend(&w.kernel);
    dims.extend((0..w.rank()).map(|i| w.out_size(i, image[2 + i]).unwrap()));
    dims
}

/// Unfold and fold over every window of an odd-sized image, 1-d and 2-d,
/// batch 1 and 3, fill 0 and -inf: in the padding and at every run length
/// the vector paths see (runs of 1–7 and overlapping last vectors).
#[test]
fn unfold_and_fold_over_strides_paddings_and_dilations() {
    let mut rng = Rng(50);
    let mut c = Case::new("unfold/fold");
    let shapes: &[(&[usize], &[usize])] = &[
        (&[1, 2, 7, 5], &[3, 2]),
        (&[3, 1, 5, 7], &[2, 3]),
        (&[2, 3, 11], &[3]),
        (&[1, 1, 9], &[1]),
    ];
    for (si, &(image, kernel)) in shapes.iter().enumerate() {
        let x = c.input(&format!("x{si}"), rng.tensor(DType::F32, image));
        for (wi, w) in windows(kernel, &image[2..]).into_iter().enumerate() {
            let name = format!("{} of {}", window_name(&w), dims_name(image));
            let fill = if wi % 2 == 0 { 0.0 } else { f64::NEG_INFINITY };
            let u = c.g.unfold(x, w.clone(), fill).unwrap();
            c.out(format!("unfold fill {fill} {name}"), u, EXACT);
            let cols_dims = unfolded_dims(&w, image);
            let cols = c.input(
                &format!("cols{si}_{wi}"),
                rng.tensor(DType::F32, &cols_dims),
            );
            let f = c.g.fold(cols, w, ty(DType::F32, image)).unwrap();
            c.out(format!("fold {name}"), f, SUM);
        }
    }
    c.check();
}

/// Operands that are views: a transposed image (scalar rows), a sliced one
/// (an offset), transposed columns into fold; i32 and bool data; a 3-d
/// window; and 1-d kernels longer than the unrolled limit, whose ranges are
/// computed at run time.
#[test]
fn unfold_and_fold_of_views_other_dtypes_and_long_kernels() {
    let mut rng = Rng(51);
    let mut c = Case::new("unfold/fold views");
    let w = window(&[3, 2], &[1, 1], &[1, 2], &[1, 1]);
    let xt = c.param("xt", rng.tensor(DType::F32, &[2, 3, 5, 7]));
    let t = c.g.transpose(xt, vec![0, 1, 3, 2]).unwrap();
    let u = c.g.unfold(t, w.clone(), 0.0).unwrap();
    c.out("unfold of a transposed image", u, EXACT);
    let nc = c.g.transpose(xt, vec![1, 0, 2, 3]).unwrap();
    let u = c.g.unfold(nc, w.clone(), -1.5).unwrap();
    c.out("unfold with N and C swapped", u, EXACT);
    let xs = c.input("xs", rng.tensor(DType::F32, &[2, 3, 9, 6]));
    let s = c.g.slice(xs, 2, 1, 8).unwrap();
    let s = c.g.slice(s, 3, 1, 6).unwrap();
    let u = c.g.unfold(s, w.clone(), 0.0).unwrap();
    c.out("unfold of a slice", u, EXACT);

    // Columns [N, C, kh, kw, oh, ow] stored as [N, C, kh, kw, ow, oh].
    let dims = unfolded_dims(&w, &[2, 3, 7, 5]);
    let mut stored = dims.clone();
    stored.swap(4, 5);
    let ct = c.input("ct", rng.tensor(DType::F32, &stored));
    let cols = c.g.transpose(ct, vec![0, 1, 2, 3, 5, 4]).unwrap();
    let f =
        c.g.fold(cols, w.clone(), ty(DType::F32, &[2, 3, 7, 5]))
            .unwrap();
    c.out("fold of transposed columns", f, SUM);

    let xi = c.input("xi", rng.tensor(DType::I32, &[2, 3, 7, 5]));
    let u = c.g.unfold(xi, w.clone(), -7.0).unwrap();
    c.out("unfold i32", u, EXACT);
    let ci = c.input("ci", rng.tensor(DType::I32, &dims));
    let f =
        c.g.fold(ci, w.clone(), ty(DType::I32, &[2, 3, 7, 5]))
            .unwrap();
    c.out("fold i32", f, EXACT);
    let cb = c.input("cb", rng.tensor(DType::Bool, &dims));
    let f =
        c.g.fold(cb, w.clone(), ty(DType::Bool, &[2, 3, 7, 5]))
            .unwrap();
    c.out("fold bool", f, EXACT);

    let w3 = window(&[2, 3, 2], &[1, 2, 1], &[1, 0, 1], &[1, 1, 2]);
    let x3 = c.input("x3", rng.tensor(DType::F32, &[2, 2, 4, 7, 5]));
    let u = c.g.unfold(x3, w3.clone(), 0.0).unwrap();
    c.out("unfold 3-d", u, EXACT);
    let c3 = c.input(
        "c3",
        rng.tensor(DType::F32, &unfolded_dims(&w3, &[2, 2, 4, 7, 5])),
    );
    let f = c.g.fold(c3, w3, ty(DType::F32, &[2, 2, 4, 7, 5])).unwrap();
    c.out("fold 3-d", f, SUM);

    let x1 = c.input("x1", rng.tensor(DType::F32, &[2, 2, 40]));
    for w in [
        window(&[17], &[1], &[3], &[1]),
        window(&[17], &[2], &[5], &[2]),
        window(&[20], &[3], &[0], &[1]),
    ] {
        let name = window_name(&w);
        let u = c.g.unfold(x1, w.clone(), f64::NEG_INFINITY).unwrap();
        c.out(format!("unfold long kernel {name}"), u, EXACT);
        let cols = c.input(
            &format!("cols {name}"),
            rng.tensor(DType::F32, &unfolded_dims(&w, &[2, 2, 40])),
        );
        let f = c.g.fold(cols, w, ty(DType::F32, &[2, 2, 40])).unwrap();
        c.out(format!("fold long kernel {name}"), f, SUM);
    }
    // An empty image: every window position is padding.
    let x0 = c.input("x0", rng.tensor(DType::F32, &[2, 1, 0]));
    let w0 = window(&[2], &[1], &[1], &[1]);
    let u = c.g.unfold(x0, w0.clone(), -2.0).unwrap();
    c.out("unfold of an empty image", u, EXACT);
    let f = c.g.fold(u, w0, ty(DType::F32, &[2, 1, 0])).unwrap();
    c.out("fold into an empty image", f, EXACT);
    // A long row (more vectors than are unrolled) with padding on both sides.
    let xl = c.input("xl", rng.tensor(DType::F32, &[1, 2, 3, 70]));
    let w = window(&[1, 3], &[1, 1], &[0, 2], &[1, 1]);
    let u = c.g.unfold(xl, w.clone(), 0.0).unwrap();
    c.out("unfold long rows", u, EXACT);
    let f = c.g.fold(u, w, ty(DType::F32, &[1, 2, 3, 70])).unwrap();
    c.out("fold long rows", f, SUM);
    c.check();
}

#[test]
fn malformed_windows_are_errors_not_panics() {
    // A graph from elsewhere (text, a rewrite) may carry a bad window.
    let mut g = Graph::new("bad");
    let x = g.input("x", ty(DType::F32, &[1, 1, 5, 5]));
    let w = window(&[2, 2], &[1, 1], &[0, 0], &[1, 1]);
    let u = g.unfold(x, w, 0.0).unwrap();
    g.set_output("u", u);
    if let Op::Unfold { window, .. } = &mut g.node_mut(u).op {
        window.stride = vec![0, 1];
    }
    let err = compile(
        &g,
        &Env::new().with("x", Tensor::zeros(DType::F32, &[1, 1, 5, 5])),
    );
    assert!(err.is_err());
}

#[test]
fn random_is_bit_identical_to_the_interpreter() {
    let mut c = Case::new("random");
    let keys = [0i64, 1, -1, 123_456_789, i64::from(i32::MIN)];
    for (ki, &k) in keys.iter().enumerate() {
        let key = c.input(&format!("key{ki}"), i32s(&[], &[k]));
        for stream in [0u32, 1, 0xdead_beef] {
            for dims in [&[1usize][..], &[3], &[4], &[17], &[1000], &[3, 7, 5]] {
                let r = c.g.random(key, stream, ty(DType::F32, dims)).unwrap();
                c.out(
                    format!("random key {k} stream {stream} {}", dims_name(dims)),
                    r,
                    EXACT,
                );
            }
        }
    }
    let jit = c.check();
    // And against the definition directly, not only through the interpreter.
    let got = jit
        .program
        .output("random key 1 stream 1 [1000]", &jit.state)
        .unwrap();
    for (i, &v) in got.data.iter().enumerate() {
        assert_eq!(v, nnc_ir::random_uniform(1, 1, i as u32), "element {i}");
    }
}

// ---- convolution and pooling, forward and backward ----

/// A 2-d convolution as the prelude builds it: `unfold` to
/// `[N, C, kh, kw, oh, ow]`, viewed as `[N, G, C/G·kh·kw, oh·ow]`, times the
/// weight `[G, O/G, C/G·kh·kw]` broadcast over `N`, viewed as `[N, O, oh, ow]`.
/// Returns the result and the columns.
fn conv2d(g: &mut Graph, x: NodeId, w: NodeId, w_: Window) -> (NodeId, NodeId) {
    let dims = |g: &Graph, n: NodeId| -> Vec<usize> {
        g.ty(n)
            .shape
            .iter()
            .map(|d| d.as_const().unwrap())
            .collect()
    };
    let (xd, wd) = (dims(g, x), dims(g, w));
    let (groups, per_group) = (wd[0], wd[1]);
    let cols = g.unfold(x, w_, 0.0).unwrap();
    let cd = dims(g, cols);
    let (n, k, (oh, ow)) = (xd[0], wd[2], (cd[4], cd[5]));
    let r = g.reshape(cols, shape_of(&[n, groups, k, oh * ow])).unwrap();
    let y = g.matmul(w, r).unwrap();
    let y = g
        .reshape(y, shape_of(&[n, groups * per_group, oh, ow]))
        .unwrap();
    (y, cols)
}

fn relu(g: &mut Graph, x: NodeId) -> NodeId {
    let zero = g.scalar(0.0, DType::F32);
    g.binary(BinaryOp::Max, x, zero).unwrap()
}

/// Max pooling as `reduce_max(unfold(x, fill = -inf))` over the kernel axes.
fn max_pool(g: &mut Graph, x: NodeId, w: Window) -> NodeId {
    let u = g.unfold(x, w, f64::NEG_INFINITY).unwrap();
    g.reduce(ReduceOp::Max, u, vec![2, 3], false).unwrap()
}

/// The first layer of [`conv_net_case`]: batch, channels, image size,
/// kernel and padding.
struct FirstConv {
    n: usize,
    ch: usize,
    hw: usize,
    k: usize,
    pad: usize,
}

/// Two conv + relu + max-pool layers, a weighted-sum loss, and the
/// gradients of the loss with respect to the weights, the bias and the
/// image (`fold` of the first layer), as autodiff builds them. Columns of
/// 2 MiB and more are staged through scratch (no `unfold` or `fold` kernel
/// of their own, see `plan::Staged`), unless `keep_cols` makes the first
/// layer's columns an output.
fn conv_net_case(l1: FirstConv, groups: usize, keep_cols: bool, seed: u64) -> Case {
    let mut rng = Rng(seed);
    let FirstConv { n, ch, hw, k, pad } = l1;
    let name =
        format!("conv net, {n}x{ch}x{hw}x{hw}, k{k}, {groups} groups, keep cols {keep_cols}");
    let mut c = Case::new(&name);
    let (o1, o2) = (16, 8);
    let x = c.input("x", rng.unit_tensor(&[n, ch, hw, hw]));
    let k1 = ch / groups * k * k;
    let w1 = c.param("w1", rng.unit_tensor(&[groups, o1 / groups, k1]));
    let b1 = c.param("b1", rng.unit_tensor(&[o1, 1, 1]));
    let w2 = c.param(
        "w2",
        rng.unit_tensor(&[groups, o2 / groups, o1 / groups * 4]),
    );
    let win = window(&[k, k], &[1, 1], &[pad, pad], &[1, 1]);
    let (y, cols) = conv2d(&mut c.g, x, w1, win);
    let y = c.g.add_(y, b1).unwrap();
    let y = relu(&mut c.g, y);
    // 3×3 pooling, stride 2, padding 1 (as in ResNet): -inf in the padding.
    let p = max_pool(&mut c.g, y, window(&[3, 3], &[2, 2], &[1, 1], &[1, 1]));
    let (y2, _) = conv2d(&mut c.g, p, w2, window(&[2, 2], &[1, 1], &[0, 0], &[1, 1]));
    let y2 = relu(&mut c.g, y2);
    let p2 = max_pool(&mut c.g, y2, window(&[2, 2], &[2, 2], &[0, 0], &[1, 1]));
    let t_dims: Vec<usize> =
        c.g.ty(p2)
            .shape
            .iter()
            .map(|d| d.as_const().unwrap())
            .collect();
    let t = c.input("t", rng.unit_tensor(&t_dims));
    let prod = c.g.mul(p2, t).unwrap();
    let loss =
        c.g.reduce(ReduceOp::Sum, prod, vec![0, 1, 2, 3], false)
            .unwrap();
    let grads = nnc_passes::autodiff::gradients(&mut c.g, loss, &[w1, b1, w2, x]).unwrap();
    c.out("conv1", y, SUM);
    c.out("pool1", p, SUM);
    c.out("pool2", p2, SUM);
    c.out("loss", loss, SUM);
    for (name, grad) in ["w1", "b1", "w2", "x"].iter().zip(grads) {
        c.out(format!("grad {name}"), grad, SUM);
    }
    if keep_cols {
        c.out("cols1", cols, EXACT);
    }
    c
}

/// Forward and gradients, JIT against the interpreter, with the columns
/// stored whole or staged; the kernel list shows which.
#[test]
fn convolution_and_pooling_forward_and_gradients() {
    let small = || FirstConv {
        n: 2,
        ch: 4,
        hw: 9,
        k: 3,
        pad: 1,
    };
    // First-layer columns of 4·8·25·32·32 floats, 3.2 MiB: staged.
    let big = || FirstConv {
        n: 4,
        ch: 8,
        hw: 32,
        k: 5,
        pad: 2,
    };
    // (layer, groups, keep cols, unfold and fold kernels: two convolutions
    // and two pools, less the first convolution's when staged).
    let cases = [
        (small(), 1, false, 4, 4),
        (small(), 2, false, 4, 4),
        (big(), 1, false, 3, 3),
        (big(), 2, false, 3, 3),
        (big(), 2, true, 4, 3),
    ];
    for (seed, (layer, groups, keep, unfolds, folds)) in (60..).zip(cases) {
        let case = conv_net_case(layer, groups, keep, seed);
        let mut jit = case.check();
        let labels: Vec<String> = jit
            .program
            .profile()
            .unwrap()
            .into_iter()
            .map(|(l, _)| l)
            .collect();
        let count = |op: &str| labels.iter().filter(|l| l.starts_with(op)).count();
        assert_eq!(
            (count("unfold "), count("fold ")),
            (unfolds, folds),
            "{}: {labels:?}",
            case.name
        );
    }
}

#[test]
fn concat_along_each_axis_and_a_merged_product_sliced_into_outputs() {
    let mut rng = Rng(41);
    let mut c = Case::new("concat");
    let a = c.input("a", rng.tensor(DType::F32, &[3, 4]));
    let b = c.input("b", rng.tensor(DType::F32, &[3, 2]));
    let d = c.input("d", rng.tensor(DType::F32, &[5, 4]));
    let cols = c.g.concat(&[a, b], 1).unwrap();
    c.out("concat [3,4]|[3,2] axis 1", cols, EXACT);
    let rows = c.g.concat(&[a, d, a], 0).unwrap();
    c.out("concat [3,4];[5,4];[3,4] axis 0", rows, EXACT);
    let i = c.param("i", rng.tensor(DType::I32, &[2, 3]));
    let j = c.param("j", rng.tensor(DType::I32, &[2, 1]));
    let ij = c.g.concat(&[i, j], 1).unwrap();
    c.out("concat i32 axis 1", ij, EXACT);
    // The optimizer's merged heads: x @ concat(w1, w2), each output a
    // slice of the product (a view with a row stride).
    let x = c.input("x", rng.tensor(DType::F32, &[6, 40]));
    let w1 = c.param("w1", rng.tensor(DType::F32, &[40, 4]));
    let w2 = c.param("w2", rng.tensor(DType::F32, &[40, 6]));
    let w = c.g.concat(&[w1, w2], 1).unwrap();
    let p = c.g.matmul(x, w).unwrap();
    let h1 = c.g.slice(p, 1, 0, 4).unwrap();
    let h2 = c.g.slice(p, 1, 4, 10).unwrap();
    let separate = c.g.matmul(x, w1).unwrap();
    c.out("head 1", h1, SUM);
    c.out("head 2", h2, SUM);
    c.out("head 1 unmerged", separate, SUM);
    let jit = c.check();
    // Merged and separate products agree bit for bit.
    let merged = jit.program.output("head 1", &jit.state).unwrap();
    let alone = jit.program.output("head 1 unmerged", &jit.state).unwrap();
    assert_eq!(merged.data, alone.data);
}

#[test]
fn split_kernels_match_the_interpreter_on_two_threads() {
    // Elementwise loops above `emit::PARALLEL_ELEMENTS` run in work units
    // over the pool; products above `sgemm::PARALLEL_FLOPS` split by
    // columns or rows. Other tests may run meanwhile on either count: the
    // results do not depend on it.
    nnc_codegen::set_threads(2).unwrap();
    let mut rng = Rng(43);
    let mut c = Case::new("split");
    // One contiguous loop of 77,099 elements: 19 chunks and a scalar tail.
    let x = c.input("x", rng.tensor(DType::F32, &[11, 7009]));
    let e = c.g.unary(UnaryOp::Exp, x).unwrap();
    let y = c.g.binary(BinaryOp::Mul, e, x).unwrap();
    c.out("chunked map", y, CHAIN);
    // A transposed operand: a two-dim nest split by its outer rows.
    let a = c.input("a", rng.tensor(DType::F32, &[300, 257]));
    let b = c.input("b", rng.tensor(DType::F32, &[257, 300]));
    let bt = c.g.transpose(b, vec![1, 0]).unwrap();
    let s = c.g.binary(BinaryOp::Sub, a, bt).unwrap();
    c.out("nested map", s, EXACT);
    // Products split by columns (256 of them) and by rows (100 columns
    // split unevenly in tiles). Sums of 300 products of values up to 4 in
    // size: the f32 rounding of the interpreter's order and ours differ by
    // up to about 1e-4.
    const LONG_SUM: Tol = Tol {
        rel: 1e-4,
        abs: 1e-4,
    };
    let p = c.input("p", rng.tensor(DType::F32, &[128, 300]));
    let w1 = c.param("w1", rng.tensor(DType::F32, &[300, 256]));
    let w2 = c.param("w2", rng.tensor(DType::F32, &[300, 100]));
    let m1 = c.g.matmul(p, w1).unwrap();
    let m2 = c.g.matmul(p, w2).unwrap();
    c.out("product by columns", m1, LONG_SUM);
    c.out("product by rows", m2, LONG_SUM);
    // Window walks split by planes: an overlapping fold (which zeroes only
    // its planes), its unfold, and a reduction keeping its outer dim.
    let w = window(&[3, 3], &[2, 2], &[1, 1], &[1, 1]);
    let img = c.input("img", rng.tensor(DType::F32, &[8, 4, 20, 20]));
    let cols = c.g.unfold(img, w.clone(), 0.0).unwrap();
    let pooled = c.g.reduce(ReduceOp::Max, cols, vec![2, 3], false).unwrap();
    c.out("window max", pooled, EXACT);
    let g = c.input("g", rng.tensor(DType::F32, &[8, 4, 3, 3, 10, 10]));
    let folded = c.g.fold(g, w, ty(DType::F32, &[8, 4, 20, 20])).unwrap();
    c.out("overlapping fold", folded, SUM);
    // A reduction over its outer dim split by the kept dim inside it (a
    // bias gradient): the kept dim is walked outermost.
    let dy = c.input("dy", rng.tensor(DType::F32, &[16, 6, 30, 30]));
    let bias_grad = c.g.reduce(ReduceOp::Sum, dy, vec![0, 2, 3], false).unwrap();
    c.out("kept dim inside", bias_grad, SUM);
    let mut two = c.check();
    // Again: buffers now hold the first run's values, so a split kernel
    // that zeroes too little of its result shows.
    two.program.run().unwrap();
    two.compare("split, second run", &c.g, &c.env, &c.outputs);
    nnc_codegen::set_threads(1).unwrap();
    let one = c.check();
    for name in [
        "chunked map",
        "nested map",
        "product by columns",
        "product by rows",
        "window max",
        "overlapping fold",
        "kept dim inside",
    ] {
        let a = two.program.output(name, &two.state).unwrap();
        let b = one.program.output(name, &one.state).unwrap();
        assert_eq!(a.data, b.data, "{name}: 1 and 2 threads differ");
    }
}
