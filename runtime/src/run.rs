//! One run of a compiled model, owned here from start to finish: the
//! executor, the data, training from scratch or from saved weights,
//! resuming, a checkpoint after every epoch, evaluation only, prediction,
//! and the JSON report.
//!
//! The caller compiles (the runtime never sees the source language), hands
//! over the [`Programs`] with the [`Module`] they came from, and renders
//! what the run reports through [`Event`]s; control does not go back and
//! forth between the two while the run decides what to do next.

use crate::checkpoint::{self, Scope};
use crate::executor::{Backend, Batch, Executor, Programs, StepMetrics};
use crate::loader::LoadedData;
use crate::predict::{self, Prediction};
use crate::report::{self, Report};
use crate::report_html::HtmlReport;
use crate::trace::{GradientDump, StepLog};
use crate::train::{
    self, EpochReport, Evaluation, Metrics, StepInfo, TrainObserver, TrainOptions, TrainReport,
};
use crate::train::{EarlyStopOutcome, LoopState};
use crate::RuntimeError;
use nnc_ir::{Graph, Module, Optimizer, TrainSpec};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};
use thiserror::Error;

/// How a run starts, what it does and what it leaves behind. The fields
/// mirror `nnc run`'s flags, so that their combinations are checked in one
/// place ([`RunOptions::validate`]).
#[derive(Debug, Clone, Default)]
pub struct RunOptions {
    pub backend: Backend,
    /// The command line's overrides of the train block.
    pub train: TrainOptions,
    /// A checkpoint after every epoch (and at the end when no epoch ran),
    /// each written atomically.
    pub save: Option<PathBuf>,
    /// Start from these params (optimizer state fresh).
    pub weights: Option<PathBuf>,
    /// Params, optimizer state and epoch count from `save`.
    pub resume: bool,
    /// Evaluate `weights` on the validation and test samples; no training.
    pub eval: bool,
    /// The forward graph's outputs for each sample of an IDX or CSV file,
    /// with `weights`.
    pub predict: Option<PathBuf>,
    /// A JSON report of the run, written atomically.
    pub report: Option<PathBuf>,
    /// The same report as one self-contained HTML file with charts
    /// ([`crate::report_html`]), written atomically.
    pub report_html: Option<PathBuf>,
    /// A JSON line per step and per epoch, flushed as written
    /// ([`crate::trace`]).
    pub log: Option<PathBuf>,
    /// A safetensors file of every param's gradient per step, in this
    /// folder ([`crate::trace`]); needs a step limit
    /// (`train.max_steps`), and the programs' gradient graph.
    pub dump_grads: Option<PathBuf>,
    /// Write the predictions to this `.csv` or `.safetensors` file rather
    /// than report each one.
    pub predict_out: Option<PathBuf>,
}

/// Options that contradict each other or miss what they need. The texts
/// name the command line's flags, which is how users meet these options.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum OptionsError {
    #[error("`--resume` continues from the `--save` checkpoint: give `--save PATH`")]
    ResumeWithoutSave,
    #[error("`--resume` and `--weights` both say where to start; give one")]
    ResumeAndWeights,
    #[error("`--eval` and `--predict` use trained params: give `--weights PATH`")]
    NoWeights,
    #[error("`--eval` and `--predict` are separate runs; give one")]
    EvalAndPredict,
    #[error("`--eval` and `--predict` do not train, so `--save` and `--resume` do not apply")]
    SaveWithoutTraining,
    #[error("`--report` and `--report-html` describe training or evaluation, not `--predict`")]
    ReportOfPrediction,
    #[error("`--steps`, `--log` and `--dump-grads` follow training, but `--eval` and `--predict` do not train")]
    TraceWithoutTraining,
    #[error("`--dump-grads` writes a file per step: give `--steps N` to say how many")]
    DumpGradsWithoutSteps,
    #[error("`--predict-out` writes the predictions of `--predict INPUT`: give `--predict`")]
    PredictOutWithoutPredict,
    #[error("`--predict-out {}`: expected a `.csv` or `.safetensors` file", .0.display())]
    PredictOutFormat(PathBuf),
}

