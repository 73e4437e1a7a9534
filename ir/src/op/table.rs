//! The op table: every op declared once, a row per mnemonic.
//!
//! A row gives what every stage needs to know about an op without looking
//! at its attribute values: its textual mnemonic, how many operands it
//! takes, the names of its attributes, whether it takes its result type from
//! the node, its [`OpClass`], and the cost facts the optimizer's cost model
//! and the code generator's grouping share ([`OpInfo::units`],
//! [`OpInfo::inline`], [`OpInfo::recompute`]). The parser and printer of the
//! textual IR, the e-graph language and the cost model read it; code
//! generation matches on the class. What an op *means* is not here: that
//! is the reference interpreter (`interp.rs`), with each op's gradient in
//! `passes/src/autodiff.rs` and its kernel in `codegen`.
//!
//! Rows are per mnemonic, not per `Op` variant, so sub-ops of one variant
//! that differ (`pow` is elementwise but calls out per element and is never
//! computed inside another loop; `div` costs four adds) say so in their own
//! row instead of in an exception somewhere else.

use super::{BinaryOp, Literal, Op, ReduceOp, UnaryOp};
use std::fmt;

/// An op without its attributes: what the textual IR names and the e-graph
/// language uses as an operator. `Ord` is the table's order.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum OpKind {
    Input,
    Param,
    State,
    Const,
    Iota,
    Unary(UnaryOp),
    Binary(BinaryOp),
    Select,
    Cast,
    Reduce(ReduceOp),
    ArgMax,
    MatMul,
    Reshape,
    Transpose,
    Broadcast,
    Slice,
    Concat,
    Gather,
    ScatterAdd,
    Unfold,
    Fold,
    Random,
    Scan,
}

/// What kind of computation an op is. Passes and code generation decide by
/// class wherever every op of a class is treated alike, so that a new op of
/// an existing class needs no new case there, and a new class fails to
/// compile wherever it is not handled.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum OpClass {
    /// Fed from outside the graph (input) or persistent across steps
    /// (param, state): lives in its own buffer.
    Leaf,
    /// Known before a step runs (const, iota): filled once.
    Constant,
    /// The operand's elements in another layout, no arithmetic (reshape,
    /// transpose, broadcast, slice): a view where strides can express it.
    View,
    /// Each result element from the operands' elements at the same index
    /// after broadcasting (unary, binary, select, cast).
    Elementwise,
    /// Combines the elements along some axes into one (reduce_*, argmax).
    Reduction,
    /// Sums of products over a shared axis (matmul).
    Contraction,
    /// Sliding-window copies (unfold) and their adjoint sums (fold).
    Window,
    /// Data-dependent indexing (gather, scatter_add).
    Indexing,
    /// Operands copied side by side (concat).
    Join,
    /// Values computed from their index and a key (random).
    Generator,
    /// A loop running a graph of its own per step (scan).
    Loop,
}

/// How many operands an op takes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Arity {
    Exactly(usize),
    /// Variadic, at least this many (concat).
    AtLeast(usize),
}

impl Arity {
    pub fn admits(self, n: usize) -> bool {
        match self {
            Arity::Exactly(k) => n == k,
            Arity::AtLeast(k) => n >= k,
        }
    }
}

impl fmt::Display for Arity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Arity::Exactly(1) => f.write_str("1 operand"),
            Arity::Exactly(k) => write!(f, "{k} operands"),
            Arity::AtLeast(k) => {
                write!(f, "at least {k} operand{}", if *k == 1 { "" } else { "s" })
            }
        }
    }
}

/// One row of the op table.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OpInfo {
    pub kind: OpKind,
    /// The textual IR's name, also the operator in rewrite patterns.
    pub mnemonic: &'static str,
    pub arity: Arity,
    /// Attribute names in the order the textual form writes them
    /// (`name`, `init` and `value` are written bare, the others as `key=`).
    pub attrs: &'static [&'static str],
    /// The result type is the node's declared type, not implied by the
    /// operands (a reshape's shape, a cast's dtype, a leaf's type).
    pub typed: bool,
    pub class: OpClass,
    /// Cost units per unit of work: per result element for elementwise ops
    /// and generators, per operand element for reductions, per
    /// multiply-add pair for contractions, per element moved for windows,
    /// indexing and joins; 0 for what runs no arithmetic. An `f32x4` add,
    /// multiply, compare, select or cast is 1, a divide or square root 4
    /// (it occupies the divider for about four adds' throughput slots), a
    /// transcendental or `pow` 8 (a polynomial of 20–40 instructions).
    pub units: u32,
    /// A reading loop can compute the value per element in its own
    /// registers instead of reading a buffer. Splat constants can too,
    /// dense ones cannot: that depends on the literal, so ask
    /// [`Op::inline`].
    pub inline: bool,
    /// Cheap enough to be computed again by a second or third reading
    /// loop rather than stored (the grouping's recompute rule bounds how
    /// much); transcendentals, `pow` and `random` are computed once.
    pub recompute: bool,
}

