//! Inline transcendental functions emitted as Cranelift IR.
//!
//! [`exp`], [`log`], [`tanh`] and [`sigmoid`] append straight-line IR (no
//! calls, no branches) computing the function lane-wise on a value of type
//! `F32` or `F32X4`; the same algorithm and the same constants serve both, so
//! the scalar and vector forms give bit-identical results. Constants are
//! `f32const` for scalars and constant-pool `vconst` splats for vectors. Each
//! takes the builder positioned in a block, the type and the input, and
//! returns the result value:
//!
//! ```text
//! let y = vmath::sigmoid(&mut builder, types::F32X4, x);
//! ```
//!
//! # Accuracy
//!
//! Contract: for every f32 input whose true result is a normal f32, the
//! relative error of the f32 result against the exact value is at most
//! 2e-7; for true results below `f32::MIN_POSITIVE` the absolute error is at
//! most 2 units of `2^-149`. Measured over **all 2^32 f32 inputs** (f32x4
//! kernels at `opt_level=speed`, against `f64` `exp`/`ln`/`tanh` and a
//! two-sided f64 sigmoid, the f32 result compared with the unrounded f64
//! truth; results identical at `opt_level=none` and for scalar `f32`):
//!
//! | function | max relative error | in ulps | tiny results (abs, units of 2^-149) |
//! |---|---|---|---|
//! | `exp`     | 7.06e-8 (x = 48.181007) | 0.844 | 0.747 |
//! | `log`     | 8.14e-8 (x = 2.7207026) | 0.824 | (none: exact 0 at 1) |
//! | `tanh`    | 7.48e-8 (x = 0.8764739) | 0.947 | exact (`tanh(x) = x`) |
//! | `sigmoid` | 8.92e-8 (x = -86.642334) | 0.873 | 0.747 |
//!
//! Correct rounding alone costs up to 0.5 ulp = 5.96e-8 relative. The test
//! `codegen/tests/vmath.rs` sweeps about 3.5M inputs per function and asserts
//! 1e-7 (the achieved bound) as well as the special values below.
//!
//! Special values: `exp(-inf) = 0`, `exp(+inf) = +inf`, `exp(NaN) = NaN`,
//! `exp(x) = +inf` for `x > 88.72284`, `exp(x) = 0` for `x < -103.97208`,
//! subnormal results rounded once. `log(±0) = -inf`, `log(x < 0) = NaN`
//! (`-inf` included), `log(+inf) = +inf`, `log(NaN) = NaN`, subnormal inputs
//! at full accuracy. `tanh(±inf) = ±1`, `tanh(±0) = ±0`, `tanh(x) = x` for tiny
//! `x`, `tanh(NaN) = NaN`. `sigmoid(-inf) = 0`, `sigmoid(+inf) = 1`,
//! `sigmoid(NaN) = NaN`, subnormal results for `x` in about `[-103.97, -87.3]`.
//!
//! # Algorithms
//!
//! All polynomials are evaluated by Horner's rule with fused multiply-adds.
//! The coefficients were fitted for this module with mpmath (40 digits): a
//! weighted minimax fit by Lawson's iteratively reweighted least squares, the
//! weight being the term's contribution to the relative error of the final
//! result; the coefficients are then rounded to f32 one at a time, lowest
//! degree first, refitting the remaining ones after each rounding, so the
//! f32 coefficients themselves are near-minimax. The forms follow Cephes
//! `expf`/`logf`/`tanhf` (same shapes, similar degrees); the reduction and
//! the error-compensation steps are FMA-based.
//!
//! **exp.** Clamp `x` to `[-104, 89]` (NaN passes: the clamps are
//! `select(lim < x, lim, x)` shapes that x64 lowers to one `minps`/`maxps`
//! each). `n = round(x·log2e)` via `fma(x, log2e, 1.5·2^23)`, whose bits
//! also give `n` as an integer (no float-to-int conversion).
//! Cody–Waite with `ln2 = LN2_HI + LN2_LO` (f32 hi/lo): `r1 = fma(-n,
//! LN2_HI, x)` is exact, `d = -n·LN2_LO`, `r = r1 + d`, `|r| ≤ ln2/2`.
//! `exp(r) = 1 + (r1 + (d + r²·P(r)))`, `P` of degree 5 (approximation error
//! < 1e-10 relative). The result is scaled by `2^n` as `(m·2^n1)·2^n2` with
//! `n1 = n >> 1`, `n2 = n - n1` (both normal exponents), so that the
//! first product is exact and the second rounds once — into the subnormal
//! range or to +inf — with no special-casing.
//!
//! **log.** Subnormal inputs are scaled by `2^23` (exponent corrected by 23).
//! With `OFF` = bits of `sqrt(1/2)`: `k = (bits - OFF) >> 23` (arithmetic),
//! `m = ((bits - OFF) & 0x7fffff) + OFF` so `m ∈ [sqrt(1/2), sqrt(2))`, `x =
//! 2^k·m`. With `f = m - 1` (exact): `log(x) = k·LN2_HI + (f + (f²·(-1/2 +
//! f·Q(f)) + k·LN2_LO))`, `Q` of degree 8 (approximation error < 1e-9
//! relative); the last step is one FMA. Zero, negative, +inf and NaN inputs
//! are patched with three selects at the end.
//!
//! **tanh.** On `a = |x|`: for `a < 1`, `a + a³·T(a²)`, `T` of degree 7 in
//! `a²` (approximation error < 1e-9 relative); for `a ≥ 1`,
//! `1 - 2/(exp(2a) + 1)` with the inline `exp` (overflow to +inf gives
//! exactly 1). The
//! switch at 1 keeps the error amplification of the subtraction, `(1 -
//! tanh a)/tanh a`, at most 0.31. Both are computed, one is selected, and the
//! sign bit of `x` is OR-ed back in (so `tanh(-0) = -0`, NaN stays NaN).
//!
//! **sigmoid.** `e = exp(-|x|)`, computed together with `e_lo`, the rounding
//! error of the final `1 + q` inside `exp` (Fast2Sum), scaled like `e`. The
//! result is `N/D` with `D = 1 + e + e_lo` and `N = 1` for `x ≥ 0`, `N = e +
//! e_lo` for `x < 0`, so neither branch overflows and tiny results keep
//! their precision. `d = 1 + e` with its rounding error `err` (Fast2Sum),
//! `q = N_hi/d`, the exact division residual `ρ = fma(-q, d, N_hi)`, and
//! the corrected result `q + (ρ + N_lo - q·err)·(1/D)`, where `1/D ≈ q`
//! (`x ≥ 0`) or `1 - q` (`x < 0`): one division, the rest FMAs. This keeps
//! the error near one rounding (without the correction: 1.72e-7).
//!
//! # Cost and requirements
//!
//! On x64 at `opt_level=speed` the f32x4 forms compile to about 45 (`exp`),
//! 60 (`log`), 80 (`tanh`) and 70 (`sigmoid`) instructions, one `divps` in
//! `tanh` and `sigmoid`. They rely on `fma`: with the host's FMA it is one
//! `vfmadd213ps`/`vfmadd213ss`; without it Cranelift lowers every `fma` to a
//! call to `fmaf` (still exact, but slow).

