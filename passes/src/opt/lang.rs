//! The IR as an egg language, and the conversions Graph → EGraph → Graph.
//!
//! Every `ir::Op` is one e-node kind. Its tensor operands are its first
//! children; its attributes (a transpose's permutation, a reshape's result
//! type, a leaf's name) follow as children too, each an [`Attr`] leaf
//! e-node. Attributes as children is the TENSAT encoding: a pattern
//! `(transpose (transpose ?x ?p) ?q)` then matches every pair of
//! transposes and binds their permutations, where attributes inside the
//! operator would need one pattern per permutation. Hash-consing makes
//! equal attributes one class, so `?axes` used twice in a pattern means
//! "the same axes".
//!
//! Leaves are keyed by name (names are unique in a verified graph), so a
//! param is one class however often it is read.

use crate::PassError;
use egg::{FromOp, Id, Language};
use nnc_ir::{
    BinaryOp, DType, Dim, Graph, Init, Literal, NodeId, Op, ReduceOp, TensorType, UnaryOp, Window,
};
use std::cmp::Ordering;
use std::collections::HashMap;
use std::fmt;
use std::hash::{Hash, Hasher};

/// The operator of a tensor e-node: an `ir::Op` without its attributes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Kind {
    Input,
    Param,
    State,
    Const,
    Iota,
    Unary(UnaryOp),
    Binary(BinaryOp),
    Select,
    Cast,
    Reduce(ReduceOp),
    ArgMax,
    MatMul,
    Reshape,
    Transpose,
    Broadcast,
    Slice,
    Concat,
    Gather,
    ScatterAdd,
    Unfold,
    Fold,
    Random,
}

impl Kind {
    /// A total order key (the ir enums are not `Ord`).
    fn key(self) -> (u8, u8) {
        let pos = |i: Option<usize>| i.unwrap_or(0) as u8;
        match self {
            Kind::Input => (0, 0),
            Kind::Param => (1, 0),
            Kind::State => (2, 0),
            Kind::Const => (3, 0),
            Kind::Iota => (4, 0),
            Kind::Unary(u) => (5, pos(UnaryOp::ALL.iter().position(|&x| x == u))),
            Kind::Binary(b) => (6, pos(BinaryOp::ALL.iter().position(|&x| x == b))),
            Kind::Select => (7, 0),
            Kind::Cast => (8, 0),
            Kind::Reduce(r) => (9, pos(ReduceOp::ALL.iter().position(|&x| x == r))),
            Kind::ArgMax => (10, 0),
            Kind::MatMul => (11, 0),
            Kind::Reshape => (12, 0),
            Kind::Transpose => (13, 0),
            Kind::Broadcast => (14, 0),
            Kind::Slice => (15, 0),
            Kind::Concat => (16, 0),
            Kind::Gather => (17, 0),
            Kind::ScatterAdd => (18, 0),
            Kind::Unfold => (19, 0),
            Kind::Fold => (20, 0),
            Kind::Random => (21, 0),
        }
    }

    /// How many attribute children follow the tensor operands.
    pub fn attrs(self) -> usize {
        match self {
            Kind::Param | Kind::State => 3,
            Kind::Input
            | Kind::Const
            | Kind::Iota
            | Kind::ScatterAdd
            | Kind::Fold
            | Kind::Random => 2,
            Kind::Cast
            | Kind::Reduce(_)
            | Kind::ArgMax
            | Kind::Reshape
            | Kind::Transpose
            | Kind::Broadcast
            | Kind::Slice
            | Kind::Concat
            | Kind::Gather
            | Kind::Unfold => 1,
            Kind::Unary(_) | Kind::Binary(_) | Kind::Select | Kind::MatMul => 0,
        }
    }

    /// Tensor operands, `None` for variadic `concat` (at least one).
    pub fn operands(self) -> Option<usize> {
        Some(match self {
            Kind::Input | Kind::Param | Kind::State | Kind::Const | Kind::Iota => 0,
            Kind::Unary(_)
            | Kind::Cast
            | Kind::Reduce(_)
            | Kind::ArgMax
            | Kind::Reshape
            | Kind::Transpose
            | Kind::Broadcast
            | Kind::Slice
            | Kind::Unfold
            | Kind::Fold
            | Kind::Random => 1,
            Kind::Binary(_) | Kind::MatMul | Kind::Gather | Kind::ScatterAdd => 2,
            Kind::Select => 3,
            Kind::Concat => return None,
        })
    }

