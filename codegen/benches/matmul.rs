//! Cranelift-emitted matmul (`nnc_codegen::matmul`) vs `gemm::gemm`
//! (single thread), to choose `matmul::product_in_loops`.
//!
//! `cargo bench -p nnc-codegen --bench matmul [-- --quick]`
//!
//! For every `m ∈ {1, 2, 4, 8, 32, 128}` (a batch) and `k, n ∈ {10, 64, 128,
//! 256, 784}` and three layouts — `a @ b` (forward), `a @ b^T` (input
//! gradient: `b` a transposed view) and `a^T @ b` (weight gradient) — each
//! kernel is compiled once, then timed: samples of enough calls to take
//! about 0.2 ms, median per call over the samples. Both sides write `c`
//! from scratch (no accumulation). Prints GFLOP/s (2·m·n·k per call), the
//! ratio, and the compile time of each Cranelift kernel.

use nnc_codegen::matmul::{self, Kernel, Mat};
use std::hint::black_box;
use std::time::{Duration, Instant};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Layout {
    /// `a @ b`, both row-major.
    Nn,
    /// `a @ b^T`: `b` is a transposed view of a row-major `[n, k]`.
    Nt,
    /// `a^T @ b`: `a` is a transposed view of a row-major `[k, m]`.
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
    /// Element strides `(a_rs, a_cs, b_rs, b_cs)`.
    fn strides(self, m: usize, n: usize, k: usize) -> (isize, isize, isize, isize) {
        let (m, n, k) = (m as isize, n as isize, k as isize);
        match self {
            Layout::Nn => (k, 1, n, 1),
            Layout::Nt => (k, 1, 1, k),
            Layout::Tn => (1, m, n, 1),
        }
    }
}

/// The median seconds per call of `f`, over `samples` samples of enough
/// calls to take about `target`.
fn time(mut f: impl FnMut(), target: Duration, samples: usize) -> f64 {
    // Warm up and calibrate.
    f();
    let mut reps = 1usize;
    loop {
        let t = Instant::now();
        for _ in 0..reps {
            f();
        }
        let e = t.elapsed();
        if e >= target / 4 || reps >= 1 << 24 {
            let per = e.as_secs_f64() / reps as f64;
            reps = ((target.as_secs_f64() / per).ceil() as usize).max(1);
            break;
        }
        reps *= 4;
    }
    let mut per_call: Vec<f64> = (0..samples)
        .map(|_| {
            let t = Instant::now();
            for _ in 0..reps {
                f();
            }
            t.elapsed().as_secs_f64() / reps as f64
        })
        .collect();
    per_call.sort_by(f64::total_cmp);
    per_call[samples / 2]
}

#[derive(Clone, Copy)]
struct Row {
    m: usize,
    n: usize,
    k: usize,
    cranelift: f64,
    gemm: f64,
    compile: Duration,
    ir_insts: usize,
    code_bytes: usize,
}

