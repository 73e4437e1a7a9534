//! Shape inference and the verifier.

use nnc_ir::infer::{broadcast_shapes, broadcasts_to, infer};
use nnc_ir::{
    shape_of, verify, BinaryOp, DType, Dim, Graph, Init, Literal, NodeId, Op, Output, ReduceOp,
    Shape, TensorType, Ties, UnaryOp, Update,
};

/// Parses a shape written like the printer does: `B,1` -> `[B,1]`.
fn sh(s: &str) -> Shape {
    s.split(',')
        .filter(|d| !d.is_empty())
        .map(|d| match d.parse::<usize>() {
            Ok(n) => Dim::Const(n),
            Err(_) => Dim::sym(d),
        })
        .collect()
}

fn t(dtype: DType, s: &str) -> TensorType {
    TensorType::new(dtype, sh(s))
}

fn f(s: &str) -> TensorType {
    t(DType::F32, s)
}

/// The type of `op` over inputs of the given types, built through `Graph::add`.
fn try_op(op: Op, args: &[TensorType], declared: Option<TensorType>) -> Result<TensorType, String> {
    let mut g = Graph::new("t");
    let ids: Vec<NodeId> = args
        .iter()
        .enumerate()
        .map(|(i, ty)| g.input(&format!("a{i}"), ty.clone()))
        .collect();
    let id = g.add(op, &ids, declared).map_err(|e| e.message)?;
    verify(&g).expect("a graph built by `add` verifies");
    Ok(g.ty(id).clone())
}

fn ok(op: Op, args: &[TensorType]) -> TensorType {
    try_op(op, args, None).unwrap_or_else(|e| panic!("unexpected error: {e}"))
}

fn fails(op: Op, args: &[TensorType], declared: Option<TensorType>) -> String {
    match try_op(op, args, declared) {
        Ok(ty) => panic!("expected an error, got {ty}"),
        Err(e) => e,
    }
}

// ---- broadcasting ----

#[test]
fn broadcast_symbolic() {
    assert_eq!(
        broadcast_shapes(&sh("B,1"), &sh("1,10")).unwrap(),
        sh("B,10")
    );
    assert_eq!(broadcast_shapes(&sh("10"), &sh("B,1")).unwrap(), sh("B,10"));
    assert_eq!(broadcast_shapes(&sh(""), &sh("B,3")).unwrap(), sh("B,3"));
    assert_eq!(broadcast_shapes(&sh("B,3"), &sh("B,3")).unwrap(), sh("B,3"));
    assert_eq!(
        ok(Op::Binary(BinaryOp::Add), &[f("B,1"), f("1,10")]),
        f("B,10")
    );
    assert_eq!(
        ok(Op::Binary(BinaryOp::Mul), &[f("2,1,4"), f("B,1")]),
        f("2,B,4")
    );
}

#[test]
fn broadcast_distinct_symbols_fail() {
    let e = broadcast_shapes(&sh("B"), &sh("C")).unwrap_err();
    assert_eq!(
        e.message,
        "shapes [B] and [C] do not broadcast: dim 0 of the result would need B = C"
    );
    // A symbol is not stretched even though it might be 1 at run time.
    assert!(broadcast_shapes(&sh("B"), &sh("3")).is_err());
    let e = fails(Op::Binary(BinaryOp::Add), &[f("B"), f("C")], None);
    assert!(e.contains("do not broadcast"), "{e}");
}

#[test]
fn broadcast_constant_mismatch_fails() {
    let e = broadcast_shapes(&sh("3"), &sh("4")).unwrap_err();
    assert_eq!(
        e.message,
        "shapes [3] and [4] do not broadcast: dim 0 of the result would need 3 = 4"
    );
    let e = broadcast_shapes(&sh("2,3"), &sh("4")).unwrap_err();
    assert_eq!(
        e.message,
        "shapes [2,3] and [4] do not broadcast: dim 1 of the result would need 3 = 4"
    );
}

