//! The pipeline behind each subcommand, returning rendered failures so the
//! binary only prints and exits, and tests can call the same code.

use crate::diagnostic;
use nnc_dsl::SourceFile;
use nnc_ir::{Graph, Module, StructuralChange};
pub use nnc_passes::OptLevel;
use nnc_runtime::Event;
pub use nnc_runtime::{Backend, Prediction, RunOutcome};
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
    let mut module = nnc_dsl::compile_program(program, model)
        .map_err(|e| Failure(diagnostic::render(src, &e)))?;
    nnc_passes::compress::sparsity::apply(&mut module).map_err(|e| {
        Failure(match e.span {
            Some(at) => {
                let span = nnc_dsl::Span::new(at.start as usize, at.end as usize);
                let mut error = nnc_dsl::Error::new(span, e.message);
                if let Some(help) = e.help {
                    error = error.with_help(help);
                }
                diagnostic::render(src, &error)
            }
            None => diagnostic::render_plain(&e.message),
        })
    })?;
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
    /// The same for the model's forward graph (inference) at the train
    /// block's batch size.
    InferenceKernels,
}

/// How `nnc compile` optimizes and what it adds to the printed stage.
#[derive(Debug, Clone, Default)]
pub struct CompileOptions {
    /// The optimization level of `--emit opt`.
    pub opt: OptLevel,
    /// `--explain`: print the optimizer's report (rule firings, saturation
    /// statistics) first, as `//` comments, which the IR parser skips.
    pub explain: bool,
    /// `--weights`: compile the model as this checkpoint's structure
    /// says (pruned or factorized), not as the source alone, and with a
    /// quantized checkpoint's integer products in its forward graph.
    pub weights: Option<PathBuf>,
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
    let mut module = compile_source(src, model)?;
    if let Some(w) = &options.weights {
        as_checkpoint_has_it(&mut module, w)?;
    }
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
        Emit::InferenceKernels => {
            let batch = need_train(&module, "`--emit inference-kernels`")?.batch;
            let (forward, _) = optimize(&module.forward, options.opt)?;
            kernel_listing(&forward, batch, options.opt)
        }
    }
}

/// The kernels the JIT makes of `graph` at batch size `batch` with the
/// grouping of `level`, one per line in schedule order: label (ops and
/// result shape), FLOPs, bytes read and written, and the `%n` values it
/// computes (stored results, then values evaluated in registers, then
/// nodes whose work it absorbs); totals first. The batch symbol is the
/// leading dim of the inputs: no data is needed, nor made up, to know it.
pub fn kernel_listing(graph: &Graph, batch: usize, level: OptLevel) -> Result<String, Failure> {
    let bindings = nnc_ir::symbols::batch_bindings(graph, batch);
    for (id, name) in graph.inputs() {
        if let Err(unbound) = nnc_ir::symbols::resolve(&graph.ty(id).shape, &bindings) {
            return Err(Failure(diagnostic::render_plain(&format!(
                "the kernels of `{}` depend on dim `{}` of input `{name}`, which only the data gives: kernels are listed at a batch size alone",
                graph.name, unbound.symbol
            ))));
        }
    }
    let (kernels, bodies) =
        nnc_codegen::summary::kernels_and_loop_bodies(graph, &bindings, &grouping(level))
            .map_err(internal)?;
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
        // A loop's body kernels, run every trip, under it (`k6.k0`).
        let prefix = format!("k{i}.");
        for (name, b) in bodies.iter().filter(|(n, _)| n.starts_with(&prefix)) {
            let depth = name.matches('.').count();
            out.push_str(&format!(
                "{:indent$}{name} {:<label$} {:>11} flop {:>10} B read {:>10} B written  (per trip)\n",
                "",
                b.label,
                b.flops,
                b.bytes_read,
                b.bytes_written,
                indent = 2 * depth,
                label = (44 + width + 1).saturating_sub(name.len() + 2 * depth + 1),
            ));
        }
    }
    Ok(out)
}

