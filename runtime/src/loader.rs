//! From a `DataSpec` to loaded datasets and to the tensors a graph's inputs
//! receive each batch.
//!
//! Every model input and loss target is a data field of the same name.
//! Before any training step runs, each field's per-sample shape and element
//! type (after its transforms) are checked against the graph input they
//! feed, so a mismatch is reported once, clearly, naming the file.

use crate::data::augment::{ImageAugment, Mode};
use crate::data::cifar::Cifar;
use crate::data::fit::{Accumulator, Fitted, FittedStats, Per};
use crate::data::text::{
    self, ClassNames, FieldVocabulary, TextTable, Vocabularies, Vocabulary, VocabularyOptions,
};
use crate::data::{self, CsvOptions, Dataset, Field, Storage};
use crate::executor::{Batch, BatchData, BatchField};
use crate::RuntimeError;
use nnc_ir::{
    DType, DataField, DataSpec, Dim, FitAxis, Graph, Source, TestSet, TextFormat, Transform,
};
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::mpsc::{self, Receiver, Sender, SyncSender};
use std::sync::Arc;
use std::thread::JoinHandle;

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
    /// The statistics of each field's `standardize` and `minmax`, fitted
    /// on the training samples (or given, for prediction).
    pub fitted: FittedStats,
    plans: HashMap<String, FieldPlan>,
}

/// Which of the training file's samples a run trains on, so that text
/// fields build their vocabularies and class names, and `standardize` and
/// `minmax` their statistics, from those samples alone.
#[derive(Debug, Clone, PartialEq)]
pub enum Holdout {
    /// All but those `train::partition` holds out for `validate` (and the
    /// block's `test = split(f)`) with `seed`.
    Split { validate: Option<f64>, seed: u64 },
    /// Exactly these samples: one fold's training samples of `kfold`,
    /// whose validated fold must not leak into what is fitted.
    Samples(Vec<usize>),
}

/// How one field becomes a batch tensor.
#[derive(Debug, Clone)]
struct FieldPlan {
    dtype: DType,
    transforms: Vec<data::Transform>,
    /// Per-sample shape after the transforms.
    sample_shape: Vec<usize>,
    /// The fitted transforms: where each stands in `transforms` (an
    /// identity until fitted) and what it fits.
    fits: Vec<PendingFit>,
}

#[derive(Debug, Clone)]
struct PendingFit {
    position: usize,
    standardize: bool,
    per: Per,
    features: usize,
    sample_len: usize,
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
    load_for_prediction(spec, base, vocabularies, FittedStats::new())
}

/// [`load`] for samples to predict: text fields are encoded by
/// `vocabularies` and fitted transforms apply `fitted` (a checkpoint's),
/// never anything built from these samples.
pub(crate) fn load_for_prediction(
    spec: &DataSpec,
    base: &Path,
    vocabularies: Vocabularies,
    fitted: FittedStats,
) -> Result<LoadedData, RuntimeError> {
    let mut text = TextContext {
        holdout: None,
        test_split: None,
        vocabularies,
        build: false,
        fitted,
        fit: Fit::Given,
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
        fitted: FittedStats::new(),
        fit: Fit::Build,
    };
    load_all(spec, base, &mut text)
}

/// Where a field's fitted statistics come from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Fit {
    /// Computed from the samples trained on.
    Build,
    /// Taken from `TextContext::fitted` (a checkpoint's).
    Given,
    /// Not needed: a test field's own pipeline only checks its shape, its
    /// batches go through the training field's.
    Skip,
}

/// How the fields get what is built on the samples trained on (text
/// vocabularies and class names, fitted statistics) while loading.
struct TextContext {
    holdout: Option<Holdout>,
    test_split: Option<f64>,
    /// Those built so far (a training field's, which the test field of the
    /// same name takes), or given.
    vocabularies: Vocabularies,
    /// Whether the fields being loaded build their vocabularies (training
    /// fields) or take them from `vocabularies` (test fields, prediction).
    build: bool,
    /// Fitted statistics built so far, or given.
    fitted: FittedStats,
    fit: Fit,
}

