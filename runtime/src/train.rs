//! The training loop: epochs over seeded, shuffled batches, the loss and
//! metrics per epoch on the training and validation samples, and a final
//! evaluation on the test samples.

use crate::data::{train_val_split, Batches, Dataset, Mode, SplitMix64};
use crate::executor::{Batch, BatchData, BatchField, Executor, StepMetrics};
use crate::loader::LoadedData;
use crate::metrics::{ClassReport, SetAccumulator};
use crate::RuntimeError;
use nnc_ir::{is_loop_input, Graph, MetricTarget, Optimizer, TrainSpec, ADAM_STEP, LOSS, RNG_KEY};
use nnc_ir::{Decay, EarlyStop, LrAt, Monitor, Plateau, Schedule};
use serde::{Deserialize, Serialize};
use std::time::Instant;

/// Overrides of the train block's settings from the command line.
#[derive(Debug, Clone, Default)]
pub struct TrainOptions {
    /// The last epoch (1-based), overriding the train block's `epochs`.
    pub epochs: Option<usize>,
    pub batch: Option<usize>,
    pub seed: Option<u64>,
    /// The first epoch to run (1-based; 0 means 1). A resumed run starts
    /// after the epochs its checkpoint has done, with the same shuffles and
    /// learning rates as an uninterrupted run.
    pub first_epoch: usize,
    /// Overrides the train block's `shuffle` (`--no-shuffle` is `Some(false)`).
    pub shuffle: Option<bool>,
    /// Stop after this many optimizer steps (`--steps N`), mid-epoch if
    /// need be.
    pub max_steps: Option<usize>,
    /// What the epochs before `first_epoch` left to plateau and early
    /// stopping (from a resumed checkpoint).
    pub resumed: Option<LoopState>,
}

/// The batch size of a model without a `train` block (prediction only).
pub const DEFAULT_BATCH: usize = 256;

/// What a run actually uses: the train block's settings with the command
/// line's overrides applied. Resolved by [`TrainOptions::resolve`] only, so
/// training, evaluation, prediction, the progress bar and the report
/// cannot disagree about a default.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TrainSettings {
    /// The last epoch (1-based).
    pub epochs: usize,
    pub batch: usize,
    pub seed: u64,
    /// The first epoch to run (1-based).
    pub first_epoch: usize,
    /// Whether each epoch draws a fresh order of the training samples.
    pub shuffle: bool,
    /// The most optimizer steps this run makes.
    pub max_steps: Option<usize>,
}

impl TrainOptions {
    /// The settings under `spec`; without a train block (a model that only
    /// predicts) no epochs, [`DEFAULT_BATCH`] and seed 0.
    pub fn resolve(&self, spec: Option<&TrainSpec>) -> TrainSettings {
        TrainSettings {
            epochs: self.epochs.or(spec.map(|s| s.epochs)).unwrap_or(0),
            batch: self
                .batch
                .or(spec.map(|s| s.batch))
                .unwrap_or(DEFAULT_BATCH),
            seed: self.seed.or(spec.map(|s| s.seed)).unwrap_or(0),
            first_epoch: self.first_epoch.max(1),
            shuffle: self.shuffle.or(spec.map(|s| s.shuffle)).unwrap_or(true),
            max_steps: self.max_steps,
        }
    }

    pub fn seed(&self, spec: &TrainSpec) -> u64 {
        self.resolve(Some(spec)).seed
    }
}

/// Loss and metrics over a set of samples, averaged per sample.
#[derive(Debug, Clone, PartialEq)]
pub struct Metrics {
    pub loss: f64,
    pub accuracy: Option<f64>,
    pub samples: usize,
    /// The train block's metrics of the whole set (`f1`, `r2`,
    /// `top_3_accuracy`: [`nnc_ir::SetMetric::value_name`]), in its order;
    /// measured on validation and test samples (and by `--eval`), not
    /// during a training epoch, whose batches only report the graph's
    /// scalars (a pruning run adds `sparsity` to an epoch's: the share of
    /// zeros of the pruned weights after it).
    pub values: Vec<(String, f64)>,
    /// Per-class values and the confusion matrix, when a metric of a
    /// classifier asks for them (`precision`, `recall`, `f1`, `confusion`).
    pub classes: Option<Box<ClassReport>>,
}

impl Metrics {
    /// A metric by name: `loss`, `accuracy`, or a set metric's name.
    pub fn value(&self, name: &str) -> Option<f64> {
        match name {
            "loss" => Some(self.loss),
            "accuracy" => self.accuracy,
            _ => self.values.iter().find(|(n, _)| n == name).map(|&(_, v)| v),
        }
    }

