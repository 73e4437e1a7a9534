//! The pipeline behind each subcommand, returning rendered failures so the
//! binary only prints and exits, and tests can call the same code.

use crate::diagnostic;
use nnc_dsl::SourceFile;
use nnc_ir::{Graph, Module};
pub use nnc_passes::OptLevel;
use std::cell::RefCell;
use std::path::{Path, PathBuf};
use std::time::Instant;

/// A failure, already rendered for the terminal.
#[derive(Debug)]
pub struct Failure(pub String);

impl std::fmt::Display for Failure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

pub fn read_source(path: &Path) -> Result<SourceFile, Failure> {
    let bytes = std::fs::read(path).map_err(|e| {
        Failure(diagnostic::render_plain(&format!(
            "cannot read `{}`: {e}",
            path.display()
        )))
    })?;
    let text = String::from_utf8(bytes).map_err(|e| {
        Failure(diagnostic::render_plain(&format!(
            "`{}` is not UTF-8 text (invalid byte at offset {})",
            path.display(),
            e.utf8_error().valid_up_to()
        )))
    })?;
    Ok(SourceFile::new(path.display().to_string(), text))
}

/// Parses and elaborates, rendering any error against the source.
pub fn compile_source(src: &SourceFile, model: Option<&str>) -> Result<Module, Failure> {
    let program = parse_source(src)?;
    compile_program(src, &program, model)
}

/// The syntax tree of `src` (the first stage of [`compile_source`]).
pub fn parse_source(src: &SourceFile) -> Result<nnc_dsl::Program, Failure> {
    nnc_dsl::parse_program(src).map_err(|e| Failure(diagnostic::render(src, &e)))
}

/// The module of a parsed `program` (the rest of [`compile_source`]).
pub fn compile_program(
    src: &SourceFile,
    program: &nnc_dsl::Program,
    model: Option<&str>,
) -> Result<Module, Failure> {
    let module = nnc_dsl::compile_program(program, model)
        .map_err(|e| Failure(diagnostic::render(src, &e)))?;
    for graph in module_graphs(&module) {
        nnc_ir::verify(graph).map_err(|e| {
            Failure(diagnostic::render_plain(&format!(
                "internal compiler error: {e}"
            )))
        })?;
    }
    Ok(module)
}

fn module_graphs(m: &Module) -> Vec<&Graph> {
    let mut graphs = vec![&m.forward];
    if let Some(t) = &m.train {
        graphs.push(&t.objective);
        graphs.push(&t.evaluation);
    }
    graphs
}

/// The stages `nnc compile --emit` can print.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Emit {
    Ast,
    Ir,
    Grad,
    TrainStep,
    /// The training step after the optimizer, with its kernels.
    Opt,
    /// The training step's kernels: what each computes, its FLOPs and bytes.
    Kernels,
}

/// How `nnc compile` optimizes and what it adds to the printed stage.
#[derive(Debug, Clone, Copy, Default)]
pub struct CompileOptions {
    /// The optimization level of `--emit opt`.
    pub opt: OptLevel,
    /// `--explain`: print the optimizer's report (rule firings, saturation
    /// statistics) first, as `//` comments, which the IR parser skips.
    pub explain: bool,
}

fn internal(e: impl std::fmt::Display) -> Failure {
    Failure(diagnostic::render_plain(&format!(
        "internal compiler error: {e}"
    )))
}

/// The module's train spec, or an error saying that `what` needs one.
pub fn need_train<'m>(module: &'m Module, what: &str) -> Result<&'m nnc_ir::TrainSpec, Failure> {
    module.train.as_ref().ok_or_else(|| {
        Failure(diagnostic::render_plain(&format!(
            "{what} needs a `train` block: the file defines model `{}` but does not say how to train it",
            module.name
        )))
    })
}

/// The text `nnc compile --emit <stage>` prints, at the default level.
pub fn emit(src: &SourceFile, stage: Emit, model: Option<&str>) -> Result<String, Failure> {
    emit_with(src, stage, model, &CompileOptions::default())
}