macro_rules! ops {
    ($(
        $mnemonic:literal => $kind:ident $(($sub:ident :: $subv:ident))?,
        $arity:expr, [$($attr:literal),*], typed: $typed:literal, $class:ident,
        units: $units:literal, inline: $inline:literal, recompute: $recompute:literal;
    )*) => {
        impl OpKind {
            /// Every kind, in the table's order.
            pub const ALL: &'static [OpKind] = &[$(OpKind::$kind $(($sub::$subv))?),*];

            /// This kind's row of the table.
            pub fn info(self) -> &'static OpInfo {
                match self {
                    $(OpKind::$kind $(($sub::$subv))? => &OpInfo {
                        kind: OpKind::$kind $(($sub::$subv))?,
                        mnemonic: $mnemonic,
                        arity: $arity,
                        attrs: &[$($attr),*],
                        typed: $typed,
                        class: OpClass::$class,
                        units: $units,
                        inline: $inline,
                        recompute: $recompute,
                    },)*
                }
            }

            /// The kind named by a mnemonic of the textual IR.
            pub fn from_mnemonic(mnemonic: &str) -> Option<OpKind> {
                match mnemonic {
                    $($mnemonic => Some(OpKind::$kind $(($sub::$subv))?),)*
                    _ => None,
                }
            }
        }
    };
}

use Arity::{AtLeast, Exactly};

