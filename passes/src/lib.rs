//! Graph-to-graph passes: reverse-mode autodiff, the construction of the
//! whole training step (forward, loss, backward, optimizer update), the
//! optimizer (equality saturation with egg, `opt`), and quantization's
//! parameters and calibration observers (`quantize`).
//!
//! Passes see only `nnc_ir`; they never know the source language or the
//! machine the code will run on.

pub mod autodiff;
pub mod compress;
pub mod gradients;
pub mod opt;
pub mod quantize;
pub mod train_step;

pub use autodiff::{differentiate, gradients};
pub use gradients::gradient_graph;
pub use opt::{optimize, optimize_with, OptConfig, OptLevel, Report as OptReport};
pub use train_step::{build_train_step, build_train_step_with};

use thiserror::Error;

/// A pass could not transform the graph: an internal invariant failed or
/// the graph asks for something the pass cannot do.
#[derive(Debug, Clone, PartialEq, Error)]
#[error("{message}")]
pub struct PassError {
    pub message: String,
}

impl PassError {
    pub fn new(message: impl Into<String>) -> PassError {
        PassError {
            message: message.into(),
        }
    }
}

impl From<nnc_ir::ShapeError> for PassError {
    fn from(e: nnc_ir::ShapeError) -> PassError {
        PassError::new(format!("internal shape error: {}", e.message))
    }
}
