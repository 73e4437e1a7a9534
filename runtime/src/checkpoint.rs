//! Checkpoints: a model's params and optimizer state in the safetensors
//! format, written atomically, read back with located errors, and applied
//! only to the model they were saved from.
//!
//! The file is plain safetensors (an 8-byte little-endian header length, a
//! JSON header, then the tensor bytes), so other tools can read it. Each
//! tensor keeps its dtype: `f32` params are stored as `F32`, `i32` as `I32`,
//! `f64` as `F64`, `bool` as `BOOL`. The header's `__metadata__` holds:
//!
//! | key | value |
//! |---|---|
//! | `format` | `nnc-checkpoint/1` |
//! | `model` | the model's name (`DigitsMLP`) |
//! | `fingerprint` | [`fingerprint`] of every tensor's name, dtype and shape |
//! | `epochs_done` | epochs trained when it was written (`--resume` continues from here) |
//! | `params` | a JSON list of the tensors that are params; the rest is optimizer state |
//! | `nnc_version` | the version of `nnc` that wrote it |
//! | `loop_state` | only when the train block has `plateau` or `early_stop`: their state after the last epoch done, as JSON (`{"plateau": {"lr", "best", "bad_epochs", "cooldown_left"}, "early_stop": {"best", "best_epoch", "wait", "stopped_after"}}`), so a resumed run decides as an uninterrupted one |
//! | `text` | only for data with text fields: a JSON object from field name to its vocabulary (`{"kind": "tokens", "options": {...}, "words": [...]}`, `words[k]` has id `k + 2`) or class names (`{"kind": "classes", "names": [...]}`), so `--predict` encodes raw text as training did |
//! | `fitted` | only for data with `standardize` or `minmax`: a JSON object from field name to the list of its fitted transforms in pipeline order (`{"transform": "standardize", "per": "channel", "mean": [...], "std": [...]}`, `{"transform": "minmax", "per": "element", "min": [...], "max": [...]}`), fitted on the training samples, so evaluation and `--predict` scale as training did |
//! | `quantization` | only in a quantized checkpoint (`nnc quantize`): a JSON list of the products computed in integers, `{"weight", "scale", "zero_point", "channels"}` (the weight's name, its activations' `u8` scale and zero point, each output channel's `i8` scale); the weights named there are `I8` tensors |
//! | `structure` | only for a model whose structure was changed (`nnc prune`, `nnc factorize`): a JSON list of the changes in the order they were made, `{"prune_channels": {"param", "kept"}}`, `{"factorize": {"param", "rank"}}` or `{"fake_quantize": {}}` (see [`nnc_ir::StructuralChange`]); a run applies them to the source's model before it loads the tensors |
//!
//! Saving writes `PATH.tmp.<pid>` next to `PATH`, syncs it, renames it over
//! `PATH` and syncs the directory: a crash or a failed write leaves the
//! previous checkpoint as it was.

use crate::data::text::Vocabularies;
use crate::data::FittedStats;
use crate::executor::{Executor, Programs};
use crate::RuntimeError;
use nnc_ir::{DType, StructuralChange, Tensor, ADAM_STEP};
use safetensors::tensor::{Dtype, SafeTensorError, SafeTensors, View};
use std::borrow::Cow;
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};

/// The `format` metadata value this version writes and reads.
pub const FORMAT: &str = "nnc-checkpoint/1";

/// Metadata keys in the safetensors header's `__metadata__`.
pub mod keys {
    pub const FORMAT: &str = "format";
    pub const MODEL: &str = "model";
    pub const FINGERPRINT: &str = "fingerprint";
    pub const EPOCHS_DONE: &str = "epochs_done";
    pub const PARAMS: &str = "params";
    pub const NNC_VERSION: &str = "nnc_version";
    pub const TEXT: &str = "text";
    pub const LOOP_STATE: &str = "loop_state";
    pub const FITTED: &str = "fitted";
    pub const QUANTIZATION: &str = "quantization";
    pub const STRUCTURE: &str = "structure";
}

/// The version written into checkpoints (the workspace version).
pub const NNC_VERSION: &str = env!("CARGO_PKG_VERSION");

/// What a checkpoint records besides the model name and the tensors.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Meta {
    /// Epochs trained so far.
    pub epochs_done: usize,
    /// Which of the tensors are params (the others are optimizer state).
    pub params: Vec<String>,
    /// The training loop's [`crate::train::LoopState`] as JSON, if any.
    pub loop_state: Option<String>,
    /// What `nnc quantize` made integer, as JSON, if anything.
    pub quantization: Option<String>,
    /// How the model's structure differs from its source's.
    pub structure: Vec<StructuralChange>,
}

/// How much of a checkpoint [`Checkpoint::apply`] restores.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scope {
    /// The params only (`--weights`: evaluation, prediction, warm starts).
    Params,
    /// Params and optimizer state (`--resume`): the checkpoint must hold
    /// exactly the model's tensors.
    Everything,
}