ops! {
    "input"       => Input,               Exactly(0), ["name"], typed: true, Leaf,
                     units: 0, inline: false, recompute: false;
    "param"       => Param,               Exactly(0), ["name", "init"], typed: true, Leaf,
                     units: 0, inline: false, recompute: false;
    "state"       => State,               Exactly(0), ["name", "init"], typed: true, Leaf,
                     units: 0, inline: false, recompute: false;
    "const"       => Const,               Exactly(0), ["value"], typed: true, Constant,
                     units: 0, inline: true, recompute: true;
    "iota"        => Iota,                Exactly(0), ["axis"], typed: true, Constant,
                     units: 0, inline: false, recompute: false;
    "neg"         => Unary(UnaryOp::Neg),     Exactly(1), [], typed: false, Elementwise,
                     units: 1, inline: true, recompute: true;
    "exp"         => Unary(UnaryOp::Exp),     Exactly(1), [], typed: false, Elementwise,
                     units: 8, inline: true, recompute: false;
    "log"         => Unary(UnaryOp::Log),     Exactly(1), [], typed: false, Elementwise,
                     units: 8, inline: true, recompute: false;
    "sqrt"        => Unary(UnaryOp::Sqrt),    Exactly(1), [], typed: false, Elementwise,
                     units: 4, inline: true, recompute: true;
    "tanh"        => Unary(UnaryOp::Tanh),    Exactly(1), [], typed: false, Elementwise,
                     units: 8, inline: true, recompute: false;
    "sigmoid"     => Unary(UnaryOp::Sigmoid), Exactly(1), [], typed: false, Elementwise,
                     units: 8, inline: true, recompute: false;
    "abs"         => Unary(UnaryOp::Abs),     Exactly(1), [], typed: false, Elementwise,
                     units: 1, inline: true, recompute: true;
    "round"       => Unary(UnaryOp::Round),   Exactly(1), [], typed: false, Elementwise,
                     units: 1, inline: true, recompute: true;
    "detach"      => Unary(UnaryOp::Detach),  Exactly(1), [], typed: false, Elementwise,
                     units: 0, inline: true, recompute: true;
    "add"         => Binary(BinaryOp::Add),   Exactly(2), [], typed: false, Elementwise,
                     units: 1, inline: true, recompute: true;
    "sub"         => Binary(BinaryOp::Sub),   Exactly(2), [], typed: false, Elementwise,
                     units: 1, inline: true, recompute: true;
    "mul"         => Binary(BinaryOp::Mul),   Exactly(2), [], typed: false, Elementwise,
                     units: 1, inline: true, recompute: true;
    "div"         => Binary(BinaryOp::Div),   Exactly(2), [], typed: false, Elementwise,
                     units: 4, inline: true, recompute: true;
    // A call per element: its own loop, never inside another.
    "pow"         => Binary(BinaryOp::Pow),   Exactly(2), [], typed: false, Elementwise,
                     units: 8, inline: false, recompute: false;
    "max"         => Binary(BinaryOp::Max),   Exactly(2), [], typed: false, Elementwise,
                     units: 1, inline: true, recompute: true;
    "min"         => Binary(BinaryOp::Min),   Exactly(2), [], typed: false, Elementwise,
                     units: 1, inline: true, recompute: true;
    "lt"          => Binary(BinaryOp::Lt),    Exactly(2), [], typed: false, Elementwise,
                     units: 1, inline: true, recompute: true;
    "le"          => Binary(BinaryOp::Le),    Exactly(2), [], typed: false, Elementwise,
                     units: 1, inline: true, recompute: true;
    "gt"          => Binary(BinaryOp::Gt),    Exactly(2), [], typed: false, Elementwise,
                     units: 1, inline: true, recompute: true;
    "ge"          => Binary(BinaryOp::Ge),    Exactly(2), [], typed: false, Elementwise,
                     units: 1, inline: true, recompute: true;
    "eq"          => Binary(BinaryOp::Eq),    Exactly(2), [], typed: false, Elementwise,
                     units: 1, inline: true, recompute: true;
    "ne"          => Binary(BinaryOp::Ne),    Exactly(2), [], typed: false, Elementwise,
                     units: 1, inline: true, recompute: true;
    "select"      => Select,              Exactly(3), [], typed: false, Elementwise,
                     units: 1, inline: true, recompute: true;
    "cast"        => Cast,                Exactly(1), [], typed: true, Elementwise,
                     units: 1, inline: true, recompute: true;
    "reduce_sum"  => Reduce(ReduceOp::Sum),  Exactly(1), ["axes", "keepdim"], typed: false, Reduction,
                     units: 1, inline: false, recompute: false;
    "reduce_mean" => Reduce(ReduceOp::Mean), Exactly(1), ["axes", "keepdim"], typed: false, Reduction,
                     units: 1, inline: false, recompute: false;
    "reduce_max"  => Reduce(ReduceOp::Max),  Exactly(1), ["axes", "keepdim", "ties"], typed: false, Reduction,
                     units: 1, inline: false, recompute: false;
    "argmax"      => ArgMax,              Exactly(1), ["axis"], typed: false, Reduction,
                     units: 1, inline: false, recompute: false;
    "matmul"      => MatMul,              Exactly(2), [], typed: false, Contraction,
                     units: 2, inline: false, recompute: false;
    "reshape"     => Reshape,             Exactly(1), [], typed: true, View,
                     units: 0, inline: true, recompute: true;
    "transpose"   => Transpose,           Exactly(1), ["perm"], typed: false, View,
                     units: 0, inline: true, recompute: true;
    "broadcast"   => Broadcast,           Exactly(1), [], typed: true, View,
                     units: 0, inline: true, recompute: true;
    "slice"       => Slice,               Exactly(1), ["axis", "start", "end"], typed: false, View,
                     units: 0, inline: true, recompute: true;
    "concat"      => Concat,              AtLeast(1), ["axis"], typed: false, Join,
                     units: 1, inline: false, recompute: false;
    "gather"      => Gather,              Exactly(2), ["axis"], typed: false, Indexing,
                     units: 1, inline: false, recompute: false;
    "scatter_add" => ScatterAdd,          Exactly(2), ["axis"], typed: true, Indexing,
                     units: 1, inline: false, recompute: false;
    "unfold"      => Unfold,              Exactly(1),
                     ["kernel", "stride", "padding", "dilation", "fill"], typed: false, Window,
                     units: 1, inline: false, recompute: false;
    "fold"        => Fold,                Exactly(1),
                     ["kernel", "stride", "padding", "dilation"], typed: true, Window,
                     units: 1, inline: false, recompute: false;
    // Two rounds of a 32-bit hash with `pmulld`s: about 25 units measured
    // (`cargo bench -p nnc-codegen --bench group`); counted as a
    // transcendental, and never recomputed.
    "random"      => Random,              Exactly(1), ["stream"], typed: true, Generator,
                     units: 8, inline: true, recompute: false;
    // What a loop costs is its trip count times its body's cost, which
    // the cost model computes from the body; no per-element units.
    "scan"        => Scan,                AtLeast(1), ["body", "result"], typed: false, Loop,
                     units: 0, inline: false, recompute: false;
}

impl OpKind {
    pub fn mnemonic(self) -> &'static str {
        self.info().mnemonic
    }

    pub fn class(self) -> OpClass {
        self.info().class
    }
}

impl fmt::Display for OpKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.mnemonic())
    }
}

