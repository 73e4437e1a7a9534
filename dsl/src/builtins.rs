//! The builtin functions: the language's window onto the IR's primitive
//! ops. Everything else (relu, softmax, losses, dense) is written in the
//! prelude from these.

use crate::args::{assign, Given};
use crate::elaborate::{ArgVal, Elaborator, Result};
use crate::span::Span;
use crate::value::Value;
use nnc_ir::{BinaryOp, DType, Dim, NodeId, ReduceOp, ShapeDisplay, TensorType, UnaryOp};

pub(crate) const NAMES: [&str; 25] = [
    "matmul", "exp", "log", "sqrt", "tanh", "sigmoid", "abs", "maximum", "minimum", "pow", "where",
    "greater", "less", "equal", "sum", "mean", "amax", "argmax", "reshape", "permute", "concat",
    "slice", "take", "one_hot", "float",
];

/// Parameter names of each builtin; a trailing `?` marks an optional one.
fn params(name: &str) -> &'static [&'static str] {
    match name {
        "exp" | "log" | "sqrt" | "tanh" | "sigmoid" | "abs" | "float" => &["x"],
        "matmul" | "maximum" | "minimum" | "pow" | "greater" | "less" | "equal" => &["a", "b"],
        "where" => &["cond", "a", "b"],
        "sum" | "mean" | "amax" => &["x", "axis?", "keepdim?"],
        "argmax" => &["x", "axis?"],
        "reshape" => &["x", "shape"],
        "permute" => &["x", "dims"],
        "concat" => &["tensors", "axis?"],
        "slice" => &["x", "axis", "start", "end"],
        "take" => &["x", "indices", "axis?"],
        "one_hot" => &["labels", "classes"],
        _ => &[],
    }
}

struct Bound {
    slots: Vec<Option<ArgVal>>,
}

impl Bound {
    fn take(&mut self, i: usize) -> Option<ArgVal> {
        self.slots.get_mut(i).and_then(Option::take)
    }
}

/// Matches `args` to the builtin's parameters; a trailing `?` marks an
/// optional one.
fn bind(e: &Elaborator, name: &str, args: Vec<ArgVal>, span: Span) -> Result<Bound> {
    let declared = params(name);
    let names: Vec<&str> = declared.iter().map(|n| n.trim_end_matches('?')).collect();
    let signature = format!("{name}({})", declared.join(", "));
    let given = args.into_iter().map(|a| Given {
        keyword: a.name.clone(),
        span: a.span,
        value: a,
    });
    let slots = assign(name, &names, &signature, given, &|s, m| e.err(s, m))?;
    for (i, n) in declared.iter().enumerate() {
        if slots[i].is_none() && !n.ends_with('?') {
            return Err(e
                .err(span, format!("missing argument `{n}` of `{name}`"))
                .with_label(format!("`{n}` is not given"))
                .with_note(format!("`{name}` is declared as `{signature}`")));
        }
    }
    Ok(Bound { slots })
}

