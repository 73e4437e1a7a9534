//! The reference interpreter, op by op, against hand-computed values.

use nnc_ir::init::{fans, init_leaves, initialize, CounterRng};
use nnc_ir::interp::{bind_symbols, eval, run_updates, step, Env, EvalError, EvalOptions};
use nnc_ir::tensor::{round_value, Tensor};
use nnc_ir::{
    shape_of, BinaryOp, DType, Dim, Graph, Init, Literal, NodeId, Op, ReduceOp, TensorType,
    UnaryOp, Update, Window,
};

const NAN: f64 = f64::NAN;

fn ty(dtype: DType, dims: &[usize]) -> TensorType {
    TensorType::new(dtype, shape_of(dims))
}

fn t(dtype: DType, shape: &[usize], data: &[f64]) -> Tensor {
    Tensor::from_vec(dtype, shape, data.to_vec()).unwrap()
}

fn f64t(shape: &[usize], data: &[f64]) -> Tensor {
    t(DType::F64, shape, data)
}

/// A graph with one input `x` (of the given tensor's type, constant dims)
/// and one output built by `body`; returns the output's value (exact mode).
fn unary_graph(x: &Tensor, body: impl FnOnce(&mut Graph, NodeId) -> NodeId) -> Tensor {
    let mut g = Graph::new("test");
    let xi = g.input("x", ty(x.dtype, &x.shape));
    let out = body(&mut g, xi);
    g.set_output("out", out);
    let env = Env::new().with("x", x.clone());
    eval(&g, &env, EvalOptions::EXACT)
        .unwrap()
        .output("out")
        .unwrap()
        .clone()
}

/// Like `unary_graph` with two inputs `a` and `b`.
fn binary_graph(
    a: &Tensor,
    b: &Tensor,
    body: impl FnOnce(&mut Graph, NodeId, NodeId) -> NodeId,
) -> Result<Tensor, EvalError> {
    let mut g = Graph::new("test");
    let ai = g.input("a", ty(a.dtype, &a.shape));
    let bi = g.input("b", ty(b.dtype, &b.shape));
    let out = body(&mut g, ai, bi);
    g.set_output("out", out);
    let env = Env::new().with("a", a.clone()).with("b", b.clone());
    Ok(eval(&g, &env, EvalOptions::EXACT)?
        .output("out")
        .unwrap()
        .clone())
}

fn bin(a: &Tensor, b: &Tensor, op: BinaryOp) -> Result<Tensor, EvalError> {
    binary_graph(a, b, |g, x, y| g.binary(op, x, y).unwrap())
}

/// Exact comparison that treats NaN as equal to NaN.
#[track_caller]
fn assert_tensor(actual: &Tensor, dtype: DType, shape: &[usize], data: &[f64]) {
    let expected = t(dtype, shape, data);
    assert_eq!(actual.dtype, dtype, "dtype of {actual}");
    assert_eq!(
        actual.max_abs_diff(&expected),
        0.0,
        "\nactual:   {actual}\nexpected: {expected}"
    );
}

#[track_caller]
fn assert_close(actual: &Tensor, shape: &[usize], data: &[f64]) {
    let expected = t(actual.dtype, shape, data);
    assert!(
        actual.allclose(&expected, 1e-12, 1e-12),
        "\nactual:   {actual}\nexpected: {expected}"
    );
}

// ---------------------------------------------------------------- tensor

#[test]
fn tensor_helpers() {
    assert!(Tensor::from_vec(DType::F32, &[2, 3], vec![0.0; 5]).is_err());
    let x = t(
        DType::F32,
        &[2, 3, 4],
        &(0..24).map(f64::from).collect::<Vec<_>>(),
    );
    assert_eq!(x.numel(), 24);
    assert_eq!(x.strides(), vec![12, 4, 1]);
    assert_eq!(x.get(&[1, 2, 3]), Some(23.0));
    assert_eq!(x.get(&[0, 1, 2]), Some(6.0));
    assert_eq!(x.get(&[0, 3, 0]), None);
    assert_eq!(x.get(&[0, 0]), None);
    let s = Tensor::scalar(DType::F64, 2.5);
    assert_eq!((s.numel(), s.item(), s.strides()), (1, Some(2.5), vec![]));
    assert_eq!(Tensor::zeros(DType::I32, &[2, 0]).numel(), 0);

    let mut r = t(DType::F32, &[3], &[0.1, 1e40, -0.5]);
    r.round_to_dtype();
    assert_eq!(r.data, vec![0.1f32 as f64, f64::INFINITY, -0.5]);
    assert_ne!(r.data[0], 0.1);
    let r = t(DType::I32, &[4], &[-2.7, 2.7, NAN, 1e12]).rounded();
    assert_eq!(r.data, vec![-2.0, 2.0, 0.0, i32::MAX as f64]);
    let r = t(DType::Bool, &[3], &[0.0, -3.0, NAN]).rounded();
    assert_eq!(r.data, vec![0.0, 1.0, 1.0]);
    assert_eq!(round_value(DType::F64, 0.1), 0.1);

    let a = f64t(&[3], &[1.0, NAN, f64::INFINITY]);
    let b = f64t(&[3], &[1.5, NAN, f64::INFINITY]);
    assert_eq!(a.max_abs_diff(&b), 0.5);
    assert!(a.allclose(&b, 0.0, 0.5));
    assert!(!a.allclose(&b, 0.0, 0.4));
    assert!(a.allclose(&f64t(&[3], &[1.0 + 1e-9, NAN, f64::INFINITY]), 1e-6, 0.0));
    assert!(!a.allclose(&f64t(&[3], &[1.0, 0.0, f64::INFINITY]), 1.0, 1.0));
    assert!(!a.allclose(&f64t(&[3], &[1.0, NAN, f64::NEG_INFINITY]), 1.0, 1.0));
    assert_eq!(a.max_abs_diff(&f64t(&[3], &[1.0, 2.0, 3.0])), f64::INFINITY);
    assert_eq!(
        a.max_abs_diff(&f64t(&[1, 3], &[1.0, NAN, 1.0])),
        f64::INFINITY
    );
    assert!(!a.allclose(&f64t(&[1, 3], &[1.0, NAN, f64::INFINITY]), 1.0, 1.0));
}

#[test]
fn tensor_display() {
    let x = t(DType::F32, &[2, 2], &[1.0, 2.5, -3.0, 4.0]);
    assert_eq!(x.to_string(), "f32[2,2] [[1, 2.5], [-3, 4]]");
    assert_eq!(Tensor::scalar(DType::I32, 7.0).to_string(), "i32[] 7");
    let b = t(DType::Bool, &[3], &[1.0, 0.0, 1.0]);
    assert_eq!(b.to_string(), "bool[3] [true, false, true]");
    assert_eq!(Tensor::zeros(DType::F64, &[0]).to_string(), "f64[0] []");
    let big = Tensor::zeros(DType::F32, &[100, 100]);
    let s = big.to_string();
    assert!(s.starts_with("f32[100,100] [0, 0"), "{s}");
    assert!(s.ends_with("... (10000 values)]"), "{s}");
}

// ---------------------------------------------------------------- leaves

#[test]
fn consts_and_iota() {
    let mut g = Graph::new("c");
    let splat = g.splat(2.5, ty(DType::F32, &[2, 2]));
    let dense = g
        .add(
            Op::Const(Literal::Dense(vec![1.0, 2.0, 3.0, 4.0, 5.0, 6.0])),
            &[],
            Some(ty(DType::F64, &[3, 2])),
        )
        .unwrap();
    let iota1 = g.iota(1, ty(DType::I32, &[2, 3])).unwrap();
    let iota0 = g.iota(0, ty(DType::F32, &[2, 3])).unwrap();
    let v = eval(&g, &Env::new(), EvalOptions::default()).unwrap();
    assert_tensor(&v[splat], DType::F32, &[2, 2], &[2.5; 4]);
    assert_tensor(
        &v[dense],
        DType::F64,
        &[3, 2],
        &[1.0, 2.0, 3.0, 4.0, 5.0, 6.0],
    );
    assert_tensor(
        &v[iota1],
        DType::I32,
        &[2, 3],
        &[0.0, 1.0, 2.0, 0.0, 1.0, 2.0],
    );
    assert_tensor(
        &v[iota0],
        DType::F32,
        &[2, 3],
        &[0.0, 0.0, 0.0, 1.0, 1.0, 1.0],
    );
    assert_eq!(v.len(), 4);
}

#[test]
fn symbolic_batch_binding() {
    // x: f32[B,3] + bias: f32[3], then reduce over the batch to f32[3], and a
    // constant of the symbolic shape [B,1].
    let mut g = Graph::new("b");
    let x = g.input("x", TensorType::new(DType::F32, [Dim::sym("B"), 3.into()]));
    let bias = g.param("bias", ty(DType::F32, &[3]), Init::Zeros);
    let y = g.add_(x, bias).unwrap();
    let s = g.reduce(ReduceOp::Sum, y, vec![0], false).unwrap();
    let ones = g.splat(1.0, TensorType::new(DType::F32, [Dim::sym("B"), 1.into()]));
    g.set_output("y", y);
    g.set_output("s", s);
    g.set_output("ones", ones);
    let bias_t = t(DType::F32, &[3], &[10.0, 20.0, 30.0]);
    for batch in [1usize, 2, 4] {
        let xs: Vec<f64> = (0..batch * 3).map(|i| i as f64).collect();
        let env = Env::new()
            .with("x", t(DType::F32, &[batch, 3], &xs))
            .with("bias", bias_t.clone());
        assert_eq!(bind_symbols(&g, &env).unwrap()["B"], batch);
        let v = eval(&g, &env, EvalOptions::default()).unwrap();
        assert_eq!(v.symbols()["B"], batch);
        let expect_y: Vec<f64> = xs
            .iter()
            .enumerate()
            .map(|(i, x)| x + 10.0 * (i % 3 + 1) as f64)
            .collect();
        assert_tensor(v.output("y").unwrap(), DType::F32, &[batch, 3], &expect_y);
        let expect_s: Vec<f64> = (0..3)
            .map(|j| (0..batch).map(|b| expect_y[b * 3 + j]).sum())
            .collect();
        assert_tensor(v.output("s").unwrap(), DType::F32, &[3], &expect_s);
        assert_tensor(
            v.output("ones").unwrap(),
            DType::F32,
            &[batch, 1],
            &vec![1.0; batch],
        );
        let names: Vec<&str> = v.outputs().map(|(n, _)| n).collect();
        assert_eq!(names, ["y", "s", "ones"]);
    }
}

