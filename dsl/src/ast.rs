//! Abstract syntax tree of a `.nn` file.
//!
//! Every node carries a [`Span`] of byte offsets into the source text. The
//! `Display` impls print a compact, S-expression-like form (used by the
//! snapshot tests): items and statements in source-like headers, one per
//! line, and expressions as prefix S-expressions, e.g. `(+ y b)`,
//! `(dense x 128)`, `(-> image (dense hidden))`, `[1 2]`, `(sum x axis: -1)`.

use std::fmt;

pub use crate::span::Span;

/// A whole `.nn` file.
#[derive(Debug, Clone, PartialEq)]
pub struct Program {
    pub items: Vec<Item>,
}

/// A top-level item.
#[derive(Debug, Clone, PartialEq)]
pub enum Item {
    Layer(LayerDef),
    Model(ModelDef),
    Data(DataDef),
    Train(TrainDef),
}

impl Item {
    pub fn span(&self) -> Span {
        match self {
            Item::Layer(d) => d.span,
            Item::Model(d) => d.span,
            Item::Data(d) => d.span,
            Item::Train(d) => d.span,
        }
    }

    /// The item's name (for `train`, the trained model's name).
    pub fn name(&self) -> &Ident {
        match self {
            Item::Layer(d) => &d.name,
            Item::Model(d) => &d.name,
            Item::Data(d) => &d.name,
            Item::Train(d) => &d.model,
        }
    }
}

/// A name as written in the source.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Ident {
    pub name: String,
    pub span: Span,
}

impl Ident {
    pub fn as_str(&self) -> &str {
        &self.name
    }
}

/// `layer NAME(params) { body }`
#[derive(Debug, Clone, PartialEq)]
pub struct LayerDef {
    pub name: Ident,
    pub params: Vec<Param>,
    pub body: Vec<Stmt>,
    pub span: Span,
}

/// `model NAME(params)? { body }` (no parentheses = no parameters).
#[derive(Debug, Clone, PartialEq)]
pub struct ModelDef {
    pub name: Ident,
    pub params: Vec<Param>,
    pub body: Vec<Stmt>,
    pub span: Span,
}

/// A layer/model parameter `NAME: TYPE (= DEFAULT)?`.
#[derive(Debug, Clone, PartialEq)]
pub struct Param {
    pub name: Ident,
    pub ty: TypeExpr,
    pub default: Option<Expr>,
    pub span: Span,
}

/// A type annotation.
#[derive(Debug, Clone, PartialEq)]
pub struct TypeExpr {
    pub kind: TypeKind,
    pub span: Span,
}

#[derive(Debug, Clone, PartialEq)]
pub enum TypeKind {
    /// `int`
    Int,
    /// `float`
    Float,
    /// `bool` (the scalar type; `bool[...]` is a tensor type)
    Bool,
    /// `str`
    Str,
    /// `ints`: an int, or a list of ints (e.g. a kernel size given once for
    /// every spatial dim, or once per dim).
    Ints,
    /// `DTYPE[dims]`, or a bare `DTYPE` (`dims == None`: element type only,
    /// allowed only in data-field annotations). `f32[]` has `Some(vec![])`
    /// and is a rank-0 tensor.
    Tensor {
        dtype: DType,
        dims: Option<Vec<DimPattern>>,
    },
}

/// Tensor element types.
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

    /// The IR's element type of the same name.
    pub fn ir(self) -> nnc_ir::DType {
        match self {
            DType::F32 => nnc_ir::DType::F32,
            DType::F64 => nnc_ir::DType::F64,
            DType::I32 => nnc_ir::DType::I32,
            DType::I8 => nnc_ir::DType::I8,
            DType::U8 => nnc_ir::DType::U8,
            DType::Bool => nnc_ir::DType::Bool,
        }
    }

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
}

/// One entry of a tensor type's dimension list.
#[derive(Debug, Clone, PartialEq)]
pub struct DimPattern {
    pub kind: DimKind,
    pub span: Span,
}

#[derive(Debug, Clone, PartialEq)]
pub enum DimKind {
    /// A fixed size, e.g. `784`.
    Const(u64),
    /// A named (symbolic) dimension, e.g. `in`, `B`.
    Named(Ident),
    /// `...` (`None`) or `...name` (`Some`): any number of dimensions.
    Rest(Option<Ident>),
    /// A size computed from bound names, e.g. `c / groups` (never a lone
    /// number or name: those are `Const` and `Named`).
    Expr(Box<Expr>),
}

