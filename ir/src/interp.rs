//! The reference interpreter: what every op means, in plain loops over
//! `f64`s. The JIT is differentially tested against it, and it is fast
//! enough to run small trainings.
//!
//! # Evaluation
//!
//! [`eval`] evaluates every node of a graph in [`Graph::topo_order`] and
//! returns all values. `Input`, `Param` and `State` leaves are read by name
//! from an [`Env`] (one namespace for all three). Their tensors must have the
//! declared dtype and rank; a constant dim must match exactly, and a symbolic
//! dim (`B`) is bound by the first leaf (in topological order) that has it and
//! must then be equal everywhere it appears. Every other node's concrete shape
//! is its declared type with the symbols substituted.
//!
//! # Precision
//!
//! Values are `f64`s whatever the dtype. With [`EvalOptions::exact`] false
//! (the default) every `f32` node's result (leaves included) is rounded to
//! `f32` after its op, so the interpreter mirrors `f32` arithmetic op by op;
//! within one op, arithmetic is `f64` and rounded once (so a `matmul` or
//! `reduce_sum` accumulates in `f64`). With `exact` true nothing is rounded
//! to `f32`; that mode serves finite-difference gradient checks. `i32` and
//! `bool` values are exact integers in both modes: leaves of those dtypes are
//! normalized with [`round_value`] (truncation toward zero; `!= 0`).
//!
//! # Op semantics
//!
//! * Broadcasting (binary ops, `select`, `broadcast`) is numpy's: shapes are
//!   right-aligned and a dim of size 1 stretches.
//! * Floats follow IEEE `f64` (then rounding as above): `x / 0` is `±inf` or
//!   NaN, `log` of a negative number is NaN, `pow` is `powf`. `sigmoid` is
//!   computed stably: `1 / (1 + e^-x)` for `x >= 0`, else `e^x / (1 + e^x)`.
//!   `max`/`min` propagate NaN (like `torch.maximum`); comparisons are IEEE
//!   (every comparison with NaN is false except `ne`) and give `bool` 0/1.
//! * `i32` arithmetic is Rust's wrapping integer arithmetic: `div` truncates
//!   toward zero and division by zero is an [`EvalError::DivisionByZero`]
//!   (`i32::MIN / -1` wraps); `pow` with a negative exponent is `1 / a^-b`
//!   truncated (so 0 unless `a` is ±1; an error for `a == 0`).
//! * `bool` supports only `eq`/`ne` among the binary ops.
//! * `cast`: float to `i32` truncates toward zero, saturating at the `i32`
//!   range (NaN becomes 0); anything to `bool` is `x != 0`; `bool` to a
//!   number is 0/1.
//! * `reduce_sum`/`reduce_mean`/`reduce_max` accumulate each result over the
//!   reduced elements in row-major order. An empty reduction gives 0 (sum),
//!   NaN (float mean), `-inf` (float max) or `i32::MIN` (i32 max); `i32`
//!   mean is the wrapping sum divided (truncating) by the count, and over
//!   no elements an error. `reduce_max` propagates NaN.
//! * `argmax` gives the index of the first maximum; a NaN counts as the
//!   maximum (the first NaN wins, like numpy). An empty axis is an error.
//! * `matmul` is numpy's for rank >= 2 with broadcast batch dims; each
//!   result element sums `a[i,p] * b[p,j]` for `p` ascending, from 0.
//! * `gather` is numpy `take(data, indices, axis)` for indices in
//!   `0..size`; any other index (negative ones included: they are not
//!   wrapped) is an [`EvalError::IndexOutOfRange`]. `scatter_add` is its
//!   adjoint: zeros of the node's shape, to which every update slice is
//!   added at its index (duplicates accumulate, in index order).
//! * `iota` is the index along its axis; `const` splats one value or holds
//!   dense row-major values.
//!
//! The interpreter never panics on a graph: anything inconsistent (a cycle,
//! an operand that does not fit its op, a symbol no input binds) is an
//! [`EvalError`].

use crate::graph::{Graph, NodeId};
use crate::op::{BinaryOp, Literal, Op, ReduceOp, UnaryOp};
use crate::scan::ScanBody;
use crate::symbols::{self, BindError, Bindings};
use crate::tensor::{checked_numel, round_value, strides_of, Tensor, TensorError};
use crate::types::{DType, Dim, TensorType};
use std::borrow::Cow;
use std::collections::HashMap;
use std::fmt;
use thiserror::Error;

#[derive(Debug, Clone, PartialEq, Error)]
pub enum EvalError {
    #[error("missing {kind} `{name}` (expected {expected})")]
    Missing {
        kind: &'static str,
        name: String,
        expected: TensorType,
    },
    #[error("{kind} `{name}` expects {expected}, but was given {}", Dims(*.dtype, .shape))]
    Mismatch {
        kind: &'static str,
        name: String,
        expected: TensorType,
        dtype: DType,
        shape: Vec<usize>,
    },
    /// A symbolic dim that one leaf binds differently from an earlier one.
    #[error(transparent)]
    InconsistentSymbol(Box<SymbolConflict>),
    #[error("{node}: dim `{symbol}` is not bound by any input, param or state")]
    UnboundSymbol { node: String, symbol: String },
    #[error("the graph has a cycle")]
    Cycle,
    #[error("{node}: index {index} is out of range for axis {axis} of size {size}")]
    IndexOutOfRange {
        node: String,
        index: i64,
        axis: usize,
        size: usize,
    },
    #[error("{node}: integer division by zero")]
    DivisionByZero { node: String },
    /// Anything else that does not fit: an operand of the wrong shape or
    /// dtype, a malformed attribute, a bad tensor in the environment.
    #[error("{node}: {message}")]
    Invalid { node: String, message: String },
    #[error(transparent)]
    Tensor(#[from] TensorError),
}

#[derive(Debug, Clone, PartialEq, Error)]
#[error(
    "{kind} `{name}` expects {expected}, but was given {}: `{symbol}` would be {found}, \
     but {bound_by} bound it to {bound}",
    Dims(*.dtype, .shape)
)]
pub struct SymbolConflict {
    pub kind: &'static str,
    pub name: String,
    pub expected: TensorType,
    pub dtype: DType,
    pub shape: Vec<usize>,
    pub symbol: String,
    pub found: usize,
    pub bound: usize,
    /// The leaf that bound the symbol first, e.g. "input `x`".
    pub bound_by: String,
}

