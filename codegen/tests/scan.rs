//! `scan` in the JIT against the reference interpreter
//! (`EvalOptions::F32`): forward and reverse loops, several consts,
//! carries, sequences and outputs, each kind of result, loops read through
//! only some of their results, sequence axes 0 and 1, odd batch sizes (the
//! vector loops' scalar tails), carries that swap or pass through, i32
//! sequences, a tanh RNN, an LSTM-like step, a nested loop, a full training
//! step over a few steps, and the same bits on one and two threads.

use nnc_codegen::{CodegenError, Program, StateBuffer, StateLayout};
use nnc_ir::interp::{self, Env, EvalOptions};
use nnc_ir::{
    shape_of, BinaryOp, DType, Dim, Graph, Init, Op, ReduceOp, ScanBody, Tensor, TensorType,
    UnaryOp,
};
use std::sync::{Arc, Mutex};

/// Tests that set the thread count run one at a time.
static THREADS: Mutex<()> = Mutex::new(());

fn ty(dims: &[usize]) -> TensorType {
    TensorType::new(DType::F32, shape_of(dims))
}

fn sym_ty(dims: &[Dim]) -> TensorType {
    TensorType::new(DType::F32, dims.to_vec())
}

fn b_sym() -> Dim {
    Dim::Sym("B".into())
}

struct Rng(u64);

impl Rng {
    fn unit(&mut self) -> f64 {
        self.0 = self
            .0
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        (self.0 >> 11) as f64 / (1u64 << 53) as f64
    }
    fn tensor(&mut self, dims: &[usize], scale: f64) -> Tensor {
        let n = dims.iter().product();
        let data = (0..n)
            .map(|_| (scale * (2.0 * self.unit() - 1.0)) as f32 as f64)
            .collect();
        Tensor::from_vec(DType::F32, dims, data).unwrap()
    }
    fn ids(&mut self, dims: &[usize], below: usize) -> Tensor {
        let n = dims.iter().product();
        let data = (0..n)
            .map(|_| ((self.unit() * below as f64) as usize).min(below - 1) as f64)
            .collect();
        Tensor::from_vec(DType::I32, dims, data).unwrap()
    }
}

/// A compiled program and the state it was compiled against (dropped
/// after the program).
struct Jit {
    program: Program,
    state: StateBuffer,
}

fn compile(g: &Graph, env: &Env) -> Result<Jit, CodegenError> {
    let mut state = StateBuffer::new(StateLayout::of(&[g])?);
    for (_, name) in g.params() {
        state.set(name, env.get(name).expect("every param has a value"))?;
    }
    let bindings = interp::bind_symbols(g, env).expect("the env binds every symbol");
    let program = Program::compile(g, &bindings, &state)?;
    Ok(Jit { program, state })
}

impl Jit {
    fn feed(&mut self, g: &Graph, env: &Env) {
        for (_, name) in g.inputs() {
            let t = env.get(name).expect("every input has a value");
            match t.dtype {
                DType::I32 | DType::I8 | DType::U8 | DType::Bool => {
                    let v: Vec<i32> = t.data.iter().map(|&x| x as i32).collect();
                    self.program.set_input_i32(name, &v).unwrap();
                }
                _ => {
                    let v: Vec<f32> = t.data.iter().map(|&x| x as f32).collect();
                    self.program.set_input_f32(name, &v).unwrap();
                }
            }
        }
    }

    fn run(&mut self, g: &Graph, env: &Env) {
        self.feed(g, env);
        self.program.run().unwrap();
    }
}

#[track_caller]
fn assert_close(what: &str, got: &Tensor, want: &Tensor, tol: f64) {
    assert_eq!(got.shape, want.shape, "{what}: shape");
    for (i, (&g, &w)) in got.data.iter().zip(&want.data).enumerate() {
        assert!(
            (g - w).abs() <= tol * (1.0 + w.abs()),
            "{what}: element {i}: jit {g} vs interp {w}\njit    {:?}\ninterp {:?}",
            got.data,
            want.data
        );
    }
}

