//! Bytes a graph's kernels move, counted the way the code generator's
//! kernel summaries count them (`codegen`'s `plan::summary`), so that the
//! model's bytes are the bytes of the kernels that are built:
//!
//! - a loop (an elementwise kernel, or a reduction, `fold` or `unfold`
//!   computing its operand) reads each distinct *leaf* of its inline tree
//!   once: a stored value seen through the views and implicit broadcasts
//!   between it and the loop, identified by the value, the start and the
//!   strides over the loop's index space, and counted as the elements
//!   that are distinct in memory (a broadcast dim counts once). Inline
//!   splat constants read nothing, random numbers their 4-byte key. A
//!   multi-output loop reads a leaf its members share once;
//! - any other kernel (a product, indexing, a join, a reduction of a
//!   summed product, a copying reshape) reads each operand's distinct
//!   elements, a summed product's operands in its place, and the image of
//!   each convolution column staged into its product; columns that are
//!   staged are never stored, so never read;
//! - a kernel writes its results (a product whose result is staged into a
//!   `fold` writes the `fold`'s instead).
//!
//! Every dtype the JIT compiles is 4 bytes wide.

use super::{DagNode, Placement};
use nnc_ir::fusion::OperandUse;
use nnc_ir::layout;
use nnc_ir::staging::StagedWindow;
use nnc_ir::{Op, OpClass};

/// How a loop's index maps to a node's: the layout op `n`, or the
/// implicit broadcast of an operand to node `n`'s shape.
#[derive(Debug, Clone, Copy)]
enum Xform {
    Layout(usize),
    Broadcast(usize),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Source {
    /// The stored value of this node.
    Buffer(usize),
    /// Random numbers of this stream and key node.
    Random { stream: u32, key: usize },
}

/// A leaf of one loop: its strides are `pool[span.0..span.1]`.
#[derive(Debug, Clone, Copy)]
struct Leaf {
    source: Source,
    offset: isize,
    span: (usize, usize),
}

/// Where each node's elements are, as the code generator views them.
pub(super) struct Views<'a> {
    /// Node `i`'s strides over its shape are `strides[span[i].0..span[i].1]`.
    pub strides: &'a [isize],
    pub span: &'a [(usize, usize)],
    /// Elements from the start of its buffer (a slice's view starts later).
    pub offset: &'a [isize],
    /// Never stored: staged columns, a product staged into a `fold`, and
    /// views of them.
    pub unstored: &'a [bool],
}

/// What the code generator decided about a candidate graph.
pub(super) struct Decisions<'a> {
    pub inline: &'a [bool],
    pub placement: &'a [Placement],
    /// Products summed into their reduction's kernel.
    pub summed: &'a [bool],
    pub staged: &'a [StagedWindow],
    /// Elementwise loops storing several results (members in topological
    /// order, the last one is the kernel).
    pub groups: &'a [Vec<usize>],
}

/// Reusable buffers, as [`bytes`] runs for every candidate graph.
#[derive(Debug, Default)]
pub struct Scratch {
    leaves: Vec<Leaf>,
    pool: Vec<isize>,
    chain: Vec<Xform>,
    current: Vec<isize>,
    next: Vec<isize>,
    /// The group each node is a member of, if any.
    group: Vec<Option<u32>>,
    /// Results a loop has computed so far (read from registers).
    computed: Vec<usize>,
}

/// Bytes read and written by the kernels of a candidate graph.
pub(super) fn bytes(nodes: &[DagNode], views: &Views, decided: &Decisions, s: &mut Scratch) -> f64 {
    s.group.clear();
    s.group.resize(nodes.len(), None);
    for (g, members) in decided.groups.iter().enumerate() {
        for &m in members {
            s.group[m] = Some(g as u32);
        }
    }
    let mut loops = Loops {
        nodes,
        views,
        inline: decided.inline,
        s,
    };
    let mut total = 0u64;
    for (i, node) in nodes.iter().enumerate() {
        if decided.placement[i] != Placement::Kernel {
            continue;
        }
        let facts = node.cost.facts;
        let operand = node.operands.first().map(|&o| o as usize);
        total += match facts.class {
            OpClass::Elementwise | OpClass::Generator => {
                let outputs: &[usize] = match loops.s.group[i] {
                    Some(g) => {
                        let members = &decided.groups[g as usize];
                        if members.last() != Some(&i) {
                            continue; // the group's last member runs it
                        }
                        members
                    }
                    None => std::slice::from_ref(&i),
                };
                loops.map(outputs)
            }
            OpClass::Reduction | OpClass::Window
                if matches!(facts.operand_use, OperandUse::Prologue | OperandUse::Window)
                    && operand.is_some_and(|o| !decided.summed[o]) =>
            {
                loops.operand(i)
            }
            OpClass::Leaf
            | OpClass::Constant
            | OpClass::View
            | OpClass::Reduction
            | OpClass::Contraction
            | OpClass::Window
            | OpClass::Indexing
            | OpClass::Join => own_kernel(nodes, views, decided, i),
            OpClass::Loop => loop_kernel(nodes, views, decided, i),
        };
    }
    total as f64
}