use cranelift_codegen::ir::condcodes::FloatCC;
use cranelift_codegen::ir::{
    types, ConstantData, Endianness, InstBuilder, MemFlagsData, Type, Value,
};
use cranelift_frontend::FunctionBuilder;

pub(crate) use nnc_kernels::vmath_constants::*;

// ---------------------------------------------------------------------------
// Type-generic helpers (F32 or F32X4)
// ---------------------------------------------------------------------------

fn check_ty(ty: Type) {
    assert!(
        ty == types::F32 || ty == types::F32X4,
        "vmath: unsupported type {ty} (expected f32 or f32x4)"
    );
}

/// The integer type of the same shape as `ty` (I32 or I32X4).
fn int_ty(ty: Type) -> Type {
    if ty.is_vector() {
        types::I32X4
    } else {
        types::I32
    }
}

/// A float constant of type `ty`: a constant-pool `vconst` when `ty` is a
/// vector (one `vmovups` load on x64, hoisted out of loops at
/// `opt_level=speed`), an `f32const` otherwise.
fn fconst(b: &mut FunctionBuilder, ty: Type, v: f32) -> Value {
    if ty.is_vector() {
        let bytes: Vec<u8> = (0..ty.lane_count()).flat_map(|_| v.to_le_bytes()).collect();
        let c = b.func.dfg.constants.insert(ConstantData::from(bytes));
        b.ins().vconst(ty, c)
    } else {
        b.ins().f32const(v)
    }
}

/// An i32 constant of type `ity` (I32 or I32X4).
fn iconst(b: &mut FunctionBuilder, ity: Type, v: i32) -> Value {
    if ity.is_vector() {
        let bytes: Vec<u8> = (0..ity.lane_count())
            .flat_map(|_| v.to_le_bytes())
            .collect();
        let c = b.func.dfg.constants.insert(ConstantData::from(bytes));
        b.ins().vconst(ity, c)
    } else {
        b.ins().iconst(types::I32, i64::from(v))
    }
}

