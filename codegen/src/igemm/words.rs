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

/// Copies the `rows × cols` words at `src` (strides `(rs, cs)`) into
/// `dst` at strides `(drs, dcs)`, as `f(word)`, and adds each word to
/// its row's and column's sum when those are given (`from` says which
/// value is summed: the word or the narrowed byte).
///
/// # Safety
/// Every `src[i·rs + j·cs]` for `i < rows`, `j < cols` is readable; `dst`
/// holds every `i·drs + j·dcs`.
#[allow(clippy::too_many_arguments)]
unsafe fn narrow<T: Copy>(
    dst: &mut [T],
    (drs, dcs): (isize, isize),
    src: *const i32,
    (rows, cols): (usize, usize),
    (rs, cs): (isize, isize),
    f: impl Fn(i32) -> T,
    mut row_sums: Option<&mut [i32]>,
    mut col_sums: Option<&mut [i32]>,
    summed: impl Fn(i32, T) -> i32,
) {
    let mut one = |i: usize, j: usize| {
        // SAFETY: in bounds by the caller.
        let w = unsafe { *src.offset(i as isize * rs + j as isize * cs) };
        let v = f(w);
        dst[(i as isize * drs + j as isize * dcs) as usize] = v;
        let s = summed(w, v);
        if let Some(r) = row_sums.as_deref_mut() {
            r[i] = r[i].wrapping_add(s);
        }
        if let Some(c) = col_sums.as_deref_mut() {
            c[j] = c[j].wrapping_add(s);
        }
    };
    // Walk the source along its closer stride innermost.
    if cs.unsigned_abs() <= rs.unsigned_abs() {
        for i in 0..rows {
            for j in 0..cols {
                one(i, j);
            }
        }
    } else {
        for j in 0..cols {
            for i in 0..rows {
                one(i, j);
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
        // Row sums of the original `a` (for a `u8` `b`), column sums of the
        // narrowed `b` (for an `i8` `a`).
        room(&mut w.rows, m);
        room(&mut w.cols, n);
        let rows = &mut w.rows[..m];
        let cols = &mut w.cols[..n];
        rows.fill(0);
        cols.fill(0);
        let shift_a = if signs.a_signed { 128 } else { 0 };
        let shift_b = if signs.b_unsigned { 128 } else { 0 };
        let (na_rs, na_cs) = narrowed_strides(m, k, a_rs, a_cs);
        let (nb_rs, nb_cs) = narrowed_strides(k, n, b_rs, b_cs);
        // SAFETY: `a` and `b` are in bounds by the contract; the buffers
        // hold `m·k` and `k·n` elements, which contiguous strides address.
        unsafe {
            narrow(
                a8,
                (na_rs, na_cs),
                a,
                (m, k),
                (a_rs, a_cs),
                |v| v.wrapping_add(shift_a) as u8,
                signs.b_unsigned.then_some(&mut *rows),
                None,
                |word, _| word,
            );
            narrow(
                b8,
                (nb_rs, nb_cs),
                b,
                (k, n),
                (b_rs, b_cs),
                |v| v.wrapping_sub(shift_b) as i8,
                None,
                signs.a_signed.then_some(&mut *cols),
                |_, byte| i32::from(byte),
            );
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
        for (i, &r) in rows.iter().enumerate() {
            let row = r.wrapping_mul(shift_b);
            for (j, &s) in cols.iter().enumerate() {
                let fix = row.wrapping_sub(s.wrapping_mul(shift_a));
                // SAFETY: (i, j) is in bounds by the contract.
                unsafe {
                    let p = c.offset(i as isize * c_rs + j as isize * c_cs);
                    *p = (*p).wrapping_add(fix);
                }
            }
        }
    });
}