/// Compiles and runs `g` once and compares every output with the
/// interpreter's.
#[track_caller]
fn check(g: &Graph, env: &Env, tol: f64) -> Jit {
    let mut jit = compile(g, env).unwrap();
    jit.run(g, env);
    let want = interp::eval(g, env, EvalOptions::F32).unwrap();
    for o in &g.outputs {
        let got = jit.program.output(&o.name, &jit.state).unwrap();
        assert_close(&o.name, &got, want.output(&o.name).unwrap(), tol);
    }
    jit
}

/// `h' = tanh(x + h @ w)`, `y = 2 h'`.
fn rnn_body(batch: Dim, hidden: usize, reverse: bool, axis: usize) -> Arc<ScanBody> {
    let mut g = Graph::new("rnn");
    let w = g.input("w", ty(&[hidden, hidden]));
    let h = g.input("h", sym_ty(&[batch.clone(), Dim::Const(hidden)]));
    let x = g.input("x", sym_ty(&[batch, Dim::Const(hidden)]));
    let hw = g.matmul(h, w).unwrap();
    let s = g.add_(x, hw).unwrap();
    let h2 = g.unary(UnaryOp::Tanh, s).unwrap();
    let two = g.scalar(2.0, DType::F32);
    let y = g.mul(h2, two).unwrap();
    g.set_output("h", h2);
    g.set_output("y", y);
    ScanBody::new(g, vec![w, h, x], 1, 1, axis, reverse).unwrap()
}

/// An RNN over `xs` (`[B, T, H]`, or `[T, B, H]` along axis 0) with every
/// result an output.
fn rnn(batch: usize, t: usize, hidden: usize, reverse: bool, axis: usize) -> (Graph, Env) {
    let mut rng = Rng(7 + batch as u64 + 10 * t as u64 + reverse as u64);
    let mut g = Graph::new("rnn");
    let seq: Vec<Dim> = if axis == 1 {
        vec![b_sym(), Dim::Const(t), Dim::Const(hidden)]
    } else {
        vec![Dim::Const(t), b_sym(), Dim::Const(hidden)]
    };
    let xs = g.input("xs", sym_ty(&seq));
    let h0 = g.input("h0", sym_ty(&[b_sym(), Dim::Const(hidden)]));
    let w = g.param("w", ty(&[hidden, hidden]), Init::Zeros);
    let r = g
        .scan(&rnn_body(b_sym(), hidden, reverse, axis), &[w, h0, xs])
        .unwrap();
    g.set_output("h_final", r[0]);
    g.set_output("ys", r[1]);
    g.set_output("h_in", r[2]);
    let xs_shape: Vec<usize> = if axis == 1 {
        vec![batch, t, hidden]
    } else {
        vec![t, batch, hidden]
    };
    let env = Env::new()
        .with("xs", rng.tensor(&xs_shape, 1.0))
        .with("h0", rng.tensor(&[batch, hidden], 1.0))
        .with("w", rng.tensor(&[hidden, hidden], 0.6));
    (g, env)
}

#[test]
fn a_tanh_rnn_forward_and_reverse_along_either_axis() {
    for reverse in [false, true] {
        for axis in [0, 1] {
            for (batch, t, hidden) in [(1, 1, 1), (5, 6, 7), (3, 9, 16)] {
                let (g, env) = rnn(batch, t, hidden, reverse, axis);
                check(&g, &env, 1e-5);
            }
        }
    }
}

