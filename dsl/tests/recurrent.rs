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

// ------------------------------------------------------------------ prelude layers

#[derive(Clone, Copy, PartialEq, Debug)]
enum Kind {
    Rnn,
    Lstm,
    Gru,
}

impl Kind {
    fn gates(self) -> usize {
        match self {
            Kind::Rnn => 1,
            Kind::Lstm => 4,
            Kind::Gru => 3,
        }
    }
    fn name(self) -> &'static str {
        match self {
            Kind::Rnn => "rnn",
            Kind::Lstm => "lstm",
            Kind::Gru => "gru",
        }
    }
}

/// One direction's params, PyTorch's layout.
struct Dir {
    w_ih: Vec<f64>,
    w_hh: Vec<f64>,
    b_ih: Vec<f64>,
    b_hh: Vec<f64>,
    inp: usize,
}

fn sigmoid(v: f64) -> f64 {
    1.0 / (1.0 + (-v).exp())
}

/// One step, written from PyTorch's documented equations.
fn step(kind: Kind, d: &Dir, hid: usize, x: &[f64], h: &[f64], c: &[f64]) -> (Vec<f64>, Vec<f64>) {
    let g = kind.gates() * hid;
    let wx: Vec<f64> = (0..g)
        .map(|j| {
            d.b_ih[j]
                + (0..d.inp)
                    .map(|k| d.w_ih[j * d.inp + k] * x[k])
                    .sum::<f64>()
        })
        .collect();
    let wh: Vec<f64> = (0..g)
        .map(|j| d.b_hh[j] + (0..hid).map(|k| d.w_hh[j * hid + k] * h[k]).sum::<f64>())
        .collect();
    match kind {
        Kind::Rnn => (
            (0..hid).map(|j| (wx[j] + wh[j]).tanh()).collect(),
            c.to_vec(),
        ),
        Kind::Lstm => {
            let mut h2 = vec![0.0; hid];
            let mut c2 = vec![0.0; hid];
            for j in 0..hid {
                let i = sigmoid(wx[j] + wh[j]);
                let f = sigmoid(wx[hid + j] + wh[hid + j]);
                let gg = (wx[2 * hid + j] + wh[2 * hid + j]).tanh();
                let o = sigmoid(wx[3 * hid + j] + wh[3 * hid + j]);
                c2[j] = f * c[j] + i * gg;
                h2[j] = o * c2[j].tanh();
            }
            (h2, c2)
        }
        Kind::Gru => {
            let h2 = (0..hid)
                .map(|j| {
                    let r = sigmoid(wx[j] + wh[j]);
                    let z = sigmoid(wx[hid + j] + wh[hid + j]);
                    let n = (wx[2 * hid + j] + r * wh[2 * hid + j]).tanh();
                    (1.0 - z) * n + z * h[j]
                })
                .collect();
            (h2, c.to_vec())
        }
    }
}

type Seq = Vec<Vec<Vec<f64>>>;

/// PyTorch's packed-sequence semantics: sequence `b` is its first
/// `lens[b]` steps; the forward direction runs over them, the backward one
/// from step `lens[b] - 1` down to 0; padded outputs are zero. Returns every
/// step's output and the last states (`h_n`, directions concatenated).
fn reference(
    kind: Kind,
    levels: &[Vec<Dir>],
    x: &Seq,
    lens: &[usize],
    hid: usize,
) -> (Seq, Vec<Vec<f64>>) {
    let (bs, ts) = (x.len(), x[0].len());
    let mut input = x.clone();
    let mut last = vec![Vec::new(); bs];
    for level in levels {
        let dirs = level.len();
        let mut out = vec![vec![vec![0.0; hid * dirs]; ts]; bs];
        last = vec![Vec::new(); bs];
        for (di, d) in level.iter().enumerate() {
            for b in 0..bs {
                let (mut h, mut c) = (vec![0.0; hid], vec![0.0; hid]);
                let steps: Vec<usize> = if di == 0 {
                    (0..lens[b]).collect()
                } else {
                    (0..lens[b]).rev().collect()
                };
                for t in steps {
                    (h, c) = step(kind, d, hid, &input[b][t], &h, &c);
                    out[b][t][di * hid..(di + 1) * hid].copy_from_slice(&h);
                }
                last[b].extend(&h);
            }
        }
        input = out;
    }
    (input, last)
}

struct Config {
    kind: Kind,
    layers: usize,
    bidirectional: bool,
    return_sequences: bool,
    masked: bool,
}

const B: usize = 2;
const T: usize = 4;
const IN: usize = 3;
const H: usize = 2;
const LENS: [usize; 2] = [4, 2];

