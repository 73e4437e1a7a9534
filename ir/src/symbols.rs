//! Symbolic dims meet concrete sizes: binding a declared type against the
//! shape of a value that arrives (an input, a param from a checkpoint)
//! and resolving a type's dims once the symbols are known.
//!
//! Every executor does both before it can run a graph — the interpreter
//! per evaluation, the JIT per batch shape — so the rules live here once:
//! a constant dim must match exactly, and a symbol takes the first size it
//! meets and must meet the same size everywhere after.

use crate::graph::Graph;
use crate::module::is_loop_input;
use crate::types::{Dim, TensorType};
use std::collections::HashMap;
use thiserror::Error;

/// The size each symbol stands for (`B` → 32).
pub type Bindings = HashMap<String, usize>;

/// Why a concrete shape does not fit a declared type. Only the facts: the
/// caller knows which value it was and words the message.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum BindError {
    #[error("the type has {declared} dims but the shape has {found}")]
    Rank { declared: usize, found: usize },
    #[error("dim {axis} is {found}, but the type says {declared}")]
    Constant {
        axis: usize,
        declared: usize,
        found: usize,
    },
    #[error("`{symbol}` would be {found}, but it is already {bound}")]
    Conflict {
        symbol: String,
        found: usize,
        bound: usize,
    },
}

/// A dim whose symbol no binding gives a size.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
#[error("dim `{symbol}` is not bound")]
pub struct Unbound {
    pub symbol: String,
}

/// Binds the symbols of `declared` to the sizes of `shape`, checking the
/// rank, every constant dim, and every symbol against the sizes already in
/// `bindings`. On an error `bindings` is left as it was, so a caller can
/// report the first binding of the symbol in conflict.
pub fn bind(
    declared: &TensorType,
    shape: &[usize],
    bindings: &mut Bindings,
) -> Result<(), BindError> {
    if declared.rank() != shape.len() {
        return Err(BindError::Rank {
            declared: declared.rank(),
            found: shape.len(),
        });
    }
    // Checked in full before anything is inserted: `[B, B]` against `[2, 3]`
    // conflicts with itself.
    let mut new: Vec<(&str, usize)> = Vec::new();
    for (axis, (dim, &found)) in declared.shape.iter().zip(shape).enumerate() {
        match dim {
            Dim::Const(c) if *c != found => {
                return Err(BindError::Constant {
                    axis,
                    declared: *c,
                    found,
                })
            }
            Dim::Const(_) => {}
            Dim::Sym(s) => {
                let bound = bindings
                    .get(s)
                    .copied()
                    .or_else(|| new.iter().find(|(n, _)| n == s).map(|(_, v)| *v));
                match bound {
                    Some(bound) if bound != found => {
                        return Err(BindError::Conflict {
                            symbol: s.clone(),
                            found,
                            bound,
                        })
                    }
                    Some(_) => {}
                    None => new.push((s, found)),
                }
            }
        }
    }
    for (symbol, size) in new {
        bindings.insert(symbol.to_string(), size);
    }
    Ok(())
}

/// The concrete sizes of `dims` under `bindings`.
pub fn resolve(dims: &[Dim], bindings: &Bindings) -> Result<Vec<usize>, Unbound> {
    dims.iter()
        .map(|d| match d {
            Dim::Const(n) => Ok(*n),
            Dim::Sym(s) => bindings
                .get(s)
                .copied()
                .ok_or_else(|| Unbound { symbol: s.clone() }),
        })
        .collect()
}

/// The batch size as the bindings of `graph`: every data input is a batch
/// of samples, so the symbol of each one's leading dim is bound to `size`.
/// What a graph's kernels look like at a batch size can be known without
/// any data; other symbols stay unbound.
pub fn batch_bindings(graph: &Graph, size: usize) -> Bindings {
    let mut bindings = Bindings::new();
    for (id, name) in graph.inputs() {
        if is_loop_input(name) {
            continue;
        }
        if let Some(Dim::Sym(s)) = graph.ty(id).shape.first() {
            bindings.insert(s.clone(), size);
        }
    }
    bindings
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::types::DType;

    fn ty(dims: &[Dim]) -> TensorType {
        TensorType::new(DType::F32, dims.iter().cloned())
    }

    #[test]
    fn symbols_bind_once_and_constants_must_match() {
        let mut b = Bindings::new();
        bind(&ty(&[Dim::sym("B"), Dim::Const(3)]), &[4, 3], &mut b).unwrap();
        assert_eq!(b["B"], 4);
        bind(&ty(&[Dim::sym("B")]), &[4], &mut b).unwrap();
        assert_eq!(
            bind(&ty(&[Dim::sym("B")]), &[5], &mut b),
            Err(BindError::Conflict {
                symbol: "B".into(),
                found: 5,
                bound: 4
            })
        );
        assert_eq!(
            bind(&ty(&[Dim::sym("N"), Dim::Const(3)]), &[7, 2], &mut b),
            Err(BindError::Constant {
                axis: 1,
                declared: 3,
                found: 2
            })
        );
        assert!(
            !b.contains_key("N"),
            "a failed bind leaves the map as it was"
        );
        assert_eq!(
            bind(&ty(&[Dim::Const(3)]), &[3, 1], &mut b),
            Err(BindError::Rank {
                declared: 1,
                found: 2
            })
        );
    }

    #[test]
    fn a_symbol_repeated_in_one_type_must_agree_with_itself() {
        let mut b = Bindings::new();
        let err = bind(&ty(&[Dim::sym("N"), Dim::sym("N")]), &[2, 3], &mut b).unwrap_err();
        assert_eq!(
            err,
            BindError::Conflict {
                symbol: "N".into(),
                found: 3,
                bound: 2
            }
        );
        assert!(b.is_empty());
    }

    #[test]
    fn resolving_names_the_unbound_symbol() {
        let b: Bindings = [("B".to_string(), 8)].into_iter().collect();
        assert_eq!(resolve(&[Dim::sym("B"), Dim::Const(2)], &b), Ok(vec![8, 2]));
        assert_eq!(
            resolve(&[Dim::sym("T")], &b),
            Err(Unbound { symbol: "T".into() })
        );
    }

    #[test]
    fn the_batch_is_the_leading_dim_of_the_data_inputs() {
        let mut g = Graph::new("g");
        let x = g.input("x", ty(&[Dim::sym("B"), Dim::Const(3)]));
        let _ = g.input(crate::LEARNING_RATE, TensorType::scalar(DType::F32));
        g.set_output("y", x);
        let b = batch_bindings(&g, 16);
        assert_eq!(b.len(), 1);
        assert_eq!(b["B"], 16);
    }
}