/// The text `nnc compile --emit <stage>` prints.
pub fn emit_with(
    src: &SourceFile,
    stage: Emit,
    model: Option<&str>,
    options: &CompileOptions,
) -> Result<String, Failure> {
    if options.explain && stage != Emit::Opt {
        return Err(Failure(diagnostic::render_plain(
            "`--explain` describes the optimizer: use it with `--emit opt`",
        )));
    }
    if stage == Emit::Ast {
        let program =
            nnc_dsl::parse_program(src).map_err(|e| Failure(diagnostic::render(src, &e)))?;
        return Ok(program.to_string());
    }
    let module = compile_source(src, model)?;
    match stage {
        Emit::Ast => unreachable!("handled above"),
        Emit::Ir => {
            let mut out = module.forward.to_string();
            if let Some(t) = &module.train {
                out.push('\n');
                out.push_str(&t.objective.to_string());
            }
            Ok(out)
        }
        Emit::Grad => {
            let t = need_train(&module, "`--emit grad`")?;
            let g = nnc_passes::differentiate(&t.objective, nnc_ir::LOSS).map_err(internal)?;
            nnc_ir::verify(&g).map_err(internal)?;
            Ok(g.to_string())
        }
        Emit::TrainStep => {
            need_train(&module, "`--emit train-step`")?;
            Ok(train_step(&module)?.to_string())
        }
        Emit::Opt => {
            need_train(&module, "`--emit opt`")?;
            let (step, report) = optimize(&train_step(&module)?, options.opt)?;
            let mut out = String::new();
            if options.explain {
                for line in report.to_string().lines() {
                    out.push_str("// ");
                    out.push_str(line);
                    out.push('\n');
                }
                out.push('\n');
            }
            out.push_str(&step.to_string());
            let batch = need_train(&module, "`--emit opt`")?.batch;
            out.push('\n');
            for line in kernel_listing(&step, batch, options.opt)?.lines() {
                out.push_str("// ");
                out.push_str(line);
                out.push('\n');
            }
            Ok(out)
        }
        Emit::Kernels => {
            let batch = need_train(&module, "`--emit kernels`")?.batch;
            let (step, _) = optimize(&train_step(&module)?, options.opt)?;
            kernel_listing(&step, batch, options.opt)
        }
    }
}

/// The kernels the JIT makes of `graph` at batch size `batch` with the
/// grouping of `level`, one per line in schedule order: label (ops and
/// result shape), FLOPs, bytes read and written, and the `%n` values it
/// computes (stored results, then values evaluated in registers, then
/// nodes whose work it absorbs); totals first.
pub fn kernel_listing(graph: &Graph, batch: usize, level: OptLevel) -> Result<String, Failure> {
    let synthetic = nnc_runtime::Batch::synthetic(graph, batch, 0);
    let bindings = nnc_runtime::jit::bind_symbols(graph, &synthetic).map_err(internal)?;
    let kernels =
        nnc_codegen::summary::kernels(graph, &bindings, &grouping(level)).map_err(internal)?;
    let number: std::collections::HashMap<nnc_ir::NodeId, usize> = graph
        .topo_order()
        .into_iter()
        .enumerate()
        .map(|(i, n)| (n, i))
        .collect();
    let flops: u64 = kernels.iter().map(|k| k.flops).sum();
    let read: u64 = kernels.iter().map(|k| k.bytes_read).sum();
    let written: u64 = kernels.iter().map(|k| k.bytes_written).sum();
    let mut out = format!(
        "kernels of `{}` at batch {batch} ({level}): {} kernels, {:.3} MFLOP, {:.3} MB read, {:.3} MB written\n",
        graph.name,
        kernels.len(),
        flops as f64 / 1e6,
        read as f64 / 1e6,
        written as f64 / 1e6,
    );
    let width = kernels.len().to_string().len();
    for (i, k) in kernels.iter().enumerate() {
        let values: Vec<String> = k
            .nodes
            .iter()
            .filter_map(|n| number.get(n).map(|i| format!("%{i}")))
            .collect();
        out.push_str(&format!(
            "k{i:<width$} {:<44} {:>11} flop {:>10} B read {:>10} B written  {}\n",
            k.label,
            k.flops,
            k.bytes_read,
            k.bytes_written,
            values.join(" ")
        ));
    }
    Ok(out)
}

