//! Structural compression of a trained model (`nnc prune`): choose what
//! to remove from the checkpoint's weights, change the module's graphs,
//! and write the smaller checkpoint, whose `structure` metadata lets a
//! later run (fine-tuning, evaluation, prediction, quantization) rebuild
//! the same graphs from the unchanged source.
//!
//! The graph analysis and the arithmetic on tensors are
//! `nnc_passes::compress`'s; this module decides with them and moves
//! tensors between checkpoints.

use crate::checkpoint::{self, Checkpoint};
use crate::RuntimeError;
use nnc_ir::{Module, StructuralChange, Tensor};
use nnc_passes::compress::{self, channels};
use std::collections::BTreeMap;
use std::path::Path;

/// How the channels to keep are chosen.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Saliency {
    /// The L1 norm of each output channel's weights (a filter's norm).
    L1,
    /// `|γ|` of the batch norm that follows (Network Slimming).
    BatchNorm,
    /// Every param the channel ties together (its filter, its bias, the
    /// next layer's input rows...), each one's L1 norms divided by their
    /// mean so that no tensor dominates by scale, summed (Torch-Pruning's
    /// group importance).
    Group,
}

impl Saliency {
    pub fn name(self) -> &'static str {
        match self {
            Saliency::L1 => "l1",
            Saliency::BatchNorm => "bn",
            Saliency::Group => "group",
        }
    }
}

/// What `nnc prune` is asked.
#[derive(Debug, Clone, PartialEq)]
pub struct PruneOptions {
    /// The fraction of each selected layer's channels removed, in `[0, 1)`.
    pub ratio: f64,
    /// Which layers: instance names (`conv2d_1`), or a prefix and `*`
    /// (`conv2d*`: every convolution); empty selects every layer that can
    /// be pruned.
    pub layers: Vec<String>,
    pub saliency: Saliency,
    /// Rank the channels of all selected layers together (each layer's
    /// saliencies divided by their mean) and remove the `ratio` least
    /// salient of them all, rather than `ratio` of each layer's.
    pub global: bool,
}

/// One layer whose channels were pruned.
#[derive(Debug, Clone, PartialEq)]
pub struct PrunedLayer {
    /// The product weight whose output channels were removed.
    pub weight: String,
    pub channels: usize,
    pub kept: usize,
    /// The other params and states sliced with it.
    pub tied: Vec<String>,
}

/// What `nnc prune` did.
#[derive(Debug, Clone, PartialEq)]
pub struct PruneReport {
    pub pruned: Vec<PrunedLayer>,
    /// Layers that were not selected or cannot be pruned, with why.
    pub skipped: Vec<(String, String)>,
    /// Param elements of the model before and after.
    pub params_before: usize,
    pub params_after: usize,
    /// Multiply-adds of the model's products per sample, before and after.
    pub macs_before: usize,
    pub macs_after: usize,
    pub file_bytes: u64,
}

/// Applies the structural changes a checkpoint records to `module`.
pub fn restructure(
    module: &mut Module,
    ckpt_path: &Path,
    changes: &[StructuralChange],
) -> Result<(), RuntimeError> {
    compress::restructure(module, changes).map_err(|e| {
        RuntimeError::Setup(format!(
            "checkpoint `{}` changes the structure of `{}` in a way its source does not allow: {}",
            ckpt_path.display(),
            module.name,
            e.message
        ))
    })
}

/// The instance a param belongs to: `conv2d_1` of `conv2d_1.w`.
fn instance(param: &str) -> &str {
    param.rsplit_once('.').map_or(param, |(layer, _)| layer)
}