    /// The textual IR's mnemonic, also the operator in patterns.
    pub fn mnemonic(self) -> &'static str {
        match self {
            Kind::Input => "input",
            Kind::Param => "param",
            Kind::State => "state",
            Kind::Const => "const",
            Kind::Iota => "iota",
            Kind::Unary(u) => u.name(),
            Kind::Binary(b) => b.name(),
            Kind::Select => "select",
            Kind::Cast => "cast",
            Kind::Reduce(ReduceOp::Sum) => "reduce_sum",
            Kind::Reduce(ReduceOp::Mean) => "reduce_mean",
            Kind::Reduce(ReduceOp::Max) => "reduce_max",
            Kind::ArgMax => "argmax",
            Kind::MatMul => "matmul",
            Kind::Reshape => "reshape",
            Kind::Transpose => "transpose",
            Kind::Broadcast => "broadcast",
            Kind::Slice => "slice",
            Kind::Concat => "concat",
            Kind::Gather => "gather",
            Kind::ScatterAdd => "scatter_add",
            Kind::Unfold => "unfold",
            Kind::Fold => "fold",
            Kind::Random => "random",
        }
    }

    fn from_mnemonic(s: &str) -> Option<Kind> {
        if let Some(u) = UnaryOp::from_name(s) {
            return Some(Kind::Unary(u));
        }
        if let Some(b) = BinaryOp::from_name(s) {
            return Some(Kind::Binary(b));
        }
        Some(match s {
            "input" => Kind::Input,
            "param" => Kind::Param,
            "state" => Kind::State,
            "const" => Kind::Const,
            "iota" => Kind::Iota,
            "select" => Kind::Select,
            "cast" => Kind::Cast,
            "reduce_sum" => Kind::Reduce(ReduceOp::Sum),
            "reduce_mean" => Kind::Reduce(ReduceOp::Mean),
            "reduce_max" => Kind::Reduce(ReduceOp::Max),
            "argmax" => Kind::ArgMax,
            "matmul" => Kind::MatMul,
            "reshape" => Kind::Reshape,
            "transpose" => Kind::Transpose,
            "broadcast" => Kind::Broadcast,
            "slice" => Kind::Slice,
            "concat" => Kind::Concat,
            "gather" => Kind::Gather,
            "scatter_add" => Kind::ScatterAdd,
            "unfold" => Kind::Unfold,
            "fold" => Kind::Fold,
            "random" => Kind::Random,
            _ => return None,
        })
    }

    /// Whether `n` children fit this kind.
    fn fits(self, n: usize) -> bool {
        match self.operands() {
            Some(k) => n == k + self.attrs(),
            None => n > self.attrs(),
        }
    }
}

