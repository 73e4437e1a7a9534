//! Kernels of the sliding-window ops: `unfold` (im2col, the first half of
//! every convolution and pooling) and `fold` (col2im, its adjoint).
//!
//! Both walk the unfolded tensor `[N, C, *kernel, *out]` in row-major
//! order, pairing element `[n, c, *k, *o]` with element
//! `[n, c, *(o·stride + k·dilation − padding)]` of the image `[N, C, *in]`.
//! For each kernel offset `k` the positions `o` that land inside the image
//! form one range `lo..hi` per spatial dim, computed once per offset rather
//! than tested per element: `unfold` writes `fill` before and after the
//! range and copies the range; `fold` adds the range into its zeroed result
//! and drops the rest (the padding). With stride 1 and rows contiguous on
//! both sides a range is one contiguous run, moved as `f32x4`/`i32x4`.
//!
//! The last kernel dim is unrolled at compile time (up to
//! [`UNROLL_KERNEL`] offsets), so the ranges along the last spatial dim are
//! constants: rows become straight-line vector code, and `unfold` ends a
//! run with one overlapping vector (rewriting up to three elements with the
//! same values) instead of a scalar tail. The other kernel dims are loops,
//! keeping code size proportional to the kernel's last dim only.
//!
//! Loop order follows the unfolded tensor, so each `(n, c)` plane of the
//! image stays in L1 while all its kernel offsets read (or, for `fold`,
//! accumulate into) it, and the unfolded side streams through memory once.
//! The same walk over a few planes of one sample runs inside a matmul's
//! kernel for staged convolutions (`plan::Staged`), into or out of scratch.
//!
//! The side a walk reads may be an elementwise expression (`expr`) rather
//! than a buffer: `fold` then computes its columns per element (max-pool's
//! gradient `mask * share` is never stored), `unfold` its image per
//! element read (`relu(conv + bias)` before pooling). With an expression a
//! row moves four elements at a time even when one side is strided (a
//! pooling stride of 2): the strided operands are gathered or scattered
//! lane by lane and the arithmetic runs on vectors. A `fold` whose windows
//! tile the image (pooling's gradient) stores each element once instead of
//! zeroing the image and adding into it.

use super::builder::{emit_fill, emit_fill_range, emit_for, range_loop};
use super::expr::Code;
use super::host::Calls;
use crate::plan::window::{check_shapes, tiles};
use crate::plan::{Kind, View};
use crate::CodegenError;
use cranelift_codegen::ir::{types, InstBuilder, MemFlagsData, Value};
use cranelift_frontend::FunctionBuilder;
use nnc_ir::{DType, Window};

/// Last-dim kernels up to this size are unrolled (a few dozen instructions
/// per offset); larger ones (long 1-d kernels) loop with run-time ranges.
pub const UNROLL_KERNEL: usize = 16;

/// Constant runs up to this many vectors are straight-line code; longer
/// ones loop.
const UNROLL_VECTORS: usize = 8;

/// A loop bound: known when the kernel is built, or computed at run time
/// (a range that depends on a kernel offset held in a loop variable).
#[derive(Debug, Clone, Copy)]
enum Bound {
    Const(i64),
    Dyn(Value),
}

impl Bound {
    fn value(self, b: &mut FunctionBuilder) -> Value {
        match self {
            Bound::Const(c) => b.ins().iconst(types::I64, c),
            Bound::Dyn(v) => v,
        }
    }
}

/// An element position along a row: a constant (addressed by an immediate
/// offset) or a loop variable.
#[derive(Debug, Clone, Copy)]
enum At {
    Const(i64),
    Dyn(Value),
}

fn flags() -> MemFlagsData {
    MemFlagsData::new().with_notrap()
}

/// `base + at·stride` (bytes) as an address and an immediate offset.
fn address(b: &mut FunctionBuilder, base: Value, at: At, stride: isize) -> (Value, i32) {
    match at {
        At::Const(e) => {
            let off = e * stride as i64;
            match i32::try_from(off) {
                Ok(o) => (base, o),
                Err(_) => (b.ins().iadd_imm_s(base, off), 0),
            }
        }
        At::Dyn(i) => {
            let off = b.ins().imul_imm_s(i, stride as i64);
            (b.ins().iadd(base, off), 0)
        }
    }
}

