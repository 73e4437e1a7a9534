//! Allocation-free single-precision GEMM: `c = a @ b` (or `c += a @ b`) for
//! arbitrary element strides, BLIS-style.
//!
//! `b` is packed into `NR`-column panels of a `KC × NC` block and `a` into
//! `MR`-row panels of an `MC × KC` block, both inside a caller-owned
//! [`Scratch`]; a register-blocked micro-kernel then computes each
//! `MR × NR` tile of `c`. The micro-kernel is chosen once, in
//! [`Scratch::new`], from the CPU features: AVX-512F (8×32 tile, 16 zmm
//! accumulators), AVX2+FMA (6×16, 12 ymm accumulators) or a portable scalar
//! kernel (4×4). Edge tiles are computed on zero-padded panels and only the
//! valid part is written back. [`sgemm`] never allocates.

use std::alloc::{alloc_zeroed, dealloc, Layout};

/// Depth of a packed block (upper bound; `k` is split into even blocks).
pub const KC: usize = 256;
/// Rows of a packed `a` block (a multiple of every `MR`: 8, 6 and 4).
pub const MC: usize = 144;
/// Columns of a packed `b` block (a multiple of every `NR`: 32, 16 and 4).
pub const NC: usize = 1024;

/// Which micro-kernel a [`Scratch`] drives.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Isa {
    /// AVX-512F, 8×32 tile.
    Avx512,
    /// AVX2 + FMA, 6×16 tile.
    Avx2,
    /// Portable scalar code, 4×4 tile.
    Scalar,
}

impl Isa {
    /// The best kernel this CPU supports.
    pub fn detect() -> Isa {
        #[cfg(target_arch = "x86_64")]
        {
            if is_x86_feature_detected!("avx512f") && is_x86_feature_detected!("avx2") {
                return Isa::Avx512;
            }
            if is_x86_feature_detected!("avx2") && is_x86_feature_detected!("fma") {
                return Isa::Avx2;
            }
        }
        Isa::Scalar
    }

    /// Whether this CPU can run the kernel.
    pub fn supported(self) -> bool {
        match self {
            Isa::Scalar => true,
            #[cfg(target_arch = "x86_64")]
            Isa::Avx512 => is_x86_feature_detected!("avx512f") && is_x86_feature_detected!("avx2"),
            #[cfg(target_arch = "x86_64")]
            Isa::Avx2 => is_x86_feature_detected!("avx2") && is_x86_feature_detected!("fma"),
            #[cfg(not(target_arch = "x86_64"))]
            _ => false,
        }
    }

    /// `(MR, NR)`: the register tile.
    fn tile(self) -> (usize, usize) {
        match self {
            Isa::Avx512 => (8, 32),
            Isa::Avx2 => (6, 16),
            Isa::Scalar => (4, 4),
        }
    }
}

const ALIGN: usize = 64;

/// Packing space for [`sgemm`], 64-byte aligned, allocated once.
/// One per thread of calls (it is mutated by every call).
pub struct Scratch {
    a: *mut f32,
    b: *mut f32,
    isa: Isa,
}

// SAFETY: `Scratch` owns its buffers exclusively; `&mut` access is required
// to use them.
unsafe impl Send for Scratch {}
// SAFETY: no interior mutability through `&Scratch`.
unsafe impl Sync for Scratch {}

const A_LEN: usize = MC * KC;
const B_LEN: usize = KC * NC;

fn layout(len: usize) -> Layout {
    Layout::from_size_align(len * 4, ALIGN).expect("scratch layout")
}

impl Scratch {
    /// Packing space for the best kernel of this CPU (about 1.1 MiB).
    pub fn new() -> Scratch {
        Scratch::with_isa(Isa::detect())
    }

