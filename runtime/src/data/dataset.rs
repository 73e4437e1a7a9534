//! Named, equally long fields and per-batch gathering.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use super::augment::{ImageAugment, Mode};
use super::error::{DataError, Result};
use super::idx::IdxArray;
use super::storage::{ElemType, Storage};
use super::MAX_EXACT_F32_INT;

/// One named column of a dataset: `samples` samples of `sample_shape` each,
/// kept in the stored element type.
///
/// Fields are private so `samples * sample_len == storage.len()` always
/// holds; gathering relies on it instead of re-checking every sample.
#[derive(Debug, Clone, PartialEq)]
pub struct Field {
    sample_shape: Vec<usize>,
    sample_len: usize,
    samples: usize,
    storage: Storage,
    source: Option<PathBuf>,
}

impl Field {
    /// `sample_shape` is the shape of one sample (`[]` for a scalar label);
    /// the sample count follows from the storage length.
    pub fn new(storage: Storage, sample_shape: Vec<usize>) -> Result<Field> {
        let sample_len = sample_shape
            .iter()
            .try_fold(1usize, |acc, &d| acc.checked_mul(d))
            .filter(|&n| n > 0)
            .ok_or_else(|| DataError::EmptySampleShape {
                shape: sample_shape.clone(),
            })?;
        let elements = storage.len();
        if !elements.is_multiple_of(sample_len) {
            return Err(DataError::FieldShape {
                elements,
                shape: sample_shape,
            });
        }
        Ok(Field {
            sample_shape,
            sample_len,
            samples: elements / sample_len,
            storage,
            source: None,
        })
    }

    /// Remembers the file the data came from so that consistency errors
    /// across fields can tell the user which files disagree.
    pub fn with_source(mut self, path: impl AsRef<Path>) -> Field {
        self.source = Some(path.as_ref().to_path_buf());
        self
    }

    /// Treats the first IDX dimension as the sample axis, as MNIST does.
    pub fn from_idx(array: IdxArray) -> Result<Field> {
        let (_, dims, storage, path) = array.into_parts();
        let sample_shape = dims.get(1..).unwrap_or_default().to_vec();
        Ok(Field::new(storage, sample_shape)?.with_source(path))
    }

    pub fn elem(&self) -> ElemType {
        self.storage.elem()
    }

    pub fn sample_shape(&self) -> &[usize] {
        &self.sample_shape
    }

    /// Elements per sample (the product of `sample_shape`).
    pub fn sample_len(&self) -> usize {
        self.sample_len
    }

    pub fn samples(&self) -> usize {
        self.samples
    }

    pub fn storage(&self) -> &Storage {
        &self.storage
    }

    pub fn source(&self) -> Option<&Path> {
        self.source.as_deref()
    }
}

impl TryFrom<IdxArray> for Field {
    type Error = DataError;

    fn try_from(array: IdxArray) -> Result<Field> {
        Field::from_idx(array)
    }
}

/// A per-batch transform, applied in order after conversion to `f32`.
///
/// Transforms run per batch rather than once over the dataset so the data
/// can stay in its compact stored type.
#[derive(Debug, Clone, PartialEq)]
pub enum Transform {
    /// Multiply every element, e.g. by `1/255` for byte images.
    Scale(f32),
    /// Replace each element (a class index) by `classes` elements, one of
    /// them 1. The sample shape gains a trailing `classes` dimension.
    OneHot(usize),
    /// `(x - mean) / std`, with one value for all elements or one per
    /// element of a sample (as the sample is at this point in the chain).
    Normalize { mean: Vec<f32>, std: Vec<f32> },
    /// `(x - mean[c]) / std[c]` for channel `c`, torchvision's
    /// `Normalize`: a sample is `mean.len()` equal, contiguous planes (the
    /// first axis of a `[C, H, W]` image). Kept apart from `Normalize`
    /// because a per-element vector would need the sample shape to tell a
    /// channel list from an element list, and the gather does not have it.
    NormalizeChannels { mean: Vec<f32>, std: Vec<f32> },
    /// A random image transform of training batches (see [`Mode`]).
    Augment(ImageAugment),
}

