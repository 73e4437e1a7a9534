//! Which values a reading loop computes in its own registers instead of
//! reading them from a buffer: the one answer the optimizer's cost model
//! (`passes`) and the code generator's kernel grouping (`codegen`) share.
//! Neither can see the other, so the rule lives here, over a plain indexed
//! DAG that each builds from what it knows (concrete shapes in codegen,
//! nominal ones in the cost model).
//!
//! A value is *inline* when it is not a result and every op that reads it
//! can compute it inside its own loop ([`OperandUse`]): an inline value
//! has no buffer and no kernel. Each reading loop evaluates it once per
//! element of its own index space, so a value is *evaluated* `E` times per
//! element per step: the sum, over its readers, of their size over its
//! size (a loop that broadcasts a `[C]` value over `[B, C, L]` evaluates
//! each element `B·L` times). `E ≤ 1` is plain fusion and always pays;
//! `1 < E ≤` [`InlineRule::max_evaluations`] recomputes the value when its
//! expression (its op and the inline ops under it) costs at most
//! [`InlineRule::recompute_units`] of the op table's units and every op in
//! it may be recomputed ([`crate::OpInfo::recompute`]). The measurements
//! behind the thresholds are on `codegen`'s `GroupConfig`.

use crate::op::{Op, OpClass};
use crate::types::DType;
use std::collections::HashSet;

/// How a reader's loop reads its operands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OperandUse {
    /// At the reader's own element, after broadcasting: an elementwise
    /// loop, which can evaluate the operand in registers.
    Elementwise,
    /// Once per operand element, as the prologue of the reader's loop: a
    /// reduction over what it reduces, a `fold` over the columns it adds.
    Prologue,
    /// Once per element of the reader's result: an `unfold` copying each
    /// image element once per kernel offset it falls under.
    Window,
    /// From a buffer: products, indexing, joins, `argmax`, `random`'s key,
    /// and views (a view of an inline value is itself inline).
    Buffer,
}

impl Op {
    /// How this op's loop reads its operands (the same for all of them).
    pub fn operand_use(&self) -> OperandUse {
        match self {
            Op::Reduce { .. } | Op::Fold { .. } => OperandUse::Prologue,
            Op::Unfold { .. } => OperandUse::Window,
            op => match op.class() {
                OpClass::Elementwise => OperandUse::Elementwise,
                OpClass::Leaf
                | OpClass::Constant
                | OpClass::View
                | OpClass::Reduction
                | OpClass::Contraction
                | OpClass::Window
                | OpClass::Indexing
                | OpClass::Join
                | OpClass::Generator
                | OpClass::Loop => OperandUse::Buffer,
            },
        }
    }

    /// Units of one evaluation when the value may be recomputed by a
    /// second or third reader (the op table's `units`), `None` when it is
    /// computed once at most.
    pub fn recompute_units(&self) -> Option<u32> {
        let info = self.info();
        info.recompute.then_some(info.units)
    }
}

/// What the rules ask of a node's op, looked up once: a caller that costs
/// many graphs over the same nodes (the optimizer's extraction) keeps these
/// instead of asking the op table again for every graph.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OpFacts {
    pub class: OpClass,
    pub operand_use: OperandUse,
    /// [`Op::inline`]: a reader may compute it.
    pub inline: bool,
    /// The table's `inline` column (an elementwise op that is not `pow`).
    pub loop_inline: bool,
    pub recompute_units: Option<u32>,
    pub random: bool,
}

impl OpFacts {
    pub fn of(op: &Op) -> OpFacts {
        OpFacts {
            class: op.class(),
            operand_use: op.operand_use(),
            inline: op.inline(),
            loop_inline: op.info().inline,
            recompute_units: op.recompute_units(),
            random: matches!(op, Op::Random { .. }),
        }
    }
}

/// The thresholds of the inline rule.
#[derive(Debug, Clone, PartialEq)]
pub struct InlineRule {
    /// Evaluations per element an inline value may take per step; 1 never
    /// recomputes.
    pub max_evaluations: f64,
    /// Units a recomputed value's expression may cost.
    pub recompute_units: u32,
    /// Reductions, `fold` and `unfold` compute their operand in their loop.
    pub prologues: bool,
    /// Views of inline values, `random` and splat constants may be inline,
    /// and an inline value may be broadcast into its reader.
    pub views_and_leaves: bool,
}

