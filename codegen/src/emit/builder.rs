//! Function-builder helpers every kernel uses: counted and run-time loops,
//! strided loop nests over coalesced dims, addresses, loads and stores,
//! fills.

use super::base::emit_addr;
use crate::plan::View;
use cranelift_codegen::ir::condcodes::IntCC;
use cranelift_codegen::ir::{types, InstBuilder, MemFlagsData, Type, Value};
use cranelift_frontend::FunctionBuilder;

pub(crate) fn flags() -> MemFlagsData {
    MemFlagsData::new().with_notrap()
}

/// Operands of a strided loop nest: a base address and byte strides per dim.
#[derive(Debug, Clone)]
pub(crate) struct Strided {
    pub(crate) addr: usize,
    pub(crate) strides: Vec<isize>,
}

pub(crate) fn strided(addr: usize, view: &View) -> Strided {
    Strided {
        addr,
        strides: view.strides.iter().map(|s| s * 4).collect(),
    }
}

/// Merges adjacent dims that every operand walks as one, and drops size-1
/// dims, so a contiguous elementwise op becomes a single loop.
pub(crate) fn coalesce(dims: &[usize], ops: &mut [Strided]) -> Vec<usize> {
    let mut out_dims: Vec<usize> = Vec::new();
    let mut out_strides: Vec<Vec<isize>> = vec![Vec::new(); ops.len()];
    for (i, &n) in dims.iter().enumerate() {
        if n == 1 {
            continue;
        }
        let mergeable = !out_dims.is_empty()
            && ops.iter().enumerate().all(|(k, op)| {
                let prev = *out_strides[k].last().unwrap_or(&0);
                prev == op.strides[i] * n as isize
            });
        if mergeable {
            let last = out_dims.len() - 1;
            out_dims[last] *= n;
            for (k, op) in ops.iter().enumerate() {
                let l = out_strides[k].len() - 1;
                out_strides[k][l] = op.strides[i];
            }
        } else {
            out_dims.push(n);
            for (k, op) in ops.iter().enumerate() {
                out_strides[k].push(op.strides[i]);
            }
        }
    }
    for (op, s) in ops.iter_mut().zip(out_strides) {
        op.strides = s;
    }
    out_dims
}

/// `for i in (0..n).step_by(step)`, with `i` a block-local i64.
pub(crate) fn emit_for(
    b: &mut FunctionBuilder,
    start: i64,
    end: i64,
    step: i64,
    body: &mut dyn FnMut(&mut FunctionBuilder, Value),
) {
    if start >= end {
        return;
    }
    let start = b.ins().iconst(types::I64, start);
    let end = b.ins().iconst(types::I64, end);
    range_loop(b, start, end, step, body);
}

/// `while i < end { body(i); i += step }` from `start`, with run-time
/// bounds; returns the final `i` (the loop header dominates the exit).
pub(crate) fn range_loop(
    b: &mut FunctionBuilder,
    start: Value,
    end: Value,
    step: i64,
    body: &mut dyn FnMut(&mut FunctionBuilder, Value),
) -> Value {
    let header = b.create_block();
    let body_block = b.create_block();
    let exit = b.create_block();
    b.append_block_param(header, types::I64);
    b.ins().jump(header, &[start.into()]);
    b.switch_to_block(header);
    let i = b.block_params(header)[0];
    let more = b.ins().icmp(IntCC::SignedLessThan, i, end);
    b.ins().brif(more, body_block, &[], exit, &[]);
    b.switch_to_block(body_block);
    body(b, i);
    let next = b.ins().iadd_imm_s(i, step);
    b.ins().jump(header, &[next.into()]);
    b.switch_to_block(exit);
    i
}

/// Loops over every dim but the last; calls `inner` with each operand's
/// address at the start of an innermost row. `hook(depth, addrs)` may adjust
/// addresses after the loops of the first `depth` dims are entered.
pub(crate) fn emit_nest(
    b: &mut FunctionBuilder,
    dims: &[usize],
    ops: &[Strided],
    hook: &mut dyn FnMut(&mut FunctionBuilder, usize, &mut Vec<Value>),
    inner: &mut dyn FnMut(&mut FunctionBuilder, &[Value]),
) {
    emit_nest_in(b, dims, ops, None, hook, inner);
}

