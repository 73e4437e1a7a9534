//! Small matrix products emitted as Cranelift loops.
//!
//! `c[m×n] = a[m×k] @ b[k×n]` with every size, stride and base address a
//! compile-time constant. `emit::product::emit_matmul` sends a product
//! here when [`product_in_loops`] says so and to the packed `sgemm` otherwise:
//! its AVX-512 kernels run about twice as fast as anything Cranelift can
//! emit (`f32x4` only) once `m`, `n` and `k` fill its tiles, but packing
//! `b` does not pay for a few rows, and each call has a fixed cost.
//!
//! Two loop forms, chosen by the operands' strides:
//!
//! - *Rows* (the general form; `b`'s rows contiguous in the fast case): a
//!   tile of 4 rows × 2 `f32x4` column vectors of `c` (3×2, 2×4 or 1×8
//!   when `m` is smaller) is held in 8 registers; the loop over `k`
//!   broadcasts `a[i, k]` (`splat(load)`) and multiplies it into the row
//!   `b[k, j..j+8]` with `fma`. A `b` whose columns are not contiguous is
//!   gathered four scalars per vector; fewer than 4 columns use a scalar
//!   tile. `a` may have any strides (so `a^T @ b`, the weight gradient,
//!   runs at full speed).
//! - *Dots* (`a`'s rows and `b`'s columns both contiguous along `k`, i.e.
//!   `a @ b^T`, the input gradient, with `k ≥ 16`): a tile of 4 rows × 2
//!   columns (3×2, 2×4, 1×8) keeps one `f32x4` partial dot product per
//!   element, runs `k` four at a time, then sums the lanes and adds the
//!   `k % 4` tail in scalar.
//!
//! Rows of `c` that do not fill a 4-row block, and columns of the rows form
//! that do not fill a vector, are covered by a tile that overlaps its
//! predecessor (the last row block starts at `m - 4`; the last column tile
//! ends at `n`): the overlapped elements are computed twice, identically,
//! and the code stays one or two tile loops per product (80–300 IR
//! instructions). The `k` loops run two steps per iteration; accumulators
//! are block parameters of top-tested loop headers, carried in an order
//! that keeps register pressure low (see `carry_order`); `a` and `b`
//! loads are `readonly` + `can_move` (the kernel never writes them: `c`
//! does not overlap its operands).

use super::base::emit_addr;
use crate::CodegenError;
use cranelift_codegen::ir::condcodes::IntCC;
use cranelift_codegen::ir::{types, BlockArg, InstBuilder, MemFlagsData, UserFuncName, Value};
use cranelift_codegen::settings::{self, Configurable};
use cranelift_frontend::{FunctionBuilder, FunctionBuilderContext};
use cranelift_jit::{JITBuilder, JITModule};
use cranelift_module::{default_libcall_names, Linkage, Module};
use std::time::{Duration, Instant};

pub use nnc_ir::staging::product_in_loops;

/// A matrix operand: the byte address of element `[0, 0]` and the row and
/// column strides in elements (`0` for a broadcast dimension).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Mat {
    pub addr: usize,
    pub rs: isize,
    pub cs: isize,
}

/// One batch dimension of a batched product: its length and the element
/// stride each operand advances per step along it (`0`: shared).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BatchDim {
    pub len: usize,
    pub a: isize,
    pub b: isize,
    pub c: isize,
}

/// The loop form a product runs as (see the module docs).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Form {
    Rows,
    Dots,
}

impl Form {
    pub fn of(n: usize, k: usize, a: &Mat, b: &Mat) -> Form {
        if a.cs == 1 && b.rs == 1 && k >= DOTS_MIN_K && (b.cs != 1 || n < 4) {
            Form::Dots
        } else {
            Form::Rows
        }
    }
}

