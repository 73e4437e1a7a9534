//! Element types and type-preserving storage.

use std::fmt;
use std::ops::Range;

use super::error::{DataError, Result};

/// The element type data was stored with.
///
/// The set matches the IDX format's type codes, which cover everything the
/// supported formats can produce.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ElemType {
    U8,
    I8,
    I16,
    I32,
    F32,
    F64,
}

impl ElemType {
    /// Size on disk and in memory; IDX payload lengths are computed from it.
    pub const fn size_bytes(self) -> usize {
        match self {
            ElemType::U8 | ElemType::I8 => 1,
            ElemType::I16 => 2,
            ElemType::I32 | ElemType::F32 => 4,
            ElemType::F64 => 8,
        }
    }

    /// Maps an IDX type byte; `None` lets the caller report the offending
    /// byte with its file and offset.
    pub const fn from_idx_code(code: u8) -> Option<ElemType> {
        match code {
            0x08 => Some(ElemType::U8),
            0x09 => Some(ElemType::I8),
            0x0B => Some(ElemType::I16),
            0x0C => Some(ElemType::I32),
            0x0D => Some(ElemType::F32),
            0x0E => Some(ElemType::F64),
            _ => None,
        }
    }

    /// True for types whose values are always integers, so converting them
    /// to `i32` can never fail.
    pub const fn is_integer(self) -> bool {
        matches!(
            self,
            ElemType::U8 | ElemType::I8 | ElemType::I16 | ElemType::I32
        )
    }
}

impl fmt::Display for ElemType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            ElemType::U8 => "u8",
            ElemType::I8 => "i8",
            ElemType::I16 => "i16",
            ElemType::I32 => "i32",
            ElemType::F32 => "f32",
            ElemType::F64 => "f64",
        })
    }
}

/// A flat buffer that keeps the element type it was loaded with.
///
/// Conversion to the compute types happens per batch through
/// [`Storage::extend_f32`] / [`Storage::extend_i32`], so a dataset of bytes
/// costs one byte per element in memory.
#[derive(Debug, Clone, PartialEq)]
pub enum Storage {
    U8(Vec<u8>),
    I8(Vec<i8>),
    I16(Vec<i16>),
    I32(Vec<i32>),
    F32(Vec<f32>),
    F64(Vec<f64>),
}

impl Storage {
    pub fn elem(&self) -> ElemType {
        match self {
            Storage::U8(_) => ElemType::U8,
            Storage::I8(_) => ElemType::I8,
            Storage::I16(_) => ElemType::I16,
            Storage::I32(_) => ElemType::I32,
            Storage::F32(_) => ElemType::F32,
            Storage::F64(_) => ElemType::F64,
        }
    }