    /// Packing space driving a given kernel. Panics if the CPU cannot run it.
    pub fn with_isa(isa: Isa) -> Scratch {
        assert!(isa.supported(), "sgemm: {isa:?} not supported on this CPU");
        // SAFETY: non-zero sizes.
        let (a, b) = unsafe {
            (
                alloc_zeroed(layout(A_LEN)) as *mut f32,
                alloc_zeroed(layout(B_LEN)) as *mut f32,
            )
        };
        if a.is_null() || b.is_null() {
            std::alloc::handle_alloc_error(layout(B_LEN));
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
            dealloc(self.a as *mut u8, layout(A_LEN));
            dealloc(self.b as *mut u8, layout(B_LEN));
        }
    }
}

impl std::fmt::Debug for Scratch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Scratch").field("isa", &self.isa).finish()
    }
}

/// `c = a @ b` with `a: m×k`, `b: k×n`, `c: m×n`; strides in elements
/// (either stride of each operand may be 1: transposed views are fine).
///
/// # Safety
/// Every element of the three views must be in bounds for its strides;
/// `c` must not overlap `a` or `b`, and no two elements of `c` may alias.
#[allow(clippy::too_many_arguments)]
pub unsafe fn sgemm(
    m: usize,
    n: usize,
    k: usize,
    c: *mut f32,
    c_rs: isize,
    c_cs: isize,
    a: *const f32,
    a_rs: isize,
    a_cs: isize,
    b: *const f32,
    b_rs: isize,
    b_cs: isize,
    scratch: &mut Scratch,
) {
    // SAFETY: forwarded contract.
    unsafe {
        sgemm_ex(
            m, n, k, c, c_rs, c_cs, a, a_rs, a_cs, b, b_rs, b_cs, false, scratch,
        )
    }
}

/// Products of at least this many FLOPs (`2·m·n·k`) are split over the
/// thread pool. Measured on the 2-core Zen 4 (`cargo bench -p nnc-codegen
/// --bench sgemm`, threads 1 vs 2): the MLP's products (2–51 MFLOP) run
/// 1.6–2.0× faster on two threads, LeNet's 1.3 MFLOP ones 0.9–1.6×; with
/// the threshold at 0.26 MFLOP, LeNet's conv2 weight gradient (64
/// products of 0.48 MFLOP each) ran 3.5× slower: per split, the hand-off
/// and the second thread's packing cost more than half a small product.
pub const PARALLEL_FLOPS: usize = 1 << 20;