pub fn train_step(module: &Module) -> Result<Graph, Failure> {
    let t = need_train(module, "building the training step")?;
    let g = nnc_passes::build_train_step(&t.objective, &t.optimizer).map_err(internal)?;
    nnc_ir::verify(&g).map_err(internal)?;
    Ok(g)
}

/// `graph` through the optimizer at `level` (verified; `-O0` returns it
/// unchanged).
pub fn optimize(graph: &Graph, level: OptLevel) -> Result<(Graph, nnc_passes::OptReport), Failure> {
    nnc_passes::optimize(graph, level).map_err(internal)
}

/// The three programs a run executes, each optimized at `level`: the
/// graphs rewritten by the optimizer, grouped into kernels by
/// [`grouping`].
pub fn programs(module: &Module, level: OptLevel) -> Result<nnc_runtime::Programs, Failure> {
    let spec = need_train(module, "building the training step")?;
    let step = optimize(&train_step(module)?, level)?.0;
    Ok(nnc_runtime::Programs {
        forward: optimize(&module.forward, level)?.0,
        evaluation: optimize(&spec.evaluation, level)?.0,
        step,
        grouping: grouping(level),
    })
}

/// The fusion half of an optimization level: at `-O0` the code generator's
/// baseline grouping (an elementwise op computed inside a single
/// elementwise consumer of its shape, everything else a kernel of its
/// own); from `-O1` the full grouping (values computed inside every loop
/// that reads them, by the recompute rule; several results per loop, so
/// each param's optimizer update is one kernel).
pub fn grouping(level: OptLevel) -> nnc_codegen::GroupConfig {
    match level {
        OptLevel::O0 => nnc_codegen::GroupConfig::greedy(),
        OptLevel::O1 | OptLevel::O2 => nnc_codegen::GroupConfig::default(),
    }
}

/// Where relative data paths resolve: `--data-dir`, else the source's folder.
pub fn data_base(src_path: &Path, data_dir: Option<&Path>) -> PathBuf {
    match data_dir {
        Some(d) => d.to_path_buf(),
        None => src_path
            .parent()
            .map(Path::to_path_buf)
            .unwrap_or_else(|| PathBuf::from(".")),
    }
}

pub struct RunSettings {
    pub data_dir: Option<PathBuf>,
    pub model: Option<String>,
    pub options: nnc_runtime::TrainOptions,
    pub backend: Backend,
}

/// What executes the graphs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Backend {
    /// Native code from Cranelift (the default).
    #[default]
    Jit,
    /// The reference interpreter: slow, the definition of correct.
    Interp,
}

impl Backend {
    pub fn name(self) -> &'static str {
        match self {
            Backend::Jit => "jit",
            Backend::Interp => "interp",
        }
    }

    /// An executor of `programs` with params initialized from `seed`.
    pub fn executor(
        self,
        programs: nnc_runtime::Programs,
        seed: u64,
    ) -> Result<Box<dyn nnc_runtime::Executor>, nnc_runtime::RuntimeError> {
        Ok(match self {
            Backend::Jit => Box::new(nnc_runtime::Jit::new(programs, seed)?),
            Backend::Interp => Box::new(nnc_runtime::Interpreter::new(programs, seed)?),
        })
    }
}

/// What `nnc run` does besides training from scratch: checkpoints,
/// evaluation or prediction from saved weights, the JSON report, the
/// progress bar.
#[derive(Debug, Clone, Default)]
pub struct RunFlags {
    /// `--save PATH`: a checkpoint after every epoch (and at the end when no
    /// epoch ran), each written atomically.
    pub save: Option<PathBuf>,
    /// `--weights PATH`: start from these params (optimizer state fresh).
    pub weights: Option<PathBuf>,
    /// `--resume`: params, optimizer state and epoch count from `save`.
    pub resume: bool,
    /// `--eval`: evaluate `weights` on the validation and test samples; no
    /// training.
    pub eval: bool,
    /// `--predict INPUT`: the forward graph's outputs for each sample of an
    /// IDX or CSV file, with `weights`.
    pub predict: Option<PathBuf>,
    /// `--report PATH.json`: a JSON report of the run, written atomically.
    pub report: Option<PathBuf>,
    /// Draw a progress bar per epoch (when stdout is a terminal).
    pub progress: bool,
    /// How the graphs are optimized before they run (`-O0`..`-O2`).
    pub opt: OptLevel,
}

