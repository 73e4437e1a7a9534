//! `nnc`: check, compile and run `.nn` neural-network programs.

use clap::{Parser, Subcommand, ValueEnum};
use nnc::driver::{self, CompileOptions, Emit, OptLevel, RunSettings};
use std::path::PathBuf;
use std::process::ExitCode;

#[derive(Parser)]
#[command(name = "nnc", version, about = "A compiler for neural networks", long_about = None)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

// Parsed once per process: the size of `Run` next to the others is of no
// consequence.
#[allow(clippy::large_enum_variant)]
#[derive(Subcommand)]
enum Command {
    /// Parse and type-check a file: shapes, names, data and train blocks.
    Check {
        file: PathBuf,
        /// The model to check when the file has several and no `train` block.
        #[arg(long)]
        model: Option<String>,
    },
    /// Print the model's calls with their output types and parameter counts, and the totals.
    Summary {
        file: PathBuf,
        /// The model to summarize when the file has several and no `train` block.
        #[arg(long)]
        model: Option<String>,
        /// Summarize the model as this checkpoint's structure says (after `nnc prune` or `nnc factorize`).
        #[arg(long, value_name = "PATH")]
        weights: Option<PathBuf>,
    },
    /// Print a stage of the compilation.
    Compile {
        file: PathBuf,
        /// What to print.
        #[arg(long, value_enum, default_value_t = EmitArg::Ir)]
        emit: EmitArg,
        /// The model to compile when the file has several and no `train` block.
        #[arg(long)]
        model: Option<String>,
        /// Optimization level of `--emit opt` and `--emit kernels`: -O0, -O1 or -O2.
        #[arg(short = 'O', value_name = "LEVEL", default_value = "2", value_parser = parse_level)]
        opt: OptLevel,
        /// With `--emit opt`: first print which rules fired and the saturation statistics.
        #[arg(long)]
        explain: bool,
        /// Compile the model as this checkpoint's structure says (after `nnc prune`); with `-o`, the trained tensors the object embeds.
        #[arg(long, value_name = "PATH")]
        weights: Option<PathBuf>,
        /// Compile inference ahead of time into this object file (and its C header beside it, `.h`): the JIT's kernels and the checkpoint's tensors, linked with `libnnc_kernels.a`. Needs `--weights`.
        #[arg(short = 'o', long, value_name = "OUT.o", conflicts_with_all = ["emit", "explain"], requires = "weights")]
        output: Option<PathBuf>,
        /// With `-o`: the samples one `predict` call takes.
        #[arg(long, default_value_t = 1, requires = "output")]
        batch: usize,
        /// With `-o`: leave the weights out of the object; the program reads a checkpoint of the model at start (`NAME_weights_load(path)`), so new weights need no recompiling. Not for quantized checkpoints, whose scales are compiled in.
        #[arg(long, requires = "output")]
        weights_external: bool,
    },
    /// Train the model as the file's `train` block says.
    Run {
        /// The `.nn` file.
        file: PathBuf,
        /// How to execute the graphs.
        #[arg(long, value_enum, default_value_t = Backend::Jit)]
        backend: Backend,
        /// Resolve the data block's relative paths here instead of next to FILE.
        #[arg(long)]
        data_dir: Option<PathBuf>,
        /// Override the number of epochs.
        #[arg(long)]
        epochs: Option<usize>,
        /// Override the optimizer's base learning rate (a schedule scales it as before): fine-tuning a trained, pruned or factorized model at a smaller rate.
        #[arg(long, value_name = "LR", value_parser = parse_lr)]
        lr: Option<f64>,
        /// Override the batch size.
        #[arg(long)]
        batch: Option<usize>,
        /// Override the seed.
        #[arg(long)]
        seed: Option<u64>,
        /// The model to use when the file has several and no `train` block.
        #[arg(long)]
        model: Option<String>,
        /// Save a checkpoint (safetensors) to PATH after every epoch, atomically.
        #[arg(long, value_name = "PATH")]
        save: Option<PathBuf>,
        /// Start from the params in this checkpoint; with --eval or --predict, use them.
        #[arg(long, value_name = "PATH", conflicts_with = "resume")]
        weights: Option<PathBuf>,
        /// Continue from the --save checkpoint: params, optimizer state and epoch count.
        #[arg(long, requires = "save")]
        resume: bool,
        /// Evaluate the --weights on the validation and test samples, without training.
        #[arg(long, requires = "weights", conflicts_with_all = ["save", "predict"])]
        eval: bool,
        /// Print the outputs (and class) for each sample of an IDX or CSV file, each value in the shortest form that reads back exactly; needs --weights.
        #[arg(long, value_name = "INPUT", requires = "weights", conflicts_with_all = ["save", "resume", "report"])]
        predict: Option<PathBuf>,
        /// With --predict: write the predictions to PATH (`.csv`, or `.safetensors` with a tensor per output) instead of printing them.
        #[arg(long, value_name = "PATH", requires = "predict")]
        predict_out: Option<PathBuf>,
        /// Visit the training samples in file order every epoch (overrides the train block's `shuffle`).
        #[arg(long)]
        no_shuffle: bool,
        /// Stop training after N optimizer steps (mid-epoch if need be; a --save checkpoint then counts only whole epochs).
        #[arg(long, value_name = "N", value_parser = parse_steps)]
        steps: Option<usize>,
        /// Write a JSON line per step (epoch, step, loss, lr, samples) and per epoch (all metrics) to PATH, flushed as written.
        #[arg(long, value_name = "PATH.jsonl")]
        log: Option<PathBuf>,
        /// Write the gradient of every param on each step's batch (before the update) to DIR/step-NNNNNN.safetensors; needs --steps.
        #[arg(long, value_name = "DIR", requires = "steps")]
        dump_grads: Option<PathBuf>,
        /// Write a JSON report: metrics per epoch, test, throughput, times, peak memory.
        #[arg(long, value_name = "PATH.json")]
        report: Option<PathBuf>,
        /// Write the report as one self-contained HTML file: curves of every metric and the learning rate, the confusion matrix, the model summary, settings and timings.
        #[arg(long, value_name = "PATH.html", conflicts_with = "predict")]
        report_html: Option<PathBuf>,
        /// Optimization level of the graphs: -O0 (none), -O1 (algebra), -O2 (everything).
        #[arg(short = 'O', value_name = "LEVEL", default_value = "2", value_parser = parse_level)]
        opt: OptLevel,
        /// Threads the kernels split their work over (default: every core).
        #[arg(long, value_name = "N", value_parser = parse_threads)]
        threads: Option<usize>,
    },
    /// Quantize a trained model to int8: calibrate its activations on training batches (or take the ranges a quantization-aware training learned), quantize its dense and convolution weights per output channel, write a checkpoint for `run --weights Q --eval` / `--predict`; with --qat, prepare the float model for quantization-aware training instead.
    Quantize {
        /// The `.nn` file.
        file: PathBuf,
        /// The trained (f32) checkpoint.
        #[arg(long, value_name = "PATH")]
        weights: PathBuf,
        /// Where to write the quantized checkpoint.
        #[arg(short = 'o', long = "output", value_name = "PATH")]
        output: PathBuf,
        /// Training batches to calibrate on.
        #[arg(long, value_name = "N", default_value_t = 32)]
        calibration_batches: usize,
        /// How activation ranges are chosen: minmax, percentile (99.99, or percentile=P), or entropy.
        #[arg(long, default_value = "minmax", value_parser = parse_method)]
        method: nnc_runtime::quantize::Method,
        /// How calibration executes the graphs.
        #[arg(long, value_enum, default_value_t = Backend::Jit)]
        backend: Backend,
        /// Resolve the data block's relative paths here instead of next to FILE.
        #[arg(long)]
        data_dir: Option<PathBuf>,
        /// The model to quantize when the file has several.
        #[arg(long)]
        model: Option<String>,
        /// Instead of the int8 model, write a float checkpoint prepared for quantization-aware training (fake quantization with the calibrated ranges): fine-tune it with `run --weights`, then quantize the result without --qat.
        #[arg(long)]
        qat: bool,
    },
    /// Prune whole channels: remove the least salient output channels of the model's dense layers and convolutions, with everything tied to them (bias, batch norm, the next layer's inputs), and write the smaller model's checkpoint.
    Prune {
        /// The `.nn` file.
        file: PathBuf,
        /// The trained checkpoint.
        #[arg(long, value_name = "PATH")]
        weights: PathBuf,
        /// Where to write the pruned checkpoint.
        #[arg(short = 'o', long = "output", value_name = "PATH")]
        output: PathBuf,
        /// The fraction of each layer's channels removed, in [0, 1).
        #[arg(long, value_name = "R")]
        ratio: f64,
        /// Only these layers, comma-separated: instance names (conv2d_1, as `nnc summary` shows them) or a prefix and * ('conv2d*'). Default: every layer that can be pruned.
        #[arg(long, value_name = "NAMES", value_delimiter = ',')]
        layers: Vec<String>,
        /// How channels are ranked: l1 (the norm of each channel's weights) or bn (|gamma| of the batch norm that follows).
        #[arg(long, default_value = "l1", value_parser = parse_saliency)]
        saliency: nnc_runtime::compress::Saliency,
        /// Rank the channels of all selected layers together (each layer's saliencies over their mean) and remove the --ratio least salient of them all, instead of --ratio of each layer.
        #[arg(long)]
        global: bool,
        /// The model to prune when the file has several.
        #[arg(long)]
        model: Option<String>,
    },
    /// Factorize weights: replace the model's dense and convolution weights W by truncated-SVD factors U V where that saves multiply-adds, and write the factorized model's checkpoint.
    Factorize {
        /// The `.nn` file.
        file: PathBuf,
        /// The trained checkpoint.
        #[arg(long, value_name = "PATH")]
        weights: PathBuf,
        /// Where to write the factorized checkpoint.
        #[arg(short = 'o', long = "output", value_name = "PATH")]
        output: PathBuf,
        /// Choose each rank as the smallest that keeps this fraction of the squared singular values, in (0, 1].
        #[arg(
            long,
            value_name = "E",
            conflicts_with = "rank",
            required_unless_present = "rank"
        )]
        energy: Option<f64>,
        /// Use this rank for every selected weight.
        #[arg(long, value_name = "R")]
        rank: Option<usize>,
        /// Only these layers, comma-separated: instance names (dense, as `nnc summary` shows them) or a prefix and * ('dense*'). Default: every dense layer and convolution.
        #[arg(long, value_name = "NAMES", value_delimiter = ',')]
        layers: Vec<String>,
        /// The model to factorize when the file has several.
        #[arg(long)]
        model: Option<String>,
    },
    /// Measure compile time, training-step and inference latency with the JIT.
    Bench {
        file: PathBuf,
        /// Batch size of the training step (default: the train block's).
        #[arg(long)]
        batch: Option<usize>,
        /// Timed runs per measurement (the median is reported).
        #[arg(long, default_value_t = 200)]
        runs: usize,
        /// Print one JSON object instead of text.
        #[arg(long)]
        json: bool,
        /// Also time the training step kernel by kernel (slowest first).
        #[arg(long)]
        profile: bool,
        /// Optimization level of the graphs: -O0 (none), -O1 (algebra), -O2 (everything).
        #[arg(short = 'O', value_name = "LEVEL", default_value = "2", value_parser = parse_level)]
        opt: OptLevel,
        /// Threads the kernels split their work over (default: every core).
        #[arg(long, value_name = "N", value_parser = parse_threads)]
        threads: Option<usize>,
        /// Bench the model as this checkpoint's structure says (after `nnc prune`), and a quantized checkpoint's inference through its int8 products.
        #[arg(long, value_name = "PATH")]
        weights: Option<PathBuf>,
        /// Time inference through int8 products with made-up quantization parameters (speed does not depend on them): no checkpoint needed.
        #[arg(long)]
        int8: bool,
    },
    /// Serve a trained model over HTTP with the open inference protocol (KServe v2): health, metadata and inference at /v2/..., Prometheus metrics at /metrics; concurrent requests run as one batch.
    Serve {
        /// The `.nn` file.
        file: PathBuf,
        /// The trained checkpoint (a pruned, factorized or quantized one too).
        #[arg(long, value_name = "PATH")]
        weights: PathBuf,
        /// The address to listen on.
        #[arg(long, default_value = "127.0.0.1")]
        host: std::net::IpAddr,
        /// The port to listen on (0: any free port, printed at start).
        #[arg(long, default_value_t = 8000)]
        port: u16,
        /// Samples per batch at most; 1 runs each request alone.
        #[arg(long, value_name = "N", default_value_t = 64, value_parser = nnc::serve::parse_max_batch)]
        max_batch: usize,
        /// How long the first request of a batch waits for others, in milliseconds.
        #[arg(long, value_name = "MS", default_value_t = 2.0, value_parser = nnc::serve::parse_delay_ms)]
        max_delay_ms: f64,
        /// Larger request bodies are refused (413), in MiB.
        #[arg(long, value_name = "MIB", default_value_t = 16)]
        max_body_mb: usize,
        /// The model to serve when the file has several.
        #[arg(long)]
        model: Option<String>,
        /// Optimization level of the graphs: -O0 (none), -O1 (algebra), -O2 (everything).
        #[arg(short = 'O', value_name = "LEVEL", default_value = "2", value_parser = parse_level)]
        opt: OptLevel,
        /// Threads the kernels split their work over (default: every core).
        #[arg(long, value_name = "N", value_parser = parse_threads)]
        threads: Option<usize>,
    },
}

