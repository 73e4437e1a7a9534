//! How a kernel's work splits into units the thread pool shares: which
//! kernels split (large elementwise loops, reductions by a kept dim,
//! `unfold`/`fold` by planes, batches of products by their outermost
//! batch dim, a product summed over its batch by pieces of its columns)
//! and into how many units. The emitting half computes the units it is
//! given (`emit::emit_kernel`), a trampoline runs them (`nnc_parallel`).

use super::matmul::{columns_per_plane, folds_batch};
use super::{Body, Kernel, Plan};
use nnc_ir::{Graph, NodeId, Op};

/// How an elementwise loop is split into work units for the thread pool:
/// the outermost loop's indices when the (coalesced) loop nest has two or
/// more dims, else chunks of [`MAP_CHUNK`] elements of the one loop.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MapSplit {
    pub units: usize,
}

/// Elements per work unit of a one-dim elementwise loop: a multiple of the
/// vector width, and large enough (16 KiB of `f32`) that a unit's loop
/// overhead is noise.
pub const MAP_CHUNK: usize = 4096;

/// Elementwise kernels with at least this many elements run their work
/// units over the thread pool (with `--threads` above 1). Adam's update of
/// a 784×256 weight (200,704 elements) took 0.31–0.45 ms on one thread and
/// is compute-bound (a square root and a division per element in 128-bit
/// vectors), so it splits well; below about 16K elements waking the other
/// thread costs more than it saves.
pub const PARALLEL_ELEMENTS: usize = 16384;

/// Elementwise loops also split when their elements times their
/// transcendental functions per element reach this: an LSTM step's gates
/// (`[32, 128]`, a `sigmoid` each) took 12–16 µs on one thread, several
/// times the hand-off to a worker that is spinning between a loop's trips.
pub const PARALLEL_TRANSCENDENTALS: usize = 4096;

/// Whether `kernel`'s work splits into units the thread pool can share
/// (see `emit::emit_kernel`): an elementwise loop, a reduction that keeps
/// its outermost dim, an `unfold` or a `fold` of at least
/// [`PARALLEL_ELEMENTS`]; a batch of matrix products (a convolution's, one
/// per sample) of at least `sgemm::PARALLEL_FLOPS` over at least two
/// indices of its outermost batch dim; or such a product summed over its
/// batch (see [`summed_units`]).
pub fn splits(kernel: &Kernel, graph: &Graph, plan: &Plan) -> bool {
    match &kernel.body {
        Body::Map { expr, .. } => {
            let elements = expr.shape.iter().product::<usize>();
            elements >= PARALLEL_ELEMENTS
                || (expr.shape.len() >= 2
                    && elements * expr.transcendentals() >= PARALLEL_TRANSCENDENTALS)
        }
        // Reductions over an outer loop they keep, and window walks, by
        // their outermost loop (planes of the image).
        Body::Operand(expr) if expr.shape.iter().product::<usize>() >= PARALLEL_ELEMENTS => {
            match &graph.node(kernel.root).op {
                // A mean scales each result as it stores it, so it splits
                // like a sum.
                Op::Reduce { axes, .. } => splits_reduction(&expr.shape, axes),
                Op::Unfold { .. } | Op::Fold { .. } => true,
                _ => false,
            }
        }
        Body::Node if matches!(graph.node(kernel.root).op, Op::MatMul) => {
            matmul_units(graph, plan, kernel.root).is_some()
        }
        Body::Node if matches!(graph.node(kernel.root).op, Op::Reduce { .. }) => {
            summed_units(graph, plan, kernel.root).is_some()
        }
        _ => false,
    }
}

/// Whether a reduction of `shape` over `axes` has a kept dim to split
/// over: the outermost one (see `emit::reduce::emit_reduce`), or a kept
/// dim with a reduced dim inside it, which `emit_reduce` then walks
/// outermost (a convolution's bias gradient: `[N, C, H, W]` summed to
/// `[C]`).
pub(crate) fn splits_reduction(shape: &[usize], axes: &[usize]) -> bool {
    let kept = |i: usize| !axes.contains(&i) && shape[i] >= 2;
    (!shape.is_empty() && !axes.contains(&0))
        || (0..shape.len()).any(|i| kept(i) && axes.iter().any(|&j| j > i && shape[j] >= 2))
}