pub fn train_step(module: &Module) -> Result<Graph, Failure> {
    let t = need_train(module, "building the training step")?;
    let g = nnc_passes::build_train_step_with(&t.objective, &t.optimizer, t.clip, &t.no_decay)
        .map_err(internal)?;
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
        gradients: None,
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

/// What `nnc run` was asked: where the model and its data are, what the run
/// does (the runtime's [`nnc_runtime::RunOptions`]: backend, train-block
/// overrides, checkpoints, evaluation, prediction, logs), how the graphs
/// are optimized, and whether to draw progress bars.
#[derive(Debug, Clone, Default)]
pub struct RunSettings {
    /// `--data-dir DIR`: where relative data paths resolve.
    pub data_dir: Option<PathBuf>,
    /// `--model NAME`: which model of the file.
    pub model: Option<String>,
    /// `--lr LR`: the optimizer's base learning rate instead of the
    /// train block's.
    pub lr: Option<f64>,
    pub run: nnc_runtime::RunOptions,
    /// How the graphs are optimized before they run (`-O0`..`-O2`).
    pub opt: OptLevel,
    /// Draw a progress bar per epoch (when stdout is a terminal).
    pub progress: bool,
}

/// What `nnc compile -o` writes: an object file and its C header.
#[derive(Debug, Clone)]
pub struct ObjectSummary {
    pub object: PathBuf,
    pub header: PathBuf,
    pub object_bytes: usize,
    pub state_bytes: usize,
    pub arena_bytes: usize,
    pub prefix: String,
}

/// `nnc compile FILE --weights W -o OUT.o [--batch N] [--weights-external]`: the model's
/// inference, as the checkpoint has it (structure, int8 products), compiled
/// ahead of time into `OUT.o` and its header `OUT.h`, whose C symbols start
/// with `OUT`'s stem. Both files are written atomically.
pub fn compile_object(
    path: &Path,
    model: Option<&str>,
    weights: &Path,
    out: &Path,
    batch: usize,
    opt: OptLevel,
    external: bool,
) -> Result<ObjectSummary, Failure> {
    if batch == 0 {
        return Err(run_failure("the batch size must be at least 1"));
    }
    let stem = out.file_stem().and_then(|s| s.to_str()).unwrap_or("");
    let prefix = nnc_codegen::object::c_name(stem);
    if prefix.is_empty() || prefix.starts_with(|c: char| c.is_ascii_digit()) {
        return Err(run_failure(format!(
            "`{}`: the object's name starts its C symbols, so it must start with a letter or `_`",
            out.display()
        )));
    }
    let src = read_source(path)?;
    let mut module = compile_source(&src, model)?;
    let int8 = as_checkpoint_has_it(&mut module, weights)?;
    if int8 && external {
        return Err(run_failure(format!(
            "`{}` is quantized: its scales are compiled into the object's code, so its weights \
             cannot be read at start (leave out --weights-external)",
            weights.display()
        )));
    }
    let programs = nnc_runtime::Programs {
        // The grouping `nnc run --predict` compiles with: the same kernels.
        grouping: grouping(opt),
        ..nnc_runtime::Programs::inference(optimize(&module.forward, opt)?.0)
    };
    let seed = module.train.as_ref().map_or(0, |t| t.seed);
    let artifact =
        nnc_runtime::aot::compile(programs, &module, seed, weights, batch, &prefix, external)
            .map_err(run_failure)?;
    let header = out.with_extension("h");
    let write = |p: &Path, bytes: &[u8]| {
        nnc_runtime::checkpoint::write_atomic(p, bytes)
            .map_err(|e| run_failure(format!("cannot write `{}`: {e}", p.display())))
    };
    write(out, &artifact.object)?;
    write(&header, artifact.header.as_bytes())?;
    Ok(ObjectSummary {
        object: out.to_path_buf(),
        header,
        object_bytes: artifact.object.len(),
        state_bytes: artifact.state_bytes,
        arena_bytes: artifact.arena_bytes,
        prefix,
    })
}

fn run_failure(e: impl std::fmt::Display) -> Failure {
    Failure(diagnostic::render_plain(&e.to_string()))
}

/// [`run_with`] for a run that trains (no `--eval` or `--predict`): its
/// report.
pub fn run(
    path: &Path,
    settings: &RunSettings,
    out: &mut dyn FnMut(&str),
) -> Result<nnc_runtime::TrainReport, Failure> {
    match run_with(path, settings, out)? {
        RunOutcome::Trained(report) => Ok(report),
        RunOutcome::CrossValidated(_) => Err(internal(
            "a plain run cross-validated: `run_with` returns the folds",
        )),
        _ => Err(internal("a plain run did not train")),
    }
}

/// `nnc run` with its checkpoint, evaluation, prediction and report flags:
/// compiles what the run needs and hands it to the runtime's
/// [`nnc_runtime::Run`], printing what it reports.
pub fn run_with(
    path: &Path,
    settings: &RunSettings,
    out: &mut dyn FnMut(&str),
) -> Result<RunOutcome, Failure> {
    let started = Instant::now();
    let options = settings.run.clone();
    // Before the source is read: a contradictory command line is the
    // first thing to fix.
    options.validate().map_err(run_failure)?;
    let src = read_source(path)?;
    let mut module = compile_source(&src, settings.model.as_deref())?;
    // A pruned or factorized model's checkpoint (`--weights`, or the one
    // `--resume` continues) says how its graphs differ from the source's.
    let restored = match (&options.weights, options.resume, &options.save) {
        (Some(w), _, _) => Some(w),
        (None, true, Some(save)) => Some(save),
        _ => None,
    };
    if let Some(ckpt) = restored {
        restructure_for(&mut module, ckpt)?;
    }
    if let (Some(lr), Some(spec)) = (settings.lr, module.train.as_mut()) {
        spec.optimizer = spec.optimizer.clone().with_lr(lr);
    }
    let opt = settings.opt;
    let quantized = match &options.weights {
        Some(w) => quantized_products(w)?,
        None => None,
    };
    let programs = if let Some((ckpt, products)) = &quantized {
        if options.predict.is_none() && !options.eval {
            return Err(Failure(diagnostic::render_plain(&format!(
                "checkpoint `{}` is quantized: it evaluates (--eval) and predicts (--predict); \
                 training starts from a float checkpoint",
                ckpt.path.display()
            ))));
        }
        // The integer products replace the float ones in every graph the
        // run executes; nothing trains, so the step is the evaluation.
        let q = |graph: &mut Graph| nnc_runtime::quantize::apply(graph, products, ckpt);
        q(&mut module.forward).map_err(run_failure)?;
        let forward = optimize(&module.forward, opt)?.0;
        let evaluation = match module.train.as_mut() {
            Some(spec) if options.predict.is_none() => {
                q(&mut spec.evaluation).map_err(run_failure)?;
                optimize(&spec.evaluation, opt)?.0
            }
            _ => forward.clone(),
        };
        nnc_runtime::Programs {
            grouping: grouping(opt),
            ..nnc_runtime::Programs::new(forward, evaluation.clone(), evaluation)
        }
    } else if options.predict.is_some() {
        nnc_runtime::Programs {
            // The grouping of the level, as for training and `bench`.
            grouping: grouping(opt),
            ..nnc_runtime::Programs::inference(optimize(&module.forward, opt)?.0)
        }
    } else {
        let spec = need_train(&module, "`nnc run`")?;
        let mut programs = programs(&module, opt)?;
        if options.dump_grads.is_some() {
            let gradients = nnc_passes::gradient_graph(&spec.objective).map_err(internal)?;
            nnc_ir::verify(&gradients).map_err(internal)?;
            programs.gradients = Some(optimize(&gradients, opt)?.0);
        }
        programs
    };
    let base = data_base(path, settings.data_dir.as_deref());
    let run = nnc_runtime::Run::new(&module, programs, base, options, started);
    let mut terminal = Terminal {
        out,
        progress_bar: settings.progress,
        progress: None,
        print_predictions: settings.run.predict_out.is_none(),
    };
    let outcome = run
        .execute(&mut |event| terminal.show(event))
        .map_err(run_failure)?;
    if let (Some(path), RunOutcome::Predicted(p)) = (&settings.run.predict_out, &outcome) {
        (terminal.out)(&format!(
            "wrote {} predictions to {}",
            p.len(),
            path.display()
        ));
    }
    Ok(outcome)
}

/// Changes `module` as the checkpoint at `path` records (`nnc prune`,
/// `nnc factorize`); most checkpoints record nothing. Only the header is
/// read here; a missing or unreadable file is the run's to report.
pub fn restructure_for(module: &mut Module, path: &Path) -> Result<(), Failure> {
    let changes = structure_of(path)?;
    nnc_runtime::compress::restructure(module, path, &changes).map_err(run_failure)
}

/// `module` as the checkpoint at `path` has it for inference: its
/// structural changes, and a quantized checkpoint's integer products in
/// the forward graph (which then cannot train). Returns whether it is
/// quantized.
pub fn as_checkpoint_has_it(module: &mut Module, path: &Path) -> Result<bool, Failure> {
    restructure_for(module, path)?;
    match quantized_products(path)? {
        Some((ckpt, products)) => {
            nnc_runtime::quantize::apply(&mut module.forward, &products, &ckpt)
                .map_err(run_failure)?;
            Ok(true)
        }
        None => Ok(false),
    }
}

/// The structural changes the checkpoint at `path` records (from its
/// header alone; none when it records none or cannot be read).
pub fn structure_of(path: &Path) -> Result<Vec<StructuralChange>, Failure> {
    let key = nnc_runtime::checkpoint::keys::STRUCTURE;
    let Some(text) = nnc_runtime::checkpoint::header_value(path, key) else {
        return Ok(Vec::new());
    };
    nnc_runtime::checkpoint::parse_structure(&text).map_err(|e| {
        run_failure(format!(
            "`{}` is not a valid checkpoint: metadata `{key}`: {e}",
            path.display()
        ))
    })
}

/// The checkpoint at `path` and the products it quantizes, if it is a
/// quantized one; a float checkpoint is not read here (its header says
/// so), only by the run.
pub fn quantized_products(
    path: &Path,
) -> Result<
    Option<(
        nnc_runtime::Checkpoint,
        Vec<nnc_runtime::quantize::QuantizedProduct>,
    )>,
    Failure,
> {
    let key = nnc_runtime::checkpoint::keys::QUANTIZATION;
    if nnc_runtime::checkpoint::header_value(path, key).is_none() {
        return Ok(None);
    }
    let ckpt = nnc_runtime::checkpoint::load(path).map_err(run_failure)?;
    let products = nnc_runtime::quantize::recorded(&ckpt).map_err(run_failure)?;
    Ok(products.map(|p| (ckpt, p)))
}

/// What `nnc quantize` was asked.
#[derive(Debug, Clone)]
pub struct QuantizeOptions {
    pub weights: PathBuf,
    pub output: PathBuf,
    /// Training batches calibration observes.
    pub batches: usize,
    pub method: nnc_runtime::quantize::Method,
    pub backend: Backend,
    pub data_dir: Option<PathBuf>,
    pub model: Option<String>,
    /// `--qat`: write the float checkpoint prepared for
    /// quantization-aware training instead of the int8 one.
    pub qat: bool,
}

/// `nnc quantize`: the int8 model of `options.weights` (the activations'
/// ranges calibrated on the training data, or learned by a
/// quantization-aware training the checkpoint comes from), or with
/// `--qat` the float checkpoint prepared for that training; prints what
/// it did and the sizes.
pub fn quantize(
    path: &Path,
    options: &QuantizeOptions,
    out: &mut dyn FnMut(&str),
) -> Result<(), Failure> {
    use nnc_runtime::quantize::{Ranges, Target};
    let src = read_source(path)?;
    let mut module = compile_source(&src, options.model.as_deref())?;
    // A model trained with fake quantization converts from its products
    // without it: the integer ones take their place.
    let changes = structure_of(&options.weights)?;
    let trained_quantized = changes.contains(&StructuralChange::FakeQuantize);
    if trained_quantized && options.qat {
        return Err(run_failure(format!(
            "checkpoint `{}` is already prepared for quantization-aware training: fine-tune it with `nnc run --weights`, then quantize it without `--qat`",
            options.weights.display()
        )));
    }
    let changes: Vec<StructuralChange> = changes
        .into_iter()
        .filter(|c| *c != StructuralChange::FakeQuantize)
        .collect();
    nnc_runtime::compress::restructure(&mut module, &options.weights, &changes)
        .map_err(run_failure)?;
    let (graph, sites) = nnc_runtime::quantize::calibration_graph(&module.forward);
    let level = OptLevel::O2;
    let programs = nnc_runtime::Programs {
        grouping: grouping(level),
        ..nnc_runtime::Programs::inference(optimize(&graph, level)?.0)
    };
    let base = data_base(path, options.data_dir.as_deref());
    let target = if options.qat {
        Target::QatPrepared
    } else {
        Target::Int8
    };
    let report = nnc_runtime::quantize::quantize(
        &module,
        programs,
        &sites,
        &base,
        &options.weights,
        &options.output,
        options.backend,
        options.batches,
        options.method,
        target,
    )
    .map_err(run_failure)?;
    let ranges = match report.ranges {
        Ranges::Calibrated { samples } => {
            format!(
                "calibrated on {samples} samples ({})",
                options.method.name()
            )
        }
        Ranges::Learned => "ranges learned in quantization-aware training".to_string(),
    };
    if target == Target::QatPrepared {
        for p in &report.products {
            out(&format!(
                "fake-quantized `{}`: activations u8 (scale {:.6}, zero point {}), weights i8 per output channel",
                p.weight, p.scale, p.zero_point
            ));
        }
        out(&format!(
            "{ranges}; wrote {} ({} bytes), a float checkpoint that trains quantized: fine-tune it with `nnc run {} --weights {} --lr LR --save T`, then `nnc quantize {} --weights T -o Q`",
            options.output.display(),
            report.file_bytes,
            path.display(),
            options.output.display(),
            path.display()
        ));
        return Ok(());
    }
    for p in &report.products {
        out(&format!(
            "quantized `{}`: activations u8 (scale {:.6}, zero point {}), weights i8 per output channel ({} scales)",
            p.weight,
            p.scale,
            p.zero_point,
            p.channels.len()
        ));
    }
    out(&format!(
        "{ranges}; weights {} bytes, {:.2}x of {} in f32; wrote {} ({} bytes)",
        report.quantized_param_bytes,
        report.quantized_param_bytes as f64 / report.f32_param_bytes.max(1) as f64,
        report.f32_param_bytes,
        options.output.display(),
        report.file_bytes
    ));
    Ok(())
}

/// Shows a run's events: a line each, and a progress bar per epoch.
struct Terminal<'o> {
    out: &'o mut dyn FnMut(&str),
    /// Whether to draw the bar (stdout is a terminal).
    progress_bar: bool,
    progress: Option<nnc_runtime::Progress>,
    /// A line per prediction (not when they go to a `--predict-out` file).
    print_predictions: bool,
}