/// Emits `c = a @ b` (overwriting `c`) for every index of `batch` into the
/// current block of `b`; code continues in a new current block. `c` must
/// not overlap `a` or `b`. `k = 0` writes zeros.
#[allow(clippy::too_many_arguments)]
pub fn emit_small_matmul(
    b: &mut FunctionBuilder,
    m: usize,
    n: usize,
    k: usize,
    c: Mat,
    a: Mat,
    bm: Mat,
    batch: &[BatchDim],
) {
    if m == 0 || n == 0 || batch.iter().any(|d| d.len == 0) {
        return;
    }
    let g = Geometry::new(m, n, k, c, a, bm);
    let dims: Vec<BatchDim> = batch.iter().copied().filter(|d| d.len > 1).collect();
    let ac = emit_addr(b, a.addr);
    let bc = emit_addr(b, bm.addr);
    let cc = emit_addr(b, c.addr);
    batch_level(b, &g, &dims, [ac, bc, cc]);
}

/// One product `c = a @ b` as [`emit_small_matmul`] emits it, with the
/// operands' base addresses given as run-time values `[a, b, c]` (the
/// `addr` of each `Mat` is not used): for callers that move the operands
/// themselves between products.
#[allow(clippy::too_many_arguments)]
pub fn emit_small_product(
    b: &mut FunctionBuilder,
    m: usize,
    n: usize,
    k: usize,
    c: Mat,
    a: Mat,
    bm: Mat,
    addrs: [Value; 3],
) {
    if m == 0 || n == 0 {
        return;
    }
    Geometry::new(m, n, k, c, a, bm).product(b, addrs);
}

fn batch_level(b: &mut FunctionBuilder, g: &Geometry, dims: &[BatchDim], addrs: [Value; 3]) {
    let Some((d, rest)) = dims.split_first() else {
        g.product(b, addrs);
        return;
    };
    let zero = b.ins().iconst(types::I64, 0);
    emit_loop(
        b,
        &[zero],
        &mut |b, s| {
            b.ins()
                .icmp_imm_s(IntCC::SignedLessThan, s[0], d.len as i64)
        },
        &mut |b, s| {
            let idx = s[0];
            let here = [(addrs[0], d.a), (addrs[1], d.b), (addrs[2], d.c)].map(|(base, st)| {
                if st == 0 {
                    base
                } else {
                    let off = b.ins().imul_imm_s(idx, st as i64 * 4);
                    b.ins().iadd(base, off)
                }
            });
            batch_level(b, g, rest, here);
            vec![b.ins().iadd_imm_s(idx, 1)]
        },
    );
}

/// `state = init; while cond(state) { state = body(state) }`, with `state`
/// the block parameters of a top-tested header. Returns the header's
/// parameters, which hold the final state after the loop (the header
/// dominates the exit).
fn emit_loop(
    b: &mut FunctionBuilder,
    init: &[Value],
    cond: &mut dyn FnMut(&mut FunctionBuilder, &[Value]) -> Value,
    body: &mut dyn FnMut(&mut FunctionBuilder, &[Value]) -> Vec<Value>,
) -> Vec<Value> {
    let header = b.create_block();
    let body_block = b.create_block();
    let exit = b.create_block();
    for &v in init {
        let ty = b.func.dfg.value_type(v);
        b.append_block_param(header, ty);
    }
    let args: Vec<BlockArg> = init.iter().map(|&v| v.into()).collect();
    b.ins().jump(header, &args);
    b.switch_to_block(header);
    let state = b.block_params(header).to_vec();
    let more = cond(b, &state);
    b.ins().brif(more, body_block, &[], exit, &[]);
    b.switch_to_block(body_block);
    let next = body(b, &state);
    let args: Vec<BlockArg> = next.iter().map(|&v| v.into()).collect();
    b.ins().jump(header, &args);
    b.switch_to_block(exit);
    state
}

/// Rows of a tile (4, or all of `m` when it is smaller).
const TILE_ROWS: usize = 4;
/// `k` steps per loop iteration (both forms).
const UNROLL: usize = 2;
/// The dots form from this `k` on (below it, the rows form gathering `b`
/// was faster).
const DOTS_MIN_K: usize = 16;

/// Sizes and byte strides of one product.
struct Geometry {
    m: usize,
    n: usize,
    k: usize,
    a_rs: i64,
    a_cs: i64,
    b_rs: i64,
    b_cs: i64,
    c_rs: i64,
    c_cs: i64,
    form: Form,
}

fn ro() -> MemFlagsData {
    MemFlagsData::new()
        .with_notrap()
        .with_readonly()
        .with_can_move()
}