#[test]
fn broadcasts_to_is_one_directional() {
    assert!(broadcasts_to(&sh("1,10"), &sh("B,10")));
    assert!(broadcasts_to(&sh(""), &sh("B,10")));
    assert!(!broadcasts_to(&sh("B,10"), &sh("1,10")));
    assert_eq!(
        ok_declared(Op::Broadcast, &[f("1,10")], f("B,10")),
        f("B,10")
    );
    let e = fails(Op::Broadcast, &[f("3")], Some(f("4")));
    assert_eq!(e, "f32[3] does not broadcast to f32[4]");
    let e = fails(Op::Broadcast, &[f("3")], Some(t(DType::F64, "3")));
    assert_eq!(e, "f32[3] does not broadcast to f64[3]");
}

fn ok_declared(op: Op, args: &[TensorType], declared: TensorType) -> TensorType {
    try_op(op, args, Some(declared)).unwrap_or_else(|e| panic!("unexpected error: {e}"))
}

// ---- matmul ----

#[test]
fn matmul_shapes() {
    assert_eq!(ok(Op::MatMul, &[f("B,784"), f("784,256")]), f("B,256"));
    assert_eq!(ok(Op::MatMul, &[f("B,3,4"), f("B,4,5")]), f("B,3,5"));
    // Batch dims broadcast.
    assert_eq!(ok(Op::MatMul, &[f("2,1,3,4"), f("5,4,6")]), f("2,5,3,6"));
    assert_eq!(ok(Op::MatMul, &[f("3,4"), f("B,4,5")]), f("B,3,5"));
    // Symbolic inner dims contract when equal.
    assert_eq!(ok(Op::MatMul, &[f("M,K"), f("K,N")]), f("M,N"));
    assert_eq!(
        ok(Op::MatMul, &[t(DType::F64, "2,2"), t(DType::F64, "2,2")]),
        t(DType::F64, "2,2")
    );
}

#[test]
fn matmul_errors() {
    let e = fails(Op::MatMul, &[f("B,3"), f("4,5")], None);
    assert_eq!(
        e,
        "matmul inner dims differ: f32[B,3] @ f32[4,5] contracts `3` with `4`"
    );
    let e = fails(Op::MatMul, &[f("M,K"), f("L,N")], None);
    assert_eq!(
        e,
        "matmul inner dims differ: f32[M,K] @ f32[L,N] contracts `K` with `L`"
    );
    let e = fails(Op::MatMul, &[f("2,3,4"), f("5,4,6")], None);
    assert!(e.contains("do not broadcast"), "{e}");
    let e = fails(Op::MatMul, &[f("4"), f("4,5")], None);
    assert_eq!(
        e,
        "matmul needs operands of rank >= 2, found f32[4] and f32[4,5]"
    );
    let e = fails(
        Op::MatMul,
        &[t(DType::I32, "2,2"), t(DType::I32, "2,2")],
        None,
    );
    assert!(
        e.starts_with("matmul needs float operands of one dtype"),
        "{e}"
    );
    let e = fails(Op::MatMul, &[f("2,2"), t(DType::F64, "2,2")], None);
    assert!(
        e.starts_with("matmul needs float operands of one dtype"),
        "{e}"
    );
}

// ---- reductions ----

