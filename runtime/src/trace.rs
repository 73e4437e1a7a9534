//! What a run writes so that it can be compared with another framework
//! step by step: the JSON-lines log of `--log` and the gradient files of
//! `--dump-grads`.
//!
//! The log has one object per line, written and flushed as it happens (a
//! run that stops early leaves every line up to that point), each with an
//! `event` key:
//!
//! | `event` | keys |
//! |---|---|
//! | `step` | `epoch`, `step` (optimizer steps since training began), `batch` (1-based, in the epoch), `loss`, `accuracy` (`null` without the metric), `lr`, `samples` (in the batch) |
//! | `epoch` | `epoch`, `lr`, `steps` (made in this epoch), `train` and `validation` (`{loss, accuracy, samples}`; `validation` `null` without a validation split), `seconds`, `samples_per_second` |
//! | `test` | `loss`, `accuracy`, `samples` after training, when there are test samples |
//!
//! Numbers are written in the shortest form that reads back to the same
//! `f64`; a step's loss is the `f32` the step computed.
//!
//! A gradient file `DIR/step-NNNNNN.safetensors` holds, for optimizer step
//! `NNNNNN`, the gradient of the loss with respect to every param (named
//! like the param, in its dtype) on that step's batch at the params the
//! step started from: what the optimizer was given. Its metadata:
//! `format` (`nnc-gradients/1`), `model`, `epoch`, `step`, `batch`, `lr`
//! and `samples` (a JSON list of the batch's sample indices in the
//! training data, 0-based, in batch order).

use crate::checkpoint::{safetensors_bytes, write_atomic};
use crate::executor::StepMetrics;
use crate::report::MetricsEntry;
use crate::train::{EpochReport, Metrics, StepInfo};
use crate::RuntimeError;
use nnc_ir::Tensor;
use serde::Serialize;
use std::collections::HashMap;
use std::fs::File;
use std::io::Write;
use std::path::{Path, PathBuf};

/// The `format` metadata of a gradient file.
pub const GRADIENTS_FORMAT: &str = "nnc-gradients/1";

#[derive(Serialize)]
#[serde(tag = "event", rename_all = "lowercase")]
enum Line<'a> {
    Step {
        epoch: usize,
        step: usize,
        batch: usize,
        loss: f64,
        accuracy: Option<f64>,
        lr: f64,
        samples: usize,
    },
    Epoch {
        epoch: usize,
        lr: f64,
        steps: usize,
        train: MetricsEntry,
        validation: Option<MetricsEntry>,
        seconds: f64,
        samples_per_second: f64,
    },
    Test(&'a MetricsEntry),
}

/// The `--log` file, open for the whole run.
pub struct StepLog {
    file: File,
    path: PathBuf,
}

impl StepLog {
    /// Creates (or empties) the log at `path`, before training starts, so
    /// an unwritable path fails the run at once.
    pub fn create(path: &Path) -> Result<StepLog, RuntimeError> {
        let file = File::create(path).map_err(|e| {
            RuntimeError::Setup(format!("cannot write the log `{}`: {e}", path.display()))
        })?;
        Ok(StepLog {
            file,
            path: path.to_path_buf(),
        })
    }

    pub fn step(&mut self, step: &StepInfo<'_>, metrics: &StepMetrics) -> Result<(), RuntimeError> {
        self.write(&Line::Step {
            epoch: step.epoch,
            step: step.step,
            batch: step.batch,
            loss: metrics.loss,
            accuracy: metrics.accuracy,
            lr: step.lr,
            samples: step.indices.len(),
        })
    }

    pub fn epoch(&mut self, r: &EpochReport) -> Result<(), RuntimeError> {
        self.write(&Line::Epoch {
            epoch: r.epoch,
            lr: r.lr,
            steps: r.steps,
            train: (&r.train).into(),
            validation: r.validation.as_ref().map(Into::into),
            seconds: r.seconds,
            samples_per_second: r.train.samples as f64 / r.seconds.max(1e-9),
        })
    }

    pub fn test(&mut self, metrics: &Metrics) -> Result<(), RuntimeError> {
        self.write(&Line::Test(&metrics.into()))
    }

    fn write(&mut self, line: &Line<'_>) -> Result<(), RuntimeError> {
        // Plain structs of numbers serialize; a non-finite number is `null`.
        let mut text = serde_json::to_string(line).unwrap_or_default();
        text.push('\n');
        // One write per line, unbuffered: a reader sees whole lines as they come.
        self.file
            .write_all(text.as_bytes())
            .and_then(|()| self.file.flush())
            .map_err(|e| {
                RuntimeError::Setup(format!(
                    "cannot write the log `{}`: {e}",
                    self.path.display()
                ))
            })
    }
}

/// The `--dump-grads` folder.
pub struct GradientDump {
    dir: PathBuf,
    model: String,
}

impl GradientDump {
    /// Creates the folder (and its parents) if need be, before training.
    pub fn create(dir: &Path, model: &str) -> Result<GradientDump, RuntimeError> {
        std::fs::create_dir_all(dir).map_err(|e| {
            RuntimeError::Setup(format!(
                "cannot create the gradient folder `{}`: {e}",
                dir.display()
            ))
        })?;
        Ok(GradientDump {
            dir: dir.to_path_buf(),
            model: model.to_string(),
        })
    }

    /// The file of optimizer step `step`.
    pub fn path(&self, step: usize) -> PathBuf {
        self.dir.join(format!("step-{step:06}.safetensors"))
    }

    /// Writes the gradients of `step`, atomically.
    pub fn write(
        &self,
        step: &StepInfo<'_>,
        gradients: &[(String, Tensor)],
    ) -> Result<(), RuntimeError> {
        let path = self.path(step.step);
        let fail = |e: String| {
            RuntimeError::Setup(format!(
                "cannot write the gradients `{}`: {e}",
                path.display()
            ))
        };
        let samples = serde_json::to_string(step.indices).map_err(|e| fail(e.to_string()))?;
        let metadata: HashMap<String, String> = [
            ("format", GRADIENTS_FORMAT.to_string()),
            ("model", self.model.clone()),
            ("epoch", step.epoch.to_string()),
            ("step", step.step.to_string()),
            ("batch", step.batch.to_string()),
            ("lr", step.lr.to_string()),
            ("samples", samples),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v))
        .collect();
        let bytes = safetensors_bytes(gradients, metadata).map_err(|e| fail(e.to_string()))?;
        write_atomic(&path, &bytes).map_err(|e| fail(e.to_string()))
    }
}