/// The address of lane `lane` of a vector starting at `at`, along a row
/// whose elements are `stride` bytes apart.
fn lane_address(
    b: &mut FunctionBuilder,
    base: Value,
    at: At,
    stride: isize,
    lane: i64,
) -> (Value, i32) {
    let (p, o) = address(b, base, at, stride);
    match i32::try_from(i64::from(o) + lane * stride as i64) {
        Ok(o) => (p, o),
        Err(_) => (b.ins().iadd_imm_s(p, lane * stride as i64), o),
    }
}

/// `for i in from..to`, constant bounds when both are known.
fn bound_loop(
    b: &mut FunctionBuilder,
    from: Bound,
    to: Bound,
    body: &mut dyn FnMut(&mut FunctionBuilder, Value),
) {
    match (from, to) {
        (Bound::Const(f), Bound::Const(t)) => emit_for(b, f, t, 1, body),
        _ => {
            let (f, t) = (from.value(b), to.value(b));
            range_loop(b, f, t, 1, body);
        }
    }
}

/// Calls `body` on every element of the constant run `start..end` of a
/// row: `f32x4`-wide steps when `vector` (the last one overlapping its
/// predecessor when `overlap` allows rewriting elements, else a scalar
/// tail), scalar steps otherwise. Short runs are straight-line code.
fn const_run(
    b: &mut FunctionBuilder,
    start: i64,
    end: i64,
    vector: bool,
    overlap: bool,
    body: &mut dyn FnMut(&mut FunctionBuilder, At, bool),
) {
    let n = end - start;
    if n <= 0 {
        return;
    }
    if vector && n >= 4 {
        let full = n / 4;
        if full as usize <= UNROLL_VECTORS {
            for j in 0..full {
                body(b, At::Const(start + 4 * j), true);
            }
        } else {
            emit_for(b, start, start + 4 * full, 4, &mut |b, i| {
                body(b, At::Dyn(i), true)
            });
        }
        let rem = n % 4;
        if rem > 0 && overlap {
            body(b, At::Const(end - 4), true);
        } else {
            for e in end - rem..end {
                body(b, At::Const(e), false);
            }
        }
    } else if n as usize <= 4 * UNROLL_VECTORS {
        for e in start..end {
            body(b, At::Const(e), false);
        }
    } else {
        emit_for(b, start, end, 1, &mut |b, i| body(b, At::Dyn(i), false));
    }
}

/// [`const_run`] with bounds known only at run time: a vector loop while
/// four elements remain, then a scalar loop.
fn dyn_run(
    b: &mut FunctionBuilder,
    start: Value,
    end: Value,
    vector: bool,
    body: &mut dyn FnMut(&mut FunctionBuilder, At, bool),
) {
    let start = if vector {
        let end4 = b.ins().iadd_imm_s(end, -3);
        range_loop(b, start, end4, 4, &mut |b, i| body(b, At::Dyn(i), true))
    } else {
        start
    };
    range_loop(b, start, end, 1, &mut |b, i| body(b, At::Dyn(i), false));
}

/// A run with bounds of either kind.
fn run(
    b: &mut FunctionBuilder,
    start: Bound,
    end: Bound,
    vector: bool,
    overlap: bool,
    body: &mut dyn FnMut(&mut FunctionBuilder, At, bool),
) {
    match (start, end) {
        (Bound::Const(s), Bound::Const(e)) => const_run(b, s, e, vector, overlap, body),
        _ => {
            let (s, e) = (start.value(b), end.value(b));
            dyn_run(b, s, e, vector, body);
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq)]
enum Mode {
    /// Read the image, write the columns (`fill` outside the image).
    Unfold { fill: u32 },
    /// Read the columns, add into the image.
    Fold,
    /// `fold` of windows that tile the image (kernel = stride, no padding
    /// or dilation, sizes divisible: max or average pooling's gradient):
    /// every image element receives exactly one column element, so it is
    /// stored (as `0 + x`, which turns `-0` into `+0` like the sum does)
    /// without zeroing the image first or reading it back.
    Tile,
}

/// One `unfold` or `fold`: sizes, and the operands on both sides. The side
/// the walk reads may hold several operands, the leaves of an expression
/// evaluated at each element read (an elementwise prologue: the operand
/// of the window op is never stored); the side it writes holds one.
struct Walk<'a> {
    mode: Mode,
    kind: Kind,
    dtype: DType,
    w: &'a Window,
    /// `N`, `C`.
    planes: [usize; 2],
    input: Vec<usize>,
    out: Vec<usize>,
    /// Image-side operands `[N, C, *in]`: addresses of element 0 and byte
    /// strides.
    x_addrs: Vec<usize>,
    xs: Vec<Vec<isize>>,
    /// Column-side operands `[N, C, *kernel, *out]`.
    c_addrs: Vec<usize>,
    cs: Vec<Vec<isize>>,
    /// The read side's expression; `None`: its one operand as it is.
    code: Option<&'a Code<'a>>,
}

