//! Convolution columns that never exist whole: matmuls summed over their
//! batch by their only user (a weight gradient accumulated straight into
//! the sum), and `unfold`s and `fold`s staged through scratch one batch
//! index at a time (see [`Staged`](super::Staged)).

use super::matmul::use_cranelift;
use super::{batch_strides, concrete, results, view_of, Base, View};
use nnc_ir::{DType, Graph, NodeId, Op, ReduceOp};
use std::collections::{HashMap, HashSet};

/// Matmuls whose only user is a `reduce_sum` over some of their batch
/// dims, and which go through `sgemm` (see `emit::product::emit_matmul`):
/// the reduction's kernel calls `sgemm` in accumulate mode per batch, so
/// the batch of products is never stored. This is the gradient of a weight
/// broadcast over a batch (`[G, O/G, K] @ [N, G, K, L]`, a convolution):
/// autodiff makes it `reduce_sum(g @ cols^T, [0])`, whose `[N, G, O/G, K]`
/// intermediate is as large as the columns.
pub(crate) fn summed_products(
    graph: &Graph,
    order: &[NodeId],
    bindings: &HashMap<String, usize>,
) -> HashSet<NodeId> {
    let results = results(graph);
    let shape = |n: NodeId| concrete(&graph.ty(n).shape, bindings).ok();
    order
        .iter()
        .copied()
        .filter(|&n| {
            if !matches!(graph.node(n).op, Op::MatMul) || results.contains(&n) {
                return false;
            }
            let [user] = graph.users(n)[..] else {
                return false;
            };
            let Op::Reduce {
                op: ReduceOp::Sum,
                axes,
                ..
            } = &graph.node(user).op
            else {
                return false;
            };
            let (Some(c), Some(a)) = (shape(n), shape(graph.operands(n)[0])) else {
                return false;
            };
            let r = c.len();
            let batch_only = !axes.is_empty() && axes.iter().all(|&i| i + 2 < r);
            batch_only
                && graph.ty(n).dtype == DType::F32
                // Not for a few rows even when `sgemm` would read the
                // columns in place: unsummed, those products split over
                // samples, while a summed one splits by input channel and
                // LeNet's conv1 has one.
                && !use_cranelift(c[r - 2], c[r - 1], a[a.len() - 1], false)
        })
        .collect()
}

/// How many planes of `plane` elements (`channels` planes per sample) the
/// matrix of each batch index of `v` spans, when that is the same number
/// of consecutive planes of one sample for every batch index; `v` views
/// an unfolded tensor, `batch` is the matmul's batch. `None` when the
/// matrices straddle samples, or when a batch of one would gain nothing.
pub(crate) fn planes_per_batch(
    v: &View,
    batch: &[usize],
    plane: usize,
    channels: usize,
) -> Option<usize> {
    let r = v.shape.len();
    let count: usize = batch.iter().product();
    if r < 2 || plane == 0 || !(2..=1 << 16).contains(&count) {
        return None;
    }
    if v.strides.iter().any(|&s| s < 0) {
        return None;
    }
    let (rows, cols) = (v.shape[r - 2], v.shape[r - 1]);
    if rows == 0 || cols == 0 {
        return None;
    }
    let extent =
        (rows - 1) * v.strides[r - 2] as usize + (cols - 1) * v.strides[r - 1] as usize + 1;
    let strides = batch_strides(v, batch);
    if strides.iter().any(|&s| !(s as usize).is_multiple_of(plane)) {
        return None;
    }
    let planes = (v.offset % plane + extent).div_ceil(plane);
    if planes > channels {
        return None;
    }
    // Every batch index's first plane, so that none straddles two samples.
    let mut index = vec![0usize; batch.len()];
    for _ in 0..count {
        let first = v.offset / plane
            + index
                .iter()
                .zip(&strides)
                .map(|(&i, &s)| i * s as usize / plane)
                .sum::<usize>();
        if first % channels + planes > channels {
            return None;
        }
        for d in (0..batch.len()).rev() {
            index[d] += 1;
            if index[d] < batch[d] {
                break;
            }
            index[d] = 0;
        }
    }
    Some(planes)
}