/// Formats a concrete type as `f32[2,3]`.
struct Dims<'a>(DType, &'a [usize]);

impl fmt::Display for Dims<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}[", self.0)?;
        for (i, d) in self.1.iter().enumerate() {
            if i > 0 {
                f.write_str(",")?;
            }
            write!(f, "{d}")?;
        }
        f.write_str("]")
    }
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct EvalOptions {
    /// Keep everything in `f64` instead of rounding `f32` results op by op.
    pub exact: bool,
}

impl EvalOptions {
    /// Mirrors `f32` arithmetic op by op (the default).
    pub const F32: EvalOptions = EvalOptions { exact: false };
    /// Everything in `f64`, for finite-difference checks.
    pub const EXACT: EvalOptions = EvalOptions { exact: true };
}

/// The tensors a graph's `Input`, `Param` and `State` leaves read, by name.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Env {
    tensors: HashMap<String, Tensor>,
}

impl Env {
    pub fn new() -> Env {
        Env::default()
    }

    /// Adds (or replaces) a tensor, returning the old one.
    pub fn insert(&mut self, name: impl Into<String>, tensor: Tensor) -> Option<Tensor> {
        self.tensors.insert(name.into(), tensor)
    }

    /// Builder form of [`Env::insert`].
    pub fn with(mut self, name: impl Into<String>, tensor: Tensor) -> Env {
        self.insert(name, tensor);
        self
    }

    pub fn get(&self, name: &str) -> Option<&Tensor> {
        self.tensors.get(name)
    }

    pub fn get_mut(&mut self, name: &str) -> Option<&mut Tensor> {
        self.tensors.get_mut(name)
    }

    pub fn remove(&mut self, name: &str) -> Option<Tensor> {
        self.tensors.remove(name)
    }

    pub fn contains(&self, name: &str) -> bool {
        self.tensors.contains_key(name)
    }

    pub fn len(&self) -> usize {
        self.tensors.len()
    }

    pub fn is_empty(&self) -> bool {
        self.tensors.is_empty()
    }

    /// Every `(name, tensor)`, in no particular order.
    pub fn iter(&self) -> impl Iterator<Item = (&str, &Tensor)> {
        self.tensors.iter().map(|(k, v)| (k.as_str(), v))
    }

    /// Writes back the result of [`run_updates`].
    pub fn apply_updates(&mut self, updates: Vec<(String, Tensor)>) {
        for (name, t) in updates {
            self.tensors.insert(name, t);
        }
    }
}

impl FromIterator<(String, Tensor)> for Env {
    fn from_iter<I: IntoIterator<Item = (String, Tensor)>>(iter: I) -> Env {
        Env {
            tensors: iter.into_iter().collect(),
        }
    }
}

impl Extend<(String, Tensor)> for Env {
    fn extend<I: IntoIterator<Item = (String, Tensor)>>(&mut self, iter: I) {
        self.tensors.extend(iter);
    }
}

/// The value of every node of an evaluated graph.
#[derive(Debug, Clone, Default)]
pub struct Values {
    values: HashMap<NodeId, Tensor>,
    outputs: Vec<(String, NodeId)>,
    symbols: HashMap<String, usize>,
}

impl Values {
    pub fn get(&self, id: NodeId) -> Option<&Tensor> {
        self.values.get(&id)
    }

    /// Moves a value out.
    pub fn take(&mut self, id: NodeId) -> Option<Tensor> {
        self.values.remove(&id)
    }

    /// The value of the graph output `name`.
    pub fn output(&self, name: &str) -> Option<&Tensor> {
        let (_, id) = self.outputs.iter().find(|(n, _)| n == name)?;
        self.values.get(id)
    }

    /// Every graph output, in the graph's order.
    pub fn outputs(&self) -> impl Iterator<Item = (&str, &Tensor)> {
        self.outputs
            .iter()
            .filter_map(|(n, id)| Some((n.as_str(), self.values.get(id)?)))
    }

    /// The size bound to each symbolic dim.
    pub fn symbols(&self) -> &HashMap<String, usize> {
        &self.symbols
    }

    pub fn len(&self) -> usize {
        self.values.len()
    }

    pub fn is_empty(&self) -> bool {
        self.values.is_empty()
    }
}

impl std::ops::Index<NodeId> for Values {
    type Output = Tensor;

    /// Panics when the node has no value (like `HashMap`'s `Index`); use
    /// [`Values::get`] otherwise.
    fn index(&self, id: NodeId) -> &Tensor {
        match self.values.get(&id) {
            Some(t) => t,
            None => panic!("no value for node {}", id.index()),
        }
    }
}

/// Evaluates every node of `graph`.
pub fn eval(graph: &Graph, env: &Env, opts: EvalOptions) -> Result<Values, EvalError> {
    let order = graph.topo_order();
    if order.len() != graph.len() {
        return Err(EvalError::Cycle);
    }
    let symbols = bind_in_order(graph, &order, env)?;
    let mut values: HashMap<NodeId, Tensor> = HashMap::with_capacity(order.len());
    // Every result of each loop, so a scan's sibling nodes run it once.
    let mut loops: HashMap<(u64, Vec<NodeId>), Vec<Tensor>> = HashMap::new();
    for &id in &order {
        let at = At { graph, id };
        let node = graph.node(id);
        let shape = resolve(&at, &node.ty, &symbols)?;
        let operands = graph.operands(id);
        let mut args = Vec::with_capacity(operands.len());
        for o in &operands {
            match values.get(o) {
                Some(t) => args.push(t),
                None => return Err(at.invalid("an operand has no value")),
            }
        }
        let mut t = match &node.op {
            Op::Scan { body, result } => {
                let key = (body.fingerprint(), operands.clone());
                if !loops.contains_key(&key) {
                    loops.insert(key.clone(), run_scan(&at, body, &args, opts)?);
                }
                match loops[&key].get(*result) {
                    Some(t) => t.clone(),
                    None => return Err(at.invalid(format!("the loop has no result {result}"))),
                }
            }
            op => eval_op(&at, op, &args, node.ty.dtype, &shape, env, opts)?,
        };
        if t.dtype != node.ty.dtype
            || t.shape != shape
            || Some(t.data.len()) != checked_numel(&shape)
        {
            return Err(at.invalid(format!(
                "computed {} but the node is typed {}",
                Dims(t.dtype, &t.shape),
                Dims(node.ty.dtype, &shape)
            )));
        }
        finish(&mut t, opts);
        values.insert(id, t);
    }
    let outputs = graph
        .outputs
        .iter()
        .map(|o| (o.name.clone(), o.node))
        .collect();
    Ok(Values {
        values,
        outputs,
        symbols,
    })
}

