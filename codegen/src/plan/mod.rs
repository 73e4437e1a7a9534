//! Specialization and the static memory plan.
//!
//! Given a graph and a binding of its symbolic dims (`B = 128`), every node
//! gets a concrete shape and, when it is stored, a *view*: a base buffer,
//! an element offset and strides. Layout ops (reshape, transpose,
//! broadcast, slice) are views of their operand whenever strides can say
//! so, and cost nothing. The grouping pass (`group`) decides which values
//! are computed inline by the loops that read them and which elementwise
//! kernels share a loop; every other value is a kernel writing a fresh
//! contiguous buffer. Each loop's per-element work is an expression
//! (`expr`) over views of stored values. Buffers live in one arena at
//! offsets chosen by liveness, so intermediates reuse memory and a step
//! allocates nothing.
//!
//! This is the planning half: what to compute, where, and how (`matmul`:
//! which form a product runs as; `staging`: which columns never exist
//! whole; `split`: how a kernel's work splits over threads; `summary`:
//! FLOPs and bytes per kernel), all as data. It imports nothing from
//! Cranelift and nothing from `crate::emit` (checked by
//! `codegen/tests/layering.rs`); it may call the host kernels' pure rules
//! (`sgemm`, `threads`, `conv`).

mod arena;
pub mod expr;
pub mod group;
mod kind;
pub mod matmul;
pub mod scan;
pub mod split;
pub mod summary;
pub mod window;

pub use kind::{constant_words, value_word, Kind};
pub use nnc_ir::staging::STAGE_MIN_BYTES;

use crate::CodegenError;
use arena::{allocate, live_set_bound};
use expr::{BuildError, Expr, Source};
use group::{GroupConfig, Grouping};
use nnc_ir::fusion::OperandUse;
use nnc_ir::layout;
use nnc_ir::staging;
use nnc_ir::{DType, Dim, Graph, NodeId, Op, OpClass};
use std::collections::{HashMap, HashSet};

/// Where a view's elements live.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Base {
    /// A param or state tensor in the model's persistent state (by slot).
    State(usize),
    /// A buffer of this program's work arena.
    Work(usize),
}

/// A strided window onto a buffer, in elements.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct View {
    pub base: Base,
    pub offset: usize,
    pub shape: Vec<usize>,
    pub strides: Vec<isize>,
}

impl View {
    pub fn contiguous(base: Base, shape: Vec<usize>) -> View {
        let strides = row_major(&shape);
        View {
            base,
            offset: 0,
            shape,
            strides,
        }
    }

    pub fn numel(&self) -> usize {
        self.shape.iter().product()
    }

    pub fn is_contiguous(&self) -> bool {
        layout::is_contiguous(&self.shape, &self.strides)
    }
}

pub use nnc_ir::layout::row_major;

/// One param or state tensor of the model's persistent state.
#[derive(Debug, Clone, PartialEq)]
pub struct StateSlot {
    pub name: String,
    pub dtype: DType,
    pub shape: Vec<usize>,
    /// Byte offset in the state buffer.
    pub offset: usize,
}

/// The layout of the persistent state: every param and state tensor the
/// programs of a model mention, at fixed offsets, shared by all programs
/// (and all batch sizes) of that model.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct StateLayout {
    pub slots: Vec<StateSlot>,
    pub bytes: usize,
}

impl StateLayout {
    /// Lays out the params and state leaves of `graphs` (the training step
    /// mentions them all; later graphs may add none).
    pub fn of(graphs: &[&Graph]) -> Result<StateLayout, CodegenError> {
        let mut layout = StateLayout::default();
        for g in graphs {
            for id in g.topo_order() {
                let node = g.node(id);
                let name = match &node.op {
                    Op::Param { name, .. } | Op::State { name, .. } => name,
                    _ => continue,
                };
                if layout.slot(name).is_some() {
                    continue;
                }
                let shape = concrete(&node.ty.shape, &HashMap::new()).map_err(|_| {
                    CodegenError::new(format!("`{name}` has a symbolic shape {}", node.ty))
                })?;
                check_dtype(node.ty.dtype, name)?;
                let bytes = align(shape.iter().product::<usize>() * 4);
                layout.slots.push(StateSlot {
                    name: name.clone(),
                    dtype: node.ty.dtype,
                    shape,
                    offset: layout.bytes,
                });
                layout.bytes += bytes;
            }
        }
        Ok(layout)
    }

