//! Allocation-free 8-bit integer GEMM: `c = a @ b` (or `c += a @ b`) with
//! `a: u8 [m, k]`, `b: i8 [k, n]` and `c: i32 [m, n]`, for arbitrary element
//! strides, BLIS-style like [`crate::sgemm`]. The first kernel of issue 16
//! (compression): quantized dense layers and convolutions multiply
//! unsigned activations by signed weights.
//!
//! Why `u8 × i8`: it is what AVX-512 VNNI's `vpdpbusd` multiplies (four
//! consecutive `u8 × i8` products summed into each `i32` lane, 64 MACs per
//! instruction), so a quantized network's activations are `u8` with a zero
//! point and its weights symmetric `i8`. The zero point is not this
//! kernel's job: `(a - za) @ b = a @ b - za · colsum(b)`, and the compiler
//! subtracts `za ·` [`column_sums`] in an epilogue.
//!
//! `b` is packed into `NR`-column panels of a `KC × NC` block and `a` into
//! `MR`-row panels of an `MC × KC` block, both inside a caller-owned
//! [`Scratch`]; a register-blocked micro-kernel computes each `MR × NR`
//! tile of `c`. Packing also regroups `k`: the VNNI and scalar kernels read
//! groups of 4 consecutive depths of one row (or column) as one 32-bit word
//! (`vpdpbusd`'s operand layout); the AVX2 kernel reads pairs of depths
//! widened to `i16` (`vpmaddwd`'s layout). `k` is padded with zeros to a
//! whole group, which adds nothing. The kernel is chosen once, in
//! [`Scratch::new`], from the CPU features: AVX-512 VNNI (8×32 tile, 16 zmm
//! accumulators), AVX2 (6×16, 12 ymm accumulators) or portable scalar code
//! (4×4). Edge tiles are computed on zero-padded panels and only the valid
//! part is written back. [`igemm`] never allocates.
//!
//! # Exactness and overflow
//! Every kernel computes in `i32` with wrapping additions (what `vpdpbusd`
//! and `vpaddd` do), so all of them return bit-identical results: the true
//! sum modulo 2³². That is the exact value whenever the true result fits in
//! `i32`, which is guaranteed for `k ≤` [`MAX_EXACT_K`] = 65793 (`255 ·
//! 128 · k ≤ 2³¹`; so for every `k < 2¹⁶`) and, in accumulate mode, when
//! `c + a @ b` fits. `k` is split into blocks of at most [`KC`] = 512
//! depths, each summed in registers (at most `512 · 255 · 128 < 2²⁴` in
//! magnitude, far from overflow) and added into `c` with a wrapping add,
//! so no register sum can overflow or saturate whatever `k` is. Nothing
//! saturates elsewhere either: AVX2's `vpmaddubsw` (which would saturate
//! two-product sums at `i16`) is deliberately not used; the AVX2 kernel
//! widens to `i16` and uses the exact `vpmaddwd`.
//!
//! # Operands held as words
//! [`igemm_words`] multiplies byte values held one per `i32` word (how the
//! JIT stores `i8`/`u8` for now), of any sign mix: it narrows them into
//! byte buffers of its thread, shifts `i8 @ x` and `x @ u8` into `u8 @ i8`
//! and corrects with row and column sums (see `words.rs`).

use std::alloc::{alloc_zeroed, dealloc, Layout};

mod words;
pub use words::{igemm_words, Signs};

/// Depth of a packed block (upper bound; `k` is split into even blocks,
/// each a multiple of 4 but the last). A 32-column VNNI panel of `b` is
/// then 16 KiB, half of the L1 data cache beside the 4 KiB `a` panel.
pub const KC: usize = 512;
/// Rows of a packed `a` block (a multiple of every `MR`: 8, 6 and 4).
pub const MC: usize = 144;
/// Columns of a packed `b` block (a multiple of every `NR`: 32, 16 and 4).
pub const NC: usize = 1024;

/// The largest `k` for which every product is exact for all inputs:
/// `|Σ a·b| ≤ 255 · 128 · k ≤ 2³¹` (the most negative sum is `255 · -128
/// · k`, which still fits at `-2³¹`). Larger `k` is computed (modulo 2³²,
/// identically by every kernel) and is exact when the result fits.
pub const MAX_EXACT_K: usize = (1usize << 31) / (255 * 128);

