//! The dataflow graph: a petgraph `StableDiGraph` whose nodes are ops with
//! their result types, and whose edges carry the operand position.
//!
//! Every constructor infers (or checks) the result type, so a graph built
//! through this API is well-typed by construction; `verify` re-checks graphs
//! that come from elsewhere (the text parser, rewrites).

use crate::infer::{infer, ShapeError};
use crate::op::{BinaryOp, Init, Literal, Op, ReduceOp, Ties, UnaryOp, Window};
use crate::types::{DType, Dim, Shape, TensorType};
use petgraph::stable_graph::{NodeIndex, StableDiGraph};
use petgraph::visit::EdgeRef;
use petgraph::Direction;
use std::collections::BinaryHeap;

pub type NodeId = NodeIndex<u32>;

/// Byte range in the source the node came from, for diagnostics and for
/// telling the user which line an optimized kernel came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Span {
    pub start: u32,
    pub end: u32,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Node {
    pub op: Op,
    pub ty: TensorType,
    /// The source-level name bound to this value (`logits`), if any.
    pub name: Option<String>,
    pub span: Option<Span>,
}

/// A named value the graph hands back to the runtime.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Output {
    pub name: String,
    pub node: NodeId,
}

/// The new value of a param or state tensor after one step. The runtime
/// writes it back in place.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Update {
    pub target: String,
    pub value: NodeId,
}

#[derive(Debug, Clone, Default)]
pub struct Graph {
    pub name: String,
    pub g: StableDiGraph<Node, usize>,
    pub outputs: Vec<Output>,
    pub updates: Vec<Update>,
    /// When set, new nodes get this span (the builder's "current location").
    pub current_span: Option<Span>,
}

impl Graph {
    pub fn new(name: impl Into<String>) -> Graph {
        Graph {
            name: name.into(),
            ..Graph::default()
        }
    }

    pub fn node(&self, id: NodeId) -> &Node {
        &self.g[id]
    }

    pub fn node_mut(&mut self, id: NodeId) -> &mut Node {
        &mut self.g[id]
    }

    pub fn ty(&self, id: NodeId) -> &TensorType {
        &self.g[id].ty
    }

    pub fn contains(&self, id: NodeId) -> bool {
        self.g.contains_node(id)
    }

    pub fn len(&self) -> usize {
        self.g.node_count()
    }

    pub fn is_empty(&self) -> bool {
        self.g.node_count() == 0
    }

    /// Operands of `id`, in position order.
    pub fn operands(&self, id: NodeId) -> Vec<NodeId> {
        let mut edges: Vec<(usize, NodeId)> = self
            .g
            .edges_directed(id, Direction::Incoming)
            .map(|e| (*e.weight(), e.source()))
            .collect();
        edges.sort_unstable_by_key(|&(pos, _)| pos);
        edges.into_iter().map(|(_, n)| n).collect()
    }

    /// Nodes that use `id` (each once, in index order).
    pub fn users(&self, id: NodeId) -> Vec<NodeId> {
        let mut users: Vec<NodeId> = self.g.neighbors_directed(id, Direction::Outgoing).collect();
        users.sort_unstable();
        users.dedup();
        users
    }

    /// Adds a node, inferring its type; `declared` is required for ops whose
    /// shape is an attribute and is checked against the inferred type for others.
    pub fn add(
        &mut self,
        op: Op,
        args: &[NodeId],
        declared: Option<TensorType>,
    ) -> Result<NodeId, ShapeError> {
        let arg_types: Vec<&TensorType> = args.iter().map(|&a| &self.g[a].ty).collect();
        let ty = infer(&op, &arg_types, declared.as_ref())?;
        if let Some(d) = &declared {
            if *d != ty {
                return crate::infer::err(format!(
                    "`{}` produces {ty}, but {d} was declared",
                    op.mnemonic()
                ));
            }
        }
        let id = self.g.add_node(Node {
            op,
            ty,
            name: None,
            span: self.current_span,
        });
        for (pos, &a) in args.iter().enumerate() {
            self.g.add_edge(a, id, pos);
        }
        Ok(id)
    }