impl PartialOrd for Kind {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for Kind {
    fn cmp(&self, other: &Self) -> Ordering {
        self.key().cmp(&other.key())
    }
}

/// A tensor type as an attribute: ordered by dtype, then dims.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Ty(pub TensorType);

impl Ty {
    fn key(&self) -> (u8, Vec<(u8, usize, &str)>) {
        let dtype = match self.0.dtype {
            DType::F32 => 0,
            DType::F64 => 1,
            DType::I32 => 2,
            DType::Bool => 3,
        };
        let dims = self
            .0
            .shape
            .iter()
            .map(|d| match d {
                Dim::Const(n) => (0, *n, ""),
                Dim::Sym(s) => (1, 0, s.as_str()),
            })
            .collect();
        (dtype, dims)
    }
}

impl PartialOrd for Ty {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for Ty {
    fn cmp(&self, other: &Self) -> Ordering {
        self.key().cmp(&other.key())
    }
}

/// A float compared, hashed and ordered by its bits, so `-0.0` and `0.0`
/// are different constants and NaN equals itself.
#[derive(Debug, Clone, Copy)]
pub struct Bits(pub f64);

impl PartialEq for Bits {
    fn eq(&self, other: &Self) -> bool {
        self.0.to_bits() == other.0.to_bits()
    }
}
impl Eq for Bits {}
impl Hash for Bits {
    fn hash<H: Hasher>(&self, state: &mut H) {
        self.0.to_bits().hash(state)
    }
}
impl PartialOrd for Bits {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}
impl Ord for Bits {
    fn cmp(&self, other: &Self) -> Ordering {
        self.0.to_bits().cmp(&other.0.to_bits())
    }
}

/// An attribute: a leaf e-node that is never a tensor.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Attr {
    Name(String),
    Type(Ty),
    /// An initializer: its name and up to two arguments.
    Init(u8, Bits, Bits),
    Splat(Bits),
    Dense(Vec<Bits>),
    Axis(usize),
    Axes {
        axes: Vec<usize>,
        keepdim: bool,
    },
    Perm(Vec<usize>),
    Slice {
        axis: usize,
        start: usize,
        end: usize,
    },
    /// An unfold's window and fill, or a fold's window (no fill).
    Window {
        kernel: Vec<usize>,
        stride: Vec<usize>,
        padding: Vec<usize>,
        dilation: Vec<usize>,
        fill: Option<Bits>,
    },
    Stream(u32),
}

impl Attr {
    fn init(init: &Init) -> Attr {
        let (code, a, b) = match *init {
            Init::Zeros => (0, 0.0, 0.0),
            Init::Ones => (1, 0.0, 0.0),
            Init::Const(v) => (2, v, 0.0),
            Init::Uniform { low, high } => (3, low, high),
            Init::Normal { mean, std } => (4, mean, std),
            Init::XavierUniform => (5, 0.0, 0.0),
            Init::XavierNormal => (6, 0.0, 0.0),
            Init::KaimingUniform => (7, 0.0, 0.0),
            Init::KaimingNormal => (8, 0.0, 0.0),
        };
        Attr::Init(code, Bits(a), Bits(b))
    }

    fn to_init(code: u8, a: f64, b: f64) -> Option<Init> {
        Some(match code {
            0 => Init::Zeros,
            1 => Init::Ones,
            2 => Init::Const(a),
            3 => Init::Uniform { low: a, high: b },
            4 => Init::Normal { mean: a, std: b },
            5 => Init::XavierUniform,
            6 => Init::XavierNormal,
            7 => Init::KaimingUniform,
            8 => Init::KaimingNormal,
            _ => return None,
        })
    }

    fn window(w: &Window, fill: Option<f64>) -> Attr {
        Attr::Window {
            kernel: w.kernel.clone(),
            stride: w.stride.clone(),
            padding: w.padding.clone(),
            dilation: w.dilation.clone(),
            fill: fill.map(Bits),
        }
    }
}

impl fmt::Display for Attr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Attr::Name(n) => write!(f, "{n:?}"),
            Attr::Type(t) => write!(f, "{}", t.0),
            Attr::Init(code, a, b) => match Attr::to_init(*code, a.0, b.0) {
                Some(i) => write!(f, "{i}"),
                None => f.write_str("?init"),
            },
            Attr::Splat(v) => write!(f, "{:?}", v.0),
            Attr::Dense(vs) => write!(f, "dense[{}]", vs.len()),
            Attr::Axis(a) => write!(f, "axis={a}"),
            Attr::Axes { axes, keepdim } => write!(f, "axes={axes:?} keepdim={keepdim}"),
            Attr::Perm(p) => write!(f, "perm={p:?}"),
            Attr::Slice { axis, start, end } => write!(f, "axis={axis} {start}..{end}"),
            Attr::Window { kernel, .. } => write!(f, "window{kernel:?}"),
            Attr::Stream(s) => write!(f, "stream={s}"),
        }
    }
}

/// An e-node: a tensor op over its operand and attribute classes, or an
/// attribute.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum TensorLang {
    Op { kind: Kind, args: Vec<Id> },
    Attr(Attr),
}

impl TensorLang {
    pub fn op(kind: Kind, args: Vec<Id>) -> TensorLang {
        TensorLang::Op { kind, args }
    }