impl InlineRule {
    /// The code generator's rule (`codegen`'s `GroupConfig::default`), and
    /// so the cost model's.
    pub const FULL: InlineRule = InlineRule {
        max_evaluations: 3.0,
        recompute_units: 12,
        prologues: true,
        views_and_leaves: true,
    };

    /// The first plan's rule: an elementwise value fuses into its only
    /// reader when that is elementwise of the same shape.
    pub const GREEDY: InlineRule = InlineRule {
        max_evaluations: 1.0,
        recompute_units: 0,
        prologues: false,
        views_and_leaves: false,
    };
}

/// The DAG the rule runs on, as each caller holds it: nodes `0..len()` in
/// a topological order, operands referring to earlier indices.
pub trait FusionDag {
    /// How many nodes.
    fn nodes(&self) -> usize;
    fn op(&self, i: usize) -> &Op;
    /// The op's facts ([`OpFacts::of`], unless the caller keeps them).
    fn facts(&self, i: usize) -> OpFacts {
        OpFacts::of(self.op(i))
    }
    /// The result's shape (concrete, or with symbolic dims at a nominal
    /// size): equal shapes are compared, and sizes give evaluation counts.
    fn shape(&self, i: usize) -> &[usize];
    fn dtype(&self, i: usize) -> DType;
    /// Elements of the result (at least 1), which a caller that already
    /// knows it may give without a product over the shape.
    fn numel(&self, i: usize) -> f64 {
        numel(self.shape(i))
    }
    fn operands(&self, i: usize) -> &[u32];
    /// Stored whatever its readers: an output, an update, or a value the
    /// caller cannot compute inline for reasons of its own.
    fn stored(&self, i: usize) -> bool;
    /// A reader with no loop of its own (a window staged into a product's
    /// kernel), which therefore reads its operand from a buffer.
    fn no_loop(&self, i: usize) -> bool;
}

fn numel(shape: &[usize]) -> f64 {
    shape.iter().product::<usize>().max(1) as f64
}

const EPS: f64 = 1e-9;

/// Which nodes are inline. Readers are decided before what they read
/// (reverse topological order), so a value knows how often its readers
/// evaluate it; then, forward, a recomputed value whose expression grew
/// too costly is stored after all, and a view is inline exactly when what
/// it views is.
pub fn inline_values(dag: &(impl FusionDag + ?Sized), rule: &InlineRule) -> Vec<bool> {
    let mut scratch = Scratch::default();
    inline_values_with(dag, rule, &mut scratch);
    scratch.inline
}

/// Reusable buffers for [`inline_values_with`], which the cost model calls
/// for thousands of candidate graphs.
#[derive(Debug, Default)]
pub struct Scratch {
    start: Vec<usize>,
    fill: Vec<usize>,
    reader: Vec<u32>,
    evals: Vec<Option<f64>>,
    tree: Vec<u32>,
    /// The result of the last call: whether each node is inline.
    pub inline: Vec<bool>,
}