    /// Every node id in a deterministic topological order: operands first,
    /// ties broken by the smaller index. A graph printed in this order and
    /// parsed back prints identically.
    pub fn topo_order(&self) -> Vec<NodeId> {
        let mut pending: std::collections::HashMap<NodeId, usize> = self
            .g
            .node_indices()
            .map(|n| (n, self.g.edges_directed(n, Direction::Incoming).count()))
            .collect();
        let mut ready: BinaryHeap<std::cmp::Reverse<NodeId>> = pending
            .iter()
            .filter(|&(_, &c)| c == 0)
            .map(|(&n, _)| std::cmp::Reverse(n))
            .collect();
        let mut order = Vec::with_capacity(self.g.node_count());
        while let Some(std::cmp::Reverse(n)) = ready.pop() {
            order.push(n);
            for e in self.g.edges_directed(n, Direction::Outgoing) {
                if let Some(c) = pending.get_mut(&e.target()) {
                    *c -= 1;
                    if *c == 0 {
                        ready.push(std::cmp::Reverse(e.target()));
                    }
                }
            }
        }
        order
    }

    /// Nodes of an op kind that identifies a leaf by name, e.g. all params.
    pub fn params(&self) -> Vec<(NodeId, &str)> {
        self.topo_order()
            .into_iter()
            .filter_map(|n| match &self.g[n].op {
                Op::Param { name, .. } => Some((n, name.as_str())),
                _ => None,
            })
            .collect()
    }

    pub fn inputs(&self) -> Vec<(NodeId, &str)> {
        self.topo_order()
            .into_iter()
            .filter_map(|n| match &self.g[n].op {
                Op::Input { name } => Some((n, name.as_str())),
                _ => None,
            })
            .collect()
    }

    pub fn find_leaf(&self, name: &str) -> Option<NodeId> {
        self.g.node_indices().find(|&n| match &self.g[n].op {
            Op::Input { name: m } | Op::Param { name: m, .. } | Op::State { name: m, .. } => {
                m == name
            }
            _ => false,
        })
    }

    pub fn output(&self, name: &str) -> Option<NodeId> {
        self.outputs.iter().find(|o| o.name == name).map(|o| o.node)
    }

    pub fn set_output(&mut self, name: impl Into<String>, node: NodeId) {
        let name = name.into();
        match self.outputs.iter_mut().find(|o| o.name == name) {
            Some(o) => o.node = node,
            None => self.outputs.push(Output { name, node }),
        }
    }

    /// Removes nodes that no output or update depends on.
    pub fn prune(&mut self) {
        self.prune_keeping(&[]);
    }

    /// Removes nodes that no output, update or node of `keep` depends on
    /// (a scan body keeps every input of its list, read or not).
    pub fn prune_keeping(&mut self, keep: &[NodeId]) {
        let mut live = std::collections::HashSet::new();
        let mut stack: Vec<NodeId> = self
            .outputs
            .iter()
            .map(|o| o.node)
            .chain(self.updates.iter().map(|u| u.value))
            .chain(keep.iter().copied())
            .collect();
        while let Some(n) = stack.pop() {
            if live.insert(n) {
                stack.extend(self.g.neighbors_directed(n, Direction::Incoming));
            }
        }
        let dead: Vec<NodeId> = self
            .g
            .node_indices()
            .filter(|n| !live.contains(n))
            .collect();
        for n in dead {
            self.g.remove_node(n);
        }
    }

    /// Makes every node that reads `old` read `new` instead (at the same
    /// operand positions); outputs and updates naming `old` name `new`.
    /// The caller keeps types equal.
    pub fn replace_uses(&mut self, old: NodeId, new: NodeId) {
        let edges: Vec<(NodeId, usize)> = self
            .g
            .edges_directed(old, Direction::Outgoing)
            .map(|e| (e.target(), *e.weight()))
            .collect();
        for (user, pos) in edges {
            if let Some(e) = self.g.find_edge(old, user) {
                self.g.remove_edge(e);
            }
            self.g.add_edge(new, user, pos);
        }
        for o in &mut self.outputs {
            if o.node == old {
                o.node = new;
            }
        }
        for u in &mut self.updates {
            if u.value == old {
                u.value = new;
            }
        }
    }

