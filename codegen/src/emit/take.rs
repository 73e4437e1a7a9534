//! Gather (numpy `take`) and its adjoint scatter-add, with bounds checks
//! that set the program's status word.

use super::builder::{addr_at, emit_for, emit_nest, load, store, Strided};
use crate::plan::{Kind, View};
use cranelift_codegen::ir::condcodes::IntCC;
use cranelift_codegen::ir::{types, InstBuilder, Value};
use cranelift_frontend::FunctionBuilder;

/// Sets the program's status word (checked after each run).
pub(crate) fn emit_fault(b: &mut FunctionBuilder, status_addr: usize, code: i64) {
    let a = super::base::emit_addr(b, status_addr);
    let c = b.ins().iconst(types::I32, code);
    store(b, c, a);
}

/// Shape bookkeeping for gather/scatter: `[outer.., idx.., inner..]`.
pub(crate) struct TakeShape {
    outer: Vec<usize>,
    idx: Vec<usize>,
    inner: Vec<usize>,
    axis_len: usize,
}

/// numpy `take` (gather) or its adjoint (scatter-add): loops over
/// `outer × indices × inner`; after the index loops, the data address moves
/// to the selected row. An out-of-range index sets the status word and is
/// skipped.
#[allow(clippy::too_many_arguments)]
pub(crate) fn emit_take(
    b: &mut FunctionBuilder,
    scatter: bool,
    kind: Kind,
    table: (usize, &View),
    idx: (usize, &View),
    rows: (usize, &View),
    axis: usize,
    status: usize,
) {
    let (t_addr, t) = table;
    let shape = TakeShape {
        outer: t.shape[..axis].to_vec(),
        idx: idx.1.shape.clone(),
        inner: t.shape[axis + 1..].to_vec(),
        axis_len: t.shape[axis],
    };
    let mut dims: Vec<usize> = shape
        .outer
        .iter()
        .chain(&shape.idx)
        .chain(&shape.inner)
        .copied()
        .collect();
    let (no, ni) = (shape.outer.len(), shape.idx.len());
    let zeros = |n: usize| vec![0isize; n];
    let mut ts: Vec<isize> = t.strides[..axis].iter().map(|s| s * 4).collect();
    ts.extend(zeros(ni));
    ts.extend(t.strides[axis + 1..].iter().map(|s| s * 4));
    let mut is: Vec<isize> = zeros(no);
    is.extend(idx.1.strides.iter().map(|s| s * 4));
    is.extend(zeros(shape.inner.len()));
    let rs: Vec<isize> = rows.1.strides.iter().map(|s| s * 4).collect();
    let mut ops = vec![
        Strided {
            addr: t_addr,
            strides: ts,
        },
        Strided {
            addr: idx.0,
            strides: is,
        },
        Strided {
            addr: rows.0,
            strides: rs,
        },
    ];
    // The row selection happens at depth `no + ni`; keep a dim there.
    if dims.len() == no + ni {
        dims.push(1);
        for o in &mut ops {
            o.strides.push(0);
        }
    }
    let axis_stride = t.strides[axis] * 4;
    let axis_len = shape.axis_len as i64;
    let valid = b.declare_var(types::I8);
    let one8 = b.ins().iconst(types::I8, 1);
    b.def_var(valid, one8);
    let mut hook = |b: &mut FunctionBuilder, depth: usize, addrs: &mut Vec<Value>| {
        if depth != no + ni {
            return;
        }
        let i = load(b, types::I32, addrs[1]);
        let i64v = b.ins().sextend(types::I64, i);
        let neg = b.ins().icmp_imm_s(IntCC::SignedLessThan, i64v, 0);
        let big = b
            .ins()
            .icmp_imm_s(IntCC::SignedGreaterThanOrEqual, i64v, axis_len);
        let bad = b.ins().bor(neg, big);
        // `bad` is 0 or 1: flip the low bit (`bnot` would give 0xFF/0xFE,
        // both true for `brif`).
        let ok = b.ins().bxor_imm_s(bad, 1);
        b.def_var(valid, ok);
        let zero = b.ins().iconst(types::I64, 0);
        let safe = b.ins().select(bad, zero, i64v);
        let off = b.ins().imul_imm_s(safe, axis_stride as i64);
        addrs[0] = b.ins().iadd(addrs[0], off);
    };
    let n = *dims.last().unwrap_or(&1) as i64;
    let last = dims.len() - 1;
    let (st, sr) = (ops[0].strides[last], ops[2].strides[last]);
    emit_nest(b, &dims, &ops, &mut hook, &mut |b, addrs| {
        let ok = b.use_var(valid);
        let go = b.create_block();
        let bad = b.create_block();
        let done = b.create_block();
        b.ins().brif(ok, go, &[], bad, &[]);
        b.switch_to_block(bad);
        emit_fault(b, status, 1);
        b.ins().jump(done, &[]);
        b.switch_to_block(go);
        emit_for(b, 0, n, 1, &mut |b, i| {
            let ta = addr_at(b, addrs[0], i, st);
            let ra = addr_at(b, addrs[2], i, sr);
            if scatter {
                let u = load(b, kind.scalar(), ra);
                let o = load(b, kind.scalar(), ta);
                let s = if kind == Kind::I32 {
                    b.ins().iadd(o, u)
                } else {
                    b.ins().fadd(o, u)
                };
                store(b, s, ta);
            } else {
                let v = load(b, types::F32, ta);
                store(b, v, ra);
            }
        });
        b.ins().jump(done, &[]);
        b.switch_to_block(done);
    });
}
