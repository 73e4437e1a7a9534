//! The byte product of operands held widened, one `i32` word per value (as
//! the JIT stores `i8`/`u8` elements for now: `plan::Kind::I32`), for
//! every mix of signs: `c (i32) = a @ b` with `a` and `b` each `i8` or
//! `u8`. What the JIT's `nnc_igemm` host function runs.
//!
//! The operands are narrowed into contiguous byte buffers (O(m·k + k·n)
//! beside the product's O(m·n·k)) and multiplied by [`igemm_threads`],
//! which takes `u8 @ i8` only. Other signs are shifted into that form and
//! corrected exactly afterwards:
//!
//! - an `i8` left operand is multiplied as `a' = a + 128` (a `u8`), and
//!   `a @ b' = a' @ b' - 128 · colsum(b')`;
//! - a `u8` right operand is multiplied as `b' = b - 128` (an `i8`), and
//!   `a @ b = a @ b' + 128 · rowsum(a)`.
//!
//! Cost (VNNI, one thread, 2026-12-07, a shared machine): `u8 @ i8` from
//! words takes 1.15–1.4× the time of [`super::igemm`] on bytes for the
//! MLP's, CIFAR's dense and square shapes (the narrowing pass is bound by
//! reading four bytes per value), about 1.9× at `n = 10`, and 3.7× for a
//! single row (a matrix-vector product narrows all of `b` for little
//! work); other sign mixes about 1.2× more for their sums and correction.
//! Storing bytes in the arena, or packing straight from words, removes the
//! pass.
//!
//! Everything is `i32` arithmetic modulo 2³², like the kernels, so the
//! result is the true sum modulo 2³² for every mix: exact whenever it fits
//! in `i32` (see the module documentation of [`super`]).

use super::{igemm_threads, Scratch};
use std::cell::RefCell;

/// Which bytes the widened operands hold.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Signs {
    /// `a` holds `i8` values (`u8` otherwise).
    pub a_signed: bool,
    /// `b` holds `u8` values (`i8` otherwise).
    pub b_unsigned: bool,
}

impl Signs {
    /// The signs of `a: u8 @ b: i8`, the kernel's own form.
    pub const NATIVE: Signs = Signs {
        a_signed: false,
        b_unsigned: false,
    };

    /// Packs the signs into one integer (bit 0: `a_signed`, bit 1:
    /// `b_unsigned`): how a JIT kernel passes them to its host call.
    pub fn bits(self) -> i64 {
        i64::from(self.a_signed) | i64::from(self.b_unsigned) << 1
    }

    /// The inverse of [`Signs::bits`].
    pub fn from_bits(bits: i64) -> Signs {
        Signs {
            a_signed: bits & 1 != 0,
            b_unsigned: bits & 2 != 0,
        }
    }
}

/// A thread's buffers for [`igemm_words`]: the narrowed operands, the sums
/// of their correction, and the packing space of products run on this
/// thread. Grown to the largest product the thread has multiplied and
/// kept, so a call allocates only when it is larger than every earlier
/// one. Thread-local rather than the program's (as `sgemm`'s scratch is)
/// so a split kernel's tasks each narrow into their own without the plan
/// reserving room; the packing space is distinct from
/// [`super::with_thread_scratch`]'s, which the tasks [`igemm_threads`]
/// hands out may use on this same thread while this one is borrowed.
#[derive(Default)]
struct Words {
    a: Vec<u8>,
    b: Vec<i8>,
    rows: Vec<i32>,
    cols: Vec<i32>,
    scratch: Option<Scratch>,
}

thread_local! {
    static WORDS: RefCell<Words> = RefCell::new(Words::default());
}

/// Grows `v` to at least `len` elements, never shrinking it.
fn room<T: Copy + Default>(v: &mut Vec<T>, len: usize) {
    if v.len() < len {
        v.resize(len, T::default());
    }
}

