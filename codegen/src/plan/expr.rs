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

use crate::emit::{Addresses, Calls, Host, Kind};
use crate::plan::{view_of, View};
use crate::CodegenError;
use cranelift_codegen::ir::condcodes::{FloatCC, IntCC};
use cranelift_codegen::ir::{types, InstBuilder, MemFlagsData, Value};
use cranelift_frontend::FunctionBuilder;
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
}

impl MapOp {
    /// Ops with no `f32x4` form here run the scalar loop.
    fn vectorizes(self) -> bool {
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
                word: crate::program::value_word(*v, graph.ty(n).dtype),
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
            op if crate::group::is_layout(op) => {
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

// ---- emission ----

fn flags() -> MemFlagsData {
    MemFlagsData::new().with_notrap()
}

/// How one leaf is loaded.
enum Load {
    Buffer(Kind),
    /// The key's hash for this stream (scalar, and splatted).
    Random {
        seed: Value,
        seeds: Value,
    },
}

/// The steps of a plain copy: the output is the one leaf.
static COPY: [Instr; 1] = [Instr::Leaf(0)];

/// An expression ready to emit: each leaf's start address and byte
/// strides over the space, and values made once at the kernel's entry.
pub(crate) struct Code<'e> {
    instrs: &'e [Instr],
    outputs: &'e [usize],
    pub addrs: Vec<usize>,
    pub strides: Vec<Vec<isize>>,
    loads: Vec<Load>,
    /// `[0, 1, 2, 3]`, for the indices of four random numbers.
    lanes: Option<Value>,
}

impl<'e> Code<'e> {
    /// Emits the per-kernel values at the current position (the kernel's
    /// entry block, so they dominate every loop).
    pub fn new(
        b: &mut FunctionBuilder,
        expr: &'e Expr,
        at: &Addresses,
    ) -> Result<Code<'e>, CodegenError> {
        expr.check()?;
        let mut code = Code {
            instrs: &expr.instrs,
            outputs: &expr.outputs,
            addrs: Vec::new(),
            strides: Vec::new(),
            loads: Vec::new(),
            lanes: None,
        };
        for leaf in &expr.leaves {
            let strides = leaf.view.strides.iter().map(|s| s * 4).collect();
            let (addr, load) = match &leaf.source {
                Source::Buffer(_) => (at.of(&leaf.view), Load::Buffer(leaf.kind)),
                Source::Random { stream, key } => {
                    let key_view = at.plan.views.get(key).ok_or_else(|| {
                        CodegenError::new("internal error: no view of a random key")
                    })?;
                    let seed = crate::random::emit_seed(b, *stream, at.of(key_view));
                    let seeds = b.ins().splat(types::I32X4, seed);
                    if code.lanes.is_none() {
                        code.lanes = Some(crate::random::lanes(b));
                    }
                    (leaf.view.offset * 4, Load::Random { seed, seeds })
                }
            };
            code.addrs.push(addr);
            code.strides.push(strides);
            code.loads.push(load);
        }
        Ok(code)
    }

    /// A copy of the `kind` elements at `addr`, `strides` bytes apart.
    pub fn copy(addr: usize, strides: Vec<isize>, kind: Kind) -> Code<'static> {
        Code {
            instrs: &COPY,
            outputs: &[0],
            addrs: vec![addr],
            strides: vec![strides],
            loads: vec![Load::Buffer(kind)],
            lanes: None,
        }
    }

    pub fn vectorizes(&self) -> bool {
        self.instrs.iter().all(|i| match i {
            Instr::Apply { op, .. } => op.vectorizes(),
            _ => true,
        })
    }

    fn kind_of(&self, step: usize) -> Kind {
        match &self.instrs[step] {
            Instr::Leaf(l) => match self.loads[*l] {
                Load::Buffer(kind) => kind,
                Load::Random { .. } => Kind::F32,
            },
            Instr::Const { kind, .. } | Instr::Apply { kind, .. } => *kind,
        }
    }

    /// The kind of output `i`'s values.
    pub fn output_kind(&self, i: usize) -> Kind {
        self.kind_of(self.outputs[i])
    }

