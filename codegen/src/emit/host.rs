//! The host functions kernels call ([`Host`]): their names and
//! signatures, [`Calls`] (how a kernel body calls them) and its JIT
//! implementation, and the functions themselves: `powf`, `sgemm` with the
//! program's packing scratch, `igemm` of bytes held as words, `nnc_parallel` (what a split kernel's
//! trampoline calls to run its work units over the thread pool) and the
//! convolutions of `crate::conv`. [`new_module`] links them into a JIT
//! module.

use crate::CodegenError;
use cranelift_codegen::ir::{types, AbiParam, FuncRef, InstBuilder, Value};
use cranelift_codegen::settings::{self, Configurable};
use cranelift_frontend::FunctionBuilder;
use cranelift_jit::{JITBuilder, JITModule};
use cranelift_module::{default_libcall_names, FuncId, Linkage, Module};
use std::collections::HashMap;

/// Host functions kernels call: `powf` (rare: optimizer bias corrections),
/// `sgemm`, `igemm` (byte products), `parallel` (runs a kernel's range of work units over the
/// thread pool: see [`MapSplit`]), and a convolution computed from the
/// image (see [`crate::conv`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Host {
    Powf,
    Sgemm,
    /// A byte `matmul` (`i8`/`u8` operands held as words, `i32` sums):
    /// [`nnc_igemm`].
    Igemm,
    Parallel,
    Conv2dRows,
    Conv2dWeightGrad,
    /// `exp`, `log`, `tanh` or `sigmoid` of 16 lanes in place, AVX-512
    /// (`crate::vmath16`).
    Vmath16,
    /// `memcpy` of a contiguous run: the vector loop moves 16 bytes per
    /// iteration, libc's copy a cache line, several times faster.
    Copy,
}

impl Host {
    pub fn name(self) -> &'static str {
        match self {
            Host::Powf => "nnc_powf",
            Host::Sgemm => "nnc_sgemm",
            Host::Igemm => "nnc_igemm",
            Host::Parallel => "nnc_parallel",
            Host::Conv2dRows => "nnc_conv2d_rows",
            Host::Conv2dWeightGrad => "nnc_conv2d_weight_grad",
            Host::Copy => "nnc_copy",
            Host::Vmath16 => "nnc_vmath16",
        }
    }

    pub fn signature(self, sig: &mut cranelift_codegen::ir::Signature) {
        match self {
            Host::Powf => {
                sig.params.push(AbiParam::new(types::F32));
                sig.params.push(AbiParam::new(types::F32));
                sig.returns.push(AbiParam::new(types::F32));
            }
            // Shapes, three views, accumulate, and the packing scratch
            // (`Sgemm`) or the operands' signs (`Igemm`).
            Host::Sgemm | Host::Igemm => {
                for _ in 0..14 {
                    sig.params.push(AbiParam::new(types::I64));
                }
            }
            Host::Copy | Host::Vmath16 => {
                // Destination, source, bytes; or floats, function, count.
                for _ in 0..3 {
                    sig.params.push(AbiParam::new(types::I64));
                }
            }
            Host::Parallel => {
                // The kernel's address, its work units, the most tasks,
                // and the program's base addresses to pass on.
                for _ in 0..3 + super::base::BASES {
                    sig.params.push(AbiParam::new(types::I64));
                }
            }
            // Eight operands, the 11-part geometry, the fill value.
            Host::Conv2dRows | Host::Conv2dWeightGrad => {
                for _ in 0..8 + 11 + 1 {
                    sig.params.push(AbiParam::new(types::I64));
                }
            }
        }
    }
}

/// What a kernel body needs from its surroundings: a way to call hosts.
pub trait Calls {
    fn call(&mut self, b: &mut FunctionBuilder, host: Host, args: &[Value]) -> Vec<Value>;
}

