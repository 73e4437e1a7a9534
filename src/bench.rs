//! `nnc bench`: how fast a model compiles, trains and predicts with the
//! JIT, on synthetic batches of the shapes the model declares.
//!
//! Times are medians over many runs after a warm-up, so one slow run (the
//! machine is shared) does not move them. Not a test: a measurement.

use crate::driver::{self, Failure, OptLevel};
use nnc_runtime::{Batch, Executor, Jit, Programs};
use std::path::Path;
use std::time::{Duration, Instant};

#[derive(Debug, Clone)]
pub struct BenchOptions {
    /// Train batch size (default: the train block's).
    pub batch: Option<usize>,
    /// Minimum number of timed runs per measurement.
    pub runs: usize,
    /// Warm-up runs before timing.
    pub warmup: usize,
    /// How the graphs are optimized.
    pub opt: OptLevel,
    /// Also time the training step kernel by kernel.
    pub profile: bool,
}

impl Default for BenchOptions {
    fn default() -> Self {
        BenchOptions {
            batch: None,
            runs: 200,
            warmup: 20,
            opt: OptLevel::default(),
            profile: false,
        }
    }
}

#[derive(Debug, Clone)]
pub struct BenchReport {
    pub model: String,
    pub batch: usize,
    pub opt: OptLevel,
    /// Threads the kernels split their work over.
    pub threads: usize,
    /// Parse, elaborate, build the training step (front end and passes,
    /// the optimizer included).
    pub frontend: Duration,
    /// Of `frontend`: the optimizer on the three graphs.
    pub optimize: Duration,
    /// Plan and generate native code for the training step.
    pub codegen: Duration,
    pub kernels: usize,
    /// Per training step, summed over its kernels.
    pub flops: u64,
    pub bytes_moved: u64,
    pub arena_bytes: usize,
    pub unshared_bytes: usize,
    pub train_step: Duration,
    pub infer_batch: Duration,
    pub infer_one: Duration,
    /// With `--profile`: each kernel of the training step with its median
    /// time, in schedule order.
    pub profile: Vec<KernelTime>,
}

/// One kernel of the training step and its median wall time.
#[derive(Debug, Clone)]
pub struct KernelTime {
    pub kernel: nnc_codegen::KernelInfo,
    pub time: Duration,
}

fn median(mut xs: Vec<Duration>) -> Duration {
    xs.sort();
    xs[xs.len() / 2]
}

fn time(
    runs: usize,
    warmup: usize,
    mut f: impl FnMut() -> Result<(), Failure>,
) -> Result<Duration, Failure> {
    for _ in 0..warmup {
        f()?;
    }
    let mut times = Vec::with_capacity(runs);
    for _ in 0..runs {
        let t = Instant::now();
        f()?;
        times.push(t.elapsed());
    }
    Ok(median(times))
}

pub fn bench(path: &Path, options: &BenchOptions) -> Result<BenchReport, Failure> {
    let t0 = Instant::now();
    let src = driver::read_source(path)?;
    let module = driver::compile_source(&src, None)?;
    let spec = driver::need_train(&module, "`nnc bench`")?.clone();
    let t1 = Instant::now();
    let programs: Programs = driver::programs(&module, options.opt)?;
    let optimize = t1.elapsed();
    let step = programs.step.clone();
    let frontend = t0.elapsed();
    let size = options.batch.unwrap_or(spec.batch);
    let fail = |e: nnc_runtime::RuntimeError| Failure(format!("error: {e}\n"));
    let mut jit = Jit::new(programs, spec.seed).map_err(fail)?;
    let mut batch = Batch::synthetic(&step, size, 1);
    nnc_runtime::train::set_hyper(&mut batch, nnc_ir::LEARNING_RATE, spec.optimizer.lr());
    // The first step compiles the training step for this batch size.
    jit.train_step(&batch).map_err(fail)?;
    let stats = jit.stats().first().cloned().unwrap_or_default();
    let train_step = time(options.runs, options.warmup, || {
        jit.train_step(&batch).map(|_| ()).map_err(fail)
    })?;
    // The optimizer keeps every input, so the module's forward graph names
    // the inputs of the optimized one.
    let forward_batch = Batch::synthetic(&module.forward, size, 2);
    let infer_batch = time(options.runs, options.warmup, || {
        jit.predict(&forward_batch).map(|_| ()).map_err(fail)
    })?;
    let profile = if options.profile {
        profile_step(&mut jit, &batch, options.runs).map_err(fail)?
    } else {
        Vec::new()
    };
    let one = Batch::synthetic(&module.forward, 1, 3);
    let infer_one = time(options.runs, options.warmup, || {
        jit.predict(&one).map(|_| ()).map_err(fail)
    })?;
    Ok(BenchReport {
        model: module.name.clone(),
        batch: size,
        opt: options.opt,
        threads: nnc_codegen::threads::threads(),
        frontend,
        optimize,
        codegen: stats.plan_time + stats.codegen_time,
        kernels: stats.kernels,
        flops: stats.flops,
        bytes_moved: stats.bytes_moved,
        arena_bytes: stats.arena_bytes,
        unshared_bytes: stats.unshared_bytes,
        train_step,
        infer_batch,
        infer_one,
        profile,
    })
}