/// A statement in a layer or model body.
#[derive(Debug, Clone, PartialEq)]
pub enum Stmt {
    /// `param NAME: TENSOR_TYPE (= INIT)?` — a trainable tensor.
    Param {
        name: Ident,
        ty: TypeExpr,
        init: Option<Expr>,
        span: Span,
    },
    /// `state NAME: TENSOR_TYPE (= INIT)?` — a persistent tensor that is
    /// not trained (running statistics), changed only by `update`.
    State {
        name: Ident,
        ty: TypeExpr,
        init: Option<Expr>,
        span: Span,
    },
    /// `update NAME = EXPR` — the state's value after each training step.
    Update {
        name: Ident,
        value: Expr,
        span: Span,
    },
    /// `assert COND, MESSAGE` — a compile-time check.
    Assert {
        cond: Expr,
        message: Expr,
        span: Span,
    },
    /// `input NAME: TENSOR_TYPE`
    Input {
        name: Ident,
        ty: TypeExpr,
        span: Span,
    },
    /// `output A, B, ...` (`value == None`) or `output NAME = EXPR`
    /// (`names.len() == 1`, `value == Some`).
    Output {
        names: Vec<Ident>,
        value: Option<Expr>,
        span: Span,
    },
    /// `return EXPR`
    Return { value: Expr, span: Span },
    /// `scan(x = each(xs), h = h0, axis: 1, reverse: false) { ... }`: a loop
    /// over a sequence axis whose body runs once per step (see
    /// `spec/language.md`, "Recurrence").
    Scan {
        operands: Vec<ScanOperand>,
        /// The keyword options, `axis:` and `reverse:`.
        options: Vec<Arg>,
        body: Vec<Stmt>,
        span: Span,
    },
    /// `yield NAME = EXPR` inside a scan body: a per-step output, stacked
    /// along the scan's axis after the loop.
    Yield {
        name: Ident,
        value: Expr,
        span: Span,
    },
    /// `let NAME = EXPR` or `NAME = EXPR` (identical meaning), optionally
    /// with a shape pattern the value must match: `let y: f32[b, n] = EXPR`.
    Let {
        name: Ident,
        ty: Option<TypeExpr>,
        value: Expr,
        span: Span,
    },
}

/// `NAME = each(SEQ)` (a sequence, sliced per step) or `NAME = INIT` (a
/// carry) in a `scan` header.
#[derive(Debug, Clone, PartialEq)]
pub struct ScanOperand {
    pub name: Ident,
    /// The sequence (without `each`) or the carry's initial value.
    pub value: Expr,
    pub each: bool,
    pub span: Span,
}

impl Stmt {
    pub fn span(&self) -> Span {
        match self {
            Stmt::Scan { span, .. }
            | Stmt::Yield { span, .. }
            | Stmt::Param { span, .. }
            | Stmt::State { span, .. }
            | Stmt::Update { span, .. }
            | Stmt::Assert { span, .. }
            | Stmt::Input { span, .. }
            | Stmt::Output { span, .. }
            | Stmt::Return { span, .. }
            | Stmt::Let { span, .. } => *span,
        }
    }
}

/// An expression.
#[derive(Debug, Clone, PartialEq)]
pub struct Expr {
    pub kind: ExprKind,
    pub span: Span,
}

#[derive(Debug, Clone, PartialEq)]
pub enum ExprKind {
    /// An integer literal (no `.` and no exponent), e.g. `128`.
    Int(u64),
    /// A float literal, e.g. `0.9`, `1e-3`, `2.5E+4`.
    Float(f64),
    /// A string literal with escapes already decoded.
    Str(String),
    /// `true` / `false`
    Bool(bool),
    /// A name.
    Ident(Ident),
    /// `[a, b, ...]`
    List(Vec<Expr>),
    /// `callee(args)`
    Call { callee: Ident, args: Vec<Arg> },
    /// `lhs op rhs`
    Binary {
        op: BinOp,
        lhs: Box<Expr>,
        rhs: Box<Expr>,
    },
    /// `-operand`
    Neg(Box<Expr>),
    /// `input -> stage`: means `stage.callee(input, stage.args...)`.
    /// Left-associative: `a -> f -> g` is `Pipe(Pipe(a, f), g)`.
    Pipe { input: Box<Expr>, stage: Stage },
}

/// Binary arithmetic operators.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum BinOp {
    Add,
    Sub,
    Mul,
    Div,
    /// `%`: remainder, on compile-time numbers only.
    Rem,
}