fn numel(shape: &[usize]) -> u64 {
    shape.iter().map(|&n| n as u64).product()
}

/// Elements of `(shape, strides)` distinct in memory.
pub(super) fn distinct(shape: &[usize], strides: &[isize]) -> u64 {
    if shape.contains(&0) {
        return 0;
    }
    shape
        .iter()
        .zip(strides)
        .filter(|(_, &s)| s != 0)
        .map(|(&n, _)| n as u64)
        .product()
}

/// A kernel that is not a loop over an inline tree: it reads its
/// operands' elements (`plan`'s `Body::Node`).
/// A loop: its operands read and results written once (every result node
/// of the loop, `first` the one that runs it), and its body's kernels'
/// traffic on every trip.
fn loop_kernel(nodes: &[DagNode], views: &Views, decided: &Decisions, first: usize) -> u64 {
    let key = |n: &DagNode| match &n.cost.op {
        Op::Scan { body, .. } => Some((body.fingerprint(), n.operands.to_vec())),
        _ => None,
    };
    let me = key(&nodes[first]);
    let others: u64 = nodes[first + 1..]
        .iter()
        .enumerate()
        .filter(|(j, n)| key(n) == me && !views.unstored[first + 1 + j])
        .map(|(_, n)| 4 * numel(&n.cost.dims))
        .sum();
    own_kernel(nodes, views, decided, first) + others + nodes[first].cost.loop_bytes as u64
}

fn own_kernel(nodes: &[DagNode], views: &Views, decided: &Decisions, root: usize) -> u64 {
    let dims = |n: usize| nodes[n].cost.dims.as_slice();
    let read = |n: usize| {
        if views.unstored[n] || decided.inline[n] {
            return 0;
        }
        let (a, b) = views.span[n];
        4 * distinct(dims(n), &views.strides[a..b])
    };
    let mut bytes = 0;
    let mut product = matches!(nodes[root].cost.op, Op::MatMul).then_some(root);
    for &o in nodes[root].operands {
        let o = o as usize;
        if decided.summed[o] {
            product = Some(o);
            bytes += nodes[o]
                .operands
                .iter()
                .map(|&x| read(x as usize))
                .sum::<u64>();
        } else {
            bytes += read(o);
        }
    }
    if !views.unstored[root] {
        bytes += 4 * numel(dims(root));
    }
    if let Some(m) = product {
        for w in decided.staged.iter().filter(|w| w.product == m) {
            bytes += if w.slot == 2 {
                4 * numel(dims(w.window))
            } else {
                let (a, b) = views.span[nodes[w.window].operands[0] as usize];
                let image = nodes[w.window].operands[0] as usize;
                4 * distinct(dims(image), &views.strides[a..b])
            };
        }
    }
    bytes
}

/// The loops of elementwise kernels and of kernels that compute their
/// operand (`plan`'s `Body::Map` and `Body::Operand`).
struct Loops<'a, 'b> {
    nodes: &'a [DagNode<'b>],
    views: &'a Views<'a>,
    inline: &'a [bool],
    s: &'a mut Scratch,
}

impl Loops<'_, '_> {
    fn dims(&self, n: usize) -> &[usize] {
        &self.nodes[n].cost.dims
    }