// ---------------------------------------------------------------- elementwise

#[test]
fn unary_ops() {
    let x = f64t(&[4], &[-1.0, 0.0, 2.0, 4.0]);
    let run = |op| unary_graph(&x, |g, x| g.unary(op, x).unwrap());
    assert_tensor(
        &run(UnaryOp::Neg),
        DType::F64,
        &[4],
        &[1.0, -0.0, -2.0, -4.0],
    );
    assert_tensor(&run(UnaryOp::Abs), DType::F64, &[4], &[1.0, 0.0, 2.0, 4.0]);
    assert_tensor(
        &run(UnaryOp::Sqrt),
        DType::F64,
        &[4],
        &[NAN, 0.0, 2f64.sqrt(), 2.0],
    );
    assert_tensor(
        &run(UnaryOp::Log),
        DType::F64,
        &[4],
        &[NAN, f64::NEG_INFINITY, 2f64.ln(), 4f64.ln()],
    );
    let e = std::f64::consts::E;
    assert_close(&run(UnaryOp::Exp), &[4], &[1.0 / e, 1.0, e * e, e.powi(4)]);
    let tanh = |v: f64| ((v).exp() - (-v).exp()) / ((v).exp() + (-v).exp());
    assert_close(
        &run(UnaryOp::Tanh),
        &[4],
        &[tanh(-1.0), 0.0, tanh(2.0), tanh(4.0)],
    );
    assert_close(
        &run(UnaryOp::Sigmoid),
        &[4],
        &[
            1.0 / (1.0 + e),
            0.5,
            1.0 / (1.0 + e.powi(-2)),
            1.0 / (1.0 + e.powi(-4)),
        ],
    );
    // The stable form: no overflow to NaN at the extremes, tiny values kept.
    let ext = f64t(&[3], &[-800.0, 800.0, -30.0]);
    let s = unary_graph(&ext, |g, x| g.unary(UnaryOp::Sigmoid, x).unwrap());
    assert_eq!(s.data[0], 0.0);
    assert_eq!(s.data[1], 1.0);
    assert!((s.data[2] / (-30f64).exp() - 1.0).abs() < 1e-12);
}

#[test]
fn binary_arithmetic_and_broadcasting() {
    // [2,1] op [3] -> [2,3]
    let a = f64t(&[2, 1], &[1.0, -2.0]);
    let b = f64t(&[3], &[10.0, 20.0, -30.0]);
    let add = bin(&a, &b, BinaryOp::Add).unwrap();
    assert_tensor(
        &add,
        DType::F64,
        &[2, 3],
        &[11.0, 21.0, -29.0, 8.0, 18.0, -32.0],
    );
    let sub = bin(&a, &b, BinaryOp::Sub).unwrap();
    assert_tensor(
        &sub,
        DType::F64,
        &[2, 3],
        &[-9.0, -19.0, 31.0, -12.0, -22.0, 28.0],
    );
    let mul = bin(&a, &b, BinaryOp::Mul).unwrap();
    assert_tensor(
        &mul,
        DType::F64,
        &[2, 3],
        &[10.0, 20.0, -30.0, -20.0, -40.0, 60.0],
    );
    let div = bin(&b, &a, BinaryOp::Div).unwrap();
    assert_tensor(
        &div,
        DType::F64,
        &[2, 3],
        &[10.0, 20.0, -30.0, -5.0, -10.0, 15.0],
    );
    let max = bin(&a, &b, BinaryOp::Max).unwrap();
    assert_tensor(
        &max,
        DType::F64,
        &[2, 3],
        &[10.0, 20.0, 1.0, 10.0, 20.0, -2.0],
    );
    let min = bin(&a, &b, BinaryOp::Min).unwrap();
    assert_tensor(
        &min,
        DType::F64,
        &[2, 3],
        &[1.0, 1.0, -30.0, -2.0, -2.0, -30.0],
    );

    // Size-1 dims on both sides: [2,1,3] * [1,2,1] -> [2,2,3].
    let p = f64t(&[2, 1, 3], &[1.0, 2.0, 3.0, 4.0, 5.0, 6.0]);
    let q = f64t(&[1, 2, 1], &[1.0, -1.0]);
    let r = bin(&p, &q, BinaryOp::Mul).unwrap();
    assert_tensor(
        &r,
        DType::F64,
        &[2, 2, 3],
        &[
            1.0, 2.0, 3.0, -1.0, -2.0, -3.0, 4.0, 5.0, 6.0, -4.0, -5.0, -6.0,
        ],
    );
    // Scalar operand.
    let s = Tensor::scalar(DType::F64, 2.0);
    let pw = bin(&f64t(&[3], &[3.0, -2.0, 4.0]), &s, BinaryOp::Pow).unwrap();
    assert_tensor(&pw, DType::F64, &[3], &[9.0, 4.0, 16.0]);
    let pw = bin(&s, &f64t(&[3], &[-1.0, 0.5, 0.0]), BinaryOp::Pow).unwrap();
    assert_tensor(&pw, DType::F64, &[3], &[0.5, 2f64.sqrt(), 1.0]);
    // IEEE division.
    let d = bin(
        &f64t(&[3], &[1.0, -1.0, 0.0]),
        &f64t(&[1], &[0.0]),
        BinaryOp::Div,
    )
    .unwrap();
    assert_tensor(
        &d,
        DType::F64,
        &[3],
        &[f64::INFINITY, f64::NEG_INFINITY, NAN],
    );
}

#[test]
fn max_min_propagate_nan() {
    let a = f64t(&[4], &[1.0, NAN, -2.0, NAN]);
    let b = f64t(&[4], &[0.0, 5.0, NAN, NAN]);
    let max = bin(&a, &b, BinaryOp::Max).unwrap();
    assert_tensor(&max, DType::F64, &[4], &[1.0, NAN, NAN, NAN]);
    let min = bin(&a, &b, BinaryOp::Min).unwrap();
    assert_tensor(&min, DType::F64, &[4], &[0.0, NAN, NAN, NAN]);
}

#[test]
fn comparisons() {
    let a = f64t(&[5], &[1.0, 2.0, 3.0, NAN, -0.0]);
    let b = f64t(&[5], &[2.0, 2.0, 2.0, 1.0, 0.0]);
    let cases = [
        (BinaryOp::Lt, [1.0, 0.0, 0.0, 0.0, 0.0]),
        (BinaryOp::Le, [1.0, 1.0, 0.0, 0.0, 1.0]),
        (BinaryOp::Gt, [0.0, 0.0, 1.0, 0.0, 0.0]),
        (BinaryOp::Ge, [0.0, 1.0, 1.0, 0.0, 1.0]),
        (BinaryOp::Eq, [0.0, 1.0, 0.0, 0.0, 1.0]),
        (BinaryOp::Ne, [1.0, 0.0, 1.0, 1.0, 0.0]),
    ];
    for (op, expect) in cases {
        let r = bin(&a, &b, op).unwrap();
        assert_tensor(&r, DType::Bool, &[5], &expect);
    }
    // i32 labels against an iota: the one-hot pattern.
    let labels = t(DType::I32, &[3, 1], &[2.0, 0.0, 1.0]);
    let r = binary_graph(&labels, &labels, |g, l, _| {
        let iota = g.iota(1, ty(DType::I32, &[3, 3])).unwrap();
        g.binary(BinaryOp::Eq, iota, l).unwrap()
    })
    .unwrap();
    assert_tensor(
        &r,
        DType::Bool,
        &[3, 3],
        &[0.0, 0.0, 1.0, 1.0, 0.0, 0.0, 0.0, 1.0, 0.0],
    );
    // bool eq/ne.
    let p = t(DType::Bool, &[2], &[1.0, 0.0]);
    let q = t(DType::Bool, &[2], &[1.0, 1.0]);
    assert_tensor(
        &bin(&p, &q, BinaryOp::Eq).unwrap(),
        DType::Bool,
        &[2],
        &[1.0, 0.0],
    );
}

