//! From a `DataSpec` to loaded datasets and to the tensors a graph's inputs
//! receive each batch.
//!
//! Every model input and loss target is a data field of the same name.
//! Before any training step runs, each field's per-sample shape and element
//! type (after its transforms) are checked against the graph input they
//! feed, so a mismatch is reported once, clearly, naming the file.

use crate::data::cifar::Cifar;
use crate::data::text::{
    self, ClassNames, FieldVocabulary, TextTable, Vocabularies, Vocabulary, VocabularyOptions,
};
use crate::data::{self, CsvOptions, Dataset, Field, Storage};
use crate::executor::{Batch, BatchData, BatchField};
use crate::RuntimeError;
use nnc_ir::{DType, DataField, DataSpec, Dim, Graph, Source, TestSet, TextFormat, Transform};
use std::collections::HashMap;
use std::path::{Path, PathBuf};

/// The samples of a data block: the training set and, when the block has
/// separate test files, the test set.
pub struct LoadedData {
    pub train: Dataset,
    pub test: Option<Dataset>,
    /// Set when the block says `test = split(f)`: that share of `train`.
    pub test_split: Option<f64>,
    /// The vocabulary or class names of each text field, built from the
    /// training samples (or given, for prediction).
    pub vocabularies: Vocabularies,
    plans: HashMap<String, FieldPlan>,
}

/// Which of the training file's samples a run holds out (as
/// `train::partition` splits them), so that text fields build their
/// vocabularies and class names from the samples trained on alone.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Holdout {
    pub validate: Option<f64>,
    pub seed: u64,
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
/// Text fields build their vocabularies from every sample of the training
/// files; [`load_training`] leaves out the samples a run holds out.
pub fn load(spec: &DataSpec, base: &Path) -> Result<LoadedData, RuntimeError> {
    load_with(spec, base, Vocabularies::new(), None)
}

/// [`load`] for a run that holds out `holdout` (and the block's
/// `test = split(f)`): text vocabularies and class names come from the
/// samples that are trained on.
pub fn load_training(
    spec: &DataSpec,
    base: &Path,
    holdout: Holdout,
) -> Result<LoadedData, RuntimeError> {
    load_with(spec, base, Vocabularies::new(), Some(holdout))
}

/// [`load`] with the text fields encoded by `vocabularies` (those of a
/// checkpoint) rather than by vocabularies built from the data.
pub(crate) fn load_with_vocabularies(
    spec: &DataSpec,
    base: &Path,
    vocabularies: Vocabularies,
) -> Result<LoadedData, RuntimeError> {
    let mut text = TextContext {
        holdout: None,
        test_split: None,
        vocabularies,
        build: false,
    };
    load_all(spec, base, &mut text)
}

fn load_with(
    spec: &DataSpec,
    base: &Path,
    vocabularies: Vocabularies,
    holdout: Option<Holdout>,
) -> Result<LoadedData, RuntimeError> {
    let mut text = TextContext {
        holdout,
        test_split: match &spec.test {
            Some(TestSet::Split(f)) => Some(*f),
            _ => None,
        },
        vocabularies,
        build: true,
    };
    load_all(spec, base, &mut text)
}

/// How text fields get their vocabularies while loading.
struct TextContext {
    holdout: Option<Holdout>,
    test_split: Option<f64>,
    /// Those built so far (a training field's, which the test field of the
    /// same name takes), or given.
    vocabularies: Vocabularies,
    /// Whether the fields being loaded build their vocabularies (training
    /// fields) or take them from `vocabularies` (test fields, prediction).
    build: bool,
}

impl TextContext {
    /// The samples trained on, of a training file of `n` samples.
    fn training(&self, n: usize) -> Result<Vec<usize>, RuntimeError> {
        match self.holdout {
            Some(h) => Ok(crate::train::partition(n, self.test_split, h.validate, h.seed)?.train),
            None => Ok((0..n).collect()),
        }
    }

