//! `exp`, `log`, `tanh` and `sigmoid` sixteen lanes at a time (AVX-512),
//! for the elementwise loops of a CPU that has it.
//!
//! Cranelift emits 128-bit vectors only, and its inline forms
//! (`emit::vmath`) cost 45–80 instructions per four lanes: an LSTM step's
//! gates spent more time in them than in the step's product. A loop whose
//! expression has one of them evaluates sixteen elements at a time and
//! calls [`nnc_vmath16`] on the argument (see `emit::elementwise`).
//!
//! Every function here is `emit::vmath`'s algorithm, operation for
//! operation (the same constants, the same fused multiply-adds, selects
//! and integer steps, each rounding once as IEEE prescribes), so results
//! are bit-identical to the inline `f32x4` and scalar forms: which
//! elements a loop sends here does not change its results. The test
//! `codegen/tests/vmath.rs` checks the identity over swept inputs.

use crate::vmath_constants::{
    EXP_MAX, EXP_MIN, EXP_P, LN2_HI, LN2_LO, LOG2E, LOG_OFF, LOG_Q, ROUND_MAGIC, SIGN_MASK,
    TANH_SWITCH, TANH_T,
};

/// Which function [`nnc_vmath16`] applies.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(i64)]
pub enum Func {
    Exp = 0,
    Log = 1,
    Tanh = 2,
    Sigmoid = 3,
}

impl Func {
    fn from_code(code: i64) -> Option<Func> {
        [Func::Exp, Func::Log, Func::Tanh, Func::Sigmoid]
            .into_iter()
            .find(|f| *f as i64 == code)
    }
}

/// Whether this CPU runs [`nnc_vmath16`].
pub fn available() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        is_x86_feature_detected!("avx512f")
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        false
    }
}

/// Applies function `func` ([`Func`] as an integer) in place to the `n`
/// floats at `ptr` (`n` a multiple of 16). Called by generated code only
/// on CPUs where [`available`] holds.
#[no_mangle]
pub extern "C" fn nnc_vmath16(ptr: i64, func: i64, n: i64) {
    let Some(f) = Func::from_code(func) else {
        return;
    };
    let n = n.max(0) as usize / 16 * 16;
    // SAFETY: the kernel passes `n` floats of its own stack slot, and only
    // emits the call where `available()` held at compile time.
    #[cfg(target_arch = "x86_64")]
    unsafe {
        let xs = std::slice::from_raw_parts_mut(ptr as *mut f32, n);
        x86::apply(f, xs)
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        let _ = (f, ptr, n);
    }
}

/// `nnc_vmath16` on a slice (tests).
pub fn apply(f: Func, xs: &mut [f32]) {
    assert!(available(), "vmath16 needs AVX-512F");
    assert!(xs.len().is_multiple_of(16), "vmath16 takes multiples of 16");
    nnc_vmath16(xs.as_mut_ptr() as i64, f as i64, xs.len() as i64);
}

#[cfg(target_arch = "x86_64")]
mod x86 {
    use super::*;
    use std::arch::x86_64::*;

    /// # Safety
    /// The CPU has AVX-512F; `xs.len()` is a multiple of 16.
    #[target_feature(enable = "avx512f")]
    pub(super) unsafe fn apply(f: Func, xs: &mut [f32]) {
        for chunk in xs.chunks_exact_mut(16) {
            let p = chunk.as_mut_ptr();
            // SAFETY: 16 floats at `p`.
            let x = unsafe { _mm512_loadu_ps(p) };
            let y = match f {
                Func::Exp => exp_impl(x, false).0,
                Func::Log => log(x),
                Func::Tanh => tanh(x),
                Func::Sigmoid => sigmoid(x),
            };
            // SAFETY: as above.
            unsafe { _mm512_storeu_ps(p, y) };
        }
    }

