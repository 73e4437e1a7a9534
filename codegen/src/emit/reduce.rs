//! Reductions (sum, mean, max) accumulated in registers along the
//! innermost dim, their operand's expression evaluated per element, and
//! argmax.

use super::builder::{
    addr_at, coalesce, emit_fill, emit_fill_range, emit_for, emit_nest, emit_nest_in, load, store,
    Strided,
};
use super::elementwise::loop_operands;
use super::expr::Code;
use super::host::Calls;
use crate::plan::{Kind, View};
use crate::CodegenError;
use cranelift_codegen::ir::condcodes::{FloatCC, IntCC};
use cranelift_codegen::ir::{types, InstBuilder, Value};
use cranelift_frontend::FunctionBuilder;
use nnc_ir::ReduceOp;

/// Sum or max over `axes` of `code`'s value at each element of `shape`:
/// the output is walked with stride 0 along the reduced dims. A reduction
/// along the innermost dim accumulates in an `f32x4` register and
/// combines once per row. The operand's expression (a prologue: the
/// elementwise work that produced it) is evaluated per element in the
/// loop, so the operand is never stored.
#[allow(clippy::too_many_arguments)]
pub(crate) fn emit_reduce(
    b: &mut FunctionBuilder,
    calls: &mut dyn Calls,
    op: ReduceOp,
    code: &Code,
    shape: &[usize],
    axes: &[usize],
    out_addr: usize,
    out_numel: usize,
    range: Option<(Value, Value)>,
) -> Result<Option<usize>, CodegenError> {
    let identity = if op == ReduceOp::Max {
        f32::NEG_INFINITY
    } else {
        0.0
    };
    // Output strides over the input's dims: contiguous over kept dims.
    let mut out_strides = vec![0isize; shape.len()];
    let mut acc = 4isize;
    for i in (0..shape.len()).rev() {
        if !axes.contains(&i) {
            out_strides[i] = acc;
            acc *= shape[i] as isize;
        }
    }
    let out = Strided {
        addr: out_addr,
        strides: out_strides,
    };
    let mut ops = loop_operands(&[(out, Kind::F32)], code);
    let mut dims = coalesce(shape, &mut ops);
    if dims.is_empty() {
        dims.push(1);
        for o in &mut ops {
            o.strides.push(0);
        }
    }
    // Split over the outermost loop when it is a kept dim: its indices own
    // disjoint, contiguous blocks of the result. When it is reduced, the
    // outermost kept dim that is not the innermost loop moves outside it:
    // each result element still adds the same values in the same order
    // (the reduced dims keep their order), so results do not depend on
    // the thread count, and the innermost loop stays contiguous.
    if range.is_some() && dims.len() >= 2 && ops[0].strides[0] == 0 {
        let last = dims.len() - 1;
        if let Some(j) = (1..last).find(|&j| ops[0].strides[j] != 0 && dims[j] >= 2) {
            let d = dims.remove(j);
            dims.insert(0, d);
            for o in &mut ops {
                let s = o.strides.remove(j);
                o.strides.insert(0, s);
            }
        }
    }
    let split = range.filter(|_| dims.len() >= 2 && ops[0].strides[0] != 0);
    match split {
        Some((start, end)) => {
            let elems = ops[0].strides[0] as i64 / 4;
            let lo = b.ins().imul_imm_s(start, elems);
            let hi = b.ins().imul_imm_s(end, elems);
            emit_fill_range(b, out_addr, lo, hi, elems % 4 == 0, identity);
        }
        None => emit_fill(b, out_addr, out_numel, identity),
    }
    let units = split.map(|_| dims[0]);
    let last = dims.len() - 1;
    let n = dims[last] as i64;
    let so = ops[0].strides[last];
    let sx: Vec<isize> = ops[1..].iter().map(|o| o.strides[last]).collect();
    let unit = code.vectorizes() && sx.iter().all(|&s| s == 0 || s == 4);
    let combine = |b: &mut FunctionBuilder, a: Value, v: Value| match op {
        ReduceOp::Max => b.ins().fmax(a, v),
        _ => b.ins().fadd(a, v),
    };
    let mut error = None;
    // The operand's value(s) at element `i` of the row at `addrs`.
    let mut value = |b: &mut FunctionBuilder, addrs: &[Value], i: Value, vector: bool| {
        let vals: Vec<Value> = (0..sx.len())
            .map(|l| {
                if vector {
                    let a = match sx[l] {
                        0 => addrs[1 + l],
                        _ => {
                            let off = b.ins().imul_imm_s(i, 4);
                            b.ins().iadd(addrs[1 + l], off)
                        }
                    };
                    code.load(b, l, a, 0, true, sx[l])
                } else {
                    let a = addr_at(b, addrs[1 + l], i, sx[l]);
                    code.load(b, l, a, 0, false, 0)
                }
            })
            .collect();
        match code.evaluate(b, calls, vector, &vals) {
            Ok(v) => v[0],
            Err(e) => {
                error = Some(e);
                vals.first().copied().unwrap_or(i)
            }
        }
    };
    emit_nest_in(b, &dims, &ops, split, &mut |_, _, _| {}, &mut |b, addrs| {
        if so == 0 {
            // Reduce the row into registers: two vector accumulators, so
            // that a long row (a bias gradient's 784 pixels) is not one
            // chain of dependent adds (3 cycles each on Zen 4).
            let init = b.ins().f32const(identity);
            let vinit = b.ins().splat(types::F32X4, init);
            let vaccs = [b.declare_var(types::F32X4), b.declare_var(types::F32X4)];
            for v in vaccs {
                b.def_var(v, vinit);
            }
            let (pair_end, vec_end) = if unit { (n / 8 * 8, n / 4 * 4) } else { (0, 0) };
            emit_for(b, 0, pair_end, 8, &mut |b, i| {
                let next4 = b.ins().iadd_imm_s(i, 4);
                for (var, at) in vaccs.into_iter().zip([i, next4]) {
                    let v = value(b, addrs, at, true);
                    let cur = b.use_var(var);
                    let next = combine(b, cur, v);
                    b.def_var(var, next);
                }
            });
            emit_for(b, pair_end, vec_end, 4, &mut |b, i| {
                let v = value(b, addrs, i, true);
                let cur = b.use_var(vaccs[0]);
                let next = combine(b, cur, v);
                b.def_var(vaccs[0], next);
            });
            let (a0, a1) = (b.use_var(vaccs[0]), b.use_var(vaccs[1]));
            let vacc = combine(b, a0, a1);
            let mut total = b.ins().extractlane(vacc, 0);
            for lane in 1..4 {
                let l = b.ins().extractlane(vacc, lane);
                total = combine(b, total, l);
            }
            let sacc = b.declare_var(types::F32);
            b.def_var(sacc, total);
            emit_for(b, vec_end, n, 1, &mut |b, i| {
                let v = value(b, addrs, i, false);
                let cur = b.use_var(sacc);
                let next = combine(b, cur, v);
                b.def_var(sacc, next);
            });
            let total = b.use_var(sacc);
            let prev = load(b, types::F32, addrs[0]);
            let r = combine(b, prev, total);
            store(b, r, addrs[0]);
        } else {
            // Accumulate a row of inputs into a row of outputs.
            let vector = so == 4 && unit;
            let vec_end = if vector { n / 4 * 4 } else { 0 };
            emit_for(b, 0, vec_end, 4, &mut |b, i| {
                let off = b.ins().imul_imm_s(i, 4);
                let ao = b.ins().iadd(addrs[0], off);
                let v = value(b, addrs, i, true);
                let o = load(b, types::F32X4, ao);
                let r = combine(b, o, v);
                store(b, r, ao);
            });
            emit_for(b, vec_end, n, 1, &mut |b, i| {
                let ao = addr_at(b, addrs[0], i, so);
                let v = value(b, addrs, i, false);
                let o = load(b, types::F32, ao);
                let r = combine(b, o, v);
                store(b, r, ao);
            });
        }
    });
    error.map_or(Ok(units), Err)
}

