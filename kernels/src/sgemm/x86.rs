//! The x86-64 micro-kernels of [`super`]: AVX-512 and AVX2+FMA tiles,
//! the AVX2 transposing pack and the AVX-512 dot products, each behind the
//! CPU feature it needs (chosen at run time by `Isa::detect`).

use super::{ASrc, BSrc, Runs, Tile};
use std::arch::x86_64::*;

/// One tile with the AVX-512 kernel that fits it: 16 or 32 columns,
/// and 2, 4, 6 or 8 rows (a product with a few rows, such as LeNet's
/// 6-channel conv1, does not pay for eight).
///
/// # Safety
/// The CPU has AVX-512F; `a` and `b` reach `kc` steps of the tile's
/// rows and columns (an 8-row packed `a` panel when `packed`, a
/// 32-wide `b` panel); `t` is in bounds of `c`.
#[target_feature(enable = "avx512f")]
pub(super) unsafe fn tile_avx512(kc: usize, a: ASrc, b: BSrc, t: &Tile, packed: bool) {
    macro_rules! rows {
        ($nv:literal, $packed:literal) => {
            // SAFETY: forwarded contract.
            unsafe {
                match t.m {
                    0..=2 => kernel_avx512::<$nv, $packed, 2, false>(kc, a, b, t),
                    3..=4 => kernel_avx512::<$nv, $packed, 4, false>(kc, a, b, t),
                    5..=6 => kernel_avx512::<$nv, $packed, 6, false>(kc, a, b, t),
                    _ => kernel_avx512::<$nv, $packed, 8, false>(kc, a, b, t),
                }
            }
        };
    }
    match (t.n > 16, packed) {
        (true, true) => rows!(2, true),
        (true, false) => rows!(2, false),
        (false, true) => rows!(1, true),
        (false, false) => rows!(1, false),
    }
}

/// [`tile_avx512`] with `a` read in place and the rows of `b` located
/// by its table.
///
/// # Safety
/// As [`tile_avx512`]; `b.offs` holds `kc` offsets, each the start of
/// a row with the tile's columns in bounds.
#[target_feature(enable = "avx512f")]
pub(super) unsafe fn tile_avx512_table(kc: usize, a: ASrc, b: BSrc, t: &Tile) {
    macro_rules! rows {
        ($nv:literal) => {
            // SAFETY: forwarded contract.
            unsafe {
                match t.m {
                    0..=2 => kernel_avx512::<$nv, false, 2, true>(kc, a, b, t),
                    3..=4 => kernel_avx512::<$nv, false, 4, true>(kc, a, b, t),
                    5..=6 => kernel_avx512::<$nv, false, 6, true>(kc, a, b, t),
                    _ => kernel_avx512::<$nv, false, 8, true>(kc, a, b, t),
                }
            }
        };
    }
    if t.n > 16 {
        rows!(2)
    } else {
        rows!(1)
    }
}

/// `ROWS`×(16·NV) AVX-512 kernel over a 32-wide `b` panel; `a` is an
/// 8-row packed panel or read in place; `b`'s rows `rs` apart or at
/// the offsets of its table (`TABLE`).
///
/// # Safety
/// As [`tile_avx512`] (and [`tile_avx512_table`] when `TABLE`).
#[target_feature(enable = "avx512f")]
unsafe fn kernel_avx512<
    const NV: usize,
    const PACKED: bool,
    const ROWS: usize,
    const TABLE: bool,
>(
    kc: usize,
    a: ASrc,
    b: BSrc,
    t: &Tile,
) {
    const MR: usize = 8;
    const W: usize = 32;
    let mut r = [[_mm512_setzero_ps(); NV]; ROWS];
    // SAFETY (whole body): panels hold kc×MR and kc×W elements; the
    // tile of `c` is valid for (t.m, t.n).
    unsafe {
        let mut ap = a.p;
        let rows = a.rows::<ROWS>();
        let mut off = 0isize;
        let mut bp = b.p;
        for kk in 0..kc {
            let row = if TABLE {
                b.p.offset(*b.offs.add(kk))
            } else {
                bp
            };
            let mut bv = [_mm512_setzero_ps(); NV];
            for (v, x) in bv.iter_mut().enumerate() {
                *x = _mm512_loadu_ps(row.add(16 * v));
            }
            for (i, row) in r.iter_mut().enumerate() {
                let ai = if PACKED {
                    _mm512_set1_ps(*ap.add(i))
                } else {
                    _mm512_set1_ps(*rows[i].offset(off))
                };
                for v in 0..NV {
                    row[v] = _mm512_fmadd_ps(ai, bv[v], row[v]);
                }
            }
            ap = ap.wrapping_add(MR);
            off += a.cs;
            bp = bp.offset(b.rs);
        }
        if t.cs == 1 {
            for (i, row) in r.iter().enumerate().take(t.m) {
                let cr = t.c.offset(i as isize * t.rs);
                for (v, &x) in row.iter().enumerate() {
                    let lo = 16 * v;
                    if lo >= t.n {
                        break;
                    }
                    let cp = cr.add(lo);
                    if t.n - lo >= 16 {
                        let x = if t.add {
                            _mm512_add_ps(_mm512_loadu_ps(cp), x)
                        } else {
                            x
                        };
                        _mm512_storeu_ps(cp, x);
                    } else {
                        let mask: __mmask16 = ((1u32 << (t.n - lo)) - 1) as u16;
                        let x = if t.add {
                            _mm512_add_ps(_mm512_maskz_loadu_ps(mask, cp), x)
                        } else {
                            x
                        };
                        _mm512_mask_storeu_ps(cp, mask, x);
                    }
                }
            }
        } else {
            let mut buf = [0f32; MR * W];
            for (i, row) in r.iter().enumerate() {
                for (v, &x) in row.iter().enumerate() {
                    _mm512_storeu_ps(buf.as_mut_ptr().add(i * W + 16 * v), x);
                }
            }
            t.write_from(&buf, W);
        }
    }
}

