//! `nnc_kernels::igemm` (u8 × i8 → i32, every kernel this CPU runs)
//! against our f32 `sgemm` on the same shapes: the MLP's dense layers,
//! LeNet's and CIFAR's (dense layers at batch 64, convolutions per sample
//! as GEMM), and squares.
//!
//! `cargo bench -p nnc-kernels --bench igemm` (`IGEMM_ISA=vnni|avx2|scalar`
//! benchmarks one int8 kernel only; the scalar kernel is skipped on
//! products over 0.2 GOP, where it takes seconds).
//!
//! Each row: samples of enough calls to take about 2 ms, median per call
//! over 15 samples; GOP/s counts 2·m·n·k per call (a multiply and an add
//! per MAC, as sgemm's GFLOP/s do); every call overwrites `c`. "ratio" is
//! the best int8 kernel over f32 on one thread; the last three columns run
//! both on two threads (`igemm_threads`, `sgemm_threads`).
//!
//! Measured 2026-12-07 on the 2-core AMD EPYC Zen 4 (family 25 model 17;
//! `lscpu` says "AMD EPYC"), GOP/s, the best of three runs while another
//! engineer's build loaded the machine (load average 3.4–5): the
//! one-thread columns varied by about ±10% between runs (the 1024³ square
//! by more: 218–393 GOP/s int8); the two-thread columns depend on whether
//! the second core was free at that moment (int8 then reaches 700–830
//! GOP/s, else it falls back to one core's rate), so they are an upper
//! bound on what a split gives, not a measure of its cost.
//!
//! | layout | m | k | n | MOP | f32 | i8 Vnni | i8 Avx2 | i8 Scalar | ratio | f32 2 thr | i8 2 thr | ratio |
//! |---|---|---|---|---|---|---|---|---|---|---|---|---|
//! | a @ b | 32 | 784 | 256 | 12.85 | 94.2 | 356.0 | 128.5 | 8.3 | 3.78 | 99.5 | 359.4 | 3.61 |
//! | a @ b | 32 | 256 | 128 | 2.10 | 99.4 | 357.5 | 122.1 | 8.7 | 3.60 | 102.0 | 357.7 | 3.51 |
//! | a @ b | 32 | 128 | 10 | 0.08 | 46.6 | 116.0 | 40.9 | 7.1 | 2.49 | 46.1 | 114.9 | 2.49 |
//! | a @ b | 64 | 784 | 256 | 25.69 | 103.2 | 403.5 | 147.0 | 8.7 | 3.91 | 106.0 | 709.3 | 6.69 |
//! | a @ b | 64 | 256 | 128 | 4.19 | 105.5 | 378.1 | 105.6 | 6.4 | 3.58 | 192.3 | 543.2 | 2.82 |
//! | a @ b | 64 | 128 | 10 | 0.16 | 48.0 | 144.0 | 44.2 | 7.2 | 3.00 | 55.7 | 139.8 | 2.51 |
//! | a @ b | 128 | 784 | 256 | 51.38 | 105.2 | 390.2 | 152.4 | 7.8 | 3.71 | 194.0 | 829.8 | 4.28 |
//! | a @ b | 128 | 256 | 128 | 8.39 | 109.5 | 396.6 | 142.2 | 8.9 | 3.62 | 218.3 | 719.6 | 3.30 |
//! | a @ b | 128 | 128 | 10 | 0.33 | 63.0 | 160.5 | 45.0 | 7.2 | 2.55 | 62.9 | 163.3 | 2.59 |
//! | a @ b^T | 64 | 784 | 256 | 25.69 | 104.6 | 405.1 | 121.4 | 9.0 | 3.87 | 190.2 | 702.9 | 3.70 |
//! | a @ b | 64 | 400 | 120 | 6.14 | 97.3 | 346.6 | 139.6 | 9.0 | 3.56 | 169.3 | 520.2 | 3.07 |
//! | a @ b | 64 | 120 | 84 | 1.29 | 91.0 | 317.4 | 119.7 | 8.5 | 3.49 | 140.0 | 318.1 | 2.27 |
//! | a @ b | 6 | 25 | 784 | 0.24 | 94.2 | 118.0 | 72.5 | 4.2 | 1.25 | 95.0 | 118.9 | 1.25 |
//! | a @ b | 16 | 150 | 100 | 0.48 | 79.0 | 179.5 | 63.1 | 5.3 | 2.27 | 78.8 | 179.4 | 2.28 |
//! | a @ b | 32 | 75 | 784 | 3.76 | 84.8 | 242.8 | 78.5 | 5.0 | 2.86 | 163.1 | 243.1 | 1.49 |
//! | a @ b | 64 | 800 | 100 | 10.24 | 83.9 | 308.0 | 84.2 | 5.8 | 3.67 | 145.0 | 472.8 | 3.26 |
//! | a @ b | 1 | 784 | 256 | 0.40 | 28.7 | 37.7 | 15.2 | 1.4 | 1.31 | 29.8 | 43.8 | 1.47 |
//! | a @ b | 64 | 1600 | 1024 | 209.72 | 83.4 | 392.9 | 152.2 | — | 4.71 | 163.7 | 700.7 | 4.28 |
//! | a @ b | 256 | 256 | 256 | 33.55 | 111.6 | 419.5 | 155.4 | 8.9 | 3.76 | 211.2 | 762.0 | 3.61 |
//! | a @ b | 512 | 512 | 512 | 268.44 | 102.4 | 442.5 | 164.9 | — | 4.32 | 209.6 | 815.1 | 3.89 |
//! | a @ b | 1024 | 1024 | 1024 | 2147.48 | 96.6 | 355.9 | 145.3 | — | 3.68 | 84.4 | 358.8 | 4.25 |
//!
//! VNNI int8 runs 3.5–4.7× f32 on the dense and square shapes (the
//! instruction's ideal is 4×: 64 MACs per `vpdpbusd` against 16 per FMA;
//! above it where f32 loses more to memory, as at 64×1600×1024), 390–443
//! GOP/s on the largest: 83–94% of 470, one zmm `vpdpbusd` per cycle at
//! 3.67 GHz (Zen 4 runs it as two 256-bit halves). Narrow products gain
//! less: `n = 10` fills 10 of a tile's 16 columns, `k = 25` pays packing
//! for little work, and one row is a matrix-vector product bound by
//! packing `b`. The exact AVX2 route (`vpmaddwd` on widened `i16`, plus a
//! `vpaddd`, where f32 needs one FMA) gives 1.0–1.8× f32 on the dense and
//! square shapes (mostly 1.4–1.5×) and up to f32's rate on the
//! convolutions.

