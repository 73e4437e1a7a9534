//! Ahead-of-time objects: a program's kernels and schedule compiled into a
//! relocatable object file (`cranelift-object`) with the model's state and
//! the arena's constants as data, and a C header declaring the API a
//! program links against (`nnc compile FILE --weights W -o model.o`).
//!
//! The code is the JIT's, function for function: kernels take the base
//! addresses as arguments (see [`super::base`]), so nothing in the object
//! needs patching beyond the linker's relocations of calls (the host
//! kernels, linked by name from `libnnc_kernels.a`) and of the two data
//! symbols. The weights are the object's data, or (`--weights-external`)
//! a safetensors file `<name>_weights_load(path)` reads at start. The C
//! side owns the arena (`<name>_ARENA_BYTES`, 64-byte aligned):
//! `<name>_init(arena, weights)` zeroes it, writes the constants and
//! allocates the GEMM packing space (its pointer and the weights' are kept
//! in the arena's control block, beside the status word);
//! `<name>_predict` copies the input in, runs the schedule on it and
//! copies the outputs out, allocating nothing; `<name>_free` releases the
//! packing space. Distinct arenas may run on distinct threads at once
//! (the weights are only read).

use super::program::{compile_functions, each_constant, relocatable, StateBuffer, CONTROL};
use crate::plan::{self, Base, Kind, View};
use crate::{CodegenError, GroupConfig};
use cranelift_codegen::settings::{self, Configurable};
use cranelift_module::{default_libcall_names, DataDescription, Linkage, Module};
use cranelift_object::{ObjectBuilder, ObjectModule};
use nnc_ir::{DType, Graph};
use std::collections::HashMap;
use std::fmt::Write as _;

/// Where `<name>_init` keeps the packing space's pointer: the control
/// block's second word pair (the status word is at 0).
const SCRATCH_SLOT: usize = 8;
/// Where `<name>_init` keeps the weights' address.
const WEIGHTS_SLOT: usize = 16;

/// A compiled object and the C header that describes it.
#[derive(Debug, Clone)]
pub struct ObjectArtifact {
    /// The relocatable object file (ELF on Linux).
    pub object: Vec<u8>,
    /// The C header: shapes, sizes and the `init`/`predict`/`free` API.
    pub header: String,
    /// Bytes of the arena a caller provides per concurrent `predict`.
    pub arena_bytes: usize,
    /// Bytes of embedded state (the weights).
    pub state_bytes: usize,
}

/// One input or output as the header describes it: its name, shape and
/// byte offset in the arena.
struct Port {
    name: String,
    shape: Vec<usize>,
    offset: usize,
}

