//! The JSON run report `nnc run --report PATH.json` writes: metrics per
//! epoch, the final and test metrics, throughput, timings and peak memory.
//!
//! Keys (all always present; `null` where a value does not apply):
//!
//! | key | value |
//! |---|---|
//! | `model`, `backend`, `mode` | the model's name, `interp`, and `train` or `eval` |
//! | `nnc_version` | the version that wrote the report |
//! | `epochs` | epochs the model has been trained for in total (with `--resume`, including earlier runs) |
//! | `first_epoch` | the first epoch this run trained (`1`, or one past the checkpoint's) |
//! | `per_epoch` | `[{epoch, lr, train, validation, seconds, samples_per_second}]` for this run |
//! | `train`, `validation` | the last epoch's metrics (`validation` also in `eval` mode) |
//! | `test` | metrics on the test samples, if the data block has any |
//! | `samples_per_second` | training samples per second over this run's epochs (evaluated samples per second in `eval` mode) |
//! | `total_seconds` | wall time from reading the source to the end of the run |
//! | `compile_seconds` | from the start of parsing to the first executed step (parsing, lowering, autodiff, data loading; JIT compilation when there is one) |
//! | `early_stop` | with `early_stop` in the train block: `{monitor, stopped_after, best_epoch, best, kept_epoch}` (the metric monitored, as written; the epoch after which training stopped, `null` when it ran every epoch; the best epoch and its monitored value; the epoch whose weights the model ends with), else `null` |
//! | `sparsity` | with `prune` in the train block: `{target, scope, overall, weights}` (the final sparsity the schedule reaches, `layer` or `global`, the share of zeros over all pruned weights, and `[{name, size, zeros, sparsity}]` per pruned weight, counting the zeros of `w · mask`) of the model the run ends with (or evaluates), else `null` |
//! | `peak_rss_bytes` | the process's peak resident set size (`VmHWM` of `/proc/self/status`), `null` where unavailable |
//!
//! | `cross_validation` | with `validate = kfold(k)`: `{k, folds, summary, per_class}`, else `null` (below) |
//!
//! A metrics object is `{loss, accuracy, samples, metrics, per_class}`:
//! `accuracy` is `null` without the metric; `metrics` maps each other
//! metric of the train block to its value over the whole set (`f1`,
//! `precision_micro`, `top_3_accuracy`, `binary_accuracy`, `mae`, `rmse`,
//! `r2`; during training epochs, whose batches report only the loss and
//! accuracy, empty but for `sparsity` with `prune`: the share of zeros
//! of the pruned weights after the epoch); `per_class` is `{precision, recall, f1, support,
//! confusion}` (lists by class; `confusion[true][predicted]`) when a
//! classifier's `precision`, `recall`, `f1` or `confusion` is asked for,
//! else `null`.
//!
//! With k-fold cross-validation, `per_epoch` is empty and `train`,
//! `validation` and `test` are `null`; `cross_validation.folds` is
//! `[{fold, train_samples, per_epoch, validation, test}]`, `summary` maps
//! every metric (`loss`, `accuracy`, `f1`, …, and `test_<name>` when there
//! are test samples) to `{mean, std, values}` over the folds (`std` the
//! sample standard deviation, ddof = 1), and `per_class` is the
//! per-class object of the validation samples summed over the folds.

use crate::metrics::ClassReport;
use crate::run::CrossValidation;
use crate::train::{EarlyStopOutcome, EpochReport, Metrics};
use crate::RuntimeError;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::path::Path;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MetricsEntry {
    pub loss: f64,
    pub accuracy: Option<f64>,
    pub samples: usize,
    pub metrics: BTreeMap<String, f64>,
    pub per_class: Option<Box<ClassEntry>>,
}

/// Per-class values and the confusion matrix (rows the true class).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClassEntry {
    pub precision: Vec<f64>,
    pub recall: Vec<f64>,
    pub f1: Vec<f64>,
    pub support: Vec<u64>,
    pub confusion: Vec<Vec<u64>>,
}

impl From<&ClassReport> for ClassEntry {
    fn from(c: &ClassReport) -> Self {
        ClassEntry {
            precision: c.precision.clone(),
            recall: c.recall.clone(),
            f1: c.f1.clone(),
            support: c.support.clone(),
            confusion: c.confusion.clone(),
        }
    }
}