impl Terminal<'_> {
    fn show(&mut self, event: Event<'_>) {
        let line = match event {
            Event::WeightsLoaded {
                model,
                path,
                epochs_done,
            } => format!(
                "loaded the params of {model} from {} ({epochs_done} epochs trained)",
                path.display()
            ),
            Event::Resumed {
                model,
                path,
                epochs_done,
                epochs,
            } => format!(
                "resuming {model} from {} after epoch {epochs_done}/{epochs}",
                path.display()
            ),
            Event::EvaluationStarted {
                model,
                data,
                samples,
                backend,
            } => format!(
                "evaluating {model} on {data} ({samples} samples), backend {}",
                backend.name()
            ),
            Event::TrainingStarted {
                model,
                data,
                samples,
                optimizer,
                backend,
                batch,
                first_epoch,
                epochs,
            } => {
                self.progress = Some(nnc_runtime::Progress::new(
                    self.progress_bar,
                    batch,
                    first_epoch,
                    epochs,
                ));
                format!(
                    "training {model} on {data} ({samples} samples) with {optimizer}, backend {}",
                    backend.name()
                )
            }
            Event::NothingLeftToTrain { epochs } => {
                format!("all {epochs} epochs are done; nothing left to train")
            }
            Event::BatchDone { done, total } => {
                if let Some(p) = &mut self.progress {
                    p.batch(done, total);
                }
                return;
            }
            Event::EpochDone(report) => {
                // The bar gives way to the epoch's line.
                if let Some(p) = &mut self.progress {
                    p.finish_epoch();
                }
                format_epoch(report)
            }
            Event::TrainingStopped => {
                if let Some(p) = &mut self.progress {
                    p.finish_epoch();
                }
                return;
            }
            Event::EarlyStopped(outcome) => format_early_stop(outcome),
            Event::Measured { split, metrics } => {
                let mut s = format!("{}: {}", split.name(), format_metrics(metrics));
                if let Some(c) = &metrics.classes {
                    s.push('\n');
                    s.push_str(&format_classes(c));
                }
                s
            }
            Event::FoldStarted {
                fold,
                k,
                train,
                validation,
            } => format!("fold {fold}/{k}: {train} training samples, {validation} validation"),
            Event::FoldDone {
                fold,
                k,
                validation,
                test,
            } => {
                let mut s = format!("fold {fold}/{k} validation: {}", format_metrics(validation));
                if let Some(t) = test {
                    s.push_str(&format!("\nfold {fold}/{k} test: {}", format_metrics(t)));
                }
                s
            }
            Event::CrossValidated(cv) => format_cross_validation(cv),
            Event::Predicted { .. } if !self.print_predictions => return,
            Event::Predicted { index, prediction } => format_prediction(index, prediction),
        };
        (self.out)(&line);
    }
}

