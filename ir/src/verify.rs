//! The verifier: re-derives every node's type and checks the structural
//! invariants that passes rely on. Run after every pass in tests.

use crate::graph::{Graph, NodeId};
use crate::infer::infer;
use crate::op::Op;
use petgraph::Direction;
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
    // Inputs, params and states share one namespace: `Graph::find_leaf` and
    // update targets look leaves up by name alone.
    let mut leaves: HashMap<&str, (&str, NodeId)> = HashMap::new();
    for &id in &order {
        let node = graph.node(id);
        let operands = graph.operands(id);
        // Each operand edge carries its position; they must be 0..n, or
        // `operands` would order them arbitrarily.
        let mut positions: Vec<usize> = graph
            .g
            .edges_directed(id, Direction::Incoming)
            .map(|e| *e.weight())
            .collect();
        positions.sort_unstable();
        if positions.iter().enumerate().any(|(i, &p)| i != p) {
            return Err(fail(format!(
                "node `{}` ({id:?}) has operand positions {positions:?}",
                node.op.mnemonic()
            )));
        }
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
        if let Some((first, _)) = leaves.insert(name, (kind, id)) {
            return Err(fail(if first == kind {
                format!("{kind} `{name}` is declared twice")
            } else {
                format!("`{name}` is declared both as {first} and as {kind}")
            }));
        }
    }
    for (i, o) in graph.outputs.iter().enumerate() {
        if graph.outputs[..i].iter().any(|p| p.name == o.name) {
            return Err(fail(format!("output `{}` is declared twice", o.name)));
        }
        if !graph.contains(o.node) {
            return Err(fail(format!(
                "output `{}` refers to a missing node",
                o.name
            )));
        }
    }
    for (i, u) in graph.updates.iter().enumerate() {
        if graph.updates[..i].iter().any(|p| p.target == u.target) {
            return Err(fail(format!("`{}` is updated twice", u.target)));
        }
        if !graph.contains(u.value) {
            return Err(fail(format!(
                "update of `{}` refers to a missing node",
                u.target
            )));
        }
        let target = match leaves.get(u.target.as_str()) {
            Some(&(kind, id)) if kind != "input" => id,
            _ => {
                return Err(fail(format!(
                    "update of unknown param or state `{}`",
                    u.target
                )))
            }
        };
        if graph.ty(target) != graph.ty(u.value) {
            return Err(fail(format!(
                "update of `{}` has type {} but the target is {}",
                u.target,
                graph.ty(u.value),
                graph.ty(target)
            )));
        }
    }
    Ok(())
}
