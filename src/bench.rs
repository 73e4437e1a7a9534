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
    /// Bench the model as this checkpoint's structure says (pruned or
    /// factorized), with its int8 products when it is quantized.
    pub weights: Option<std::path::PathBuf>,
    /// Time inference through int8 products of made-up parameters
    /// (`nnc_runtime::quantize::synthetic`): no checkpoint needed.
    pub int8: bool,
}

impl Default for BenchOptions {
    fn default() -> Self {
        BenchOptions {
            batch: None,
            runs: 200,
            warmup: 20,
            opt: OptLevel::default(),
            profile: false,
            weights: None,
            int8: false,
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
    /// Compile time of the training step by stage, parse to native code:
    /// parse, elaborate, autodiff (the training step), optimize, plan,
    /// codegen (Cranelift).
    pub stages: Vec<(&'static str, Duration)>,
    pub kernels: usize,
    /// Per training step, summed over its kernels.
    pub flops: u64,
    pub bytes_moved: u64,
    pub arena_bytes: usize,
    pub unshared_bytes: usize,
    /// The most bytes the step's buffers hold at once: no arena can be
    /// smaller.
    pub live_bytes: usize,
    /// The process's peak resident set (Linux `VmHWM`), when known.
    pub peak_rss: Option<usize>,
    pub train_step: Duration,
    pub infer_batch: Duration,
    pub infer_one: Duration,
    /// Inference ran the int8 products of a quantized `--weights`
    /// checkpoint (the training step stays in float: it cannot train).
    pub int8_inference: bool,
    /// With `--profile`: each kernel of the training step with its median
    /// time, in schedule order.
    pub profile: Vec<KernelTime>,
    /// With `--profile`: each loop body kernel (`k23.k4`) with its median
    /// time per call, i.e. per trip.
    pub loop_profile: Vec<(String, KernelTime)>,
    /// With `--profile`: each kernel of batch inference (the int8 one when
    /// `int8_inference`), in schedule order.
    pub infer_profile: Vec<KernelTime>,
}

/// One kernel of the training step and its median wall time.
#[derive(Debug, Clone)]
pub struct KernelTime {
    pub kernel: nnc_codegen::KernelInfo,
    pub time: Duration,
}

impl KernelTime {
    /// GFLOP/s and GB/s (read and written) at its median time.
    fn rates(&self) -> (f64, f64) {
        let secs = self.time.as_secs_f64().max(1e-9);
        let bytes = self.kernel.bytes_read + self.kernel.bytes_written;
        (
            self.kernel.flops as f64 / secs / 1e9,
            bytes as f64 / secs / 1e9,
        )
    }
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
    let timed = |t: Instant| t.elapsed();
    let t = Instant::now();
    let src = driver::read_source(path)?;
    let program = driver::parse_source(&src)?;
    let parse = timed(t);
    let t = Instant::now();
    let mut module = driver::compile_program(&src, &program, None)?;
    let mut int8_inference = match &options.weights {
        Some(w) => driver::as_checkpoint_has_it(&mut module, w)?,
        None => false,
    };
    if options.int8 && !int8_inference {
        nnc_runtime::quantize::synthetic(&mut module.forward)
            .map_err(|e| Failure(format!("error: {e}\n")))?;
        int8_inference = true;
    }
    let spec = driver::need_train(&module, "`nnc bench`")?.clone();
    let elaborate = timed(t);
    let t = Instant::now();
    let step = driver::train_step(&module)?;
    let autodiff = timed(t);
    let t = Instant::now();
    let step = driver::optimize(&step, options.opt)?.0;
    let optimize = timed(t);
    // The inference and evaluation graphs compile when first used.
    let programs = Programs {
        forward: driver::optimize(&module.forward, options.opt)?.0,
        evaluation: driver::optimize(&spec.evaluation, options.opt)?.0,
        step: step.clone(),
        gradients: None,
        grouping: driver::grouping(options.opt),
    };
    let size = nnc_runtime::TrainOptions {
        batch: options.batch,
        ..Default::default()
    }
    .resolve(Some(&spec))
    .batch;
    let fail = |e: nnc_runtime::RuntimeError| Failure(format!("error: {e}\n"));
    let mut jit = Jit::new(programs, spec.seed).map_err(fail)?;
    let mut batch = Batch::synthetic(&step, size, 1);
    // Every timed step runs with the first step's hyperparameters.
    let first_lr = nnc_runtime::train::LrSchedule::new(&spec, spec.epochs, 1).lr(
        1,
        0,
        &nnc_runtime::train::LoopState::new(&spec),
    );
    nnc_runtime::train::feed_hyper(&mut batch, &spec.optimizer, first_lr, 0);
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
    let (profile, loop_profile, infer_profile) = if options.profile {
        let profile = profile_kernels(options.runs, || jit.profile_step(&batch)).map_err(fail)?;
        let infer =
            profile_kernels(options.runs, || jit.profile_predict(&forward_batch)).map_err(fail)?;
        let bodies = jit
            .profile_loop_bodies(&batch, options.runs)
            .map_err(fail)?
            .into_iter()
            .map(|(kernel, name, time)| (name, KernelTime { kernel, time }))
            .collect();
        (profile, bodies, infer)
    } else {
        (Vec::new(), Vec::new(), Vec::new())
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
        stages: vec![
            ("parse", parse),
            ("elaborate", elaborate),
            ("autodiff", autodiff),
            ("optimize", optimize),
            ("plan", stats.plan_time),
            ("codegen", stats.codegen_time),
        ],
        kernels: stats.kernels,
        flops: stats.flops,
        bytes_moved: stats.bytes_moved,
        arena_bytes: stats.arena_bytes,
        unshared_bytes: stats.unshared_bytes,
        live_bytes: stats.live_bytes,
        peak_rss: peak_rss(),
        train_step,
        infer_batch,
        infer_one,
        int8_inference,
        profile,
        loop_profile,
        infer_profile,
    })
}

/// Runs a program kernel by kernel (`once`) `runs` times (at least 5) and
/// returns each kernel's median time.
fn profile_kernels(
    runs: usize,
    mut once: impl FnMut()
        -> Result<Vec<(nnc_codegen::KernelInfo, Duration)>, nnc_runtime::RuntimeError>,
) -> Result<Vec<KernelTime>, nnc_runtime::RuntimeError> {
    let mut kernels: Vec<(nnc_codegen::KernelInfo, Vec<Duration>)> = Vec::new();
    for run in 0..runs.max(5) {
        for (i, (info, t)) in once()?.into_iter().enumerate() {
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

/// The process's peak resident set size in bytes (`VmHWM` of
/// `/proc/self/status`; `None` off Linux).
fn peak_rss() -> Option<usize> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kb: usize = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb * 1024)
}

impl BenchReport {
    /// Parse to native code of the training step.
    pub fn compile(&self) -> Duration {
        self.stages.iter().map(|(_, d)| *d).sum()
    }

    pub fn to_text(&self) -> String {
        let stages: Vec<String> = self
            .stages
            .iter()
            .map(|(name, d)| format!("{name} {:.2}", ms(*d)))
            .collect();
        let mb = |b: usize| b as f64 / 1e6;
        let rss = self
            .peak_rss
            .map_or("unknown".to_string(), |b| format!("{:.1} MB", mb(b)));
        let int8 = if self.int8_inference {
            "  (int8 products)"
        } else {
            ""
        };
        format!(
            "model {} (batch {}, {}, {} thread(s))\n\
             compile      {:8.2} ms  (training step, parse to native code; ms: {})\n\
             work         {} kernels, {:.2} MB moved, {:.1} MFLOP per train step\n\
             memory       arena {:.2} MB = {:.2}× the live-set bound {:.2} MB (no reuse: {:.2} MB); peak RSS {}\n\
             train step   {:8.3} ms  median\n\
             inference    {:8.3} ms  batch {}{}\n\
             inference    {:8.3} ms  batch 1{}\n",
            self.model,
            self.batch,
            self.opt,
            self.threads,
            ms(self.compile()),
            stages.join(", "),
            self.kernels,
            self.bytes_moved as f64 / 1e6,
            self.flops as f64 / 1e6,
            mb(self.arena_bytes),
            self.arena_bytes as f64 / self.live_bytes.max(1) as f64,
            mb(self.live_bytes),
            mb(self.unshared_bytes),
            rss,
            ms(self.train_step),
            ms(self.infer_batch),
            self.batch,
            int8,
            ms(self.infer_one),
            int8,
        ) + &self.profile_text()
    }

    pub fn to_json(&self) -> String {
        let stages: Vec<String> = self
            .stages
            .iter()
            .map(|(name, d)| format!("\"{name}\":{:.3}", ms(*d)))
            .collect();
        format!(
            "{{\"model\":\"{}\",\"batch\":{},\"opt\":\"{}\",\"threads\":{},\"compile_ms\":{:.3},\"stages_ms\":{{{}}},\"kernels\":{},\"flops\":{},\"bytes_moved\":{},\"arena_bytes\":{},\"live_bytes\":{},\"unshared_bytes\":{},\"peak_rss_bytes\":{},\"train_step_ms\":{:.4},\"infer_batch_ms\":{:.4},\"infer_one_ms\":{:.4},\"int8_inference\":{}}}\n",
            self.model.replace('"', "\\\""),
            self.batch,
            self.opt,
            self.threads,
            ms(self.compile()),
            stages.join(","),
            self.kernels,
            self.flops,
            self.bytes_moved,
            self.arena_bytes,
            self.live_bytes,
            self.unshared_bytes,
            self.peak_rss.map_or("null".to_string(), |b| b.to_string()),
            ms(self.train_step),
            ms(self.infer_batch),
            ms(self.infer_one),
            self.int8_inference,
        )
    }

    /// The profile as a table, slowest kernel first: median time, share of
    /// the summed kernel times, throughput, and what the kernel computes.
    fn profile_text(&self) -> String {
        if self.profile.is_empty() {
            return String::new();
        }
        let mut out = kernel_table("profile", "training step", &self.profile);
        if !self.loop_profile.is_empty() {
            out += &format!(
                "loop bodies  per trip, in body order (k23.k4: kernel 4 of the body of the loop at #23)\n\
                 {:>9} {:>9} {:>8} {:>8}  kernel\n",
                "#", "µs", "GFLOP/s", "GB/s"
            );
            for (name, k) in &self.loop_profile {
                let (gflops, gbytes) = k.rates();
                out += &format!(
                    "{:>9} {:>9.2} {:>8.2} {:>8.2}  {}\n",
                    name,
                    k.time.as_secs_f64() * 1e6,
                    gflops,
                    gbytes,
                    k.kernel.label
                );
            }
        }
        let int8 = if self.int8_inference {
            ", int8 products"
        } else {
            ""
        };
        out += &kernel_table(
            "inference",
            &format!("batch {}{int8}", self.batch),
            &self.infer_profile,
        );
        out
    }
}

/// One profile as a table: the kernels' medians, slowest first.
fn kernel_table(title: &str, what: &str, kernels: &[KernelTime]) -> String {
    let total: Duration = kernels.iter().map(|k| k.time).sum();
    let mut rows: Vec<(usize, &KernelTime)> = kernels.iter().enumerate().collect();
    rows.sort_by(|a, b| b.1.time.cmp(&a.1.time).then(a.0.cmp(&b.0)));
    let mut out = format!(
        "{title:<12} {:8.3} ms  {what}: sum of {} kernel medians, slowest first (#: schedule position)\n\
         {:>5} {:>9} {:>6} {:>8} {:>8}  kernel\n",
        ms(total),
        kernels.len(),
        "#",
        "ms",
        "%",
        "GFLOP/s",
        "GB/s"
    );
    for (i, k) in rows {
        let (gflops, gbytes) = k.rates();
        out += &format!(
            "{:>5} {:>9.4} {:>6.1} {:>8.2} {:>8.2}  {}\n",
            i,
            ms(k.time),
            100.0 * k.time.as_secs_f64() / total.as_secs_f64().max(1e-12),
            gflops,
            gbytes,
            k.kernel.label
        );
    }
    out
}