impl RunOptions {
    /// Checks that the options describe one coherent run, before anything
    /// is read or compiled.
    pub fn validate(&self) -> Result<(), OptionsError> {
        let uses_weights = self.eval || self.predict.is_some();
        if self.resume && self.save.is_none() {
            return Err(OptionsError::ResumeWithoutSave);
        }
        if self.resume && self.weights.is_some() {
            return Err(OptionsError::ResumeAndWeights);
        }
        if uses_weights && self.weights.is_none() {
            return Err(OptionsError::NoWeights);
        }
        if self.eval && self.predict.is_some() {
            return Err(OptionsError::EvalAndPredict);
        }
        if uses_weights && (self.save.is_some() || self.resume) {
            return Err(OptionsError::SaveWithoutTraining);
        }
        if self.predict.is_some() && (self.report.is_some() || self.report_html.is_some()) {
            return Err(OptionsError::ReportOfPrediction);
        }
        let traced = self.train.max_steps.is_some() || self.log.is_some();
        if uses_weights && (traced || self.dump_grads.is_some()) {
            return Err(OptionsError::TraceWithoutTraining);
        }
        if self.dump_grads.is_some() && self.train.max_steps.is_none() {
            return Err(OptionsError::DumpGradsWithoutSteps);
        }
        if let Some(out) = &self.predict_out {
            if self.predict.is_none() {
                return Err(OptionsError::PredictOutWithoutPredict);
            }
            predict::OutFormat::of(out)
                .ok_or_else(|| OptionsError::PredictOutFormat(out.clone()))?;
        }
        Ok(())
    }
}

#[derive(Debug, Error)]
pub enum RunError {
    #[error(transparent)]
    Options(#[from] OptionsError),
    #[error(transparent)]
    Runtime(#[from] RuntimeError),
    #[error("`nnc run` needs a `train` block: the file defines model `{model}` but does not say how to train it")]
    NotTrainable { model: String },
    #[error("model `{model}` has a `train` block but no `data` block to train on")]
    NoData { model: String },
    #[error(
        "`--resume`: there is no checkpoint at `{}` yet (a run with `--save {}` writes one)",
        .path.display(),
        .path.display()
    )]
    NothingToResume { path: PathBuf },
    #[error("`--resume` continues one training, but `validate = kfold(k)` trains a model per fold from the start")]
    ResumeCrossValidation,
    #[error("`--predict` feeds one input, but model `{model}` has {}: {}", .inputs.len(), .inputs.join(", "))]
    PredictInputs { model: String, inputs: Vec<String> },
    #[error("`{}`: the path is not UTF-8", .path.display())]
    PathNotUtf8 { path: PathBuf },
    #[error(transparent)]
    SampleShape(Box<SampleShapeError>),
    /// The file to predict from does not fit the model's input.
    #[error("`{}`: {source}", .path.display())]
    PredictData {
        path: PathBuf,
        source: Box<RuntimeError>,
    },
}

/// The samples of a file to predict from have another number of values
/// than the model's input takes.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
#[error(
    "`{}` has samples of shape {file_sample:?} ({} values), but model `{model}` takes `{input}` samples of shape {model_sample:?} ({} values)",
    .path.display(),
    .file_sample.iter().product::<usize>(),
    .model_sample.iter().product::<usize>()
)]
pub struct SampleShapeError {
    pub path: PathBuf,
    pub file_sample: Vec<usize>,
    pub model: String,
    pub input: String,
    pub model_sample: Vec<usize>,
}

/// Which samples a set of metrics was measured on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Split {
    Train,
    Validation,
    Test,
}

impl Split {
    pub fn name(self) -> &'static str {
        match self {
            Split::Train => "train",
            Split::Validation => "validation",
            Split::Test => "test",
        }
    }
}

