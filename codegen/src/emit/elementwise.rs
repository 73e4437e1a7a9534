//! Elementwise loops: an expression evaluated at every index of its space
//! and stored into one or more views, `f32x4`/`i32x4` along a contiguous
//! (or broadcast) innermost dim with a scalar tail, optionally only a
//! range of work units ([`MapSplit`]); copies are the one-leaf case.

use super::builder::{
    addr_at, coalesce, emit_nest, emit_nest_in, range_loop, store, strided, Strided,
};
use super::expr::{Code, CHUNK};
use super::host::{Calls, Host};
use crate::plan::split::{MapSplit, MAP_CHUNK};
use crate::plan::{Kind, View};
use crate::CodegenError;
use cranelift_codegen::ir::{types, InstBuilder, StackSlotData, StackSlotKind, Value};
use cranelift_frontend::FunctionBuilder;

/// The operands of a loop over an expression's space: `outs` (written),
/// then the expression's leaves.
pub(crate) fn loop_operands(outs: &[(Strided, Kind)], code: &Code) -> Vec<Strided> {
    outs.iter()
        .map(|o| o.0.clone())
        .chain(
            code.addrs
                .iter()
                .zip(&code.strides)
                .map(|(&addr, s)| Strided {
                    addr,
                    strides: s.clone(),
                }),
        )
        .collect()
}

/// Evaluates `code` at every index of `dims` and stores each output into
/// its view in `outs` (same shape, any strides). Every leaf of an element
/// is loaded before any output of it is stored, so an output may overwrite
/// a leaf read at the same element (an update computed in place).
///
/// With `range` (run-time `[start, end)` work units, see [`MapSplit`]) only
/// those units are computed; the split is returned either way.
pub(crate) fn emit_map(
    b: &mut FunctionBuilder,
    calls: &mut dyn Calls,
    code: &Code,
    dims: &[usize],
    outs: &[(Strided, Kind)],
    range: Option<(Value, Value)>,
) -> Result<MapSplit, CodegenError> {
    emit_map_shifted(b, calls, code, dims, outs, range, &[])
}

