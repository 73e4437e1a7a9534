//! Concrete tensors for the reference interpreter: an element type, a
//! concrete shape and row-major values.
//!
//! Every value is stored as an `f64` whatever the dtype, so one set of loops
//! serves every dtype. The dtype says which values are representable:
//! `f32` tensors hold values that are exactly `f32`s (after
//! [`Tensor::round_to_dtype`]), `i32` tensors hold integers in `i32` range,
//! and `bool` tensors hold `0.0` (false) or `1.0` (true).

use crate::types::DType;
use std::fmt;
use thiserror::Error;

/// A tensor whose data does not fit its shape.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
#[error("a {dtype} tensor of shape {shape:?} needs {expected} values, found {actual}")]
pub struct TensorError {
    pub dtype: DType,
    pub shape: Vec<usize>,
    /// `usize::MAX` when the element count overflows.
    pub expected: usize,
    pub actual: usize,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Tensor {
    pub dtype: DType,
    pub shape: Vec<usize>,
    /// Row-major values, `numel()` of them.
    pub data: Vec<f64>,
}

/// Number of elements of a shape (`1` for a scalar), `None` on overflow.
pub fn checked_numel(shape: &[usize]) -> Option<usize> {
    shape.iter().try_fold(1usize, |acc, &d| acc.checked_mul(d))
}

/// Row-major strides of a shape, in elements.
pub fn strides_of(shape: &[usize]) -> Vec<usize> {
    let mut strides = vec![0; shape.len()];
    let mut acc = 1usize;
    for (s, &d) in strides.iter_mut().zip(shape).rev() {
        *s = acc;
        acc = acc.saturating_mul(d);
    }
    strides
}

/// The value `v` as the nearest value `dtype` can hold: `f32` rounds to
/// nearest `f32`; `i32`, `i8` and `u8` truncate toward zero and saturate
/// at their range (NaN becomes 0), like Rust's `as` from a float, whatever
/// the source dtype (so `i32` 300 cast to `u8` is 255, not 44: quantizing
/// clamps, it never wraps); `bool` is `v != 0` (so NaN is true); `f64` is
/// unchanged.
pub fn round_value(dtype: DType, v: f64) -> f64 {
    match dtype {
        DType::F64 => v,
        DType::F32 => v as f32 as f64,
        DType::I32 => v as i32 as f64,
        DType::I8 => v as i8 as f64,
        DType::U8 => v as u8 as f64,
        DType::Bool => {
            if v != 0.0 {
                1.0
            } else {
                0.0
            }
        }
    }
}

impl Tensor {
    pub fn zeros(dtype: DType, shape: &[usize]) -> Tensor {
        Tensor::full(dtype, shape, 0.0)
    }

    /// Every element `value` (not rounded to `dtype`).
    pub fn full(dtype: DType, shape: &[usize], value: f64) -> Tensor {
        let n = checked_numel(shape).unwrap_or(0);
        Tensor {
            dtype,
            shape: shape.to_vec(),
            data: vec![value; n],
        }
    }

    pub fn scalar(dtype: DType, value: f64) -> Tensor {
        Tensor {
            dtype,
            shape: Vec::new(),
            data: vec![value],
        }
    }

    /// A tensor from row-major values; the count must match the shape.
    /// Values are stored as given (see [`Tensor::round_to_dtype`]).
    pub fn from_vec(dtype: DType, shape: &[usize], data: Vec<f64>) -> Result<Tensor, TensorError> {
        let expected = checked_numel(shape).unwrap_or(usize::MAX);
        if expected != data.len() {
            return Err(TensorError {
                dtype,
                shape: shape.to_vec(),
                expected,
                actual: data.len(),
            });
        }
        Ok(Tensor {
            dtype,
            shape: shape.to_vec(),
            data,
        })
    }

    pub fn numel(&self) -> usize {
        self.data.len()
    }

    pub fn rank(&self) -> usize {
        self.shape.len()
    }

    /// Row-major strides, in elements.
    pub fn strides(&self) -> Vec<usize> {
        strides_of(&self.shape)
    }

    /// The element at a multi-index; `None` when the index has the wrong
    /// rank or is out of range.
    pub fn get(&self, index: &[usize]) -> Option<f64> {
        if index.len() != self.shape.len() {
            return None;
        }
        let mut offset = 0usize;
        for (&i, &d) in index.iter().zip(&self.shape) {
            if i >= d {
                return None;
            }
            offset = offset * d + i;
        }
        self.data.get(offset).copied()
    }

