//! The x86-64 parts of [`super`]: the AVX-512 VNNI and AVX2 micro-kernels
//! and the SIMD paths of packing, each behind the CPU feature it needs
//! (checked when the `Scratch` was made: `Isa::supported`).

use super::Tile;
use std::arch::x86_64::*;

/// One tile with the VNNI kernel that fits it: 16 or 32 columns, and 2,
/// 4, 6 or 8 rows (a product with a few rows, such as one sample's dense
/// layer, does not pay for eight).
///
/// # Safety
/// The CPU has AVX-512F, BW and VNNI; `a` holds `groups` groups of an
/// 8-row packed panel, `b` of a 32-column one; `t` is in bounds of `c`.
#[target_feature(enable = "avx512f,avx512bw,avx512vnni")]
pub(super) unsafe fn tile_vnni(groups: usize, a: *const u8, b: *const u8, t: &Tile) {
    macro_rules! rows {
        ($nv:literal) => {
            // SAFETY: forwarded contract.
            unsafe {
                match t.m {
                    0..=2 => kernel_vnni::<$nv, 2>(groups, a, b, t),
                    3..=4 => kernel_vnni::<$nv, 4>(groups, a, b, t),
                    5..=6 => kernel_vnni::<$nv, 6>(groups, a, b, t),
                    _ => kernel_vnni::<$nv, 8>(groups, a, b, t),
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

/// `ROWS`×(16·NV) VNNI kernel. Per group of 4 depths: `NV` loads of `b`
/// (16 columns × 4 bytes each), and per row one 32-bit broadcast of `a`
/// feeding `NV` `vpdpbusd`s (`u8 · i8`, four products per lane, wrapping
/// `i32` sums).
///
/// # Safety
/// As [`tile_vnni`].
#[target_feature(enable = "avx512f,avx512bw,avx512vnni")]
unsafe fn kernel_vnni<const NV: usize, const ROWS: usize>(
    groups: usize,
    a: *const u8,
    b: *const u8,
    t: &Tile,
) {
    const MR: usize = 8;
    const W: usize = 32;
    let mut r = [[_mm512_setzero_si512(); NV]; ROWS];
    // SAFETY (whole body): the panels hold `groups` groups of MR·4 and
    // W·4 bytes; the tile of `c` is valid for (t.m, t.n).
    unsafe {
        let mut ap = a;
        let mut bp = b;
        for _ in 0..groups {
            let bv: [__m512i; NV] =
                std::array::from_fn(|v| _mm512_loadu_si512(bp.add(64 * v) as *const _));
            for (i, row) in r.iter_mut().enumerate() {
                let ai = _mm512_set1_epi32(std::ptr::read_unaligned(ap.add(4 * i) as *const i32));
                for v in 0..NV {
                    row[v] = _mm512_dpbusd_epi32(row[v], ai, bv[v]);
                }
            }
            ap = ap.add(4 * MR);
            bp = bp.add(4 * W);
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
                    let mask: __mmask16 = if t.n - lo >= 16 {
                        !0
                    } else {
                        ((1u32 << (t.n - lo)) - 1) as u16
                    };
                    let x = if t.add {
                        _mm512_add_epi32(_mm512_maskz_loadu_epi32(mask, cp), x)
                    } else {
                        x
                    };
                    _mm512_mask_storeu_epi32(cp, mask, x);
                }
            }
        } else {
            let mut buf = [0i32; MR * W];
            for (i, row) in r.iter().enumerate() {
                for (v, &x) in row.iter().enumerate() {
                    _mm512_storeu_si512(buf.as_mut_ptr().add(i * W + 16 * v) as *mut _, x);
                }
            }
            t.write_from(&buf, W);
        }
    }
}

/// One tile with the AVX2 kernel: 8 or 16 columns.
///
/// # Safety
/// The CPU has AVX2; `a` holds `groups` pairs of a 6-row packed `i16`
/// panel, `b` of a 16-column one; `t` is in bounds of `c`.
#[target_feature(enable = "avx2")]
pub(super) unsafe fn tile_avx2(groups: usize, a: *const i16, b: *const i16, t: &Tile) {
    // SAFETY: forwarded contract.
    unsafe {
        if t.n > 8 {
            kernel_avx2::<2>(groups, a, b, t)
        } else {
            kernel_avx2::<1>(groups, a, b, t)
        }
    }
}

/// 6×(8·NV) AVX2 kernel. Per pair of depths: `NV` loads of `b` (8
/// columns × 2 `i16`), and per row one 32-bit broadcast of `a`'s pair
/// feeding `NV` `vpmaddwd`s. `vpmaddwd` multiplies `i16` pairs and adds
/// them into an `i32` lane exactly (at most `2 · 255 · 128`), unlike
/// `vpmaddubsw`, whose `i16` sums of two `u8 · i8` products saturate.
///
/// # Safety
/// As [`tile_avx2`].
#[target_feature(enable = "avx2")]
unsafe fn kernel_avx2<const NV: usize>(groups: usize, a: *const i16, b: *const i16, t: &Tile) {
    const MR: usize = 6;
    const W: usize = 16;
    let mut r = [[_mm256_setzero_si256(); NV]; MR];
    // SAFETY (whole body): the panels hold `groups` pairs of MR and W
    // lines; the tile of `c` is valid for (t.m, t.n).
    unsafe {
        let mut ap = a;
        let mut bp = b;
        for _ in 0..groups {
            let bv: [__m256i; NV] =
                std::array::from_fn(|v| _mm256_loadu_si256(bp.add(16 * v) as *const _));
            for (i, row) in r.iter_mut().enumerate() {
                let ai = _mm256_set1_epi32(std::ptr::read_unaligned(ap.add(2 * i) as *const i32));
                for v in 0..NV {
                    row[v] = _mm256_add_epi32(row[v], _mm256_madd_epi16(ai, bv[v]));
                }
            }
            ap = ap.add(2 * MR);
            bp = bp.add(2 * W);
        }
        if t.cs == 1 && t.m == MR && t.n == 8 * NV {
            for (i, row) in r.iter().enumerate() {
                let cr = t.c.offset(i as isize * t.rs);
                for (v, &x) in row.iter().enumerate() {
                    let cp = cr.add(8 * v) as *mut __m256i;
                    let x = if t.add {
                        _mm256_add_epi32(_mm256_loadu_si256(cp), x)
                    } else {
                        x
                    };
                    _mm256_storeu_si256(cp, x);
                }
            }
        } else {
            let mut buf = [0i32; MR * W];
            for (i, row) in r.iter().enumerate() {
                for (v, &x) in row.iter().enumerate() {
                    _mm256_storeu_si256(buf.as_mut_ptr().add(i * W + 8 * v) as *mut _, x);
                }
            }
            t.write_from(&buf, W);
        }
    }
}

/// `super::pack`'s byte layout for lines contiguous in memory (`ls = 1`:
/// a row-major `b`, a column-major `a`), 16 lines at a time: four 16-byte
/// loads (one per depth of the group) interleaved by bytes and then by
/// 16-bit pairs give each line's 4 depths as one 32-bit word. Returns how
/// many lines it packed (a multiple of 16); the caller packs the rest.
///
/// # Safety
/// As `super::pack` (with `ls = 1`); SSE2 is part of x86-64.
pub(super) unsafe fn interleave_bytes(
    dst: *mut u8,
    src: *const u8,
    ks: isize,
    len: usize,
    w: usize,
    full: usize,
) -> usize {
    let chunks = len / 16;
    // SAFETY (whole body): lines `< len` hold `4 · full` depths; `dst`
    // holds `full` groups of `w` lines.
    unsafe {
        for g in 0..full {
            let rows: [*const u8; 4] =
                std::array::from_fn(|t| src.offset((4 * g + t) as isize * ks));
            for ch in 0..chunks {
                let i0 = 16 * ch;
                let x: [__m128i; 4] =
                    std::array::from_fn(|t| _mm_loadu_si128(rows[t].add(i0) as *const _));
                let lo01 = _mm_unpacklo_epi8(x[0], x[1]);
                let hi01 = _mm_unpackhi_epi8(x[0], x[1]);
                let lo23 = _mm_unpacklo_epi8(x[2], x[3]);
                let hi23 = _mm_unpackhi_epi8(x[2], x[3]);
                let d = dst.add((g * w + i0) * 4) as *mut __m128i;
                _mm_storeu_si128(d, _mm_unpacklo_epi16(lo01, lo23));
                _mm_storeu_si128(d.add(1), _mm_unpackhi_epi16(lo01, lo23));
                _mm_storeu_si128(d.add(2), _mm_unpacklo_epi16(hi01, hi23));
                _mm_storeu_si128(d.add(3), _mm_unpackhi_epi16(hi01, hi23));
            }
        }
    }
    chunks * 16
}

/// `super::pack`'s byte layout for depths contiguous in memory (`ks = 1`:
/// a row-major `a`, a column-major `b`), where each group is one 32-bit
/// word of its line: 4 lines × 4 groups at a time, four 16-byte loads
/// transposed as a 4×4 matrix of words and four 16-byte stores, where word
/// by word takes 16 of each. Groups past the last 4 are copied word by
/// word. Returns how many lines it packed (a multiple of 4); the caller
/// packs the rest.
///
/// # Safety
/// As `super::pack` (with `ks = 1`); SSE2 is part of x86-64.
pub(super) unsafe fn transpose_words(
    dst: *mut u8,
    src: *const u8,
    ls: isize,
    len: usize,
    w: usize,
    full: usize,
) -> usize {
    let lines = len / 4 * 4;
    let groups = full / 4 * 4;
    // SAFETY (whole body): lines `< len` hold `4 · full` depths; `dst`
    // holds `full` groups of `w` lines.
    unsafe {
        for i0 in (0..lines).step_by(4) {
            let line: [*const u8; 4] = std::array::from_fn(|t| src.offset((i0 + t) as isize * ls));
            for g0 in (0..groups).step_by(4) {
                let x: [__m128i; 4] =
                    std::array::from_fn(|t| _mm_loadu_si128(line[t].add(4 * g0) as *const _));
                let t0 = _mm_unpacklo_epi32(x[0], x[1]);
                let t1 = _mm_unpacklo_epi32(x[2], x[3]);
                let t2 = _mm_unpackhi_epi32(x[0], x[1]);
                let t3 = _mm_unpackhi_epi32(x[2], x[3]);
                let y = [
                    _mm_unpacklo_epi64(t0, t1),
                    _mm_unpackhi_epi64(t0, t1),
                    _mm_unpacklo_epi64(t2, t3),
                    _mm_unpackhi_epi64(t2, t3),
                ];
                for (q, v) in y.into_iter().enumerate() {
                    _mm_storeu_si128(dst.add(((g0 + q) * w + i0) * 4) as *mut _, v);
                }
            }
            for g in groups..full {
                for (t, l) in line.iter().enumerate() {
                    let v = std::ptr::read_unaligned(l.add(4 * g) as *const u32);
                    std::ptr::write_unaligned(dst.add((g * w + i0 + t) * 4) as *mut u32, v);
                }
            }
        }
    }
    lines
}

/// `super::pack` for the AVX2 kernel: pairs of depths widened to `i16`
/// (`u8` zero-extended when `unsigned`, else `i8` sign-extended), element
/// `(i, p)` at `dst[((p / 2) * w + i) * 2 + p % 2]`, lines `len..w` and
/// depth `kc` (when odd) zero. Lines contiguous in memory (`ls = 1`) go 8
/// at a time: two 8-byte loads widened and interleaved by 16 bits.
///
/// # Safety
/// The CPU has AVX2; otherwise as `super::pack`.
#[target_feature(enable = "avx2")]
#[allow(clippy::too_many_arguments)]
pub(super) unsafe fn pack_words(
    unsigned: bool,
    dst: *mut i16,
    src: *const u8,
    ls: isize,
    ks: isize,
    len: usize,
    w: usize,
    kc: usize,
) {
    let full = kc / 2;
    let conv = |x: u8| if unsigned { x as i16 } else { x as i8 as i16 };
    // SAFETY (whole body): in bounds by the caller.
    unsafe {
        if len < w || !kc.is_multiple_of(2) {
            std::ptr::write_bytes(dst, 0, kc.div_ceil(2) * w * 2);
        }
        let mut done = 0;
        if ks == 1 {
            for i in 0..len {
                let s = src.offset(i as isize * ls);
                for g in 0..full {
                    let d = dst.add((g * w + i) * 2);
                    *d = conv(*s.add(2 * g));
                    *d.add(1) = conv(*s.add(2 * g + 1));
                }
            }
            done = len;
        } else if ls == 1 {
            let widen = |p: *const u8| {
                let x = _mm_loadl_epi64(p as *const _);
                if unsigned {
                    _mm_cvtepu8_epi16(x)
                } else {
                    _mm_cvtepi8_epi16(x)
                }
            };
            let chunks = len / 8;
            for g in 0..full {
                let (r0, r1) = (
                    src.offset(2 * g as isize * ks),
                    src.offset((2 * g + 1) as isize * ks),
                );
                for ch in 0..chunks {
                    let i0 = 8 * ch;
                    let (x0, x1) = (widen(r0.add(i0)), widen(r1.add(i0)));
                    let d = dst.add((g * w + i0) * 2) as *mut __m128i;
                    _mm_storeu_si128(d, _mm_unpacklo_epi16(x0, x1));
                    _mm_storeu_si128(d.add(1), _mm_unpackhi_epi16(x0, x1));
                }
            }
            done = chunks * 8;
        }
        for i in done..len {
            let s = src.offset(i as isize * ls);
            for g in 0..full {
                let d = dst.add((g * w + i) * 2);
                *d = conv(*s.offset(2 * g as isize * ks));
                *d.add(1) = conv(*s.offset((2 * g + 1) as isize * ks));
            }
        }
        if !kc.is_multiple_of(2) {
            for i in 0..len {
                *dst.add((full * w + i) * 2) =
                    conv(*src.offset(i as isize * ls + (kc - 1) as isize * ks));
            }
        }
    }
}
