//! Values of the elaborator: what an expression means at compile time.
//! Scalars are evaluated while compiling; tensors are nodes of the graph
//! being built.

use nnc_ir::{Dim, Init, NodeId};

#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Value {
    Int(i64),
    Float(f64),
    Bool(bool),
    Str(String),
    List(Vec<Value>),
    Tensor(NodeId),
    /// A symbolic dim bound by a pattern (`b` matched against `B`).
    Sym(String),
    /// A run of dims bound by a `...name` pattern.
    Dims(Vec<Dim>),
    /// A param initializer (`xavier_uniform`, `normal(0, 0.01)`).
    Init(Init),
    /// A data field the loss reads that is not a model input (labels). Its
    /// graph input is created when its type becomes known: from its
    /// annotation, or from the first layer parameter it is passed to.
    Pending(String),
}

impl Value {
    /// A short description for error messages: "int 3", "a list".
    pub(crate) fn kind(&self) -> String {
        match self {
            Value::Int(v) => format!("int {v}"),
            Value::Float(v) => format!("float {v}"),
            Value::Bool(v) => format!("bool {v}"),
            Value::Str(s) => format!("string {s:?}"),
            Value::List(_) => "a list".into(),
            Value::Tensor(_) => "a tensor".into(),
            Value::Sym(s) => format!("the symbolic dim `{s}`"),
            Value::Dims(_) => "a run of dims".into(),
            Value::Init(i) => format!("the initializer `{}`", i.name()),
            Value::Pending(name) => format!("the data field `{name}`"),
        }
    }

    pub(crate) fn as_f64(&self) -> Option<f64> {
        match *self {
            Value::Int(v) => Some(v as f64),
            Value::Float(v) => Some(v),
            _ => None,
        }
    }

    /// A dim value: a constant int or a symbol.
    pub(crate) fn as_dim(&self) -> Option<Dim> {
        match self {
            Value::Int(v) if *v >= 0 => Some(Dim::Const(*v as usize)),
            Value::Sym(s) => Some(Dim::Sym(s.clone())),
            _ => None,
        }
    }
}

/// The value a dim binds to in a scope.
pub(crate) fn dim_value(d: &Dim) -> Value {
    match d {
        Dim::Const(n) => Value::Int(*n as i64),
        Dim::Sym(s) => Value::Sym(s.clone()),
    }
}