impl BinOp {
    pub fn symbol(self) -> &'static str {
        match self {
            BinOp::Add => "+",
            BinOp::Sub => "-",
            BinOp::Mul => "*",
            BinOp::Div => "/",
            BinOp::Rem => "%",
        }
    }

    /// Binding strength: `+ -` are 1, `* / %` are 2.
    fn precedence(self) -> u8 {
        match self {
            BinOp::Add | BinOp::Sub => 1,
            BinOp::Mul | BinOp::Div | BinOp::Rem => 2,
        }
    }
}

/// A pipeline stage: `relu` (no args) or `dense(128)`. Both are calls whose
/// first positional argument is the pipeline input.
#[derive(Debug, Clone, PartialEq)]
pub struct Stage {
    pub callee: Ident,
    pub args: Vec<Arg>,
    /// Whether the stage was written with parentheses (`f()` vs `f`);
    /// semantically irrelevant.
    pub parens: bool,
    pub span: Span,
}

/// A call argument: positional (`name == None`) or keyword (`name: value`).
/// The parser guarantees positional arguments precede keyword arguments.
#[derive(Debug, Clone, PartialEq)]
pub struct Arg {
    pub name: Option<Ident>,
    pub value: Expr,
    pub span: Span,
}

/// `data NAME { fields; test ... }`
#[derive(Debug, Clone, PartialEq)]
pub struct DataDef {
    pub name: Ident,
    pub fields: Vec<DataField>,
    /// At most one `test` entry (a second one is a parse error).
    pub test: Option<TestSpec>,
    pub span: Span,
}

/// `NAME (: TYPE)? = EXPR` in a data block.
#[derive(Debug, Clone, PartialEq)]
pub struct DataField {
    pub name: Ident,
    /// A tensor type or a bare dtype (`TypeKind::Tensor { dims: None, .. }`).
    pub ty: Option<TypeExpr>,
    pub value: Expr,
    pub span: Span,
}

/// The test split of a data block.
#[derive(Debug, Clone, PartialEq)]
pub enum TestSpec {
    /// `test { fields }`: separate sources.
    Fields { fields: Vec<DataField>, span: Span },
    /// `test = EXPR`, e.g. `test = split(0.2)`.
    Expr { value: Expr, span: Span },
}

impl TestSpec {
    pub fn span(&self) -> Span {
        match self {
            TestSpec::Fields { span, .. } | TestSpec::Expr { span, .. } => *span,
        }
    }
}

/// `train MODEL(args)? on DATA { settings }`
#[derive(Debug, Clone, PartialEq)]
pub struct TrainDef {
    pub model: Ident,
    pub model_args: Vec<Arg>,
    pub data: Ident,
    pub settings: Vec<Setting>,
    pub span: Span,
}

/// `KEY = EXPR` in a train block (keys are validated by the checker).
#[derive(Debug, Clone, PartialEq)]
pub struct Setting {
    pub key: Ident,
    pub value: Expr,
    pub span: Span,
}

// ---------------------------------------------------------------- Display

impl fmt::Display for Ident {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.name)
    }
}

impl fmt::Display for DType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl fmt::Display for BinOp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.symbol())
    }
}

impl fmt::Display for DimPattern {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.kind {
            DimKind::Const(n) => write!(f, "{n}"),
            DimKind::Named(id) => write!(f, "{id}"),
            DimKind::Rest(None) => f.write_str("..."),
            DimKind::Rest(Some(id)) => write!(f, "...{id}"),
            DimKind::Expr(e) => write_infix(f, e, 0),
        }
    }
}

/// Displays an expression in source form (`c / groups`), where the
/// `Display` of [`Expr`] gives the S-expression.
pub struct Infix<'a>(pub &'a Expr);

impl fmt::Display for Infix<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write_infix(f, self.0, 0)
    }
}