    pub fn kind(&self) -> Option<Kind> {
        match self {
            TensorLang::Op { kind, .. } => Some(*kind),
            TensorLang::Attr(_) => None,
        }
    }

    /// The tensor operands (children before the attributes).
    pub fn operands(&self) -> &[Id] {
        match self {
            TensorLang::Op { kind, args } => &args[..args.len().saturating_sub(kind.attrs())],
            TensorLang::Attr(_) => &[],
        }
    }

    /// The attribute children.
    pub fn attr_ids(&self) -> &[Id] {
        match self {
            TensorLang::Op { kind, args } => &args[args.len().saturating_sub(kind.attrs())..],
            TensorLang::Attr(_) => &[],
        }
    }
}

impl Language for TensorLang {
    type Discriminant = Option<Kind>;

    fn discriminant(&self) -> Self::Discriminant {
        self.kind()
    }

    fn matches(&self, other: &Self) -> bool {
        match (self, other) {
            (TensorLang::Op { kind: a, args: x }, TensorLang::Op { kind: b, args: y }) => {
                a == b && x.len() == y.len()
            }
            (TensorLang::Attr(a), TensorLang::Attr(b)) => a == b,
            _ => false,
        }
    }

    fn children(&self) -> &[Id] {
        match self {
            TensorLang::Op { args, .. } => args,
            TensorLang::Attr(_) => &[],
        }
    }

    fn children_mut(&mut self) -> &mut [Id] {
        match self {
            TensorLang::Op { args, .. } => args,
            TensorLang::Attr(_) => &mut [],
        }
    }
}

impl fmt::Display for TensorLang {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            TensorLang::Op { kind, .. } => f.write_str(kind.mnemonic()),
            TensorLang::Attr(a) => write!(f, "{a}"),
        }
    }
}

/// Patterns name ops by their IR mnemonic: `(mul ?x ?y)`,
/// `(transpose ?x ?perm)`. Attributes are always pattern variables.
#[derive(Debug)]
pub struct UnknownOp(pub String);

impl fmt::Display for UnknownOp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "unknown op {}", self.0)
    }
}

impl FromOp for TensorLang {
    type Error = UnknownOp;

    fn from_op(op: &str, children: Vec<Id>) -> Result<Self, Self::Error> {
        match Kind::from_mnemonic(op) {
            Some(kind) if kind.fits(children.len()) => Ok(TensorLang::op(kind, children)),
            _ => Err(UnknownOp(format!("{op} with {} children", children.len()))),
        }
    }
}

