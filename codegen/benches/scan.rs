//! A recurrent model's training step: compile time against the sequence
//! length (the loop's body is compiled once, never unrolled, so T = 100
//! and T = 1000 should compile in about the same time), and the step's
//! time in the JIT and in the reference interpreter.
//!
//! `cargo bench -p nnc-codegen --bench scan [-- --quick] [--threads N] [--kernels]`
//!
//! `--kernels` lists the step's kernels and each loop body's.
//!
//! The model: `xs: f32[32, T, 64]`, the input projection `xs @ w_x + b`
//! hoisted out of the loop as one product, an LSTM of hidden size 128 as a
//! `scan` (four gates from one `[32,128] @ [128,512]` product per step),
//! the last `h` through a dense layer to 2 outputs, mean squared error,
//! SGD; the training step is `nnc_passes::build_train_step` of it (the
//! gradient is a reverse scan).

use nnc_codegen::{Program, StateBuffer, StateLayout};
use nnc_ir::interp::{self, Env, EvalOptions};
use nnc_ir::{shape_of, DType, Graph, Init, ReduceOp, ScanBody, Tensor, TensorType, UnaryOp};
use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

const BATCH: usize = 32;
const INPUT: usize = 64;
const HIDDEN: usize = 128;

fn ty(dims: &[usize]) -> TensorType {
    TensorType::new(DType::F32, shape_of(dims))
}

fn lstm_body() -> Arc<ScanBody> {
    let mut g = Graph::new("lstm");
    let four = 4 * HIDDEN;
    let w = g.input("w_h", ty(&[HIDDEN, four]));
    let h = g.input("h", ty(&[BATCH, HIDDEN]));
    let c = g.input("c", ty(&[BATCH, HIDDEN]));
    let x = g.input("xw", ty(&[BATCH, four]));
    let hw = g.matmul(h, w).expect("matmul");
    let gates = g.add_(x, hw).expect("add");
    let gate = |g: &mut Graph, i: usize, op: UnaryOp| {
        let s = g
            .slice(gates, 1, i * HIDDEN, (i + 1) * HIDDEN)
            .expect("slice");
        g.unary(op, s).expect("gate")
    };
    let i = gate(&mut g, 0, UnaryOp::Sigmoid);
    let f = gate(&mut g, 1, UnaryOp::Sigmoid);
    let cand = gate(&mut g, 2, UnaryOp::Tanh);
    let o = gate(&mut g, 3, UnaryOp::Sigmoid);
    let fc = g.mul(f, c).expect("mul");
    let ig = g.mul(i, cand).expect("mul");
    let c2 = g.add_(fc, ig).expect("add");
    let tc = g.unary(UnaryOp::Tanh, c2).expect("tanh");
    let h2 = g.mul(o, tc).expect("mul");
    g.set_output("h", h2);
    g.set_output("c", c2);
    ScanBody::new(g, vec![w, h, c, x], 1, 2, 1, false).expect("body")
}

fn objective(t: usize) -> Graph {
    let mut g = Graph::new("lstm_model");
    let four = 4 * HIDDEN;
    let xs = g.input("xs", ty(&[BATCH, t, INPUT]));
    let target = g.input("target", ty(&[BATCH, 2]));
    let h0 = g.input("h0", ty(&[BATCH, HIDDEN]));
    let w_x = g.param("w_x", ty(&[INPUT, four]), Init::Zeros);
    let bias = g.param("bias", ty(&[four]), Init::Zeros);
    let w_h = g.param("w_h", ty(&[HIDDEN, four]), Init::Zeros);
    let w_o = g.param("w_o", ty(&[HIDDEN, 2]), Init::Zeros);
    let xw = g.matmul(xs, w_x).expect("projection");
    let xw = g.add_(xw, bias).expect("bias");
    let r = g.scan(&lstm_body(), &[w_h, h0, h0, xw]).expect("scan");
    let out = g.matmul(r[0], w_o).expect("dense");
    let diff = g.sub(out, target).expect("sub");
    let sq = g.mul(diff, diff).expect("mul");
    let loss = g
        .reduce(ReduceOp::Mean, sq, vec![0, 1], false)
        .expect("mean");
    g.set_output(nnc_ir::LOSS, loss);
    g.prune();
    g
}

fn sgd() -> nnc_ir::Optimizer {
    nnc_ir::Optimizer::Sgd {
        lr: 0.1,
        momentum: 0.0,
        nesterov: false,
        weight_decay: 0.0,
    }
}

