//! The textual IR round-trips: print, parse, print again gives the same
//! text, and parsing never panics.

use nnc_ir::text::parse_module_graphs;
use nnc_ir::{
    parse_graph, shape_of, verify, BinaryOp, DType, Dim, Graph, Init, NodeId, Op, ReduceOp,
    TensorType, TextError, UnaryOp, Update, Window,
};

fn f32t(dims: &[usize]) -> TensorType {
    TensorType::new(DType::F32, shape_of(dims))
}

fn b() -> Dim {
    Dim::sym("B")
}

fn named(g: &mut Graph, id: NodeId, name: &str) -> NodeId {
    g.node_mut(id).name = Some(name.to_string());
    id
}

/// A small classifier with a loss and an SGD-with-momentum step: the
/// graph the snapshot shows.
fn mlp() -> Graph {
    let mut g = Graph::new("train_step");
    let x = g.input("image", TensorType::new(DType::F32, vec![b(), 784.into()]));
    let y = g.input("label", TensorType::new(DType::I32, vec![b()]));
    let w = g.param("dense.w", f32t(&[784, 10]), Init::XavierUniform);
    let bias = g.param("dense.b", f32t(&[10]), Init::Zeros);
    let v = g.state("dense.w.velocity", f32t(&[784, 10]), Init::Zeros);
    let h = g.matmul(x, w).unwrap();
    let logits = g.add_(h, bias).unwrap();
    named(&mut g, logits, "logits");
    let m = g.reduce(ReduceOp::Max, logits, vec![1], true).unwrap();
    let shifted = g.sub(logits, m).unwrap();
    let e = g.unary(UnaryOp::Exp, shifted).unwrap();
    let s = g.reduce(ReduceOp::Sum, e, vec![1], true).unwrap();
    let ls = g.unary(UnaryOp::Log, s).unwrap();
    let logp = g.sub(shifted, ls).unwrap();
    let classes = g
        .iota(1, TensorType::new(DType::I32, vec![b(), 10.into()]))
        .unwrap();
    let y2 = g.reshape(y, vec![b(), 1.into()]).unwrap();
    let hit = g.binary(BinaryOp::Eq, classes, y2).unwrap();
    let onehot = g.cast(hit, DType::F32).unwrap();
    let picked = g.mul(logp, onehot).unwrap();
    let nll = g.reduce(ReduceOp::Sum, picked, vec![1], false).unwrap();
    let mean = g.reduce(ReduceOp::Mean, nll, vec![0], false).unwrap();
    let loss = g.neg(mean).unwrap();
    named(&mut g, loss, "loss");
    let pred = g.argmax(logits, 1).unwrap();
    let mu = g.scalar(0.9, DType::F32);
    let lr = g.scalar(0.001, DType::F32);
    let xt = g.transpose(x, vec![1, 0]).unwrap();
    let scaled = onehot_like(&mut g, onehot);
    let grad = g.matmul(xt, scaled).unwrap();
    let mv = g.mul(mu, v).unwrap();
    let v2 = g.add_(mv, grad).unwrap();
    let step = g.mul(lr, v2).unwrap();
    let w2 = g.sub(w, step).unwrap();
    g.set_output("logits", logits);
    g.set_output("loss", loss);
    g.set_output("prediction", pred);
    g.updates.push(Update {
        target: "dense.w.velocity".into(),
        value: v2,
    });
    g.updates.push(Update {
        target: "dense.w".into(),
        value: w2,
    });
    g
}

fn onehot_like(g: &mut Graph, x: NodeId) -> NodeId {
    let half = g.scalar(0.5, DType::F32);
    g.mul(x, half).unwrap()
}