/// What a run reports as it goes, in order, for the caller to show.
#[derive(Debug, Clone, Copy)]
pub enum Event<'a> {
    /// The params of `--weights` are in place.
    WeightsLoaded {
        model: &'a str,
        path: &'a Path,
        epochs_done: usize,
    },
    /// Params, optimizer state and epoch count are back from `path`.
    Resumed {
        model: &'a str,
        path: &'a Path,
        epochs_done: usize,
        epochs: usize,
    },
    EvaluationStarted {
        model: &'a str,
        data: &'a str,
        samples: usize,
        backend: Backend,
    },
    /// Training runs epochs `first_epoch..=epochs` of batches of `batch`
    /// samples (none when `first_epoch > epochs`).
    TrainingStarted {
        model: &'a str,
        data: &'a str,
        samples: usize,
        optimizer: &'a Optimizer,
        backend: Backend,
        batch: usize,
        first_epoch: usize,
        epochs: usize,
    },
    /// A resumed run whose checkpoint has done every epoch.
    NothingLeftToTrain {
        epochs: usize,
    },
    /// Step `done` of `total` in the current epoch.
    BatchDone {
        done: usize,
        total: usize,
    },
    /// An epoch ended (before its checkpoint is saved).
    EpochDone(&'a EpochReport),
    /// The epoch loop ended, finished or failed: whatever shows an epoch
    /// in progress can go.
    TrainingStopped,
    /// Early stopping's verdict, after the last epoch: where it stopped
    /// and which epoch's weights the model now holds.
    EarlyStopped(&'a EarlyStopOutcome),
    Measured {
        split: Split,
        metrics: &'a Metrics,
    },
    /// `validate = kfold(k)`: fold `fold` (1-based) of `k` starts, with
    /// `train` training and `validation` validation samples; its training
    /// follows as for a plain run, from the initial params.
    FoldStarted {
        fold: usize,
        k: usize,
        train: usize,
        validation: usize,
    },
    /// Fold `fold` ended: its validation metrics (of the last epoch), and
    /// its model's on the test samples.
    FoldDone {
        fold: usize,
        k: usize,
        validation: &'a Metrics,
        test: Option<&'a Metrics>,
    },
    /// Every fold ended: the mean and standard deviation of each metric.
    CrossValidated(&'a CrossValidation),
    Predicted {
        index: usize,
        prediction: &'a Prediction,
    },
}

/// What a run produced.
#[derive(Debug, Clone)]
pub enum RunOutcome {
    Trained(TrainReport),
    /// Metrics on the validation and test samples (on the training samples
    /// when the data holds out neither).
    Evaluated {
        train: Option<Metrics>,
        validation: Option<Metrics>,
        test: Option<Metrics>,
    },
    Predicted(Vec<Prediction>),
    /// `validate = kfold(k)`: the report of each fold and the summary.
    CrossValidated(CrossValidation),
}

/// The outcome of k-fold cross-validation.
#[derive(Debug, Clone)]
pub struct CrossValidation {
    pub k: usize,
    pub folds: Vec<FoldReport>,
    /// Every validation metric (and test metric, named `test_<name>`) over
    /// the folds, in the order of the first fold's.
    pub summary: Vec<MetricSummary>,
    /// The validation samples' confusion matrix and per-class values,
    /// summed over the folds: every training sample is validated once,
    /// so this is the matrix of the out-of-fold predictions
    /// (`cross_val_predict`).
    pub classes: Option<crate::metrics::ClassReport>,
}

/// One fold's training.
#[derive(Debug, Clone)]
pub struct FoldReport {
    /// 1-based.
    pub fold: usize,
    pub train_samples: usize,
    pub trained: TrainReport,
    /// The last epoch's validation metrics: the fold's score.
    pub validation: Metrics,
}

/// One metric's values over the folds.
#[derive(Debug, Clone, PartialEq)]
pub struct MetricSummary {
    pub name: String,
    pub values: Vec<f64>,
    pub mean: f64,
    /// The sample standard deviation (ddof = 1).
    pub std: f64,
}

/// A run of a compiled model: everything between the compiler's programs
/// and a trained model, its metrics, checkpoints and report.
pub struct Run<'m> {
    module: &'m Module,
    programs: Programs,
    data_base: PathBuf,
    options: RunOptions,
    started: Instant,
    /// Parsing, lowering and optimizing, before this run was made: part
    /// of the report's compile time.
    front_end: Duration,
}

impl<'m> Run<'m> {
    /// A run of `programs`, compiled from `module`, reading the data
    /// block's relative paths from `data_base`. `started` is when the
    /// front end began, so the report's times include compiling.
    pub fn new(
        module: &'m Module,
        programs: Programs,
        data_base: impl Into<PathBuf>,
        options: RunOptions,
        started: Instant,
    ) -> Run<'m> {
        Run {
            module,
            programs,
            data_base: data_base.into(),
            options,
            started,
            front_end: started.elapsed(),
        }
    }

    /// Does what the options say: predicts, evaluates or trains, reporting
    /// through `events` as it goes, and writes the report.
    pub fn execute(self, events: &mut dyn FnMut(Event<'_>)) -> Result<RunOutcome, RunError> {
        let Run {
            module,
            programs,
            data_base,
            options,
            started,
            front_end,
        } = self;
        options.validate()?;
        if let (Some(input), Some(weights)) = (&options.predict, &options.weights) {
            return predict::predict(module, programs, &options, weights, input, events)
                .map(RunOutcome::Predicted);
        }
        let spec = module
            .train
            .as_ref()
            .ok_or_else(|| RunError::NotTrainable {
                model: module.name.clone(),
            })?;
        if spec.kfold.is_some() && options.resume && !options.eval {
            return Err(RunError::ResumeCrossValidation);
        }
        let data_spec = module.data.as_ref().ok_or_else(|| RunError::NoData {
            model: module.name.clone(),
        })?;
        // Before anything slow: an unwritable path is the first thing to fix.
        let trace = Trace {
            log: options.log.as_deref().map(StepLog::create).transpose()?,
            dump: match &options.dump_grads {
                Some(dir) => Some(GradientDump::create(dir, &module.name)?),
                None => None,
            },
        };
        let holdout = crate::loader::Holdout::Split {
            validate: spec.validate,
            seed: options.train.resolve(Some(spec)).seed,
        };
        let mut data = crate::loader::load_training(data_spec, &data_base, holdout)?;
        let params = checkpoint::param_names(&programs);
        let step = programs.step.clone();
        let mut overrides = options.train.clone();
        let settings = overrides.resolve(Some(spec));
        let mut exec = options.backend.executor(programs, settings.seed)?;
        let mut done_before = 0;
        if let Some(weights) = &options.weights {
            let ckpt = checkpoint::load(weights)?;
            check_vocabularies(&ckpt, &data)?;
            data.use_fitted(&ckpt.fitted)?;
            ckpt.apply(exec.as_mut(), &module.name, &params, Scope::Params)?;
            if options.eval {
                // The report describes the weights evaluated.
                done_before = ckpt.epochs_done;
            }
            events(Event::WeightsLoaded {
                model: &module.name,
                path: weights,
                epochs_done: ckpt.epochs_done,
            });
        }
        if options.resume {
            let save = options
                .save
                .as_ref()
                .ok_or(OptionsError::ResumeWithoutSave)?;
            if !save.exists() {
                return Err(RunError::NothingToResume { path: save.clone() });
            }
            let ckpt = checkpoint::load(save)?;
            check_vocabularies(&ckpt, &data)?;
            data.use_fitted(&ckpt.fitted)?;
            ckpt.apply(exec.as_mut(), &module.name, &params, Scope::Everything)?;
            done_before = ckpt.epochs_done;
            overrides.resumed = match &ckpt.loop_state {
                None => None,
                Some(text) => Some(LoopState::from_json(text).map_err(|e| {
                    RuntimeError::Setup(format!(
                        "checkpoint `{}`: metadata `{}` is not the training loop's state: {e}",
                        save.display(),
                        checkpoint::keys::LOOP_STATE
                    ))
                })?),
            };
            events(Event::Resumed {
                model: &module.name,
                path: save,
                epochs_done: done_before,
                epochs: settings.epochs,
            });
            overrides.first_epoch = done_before + 1;
        }
        let mut report = Report {
            model: module.name.clone(),
            backend: options.backend.name().into(),
            mode: if options.eval { "eval" } else { "train" }.into(),
            nnc_version: checkpoint::NNC_VERSION.into(),
            epochs: done_before,
            first_epoch: done_before + 1,
            per_epoch: Vec::new(),
            train: None,
            validation: None,
            test: None,
            samples_per_second: 0.0,
            total_seconds: 0.0,
            compile_seconds: 0.0,
            peak_rss_bytes: None,
            early_stop: None,
            sparsity: None,
            cross_validation: None,
        };
        let cx = Context {
            module,
            options: &options,
            spec,
            step: &step,
            data: &data,
            data_spec,
            data_base: &data_base,
            data_name: &data_spec.name,
            params: &params,
            overrides: &overrides,
        };
        let outcome = if options.eval {
            evaluate(&cx, exec.as_mut(), &mut report, events)?
        } else if let Some(kfold) = &spec.kfold {
            cross_validate(&cx, exec.as_mut(), kfold, trace, &mut report, events)?
        } else {
            fit(&cx, exec.as_mut(), done_before, trace, &mut report, events)?
        };
        if let Some(prune) = &spec.prune {
            let weights =
                crate::prune::measure(exec.as_ref(), &crate::prune::masked_weights(&step))?;
            report.sparsity = Some(report::SparsityEntry::new(prune, &weights));
        }
        // Parse, elaborate and build the step, then the executor's own compiling.
        report.compile_seconds = front_end.as_secs_f64() + exec.compile_time().as_secs_f64();
        report.total_seconds = started.elapsed().as_secs_f64();
        report.peak_rss_bytes = report::peak_rss_bytes();
        if let Some(path) = &options.report {
            report.write(path)?;
        }
        if let Some(path) = &options.report_html {
            HtmlReport {
                report: &report,
                summary: &module.summary(),
                settings: settings_shown(spec, &overrides, options.backend),
            }
            .write(path)?;
        }
        Ok(outcome)
    }
}

/// The settings a run used, as the HTML report lists them: the train
/// block's as written, then what the command line overrode, and the
/// backend.
fn settings_shown(
    spec: &TrainSpec,
    overrides: &TrainOptions,
    backend: Backend,
) -> Vec<(String, String)> {
    let mut out = vec![("data".to_string(), spec.data.clone())];
    out.extend(spec.written.iter().cloned());
    let overridden = [
        ("epochs", overrides.epochs.map(|e| e.to_string())),
        ("batch", overrides.batch.map(|b| b.to_string())),
        ("seed", overrides.seed.map(|s| s.to_string())),
        ("shuffle", overrides.shuffle.map(|s| s.to_string())),
        ("steps", overrides.max_steps.map(|s| s.to_string())),
    ];
    for (key, value) in overridden {
        if let Some(v) = value {
            out.push((format!("{key} (command line)"), v));
        }
    }
    out.push(("backend".into(), backend.name().into()));
    out
}

/// What evaluating and training share once the data is loaded.
#[derive(Clone, Copy)]
struct Context<'a> {
    module: &'a Module,
    options: &'a RunOptions,
    spec: &'a TrainSpec,
    step: &'a Graph,
    data: &'a LoadedData,
    /// The data block and where its relative paths start: a fold of
    /// `kfold` loads it again to fit on its own training samples.
    data_spec: &'a nnc_ir::DataSpec,
    data_base: &'a std::path::Path,
    data_name: &'a str,
    /// The names of the weights among the executor's state.
    params: &'a [String],
    /// With the first epoch of a resumed run.
    overrides: &'a TrainOptions,
}

