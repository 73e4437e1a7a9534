//! The verifier: re-derives every node's type and checks the structural
//! invariants that passes rely on. Run after every pass in tests.

use crate::graph::{Graph, NodeId};
use crate::infer::infer;
use crate::op::Op;
use std::collections::HashMap;
use thiserror::Error;

#[derive(Debug, Clone, PartialEq, Error)]
#[error("graph `{graph}` is invalid: {message}")]
pub struct VerifyError {
    pub graph: String,
    pub message: String,
}

pub fn verify(graph: &Graph) -> Result<(), VerifyError> {
    let fail = |message: String| VerifyError {
        graph: graph.name.clone(),
        message,
    };
    let order = graph.topo_order();
    if order.len() != graph.len() {
        return Err(fail("the graph has a cycle".into()));
    }
    let mut leaves: HashMap<(&str, &str), NodeId> = HashMap::new();
    for &id in &order {
        let node = graph.node(id);
        let operands = graph.operands(id);
        let types: Vec<_> = operands.iter().map(|&o| graph.ty(o)).collect();
        let inferred = infer(&node.op, &types, Some(&node.ty))
            .map_err(|e| fail(format!("node `{}` ({id:?}): {e}", node.op.mnemonic())))?;
        if inferred != node.ty {
            return Err(fail(format!(
                "node `{}` ({id:?}) is typed {} but computes {inferred}",
                node.op.mnemonic(),
                node.ty
            )));
        }
        let (kind, name) = match &node.op {
            Op::Input { name } => ("input", name),
            Op::Param { name, .. } => ("param", name),
            Op::State { name, .. } => ("state", name),
            _ => continue,
        };
        if leaves.insert((kind, name), id).is_some() {
            return Err(fail(format!("{kind} `{name}` is declared twice")));
        }
    }
    for o in &graph.outputs {
        if !graph.contains(o.node) {
            return Err(fail(format!(
                "output `{}` refers to a missing node",
                o.name
            )));
        }
    }
    for u in &graph.updates {
        if !graph.contains(u.value) {
            return Err(fail(format!(
                "update of `{}` refers to a missing node",
                u.target
            )));
        }
        let target = leaves
            .get(&("param", u.target.as_str()))
            .or_else(|| leaves.get(&("state", u.target.as_str())))
            .ok_or_else(|| fail(format!("update of unknown param or state `{}`", u.target)))?;
        if graph.ty(*target) != graph.ty(u.value) {
            return Err(fail(format!(
                "update of `{}` has type {} but the target is {}",
                u.target,
                graph.ty(u.value),
                graph.ty(*target)
            )));
        }
    }
    Ok(())
}