/// [`emit_nest`] whose outermost loop (of at least two) runs over the
/// run-time range `outer` instead of all of `dims[0]`.
pub(crate) fn emit_nest_in(
    b: &mut FunctionBuilder,
    dims: &[usize],
    ops: &[Strided],
    outer: Option<(Value, Value)>,
    hook: &mut dyn FnMut(&mut FunctionBuilder, usize, &mut Vec<Value>),
    inner: &mut dyn FnMut(&mut FunctionBuilder, &[Value]),
) {
    let addrs: Vec<Value> = ops.iter().map(|o| emit_addr(b, o.addr)).collect();
    nest_level(b, dims, ops, 0, addrs, outer, hook, inner);
}

#[allow(clippy::too_many_arguments)]
pub(crate) fn nest_level(
    b: &mut FunctionBuilder,
    dims: &[usize],
    ops: &[Strided],
    depth: usize,
    mut addrs: Vec<Value>,
    outer: Option<(Value, Value)>,
    hook: &mut dyn FnMut(&mut FunctionBuilder, usize, &mut Vec<Value>),
    inner: &mut dyn FnMut(&mut FunctionBuilder, &[Value]),
) {
    hook(b, depth, &mut addrs);
    if depth + 1 >= dims.len() {
        inner(b, &addrs);
        return;
    }
    let mut level = |b: &mut FunctionBuilder, i: Value| {
        let here: Vec<Value> = addrs
            .iter()
            .zip(ops)
            .map(|(&a, op)| match op.strides[depth] {
                0 => a,
                s => {
                    let off = b.ins().imul_imm_s(i, s as i64);
                    b.ins().iadd(a, off)
                }
            })
            .collect();
        nest_level(b, dims, ops, depth + 1, here, None, hook, inner);
    };
    match outer {
        Some((start, end)) if depth == 0 => {
            range_loop(b, start, end, 1, &mut level);
        }
        _ => emit_for(b, 0, dims[depth] as i64, 1, &mut level),
    }
}

pub(crate) fn addr_at(b: &mut FunctionBuilder, base: Value, i: Value, stride: isize) -> Value {
    match stride {
        0 => base,
        s => {
            let off = b.ins().imul_imm_s(i, s as i64);
            b.ins().iadd(base, off)
        }
    }
}

pub(crate) fn load(b: &mut FunctionBuilder, ty: Type, addr: Value) -> Value {
    b.ins().load(ty, flags(), addr, 0)
}

pub(crate) fn store(b: &mut FunctionBuilder, v: Value, addr: Value) {
    b.ins().store(flags(), v, addr, 0);
}

/// Sets the `f32` elements `[lo, hi)` of the contiguous buffer at `addr`
/// to `value`, four at a time when `vector` (both bounds multiples of 4).
pub(crate) fn emit_fill_range(
    b: &mut FunctionBuilder,
    addr: usize,
    lo: Value,
    hi: Value,
    vector: bool,
    value: f32,
) {
    let base = emit_addr(b, addr);
    let (step, ty) = if vector {
        (4, types::F32X4)
    } else {
        (1, types::F32)
    };
    let zero = b.ins().f32const(value);
    let zero = if vector {
        b.ins().splat(ty, zero)
    } else {
        zero
    };
    range_loop(b, lo, hi, step, &mut |b, i| {
        let a = addr_at(b, base, i, 4);
        store(b, zero, a);
    });
}

/// Fills a contiguous buffer with one value (reduction identities).
pub(crate) fn emit_fill(b: &mut FunctionBuilder, addr: usize, n: usize, value: f32) {
    let out = Strided {
        addr,
        strides: vec![4],
    };
    let mut ops = [out];
    let dims = coalesce(&[n], &mut ops);
    let Some(&n) = dims.first() else {
        let a = emit_addr(b, addr);
        let v = b.ins().f32const(value);
        store(b, v, a);
        return;
    };
    let base = emit_addr(b, addr);
    let v = b.ins().f32const(value);
    let vv = b.ins().splat(types::F32X4, v);
    let n = n as i64;
    emit_for(b, 0, n / 4 * 4, 4, &mut |b, i| {
        let off = b.ins().imul_imm_s(i, 4);
        let a = b.ins().iadd(base, off);
        store(b, vv, a);
    });
    emit_for(b, n / 4 * 4, n, 1, &mut |b, i| {
        let off = b.ins().imul_imm_s(i, 4);
        let a = b.ins().iadd(base, off);
        store(b, v, a);
    });
}
