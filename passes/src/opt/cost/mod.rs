//! The cost model: FLOPs plus bytes moved, plus a weight per kernel launch,
//! over a whole graph, following the code generator's grouping of nodes
//! into kernels. It is an estimate for comparing equivalent graphs:
//!
//! - leaves and constants run no kernel (constants are filled once);
//! - reshape (where strides can express it, `ir::layout`), transpose,
//!   broadcast and slice are views: no kernel, no bytes (a reshape that
//!   strides cannot express is a copy kernel);
//! - which values their readers compute in their own loops (*fused*: no
//!   kernel, no write; each reader evaluates it and reads its operands) is
//!   decided by the rule the code generator's grouping uses,
//!   `ir::fusion::inline_values` with `InlineRule::FULL`: elementwise
//!   values, `random` and views of them, read by elementwise loops,
//!   reductions, `fold` and `unfold`, recomputed by up to three readers
//!   when cheap (the op table's `recompute` and `units`);
//! - everything else is a kernel that writes its result;
//! - in the totals of a whole graph ([`graph_cost`], what the report
//!   prints) elementwise loops merge into multi-output loops by
//!   `ir::fusion::multi_output_loops`, as in the code generator.
//!
//! - convolution columns that never exist whole (`ir::staging`, which the
//!   code generator's plan follows): a product summed over its batch runs
//!   in its reduction's kernel, and an `unfold` or `fold` staged into a
//!   product's kernel has no loop of its own (*absorbed*).
//!
//! Bytes are the code generator's count (`traffic`): each loop reads the
//! distinct elements of each distinct leaf of its inline tree once.
//!
//! Costs depend on users, so they are a property of the whole graph, not of
//! one node: this is why extraction evaluates whole candidate graphs.
//! Symbolic dims (the batch) count as [`NOMINAL_DIM`].

use nnc_ir::fusion::{
    self, inline_values_with, multi_output_loops, FusionDag, InlineRule, OpFacts, MAX_OUTPUTS,
};
use nnc_ir::layout;
use nnc_ir::staging;
use nnc_ir::{DType, Dim, Graph, NodeId, Op, OpClass, ScanBody, TensorType};
use std::collections::HashMap;
use std::fmt;

mod traffic;

/// The size assumed for a symbolic dim when counting elements.
pub const NOMINAL_DIM: f64 = 64.0;
/// Cost units per FLOP.
pub const FLOP: f64 = 1.0;
/// Cost units per byte read or written.
pub const BYTE: f64 = 1.0;
/// Cost units per kernel launch: the loop set-up, the pass over memory
/// that even a small kernel makes, and the scheduling step.
pub const LAUNCH: f64 = 2048.0;
/// Cost units per node, free ones included: between graphs that cost the
/// same, the smaller one wins (fewer views to plan, a shorter listing).
pub const NODE: f64 = 1.0;

/// How the code generator treats a node.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// Input, param or state: lives in its own buffer.
    Leaf,
    /// Constant or iota: filled once when the program is created.
    Constant,
    /// A view of its operand (reshape, transpose, broadcast, slice) where
    /// strides express it (`ir::layout`), a copy otherwise.
    View,
    /// Fusable into an elementwise consumer of the same shape.
    Elementwise,
    /// A kernel of its own.
    Kernel,
}

/// The cost-relevant facts of one node.
#[derive(Debug, Clone, PartialEq)]
pub struct NodeCost {
    pub op: Op,
    /// What the fusion rule asks of `op`, looked up once per candidate.
    pub facts: OpFacts,
    pub role: Role,
    pub flops: f64,
    /// Elements of the result.
    pub elems: f64,
    pub dtype: DType,
    pub bytes_per_elem: f64,
    /// The result's shape with symbolic dims at [`NOMINAL_DIM`].
    pub dims: Vec<usize>,
    /// A loop's bytes moved by its body's kernels over all its trips
    /// (the body costed as a graph of its own); 0 for every other op.
    pub loop_bytes: f64,
}

fn numel(shape: &[Dim]) -> f64 {
    shape
        .iter()
        .map(|d| match d {
            Dim::Const(n) => *n as f64,
            Dim::Sym(_) => NOMINAL_DIM,
        })
        .product()
}

/// A loop's trip count (a symbolic one at [`NOMINAL_DIM`]).
fn loop_trip(body: &ScanBody, operands: &[&TensorType]) -> f64 {
    operands
        .get(body.consts + body.carries)
        .and_then(|x| x.shape.get(body.axis))
        .map_or(1.0, |d| numel(std::slice::from_ref(d)))
}