/// `early stopping after epoch 9: best val_loss 0.1234 at epoch 4, its
/// weights restored`.
pub fn format_early_stop(o: &nnc_runtime::train::EarlyStopOutcome) -> String {
    let when = match o.stopped_after {
        Some(epoch) => format!("early stopping after epoch {epoch}"),
        None => "early stopping did not stop training".to_string(),
    };
    let kept = if o.restored {
        "its weights restored".to_string()
    } else {
        format!("the weights of epoch {} kept", o.kept_epoch)
    };
    format!(
        "{when}: best {} {:.4} at epoch {}, {kept}",
        o.monitor, o.best, o.best_epoch
    )
}

/// `3: [0.010000001, 0.99]  class 1`; several outputs are named. Each
/// value is the shortest decimal that reads back to the same number of its
/// dtype (`f32` for most models).
pub fn format_prediction(index: usize, p: &Prediction) -> String {
    let list = |v: &[f64], dtype| {
        let items: Vec<String> = v
            .iter()
            .map(|&x| nnc_runtime::predict::format_value(x, dtype))
            .collect();
        format!("[{}]", items.join(", "))
    };
    let dtype = |k: usize| p.dtypes.get(k).copied().unwrap_or(nnc_ir::DType::F32);
    let mut s = format!("{index}:");
    if let [(_, values)] = p.outputs.as_slice() {
        s.push_str(&format!(" {}", list(values, dtype(0))));
    } else {
        for (k, (name, values)) in p.outputs.iter().enumerate() {
            s.push_str(&format!(" {name} {}", list(values, dtype(k))));
        }
    }
    if let Some(c) = p.class {
        s.push_str(&format!("  class {c}"));
    }
    if let Some(name) = &p.class_name {
        s.push_str(&format!(" ({name})"));
    }
    s
}

