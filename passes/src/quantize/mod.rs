//! Quantization's arithmetic: the parameters (`scale`, `zero_point`) that
//! map a float range onto `u8` or `i8`, and the observers that choose the
//! range from calibration data ([`observe`]).
//!
//! The formulas are PyTorch's (`torch.ao.quantization.observer`
//! `_calculate_qparams`), so a range gives the parameters a PyTorch user
//! would get: the range is widened to contain 0 (so that 0, padding and
//! ReLU's floor, is exact), the scale is at least `f32::EPSILON`, and the
//! affine zero point is `quant_min - round(min / scale)` rounded half to
//! even and clamped. Everything is computed in `f32` as PyTorch's tensors
//! are; the result is kept as `f64` holding an `f32` value.

pub mod observe;
pub mod qat;
pub mod rewrite;

pub use observe::{AbsHistogram, MinMax, Percentile};

/// How values map onto integers: `u8` affine (activations: any range,
/// the zero point where 0 lands) or `i8` symmetric (weights: zero point 0,
/// so `-w` quantizes to `-q`, and the integer product needs no correction
/// for the weight's side).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scheme {
    /// `quint8`, `[0, 255]`, `per_tensor_affine`.
    AffineU8,
    /// `qint8`, `[-128, 127]`, `per_tensor_symmetric` or
    /// `per_channel_symmetric` (PyTorch's default weight observers).
    SymmetricI8,
}

impl Scheme {
    /// `(quant_min, quant_max)`.
    pub fn range(self) -> (i32, i32) {
        match self {
            Scheme::AffineU8 => (0, 255),
            Scheme::SymmetricI8 => (-128, 127),
        }
    }
}

/// One tensor's (or one channel's) quantization parameters.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct QParams {
    /// An `f32` value: what the kernels multiply by.
    pub scale: f64,
    pub zero_point: i32,
    pub scheme: Scheme,
}

impl QParams {
    /// PyTorch's parameters for the observed range `[min, max]` (`min <=
    /// max`, both finite): see the module docs.
    pub fn from_range(min: f64, max: f64, scheme: Scheme) -> QParams {
        let (qmin, qmax) = scheme.range();
        let min_neg = (min as f32).min(0.0);
        let max_pos = (max as f32).max(0.0);
        let (scale, zero_point) = match scheme {
            Scheme::SymmetricI8 => {
                let amax = (-min_neg).max(max_pos);
                let scale = (amax / ((qmax - qmin) as f32 / 2.0)).max(f32::EPSILON);
                (scale, 0)
            }
            Scheme::AffineU8 => {
                let scale = ((max_pos - min_neg) / (qmax - qmin) as f32).max(f32::EPSILON);
                let zp = qmin - (min_neg / scale).round_ties_even() as i32;
                (scale, zp.clamp(qmin, qmax))
            }
        };
        QParams {
            scale: scale as f64,
            zero_point,
            scheme,
        }
    }

    /// `clamp(round(x * (1 / scale)) + zero_point)`: ATen's
    /// `quantize_val`, in `f32`, ties to even.
    pub fn quantize(&self, x: f32) -> i32 {
        let (qmin, qmax) = self.scheme.range();
        let inv_scale = 1.0f32 / self.scale as f32;
        let q = (x * inv_scale).round_ties_even() as i64 + self.zero_point as i64;
        q.clamp(qmin as i64, qmax as i64) as i32
    }

    /// `(q - zero_point) * scale`, in `f32`.
    pub fn dequantize(&self, q: i32) -> f32 {
        (q - self.zero_point) as f32 * self.scale as f32
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn affine_u8_parameters_as_pytorch_computes_them() {
        // MinMaxObserver(quint8) on [-1, 3]: scale 4/255, zero point
        // 0 - round(-1 / (4/255)) = round(63.75) = 64.
        let q = QParams::from_range(-1.0, 3.0, Scheme::AffineU8);
        assert_eq!(q.scale, (4.0f32 / 255.0) as f64);
        assert_eq!(q.zero_point, 64);
        // A range on one side of 0 is widened to include it.
        let q = QParams::from_range(2.0, 5.1, Scheme::AffineU8);
        assert_eq!(q.scale, (5.1f32 / 255.0) as f64);
        assert_eq!(q.zero_point, 0);
        let q = QParams::from_range(-2.0, -1.0, Scheme::AffineU8);
        assert_eq!(q.zero_point, 255);
        // An all-zero range keeps a positive scale.
        let q = QParams::from_range(0.0, 0.0, Scheme::AffineU8);
        assert_eq!((q.scale, q.zero_point), (f32::EPSILON as f64, 0));
        // min / scale = -127.5 exactly: the tie rounds to even, 128.
        let q = QParams::from_range(-127.5, 127.5, Scheme::AffineU8);
        assert_eq!(q.scale, 1.0);
        assert_eq!(q.zero_point, 128);
    }

    #[test]
    fn symmetric_i8_parameters_and_round_trips() {
        // per_tensor_symmetric qint8 on [-0.5, 2.55]: scale 2.55 / 127.5.
        let q = QParams::from_range(-0.5, 2.55, Scheme::SymmetricI8);
        assert_eq!(q.scale, (2.55f32 / 127.5) as f64);
        assert_eq!(q.zero_point, 0);
        assert_eq!(q.quantize(2.55), 127, "127.5 rounds to 128, clamped");
        assert_eq!(q.quantize(-2.55), -128);
        assert_eq!(q.quantize(0.0), 0);
        // 0.03 * (1 / 0.02): the f32 product is 1.5, a tie, to 2.
        let q = QParams {
            scale: 0.02f32 as f64,
            zero_point: 0,
            scheme: Scheme::SymmetricI8,
        };
        assert_eq!(q.quantize(0.03), 2);
        assert_eq!(q.dequantize(2), 2.0 * 0.02f32);
        let u = QParams::from_range(-1.0, 3.0, Scheme::AffineU8);
        assert_eq!(u.quantize(-1.0), 0);
        assert_eq!(u.quantize(3.0), 255);
        assert_eq!(u.quantize(100.0), 255);
        assert_eq!(u.quantize(0.0), 64);
        assert_eq!(u.dequantize(64), 0.0);
    }
}
