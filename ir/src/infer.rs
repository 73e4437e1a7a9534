//! Shape inference: the result type of an op from its operand types.
//!
//! Dims are checked statically: two dims agree when they are equal
//! (a symbol equals only itself), and broadcasting stretches only a
//! constant `1`. So every shape error is found at compile time, never
//! when a batch arrives.

use crate::op::{BinaryOp, Literal, Op, ReduceOp, Ties};
use crate::types::{DType, Dim, Shape, ShapeDisplay, TensorType};
use thiserror::Error;

#[derive(Debug, Clone, PartialEq, Error)]
#[error("{message}")]
pub struct ShapeError {
    pub message: String,
}

pub(crate) fn err<T>(message: impl Into<String>) -> Result<T, ShapeError> {
    Err(ShapeError {
        message: message.into(),
    })
}

/// numpy broadcasting of two shapes, right-aligned.
pub fn broadcast_shapes(a: &[Dim], b: &[Dim]) -> Result<Shape, ShapeError> {
    let rank = a.len().max(b.len());
    let mut out = Vec::with_capacity(rank);
    for i in 0..rank {
        let da = (i + a.len()).checked_sub(rank).map(|j| &a[j]);
        let db = (i + b.len()).checked_sub(rank).map(|j| &b[j]);
        let d = match (da, db) {
            (Some(x), None) | (None, Some(x)) => x.clone(),
            (Some(x), Some(y)) if x == y => x.clone(),
            (Some(x), Some(y)) if x.is_one() => y.clone(),
            (Some(x), Some(y)) if y.is_one() => x.clone(),
            (Some(_), Some(_)) => {
                return err(format!(
                    "shapes {} and {} do not broadcast: dim {} of the result would need {} = {}",
                    ShapeDisplay(a),
                    ShapeDisplay(b),
                    i,
                    da.map(|d| d.to_string()).unwrap_or_default(),
                    db.map(|d| d.to_string()).unwrap_or_default()
                ))
            }
            (None, None) => unreachable!("i < rank"),
        };
        out.push(d);
    }
    Ok(out)
}

/// Whether `from` broadcasts to exactly `to`.
pub fn broadcasts_to(from: &[Dim], to: &[Dim]) -> bool {
    broadcast_shapes(from, to).is_ok_and(|s| s == to)
}

