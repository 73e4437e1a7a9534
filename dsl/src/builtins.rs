//! The builtin functions: the language's window onto the IR's primitive
//! ops. Everything else (relu, softmax, losses, dense) is written in the
//! prelude from these.

use crate::args::{assign, Given};
use crate::elaborate::{ArgVal, Elaborator, Result};
use crate::span::Span;
use crate::value::Value;
use nnc_ir::{BinaryOp, DType, Dim, NodeId, ReduceOp, ShapeDisplay, TensorType, Ties, UnaryOp};

pub(crate) const NAMES: [&str; 40] = [
    "matmul",
    "square",
    "params",
    "weights",
    "exp",
    "log",
    "sqrt",
    "tanh",
    "sigmoid",
    "abs",
    "round",
    "maximum",
    "minimum",
    "pow",
    "where",
    "greater",
    "less",
    "equal",
    "greater_equal",
    "less_equal",
    "sum",
    "mean",
    "amax",
    "argmax",
    "reshape",
    "permute",
    "concat",
    "slice",
    "take",
    "one_hot",
    "float",
    "double",
    "int",
    "char",
    "byte",
    "unfold",
    "uniform_like",
    "zeros",
    "numel",
    "rank",
];

/// Parameter names of each builtin; a trailing `?` marks an optional one.
fn params(name: &str) -> &'static [&'static str] {
    match name {
        "exp" | "log" | "sqrt" | "tanh" | "sigmoid" | "abs" | "round" | "square" | "float"
        | "double" | "int" | "char" | "byte" | "uniform_like" | "rank" => &["x"],
        "matmul" | "maximum" | "minimum" | "pow" | "greater" | "less" | "equal"
        | "greater_equal" | "less_equal" => &["a", "b"],
        "where" => &["cond", "a", "b"],
        "sum" | "mean" => &["x", "axis?", "keepdim?"],
        "amax" => &["x", "axis?", "keepdim?", "ties?"],
        "argmax" | "numel" => &["x", "axis?"],
        "unfold" => &["x", "kernel", "stride?", "pad?", "dilation?", "fill?"],
        "reshape" => &["x", "shape"],
        "zeros" => &["shape"],
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
        "round" => unary(UnaryOp::Round),
        "detach" => unary(UnaryOp::Detach),
        _ => None,
    };
    if let Some(op) = unary_op {
        let x = req(&mut b, 0)?;
        if let Some(v) = x.value.as_f64() {
            return unary_number(e, name, v, x.span);
        }
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
        "greater_equal" => Some(BinaryOp::Ge),
        "less_equal" => Some(BinaryOp::Le),
        _ => None,
    };
    if let Some(op) = binary_op {
        let (a, c) = (req(&mut b, 0)?, req(&mut b, 1)?);
        if let Some(v) = compare_scalars(op, &a.value, &c.value) {
            return Ok(Value::Bool(v));
        }
        if let (Some(x), Some(y)) = (a.value.as_f64(), c.value.as_f64()) {
            match (op, &a.value, &c.value) {
                (BinaryOp::Max, Value::Int(i), Value::Int(j)) => return Ok(Value::Int(*i.max(j))),
                (BinaryOp::Min, Value::Int(i), Value::Int(j)) => return Ok(Value::Int(*i.min(j))),
                (BinaryOp::Max, ..) => return Ok(Value::Float(x.max(y))),
                (BinaryOp::Min, ..) => return Ok(Value::Float(x.min(y))),
                (BinaryOp::Pow, ..) => return Ok(Value::Float(x.powf(y))),
                _ => {}
            }
        }
        let (x, y) = e.tensor_pair(a.value, a.span, c.value, c.span)?;
        let (tx, ty) = (e.graph.ty(x).clone(), e.graph.ty(y).clone());
        return e
            .graph
            .binary(op, x, y)
            .map(Value::Tensor)
            .map_err(|s| shape_err(e, s.message).with_label(format!("`{name}` of {tx} and {ty}")));
    }
    match name {
        "square" => {
            let x = req(&mut b, 0)?;
            match x.value {
                Value::Int(v) => return Ok(Value::Int(v.saturating_mul(v))),
                Value::Float(v) => return Ok(Value::Float(v * v)),
                _ => {}
            }
            let t = e.tensor(x.value, x.span, "the argument")?;
            if !e.graph.ty(t).dtype.is_float() {
                return Err(e.err(
                    x.span,
                    format!("`square` needs a float tensor, found {}", e.graph.ty(t)),
                ));
            }
            e.graph
                .mul(t, t)
                .map(Value::Tensor)
                .map_err(|s| shape_err(e, s.message))
        }
        "params" | "weights" => param_collection(e, name, span),
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
            let cond = match c.value {
                Value::Tensor(_) | Value::Pending(_) => {
                    e.tensor(c.value, c.span, "the condition of `where`")?
                }
                other => {
                    return Err(e
                        .err(
                            c.span,
                            format!(
                                "the condition of `where` must be a bool tensor or a compile-time bool, found {}",
                                other.kind()
                            ),
                        )
                        .with_help("compare with `greater`, `less` or `equal`"))
                }
            };
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
            let ties = match b.take(3) {
                None => Ties::Split,
                Some(a) => ties(e, &a)?,
            };
            if !e.graph.ty(t).dtype.is_float() {
                return Err(e.err(
                    x.span,
                    format!("`{name}` needs a float tensor, found {}", e.graph.ty(t)),
                ));
            }
            let reduced = match ties {
                Ties::Split => e.graph.reduce(op, t, axes, keepdim),
                Ties::First => e.graph.reduce_max_first(t, axes, keepdim),
            };
            reduced
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
        "rank" => {
            let x = req(&mut b, 0)?;
            // A number is a scalar: a layer can tell a tensor argument from
            // a number default (`mask: f32[b, t] = 1`) by its rank.
            if x.value.as_f64().is_some() {
                return Ok(Value::Int(0));
            }
            let t = e.tensor(x.value, x.span, "the argument of `rank`")?;
            Ok(Value::Int(e.graph.ty(t).rank() as i64))
        }
        "numel" => {
            let x = req(&mut b, 0)?;
            let t = e.tensor(x.value, x.span, "the argument of `numel`")?;
            let axes = match b.take(1) {
                None => (0..e.graph.ty(t).rank()).collect(),
                Some(a) => axes(e, t, &a)?,
            };
            numel(e, t, &axes).map_err(|s| shape_err(e, s.message))
        }
        "uniform_like" => {
            let x = req(&mut b, 0)?;
            let t = e.tensor(x.value, x.span, "the argument of `uniform_like`")?;
            uniform_like(e, t, span)
        }
        "unfold" => unfold(e, &mut b, span),
        "zeros" => {
            let s = req(&mut b, 0)?;
            let shape = zeros_shape(e, &s)?;
            let ty = TensorType::new(DType::F32, shape);
            Ok(Value::Tensor(e.graph.splat(0.0, ty)))
        }
        // PyTorch's `Tensor.float()`, `.double()`, `.int()`, `.char()`
        // (int8) and `.byte()` (uint8). To an integer: truncated toward
        // zero and saturated at the type's range, so `byte(round(x / s) +
        // z)` is `quantize_per_tensor`'s clamp.
        "float" | "double" | "int" | "char" | "byte" => {
            let x = req(&mut b, 0)?;
            let t = e.tensor(x.value, x.span, "the argument")?;
            let dtype = match name {
                "float" => DType::F32,
                "double" => DType::F64,
                "int" => DType::I32,
                "char" => DType::I8,
                _ => DType::U8,
            };
            e.graph
                .cast(t, dtype)
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

/// `sqrt(2)`, `exp(-1)`: math on a compile-time number is a number (an
/// initializer's bound, `uniform(-1 / sqrt(hidden), 1 / sqrt(hidden))`).
/// `params()`: every trainable param of the model, flattened and joined
/// into one vector, so a penalty is an ordinary expression
/// (`sum(abs(params()))`) that autodiff differentiates like any other;
/// `weights()`: only the params of rank 2 or more (kernels, not biases or
/// norm scales, as Keras' `kernel_regularizer`). Only in the loss, where
/// the model is complete.
fn param_collection(e: &mut Elaborator, name: &str, span: Span) -> Result<Value> {
    if !e.in_loss {
        return Err(e
            .err(
                span,
                format!("`{name}()` is usable only in the train block's `loss`"),
            )
            .with_label("outside the loss")
            .with_note(format!(
                "`{name}()` collects the model's params for a penalty term, e.g. `loss = mse(y, t) + 1e-4 * sum(square({name}()))`"
            )));
    }
    let chosen: Vec<(NodeId, String)> = e
        .graph
        .params()
        .into_iter()
        .filter(|&(n, _)| name == "params" || e.graph.ty(n).rank() >= 2)
        .map(|(n, p)| (n, p.to_string()))
        .collect();
    let Some((first, first_name)) = chosen.first().cloned() else {
        let what = if name == "params" {
            "trainable params"
        } else {
            "params of rank 2 or more"
        };
        return Err(e
            .err(
                span,
                format!("`{name}()` is empty: the model has no {what}"),
            )
            .with_label("nothing to collect"));
    };
    let dtype = e.graph.ty(first).dtype;
    let mut flat = Vec::with_capacity(chosen.len());
    for (node, param) in &chosen {
        let ty = e.graph.ty(*node).clone();
        if ty.dtype != dtype {
            return Err(e
                .err(
                    span,
                    format!("`{name}()` needs params of one dtype: `{first_name}` is {dtype}, `{param}` is {}", ty.dtype),
                ));
        }
        let count: usize = ty
            .shape
            .iter()
            .map(|d| match d {
                Dim::Const(n) => Ok(*n),
                Dim::Sym(s) => Err(e.err(
                    span,
                    format!("`{name}()`: the param `{param}` has the symbolic dim `{s}`"),
                )),
            })
            .product::<Result<usize>>()?;
        let reshaped = e
            .graph
            .reshape(*node, vec![Dim::Const(count)])
            .map_err(|s| e.err(span, format!("in `{name}()`: {}", s.message)))?;
        flat.push(reshaped);
    }
    if flat.len() == 1 {
        return Ok(Value::Tensor(flat[0]));
    }
    e.graph
        .concat(&flat, 0)
        .map(Value::Tensor)
        .map_err(|s| e.err(span, format!("in `{name}()`: {}", s.message)))
}

fn unary_number(e: &Elaborator, name: &str, v: f64, span: Span) -> Result<Value> {
    let r = match name {
        "exp" => v.exp(),
        "log" if v > 0.0 => v.ln(),
        "sqrt" if v >= 0.0 => v.sqrt(),
        "tanh" => v.tanh(),
        "sigmoid" => 1.0 / (1.0 + (-v).exp()),
        "abs" => v.abs(),
        "round" => v.round_ties_even(),
        _ => {
            return Err(e
                .err(span, format!("`{name}` of {v} is not a real number"))
                .with_label("out of the function's domain"))
        }
    };
    Ok(Value::Float(r))
}

/// A comparison of two compile-time numbers (or two bools, for `equal`),
/// which is a compile-time bool: `assert` and a static `where` need one.
/// `None` when an operand is not such a value.
fn compare_scalars(op: BinaryOp, a: &Value, b: &Value) -> Option<bool> {
    use std::cmp::Ordering;
    let ord = match (a, b) {
        // Ints compare exactly, not through f64.
        (Value::Int(x), Value::Int(y)) => x.cmp(y),
        (Value::Bool(x), Value::Bool(y)) if op == BinaryOp::Eq => return Some(x == y),
        // IEEE: every comparison with a NaN (`inf - inf`) is false.
        _ => match a.as_f64()?.partial_cmp(&b.as_f64()?) {
            Some(o) => o,
            None => return Some(false),
        },
    };
    Some(match op {
        BinaryOp::Gt => ord == Ordering::Greater,
        BinaryOp::Lt => ord == Ordering::Less,
        BinaryOp::Ge => ord != Ordering::Less,
        BinaryOp::Le => ord != Ordering::Greater,
        BinaryOp::Eq => ord == Ordering::Equal,
        _ => return None,
    })
}

/// The number of elements of `t` over `axes`, as a scalar of its float
/// dtype (f32 otherwise): a constant when those dims are, else computed
/// at run time as a sum of ones over the symbolic dims (the batch size is
/// known only then).
fn numel(
    e: &mut Elaborator,
    t: NodeId,
    axes: &[usize],
) -> std::result::Result<Value, nnc_ir::ShapeError> {
    let ty = e.graph.ty(t).clone();
    let dtype = if ty.dtype.is_float() {
        ty.dtype
    } else {
        DType::F32
    };
    let mut constant = 1.0f64;
    let mut symbolic = Vec::new();
    for &a in axes {
        match &ty.shape[a] {
            Dim::Const(n) => constant *= *n as f64,
            d @ Dim::Sym(_) => symbolic.push(d.clone()),
        }
    }
    if symbolic.is_empty() {
        return Ok(Value::Tensor(e.graph.scalar(constant, dtype)));
    }
    let rank = symbolic.len();
    let ones = e.graph.splat(1.0, TensorType::new(dtype, symbolic));
    let mut n = e
        .graph
        .reduce(ReduceOp::Sum, ones, (0..rank).collect(), false)?;
    if constant != 1.0 {
        let c = e.graph.scalar(constant, dtype);
        n = e.graph.mul(n, c)?;
    }
    Ok(Value::Tensor(n))
}

/// Uniform `[0, 1)` noise shaped like `t` (of its float dtype, f32
/// otherwise): an `Op::Random` keyed by the scalar input `rng.key`, which
/// the runtime feeds fresh every step, on its own stream so that two calls
/// draw different numbers.
fn uniform_like(e: &mut Elaborator, t: NodeId, span: Span) -> Result<Value> {
    if e.in_scan() {
        return Err(e
            .err(span, "random numbers (`uniform_like`, `dropout`) inside a `scan` body are not supported")
            .with_help("draw them before the loop for the whole sequence and pass them in with `each(...)`"));
    }
    let key_name = nnc_ir::module::RNG_KEY;
    let key_ty = TensorType::scalar(DType::I32);
    let key = match e.graph.find_leaf(key_name) {
        Some(k) if matches!(e.graph.node(k).op, nnc_ir::Op::Input { .. }) => k,
        Some(_) => {
            return Err(e.err(
                span,
                format!("`{key_name}` names a param or state, but it is the random key input"),
            ))
        }
        None => {
            // The key belongs to no source line.
            let saved = e.graph.current_span.take();
            let k = e.graph.input(key_name, key_ty);
            e.graph.current_span = saved;
            k
        }
    };
    let ty = e.graph.ty(t).clone();
    let dtype = if ty.dtype.is_float() {
        ty.dtype
    } else {
        DType::F32
    };
    let stream = e.next_stream;
    e.next_stream = e.next_stream.wrapping_add(1);
    e.graph
        .random(key, stream, ty.with_dtype(dtype))
        .map(Value::Tensor)
        .map_err(|s| e.err(span, format!("in `uniform_like`: {}", s.message)))
}

/// `unfold(x, kernel, stride: 1, pad: 0, dilation: 1, fill: 0)`: im2col
/// over the 1 or 2 trailing spatial dims of `x: [N, C, *spatial]`, giving
/// `[N, C, *kernel, *out]`. Each window setting is an int (every spatial
/// dim) or a list with one entry per spatial dim.
fn unfold(e: &mut Elaborator, b: &mut Bound, span: Span) -> Result<Value> {
    let (Some(x), Some(k)) = (b.take(0), b.take(1)) else {
        return Err(e_missing(span));
    };
    let t = e.tensor(x.value, x.span, "the argument of `unfold`")?;
    let ty = e.graph.ty(t).clone();
    if !(3..=4).contains(&ty.rank()) {
        return Err(e
            .err(
                x.span,
                format!("`unfold` needs [N, C, L] or [N, C, H, W], found {ty}"),
            )
            .with_label(format!("rank {}", ty.rank()))
            .with_note(
                "the first two dims are the batch and the channels; 1 or 2 spatial dims follow",
            ));
    }
    let d = ty.rank() - 2;
    let kernel = window_list(e, &k, "kernel", d, 1)?;
    let setting = |e: &Elaborator, a: Option<ArgVal>, what: &str, default: usize, min: i64| match a
    {
        None => Ok(vec![default; d]),
        Some(a) => window_list(e, &a, what, d, min),
    };
    let stride = setting(e, b.take(2), "stride", 1, 1)?;
    let padding = setting(e, b.take(3), "pad", 0, 0)?;
    let dilation = setting(e, b.take(4), "dilation", 1, 1)?;
    let fill = match b.take(5) {
        None => 0.0,
        Some(a) => a.value.as_f64().ok_or_else(|| {
            e.err(
                a.span,
                format!("`fill` must be a number, found {}", a.value.kind()),
            )
        })?,
    };
    let mut sizes = Vec::with_capacity(d);
    for i in 0..d {
        match ty.shape[2 + i].as_const() {
            Some(n) => sizes.push(n),
            None => {
                return Err(e
                    .err(
                        x.span,
                        format!(
                            "`unfold` needs constant spatial dims, found `{}` in {ty}",
                            ty.shape[2 + i]
                        ),
                    )
                    .with_label("a symbolic spatial dim"))
            }
        }
    }
    let window = nnc_ir::Window {
        kernel,
        stride,
        padding,
        dilation,
    };
    // The kernel's span and the padded size, checked for overflow here so
    // that the window's own arithmetic (`out_size`) never overflows.
    let extent = |i: usize| -> Option<(usize, usize)> {
        let w = &window;
        let span = w.dilation[i].checked_mul(w.kernel[i] - 1)?.checked_add(1)?;
        let padded = w.padding[i].checked_mul(2)?.checked_add(sizes[i])?;
        Some((span, padded))
    };
    if (0..d).any(|i| extent(i).is_none()) {
        return Err(e.err(span, "the window of `unfold` is too large"));
    }
    if (0..d).any(|i| window.out_size(i, sizes[i]).is_none()) {
        let by = |v: &[usize]| v.iter().map(usize::to_string).collect::<Vec<_>>().join("×");
        let (spans, padded): (Vec<usize>, Vec<usize>) = (0..d).filter_map(extent).unzip();
        let padding = if window.padding.iter().all(|&p| p == 0) {
            String::new()
        } else {
            format!(" padded to {}", by(&padded))
        };
        let mut err = e
            .err(
                span,
                format!(
                    "a {} kernel does not fit a {} input{padding}",
                    by(&window.kernel),
                    by(&sizes),
                ),
            )
            .with_label(format!("the input is {ty}"));
        if window.dilation.iter().any(|&v| v != 1) {
            err = err.with_note(format!(
                "with dilation {} the kernel spans {}",
                by(&window.dilation),
                by(&spans)
            ));
        }
        return Err(err.with_help("use a smaller kernel, more padding or a larger input"));
    }
    e.graph
        .unfold(t, window, fill)
        .map(Value::Tensor)
        .map_err(|s| e.err(span, format!("in `unfold`: {}", s.message)))
}

/// A window setting: an int for every spatial dim, or a list with one int
/// per spatial dim, each at least `min`.
fn window_list(e: &Elaborator, a: &ArgVal, what: &str, d: usize, min: i64) -> Result<Vec<usize>> {
    let bad = |v: &Value| {
        let rule = if min == 0 { "non-negative" } else { "positive" };
        e.err(
            a.span,
            format!(
                "`{what}` must be a {rule} int or a list of them, found {}",
                v.kind()
            ),
        )
    };
    let one = |v: &Value| match v {
        Value::Int(n) if *n >= min => Ok(*n as usize),
        other => Err(bad(other)),
    };
    match &a.value {
        Value::List(items) => {
            if items.len() != d {
                return Err(e
                    .err(
                        a.span,
                        format!(
                            "`{what}` has {} entr{}, but the input has {d} spatial dim{}",
                            items.len(),
                            if items.len() == 1 { "y" } else { "ies" },
                            crate::elaborate::plural(d)
                        ),
                    )
                    .with_help(format!(
                        "give one int for every spatial dim, or a list of {d}"
                    )));
            }
            items.iter().map(one).collect()
        }
        v => Ok(vec![one(v)?; d]),
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

/// `amax`'s `ties`: where the gradient goes among equal maxima.
fn ties(e: &Elaborator, a: &ArgVal) -> Result<Ties> {
    match &a.value {
        Value::Str(s) if s == "split" => Ok(Ties::Split),
        Value::Str(s) if s == "first" => Ok(Ties::First),
        other => Err(e
            .err(
                a.span,
                format!(
                    "`ties` of `amax` must be \"split\" or \"first\", found {}",
                    other.kind()
                ),
            )
            .with_help(
                "\"split\" shares the gradient among equal maxima (torch.amax), \
                 \"first\" gives it all to the first (nn.MaxPool2d)",
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
/// The dims of `zeros(shape)`: ints or dim names (`[b, hidden]`), which
/// the batch's size binds when the program is compiled.
fn zeros_shape(e: &Elaborator, a: &ArgVal) -> Result<Vec<Dim>> {
    let Value::List(items) = &a.value else {
        return Err(e.err(
            a.span,
            format!("`zeros` takes a list of dims, found {}", a.value.kind()),
        ));
    };
    let mut dims = Vec::new();
    for v in items {
        match v {
            Value::Dims(ds) => dims.extend(ds.iter().cloned()),
            Value::Int(n) if *n < 0 => {
                return Err(e.err(a.span, format!("the dims of `zeros` are sizes, found {n}")))
            }
            other => dims.push(other.as_dim().ok_or_else(|| {
                e.err(
                    a.span,
                    format!("expected dims (ints or dim names), found {}", other.kind()),
                )
            })?),
        }
    }
    Ok(dims)
}

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