/// The new value of every `graph.updates` target, in the graph's order, from
/// the values of one [`eval`] of that graph (updates whose value node has
/// no value — values of another graph — are left out).
pub fn run_updates(graph: &Graph, values: &Values) -> Vec<(String, Tensor)> {
    graph
        .updates
        .iter()
        .filter_map(|u| Some((u.target.clone(), values.get(u.value)?.clone())))
        .collect()
}

/// One training step: evaluates the graph and writes its updates back into
/// `env`.
pub fn step(graph: &Graph, env: &mut Env, opts: EvalOptions) -> Result<Values, EvalError> {
    let values = eval(graph, env, opts)?;
    env.apply_updates(run_updates(graph, &values));
    Ok(values)
}

/// The size of every symbolic dim, bound by matching the env's tensors
/// against the declared types of the graph's leaves.
pub fn bind_symbols(graph: &Graph, env: &Env) -> Result<HashMap<String, usize>, EvalError> {
    let order = graph.topo_order();
    if order.len() != graph.len() {
        return Err(EvalError::Cycle);
    }
    bind_in_order(graph, &order, env)
}

fn leaf_name(op: &Op) -> Option<(&'static str, &str)> {
    match op {
        Op::Input { name } => Some(("input", name)),
        Op::Param { name, .. } => Some(("param", name)),
        Op::State { name, .. } => Some(("state", name)),
        _ => None,
    }
}

fn bind_in_order(
    graph: &Graph,
    order: &[NodeId],
    env: &Env,
) -> Result<HashMap<String, usize>, EvalError> {
    let mut bound = Bindings::new();
    // Which leaf bound each symbol first, for the message of a conflict.
    let mut bound_by: HashMap<String, String> = HashMap::new();
    for &id in order {
        let node = graph.node(id);
        let Some((kind, name)) = leaf_name(&node.op) else {
            continue;
        };
        let expected = &node.ty;
        let Some(t) = env.get(name) else {
            return Err(EvalError::Missing {
                kind,
                name: name.to_string(),
                expected: expected.clone(),
            });
        };
        if checked_numel(&t.shape) != Some(t.data.len()) {
            return Err(EvalError::Invalid {
                node: format!("{kind} `{name}`"),
                message: format!(
                    "the tensor has {} values but its shape is {}",
                    t.data.len(),
                    Dims(t.dtype, &t.shape)
                ),
            });
        }
        let mismatch = || EvalError::Mismatch {
            kind,
            name: name.to_string(),
            expected: expected.clone(),
            dtype: t.dtype,
            shape: t.shape.clone(),
        };
        if t.dtype != expected.dtype {
            return Err(mismatch());
        }
        match symbols::bind(expected, &t.shape, &mut bound) {
            Ok(()) => {}
            Err(BindError::Rank { .. } | BindError::Constant { .. }) => return Err(mismatch()),
            Err(BindError::Conflict {
                symbol,
                found,
                bound,
            }) => {
                return Err(EvalError::InconsistentSymbol(Box::new(SymbolConflict {
                    kind,
                    name: name.to_string(),
                    expected: expected.clone(),
                    dtype: t.dtype,
                    shape: t.shape.clone(),
                    // Bound earlier in this very shape (`[N, N]`) when no leaf before.
                    bound_by: bound_by
                        .get(&symbol)
                        .cloned()
                        .unwrap_or_else(|| format!("{kind} `{name}`")),
                    symbol,
                    found,
                    bound,
                })));
            }
        }
        for d in &expected.shape {
            if let Dim::Sym(s) = d {
                bound_by
                    .entry(s.clone())
                    .or_insert_with(|| format!("{kind} `{name}`"));
            }
        }
    }
    Ok(bound)
}

/// Where an error happened, formatted only when one does.
struct At<'a> {
    graph: &'a Graph,
    id: NodeId,
}

impl At<'_> {
    fn describe(&self) -> String {
        let node = self.graph.node(self.id);
        let mut s = format!("node {} `{}`", self.id.index(), node.op.mnemonic());
        if let Some((kind, name)) = leaf_name(&node.op) {
            s = format!("{kind} `{name}`");
        } else if let Some(name) = &node.name {
            s.push_str(&format!(" @{name}"));
        }
        s
    }

    fn invalid(&self, message: impl Into<String>) -> EvalError {
        EvalError::Invalid {
            node: self.describe(),
            message: message.into(),
        }
    }

    fn div_zero(&self) -> EvalError {
        EvalError::DivisionByZero {
            node: self.describe(),
        }
    }
}

fn resolve(at: &At<'_>, ty: &TensorType, bindings: &Bindings) -> Result<Vec<usize>, EvalError> {
    let shape = symbols::resolve(&ty.shape, bindings).map_err(|e| EvalError::UnboundSymbol {
        node: at.describe(),
        symbol: e.symbol,
    })?;
    // Products of any subset of the dims (outer/inner sizes) must not
    // overflow either, even when a zero dim makes the element count 0.
    let sane = shape
        .iter()
        .try_fold(1usize, |acc, &d| acc.checked_mul(d.max(1)))
        .is_some();
    if !sane {
        return Err(at.invalid(format!("the shape {shape:?} has too many elements")));
    }
    Ok(shape)
}

/// Rounds a node's result as the options say; `i32`/`bool` always.
fn finish(t: &mut Tensor, opts: EvalOptions) {
    match t.dtype {
        DType::F64 => {}
        DType::F32 if opts.exact => {}
        DType::F32 | DType::I32 | DType::I8 | DType::U8 | DType::Bool => t.round_to_dtype(),
    }
}

fn tensor(dtype: DType, shape: &[usize], data: Vec<f64>) -> Tensor {
    Tensor {
        dtype,
        shape: shape.to_vec(),
        data,
    }
}