/// Which micro-kernel a [`Scratch`] drives.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Isa {
    /// AVX-512F + BW + VNNI (`vpdpbusd`), 8×32 tile.
    Vnni,
    /// AVX2 (`vpmaddwd` on `i16`-widened operands), 6×16 tile.
    Avx2,
    /// Portable scalar code, 4×4 tile.
    Scalar,
}

impl Isa {
    /// The best kernel this CPU supports.
    pub fn detect() -> Isa {
        [Isa::Vnni, Isa::Avx2]
            .into_iter()
            .find(|isa| isa.supported())
            .unwrap_or(Isa::Scalar)
    }

    /// Whether this CPU can run the kernel.
    pub fn supported(self) -> bool {
        match self {
            Isa::Scalar => true,
            #[cfg(target_arch = "x86_64")]
            Isa::Vnni => {
                is_x86_feature_detected!("avx512f")
                    && is_x86_feature_detected!("avx512bw")
                    && is_x86_feature_detected!("avx512vnni")
            }
            #[cfg(target_arch = "x86_64")]
            Isa::Avx2 => is_x86_feature_detected!("avx2"),
            #[cfg(not(target_arch = "x86_64"))]
            _ => false,
        }
    }

    /// `(MR, NR)`: the register tile.
    pub fn tile(self) -> (usize, usize) {
        match self {
            Isa::Vnni => (8, 32),
            Isa::Avx2 => (6, 16),
            Isa::Scalar => (4, 4),
        }
    }

    /// Depths per packed group: 4 bytes (VNNI, scalar) or 2 `i16` (AVX2).
    fn group(self) -> usize {
        match self {
            Isa::Avx2 => 2,
            _ => 4,
        }
    }
}

const ALIGN: usize = 64;
/// Bytes of the packed `a` block (room for `i16` elements).
const A_BYTES: usize = MC * KC * 2;
/// Bytes of the packed `b` block (room for `i16` elements).
const B_BYTES: usize = KC * NC * 2;

fn layout(bytes: usize) -> Layout {
    Layout::from_size_align(bytes, ALIGN).expect("scratch layout")
}

/// Packing space for [`igemm`], 64-byte aligned, allocated once (about
/// 1.1 MiB). One per thread of calls (it is mutated by every call).
pub struct Scratch {
    a: *mut u8,
    b: *mut u8,
    isa: Isa,
}

// SAFETY: `Scratch` owns its buffers exclusively; `&mut` access is required
// to use them.
unsafe impl Send for Scratch {}
// SAFETY: no interior mutability through `&Scratch`.
unsafe impl Sync for Scratch {}

impl Scratch {
    /// Packing space for the best kernel of this CPU.
    pub fn new() -> Scratch {
        Scratch::with_isa(Isa::detect())
    }

    /// Packing space driving a given kernel. Panics if the CPU cannot run
    /// it, so that a `#[target_feature]` kernel is never reached on a CPU
    /// without the feature.
    pub fn with_isa(isa: Isa) -> Scratch {
        assert!(isa.supported(), "igemm: {isa:?} not supported on this CPU");
        // SAFETY: non-zero sizes.
        let (a, b) = unsafe { (alloc_zeroed(layout(A_BYTES)), alloc_zeroed(layout(B_BYTES))) };
        if a.is_null() || b.is_null() {
            std::alloc::handle_alloc_error(layout(B_BYTES));
        }
        Scratch { a, b, isa }
    }

    /// The kernel this scratch drives.
    pub fn isa(&self) -> Isa {
        self.isa
    }
}

impl Default for Scratch {
    fn default() -> Scratch {
        Scratch::new()
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        // SAFETY: allocated in `with_isa` with these layouts.
        unsafe {
            dealloc(self.a, layout(A_BYTES));
            dealloc(self.b, layout(B_BYTES));
        }
    }
}

impl std::fmt::Debug for Scratch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Scratch").field("isa", &self.isa).finish()
    }
}