impl Transform {
    pub fn scale(factor: f32) -> Transform {
        Transform::Scale(factor)
    }

    pub fn one_hot(classes: usize) -> Transform {
        Transform::OneHot(classes)
    }

    /// The same mean and std for every element.
    pub fn normalize(mean: f32, std: f32) -> Transform {
        Transform::Normalize {
            mean: vec![mean],
            std: vec![std],
        }
    }

    /// One mean and std per element of a sample, e.g. per-pixel statistics.
    pub fn normalize_each(mean: Vec<f32>, std: Vec<f32>) -> Transform {
        Transform::Normalize { mean, std }
    }

    /// One mean and std per channel (the first axis of a sample).
    pub fn normalize_channels(mean: Vec<f32>, std: Vec<f32>) -> Transform {
        Transform::NormalizeChannels { mean, std }
    }
}

/// Fields that share a sample axis: sample `i` of every field belongs to the
/// same example.
#[derive(Debug, Clone, PartialEq)]
pub struct Dataset {
    names: Vec<String>,
    /// Shared, so that a clone for a batch-preparing thread copies no
    /// samples.
    fields: Arc<[Field]>,
    samples: usize,
}

impl Dataset {
    /// Checks that all fields have the same number of samples; a mismatch
    /// (say 60 000 images but 59 999 labels) almost always means two files
    /// from different sets were paired, and names both files.
    pub fn new<I, S>(fields: I) -> Result<Dataset>
    where
        I: IntoIterator<Item = (S, Field)>,
        S: Into<String>,
    {
        let mut names: Vec<String> = Vec::new();
        let mut list: Vec<Field> = Vec::new();
        for (name, field) in fields {
            let name = name.into();
            if names.contains(&name) {
                return Err(DataError::DuplicateField(name));
            }
            if let (Some(first_name), Some(first)) = (names.first(), list.first()) {
                if first.samples != field.samples {
                    return Err(DataError::SampleCountMismatch {
                        first: first_name.clone(),
                        first_samples: first.samples,
                        first_source: first.source.clone(),
                        second: name,
                        second_samples: field.samples,
                        second_source: field.source.clone(),
                    });
                }
            }
            names.push(name);
            list.push(field);
        }
        let Some(samples) = list.first().map(|f| f.samples) else {
            return Err(DataError::NoFields);
        };
        Ok(Dataset {
            names,
            fields: list.into(),
            samples,
        })
    }

    /// Number of samples (shared by all fields).
    pub fn len(&self) -> usize {
        self.samples
    }

    pub fn is_empty(&self) -> bool {
        self.samples == 0
    }

    pub fn field_names(&self) -> impl Iterator<Item = &str> {
        self.names.iter().map(String::as_str)
    }

    pub fn field(&self, name: &str) -> Option<&Field> {
        self.names
            .iter()
            .position(|n| n == name)
            .and_then(|i| self.fields.get(i))
    }

    fn require(&self, name: &str) -> Result<&Field> {
        self.field(name).ok_or_else(|| DataError::UnknownField {
            name: name.to_string(),
            available: self.names.join(", "),
        })
    }

    fn check_indices(&self, indices: &[usize]) -> Result<()> {
        match indices.iter().find(|&&i| i >= self.samples) {
            Some(&index) => Err(DataError::SampleIndex {
                index,
                samples: self.samples,
            }),
            None => Ok(()),
        }
    }

    /// Gathers samples `indices` of `field` into `out` as `f32`, applies
    /// `transforms` in order, and returns the number of values per sample
    /// in the result (so `out.len() == indices.len() * returned`).
    ///
    /// `out` is cleared first and reused, so a training loop allocates its
    /// batch buffer once. On error its contents are unspecified.
    pub fn gather(
        &self,
        field: &str,
        indices: &[usize],
        transforms: &[Transform],
        out: &mut Vec<f32>,
    ) -> Result<usize> {
        self.gather_mode(field, indices, transforms, Mode::Evaluate, out)
    }