/// [`inline_values`] into `scratch.inline`, reusing its buffers.
pub fn inline_values_with(
    dag: &(impl FusionDag + ?Sized),
    rule: &InlineRule,
    scratch: &mut Scratch,
) {
    let n = dag.nodes();
    let Scratch {
        start,
        fill,
        reader,
        evals,
        tree,
        inline,
    } = scratch;
    // Readers of each node, each once, in topological order: node `i`'s
    // are `reader[start[i]..start[i + 1]]` (the cost model calls this for
    // thousands of candidate graphs, so no vector per node).
    start.clear();
    start.resize(n + 1, 0);
    for i in 0..n {
        for o in distinct(dag.operands(i)) {
            start[o + 1] += 1;
        }
    }
    for i in 0..n {
        start[i + 1] += start[i];
    }
    fill.clear();
    fill.extend_from_slice(&start[..n]);
    reader.clear();
    reader.resize(start[n], 0);
    for i in 0..n {
        for o in distinct(dag.operands(i)) {
            reader[fill[o]] = i as u32;
            fill[o] += 1;
        }
    }
    // Evaluations per element of every tentatively inline value.
    evals.clear();
    evals.resize(n, None);
    for i in (0..n).rev() {
        let facts = dag.facts(i);
        if dag.stored(i) || !candidate(&facts, rule) {
            continue;
        }
        let size = dag.numel(i);
        let mut e = 0.0;
        let mut ok = true;
        for &u in &reader[start[i]..start[i + 1]] {
            let u = u as usize;
            let reader = dag.facts(u);
            let ratio = dag.numel(u) / size;
            e += match (evals[u], reader.operand_use) {
                // `random` reads its key from a buffer when its loop starts.
                _ if reader.random => {
                    ok = false;
                    0.0
                }
                (Some(reader_evals), _) => reader_evals * ratio,
                (None, OperandUse::Elementwise) => {
                    ok &= rule.views_and_leaves || dag.shape(u) == dag.shape(i);
                    ratio
                }
                (None, OperandUse::Prologue) if rule.prologues => {
                    ok &= !dag.no_loop(u);
                    1.0
                }
                (None, OperandUse::Window) if rule.prologues => {
                    ok &= !dag.no_loop(u);
                    ratio
                }
                (None, _) => {
                    ok = false;
                    0.0
                }
            };
        }
        if !ok {
            continue;
        }
        let units = facts.recompute_units;
        let keep = facts.class == OpClass::View
            || units == Some(0)
            || e <= 1.0 + EPS
            || (e <= rule.max_evaluations + EPS && units.is_some());
        if keep {
            evals[i] = Some(e);
        }
    }
    // Forward: expression costs of recomputed values; views follow what
    // they view.
    inline.clear();
    inline.resize(n, false);
    tree.clear();
    tree.resize(n, 0);
    for i in 0..n {
        let Some(e) = evals[i] else { continue };
        let facts = dag.facts(i);
        let operands = dag.operands(i);
        if facts.class == OpClass::View {
            if let Some(&o) = operands.first() {
                inline[i] = inline[o as usize];
                tree[i] = tree[o as usize];
            }
            continue;
        }
        let cost = operands
            .iter()
            .filter(|&&o| inline[o as usize])
            .fold(facts.recompute_units.unwrap_or(u32::MAX), |acc, &o| {
                acc.saturating_add(tree[o as usize])
            });
        if e > 1.0 + EPS && cost > rule.recompute_units {
            continue;
        }
        inline[i] = true;
        tree[i] = cost;
    }
}

/// What one loop reads: stored values, those of them read at another
/// element than the loop's own somewhere (through a view or a broadcast),
/// and the inline values it evaluates.
#[derive(Debug, Default)]
struct Reads {
    stored: HashSet<usize>,
    displaced: HashSet<usize>,
    inline: HashSet<usize>,
}

/// The values loop `k` reads, following inline values down to stored ones.
fn reads_of(dag: &(impl FusionDag + ?Sized), inline: &[bool], k: usize) -> Reads {
    let mut r = Reads::default();
    let shape = dag.shape(k);
    let mut stack: Vec<(usize, bool)> = dag
        .operands(k)
        .iter()
        .map(|&o| (o as usize, true))
        .collect();
    let mut seen = HashSet::new();
    while let Some((n, direct)) = stack.pop() {
        if !seen.insert((n, direct)) {
            continue;
        }
        if inline[n] {
            r.inline.insert(n);
            let through = direct && dag.facts(n).class != OpClass::View;
            stack.extend(dag.operands(n).iter().map(|&o| (o as usize, through)));
        } else {
            r.stored.insert(n);
            if !direct || dag.shape(n) != shape {
                r.displaced.insert(n);
            }
        }
    }
    r
}

/// The most results one elementwise loop stores (the code generator's
/// default grouping, and the cost model's). Eight: an LSTM step's gates,
/// cell and state (seven results, with the values the gradient keeps) are
/// one loop; Adam's update needs three.
pub const MAX_OUTPUTS: usize = 8;

