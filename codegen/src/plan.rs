//! Specialization and the static memory plan.
//!
//! Given a graph and a binding of its symbolic dims (`B = 128`), every node
//! gets a concrete shape and a *view*: a base buffer, an element offset and
//! strides. Layout ops (reshape of contiguous data, transpose, broadcast,
//! slice) are views of their operand and cost nothing; every other op
//! writes a fresh contiguous buffer. Buffers live in one arena at offsets
//! chosen by liveness, so intermediates reuse memory and a step allocates
//! nothing.

use crate::CodegenError;
use nnc_ir::{BinaryOp, DType, Dim, Graph, NodeId, Op};
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
#[derive(Debug, Clone, PartialEq, Eq)]
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
        self.shape
            .iter()
            .zip(&self.strides)
            .zip(row_major(&self.shape))
            .all(|((&n, &s), r)| n == 1 || s == r)
    }
}

pub fn row_major(shape: &[usize]) -> Vec<isize> {
    let mut strides = vec![0isize; shape.len()];
    let mut acc = 1isize;
    for i in (0..shape.len()).rev() {
        strides[i] = acc;
        acc *= shape[i] as isize;
    }
    strides
}

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

/// The JIT stores every element in 4 bytes: f32, i32, and bool as i32 0/1.
fn check_dtype(dtype: DType, what: &str) -> Result<(), CodegenError> {
    match dtype {
        DType::F32 | DType::I32 | DType::Bool => Ok(()),
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

pub fn concrete(shape: &[Dim], bindings: &HashMap<String, usize>) -> Result<Vec<usize>, String> {
    shape
        .iter()
        .map(|d| match d {
            Dim::Const(n) => Ok(*n),
            Dim::Sym(s) => bindings.get(s).copied().ok_or_else(|| s.clone()),
        })
        .collect()
}

/// What the schedule does, in order.
#[derive(Debug, Clone, PartialEq)]
pub enum Step {
    /// Run the kernel that computes this node into its view.
    Compute(NodeId),
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

#[derive(Debug, Clone)]
pub struct Plan {
    pub views: HashMap<NodeId, View>,
    pub buffers: Vec<Buffer>,
    pub arena_bytes: usize,
    /// The sum of all buffer sizes: what the arena would need without reuse.
    pub unshared_bytes: usize,
    pub steps: Vec<Step>,
    /// Constants and iotas, filled once when the program is created.
    pub constants: Vec<NodeId>,
    pub inputs: Vec<(String, NodeId)>,
    pub outputs: Vec<(String, NodeId)>,
    /// Elementwise nodes computed inside their consumer's kernel, in
    /// registers: they have no buffer and no step of their own.
    pub fused: HashSet<NodeId>,
}

/// Values read after every kernel has run: outputs and update values.
fn results(graph: &Graph) -> HashSet<NodeId> {
    graph
        .outputs
        .iter()
        .map(|o| o.node)
        .chain(graph.updates.iter().map(|u| u.value))
        .collect()
}

/// Elementwise nodes that fuse into their consumer: the only user is an
/// elementwise op of the same shape, and the value is not a result of the
/// program. Chains fuse transitively, so a whole elementwise tree (an Adam
/// update, a relu mask and its gradient) becomes one loop.
fn fusion(graph: &Graph, order: &[NodeId], bindings: &HashMap<String, usize>) -> HashSet<NodeId> {
    let results = results(graph);
    let fusable = |n: NodeId| match &graph.node(n).op {
        // `pow` calls out per element; keep it its own kernel.
        Op::Binary(BinaryOp::Pow) => false,
        Op::Unary(_) | Op::Binary(_) | Op::Select | Op::Cast => true,
        _ => false,
    };
    let shape = |n: NodeId| concrete(&graph.ty(n).shape, bindings).ok();
    order
        .iter()
        .copied()
        .filter(|&n| {
            if !fusable(n) || results.contains(&n) {
                return false;
            }
            match graph.users(n).as_slice() {
                [user] => fusable(*user) && shape(*user).is_some() && shape(*user) == shape(n),
                _ => false,
            }
        })
        .collect()
}

pub fn plan(
    graph: &Graph,
    bindings: &HashMap<String, usize>,
    state: &StateLayout,
) -> Result<Plan, CodegenError> {
    let order = graph.topo_order();
    let mut views: HashMap<NodeId, View> = HashMap::new();
    let mut buffers: Vec<Buffer> = Vec::new();
    let mut steps = Vec::new();
    let mut constants = Vec::new();
    let mut inputs = Vec::new();
    // Per buffer: kept for the whole step (inputs, constants), and the
    // position of the node that writes it.
    let mut pinned: Vec<bool> = Vec::new();
    let mut born: Vec<usize> = Vec::new();
    let fused = fusion(graph, &order, bindings);
    let position: HashMap<NodeId, usize> = order.iter().enumerate().map(|(i, &n)| (n, i)).collect();
    // Where each node's value is read: a fused node's operands are read
    // when its consumer's kernel runs.
    let mut reader: HashMap<NodeId, usize> = HashMap::new();
    for &id in order.iter().rev() {
        let at = match graph.users(id).as_slice() {
            [user] if fused.contains(&id) => reader[user],
            _ => position[&id],
        };
        reader.insert(id, at);
    }
    let in_place = in_place_updates(graph, state, bindings, &position, &reader);

    for (position, &id) in order.iter().enumerate() {
        if fused.contains(&id) {
            continue;
        }
        let mut new_buffer = |shape: &[usize], pin: bool, buffers: &mut Vec<Buffer>| {
            buffers.push(Buffer {
                bytes: align(shape.iter().product::<usize>() * 4),
                offset: 0,
            });
            pinned.push(pin);
            born.push(if pin { 0 } else { position });
            Base::Work(buffers.len() - 1)
        };
        let node = graph.node(id);
        let shape = concrete(&node.ty.shape, bindings).map_err(|sym| {
            CodegenError::new(format!("no size is bound for the symbolic dim `{sym}`"))
        })?;
        check_dtype(node.ty.dtype, node.op.mnemonic())?;
        let operands = graph.operands(id);
        let operand = |i: usize| -> &View { &views[&operands[i]] };
        let view = match &node.op {
            Op::Param { name, .. } | Op::State { name, .. } => {
                let slot = state.slot(name).ok_or_else(|| {
                    CodegenError::new(format!("`{name}` is not in the model's state"))
                })?;
                if state.slots[slot].shape != shape {
                    return Err(CodegenError::new(format!("`{name}` changed shape")));
                }
                View::contiguous(Base::State(slot), shape)
            }
            Op::Input { name } => {
                inputs.push((name.clone(), id));
                View::contiguous(new_buffer(&shape, true, &mut buffers), shape)
            }
            Op::Const(_) | Op::Iota { .. } => {
                constants.push(id);
                View::contiguous(new_buffer(&shape, true, &mut buffers), shape)
            }
            Op::Reshape if operand(0).is_contiguous() => {
                let src = operand(0);
                View {
                    base: src.base,
                    offset: src.offset,
                    strides: row_major(&shape),
                    shape,
                }
            }
            Op::Transpose { perm } => {
                let src = operand(0);
                View {
                    base: src.base,
                    offset: src.offset,
                    shape: perm.iter().map(|&p| src.shape[p]).collect(),
                    strides: perm.iter().map(|&p| src.strides[p]).collect(),
                }
            }
            Op::Broadcast => {
                let src = operand(0);
                let extra = shape.len() - src.shape.len();
                let strides = (0..shape.len())
                    .map(|i| match i.checked_sub(extra) {
                        Some(j) if src.shape[j] == shape[i] => src.strides[j],
                        _ => 0,
                    })
                    .collect();
                View {
                    base: src.base,
                    offset: src.offset,
                    shape,
                    strides,
                }
            }
            Op::Slice { axis, start, .. } => {
                let src = operand(0);
                View {
                    base: src.base,
                    offset: (src.offset as isize + *start as isize * src.strides[*axis]) as usize,
                    shape,
                    strides: src.strides.clone(),
                }
            }
            _ => {
                steps.push(Step::Compute(id));
                match in_place.get(&id) {
                    Some(&slot) => View::contiguous(Base::State(slot), shape),
                    None => View::contiguous(new_buffer(&shape, false, &mut buffers), shape),
                }
            }
        };
        views.insert(id, view);
    }

    // Results leave the program contiguous: copy any that are views.
    let mut outputs = Vec::new();
    for o in &graph.outputs {
        outputs.push((o.name.clone(), o.node));
    }
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
        let src = views[&u.value].clone();
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

    // Liveness: the last step index that reads each buffer.
    let end = order.len();
    let mut last_use: Vec<usize> = born.clone();
    for &id in &order {
        for o in graph.operands(id) {
            if fused.contains(&o) {
                continue;
            }
            if let Base::Work(b) = views[&o].base {
                last_use[b] = last_use[b].max(reader[&id]);
            }
        }
    }
    for &(_, n) in &outputs {
        if let Base::Work(b) = views[&n].base {
            last_use[b] = end;
        }
    }
    for u in &graph.updates {
        if let Base::Work(b) = views[&u.value].base {
            last_use[b] = end;
        }
    }
    for (b, &pin) in pinned.iter().enumerate() {
        if pin {
            last_use[b] = end;
        }
    }

    // First-fit allocation in topological order; a buffer is freed after
    // its last reader, so an op's output never aliases its own operands.
    let unshared_bytes = buffers.iter().map(|b| b.bytes).sum();
    let mut free: Vec<(usize, usize)> = Vec::new(); // (offset, bytes), sorted by offset
    let mut top = 0usize;
    let mut by_birth: Vec<usize> = (0..buffers.len()).collect();
    by_birth.sort_by_key(|&b| (born[b], b));
    let mut live: Vec<usize> = Vec::new();
    for &b in &by_birth {
        // Release buffers whose last reader ran before this one is written.
        live.retain(|&l| {
            if last_use[l] < born[b] {
                release(&mut free, buffers[l].offset, buffers[l].bytes);
                false
            } else {
                true
            }
        });
        let bytes = buffers[b].bytes;
        buffers[b].offset = match free.iter().position(|&(_, n)| n >= bytes) {
            Some(i) => {
                let (off, n) = free[i];
                if n == bytes {
                    free.remove(i);
                } else {
                    free[i] = (off + bytes, n - bytes);
                }
                off
            }
            None => {
                let off = top;
                top += bytes;
                off
            }
        };
        live.push(b);
    }
    Ok(Plan {
        views,
        buffers,
        arena_bytes: top.max(ALIGN),
        unshared_bytes,
        steps,
        constants,
        inputs,
        outputs,
        fused,
    })
}

/// Updates whose new value can be computed straight into the state slot,
/// saving a buffer and a copy per param and optimizer slot: the value is an
/// elementwise kernel of the slot's shape and dtype, and after that kernel
/// nothing reads the old value — the kernel itself reads it only element
/// by element (same index, no broadcast or transpose). Returns value node →
/// slot.
fn in_place_updates(
    graph: &Graph,
    state: &StateLayout,
    bindings: &HashMap<String, usize>,
    position: &HashMap<NodeId, usize>,
    reader: &HashMap<NodeId, usize>,
) -> HashMap<NodeId, usize> {
    let is_view = |n: NodeId| {
        matches!(
            graph.node(n).op,
            Op::Reshape | Op::Transpose { .. } | Op::Broadcast | Op::Slice { .. }
        )
    };
    let elementwise = |n: NodeId| {
        matches!(
            graph.node(n).op,
            Op::Unary(_) | Op::Binary(_) | Op::Select | Op::Cast
        )
    };
    let shape = |n: NodeId| concrete(&graph.ty(n).shape, bindings).ok();
    let results = results(graph);
    let mut chosen = HashMap::new();
    for u in &graph.updates {
        let (Some(slot), Some(leaf)) = (state.slot(&u.target), graph.find_leaf(&u.target)) else {
            continue;
        };
        let v = u.value;
        let s = &state.slots[slot];
        if !elementwise(v)
            || chosen.contains_key(&v)
            || results.contains(&leaf)
            || graph.ty(v).dtype != s.dtype
            || shape(v).as_ref() != Some(&s.shape)
        {
            continue;
        }
        let at = reader[&v];
        // Every read of the old value, through views too.
        let mut ok = true;
        let mut stack = vec![(leaf, true)];
        while let Some((n, direct)) = stack.pop() {
            for c in graph.users(n) {
                if is_view(c) {
                    ok &= position[&c] < at && !results.contains(&c);
                    stack.push((c, false));
                } else if reader[&c] == at {
                    ok &= direct && elementwise(c) && shape(c) == shape(v);
                } else {
                    ok &= reader[&c] < at;
                }
            }
        }
        if ok {
            chosen.insert(v, slot);
        }
    }
    chosen
}

/// Returns a range to the free list, merging with its neighbours.
fn release(free: &mut Vec<(usize, usize)>, offset: usize, bytes: usize) {
    let i = free.partition_point(|&(o, _)| o < offset);
    free.insert(i, (offset, bytes));
    if i + 1 < free.len() && free[i].0 + free[i].1 == free[i + 1].0 {
        free[i].1 += free[i + 1].1;
        free.remove(i + 1);
    }
    if i > 0 && free[i - 1].0 + free[i - 1].1 == free[i].0 {
        free[i - 1].1 += free[i].1;
        free.remove(i);
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