/// The sums of `b`'s columns, `out[j] = Σ_p b[p][j]`, for the zero-point
/// correction of an asymmetric `a`: `(a - za) @ b = a @ b - za ·
/// colsum(b)` (broadcast over rows). Weights are constant, so the compiler
/// computes this once per weight tensor, not per call.
///
/// `b` is `k × n` at element strides `(rs, cs)` into `data`, offsets
/// relative to `data[0]` (so both strides must be non-negative). Exact
/// for `k ≤ 2²⁴` (`128 · k < 2³¹`).
pub fn column_sums(data: &[i8], k: usize, n: usize, rs: isize, cs: isize) -> Vec<i32> {
    let mut out = vec![0; n];
    column_sums_into(&mut out, data, k, rs, cs);
    out
}

/// [`column_sums`] into `out` (`n = out.len()` columns), allocation-free.
pub fn column_sums_into(out: &mut [i32], data: &[i8], k: usize, rs: isize, cs: isize) {
    let n = out.len();
    if n == 0 {
        return;
    }
    if k == 0 {
        out.fill(0);
        return;
    }
    assert!(rs >= 0 && cs >= 0, "column_sums: negative strides");
    let last = (k - 1) as isize * rs + (n - 1) as isize * cs;
    assert!(
        (last as usize) < data.len(),
        "column_sums: {k}×{n} at strides ({rs}, {cs}) needs {} elements, got {}",
        last + 1,
        data.len()
    );
    out.fill(0);
    for p in 0..k {
        let row = p as isize * rs;
        for (j, o) in out.iter_mut().enumerate() {
            *o += data[(row + j as isize * cs) as usize] as i32;
        }
    }
}

/// `c = a @ b` with `a: u8 m×k`, `b: i8 k×n`, `c: i32 m×n`; strides in
/// elements (any of them may be 1: transposed views are fine). See the
/// module documentation for exactness.
///
/// # Safety
/// Every element of the three views must be in bounds for its strides;
/// `c` must not overlap `a` or `b`, and no two elements of `c` may alias.
#[allow(clippy::too_many_arguments)]
pub unsafe fn igemm(
    m: usize,
    n: usize,
    k: usize,
    c: *mut i32,
    c_rs: isize,
    c_cs: isize,
    a: *const u8,
    a_rs: isize,
    a_cs: isize,
    b: *const i8,
    b_rs: isize,
    b_cs: isize,
    scratch: &mut Scratch,
) {
    // SAFETY: forwarded contract.
    unsafe {
        igemm_ex(
            m, n, k, c, c_rs, c_cs, a, a_rs, a_cs, b, b_rs, b_cs, false, scratch,
        )
    }
}

/// Products of at least this many operations (`2·m·n·k`) are split over
/// the thread pool by [`igemm_threads`]: four times [`crate::sgemm`]'s
/// measured threshold, because the int8 kernel does about four times the
/// work per cycle while the hand-off costs the same. Not yet measured for
/// int8 on an idle machine (`cargo bench -p nnc-kernels --bench igemm`
/// prints both thread counts).
pub const PARALLEL_OPS: usize = 1 << 22;