/// The cost facts of `op` producing `ty` from operands of `operands` types:
/// the op table's class and cost units (`ir::OpInfo::units`) times the
/// work its class does.
pub fn node_cost(op: &Op, ty: &TensorType, operands: &[&TensorType]) -> NodeCost {
    let elems = numel(&ty.shape);
    let input_elems = operands.first().map_or(elems, |t| numel(&t.shape));
    let info = op.info();
    let (role, work) = match info.class {
        OpClass::Leaf => (Role::Leaf, 0.0),
        OpClass::Constant => (Role::Constant, 0.0),
        OpClass::View => (Role::View, 0.0),
        // `pow` calls out per element: the plan keeps it its own kernel.
        OpClass::Elementwise if !info.inline => (Role::Kernel, elems),
        OpClass::Elementwise => (Role::Elementwise, elems),
        OpClass::Generator => (Role::Elementwise, elems),
        OpClass::Reduction => (Role::Kernel, input_elems),
        OpClass::Contraction => {
            let k = operands
                .first()
                .and_then(|a| a.shape.last())
                .map_or(1.0, |d| numel(std::slice::from_ref(d)));
            (Role::Kernel, elems * k)
        }
        OpClass::Window | OpClass::Indexing | OpClass::Join => {
            (Role::Kernel, elems.max(input_elems))
        }
        // Its trip count times its body's cost (below), charged to the
        // loop's first result node (`later_results`).
        OpClass::Loop => (Role::Kernel, 0.0),
    };
    let (flops, loop_bytes) = match op {
        // The body costed as a graph of its own, once per trip.
        Op::Scan { body, .. } => {
            let trip = loop_trip(body, operands);
            let step = graph_cost(&body.graph);
            (trip * step.flops, trip * step.bytes)
        }
        _ => (f64::from(info.units) * work, 0.0),
    };
    NodeCost {
        op: op.clone(),
        facts: OpFacts::of(op),
        role,
        flops,
        loop_bytes,
        elems,
        dtype: ty.dtype,
        bytes_per_elem: if ty.dtype == DType::F64 { 8.0 } else { 4.0 },
        dims: ty
            .shape
            .iter()
            .map(|d| match d {
                Dim::Const(n) => *n,
                Dim::Sym(_) => NOMINAL_DIM as usize,
            })
            .collect(),
    }
}

/// Kernels, FLOPs and bytes of a graph under the model.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Totals {
    pub kernels: usize,
    pub flops: f64,
    pub bytes: f64,
    pub nodes: usize,
}

impl Totals {
    /// The single number extraction minimizes.
    pub fn cost(&self) -> f64 {
        self.flops * FLOP
            + self.bytes * BYTE
            + self.kernels as f64 * LAUNCH
            + self.nodes as f64 * NODE
    }
}

impl fmt::Display for Totals {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} kernels, {:.3} MFLOP, {:.3} MB moved",
            self.kernels,
            self.flops / 1e6,
            self.bytes / 1e6
        )
    }
}

/// One node of a DAG being costed: nodes are numbered in a topological
/// order, and operands refer to earlier numbers.
#[derive(Debug, Clone, Copy)]
pub struct DagNode<'a> {
    pub cost: &'a NodeCost,
    pub operands: &'a [u32],
    /// An output or update value: read after every kernel, never fused.
    pub result: bool,
}

/// What [`evaluate`] decides per node.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Placement {
    /// No kernel: a leaf, constant or free view.
    Free,
    /// Computed inside its only user's kernel.
    Fused,
    /// A kernel of its own (a copying reshape included).
    Kernel,
    /// Computed by another node's kernel, with no loop of its own
    /// (`ir::staging`): a product summed into its reduction, a window
    /// staged into its product's kernel.
    Absorbed,
}

/// Reusable buffers for [`evaluate`], which extraction calls thousands of
/// times.
#[derive(Debug, Default)]
pub struct Scratch {
    users: Vec<u32>,
    fusion: fusion::Scratch,
    readers: staging::Readers,
    /// Convolution columns staged into a product's kernel.
    staged: Vec<staging::StagedWindow>,
    /// Windows staged into a product's kernel (no loop of their own).
    no_loop: Vec<bool>,
    /// Nodes whose work another node's kernel does.
    absorbed: Vec<bool>,
    /// Products summed into their reduction's kernel.
    summed: Vec<bool>,
    /// Each node's strides as the code generator would view it
    /// (`ir::layout`), node `i`'s at `strides[span[i].0..span[i].1]`.
    strides: Vec<isize>,
    span: Vec<(usize, usize)>,
    source: Vec<isize>,
    /// Where each node's view starts in its buffer, in elements.
    offset: Vec<isize>,
    /// Values never stored (staged columns and views of them).
    unstored: Vec<bool>,
    traffic: traffic::Scratch,
    pub placement: Vec<Placement>,
}

