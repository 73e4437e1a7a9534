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
    /// How the learning rate changes from epoch to epoch.
    pub schedule: Option<Schedule>,
    pub metrics: Vec<Metric>,
}

/// The loss output's name in `TrainSpec::objective`.
pub const LOSS: &str = "loss";

/// Inputs named `hyper.*` carry hyperparameters that the runtime feeds each
/// step, rather than data.
pub const HYPER: &str = "hyper.";

/// The training step's learning-rate input: an input, not a constant, so a
/// schedule can change it without recompiling.
pub const LEARNING_RATE: &str = "hyper.lr";

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

/// Learning-rate schedules, stepped once per epoch like PyTorch's
/// `lr_scheduler`s.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Schedule {
    /// `StepLR`: multiply by `gamma` every `every` epochs.
    Step { every: usize, gamma: f64 },
    /// `ExponentialLR`: multiply by `gamma` every epoch.
    Exponential { gamma: f64 },
    /// `CosineAnnealingLR` over the whole run, down to `min_lr`.
    Cosine { min_lr: f64 },
}

impl Schedule {
    /// The rate for 0-based `epoch` of `epochs`, starting from `base`.
    pub fn lr(&self, base: f64, epoch: usize, epochs: usize) -> f64 {
        match *self {
            Schedule::Step { every, gamma } => base * gamma.powi((epoch / every.max(1)) as i32),
            Schedule::Exponential { gamma } => base * gamma.powi(epoch as i32),
            Schedule::Cosine { min_lr } => {
                let t = epoch as f64 / epochs.max(1) as f64;
                min_lr + (base - min_lr) * (1.0 + (std::f64::consts::PI * t).cos()) / 2.0
            }
        }
    }
}

impl Optimizer {
    /// The base learning rate.
    pub fn lr(&self) -> f64 {
        match *self {
            Optimizer::Sgd { lr, .. } | Optimizer::Adam { lr, .. } => lr,
        }
    }
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

#[cfg(test)]
mod tests {
    use super::Schedule;

    fn close(a: f64, b: f64) -> bool {
        (a - b).abs() < 1e-12
    }

    #[test]
    fn schedules_match_pytorch() {
        // StepLR(step_size=2, gamma=0.5) from lr 1: 1, 1, .5, .5, .25
        let s = Schedule::Step {
            every: 2,
            gamma: 0.5,
        };
        let got: Vec<f64> = (0..5).map(|e| s.lr(1.0, e, 5)).collect();
        assert_eq!(got, vec![1.0, 1.0, 0.5, 0.5, 0.25]);
        // ExponentialLR(gamma=0.9)
        let s = Schedule::Exponential { gamma: 0.9 };
        assert!(close(s.lr(2.0, 3, 10), 2.0 * 0.729));
        // CosineAnnealingLR(T_max=4, eta_min=0.1): epoch 0 is the base rate,
        // epoch 2 halfway between base and minimum.
        let s = Schedule::Cosine { min_lr: 0.1 };
        assert!(close(s.lr(1.0, 0, 4), 1.0));
        assert!(close(s.lr(1.0, 2, 4), 0.55));
        assert!(close(
            s.lr(1.0, 1, 4),
            0.1 + 0.9 * (1.0 + (std::f64::consts::PI / 4.0).cos()) / 2.0
        ));
    }
}