/// A reduction (sum, mean or max) of `code` over `axes` of `shape` into
/// the contiguous `out`.
///
/// With `range` (a sum or max only), only the indices `[start, end)` of the
/// outermost loop when it is not reduced; returns how many it has.
#[allow(clippy::too_many_arguments)]
pub(crate) fn emit_reduce_node(
    b: &mut FunctionBuilder,
    calls: &mut dyn Calls,
    op: ReduceOp,
    code: &Code,
    shape: &[usize],
    axes: &[usize],
    out: &View,
    out_addr: usize,
    range: Option<(Value, Value)>,
) -> Result<Option<usize>, CodegenError> {
    let numel = out.numel();
    let sum_op = if op == ReduceOp::Max {
        ReduceOp::Max
    } else {
        ReduceOp::Sum
    };
    let range = range.filter(|_| op != ReduceOp::Mean);
    let units = emit_reduce(b, calls, sum_op, code, shape, axes, out_addr, numel, range)?;
    if op == ReduceOp::Mean {
        let count: usize = axes.iter().map(|&i| shape[i]).product();
        let base = b.ins().iconst(types::I64, out_addr as i64);
        // Over no elements: 0 * inf = NaN, like the interpreter.
        let inv = b.ins().f32const(1.0 / count as f32);
        let vinv = b.ins().splat(types::F32X4, inv);
        let n = numel as i64;
        emit_for(b, 0, n / 4 * 4, 4, &mut |b, i| {
            let off = b.ins().imul_imm_s(i, 4);
            let p = b.ins().iadd(base, off);
            let x = load(b, types::F32X4, p);
            let y = b.ins().fmul(x, vinv);
            store(b, y, p);
        });
        emit_for(b, n / 4 * 4, n, 1, &mut |b, i| {
            let off = b.ins().imul_imm_s(i, 4);
            let p = b.ins().iadd(base, off);
            let x = load(b, types::F32, p);
            let y = b.ins().fmul(x, inv);
            store(b, y, p);
        });
    }
    Ok(units)
}