/// Every op variant, every init, every dtype, scalars, symbolic dims,
/// dense constants and awkward float values.
fn all_ops() -> Graph {
    let mut g = Graph::new("all_ops");
    let bn = TensorType::new(DType::F32, vec![b(), 4.into()]);
    let x = g.input("x", bn.clone());
    let xd = g.input("x64", TensorType::new(DType::F64, vec![Dim::sym("N")]));
    let idx = g.input("idx", TensorType::new(DType::I32, vec![b()]));
    let flag = g.input("flag", TensorType::scalar(DType::Bool));
    let inits = [
        Init::Zeros,
        Init::Ones,
        Init::Const(0.25),
        Init::Uniform {
            low: -0.1,
            high: 0.1,
        },
        Init::Normal {
            mean: 0.0,
            std: 1e-8,
        },
        Init::XavierUniform,
        Init::XavierNormal,
        Init::KaimingUniform,
        Init::KaimingNormal,
    ];
    let mut params = Vec::new();
    for (i, init) in inits.iter().enumerate() {
        params.push(g.param(&format!("p{i}"), f32t(&[4, 4]), init.clone()));
    }
    let st = g.state("step", TensorType::scalar(DType::I32), Init::Const(-3.0));
    let st2 = g.state(
        "moment",
        f32t(&[4, 4]),
        Init::Uniform {
            low: 0.0,
            high: 2.5,
        },
    );
    // Constants: splats of all dtypes and odd values, dense values.
    let c_inf = g.scalar(f64::INFINITY, DType::F32);
    let c_ninf = g.scalar(f64::NEG_INFINITY, DType::F32);
    let c_nan = g.scalar(f64::NAN, DType::F64);
    let c_tiny = g.splat(5e-324, f32t(&[4]));
    let c_big = g.splat(1e300, TensorType::new(DType::F32, vec![b(), 4.into()]));
    let c_negzero = g.scalar(-0.0, DType::F32);
    let c_int = g.scalar(7.0, DType::I32);
    let c_bool = g.scalar(1.0, DType::Bool);
    let dense = g
        .add(
            Op::Const(nnc_ir::Literal::Dense(vec![1.0, -2.5, 1e-8, 3e20])),
            &[],
            Some(f32t(&[2, 2])),
        )
        .unwrap();
    let empty = g
        .add(
            Op::Const(nnc_ir::Literal::Dense(vec![])),
            &[],
            Some(f32t(&[0])),
        )
        .unwrap();
    let mut live = vec![
        c_inf, c_ninf, c_nan, c_tiny, c_big, c_negzero, c_bool, dense, empty,
    ];
    let io = g
        .iota(0, TensorType::new(DType::I32, vec![3.into(), b()]))
        .unwrap();
    live.push(io);
    // Every unary op.
    let mut u = x;
    for &op in UnaryOp::ALL {
        u = g.unary(op, u).unwrap();
    }
    named(&mut g, u, "unary_chain");
    let ud = g.unary(UnaryOp::Sqrt, xd).unwrap();
    live.push(ud);
    // Every binary op; comparisons give bool.
    let mut acc = u;
    for &op in BinaryOp::ALL {
        let r = g.binary(op, acc, c_big).unwrap();
        if op.is_comparison() {
            assert_eq!(g.ty(r).dtype, DType::Bool);
            live.push(r);
        } else {
            acc = r;
        }
    }
    let ib = g.binary(BinaryOp::Add, idx, c_int).unwrap();
    let beq = g.binary(BinaryOp::Ne, flag, c_bool).unwrap();
    let lt = g.binary(BinaryOp::Lt, acc, x).unwrap();
    let sel = g.select(lt, acc, c_tiny).unwrap();
    let sel2 = g.select(beq, x, c_negzero).unwrap();
    live.extend([ib, sel2]);
    let cast = g.cast(sel, DType::F64).unwrap();
    live.push(cast);
    for op in [ReduceOp::Sum, ReduceOp::Mean, ReduceOp::Max] {
        for keepdim in [false, true] {
            live.push(g.reduce(op, sel, vec![0, 1], keepdim).unwrap());
        }
    }
    let r1 = g.reduce(ReduceOp::Sum, sel, vec![], false).unwrap();
    live.push(r1);
    let am = g.argmax(sel, 1).unwrap();
    live.push(am);
    // Batched matmul with broadcast batch dims.
    let w0 = params[0];
    let mm = g.matmul(sel, w0).unwrap();
    let a3 = g.reshape(mm, vec![b(), 2.into(), 2.into()]).unwrap();
    let b3 = g
        .broadcast(dense, vec![3.into(), 1.into(), 2.into(), 2.into()])
        .unwrap();
    let mm3 = g.matmul(a3, b3).unwrap();
    assert_eq!(
        g.ty(mm3).shape,
        vec![3.into(), b(), 2.into(), 2.into()] as Vec<Dim>
    );
    let tr = g.transpose(mm3, vec![1, 3, 0, 2]).unwrap();
    live.push(tr);
    let sl = g.slice(mm, 1, 1, 3).unwrap();
    let cc = g.concat(&[sl, mm, sl], 1).unwrap();
    named(&mut g, cc, "concatenated");
    live.push(cc);
    let gat = g.gather(params[1], idx, 0).unwrap();
    let sc = g.scatter_add(gat, idx, 0, f32t(&[4, 4])).unwrap();
    let img = g.input(
        "img",
        TensorType::new(DType::F32, vec![b(), 2.into(), 7.into(), 5.into()]),
    );
    let window = Window {
        kernel: vec![3, 2],
        stride: vec![2, 1],
        padding: vec![1, 0],
        dilation: vec![1, 2],
    };
    let cols = g.unfold(img, window.clone(), f64::NEG_INFINITY).unwrap();
    named(&mut g, cols, "cols");
    let img_ty = g.ty(img).clone();
    let back = g.fold(cols, window, img_ty).unwrap();
    live.push(back);
    let key = g.input("key", TensorType::scalar(DType::I32));
    let noise = g.random(key, 7, f32t(&[3, 5])).unwrap();
    live.push(noise);
    let mut total = sc;
    for &p in &params[2..] {
        total = g.add_(total, p).unwrap();
    }
    let st_next = g.add_(st, c_int).unwrap();
    let mom = g.mul(st2, total).unwrap();
    for (i, &n) in live.iter().enumerate() {
        g.set_output(format!("out{i}"), n);
    }
    g.set_output("total", total);
    g.updates.push(Update {
        target: "step".into(),
        value: st_next,
    });
    g.updates.push(Update {
        target: "moment".into(),
        value: mom,
    });
    g.updates.push(Update {
        target: "p3".into(),
        value: total,
    });
    g
}

