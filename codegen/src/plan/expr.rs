//! The elementwise expression a kernel's loop evaluates per element.
//!
//! A loop runs over one index space, its *space*: an elementwise kernel's
//! result shape, a reduction's or a `fold`'s operand, an `unfold`'s image.
//! The inline values it reads (see `group`) become steps of its
//! expression; everything else is a *leaf*: a stored value's view, aligned
//! to the space (stride 0 where broadcast), or random numbers, addressed by
//! their row-major index as if they were a buffer. Layout ops between a
//! leaf and the loop compose into the leaf's view, so a transpose,
//! broadcast or reshape of an inline value costs nothing. Steps are
//! hash-consed: a value reached twice at the same element (Adam's
//! gradient, read by `m'` and `v'`; the max-pool mask, read by the
//! gradient and its own count) is computed once.
//!
//! The emitting half loads the leaves at an element (or four consecutive
//! ones) and evaluates the steps in registers; `emit` and `window` supply
//! the loops.

use super::{view_of, Kind, View};
use crate::CodegenError;
use nnc_ir::{BinaryOp, DType, Graph, Literal, NodeId, Op, UnaryOp};
use std::collections::{HashMap, HashSet};

/// The elementwise operation of one step.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(crate) enum MapOp {
    Unary(UnaryOp),
    Binary(BinaryOp),
    Select,
    Cast,
    /// `x != 0` as a bool (cast to bool).
    NonZero,
    /// A cast to `i8` or `u8`: truncated toward zero and clamped to the
    /// type's range, as the interpreter's `round_value`.
    Narrow(DType),
}

impl MapOp {
    /// Ops with no `f32x4` form here run the scalar loop.
    pub(crate) fn vectorizes(self) -> bool {
        self != MapOp::Binary(BinaryOp::Pow)
    }
}

/// The elementwise operation of a node, if it is one.
pub(crate) fn elementwise(graph: &Graph, id: NodeId) -> Option<MapOp> {
    let node = graph.node(id);
    Some(match &node.op {
        Op::Unary(u) => MapOp::Unary(*u),
        Op::Binary(op) => MapOp::Binary(*op),
        Op::Select => MapOp::Select,
        Op::Cast if node.ty.dtype == DType::Bool => MapOp::NonZero,
        Op::Cast if node.ty.dtype.is_byte() => MapOp::Narrow(node.ty.dtype),
        Op::Cast => MapOp::Cast,
        _ => return None,
    })
}

/// Where a leaf's elements come from.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Source {
    /// The stored value of this node, through the leaf's view.
    Buffer(NodeId),
    /// `random` of this stream and key (a stored scalar): the leaf's view
    /// maps the space to the random tensor's row-major index.
    Random { stream: u32, key: NodeId },
}

/// A value the loop reads, viewed in its space.
#[derive(Debug, Clone, PartialEq)]
pub struct Leaf {
    pub source: Source,
    pub kind: Kind,
    /// The shape is the space's. For a buffer the base, offset and strides
    /// locate its elements; for random numbers the offset and strides give
    /// the index (the base is the key's and means nothing).
    pub view: View,
}

/// One step of an expression; steps refer to earlier steps by index.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub(crate) enum Instr {
    Leaf(usize),
    /// A constant, as the 4-byte word the JIT stores.
    Const {
        word: u32,
        kind: Kind,
    },
    Apply {
        op: MapOp,
        args: Vec<usize>,
        kind: Kind,
    },
}

/// What a loop computes per element of `shape`.
#[derive(Debug, Clone, PartialEq)]
pub struct Expr {
    pub shape: Vec<usize>,
    pub leaves: Vec<Leaf>,
    pub(crate) instrs: Vec<Instr>,
    /// The steps the loop stores (or reduces, or folds), one per result.
    pub(crate) outputs: Vec<usize>,
    /// The inline nodes the loop evaluates, in the order first reached.
    pub inlined: Vec<NodeId>,
}

impl Expr {
    /// Arithmetic per element: unary ops and arithmetic binary ops
    /// (compares, selects, casts and constants are not counted).
    pub fn ops(&self) -> usize {
        self.instrs
            .iter()
            .filter(|i| match i {
                Instr::Apply {
                    op: MapOp::Unary(_),
                    ..
                } => true,
                Instr::Apply {
                    op: MapOp::Binary(b),
                    ..
                } => !b.is_comparison(),
                _ => false,
            })
            .count()
    }