    /// Every scalar by name, `loss` and `accuracy` first.
    pub fn all_values(&self) -> Vec<(String, f64)> {
        let mut all = vec![("loss".to_string(), self.loss)];
        if let Some(a) = self.accuracy {
            all.push(("accuracy".into(), a));
        }
        all.extend(self.values.iter().cloned());
        all
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct EpochReport {
    pub epoch: usize,
    pub epochs: usize,
    /// The learning rate of the epoch's first step (warmup and one-cycle
    /// change it every step; the step log has each).
    pub lr: f64,
    /// Optimizer steps the epoch made: fewer than `batches` when the step
    /// limit (`--steps`) stopped training inside it.
    pub steps: usize,
    /// Steps in a whole epoch.
    pub batches: usize,
    pub train: Metrics,
    pub validation: Option<Metrics>,
    pub seconds: f64,
}

#[derive(Debug, Clone, PartialEq)]
pub struct TrainReport {
    pub epochs: Vec<EpochReport>,
    pub test: Option<Metrics>,
    /// What early stopping decided, when the train block has it.
    pub early_stop: Option<EarlyStopOutcome>,
}

/// How early stopping ended a run.
#[derive(Debug, Clone, PartialEq)]
pub struct EarlyStopOutcome {
    /// The epoch after which it stopped training; `None` when every
    /// epoch ran.
    pub stopped_after: Option<usize>,
    /// What was monitored, as written (`val_loss`).
    pub monitor: String,
    /// The epoch with the best monitored value, and that value.
    pub best_epoch: usize,
    pub best: f64,
    /// Whether the params and state are now the best epoch's (the
    /// test metrics and the saved checkpoint are of those).
    pub restored: bool,
    /// The epoch whose params and state the model holds now: the best one
    /// when restored, else the last one trained.
    pub kept_epoch: usize,
}

impl EpochReport {
    /// The value of `monitor` this epoch, if it was measured.
    pub fn monitored(&self, monitor: &Monitor) -> Option<f64> {
        let metrics = match monitor.validation {
            true => self.validation.as_ref()?,
            false => &self.train,
        };
        metrics.value(&monitor.metric)
    }

    fn require(&self, monitor: &Monitor) -> Result<f64, RuntimeError> {
        self.monitored(monitor).ok_or_else(|| {
            RuntimeError::Setup(format!(
                "epoch {} did not measure `{monitor}`, which the train block monitors",
                self.epoch
            ))
        })
    }
}

/// `ReduceLROnPlateau`'s state: the reduced rate, the best value, the
/// epochs without improvement and those left to cool down.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PlateauState {
    pub lr: f64,
    /// `None` before the first epoch (PyTorch's `mode_worse`, ±inf).
    pub best: Option<f64>,
    pub bad_epochs: usize,
    pub cooldown_left: usize,
}

/// PyTorch's `eps`: a reduction smaller than this is not made.
const PLATEAU_EPS: f64 = 1e-8;

impl PlateauState {
    pub fn new(base_lr: f64) -> PlateauState {
        PlateauState {
            lr: base_lr,
            best: None,
            bad_epochs: 0,
            cooldown_left: 0,
        }
    }

    /// `ReduceLROnPlateau.step(value)` with `threshold_mode='rel'`.
    pub fn step(&mut self, plateau: &Plateau, value: f64) {
        let maximize = plateau.monitor.maximize();
        let best = self.best.unwrap_or(if maximize {
            f64::NEG_INFINITY
        } else {
            f64::INFINITY
        });
        let better = if maximize {
            value > best * (1.0 + plateau.threshold)
        } else {
            value < best * (1.0 - plateau.threshold)
        };
        if better {
            self.best = Some(value);
            self.bad_epochs = 0;
        } else {
            self.bad_epochs += 1;
        }
        if self.cooldown_left > 0 {
            self.cooldown_left -= 1;
            self.bad_epochs = 0;
        }
        if self.bad_epochs > plateau.patience {
            let reduced = (self.lr * plateau.factor).max(plateau.min_lr);
            if self.lr - reduced > PLATEAU_EPS {
                self.lr = reduced;
            }
            self.cooldown_left = plateau.cooldown;
            self.bad_epochs = 0;
        }
    }
}

/// Keras `EarlyStopping`'s state.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EarlyStopState {
    /// `None` before the first epoch (Keras's ±inf).
    pub best: Option<f64>,
    /// The (1-based) epoch of `best`; 0 before the first.
    pub best_epoch: usize,
    /// Epochs since the best one.
    pub wait: usize,
    /// The epoch after which it stopped training.
    pub stopped_after: Option<usize>,
}

/// What early stopping makes of an epoch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StopDecision {
    /// A new best: keep these weights.
    Improved,
    Continue,
    Stop,
}

impl EarlyStopState {
    pub fn new() -> EarlyStopState {
        EarlyStopState {
            best: None,
            best_epoch: 0,
            wait: 0,
            stopped_after: None,
        }
    }

    /// Keras's `on_epoch_end` for 1-based `epoch` measuring `value`: an
    /// improvement is by more than `min_delta`; training stops once `wait`
    /// reaches `patience`, never after the first epoch.
    pub fn step(&mut self, stop: &EarlyStop, epoch: usize, value: f64) -> StopDecision {
        let maximize = stop.monitor.maximize();
        self.wait += 1;
        let improved = match self.best {
            None => !value.is_nan(),
            Some(best) if maximize => value - stop.min_delta > best,
            Some(best) => value + stop.min_delta < best,
        };
        if improved {
            self.best = Some(value);
            self.best_epoch = epoch;
            self.wait = 0;
            return StopDecision::Improved;
        }
        if self.wait >= stop.patience && epoch > 1 {
            self.stopped_after = Some(epoch);
            return StopDecision::Stop;
        }
        StopDecision::Continue
    }
}

impl Default for EarlyStopState {
    fn default() -> Self {
        EarlyStopState::new()
    }
}