/// [`sgemm_ex`] split over the thread pool ([`crate::threads`]) when the
/// product is large enough: the columns of `c` (or its rows, when that
/// duplicates less packing) in one contiguous range per thread, each
/// computed with its own packing space exactly as the one-thread call
/// computes them, so results do not depend on the thread count.
///
/// # Safety
/// As [`sgemm`].
#[allow(clippy::too_many_arguments)]
pub unsafe fn sgemm_threads(
    m: usize,
    n: usize,
    k: usize,
    c: *mut f32,
    c_rs: isize,
    c_cs: isize,
    a: *const f32,
    a_rs: isize,
    a_cs: isize,
    b: *const f32,
    b_rs: isize,
    b_cs: isize,
    accumulate: bool,
    scratch: &mut Scratch,
) {
    // Inside a split kernel's task the other threads are busy already.
    let threads = if crate::threads::in_parallel() {
        1
    } else {
        crate::threads::threads()
    };
    let flops = 2usize.saturating_mul(m).saturating_mul(n).saturating_mul(k);
    // Split along whole register tiles. The columns by default (each
    // thread then packs its own panels of `b` and re-reads all of `a`);
    // the rows when the columns split unevenly (more than 15% over an even
    // share: 100 columns in 32-wide tiles give 64 + 36) and the rows split
    // better. `cargo bench -p nnc-kernels --bench sgemm`, forcing each
    // split: columns won or tied on 17 of 21 shapes; the rows won where
    // `n` is a few tiles (84, 100, 120 columns).
    let (mr, nr) = scratch.isa.tile();
    let worst_share = |len, unit| crate::tile_split::worst_share(len, unit, threads);
    let columns_ok = n.div_ceil(nr) >= threads;
    let rows_ok = m.div_ceil(mr) >= threads;
    let (cols_share, rows_share) = (worst_share(n, nr), worst_share(m, mr));
    let dots = dots_form(scratch.isa, m, k, a_cs, b_rs);
    let rows_even = rows_ok && rows_share <= 1.15;
    let by_columns = columns_ok
        && !(dots && rows_even)
        && (cols_share <= 1.15 || !rows_ok || cols_share <= rows_share);
    let by_rows = !by_columns && rows_ok;
    if threads < 2 || flops < PARALLEL_FLOPS || !(by_columns || by_rows) {
        // SAFETY: forwarded contract.
        return unsafe {
            sgemm_ex(
                m, n, k, c, c_rs, c_cs, a, a_rs, a_cs, b, b_rs, b_cs, accumulate, scratch,
            )
        };
    }
    // `dots` is decided on the whole product so that every thread count
    // computes each element the same way.
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
            let (c, a, b) = (c as *mut f32, a as *const f32, b as *const f32);
            // SAFETY: a sub-block of the caller's views, in bounds by its
            // contract; the blocks of different tasks do not overlap in `c`.
            unsafe {
                sgemm_in(
                    dots,
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
    /// Packing space of a thread that runs a task of a split kernel, made
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

/// [`sgemm`] that adds into `c` when `accumulate` (`c += a @ b`) and
/// overwrites it otherwise.
///
/// # Safety
/// As [`sgemm`].
#[allow(clippy::too_many_arguments)]
pub unsafe fn sgemm_ex(
    m: usize,
    n: usize,
    k: usize,
    c: *mut f32,
    c_rs: isize,
    c_cs: isize,
    a: *const f32,
    a_rs: isize,
    a_cs: isize,
    b: *const f32,
    b_rs: isize,
    b_cs: isize,
    accumulate: bool,
    scratch: &mut Scratch,
) {
    let dots = dots_form(scratch.isa, m, k, a_cs, b_rs);
    // SAFETY: forwarded contract.
    unsafe {
        sgemm_in(
            dots, m, n, k, c, c_rs, c_cs, a, a_rs, a_cs, b, b_rs, b_cs, accumulate, scratch,
        )
    }
}

/// Whether `a @ b` runs as dot products of `a`'s rows and `b`'s columns
/// (both contiguous along `k`) instead of packed tiles: when `k` is long
/// next to `m`, packing `b` (a transposing copy of all `k·n` elements)
/// costs more than the few row panels it serves, while a dot product
/// reads both in place at full width and pays one horizontal sum per
/// element of `c`. A convolution's weight gradient per sample, `dy @
/// columns^T`, is this shape: LeNet's conv1 (6×784 @ 784×25) and CIFAR's
/// (32×784 @ 784×75). Depends on `m` and `k` only, not `n`, so that
/// products split by columns choose alike.
fn dots_form(isa: Isa, m: usize, k: usize, a_cs: isize, b_rs: isize) -> bool {
    isa == Isa::Avx512 && a_cs == 1 && b_rs == 1 && k >= DOTS_MIN_K && k >= DOTS_K_PER_ROW * m
}

/// See [`dots_form`]. With `k = 784`: 6 rows × 25 columns 27 → 82
/// GFLOP/s against packing; at 32 rows × 75 columns both run 87, and at
/// 64 × 1600 (k = 1024) packing wins, 83 against 77 (one thread; on two
/// the dots split worse: 112 against 178).
const DOTS_MIN_K: usize = 256;
const DOTS_K_PER_ROW: usize = 64;

/// Where the dot products of [`dots`] run: `count` runs of `len`
/// contiguous elements, run `r` starting `r·a_step` into a row of `a` and
/// `r·b_step` into a column of `b`.
#[derive(Debug, Clone, Copy)]
pub struct Runs {
    pub count: usize,
    pub len: usize,
    pub a_step: usize,
    pub b_step: usize,
}

impl Runs {
    /// One run of `k`: rows of `a` and columns of `b` contiguous.
    pub fn whole(k: usize) -> Runs {
        Runs {
            count: 1,
            len: k,
            a_step: 0,
            b_step: 0,
        }
    }
}

/// `c[i, j] = Σ_runs Σ_t a[i·a_rs + run + t] · b[column(j) + run + t]`
/// (`+=` when `accumulate`): [`sgemm`]'s dot-product form (see
/// `dots_form`), and a convolution's weight gradient against its padded
/// image, output row by output row (`crate::conv`). Needs AVX-512.
///
/// # Safety
/// Every run of rows `< m` of `a` and of columns `< n` of `b` is in
/// bounds; `c` in bounds for its strides, overlapping neither.
pub unsafe fn dots(
    (m, n): (usize, usize),
    c: (*mut f32, isize, isize),
    a: (*const f32, isize),
    b: (*const f32, &dyn Fn(usize) -> isize),
    runs: Runs,
    accumulate: bool,
) {
    assert!(Isa::Avx512.supported(), "sgemm::dots needs AVX-512");
    #[cfg(target_arch = "x86_64")]
    // SAFETY: the caller's contract; the CPU was checked.
    unsafe {
        x86::dots_avx512((m, n), c, a, b, runs, accumulate)
    }
    #[cfg(not(target_arch = "x86_64"))]
    let _ = (m, n, c, a, b, runs, accumulate);
}

/// Whether [`sgemm`] computes an `m`-row product of this layout without
/// packing `b` (on this CPU): a row-major `b` under at most two row panels,
/// or the dot-product form.
pub fn reads_b_in_place(m: usize, k: usize, a_cs: isize, b_rs: isize, b_cs: isize) -> bool {
    let isa = Isa::detect();
    let (mr, _) = isa.tile();
    direct_b(isa, m, mr, b_cs) || dots_form(isa, m, k, a_cs, b_rs)
}

/// Row-major `b` under one or two row panels: packing it would copy every
/// element to read it once or twice, so full panels are read in place
/// (rows `b_rs` apart); a partial last panel is still packed (zero-padded).
/// `cargo bench -p nnc-kernels --bench sgemm`, one thread: LeNet's conv2
/// (16×150 @ 150×100) 62 → 78–87 GFLOP/s, its conv1 (6×25 @ 25×784) 52 →
/// 64 (75 with the 6-row kernel).
fn direct_b(isa: Isa, m: usize, mr: usize, b_cs: isize) -> bool {
    b_cs == 1 && m <= 2 * mr && isa != Isa::Scalar
}

/// `c = a @ b` (or `c += a @ b`) for `n ≤ 32` columns where row `p` of
/// `b` starts at `b + offs[p]`: the rows of an implicit-GEMM convolution,
/// read straight from a (padded) image (see `crate::conv`). `a` is read in
/// place (`m × k`, any strides), `c` has contiguous rows. Needs AVX-512
/// ([`Isa::Avx512`]).
///
/// # Safety
/// `a`, `c` in bounds for their strides; `offs` holds `k` entries, and 32
/// elements from `b + offs[p]` are readable for every `p` (columns past
/// `n` are read and not used).
#[allow(clippy::too_many_arguments)]
pub unsafe fn sgemm_rows(
    m: usize,
    n: usize,
    k: usize,
    c: *mut f32,
    c_rs: isize,
    a: *const f32,
    a_rs: isize,
    a_cs: isize,
    b: *const f32,
    offs: &[isize],
    accumulate: bool,
) {
    assert!(
        n <= 32 && offs.len() >= k,
        "sgemm_rows: {n} columns, {k} rows"
    );
    #[cfg(target_arch = "x86_64")]
    {
        assert!(Isa::Avx512.supported(), "sgemm_rows needs AVX-512");
        let mut i0 = 0;
        while i0 < m {
            let rows = (m - i0).min(8);
            // SAFETY: the caller's contract; tiles of at most 8 rows.
            unsafe {
                let ap = ASrc {
                    p: a.offset(i0 as isize * a_rs),
                    rs: a_rs,
                    cs: a_cs,
                    rows,
                };
                let bp = BSrc {
                    p: b,
                    rs: 0,
                    offs: offs.as_ptr(),
                };
                let t = Tile {
                    c: c.offset(i0 as isize * c_rs),
                    rs: c_rs,
                    cs: 1,
                    m: rows,
                    n,
                    add: accumulate,
                };
                x86::tile_avx512_table(k, ap, bp, &t);
            }
            i0 += 8;
        }
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        let _ = (m, c, c_rs, a, a_rs, a_cs, b, accumulate);
        unreachable!("sgemm_rows needs AVX-512");
    }
}

/// [`sgemm_ex`] with the form chosen.
///
/// # Safety
/// As [`sgemm`].
#[allow(clippy::too_many_arguments)]
unsafe fn sgemm_in(
    dots: bool,
    m: usize,
    n: usize,
    k: usize,
    c: *mut f32,
    c_rs: isize,
    c_cs: isize,
    a: *const f32,
    a_rs: isize,
    a_cs: isize,
    b: *const f32,
    b_rs: isize,
    b_cs: isize,
    accumulate: bool,
    scratch: &mut Scratch,
) {
    if m == 0 || n == 0 {
        return;
    }
    #[cfg(target_arch = "x86_64")]
    if dots && k > 0 {
        // SAFETY: forwarded contract; `dots_form` checked the CPU and that
        // rows of `a` and columns of `b` are contiguous.
        return unsafe {
            self::dots(
                (m, n),
                (c, c_rs, c_cs),
                (a, a_rs),
                (b, &|j| j as isize * b_cs),
                Runs::whole(k),
                accumulate,
            )
        };
    }
    if k == 0 {
        if !accumulate {
            for i in 0..m {
                for j in 0..n {
                    // SAFETY: in bounds by the contract.
                    unsafe { *c.offset(i as isize * c_rs + j as isize * c_cs) = 0.0 };
                }
            }
        }
        return;
    }
    // Column-major `c`: compute `c^T = b^T a^T` so that tiles store rows.
    if c_cs != 1 && c_rs == 1 {
        // SAFETY: the same views, transposed.
        return unsafe {
            sgemm_in(
                false, n, m, k, c, c_cs, c_rs, b, b_cs, b_rs, a, a_cs, a_rs, accumulate, scratch,
            )
        };
    }
    let isa = scratch.isa;
    let (mr, nr) = isa.tile();
    let nblocks_k = k.div_ceil(KC);
    let kc_even = k.div_ceil(nblocks_k);
    let (abuf, bbuf) = (scratch.a, scratch.b);
    let simd = isa != Isa::Scalar;
    let direct_b = direct_b(isa, m, mr, b_cs);

    let mut jc = 0;
    while jc < n {
        let nc = NC.min(n - jc);
        let mut pc = 0;
        while pc < k {
            let kc = kc_even.min(k - pc);
            let add = accumulate || pc > 0;
            // Pack b[pc.., jc..] into NR-column panels: panel j is kc×nr.
            // With `direct_b` full panels are read in place.
            let mut jr = 0;
            while jr < nc {
                let len = nr.min(nc - jr);
                if direct_b && len == nr {
                    jr += nr;
                    continue;
                }
                // SAFETY: source in bounds by contract; destination within
                // the KC×NC buffer (nc ≤ NC, NC a multiple of nr).
                unsafe {
                    pack(
                        bbuf.add(jr * kc),
                        b.offset(pc as isize * b_rs + (jc + jr) as isize * b_cs),
                        b_cs,
                        b_rs,
                        len,
                        nr,
                        kc,
                        simd,
                    )
                };
                jr += nr;
            }
            // With a single column panel each element of `a` is used once:
            // the micro-kernel reads it in place instead of packing it.
            let direct_a = nc <= 8 * nr;
            let mut ic = 0;
            while ic < m {
                let mc = MC.min(m - ic);
                let mut ir = 0;
                while !direct_a && ir < mc {
                    let len = mr.min(mc - ir);
                    // SAFETY: as above, within the MC×KC buffer.
                    unsafe {
                        pack(
                            abuf.add(ir * kc),
                            a.offset((ic + ir) as isize * a_rs + pc as isize * a_cs),
                            a_rs,
                            a_cs,
                            len,
                            mr,
                            kc,
                            simd,
                        )
                    };
                    ir += mr;
                }
                let mut jr = 0;
                while jr < nc {
                    let nlen = nr.min(nc - jr);
                    let mut ir = 0;
                    while ir < mc {
                        let mlen = mr.min(mc - ir);
                        // SAFETY: panels packed above; the tile of `c` is
                        // in bounds for (mlen, nlen).
                        unsafe {
                            let ct =
                                c.offset((ic + ir) as isize * c_rs + (jc + jr) as isize * c_cs);
                            let ap = if direct_a {
                                ASrc {
                                    p: a.offset((ic + ir) as isize * a_rs + pc as isize * a_cs),
                                    rs: a_rs,
                                    cs: a_cs,
                                    rows: mlen,
                                }
                            } else {
                                ASrc {
                                    p: abuf.add(ir * kc),
                                    rs: 1,
                                    cs: mr as isize,
                                    rows: mr,
                                }
                            };
                            let (bp, b_step) = if direct_b && nlen == nr {
                                (b.offset(pc as isize * b_rs + (jc + jr) as isize), b_rs)
                            } else {
                                (bbuf.add(jr * kc) as *const f32, nr as isize)
                            };
                            let bp = BSrc {
                                p: bp,
                                rs: b_step,
                                offs: std::ptr::null(),
                            };
                            let t = Tile {
                                c: ct,
                                rs: c_rs,
                                cs: c_cs,
                                m: mlen,
                                n: nlen,
                                add,
                            };
                            match (isa, direct_a) {
                                #[cfg(target_arch = "x86_64")]
                                (Isa::Avx512, _) => x86::tile_avx512(kc, ap, bp, &t, !direct_a),
                                #[cfg(target_arch = "x86_64")]
                                (Isa::Avx2, false) => {
                                    if nlen > 8 {
                                        x86::kernel_avx2::<2, true>(kc, ap, bp, &t)
                                    } else {
                                        x86::kernel_avx2::<1, true>(kc, ap, bp, &t)
                                    }
                                }
                                #[cfg(target_arch = "x86_64")]
                                (Isa::Avx2, true) => {
                                    if nlen > 8 {
                                        x86::kernel_avx2::<2, false>(kc, ap, bp, &t)
                                    } else {
                                        x86::kernel_avx2::<1, false>(kc, ap, bp, &t)
                                    }
                                }
                                _ => kernel_scalar(kc, ap, bp, &t),
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

/// Where a micro-kernel reads `a`: row `i < rows`, depth `p` at
/// `p[i * rs + p * cs]` (a packed panel: `rs = 1`, `cs = MR`). Rows
/// `rows..MR` are computed from row `rows - 1` and never written.
#[derive(Clone, Copy)]
struct ASrc {
    p: *const f32,
    rs: isize,
    cs: isize,
    rows: usize,
}

impl ASrc {
    /// Row pointers, clamped to valid rows.
    #[inline(always)]
    fn rows<const MR: usize>(self) -> [*const f32; MR] {
        std::array::from_fn(|i| {
            self.p
                .wrapping_offset(i.min(self.rows - 1) as isize * self.rs)
        })
    }
}

/// Where a micro-kernel reads `b`: depth `p` of its `NR` columns at
/// `p[p * rs ..]` (a packed panel: `rs = NR`), or at `p[offs[p] ..]` for
/// the kernels that take a table (an implicit-GEMM convolution's image
/// rows: see [`sgemm_rows`]).
#[derive(Clone, Copy)]
struct BSrc {
    p: *const f32,
    rs: isize,
    offs: *const isize,
}

/// Where a micro-kernel writes: `m × n` valid elements of `c`.
struct Tile {
    c: *mut f32,
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
    unsafe fn write_from(&self, buf: &[f32], w: usize) {
        for i in 0..self.m {
            for j in 0..self.n {
                // SAFETY: (i, j) valid by the caller's contract.
                unsafe {
                    let p = self.c.offset(i as isize * self.rs + j as isize * self.cs);
                    let v = buf[i * w + j];
                    *p = if self.add { *p + v } else { v };
                }
            }
        }
    }
}

/// Pack `len` lines of `kc` elements into a panel `dst[p * w + i]`, lines
/// `len..w` zero. Line `i`, element `p` is at `src[i * ls + p * ks]`.
///
/// # Safety
/// `dst` holds `kc · w` elements; every `src[i * ls + p * ks]` for
/// `i < len`, `p < kc` is in bounds.
#[inline(always)]
#[allow(clippy::too_many_arguments)]
unsafe fn pack(
    dst: *mut f32,
    src: *const f32,
    ls: isize,
    ks: isize,
    len: usize,
    w: usize,
    kc: usize,
    simd: bool,
) {
    // SAFETY (whole body): in bounds by the caller.
    unsafe {
        if ls == 1 {
            if len == w {
                for p in 0..kc {
                    std::ptr::copy_nonoverlapping(src.offset(p as isize * ks), dst.add(p * w), w);
                }
            } else {
                for p in 0..kc {
                    let d = dst.add(p * w);
                    std::ptr::copy_nonoverlapping(src.offset(p as isize * ks), d, len);
                    std::ptr::write_bytes(d.add(len), 0, w - len);
                }
            }
        } else {
            if len < w {
                for p in 0..kc {
                    std::ptr::write_bytes(dst.add(p * w + len), 0, w - len);
                }
            }
            if ks == 1 {
                #[cfg(target_arch = "x86_64")]
                if simd {
                    return x86::pack_transposed(dst, src, ls, len, w, kc);
                }
                let _ = simd;
                // Transposing copy in blocks of 8 along k, contiguous reads.
                let mut p0 = 0;
                while p0 + 8 <= kc {
                    for i in 0..len {
                        let s = src.offset(i as isize * ls).add(p0);
                        let d = dst.add(p0 * w + i);
                        for q in 0..8 {
                            *d.add(q * w) = *s.add(q);
                        }
                    }
                    p0 += 8;
                }
                for i in 0..len {
                    let s = src.offset(i as isize * ls);
                    for p in p0..kc {
                        *dst.add(p * w + i) = *s.add(p);
                    }
                }
            } else {
                for p in 0..kc {
                    for i in 0..len {
                        *dst.add(p * w + i) = *src.offset(i as isize * ls + p as isize * ks);
                    }
                }
            }
        }
    }
}

/// Portable 4×4 kernel.
///
/// # Safety
/// `a` and `b` reach `kc` steps of a 4-row, 4-column panel (packed or
/// in place, as their strides say); `t` is in bounds of `c`.
unsafe fn kernel_scalar(kc: usize, a: ASrc, b: BSrc, t: &Tile) {
    let mut acc = [0f32; 16];
    let rows = a.rows::<4>();
    for p in 0..kc {
        // SAFETY: the panel holds kc×4 elements; rows of `a` in bounds.
        let (av, bv) = unsafe {
            (
                rows.map(|r| *r.offset(p as isize * a.cs)),
                std::slice::from_raw_parts(b.p.offset(p as isize * b.rs), 4),
            )
        };
        for i in 0..4 {
            for j in 0..4 {
                acc[i * 4 + j] = av[i].mul_add(bv[j], acc[i * 4 + j]);
            }
        }
    }
    // SAFETY: tile bounds by contract.
    unsafe { t.write_from(&acc, 4) };
}

#[cfg(target_arch = "x86_64")]
mod x86;