/// A checkpoint read from disk.
#[derive(Debug, Clone, PartialEq)]
pub struct Checkpoint {
    pub path: PathBuf,
    pub model: String,
    pub fingerprint: String,
    pub epochs_done: usize,
    pub nnc_version: String,
    /// Names of the param tensors, sorted.
    pub params: Vec<String>,
    /// Every tensor, sorted by name.
    pub tensors: Vec<(String, Tensor)>,
    /// The vocabularies of the data's text fields (empty without any).
    pub vocabularies: Vocabularies,
    /// The training loop's state as JSON, if it was saved.
    pub loop_state: Option<String>,
    /// The statistics of the data's fitted transforms (empty without any).
    pub fitted: FittedStats,
    /// What `nnc quantize` made integer, as JSON, if anything.
    pub quantization: Option<String>,
    /// How the model's structure differs from its source's.
    pub structure: Vec<StructuralChange>,
}

/// The names of a model's weights (as opposed to optimizer state), sorted:
/// the param leaves of the training step and of the forward graph, plus the
/// forward graph's state leaves (a batch norm's running statistics), which
/// evaluation reads and so belong with the weights (PyTorch's buffers).
pub fn param_names(programs: &Programs) -> Vec<String> {
    let mut names: BTreeSet<String> = programs
        .step
        .params()
        .into_iter()
        .map(|(_, n)| n.to_string())
        .collect();
    let forward = &programs.forward;
    for id in forward.topo_order() {
        if let nnc_ir::Op::Param { name, .. } | nnc_ir::Op::State { name, .. } =
            &forward.node(id).op
        {
            names.insert(name.clone());
        }
    }
    names.into_iter().collect()
}

/// A structural hash of a set of tensors: FNV-1a (64-bit) over
/// `name:dtype:[shape];` for each tensor in name order. Values do not
/// enter it, so two checkpoints of one model share a fingerprint.
pub fn fingerprint(tensors: &[(String, Tensor)]) -> String {
    let mut sorted: Vec<&(String, Tensor)> = tensors.iter().collect();
    sorted.sort_by(|a, b| a.0.cmp(&b.0));
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for (name, t) in sorted {
        let item = format!("{name}:{}:{:?};", t.dtype, t.shape);
        for b in item.bytes() {
            h ^= u64::from(b);
            h = h.wrapping_mul(0x0000_0100_0000_01b3);
        }
    }
    format!("fnv1a64:{h:016x}")
}

/// A tensor serialized to little-endian bytes, for `safetensors`.
struct Bytes {
    dtype: Dtype,
    shape: Vec<usize>,
    data: Vec<u8>,
}

impl View for &Bytes {
    fn dtype(&self) -> Dtype {
        self.dtype
    }
    fn shape(&self) -> &[usize] {
        &self.shape
    }
    fn data(&self) -> Cow<'_, [u8]> {
        Cow::Borrowed(&self.data)
    }
    fn data_len(&self) -> usize {
        self.data.len()
    }
}

fn encode(t: &Tensor) -> Bytes {
    let (dtype, data): (Dtype, Vec<u8>) = match t.dtype {
        DType::F32 => (
            Dtype::F32,
            t.data
                .iter()
                .flat_map(|&v| (v as f32).to_le_bytes())
                .collect(),
        ),
        DType::F64 => (
            Dtype::F64,
            t.data.iter().flat_map(|&v| v.to_le_bytes()).collect(),
        ),
        DType::I32 => (
            Dtype::I32,
            t.data
                .iter()
                .flat_map(|&v| (v as i32).to_le_bytes())
                .collect(),
        ),
        DType::Bool => (
            Dtype::BOOL,
            t.data.iter().map(|&v| u8::from(v != 0.0)).collect(),
        ),
        // One byte per quantized value: what makes the file small.
        DType::I8 => (Dtype::I8, t.data.iter().map(|&v| v as i8 as u8).collect()),
        DType::U8 => (Dtype::U8, t.data.iter().map(|&v| v as u8).collect()),
    };
    Bytes {
        dtype,
        shape: t.shape.clone(),
        data,
    }
}

fn setup(message: String) -> RuntimeError {
    RuntimeError::Setup(message)
}

/// Writes a checkpoint of `tensors` (every param and state tensor of model
/// `model_name`) to `path`, atomically.
pub fn save(
    path: &Path,
    model_name: &str,
    tensors: &[(String, Tensor)],
    meta: &Meta,
) -> Result<(), RuntimeError> {
    save_with_vocabularies(path, model_name, tensors, meta, &Vocabularies::new())
}