#[test]
fn reduce_keepdim() {
    let r = |op, axes: Vec<usize>, keepdim| Op::Reduce {
        op,
        axes,
        keepdim,
        ties: Ties::Split,
    };
    assert_eq!(
        ok(r(ReduceOp::Sum, vec![1], false), &[f("B,3,4")]),
        f("B,4")
    );
    assert_eq!(
        ok(r(ReduceOp::Sum, vec![1], true), &[f("B,3,4")]),
        f("B,1,4")
    );
    assert_eq!(
        ok(r(ReduceOp::Mean, vec![0, 2], false), &[f("B,3,4")]),
        f("3")
    );
    assert_eq!(
        ok(r(ReduceOp::Max, vec![2, 0], true), &[f("B,3,4")]),
        f("1,3,1")
    );
    assert_eq!(ok(r(ReduceOp::Mean, vec![0], false), &[f("B")]), f(""));
    assert_eq!(ok(r(ReduceOp::Sum, vec![], false), &[f("B,3")]), f("B,3"));
    let e = fails(r(ReduceOp::Sum, vec![3], false), &[f("B,3,4")], None);
    assert_eq!(e, "axis 3 is out of range for rank 3");
    let e = fails(r(ReduceOp::Sum, vec![1, 1], false), &[f("B,3,4")], None);
    assert_eq!(e, "axis 1 is repeated");
    // maxpool's max: the same type; only a max has ties to route.
    let first = |op| Op::Reduce {
        op,
        axes: vec![1],
        keepdim: false,
        ties: Ties::First,
    };
    assert_eq!(ok(first(ReduceOp::Max), &[f("B,3,4")]), f("B,4"));
    let e = fails(first(ReduceOp::Sum), &[f("B,3,4")], None);
    assert_eq!(
        e,
        "reduce_sum has ties=first, which only reduce_max can have"
    );
}

#[test]
fn argmax_gives_i32_without_the_axis() {
    assert_eq!(ok(Op::ArgMax { axis: 1 }, &[f("B,10")]), t(DType::I32, "B"));
    assert_eq!(
        ok(Op::ArgMax { axis: 0 }, &[f("B,10")]),
        t(DType::I32, "10")
    );
    assert_eq!(ok(Op::ArgMax { axis: 0 }, &[f("7")]), t(DType::I32, ""));
    let e = fails(Op::ArgMax { axis: 0 }, &[f("")], None);
    assert_eq!(e, "axis 0 is out of range for rank 0");
}

// ---- reshape, transpose, slice, concat ----

#[test]
fn reshape_counts_elements_with_symbols() {
    assert_eq!(ok_declared(Op::Reshape, &[f("B,2,3")], f("B,6")), f("B,6"));
    assert_eq!(ok_declared(Op::Reshape, &[f("B,6")], f("6,B")), f("6,B"));
    assert_eq!(
        ok_declared(Op::Reshape, &[f("B,C")], f("C,1,B")),
        f("C,1,B")
    );
    assert_eq!(ok_declared(Op::Reshape, &[f("1")], f("")), f(""));
    let e = fails(Op::Reshape, &[f("B,6")], Some(f("B,5")));
    assert_eq!(e, "cannot reshape [B,6] to [B,5]: element counts differ");
    let e = fails(Op::Reshape, &[f("B,6")], Some(f("C,6")));
    assert_eq!(e, "cannot reshape [B,6] to [C,6]: element counts differ");
    let e = fails(Op::Reshape, &[f("B,B")], Some(f("B")));
    assert_eq!(e, "cannot reshape [B,B] to [B]: element counts differ");
    let e = fails(Op::Reshape, &[f("6")], Some(t(DType::I32, "6")));
    assert_eq!(e, "reshape cannot change dtype");
    let e = fails(Op::Reshape, &[f("6")], None);
    assert_eq!(e, "`reshape` needs a declared result type");
}

#[test]
fn transpose_permutations() {
    let tr = |perm: Vec<usize>| Op::Transpose { perm };
    assert_eq!(ok(tr(vec![1, 0]), &[f("B,3")]), f("3,B"));
    assert_eq!(ok(tr(vec![2, 0, 1]), &[f("A,B,C")]), f("C,A,B"));
    assert_eq!(ok(tr(vec![]), &[f("")]), f(""));
    let e = fails(tr(vec![0, 0]), &[f("B,3")], None);
    assert_eq!(e, "transpose permutation [0, 0] repeats axis 0");
    let e = fails(tr(vec![0, 2]), &[f("B,3")], None);
    assert_eq!(e, "transpose permutation [0, 2] does not fit rank 2");
    let e = fails(tr(vec![0]), &[f("B,3")], None);
    assert_eq!(e, "transpose permutation [0] does not fit rank 2");
}

