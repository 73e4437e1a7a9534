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
    DType, Dim, Graph, Init, Literal, NodeId, Op, OpKind, ScanBody, TensorType, Ties, Window,
};
use std::cmp::Ordering;
use std::collections::HashMap;
use std::fmt;
use std::hash::{Hash, Hasher};
use std::sync::Arc;

/// How many attribute children an e-node of `kind` has after its tensor
/// operands: one for the op's attributes if the table lists any (a
/// param's name and init are one), and one for its declared type if it
/// takes one.
pub fn attr_count(kind: OpKind) -> usize {
    let info = kind.info();
    usize::from(!info.attrs.is_empty()) + usize::from(info.typed)
}

/// Whether `n` children fit `kind`.
fn fits(kind: OpKind, n: usize) -> bool {
    let attrs = attr_count(kind);
    n >= attrs && kind.info().arity.admits(n - attrs)
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
            DType::I8 => 4,
            DType::U8 => 5,
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
    /// An input's name.
    Name(String),
    Type(Ty),
    /// A param's or state's name, and its initializer: the
    /// initializer's code and up to two arguments.
    Leaf(String, u8, Bits, Bits),
    Splat(Bits),
    Dense(Vec<Bits>),
    Axis(usize),
    Axes {
        axes: Vec<usize>,
        keepdim: bool,
        ties: Ties,
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
    /// A scan's body and which of the loop's results the node is.
    Scan(ScanRef),
}

/// A scan body as an attribute: compared, hashed and ordered by its
/// fingerprint (a hash of its printed form, the same in every run), so the
/// e-graph treats nodes of the same loop alike and orders them
/// deterministically.
#[derive(Debug, Clone)]
pub struct ScanRef {
    pub body: Arc<ScanBody>,
    pub result: usize,
}

impl ScanRef {
    fn key(&self) -> (u64, usize) {
        (self.body.fingerprint(), self.result)
    }
}

impl PartialEq for ScanRef {
    fn eq(&self, other: &Self) -> bool {
        self.key() == other.key()
    }
}
impl Eq for ScanRef {}
impl Hash for ScanRef {
    fn hash<H: Hasher>(&self, state: &mut H) {
        self.key().hash(state)
    }
}
impl PartialOrd for ScanRef {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}
impl Ord for ScanRef {
    fn cmp(&self, other: &Self) -> Ordering {
        self.key().cmp(&other.key())
    }
}

impl Attr {
    fn leaf(name: &str, init: &Init) -> Attr {
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
        Attr::Leaf(name.to_string(), code, Bits(a), Bits(b))
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
            Attr::Leaf(n, code, a, b) => match Attr::to_init(*code, a.0, b.0) {
                Some(i) => write!(f, "{n:?} init={i}"),
                None => write!(f, "{n:?} init=?"),
            },
            Attr::Splat(v) => write!(f, "{:?}", v.0),
            Attr::Dense(vs) => write!(f, "dense[{}]", vs.len()),
            Attr::Axis(a) => write!(f, "axis={a}"),
            Attr::Axes {
                axes,
                keepdim,
                ties,
            } => {
                write!(f, "axes={axes:?} keepdim={keepdim}")?;
                match ties {
                    Ties::Split => Ok(()),
                    Ties::First => write!(f, " ties={}", ties.name()),
                }
            }
            Attr::Perm(p) => write!(f, "perm={p:?}"),
            Attr::Slice { axis, start, end } => write!(f, "axis={axis} {start}..{end}"),
            Attr::Window { kernel, .. } => write!(f, "window{kernel:?}"),
            Attr::Stream(s) => write!(f, "stream={s}"),
            Attr::Scan(r) => write!(f, "body={:016x} result={}", r.body.fingerprint(), r.result),
        }
    }
}

/// An e-node: a tensor op over its operand and attribute classes, or an
/// attribute.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum TensorLang {
    Op { kind: OpKind, args: Vec<Id> },
    Attr(Attr),
}

