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

use crate::emit::{emit_fill, emit_for, range_loop, Kind};
use crate::plan::View;
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
}

/// One `unfold` or `fold`: sizes, and the byte strides of both sides.
struct Walk<'a> {
    mode: Mode,
    kind: Kind,
    dtype: DType,
    w: &'a Window,
    /// `N`, `C`.
    planes: [usize; 2],
    input: Vec<usize>,
    out: Vec<usize>,
    /// The image `[N, C, *in]`: address of element 0 and byte strides.
    x_addr: usize,
    xs: Vec<isize>,
    /// The columns `[N, C, *kernel, *out]`.
    c_addr: usize,
    cs: Vec<isize>,
}

/// Values created once at the top of the kernel.
struct Consts {
    fill: Option<(Value, Value)>,
}

impl Walk<'_> {
    fn d(&self) -> usize {
        self.w.rank()
    }

    /// The byte stride of the columns along output dim `i`.
    fn co(&self, i: usize) -> isize {
        self.cs[2 + self.d() + i]
    }

    /// The byte stride of the image along spatial dim `i`.
    fn xsp(&self, i: usize) -> isize {
        self.xs[2 + i]
    }

    fn emit(&self, b: &mut FunctionBuilder) {
        let x = b.ins().iconst(types::I64, self.x_addr as i64);
        let c = b.ins().iconst(types::I64, self.c_addr as i64);
        self.emit_at(b, x, c);
    }

    /// The walk with the image's element 0 at `x` and the columns' at `c`.
    fn emit_at(&self, b: &mut FunctionBuilder, x: Value, c: Value) {
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
                Mode::Fold => None,
            },
        };
        let [n, ch] = self.planes;
        // (n, c) as one loop when both sides walk the planes uniformly.
        let mut outer: Vec<(usize, isize, isize)> =
            vec![(n, self.xs[0], self.cs[0]), (ch, self.xs[1], self.cs[1])];
        if self.xs[0] == ch as isize * self.xs[1] && self.cs[0] == ch as isize * self.cs[1] {
            outer = vec![(n * ch, self.xs[1], self.cs[1])];
        }
        outer.retain(|&(len, _, _)| len != 1);
        // Element 0 of the padded image: addresses below the buffer are
        // formed but never dereferenced (only in-range positions are read).
        let padding: i64 = (0..self.d())
            .map(|i| self.w.padding[i] as i64 * self.xsp(i) as i64)
            .sum();
        let xa = b.ins().iadd_imm_s(x, -padding);
        self.planes_level(b, &consts, &outer, xa, c);
    }

    fn planes_level(
        &self,
        b: &mut FunctionBuilder,
        consts: &Consts,
        outer: &[(usize, isize, isize)],
        xa: Value,
        ca: Value,
    ) {
        let Some((&(len, sx, sc), rest)) = outer.split_first() else {
            self.kernel_level(b, consts, 0, xa, ca, &[]);
            return;
        };
        emit_for(b, 0, len as i64, 1, &mut |b, i| {
            let x = offset(b, xa, i, sx);
            let c = offset(b, ca, i, sc);
            self.planes_level(b, consts, rest, x, c);
        });
    }

    /// Loops (or, for the last dim, unrolls) kernel dim `i`; `ranges`
    /// holds the in-image output range of each dim before it.
    fn kernel_level(
        &self,
        b: &mut FunctionBuilder,
        consts: &Consts,
        i: usize,
        xa: Value,
        ca: Value,
        ranges: &[(Bound, Bound)],
    ) {
        let d = self.d();
        if i == d {
            self.out_level(b, consts, 0, xa, ca, ranges);
            return;
        }
        let (kx, kc) = (self.w.dilation[i] as isize * self.xsp(i), self.cs[2 + i]);
        if i == d - 1 && self.w.kernel[i] <= UNROLL_KERNEL {
            for k in 0..self.w.kernel[i] {
                let x = b.ins().iadd_imm_s(xa, (k as isize * kx) as i64);
                let c = b.ins().iadd_imm_s(ca, (k as isize * kc) as i64);
                let (lo, hi) = self.const_range(i, k);
                let mut r = ranges.to_vec();
                r.push((Bound::Const(lo), Bound::Const(hi)));
                self.kernel_level(b, consts, i + 1, x, c, &r);
            }
            return;
        }
        emit_for(b, 0, self.w.kernel[i] as i64, 1, &mut |b, k| {
            let x = offset(b, xa, k, kx);
            let c = offset(b, ca, k, kc);
            let mut r = ranges.to_vec();
            r.push(self.dyn_range(b, i, k));
            self.kernel_level(b, consts, i + 1, x, c, &r);
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
    fn out_level(
        &self,
        b: &mut FunctionBuilder,
        consts: &Consts,
        i: usize,
        xa: Value,
        ca: Value,
        ranges: &[(Bound, Bound)],
    ) {
        let d = self.d();
        let (lo, hi) = ranges[i];
        if i == d - 1 {
            self.row(b, consts, xa, ca, lo, hi);
            return;
        }
        let (sx, sc) = (self.w.stride[i] as isize * self.xsp(i), self.co(i));
        let o = Bound::Const(self.out[i] as i64);
        if self.mode != Mode::Fold {
            self.fill_rows(b, consts, i, ca, Bound::Const(0), lo);
        }
        bound_loop(b, lo, hi, &mut |b, j| {
            let x = offset(b, xa, j, sx);
            let c = offset(b, ca, j, sc);
            self.out_level(b, consts, i + 1, x, c, ranges);
        });
        if self.mode != Mode::Fold {
            self.fill_rows(b, consts, i, ca, hi, o);
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

    /// One row along the last output dim: image row at `xa` (element 0 of
    /// the padded row for this kernel offset), columns at `ca`; positions
    /// `lo..hi` are inside the image.
    fn row(
        &self,
        b: &mut FunctionBuilder,
        consts: &Consts,
        xa: Value,
        ca: Value,
        lo: Bound,
        hi: Bound,
    ) {
        let last = self.d() - 1;
        let sx = self.w.stride[last] as isize * self.xsp(last);
        let sc = self.co(last);
        let vector = sx == 4 && sc == 4;
        let (scalar_ty, vector_ty) = (self.kind.scalar(), self.kind.vector());
        let ty = |v: bool| if v { vector_ty } else { scalar_ty };
        match self.mode {
            Mode::Unfold { .. } => {
                self.fill(b, consts, ca, Bound::Const(0), lo);
                run(b, lo, hi, vector, true, &mut |b, at, v| {
                    let (px, ox) = address(b, xa, at, sx);
                    let x = b.ins().load(ty(v), flags(), px, ox);
                    let (pc, oc) = address(b, ca, at, sc);
                    b.ins().store(flags(), x, pc, oc);
                });
                let o = Bound::Const(self.out[last] as i64);
                self.fill(b, consts, ca, hi, o);
            }
            Mode::Fold => {
                // No overlap: a rewritten element would be added twice.
                run(b, lo, hi, vector, false, &mut |b, at, v| {
                    let (px, ox) = address(b, xa, at, sx);
                    let (pc, oc) = address(b, ca, at, sc);
                    let acc = b.ins().load(ty(v), flags(), px, ox);
                    let x = b.ins().load(ty(v), flags(), pc, oc);
                    let sum = match self.dtype {
                        DType::F32 | DType::F64 => b.ins().fadd(acc, x),
                        DType::I32 => b.ins().iadd(acc, x),
                        // The sum of bools is true when any is: bool is 0/1.
                        DType::Bool => b.ins().bor(acc, x),
                    };
                    b.ins().store(flags(), sum, px, ox);
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

/// Checks that `cols` is the unfolding of `image` by `w` (the IR's type
/// rule, restated so that a malformed graph is an error, not a panic).
fn check_shapes(w: &Window, image: &[usize], cols: &[usize]) -> Result<Vec<usize>, CodegenError> {
    let bad = || {
        CodegenError::new(format!(
            "unfold/fold: {cols:?} is not the unfolding of {image:?} by the window {w:?}"
        ))
    };
    w.check().map_err(CodegenError::new)?;
    let d = w.rank();
    if image.len() != d + 2 || cols.len() != 2 * d + 2 || cols[..2] != image[..2] {
        return Err(bad());
    }
    if cols[2..2 + d] != w.kernel[..] {
        return Err(bad());
    }
    let out: Option<Vec<usize>> = (0..d).map(|i| w.out_size(i, image[2 + i])).collect();
    match out {
        Some(out) if out[..] == cols[2 + d..] => Ok(out),
        _ => Err(bad()),
    }
}

fn byte_strides(v: &View) -> Vec<isize> {
    v.strides.iter().map(|s| s * 4).collect()
}

/// `out = unfold(x)`, `fill` in the padding (any dtype; `fill` as the
/// 4-byte word the JIT stores for it).
pub fn emit_unfold(
    b: &mut FunctionBuilder,
    w: &Window,
    fill: u32,
    dtype: DType,
    x: (usize, &View),
    out: (usize, &View),
) -> Result<(), CodegenError> {
    let o = check_shapes(w, &x.1.shape, &out.1.shape)?;
    Walk {
        mode: Mode::Unfold { fill },
        kind: Kind::of(dtype),
        dtype,
        w,
        planes: [x.1.shape[0], x.1.shape[1]],
        input: x.1.shape[2..].to_vec(),
        out: o,
        x_addr: x.0,
        xs: byte_strides(x.1),
        c_addr: out.0,
        cs: byte_strides(out.1),
    }
    .emit(b);
    Ok(())
}

/// `out = fold(cols)`: zero, then every column element added at the image
/// position it was read from, in the interpreter's order.
pub fn emit_fold(
    b: &mut FunctionBuilder,
    w: &Window,
    dtype: DType,
    cols: (usize, &View),
    out: (usize, &View),
) -> Result<(), CodegenError> {
    let o = check_shapes(w, &out.1.shape, &cols.1.shape)?;
    if !out.1.is_contiguous() {
        return Err(CodegenError::new(
            "internal error: a fold result must be a contiguous buffer",
        ));
    }
    emit_fill(b, out.0, out.1.numel(), 0.0);
    Walk {
        mode: Mode::Fold,
        kind: Kind::of(dtype),
        dtype,
        w,
        planes: [out.1.shape[0], out.1.shape[1]],
        input: out.1.shape[2..].to_vec(),
        out: o,
        x_addr: out.0,
        xs: byte_strides(out.1),
        c_addr: cols.0,
        cs: byte_strides(cols.1),
    }
    .emit(b);
    Ok(())
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
        x_addr: 0,
        xs: byte_strides(image),
        c_addr: 0,
        cs: crate::plan::row_major(&cols)
            .iter()
            .map(|s| s * 4)
            .collect(),
    })
}

/// Unfolds `planes` channels of one sample, the first at `image_at`, into
/// contiguous columns at `cols_at` (a staged matmul operand).
#[allow(clippy::too_many_arguments)]
pub fn emit_unfold_planes(
    b: &mut FunctionBuilder,
    w: &Window,
    fill: u32,
    dtype: DType,
    image: &View,
    planes: usize,
    image_at: Value,
    cols_at: Value,
) -> Result<(), CodegenError> {
    staged_walk(Mode::Unfold { fill }, w, dtype, image, planes)?.emit_at(b, image_at, cols_at);
    Ok(())
}

/// Adds contiguous columns at `cols_at` into `planes` channels of one
/// sample of the (zeroed) image, the first at `image_at` (a staged matmul
/// result).
pub fn emit_fold_planes(
    b: &mut FunctionBuilder,
    w: &Window,
    dtype: DType,
    image: &View,
    planes: usize,
    image_at: Value,
    cols_at: Value,
) -> Result<(), CodegenError> {
    staged_walk(Mode::Fold, w, dtype, image, planes)?.emit_at(b, image_at, cols_at);
    Ok(())
}