impl Scratch {
    /// `nodes` as the fusion rule saw them in the last [`evaluate`].
    fn candidate<'a, 'b>(&'a self, nodes: &'a [DagNode<'b>]) -> Candidate<'a, 'b> {
        Candidate {
            nodes,
            no_loop: &self.no_loop,
        }
    }

    /// Bytes the kernels of the last [`evaluate`]d graph move, with these
    /// multi-output loops.
    fn bytes(&mut self, nodes: &[DagNode], groups: &[Vec<usize>]) -> f64 {
        let views = traffic::Views {
            strides: &self.strides,
            span: &self.span,
            offset: &self.offset,
            unstored: &self.unstored,
        };
        let decided = traffic::Decisions {
            inline: &self.fusion.inline,
            placement: &self.placement,
            summed: &self.summed,
            staged: &self.staged,
            groups,
        };
        traffic::bytes(nodes, &views, &decided, &mut self.traffic)
    }
}

/// Costs a DAG given in topological order.
pub fn evaluate(nodes: &[DagNode], s: &mut Scratch) -> Totals {
    let n = nodes.len();
    s.users.clear();
    s.users.resize(n, 0);
    for node in nodes {
        for (j, &o) in node.operands.iter().enumerate() {
            // Users are counted once however often they read the value.
            if !node.operands[..j].contains(&o) {
                s.users[o as usize] += 1;
            }
        }
    }
    // Convolution columns that never exist whole, then which values their
    // readers compute: the code generator's decisions.
    s.no_loop.clear();
    s.no_loop.resize(n, false);
    s.absorbed.clear();
    s.absorbed.resize(n, false);
    s.summed.clear();
    s.summed.resize(n, false);
    s.unstored.clear();
    s.unstored.resize(n, false);
    s.staged.clear();
    // Only windows (convolutions) and batched products (a weight shared
    // over a batch or a sequence, as in a recurrent layer's input
    // projection) make summed products or staged columns.
    if nodes.iter().any(|node| {
        node.cost.facts.class == OpClass::Window
            || (matches!(node.cost.op, Op::MatMul) && node.cost.dims.len() > 2)
    }) {
        let dag = Candidate {
            nodes,
            no_loop: &s.no_loop,
        };
        s.readers.fill(&dag);
        for product in staging::summed_products(&dag, &s.readers) {
            s.absorbed[product] = true;
            s.summed[product] = true;
        }
        s.staged.extend(staging::staged_windows(&dag, &s.readers));
        for w in &s.staged {
            s.no_loop[w.window] = true;
            s.absorbed[w.window] = true;
            // A fold's columns are the product's result, never stored.
            let unstored = if w.slot == 2 { w.product } else { w.window };
            s.unstored[unstored] = true;
        }
    }
    let dag = Candidate {
        nodes,
        no_loop: &s.no_loop,
    };
    inline_values_with(&dag, &InlineRule::FULL, &mut s.fusion);
    let inline = &s.fusion.inline;
    s.strides.clear();
    s.span.clear();
    s.offset.clear();
    s.placement.clear();
    let mut totals = Totals {
        nodes: n,
        ..Totals::default()
    };
    // The result nodes of one loop after its first: the first one's
    // kernel runs the loop (`later_results`), as the code generator's does.
    let later = later_results(nodes);
    for (i, node) in nodes.iter().enumerate() {
        let c = node.cost;
        let first = node.operands.first().map(|&o| o as usize);
        let start = s.strides.len();
        let mut offset = 0;
        let placement = match c.role {
            _ if s.absorbed[i] || later[i] => Placement::Absorbed,
            Role::Leaf | Role::Constant => Placement::Free,
            Role::View => {
                // The view's strides go after the others (its source's
                // copied out first, as they live in the same buffer).
                let viewed = first.is_some_and(|o| {
                    let (a, b) = s.span[o];
                    s.source.clear();
                    s.source.extend_from_slice(&s.strides[a..b]);
                    let src = &nodes[o].cost.dims;
                    offset = s.offset[o] + layout::slice_offset(&c.op, &s.source);
                    layout::push_view_strides(&c.op, src, &s.source, &c.dims, &mut s.strides)
                });
                if viewed {
                    // A view of a value never stored is never read.
                    s.unstored[i] = first.is_some_and(|o| s.unstored[o]);
                    Placement::Free
                } else {
                    // A reshape strides cannot express is a copy.
                    offset = 0;
                    Placement::Kernel
                }
            }
            Role::Elementwise if inline[i] => Placement::Fused,
            Role::Elementwise | Role::Kernel => Placement::Kernel,
        };
        s.placement.push(placement);
        if s.strides.len() == start {
            // Stored row-major (or computed by its readers, who see it so).
            layout::push_row_major(&c.dims, &mut s.strides);
        }
        s.span.push((start, s.strides.len()));
        s.offset.push(offset);
        if placement == Placement::Free || later[i] {
            continue;
        }
        // An absorbed node does its work in its reader's kernel; a fused
        // value is evaluated by each reader.
        let times = if placement == Placement::Fused {
            s.users[i].max(1) as f64
        } else {
            1.0
        };
        totals.flops += c.flops * times;
        if placement == Placement::Kernel {
            totals.kernels += 1;
        }
    }
    totals.bytes = s.bytes(nodes, &[]);
    totals
}

/// Per node: a result of a loop some earlier node (same body, same
/// operands) already runs.
pub(crate) fn later_results(nodes: &[DagNode]) -> Vec<bool> {
    let mut first: HashMap<(u64, &[u32]), usize> = HashMap::new();
    nodes
        .iter()
        .enumerate()
        .map(|(i, node)| match &node.cost.op {
            Op::Scan { body, .. } => {
                *first
                    .entry((body.fingerprint(), node.operands))
                    .or_insert(i)
                    != i
            }
            _ => false,
        })
        .collect()
}

/// A candidate graph as the fusion and staging rules read it.
struct Candidate<'a, 'b> {
    nodes: &'a [DagNode<'b>],
    no_loop: &'a [bool],
}

