//! `nnc_kernels::igemm` against an `i64` triple loop, for every kernel this
//! CPU supports: results must be exactly equal (the true sum modulo 2³²,
//! which is the true sum whenever it fits in `i32`). Shapes cross every
//! tile and block edge; values span the full `u8` and `i8` ranges, and
//! the extremes (255 × -128, 255 × 127) catch any `i16` saturation.
//! A call allocates nothing.

use nnc_kernels::igemm::{
    column_sums, igemm, igemm_ex, igemm_threads, igemm_words, Isa, Scratch, Signs, KC, MAX_EXACT_K,
    MC, NC,
};
use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;

struct Counting;

thread_local! {
    static ALLOCS: Cell<usize> = const { Cell::new(0) };
}

// SAFETY: forwards to `System`, counting calls on the current thread.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        let _ = ALLOCS.try_with(|c| c.set(c.get() + 1));
        // SAFETY: forwarded.
        unsafe { System.alloc(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: forwarded.
        unsafe { System.dealloc(ptr, layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        let _ = ALLOCS.try_with(|c| c.set(c.get() + 1));
        // SAFETY: forwarded.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

fn allocs() -> usize {
    ALLOCS.with(|c| c.get())
}

/// Deterministic full-range bytes.
fn bytes(len: usize, seed: u64) -> Vec<u8> {
    let mut s = seed
        .wrapping_mul(6364136223846793005)
        .wrapping_add(1442695040888963407);
    (0..len)
        .map(|_| {
            s = s
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            (s >> 56) as u8
        })
        .collect()
}

fn signed(v: Vec<u8>) -> Vec<i8> {
    v.into_iter().map(|x| x as i8).collect()
}

fn scratches() -> Vec<Scratch> {
    [Isa::Vnni, Isa::Avx2, Isa::Scalar]
        .into_iter()
        .filter(|i| i.supported())
        .map(Scratch::with_isa)
        .collect()
}

/// A matrix view: row stride, column stride, buffer length.
#[derive(Clone, Copy, Debug)]
struct View {
    rs: isize,
    cs: isize,
    len: usize,
}

/// `rows × cols`, row-major (`t = false`) or column-major (`t = true`),
/// with `pad` extra elements per leading line.
fn view(rows: usize, cols: usize, t: bool, pad: usize) -> View {
    if t {
        let ld = rows + pad;
        View {
            rs: 1,
            cs: ld as isize,
            len: ld * cols.max(1),
        }
    } else {
        let ld = cols + pad;
        View {
            rs: ld as isize,
            cs: 1,
            len: ld * rows.max(1),
        }
    }
}

/// The `i64` reference `a @ b`.
fn reference(m: usize, n: usize, k: usize, a: (&[u8], View), b: (&[i8], View)) -> Vec<i64> {
    let (a, av) = a;
    let (b, bv) = b;
    let mut out = vec![0i64; m * n];
    for i in 0..m {
        for p in 0..k {
            let x = a[(i as isize * av.rs + p as isize * av.cs) as usize] as i64;
            for j in 0..n {
                out[i * n + j] += x * b[(p as isize * bv.rs + j as isize * bv.cs) as usize] as i64;
            }
        }
    }
    out
}

/// Runs every kernel on one shape and layout and compares each element
/// with the reference, exactly; elements of `c`'s padding stay untouched.
#[allow(clippy::too_many_arguments)]
fn check_with(
    scratches: &mut [Scratch],
    (m, n, k): (usize, usize, usize),
    (ta, tb, tc): (bool, bool, bool),
    pad: usize,
    accumulate: bool,
    a: &[u8],
    b: &[i8],
) {
    let av = view(m, k, ta, pad);
    let bv = view(k, n, tb, pad);
    let cv = view(m, n, tc, pad);
    assert!(a.len() >= av.len && b.len() >= bv.len);
    let want = reference(m, n, k, (a, av), (b, bv));
    let c0: Vec<i32> = bytes(cv.len, 99)
        .into_iter()
        .map(|x| (x as i32 - 128) * 1_000_003)
        .collect();
    for s in scratches.iter_mut() {
        let isa = s.isa();
        let mut c = c0.clone();
        // SAFETY: views sized above.
        unsafe {
            igemm_ex(
                m,
                n,
                k,
                c.as_mut_ptr(),
                cv.rs,
                cv.cs,
                a.as_ptr(),
                av.rs,
                av.cs,
                b.as_ptr(),
                bv.rs,
                bv.cs,
                accumulate,
                s,
            )
        };
        let mut touched = vec![false; cv.len];
        for i in 0..m {
            for j in 0..n {
                let ci = (i as isize * cv.rs + j as isize * cv.cs) as usize;
                touched[ci] = true;
                let mut w = want[i * n + j];
                if accumulate {
                    w += c0[ci] as i64;
                }
                assert_eq!(
                    c[ci], w as i32,
                    "{isa:?} m={m} n={n} k={k} ta={ta} tb={tb} tc={tc} pad={pad} \
                     acc={accumulate}: c[{i},{j}]"
                );
            }
        }
        for (idx, t) in touched.iter().enumerate() {
            if !t {
                assert_eq!(
                    c[idx], c0[idx],
                    "{isa:?} m={m} n={n} k={k}: padding written"
                );
            }
        }
    }
}

/// [`check_with`] on random full-range operands.
fn check(
    scratches: &mut [Scratch],
    (m, n, k): (usize, usize, usize),
    layout: (bool, bool, bool),
    pad: usize,
    accumulate: bool,
) {
    let (ta, tb, _) = layout;
    let a = bytes(view(m, k, ta, pad).len, (m * 1000 + k) as u64);
    let b = signed(bytes(view(k, n, tb, pad).len, (k * 1000 + n + 7) as u64));
    check_with(scratches, (m, n, k), layout, pad, accumulate, &a, &b);
}

const ROW_MAJOR: (bool, bool, bool) = (false, false, false);

#[test]
fn all_shapes_row_major() {
    let mut s = scratches();
    let sizes = [1, 3, 4, 5, 17, 31, 33, 64, 100];
    for &m in &sizes {
        for &n in &sizes {
            for &k in &[1, 3, 4, 5, 17, 33, 100, 257, 300] {
                check(&mut s, (m, n, k), ROW_MAJOR, 0, false);
            }
        }
    }
}

#[test]
fn empty_shapes() {
    let mut s = scratches();
    for &(m, n, k) in &[(0, 5, 3), (5, 0, 3), (0, 0, 0), (5, 7, 0), (1, 1, 0)] {
        for accumulate in [false, true] {
            check(&mut s, (m, n, k), ROW_MAJOR, 1, accumulate);
            check(&mut s, (m, n, k), (true, true, true), 0, accumulate);
        }
    }
}

#[test]
fn layouts_and_strides() {
    let mut s = scratches();
    let shapes = [
        (1, 1, 1),
        (5, 17, 3),
        (17, 33, 31),
        (33, 5, 100),
        (64, 64, 64),
        (31, 100, 257),
        (3, 4, 5),
    ];
    for &shape in &shapes {
        for mode in 0..8u32 {
            let layout = (mode & 1 != 0, mode & 2 != 0, mode & 4 != 0);
            for pad in [0, 3] {
                check(&mut s, shape, layout, pad, false);
            }
        }
    }
}

#[test]
fn accumulate() {
    let mut s = scratches();
    for &shape in &[
        (5, 7, 1),
        (17, 33, 300),
        (8, 32, 256),
        (33, 40, 513),
        (1, 3, 4),
    ] {
        for mode in 0..8u32 {
            let layout = (mode & 1 != 0, mode & 2 != 0, mode & 4 != 0);
            check(&mut s, shape, layout, 1, true);
        }
    }
}

#[test]
fn large_blocks() {
    // Crosses the KC, MC and NC block boundaries, one at a time and
    // (optimized builds only, to keep debug tests fast) all together.
    const { assert!(MC < 150 && KC < 600 && NC < 1100) };
    let mut s = scratches();
    let mut shapes = vec![(150, 40, 37), (9, 1100, 9), (9, 40, 1100), (145, 33, 513)];
    if cfg!(not(debug_assertions)) {
        shapes.push((150, 1100, 600));
    }
    for shape in shapes {
        check(&mut s, shape, ROW_MAJOR, 0, false);
        check(&mut s, shape, (true, true, false), 2, false);
        check(&mut s, shape, (false, true, true), 0, true);
    }
}

#[test]
fn extreme_values() {
    // 255 · -128 in every product: two of them (-65280) saturate an `i16`
    // (`vpmaddubsw`); the sums reach -2³¹ at `k = MAX_EXACT_K`.
    let mut s = scratches();
    for (av, bv) in [(255u8, -128i8), (255, 127), (0, -128), (255, -1)] {
        for &(m, n, k) in &[
            (3, 5, 1),
            (8, 32, 4),
            (9, 33, 5),
            (17, 31, 257),
            (5, 17, 1100),
        ] {
            for mode in [0, 7] {
                let layout = (mode & 1 != 0, mode & 2 != 0, mode & 4 != 0);
                let a = vec![av; m * k];
                let b = vec![bv; k * n];
                check_with(&mut s, (m, n, k), layout, 0, false, &a, &b);
            }
        }
    }
    // Alternating extremes along k, so a pair of products can cancel only
    // if it is not saturated first.
    let (m, n, k) = (7, 19, 301);
    let a: Vec<u8> = (0..m * k)
        .map(|x| if x % 3 == 0 { 0 } else { 255 })
        .collect();
    let b: Vec<i8> = (0..k * n)
        .map(|x| if x % 2 == 0 { -128 } else { 127 })
        .collect();
    check_with(&mut s, (m, n, k), ROW_MAJOR, 0, false, &a, &b);
}

#[test]
fn exact_up_to_max_k_and_wrapping_beyond() {
    // At MAX_EXACT_K the most negative result is still an `i32`; beyond, every
    // kernel returns the same value modulo 2³².
    assert!(255 * 128 * MAX_EXACT_K as i64 <= 1 << 31);
    assert!(255 * 128 * (MAX_EXACT_K as i64 + 1) > 1 << 31);
    const { assert!(MAX_EXACT_K >= 1 << 16) };
    let mut s = scratches();
    for k in [MAX_EXACT_K, MAX_EXACT_K + 1000] {
        let (m, n) = (2, 17);
        let a = vec![255u8; m * k];
        let b = vec![-128i8; k * n];
        let want = -(255 * 128 * k as i64);
        assert_eq!(want >= i32::MIN as i64, k <= MAX_EXACT_K);
        check_with(&mut s, (m, n, k), ROW_MAJOR, 0, false, &a, &b);
    }
}

#[test]
fn strided_rows_and_columns() {
    // Neither stride 1 for any operand (every other element of a wider
    // buffer), and negative strides (views walked backwards).
    let (m, n, k) = (19, 37, 45);
    let a = bytes(2 * m * k * 2, 1);
    let b = signed(bytes(2 * k * n * 2, 2));
    let want: Vec<i64> = (0..m * n)
        .map(|ij| {
            let (i, j) = (ij / n, ij % n);
            (0..k)
                .map(|p| a[2 * i + p * 2 * m] as i64 * b[p * 4 * n + 2 * j] as i64)
                .sum()
        })
        .collect();
    for mut s in scratches() {
        let isa = s.isa();
        let mut c = vec![0i32; 2 * m * n * 2];
        // SAFETY: buffers are large enough for these strides.
        unsafe {
            igemm(
                m,
                n,
                k,
                c.as_mut_ptr(),
                2 * n as isize * 2,
                2,
                a.as_ptr(),
                2,
                2 * m as isize,
                b.as_ptr(),
                2 * n as isize * 2,
                2,
                &mut s,
            )
        };
        for i in 0..m {
            for j in 0..n {
                assert_eq!(
                    c[i * 4 * n + 2 * j] as i64,
                    want[i * n + j],
                    "{isa:?} [{i},{j}]"
                );
            }
        }
        // Rows of `a` and `c`, and columns of `b`, reversed.
        let mut c = vec![0i32; m * n];
        // SAFETY: the last row / column is the first in memory; every
        // element stays inside the buffers.
        unsafe {
            igemm(
                m,
                n,
                k,
                c.as_mut_ptr().add((m - 1) * n),
                -(n as isize),
                1,
                a.as_ptr().add(2 * (m - 1)),
                -2,
                2 * m as isize,
                b.as_ptr().add(2 * (n - 1)),
                4 * n as isize,
                -2,
                &mut s,
            )
        };
        for i in 0..m {
            for j in 0..n {
                assert_eq!(
                    c[(m - 1 - i) * n + j] as i64,
                    want[(m - 1 - i) * n + (n - 1 - j)],
                    "{isa:?} reversed [{i},{j}]"
                );
            }
        }
    }
}

#[test]
fn kernels_chosen_only_when_supported() {
    let best = Isa::detect();
    assert!(best.supported());
    assert_eq!(Scratch::new().isa(), best);
    assert!(Isa::Scalar.supported());
    // The order of preference: a supported VNNI is always chosen.
    if Isa::Vnni.supported() {
        assert_eq!(best, Isa::Vnni);
    } else if Isa::Avx2.supported() {
        assert_eq!(best, Isa::Avx2);
    }
    for isa in [Isa::Vnni, Isa::Avx2] {
        let made = std::panic::catch_unwind(|| Scratch::with_isa(isa).isa());
        assert_eq!(made.is_ok(), isa.supported(), "{isa:?}");
    }
    #[cfg(target_arch = "x86_64")]
    {
        let vnni = is_x86_feature_detected!("avx512f")
            && is_x86_feature_detected!("avx512bw")
            && is_x86_feature_detected!("avx512vnni");
        assert_eq!(Isa::Vnni.supported(), vnni);
        assert_eq!(Isa::Avx2.supported(), is_x86_feature_detected!("avx2"));
    }
}

#[test]
fn column_sums_correct_zero_point() {
    // `(a - za) @ b = a @ b - za · colsum(b)`, exactly.
    let (m, n, k) = (13, 37, 70);
    let za = 131i64;
    let a = bytes(m * k, 5);
    let b = signed(bytes(k * n, 6));
    let sums = column_sums(&b, k, n, n as isize, 1);
    // The same sums from `b` stored transposed.
    let bt: Vec<i8> = (0..n * k).map(|x| b[(x % k) * n + x / k]).collect();
    assert_eq!(column_sums(&bt, k, n, 1, k as isize), sums);
    for mut s in scratches() {
        let mut c = vec![0i32; m * n];
        // SAFETY: row-major buffers of these shapes.
        unsafe {
            igemm(
                m,
                n,
                k,
                c.as_mut_ptr(),
                n as isize,
                1,
                a.as_ptr(),
                k as isize,
                1,
                b.as_ptr(),
                n as isize,
                1,
                &mut s,
            )
        };
        for i in 0..m {
            for j in 0..n {
                let want: i64 = (0..k)
                    .map(|p| (a[i * k + p] as i64 - za) * b[p * n + j] as i64)
                    .sum();
                let got = c[i * n + j] as i64 - za * sums[j] as i64;
                assert_eq!(got, want, "{:?} [{i},{j}]", s.isa());
            }
        }
    }
}

#[test]
#[should_panic(expected = "column_sums")]
fn column_sums_checks_bounds() {
    let b = vec![1i8; 10];
    column_sums(&b, 3, 4, 4, 1);
}

#[test]
fn two_threads_match_one() {
    nnc_kernels::set_threads(2).expect("threads");
    for &(m, n, k) in &[(64, 256, 300), (200, 40, 300), (3, 700, 600)] {
        let a = bytes(m * k, 7);
        let b = signed(bytes(k * n, 8));
        for mut s in scratches() {
            let run = |s: &mut Scratch, threads: bool, accumulate: bool| {
                let mut c = vec![5i32; m * n];
                let f = if threads { igemm_threads } else { igemm_ex };
                // SAFETY: row-major buffers of these shapes.
                unsafe {
                    f(
                        m,
                        n,
                        k,
                        c.as_mut_ptr(),
                        n as isize,
                        1,
                        a.as_ptr(),
                        k as isize,
                        1,
                        b.as_ptr(),
                        n as isize,
                        1,
                        accumulate,
                        s,
                    )
                };
                c
            };
            for accumulate in [false, true] {
                assert_eq!(
                    run(&mut s, true, accumulate),
                    run(&mut s, false, accumulate),
                    "{:?} {m}×{n}×{k}",
                    s.isa()
                );
            }
        }
    }
}

#[test]
fn no_allocation() {
    let (m, n, k) = (128, 784, 256);
    let a = bytes(m * k, 3);
    let b = signed(bytes(n * k, 4));
    let mut c = vec![0i32; m * n];
    for mut s in scratches() {
        let before = allocs();
        for &(ta, tb, tc) in &[
            (false, false, false),
            (false, true, true),
            (true, false, false),
        ] {
            let (a_rs, a_cs) = if ta { (1, m as isize) } else { (k as isize, 1) };
            let (b_rs, b_cs) = if tb { (1, k as isize) } else { (n as isize, 1) };
            let (c_rs, c_cs) = if tc { (1, m as isize) } else { (n as isize, 1) };
            // SAFETY: buffers sized for these views.
            unsafe {
                igemm(
                    m,
                    n,
                    k,
                    c.as_mut_ptr(),
                    c_rs,
                    c_cs,
                    a.as_ptr(),
                    a_rs,
                    a_cs,
                    b.as_ptr(),
                    b_rs,
                    b_cs,
                    &mut s,
                )
            };
        }
        assert_eq!(allocs(), before, "{:?}: igemm allocated", s.isa());
    }
}

/// `igemm_words`: byte values held one per `i32` word, every sign mix
/// (shifted into `u8 @ i8` and corrected), row- and column-major operands
/// and result, overwrite and accumulate, against an `i64` loop; then the
/// same calls again allocate nothing (the thread's buffers are grown).
#[test]
fn words_of_every_sign_mix() {
    let range = |signed: bool| if signed { -128..=127 } else { 0..=255 };
    let words = |len: usize, signed: bool, seed: u64| -> Vec<i32> {
        bytes(len, seed)
            .into_iter()
            .map(|x| if signed { x as i8 as i32 } else { x as i32 })
            .collect()
    };
    let extreme = |len: usize, signed: bool| vec![if signed { -128 } else { 255 }; len];
    // Returns the allocations made inside `igemm_words`.
    let run = |m: usize, n: usize, k: usize, extremes: bool| {
        let mut allocated = 0;
        for bits in 0..4 {
            let signs = Signs::from_bits(bits);
            assert_eq!(signs.bits(), bits);
            let (sa, sb) = (signs.a_signed, !signs.b_unsigned);
            let (a, b) = if extremes {
                (extreme(m * k, sa), extreme(k * n, sb))
            } else {
                (
                    words(m * k, sa, 11 + bits as u64),
                    words(k * n, sb, 21 + bits as u64),
                )
            };
            assert!(a.iter().all(|x| range(sa).contains(x)));
            for &(ta, tb, tc) in &[
                (false, false, false),
                (true, false, true),
                (false, true, false),
                (true, true, true),
            ] {
                let (a_rs, a_cs) = if ta { (1, m as isize) } else { (k as isize, 1) };
                let (b_rs, b_cs) = if tb { (1, k as isize) } else { (n as isize, 1) };
                let (c_rs, c_cs) = if tc { (1, m as isize) } else { (n as isize, 1) };
                let mut want = vec![0i64; m * n];
                for i in 0..m {
                    for j in 0..n {
                        want[i * n + j] = (0..k)
                            .map(|p| {
                                let x = a[(i as isize * a_rs + p as isize * a_cs) as usize];
                                let y = b[(p as isize * b_rs + j as isize * b_cs) as usize];
                                x as i64 * y as i64
                            })
                            .sum();
                    }
                }
                for accumulate in [false, true] {
                    let mut c = vec![7i32; m * n];
                    let before = allocs();
                    // SAFETY: buffers sized for these views.
                    unsafe {
                        igemm_words(
                            m,
                            n,
                            k,
                            c.as_mut_ptr(),
                            c_rs,
                            c_cs,
                            a.as_ptr(),
                            a_rs,
                            a_cs,
                            b.as_ptr(),
                            b_rs,
                            b_cs,
                            signs,
                            accumulate,
                        )
                    };
                    allocated += allocs() - before;
                    for i in 0..m {
                        for j in 0..n {
                            let got = c[(i as isize * c_rs + j as isize * c_cs) as usize];
                            let w = want[i * n + j] + if accumulate { 7 } else { 0 };
                            assert_eq!(
                                got as i64, w,
                                "{signs:?} {m}×{n}×{k} ({ta}, {tb}, {tc}) acc {accumulate} \
                                 at ({i}, {j})"
                            );
                        }
                    }
                }
            }
        }
        allocated
    };
    for &(m, n, k) in &[(1, 1, 1), (5, 7, 3), (37, 45, 600), (150, 33, 70)] {
        run(m, n, k, false);
    }
    run(9, 40, 1100, true);
    run(0, 3, 4, false);
    run(3, 4, 0, false);
    // Again with the thread's buffers grown: no allocation.
    assert_eq!(run(37, 45, 600, false), 0, "igemm_words allocated");
}