#[test]
fn a_loop_runs_once_for_all_its_results_and_its_flops_are_trip_times_the_body() {
    let (g, env) = rnn(5, 6, 7, false, 1);
    let jit = check(&g, &env, 1e-5);
    let loops: Vec<_> = jit
        .program
        .kernels()
        .iter()
        .filter(|k| k.label.starts_with("scan"))
        .collect();
    assert_eq!(loops.len(), 1, "{:?}", jit.program.kernels());
    let scan = loops[0];
    assert_eq!(scan.nodes.len(), 3, "the loop computes its three results");
    assert!(scan.label.starts_with("scan x6 "), "{}", scan.label);
    // The body's matmul `[5,7] @ [7,7]` is `2·5·7·7` FLOPs per trip, plus
    // its elementwise work.
    assert!(scan.flops >= 6 * 2 * 5 * 7 * 7, "{}", scan.flops);
    // The listing without code generation says the same.
    let bindings = interp::bind_symbols(&g, &env).unwrap();
    let listed =
        nnc_codegen::summary::kernels(&g, &bindings, &nnc_codegen::GroupConfig::default()).unwrap();
    assert_eq!(listed, jit.program.kernels().to_vec());
    let layout = StateLayout::of(&[&g]).unwrap();
    let plan = nnc_codegen::plan::plan(&g, &bindings, &layout).unwrap();
    let bodies = nnc_codegen::summary::loop_bodies(&plan);
    assert!(!bodies.is_empty());
    let per_trip: u64 = bodies.iter().map(|(_, k)| k.flops).sum();
    assert_eq!(scan.flops, 6 * per_trip);
    assert!(bodies.iter().any(|(label, k)| label.ends_with(".k0")
        && (k.label.starts_with("matmul") || k.label.contains("tanh"))));
    // Profiling times each body kernel, named as listed, and leaves the
    // program's results as they were.
    let mut jit = jit;
    let profiled = jit.program.profile_loop_bodies(3);
    let names: Vec<&String> = profiled.iter().map(|(_, name, _)| name).collect();
    let listed: Vec<&String> = bodies.iter().map(|(name, _)| name).collect();
    assert_eq!(names, listed);
    jit.run(&g, &env);
    let want = interp::eval(&g, &env, EvalOptions::F32).unwrap();
    for o in &g.outputs {
        let got = jit.program.output(&o.name, &jit.state).unwrap();
        assert_close(&o.name, &got, want.output(&o.name).unwrap(), 1e-5);
    }
}

#[test]
fn a_loop_read_through_some_of_its_results() {
    for keep in [vec![0], vec![1], vec![2], vec![1, 2], vec![0, 2]] {
        let (mut g, env) = rnn(3, 5, 4, false, 1);
        let names = ["h_final", "ys", "h_in"];
        g.outputs
            .retain(|o| keep.iter().any(|&k| names[k] == o.name));
        g.prune();
        let scans =
            g.g.node_indices()
                .filter(|&n| matches!(g.node(n).op, Op::Scan { .. }))
                .count();
        assert_eq!(scans, keep.len());
        check(&g, &env, 1e-5);
    }
}