pub(crate) fn call(e: &mut Elaborator, name: &str, args: Vec<ArgVal>, span: Span) -> Result<Value> {
    let mut b = bind(e, name, args, span)?;
    let req = |b: &mut Bound, i: usize| b.take(i).ok_or_else(|| e_missing(span));
    let shape_err = |e: &Elaborator, msg: String| e.err(span, format!("in `{name}`: {msg}"));

    let unary = |op| Some(op);
    let unary_op = match name {
        "exp" => unary(UnaryOp::Exp),
        "log" => unary(UnaryOp::Log),
        "sqrt" => unary(UnaryOp::Sqrt),
        "tanh" => unary(UnaryOp::Tanh),
        "sigmoid" => unary(UnaryOp::Sigmoid),
        "abs" => unary(UnaryOp::Abs),
        _ => None,
    };
    if let Some(op) = unary_op {
        let x = req(&mut b, 0)?;
        let t = e.tensor(x.value, x.span, "the argument")?;
        if !e.graph.ty(t).dtype.is_float() {
            return Err(e.err(
                x.span,
                format!("`{name}` needs a float tensor, found {}", e.graph.ty(t)),
            ));
        }
        return e
            .graph
            .unary(op, t)
            .map(Value::Tensor)
            .map_err(|s| shape_err(e, s.message));
    }
    let binary_op = match name {
        "maximum" => Some(BinaryOp::Max),
        "minimum" => Some(BinaryOp::Min),
        "pow" => Some(BinaryOp::Pow),
        "greater" => Some(BinaryOp::Gt),
        "less" => Some(BinaryOp::Lt),
        "equal" => Some(BinaryOp::Eq),
        _ => None,
    };
    if let Some(op) = binary_op {
        let (a, c) = (req(&mut b, 0)?, req(&mut b, 1)?);
        let (x, y) = e.tensor_pair(a.value, a.span, c.value, c.span)?;
        let (tx, ty) = (e.graph.ty(x).clone(), e.graph.ty(y).clone());
        return e
            .graph
            .binary(op, x, y)
            .map(Value::Tensor)
            .map_err(|s| shape_err(e, s.message).with_label(format!("`{name}` of {tx} and {ty}")));
    }
    match name {
        "matmul" => {
            let (a, c) = (req(&mut b, 0)?, req(&mut b, 1)?);
            let x = e.tensor(a.value, a.span, "the first argument of `matmul`")?;
            let y = e.tensor(c.value, c.span, "the second argument of `matmul`")?;
            let (tx, ty) = (e.graph.ty(x).clone(), e.graph.ty(y).clone());
            e.graph.matmul(x, y).map(Value::Tensor).map_err(|s| {
                e.err(span, "matmul operands do not fit")
                    .with_label(format!("{tx} @ {ty}"))
                    .with_note(s.message)
            })
        }
        "where" => {
            let (c, x, y) = (req(&mut b, 0)?, req(&mut b, 1)?, req(&mut b, 2)?);
            let cond = e.tensor(c.value, c.span, "the condition of `where`")?;
            if e.graph.ty(cond).dtype != DType::Bool {
                return Err(e
                    .err(
                        c.span,
                        format!(
                            "the condition of `where` must be a bool tensor, found {}",
                            e.graph.ty(cond)
                        ),
                    )
                    .with_help("compare with `greater`, `less` or `equal`"));
            }
            let (x, y) = e.tensor_pair(x.value, x.span, y.value, y.span)?;
            e.graph
                .select(cond, x, y)
                .map(Value::Tensor)
                .map_err(|s| shape_err(e, s.message))
        }
        "sum" | "mean" | "amax" => {
            let x = req(&mut b, 0)?;
            let t = e.tensor(x.value, x.span, "the argument")?;
            let axes = match b.take(1) {
                None => (0..e.graph.ty(t).rank()).collect(),
                Some(a) => axes(e, t, &a)?,
            };
            let keepdim = match b.take(2) {
                None => false,
                Some(a) => boolean(e, &a)?,
            };
            let op = match name {
                "sum" => ReduceOp::Sum,
                "mean" => ReduceOp::Mean,
                _ => ReduceOp::Max,
            };
            if !e.graph.ty(t).dtype.is_float() {
                return Err(e.err(
                    x.span,
                    format!("`{name}` needs a float tensor, found {}", e.graph.ty(t)),
                ));
            }
            e.graph
                .reduce(op, t, axes, keepdim)
                .map(Value::Tensor)
                .map_err(|s| shape_err(e, s.message))
        }
        "argmax" => {
            let x = req(&mut b, 0)?;
            let t = e.tensor(x.value, x.span, "the argument")?;
            let axis = match b.take(1) {
                None => e
                    .graph
                    .ty(t)
                    .rank()
                    .checked_sub(1)
                    .ok_or_else(|| e.err(x.span, "`argmax` of a scalar"))?,
                Some(a) => one_axis(e, t, &a)?,
            };
            e.graph
                .argmax(t, axis)
                .map(Value::Tensor)
                .map_err(|s| shape_err(e, s.message))
        }
        "float" => {
            let x = req(&mut b, 0)?;
            let t = e.tensor(x.value, x.span, "the argument")?;
            e.graph
                .cast(t, DType::F32)
                .map(Value::Tensor)
                .map_err(|s| shape_err(e, s.message))
        }
        "reshape" => {
            let (x, s) = (req(&mut b, 0)?, req(&mut b, 1)?);
            let t = e.tensor(x.value, x.span, "the argument")?;
            let shape = reshape_target(e, t, &s)?;
            let from = e.graph.ty(t).clone();
            e.graph
                .reshape(t, shape.clone())
                .map(Value::Tensor)
                .map_err(|_| {
                    e.err(
                        s.span,
                        format!("cannot reshape {from} to {}", ShapeDisplay(&shape)),
                    )
                    .with_label("element counts differ")
                })
        }
        "permute" => {
            let (x, d) = (req(&mut b, 0)?, req(&mut b, 1)?);
            let t = e.tensor(x.value, x.span, "the argument")?;
            let perm = axis_list(e, t, &d)?;
            e.graph
                .transpose(t, perm)
                .map(Value::Tensor)
                .map_err(|s| shape_err(e, s.message))
        }
        "concat" => {
            let xs = req(&mut b, 0)?;
            let Value::List(items) = xs.value else {
                return Err(e.err(
                    xs.span,
                    format!(
                        "`concat` takes a list of tensors, found {}",
                        xs.value.kind()
                    ),
                ));
            };
            let mut nodes = Vec::new();
            for v in items {
                nodes.push(e.tensor(v, xs.span, "each element of the list")?);
            }
            let Some(&first) = nodes.first() else {
                return Err(e.err(xs.span, "`concat` of an empty list"));
            };
            let axis = match b.take(1) {
                None => 0,
                Some(a) => one_axis(e, first, &a)?,
            };
            e.graph
                .concat(&nodes, axis)
                .map(Value::Tensor)
                .map_err(|s| shape_err(e, s.message))
        }
        "slice" => {
            let x = req(&mut b, 0)?;
            let t = e.tensor(x.value, x.span, "the argument")?;
            let axis = one_axis(e, t, &req(&mut b, 1)?)?;
            let start = count(e, &req(&mut b, 2)?)?;
            let end = count(e, &req(&mut b, 3)?)?;
            e.graph
                .slice(t, axis, start, end)
                .map(Value::Tensor)
                .map_err(|s| shape_err(e, s.message))
        }
        "take" => {
            let (x, i) = (req(&mut b, 0)?, req(&mut b, 1)?);
            let t = e.tensor(x.value, x.span, "the argument")?;
            let idx = e.tensor(i.value, i.span, "the indices")?;
            let axis = match b.take(2) {
                None => 0,
                Some(a) => one_axis(e, t, &a)?,
            };
            e.graph
                .gather(t, idx, axis)
                .map(Value::Tensor)
                .map_err(|s| shape_err(e, s.message))
        }
        "one_hot" => {
            let (l, n) = (req(&mut b, 0)?, req(&mut b, 1)?);
            let labels = e.tensor(l.value, l.span, "the labels")?;
            let lt = e.graph.ty(labels).clone();
            if lt.dtype != DType::I32 {
                return Err(e
                    .err(l.span, format!("`one_hot` needs i32 labels, found {lt}"))
                    .with_help("annotate the data field as `i32`"));
            }
            let classes = count(e, &n)?;
            if classes == 0 {
                return Err(e.err(n.span, "`one_hot` needs at least one class"));
            }
            let mut shape = lt.shape.clone();
            shape.push(Dim::Const(1));
            let col = e
                .graph
                .reshape(labels, shape)
                .map_err(|s| shape_err(e, s.message))?;
            let iota = e
                .graph
                .iota(0, TensorType::new(DType::I32, [Dim::Const(classes)]))
                .map_err(|s| shape_err(e, s.message))?;
            let hit = e
                .graph
                .binary(BinaryOp::Eq, col, iota)
                .map_err(|s| shape_err(e, s.message))?;
            e.graph
                .cast(hit, DType::F32)
                .map(Value::Tensor)
                .map_err(|s| shape_err(e, s.message))
        }
        _ => Err(e.err(span, format!("`{name}` is not a builtin"))),
    }
}