impl From<&Metrics> for MetricsEntry {
    fn from(m: &Metrics) -> Self {
        MetricsEntry {
            loss: m.loss,
            accuracy: m.accuracy,
            samples: m.samples,
            metrics: m.values.iter().cloned().collect(),
            per_class: m.classes.as_deref().map(|c| Box::new(c.into())),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CrossValidationEntry {
    pub k: usize,
    pub folds: Vec<FoldEntry>,
    pub summary: BTreeMap<String, SummaryEntry>,
    pub per_class: Option<ClassEntry>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FoldEntry {
    pub fold: usize,
    pub train_samples: usize,
    pub per_epoch: Vec<EpochEntry>,
    pub validation: MetricsEntry,
    pub test: Option<MetricsEntry>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SummaryEntry {
    pub mean: f64,
    /// Sample standard deviation (ddof = 1).
    pub std: f64,
    pub values: Vec<f64>,
}

impl From<&CrossValidation> for CrossValidationEntry {
    fn from(cv: &CrossValidation) -> Self {
        CrossValidationEntry {
            k: cv.k,
            folds: cv
                .folds
                .iter()
                .map(|f| FoldEntry {
                    fold: f.fold,
                    train_samples: f.train_samples,
                    per_epoch: f.trained.epochs.iter().map(Into::into).collect(),
                    validation: (&f.validation).into(),
                    test: f.trained.test.as_ref().map(Into::into),
                })
                .collect(),
            summary: cv
                .summary
                .iter()
                .map(|s| {
                    (
                        s.name.clone(),
                        SummaryEntry {
                            mean: s.mean,
                            std: s.std,
                            values: s.values.clone(),
                        },
                    )
                })
                .collect(),
            per_class: cv.classes.as_ref().map(Into::into),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EpochEntry {
    pub epoch: usize,
    /// The learning rate of the epoch's steps.
    pub lr: f64,
    pub train: MetricsEntry,
    pub validation: Option<MetricsEntry>,
    pub seconds: f64,
    pub samples_per_second: f64,
}

impl From<&EpochReport> for EpochEntry {
    fn from(r: &EpochReport) -> Self {
        EpochEntry {
            epoch: r.epoch,
            lr: r.lr,
            train: (&r.train).into(),
            validation: r.validation.as_ref().map(Into::into),
            seconds: r.seconds,
            samples_per_second: r.train.samples as f64 / r.seconds.max(1e-9),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Report {
    pub model: String,
    pub backend: String,
    pub mode: String,
    pub nnc_version: String,
    pub epochs: usize,
    pub first_epoch: usize,
    pub per_epoch: Vec<EpochEntry>,
    pub train: Option<MetricsEntry>,
    pub validation: Option<MetricsEntry>,
    pub test: Option<MetricsEntry>,
    pub samples_per_second: f64,
    pub total_seconds: f64,
    pub compile_seconds: f64,
    pub peak_rss_bytes: Option<u64>,
    #[serde(default)]
    pub early_stop: Option<EarlyStopEntry>,
    #[serde(default)]
    pub sparsity: Option<SparsityEntry>,
    pub cross_validation: Option<CrossValidationEntry>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EarlyStopEntry {
    pub monitor: String,
    pub stopped_after: Option<usize>,
    pub best_epoch: usize,
    pub best: f64,
    pub kept_epoch: usize,
}

/// The sparsity of a pruned model.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SparsityEntry {
    pub target: f64,
    pub scope: String,
    pub overall: f64,
    pub weights: Vec<WeightSparsityEntry>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WeightSparsityEntry {
    pub name: String,
    pub size: usize,
    pub zeros: usize,
    pub sparsity: f64,
}

impl SparsityEntry {
    pub fn new(prune: &nnc_ir::Prune, weights: &[crate::prune::WeightSparsity]) -> SparsityEntry {
        SparsityEntry {
            target: prune.sparsity,
            scope: prune.scope.to_string(),
            overall: crate::prune::overall(weights),
            weights: weights
                .iter()
                .map(|w| WeightSparsityEntry {
                    name: w.name.clone(),
                    size: w.size,
                    zeros: w.zeros,
                    sparsity: w.sparsity(),
                })
                .collect(),
        }
    }
}

impl From<&EarlyStopOutcome> for EarlyStopEntry {
    fn from(o: &EarlyStopOutcome) -> Self {
        EarlyStopEntry {
            monitor: o.monitor.clone(),
            stopped_after: o.stopped_after,
            best_epoch: o.best_epoch,
            best: o.best,
            kept_epoch: o.kept_epoch,
        }
    }
}

/// Training samples per second over `epochs` (0 without epochs).
pub fn training_rate(epochs: &[EpochReport]) -> f64 {
    let samples: usize = epochs.iter().map(|e| e.train.samples).sum();
    let seconds: f64 = epochs.iter().map(|e| e.seconds).sum();
    if seconds > 0.0 {
        samples as f64 / seconds
    } else {
        0.0
    }
}

impl Report {
    pub fn to_json(&self) -> String {
        // Serializing plain structs of numbers and strings cannot fail.
        let mut s = serde_json::to_string_pretty(self).unwrap_or_default();
        s.push('\n');
        s
    }

    pub fn from_json(text: &str) -> Result<Report, String> {
        serde_json::from_str(text).map_err(|e| e.to_string())
    }

    /// Writes the report to `path` atomically (see
    /// [`crate::checkpoint::write_atomic`]).
    pub fn write(&self, path: &Path) -> Result<(), RuntimeError> {
        crate::checkpoint::write_atomic(path, self.to_json().as_bytes()).map_err(|e| {
            RuntimeError::Setup(format!("cannot write report `{}`: {e}", path.display()))
        })
    }
}

/// The process's peak resident set size in bytes, from `VmHWM` in
/// `/proc/self/status` (Linux); `None` elsewhere.
pub fn peak_rss_bytes() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    parse_vm_hwm(&status)
}

fn parse_vm_hwm(status: &str) -> Option<u64> {
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    let mut parts = line["VmHWM:".len()..].split_whitespace();
    let value: u64 = parts.next()?.parse().ok()?;
    let scale = match parts.next() {
        Some("kB") | None => 1024,
        Some("mB") | Some("MB") => 1024 * 1024,
        Some("B") => 1,
        Some(_) => return None,
    };
    value.checked_mul(scale)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn vm_hwm_is_read_in_bytes() {
        let status = "Name:\tnnc\nVmPeak:\t  10 kB\nVmHWM:\t    2048 kB\nVmRSS:\t 1 kB\n";
        assert_eq!(parse_vm_hwm(status), Some(2048 * 1024));
        assert_eq!(parse_vm_hwm("Name: x\n"), None);
        if cfg!(target_os = "linux") {
            assert!(peak_rss_bytes().is_some_and(|b| b > 0));
        }
    }

    #[test]
    fn json_round_trips_and_rejects_unknown_keys() {
        let r = Report {
            model: "M".into(),
            backend: "interp".into(),
            mode: "train".into(),
            nnc_version: "0".into(),
            epochs: 1,
            first_epoch: 1,
            per_epoch: vec![EpochEntry {
                epoch: 1,
                lr: 0.01,
                train: MetricsEntry {
                    loss: 0.5,
                    accuracy: Some(0.75),
                    samples: 4,
                    metrics: BTreeMap::from([("f1".to_string(), 0.5)]),
                    per_class: Some(Box::new(ClassEntry {
                        precision: vec![1.0, 0.0],
                        recall: vec![0.5, 0.0],
                        f1: vec![2.0 / 3.0, 0.0],
                        support: vec![2, 0],
                        confusion: vec![vec![1, 1], vec![0, 0]],
                    })),
                },
                validation: None,
                seconds: 0.1,
                samples_per_second: 40.0,
            }],
            train: None,
            validation: None,
            test: None,
            samples_per_second: 40.0,
            total_seconds: 1.0,
            compile_seconds: 0.5,
            peak_rss_bytes: Some(1),
            early_stop: Some(EarlyStopEntry {
                monitor: "val_loss".into(),
                stopped_after: Some(7),
                best_epoch: 4,
                best: 0.25,
                kept_epoch: 4,
            }),
            sparsity: None,
            cross_validation: None,
        };
        let text = r.to_json();
        assert_eq!(Report::from_json(&text).unwrap(), r);
        let extra = text.replacen('{', "{\"surprise\": 1,", 1);
        assert!(Report::from_json(&extra).is_err());
    }
}