#[derive(Clone, Copy, ValueEnum)]
enum EmitArg {
    /// The parsed syntax tree.
    Ast,
    /// The model's forward graph (and the objective with the loss).
    Ir,
    /// The objective with the gradient of the loss for every param.
    Grad,
    /// The whole training step: forward, loss, backward, optimizer update.
    TrainStep,
    /// The training step after the optimizer (see -O), with its kernels.
    Opt,
    /// The training step's kernels (see -O) with their FLOPs and bytes.
    Kernels,
    /// The forward (inference) graph's kernels at the train block's batch size.
    InferenceKernels,
}

fn parse_level(s: &str) -> Result<OptLevel, String> {
    s.parse()
}

fn parse_steps(s: &str) -> Result<usize, String> {
    match s.parse::<usize>() {
        Ok(n) if n >= 1 => Ok(n),
        _ => Err(format!("`{s}` is not a number of steps (1 or more)")),
    }
}

fn parse_threads(s: &str) -> Result<usize, String> {
    match s.parse::<usize>() {
        Ok(n) if n >= 1 => Ok(n),
        _ => Err(format!("`{s}` is not a number of threads (1 or more)")),
    }
}

/// Sizes the kernels' thread pool: `--threads`, else every core.
fn start_threads(threads: Option<usize>) -> Result<(), driver::Failure> {
    let n = threads.unwrap_or_else(nnc_codegen::threads::available);
    nnc_codegen::set_threads(n).map_err(|e| driver::Failure(format!("error: {e}\n")))
}

