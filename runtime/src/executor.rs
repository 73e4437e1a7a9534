//! The boundary between the training loop and whatever runs the graphs.
//!
//! An executor owns the compiled programs and the model's state (params and
//! optimizer state); the loop hands it batches and reads back the scalar
//! metrics. The reference interpreter implements it here; the JIT does in
//! its own module.

use crate::RuntimeError;
use nnc_codegen::GroupConfig;
use nnc_ir::interp::{self, Env, EvalOptions};
use nnc_ir::{Graph, Tensor, GRADIENT_PREFIX, LOSS};

/// The graphs a model runs: inference, evaluation (loss and metrics) and
/// the training step.
#[derive(Debug, Clone)]
pub struct Programs {
    pub forward: Graph,
    /// The loss and metrics of the model in evaluation mode (validation, test).
    pub evaluation: Graph,
    pub step: Graph,
    /// The loss and every param's gradient on a batch, without an update
    /// (outputs `loss` and `grad.<param>`, from
    /// `nnc_passes::gradient_graph`): only a run that dumps gradients
    /// compiles it.
    pub gradients: Option<Graph>,
    /// How the JIT groups each graph's nodes into kernels (the fusion
    /// half of the optimization level); the interpreter ignores it.
    pub grouping: GroupConfig,
}

impl Programs {
    /// The three graphs, grouped by the JIT's default rule.
    pub fn new(forward: Graph, evaluation: Graph, step: Graph) -> Programs {
        Programs {
            forward,
            evaluation,
            step,
            gradients: None,
            grouping: GroupConfig::default(),
        }
    }
}

impl Programs {
    /// The forward graph alone, standing in for all three: prediction
    /// runs nothing else, and skipping the training step spares its
    /// optimization. Grouped by the default rule at every level.
    pub fn inference(forward: Graph) -> Programs {
        Programs::new(forward.clone(), forward.clone(), forward)
    }
}

/// What executes the graphs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Backend {
    /// Native code from Cranelift (the default).
    #[default]
    Jit,
    /// The reference interpreter: slow, the definition of correct.
    Interp,
}

impl Backend {
    /// The name on the command line and in reports.
    pub fn name(self) -> &'static str {
        match self {
            Backend::Jit => "jit",
            Backend::Interp => "interp",
        }
    }

    /// An executor of `programs` with params initialized from `seed`.
    pub fn executor(
        self,
        programs: Programs,
        seed: u64,
    ) -> Result<Box<dyn Executor>, RuntimeError> {
        Ok(match self {
            Backend::Jit => Box::new(crate::jit::Jit::new(programs, seed)?),
            Backend::Interp => Box::new(Interpreter::new(programs, seed)?),
        })
    }
}

/// One input's samples for a batch, in the dtype the graph reads.
#[derive(Debug, Clone, PartialEq)]
pub enum BatchData {
    F32(Vec<f32>),
    I32(Vec<i32>),
    /// A field declared `f64`, kept in double precision (the interpreter's).
    F64(Vec<f64>),
}

/// One field of a batch: its name (the graph input it feeds), its shape
/// `[size, ...sample]`, and the values in row-major order.
#[derive(Debug, Clone, PartialEq)]
pub struct BatchField {
    pub name: String,
    pub shape: Vec<usize>,
    pub data: BatchData,
}

/// A batch: `size` samples of every field a graph reads. Buffers are reused
/// from batch to batch.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Batch {
    pub size: usize,
    pub fields: Vec<BatchField>,
}

impl Batch {
    pub fn get(&self, name: &str) -> Option<&BatchField> {
        self.fields.iter().find(|f| f.name == name)
    }

    /// A batch of `size` pseudo-random samples for every input of `graph`
    /// (floats in [0, 1), integers 0 or 1), for benchmarks and differential
    /// tests. Symbolic dims are `size`.
    pub fn synthetic(graph: &Graph, size: usize, seed: u64) -> Batch {
        let mut rng = crate::data::SplitMix64::new(seed);
        let mut batch = Batch {
            size,
            fields: Vec::new(),
        };
        for (node, name) in graph.inputs() {
            let ty = graph.ty(node);
            let shape: Vec<usize> = ty
                .shape
                .iter()
                .map(|d| d.as_const().unwrap_or(size))
                .collect();
            let n: usize = shape.iter().product();
            let data = match ty.dtype {
                nnc_ir::DType::I32
                | nnc_ir::DType::I8
                | nnc_ir::DType::U8
                | nnc_ir::DType::Bool => {
                    BatchData::I32((0..n).map(|_| (rng.next_u64() % 2) as i32).collect())
                }
                _ => BatchData::F32((0..n).map(|_| rng.next_f64() as f32).collect()),
            };
            batch.fields.push(BatchField {
                name: name.to_string(),
                shape,
                data,
            });
        }
        batch
    }
}

