//! The JIT's sums are as accurate as float32 pairwise summation: sums and
//! means of about a million elements against their f64 value, in the
//! plain reduction kernel (a stored operand), the fused one (an
//! elementwise expression evaluated in the reduction's loop) and the split
//! one (a kept dim shared by threads), with the innermost dim reduced and
//! kept, on 1 and 2 threads (bit for bit the same).
//!
//! The bound is pairwise summation's (Higham, *Accuracy and Stability of
//! Numerical Algorithms*, §4.2): a sum `ŝ` of `n` f32 terms `x_i` meets
//! `|ŝ - s| <= c · ⌈log2 n⌉ · u · Σ|x_i|` with `u = 2^-24` (f32's unit
//! roundoff) and `c = 1`, to first order. A mean adds two roundings (the
//! reciprocal of the count and the product): `⌈log2 n⌉ + 2`. Accumulating
//! eight lanes in sequence, as the JIT did before, misses it by far: a
//! million copies of 0.1 came out 15,000 units of roundoff away, squared
//! differences about 300.

use nnc_codegen::plan::split::splits;
use nnc_codegen::plan::{self, Body};
use nnc_codegen::{Program, StateBuffer, StateLayout};
use nnc_ir::{shape_of, BinaryOp, DType, Graph, NodeId, ReduceOp, TensorType};
use std::collections::HashMap;
use std::sync::Mutex;

/// f32's unit roundoff.
const U: f64 = 1.0 / (1u64 << 24) as f64;

/// The constant of the bound (see the module doc).
const C: f64 = 1.0;

/// The tests set the process-wide thread count: one at a time.
static THREADS: Mutex<()> = Mutex::new(());

struct Rng(u64);

impl Rng {
    fn unit(&mut self) -> f64 {
        self.0 = self
            .0
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        (self.0 >> 11) as f64 / (1u64 << 53) as f64
    }
}

/// Inputs of `n` values: the adversarial constant (every run of equal
/// terms rounds the same way), uniform positives (a loss's terms) and
/// mixed signs over three decades.
fn inputs(n: usize, seed: u64) -> Vec<(&'static str, Vec<f32>)> {
    let mut rng = Rng(seed);
    vec![
        ("0.1 repeated", vec![0.1; n]),
        (
            "uniform [0, 1)",
            (0..n).map(|_| rng.unit() as f32).collect(),
        ),
        (
            "mixed signs",
            (0..n)
                .map(|_| ((2.0 * rng.unit() - 1.0) * 10f64.powf(3.0 * rng.unit())) as f32)
                .collect(),
        ),
    ]
}

fn ty(dims: &[usize]) -> TensorType {
    TensorType::new(DType::F32, shape_of(dims))
}

/// Compiles `g` on the current thread count, feeds `feeds`, runs it and
/// returns each output's values. Asserts, per reduction kernel, whether
/// it has an expression beyond a plain read (`fused`) and whether it
/// splits.
fn run(g: &Graph, feeds: &[(&str, &[f32])], fused: bool, split: bool) -> Vec<Vec<f32>> {
    let layout = StateLayout::of(&[g]).unwrap();
    let state = StateBuffer::new(layout.clone());
    let bindings = HashMap::new();
    let p = plan::plan(g, &bindings, &layout).unwrap();
    let reductions: Vec<_> = p
        .kernels
        .iter()
        .filter(|k| g.node(k.root).op.mnemonic().starts_with("reduce"))
        .collect();
    assert!(!reductions.is_empty(), "{}: no reduction kernel", g.name);
    for k in reductions {
        let Body::Operand(expr) = &k.body else {
            panic!("{}: a reduction without an operand loop", g.name);
        };
        let label = format!("{}: {:?}", g.name, g.node(k.root).op);
        assert_eq!(expr.ops() > 0, fused, "{label}: fused");
        assert_eq!(splits(k, g, &p), split, "{label}: splits");
    }
    let mut program = Program::compile(g, &bindings, &state).unwrap();
    for (name, values) in feeds {
        program.set_input_f32(name, values).unwrap();
    }
    program.run().unwrap();
    g.outputs
        .iter()
        .map(|o| {
            let t = program.output(&o.name, &state).unwrap();
            t.data.iter().map(|&v| v as f32).collect()
        })
        .collect()
}