/// Elementwise loops of one shape that read the same data (a stored value
/// at least the loop's size, or an inline value), or where one reads another's
/// result at the same element, run as one loop storing several results:
/// Adam's new `m`, `v` and param are one pass over the gradient and the
/// three state tensors. Greedy in topological order; a group runs where its
/// last member did, and forms only when no kernel outside it reads a
/// member's result before that point, so the schedule stays a topological
/// order. Returns the groups of two or more loops, members in topological
/// order (the last is the kernel's root).
pub fn multi_output_loops(
    dag: &(impl FusionDag + ?Sized),
    inline: &[bool],
    max_outputs: usize,
) -> Vec<Vec<usize>> {
    let n = dag.nodes();
    // Every node with a buffer or a kernel, and what it reads: a stored
    // value's readers are these nodes (views included, conservatively at
    // their own position).
    let mut readers: Vec<Vec<usize>> = vec![Vec::new(); n];
    let mut loops: Vec<(usize, Reads)> = Vec::new();
    for k in 0..n {
        if inline[k] || dag.operands(k).is_empty() {
            continue;
        }
        let r = reads_of(dag, inline, k);
        for &s in &r.stored {
            readers[s].push(k);
        }
        let facts = dag.facts(k);
        if facts.class == OpClass::Elementwise && facts.loop_inline {
            loops.push((k, r));
        }
    }
    struct Group {
        members: Vec<usize>,
        stored: HashSet<usize>,
        inline: HashSet<usize>,
    }
    let mut groups: Vec<Group> = Vec::new();
    let mut group_of: Vec<Option<usize>> = vec![None; n];
    // Where a kernel runs: its group's last member, or itself.
    let at = |x: usize, group_of: &[Option<usize>], groups: &[Group]| match group_of[x] {
        Some(g) => groups[g].members.iter().copied().max().unwrap_or(x),
        None => x,
    };
    let size = |x: usize| dag.shape(x).iter().product::<usize>();
    for (k, r) in loops {
        let full = |x: &usize| size(*x) == size(k);
        // A stored value at least the loop's size read by both (slices of
        // one buffer count: an LSTM's four gates are slices of one
        // product, and one loop computes them all).
        let covering = |x: &usize| size(*x) >= size(k);
        let mut chosen = None;
        for (gi, grp) in groups.iter().enumerate().rev() {
            let root = grp.members[0];
            if dag.shape(root) != dag.shape(k) || grp.members.len() >= max_outputs {
                continue;
            }
            let reads_member = grp.members.iter().any(|m| r.stored.contains(m));
            let shares = reads_member
                || r.stored
                    .iter()
                    .any(|s| covering(s) && grp.stored.contains(s))
                || r.inline.iter().any(|s| full(s) && grp.inline.contains(s));
            if !shares || grp.members.iter().any(|m| r.displaced.contains(m)) {
                continue;
            }
            // Every other reader of a member must run after the merged loop.
            let legal = grp.members.iter().all(|&m| {
                readers[m]
                    .iter()
                    .all(|&x| x == k || group_of[x] == Some(gi) || at(x, &group_of, &groups) > k)
            });
            if legal {
                chosen = Some(gi);
                break;
            }
        }
        match chosen {
            Some(gi) => {
                let grp = &mut groups[gi];
                grp.members.push(k);
                grp.stored.extend(r.stored);
                grp.inline.extend(r.inline);
                group_of[k] = Some(gi);
            }
            None => {
                group_of[k] = Some(groups.len());
                groups.push(Group {
                    members: vec![k],
                    stored: r.stored,
                    inline: r.inline,
                });
            }
        }
    }
    groups
        .into_iter()
        .map(|g| g.members)
        .filter(|m| m.len() > 1)
        .collect()
}

/// Each operand once, in order.
fn distinct(operands: &[u32]) -> impl Iterator<Item = usize> + '_ {
    operands
        .iter()
        .enumerate()
        .filter(|&(j, o)| !operands[..j].contains(o))
        .map(|(_, &o)| o as usize)
}

