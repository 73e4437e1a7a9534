//! Forward + backward of the convolutional layers of LeNet and of a small
//! CIFAR net at batch 64, through the JIT, with where the time goes.
//!
//! `cargo bench -p nnc-codegen --bench conv [-- --quick]`
//!
//! - LeNet: 1×28×28 → conv 6@5×5 pad 2 → relu → max-pool 2 → conv 16@5×5
//!   → relu → max-pool 2 (`[64, 16, 5, 5]`).
//! - CIFAR: 3×32×32 → conv 32@5×5 → relu → max-pool 2 → conv 64@5×5 → relu
//!   → max-pool 2 (`[64, 64, 5, 5]`).
//!
//! Convolutions are built as the prelude builds them (`unfold`, a reshape,
//! a weight `[G, O/G, C/G·kh·kw]` broadcast-matmul, a reshape, a bias add);
//! pooling as `reduce_max(unfold(x, fill = -inf))`. The loss is the sum of
//! the last pooled map times a fixed random tensor (a stand-in for the
//! rest of the network's gradient); the program outputs the gradients of
//! both layers' weights and biases, as a training step needs them.
//!
//! Prints the median and best step time, then the best time of every
//! kernel of a step (`Program::profile`), summed by op. Kernels named
//! `unfold+matmul` and `matmul+fold` stage the columns through scratch per
//! batch index (`plan::Staged`); the last table times each layer's unfold,
//! fold and three products as programs of their own, with the columns
//! stored whole.

use nnc_codegen::{Program, StateBuffer, StateLayout};
use nnc_ir::{shape_of, BinaryOp, DType, Graph, Init, NodeId, ReduceOp, TensorType, Window};
use std::collections::{BTreeMap, HashMap};
use std::time::Instant;

struct Layer {
    out: usize,
    kernel: usize,
    padding: usize,
}

struct Net {
    name: &'static str,
    image: [usize; 3],
    layers: [Layer; 2],
}

fn window(k: usize, s: usize, p: usize) -> Window {
    Window {
        kernel: vec![k, k],
        stride: vec![s, s],
        padding: vec![p, p],
        dilation: vec![1, 1],
    }
}

fn dims(g: &Graph, n: NodeId) -> Vec<usize> {
    g.ty(n)
        .shape
        .iter()
        .map(|d| d.as_const().expect("constant shapes"))
        .collect()
}

fn f32_ty(d: &[usize]) -> TensorType {
    TensorType::new(DType::F32, shape_of(d))
}

/// Names and shapes of a graph's params.
type Params = Vec<(String, Vec<usize>)>;

/// The graph of `net` at `batch` and its params.
fn build(net: &Net, batch: usize) -> (Graph, Params) {
    let mut g = Graph::new(net.name);
    let [c0, h0, w0] = net.image;
    let mut x = g.input("x", f32_ty(&[batch, c0, h0, w0]));
    let mut params = Vec::new();
    let mut ids = Vec::new();
    for (i, l) in net.layers.iter().enumerate() {
        let c = dims(&g, x)[1];
        let k = c * l.kernel * l.kernel;
        let (wn, bn) = (format!("conv{i}.w"), format!("conv{i}.b"));
        let w = g.param(&wn, f32_ty(&[1, l.out, k]), Init::Zeros);
        let b = g.param(&bn, f32_ty(&[l.out, 1, 1]), Init::Zeros);
        params.push((wn, vec![1, l.out, k]));
        params.push((bn, vec![l.out, 1, 1]));
        ids.extend([w, b]);
        let cols = g
            .unfold(x, window(l.kernel, 1, l.padding), 0.0)
            .expect("unfold");
        let cd = dims(&g, cols);
        let (oh, ow) = (cd[4], cd[5]);
        let cols = g
            .reshape(cols, shape_of(&[batch, 1, k, oh * ow]))
            .expect("reshape");
        let y = g.matmul(w, cols).expect("matmul");
        let y = g
            .reshape(y, shape_of(&[batch, l.out, oh, ow]))
            .expect("reshape");
        let y = g.add_(y, b).expect("bias");
        let zero = g.scalar(0.0, DType::F32);
        let y = g.binary(BinaryOp::Max, y, zero).expect("relu");
        let u = g
            .unfold(y, window(2, 2, 0), f64::NEG_INFINITY)
            .expect("pool");
        x = g.reduce(ReduceOp::Max, u, vec![2, 3], false).expect("pool");
    }
    let t = g.input("t", f32_ty(&dims(&g, x)));
    let prod = g.mul(x, t).expect("mul");
    let loss = g
        .reduce(ReduceOp::Sum, prod, vec![0, 1, 2, 3], false)
        .expect("loss");
    g.set_output("loss", loss);
    let grads = nnc_passes::autodiff::gradients(&mut g, loss, &ids).expect("gradients");
    for ((name, _), grad) in params.iter().zip(grads) {
        g.set_output(format!("grad.{name}"), grad);
    }
    // Autodiff also builds the image's gradient, which nothing reads.
    g.prune();
    (g, params)
}