    pub fn slot(&self, name: &str) -> Option<usize> {
        self.slots.iter().position(|s| s.name == name)
    }
}

/// The JIT stores every element in 4 bytes: f32, i32, i8 and u8 as i32
/// values in their range, and bool as i32 0/1.
fn check_dtype(dtype: DType, what: &str) -> Result<(), CodegenError> {
    match dtype {
        DType::F32 | DType::I32 | DType::I8 | DType::U8 | DType::Bool => Ok(()),
        DType::F64 => Err(CodegenError::new(format!(
            "`{what}` is f64; the JIT computes in f32, i32 and bool (use --backend interp for f64)"
        ))),
    }
}

/// Buffers are 64-byte aligned: whole cache lines, and `f32x4` loads never
/// straddle them.
pub const ALIGN: usize = 64;

fn align(bytes: usize) -> usize {
    bytes.div_ceil(ALIGN).max(1) * ALIGN
}

/// The concrete sizes of `shape` (`ir::symbols::resolve`); the error
/// names the unbound symbol.
pub fn concrete(shape: &[Dim], bindings: &HashMap<String, usize>) -> Result<Vec<usize>, String> {
    nnc_ir::symbols::resolve(shape, bindings).map_err(|e| e.symbol)
}

/// What the schedule does, in order.
#[derive(Debug, Clone, PartialEq)]
pub enum Step {
    /// Run kernel `k` of [`Plan::kernels`].
    Kernel(usize),
    /// Copy a node's value into a state slot (an optimizer update).
    Update { slot: usize, value: NodeId },
    /// Copy `src` into `dst` (same shape): stages an update value that is a
    /// view of state another update writes, so every update reads the
    /// state from before the step.
    Copy { src: View, dst: View, dtype: DType },
}

/// A work-arena buffer.
#[derive(Debug, Clone, PartialEq)]
pub struct Buffer {
    pub bytes: usize,
    /// Byte offset in the work arena, assigned by liveness.
    pub offset: usize,
}

/// One compiled function of the schedule.
#[derive(Debug, Clone, PartialEq)]
pub struct Kernel {
    /// The node it is scheduled as: its last result in topological order.
    pub root: NodeId,
    pub body: Body,
}

/// What a kernel's code does.
#[derive(Debug, Clone, PartialEq)]
pub enum Body {
    /// One elementwise loop storing `outputs` (all of one shape; the
    /// expression's outputs in the same order).
    Map { outputs: Vec<NodeId>, expr: Expr },
    /// The root's reduction, `fold` or `unfold`, over its operand computed
    /// per element by `expr` (a plain read when the operand is stored).
    Operand(Expr),
    /// The root's own kernel over stored operands: matmuls (staged or
    /// summed into their `reduce_sum`), gather, scatter, concat, argmax,
    /// and the copy of a reshape that no view expresses.
    Node,
    /// A whole `scan` loop (every result of it the graph reads): the body's
    /// own plan run once per trip (`scan`).
    Scan(Box<scan::ScanPlan>),
}

#[derive(Debug, Clone, PartialEq)]
pub struct Plan {
    pub views: HashMap<NodeId, View>,
    pub buffers: Vec<Buffer>,
    pub arena_bytes: usize,
    /// The sum of all buffer sizes: what the arena would need without reuse.
    pub unshared_bytes: usize,
    /// The most bytes of buffers live at one point of the schedule: a lower
    /// bound on any arena for this schedule.
    pub live_bytes: usize,
    pub kernels: Vec<Kernel>,
    pub steps: Vec<Step>,
    /// Constants and iotas, filled once when the program is created.
    pub constants: Vec<NodeId>,
    pub inputs: Vec<(String, NodeId)>,
    pub outputs: Vec<(String, NodeId)>,
    /// Nodes computed inside other kernels: they have no buffer and no
    /// kernel of their own. Inline values are evaluated in registers by
    /// every loop that reads them (`group`); a matmul summed over batch
    /// dims by its only user accumulates straight into that `reduce_sum`'s
    /// result (`summed_products`).
    pub fused: HashSet<NodeId>,
    /// Matmul operands (slot `0`: `a`, `1`: `b`) and results (`2`) that
    /// are batches of unfolded planes and never exist whole; see
    /// [`Staged`]. Keyed by (matmul, slot).
    pub staged: HashMap<(NodeId, usize), Staged>,
    /// The most tasks a kernel of this plan splits into (the thread count
    /// when it was planned): each staging scratch has one slice per task.
    pub tasks: usize,
}