fn bitcast(b: &mut FunctionBuilder, to: Type, x: Value) -> Value {
    let flags = if to.is_vector() {
        MemFlagsData::new().with_endianness(Endianness::Little)
    } else {
        MemFlagsData::new()
    };
    b.ins().bitcast(to, flags, x)
}

/// `cond ? a : c` lane-wise, where `cond` is the result of an `fcmp` on
/// values of type `ty` (an i8 for scalars, an all-ones/all-zeros I32X4 mask
/// for vectors) and `a`, `c` have type `ty` (float or int).
fn sel(b: &mut FunctionBuilder, ty: Type, cond: Value, a: Value, c: Value) -> Value {
    if ty.is_vector() {
        let mask = if b.func.dfg.value_type(cond) == ty {
            cond
        } else {
            bitcast(b, ty, cond)
        };
        b.ins().bitselect(mask, a, c)
    } else {
        b.ins().select(cond, a, c)
    }
}

/// `lim < x ? lim : x`, written so that x64 lowers it to a single
/// `minss/minps` with `x` second: a NaN in `x` comes through (`minps`
/// returns its second operand when either is NaN, as the select does).
fn min_keep_nan(b: &mut FunctionBuilder, ty: Type, lim: Value, x: Value) -> Value {
    let lt = b.ins().fcmp(FloatCC::LessThan, lim, x);
    sel(b, ty, lt, lim, x)
}

/// `x < lim ? lim : x`, lowered to a single `maxss/maxps`; NaN in `x` comes
/// through.
fn max_keep_nan(b: &mut FunctionBuilder, ty: Type, lim: Value, x: Value) -> Value {
    let lt = b.ins().fcmp(FloatCC::LessThan, x, lim);
    sel(b, ty, lt, lim, x)
}

/// Horner evaluation of `c[0] + c[1] x + ... + c[k] x^k` with fused
/// multiply-adds.
fn horner(b: &mut FunctionBuilder, ty: Type, x: Value, c: &[f32]) -> Value {
    let (last, rest) = c.split_last().expect("non-empty coefficients");
    let mut acc = fconst(b, ty, *last);
    for &ck in rest.iter().rev() {
        let k = fconst(b, ty, ck);
        acc = b.ins().fma(acc, x, k);
    }
    acc
}

/// `2^n` of type `ty`, for an integer `n` (of type `int_ty(ty)`) in
/// `[-126, 127]`.
fn pow2i(b: &mut FunctionBuilder, ty: Type, n: Value) -> Value {
    let ity = int_ty(ty);
    let bias = iconst(b, ity, 127);
    let e = b.ins().iadd(n, bias);
    let bits = b.ins().ishl_imm_u(e, 23);
    bitcast(b, ty, bits)
}

// ---------------------------------------------------------------------------
// exp
// ---------------------------------------------------------------------------

/// `exp(x)`, lane-wise, for `ty` = `F32` or `F32X4`. Inline IR, no calls.
///
/// Correctly handles ±inf, NaN, overflow (+inf for `x > 88.7228`),
/// underflow (+0 for `x < -103.972`) and subnormal results.
pub fn exp(b: &mut FunctionBuilder, ty: Type, x: Value) -> Value {
    check_ty(ty);
    exp_impl(b, ty, x, false).0
}