#[test]
fn i32_arithmetic() {
    let a = t(DType::I32, &[5], &[7.0, -7.0, 7.0, -7.0, 6.0]);
    let b = t(DType::I32, &[5], &[2.0, 2.0, -2.0, -2.0, 3.0]);
    let div = bin(&a, &b, BinaryOp::Div).unwrap();
    assert_tensor(&div, DType::I32, &[5], &[3.0, -3.0, -3.0, 3.0, 2.0]);
    let add = bin(&a, &b, BinaryOp::Add).unwrap();
    assert_tensor(&add, DType::I32, &[5], &[9.0, -5.0, 5.0, -9.0, 9.0]);
    let mul = bin(&a, &b, BinaryOp::Mul).unwrap();
    assert_tensor(&mul, DType::I32, &[5], &[14.0, -14.0, -14.0, 14.0, 18.0]);
    let max = bin(&a, &b, BinaryOp::Max).unwrap();
    assert_tensor(&max, DType::I32, &[5], &[7.0, 2.0, 7.0, -2.0, 6.0]);
    // Wrapping like Rust's wrapping ops.
    let big = t(DType::I32, &[2], &[i32::MAX as f64, i32::MIN as f64]);
    let one = t(DType::I32, &[2], &[1.0, -1.0]);
    let w = bin(&big, &one, BinaryOp::Add).unwrap();
    assert_tensor(&w, DType::I32, &[2], &[i32::MIN as f64, i32::MAX as f64]);
    let w = bin(&big, &one, BinaryOp::Div).unwrap();
    assert_tensor(&w, DType::I32, &[2], &[i32::MAX as f64, i32::MIN as f64]);
    // pow, including negative exponents.
    let base = t(DType::I32, &[5], &[2.0, -3.0, 2.0, -1.0, 1.0]);
    let exp = t(DType::I32, &[5], &[10.0, 3.0, -1.0, -3.0, -5.0]);
    let p = bin(&base, &exp, BinaryOp::Pow).unwrap();
    assert_tensor(&p, DType::I32, &[5], &[1024.0, -27.0, 0.0, -1.0, 1.0]);

    let zero = t(DType::I32, &[5], &[1.0, 1.0, 0.0, 1.0, 1.0]);
    let err = bin(&a, &zero, BinaryOp::Div).unwrap_err();
    assert!(matches!(err, EvalError::DivisionByZero { .. }), "{err}");
    assert!(err.to_string().contains("division by zero"), "{err}");
    let err = bin(
        &t(DType::I32, &[1], &[0.0]),
        &t(DType::I32, &[1], &[-1.0]),
        BinaryOp::Pow,
    )
    .unwrap_err();
    assert!(matches!(err, EvalError::DivisionByZero { .. }), "{err}");
}

#[test]
fn select_broadcasts() {
    let c = t(DType::Bool, &[2, 1], &[1.0, 0.0]);
    let a = f64t(&[2, 3], &[1.0, 2.0, 3.0, 4.0, 5.0, 6.0]);
    let r = binary_graph(&c, &a, |g, c, a| {
        let zero = g.scalar(-1.0, DType::F64);
        g.select(c, a, zero).unwrap()
    })
    .unwrap();
    assert_tensor(&r, DType::F64, &[2, 3], &[1.0, 2.0, 3.0, -1.0, -1.0, -1.0]);
    // relu as select(x > 0, x, 0)
    let x = f64t(&[4], &[-1.5, 0.0, 2.0, NAN]);
    let r = unary_graph(&x, |g, x| {
        let zero = g.scalar(0.0, DType::F64);
        let pos = g.binary(BinaryOp::Gt, x, zero).unwrap();
        g.select(pos, x, zero).unwrap()
    });
    assert_tensor(&r, DType::F64, &[4], &[0.0, 0.0, 2.0, 0.0]);
}

#[test]
fn casts() {
    let x = f64t(&[6], &[-2.7, 2.7, 0.0, NAN, -0.5, 3e9]);
    let i = unary_graph(&x, |g, x| g.cast(x, DType::I32).unwrap());
    assert_tensor(
        &i,
        DType::I32,
        &[6],
        &[-2.0, 2.0, 0.0, 0.0, 0.0, i32::MAX as f64],
    );
    let b = unary_graph(&x, |g, x| g.cast(x, DType::Bool).unwrap());
    assert_tensor(&b, DType::Bool, &[6], &[1.0, 1.0, 0.0, 1.0, 1.0, 1.0]);
    let back = unary_graph(&t(DType::Bool, &[2], &[1.0, 0.0]), |g, x| {
        g.cast(x, DType::F32).unwrap()
    });
    assert_tensor(&back, DType::F32, &[2], &[1.0, 0.0]);
    let f = unary_graph(&t(DType::I32, &[2], &[-3.0, 16777217.0]), |g, x| {
        g.cast(x, DType::F64).unwrap()
    });
    assert_tensor(&f, DType::F64, &[2], &[-3.0, 16777217.0]);
    // f64 -> f32 rounds in the default mode.
    let mut g = Graph::new("cast");
    let xi = g.input("x", ty(DType::F64, &[2]));
    let c = g.cast(xi, DType::F32).unwrap();
    let env = Env::new().with("x", f64t(&[2], &[0.1, 16777217.0]));
    let v = eval(&g, &env, EvalOptions::F32).unwrap();
    assert_tensor(&v[c], DType::F32, &[2], &[0.1f32 as f64, 16777216.0]);
    let v = eval(&g, &env, EvalOptions::EXACT).unwrap();
    assert_tensor(&v[c], DType::F32, &[2], &[0.1, 16777217.0]);
}

// ---------------------------------------------------------------- reductions

#[test]
fn reductions() {
    // [[1, -2, 3], [-4, 5, -6]]
    let x = f64t(&[2, 3], &[1.0, -2.0, 3.0, -4.0, 5.0, -6.0]);
    let red = |op, axes: Vec<usize>, keepdim| {
        unary_graph(&x, |g, x| g.reduce(op, x, axes, keepdim).unwrap())
    };
    assert_tensor(
        &red(ReduceOp::Sum, vec![1], false),
        DType::F64,
        &[2],
        &[2.0, -5.0],
    );
    assert_tensor(
        &red(ReduceOp::Sum, vec![1], true),
        DType::F64,
        &[2, 1],
        &[2.0, -5.0],
    );
    assert_tensor(
        &red(ReduceOp::Sum, vec![0], true),
        DType::F64,
        &[1, 3],
        &[-3.0, 3.0, -3.0],
    );
    assert_tensor(
        &red(ReduceOp::Sum, vec![0, 1], false),
        DType::F64,
        &[],
        &[-3.0],
    );
    assert_tensor(
        &red(ReduceOp::Sum, vec![1, 0], true),
        DType::F64,
        &[1, 1],
        &[-3.0],
    );
    assert_tensor(
        &red(ReduceOp::Mean, vec![0], false),
        DType::F64,
        &[3],
        &[-1.5, 1.5, -1.5],
    );
    assert_tensor(
        &red(ReduceOp::Mean, vec![1], true),
        DType::F64,
        &[2, 1],
        &[2.0 / 3.0, -5.0 / 3.0],
    );
    assert_tensor(
        &red(ReduceOp::Max, vec![1], false),
        DType::F64,
        &[2],
        &[3.0, 5.0],
    );
    assert_tensor(
        &red(ReduceOp::Max, vec![0], true),
        DType::F64,
        &[1, 3],
        &[1.0, 5.0, 3.0],
    );
    assert_tensor(
        &red(ReduceOp::Max, vec![], false),
        DType::F64,
        &[2, 3],
        &x.data,
    );

    // All negative: max must not be clamped at 0.
    let neg = f64t(&[1, 3], &[-3.0, -1.0, -2.0]);
    let m = unary_graph(&neg, |g, x| {
        g.reduce(ReduceOp::Max, x, vec![1], false).unwrap()
    });
    assert_tensor(&m, DType::F64, &[1], &[-1.0]);

    // Rank 3 over the outer axes, keepdim: x[i,j,k] = 100i + 10j + k.
    let data: Vec<f64> = (0..2)
        .flat_map(|i| (0..2).flat_map(move |j| (0..3).map(move |k| (100 * i + 10 * j + k) as f64)))
        .collect();
    let x3 = f64t(&[2, 2, 3], &data);
    let s = unary_graph(&x3, |g, x| {
        g.reduce(ReduceOp::Sum, x, vec![0, 2], true).unwrap()
    });
    // sum over i,k of 100i + 10j + k = 3*100 + 6*10j + 2*(0+1+2)
    assert_tensor(&s, DType::F64, &[1, 2, 1], &[306.0, 366.0]);
    let s = unary_graph(&x3, |g, x| {
        g.reduce(ReduceOp::Max, x, vec![1], false).unwrap()
    });
    assert_tensor(
        &s,
        DType::F64,
        &[2, 3],
        &[10.0, 11.0, 12.0, 110.0, 111.0, 112.0],
    );

    // NaN propagates through reduce_max and sum.
    let n = f64t(&[2, 2], &[1.0, NAN, 3.0, 4.0]);
    let m = unary_graph(&n, |g, x| {
        g.reduce(ReduceOp::Max, x, vec![1], false).unwrap()
    });
    assert_tensor(&m, DType::F64, &[2], &[NAN, 4.0]);

    // i32 mean truncates.
    let i = t(DType::I32, &[2, 2], &[1.0, 2.0, -3.0, -4.0]);
    let m = unary_graph(&i, |g, x| {
        g.reduce(ReduceOp::Mean, x, vec![1], false).unwrap()
    });
    assert_tensor(&m, DType::I32, &[2], &[1.0, -3.0]);
    let m = unary_graph(&i, |g, x| {
        g.reduce(ReduceOp::Sum, x, vec![0, 1], false).unwrap()
    });
    assert_tensor(&m, DType::I32, &[], &[-4.0]);
}