/// A matmul operand that is a view of an `unfold`, or a matmul result that
/// only a `fold` reads (through reshapes): the convolution pattern. The
/// matmul's kernel unfolds, for each batch index, just the planes (`[n, c]`
/// blocks of the unfolded `[N, C, *kernel, *out]`) that index's matrix
/// covers into a scratch buffer and multiplies from there, or multiplies
/// into the scratch and folds it into the `fold`'s result. Columns of a
/// whole batch are as large as the image times the kernel size (15 MiB for
/// the first conv of a CIFAR net at batch 64), so stored whole they stream
/// through memory on every write and read; a batch index's planes (a few
/// hundred KiB) stay in cache between the unfold and the product. The
/// `unfold` then has no buffer and no kernel (each matmul reading it redoes
/// its share, which is cheaper than a trip to memory), the `fold` no kernel.
#[derive(Debug, Clone, PartialEq)]
pub struct Staged {
    /// The `unfold` the operand views, or the `fold` the result feeds.
    pub window: NodeId,
    /// Consecutive planes, all of one sample, per batch index.
    pub planes: usize,
    /// The work buffer that holds them: [`Plan::tasks`] slices of
    /// `stride` bytes, one per task of a split kernel.
    pub scratch: usize,
    pub stride: usize,
}

/// Values read after every kernel has run: outputs and update values.
pub(crate) fn results(graph: &Graph) -> HashSet<NodeId> {
    graph
        .outputs
        .iter()
        .map(|o| o.node)
        .chain(graph.updates.iter().map(|u| u.value))
        .collect()
}

/// The view a layout op makes of `src` (`ir::layout::view_strides`):
/// reshape (when strides can express it), transpose, broadcast and slice;
/// `None` for other ops and for reshapes that need a copy.
pub(crate) fn view_of(op: &Op, src: &View, shape: Vec<usize>) -> Option<View> {
    let strides = layout::view_strides(op, &src.shape, &src.strides, &shape)?;
    Some(View {
        base: src.base,
        offset: (src.offset as isize + layout::slice_offset(op, &src.strides)) as usize,
        shape,
        strides,
    })
}

/// Batch strides of a matmul operand or result `v`, aligned to the
/// result's batch dims `batch` (0 where `v` is broadcast).
pub fn batch_strides(v: &View, batch: &[usize]) -> Vec<isize> {
    staging::batch_strides(&v.shape, &v.strides, batch)
}

/// Why planning stopped: a value to store before trying again, or an error.
enum Stop {
    Store(NodeId),
    Fail(CodegenError),
}

impl From<CodegenError> for Stop {
    fn from(e: CodegenError) -> Stop {
        Stop::Fail(e)
    }
}

impl From<BuildError> for Stop {
    fn from(e: BuildError) -> Stop {
        match e {
            BuildError::Compose(l) => Stop::Store(l),
            BuildError::Internal(m) => {
                Stop::Fail(CodegenError::new(format!("internal error: {m}")))
            }
        }
    }
}

/// The plan with the JIT's grouping rule ([`GroupConfig::default`]).
pub fn plan(
    graph: &Graph,
    bindings: &HashMap<String, usize>,
    state: &StateLayout,
) -> Result<Plan, CodegenError> {
    plan_with(graph, bindings, state, &GroupConfig::default())
}

