//! Compression that changes a model's structure or its weights' values:
//! structured pruning of channels (`channels`), low-rank factorization of
//! product weights (`lowrank`, with its `svd`), and the masks of
//! unstructured magnitude pruning (`sparsity`). Each is a graph-to-graph
//! pass over `nnc_ir` plus the arithmetic on weights it needs; choosing
//! what to compress (saliencies, ranks) and moving tensors in and out of
//! checkpoints are the runtime's.

pub mod channels;
pub mod lowrank;
pub mod sparsity;
pub mod svd;

use crate::PassError;
use nnc_ir::{Dim, Graph, Module, Op, StructuralChange};

/// Applies `change` to `graph`; `training` says it is the objective
/// (whose state updates fake quantization extends).
pub fn apply(
    graph: &mut Graph,
    change: &StructuralChange,
    training: bool,
) -> Result<(), PassError> {
    match change {
        StructuralChange::PruneChannels { param, kept } => {
            channels::shrink(graph, param, kept.len()).map(|_| ())
        }
        StructuralChange::Factorize { param, rank } => lowrank::factorize(graph, param, *rank),
        StructuralChange::FakeQuantize => {
            crate::quantize::qat::fake_quantize(graph, training).map(|_| ())
        }
    }
}

/// Applies `changes`, in order, to every graph of `module` (the forward
/// graph, and the training objective and evaluation graphs), and records
/// them in `Module::changes`, after those already made.
pub fn restructure(module: &mut Module, changes: &[StructuralChange]) -> Result<(), PassError> {
    for change in changes {
        apply(&mut module.forward, change, false)?;
        if let Some(spec) = module.train.as_mut() {
            apply(&mut spec.objective, change, true)?;
            apply(&mut spec.evaluation, change, false)?;
        }
        module.changes.push(change.clone());
    }
    Ok(())
}

/// Multiply-adds of the products of `graph` for one sample (a symbolic
/// dim counts 1): what structured pruning and factorization reduce.
pub fn product_macs(graph: &Graph) -> usize {
    let size = |d: &Dim| match d {
        Dim::Const(n) => *n,
        Dim::Sym(_) => 1,
    };
    graph
        .topo_order()
        .into_iter()
        .filter(|&id| matches!(graph.node(id).op, Op::MatMul))
        .map(|id| {
            let result: usize = graph.ty(id).shape.iter().map(size).product();
            let a = graph.operands(id)[0];
            let k = graph.ty(a).shape.last().map_or(1, size);
            result * k
        })
        .sum()
}
