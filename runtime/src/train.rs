//! The training loop: epochs over seeded, shuffled batches, the loss and
//! metrics per epoch on the training and validation samples, and a final
//! evaluation on the test samples.
//!
//! Execution goes through an `Executor`; this issue ships the reference
//! interpreter, the JIT plugs in behind the same trait.

use crate::data::{train_val_split, Batches, Dataset, SplitMix64};
use crate::loader::LoadedData;
use crate::RuntimeError;
use nnc_ir::interp::{self, Env, EvalOptions};
use nnc_ir::{Graph, TrainSpec, LOSS};
use std::time::Instant;

/// Runs graphs against a store of params and state.
pub trait Executor {
    /// One training step: evaluates `graph` and writes its updates back.
    /// Returns the named scalar outputs (loss, accuracy).
    fn step(&mut self, graph: &Graph, env: &mut Env) -> Result<Vec<(String, f64)>, RuntimeError>;
    /// Evaluates `graph` without updating anything.
    fn eval(&mut self, graph: &Graph, env: &Env) -> Result<Vec<(String, f64)>, RuntimeError>;
}

/// The reference interpreter: slow, simple, the definition of correct.
pub struct Interpreter;

fn scalars(graph: &Graph, values: &interp::Values) -> Vec<(String, f64)> {
    graph
        .outputs
        .iter()
        .filter_map(|o| {
            let t = values.get(o.node)?;
            (t.shape.is_empty()).then(|| (o.name.clone(), t.data[0]))
        })
        .collect()
}

impl Executor for Interpreter {
    fn step(&mut self, graph: &Graph, env: &mut Env) -> Result<Vec<(String, f64)>, RuntimeError> {
        let values = interp::step(graph, env, EvalOptions::F32)?;
        Ok(scalars(graph, &values))
    }

    fn eval(&mut self, graph: &Graph, env: &Env) -> Result<Vec<(String, f64)>, RuntimeError> {
        let values = interp::eval(graph, env, EvalOptions::F32)?;
        Ok(scalars(graph, &values))
    }
}

/// Overrides of the train block's settings from the command line.
#[derive(Debug, Clone, Default)]
pub struct TrainOptions {
    pub epochs: Option<usize>,
    pub batch: Option<usize>,
    pub seed: Option<u64>,
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
    fn add(&mut self, outputs: &[(String, f64)], n: usize) {
        for (name, v) in outputs {
            match name.as_str() {
                LOSS => self.loss += v * n as f64,
                "accuracy" => *self.accuracy.get_or_insert(0.0) += v * n as f64,
                _ => {}
            }
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

/// Which samples train, validate and test.
struct Partition {
    train: Vec<usize>,
    validation: Vec<usize>,
    test: Vec<usize>,
}

fn partition(
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

fn feed(
    data: &LoadedData,
    ds: &Dataset,
    graph: &Graph,
    env: &mut Env,
    indices: &[usize],
) -> Result<(), RuntimeError> {
    for (_, name) in graph.inputs() {
        let t = data.batch(ds, name, indices)?;
        env.insert(name, t);
    }
    Ok(())
}

/// Loss and metrics of `graph` (the objective) over `indices`.
pub fn evaluate(
    exec: &mut dyn Executor,
    graph: &Graph,
    env: &mut Env,
    data: &LoadedData,
    ds: &Dataset,
    indices: &[usize],
    batch: usize,
) -> Result<Metrics, RuntimeError> {
    let mut acc = Accumulator::default();
    for chunk in indices.chunks(batch.max(1)) {
        feed(data, ds, graph, env, chunk)?;
        let out = exec.eval(graph, env)?;
        acc.add(&out, chunk.len());
    }
    Ok(acc.finish())
}

/// Trains `env`'s params (initialized here if absent) with `step`, the
/// training-step graph built from `spec`.
pub fn train(
    spec: &TrainSpec,
    step: &Graph,
    data: &LoadedData,
    env: &mut Env,
    exec: &mut dyn Executor,
    options: &TrainOptions,
    on_epoch: &mut dyn FnMut(&EpochReport),
) -> Result<TrainReport, RuntimeError> {
    let epochs = options.epochs.unwrap_or(spec.epochs);
    let batch = options.batch.unwrap_or(spec.batch);
    let seed = options.seed.unwrap_or(spec.seed);
    data.check_inputs(step)?;
    data.check_inputs(&spec.objective)?;
    nnc_ir::init::init_leaves(step, seed, env)?;

    let parts = partition(data.train.len(), data.test_split, spec.validate, seed)?;
    if parts.train.is_empty() {
        return Err(RuntimeError::Setup(
            "no training samples are left after the test and validation splits".into(),
        ));
    }
    let mut reports = Vec::with_capacity(epochs);
    for epoch in 1..=epochs {
        let start = Instant::now();
        let mut rng = SplitMix64::new(seed ^ (epoch as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15));
        let mut order = parts.train.clone();
        rng.shuffle(&mut order);
        let mut acc = Accumulator::default();
        for (i, range) in Batches::new(order.len(), batch, false)?.enumerate() {
            let indices = &order[range];
            feed(data, &data.train, step, env, indices)?;
            let out = exec.step(step, env)?;
            if let Some((_, loss)) = out.iter().find(|(n, _)| n == LOSS) {
                if !loss.is_finite() {
                    return Err(RuntimeError::NonFinite {
                        epoch,
                        step: i + 1,
                        value: *loss,
                    });
                }
            }
            acc.add(&out, indices.len());
        }
        let validation = if parts.validation.is_empty() {
            None
        } else {
            Some(evaluate(
                exec,
                &spec.objective,
                env,
                data,
                &data.train,
                &parts.validation,
                batch,
            )?)
        };
        let report = EpochReport {
            epoch,
            epochs,
            train: acc.finish(),
            validation,
            seconds: start.elapsed().as_secs_f64(),
        };
        on_epoch(&report);
        reports.push(report);
    }
    let test = match (&data.test, parts.test.is_empty()) {
        (Some(ds), _) => {
            let all: Vec<usize> = (0..ds.len()).collect();
            Some(evaluate(exec, &spec.objective, env, data, ds, &all, batch)?)
        }
        (None, false) => Some(evaluate(
            exec,
            &spec.objective,
            env,
            data,
            &data.train,
            &parts.test,
            batch,
        )?),
        (None, true) => None,
    };
    Ok(TrainReport {
        epochs: reports,
        test,
    })
}
