//! Recurrence in the language: the `scan` statement, and the prelude's
//! `rnn`, `lstm`, `gru` and `embedding` against plain-loop references
//! written from PyTorch's formulas (run in the reference interpreter, exact
//! f64), and their gradients against finite differences.

use nnc_dsl::{compile, Error, SourceFile};
use nnc_ir::init::init_leaves;
use nnc_ir::interp::{eval, Env, EvalOptions};
use nnc_ir::{verify, DType, Graph, Module, Op, Tensor};

#[track_caller]
fn module(text: &str) -> Module {
    match compile(&SourceFile::new("t.nn", text), None) {
        Ok(m) => m,
        Err(e) => panic!(
            "{}\n  at {:?}\n  notes {:?}\n  help {:?}",
            e.message, e.span, e.notes, e.help
        ),
    }
}

#[track_caller]
fn error(text: &str) -> Error {
    match compile(&SourceFile::new("t.nn", text), None) {
        Ok(m) => panic!("compiled, expected an error:\n{}", m.forward),
        Err(e) => e,
    }
}

fn params(g: &Graph) -> Vec<String> {
    let mut v: Vec<String> = g
        .topo_order()
        .into_iter()
        .filter_map(|n| match &g.node(n).op {
            Op::Param { name, .. } => Some(format!("{name}: {}", g.ty(n))),
            _ => None,
        })
        .collect();
    v.sort();
    v
}

fn data(n: usize, seed: usize) -> Vec<f64> {
    (0..n)
        .map(|i| (((i * 37 + seed * 11 + 5) % 23) as f64 / 11.0 - 1.0) * 0.9)
        .collect()
}

fn tensor(shape: &[usize], seed: usize) -> Tensor {
    let n = shape.iter().product();
    Tensor::from_vec(DType::F32, shape, data(n, seed)).unwrap()
}

/// Evaluates `g` exactly on `env` (params initialized from seed 7 unless
/// given) and returns the env with the params and the values.
fn run(g: &Graph, mut env: Env) -> (Env, nnc_ir::Values) {
    verify(g).unwrap_or_else(|e| panic!("{e}\n{g}"));
    init_leaves(g, 7, &mut env).unwrap();
    let values = eval(g, &env, EvalOptions::EXACT).unwrap_or_else(|e| panic!("{e}\n{g}"));
    (env, values)
}

#[track_caller]
fn assert_close(what: &str, got: &[f64], want: &[f64], tol: f64) {
    assert_eq!(got.len(), want.len(), "{what}: length");
    for (i, (g, w)) in got.iter().zip(want).enumerate() {
        assert!(
            (g - w).abs() <= tol * (1.0 + w.abs()),
            "{what}[{i}]: got {g}, want {w}"
        );
    }
}

// ------------------------------------------------------------------ the statement

const RUNNING_SUM: &str = r#"
model M {
    input x: f32[B, 5, 3]
    input h0: f32[B, 3]
    scan(v = each(x), h = h0) {
        h = h + v
        yield partial = h * 2
    }
    output h, partial
}
"#;

#[test]
fn a_scan_carries_state_and_stacks_its_yields() {
    let m = module(RUNNING_SUM);
    let g = &m.forward;
    assert_eq!(g.ty(g.output("h").unwrap()).to_string(), "f32[B,3]");
    assert_eq!(g.ty(g.output("partial").unwrap()).to_string(), "f32[B,5,3]");
    let x = tensor(&[2, 5, 3], 1);
    let h0 = tensor(&[2, 3], 2);
    let (_, v) = run(g, Env::new().with("x", x.clone()).with("h0", h0.clone()));
    let mut h = h0.data.clone();
    let mut partial = vec![0.0; 30];
    for t in 0..5 {
        for b in 0..2 {
            for j in 0..3 {
                h[b * 3 + j] += x.data[b * 15 + t * 3 + j];
                partial[b * 15 + t * 3 + j] = 2.0 * h[b * 3 + j];
            }
        }
    }
    assert_close("h", &v.output("h").unwrap().data, &h, 1e-12);
    assert_close(
        "partial",
        &v.output("partial").unwrap().data,
        &partial,
        1e-12,
    );
}

#[test]
fn a_reverse_scan_runs_from_the_last_step_and_stacks_in_sequence_order() {
    let text = r#"
model M {
    input x: f32[B, 4]
    input h0: f32[B]
    scan(v = each(x), h = h0, reverse: true) {
        h = h * 0.5 + v
        yield seen = h
    }
    output h, seen
}
"#;
    let m = module(text);
    let x = tensor(&[2, 4], 3);
    let h0 = tensor(&[2], 4);
    let (_, v) = run(
        &m.forward,
        Env::new().with("x", x.clone()).with("h0", h0.clone()),
    );
    let mut h = h0.data.clone();
    let mut seen = vec![0.0; 8];
    for t in (0..4).rev() {
        for b in 0..2 {
            h[b] = h[b] * 0.5 + x.data[b * 4 + t];
            seen[b * 4 + t] = h[b];
        }
    }
    assert_close("h", &v.output("h").unwrap().data, &h, 1e-12);
    assert_close("seen", &v.output("seen").unwrap().data, &seen, 1e-12);
}