    /// The vocabulary field `name` takes, when it does not build one.
    fn given(&self, name: &str, path: &Path) -> Result<&FieldVocabulary, RuntimeError> {
        self.vocabularies.get(name).ok_or_else(|| {
            RuntimeError::Setup(format!(
                "{}: field `{name}` reads text, but there is no vocabulary for it: \
                 the training field `{name}` is not a `text` or `text_labels` source",
                path.display()
            ))
        })
    }
}

fn load_all(
    spec: &DataSpec,
    base: &Path,
    text: &mut TextContext,
) -> Result<LoadedData, RuntimeError> {
    let test_fields = match &spec.test {
        Some(TestSet::Fields(fields)) => fields.as_slice(),
        _ => &[],
    };
    let mut cache = Cache::new(spec.fields.iter().chain(test_fields), base)?;
    let mut plans = HashMap::new();
    let train = load_fields(&spec.fields, base, &mut cache, &mut plans, text)?;
    let (test, test_split) = match &spec.test {
        None => (None, None),
        Some(TestSet::Split(f)) => (None, Some(*f)),
        Some(TestSet::Fields(fields)) => {
            let mut test_plans = HashMap::new();
            text.build = false;
            let ds = load_fields(fields, base, &mut cache, &mut test_plans, text)?;
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
        vocabularies: std::mem::take(&mut text.vocabularies),
        plans,
    })
}

/// Files that several fields read, loaded once per `load`: a CSV table
/// gives features and labels, an image folder images and labels, a CIFAR
/// file images and labels.
struct Cache {
    csv: HashMap<PathBuf, data::CsvTable>,
    /// Listed up front for all fields at once, so an archive holding both
    /// the training and the test folder is read only once.
    images: HashMap<PathBuf, data::ImageList>,
    cifar: HashMap<PathBuf, Cifar>,
    /// How many fields still need each CIFAR file's pixels: the last one
    /// takes them instead of copying 150 MB.
    cifar_pixel_uses: HashMap<PathBuf, usize>,
    /// A table read once for its text and its labels.
    text: HashMap<(PathBuf, TextFormat), TextTable>,
}

impl Cache {
    fn new<'f>(
        fields: impl Iterator<Item = &'f DataField>,
        base: &Path,
    ) -> Result<Cache, RuntimeError> {
        let mut image_paths: Vec<PathBuf> = Vec::new();
        let mut cifar_pixel_uses: HashMap<PathBuf, usize> = HashMap::new();
        for f in fields {
            match &f.source {
                Source::Images { path, .. } | Source::ImageLabels { path } => {
                    let path = base.join(path);
                    if !image_paths.contains(&path) {
                        image_paths.push(path);
                    }
                }
                Source::Cifar { path } => {
                    *cifar_pixel_uses.entry(base.join(path)).or_default() += 1
                }
                _ => {}
            }
        }
        let lists = data::images::scan(&image_paths)?;
        Ok(Cache {
            csv: HashMap::new(),
            images: image_paths.into_iter().zip(lists).collect(),
            cifar: HashMap::new(),
            cifar_pixel_uses,
            text: HashMap::new(),
        })
    }

    fn text_table(&mut self, path: &Path, format: TextFormat) -> Result<&TextTable, RuntimeError> {
        let key = (path.to_path_buf(), format);
        if !self.text.contains_key(&key) {
            let table = text::load_table(path, format)?;
            self.text.insert(key.clone(), table);
        }
        Ok(&self.text[&key])
    }

    fn csv_table(&mut self, path: &Path) -> Result<&data::CsvTable, RuntimeError> {
        if !self.csv.contains_key(path) {
            let table = data::csv::load(path, &CsvOptions::default())?;
            self.csv.insert(path.to_path_buf(), table);
        }
        Ok(&self.csv[path])
    }

    fn image_list(&self, path: &Path) -> Result<&data::ImageList, RuntimeError> {
        // `Cache::new` listed every image source of the spec.
        self.images.get(path).ok_or_else(|| {
            RuntimeError::Setup(format!("internal error: {} was not listed", path.display()))
        })
    }

    fn cifar(&mut self, path: &Path) -> Result<&mut Cifar, RuntimeError> {
        if !self.cifar.contains_key(path) {
            let loaded = data::cifar::load(path)?;
            self.cifar.insert(path.to_path_buf(), loaded);
        }
        self.cifar.get_mut(path).ok_or_else(|| {
            RuntimeError::Setup(format!("internal error: {} was not loaded", path.display()))
        })
    }

    fn cifar_pixels(&mut self, path: &Path) -> Result<Vec<u8>, RuntimeError> {
        let remaining = self.cifar_pixel_uses.get_mut(path).map(|n| {
            *n = n.saturating_sub(1);
            *n
        });
        let cifar = self.cifar(path)?;
        Ok(match remaining {
            Some(0) => std::mem::take(&mut cifar.pixels),
            _ => cifar.pixels.clone(),
        })
    }
}