impl TextContext {
    /// The samples trained on, of a training file of `n` samples.
    fn training(&self, n: usize) -> Result<Vec<usize>, RuntimeError> {
        match &self.holdout {
            Some(Holdout::Split { validate, seed }) => {
                Ok(crate::train::partition(n, self.test_split, *validate, *seed)?.train)
            }
            Some(Holdout::Samples(samples)) => {
                if let Some(&past) = samples.iter().find(|&&i| i >= n) {
                    return Err(RuntimeError::Setup(format!(
                        "sample {past} is trained on, but the training file holds {n} samples"
                    )));
                }
                Ok(samples.clone())
            }
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
            text.fit = Fit::Skip;
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
        fitted: std::mem::take(&mut text.fitted),
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
        let (storage, shape, path) = read_source(f, base, cache, text)?;
        loaded.push(plan_field(f, storage, shape, &path, plans)?);
    }
    let dataset = Dataset::new(loaded)?;
    fit_fields(fields, &dataset, plans, text)?;
    Ok(dataset)
}

/// Samples already in memory for the one field `field` (its source is not
/// read): `storage` holds samples of `shape`, which came from `origin`
/// (named in errors). They go through the field's transforms with the
/// fitted statistics `fitted` (a checkpoint's), exactly as the samples of
/// a file do: the one path of `--predict` and `nnc serve`.
pub(crate) fn samples_for_prediction(
    field: &DataField,
    storage: Storage,
    shape: Vec<usize>,
    origin: &Path,
    fitted: FittedStats,
) -> Result<LoadedData, RuntimeError> {
    let mut text = TextContext {
        holdout: None,
        test_split: None,
        vocabularies: Vocabularies::new(),
        build: false,
        fitted,
        fit: Fit::Given,
    };
    let mut plans = HashMap::new();
    let fields = std::slice::from_ref(field);
    let loaded = plan_field(field, storage, shape, origin, &mut plans)?;
    let train = Dataset::new([loaded])?;
    fit_fields(fields, &train, &mut plans, &mut text)?;
    Ok(LoadedData {
        train,
        test: None,
        test_split: None,
        vocabularies: text.vocabularies,
        fitted: text.fitted,
        plans,
    })
}

/// The samples of `f`'s source, their shape and the file they came from.
fn read_source(
    f: &DataField,
    base: &Path,
    cache: &mut Cache,
    text: &mut TextContext,
) -> Result<(Storage, Vec<usize>, PathBuf), RuntimeError> {
    Ok(match &f.source {
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
    })
}

/// How field `f`, whose samples of `shape` in `storage` came from `path`,
/// becomes batches (its plan, put in `plans`), and the loaded field.
fn plan_field(
    f: &DataField,
    storage: Storage,
    shape: Vec<usize>,
    path: &Path,
    plans: &mut HashMap<String, FieldPlan>,
) -> Result<(String, Field), RuntimeError> {
    let mut transforms = Vec::new();
    let mut sample_shape = shape.clone();
    let mut fits = Vec::new();
    let located = |message: String| {
        RuntimeError::Setup(format!("{}: field `{}`: {message}", path.display(), f.name))
    };
    for (stage, t) in f.transforms.iter().enumerate() {
        match t {
            Transform::Standardize { per } | Transform::MinMax { per } => {
                let sample_len: usize = sample_shape.iter().product();
                let features = match per {
                    FitAxis::Element => sample_len,
                    FitAxis::Channel if sample_shape.len() >= 2 => sample_shape[0],
                    FitAxis::Channel => {
                        return Err(located(format!(
                            "`per: \"channel\"` takes the first axis of samples of rank 2 or more \
                                 as channels, but these have shape {sample_shape:?}"
                        )))
                    }
                };
                fits.push(PendingFit {
                    position: transforms.len(),
                    standardize: matches!(t, Transform::Standardize { .. }),
                    per: Per::from(*per),
                    features,
                    sample_len,
                });
                transforms.push(data::Transform::normalize(0.0, 1.0));
            }
            Transform::Augment(op) => {
                let augment =
                    ImageAugment::new(op.clone(), &sample_shape, stage).map_err(located)?;
                sample_shape = augment.output_shape(sample_shape.len());
                transforms.push(data::Transform::Augment(augment));
            }
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
                transforms.push(normalize(mean, std, &sample_shape, path, &f.name)?);
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
    let field = Field::new(storage, shape)?.with_source(path);
    plans.insert(
        f.name.clone(),
        FieldPlan {
            dtype: f.dtype,
            transforms,
            sample_shape,
            fits,
        },
    );
    Ok((f.name.clone(), field))
}

/// Puts the fitted statistics of `fields`' `standardize` and `minmax` in
/// place: fitted on the samples trained on, or given, as `text` says.
fn fit_fields(
    fields: &[DataField],
    dataset: &Dataset,
    plans: &mut HashMap<String, FieldPlan>,
    text: &mut TextContext,
) -> Result<(), RuntimeError> {
    for f in fields {
        let plan = plans.get_mut(&f.name).filter(|p| !p.fits.is_empty());
        let (Some(plan), Some(path)) = (plan, dataset.field(&f.name).and_then(Field::source))
        else {
            continue;
        };
        match text.fit {
            Fit::Skip => {}
            Fit::Build => {
                let training = text.training(dataset.len())?;
                let fitted = fit_plan(dataset, &f.name, plan, &training)?;
                text.fitted.insert(f.name.clone(), fitted);
            }
            Fit::Given => {
                let given = text.fitted.get(&f.name).ok_or_else(|| {
                    RuntimeError::Setup(format!(
                        "{}: field `{}` is standardized or min-max scaled by statistics of the \
                         training samples, but the checkpoint holds none for it; a run that trains \
                         with `--save` writes them",
                        path.display(),
                        f.name
                    ))
                })?;
                apply_fitted(plan, &f.name, given)?;
            }
        }
    }
    Ok(())
}

/// Fits each of `plan`'s fitted transforms in order on the samples
/// `training` of `dataset` (as they are at that point of the pipeline,
/// without augmentation), and puts them in place.
fn fit_plan(
    dataset: &Dataset,
    name: &str,
    plan: &mut FieldPlan,
    training: &[usize],
) -> Result<Vec<Fitted>, RuntimeError> {
    // Chunks keep the memory a batch's, not the training set's.
    const CHUNK: usize = 512;
    let mut fitted = Vec::with_capacity(plan.fits.len());
    let mut buffer = Vec::new();
    for fit in &plan.fits {
        let mut acc = Accumulator::new(fit.per, fit.sample_len, fit.features);
        let before = &plan.transforms[..fit.position];
        for chunk in training.chunks(CHUNK) {
            dataset.gather(name, chunk, before, &mut buffer)?;
            acc.add(&buffer);
        }
        let stats = match fit.standardize {
            true => acc.standardize(),
            false => acc.minmax(),
        };
        plan.transforms[fit.position] = stats.transform();
        fitted.push(stats);
    }
    Ok(fitted)
}

/// Puts `given` statistics (a checkpoint's) in place of `plan`'s fitted
/// transforms, which they must match one for one.
fn apply_fitted(plan: &mut FieldPlan, name: &str, given: &[Fitted]) -> Result<(), RuntimeError> {
    let describe = |kind: &str, per: Per, features: usize| {
        let per = match per {
            Per::Element => "element",
            Per::Channel => "channel",
        };
        format!("`{kind}` per {per} over {features} values")
    };
    let planned: Vec<String> = plan
        .fits
        .iter()
        .map(|f| {
            let kind = if f.standardize {
                "standardize"
            } else {
                "minmax"
            };
            describe(kind, f.per, f.features)
        })
        .collect();
    let saved: Vec<String> = given
        .iter()
        .map(|g| describe(g.name(), g.per(), g.features()))
        .collect();
    if planned != saved {
        return Err(RuntimeError::Setup(format!(
            "the fitted statistics saved for field `{name}` ({}) do not fit its transforms ({})",
            saved.join(", "),
            planned.join(", ")
        )));
    }
    for (fit, stats) in plan.fits.iter().zip(given) {
        plan.transforms[fit.position] = stats.transform();
    }
    Ok(())
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
    /// Applies `fitted` (a checkpoint's statistics) instead of those fitted
    /// now: weights mean something only under the statistics they were
    /// trained with. Fields absent from `fitted` keep theirs (a
    /// checkpoint written before the field had a fitted transform is taken
    /// on trust).
    pub fn use_fitted(&mut self, fitted: &FittedStats) -> Result<(), RuntimeError> {
        for (name, given) in fitted {
            let Some(plan) = self.plans.get_mut(name) else {
                continue;
            };
            apply_fitted(plan, name, given)?;
            self.fitted.insert(name.clone(), given.clone());
        }
        Ok(())
    }

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
        fill(&self.plans, dataset, names, indices, Mode::Evaluate, batch)
    }

    /// The batches of one training epoch, `order` cut into `batch_size`
    /// pieces, filled (gathered, transformed, augmented for `mode`) on
    /// `workers` threads ahead of the training step: worker `w` fills
    /// batches `w`, `w + workers`, ... and each holds one finished batch
    /// while it waits, so the next batch is ready when a step ends. The
    /// batches are exactly those of [`LoadedData::fill_batch_mode`] in
    /// order, whatever the number of workers.
    pub fn prefetch(
        &self,
        dataset: &Dataset,
        names: &[String],
        order: &[usize],
        batch_size: usize,
        mode: Mode,
        workers: usize,
    ) -> Prefetch {
        let shared = Arc::new(PrefetchJob {
            plans: self.plans.clone(),
            dataset: dataset.clone(),
            names: names.to_vec(),
            order: order.to_vec(),
            batch_size: batch_size.max(1),
            mode,
        });
        let batches = order.len().div_ceil(batch_size.max(1));
        let workers = workers.clamp(1, batches.max(1));
        let mut prefetch = Prefetch {
            ready: Vec::with_capacity(workers),
            spare: Vec::with_capacity(workers),
            handles: Vec::with_capacity(workers),
            next: 0,
            fallback: Arc::clone(&shared),
        };
        for worker in 0..workers {
            // Capacity 0: a worker hands its batch over only when the
            // step asks, so at most one waits per worker.
            let (ready_tx, ready_rx) = mpsc::sync_channel(0);
            let (spare_tx, spare_rx) = mpsc::channel();
            let job = Arc::clone(&shared);
            let handle = std::thread::Builder::new()
                .name(format!("nnc-batches-{worker}"))
                .spawn(move || job.run(worker, workers, batches, &ready_tx, &spare_rx));
            match handle {
                Ok(h) => prefetch.handles.push(h),
                // No thread: the step fills its batches itself (see `next`).
                Err(_) => break,
            }
            prefetch.ready.push(ready_rx);
            prefetch.spare.push(spare_tx);
        }
        prefetch
    }

    /// [`LoadedData::fill_batch`] for a training step of `mode`:
    /// augmentations draw from their (seed, epoch, sample) streams.
    pub fn fill_batch_mode(
        &self,
        dataset: &Dataset,
        names: &[String],
        indices: &[usize],
        mode: Mode,
        batch: &mut Batch,
    ) -> Result<(), RuntimeError> {
        fill(&self.plans, dataset, names, indices, mode, batch)
    }
}

/// What the batch-preparing threads of one epoch share.
struct PrefetchJob {
    plans: HashMap<String, FieldPlan>,
    dataset: Dataset,
    names: Vec<String>,
    order: Vec<usize>,
    batch_size: usize,
    mode: Mode,
}

impl PrefetchJob {
    fn indices(&self, k: usize) -> &[usize] {
        let start = k * self.batch_size;
        let end = (start + self.batch_size).min(self.order.len());
        &self.order[start..end]
    }

    fn fill(&self, k: usize, batch: &mut Batch) -> Result<(), RuntimeError> {
        let indices = self.indices(k);
        fill(
            &self.plans,
            &self.dataset,
            &self.names,
            indices,
            self.mode,
            batch,
        )
    }

    fn run(
        &self,
        worker: usize,
        workers: usize,
        batches: usize,
        ready: &SyncSender<Result<Batch, RuntimeError>>,
        spare: &Receiver<Batch>,
    ) {
        for k in (worker..batches).step_by(workers) {
            let mut batch = spare.try_recv().unwrap_or_default();
            let filled = self.fill(k, &mut batch).map(|()| batch);
            let failed = filled.is_err();
            // The step stopped listening (a step limit, an error): done.
            if ready.send(filled).is_err() || failed {
                return;
            }
        }
    }
}

/// An epoch's batches, filled ahead by worker threads
/// ([`LoadedData::prefetch`]). Dropping it stops the workers.
pub struct Prefetch {
    ready: Vec<Receiver<Result<Batch, RuntimeError>>>,
    spare: Vec<Sender<Batch>>,
    handles: Vec<JoinHandle<()>>,
    next: usize,
    /// Fills the batches on the calling thread when no worker could start.
    fallback: Arc<PrefetchJob>,
}

impl Prefetch {
    /// Puts the next batch of the epoch in `batch` (its old buffers go
    /// back to the worker for reuse). Inputs the loop feeds itself
    /// (`hyper.*`, the random key) must be set again afterwards.
    pub fn next_into(&mut self, batch: &mut Batch) -> Result<(), RuntimeError> {
        let k = self.next;
        self.next += 1;
        if self.ready.is_empty() {
            return self.fallback.fill(k, batch);
        }
        let worker = k % self.ready.len();
        let mut filled = self.ready[worker].recv().map_err(|_| {
            RuntimeError::Setup(format!(
                "internal error: the thread preparing batch {} stopped",
                k + 1
            ))
        })??;
        std::mem::swap(batch, &mut filled);
        // A worker that has finished no longer takes buffers back.
        let _ = self.spare[worker].send(filled);
        Ok(())
    }
}

impl Drop for Prefetch {
    fn drop(&mut self) {
        // Closing the channels wakes a worker waiting to hand a batch over.
        self.ready.clear();
        self.spare.clear();
        for handle in self.handles.drain(..) {
            let _ = handle.join();
        }
    }
}

/// Fills `batch` with samples `indices` of `dataset` for the inputs
/// `names` as `plans` say, reusing its buffers.
fn fill(
    plans: &HashMap<String, FieldPlan>,
    dataset: &Dataset,
    names: &[String],
    indices: &[usize],
    mode: Mode,
    batch: &mut Batch,
) -> Result<(), RuntimeError> {
    {
        batch.size = indices.len();
        batch
            .fields
            .retain(|f| names.contains(&f.name) || nnc_ir::module::is_loop_input(&f.name));
        for name in names {
            let plan = plans
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
                    dataset.gather_mode(name, indices, &plan.transforms, mode, out)?;
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
    use crate::data::text::Vocabularies;
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
        let holdout = Holdout::Split {
            validate: Some(0.2),
            seed: 5,
        };
        let parts = crate::train::partition(10, Some(0.3), Some(0.2), 5).unwrap();
        let trained: Vec<String> = parts.train.iter().map(|i| format!("w{i}")).collect();
        let result = load_training(&spec, dir.path(), holdout.clone());
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

    /// `n` CIFAR records, pixel `k` of image `i` = `(7 * i + k) % 256`
    /// (no symmetry, so every flip and crop shows), label `i % 10`.
    fn cifar_records(dir: &TempDir, n: usize) {
        let mut bytes = Vec::new();
        for i in 0..n {
            bytes.push((i % 10) as u8);
            bytes.extend((0..data::cifar::PIXELS).map(|k| ((7 * i + k) % 256) as u8));
        }
        dir.write("batch.bin", &bytes);
    }

    fn augmented_cifar(dir: &TempDir, augments: Vec<nnc_ir::Augment>) -> LoadedData {
        let mut transforms = vec![Transform::Scale(1.0 / 255.0)];
        transforms.extend(augments.into_iter().map(Transform::Augment));
        transforms.push(Transform::Normalize {
            mean: vec![0.5],
            std: vec![0.25],
        });
        let fields = vec![
            field(
                "image",
                DType::F32,
                Source::Cifar {
                    path: "batch.bin".into(),
                },
                transforms,
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
        load(&spec(fields, None), dir.path()).unwrap()
    }

    fn crop_and_flip() -> Vec<nnc_ir::Augment> {
        vec![
            nnc_ir::Augment::RandomCrop {
                size: [32, 32],
                padding: 4,
            },
            nnc_ir::Augment::Flip {
                horizontal: true,
                p: 0.5,
            },
        ]
    }

    fn image_of(batch: &Batch) -> Vec<f32> {
        match &batch
            .fields
            .iter()
            .find(|f| f.name == "image")
            .unwrap()
            .data
        {
            BatchData::F32(v) => v.clone(),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn augmentation_applies_to_training_batches_only_and_replays_from_the_seed() {
        let dir = TempDir::new("loader-augment");
        cifar_records(&dir, 6);
        let data = augmented_cifar(&dir, crop_and_flip());
        let plain = augmented_cifar(&dir, Vec::new());
        let names = vec!["image".to_string(), "label".to_string()];
        let indices = [4, 1, 5];
        let fill = |data: &LoadedData, mode: Mode| {
            let mut batch = Batch::default();
            data.fill_batch_mode(&data.train, &names, &indices, mode, &mut batch)
                .unwrap();
            image_of(&batch)
        };
        let mut batch = Batch::default();
        data.fill_batch(&data.train, &names, &indices, &mut batch)
            .unwrap();
        // Evaluation, validation, test and prediction all fill this way.
        assert_eq!(image_of(&batch), fill(&plain, Mode::Evaluate));
        assert_eq!(fill(&data, Mode::Evaluate), fill(&plain, Mode::Evaluate));
        let train = |seed, epoch| fill(&data, Mode::Train { seed, epoch });
        assert_eq!(train(1, 1), train(1, 1));
        assert_ne!(train(1, 1), fill(&plain, Mode::Evaluate));
        assert_ne!(train(1, 1), train(1, 2), "another epoch, other crops");
        assert_ne!(train(1, 1), train(2, 1), "another seed, other crops");
        assert_eq!(train(1, 1).len(), 3 * 3072);
    }

    #[test]
    fn prefetched_batches_are_the_serial_ones_on_any_number_of_workers() {
        let dir = TempDir::new("loader-prefetch");
        cifar_records(&dir, 11);
        let data = augmented_cifar(&dir, crop_and_flip());
        let names = vec!["image".to_string(), "label".to_string()];
        let order = [3, 9, 0, 10, 4, 7, 1, 8, 2, 6, 5];
        let mode = Mode::Train { seed: 5, epoch: 3 };
        let serial: Vec<Batch> = order
            .chunks(4)
            .map(|chunk| {
                let mut batch = Batch::default();
                data.fill_batch_mode(&data.train, &names, chunk, mode, &mut batch)
                    .unwrap();
                batch
            })
            .collect();
        assert_eq!(serial.len(), 3, "two full batches and a last one of 3");
        for workers in [1, 2, 3, 8] {
            let mut prefetch = data.prefetch(&data.train, &names, &order, 4, mode, workers);
            let mut batch = Batch::default();
            for (k, want) in serial.iter().enumerate() {
                prefetch.next_into(&mut batch).unwrap();
                assert_eq!(batch.size, want.size, "{workers} workers, batch {k}");
                assert_eq!(batch.fields, want.fields, "{workers} workers, batch {k}");
            }
        }
        // Stopping after one batch (a step limit) ends the workers.
        let mut prefetch = data.prefetch(&data.train, &names, &order, 4, mode, 2);
        let mut batch = Batch::default();
        prefetch.next_into(&mut batch).unwrap();
        drop(prefetch);
    }

    /// Rows `i` of a CSV table: features `[i, 10 - 2i]`, label `i % 2`,
    /// except that rows in `outliers` have features `[1000, -1000]`.
    fn table(n: usize, outliers: &[usize]) -> String {
        (0..n)
            .map(|i| match outliers.contains(&i) {
                true => format!("1000,-1000,{}\n", i % 2),
                false => format!("{i},{},{}\n", 10 - 2 * i as i64, i % 2),
            })
            .collect()
    }

    fn scaled_spec(transform: Transform) -> DataSpec {
        let source = Source::CsvColumns {
            path: "d.csv".into(),
            from: 0,
            to: 2,
        };
        spec(
            vec![
                field("x", DType::F32, source, vec![transform]),
                field(
                    "y",
                    DType::I32,
                    Source::CsvColumn {
                        path: "d.csv".into(),
                        column: 2,
                    },
                    vec![],
                ),
            ],
            None,
        )
    }

    #[test]
    fn fitted_statistics_come_from_the_training_samples_alone() {
        let dir = TempDir::new("loader-fit");
        let parts = crate::train::partition(20, Some(0.2), Some(0.25), 11).unwrap();
        let held_out: Vec<usize> = parts
            .validation
            .iter()
            .chain(&parts.test)
            .copied()
            .collect();
        dir.write("d.csv", table(20, &held_out).as_bytes());
        let mut spec = scaled_spec(Transform::Standardize {
            per: FitAxis::Element,
        });
        spec.test = Some(TestSet::Split(0.2));
        let holdout = Holdout::Split {
            validate: Some(0.25),
            seed: 11,
        };
        let data = load_training(&spec, dir.path(), holdout.clone()).unwrap();
        let xs: Vec<f64> = parts.train.iter().map(|&i| i as f64).collect();
        let n = xs.len() as f64;
        let mean = xs.iter().sum::<f64>() / n;
        let std = (xs.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / n).sqrt();
        let Some(
            [Fitted::Standardize {
                per,
                mean: m,
                std: s,
            }],
        ) = data.fitted.get("x").map(Vec::as_slice)
        else {
            panic!("{:?}", data.fitted);
        };
        assert_eq!(*per, Per::Element);
        assert!((m[0] - mean).abs() < 1e-9 && (s[0] - std).abs() < 1e-9);
        assert!((m[1] - (10.0 - 2.0 * mean)).abs() < 1e-9);
        assert!((s[1] - 2.0 * std).abs() < 1e-9);
        // Every sample, the held-out ones too, is scaled by those numbers.
        let got = gather(&data, &data.train, "x");
        let sample = parts.train[0];
        let want = ((sample as f64 - mean) / std) as f32;
        assert!((got[2 * sample] - want).abs() < 1e-5);
        let outlier = held_out[0];
        let want = ((1000.0 - mean) / std) as f32;
        assert!((got[2 * outlier] - want).abs() < 1e-3);

        // Min-max the same way; prediction takes the given statistics.
        let mut spec = scaled_spec(Transform::MinMax {
            per: FitAxis::Element,
        });
        spec.test = Some(TestSet::Split(0.2));
        let data = load_training(&spec, dir.path(), holdout).unwrap();
        let Some([Fitted::MinMax { min, max, .. }]) = data.fitted.get("x").map(Vec::as_slice)
        else {
            panic!("{:?}", data.fitted);
        };
        let lo = *parts.train.iter().min().unwrap() as f64;
        let hi = *parts.train.iter().max().unwrap() as f64;
        assert_eq!((min[0], max[0]), (lo, hi));
        assert_eq!((min[1], max[1]), (10.0 - 2.0 * hi, 10.0 - 2.0 * lo));

        // A fold of `kfold` names its training samples: only they count.
        let mut fold = parts.train.clone();
        fold.sort_unstable();
        fold.truncate(3);
        let fold_data = load_training(&spec, dir.path(), Holdout::Samples(fold.clone())).unwrap();
        let Some([Fitted::MinMax { min, max, .. }]) = fold_data.fitted.get("x").map(Vec::as_slice)
        else {
            panic!("{:?}", fold_data.fitted);
        };
        assert_eq!((min[0], max[0]), (fold[0] as f64, fold[2] as f64));
        let err = load_training(&spec, dir.path(), Holdout::Samples(vec![1, 20]))
            .err()
            .unwrap();
        assert!(err.to_string().contains("sample 20"), "{err}");
        dir.write("p.csv", b"5,0,0\n");
        let predicted = load_for_prediction(
            &spec_of_file("p.csv", &spec),
            dir.path(),
            Vocabularies::new(),
            data.fitted.clone(),
        )
        .unwrap();
        let got = gather(&predicted, &predicted.train, "x");
        assert!(
            (got[0] - ((5.0 - lo) / (hi - lo)) as f32).abs() < 1e-6,
            "{got:?}"
        );
        // Without statistics, prediction cannot scale as training did.
        let err = load_for_prediction(
            &spec_of_file("p.csv", &spec),
            dir.path(),
            Vocabularies::new(),
            FittedStats::new(),
        )
        .err()
        .unwrap();
        assert!(
            err.to_string()
                .contains("field `x` is standardized or min-max scaled by statistics of the training samples, but the checkpoint holds none"),
            "{err}"
        );
        // Statistics saved for another pipeline do not apply.
        let mut wrong = data.fitted.clone();
        wrong.insert(
            "x".into(),
            vec![Fitted::Standardize {
                per: Per::Element,
                mean: vec![0.0; 3],
                std: vec![1.0; 3],
            }],
        );
        let mut data = data;
        assert_eq!(
            data.use_fitted(&wrong).unwrap_err().to_string(),
            "the fitted statistics saved for field `x` (`standardize` per element over 3 values) \
             do not fit its transforms (`minmax` per element over 2 values)"
        );
    }

    fn spec_of_file(path: &str, like: &DataSpec) -> DataSpec {
        let mut spec = like.clone();
        spec.fields.truncate(1);
        spec.fields[0].source = Source::CsvColumns {
            path: path.into(),
            from: 0,
            to: 2,
        };
        spec
    }

    #[test]
    fn channel_statistics_and_shape_errors() {
        let dir = TempDir::new("loader-fit-channels");
        cifar_records(&dir, 3);
        let image = |transforms| {
            spec(
                vec![field(
                    "image",
                    DType::F32,
                    Source::Cifar {
                        path: "batch.bin".into(),
                    },
                    transforms,
                )],
                None,
            )
        };
        let data = load(
            &image(vec![Transform::Standardize {
                per: FitAxis::Channel,
            }]),
            dir.path(),
        )
        .unwrap();
        let Some([Fitted::Standardize { mean, .. }]) = data.fitted.get("image").map(Vec::as_slice)
        else {
            panic!("{:?}", data.fitted);
        };
        assert_eq!(mean.len(), 3);
        let want: f64 = (0..3)
            .flat_map(|i| (0..1024).map(move |k| ((7 * i + k) % 256) as f64))
            .sum::<f64>()
            / 3072.0;
        assert!((mean[0] - want).abs() < 1e-9);

        let flat = vec![
            Transform::Reshape(vec![3072]),
            Transform::MinMax {
                per: FitAxis::Channel,
            },
        ];
        let err = load(&image(flat), dir.path()).err().unwrap().to_string();
        assert!(
            err.ends_with(
                "batch.bin: field `image`: `per: \"channel\"` takes the first axis of samples \
                 of rank 2 or more as channels, but these have shape [3072]"
            ),
            "{err}"
        );
        let crop = vec![Transform::Augment(nnc_ir::Augment::RandomCrop {
            size: [48, 48],
            padding: 4,
        })];
        let err = load(&image(crop), dir.path()).err().unwrap().to_string();
        assert!(
            err.ends_with(
                "batch.bin: field `image`: `random_crop` takes a 48x48 window from images 32x32 \
                 padded by 4 to 40x40: the window is larger than the padded image"
            ),
            "{err}"
        );
    }
}
