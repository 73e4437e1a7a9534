//! The host kernels of nnc: plain Rust with no Cranelift, what compiled
//! code calls. The packed GEMMs (`sgemm`, the 8-bit `igemm`), the
//! convolutions computed from the image (`conv`), sixteen-lane `exp`,
//! `log`, `tanh` and `sigmoid` (`vmath16`), the thread pool kernels split
//! their work over (`threads`), and the C entry points (`host`: the
//! functions compiled code calls by name; `weights`: a checkpoint read at
//! a C program's start).
//!
//! Why a crate of its own: the JIT (`nnc_codegen`) links these by
//! address, and an ahead-of-time object (`nnc compile -o model.o`) links
//! them by name from this crate built as a static library
//! (`libnnc_kernels.a`), so both run the same kernels.

pub mod conv;
pub mod host;
pub mod igemm;
pub mod sgemm;
pub mod threads;
mod tile_split;
pub mod vmath16;
pub mod vmath_constants;
pub mod weights;

pub use threads::{set_threads, ThreadsError};