fn load_fields(
    fields: &[DataField],
    base: &Path,
    cache: &mut Cache,
    plans: &mut HashMap<String, FieldPlan>,
    text: &mut TextContext,
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
                let table = cache.csv_table(&path)?;
                (
                    Storage::F32(table.columns(*from..*to)?),
                    vec![to - from],
                    path,
                )
            }
            Source::CsvColumn { path, column } => {
                let path = base.join(path);
                let table = cache.csv_table(&path)?;
                (Storage::I32(table.labels(*column)?), Vec::new(), path)
            }
            Source::Images {
                path,
                grayscale,
                size,
            } => {
                let path = base.join(path);
                let options = data::ImageOptions {
                    grayscale: *grayscale,
                    size: *size,
                };
                let (pixels, shape) = cache.image_list(&path)?.decode(&options)?;
                (Storage::U8(pixels), shape.to_vec(), path)
            }
            Source::ImageLabels { path } => {
                let path = base.join(path);
                let labels = cache.image_list(&path)?.labels();
                (Storage::I32(labels), Vec::new(), path)
            }
            Source::Cifar { path } => {
                let path = base.join(path);
                let pixels = cache.cifar_pixels(&path)?;
                (Storage::U8(pixels), data::cifar::SHAPE.to_vec(), path)
            }
            Source::CifarLabels { path } => {
                let path = base.join(path);
                let labels = cache.cifar(&path)?.labels.clone();
                (Storage::U8(labels), Vec::new(), path)
            }
            Source::Text {
                path,
                format,
                column,
                length,
                min_count,
                max_size,
                ngrams,
            } => {
                let path = base.join(path);
                let table = cache.text_table(&path, *format)?;
                let asked = VocabularyOptions {
                    min_count: min_count.unwrap_or(1),
                    max_size: *max_size,
                    ngrams: ngrams.unwrap_or(1),
                };
                let vocabulary = if text.build {
                    let col = table.column(column)?;
                    let tokens = text::tokenize_column(table, col, asked.ngrams)?;
                    let training = text.training(table.rows())?;
                    let v = Vocabulary::build(&tokens, &training, asked, &path, column)?;
                    let ids = v.encode(&tokens, *length);
                    text.vocabularies
                        .insert(f.name.clone(), FieldVocabulary::Tokens(v));
                    ids
                } else {
                    let FieldVocabulary::Tokens(v) = text.given(&f.name, &path)? else {
                        return Err(not_the_same_kind(&path, &f.name, "text", "text_labels"));
                    };
                    let built = v.options;
                    let differs = [
                        (
                            "min_count",
                            min_count.map(|m| m != built.min_count),
                            built.min_count.to_string(),
                        ),
                        (
                            "max_size",
                            max_size.map(|m| Some(m) != built.max_size),
                            built.max_size.map_or("no limit".into(), |m| m.to_string()),
                        ),
                        (
                            "ngrams",
                            ngrams.map(|n| n != built.ngrams),
                            built.ngrams.to_string(),
                        ),
                    ];
                    if let Some((option, _, was)) =
                        differs.into_iter().find(|(_, d, _)| *d == Some(true))
                    {
                        return Err(RuntimeError::Setup(format!(
                            "{}: field `{}` gives its own `{option}`, but its vocabulary was built \
                             from the training samples with {option} {was}; leave it out",
                            path.display(),
                            f.name
                        )));
                    }
                    let col = table.column(column)?;
                    let tokens = text::tokenize_column(table, col, built.ngrams)?;
                    v.encode(&tokens, *length)
                };
                (Storage::I32(vocabulary), vec![*length], path)
            }
            Source::TextLabels {
                path,
                format,
                column,
            } => {
                let path = base.join(path);
                let table = cache.text_table(&path, *format)?;
                let col = table.column(column)?;
                let labels = if text.build {
                    let training = text.training(table.rows())?;
                    let classes = ClassNames::build(table, col, &training)?;
                    let labels = classes.encode(table, col)?;
                    text.vocabularies
                        .insert(f.name.clone(), FieldVocabulary::Classes(classes));
                    labels
                } else {
                    let FieldVocabulary::Classes(classes) = text.given(&f.name, &path)? else {
                        return Err(not_the_same_kind(&path, &f.name, "text_labels", "text"));
                    };
                    classes.encode(table, col)?
                };
                (Storage::I32(labels), Vec::new(), path)
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
                    transforms.push(normalize(mean, std, &sample_shape, &path, &f.name)?);
                }
            }
        }
        if f.dtype == DType::F64 && !transforms.is_empty() {
            return Err(RuntimeError::Setup(format!(
                "field `{}` is delivered as f64, which takes no transforms (scale, one_hot, normalize compute in f32): transform it in the model",
                f.name
            )));
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

fn not_the_same_kind(path: &Path, field: &str, is: &str, was: &str) -> RuntimeError {
    RuntimeError::Setup(format!(
        "{}: field `{field}` is a `{is}` source, but the training field `{field}` is `{was}`",
        path.display()
    ))
}

/// `normalize(mean, std)` for samples of `shape` (as they are at that
/// point of the pipeline): one value for all elements, one per element, or
/// — for samples of rank 2 or more — one per channel, the first axis, as
/// torchvision's `Normalize` does for `[C, H, W]` images.
fn normalize(
    mean: &[f64],
    std: &[f64],
    shape: &[usize],
    path: &Path,
    field: &str,
) -> Result<data::Transform, RuntimeError> {
    let (m, s): (Vec<f32>, Vec<f32>) = (
        mean.iter().map(|&v| v as f32).collect(),
        std.iter().map(|&v| v as f32).collect(),
    );
    let elements: usize = shape.iter().product();
    let channels = shape.first().copied().filter(|_| shape.len() >= 2);
    let n = m.len();
    if n == 1 || n == elements {
        return Ok(data::Transform::normalize_each(m, s));
    }
    if Some(n) == channels {
        return Ok(data::Transform::normalize_channels(m, s));
    }
    let accepted = match channels {
        Some(c) => format!("1 (for all), {c} (one per channel) or {elements} (one per element)"),
        None => format!("1 (for all) or {elements} (one per element)"),
    };
    Err(RuntimeError::Setup(format!(
        "{}: `normalize` of field `{field}` has {n} values, but samples of shape {shape:?} take {accepted}",
        path.display()
    )))
}

impl LoadedData {
    /// Checks that every input of `graph` has a field whose samples fit the
    /// input's type `[B, ...]`.
    pub fn check_inputs(&self, graph: &Graph) -> Result<(), RuntimeError> {
        for (node, name) in graph.inputs() {
            if nnc_ir::module::is_loop_input(name) {
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
            .retain(|f| names.contains(&f.name) || nnc_ir::module::is_loop_input(&f.name));
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
                        DType::F64 => BatchData::F64(Vec::new()),
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
                BatchData::F64(out) => dataset.gather_f64(name, indices, out)?,
                BatchData::F32(out) => {
                    dataset.gather(name, indices, &plan.transforms, out)?;
                }
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::data::testutil::TempDir;
    use nnc_ir::DataField;

    fn field(name: &str, dtype: DType, source: Source, transforms: Vec<Transform>) -> DataField {
        DataField {
            name: name.into(),
            dtype,
            source,
            transforms,
        }
    }

    fn spec(fields: Vec<DataField>, test: Option<Vec<DataField>>) -> DataSpec {
        DataSpec {
            name: "D".into(),
            fields,
            test: test.map(TestSet::Fields),
        }
    }

    /// `root/<class>/<i>.png`, 2x2 RGB, every pixel (10 * i, 100, 200).
    fn image_folder(root: &Path, classes: &[(&str, usize)]) {
        for (class, n) in classes {
            std::fs::create_dir_all(root.join(class)).unwrap();
            for i in 0..*n {
                let img = image::RgbImage::from_pixel(2, 2, image::Rgb([10 * i as u8, 100, 200]));
                img.save(root.join(class).join(format!("{i}.png"))).unwrap();
            }
        }
    }

    fn gather(data: &LoadedData, ds: &Dataset, name: &str) -> Vec<f32> {
        let mut out = Vec::new();
        let indices: Vec<usize> = (0..ds.len()).collect();
        ds.gather(name, &indices, &data.plans[name].transforms, &mut out)
            .unwrap();
        out
    }

    #[test]
    fn image_folders_load_with_labels_and_per_channel_normalize() {
        let dir = TempDir::new("loader-images");
        image_folder(&dir.path().join("set/train"), &[("b", 1), ("a", 2)]);
        image_folder(&dir.path().join("set/test"), &[("a", 1), ("b", 1)]);
        let images = |split: &str| Source::Images {
            path: format!("set/{split}"),
            grayscale: false,
            size: None,
        };
        let labels = |split: &str| Source::ImageLabels {
            path: format!("set/{split}"),
        };
        let norm = Transform::Normalize {
            mean: vec![0.0, 100.0, 100.0],
            std: vec![10.0, 1.0, 50.0],
        };
        let fields = |split: &str| {
            vec![
                field("image", DType::F32, images(split), vec![norm.clone()]),
                field("label", DType::I32, labels(split), vec![]),
            ]
        };
        // Paths resolve against the base folder, like every other source.
        let data = load(&spec(fields("train"), Some(fields("test"))), dir.path()).unwrap();
        assert_eq!(data.plans["image"].sample_shape, [3, 2, 2]);
        assert_eq!(data.plans["label"].sample_shape, [] as [usize; 0]);
        let mut got = Vec::new();
        data.train
            .gather_i32("label", &[0, 1, 2], &mut got)
            .unwrap();
        assert_eq!(got, [0, 0, 1]);
        let x = gather(&data, &data.train, "image");
        // Sample 1 is a/1.png: red 10 -> 1, green 100 -> 0, blue 200 -> 2.
        assert_eq!(&x[12..24], [[1.0; 4], [0.0; 4], [2.0; 4]].concat());
        let test = data.test.as_ref().unwrap();
        assert_eq!(test.len(), 2);

        // A list that fits neither the channels nor the elements.
        let bad = Transform::Normalize {
            mean: vec![0.0; 2],
            std: vec![1.0; 2],
        };
        let fields = vec![
            field("image", DType::F32, images("train"), vec![bad]),
            field("label", DType::I32, labels("train"), vec![]),
        ];
        let err = load(&spec(fields, None), dir.path()).err().unwrap();
        assert_eq!(
            err.to_string(),
            format!(
                "{}: `normalize` of field `image` has 2 values, but samples of shape [3, 2, 2] \
                 take 1 (for all), 3 (one per channel) or 12 (one per element)",
                dir.path().join("set/train").display()
            )
        );

        let fields = vec![field("image", DType::F32, images("valid"), vec![])];
        let err = load(&spec(fields, None), dir.path()).err().unwrap();
        let missing = dir.path().join("set/valid");
        assert!(
            err.to_string()
                .starts_with(&format!("{}: cannot read folder: ", missing.display())),
            "{err}"
        );
    }

    #[test]
    fn text_vocabularies_come_from_the_samples_trained_on() {
        let dir = TempDir::new("loader-text");
        let mut table = String::from("C\tT\nd\tstring\nclass\t\n");
        for i in 0..10 {
            let class = if i < 9 { ["a", "b"][i % 2] } else { "c" };
            table.push_str(&format!("{class}\tcommon w{i}\n"));
        }
        dir.write("t.tab", table.as_bytes());
        let text = Source::Text {
            path: "t.tab".into(),
            format: TextFormat::Tab,
            column: nnc_ir::TextColumn::Name("T".into()),
            length: 3,
            min_count: None,
            max_size: None,
            ngrams: None,
        };
        let labels = Source::TextLabels {
            path: "t.tab".into(),
            format: TextFormat::Tab,
            column: nnc_ir::TextColumn::Index(0),
        };
        let fields = vec![
            field("tokens", DType::I32, text, vec![]),
            field("label", DType::I32, labels, vec![]),
        ];
        let mut spec = spec(fields, None);
        let tokens = |data: &LoadedData| match &data.vocabularies["tokens"] {
            FieldVocabulary::Tokens(v) => v.words.clone(),
            other => panic!("{other:?}"),
        };
        // Every sample counts without a holdout.
        let data = load(&spec, dir.path()).unwrap();
        assert_eq!(tokens(&data).len(), 11);
        assert_eq!(data.plans["tokens"].sample_shape, [3]);
        let mut got = Vec::new();
        data.train.gather_i32("tokens", &[9], &mut got).unwrap();
        assert_eq!(got, [2, 12, 0], "`common` first, then w0..w9 by the word");

        // Held out by `test = split(0.3)` and `validate`: those samples'
        // words are unknown, and the class only they hold is an error.
        spec.test = Some(TestSet::Split(0.3));
        let holdout = Holdout {
            validate: Some(0.2),
            seed: 5,
        };
        let parts = crate::train::partition(10, Some(0.3), Some(0.2), 5).unwrap();
        let trained: Vec<String> = parts.train.iter().map(|i| format!("w{i}")).collect();
        let result = load_training(&spec, dir.path(), holdout);
        if parts.train.contains(&9) {
            let data = result.unwrap();
            let mut words = tokens(&data);
            assert_eq!(words.remove(0), "common");
            let mut expected = trained.clone();
            expected.sort();
            assert_eq!(words, expected);
        } else {
            let err = result.err().unwrap().to_string();
            assert!(
                err.ends_with(
                    ":13: class `c` is not among the classes of the training samples (2: `a`, `b`)"
                ),
                "{err}"
            );
            // Without the odd class, the vocabulary is the trained samples'.
            let mut table = std::fs::read_to_string(dir.path().join("t.tab")).unwrap();
            table = table.replace("c\tcommon w9", "a\tcommon w9");
            dir.write("t.tab", table.as_bytes());
            let data = load_training(&spec, dir.path(), holdout).unwrap();
            let mut words = tokens(&data);
            assert_eq!(words.remove(0), "common");
            let mut expected = trained;
            expected.sort();
            assert_eq!(words, expected);
        }
    }

    #[test]
    fn cifar_files_load_once_for_images_and_labels() {
        let dir = TempDir::new("loader-cifar");
        let mut bytes = Vec::new();
        for label in [3u8, 7] {
            bytes.push(label);
            bytes.extend(std::iter::repeat_n(label, data::cifar::PIXELS));
        }
        dir.write("batch.bin", &bytes);
        let source = Source::Cifar {
            path: "batch.bin".into(),
        };
        let fields = vec![
            field("image", DType::F32, source.clone(), vec![]),
            // A second use of the same pixels must not find them taken.
            field(
                "flat",
                DType::F32,
                source,
                vec![Transform::Reshape(vec![3072])],
            ),
            field(
                "label",
                DType::I32,
                Source::CifarLabels {
                    path: "batch.bin".into(),
                },
                vec![],
            ),
        ];
        let data = load(&spec(fields, None), dir.path()).unwrap();
        assert_eq!(data.plans["image"].sample_shape, [3, 32, 32]);
        assert_eq!(data.plans["flat"].sample_shape, [3072]);
        let image = gather(&data, &data.train, "image");
        assert_eq!(image, gather(&data, &data.train, "flat"));
        assert_eq!(image[3072], 7.0);
        let mut labels = Vec::new();
        data.train
            .gather_i32("label", &[1, 0], &mut labels)
            .unwrap();
        assert_eq!(labels, [7, 3]);
    }
}