/// Names that are not plain words, strings with escapes.
fn odd_names() -> Graph {
    let mut g = Graph::new("");
    let x = g.input(
        "a \"quoted\" name\\ with\ttab, newline\n, nul\0, é and \u{7f}",
        f32t(&[]),
    );
    let y = g.neg(x).unwrap();
    named(&mut g, y, "has space");
    let z = g.neg(y).unwrap();
    named(&mut g, z, "");
    let p = g.param("w {x}: %1 = @", f32t(&[]), Init::Ones);
    let q = g.add_(p, z).unwrap();
    named(&mut g, q, "//not a comment");
    g.set_output("out put", q);
    g.set_output("=", y);
    g.set_output("dotted.name-1", z);
    g.updates.push(Update {
        target: "w {x}: %1 = @".into(),
        value: q,
    });
    g
}

fn empty_graph() -> Graph {
    Graph::new("empty")
}

/// Print, parse, print again; compare texts and node by node.
fn roundtrip(g: &Graph) -> Graph {
    verify(g).unwrap_or_else(|e| panic!("builder graph invalid: {e}"));
    let text = g.to_string();
    let parsed = parse_graph(&text).unwrap_or_else(|e| panic!("{e}\n{text}"));
    verify(&parsed).unwrap_or_else(|e| panic!("parsed graph invalid: {e}\n{text}"));
    assert_eq!(parsed.to_string(), text);
    assert_eq!(parsed.name, g.name);
    assert_eq!(parsed.len(), g.len());
    let (oa, ob) = (g.topo_order(), parsed.topo_order());
    for (&a, &b) in oa.iter().zip(&ob) {
        let (na, nb) = (g.node(a), parsed.node(b));
        // Debug, not ==, so that NaN constants compare equal.
        assert_eq!(format!("{:?}", na.op), format!("{:?}", nb.op));
        assert_eq!(na.ty, nb.ty);
        assert_eq!(na.name, nb.name);
        let pos = |order: &[NodeId], n: NodeId| order.iter().position(|&m| m == n);
        let ops_a: Vec<_> = g.operands(a).iter().map(|&o| pos(&oa, o)).collect();
        let ops_b: Vec<_> = parsed.operands(b).iter().map(|&o| pos(&ob, o)).collect();
        assert_eq!(ops_a, ops_b);
    }
    let outs = |g: &Graph, order: &[NodeId]| -> Vec<(String, Option<usize>)> {
        g.outputs
            .iter()
            .map(|o| (o.name.clone(), order.iter().position(|&m| m == o.node)))
            .collect()
    };
    assert_eq!(outs(g, &oa), outs(&parsed, &ob));
    let ups = |g: &Graph, order: &[NodeId]| -> Vec<(String, Option<usize>)> {
        g.updates
            .iter()
            .map(|u| (u.target.clone(), order.iter().position(|&m| m == u.value)))
            .collect()
    };
    assert_eq!(ups(g, &oa), ups(&parsed, &ob));
    parsed
}