/// Index of the first maximum along `axis` (a NaN counts as the maximum).
pub(crate) fn emit_argmax(
    b: &mut FunctionBuilder,
    x: &View,
    x_addr: usize,
    kind: Kind,
    axis: usize,
    out_addr: usize,
) {
    // Loop over the other dims (output order), then along the axis.
    let mut dims: Vec<usize> = Vec::new();
    let mut xs: Vec<isize> = Vec::new();
    for (i, &n) in x.shape.iter().enumerate() {
        if i != axis {
            dims.push(n);
            xs.push(x.strides[i] * 4);
        }
    }
    let out_strides: Vec<isize> = crate::plan::row_major(&dims)
        .iter()
        .map(|s| s * 4)
        .collect();
    dims.push(1);
    xs.push(0);
    let mut out_s = out_strides;
    out_s.push(0);
    let ops = [
        Strided {
            addr: out_addr,
            strides: out_s,
        },
        Strided {
            addr: x_addr,
            strides: xs,
        },
    ];
    let n = x.shape[axis] as i64;
    let step = x.strides[axis] * 4;
    emit_nest(b, &dims, &ops, &mut |_, _, _| {}, &mut |b, addrs| {
        let first = load(b, kind.scalar(), addrs[1]);
        let best = b.declare_var(kind.scalar());
        let idx = b.declare_var(types::I32);
        b.def_var(best, first);
        let zero = b.ins().iconst(types::I32, 0);
        b.def_var(idx, zero);
        emit_for(b, 1, n, 1, &mut |b, i| {
            let a = addr_at(b, addrs[1], i, step);
            let v = load(b, kind.scalar(), a);
            let cur = b.use_var(best);
            let take = if kind == Kind::I32 {
                b.ins().icmp(IntCC::SignedGreaterThan, v, cur)
            } else {
                let greater = b.ins().fcmp(FloatCC::GreaterThan, v, cur);
                let v_nan = b.ins().fcmp(FloatCC::Unordered, v, v);
                let cur_nan = b.ins().fcmp(FloatCC::Unordered, cur, cur);
                let cur_ok = b.ins().bnot(cur_nan);
                let nan_wins = b.ins().band(v_nan, cur_ok);
                b.ins().bor(greater, nan_wins)
            };
            let nb = b.ins().select(take, v, cur);
            b.def_var(best, nb);
            let i32i = b.ins().ireduce(types::I32, i);
            let ci = b.use_var(idx);
            let ni = b.ins().select(take, i32i, ci);
            b.def_var(idx, ni);
        });
        let r = b.use_var(idx);
        store(b, r, addrs[0]);
    });
}