pub(crate) struct HostCalls<'m> {
    pub(crate) module: &'m mut JITModule,
    pub(crate) ids: &'m mut HashMap<Host, FuncId>,
    pub(crate) refs: HashMap<Host, FuncRef>,
}

impl Calls for HostCalls<'_> {
    fn call(&mut self, b: &mut FunctionBuilder, host: Host, args: &[Value]) -> Vec<Value> {
        let fref = match self.refs.get(&host) {
            Some(&r) => r,
            None => {
                let id = match self.ids.get(&host) {
                    Some(&id) => id,
                    None => {
                        let mut sig = self.module.make_signature();
                        host.signature(&mut sig);
                        let id = self
                            .module
                            .declare_function(host.name(), Linkage::Import, &sig)
                            .expect("host functions are declared once with one signature");
                        self.ids.insert(host, id);
                        id
                    }
                };
                let r = self.module.declare_func_in_func(id, b.func);
                self.refs.insert(host, r);
                r
            }
        };
        let call = b.ins().call(fref, args);
        b.inst_results(call).to_vec()
    }
}

/// Runs a split kernel's `units` work units over the thread pool: one
/// contiguous range per task, `kernel(state, work, scratch, start, end,
/// task)` (the program's base addresses first, see `emit::base`), with at
/// most `max_tasks` tasks (the staging scratch the plan made room for)
/// and no more than units or threads.
pub(crate) extern "C" fn nnc_parallel(
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
pub(crate) extern "C" fn nnc_copy(dst: i64, src: i64, bytes: i64) {
    // SAFETY: the kernel passes two runs of `bytes` bytes inside its
    // program's arena or state, which are disjoint (a copy's source and
    // destination are different values' buffers).
    unsafe {
        std::ptr::copy_nonoverlapping(src as *const u8, dst as *mut u8, bytes.max(0) as usize)
    };
}

pub(crate) extern "C" fn nnc_powf(a: f32, b: f32) -> f32 {
    a.powf(b)
}
/// `c = a @ b` (or `c += a @ b`) through `sgemm`, with the program's
/// packing scratch; strides in elements. Allocates nothing.
#[allow(clippy::too_many_arguments)]
pub(crate) extern "C" fn nnc_sgemm(
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
pub(crate) extern "C" fn nnc_igemm(
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

pub(crate) fn new_module() -> Result<JITModule, CodegenError> {
    let mut flags = settings::builder();
    let set = |f: &mut settings::Builder, k: &str, v: &str| {
        f.set(k, v)
            .map_err(|e| CodegenError::new(format!("cranelift setting {k}: {e}")))
    };
    set(&mut flags, "opt_level", "speed")?;
    set(&mut flags, "use_colocated_libcalls", "false")?;
    set(&mut flags, "is_pic", "false")?;
    let isa = cranelift_native::builder()
        .map_err(|e| CodegenError::new(format!("this CPU is not supported by Cranelift: {e}")))?
        .finish(settings::Flags::new(flags))
        .map_err(|e| CodegenError::new(format!("cranelift: {e}")))?;
    let mut jb = JITBuilder::with_isa(isa, default_libcall_names());
    jb.symbol(Host::Powf.name(), nnc_powf as *const u8);
    jb.symbol(Host::Sgemm.name(), nnc_sgemm as *const u8);
    jb.symbol(Host::Igemm.name(), nnc_igemm as *const u8);
    jb.symbol(Host::Parallel.name(), nnc_parallel as *const u8);
    jb.symbol(Host::Copy.name(), nnc_copy as *const u8);
    jb.symbol(
        Host::Vmath16.name(),
        crate::vmath16::nnc_vmath16 as *const u8,
    );
    jb.symbol(
        Host::Conv2dRows.name(),
        crate::conv::nnc_conv2d_rows as *const u8,
    );
    jb.symbol(
        Host::Conv2dWeightGrad.name(),
        crate::conv::nnc_conv2d_weight_grad as *const u8,
    );
    Ok(JITModule::new(jb))
}
