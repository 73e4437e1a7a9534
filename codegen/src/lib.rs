//! Native code for nnc graphs: each graph, specialized to concrete shapes,
//! becomes Cranelift kernels (vectorized loops; large matrix products
//! through our packed, allocation-free `sgemm`) run by one compiled
//! schedule over a statically planned memory arena.
//!
//! Two halves, data flowing one way:
//!
//! - `plan` (the planning half; no Cranelift, nothing from `emit`):
//!   concrete shapes, views, the liveness-based memory plan, kernel
//!   grouping (`plan::group`), the elementwise expression a loop
//!   evaluates (`plan::expr`), and the decisions: matmul forms
//!   (`plan::matmul`), staging, thread splits (`plan::split`), what each
//!   kernel covers, computes and moves (`plan::summary`).
//! - `emit` (the emitting half): Cranelift IR for each kernel, small matrix
//!   products as Cranelift loops (`emit::matmul`), `unfold`/`fold`
//!   (`emit::window`), inline vector math (`emit::vmath`), random numbers
//!   (`emit::random`), and the JIT module, arena, state buffer and
//!   schedule (`emit::program`).
//!
//! And the host kernels they call: `sgemm` (packed SGEMM, AVX-512 / AVX2 /
//! scalar) for the large products, `igemm` (int8 GEMM: byte products,
//! exact `i32` sums), `conv` (convolutions from the image),
//! `threads` (the thread pool parallel kernels split their work over).
//! The old module paths (`nnc_codegen::group`, `matmul`, `vmath`, …) are
//! re-exported.

pub mod emit;
pub mod plan;

pub use emit::{matmul, object, program, random, vmath, window};
pub use plan::{expr, group, summary};

pub use group::GroupConfig;
pub use nnc_kernels::{conv, igemm, sgemm, threads, vmath16};
pub use plan::StateLayout;
pub use program::{CompileStats, Fault, Program, StateBuffer};
pub use summary::KernelInfo;
pub use threads::set_threads;

/// The JIT cannot compile a graph: an unsupported op or dtype, or an
/// internal error.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("{message}")]
pub struct CodegenError {
    pub message: String,
}

impl CodegenError {
    pub fn new(message: impl Into<String>) -> CodegenError {
        CodegenError {
            message: message.into(),
        }
    }
}