/// The scalars a step or an evaluation reports, averaged over the batch.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct StepMetrics {
    pub loss: f64,
    pub accuracy: Option<f64>,
}

pub trait Executor {
    /// Forward, backward and update on one batch.
    fn train_step(&mut self, batch: &Batch) -> Result<StepMetrics, RuntimeError>;
    /// Loss and metrics on one batch, changing nothing.
    fn evaluate(&mut self, batch: &Batch) -> Result<StepMetrics, RuntimeError>;
    /// Every output of the evaluation graph on one batch (the model's
    /// outputs, the loss, the metrics), changing nothing: what the metrics
    /// of a whole set are computed from.
    fn evaluate_outputs(&mut self, batch: &Batch) -> Result<Vec<(String, Tensor)>, RuntimeError>;
    /// The forward graph's outputs on one batch.
    fn predict(&mut self, batch: &Batch) -> Result<Vec<(String, Tensor)>, RuntimeError>;
    /// The gradient of the loss with respect to every param on one batch,
    /// by param name, at the params as they are (before the step on the
    /// same batch), changing nothing; an error when the programs have no
    /// gradient graph.
    fn gradients(&mut self, batch: &Batch) -> Result<Vec<(String, Tensor)>, RuntimeError>;
    /// Every param and state tensor, by name (for checkpoints).
    fn state(&self) -> Vec<(String, Tensor)>;
    /// Replaces one param or state tensor (from a checkpoint).
    fn set_state(&mut self, name: &str, value: Tensor) -> Result<(), RuntimeError>;
    /// Time spent compiling programs so far (none for an interpreter).
    fn compile_time(&self) -> std::time::Duration {
        std::time::Duration::ZERO
    }
}

/// The reference interpreter as an executor: slow, simple, the definition
/// of correct.
pub struct Interpreter {
    programs: Programs,
    env: Env,
    /// Inputs some program declares `f64` (found once, not per step).
    f64_inputs: Vec<String>,
}

impl Interpreter {
    /// Initializes every param and state tensor from `seed`.
    pub fn new(programs: Programs, seed: u64) -> Result<Interpreter, RuntimeError> {
        let mut env = Env::new();
        nnc_ir::init::init_leaves(&programs.step, seed, &mut env)?;
        let mut f64_inputs: Vec<String> = [&programs.step, &programs.evaluation, &programs.forward]
            .iter()
            .flat_map(|g| {
                g.inputs()
                    .into_iter()
                    .filter(|&(node, _)| g.ty(node).dtype == nnc_ir::DType::F64)
                    .map(|(_, name)| name.to_string())
            })
            .collect();
        f64_inputs.sort();
        f64_inputs.dedup();
        Ok(Interpreter {
            programs,
            env,
            f64_inputs,
        })
    }

    fn feed(&mut self, batch: &Batch) -> Result<(), RuntimeError> {
        for field in &batch.fields {
            let mut tensor = batch_tensor(field)?;
            // The loop feeds `hyper.*` in f32; a model in f64 declares
            // them f64 (its optimizer computes in the params' dtype).
            // Widening is exact, so the value is the loop's.
            if tensor.dtype == nnc_ir::DType::F32 && self.f64_inputs.contains(&field.name) {
                tensor.dtype = nnc_ir::DType::F64;
            }
            self.env.insert(field.name.clone(), tensor);
        }
        Ok(())
    }
}

fn batch_tensor(field: &BatchField) -> Result<Tensor, RuntimeError> {
    let (dtype, values): (nnc_ir::DType, Vec<f64>) = match &field.data {
        BatchData::F32(v) => (
            nnc_ir::DType::F32,
            v.iter().map(|&x| f64::from(x)).collect(),
        ),
        BatchData::I32(v) => (
            nnc_ir::DType::I32,
            v.iter().map(|&x| f64::from(x)).collect(),
        ),
        BatchData::F64(v) => (nnc_ir::DType::F64, v.clone()),
    };
    Tensor::from_vec(dtype, &field.shape, values)
        .map_err(|e| RuntimeError::Setup(format!("field `{}`: {e}", field.name)))
}