fn format_metrics(m: &nnc_runtime::Metrics) -> String {
    let mut s = format!("loss {:.4}", m.loss);
    if let Some(a) = m.accuracy {
        s.push_str(&format!("  accuracy {:.2}%", a * 100.0));
    }
    s.push_str(&format_set_values(m, ""));
    s.push_str(&format!("  ({} samples)", m.samples));
    s
}

/// `  f1 0.9731  top_3_accuracy 98.20%`, each name after `prefix`
/// (`val_`); accuracies in percent, as the plain accuracy is.
fn format_set_values(m: &nnc_runtime::Metrics, prefix: &str) -> String {
    m.values
        .iter()
        .map(|(name, v)| match name.ends_with("accuracy") {
            true => format!("  {prefix}{name} {:.2}%", v * 100.0),
            false => format!("  {prefix}{name} {v:.4}"),
        })
        .collect()
}

/// scikit-learn's `classification_report` (precision, recall, F1 and
/// support per class, then the macro and weighted averages) and the
/// confusion matrix, rows the true class.
pub fn format_classes(c: &nnc_runtime::metrics::ClassReport) -> String {
    let classes = c.support.len();
    let width = (classes.saturating_sub(1))
        .to_string()
        .len()
        .max("weighted".len());
    let mut s = format!(
        "{:>width$}  precision  recall  f1-score  support\n",
        "class"
    );
    for k in 0..classes {
        s.push_str(&format!(
            "{k:>width$}  {:>9.4}  {:>6.4}  {:>8.4}  {:>7}\n",
            c.precision[k], c.recall[k], c.f1[k], c.support[k]
        ));
    }
    let total: u64 = c.support.iter().sum();
    let mean = |v: &[f64]| v.iter().sum::<f64>() / v.len().max(1) as f64;
    let weighted = |v: &[f64]| {
        let sum: f64 = v.iter().zip(&c.support).map(|(x, &n)| x * n as f64).sum();
        if total == 0 {
            0.0
        } else {
            sum / total as f64
        }
    };
    for (name, avg) in [
        ("macro", &mean as &dyn Fn(&[f64]) -> f64),
        ("weighted", &weighted),
    ] {
        s.push_str(&format!(
            "{name:>width$}  {:>9.4}  {:>6.4}  {:>8.4}  {total:>7}\n",
            avg(&c.precision),
            avg(&c.recall),
            avg(&c.f1)
        ));
    }
    let cell = c
        .confusion
        .iter()
        .flatten()
        .max()
        .map_or(1, |m| m.to_string().len())
        .max(classes.saturating_sub(1).to_string().len());
    s.push_str(&format!(
        "confusion matrix (rows: true class, columns: predicted)\n{:>width$}",
        ""
    ));
    for k in 0..classes {
        s.push_str(&format!(" {k:>cell$}"));
    }
    for (t, row) in c.confusion.iter().enumerate() {
        s.push_str(&format!("\n{t:>width$}"));
        for v in row {
            s.push_str(&format!(" {v:>cell$}"));
        }
    }
    s
}

