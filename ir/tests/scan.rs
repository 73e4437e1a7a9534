//! `scan`: its meaning against the same recurrence unrolled by hand, its
//! results, its text form, and the errors of a malformed loop.

use nnc_ir::{
    eval, parse_graph, shape_of, verify, DType, Dim, Env, EvalOptions, Graph, Init, NodeId, Op,
    ScanBody, Tensor, TensorType,
};
use std::sync::Arc;

fn f32t(shape: &[Dim]) -> TensorType {
    TensorType::new(DType::F32, shape.to_vec())
}

fn b() -> Dim {
    Dim::Sym("B".into())
}

/// `h' = tanh(x + h @ w)`, `y = h' * 2`: one const, one carry, one
/// sequence, one output per step.
fn rnn_body(hidden: usize, reverse: bool) -> Arc<ScanBody> {
    let mut g = Graph::new("step");
    let w = g.input("w", f32t(&[Dim::Const(hidden), Dim::Const(hidden)]));
    let h = g.input("h", f32t(&[b(), Dim::Const(hidden)]));
    let x = g.input("x", f32t(&[b(), Dim::Const(hidden)]));
    let hw = g.matmul(h, w).unwrap();
    let s = g.add_(x, hw).unwrap();
    let h2 = g.unary(nnc_ir::UnaryOp::Tanh, s).unwrap();
    let two = g.scalar(2.0, DType::F32);
    let y = g.mul(h2, two).unwrap();
    g.set_output("h", h2);
    g.set_output("y", y);
    ScanBody::new(g, vec![w, h, x], 1, 1, 1, reverse).unwrap()
}

fn tensor(shape: &[usize], seed: u64) -> Tensor {
    let n: usize = shape.iter().product();
    let data = (0..n)
        .map(|i| (((i as u64 * 2654435761 + seed * 97) % 1000) as f64 / 1000.0 - 0.5) * 1.5)
        .collect();
    Tensor {
        dtype: DType::F32,
        shape: shape.to_vec(),
        data,
    }
}

const T: usize = 5;
const H: usize = 3;

/// The outer graph: `xs: [B, T, H]`, `h0: [B, H]`, `w: [H, H]` params.
fn looped(reverse: bool) -> Graph {
    let mut g = Graph::new("looped");
    let xs = g.input("xs", f32t(&[b(), Dim::Const(T), Dim::Const(H)]));
    let h0 = g.input("h0", f32t(&[b(), Dim::Const(H)]));
    let w = g.param("w", f32t(&[Dim::Const(H), Dim::Const(H)]), Init::Zeros);
    let body = rnn_body(H, reverse);
    let results = g.scan(&body, &[w, h0, xs]).unwrap();
    g.set_output("h_final", results[0]);
    g.set_output("ys", results[1]);
    g.set_output("h_in", results[2]);
    g
}

/// The same recurrence with a slice, a matmul and a tanh per step.
fn unrolled(reverse: bool) -> Graph {
    let mut g = Graph::new("unrolled");
    let xs = g.input("xs", f32t(&[b(), Dim::Const(T), Dim::Const(H)]));
    let mut h = g.input("h0", f32t(&[b(), Dim::Const(H)]));
    let w = g.param("w", f32t(&[Dim::Const(H), Dim::Const(H)]), Init::Zeros);
    let mut ys: Vec<Option<NodeId>> = vec![None; T];
    let mut h_in: Vec<Option<NodeId>> = vec![None; T];
    let steps: Vec<usize> = if reverse {
        (0..T).rev().collect()
    } else {
        (0..T).collect()
    };
    let step_shape = |g: &Graph, n: NodeId| {
        let mut s = g.ty(n).shape.clone();
        s.insert(1, Dim::Const(1));
        s
    };
    for t in steps {
        let x = g.slice(xs, 1, t, t + 1).unwrap();
        let x = g.reshape(x, vec![b(), Dim::Const(H)]).unwrap();
        let s1 = step_shape(&g, h);
        h_in[t] = Some(g.reshape(h, s1).unwrap());
        let hw = g.matmul(h, w).unwrap();
        let s = g.add_(x, hw).unwrap();
        h = g.unary(nnc_ir::UnaryOp::Tanh, s).unwrap();
        let two = g.scalar(2.0, DType::F32);
        let y = g.mul(h, two).unwrap();
        let s1 = step_shape(&g, y);
        ys[t] = Some(g.reshape(y, s1).unwrap());
    }
    let ys: Vec<NodeId> = ys.into_iter().map(Option::unwrap).collect();
    let h_in: Vec<NodeId> = h_in.into_iter().map(Option::unwrap).collect();
    let ys = g.concat(&ys, 1).unwrap();
    let h_in = g.concat(&h_in, 1).unwrap();
    g.set_output("h_final", h);
    g.set_output("ys", ys);
    g.set_output("h_in", h_in);
    g
}