#[test]
fn slice_ranges() {
    let sl = |axis, start, end| Op::Slice { axis, start, end };
    assert_eq!(ok(sl(1, 1, 3), &[f("B,4")]), f("B,2"));
    assert_eq!(ok(sl(1, 4, 4), &[f("B,4")]), f("B,0"));
    let e = fails(sl(1, 2, 5), &[f("B,4")], None);
    assert_eq!(e, "slice 2..5 is out of range for axis 1 of size 4");
    let e = fails(sl(1, 3, 2), &[f("B,4")], None);
    assert_eq!(e, "slice 3..2 is out of range for axis 1 of size 4");
    let e = fails(sl(0, 0, 1), &[f("B,4")], None);
    assert_eq!(e, "slice needs a constant size on axis 0, found `B`");
    let e = fails(sl(2, 0, 1), &[f("B,4")], None);
    assert_eq!(e, "axis 2 is out of range for rank 2");
}

#[test]
fn concat_shapes() {
    let cc = |axis| Op::Concat { axis };
    assert_eq!(ok(cc(1), &[f("B,2"), f("B,3")]), f("B,5"));
    assert_eq!(ok(cc(0), &[f("2"), f("3"), f("4")]), f("9"));
    assert_eq!(ok(cc(0), &[f("2,B")]), f("2,B"));
    let e = fails(cc(1), &[f("B,2"), f("C,3")], None);
    assert_eq!(
        e,
        "concat operands differ off axis 1: f32[B,2] and f32[C,3]"
    );
    let e = fails(cc(0), &[f("2"), t(DType::F64, "3")], None);
    assert_eq!(e, "concat operands differ: f32[2] and f64[3]");
    let e = fails(cc(0), &[f("2"), f("2,2")], None);
    assert_eq!(e, "concat operands differ: f32[2] and f32[2,2]");
    let e = fails(cc(0), &[f("B,2"), f("B,2")], None);
    assert_eq!(e, "concat needs constant sizes on axis 0, found f32[B,2]");
    let e = fails(cc(0), &[], None);
    assert_eq!(e, "`concat` takes at least 1 operand, found 0");
    // Sizes that overflow are an error, not a panic.
    let huge = TensorType::new(DType::F32, vec![Dim::Const(usize::MAX)]);
    let e = fails(cc(0), &[huge, f("1")], None);
    assert_eq!(e, "concat size on axis 0 overflows");
}

// ---- gather / scatter_add ----

#[test]
fn gather_and_scatter_add() {
    let idx = t(DType::I32, "B");
    assert_eq!(
        ok(Op::Gather { axis: 0 }, &[f("1000,64"), idx.clone()]),
        f("B,64")
    );
    assert_eq!(
        ok(Op::Gather { axis: 1 }, &[f("3,10,5"), t(DType::I32, "B,2")]),
        f("3,B,2,5")
    );
    assert_eq!(
        ok(Op::Gather { axis: 0 }, &[f("10"), t(DType::I32, "")]),
        f("")
    );
    let e = fails(Op::Gather { axis: 0 }, &[f("10,4"), f("B")], None);
    assert_eq!(e, "gather indices must be i32, found f32[B]");
    let e = fails(Op::Gather { axis: 2 }, &[f("10,4"), idx.clone()], None);
    assert_eq!(e, "axis 2 is out of range for rank 2");

    assert_eq!(
        ok_declared(
            Op::ScatterAdd { axis: 0 },
            &[f("B,64"), idx.clone()],
            f("1000,64")
        ),
        f("1000,64")
    );
    let e = fails(
        Op::ScatterAdd { axis: 0 },
        &[f("B,32"), idx.clone()],
        Some(f("1000,64")),
    );
    assert_eq!(
        e,
        "scatter_add updates f32[B,32] do not match gather of f32[1000,64] by i32[B]"
    );
    let e = fails(Op::ScatterAdd { axis: 0 }, &[f("B,64"), idx], None);
    assert_eq!(e, "`scatter_add` needs a declared result type");
}

