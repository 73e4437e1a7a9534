//! Magnitude pruning in the training loop (`prune = magnitude(...)`):
//! at the steps of the schedule ([`nnc_ir::Prune`]) the masks, model state
//! that the graphs multiply the pruned weights by, are recomputed from the
//! weights' magnitudes (`nnc_passes::compress::sparsity::masks`) and the
//! pruned weights are set to zero, as TF-MOT assigns `w = w * mask`, so
//! that a weight once pruned stays zero in checkpoints too. The masks are
//! state, so checkpoints hold them and `--resume`, `--weights` and
//! `--eval` use them.

use crate::executor::Executor;
use crate::RuntimeError;
use nnc_ir::{mask_name, Graph, Op, Prune, PruneSteps, Tensor};
use nnc_passes::compress::sparsity::masks;
use std::collections::HashMap;

/// The weights `graph` reads through a mask: each param `w` with a state
/// `w.mask`, in name order.
pub fn masked_weights(graph: &Graph) -> Vec<String> {
    let mut names: Vec<String> = graph
        .params()
        .into_iter()
        .filter(|(_, name)| {
            graph
                .find_leaf(&mask_name(name))
                .is_some_and(|m| matches!(graph.node(m).op, Op::State { .. }))
        })
        .map(|(_, name)| name.to_string())
        .collect();
    names.sort();
    names
}

/// One pruned weight's sparsity: the zeros of `w · mask` (what the model
/// computes with) among its elements.
#[derive(Debug, Clone, PartialEq)]
pub struct WeightSparsity {
    pub name: String,
    pub size: usize,
    pub zeros: usize,
}

impl WeightSparsity {
    pub fn sparsity(&self) -> f64 {
        self.zeros as f64 / self.size.max(1) as f64
    }
}

/// The share of zeros over all of `weights` together.
pub fn overall(weights: &[WeightSparsity]) -> f64 {
    let size: usize = weights.iter().map(|w| w.size).sum();
    let zeros: usize = weights.iter().map(|w| w.zeros).sum();
    zeros as f64 / size.max(1) as f64
}

/// Each tensor of `names` and its mask, from the executor's state.
fn weights_and_masks(
    exec: &dyn Executor,
    names: &[String],
) -> Result<Vec<(Tensor, Tensor)>, RuntimeError> {
    let mut state: HashMap<String, Tensor> = exec.state().into_iter().collect();
    names
        .iter()
        .map(|name| {
            let mut take = |n: &str| {
                state.remove(n).ok_or_else(|| {
                    RuntimeError::Setup(format!("the model has no param or state `{n}`"))
                })
            };
            let w = take(name)?;
            let m = take(&mask_name(name))?;
            if w.shape != m.shape {
                return Err(RuntimeError::Setup(format!(
                    "the mask of `{name}` has shape {:?}, the weight {:?}",
                    m.shape, w.shape
                )));
            }
            Ok((w, m))
        })
        .collect()
}

/// The sparsity of each weight of `names` in the executor's model.
pub fn measure(exec: &dyn Executor, names: &[String]) -> Result<Vec<WeightSparsity>, RuntimeError> {
    let pairs = weights_and_masks(exec, names)?;
    Ok(names
        .iter()
        .zip(&pairs)
        .map(|(name, (w, m))| WeightSparsity {
            name: name.clone(),
            size: w.data.len(),
            zeros: w
                .data
                .iter()
                .zip(&m.data)
                .filter(|(a, b)| *a * *b == 0.0)
                .count(),
        })
        .collect())
}

/// The pruning of one training run: the schedule in steps and the masked
/// weights.
#[derive(Debug, Clone)]
pub struct Pruning<'s> {
    pub prune: &'s Prune,
    pub steps: PruneSteps,
    pub weights: Vec<String>,
}

impl<'s> Pruning<'s> {
    /// The pruning of a run of `epochs` epochs of `per_epoch` steps that
    /// trains `step`, when the train block prunes.
    pub fn new(
        prune: Option<&'s Prune>,
        step: &Graph,
        per_epoch: usize,
        epochs: usize,
    ) -> Result<Option<Pruning<'s>>, RuntimeError> {
        let Some(prune) = prune else {
            return Ok(None);
        };
        let weights = masked_weights(step);
        if weights.is_empty() {
            return Err(RuntimeError::Setup(
                "the train block prunes, but the training step reads no masked weight".into(),
            ));
        }
        Ok(Some(Pruning {
            prune,
            steps: prune.steps(per_epoch, epochs),
            weights,
        }))
    }

    /// After the optimizer step that made `t` steps in all: recomputes
    /// the masks when the schedule says so, and returns whether it did.
    pub fn after_step(&self, exec: &mut dyn Executor, t: usize) -> Result<bool, RuntimeError> {
        if !self.prune.updates_at(self.steps, t) {
            return Ok(false);
        }
        let sparsity = self.prune.sparsity_at(self.steps, t);
        update_masks(exec, &self.weights, sparsity, self.prune.scope)?;
        Ok(true)
    }
}

impl Pruning<'_> {
    /// Sets the masked elements of every pruned weight to zero again: an
    /// optimizer with momentum (or weight decay) moves them after their
    /// gradient became zero, invisibly to the model, which reads `w ·
    /// mask`; the loop calls this after each epoch, so checkpoints hold
    /// the sparse weights the model computes with.
    pub fn zero_masked(&self, exec: &mut dyn Executor) -> Result<(), RuntimeError> {
        let pairs = weights_and_masks(exec, &self.weights)?;
        for (name, (w, m)) in self.weights.iter().zip(pairs) {
            if w.data
                .iter()
                .zip(&m.data)
                .any(|(v, m)| *m == 0.0 && *v != 0.0)
            {
                exec.set_state(name, masked(&w, &m))?;
            }
        }
        Ok(())
    }
}

/// `w` with the elements its mask zeroes set to `0.0`.
fn masked(w: &Tensor, mask: &Tensor) -> Tensor {
    let mut out = w.clone();
    for (v, m) in out.data.iter_mut().zip(&mask.data) {
        if *m == 0.0 {
            *v = 0.0;
        }
    }
    out
}

/// Prunes the weights `names` of the executor's model to `sparsity`: new
/// masks from the magnitudes of `w · mask`, and `w · mask` as the weight.
pub fn update_masks(
    exec: &mut dyn Executor,
    names: &[String],
    sparsity: f64,
    scope: nnc_ir::PruneScope,
) -> Result<(), RuntimeError> {
    let pairs = weights_and_masks(exec, names)?;
    let refs: Vec<(&Tensor, &Tensor)> = pairs.iter().map(|(w, m)| (w, m)).collect();
    let new = masks(&refs, sparsity, scope);
    for ((name, (w, _)), mask) in names.iter().zip(&pairs).zip(new) {
        exec.set_state(name, masked(w, &mask))?;
        exec.set_state(&mask_name(name), mask)?;
    }
    Ok(())
}