/// `pack`'s transposing copy (`dst[p * w + i] = src[i * ls + p]`, lines
/// `len..w` already zero) in 8×8 blocks transposed in registers: eight
/// contiguous loads and eight contiguous stores per 64 elements, where
/// the scalar copy does 64 of each. Tails are copied one by one.
///
/// # Safety
/// The CPU has AVX2; otherwise as [`super::pack`].
#[target_feature(enable = "avx2")]
pub(super) unsafe fn pack_transposed(
    dst: *mut f32,
    src: *const f32,
    ls: isize,
    len: usize,
    w: usize,
    kc: usize,
) {
    // SAFETY (whole body): lines `< len` hold `kc` elements; `dst`
    // holds `kc × w`.
    unsafe {
        let mut i0 = 0;
        while i0 + 8 <= len {
            let line = |j: usize| src.offset((i0 + j) as isize * ls);
            let mut p0 = 0;
            while p0 + 8 <= kc {
                let r: [__m256; 8] = std::array::from_fn(|j| _mm256_loadu_ps(line(j).add(p0)));
                let t0 = _mm256_unpacklo_ps(r[0], r[1]);
                let t1 = _mm256_unpackhi_ps(r[0], r[1]);
                let t2 = _mm256_unpacklo_ps(r[2], r[3]);
                let t3 = _mm256_unpackhi_ps(r[2], r[3]);
                let t4 = _mm256_unpacklo_ps(r[4], r[5]);
                let t5 = _mm256_unpackhi_ps(r[4], r[5]);
                let t6 = _mm256_unpacklo_ps(r[6], r[7]);
                let t7 = _mm256_unpackhi_ps(r[6], r[7]);
                let u0 = _mm256_shuffle_ps::<0x44>(t0, t2);
                let u1 = _mm256_shuffle_ps::<0xEE>(t0, t2);
                let u2 = _mm256_shuffle_ps::<0x44>(t1, t3);
                let u3 = _mm256_shuffle_ps::<0xEE>(t1, t3);
                let u4 = _mm256_shuffle_ps::<0x44>(t4, t6);
                let u5 = _mm256_shuffle_ps::<0xEE>(t4, t6);
                let u6 = _mm256_shuffle_ps::<0x44>(t5, t7);
                let u7 = _mm256_shuffle_ps::<0xEE>(t5, t7);
                let cols = [
                    _mm256_permute2f128_ps::<0x20>(u0, u4),
                    _mm256_permute2f128_ps::<0x20>(u1, u5),
                    _mm256_permute2f128_ps::<0x20>(u2, u6),
                    _mm256_permute2f128_ps::<0x20>(u3, u7),
                    _mm256_permute2f128_ps::<0x31>(u0, u4),
                    _mm256_permute2f128_ps::<0x31>(u1, u5),
                    _mm256_permute2f128_ps::<0x31>(u2, u6),
                    _mm256_permute2f128_ps::<0x31>(u3, u7),
                ];
                for (q, col) in cols.into_iter().enumerate() {
                    _mm256_storeu_ps(dst.add((p0 + q) * w + i0), col);
                }
                p0 += 8;
            }
            for p in p0..kc {
                for j in 0..8 {
                    *dst.add(p * w + i0 + j) = *line(j).add(p);
                }
            }
            i0 += 8;
        }
        for i in i0..len {
            let s = src.offset(i as isize * ls);
            for p in 0..kc {
                *dst.add(p * w + i) = *s.add(p);
            }
        }
    }
}

/// [`super::dots`] in blocks of `R` rows × `C` columns: per 16 steps
/// along a run, `R + C` loads feed `R·C` accumulators; masked loads
/// cover a run's last `len mod 16`. Blocks of 6 × 2 when they tile the
/// rows (LeNet's 6 channels), else 4 × 4.
///
/// # Safety
/// The CPU has AVX-512F; otherwise as [`super::dots`].
#[target_feature(enable = "avx512f")]
pub(super) unsafe fn dots_avx512(
    (m, n): (usize, usize),
    c: (*mut f32, isize, isize),
    a: (*const f32, isize),
    b: (*const f32, &dyn Fn(usize) -> isize),
    runs: Runs,
    add: bool,
) {
    // SAFETY: forwarded contract.
    unsafe {
        if m.is_multiple_of(6) {
            dots_blocks::<6, 2>((m, n), c, a, b, runs, add)
        } else {
            dots_blocks::<4, 4>((m, n), c, a, b, runs, add)
        }
    }
}