    /// Transcendental functions per element (`exp`, `log`, `tanh`,
    /// `sigmoid`, `pow`): each costs 45–80 instructions per `f32x4`
    /// (`emit::vmath`), far more than the loads and stores around it.
    pub fn transcendentals(&self) -> usize {
        self.instrs
            .iter()
            .filter(|i| match i {
                Instr::Apply {
                    op: MapOp::Unary(u),
                    ..
                } => vmath16_func(*u).is_some(),
                Instr::Apply {
                    op: MapOp::Binary(b),
                    ..
                } => *b == BinaryOp::Pow,
                _ => false,
            })
            .count()
    }

    /// Rejects what the JIT cannot compute, before any code is emitted.
    pub(crate) fn check(&self) -> Result<(), CodegenError> {
        for i in &self.instrs {
            if let Instr::Apply {
                op: MapOp::Binary(op @ (BinaryOp::Div | BinaryOp::Pow)),
                args,
                ..
            } = i
            {
                if self.kind_of(args[0]) == Kind::I32 {
                    return Err(CodegenError::new(format!(
                        "integer `{op}` is not supported by the JIT (use --backend interp)"
                    )));
                }
            }
        }
        Ok(())
    }

    fn kind_of(&self, step: usize) -> Kind {
        match &self.instrs[step] {
            Instr::Leaf(l) => self.leaves[*l].kind,
            Instr::Const { kind, .. } | Instr::Apply { kind, .. } => *kind,
        }
    }
}

/// Why an expression could not be built.
#[derive(Debug)]
pub(crate) enum BuildError {
    /// A reshape of an inline value that no strided view expresses (it
    /// merges dims a leaf walks unevenly, such as broadcast ones with
    /// others): the plan stores the value under this reshape and retries.
    Compose(NodeId),
    Internal(String),
}

/// How an index of a node's space maps to the space of what reads it.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
enum Xform {
    /// Implicit broadcasting of an elementwise operand to this shape.
    Broadcast(Vec<usize>),
    /// This layout node.
    Layout(NodeId),
}

/// Builds the expressions of a plan's loops.
pub(crate) struct Builder<'a> {
    pub graph: &'a Graph,
    pub views: &'a HashMap<NodeId, View>,
    pub shapes: &'a HashMap<NodeId, Vec<usize>>,
    pub inline: &'a HashSet<NodeId>,
}

struct Build<'a, 'b> {
    b: &'b Builder<'a>,
    expr: Expr,
    memo: HashMap<(NodeId, Vec<Xform>), usize>,
    interned: HashMap<Instr, usize>,
    leaves: HashMap<(Source, View), usize>,
    /// Results of this loop, available from registers at its own element.
    computed: HashMap<NodeId, usize>,
}

impl Builder<'_> {
    /// The loop of an elementwise kernel storing `outputs` (one shape, in
    /// topological order: later ones may use earlier ones).
    pub fn map(&self, outputs: &[NodeId]) -> Result<Expr, BuildError> {
        let first = outputs
            .first()
            .ok_or_else(|| BuildError::Internal("a loop with no result".into()))?;
        let mut s = self.start(self.shapes[first].clone());
        for &o in outputs {
            let i = s.own(o, &[])?;
            s.computed.insert(o, i);
            s.expr.outputs.push(i);
        }
        Ok(s.expr)
    }

    /// The loop over `operand`'s space that a reduction, `fold` or
    /// `unfold` runs: its one output is the operand's value.
    pub fn operand(&self, operand: NodeId) -> Result<Expr, BuildError> {
        let mut s = self.start(self.shapes[&operand].clone());
        let i = s.value(operand, &[])?;
        s.expr.outputs.push(i);
        Ok(s.expr)
    }

    fn start(&self, shape: Vec<usize>) -> Build<'_, '_> {
        Build {
            b: self,
            expr: Expr {
                shape,
                leaves: Vec::new(),
                instrs: Vec::new(),
                outputs: Vec::new(),
                inlined: Vec::new(),
            },
            memo: HashMap::new(),
            interned: HashMap::new(),
            leaves: HashMap::new(),
            computed: HashMap::new(),
        }
    }
}

impl Build<'_, '_> {
    fn intern(&mut self, instr: Instr) -> usize {
        if let Some(&i) = self.interned.get(&instr) {
            return i;
        }
        self.expr.instrs.push(instr.clone());
        let i = self.expr.instrs.len() - 1;
        self.interned.insert(instr, i);
        i
    }

    fn leaf(&mut self, source: Source, kind: Kind, view: View) -> usize {
        let key = (source, view);
        let l = match self.leaves.get(&key) {
            Some(&l) => l,
            None => {
                let (source, view) = key.clone();
                self.expr.leaves.push(Leaf { source, kind, view });
                let l = self.expr.leaves.len() - 1;
                self.leaves.insert(key, l);
                l
            }
        };
        self.intern(Instr::Leaf(l))
    }

