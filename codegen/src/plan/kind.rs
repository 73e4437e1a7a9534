//! Element kinds and the 4-byte words the JIT stores for each element:
//! f32, i32, and bool as an i32 0 or 1.

use nnc_ir::{DType, Graph, Literal, NodeId, Op};

/// Element kinds as the JIT stores them: bool is an i32 0 or 1.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Kind {
    F32,
    I32,
}

impl Kind {
    pub fn of(d: DType) -> Kind {
        match d {
            DType::F32 | DType::F64 => Kind::F32,
            // Quantized values are widened to a 4-byte word for now, as
            // bool is: exact, not yet smaller.
            DType::I32 | DType::I8 | DType::U8 | DType::Bool => Kind::I32,
        }
    }
}

/// The 4-byte word the JIT stores for `v` as a `dtype` element.
pub fn value_word(v: f64, dtype: DType) -> u32 {
    match Kind::of(dtype) {
        Kind::F32 => (v as f32).to_bits(),
        Kind::I32 if dtype == DType::Bool => u32::from(v != 0.0),
        Kind::I32 => (v as i32) as u32,
    }
}

/// The constant data of a `const` or `iota` node, as 4-byte words.
pub fn constant_words(graph: &Graph, id: NodeId, shape: &[usize]) -> Vec<u32> {
    let node = graph.node(id);
    let kind = Kind::of(node.ty.dtype);
    let word = |v: f64| match kind {
        Kind::F32 => (v as f32).to_bits(),
        Kind::I32 if node.ty.dtype == DType::Bool => u32::from(v != 0.0),
        Kind::I32 => (v as i32) as u32,
    };
    let numel: usize = shape.iter().product();
    match &node.op {
        Op::Const(Literal::Splat(v)) => vec![word(*v); numel],
        Op::Const(Literal::Dense(vs)) => vs.iter().map(|&v| word(v)).collect(),
        Op::Iota { axis } => {
            let strides = crate::plan::row_major(shape);
            (0..numel)
                .map(|i| word(((i as isize / strides[*axis]) as usize % shape[*axis]) as f64))
                .collect()
        }
        _ => Vec::new(),
    }
}