/// An expression as it would be written (`c / groups`), for dims in types
/// and error messages; parentheses only where precedence needs them.
fn write_infix(f: &mut fmt::Formatter<'_>, e: &Expr, outer: u8) -> fmt::Result {
    match &e.kind {
        ExprKind::Binary { op, lhs, rhs } => {
            let p = op.precedence();
            if p < outer {
                f.write_str("(")?;
            }
            write_infix(f, lhs, p)?;
            write!(f, " {op} ")?;
            // Left-associative: a right operand of equal precedence needs
            // parentheses (`a - (b - c)`).
            write_infix(f, rhs, p + 1)?;
            if p < outer {
                f.write_str(")")?;
            }
            Ok(())
        }
        ExprKind::Neg(x) => {
            f.write_str("-")?;
            write_infix(f, x, 3)
        }
        ExprKind::Int(n) => write!(f, "{n}"),
        ExprKind::Ident(id) => write!(f, "{id}"),
        ExprKind::Call { callee, args } => {
            write!(f, "{callee}(")?;
            for (i, a) in args.iter().enumerate() {
                if i > 0 {
                    f.write_str(", ")?;
                }
                if let Some(n) = &a.name {
                    write!(f, "{n}: ")?;
                }
                write_infix(f, &a.value, 0)?;
            }
            f.write_str(")")
        }
        ExprKind::Float(x) => write!(f, "{x:?}"),
        ExprKind::Str(s) => write!(f, "{s:?}"),
        ExprKind::Bool(b) => write!(f, "{b}"),
        ExprKind::List(items) => {
            f.write_str("[")?;
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    f.write_str(", ")?;
                }
                write_infix(f, item, 0)?;
            }
            f.write_str("]")
        }
        // The loosest binding: parenthesized inside anything else.
        ExprKind::Pipe { input, stage } => {
            if outer > 0 {
                f.write_str("(")?;
            }
            write_infix(f, input, 0)?;
            write!(f, " -> {}", stage.callee)?;
            if stage.parens || !stage.args.is_empty() {
                f.write_str("(")?;
                for (i, a) in stage.args.iter().enumerate() {
                    if i > 0 {
                        f.write_str(", ")?;
                    }
                    if let Some(n) = &a.name {
                        write!(f, "{n}: ")?;
                    }
                    write_infix(f, &a.value, 0)?;
                }
                f.write_str(")")?;
            }
            if outer > 0 {
                f.write_str(")")?;
            }
            Ok(())
        }
    }
}

/// Source-like: `int`, `f32[..., in]`, `i32`.
impl fmt::Display for TypeExpr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.kind {
            TypeKind::Int => f.write_str("int"),
            TypeKind::Float => f.write_str("float"),
            TypeKind::Bool => f.write_str("bool"),
            TypeKind::Str => f.write_str("str"),
            TypeKind::Ints => f.write_str("ints"),
            TypeKind::Tensor { dtype, dims: None } => write!(f, "{dtype}"),
            TypeKind::Tensor {
                dtype,
                dims: Some(dims),
            } => {
                write!(f, "{dtype}[")?;
                for (i, d) in dims.iter().enumerate() {
                    if i > 0 {
                        f.write_str(", ")?;
                    }
                    write!(f, "{d}")?;
                }
                f.write_str("]")
            }
        }
    }
}

fn write_args(f: &mut fmt::Formatter<'_>, args: &[Arg]) -> fmt::Result {
    for a in args {
        write!(f, " {a}")?;
    }
    Ok(())
}

/// `value` or `name: value`.
impl fmt::Display for Arg {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.name {
            Some(n) => write!(f, "{n}: {}", self.value),
            None => write!(f, "{}", self.value),
        }
    }
}

/// `relu` or `(dense 128)`.
impl fmt::Display for Stage {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.parens {
            write!(f, "({}", self.callee)?;
            write_args(f, &self.args)?;
            f.write_str(")")
        } else {
            write!(f, "{}", self.callee)
        }
    }
}

/// Prefix S-expression. Floats always show a `.` or exponent (`1.0`,
/// `0.001`) so they are distinguishable from ints.
impl fmt::Display for Expr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.kind {
            ExprKind::Int(n) => write!(f, "{n}"),
            ExprKind::Float(x) => write!(f, "{x:?}"),
            ExprKind::Str(s) => write!(f, "{s:?}"),
            ExprKind::Bool(b) => write!(f, "{b}"),
            ExprKind::Ident(id) => write!(f, "{id}"),
            ExprKind::List(items) => {
                f.write_str("[")?;
                for (i, e) in items.iter().enumerate() {
                    if i > 0 {
                        f.write_str(" ")?;
                    }
                    write!(f, "{e}")?;
                }
                f.write_str("]")
            }
            ExprKind::Call { callee, args } => {
                write!(f, "({callee}")?;
                write_args(f, args)?;
                f.write_str(")")
            }
            ExprKind::Binary { op, lhs, rhs } => write!(f, "({op} {lhs} {rhs})"),
            ExprKind::Neg(e) => write!(f, "(neg {e})"),
            ExprKind::Pipe { input, stage } => write!(f, "(-> {input} {stage})"),
        }
    }
}

/// `name: type` or `name: type = default`.
impl fmt::Display for Param {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.name, self.ty)?;
        if let Some(d) = &self.default {
            write!(f, " = {d}")?;
        }
        Ok(())
    }
}

