//! The model at a glance, as Keras' `model.summary()` prints it: each call
//! in the model's body with its output type and the parameters it owns,
//! and the totals.
//!
//! Layers are inlined while elaborating, so the graph alone no longer says
//! where one ends; the elaborator records each call of the model's body as
//! a [`LayerCall`], and the parameters are attributed afterwards by the
//! instance path they are named with (`dense_1.w` belongs to `dense_1`).

use crate::{Graph, Op, TensorType};

/// One call in the model's body (not inside a layer): a layer, which owns
/// the params and states named after its instance, or a builtin, which
/// owns none.
#[derive(Debug, Clone, PartialEq)]
pub struct LayerCall {
    /// The instance name (`dense_1`); a builtin's own name (`flatten`).
    pub name: String,
    /// The layer or builtin called (`dense`).
    pub layer: String,
    /// The types of the values it returned.
    pub outputs: Vec<TensorType>,
    /// Those values in `Module::forward`: a model whose structure was
    /// changed after elaboration (`nnc prune`) shows their types as the
    /// graph now has them.
    pub values: Vec<crate::NodeId>,
}

/// One row of a [`Summary`].
#[derive(Debug, Clone, PartialEq)]
pub struct SummaryRow {
    pub name: String,
    pub layer: String,
    pub outputs: Vec<TensorType>,
    /// Elements of the trainable params the call owns.
    pub params: usize,
    /// Elements of the states (running statistics) the call owns.
    pub states: usize,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Summary {
    pub rows: Vec<SummaryRow>,
    /// Elements of all trainable params, also those the model declares
    /// itself (they are in the totals, not in a row).
    pub params: usize,
    /// Elements of all states, Keras' "non-trainable params".
    pub states: usize,
}

impl Summary {
    /// The rows of `calls` with what each owns in `forward` (the model in
    /// evaluation mode, where every param and state lives).
    pub fn new(calls: &[LayerCall], forward: &Graph) -> Summary {
        let leaves: Vec<(&str, bool, usize)> = forward
            .topo_order()
            .into_iter()
            .filter_map(|n| {
                let elements = || elements(forward.ty(n));
                match &forward.node(n).op {
                    Op::Param { name, .. } => Some((name.as_str(), true, elements())),
                    Op::State { name, .. } => Some((name.as_str(), false, elements())),
                    _ => None,
                }
            })
            .collect();
        let owned = |instance: &str, trainable: bool| -> usize {
            leaves
                .iter()
                .filter(|(name, t, _)| {
                    *t == trainable
                        && name
                            .strip_prefix(instance)
                            .is_some_and(|rest| rest.starts_with('.'))
                })
                .map(|(_, _, n)| n)
                .sum()
        };
        let rows = calls
            .iter()
            .map(|c| SummaryRow {
                name: c.name.clone(),
                layer: c.layer.clone(),
                outputs: c
                    .outputs
                    .iter()
                    .enumerate()
                    .map(|(i, ty)| match c.values.get(i) {
                        Some(&v) if forward.contains(v) => forward.ty(v).clone(),
                        _ => ty.clone(),
                    })
                    .collect(),
                params: owned(&c.name, true),
                states: owned(&c.name, false),
            })
            .collect();
        let total = |trainable: bool| {
            leaves
                .iter()
                .filter(|(_, t, _)| *t == trainable)
                .map(|(_, _, n)| n)
                .sum()
        };
        Summary {
            rows,
            params: total(true),
            states: total(false),
        }
    }
}

/// A leaf's element count: params and states have constant shapes.
fn elements(ty: &TensorType) -> usize {
    ty.shape.iter().map(|d| d.as_const().unwrap_or(0)).product()
}

/// `1234567` as `1,234,567`: counts as Keras's summary and our reports
/// print them.
pub fn thousands(n: usize) -> String {
    let digits = n.to_string();
    let mut out = String::new();
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::{LayerCall, Summary};
    use crate::{DType, Dim, Graph, Init, TensorType};

    fn f32s(dims: &[usize]) -> TensorType {
        TensorType::new(DType::F32, dims.iter().map(|&d| Dim::Const(d)))
    }

    #[test]
    fn params_belong_to_the_instance_they_are_named_after() {
        let mut g = Graph::new("forward");
        g.param("dense.w", f32s(&[4, 3]), Init::Zeros);
        g.param("dense.b", f32s(&[3]), Init::Zeros);
        // `dense_1` is not a prefix match of `dense`'s params, nor they of it.
        g.param("dense_1.w", f32s(&[3, 2]), Init::Zeros);
        g.state("batchnorm.running_mean", f32s(&[3]), Init::Zeros);
        g.param("batchnorm.gamma", f32s(&[3]), Init::Zeros);
        g.param("scale", f32s(&[1]), Init::Zeros);
        let call = |name: &str, layer: &str| LayerCall {
            name: name.into(),
            layer: layer.into(),
            outputs: vec![f32s(&[2])],
            values: Vec::new(),
        };
        let calls = [
            call("dense", "dense"),
            call("batchnorm", "batchnorm"),
            call("relu", "relu"),
            call("dense_1", "dense"),
        ];
        let s = Summary::new(&calls, &g);
        let owned: Vec<(usize, usize)> = s.rows.iter().map(|r| (r.params, r.states)).collect();
        assert_eq!(owned, [(15, 0), (3, 3), (0, 0), (6, 0)]);
        // The model's own `scale` counts in the total only.
        assert_eq!((s.params, s.states), (25, 3));
    }
}