    /// [`Dataset::gather`] for a training step (`Mode::Train`), whose
    /// augmentations draw from their per-sample streams, or not.
    pub fn gather_mode(
        &self,
        field: &str,
        indices: &[usize],
        transforms: &[Transform],
        mode: Mode,
        out: &mut Vec<f32>,
    ) -> Result<usize> {
        let f = self.require(field)?;
        self.check_indices(indices)?;
        out.clear();
        out.reserve(indices.len().saturating_mul(f.sample_len));
        for &i in indices {
            // In range: i < samples and samples * sample_len == storage.len().
            let start = i * f.sample_len;
            f.storage.extend_f32(start..start + f.sample_len, out)?;
        }
        let mut sample_len = f.sample_len;
        for transform in transforms {
            sample_len = match transform {
                Transform::Augment(augment) => {
                    if augment.input_len() != sample_len {
                        return Err(DataError::AugmentShape {
                            field: field.to_string(),
                            expected: augment.input_len(),
                            sample_len,
                        });
                    }
                    *out = augment.apply_batch(mode, indices, out);
                    augment.output_len()
                }
                _ => apply(transform, field, indices, sample_len, out)?,
            };
        }
        Ok(sample_len)
    }

    /// Gathers samples `indices` of `field` as `f64`, untransformed, for a
    /// field declared `f64` (double-precision runs in the interpreter).
    pub fn gather_f64(&self, field: &str, indices: &[usize], out: &mut Vec<f64>) -> Result<()> {
        let f = self.require(field)?;
        self.check_indices(indices)?;
        out.clear();
        out.reserve(indices.len().saturating_mul(f.sample_len));
        for &i in indices {
            let start = i * f.sample_len;
            f.storage.extend_f64(start..start + f.sample_len, out)?;
        }
        Ok(())
    }

    /// Gathers samples `indices` of `field` as `i32`, for losses that take
    /// class indices rather than one-hot vectors. Float fields must hold
    /// exact integers.
    pub fn gather_i32(&self, field: &str, indices: &[usize], out: &mut Vec<i32>) -> Result<()> {
        let f = self.require(field)?;
        self.check_indices(indices)?;
        out.clear();
        out.reserve(indices.len().saturating_mul(f.sample_len));
        let context = format!("field `{field}`");
        for &i in indices {
            let start = i * f.sample_len;
            f.storage
                .extend_i32(start..start + f.sample_len, out, &context)?;
        }
        Ok(())
    }
}

/// Applies one transform to a gathered batch in place and returns the new
/// number of values per sample.
fn apply(
    transform: &Transform,
    field: &str,
    indices: &[usize],
    sample_len: usize,
    out: &mut Vec<f32>,
) -> Result<usize> {
    match transform {
        // Applied by `gather_mode`, which knows the mode.
        Transform::Augment(_) => Ok(sample_len),
        Transform::Scale(factor) => {
            if !factor.is_finite() {
                return Err(DataError::BadScale(*factor));
            }
            out.iter_mut().for_each(|v| *v *= factor);
            Ok(sample_len)
        }
        Transform::Normalize { mean, std } => {
            for (what, values) in [("mean", mean), ("std", std)] {
                if values.len() != 1 && values.len() != sample_len {
                    return Err(DataError::NormalizeLength {
                        field: field.to_string(),
                        what,
                        len: values.len(),
                        sample_len,
                    });
                }
            }
            check_normalize_values(mean, std)?;
            // `cycle` broadcasts a single value and walks a per-element
            // vector in step with each sample.
            for sample in out.chunks_mut(sample_len.max(1)) {
                for ((v, m), s) in sample
                    .iter_mut()
                    .zip(mean.iter().cycle())
                    .zip(std.iter().cycle())
                {
                    *v = (*v - m) / s;
                }
            }
            Ok(sample_len)
        }
        Transform::NormalizeChannels { mean, std } => {
            let channels = mean.len();
            if channels == 0 || std.len() != channels || !sample_len.is_multiple_of(channels) {
                return Err(DataError::NormalizeChannels {
                    field: field.to_string(),
                    mean_len: channels,
                    std_len: std.len(),
                    sample_len,
                });
            }
            check_normalize_values(mean, std)?;
            // `max(1)`: `chunks_mut(0)` panics, and a zero-length sample
            // (impossible for a `Field`) must not be what makes it do so.
            let plane = (sample_len / channels).max(1);
            for sample in out.chunks_mut(sample_len.max(1)) {
                for ((values, m), s) in sample.chunks_mut(plane).zip(mean).zip(std) {
                    values.iter_mut().for_each(|v| *v = (*v - m) / s);
                }
            }
            Ok(sample_len)
        }
        Transform::OneHot(classes) => {
            let classes = *classes;
            let too_many = classes > MAX_EXACT_F32_INT as usize;
            let total = out.len().checked_mul(classes);
            let (Some(total), false, true) = (total, too_many, classes > 0) else {
                return Err(DataError::OneHotClasses { classes });
            };
            let limit = classes as f32; // exact: classes <= 2^24
            for (k, &value) in out.iter().enumerate() {
                if !(value.fract() == 0.0 && value >= 0.0 && value < limit) {
                    let sample = indices
                        .get(k / sample_len.max(1))
                        .copied()
                        .unwrap_or(k / sample_len.max(1));
                    return Err(DataError::OneHotLabel {
                        field: field.to_string(),
                        value,
                        sample,
                        classes,
                    });
                }
            }
            // Expand in place from the back: row k is written to
            // [k*classes, (k+1)*classes), which never reaches an unread
            // element j < k, so no second buffer is needed.
            let n = out.len();
            out.resize(total, 0.0);
            for k in (0..n).rev() {
                let class = out[k] as usize;
                let row = &mut out[k * classes..(k + 1) * classes];
                row.fill(0.0);
                if let Some(slot) = row.get_mut(class) {
                    *slot = 1.0;
                }
            }
            Ok(sample_len * classes)
        }
    }
}

