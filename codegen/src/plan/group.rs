//! Kernel grouping: which values get a buffer, and which loop computes
//! each one.
//!
//! The first plan fused an elementwise producer only into a single
//! elementwise consumer of the same shape; everything else was a kernel
//! with a buffer. This pass decides two things, from the graph and its
//! concrete shapes alone (the plan then builds each kernel's expression,
//! see `expr`):
//!
//! 1. **Inline values.** An elementwise value (unary and binary ops but
//!    `pow`, `select`, `cast`, `random`, splat constants), or a layout view
//!    (reshape, transpose, broadcast, slice) of one, is *inline* when it is
//!    not a result and every op that reads it can compute it inside its
//!    own loop: elementwise ops, reductions (the operand's expression is
//!    the reduction loop's prologue), `fold` (over the columns it adds up)
//!    and `unfold` (over the image elements it copies). An inline value has
//!    no buffer and no kernel; each reading loop evaluates it in registers.
//!    The rule that decides when recomputing beats storing is on
//!    [`GroupConfig`]. A convolution's `unfold` reads each image element
//!    once per kernel offset (25 times for 5×5), so by that rule its
//!    operand is stored; pooling's `unfold` (each element once) computes
//!    its operand. Staged `unfold`s and `fold`s (`plan::Staged`, built per
//!    sample inside a matmul's kernel) take no expression: the former for
//!    that reason, the latter because their operand is the product.
//! 2. **Multi-output loops.** Elementwise kernels of one shape that read
//!    the same data (a buffer of the loop's size, or an inline value), or
//!    where one reads another's result at the same element, run as one
//!    loop storing several results: Adam's new `m`, `v` and param are one
//!    pass over the gradient and the three state tensors, and `p'` takes
//!    `m'` and `v'` from registers. A group runs where its last member
//!    did; it forms only when no kernel outside it reads a member's result
//!    before that point, so the schedule stays a topological order.
//!
//! Both rules are `ir::fusion`'s (`inline_values`, `multi_output_loops`),
//! which the optimizer's cost model applies too; this module gives them
//! the plan's facts and keeps the thresholds ([`GroupConfig`]).

use nnc_ir::fusion::{self, FusionDag, InlineRule};
use nnc_ir::{DType, Graph, NodeId, Op, OpClass};
use std::collections::{HashMap, HashSet};

/// The knobs of grouping. [`GroupConfig::default`] is the rule the JIT
/// uses; [`GroupConfig::greedy`] reproduces the first plan (the baseline
/// the egg-based optimizer of issue 6 is measured against).
///
/// **When an inline value is recomputed.** Each loop that reads an inline
/// value evaluates it once per element of its own index space, so a value
/// is *evaluated* `E` times per element per step: the sum, over the loops
/// that read it, of their size over its size (a loop that broadcasts a
/// `[C]` value over `[B, C, L]` evaluates each element `B·L` times).
///
/// - `E ≤ 1` is plain fusion and always pays: the value is never written
///   and read back, and no op runs more often than before.
/// - `1 < E ≤ max_evaluations` (3) recomputes the value when it is cheap:
///   its op and the inline ops under it cost at most `recompute_ops` (12)
///   op units, an `f32x4` add, multiply, compare, select or cast being 1
///   and a divide or square root 4. `exp`, `log`, `tanh`, `sigmoid` (vector
///   polynomials of 20–40 instructions), `pow` (a call per element) and
///   `random` (two rounds of a 32-bit hash with `pmulld`s, about 25 units
///   measured) are never recomputed.
///
/// Why: storing a value costs a write and, per reading loop, a read of 4
/// bytes per element, which on this machine (2-core Zen 4, Cranelift's
/// 128-bit vectors) stream at about 4 op units each; recomputing costs
/// the expression again in every reader after the first, and its
/// operands are read by every reader instead. `cargo bench -p
/// nnc-codegen --bench group` measures a chain of `k` units over 4 MiB
/// read by 2 or 3 loops, stored against recomputed (median step, loaded
/// machine): recomputing takes 0.61–0.67× the time at `k` = 2–4, 0.70–0.85×
/// at 8, 0.89–0.94× at 12, and loses from 16 (1.10–1.21×, 1.4–1.7× at 24);
/// dropout's `random ≥ p` mask recomputed takes 1.4–1.6×. Past three
/// readers (or when broadcast into its readers) the arithmetic grows
/// faster than the traffic it saves, and a larger expression in every
/// reader also raises register pressure (16 vector registers). So the
/// max-pool backward mask (`cast(eq(cols, y))`, 2 units, read by the
/// count reduction and by the gradient's fold) and a bias add read by
/// `relu` and by its gradient (1 unit) are recomputed; dropout's random
/// numbers and batch norm's per-channel `1/sqrt(var + eps)` (broadcast
/// over the batch and positions) are stored.
#[derive(Debug, Clone, PartialEq)]
pub struct GroupConfig {
    /// Evaluations per element an inline value may take per step (see
    /// above); 1 never recomputes.
    pub max_evaluations: f64,
    /// Op units a recomputed value's expression may cost.
    pub recompute_ops: u32,
    /// Reductions, `fold` and `unfold` compute their operand in their loop.
    pub prologues: bool,
    /// Layout views of inline values, `random` and splat constants may be
    /// inline, and an inline value may be broadcast into its reader.
    pub views_and_leaves: bool,
    /// The most results one elementwise loop stores (1: one per loop).
    pub max_outputs: usize,
}