/// The `ir::Op` an e-node stands for, and the declared type when the op
/// takes its type from the node (`None` when inferred from operands).
/// `None` when the attributes do not fit the kind (never for e-nodes this
/// module built).
pub fn to_ir_op(kind: Kind, attrs: &[&Attr]) -> Option<(Op, Option<TensorType>)> {
    let ty = |a: &Attr| match a {
        Attr::Type(t) => Some(t.0.clone()),
        _ => None,
    };
    let axis = |a: &Attr| match a {
        Attr::Axis(x) => Some(*x),
        _ => None,
    };
    let name = |a: &Attr| match a {
        Attr::Name(n) => Some(n.clone()),
        _ => None,
    };
    let window = |a: &Attr| match a {
        Attr::Window {
            kernel,
            stride,
            padding,
            dilation,
            fill,
        } => Some((
            Window {
                kernel: kernel.clone(),
                stride: stride.clone(),
                padding: padding.clone(),
                dilation: dilation.clone(),
            },
            fill.map(|b| b.0),
        )),
        _ => None,
    };
    let init = |a: &Attr| match a {
        Attr::Init(c, x, y) => Attr::to_init(*c, x.0, y.0),
        _ => None,
    };
    Some(match (kind, attrs) {
        (Kind::Input, [n, t]) => (Op::Input { name: name(n)? }, Some(ty(t)?)),
        (Kind::Param, [n, i, t]) => (
            Op::Param {
                name: name(n)?,
                init: init(i)?,
            },
            Some(ty(t)?),
        ),
        (Kind::State, [n, i, t]) => (
            Op::State {
                name: name(n)?,
                init: init(i)?,
            },
            Some(ty(t)?),
        ),
        (Kind::Const, [l, t]) => {
            let lit = match l {
                Attr::Splat(v) => Literal::Splat(v.0),
                Attr::Dense(vs) => Literal::Dense(vs.iter().map(|b| b.0).collect()),
                _ => return None,
            };
            (Op::Const(lit), Some(ty(t)?))
        }
        (Kind::Iota, [a, t]) => (Op::Iota { axis: axis(a)? }, Some(ty(t)?)),
        (Kind::Unary(u), []) => (Op::Unary(u), None),
        (Kind::Binary(b), []) => (Op::Binary(b), None),
        (Kind::Select, []) => (Op::Select, None),
        (Kind::Cast, [t]) => (Op::Cast, Some(ty(t)?)),
        (Kind::Reduce(op), [Attr::Axes { axes, keepdim }]) => (
            Op::Reduce {
                op,
                axes: axes.clone(),
                keepdim: *keepdim,
            },
            None,
        ),
        (Kind::ArgMax, [a]) => (Op::ArgMax { axis: axis(a)? }, None),
        (Kind::MatMul, []) => (Op::MatMul, None),
        (Kind::Reshape, [t]) => (Op::Reshape, Some(ty(t)?)),
        (Kind::Transpose, [Attr::Perm(p)]) => (Op::Transpose { perm: p.clone() }, None),
        (Kind::Broadcast, [t]) => (Op::Broadcast, Some(ty(t)?)),
        (Kind::Slice, [Attr::Slice { axis, start, end }]) => (
            Op::Slice {
                axis: *axis,
                start: *start,
                end: *end,
            },
            None,
        ),
        (Kind::Concat, [a]) => (Op::Concat { axis: axis(a)? }, None),
        (Kind::Gather, [a]) => (Op::Gather { axis: axis(a)? }, None),
        (Kind::ScatterAdd, [a, t]) => (Op::ScatterAdd { axis: axis(a)? }, Some(ty(t)?)),
        (Kind::Unfold, [w]) => {
            let (window, fill) = window(w)?;
            (
                Op::Unfold {
                    window,
                    fill: fill?,
                },
                None,
            )
        }
        (Kind::Fold, [w, t]) => (
            Op::Fold {
                window: window(w)?.0,
            },
            Some(ty(t)?),
        ),
        (Kind::Random, [Attr::Stream(s), t]) => (Op::Random { stream: *s }, Some(ty(t)?)),
        _ => return None,
    })
}

/// The kind and attributes of an `ir::Op` whose node has type `ty`.
pub fn from_ir_op(op: &Op, ty: &TensorType) -> (Kind, Vec<Attr>) {
    let t = || Attr::Type(Ty(ty.clone()));
    match op {
        Op::Input { name } => (Kind::Input, vec![Attr::Name(name.clone()), t()]),
        Op::Param { name, init } => (
            Kind::Param,
            vec![Attr::Name(name.clone()), Attr::init(init), t()],
        ),
        Op::State { name, init } => (
            Kind::State,
            vec![Attr::Name(name.clone()), Attr::init(init), t()],
        ),
        Op::Const(Literal::Splat(v)) => (Kind::Const, vec![Attr::Splat(Bits(*v)), t()]),
        Op::Const(Literal::Dense(vs)) => (
            Kind::Const,
            vec![Attr::Dense(vs.iter().map(|&v| Bits(v)).collect()), t()],
        ),
        Op::Iota { axis } => (Kind::Iota, vec![Attr::Axis(*axis), t()]),
        Op::Unary(u) => (Kind::Unary(*u), vec![]),
        Op::Binary(b) => (Kind::Binary(*b), vec![]),
        Op::Select => (Kind::Select, vec![]),
        Op::Cast => (Kind::Cast, vec![t()]),
        Op::Reduce { op, axes, keepdim } => (
            Kind::Reduce(*op),
            vec![Attr::Axes {
                axes: axes.clone(),
                keepdim: *keepdim,
            }],
        ),
        Op::ArgMax { axis } => (Kind::ArgMax, vec![Attr::Axis(*axis)]),
        Op::MatMul => (Kind::MatMul, vec![]),
        Op::Reshape => (Kind::Reshape, vec![t()]),
        Op::Transpose { perm } => (Kind::Transpose, vec![Attr::Perm(perm.clone())]),
        Op::Broadcast => (Kind::Broadcast, vec![t()]),
        Op::Slice { axis, start, end } => (
            Kind::Slice,
            vec![Attr::Slice {
                axis: *axis,
                start: *start,
                end: *end,
            }],
        ),
        Op::Concat { axis } => (Kind::Concat, vec![Attr::Axis(*axis)]),
        Op::Gather { axis } => (Kind::Gather, vec![Attr::Axis(*axis)]),
        Op::ScatterAdd { axis } => (Kind::ScatterAdd, vec![Attr::Axis(*axis), t()]),
        Op::Unfold { window, fill } => (Kind::Unfold, vec![Attr::window(window, Some(*fill))]),
        Op::Fold { window } => (Kind::Fold, vec![Attr::window(window, None), t()]),
        Op::Random { stream } => (Kind::Random, vec![Attr::Stream(*stream), t()]),
    }
}