fn e_missing(span: Span) -> crate::error::Error {
    crate::error::Error::new(span, "internal error: a required argument went missing")
}

fn boolean(e: &Elaborator, a: &ArgVal) -> Result<bool> {
    match a.value {
        Value::Bool(v) => Ok(v),
        ref other => Err(e.err(
            a.span,
            format!("expected `true` or `false`, found {}", other.kind()),
        )),
    }
}

/// A non-negative int.
fn count(e: &Elaborator, a: &ArgVal) -> Result<usize> {
    match a.value {
        Value::Int(v) if v >= 0 => Ok(v as usize),
        ref other => Err(e.err(
            a.span,
            format!("expected a non-negative int, found {}", other.kind()),
        )),
    }
}

fn one_axis(e: &Elaborator, t: NodeId, a: &ArgVal) -> Result<usize> {
    let rank = e.graph.ty(t).rank();
    match a.value {
        Value::Int(v) => e.graph.resolve_axis(t, v).ok_or_else(|| {
            e.err(
                a.span,
                format!("axis {v} is out of range for a tensor of rank {rank}"),
            )
            .with_label(format!(
                "valid axes are {} to {}",
                -(rank as i64),
                rank as i64 - 1
            ))
        }),
        ref other => Err(e.err(
            a.span,
            format!("expected an axis (int), found {}", other.kind()),
        )),
    }
}