/// Compiles `graph` specialized to `bindings` (every symbolic dim bound)
/// with the tensors of `state`, its kernels grouped by `config`, into an object whose C symbols start with
/// `prefix` (a C identifier). Inputs and outputs must be f32 and
/// contiguous (every forward graph's are). `prelude` is C code the header
/// carries before its API (the input's data transforms, from the runtime).
/// With `external`, the state is not embedded: the header's
/// `<prefix>_weights_load(path)` reads it from a safetensors file at start
/// (`nnc_kernels::weights`), by the table of `state`'s slots.
pub fn compile_object(
    graph: &Graph,
    bindings: &HashMap<String, usize>,
    state: &StateBuffer,
    config: &GroupConfig,
    prefix: &str,
    prelude: &str,
    external: bool,
) -> Result<ObjectArtifact, CodegenError> {
    if prefix.is_empty()
        || prefix.starts_with(|c: char| c.is_ascii_digit())
        || !prefix
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_')
    {
        return Err(CodegenError::new(format!(
            "`{prefix}` is not a C identifier (letters, digits and `_`, not starting with a digit)"
        )));
    }
    let plan = plan::plan_with(graph, bindings, &state.layout, config)?;
    let at = relocatable(&plan, &state.layout);
    let mut module = new_object_module(prefix)?;
    let run = format!("{prefix}_run");
    compile_functions(&mut module, graph, &at, (&run, Linkage::Export))?;

    let arena_bytes = CONTROL + plan.arena_bytes;
    let port = |name: &str, view: &View, dtype: DType, what: &str| -> Result<Port, CodegenError> {
        if dtype != DType::F32 {
            return Err(CodegenError::new(format!(
                "{what} `{name}` is {dtype}: ahead-of-time objects take and give f32 only"
            )));
        }
        let Base::Work(b) = view.base else {
            return Err(CodegenError::new(format!(
                "{what} `{name}` lives in the model state, not the arena"
            )));
        };
        let contiguous = View::contiguous(view.base, view.shape.clone()).strides == view.strides;
        if !contiguous {
            return Err(CodegenError::new(format!(
                "{what} `{name}` is not stored contiguously"
            )));
        }
        Ok(Port {
            name: name.to_string(),
            shape: view.shape.clone(),
            offset: CONTROL + plan.buffers[b].offset + view.offset * 4,
        })
    };
    let inputs = plan
        .inputs
        .iter()
        .map(|(name, id)| port(name, &plan.views[id], graph.ty(*id).dtype, "input"))
        .collect::<Result<Vec<_>, _>>()?;
    let outputs = plan
        .outputs
        .iter()
        .map(|(name, id)| port(name, &plan.views[id], graph.ty(*id).dtype, "output"))
        .collect::<Result<Vec<_>, _>>()?;
    let [input] = &inputs[..] else {
        return Err(CodegenError::new(format!(
            "an ahead-of-time object takes one input; the model has {}",
            inputs.len()
        )));
    };

    // The constants: one blob, and where each piece goes in the arena.
    let mut blob: Vec<u8> = Vec::new();
    let mut segments: Vec<(usize, usize, usize)> = Vec::new();
    each_constant(graph, &at, &mut |offset, words| {
        segments.push((offset, blob.len(), words.len() * 4));
        blob.extend(words.iter().flat_map(|w| w.to_le_bytes()));
    });
    if !external {
        define_data(
            &mut module,
            &format!("{prefix}_state"),
            state.bytes().to_vec(),
        )?;
    }
    define_data(&mut module, &format!("{prefix}_constants"), blob)?;
    let object = module
        .finish()
        .emit()
        .map_err(|e| CodegenError::new(format!("writing the object file: {e}")))?;
    let weights = if external {
        Weights::External(state)
    } else {
        Weights::Embedded
    };
    let header = header(
        prefix,
        arena_bytes,
        input,
        &outputs,
        &segments,
        prelude,
        &weights,
    );
    Ok(ObjectArtifact {
        object,
        header,
        arena_bytes,
        state_bytes: if external { 0 } else { state.bytes().len() },
    })
}

/// Where an object's weights come from.
enum Weights<'a> {
    /// The object's `<prefix>_state` symbol.
    Embedded,
    /// A safetensors file read at start into this state's layout.
    External(&'a StateBuffer),
}

/// An object module for this CPU (the kernels use its features, as the
/// JIT's do), position-independent so it links into PIE executables.
fn new_object_module(name: &str) -> Result<ObjectModule, CodegenError> {
    let err = |e: String| CodegenError::new(format!("cranelift: {e}"));
    let mut flags = settings::builder();
    for (key, v) in [("opt_level", "speed"), ("is_pic", "true")] {
        flags.set(key, v).map_err(|e| err(e.to_string()))?;
    }
    let isa = cranelift_native::builder()
        .map_err(|e| CodegenError::new(format!("this CPU is not supported by Cranelift: {e}")))?
        .finish(settings::Flags::new(flags))
        .map_err(|e| err(e.to_string()))?;
    let builder =
        ObjectBuilder::new(isa, name, default_libcall_names()).map_err(|e| err(e.to_string()))?;
    Ok(ObjectModule::new(builder))
}

/// Defines an exported, read-only, 64-byte aligned data symbol.
fn define_data(module: &mut ObjectModule, name: &str, bytes: Vec<u8>) -> Result<(), CodegenError> {
    let err = |e: cranelift_module::ModuleError| CodegenError::new(format!("cranelift: {e}"));
    let id = module
        .declare_data(name, Linkage::Export, false, false)
        .map_err(err)?;
    let mut data = DataDescription::new();
    // An empty symbol still needs a byte to have an address.
    data.define(if bytes.is_empty() {
        vec![0].into()
    } else {
        bytes.into()
    });
    data.set_align(64);
    module.define_data(id, &data).map_err(err)
}