/// Result type of `op` applied to `args`. `declared` is the node's declared
/// type, required by ops whose shape is an attribute (see `Op`).
pub fn infer(
    op: &Op,
    args: &[&TensorType],
    declared: Option<&TensorType>,
) -> Result<TensorType, ShapeError> {
    if !op.arity().admits(args.len()) {
        return err(format!(
            "`{}` takes {}, found {}",
            op.mnemonic(),
            op.arity(),
            args.len()
        ));
    }
    let need_declared = || match declared {
        Some(t) => Ok(t.clone()),
        None => err(format!("`{}` needs a declared result type", op.mnemonic())),
    };
    // Sums of quantized values leave their range: they are taken in i32
    // (matmul's accumulator) or float, never in i8/u8.
    let sums = matches!(
        op,
        Op::Reduce {
            op: ReduceOp::Sum | ReduceOp::Mean,
            ..
        } | Op::ScatterAdd { .. }
            | Op::Fold { .. }
    );
    if let Some(x) = args.iter().find(|a| sums && a.dtype.is_byte()) {
        return err(format!(
            "`{}` sums its operand, which is {}: cast it to i32 or f32 first",
            op.mnemonic(),
            x.dtype
        ));
    }
    match op {
        Op::Input { .. } | Op::Param { .. } | Op::State { .. } => need_declared(),
        Op::Const(lit) => {
            let t = need_declared()?;
            if let Literal::Dense(values) = lit {
                match t.const_numel() {
                    Some(n) if n == values.len() => {}
                    _ => {
                        return err(format!(
                            "dense constant has {} values but type {t}",
                            values.len()
                        ))
                    }
                }
            }
            Ok(t)
        }
        Op::Iota { axis } => {
            let t = need_declared()?;
            if *axis >= t.rank() {
                return err(format!("iota axis {axis} is out of range for {t}"));
            }
            Ok(t)
        }
        Op::Unary(u) => {
            if !args[0].dtype.is_float() {
                return err(format!("`{u}` needs a float tensor, found {}", args[0]));
            }
            Ok(args[0].clone())
        }
        Op::Binary(b) => {
            let (x, y) = (args[0], args[1]);
            if x.dtype != y.dtype {
                return err(format!(
                    "`{b}` needs operands of one dtype, found {} and {}",
                    x.dtype, y.dtype
                ));
            }
            if x.dtype == DType::Bool && !matches!(b, BinaryOp::Eq | BinaryOp::Ne) {
                return err(format!("`{b}` is not defined on bool tensors"));
            }
            // Quantized values are stored, compared and multiplied by
            // matmul; arithmetic happens on their `i32` or float casts.
            if x.dtype.is_byte() && !b.is_comparison() {
                return err(format!(
                    "`{b}` is not defined on {} tensors: cast them to i32 or f32 first",
                    x.dtype
                ));
            }
            let shape = broadcast_shapes(&x.shape, &y.shape)?;
            let dtype = if b.is_comparison() {
                DType::Bool
            } else {
                x.dtype
            };
            Ok(TensorType { dtype, shape })
        }
        Op::Select => {
            let (c, a, b) = (args[0], args[1], args[2]);
            if c.dtype != DType::Bool {
                return err(format!("select condition must be bool, found {c}"));
            }
            if a.dtype != b.dtype {
                return err(format!(
                    "select branches differ in dtype: {} and {}",
                    a.dtype, b.dtype
                ));
            }
            let shape = broadcast_shapes(&broadcast_shapes(&c.shape, &a.shape)?, &b.shape)?;
            Ok(TensorType {
                dtype: a.dtype,
                shape,
            })
        }
        Op::Cast => {
            let t = need_declared()?;
            if t.shape != args[0].shape {
                return err(format!("cast cannot change shape: {} to {t}", args[0]));
            }
            Ok(t)
        }
        Op::Reduce {
            op,
            axes,
            keepdim,
            ties,
        } => {
            let x = args[0];
            check_axes(axes, x.rank())?;
            if *ties == Ties::First && *op != ReduceOp::Max {
                return err(format!(
                    "reduce_{op} has ties={}, which only reduce_max can have",
                    ties.name()
                ));
            }
            let shape = x
                .shape
                .iter()
                .enumerate()
                .filter_map(|(i, d)| match (axes.contains(&i), keepdim) {
                    (false, _) => Some(d.clone()),
                    (true, true) => Some(Dim::Const(1)),
                    (true, false) => None,
                })
                .collect();
            Ok(x.with_shape(shape))
        }
        Op::ArgMax { axis } => {
            let x = args[0];
            check_axes(&[*axis], x.rank())?;
            let mut shape = x.shape.clone();
            shape.remove(*axis);
            Ok(TensorType {
                dtype: DType::I32,
                shape,
            })
        }
        Op::MatMul => matmul_type(args[0], args[1]),
        Op::Reshape => {
            let t = need_declared()?;
            if t.dtype != args[0].dtype {
                return err("reshape cannot change dtype");
            }
            check_same_numel(&args[0].shape, &t.shape)?;
            Ok(t)
        }
        Op::Transpose { perm } => {
            let x = args[0];
            let mut seen = vec![false; x.rank()];
            if perm.len() != x.rank() || perm.iter().any(|&p| p >= x.rank()) {
                return err(format!(
                    "transpose permutation {perm:?} does not fit rank {}",
                    x.rank()
                ));
            }
            for &p in perm {
                if std::mem::replace(&mut seen[p], true) {
                    return err(format!("transpose permutation {perm:?} repeats axis {p}"));
                }
            }
            Ok(x.with_shape(perm.iter().map(|&p| x.shape[p].clone()).collect()))
        }
        Op::Broadcast => {
            let t = need_declared()?;
            if t.dtype != args[0].dtype || !broadcasts_to(&args[0].shape, &t.shape) {
                return err(format!("{} does not broadcast to {t}", args[0]));
            }
            Ok(t)
        }
        Op::Slice { axis, start, end } => {
            let x = args[0];
            check_axes(&[*axis], x.rank())?;
            let Some(n) = x.shape[*axis].as_const() else {
                return err(format!(
                    "slice needs a constant size on axis {axis}, found `{}`",
                    x.shape[*axis]
                ));
            };
            if start > end || *end > n {
                return err(format!(
                    "slice {start}..{end} is out of range for axis {axis} of size {n}"
                ));
            }
            let mut shape = x.shape.clone();
            shape[*axis] = Dim::Const(end - start);
            Ok(x.with_shape(shape))
        }
        Op::Concat { axis } => {
            let Some(first) = args.first() else {
                return err("concat needs at least one operand");
            };
            check_axes(&[*axis], first.rank())?;
            let mut total = 0usize;
            for a in args {
                if a.dtype != first.dtype || a.rank() != first.rank() {
                    return err(format!("concat operands differ: {first} and {a}"));
                }
                for (i, (d, e)) in a.shape.iter().zip(&first.shape).enumerate() {
                    if i != *axis && d != e {
                        return err(format!(
                            "concat operands differ off axis {axis}: {first} and {a}"
                        ));
                    }
                }
                match a.shape[*axis].as_const() {
                    Some(n) => match total.checked_add(n) {
                        Some(t) => total = t,
                        None => return err(format!("concat size on axis {axis} overflows")),
                    },
                    None => {
                        return err(format!(
                            "concat needs constant sizes on axis {axis}, found {a}"
                        ))
                    }
                }
            }
            let mut shape = first.shape.clone();
            shape[*axis] = Dim::Const(total);
            Ok(first.with_shape(shape))
        }
        Op::Gather { axis } => {
            let (data, idx) = (args[0], args[1]);
            check_axes(&[*axis], data.rank())?;
            if idx.dtype != DType::I32 {
                return err(format!("gather indices must be i32, found {idx}"));
            }
            let mut shape = data.shape[..*axis].to_vec();
            shape.extend(idx.shape.iter().cloned());
            shape.extend(data.shape[axis + 1..].iter().cloned());
            Ok(data.with_shape(shape))
        }
        Op::ScatterAdd { axis } => {
            let t = need_declared()?;
            let (updates, idx) = (args[0], args[1]);
            check_axes(&[*axis], t.rank())?;
            let gathered = infer(&Op::Gather { axis: *axis }, &[&t, idx], None)?;
            if gathered != *updates {
                return err(format!(
                    "scatter_add updates {updates} do not match gather of {t} by {idx}"
                ));
            }
            Ok(t)
        }
        Op::Unfold { window, .. } => unfold_type(window, args[0]),
        Op::Fold { window } => {
            let t = need_declared()?;
            let unfolded = unfold_type(window, &t)?;
            if unfolded != *args[0] {
                return err(format!(
                    "fold of {} cannot produce {t}: unfolding {t} gives {unfolded}",
                    args[0]
                ));
            }
            Ok(t)
        }
        Op::Random { .. } => {
            let t = need_declared()?;
            let key = args[0];
            if key.dtype != DType::I32 || key.rank() != 0 {
                return err(format!("random needs a scalar i32 key, found {key}"));
            }
            if !t.dtype.is_float() {
                return err(format!("random produces floats, not {t}"));
            }
            Ok(t)
        }
        Op::Scan { body, result } => scan_type(body, *result, args),
    }
}

