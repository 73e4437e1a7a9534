//! Post-training quantization of dense products: `x @ w` (activations `x`
//! in `f32`, `w` a rank-2 `f32` param, `[in, out]`, the dense layer's
//! weight) becomes an integer product of `u8` activations and `i8`
//! weights, corrected for the activations' zero point and rescaled per
//! output column:
//!
//! ```text
//! qx  = u8(round(x · (1 / sx)) + zx)            quantize (ATen's formula)
//! acc = qx @ qw                                  exact i32 sums
//! y   = f32(acc − zx · colsum(qw)) · (sx · sw_j)
//! ```
//!
//! which is `dequantize(qx) @ dequantize(qw)` exactly up to the final
//! `f32` rounding: `Σ_p (qx_p − zx)·sx · qw_pj·sw_j`. The correction is
//! taken in `i32` (exact: `zx · colsum` can pass 2^24, where `f32` would
//! round). The weight keeps its name with dtype `i8`, so a quantized
//! checkpoint holds the same names at a quarter of the size; the scales
//! and corrections are constants of the graph.
//!
//! This is the graph-to-graph half of quantization (values change, so it
//! is not an e-graph rewrite); choosing where integer arithmetic pays and
//! fusing the epilogue are the optimizer's.

use super::{per_column_symmetric, QParams, Scheme};
use crate::PassError;
use nnc_ir::{DType, Graph, Literal, NodeId, Op, Tensor, TensorType};

/// A product that can run in integers.
#[derive(Debug, Clone, PartialEq)]
pub struct Site {
    pub matmul: NodeId,
    /// `x`: what calibration observes.
    pub activation: NodeId,
    /// The weight param's name.
    pub weight: String,
}

/// The dense products of `graph`: `x @ w` with `x` an `f32` tensor and
/// `w` a rank-2 `f32` param read by nothing else (a weight shared with
/// another op keeps its `f32` form). In topological order.
pub fn sites(graph: &Graph) -> Vec<Site> {
    graph
        .topo_order()
        .into_iter()
        .filter(|&id| matches!(graph.node(id).op, Op::MatMul))
        .filter_map(|id| {
            let [x, w] = graph.operands(id)[..] else {
                return None;
            };
            let Op::Param { name, .. } = &graph.node(w).op else {
                return None;
            };
            let plain = graph.ty(x).dtype == DType::F32
                && graph.ty(w).dtype == DType::F32
                && graph.ty(w).rank() == 2
                && graph.users(w).len() == 1;
            plain.then(|| Site {
                matmul: id,
                activation: x,
                weight: name.clone(),
            })
        })
        .collect()
}

/// A weight `[rows, cols]` quantized per output column, symmetric `i8`:
/// the `i8` tensor and each column's parameters.
pub fn quantize_weight(w: &Tensor) -> Result<(Tensor, Vec<QParams>), PassError> {
    let [rows, cols] = w.shape[..] else {
        return Err(PassError::new(format!(
            "a dense weight has rank 2, this one has shape {:?}",
            w.shape
        )));
    };
    let values: Vec<f32> = w.data.iter().map(|&v| v as f32).collect();
    if let Some(bad) = values.iter().find(|v| !v.is_finite()) {
        return Err(PassError::new(format!(
            "the weight holds {bad}, which cannot be quantized"
        )));
    }
    let params = per_column_symmetric(&values, rows, cols);
    let q = values
        .iter()
        .enumerate()
        .map(|(i, &v)| params[i % cols].quantize(v) as f64)
        .collect();
    let tensor = Tensor::from_vec(DType::I8, &w.shape, q)
        .map_err(|e| PassError::new(format!("internal error: {e}")))?;
    Ok((tensor, params))
}