#[test]
fn roundtrip_mlp() {
    roundtrip(&mlp());
}

#[test]
fn roundtrip_all_ops() {
    let g = all_ops();
    let parsed = roundtrip(&g);
    // Every op variant and every init variant is present.
    let text = g.to_string();
    for m in [
        "input", "param", "state", "const", "iota", "select", "cast", "argmax",
    ] {
        assert!(text.contains(&format!(" = {m} ")), "{m} missing");
    }
    for m in [
        "reduce_sum",
        "reduce_mean",
        "reduce_max",
        "matmul",
        "reshape",
        "transpose",
        "broadcast",
        "slice",
        "concat",
        "gather",
        "scatter_add",
    ] {
        assert!(text.contains(&format!(" = {m} ")), "{m} missing");
    }
    for u in UnaryOp::ALL {
        assert!(text.contains(&format!(" = {u} %")), "{u} missing");
    }
    for b in BinaryOp::ALL {
        assert!(text.contains(&format!(" = {b} %")), "{b} missing");
    }
    for init in [
        "init=zeros ",
        "init=ones ",
        "init=constant(0.25) ",
        "init=constant(-3.0) ",
        "init=uniform(-0.1, 0.1) ",
        "init=normal(0.0, 1e-8) ",
        "init=xavier_uniform ",
        "init=xavier_normal ",
        "init=kaiming_uniform ",
        "init=kaiming_normal ",
    ] {
        assert!(text.contains(init), "{init} missing");
    }
    for lit in [
        "const inf :",
        "const -inf :",
        "const NaN :",
        "const 5e-324 :",
        "const 1e300 :",
        "const -0.0 :",
        "const [1.0, -2.5, 1e-8, 3e20] :",
        "const [] : f32[0]",
        "keepdim=true",
        "keepdim=false",
        "axes=[] ",
        "perm=[1,3,0,2]",
        "axis=1 start=1 end=3",
        ": bool[]",
        ": i32[B]",
        ": f64[N]",
    ] {
        assert!(text.contains(lit), "{lit} missing in\n{text}");
    }
    // Special floats come back bit-exact (NaN as NaN).
    let consts: Vec<f64> = parsed
        .topo_order()
        .into_iter()
        .filter_map(|n| match &parsed.node(n).op {
            Op::Const(nnc_ir::Literal::Splat(v)) => Some(*v),
            _ => None,
        })
        .collect();
    assert!(consts.iter().any(|v| v.is_nan()));
    assert!(consts.contains(&f64::INFINITY));
    assert!(consts.contains(&f64::NEG_INFINITY));
    assert!(consts.contains(&5e-324));
    assert!(consts.iter().any(|v| *v == 0.0 && v.is_sign_negative()));
    assert!(text.contains("@unary_chain"));
}