fn rw() -> MemFlagsData {
    MemFlagsData::new().with_notrap()
}

/// `base + off` as a load/store address and immediate offset.
fn split(b: &mut FunctionBuilder, base: Value, off: i64) -> (Value, i32) {
    match i32::try_from(off) {
        Ok(o) => (base, o),
        Err(_) => (b.ins().iadd_imm_s(base, off), 0),
    }
}

fn load_ro(b: &mut FunctionBuilder, ty: types::Type, base: Value, off: i64) -> Value {
    let (p, o) = split(b, base, off);
    b.ins().load(ty, ro(), p, o)
}

fn store_at(b: &mut FunctionBuilder, v: Value, base: Value, off: i64) {
    let (p, o) = split(b, base, off);
    b.ins().store(rw(), v, p, o);
}

fn offset(b: &mut FunctionBuilder, base: Value, i: Value, stride: i64) -> Value {
    if stride == 0 {
        return base;
    }
    let off = b.ins().imul_imm_s(i, stride);
    b.ins().iadd(base, off)
}

/// The sum of the four lanes of `v`.
fn hsum(b: &mut FunctionBuilder, v: Value) -> Value {
    let l: Vec<Value> = (0..4).map(|i| b.ins().extractlane(v, i)).collect();
    let lo = b.ins().fadd(l[0], l[1]);
    let hi = b.ins().fadd(l[2], l[3]);
    b.ins().fadd(lo, hi)
}

/// The order in which the loop header carries a tile's `rows × cols`
/// accumulators (indexed row-major). At `opt_level=speed` the whole loop
/// body is pure, so Cranelift emits it depth first in the order of the
/// back edge's arguments: carried row by row, the `b` operands of every
/// column stay live across the rows; column by column, the `a` operands of
/// every row stay live across the columns. Keep the smaller set live
/// (a 2×4 tile unrolled twice spilled when carried row by row).
fn carry_order(rows: usize, cols: usize) -> Vec<usize> {
    if rows >= cols {
        (0..rows * cols).collect()
    } else {
        (0..cols)
            .flat_map(|c| (0..rows).map(move |r| r * cols + c))
            .collect()
    }
}

/// `accs` (row-major) in carry order.
fn carried(accs: &[Value], order: &[usize]) -> Vec<Value> {
    order.iter().map(|&t| accs[t]).collect()
}

/// Carried values back in row-major order.
fn uncarried(values: &[Value], order: &[usize]) -> Vec<Value> {
    let mut accs = values.to_vec();
    for (&t, &v) in order.iter().zip(values) {
        accs[t] = v;
    }
    accs
}

/// How the columns of `c` are covered: `main` tiles of `width` columns
/// from column 0, then optionally one tile of `tail_width` columns ending
/// at column `n` (overlapping the last main tile).
struct Columns {
    width: usize,
    main: usize,
    tail_width: usize,
}

impl Columns {
    fn cover(n: usize, width: usize, unit: usize) -> Columns {
        let rem = n % width;
        Columns {
            width,
            main: n / width,
            tail_width: rem.div_ceil(unit) * unit,
        }
    }
}

impl Geometry {
    fn new(m: usize, n: usize, k: usize, c: Mat, a: Mat, bm: Mat) -> Geometry {
        Geometry {
            m,
            n,
            k,
            a_rs: a.rs as i64 * 4,
            a_cs: a.cs as i64 * 4,
            b_rs: bm.rs as i64 * 4,
            b_cs: bm.cs as i64 * 4,
            c_rs: c.rs as i64 * 4,
            c_cs: c.cs as i64 * 4,
            form: Form::of(n, k, &a, &bm),
        }
    }

    /// One product at base addresses `[a, b, c]`.
    fn product(&self, b: &mut FunctionBuilder, [a0, b0, c0]: [Value; 3]) {
        let rows = self.m.min(TILE_ROWS);
        self.row_blocks(b, rows, &mut |b, i| {
            let ai = offset(b, a0, i, self.a_rs);
            let ci = offset(b, c0, i, self.c_rs);
            self.columns(b, rows, ai, b0, ci);
        });
    }