#[test]
fn argmax_first_max() {
    let x = f64t(&[3, 3], &[1.0, 3.0, 3.0, 2.0, 2.0, 1.0, -5.0, -1.0, -1.0]);
    let a1 = unary_graph(&x, |g, x| g.argmax(x, 1).unwrap());
    assert_tensor(&a1, DType::I32, &[3], &[1.0, 0.0, 1.0]);
    let a0 = unary_graph(&x, |g, x| g.argmax(x, 0).unwrap());
    assert_tensor(&a0, DType::I32, &[3], &[1.0, 0.0, 0.0]);
    let n = f64t(&[2, 3], &[1.0, NAN, 5.0, 7.0, 1.0, NAN]);
    let an = unary_graph(&n, |g, x| g.argmax(x, 1).unwrap());
    assert_tensor(&an, DType::I32, &[2], &[1.0, 2.0]);
    // Rank 3, middle axis.
    let x3 = f64t(&[2, 2, 2], &[0.0, 5.0, 1.0, 4.0, 9.0, 9.0, 9.0, 10.0]);
    let a = unary_graph(&x3, |g, x| g.argmax(x, 1).unwrap());
    assert_tensor(&a, DType::I32, &[2, 2], &[1.0, 0.0, 0.0, 1.0]);
}

// ---------------------------------------------------------------- matmul

#[test]
fn matmul_2d() {
    // [[1,2,3],[4,5,6]] @ [[7,8],[9,10],[11,12]] = [[58,64],[139,154]]
    let a = f64t(&[2, 3], &[1.0, 2.0, 3.0, 4.0, 5.0, 6.0]);
    let b = f64t(&[3, 2], &[7.0, 8.0, 9.0, 10.0, 11.0, 12.0]);
    let r = binary_graph(&a, &b, |g, a, b| g.matmul(a, b).unwrap()).unwrap();
    assert_tensor(&r, DType::F64, &[2, 2], &[58.0, 64.0, 139.0, 154.0]);
    // Negative values and k = 1.
    let c = f64t(&[2, 1], &[-1.0, 2.0]);
    let d = f64t(&[1, 3], &[3.0, -4.0, 0.5]);
    let r = binary_graph(&c, &d, |g, a, b| g.matmul(a, b).unwrap()).unwrap();
    assert_tensor(&r, DType::F64, &[2, 3], &[-3.0, 4.0, -0.5, 6.0, -8.0, 1.0]);
}

#[test]
fn matmul_broadcast_batch() {
    // a: [2,1,2,2] = (I, 2I); b: [3,2,2] = (B0, B1, B2); result [2,3,2,2] with
    // result[i][j] = (i+1) * Bj.
    let a = f64t(&[2, 1, 2, 2], &[1.0, 0.0, 0.0, 1.0, 2.0, 0.0, 0.0, 2.0]);
    let bs: [[f64; 4]; 3] = [
        [1.0, 2.0, 3.0, 4.0],
        [-1.0, 0.0, 0.5, 2.0],
        [0.0, -3.0, 7.0, 1.0],
    ];
    let b = f64t(&[3, 2, 2], &bs.concat());
    let r = binary_graph(&a, &b, |g, a, b| g.matmul(a, b).unwrap()).unwrap();
    let mut expect = Vec::new();
    for i in 0..2 {
        for bj in &bs {
            expect.extend(bj.iter().map(|v| v * (i + 1) as f64));
        }
    }
    assert_tensor(&r, DType::F64, &[2, 3, 2, 2], &expect);

    // A rank-2 weight shared across a batch: [2,2,3] @ [3,1].
    let x = f64t(
        &[2, 2, 3],
        &[1.0, 2.0, 3.0, 4.0, 5.0, 6.0, -1.0, 0.0, 1.0, 2.0, 2.0, 2.0],
    );
    let w = f64t(&[3, 1], &[1.0, 10.0, 100.0]);
    let r = binary_graph(&x, &w, |g, a, b| g.matmul(a, b).unwrap()).unwrap();
    assert_tensor(&r, DType::F64, &[2, 2, 1], &[321.0, 654.0, 99.0, 222.0]);
}

#[test]
fn matmul_symbolic_batch() {
    let mut g = Graph::new("mm");
    let x = g.input("x", TensorType::new(DType::F32, [Dim::sym("B"), 2.into()]));
    let w = g.param("w", ty(DType::F32, &[2, 3]), Init::Zeros);
    let y = g.matmul(x, w).unwrap();
    g.set_output("y", y);
    let env = Env::new()
        .with(
            "x",
            t(DType::F32, &[3, 2], &[1.0, 0.0, 0.0, 1.0, 1.0, -1.0]),
        )
        .with("w", t(DType::F32, &[2, 3], &[1.0, 2.0, 3.0, 4.0, 5.0, 6.0]));
    let v = eval(&g, &env, EvalOptions::default()).unwrap();
    assert_tensor(
        v.output("y").unwrap(),
        DType::F32,
        &[3, 3],
        &[1.0, 2.0, 3.0, 4.0, 5.0, 6.0, -3.0, -3.0, -3.0],
    );
}

// ---------------------------------------------------------------- data movement

#[test]
fn reshape_transpose_broadcast() {
    let x = f64t(&[2, 3], &[1.0, 2.0, 3.0, 4.0, 5.0, 6.0]);
    let r = unary_graph(&x, |g, x| g.reshape(x, shape_of(&[3, 1, 2])).unwrap());
    assert_tensor(&r, DType::F64, &[3, 1, 2], &x.data);
    let tr = unary_graph(&x, |g, x| g.transpose(x, vec![1, 0]).unwrap());
    assert_tensor(&tr, DType::F64, &[3, 2], &[1.0, 4.0, 2.0, 5.0, 3.0, 6.0]);
    // x3[i,j,k] = 100i + 10j + k, shape [2,3,4]; perm [2,0,1] gives
    // out[k,i,j] = x3[i,j,k], shape [4,2,3].
    let data: Vec<f64> = (0..2)
        .flat_map(|i| (0..3).flat_map(move |j| (0..4).map(move |k| (100 * i + 10 * j + k) as f64)))
        .collect();
    let x3 = f64t(&[2, 3, 4], &data);
    let tr = unary_graph(&x3, |g, x| g.transpose(x, vec![2, 0, 1]).unwrap());
    let mut expect = Vec::new();
    for k in 0..4 {
        for i in 0..2 {
            for j in 0..3 {
                expect.push((100 * i + 10 * j + k) as f64);
            }
        }
    }
    assert_tensor(&tr, DType::F64, &[4, 2, 3], &expect);
    assert_eq!(tr.get(&[3, 1, 2]), Some(123.0));

    let v = f64t(&[3], &[1.0, 2.0, 3.0]);
    let b = unary_graph(&v, |g, x| g.broadcast(x, shape_of(&[2, 3])).unwrap());
    assert_tensor(&b, DType::F64, &[2, 3], &[1.0, 2.0, 3.0, 1.0, 2.0, 3.0]);
    let col = f64t(&[2, 1], &[1.0, 2.0]);
    let b = unary_graph(&col, |g, x| g.broadcast(x, shape_of(&[2, 2, 3])).unwrap());
    assert_tensor(
        &b,
        DType::F64,
        &[2, 2, 3],
        &[1.0, 1.0, 1.0, 2.0, 2.0, 2.0, 1.0, 1.0, 1.0, 2.0, 2.0, 2.0],
    );
}

#[test]
fn slice_and_concat() {
    let x = f64t(&[2, 4], &[1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0, 8.0]);
    let s = unary_graph(&x, |g, x| g.slice(x, 1, 1, 3).unwrap());
    assert_tensor(&s, DType::F64, &[2, 2], &[2.0, 3.0, 6.0, 7.0]);
    let s = unary_graph(&x, |g, x| g.slice(x, 0, 1, 2).unwrap());
    assert_tensor(&s, DType::F64, &[1, 4], &[5.0, 6.0, 7.0, 8.0]);
    let s = unary_graph(&x, |g, x| g.slice(x, 1, 2, 2).unwrap());
    assert_tensor(&s, DType::F64, &[2, 0], &[]);

    let a = f64t(&[2, 1], &[1.0, 2.0]);
    let b = f64t(&[2, 2], &[3.0, 4.0, 5.0, 6.0]);
    let c = binary_graph(&a, &b, |g, a, b| g.concat(&[a, b, a], 1).unwrap()).unwrap();
    assert_tensor(
        &c,
        DType::F64,
        &[2, 4],
        &[1.0, 3.0, 4.0, 1.0, 2.0, 5.0, 6.0, 2.0],
    );
    let c = binary_graph(&b, &b, |g, a, b| g.concat(&[a, b], 0).unwrap()).unwrap();
    assert_tensor(
        &c,
        DType::F64,
        &[4, 2],
        &[3.0, 4.0, 5.0, 6.0, 3.0, 4.0, 5.0, 6.0],
    );
}

#[test]
fn gather_take() {
    // data [3,2] = [[1,2],[3,4],[5,6]]
    let data = f64t(&[3, 2], &[1.0, 2.0, 3.0, 4.0, 5.0, 6.0]);
    let idx = t(DType::I32, &[2, 2], &[2.0, 0.0, 2.0, 2.0]);
    let r = binary_graph(&data, &idx, |g, d, i| g.gather(d, i, 0).unwrap()).unwrap();
    assert_tensor(
        &r,
        DType::F64,
        &[2, 2, 2],
        &[5.0, 6.0, 1.0, 2.0, 5.0, 6.0, 5.0, 6.0],
    );
    let idx = t(DType::I32, &[3], &[1.0, 1.0, 0.0]);
    let r = binary_graph(&data, &idx, |g, d, i| g.gather(d, i, 1).unwrap()).unwrap();
    assert_tensor(
        &r,
        DType::F64,
        &[3, 3],
        &[2.0, 2.0, 1.0, 4.0, 4.0, 3.0, 6.0, 6.0, 5.0],
    );
    // Scalar index removes the axis.
    let idx = Tensor::scalar(DType::I32, 1.0);
    let r = binary_graph(&data, &idx, |g, d, i| g.gather(d, i, 0).unwrap()).unwrap();
    assert_tensor(&r, DType::F64, &[2], &[3.0, 4.0]);
}