#[test]
fn roundtrip_odd_names() {
    let g = odd_names();
    let text = g.to_string();
    assert!(text.starts_with("graph \"\" {\n"), "{text}");
    assert!(text.contains("@\"has space\""), "{text}");
    assert!(text.contains("output \"out put\" = "), "{text}");
    assert!(text.contains("output dotted.name-1 = "), "{text}");
    roundtrip(&g);
}

#[test]
fn roundtrip_empty_graph() {
    roundtrip(&empty_graph());
    assert_eq!(empty_graph().to_string(), "graph empty {\n}\n");
}

#[test]
fn roundtrip_after_edits() {
    // Removing nodes leaves holes in the node indices; the text does not care.
    let mut g = mlp();
    g.outputs.retain(|o| o.name != "prediction");
    g.prune();
    roundtrip(&g);
}

#[test]
fn snapshot_mlp() {
    insta::assert_snapshot!("mlp", mlp().to_string());
}

#[test]
fn module_graphs() {
    let text = format!("{}\n{}{}", mlp(), all_ops(), odd_names());
    let graphs = parse_module_graphs(&text).unwrap();
    assert_eq!(graphs.len(), 3);
    assert_eq!(graphs[0].to_string(), mlp().to_string());
    assert_eq!(graphs[1].to_string(), all_ops().to_string());
    assert_eq!(graphs[2].to_string(), odd_names().to_string());
    assert!(parse_module_graphs("").unwrap().is_empty());
    assert!(parse_module_graphs("\n // nothing\n\n").unwrap().is_empty());
    // parse_graph wants exactly one.
    let e = parse_graph(&text).unwrap_err();
    assert_eq!(e.line, mlp().to_string().lines().count() + 2);
    assert!(e
        .message
        .starts_with("expected end of input after the graph"));
}

#[test]
fn lenient_layout() {
    // Blank lines, comments, CRLF, tabs, extra spaces, quoted names and
    // numbers that are not in the printer's form.
    let src = "// a comment\r\n\r\ngraph \"g\" {  // trailing\r\n\
               \t%a = input \"x\"   :   f32[ B , 2 ]\r\n\
               \n\
               %b=mul %a,%a:f32[B,2]@\"sq\"\r\n\
               %7 = const 1.50E+0 : f32[]\n\
               %c = param \"w\" init=normal( 0 , 1 ) : f32[2]\n\
               %d = add %b , %7 : f32[B,2]\n\
               output y = %d\n\
               update w = %c\n\
               }";
    let g = parse_graph(src).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(
        g.to_string(),
        "graph g {\n  \
         %0 = input \"x\" : f32[B,2]\n  \
         %1 = mul %0, %0 : f32[B,2] @sq\n  \
         %2 = const 1.5 : f32[]\n  \
         %3 = param \"w\" init=normal(0.0, 1.0) : f32[2]\n  \
         %4 = add %1, %2 : f32[B,2]\n  \
         output y = %4\n  \
         update \"w\" = %3\n\
         }\n"
    );
}

// ---- errors ----

const HEADER: &str = "graph g {\n  %0 = input \"x\" : f32[2]\n  %1 = input \"y\" : f32[2]\n";

fn parse_err(body: &str) -> TextError {
    let src = format!("{HEADER}{body}");
    match parse_graph(&src) {
        Ok(g) => panic!("parsed:\n{g}"),
        Err(e) => e,
    }
}

fn assert_err(body: &str, line: usize, column: usize, message: &str) {
    let e = parse_err(body);
    assert_eq!(
        (e.line, e.column, e.message.as_str()),
        (line, column, message),
        "for {body:?}"
    );
}

#[test]
fn error_missing_type() {
    assert_err(
        "  %2 = eq %0 %1 : bool[2]\n}\n",
        4,
        14,
        "expected `:` and a type, found `%1`",
    );
    assert_err(
        "  %2 = neg %0\n}\n",
        4,
        14,
        "expected `:` and a type, found end of line",
    );
    let e = parse_err("  %2 = eq %0 %1 : bool[2]\n}\n");
    assert_eq!(
        e.to_string(),
        "line 4, column 14: expected `:` and a type, found `%1`"
    );
}