/// Values created once at the top of the kernel.
struct Consts {
    fill: Option<(Value, Value)>,
}

/// Host calls for expressions, and the first error met inside loops.
struct Env<'c> {
    calls: &'c mut dyn Calls,
    error: Option<CodegenError>,
}

/// A dim walked by every operand of both sides, with their byte strides.
type Level = (usize, Vec<isize>, Vec<isize>);

fn offsets(b: &mut FunctionBuilder, bases: &[Value], i: Value, strides: &[isize]) -> Vec<Value> {
    bases
        .iter()
        .zip(strides)
        .map(|(&a, &s)| offset(b, a, i, s))
        .collect()
}

fn shifted(b: &mut FunctionBuilder, bases: &[Value], by: &[i64]) -> Vec<Value> {
    bases
        .iter()
        .zip(by)
        .map(|(&a, &d)| if d == 0 { a } else { b.ins().iadd_imm_s(a, d) })
        .collect()
}

impl Walk<'_> {
    fn d(&self) -> usize {
        self.w.rank()
    }

    /// The byte stride of the written columns along output dim `i`.
    fn co(&self, i: usize) -> isize {
        self.cs[0][2 + self.d() + i]
    }

    /// Byte strides of the image-side operands along spatial dim `i`.
    fn xsp(&self, i: usize) -> Vec<isize> {
        self.xs.iter().map(|x| x[2 + i]).collect()
    }

    fn emit(&self, b: &mut FunctionBuilder, env: &mut Env, range: Option<(Value, Value)>) {
        let x: Vec<Value> = self
            .x_addrs
            .iter()
            .map(|&a| super::base::emit_addr(b, a))
            .collect();
        let c: Vec<Value> = self
            .c_addrs
            .iter()
            .map(|&a| super::base::emit_addr(b, a))
            .collect();
        self.emit_in(b, env, &x, &c, range);
    }

    /// The loops over planes: `(n, c)` as one loop when every operand walks
    /// the planes uniformly, else `n` then `c`; dims of one dropped.
    fn plane_levels(&self) -> Vec<Level> {
        let [n, ch] = self.planes;
        let along = |d: usize| -> (Vec<isize>, Vec<isize>) {
            (
                self.xs.iter().map(|s| s[d]).collect(),
                self.cs.iter().map(|s| s[d]).collect(),
            )
        };
        let (xn, cn) = along(0);
        let (xc, cc) = along(1);
        let uniform = |outer: &[isize], inner: &[isize]| {
            outer.iter().zip(inner).all(|(&o, &i)| o == ch as isize * i)
        };
        let mut outer: Vec<Level> = if uniform(&xn, &xc) && uniform(&cn, &cc) {
            vec![(n * ch, xc, cc)]
        } else {
            vec![(n, xn, cn), (ch, xc, cc)]
        };
        outer.retain(|(len, _, _)| *len != 1);
        outer
    }

    /// Work units of a split walk: the indices of its outermost plane loop,
    /// and the image-side byte stride of one (`None`: nothing to split).
    fn units(&self) -> Option<(usize, isize)> {
        let levels = self.plane_levels();
        let (len, sx, _) = levels.first()?;
        (*len >= 2).then(|| (*len, sx.first().copied().unwrap_or(0)))
    }

    /// The walk with the image operands' element 0 at `x` and the
    /// columns' at `c`.
    fn emit_at(&self, b: &mut FunctionBuilder, env: &mut Env, x: &[Value], c: &[Value]) {
        self.emit_in(b, env, x, c, None);
    }

    /// [`Walk::emit_at`] over the plane indices `range` of the outermost
    /// plane loop only (see [`Walk::units`]).
    fn emit_in(
        &self,
        b: &mut FunctionBuilder,
        env: &mut Env,
        x: &[Value],
        c: &[Value],
        range: Option<(Value, Value)>,
    ) {
        let consts = Consts {
            fill: match self.mode {
                Mode::Unfold { fill } => {
                    let s = match self.kind {
                        Kind::F32 => b.ins().f32const(f32::from_bits(fill)),
                        Kind::I32 => b.ins().iconst(types::I32, i64::from(fill as i32)),
                    };
                    let v = b.ins().splat(self.kind.vector(), s);
                    Some((s, v))
                }
                Mode::Fold | Mode::Tile => None,
            },
        };
        let outer = self.plane_levels();
        // Element 0 of the padded image: addresses below the buffer are
        // formed but never dereferenced (only in-range positions are read).
        let padding: Vec<i64> = (0..self.xs.len())
            .map(|j| {
                -(0..self.d())
                    .map(|i| self.w.padding[i] as i64 * self.xs[j][2 + i] as i64)
                    .sum::<i64>()
            })
            .collect();
        let xa = shifted(b, x, &padding);
        let range = range.filter(|_| !outer.is_empty());
        self.planes_level(b, env, &consts, &outer, &xa, c, range);
    }

    #[allow(clippy::too_many_arguments)]
    fn planes_level(
        &self,
        b: &mut FunctionBuilder,
        env: &mut Env,
        consts: &Consts,
        outer: &[Level],
        xa: &[Value],
        ca: &[Value],
        range: Option<(Value, Value)>,
    ) {
        let Some(((len, sx, sc), rest)) = outer.split_first() else {
            self.kernel_level(b, env, consts, 0, xa, ca, &[]);
            return;
        };
        let mut level = |b: &mut FunctionBuilder, i: Value| {
            let x = offsets(b, xa, i, sx);
            let c = offsets(b, ca, i, sc);
            self.planes_level(b, env, consts, rest, &x, &c, None);
        };
        match range {
            Some((start, end)) => {
                range_loop(b, start, end, 1, &mut level);
            }
            None => emit_for(b, 0, *len as i64, 1, &mut level),
        }
    }

    /// Loops (or, for the last dim, unrolls) kernel dim `i`; `ranges`
    /// holds the in-image output range of each dim before it.
    #[allow(clippy::too_many_arguments)]
    fn kernel_level(
        &self,
        b: &mut FunctionBuilder,
        env: &mut Env,
        consts: &Consts,
        i: usize,
        xa: &[Value],
        ca: &[Value],
        ranges: &[(Bound, Bound)],
    ) {
        let d = self.d();
        if i == d {
            self.out_level(b, env, consts, 0, xa, ca, ranges);
            return;
        }
        let dil = self.w.dilation[i] as isize;
        let kx: Vec<isize> = self.xsp(i).iter().map(|s| dil * s).collect();
        let kc: Vec<isize> = self.cs.iter().map(|s| s[2 + i]).collect();
        if i == d - 1 && self.w.kernel[i] <= UNROLL_KERNEL {
            for k in 0..self.w.kernel[i] {
                let by = |s: &[isize]| -> Vec<i64> {
                    s.iter().map(|&s| (k as isize * s) as i64).collect()
                };
                let x = shifted(b, xa, &by(&kx));
                let c = shifted(b, ca, &by(&kc));
                let (lo, hi) = self.const_range(i, k);
                let mut r = ranges.to_vec();
                r.push((Bound::Const(lo), Bound::Const(hi)));
                self.kernel_level(b, env, consts, i + 1, &x, &c, &r);
            }
            return;
        }
        emit_for(b, 0, self.w.kernel[i] as i64, 1, &mut |b, k| {
            let x = offsets(b, xa, k, &kx);
            let c = offsets(b, ca, k, &kc);
            let mut r = ranges.to_vec();
            r.push(self.dyn_range(b, i, k));
            self.kernel_level(b, env, consts, i + 1, &x, &c, &r);
        });
    }

    /// The output positions `lo..hi` along dim `i` that kernel offset `k`
    /// maps inside the image: `0 ≤ o·s + k·dil − pad < in`.
    fn const_range(&self, i: usize, k: usize) -> (i64, i64) {
        let (s, o) = (self.w.stride[i] as i64, self.out[i] as i64);
        let shift = self.w.padding[i] as i64 - (k * self.w.dilation[i]) as i64;
        let ceil = |v: i64| (v.max(0) + s - 1) / s;
        let lo = ceil(shift).min(o);
        let hi = ceil(self.input[i] as i64 + shift).clamp(lo, o);
        (lo, hi)
    }

    /// [`Walk::const_range`] for an offset held in a loop variable.
    fn dyn_range(&self, b: &mut FunctionBuilder, i: usize, k: Value) -> (Bound, Bound) {
        let o = self.out[i] as i64;
        if self.w.padding[i] == 0 {
            // Without padding every position the output size admits is inside.
            return (Bound::Const(0), Bound::Const(o));
        }
        let s = self.w.stride[i] as i64;
        let kd = b.ins().imul_imm_s(k, self.w.dilation[i] as i64);
        let ceil = |b: &mut FunctionBuilder, base: i64| {
            let c = b.ins().iconst(types::I64, base);
            let v = b.ins().isub(c, kd);
            let zero = b.ins().iconst(types::I64, 0);
            let v = b.ins().smax(v, zero);
            let v = if s == 1 {
                v
            } else {
                let v = b.ins().iadd_imm_s(v, s - 1);
                let sv = b.ins().iconst(types::I64, s);
                b.ins().udiv(v, sv)
            };
            let ov = b.ins().iconst(types::I64, o);
            b.ins().smin(v, ov)
        };
        let pad = self.w.padding[i] as i64;
        let lo = ceil(b, pad);
        let hi = ceil(b, self.input[i] as i64 + pad);
        let hi = b.ins().smax(hi, lo);
        (Bound::Dyn(lo), Bound::Dyn(hi))
    }

    /// Output dim `i` and those after it.
    #[allow(clippy::too_many_arguments)]
    fn out_level(
        &self,
        b: &mut FunctionBuilder,
        env: &mut Env,
        consts: &Consts,
        i: usize,
        xa: &[Value],
        ca: &[Value],
        ranges: &[(Bound, Bound)],
    ) {
        let d = self.d();
        let (lo, hi) = ranges[i];
        if i == d - 1 {
            self.row(b, env, consts, xa, ca, lo, hi);
            return;
        }
        let st = self.w.stride[i] as isize;
        let sx: Vec<isize> = self.xsp(i).iter().map(|s| st * s).collect();
        let sc: Vec<isize> = self.cs.iter().map(|s| s[2 + d + i]).collect();
        let o = Bound::Const(self.out[i] as i64);
        if let Mode::Unfold { .. } = self.mode {
            self.fill_rows(b, consts, i, ca[0], Bound::Const(0), lo);
        }
        bound_loop(b, lo, hi, &mut |b, j| {
            let x = offsets(b, xa, j, &sx);
            let c = offsets(b, ca, j, &sc);
            self.out_level(b, env, consts, i + 1, &x, &c, ranges);
        });
        if let Mode::Unfold { .. } = self.mode {
            self.fill_rows(b, consts, i, ca[0], hi, o);
        }
    }

    /// `unfold`: fills the columns of positions `from..to` of output dim
    /// `i` (and all positions of the dims after it), which fall in the
    /// padding.
    fn fill_rows(
        &self,
        b: &mut FunctionBuilder,
        consts: &Consts,
        i: usize,
        ca: Value,
        from: Bound,
        to: Bound,
    ) {
        if let (Bound::Const(f), Bound::Const(t)) = (from, to) {
            if f >= t {
                return;
            }
        }
        let sc = self.co(i);
        bound_loop(b, from, to, &mut |b, j| {
            let c = offset(b, ca, j, sc);
            self.fill_all(b, consts, i + 1, c);
        });
    }

    fn fill_all(&self, b: &mut FunctionBuilder, consts: &Consts, i: usize, ca: Value) {
        let d = self.d();
        if i == d - 1 {
            let o = self.out[i] as i64;
            self.fill(b, consts, ca, Bound::Const(0), Bound::Const(o));
            return;
        }
        let sc = self.co(i);
        emit_for(b, 0, self.out[i] as i64, 1, &mut |b, j| {
            let c = offset(b, ca, j, sc);
            self.fill_all(b, consts, i + 1, c);
        });
    }

    /// Positions `from..to` of one row of columns at `ca` get `fill`.
    fn fill(&self, b: &mut FunctionBuilder, consts: &Consts, ca: Value, from: Bound, to: Bound) {
        let Some((s, v)) = consts.fill else { return };
        let sc = self.co(self.d() - 1);
        run(b, from, to, sc == 4, true, &mut |b, at, vector| {
            let (p, o) = address(b, ca, at, sc);
            b.ins().store(flags(), if vector { v } else { s }, p, o);
        });
    }

    /// Whether a row moves four elements at a time. A plain copy does
    /// when both sides are contiguous; an expression whenever it has an
    /// `f32x4` form: operands that are not contiguous (a pooling window's
    /// stride of 2 along the image) are gathered or scattered lane by lane,
    /// and the arithmetic runs on vectors.
    fn vectors(&self, read: &[isize], written: isize) -> bool {
        match self.code {
            None => written == 4 && read.iter().all(|&s| s == 4),
            Some(code) => code.vectorizes(),
        }
    }

    /// The value read at position `at` of a row whose read-side operands
    /// start at `addrs` and move `strides` bytes per position (four lanes
    /// when `vector`).
    fn read(
        &self,
        b: &mut FunctionBuilder,
        env: &mut Env,
        addrs: &[Value],
        strides: &[isize],
        at: At,
        vector: bool,
    ) -> Value {
        let ty = if vector {
            self.kind.vector()
        } else {
            self.kind.scalar()
        };
        let Some(code) = self.code else {
            let (p, o) = address(b, addrs[0], at, strides[0]);
            return b.ins().load(ty, flags(), p, o);
        };
        let vals: Vec<Value> = addrs
            .iter()
            .zip(strides)
            .enumerate()
            .map(|(j, (&base, &s))| {
                if !vector || s == 0 || s == 4 {
                    let (p, o) = address(b, base, at, s);
                    return code.load(b, j, p, o, vector, s);
                }
                // Gather: four scalars into the lanes of a vector.
                let mut v = None;
                for lane in 0..4 {
                    let (p, o) = lane_address(b, base, at, s, lane);
                    let x = code.load(b, j, p, o, false, 0);
                    v = Some(match v {
                        None => {
                            let ty = b.func.dfg.value_type(x);
                            b.ins().scalar_to_vector(ty.by(4).unwrap_or(ty), x)
                        }
                        Some(v) => b.ins().insertlane(v, x, lane as u8),
                    });
                }
                v.unwrap_or(base)
            })
            .collect();
        match code.evaluate(b, env.calls, vector, &vals) {
            Ok(v) => v[0],
            Err(e) => {
                env.error = Some(e);
                b.ins().iconst(types::I32, 0)
            }
        }
    }

    /// One row along the last output dim: image rows at `xa` (element 0 of
    /// the padded row for this kernel offset), columns at `ca`; positions
    /// `lo..hi` are inside the image.
    #[allow(clippy::too_many_arguments)]
    fn row(
        &self,
        b: &mut FunctionBuilder,
        env: &mut Env,
        consts: &Consts,
        xa: &[Value],
        ca: &[Value],
        lo: Bound,
        hi: Bound,
    ) {
        let last = self.d() - 1;
        let st = self.w.stride[last] as isize;
        let sx: Vec<isize> = self.xsp(last).iter().map(|s| st * s).collect();
        let sc: Vec<isize> = self.cs.iter().map(|s| s[2 + self.d() + last]).collect();
        let (scalar_ty, vector_ty) = (self.kind.scalar(), self.kind.vector());
        let ty = |v: bool| if v { vector_ty } else { scalar_ty };
        match self.mode {
            Mode::Unfold { .. } => {
                let vector = sc[0] == 4 && self.vectors(&sx, sc[0]);
                self.fill(b, consts, ca[0], Bound::Const(0), lo);
                run(b, lo, hi, vector, true, &mut |b, at, v| {
                    let x = self.read(b, env, xa, &sx, at, v);
                    let (pc, oc) = address(b, ca[0], at, sc[0]);
                    b.ins().store(flags(), x, pc, oc);
                });
                let o = Bound::Const(self.out[last] as i64);
                self.fill(b, consts, ca[0], hi, o);
            }
            Mode::Fold | Mode::Tile => {
                let tile = self.mode == Mode::Tile;
                let vector = self.vectors(&sc, sx[0]);
                let add = |b: &mut FunctionBuilder, acc: Value, x: Value| match self.dtype {
                    DType::F32 | DType::F64 => b.ins().fadd(acc, x),
                    // Byte operands are refused by type inference.
                    DType::I32 | DType::I8 | DType::U8 => b.ins().iadd(acc, x),
                    // The sum of bools is true when any is: bool is 0/1.
                    DType::Bool => b.ins().bor(acc, x),
                };
                // No overlap: a rewritten element would be added twice.
                let zero = |b: &mut FunctionBuilder, v: bool| {
                    let z = match self.kind {
                        Kind::F32 => b.ins().f32const(0.0),
                        Kind::I32 => b.ins().iconst(types::I32, 0),
                    };
                    if v {
                        b.ins().splat(vector_ty, z)
                    } else {
                        z
                    }
                };
                run(b, lo, hi, vector, false, &mut |b, at, v| {
                    let x = self.read(b, env, ca, &sc, at, v);
                    if !v || sx[0] == 4 {
                        let (px, ox) = address(b, xa[0], at, sx[0]);
                        let acc = if tile {
                            zero(b, v)
                        } else {
                            b.ins().load(ty(v), flags(), px, ox)
                        };
                        let sum = add(b, acc, x);
                        b.ins().store(flags(), sum, px, ox);
                        return;
                    }
                    // Scatter: add each lane at its image position.
                    for lane in 0..4 {
                        let (px, ox) = lane_address(b, xa[0], at, sx[0], lane);
                        let acc = if tile {
                            zero(b, false)
                        } else {
                            b.ins().load(scalar_ty, flags(), px, ox)
                        };
                        let l = b.ins().extractlane(x, lane as u8);
                        let sum = add(b, acc, l);
                        b.ins().store(flags(), sum, px, ox);
                    }
                });
            }
        }
    }
}

