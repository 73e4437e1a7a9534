//! `nnc_kernels::sgemm` against an f64 triple loop, for every kernel this
//! CPU supports, many shapes and layouts; and a call allocates nothing.

use nnc_kernels::sgemm::{sgemm, sgemm_ex, Isa, Scratch};
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

/// Deterministic values in [-1, 1).
fn fill(len: usize, seed: u64) -> Vec<f32> {
    let mut s = seed
        .wrapping_mul(6364136223846793005)
        .wrapping_add(1442695040888963407);
    (0..len)
        .map(|_| {
            s = s
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            ((s >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0
        })
        .collect()
}

fn isas() -> Vec<Isa> {
    [Isa::Avx512, Isa::Avx2, Isa::Scalar]
        .into_iter()
        .filter(|i| i.supported())
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

#[allow(clippy::too_many_arguments)]
fn check(
    isa: Isa,
    scratch: &mut Scratch,
    m: usize,
    n: usize,
    k: usize,
    ta: bool,
    tb: bool,
    tc: bool,
    pad: usize,
    accumulate: bool,
) {
    let av = view(m, k, ta, pad);
    let bv = view(k, n, tb, pad);
    let cv = view(m, n, tc, pad);
    let a = fill(av.len, (m * 1000 + k) as u64);
    let b = fill(bv.len, (k * 1000 + n + 7) as u64);
    let c0 = fill(cv.len, 99);
    let mut c = c0.clone();
    // SAFETY: views sized above.
    unsafe {
        sgemm_ex(
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
            scratch,
        )
    };
    let tol = 1e-5 * (k.max(1) as f64).sqrt();
    let mut touched = vec![false; cv.len];
    for i in 0..m {
        for j in 0..n {
            let mut want = 0f64;
            let mut mag = 0f64;
            for p in 0..k {
                let x = a[(i as isize * av.rs + p as isize * av.cs) as usize] as f64
                    * b[(p as isize * bv.rs + j as isize * bv.cs) as usize] as f64;
                want += x;
                mag += x.abs();
            }
            let ci = (i as isize * cv.rs + j as isize * cv.cs) as usize;
            touched[ci] = true;
            if accumulate {
                want += c0[ci] as f64;
                mag += (c0[ci] as f64).abs();
            }
            let got = c[ci] as f64;
            assert!(
                (got - want).abs() <= tol * mag.max(1.0),
                "{isa:?} m={m} n={n} k={k} ta={ta} tb={tb} tc={tc} pad={pad} acc={accumulate}: \
                 c[{i},{j}] = {got}, want {want}"
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

const SIZES: [usize; 15] = [0, 1, 2, 3, 5, 7, 8, 15, 16, 17, 31, 33, 64, 100, 129];

#[test]
fn all_shapes_row_major() {
    for isa in isas() {
        let mut s = Scratch::with_isa(isa);
        for &m in &SIZES {
            for &n in &SIZES {
                for &k in &SIZES {
                    check(isa, &mut s, m, n, k, false, false, false, 0, false);
                }
            }
        }
    }
}

#[test]
fn layouts_and_strides() {
    let sizes = [0, 1, 3, 7, 8, 16, 17, 33, 100, 129];
    for isa in isas() {
        let mut s = Scratch::with_isa(isa);
        for &m in &sizes {
            for &n in &sizes {
                for &k in &sizes {
                    for mode in 0..8u32 {
                        let (ta, tb, tc) = (mode & 1 != 0, mode & 2 != 0, mode & 4 != 0);
                        let pad = if (m + n + k) % 2 == 0 { 3 } else { 0 };
                        check(isa, &mut s, m, n, k, ta, tb, tc, pad, false);
                    }
                }
            }
        }
    }
}

#[test]
fn accumulate() {
    for isa in isas() {
        let mut s = Scratch::with_isa(isa);
        for &(m, n, k) in &[(5, 7, 0), (17, 33, 300), (8, 32, 256), (33, 40, 513)] {
            for mode in 0..8u32 {
                let (ta, tb, tc) = (mode & 1 != 0, mode & 2 != 0, mode & 4 != 0);
                check(isa, &mut s, m, n, k, ta, tb, tc, 1, true);
            }
        }
    }
}

#[test]
fn dot_product_form() {
    // `a @ b^T` with a long `k` next to `m` (a convolution's weight
    // gradient) runs as dot products on AVX-512: edge blocks of rows and
    // columns, `k` a multiple of 16 or not, every layout of `c`, both modes.
    for isa in isas() {
        let mut s = Scratch::with_isa(isa);
        for &(m, n, k) in &[(6, 25, 784), (1, 1, 256), (4, 7, 300), (3, 33, 1000)] {
            for accumulate in [false, true] {
                for tc in [false, true] {
                    check(isa, &mut s, m, n, k, false, true, tc, 1, accumulate);
                }
            }
        }
    }
}

#[test]
fn large_blocks() {
    // Crosses the KC, MC and NC block boundaries.
    for isa in isas() {
        let mut s = Scratch::with_isa(isa);
        for &(m, n, k) in &[(150, 1100, 600), (300, 40, 784), (1, 2100, 3)] {
            check(isa, &mut s, m, n, k, false, false, false, 0, false);
            check(isa, &mut s, m, n, k, true, true, false, 2, false);
        }
    }
}

#[test]
fn strided_rows_and_columns() {
    // Neither stride 1 for any operand (every other element of a wider buffer).
    let (m, n, k) = (19, 37, 45);
    let a = fill(2 * m * k * 2, 1);
    let b = fill(2 * k * n * 2, 2);
    let mut c = vec![0f32; 2 * m * n * 2];
    for isa in isas() {
        let mut s = Scratch::with_isa(isa);
        // SAFETY: buffers are large enough for these strides.
        unsafe {
            sgemm(
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
                let want: f64 = (0..k)
                    .map(|p| a[2 * i + p * 2 * m] as f64 * b[p * 4 * n + 2 * j] as f64)
                    .sum();
                let got = c[i * 4 * n + 2 * j] as f64;
                assert!(
                    (got - want).abs() < 1e-4,
                    "{isa:?} [{i},{j}] {got} vs {want}"
                );
            }
        }
    }
}

#[test]
fn no_allocation() {
    let mut s = Scratch::new();
    let (m, n, k) = (128, 784, 256);
    let a = fill(m * k, 3);
    let b = fill(n * k, 4);
    let mut c = vec![0f32; m * n];
    let before = allocs();
    for &(ta, tb) in &[(false, false), (false, true), (true, false)] {
        let (a_rs, a_cs) = if ta { (1, m as isize) } else { (k as isize, 1) };
        let (b_rs, b_cs) = if tb { (1, k as isize) } else { (n as isize, 1) };
        // SAFETY: buffers sized for these views.
        unsafe {
            sgemm(
                m,
                n,
                k,
                c.as_mut_ptr(),
                n as isize,
                1,
                a.as_ptr(),
                a_rs,
                a_cs,
                b.as_ptr(),
                b_rs,
                b_cs,
                &mut s,
            )
        };
        // SAFETY: as above; column-major `c`.
        unsafe {
            sgemm(
                m,
                n,
                k,
                c.as_mut_ptr(),
                1,
                m as isize,
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
    assert_eq!(allocs() - before, 0, "sgemm allocated");
    // The counter does see allocations on this thread.
    let v: Vec<u8> = std::hint::black_box(Vec::with_capacity(16));
    assert!(allocs() > before);
    drop(v);
}
