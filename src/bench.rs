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
}

impl Default for BenchOptions {
    fn default() -> Self {
        BenchOptions {
            batch: None,
            runs: 200,
            warmup: 20,
            opt: OptLevel::default(),
        }
    }
}

#[derive(Debug, Clone)]
pub struct BenchReport {
    pub model: String,
    pub batch: usize,
    pub opt: OptLevel,
    /// Parse, elaborate, build the training step (front end and passes,
    /// the optimizer included).
    pub frontend: Duration,
    /// Of `frontend`: the optimizer on the three graphs.
    pub optimize: Duration,
    /// Plan and generate native code for the training step.
    pub codegen: Duration,
    pub kernels: usize,
    pub arena_bytes: usize,
    pub unshared_bytes: usize,
    pub train_step: Duration,
    pub infer_batch: Duration,
    pub infer_one: Duration,
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
    let one = Batch::synthetic(&module.forward, 1, 3);
    let infer_one = time(options.runs, options.warmup, || {
        jit.predict(&one).map(|_| ()).map_err(fail)
    })?;
    Ok(BenchReport {
        model: module.name.clone(),
        batch: size,
        opt: options.opt,
        frontend,
        optimize,
        codegen: stats.plan_time + stats.codegen_time,
        kernels: stats.kernels,
        arena_bytes: stats.arena_bytes,
        unshared_bytes: stats.unshared_bytes,
        train_step,
        infer_batch,
        infer_one,
    })
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

impl BenchReport {
    pub fn to_text(&self) -> String {
        format!(
            "model {} (batch {}, {})\n\
             compile      {:8.2} ms  (front end + autodiff + optimizer {:.2} ms of which optimizer {:.2} ms, plan + codegen {:.2} ms, {} kernels)\n\
             memory       arena {:.2} MB (without buffer reuse {:.2} MB)\n\
             train step   {:8.3} ms  median\n\
             inference    {:8.3} ms  batch {}\n\
             inference    {:8.3} ms  batch 1\n",
            self.model,
            self.batch,
            self.opt,
            ms(self.frontend + self.codegen),
            ms(self.frontend),
            ms(self.optimize),
            ms(self.codegen),
            self.kernels,
            self.arena_bytes as f64 / 1e6,
            self.unshared_bytes as f64 / 1e6,
            ms(self.train_step),
            ms(self.infer_batch),
            self.batch,
            ms(self.infer_one),
        )
    }

    pub fn to_json(&self) -> String {
        format!(
            "{{\"model\":\"{}\",\"batch\":{},\"opt\":\"{}\",\"compile_ms\":{:.3},\"frontend_ms\":{:.3},\"optimize_ms\":{:.3},\"codegen_ms\":{:.3},\"kernels\":{},\"arena_bytes\":{},\"unshared_bytes\":{},\"train_step_ms\":{:.4},\"infer_batch_ms\":{:.4},\"infer_one_ms\":{:.4}}}\n",
            self.model.replace('"', "\\\""),
            self.batch,
            self.opt,
            ms(self.frontend + self.codegen),
            ms(self.frontend),
            ms(self.optimize),
            ms(self.codegen),
            self.kernels,
            self.arena_bytes,
            self.unshared_bytes,
            ms(self.train_step),
            ms(self.infer_batch),
            ms(self.infer_one),
        )
    }
}
