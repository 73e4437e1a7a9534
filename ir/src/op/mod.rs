//! The primitive op set. Everything the language can say lowers to these;
//! composite layers (softmax, cross-entropy, ...) are built from them in the
//! prelude and fused back into fast kernels by the optimizer.
//!
//! Ops whose result shape is not implied by their operands (`Const`, `Iota`,
//! `Reshape`, `Broadcast`, `Cast`, `ScatterAdd`, inputs, params and state)
//! take it from the node's declared type, so an attribute is never stored twice.

use crate::scan::ScanBody;
use std::fmt;
use std::sync::Arc;

mod table;

pub use table::{Arity, OpClass, OpInfo, OpKind};

#[derive(Debug, Clone, PartialEq)]
pub enum Op {
    /// A value fed by the runtime each step (a batch of data).
    Input {
        name: String,
    },
    /// A trainable tensor, initialized once.
    Param {
        name: String,
        init: Init,
    },
    /// Persistent non-trainable tensor (optimizer moments, step counter).
    State {
        name: String,
        init: Init,
    },
    /// A constant: one value splatted to the node's shape, or dense values.
    Const(Literal),
    /// `0, 1, 2, ...` along `axis`, broadcast over the other dims.
    Iota {
        axis: usize,
    },
    Unary(UnaryOp),
    Binary(BinaryOp),
    /// `select(cond, a, b)`: `a` where `cond` is true, else `b`; broadcasting.
    Select,
    /// Converts to the node's dtype (float to int truncates toward zero).
    Cast,
    /// `reduce_max` is `torch.amax` by default; with `ties: First` it is
    /// the reduction of `nn.MaxPool` (same value, another gradient; see
    /// [`Ties`]).
    Reduce {
        op: ReduceOp,
        axes: Vec<usize>,
        keepdim: bool,
        ties: Ties,
    },
    /// Index of the first maximum along `axis` (removed from the shape), as i32.
    ArgMax {
        axis: usize,
    },
    /// numpy `matmul` for operands of rank >= 2: `[..., m, k] @ [..., k, n]`,
    /// batch dims broadcast.
    MatMul,
    /// Same elements in row-major order, new shape.
    Reshape,
    /// Result dim `i` is operand dim `perm[i]`.
    Transpose {
        perm: Vec<usize>,
    },
    /// numpy `broadcast_to` the node's shape.
    Broadcast,
    /// `x[start..end]` along `axis` (the axis must have a constant size).
    Slice {
        axis: usize,
        start: usize,
        end: usize,
    },
    /// Concatenation of all operands along `axis`.
    Concat {
        axis: usize,
    },
    /// numpy `take(data, indices, axis)`: result shape is
    /// `data[..axis] ++ indices ++ data[axis+1..]`.
    Gather {
        axis: usize,
    },
    /// The adjoint of `Gather`: `scatter_add(updates, indices)` into zeros
    /// of the node's shape.
    ScatterAdd {
        axis: usize,
    },
    /// im2col, PyTorch's `nn.functional.unfold` generalized to any number
    /// of spatial dims and kept structured: `[N, C, *in]` becomes
    /// `[N, C, *kernel, *out]`, element `[n, c, *k, *o]` being input
    /// `[n, c, *(o * stride + k * dilation - padding)]`, or `fill` where
    /// that falls in the padding. Convolution is this plus a matmul and
    /// pooling is this plus a reduction, so one kernel serves both.
    Unfold {
        window: Window,
        fill: f64,
    },
    /// col2im, the adjoint of `Unfold`: every element of
    /// `[N, C, *kernel, *out]` is added into the input position it was read
    /// from (padding positions are dropped). The result `[N, C, *in]` is
    /// the node's declared type, since `in` is not implied by `out`.
    Fold {
        window: Window,
    },
    /// Counter-based uniform random numbers in `[0, 1)` of the node's
    /// declared shape and float dtype, from the scalar i32 operand `key`
    /// (fed per step by the runtime) and the call site's `stream`. Same key,
    /// stream and shape give the same values on every backend; see
    /// [`random_uniform`].
    Random {
        stream: u32,
    },
    /// Result `result` of a loop over a sequence axis whose step is the
    /// graph `body` (see [`crate::scan`], which defines the operands and
    /// the results). Nodes with the same body and operands are one loop.
    Scan {
        body: Arc<ScanBody>,
        result: usize,
    },
}