#[test]
fn scatter_add_accumulates_duplicates() {
    // updates [3,2] scattered into [3,2] rows 0, 2, 0.
    let upd = f64t(&[3, 2], &[1.0, 2.0, 10.0, 20.0, 100.0, 200.0]);
    let idx = t(DType::I32, &[3], &[0.0, 2.0, 0.0]);
    let r = binary_graph(&upd, &idx, |g, u, i| {
        g.scatter_add(u, i, 0, ty(DType::F64, &[3, 2])).unwrap()
    })
    .unwrap();
    assert_tensor(
        &r,
        DType::F64,
        &[3, 2],
        &[101.0, 202.0, 0.0, 0.0, 10.0, 20.0],
    );
    // Along axis 1 with a 2-d index: target [2,3], idx [2,2], updates [2,2,2].
    let upd = f64t(&[2, 2, 2], &[1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0, 8.0]);
    let idx = t(DType::I32, &[2, 2], &[1.0, 1.0, 2.0, 1.0]);
    let r = binary_graph(&upd, &idx, |g, u, i| {
        g.scatter_add(u, i, 1, ty(DType::F64, &[2, 3])).unwrap()
    })
    .unwrap();
    // row 0: col1 += 1+2+4, col2 += 3; row 1: col1 += 5+6+8, col2 += 7
    assert_tensor(&r, DType::F64, &[2, 3], &[0.0, 7.0, 3.0, 0.0, 19.0, 7.0]);
}

// ---------------------------------------------------------------- errors

fn xw_graph() -> Graph {
    let mut g = Graph::new("xw");
    let b = Dim::sym("B");
    let x = g.input("x", TensorType::new(DType::F32, [b.clone(), 3.into()]));
    let y = g.input("y", TensorType::new(DType::I32, [b]));
    let w = g.param("w", ty(DType::F32, &[3, 2]), Init::XavierUniform);
    let h = g.matmul(x, w).unwrap();
    let yf = g.cast(y, DType::F32).unwrap();
    let s = g.reduce(ReduceOp::Sum, h, vec![1], false).unwrap();
    let out = g.add_(s, yf).unwrap();
    g.set_output("out", out);
    g
}

fn xw_env(batch_x: usize, batch_y: usize) -> Env {
    Env::new()
        .with("x", Tensor::zeros(DType::F32, &[batch_x, 3]))
        .with("y", Tensor::zeros(DType::I32, &[batch_y]))
        .with("w", Tensor::zeros(DType::F32, &[3, 2]))
}

#[test]
fn error_missing_leaf() {
    let g = xw_graph();
    let mut env = xw_env(2, 2);
    assert!(eval(&g, &env, EvalOptions::default()).is_ok());
    env.remove("y");
    let err = eval(&g, &env, EvalOptions::default()).unwrap_err();
    assert!(
        matches!(err, EvalError::Missing { kind: "input", .. }),
        "{err:?}"
    );
    assert_eq!(err.to_string(), "missing input `y` (expected i32[B])");
    let mut env = xw_env(2, 2);
    env.remove("w");
    let err = eval(&g, &env, EvalOptions::default()).unwrap_err();
    assert_eq!(err.to_string(), "missing param `w` (expected f32[3,2])");
}

#[test]
fn error_wrong_shape_or_dtype() {
    let g = xw_graph();
    let env = xw_env(2, 2).with("x", Tensor::zeros(DType::F32, &[2, 4]));
    let err = eval(&g, &env, EvalOptions::default()).unwrap_err();
    assert_eq!(
        err.to_string(),
        "input `x` expects f32[B,3], but was given f32[2,4]"
    );
    let env = xw_env(2, 2).with("x", Tensor::zeros(DType::F32, &[6]));
    let err = eval(&g, &env, EvalOptions::default()).unwrap_err();
    assert_eq!(
        err.to_string(),
        "input `x` expects f32[B,3], but was given f32[6]"
    );
    let env = xw_env(2, 2).with("w", Tensor::zeros(DType::F64, &[3, 2]));
    let err = eval(&g, &env, EvalOptions::default()).unwrap_err();
    assert_eq!(
        err.to_string(),
        "param `w` expects f32[3,2], but was given f64[3,2]"
    );
    // A tensor whose data does not fit its own shape.
    let mut bad = Tensor::zeros(DType::F32, &[3, 2]);
    bad.data.pop();
    let err = eval(&g, &xw_env(2, 2).with("w", bad), EvalOptions::default()).unwrap_err();
    assert!(matches!(err, EvalError::Invalid { .. }), "{err}");
}

#[test]
fn error_inconsistent_symbol() {
    let g = xw_graph();
    let err = eval(&g, &xw_env(4, 3), EvalOptions::default()).unwrap_err();
    assert!(matches!(err, EvalError::InconsistentSymbol(_)), "{err:?}");
    assert_eq!(
        err.to_string(),
        "input `y` expects i32[B], but was given i32[3]: `B` would be 3, \
         but input `x` bound it to 4"
    );
    assert!(bind_symbols(&g, &xw_env(4, 3)).is_err());
    // Within one tensor.
    let mut g = Graph::new("sq");
    let b = Dim::sym("N");
    g.input("m", TensorType::new(DType::F32, [b.clone(), b]));
    let env = Env::new().with("m", Tensor::zeros(DType::F32, &[2, 3]));
    let err = eval(&g, &env, EvalOptions::default()).unwrap_err();
    assert!(err.to_string().contains("`N` would be 3"), "{err}");
}

#[test]
fn error_unbound_symbol_and_cycle() {
    let mut g = Graph::new("u");
    g.splat(0.0, TensorType::new(DType::F32, [Dim::sym("B")]));
    let err = eval(&g, &Env::new(), EvalOptions::default()).unwrap_err();
    assert!(matches!(err, EvalError::UnboundSymbol { .. }), "{err:?}");

    let mut g = Graph::new("cyc");
    let x = g.input("x", ty(DType::F32, &[2]));
    let a = g.neg(x).unwrap();
    let b = g.neg(a).unwrap();
    g.g.add_edge(b, a, 1);
    let env = Env::new().with("x", Tensor::zeros(DType::F32, &[2]));
    assert_eq!(
        eval(&g, &env, EvalOptions::default()).unwrap_err(),
        EvalError::Cycle
    );
}

#[test]
fn error_gather_index_out_of_range() {
    let data = f64t(&[3, 2], &[1.0, 2.0, 3.0, 4.0, 5.0, 6.0]);
    for bad in [3.0, -1.0] {
        let idx = t(DType::I32, &[2], &[0.0, bad]);
        let err = binary_graph(&data, &idx, |g, d, i| g.gather(d, i, 0).unwrap()).unwrap_err();
        assert!(matches!(err, EvalError::IndexOutOfRange { .. }), "{err:?}");
        let msg = err.to_string();
        assert!(
            msg.contains(&format!("index {bad} is out of range for axis 0 of size 3")),
            "{msg}"
        );
        let upd = f64t(&[2, 2], &[1.0; 4]);
        let err = binary_graph(&upd, &idx, |g, u, i| {
            g.scatter_add(u, i, 0, ty(DType::F64, &[3, 2])).unwrap()
        })
        .unwrap_err();
        assert!(matches!(err, EvalError::IndexOutOfRange { .. }), "{err:?}");
    }
}

#[test]
fn error_malformed_node_does_not_panic() {
    // A node typed inconsistently with its operands (bypassing `add`).
    let mut g = Graph::new("bad");
    let x = g.input("x", ty(DType::F32, &[2, 3]));
    let id = g.g.add_node(nnc_ir::Node {
        op: Op::Binary(BinaryOp::Add),
        ty: ty(DType::F32, &[4]),
        name: None,
        span: None,
    });
    g.g.add_edge(x, id, 0);
    g.g.add_edge(x, id, 1);
    let env = Env::new().with("x", Tensor::zeros(DType::F32, &[2, 3]));
    let err = eval(&g, &env, EvalOptions::default()).unwrap_err();
    assert!(matches!(err, EvalError::Invalid { .. }), "{err:?}");
    // Wrong arity.
    let mut g = Graph::new("bad2");
    let x = g.input("x", ty(DType::F32, &[2]));
    let id = g.g.add_node(nnc_ir::Node {
        op: Op::MatMul,
        ty: ty(DType::F32, &[2]),
        name: None,
        span: None,
    });
    g.g.add_edge(x, id, 0);
    let env = Env::new().with("x", Tensor::zeros(DType::F32, &[2]));
    assert!(eval(&g, &env, EvalOptions::default()).is_err());
}

// ---------------------------------------------------------------- precision

#[test]
fn f32_rounding_vs_exact() {
    let mut g = Graph::new("r");
    let x = g.input("x", ty(DType::F32, &[2]));
    let one = g.scalar(1.0, DType::F32);
    let tenth = g.scalar(0.1, DType::F32);
    let y = g.add_(x, one).unwrap(); // 1e8 + 1 is not an f32
    let z = g.sub(y, x).unwrap();
    let w = g.add_(x, tenth).unwrap();
    let env = Env::new().with("x", t(DType::F32, &[2], &[1e8, 0.2]));

    let v = eval(&g, &env, EvalOptions::F32).unwrap();
    assert_tensor(&v[y], DType::F32, &[2], &[1e8, 1.2f32 as f64]);
    assert_tensor(&v[z], DType::F32, &[2], &[0.0, (1.2f32 - 0.2f32) as f64]);
    assert_tensor(&v[tenth], DType::F32, &[], &[0.1f32 as f64]);
    assert_tensor(&v[w], DType::F32, &[2], &[1e8, (0.2f32 + 0.1f32) as f64]);
    // Every f32 value is exactly representable.
    for id in [x, one, tenth, y, z, w] {
        assert!(v[id].data.iter().all(|&d| d as f32 as f64 == d));
    }

    let e = eval(&g, &env, EvalOptions::EXACT).unwrap();
    assert_tensor(&e[y], DType::F32, &[2], &[100000001.0, 1.2]);
    assert_tensor(&e[z], DType::F32, &[2], &[1.0, 1.2 - 0.2]);
    assert_tensor(&e[tenth], DType::F32, &[], &[0.1]);
    assert_tensor(&e[w], DType::F32, &[2], &[1e8 + 0.1, 0.2 + 0.1]);

    // f64 nodes are never rounded.
    let mut g = Graph::new("d");
    let c = g.scalar(0.1, DType::F64);
    let v = eval(&g, &Env::new(), EvalOptions::F32).unwrap();
    assert_eq!(v[c].data, vec![0.1]);
}