    /// `a < b`, ordered (false when either is NaN), as Cranelift's
    /// `fcmp lt`.
    #[inline]
    #[target_feature(enable = "avx512f")]
    fn lt(a: __m512, b: __m512) -> __mmask16 {
        _mm512_cmp_ps_mask::<_CMP_LT_OQ>(a, b)
    }

    /// `cond ? a : c`.
    #[inline]
    #[target_feature(enable = "avx512f")]
    fn sel(cond: __mmask16, a: __m512, c: __m512) -> __m512 {
        _mm512_mask_blend_ps(cond, c, a)
    }

    #[inline]
    #[target_feature(enable = "avx512f")]
    fn fma(a: __m512, b: __m512, c: __m512) -> __m512 {
        _mm512_fmadd_ps(a, b, c)
    }

    #[inline]
    #[target_feature(enable = "avx512f")]
    fn horner(x: __m512, c: &[f32]) -> __m512 {
        let (last, rest) = c.split_last().expect("non-empty coefficients");
        let mut acc = _mm512_set1_ps(*last);
        for &ck in rest.iter().rev() {
            acc = fma(acc, x, _mm512_set1_ps(ck));
        }
        acc
    }

    #[inline]
    #[target_feature(enable = "avx512f")]
    fn pow2i(n: __m512i) -> __m512 {
        _mm512_castsi512_ps(_mm512_slli_epi32::<23>(_mm512_add_epi32(
            n,
            _mm512_set1_epi32(127),
        )))
    }

    #[inline]
    #[target_feature(enable = "avx512f")]
    fn exp_impl(x: __m512, with_lo: bool) -> (__m512, __m512) {
        let hi = _mm512_set1_ps(EXP_MAX);
        let x = sel(lt(hi, x), hi, x);
        let lo = _mm512_set1_ps(EXP_MIN);
        let x = sel(lt(x, lo), lo, x);
        let magic = _mm512_set1_ps(ROUND_MAGIC);
        let t = fma(x, _mm512_set1_ps(LOG2E), magic);
        let nf = _mm512_sub_ps(t, magic);
        let n = _mm512_sub_epi32(
            _mm512_castps_si512(t),
            _mm512_set1_epi32(ROUND_MAGIC.to_bits() as i32),
        );
        let r1 = fma(nf, _mm512_set1_ps(-LN2_HI), x);
        let d = _mm512_mul_ps(nf, _mm512_set1_ps(-LN2_LO));
        let r = _mm512_add_ps(r1, d);
        let r2 = _mm512_mul_ps(r, r);
        let p = horner(r, &EXP_P);
        let corr = fma(r2, p, d);
        let q = _mm512_add_ps(r1, corr);
        let one = _mm512_set1_ps(1.0);
        let m = _mm512_add_ps(one, q);
        let n1 = _mm512_srai_epi32::<1>(n);
        let n2 = _mm512_sub_epi32(n, n1);
        let (s1, s2) = (pow2i(n1), pow2i(n2));
        let y = _mm512_mul_ps(_mm512_mul_ps(m, s1), s2);
        if !with_lo {
            return (y, y);
        }
        let mm1 = _mm512_sub_ps(m, one);
        let m_lo = _mm512_sub_ps(q, mm1);
        let l = _mm512_mul_ps(_mm512_mul_ps(m_lo, s1), s2);
        (y, l)
    }

