//! The model a server answers for: the `.nn` file's model as the
//! checkpoint has it (pruned, factorized or quantized, as `nnc run
//! --weights` builds it), its forward graph compiled by the JIT on the
//! one thread that owns it, and how a request's samples become its input.

use super::batcher::{self, Gather, Job, Message};
use super::metrics::Metrics;
use super::protocol::{self, InputSpec, ModelMeta, Samples, TensorMeta, Values};
use crate::diagnostic;
use crate::driver::{self, Failure, OptLevel};
use nnc_ir::Dim;
use nnc_runtime::checkpoint::{self, Scope};
use nnc_runtime::data::Storage;
use nnc_runtime::predict::SampleEncoder;
use nnc_runtime::{Batch, BatchField, Checkpoint, Programs};
use std::path::Path;
use std::sync::mpsc::{self, Receiver};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

/// Everything about the model the HTTP side needs: names, metadata, and
/// the encoder of samples (which runs on the request's thread, so a bad
/// request never reaches a batch).
pub struct Model {
    pub name: String,
    pub input: InputSpec,
    pub outputs: Vec<String>,
    pub meta: ModelMeta,
    encoder: SampleEncoder,
}

/// A model loaded: what the HTTP side reads, and what its thread
/// compiles and runs.
pub struct Loaded {
    pub model: Model,
    pub engine: Engine,
}

/// The graphs and weights the model's thread owns.
pub struct Engine {
    name: String,
    input: String,
    outputs: Vec<String>,
    programs: Programs,
    checkpoint: Checkpoint,
    seed: u64,
}

fn failure(message: impl std::fmt::Display) -> Failure {
    Failure(diagnostic::render_plain(&message.to_string()))
}

/// `file`'s model (`model` when it has several) with the weights of
/// `weights`, its forward graph optimized at `level`.
pub fn load(
    file: &Path,
    weights: &Path,
    model: Option<&str>,
    level: OptLevel,
) -> Result<Loaded, Failure> {
    let src = driver::read_source(file)?;
    let mut module = driver::compile_source(&src, model)?;
    // The one function `run --weights`, `compile --weights` and `bench
    // --weights` build a pruned, factorized or quantized model with.
    driver::as_checkpoint_has_it(&mut module, weights)?;
    let programs = Programs {
        grouping: driver::grouping(level),
        ..Programs::inference(driver::optimize(&module.forward, level)?.0)
    };
    let checkpoint = checkpoint::load(weights).map_err(failure)?;
    let encoder = SampleEncoder::new(&module, &programs.forward, &checkpoint).map_err(failure)?;
    if let Some(field) = encoder.text_field() {
        return Err(failure(format!(
            "model `{}` reads text (field `{}`): `nnc serve` takes numbers only so far; `nnc run --predict` encodes text",
            module.name, field.name
        )));
    }
    let forward = &programs.forward;
    let meta_shape = |dims: &[Dim]| -> Vec<i64> {
        dims.iter()
            .map(|d| d.as_const().map_or(-1, |n| n as i64))
            .collect()
    };
    let input = InputSpec {
        model: module.name.clone(),
        name: encoder.input().to_string(),
        dtype: encoder.dtype(),
        sample_shape: encoder.sample_shape(),
    };
    let input_meta = TensorMeta {
        name: input.name.clone(),
        datatype: protocol::datatype(input.dtype),
        shape: match &input.sample_shape {
            Some(s) => std::iter::once(-1)
                .chain(s.iter().map(|&d| d as i64))
                .collect(),
            None => vec![-1],
        },
    };
    let outputs: Vec<TensorMeta> = forward
        .outputs
        .iter()
        .map(|o| {
            let ty = forward.ty(o.node);
            let mut shape = meta_shape(&ty.shape);
            if let Some(first) = shape.first_mut() {
                *first = -1;
            }
            TensorMeta {
                name: o.name.clone(),
                datatype: protocol::datatype(ty.dtype),
                shape,
            }
        })
        .collect();
    let seed = nnc_runtime::TrainOptions::default()
        .resolve(module.train.as_ref())
        .seed;
    let model = Model {
        name: module.name.clone(),
        outputs: outputs.iter().map(|o| o.name.clone()).collect(),
        meta: ModelMeta {
            name: module.name.clone(),
            versions: vec!["1".into()],
            platform: "nnc",
            inputs: vec![input_meta],
            outputs,
        },
        input,
        encoder,
    };
    let engine = Engine {
        name: model.name.clone(),
        input: model.input.name.clone(),
        outputs: model.outputs.clone(),
        programs,
        checkpoint,
        seed,
    };
    Ok(Loaded { model, engine })
}

