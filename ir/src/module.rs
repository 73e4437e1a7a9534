//! A compiled program: the model's forward graph plus, when the source has
//! them, the data it reads and how it trains. This is everything later
//! stages see; none of them looks at the source language.

use crate::graph::Graph;
use crate::types::DType;
use std::fmt;

#[derive(Debug, Clone)]
pub struct Module {
    /// The model's name (`MLP`).
    pub name: String,
    /// Inputs to outputs; params are leaves.
    pub forward: Graph,
    pub data: Option<DataSpec>,
    pub train: Option<TrainSpec>,
}

/// Where the samples come from. Paths are as written in the source,
/// resolved by the runtime against the source file's folder (or a folder
/// given on the command line).
#[derive(Debug, Clone, PartialEq)]
pub struct DataSpec {
    pub name: String,
    pub fields: Vec<DataField>,
    pub test: Option<TestSet>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct DataField {
    pub name: String,
    /// The element type the graph receives (`f32` unless annotated).
    pub dtype: DType,
    pub source: Source,
    pub transforms: Vec<Transform>,
}

#[derive(Debug, Clone, PartialEq)]
pub enum Source {
    /// An IDX file (MNIST layout), plain or gzipped.
    Idx { path: String },
    /// Columns `[from, to)` of a numeric CSV file, plain or gzipped.
    CsvColumns {
        path: String,
        from: usize,
        to: usize,
    },
    /// One column of a numeric CSV file (labels).
    CsvColumn { path: String, column: usize },
}

#[derive(Debug, Clone, PartialEq)]
pub enum Transform {
    Scale(f64),
    OneHot(usize),
    Normalize {
        mean: Vec<f64>,
        std: Vec<f64>,
    },
    /// New per-sample shape.
    Reshape(Vec<usize>),
}

#[derive(Debug, Clone, PartialEq)]
pub enum TestSet {
    /// Separate files, one per field.
    Fields(Vec<DataField>),
    /// This fraction of the samples, held out by a seeded shuffle.
    Split(f64),
}

#[derive(Debug, Clone)]
pub struct TrainSpec {
    /// The forward graph extended with the loss: its outputs are the model's
    /// outputs plus `loss` (a scalar); data fields the loss reads (labels)
    /// are extra inputs.
    pub objective: Graph,
    pub data: String,
    pub optimizer: Optimizer,
    pub batch: usize,
    pub epochs: usize,
    pub seed: u64,
    /// Fraction of the training samples held out for validation.
    pub validate: Option<f64>,
    pub metrics: Vec<Metric>,
}

/// The loss output's name in `TrainSpec::objective`.
pub const LOSS: &str = "loss";

#[derive(Debug, Clone, PartialEq)]
pub enum Optimizer {
    /// PyTorch `SGD`: `v = momentum * v + g; p -= lr * (nesterov ? g + momentum * v : v)`,
    /// with `g += weight_decay * p` first.
    Sgd {
        lr: f64,
        momentum: f64,
        nesterov: bool,
        weight_decay: f64,
    },
    /// PyTorch `Adam` (L2 weight decay added to the gradient).
    Adam {
        lr: f64,
        beta1: f64,
        beta2: f64,
        eps: f64,
        weight_decay: f64,
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Metric {
    /// Fraction of samples whose arg-max output equals the integer label.
    Accuracy,
}

impl fmt::Display for Optimizer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Optimizer::Sgd {
                lr,
                momentum,
                nesterov,
                weight_decay,
            } => write!(
                f,
                "sgd(lr: {lr:?}, momentum: {momentum:?}, nesterov: {nesterov}, weight_decay: {weight_decay:?})"
            ),
            Optimizer::Adam {
                lr,
                beta1,
                beta2,
                eps,
                weight_decay,
            } => write!(
                f,
                "adam(lr: {lr:?}, beta1: {beta1:?}, beta2: {beta2:?}, eps: {eps:?}, weight_decay: {weight_decay:?})"
            ),
        }
    }
}