/// [`igemm_ex`] split over the thread pool ([`crate::threads`]) when the
/// product is large enough: the columns of `c` (or its rows, when the
/// columns are too few tiles or split less evenly) in one contiguous
/// range of whole tiles per thread, each with its own packing space.
/// Integer sums are exact, so results never depend on the thread count.
///
/// # Safety
/// As [`igemm`].
#[allow(clippy::too_many_arguments)]
pub unsafe fn igemm_threads(
    m: usize,
    n: usize,
    k: usize,
    c: *mut i32,
    c_rs: isize,
    c_cs: isize,
    a: *const u8,
    a_rs: isize,
    a_cs: isize,
    b: *const i8,
    b_rs: isize,
    b_cs: isize,
    accumulate: bool,
    scratch: &mut Scratch,
) {
    let threads = if crate::threads::in_parallel() {
        1
    } else {
        crate::threads::threads()
    };
    let ops = 2usize.saturating_mul(m).saturating_mul(n).saturating_mul(k);
    let (mr, nr) = scratch.isa.tile();
    let worst_share = |len, unit| crate::tile_split::worst_share(len, unit, threads);
    let columns_ok = n.div_ceil(nr) >= threads;
    let rows_ok = m.div_ceil(mr) >= threads;
    let by_columns = columns_ok && (!rows_ok || worst_share(n, nr) <= worst_share(m, mr).max(1.15));
    if threads < 2 || ops < PARALLEL_OPS || !(by_columns || rows_ok) {
        // SAFETY: forwarded contract.
        return unsafe {
            igemm_ex(
                m, n, k, c, c_rs, c_cs, a, a_rs, a_cs, b, b_rs, b_cs, accumulate, scratch,
            )
        };
    }
    let split = crate::tile_split::TileSplit::new(by_columns, (m, n), (mr, nr), threads);
    let isa = scratch.isa;
    let main_scratch = scratch as *mut Scratch as usize;
    let (c, a, b) = (c as usize, a as usize, b as usize);
    let task = move |t: usize| {
        let Some(block) = split.block(t, (c_rs, c_cs), a_rs, b_cs) else {
            return;
        };
        let crate::tile_split::Block {
            rows,
            cols,
            c_at,
            a_at,
            b_at,
        } = block;
        let part = |scratch: &mut Scratch| {
            let (c, a, b) = (c as *mut i32, a as *const u8, b as *const i8);
            // SAFETY: a sub-block of the caller's views, in bounds by its
            // contract; the blocks of different tasks do not overlap in `c`.
            unsafe {
                igemm_ex(
                    rows,
                    cols,
                    k,
                    c.offset(c_at),
                    c_rs,
                    c_cs,
                    a.offset(a_at),
                    a_rs,
                    a_cs,
                    b.offset(b_at),
                    b_rs,
                    b_cs,
                    accumulate,
                    scratch,
                )
            }
        };
        if t == 0 {
            // SAFETY: only task 0 uses the caller's packing space (on
            // whichever thread runs it), and the caller waits for it.
            part(unsafe { &mut *(main_scratch as *mut Scratch) });
        } else {
            with_thread_scratch(isa, part);
        }
    };
    crate::threads::run(threads, &task);
}

thread_local! {
    /// Packing space of a thread that runs a task of a split product, made
    /// on its first product.
    static THREAD_SCRATCH: std::cell::RefCell<Option<Scratch>> =
        const { std::cell::RefCell::new(None) };
}

/// Runs `f` with this thread's own packing space for `isa`.
pub fn with_thread_scratch<R>(isa: Isa, f: impl FnOnce(&mut Scratch) -> R) -> R {
    THREAD_SCRATCH.with(|cell| {
        let mut slot = cell.borrow_mut();
        if slot.as_ref().is_none_or(|s| s.isa != isa) {
            *slot = Some(Scratch::with_isa(isa));
        }
        f(slot.as_mut().expect("set above"))
    })
}

