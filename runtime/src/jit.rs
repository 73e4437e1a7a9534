//! The JIT executor: each graph is compiled to native code the first time a
//! batch of a new shape arrives (the smaller last batch of an epoch gets its
//! own program), and cached; params and optimizer state live in one state
//! buffer that every program reads and updates in place.

use crate::executor::{Batch, BatchData, Executor, Programs, StepMetrics};
use crate::RuntimeError;
use nnc_codegen::{Program, StateBuffer, StateLayout};
use nnc_ir::symbols::{self, Bindings};
use nnc_ir::{Dim, Graph, Op, Tensor, LOSS};
use std::time::Duration;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Which {
    Step,
    Evaluation,
    Forward,
    Gradients,
}

struct Compiled {
    which: Which,
    /// The batch field shapes this program was specialized to.
    shapes: Vec<Vec<usize>>,
    program: Program,
}

pub struct Jit {
    programs: Programs,
    // Declared before `state`: compiled code points into the state buffer,
    // so programs are dropped first.
    compiled: Vec<Compiled>,
    state: StateBuffer,
    /// Total time spent compiling (planning + code generation).
    pub compile_time: Duration,
}

fn codegen(e: nnc_codegen::CodegenError) -> RuntimeError {
    RuntimeError::Setup(format!("the JIT cannot compile this model: {}", e.message))
}

impl Jit {
    /// Lays out the model state and initializes every param and state
    /// tensor from `seed` (the same values the interpreter starts from).
    pub fn new(programs: Programs, seed: u64) -> Result<Jit, RuntimeError> {
        let layout = StateLayout::of(&[&programs.step, &programs.evaluation, &programs.forward])
            .map_err(codegen)?;
        let mut state = StateBuffer::new(layout);
        for g in [&programs.step, &programs.evaluation, &programs.forward] {
            for id in g.topo_order() {
                let node = g.node(id);
                let (name, init) = match &node.op {
                    Op::Param { name, init } | Op::State { name, init } => (name, init),
                    _ => continue,
                };
                let shape: Vec<usize> = node.ty.shape.iter().filter_map(Dim::as_const).collect();
                let t = nnc_ir::init::initialize(init, &shape, node.ty.dtype, seed, name);
                state.set(name, &t).map_err(codegen)?;
            }
        }
        Ok(Jit {
            programs,
            compiled: Vec::new(),
            state,
            compile_time: Duration::ZERO,
        })
    }

    fn graph(&self, which: Which) -> Result<&Graph, RuntimeError> {
        Ok(match which {
            Which::Step => &self.programs.step,
            Which::Evaluation => &self.programs.evaluation,
            Which::Forward => &self.programs.forward,
            Which::Gradients => self
                .programs
                .gradients
                .as_ref()
                .ok_or_else(crate::executor::no_gradient_graph)?,
        })
    }

    /// The index of the program for `which` at this batch's shapes,
    /// compiling it on first use.
    fn program(&mut self, which: Which, batch: &Batch) -> Result<usize, RuntimeError> {
        let found = self.compiled.iter().position(|c| {
            c.which == which
                && c.shapes.len() == batch.fields.len()
                && c.shapes
                    .iter()
                    .zip(&batch.fields)
                    .all(|(s, f)| *s == f.shape)
        });
        if let Some(i) = found {
            return Ok(i);
        }
        let graph = self.graph(which)?;
        let bindings = bind_symbols(graph, batch)?;
        let program = Program::compile_with(graph, &bindings, &self.state, &self.programs.grouping)
            .map_err(codegen)?;
        self.compile_time += program.stats.plan_time + program.stats.codegen_time;
        self.compiled.push(Compiled {
            which,
            shapes: batch.fields.iter().map(|f| f.shape.clone()).collect(),
            program,
        });
        Ok(self.compiled.len() - 1)
    }

    /// Feeds `batch` to the program for `which`, compiling it on first
    /// use; returns the program's index.
    fn feed(&mut self, which: Which, batch: &Batch) -> Result<usize, RuntimeError> {
        let index = self.program(which, batch)?;
        let program = &mut self.compiled[index].program;
        for field in &batch.fields {
            // A field the graph does not read (a label during prediction) is skipped.
            if !program.has_input(&field.name) {
                continue;
            }
            match &field.data {
                BatchData::F32(v) => program.set_input_f32(&field.name, v),
                BatchData::I32(v) => program.set_input_i32(&field.name, v),
                // Unreachable in practice: a graph reading an f64 input
                // does not compile for the JIT in the first place.
                BatchData::F64(_) => {
                    return Err(RuntimeError::Setup(format!(
                        "field `{}` is f64; the JIT computes in f32 (use --backend interp for f64)",
                        field.name
                    )))
                }
            }
            .map_err(codegen)?;
        }
        Ok(index)
    }

    /// Feeds `batch` to the program for `which` and runs it; returns the
    /// program's index.
    fn run(&mut self, which: Which, batch: &Batch) -> Result<usize, RuntimeError> {
        let index = self.feed(which, batch)?;
        self.compiled[index]
            .program
            .run()
            .map_err(|f| RuntimeError::Setup(format!("a kernel stopped: {f}")))?;
        Ok(index)
    }