#[test]
fn error_undefined_reference() {
    assert_err(
        "  %2 = add %0, %9 : f32[2]\n}\n",
        4,
        16,
        "`%9` is not defined before this use",
    );
    assert_err(
        "  output out = %3\n}\n",
        4,
        16,
        "`%3` is not defined before this use",
    );
    // Uses must follow definitions.
    assert_err(
        "  %2 = neg %3 : f32[2]\n  %3 = neg %0 : f32[2]\n}\n",
        4,
        12,
        "`%3` is not defined before this use",
    );
}

#[test]
fn error_duplicate_definition() {
    assert_err(
        "  %0 = neg %1 : f32[2]\n}\n",
        4,
        3,
        "`%0` is defined twice (first on line 2)",
    );
    assert_err(
        "  output o = %0\n  output o = %1\n}\n",
        5,
        3,
        "output `o` is defined twice",
    );
}

#[test]
fn error_type_mismatch() {
    assert_err(
        "  %2 = add %0, %1 : f32[3]\n}\n",
        4,
        21,
        "`add` produces f32[2], but f32[3] was declared",
    );
    assert_err(
        "  %2 = lt %0, %1 : f32[2]\n}\n",
        4,
        20,
        "`lt` produces bool[2], but f32[2] was declared",
    );
}

#[test]
fn error_shape_error() {
    assert_err(
        "  %2 = matmul %0, %1 : f32[2]\n}\n",
        4,
        8,
        "matmul needs operands of rank >= 2, found f32[2] and f32[2]",
    );
    assert_err(
        "  %2 = add %0 : f32[2]\n}\n",
        4,
        8,
        "`add` takes 2 operands, found 1",
    );
    assert_err(
        "  %2 = const [1.0, 2.0] : f32[3]\n}\n",
        4,
        8,
        "dense constant has 2 values but type f32[3]",
    );
    assert_err(
        "  %2 = reduce_sum %0 axes=[1] keepdim=false : f32[]\n}\n",
        4,
        8,
        "axis 1 is out of range for rank 1",
    );
}

#[test]
fn error_unknown_names() {
    assert_err(
        "  %2 = frobnicate %0 : f32[2]\n}\n",
        4,
        8,
        "unknown op `frobnicate`",
    );
    assert_err(
        "  %2 = neg %0 : f16[2]\n}\n",
        4,
        17,
        "unknown element type `f16` (expected f32, f64, i32 or bool)",
    );
    assert_err(
        "  %2 = param \"w\" init=gaussian : f32[2]\n}\n",
        4,
        23,
        "unknown init `gaussian` (expected zeros, ones, constant(v), uniform(lo, hi), \
         normal(mean, std), xavier_uniform, xavier_normal, kaiming_uniform or kaiming_normal)",
    );
}

#[test]
fn error_attributes() {
    assert_err(
        "  %2 = reduce_sum axes=[0] %0 : f32[]\n}\n",
        4,
        28,
        "expected `keepdim=` (an attribute of `reduce_sum`), found `%0`",
    );
    assert_err(
        "  %2 = slice axis=0 start=x end=1 %0 : f32[1]\n}\n",
        4,
        27,
        "expected an integer as the value of `start`, found `x`",
    );
    assert_err(
        "  %2 = transpose perm=[0 %0 : f32[2]\n}\n",
        4,
        26,
        "expected `,` or `]`, found `%0`",
    );
    assert_err(
        "  %2 = iota axis=99999999999999999999999 : i32[2]\n}\n",
        4,
        18,
        "integer `99999999999999999999999` is too large",
    );
    assert_err(
        "  %2 = const 1.0.0 : f32[]\n}\n",
        4,
        14,
        "expected a number or a list `[1.0, 2.0]` as the constant's value, found `1.0.0`",
    );
}

#[test]
fn error_strings() {
    assert_err(
        "  %2 = input \"z : f32[2]\n}\n",
        4,
        14,
        "unterminated string",
    );
    assert_err(
        "  %2 = input \"a\\qb\" : f32[2]\n}\n",
        4,
        16,
        "unknown escape `\\q` in string",
    );
    assert_err(
        "  %2 = input z : f32[2]\n}\n",
        4,
        14,
        "expected the input's name in quotes, found `z`",
    );
}