/// A scan's operands against its body's inputs, and the type of one result.
fn scan_type(
    body: &crate::scan::ScanBody,
    result: usize,
    args: &[&TensorType],
) -> Result<TensorType, ShapeError> {
    if args.len() != body.inputs.len() {
        return err(format!(
            "this scan's body takes {} operands ({} consts, {} carries, {} sequences), found {}",
            body.inputs.len(),
            body.consts,
            body.carries,
            body.xs(),
            args.len()
        ));
    }
    let first_x = body.consts + body.carries;
    let Some(trip) = args[first_x].shape.get(body.axis).cloned() else {
        return err(format!(
            "scan axis {} is out of range for the sequence {}",
            body.axis, args[first_x]
        ));
    };
    for (i, arg) in args.iter().enumerate() {
        let role = if i < body.consts {
            "const"
        } else if i < first_x {
            "initial carry"
        } else {
            "sequence"
        };
        match body.operand_type(i, &trip) {
            Some(want) if want == **arg => {}
            Some(want) => {
                return err(format!(
                    "scan {role} operand {i} is {arg}, but the body needs {want}"
                ))
            }
            None => {
                return err(format!(
                    "scan axis {} is out of range for {role} operand {i}",
                    body.axis
                ))
            }
        }
    }
    match body.result_type(result, &trip) {
        Some(t) => Ok(t),
        None => err(format!(
            "scan result {result} does not exist: the loop has {} results",
            body.results()
        )),
    }
}