/// The plan with the grouping rule `config`.
pub fn plan_with(
    graph: &Graph,
    bindings: &HashMap<String, usize>,
    state: &StateLayout,
    config: &GroupConfig,
) -> Result<Plan, CodegenError> {
    let order = graph.topo_order();
    let mut shapes = HashMap::new();
    for &id in &order {
        let node = graph.node(id);
        let shape = concrete(&node.ty.shape, bindings).map_err(|sym| {
            CodegenError::new(format!("no size is bound for the symbolic dim `{sym}`"))
        })?;
        check_dtype(node.ty.dtype, node.op.mnemonic())?;
        shapes.insert(id, shape);
    }
    let results = results(graph);
    let (staged, summed) = {
        let none = HashSet::new();
        let facts = group::Facts {
            graph,
            order: &order,
            shapes: &shapes,
            results: &results,
            forced: &none,
            no_loop: &none,
        };
        let dag = group::Indexed::new(&facts);
        let readers = staging::Readers::of(&dag);
        let staged: HashMap<(NodeId, usize), (NodeId, usize)> =
            staging::staged_windows(&dag, &readers)
                .into_iter()
                .map(|s| ((order[s.product], s.slot), (order[s.window], s.planes)))
                .collect();
        let summed: HashSet<NodeId> = staging::summed_products(&dag, &readers)
            .into_iter()
            .map(|n| order[n])
            .collect();
        (staged, summed)
    };
    let no_loop: HashSet<NodeId> = staged.values().map(|&(w, _)| w).collect();
    // Values that must be stored because an inline one could not be viewed
    // through a reshape: each retry stores one more, so this ends.
    let mut forced = HashSet::new();
    loop {
        let facts = group::Facts {
            graph,
            order: &order,
            shapes: &shapes,
            results: &results,
            forced: &forced,
            no_loop: &no_loop,
        };
        let grouping = group::group(&facts, config);
        let planner = Planner {
            graph,
            state,
            order: &order,
            shapes: &shapes,
            results: &results,
            staged: &staged,
            summed: &summed,
            grouping: &grouping,
            config,
        };
        match planner.plan() {
            Ok(plan) => return Ok(plan),
            Err(Stop::Fail(e)) => return Err(e),
            Err(Stop::Store(reshape)) => {
                // Store the value under the reshape (below any views).
                let mut n = graph.operands(reshape)[0];
                while group::is_layout(&graph.node(n).op) {
                    n = graph.operands(n)[0];
                }
                if !forced.insert(n) {
                    return Err(CodegenError::new(
                        "internal error: a stored value still cannot be viewed",
                    ));
                }
            }
        }
    }
}

struct Planner<'a> {
    graph: &'a Graph,
    state: &'a StateLayout,
    order: &'a [NodeId],
    shapes: &'a HashMap<NodeId, Vec<usize>>,
    results: &'a HashSet<NodeId>,
    staged: &'a HashMap<(NodeId, usize), (NodeId, usize)>,
    summed: &'a HashSet<NodeId>,
    grouping: &'a Grouping,
    /// For the bodies of loops, planned by the same rule.
    config: &'a GroupConfig,
}