/// Every metric's mean ± sample standard deviation over the folds, and
/// the out-of-fold per-class table.
fn format_cross_validation(cv: &nnc_runtime::CrossValidation) -> String {
    let mut s = format!(
        "{}-fold cross-validation (mean ± sample std over the folds):",
        cv.k
    );
    let width = cv.summary.iter().map(|m| m.name.len()).max().unwrap_or(0);
    for m in &cv.summary {
        let percent = m.name.ends_with("accuracy");
        let (scale, unit) = if percent { (100.0, "%") } else { (1.0, "") };
        let precision = if percent { 2 } else { 4 };
        s.push_str(&format!(
            "\n  {:<width$}  {:.precision$}{unit} ± {:.precision$}{unit}",
            m.name,
            m.mean * scale,
            m.std * scale
        ));
    }
    if let Some(c) = &cv.classes {
        s.push_str("\nvalidation samples of every fold (out-of-fold predictions):\n");
        s.push_str(&format_classes(c));
    }
    s
}

pub fn format_epoch(r: &nnc_runtime::EpochReport) -> String {
    let width = r.epochs.to_string().len();
    let mut s = format!("epoch {:>width$}/{}", r.epoch, r.epochs);
    if !r.is_complete() {
        s.push_str(&format!(
            " (stopped after {} of {} steps)",
            r.steps, r.batches
        ));
    }
    s.push_str(&format!("  loss {:.4}", r.train.loss));
    if let Some(a) = r.train.accuracy {
        s.push_str(&format!("  accuracy {:.2}%", a * 100.0));
    }
    s.push_str(&format_set_values(&r.train, ""));
    if let Some(v) = &r.validation {
        s.push_str(&format!("  val_loss {:.4}", v.loss));
        if let Some(a) = v.accuracy {
            s.push_str(&format!("  val_accuracy {:.2}%", a * 100.0));
        }
        s.push_str(&format_set_values(v, "val_"));
    }
    let rate = r.train.samples as f64 / r.seconds.max(1e-9);
    s.push_str(&format!("  {:.1}s, {rate:.0} samples/s", r.seconds));
    s
}