fn values(dims: &[usize], seed: u64, scale: f64) -> Tensor {
    let n: usize = dims.iter().product();
    let data = (0..n as u64)
        .map(|i| {
            let h = (i.wrapping_add(seed).wrapping_mul(0x9E37_79B9_7F4A_7C15) >> 40) as f64;
            (scale * (h / (1u64 << 24) as f64 - 0.5)) as f32 as f64
        })
        .collect();
    Tensor::from_vec(DType::F32, dims, data).expect("tensor")
}

fn env(t: usize) -> Env {
    let four = 4 * HIDDEN;
    Env::new()
        .with("xs", values(&[BATCH, t, INPUT], 1, 2.0))
        .with("target", values(&[BATCH, 2], 2, 2.0))
        .with("h0", values(&[BATCH, HIDDEN], 3, 0.0))
        .with("w_x", values(&[INPUT, four], 4, 0.2))
        .with("bias", values(&[four], 5, 0.2))
        .with("w_h", values(&[HIDDEN, four], 6, 0.2))
        .with("w_o", values(&[HIDDEN, 2], 7, 0.2))
        .with(
            nnc_ir::LEARNING_RATE,
            Tensor::from_vec(DType::F32, &[], vec![0.1]).expect("lr"),
        )
}

fn median(mut times: Vec<Duration>) -> Duration {
    times.sort();
    times[times.len() / 2]
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

fn main() {
    let quick = std::env::args().any(|a| a == "--quick");
    let rounds = if quick { 3 } else { 9 };
    let args: Vec<String> = std::env::args().collect();
    let list = args.iter().any(|a| a == "--kernels");
    let threads = args
        .iter()
        .position(|a| a == "--threads")
        .and_then(|i| args.get(i + 1)?.parse().ok())
        .unwrap_or(1);
    nnc_codegen::set_threads(threads).expect("threads");
    println!("threads: {threads}");
    println!("LSTM train step: xs f32[{BATCH}, T, {INPUT}], hidden {HIDDEN}, dense 2, MSE, SGD");
    println!(
        "{:>6} {:>14} {:>12} {:>12} {:>9} {:>12} {:>12}",
        "T", "train step ms", "compile ms", "plan ms", "kernels", "JIT step ms", "interp ms"
    );
    for t in [100, 1000] {
        let t0 = Instant::now();
        let step = nnc_passes::build_train_step(&objective(t), &sgd()).expect("train step");
        let build = t0.elapsed();
        let env = env(t);
        let layout = StateLayout::of(&[&step]).expect("layout");
        let mut state = StateBuffer::new(layout);
        for (_, name) in step.params() {
            state.set(name, env.get(name).expect("param")).expect("set");
        }
        let bindings = HashMap::new();
        let mut compiles = Vec::new();
        let mut plans = Vec::new();
        let mut program = None;
        for _ in 0..rounds {
            let t1 = Instant::now();
            let p = Program::compile(&step, &bindings, &state).expect("compile");
            compiles.push(t1.elapsed());
            plans.push(p.stats.plan_time);
            program = Some(p);
        }
        let mut program = program.expect("compiled");
        if list {
            eprintln!("arena {} MB", program.stats.arena_bytes >> 20);
            for k in program.kernels() {
                eprintln!("{k}");
            }
            let plan = nnc_codegen::plan::plan(&step, &bindings, &state.layout).expect("plan");
            for (label, k) in nnc_codegen::summary::loop_bodies(&plan) {
                eprintln!("  {label:<8} {k}");
            }
        }
        for (_, name) in step.inputs() {
            let v: Vec<f32> = env
                .get(name)
                .expect("input")
                .data
                .iter()
                .map(|&x| x as f32)
                .collect();
            program.set_input_f32(name, &v).expect("feed");
        }
        program.run().expect("warm-up");
        let mut steps = Vec::new();
        for _ in 0..rounds {
            let t1 = Instant::now();
            program.run().expect("step");
            steps.push(t1.elapsed());
        }
        // The interpreter once, at the shorter length only (it takes seconds).
        let interp = (t == 100).then(|| {
            let t1 = Instant::now();
            interp::eval(&step, &env, EvalOptions::F32).expect("interpreter");
            t1.elapsed()
        });
        println!(
            "{t:>6} {:>14.2} {:>12.2} {:>12.2} {:>9} {:>12.3} {:>12}",
            ms(build),
            ms(median(compiles)),
            ms(median(plans)),
            program.stats.kernels,
            ms(median(steps)),
            interp.map_or("-".to_string(), |d| format!("{:.1}", ms(d)))
        );
    }
}