/// A sliding window over the trailing spatial dims of `[N, C, *spatial]`,
/// one entry per spatial dim, with PyTorch's convolution/pooling meaning.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Window {
    pub kernel: Vec<usize>,
    pub stride: Vec<usize>,
    pub padding: Vec<usize>,
    pub dilation: Vec<usize>,
}

impl Window {
    /// The number of spatial dims.
    pub fn rank(&self) -> usize {
        self.kernel.len()
    }

    /// Output size along spatial dim `i` for an input of size `n`:
    /// `(n + 2·pad − dil·(k − 1) − 1) / stride + 1`, or `None` when the
    /// dilated kernel does not fit in the padded input.
    pub fn out_size(&self, i: usize, n: usize) -> Option<usize> {
        let span = self.dilation[i] * (self.kernel[i].checked_sub(1)?) + 1;
        let padded = n + 2 * self.padding[i];
        if self.stride[i] == 0 || span > padded {
            return None;
        }
        Some((padded - span) / self.stride[i] + 1)
    }

    /// Checks that all four lists have one entry per spatial dim, and that
    /// kernel, stride and dilation are positive.
    pub fn check(&self) -> Result<(), String> {
        let d = self.rank();
        if d == 0 {
            return Err("a window needs at least one spatial dim".into());
        }
        if self.stride.len() != d || self.padding.len() != d || self.dilation.len() != d {
            return Err(format!(
                "window lists differ in length: kernel {:?}, stride {:?}, padding {:?}, dilation {:?}",
                self.kernel, self.stride, self.padding, self.dilation
            ));
        }
        let positive = |v: &[usize]| v.iter().all(|&x| x > 0);
        if !positive(&self.kernel) || !positive(&self.stride) || !positive(&self.dilation) {
            return Err(format!(
                "kernel {:?}, stride {:?} and dilation {:?} must be positive",
                self.kernel, self.stride, self.dilation
            ));
        }
        Ok(())
    }
}

/// The bits behind `Op::Random`: two rounds of the `lowbias32` integer
/// hash (Chris Wellons' constants) over the element's row-major index,
/// keyed by `key` and `stream`. Pure 32-bit integer arithmetic, so the
/// reference interpreter and generated vector code agree bit for bit.
pub fn random_bits(key: u32, stream: u32, index: u32) -> u32 {
    let seed = lowbias32(key ^ lowbias32(stream.wrapping_add(0x9e37_79b9)));
    lowbias32(lowbias32(index ^ seed).wrapping_add(seed))
}

/// Element `index` of `Op::Random`: the top 24 bits of [`random_bits`]
/// scaled to `[0, 1)`, exact in f32.
pub fn random_uniform(key: u32, stream: u32, index: u32) -> f64 {
    (random_bits(key, stream, index) >> 8) as f64 * (1.0 / 16_777_216.0)
}

/// A bijective 32-bit mixer with low bias (x ^= x >> 16; x *= 0x7feb352d;
/// x ^= x >> 15; x *= 0x846ca68b; x ^= x >> 16).
pub fn lowbias32(mut x: u32) -> u32 {
    x ^= x >> 16;
    x = x.wrapping_mul(0x7feb_352d);
    x ^= x >> 15;
    x = x.wrapping_mul(0x846c_a68b);
    x ^= x >> 16;
    x
}