fn eval_op(
    at: &At<'_>,
    op: &Op,
    args: &[&Tensor],
    dtype: DType,
    shape: &[usize],
    env: &Env,
    opts: EvalOptions,
) -> Result<Tensor, EvalError> {
    if !op.arity().admits(args.len()) {
        return Err(at.invalid(format!("takes {}, found {}", op.arity(), args.len())));
    }
    let numel = checked_numel(shape).unwrap_or(0);
    Ok(match op {
        Op::Input { name } | Op::Param { name, .. } | Op::State { name, .. } => {
            match env.get(name) {
                Some(t) => t.clone(),
                None => return Err(at.invalid("missing from the environment")),
            }
        }
        Op::Const(Literal::Splat(v)) => tensor(dtype, shape, vec![*v; numel]),
        Op::Const(Literal::Dense(vs)) => {
            if vs.len() != numel {
                return Err(at.invalid(format!(
                    "dense constant has {} values for {} elements",
                    vs.len(),
                    numel
                )));
            }
            tensor(dtype, shape, vs.clone())
        }
        Op::Iota { axis } => {
            if *axis >= shape.len() {
                return Err(at.invalid(format!("axis {axis} is out of range")));
            }
            let stride = strides_of(shape)[*axis];
            let n = shape[*axis];
            let data = (0..numel).map(|i| ((i / stride) % n) as f64).collect();
            tensor(dtype, shape, data)
        }
        Op::Unary(u) => {
            let [x] = operands(at, args)?;
            unary(at, *u, x)?
        }
        Op::Binary(b) => {
            let [x, y] = operands(at, args)?;
            binary(at, *b, x, y, shape)?
        }
        Op::Select => {
            let [c, a, b] = operands(at, args)?;
            if a.dtype != b.dtype {
                return Err(at.invalid("select branches differ in dtype"));
            }
            let c = expand(at, c, shape)?;
            let a2 = expand(at, a, shape)?;
            let b2 = expand(at, b, shape)?;
            let data = c
                .iter()
                .zip(a2.iter().zip(b2.iter()))
                .map(|(&c, (&x, &y))| if c != 0.0 { x } else { y })
                .collect();
            tensor(a.dtype, shape, data)
        }
        Op::Cast => {
            let [x] = operands(at, args)?;
            let data = x
                .data
                .iter()
                .map(|&v| match dtype {
                    // Rounding to f32 (non-exact mode) happens in `finish`.
                    DType::F32 | DType::F64 => v,
                    DType::I32 | DType::I8 | DType::U8 | DType::Bool => round_value(dtype, v),
                })
                .collect();
            tensor(dtype, &x.shape, data)
        }
        // Ties change the gradient, not the value.
        Op::Reduce {
            op, axes, keepdim, ..
        } => {
            let [x] = operands(at, args)?;
            reduce(at, *op, axes, *keepdim, x)?
        }
        Op::ArgMax { axis } => {
            let [x] = operands(at, args)?;
            argmax(at, *axis, x)?
        }
        Op::MatMul => {
            let [a, b] = operands(at, args)?;
            matmul(at, a, b, dtype, shape)?
        }
        Op::Reshape => {
            let [x] = operands(at, args)?;
            if x.data.len() != numel {
                return Err(at.invalid(format!(
                    "cannot reshape {} to {:?}",
                    Dims(x.dtype, &x.shape),
                    shape
                )));
            }
            tensor(x.dtype, shape, x.data.clone())
        }
        Op::Transpose { perm } => {
            let [x] = operands(at, args)?;
            transpose(at, perm, x)?
        }
        Op::Broadcast => {
            let [x] = operands(at, args)?;
            let data = expand(at, x, shape)?.into_owned();
            tensor(x.dtype, shape, data)
        }
        Op::Slice { axis, start, end } => {
            let [x] = operands(at, args)?;
            slice(at, *axis, *start, *end, x)?
        }
        Op::Concat { axis } => concat(at, *axis, args)?,
        Op::Gather { axis } => {
            let [data, idx] = operands(at, args)?;
            gather(at, *axis, data, idx)?
        }
        Op::ScatterAdd { axis } => {
            let [upd, idx] = operands(at, args)?;
            scatter_add(at, *axis, upd, idx, dtype, shape)?
        }
        Op::Unfold { window, fill } => {
            let [x] = operands(at, args)?;
            let sources = window_sources(at, window, &x.shape, shape)?;
            let data = sources
                .iter()
                .map(|s| s.map_or(*fill, |i| x.data[i]))
                .collect();
            tensor(x.dtype, shape, data)
        }
        Op::Fold { window } => {
            let [cols] = operands(at, args)?;
            let sources = window_sources(at, window, shape, &cols.shape)?;
            let mut data = vec![0.0; numel];
            for (s, &v) in sources.iter().zip(&cols.data) {
                if let Some(i) = s {
                    data[*i] += v;
                }
            }
            tensor(dtype, shape, data)
        }
        Op::Random { stream } => {
            let [key] = operands(at, args)?;
            let key = match key.data.as_slice() {
                [k] => *k as i32 as u32,
                _ => return Err(at.invalid("random needs a scalar key")),
            };
            let data = (0..numel)
                .map(|i| crate::op::random_uniform(key, *stream, i as u32))
                .collect();
            tensor(dtype, shape, data)
        }
        Op::Scan { body, result } => {
            let mut results = run_scan(at, body, args, opts)?;
            if *result >= results.len() {
                return Err(at.invalid(format!("the loop has no result {result}")));
            }
            results.swap_remove(*result)
        }
    })
}

