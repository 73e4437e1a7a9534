//! Prediction from saved weights: raw samples from a file, the same
//! transforms the training data went through, the forward graph's outputs
//! per sample and, for a classifier, the arg-max class.

use crate::checkpoint::{self, Checkpoint, Scope};
use crate::data::text::FieldVocabulary;
use crate::data::{DataError, FittedStats, Storage};
use crate::executor::{Batch, Programs};
use crate::loader::LoadedData;
use crate::run::{Event, OptionsError, RunError, RunOptions, SampleShapeError};
use nnc_ir::{
    DType, DataField, DataSpec, Graph, Module, Source, Tensor, TensorType, TextColumn, TextFormat,
    Transform,
};
use std::path::Path;

/// The forward graph's outputs for one sample.
#[derive(Debug, Clone, PartialEq)]
pub struct Prediction {
    pub outputs: Vec<(String, Vec<f64>)>,
    /// The element type of each output, in the order of `outputs`.
    pub dtypes: Vec<DType>,
    /// The arg-max class, for a classifier (a model trained against `i32`
    /// class labels).
    pub class: Option<usize>,
    /// The class's name, when the labels were class names (`text_labels`)
    /// saved with the checkpoint.
    pub class_name: Option<String>,
}

/// Runs `programs.forward` with the params of `weights` on every sample of
/// `input` (IDX, or CSV with one sample per row), reporting each
/// prediction as it is made. The samples go through the transforms of the
/// data field that feeds the model's input in training (`scale`,
/// `normalize`, `reshape`), so the file holds raw samples like the
/// training data. With `options.predict_out`, the predictions are also
/// written to that file.
pub(crate) fn predict(
    module: &Module,
    programs: Programs,
    options: &RunOptions,
    weights: &Path,
    input: &Path,
    events: &mut dyn FnMut(Event<'_>),
) -> Result<Vec<Prediction>, RunError> {
    let forward = &programs.forward;
    let ckpt = checkpoint::load(weights)?;
    let encoder = SampleEncoder::new(module, forward, &ckpt)?;
    let input_name = encoder.input().to_string();
    // The file's samples, as one data field through the training field's
    // transforms, or as text through the training vocabulary.
    let data = match encoder.text_field() {
        Some(f) => text_samples(f, input, &ckpt)?,
        None => file_samples(&encoder, input)?,
    };
    data.check_inputs(forward)
        .map_err(|source| RunError::PredictData {
            path: input.to_path_buf(),
            source: Box::new(source),
        })?;
    let classes =
        label_field(module, &input_name).and_then(|label| match ckpt.vocabularies.get(&label) {
            Some(FieldVocabulary::Classes(c)) => Some(c.names.clone()),
            _ => None,
        });

    let settings = options.train.resolve(module.train.as_ref());
    let params = checkpoint::param_names(&programs);
    let output_names: Vec<String> = forward.outputs.iter().map(|o| o.name.clone()).collect();
    let mut exec = options.backend.executor(programs, settings.seed)?;
    ckpt.apply(exec.as_mut(), &module.name, &params, Scope::Params)?;

    let classifier = is_classifier(module, &input_name);
    let names = vec![input_name];
    let mut batch = Batch::default();
    let mut predictions = Vec::with_capacity(data.train.len());
    let indices: Vec<usize> = (0..data.train.len()).collect();
    for chunk in indices.chunks(settings.batch.max(1)) {
        data.fill_batch(&data.train, &names, chunk, &mut batch)?;
        let outputs = exec.predict(&batch)?;
        for i in 0..chunk.len() {
            let mut per_sample = Vec::new();
            let mut dtypes = Vec::new();
            for name in &output_names {
                let Some((_, t)) = outputs.iter().find(|(n, _)| n == name) else {
                    continue;
                };
                let per = t.shape.iter().skip(1).product::<usize>();
                let values = t.data.get(i * per..(i + 1) * per).unwrap_or_default();
                per_sample.push((name.clone(), values.to_vec()));
                dtypes.push(t.dtype);
            }
            let class = match per_sample.first() {
                Some((_, v)) if classifier && v.len() >= 2 => argmax(v),
                _ => None,
            };
            let class_name = class.and_then(|c| classes.as_ref()?.get(c).cloned());
            let prediction = Prediction {
                outputs: per_sample,
                dtypes,
                class,
                class_name,
            };
            events(Event::Predicted {
                index: predictions.len(),
                prediction: &prediction,
            });
            predictions.push(prediction);
        }
    }
    if let Some(out) = &options.predict_out {
        write_predictions(out, &module.name, &predictions)?;
    }
    Ok(predictions)
}

/// How raw samples become the forward graph's input: the data field that
/// feeds the input in training gives its transforms (`scale`, `normalize`,
/// fitted statistics from the checkpoint), and a sample of the right
/// number of values is taken in any shape (an IDX image for a flat input,
/// a CSV row for an image input). The one path from raw values to a batch
/// of `--predict` (a file's samples) and `nnc serve` (a request's), so
/// both give the same bits.
#[derive(Debug, Clone)]
pub struct SampleEncoder {
    model: String,
    input: String,
    input_ty: TensorType,
    field: Option<DataField>,
    fitted: FittedStats,
}

impl SampleEncoder {
    /// The encoder of `forward`'s one input, with the fitted statistics of
    /// `ckpt`; a model of several inputs is refused.
    pub fn new(
        module: &Module,
        forward: &Graph,
        ckpt: &Checkpoint,
    ) -> Result<SampleEncoder, RunError> {
        let inputs = forward.inputs();
        let [(input_node, input_name)] = inputs.as_slice() else {
            return Err(RunError::PredictInputs {
                model: module.name.clone(),
                inputs: inputs.iter().map(|(_, n)| n.to_string()).collect(),
            });
        };
        let field = module
            .data
            .as_ref()
            .and_then(|d| d.fields.iter().find(|f| f.name == *input_name))
            .cloned();
        Ok(SampleEncoder {
            model: module.name.clone(),
            input: input_name.to_string(),
            input_ty: forward.ty(*input_node).clone(),
            field,
            fitted: ckpt.fitted.clone(),
        })
    }

    /// The graph input the samples feed.
    pub fn input(&self) -> &str {
        &self.input
    }

    /// The element type of raw samples: the training field's (`f32`
    /// unless it says otherwise), else the input's.
    pub fn dtype(&self) -> DType {
        self.field.as_ref().map_or(self.input_ty.dtype, |f| f.dtype)
    }

    /// The training field when it reads text, which is encoded through a
    /// vocabulary rather than taken as values.
    pub fn text_field(&self) -> Option<&DataField> {
        self.field
            .as_ref()
            .filter(|f| matches!(f.source, Source::Text { .. }))
    }

    /// The shape of one sample as the model takes it (the input's dims
    /// after the batch), when it is fixed: constant dims and no `one_hot`
    /// between the raw values and the input.
    pub fn sample_shape(&self) -> Option<Vec<usize>> {
        let one_hot = self.field.as_ref().is_some_and(|f| {
            f.transforms
                .iter()
                .any(|t| matches!(t, Transform::OneHot(_)))
        });
        if one_hot {
            return None;
        }
        self.input_ty
            .shape
            .iter()
            .skip(1)
            .map(|d| d.as_const())
            .collect()
    }

    /// The samples in `storage`, each of shape `raw_sample`, through the
    /// training field's transforms (`origin` names where they came from
    /// in errors); a sample of another number of values than the model
    /// takes is refused.
    pub fn encode(
        &self,
        storage: Storage,
        raw_sample: Vec<usize>,
        origin: &Path,
    ) -> Result<LoadedData, RunError> {
        let mut transforms = self
            .field
            .as_ref()
            .map(|f| f.transforms.clone())
            .unwrap_or_default();
        if let Some(want) = self.sample_shape() {
            let (have_n, want_n): (usize, usize) =
                (raw_sample.iter().product(), want.iter().product());
            if have_n != want_n {
                return Err(RunError::SampleShape(Box::new(SampleShapeError {
                    path: origin.to_path_buf(),
                    file_sample: raw_sample,
                    model: self.model.clone(),
                    input: self.input.clone(),
                    model_sample: want,
                })));
            }
            transforms.insert(0, Transform::Reshape(want));
        }
        let field = DataField {
            name: self.input.clone(),
            dtype: self.dtype(),
            // Not read: the samples are given.
            source: Source::Idx {
                path: origin.display().to_string(),
            },
            transforms,
        };
        // Fitted transforms scale by the training samples' statistics,
        // never by these samples'.
        Ok(crate::loader::samples_for_prediction(
            &field,
            storage,
            raw_sample,
            origin,
            self.fitted.clone(),
        )?)
    }
}

/// The samples of an IDX or CSV file (one sample per row), as `encoder`
/// makes them the model's input.
fn file_samples(encoder: &SampleEncoder, input: &Path) -> Result<LoadedData, RunError> {
    let (storage, file_sample) = match crate::data::idx::load(input) {
        Ok(array) => {
            let (_, dims, storage, _) = array.into_parts();
            (storage, dims.get(1..).unwrap_or_default().to_vec())
        }
        Err(DataError::IdxBadMagic { .. }) => {
            let table = crate::data::csv::load(input, &Default::default())
                .map_err(crate::RuntimeError::from)?;
            let cols = table.cols();
            let values = table.columns(0..cols).map_err(crate::RuntimeError::from)?;
            (Storage::F32(values), vec![cols])
        }
        Err(e) => return Err(crate::RuntimeError::from(e).into()),
    };
    encoder.encode(storage, file_sample, input)
}

/// The texts of `input` encoded with the vocabulary `ckpt` saved for the
/// text `field`: a `.tab`, `.tsv` or `.csv` table (optionally gzipped)
/// with the training field's column, or any other file as one text per
/// line.
fn text_samples(
    field: &DataField,
    input: &Path,
    ckpt: &Checkpoint,
) -> Result<LoadedData, RunError> {
    let Source::Text {
        column,
        length,
        min_count,
        max_size,
        ngrams,
        ..
    } = &field.source
    else {
        return Err(crate::RuntimeError::Setup(format!(
            "internal error: field `{}` is not text",
            field.name
        ))
        .into());
    };
    if !ckpt.vocabularies.contains_key(&field.name) {
        return Err(crate::RuntimeError::Setup(format!(
            "checkpoint `{}` holds no vocabulary for the text field `{}`, so raw text cannot be encoded as in training; \
             a run that trains on the text data with `--save` writes one",
            ckpt.path.display(),
            field.name
        ))
        .into());
    }
    let path = input.to_str().ok_or_else(|| RunError::PathNotUtf8 {
        path: input.to_path_buf(),
    })?;
    let (format, column) = match TextFormat::of_path(path) {
        Some(format) => (format, column.clone()),
        None => (TextFormat::Lines, TextColumn::Index(0)),
    };
    let spec = DataSpec {
        name: "predict".into(),
        fields: vec![DataField {
            name: field.name.clone(),
            dtype: field.dtype,
            source: Source::Text {
                path: path.to_string(),
                format,
                column,
                length: *length,
                min_count: *min_count,
                max_size: *max_size,
                ngrams: *ngrams,
            },
            transforms: Vec::new(),
        }],
        test: None,
    };
    Ok(crate::loader::load_with_vocabularies(
        &spec,
        Path::new(""),
        ckpt.vocabularies.clone(),
    )?)
}

/// The file formats of `--predict-out`, by extension.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OutFormat {
    /// A header row, then a row per sample.
    Csv,
    /// A tensor `[samples, values]` per output.
    Safetensors,
}