pub(crate) fn no_gradient_graph() -> RuntimeError {
    RuntimeError::Setup(
        "internal error: gradients were asked for, but no gradient graph was compiled".into(),
    )
}

/// The `grad.<param>` outputs of a gradient graph, renamed to their params.
pub(crate) fn gradient_outputs(
    outputs: impl Iterator<Item = (String, Tensor)>,
) -> Vec<(String, Tensor)> {
    outputs
        .filter_map(|(name, t)| {
            name.strip_prefix(GRADIENT_PREFIX)
                .map(|param| (param.to_string(), t))
        })
        .collect()
}

fn metrics(graph: &Graph, values: &interp::Values) -> StepMetrics {
    let scalar = |name: &str| {
        graph
            .output(name)
            .and_then(|n| values.get(n))
            .map(|t| t.data[0])
    };
    StepMetrics {
        loss: scalar(LOSS).unwrap_or(f64::NAN),
        accuracy: scalar("accuracy"),
    }
}

impl Executor for Interpreter {
    fn train_step(&mut self, batch: &Batch) -> Result<StepMetrics, RuntimeError> {
        self.feed(batch)?;
        let values = interp::step(&self.programs.step, &mut self.env, EvalOptions::F32)?;
        Ok(metrics(&self.programs.step, &values))
    }

    fn evaluate(&mut self, batch: &Batch) -> Result<StepMetrics, RuntimeError> {
        self.feed(batch)?;
        let values = interp::eval(&self.programs.evaluation, &self.env, EvalOptions::F32)?;
        Ok(metrics(&self.programs.evaluation, &values))
    }

    fn evaluate_outputs(&mut self, batch: &Batch) -> Result<Vec<(String, Tensor)>, RuntimeError> {
        self.feed(batch)?;
        let values = interp::eval(&self.programs.evaluation, &self.env, EvalOptions::F32)?;
        Ok(values
            .outputs()
            .map(|(n, t)| (n.to_string(), t.clone()))
            .collect())
    }

    fn predict(&mut self, batch: &Batch) -> Result<Vec<(String, Tensor)>, RuntimeError> {
        self.feed(batch)?;
        let values = interp::eval(&self.programs.forward, &self.env, EvalOptions::F32)?;
        Ok(values
            .outputs()
            .map(|(n, t)| (n.to_string(), t.clone()))
            .collect())
    }

    fn gradients(&mut self, batch: &Batch) -> Result<Vec<(String, Tensor)>, RuntimeError> {
        self.feed(batch)?;
        let graph = self
            .programs
            .gradients
            .as_ref()
            .ok_or_else(no_gradient_graph)?;
        let values = interp::eval(graph, &self.env, EvalOptions::F32)?;
        Ok(gradient_outputs(
            values.outputs().map(|(n, t)| (n.to_string(), t.clone())),
        ))
    }

    fn state(&self) -> Vec<(String, Tensor)> {
        let mut names: Vec<String> = self
            .programs
            .step
            .topo_order()
            .into_iter()
            .filter_map(|n| match &self.programs.step.node(n).op {
                nnc_ir::Op::Param { name, .. } | nnc_ir::Op::State { name, .. } => {
                    Some(name.clone())
                }
                _ => None,
            })
            .collect();
        names.sort();
        names
            .into_iter()
            .filter_map(|n| self.env.get(&n).cloned().map(|t| (n, t)))
            .collect()
    }

    fn set_state(&mut self, name: &str, value: Tensor) -> Result<(), RuntimeError> {
        match self.env.get(name) {
            Some(old) if old.shape == value.shape => {
                self.env.insert(name, value);
                Ok(())
            }
            Some(old) => Err(RuntimeError::Setup(format!(
                "`{name}` has shape {:?} in the model but {:?} was given",
                old.shape, value.shape
            ))),
            None => Err(RuntimeError::Setup(format!(
                "the model has no param or state `{name}`"
            ))),
        }
    }
}