/// Runs the training step kernel by kernel `runs` times (at least 5) and
/// returns each kernel's median time.
fn profile_step(
    jit: &mut Jit,
    batch: &Batch,
    runs: usize,
) -> Result<Vec<KernelTime>, nnc_runtime::RuntimeError> {
    let mut kernels: Vec<(nnc_codegen::KernelInfo, Vec<Duration>)> = Vec::new();
    for run in 0..runs.max(5) {
        for (i, (info, t)) in jit.profile_step(batch)?.into_iter().enumerate() {
            if run == 0 {
                kernels.push((info, Vec::with_capacity(runs)));
            }
            kernels[i].1.push(t);
        }
    }
    Ok(kernels
        .into_iter()
        .map(|(kernel, times)| KernelTime {
            kernel,
            time: median(times),
        })
        .collect())
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

impl BenchReport {
    pub fn to_text(&self) -> String {
        format!(
            "model {} (batch {}, {}, {} thread(s))\n\
             compile      {:8.2} ms  (front end + autodiff + optimizer {:.2} ms of which optimizer {:.2} ms, plan + codegen {:.2} ms, {} kernels)\n\
             work         {} kernels, {:.2} MB moved, {:.1} MFLOP per train step\n\
             memory       arena {:.2} MB (without buffer reuse {:.2} MB)\n\
             train step   {:8.3} ms  median\n\
             inference    {:8.3} ms  batch {}\n\
             inference    {:8.3} ms  batch 1\n",
            self.model,
            self.batch,
            self.opt,
            self.threads,
            ms(self.frontend + self.codegen),
            ms(self.frontend),
            ms(self.optimize),
            ms(self.codegen),
            self.kernels,
            self.kernels,
            self.bytes_moved as f64 / 1e6,
            self.flops as f64 / 1e6,
            self.arena_bytes as f64 / 1e6,
            self.unshared_bytes as f64 / 1e6,
            ms(self.train_step),
            ms(self.infer_batch),
            self.batch,
            ms(self.infer_one),
        ) + &self.profile_text()
    }

    /// The profile as a table, slowest kernel first: median time, share of
    /// the summed kernel times, throughput, and what the kernel computes.
    fn profile_text(&self) -> String {
        if self.profile.is_empty() {
            return String::new();
        }
        let total: Duration = self.profile.iter().map(|k| k.time).sum();
        let mut rows: Vec<(usize, &KernelTime)> = self.profile.iter().enumerate().collect();
        rows.sort_by(|a, b| b.1.time.cmp(&a.1.time).then(a.0.cmp(&b.0)));
        let mut out = format!(
            "profile      {:8.3} ms  sum of {} kernel medians, slowest first (#: schedule position)\n\
             {:>5} {:>9} {:>6} {:>8} {:>8}  kernel\n",
            ms(total),
            self.profile.len(),
            "#",
            "ms",
            "%",
            "GFLOP/s",
            "GB/s"
        );
        for (i, k) in rows {
            let secs = k.time.as_secs_f64().max(1e-9);
            let bytes = k.kernel.bytes_read + k.kernel.bytes_written;
            out += &format!(
                "{:>5} {:>9.4} {:>6.1} {:>8.2} {:>8.2}  {}\n",
                i,
                ms(k.time),
                100.0 * k.time.as_secs_f64() / total.as_secs_f64().max(1e-12),
                k.kernel.flops as f64 / secs / 1e9,
                bytes as f64 / secs / 1e9,
                k.kernel.label
            );
        }
        out
    }

    pub fn to_json(&self) -> String {
        format!(
            "{{\"model\":\"{}\",\"batch\":{},\"opt\":\"{}\",\"threads\":{},\"compile_ms\":{:.3},\"frontend_ms\":{:.3},\"optimize_ms\":{:.3},\"codegen_ms\":{:.3},\"kernels\":{},\"flops\":{},\"bytes_moved\":{},\"arena_bytes\":{},\"unshared_bytes\":{},\"train_step_ms\":{:.4},\"infer_batch_ms\":{:.4},\"infer_one_ms\":{:.4}}}\n",
            self.model.replace('"', "\\\""),
            self.batch,
            self.opt,
            self.threads,
            ms(self.frontend + self.codegen),
            ms(self.frontend),
            ms(self.optimize),
            ms(self.codegen),
            self.kernels,
            self.flops,
            self.bytes_moved,
            self.arena_bytes,
            self.unshared_bytes,
            ms(self.train_step),
            ms(self.infer_batch),
            ms(self.infer_one),
        )
    }
}
