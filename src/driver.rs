//! The pipeline behind each subcommand, returning rendered failures so the
//! binary only prints and exits, and tests can call the same code.

use crate::diagnostic;
use nnc_dsl::SourceFile;
use nnc_ir::{Graph, Module};
use std::path::{Path, PathBuf};

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
    let module = nnc_dsl::compile(src, model).map_err(|e| Failure(diagnostic::render(src, &e)))?;
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
}

fn internal(e: impl std::fmt::Display) -> Failure {
    Failure(diagnostic::render_plain(&format!(
        "internal compiler error: {e}"
    )))
}

fn need_train(module: &Module, what: &str) -> Result<(), Failure> {
    if module.train.is_none() {
        return Err(Failure(diagnostic::render_plain(&format!(
            "`--emit {what}` needs a `train` block: the file defines model `{}` but does not say how to train it",
            module.name
        ))));
    }
    Ok(())
}

/// The text `nnc compile --emit <stage>` prints.
pub fn emit(src: &SourceFile, stage: Emit, model: Option<&str>) -> Result<String, Failure> {
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
            need_train(&module, "grad")?;
            let t = module.train.as_ref().ok_or_else(|| internal("no train"))?;
            let g = nnc_passes::differentiate(&t.objective, nnc_ir::LOSS).map_err(internal)?;
            nnc_ir::verify(&g).map_err(internal)?;
            Ok(g.to_string())
        }
        Emit::TrainStep => Ok(train_step(&module)?.to_string()),
    }
}

pub fn train_step(module: &Module) -> Result<Graph, Failure> {
    need_train(module, "train-step")?;
    let t = module.train.as_ref().ok_or_else(|| internal("no train"))?;
    let g = nnc_passes::build_train_step(&t.objective, &t.optimizer).map_err(internal)?;
    nnc_ir::verify(&g).map_err(internal)?;
    Ok(g)
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
}

/// `nnc run`: trains with the interpreter, printing a line per epoch.
pub fn run(
    path: &Path,
    settings: &RunSettings,
    out: &mut dyn FnMut(&str),
) -> Result<nnc_runtime::TrainReport, Failure> {
    let src = read_source(path)?;
    let module = compile_source(&src, settings.model.as_deref())?;
    let step = train_step(&module)?;
    let spec = module.train.as_ref().ok_or_else(|| internal("no train"))?;
    let data_spec = module.data.as_ref().ok_or_else(|| internal("no data"))?;
    let base = data_base(path, settings.data_dir.as_deref());
    let runtime_err =
        |e: nnc_runtime::RuntimeError| Failure(diagnostic::render_plain(&e.to_string()));
    let data = nnc_runtime::loader::load(data_spec, &base).map_err(runtime_err)?;
    let programs = nnc_runtime::Programs {
        forward: module.forward.clone(),
        objective: spec.objective.clone(),
        step: step.clone(),
    };
    let mut exec = nnc_runtime::Interpreter::new(programs, settings.options.seed(spec))
        .map_err(runtime_err)?;
    out(&format!(
        "training {} on {} ({} samples) with {}, backend interp",
        module.name,
        data_spec.name,
        data.train.len(),
        spec.optimizer
    ));
    let report = nnc_runtime::train(
        spec,
        &step,
        &data,
        &mut exec,
        &settings.options,
        &mut |_, _| {},
        &mut |r| out(&format_epoch(r)),
    )
    .map_err(runtime_err)?;
    if let Some(t) = &report.test {
        out(&format!("test: {}", format_metrics(t)));
    }
    Ok(report)
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