impl Op {
    /// The op without its attributes.
    pub fn kind(&self) -> OpKind {
        match self {
            Op::Input { .. } => OpKind::Input,
            Op::Param { .. } => OpKind::Param,
            Op::State { .. } => OpKind::State,
            Op::Const(_) => OpKind::Const,
            Op::Iota { .. } => OpKind::Iota,
            Op::Unary(u) => OpKind::Unary(*u),
            Op::Binary(b) => OpKind::Binary(*b),
            Op::Select => OpKind::Select,
            Op::Cast => OpKind::Cast,
            Op::Reduce { op, .. } => OpKind::Reduce(*op),
            Op::ArgMax { .. } => OpKind::ArgMax,
            Op::MatMul => OpKind::MatMul,
            Op::Reshape => OpKind::Reshape,
            Op::Transpose { .. } => OpKind::Transpose,
            Op::Broadcast => OpKind::Broadcast,
            Op::Slice { .. } => OpKind::Slice,
            Op::Concat { .. } => OpKind::Concat,
            Op::Gather { .. } => OpKind::Gather,
            Op::ScatterAdd { .. } => OpKind::ScatterAdd,
            Op::Unfold { .. } => OpKind::Unfold,
            Op::Fold { .. } => OpKind::Fold,
            Op::Random { .. } => OpKind::Random,
            Op::Scan { .. } => OpKind::Scan,
        }
    }

    /// This op's row of the table.
    pub fn info(&self) -> &'static OpInfo {
        self.kind().info()
    }

    /// The mnemonic used by the textual IR.
    pub fn mnemonic(&self) -> &'static str {
        self.info().mnemonic
    }

    pub fn arity(&self) -> Arity {
        self.info().arity
    }

    pub fn class(&self) -> OpClass {
        self.info().class
    }

    /// Ops that hold state across steps, are fed from outside the graph, or
    /// are known before a step runs: they read no operands.
    pub fn is_leaf(&self) -> bool {
        matches!(self.class(), OpClass::Leaf | OpClass::Constant)
    }

    /// Whether a reading loop can compute this value per element (see
    /// [`OpInfo::inline`]): the table's answer, except that a dense
    /// constant is a buffer.
    pub fn inline(&self) -> bool {
        match self {
            Op::Const(Literal::Dense(_)) => false,
            op => op.info().inline,
        }
    }
}

impl UnaryOp {
    pub fn name(self) -> &'static str {
        OpKind::Unary(self).mnemonic()
    }

    pub fn from_name(name: &str) -> Option<UnaryOp> {
        match OpKind::from_mnemonic(name)? {
            OpKind::Unary(u) => Some(u),
            _ => None,
        }
    }
}

impl BinaryOp {
    pub fn name(self) -> &'static str {
        OpKind::Binary(self).mnemonic()
    }

    pub fn from_name(name: &str) -> Option<BinaryOp> {
        match OpKind::from_mnemonic(name)? {
            OpKind::Binary(b) => Some(b),
            _ => None,
        }
    }
}

impl ReduceOp {
    /// The reduction's short name (`sum`, `mean`, `max`), as in rule
    /// names; the op's mnemonic is `reduce_` and this, from the table.
    pub fn name(self) -> &'static str {
        let mnemonic = OpKind::Reduce(self).mnemonic();
        mnemonic.strip_prefix("reduce_").unwrap_or(mnemonic)
    }
}

impl fmt::Display for ReduceOp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl fmt::Display for UnaryOp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl fmt::Display for BinaryOp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_row_is_its_own_kind_and_mnemonic() {
        for &kind in OpKind::ALL {
            let info = kind.info();
            assert_eq!(info.kind, kind);
            assert_eq!(OpKind::from_mnemonic(info.mnemonic), Some(kind));
        }
        let mut mnemonics: Vec<_> = OpKind::ALL.iter().map(|k| k.mnemonic()).collect();
        mnemonics.sort_unstable();
        mnemonics.dedup();
        assert_eq!(
            mnemonics.len(),
            OpKind::ALL.len(),
            "a mnemonic is used twice"
        );
    }

    #[test]
    fn the_table_covers_every_sub_op_in_order() {
        let unary: Vec<_> = OpKind::ALL
            .iter()
            .filter_map(|k| match k {
                OpKind::Unary(u) => Some(*u),
                _ => None,
            })
            .collect();
        assert_eq!(unary, UnaryOp::ALL);
        let binary: Vec<_> = OpKind::ALL
            .iter()
            .filter_map(|k| match k {
                OpKind::Binary(b) => Some(*b),
                _ => None,
            })
            .collect();
        assert_eq!(binary, BinaryOp::ALL);
        let mut sorted = OpKind::ALL.to_vec();
        sorted.sort();
        assert_eq!(sorted, OpKind::ALL, "the table's order is `Ord`'s");
    }

    #[test]
    fn leaves_take_no_operands_and_declare_their_type() {
        for &kind in OpKind::ALL {
            let info = kind.info();
            let leaf = matches!(info.class, OpClass::Leaf | OpClass::Constant);
            assert_eq!(leaf, info.arity == Arity::Exactly(0), "{kind}");
            if leaf {
                assert!(info.typed, "{kind}");
            }
            // What is never stored between readers is never recomputed
            // either, and recomputing implies being computable inline.
            if info.recompute {
                assert!(info.inline, "{kind}");
            }
        }
    }
}