fn env() -> Env {
    Env::new()
        .with("xs", tensor(&[2, T, H], 1))
        .with("h0", tensor(&[2, H], 2))
        .with("w", tensor(&[H, H], 3))
}

#[test]
fn a_scan_computes_what_the_unrolled_recurrence_computes() {
    for reverse in [false, true] {
        let looped = looped(reverse);
        verify(&looped).unwrap();
        let unrolled = unrolled(reverse);
        let a = eval(&looped, &env(), EvalOptions::default()).unwrap();
        let b = eval(&unrolled, &env(), EvalOptions::default()).unwrap();
        for name in ["h_final", "ys", "h_in"] {
            let (x, y) = (a.output(name).unwrap(), b.output(name).unwrap());
            assert_eq!(x.shape, y.shape, "{name} reverse={reverse}");
            assert_eq!(x.data, y.data, "{name} reverse={reverse}");
        }
    }
}

#[test]
fn a_reverse_scan_still_stacks_in_sequence_order() {
    let a = eval(&looped(false), &env(), EvalOptions::default()).unwrap();
    let r = eval(&looped(true), &env(), EvalOptions::default()).unwrap();
    // Step 0 of the forward loop and step T-1 of the reverse loop start
    // from h0; each is stored at its own sequence position.
    let h0: Vec<f64> = tensor(&[2, H], 2)
        .data
        .iter()
        .map(|&v| v as f32 as f64)
        .collect();
    let h_in_f = a.output("h_in").unwrap();
    let h_in_r = r.output("h_in").unwrap();
    assert_eq!(&h_in_f.data[..H], &h0[..H]);
    assert_eq!(&h_in_r.data[(T - 1) * H..T * H], &h0[..H]);
}

#[test]
fn scan_bodies_print_once_and_parse_back() {
    let g = looped(true);
    let text = g.to_string();
    assert_eq!(text.matches("body b0").count(), 1, "{text}");
    assert_eq!(text.matches("scan ").count(), 3, "{text}");
    let back = parse_graph(&text).unwrap();
    assert_eq!(back.to_string(), text);
    let a = eval(&g, &env(), EvalOptions::default()).unwrap();
    let b = eval(&back, &env(), EvalOptions::default()).unwrap();
    assert_eq!(a.output("ys").unwrap().data, b.output("ys").unwrap().data);
}

#[test]
fn malformed_scans_are_errors() {
    let body = rnn_body(H, false);
    let mut g = Graph::new("bad");
    let xs = g.input("xs", f32t(&[b(), Dim::Const(T), Dim::Const(H)]));
    let h0 = g.input("h0", f32t(&[b(), Dim::Const(H + 1)]));
    let w = g.param("w", f32t(&[Dim::Const(H), Dim::Const(H)]), Init::Zeros);
    let e = g.scan(&body, &[w, h0, xs]).unwrap_err();
    assert!(e.message.contains("initial carry operand 1"), "{e}");
    let h0 = g.input("h0b", f32t(&[b(), Dim::Const(H)]));
    let e = g
        .add(
            Op::Scan {
                body: body.clone(),
                result: 3,
            },
            &[w, h0, xs],
            None,
        )
        .unwrap_err();
    assert!(e.message.contains("the loop has 3 results"), "{e}");
    let e = g
        .add(Op::Scan { body, result: 0 }, &[w, h0], None)
        .unwrap_err();
    assert!(e.message.contains("takes 3 operands"), "{e}");

    // A body reading a param, or whose carry changes type.
    let mut p = Graph::new("step");
    let w = p.param("w", f32t(&[Dim::Const(2)]), Init::Zeros);
    let x = p.input("x", f32t(&[Dim::Const(2)]));
    let y = p.add_(x, w).unwrap();
    p.set_output("y", y);
    let e = ScanBody::new(p, vec![x], 0, 0, 0, false).unwrap_err();
    assert!(e.contains("no params"), "{e}");
    let mut c = Graph::new("step");
    let h = c.input("h", f32t(&[Dim::Const(2)]));
    let x = c.input("x", f32t(&[Dim::Const(2)]));
    let y = c.add_(x, h).unwrap();
    let y = c.reshape(y, shape_of(&[1, 2])).unwrap();
    c.set_output("h", y);
    let e = ScanBody::new(c, vec![h, x], 0, 1, 0, false).unwrap_err();
    assert!(
        e.contains("enters the body as f32[2] but leaves it as f32[1,2]"),
        "{e}"
    );
}

#[test]
fn text_errors_name_the_missing_body() {
    let src =
        "graph g {\n  %0 = input \"x\" : f32[3,2]\n  %1 = scan %0 body=b0 result=0 : f32[2]\n}\n";
    let e = parse_graph(src).unwrap_err();
    assert_eq!(e.line, 3);
    assert!(e.message.contains("no `body b0`"), "{e}");
}