/// `[N, C, *in]` → `[N, C, *kernel, *out]`; spatial dims must be constant.
fn unfold_type(window: &crate::op::Window, x: &TensorType) -> Result<TensorType, ShapeError> {
    window.check().map_err(|m| ShapeError { message: m })?;
    let d = window.rank();
    if x.rank() != d + 2 {
        return err(format!(
            "a {d}-d window needs a tensor [N, C, {d} spatial dims], found {x}"
        ));
    }
    let mut shape = x.shape[..2].to_vec();
    shape.extend(window.kernel.iter().map(|&k| Dim::Const(k)));
    for i in 0..d {
        let Some(n) = x.shape[2 + i].as_const() else {
            return err(format!(
                "spatial dims must be constant, found `{}` in {x}",
                x.shape[2 + i]
            ));
        };
        let Some(o) = window.out_size(i, n) else {
            return err(format!(
                "a kernel of {} (dilation {}) does not fit spatial size {n} padded by {} in {x}",
                window.kernel[i], window.dilation[i], window.padding[i]
            ));
        };
        shape.push(Dim::Const(o));
    }
    Ok(x.with_shape(shape))
}

fn check_axes(axes: &[usize], rank: usize) -> Result<(), ShapeError> {
    for (i, &a) in axes.iter().enumerate() {
        if a >= rank {
            return err(format!("axis {a} is out of range for rank {rank}"));
        }
        if axes[..i].contains(&a) {
            return err(format!("axis {a} is repeated"));
        }
    }
    Ok(())
}

/// Floats of one dtype give that dtype; `i8`/`u8` operands (any mix) give
/// their exact `i32` sums, the integer product quantized models run.
fn matmul_type(a: &TensorType, b: &TensorType) -> Result<TensorType, ShapeError> {
    let integer = a.dtype.is_byte() && b.dtype.is_byte();
    if !integer && (a.dtype != b.dtype || !a.dtype.is_float()) {
        return err(format!(
            "matmul needs float operands of one dtype or i8/u8 operands, found {a} and {b}"
        ));
    }
    if a.rank() < 2 || b.rank() < 2 {
        return err(format!(
            "matmul needs operands of rank >= 2, found {a} and {b}"
        ));
    }
    let (m, k1) = (&a.shape[a.rank() - 2], &a.shape[a.rank() - 1]);
    let (k2, n) = (&b.shape[b.rank() - 2], &b.shape[b.rank() - 1]);
    if k1 != k2 {
        return err(format!(
            "matmul inner dims differ: {a} @ {b} contracts `{k1}` with `{k2}`"
        ));
    }
    let mut shape = broadcast_shapes(&a.shape[..a.rank() - 2], &b.shape[..b.rank() - 2])?;
    shape.push(m.clone());
    shape.push(n.clone());
    let dtype = if integer { DType::I32 } else { a.dtype };
    Ok(TensorType::new(dtype, shape))
}

/// Reshape needs equal element counts: equal constant products, and the
/// same multiset of symbols on both sides.
fn check_same_numel(from: &[Dim], to: &[Dim]) -> Result<(), ShapeError> {
    fn split(s: &[Dim]) -> (u128, Vec<&str>) {
        let mut syms: Vec<&str> = Vec::new();
        let mut n = 1u128;
        for d in s {
            match d {
                Dim::Const(c) => n = n.saturating_mul(*c as u128),
                Dim::Sym(x) => syms.push(x),
            }
        }
        syms.sort();
        (n, syms)
    }
    if split(from) != split(to) {
        return err(format!(
            "cannot reshape {} to {}: element counts differ",
            ShapeDisplay(from),
            ShapeDisplay(to)
        ));
    }
    Ok(())
}
