//! `nnc prune` and `nnc factorize`: the commands around the runtime's
//! structural compression (`nnc_runtime::compress`): read the source and
//! the checkpoint, print what was removed or factored and what it saves.

use crate::diagnostic;
use crate::driver::{compile_source, read_source, restructure_for, Failure};
use nnc_ir::summary::thousands;
use nnc_runtime::compress::{
    FactorizeOptions, FactorizeReport, PruneOptions, PruneReport, Savings,
};
use std::path::Path;

fn failure(e: impl std::fmt::Display) -> Failure {
    Failure(diagnostic::render_plain(&e.to_string()))
}

/// `nnc prune`: removes the least salient output channels of the model's
/// dense layers and convolutions, with everything tied to them, and
/// writes the smaller model's checkpoint.
pub fn prune(
    path: &Path,
    weights: &Path,
    output: &Path,
    options: &PruneOptions,
    model: Option<&str>,
    out: &mut dyn FnMut(&str),
) -> Result<PruneReport, Failure> {
    let (mut module, ckpt) = load(path, weights, model)?;
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
    show(&report.savings, path, output, out);
    Ok(report)
}

/// `nnc factorize`: replaces the model's dense and convolution weights
/// by truncated-SVD factors where that saves multiply-adds, and writes
/// the factorized model's checkpoint.
pub fn factorize(
    path: &Path,
    weights: &Path,
    output: &Path,
    options: &FactorizeOptions,
    model: Option<&str>,
    out: &mut dyn FnMut(&str),
) -> Result<FactorizeReport, Failure> {
    let (mut module, ckpt) = load(path, weights, model)?;
    let report =
        nnc_runtime::compress::factorize(&mut module, &ckpt, options, output).map_err(failure)?;
    for layer in &report.factorized {
        out(&format!(
            "factorized `{}`: {}x{} -> rank {} (keeps {:.1}% of the energy), params `{}.u` and `{}.v`",
            layer.weight,
            layer.rows,
            layer.cols,
            layer.rank,
            layer.energy * 100.0,
            layer.weight,
            layer.weight
        ));
    }
    for (weight, why) in &report.skipped {
        out(&format!("kept `{weight}` whole: {why}"));
    }
    show(&report.savings, path, output, out);
    Ok(report)
}

/// The model in `path` as checkpoint `weights` has it (with the changes
/// it already records), and the checkpoint, which must be of that model.
fn load(
    path: &Path,
    weights: &Path,
    model: Option<&str>,
) -> Result<(nnc_ir::Module, nnc_runtime::Checkpoint), Failure> {
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
    Ok((module, ckpt))
}

/// Before and after, as both commands print them.
fn show(savings: &Savings, path: &Path, output: &Path, out: &mut dyn FnMut(&str)) {
    let ratio = |(a, b): (usize, usize)| b as f64 / a.max(1) as f64;
    out(&format!(
        "params {} -> {} ({:.2}x); multiply-adds per sample {} -> {} ({:.2}x); wrote {} ({} bytes)",
        thousands(savings.params.0),
        thousands(savings.params.1),
        ratio(savings.params),
        thousands(savings.macs.0),
        thousands(savings.macs.1),
        ratio(savings.macs),
        output.display(),
        thousands(savings.file_bytes as usize)
    ));
    out(&format!(
        "fine-tune it with `nnc run {} --weights {} --save TUNED`; every run with it rebuilds the changed model from the source",
        path.display(),
        output.display()
    ));
}