#[test]
fn error_structure() {
    assert_err(
        "  %2 = neg %0 : f32[2]\n",
        5,
        1,
        "expected `}` to close the graph of line 1, found end of input",
    );
    assert_err(
        "  %2 = neg %0 : f32[2] extra\n}\n",
        4,
        24,
        "expected end of line, found `extra`",
    );
    assert_err(
        "  neg %0\n}\n",
        4,
        3,
        "expected a node `%N = ...`, `body`, `output`, `update` or `}`, found `neg`",
    );
    let e = parse_graph("grph g {\n}\n").unwrap_err();
    assert_eq!(
        (e.line, e.column, e.message.as_str()),
        (1, 1, "expected `graph`, found `grph`")
    );
    let e = parse_graph("").unwrap_err();
    assert_eq!(
        (e.line, e.column, e.message.as_str()),
        (1, 1, "expected `graph`, found end of input")
    );
    // Errors come in source order even after a lexical error later on.
    let e = parse_graph("graph g {\n  %0 = bogus\n  %1 = input \"\n}").unwrap_err();
    assert_eq!((e.line, e.message.as_str()), (2, "unknown op `bogus`"));
}

#[test]
fn error_huge_concat_does_not_overflow() {
    let src = "graph g {\n  %0 = input \"a\" : f32[18446744073709551615]\n  \
               %1 = input \"b\" : f32[1]\n  %2 = concat %0, %1 axis=0 : f32[1]\n}\n";
    let e = parse_graph(src).unwrap_err();
    assert_eq!(e.line, 4);
    assert_eq!(e.message, "concat size on axis 0 overflows");
}

// ---- fuzzing ----

/// splitmix64: tiny, seeded, good enough to pick mutations.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n.max(1) as u64) as usize
    }
}

const ALPHABET: &[char] = &[
    '%',
    '=',
    ':',
    ',',
    '[',
    ']',
    '(',
    ')',
    '{',
    '}',
    '@',
    '"',
    '\\',
    '\n',
    ' ',
    '\t',
    '0',
    '1',
    '9',
    '.',
    '-',
    'e',
    'B',
    'f',
    '3',
    '2',
    'x',
    '/',
    'é',
    '\0',
    '\r',
    'u',
    '\u{10ffff}',
];

fn mutate(rng: &mut Rng, text: &[char]) -> Vec<char> {
    let mut s = text.to_vec();
    for _ in 0..1 + rng.below(4) {
        let start = rng.below(s.len() + 1);
        let max = if rng.below(4) == 0 { 40 } else { 4 };
        let len = 1 + rng.below(max);
        let end = (start + len).min(s.len());
        match rng.below(3) {
            0 => {
                s.drain(start..end);
            }
            1 => {
                let piece: Vec<char> = s[start..end].to_vec();
                let at = rng.below(s.len() + 1);
                s.splice(at..at, piece);
            }
            _ => {
                let piece: Vec<char> = (0..len)
                    .map(|_| {
                        if rng.below(3) == 0 {
                            ALPHABET[rng.below(ALPHABET.len())]
                        } else {
                            text[rng.below(text.len())]
                        }
                    })
                    .collect();
                s.splice(start..end, piece);
            }
        }
    }
    s
}