/// [`igemm`] that adds into `c` when `accumulate` (`c += a @ b`, wrapping
/// like the products) and overwrites it otherwise.
///
/// # Safety
/// As [`igemm`].
#[allow(clippy::too_many_arguments)]
pub unsafe fn igemm_ex(
    m: usize,
    n: usize,
    k: usize,
    c: *mut i32,
    c_rs: isize,
    c_cs: isize,
    a: *const u8,
    a_rs: isize,
    a_cs: isize,
    b: *const i8,
    b_rs: isize,
    b_cs: isize,
    accumulate: bool,
    scratch: &mut Scratch,
) {
    if m == 0 || n == 0 {
        return;
    }
    if k == 0 {
        if !accumulate {
            for i in 0..m {
                for j in 0..n {
                    // SAFETY: in bounds by the contract.
                    unsafe { *c.offset(i as isize * c_rs + j as isize * c_cs) = 0 };
                }
            }
        }
        return;
    }
    let b = b as *const u8;
    let isa = scratch.isa;
    let (mr, nr) = isa.tile();
    let g = isa.group();
    // Element size in the packed buffers: bytes, or `i16` for AVX2.
    let esize = if isa == Isa::Avx2 { 2 } else { 1 };
    let nblocks_k = k.div_ceil(KC);
    // Even blocks, each a whole number of 4-deep groups (KC is one).
    let kc_even = k.div_ceil(nblocks_k).next_multiple_of(4).min(KC);
    let (abuf, bbuf) = (scratch.a, scratch.b);

    let mut jc = 0;
    while jc < n {
        let nc = NC.min(n - jc);
        let mut pc = 0;
        while pc < k {
            let kc = kc_even.min(k - pc);
            let kp = kc.next_multiple_of(g);
            let groups = kp / g;
            let add = accumulate || pc > 0;
            // Pack b[pc.., jc..] into NR-column panels of kp × nr elements.
            let mut jr = 0;
            while jr < nc {
                let len = nr.min(nc - jr);
                // SAFETY: source in bounds by contract; destination within
                // the KC×NC block (nc ≤ NC, NC a multiple of nr, kp ≤ KC).
                unsafe {
                    pack(
                        isa,
                        false,
                        bbuf.wrapping_add(jr * kp * esize),
                        b.offset(pc as isize * b_rs + (jc + jr) as isize * b_cs),
                        b_cs,
                        b_rs,
                        len,
                        nr,
                        kc,
                    )
                };
                jr += nr;
            }
            let mut ic = 0;
            while ic < m {
                let mc = MC.min(m - ic);
                let mut ir = 0;
                while ir < mc {
                    let len = mr.min(mc - ir);
                    // SAFETY: as above, within the MC×KC block.
                    unsafe {
                        pack(
                            isa,
                            true,
                            abuf.wrapping_add(ir * kp * esize),
                            a.offset((ic + ir) as isize * a_rs + pc as isize * a_cs),
                            a_rs,
                            a_cs,
                            len,
                            mr,
                            kc,
                        )
                    };
                    ir += mr;
                }
                let mut jr = 0;
                while jr < nc {
                    let nlen = nr.min(nc - jr);
                    let bp = bbuf.wrapping_add(jr * kp * esize) as *const u8;
                    let mut ir = 0;
                    while ir < mc {
                        let mlen = mr.min(mc - ir);
                        let ap = abuf.wrapping_add(ir * kp * esize) as *const u8;
                        let t = Tile {
                            // The tile's corner is in bounds by contract.
                            c: c.wrapping_offset(
                                (ic + ir) as isize * c_rs + (jc + jr) as isize * c_cs,
                            ),
                            rs: c_rs,
                            cs: c_cs,
                            m: mlen,
                            n: nlen,
                            add,
                        };
                        // SAFETY: panels packed above hold `groups` groups
                        // of MR rows and NR columns; the tile of `c` is in
                        // bounds for (mlen, nlen); the ISA was checked when
                        // the scratch was made.
                        unsafe {
                            match isa {
                                #[cfg(target_arch = "x86_64")]
                                Isa::Vnni => x86::tile_vnni(groups, ap, bp, &t),
                                #[cfg(target_arch = "x86_64")]
                                Isa::Avx2 => {
                                    x86::tile_avx2(groups, ap as *const i16, bp as *const i16, &t)
                                }
                                _ => kernel_scalar(groups, ap, bp, &t),
                            }
                        }
                        ir += mr;
                    }
                    jr += nr;
                }
                ic += MC;
            }
            pc += kc;
        }
        jc += NC;
    }
}

/// Where a micro-kernel writes: `m × n` valid elements of `c`.
struct Tile {
    c: *mut i32,
    rs: isize,
    cs: isize,
    m: usize,
    n: usize,
    add: bool,
}

impl Tile {
    /// Write the valid part of a row-major `w`-wide tile buffer.
    ///
    /// # Safety
    /// The tile's `m × n` elements at its strides are in bounds of `c`;
    /// `buf` holds at least `m` rows of `w ≥ n` elements.
    #[inline(always)]
    unsafe fn write_from(&self, buf: &[i32], w: usize) {
        for i in 0..self.m {
            for j in 0..self.n {
                // SAFETY: (i, j) valid by the caller's contract.
                unsafe {
                    let p = self.c.offset(i as isize * self.rs + j as isize * self.cs);
                    let v = buf[i * w + j];
                    *p = if self.add { (*p).wrapping_add(v) } else { v };
                }
            }
        }
    }
}

