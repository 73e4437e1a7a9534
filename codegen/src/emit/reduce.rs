//! Reductions (sum, mean, max), their operand's expression evaluated per
//! element, and argmax.
//!
//! Every result element is reduced in registers and stored once. Sums
//! cascade: a run of at most [`FAN`] terms is added in sequence, and the
//! run's sum becomes one term of the level above (PyTorch's cascade sum),
//! so a sum of `n` values rounds about `FAN·log_FAN(n)` times in sequence
//! instead of `n` times. The levels are nested loops with constant trip
//! counts: the innermost level is the `f32x4` accumulation of a contiguous
//! row (two accumulators), the levels above add whole runs, and each
//! reduced loop of the nest is a level of its own. The order depends only
//! on the shape, never on the thread count: a split kernel's units are
//! result elements (a kept dim).

use super::builder::{
    addr_at, coalesce, emit_for, emit_nest, emit_nest_in, load, range_loop, store, Strided,
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

/// The most terms one level of a cascaded sum adds in sequence. In the
/// innermost level a term is two `f32x4` vectors, so a run covers 128
/// contiguous elements. Over a million elements, 16 kept the error of
/// adversarial inputs (a million copies of 0.1 or of 1/3) within 3.2 units
/// of roundoff of the f64 sum, where 32 let it reach 13 and the old
/// sequential lanes 15,000; the extra level costs one vector add per run.
pub(crate) const FAN: i64 = 16;

/// The combination of terms: `fadd` for sums, `fmax` for max.
type Combine = dyn Fn(&mut FunctionBuilder, Value, Value) -> Value;

/// A term of a cascade: given the index and the running accumulators,
/// returns them with the term added.
type Term<'a> = dyn FnMut(&mut FunctionBuilder, Value, &[Value]) -> Vec<Value> + 'a;

/// The accumulators, starting from `init`, after `term(i)` for `i` in
/// `[start, end)` stepping by `step` (at most `cap` terms): runs of at
/// most `fan` terms in sequence, each run's sum a term of the level
/// above. `term` is emitted once, in the innermost loop.
#[allow(clippy::too_many_arguments)]
fn cascade(
    b: &mut FunctionBuilder,
    start: Value,
    end: Value,
    step: i64,
    cap: i64,
    fan: i64,
    init: &[Value],
    combine: &Combine,
    term: &mut Term,
) -> Vec<Value> {
    let vars: Vec<_> = init
        .iter()
        .map(|&v| {
            let ty = b.func.dfg.value_type(v);
            let var = b.declare_var(ty);
            b.def_var(var, v);
            var
        })
        .collect();
    if cap <= fan {
        range_loop(b, start, end, step, &mut |b, i| {
            let cur: Vec<Value> = vars.iter().map(|&v| b.use_var(v)).collect();
            let next = term(b, i, &cur);
            for (&var, v) in vars.iter().zip(next) {
                b.def_var(var, v);
            }
        });
    } else {
        // Runs of `chunk` terms (a power of `fan`), at most `fan` of them.
        let mut chunk = fan;
        while chunk.saturating_mul(fan) < cap {
            chunk *= fan;
        }
        range_loop(b, start, end, step * chunk, &mut |b, i| {
            let next = b.ins().iadd_imm_s(i, step * chunk);
            let stop = b.ins().smin(next, end);
            let run = cascade(b, i, stop, step, chunk, fan, init, combine, term);
            for (&var, r) in vars.iter().zip(run) {
                let cur = b.use_var(var);
                let sum = combine(b, cur, r);
                b.def_var(var, sum);
            }
        });
    }
    vars.iter().map(|&v| b.use_var(v)).collect()
}

/// A loop of the reduced nest: its trip count and each operand's byte
/// stride (the result's is 0).
struct Loop {
    n: usize,
    strides: Vec<isize>,
}

/// The accumulators, from `init`, after adding `leaf` at every index of
/// the nest `loops` from the operands' addresses `addrs`: each loop one
/// cascade (at least one level).
#[allow(clippy::too_many_arguments)]
fn sum_loops(
    b: &mut FunctionBuilder,
    loops: &[Loop],
    addrs: &[Value],
    fan: i64,
    init: &[Value],
    combine: &Combine,
    leaf: &mut dyn FnMut(&mut FunctionBuilder, &[Value]) -> Vec<Value>,
) -> Vec<Value> {
    let Some((l, rest)) = loops.split_first() else {
        // A sum of one term: `0 + x`, so `-0` sums to `0` as in the
        // interpreter.
        let v = leaf(b, addrs);
        return init.iter().zip(v).map(|(&a, v)| combine(b, a, v)).collect();
    };
    let start = b.ins().iconst(types::I64, 0);
    let end = b.ins().iconst(types::I64, l.n as i64);
    cascade(
        b,
        start,
        end,
        1,
        l.n as i64,
        fan,
        init,
        combine,
        &mut |b, i, cur| {
            let here: Vec<Value> = addrs
                .iter()
                .zip(&l.strides)
                .map(|(&a, &s)| addr_at(b, a, i, s))
                .collect();
            // The innermost loop adds the leaf's values themselves.
            let inner = if rest.is_empty() {
                leaf(b, &here)
            } else {
                sum_loops(b, rest, &here, fan, init, combine, leaf)
            };
            cur.iter()
                .zip(inner)
                .map(|(&a, v)| combine(b, a, v))
                .collect()
        },
    )
}

/// Sum or max over `axes` of `code`'s value at each element of `shape`
/// into the contiguous result at `out_addr`, each result element
/// multiplied by `scale` (a mean's `1 / count`) as it is stored. The
/// operand's expression (a prologue: the elementwise work that produced
/// it) is evaluated per element, so the operand is never stored.
///
/// The kept dims are walked outermost, each result element (or, when the
/// innermost dim is kept, each tile of 16, 4 or 1 contiguous results)
/// reduced over the reduced dims inside them in registers: the innermost
/// dim as an `f32x4` row when it is reduced, as vector tiles when it is
/// kept. With `range`, only the indices `[start, end)` of the outermost
/// kept dim; returns how many it has (`None`: no kept dim to split, all
/// computed).
#[allow(clippy::too_many_arguments)]
pub(crate) fn emit_reduce(
    b: &mut FunctionBuilder,
    calls: &mut dyn Calls,
    op: ReduceOp,
    code: &Code,
    shape: &[usize],
    axes: &[usize],
    out_addr: usize,
    scale: Option<f32>,
    range: Option<(Value, Value)>,
) -> Result<Option<usize>, CodegenError> {
    let (identity, fan) = match op {
        // A maximum rounds nothing: no cascade.
        ReduceOp::Max => (f32::NEG_INFINITY, i64::MAX),
        ReduceOp::Sum | ReduceOp::Mean => (0.0, FAN),
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
    let last = dims.len() - 1;
    let n = dims[last] as i64;
    let so = ops[0].strides[last];
    let sx: Vec<isize> = ops[1..].iter().map(|o| o.strides[last]).collect();
    let unit = code.vectorizes() && sx.iter().all(|&s| s == 0 || s == 4);
    let dim_strides = |d: usize| -> Vec<isize> { ops.iter().map(|o| o.strides[d]).collect() };
    let (kept, reduced): (Vec<usize>, Vec<usize>) =
        (0..last).partition(|&d| ops[0].strides[d] != 0);
    let reduced: Vec<Loop> = reduced
        .into_iter()
        .map(|d| Loop {
            n: dims[d],
            strides: dim_strides(d),
        })
        .collect();
    // The kept dims as a nest of their own, with a last dim of 1 for
    // `emit_nest`, which calls the cell at the start of each innermost row.
    let mut outer_dims: Vec<usize> = kept.iter().map(|&d| dims[d]).collect();
    outer_dims.push(1);
    let outer_ops: Vec<Strided> = ops
        .iter()
        .map(|o| Strided {
            addr: o.addr,
            strides: kept.iter().map(|&d| o.strides[d]).chain([0]).collect(),
        })
        .collect();
    let split = range.filter(|_| !kept.is_empty());
    let units = split.map(|_| outer_dims[0]);
    let combine = move |b: &mut FunctionBuilder, a: Value, v: Value| match op {
        ReduceOp::Max => b.ins().fmax(a, v),
        ReduceOp::Sum | ReduceOp::Mean => b.ins().fadd(a, v),
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
    let scaled = |b: &mut FunctionBuilder, v: Value| match scale {
        Some(s) => {
            let s = b.ins().f32const(s);
            let s = match b.func.dfg.value_type(v) {
                types::F32X4 => b.ins().splat(types::F32X4, s),
                _ => s,
            };
            b.ins().fmul(v, s)
        }
        None => v,
    };
    emit_nest_in(
        b,
        &outer_dims,
        &outer_ops,
        split,
        &mut |_, _, _| {},
        &mut |b, addrs| {
            let init = b.ins().f32const(identity);
            let vinit = b.ins().splat(types::F32X4, init);
            if so == 0 {
                // One result: the reduced nest, each innermost row a cascade
                // of `f32x4` pairs (two accumulators, so that a long row is not
                // one chain of dependent adds), a last vector, the lanes
                // pairwise, then a scalar tail.
                let mut row = |b: &mut FunctionBuilder, addrs: &[Value]| -> Vec<Value> {
                    let (pair_end, vec_end) = if unit { (n / 8 * 8, n / 4 * 4) } else { (0, 0) };
                    let mut total = None;
                    if vec_end > 0 {
                        let mut vaccs = vec![vinit, vinit];
                        if pair_end > 0 {
                            let start = b.ins().iconst(types::I64, 0);
                            let end = b.ins().iconst(types::I64, pair_end);
                            vaccs = cascade(
                                b,
                                start,
                                end,
                                8,
                                pair_end / 8,
                                fan,
                                &vaccs,
                                &combine,
                                &mut |b, i, cur| {
                                    let next4 = b.ins().iadd_imm_s(i, 4);
                                    let v0 = value(b, addrs, i, true);
                                    let v1 = value(b, addrs, next4, true);
                                    vec![combine(b, cur[0], v0), combine(b, cur[1], v1)]
                                },
                            );
                        }
                        if vec_end > pair_end {
                            let at = b.ins().iconst(types::I64, pair_end);
                            let v = value(b, addrs, at, true);
                            vaccs[0] = combine(b, vaccs[0], v);
                        }
                        let v = combine(b, vaccs[0], vaccs[1]);
                        let lanes: Vec<Value> = (0..4).map(|l| b.ins().extractlane(v, l)).collect();
                        let low = combine(b, lanes[0], lanes[1]);
                        let high = combine(b, lanes[2], lanes[3]);
                        total = Some(combine(b, low, high));
                    }
                    if vec_end < n {
                        let start = b.ins().iconst(types::I64, vec_end);
                        let end = b.ins().iconst(types::I64, n);
                        let tail = cascade(
                            b,
                            start,
                            end,
                            1,
                            n - vec_end,
                            fan,
                            &[init],
                            &combine,
                            &mut |b, i, cur| {
                                let v = value(b, addrs, i, false);
                                vec![combine(b, cur[0], v)]
                            },
                        )[0];
                        total = Some(match total {
                            Some(t) => combine(b, t, tail),
                            None => tail,
                        });
                    }
                    vec![total.unwrap_or(init)]
                };
                let total = if reduced.is_empty() {
                    row(b, addrs)[0]
                } else {
                    sum_loops(b, &reduced, addrs, fan, &[init], &combine, &mut row)[0]
                };
                let r = scaled(b, total);
                store(b, r, addrs[0]);
            } else {
                // A row of results: tiles of 16, then 4 contiguous results in
                // `f32x4` accumulators, then single ones, each reduced over the
                // whole reduced nest before the next.
                let vector = so == 4 && unit;
                let (wide_end, vec_end) = if vector {
                    (n / 16 * 16, n / 4 * 4)
                } else {
                    (0, 0)
                };
                let mut tile = |b: &mut FunctionBuilder, j: Value, vectors: i64| {
                    let inits = vec![vinit; vectors as usize];
                    let sums =
                        sum_loops(b, &reduced, addrs, fan, &inits, &combine, &mut |b, rows| {
                            (0..vectors)
                                .map(|t| {
                                    let at = b.ins().iadd_imm_s(j, 4 * t);
                                    value(b, rows, at, true)
                                })
                                .collect()
                        });
                    for (t, s) in (0..vectors).zip(sums) {
                        let at = b.ins().iadd_imm_s(j, 4 * t);
                        let off = b.ins().imul_imm_s(at, 4);
                        let ao = b.ins().iadd(addrs[0], off);
                        let r = scaled(b, s);
                        store(b, r, ao);
                    }
                };
                emit_for(b, 0, wide_end, 16, &mut |b, j| tile(b, j, 4));
                emit_for(b, wide_end, vec_end, 4, &mut |b, j| tile(b, j, 1));
                emit_for(b, vec_end, n, 1, &mut |b, j| {
                    let sums = sum_loops(
                        b,
                        &reduced,
                        addrs,
                        fan,
                        &[init],
                        &combine,
                        &mut |b, rows| vec![value(b, rows, j, false)],
                    );
                    let ao = addr_at(b, addrs[0], j, so);
                    let r = scaled(b, sums[0]);
                    store(b, r, ao);
                });
            }
        },
    );
    error.map_or(Ok(units), Err)
}

/// A reduction (sum, mean or max) of `code` over `axes` of `shape` into
/// the contiguous `out`.
///
/// With `range`, only the indices `[start, end)` of the outermost kept
/// dim; returns how many it has.
#[allow(clippy::too_many_arguments)]
pub(crate) fn emit_reduce_node(
    b: &mut FunctionBuilder,
    calls: &mut dyn Calls,
    op: ReduceOp,
    code: &Code,
    shape: &[usize],
    axes: &[usize],
    out_addr: usize,
    range: Option<(Value, Value)>,
) -> Result<Option<usize>, CodegenError> {
    // Over no elements: 0 * inf = NaN, like the interpreter.
    let scale = (op == ReduceOp::Mean).then(|| {
        let count: usize = axes.iter().map(|&i| shape[i]).product();
        1.0 / count as f32
    });
    emit_reduce(b, calls, op, code, shape, axes, out_addr, scale, range)
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