#[derive(Clone, Copy, ValueEnum)]
enum Backend {
    /// Native code compiled with Cranelift.
    Jit,
    /// The reference interpreter: slow, and the definition of correct.
    Interp,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Check { file, model } => driver::read_source(&file)
            .and_then(|src| driver::compile_source(&src, model.as_deref()).map(|m| (src, m)))
            .map(|(src, m)| {
                let params: usize = m
                    .forward
                    .params()
                    .iter()
                    .filter_map(|(n, _)| m.forward.ty(*n).const_numel())
                    .sum();
                println!("{}: ok — model {} with {params} params", src.path, m.name);
            }),
        Command::Summary {
            file,
            model,
            weights,
        } => driver::read_source(&file)
            .and_then(|src| driver::compile_source(&src, model.as_deref()))
            .and_then(|mut m| {
                if let Some(w) = &weights {
                    driver::restructure_for(&mut m, w)?;
                }
                Ok(m)
            })
            .map(|m| print!("{}", nnc::summary::render(&m))),
        Command::Compile {
            file,
            emit,
            model,
            opt,
            explain,
            weights,
            output,
            batch,
            weights_external,
        } => {
            if let (Some(out), Some(w)) = (&output, &weights) {
                driver::compile_object(
                    &file,
                    model.as_deref(),
                    w,
                    out,
                    batch,
                    opt,
                    weights_external,
                )
                .map(|o| {
                    println!(
                        "wrote {} ({} bytes, {} of them weights) and {}: C symbols `{}_*`, \
                             {} bytes of arena per concurrent predict{}",
                        o.object.display(),
                        o.object_bytes,
                        o.state_bytes,
                        o.header.display(),
                        o.prefix,
                        o.arena_bytes,
                        if weights_external {
                            "; weights read at start (NAME_weights_load)"
                        } else {
                            ""
                        }
                    )
                })
            } else {
                let stage = match emit {
                    EmitArg::Ast => Emit::Ast,
                    EmitArg::Ir => Emit::Ir,
                    EmitArg::Grad => Emit::Grad,
                    EmitArg::TrainStep => Emit::TrainStep,
                    EmitArg::Opt => Emit::Opt,
                    EmitArg::Kernels => Emit::Kernels,
                    EmitArg::InferenceKernels => Emit::InferenceKernels,
                };
                let options = CompileOptions {
                    opt,
                    explain,
                    weights,
                };
                driver::read_source(&file)
                    .and_then(|src| driver::emit_with(&src, stage, model.as_deref(), &options))
                    .map(|text| print!("{text}"))
            }
        }
        Command::Run {
            file,
            backend,
            data_dir,
            epochs,
            lr,
            batch,
            seed,
            model,
            save,
            weights,
            resume,
            eval,
            predict,
            predict_out,
            no_shuffle,
            steps,
            log,
            dump_grads,
            report,
            report_html,
            opt,
            threads,
        } => {
            if let Err(e) = start_threads(threads) {
                eprint!("{e}");
                return ExitCode::FAILURE;
            }
            let settings = RunSettings {
                data_dir,
                model,
                lr,
                run: nnc_runtime::RunOptions {
                    backend: match backend {
                        Backend::Jit => driver::Backend::Jit,
                        Backend::Interp => driver::Backend::Interp,
                    },
                    train: nnc_runtime::TrainOptions {
                        epochs,
                        batch,
                        seed,
                        first_epoch: 1,
                        shuffle: no_shuffle.then_some(false),
                        max_steps: steps,
                        resumed: None,
                    },
                    save,
                    weights,
                    resume,
                    eval,
                    predict,
                    report,
                    report_html,
                    log,
                    dump_grads,
                    predict_out,
                },
                opt,
                progress: nnc_runtime::progress::stdout_is_terminal(),
            };
            driver::run_with(&file, &settings, &mut |line| println!("{line}")).map(|_| ())
        }
        Command::Prune {
            file,
            weights,
            output,
            ratio,
            layers,
            saliency,
            global,
            model,
        } => {
            let options = nnc_runtime::compress::PruneOptions {
                ratio,
                layers,
                saliency,
                global,
            };
            nnc::compress::prune(
                &file,
                &weights,
                &output,
                &options,
                model.as_deref(),
                &mut |line| println!("{line}"),
            )
            .map(|_| ())
        }
        Command::Factorize {
            file,
            weights,
            output,
            energy,
            rank,
            layers,
            model,
        } => {
            use nnc_runtime::compress::{FactorizeOptions, RankChoice};
            let rank = match (energy, rank) {
                (_, Some(r)) => RankChoice::Fixed(r),
                (Some(e), None) => RankChoice::Energy(e),
                (None, None) => unreachable!("clap requires --energy or --rank"),
            };
            nnc::compress::factorize(
                &file,
                &weights,
                &output,
                &FactorizeOptions { rank, layers },
                model.as_deref(),
                &mut |line| println!("{line}"),
            )
            .map(|_| ())
        }
        Command::Quantize {
            file,
            weights,
            output,
            calibration_batches,
            method,
            backend,
            data_dir,
            model,
            qat,
        } => {
            let options = driver::QuantizeOptions {
                weights,
                output,
                batches: calibration_batches,
                method,
                backend: match backend {
                    Backend::Jit => driver::Backend::Jit,
                    Backend::Interp => driver::Backend::Interp,
                },
                data_dir,
                model,
                qat,
            };
            driver::quantize(&file, &options, &mut |line| println!("{line}"))
        }
        Command::Bench {
            file,
            batch,
            runs,
            json,
            profile,
            opt,
            threads,
            weights,
            int8,
        } => {
            if let Err(e) = start_threads(threads) {
                eprint!("{e}");
                return ExitCode::FAILURE;
            }
            let options = nnc::bench::BenchOptions {
                batch,
                opt,
                profile,
                weights,
                int8,
                runs: runs.max(1),
                ..Default::default()
            };
            nnc::bench::bench(&file, &options).map(|r| {
                if json {
                    print!("{}", r.to_json())
                } else {
                    print!("{}", r.to_text())
                }
            })
        }
        Command::Serve {
            file,
            weights,
            host,
            port,
            max_batch,
            max_delay_ms,
            max_body_mb,
            model,
            opt,
            threads,
        } => {
            if let Err(e) = start_threads(threads) {
                eprint!("{e}");
                return ExitCode::FAILURE;
            }
            let options = nnc::serve::ServeOptions {
                host,
                port,
                max_batch,
                max_delay: std::time::Duration::from_secs_f64(max_delay_ms / 1e3),
                body_limit: max_body_mb.saturating_mul(1 << 20),
                model,
                opt,
                ..nnc::serve::ServeOptions::new(weights)
            };
            nnc::serve::serve(&file, &options, &mut |line| println!("{line}"))
        }
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(failure) => {
            eprint!("{failure}");
            ExitCode::from(1)
        }
    }
}