#[test]
fn fuzz_mutations_never_panic() {
    let base = format!("{}{}", all_ops(), odd_names());
    let one: Vec<char> = all_ops().to_string().chars().collect();
    let two: Vec<char> = base.chars().collect();
    let mut rng = Rng(0x5eed_1234_abcd_0001);
    let (mut ok, mut failed) = (0, 0);
    for case in 0..3000 {
        let text = if case % 2 == 0 { &one } else { &two };
        let src: String = mutate(&mut rng, text).into_iter().collect();
        let result = std::panic::catch_unwind(|| {
            let single = parse_graph(&src);
            let multi = parse_module_graphs(&src);
            (single, multi)
        });
        let (single, multi) = match result {
            Ok(r) => r,
            Err(_) => panic!("case {case}: parser panicked on:\n{src}"),
        };
        match single {
            Ok(g) => {
                ok += 1;
                // Whatever parses prints back to text that parses to the same text.
                let text = g.to_string();
                let again = parse_graph(&text).unwrap_or_else(|e| panic!("{e}\n{text}"));
                assert_eq!(again.to_string(), text, "case {case}");
            }
            Err(e) => {
                failed += 1;
                assert!(e.line >= 1 && e.column >= 1, "case {case}: {e}");
                assert!(e.line <= src.split('\n').count(), "case {case}: {e}");
                assert!(!e.message.is_empty());
            }
        }
        if let Ok(gs) = multi {
            ok += 1;
            for g in gs {
                let text = g.to_string();
                let again = parse_graph(&text).unwrap_or_else(|e| panic!("{e}\n{text}"));
                assert_eq!(again.to_string(), text, "case {case}");
            }
        }
    }
    // The mutations should exercise both paths.
    assert!(ok > 10 && failed > 1000, "ok {ok}, failed {failed}");
}

#[test]
fn truncation_of_long_tokens_in_messages() {
    let long = "y".repeat(500);
    let e = parse_err(&format!("  %2 = neg %0 : f32[2] {long}\n}}\n"));
    assert!(e.message.len() < 120, "{}", e.message);
    assert!(e.message.ends_with("...`"), "{}", e.message);
}

#[test]
fn declared_type_of_unary_on_i32_is_rejected() {
    let src = "graph g {\n  %0 = input \"i\" : i32[2]\n  %1 = neg %0 : i32[2]\n}\n";
    let e = parse_graph(src).unwrap_err();
    assert_eq!((e.line, e.column), (3, 8));
    assert_eq!(e.message, "`neg` needs a float tensor, found i32[2]");
}

#[test]
fn scalar_and_symbolic_types_parse() {
    let src = "graph g {\n  %0 = input \"x\" : f64[Batch,_n,3]\n  %1 = input \"s\" : bool[]\n}\n";
    let g = parse_graph(src).unwrap();
    let x = g.find_leaf("x").unwrap();
    assert_eq!(
        g.ty(x),
        &TensorType::new(
            DType::F64,
            vec![Dim::sym("Batch"), Dim::sym("_n"), Dim::Const(3)]
        )
    );
    assert_eq!(
        g.ty(g.find_leaf("s").unwrap()),
        &TensorType::scalar(DType::Bool)
    );
}

#[test]
fn reduce_max_ties() {
    let src = "graph g {\n  %0 = input \"x\" : f32[2,3]\n  \
               %1 = reduce_max %0 axes=[1] keepdim=false ties=first : f32[2]\n  \
               %2 = reduce_max %0 axes=[1] keepdim=false ties=split : f32[2]\n  \
               output a = %1\n  output b = %2\n}\n";
    let g = parse_graph(src).unwrap_or_else(|e| panic!("{e}"));
    let ties: Vec<_> = ["a", "b"]
        .iter()
        .map(|name| match &g.node(g.output(name).unwrap()).op {
            nnc_ir::Op::Reduce { ties, .. } => *ties,
            other => panic!("{other:?}"),
        })
        .collect();
    assert_eq!(ties, [nnc_ir::Ties::First, nnc_ir::Ties::Split]);
    // The default is not printed, so amax's text is what it was.
    let text = g.to_string();
    assert!(text.contains("keepdim=false ties=first : f32[2]"), "{text}");
    assert!(text.contains("keepdim=false : f32[2]"), "{text}");
    assert_eq!(roundtrip(&g).to_string(), text);

    assert_err(
        "  %2 = reduce_max %0 axes=[0] keepdim=false ties=last : f32[]\n}\n",
        4,
        50,
        "expected `split` or `first` as the value of `ties`, found `last`",
    );
    // Only a max has ties; a sum does not take the attribute.
    assert_err(
        "  %2 = reduce_sum %0 axes=[0] keepdim=false ties=first : f32[]\n}\n",
        4,
        45,
        "expected `:` and a type, found `ties`",
    );
}