    // ---- typed builders: the vocabulary front ends and passes use ----

    pub fn input(&mut self, name: &str, ty: TensorType) -> NodeId {
        self.leaf(Op::Input { name: name.into() }, ty)
    }

    pub fn param(&mut self, name: &str, ty: TensorType, init: Init) -> NodeId {
        self.leaf(
            Op::Param {
                name: name.into(),
                init,
            },
            ty,
        )
    }

    pub fn state(&mut self, name: &str, ty: TensorType, init: Init) -> NodeId {
        self.leaf(
            Op::State {
                name: name.into(),
                init,
            },
            ty,
        )
    }

    fn leaf(&mut self, op: Op, ty: TensorType) -> NodeId {
        self.g.add_node(Node {
            op,
            ty,
            name: None,
            span: self.current_span,
        })
    }

    /// A constant splatted to `ty`.
    pub fn splat(&mut self, value: f64, ty: TensorType) -> NodeId {
        self.leaf(Op::Const(Literal::Splat(value)), ty)
    }

    /// A scalar constant.
    pub fn scalar(&mut self, value: f64, dtype: DType) -> NodeId {
        self.splat(value, TensorType::scalar(dtype))
    }

    pub fn iota(&mut self, axis: usize, ty: TensorType) -> Result<NodeId, ShapeError> {
        self.add(Op::Iota { axis }, &[], Some(ty))
    }

    pub fn unary(&mut self, op: UnaryOp, x: NodeId) -> Result<NodeId, ShapeError> {
        self.add(Op::Unary(op), &[x], None)
    }

    pub fn binary(&mut self, op: BinaryOp, a: NodeId, b: NodeId) -> Result<NodeId, ShapeError> {
        self.add(Op::Binary(op), &[a, b], None)
    }

    pub fn select(&mut self, c: NodeId, a: NodeId, b: NodeId) -> Result<NodeId, ShapeError> {
        self.add(Op::Select, &[c, a, b], None)
    }

    pub fn cast(&mut self, x: NodeId, dtype: DType) -> Result<NodeId, ShapeError> {
        if self.ty(x).dtype == dtype {
            return Ok(x);
        }
        let ty = self.ty(x).with_dtype(dtype);
        self.add(Op::Cast, &[x], Some(ty))
    }

    pub fn reduce(
        &mut self,
        op: ReduceOp,
        x: NodeId,
        axes: Vec<usize>,
        keepdim: bool,
    ) -> Result<NodeId, ShapeError> {
        let ties = Ties::Split;
        self.add(
            Op::Reduce {
                op,
                axes,
                keepdim,
                ties,
            },
            &[x],
            None,
        )
    }

    /// The max over `axes` whose gradient goes to the first maximum
    /// (`nn.MaxPool`'s), not split among ties (`torch.amax`'s).
    pub fn reduce_max_first(
        &mut self,
        x: NodeId,
        axes: Vec<usize>,
        keepdim: bool,
    ) -> Result<NodeId, ShapeError> {
        let op = Op::Reduce {
            op: ReduceOp::Max,
            axes,
            keepdim,
            ties: Ties::First,
        };
        self.add(op, &[x], None)
    }

    pub fn argmax(&mut self, x: NodeId, axis: usize) -> Result<NodeId, ShapeError> {
        self.add(Op::ArgMax { axis }, &[x], None)
    }

    pub fn matmul(&mut self, a: NodeId, b: NodeId) -> Result<NodeId, ShapeError> {
        self.add(Op::MatMul, &[a, b], None)
    }

    pub fn reshape(&mut self, x: NodeId, shape: Shape) -> Result<NodeId, ShapeError> {
        if self.ty(x).shape == shape {
            return Ok(x);
        }
        let ty = self.ty(x).with_shape(shape);
        self.add(Op::Reshape, &[x], Some(ty))
    }

    pub fn transpose(&mut self, x: NodeId, perm: Vec<usize>) -> Result<NodeId, ShapeError> {
        self.add(Op::Transpose { perm }, &[x], None)
    }