impl FusionDag for Candidate<'_, '_> {
    fn nodes(&self) -> usize {
        self.nodes.len()
    }
    fn op(&self, i: usize) -> &Op {
        &self.nodes[i].cost.op
    }
    fn shape(&self, i: usize) -> &[usize] {
        &self.nodes[i].cost.dims
    }
    fn dtype(&self, i: usize) -> DType {
        self.nodes[i].cost.dtype
    }
    fn numel(&self, i: usize) -> f64 {
        self.nodes[i].cost.elems.max(1.0)
    }
    fn facts(&self, i: usize) -> OpFacts {
        self.nodes[i].cost.facts
    }
    fn operands(&self, i: usize) -> &[u32] {
        self.nodes[i].operands
    }
    fn stored(&self, i: usize) -> bool {
        self.nodes[i].result
    }
    fn no_loop(&self, i: usize) -> bool {
        self.no_loop[i]
    }
}

type Dag = (Vec<NodeId>, Vec<NodeCost>, Vec<Vec<u32>>, Vec<bool>);

fn dag_of(graph: &Graph) -> Dag {
    let order = graph.topo_order();
    let position: HashMap<NodeId, u32> = order
        .iter()
        .enumerate()
        .map(|(i, &n)| (n, i as u32))
        .collect();
    let results: std::collections::HashSet<NodeId> = graph
        .outputs
        .iter()
        .map(|o| o.node)
        .chain(graph.updates.iter().map(|u| u.value))
        .collect();
    let mut costs = Vec::with_capacity(order.len());
    let mut operands = Vec::with_capacity(order.len());
    for &n in &order {
        let ops = graph.operands(n);
        let types: Vec<&TensorType> = ops.iter().map(|&o| graph.ty(o)).collect();
        costs.push(node_cost(&graph.node(n).op, graph.ty(n), &types));
        operands.push(ops.iter().map(|o| position[o]).collect::<Vec<u32>>());
    }
    let is_result = order.iter().map(|n| results.contains(n)).collect();
    (order, costs, operands, is_result)
}

fn dag_nodes<'a>(
    order: &[NodeId],
    costs: &'a [NodeCost],
    operands: &'a [Vec<u32>],
    results: &[bool],
) -> Vec<DagNode<'a>> {
    (0..order.len())
        .map(|i| DagNode {
            cost: &costs[i],
            operands: &operands[i],
            result: results[i],
        })
        .collect()
}