/// [`save`], with the vocabularies of the data's text fields in the
/// metadata (`text`) when there are any.
pub fn save_with_vocabularies(
    path: &Path,
    model_name: &str,
    tensors: &[(String, Tensor)],
    meta: &Meta,
    vocabularies: &Vocabularies,
) -> Result<(), RuntimeError> {
    save_with_data(
        path,
        model_name,
        tensors,
        meta,
        vocabularies,
        &FittedStats::new(),
    )
}

/// [`save`], with what the data built on the training samples: the
/// vocabularies of text fields (`text`) and the fitted statistics
/// (`fitted`), each when there are any.
pub fn save_with_data(
    path: &Path,
    model_name: &str,
    tensors: &[(String, Tensor)],
    meta: &Meta,
    vocabularies: &Vocabularies,
    fitted: &FittedStats,
) -> Result<(), RuntimeError> {
    let mut params = meta.params.clone();
    params.sort();
    let params_json = serde_json::to_string(&params)
        .map_err(|e| setup(format!("cannot save checkpoint `{}`: {e}", path.display())))?;
    let mut metadata: HashMap<String, String> = [
        (keys::FORMAT, FORMAT.to_string()),
        (keys::MODEL, model_name.to_string()),
        (keys::FINGERPRINT, fingerprint(tensors)),
        (keys::EPOCHS_DONE, meta.epochs_done.to_string()),
        (keys::PARAMS, params_json),
        (keys::NNC_VERSION, NNC_VERSION.to_string()),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v))
    .collect();
    if !vocabularies.is_empty() {
        let text = serde_json::to_string(vocabularies)
            .map_err(|e| setup(format!("cannot save checkpoint `{}`: {e}", path.display())))?;
        metadata.insert(keys::TEXT.to_string(), text);
    }
    if let Some(state) = &meta.loop_state {
        metadata.insert(keys::LOOP_STATE.to_string(), state.clone());
    }
    if let Some(q) = &meta.quantization {
        metadata.insert(keys::QUANTIZATION.to_string(), q.clone());
    }
    if !meta.structure.is_empty() {
        metadata.insert(
            keys::STRUCTURE.to_string(),
            structure_json(&meta.structure).to_string(),
        );
    }
    if !fitted.is_empty() {
        let json = serde_json::to_string(fitted)
            .map_err(|e| setup(format!("cannot save checkpoint `{}`: {e}", path.display())))?;
        metadata.insert(keys::FITTED.to_string(), json);
    }
    let bytes = safetensors_bytes(tensors, metadata)
        .map_err(|e| setup(format!("cannot save checkpoint `{}`: {e}", path.display())))?;
    write_atomic(path, &bytes)
        .map_err(|e| setup(format!("cannot save checkpoint `{}`: {e}", path.display())))
}

/// `tensors` as a safetensors file with `metadata` in its header, each
/// tensor in its own dtype (see the module's documentation).
pub fn safetensors_bytes(
    tensors: &[(String, Tensor)],
    metadata: HashMap<String, String>,
) -> Result<Vec<u8>, SafeTensorError> {
    let encoded: Vec<(String, Bytes)> = tensors
        .iter()
        .map(|(n, t)| (n.clone(), encode(t)))
        .collect();
    safetensors::serialize(encoded.iter().map(|(n, b)| (n, b)), Some(metadata))
}

/// Replaces `path` with `bytes` so that readers see either the old file or
/// the new one, never a mix: write `PATH.tmp.<pid>` in the same directory,
/// sync it, rename it over `path`, sync the directory. On failure the
/// temporary file is removed and `path` is untouched.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let name = path.file_name().ok_or_else(|| {
        std::io::Error::new(std::io::ErrorKind::InvalidInput, "the path names no file")
    })?;
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d.to_path_buf(),
        _ => PathBuf::from("."),
    };
    let mut tmp_name = name.to_os_string();
    tmp_name.push(format!(".tmp.{}", std::process::id()));
    let tmp = dir.join(tmp_name);
    let attempt = || -> std::io::Result<()> {
        let mut file = fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .open(&tmp)
            .map_err(|e| annotate(e, "creating", &tmp))?;
        file.write_all(bytes)
            .and_then(|()| file.sync_all())
            .map_err(|e| annotate(e, "writing", &tmp))?;
        drop(file);
        fs::rename(&tmp, path).map_err(|e| {
            std::io::Error::new(
                e.kind(),
                format!("renaming `{}` over it failed: {e}", tmp.display()),
            )
        })?;
        sync_dir(&dir).map_err(|e| annotate(e, "syncing the directory", &dir))
    };
    let result = attempt();
    if result.is_err() {
        // After a successful rename this finds nothing, which is fine.
        let _ = fs::remove_file(&tmp);
    }
    result
}

fn annotate(e: std::io::Error, what: &str, path: &Path) -> std::io::Error {
    std::io::Error::new(e.kind(), format!("{what} `{}` failed: {e}", path.display()))
}