/// One line, source-like keyword and S-expression values.
impl fmt::Display for Stmt {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Stmt::Param { name, ty, init, .. } => {
                write!(f, "param {name}: {ty}")?;
                if let Some(e) = init {
                    write!(f, " = {e}")?;
                }
                Ok(())
            }
            Stmt::State { name, ty, init, .. } => {
                write!(f, "state {name}: {ty}")?;
                if let Some(e) = init {
                    write!(f, " = {e}")?;
                }
                Ok(())
            }
            Stmt::Update { name, value, .. } => write!(f, "update {name} = {value}"),
            Stmt::Assert { cond, message, .. } => write!(f, "assert {cond}, {message}"),
            Stmt::Input { name, ty, .. } => write!(f, "input {name}: {ty}"),
            Stmt::Output { names, value, .. } => {
                f.write_str("output ")?;
                for (i, n) in names.iter().enumerate() {
                    if i > 0 {
                        f.write_str(", ")?;
                    }
                    write!(f, "{n}")?;
                }
                if let Some(e) = value {
                    write!(f, " = {e}")?;
                }
                Ok(())
            }
            Stmt::Return { value, .. } => write!(f, "return {value}"),
            Stmt::Scan {
                operands,
                options,
                body,
                ..
            } => {
                f.write_str("scan(")?;
                for (i, o) in operands.iter().enumerate() {
                    if i > 0 {
                        f.write_str(", ")?;
                    }
                    if o.each {
                        write!(f, "{} = each({})", o.name, o.value)?;
                    } else {
                        write!(f, "{} = {}", o.name, o.value)?;
                    }
                }
                for o in options {
                    write!(f, ", {o}")?;
                }
                f.write_str(") {")?;
                for (i, s) in body.iter().enumerate() {
                    f.write_str(if i == 0 { " " } else { "; " })?;
                    write!(f, "{s}")?;
                }
                f.write_str(" }")
            }
            Stmt::Yield { name, value, .. } => write!(f, "yield {name} = {value}"),
            Stmt::Let {
                name,
                ty: None,
                value,
                ..
            } => write!(f, "let {name} = {value}"),
            Stmt::Let {
                name,
                ty: Some(ty),
                value,
                ..
            } => write!(f, "let {name}: {ty} = {value}"),
        }
    }
}

impl fmt::Display for DataField {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.name)?;
        if let Some(t) = &self.ty {
            write!(f, ": {t}")?;
        }
        write!(f, " = {}", self.value)
    }
}

fn write_params(f: &mut fmt::Formatter<'_>, params: &[Param]) -> fmt::Result {
    f.write_str("(")?;
    for (i, p) in params.iter().enumerate() {
        if i > 0 {
            f.write_str(", ")?;
        }
        write!(f, "{p}")?;
    }
    f.write_str(")")
}

/// Multi-line: a header line, then the body indented by two spaces.
impl fmt::Display for Item {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Item::Layer(d) => {
                write!(f, "layer {}", d.name)?;
                write_params(f, &d.params)?;
                for s in &d.body {
                    write!(f, "\n  {s}")?;
                }
            }
            Item::Model(d) => {
                write!(f, "model {}", d.name)?;
                if !d.params.is_empty() {
                    write_params(f, &d.params)?;
                }
                for s in &d.body {
                    write!(f, "\n  {s}")?;
                }
            }
            Item::Data(d) => {
                write!(f, "data {}", d.name)?;
                for fld in &d.fields {
                    write!(f, "\n  {fld}")?;
                }
                match &d.test {
                    None => {}
                    Some(TestSpec::Expr { value, .. }) => write!(f, "\n  test = {value}")?,
                    Some(TestSpec::Fields { fields, .. }) => {
                        f.write_str("\n  test")?;
                        for fld in fields {
                            write!(f, "\n    {fld}")?;
                        }
                    }
                }
            }
            Item::Train(d) => {
                write!(f, "train ({}", d.model)?;
                write_args(f, &d.model_args)?;
                write!(f, ") on {}", d.data)?;
                for s in &d.settings {
                    write!(f, "\n  {} = {}", s.key, s.value)?;
                }
            }
        }
        Ok(())
    }
}

/// Items separated by blank lines.
impl fmt::Display for Program {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, item) in self.items.iter().enumerate() {
            if i > 0 {
                f.write_str("\n\n")?;
            }
            write!(f, "{item}")?;
        }
        Ok(())
    }
}