/// Every result of a loop (see [`crate::scan`] for their order): the body
/// evaluated once per step on slices of the sequences, as a plain loop.
fn run_scan(
    at: &At<'_>,
    body: &ScanBody,
    args: &[&Tensor],
    opts: EvalOptions,
) -> Result<Vec<Tensor>, EvalError> {
    if args.len() != body.inputs.len() {
        return Err(at.invalid(format!(
            "the body takes {} operands, found {}",
            body.inputs.len(),
            args.len()
        )));
    }
    let axis = body.axis;
    let first_x = body.consts + body.carries;
    let trip = match args[first_x].shape.get(axis) {
        Some(&n) => n,
        None => return Err(at.invalid(format!("axis {axis} is out of range"))),
    };
    let name = |i: usize| match &body.graph.node(body.inputs[i]).op {
        Op::Input { name } => Ok(name.clone()),
        _ => Err(at.invalid("a body input is not an `input`")),
    };
    let mut env = Env::new();
    for (i, arg) in args.iter().enumerate().take(first_x) {
        env.insert(name(i)?, (*arg).clone());
    }
    let steps: Vec<usize> = if body.reverse {
        (0..trip).rev().collect()
    } else {
        (0..trip).collect()
    };
    let mut ys: Vec<Vec<Option<Tensor>>> = vec![vec![None; trip]; body.ys()];
    let mut carries_in: Vec<Vec<Option<Tensor>>> = vec![vec![None; trip]; body.carries];
    for &t in &steps {
        for (i, x) in args.iter().enumerate().skip(first_x) {
            if x.shape.get(axis) != Some(&trip) {
                return Err(at.invalid("the sequences differ in length"));
            }
            env.insert(name(i)?, slice_step(x, axis, t));
        }
        for (k, slot) in carries_in.iter_mut().enumerate() {
            slot[t] = env.get(&name(body.consts + k)?).cloned();
        }
        let values = eval(&body.graph, &env, opts)
            .map_err(|e| at.invalid(format!("step {t} of the loop: {e}")))?;
        let output = |o: usize| {
            values
                .get(body.graph.outputs[o].node)
                .cloned()
                .ok_or_else(|| at.invalid("a body output has no value"))
        };
        for (y, slot) in ys.iter_mut().enumerate() {
            slot[t] = Some(output(body.carries + y)?);
        }
        for k in 0..body.carries {
            env.insert(name(body.consts + k)?, output(k)?);
        }
    }
    let mut results = Vec::with_capacity(body.results());
    for k in 0..body.carries {
        results.push(
            env.get(&name(body.consts + k)?)
                .cloned()
                .ok_or_else(|| at.invalid("no carry"))?,
        );
    }
    for slots in ys.into_iter().chain(carries_in) {
        let steps: Option<Vec<Tensor>> = slots.into_iter().collect();
        match steps {
            Some(steps) if !steps.is_empty() => results.push(stack(&steps, axis)),
            _ => return Err(at.invalid("a scan over an empty sequence has no stacked results")),
        }
    }
    Ok(results)
}

/// Slice `t` of `x` along `axis`, the axis removed.
fn slice_step(x: &Tensor, axis: usize, t: usize) -> Tensor {
    let (outer, n, inner) = split_at_axis(&x.shape, axis);
    let mut data = Vec::with_capacity(outer * inner);
    for o in 0..outer {
        let start = (o * n + t) * inner;
        data.extend_from_slice(&x.data[start..start + inner]);
    }
    let mut shape = x.shape.clone();
    shape.remove(axis);
    tensor(x.dtype, &shape, data)
}

/// Tensors of one shape stacked along a new `axis`.
fn stack(steps: &[Tensor], axis: usize) -> Tensor {
    let first = &steps[0];
    let outer: usize = first.shape[..axis].iter().product();
    let inner: usize = first.shape[axis..].iter().product();
    let mut data = Vec::with_capacity(first.data.len() * steps.len());
    for o in 0..outer {
        for s in steps {
            data.extend_from_slice(&s.data[o * inner..(o + 1) * inner]);
        }
    }
    let mut shape = first.shape.clone();
    shape.insert(axis, steps.len());
    tensor(first.dtype, &shape, data)
}

/// The operands of an op that takes exactly `N` (the op table's arity was
/// checked first, so this fails only on a malformed graph).
fn operands<'a, const N: usize>(
    at: &At<'_>,
    args: &[&'a Tensor],
) -> Result<[&'a Tensor; N], EvalError> {
    args.try_into()
        .map_err(|_| at.invalid("wrong number of operands"))
}

/// For every element of a tensor of shape `out` (row-major), the offset
/// `sum(index[i] * strides[i])`.
fn strided_offsets(out: &[usize], strides: &[usize]) -> Vec<usize> {
    let n = checked_numel(out).unwrap_or(0);
    let mut offsets = Vec::with_capacity(n);
    let mut index = vec![0usize; out.len()];
    let mut off = 0usize;
    for _ in 0..n {
        offsets.push(off);
        for ax in (0..out.len()).rev() {
            index[ax] += 1;
            off += strides[ax];
            if index[ax] < out[ax] {
                break;
            }
            off -= strides[ax] * out[ax];
            index[ax] = 0;
        }
    }
    offsets
}

/// Strides that read a tensor of shape `from` numpy-broadcast to `out`
/// (0 along stretched and missing dims); `None` if it does not broadcast.
fn broadcast_strides(from: &[usize], out: &[usize]) -> Option<Vec<usize>> {
    let lead = out.len().checked_sub(from.len())?;
    let from_strides = strides_of(from);
    let mut strides = vec![0; out.len()];
    for (i, &d) in from.iter().enumerate() {
        let o = out[lead + i];
        if d == o {
            strides[lead + i] = from_strides[i];
        } else if d != 1 {
            return None;
        }
    }
    Some(strides)
}

/// The values of `t` broadcast to `out`, borrowed when no broadcast is needed.
fn expand<'t>(at: &At<'_>, t: &'t Tensor, out: &[usize]) -> Result<Cow<'t, [f64]>, EvalError> {
    if t.shape == out {
        return Ok(Cow::Borrowed(&t.data));
    }
    let Some(strides) = broadcast_strides(&t.shape, out) else {
        return Err(at.invalid(format!(
            "{} does not broadcast to {out:?}",
            Dims(t.dtype, &t.shape)
        )));
    };
    Ok(Cow::Owned(
        strided_offsets(out, &strides)
            .into_iter()
            .map(|o| t.data[o])
            .collect(),
    ))
}

fn sigmoid(x: f64) -> f64 {
    if x >= 0.0 {
        1.0 / (1.0 + (-x).exp())
    } else {
        let e = x.exp();
        e / (1.0 + e)
    }
}

