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
//! Measured (AMD EPYC Zen 4, family 25 model 17, 2 cores; the machine was
//! shared with another engineer's build, the better of two runs):
//!
//! (table: see below)

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
