//! Cranelift emission of each kernel of the plan.
//!
//! Every kernel is specialized: sizes, strides and buffer addresses are
//! compile-time constants, so loops have constant bounds and address
//! arithmetic folds. Elementwise work runs `f32x4`/`i32x4` over the
//! innermost dimension when it is contiguous (or broadcast), with a scalar
//! tail, evaluating the loop's expression (`expr`: inline elementwise
//! work, several results per loop) per element; reductions evaluate their
//! operand's expression and accumulate in registers when they run along
//! the innermost dimension; matrix products call the packed `sgemm`, or, for
//! the small shapes where that is measured to be slower, Cranelift-emitted
//! register-tiled loops (`matmul.rs`).

pub mod matmul;
pub mod program;
pub mod random;
pub mod vmath;
pub mod window;

use crate::expr::Code;
use crate::plan::{Base, Body, Kernel, Plan, StateLayout, View};
use crate::CodegenError;
use cranelift_codegen::ir::condcodes::{FloatCC, IntCC};
use cranelift_codegen::ir::{types, AbiParam, InstBuilder, MemFlagsData, Type, Value};
use cranelift_frontend::FunctionBuilder;
use nnc_ir::{DType, Graph, Literal, NodeId, Op, ReduceOp};

/// Element kinds as the JIT stores them: bool is an i32 0 or 1.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Kind {
    F32,
    I32,
}

impl Kind {
    pub fn of(d: DType) -> Kind {
        match d {
            DType::F32 | DType::F64 => Kind::F32,
            DType::I32 | DType::Bool => Kind::I32,
        }
    }
    pub(crate) fn scalar(self) -> Type {
        match self {
            Kind::F32 => types::F32,
            Kind::I32 => types::I32,
        }
    }
    pub(crate) fn vector(self) -> Type {
        match self {
            Kind::F32 => types::F32X4,
            Kind::I32 => types::I32X4,
        }
    }
}

/// Absolute addresses of the state and work buffers a program uses.
pub struct Addresses<'a> {
    pub state: usize,
    pub work: usize,
    /// The program's GEMM packing scratch (`sgemm::Scratch`).
    pub scratch: usize,
    pub plan: &'a Plan,
    pub layout: &'a StateLayout,
}

impl Addresses<'_> {
    /// Byte address of element 0 of `view`.
    pub fn of(&self, view: &View) -> usize {
        let base = match view.base {
            Base::State(s) => self.state + self.layout.slots[s].offset,
            Base::Work(b) => self.work + self.plan.buffers[b].offset,
        };
        base + view.offset * 4
    }

    /// Byte address of work buffer `b`.
    pub fn buffer(&self, b: usize) -> usize {
        self.work + self.plan.buffers[b].offset
    }
}

/// Host functions kernels call: `powf` (rare: optimizer bias corrections),
/// `sgemm`, `parallel` (runs a kernel's range of work units over the
/// thread pool: see [`MapSplit`]), and a convolution computed from the
/// image (see [`crate::conv`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Host {
    Powf,
    Sgemm,
    Parallel,
    Conv2dRows,
    Conv2dWeightGrad,
}

impl Host {
    pub fn name(self) -> &'static str {
        match self {
            Host::Powf => "nnc_powf",
            Host::Sgemm => "nnc_sgemm",
            Host::Parallel => "nnc_parallel",
            Host::Conv2dRows => "nnc_conv2d_rows",
            Host::Conv2dWeightGrad => "nnc_conv2d_weight_grad",
        }
    }

    pub fn signature(self, sig: &mut cranelift_codegen::ir::Signature) {
        match self {
            Host::Powf => {
                sig.params.push(AbiParam::new(types::F32));
                sig.params.push(AbiParam::new(types::F32));
                sig.returns.push(AbiParam::new(types::F32));
            }
            Host::Sgemm => {
                for _ in 0..14 {
                    sig.params.push(AbiParam::new(types::I64));
                }
            }
            Host::Parallel => {
                // The kernel's address, its work units, the most tasks.
                for _ in 0..3 {
                    sig.params.push(AbiParam::new(types::I64));
                }
            }
            // Eight operands, the 11-part geometry, the fill value.
            Host::Conv2dRows | Host::Conv2dWeightGrad => {
                for _ in 0..8 + 11 + 1 {
                    sig.params.push(AbiParam::new(types::I64));
                }
            }
        }
    }
}

/// What a kernel body needs from its surroundings: a way to call hosts.
pub trait Calls {
    fn call(&mut self, b: &mut FunctionBuilder, host: Host, args: &[Value]) -> Vec<Value>;
}

fn flags() -> MemFlagsData {
    MemFlagsData::new().with_notrap()
}

/// Operands of a strided loop nest: a base address and byte strides per dim.
#[derive(Debug, Clone)]
struct Strided {
    addr: usize,
    strides: Vec<isize>,
}

fn strided(addr: usize, view: &View) -> Strided {
    Strided {
        addr,
        strides: view.strides.iter().map(|s| s * 4).collect(),
    }
}