#[cfg(unix)]
fn sync_dir(dir: &Path) -> std::io::Result<()> {
    fs::File::open(dir)?.sync_all()
}

#[cfg(not(unix))]
fn sync_dir(_dir: &Path) -> std::io::Result<()> {
    Ok(())
}

/// The metadata value `key` of the checkpoint at `path`, read from its
/// header alone (a large checkpoint's tensors are not read): what a caller
/// needs before compiling, such as whether the weights are quantized.
/// `None` when the key is absent or the file is not a readable
/// safetensors file; [`load`] reports the latter with its location.
pub fn header_value(path: &Path, key: &str) -> Option<String> {
    use std::io::Read;
    let mut file = fs::File::open(path).ok()?;
    let mut word = [0u8; 8];
    file.read_exact(&mut word).ok()?;
    let header_len = usize::try_from(u64::from_le_bytes(word)).ok()?;
    if header_len > file.metadata().ok()?.len() as usize {
        return None;
    }
    let mut header = vec![0u8; header_len];
    file.read_exact(&mut header).ok()?;
    let json: serde_json::Value = serde_json::from_slice(&header).ok()?;
    json.get("__metadata__")?
        .get(key)?
        .as_str()
        .map(str::to_string)
}

/// Reads and checks a checkpoint: the safetensors structure (every error
/// names the file and, where there is one, the byte offset), the nnc
/// metadata, and that the stored fingerprint matches the tensors.
pub fn load(path: &Path) -> Result<Checkpoint, RuntimeError> {
    let shown = path.display();
    let bytes =
        fs::read(path).map_err(|e| setup(format!("cannot read checkpoint `{shown}`: {e}")))?;
    let bad = |what: String| setup(format!("`{shown}` is not a valid checkpoint: {what}"));
    let len = bytes.len();
    let Some(prefix) = bytes.get(..8) else {
        return Err(bad(format!(
            "the file is {len} bytes long, too short for the 8-byte header length a safetensors file starts with"
        )));
    };
    let mut word = [0u8; 8];
    word.copy_from_slice(prefix);
    let header_len = u64::from_le_bytes(word);
    let rest = (len - 8) as u64;
    if header_len > rest {
        return Err(bad(format!(
            "the header length at byte 0 says {header_len} bytes, but only {rest} bytes follow it (the file is truncated, or not a safetensors file)"
        )));
    }
    let data_start = 8 + header_len as usize;
    let header = &bytes[8..data_start];
    let text = std::str::from_utf8(header).map_err(|e| {
        bad(format!(
            "the JSON header has invalid UTF-8 at byte {}",
            8 + e.valid_up_to()
        ))
    })?;
    let json: serde_json::Value = serde_json::from_str(text).map_err(|e| {
        bad(format!(
            "invalid JSON header at byte {}: {}",
            8 + json_offset(text, e.line(), e.column()),
            json_message(&e)
        ))
    })?;
    let Some(entries) = json.as_object() else {
        return Err(bad(
            "the JSON header at byte 8 is not an object of tensors".to_string()
        ));
    };
    // Out-of-bounds data is checked here, naming the first tensor the end
    // of the file cuts, before `safetensors` calls it an incomplete buffer.
    let mut cut: Option<(u64, u64, &str)> = None;
    for (name, info) in entries {
        let offsets = info.get("data_offsets");
        let at = |i: usize| {
            offsets
                .and_then(|o| o.get(i))
                .and_then(serde_json::Value::as_u64)
        };
        if let (false, Some(s), Some(e)) = (name == "__metadata__", at(0), at(1)) {
            let (s, e) = (data_start as u64 + s, data_start as u64 + e);
            if e > len as u64 && cut.is_none_or(|(first, _, _)| s < first) {
                cut = Some((s, e, name));
            }
        }
    }
    if let Some((s, e, name)) = cut {
        return Err(bad(format!(
            "the data of tensor `{name}` is at bytes {s}..{e}, past the end of the file at byte {len} (the file is truncated)"
        )));
    }
    let (_, meta) =
        SafeTensors::read_metadata(&bytes).map_err(|e| bad(safetensors_message(&e, len)))?;
    let st = SafeTensors::deserialize(&bytes).map_err(|e| bad(safetensors_message(&e, len)))?;
    let metadata = meta.metadata().clone().unwrap_or_default();
    let get = |key: &str| -> Result<&String, RuntimeError> {
        metadata.get(key).ok_or_else(|| {
            setup(format!(
                "`{shown}` is a safetensors file but not an nnc checkpoint: its metadata has no `{key}`"
            ))
        })
    };
    let format = get(keys::FORMAT)?;
    if format != FORMAT {
        return Err(setup(format!(
            "`{shown}` has checkpoint format `{format}`; this nnc reads `{FORMAT}`"
        )));
    }
    let model = get(keys::MODEL)?.clone();
    let stored_fingerprint = get(keys::FINGERPRINT)?.clone();
    let epochs_done: usize = get(keys::EPOCHS_DONE)?.parse().map_err(|_| {
        bad(format!(
            "metadata `{}` is `{}`, not a number",
            keys::EPOCHS_DONE,
            metadata[keys::EPOCHS_DONE]
        ))
    })?;
    let mut params: Vec<String> = serde_json::from_str(get(keys::PARAMS)?).map_err(|e| {
        bad(format!(
            "metadata `{}` is not a JSON list of names: {e}",
            keys::PARAMS
        ))
    })?;
    params.sort();
    let nnc_version = metadata.get(keys::NNC_VERSION).cloned().unwrap_or_default();
    let vocabularies: Vocabularies = match metadata.get(keys::TEXT) {
        None => Vocabularies::new(),
        Some(text) => serde_json::from_str(text).map_err(|e| {
            bad(format!(
                "metadata `{}` is not the vocabularies of text fields: {e}",
                keys::TEXT
            ))
        })?,
    };
    let fitted: FittedStats = match metadata.get(keys::FITTED) {
        None => FittedStats::new(),
        Some(json) => serde_json::from_str(json).map_err(|e| {
            bad(format!(
                "metadata `{}` is not the fitted statistics of data fields: {e}",
                keys::FITTED
            ))
        })?,
    };

    let mut tensors = Vec::with_capacity(st.len());
    for (name, view) in st.tensors() {
        let (dtype, data): (DType, Vec<f64>) = match view.dtype() {
            Dtype::F32 => (
                DType::F32,
                view.data()
                    .chunks_exact(4)
                    .map(|c| f64::from(f32::from_le_bytes([c[0], c[1], c[2], c[3]])))
                    .collect(),
            ),
            Dtype::F64 => (
                DType::F64,
                view.data()
                    .chunks_exact(8)
                    .map(|c| {
                        let mut w = [0u8; 8];
                        w.copy_from_slice(c);
                        f64::from_le_bytes(w)
                    })
                    .collect(),
            ),
            Dtype::I32 => (
                DType::I32,
                view.data()
                    .chunks_exact(4)
                    .map(|c| f64::from(i32::from_le_bytes([c[0], c[1], c[2], c[3]])))
                    .collect(),
            ),
            Dtype::BOOL => (
                DType::Bool,
                view.data()
                    .iter()
                    .map(|&b| f64::from(u8::from(b != 0)))
                    .collect(),
            ),
            Dtype::I8 => (
                DType::I8,
                view.data().iter().map(|&b| f64::from(b as i8)).collect(),
            ),
            Dtype::U8 => (
                DType::U8,
                view.data().iter().map(|&b| f64::from(b)).collect(),
            ),
            other => {
                return Err(bad(format!(
                    "tensor `{name}` has dtype {other:?}; nnc models use F32, F64, I32, I8, U8 and BOOL"
                )))
            }
        };
        let tensor = Tensor::from_vec(dtype, view.shape(), data)
            .map_err(|e| bad(format!("tensor `{name}`: {e}")))?;
        tensors.push((name, tensor));
    }
    tensors.sort_by(|a, b| a.0.cmp(&b.0));
    let actual = fingerprint(&tensors);
    if actual != stored_fingerprint {
        return Err(bad(format!(
            "its metadata says fingerprint {stored_fingerprint}, but its tensors have {actual} (the file was edited or damaged)"
        )));
    }
    if let Some(p) = params
        .iter()
        .find(|p| tensors.binary_search_by(|(n, _)| n.cmp(p)).is_err())
    {
        return Err(bad(format!(
            "metadata `{}` lists `{p}`, which the file does not hold",
            keys::PARAMS
        )));
    }
    let fingerprint = if upgrade_adam_step(&mut tensors).map_err(bad)? {
        // What the checkpoint now holds, which a model compares with.
        fingerprint(&tensors)
    } else {
        stored_fingerprint
    };
    Ok(Checkpoint {
        path: path.to_path_buf(),
        model,
        fingerprint,
        epochs_done,
        nnc_version,
        params,
        tensors,
        vocabularies,
        loop_state: metadata.get(keys::LOOP_STATE).cloned(),
        quantization: metadata.get(keys::QUANTIZATION).cloned(),
        structure: match metadata.get(keys::STRUCTURE) {
            Some(text) => parse_structure(text)
                .map_err(|e| bad(format!("metadata `{}`: {e}", keys::STRUCTURE)))?,
            None => Vec::new(),
        },
        fitted,
    })
}