    /// Number of elements (not bytes).
    pub fn len(&self) -> usize {
        match self {
            Storage::U8(v) => v.len(),
            Storage::I8(v) => v.len(),
            Storage::I16(v) => v.len(),
            Storage::I32(v) => v.len(),
            Storage::F32(v) => v.len(),
            Storage::F64(v) => v.len(),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn check_range(&self, range: &Range<usize>) -> Result<()> {
        let len = self.len();
        if range.start > range.end || range.end > len {
            return Err(DataError::ElementRange {
                start: range.start,
                end: range.end,
                len,
            });
        }
        Ok(())
    }

    /// Appends elements `range` converted to `f32`.
    ///
    /// Appending (instead of returning a new vector) lets a batch be
    /// assembled sample by sample into one reused buffer. `f64` values are
    /// rounded to the nearest `f32`, which is the precision training runs at.
    pub fn extend_f32(&self, range: Range<usize>, out: &mut Vec<f32>) -> Result<()> {
        self.check_range(&range)?;
        match self {
            Storage::U8(v) => out.extend(v[range].iter().map(|&x| f32::from(x))),
            Storage::I8(v) => out.extend(v[range].iter().map(|&x| f32::from(x))),
            Storage::I16(v) => out.extend(v[range].iter().map(|&x| f32::from(x))),
            // i32 beyond 2^24 rounds; that is inherent to an f32 batch.
            Storage::I32(v) => out.extend(v[range].iter().map(|&x| x as f32)),
            Storage::F32(v) => out.extend_from_slice(&v[range]),
            Storage::F64(v) => out.extend(v[range].iter().map(|&x| x as f32)),
        }
        Ok(())
    }

    /// Appends elements `range` converted to `f64`, exactly.
    pub fn extend_f64(&self, range: Range<usize>, out: &mut Vec<f64>) -> Result<()> {
        self.check_range(&range)?;
        match self {
            Storage::U8(v) => out.extend(v[range].iter().map(|&x| f64::from(x))),
            Storage::I8(v) => out.extend(v[range].iter().map(|&x| f64::from(x))),
            Storage::I16(v) => out.extend(v[range].iter().map(|&x| f64::from(x))),
            Storage::I32(v) => out.extend(v[range].iter().map(|&x| f64::from(x))),
            Storage::F32(v) => out.extend(v[range].iter().map(|&x| f64::from(x))),
            Storage::F64(v) => out.extend_from_slice(&v[range]),
        }
        Ok(())
    }

    /// Appends elements `range` as `i32`, for class labels and indices.
    ///
    /// Float storage is accepted only when every value is an exact integer
    /// in `i32` range, because silently truncating `2.7` to class 2 would
    /// corrupt training without any visible symptom. `context` (a file path
    /// or field name) prefixes the error.
    pub fn extend_i32(&self, range: Range<usize>, out: &mut Vec<i32>, context: &str) -> Result<()> {
        self.check_range(&range)?;
        let start = range.start;
        match self {
            Storage::U8(v) => out.extend(v[range].iter().map(|&x| i32::from(x))),
            Storage::I8(v) => out.extend(v[range].iter().map(|&x| i32::from(x))),
            Storage::I16(v) => out.extend(v[range].iter().map(|&x| i32::from(x))),
            Storage::I32(v) => out.extend_from_slice(&v[range]),
            Storage::F32(v) => {
                for (i, &x) in v[range].iter().enumerate() {
                    out.push(float_to_i32(f64::from(x), context, start + i)?);
                }
            }
            Storage::F64(v) => {
                for (i, &x) in v[range].iter().enumerate() {
                    out.push(float_to_i32(x, context, start + i)?);
                }
            }
        }
        Ok(())
    }
}

fn float_to_i32(value: f64, context: &str, index: usize) -> Result<i32> {
    // NaN and infinities have a non-zero (NaN) fractional part, so they fail
    // the first test.
    if value.fract() == 0.0 && value >= f64::from(i32::MIN) && value <= f64::from(i32::MAX) {
        Ok(value as i32)
    } else {
        Err(DataError::NotInteger {
            context: context.to_string(),
            index,
            value,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn converts_every_type_to_f32_and_i32() {
        let cases = [
            Storage::U8(vec![255, 7, 3]),
            Storage::I8(vec![-1, 7, 3]),
            Storage::I16(vec![-300, 7, 3]),
            Storage::I32(vec![-70000, 7, 3]),
            Storage::F32(vec![1.5, 7.0, 3.0]),
            Storage::F64(vec![1.5, 7.0, 3.0]),
        ];
        for s in &cases {
            let mut f = vec![99.0];
            s.extend_f32(1..3, &mut f).unwrap();
            assert_eq!(f, [99.0, 7.0, 3.0], "{}", s.elem());
            let mut i = Vec::new();
            s.extend_i32(1..3, &mut i, "ctx").unwrap();
            assert_eq!(i, [7, 3], "{}", s.elem());
            assert_eq!(s.len(), 3);
        }
    }

    #[test]
    fn rejects_non_integer_floats_and_bad_ranges() {
        let s = Storage::F32(vec![1.0, 2.5]);
        let mut out = Vec::new();
        let err = s.extend_i32(0..2, &mut out, "labels.idx").unwrap_err();
        assert_eq!(
            err.to_string(),
            "labels.idx: element 1 holds 2.5, which is not a 32-bit integer"
        );
        let s = Storage::F64(vec![f64::NAN, 3e10]);
        let err = s.extend_i32(1..2, &mut out, "x").unwrap_err();
        assert_eq!(
            err.to_string(),
            "x: element 1 holds 30000000000, which is not a 32-bit integer"
        );
        assert!(s.extend_i32(0..1, &mut out, "x").is_err());
        let err = s.extend_f32(1..3, &mut Vec::new()).unwrap_err();
        assert_eq!(
            err.to_string(),
            "elements 1..3 are out of range for storage of 2 elements"
        );
        #[allow(clippy::reversed_empty_ranges)]
        let reversed = 2..1;
        assert!(s.extend_f32(reversed, &mut Vec::new()).is_err());
    }
}
