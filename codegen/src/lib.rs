//! Native code for nnc graphs: each graph, specialized to concrete shapes,
//! becomes Cranelift kernels (vectorized loops; large matrix products
//! through our packed, allocation-free `sgemm`) run by one compiled
//! schedule over a statically planned memory arena.
//!
//! - `plan`: concrete shapes, views, the liveness-based memory plan.
//! - `group`: kernel grouping: inline values, multi-output loops.
//! - `expr`: the elementwise expression a loop evaluates per element.
//! - `emit`: Cranelift IR for each kernel.
//! - `matmul`: small matrix products as Cranelift loops, and the rule.
//! - `sgemm`: packed SGEMM (AVX-512 / AVX2 / scalar) for the large ones.
//! - `program`: the JIT module, arena, state buffer and schedule.
//! - `vmath`: inline vector `exp`, `log`, `tanh`, `sigmoid`.
//! - `window`: `unfold` (im2col) and `fold` (col2im).
//! - `random`: counter-based uniform random numbers.
//! - `summary`: what each kernel covers, computes and moves.
//! - `threads`: the thread pool parallel kernels split their work over.

pub mod conv;
pub mod emit;
pub mod plan;
pub mod sgemm;
pub mod threads;

pub use emit::{matmul, program, random, vmath, window};
pub use plan::{expr, group, summary};

pub use group::GroupConfig;
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