/// Evaluation only: the loaded weights on the held-out samples.
fn evaluate(
    cx: &Context<'_>,
    exec: &mut dyn Executor,
    report: &mut Report,
    events: &mut dyn FnMut(Event<'_>),
) -> Result<RunOutcome, RunError> {
    events(Event::EvaluationStarted {
        model: &cx.module.name,
        data: cx.data_name,
        samples: cx.data.train.len(),
        backend: cx.options.backend,
    });
    let start = Instant::now();
    let Evaluation {
        train,
        validation,
        test,
    } = train::evaluate_held_out(cx.spec, cx.data, exec, cx.overrides)?;
    let seconds = start.elapsed().as_secs_f64();
    for (split, m) in [
        (Split::Train, &train),
        (Split::Validation, &validation),
        (Split::Test, &test),
    ] {
        if let Some(metrics) = m {
            events(Event::Measured { split, metrics });
        }
    }
    let evaluated: usize = [&train, &validation, &test]
        .iter()
        .filter_map(|m| m.as_ref().map(|m| m.samples))
        .sum();
    report.samples_per_second = evaluated as f64 / seconds.max(1e-9);
    report.train = train.as_ref().map(Into::into);
    report.validation = validation.as_ref().map(Into::into);
    report.test = test.as_ref().map(Into::into);
    Ok(RunOutcome::Evaluated {
        train,
        validation,
        test,
    })
}

/// Training from epoch `done_before + 1`, saving after every epoch.
fn fit(
    cx: &Context<'_>,
    exec: &mut dyn Executor,
    done_before: usize,
    trace: Trace,
    report: &mut Report,
    events: &mut dyn FnMut(Event<'_>),
) -> Result<RunOutcome, RunError> {
    let model = &cx.module.name;
    let settings = cx.overrides.resolve(Some(cx.spec));
    events(Event::TrainingStarted {
        model,
        data: cx.data_name,
        samples: cx.data.train.len(),
        optimizer: &cx.spec.optimizer,
        backend: cx.options.backend,
        batch: settings.batch,
        first_epoch: done_before + 1,
        epochs: settings.epochs,
    });
    if done_before >= settings.epochs && cx.options.resume {
        events(Event::NothingLeftToTrain {
            epochs: settings.epochs,
        });
    }
    let mut observer = FitObserver {
        cx,
        events,
        log: trace.log,
        dump: trace.dump,
        saved: false,
        loop_state: None,
        save_each_epoch: true,
    };
    let result =
        train::train_observed(cx.spec, cx.step, cx.data, exec, cx.overrides, &mut observer);
    let FitObserver {
        events,
        mut log,
        saved,
        loop_state,
        ..
    } = observer;
    events(Event::TrainingStopped);
    let trained = result?;
    if let Some(outcome) = &trained.early_stop {
        events(Event::EarlyStopped(outcome));
    }
    if let Some(path) = &cx.options.save {
        let done = done_before + trained.epochs.iter().filter(|e| e.is_complete()).count();
        let restored = trained.early_stop.as_ref().is_some_and(|o| o.restored);
        // Every epoch already saved the state it ended with; save here
        // when no epoch ran, or when early stopping put back the best
        // epoch's weights, which are then the ones kept.
        if !saved || restored {
            save_checkpoint(cx, exec, done, loop_state.as_ref(), path)?;
        }
    }
    if let (Some(log), Some(metrics)) = (&mut log, &trained.test) {
        log.test(metrics)?;
    }
    if let Some(metrics) = &trained.test {
        events(Event::Measured {
            split: Split::Test,
            metrics,
        });
    } else if let Some(metrics) = trained.epochs.last().and_then(|e| e.validation.as_ref()) {
        // Without test samples the per-class table is the validation set's.
        if metrics.classes.is_some() {
            events(Event::Measured {
                split: Split::Validation,
                metrics,
            });
        }
    }
    report.epochs = done_before + trained.epochs.iter().filter(|e| e.is_complete()).count();
    report.per_epoch = trained.epochs.iter().map(Into::into).collect();
    report.train = trained.epochs.last().map(|e| (&e.train).into());
    report.validation = trained
        .epochs
        .last()
        .and_then(|e| e.validation.as_ref())
        .map(Into::into);
    report.test = trained.test.as_ref().map(Into::into);
    report.samples_per_second = report::training_rate(&trained.epochs);
    report.early_stop = trained.early_stop.as_ref().map(Into::into);
    Ok(RunOutcome::Trained(trained))
}

/// `validate = kfold(k)`: `k` models, each trained from the initial
/// params on all but one fold and validated on that fold; the test samples
/// (if any) are held out of every fold and scored by each model. With
/// `--save`, the last fold's model is saved once at the end: every fold's
/// model is trained alike, and picking the best by its validation score
/// would report an optimistic one.
fn cross_validate(
    cx: &Context<'_>,
    exec: &mut dyn Executor,
    kfold: &nnc_ir::KFold,
    trace: Trace,
    report: &mut Report,
    events: &mut dyn FnMut(Event<'_>),
) -> Result<RunOutcome, RunError> {
    let settings = cx.overrides.resolve(Some(cx.spec));
    let base = train::partition(cx.data.train.len(), cx.data.test_split, None, settings.seed)?;
    let classes = match &kfold.stratify {
        Some(label) => Some(class_labels(cx.data, label, &base.train)?),
        None => None,
    };
    let folds = crate::folds::kfold(&base.train, kfold.k, classes.as_deref(), settings.seed)?;
    // Every fold starts from the same params (and fresh optimizer state).
    let initial = exec.state();
    let mut observer = FitObserver {
        cx,
        events,
        log: trace.log,
        dump: trace.dump,
        saved: false,
        loop_state: None,
        save_each_epoch: false,
    };
    let mut reports = Vec::with_capacity(folds.len());
    // The last fold's data, refitted: what its saved model was trained on.
    let mut last_refitted = None;
    for (f, fold) in folds.iter().enumerate() {
        for (name, value) in &initial {
            exec.set_state(name, value.clone())?;
        }
        let parts = train::Partition {
            train: base
                .train
                .iter()
                .copied()
                .filter(|i| fold.binary_search(i).is_err())
                .collect(),
            validation: fold.clone(),
            test: base.test.clone(),
        };
        // What is fitted to the samples trained on (statistics,
        // vocabularies) is fitted to this fold's, or the validated fold
        // would leak into its own score.
        let refitted = match cx.data.fitted.is_empty() && cx.data.vocabularies.is_empty() {
            true => None,
            false => Some(crate::loader::load_training(
                cx.data_spec,
                cx.data_base,
                crate::loader::Holdout::Samples(parts.train.clone()),
            )?),
        };
        let fold_cx = Context {
            data: refitted.as_ref().unwrap_or(cx.data),
            ..*cx
        };
        let cx = &fold_cx;
        (observer.events)(Event::FoldStarted {
            fold: f + 1,
            k: folds.len(),
            train: parts.train.len(),
            validation: parts.validation.len(),
        });
        (observer.events)(Event::TrainingStarted {
            model: &cx.module.name,
            data: cx.data_name,
            samples: parts.train.len(),
            optimizer: &cx.spec.optimizer,
            backend: cx.options.backend,
            batch: settings.batch,
            first_epoch: settings.first_epoch,
            epochs: settings.epochs,
        });
        let result = train::train_partition(
            cx.spec,
            cx.step,
            cx.data,
            exec,
            cx.overrides,
            &mut observer,
            &parts,
        );
        (observer.events)(Event::TrainingStopped);
        let trained = result?;
        let Some(validation) = trained.epochs.last().and_then(|e| e.validation.clone()) else {
            return Err(RuntimeError::Setup(format!(
                "fold {} of {} trained no epoch to validate",
                f + 1,
                folds.len()
            ))
            .into());
        };
        (observer.events)(Event::FoldDone {
            fold: f + 1,
            k: folds.len(),
            validation: &validation,
            test: trained.test.as_ref(),
        });
        reports.push(FoldReport {
            fold: f + 1,
            train_samples: parts.train.len(),
            trained,
            validation,
        });
        last_refitted = refitted;
    }
    let FitObserver {
        events, mut log, ..
    } = observer;
    let last = reports.last().map(|r| &r.trained);
    if let (Some(path), Some(last)) = (&cx.options.save, last) {
        let done = last.epochs.iter().filter(|e| e.is_complete()).count();
        let last_cx = Context {
            data: last_refitted.as_ref().unwrap_or(cx.data),
            ..*cx
        };
        save_checkpoint(&last_cx, exec, done, None, path)?;
    }
    if let (Some(log), Some(metrics)) = (&mut log, last.and_then(|t| t.test.as_ref())) {
        log.test(metrics)?;
    }
    let cv = summarize(kfold.k, reports);
    events(Event::CrossValidated(&cv));
    let epochs: Vec<EpochReport> = cv
        .folds
        .iter()
        .flat_map(|f| f.trained.epochs.iter().cloned())
        .collect();
    report.epochs = cv.folds.last().map_or(0, |f| {
        f.trained.epochs.iter().filter(|e| e.is_complete()).count()
    });
    report.samples_per_second = report::training_rate(&epochs);
    report.cross_validation = Some((&cv).into());
    Ok(RunOutcome::CrossValidated(cv))
}

/// The class of each of `indices` in the integer field `label`.
fn class_labels(
    data: &LoadedData,
    label: &str,
    indices: &[usize],
) -> Result<Vec<usize>, RuntimeError> {
    let mut batch = Batch::default();
    data.fill_batch(&data.train, &[label.to_string()], indices, &mut batch)?;
    let field = batch.get(label).ok_or_else(|| {
        RuntimeError::Setup(format!("internal error: no field `{label}` to stratify by"))
    })?;
    let values: Vec<f64> = match &field.data {
        crate::executor::BatchData::I32(v) => v.iter().map(|&x| f64::from(x)).collect(),
        crate::executor::BatchData::F32(v) => v.iter().map(|&x| f64::from(x)).collect(),
        crate::executor::BatchData::F64(v) => v.clone(),
    };
    if values.len() != indices.len() {
        return Err(RuntimeError::Setup(format!(
            "`kfold` stratifies by `{label}`, one class per sample, but it has {} values for {} samples",
            values.len(),
            indices.len()
        )));
    }
    values
        .iter()
        .map(|&v| {
            if v >= 0.0 && v.fract() == 0.0 {
                Ok(v as usize)
            } else {
                Err(RuntimeError::Setup(format!(
                    "`kfold` stratifies by the class label `{label}`, which holds {v}, not a class"
                )))
            }
        })
        .collect()
}

/// Mean ± standard deviation of every metric over the folds.
fn summarize(k: usize, folds: Vec<FoldReport>) -> CrossValidation {
    let mut summary: Vec<MetricSummary> = Vec::new();
    let mut push = |name: String, value: f64| match summary.iter_mut().find(|s| s.name == name) {
        Some(s) => s.values.push(value),
        None => summary.push(MetricSummary {
            name,
            values: vec![value],
            mean: 0.0,
            std: 0.0,
        }),
    };
    for f in &folds {
        for (name, v) in f.validation.all_values() {
            push(name, v);
        }
        if let Some(test) = &f.trained.test {
            for (name, v) in test.all_values() {
                push(format!("test_{name}"), v);
            }
        }
    }
    for s in &mut summary {
        (s.mean, s.std) = crate::folds::mean_std(&s.values);
    }
    let classes = folds
        .iter()
        .map(|f| f.validation.classes.as_ref())
        .collect::<Option<Vec<_>>>()
        .and_then(|reports| {
            let first = reports.first()?;
            let n = first.confusion.len();
            let mut sum = vec![0u64; n * n];
            for r in &reports {
                for (t, row) in r.confusion.iter().enumerate() {
                    for (p, &c) in row.iter().enumerate() {
                        sum[t * n + p] += c;
                    }
                }
            }
            Some(crate::metrics::ClassReport::from_confusion(n, &sum))
        });
    CrossValidation {
        k,
        folds,
        summary,
        classes,
    }
}

/// The files a training run writes for step-by-step comparisons.
struct Trace {
    log: Option<StepLog>,
    dump: Option<GradientDump>,
}

/// Weights trained on text mean something only under the vocabulary they
/// were trained with: a checkpoint's saved vocabularies must be the ones
/// built from the data now (a checkpoint without them is taken on trust).
fn check_vocabularies(ckpt: &checkpoint::Checkpoint, data: &LoadedData) -> Result<(), RunError> {
    use crate::data::text::FieldVocabulary;
    let size = |v: &FieldVocabulary| match v {
        FieldVocabulary::Tokens(v) => format!("{} ids", v.size()),
        FieldVocabulary::Classes(c) => format!("{} classes", c.names.len()),
    };
    for (name, built) in &data.vocabularies {
        match ckpt.vocabularies.get(name) {
            Some(saved) if saved != built => {
                return Err(RuntimeError::Setup(format!(
                    "checkpoint `{}` was trained with another vocabulary for the text field `{name}` \
                     ({} there, {} built from the data now): the data or the field's options changed",
                    ckpt.path.display(),
                    size(saved),
                    size(built)
                ))
                .into())
            }
            _ => {}
        }
    }
    Ok(())
}

/// A checkpoint of `exec`'s state after `epochs_done` epochs, with the
/// training loop's own state.
fn save_checkpoint(
    cx: &Context<'_>,
    exec: &dyn Executor,
    epochs_done: usize,
    loop_state: Option<&LoopState>,
    path: &Path,
) -> Result<(), RuntimeError> {
    let meta = checkpoint::Meta {
        epochs_done,
        params: cx.params.to_vec(),
        loop_state: loop_state
            .filter(|s| **s != LoopState::default())
            .map(LoopState::to_json),
        quantization: None,
        structure: cx.module.changes.clone(),
    };
    checkpoint::save_with_data(
        path,
        &cx.module.name,
        &exec.state(),
        &meta,
        &cx.data.vocabularies,
        &cx.data.fitted,
    )
}

/// What a training run does around the loop: events, checkpoints, the
/// step log and the gradient dumps.
struct FitObserver<'c, 'e> {
    cx: &'c Context<'c>,
    events: &'e mut dyn FnMut(Event<'_>),
    log: Option<StepLog>,
    dump: Option<GradientDump>,
    /// Whether a checkpoint has been saved.
    saved: bool,
    /// The loop's state after the last epoch.
    loop_state: Option<LoopState>,
    /// Whether `--save` writes a checkpoint after every epoch (not during
    /// k-fold cross-validation, which saves the last fold's model once).
    save_each_epoch: bool,
}

impl TrainObserver for FitObserver<'_, '_> {
    fn before_step(
        &mut self,
        step: &StepInfo<'_>,
        batch: &Batch,
        exec: &mut dyn Executor,
    ) -> Result<(), RuntimeError> {
        if let Some(dump) = &self.dump {
            let gradients = exec.gradients(batch)?;
            dump.write(step, &gradients)?;
        }
        Ok(())
    }

    fn after_step(
        &mut self,
        step: &StepInfo<'_>,
        metrics: &StepMetrics,
    ) -> Result<(), RuntimeError> {
        if let Some(log) = &mut self.log {
            log.step(step, metrics)?;
        }
        (self.events)(Event::BatchDone {
            done: step.batch,
            total: step.batches,
        });
        Ok(())
    }

    fn loop_state(&mut self, state: &LoopState) {
        self.loop_state = Some(state.clone());
    }

    fn after_epoch(&mut self, r: &EpochReport, exec: &dyn Executor) -> Result<(), RuntimeError> {
        if let Some(log) = &mut self.log {
            log.epoch(r)?;
        }
        (self.events)(Event::EpochDone(r));
        if let (Some(path), true) = (&self.cx.options.save, self.save_each_epoch) {
            // An epoch the step limit cut short is not done: resuming
            // starts it again.
            let done = if r.is_complete() {
                r.epoch
            } else {
                r.epoch - 1
            };
            save_checkpoint(self.cx, exec, done, self.loop_state.as_ref(), path)?;
            self.saved = true;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests;