    /// The single value of a tensor with one element (e.g. a scalar loss).
    pub fn item(&self) -> Option<f64> {
        match self.data.as_slice() {
            [v] => Some(*v),
            _ => None,
        }
    }

    /// Rounds every value to what the dtype can hold (see [`round_value`]).
    pub fn round_to_dtype(&mut self) {
        if self.dtype == DType::F64 {
            return;
        }
        let dtype = self.dtype;
        for v in &mut self.data {
            *v = round_value(dtype, *v);
        }
    }

    /// [`Tensor::round_to_dtype`] by value.
    pub fn rounded(mut self) -> Tensor {
        self.round_to_dtype();
        self
    }

    /// The largest `|a - b|` over all elements. Shapes must match (else
    /// `+inf`); dtypes are not compared. Two NaNs at one position, or two
    /// equal infinities, count as equal; a NaN against a number counts as `+inf`.
    pub fn max_abs_diff(&self, other: &Tensor) -> f64 {
        if self.shape != other.shape || self.data.len() != other.data.len() {
            return f64::INFINITY;
        }
        let mut worst = 0.0f64;
        for (&a, &b) in self.data.iter().zip(&other.data) {
            let d = if a == b || (a.is_nan() && b.is_nan()) {
                0.0
            } else if a.is_nan() || b.is_nan() {
                f64::INFINITY
            } else {
                (a - b).abs()
            };
            if d > worst {
                worst = d;
            }
        }
        worst
    }

    /// numpy `allclose(self, other, rtol, atol, equal_nan=True)`:
    /// `|a - b| <= atol + rtol * |b|` everywhere, shapes equal (dtypes are
    /// not compared); infinities must match exactly.
    pub fn allclose(&self, other: &Tensor, rtol: f64, atol: f64) -> bool {
        if self.shape != other.shape || self.data.len() != other.data.len() {
            return false;
        }
        self.data.iter().zip(&other.data).all(|(&a, &b)| {
            if a == b || (a.is_nan() && b.is_nan()) {
                true
            } else if a.is_nan() || b.is_nan() || a.is_infinite() || b.is_infinite() {
                false
            } else {
                (a - b).abs() <= atol + rtol * b.abs()
            }
        })
    }
}

/// Tensors with more elements than this print only their first values.
const DISPLAY_LIMIT: usize = 64;

impl fmt::Display for Tensor {
    /// `f32[2,2] [[1, 2], [3, 4]]`; large tensors print a prefix of their
    /// values, flat, followed by `...`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}[", self.dtype)?;
        for (i, d) in self.shape.iter().enumerate() {
            if i > 0 {
                f.write_str(",")?;
            }
            write!(f, "{d}")?;
        }
        f.write_str("] ")?;
        if self.data.len() > DISPLAY_LIMIT {
            f.write_str("[")?;
            for (i, &v) in self.data.iter().take(DISPLAY_LIMIT / 4).enumerate() {
                if i > 0 {
                    f.write_str(", ")?;
                }
                write_value(f, self.dtype, v)?;
            }
            return write!(f, ", ... ({} values)]", self.data.len());
        }
        write_nested(f, self.dtype, &self.shape, &self.data)
    }
}

fn write_nested(
    f: &mut fmt::Formatter<'_>,
    dtype: DType,
    shape: &[usize],
    data: &[f64],
) -> fmt::Result {
    let Some((&first, rest)) = shape.split_first() else {
        return match data.first() {
            Some(&v) => write_value(f, dtype, v),
            None => f.write_str("[]"),
        };
    };
    let chunk = checked_numel(rest).unwrap_or(0);
    f.write_str("[")?;
    for i in 0..first {
        if i > 0 {
            f.write_str(", ")?;
        }
        let part = data.get(i * chunk..(i + 1) * chunk).unwrap_or(&[]);
        write_nested(f, dtype, rest, part)?;
    }
    f.write_str("]")
}

fn write_value(f: &mut fmt::Formatter<'_>, dtype: DType, v: f64) -> fmt::Result {
    match dtype {
        DType::Bool => f.write_str(if v != 0.0 { "true" } else { "false" }),
        DType::I32 | DType::I8 | DType::U8 => write!(f, "{}", v as i64),
        DType::F32 => write!(f, "{}", v as f32),
        DType::F64 => write!(f, "{v}"),
    }
}