fn source(c: &Config) -> String {
    let mask_input = if c.masked {
        "    input mask: f32[B, 4]\n"
    } else {
        ""
    };
    let mask_arg = if c.masked { ", mask: mask" } else { "" };
    format!(
        "model M {{\n    input x: f32[B, 4, 3]\n{mask_input}    y = {}(x, 2, layers: {}, bidirectional: {}, return_sequences: {}{mask_arg})\n    output y\n    output loss = mean(y * y)\n}}\n",
        c.kind.name(),
        c.layers,
        c.bidirectional,
        c.return_sequences
    )
}

fn env_of(c: &Config) -> Env {
    let mut env = Env::new().with("x", tensor(&[B, T, IN], 3));
    if c.masked {
        let mask: Vec<f64> = (0..B)
            .flat_map(|b| (0..T).map(move |t| if t < LENS[b] { 1.0 } else { 0.0 }))
            .collect();
        env.insert("mask", Tensor::from_vec(DType::F32, &[B, T], mask).unwrap());
    }
    env
}

/// The params of each level and direction, read back from the env.
fn levels_of(c: &Config, env: &Env) -> Vec<Vec<Dir>> {
    let dirs = if c.bidirectional { 2 } else { 1 };
    (0..c.layers)
        .map(|k| {
            let level = match k {
                0 => format!("{0}.{0}_layer", c.kind.name()),
                k => format!("{0}.{0}_layer_{k}", c.kind.name()),
            };
            (0..dirs)
                .map(|d| {
                    let suffix = if d == 0 { "" } else { "_reverse" };
                    let get = |p: &str| {
                        env.get(&format!("{level}.{p}{suffix}"))
                            .unwrap_or_else(|| panic!("no param {level}.{p}{suffix}"))
                            .data
                            .clone()
                    };
                    Dir {
                        w_ih: get("weight_ih"),
                        w_hh: get("weight_hh"),
                        b_ih: get("bias_ih"),
                        b_hh: get("bias_hh"),
                        inp: if k == 0 { IN } else { H * dirs },
                    }
                })
                .collect()
        })
        .collect()
}

fn check_forward(c: &Config) {
    let m = module(&source(c));
    let (env, values) = run(&m.forward, env_of(c));
    let x = tensor(&[B, T, IN], 3);
    let xs: Seq = (0..B)
        .map(|b| {
            (0..T)
                .map(|t| x.data[(b * T + t) * IN..(b * T + t + 1) * IN].to_vec())
                .collect()
        })
        .collect();
    let lens = if c.masked { LENS } else { [T; B] };
    let (seq, last) = reference(c.kind, &levels_of(c, &env), &xs, &lens, H);
    let want: Vec<f64> = if c.return_sequences {
        seq.into_iter().flatten().flatten().collect()
    } else {
        last.into_iter().flatten().collect()
    };
    let dirs = if c.bidirectional { 2 } else { 1 };
    let y = values.output("y").unwrap();
    let shape = if c.return_sequences {
        vec![B, T, H * dirs]
    } else {
        vec![B, H * dirs]
    };
    assert_eq!(y.shape, shape, "{:?}", c.kind);
    assert_close(
        &format!("{:?} {} layers", c.kind, c.layers),
        &y.data,
        &want,
        1e-12,
    );
}

fn configs(kind: Kind) -> Vec<Config> {
    let c = |layers, bidirectional, return_sequences, masked| Config {
        kind,
        layers,
        bidirectional,
        return_sequences,
        masked,
    };
    vec![
        c(1, false, false, false),
        c(1, false, true, true),
        c(1, true, false, true),
        c(2, false, true, false),
        c(2, true, true, true),
        c(3, true, false, false),
    ]
}

#[test]
fn rnn_matches_pytorch_formulas() {
    configs(Kind::Rnn).iter().for_each(check_forward);
}

#[test]
fn lstm_matches_pytorch_formulas() {
    configs(Kind::Lstm).iter().for_each(check_forward);
}

#[test]
fn gru_matches_pytorch_formulas() {
    configs(Kind::Gru).iter().for_each(check_forward);
}

#[test]
fn recurrent_params_have_pytorch_layout_and_init() {
    let m = module(&source(&Config {
        kind: Kind::Lstm,
        layers: 2,
        bidirectional: true,
        return_sequences: false,
        masked: false,
    }));
    let p = params(&m.forward);
    assert_eq!(p.len(), 16, "{p:?}");
    assert!(
        p.contains(&"lstm.lstm_layer.weight_ih: f32[8,3]".to_string()),
        "{p:?}"
    );
    assert!(
        p.contains(&"lstm.lstm_layer_1.weight_ih_reverse: f32[8,4]".to_string()),
        "{p:?}"
    );
    assert!(
        p.contains(&"lstm.lstm_layer_1.bias_hh: f32[8]".to_string()),
        "{p:?}"
    );
    let bound = 1.0 / (H as f64).sqrt();
    for n in m.forward.topo_order() {
        if let Op::Param { name, init } = &m.forward.node(n).op {
            assert_eq!(
                *init,
                nnc_ir::Init::Uniform {
                    low: -bound,
                    high: bound
                },
                "{name}"
            );
        }
    }
    // A unidirectional GRU reads (so has) no `_reverse` params.
    let m = module(&source(&Config {
        kind: Kind::Gru,
        layers: 1,
        bidirectional: false,
        return_sequences: true,
        masked: false,
    }));
    assert_eq!(
        params(&m.forward),
        vec![
            "gru.gru_layer.bias_hh: f32[6]",
            "gru.gru_layer.bias_ih: f32[6]",
            "gru.gru_layer.weight_hh: f32[6,2]",
            "gru.gru_layer.weight_ih: f32[6,3]",
        ]
    );
}