#[test]
fn the_body_captures_params_and_drops_what_it_never_reads() {
    let text = r#"
model M {
    input x: f32[B, 6, 2]
    input unused: f32[B, 6, 2]
    param w: f32[2, 2] = xavier_uniform
    param v: f32[2] = zeros
    let scale = 3
    scan(a = each(x), skip = each(unused), h = reshape(slice(x, 1, 0, 1), [B, 2])) {
        let ignored = v
        h = tanh(a + matmul(h, w)) * scale
    }
    output h
}
"#;
    let m = module(text);
    let g = &m.forward;
    let scans: Vec<_> = g
        .topo_order()
        .into_iter()
        .filter_map(|n| match &g.node(n).op {
            Op::Scan { body, .. } => Some(body.clone()),
            _ => None,
        })
        .collect();
    assert!(!scans.is_empty());
    let body = &scans[0];
    // `w` is the only const; `unused` and `v` are never read.
    assert_eq!((body.consts, body.carries, body.xs()), (1, 1, 1));
    assert_eq!(params(g), vec!["w: f32[2,2]"]);
}

#[test]
fn scans_nest() {
    let text = r#"
model M {
    input x: f32[B, 3, 4]
    input h0: f32[B]
    scan(row = each(x), total = h0) {
        scan(v = each(row), s = total) {
            s = s + v
        }
        total = s
    }
    output total
}
"#;
    let m = module(text);
    let x = tensor(&[2, 3, 4], 5);
    let h0 = tensor(&[2], 6);
    let (_, v) = run(
        &m.forward,
        Env::new().with("x", x.clone()).with("h0", h0.clone()),
    );
    let want: Vec<f64> = (0..2)
        .map(|b| h0.data[b] + x.data[b * 12..(b + 1) * 12].iter().sum::<f64>())
        .collect();
    assert_close("total", &v.output("total").unwrap().data, &want, 1e-12);
}

fn scan_model(header: &str, body: &str) -> String {
    format!(
        "model M {{\n    input x: f32[B, 5, 3]\n    input y: f32[B, 4, 3]\n    input h0: f32[B, 3]\n    scan({header}) {{\n{body}\n    }}\n    output h\n}}\n"
    )
}

#[track_caller]
fn located(text: &str, message: &str, at: &str) -> Error {
    let e = error(text);
    assert!(e.message.contains(message), "{}", e.message);
    assert_eq!(&text[e.span.start..e.span.end], at, "{}", e.message);
    e
}

#[test]
fn scan_errors_point_at_the_mistake() {
    let e = located(
        &scan_model("v = each(x), h = h0", "        h = concat([h, v], axis: 1)"),
        "the carry `h` enters the loop as f32[B,3] but the body makes it f32[B,6]",
        "h = concat([h, v], axis: 1)",
    );
    assert_eq!(e.secondary.len(), 1);
    located(
        &scan_model(
            "v = each(x), h = h0",
            "        yield o = v\n        yield o = h",
        ),
        "`o` is yielded twice",
        "o",
    );
    located(
        &scan_model("v = each(h0), h = h0, axis: 2", ""),
        "the sequence `v` is f32[B,3], which has no axis 2",
        "h0",
    );
    let e = located(
        &scan_model("v = each(x), w = each(y), h = h0", ""),
        "sequences of different lengths: `w` has 4 steps, `v` has 5",
        "y",
    );
    assert_eq!(e.secondary.len(), 1);
    let e = located(
        &scan_model("v = each(x), h = h0", "        h = h + vv"),
        "unknown name `vv`",
        "vv",
    );
    assert!(e.help.unwrap().contains("`v`"));
    located(
        &scan_model(
            "v = each(x), h = h0",
            "        param w: f32[3, 3] = zeros\n        h = matmul(h, w)",
        ),
        "param `w` is declared inside a `scan` body",
        "param w: f32[3, 3] = zeros",
    );
    located(
        &scan_model("v = each(x), h = h0", "        h = dense(h, 3)"),
        "param `w` is declared inside a `scan` body",
        "dense(h, 3)",
    );
    located(
        &scan_model("h = h0", ""),
        "a `scan` needs at least one sequence",
        "scan(h = h0) {\n\n    }",
    );
    located(
        &scan_model("v = each(x), h = h0", "        v = v * 2"),
        "`v` is this step's slice of a sequence",
        "v",
    );
    located(
        &scan_model("v = each(x), h = h0, axes: 1", ""),
        "unknown option `axes` of `scan`",
        "axes",
    );
    located(
        &scan_model("v = each(x), h = h0, v = each(x)", ""),
        "`v` is bound twice in this `scan`",
        "v",
    );
    located(
        "model M {\n    input x: f32[B, 3]\n    yield y = x\n    output x\n}\n",
        "`yield` outside a `scan` body",
        "yield y = x",
    );
    located(
        &scan_model("v = each(x), h = h0", "        h = dropout(h, 0.5)"),
        "random numbers",
        "dropout(h, 0.5)",
    );
}