impl OutFormat {
    /// The format `path`'s extension names, if any.
    pub fn of(path: &Path) -> Option<OutFormat> {
        match path.extension()?.to_str()? {
            "csv" => Some(OutFormat::Csv),
            "safetensors" => Some(OutFormat::Safetensors),
            _ => None,
        }
    }
}

/// The `format` metadata of a `--predict-out` safetensors file.
pub const PREDICTIONS_FORMAT: &str = "nnc-predictions/1";

/// A value in the shortest text that reads back to the same number of its
/// dtype: an `f32` output prints as the shortest decimal that parses to
/// the same `f32` (`0.1`, `1.0`, `1e-30`), integers as integers.
pub fn format_value(value: f64, dtype: DType) -> String {
    match dtype {
        DType::F32 => format!("{:?}", value as f32),
        DType::F64 => format!("{value:?}"),
        DType::I32 | DType::I8 | DType::U8 | DType::Bool => format!("{}", value as i64),
    }
}

/// Writes `predictions` to `path` as its extension says, atomically.
fn write_predictions(path: &Path, model: &str, predictions: &[Prediction]) -> Result<(), RunError> {
    let fail = |e: String| {
        RunError::Runtime(crate::RuntimeError::Setup(format!(
            "cannot write the predictions `{}`: {e}",
            path.display()
        )))
    };
    let bytes = match OutFormat::of(path) {
        Some(OutFormat::Csv) => predictions_csv(predictions).into_bytes(),
        Some(OutFormat::Safetensors) => {
            let tensors = predictions_tensors(predictions).map_err(fail)?;
            let metadata = [
                ("format".to_string(), PREDICTIONS_FORMAT.to_string()),
                ("model".to_string(), model.to_string()),
            ]
            .into_iter()
            .collect();
            checkpoint::safetensors_bytes(&tensors, metadata).map_err(|e| fail(e.to_string()))?
        }
        None => return Err(OptionsError::PredictOutFormat(path.to_path_buf()).into()),
    };
    checkpoint::write_atomic(path, &bytes).map_err(|e| fail(e.to_string()))
}