impl Default for GroupConfig {
    fn default() -> Self {
        GroupConfig::with(&InlineRule::FULL, fusion::MAX_OUTPUTS)
    }
}

impl GroupConfig {
    /// The first plan's rule: an elementwise value fuses into its only
    /// reader when that is elementwise of the same shape; one result per
    /// loop; reductions, windows and `random` read buffers.
    pub fn greedy() -> GroupConfig {
        GroupConfig::with(&InlineRule::GREEDY, 1)
    }

    fn with(rule: &InlineRule, max_outputs: usize) -> GroupConfig {
        GroupConfig {
            max_evaluations: rule.max_evaluations,
            recompute_ops: rule.recompute_units,
            prologues: rule.prologues,
            views_and_leaves: rule.views_and_leaves,
            max_outputs,
        }
    }
}

/// What the plan knows before grouping.
pub struct Facts<'a> {
    pub graph: &'a Graph,
    pub order: &'a [NodeId],
    pub shapes: &'a HashMap<NodeId, Vec<usize>>,
    /// Outputs and update values: they are stored.
    pub results: &'a HashSet<NodeId>,
    /// Values that must be stored: the plan could not view an inline value
    /// through a reshape (see `expr::BuildError::Compose`).
    pub forced: &'a HashSet<NodeId>,
    /// Windows with no loop of their own (staged into a matmul's kernel).
    pub no_loop: &'a HashSet<NodeId>,
}

/// The outcome: inline values, and the loops that store several results.
#[derive(Debug, Clone, Default)]
pub struct Grouping {
    /// Values with no buffer, computed inside every loop that reads them.
    pub inline: HashSet<NodeId>,
    /// Multi-output loops: the last member (the kernel's root) → all
    /// members in topological order, the root last.
    pub groups: HashMap<NodeId, Vec<NodeId>>,
    /// Members other than the root → their group's root.
    pub member_of: HashMap<NodeId, NodeId>,
}

pub(crate) fn is_layout(op: &Op) -> bool {
    op.class() == OpClass::View
}

impl GroupConfig {
    /// The inline half of this configuration, as `ir::fusion` states it.
    pub fn inline_rule(&self) -> InlineRule {
        InlineRule {
            max_evaluations: self.max_evaluations,
            recompute_units: self.recompute_ops,
            prologues: self.prologues,
            views_and_leaves: self.views_and_leaves,
        }
    }
}

/// Both rules of the module doc, as `ir::fusion` states them (the
/// optimizer's cost model applies the same).
pub fn group(f: &Facts, config: &GroupConfig) -> Grouping {
    let dag = Indexed::new(f);
    let inline = fusion::inline_values(&dag, &config.inline_rule());
    let mut grouping = Grouping {
        inline: f
            .order
            .iter()
            .zip(&inline)
            .filter_map(|(&n, &inline)| inline.then_some(n))
            .collect(),
        ..Grouping::default()
    };
    if config.max_outputs > 1 {
        for members in fusion::multi_output_loops(&dag, &inline, config.max_outputs) {
            let members: Vec<NodeId> = members.into_iter().map(|i| f.order[i]).collect();
            let [others @ .., root] = &members[..] else {
                continue;
            };
            for &m in others {
                grouping.member_of.insert(m, *root);
            }
            grouping.groups.insert(*root, members.clone());
        }
    }
    grouping
}

/// The plan's facts as `ir::fusion` and `ir::staging` read them: nodes in
/// schedule order, indexed.
pub(crate) struct Indexed<'a> {
    f: &'a Facts<'a>,
    operands: Vec<Vec<u32>>,
}

impl<'a> Indexed<'a> {
    pub(crate) fn new(f: &'a Facts<'a>) -> Indexed<'a> {
        let position: HashMap<NodeId, u32> = f
            .order
            .iter()
            .enumerate()
            .map(|(i, &n)| (n, i as u32))
            .collect();
        let operands = f
            .order
            .iter()
            .map(|&n| f.graph.operands(n).iter().map(|o| position[o]).collect())
            .collect();
        Indexed { f, operands }
    }
}

impl FusionDag for Indexed<'_> {
    fn nodes(&self) -> usize {
        self.f.order.len()
    }
    fn op(&self, i: usize) -> &Op {
        &self.f.graph.node(self.f.order[i]).op
    }
    fn shape(&self, i: usize) -> &[usize] {
        &self.f.shapes[&self.f.order[i]]
    }
    fn dtype(&self, i: usize) -> DType {
        self.f.graph.ty(self.f.order[i]).dtype
    }
    fn operands(&self, i: usize) -> &[u32] {
        &self.operands[i]
    }
    fn stored(&self, i: usize) -> bool {
        let n = self.f.order[i];
        self.f.results.contains(&n) || self.f.forced.contains(&n)
    }
    fn no_loop(&self, i: usize) -> bool {
        self.f.no_loop.contains(&self.f.order[i])
    }
}