/// Two consts, three carries (`h`, `s`, and `c` passed through), two
/// sequences, three outputs per step (one a sequence input unchanged).
#[test]
fn several_consts_carries_sequences_and_outputs() {
    const H: usize = 5;
    for reverse in [false, true] {
        for batch in [1, 3, 6] {
            let mut body = Graph::new("step");
            let w = body.input("w", ty(&[H, H]));
            let bias = body.input("b", ty(&[H]));
            let h = body.input("h", ty(&[batch, H]));
            let s = body.input("s", ty(&[batch, H]));
            let c = body.input("c", ty(&[batch, 1]));
            let x = body.input("x", ty(&[batch, H]));
            let m = body.input("m", ty(&[batch, 1]));
            let hw = body.matmul(h, w).unwrap();
            let pre = body.add_(x, hw).unwrap();
            let pre = body.add_(pre, bias).unwrap();
            let cand = body.unary(UnaryOp::Tanh, pre).unwrap();
            let one = body.scalar(1.0, DType::F32);
            let keep = body.sub(one, m).unwrap();
            let a = body.mul(m, cand).unwrap();
            let kept = body.mul(keep, h).unwrap();
            let h2 = body.add_(a, kept).unwrap();
            let sq = body.mul(h2, h2).unwrap();
            let s2 = body.add_(s, sq).unwrap();
            let y = body.mul(h2, c).unwrap();
            let y = body.binary(BinaryOp::Mul, y, s2).unwrap();
            body.set_output("h", h2);
            body.set_output("s", s2);
            body.set_output("c", c);
            body.set_output("y", y);
            body.set_output("x", x);
            body.set_output("sum", s2);
            let body = ScanBody::new(body, vec![w, bias, h, s, c, x, m], 2, 3, 1, reverse).unwrap();
            let t = 4;
            let mut g = Graph::new("outer");
            let w = g.param("w", ty(&[H, H]), Init::Zeros);
            let bias = g.param("bias", ty(&[H]), Init::Zeros);
            let h0 = g.input("h0", ty(&[batch, H]));
            let s0 = g.input("s0", ty(&[batch, H]));
            let c0 = g.input("c0", ty(&[batch, 1]));
            let xs = g.input("xs", ty(&[batch, t, H]));
            let ms = g.input("ms", ty(&[batch, t, 1]));
            let r = g.scan(&body, &[w, bias, h0, s0, c0, xs, ms]).unwrap();
            assert_eq!(r.len(), 9);
            for (i, &n) in r.iter().enumerate() {
                g.set_output(format!("r{i}"), n);
            }
            let mut rng = Rng(batch as u64);
            let mask = Tensor::from_vec(
                DType::F32,
                &[batch, t, 1],
                (0..batch * t).map(|i| (i % 3 != 1) as u8 as f64).collect(),
            )
            .unwrap();
            let env = Env::new()
                .with("w", rng.tensor(&[H, H], 0.5))
                .with("bias", rng.tensor(&[H], 0.5))
                .with("h0", rng.tensor(&[batch, H], 1.0))
                .with("s0", rng.tensor(&[batch, H], 1.0))
                .with("c0", rng.tensor(&[batch, 1], 1.0))
                .with("xs", rng.tensor(&[batch, t, H], 1.0))
                .with("ms", mask);
            check(&g, &env, 1e-5);
        }
    }
}

/// Carries that swap each step, and a square carry transposed each step:
/// the next value reads a carry input that is overwritten, so it is staged.
#[test]
fn swapped_and_transposed_carries() {
    let n = 3;
    let mut body = Graph::new("swap");
    let a = body.input("a", ty(&[n, n]));
    let b = body.input("b", ty(&[n, n]));
    let q = body.input("q", ty(&[n, n]));
    let x = body.input("x", ty(&[n, n]));
    let ax = body.add_(a, x).unwrap();
    let qt = body.transpose(q, vec![1, 0]).unwrap();
    let y = body.matmul(q, b).unwrap();
    body.set_output("a", b);
    body.set_output("b", ax);
    body.set_output("q", qt);
    body.set_output("y", y);
    let body = ScanBody::new(body, vec![a, b, q, x], 0, 3, 0, false).unwrap();
    let mut g = Graph::new("outer");
    let a0 = g.input("a0", ty(&[n, n]));
    let b0 = g.input("b0", ty(&[n, n]));
    let q0 = g.input("q0", ty(&[n, n]));
    let xs = g.input("xs", ty(&[5, n, n]));
    let r = g.scan(&body, &[a0, b0, q0, xs]).unwrap();
    for (i, &node) in r.iter().enumerate() {
        g.set_output(format!("r{i}"), node);
    }
    let mut rng = Rng(3);
    let env = Env::new()
        .with("a0", rng.tensor(&[n, n], 1.0))
        .with("b0", rng.tensor(&[n, n], 1.0))
        .with("q0", rng.tensor(&[n, n], 1.0))
        .with("xs", rng.tensor(&[5, n, n], 1.0));
    check(&g, &env, 1e-6);
}