// ---- dtypes ----

#[test]
fn select_dtype_rules() {
    let c = t(DType::Bool, "B,1");
    assert_eq!(ok(Op::Select, &[c.clone(), f("1,10"), f("")]), f("B,10"));
    assert_eq!(
        ok(
            Op::Select,
            &[c.clone(), t(DType::I32, "B,1"), t(DType::I32, "")]
        ),
        t(DType::I32, "B,1")
    );
    let e = fails(Op::Select, &[f("B,1"), f("B,1"), f("B,1")], None);
    assert_eq!(e, "select condition must be bool, found f32[B,1]");
    let e = fails(
        Op::Select,
        &[c.clone(), f("B,1"), t(DType::F64, "B,1")],
        None,
    );
    assert_eq!(e, "select branches differ in dtype: f32 and f64");
    let e = fails(Op::Select, &[c, f("C,1"), f("B,1")], None);
    assert!(e.contains("do not broadcast"), "{e}");
}

#[test]
fn comparisons_give_bool() {
    for &op in BinaryOp::ALL {
        let r = ok(Op::Binary(op), &[f("B,1"), f("1,3")]);
        let dtype = if op.is_comparison() {
            DType::Bool
        } else {
            DType::F32
        };
        assert_eq!(r, t(dtype, "B,3"), "{op}");
    }
    assert_eq!(
        ok(
            Op::Binary(BinaryOp::Lt),
            &[t(DType::I32, "3"), t(DType::I32, "")]
        ),
        t(DType::Bool, "3")
    );
    // On bool only eq and ne are defined.
    let bools = [t(DType::Bool, "3"), t(DType::Bool, "3")];
    assert_eq!(ok(Op::Binary(BinaryOp::Eq), &bools), t(DType::Bool, "3"));
    assert_eq!(ok(Op::Binary(BinaryOp::Ne), &bools), t(DType::Bool, "3"));
    let e = fails(Op::Binary(BinaryOp::Add), &bools, None);
    assert_eq!(e, "`add` is not defined on bool tensors");
    let e = fails(Op::Binary(BinaryOp::Lt), &bools, None);
    assert_eq!(e, "`lt` is not defined on bool tensors");
    let e = fails(
        Op::Binary(BinaryOp::Add),
        &[f("3"), t(DType::I32, "3")],
        None,
    );
    assert_eq!(e, "`add` needs operands of one dtype, found f32 and i32");
}

#[test]
fn unary_needs_float() {
    for &op in UnaryOp::ALL {
        assert_eq!(ok(Op::Unary(op), &[f("B,3")]), f("B,3"));
        assert_eq!(ok(Op::Unary(op), &[t(DType::F64, "")]), t(DType::F64, ""));
        let e = fails(Op::Unary(op), &[t(DType::I32, "B")], None);
        assert_eq!(e, format!("`{op}` needs a float tensor, found i32[B]"));
        let e = fails(Op::Unary(op), &[t(DType::Bool, "B")], None);
        assert_eq!(e, format!("`{op}` needs a float tensor, found bool[B]"));
    }
}

#[test]
fn cast_keeps_shape() {
    assert_eq!(
        ok_declared(Op::Cast, &[f("B,3")], t(DType::I32, "B,3")),
        t(DType::I32, "B,3")
    );
    let e = fails(Op::Cast, &[f("B,3")], Some(t(DType::I32, "B,4")));
    assert_eq!(e, "cast cannot change shape: f32[B,3] to i32[B,4]");
}