/// The structural changes as the `structure` metadata writes them.
fn structure_json(changes: &[StructuralChange]) -> serde_json::Value {
    use serde_json::json;
    changes
        .iter()
        .map(|change| match change {
            StructuralChange::PruneChannels { param, kept } => {
                json!({"prune_channels": {"param": param, "kept": kept}})
            }
            StructuralChange::Factorize { param, rank } => {
                json!({"factorize": {"param": param, "rank": rank}})
            }
            StructuralChange::FakeQuantize => json!({"fake_quantize": {}}),
        })
        .collect()
}

/// Reads the `structure` metadata back.
pub fn parse_structure(text: &str) -> Result<Vec<StructuralChange>, String> {
    let value: serde_json::Value =
        serde_json::from_str(text).map_err(|e| format!("not JSON: {e}"))?;
    let items = value
        .as_array()
        .ok_or_else(|| "expected a list of changes".to_string())?;
    items
        .iter()
        .enumerate()
        .map(|(i, item)| {
            let bad = |what: &str| format!("change {i}: {what}");
            let (kind, body) = item
                .as_object()
                .filter(|o| o.len() == 1)
                .and_then(|o| o.iter().next())
                .ok_or_else(|| {
                    bad("expected `{\"prune_channels\": ...}`, `{\"factorize\": ...}` or `{\"fake_quantize\": {}}`")
                })?;
            if kind == "fake_quantize" {
                return Ok(StructuralChange::FakeQuantize);
            }
            let param = body
                .get("param")
                .and_then(|p| p.as_str())
                .ok_or_else(|| bad("no `param` name"))?
                .to_string();
            let count = |v: &serde_json::Value| v.as_u64().map(|n| n as usize);
            match kind.as_str() {
                "prune_channels" => {
                    let kept = body
                        .get("kept")
                        .and_then(|k| k.as_array())
                        .and_then(|k| k.iter().map(count).collect::<Option<Vec<usize>>>())
                        .ok_or_else(|| bad("`kept` is not a list of channel indices"))?;
                    Ok(StructuralChange::PruneChannels { param, kept })
                }
                "factorize" => {
                    let rank = body
                        .get("rank")
                        .and_then(count)
                        .ok_or_else(|| bad("`rank` is not a count"))?;
                    Ok(StructuralChange::Factorize { param, rank })
                }
                other => Err(bad(&format!("unknown change `{other}`"))),
            }
        })
        .collect()
}

