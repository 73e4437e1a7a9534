//! The training loop: epochs over seeded, shuffled batches, the loss and
//! metrics per epoch on the training and validation samples, and a final
//! evaluation on the test samples.

use crate::data::{train_val_split, Batches, Dataset, Mode, SplitMix64};
use crate::executor::{Batch, BatchData, BatchField, Executor, StepMetrics};
use crate::loader::LoadedData;
use crate::RuntimeError;
use nnc_ir::{is_loop_input, Graph, Optimizer, TrainSpec, ADAM_STEP, RNG_KEY};
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
}

#[derive(Debug, Clone, PartialEq)]
pub struct EpochReport {
    pub epoch: usize,
    pub epochs: usize,
    /// The learning rate of the epoch's steps.
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
    evaluate(exec, &spec.evaluation, data, dataset, &indices, batch).map(Some)
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
/// (restored with a resumed checkpoint); 0 without one (SGD keeps no count).
pub fn steps_taken(exec: &dyn Executor) -> u64 {
    exec.state()
        .into_iter()
        .find(|(name, _)| name == ADAM_STEP)
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

/// Loss and metrics of the objective over `indices` of `ds`.
pub fn evaluate(
    exec: &mut dyn Executor,
    objective: &Graph,
    data: &LoadedData,
    ds: &Dataset,
    indices: &[usize],
    batch_size: usize,
) -> Result<Metrics, RuntimeError> {
    let names = input_names(objective);
    let mut batch = Batch::default();
    let mut acc = Accumulator::default();
    for chunk in indices.chunks(batch_size.max(1)) {
        data.fill_batch(ds, &names, chunk, &mut batch)?;
        acc.add(exec.evaluate(&batch)?, chunk.len());
    }
    Ok(acc.finish())
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

    let parts = partition(data.train.len(), data.test_split, spec.validate, seed)?;
    if parts.train.is_empty() {
        return Err(RuntimeError::Setup(
            "no training samples are left after the test and validation splits".into(),
        ));
    }
    let names = input_names(step);
    let mut batch = Batch::default();
    let mut reports = Vec::with_capacity(epochs);
    let mut order = Vec::with_capacity(parts.train.len());
    let base_lr = spec.optimizer.lr();
    let per_epoch = Batches::new(parts.train.len(), batch_size, false)?.len();
    // Optimizer steps in this run (`--steps`), and since the optimizer
    // state began (Adam's bias corrections; a resumed run continues it).
    let mut run_steps = 0;
    let mut optimizer_steps = steps_taken(exec);
    for epoch in first_epoch..=epochs {
        if max_steps.is_some_and(|m| run_steps >= m) {
            break;
        }
        let lr = spec
            .schedule
            .map_or(base_lr, |s| s.lr(base_lr, epoch - 1, epochs));
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
            observer.after_step(&info, &m)?;
        }
        let validation = if parts.validation.is_empty() {
            None
        } else {
            Some(evaluate(
                exec,
                &spec.evaluation,
                data,
                &data.train,
                &parts.validation,
                batch_size,
            )?)
        };
        let report = EpochReport {
            epoch,
            epochs,
            lr,
            steps,
            batches: total,
            train: acc.finish(),
            validation,
            seconds: start.elapsed().as_secs_f64(),
        };
        observer.after_epoch(&report, exec)?;
        reports.push(report);
    }
    let test = evaluate_test(exec, spec, data, &parts, batch_size)?;
    Ok(TrainReport {
        epochs: reports,
        test,
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
        evaluate(
            exec,
            &spec.evaluation,
            data,
            &data.train,
            idx,
            settings.batch,
        )
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
}
