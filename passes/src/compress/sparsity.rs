//! Unstructured magnitude pruning (`prune = magnitude(...)` in a train
//! block): the graphs read each pruned weight `w` through a mask,
//! `w * w.mask`, where `w.mask` is model state (`f32`, `w`'s type,
//! initialized to ones) — saved in checkpoints like running statistics,
//! never trained. Gradients of a masked weight are then masked by the
//! product rule. The training loop recomputes the masks from the weights'
//! magnitudes ([`masks`]) at the steps of the schedule
//! ([`nnc_ir::Prune`]).
//!
//! The pruned weights are the product weights of dense layers and
//! convolutions, found as quantization finds them
//! ([`crate::quantize::rewrite::sites`]: `x @ w`, `reshape(w) @ cols`,
//! `w` an `f32` param read by that product only). Biases, batch norm,
//! embeddings (read by `gather`) and the weights of recurrent layers
//! (read inside a `scan` body) are not pruned.

use crate::PassError;
use nnc_ir::{mask_name, Graph, Init, Module, Op, PruneScope, Tensor};

/// The weights of `graph` that pruning masks, in topological order of
/// their products, each once.
pub fn pruned_weights(graph: &Graph) -> Vec<String> {
    let mut names: Vec<String> = Vec::new();
    for site in crate::quantize::rewrite::sites(graph) {
        if !names.contains(&site.weight) {
            names.push(site.weight);
        }
    }
    names
}

/// Makes every reader of each param of `params` read `param * param.mask`
/// instead, adding the mask as a `state` leaf (ones, the param's type).
/// A param the graph does not hold is skipped (a graph that does not read
/// it needs no mask); one that already has a mask is an error.
pub fn mask_weights(graph: &mut Graph, params: &[String]) -> Result<(), PassError> {
    for name in params {
        let Some(w) = graph.find_leaf(name) else {
            continue;
        };
        if !matches!(graph.node(w).op, Op::Param { .. }) {
            return Err(PassError::new(format!("`{name}` is not a param")));
        }
        let mask = mask_name(name);
        if graph.find_leaf(&mask).is_some() {
            return Err(PassError::new(format!("`{name}` is masked already")));
        }
        let ty = graph.ty(w).clone();
        let m = graph.state(&mask, ty, Init::Ones);
        let masked = graph.mul(w, m)?;
        // Every reader of `w` reads the product, which itself reads `w`.
        graph.replace_uses(w, masked);
        if let Some(e) = graph.g.find_edge(masked, masked) {
            graph.g.remove_edge(e);
            graph.g.add_edge(w, masked, 0);
        }
        let span = graph.node(w).span;
        graph.node_mut(masked).span = span;
    }
    Ok(())
}

/// Masks the product weights of every graph of `module` when its train
/// block prunes (`TrainSpec::prune`), and returns the masked weights'
/// names (empty without pruning). The weights are those of the model's
/// forward graph ([`pruned_weights`]); a pruning train block over a model
/// without any is an error.
pub fn apply(module: &mut Module) -> Result<Vec<String>, PruneError> {
    let Some(train) = module.train.as_mut().filter(|t| t.prune.is_some()) else {
        return Ok(Vec::new());
    };
    let weights = pruned_weights(&module.forward);
    if weights.is_empty() {
        return Err(PruneError {
            message: "the model has no weight to prune".into(),
            span: train.prune.as_ref().and_then(|p| p.span),
            help: Some(
                "`prune` prunes the product weights of dense layers and convolutions".into(),
            ),
        });
    }
    let internal = |e: PassError| PruneError {
        message: format!("internal compiler error: {e}"),
        span: None,
        help: None,
    };
    mask_weights(&mut module.forward, &weights).map_err(internal)?;
    mask_weights(&mut train.objective, &weights).map_err(internal)?;
    mask_weights(&mut train.evaluation, &weights).map_err(internal)?;
    Ok(weights)
}

/// Why a module's pruning cannot be applied: located at the `prune`
/// setting when the source's fault.
#[derive(Debug, Clone, PartialEq)]
pub struct PruneError {
    pub message: String,
    pub span: Option<nnc_ir::Span>,
    pub help: Option<String>,
}

/// How many elements to prune of `n` at `sparsity`: TF-MOT keeps
/// `round(n · (1 − sparsity))` (half away from zero here).
pub fn pruned_count(n: usize, sparsity: f64) -> usize {
    let kept = (n as f64 * (1.0 - sparsity)).round() as usize;
    n - kept.min(n)
}