/// What the training loop carries from epoch to epoch besides the
/// executor's state: saved in checkpoints, so a resumed run takes the
/// same decisions as an uninterrupted one.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct LoopState {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub plateau: Option<PlateauState>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub early_stop: Option<EarlyStopState>,
}

impl LoopState {
    /// The state before the first epoch of a run of `spec`.
    pub fn new(spec: &TrainSpec) -> LoopState {
        LoopState {
            plateau: match spec.schedule.as_ref().and_then(|s| s.decay.as_ref()) {
                Some(Decay::Plateau(_)) => Some(PlateauState::new(spec.optimizer.lr())),
                _ => None,
            },
            early_stop: spec.early_stop.as_ref().map(|_| EarlyStopState::new()),
        }
    }

    pub fn to_json(&self) -> String {
        serde_json::to_string(self).expect("plain numbers serialize")
    }

    pub fn from_json(text: &str) -> Result<LoopState, String> {
        serde_json::from_str(text).map_err(|e| e.to_string())
    }
}

/// The learning rate of every step of a run: the schedule's closed forms
/// ([`Schedule::lr`]) with plateau's reduced rate. The training loop,
/// `nnc bench` and the tests all take rates from here.
#[derive(Debug, Clone)]
pub struct LrSchedule<'s> {
    schedule: Option<&'s Schedule>,
    base: f64,
    epochs: usize,
    per_epoch: usize,
}

impl<'s> LrSchedule<'s> {
    /// The rates of a run of `epochs` epochs of `per_epoch` steps.
    pub fn new(spec: &'s TrainSpec, epochs: usize, per_epoch: usize) -> LrSchedule<'s> {
        LrSchedule {
            schedule: spec.schedule.as_ref(),
            base: spec.optimizer.lr(),
            epochs,
            per_epoch,
        }
    }

    /// The rate of 0-based batch `batch` of 1-based `epoch`, with the
    /// loop's `state` (plateau's reduced rate).
    pub fn lr(&self, epoch: usize, batch: usize, state: &LoopState) -> f64 {
        let Some(schedule) = self.schedule else {
            return self.base;
        };
        let epoch = epoch.saturating_sub(1);
        let at = LrAt {
            epoch,
            epochs: self.epochs,
            step: epoch * self.per_epoch + batch,
            steps: self.epochs * self.per_epoch,
            plateau_lr: state.plateau.as_ref().map_or(self.base, |p| p.lr),
        };
        schedule.lr(self.base, &at)
    }
}

/// After a whole epoch: plateau and early stopping see its metrics.
fn end_epoch(
    spec: &TrainSpec,
    report: &EpochReport,
    state: &mut LoopState,
) -> Result<Option<StopDecision>, RuntimeError> {
    if let (Some(Decay::Plateau(plateau)), Some(p)) = (
        spec.schedule.as_ref().and_then(|s| s.decay.as_ref()),
        state.plateau.as_mut(),
    ) {
        p.step(plateau, report.require(&plateau.monitor)?);
    }
    match (&spec.early_stop, state.early_stop.as_mut()) {
        (Some(stop), Some(s)) => Ok(Some(s.step(
            stop,
            report.epoch,
            report.require(&stop.monitor)?,
        ))),
        _ => Ok(None),
    }
}

/// Sample-weighted running means of the scalar outputs.
#[derive(Default)]
struct Accumulator {
    loss: f64,
    accuracy: Option<f64>,
    samples: usize,
}

impl Accumulator {
    fn add(&mut self, m: StepMetrics, n: usize) {
        self.loss += m.loss * n as f64;
        if let Some(a) = m.accuracy {
            *self.accuracy.get_or_insert(0.0) += a * n as f64;
        }
        self.samples += n;
    }

    fn finish(self) -> Metrics {
        let n = self.samples.max(1) as f64;
        Metrics {
            loss: self.loss / n,
            accuracy: self.accuracy.map(|a| a / n),
            samples: self.samples,
            values: Vec::new(),
            classes: None,
        }
    }
}

/// The evaluation graph on the test samples: the data block's own test
/// set, or the training samples `partition` held out; `None` when there
/// are neither.
fn evaluate_test(
    exec: &mut dyn Executor,
    spec: &TrainSpec,
    data: &LoadedData,
    parts: &Partition,
    batch: usize,
) -> Result<Option<Metrics>, RuntimeError> {
    let (dataset, indices) = match &data.test {
        Some(ds) => (ds, (0..ds.len()).collect()),
        None if !parts.test.is_empty() => (&data.train, parts.test.clone()),
        None => return Ok(None),
    };
    evaluate(exec, spec, data, dataset, &indices, batch).map(Some)
}

/// Which samples train, validate and test.
pub struct Partition {
    pub train: Vec<usize>,
    pub validation: Vec<usize>,
    pub test: Vec<usize>,
}

/// Splits `n` samples: first the test share (when the data block holds
/// one out), then the validation share of the rest; both seeded.
pub fn partition(
    n: usize,
    test: Option<f64>,
    validate: Option<f64>,
    seed: u64,
) -> Result<Partition, RuntimeError> {
    let mut train: Vec<usize> = (0..n).collect();
    let mut test_idx = Vec::new();
    if let Some(f) = test {
        let s = train_val_split(n, f, seed)?;
        train = s.train;
        test_idx = s.validation;
    }
    let mut validation = Vec::new();
    if let Some(f) = validate {
        // A different stream from the test split, over the remaining samples.
        let s = train_val_split(train.len(), f, seed.wrapping_add(0x5EED))?;
        validation = s.validation.iter().map(|&i| train[i]).collect();
        train = s.train.iter().map(|&i| train[i]).collect();
    }
    Ok(Partition {
        train,
        validation,
        test: test_idx,
    })
}

impl EpochReport {
    /// Whether the epoch ran all its batches.
    pub fn is_complete(&self) -> bool {
        self.steps == self.batches
    }
}

/// One optimizer step, as the loop describes it to a [`TrainObserver`].
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct StepInfo<'a> {
    pub epoch: usize,
    /// Optimizer steps since training began, this one included (a resumed
    /// run counts the epochs its checkpoint did): PyTorch's global step.
    pub step: usize,
    /// The batch's place in its epoch (1-based), of `batches`.
    pub batch: usize,
    pub batches: usize,
    pub lr: f64,
    /// The training samples of the batch, as indices into the data file's
    /// samples, in batch order.
    pub indices: &'a [usize],
}