    /// Runs one training step on `batch` kernel by kernel (the state is
    /// updated as by a step) and returns what each kernel computes with its
    /// wall time, in schedule order: where a step's time goes.
    pub fn profile_step(
        &mut self,
        batch: &Batch,
    ) -> Result<Vec<(nnc_codegen::KernelInfo, Duration)>, RuntimeError> {
        self.profile(Which::Step, batch)
    }

    /// As [`Jit::profile_step`], for the inference program (what
    /// [`Jit::predict`] runs).
    pub fn profile_predict(
        &mut self,
        batch: &Batch,
    ) -> Result<Vec<(nnc_codegen::KernelInfo, Duration)>, RuntimeError> {
        self.profile(Which::Forward, batch)
    }

    fn profile(
        &mut self,
        which: Which,
        batch: &Batch,
    ) -> Result<Vec<(nnc_codegen::KernelInfo, Duration)>, RuntimeError> {
        let index = self.feed(which, batch)?;
        let program = &mut self.compiled[index].program;
        let times = program
            .profile()
            .map_err(|f| RuntimeError::Setup(format!("a kernel stopped: {f}")))?;
        Ok(program
            .kernels()
            .iter()
            .cloned()
            .zip(times.into_iter().map(|(_, t)| t))
            .collect())
    }

    /// Times each loop body kernel of the training step's program (`runs`
    /// calls each, median) on the values its last run left: where a
    /// loop's trips go. See [`nnc_codegen::Program::profile_loop_bodies`].
    pub fn profile_loop_bodies(
        &mut self,
        batch: &Batch,
        runs: usize,
    ) -> Result<Vec<(nnc_codegen::KernelInfo, String, Duration)>, RuntimeError> {
        let index = self.run(Which::Step, batch)?;
        Ok(self.compiled[index].program.profile_loop_bodies(runs))
    }

    fn metrics(&mut self, which: Which, batch: &Batch) -> Result<StepMetrics, RuntimeError> {
        let index = self.run(which, batch)?;
        let p = &self.compiled[index].program;
        Ok(StepMetrics {
            loss: p.scalar(LOSS, &self.state).unwrap_or(f64::NAN),
            accuracy: p.scalar("accuracy", &self.state),
        })
    }

    /// Runs the program for `which` on `batch` and reads all its outputs.
    fn outputs(
        &mut self,
        which: Which,
        batch: &Batch,
    ) -> Result<Vec<(String, Tensor)>, RuntimeError> {
        let index = self.run(which, batch)?;
        let p = &self.compiled[index].program;
        let names: Vec<String> = p.output_names().map(str::to_string).collect();
        Ok(names
            .into_iter()
            .filter_map(|n| p.output(&n, &self.state).map(|t| (n, t)))
            .collect())
    }

    /// Compile statistics of every program compiled so far.
    pub fn stats(&self) -> Vec<nnc_codegen::CompileStats> {
        self.compiled
            .iter()
            .map(|c| c.program.stats.clone())
            .collect()
    }
}

/// Binds the graph's symbolic dims from the batch's field shapes.
pub fn bind_symbols(graph: &Graph, batch: &Batch) -> Result<Bindings, RuntimeError> {
    let mut bindings = Bindings::new();
    for (id, name) in graph.inputs() {
        let ty = graph.ty(id);
        let field = batch.get(name).ok_or_else(|| {
            RuntimeError::Setup(format!(
                "the batch has no field `{name}` for the graph input `{name}`"
            ))
        })?;
        symbols::bind(ty, &field.shape, &mut bindings).map_err(|_| {
            RuntimeError::Setup(format!(
                "field `{name}` has shape {:?} but the graph input is {ty}",
                field.shape
            ))
        })?;
    }
    Ok(bindings)
}

impl Executor for Jit {
    fn train_step(&mut self, batch: &Batch) -> Result<StepMetrics, RuntimeError> {
        self.metrics(Which::Step, batch)
    }

    fn evaluate(&mut self, batch: &Batch) -> Result<StepMetrics, RuntimeError> {
        self.metrics(Which::Evaluation, batch)
    }

    fn evaluate_outputs(&mut self, batch: &Batch) -> Result<Vec<(String, Tensor)>, RuntimeError> {
        self.outputs(Which::Evaluation, batch)
    }

    fn predict(&mut self, batch: &Batch) -> Result<Vec<(String, Tensor)>, RuntimeError> {
        self.outputs(Which::Forward, batch)
    }

    fn gradients(&mut self, batch: &Batch) -> Result<Vec<(String, Tensor)>, RuntimeError> {
        let outputs = self.outputs(Which::Gradients, batch)?;
        Ok(crate::executor::gradient_outputs(outputs.into_iter()))
    }

    fn state(&self) -> Vec<(String, Tensor)> {
        let mut names: Vec<&str> = self
            .state
            .layout
            .slots
            .iter()
            .map(|s| s.name.as_str())
            .collect();
        names.sort();
        names
            .into_iter()
            .filter_map(|n| self.state.get(n).map(|t| (n.to_string(), t)))
            .collect()
    }

    fn compile_time(&self) -> Duration {
        self.compile_time
    }

    fn set_state(&mut self, name: &str, value: Tensor) -> Result<(), RuntimeError> {
        self.state
            .set(name, &value)
            .map_err(|e| RuntimeError::Setup(e.message))
    }
}