fn offset(b: &mut FunctionBuilder, base: Value, i: Value, stride: isize) -> Value {
    if stride == 0 {
        return base;
    }
    let off = b.ins().imul_imm_s(i, stride as i64);
    b.ins().iadd(base, off)
}

fn byte_strides(v: &View) -> Vec<isize> {
    v.strides.iter().map(|s| s * 4).collect()
}

/// `out = unfold(x)`, `fill` in the padding (any dtype; `fill` as the
/// 4-byte word the JIT stores for it), `x` computed per element read by
/// `source` (the expression over the image's space and its shape).
///
/// With `range`, only the planes `[start, end)` of the outermost plane
/// loop; returns how many there are (`None`: the walk does not split).
#[allow(clippy::too_many_arguments)]
pub(crate) fn emit_unfold(
    b: &mut FunctionBuilder,
    calls: &mut dyn Calls,
    w: &Window,
    fill: u32,
    dtype: DType,
    source: (&Code, &[usize]),
    out: (usize, &View),
    range: Option<(Value, Value)>,
) -> Result<Option<usize>, CodegenError> {
    let (code, image) = source;
    let o = check_shapes(w, image, &out.1.shape)?;
    let mut env = Env { calls, error: None };
    let walk = Walk {
        mode: Mode::Unfold { fill },
        kind: Kind::of(dtype),
        dtype,
        w,
        planes: [image[0], image[1]],
        input: image[2..].to_vec(),
        out: o,
        x_addrs: code.addrs.clone(),
        xs: code.strides.clone(),
        c_addrs: vec![out.0],
        cs: vec![byte_strides(out.1)],
        code: Some(code),
    };
    let units = range.and(walk.units()).map(|(n, _)| n);
    walk.emit(b, &mut env, range.filter(|_| units.is_some()));
    env.error.map_or(Ok(units), Err)
}