/// Token ids as an i32 sequence, embedded in the body by a gather.
#[test]
fn an_i32_sequence_of_token_ids() {
    let (v, h, batch, t) = (11, 6, 3, 7);
    let mut body = Graph::new("embed");
    let emb = body.input("emb", ty(&[v, h]));
    let w = body.input("w", ty(&[h, h]));
    let state = body.input("h", ty(&[batch, h]));
    let id = body.input("id", TensorType::new(DType::I32, shape_of(&[batch])));
    let e = body.gather(emb, id, 0).unwrap();
    let hw = body.matmul(state, w).unwrap();
    let s = body.add_(e, hw).unwrap();
    let h2 = body.unary(UnaryOp::Tanh, s).unwrap();
    body.set_output("h", h2);
    body.set_output("id", id);
    let body = ScanBody::new(body, vec![emb, w, state, id], 2, 1, 1, false).unwrap();
    let mut g = Graph::new("outer");
    let emb = g.param("emb", ty(&[v, h]), Init::Zeros);
    let w = g.param("w", ty(&[h, h]), Init::Zeros);
    let h0 = g.input("h0", ty(&[batch, h]));
    let ids = g.input("ids", TensorType::new(DType::I32, shape_of(&[batch, t])));
    let r = g.scan(&body, &[emb, w, h0, ids]).unwrap();
    g.set_output("h", r[0]);
    g.set_output("ids_again", r[1]);
    let mut rng = Rng(5);
    let env = Env::new()
        .with("emb", rng.tensor(&[v, h], 1.0))
        .with("w", rng.tensor(&[h, h], 0.5))
        .with("h0", rng.tensor(&[batch, h], 1.0))
        .with("ids", rng.ids(&[batch, t], v));
    check(&g, &env, 1e-5);
}

/// One LSTM step: the four gates from one `[B, H] @ [H, 4H]` product plus
/// the hoisted input projection, sliced; `(h, c)` carried, `h` stacked.
fn lstm_body(batch: Dim, hidden: usize) -> Arc<ScanBody> {
    let mut g = Graph::new("lstm");
    let four = 4 * hidden;
    let w = g.input("w_h", ty(&[hidden, four]));
    let h = g.input("h", sym_ty(&[batch.clone(), Dim::Const(hidden)]));
    let c = g.input("c", sym_ty(&[batch.clone(), Dim::Const(hidden)]));
    let x = g.input("xw", sym_ty(&[batch, Dim::Const(four)]));
    let hw = g.matmul(h, w).unwrap();
    let gates = g.add_(x, hw).unwrap();
    let gate = |g: &mut Graph, i: usize, op: UnaryOp| {
        let s = g.slice(gates, 1, i * hidden, (i + 1) * hidden).unwrap();
        g.unary(op, s).unwrap()
    };
    let i = gate(&mut g, 0, UnaryOp::Sigmoid);
    let f = gate(&mut g, 1, UnaryOp::Sigmoid);
    let cand = gate(&mut g, 2, UnaryOp::Tanh);
    let o = gate(&mut g, 3, UnaryOp::Sigmoid);
    let fc = g.mul(f, c).unwrap();
    let ig = g.mul(i, cand).unwrap();
    let c2 = g.add_(fc, ig).unwrap();
    let tc = g.unary(UnaryOp::Tanh, c2).unwrap();
    let h2 = g.mul(o, tc).unwrap();
    g.set_output("h", h2);
    g.set_output("c", c2);
    g.set_output("y", h2);
    ScanBody::new(g, vec![w, h, c, x], 1, 2, 1, false).unwrap()
}