/// What a run produced.
#[derive(Debug, Clone)]
pub enum RunOutcome {
    Trained(nnc_runtime::TrainReport),
    /// `--eval`: metrics on the validation and test samples (on the
    /// training samples when the data holds out neither).
    Evaluated {
        train: Option<nnc_runtime::Metrics>,
        validation: Option<nnc_runtime::Metrics>,
        test: Option<nnc_runtime::Metrics>,
    },
    Predicted(Vec<Prediction>),
}

/// The forward graph's outputs for one sample.
#[derive(Debug, Clone, PartialEq)]
pub struct Prediction {
    pub outputs: Vec<(String, Vec<f64>)>,
    /// The arg-max class, for a classifier (a model trained against `i32`
    /// class labels).
    pub class: Option<usize>,
}

fn check_flags(flags: &RunFlags) -> Result<(), Failure> {
    let fail = |m: &str| Err(Failure(diagnostic::render_plain(m)));
    if flags.resume && flags.save.is_none() {
        return fail("`--resume` continues from the `--save` checkpoint: give `--save PATH`");
    }
    if flags.resume && flags.weights.is_some() {
        return fail("`--resume` and `--weights` both say where to start; give one");
    }
    if (flags.eval || flags.predict.is_some()) && flags.weights.is_none() {
        return fail("`--eval` and `--predict` use trained params: give `--weights PATH`");
    }
    if flags.eval && flags.predict.is_some() {
        return fail("`--eval` and `--predict` are separate runs; give one");
    }
    if (flags.eval || flags.predict.is_some()) && (flags.save.is_some() || flags.resume) {
        return fail(
            "`--eval` and `--predict` do not train, so `--save` and `--resume` do not apply",
        );
    }
    if flags.predict.is_some() && flags.report.is_some() {
        return fail("`--report` describes training or evaluation, not `--predict`");
    }
    Ok(())
}

/// Loads the params (not the optimizer state) of a checkpoint into `exec`,
/// refusing one of another model.
fn load_params(
    exec: &mut dyn nnc_runtime::Executor,
    path: &Path,
    model: &str,
    params: &[String],
) -> Result<nnc_runtime::Checkpoint, Failure> {
    let ckpt = nnc_runtime::checkpoint::load(path).map_err(runtime_failure)?;
    ckpt.apply(exec, model, params, nnc_runtime::CheckpointScope::Params)
        .map_err(runtime_failure)?;
    Ok(ckpt)
}

fn runtime_failure(e: nnc_runtime::RuntimeError) -> Failure {
    Failure(diagnostic::render_plain(&e.to_string()))
}

/// `nnc run`: trains with the interpreter, printing a line per epoch.
pub fn run(
    path: &Path,
    settings: &RunSettings,
    out: &mut dyn FnMut(&str),
) -> Result<nnc_runtime::TrainReport, Failure> {
    match run_with(path, settings, &RunFlags::default(), out)? {
        RunOutcome::Trained(report) => Ok(report),
        _ => Err(internal("a plain run did not train")),
    }
}