    /// Calls `body` with the first row of every block of `rows` rows; the
    /// last block starts at `m - rows` (overlapping its predecessor).
    fn row_blocks(
        &self,
        b: &mut FunctionBuilder,
        rows: usize,
        body: &mut dyn FnMut(&mut FunctionBuilder, Value),
    ) {
        let m = self.m as i64;
        let r = rows as i64;
        let zero = b.ins().iconst(types::I64, 0);
        if self.m <= rows {
            body(b, zero);
            return;
        }
        emit_loop(
            b,
            &[zero],
            &mut |b, s| b.ins().icmp_imm_s(IntCC::SignedLessThan, s[0], m),
            &mut |b, s| {
                body(b, s[0]);
                let next = b.ins().iadd_imm_s(s[0], r);
                if self.m.is_multiple_of(rows) {
                    return vec![next];
                }
                // `next` if it is a whole block, else `m - rows` (once).
                let last = b.ins().iconst(types::I64, m - r);
                let clamped = b.ins().smin(next, last);
                let inside = b.ins().icmp_imm_s(IntCC::SignedLessThan, next, m);
                vec![b.ins().select(inside, clamped, next)]
            },
        );
    }

    /// All column tiles of one block of `rows` rows: `ai` and `ci` address
    /// the block's first row of `a` and `c`.
    fn columns(&self, b: &mut FunctionBuilder, rows: usize, ai: Value, b0: Value, ci: Value) {
        let n = self.n;
        let cols = match self.form {
            Form::Dots => {
                // Up to 8 accumulators: 4×2, 3×2, 2×4, 1×8.
                let width = (8 / rows).min(n);
                Columns::cover(n, width, 1)
            }
            Form::Rows if n < 4 => Columns::cover(n, n, 1),
            Form::Rows => {
                // 4×2 vectors, 3×2, 2×4, 1×8.
                let vectors = (8 / rows).max(2).min(n / 4);
                Columns::cover(n, 4 * vectors, 4)
            }
        };
        let tile = |b: &mut FunctionBuilder, j: Value, width: usize| {
            let bj = offset(b, b0, j, self.b_cs);
            let cj = offset(b, ci, j, self.c_cs);
            match self.form {
                Form::Dots => self.dot_tile(b, rows, width, ai, bj, cj),
                Form::Rows if n < 4 => self.scalar_tile(b, rows, width, ai, bj, cj),
                Form::Rows => self.vector_tile(b, rows, width / 4, ai, bj, cj),
            }
        };
        let w = cols.width as i64;
        if cols.main == 1 {
            let zero = b.ins().iconst(types::I64, 0);
            tile(b, zero, cols.width);
        } else if cols.main > 1 {
            let zero = b.ins().iconst(types::I64, 0);
            let end = cols.main as i64 * w;
            emit_loop(
                b,
                &[zero],
                &mut |b, s| b.ins().icmp_imm_s(IntCC::SignedLessThan, s[0], end),
                &mut |b, s| {
                    tile(b, s[0], cols.width);
                    vec![b.ins().iadd_imm_s(s[0], w)]
                },
            );
        }
        if cols.tail_width > 0 {
            let j = b.ins().iconst(types::I64, (n - cols.tail_width) as i64);
            tile(b, j, cols.tail_width);
        }
    }