/// Checkpoints before the step count became an integer hold `adam.step`
/// as `f32`; it becomes the `i32` the training step now has, or an error
/// when it is not a step count. Whether it changed anything.
fn upgrade_adam_step(tensors: &mut [(String, Tensor)]) -> Result<bool, String> {
    let Some((_, step)) = tensors.iter_mut().find(|(n, _)| n == ADAM_STEP) else {
        return Ok(false);
    };
    if step.dtype != DType::F32 {
        return Ok(false);
    }
    if let Some(&bad) = step
        .data
        .iter()
        .find(|&&v| !(v >= 0.0 && v.fract() == 0.0 && v <= f64::from(i32::MAX)))
    {
        return Err(format!(
            "tensor `{ADAM_STEP}` holds {bad}, which is not a count of steps"
        ));
    }
    step.dtype = DType::I32;
    Ok(true)
}

/// The byte offset in `text` of serde_json's (1-based) line and column.
fn json_offset(text: &str, line: usize, column: usize) -> usize {
    let before: usize = text
        .split_inclusive('\n')
        .take(line.saturating_sub(1))
        .map(str::len)
        .sum();
    (before + column.saturating_sub(1)).min(text.len())
}

/// serde_json's message without its " at line L column C" suffix (we give
/// a byte offset instead).
fn json_message(e: &serde_json::Error) -> String {
    let full = e.to_string();
    match full.rfind(" at line ") {
        Some(i) => full[..i].to_string(),
        None => full,
    }
}

fn safetensors_message(e: &SafeTensorError, len: usize) -> String {
    match e {
        SafeTensorError::InvalidOffset(name) => format!(
            "tensor `{name}` has data offsets that do not follow the previous tensor's"
        ),
        SafeTensorError::MetadataIncompleteBuffer => format!(
            "the tensors' data does not end where the file does (byte {len}): extra bytes, or a damaged header"
        ),
        SafeTensorError::HeaderTooLarge => {
            "the header length at byte 0 is larger than safetensors allows (100 MB)".to_string()
        }
        other => other.to_string(),
    }
}

