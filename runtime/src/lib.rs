//! Runtime support for compiled `nnc` models: loading data, feeding batches,
//! and the training loop with its metrics.
//!
//! The runtime never sees the source language: it receives an `ir::Module`
//! and the graphs the passes built from it, and a [`Run`] takes it from
//! there to a trained model, its checkpoints and its report.

pub mod aot;
pub mod checkpoint;
pub mod compress;
pub mod data;
pub mod executor;
pub mod folds;
pub mod jit;
pub mod loader;
pub mod metrics;
pub mod predict;
pub mod progress;
pub mod prune;
pub mod quantize;
pub mod report;
pub mod report_html;
pub mod run;
pub mod trace;
pub mod train;

pub use checkpoint::{Checkpoint, Meta as CheckpointMeta, Scope as CheckpointScope};
pub use executor::{
    Backend, Batch, BatchData, BatchField, Executor, Interpreter, Programs, StepMetrics,
};
pub use jit::Jit;
pub use loader::LoadedData;
pub use predict::Prediction;
pub use progress::Progress;
pub use report::Report;
pub use run::{
    CrossValidation, Event, FoldReport, MetricSummary, OptionsError, Run, RunError, RunOptions,
    RunOutcome, Split,
};
pub use train::{
    train, train_observed, EpochReport, Metrics, StepInfo, TrainObserver, TrainOptions,
    TrainReport, TrainSettings,
};

use thiserror::Error;

#[derive(Debug, Error)]
pub enum RuntimeError {
    #[error(transparent)]
    Data(#[from] data::DataError),
    #[error("{0}")]
    Setup(String),
    #[error("evaluating the graph failed: {0}")]
    Eval(#[from] nnc_ir::interp::EvalError),
    #[error("the loss became {value} at epoch {epoch}, step {step}; training stopped (try a lower learning rate)")]
    NonFinite {
        epoch: usize,
        step: usize,
        value: f64,
    },
}