#[test]
fn the_input_projection_is_one_product_before_the_loop() {
    for kind in [Kind::Rnn, Kind::Lstm, Kind::Gru] {
        let m = module(&source(&Config {
            kind,
            layers: 1,
            bidirectional: false,
            return_sequences: false,
            masked: true,
        }));
        let g = &m.forward;
        let body = g
            .topo_order()
            .into_iter()
            .find_map(|n| match &g.node(n).op {
                Op::Scan { body, .. } => Some(body.clone()),
                _ => None,
            })
            .expect("a scan");
        let matmuls = |g: &Graph| {
            g.topo_order()
                .into_iter()
                .filter(|&n| g.node(n).op.mnemonic() == "matmul")
                .count()
        };
        assert_eq!(matmuls(&body.graph), 1, "{kind:?}: one product per step");
        assert_eq!(matmuls(g), 1, "{kind:?}: one product outside");
        // weight_hh^T (and GRU's b_hh) are the consts; h (and c) the carries;
        // the projected input and the mask the sequences.
        let consts = if kind == Kind::Gru { 2 } else { 1 };
        let carries = if kind == Kind::Lstm { 2 } else { 1 };
        assert_eq!(
            (body.consts, body.carries, body.xs()),
            (consts, carries, 2),
            "{kind:?}"
        );
    }
}

/// Gradients of `mean(y * y)` through `nnc_passes::gradients`, exact, against
/// central differences of the same graph.
fn check_gradients(c: &Config) {
    let m = module(&source(c));
    let mut g = m.forward.clone();
    let loss = g.output("loss").unwrap();
    let params: Vec<(nnc_ir::NodeId, String)> = g
        .topo_order()
        .into_iter()
        .filter_map(|n| match &g.node(n).op {
            Op::Param { name, .. } => Some((n, name.clone())),
            _ => None,
        })
        .collect();
    let ids: Vec<_> = params.iter().map(|p| p.0).collect();
    let grads = nnc_passes::gradients(&mut g, loss, &ids).unwrap();
    for ((_, name), gr) in params.iter().zip(&grads) {
        g.set_output(format!("grad.{name}"), *gr);
    }
    let (env, values) = run(&g, env_of(c));
    let loss_at = |env: &Env| {
        eval(&m.forward, env, EvalOptions::EXACT)
            .unwrap()
            .output("loss")
            .unwrap()
            .data[0]
    };
    let eps = 1e-6;
    for (_, name) in &params {
        let analytic = values.output(&format!("grad.{name}")).unwrap().data.clone();
        let n = analytic.len();
        for i in [0, n / 2, n - 1] {
            let mut plus = env.clone();
            plus.get_mut(name).unwrap().data[i] += eps;
            let mut minus = env.clone();
            minus.get_mut(name).unwrap().data[i] -= eps;
            let numeric = (loss_at(&plus) - loss_at(&minus)) / (2.0 * eps);
            assert!(
                (numeric - analytic[i]).abs() <= 1e-7 + 1e-5 * numeric.abs(),
                "{:?} d loss / d {name}[{i}]: analytic {}, numeric {numeric}",
                c.kind,
                analytic[i]
            );
        }
    }
}

#[test]
fn recurrent_gradients_match_finite_differences() {
    for kind in [Kind::Rnn, Kind::Lstm, Kind::Gru] {
        check_gradients(&Config {
            kind,
            layers: 2,
            bidirectional: true,
            return_sequences: true,
            masked: true,
        });
        check_gradients(&Config {
            kind,
            layers: 1,
            bidirectional: false,
            return_sequences: false,
            masked: false,
        });
    }
}

