//! The primitive op set. Everything the language can say lowers to these;
//! composite layers (softmax, cross-entropy, ...) are built from them in the
//! prelude and fused back into fast kernels by the optimizer.
//!
//! Ops whose result shape is not implied by their operands (`Const`, `Iota`,
//! `Reshape`, `Broadcast`, `Cast`, `ScatterAdd`, inputs, params and state)
//! take it from the node's declared type, so an attribute is never stored twice.

use std::fmt;

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
    Reduce {
        op: ReduceOp,
        axes: Vec<usize>,
        keepdim: bool,
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
}

#[derive(Debug, Clone, PartialEq)]
pub enum Literal {
    Splat(f64),
    Dense(Vec<f64>),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum UnaryOp {
    Neg,
    Exp,
    Log,
    Sqrt,
    Tanh,
    Sigmoid,
    Abs,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
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

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ReduceOp {
    Sum,
    Mean,
    Max,
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

macro_rules! names {
    ($ty:ty { $($variant:ident => $name:literal),* $(,)? }) => {
        impl $ty {
            pub const ALL: &'static [$ty] = &[$(<$ty>::$variant),*];
            pub fn name(self) -> &'static str {
                match self { $(<$ty>::$variant => $name),* }
            }
            pub fn from_name(name: &str) -> Option<$ty> {
                match name { $($name => Some(<$ty>::$variant),)* _ => None }
            }
        }
        impl fmt::Display for $ty {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(self.name())
            }
        }
    };
}

names!(UnaryOp {
    Neg => "neg", Exp => "exp", Log => "log", Sqrt => "sqrt",
    Tanh => "tanh", Sigmoid => "sigmoid", Abs => "abs",
});

names!(BinaryOp {
    Add => "add", Sub => "sub", Mul => "mul", Div => "div", Pow => "pow",
    Max => "max", Min => "min", Lt => "lt", Le => "le", Gt => "gt",
    Ge => "ge", Eq => "eq", Ne => "ne",
});

names!(ReduceOp { Sum => "sum", Mean => "mean", Max => "max" });

impl Op {
    /// The mnemonic used by the textual IR.
    pub fn mnemonic(&self) -> &'static str {
        match self {
            Op::Input { .. } => "input",
            Op::Param { .. } => "param",
            Op::State { .. } => "state",
            Op::Const(_) => "const",
            Op::Iota { .. } => "iota",
            Op::Unary(u) => u.name(),
            Op::Binary(b) => b.name(),
            Op::Select => "select",
            Op::Cast => "cast",
            Op::Reduce { op, .. } => match op {
                ReduceOp::Sum => "reduce_sum",
                ReduceOp::Mean => "reduce_mean",
                ReduceOp::Max => "reduce_max",
            },
            Op::ArgMax { .. } => "argmax",
            Op::MatMul => "matmul",
            Op::Reshape => "reshape",
            Op::Transpose { .. } => "transpose",
            Op::Broadcast => "broadcast",
            Op::Slice { .. } => "slice",
            Op::Concat { .. } => "concat",
            Op::Gather { .. } => "gather",
            Op::ScatterAdd { .. } => "scatter_add",
        }
    }

    /// How many operands the op takes; `None` for variadic `Concat`.
    pub fn arity(&self) -> Option<usize> {
        Some(match self {
            Op::Input { .. }
            | Op::Param { .. }
            | Op::State { .. }
            | Op::Const(_)
            | Op::Iota { .. } => 0,
            Op::Unary(_)
            | Op::Cast
            | Op::Reduce { .. }
            | Op::ArgMax { .. }
            | Op::Reshape
            | Op::Transpose { .. }
            | Op::Broadcast
            | Op::Slice { .. } => 1,
            Op::Binary(_) | Op::MatMul | Op::Gather { .. } | Op::ScatterAdd { .. } => 2,
            Op::Select => 3,
            Op::Concat { .. } => return None,
        })
    }

    /// Ops that hold state across steps or are fed from outside the graph.
    pub fn is_leaf(&self) -> bool {
        matches!(
            self,
            Op::Input { .. } | Op::Param { .. } | Op::State { .. } | Op::Const(_) | Op::Iota { .. }
        )
    }
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