/// `nnc run` with its checkpoint, evaluation, prediction and report flags.
pub fn run_with(
    path: &Path,
    settings: &RunSettings,
    flags: &RunFlags,
    out: &mut dyn FnMut(&str),
) -> Result<RunOutcome, Failure> {
    let started = Instant::now();
    check_flags(flags)?;
    let src = read_source(path)?;
    let module = compile_source(&src, settings.model.as_deref())?;
    if let (Some(input), Some(weights)) = (&flags.predict, &flags.weights) {
        return predict(&module, settings, flags.opt, weights, input, out)
            .map(RunOutcome::Predicted);
    }
    need_train(&module, "`nnc run`")?;
    let programs = programs(&module, flags.opt)?;
    let step = programs.step.clone();
    let frontend_seconds = started.elapsed().as_secs_f64();
    let spec = module.train.as_ref().ok_or_else(|| internal("no train"))?;
    let data_spec = module.data.as_ref().ok_or_else(|| internal("no data"))?;
    let base = data_base(path, settings.data_dir.as_deref());
    let runtime_err = runtime_failure;
    let data = nnc_runtime::loader::load(data_spec, &base).map_err(runtime_err)?;
    let params = nnc_runtime::checkpoint::param_names(&programs);
    let mut exec = settings
        .backend
        .executor(programs, settings.options.seed(spec))
        .map_err(runtime_err)?;
    let mut options = settings.options.clone();
    let target_epochs = options.epochs.unwrap_or(spec.epochs);
    let mut done_before = 0;
    if let Some(weights) = &flags.weights {
        let ckpt = load_params(exec.as_mut(), weights, &module.name, &params)?;
        if flags.eval {
            // The report describes the weights evaluated.
            done_before = ckpt.epochs_done;
        }
        out(&format!(
            "loaded the params of {} from {} ({} epochs trained)",
            module.name,
            weights.display(),
            ckpt.epochs_done
        ));
    }
    if flags.resume {
        let save = flags.save.as_ref().ok_or_else(|| internal("no --save"))?;
        if !save.exists() {
            return Err(Failure(diagnostic::render_plain(&format!(
                "`--resume`: there is no checkpoint at `{}` yet (a run with `--save {}` writes one)",
                save.display(),
                save.display()
            ))));
        }
        let ckpt = nnc_runtime::checkpoint::load(save).map_err(runtime_err)?;
        ckpt.apply(
            exec.as_mut(),
            &module.name,
            &params,
            nnc_runtime::CheckpointScope::Everything,
        )
        .map_err(runtime_err)?;
        done_before = ckpt.epochs_done;
        out(&format!(
            "resuming {} from {} after epoch {}/{target_epochs}",
            module.name,
            save.display(),
            done_before
        ));
        options.first_epoch = done_before + 1;
    }
    let batch_size = options.batch.unwrap_or(spec.batch);
    let mut report = nnc_runtime::report::Report {
        model: module.name.clone(),
        backend: settings.backend.name().into(),
        mode: if flags.eval { "eval" } else { "train" }.into(),
        nnc_version: nnc_runtime::checkpoint::NNC_VERSION.into(),
        epochs: done_before,
        first_epoch: done_before + 1,
        per_epoch: Vec::new(),
        train: None,
        validation: None,
        test: None,
        samples_per_second: 0.0,
        total_seconds: 0.0,
        compile_seconds: 0.0,
        peak_rss_bytes: None,
    };

    let outcome = if flags.eval {
        out(&format!(
            "evaluating {} on {} ({} samples), backend {}",
            module.name,
            data_spec.name,
            data.train.len(),
            settings.backend.name()
        ));
        let eval_start = Instant::now();
        let (train, validation, test) =
            evaluate_only(spec, &data, exec.as_mut(), &options).map_err(runtime_err)?;
        let seconds = eval_start.elapsed().as_secs_f64();
        for (name, m) in [
            ("train", &train),
            ("validation", &validation),
            ("test", &test),
        ] {
            if let Some(m) = m {
                out(&format!("{name}: {}", format_metrics(m)));
            }
        }
        let evaluated: usize = [&train, &validation, &test]
            .iter()
            .filter_map(|m| m.as_ref().map(|m| m.samples))
            .sum();
        report.samples_per_second = evaluated as f64 / seconds.max(1e-9);
        report.train = train.as_ref().map(Into::into);
        report.validation = validation.as_ref().map(Into::into);
        report.test = test.as_ref().map(Into::into);
        RunOutcome::Evaluated {
            train,
            validation,
            test,
        }
    } else {
        out(&format!(
            "training {} on {} ({} samples) with {}, backend {}",
            module.name,
            data_spec.name,
            data.train.len(),
            spec.optimizer,
            settings.backend.name()
        ));
        if done_before >= target_epochs && flags.resume {
            out(&format!(
                "all {target_epochs} epochs are done; nothing left to train"
            ));
        }
        let progress = RefCell::new(nnc_runtime::Progress::new(
            flags.progress,
            batch_size,
            done_before + 1,
            target_epochs,
        ));
        let mut saved_epochs = None;
        let result = nnc_runtime::train(
            spec,
            &step,
            &data,
            exec.as_mut(),
            &options,
            &mut |done, total| progress.borrow_mut().batch(done, total),
            &mut |r, exec| {
                progress.borrow_mut().finish_epoch();
                out(&format_epoch(r));
                if let Some(save) = &flags.save {
                    let meta = nnc_runtime::CheckpointMeta {
                        epochs_done: r.epoch,
                        params: params.clone(),
                    };
                    nnc_runtime::checkpoint::save(save, &module.name, &exec.state(), &meta)?;
                    saved_epochs = Some(r.epoch);
                }
                Ok(())
            },
        );
        progress.borrow_mut().finish_epoch();
        let trained = result.map_err(runtime_err)?;
        if let Some(save) = &flags.save {
            // Every epoch already saved the state it ended with; save here
            // only when no epoch ran.
            if saved_epochs.is_none() {
                let meta = nnc_runtime::CheckpointMeta {
                    epochs_done: done_before,
                    params: params.clone(),
                };
                nnc_runtime::checkpoint::save(save, &module.name, &exec.state(), &meta)
                    .map_err(runtime_err)?;
            }
        }
        if let Some(t) = &trained.test {
            out(&format!("test: {}", format_metrics(t)));
        }
        report.epochs = done_before + trained.epochs.len();
        report.per_epoch = trained.epochs.iter().map(Into::into).collect();
        report.train = trained.epochs.last().map(|e| (&e.train).into());
        report.validation = trained
            .epochs
            .last()
            .and_then(|e| e.validation.as_ref())
            .map(Into::into);
        report.test = trained.test.as_ref().map(Into::into);
        report.samples_per_second = nnc_runtime::report::training_rate(&trained.epochs);
        RunOutcome::Trained(trained)
    };
    if let Some(path) = &flags.report {
        // Parse, elaborate and build the step, then the executor's own compiling.
        report.compile_seconds = frontend_seconds + exec.compile_time().as_secs_f64();
        report.total_seconds = started.elapsed().as_secs_f64();
        report.peak_rss_bytes = nnc_runtime::report::peak_rss_bytes();
        report.write(path).map_err(runtime_err)?;
    }
    Ok(outcome)
}