#[test]
fn embedding_looks_rows_up_and_its_gradient_scatters() {
    let text = "model M {\n    input tokens: i32[B, 3]\n    y = embedding(tokens, 5, 2)\n    output y\n    output loss = mean(y * y)\n}\n";
    let m = module(text);
    assert_eq!(params(&m.forward), vec!["embedding.weight: f32[5,2]"]);
    let init = m
        .forward
        .topo_order()
        .into_iter()
        .find_map(|n| match &m.forward.node(n).op {
            Op::Param { init, .. } => Some(init.clone()),
            _ => None,
        });
    assert_eq!(
        init,
        Some(nnc_ir::Init::Normal {
            mean: 0.0,
            std: 1.0
        })
    );
    let tokens = Tensor::from_vec(DType::I32, &[2, 3], vec![4.0, 0.0, 4.0, 1.0, 3.0, 2.0]).unwrap();
    let mut g = m.forward.clone();
    let loss = g.output("loss").unwrap();
    let w = g.find_leaf("embedding.weight").unwrap();
    let grad = nnc_passes::gradients(&mut g, loss, &[w]).unwrap()[0];
    g.set_output("grad", grad);
    let (env, values) = run(&g, Env::new().with("tokens", tokens.clone()));
    let weight = &env.get("embedding.weight").unwrap().data;
    let want: Vec<f64> = tokens
        .data
        .iter()
        .flat_map(|&t| weight[t as usize * 2..t as usize * 2 + 2].to_vec())
        .collect();
    assert_close("y", &values.output("y").unwrap().data, &want, 0.0);
    // d mean(y^2) / d weight[r] = sum over the tokens equal to r of 2 y / 12.
    let mut want = vec![0.0; 10];
    for &t in &tokens.data {
        for j in 0..2 {
            want[t as usize * 2 + j] += 2.0 * weight[t as usize * 2 + j] / 12.0;
        }
    }
    assert_close("grad", &values.output("grad").unwrap().data, &want, 1e-12);
    let ops: Vec<&str> = g
        .topo_order()
        .into_iter()
        .map(|n| g.node(n).op.mnemonic())
        .collect();
    assert!(ops.contains(&"scatter_add"), "{ops:?}");
    assert!(!ops.contains(&"iota"), "a one-hot in the gradient: {ops:?}");
}

// ------------------------------------------------------------------ PyTorch parity

/// The weights `torch_recurrent.py` gives the PyTorch param `name`.
fn torch_value(name: &str, i: usize) -> f64 {
    let seed = name.bytes().map(|b| b as usize).sum::<usize>() % 97;
    0.5 * (0.37 * i as f64 + 0.11 * seed as f64).sin()
}

fn fixture(key: &str) -> Vec<f64> {
    let text = include_str!("fixtures/torch_recurrent.txt");
    let line = text
        .lines()
        .find(|l| l.split(' ').next() == Some(key))
        .unwrap_or_else(|| panic!("no `{key}` in the fixture"));
    line.split(' ')
        .skip(1)
        .map(|v| v.parse().unwrap())
        .collect()
}

/// Runs `c` with every param set as PyTorch's of the same meaning.
fn run_with_torch_weights(c: &Config) -> Vec<f64> {
    let m = module(&source(c));
    let g = &m.forward;
    let mut env = env_of(c);
    let x: Vec<f64> = (0..B * T * IN).map(|i| torch_value("x", i)).collect();
    env.insert("x", Tensor::from_vec(DType::F32, &[B, T, IN], x).unwrap());
    for n in g.topo_order() {
        if let Op::Param { name, .. } = &g.node(n).op {
            // `lstm.lstm_layer_1.weight_hh_reverse` is `weight_hh_l1_reverse`.
            let mut parts = name.split('.').skip(1);
            let (level, field) = (parts.next().unwrap(), parts.next().unwrap());
            let k = level.rsplit_once("_layer_").map_or("0", |(_, k)| k);
            let (base, reverse) = match field.strip_suffix("_reverse") {
                Some(b) => (b, "_reverse"),
                None => (field, ""),
            };
            let torch = format!("{base}_l{k}{reverse}");
            let shape: Vec<usize> = g
                .ty(n)
                .shape
                .iter()
                .map(|d| d.as_const().unwrap())
                .collect();
            let data = (0..shape.iter().product())
                .map(|i| torch_value(&torch, i))
                .collect();
            env.insert(name, Tensor::from_vec(DType::F32, &shape, data).unwrap());
        }
    }
    let (_, values) = run(g, env);
    values.output("y").unwrap().data.clone()
}

#[test]
fn lstm_and_gru_match_pytorch() {
    for (kind, layers, bidirectional, masked) in
        [(Kind::Lstm, 2, true, true), (Kind::Gru, 1, false, false)]
    {
        for return_sequences in [true, false] {
            let got = run_with_torch_weights(&Config {
                kind,
                layers,
                bidirectional,
                return_sequences,
                masked,
            });
            let key = format!(
                "{}.{}",
                kind.name(),
                if return_sequences {
                    "sequences"
                } else {
                    "last"
                }
            );
            assert_close(&key, &got, &fixture(&key), 1e-12);
        }
    }
}