/// [`emit_map`] with run-time byte offsets added to the base addresses of
/// the operands (`outs`, then the leaves; missing or `None`: no offset): a
/// loop's slice of a stacked sequence.
pub(crate) fn emit_map_shifted(
    b: &mut FunctionBuilder,
    calls: &mut dyn Calls,
    code: &Code,
    dims: &[usize],
    outs: &[(Strided, Kind)],
    range: Option<(Value, Value)>,
    shifts: &[Option<Value>],
) -> Result<MapSplit, CodegenError> {
    let mut ops = loop_operands(outs, code);
    let mut dims = coalesce(dims, &mut ops);
    if dims.is_empty() {
        dims.push(1);
        for o in &mut ops {
            o.strides.push(0);
        }
    }
    let n = *dims.last().unwrap_or(&1) as i64;
    let last = dims.len() - 1;
    let split = if dims.len() >= 2 {
        MapSplit { units: dims[0] }
    } else {
        MapSplit {
            units: (n as usize).div_ceil(MAP_CHUNK),
        }
    };
    let inner: Vec<isize> = ops.iter().map(|o| o.strides[last]).collect();
    let (written, leaves) = inner.split_at(outs.len());
    let vector = n >= 4
        && code.vectorizes()
        && written.iter().all(|&s| s == 4)
        && leaves.iter().all(|&s| s == 0 || s == 4);
    let k = outs.len();
    let mut error = None;
    let staging = if vector && n >= CHUNK as i64 {
        code.staging()
    } else {
        None
    };
    let slot = staging.as_ref().map(|st| {
        b.create_sized_stack_slot(StackSlotData::new(
            StackSlotKind::ExplicitSlot,
            st.slot_bytes(),
            6,
        ))
    });
    // A one-dim loop's range, in elements: `[lo, hi)`.
    let chunked = range.filter(|_| dims.len() == 1).map(|(start, end)| {
        let lo = b.ins().imul_imm_s(start, MAP_CHUNK as i64);
        let hi = b.ins().imul_imm_s(end, MAP_CHUNK as i64);
        let n_val = b.ins().iconst(types::I64, n);
        let hi = b.ins().smin(hi, n_val);
        (lo, hi)
    });
    let outer = range.filter(|_| dims.len() >= 2);
    let mut shift = |b: &mut FunctionBuilder, depth: usize, addrs: &mut Vec<Value>| {
        if depth == 0 {
            for (a, s) in addrs.iter_mut().zip(shifts) {
                if let Some(s) = s {
                    *a = b.ins().iadd(*a, *s);
                }
            }
        }
    };
    emit_nest_in(b, &dims, &ops, outer, &mut shift, &mut |b, addrs| {
        let vec_end = if vector { n / 4 * 4 } else { 0 };
        // The vector loop's and the scalar tail's bounds.
        let (v_lo, v_hi, t_lo, t_hi) = match chunked {
            None => {
                let [a, c, d, e] = [0, vec_end, vec_end, n].map(|v| b.ins().iconst(types::I64, v));
                (a, c, d, e)
            }
            Some((lo, hi)) => {
                let ve = b.ins().iconst(types::I64, vec_end);
                let v_hi = b.ins().smin(hi, ve);
                let t_lo = b.ins().smax(lo, ve);
                (lo, v_hi, t_lo, hi)
            }
        };
        if vector {
            // Broadcast leaves: load once per row, splat.
            let splats: Vec<Option<Value>> = (0..leaves.len())
                .map(|l| (leaves[l] == 0).then(|| code.load(b, l, addrs[k + l], 0, true, 0)))
                .collect();
            // Every leaf's vector at byte offset `byte` of the row.
            let load_vectors = |b: &mut FunctionBuilder, byte: Value| -> Vec<Value> {
                (0..leaves.len())
                    .map(|l| match splats[l] {
                        Some(v) => v,
                        None => {
                            let a = b.ins().iadd(addrs[k + l], byte);
                            code.load(b, l, a, 0, true, 4)
                        }
                    })
                    .collect()
            };
            // With `exp`, `log`, `tanh` or `sigmoid` in the expression,
            // chunks of `CHUNK` elements first, staged (see
            // `Code::staging`), the rest four at a time.
            let mut v_mid = v_lo;
            if let (Some(st), Some(slot)) = (&staging, slot) {
                let span = b.ins().isub(v_hi, v_lo);
                let zero = b.ins().iconst(types::I64, 0);
                let span = b.ins().smax(span, zero);
                let span = b.ins().band_imm_s(span, -(CHUNK as i64));
                v_mid = b.ins().iadd(v_lo, span);
                let base = b.ins().stack_addr(types::I64, slot, 0);
                range_loop(b, v_lo, v_mid, CHUNK as i64, &mut |b, c0| {
                    for stage in 1..=st.stages + 1 {
                        let (lo, hi) = (
                            b.ins().iconst(types::I64, 0),
                            b.ins().iconst(types::I64, CHUNK as i64),
                        );
                        range_loop(b, lo, hi, 4, &mut |b, j| {
                            let i = b.ins().iadd(c0, j);
                            let byte = b.ins().imul_imm_s(i, 4);
                            let vals = load_vectors(b, byte);
                            let jb = b.ins().imul_imm_s(j, 4);
                            let buffers = b.ins().iadd(base, jb);
                            match code.evaluate_stage(b, calls, st, stage, &vals, buffers) {
                                Ok(results) => {
                                    for (o, v) in results.into_iter().enumerate() {
                                        let a = b.ins().iadd(addrs[o], byte);
                                        store(b, v, a);
                                    }
                                }
                                Err(e) => error = Some(e),
                            }
                        });
                        for (offset, f) in st.calls(stage) {
                            let at = b.ins().iadd_imm_s(base, offset as i64);
                            let func = b.ins().iconst(types::I64, f as i64);
                            let count = b.ins().iconst(types::I64, CHUNK as i64);
                            calls.call(b, Host::Vmath16, &[at, func, count]);
                        }
                    }
                });
            }
            range_loop(b, v_mid, v_hi, 4, &mut |b, i| {
                let byte = b.ins().imul_imm_s(i, 4);
                let vals = load_vectors(b, byte);
                match code.evaluate(b, calls, true, &vals) {
                    Ok(results) => {
                        for (o, v) in results.into_iter().enumerate() {
                            let a = b.ins().iadd(addrs[o], byte);
                            store(b, v, a);
                        }
                    }
                    Err(e) => error = Some(e),
                }
            });
        }
        range_loop(b, t_lo, t_hi, 1, &mut |b, i| {
            let vals: Vec<Value> = (0..leaves.len())
                .map(|l| {
                    let a = addr_at(b, addrs[k + l], i, leaves[l]);
                    code.load(b, l, a, 0, false, 0)
                })
                .collect();
            match code.evaluate(b, calls, false, &vals) {
                Ok(results) => {
                    for (o, v) in results.into_iter().enumerate() {
                        let a = addr_at(b, addrs[o], i, written[o]);
                        store(b, v, a);
                    }
                }
                Err(e) => error = Some(e),
            }
        });
    });
    error.map_or(Ok(split), Err)
}