fn unary(at: &At<'_>, op: UnaryOp, x: &Tensor) -> Result<Tensor, EvalError> {
    if !x.dtype.is_float() {
        return Err(at.invalid(format!("needs a float operand, found {}", x.dtype)));
    }
    let f: fn(f64) -> f64 = match op {
        UnaryOp::Neg => |v| -v,
        UnaryOp::Exp => f64::exp,
        UnaryOp::Log => f64::ln,
        UnaryOp::Sqrt => f64::sqrt,
        UnaryOp::Tanh => f64::tanh,
        UnaryOp::Sigmoid => sigmoid,
        UnaryOp::Abs => f64::abs,
        UnaryOp::Round => f64::round_ties_even,
        UnaryOp::Detach => |v| v,
    };
    Ok(tensor(
        x.dtype,
        &x.shape,
        x.data.iter().map(|&v| f(v)).collect(),
    ))
}

/// `max` that propagates NaN.
pub fn max_nan(a: f64, b: f64) -> f64 {
    if a.is_nan() || b.is_nan() {
        f64::NAN
    } else if a >= b {
        a
    } else {
        b
    }
}

/// `min` that propagates NaN.
pub fn min_nan(a: f64, b: f64) -> f64 {
    if a.is_nan() || b.is_nan() {
        f64::NAN
    } else if a <= b {
        a
    } else {
        b
    }
}

/// `a^b` in `i32` (see the module doc); `None` for `0` to a negative power.
fn int_pow(a: i32, b: i32) -> Option<i32> {
    if b >= 0 {
        return Some(a.wrapping_pow(b as u32));
    }
    match a {
        0 => None,
        1 => Some(1),
        -1 => Some(if b % 2 == 0 { 1 } else { -1 }),
        _ => Some(0),
    }
}

fn binary(
    at: &At<'_>,
    op: BinaryOp,
    a: &Tensor,
    b: &Tensor,
    shape: &[usize],
) -> Result<Tensor, EvalError> {
    if a.dtype != b.dtype {
        return Err(at.invalid(format!(
            "operands differ in dtype: {} and {}",
            a.dtype, b.dtype
        )));
    }
    let xa = expand(at, a, shape)?;
    let xb = expand(at, b, shape)?;
    let pairs = xa.iter().copied().zip(xb.iter().copied());
    if op.is_comparison() {
        let f: fn(f64, f64) -> bool = match op {
            BinaryOp::Lt => |x, y| x < y,
            BinaryOp::Le => |x, y| x <= y,
            BinaryOp::Gt => |x, y| x > y,
            BinaryOp::Ge => |x, y| x >= y,
            BinaryOp::Eq => |x, y| x == y,
            _ => |x, y| x != y,
        };
        let data = pairs
            .map(|(x, y)| if f(x, y) { 1.0 } else { 0.0 })
            .collect();
        return Ok(tensor(DType::Bool, shape, data));
    }
    let data = match a.dtype {
        DType::F32 | DType::F64 => {
            let f: fn(f64, f64) -> f64 = match op {
                BinaryOp::Add => |x, y| x + y,
                BinaryOp::Sub => |x, y| x - y,
                BinaryOp::Mul => |x, y| x * y,
                BinaryOp::Div => |x, y| x / y,
                BinaryOp::Pow => f64::powf,
                BinaryOp::Max => max_nan,
                _ => min_nan,
            };
            pairs.map(|(x, y)| f(x, y)).collect()
        }
        DType::I32 => {
            let mut data = Vec::with_capacity(xa.len());
            for (x, y) in pairs {
                let (x, y) = (x as i32, y as i32);
                let v = match op {
                    BinaryOp::Add => x.wrapping_add(y),
                    BinaryOp::Sub => x.wrapping_sub(y),
                    BinaryOp::Mul => x.wrapping_mul(y),
                    BinaryOp::Div => {
                        if y == 0 {
                            return Err(at.div_zero());
                        }
                        x.wrapping_div(y)
                    }
                    BinaryOp::Pow => int_pow(x, y).ok_or_else(|| at.div_zero())?,
                    BinaryOp::Max => x.max(y),
                    _ => x.min(y),
                };
                data.push(v as f64);
            }
            data
        }
        DType::Bool => return Err(at.invalid("only eq and ne are defined on bool")),
        DType::I8 | DType::U8 => {
            return Err(at.invalid(format!(
                "only comparisons are defined on {}: cast to i32 or f32 first",
                a.dtype
            )))
        }
    };
    Ok(tensor(a.dtype, shape, data))
}

fn check_axis(at: &At<'_>, axis: usize, rank: usize) -> Result<(), EvalError> {
    if axis >= rank {
        return Err(at.invalid(format!("axis {axis} is out of range for rank {rank}")));
    }
    Ok(())
}

/// `(prod(shape[..axis]), shape[axis], prod(shape[axis+1..]))`.
fn split_at_axis(shape: &[usize], axis: usize) -> (usize, usize, usize) {
    let outer = shape[..axis].iter().product();
    let inner = shape[axis + 1..].iter().product();
    (outer, shape[axis], inner)
}

fn reduce(
    at: &At<'_>,
    op: ReduceOp,
    axes: &[usize],
    keepdim: bool,
    x: &Tensor,
) -> Result<Tensor, EvalError> {
    for (i, &a) in axes.iter().enumerate() {
        check_axis(at, a, x.rank())?;
        if axes[..i].contains(&a) {
            return Err(at.invalid(format!("axis {a} is repeated")));
        }
    }
    let kept: Vec<usize> = x
        .shape
        .iter()
        .enumerate()
        .map(|(i, &d)| if axes.contains(&i) { 1 } else { d })
        .collect();
    let count: usize = axes.iter().map(|&a| x.shape[a]).product();
    let kept_strides = strides_of(&kept);
    let to_out: Vec<usize> = (0..x.rank())
        .map(|i| {
            if axes.contains(&i) {
                0
            } else {
                kept_strides[i]
            }
        })
        .collect();
    let offsets = strided_offsets(&x.shape, &to_out);
    let out_n: usize = kept.iter().product();
    let data = if x.dtype == DType::I32 {
        let mut acc: Vec<i64> = match op {
            ReduceOp::Sum | ReduceOp::Mean => vec![0; out_n],
            ReduceOp::Max => vec![i32::MIN as i64; out_n],
        };
        for (&v, &o) in x.data.iter().zip(&offsets) {
            let v = v as i64;
            acc[o] = match op {
                ReduceOp::Sum | ReduceOp::Mean => acc[o].wrapping_add(v),
                ReduceOp::Max => acc[o].max(v),
            };
        }
        let mut data = Vec::with_capacity(out_n);
        for s in acc {
            let s = s as i32 as i64; // wrap the sum to i32
            data.push(match op {
                ReduceOp::Mean if count == 0 => return Err(at.div_zero()),
                ReduceOp::Mean => (s / count as i64) as f64,
                _ => s as f64,
            });
        }
        data
    } else {
        let mut acc = match op {
            ReduceOp::Sum | ReduceOp::Mean => vec![0.0; out_n],
            ReduceOp::Max => vec![f64::NEG_INFINITY; out_n],
        };
        for (&v, &o) in x.data.iter().zip(&offsets) {
            acc[o] = match op {
                ReduceOp::Sum | ReduceOp::Mean => acc[o] + v,
                ReduceOp::Max => max_nan(acc[o], v),
            };
        }
        if op == ReduceOp::Mean {
            for s in &mut acc {
                *s /= count as f64;
            }
        }
        acc
    };
    let shape: Vec<usize> = if keepdim {
        kept
    } else {
        x.shape
            .iter()
            .enumerate()
            .filter(|(i, _)| !axes.contains(i))
            .map(|(_, &d)| d)
            .collect()
    };
    Ok(tensor(x.dtype, &shape, data))
}