/// A header (an output of one value per sample is a column of its name,
/// one of several values columns `name_0`, `name_1`, ...; then `class` for
/// a classifier) and a row per sample.
fn predictions_csv(predictions: &[Prediction]) -> String {
    let Some(first) = predictions.first() else {
        return String::new();
    };
    let mut header: Vec<String> = Vec::new();
    for (name, values) in &first.outputs {
        match values.len() {
            1 => header.push(name.clone()),
            n => header.extend((0..n).map(|j| format!("{name}_{j}"))),
        }
    }
    if first.class.is_some() {
        header.push("class".into());
    }
    let named = first.class_name.is_some();
    if named {
        header.push("class_name".into());
    }
    let mut text = header.join(",") + "\n";
    for p in predictions {
        let mut cells: Vec<String> = Vec::new();
        for ((_, values), &dtype) in p.outputs.iter().zip(&p.dtypes) {
            cells.extend(values.iter().map(|&v| format_value(v, dtype)));
        }
        if let Some(c) = p.class {
            cells.push(c.to_string());
        }
        if named {
            cells.push(csv_cell(p.class_name.as_deref().unwrap_or("")));
        }
        text.push_str(&cells.join(","));
        text.push('\n');
    }
    text
}

/// `text` as one CSV cell: quoted when it holds a comma, a quote or a
/// line break.
fn csv_cell(text: &str) -> String {
    if text.contains([',', '"', '\n', '\r']) {
        format!("\"{}\"", text.replace('"', "\"\""))
    } else {
        text.to_string()
    }
}