/// Rewrites `site` in `graph` as an integer product (see the module
/// docs), with the activations' parameters `activation` (affine `u8`)
/// and the weight already quantized (`quantize_weight`).
pub fn quantize_site(
    graph: &mut Graph,
    site: &Site,
    activation: QParams,
    weight: &Tensor,
    columns: &[QParams],
) -> Result<(), PassError> {
    if activation.scheme != Scheme::AffineU8 {
        return Err(PassError::new("activations are quantized as affine u8"));
    }
    let w_node = graph
        .find_leaf(&site.weight)
        .ok_or_else(|| PassError::new(format!("no param `{}`", site.weight)))?;
    let w_ty = graph.ty(w_node).clone();
    if weight.dtype != DType::I8 || w_ty.const_numel() != Some(weight.data.len()) {
        return Err(PassError::new(format!(
            "the quantized weight `{}` ({} {:?}) does not fit {w_ty}",
            site.weight, weight.dtype, weight.shape
        )));
    }
    let (rows, cols) = (weight.shape[0], weight.shape[1]);
    if columns.len() != cols {
        return Err(PassError::new(format!(
            "`{}` has {cols} columns but {} scales",
            site.weight,
            columns.len()
        )));
    }
    // The i8 weight takes the f32 one's place under the same name.
    let init = match &graph.node(w_node).op {
        Op::Param { init, .. } => init.clone(),
        _ => unreachable!("sites are params"),
    };
    let i8_ty = TensorType::new(DType::I8, w_ty.shape.clone());
    let qw = graph.param(&site.weight, i8_ty, init);
    let x = site.activation;
    let inv = graph.scalar(1.0 / activation.scale, DType::F32);
    let scaled = graph.mul(x, inv)?;
    let rounded = graph.unary(nnc_ir::UnaryOp::Round, scaled)?;
    let zx = graph.scalar(activation.zero_point as f64, DType::F32);
    let shifted = graph.binary(nnc_ir::BinaryOp::Add, rounded, zx)?;
    let qx = graph.cast(shifted, DType::U8)?;
    let acc = graph.matmul(qx, qw)?;
    let correction: Vec<f64> = (0..cols)
        .map(|j| {
            let colsum: i64 = (0..rows).map(|i| weight.data[i * cols + j] as i64).sum();
            (activation.zero_point as i64 * colsum) as f64
        })
        .collect();
    let vector = |dtype| TensorType::new(dtype, vec![nnc_ir::Dim::Const(cols)]);
    let correction = graph.add(
        Op::Const(Literal::Dense(correction)),
        &[],
        Some(vector(DType::I32)),
    )?;
    let centered = graph.binary(nnc_ir::BinaryOp::Sub, acc, correction)?;
    let float = graph.cast(centered, DType::F32)?;
    let scales: Vec<f64> = columns
        .iter()
        .map(|c| (activation.scale as f32 * c.scale as f32) as f64)
        .collect();
    let scales = graph.add(
        Op::Const(Literal::Dense(scales)),
        &[],
        Some(vector(DType::F32)),
    )?;
    let y = graph.mul(float, scales)?;
    graph.replace_uses(site.matmul, y);
    graph.prune();
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use nnc_ir::interp::{eval, Env, EvalOptions};
    use nnc_ir::{shape_of, Dim, Init};

    /// `y = x @ w + b` over `x: f32[B, 3]`, `w: [3, 2]`.
    fn dense() -> Graph {
        let mut g = Graph::new("forward");
        let x = g.input(
            "x",
            TensorType::new(DType::F32, [Dim::sym("B"), Dim::Const(3)]),
        );
        let w = g.param(
            "d.w",
            TensorType::new(DType::F32, shape_of(&[3, 2])),
            Init::Zeros,
        );
        let b = g.param(
            "d.b",
            TensorType::new(DType::F32, shape_of(&[2])),
            Init::Zeros,
        );
        let xw = g.matmul(x, w).unwrap();
        let y = g.binary(nnc_ir::BinaryOp::Add, xw, b).unwrap();
        g.set_output("y", y);
        g
    }

    #[test]
    fn a_dense_product_runs_in_integers_as_dequantized_operands_would() {
        let mut g = dense();
        let found = sites(&g);
        assert_eq!(found.len(), 1);
        assert_eq!(found[0].weight, "d.w");
        let w =
            Tensor::from_vec(DType::F32, &[3, 2], vec![0.5, -1.0, 0.25, 0.3, -0.75, 2.0]).unwrap();
        let (qw, columns) = quantize_weight(&w).unwrap();
        // Column 0's largest magnitude is 0.75: 0.5 → 0.5·127.5/0.75 = 85.
        assert_eq!(qw.data[0], 85.0);
        let act = QParams::from_range(-1.0, 3.0, Scheme::AffineU8);
        quantize_site(&mut g, &found[0], act, &qw, &columns).unwrap();
        nnc_ir::verify(&g).unwrap();
        assert!(sites(&g).is_empty(), "no float product is left");
        assert_eq!(g.ty(g.find_leaf("d.w").unwrap()).dtype, DType::I8);

        // Inside the calibrated range, but for -1.5, clipped to -1 (the
        // float comparison below skips its row).
        let xs = [0.7, -1.5, 2.9, 0.0, 2.5, -0.2];
        let env = Env::new()
            .with(
                "x",
                Tensor::from_vec(DType::F32, &[2, 3], xs.to_vec()).unwrap(),
            )
            .with("d.w", qw.clone())
            .with(
                "d.b",
                Tensor::from_vec(DType::F32, &[2], vec![0.1, -0.1]).unwrap(),
            );
        let got = eval(&g, &env, EvalOptions::F32).unwrap();
        let got = &got.output("y").unwrap().data;
        // The reference: quantize each operand, sum the dequantized
        // products exactly, rescale once in f32.
        for r in 0..2 {
            for j in 0..2 {
                let acc: i64 = (0..3)
                    .map(|p| {
                        let q = act.quantize(xs[r * 3 + p] as f32) as i64;
                        (q - act.zero_point as i64) * qw.data[p * 2 + j] as i64
                    })
                    .sum();
                let scale = act.scale as f32 * columns[j].scale as f32;
                let want = (acc as f32 * scale) + [0.1f32, -0.1][j];
                assert_eq!(got[r * 2 + j], want as f64, "y[{r}, {j}]");
                // And, where nothing was clipped, close to the float product.
                if r == 0 {
                    continue;
                }
                let float: f64 = (0..3)
                    .map(|p| xs[r * 3 + p] * w.data[p * 2 + j])
                    .sum::<f64>()
                    + [0.1, -0.1][j];
                assert!(
                    (got[r * 2 + j] - float).abs() < 0.05,
                    "{} vs {float}",
                    got[r * 2 + j]
                );
            }
        }
    }

    #[test]
    fn weights_that_cannot_be_quantized_are_errors() {
        let w = Tensor::from_vec(DType::F32, &[2], vec![1.0, 2.0]).unwrap();
        assert!(quantize_weight(&w).unwrap_err().message.contains("rank 2"));
        let w = Tensor::from_vec(DType::F32, &[1, 2], vec![f64::NAN, 2.0]).unwrap();
        assert!(quantize_weight(&w).unwrap_err().message.contains("NaN"));
        let mut g = dense();
        let site = sites(&g).remove(0);
        let (qw, columns) =
            quantize_weight(&Tensor::from_vec(DType::F32, &[3, 2], vec![1.0; 6]).unwrap()).unwrap();
        let act = QParams::from_range(0.0, 1.0, Scheme::AffineU8);
        let e = quantize_site(&mut g, &site, act, &qw, &columns[..1]).unwrap_err();
        assert!(e.message.contains("2 columns but 1 scales"), "{e}");
    }
}
