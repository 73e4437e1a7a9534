//! From a `DataSpec` to loaded datasets and to the tensors a graph's inputs
//! receive each batch.
//!
//! Every model input and loss target is a data field of the same name.
//! Before any training step runs, each field's per-sample shape and element
//! type (after its transforms) are checked against the graph input they
//! feed, so a mismatch is reported once, clearly, naming the file.

use crate::data::{self, CsvOptions, Dataset, Field, Storage};
use crate::executor::{Batch, BatchData, BatchField};
use crate::RuntimeError;
use nnc_ir::{DType, DataField, DataSpec, Dim, Graph, Source, TestSet, Transform};
use std::collections::HashMap;
use std::path::{Path, PathBuf};

/// The samples of a data block: the training set and, when the block has
/// separate test files, the test set.
pub struct LoadedData {
    pub train: Dataset,
    pub test: Option<Dataset>,
    /// Set when the block says `test = split(f)`: that share of `train`.
    pub test_split: Option<f64>,
    plans: HashMap<String, FieldPlan>,
}

/// How one field becomes a batch tensor.
#[derive(Debug, Clone)]
struct FieldPlan {
    dtype: DType,
    transforms: Vec<data::Transform>,
    /// Per-sample shape after the transforms.
    sample_shape: Vec<usize>,
}

/// Loads every field of `spec`, resolving relative paths against `base`.
pub fn load(spec: &DataSpec, base: &Path) -> Result<LoadedData, RuntimeError> {
    let mut csv_cache: HashMap<PathBuf, data::CsvTable> = HashMap::new();
    let mut plans = HashMap::new();
    let train = load_fields(&spec.fields, base, &mut csv_cache, &mut plans)?;
    let (test, test_split) = match &spec.test {
        None => (None, None),
        Some(TestSet::Split(f)) => (None, Some(*f)),
        Some(TestSet::Fields(fields)) => {
            let mut test_plans = HashMap::new();
            let ds = load_fields(fields, base, &mut csv_cache, &mut test_plans)?;
            for (name, plan) in &test_plans {
                let train_plan: &FieldPlan = &plans[name];
                if train_plan.sample_shape != plan.sample_shape {
                    return Err(RuntimeError::Setup(format!(
                        "test field `{name}` has samples of shape {:?} but the training field has {:?}",
                        plan.sample_shape, train_plan.sample_shape
                    )));
                }
            }
            (Some(ds), None)
        }
    };
    Ok(LoadedData {
        train,
        test,
        test_split,
        plans,
    })
}

fn load_fields(
    fields: &[DataField],
    base: &Path,
    csv_cache: &mut HashMap<PathBuf, data::CsvTable>,
    plans: &mut HashMap<String, FieldPlan>,
) -> Result<Dataset, RuntimeError> {
    let mut loaded = Vec::new();
    for f in fields {
        let (storage, shape, path) = match &f.source {
            Source::Idx { path } => {
                let path = base.join(path);
                let array = data::idx::load(&path)?;
                let (_, dims, storage, _) = array.into_parts();
                (storage, dims.get(1..).unwrap_or_default().to_vec(), path)
            }
            Source::CsvColumns { path, from, to } => {
                let path = base.join(path);
                let table = csv_table(csv_cache, &path)?;
                (
                    Storage::F32(table.columns(*from..*to)?),
                    vec![to - from],
                    path,
                )
            }
            Source::CsvColumn { path, column } => {
                let path = base.join(path);
                let table = csv_table(csv_cache, &path)?;
                (Storage::I32(table.labels(*column)?), Vec::new(), path)
            }
        };
        let mut transforms = Vec::new();
        let mut sample_shape = shape.clone();
        for t in &f.transforms {
            match t {
                Transform::Reshape(dims) => {
                    let have: usize = sample_shape.iter().product();
                    let want: usize = dims.iter().product();
                    if have != want {
                        return Err(RuntimeError::Setup(format!(
                            "{}: field `{}` cannot be reshaped from {sample_shape:?} ({have} values per sample) to {dims:?} ({want})",
                            path.display(),
                            f.name
                        )));
                    }
                    sample_shape = dims.clone();
                }
                Transform::Scale(s) => transforms.push(data::Transform::scale(*s as f32)),
                Transform::OneHot(n) => {
                    transforms.push(data::Transform::one_hot(*n));
                    sample_shape.push(*n);
                }
                Transform::Normalize { mean, std } => {
                    let per: usize = sample_shape.iter().product();
                    let (m, s): (Vec<f32>, Vec<f32>) = (
                        mean.iter().map(|&v| v as f32).collect(),
                        std.iter().map(|&v| v as f32).collect(),
                    );
                    if m.len() != 1 && m.len() != per {
                        return Err(RuntimeError::Setup(format!(
                            "{}: `normalize` of field `{}` has {} values, but a sample has {per} elements",
                            path.display(),
                            f.name,
                            m.len()
                        )));
                    }
                    transforms.push(data::Transform::normalize_each(m, s));
                }
            }
        }
        if f.dtype == DType::I32 && !transforms.is_empty() {
            return Err(RuntimeError::Setup(format!(
                "field `{}` is delivered as i32, so it cannot be transformed (scale, one_hot, normalize make floats)",
                f.name
            )));
        }
        let field = Field::new(storage, shape)?.with_source(&path);
        loaded.push((f.name.clone(), field));
        plans.insert(
            f.name.clone(),
            FieldPlan {
                dtype: f.dtype,
                transforms,
                sample_shape,
            },
        );
    }
    Ok(Dataset::new(loaded)?)
}