    /// Leaf `k` at byte address `addr + imm`: one element, or four
    /// (`vector`) `stride` bytes apart (4, or 0 for one splatted).
    pub fn load(
        &self,
        b: &mut FunctionBuilder,
        k: usize,
        addr: Value,
        imm: i32,
        vector: bool,
        stride: isize,
    ) -> Value {
        match &self.loads[k] {
            Load::Buffer(kind) => {
                if vector && stride != 0 {
                    b.ins().load(kind.vector(), flags(), addr, imm)
                } else {
                    let s = b.ins().load(kind.scalar(), flags(), addr, imm);
                    if vector {
                        b.ins().splat(kind.vector(), s)
                    } else {
                        s
                    }
                }
            }
            Load::Random { seed, seeds } => {
                // The "address" is the random tensor's index times 4.
                let a = b.ins().iadd_imm_s(addr, i64::from(imm));
                let index = b.ins().ushr_imm_u(a, 2);
                let index = b.ins().ireduce(types::I32, index);
                if !vector {
                    return crate::random::uniform(b, types::I32, index, *seed);
                }
                let mut idx = b.ins().splat(types::I32X4, index);
                if let (Some(lanes), true) = (self.lanes, stride != 0) {
                    idx = b.ins().iadd(idx, lanes);
                }
                crate::random::uniform(b, types::I32X4, idx, *seeds)
            }
        }
    }

    /// Evaluates the steps on the leaves' loaded values; returns the value
    /// of each output.
    pub fn evaluate(
        &self,
        b: &mut FunctionBuilder,
        calls: &mut dyn Calls,
        vector: bool,
        leaves: &[Value],
    ) -> Result<Vec<Value>, CodegenError> {
        let mut vals: Vec<(Value, Kind)> = Vec::with_capacity(self.instrs.len());
        for (step, instr) in self.instrs.iter().enumerate() {
            let v = match instr {
                Instr::Leaf(l) => (leaves[*l], self.kind_of(step)),
                Instr::Const { word, kind } => {
                    let s = match kind {
                        Kind::F32 => b.ins().f32const(f32::from_bits(*word)),
                        Kind::I32 => b.ins().iconst(types::I32, i64::from(*word as i32)),
                    };
                    let v = if vector {
                        b.ins().splat(kind.vector(), s)
                    } else {
                        s
                    };
                    (v, *kind)
                }
                Instr::Apply { op, args, kind } => {
                    let a: Vec<(Value, Kind)> = args.iter().map(|&j| vals[j]).collect();
                    (compute(b, calls, *op, vector, &a, *kind)?, *kind)
                }
            };
            vals.push(v);
        }
        Ok(self.outputs.iter().map(|&o| vals[o].0).collect())
    }
}