    /// `rows × 4·vectors` elements of `c` at `cj` from the rows of `a` at
    /// `ai` and the columns of `b` at `bj`.
    fn vector_tile(
        &self,
        b: &mut FunctionBuilder,
        rows: usize,
        vectors: usize,
        ai: Value,
        bj: Value,
        cj: Value,
    ) {
        let zero = b.ins().f32const(0.0);
        let zv = b.ins().splat(types::F32X4, zero);
        let tiles = rows * vectors;
        let mut accs = vec![zv; tiles];
        // The `k` step `u` after `ap`, `bp`.
        let step = |b: &mut FunctionBuilder, ap: Value, bp: Value, u: usize, accs: &mut [Value]| {
            let (ao, bo) = (u as i64 * self.a_cs, u as i64 * self.b_rs);
            let bv: Vec<Value> = (0..vectors).map(|v| self.b_vector(b, bp, bo, v)).collect();
            for r in 0..rows {
                let x = load_ro(b, types::F32, ap, ao + r as i64 * self.a_rs);
                let xs = b.ins().splat(types::F32X4, x);
                for (v, &y) in bv.iter().enumerate() {
                    let t = r * vectors + v;
                    accs[t] = b.ins().fma(xs, y, accs[t]);
                }
            }
        };
        if self.k > 0 {
            // State: the `a` and `b` pointers, the accumulators, and `k`
            // counted down (`a` or `b` may not move along `k`: stride 0).
            let order = carry_order(rows, vectors);
            let mut init = vec![ai, bj];
            init.extend(carried(&accs, &order));
            init.push(b.ins().iconst(types::I64, self.k as i64));
            let count = 2 + tiles;
            let state = emit_loop(
                b,
                &init,
                &mut |b, s| {
                    b.ins()
                        .icmp_imm_s(IntCC::SignedGreaterThanOrEqual, s[count], UNROLL as i64)
                },
                &mut |b, s| {
                    let mut accs = uncarried(&s[2..count], &order);
                    for u in 0..UNROLL {
                        step(b, s[0], s[1], u, &mut accs);
                    }
                    let mut next = vec![
                        b.ins().iadd_imm_s(s[0], UNROLL as i64 * self.a_cs),
                        b.ins().iadd_imm_s(s[1], UNROLL as i64 * self.b_rs),
                    ];
                    next.extend(carried(&accs, &order));
                    next.push(b.ins().iadd_imm_s(s[count], -(UNROLL as i64)));
                    next
                },
            );
            accs = uncarried(&state[2..count], &order);
            for u in 0..self.k % UNROLL {
                step(b, state[0], state[1], u, &mut accs);
            }
        }
        for r in 0..rows {
            for v in 0..vectors {
                let acc = accs[r * vectors + v];
                let off = r as i64 * self.c_rs + 4 * v as i64 * self.c_cs;
                self.store_vector(b, acc, cj, off);
            }
        }
    }

    /// Columns `4v..4v+4` of the row of `b` at `bp + off` (bytes).
    fn b_vector(&self, b: &mut FunctionBuilder, bp: Value, off: i64, v: usize) -> Value {
        let first = off + 4 * v as i64 * self.b_cs;
        if self.b_cs == 4 {
            return load_ro(b, types::F32X4, bp, first);
        }
        let x = load_ro(b, types::F32, bp, first);
        let mut vec = b.ins().scalar_to_vector(types::F32X4, x);
        for lane in 1..4u8 {
            let x = load_ro(b, types::F32, bp, first + i64::from(lane) * self.b_cs);
            vec = b.ins().insertlane(vec, x, lane);
        }
        vec
    }

    fn store_vector(&self, b: &mut FunctionBuilder, v: Value, base: Value, off: i64) {
        if self.c_cs == 4 {
            store_at(b, v, base, off);
            return;
        }
        for lane in 0..4u8 {
            let x = b.ins().extractlane(v, lane);
            store_at(b, x, base, off + i64::from(lane) * self.c_cs);
        }
    }

    /// `rows × cols` elements of `c` (`cols < 4`), one scalar accumulator
    /// each.
    fn scalar_tile(
        &self,
        b: &mut FunctionBuilder,
        rows: usize,
        cols: usize,
        ai: Value,
        bj: Value,
        cj: Value,
    ) {
        let zero = b.ins().f32const(0.0);
        let tiles = rows * cols;
        let accs = if self.k == 0 {
            vec![zero; tiles]
        } else {
            let mut init = vec![ai, bj];
            init.extend(std::iter::repeat_n(zero, tiles));
            init.push(b.ins().iconst(types::I64, self.k as i64));
            let state = emit_loop(
                b,
                &init,
                &mut |b, s| {
                    b.ins()
                        .icmp_imm_s(IntCC::SignedGreaterThan, s[tiles + 2], 0)
                },
                &mut |b, s| {
                    let (ap, bp) = (s[0], s[1]);
                    let bs: Vec<Value> = (0..cols)
                        .map(|j| load_ro(b, types::F32, bp, j as i64 * self.b_cs))
                        .collect();
                    let mut next = vec![
                        b.ins().iadd_imm_s(ap, self.a_cs),
                        b.ins().iadd_imm_s(bp, self.b_rs),
                    ];
                    for r in 0..rows {
                        let x = load_ro(b, types::F32, ap, r as i64 * self.a_rs);
                        for (j, &y) in bs.iter().enumerate() {
                            next.push(b.ins().fma(x, y, s[2 + r * cols + j]));
                        }
                    }
                    next.push(b.ins().iadd_imm_s(s[tiles + 2], -1));
                    next
                },
            );
            state[2..2 + tiles].to_vec()
        };
        for r in 0..rows {
            for j in 0..cols {
                let off = r as i64 * self.c_rs + j as i64 * self.c_cs;
                store_at(b, accs[r * cols + j], cj, off);
            }
        }
    }

