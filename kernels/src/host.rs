//! The entry points compiled code calls (`nnc_codegen`'s `Host`), with C
//! linkage and unmangled names: the JIT links them by address, and an
//! ahead-of-time object by name against this crate's static library.
//! Each takes and returns plain integers and floats (addresses as `i64`)
//! so that Cranelift calls it with the platform's C convention.

/// Runs a split kernel's `units` work units over the thread pool: one
/// contiguous range per task, `kernel(state, work, scratch, start, end,
/// task)` (the program's base addresses first, see `emit::base`), with at
/// most `max_tasks` tasks (the staging scratch the plan made room for)
/// and no more than units or threads.
#[no_mangle]
pub extern "C" fn nnc_parallel(
    kernel: i64,
    units: i64,
    max_tasks: i64,
    state: i64,
    work: i64,
    scratch: i64,
) {
    // SAFETY: `kernel` is the address of a finalized function of this
    // program's module with the signature `fn(i64, i64, i64, i64, i64,
    // i64)`.
    let f: extern "C" fn(i64, i64, i64, i64, i64, i64) =
        unsafe { std::mem::transmute(kernel as usize) };
    let units = units.max(0) as usize;
    let tasks = crate::threads::threads()
        .min(units)
        .min(max_tasks.max(1) as usize)
        .max(1);
    let range = |t: usize| ((units * t / tasks) as i64, (units * (t + 1) / tasks) as i64);
    crate::threads::run(tasks, &|t| {
        let (start, end) = range(t);
        if start < end {
            f(state, work, scratch, start, end, t as i64);
        }
    });
}

/// Copies `bytes` bytes from `src` to `dst` (which do not overlap).
#[no_mangle]
pub extern "C" fn nnc_copy(dst: i64, src: i64, bytes: i64) {
    // SAFETY: the kernel passes two runs of `bytes` bytes inside its
    // program's arena or state, which are disjoint (a copy's source and
    // destination are different values' buffers).
    unsafe {
        std::ptr::copy_nonoverlapping(src as *const u8, dst as *mut u8, bytes.max(0) as usize)
    };
}

#[no_mangle]
pub extern "C" fn nnc_powf(a: f32, b: f32) -> f32 {
    a.powf(b)
}
/// `c = a @ b` (or `c += a @ b`) through `sgemm`, with the program's
/// packing scratch; strides in elements. Allocates nothing.
#[allow(clippy::too_many_arguments)]
#[no_mangle]
pub extern "C" fn nnc_sgemm(
    m: i64,
    n: i64,
    k: i64,
    c: i64,
    c_rs: i64,
    c_cs: i64,
    a: i64,
    a_rs: i64,
    a_cs: i64,
    b: i64,
    b_rs: i64,
    b_cs: i64,
    accumulate: i64,
    scratch: i64,
) {
    // SAFETY: the plan guarantees the three views are in bounds for these
    // shapes and strides and that `c` overlaps neither operand; `scratch`
    // is the program's own `Scratch`, used by one run (and, in a split
    // kernel, one task) at a time, or 0: the other tasks of a split kernel,
    // which use their thread's own.
    unsafe {
        let call = |scratch: &mut crate::sgemm::Scratch| {
            crate::sgemm::sgemm_threads(
                m as usize,
                n as usize,
                k as usize,
                c as *mut f32,
                c_rs as isize,
                c_cs as isize,
                a as *const f32,
                a_rs as isize,
                a_cs as isize,
                b as *const f32,
                b_rs as isize,
                b_cs as isize,
                accumulate != 0,
                scratch,
            )
        };
        if scratch == 0 {
            crate::sgemm::with_thread_scratch(crate::sgemm::Isa::detect(), call)
        } else {
            call(&mut *(scratch as *mut crate::sgemm::Scratch))
        }
    }
}

/// `c = a @ b` (or `c += a @ b`) of byte matrices held one value per
/// `i32` word into exact `i32` sums, through `igemm`
/// ([`crate::igemm::igemm_words`]: narrowed into byte buffers of the
/// calling thread, grown once to the largest product, so a call allocates
/// nothing after the first of its size; packing space of the thread too).
/// Arguments as [`nnc_sgemm`]'s, strides in elements, but the last is the
/// operands' signs ([`crate::igemm::Signs::bits`]) instead of a scratch.
#[allow(clippy::too_many_arguments)]
#[no_mangle]
pub extern "C" fn nnc_igemm(
    m: i64,
    n: i64,
    k: i64,
    c: i64,
    c_rs: i64,
    c_cs: i64,
    a: i64,
    a_rs: i64,
    a_cs: i64,
    b: i64,
    b_rs: i64,
    b_cs: i64,
    accumulate: i64,
    signs: i64,
) {
    // SAFETY: the plan guarantees the three views are in bounds for these
    // shapes and strides and that `c` overlaps neither operand; the
    // operands are byte values of the dtypes `signs` names (casts to
    // `i8`/`u8` saturate, and every other producer keeps values in range).
    unsafe {
        crate::igemm::igemm_words(
            m as usize,
            n as usize,
            k as usize,
            c as *mut i32,
            c_rs as isize,
            c_cs as isize,
            a as *const i32,
            a_rs as isize,
            a_cs as isize,
            b as *const i32,
            b_rs as isize,
            b_cs as isize,
            crate::igemm::Signs::from_bits(signs),
            accumulate != 0,
        )
    }
}

/// A new GEMM packing space for a program compiled ahead of time (its
/// `<name>_init`): the scratch base address its kernels take. Null if the
/// allocation failed.
#[no_mangle]
pub extern "C" fn nnc_scratch_new() -> *mut crate::sgemm::Scratch {
    std::panic::catch_unwind(|| Box::into_raw(Box::new(crate::sgemm::Scratch::new())))
        .unwrap_or(std::ptr::null_mut())
}

/// Frees a packing space from [`nnc_scratch_new`] (null is ignored).
///
/// # Safety
/// `scratch` came from [`nnc_scratch_new`] and is freed once, when no
/// program runs with it.
#[no_mangle]
pub unsafe extern "C" fn nnc_scratch_free(scratch: *mut crate::sgemm::Scratch) {
    if !scratch.is_null() {
        // SAFETY: by the contract, a box of ours not yet freed.
        drop(unsafe { Box::from_raw(scratch) });
    }
}

/// Sets how many threads the kernels split work over (see
/// [`crate::threads::set_threads`]); a C program that never calls it runs
/// on its calling thread. Returns 0, or -1 for `threads < 1` or a thread
/// that could not start.
#[no_mangle]
pub extern "C" fn nnc_set_threads(threads: i64) -> i32 {
    match usize::try_from(threads).map(crate::threads::set_threads) {
        Ok(Ok(())) => 0,
        _ => -1,
    }
}
