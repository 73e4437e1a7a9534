//! Ahead-of-time compilation of a trained model's inference: its forward
//! graph with a checkpoint's tensors compiled into an object file and a C
//! header (`nnc compile FILE --weights W -o model.o`); see
//! `nnc_codegen::object`.
//!
//! The checkpoint is checked exactly as `nnc run --weights` checks it
//! (loaded into a JIT executor of the whole model, which refuses another
//! model's naming the first tensor that differs); the object then embeds
//! only the state the forward graph reads.

use crate::checkpoint::{self, Scope};
use crate::executor::{Batch, Executor, Programs};
use crate::jit::{bind_symbols, Jit};
use crate::RuntimeError;
use nnc_codegen::object::{compile_object, ObjectArtifact};
use nnc_codegen::{StateBuffer, StateLayout};
use nnc_ir::{Module, Transform};
use std::path::Path;

/// Compiles `programs.forward` for batches of `batch` samples with the
/// tensors of the checkpoint at `weights` (of `module`), its C symbols
/// starting with `prefix`; with `external`, the object reads its weights
/// from a checkpoint at start instead of embedding them. The header also gets `<prefix>_prepare`, the
/// input field's data transforms in C, when they can be written so.
pub fn compile(
    programs: Programs,
    module: &Module,
    seed: u64,
    weights: &Path,
    batch: usize,
    prefix: &str,
    external: bool,
) -> Result<ObjectArtifact, RuntimeError> {
    if batch == 0 {
        return Err(RuntimeError::Setup(
            "the batch size must be at least 1".into(),
        ));
    }
    let codegen = |e: nnc_codegen::CodegenError| {
        RuntimeError::Setup(format!("cannot compile an object: {}", e.message))
    };
    let params = checkpoint::param_names(&programs);
    let forward = programs.forward.clone();
    let grouping = programs.grouping.clone();
    let mut jit = Jit::new(programs, seed)?;
    checkpoint::load(weights)?.apply(&mut jit, &module.name, &params, Scope::Params)?;
    let tensors = jit.state();
    let layout = StateLayout::of(&[&forward]).map_err(codegen)?;
    let mut state = StateBuffer::new(layout);
    for slot in state.layout.slots.clone() {
        let tensor = tensors
            .iter()
            .find(|(name, _)| *name == slot.name)
            .map(|(_, t)| t)
            .ok_or_else(|| {
                RuntimeError::Setup(format!(
                    "internal error: the model has no tensor `{}`",
                    slot.name
                ))
            })?;
        state.set(&slot.name, tensor).map_err(codegen)?;
    }
    let bindings = bind_symbols(&forward, &Batch::synthetic(&forward, batch, 0))?;
    let prelude = forward
        .inputs()
        .first()
        .map(|(id, name)| {
            let sample: Vec<usize> = forward.ty(*id).shape[1..]
                .iter()
                .filter_map(|d| d.as_const())
                .collect();
            prepare_c(module, name, &sample, prefix)
        })
        .unwrap_or_default();
    compile_object(
        &forward, &bindings, &state, &grouping, prefix, &prelude, external,
    )
    .map_err(codegen)
}

/// One transform step in C on `v` (a float), element `j` of a sample.
enum Step {
    Scale(f32),
    Normalize(f32, f32),
    /// Per channel: mean and std of each, channels `plane` elements long.
    Channels(Vec<f32>, Vec<f32>, usize),
}

/// `<prefix>_prepare(raw, in, samples)`: the data block's transforms of
/// the model input `input` applied to raw samples in C, operation for
/// operation as the runtime applies them (f32 arithmetic, in order), so a
/// C program feeding the object gets `nnc run --predict`'s inputs bit for
/// bit. Empty, with a comment saying why, when the field's transforms
/// have no such form (fitted statistics, one-hot) or the field is not
/// read from a file.
fn prepare_c(module: &Module, input: &str, sample: &[usize], prefix: &str) -> String {
    let field = module
        .data
        .as_ref()
        .and_then(|d| d.fields.iter().find(|f| f.name == input));
    let Some(field) = field else {
        return format!(
            "\n/* No {prefix}_prepare: input `{input}` is not a field of the data block. */\n"
        );
    };
    let len: usize = sample.iter().product();
    let mut shape: Vec<usize> = Vec::new();
    let mut steps = Vec::new();
    for t in &field.transforms {
        let step = match t {
            Transform::Reshape(dims) => {
                shape = dims.clone();
                continue;
            }
            Transform::Scale(k) => Step::Scale(*k as f32),
            Transform::Normalize { mean, std } if mean.len() == 1 && std.len() == 1 => {
                Step::Normalize(mean[0] as f32, std[0] as f32)
            }
            Transform::Normalize { mean, std }
                if shape.len() >= 2 && mean.len() == shape[0] && std.len() == shape[0] =>
            {
                let plane = shape[1..].iter().product();
                let f = |v: &[f64]| v.iter().map(|&x| x as f32).collect();
                Step::Channels(f(mean), f(std), plane)
            }
            other => {
                return format!(
                    "\n/* No {prefix}_prepare: input `{input}`'s transform {other:?} has no C form here; \
                     feed {prefix}_predict transformed samples. */\n"
                )
            }
        };
        steps.push(step);
    }
    let lit = |x: f32| format!("{x:?}f");
    let mut body = String::new();
    for step in &steps {
        body += &match step {
            Step::Scale(k) => format!("        v = v * {};\n", lit(*k)),
            Step::Normalize(m, s) => format!("        v = (v - {}) / {};\n", lit(*m), lit(*s)),
            Step::Channels(m, s, plane) => {
                let list = |v: &[f32]| v.iter().map(|&x| lit(x)).collect::<Vec<_>>().join(", ");
                format!(
                    "        {{\n            static const float mean[] = {{{}}}, std[] = {{{}}};\n            \
                     size_t c = (i % {len}) / {plane};\n            v = (v - mean[c]) / std[c];\n        }}\n",
                    list(m),
                    list(s)
                )
            }
        };
    }
    let what: Vec<String> = field.transforms.iter().map(|t| format!("{t:?}")).collect();
    format!(
        "\n/* The data block's transforms of input `{input}` ({}), as `nnc run --predict`\n   \
         applies them to raw samples: f32 arithmetic in this order (compile without\n   \
         -ffast-math). `raw` and `in` hold `samples` samples of {len} values. */\n\
         static inline void {prefix}_prepare(const float *raw, float *in, size_t samples) {{\n    \
         size_t i;\n    for (i = 0; i < samples * {len}; i++) {{\n        float v = raw[i];\n{body}        \
         in[i] = v;\n    }}\n}}\n",
        if what.is_empty() {
            "none".to_string()
        } else {
            what.join(", ")
        }
    )
}