struct Rng(u64);

impl Rng {
    fn floats(&mut self, n: usize, scale: f32) -> Vec<f32> {
        (0..n)
            .map(|_| {
                self.0 = self
                    .0
                    .wrapping_mul(6364136223846793005)
                    .wrapping_add(1442695040888963407);
                ((self.0 >> 40) as f32 / (1u64 << 24) as f32 * 2.0 - 1.0) * scale
            })
            .collect()
    }
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

/// The op of a profile label: `unfold+matmul [64,1,32,784]` →
/// `unfold+matmul`.
fn op_of(label: &str) -> String {
    label.split(' ').next().unwrap_or(label).to_string()
}

/// A compiled program with its params set and random inputs.
fn program(g: &Graph, params: &Params) -> (Program, StateBuffer, f64) {
    let layout = StateLayout::of(&[g]).expect("layout");
    let mut state = StateBuffer::new(layout);
    let mut rng = Rng(7);
    for (name, shape) in params {
        let n = shape.iter().product();
        let fan_in = shape.last().copied().unwrap_or(1).max(1) as f32;
        let v: Vec<f64> = rng
            .floats(n, 1.0 / fan_in.sqrt())
            .iter()
            .map(|&x| f64::from(x))
            .collect();
        let t = nnc_ir::Tensor::from_vec(DType::F32, shape, v).expect("tensor");
        state.set(name, &t).expect("set");
    }
    let t0 = Instant::now();
    let mut program = Program::compile(g, &HashMap::new(), &state).expect("compile");
    let compile = t0.elapsed().as_secs_f64();
    for (_, name) in g.inputs() {
        let id = g.find_leaf(name).expect("input");
        let n: usize = dims(g, id).iter().product();
        program
            .set_input_f32(name, &rng.floats(n, 1.0))
            .expect("input");
    }
    program.run().expect("run");
    (program, state, compile)
}

/// Median and best milliseconds per run.
fn time(program: &mut Program, runs: usize) -> (f64, f64) {
    let ms: Vec<f64> = (0..runs)
        .map(|_| {
            let t = Instant::now();
            program.run().expect("run");
            t.elapsed().as_secs_f64() * 1e3
        })
        .collect();
    let best = ms.iter().copied().fold(f64::INFINITY, f64::min);
    (median(ms), best)
}

fn bench(net: &Net, batch: usize, runs: usize) {
    let (g, params) = build(net, batch);
    let (mut program, _state, compile) = program(&g, &params);
    let (step, best) = time(&mut program, runs);
    // Per kernel: the fastest of the profiled runs (least disturbed by
    // other processes on a shared machine).
    let mut samples: Vec<Vec<f64>> = Vec::new();
    let mut labels: Vec<String> = Vec::new();
    for _ in 0..runs {
        let p = program.profile().expect("profile");
        if samples.is_empty() {
            samples = vec![Vec::new(); p.len()];
            labels = p.iter().map(|(l, _)| l.clone()).collect();
        }
        for (s, (_, d)) in samples.iter_mut().zip(&p) {
            s.push(d.as_secs_f64());
        }
    }
    let kernel_ms: Vec<f64> = samples
        .into_iter()
        .map(|s| s.into_iter().fold(f64::INFINITY, f64::min) * 1e3)
        .collect();
    println!(
        "\n{} batch {batch}: step {step:.3} ms median, {best:.3} ms best of {runs}; {} kernels, compiled in {:.0} ms, arena {:.1} MiB",
        net.name,
        labels.len(),
        compile * 1e3,
        program.stats.arena_bytes as f64 / (1 << 20) as f64
    );
    let mut by_op: BTreeMap<String, (f64, usize)> = BTreeMap::new();
    for (l, &ms) in labels.iter().zip(&kernel_ms) {
        let e = by_op.entry(op_of(l)).or_default();
        e.0 += ms;
        e.1 += 1;
    }
    let total: f64 = kernel_ms.iter().sum();
    let mut ops: Vec<_> = by_op.into_iter().collect();
    ops.sort_by(|a, b| b.1 .0.total_cmp(&a.1 .0));
    println!("  by op (sum of the kernels' best times {total:.3} ms):");
    for (op, (ms, n)) in ops {
        println!(
            "    {op:<28} {ms:>7.3} ms {:>5.1}%  ({n} kernels)",
            100.0 * ms / total
        );
    }
    println!("  kernels over 2% of the step:");
    for (l, &ms) in labels.iter().zip(&kernel_ms) {
        if ms > 0.02 * total {
            println!("    {ms:>7.3} ms  {l}");
        }
    }
}

/// Each conv layer's parts as programs of their own, columns stored whole
/// (graph inputs and outputs are never staged): the unfold, the fold, the
/// forward product `w @ cols`, the weight gradient `sum_n g @ cols^T` and
/// the columns' gradient `w^T @ g`. What the staged kernels of the step
/// combine, each paying its own trip through memory here.
fn components(net: &Net, batch: usize, runs: usize) {
    println!(
        "\n{} batch {batch}, parts of each conv layer alone (median ms):",
        net.name
    );
    let [mut c, mut h, mut w] = net.image;
    for (i, l) in net.layers.iter().enumerate() {
        let win = window(l.kernel, 1, l.padding);
        let image = [batch, c, h, w];
        let k = c * l.kernel * l.kernel;
        let (oh, ow) = (
            win.out_size(0, h).expect("fits"),
            win.out_size(1, w).expect("fits"),
        );
        let cols_dims = [batch, c, l.kernel, l.kernel, oh, ow];
        let cols4 = [batch, 1, k, oh * ow];
        let mut parts: Vec<(&str, Graph, Params)> = Vec::new();
        let mut g = Graph::new("unfold");
        let x = g.input("x", f32_ty(&image));
        let u = g.unfold(x, win.clone(), 0.0).expect("unfold");
        g.set_output("y", u);
        parts.push(("unfold", g, vec![]));
        let mut g = Graph::new("fold");
        let cols = g.input("cols", f32_ty(&cols_dims));
        let f = g.fold(cols, win.clone(), f32_ty(&image)).expect("fold");
        g.set_output("y", f);
        parts.push(("fold", g, vec![]));
        let wshape = vec![1, l.out, k];
        let mut g = Graph::new("forward");
        let wt = g.param("w", f32_ty(&wshape), Init::Zeros);
        let cols = g.input("cols", f32_ty(&cols4));
        let y = g.matmul(wt, cols).expect("matmul");
        g.set_output("y", y);
        parts.push(("w @ cols", g, vec![("w".into(), wshape.clone())]));
        let mut g = Graph::new("weight gradient");
        let gy = g.input("g", f32_ty(&[batch, 1, l.out, oh * ow]));
        let cols = g.input("cols", f32_ty(&cols4));
        let ct = g.transpose(cols, vec![0, 1, 3, 2]).expect("transpose");
        let p = g.matmul(gy, ct).expect("matmul");
        let s = g.reduce(ReduceOp::Sum, p, vec![0], false).expect("sum");
        g.set_output("y", s);
        parts.push(("sum_n g @ cols^T", g, vec![]));
        let mut g = Graph::new("columns gradient");
        let wt = g.param("w", f32_ty(&wshape), Init::Zeros);
        let wtt = g.transpose(wt, vec![0, 2, 1]).expect("transpose");
        let gy = g.input("g", f32_ty(&[batch, 1, l.out, oh * ow]));
        let y = g.matmul(wtt, gy).expect("matmul");
        g.set_output("y", y);
        parts.push(("w^T @ g", g, vec![("w".into(), wshape)]));
        let line: Vec<String> = parts
            .iter()
            .map(|(name, g, params)| {
                let (mut p, _state, _) = program(g, params);
                format!("{name} {:.3}", time(&mut p, runs).0)
            })
            .collect();
        println!(
            "  conv{i} {c}x{h}x{w} -> {}@{}x{}: {}",
            l.out,
            l.kernel,
            l.kernel,
            line.join(", ")
        );
        (c, h, w) = (l.out, oh / 2, ow / 2);
    }
}

fn main() {
    let quick = std::env::args().any(|a| a == "--quick");
    let runs = if quick { 5 } else { 31 };
    let lenet = Net {
        name: "lenet convs",
        image: [1, 28, 28],
        layers: [
            Layer {
                out: 6,
                kernel: 5,
                padding: 2,
            },
            Layer {
                out: 16,
                kernel: 5,
                padding: 0,
            },
        ],
    };
    let cifar = Net {
        name: "cifar convs",
        image: [3, 32, 32],
        layers: [
            Layer {
                out: 32,
                kernel: 5,
                padding: 0,
            },
            Layer {
                out: 64,
                kernel: 5,
                padding: 0,
            },
        ],
    };
    for net in [&lenet, &cifar] {
        bench(net, 64, runs);
        components(net, 64, runs);
    }
}