// ---------------------------------------------------------------- training

/// Linear regression `y = x @ w` by gradient descent, the gradient written
/// out by hand: `w -= lr * 2/B * x^T (x w - y)`.
#[test]
fn updates_train_linear_regression() {
    let mut g = Graph::new("train");
    let b = Dim::sym("B");
    let x = g.input("x", TensorType::new(DType::F32, [b.clone(), 2.into()]));
    let y = g.input("y", TensorType::new(DType::F32, [b, 1.into()]));
    let w = g.param("w", ty(DType::F32, &[2, 1]), Init::Zeros);
    let pred = g.matmul(x, w).unwrap();
    let err = g.sub(pred, y).unwrap();
    let sq = g.mul(err, err).unwrap();
    let loss = g.reduce(ReduceOp::Mean, sq, vec![0, 1], false).unwrap();
    let xt = g.transpose(x, vec![1, 0]).unwrap();
    let grad = g.matmul(xt, err).unwrap();
    let scale = g.scalar(0.1 * 2.0 / 4.0, DType::F32);
    let delta = g.mul(grad, scale).unwrap();
    let new_w = g.sub(w, delta).unwrap();
    g.set_output("loss", loss);
    g.updates.push(Update {
        target: "w".into(),
        value: new_w,
    });
    nnc_ir::verify(&g).unwrap();

    // y = 3 x0 - 2 x1
    let xs = t(
        DType::F32,
        &[4, 2],
        &[1.0, 0.0, 0.0, 1.0, 1.0, 1.0, 2.0, -1.0],
    );
    let ys = t(DType::F32, &[4, 1], &[3.0, -2.0, 1.0, 8.0]);
    let mut env = Env::new().with("x", xs).with("y", ys);
    assert_eq!(init_leaves(&g, 0, &mut env).unwrap(), 1);
    assert_eq!(env.get("w").unwrap().data, vec![0.0, 0.0]);

    // One step by hand: err = -y, grad = x^T(-y) = [-(3+1+16), -(-2+1-8)] = [-20, 9],
    // w = 0 - 0.05 * grad = [1, -0.45]; loss = mean(y^2) = (9+4+1+64)/4.
    let v = eval(&g, &env, EvalOptions::default()).unwrap();
    assert_eq!(v.output("loss").unwrap().item(), Some(19.5));
    let ups = run_updates(&g, &v);
    assert_eq!(ups.len(), 1);
    assert_eq!(ups[0].0, "w");
    // In f32: the scale is 0.05f32 and each product is rounded.
    let lr = 0.05f32 as f64;
    let expect = [(20.0 * lr) as f32 as f64, -((9.0 * lr) as f32 as f64)];
    assert_tensor(&ups[0].1, DType::F32, &[2, 1], &expect);

    let mut last = f64::INFINITY;
    for _ in 0..200 {
        let v = step(&g, &mut env, EvalOptions::default()).unwrap();
        let l = v.output("loss").unwrap().item().unwrap();
        assert!(l <= last + 1e-6, "loss went up: {l} > {last}");
        last = l;
    }
    assert!(last < 1e-8, "{last}");
    let w = env.get("w").unwrap();
    assert!(
        w.allclose(&t(DType::F32, &[2, 1], &[3.0, -2.0]), 0.0, 1e-4),
        "{w}"
    );
}

// ---------------------------------------------------------------- init

fn mean_std(data: &[f64]) -> (f64, f64) {
    let n = data.len() as f64;
    let mean = data.iter().sum::<f64>() / n;
    let var = data.iter().map(|v| (v - mean) * (v - mean)).sum::<f64>() / n;
    (mean, var.sqrt())
}

#[test]
fn init_fans() {
    assert_eq!(fans(&[]), (1, 1));
    assert_eq!(fans(&[7]), (7, 7));
    assert_eq!(fans(&[784, 256]), (784, 256));
    assert_eq!(fans(&[16, 3, 5, 5]), (75, 400));
    assert_eq!(fans(&[8, 4, 3]), (12, 24));
}

#[test]
fn init_xavier_normal_statistics() {
    let w = initialize(&Init::XavierNormal, &[256, 256], DType::F32, 42, "dense.w");
    assert_eq!(
        (w.dtype, w.shape.clone(), w.numel()),
        (DType::F32, vec![256, 256], 65536)
    );
    let theory = (2.0f64 / 512.0).sqrt();
    let (mean, std) = mean_std(&w.data);
    assert!(mean.abs() < 0.02 * theory, "mean {mean}");
    assert!((std / theory - 1.0).abs() < 0.02, "std {std} vs {theory}");
    assert!(
        w.data.iter().all(|&v| v as f32 as f64 == v),
        "rounded to f32"
    );

    let k = initialize(&Init::KaimingNormal, &[128, 512], DType::F64, 1, "k");
    let (mean, std) = mean_std(&k.data);
    let theory = (2.0f64 / 128.0).sqrt();
    assert!(mean.abs() < 0.02 * theory && (std / theory - 1.0).abs() < 0.02);

    let n = initialize(
        &Init::Normal {
            mean: 3.0,
            std: 0.5,
        },
        &[100, 100],
        DType::F64,
        1,
        "n",
    );
    let (mean, std) = mean_std(&n.data);
    assert!(
        (mean - 3.0).abs() < 0.02 && (std - 0.5).abs() < 0.01,
        "{mean} {std}"
    );
}

#[test]
fn init_uniform_bounds() {
    let check = |init: Init, shape: &[usize], low: f64, high: f64| {
        let w = initialize(&init, shape, DType::F64, 7, "u");
        assert!(w.data.iter().all(|&v| v >= low && v < high), "{init}");
        let (mean, std) = mean_std(&w.data);
        // A uniform's mean is the midpoint, its std (high - low) / sqrt(12).
        let width = high - low;
        assert!(
            (mean - (low + high) / 2.0).abs() < 0.02 * width,
            "{init}: {mean}"
        );
        assert!(
            (std / (width / 12f64.sqrt()) - 1.0).abs() < 0.02,
            "{init}: {std}"
        );
        // The extremes are approached.
        let lo = w.data.iter().cloned().fold(f64::INFINITY, f64::min);
        let hi = w.data.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
        assert!(
            lo < low + 0.01 * width && hi > high - 0.01 * width,
            "{init}"
        );
    };
    check(
        Init::Uniform {
            low: -0.5,
            high: 2.0,
        },
        &[50, 100],
        -0.5,
        2.0,
    );
    let b = (6.0f64 / (256.0 + 64.0)).sqrt();
    check(Init::XavierUniform, &[256, 64], -b, b);
    let b = (6.0f64 / 256.0).sqrt();
    check(Init::KaimingUniform, &[256, 64], -b, b);
    // Convolution layout [out, in, kh, kw]: fan_in = 3 * 3 * 3.
    let b = (6.0f64 / 27.0).sqrt();
    check(Init::KaimingUniform, &[256, 3, 3, 3], -b, b);
}

#[test]
fn init_constants() {
    let z = initialize(&Init::Zeros, &[2, 3], DType::F32, 0, "z");
    assert_tensor(&z, DType::F32, &[2, 3], &[0.0; 6]);
    let o = initialize(&Init::Ones, &[4], DType::F64, 0, "o");
    assert_tensor(&o, DType::F64, &[4], &[1.0; 4]);
    let c = initialize(&Init::Const(0.1), &[], DType::F32, 0, "c");
    assert_tensor(&c, DType::F32, &[], &[0.1f32 as f64]);
    let i = initialize(&Init::Const(2.7), &[2], DType::I32, 0, "i");
    assert_tensor(&i, DType::I32, &[2], &[2.0, 2.0]);
}

#[test]
fn init_is_deterministic_per_name() {
    let a = initialize(&Init::XavierUniform, &[16, 8], DType::F32, 5, "layer1.w");
    let b = initialize(&Init::XavierUniform, &[16, 8], DType::F32, 5, "layer1.w");
    assert_eq!(a, b);
    let c = initialize(&Init::XavierUniform, &[16, 8], DType::F32, 5, "layer2.w");
    assert_ne!(a.data, c.data);
    let d = initialize(&Init::XavierUniform, &[16, 8], DType::F32, 6, "layer1.w");
    assert_ne!(a.data, d.data);
    // Element i depends only on (seed, name, i): a bigger tensor of the same
    // kind and bound starts with the same values.
    let u1 = initialize(
        &Init::Uniform {
            low: 0.0,
            high: 1.0,
        },
        &[10],
        DType::F64,
        3,
        "p",
    );
    let u2 = initialize(
        &Init::Uniform {
            low: 0.0,
            high: 1.0,
        },
        &[5, 4],
        DType::F64,
        3,
        "p",
    );
    assert_eq!(u1.data[..], u2.data[..10]);
    let rng = CounterRng::new(3, "p");
    assert_eq!(u1.data[7], rng.uniform(7));
    // Normals use uniforms 2i and 2i+1.
    let n = initialize(
        &Init::Normal {
            mean: 0.0,
            std: 1.0,
        },
        &[3],
        DType::F64,
        3,
        "p",
    );
    let expect = (-2.0 * (1.0 - rng.uniform(4)).ln()).sqrt()
        * (2.0 * std::f64::consts::PI * rng.uniform(5)).cos();
    assert_eq!(n.data[2], expect);
}