/// Each output as a tensor `[samples, values]` of its dtype, and `class`
/// (`i32 [samples]`) for a classifier.
fn predictions_tensors(predictions: &[Prediction]) -> Result<Vec<(String, Tensor)>, String> {
    let Some(first) = predictions.first() else {
        return Ok(Vec::new());
    };
    let n = predictions.len();
    let mut tensors = Vec::new();
    for (k, ((name, values), &dtype)) in first.outputs.iter().zip(&first.dtypes).enumerate() {
        let data: Vec<f64> = predictions
            .iter()
            .flat_map(|p| p.outputs[k].1.iter().copied())
            .collect();
        let t = Tensor::from_vec(dtype, &[n, values.len()], data).map_err(|e| e.to_string())?;
        tensors.push((name.clone(), t));
    }
    if first.class.is_some() {
        if tensors.iter().any(|(name, _)| name == "class") {
            return Err("the model has an output named `class`, which is where the arg-max class goes; write a `.csv` instead".into());
        }
        let classes: Vec<f64> = predictions
            .iter()
            .map(|p| p.class.map_or(-1.0, |c| c as f64))
            .collect();
        let t = Tensor::from_vec(DType::I32, &[n], classes).map_err(|e| e.to_string())?;
        tensors.push(("class".into(), t));
    }
    Ok(tensors)
}

/// A classifier is trained against `i32` class labels (an input other than
/// the samples'); its first output holds a score per class.
fn is_classifier(module: &Module, input_name: &str) -> bool {
    label_field(module, input_name).is_some()
}

/// The input of a classifier's training objective that holds its class
/// labels.
fn label_field(module: &Module, input_name: &str) -> Option<String> {
    let t = module.train.as_ref()?;
    t.objective
        .inputs()
        .iter()
        .find(|(n, name)| {
            let ty = t.objective.ty(*n);
            *name != input_name && ty.dtype == DType::I32 && ty.rank() == 1
        })
        .map(|(_, name)| name.to_string())
}

/// The index of the largest value; the first on ties, and NaNs never win.
fn argmax(values: &[f64]) -> Option<usize> {
    values
        .iter()
        .enumerate()
        .fold(None, |best: Option<(usize, f64)>, (i, &v)| match best {
            Some((_, b)) if b >= v || v.is_nan() => best,
            _ => Some((i, v)),
        })
        .map(|(i, _)| i)
}

#[cfg(test)]
mod tests {
    use super::{argmax, format_value};
    use nnc_ir::DType;

    #[test]
    fn values_print_in_the_shortest_form_that_reads_back_exactly() {
        assert_eq!(format_value(f64::from(0.1f32), DType::F32), "0.1");
        assert_eq!(format_value(1.0, DType::F32), "1.0");
        assert_eq!(format_value(f64::from(1e-30f32), DType::F32), "1e-30");
        assert_eq!(format_value(0.1, DType::F64), "0.1");
        assert_eq!(format_value(3.0, DType::I32), "3");
        // Every f32 of a spread of bit patterns round-trips bit for bit.
        let mut bits: u32 = 0x9E37_79B9;
        for _ in 0..20_000 {
            bits = bits.wrapping_mul(1_664_525).wrapping_add(1_013_904_223);
            let x = f32::from_bits(bits);
            if !x.is_finite() {
                continue;
            }
            let text = format_value(f64::from(x), DType::F32);
            let back: f32 = text.parse().unwrap();
            assert_eq!(back.to_bits(), x.to_bits(), "{x:e} printed as {text}");
        }
    }

    #[test]
    fn argmax_takes_the_first_maximum_and_skips_nan() {
        assert_eq!(argmax(&[0.1, 0.7, 0.7]), Some(1));
        assert_eq!(argmax(&[f64::NAN, 0.2, 0.1]), Some(1));
        assert_eq!(argmax(&[]), None);
    }
}