impl Planner<'_> {
    fn plan(&self) -> Result<Plan, Stop> {
        let (graph, state) = (self.graph, self.state);
        let position: HashMap<NodeId, usize> = self
            .order
            .iter()
            .enumerate()
            .map(|(i, &n)| (n, i))
            .collect();
        // The nodes of one loop (same body, same operands) are one kernel,
        // scheduled at the first of them: every reader of any comes later.
        let mut loops: HashMap<(u64, Vec<NodeId>), Vec<NodeId>> = HashMap::new();
        let mut loop_root: HashMap<NodeId, NodeId> = HashMap::new();
        for &id in self.order {
            if let Op::Scan { body, .. } = &graph.node(id).op {
                let members = loops
                    .entry((body.fingerprint(), graph.operands(id)))
                    .or_default();
                loop_root.insert(id, *members.first().unwrap_or(&id));
                members.push(id);
            }
        }
        let root_of = |n: NodeId| {
            loop_root
                .get(&n)
                .or_else(|| self.grouping.member_of.get(&n))
                .copied()
                .unwrap_or(n)
        };
        // Where the kernel that computes `n` runs (a summed matmul: in its
        // reduction's).
        let kernel_at = |n: NodeId| -> usize {
            match graph.users(n).as_slice() {
                [user] if self.summed.contains(&n) => position[user],
                _ => position[&root_of(n)],
            }
        };
        let mut fused: HashSet<NodeId> = self.grouping.inline.clone();
        fused.extend(self.summed);
        // No buffer: staged unfolds and matmuls whose result is staged. No
        // kernel: staged unfolds and folds.
        let mut virtual_nodes: HashSet<NodeId> = HashSet::new();
        let mut no_kernel: HashSet<NodeId> = HashSet::new();
        // A staged fold's result is written by the matmul's kernel.
        let mut written_at: HashMap<NodeId, usize> = HashMap::new();
        for (&(m, slot), &(w, _)) in self.staged {
            no_kernel.insert(w);
            if slot == 2 {
                virtual_nodes.insert(m);
                written_at.insert(w, kernel_at(m));
            } else {
                virtual_nodes.insert(w);
            }
        }

        let mut views: HashMap<NodeId, View> = HashMap::new();
        let mut buffers: Vec<Buffer> = Vec::new();
        let mut constants = Vec::new();
        let mut inputs = Vec::new();
        // Per buffer: kept for the whole step (inputs, constants), and the
        // position of the kernel that writes it.
        let mut pinned: Vec<bool> = Vec::new();
        let mut born: Vec<usize> = Vec::new();
        let mut roots: Vec<NodeId> = Vec::new();
        for &id in self.order {
            if fused.contains(&id) {
                continue;
            }
            let birth = written_at
                .get(&id)
                .copied()
                .unwrap_or_else(|| position[&root_of(id)]);
            let mut new_buffer = |shape: &[usize], pin: bool| {
                // A virtual node's views only locate elements (for staging).
                let bytes = if virtual_nodes.contains(&id) {
                    0
                } else {
                    align(shape.iter().product::<usize>() * 4)
                };
                buffers.push(Buffer { bytes, offset: 0 });
                pinned.push(pin);
                born.push(if pin { 0 } else { birth });
                Base::Work(buffers.len() - 1)
            };
            let node = graph.node(id);
            let shape = self.shapes[&id].clone();
            let layout = match graph.operands(id).first() {
                Some(o) if group::is_layout(&node.op) => {
                    let src = views.get(o).ok_or_else(|| {
                        CodegenError::new("internal error: a view of a value with no buffer")
                    })?;
                    view_of(&node.op, src, shape.clone())
                }
                _ => None,
            };
            let view = match (&node.op, layout) {
                (_, Some(view)) => view,
                (Op::Param { name, .. } | Op::State { name, .. }, None) => {
                    let slot = state.slot(name).ok_or_else(|| {
                        CodegenError::new(format!("`{name}` is not in the model's state"))
                    })?;
                    if state.slots[slot].shape != shape {
                        return Err(CodegenError::new(format!("`{name}` changed shape")).into());
                    }
                    View::contiguous(Base::State(slot), shape)
                }
                (Op::Input { name }, None) => {
                    inputs.push((name.clone(), id));
                    View::contiguous(new_buffer(&shape, true), shape)
                }
                (Op::Const(_) | Op::Iota { .. }, None) => {
                    constants.push(id);
                    View::contiguous(new_buffer(&shape, true), shape)
                }
                _ => {
                    if !no_kernel.contains(&id) && root_of(id) == id {
                        roots.push(id);
                    }
                    View::contiguous(new_buffer(&shape, false), shape)
                }
            };
            views.insert(id, view);
        }

        // Each kernel's code, and the stored values it reads.
        let mut kernels = Vec::new();
        let mut reads: Vec<Vec<NodeId>> = Vec::new();
        {
            let builder = expr::Builder {
                graph,
                views: &views,
                shapes: self.shapes,
                inline: &self.grouping.inline,
            };
            for &root in &roots {
                let op = &graph.node(root).op;
                let operands = graph.operands(root);
                let body = match op.class() {
                    OpClass::Elementwise | OpClass::Generator => {
                        let outputs = match self.grouping.groups.get(&root) {
                            Some(members) => members.clone(),
                            None => vec![root],
                        };
                        Body::Map {
                            expr: builder.map(&outputs)?,
                            outputs,
                        }
                    }
                    // A reduction or window that reads its operand in a
                    // loop computes it there; `argmax` and a reduction of a
                    // product summed into it are kernels of their own.
                    OpClass::Reduction | OpClass::Window => match op.operand_use() {
                        OperandUse::Prologue | OperandUse::Window
                            if !self.summed.contains(&operands[0]) =>
                        {
                            Body::Operand(builder.operand(operands[0])?)
                        }
                        OperandUse::Prologue
                        | OperandUse::Window
                        | OperandUse::Elementwise
                        | OperandUse::Buffer => Body::Node,
                    },
                    OpClass::Leaf
                    | OpClass::Constant
                    | OpClass::View
                    | OpClass::Contraction
                    | OpClass::Indexing
                    | OpClass::Join => Body::Node,
                    OpClass::Loop => {
                        let members = &loops[&(
                            match op {
                                Op::Scan { body, .. } => body.fingerprint(),
                                _ => 0,
                            },
                            operands.clone(),
                        )];
                        let shapes: Vec<Vec<usize>> =
                            operands.iter().map(|o| self.shapes[o].clone()).collect();
                        let (body, sub, trip) =
                            scan::plan_body(graph, members, &shapes, self.config)?;
                        // The body's constants are written into its region
                        // once, when the program is compiled, so the region
                        // is the body's alone for the whole step (pinned):
                        // no other buffer may reuse it between one run of
                        // the loop and the next. Carry staging lives while
                        // the loop's step runs.
                        let mut scratch = |bytes: usize, pin: bool| {
                            buffers.push(Buffer { bytes, offset: 0 });
                            pinned.push(pin);
                            born.push(if pin { 0 } else { position[&root] });
                            buffers.len() - 1
                        };
                        let region = scratch(scan::region_bytes(&sub), true);
                        let mut plan = scan::ScanPlan {
                            body,
                            plan: sub,
                            region,
                            trip,
                            members: members
                                .iter()
                                .map(|&m| match graph.node(m).op {
                                    Op::Scan { result, .. } => (result, m),
                                    _ => (usize::MAX, m),
                                })
                                .collect(),
                            staging: Vec::new(),
                        };
                        let carries = plan.body.carries;
                        let consts = plan.body.consts;
                        let mut written = Vec::new();
                        for k in 0..carries {
                            if !plan.carry_kept(k)? {
                                written.push(plan.input(consts + k)?.base);
                            }
                        }
                        for k in 0..carries {
                            let out = plan.output(k)?;
                            let staged = !plan.carry_kept(k)? && written.contains(&out.base);
                            let shape = out.shape.clone();
                            plan.staging.push(staged.then(|| {
                                View::contiguous(
                                    Base::Work(scratch(
                                        align(shape.iter().product::<usize>() * 4),
                                        false,
                                    )),
                                    shape,
                                )
                            }));
                        }
                        Body::Scan(Box::new(plan))
                    }
                };
                reads.push(match &body {
                    Body::Map { expr, .. } | Body::Operand(expr) => leaf_nodes(expr),
                    Body::Node => self.node_reads(root),
                    Body::Scan(_) => operands.clone(),
                });
                kernels.push(Kernel { root, body });
            }
        }

        // Updates computed straight into their state slot.
        let kernel_pos: Vec<usize> = kernels.iter().map(|k| position[&k.root]).collect();
        let mut in_place: HashMap<NodeId, usize> = HashMap::new();
        for u in &graph.updates {
            let Some(slot) = state.slot(&u.target) else {
                continue;
            };
            let Some(k) = kernels.iter().position(
                |k| matches!(&k.body, Body::Map { outputs, .. } if outputs.contains(&u.value)),
            ) else {
                continue;
            };
            if in_place.contains_key(&u.value)
                || graph.ty(u.value).dtype != state.slots[slot].dtype
                || self.shapes[&u.value] != state.slots[slot].shape
                || !self.may_overwrite(slot, k, &kernels, &reads, &kernel_pos, &views)
            {
                continue;
            }
            let Base::Work(b) = views[&u.value].base else {
                continue;
            };
            in_place.insert(u.value, slot);
            retarget(&mut views, &mut kernels, Base::Work(b), Base::State(slot));
            buffers[b].bytes = 0;
        }

        for o in &graph.outputs {
            if !views.contains_key(&o.node) {
                return Err(CodegenError::new(format!(
                    "output `{}` is not a node of the graph",
                    o.name
                ))
                .into());
            }
        }
        let mut steps: Vec<Step> = (0..kernels.len()).map(Step::Kernel).collect();
        // Results leave the program contiguous: copy any that are views.
        let outputs: Vec<(String, NodeId)> = graph
            .outputs
            .iter()
            .map(|o| (o.name.clone(), o.node))
            .collect();
        let mut targets = Vec::new();
        for u in &graph.updates {
            let slot = state.slot(&u.target).ok_or_else(|| {
                CodegenError::new(format!(
                    "update of `{}`, which is not in the state",
                    u.target
                ))
            })?;
            targets.push(slot);
        }
        let mut writes = Vec::new();
        for (u, &slot) in graph.updates.iter().zip(&targets) {
            if in_place.get(&u.value) == Some(&slot) {
                continue; // its kernel wrote the slot
            }
            let src = views
                .get(&u.value)
                .ok_or_else(|| CodegenError::new("internal error: an update with no buffer"))?
                .clone();
            match src.base {
                Base::State(s) if targets.contains(&s) => {
                    // Copied aside before any update writes the state.
                    buffers.push(Buffer {
                        bytes: align(src.numel() * 4),
                        offset: 0,
                    });
                    pinned.push(true);
                    born.push(0);
                    let staged = View::contiguous(Base::Work(buffers.len() - 1), src.shape.clone());
                    let dtype = graph.ty(u.value).dtype;
                    let dst = View::contiguous(Base::State(slot), state.slots[slot].shape.clone());
                    steps.push(Step::Copy {
                        src,
                        dst: staged.clone(),
                        dtype,
                    });
                    writes.push(Step::Copy {
                        src: staged,
                        dst,
                        dtype,
                    });
                }
                _ => writes.push(Step::Update {
                    slot,
                    value: u.value,
                }),
            }
        }
        steps.extend(writes);

        // Staging scratch, live only while the matmul's kernel runs; one
        // slice per task when the kernel splits over the thread pool.
        let tasks = crate::threads::threads().max(1);
        let mut staged = HashMap::new();
        let mut keys: Vec<&(NodeId, usize)> = self.staged.keys().collect();
        keys.sort_by_key(|&&(m, slot)| (position[&m], slot));
        for &(m, slot) in keys {
            let (window, planes) = self.staged[&(m, slot)];
            let cols = if slot == 2 {
                graph.operands(window)[0]
            } else {
                window
            };
            let plane: usize = self.shapes[&cols][2..].iter().product();
            let stride = align(planes * plane * 4);
            buffers.push(Buffer {
                bytes: stride * tasks,
                offset: 0,
            });
            pinned.push(false);
            born.push(kernel_at(m));
            staged.insert(
                (m, slot),
                Staged {
                    window,
                    planes,
                    scratch: buffers.len() - 1,
                    stride,
                },
            );
        }

        // Liveness: the last kernel that reads each buffer.
        let end = self.order.len();
        let mut last_use: Vec<usize> = born.clone();
        for (r, &at) in reads.iter().zip(&kernel_pos) {
            for n in r {
                if let Some(View {
                    base: Base::Work(b),
                    ..
                }) = views.get(n)
                {
                    last_use[*b] = last_use[*b].max(at);
                }
            }
        }
        for &n in self.results {
            if let Some(View {
                base: Base::Work(b),
                ..
            }) = views.get(&n)
            {
                last_use[*b] = end;
            }
        }
        for (b, &pin) in pinned.iter().enumerate() {
            if pin {
                last_use[b] = end;
            }
        }
        let live_bytes = live_set_bound(&buffers, &born, &last_use);
        let (unshared_bytes, arena_bytes) = allocate(&mut buffers, &born, &last_use);
        Ok(Plan {
            views,
            buffers,
            arena_bytes,
            unshared_bytes,
            live_bytes,
            kernels,
            steps,
            constants,
            inputs,
            outputs,
            fused,
            staged,
            tasks,
        })
    }

    /// The stored values a kernel of its own (matmul, gather, ...) reads:
    /// its operands, a summed matmul's operands, the images of staged
    /// columns.
    fn node_reads(&self, root: NodeId) -> Vec<NodeId> {
        let graph = self.graph;
        let mut reads = Vec::new();
        let mut products = Vec::new();
        for o in graph.operands(root) {
            if self.summed.contains(&o) {
                reads.extend(graph.operands(o));
                products.push(o);
            } else {
                reads.push(o);
            }
        }
        if matches!(graph.node(root).op, Op::MatMul) {
            products.push(root);
        }
        for m in products {
            for slot in 0..2 {
                if let Some(&(w, _)) = self.staged.get(&(m, slot)) {
                    reads.push(graph.operands(w)[0]);
                }
            }
        }
        reads
    }

    /// Whether kernel `k` may write state `slot` in place: no result views
    /// the slot's old value, every other kernel that reads it runs
    /// earlier, and `k` itself reads it only at the element it writes.
    fn may_overwrite(
        &self,
        slot: usize,
        k: usize,
        kernels: &[Kernel],
        reads: &[Vec<NodeId>],
        kernel_pos: &[usize],
        views: &HashMap<NodeId, View>,
    ) -> bool {
        let old = Base::State(slot);
        let reads_old = |n: &NodeId| views.get(n).is_some_and(|v| v.base == old);
        if self.results.iter().any(reads_old) {
            return false;
        }
        for (j, kernel) in kernels.iter().enumerate() {
            if j == k {
                let Body::Map { expr, .. } = &kernel.body else {
                    return false;
                };
                let elsewhere = expr.leaves.iter().any(|l| {
                    matches!(l.source, Source::Buffer(_))
                        && l.view.base == old
                        && !(l.view.offset == 0 && l.view.is_contiguous())
                });
                if elsewhere {
                    return false;
                }
            } else if kernel_pos[j] > kernel_pos[k] && reads[j].iter().any(reads_old) {
                return false;
            }
        }
        true
    }
}