/// Checks `got` (a sum, or a mean when `mean`) of the f64 `terms`
/// against the bound.
#[track_caller]
fn check(what: &str, got: f32, terms: impl Iterator<Item = f64>, mean: bool) {
    let (mut sum, mut abs, mut n) = (0.0f64, 0.0f64, 0usize);
    for t in terms {
        sum += t;
        abs += t.abs();
        n += 1;
    }
    assert!(abs > 0.0, "{what}: every term is zero, nothing to check");
    let levels = (n as f64).log2().ceil() + if mean { 2.0 } else { 0.0 };
    let (want, scale) = if mean {
        (sum / n as f64, abs / n as f64)
    } else {
        (sum, abs)
    };
    let err = (got as f64 - want).abs();
    let bound = C * levels * U * scale;
    assert!(
        err <= bound,
        "{what}: {got} vs {want} (f64): error {:.2} units of roundoff of Σ|x| over {n} terms, \
         the pairwise bound {levels}",
        err / (U * scale)
    );
}

/// Runs `g` on 1 and 2 threads, checks both bit for bit equal, returns
/// the outputs.
fn on_both(g: &Graph, feeds: &[(&str, &[f32])], fused: bool, split: bool) -> Vec<Vec<f32>> {
    let _one_at_a_time = THREADS.lock().unwrap_or_else(|e| e.into_inner());
    nnc_codegen::set_threads(1).unwrap();
    let one = run(g, feeds, fused, split);
    nnc_codegen::set_threads(2).unwrap();
    let two = run(g, feeds, fused, split);
    nnc_codegen::set_threads(1).unwrap();
    for (a, b) in one.iter().zip(&two) {
        let (a, b): (Vec<u32>, Vec<u32>) = (
            a.iter().map(|v| v.to_bits()).collect(),
            b.iter().map(|v| v.to_bits()).collect(),
        );
        assert_eq!(a, b, "{}: 1 and 2 threads differ", g.name);
    }
    two
}

fn input(g: &mut Graph, name: &str, dims: &[usize]) -> NodeId {
    g.input(name, ty(dims))
}

#[test]
fn plain_sums_and_means_of_a_million_elements() {
    // 1,000,003 elements: runs of pairs of vectors, then three scalars;
    // a [1000, 1000] mean: one contiguous row.
    for (name, x) in inputs(1_000_003, 1) {
        let mut g = Graph::new(name);
        let row = input(&mut g, "row", &[1_000_003]);
        let sum = g.reduce(ReduceOp::Sum, row, vec![0], false).unwrap();
        g.set_output("sum", sum);
        let square = input(&mut g, "square", &[1000, 1000]);
        let mean = g.reduce(ReduceOp::Mean, square, vec![0, 1], false).unwrap();
        g.set_output("mean", mean);
        let feeds = [("row", &x[..]), ("square", &x[..1_000_000])];
        let out = on_both(&g, &feeds, false, false);
        let terms = |k: usize| x[..k].iter().map(|&v| v as f64);
        check(&format!("{name}: sum"), out[0][0], terms(1_000_003), false);
        check(&format!("{name}: mean"), out[1][0], terms(1_000_000), true);
    }
}

#[test]
fn fused_sums_of_squared_differences() {
    // A loss: the mean of (a - b)², the differences evaluated in the
    // reduction's loop; and their sum over 1,000,004 (a last lone vector).
    // Each input against the next kind (equal constants would cancel).
    let n = 1_000_004;
    let a = inputs(n, 2);
    let mut b = inputs(n, 3);
    b.rotate_left(1);
    for ((name, x), (_, y)) in a.iter().zip(&b) {
        let mut g = Graph::new(*name);
        let xa = input(&mut g, "a", &[n]);
        let xb = input(&mut g, "b", &[n]);
        let d = g.binary(BinaryOp::Sub, xa, xb).unwrap();
        let sq = g.binary(BinaryOp::Mul, d, d).unwrap();
        let sum = g.reduce(ReduceOp::Sum, sq, vec![0], false).unwrap();
        let mean = g.reduce(ReduceOp::Mean, sq, vec![0], false).unwrap();
        g.set_output("sum", sum);
        g.set_output("mean", mean);
        let out = on_both(&g, &[("a", x), ("b", y)], true, false);
        // The terms as the kernel computes them: f32 differences, squared.
        let terms = || {
            x.iter().zip(y).map(|(&p, &q)| {
                let d = p - q;
                (d * d) as f64
            })
        };
        check(&format!("{name}: fused sum"), out[0][0], terms(), false);
        check(&format!("{name}: fused mean"), out[1][0], terms(), true);
    }
}