/// The LSTM model's objective: `xs [B, T, D] @ w_x` hoisted out of the
/// loop, the LSTM over it from zero state, the last `h` through a dense
/// layer to two outputs, mean squared error against `target`.
fn lstm_objective(t: usize, d: usize, hidden: usize) -> Graph {
    let mut g = Graph::new("lstm_model");
    let four = 4 * hidden;
    let xs = g.input("xs", sym_ty(&[b_sym(), Dim::Const(t), Dim::Const(d)]));
    let target = g.input("target", sym_ty(&[b_sym(), Dim::Const(2)]));
    let w_x = g.param("w_x", ty(&[d, four]), Init::Zeros);
    let bias = g.param("bias", ty(&[four]), Init::Zeros);
    let w_h = g.param("w_h", ty(&[hidden, four]), Init::Zeros);
    let w_o = g.param("w_o", ty(&[hidden, 2]), Init::Zeros);
    let xw = g.matmul(xs, w_x).unwrap();
    let xw = g.add_(xw, bias).unwrap();
    // Zero initial state of the batch's size: `xs[:, 0, :1] * 0` broadcast.
    let first = g.slice(xs, 1, 0, 1).unwrap();
    let first = g.slice(first, 2, 0, 1).unwrap();
    let first = g.reshape(first, vec![b_sym(), Dim::Const(1)]).unwrap();
    let zero = g.scalar(0.0, DType::F32);
    let z = g.mul(first, zero).unwrap();
    let h0 = g.broadcast(z, vec![b_sym(), Dim::Const(hidden)]).unwrap();
    let r = g
        .scan(&lstm_body(b_sym(), hidden), &[w_h, h0, h0, xw])
        .unwrap();
    let out = g.matmul(r[0], w_o).unwrap();
    let diff = g.sub(out, target).unwrap();
    let sq = g.mul(diff, diff).unwrap();
    let loss = g.reduce(ReduceOp::Mean, sq, vec![0, 1], false).unwrap();
    g.set_output(nnc_ir::LOSS, loss);
    g.prune();
    g
}

fn lstm_env(batch: usize, t: usize, d: usize, hidden: usize, seed: u64) -> Env {
    let mut rng = Rng(seed);
    let four = 4 * hidden;
    Env::new()
        .with("xs", rng.tensor(&[batch, t, d], 1.0))
        .with("target", rng.tensor(&[batch, 2], 1.0))
        .with("w_x", rng.tensor(&[d, four], 0.4))
        .with("bias", rng.tensor(&[four], 0.1))
        .with("w_h", rng.tensor(&[hidden, four], 0.4))
        .with("w_o", rng.tensor(&[hidden, 2], 0.4))
        .with(
            nnc_ir::LEARNING_RATE,
            Tensor::from_vec(DType::F32, &[], vec![0.5]).unwrap(),
        )
}

#[test]
fn an_lstm_step_forward() {
    for (batch, hidden) in [(1, 3), (3, 5), (4, 8)] {
        let g = lstm_objective(6, 3, hidden);
        let env = lstm_env(batch, 6, 3, hidden, 11);
        check(&g, &env, 1e-5);
    }
}

fn sgd() -> nnc_ir::Optimizer {
    nnc_ir::Optimizer::Sgd {
        lr: 0.5,
        momentum: 0.0,
        nesterov: false,
        weight_decay: 0.0,
    }
}

/// Training steps of the LSTM model (forward scan, the reverse scan of its
/// gradient, SGD), JIT against interpreter, params compared after each.
#[test]
fn training_an_lstm_matches_the_interpreter_over_several_steps() {
    let (batch, t, d, hidden) = (3, 5, 3, 4);
    let step = nnc_passes::build_train_step(&lstm_objective(t, d, hidden), &sgd()).unwrap();
    nnc_ir::verify(&step).unwrap();
    let scans = step
        .g
        .node_indices()
        .filter_map(|n| match &step.node(n).op {
            Op::Scan { body, .. } => Some(body.reverse),
            _ => None,
        })
        .collect::<Vec<_>>();
    assert!(scans.contains(&false) && scans.contains(&true), "{scans:?}");
    let mut env = lstm_env(batch, t, d, hidden, 21);
    let mut jit = compile(&step, &env).unwrap();
    let params: Vec<String> = step.params().iter().map(|(_, n)| n.to_string()).collect();
    let mut losses = Vec::new();
    for s in 0..4 {
        jit.run(&step, &env);
        let want = interp::eval(&step, &env, EvalOptions::F32).unwrap();
        let loss = jit.program.scalar(nnc_ir::LOSS, &jit.state).unwrap();
        let want_loss = want.output(nnc_ir::LOSS).unwrap().data[0];
        assert!(
            (loss - want_loss).abs() <= 1e-5 * (1.0 + want_loss.abs()),
            "step {s}: loss {loss} vs {want_loss}"
        );
        losses.push(loss);
        for u in &step.updates {
            let next = want.get(u.value).unwrap().clone();
            env.insert(u.target.clone(), next);
        }
        for p in &params {
            let got = jit.state.get(p).unwrap();
            assert_close(&format!("step {s}: `{p}`"), &got, env.get(p).unwrap(), 1e-4);
        }
    }
    assert!(losses[3] < losses[0], "{losses:?}");
}