/// A mean must be finite and a std finite and non-zero, or every value
/// after the transform would be NaN or infinite.
fn check_normalize_values(mean: &[f32], std: &[f32]) -> Result<()> {
    let bad_mean = mean
        .iter()
        .position(|m| !m.is_finite())
        .map(|p| ("mean", p, mean[p]));
    let bad_std = std
        .iter()
        .position(|s| !s.is_finite() || *s == 0.0)
        .map(|p| ("std", p, std[p]));
    match bad_mean.or(bad_std) {
        Some((what, position, value)) => Err(DataError::NormalizeValue {
            what,
            position,
            value,
        }),
        None => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::data::idx;
    use crate::data::testutil::{gzip, shared_data, TempDir};

    fn toy() -> Dataset {
        // 4 samples of 2x2 u8 "images" and u8 labels.
        let images = Field::new(Storage::U8((0..16).collect()), vec![2, 2]).unwrap();
        let labels = Field::new(Storage::U8(vec![3, 0, 2, 1]), vec![]).unwrap();
        Dataset::new([("image", images), ("label", labels)]).unwrap()
    }

    #[test]
    fn field_shapes() {
        let f = Field::new(Storage::F64(vec![0.0; 12]), vec![3]).unwrap();
        assert_eq!(
            (f.samples(), f.sample_len(), f.elem()),
            (4, 3, ElemType::F64)
        );
        assert_eq!(f.source(), None);
        assert_eq!(
            Field::new(Storage::U8(vec![0; 10]), vec![3])
                .unwrap_err()
                .to_string(),
            "storage of 10 elements cannot be split into samples of shape [3]"
        );
        assert_eq!(
            Field::new(Storage::U8(vec![]), vec![3, 0])
                .unwrap_err()
                .to_string(),
            "sample shape [3, 0] has no elements; every sample needs at least one"
        );
        let scalar = Field::new(Storage::I8(vec![1, 2]), vec![]).unwrap();
        assert_eq!((scalar.samples(), scalar.sample_len()), (2, 1));
    }

    #[test]
    fn gathers_in_index_order_keeping_stored_type() {
        let ds = toy();
        assert_eq!(ds.len(), 4);
        assert_eq!(ds.field_names().collect::<Vec<_>>(), ["image", "label"]);
        assert_eq!(ds.field("image").unwrap().elem(), ElemType::U8);
        let mut out = vec![123.0; 3];
        let per = ds.gather("image", &[2, 0], &[], &mut out).unwrap();
        assert_eq!(per, 4);
        assert_eq!(out, [8., 9., 10., 11., 0., 1., 2., 3.]);
        let mut labels = Vec::new();
        ds.gather_i32("label", &[3, 3, 0], &mut labels).unwrap();
        assert_eq!(labels, [1, 1, 3]);
        ds.gather("image", &[], &[], &mut out).unwrap();
        assert!(out.is_empty());
    }

    #[test]
    fn transforms_scale_normalize_one_hot() {
        let ds = toy();
        let mut out = Vec::new();
        ds.gather("image", &[1], &[Transform::scale(0.5)], &mut out)
            .unwrap();
        assert_eq!(out, [2.0, 2.5, 3.0, 3.5]);
        ds.gather("image", &[1], &[Transform::normalize(4.0, 2.0)], &mut out)
            .unwrap();
        assert_eq!(out, [0.0, 0.5, 1.0, 1.5]);
        let each = Transform::normalize_each(vec![4.0, 5.0, 6.0, 7.0], vec![1.0, 2.0, 4.0, 8.0]);
        ds.gather("image", &[1, 0], &[each], &mut out).unwrap();
        assert_eq!(out, [0.0, 0.0, 0.0, 0.0, -4.0, -2.0, -1.0, -0.5]);
        let per = ds
            .gather("label", &[0, 1, 2], &[Transform::one_hot(4)], &mut out)
            .unwrap();
        assert_eq!(per, 4);
        assert_eq!(out, [0., 0., 0., 1., 1., 0., 0., 0., 0., 0., 1., 0.]);
        // Chained: one_hot then scale (label smoothing-like).
        let per = ds
            .gather(
                "label",
                &[1],
                &[Transform::one_hot(2), Transform::scale(0.9)],
                &mut out,
            )
            .unwrap();
        assert_eq!((per, out.as_slice()), (2, &[0.9, 0.0][..]));
        // one_hot on multi-element samples: each element expands.
        let f = Field::new(Storage::I32(vec![0, 1, 1, 0]), vec![2]).unwrap();
        let ds2 = Dataset::new([("pair", f)]).unwrap();
        let per = ds2
            .gather("pair", &[0, 1], &[Transform::one_hot(2)], &mut out)
            .unwrap();
        assert_eq!(per, 4);
        assert_eq!(out, [1., 0., 0., 1., 0., 1., 1., 0.]);
    }

    #[test]
    fn transform_errors() {
        let ds = toy();
        let mut out = Vec::new();
        let e = |t: Transform, out: &mut Vec<f32>| {
            ds.gather("label", &[0, 1, 2], &[t], out)
                .unwrap_err()
                .to_string()
        };
        assert_eq!(
            e(Transform::one_hot(3), &mut out),
            "field `label`: label 3 at sample 0 is out of range for one_hot with 3 classes"
        );
        assert_eq!(
            ds.gather("label", &[1, 2], &[Transform::one_hot(2)], &mut out)
                .unwrap_err()
                .to_string(),
            "field `label`: label 2 at sample 2 is out of range for one_hot with 2 classes"
        );
        assert_eq!(
            e(Transform::one_hot(0), &mut out),
            "one_hot needs between 1 and 16777216 classes, got 0"
        );
        assert_eq!(
            e(Transform::one_hot(1 << 25), &mut out),
            "one_hot needs between 1 and 16777216 classes, got 33554432"
        );
        let neg = Field::new(Storage::I8(vec![-1]), vec![]).unwrap();
        let ds_neg = Dataset::new([("y", neg)]).unwrap();
        assert_eq!(
            ds_neg
                .gather("y", &[0], &[Transform::one_hot(4)], &mut out)
                .unwrap_err()
                .to_string(),
            "field `y`: label -1 at sample 0 is out of range for one_hot with 4 classes"
        );
        assert_eq!(
            e(Transform::scale(f32::NAN), &mut out),
            "scale factor must be finite, got NaN"
        );
        assert_eq!(
            e(Transform::normalize(0.0, 0.0), &mut out),
            "normalize: std[0] is 0; mean must be finite and std finite and non-zero"
        );
        assert_eq!(
            e(Transform::normalize(f32::INFINITY, 1.0), &mut out),
            "normalize: mean[0] is inf; mean must be finite and std finite and non-zero"
        );
        assert_eq!(
            ds.gather(
                "image",
                &[0],
                &[Transform::normalize_each(vec![0.0; 3], vec![1.0])],
                &mut out
            )
            .unwrap_err()
            .to_string(),
            "normalize: mean has 3 values but samples of field `image` have 4 elements \
             (expected 1 or 4)"
        );
        assert_eq!(
            ds.gather("image", &[0, 4], &[], &mut out)
                .unwrap_err()
                .to_string(),
            "sample index 4 is out of range for a dataset of 4 samples"
        );
        assert_eq!(
            ds.gather("pixels", &[0], &[], &mut out)
                .unwrap_err()
                .to_string(),
            "no field named `pixels`; fields are: image, label"
        );
        let floats = Field::new(Storage::F32(vec![0.5]), vec![]).unwrap();
        let ds_f = Dataset::new([("y", floats)]).unwrap();
        assert_eq!(
            ds_f.gather_i32("y", &[0], &mut Vec::new())
                .unwrap_err()
                .to_string(),
            "field `y`: element 0 holds 0.5, which is not a 32-bit integer"
        );
    }

    #[test]
    fn normalize_per_channel() {
        // Two samples of shape [2, 1, 2]: channel 0 is the first two values.
        let f = Field::new(Storage::U8(vec![1, 3, 10, 20, 5, 7, 30, 40]), vec![2, 1, 2]).unwrap();
        let ds = Dataset::new([("x", f)]).unwrap();
        let mut out = Vec::new();
        let t = Transform::normalize_channels(vec![1.0, 10.0], vec![2.0, 10.0]);
        let per = ds.gather("x", &[0, 1], &[t], &mut out).unwrap();
        assert_eq!(per, 4);
        assert_eq!(out, [0.0, 1.0, 0.0, 1.0, 2.0, 3.0, 2.0, 3.0]);
        let err = |t: Transform| {
            ds.gather("x", &[0], &[t], &mut Vec::new())
                .unwrap_err()
                .to_string()
        };
        assert_eq!(
            err(Transform::normalize_channels(vec![0.0; 3], vec![1.0; 3])),
            "normalize: per-channel mean has 3 values and std 3; samples of field `x` have 4 \
             elements, which must split into that many equal channels"
        );
        assert_eq!(
            err(Transform::normalize_channels(vec![0.0; 2], vec![1.0])),
            "normalize: per-channel mean has 2 values and std 1; samples of field `x` have 4 \
             elements, which must split into that many equal channels"
        );
        assert_eq!(
            err(Transform::normalize_channels(vec![0.0; 2], vec![1.0, 0.0])),
            "normalize: std[1] is 0; mean must be finite and std finite and non-zero"
        );
    }

    #[test]
    fn one_hot_after_scale_uses_scaled_values() {
        // Labels 3,0,2,1 scaled by 0.5 are 1.5, 0, 1, 0.5: the first is not
        // an integer, which must be an error rather than a silent floor.
        let ds = toy();
        let err = ds
            .gather(
                "label",
                &[0],
                &[Transform::scale(0.5), Transform::one_hot(4)],
                &mut Vec::new(),
            )
            .unwrap_err();
        assert_eq!(
            err.to_string(),
            "field `label`: label 1.5 at sample 0 is out of range for one_hot with 4 classes"
        );
    }

    #[test]
    fn construction_errors() {
        assert_eq!(
            Dataset::new(Vec::<(String, Field)>::new())
                .unwrap_err()
                .to_string(),
            "a dataset needs at least one field"
        );
        let a = Field::new(Storage::U8(vec![1, 2]), vec![]).unwrap();
        assert_eq!(
            Dataset::new([("x", a.clone()), ("x", a.clone())])
                .unwrap_err()
                .to_string(),
            "duplicate field name `x`"
        );
        let b = Field::new(Storage::U8(vec![1, 2, 3]), vec![]).unwrap();
        assert_eq!(
            Dataset::new([("x", a), ("y", b.with_source("/data/y.idx"))])
                .unwrap_err()
                .to_string(),
            "sample count mismatch: field `x` has 2 samples (built in memory) \
             but field `y` has 3 samples (from /data/y.idx)"
        );
    }

    #[test]
    fn idx_image_label_mismatch_names_both_files() {
        let dir = TempDir::new("dataset-mismatch");
        let images = idx::encode(&[3, 2, 2], &Storage::U8((0..12).collect())).unwrap();
        let labels = idx::encode(&[2], &Storage::U8(vec![1, 0])).unwrap();
        let ip = dir.write("train-images-idx3-ubyte.gz", &gzip(&images));
        let lp = dir.write("train-labels-idx1-ubyte", &labels);
        let image = Field::from_idx(idx::load(&ip).unwrap()).unwrap();
        assert_eq!(image.sample_shape(), [2, 2]);
        let label = Field::try_from(idx::load(&lp).unwrap()).unwrap();
        assert_eq!(label.sample_shape(), [] as [usize; 0]);
        let err = Dataset::new([("image", image), ("label", label)]).unwrap_err();
        assert_eq!(
            err.to_string(),
            format!(
                "sample count mismatch: field `image` has 3 samples (from {}) \
                 but field `label` has 2 samples (from {})",
                ip.display(),
                lp.display()
            )
        );
    }

    #[test]
    fn real_digits_dataset_if_present() {
        let Some(path) = shared_data("digits/digits.csv.gz") else {
            return;
        };
        let table = crate::data::csv::load(&path, &Default::default()).unwrap();
        let (x, y) = table.features_and_labels(0..64, 64).unwrap();
        let ds = Dataset::new([("image", x), ("label", y)]).unwrap();
        assert_eq!(ds.len(), 1797);
        let mut batch = Vec::new();
        let per = ds
            .gather(
                "image",
                &[0, 1796],
                &[Transform::scale(1.0 / 16.0)],
                &mut batch,
            )
            .unwrap();
        assert_eq!((per, batch.len()), (64, 128));
        assert!(batch.iter().all(|v| (0.0..=1.0).contains(v)));
        let per = ds
            .gather(
                "label",
                &(0..1797).collect::<Vec<_>>(),
                &[Transform::one_hot(10)],
                &mut batch,
            )
            .unwrap();
        assert_eq!(per, 10);
        assert_eq!(batch.iter().sum::<f32>(), 1797.0);
    }

    #[test]
    fn real_mnist_dataset_if_present() {
        let (Some(images), Some(labels), Some(train_labels)) = (
            shared_data("mnist/t10k-images-idx3-ubyte.gz"),
            shared_data("mnist/t10k-labels-idx1-ubyte.gz"),
            shared_data("mnist/train-labels-idx1-ubyte.gz"),
        ) else {
            return;
        };
        let image = Field::from_idx(idx::load(&images).unwrap()).unwrap();
        let label = Field::from_idx(idx::load(&labels).unwrap()).unwrap();
        let wrong = Field::from_idx(idx::load(&train_labels).unwrap()).unwrap();
        assert_eq!(
            Dataset::new([("image", image.clone()), ("label", wrong)])
                .unwrap_err()
                .to_string(),
            format!(
                "sample count mismatch: field `image` has 10000 samples (from {}) \
                 but field `label` has 60000 samples (from {})",
                images.display(),
                train_labels.display()
            )
        );
        let ds = Dataset::new([("image", image), ("label", label)]).unwrap();
        assert_eq!(ds.len(), 10000);
        assert_eq!(ds.field("image").unwrap().elem(), ElemType::U8);
        let order = crate::data::SplitMix64::new(1).permutation(ds.len());
        let mut x = Vec::new();
        let mut y = Vec::new();
        for range in crate::data::Batches::new(ds.len(), 128, true).unwrap() {
            let batch = &order[range];
            let per = ds
                .gather("image", batch, &[Transform::scale(1.0 / 255.0)], &mut x)
                .unwrap();
            assert_eq!((per, x.len()), (784, 128 * 784));
            assert!(x.iter().all(|v| (0.0..=1.0).contains(v)));
            ds.gather("label", batch, &[Transform::one_hot(10)], &mut y)
                .unwrap();
            assert_eq!(y.iter().sum::<f32>(), 128.0);
        }
    }
}