/// The stored values an expression reads (random numbers read their key).
fn leaf_nodes(expr: &Expr) -> Vec<NodeId> {
    expr.leaves
        .iter()
        .map(|l| match l.source {
            Source::Buffer(n) => n,
            Source::Random { key, .. } => key,
        })
        .collect()
}

/// Moves every view of `from` (and every leaf reading it) to `to`.
fn retarget(views: &mut HashMap<NodeId, View>, kernels: &mut [Kernel], from: Base, to: Base) {
    for v in views.values_mut() {
        if v.base == from {
            v.base = to;
        }
    }
    for k in kernels {
        if let Body::Map { expr, .. } | Body::Operand(expr) = &mut k.body {
            for l in &mut expr.leaves {
                if l.view.base == from {
                    l.view.base = to;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use nnc_ir::{shape_of, Init, TensorType};

    fn sgd_like(read_old_after: bool) -> Graph {
        let mut g = Graph::new("step");
        let ty = TensorType::new(DType::F32, shape_of(&[4]));
        let p = g.param("p", ty.clone(), Init::Zeros);
        let grad = g.input("g", ty);
        let lr = g.scalar(0.1, DType::F32);
        let d = g.mul(lr, grad).unwrap();
        let p_new = g.sub(p, d).unwrap();
        g.updates.push(nnc_ir::Update {
            target: "p".into(),
            value: p_new,
        });
        if read_old_after {
            // A later kernel reads the old `p`: the update cannot be in place.
            let later = g.add_(p_new, p).unwrap();
            let later = g
                .reduce(nnc_ir::ReduceOp::Sum, later, vec![0], false)
                .unwrap();
            g.set_output("later", later);
        }
        g
    }

    /// A batch of byte products splits by batch index at `igemm`'s
    /// threshold (four times `sgemm`'s), and is never staged.
    #[test]
    fn byte_products_split_at_the_igemm_threshold() {
        let units = |dtype: DType, [b, m, k, n]: [usize; 4]| {
            let mut g = Graph::new("bytes");
            let other = if dtype == DType::F32 {
                dtype
            } else {
                DType::I8
            };
            let x = g.input("x", TensorType::new(dtype, shape_of(&[b, m, k])));
            let w = g.input("w", TensorType::new(other, shape_of(&[b, k, n])));
            let r = g.matmul(x, w).unwrap();
            g.set_output("r", r);
            let state = StateLayout::of(&[&g]).unwrap();
            let plan = plan(&g, &HashMap::new(), &state).unwrap();
            assert!(plan.staged.is_empty());
            split::matmul_units(&g, &plan, r)
        };
        assert_eq!(units(DType::U8, [4, 64, 128, 96]), Some(4));
        // 2.1 MFLOP: over sgemm's threshold, under igemm's.
        assert_eq!(units(DType::F32, [4, 64, 64, 64]), Some(4));
        assert_eq!(units(DType::U8, [4, 64, 64, 64]), None);
    }

    #[test]
    fn an_elementwise_update_writes_its_slot_directly() {
        let g = sgd_like(false);
        let state = StateLayout::of(&[&g]).unwrap();
        let plan = plan(&g, &HashMap::new(), &state).unwrap();
        assert!(!plan.steps.iter().any(|s| matches!(s, Step::Update { .. })));
        let value = g.updates[0].value;
        assert_eq!(plan.views[&value].base, Base::State(0));
    }

    #[test]
    fn an_update_whose_old_value_is_read_later_is_copied_at_the_end() {
        let g = sgd_like(true);
        let state = StateLayout::of(&[&g]).unwrap();
        let plan = plan(&g, &HashMap::new(), &state).unwrap();
        assert!(plan.steps.iter().any(|s| matches!(s, Step::Update { .. })));
        let value = g.updates[0].value;
        assert!(matches!(plan.views[&value].base, Base::Work(_)));
    }
}