/// Columns smaller than this are stored whole rather than staged: they
/// largely come back from cache anyway (1 MiB of L2 per core here), and
/// staging redoes an unfold for every matmul that reads it (forward and
/// weight gradient). Measured on the forward + backward of two conv layers
/// (`cargo bench -p nnc-codegen --bench conv`'s nets, each variant run in
/// alternating blocks): staging everything made LeNet's convs 15% slower
/// at batch 16 (columns of 1.2 and 0.9 MiB) but 14% and 22% faster at
/// batch 64 and 256, and the CIFAR net's 6% faster at batch 16 and 16% at 64.
pub const STAGE_MIN_BYTES: usize = 2 << 20;

/// The staged operands and results of matmuls (see
/// [`Staged`](super::Staged)): (matmul, slot) → (unfold or fold, planes
/// per batch index). An `unfold` is
/// staged when every use of it, through reshapes and transposes, is a
/// matmul operand that stages; a `fold` when its operand is, through
/// reshapes only, the result of a matmul read by nothing else.
pub(crate) fn staged_windows(
    graph: &Graph,
    order: &[NodeId],
    bindings: &HashMap<String, usize>,
) -> HashMap<(NodeId, usize), (NodeId, usize)> {
    let results = results(graph);
    let shape = |n: NodeId| concrete(&graph.ty(n).shape, bindings).ok();
    // Views here only locate elements within the unfolded tensor.
    let logical = |shape: Vec<usize>| View::contiguous(Base::Work(usize::MAX), shape);
    let batch_of = |m: NodeId| -> Option<Vec<usize>> {
        let s = shape(m)?;
        Some(s[..s.len().checked_sub(2)?].to_vec())
    };
    let mut staged = HashMap::new();
    for &w in order {
        if graph.ty(w).dtype != DType::F32 {
            continue;
        }
        match &graph.node(w).op {
            Op::Unfold { .. } if !results.contains(&w) => {
                let Some(ws) = shape(w).filter(|s| s.len() > 2) else {
                    continue;
                };
                if ws.iter().product::<usize>() * 4 < STAGE_MIN_BYTES {
                    continue;
                }
                let (plane, channels) = (ws[2..].iter().product(), ws[1]);
                let mut uses = Vec::new();
                let mut ok = true;
                let mut stack = vec![(w, logical(ws))];
                while let Some((n, v)) = stack.pop() {
                    for user in graph.users(n) {
                        let op = &graph.node(user).op;
                        let next = match (op, shape(user)) {
                            (Op::Reshape | Op::Transpose { .. }, Some(s)) => view_of(op, &v, s),
                            _ => None,
                        };
                        if results.contains(&user) {
                            ok = false;
                        } else if let Op::MatMul = op {
                            let operands = graph.operands(user);
                            for (slot, _) in operands.iter().enumerate().filter(|(_, &o)| o == n) {
                                let planes = batch_of(user).and_then(|batch| {
                                    planes_per_batch(&v, &batch, plane, channels)
                                });
                                match planes {
                                    Some(p) => uses.push(((user, slot), p)),
                                    None => ok = false,
                                }
                            }
                        } else if let Some(next) = next {
                            stack.push((user, next));
                        } else {
                            ok = false;
                        }
                    }
                }
                if ok {
                    for (key, planes) in uses {
                        staged.insert(key, (w, planes));
                    }
                }
            }
            Op::Fold { .. } => {
                let Some(cols) = shape(graph.operands(w)[0]).filter(|s| s.len() > 2) else {
                    continue;
                };
                if cols.iter().product::<usize>() * 4 < STAGE_MIN_BYTES {
                    continue;
                }
                let (plane, channels) = (cols[2..].iter().product(), cols[1]);
                // Up through reshapes (which keep row-major order) to a matmul.
                let mut n = graph.operands(w)[0];
                let m = loop {
                    if results.contains(&n) || graph.users(n).len() != 1 {
                        break None;
                    }
                    match graph.node(n).op {
                        Op::Reshape => n = graph.operands(n)[0],
                        Op::MatMul => break Some(n),
                        _ => break None,
                    }
                };
                let Some(m) = m else { continue };
                let (Some(ms), Some(batch)) = (shape(m), batch_of(m)) else {
                    continue;
                };
                if let Some(p) = planes_per_batch(&logical(ms), &batch, plane, channels) {
                    staged.insert((m, 2), (w, p));
                }
            }
            _ => {}
        }
    }
    staged
}