/// Contiguous runs of at least this many elements are copied by a host
/// `memcpy` call (one per run) rather than the vector loop: a loop's
/// per-trip slices (`[32, 128]` and up) moved at about 5 GB/s in 16-byte
/// steps.
const COPY_CALL_MIN: usize = 64;

/// Copies `src` into `dst` (same shape, any strides).
#[allow(clippy::too_many_arguments)]
pub fn emit_copy(
    b: &mut FunctionBuilder,
    calls: &mut dyn Calls,
    src: &View,
    src_addr: usize,
    dst: &View,
    dst_addr: usize,
    kind: Kind,
) -> Result<(), CodegenError> {
    copy(
        b,
        calls,
        &dst.shape,
        strided(dst_addr, dst),
        strided(src_addr, src),
        kind,
    )
}

/// `dst = src` element by element over `dims`, any strides.
pub(crate) fn copy(
    b: &mut FunctionBuilder,
    calls: &mut dyn Calls,
    dims: &[usize],
    dst: Strided,
    src: Strided,
    kind: Kind,
) -> Result<(), CodegenError> {
    copy_shifted(b, calls, dims, (dst, None), (src, None), kind)
}

/// [`copy`] from and to addresses shifted by run-time byte offsets.
pub(crate) fn copy_shifted(
    b: &mut FunctionBuilder,
    calls: &mut dyn Calls,
    dims: &[usize],
    (dst, dst_shift): (Strided, Option<Value>),
    (src, src_shift): (Strided, Option<Value>),
    kind: Kind,
) -> Result<(), CodegenError> {
    let mut ops = vec![dst.clone(), src.clone()];
    let rows = coalesce(dims, &mut ops);
    if let Some(&n) = rows.last() {
        let last = rows.len() - 1;
        if n >= COPY_CALL_MIN && ops.iter().all(|o| o.strides[last] == 4) {
            let shifts = [dst_shift, src_shift];
            emit_nest(
                b,
                &rows,
                &ops,
                &mut |b, depth, addrs| {
                    if depth == 0 {
                        for (a, s) in addrs.iter_mut().zip(shifts) {
                            if let Some(s) = s {
                                *a = b.ins().iadd(*a, s);
                            }
                        }
                    }
                },
                &mut |b, addrs| {
                    let bytes = b.ins().iconst(types::I64, 4 * n as i64);
                    calls.call(b, Host::Copy, &[addrs[0], addrs[1], bytes]);
                },
            );
            return Ok(());
        }
    }
    let code = Code::copy(src.addr, src.strides, kind);
    emit_map_shifted(
        b,
        calls,
        &code,
        dims,
        &[(dst, kind)],
        None,
        &[dst_shift, src_shift],
    )
    .map(|_| ())
}