impl Model {
    /// A request's checked samples as the model's input: through the
    /// data block's transforms by the code `--predict` runs.
    pub fn encode(&self, samples: Samples) -> Result<BatchField, String> {
        let storage = match samples.values {
            Values::F32(v) => Storage::F32(v),
            Values::I32(v) => Storage::I32(v),
        };
        let data = self
            .encoder
            .encode(storage, samples.sample_shape, Path::new("the request"))
            .map_err(|e| e.to_string())?;
        let names = [self.input.name.clone()];
        let indices: Vec<usize> = (0..samples.count).collect();
        let mut batch = Batch::default();
        data.fill_batch(&data.train, &names, &indices, &mut batch)
            .map_err(|e| e.to_string())?;
        batch
            .fields
            .pop()
            .ok_or_else(|| "internal error: the request's samples made no input".to_string())
    }
}

/// How the worker batches.
#[derive(Debug, Clone)]
pub struct Batching {
    pub max_batch: usize,
    pub max_delay: Duration,
    /// Requests on their way to the queue (see [`Gather`]).
    pub arriving: Arc<std::sync::atomic::AtomicUsize>,
}

/// Starts the thread that owns the model: it compiles the forward graph
/// at every batch size it will run (before the server answers anyone),
/// loads the checkpoint (refusing one of another model, naming the first
/// tensor that differs), then runs the batches `rx` brings until every
/// sender is gone. Returns once the model is ready, or its failure.
pub fn start_worker(
    engine: Engine,
    batching: Batching,
    rx: Receiver<Message>,
    metrics: Arc<Metrics>,
) -> Result<JoinHandle<()>, Failure> {
    let (ready_tx, ready_rx) = mpsc::channel::<Result<(), Failure>>();
    let Engine {
        name,
        input,
        outputs,
        programs,
        checkpoint,
        seed,
    } = engine;
    let handle = std::thread::Builder::new()
        .name("nnc-model".into())
        .spawn(move || {
            let params = checkpoint::param_names(&programs);
            let forward = programs.forward.clone();
            let setup = nnc_runtime::Backend::Jit
                .executor(programs, seed)
                .and_then(|mut exec| {
                    checkpoint.apply(exec.as_mut(), &name, &params, Scope::Params)?;
                    Ok(exec)
                });
            let mut exec = match setup {
                Ok(exec) => exec,
                Err(e) => {
                    let _ = ready_tx.send(Err(failure(e)));
                    return;
                }
            };
            let sizes = batcher::sizes(batching.max_batch);
            for &size in &sizes {
                let batch = Batch::synthetic(&forward, size, 0);
                if let Err(e) = exec.predict(&batch) {
                    let _ = ready_tx.send(Err(failure(format!(
                        "model `{name}` does not run at batch {size}: {e}"
                    ))));
                    return;
                }
            }
            let _ = ready_tx.send(Ok(()));
            let mut gather = Gather::new(
                rx,
                batching.max_batch,
                batching.max_delay,
                batching.arriving,
            );
            let mut batch = Batch::default();
            while let Some(jobs) = gather.next() {
                let samples: usize = jobs.iter().map(Job::samples).sum();
                metrics.batch(samples, jobs.len());
                batcher::run_batch(exec.as_mut(), &input, &outputs, jobs, &sizes, &mut batch);
            }
        })
        .map_err(|e| failure(format!("cannot start the model's thread: {e}")))?;
    match ready_rx.recv() {
        Ok(Ok(())) => Ok(handle),
        Ok(Err(f)) => {
            let _ = handle.join();
            Err(f)
        }
        Err(_) => {
            let _ = handle.join();
            Err(failure("internal error: the model's thread stopped"))
        }
    }
}

/// The job a request becomes.
pub fn job(
    field: BatchField,
    reply: tokio::sync::oneshot::Sender<Result<Vec<batcher::Answer>, String>>,
) -> Job {
    Job {
        field,
        enqueued: std::time::Instant::now(),
        reply,
    }
}