fn bench(layout: Layout, m: usize, n: usize, k: usize, target: Duration, samples: usize) -> Row {
    let mut seed = 0x9e37_79b9_7f4a_7c15u64 ^ (m * 1_000_003 + n * 1_009 + k) as u64;
    let mut rnd = move || {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        (seed >> 40) as f32 / (1u64 << 24) as f32 - 0.5
    };
    let a: Vec<f32> = (0..m * k).map(|_| rnd()).collect();
    let b: Vec<f32> = (0..k * n).map(|_| rnd()).collect();
    let mut c1 = vec![0f32; m * n];
    let mut c2 = vec![0f32; m * n];
    let (a_rs, a_cs, b_rs, b_cs) = layout.strides(m, n, k);
    let mat = |addr: usize, rs, cs| Mat { addr, rs, cs };
    // SAFETY: the buffers live until the end of this function and the
    // kernel is dropped before them; `c1` is its own allocation.
    let kernel = unsafe {
        Kernel::compile(
            m,
            n,
            k,
            mat(c1.as_mut_ptr() as usize, n as isize, 1),
            mat(a.as_ptr() as usize, a_rs, a_cs),
            mat(b.as_ptr() as usize, b_rs, b_cs),
            &[],
        )
    }
    .expect("the kernel compiles");
    // SAFETY: as above.
    let cranelift = time(|| unsafe { kernel.run() }, target, samples);
    let (ap, bp, cp) = (a.as_ptr(), b.as_ptr(), c2.as_mut_ptr());
    let gemm = time(
        || {
            // SAFETY: the three buffers hold the views at these strides
            // (the same call as `nnc_sgemm`); `c2` does not overlap.
            unsafe {
                gemm::gemm(
                    m,
                    n,
                    k,
                    black_box(cp),
                    1,
                    n as isize,
                    false,
                    black_box(ap),
                    a_cs,
                    a_rs,
                    black_box(bp),
                    b_cs,
                    b_rs,
                    1.0,
                    1.0,
                    false,
                    false,
                    false,
                    gemm::Parallelism::None,
                )
            }
        },
        target,
        samples,
    );
    // The two agree (a wrong kernel would make the timing meaningless).
    for (x, y) in c1.iter().zip(&c2) {
        assert!(
            (x - y).abs() <= 1e-4 * (1.0 + y.abs()) * (k as f32).sqrt().max(1.0),
            "{m}x{n}x{k} {layout:?}: {x} vs {y}"
        );
    }
    let flops = 2.0 * (m * n * k) as f64;
    Row {
        m,
        n,
        k,
        cranelift: flops / cranelift / 1e9,
        gemm: flops / gemm / 1e9,
        compile: kernel.compile_time,
        ir_insts: kernel.ir_insts,
        code_bytes: kernel.code_bytes,
    }
}

fn main() {
    // `cargo bench` passes `--bench`; `-- --quick` shortens the samples.
    let quick = std::env::args().any(|a| a == "--quick");
    let (target, samples) = if quick {
        (Duration::from_micros(50), 7)
    } else {
        (Duration::from_micros(200), 21)
    };
    let ms = [1usize, 2, 4, 8, 32, 128];
    let sizes = [10usize, 64, 128, 256, 784];
    println!(
        "Cranelift matmul vs gemm::gemm (Parallelism::None), GFLOP/s, median of {samples} samples of ~{} µs",
        target.as_micros()
    );
    // The kernel with the most IR, and the slowest to compile.
    let mut largest: Option<Row> = None;
    let mut slowest: Option<Row> = None;
    for layout in [Layout::Nn, Layout::Nt, Layout::Tn] {
        println!("\n## {}\n", layout.name());
        println!(
            "|   m |   k |   n |     m·n·k | cranelift |  gemm | cl/gemm | product_in_loops | compile ms | IR insts |"
        );
        println!(
            "|----:|----:|----:|----------:|----------:|------:|--------:|:-------------:|-----------:|---------:|"
        );
        for &m in &ms {
            for &k in &sizes {
                for &n in &sizes {
                    let r = bench(layout, m, n, k, target, samples);
                    println!(
                        "| {:3} | {:3} | {:3} | {:9} | {:9.1} | {:5.1} | {:7.2} | {:^13} | {:10.2} | {:8} |",
                        r.m,
                        r.k,
                        r.n,
                        r.m * r.n * r.k,
                        r.cranelift,
                        r.gemm,
                        r.cranelift / r.gemm,
                        if matmul::product_in_loops(m, n, k, false) {
                            "yes"
                        } else {
                            "no"
                        },
                        r.compile.as_secs_f64() * 1e3,
                        r.ir_insts,
                    );
                    if largest.is_none_or(|l| l.ir_insts < r.ir_insts) {
                        largest = Some(r);
                    }
                    if slowest.is_none_or(|l| l.compile < r.compile) {
                        slowest = Some(r);
                    }
                }
            }
        }
    }
    for (what, row) in [("most IR", largest), ("slowest to compile", slowest)] {
        if let Some(r) = row {
            println!(
                "\nCranelift kernel with the {what}: {}x{}x{} (m x k x n), {} IR instructions, \
                 {} bytes of code, compiled in {:.2} ms",
                r.m,
                r.k,
                r.n,
                r.ir_insts,
                r.code_bytes,
                r.compile.as_secs_f64() * 1e3
            );
        }
    }
}