impl TensorLang {
    pub fn op(kind: OpKind, args: Vec<Id>) -> TensorLang {
        TensorLang::Op { kind, args }
    }

    pub fn kind(&self) -> Option<OpKind> {
        match self {
            TensorLang::Op { kind, .. } => Some(*kind),
            TensorLang::Attr(_) => None,
        }
    }

    /// The tensor operands (children before the attributes).
    pub fn operands(&self) -> &[Id] {
        match self {
            TensorLang::Op { kind, args } => &args[..args.len().saturating_sub(attr_count(*kind))],
            TensorLang::Attr(_) => &[],
        }
    }

    /// The attribute children.
    pub fn attr_ids(&self) -> &[Id] {
        match self {
            TensorLang::Op { kind, args } => &args[args.len().saturating_sub(attr_count(*kind))..],
            TensorLang::Attr(_) => &[],
        }
    }
}

impl Language for TensorLang {
    type Discriminant = Option<OpKind>;

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
        match OpKind::from_mnemonic(op) {
            Some(kind) if fits(kind, children.len()) => Ok(TensorLang::op(kind, children)),
            _ => Err(UnknownOp(format!("{op} with {} children", children.len()))),
        }
    }
}

/// The `ir::Op` an e-node stands for, and the declared type when the op
/// takes its type from the node (`None` when inferred from operands).
/// `None` when the attributes do not fit the kind (never for e-nodes this
/// module built).
pub fn to_ir_op(kind: OpKind, attrs: &[&Attr]) -> Option<(Op, Option<TensorType>)> {
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
    let leaf = |a: &Attr| match a {
        Attr::Leaf(n, c, x, y) => Some((n.clone(), Attr::to_init(*c, x.0, y.0)?)),
        _ => None,
    };
    // The table says which attributes follow the operands: the op's own
    // (one e-node, if it has any), then its declared type.
    let info = kind.info();
    let (payload, declared) = if info.typed {
        let (t, rest) = attrs.split_last()?;
        (rest, Some(ty(t)?))
    } else {
        (attrs, None)
    };
    let payload = match (payload, info.attrs.is_empty()) {
        ([], true) => None,
        ([a], false) => Some(*a),
        _ => return None,
    };
    let op = match kind {
        OpKind::Input => Op::Input {
            name: name(payload?)?,
        },
        OpKind::Param => {
            let (name, init) = leaf(payload?)?;
            Op::Param { name, init }
        }
        OpKind::State => {
            let (name, init) = leaf(payload?)?;
            Op::State { name, init }
        }
        OpKind::Const => Op::Const(match payload? {
            Attr::Splat(v) => Literal::Splat(v.0),
            Attr::Dense(vs) => Literal::Dense(vs.iter().map(|b| b.0).collect()),
            _ => return None,
        }),
        OpKind::Iota => Op::Iota {
            axis: axis(payload?)?,
        },
        OpKind::Unary(u) => Op::Unary(u),
        OpKind::Binary(b) => Op::Binary(b),
        OpKind::Select => Op::Select,
        OpKind::Cast => Op::Cast,
        OpKind::Reduce(op) => match payload? {
            Attr::Axes {
                axes,
                keepdim,
                ties,
            } => Op::Reduce {
                op,
                axes: axes.clone(),
                keepdim: *keepdim,
                ties: *ties,
            },
            _ => return None,
        },
        OpKind::ArgMax => Op::ArgMax {
            axis: axis(payload?)?,
        },
        OpKind::MatMul => Op::MatMul,
        OpKind::Reshape => Op::Reshape,
        OpKind::Transpose => match payload? {
            Attr::Perm(p) => Op::Transpose { perm: p.clone() },
            _ => return None,
        },
        OpKind::Broadcast => Op::Broadcast,
        OpKind::Slice => match payload? {
            Attr::Slice { axis, start, end } => Op::Slice {
                axis: *axis,
                start: *start,
                end: *end,
            },
            _ => return None,
        },
        OpKind::Concat => Op::Concat {
            axis: axis(payload?)?,
        },
        OpKind::Gather => Op::Gather {
            axis: axis(payload?)?,
        },
        OpKind::ScatterAdd => Op::ScatterAdd {
            axis: axis(payload?)?,
        },
        OpKind::Unfold => {
            let (window, fill) = window(payload?)?;
            Op::Unfold {
                window,
                fill: fill?,
            }
        }
        OpKind::Fold => Op::Fold {
            window: window(payload?)?.0,
        },
        OpKind::Random => match payload? {
            Attr::Stream(s) => Op::Random { stream: *s },
            _ => return None,
        },
        OpKind::Scan => match payload? {
            Attr::Scan(r) => Op::Scan {
                body: r.body.clone(),
                result: r.result,
            },
            _ => return None,
        },
    };
    Some((op, declared))
}