#[test]
fn leaves_and_arity() {
    let e = fails(Op::Iota { axis: 2 }, &[], Some(t(DType::I32, "B,3")));
    assert_eq!(e, "iota axis 2 is out of range for i32[B,3]");
    let e = fails(Op::Const(Literal::Dense(vec![1.0, 2.0])), &[], Some(f("3")));
    assert_eq!(e, "dense constant has 2 values but type f32[3]");
    let e = fails(Op::Const(Literal::Dense(vec![1.0])), &[], Some(f("B")));
    assert_eq!(e, "dense constant has 1 values but type f32[B]");
    let e = fails(Op::Const(Literal::Splat(1.0)), &[], None);
    assert_eq!(e, "`const` needs a declared result type");
    let e = fails(Op::Binary(BinaryOp::Add), &[f("3")], None);
    assert_eq!(e, "`add` takes 2 operands, found 1");
    let e = fails(Op::Unary(UnaryOp::Neg), &[f("3"), f("3")], None);
    assert_eq!(e, "`neg` takes 1 operand, found 2");
    let e = fails(Op::Select, &[], None);
    assert_eq!(e, "`select` takes 3 operands, found 0");
    // `add` checks the declared type against the inferred one.
    let e = fails(Op::Binary(BinaryOp::Add), &[f("3"), f("3")], Some(f("4")));
    assert_eq!(e, "`add` produces f32[3], but f32[4] was declared");
}

#[test]
fn infer_directly() {
    let (a, b) = (f("B,1"), f("1,10"));
    assert_eq!(
        infer(&Op::Binary(BinaryOp::Sub), &[&a, &b], None).unwrap(),
        f("B,10")
    );
    // `declared` is ignored by ops that infer their shape.
    assert_eq!(
        infer(&Op::Binary(BinaryOp::Sub), &[&a, &b], Some(&f("7"))).unwrap(),
        f("B,10")
    );
}

// ---- verifier ----

/// `x -> neg -> exp`, a param and a state with an update each.
fn small() -> (Graph, [NodeId; 5]) {
    let mut g = Graph::new("small");
    let x = g.input("x", f("B,3"));
    let n = g.neg(x).unwrap();
    let e = g.unary(UnaryOp::Exp, n).unwrap();
    let w = g.param("w", f("3"), Init::Zeros);
    let s = g.state("s", f(""), Init::Const(0.0));
    g.set_output("y", e);
    let one = g.scalar(1.0, DType::F32);
    let s2 = g.add_(s, one).unwrap();
    let w2 = g.add_(w, one).unwrap();
    g.updates.push(Update {
        target: "s".into(),
        value: s2,
    });
    g.updates.push(Update {
        target: "w".into(),
        value: w2,
    });
    (g, [x, n, e, w, s])
}

fn verify_err(g: &Graph) -> String {
    match verify(g) {
        Ok(()) => panic!("expected a verify error in\n{g}"),
        Err(e) => {
            assert_eq!(e.graph, g.name);
            e.message
        }
    }
}

#[test]
fn verifier_accepts_a_valid_graph() {
    let (g, _) = small();
    verify(&g).unwrap();
}

#[test]
fn verifier_catches_a_cycle() {
    let (mut g, [_, n, e, ..]) = small();
    g.g.add_edge(e, n, 1);
    assert_eq!(verify_err(&g), "the graph has a cycle");
    // A self loop too.
    let (mut g, [_, n, ..]) = small();
    g.g.add_edge(n, n, 1);
    assert_eq!(verify_err(&g), "the graph has a cycle");
}

#[test]
fn verifier_catches_a_wrong_declared_type() {
    let (mut g, [_, n, ..]) = small();
    g.node_mut(n).ty = f("B,4");
    let m = verify_err(&g);
    assert!(m.starts_with("node `neg` ("), "{m}");
    assert!(
        m.ends_with("is typed f32[B,4] but computes f32[B,3]"),
        "{m}"
    );
    // The same for the last node of the chain.
    let (mut g, [_, _, e, ..]) = small();
    g.node_mut(e).ty = t(DType::F64, "B,3");
    let m = verify_err(&g);
    assert!(
        m.ends_with("is typed f64[B,3] but computes f32[B,3]"),
        "{m}"
    );
    // A leaf whose shape the op needs: a dense constant of the wrong size.
    let mut g = Graph::new("c");
    let c = g
        .add(Op::Const(Literal::Dense(vec![1.0, 2.0])), &[], Some(f("2")))
        .unwrap();
    g.node_mut(c).ty = f("3");
    let m = verify_err(&g);
    assert!(
        m.ends_with("dense constant has 2 values but type f32[3]"),
        "{m}"
    );
}