    /// `view` (of a node's space) taken through `chain` to the loop's space.
    fn compose(&self, chain: &[Xform], mut view: View) -> Result<View, BuildError> {
        for x in chain {
            view = match x {
                Xform::Broadcast(shape) => view_of(&Op::Broadcast, &view, shape.clone()),
                Xform::Layout(l) => {
                    view_of(&self.b.graph.node(*l).op, &view, self.b.shapes[l].clone())
                }
            }
            .ok_or(match x {
                Xform::Layout(l) => BuildError::Compose(*l),
                Xform::Broadcast(_) => BuildError::Internal("a broadcast view".into()),
            })?;
        }
        Ok(view)
    }

    /// The step computing `n` at the loop's element, `chain` mapping the
    /// loop's index to `n`'s.
    fn value(&mut self, n: NodeId, chain: &[Xform]) -> Result<usize, BuildError> {
        if chain.is_empty() {
            if let Some(&i) = self.computed.get(&n) {
                return Ok(i);
            }
        }
        let key = (n, chain.to_vec());
        if let Some(&i) = self.memo.get(&key) {
            return Ok(i);
        }
        let graph = self.b.graph;
        let kind = Kind::of(graph.ty(n).dtype);
        let i = if !self.b.inline.contains(&n) {
            if self.computed.contains_key(&n) {
                return Err(BuildError::Internal(
                    "a loop reads its own result at another element".into(),
                ));
            }
            let view = self.b.views.get(&n).ok_or_else(|| {
                BuildError::Internal(format!("no view of `{}`", graph.node(n).op.mnemonic()))
            })?;
            let view = self.compose(chain, view.clone())?;
            self.leaf(Source::Buffer(n), kind, view)
        } else {
            if !self.expr.inlined.contains(&n) {
                self.expr.inlined.push(n);
            }
            self.own(n, chain)?
        };
        self.memo.insert(key, i);
        Ok(i)
    }

    /// `n` computed by its own op (not read from its buffer).
    fn own(&mut self, n: NodeId, chain: &[Xform]) -> Result<usize, BuildError> {
        let graph = self.b.graph;
        Ok(match &graph.node(n).op {
            Op::Const(Literal::Splat(v)) => self.intern(Instr::Const {
                word: super::value_word(*v, graph.ty(n).dtype),
                kind: Kind::of(graph.ty(n).dtype),
            }),
            Op::Random { stream } => {
                let key = graph.operands(n)[0];
                let base = self
                    .b
                    .views
                    .get(&key)
                    .ok_or_else(|| BuildError::Internal("no view of a random key".into()))?
                    .base;
                let index = View::contiguous(base, self.b.shapes[&n].clone());
                let view = self.compose(chain, index)?;
                let source = Source::Random {
                    stream: *stream,
                    key,
                };
                self.leaf(source, Kind::F32, view)
            }
            op if super::group::is_layout(op) => {
                let mut inner = vec![Xform::Layout(n)];
                inner.extend_from_slice(chain);
                self.value(graph.operands(n)[0], &inner)?
            }
            _ => self.apply_node(n, chain)?,
        })
    }

    /// `n`'s elementwise op applied to its operands (stored or inline).
    fn apply_node(&mut self, n: NodeId, chain: &[Xform]) -> Result<usize, BuildError> {
        let graph = self.b.graph;
        let op = elementwise(graph, n).ok_or_else(|| {
            BuildError::Internal(format!(
                "`{}` is not elementwise",
                graph.node(n).op.mnemonic()
            ))
        })?;
        let shape = &self.b.shapes[&n];
        let mut args = Vec::new();
        for o in graph.operands(n) {
            let step = if &self.b.shapes[&o] == shape {
                self.value(o, chain)?
            } else {
                let mut inner = vec![Xform::Broadcast(shape.clone())];
                inner.extend_from_slice(chain);
                self.value(o, &inner)?
            };
            args.push(step);
        }
        Ok(self.intern(Instr::Apply {
            op,
            args,
            kind: Kind::of(graph.ty(n).dtype),
        }))
    }
}

/// The sixteen-lane host function of a unary op, for the transcendental
/// ones (the ops worth a call, and worth a thread: see
/// `Expr::transcendentals`).
pub fn vmath16_func(op: nnc_ir::UnaryOp) -> Option<crate::vmath16::Func> {
    use crate::vmath16::Func;
    use nnc_ir::UnaryOp;
    match op {
        UnaryOp::Exp => Some(Func::Exp),
        UnaryOp::Log => Some(Func::Log),
        UnaryOp::Tanh => Some(Func::Tanh),
        UnaryOp::Sigmoid => Some(Func::Sigmoid),
        _ => None,
    }
}