fn csv_table<'c>(
    cache: &'c mut HashMap<PathBuf, data::CsvTable>,
    path: &Path,
) -> Result<&'c data::CsvTable, RuntimeError> {
    if !cache.contains_key(path) {
        let table = data::csv::load(path, &CsvOptions::default())?;
        cache.insert(path.to_path_buf(), table);
    }
    Ok(&cache[path])
}

impl LoadedData {
    /// Checks that every input of `graph` has a field whose samples fit the
    /// input's type `[B, ...]`.
    pub fn check_inputs(&self, graph: &Graph) -> Result<(), RuntimeError> {
        for (node, name) in graph.inputs() {
            if name.starts_with(nnc_ir::HYPER) {
                continue;
            }
            let ty = graph.ty(node);
            let plan = self.plans.get(name).ok_or_else(|| {
                RuntimeError::Setup(format!(
                    "the data has no field `{name}` for the graph input `{name}`"
                ))
            })?;
            let fits = ty.dtype == plan.dtype
                && ty.rank() == plan.sample_shape.len() + 1
                && ty.shape[1..]
                    .iter()
                    .zip(&plan.sample_shape)
                    .all(|(d, &n)| match d {
                        Dim::Const(c) => *c == n,
                        Dim::Sym(_) => true,
                    })
                && ty.shape.first().is_some_and(|d| matches!(d, Dim::Sym(_)));
            if !fits {
                let mut hint = String::new();
                let want: Vec<String> = ty.shape.iter().skip(1).map(|d| d.to_string()).collect();
                if ty.dtype == plan.dtype && ty.rank() >= 1 {
                    hint = format!("; add `-> reshape([{}])` to the field", want.join(", "));
                }
                return Err(RuntimeError::Setup(format!(
                    "data field `{name}` gives {} samples of shape {:?}, but the graph input `{name}` is {ty} (a batch of samples of shape [{}]){hint}",
                    plan.dtype,
                    plan.sample_shape,
                    want.join(", ")
                )));
            }
        }
        Ok(())
    }

    /// Fills `batch` with samples `indices` of `dataset` for the inputs
    /// `names`, reusing its buffers.
    pub fn fill_batch(
        &self,
        dataset: &Dataset,
        names: &[String],
        indices: &[usize],
        batch: &mut Batch,
    ) -> Result<(), RuntimeError> {
        batch.size = indices.len();
        batch
            .fields
            .retain(|f| names.contains(&f.name) || f.name.starts_with(nnc_ir::HYPER));
        for name in names {
            let plan = self
                .plans
                .get(name)
                .ok_or_else(|| RuntimeError::Setup(format!("the data has no field `{name}`")))?;
            let pos = match batch.fields.iter().position(|f| &f.name == name) {
                Some(p) => p,
                None => {
                    let data = match plan.dtype {
                        DType::I32 => BatchData::I32(Vec::new()),
                        _ => BatchData::F32(Vec::new()),
                    };
                    batch.fields.push(BatchField {
                        name: name.clone(),
                        shape: Vec::new(),
                        data,
                    });
                    batch.fields.len() - 1
                }
            };
            let field = &mut batch.fields[pos];
            field.shape.clear();
            field.shape.push(indices.len());
            field.shape.extend(&plan.sample_shape);
            match &mut field.data {
                BatchData::I32(out) => dataset.gather_i32(name, indices, out)?,
                BatchData::F32(out) => {
                    dataset.gather(name, indices, &plan.transforms, out)?;
                }
            }
        }
        Ok(())
    }
}