/// `--eval`: the objective's loss and metrics on the validation and test
/// samples, split exactly as training splits them; on the training samples
/// when there are neither.
#[allow(clippy::type_complexity)]
fn evaluate_only(
    spec: &nnc_ir::TrainSpec,
    data: &nnc_runtime::LoadedData,
    exec: &mut dyn nnc_runtime::Executor,
    options: &nnc_runtime::TrainOptions,
) -> Result<
    (
        Option<nnc_runtime::Metrics>,
        Option<nnc_runtime::Metrics>,
        Option<nnc_runtime::Metrics>,
    ),
    nnc_runtime::RuntimeError,
> {
    use nnc_runtime::train::{evaluate, partition};
    let batch = options.batch.unwrap_or(spec.batch);
    data.check_inputs(&spec.evaluation)?;
    let parts = partition(
        data.train.len(),
        data.test_split,
        spec.validate,
        options.seed(spec),
    )?;
    let on_train = |exec: &mut dyn nnc_runtime::Executor, idx: &[usize]| {
        evaluate(exec, &spec.evaluation, data, &data.train, idx, batch)
    };
    let validation = match parts.validation.is_empty() {
        true => None,
        false => Some(on_train(exec, &parts.validation)?),
    };
    let test = match &data.test {
        Some(ds) => {
            let all: Vec<usize> = (0..ds.len()).collect();
            Some(evaluate(exec, &spec.evaluation, data, ds, &all, batch)?)
        }
        None if !parts.test.is_empty() => Some(on_train(exec, &parts.test)?),
        None => None,
    };
    let train = match (&validation, &test) {
        (None, None) => Some(on_train(exec, &parts.train)?),
        _ => None,
    };
    Ok((train, validation, test))
}