/// A contiguous copy's element strides for a `rows × cols` source at
/// `(rs, cs)`: row-major when the source's columns are the closer (so the
/// copy reads the source in order and the packing takes its fast path
/// either way), column-major otherwise.
fn narrowed_strides(rows: usize, cols: usize, rs: isize, cs: isize) -> (isize, isize) {
    if cs.unsigned_abs() <= rs.unsigned_abs() {
        (cols as isize, 1)
    } else {
        (1, rows as isize)
    }
}

/// Copies the `rows × cols` words at `src` (strides `(rs, cs)`) into the
/// contiguous `dst` at [`narrowed_strides`], as `f(word)`. Line by line
/// along the source's closer stride, so a line at element stride 1 (the
/// usual case) is a slice-to-slice map the compiler vectorizes (a scalar
/// loop with index arithmetic took longer than the product itself).
///
/// # Safety
/// Every `src[i·rs + j·cs]` for `i < rows`, `j < cols` is readable, and
/// `dst` holds `rows · cols` elements.
unsafe fn narrow<T: Copy>(
    dst: &mut [T],
    src: *const i32,
    (rows, cols): (usize, usize),
    (rs, cs): (isize, isize),
    f: impl Fn(i32) -> T,
) {
    // Lines along the closer stride: rows of a row-major copy, or
    // columns of a column-major one (as `narrowed_strides` chooses).
    let (lines, len, ls, es) = if cs.unsigned_abs() <= rs.unsigned_abs() {
        (rows, cols, rs, cs)
    } else {
        (cols, rows, cs, rs)
    };
    for (l, out) in dst.chunks_exact_mut(len.max(1)).take(lines).enumerate() {
        // SAFETY: the line's first element is in bounds by the caller.
        let line = unsafe { src.offset(l as isize * ls) };
        if es == 1 {
            // SAFETY: `len` consecutive words of the source, in bounds.
            let words = unsafe { std::slice::from_raw_parts(line, len) };
            for (o, &w) in out.iter_mut().zip(words) {
                *o = f(w);
            }
        } else {
            for (e, o) in out.iter_mut().enumerate() {
                // SAFETY: in bounds by the caller.
                *o = f(unsafe { *line.offset(e as isize * es) });
            }
        }
    }
}

/// The wrapping sums of the rows (`by_rows`) or columns of the contiguous
/// `rows × cols` matrix `buf`, row-major or column-major, into `out`: a
/// sum per contiguous run, or each run added into `out`, both vectorized.
fn line_sums<T: Copy + Into<i32>>(
    out: &mut [i32],
    buf: &[T],
    (rows, cols): (usize, usize),
    row_major: bool,
    by_rows: bool,
) {
    out.fill(0);
    let (len, runs) = if row_major {
        (cols, rows)
    } else {
        (rows, cols)
    };
    if len == 0 {
        return;
    }
    let contiguous_sums = by_rows == row_major;
    for (r, run) in buf.chunks_exact(len).take(runs).enumerate() {
        if contiguous_sums {
            out[r] = run.iter().fold(0i32, |acc, &x| acc.wrapping_add(x.into()));
        } else {
            for (o, &x) in out.iter_mut().zip(run) {
                *o = o.wrapping_add(x.into());
            }
        }
    }
}