/// What watches the training loop: checkpoints, the progress bar, the
/// step log, gradient dumps. An error from any hook stops training.
pub trait TrainObserver {
    /// Before the step runs on `batch` (filled, with the learning rate and
    /// random key set): `exec` holds the params the step will read.
    fn before_step(
        &mut self,
        _step: &StepInfo<'_>,
        _batch: &Batch,
        _exec: &mut dyn Executor,
    ) -> Result<(), RuntimeError> {
        Ok(())
    }
    /// After the step, with the loss and metrics of its batch.
    fn after_step(
        &mut self,
        _step: &StepInfo<'_>,
        _metrics: &StepMetrics,
    ) -> Result<(), RuntimeError> {
        Ok(())
    }
    /// Before [`TrainObserver::after_epoch`], what plateau and early
    /// stopping carry past the epoch (to checkpoint with the executor's).
    fn loop_state(&mut self, _state: &LoopState) {}
    /// After each epoch (also one the step limit cut short), with the
    /// executor, to checkpoint its state.
    fn after_epoch(
        &mut self,
        _report: &EpochReport,
        _exec: &dyn Executor,
    ) -> Result<(), RuntimeError> {
        Ok(())
    }
}

/// The order in which epoch `epoch` visits the training samples `train`
/// (sorted indices): a permutation seeded by the seed and the epoch, or
/// file order when not shuffling.
pub fn epoch_order(
    train: &[usize],
    seed: u64,
    epoch: usize,
    shuffle: bool,
    order: &mut Vec<usize>,
) {
    order.clear();
    order.extend_from_slice(train);
    if shuffle {
        let mut rng = SplitMix64::new(seed ^ (epoch as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15));
        rng.shuffle(order);
    }
}

/// Names of a graph's data inputs, in order (not the `hyper.*` inputs and
/// the random key the loop feeds itself).
pub fn input_names(graph: &Graph) -> Vec<String> {
    graph
        .inputs()
        .into_iter()
        .map(|(_, n)| n.to_string())
        .filter(|n| !is_loop_input(n))
        .collect()
}

/// The random key of one training step (`rng.key`, read by dropout): a
/// hash of the seed, the epoch and the step, so masks differ between steps
/// and a resumed run replays the same masks as an uninterrupted one.
pub fn step_key(seed: u64, epoch: usize, step: usize) -> i32 {
    let mut rng = SplitMix64::new(
        seed ^ (epoch as u64).wrapping_mul(0xD1B5_4A32_D192_ED03)
            ^ (step as u64).wrapping_mul(0x8CB9_2BA7_2F3D_8DD7),
    );
    rng.next_u64() as u32 as i32
}

/// Sets the scalar i32 input `name` of `batch` (added once, then overwritten).
pub fn set_key(batch: &mut Batch, name: &str, value: i32) {
    match batch.fields.iter_mut().find(|f| f.name == name) {
        Some(BatchField {
            data: BatchData::I32(v),
            ..
        }) => {
            v.clear();
            v.push(value);
        }
        Some(f) => f.data = BatchData::I32(vec![value]),
        None => batch.fields.push(BatchField {
            name: name.to_string(),
            shape: Vec::new(),
            data: BatchData::I32(vec![value]),
        }),
    }
}

/// Feeds every `hyper.*` input of the training step built for `optimizer`:
/// the learning rate `lr`, or Adam's step size and bias correction for the
/// step after `steps_taken`, computed in `f64` as PyTorch computes them
/// ([`Optimizer::hyper_inputs`]). The training loop, `nnc bench` and the
/// tests all feed a step through here, so they cannot disagree.
pub fn feed_hyper(batch: &mut Batch, optimizer: &Optimizer, lr: f64, steps_taken: u64) {
    for (name, value) in optimizer.hyper_inputs(lr, steps_taken).iter() {
        set_hyper(batch, name, value);
    }
}

/// The optimizer steps the executor's state has taken: Adam's `adam.step`
/// or Adagrad's `adagrad.step` (restored with a resumed checkpoint); 0
/// without one (SGD and RMSprop keep no count).
pub fn steps_taken(exec: &dyn Executor) -> u64 {
    exec.state()
        .into_iter()
        .find(|(name, _)| name == ADAM_STEP || name == nnc_ir::ADAGRAD_STEP)
        .and_then(|(_, t)| t.data.first().copied())
        .map_or(0, |count| count.max(0.0) as u64)
}