#[test]
fn split_sums_over_kept_rows_and_channels() {
    // Split by a kept dim: four rows of 250,000; batch-norm statistics of
    // [N, C, HW] = [64, 4, 3907] over (N, HW) (the channel walked
    // outermost, its 64 rows of 3,907 cascaded); and a fused mean of
    // squares per channel, as batch norm's variance.
    let (rows, cols) = (4, 250_000);
    let (bn, bc, bhw) = (64, 4, 3907);
    for (name, x) in inputs(bn * bc * bhw, 4) {
        let mut g = Graph::new(name);
        let r = input(&mut g, "rows", &[rows, cols]);
        let row_sums = g.reduce(ReduceOp::Sum, r, vec![1], false).unwrap();
        g.set_output("row sums", row_sums);
        let img = input(&mut g, "img", &[bn, bc, bhw]);
        let mean = g.reduce(ReduceOp::Mean, img, vec![0, 2], false).unwrap();
        g.set_output("channel means", mean);
        let out = on_both(&g, &[("rows", &x[..rows * cols]), ("img", &x)], false, true);
        for (i, &got) in out[0].iter().enumerate() {
            let terms = x[i * cols..(i + 1) * cols].iter().map(|&v| v as f64);
            check(&format!("{name}: row {i}"), got, terms, false);
        }
        let channel = |c: usize| {
            let x = &x;
            (0..bn).flat_map(move |n| {
                let at = (n * bc + c) * bhw;
                x[at..at + bhw].iter().map(|&v| v as f64)
            })
        };
        for (c, &got) in out[1].iter().enumerate() {
            check(&format!("{name}: channel {c} mean"), got, channel(c), true);
        }

        let mut g = Graph::new(name);
        let img = input(&mut g, "img", &[bn, bc, bhw]);
        let sq = g.binary(BinaryOp::Mul, img, img).unwrap();
        let var = g.reduce(ReduceOp::Mean, sq, vec![0, 2], false).unwrap();
        g.set_output("channel mean squares", var);
        let out = on_both(&g, &[("img", &x)], true, true);
        for (c, &got) in out[0].iter().enumerate() {
            let terms = channel(c).map(|v| {
                let v = v as f32;
                (v * v) as f64
            });
            check(
                &format!("{name}: channel {c} mean square"),
                got,
                terms,
                true,
            );
        }
    }
}

#[test]
fn sums_over_an_outer_dim() {
    // The innermost dim kept: [N, F] summed over N, as a dense layer's
    // bias gradient or batch norm of features. 21 columns: a tile of 16,
    // one of 4 and a single column, each over 50,000 rows; and a fused
    // sum of squares over 250,000 rows of 4.
    for (name, x) in inputs(1_050_000, 5) {
        let mut g = Graph::new(name);
        let wide = input(&mut g, "wide", &[50_000, 21]);
        let sums = g.reduce(ReduceOp::Sum, wide, vec![0], false).unwrap();
        g.set_output("column sums", sums);
        let out = on_both(&g, &[("wide", &x)], false, false);
        for (j, &got) in out[0].iter().enumerate() {
            let terms = x.iter().skip(j).step_by(21).map(|&v| v as f64);
            check(&format!("{name}: column {j}"), got, terms, false);
        }

        let mut g = Graph::new(name);
        let tall = input(&mut g, "tall", &[250_000, 4]);
        let sq = g.binary(BinaryOp::Mul, tall, tall).unwrap();
        let means = g.reduce(ReduceOp::Mean, sq, vec![0], false).unwrap();
        g.set_output("column mean squares", means);
        let out = on_both(&g, &[("tall", &x[..1_000_000])], true, false);
        for (j, &got) in out[0].iter().enumerate() {
            let terms = x[..1_000_000]
                .iter()
                .skip(j)
                .step_by(4)
                .map(|&v| (v * v) as f64);
            check(&format!("{name}: column {j} mean square"), got, terms, true);
        }
    }
}