/// `--predict`: runs the forward graph with the params of `weights` on every
/// sample of `input` (IDX, or CSV with one sample per row), printing one
/// line per sample. The samples go through the transforms of the data
/// field that feeds the model's input in training (`scale`, `normalize`,
/// `reshape`), so the file holds raw samples like the training data.
fn predict(
    module: &Module,
    settings: &RunSettings,
    level: OptLevel,
    weights: &Path,
    input: &Path,
    out: &mut dyn FnMut(&str),
) -> Result<Vec<Prediction>, Failure> {
    use nnc_runtime::data::DataError;
    let runtime_err = runtime_failure;
    let plain = |m: String| Failure(diagnostic::render_plain(&m));
    let optimized = optimize(&module.forward, level)?.0;
    let forward = &optimized;
    let inputs = forward.inputs();
    let [(input_node, input_name)] = inputs.as_slice() else {
        let names: Vec<&str> = inputs.iter().map(|(_, n)| *n).collect();
        return Err(plain(format!(
            "`--predict` feeds one input, but model `{}` has {}: {}",
            module.name,
            names.len(),
            names.join(", ")
        )));
    };
    let input_name = input_name.to_string();
    let input_ty = forward.ty(*input_node).clone();

    // The file's samples, as one data field through the training field's
    // transforms.
    let field = module
        .data
        .as_ref()
        .and_then(|d| d.fields.iter().find(|f| f.name == input_name));
    let path_text = input
        .to_str()
        .ok_or_else(|| plain(format!("`{}`: the path is not UTF-8", input.display())))?
        .to_string();
    let (source, file_sample) = match nnc_runtime::data::idx::load(input) {
        Ok(array) => (
            nnc_ir::Source::Idx { path: path_text },
            array.dims().get(1..).unwrap_or_default().to_vec(),
        ),
        Err(DataError::IdxBadMagic { .. }) => {
            let table = nnc_runtime::data::csv::load(input, &Default::default())
                .map_err(|e| runtime_err(e.into()))?;
            let cols = table.cols();
            (
                nnc_ir::Source::CsvColumns {
                    path: path_text,
                    from: 0,
                    to: cols,
                },
                vec![cols],
            )
        }
        Err(e) => return Err(runtime_err(e.into())),
    };
    let mut transforms = field.map(|f| f.transforms.clone()).unwrap_or_default();
    let input_sample: Option<Vec<usize>> = input_ty
        .shape
        .iter()
        .skip(1)
        .map(|d| d.as_const())
        .collect();
    let one_hot = transforms
        .iter()
        .any(|t| matches!(t, nnc_ir::Transform::OneHot(_)));
    if let (Some(want), false) = (input_sample, one_hot) {
        // A sample of the right size is taken in any shape (an IDX image
        // for a flat input, a CSV row for an image input).
        let (have_n, want_n): (usize, usize) =
            (file_sample.iter().product(), want.iter().product());
        if have_n != want_n {
            return Err(plain(format!(
                "`{}` has samples of shape {file_sample:?} ({have_n} values), but model `{}` takes `{input_name}` samples of shape {want:?} ({want_n} values)",
                input.display(),
                module.name
            )));
        }
        transforms.insert(0, nnc_ir::Transform::Reshape(want));
    }
    let spec = nnc_ir::DataSpec {
        name: "predict".into(),
        fields: vec![nnc_ir::DataField {
            name: input_name.clone(),
            dtype: field.map_or(input_ty.dtype, |f| f.dtype),
            source,
            transforms,
        }],
        test: None,
    };
    let data = nnc_runtime::loader::load(&spec, Path::new("")).map_err(runtime_err)?;
    data.check_inputs(forward)
        .map_err(|e| plain(format!("`{}`: {e}", input.display())))?;

    let programs = nnc_runtime::Programs::new(forward.clone(), forward.clone(), forward.clone());
    let params = nnc_runtime::checkpoint::param_names(&programs);
    let seed = settings
        .options
        .seed
        .or(module.train.as_ref().map(|t| t.seed))
        .unwrap_or(0);
    let mut exec = settings
        .backend
        .executor(programs, seed)
        .map_err(runtime_err)?;
    load_params(exec.as_mut(), weights, &module.name, &params)?;

    // A classifier is trained against `i32` class labels; its first output
    // holds a score per class.
    let classifier = module.train.as_ref().is_some_and(|t| {
        t.objective.inputs().iter().any(|(n, name)| {
            let ty = t.objective.ty(*n);
            *name != input_name && ty.dtype == nnc_ir::DType::I32 && ty.rank() == 1
        })
    });
    let output_names: Vec<String> = forward.outputs.iter().map(|o| o.name.clone()).collect();
    let batch_size = settings
        .options
        .batch
        .or(module.train.as_ref().map(|t| t.batch))
        .unwrap_or(256)
        .max(1);
    let names = vec![input_name];
    let mut batch = nnc_runtime::Batch::default();
    let mut predictions = Vec::with_capacity(data.train.len());
    let indices: Vec<usize> = (0..data.train.len()).collect();
    for chunk in indices.chunks(batch_size) {
        data.fill_batch(&data.train, &names, chunk, &mut batch)
            .map_err(runtime_err)?;
        let outputs = exec.predict(&batch).map_err(runtime_err)?;
        for i in 0..chunk.len() {
            let mut per_sample = Vec::new();
            for name in &output_names {
                let Some((_, t)) = outputs.iter().find(|(n, _)| n == name) else {
                    continue;
                };
                let per = t.shape.iter().skip(1).product::<usize>();
                let values = t.data.get(i * per..(i + 1) * per).unwrap_or_default();
                per_sample.push((name.clone(), values.to_vec()));
            }
            let class = match per_sample.first() {
                Some((_, v)) if classifier && v.len() >= 2 => argmax(v),
                _ => None,
            };
            let prediction = Prediction {
                outputs: per_sample,
                class,
            };
            out(&format_prediction(predictions.len(), &prediction));
            predictions.push(prediction);
        }
    }
    Ok(predictions)
}