/// `exp(x)` as `hi`, and with `with_lo` also `lo` such that `hi + lo`
/// carries the result before its last rounding (`lo` is the rounding error
/// of `1 + q`, scaled like `hi`; meaningful while `hi` is normal).
fn exp_impl(b: &mut FunctionBuilder, ty: Type, x: Value, with_lo: bool) -> (Value, Option<Value>) {
    let ity = int_ty(ty);
    // Clamp (NaN passes through unchanged).
    let hi = fconst(b, ty, EXP_MAX);
    let x = min_keep_nan(b, ty, hi, x);
    let lo = fconst(b, ty, EXP_MIN);
    let x = max_keep_nan(b, ty, lo, x);

    // n = round(x / ln2), both as float and as integer.
    let log2e = fconst(b, ty, LOG2E);
    let magic = fconst(b, ty, ROUND_MAGIC);
    let t = b.ins().fma(x, log2e, magic);
    let nf = b.ins().fsub(t, magic);
    let tbits = bitcast(b, ity, t);
    let magic_bits = iconst(b, ity, ROUND_MAGIC.to_bits() as i32);
    let n = b.ins().isub(tbits, magic_bits);

    // Cody–Waite: r1 = x - n*LN2_HI is exact with a fused multiply-add;
    // d = -n*LN2_LO is the small remainder of the reduction.
    let neg_hi = fconst(b, ty, -LN2_HI);
    let r1 = b.ins().fma(nf, neg_hi, x);
    let neg_lo = fconst(b, ty, -LN2_LO);
    let d = b.ins().fmul(nf, neg_lo);
    let r = b.ins().fadd(r1, d);

    // exp(r) = 1 + (r1 + (d + r^2 P(r))): the linear term keeps the exact r1.
    let r2 = b.ins().fmul(r, r);
    let p = horner(b, ty, r, &EXP_P);
    let corr = b.ins().fma(r2, p, d);
    let q = b.ins().fadd(r1, corr);
    let one = fconst(b, ty, 1.0);
    let m = b.ins().fadd(one, q);

    // Scale by 2^n as 2^n1 * 2^n2 (n1 = n >> 1, n2 = n - n1, both within
    // the normal exponent range): the first product is exact, the second
    // rounds once, also into the subnormal range or to +inf.
    let n1 = b.ins().sshr_imm_u(n, 1);
    let n2 = b.ins().isub(n, n1);
    let s1 = pow2i(b, ty, n1);
    let s2 = pow2i(b, ty, n2);
    let y = b.ins().fmul(m, s1);
    let y = b.ins().fmul(y, s2);
    if !with_lo {
        return (y, None);
    }
    // m_lo = q - (m - 1) is exactly the rounding error of 1 + q (Fast2Sum).
    let mm1 = b.ins().fsub(m, one);
    let m_lo = b.ins().fsub(q, mm1);
    let l = b.ins().fmul(m_lo, s1);
    let l = b.ins().fmul(l, s2);
    (y, Some(l))
}

// ---------------------------------------------------------------------------
// log
// ---------------------------------------------------------------------------

/// Natural logarithm, lane-wise, for `ty` = `F32` or `F32X4`. Inline IR.
///
/// `log(±0) = -inf`, `log(x < 0) = NaN`, `log(+inf) = +inf`,
/// `log(NaN) = NaN`; subnormal inputs are rescaled by 2^23 and keep full
/// accuracy.
pub fn log(b: &mut FunctionBuilder, ty: Type, x0: Value) -> Value {
    check_ty(ty);
    let ity = int_ty(ty);
    // Subnormal inputs: scale by 2^23 and remember to subtract 23 from the
    // exponent.
    let min_pos = fconst(b, ty, f32::MIN_POSITIVE);
    let is_sub = b.ins().fcmp(FloatCC::LessThan, x0, min_pos);
    let two23 = fconst(b, ty, 8_388_608.0);
    let scaled = b.ins().fmul(x0, two23);
    let x = sel(b, ty, is_sub, scaled, x0);
    let c23 = fconst(b, ty, 23.0);
    let zero = fconst(b, ty, 0.0);
    let eadj = sel(b, ty, is_sub, c23, zero);

    // x = 2^k * m with m in [sqrt(1/2), sqrt(2)).
    let bits = bitcast(b, ity, x);
    let off = iconst(b, ity, LOG_OFF);
    let ix = b.ins().isub(bits, off);
    let k = b.ins().sshr_imm_u(ix, 23);
    let mant_mask = iconst(b, ity, 0x007f_ffff);
    let mbits = b.ins().band(ix, mant_mask);
    let mbits = b.ins().iadd(mbits, off);
    let m = bitcast(b, ty, mbits);
    let kf = b.ins().fcvt_from_sint(ty, k);
    let e = b.ins().fsub(kf, eadj);

    // f = m - 1 is exact; log(x) = e*ln2 + f - f^2/2 + f^3 Q(f).
    let one = fconst(b, ty, 1.0);
    let f = b.ins().fsub(m, one);
    let f2 = b.ins().fmul(f, f);
    let q = horner(b, ty, f, &LOG_Q);
    let mhalf = fconst(b, ty, -0.5);
    let rr = b.ins().fma(f, q, mhalf);
    let ln2_lo = fconst(b, ty, LN2_LO);
    let elo = b.ins().fmul(e, ln2_lo);
    let corr = b.ins().fma(f2, rr, elo);
    let t = b.ins().fadd(f, corr);
    let ln2_hi = fconst(b, ty, LN2_HI);
    let y = b.ins().fma(e, ln2_hi, t);

    // Special values.
    let inf = fconst(b, ty, f32::INFINITY);
    let finite = b.ins().fcmp(FloatCC::LessThan, x0, inf); // false for +inf, NaN
    let y = sel(b, ty, finite, y, x0);
    let neg = b.ins().fcmp(FloatCC::LessThan, x0, zero);
    let nan = fconst(b, ty, f32::NAN);
    let y = sel(b, ty, neg, nan, y);
    let is_zero = b.ins().fcmp(FloatCC::Equal, x0, zero);
    let ninf = fconst(b, ty, f32::NEG_INFINITY);
    sel(b, ty, is_zero, ninf, y)
}