/// Sets the scalar input `name` of `batch` (added once, then overwritten).
pub fn set_hyper(batch: &mut Batch, name: &str, value: f64) {
    match batch.fields.iter_mut().find(|f| f.name == name) {
        Some(BatchField {
            data: BatchData::F32(v),
            ..
        }) => {
            v.clear();
            v.push(value as f32);
        }
        Some(f) => f.data = BatchData::F32(vec![value as f32]),
        None => batch.fields.push(BatchField {
            name: name.to_string(),
            shape: Vec::new(),
            data: BatchData::F32(vec![value as f32]),
        }),
    }
}

/// Loss and metrics of the evaluation graph over `indices` of `ds`, with
/// the train block's set metrics (from the graph's outputs and the labels
/// of each batch, accumulated over the whole set).
pub fn evaluate(
    exec: &mut dyn Executor,
    spec: &TrainSpec,
    data: &LoadedData,
    ds: &Dataset,
    indices: &[usize],
    batch_size: usize,
) -> Result<Metrics, RuntimeError> {
    let names = input_names(&spec.evaluation);
    let mut batch = Batch::default();
    let mut acc = Accumulator::default();
    let mut set = SetAccumulator::new(&spec.metrics);
    let targets: Vec<MetricTarget> = set.targets().cloned().collect();
    let mut labels = Vec::new();
    for chunk in indices.chunks(batch_size.max(1)) {
        data.fill_batch(ds, &names, chunk, &mut batch)?;
        if set.is_empty() {
            acc.add(exec.evaluate(&batch)?, chunk.len());
            continue;
        }
        let outputs = exec.evaluate_outputs(&batch)?;
        let output = |name: &str| outputs.iter().find(|(n, _)| n == name).map(|(_, t)| t);
        let scalar = |name: &str| output(name).and_then(|t| t.data.first().copied());
        let scalars = StepMetrics {
            loss: scalar(LOSS).unwrap_or(f64::NAN),
            accuracy: scalar("accuracy"),
        };
        acc.add(scalars, chunk.len());
        for target in &targets {
            let scores = output(&target.output).ok_or_else(|| {
                RuntimeError::Setup(format!(
                    "internal error: the evaluation graph has no output `{}` to score",
                    target.output
                ))
            })?;
            let field = batch.get(&target.label).ok_or_else(|| {
                RuntimeError::Setup(format!(
                    "internal error: the batch has no label field `{}`",
                    target.label
                ))
            })?;
            labels.clear();
            match &field.data {
                BatchData::F32(v) => labels.extend(v.iter().map(|&x| f64::from(x))),
                BatchData::I32(v) => labels.extend(v.iter().map(|&x| f64::from(x))),
                BatchData::F64(v) => labels.extend_from_slice(v),
            }
            set.add(target, chunk.len(), &scores.data, &labels)
                .map_err(|e| RuntimeError::Setup(format!("metrics: {e}")))?;
        }
    }
    let mut metrics = acc.finish();
    let results = set.finish();
    metrics.values = results.values;
    metrics.classes = results.classes.map(Box::new);
    Ok(metrics)
}

/// Trains the executor's model as `spec` says, calling `on_batch(done,
/// total)` after each step and `on_epoch` after each epoch, with the
/// executor (to checkpoint its state); an error from `on_epoch` stops
/// training.
pub fn train(
    spec: &TrainSpec,
    step: &Graph,
    data: &LoadedData,
    exec: &mut dyn Executor,
    options: &TrainOptions,
    on_batch: &mut dyn FnMut(usize, usize),
    on_epoch: &mut dyn FnMut(&EpochReport, &dyn Executor) -> Result<(), RuntimeError>,
) -> Result<TrainReport, RuntimeError> {
    struct Callbacks<'c> {
        on_batch: &'c mut dyn FnMut(usize, usize),
        on_epoch: &'c mut dyn FnMut(&EpochReport, &dyn Executor) -> Result<(), RuntimeError>,
    }
    impl TrainObserver for Callbacks<'_> {
        fn after_step(&mut self, s: &StepInfo<'_>, _: &StepMetrics) -> Result<(), RuntimeError> {
            (self.on_batch)(s.batch, s.batches);
            Ok(())
        }
        fn after_epoch(&mut self, r: &EpochReport, e: &dyn Executor) -> Result<(), RuntimeError> {
            (self.on_epoch)(r, e)
        }
    }
    train_observed(
        spec,
        step,
        data,
        exec,
        options,
        &mut Callbacks { on_batch, on_epoch },
    )
}

/// Trains the executor's model as `spec` says, telling `observer` about
/// every step and epoch.
pub fn train_observed(
    spec: &TrainSpec,
    step: &Graph,
    data: &LoadedData,
    exec: &mut dyn Executor,
    options: &TrainOptions,
    observer: &mut dyn TrainObserver,
) -> Result<TrainReport, RuntimeError> {
    let seed = options.resolve(Some(spec)).seed;
    let parts = partition(data.train.len(), data.test_split, spec.validate, seed)?;
    train_partition(spec, step, data, exec, options, observer, &parts)
}