fn axis_list(e: &Elaborator, t: NodeId, a: &ArgVal) -> Result<Vec<usize>> {
    match &a.value {
        Value::List(items) => items
            .iter()
            .map(|v| {
                one_axis(
                    e,
                    t,
                    &ArgVal {
                        name: None,
                        value: v.clone(),
                        span: a.span,
                    },
                )
            })
            .collect(),
        other => Err(e.err(
            a.span,
            format!("expected a list of axes, found {}", other.kind()),
        )),
    }
}

fn axes(e: &Elaborator, t: NodeId, a: &ArgVal) -> Result<Vec<usize>> {
    let mut axes = match &a.value {
        Value::List(_) => axis_list(e, t, a)?,
        _ => vec![one_axis(e, t, a)?],
    };
    let n = axes.len();
    axes.sort_unstable();
    axes.dedup();
    if axes.len() != n {
        return Err(e.err(a.span, "an axis is repeated"));
    }
    Ok(axes)
}

/// The target of `reshape`: ints, dims bound by patterns, and at most one
/// `-1` that takes the remaining constant size (PyTorch's `view(b, -1)`).
fn reshape_target(e: &Elaborator, t: NodeId, a: &ArgVal) -> Result<Vec<Dim>> {
    let Value::List(items) = &a.value else {
        return Err(e.err(
            a.span,
            format!("`reshape` takes a list of dims, found {}", a.value.kind()),
        ));
    };
    let mut dims: Vec<Option<Dim>> = Vec::new();
    for v in items {
        match v {
            Value::Int(-1) => {
                if dims.iter().any(Option::is_none) {
                    return Err(e.err(a.span, "only one dim of `reshape` can be -1"));
                }
                dims.push(None);
            }
            Value::Dims(ds) => dims.extend(ds.iter().cloned().map(Some)),
            other => dims.push(Some(other.as_dim().ok_or_else(|| {
                e.err(
                    a.span,
                    format!("expected dims (ints or dim names), found {}", other.kind()),
                )
            })?)),
        }
    }
    let Some(hole) = dims.iter().position(Option::is_none) else {
        return Ok(dims.into_iter().flatten().collect());
    };
    let from = &e.graph.ty(t).shape;
    let split = |ds: &mut dyn Iterator<Item = &Dim>| {
        let mut n = 1usize;
        let mut syms: Vec<String> = Vec::new();
        for d in ds {
            match d {
                Dim::Const(c) => n = n.saturating_mul(*c),
                Dim::Sym(s) => syms.push(s.clone()),
            }
        }
        syms.sort();
        (n, syms)
    };
    let (have_n, mut have_syms) = split(&mut from.iter());
    let (want_n, want_syms) = split(&mut dims.iter().flatten());
    for s in &want_syms {
        match have_syms.iter().position(|h| h == s) {
            Some(i) => {
                have_syms.remove(i);
            }
            None => {
                return Err(e.err(
                    a.span,
                    format!(
                        "cannot reshape {}: `{s}` is not one of its dims",
                        ShapeDisplay(from)
                    ),
                ))
            }
        }
    }
    if !have_syms.is_empty() || want_n == 0 || have_n % want_n != 0 {
        return Err(e
            .err(
                a.span,
                format!(
                    "cannot infer the -1 dim when reshaping {}",
                    ShapeDisplay(from)
                ),
            )
            .with_label("the other dims do not divide the element count"));
    }
    dims[hole] = Some(Dim::Const(have_n / want_n));
    Ok(dims.into_iter().flatten().collect())
}
