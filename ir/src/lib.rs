//! The graph IR of nnc: tensor types with symbolic dims, a small primitive
//! op set, a petgraph dataflow graph with shape inference, a verifier, a
//! textual form that round-trips, and the reference interpreter that defines
//! what every op means.
//!
//! This crate depends on nothing else of ours; every later stage speaks it.

pub mod fusion;
pub mod graph;
pub mod infer;
pub mod init;
pub mod interp;
pub mod layout;
pub mod module;
pub mod op;
mod print;
pub mod scan;
pub mod staging;
pub mod summary;
pub mod symbols;
pub mod tensor;
pub mod text;
pub mod types;
pub mod verify;

pub use graph::{shape_of, Graph, Node, NodeId, Output, Span, Update};
pub use infer::ShapeError;
pub use init::{initialize, CounterRng};
pub use interp::{eval, run_updates, Env, EvalError, EvalOptions, Values};
pub use module::{
    is_loop_input, Average, DataField, DataSpec, HyperInputs, KFold, Metric, MetricTarget, Module,
    Optimizer, Schedule, SetMetric, Source, TargetKind, TestSet, TextColumn, TextFormat, TrainSpec,
    Transform, ADAM_BIAS_CORRECTION2_SQRT, ADAM_STEP, ADAM_STEP_SIZE, GRADIENT_PREFIX, HYPER,
    LEARNING_RATE, LOSS, RNG_KEY,
};
pub use module::{mask_name, Prune, PruneScope, PruneSteps};
pub use module::{Anneal, Decay, EarlyStop, LrAt, Monitor, OneCycle, Plateau, Warmup};
pub use module::{Augment, FitAxis, StructuralChange};
pub use module::{GradClip, ADAGRAD_LR, ADAGRAD_STEP, ADAMW_DECAY};
pub use op::{
    random_uniform, Arity, BinaryOp, Init, Literal, Op, OpClass, OpInfo, OpKind, ReduceOp, Ties,
    UnaryOp, Window,
};
pub use scan::{ScanBody, ScanResult};
pub use summary::{LayerCall, Summary, SummaryRow};
pub use tensor::{Tensor, TensorError};
pub use text::{parse_graph, TextError};
pub use types::{DType, Dim, Shape, ShapeDisplay, TensorType};
pub use verify::{verify, VerifyError};