/// One `R × C` block shape of [`dots_avx512`].
///
/// # Safety
/// As [`dots_avx512`].
#[target_feature(enable = "avx512f")]
unsafe fn dots_blocks<const R: usize, const C: usize>(
    (m, n): (usize, usize),
    (c, c_rs, c_cs): (*mut f32, isize, isize),
    (a, a_rs): (*const f32, isize),
    (b, column): (*const f32, &dyn Fn(usize) -> isize),
    runs: Runs,
    add: bool,
) {
    let (full, tail) = (runs.len / 16, runs.len % 16);
    let tail_mask: __mmask16 = ((1u32 << tail) - 1) as u16;
    // SAFETY (whole body): the runs of rows `< m` of `a` and columns
    // `< n` of `b` are in bounds; indices past the edge are clamped to
    // the last row or column, computed and not written.
    unsafe {
        for i0 in (0..m).step_by(R) {
            let rows = (m - i0).min(R);
            let ap: [*const f32; R] =
                std::array::from_fn(|i| a.offset((i0 + i.min(rows - 1)) as isize * a_rs));
            for j0 in (0..n).step_by(C) {
                let cols = (n - j0).min(C);
                let bp: [*const f32; C] =
                    std::array::from_fn(|j| b.offset(column(j0 + j.min(cols - 1))));
                let mut acc = [[_mm512_setzero_ps(); C]; R];
                for r in 0..runs.count {
                    let (at_a, at_b) = (r * runs.a_step, r * runs.b_step);
                    for q in 0..full + usize::from(tail > 0) {
                        let mask = if q < full { !0 } else { tail_mask };
                        let load = |p: *const f32, at: usize| {
                            _mm512_maskz_loadu_ps(mask, p.add(at + 16 * q))
                        };
                        let av: [__m512; R] = std::array::from_fn(|i| load(ap[i], at_a));
                        for (j, &p) in bp.iter().enumerate() {
                            let bv = load(p, at_b);
                            for i in 0..R {
                                acc[i][j] = _mm512_fmadd_ps(av[i], bv, acc[i][j]);
                            }
                        }
                    }
                }
                for (i, row) in acc.iter().enumerate().take(rows) {
                    for (j, &v) in row.iter().enumerate().take(cols) {
                        let sum = _mm512_reduce_add_ps(v);
                        let p = c.offset((i0 + i) as isize * c_rs + (j0 + j) as isize * c_cs);
                        *p = if add { *p + sum } else { sum };
                    }
                }
            }
        }
    }
}

/// 6×(8·NV) AVX2+FMA kernel over a 16-wide packed `b` panel.
///
/// # Safety
/// The CPU has AVX2 and FMA; `a` reaches `kc` steps of 6 rows, `b`
/// `kc` steps of a 16-wide panel; `t` is in bounds of `c`.
#[target_feature(enable = "avx2,fma")]
pub(super) unsafe fn kernel_avx2<const NV: usize, const PACKED: bool>(
    kc: usize,
    a: ASrc,
    b: BSrc,
    t: &Tile,
) {
    const MR: usize = 6;
    const W: usize = 16;
    let mut r = [[_mm256_setzero_ps(); NV]; MR];
    // SAFETY (whole body): as in `kernel_avx512`.
    unsafe {
        let mut ap = a.p;
        let rows = a.rows::<MR>();
        let mut off = 0isize;
        let mut bp = b.p;
        for _ in 0..kc {
            let mut bv = [_mm256_setzero_ps(); NV];
            for (v, x) in bv.iter_mut().enumerate() {
                *x = _mm256_loadu_ps(bp.add(8 * v));
            }
            for (i, row) in r.iter_mut().enumerate() {
                let ai = if PACKED {
                    _mm256_broadcast_ss(&*ap.add(i))
                } else {
                    _mm256_broadcast_ss(&*rows[i].offset(off))
                };
                for v in 0..NV {
                    row[v] = _mm256_fmadd_ps(ai, bv[v], row[v]);
                }
            }
            ap = ap.wrapping_add(MR);
            off += a.cs;
            bp = bp.offset(b.rs);
        }
        if t.cs == 1 && t.m == MR && t.n == 8 * NV {
            for (i, row) in r.iter().enumerate() {
                let cr = t.c.offset(i as isize * t.rs);
                for (v, &x) in row.iter().enumerate() {
                    let cp = cr.add(8 * v);
                    let x = if t.add {
                        _mm256_add_ps(_mm256_loadu_ps(cp), x)
                    } else {
                        x
                    };
                    _mm256_storeu_ps(cp, x);
                }
            }
        } else {
            let mut buf = [0f32; MR * W];
            for (i, row) in r.iter().enumerate() {
                for (v, &x) in row.iter().enumerate() {
                    _mm256_storeu_ps(buf.as_mut_ptr().add(i * W + 8 * v), x);
                }
            }
            t.write_from(&buf, W);
        }
    }
}