/// The cost of a whole graph under the model.
///
/// Unlike [`evaluate`], which extraction calls for every candidate, this
/// also merges elementwise loops into multi-output loops as the code
/// generator does (`ir::fusion::multi_output_loops`): one kernel for each
/// group. Candidates rarely differ there (it is mostly the optimizer's
/// update of each param), so extraction leaves it out.
pub fn graph_cost(graph: &Graph) -> Totals {
    let (order, costs, operands, results) = dag_of(graph);
    let nodes = dag_nodes(&order, &costs, &operands, &results);
    let mut scratch = Scratch::default();
    let mut totals = evaluate(&nodes, &mut scratch);
    let groups = multi_output_loops(
        &scratch.candidate(&nodes),
        &scratch.fusion.inline,
        MAX_OUTPUTS,
    );
    for group in &groups {
        totals.kernels -= group.len() - 1;
    }
    totals.bytes = scratch.bytes(&nodes, &groups) + update_bytes(graph, &order, &nodes, &scratch);
    totals
}

/// Bytes of the steps that write updates whose value no elementwise loop
/// computes straight into the state (the code generator's `Step::Update`):
/// the value read, the state written; a value that views state an update
/// overwrites (or a second update of one value) is copied aside first and
/// back after the updates (`Step::Copy` twice). A loop writing a state it
/// reads elsewhere also copies in the plan; the model assumes it does not.
fn update_bytes(graph: &Graph, order: &[NodeId], nodes: &[DagNode], s: &Scratch) -> f64 {
    let position: HashMap<NodeId, usize> = order.iter().enumerate().map(|(i, &n)| (n, i)).collect();
    let targets: std::collections::HashSet<&str> =
        graph.updates.iter().map(|u| u.target.as_str()).collect();
    let mut in_place = std::collections::HashSet::new();
    let mut bytes = 0;
    for u in &graph.updates {
        let Some(&i) = position.get(&u.value) else {
            continue;
        };
        let class = nodes[i].cost.facts.class;
        let looped = s.placement[i] == Placement::Kernel
            && matches!(class, OpClass::Elementwise | OpClass::Generator);
        if looped && in_place.insert(i) {
            continue;
        }
        // The node whose buffer the value lives in.
        let mut base = i;
        while s.placement[base] == Placement::Free && nodes[base].cost.facts.class == OpClass::View
        {
            base = nodes[base].operands[0] as usize;
        }
        let of_target = match &nodes[base].cost.op {
            Op::Param { name, .. } | Op::State { name, .. } => targets.contains(name.as_str()),
            _ => in_place.contains(&base),
        };
        let dims = &nodes[i].cost.dims;
        let (a, b) = s.span[i];
        let read = traffic::distinct(dims, &s.strides[a..b]);
        let written = dims.iter().map(|&d| d as u64).product::<u64>();
        bytes += 4 * if of_target {
            read + 3 * written
        } else {
            read + written
        };
    }
    bytes as f64
}

/// The multi-output loops the model assumes: groups of nodes stored by one
/// loop, in topological order.
pub fn multi_output_groups(graph: &Graph) -> Vec<Vec<NodeId>> {
    let (order, costs, operands, results) = dag_of(graph);
    let nodes = dag_nodes(&order, &costs, &operands, &results);
    let mut scratch = Scratch::default();
    evaluate(&nodes, &mut scratch);
    multi_output_loops(
        &scratch.candidate(&nodes),
        &scratch.fusion.inline,
        MAX_OUTPUTS,
    )
    .into_iter()
    .map(|g| g.into_iter().map(|i| order[i]).collect())
    .collect()
}

/// Where the model places each node of `graph` (in topological order).
pub fn placements(graph: &Graph) -> Vec<(NodeId, Placement)> {
    let (order, costs, operands, results) = dag_of(graph);
    let nodes = dag_nodes(&order, &costs, &operands, &results);
    let mut scratch = Scratch::default();
    evaluate(&nodes, &mut scratch);
    order.into_iter().zip(scratch.placement).collect()
}

/// The nodes the model computes inside their readers' loops (fused), by
/// the rule the code generator's grouping applies.
pub fn fused_nodes(graph: &Graph) -> Vec<NodeId> {
    placements(graph)
        .into_iter()
        .filter(|&(_, p)| p == Placement::Fused)
        .map(|(n, _)| n)
        .collect()
}