use nnc_kernels::igemm::{self, igemm_threads};
use nnc_kernels::sgemm::{self, sgemm_threads};
use std::hint::black_box;
use std::time::Instant;

#[derive(Clone, Copy)]
enum Layout {
    Nn,
    Nt,
}

impl Layout {
    fn name(self) -> &'static str {
        match self {
            Layout::Nn => "a @ b",
            Layout::Nt => "a @ b^T",
        }
    }
    /// `(a_rs, a_cs, b_rs, b_cs)`.
    fn strides(self, n: usize, k: usize) -> (isize, isize, isize, isize) {
        let (n, k) = (n as isize, k as isize);
        match self {
            Layout::Nn => (k, 1, n, 1),
            Layout::Nt => (k, 1, 1, k),
        }
    }
}

fn time<F: FnMut()>(mut f: F, ops: f64) -> f64 {
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
    ops / samples[samples.len() / 2] / 1e9
}

fn main() {
    let mut shapes = Vec::new();
    // The MLP (784 → 256 → 128 → 10) at batch 32, 64 and 128.
    for m in [32, 64, 128] {
        for (k, n) in [(784, 256), (256, 128), (128, 10)] {
            shapes.push((Layout::Nn, m, n, k));
        }
    }
    // Weights stored [out, in]: `x @ w^T`.
    shapes.push((Layout::Nt, 64, 256, 784));
    // LeNet (batch 64) dense layers.
    shapes.push((Layout::Nn, 64, 120, 400));
    shapes.push((Layout::Nn, 64, 84, 120));
    // Convolutions per sample: LeNet conv1, conv2, CIFAR conv1, conv2.
    shapes.push((Layout::Nn, 6, 784, 25));
    shapes.push((Layout::Nn, 16, 100, 150));
    shapes.push((Layout::Nn, 32, 784, 75));
    shapes.push((Layout::Nn, 64, 100, 800));
    // One sample through the MLP's first layer.
    shapes.push((Layout::Nn, 1, 256, 784));
    // CIFAR's dense 1600 → 1024 at batch 64.
    shapes.push((Layout::Nn, 64, 1024, 1600));
    for s in [256, 512, 1024] {
        shapes.push((Layout::Nn, s, s, s));
    }
    let isas: Vec<igemm::Isa> = match std::env::var("IGEMM_ISA").as_deref() {
        Ok("vnni") => vec![igemm::Isa::Vnni],
        Ok("avx2") => vec![igemm::Isa::Avx2],
        Ok("scalar") => vec![igemm::Isa::Scalar],
        _ => [igemm::Isa::Vnni, igemm::Isa::Avx2, igemm::Isa::Scalar]
            .into_iter()
            .filter(|i| i.supported())
            .collect(),
    };
    let mut iscratch: Vec<igemm::Scratch> =
        isas.iter().map(|&i| igemm::Scratch::with_isa(i)).collect();
    let mut fscratch = sgemm::Scratch::new();
    println!("f32 kernel: {:?}; int8 kernels: {isas:?}", fscratch.isa());
    let names: Vec<String> = isas.iter().map(|i| format!("i8 {i:?}")).collect();
    println!(
        "| layout | m | k | n | MOP | f32 | {} | ratio | f32 2 thr | i8 2 thr | ratio |",
        names.join(" | ")
    );
    println!(
        "|---|---|---|---|---|---|{}---|---|---|---|",
        "---|".repeat(isas.len())
    );
    for (layout, m, n, k) in shapes {
        let (a_rs, a_cs, b_rs, b_cs) = layout.strides(n, k);
        let ops = 2.0 * (m * n * k) as f64;
        let af: Vec<f32> = (0..m * k).map(|i| (i % 13) as f32 * 0.1 - 0.6).collect();
        let bf: Vec<f32> = (0..k * n).map(|i| (i % 7) as f32 * 0.1 - 0.3).collect();
        let ai: Vec<u8> = (0..m * k).map(|i| (i * 37 % 256) as u8).collect();
        let bi: Vec<i8> = (0..k * n).map(|i| (i * 59 % 256) as u8 as i8).collect();
        let mut cf = vec![0f32; m * n];
        let mut ci = vec![0i32; m * n];
        let mut f32_run = |threads: usize| {
            nnc_kernels::set_threads(threads).expect("threads");
            time(
                || unsafe {
                    sgemm_threads(
                        m,
                        n,
                        k,
                        black_box(cf.as_mut_ptr()),
                        n as isize,
                        1,
                        af.as_ptr(),
                        a_rs,
                        a_cs,
                        bf.as_ptr(),
                        b_rs,
                        b_cs,
                        false,
                        &mut fscratch,
                    )
                },
                ops,
            )
        };
        let (f1, f2) = (f32_run(1), f32_run(2));
        let mut i8_run = |threads: usize, s: &mut igemm::Scratch| {
            nnc_kernels::set_threads(threads).expect("threads");
            time(
                || unsafe {
                    igemm_threads(
                        m,
                        n,
                        k,
                        black_box(ci.as_mut_ptr()),
                        n as isize,
                        1,
                        ai.as_ptr(),
                        a_rs,
                        a_cs,
                        bi.as_ptr(),
                        b_rs,
                        b_cs,
                        false,
                        s,
                    )
                },
                ops,
            )
        };
        let mut cells = Vec::new();
        let mut best = 0f64;
        for s in iscratch.iter_mut() {
            if s.isa() == igemm::Isa::Scalar && ops > 2e8 {
                cells.push("—".to_string());
                continue;
            }
            let g = i8_run(1, s);
            best = best.max(g);
            cells.push(format!("{g:.1}"));
        }
        let i2 = i8_run(2, &mut iscratch[0]);
        println!(
            "| {} | {m} | {k} | {n} | {:.2} | {f1:.1} | {} | {:.2} | {f2:.1} | {i2:.1} | {:.2} |",
            layout.name(),
            ops / 1e6,
            cells.join(" | "),
            best / f1,
            i2 / f2
        );
    }
}