/// One difference between the tensors a checkpoint holds and the ones a
/// model has.
fn first_difference(
    ours: &BTreeMap<&str, &Tensor>,
    theirs: &BTreeMap<&str, &Tensor>,
    params: &BTreeSet<&str>,
    scope: Scope,
) -> Option<String> {
    let names: BTreeSet<&str> = ours.keys().chain(theirs.keys()).copied().collect();
    for name in names {
        let kind = if params.contains(name) {
            "param"
        } else {
            "optimizer state"
        };
        match (theirs.get(name), ours.get(name)) {
            (Some(c), Some(m)) => {
                if c.dtype != m.dtype {
                    return Some(format!(
                        "tensor `{name}` is {} in the checkpoint but {} in the model",
                        c.dtype, m.dtype
                    ));
                }
                if c.shape != m.shape {
                    return Some(format!(
                        "tensor `{name}` has shape {:?} in the checkpoint but {:?} in the model",
                        c.shape, m.shape
                    ));
                }
            }
            (None, Some(_)) => {
                let hint = if scope == Scope::Everything && kind != "param" {
                    " (`--resume` needs the optimizer state: was the checkpoint trained with another optimizer?)"
                } else {
                    ""
                };
                return Some(format!(
                    "{kind} `{name}` is in the model but not in the checkpoint{hint}"
                ));
            }
            (Some(_), None) => {
                return Some(format!(
                    "tensor `{name}` is in the checkpoint but not in the model"
                ))
            }
            (None, None) => {}
        }
    }
    None
}

impl Checkpoint {
    /// The tensor `name`, if the checkpoint holds it.
    pub fn tensor(&self, name: &str) -> Option<&Tensor> {
        self.tensors
            .binary_search_by(|(n, _)| n.as_str().cmp(name))
            .ok()
            .map(|i| &self.tensors[i].1)
    }

