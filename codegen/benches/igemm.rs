//! `nnc_codegen::igemm` (u8 × i8 → i32, every kernel this CPU runs)
//! against our f32 `sgemm` on the same shapes: the MLP's dense layers,
//! LeNet's and CIFAR's (dense layers at batch 64, convolutions per sample
//! as GEMM), and squares.
//!
//! `cargo bench -p nnc-codegen --bench igemm` (`IGEMM_ISA=vnni|avx2|scalar`
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
//! engineer's build loaded the machine (load average about 5): the
//! one-thread columns are steady to about ±10% between runs; the two-thread
//! columns are not (they reach 735–767 GOP/s int8 when the second core is
//! free and fall back to one core's rate when it is not), so read them
//! as an upper bound on what a split can give, not as the split's cost.
//!
//! | layout | m | k | n | MOP | f32 | i8 Vnni | i8 Avx2 | i8 Scalar | ratio | f32 2 thr | i8 2 thr | ratio |
//! |---|---|---|---|---|---|---|---|---|---|---|---|---|
//! | a @ b | 32 | 784 | 256 | 12.85 | 93.2 | 348.5 | 126.6 | 8.3 | 3.74 | 181.4 | 309.0 | 1.70 |
//! | a @ b | 32 | 256 | 128 | 2.10 | 99.4 | 319.8 | 119.6 | 7.9 | 3.22 | 92.5 | 335.3 | 3.63 |
//! | a @ b | 32 | 128 | 10 | 0.08 | 46.9 | 88.9 | 40.8 | 7.0 | 1.90 | 47.2 | 88.7 | 1.88 |
//! | a @ b | 64 | 784 | 256 | 25.69 | 101.9 | 392.5 | 146.5 | 8.6 | 3.85 | 96.4 | 735.4 | 7.63 |
//! | a @ b | 64 | 256 | 128 | 4.19 | 102.3 | 354.7 | 137.4 | 8.9 | 3.47 | 197.6 | 303.8 | 1.54 |
//! | a @ b | 64 | 128 | 10 | 0.16 | 57.3 | 107.7 | 44.0 | 7.1 | 1.88 | 57.3 | 108.3 | 1.89 |
//! | a @ b | 128 | 784 | 256 | 51.38 | 107.3 | 412.0 | 154.4 | 8.8 | 3.84 | 203.7 | 767.1 | 3.77 |
//! | a @ b | 128 | 256 | 128 | 8.39 | 108.6 | 374.1 | 144.0 | 9.0 | 3.44 | 209.8 | 322.3 | 1.54 |
//! | a @ b | 128 | 128 | 10 | 0.33 | 62.8 | 118.5 | 43.7 | 7.0 | 1.89 | 62.8 | 118.3 | 1.88 |
//! | a @ b^T | 64 | 784 | 256 | 25.69 | 103.2 | 342.6 | 121.9 | 9.0 | 3.32 | 98.3 | 630.8 | 6.42 |
//! | a @ b | 64 | 400 | 120 | 6.14 | 95.4 | 291.0 | 137.9 | 8.9 | 3.05 | 165.1 | 279.9 | 1.70 |
//! | a @ b | 64 | 120 | 84 | 1.29 | 91.4 | 286.1 | 117.2 | 8.4 | 3.13 | 78.1 | 291.0 | 3.72 |
//! | a @ b | 6 | 25 | 784 | 0.24 | 95.3 | 138.7 | 71.8 | 4.1 | 1.45 | 96.7 | 134.7 | 1.39 |
//! | a @ b | 16 | 150 | 100 | 0.48 | 87.2 | 224.2 | 97.0 | 8.2 | 2.57 | 87.5 | 224.6 | 2.57 |
//! | a @ b | 32 | 75 | 784 | 3.76 | 96.1 | 291.9 | 123.6 | 7.8 | 3.04 | 174.9 | 300.8 | 1.72 |
//! | a @ b | 64 | 800 | 100 | 10.24 | 91.4 | 308.1 | 126.6 | 9.0 | 3.37 | 78.0 | 270.7 | 3.47 |
//! | a @ b | 1 | 784 | 256 | 0.40 | 32.5 | 43.9 | 16.1 | 1.4 | 1.35 | 32.7 | 44.1 | 1.35 |
//! | a @ b | 64 | 1600 | 1024 | 209.72 | 93.3 | 385.7 | 150.7 | — | 4.13 | 88.8 | 376.1 | 4.24 |
//! | a @ b | 256 | 256 | 256 | 33.55 | 111.3 | 386.9 | 155.2 | 8.9 | 3.48 | 211.5 | 361.2 | 1.71 |
//! | a @ b | 512 | 512 | 512 | 268.44 | 109.7 | 425.6 | 165.2 | — | 3.88 | 105.1 | 411.2 | 3.91 |
//! | a @ b | 1024 | 1024 | 1024 | 2147.48 | 100.6 | 392.6 | 147.9 | — | 3.90 | 83.9 | 381.9 | 4.55 |
//!
//! VNNI int8 runs 3.0–4.1× f32 on the dense and square shapes (the
//! instruction's ideal is 4×: 64 MACs per `vpdpbusd` against 16 per FMA),
//! 385–426 GOP/s on the largest: 82–91% of 470, one zmm `vpdpbusd` per
//! cycle at 3.67 GHz (Zen 4 runs it as two 256-bit halves). Narrow
//! products gain less: `n = 10` fills 10 of a tile's 16 columns, `k = 25`
//! pays packing for little work, and one row is a matrix-vector product
//! bound by packing `b`. The exact AVX2 route (`vpmaddwd` on widened
//! `i16`, plus a `vpaddd`, where f32 needs one FMA) gives 1.2–1.6× f32 on
//! the dense and square shapes and less than f32 on the narrowest.

use nnc_codegen::igemm::{self, igemm_threads};
use nnc_codegen::sgemm::{self, sgemm_threads};
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
            nnc_codegen::set_threads(threads).expect("threads");
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
            nnc_codegen::set_threads(threads).expect("threads");
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