    /// An elementwise loop storing `outputs` (one shape).
    fn map(&mut self, outputs: &[usize]) -> u64 {
        self.start();
        for &o in outputs {
            self.own(o);
            self.s.computed.push(o);
        }
        self.leaf_bytes(outputs[0]) + 4 * numel(self.dims(outputs[0])) * outputs.len() as u64
    }

    /// The loop of a reduction, `fold` or `unfold` over its operand.
    fn operand(&mut self, root: usize) -> u64 {
        self.start();
        let operand = self.nodes[root].operands[0] as usize;
        self.value(operand);
        self.leaf_bytes(operand) + 4 * numel(self.dims(root))
    }

    fn start(&mut self) {
        self.s.leaves.clear();
        self.s.pool.clear();
        self.s.chain.clear();
        self.s.computed.clear();
    }

    /// Bytes of the loop's leaves, each seen over the loop's index space
    /// (the shape of node `space`).
    fn leaf_bytes(&self, space: usize) -> u64 {
        self.s
            .leaves
            .iter()
            .map(|l| match l.source {
                Source::Random { .. } => 4,
                Source::Buffer(_) => {
                    4 * distinct(self.dims(space), &self.s.pool[l.span.0..l.span.1])
                }
            })
            .sum()
    }

    /// `value(n)` of the plan's expression builder: `n` at the loop's
    /// element, through the current chain.
    fn value(&mut self, n: usize) {
        if self.s.chain.is_empty() && self.s.computed.contains(&n) {
            return;
        }
        if self.inline[n] {
            self.own(n);
        } else {
            let (a, b) = self.views.span[n];
            let offset = self.views.offset[n];
            self.s.current.clear();
            self.s.current.extend_from_slice(&self.views.strides[a..b]);
            self.leaf(Source::Buffer(n), n, offset);
        }
    }

    /// `n` computed by its own op.
    fn own(&mut self, n: usize) {
        let node = self.nodes[n];
        match &node.cost.op {
            Op::Const(_) => {}
            Op::Random { stream } => {
                self.s.current.clear();
                layout::push_row_major(&self.nodes[n].cost.dims, &mut self.s.current);
                let key = node.operands[0] as usize;
                self.leaf(
                    Source::Random {
                        stream: *stream,
                        key,
                    },
                    n,
                    0,
                );
            }
            _ if node.cost.facts.class == OpClass::View => {
                self.s.chain.push(Xform::Layout(n));
                self.value(node.operands[0] as usize);
                self.s.chain.pop();
            }
            _ => {
                for &o in node.operands {
                    let o = o as usize;
                    let broadcast = self.dims(o) != self.dims(n);
                    if broadcast {
                        self.s.chain.push(Xform::Broadcast(n));
                    }
                    self.value(o);
                    if broadcast {
                        self.s.chain.pop();
                    }
                }
            }
        }
    }

    /// Adds the leaf whose strides over node `n`'s shape are in
    /// `current`, taken through the chain to the loop's space, unless
    /// the loop reads it already.
    fn leaf(&mut self, source: Source, n: usize, mut offset: isize) {
        let broadcast = Op::Broadcast;
        let mut shape_of = n;
        for i in (0..self.s.chain.len()).rev() {
            let (op, to) = match self.s.chain[i] {
                Xform::Layout(l) => (&self.nodes[l].cost.op, l),
                Xform::Broadcast(u) => (&broadcast, u),
            };
            self.s.next.clear();
            let from = &self.nodes[shape_of].cost.dims;
            let to_dims = &self.nodes[to].cost.dims;
            if !layout::push_view_strides(op, from, &self.s.current, to_dims, &mut self.s.next) {
                // The plan stores such a value and plans again; no
                // example has one. Count the value as read whole.
                self.s.next.clear();
                layout::push_row_major(to_dims, &mut self.s.next);
            }
            offset += layout::slice_offset(op, &self.s.current);
            std::mem::swap(&mut self.s.current, &mut self.s.next);
            shape_of = to;
        }
        let s = &mut *self.s;
        let known = s.leaves.iter().any(|l| {
            l.source == source && l.offset == offset && s.pool[l.span.0..l.span.1] == s.current[..]
        });
        if !known {
            let start = s.pool.len();
            s.pool.extend_from_slice(&s.current);
            s.leaves.push(Leaf {
                source,
                offset,
                span: (start, s.pool.len()),
            });
        }
    }
}