/// `c = a @ b` (or `c += a @ b` when `accumulate`, wrapping) for `a: m×k`
/// and `b: k×n` held as one `i32` word per byte value (`signs` says which
/// bytes), into `c: i32 m×n`; strides in elements (words). Narrows both
/// operands into this thread's buffers, multiplies with
/// [`igemm_threads`] (over the thread pool when large enough and not
/// already inside a parallel task) and applies the sign corrections of the
/// module documentation. Allocates only to grow this thread's buffers.
///
/// # Safety
/// Every element of the three views must be in bounds for its strides;
/// `c` must not overlap `a` or `b`, and no two elements of `c` may alias.
/// The words of `a` and `b` must be values of their bytes (`0..=255` for
/// `u8`, `-128..=127` for `i8`); others are truncated to a byte.
#[allow(clippy::too_many_arguments)]
pub unsafe fn igemm_words(
    m: usize,
    n: usize,
    k: usize,
    c: *mut i32,
    c_rs: isize,
    c_cs: isize,
    a: *const i32,
    a_rs: isize,
    a_cs: isize,
    b: *const i32,
    b_rs: isize,
    b_cs: isize,
    signs: Signs,
    accumulate: bool,
) {
    if m == 0 || n == 0 {
        return;
    }
    WORDS.with(|cell| {
        let mut words = cell.borrow_mut();
        let w = &mut *words;
        room(&mut w.a, m * k);
        room(&mut w.b, k * n);
        let (a8, b8) = (&mut w.a[..m * k], &mut w.b[..k * n]);
        let shift_a = if signs.a_signed { 128 } else { 0 };
        let shift_b = if signs.b_unsigned { 128 } else { 0 };
        let (na_rs, na_cs) = narrowed_strides(m, k, a_rs, a_cs);
        let (nb_rs, nb_cs) = narrowed_strides(k, n, b_rs, b_cs);
        // SAFETY: `a` and `b` are in bounds by the contract; the buffers
        // hold `m·k` and `k·n` elements.
        unsafe {
            narrow(a8, a, (m, k), (a_rs, a_cs), |v| {
                v.wrapping_add(shift_a) as u8
            });
            narrow(b8, b, (k, n), (b_rs, b_cs), |v| {
                v.wrapping_sub(shift_b) as i8
            });
        }
        // Row sums of `a` (for a `u8` `b`: `rowsum(a') - 128 · k` when
        // `a` is shifted too) and column sums of the narrowed `b` (for an
        // `i8` `a`).
        room(&mut w.rows, m);
        room(&mut w.cols, n);
        let rows = &mut w.rows[..m];
        let cols = &mut w.cols[..n];
        rows.fill(0);
        cols.fill(0);
        if signs.b_unsigned {
            line_sums(rows, a8, (m, k), na_cs == 1, true);
            let shifted = (k as i32).wrapping_mul(shift_a);
            for r in rows.iter_mut() {
                *r = r.wrapping_sub(shifted);
            }
        }
        if signs.a_signed {
            line_sums(cols, b8, (k, n), nb_cs == 1, false);
        }
        let scratch = w.scratch.get_or_insert_with(Scratch::new);
        // SAFETY: the narrowed operands are in bounds for their contiguous
        // strides; `c` by the contract.
        unsafe {
            igemm_threads(
                m,
                n,
                k,
                c,
                c_rs,
                c_cs,
                a8.as_ptr(),
                na_rs,
                na_cs,
                b8.as_ptr(),
                nb_rs,
                nb_cs,
                accumulate,
                scratch,
            )
        };
        if signs == Signs::NATIVE {
            return;
        }
        // c[i][j] += 128 · rowsum(a)[i] (u8 `b`) - 128 · colsum(b')[j]
        // (i8 `a`).
        for (i, &r) in rows.iter().enumerate() {
            let row = r.wrapping_mul(shift_b);
            let fix = |s: i32| row.wrapping_sub(s.wrapping_mul(shift_a));
            if c_cs == 1 {
                // SAFETY: row `i` of `c` is `n` consecutive elements in
                // bounds by the contract, aliasing nothing else here.
                let line =
                    unsafe { std::slice::from_raw_parts_mut(c.offset(i as isize * c_rs), n) };
                for (o, &s) in line.iter_mut().zip(cols.iter()) {
                    *o = o.wrapping_add(fix(s));
                }
            } else {
                for (j, &s) in cols.iter().enumerate() {
                    // SAFETY: (i, j) is in bounds by the contract.
                    unsafe {
                        let p = c.offset(i as isize * c_rs + j as isize * c_cs);
                        *p = (*p).wrapping_add(fix(s));
                    }
                }
            }
        }
    });
}
