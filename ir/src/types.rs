//! Tensor types: element type plus a shape whose dims are constants or
//! symbols (`B`) bound when the program runs.

use std::fmt;

/// Element type of a tensor. `Bool` is what comparisons produce; `I32`
/// carries labels and indices, and accumulates integer products; `I8` and
/// `U8` hold quantized values (weights symmetric in `i8`, activations
/// asymmetric in `u8`: the operands AVX-512 VNNI's `vpdpbusd` multiplies).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum DType {
    F32,
    F64,
    I32,
    I8,
    U8,
    Bool,
}

impl DType {
    pub fn name(self) -> &'static str {
        match self {
            DType::F32 => "f32",
            DType::F64 => "f64",
            DType::I32 => "i32",
            DType::I8 => "i8",
            DType::U8 => "u8",
            DType::Bool => "bool",
        }
    }

    pub fn from_name(name: &str) -> Option<DType> {
        Some(match name {
            "f32" => DType::F32,
            "f64" => DType::F64,
            "i32" => DType::I32,
            "i8" => DType::I8,
            "u8" => DType::U8,
            "bool" => DType::Bool,
            _ => return None,
        })
    }

    pub fn is_float(self) -> bool {
        matches!(self, DType::F32 | DType::F64)
    }

    /// The 8-bit quantized types, which a matmul multiplies into `i32`.
    pub fn is_byte(self) -> bool {
        matches!(self, DType::I8 | DType::U8)
    }

    /// The smallest and largest value of an integer dtype (`bool` is 0
    /// and 1); `None` for floats.
    pub fn int_range(self) -> Option<(f64, f64)> {
        match self {
            DType::F32 | DType::F64 => None,
            DType::I32 => Some((i32::MIN as f64, i32::MAX as f64)),
            DType::I8 => Some((-128.0, 127.0)),
            DType::U8 => Some((0.0, 255.0)),
            DType::Bool => Some((0.0, 1.0)),
        }
    }
}

impl fmt::Display for DType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// One dimension: a size known at compile time, or a named size (the batch
/// `B`) that is bound once per run and is equal wherever the name appears.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Dim {
    Const(usize),
    Sym(String),
}

impl Dim {
    pub fn sym(name: &str) -> Dim {
        Dim::Sym(name.to_string())
    }

    pub fn as_const(&self) -> Option<usize> {
        match self {
            Dim::Const(n) => Some(*n),
            Dim::Sym(_) => None,
        }
    }

    pub fn is_one(&self) -> bool {
        *self == Dim::Const(1)
    }
}

impl From<usize> for Dim {
    fn from(n: usize) -> Dim {
        Dim::Const(n)
    }
}

impl fmt::Display for Dim {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Dim::Const(n) => write!(f, "{n}"),
            Dim::Sym(s) => f.write_str(s),
        }
    }
}

pub type Shape = Vec<Dim>;

/// Writes a shape as `[B,784]`.
pub struct ShapeDisplay<'a>(pub &'a [Dim]);

impl fmt::Display for ShapeDisplay<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("[")?;
        for (i, d) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str(",")?;
            }
            write!(f, "{d}")?;
        }
        f.write_str("]")
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct TensorType {
    pub dtype: DType,
    pub shape: Shape,
}

impl TensorType {
    pub fn new(dtype: DType, shape: impl IntoIterator<Item = Dim>) -> TensorType {
        TensorType {
            dtype,
            shape: shape.into_iter().collect(),
        }
    }

    pub fn scalar(dtype: DType) -> TensorType {
        TensorType {
            dtype,
            shape: Vec::new(),
        }
    }

    pub fn rank(&self) -> usize {
        self.shape.len()
    }

    pub fn with_dtype(&self, dtype: DType) -> TensorType {
        TensorType {
            dtype,
            shape: self.shape.clone(),
        }
    }

    pub fn with_shape(&self, shape: Shape) -> TensorType {
        TensorType {
            dtype: self.dtype,
            shape,
        }
    }

    /// The number of elements, when every dim is a constant.
    pub fn const_numel(&self) -> Option<usize> {
        self.shape
            .iter()
            .try_fold(1usize, |acc, d| acc.checked_mul(d.as_const()?))
    }
}

impl fmt::Display for TensorType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}{}", self.dtype, ShapeDisplay(&self.shape))
    }
}