#[cfg(test)]
mod tests {
    use super::*;
    use nnc_runtime::metrics::ClassReport;

    #[test]
    fn early_stopping_says_when_what_was_best_and_which_weights_remain() {
        let mut o = nnc_runtime::train::EarlyStopOutcome {
            monitor: "val_loss".into(),
            stopped_after: Some(7),
            best_epoch: 4,
            best: 0.31234,
            restored: true,
            kept_epoch: 4,
        };
        assert_eq!(
            format_early_stop(&o),
            "early stopping after epoch 7: best val_loss 0.3123 at epoch 4, its weights restored"
        );
        (o.stopped_after, o.restored, o.kept_epoch) = (None, false, 10);
        assert_eq!(
            format_early_stop(&o),
            "early stopping did not stop training: best val_loss 0.3123 at epoch 4, \
             the weights of epoch 10 kept"
        );
    }

    #[test]
    fn set_accuracies_print_in_percent_like_the_accuracy() {
        let m = nnc_runtime::Metrics {
            loss: 0.5,
            accuracy: Some(0.9),
            samples: 10,
            values: vec![("f1".into(), 0.87654), ("top_3_accuracy".into(), 0.9876)],
            classes: None,
        };
        assert_eq!(
            format_metrics(&m),
            "loss 0.5000  accuracy 90.00%  f1 0.8765  top_3_accuracy 98.76%  (10 samples)"
        );
    }

    #[test]
    fn the_class_table_lists_every_class_the_averages_and_the_matrix() {
        // Class 2 is absent from the set.
        let c = ClassReport::from_confusion(3, &[3, 1, 0, 0, 2, 0, 0, 0, 0]);
        let table = format_classes(&c);
        let lines: Vec<&str> = table.lines().collect();
        assert_eq!(lines[0], "   class  precision  recall  f1-score  support");
        assert_eq!(lines[1], "       0     1.0000  0.7500    0.8571        4");
        assert_eq!(lines[2], "       1     0.6667  1.0000    0.8000        2");
        assert_eq!(lines[3], "       2     0.0000  0.0000    0.0000        0");
        assert_eq!(lines[4], "   macro     0.5556  0.5833    0.5524        6");
        assert!(
            lines[5].starts_with("weighted     0.8889  0.8333"),
            "{}",
            lines[5]
        );
        assert_eq!(
            &lines[7..],
            [
                "         0 1 2",
                "       0 3 1 0",
                "       1 0 2 0",
                "       2 0 0 0"
            ]
        );
    }
}