fn argmax(values: &[f64]) -> Option<usize> {
    values
        .iter()
        .enumerate()
        .fold(None, |best: Option<(usize, f64)>, (i, &v)| match best {
            Some((_, b)) if b >= v || v.is_nan() => best,
            _ => Some((i, v)),
        })
        .map(|(i, _)| i)
}

/// `3: [0.0100, 0.9900]  class 1`; several outputs are named.
pub fn format_prediction(index: usize, p: &Prediction) -> String {
    let list = |v: &[f64]| {
        let items: Vec<String> = v.iter().map(|x| format!("{x:.4}")).collect();
        format!("[{}]", items.join(", "))
    };
    let mut s = format!("{index}:");
    if let [(_, values)] = p.outputs.as_slice() {
        s.push_str(&format!(" {}", list(values)));
    } else {
        for (name, values) in &p.outputs {
            s.push_str(&format!(" {name} {}", list(values)));
        }
    }
    if let Some(c) = p.class {
        s.push_str(&format!("  class {c}"));
    }
    s
}

fn format_metrics(m: &nnc_runtime::Metrics) -> String {
    let mut s = format!("loss {:.4}", m.loss);
    if let Some(a) = m.accuracy {
        s.push_str(&format!("  accuracy {:.2}%", a * 100.0));
    }
    s.push_str(&format!("  ({} samples)", m.samples));
    s
}

pub fn format_epoch(r: &nnc_runtime::EpochReport) -> String {
    let width = r.epochs.to_string().len();
    let mut s = format!(
        "epoch {:>width$}/{}  loss {:.4}",
        r.epoch, r.epochs, r.train.loss
    );
    if let Some(a) = r.train.accuracy {
        s.push_str(&format!("  accuracy {:.2}%", a * 100.0));
    }
    if let Some(v) = &r.validation {
        s.push_str(&format!("  val_loss {:.4}", v.loss));
        if let Some(a) = v.accuracy {
            s.push_str(&format!("  val_accuracy {:.2}%", a * 100.0));
        }
    }
    let rate = r.train.samples as f64 / r.seconds.max(1e-9);
    s.push_str(&format!("  {:.1}s, {rate:.0} samples/s", r.seconds));
    s
}