    /// `rows × cols` elements of `c` as dot products along `k`, where the
    /// rows of `a` (at `ai`) and the columns of `b` (at `bj`) are
    /// contiguous.
    fn dot_tile(
        &self,
        b: &mut FunctionBuilder,
        rows: usize,
        cols: usize,
        ai: Value,
        bj: Value,
        cj: Value,
    ) {
        let tiles = rows * cols;
        let k4 = self.k / 4 * 4;
        let zero = b.ins().f32const(0.0);
        // One vector step (4 k) at `ai + off + 16u`, `bj + off + 16u`.
        let step = |b: &mut FunctionBuilder, pa: Value, pb: Value, u: usize, accs: &mut [Value]| {
            let o = 16 * u as i64;
            let bv: Vec<Value> = (0..cols)
                .map(|j| load_ro(b, types::F32X4, pb, o + j as i64 * self.b_cs))
                .collect();
            for r in 0..rows {
                let x = load_ro(b, types::F32X4, pa, o + r as i64 * self.a_rs);
                for (j, &y) in bv.iter().enumerate() {
                    let t = r * cols + j;
                    accs[t] = b.ins().fma(x, y, accs[t]);
                }
            }
        };
        let mut sums = if k4 == 0 {
            vec![zero; tiles]
        } else {
            let zv = b.ins().splat(types::F32X4, zero);
            let order = carry_order(rows, cols);
            let mut init = vec![b.ins().iconst(types::I64, 0)];
            init.extend(std::iter::repeat_n(zv, tiles));
            let steps = k4 / 4;
            let end = 16 * (steps / UNROLL * UNROLL) as i64;
            let state = emit_loop(
                b,
                &init,
                &mut |b, s| b.ins().icmp_imm_s(IntCC::SignedLessThan, s[0], end),
                &mut |b, s| {
                    let off = s[0];
                    let pa = b.ins().iadd(ai, off);
                    let pb = b.ins().iadd(bj, off);
                    let mut accs = uncarried(&s[1..], &order);
                    for u in 0..UNROLL {
                        step(b, pa, pb, u, &mut accs);
                    }
                    let mut next = vec![b.ins().iadd_imm_s(off, 16 * UNROLL as i64)];
                    next.extend(carried(&accs, &order));
                    next
                },
            );
            let mut accs = uncarried(&state[1..], &order);
            if !steps.is_multiple_of(UNROLL) {
                let pa = b.ins().iadd(ai, state[0]);
                let pb = b.ins().iadd(bj, state[0]);
                for u in 0..steps % UNROLL {
                    step(b, pa, pb, u, &mut accs);
                }
            }
            accs.iter().map(|&v| hsum(b, v)).collect::<Vec<Value>>()
        };
        for kk in k4..self.k {
            let kb = 4 * kk as i64;
            let bs: Vec<Value> = (0..cols)
                .map(|j| load_ro(b, types::F32, bj, kb + j as i64 * self.b_cs))
                .collect();
            for r in 0..rows {
                let x = load_ro(b, types::F32, ai, kb + r as i64 * self.a_rs);
                for (j, &y) in bs.iter().enumerate() {
                    let t = r * cols + j;
                    sums[t] = b.ins().fma(x, y, sums[t]);
                }
            }
        }
        for r in 0..rows {
            for j in 0..cols {
                let off = r as i64 * self.c_rs + j as i64 * self.c_cs;
                store_at(b, sums[r * cols + j], cj, off);
            }
        }
    }
}