/// The new masks of `weights` (each a weight and its current mask, same
/// shape) at `sparsity`: the elements of smallest magnitude `|w · mask|`
/// get 0, the others 1. With `Layer` scope each weight loses
/// [`pruned_count`] of its own elements; with `Global` the count is of
/// all elements together, under one threshold. Ties are broken
/// deterministically: an element masked already goes first (so a mask
/// never grows back while the sparsity grows), then the earlier weight,
/// then the lower index.
pub fn masks(weights: &[(&Tensor, &Tensor)], sparsity: f64, scope: PruneScope) -> Vec<Tensor> {
    let mut out: Vec<Tensor> = weights
        .iter()
        .map(|(w, _)| Tensor {
            dtype: w.dtype,
            shape: w.shape.clone(),
            data: vec![1.0; w.data.len()],
        })
        .collect();
    // (magnitude, kept before, weight, index) per element.
    let key = |wi: usize, i: usize| {
        let (w, m) = weights[wi];
        let mask = m.data.get(i).copied().unwrap_or(1.0);
        ((w.data[i] * mask).abs(), mask != 0.0, wi, i)
    };
    let mut prune = |ranked: &mut Vec<(f64, bool, usize, usize)>, count: usize| {
        ranked.sort_by(|a, b| {
            a.0.total_cmp(&b.0)
                .then(a.1.cmp(&b.1))
                .then(a.2.cmp(&b.2))
                .then(a.3.cmp(&b.3))
        });
        for &(_, _, wi, i) in ranked.iter().take(count) {
            out[wi].data[i] = 0.0;
        }
    };
    match scope {
        PruneScope::Layer => {
            for (wi, (w, _)) in weights.iter().enumerate() {
                let mut ranked: Vec<_> = (0..w.data.len()).map(|i| key(wi, i)).collect();
                prune(&mut ranked, pruned_count(w.data.len(), sparsity));
            }
        }
        PruneScope::Global => {
            let mut ranked: Vec<_> = weights
                .iter()
                .enumerate()
                .flat_map(|(wi, (w, _))| (0..w.data.len()).map(move |i| (wi, i)))
                .map(|(wi, i)| key(wi, i))
                .collect();
            let n = ranked.len();
            prune(&mut ranked, pruned_count(n, sparsity));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use nnc_ir::DType;

    fn t(data: &[f64]) -> Tensor {
        Tensor {
            dtype: DType::F32,
            shape: vec![data.len()],
            data: data.to_vec(),
        }
    }

    fn zeros(m: &Tensor) -> usize {
        m.data.iter().filter(|&&v| v == 0.0).count()
    }

    #[test]
    fn counts_keep_round_of_the_rest_as_tf_mot() {
        assert_eq!(pruned_count(10, 0.0), 0);
        assert_eq!(pruned_count(10, 0.8), 8);
        assert_eq!(pruned_count(10, 0.25), 2); // keeps round(7.5) = 8
        assert_eq!(pruned_count(7, 0.5), 3); // keeps round(3.5) = 4
        assert_eq!(pruned_count(1000, 0.9), 900);
        assert_eq!(pruned_count(0, 0.9), 0);
    }

    #[test]
    fn per_layer_masks_prune_each_weights_smallest() {
        let a = t(&[0.5, -0.1, 0.3, -0.9]);
        let b = t(&[10.0, 20.0, -30.0, 40.0, 0.0, 1.0]);
        let ones_a = t(&[1.0; 4]);
        let ones_b = t(&[1.0; 6]);
        let m = masks(&[(&a, &ones_a), (&b, &ones_b)], 0.5, PruneScope::Layer);
        assert_eq!(m[0].data, vec![1.0, 0.0, 0.0, 1.0]);
        assert_eq!(m[1].data, vec![0.0, 1.0, 1.0, 1.0, 0.0, 0.0]);
        assert_eq!((zeros(&m[0]), zeros(&m[1])), (2, 3));
    }

    #[test]
    fn a_global_mask_has_one_threshold_over_all_weights() {
        let a = t(&[0.5, -0.1, 0.3, -0.9]);
        let b = t(&[10.0, 20.0, -30.0, 40.0, 0.0, 1.0]);
        let ones_a = t(&[1.0; 4]);
        let ones_b = t(&[1.0; 6]);
        let m = masks(&[(&a, &ones_a), (&b, &ones_b)], 0.5, PruneScope::Global);
        // The 5 smallest of 10: 0, 0.1, 0.3, 0.5, 0.9; `b` keeps 1.0.
        assert_eq!(m[0].data, vec![0.0; 4]);
        assert_eq!(m[1].data, vec![1.0, 1.0, 1.0, 1.0, 0.0, 1.0]);
    }

    #[test]
    fn ties_go_to_masked_elements_then_earlier_weights_and_indices() {
        let w = t(&[1.0, 1.0, 1.0, 1.0]);
        let ones = t(&[1.0; 4]);
        let m = masks(&[(&w, &ones)], 0.5, PruneScope::Layer);
        assert_eq!(m[0].data, vec![0.0, 0.0, 1.0, 1.0]);
        // An element already masked ranks before an equal unmasked zero,
        // so the mask only grows.
        let w = t(&[0.0, 7.0, 0.0, 2.0]);
        let mask = t(&[1.0, 0.0, 1.0, 1.0]);
        let m = masks(&[(&w, &mask)], 0.25, PruneScope::Layer);
        assert_eq!(m[0].data, vec![1.0, 0.0, 1.0, 1.0]);
        let m = masks(&[(&w, &mask)], 0.5, PruneScope::Layer);
        assert_eq!(m[0].data, vec![0.0, 0.0, 1.0, 1.0]);
        // Globally, an equal magnitude in the first weight goes first.
        let a = t(&[3.0, 1.0]);
        let b = t(&[1.0, 3.0]);
        let ones = t(&[1.0; 2]);
        let m = masks(&[(&a, &ones), (&b, &ones)], 0.25, PruneScope::Global);
        assert_eq!(
            (m[0].data.clone(), m[1].data.clone()),
            (vec![1.0, 0.0], vec![1.0, 1.0])
        );
    }

    /// `loss = sum(tanh(x @ w) @ v)` with `x: [2, 3]`, `w: [3, 2]` and
    /// `v: [2, 1]`.
    fn two_layers() -> Graph {
        use nnc_ir::{Dim, ReduceOp, TensorType, UnaryOp};
        let ty = |d: &[usize]| TensorType::new(DType::F32, d.iter().map(|&n| Dim::Const(n)));
        let mut g = Graph::new("objective");
        let x = g.input("x", ty(&[2, 3]));
        let w = g.param("w", ty(&[3, 2]), Init::XavierUniform);
        let v = g.param("v", ty(&[2, 1]), Init::XavierUniform);
        let h = g.matmul(x, w).unwrap();
        let h = g.unary(UnaryOp::Tanh, h).unwrap();
        let y = g.matmul(h, v).unwrap();
        let loss = g.reduce(ReduceOp::Sum, y, vec![0, 1], false).unwrap();
        g.set_output("y", y);
        g.set_output(nnc_ir::module::LOSS, loss);
        g
    }

    #[test]
    fn every_product_weight_is_read_through_its_mask_and_its_gradient_is_masked() {
        let mut g = two_layers();
        let weights = pruned_weights(&g);
        assert_eq!(weights, vec!["w".to_string(), "v".to_string()]);
        mask_weights(&mut g, &weights).unwrap();
        nnc_ir::verify(&g).unwrap();
        for name in ["w", "v"] {
            let p = g.find_leaf(name).unwrap();
            let users = g.users(p);
            assert_eq!(users.len(), 1);
            assert!(matches!(
                g.node(users[0]).op,
                Op::Binary(nnc_ir::BinaryOp::Mul)
            ));
            let m = g.find_leaf(&mask_name(name)).unwrap();
            assert!(matches!(
                g.node(m).op,
                Op::State {
                    init: Init::Ones,
                    ..
                }
            ));
            assert_eq!(g.ty(m), g.ty(p));
        }
        // Masking twice is an error, not a second mask.
        assert!(mask_weights(&mut g, &weights).is_err());

        let grads = crate::gradient_graph(&g).unwrap();
        nnc_ir::verify(&grads).unwrap();
        let mut env = nnc_ir::Env::new();
        nnc_ir::init::init_leaves(&g, 7, &mut env).unwrap();
        let x =
            Tensor::from_vec(DType::F32, &[2, 3], vec![0.5, -1.0, 2.0, 1.5, 0.25, -0.75]).unwrap();
        env.insert("x", x);
        let mask =
            Tensor::from_vec(DType::F32, &[3, 2], vec![1.0, 0.0, 0.0, 1.0, 1.0, 0.0]).unwrap();
        env.insert("w.mask", mask.clone());
        let out = nnc_ir::eval(&grads, &env, nnc_ir::EvalOptions::F32).unwrap();
        let gw = out.output("grad.w").unwrap();
        for (g, m) in gw.data.iter().zip(&mask.data) {
            assert_eq!(
                *m == 0.0,
                *g == 0.0,
                "gradient {:?} under mask {:?}",
                gw.data,
                mask.data
            );
        }
        let gv = out.output("grad.v").unwrap();
        assert!(gv.data.iter().all(|g| *g != 0.0));
        // The masked forward equals the dense one on `w * mask`.
        let y = nnc_ir::eval(&g, &env, nnc_ir::EvalOptions::F32).unwrap();
        let mut dense = env.clone();
        let w = env.get("w").unwrap();
        let masked: Vec<f64> = w.data.iter().zip(&mask.data).map(|(a, b)| a * b).collect();
        dense.insert("w", Tensor::from_vec(DType::F32, &[3, 2], masked).unwrap());
        let y0 = nnc_ir::eval(&two_layers(), &dense, nnc_ir::EvalOptions::F32).unwrap();
        assert_eq!(y.output("y"), y0.output("y"));
    }

    #[test]
    fn a_mask_reads_the_masked_magnitude() {
        // 9.0 is masked: its magnitude is 0, the smallest.
        let w = t(&[9.0, 2.0, 3.0, 4.0]);
        let mask = t(&[0.0, 1.0, 1.0, 1.0]);
        let m = masks(&[(&w, &mask)], 0.5, PruneScope::Layer);
        assert_eq!(m[0].data, vec![0.0, 0.0, 1.0, 1.0]);
    }
}