/// `out = fold(cols)`: zero, then every column element added at the image
/// position it was read from, in the interpreter's order; `cols` computed
/// per element by `source` (the expression over the columns' space and
/// its shape).
///
/// With `range`, only the planes `[start, end)` of the outermost plane
/// loop (zeroing just those planes); returns how many there are.
pub(crate) fn emit_fold(
    b: &mut FunctionBuilder,
    calls: &mut dyn Calls,
    w: &Window,
    dtype: DType,
    source: (&Code, &[usize]),
    out: (usize, &View),
    range: Option<(Value, Value)>,
) -> Result<Option<usize>, CodegenError> {
    let (code, cols) = source;
    let o = check_shapes(w, &out.1.shape, cols)?;
    if !out.1.is_contiguous() {
        return Err(CodegenError::new(
            "internal error: a fold result must be a contiguous buffer",
        ));
    }
    let tiles = tiles(w, &o, &out.1.shape[2..]);
    let mut env = Env { calls, error: None };
    let walk = Walk {
        mode: if tiles { Mode::Tile } else { Mode::Fold },
        kind: Kind::of(dtype),
        dtype,
        w,
        planes: [out.1.shape[0], out.1.shape[1]],
        input: out.1.shape[2..].to_vec(),
        out: o,
        x_addrs: vec![out.0],
        xs: vec![byte_strides(out.1)],
        c_addrs: code.addrs.clone(),
        cs: code.strides.clone(),
        code: Some(code),
    };
    let split = range.and_then(|r| Some((r, walk.units()?)));
    if !tiles {
        match split {
            // The planes of this range: contiguous in the result.
            Some(((start, end), (_, plane_bytes))) => {
                let elems = plane_bytes as i64 / 4;
                let lo = b.ins().imul_imm_s(start, elems);
                let hi = b.ins().imul_imm_s(end, elems);
                emit_fill_range(b, out.0, lo, hi, elems % 4 == 0, 0.0);
            }
            None => emit_fill(b, out.0, out.1.numel(), 0.0),
        }
    }
    walk.emit(b, &mut env, split.map(|(r, _)| r));
    env.error.map_or(Ok(split.map(|(_, (n, _))| n)), Err)
}