    pub fn broadcast(&mut self, x: NodeId, shape: Shape) -> Result<NodeId, ShapeError> {
        if self.ty(x).shape == shape {
            return Ok(x);
        }
        let ty = self.ty(x).with_shape(shape);
        self.add(Op::Broadcast, &[x], Some(ty))
    }

    pub fn slice(
        &mut self,
        x: NodeId,
        axis: usize,
        start: usize,
        end: usize,
    ) -> Result<NodeId, ShapeError> {
        self.add(Op::Slice { axis, start, end }, &[x], None)
    }

    pub fn concat(&mut self, xs: &[NodeId], axis: usize) -> Result<NodeId, ShapeError> {
        self.add(Op::Concat { axis }, xs, None)
    }

    pub fn gather(&mut self, data: NodeId, idx: NodeId, axis: usize) -> Result<NodeId, ShapeError> {
        self.add(Op::Gather { axis }, &[data, idx], None)
    }

    pub fn scatter_add(
        &mut self,
        updates: NodeId,
        idx: NodeId,
        axis: usize,
        ty: TensorType,
    ) -> Result<NodeId, ShapeError> {
        self.add(Op::ScatterAdd { axis }, &[updates, idx], Some(ty))
    }

    pub fn unfold(&mut self, x: NodeId, window: Window, fill: f64) -> Result<NodeId, ShapeError> {
        self.add(Op::Unfold { window, fill }, &[x], None)
    }

    /// The adjoint of `unfold`, producing `ty` (`[N, C, *in]`).
    pub fn fold(
        &mut self,
        cols: NodeId,
        window: Window,
        ty: TensorType,
    ) -> Result<NodeId, ShapeError> {
        self.add(Op::Fold { window }, &[cols], Some(ty))
    }

    /// Uniform `[0, 1)` values of type `ty` keyed by the scalar i32 `key`.
    pub fn random(
        &mut self,
        key: NodeId,
        stream: u32,
        ty: TensorType,
    ) -> Result<NodeId, ShapeError> {
        self.add(Op::Random { stream }, &[key], Some(ty))
    }

    /// Every result of one loop over `body` (see [`crate::scan`]): the
    /// final carries, the stacked `ys`, then the carries each step began
    /// with. Results nobody reads are left for `prune`.
    pub fn scan(
        &mut self,
        body: &std::sync::Arc<crate::scan::ScanBody>,
        operands: &[NodeId],
    ) -> Result<Vec<NodeId>, ShapeError> {
        (0..body.results())
            .map(|result| {
                let op = Op::Scan {
                    body: body.clone(),
                    result,
                };
                self.add(op, operands, None)
            })
            .collect()
    }

    // Arithmetic shorthands used all over autodiff and the optimizers.
    pub fn add_(&mut self, a: NodeId, b: NodeId) -> Result<NodeId, ShapeError> {
        self.binary(BinaryOp::Add, a, b)
    }
    pub fn sub(&mut self, a: NodeId, b: NodeId) -> Result<NodeId, ShapeError> {
        self.binary(BinaryOp::Sub, a, b)
    }
    pub fn mul(&mut self, a: NodeId, b: NodeId) -> Result<NodeId, ShapeError> {
        self.binary(BinaryOp::Mul, a, b)
    }
    pub fn div(&mut self, a: NodeId, b: NodeId) -> Result<NodeId, ShapeError> {
        self.binary(BinaryOp::Div, a, b)
    }
    pub fn neg(&mut self, a: NodeId) -> Result<NodeId, ShapeError> {
        self.unary(UnaryOp::Neg, a)
    }

    /// A scalar constant of `like`'s dtype.
    pub fn scalar_like(&mut self, value: f64, like: NodeId) -> NodeId {
        let dtype = self.ty(like).dtype;
        self.scalar(value, dtype)
    }

    /// The rank-polymorphic axis helper: `-1` is the last axis.
    pub fn resolve_axis(&self, x: NodeId, axis: i64) -> Option<usize> {
        let rank = self.ty(x).rank() as i64;
        let a = if axis < 0 { axis + rank } else { axis };
        (0..rank).contains(&a).then_some(a as usize)
    }
}

/// A shape of constant dims.
pub fn shape_of(dims: &[usize]) -> Shape {
    dims.iter().map(|&d| Dim::Const(d)).collect()
}