/// Merges adjacent dims that every operand walks as one, and drops size-1
/// dims, so a contiguous elementwise op becomes a single loop.
fn coalesce(dims: &[usize], ops: &mut [Strided]) -> Vec<usize> {
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
fn emit_nest(
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
fn emit_nest_in(
    b: &mut FunctionBuilder,
    dims: &[usize],
    ops: &[Strided],
    outer: Option<(Value, Value)>,
    hook: &mut dyn FnMut(&mut FunctionBuilder, usize, &mut Vec<Value>),
    inner: &mut dyn FnMut(&mut FunctionBuilder, &[Value]),
) {
    let addrs: Vec<Value> = ops
        .iter()
        .map(|o| b.ins().iconst(types::I64, o.addr as i64))
        .collect();
    nest_level(b, dims, ops, 0, addrs, outer, hook, inner);
}

#[allow(clippy::too_many_arguments)]
fn nest_level(
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

fn addr_at(b: &mut FunctionBuilder, base: Value, i: Value, stride: isize) -> Value {
    match stride {
        0 => base,
        s => {
            let off = b.ins().imul_imm_s(i, s as i64);
            b.ins().iadd(base, off)
        }
    }
}

fn load(b: &mut FunctionBuilder, ty: Type, addr: Value) -> Value {
    b.ins().load(ty, flags(), addr, 0)
}

fn store(b: &mut FunctionBuilder, v: Value, addr: Value) {
    b.ins().store(flags(), v, addr, 0);
}

/// The operands of a loop over an expression's space: `outs` (written),
/// then the expression's leaves.
fn loop_operands(outs: &[(Strided, Kind)], code: &Code) -> Vec<Strided> {
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

/// The run-time arguments of a split kernel: the work units `[start, end)`
/// it computes, and its task index (`0` on the calling thread).
#[derive(Debug, Clone, Copy)]
pub struct Split {
    pub start: Value,
    pub end: Value,
    pub task: Value,
}

/// How an elementwise loop is split into work units for the thread pool:
/// the outermost loop's indices when the (coalesced) loop nest has two or
/// more dims, else chunks of [`MAP_CHUNK`] elements of the one loop.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MapSplit {
    pub units: usize,
}

/// Elements per work unit of a one-dim elementwise loop: a multiple of the
/// vector width, and large enough (16 KiB of `f32`) that a unit's loop
/// overhead is noise.
pub const MAP_CHUNK: usize = 4096;

/// Elementwise kernels with at least this many elements run their work
/// units over the thread pool (with `--threads` above 1). Adam's update of
/// a 784×256 weight (200,704 elements) took 0.31–0.45 ms on one thread and
/// is compute-bound (a square root and a division per element in 128-bit
/// vectors), so it splits well; below about 16K elements waking the other
/// thread costs more than it saves.
pub const PARALLEL_ELEMENTS: usize = 16384;

/// Evaluates `code` at every index of `dims` and stores each output into
/// its view in `outs` (same shape, any strides). Every leaf of an element
/// is loaded before any output of it is stored, so an output may overwrite
/// a leaf read at the same element (an update computed in place).
///
/// With `range` (run-time `[start, end)` work units, see [`MapSplit`]) only
/// those units are computed; the split is returned either way.
fn emit_map(
    b: &mut FunctionBuilder,
    calls: &mut dyn Calls,
    code: &Code,
    dims: &[usize],
    outs: &[(Strided, Kind)],
    range: Option<(Value, Value)>,
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
    // A one-dim loop's range, in elements: `[lo, hi)`.
    let chunked = range.filter(|_| dims.len() == 1).map(|(start, end)| {
        let lo = b.ins().imul_imm_s(start, MAP_CHUNK as i64);
        let hi = b.ins().imul_imm_s(end, MAP_CHUNK as i64);
        let n_val = b.ins().iconst(types::I64, n);
        let hi = b.ins().smin(hi, n_val);
        (lo, hi)
    });
    let outer = range.filter(|_| dims.len() >= 2);
    emit_nest_in(b, &dims, &ops, outer, &mut |_, _, _| {}, &mut |b, addrs| {
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
            range_loop(b, v_lo, v_hi, 4, &mut |b, i| {
                let byte = b.ins().imul_imm_s(i, 4);
                let vals: Vec<Value> = (0..leaves.len())
                    .map(|l| match splats[l] {
                        Some(v) => v,
                        None => {
                            let a = b.ins().iadd(addrs[k + l], byte);
                            code.load(b, l, a, 0, true, 4)
                        }
                    })
                    .collect();
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
    let base = b.ins().iconst(types::I64, addr as i64);
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
        let a = b.ins().iconst(types::I64, addr as i64);
        let v = b.ins().f32const(value);
        store(b, v, a);
        return;
    };
    let base = b.ins().iconst(types::I64, addr as i64);
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

/// Sum or max over `axes` of `code`'s value at each element of `shape`:
/// the output is walked with stride 0 along the reduced dims. A reduction
/// along the innermost dim accumulates in an `f32x4` register and
/// combines once per row. The operand's expression (a prologue: the
/// elementwise work that produced it) is evaluated per element in the
/// loop, so the operand is never stored.
#[allow(clippy::too_many_arguments)]
fn emit_reduce(
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

/// Index of the first maximum along `axis` (a NaN counts as the maximum).
fn emit_argmax(
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

/// Sets the program's status word (checked after each run).
fn emit_fault(b: &mut FunctionBuilder, status_addr: usize, code: i64) {
    let a = b.ins().iconst(types::I64, status_addr as i64);
    let c = b.ins().iconst(types::I32, code);
    store(b, c, a);
}

/// Shape bookkeeping for gather/scatter: `[outer.., idx.., inner..]`.
struct TakeShape {
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
fn emit_take(
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

/// A matmul operand or result staged through scratch, one batch index at a
/// time (see `plan::Staged`): an operand is unfolded from `image` before
/// each product, a result folded into `image` after it.
struct Stage<'a> {
    window: &'a nnc_ir::Window,
    /// `Some(fill word)` for an unfolded operand, `None` for a folded result.
    fill: Option<u32>,
    dtype: DType,
    /// The `[N, C, *in]` image: its address and view.
    image: (usize, &'a View),
    /// Elements per plane of the unfolded tensor, planes per sample.
    plane: usize,
    channels: usize,
    /// Planes per batch index, and the byte address of their scratch (of
    /// task 0; task `t`'s is `stride` bytes further per task).
    planes: usize,
    scratch: usize,
    stride: usize,
}

/// Emits the matmul `mm` (its operands' views from the plan) into the
/// result view `c`, with the plan's staging; see [`emit_matmul`].
#[allow(clippy::too_many_arguments)]
fn emit_matmul_node(
    b: &mut FunctionBuilder,
    calls: &mut dyn Calls,
    graph: &Graph,
    at: &Addresses,
    mm: NodeId,
    c: (usize, &View),
    accumulate: bool,
    split: Option<Split>,
) -> Result<(), CodegenError> {
    let plan = at.plan;
    let operands = graph.operands(mm);
    let [x, y] = operands[..] else {
        return Err(CodegenError::new("internal error: matmul operands"));
    };
    let stage = |slot: usize| -> Result<Option<Stage>, CodegenError> {
        let Some(s) = plan.staged.get(&(mm, slot)) else {
            return Ok(None);
        };
        let node = graph.node(s.window);
        // The unfolded side: the unfold itself, or the fold's operand.
        let (cols, image, window, fill) = match &node.op {
            Op::Unfold { window, fill } => {
                let image = graph.operands(s.window)[0];
                let word = crate::program::value_word(*fill, node.ty.dtype);
                (s.window, image, window, Some(word))
            }
            Op::Fold { window } => (graph.operands(s.window)[0], s.window, window, None),
            _ => return Err(CodegenError::new("internal error: a staged window")),
        };
        let shape = &plan.views[&cols].shape;
        let image = &plan.views[&image];
        Ok(Some(Stage {
            window,
            fill,
            dtype: node.ty.dtype,
            image: (at.of(image), image),
            plane: shape[2..].iter().product(),
            channels: shape[1],
            planes: s.planes,
            scratch: at.buffer(s.scratch),
            stride: s.stride,
        }))
    };
    let stages = [stage(0)?, stage(1)?, stage(2)?];
    let (va, vb) = (&plan.views[&x], &plan.views[&y]);
    emit_matmul(
        b,
        calls,
        (at.of(va), va),
        (at.of(vb), vb),
        c,
        at.scratch,
        accumulate,
        &stages,
        split,
        plan.tasks,
    )
}

/// `c = a @ b` (or `c += a @ b` when `accumulate`), batched over the
/// leading dims: small products (see `matmul::use_cranelift`) run as
/// Cranelift loops, the rest call `sgemm`, one product per batch index from
/// a run-time loop nest, so code size does not grow with the batch. Batch
/// dims that all operands walk uniformly are folded into the rows when the
/// right operand is shared across them. An operand broadcast along a batch
/// dim (stride 0: a convolution's weight `[G, O/G, K]` against columns
/// `[N, G, K, L]`) is read in place by every product, never copied.
///
/// `accumulate` always takes the `sgemm` path (the Cranelift loops
/// overwrite); `c` may then have stride 0 along batch dims, which sums the
/// products of those dims into one matrix (a matmul fused with the
/// `reduce_sum` over its batch that autodiff emits for a broadcast weight's
/// gradient).
///
/// `stages[slot]` (`a`, `b`, `c`) stages that slot through scratch: its
/// view then only locates its matrices within the unfolded tensor.
///
/// With `split`, only the indices `[start, end)` of the outermost batch dim
/// are computed (see [`matmul_units`]), staged through the task's slice of
/// scratch, with the task's own `sgemm` packing space (`0`: the worker's);
/// a product summed over its batch (`accumulate` with a staged `b`) is
/// split into `tasks` pieces of its columns instead (see [`summed_units`]).
#[allow(clippy::too_many_arguments)]
fn emit_matmul(
    b: &mut FunctionBuilder,
    calls: &mut dyn Calls,
    a: (usize, &View),
    bm: (usize, &View),
    c: (usize, &View),
    scratch: usize,
    accumulate: bool,
    stages: &[Option<Stage>; 3],
    split: Option<Split>,
    tasks: usize,
) -> Result<(), CodegenError> {
    let (ra, rb, rc) = (a.1.shape.len(), bm.1.shape.len(), c.1.shape.len());
    let (m, k, n) = (a.1.shape[ra - 2], a.1.shape[ra - 1], bm.1.shape[rb - 1]);
    let batch = &c.1.shape[..rc - 2];
    let strides = |v: &View| crate::plan::batch_strides(v, batch);
    let (ba, bb, bc) = (strides(a.1), strides(bm.1), strides(c.1));
    let (a_rs, a_cs) = (a.1.strides[ra - 2], a.1.strides[ra - 1]);
    let (b_rs, b_cs) = (bm.1.strides[rb - 2], bm.1.strides[rb - 1]);
    let (c_rs, c_cs) = (c.1.strides[rc - 2], c.1.strides[rc - 1]);
    let staging = stages.iter().any(Option::is_some);
    let fold = folds_batch(a.1, bm.1, c.1, batch, staging);
    let folded = fold || batch.is_empty();
    let rows = if folded {
        m * batch.iter().product::<usize>()
    } else {
        m
    };
    if batch.contains(&0) {
        return Ok(());
    }
    let views = [a.1, bm.1, c.1];
    // Per slot: where its matrix starts (a staged slot's in its scratch),
    // and how far it moves per step along each batch dim: bytes, or planes
    // of the unfolded tensor when staged.
    let mut bases = [a.0, bm.0, c.0];
    let mut first_plane = [0usize; 3];
    for (slot, stage) in stages.iter().enumerate() {
        if let Some(st) = stage {
            let offset = views[slot].offset;
            bases[slot] = st.scratch + offset % st.plane * 4;
            first_plane[slot] = offset / st.plane;
        }
    }
    let steps: Vec<[isize; 3]> = if folded {
        Vec::new()
    } else {
        (0..batch.len())
            .map(|i| {
                let elements = [ba[i], bb[i], bc[i]];
                std::array::from_fn(|slot| match &stages[slot] {
                    Some(st) => elements[slot] / st.plane as isize,
                    None => elements[slot] * 4,
                })
            })
            .collect()
    };
    let lens: Vec<usize> = if folded { Vec::new() } else { batch.to_vec() };
    if let Some(st) = &stages[2] {
        if !st.image.1.is_contiguous() {
            return Err(CodegenError::new(
                "internal error: a staged fold's result must be a contiguous buffer",
            ));
        }
        match split {
            // Only this task's samples: the products of other tasks fold
            // into theirs.
            Some(sp) => {
                let sample = st.image.1.strides[0] as i64;
                let lo = b.ins().imul_imm_s(sp.start, sample);
                let hi = b.ins().imul_imm_s(sp.end, sample);
                emit_fill_range(b, st.image.0, lo, hi, sample % 4 == 0, 0.0);
            }
            None => emit_fill(b, st.image.0, st.image.1.numel(), 0.0),
        }
    }
    // Per slot: the task's offset into its staging scratch.
    let task_offsets: [Option<Value>; 3] = std::array::from_fn(|slot| {
        let (st, sp) = (stages[slot].as_ref()?, split?);
        Some(b.ins().imul_imm_s(sp.task, st.stride as i64))
    });
    let scratch_arg = match split {
        // Task 0 runs on the calling thread, with the program's packing
        // space; the others pass 0 for their thread's own.
        Some(sp) => {
            let first = b.ins().icmp_imm_s(IntCC::Equal, sp.task, 0);
            let own = b.ins().iconst(types::I64, scratch as i64);
            let zero = b.ins().iconst(types::I64, 0);
            b.ins().select(first, own, zero)
        }
        None => b.ins().iconst(types::I64, scratch as i64),
    };
    let in_place = crate::sgemm::reads_b_in_place(rows, k, a_cs, b_rs, b_cs);
    let small = !accumulate && crate::matmul::use_cranelift(rows, n, k, in_place);
    // A split product summed over its batch: split by column pieces of
    // the staged `b` instead of by batch index (see `summed_units`).
    let by_planes = match (split, &stages) {
        (Some(_), [None, Some(st), None]) if accumulate => {
            let per_plane =
                columns_per_plane(bm.1, k, st.plane, st.planes, n).ok_or_else(|| {
                    CodegenError::new("internal error: a split summed product's columns")
                })?;
            Some((per_plane, st.planes))
        }
        _ => None,
    };
    // `at`: each slot's address, or a staged slot's first plane; `piece`:
    // only the columns `[j0, j1)` of a staged `b` and of `c`, unfolding
    // only the channels that hold them.
    let per_plane = by_planes.map_or(1, |(per_plane, _)| per_plane);
    // A convolution computed from the image (see `crate::conv`), one
    // whole sample per product: `w @ unfold(image)` (`b` the columns), or
    // its weight gradient `dy @ unfold(image)^T` (`b` transposed).
    let from_image = match &stages {
        [None, Some(st), None] if !accumulate && split.is_none_or(|_| by_planes.is_none()) => {
            let forward = conv_rows(st, views[1], (rows, k, n), (b_rs, b_cs), c_cs);
            let grad = || {
                let g = conv_rows(st, views[1], (rows, n, k), (b_cs, b_rs), 1)?;
                (a_cs == 1).then_some(g)
            };
            match forward {
                Some(g) => Some((Host::Conv2dRows, g)),
                None => grad().map(|g| (Host::Conv2dWeightGrad, g)),
            }
        }
        _ => None,
    };
    let mut product = |b: &mut FunctionBuilder,
                       at: [Value; 3],
                       piece: Option<(usize, usize)>|
     -> Result<(), CodegenError> {
        if let (Some((host, g)), Some(st)) = (&from_image, &stages[1]) {
            let mut scratch = b.ins().iconst(types::I64, st.scratch as i64);
            if let Some(off) = task_offsets[1] {
                scratch = b.ins().iadd(scratch, off);
            }
            let image = stage_image(b, st, at[1]);
            let fill = i64::from(st.fill.unwrap_or(0));
            let mut konst = |v: isize| b.ins().iconst(types::I64, v as i64);
            let mut args = match host {
                // out, its row stride, image, weight, its strides, rows.
                Host::Conv2dRows => vec![
                    at[2],
                    konst(c_rs),
                    image,
                    at[0],
                    konst(a_rs),
                    konst(a_cs),
                    konst(rows as isize),
                ],
                // grad, its strides, dy, its row stride, rows, image.
                _ => vec![
                    at[2],
                    konst(c_rs),
                    konst(c_cs),
                    at[0],
                    konst(a_rs),
                    konst(rows as isize),
                    image,
                ],
            };
            args.push(scratch);
            for v in g.to_args().into_iter().chain([fill]) {
                args.push(b.ins().iconst(types::I64, v));
            }
            calls.call(b, *host, &args);
            return Ok(());
        }
        let mut addrs = at;
        let (j0, j1) = piece.unwrap_or((0, 0));
        let (p0, p1) = (j0 / per_plane, j1.div_ceil(per_plane));
        for (slot, stage) in stages.iter().enumerate() {
            if let Some(st) = stage {
                addrs[slot] = b.ins().iconst(types::I64, bases[slot] as i64);
                if let Some(off) = task_offsets[slot] {
                    addrs[slot] = b.ins().iadd(addrs[slot], off);
                }
                if let Some(fill) = st.fill {
                    let (first, planes) = match piece {
                        Some(_) => (b.ins().iadd_imm_s(at[slot], p0 as i64), p1 - p0),
                        None => (at[slot], st.planes),
                    };
                    let image = stage_image(b, st, first);
                    crate::window::emit_unfold_planes(
                        b,
                        calls,
                        st.window,
                        fill,
                        st.dtype,
                        st.image.1,
                        planes,
                        image,
                        addrs[slot],
                    )?;
                }
            }
        }
        // A piece's columns of `b` (within its first channel's) and of
        // `c`, and how many.
        let n = match (piece, by_planes) {
            (Some(_), Some(_)) => {
                let skipped = (j0 - p0 * per_plane) as i64 * b_cs as i64 * 4;
                addrs[1] = b.ins().iadd_imm_s(addrs[1], skipped);
                addrs[2] = b.ins().iadd_imm_s(addrs[2], j0 as i64 * c_cs as i64 * 4);
                j1 - j0
            }
            _ => n,
        };
        if small {
            use crate::matmul::Mat;
            let mat = |rs: isize, cs: isize| Mat { addr: 0, rs, cs };
            crate::matmul::emit_small_product(
                b,
                rows,
                n,
                k,
                mat(c_rs, c_cs),
                mat(a_rs, a_cs),
                mat(b_rs, b_cs),
                addrs,
            );
        } else {
            let consts = [
                rows as i64,
                n as i64,
                k as i64,
                c_rs as i64,
                c_cs as i64,
                a_rs as i64,
                a_cs as i64,
                b_rs as i64,
                b_cs as i64,
                i64::from(accumulate),
            ];
            let [m, n, k, c_rs, c_cs, a_rs, a_cs, b_rs, b_cs, acc] =
                consts.map(|v| b.ins().iconst(types::I64, v));
            let scratch = scratch_arg;
            let [a, bm, c] = addrs;
            let args = [
                m, n, k, c, c_rs, c_cs, a, a_rs, a_cs, bm, b_rs, b_cs, acc, scratch,
            ];
            calls.call(b, Host::Sgemm, &args);
        }
        if let Some(st) = &stages[2] {
            let image = stage_image(b, st, at[2]);
            crate::window::emit_fold_planes(
                b, calls, st.window, st.dtype, st.image.1, st.planes, image, addrs[2],
            )?;
        }
        Ok(())
    };
    let start: [Value; 3] = std::array::from_fn(|slot| {
        let v = if stages[slot].is_some() {
            first_plane[slot]
        } else {
            bases[slot]
        };
        b.ins().iconst(types::I64, v as i64)
    });
    let (Some(sp), Some((per_plane, planes))) = (split, by_planes) else {
        let outer = split.map(|sp| (sp.start, sp.end));
        return batch_loops(b, &lens, &steps, start, outer, &mut |b, at| {
            product(b, at, None)
        });
    };
    // By column pieces: unit `u` zeroes its columns of the sum, then adds
    // every sample's product for them, in sample order.
    let pieces = column_pieces(per_plane * planes, tasks.min(n));
    let mut result = Ok(());
    range_loop(b, sp.start, sp.end, 1, &mut |b, u| {
        for (i, &(j0, j1)) in pieces.iter().enumerate() {
            let hit = b.ins().icmp_imm_s(IntCC::Equal, u, i as i64);
            let (this, next) = (b.create_block(), b.create_block());
            b.ins().brif(hit, this, &[], next, &[]);
            b.switch_to_block(this);
            let columns = j0..j1;
            emit_for(b, 0, rows as i64, 1, &mut |b, i| {
                let base = b.ins().iconst(types::I64, c.0 as i64);
                let row = addr_at(b, base, i, c_rs * 4);
                let zero = b.ins().f32const(0.0);
                emit_for(
                    b,
                    columns.start as i64,
                    columns.end as i64,
                    1,
                    &mut |b, j| {
                        let at = addr_at(b, row, j, c_cs * 4);
                        store(b, zero, at);
                    },
                );
            });
            if let Err(e) = batch_loops(b, &lens, &steps, start, None, &mut |b, at| {
                product(b, at, Some((j0, j1)))
            }) {
                result = Err(e);
            }
            b.ins().jump(next, &[]);
            b.switch_to_block(next);
        }
    });
    result
}

/// The view a matmul of `a` and `b` writes when its result is summed over
/// the batch dims `axes` into `out`: `out`'s strides on the kept dims,
/// stride 0 on the summed ones, so products of a summed batch accumulate
/// into one matrix.
fn summed_view(
    a: &View,
    b: &View,
    out: &View,
    axes: &[usize],
    keepdim: bool,
) -> Result<View, CodegenError> {
    let (ra, rb) = (a.shape.len(), b.shape.len());
    let r = ra.max(rb);
    // The batch shape: numpy broadcasting of the operands' batch dims.
    let dim = |v: &View, i: usize| -> usize {
        let extra = r - v.shape.len();
        i.checked_sub(extra).map_or(1, |j| v.shape[j])
    };
    let mut shape: Vec<usize> = (0..r - 2).map(|i| dim(a, i).max(dim(b, i))).collect();
    shape.extend([a.shape[ra - 2], b.shape[rb - 1]]);
    let mut strides = Vec::with_capacity(r);
    let mut j = 0;
    for i in 0..r {
        if axes.contains(&i) {
            strides.push(0);
            if keepdim {
                j += 1;
            }
        } else {
            let s = out.strides.get(j).copied().ok_or_else(|| {
                CodegenError::new("internal error: a summed matmul's result shape")
            })?;
            strides.push(s);
            j += 1;
        }
    }
    Ok(View {
        base: out.base,
        offset: out.offset,
        shape,
        strides,
    })
}

/// The geometry of a staged `w @ unfold(image)` that [`crate::conv`]
/// computes from the image: an f32 image with contiguous rows, a 2-d
/// window of stride and dilation 1, every channel of a sample in one
/// product (`b` its whole unfolded `[C·kh·kw, oh·ow]`, row-major from the
/// start of the scratch), `c` with contiguous rows, and scratch room for
/// the padded planes. At most 16 output channels: the unfold it saves costs
/// as much as the product of a few rows, while with more the product
/// dominates and packed panels use the lanes better (CIFAR's conv1, 32
/// channels of 28-wide rows in 32-lane tiles: no faster, 1.8–2.4 ms
/// either way).
fn conv_rows(
    st: &Stage,
    b_view: &View,
    (m, k, n): (usize, usize, usize),
    (b_rs, b_cs): (isize, isize),
    c_cs: isize,
) -> Option<crate::conv::Rows> {
    let (w, view) = (st.window, st.image.1);
    let shape = &view.shape;
    let plain = st.dtype == DType::F32
        && w.rank() == 2
        && w.stride.iter().all(|&s| s == 1)
        && w.dilation.iter().all(|&d| d == 1)
        && shape.len() == 4
        && view.strides[3] == 1
        && view.strides[1] >= 0
        && view.strides[2] >= 0
        && st.planes == st.channels
        && b_view.offset == 0
        && b_cs == 1
        && c_cs == 1
        && m <= 16;
    if !plain {
        return None;
    }
    let g = crate::conv::Rows::new(
        st.channels,
        view.strides[1] as usize,
        view.strides[2] as usize,
        (shape[2], shape[3]),
        (w.kernel[0], w.kernel[1]),
        (w.padding[0], w.padding[1]),
    )?;
    let fits = g.depth() == k
        && g.oh * g.ow == n
        && b_rs == n as isize
        && g.scratch_bytes() <= st.stride
        && st.scratch.is_multiple_of(8);
    fits.then_some(g)
}

/// The address of a staged slice's first image plane: plane `p` of the
/// unfolded tensor is channel `p % C` of sample `p / C`.
fn stage_image(b: &mut FunctionBuilder, st: &Stage, plane: Value) -> Value {
    let (addr, view) = st.image;
    let c = b.ins().iconst(types::I64, st.channels as i64);
    let n = b.ins().udiv(plane, c);
    let ch = b.ins().urem(plane, c);
    let base = b.ins().iconst(types::I64, addr as i64);
    let p = addr_at(b, base, n, view.strides[0] * 4);
    addr_at(b, p, ch, view.strides[1] * 4)
}

/// The work of one batch index of a matmul, given each slot's state.
type BatchBody<'a> = dyn FnMut(&mut FunctionBuilder, [Value; 3]) -> Result<(), CodegenError> + 'a;

/// Calls `body` once per index of the batch `lens` (row-major), from
/// run-time loops; `state[slot]` starts at `state` and moves by
/// `steps[dim][slot]` per step along each dim.
///
/// `outer`: a run-time range of the first dim's indices to loop over
/// instead of all of them (a split kernel's share; the first dim then has
/// at least two indices).
fn batch_loops(
    b: &mut FunctionBuilder,
    lens: &[usize],
    steps: &[[isize; 3]],
    state: [Value; 3],
    outer: Option<(Value, Value)>,
    body: &mut BatchBody,
) -> Result<(), CodegenError> {
    let Some((&len, rest)) = lens.split_first() else {
        return body(b, state);
    };
    if len == 1 && outer.is_none() {
        return batch_loops(b, rest, &steps[1..], state, None, body);
    }
    let mut result = Ok(());
    let mut level = |b: &mut FunctionBuilder, i: Value| {
        let here: [Value; 3] =
            std::array::from_fn(|slot| addr_at(b, state[slot], i, steps[0][slot]));
        if let Err(e) = batch_loops(b, rest, &steps[1..], here, None, body) {
            result = Err(e);
        }
    };
    match outer {
        Some((start, end)) => {
            range_loop(b, start, end, 1, &mut level);
        }
        None => emit_for(b, 0, len as i64, 1, &mut level),
    }
    result
}

/// Emits the body of `kernel` into `b` (which ends it with a return).
///
/// Whether `kernel`'s work splits into units the thread pool can share
/// (see [`emit_kernel`]): an elementwise loop, a reduction that keeps its
/// outermost dim, an `unfold` or a `fold` of at least
/// [`PARALLEL_ELEMENTS`]; a batch of matrix products (a convolution's, one
/// per sample) of at least `sgemm::PARALLEL_FLOPS` over at least two
/// indices of its outermost batch dim; or such a product summed over its
/// batch (see [`summed_units`]).
pub fn splits(kernel: &Kernel, graph: &Graph, plan: &Plan) -> bool {
    match &kernel.body {
        Body::Map { expr, .. } => expr.shape.iter().product::<usize>() >= PARALLEL_ELEMENTS,
        // Reductions over an outer loop they keep, and window walks, by
        // their outermost loop (planes of the image).
        Body::Operand(expr) if expr.shape.iter().product::<usize>() >= PARALLEL_ELEMENTS => {
            match &graph.node(kernel.root).op {
                Op::Reduce { op, axes, .. } => {
                    *op != ReduceOp::Mean && splits_reduction(&expr.shape, axes)
                }
                Op::Unfold { .. } | Op::Fold { .. } => true,
                _ => false,
            }
        }
        Body::Node if matches!(graph.node(kernel.root).op, Op::MatMul) => {
            matmul_units(graph, plan, kernel.root).is_some()
        }
        Body::Node if matches!(graph.node(kernel.root).op, Op::Reduce { .. }) => {
            summed_units(graph, plan, kernel.root).is_some()
        }
        _ => false,
    }
}

/// Whether a reduction of `shape` over `axes` has a kept dim to split
/// over: the outermost one (see [`emit_reduce`]), or a kept dim with a
/// reduced dim inside it, which `emit_reduce` then walks outermost (a
/// convolution's bias gradient: `[N, C, H, W]` summed to `[C]`).
fn splits_reduction(shape: &[usize], axes: &[usize]) -> bool {
    let kept = |i: usize| !axes.contains(&i) && shape[i] >= 2;
    (!shape.is_empty() && !axes.contains(&0))
        || (0..shape.len()).any(|i| kept(i) && axes.iter().any(|&j| j > i && shape[j] >= 2))
}

/// A product summed over its batch (a convolution's weight gradient,
/// `sum_n g[n] @ cols[n]^T`) splits by the columns of the sum: each work
/// unit owns an even range of columns (`column_pieces`), unfolds only the
/// channels that hold them for every sample and accumulates them in sample
/// order, so each element of the sum adds the same products in the same
/// order as on one thread. The units: one per task the plan made room
/// for. Needs the unfolded columns staged as `b`, with each channel's
/// columns contiguous in it. Columns rather than whole channels: CIFAR's
/// conv1 has 3 input channels, which two tasks split 1:2 (its kernel ran
/// at 68 GFLOP/s on two threads); a channel cut between two pieces is
/// unfolded by both.
fn summed_units(graph: &Graph, plan: &Plan, reduce: NodeId) -> Option<usize> {
    let mm = graph.operands(reduce)[0];
    if !plan.fused.contains(&mm) || !matches!(graph.node(mm).op, Op::MatMul) {
        return None;
    }
    let st = plan.staged.get(&(mm, 1))?;
    if plan.staged.contains_key(&(mm, 0)) || plan.staged.contains_key(&(mm, 2)) {
        return None;
    }
    let operands = graph.operands(mm);
    let (a, bm) = (plan.views.get(&operands[0])?, plan.views.get(&operands[1])?);
    let (ra, rb) = (a.shape.len(), bm.shape.len());
    let (m, k, n) = (a.shape[ra - 2], a.shape[ra - 1], bm.shape[rb - 1]);
    let plane: usize = plan.views.get(&st.window)?.shape[2..].iter().product();
    let per_plane = columns_per_plane(bm, k, plane, st.planes, n)?;
    let samples: usize = plan.views.get(&st.window)?.shape[0];
    let flops = 2 * m * n * k * samples;
    let units = plan.tasks.min(n);
    (per_plane > 0 && units >= 2 && flops >= crate::sgemm::PARALLEL_FLOPS).then_some(units)
}

/// Columns of a staged `b` (`k` rows, `n` columns) per channel plane of
/// `plane` elements, when each plane holds whole, contiguous columns
/// (`b` is the transposed columns of an unfold: row stride 1, column
/// stride `k`).
fn columns_per_plane(bm: &View, k: usize, plane: usize, planes: usize, n: usize) -> Option<usize> {
    let rb = bm.shape.len();
    let (b_rs, b_cs) = (bm.strides[rb - 2], bm.strides[rb - 1]);
    let per_plane = plane / k.max(1);
    (b_rs == 1 && b_cs == k as isize && per_plane * k == plane && per_plane * planes == n)
        .then_some(per_plane)
}

/// `n` columns in `units` contiguous, even pieces `[j0, j1)`.
fn column_pieces(n: usize, units: usize) -> Vec<(usize, usize)> {
    (0..units)
        .map(|u| (n * u / units, n * (u + 1) / units))
        .collect()
}

/// The outermost batch dim of the matmul `mm` when its products are split
/// over it: products run one per batch index (not folded into rows), and
/// are large enough in all.
fn matmul_units(graph: &Graph, plan: &Plan, mm: NodeId) -> Option<usize> {
    let operands = graph.operands(mm);
    let (a, bm, c) = (
        plan.views.get(&operands[0])?,
        plan.views.get(&operands[1])?,
        plan.views.get(&mm)?,
    );
    let (ra, rb, rc) = (a.shape.len(), bm.shape.len(), c.shape.len());
    let (m, k, n) = (a.shape[ra - 2], a.shape[ra - 1], bm.shape[rb - 1]);
    let batch = &c.shape[..rc - 2];
    let staging = (0..3).any(|slot| plan.staged.contains_key(&(mm, slot)));
    let &units = batch.first()?;
    if units < 2 || folds_batch(a, bm, c, batch, staging) {
        return None;
    }
    if c.strides[0] == 0 {
        return None;
    }
    // A staged fold's image is split by sample: its batch must be the
    // image's.
    if let Some(st) = plan.staged.get(&(mm, 2)) {
        if plan.views.get(&st.window)?.shape.first() != Some(&units) {
            return None;
        }
    }
    let flops = 2 * m * n * k * batch.iter().product::<usize>();
    (flops >= crate::sgemm::PARALLEL_FLOPS).then_some(units)
}

/// Whether a batched product folds its batch into the rows of one product:
/// `b` shared by every batch index, `a` and `c` walking the batch as more
/// rows (and nothing staged).
fn folds_batch(a: &View, bm: &View, c: &View, batch: &[usize], staging: bool) -> bool {
    let (ra, rc) = (a.shape.len(), c.shape.len());
    let m = a.shape[ra - 2];
    let strides = |v: &View| crate::plan::batch_strides(v, batch);
    let (ba, bb, bc) = (strides(a), strides(bm), strides(c));
    let (a_rs, c_rs) = (a.strides[ra - 2], c.strides[rc - 2]);
    !staging
        && batch.iter().product::<usize>() > 1
        && bb.iter().all(|&s| s == 0)
        && batch.iter().enumerate().all(|(i, _)| {
            let inner_a: isize = if i + 1 < batch.len() {
                ba[i + 1] * batch[i + 1] as isize
            } else {
                a_rs * m as isize
            };
            let inner_c: isize = if i + 1 < batch.len() {
                bc[i + 1] * batch[i + 1] as isize
            } else {
                c_rs * m as isize
            };
            ba[i] == inner_a && bc[i] == inner_c
        })
}

/// With `range`, the kernel is one whose work [`splits`]: it computes the
/// work units `[start, end)` of the run-time range only, as task `task`
/// (which selects its slice of staging scratch), and returns how many
/// units its whole work has.
pub fn emit_kernel(
    b: &mut FunctionBuilder,
    calls: &mut dyn Calls,
    graph: &Graph,
    kernel: &Kernel,
    at: &Addresses,
    status: usize,
    range: Option<Split>,
) -> Result<Option<usize>, CodegenError> {
    let plan = at.plan;
    let id = kernel.root;
    let node = graph.node(id);
    let view_of = |n: NodeId| -> Result<&View, CodegenError> {
        plan.views.get(&n).ok_or_else(|| {
            CodegenError::new(format!(
                "internal error: `{}` has no buffer",
                graph.node(n).op.mnemonic()
            ))
        })
    };
    let out_view = view_of(id)?;
    let out_addr = at.of(out_view);
    let out_kind = Kind::of(node.ty.dtype);
    match &kernel.body {
        Body::Map { outputs, expr } => {
            let code = Code::new(b, expr, at)?;
            let mut outs = Vec::new();
            for &o in outputs {
                let v = view_of(o)?;
                outs.push((strided(at.of(v), v), Kind::of(graph.ty(o).dtype)));
            }
            let units = range.map(|r| (r.start, r.end));
            let split = emit_map(b, calls, &code, &expr.shape, &outs, units)?;
            return Ok(Some(split.units));
        }
        Body::Operand(expr) => {
            let code = Code::new(b, expr, at)?;
            let units = range.map(|r| (r.start, r.end));
            return match &node.op {
                Op::Reduce { op, axes, .. } => {
                    if code.output_kind(0) != Kind::F32 {
                        return Err(CodegenError::new(
                            "the JIT reduces f32 tensors only (use --backend interp)",
                        ));
                    }
                    emit_reduce_node(
                        b,
                        calls,
                        *op,
                        &code,
                        &expr.shape,
                        axes,
                        out_view,
                        out_addr,
                        units,
                    )
                }
                Op::Unfold { window, fill } => {
                    let word = crate::program::value_word(*fill, node.ty.dtype);
                    crate::window::emit_unfold(
                        b,
                        calls,
                        window,
                        word,
                        node.ty.dtype,
                        (&code, &expr.shape),
                        (out_addr, out_view),
                        units,
                    )
                }
                Op::Fold { window } => crate::window::emit_fold(
                    b,
                    calls,
                    window,
                    node.ty.dtype,
                    (&code, &expr.shape),
                    (out_addr, out_view),
                    units,
                ),
                _ => Err(CodegenError::new(format!(
                    "internal error: `{}` does not loop over its operand",
                    node.op.mnemonic()
                ))),
            };
        }
        Body::Node => {}
    }
    let operands = graph.operands(id);
    let operand = |i: usize| -> Result<(&View, usize, Kind), CodegenError> {
        let v = view_of(operands[i])?;
        Ok((v, at.of(v), Kind::of(graph.ty(operands[i]).dtype)))
    };
    match &node.op {
        Op::Reshape => {
            // The plan schedules a reshape only for an operand no view
            // reshapes: walk it in row-major order of its own shape into
            // the result.
            let (v, a, k) = operand(0)?;
            let dst = Strided {
                addr: out_addr,
                strides: crate::plan::row_major(&v.shape)
                    .iter()
                    .map(|s| s * 4)
                    .collect(),
            };
            copy(b, calls, &v.shape, dst, strided(a, v), k)?
        }
        Op::Concat { axis } => {
            let mut start = 0usize;
            for i in 0..operands.len() {
                let (v, a, k) = operand(i)?;
                let mut dst = strided(out_addr, out_view);
                dst.addr =
                    (dst.addr as isize + start as isize * out_view.strides[*axis] * 4) as usize;
                copy(b, calls, &v.shape, dst, strided(a, v), k)?;
                start += v.shape[*axis];
            }
        }
        Op::Reduce { axes, keepdim, .. } if plan.fused.contains(&operands[0]) => {
            // The plan fused the matmul this sums (`plan::summed_products`).
            let mm = operands[0];
            let [x, y] = graph.operands(mm)[..] else {
                return Err(CodegenError::new(
                    "internal error: a fused matmul's operands",
                ));
            };
            let (va, vb) = (view_of(x)?, view_of(y)?);
            let c = summed_view(va, vb, out_view, axes, *keepdim)?;
            let split = range.and_then(|r| Some((r, summed_units(graph, plan, id)?)));
            if split.is_none() {
                emit_fill(b, out_addr, out_view.numel(), 0.0);
            }
            let units = split.map(|(_, u)| u);
            emit_matmul_node(
                b,
                calls,
                graph,
                at,
                mm,
                (out_addr, &c),
                true,
                split.map(|(r, _)| r),
            )?;
            return Ok(units);
        }
        Op::ArgMax { axis } => {
            let (v, a, k) = operand(0)?;
            emit_argmax(b, v, a, k, *axis, out_addr);
        }
        Op::MatMul => {
            let split = range.and_then(|r| Some((r, matmul_units(graph, plan, id)?)));
            emit_matmul_node(
                b,
                calls,
                graph,
                at,
                id,
                (out_addr, out_view),
                false,
                split.map(|(r, _)| r),
            )?;
            return Ok(split.map(|(_, units)| units));
        }
        Op::Gather { axis } => {
            let (v, a, _) = operand(0)?;
            let (vi, ai, _) = operand(1)?;
            emit_take(
                b,
                false,
                out_kind,
                (a, v),
                (ai, vi),
                (out_addr, out_view),
                *axis,
                status,
            );
        }
        Op::ScatterAdd { axis } => {
            emit_fill(b, out_addr, out_view.numel(), 0.0);
            let (vu, au, _) = operand(0)?;
            let (vi, ai, _) = operand(1)?;
            emit_take(
                b,
                true,
                out_kind,
                (out_addr, out_view),
                (ai, vi),
                (au, vu),
                *axis,
                status,
            );
        }
        _ => {
            return Err(CodegenError::new(format!(
                "internal error: `{}` is not a kernel of its own",
                node.op.mnemonic()
            )))
        }
    }
    Ok(None)
}

/// A reduction (sum, mean or max) of `code` over `axes` of `shape` into
/// the contiguous `out`.
///
/// With `range` (a sum or max only), only the indices `[start, end)` of the
/// outermost loop when it is not reduced; returns how many it has.
#[allow(clippy::too_many_arguments)]
fn emit_reduce_node(
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

/// The constant data of a `const` or `iota` node, as 4-byte words.
pub fn constant_words(graph: &Graph, id: NodeId, shape: &[usize]) -> Vec<u32> {
    let node = graph.node(id);
    let kind = Kind::of(node.ty.dtype);
    let word = |v: f64| match kind {
        Kind::F32 => (v as f32).to_bits(),
        Kind::I32 if node.ty.dtype == DType::Bool => u32::from(v != 0.0),
        Kind::I32 => (v as i32) as u32,
    };
    let numel: usize = shape.iter().product();
    match &node.op {
        Op::Const(Literal::Splat(v)) => vec![word(*v); numel],
        Op::Const(Literal::Dense(vs)) => vs.iter().map(|&v| word(v)).collect(),
        Op::Iota { axis } => {
            let strides = crate::plan::row_major(shape);
            (0..numel)
                .map(|i| word(((i as isize / strides[*axis]) as usize % shape[*axis]) as f64))
                .collect()
        }
        _ => Vec::new(),
    }
}

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
fn copy(
    b: &mut FunctionBuilder,
    calls: &mut dyn Calls,
    dims: &[usize],
    dst: Strided,
    src: Strided,
    kind: Kind,
) -> Result<(), CodegenError> {
    let code = Code::copy(src.addr, src.strides, kind);
    emit_map(b, calls, &code, dims, &[(dst, kind)], None).map(|_| ())
}