/// The `[1, planes, *kernel, *out]` slice of a staged unfold or fold (see
/// `plan::Staged`): `planes` consecutive channels of one sample of
/// `image` (whose shape and strides give the geometry), the first at the
/// run-time address `image_at`, against contiguous columns at `cols_at`.
fn staged_walk<'a>(
    mode: Mode,
    w: &'a Window,
    dtype: DType,
    image: &View,
    planes: usize,
) -> Result<Walk<'a>, CodegenError> {
    let mut cols = vec![image.shape[0], image.shape[1]];
    cols.extend(&w.kernel);
    let d = w.rank();
    if image.shape.len() != d + 2 {
        return Err(CodegenError::new("internal error: a staged window's image"));
    }
    for i in 0..d {
        cols.push(w.out_size(i, image.shape[2 + i]).unwrap_or(0));
    }
    let out = check_shapes(w, &image.shape, &cols)?;
    cols[0] = 1;
    cols[1] = planes;
    Ok(Walk {
        mode,
        kind: Kind::of(dtype),
        dtype,
        w,
        planes: [1, planes],
        input: image.shape[2..].to_vec(),
        out,
        x_addrs: vec![0],
        xs: vec![byte_strides(image)],
        c_addrs: vec![0],
        cs: vec![crate::plan::row_major(&cols)
            .iter()
            .map(|s| s * 4)
            .collect()],
        code: None,
    })
}