/// Packs `len ≤ w` lines of `kc` elements (line `i`, depth `p` at
/// `src[i * ls + p * ks]`) into a panel of `kc.next_multiple_of(G) / G`
/// groups: element `(i, p)` at `dst[((p / G) * w + i) * G + p % G]`.
/// Lines `len..w` and depths past `kc` are zero, so they add nothing.
/// `G` and the element type follow the ISA: raw bytes in groups of 4
/// (VNNI, scalar), or `i16` in pairs (AVX2), zero-extended from `u8` for
/// `a` (`unsigned`) and sign-extended from `i8` for `b`.
///
/// # Safety
/// `dst` holds the panel; every `src[i * ls + p * ks]` for `i < len`,
/// `p < kc` is in bounds.
#[allow(clippy::too_many_arguments)]
unsafe fn pack(
    isa: Isa,
    unsigned: bool,
    dst: *mut u8,
    src: *const u8,
    ls: isize,
    ks: isize,
    len: usize,
    w: usize,
    kc: usize,
) {
    // SAFETY (whole body): in bounds by the caller.
    unsafe {
        if isa == Isa::Avx2 {
            #[cfg(target_arch = "x86_64")]
            return x86::pack_words(unsigned, dst as *mut i16, src, ls, ks, len, w, kc);
        }
        let _ = unsigned;
        let full = kc / 4;
        let rem = kc % 4;
        if len < w || rem != 0 {
            std::ptr::write_bytes(dst, 0, kc.div_ceil(4) * w * 4);
        }
        let mut done = 0;
        if ks == 1 {
            // Each group is one unaligned 32-bit word of the source line.
            #[cfg(target_arch = "x86_64")]
            let from = x86::transpose_words(dst, src, ls, len, w, full);
            #[cfg(not(target_arch = "x86_64"))]
            let from = 0;
            for i in from..len {
                let s = src.offset(i as isize * ls);
                for g in 0..full {
                    let v = std::ptr::read_unaligned(s.add(4 * g) as *const u32);
                    std::ptr::write_unaligned(dst.add((g * w + i) * 4) as *mut u32, v);
                }
            }
            done = len;
        } else if ls == 1 {
            #[cfg(target_arch = "x86_64")]
            {
                done = x86::interleave_bytes(dst, src, ks, len, w, full);
            }
        }
        for i in done..len {
            let s = src.offset(i as isize * ls);
            for g in 0..full {
                for t in 0..4 {
                    *dst.add((g * w + i) * 4 + t) = *s.offset((4 * g + t) as isize * ks);
                }
            }
        }
        for i in 0..len {
            let s = src.offset(i as isize * ls);
            for t in 0..rem {
                *dst.add((full * w + i) * 4 + t) = *s.offset((4 * full + t) as isize * ks);
            }
        }
    }
}

/// Portable 4×4 kernel over byte panels in groups of 4 (the VNNI
/// layout), with the same wrapping `i32` sums as `vpdpbusd`.
///
/// # Safety
/// `a` and `b` hold `groups` groups of a 4-row and a 4-column panel; `t`
/// is in bounds of `c`.
unsafe fn kernel_scalar(groups: usize, a: *const u8, b: *const u8, t: &Tile) {
    let mut acc = [0i32; 16];
    for g in 0..groups {
        // SAFETY: each group is 16 bytes of each panel.
        let (av, bv) = unsafe {
            (
                std::slice::from_raw_parts(a.add(16 * g), 16),
                std::slice::from_raw_parts(b.add(16 * g), 16),
            )
        };
        for i in 0..4 {
            for j in 0..4 {
                // At most 4 · 255 · 128 in magnitude: no overflow before
                // the wrapping add.
                let dot: i32 = (0..4)
                    .map(|q| av[4 * i + q] as i32 * bv[4 * j + q] as i8 as i32)
                    .sum();
                acc[i * 4 + j] = acc[i * 4 + j].wrapping_add(dot);
            }
        }
    }
    // SAFETY: tile bounds by contract.
    unsafe { t.write_from(&acc, 4) };
}

#[cfg(target_arch = "x86_64")]
mod x86;