/// The training step at a size whose body kernels split over the pool:
/// the same bits on one thread and on two.
#[test]
fn an_lstm_training_step_is_the_same_on_one_and_two_threads() {
    let _one_at_a_time = THREADS.lock().unwrap_or_else(|e| e.into_inner());
    let (batch, t, d, hidden) = (32, 3, 8, 128);
    let step = nnc_passes::build_train_step(&lstm_objective(t, d, hidden), &sgd()).unwrap();
    let env = lstm_env(batch, t, d, hidden, 31);
    let run = |threads: usize| {
        nnc_codegen::set_threads(threads).unwrap();
        let mut jit = compile(&step, &env).unwrap();
        for _ in 0..2 {
            jit.run(&step, &env);
        }
        let mut bits: Vec<u32> = vec![jit
            .program
            .scalar(nnc_ir::LOSS, &jit.state)
            .unwrap()
            .to_bits() as u32];
        for (_, p) in step.params() {
            let tensor = jit.state.get(p).unwrap();
            bits.extend(tensor.data.iter().map(|&v| (v as f32).to_bits()));
        }
        bits
    };
    let one = run(1);
    let two = run(2);
    nnc_codegen::set_threads(1).unwrap();
    assert!(one == two, "results differ between one and two threads");
}

/// A loop inside a loop's body: per outer step, an inner RNN over a short
/// sequence of its own, starting from the outer carry.
#[test]
fn a_nested_scan() {
    let (batch, t, s, h) = (3, 4, 5, 6);
    let inner = rnn_body(Dim::Const(batch), h, false, 1);
    let mut body = Graph::new("outer_step");
    let w = body.input("w", ty(&[h, h]));
    let state = body.input("state", ty(&[batch, h]));
    let x = body.input("x", ty(&[batch, s, h]));
    let r = body.scan(&inner, &[w, state, x]).unwrap();
    let half = body.scalar(0.5, DType::F32);
    let next = body.mul(r[0], half).unwrap();
    body.set_output("state", next);
    body.set_output("ys", r[1]);
    let body = ScanBody::new(body, vec![w, state, x], 1, 1, 1, true).unwrap();
    let mut g = Graph::new("nested");
    let w = g.param("w", ty(&[h, h]), Init::Zeros);
    let h0 = g.input("h0", ty(&[batch, h]));
    let xs = g.input("xs", ty(&[batch, t, s, h]));
    let r = g.scan(&body, &[w, h0, xs]).unwrap();
    g.set_output("final", r[0]);
    g.set_output("ys", r[1]);
    g.set_output("starts", r[2]);
    let mut rng = Rng(9);
    let env = Env::new()
        .with("w", rng.tensor(&[h, h], 0.5))
        .with("h0", rng.tensor(&[batch, h], 1.0))
        .with("xs", rng.tensor(&[batch, t, s, h], 1.0));
    let jit = check(&g, &env, 1e-5);
    let layout = StateLayout::of(&[&g]).unwrap();
    let plan = nnc_codegen::plan::plan(&g, &Default::default(), &layout).unwrap();
    let bodies = nnc_codegen::summary::loop_bodies(&plan);
    assert!(
        bodies
            .iter()
            .any(|(label, _)| label.matches('.').count() == 2),
        "the inner loop's body is listed: {bodies:?}"
    );
    let scan = &jit.program.kernels()[0];
    assert!(scan.label.contains("reverse"), "{}", scan.label);
}