/// Computes one element (or four lanes) of an elementwise op.
fn compute(
    b: &mut FunctionBuilder,
    calls: &mut dyn Calls,
    op: MapOp,
    vector: bool,
    ins: &[(Value, Kind)],
    out: Kind,
) -> Result<Value, CodegenError> {
    let ty = |k: Kind| if vector { k.vector() } else { k.scalar() };
    let bool01 = |b: &mut FunctionBuilder, c: Value| -> Value {
        if vector {
            let one = b.ins().iconst(types::I32, 1);
            let ones = b.ins().splat(types::I32X4, one);
            b.ins().band(c, ones)
        } else {
            b.ins().uextend(types::I32, c)
        }
    };
    let v = match op {
        MapOp::Unary(u) => {
            let x = ins[0].0;
            match u {
                UnaryOp::Neg => b.ins().fneg(x),
                UnaryOp::Abs => b.ins().fabs(x),
                UnaryOp::Sqrt => b.ins().sqrt(x),
                UnaryOp::Exp => crate::vmath::exp(b, ty(Kind::F32), x),
                UnaryOp::Log => crate::vmath::log(b, ty(Kind::F32), x),
                UnaryOp::Tanh => crate::vmath::tanh(b, ty(Kind::F32), x),
                UnaryOp::Sigmoid => crate::vmath::sigmoid(b, ty(Kind::F32), x),
            }
        }
        MapOp::Binary(op) => {
            let (x, y) = (ins[0].0, ins[1].0);
            match (ins[0].1, op) {
                (Kind::F32, BinaryOp::Add) => b.ins().fadd(x, y),
                (Kind::F32, BinaryOp::Sub) => b.ins().fsub(x, y),
                (Kind::F32, BinaryOp::Mul) => b.ins().fmul(x, y),
                (Kind::F32, BinaryOp::Div) => b.ins().fdiv(x, y),
                (Kind::F32, BinaryOp::Max) => b.ins().fmax(x, y),
                (Kind::F32, BinaryOp::Min) => b.ins().fmin(x, y),
                (Kind::F32, BinaryOp::Pow) => calls.call(b, Host::Powf, &[x, y])[0],
                (Kind::F32, cmp) => {
                    let cc = match cmp {
                        BinaryOp::Lt => FloatCC::LessThan,
                        BinaryOp::Le => FloatCC::LessThanOrEqual,
                        BinaryOp::Gt => FloatCC::GreaterThan,
                        BinaryOp::Ge => FloatCC::GreaterThanOrEqual,
                        BinaryOp::Eq => FloatCC::Equal,
                        _ => FloatCC::NotEqual,
                    };
                    let c = b.ins().fcmp(cc, x, y);
                    bool01(b, c)
                }
                (Kind::I32, BinaryOp::Add) => b.ins().iadd(x, y),
                (Kind::I32, BinaryOp::Sub) => b.ins().isub(x, y),
                (Kind::I32, BinaryOp::Mul) => b.ins().imul(x, y),
                (Kind::I32, BinaryOp::Max) => b.ins().smax(x, y),
                (Kind::I32, BinaryOp::Min) => b.ins().smin(x, y),
                (Kind::I32, BinaryOp::Div | BinaryOp::Pow) => {
                    return Err(CodegenError::new(format!(
                        "integer `{op}` is not supported by the JIT (use --backend interp)"
                    )))
                }
                (Kind::I32, cmp) => {
                    let cc = match cmp {
                        BinaryOp::Lt => IntCC::SignedLessThan,
                        BinaryOp::Le => IntCC::SignedLessThanOrEqual,
                        BinaryOp::Gt => IntCC::SignedGreaterThan,
                        BinaryOp::Ge => IntCC::SignedGreaterThanOrEqual,
                        BinaryOp::Eq => IntCC::Equal,
                        _ => IntCC::NotEqual,
                    };
                    let c = b.ins().icmp(cc, x, y);
                    bool01(b, c)
                }
            }
        }
        MapOp::Select => {
            let (c, x, y) = (ins[0].0, ins[1].0, ins[2].0);
            if vector {
                let zero = b.ins().iconst(types::I32, 0);
                let zeros = b.ins().splat(types::I32X4, zero);
                let mask = b.ins().icmp(IntCC::NotEqual, c, zeros);
                let mask = if out == Kind::F32 {
                    b.ins().bitcast(
                        types::F32X4,
                        MemFlagsData::new()
                            .with_endianness(cranelift_codegen::ir::Endianness::Little),
                        mask,
                    )
                } else {
                    mask
                };
                b.ins().bitselect(mask, x, y)
            } else {
                b.ins().select(c, x, y)
            }
        }
        MapOp::NonZero => {
            let (x, from) = ins[0];
            let c = match from {
                Kind::F32 => {
                    let z = b.ins().f32const(0.0);
                    let z = if vector {
                        b.ins().splat(types::F32X4, z)
                    } else {
                        z
                    };
                    b.ins().fcmp(FloatCC::NotEqual, x, z)
                }
                Kind::I32 => {
                    let z = b.ins().iconst(types::I32, 0);
                    let z = if vector {
                        b.ins().splat(types::I32X4, z)
                    } else {
                        z
                    };
                    b.ins().icmp(IntCC::NotEqual, x, z)
                }
            };
            bool01(b, c)
        }
        MapOp::Cast => {
            let (x, from) = ins[0];
            match (from, out) {
                (Kind::F32, Kind::I32) => b.ins().fcvt_to_sint_sat(ty(Kind::I32), x),
                (Kind::I32, Kind::F32) => b.ins().fcvt_from_sint(ty(Kind::F32), x),
                _ => x,
            }
        }
    };
    Ok(v)
}