#[test]
fn verifier_catches_bad_operands() {
    // An extra operand.
    let (mut g, [x, n, ..]) = small();
    g.g.add_edge(x, n, 1);
    let m = verify_err(&g);
    assert!(m.ends_with("`neg` takes 1 operand, found 2"), "{m}");
    // Operand positions that are not 0..n.
    let (mut g, [x, _, _, w, _]) = small();
    let sum = g.add_(x, w).unwrap();
    g.set_output("sum", sum);
    let edge = g.g.find_edge(x, sum).unwrap();
    g.g[edge] = 5;
    let m = verify_err(&g);
    assert!(m.ends_with("has operand positions [1, 5]"), "{m}");
}

#[test]
fn verifier_catches_bad_updates() {
    let (mut g, _) = small();
    let wrong = g.scalar(2.0, DType::F32);
    g.updates[1].value = wrong;
    assert_eq!(
        verify_err(&g),
        "update of `w` has type f32[] but the target is f32[3]"
    );

    let (mut g, [_, n, ..]) = small();
    g.updates.push(Update {
        target: "nope".into(),
        value: n,
    });
    assert_eq!(verify_err(&g), "update of unknown param or state `nope`");

    // Inputs are fed, not updated.
    let (mut g, [_, n, ..]) = small();
    g.updates.push(Update {
        target: "x".into(),
        value: n,
    });
    assert_eq!(verify_err(&g), "update of unknown param or state `x`");

    let (mut g, _) = small();
    let again = g.updates[0].clone();
    g.updates.push(again);
    assert_eq!(verify_err(&g), "`s` is updated twice");

    let (mut g, _) = small();
    let v = g.updates[0].value;
    g.g.remove_node(v);
    g.updates.remove(1);
    assert_eq!(verify_err(&g), "update of `s` refers to a missing node");
}

#[test]
fn verifier_catches_duplicate_names() {
    let (mut g, _) = small();
    g.param("w", f("3"), Init::Ones);
    assert_eq!(verify_err(&g), "param `w` is declared twice");

    let (mut g, _) = small();
    g.input("x", f("B,3"));
    assert_eq!(verify_err(&g), "input `x` is declared twice");

    // Params and states share a namespace with inputs.
    let (mut g, _) = small();
    g.state("w", f("3"), Init::Zeros);
    assert_eq!(verify_err(&g), "`w` is declared both as param and as state");

    let (mut g, [_, n, ..]) = small();
    g.outputs.push(Output {
        name: "y".into(),
        node: n,
    });
    assert_eq!(verify_err(&g), "output `y` is declared twice");
}

#[test]
fn verifier_catches_missing_output_node() {
    let (mut g, [_, _, e, ..]) = small();
    g.g.remove_node(e);
    assert_eq!(verify_err(&g), "output `y` refers to a missing node");
}

#[test]
fn verifier_error_display() {
    let (mut g, _) = small();
    g.param("w", f("3"), Init::Ones);
    let e = verify(&g).unwrap_err();
    assert_eq!(
        e.to_string(),
        "graph `small` is invalid: param `w` is declared twice"
    );
}

#[test]
fn builder_shortcuts_skip_no_ops() {
    let mut g = Graph::new("g");
    let x = g.input("x", f("B,3"));
    assert_eq!(g.cast(x, DType::F32).unwrap(), x);
    assert_eq!(g.reshape(x, sh("B,3")).unwrap(), x);
    assert_eq!(g.broadcast(x, sh("B,3")).unwrap(), x);
    assert_eq!(g.len(), 1);
    assert_eq!(g.resolve_axis(x, -1), Some(1));
    assert_eq!(g.resolve_axis(x, 2), None);
    assert_eq!(shape_of(&[2, 3]), sh("2,3"));
}
