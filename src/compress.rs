//! `nnc prune`: the command around the runtime's structural compression
//! (`nnc_runtime::compress`): reads the source and the checkpoint, prints
//! what was removed and what it saves.

use crate::diagnostic;
use crate::driver::{compile_source, read_source, restructure_for, Failure};
use nnc_ir::summary::thousands;
use nnc_runtime::compress::{PruneOptions, PruneReport};
use std::path::{Path, PathBuf};

fn failure(e: impl std::fmt::Display) -> Failure {
    Failure(diagnostic::render_plain(&e.to_string()))
}

/// `nnc prune`: removes the least salient output channels of the model's
/// dense layers and convolutions, with everything tied to them, and
/// writes the smaller model's checkpoint.
pub fn prune(
    path: &Path,
    weights: &Path,
    output: &PathBuf,
    options: &PruneOptions,
    model: Option<&str>,
    out: &mut dyn FnMut(&str),
) -> Result<PruneReport, Failure> {
    let src = read_source(path)?;
    let mut module = compile_source(&src, model)?;
    restructure_for(&mut module, weights)?;
    let ckpt = nnc_runtime::checkpoint::load(weights).map_err(failure)?;
    if ckpt.model != module.name {
        return Err(failure(format!(
            "checkpoint `{}` is for model `{}`, not `{}`",
            weights.display(),
            ckpt.model,
            module.name
        )));
    }
    let report =
        nnc_runtime::compress::prune(&mut module, &ckpt, options, output).map_err(failure)?;
    for layer in &report.pruned {
        let tied = if layer.tied.is_empty() {
            String::new()
        } else {
            format!(" (with {})", layer.tied.join(", "))
        };
        out(&format!(
            "pruned `{}`: {} -> {} channels by {} saliency{tied}",
            layer.weight,
            layer.channels,
            layer.kept,
            options.saliency.name()
        ));
    }
    for (weight, why) in &report.skipped {
        out(&format!("kept `{weight}` whole: {why}"));
    }
    let ratio = |a: usize, b: usize| a as f64 / b.max(1) as f64;
    out(&format!(
        "params {} -> {} ({:.2}x); multiply-adds per sample {} -> {} ({:.2}x); wrote {} ({} bytes)",
        thousands(report.params_before),
        thousands(report.params_after),
        ratio(report.params_after, report.params_before),
        thousands(report.macs_before),
        thousands(report.macs_after),
        ratio(report.macs_after, report.macs_before),
        output.display(),
        thousands(report.file_bytes as usize)
    ));
    out(&format!(
        "fine-tune it with `nnc run {} --weights {} --save TUNED`; every run with it rebuilds the smaller model from the source",
        path.display(),
        output.display()
    ));
    Ok(report)
}