/// The attributes of an e-node, read from its attribute classes (each
/// holds exactly its one attribute node).
pub fn attrs_of<'a, N: egg::Analysis<TensorLang>>(
    egraph: &'a egg::EGraph<TensorLang, N>,
    node: &TensorLang,
) -> Option<Vec<&'a Attr>> {
    node.attr_ids()
        .iter()
        .map(|&id| {
            egraph[id].nodes.iter().find_map(|n| match n {
                TensorLang::Attr(a) => Some(a),
                TensorLang::Op { .. } => None,
            })
        })
        .collect()
}

/// The e-node for an `ir::Op` over operand classes, adding its attribute
/// nodes to `egraph`.
pub fn enode_of<N: egg::Analysis<TensorLang>>(
    egraph: &mut egg::EGraph<TensorLang, N>,
    op: &Op,
    ty: &TensorType,
    operands: &[Id],
) -> TensorLang {
    let (kind, attrs) = from_ir_op(op, ty);
    let mut args = operands.to_vec();
    for a in attrs {
        args.push(egraph.add(TensorLang::Attr(a)));
    }
    TensorLang::op(kind, args)
}

/// A graph lowered into an e-graph.
pub struct Lowered {
    /// The class of each graph node.
    pub class_of: HashMap<NodeId, Id>,
    /// Every graph node in topological order with the e-node it became.
    pub originals: Vec<(NodeId, TensorLang)>,
}

/// Adds every node of `graph` to `egraph`, checking that the analysis
/// infers the node's declared type (so an unverified graph is refused,
/// not mis-optimized).
pub fn lower<N: egg::Analysis<TensorLang>>(
    graph: &Graph,
    egraph: &mut egg::EGraph<TensorLang, N>,
    type_of: impl Fn(&egg::EGraph<TensorLang, N>, Id) -> Option<TensorType>,
) -> Result<Lowered, PassError> {
    let order = graph.topo_order();
    if order.len() != graph.len() {
        return Err(PassError::new("the graph has a cycle"));
    }
    let mut class_of: HashMap<NodeId, Id> = HashMap::with_capacity(order.len());
    let mut originals = Vec::with_capacity(order.len());
    for &n in &order {
        let node = graph.node(n);
        let operands: Vec<Id> = graph.operands(n).iter().map(|o| class_of[o]).collect();
        let enode = enode_of(egraph, &node.op, &node.ty, &operands);
        let id = egraph.add(enode.clone());
        match type_of(egraph, id) {
            Some(t) if t == node.ty => {}
            found => {
                return Err(PassError::new(format!(
                    "node {} `{}` is typed {} but its operands give {}",
                    n.index(),
                    node.op.mnemonic(),
                    node.ty,
                    found.map_or("no type".to_string(), |t| t.to_string())
                )))
            }
        }
        class_of.insert(n, id);
        originals.push((n, enode));
    }
    Ok(Lowered {
        class_of,
        originals,
    })
}
