//! Structural compression of a trained model (`nnc prune`, `nnc
//! factorize`): choose what to remove or factor from the checkpoint's
//! weights, change the module's graphs,
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
use nnc_passes::compress::{self, channels, lowrank, svd};
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

/// What a structural change saved.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Savings {
    /// Param elements of the model before and after.
    pub params: (usize, usize),
    /// Multiply-adds of the model's products per sample, before and after.
    pub macs: (usize, usize),
    /// The size of the checkpoint written.
    pub file_bytes: u64,
}

/// What `nnc prune` did.
#[derive(Debug, Clone, PartialEq)]
pub struct PruneReport {
    pub pruned: Vec<PrunedLayer>,
    /// Layers that were not selected or cannot be pruned, with why.
    pub skipped: Vec<(String, String)>,
    pub savings: Savings,
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

/// Whether `--layers` selects `weight`: `conv2d_1` names one layer,
/// `conv2d*` every instance so named, nothing every layer.
fn is_selected(layers: &[String], weight: &str) -> bool {
    let inst = instance(weight);
    layers.is_empty()
        || layers
            .iter()
            .any(|pattern| match pattern.strip_suffix('*') {
                Some(prefix) => inst.starts_with(prefix),
                None => inst == pattern,
            })
}

/// Refuses a `--layers` entry that selects none of `weights`.
fn check_layers(layers: &[String], weights: &[&str], module: &Module) -> Result<(), RuntimeError> {
    for wanted in layers {
        if !weights
            .iter()
            .any(|w| is_selected(std::slice::from_ref(wanted), w))
        {
            let names: Vec<&str> = weights.iter().map(|w| instance(w)).collect();
            return Err(RuntimeError::Setup(format!(
                "`{wanted}` is not a dense layer or convolution of `{}` that this can change (those are: {})",
                module.name,
                names.join(", ")
            )));
        }
    }
    Ok(())
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
    let mut tensors = float_weights(ckpt, "prune")?;
    // The graph that holds every param and state the groups tie together.
    let mut graph = match &module.train {
        Some(spec) => spec.objective.clone(),
        None => module.forward.clone(),
    };
    let candidates = channels::candidates(&graph);
    let weights: Vec<&str> = candidates.iter().map(|(w, _)| w.as_str()).collect();
    check_layers(&options.layers, &weights, module)?;
    let selected = |weight: &str| is_selected(&options.layers, weight);
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
        let saliency = match saliency(&group, &tensors, options.saliency) {
            Ok(s) => s,
            // Without `--layers`, a layer the saliency cannot rank (no
            // batch norm for `bn`) stays whole.
            Err(RuntimeError::Setup(why)) if options.layers.is_empty() => {
                skipped.push((weight, why));
                continue;
            }
            Err(e) => return Err(e),
        };
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
    let savings = finish(module, ckpt, &tensors, output, &changes, &skipped, "pruned")?;
    Ok(PruneReport {
        pruned,
        skipped,
        savings,
    })
}

/// Applies `changes` to `module` and writes its checkpoint of `tensors`;
/// no change at all is an error that says why each layer was `skipped`.
fn finish(
    module: &mut Module,
    ckpt: &Checkpoint,
    tensors: &BTreeMap<String, Tensor>,
    output: &Path,
    changes: &[StructuralChange],
    skipped: &[(String, String)],
    what: &str,
) -> Result<Savings, RuntimeError> {
    if skipped.is_empty() && changes.is_empty() {
        return Err(RuntimeError::Setup(format!(
            "nothing of `{}` was {what}: it has no dense layer or convolution whose weight only its product reads (a weight read through the mask of `prune = magnitude(...)` is not one)",
            module.name
        )));
    }
    if changes.is_empty() {
        return Err(RuntimeError::Setup(format!(
            "nothing of `{}` was {what}: {}",
            module.name,
            skipped
                .iter()
                .map(|(w, why)| format!("`{w}`: {why}"))
                .collect::<Vec<_>>()
                .join("; ")
        )));
    }
    let params_before = param_elements(tensors_of(ckpt), module);
    let macs_before = compress::product_macs(&module.forward);
    restructure(module, output, changes)?;
    let file_bytes = save(module, ckpt, tensors, output)?;
    Ok(Savings {
        params: (params_before, param_elements(tensors.iter(), module)),
        macs: (macs_before, compress::product_macs(&module.forward)),
        file_bytes,
    })
}

/// The checkpoint's params and model state.
fn tensors_of(ckpt: &Checkpoint) -> impl Iterator<Item = (&String, &Tensor)> {
    ckpt.tensors
        .iter()
        .filter(|(n, _)| ckpt.params.contains(n))
        .map(|(n, t)| (n, t))
}

/// Writes the changed model's checkpoint: `tensors` (params and model
/// state), the structure `module` now has, and what the data fitted
/// (vocabularies, statistics) as `ckpt` recorded it. Returns its size.
fn save(
    module: &Module,
    ckpt: &Checkpoint,
    tensors: &BTreeMap<String, Tensor>,
    output: &Path,
) -> Result<u64, RuntimeError> {
    let tensors: Vec<(String, Tensor)> = tensors
        .iter()
        .map(|(n, t)| (n.clone(), t.clone()))
        .collect();
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
    Ok(std::fs::metadata(output).map(|m| m.len()).unwrap_or(0))
}

/// The float params and model state of `ckpt`, refusing a quantized one
/// (`what` is the command).
fn float_weights(ckpt: &Checkpoint, what: &str) -> Result<BTreeMap<String, Tensor>, RuntimeError> {
    if ckpt.quantization.is_some() {
        return Err(RuntimeError::Setup(format!(
            "checkpoint `{}` is quantized: {what} the float checkpoint, then quantize the result",
            ckpt.path.display()
        )));
    }
    Ok(ckpt
        .params
        .iter()
        .filter_map(|name| Some((name.clone(), ckpt.tensor(name)?.clone())))
        .collect())
}

/// How the rank of each factorized weight is chosen.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum RankChoice {
    /// The smallest rank whose singular values keep this fraction of the
    /// squared ones' sum (the "energy"), in (0, 1].
    Energy(f64),
    /// This rank for every selected weight.
    Fixed(usize),
}

