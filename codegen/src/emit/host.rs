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
use nnc_kernels::host;
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
    pub(crate) module: &'m mut dyn Module,
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
    jb.symbol(Host::Powf.name(), host::nnc_powf as *const u8);
    jb.symbol(Host::Sgemm.name(), host::nnc_sgemm as *const u8);
    jb.symbol(Host::Igemm.name(), host::nnc_igemm as *const u8);
    jb.symbol(Host::Parallel.name(), host::nnc_parallel as *const u8);
    jb.symbol(Host::Copy.name(), host::nnc_copy as *const u8);
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