    #[inline]
    #[target_feature(enable = "avx512f")]
    fn log(x0: __m512) -> __m512 {
        let is_sub = lt(x0, _mm512_set1_ps(f32::MIN_POSITIVE));
        let scaled = _mm512_mul_ps(x0, _mm512_set1_ps(8_388_608.0));
        let x = sel(is_sub, scaled, x0);
        let zero = _mm512_set1_ps(0.0);
        let eadj = sel(is_sub, _mm512_set1_ps(23.0), zero);
        let off = _mm512_set1_epi32(LOG_OFF);
        let ix = _mm512_sub_epi32(_mm512_castps_si512(x), off);
        let k = _mm512_srai_epi32::<23>(ix);
        let mbits = _mm512_add_epi32(_mm512_and_si512(ix, _mm512_set1_epi32(0x007f_ffff)), off);
        let m = _mm512_castsi512_ps(mbits);
        let e = _mm512_sub_ps(_mm512_cvtepi32_ps(k), eadj);
        let one = _mm512_set1_ps(1.0);
        let f = _mm512_sub_ps(m, one);
        let f2 = _mm512_mul_ps(f, f);
        let q = horner(f, &LOG_Q);
        let rr = fma(f, q, _mm512_set1_ps(-0.5));
        let elo = _mm512_mul_ps(e, _mm512_set1_ps(LN2_LO));
        let corr = fma(f2, rr, elo);
        let t = _mm512_add_ps(f, corr);
        let y = fma(e, _mm512_set1_ps(LN2_HI), t);
        let finite = lt(x0, _mm512_set1_ps(f32::INFINITY));
        let y = sel(finite, y, x0);
        let neg = lt(x0, zero);
        let y = sel(neg, _mm512_set1_ps(f32::NAN), y);
        let is_zero = _mm512_cmp_ps_mask::<_CMP_EQ_OQ>(x0, zero);
        sel(is_zero, _mm512_set1_ps(f32::NEG_INFINITY), y)
    }

    #[inline]
    #[target_feature(enable = "avx512f")]
    fn tanh(x: __m512) -> __m512 {
        let a = _mm512_castsi512_ps(_mm512_and_si512(
            _mm512_castps_si512(x),
            _mm512_set1_epi32(i32::MAX),
        ));
        let u = _mm512_mul_ps(a, a);
        let p = horner(u, &TANH_T);
        let a3 = _mm512_mul_ps(a, u);
        let small = fma(a3, p, a);
        let a2 = _mm512_add_ps(a, a);
        let ex = exp_impl(a2, false).0;
        let one = _mm512_set1_ps(1.0);
        let den = _mm512_add_ps(ex, one);
        let dq = _mm512_div_ps(_mm512_set1_ps(2.0), den);
        let big = _mm512_sub_ps(one, dq);
        let t = sel(lt(a, _mm512_set1_ps(TANH_SWITCH)), small, big);
        let sign = _mm512_and_si512(_mm512_castps_si512(x), _mm512_set1_epi32(SIGN_MASK));
        _mm512_castsi512_ps(_mm512_or_si512(_mm512_castps_si512(t), sign))
    }

    #[inline]
    #[target_feature(enable = "avx512f")]
    fn sigmoid(x: __m512) -> __m512 {
        let nabs = _mm512_castsi512_ps(_mm512_or_si512(
            _mm512_castps_si512(x),
            _mm512_set1_epi32(SIGN_MASK),
        ));
        let (e, e_lo) = exp_impl(nabs, true);
        let zero = _mm512_set1_ps(0.0);
        let one = _mm512_set1_ps(1.0);
        let neg = lt(x, zero);
        let d = _mm512_add_ps(one, e);
        let dm1 = _mm512_sub_ps(d, one);
        let err = _mm512_add_ps(_mm512_sub_ps(e, dm1), e_lo);
        let num = sel(neg, e, one);
        let q = _mm512_div_ps(num, d);
        let nq = _mm512_castsi512_ps(_mm512_xor_si512(
            _mm512_castps_si512(q),
            _mm512_set1_epi32(SIGN_MASK),
        ));
        let rho = fma(nq, d, num);
        let n_lo = sel(neg, e_lo, zero);
        let rho = _mm512_add_ps(rho, n_lo);
        let delta = fma(nq, err, rho);
        let one_m_q = _mm512_sub_ps(one, q);
        let inv = sel(neg, one_m_q, q);
        fma(delta, inv, q)
    }
}