/// A body in f64 is refused with the JIT's dtype error, not a panic.
#[test]
fn an_f64_body_is_a_clear_error() {
    let mut body = Graph::new("f64");
    let h = body.input("h", TensorType::new(DType::F64, shape_of(&[2])));
    let x = body.input("x", TensorType::new(DType::F64, shape_of(&[2])));
    let s = body.add_(h, x).unwrap();
    body.set_output("h", s);
    let body = ScanBody::new(body, vec![h, x], 0, 1, 0, false).unwrap();
    let mut g = Graph::new("outer");
    let h0 = g.input("h0", TensorType::new(DType::F64, shape_of(&[2])));
    let xs = g.input("xs", TensorType::new(DType::F64, shape_of(&[3, 2])));
    let r = g.scan(&body, &[h0, xs]).unwrap();
    g.set_output("h", r[0]);
    let state = StateBuffer::new(StateLayout::of(&[&g]).unwrap());
    let err = Program::compile(&g, &Default::default(), &state)
        .err()
        .expect("f64 is refused");
    assert!(err.message.contains("f64"), "{}", err.message);
}

/// A body with a dense constant (written into the body's region once, at
/// compile time) after kernels whose buffers the arena could place over
/// that region: the region is the body's for the whole step, so the loop
/// still reads its constant, run after run. (A bidirectional LSTM's
/// forward gradient read zeros padding that earlier kernels had
/// overwritten before the region was kept.)
#[test]
fn a_body_constant_survives_the_kernels_before_its_loop() {
    let (batch, t, h) = (3usize, 4usize, 5usize);
    let mut body = Graph::new("with_constant");
    let hin = body.input("h", sym_ty(&[b_sym(), Dim::Const(h)]));
    let x = body.input("x", sym_ty(&[b_sym(), Dim::Const(h)]));
    let bias = body.add(
        Op::Const(nnc_ir::Literal::Dense(
            (0..h).map(|i| 0.1 * i as f64 + 0.05).collect(),
        )),
        &[],
        Some(ty(&[h])),
    );
    let s = body.add_(hin, x).unwrap();
    let s = body.add_(s, bias.unwrap()).unwrap();
    let h2 = body.unary(UnaryOp::Tanh, s).unwrap();
    body.set_output("h", h2);
    body.set_output("y", h2);
    let body = ScanBody::new(body, vec![hin, x], 0, 1, 1, false).unwrap();

    let mut g = Graph::new("outer");
    // Large intermediates that die before the loop runs.
    let big = g.input("big", sym_ty(&[b_sym(), Dim::Const(512)]));
    let w = g.input("w", ty(&[512, 512]));
    let product = g.matmul(big, w).unwrap();
    let total = g.reduce(ReduceOp::Sum, product, vec![1], true).unwrap();
    let xs = g.input("xs", sym_ty(&[b_sym(), Dim::Const(t), Dim::Const(h)]));
    let total3 = g
        .reshape(total, vec![b_sym(), Dim::Const(1), Dim::Const(1)])
        .unwrap();
    let scaled = g.mul(xs, total3).unwrap();
    let h0 = g.input("h0", sym_ty(&[b_sym(), Dim::Const(h)]));
    let r = g.scan(&body, &[h0, scaled]).unwrap();
    g.set_output("ys", r[1]);
    g.set_output("h_final", r[0]);
    let mut rng = Rng(41);
    let env = Env::new()
        .with("big", rng.tensor(&[batch, 512], 0.01))
        .with("w", rng.tensor(&[512, 512], 0.05))
        .with("xs", rng.tensor(&[batch, t, h], 0.01))
        .with("h0", rng.tensor(&[batch, h], 1.0));
    let mut jit = check(&g, &env, 1e-5);
    // And again, after a run has used the whole arena.
    jit.run(&g, &env);
    let want = interp::eval(&g, &env, EvalOptions::F32).unwrap();
    for o in &g.outputs {
        let got = jit.program.output(&o.name, &jit.state).unwrap();
        assert_close(&o.name, &got, want.output(&o.name).unwrap(), 1e-5);
    }
}
