//! `scan` in the plan: one schedule step runs a whole loop.
//!
//! The body is planned once, by the same planning code as any graph
//! (recursively: a body may hold a scan of its own), into its own kernels
//! and its own arena. That arena is one buffer (the loop's *region*) of the
//! enclosing plan, live while the loop's step runs and reused by every trip,
//! so the memory plan stays static and compile time does not depend on the
//! sequence length: the body is compiled once, never unrolled.
//!
//! Per trip the step copies slice `t` of every sequence into the body's
//! input buffer, runs the body's kernels, copies each stacked result's slice
//! `t` out, and copies the next carries into the carries' input buffers.
//! The consts and initial carries are copied in once, the final carries out
//! once (from the carry inputs, where the last trip left them). The copies
//! are small next to a step's products (an LSTM step reads `[B, 4H]` and
//! multiplies `[B, H] @ [H, 4H]`); kernels taking a per-trip base address
//! would avoid them.

use super::{align, GroupConfig, Plan, StateLayout, View};
use crate::CodegenError;
use nnc_ir::{Graph, NodeId, Op, ScanBody, ScanResult};
use std::collections::HashMap;
use std::sync::Arc;

/// A loop's plan: its body's plan and where the body's values meet the
/// enclosing graph's.
#[derive(Debug, Clone, PartialEq)]
pub struct ScanPlan {
    pub body: Arc<ScanBody>,
    /// The body's plan. Its work buffers live in [`ScanPlan::region`] of
    /// the enclosing plan; its views are in the body's coordinates.
    pub plan: Plan,
    /// The enclosing plan's work buffer that holds the body's arena.
    pub region: usize,
    pub trip: usize,
    /// The scan nodes of this loop (one per result read), with their
    /// result index, in topological order; the first is the kernel's root.
    pub members: Vec<(usize, NodeId)>,
    /// Per carry: the enclosing plan's scratch its next value passes
    /// through, when that value is a view of a carry input another carry
    /// overwrites (a swap of two carries, a transposed square carry).
    pub staging: Vec<Option<View>>,
}

impl ScanPlan {
    /// The body's buffer for operand `i` (consts, carries, then one slice
    /// of each sequence).
    pub fn input(&self, i: usize) -> Result<&View, CodegenError> {
        self.plan
            .views
            .get(&self.body.inputs[i])
            .ok_or_else(|| CodegenError::new("internal error: a scan body input has no buffer"))
    }

    /// The body's value of output `o` (next carries, then ys).
    pub fn output(&self, o: usize) -> Result<&View, CodegenError> {
        self.plan
            .views
            .get(&self.body.graph.outputs[o].node)
            .ok_or_else(|| CodegenError::new("internal error: a scan body output has no buffer"))
    }

    /// Whether the copy of carry `k`'s next value into its input can be
    /// skipped: the body passes the carry through unchanged.
    pub fn carry_kept(&self, k: usize) -> Result<bool, CodegenError> {
        Ok(self.output(k)? == self.input(self.body.consts + k)?)
    }

    /// The slice of trip `i` (sequence order reversed for a reverse loop).
    pub fn slice_of_trip(&self, i: usize) -> usize {
        if self.body.reverse {
            self.trip - 1 - i
        } else {
            i
        }
    }

    /// The members reading each kind of result.
    pub fn members_of(&self, kind: impl Fn(ScanResult) -> bool) -> Vec<(ScanResult, NodeId)> {
        self.members
            .iter()
            .filter_map(|&(r, n)| self.body.result(r).filter(|&r| kind(r)).map(|r| (r, n)))
            .collect()
    }
}

/// `view` without the sequence `axis`: slice 0, to be shifted by
/// `t * strides[axis]` elements for slice `t`.
pub fn slice_view(view: &View, axis: usize) -> Result<View, CodegenError> {
    if axis >= view.shape.len() {
        return Err(CodegenError::new(format!(
            "internal error: scan axis {axis} of a rank-{} value",
            view.shape.len()
        )));
    }
    let mut v = view.clone();
    v.shape.remove(axis);
    v.strides.remove(axis);
    Ok(v)
}

/// Plans loop `members` (the scan nodes of one loop: same body, same
/// operands) whose operands have the concrete `operand_shapes`. Returns
/// the body's plan and the loop's trip count; the caller makes the region.
pub(super) fn plan_body(
    graph: &Graph,
    members: &[NodeId],
    operand_shapes: &[Vec<usize>],
    config: &GroupConfig,
) -> Result<(Arc<ScanBody>, Plan, usize), CodegenError> {
    let Some(&root) = members.first() else {
        return Err(CodegenError::new("internal error: a loop with no nodes"));
    };
    let Op::Scan { body, .. } = &graph.node(root).op else {
        return Err(CodegenError::new(
            "internal error: a loop that is not a scan",
        ));
    };
    if operand_shapes.len() != body.inputs.len() {
        return Err(CodegenError::new(format!(
            "a scan body takes {} operands, found {}",
            body.inputs.len(),
            operand_shapes.len()
        )));
    }
    let first_x = body.consts + body.carries;
    let axis = body.axis;
    let trip = match operand_shapes[first_x].get(axis) {
        Some(&n) => n,
        None => {
            return Err(CodegenError::new(format!(
                "scan axis {axis} is out of range of its first sequence {:?}",
                operand_shapes[first_x]
            )))
        }
    };
    // The body's symbols (`B`) take their sizes from the operands.
    let mut bindings = HashMap::new();
    for (i, shape) in operand_shapes.iter().enumerate() {
        let mut shape = shape.clone();
        if i >= first_x {
            if shape.get(axis) != Some(&trip) {
                return Err(CodegenError::new(format!(
                    "scan sequence {} has shape {shape:?}, not {trip} steps along axis {axis}",
                    i - first_x
                )));
            }
            shape.remove(axis);
        }
        let declared = body.graph.ty(body.inputs[i]);
        nnc_ir::symbols::bind(declared, &shape, &mut bindings).map_err(|e| {
            CodegenError::new(format!(
                "scan operand {i} of shape {shape:?} does not fit the body's input {declared}: {e}"
            ))
        })?;
    }
    let plan = super::plan_with(&body.graph, &bindings, &StateLayout::default(), config)
        .map_err(|e| CodegenError::new(format!("in the body of a scan: {}", e.message)))?;
    Ok((body.clone(), plan, trip))
}

/// Bytes of the region that holds a body's arena.
pub(super) fn region_bytes(plan: &Plan) -> usize {
    align(plan.arena_bytes)
}