/// A standalone JIT-compiled product `fn()` with its operands' addresses
/// baked in, for tests and benchmarks. Compiled with the flags of the
/// program JIT (`opt_level=speed`, host ISA).
pub struct Kernel {
    module: Option<JITModule>,
    entry: unsafe extern "C" fn(),
    /// Cranelift IR instructions in the function.
    pub ir_insts: usize,
    /// Bytes of machine code.
    pub code_bytes: usize,
    /// Time to build the IR and compile it to machine code (not the JIT
    /// module's setup).
    pub compile_time: Duration,
}

impl Kernel {
    /// Compiles `c = a @ b` over `batch` with [`emit_small_matmul`],
    /// whatever [`product_in_loops`] says.
    ///
    /// # Safety
    ///
    /// [`Kernel::run`] reads and writes the addresses in `c`, `a` and `b`
    /// at the given strides: they must stay valid for as long as it is
    /// called, and `c` must not overlap `a` or `b`.
    #[allow(clippy::too_many_arguments)]
    pub unsafe fn compile(
        m: usize,
        n: usize,
        k: usize,
        c: Mat,
        a: Mat,
        bm: Mat,
        batch: &[BatchDim],
    ) -> Result<Kernel, CodegenError> {
        let err = |e: String| CodegenError::new(format!("cranelift: {e}"));
        let mut flags = settings::builder();
        for (key, v) in [
            ("opt_level", "speed"),
            ("use_colocated_libcalls", "false"),
            ("is_pic", "false"),
        ] {
            flags.set(key, v).map_err(|e| err(e.to_string()))?;
        }
        let isa = cranelift_native::builder()
            .map_err(|e| err(e.to_string()))?
            .finish(settings::Flags::new(flags))
            .map_err(|e| err(e.to_string()))?;
        let mut module = JITModule::new(JITBuilder::with_isa(isa, default_libcall_names()));
        let mut ctx = module.make_context();
        ctx.func.signature = module.make_signature();
        let id = module
            .declare_function("matmul", Linkage::Local, &ctx.func.signature)
            .map_err(|e| err(e.to_string()))?;
        ctx.func.name = UserFuncName::user(0, id.as_u32());
        let t0 = Instant::now();
        let mut fctx = FunctionBuilderContext::new();
        {
            let mut b = FunctionBuilder::new(&mut ctx.func, &mut fctx);
            let entry = b.create_block();
            b.switch_to_block(entry);
            emit_small_matmul(&mut b, m, n, k, c, a, bm, batch);
            b.ins().return_(&[]);
            b.seal_all_blocks();
            b.finalize(module.target_config());
        }
        let ir_insts = ctx
            .func
            .layout
            .blocks()
            .map(|bl| ctx.func.layout.block_insts(bl).count())
            .sum();
        module
            .define_function(id, &mut ctx)
            .map_err(|e| err(format!("{e:?}")))?;
        let compile_time = t0.elapsed();
        let code_bytes = ctx
            .compiled_code()
            .map_or(0, |cc| cc.code_info().total_size as usize);
        module.clear_context(&mut ctx);
        module
            .finalize_definitions()
            .map_err(|e| err(e.to_string()))?;
        let code = module.get_finalized_function(id);
        // SAFETY: declared as `fn()`; the module is owned by the kernel.
        let entry = unsafe { std::mem::transmute::<*const u8, unsafe extern "C" fn()>(code) };
        Ok(Kernel {
            module: Some(module),
            entry,
            ir_insts,
            code_bytes,
            compile_time,
        })
    }

    /// Runs the product once.
    ///
    /// # Safety
    ///
    /// The operands given to [`Kernel::compile`] must still be valid.
    pub unsafe fn run(&self) {
        // SAFETY: the caller keeps the operands alive; the code is alive
        // while `self` is.
        unsafe { (self.entry)() }
    }
}

impl Drop for Kernel {
    fn drop(&mut self) {
        if let Some(m) = self.module.take() {
            // SAFETY: the kernel is the only owner of its code.
            unsafe { m.free_memory() };
        }
    }
}