/// A product summed over its batch (a convolution's weight gradient,
/// `sum_n g[n] @ cols[n]^T`) splits by the columns of the sum: each work
/// unit owns an even range of columns (`column_pieces`), unfolds only the
/// channels that hold them for every sample and accumulates them in sample
/// order, so each element of the sum adds the same products in the same
/// order as on one thread. The units: one per task the plan made room
/// for. Needs the unfolded columns staged as `b`, with each channel's
/// columns contiguous in it. Columns rather than whole channels: CIFAR's
/// conv1 has 3 input channels, which two tasks split 1:2 (its kernel ran
/// at 68 GFLOP/s on two threads); a channel cut between two pieces is
/// unfolded by both.
pub(crate) fn summed_units(graph: &Graph, plan: &Plan, reduce: NodeId) -> Option<usize> {
    let mm = graph.operands(reduce)[0];
    if !plan.fused.contains(&mm) || !matches!(graph.node(mm).op, Op::MatMul) {
        return None;
    }
    let st = plan.staged.get(&(mm, 1))?;
    if plan.staged.contains_key(&(mm, 0)) || plan.staged.contains_key(&(mm, 2)) {
        return None;
    }
    let operands = graph.operands(mm);
    let (a, bm) = (plan.views.get(&operands[0])?, plan.views.get(&operands[1])?);
    let (ra, rb) = (a.shape.len(), bm.shape.len());
    let (m, k, n) = (a.shape[ra - 2], a.shape[ra - 1], bm.shape[rb - 1]);
    let plane: usize = plan.views.get(&st.window)?.shape[2..].iter().product();
    let per_plane = columns_per_plane(bm, k, plane, st.planes, n)?;
    let samples: usize = plan.views.get(&st.window)?.shape[0];
    let flops = 2 * m * n * k * samples;
    let units = plan.tasks.min(n);
    (per_plane > 0 && units >= 2 && flops >= crate::sgemm::PARALLEL_FLOPS).then_some(units)
}

/// The outermost batch dim of the matmul `mm` when its products are split
/// over it: products run one per batch index (not folded into rows), and
/// are large enough in all.
pub(crate) fn matmul_units(graph: &Graph, plan: &Plan, mm: NodeId) -> Option<usize> {
    let operands = graph.operands(mm);
    let (a, bm, c) = (
        plan.views.get(&operands[0])?,
        plan.views.get(&operands[1])?,
        plan.views.get(&mm)?,
    );
    let (ra, rb, rc) = (a.shape.len(), bm.shape.len(), c.shape.len());
    let (m, k, n) = (a.shape[ra - 2], a.shape[ra - 1], bm.shape[rb - 1]);
    let batch = &c.shape[..rc - 2];
    let staging = (0..3).any(|slot| plan.staged.contains_key(&(mm, slot)));
    let &units = batch.first()?;
    if units < 2 || folds_batch(a, bm, c, batch, staging) {
        return None;
    }
    if c.strides[0] == 0 {
        return None;
    }
    // A staged fold's image is split by sample: its batch must be the
    // image's.
    if let Some(st) = plan.staged.get(&(mm, 2)) {
        if plan.views.get(&st.window)?.shape.first() != Some(&units) {
            return None;
        }
    }
    let flops = 2 * m * n * k * batch.iter().product::<usize>();
    // A byte product does about four times the work per cycle of an f32
    // one: `igemm`'s own threshold.
    let threshold = if graph.ty(mm).dtype.is_float() {
        crate::sgemm::PARALLEL_FLOPS
    } else {
        crate::igemm::PARALLEL_OPS
    };
    (flops >= threshold).then_some(units)
}