/// Trains as [`train_observed`] on the samples `parts` says: one fold of
/// k-fold cross-validation, or the run's own split.
pub fn train_partition(
    spec: &TrainSpec,
    step: &Graph,
    data: &LoadedData,
    exec: &mut dyn Executor,
    options: &TrainOptions,
    observer: &mut dyn TrainObserver,
    parts: &Partition,
) -> Result<TrainReport, RuntimeError> {
    let TrainSettings {
        epochs,
        batch: batch_size,
        seed,
        first_epoch,
        shuffle,
        max_steps,
    } = options.resolve(Some(spec));
    data.check_inputs(step)?;
    data.check_inputs(&spec.evaluation)?;
    if parts.train.is_empty() {
        return Err(RuntimeError::Setup(
            "no training samples are left after the test and validation splits".into(),
        ));
    }
    let names = input_names(step);
    let mut batch = Batch::default();
    let mut reports = Vec::with_capacity(epochs);
    let mut order = Vec::with_capacity(parts.train.len());
    let per_epoch = Batches::new(parts.train.len(), batch_size, false)?.len();
    let lrs = LrSchedule::new(spec, epochs, per_epoch);
    let pruning = crate::prune::Pruning::new(spec.prune.as_ref(), step, per_epoch, epochs)?;
    let mut state = options
        .resumed
        .clone()
        .unwrap_or_else(|| LoopState::new(spec));
    // The params and state of the best epoch so far, to restore at the end.
    let keep_best = spec.early_stop.as_ref().is_some_and(|s| s.restore_best);
    let mut best_state = None;
    // Optimizer steps in this run (`--steps`), and since the optimizer
    // state began (Adam's bias corrections; a resumed run continues it).
    let mut run_steps = 0;
    let mut optimizer_steps = steps_taken(exec);
    for epoch in first_epoch..=epochs {
        if max_steps.is_some_and(|m| run_steps >= m) {
            break;
        }
        if state
            .early_stop
            .as_ref()
            .is_some_and(|s| s.stopped_after.is_some())
        {
            break;
        }
        let start = Instant::now();
        epoch_order(&parts.train, seed, epoch, shuffle, &mut order);
        let mut acc = Accumulator::default();
        let batches = Batches::new(order.len(), batch_size, false)?;
        let total = batches.len();
        let mode = Mode::Train { seed, epoch };
        let mut prefetch = data.prefetch(&data.train, &names, &order, batch_size, mode, 1);
        let mut steps = 0;
        for (i, range) in batches.enumerate() {
            if max_steps.is_some_and(|m| run_steps >= m) {
                break;
            }
            let indices = &order[range];
            let lr = lrs.lr(epoch, i, &state);
            prefetch.next_into(&mut batch)?;
            feed_hyper(&mut batch, &spec.optimizer, lr, optimizer_steps);
            set_key(&mut batch, RNG_KEY, step_key(seed, epoch, i));
            let info = StepInfo {
                epoch,
                step: (epoch - 1) * per_epoch + i + 1,
                batch: i + 1,
                batches: total,
                lr,
                indices,
            };
            observer.before_step(&info, &batch, exec)?;
            let m = exec.train_step(&batch)?;
            optimizer_steps += 1;
            if !m.loss.is_finite() {
                return Err(RuntimeError::NonFinite {
                    epoch,
                    step: i + 1,
                    value: m.loss,
                });
            }
            acc.add(m, indices.len());
            run_steps += 1;
            steps += 1;
            if let Some(p) = &pruning {
                p.after_step(exec, info.step)?;
            }
            observer.after_step(&info, &m)?;
        }
        let validation = if parts.validation.is_empty() {
            None
        } else {
            Some(evaluate(
                exec,
                spec,
                data,
                &data.train,
                &parts.validation,
                batch_size,
            )?)
        };
        let mut train = acc.finish();
        if let Some(p) = &pruning {
            p.zero_masked(exec)?;
            let weights = crate::prune::measure(exec, &p.weights)?;
            train
                .values
                .push(("sparsity".into(), crate::prune::overall(&weights)));
        }
        let report = EpochReport {
            epoch,
            epochs,
            lr: lrs.lr(epoch, 0, &state),
            steps,
            batches: total,
            train,
            validation,
            seconds: start.elapsed().as_secs_f64(),
        };
        // An epoch the step limit cut short is run again on resuming, so
        // it decides nothing.
        let decision = match report.is_complete() {
            true => end_epoch(spec, &report, &mut state)?,
            false => None,
        };
        if keep_best && decision == Some(StopDecision::Improved) {
            best_state = Some((epoch, exec.state()));
        }
        observer.loop_state(&state);
        observer.after_epoch(&report, exec)?;
        reports.push(report);
        if decision == Some(StopDecision::Stop) {
            break;
        }
    }
    let early_stop = match state.early_stop {
        Some(s) if s.best_epoch > 0 => {
            let last = reports
                .iter()
                .rev()
                .find(|r| r.is_complete())
                .map_or(first_epoch.saturating_sub(1), |r| r.epoch);
            // The best epoch's snapshot exists only when this run trained
            // it: one before a resume is not restored.
            let restored = match best_state {
                Some((best_epoch, saved)) if keep_best && best_epoch == s.best_epoch => {
                    if reports.last().map(|r| r.epoch) != Some(best_epoch) {
                        for (name, value) in saved {
                            exec.set_state(&name, value)?;
                        }
                    }
                    true
                }
                _ => false,
            };
            Some(EarlyStopOutcome {
                monitor: spec
                    .early_stop
                    .as_ref()
                    .map_or_else(String::new, |e| e.monitor.to_string()),
                stopped_after: s.stopped_after,
                best_epoch: s.best_epoch,
                best: s.best.unwrap_or(f64::NAN),
                restored,
                kept_epoch: if restored { s.best_epoch } else { last },
            })
        }
        _ => None,
    };
    let test = evaluate_test(exec, spec, data, parts, batch_size)?;
    Ok(TrainReport {
        epochs: reports,
        test,
        early_stop,
    })
}