    /// Loads the checkpoint into `exec`, whose model is `model_name` with
    /// params `param_names` (see [`param_names`]). Refuses, changing
    /// nothing, a checkpoint of another model: another name, or tensors
    /// that differ (the error names the first). `Scope::Params` restores
    /// only the params (a pruned model's masks that a checkpoint without
    /// pruning lacks stay ones); `Scope::Everything` needs the optimizer
    /// state too.
    pub fn apply(
        &self,
        exec: &mut dyn Executor,
        model_name: &str,
        param_names: &[String],
        scope: Scope,
    ) -> Result<(), RuntimeError> {
        let state = exec.state();
        let ckpt_params: BTreeSet<&str> = self.params.iter().map(String::as_str).collect();
        let mut model_params: BTreeSet<&str> = param_names.iter().map(String::as_str).collect();
        if scope == Scope::Params {
            // A pruned model's masks (`w.mask` of a weight `w`) that the
            // checkpoint lacks keep their ones: weights trained without
            // pruning start a pruning run (or evaluate) unpruned.
            let unmasked: Vec<&str> = model_params
                .iter()
                .copied()
                .filter(|n| {
                    n.strip_suffix(".mask")
                        .is_some_and(|w| model_params.contains(w) && ckpt_params.contains(w))
                        && !ckpt_params.contains(n)
                })
                .collect();
            for n in unmasked {
                model_params.remove(n);
            }
        }
        let in_scope = |name: &str, params: &BTreeSet<&str>| {
            scope == Scope::Everything || params.contains(name)
        };
        let ours: BTreeMap<&str, &Tensor> = state
            .iter()
            .filter(|(n, _)| in_scope(n, &model_params))
            .map(|(n, t)| (n.as_str(), t))
            .collect();
        let theirs: BTreeMap<&str, &Tensor> = self
            .tensors
            .iter()
            .filter(|(n, _)| in_scope(n, &ckpt_params))
            .map(|(n, t)| (n.as_str(), t))
            .collect();
        let all_params: BTreeSet<&str> = model_params.union(&ckpt_params).copied().collect();
        let difference = first_difference(&ours, &theirs, &all_params, scope);
        let shown = self.path.display();
        if self.model != model_name {
            let mut message = format!(
                "checkpoint `{shown}` is for model `{}`, not `{model_name}`",
                self.model
            );
            if let Some(d) = difference {
                message.push_str(&format!(": {d}"));
            }
            return Err(setup(message));
        }
        if let Some(d) = difference {
            return Err(setup(format!(
                "checkpoint `{shown}` does not fit model `{model_name}`: {d}"
            )));
        }
        if scope == Scope::Everything {
            let ours = fingerprint(&state);
            if ours != self.fingerprint {
                return Err(setup(format!(
                    "checkpoint `{shown}` has fingerprint {}, but model `{model_name}` has {ours}",
                    self.fingerprint
                )));
            }
        }
        for (name, tensor) in &self.tensors {
            if theirs.contains_key(name.as_str()) {
                exec.set_state(name, tensor.clone())?;
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(dtype: DType, shape: &[usize], data: Vec<f64>) -> Tensor {
        Tensor::from_vec(dtype, shape, data).unwrap()
    }

    fn scratch(tag: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("nnc-ckpt-unit-{tag}-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(&dir).unwrap();
        dir
    }

    #[test]
    fn round_trips_every_dtype_and_the_metadata() {
        let dir = scratch("roundtrip");
        let path = dir.join("m.safetensors");
        let tensors = vec![
            (
                "a.w".to_string(),
                t(DType::F32, &[2, 2], vec![0.5, -1.25, 3.0, 1e-3f32 as f64]),
            ),
            ("b".to_string(), t(DType::F64, &[], vec![0.1])),
            ("c".to_string(), t(DType::I32, &[3], vec![1.0, -2.0, 7.0])),
            ("d".to_string(), t(DType::Bool, &[2], vec![1.0, 0.0])),
            (
                "q.w".to_string(),
                t(DType::I8, &[4], vec![-128.0, -1.0, 0.0, 127.0]),
            ),
            (
                "q.x".to_string(),
                t(DType::U8, &[3], vec![0.0, 128.0, 255.0]),
            ),
        ];
        let meta = Meta {
            epochs_done: 3,
            params: vec!["a.w".into()],
            ..Default::default()
        };
        save(&path, "M", &tensors, &meta).unwrap();
        let ck = load(&path).unwrap();
        assert_eq!(ck.model, "M");
        assert_eq!(ck.epochs_done, 3);
        assert_eq!(ck.params, vec!["a.w".to_string()]);
        assert_eq!(ck.tensors, tensors);
        assert_eq!(header_value(&path, keys::MODEL).as_deref(), Some("M"));
        assert_eq!(header_value(&path, keys::QUANTIZATION), None);
        assert_eq!(header_value(&dir.join("absent"), keys::MODEL), None);
        // A quantized value takes one byte in the file.
        let st = safetensors::SafeTensors::deserialize(&fs::read(&path).unwrap())
            .map(|f| {
                (
                    f.tensor("q.w").unwrap().data().len(),
                    f.tensor("q.w").unwrap().dtype(),
                )
            })
            .unwrap();
        assert_eq!(st, (4, safetensors::Dtype::I8));
        assert_eq!(ck.fingerprint, fingerprint(&tensors));
        assert_eq!(ck.nnc_version, NNC_VERSION);
        assert_eq!(ck.loop_state, None, "written only when there is one");
        let with_state = Meta {
            loop_state: Some(r#"{"plateau":{"lr":0.5}}"#.into()),
            ..meta.clone()
        };
        save(&path, "M", &tensors, &with_state).unwrap();
        assert_eq!(load(&path).unwrap().loop_state, with_state.loop_state);
        let leftovers: Vec<_> = fs::read_dir(&dir).unwrap().collect();
        assert_eq!(leftovers.len(), 1, "no temporary file is left behind");
        fs::remove_dir_all(&dir).ok();
    }

    #[test]
    fn fingerprint_depends_on_structure_not_values_or_order() {
        let a = vec![
            ("x".to_string(), t(DType::F32, &[2], vec![1.0, 2.0])),
            ("y".to_string(), t(DType::F32, &[1], vec![0.0])),
        ];
        let mut b = a.clone();
        b.reverse();
        b[0].1.data[0] = 9.0;
        assert_eq!(fingerprint(&a), fingerprint(&b));
        let c = vec![("x".to_string(), t(DType::F32, &[1, 2], vec![1.0, 2.0]))];
        assert_ne!(fingerprint(&a[..1]), fingerprint(&c));
    }

    /// A checkpoint written before `adam.step` was an `i32` (its count as
    /// an `f32`) loads with the count as an `i32` and a fingerprint that
    /// describes the converted tensors.
    #[test]
    fn an_f32_adam_step_of_an_older_checkpoint_loads_as_i32() {
        let dir = scratch("f32-step");
        let path = dir.join("old.safetensors");
        let w = ("w".to_string(), t(DType::F32, &[2], vec![0.5, -1.0]));
        let old = vec![
            (ADAM_STEP.to_string(), t(DType::F32, &[], vec![1234.0])),
            w.clone(),
        ];
        let meta = Meta {
            epochs_done: 2,
            params: vec!["w".into()],
            ..Default::default()
        };
        save(&path, "M", &old, &meta).unwrap();
        let ck = load(&path).unwrap();
        let now = vec![(ADAM_STEP.to_string(), t(DType::I32, &[], vec![1234.0])), w];
        assert_eq!(ck.tensors, now);
        assert_eq!(ck.fingerprint, fingerprint(&now));
        assert_ne!(ck.fingerprint, fingerprint(&old));

        for bad in [2.5, -1.0, f64::NAN, 3e9] {
            let tensors = vec![(ADAM_STEP.to_string(), t(DType::F32, &[], vec![bad]))];
            save(&path, "M", &tensors, &Meta::default()).unwrap();
            let err = load(&path).unwrap_err().to_string();
            assert!(
                err.contains("`adam.step` holds") && err.contains("not a count of steps"),
                "{bad}: {err}"
            );
            assert!(err.contains("old.safetensors"), "{err}");
        }
        fs::remove_dir_all(&dir).ok();
    }

    #[test]
    fn json_offsets_count_bytes_across_lines() {
        assert_eq!(json_offset("ab\ncd", 2, 2), 4);
        assert_eq!(json_offset("abc", 1, 1), 0);
    }
}