/// What `nnc factorize` is asked.
#[derive(Debug, Clone, PartialEq)]
pub struct FactorizeOptions {
    pub rank: RankChoice,
    /// Which layers, as for [`PruneOptions::layers`].
    pub layers: Vec<String>,
}

/// One weight replaced by two factors.
#[derive(Debug, Clone, PartialEq)]
pub struct FactorizedLayer {
    pub weight: String,
    /// The matrix it multiplies with.
    pub rows: usize,
    pub cols: usize,
    pub rank: usize,
    /// The fraction of the squared singular values the rank keeps.
    pub energy: f64,
}

/// What `nnc factorize` did.
#[derive(Debug, Clone, PartialEq)]
pub struct FactorizeReport {
    pub factorized: Vec<FactorizedLayer>,
    /// Weights left whole, with why.
    pub skipped: Vec<(String, String)>,
    pub savings: Savings,
}

/// Replaces the selected product weights of `module` by truncated-SVD
/// factors `W ≈ U V` wherever the rank saves multiply-adds, changes
/// `module` to match and writes its checkpoint to `output`.
pub fn factorize(
    module: &mut Module,
    ckpt: &Checkpoint,
    options: &FactorizeOptions,
    output: &Path,
) -> Result<FactorizeReport, RuntimeError> {
    let setup = RuntimeError::Setup;
    match options.rank {
        RankChoice::Energy(e) if !(e > 0.0 && e <= 1.0) => {
            return Err(setup(format!(
                "the energy a factorization keeps must be in (0, 1], not {e}"
            )))
        }
        RankChoice::Fixed(0) => {
            return Err(setup(
                "a factorization's rank must be at least 1".to_string(),
            ))
        }
        _ => {}
    }
    let mut tensors = float_weights(ckpt, "factorize")?;
    let candidates = lowrank::candidates(&module.forward);
    let weights: Vec<&str> = candidates.iter().map(|c| c.param.as_str()).collect();
    check_layers(&options.layers, &weights, module)?;
    let mut factorized = Vec::new();
    let mut skipped = Vec::new();
    let mut changes = Vec::new();
    for c in candidates {
        if !is_selected(&options.layers, &c.param) {
            skipped.push((c.param, "not selected".to_string()));
            continue;
        }
        let w = tensors.get(&c.param).ok_or_else(|| {
            setup(format!(
                "checkpoint `{}` has no tensor `{}`",
                ckpt.path.display(),
                c.param
            ))
        })?;
        let singular = svd::svd(&w.data, c.rows, c.cols).s;
        let rank = match options.rank {
            RankChoice::Energy(e) => svd::rank_for_energy(&singular, e),
            RankChoice::Fixed(r) if r > c.max_rank() => {
                return Err(setup(format!(
                    "rank {r} is larger than the {}×{} matrix of `{}`",
                    c.rows, c.cols, c.param
                )))
            }
            RankChoice::Fixed(r) => r,
        };
        if rank > c.max_useful_rank() {
            skipped.push((
                c.param.clone(),
                format!(
                    "rank {rank} of its {}×{} matrix saves no multiply-adds ({} ≥ {})",
                    c.rows,
                    c.cols,
                    c.factored_macs(rank),
                    c.full_macs()
                ),
            ));
            continue;
        }
        let squares: Vec<f64> = singular.iter().map(|s| s * s).collect();
        let total: f64 = squares.iter().sum();
        let energy = if total > 0.0 {
            squares[..rank].iter().sum::<f64>() / total
        } else {
            1.0
        };
        let (u, v) = lowrank::factor_weights(w, c.layout, rank)
            .map_err(|e| setup(format!("`{}`: {}", c.param, e.message)))?;
        tensors.remove(&c.param);
        tensors.insert(format!("{}.u", c.param), u);
        tensors.insert(format!("{}.v", c.param), v);
        changes.push(StructuralChange::Factorize {
            param: c.param.clone(),
            rank,
        });
        factorized.push(FactorizedLayer {
            weight: c.param,
            rows: c.rows,
            cols: c.cols,
            rank,
            energy,
        });
    }
    let savings = finish(
        module,
        ckpt,
        &tensors,
        output,
        &changes,
        &skipped,
        "factorized",
    )?;
    Ok(FactorizeReport {
        factorized,
        skipped,
        savings,
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
        let s = match saliency(group, tensors, options.saliency) {
            Ok(s) => s,
            // Ranked by nothing, it keeps every channel (and says why
            // when its turn comes).
            Err(_) if options.layers.is_empty() => continue,
            Err(e) => return Err(e),
        };
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

/// Elements of the trainable params of `module` among `tensors` (not
/// model state).
fn param_elements<'t>(
    tensors: impl Iterator<Item = (&'t String, &'t Tensor)>,
    module: &Module,
) -> usize {
    let params: Vec<&str> = module
        .forward
        .params()
        .into_iter()
        .map(|(_, n)| n)
        .collect();
    tensors
        .filter(|(n, _)| params.contains(&n.as_str()))
        .map(|(_, t)| t.numel())
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