/// Whether a node may be inline at all, whoever reads it.
fn candidate(facts: &OpFacts, rule: &InlineRule) -> bool {
    facts.inline && (facts.class == OpClass::Elementwise || rule.views_and_leaves)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::op::{BinaryOp, Init, ReduceOp, Ties, UnaryOp};

    /// A DAG held as a slice of nodes, as the tests write it.
    #[derive(Debug, Clone)]
    pub struct FusionNode<'a> {
        pub op: &'a Op,
        pub shape: &'a [usize],
        pub operands: &'a [u32],
        pub stored: bool,
        pub no_loop: bool,
    }

    impl FusionDag for [FusionNode<'_>] {
        fn nodes(&self) -> usize {
            self.len()
        }
        fn op(&self, i: usize) -> &Op {
            self[i].op
        }
        fn shape(&self, i: usize) -> &[usize] {
            self[i].shape
        }
        fn dtype(&self, _: usize) -> DType {
            DType::F32
        }
        fn operands(&self, i: usize) -> &[u32] {
            self[i].operands
        }
        fn stored(&self, i: usize) -> bool {
            self[i].stored
        }
        fn no_loop(&self, i: usize) -> bool {
            self[i].no_loop
        }
    }

    const FULL: InlineRule = InlineRule::FULL;

    /// `(op, shape, operands)` rows, the last one stored (a result).
    fn run(rows: &[(Op, Vec<usize>, Vec<u32>)], rule: &InlineRule) -> Vec<bool> {
        let last = rows.len() - 1;
        let nodes: Vec<FusionNode> = rows
            .iter()
            .enumerate()
            .map(|(i, (op, shape, operands))| FusionNode {
                op,
                shape,
                operands,
                stored: i == last,
                no_loop: false,
            })
            .collect();
        inline_values(&nodes[..], rule)
    }

    fn input() -> Op {
        Op::Param {
            name: "x".into(),
            init: Init::Zeros,
        }
    }

    #[test]
    fn a_value_read_once_is_inline() {
        let rows = [
            (input(), vec![8], vec![]),
            (Op::Unary(UnaryOp::Exp), vec![8], vec![0]),
            (Op::Unary(UnaryOp::Neg), vec![8], vec![1]),
        ];
        assert_eq!(run(&rows, &FULL), [false, true, false]);
    }

    #[test]
    fn cheap_values_are_recomputed_and_transcendentals_are_not() {
        let add = Op::Binary(BinaryOp::Add);
        let mul = Op::Binary(BinaryOp::Mul);
        for (op, inline) in [(add, true), (Op::Unary(UnaryOp::Exp), false)] {
            let rows = [
                (input(), vec![8], vec![]),
                (op, vec![8], vec![0]),
                (Op::Unary(UnaryOp::Neg), vec![8], vec![1]),
                (Op::Unary(UnaryOp::Abs), vec![8], vec![1]),
                (mul.clone(), vec![8], vec![2, 3]),
            ];
            let got = run(&rows, &FULL);
            assert_eq!(got[1], inline, "{:?}", rows[1].0);
        }
    }

    #[test]
    fn pow_is_never_inline_and_reductions_take_prologues() {
        let rows = [
            (input(), vec![8], vec![]),
            (Op::Binary(BinaryOp::Pow), vec![8], vec![0, 0]),
            (Op::Binary(BinaryOp::Mul), vec![8], vec![1, 1]),
            (
                Op::Reduce {
                    op: ReduceOp::Sum,
                    axes: vec![0],
                    keepdim: false,
                    ties: Ties::Split,
                },
                vec![],
                vec![2],
            ),
        ];
        assert_eq!(run(&rows, &FULL), [false, false, true, false]);
        let no_prologues = InlineRule {
            prologues: false,
            ..FULL
        };
        assert_eq!(run(&rows, &no_prologues), [false, false, false, false]);
    }

    #[test]
    fn broadcast_readers_count_every_evaluation() {
        // A [4] value read by a [64, 4] loop is evaluated 64 times per
        // element: stored, however cheap.
        let rows = [
            (input(), vec![4], vec![]),
            (Op::Unary(UnaryOp::Neg), vec![4], vec![0]),
            (Op::Binary(BinaryOp::Add), vec![64, 4], vec![1, 1]),
        ];
        assert_eq!(run(&rows, &FULL), [false, false, false]);
    }
}