/// Prunes the output channels of the selected layers of `module` (whose
/// weights are `ckpt`'s), changes `module` to the smaller model, and
/// writes its checkpoint to `output`: params and model state only (a
/// fine-tuning run starts its optimizer afresh).
pub fn prune(
    module: &mut Module,
    ckpt: &Checkpoint,
    options: &PruneOptions,
    output: &Path,
) -> Result<PruneReport, RuntimeError> {
    let setup = RuntimeError::Setup;
    if !(0.0..1.0).contains(&options.ratio) {
        return Err(setup(format!(
            "the pruning ratio must be in [0, 1) (the fraction of channels removed), not {}",
            options.ratio
        )));
    }
    if ckpt.quantization.is_some() {
        return Err(setup(format!(
            "checkpoint `{}` is quantized: prune the float checkpoint, then quantize the pruned one",
            ckpt.path.display()
        )));
    }
    let mut tensors: BTreeMap<String, Tensor> = ckpt
        .params
        .iter()
        .filter_map(|name| Some((name.clone(), ckpt.tensor(name)?.clone())))
        .collect();
    // The graph that holds every param and state the groups tie together.
    let mut graph = match &module.train {
        Some(spec) => spec.objective.clone(),
        None => module.forward.clone(),
    };
    // `conv2d_1` names one layer; `conv2d*` every instance so named.
    let matches = |pattern: &str, weight: &str| {
        let inst = instance(weight);
        match pattern.strip_suffix('*') {
            Some(prefix) => inst.starts_with(prefix),
            None => inst == pattern,
        }
    };
    let selected = |weight: &str| {
        options.layers.is_empty() || options.layers.iter().any(|l| matches(l, weight))
    };
    let candidates = channels::candidates(&graph);
    for wanted in &options.layers {
        if !candidates.iter().any(|(w, _)| matches(wanted, w)) {
            let names: Vec<&str> = candidates.iter().map(|(w, _)| instance(w)).collect();
            return Err(setup(format!(
                "`{wanted}` is not a dense layer or convolution of `{}` (its layers with weights: {})",
                module.name,
                names.join(", ")
            )));
        }
    }
    let params_before = param_elements(&tensors, &ckpt.params, module);
    let macs_before = compress::product_macs(&module.forward);
    let mut changes = Vec::new();
    let mut pruned = Vec::new();
    let mut skipped = Vec::new();
    let global_removed = if options.global {
        let groups: Vec<channels::ChannelGroup> = candidates
            .iter()
            .filter(|(w, _)| selected(w))
            .filter_map(|(_, g)| g.as_ref().ok().cloned())
            .collect();
        removed_globally(&groups, &tensors, options)?
    } else {
        BTreeMap::new()
    };
    for (weight, group) in candidates {
        if !selected(&weight) {
            skipped.push((weight, "not selected".to_string()));
            continue;
        }
        // Groups pruned before this one changed the graph: follow the
        // channels in the graph as it is now.
        let group = match group.and_then(|_| channels::group(&graph, &weight)) {
            Ok(g) => g,
            Err(e) => {
                if !options.layers.is_empty() {
                    return Err(setup(format!("cannot prune `{weight}`: {}", e.message)));
                }
                skipped.push((weight, e.message));
                continue;
            }
        };
        let removed = if options.global {
            global_removed.get(&weight).copied().unwrap_or(0)
        } else {
            (group.channels as f64 * options.ratio).floor() as usize
        };
        let keep = group.channels - removed;
        if keep == 0 {
            return Err(setup(format!(
                "a ratio of {} would remove every one of the {} channels of `{weight}`",
                options.ratio, group.channels
            )));
        }
        if removed == 0 {
            skipped.push((
                weight,
                format!(
                    "a ratio of {} removes none of its {} channels",
                    options.ratio, group.channels
                ),
            ));
            continue;
        }
        let saliency = saliency(&group, &tensors, options.saliency)?;
        let kept = channels::most_salient(&saliency, keep);
        for (name, lane) in &group.leaves {
            let t = tensors.get(name).ok_or_else(|| {
                setup(format!(
                    "checkpoint `{}` has no tensor `{name}`",
                    ckpt.path.display()
                ))
            })?;
            let sliced = channels::slice(t, lane, group.channels, &kept)
                .map_err(|e| setup(format!("`{name}`: {}", e.message)))?;
            tensors.insert(name.clone(), sliced);
        }
        channels::shrink(&mut graph, &weight, keep)
            .map_err(|e| setup(format!("cannot prune `{weight}`: {}", e.message)))?;
        pruned.push(PrunedLayer {
            weight: weight.clone(),
            channels: group.channels,
            kept: keep,
            tied: group
                .leaves
                .iter()
                .map(|(n, _)| n.clone())
                .filter(|n| *n != weight)
                .collect(),
        });
        changes.push(StructuralChange::PruneChannels {
            param: weight,
            kept,
        });
    }
    if pruned.is_empty() {
        return Err(setup(format!(
            "nothing of `{}` was pruned: {}",
            module.name,
            skipped
                .iter()
                .map(|(w, why)| format!("`{w}`: {why}"))
                .collect::<Vec<_>>()
                .join("; ")
        )));
    }
    restructure(module, output, &changes)?;
    let tensors: Vec<(String, Tensor)> = tensors.into_iter().collect();
    let meta = checkpoint::Meta {
        epochs_done: ckpt.epochs_done,
        params: tensors.iter().map(|(n, _)| n.clone()).collect(),
        loop_state: None,
        quantization: None,
        structure: module.changes.clone(),
    };
    checkpoint::save_with_data(
        output,
        &module.name,
        &tensors,
        &meta,
        &ckpt.vocabularies,
        &ckpt.fitted,
    )?;
    let names: Vec<String> = tensors.iter().map(|(n, _)| n.clone()).collect();
    let tensors: BTreeMap<String, Tensor> = tensors.into_iter().collect();
    Ok(PruneReport {
        pruned,
        skipped,
        params_before,
        params_after: param_elements(&tensors, &names, module),
        macs_before,
        macs_after: compress::product_macs(&module.forward),
        file_bytes: std::fs::metadata(output).map(|m| m.len()).unwrap_or(0),
    })
}