/// The C header of an object: sizes, shapes, the constants' segments, and
/// `static inline` `init`/`predict`/`free` over the object's symbols.
fn header(
    prefix: &str,
    arena_bytes: usize,
    input: &Port,
    outputs: &[Port],
    segments: &[(usize, usize, usize)],
    prelude: &str,
    weights: &Weights,
) -> String {
    let upper = prefix.to_ascii_uppercase();
    let numel = |p: &Port| p.shape.iter().product::<usize>();
    let out_total: usize = outputs.iter().map(numel).sum();
    let mut h = String::new();
    let w = &mut h;
    let _ = writeln!(
        w,
        "/* {prefix}.h: the C API of an nnc ahead-of-time object ({prefix}.o), generated by\n   \
         `nnc compile --weights ... -o {prefix}.o`. Link with the object, libnnc_kernels.a,\n   \
         -lpthread -ldl -lm. The object runs on CPUs with the features of the machine that\n   \
         compiled it. */"
    );
    let _ = writeln!(w, "#ifndef NNC_{upper}_H\n#define NNC_{upper}_H\n");
    let _ = writeln!(
        w,
        "#include <stddef.h>\n#include <stdint.h>\n#include <string.h>\n"
    );
    let _ = writeln!(w, "#ifdef __cplusplus\nextern \"C\" {{\n#endif\n");
    let dims = |s: &[usize]| {
        s.iter()
            .map(|d| d.to_string())
            .collect::<Vec<_>>()
            .join(", ")
    };
    let _ = writeln!(
        w,
        "/* Input `{}`: f32 [{}] (batch first), row-major. */",
        input.name,
        dims(&input.shape)
    );
    let _ = writeln!(
        w,
        "#define {upper}_BATCH {}",
        input.shape.first().copied().unwrap_or(1)
    );
    let _ = writeln!(w, "#define {upper}_INPUT_RANK {}", input.shape.len());
    let _ = writeln!(
        w,
        "static const int64_t {prefix}_input_shape[] = {{{}}};",
        dims(&input.shape)
    );
    let _ = writeln!(w, "#define {upper}_INPUT_SIZE {}", numel(input));
    let _ = writeln!(
        w,
        "\n/* Outputs, concatenated in this order into predict's `out`. */"
    );
    for o in outputs {
        let name = c_name(&o.name);
        let _ = writeln!(
            w,
            "/* `{}`: f32 [{}] */\n#define {upper}_OUTPUT_{}_SIZE {}",
            o.name,
            dims(&o.shape),
            name.to_ascii_uppercase(),
            numel(o)
        );
        let _ = writeln!(
            w,
            "static const int64_t {prefix}_output_{name}_shape[] = {{{}}};",
            dims(&o.shape)
        );
    }
    let _ = writeln!(w, "#define {upper}_OUTPUT_SIZE {out_total}");
    // The sizes again as constants, for code that names the model by a
    // token-pasted prefix (`examples/c/predict.c`).
    let _ = writeln!(
        w,
        "static const size_t {prefix}_batch = {}, {prefix}_input_size = {}, \
         {prefix}_output_size = {out_total}, {prefix}_arena_bytes = {arena_bytes};",
        input.shape.first().copied().unwrap_or(1),
        numel(input)
    );
    let _ = writeln!(
        w,
        "\n/* The arena one predict call at a time uses: 64-byte aligned, this many bytes. */\n\
         #define {upper}_ARENA_BYTES {arena_bytes}\n#define {upper}_ARENA_ALIGN 64\n"
    );
    let _ = writeln!(
        w,
        "/* From the object. */\n\
         extern const unsigned char {prefix}_constants[];\n\
         void {prefix}_run(const void *state, void *arena, void *packing);\n\
         /* From libnnc_kernels.a. */\n\
         void *nnc_scratch_new(void);\n\
         void nnc_scratch_free(void *packing);\n\
         int nnc_set_threads(int64_t threads);\n\
         #ifndef NNC_TENSOR_SLOT\n#define NNC_TENSOR_SLOT\n\
         typedef struct {{ const char *name; int32_t kind; size_t offset; size_t numel; }} nnc_tensor_slot;\n\
         #endif\n\
         unsigned char *nnc_load_weights(const char *path, const nnc_tensor_slot *slots, size_t n, size_t bytes);\n\
         void nnc_free_weights(unsigned char *state, size_t bytes);\n\
         const char *nnc_last_error(void);\n"
    );
    match weights {
        Weights::Embedded => {
            let _ = writeln!(
                w,
                "/* The weights are embedded: {prefix}_weights_load ignores its path. */\n\
                 extern const unsigned char {prefix}_state[];\n\
                 static inline const void *{prefix}_weights_load(const char *path) {{\n    \
                 (void)path;\n    return {prefix}_state;\n}}\n\
                 static inline void {prefix}_weights_free(const void *weights) {{ (void)weights; }}\n"
            );
        }
        Weights::External(state) => {
            let slots: Vec<String> = state
                .layout
                .slots
                .iter()
                .map(|s| {
                    let kind = i32::from(Kind::of(s.dtype) != Kind::F32);
                    let numel: usize = s.shape.iter().product();
                    format!("    {{\"{}\", {kind}, {}, {numel}}},", s.name, s.offset)
                })
                .collect();
            let _ = writeln!(
                w,
                "/* The weights are read at start from a safetensors checkpoint of this model\n   \
                 (`nnc run --save`): {prefix}_weights_load(path) returns them, or NULL with\n   \
                 the reason in nnc_last_error(). */\n\
                 #define {upper}_STATE_BYTES {}\n\
                 static const nnc_tensor_slot {prefix}_slots[] = {{\n{}\n}};\n\
                 static inline const void *{prefix}_weights_load(const char *path) {{\n    \
                 return nnc_load_weights(path, {prefix}_slots, sizeof {prefix}_slots / sizeof {prefix}_slots[0],\n                            \
                 {upper}_STATE_BYTES);\n}}\n\
                 static inline void {prefix}_weights_free(const void *weights) {{\n    \
                 nnc_free_weights((unsigned char *)weights, {upper}_STATE_BYTES);\n}}\n",
                state.layout.bytes.max(1),
                slots.join("\n")
            );
        }
    }
    let _ = writeln!(
        w,
        "/* Where each constant goes in the arena: arena offset, blob offset, bytes. */"
    );
    let _ = writeln!(
        w,
        "static const size_t {prefix}_segments[][3] = {{{}}};",
        if segments.is_empty() {
            "{0, 0, 0}".to_string()
        } else {
            segments
                .iter()
                .map(|(a, b, n)| format!("{{{a}, {b}, {n}}}"))
                .collect::<Vec<_>>()
                .join(", ")
        }
    );
    w.push_str(prelude);
    let copies: String = outputs
        .iter()
        .scan(0usize, |at, o| {
            let line = format!(
                "    memcpy(out + {}, a + {}, {} * sizeof(float));\n",
                *at,
                o.offset,
                numel(o)
            );
            *at += numel(o);
            Some(line)
        })
        .collect();
    let _ = write!(
        w,
        r#"
/* Prepares an arena to run with `weights` ({prefix}_weights_load's, which
   must outlive it): zeroes it, writes the constants, allocates the GEMM
   packing space. Returns 0, or -1 if the allocation failed or `weights`
   is NULL. */
static inline int {prefix}_init(void *arena, const void *weights) {{
    unsigned char *a = (unsigned char *)arena;
    size_t i;
    void *packing;
    if (!weights) return -1;
    memset(a, 0, {upper}_ARENA_BYTES);
    memcpy(a + {WEIGHTS_SLOT}, &weights, sizeof weights);
    for (i = 0; i < sizeof {prefix}_segments / sizeof {prefix}_segments[0]; i++)
        memcpy(a + {prefix}_segments[i][0], {prefix}_constants + {prefix}_segments[i][1],
               {prefix}_segments[i][2]);
    packing = nnc_scratch_new();
    if (!packing) return -1;
    memcpy(a + {SCRATCH_SLOT}, &packing, sizeof packing);
    return 0;
}}

/* One forward pass of {upper}_BATCH samples: `in` holds {upper}_INPUT_SIZE
   floats, `out` receives {upper}_OUTPUT_SIZE. Allocates nothing. Returns 0,
   or -1 if an index was out of range (a gather's). */
static inline int {prefix}_predict(const float *in, float *out, void *arena) {{
    unsigned char *a = (unsigned char *)arena;
    void *packing;
    const void *weights;
    uint32_t status;
    memcpy(&packing, a + {SCRATCH_SLOT}, sizeof packing);
    memcpy(&weights, a + {WEIGHTS_SLOT}, sizeof weights);
    memcpy(a + {}, in, {upper}_INPUT_SIZE * sizeof(float));
    {prefix}_run(weights, a, packing);
    memcpy(&status, a, sizeof status);
    if (status != 0) {{
        memset(a, 0, sizeof status);
        return -1;
    }}
{copies}    return 0;
}}

/* Releases what {prefix}_init allocated (not the weights). */
static inline void {prefix}_free(void *arena) {{
    unsigned char *a = (unsigned char *)arena;
    void *packing;
    memcpy(&packing, a + {SCRATCH_SLOT}, sizeof packing);
    nnc_scratch_free(packing);
    memset(a + {SCRATCH_SLOT}, 0, sizeof packing);
}}

#ifdef __cplusplus
}}
#endif

#endif
"#,
        input.offset
    );
    h
}

/// A name as C identifier characters (`logits`, `out.probs` →
/// `out_probs`): for the header's tensor names and the object's prefix.
pub fn c_name(name: &str) -> String {
    name.chars()
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '_' })
        .collect()
}
