//! `nnc_kernels::sgemm` (allocation-free, packed BLIS-style) vs `gemm::gemm`
//! on MLP, LeNet and CIFAR shapes and squares, on one thread
//! (`Parallelism::None`) and on two (`sgemm_threads` over our pool against
//! `Parallelism::Rayon(2)`).
//!
//! `cargo bench -p nnc-kernels --bench sgemm` (`SGEMM_ISA=avx2` or `scalar` for
//! a fallback kernel)
//!
//! Each row: samples of enough calls to take about 2 ms, median per call over
//! 15 samples. GFLOP/s counts 2·m·n·k per call; both sides overwrite `c`.
//! On two threads the pool's worker is hot (it spins between calls), as it
//! is inside a training step.

use nnc_kernels::sgemm::{sgemm_threads, Isa, Scratch};
use std::hint::black_box;
use std::time::Instant;

#[derive(Clone, Copy)]
enum Layout {
    Nn,
    Nt,
    Tn,
}

impl Layout {
    fn name(self) -> &'static str {
        match self {
            Layout::Nn => "a @ b",
            Layout::Nt => "a @ b^T",
            Layout::Tn => "a^T @ b",
        }
    }
    /// `(a_rs, a_cs, b_rs, b_cs)`.
    fn strides(self, m: usize, n: usize, k: usize) -> (isize, isize, isize, isize) {
        let (m, n, k) = (m as isize, n as isize, k as isize);
        match self {
            Layout::Nn => (k, 1, n, 1),
            Layout::Nt => (k, 1, 1, k),
            Layout::Tn => (1, m, n, 1),
        }
    }
}

fn time<F: FnMut()>(mut f: F, flops: f64) -> f64 {
    f();
    let t = Instant::now();
    f();
    let once = t.elapsed().as_secs_f64().max(1e-8);
    let reps = ((2e-3 / once) as usize).max(1);
    let mut samples: Vec<f64> = (0..15)
        .map(|_| {
            let t = Instant::now();
            for _ in 0..reps {
                f();
            }
            t.elapsed().as_secs_f64() / reps as f64
        })
        .collect();
    samples.sort_by(|a, b| a.partial_cmp(b).unwrap());
    flops / samples[samples.len() / 2] / 1e9
}

fn main() {
    let mut shapes = Vec::new();
    for m in [32, 128] {
        for (k, n) in [(784, 256), (256, 128), (128, 10)] {
            shapes.push((Layout::Nn, m, n, k));
        }
    }
    for k in [32, 128] {
        shapes.push((Layout::Tn, 784, 256, k));
    }
    for m in [32, 128] {
        shapes.push((Layout::Nt, m, 784, 256));
    }
    // LeNet (batch 64): dense layers forward and their weight gradients.
    for (m, k, n) in [(64, 400, 120), (64, 120, 84)] {
        shapes.push((Layout::Nn, m, n, k));
        shapes.push((Layout::Tn, k, n, m));
    }
    // Convolutions per sample: LeNet conv2, CIFAR conv1 and conv2.
    shapes.push((Layout::Nn, 16, 100, 150));
    shapes.push((Layout::Nn, 32, 784, 75));
    shapes.push((Layout::Nn, 64, 100, 800));
    shapes.push((Layout::Nn, 6, 784, 25));
    // Their weight gradients per sample: `dy @ columns^T`.
    shapes.push((Layout::Nt, 6, 25, 784));
    shapes.push((Layout::Nt, 16, 150, 100));
    shapes.push((Layout::Nt, 32, 75, 784));
    shapes.push((Layout::Nt, 64, 800, 100));
    // A few rows: inference on one sample, small batches.
    for m in [1, 2, 4, 8] {
        shapes.push((Layout::Nn, m, 256, 784));
        shapes.push((Layout::Nn, m, 64, 64));
    }
    // CIFAR's dense input gradient `dy @ w^T`.
    shapes.push((Layout::Nt, 64, 1600, 1024));
    // CIFAR's dense 1600 → 1024 at batch 64.
    shapes.push((Layout::Nn, 64, 1024, 1600));
    for s in [128, 256, 512] {
        shapes.push((Layout::Nn, s, s, s));
    }
    // `SGEMM_ISA=avx2|scalar` benchmarks a fallback kernel.
    let mut scratch = match std::env::var("SGEMM_ISA").as_deref() {
        Ok("avx2") => Scratch::with_isa(Isa::Avx2),
        Ok("scalar") => Scratch::with_isa(Isa::Scalar),
        _ => Scratch::new(),
    };
    println!("kernel: {:?}", scratch.isa());
    println!(
        "| layout | m | k | n | MFLOP | nnc 1 thr | gemm 1 thr | ratio | nnc 2 thr | gemm 2 thr | ratio | nnc 2 thr / 1 thr |"
    );
    println!("|---|---|---|---|---|---|---|---|---|---|---|---|");
    for (layout, m, n, k) in shapes {
        let (a_rs, a_cs, b_rs, b_cs) = layout.strides(m, n, k);
        let a: Vec<f32> = (0..m * k).map(|i| (i % 13) as f32 * 0.1 - 0.6).collect();
        let b: Vec<f32> = (0..k * n).map(|i| (i % 7) as f32 * 0.1 - 0.3).collect();
        let mut c = vec![0f32; m * n];
        let flops = 2.0 * (m * n * k) as f64;
        let mut ours = |threads: usize| {
            nnc_kernels::set_threads(threads).expect("threads");
            time(
                // One thread: `sgemm_threads` calls `sgemm_ex` directly.
                || unsafe {
                    sgemm_threads(
                        m,
                        n,
                        k,
                        black_box(c.as_mut_ptr()),
                        n as isize,
                        1,
                        a.as_ptr(),
                        a_rs,
                        a_cs,
                        b.as_ptr(),
                        b_rs,
                        b_cs,
                        false,
                        &mut scratch,
                    )
                },
                flops,
            )
        };
        let (ours1, ours2) = (ours(1), ours(2));
        let mut c = vec![0f32; m * n];
        let mut theirs = |parallelism: gemm::Parallelism| {
            time(
                || unsafe {
                    // Called as `nnc_sgemm` calls it (column stride first).
                    gemm::gemm(
                        m,
                        n,
                        k,
                        black_box(c.as_mut_ptr()),
                        1,
                        n as isize,
                        false,
                        a.as_ptr(),
                        a_cs,
                        a_rs,
                        b.as_ptr(),
                        b_cs,
                        b_rs,
                        1.0,
                        1.0,
                        false,
                        false,
                        false,
                        parallelism,
                    )
                },
                flops,
            )
        };
        let (theirs1, theirs2) = (
            theirs(gemm::Parallelism::None),
            theirs(gemm::Parallelism::Rayon(2)),
        );
        println!(
            "| {} | {m} | {k} | {n} | {:.2} | {ours1:.1} | {theirs1:.1} | {:.2} | {ours2:.1} | {theirs2:.1} | {:.2} | {:.2} |",
            layout.name(),
            flops / 1e6,
            ours1 / theirs1,
            ours2 / theirs2,
            ours2 / ours1
        );
    }
}