/// A positive, finite learning rate.
fn parse_lr(text: &str) -> Result<f64, String> {
    match text.parse::<f64>() {
        Ok(lr) if lr > 0.0 && lr.is_finite() => Ok(lr),
        _ => Err(format!("expected a positive learning rate, found `{text}`")),
    }
}

/// `l1`, `bn` or `group`.
fn parse_saliency(text: &str) -> Result<nnc_runtime::compress::Saliency, String> {
    use nnc_runtime::compress::Saliency;
    match text {
        "l1" => Ok(Saliency::L1),
        "bn" => Ok(Saliency::BatchNorm),
        "group" => Ok(Saliency::Group),
        _ => Err(format!("expected l1, bn or group, found `{text}`")),
    }
}

/// `minmax`, `entropy`, `percentile` (99.99) or `percentile=P`.
fn parse_method(text: &str) -> Result<nnc_runtime::quantize::Method, String> {
    use nnc_runtime::quantize::Method;
    match text {
        "minmax" => Ok(Method::MinMax),
        "entropy" => Ok(Method::Entropy),
        "percentile" => Ok(Method::Percentile(99.99)),
        _ => match text.strip_prefix("percentile=").map(str::parse::<f64>) {
            Some(Ok(p)) if p > 0.0 && p <= 100.0 => Ok(Method::Percentile(p)),
            _ => Err(format!(
                "expected minmax, entropy, percentile or percentile=P with 0 < P <= 100, found `{text}`"
            )),
        },
    }
}