/// The kind and attributes of an `ir::Op` whose node has type `ty`.
pub fn from_ir_op(op: &Op, ty: &TensorType) -> (OpKind, Vec<Attr>) {
    let t = || Attr::Type(Ty(ty.clone()));
    match op {
        Op::Input { name } => (OpKind::Input, vec![Attr::Name(name.clone()), t()]),
        Op::Param { name, init } => (OpKind::Param, vec![Attr::leaf(name, init), t()]),
        Op::State { name, init } => (OpKind::State, vec![Attr::leaf(name, init), t()]),
        Op::Const(Literal::Splat(v)) => (OpKind::Const, vec![Attr::Splat(Bits(*v)), t()]),
        Op::Const(Literal::Dense(vs)) => (
            OpKind::Const,
            vec![Attr::Dense(vs.iter().map(|&v| Bits(v)).collect()), t()],
        ),
        Op::Iota { axis } => (OpKind::Iota, vec![Attr::Axis(*axis), t()]),
        Op::Unary(u) => (OpKind::Unary(*u), vec![]),
        Op::Binary(b) => (OpKind::Binary(*b), vec![]),
        Op::Select => (OpKind::Select, vec![]),
        Op::Cast => (OpKind::Cast, vec![t()]),
        Op::Reduce {
            op,
            axes,
            keepdim,
            ties,
        } => (
            OpKind::Reduce(*op),
            vec![Attr::Axes {
                axes: axes.clone(),
                keepdim: *keepdim,
                ties: *ties,
            }],
        ),
        Op::ArgMax { axis } => (OpKind::ArgMax, vec![Attr::Axis(*axis)]),
        Op::MatMul => (OpKind::MatMul, vec![]),
        Op::Reshape => (OpKind::Reshape, vec![t()]),
        Op::Transpose { perm } => (OpKind::Transpose, vec![Attr::Perm(perm.clone())]),
        Op::Broadcast => (OpKind::Broadcast, vec![t()]),
        Op::Slice { axis, start, end } => (
            OpKind::Slice,
            vec![Attr::Slice {
                axis: *axis,
                start: *start,
                end: *end,
            }],
        ),
        Op::Concat { axis } => (OpKind::Concat, vec![Attr::Axis(*axis)]),
        Op::Gather { axis } => (OpKind::Gather, vec![Attr::Axis(*axis)]),
        Op::ScatterAdd { axis } => (OpKind::ScatterAdd, vec![Attr::Axis(*axis), t()]),
        Op::Unfold { window, fill } => (OpKind::Unfold, vec![Attr::window(window, Some(*fill))]),
        Op::Fold { window } => (OpKind::Fold, vec![Attr::window(window, None), t()]),
        Op::Random { stream } => (OpKind::Random, vec![Attr::Stream(*stream), t()]),
        Op::Scan { body, result } => (
            OpKind::Scan,
            vec![Attr::Scan(ScanRef {
                body: body.clone(),
                result: *result,
            })],
        ),
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