fn argmax(at: &At<'_>, axis: usize, x: &Tensor) -> Result<Tensor, EvalError> {
    check_axis(at, axis, x.rank())?;
    let (outer, n, inner) = split_at_axis(&x.shape, axis);
    if n == 0 {
        return Err(at.invalid(format!("argmax over axis {axis} of size 0")));
    }
    let mut data = Vec::with_capacity(outer * inner);
    for o in 0..outer {
        for i in 0..inner {
            let base = o * n * inner + i;
            let mut best = 0usize;
            let mut best_v = x.data[base];
            if !best_v.is_nan() {
                for k in 1..n {
                    let v = x.data[base + k * inner];
                    if v.is_nan() {
                        best = k;
                        break;
                    }
                    if v > best_v {
                        best = k;
                        best_v = v;
                    }
                }
            }
            data.push(best as f64);
        }
    }
    let mut shape = x.shape.clone();
    shape.remove(axis);
    Ok(tensor(DType::I32, &shape, data))
}

/// `a @ b`: floats of one dtype, or `i8`/`u8` operands whose products
/// are summed exactly into `i32` (`dtype`). The sums are exact in `f64`
/// below 2^53; `finish` saturates them to `i32`, which `k < 2^16` byte
/// products never reach.
fn matmul(
    at: &At<'_>,
    a: &Tensor,
    b: &Tensor,
    dtype: DType,
    out: &[usize],
) -> Result<Tensor, EvalError> {
    let (ra, rb, ro) = (a.rank(), b.rank(), out.len());
    let integer = a.dtype.is_byte() && b.dtype.is_byte() && dtype == DType::I32;
    if ra < 2 || rb < 2 || ro < 2 || (a.dtype != b.dtype && !integer) {
        return Err(at.invalid(format!(
            "cannot multiply {} by {}",
            Dims(a.dtype, &a.shape),
            Dims(b.dtype, &b.shape)
        )));
    }
    let (m, k) = (a.shape[ra - 2], a.shape[ra - 1]);
    let (k2, n) = (b.shape[rb - 2], b.shape[rb - 1]);
    let batch = &out[..ro - 2];
    let a_strides = broadcast_strides(&a.shape[..ra - 2], batch);
    let b_strides = broadcast_strides(&b.shape[..rb - 2], batch);
    let (Some(a_strides), Some(b_strides)) = (a_strides, b_strides) else {
        return Err(at.invalid("matmul batch dims do not broadcast"));
    };
    if k != k2 || out[ro - 2] != m || out[ro - 1] != n {
        return Err(at.invalid(format!(
            "{} @ {} does not give {out:?}",
            Dims(a.dtype, &a.shape),
            Dims(b.dtype, &b.shape)
        )));
    }
    let a_batches = strided_offsets(batch, &a_strides);
    let b_batches = strided_offsets(batch, &b_strides);
    let mut data = vec![0.0; a_batches.len() * m * n];
    for (bi, (&ab, &bb)) in a_batches.iter().zip(&b_batches).enumerate() {
        let a_mat = &a.data[ab * m * k..(ab + 1) * m * k];
        let b_mat = &b.data[bb * k * n..(bb + 1) * k * n];
        let o_mat = &mut data[bi * m * n..(bi + 1) * m * n];
        for i in 0..m {
            let o_row = &mut o_mat[i * n..(i + 1) * n];
            for p in 0..k {
                let aip = a_mat[i * k + p];
                let b_row = &b_mat[p * n..(p + 1) * n];
                for (o, &bpj) in o_row.iter_mut().zip(b_row) {
                    *o += aip * bpj;
                }
            }
        }
    }
    Ok(tensor(dtype, out, data))
}

fn transpose(at: &At<'_>, perm: &[usize], x: &Tensor) -> Result<Tensor, EvalError> {
    let mut seen = vec![false; x.rank()];
    for &p in perm {
        if p >= x.rank() || std::mem::replace(&mut seen[p], true) {
            return Err(at.invalid(format!("{perm:?} is not a permutation")));
        }
    }
    if perm.len() != x.rank() {
        return Err(at.invalid(format!("{perm:?} is not a permutation")));
    }
    let x_strides = x.strides();
    let shape: Vec<usize> = perm.iter().map(|&p| x.shape[p]).collect();
    let strides: Vec<usize> = perm.iter().map(|&p| x_strides[p]).collect();
    let data = strided_offsets(&shape, &strides)
        .into_iter()
        .map(|o| x.data[o])
        .collect();
    Ok(tensor(x.dtype, &shape, data))
}

fn slice(
    at: &At<'_>,
    axis: usize,
    start: usize,
    end: usize,
    x: &Tensor,
) -> Result<Tensor, EvalError> {
    check_axis(at, axis, x.rank())?;
    let (outer, n, inner) = split_at_axis(&x.shape, axis);
    if start > end || end > n {
        return Err(at.invalid(format!("slice {start}..{end} is out of range for size {n}")));
    }
    let mut data = Vec::with_capacity(outer * (end - start) * inner);
    for o in 0..outer {
        data.extend_from_slice(&x.data[(o * n + start) * inner..(o * n + end) * inner]);
    }
    let mut shape = x.shape.clone();
    shape[axis] = end - start;
    Ok(tensor(x.dtype, &shape, data))
}