#[derive(Debug, Clone, PartialEq)]
pub enum Literal {
    Splat(f64),
    Dense(Vec<f64>),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum UnaryOp {
    Neg,
    Exp,
    Log,
    Sqrt,
    Tanh,
    Sigmoid,
    Abs,
    /// To the nearest integer, ties to even (`torch.round`, `nearbyint`
    /// under the default rounding mode): what quantization rounds with.
    Round,
    /// The value itself, with no gradient (`torch.Tensor.detach`,
    /// `jax.lax.stop_gradient`): `x + detach(f(x) − x)` computes `f(x)`
    /// and passes the gradient straight through, as quantization-aware
    /// training's fake quantization does.
    Detach,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum BinaryOp {
    Add,
    Sub,
    Mul,
    Div,
    Pow,
    Max,
    Min,
    Lt,
    Le,
    Gt,
    Ge,
    Eq,
    Ne,
}

impl BinaryOp {
    /// Comparisons produce `bool`; everything else keeps the operand dtype.
    pub fn is_comparison(self) -> bool {
        matches!(
            self,
            BinaryOp::Lt | BinaryOp::Le | BinaryOp::Gt | BinaryOp::Ge | BinaryOp::Eq | BinaryOp::Ne
        )
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum ReduceOp {
    Sum,
    Mean,
    Max,
}

/// Where the gradient of a max reduction goes when several elements equal
/// the maximum. The value is the same either way; only `reduce_max` may
/// have `First`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Default)]
pub enum Ties {
    /// Split evenly among the tied maxima, like `torch.amax`.
    #[default]
    Split,
    /// All to the first maximum in row-major order over the reduced axes
    /// (a NaN counts as the maximum, the first NaN wins), like
    /// `nn.MaxPool2d`, whose gradient follows its arg-max indices.
    First,
}

impl Ties {
    /// The textual IR's name of the attribute's value.
    pub fn name(self) -> &'static str {
        match self {
            Ties::Split => "split",
            Ties::First => "first",
        }
    }
}

/// How a param or state tensor gets its first value. Fans follow PyTorch's
/// rule for our layouts: a rank-2 weight is `[in, out]`; for rank >= 3
/// (convolution `[out, in, k...]`) `fan_in = in * prod(k)`, `fan_out = out * prod(k)`.
#[derive(Debug, Clone, PartialEq)]
pub enum Init {
    Zeros,
    Ones,
    Const(f64),
    Uniform { low: f64, high: f64 },
    Normal { mean: f64, std: f64 },
    XavierUniform,
    XavierNormal,
    KaimingUniform,
    KaimingNormal,
}

impl BinaryOp {
    /// Every binary op, in the op table's order.
    pub const ALL: &'static [BinaryOp] = &[
        BinaryOp::Add,
        BinaryOp::Sub,
        BinaryOp::Mul,
        BinaryOp::Div,
        BinaryOp::Pow,
        BinaryOp::Max,
        BinaryOp::Min,
        BinaryOp::Lt,
        BinaryOp::Le,
        BinaryOp::Gt,
        BinaryOp::Ge,
        BinaryOp::Eq,
        BinaryOp::Ne,
    ];
}

impl UnaryOp {
    /// Every unary op, in the op table's order.
    pub const ALL: &'static [UnaryOp] = &[
        UnaryOp::Neg,
        UnaryOp::Exp,
        UnaryOp::Log,
        UnaryOp::Sqrt,
        UnaryOp::Tanh,
        UnaryOp::Sigmoid,
        UnaryOp::Abs,
        UnaryOp::Round,
        UnaryOp::Detach,
    ];
}

impl ReduceOp {
    pub const ALL: &'static [ReduceOp] = &[ReduceOp::Sum, ReduceOp::Mean, ReduceOp::Max];
}

impl Init {
    pub fn name(&self) -> &'static str {
        match self {
            Init::Zeros => "zeros",
            Init::Ones => "ones",
            Init::Const(_) => "constant",
            Init::Uniform { .. } => "uniform",
            Init::Normal { .. } => "normal",
            Init::XavierUniform => "xavier_uniform",
            Init::XavierNormal => "xavier_normal",
            Init::KaimingUniform => "kaiming_uniform",
            Init::KaimingNormal => "kaiming_normal",
        }
    }
}

impl fmt::Display for Init {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Init::Const(v) => write!(f, "constant({v:?})"),
            Init::Uniform { low, high } => write!(f, "uniform({low:?}, {high:?})"),
            Init::Normal { mean, std } => write!(f, "normal({mean:?}, {std:?})"),
            other => f.write_str(other.name()),
        }
    }
}