/// How many channels global ranking removes from each group: the
/// `ratio` least salient of all their channels, each group's saliencies
/// divided by their mean, every group keeping at least one.
fn removed_globally(
    groups: &[channels::ChannelGroup],
    tensors: &BTreeMap<String, Tensor>,
    options: &PruneOptions,
) -> Result<BTreeMap<String, usize>, RuntimeError> {
    let mut all = Vec::new();
    for (i, group) in groups.iter().enumerate() {
        let s = saliency(group, tensors, options.saliency)?;
        let mean = s.iter().sum::<f64>() / s.len().max(1) as f64;
        let scale = if mean > 0.0 { 1.0 / mean } else { 1.0 };
        all.extend(s.iter().enumerate().map(|(c, v)| (v * scale, i, c)));
    }
    all.sort_by(|a, b| a.0.total_cmp(&b.0).then(a.1.cmp(&b.1)).then(a.2.cmp(&b.2)));
    let total: usize = groups.iter().map(|g| g.channels).sum();
    let mut left = (total as f64 * options.ratio).floor() as usize;
    let mut removed = vec![0usize; groups.len()];
    for &(_, i, _) in &all {
        if left == 0 {
            break;
        }
        if removed[i] + 1 < groups[i].channels {
            removed[i] += 1;
            left -= 1;
        }
    }
    Ok(groups
        .iter()
        .zip(removed)
        .map(|(g, r)| (g.seed.clone(), r))
        .collect())
}

/// Elements of the trainable params among `names` (not model state).
fn param_elements(tensors: &BTreeMap<String, Tensor>, names: &[String], module: &Module) -> usize {
    let params: Vec<&str> = module
        .forward
        .params()
        .into_iter()
        .map(|(_, n)| n)
        .collect();
    names
        .iter()
        .filter(|n| params.contains(&n.as_str()))
        .filter_map(|n| tensors.get(n))
        .map(Tensor::numel)
        .sum()
}

/// Each channel's saliency in `group` by `how`.
fn saliency(
    group: &channels::ChannelGroup,
    tensors: &BTreeMap<String, Tensor>,
    how: Saliency,
) -> Result<Vec<f64>, RuntimeError> {
    let norms = |name: &str, lane: &channels::Lane| {
        let t = tensors
            .get(name)
            .ok_or_else(|| RuntimeError::Setup(format!("the checkpoint has no tensor `{name}`")))?;
        channels::l1_by_channel(t, lane, group.channels)
            .map_err(|e| RuntimeError::Setup(format!("`{name}`: {}", e.message)))
    };
    let find = |wanted: &dyn Fn(&str) -> bool| group.leaves.iter().find(|(n, _)| wanted(n));
    match how {
        Saliency::L1 => match find(&|n| n == group.seed) {
            Some((name, lane)) => norms(name, lane),
            None => Err(RuntimeError::Setup(format!(
                "`{}` is not among its own channels' params",
                group.seed
            ))),
        },
        Saliency::BatchNorm => match find(&|n| n.ends_with(".gamma")) {
            Some((name, lane)) => norms(name, lane),
            None => Err(RuntimeError::Setup(format!(
                "`{}` is not followed by a batch norm, whose `gamma` the `bn` saliency reads",
                group.seed
            ))),
        },
        Saliency::Group => {
            let mut total = vec![0.0; group.channels];
            for (name, lane) in &group.leaves {
                let norms = norms(name, lane)?;
                let mean = norms.iter().sum::<f64>() / norms.len() as f64;
                if mean > 0.0 {
                    total
                        .iter_mut()
                        .zip(&norms)
                        .for_each(|(s, n)| *s += n / mean);
                }
            }
            Ok(total)
        }
    }
}