fn concat(at: &At<'_>, axis: usize, xs: &[&Tensor]) -> Result<Tensor, EvalError> {
    let Some(first) = xs.first() else {
        return Err(at.invalid("concat needs at least one operand"));
    };
    check_axis(at, axis, first.rank())?;
    let mut total = 0usize;
    for x in xs {
        let fits = x.dtype == first.dtype
            && x.rank() == first.rank()
            && (0..x.rank()).all(|i| i == axis || x.shape[i] == first.shape[i]);
        if !fits {
            return Err(at.invalid(format!(
                "cannot concatenate {} and {}",
                Dims(first.dtype, &first.shape),
                Dims(x.dtype, &x.shape)
            )));
        }
        total += x.shape[axis];
    }
    let (outer, _, inner) = split_at_axis(&first.shape, axis);
    let mut data = Vec::with_capacity(outer * total * inner);
    for o in 0..outer {
        for x in xs {
            let chunk = x.shape[axis] * inner;
            data.extend_from_slice(&x.data[o * chunk..(o + 1) * chunk]);
        }
    }
    let mut shape = first.shape.clone();
    shape[axis] = total;
    Ok(tensor(first.dtype, &shape, data))
}

/// The indices of a gather or scatter, checked against `0..size`.
fn indices(at: &At<'_>, idx: &Tensor, axis: usize, size: usize) -> Result<Vec<usize>, EvalError> {
    if idx.dtype != DType::I32 {
        return Err(at.invalid(format!("indices must be i32, found {}", idx.dtype)));
    }
    idx.data
        .iter()
        .map(|&v| {
            if v >= 0.0 && v < size as f64 && v.fract() == 0.0 {
                Ok(v as usize)
            } else {
                Err(EvalError::IndexOutOfRange {
                    node: at.describe(),
                    index: v as i64,
                    axis,
                    size,
                })
            }
        })
        .collect()
}

fn gather(at: &At<'_>, axis: usize, data: &Tensor, idx: &Tensor) -> Result<Tensor, EvalError> {
    check_axis(at, axis, data.rank())?;
    let (outer, n, inner) = split_at_axis(&data.shape, axis);
    let idx_values = indices(at, idx, axis, n)?;
    let mut out = Vec::with_capacity(outer * idx_values.len() * inner);
    for o in 0..outer {
        for &j in &idx_values {
            let at = (o * n + j) * inner;
            out.extend_from_slice(&data.data[at..at + inner]);
        }
    }
    let mut shape = data.shape[..axis].to_vec();
    shape.extend_from_slice(&idx.shape);
    shape.extend_from_slice(&data.shape[axis + 1..]);
    Ok(tensor(data.dtype, &shape, out))
}

fn scatter_add(
    at: &At<'_>,
    axis: usize,
    updates: &Tensor,
    idx: &Tensor,
    dtype: DType,
    shape: &[usize],
) -> Result<Tensor, EvalError> {
    check_axis(at, axis, shape.len())?;
    let (outer, n, inner) = split_at_axis(shape, axis);
    let mut expected = shape[..axis].to_vec();
    expected.extend_from_slice(&idx.shape);
    expected.extend_from_slice(&shape[axis + 1..]);
    if updates.shape != expected || updates.dtype != dtype {
        return Err(at.invalid(format!(
            "updates {} do not match a gather of {} by {}",
            Dims(updates.dtype, &updates.shape),
            Dims(dtype, shape),
            Dims(idx.dtype, &idx.shape)
        )));
    }
    let idx_values = indices(at, idx, axis, n)?;
    let ni = idx_values.len();
    let mut out = vec![0.0; outer * n * inner];
    for o in 0..outer {
        for (jj, &j) in idx_values.iter().enumerate() {
            let dst = &mut out[(o * n + j) * inner..(o * n + j + 1) * inner];
            let src = &updates.data[(o * ni + jj) * inner..(o * ni + jj + 1) * inner];
            for (d, &s) in dst.iter_mut().zip(src) {
                *d = if dtype == DType::I32 {
                    (*d as i32).wrapping_add(s as i32) as f64
                } else {
                    *d + s
                };
            }
        }
    }
    Ok(tensor(dtype, shape, out))
}

/// For every element of the unfolded `[N, C, *kernel, *out]` tensor (row
/// major), the flat index of the `[N, C, *in]` element it reads, or `None`
/// in the padding. `Unfold` gathers through this map and `Fold` scatters.
fn window_sources(
    at: &At<'_>,
    w: &crate::op::Window,
    input: &[usize],
    unfolded: &[usize],
) -> Result<Vec<Option<usize>>, EvalError> {
    let d = w.rank();
    let fits = w.check().is_ok()
        && input.len() == d + 2
        && unfolded.len() == 2 * d + 2
        && unfolded[..2] == input[..2]
        && unfolded[2..2 + d] == w.kernel[..]
        && (0..d).all(|i| w.out_size(i, input[2 + i]) == Some(unfolded[2 + d + i]));
    if !fits {
        return Err(at.invalid(format!(
            "unfolded shape {unfolded:?} does not match input {input:?} and window {w:?}"
        )));
    }
    let n = checked_numel(unfolded).unwrap_or(0);
    let planes = input[0] * input[1];
    let plane: usize = input[2..].iter().product();
    let per_plane = n.checked_div(planes).unwrap_or(0);
    let mut out = Vec::with_capacity(n);
    let mut index = vec![0usize; 2 * d];
    for p in 0..planes {
        index.iter_mut().for_each(|i| *i = 0);
        for _ in 0..per_plane {
            let mut flat = 0usize;
            let mut inside = true;
            for i in 0..d {
                let pos = (index[d + i] * w.stride[i] + index[i] * w.dilation[i]) as isize
                    - w.padding[i] as isize;
                if pos < 0 || pos >= input[2 + i] as isize {
                    inside = false;
                    break;
                }
                flat = flat * input[2 + i] + pos as usize;
            }
            out.push(inside.then_some(p * plane + flat));
            for ax in (0..2 * d).rev() {
                index[ax] += 1;
                if index[ax] < unfolded[2 + ax] {
                    break;
                }
                index[ax] = 0;
            }
        }
    }
    Ok(out)
}