/// Pins the generator: these values are part of the reproducibility contract.
#[test]
fn init_generator_golden_values() {
    // FNV-1a 64 of the empty input is the offset basis; of 8 zero bytes:
    let mut h: u64 = 0xcbf29ce484222325;
    for _ in 0..8 {
        h = h.wrapping_mul(0x100000001b3); // h ^ 0 == h
    }
    assert_eq!(CounterRng::new(0, "").key, h);
    // SplitMix64 seeded with 0 (reference outputs of the published algorithm).
    let rng = CounterRng { key: 0 };
    assert_eq!(rng.draw(0), 0xe220a8397b1dcdaf);
    assert_eq!(rng.draw(1), 0x6e789e6aa1b965f4);
    assert_eq!(rng.draw(2), 0x06c45d188009454f);
    assert_eq!(
        rng.uniform(0),
        (0xe220a8397b1dcdafu64 >> 11) as f64 / 2f64.powi(53)
    );
}

#[test]
fn init_leaves_fills_only_missing() {
    let mut g = Graph::new("p");
    g.param("w", ty(DType::F32, &[4, 3]), Init::KaimingNormal);
    g.param("b", ty(DType::F32, &[3]), Init::Const(0.5));
    g.state("m", ty(DType::F32, &[4, 3]), Init::Zeros);
    let mut env = Env::new().with("b", Tensor::zeros(DType::F32, &[3]));
    assert_eq!(init_leaves(&g, 9, &mut env).unwrap(), 2);
    assert_eq!(env.len(), 3);
    assert_eq!(env.get("b").unwrap().data, vec![0.0; 3]);
    assert_eq!(
        env.get("w").unwrap(),
        &initialize(&Init::KaimingNormal, &[4, 3], DType::F32, 9, "w")
    );
    assert_eq!(env.get("m").unwrap().data, vec![0.0; 12]);
    // Symbolic shapes cannot be initialized.
    let mut g = Graph::new("s");
    g.state(
        "s",
        TensorType::new(DType::F32, [Dim::sym("B")]),
        Init::Zeros,
    );
    assert!(init_leaves(&g, 0, &mut Env::new()).is_err());
}

/// The digits-sized workload the interpreter must train in reasonable time:
/// an MLP 64-32-10 (relu, softmax cross-entropy, gradients written out by
/// hand) on batches of 32, 30 epochs of 56 batches, on synthetic data
/// (noisy copies of 10 class prototypes).
#[test]
fn trains_digits_sized_mlp() {
    let mut g = Graph::new("mlp");
    let b = Dim::sym("B");
    let x = g.input("x", TensorType::new(DType::F32, [b.clone(), 64.into()]));
    let y = g.input("y", TensorType::new(DType::I32, [b.clone(), 1.into()]));
    let w1 = g.param("w1", ty(DType::F32, &[64, 32]), Init::KaimingUniform);
    let b1 = g.param("b1", ty(DType::F32, &[32]), Init::Zeros);
    let w2 = g.param("w2", ty(DType::F32, &[32, 10]), Init::XavierUniform);
    let b2 = g.param("b2", ty(DType::F32, &[10]), Init::Zeros);
    let zero = g.scalar(0.0, DType::F32);
    // forward
    let xw = g.matmul(x, w1).unwrap();
    let h1 = g.add_(xw, b1).unwrap();
    let pos = g.binary(BinaryOp::Gt, h1, zero).unwrap();
    let a1 = g.select(pos, h1, zero).unwrap();
    let aw = g.matmul(a1, w2).unwrap();
    let logits = g.add_(aw, b2).unwrap();
    let m = g.reduce(ReduceOp::Max, logits, vec![1], true).unwrap();
    let shifted = g.sub(logits, m).unwrap();
    let e = g.unary(UnaryOp::Exp, shifted).unwrap();
    let s = g.reduce(ReduceOp::Sum, e, vec![1], true).unwrap();
    let p = g.div(e, s).unwrap();
    let classes = g
        .iota(1, TensorType::new(DType::I32, [b.clone(), 10.into()]))
        .unwrap();
    let hot = g.binary(BinaryOp::Eq, classes, y).unwrap();
    let onehot = g.cast(hot, DType::F32).unwrap();
    let logp = g.unary(UnaryOp::Log, p).unwrap();
    let picked = g.mul(onehot, logp).unwrap();
    let nll = g.reduce(ReduceOp::Sum, picked, vec![1], false).unwrap();
    let mean = g.reduce(ReduceOp::Mean, nll, vec![0], false).unwrap();
    let loss = g.neg(mean).unwrap();
    let pred = g.argmax(logits, 1).unwrap();
    // backward
    let inv_b = g.scalar(1.0 / 32.0, DType::F32);
    let diff = g.sub(p, onehot).unwrap();
    let dlogits = g.mul(diff, inv_b).unwrap();
    let a1t = g.transpose(a1, vec![1, 0]).unwrap();
    let dw2 = g.matmul(a1t, dlogits).unwrap();
    let db2 = g.reduce(ReduceOp::Sum, dlogits, vec![0], false).unwrap();
    let w2t = g.transpose(w2, vec![1, 0]).unwrap();
    let da1 = g.matmul(dlogits, w2t).unwrap();
    let dh1 = g.select(pos, da1, zero).unwrap();
    let xt = g.transpose(x, vec![1, 0]).unwrap();
    let dw1 = g.matmul(xt, dh1).unwrap();
    let db1 = g.reduce(ReduceOp::Sum, dh1, vec![0], false).unwrap();
    let lr = g.scalar(0.1, DType::F32);
    for (name, param, grad) in [
        ("w1", w1, dw1),
        ("b1", b1, db1),
        ("w2", w2, dw2),
        ("b2", b2, db2),
    ] {
        let delta = g.mul(grad, lr).unwrap();
        let value = g.sub(param, delta).unwrap();
        g.updates.push(Update {
            target: name.into(),
            value,
        });
    }
    g.set_output("loss", loss);
    g.set_output("pred", pred);
    nnc_ir::verify(&g).unwrap();

    // 56 batches of 32 samples.
    let rng = CounterRng::new(1, "data");
    let protos: Vec<f64> = (0..640).map(|i| rng.uniform(i as u64)).collect();
    let batches: Vec<(Tensor, Tensor)> = (0..56)
        .map(|bi| {
            let mut xs = Vec::with_capacity(32 * 64);
            let mut ys = Vec::with_capacity(32);
            for k in 0..32 {
                let n = (bi * 32 + k) as u64;
                let label = (rng.draw(1_000_000 + n) % 10) as usize;
                ys.push(label as f64);
                for j in 0..64 {
                    let noise = rng.uniform(2_000_000 + n * 64 + j as u64) - 0.5;
                    xs.push(protos[label * 64 + j] + 0.8 * noise);
                }
            }
            (
                t(DType::F32, &[32, 64], &xs).rounded(),
                t(DType::I32, &[32, 1], &ys),
            )
        })
        .collect();

    let mut env = Env::new();
    assert_eq!(init_leaves(&g, 0, &mut env).unwrap(), 4);
    let start = std::time::Instant::now();
    let mut first_loss = None;
    let mut last = (0.0, 0usize);
    for _epoch in 0..30 {
        let (mut total, mut correct) = (0.0, 0usize);
        for (xs, ys) in &batches {
            env.insert("x", xs.clone());
            env.insert("y", ys.clone());
            let v = step(&g, &mut env, EvalOptions::default()).unwrap();
            total += v.output("loss").unwrap().item().unwrap();
            let pred = v.output("pred").unwrap();
            correct += pred
                .data
                .iter()
                .zip(&ys.data)
                .filter(|(a, b)| a == b)
                .count();
        }
        first_loss.get_or_insert(total / 56.0);
        last = (total / 56.0, correct);
    }
    let elapsed = start.elapsed();
    eprintln!(
        "30 epochs x 56 steps: {elapsed:?}; loss {:.4} -> {:.4}; train accuracy {}/1792",
        first_loss.unwrap(),
        last.0,
        last.1
    );
    assert!(last.0 < 0.1 * first_loss.unwrap(), "{last:?}");
    assert!(last.1 >= 1750, "{last:?}");
}

/// A direct (nested-loop) 2-D convolution, PyTorch `conv2d` semantics,
/// to pin `unfold` against: `x [n,c,h,w]`, `k [o,c,kh,kw]`.
#[allow(clippy::too_many_arguments)]
fn direct_conv2d(
    x: &[f64],
    (n, c, h, w): (usize, usize, usize, usize),
    k: &[f64],
    (o, kh, kw): (usize, usize, usize),
    stride: [usize; 2],
    pad: [usize; 2],
    dil: [usize; 2],
) -> (Vec<f64>, [usize; 2]) {
    let oh = (h + 2 * pad[0] - dil[0] * (kh - 1) - 1) / stride[0] + 1;
    let ow = (w + 2 * pad[1] - dil[1] * (kw - 1) - 1) / stride[1] + 1;
    let mut out = vec![0.0; n * o * oh * ow];
    for b in 0..n {
        for f in 0..o {
            for y in 0..oh {
                for z in 0..ow {
                    let mut acc = 0.0;
                    for ch in 0..c {
                        for i in 0..kh {
                            for j in 0..kw {
                                let r = (y * stride[0] + i * dil[0]) as isize - pad[0] as isize;
                                let s = (z * stride[1] + j * dil[1]) as isize - pad[1] as isize;
                                if r < 0 || s < 0 || r >= h as isize || s >= w as isize {
                                    continue;
                                }
                                let xv = x[((b * c + ch) * h + r as usize) * w + s as usize];
                                acc += xv * k[((f * c + ch) * kh + i) * kw + j];
                            }
                        }
                    }
                    out[((b * o + f) * oh + y) * ow + z] = acc;
                }
            }
        }
    }
    (out, [oh, ow])
}