// ---------------------------------------------------------------------------
// tanh
// ---------------------------------------------------------------------------

/// Hyperbolic tangent, lane-wise, for `ty` = `F32` or `F32X4`. Inline IR.
///
/// Odd polynomial for `|x| < 1`, `sign(x) * (1 - 2/(exp(2|x|) + 1))` from
/// there on; both are computed and one is selected per lane.
pub fn tanh(b: &mut FunctionBuilder, ty: Type, x: Value) -> Value {
    check_ty(ty);
    let ity = int_ty(ty);
    let a = b.ins().fabs(x);
    // Small |x|: a + a^3 T(a^2).
    let u = b.ins().fmul(a, a);
    let p = horner(b, ty, u, &TANH_T);
    let a3 = b.ins().fmul(a, u);
    let small = b.ins().fma(a3, p, a);

    // Large |x|: 1 - 2/(exp(2a) + 1).
    let a2 = b.ins().fadd(a, a);
    let ex = exp_impl(b, ty, a2, false).0;
    let one = fconst(b, ty, 1.0);
    let den = b.ins().fadd(ex, one);
    let two = fconst(b, ty, 2.0);
    let dq = b.ins().fdiv(two, den);
    let big = b.ins().fsub(one, dq);

    let sw = fconst(b, ty, TANH_SWITCH);
    let is_small = b.ins().fcmp(FloatCC::LessThan, a, sw); // false for NaN
    let t = sel(b, ty, is_small, small, big);

    // Both branches are >= +0 (or NaN): put the sign of x back, which also
    // gives tanh(-0) = -0.
    let xbits = bitcast(b, ity, x);
    let smask = iconst(b, ity, SIGN_MASK);
    let sign = b.ins().band(xbits, smask);
    let tbits = bitcast(b, ity, t);
    let tbits = b.ins().bor(tbits, sign);
    bitcast(b, ty, tbits)
}

// ---------------------------------------------------------------------------
// sigmoid
// ---------------------------------------------------------------------------

/// Logistic sigmoid `1/(1 + exp(-x))`, lane-wise, for `ty` = `F32` or
/// `F32X4`. Inline IR.
///
/// With `e = exp(-|x|)`: `1/(1 + e)` for `x >= 0` and `e/(1 + e)` for
/// `x < 0`, so that neither branch overflows and tiny results for very
/// negative `x` keep their precision (down to subnormals).
pub fn sigmoid(b: &mut FunctionBuilder, ty: Type, x: Value) -> Value {
    check_ty(ty);
    let ity = int_ty(ty);
    let xbits = bitcast(b, ity, x);
    let smask = iconst(b, ity, SIGN_MASK);
    let nabs = b.ins().bor(xbits, smask);
    let nabs = bitcast(b, ty, nabs); // -|x|
    let (e, e_lo) = exp_impl(b, ty, nabs, true);
    let e_lo = e_lo.expect("requested");
    let zero = fconst(b, ty, 0.0);
    let one = fconst(b, ty, 1.0);
    let neg = b.ins().fcmp(FloatCC::LessThan, x, zero);

    // N/D with N = (x < 0 ? e + e_lo : 1) and D = 1 + e + e_lo, where
    // d = 1 + e rounded and err = D - d exactly enough (Fast2Sum).
    let d = b.ins().fadd(one, e);
    let dm1 = b.ins().fsub(d, one);
    let err = b.ins().fsub(e, dm1);
    let err = b.ins().fadd(err, e_lo);
    let num = sel(b, ty, neg, e, one);
    let q = b.ins().fdiv(num, d);
    // N/D = q + (rho + n_lo - q*err)/D with the exact division residual
    // rho = num - q*d (one fused multiply-add); 1/D ≈ (x < 0 ? 1 - q : q).
    let rho = b.ins().fneg(q);
    let rho = b.ins().fma(rho, d, num);
    let n_lo = sel(b, ty, neg, e_lo, zero);
    let rho = b.ins().fadd(rho, n_lo);
    let nq = b.ins().fneg(q);
    let delta = b.ins().fma(nq, err, rho);
    let one_m_q = b.ins().fsub(one, q);
    let inv = sel(b, ty, neg, one_m_q, q);
    b.ins().fma(delta, inv, q)
}