/// Metrics of trained params on the samples training did not learn from.
#[derive(Debug, Clone, PartialEq)]
pub struct Evaluation {
    /// Only when the data holds out neither validation nor test samples:
    /// then the training samples are all there is to measure.
    pub train: Option<Metrics>,
    pub validation: Option<Metrics>,
    pub test: Option<Metrics>,
}

/// The evaluation graph's loss and metrics on the validation and test
/// samples, split exactly as [`train`] splits them (so evaluating saved
/// weights reproduces the run's final numbers); on the training samples
/// when there are neither.
pub fn evaluate_held_out(
    spec: &TrainSpec,
    data: &LoadedData,
    exec: &mut dyn Executor,
    options: &TrainOptions,
) -> Result<Evaluation, RuntimeError> {
    let settings = options.resolve(Some(spec));
    data.check_inputs(&spec.evaluation)?;
    let parts = partition(
        data.train.len(),
        data.test_split,
        spec.validate,
        settings.seed,
    )?;
    let on_train = |exec: &mut dyn Executor, idx: &[usize]| {
        evaluate(exec, spec, data, &data.train, idx, settings.batch)
    };
    let validation = match parts.validation.is_empty() {
        true => None,
        false => Some(on_train(exec, &parts.validation)?),
    };
    let test = evaluate_test(exec, spec, data, &parts, settings.batch)?;
    let train = match (&validation, &test) {
        (None, None) => Some(on_train(exec, &parts.train)?),
        _ => None,
    };
    Ok(Evaluation {
        train,
        validation,
        test,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn without_shuffling_every_epoch_is_in_file_order() {
        let train = [0, 2, 3, 5, 8, 9];
        let mut order = Vec::new();
        for epoch in 1..=3 {
            epoch_order(&train, 7, epoch, false, &mut order);
            assert_eq!(order, train);
        }
    }

    #[test]
    fn shuffled_epochs_are_seeded_permutations() {
        let train: Vec<usize> = (0..50).collect();
        let (mut a, mut b, mut again) = (Vec::new(), Vec::new(), Vec::new());
        epoch_order(&train, 7, 1, true, &mut a);
        epoch_order(&train, 7, 2, true, &mut b);
        epoch_order(&train, 7, 1, true, &mut again);
        assert_ne!(a, train);
        assert_ne!(a, b, "each epoch draws a new order");
        assert_eq!(a, again, "the seed and the epoch fix the order");
        let mut sorted = a.clone();
        sorted.sort_unstable();
        assert_eq!(sorted, train);
    }

    #[test]
    fn the_command_line_overrides_the_train_blocks_shuffle() {
        let options = TrainOptions {
            shuffle: Some(false),
            max_steps: Some(3),
            ..Default::default()
        };
        let settings = options.resolve(None);
        assert!(!settings.shuffle);
        assert_eq!(settings.max_steps, Some(3));
        assert!(TrainOptions::default().resolve(None).shuffle);
    }

    fn plateau(
        patience: usize,
        factor: f64,
        threshold: f64,
        cooldown: usize,
        min_lr: f64,
    ) -> Plateau {
        Plateau {
            monitor: Monitor {
                validation: true,
                metric: "loss".into(),
            },
            patience,
            factor,
            threshold,
            cooldown,
            min_lr,
        }
    }

    #[test]
    fn plateau_reduces_after_patience_then_cools_down_and_stops_at_min_lr() {
        // Traced by hand through `ReduceLROnPlateau.step` (mode min, rel
        // threshold 0.1: an improvement is below 0.9 × best).
        let p = plateau(1, 0.5, 0.1, 1, 0.2);
        let values = [
            10.0, 9.5, 9.2, 8.0, 8.0, 8.0, 8.0, 5.0, 5.0, 5.0, 5.0, 5.0, 5.0,
        ];
        let want = [
            1.0, 1.0, 0.5, 0.5, 0.5, 0.25, 0.25, 0.25, 0.25, 0.2, 0.2, 0.2, 0.2,
        ];
        let mut state = PlateauState::new(1.0);
        let got: Vec<f64> = values
            .iter()
            .map(|&v| {
                state.step(&p, v);
                state.lr
            })
            .collect();
        assert_eq!(got, want);
        assert_eq!(state.best, Some(5.0));
        assert_eq!(
            state.cooldown_left, 1,
            "the last reduction (none: at min_lr) still cools down"
        );
    }

    /// `ReduceLROnPlateau` as PyTorch writes it, with `best` starting at
    /// ±inf and `in_cooldown` read before the decrement.
    fn plateau_reference(p: &Plateau, maximize: bool, base: f64, values: &[f64]) -> Vec<f64> {
        let mut best = if maximize {
            f64::NEG_INFINITY
        } else {
            f64::INFINITY
        };
        let (mut bad, mut cooldown_counter, mut lr) = (0usize, 0usize, base);
        let mut out = Vec::new();
        for &current in values {
            let is_better = if maximize {
                current > best * (p.threshold + 1.0)
            } else {
                current < best * (1.0 - p.threshold)
            };
            if is_better {
                best = current;
                bad = 0;
            } else {
                bad += 1;
            }
            if cooldown_counter > 0 {
                cooldown_counter -= 1;
                bad = 0;
            }
            if bad > p.patience {
                let new_lr = f64::max(lr * p.factor, p.min_lr);
                if lr - new_lr > 1e-8 {
                    lr = new_lr;
                }
                cooldown_counter = p.cooldown;
                bad = 0;
            }
            out.push(lr);
        }
        out
    }

    #[test]
    fn plateau_matches_pytorch_over_30_epochs_in_both_modes() {
        // A noisy, slowly improving metric.
        let mut rng = SplitMix64::new(3);
        let values: Vec<f64> = (0..30)
            .map(|e| 1.0 / (1.0 + e as f64 * 0.1) + (rng.next_u64() % 1000) as f64 * 1e-4)
            .collect();
        for (patience, cooldown, min_lr) in [(0, 0, 0.0), (2, 1, 0.01), (1, 3, 0.05)] {
            let mut p = plateau(patience, 0.3, 1e-2, cooldown, min_lr);
            let mut state = PlateauState::new(0.5);
            let got: Vec<f64> = values
                .iter()
                .map(|&v| {
                    state.step(&p, v);
                    state.lr
                })
                .collect();
            assert_eq!(got, plateau_reference(&p, false, 0.5, &values));
            assert!(got[29] < 0.5, "it reduced at least once");
            // Accuracy-like: larger is better.
            p.monitor.metric = "accuracy".into();
            let accuracy: Vec<f64> = values.iter().map(|v| 1.0 - v).collect();
            let mut state = PlateauState::new(0.5);
            let got: Vec<f64> = accuracy
                .iter()
                .map(|&v| {
                    state.step(&p, v);
                    state.lr
                })
                .collect();
            assert_eq!(got, plateau_reference(&p, true, 0.5, &accuracy));
        }
    }

    fn early_stop(metric: &str, patience: usize, min_delta: f64) -> EarlyStop {
        EarlyStop {
            monitor: Monitor {
                validation: true,
                metric: metric.into(),
            },
            patience,
            min_delta,
            restore_best: true,
        }
    }

    #[test]
    fn early_stopping_decides_as_keras_does() {
        use StopDecision::*;
        let run = |stop: &EarlyStop, values: &[f64]| {
            let mut state = EarlyStopState::new();
            let mut out = Vec::new();
            for (i, &v) in values.iter().enumerate() {
                let d = state.step(stop, i + 1, v);
                out.push(d);
                if d == Stop {
                    break;
                }
            }
            (out, state)
        };
        // Improvements must beat the best by more than min_delta.
        let (got, state) = run(
            &early_stop("loss", 2, 0.1),
            &[1.0, 0.95, 0.85, 0.9, 0.89, 0.5],
        );
        assert_eq!(got, [Improved, Continue, Improved, Continue, Stop]);
        assert_eq!(
            state,
            EarlyStopState {
                best: Some(0.85),
                best_epoch: 3,
                wait: 2,
                stopped_after: Some(5),
            }
        );
        // Larger accuracy is better; patience 0 stops at the first epoch
        // without improvement.
        let (got, state) = run(&early_stop("accuracy", 0, 0.0), &[0.5, 0.6, 0.6, 0.7]);
        assert_eq!(got, [Improved, Improved, Stop]);
        assert_eq!((state.best_epoch, state.stopped_after), (2, Some(3)));
        // Never on the first epoch, even when it does not count.
        let (got, _) = run(&early_stop("loss", 0, 0.0), &[f64::NAN, 1.0]);
        assert_eq!(got, [Continue, Improved]);
        // An improvement every fourth epoch: patience 4 never runs out, 3 does.
        let values: Vec<f64> = (0..25)
            .map(|e| 1.0 - (e / 4) as f64 * 0.01 + (e % 4) as f64 * 0.001)
            .collect();
        let (got, state) = run(&early_stop("loss", 4, 0.0), &values);
        assert_eq!(got.len(), 25);
        assert_eq!((state.best_epoch, state.stopped_after), (25, None));
        let (got, state) = run(&early_stop("loss", 3, 0.0), &values);
        assert_eq!(got.len(), 4);
        assert_eq!((state.best_epoch, state.stopped_after), (1, Some(4)));
    }

    #[test]
    fn the_loop_state_round_trips_through_json() {
        let state = LoopState {
            plateau: Some(PlateauState {
                lr: 0.1 + 0.2,
                best: None,
                bad_epochs: 2,
                cooldown_left: 1,
            }),
            early_stop: Some(EarlyStopState {
                best: Some(1.0 / 3.0),
                best_epoch: 4,
                wait: 1,
                stopped_after: None,
            }),
        };
        assert_eq!(LoopState::from_json(&state.to_json()).unwrap(), state);
        assert_eq!(LoopState::default().to_json(), "{}");
        assert!(LoopState::from_json("{\"plateau\": 3}").is_err());
    }
}