/// Unfolds `planes` channels of one sample, the first at `image_at`, into
/// contiguous columns at `cols_at` (a staged matmul operand).
#[allow(clippy::too_many_arguments)]
pub(crate) fn emit_unfold_planes(
    b: &mut FunctionBuilder,
    calls: &mut dyn Calls,
    w: &Window,
    fill: u32,
    dtype: DType,
    image: &View,
    planes: usize,
    image_at: Value,
    cols_at: Value,
) -> Result<(), CodegenError> {
    let mut env = Env { calls, error: None };
    staged_walk(Mode::Unfold { fill }, w, dtype, image, planes)?.emit_at(
        b,
        &mut env,
        &[image_at],
        &[cols_at],
    );
    env.error.map_or(Ok(()), Err)
}

/// Adds contiguous columns at `cols_at` into `planes` channels of one
/// sample of the (zeroed) image, the first at `image_at` (a staged matmul
/// result).
#[allow(clippy::too_many_arguments)]
pub(crate) fn emit_fold_planes(
    b: &mut FunctionBuilder,
    calls: &mut dyn Calls,
    w: &Window,
    dtype: DType,
    image: &View,
    planes: usize,
    image_at: Value,
    cols_at: Value,
) -> Result<(), CodegenError> {
    let mut env = Env { calls, error: None };
    staged_walk(Mode::Fold, w, dtype, image, planes)?.emit_at(b, &mut env, &[image_at], &[cols_at]);
    env.error.map_or(Ok(()), Err)
}