#[test]
fn unfold_then_matmul_is_a_convolution() {
    let (n, c, h, w, o, kh, kw) = (2, 3, 7, 6, 4, 3, 2);
    for (stride, pad, dil) in [
        ([1, 1], [0, 0], [1, 1]),
        ([2, 1], [1, 2], [1, 1]),
        ([1, 3], [2, 0], [2, 1]),
    ] {
        let xs: Vec<f64> = (0..n * c * h * w)
            .map(|i| ((i * 7) % 11) as f64 - 5.0)
            .collect();
        let ks: Vec<f64> = (0..o * c * kh * kw)
            .map(|i| ((i * 5) % 7) as f64 - 3.0)
            .collect();
        let (want, [oh, ow]) = direct_conv2d(&xs, (n, c, h, w), &ks, (o, kh, kw), stride, pad, dil);
        let window = Window {
            kernel: vec![kh, kw],
            stride: stride.to_vec(),
            padding: pad.to_vec(),
            dilation: dil.to_vec(),
        };
        let kt = f64t(&[o, c * kh * kw], &ks);
        let got = binary_graph(&f64t(&[n, c, h, w], &xs), &kt, |g, x, k| {
            let cols = g.unfold(x, window.clone(), 0.0).unwrap();
            let flat = g
                .reshape(cols, shape_of(&[n, c * kh * kw, oh * ow]))
                .unwrap();
            g.matmul(k, flat).unwrap()
        })
        .unwrap();
        assert_eq!(got.shape, vec![n, o, oh * ow], "{window:?}");
        assert_eq!(got.data, want, "{window:?}");
    }
}

#[test]
fn unfold_fills_padding_and_fold_is_its_adjoint() {
    // 1-D: x = [1, 2, 3] padded by 1, kernel 2, stride 2 -> windows
    // (pad, 1), (2, 3).
    let x = f64t(&[1, 1, 3], &[1.0, 2.0, 3.0]);
    let window = Window {
        kernel: vec![2],
        stride: vec![2],
        padding: vec![1],
        dilation: vec![1],
    };
    let cols = unary_graph(&x, |g, x| g.unfold(x, window.clone(), -9.0).unwrap());
    assert_eq!(cols.shape, vec![1, 1, 2, 2]);
    // Layout [n, c, k, out]: k=0 -> (pad, 2), k=1 -> (1, 3).
    assert_eq!(cols.data, vec![-9.0, 2.0, 1.0, 3.0]);

    // <unfold(x), y> == <x, fold(y)> for a 2-D window with overlaps.
    let window = Window {
        kernel: vec![3, 3],
        stride: vec![1, 2],
        padding: vec![1, 1],
        dilation: vec![1, 1],
    };
    let xs: Vec<f64> = (0..2 * 5 * 4).map(|i| (i % 9) as f64 - 4.0).collect();
    let x = f64t(&[1, 2, 5, 4], &xs);
    let ux = unary_graph(&x, |g, x| g.unfold(x, window.clone(), 0.0).unwrap());
    let ys: Vec<f64> = (0..ux.data.len())
        .map(|i| ((i * 3) % 5) as f64 - 2.0)
        .collect();
    let y = f64t(&ux.shape, &ys);
    let fy = unary_graph(&y, |g, y| {
        g.fold(y, window.clone(), ty(DType::F64, &[1, 2, 5, 4]))
            .unwrap()
    });
    let lhs: f64 = ux.data.iter().zip(&ys).map(|(a, b)| a * b).sum();
    let rhs: f64 = xs.iter().zip(&fy.data).map(|(a, b)| a * b).sum();
    assert_eq!(lhs, rhs);
}

#[test]
fn random_is_uniform_reproducible_and_keyed() {
    let sample = |key: i32, stream: u32, n: usize| {
        let mut g = Graph::new("test");
        let k = g.input("key", ty(DType::I32, &[]));
        let r = g.random(k, stream, ty(DType::F32, &[n])).unwrap();
        g.set_output("out", r);
        let env = Env::new().with("key", t(DType::I32, &[], &[key as f64]));
        eval(&g, &env, EvalOptions::F32)
            .unwrap()
            .output("out")
            .unwrap()
            .clone()
    };
    let a = sample(17, 0, 10_000);
    assert_eq!(a.data, sample(17, 0, 10_000).data);
    assert_ne!(a.data, sample(18, 0, 10_000).data);
    assert_ne!(a.data, sample(17, 1, 10_000).data);
    assert!(a.data.iter().all(|&v| (0.0..1.0).contains(&v)));
    let mean = a.data.iter().sum::<f64>() / a.data.len() as f64;
    assert!((mean - 0.5).abs() < 0.01, "mean {mean}");
    let below = a.data.iter().filter(|&&v| v < 0.25).count() as f64 / 1e4;
    assert!((below - 0.25).abs() < 0.015, "P(u < 0.25) = {below}");
    // Pinned: the bits are a format (checkpointed runs replay them), so a
    // change here must be deliberate.
    assert_eq!(
        (0..3)
            .map(|i| nnc_ir::op::random_bits(1, 2, i))
            .collect::<Vec<_>>(),
        vec![4_250_300_162, 1_520_648, 764_903_657]
    );
}

#[test]
fn round_is_to_nearest_with_ties_to_even() {
    let x = f64t(&[9], &[-2.5, -1.5, -0.5, 0.5, 1.5, 2.5, 2.4999, -0.7, NAN]);
    let y = unary_graph(&x, |g, x| g.unary(UnaryOp::Round, x).unwrap());
    assert_tensor(
        &y,
        DType::F64,
        &[9],
        &[-2.0, -2.0, -0.0, 0.0, 2.0, 2.0, 2.0, -1.0, NAN],
    );
}

#[test]
fn casts_to_bytes_truncate_and_saturate_never_wrap() {
    let x = f64t(&[8], &[-300.0, -128.9, -0.9, 0.9, 127.9, 200.0, 255.9, NAN]);
    let i8s = unary_graph(&x, |g, x| g.cast(x, DType::I8).unwrap());
    assert_tensor(
        &i8s,
        DType::I8,
        &[8],
        &[-128.0, -128.0, 0.0, 0.0, 127.0, 127.0, 127.0, 0.0],
    );
    let u8s = unary_graph(&x, |g, x| g.cast(x, DType::U8).unwrap());
    assert_tensor(
        &u8s,
        DType::U8,
        &[8],
        &[0.0, 0.0, 0.0, 0.0, 127.0, 200.0, 255.0, 0.0],
    );
    // From i32 too: 300 is 255, not 300 mod 256.
    let ints = t(DType::I32, &[3], &[300.0, -1.0, 128.0]);
    let u8s = unary_graph(&ints, |g, x| g.cast(x, DType::U8).unwrap());
    assert_tensor(&u8s, DType::U8, &[3], &[255.0, 0.0, 128.0]);
    assert_eq!(round_value(DType::I8, 128.0), 127.0);
}

#[test]
fn byte_matmul_sums_exactly_into_i32() {
    // The extremes of u8 x i8: 255 * -128 over k = 300 is -9,792,000.
    let (m, k, n) = (2, 300, 3);
    let a: Vec<f64> = (0..m * k)
        .map(|i| if i < k { 255.0 } else { (i % 7) as f64 })
        .collect();
    let b: Vec<f64> = (0..k * n)
        .map(|i| {
            if i % n == 0 {
                -128.0
            } else {
                (i % 5) as f64 - 2.0
            }
        })
        .collect();
    let at = t(DType::U8, &[m, k], &a);
    let bt = t(DType::I8, &[k, n], &b);
    let c = binary_graph(&at, &bt, |g, x, y| g.matmul(x, y).unwrap()).unwrap();
    assert_eq!(c.dtype, DType::I32);
    let mut want = vec![0.0; m * n];
    for i in 0..m {
        for j in 0..n {
            want[i * n + j] = (0..k)
                .map(|p| a[i * k + p] as i64 * b[p * n + j] as i64)
                .sum::<i64>() as f64;
        }
    }
    assert_eq!(want[0], -9_792_000.0);
    assert_tensor(&c, DType::I32, &[m, n], &want);
}

#[test]
fn bytes_are_compared_but_never_summed_or_added() {
    let mut g = Graph::new("bytes");
    let q = g.input("q", ty(DType::U8, &[4]));
    let e = g.binary(BinaryOp::Add, q, q).unwrap_err();
    assert!(e.message.contains("cast them to i32 or f32"), "{e}");
    let e = g.reduce(ReduceOp::Sum, q, vec![0], false).unwrap_err();
    assert!(e.message.contains("sums its operand"), "{e}");
    assert_eq!(
        g.binary(BinaryOp::Lt, q, q).map(|c| g.ty(c).dtype),
        Ok(DType::Bool)
    );
    let f = g.input("f", ty(DType::F32, &[4, 2]));
    let q2 = g.reshape(q, shape_of(&[1, 4])).unwrap();
    let e = g.matmul(q2, f).unwrap_err();
    assert!(e.message.contains("i8/u8 operands"), "{e}");
}
