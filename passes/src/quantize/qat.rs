//! Quantization-aware training: every product that post-training
//! quantization would make integer (`sites`) computes, while it trains,
//! with the values it will have as integers — its activations fake
//! quantized to affine `u8` and its weight per output channel to
//! symmetric `i8` — and passes the gradient straight through the rounding
//! (`x·m + detach(fq(x) − x·m)`, `m` zero where the quantization clips,
//! as PyTorch's `FakeQuantize` backward), so the weights learn to live
//! with the rounding.
//!
//! The activations' range is model state, as batch norm's statistics
//! are: `{weight}.act_min` and `{weight}.act_max` (scalars), which the
//! training graph moves towards each batch's minimum and maximum by
//! [`AVERAGING`] (PyTorch's `MovingAverageMinMaxObserver`) and every
//! graph reads. Converting the trained model (`nnc quantize`) takes the
//! ranges from them instead of calibrating. The weight's per-channel
//! scale is computed from the weight itself at every step. Both follow
//! [`QParams::from_range`] in `f32`, so the fake values are exactly the
//! integer model's dequantized ones.

use super::rewrite::{sites, Layout, Site};
use crate::PassError;
use nnc_ir::{BinaryOp, DType, Graph, Init, NodeId, ReduceOp, TensorType, UnaryOp, Update};

/// How far the range states move towards each training batch's range
/// (`averaging_constant` of PyTorch's `MovingAverageMinMaxObserver`).
pub const AVERAGING: f64 = 0.01;

/// The state names of the activation range of the product of `weight`.
pub fn range_states(weight: &str) -> (String, String) {
    (format!("{weight}.act_min"), format!("{weight}.act_max"))
}

/// Fake-quantizes every site of `graph`; in a `training` graph (the
/// objective) the range states also follow the batches. Returns the
/// weights of the sites, in order.
pub fn fake_quantize(graph: &mut Graph, training: bool) -> Result<Vec<String>, PassError> {
    let found = sites(graph);
    if found.is_empty() {
        return Err(PassError::new(
            "the model has no dense or convolution product to train quantized",
        ));
    }
    for site in &found {
        fake_quantize_site(graph, site, training)?;
    }
    graph.prune();
    Ok(found.into_iter().map(|s| s.weight).collect())
}

fn fake_quantize_site(graph: &mut Graph, site: &Site, training: bool) -> Result<(), PassError> {
    let scalar = TensorType::new(DType::F32, []);
    let (lo_name, hi_name) = range_states(&site.weight);
    let lo = graph.state(&lo_name, scalar.clone(), Init::Zeros);
    let hi = graph.state(&hi_name, scalar, Init::Zeros);
    let x = site.activation;
    if training {
        let rank = graph.ty(x).rank();
        let all: Vec<usize> = (0..rank).collect();
        let batch_max = graph.reduce(ReduceOp::Max, x, all.clone(), false)?;
        let negated = graph.neg(x)?;
        let negated_max = graph.reduce(ReduceOp::Max, negated, all, false)?;
        let batch_min = graph.neg(negated_max)?;
        for (state, name, observed) in [(lo, &lo_name, batch_min), (hi, &hi_name, batch_max)] {
            let step = graph.sub(observed, state)?;
            let c = graph.scalar(AVERAGING, DType::F32);
            let moved = graph.mul(step, c)?;
            let next = graph.add_(state, moved)?;
            graph.updates.push(Update {
                target: name.clone(),
                value: next,
            });
        }
    }
    let fake_x = fake_affine_u8(graph, x, lo, hi)?;
    let w = graph
        .find_leaf(&site.weight)
        .ok_or_else(|| PassError::new(format!("no param `{}`", site.weight)))?;
    let fake_w = fake_symmetric_i8(graph, w, site.layout)?;
    let operands = graph.operands(site.matmul);
    let product = match site.layout {
        Layout::Dense => graph.matmul(fake_x, fake_w)?,
        Layout::Conv => {
            let view = graph.ty(operands[0]).shape.clone();
            let viewed = graph.reshape(fake_w, view)?;
            graph.matmul(viewed, fake_x)?
        }
    };
    graph.replace_uses(site.matmul, product);
    Ok(())
}

/// `fake` forwards, and the gradient of `x` passes where the integer
/// `q` (before clamping) is within `[qmin, qmax]` and stops where the
/// quantization clips, as PyTorch's `FakeQuantize` backward does:
/// `x·m + detach(fake − x·m)` with `m = [qmin ≤ q ≤ qmax]`.
fn straight_through(
    graph: &mut Graph,
    x: NodeId,
    fake: NodeId,
    q: NodeId,
    (qmin, qmax): (f64, f64),
) -> Result<NodeId, PassError> {
    let in_range = |graph: &mut Graph, op, bound| -> Result<NodeId, PassError> {
        let bound = graph.scalar(bound, DType::F32);
        let holds = graph.binary(op, q, bound)?;
        Ok(graph.cast(holds, DType::F32)?)
    };
    let above = in_range(graph, BinaryOp::Ge, qmin)?;
    let below = in_range(graph, BinaryOp::Le, qmax)?;
    let mask = graph.mul(above, below)?;
    let passed = graph.mul(x, mask)?;
    let error = graph.sub(fake, passed)?;
    let stopped = graph.unary(UnaryOp::Detach, error)?;
    Ok(graph.add_(passed, stopped)?)
}

fn clamp(graph: &mut Graph, x: NodeId, lo: f64, hi: f64) -> Result<NodeId, PassError> {
    let lo = graph.scalar(lo, DType::F32);
    let hi = graph.scalar(hi, DType::F32);
    let above = graph.binary(BinaryOp::Max, x, lo)?;
    Ok(graph.binary(BinaryOp::Min, above, hi)?)
}

/// `x` fake quantized to affine `u8` over the range `[lo, hi]` widened
/// to hold 0, as [`super::QParams::from_range`] and `quantize` compute.
fn fake_affine_u8(
    graph: &mut Graph,
    x: NodeId,
    lo: NodeId,
    hi: NodeId,
) -> Result<NodeId, PassError> {
    let zero = graph.scalar(0.0, DType::F32);
    let min_neg = graph.binary(BinaryOp::Min, lo, zero)?;
    let max_pos = graph.binary(BinaryOp::Max, hi, zero)?;
    let width = graph.sub(max_pos, min_neg)?;
    let levels = graph.scalar(255.0, DType::F32);
    let raw = graph.div(width, levels)?;
    let eps = graph.scalar(f32::EPSILON as f64, DType::F32);
    let scale = graph.binary(BinaryOp::Max, raw, eps)?;
    let shifted = graph.div(min_neg, scale)?;
    let rounded = graph.unary(UnaryOp::Round, shifted)?;
    let zp_raw = graph.neg(rounded)?;
    let zp = clamp(graph, zp_raw, 0.0, 255.0)?;
    let one = graph.scalar(1.0, DType::F32);
    let inv = graph.div(one, scale)?;
    let scaled = graph.mul(x, inv)?;
    let rounded = graph.unary(UnaryOp::Round, scaled)?;
    let q_raw = graph.add_(rounded, zp)?;
    let q = clamp(graph, q_raw, 0.0, 255.0)?;
    let centered = graph.sub(q, zp)?;
    let fake = graph.mul(centered, scale)?;
    straight_through(graph, x, fake, q_raw, (0.0, 255.0))
}

/// The weight `w` fake quantized to symmetric `i8` per output channel
/// (a dense weight's columns, a convolution's filters).
fn fake_symmetric_i8(graph: &mut Graph, w: NodeId, layout: Layout) -> Result<NodeId, PassError> {
    let rank = graph.ty(w).rank();
    let channel_axis = match layout {
        Layout::Dense => 1,
        Layout::Conv => 0,
    };
    let others: Vec<usize> = (0..rank).filter(|&a| a != channel_axis).collect();
    let magnitude = graph.unary(UnaryOp::Abs, w)?;
    let amax = graph.reduce(ReduceOp::Max, magnitude, others, true)?;
    let half_levels = graph.scalar(127.5, DType::F32);
    let raw = graph.div(amax, half_levels)?;
    let eps = graph.scalar(f32::EPSILON as f64, DType::F32);
    let scale = graph.binary(BinaryOp::Max, raw, eps)?;
    let one = graph.scalar(1.0, DType::F32);
    let inv = graph.div(one, scale)?;
    let scaled = graph.mul(w, inv)?;
    let q_raw = graph.unary(UnaryOp::Round, scaled)?;
    let q = clamp(graph, q_raw, -128.0, 127.0)?;
    let fake = graph.mul(q, scale)?;
    straight_through(graph, w, fake, q_raw, (-128.0, 127.0))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::quantize::rewrite::quantize_weight;
    use crate::quantize::{QParams, Scheme};
    use nnc_ir::interp::{eval, Env, EvalOptions};
    use nnc_ir::{parse_graph, Tensor};

    const DENSE: &str = r#"
graph objective {
  %0 = input "x" : f32[B,3]
  %1 = param "d.w" init=xavier_uniform : f32[3,2]
  %2 = matmul %0, %1 : f32[B,2]
  output y = %2
}
"#;

    fn env(x: Vec<f64>, w: Vec<f64>, lo: f64, hi: f64) -> Env {
        let t = |shape: &[usize], v: Vec<f64>| Tensor::from_vec(DType::F32, shape, v).unwrap();
        Env::new()
            .with("x", t(&[2, 3], x))
            .with("d.w", t(&[3, 2], w))
            .with("d.w.act_min", t(&[], vec![lo]))
            .with("d.w.act_max", t(&[], vec![hi]))
    }

    #[test]
    fn the_fake_product_is_the_integer_model_s_dequantized_one() {
        let mut g = parse_graph(DENSE).unwrap();
        assert_eq!(fake_quantize(&mut g, false).unwrap(), vec!["d.w"]);
        let x = vec![0.3, -0.7, 1.9, 0.05, 0.61, -1.2];
        let w = vec![0.5, -0.25, 0.125, 1.5, -0.9, 0.33];
        let (lo, hi) = (-1.0, 2.0);
        let values = eval(&g, &env(x.clone(), w.clone(), lo, hi), EvalOptions::F32).unwrap();
        let y = values.get(g.output("y").unwrap()).unwrap();
        // By hand with the integer model's arithmetic.
        let a = QParams::from_range(lo, hi, Scheme::AffineU8);
        let wt = Tensor::from_vec(DType::F32, &[3, 2], w).unwrap();
        let (qw, channels) = quantize_weight(&wt, Layout::Dense).unwrap();
        for b in 0..2 {
            for (o, channel) in channels.iter().enumerate() {
                let mut acc = 0.0f32;
                for i in 0..3 {
                    let xa = a.dequantize(a.quantize(x[b * 3 + i] as f32));
                    let wq = channel.dequantize(qw.data[i * 2 + o] as i32);
                    acc += xa * wq;
                }
                let got = y.data[b * 2 + o] as f32;
                assert!(
                    (got - acc).abs() <= 1e-6 * acc.abs().max(1.0),
                    "{got} vs {acc}"
                );
            }
        }
    }

    #[test]
    fn training_moves_the_ranges_and_passes_the_gradient_through() {
        let mut g = parse_graph(DENSE).unwrap();
        fake_quantize(&mut g, true).unwrap();
        let y = g.output("y").unwrap();
        let axes = vec![0, 1];
        let loss = g.reduce(ReduceOp::Sum, y, axes, false).unwrap();
        let w = g.find_leaf("d.w").unwrap();
        let grads = crate::gradients(&mut g, loss, &[w]).unwrap();
        g.set_output("grad", grads[0]);
        let x = vec![0.3, -0.7, 1.9, 0.05, 0.61, -1.2];
        let w = vec![0.5, -0.25, 0.125, 1.5, -0.9, 0.33];
        let values = eval(&g, &env(x, w, -1.0, 2.0), EvalOptions::F32).unwrap();
        let update = |name: &str| {
            let u = g.updates.iter().find(|u| u.target == name).unwrap();
            values.get(u.value).unwrap().data[0]
        };
        // A hundredth of the way towards the batch's range [-1.2, 1.9].
        assert!((update("d.w.act_min") - (-1.0 + 0.01 * -0.2)).abs() < 1e-6);
        assert!((update("d.w.act_max") - (2.0 + 0.01 * -0.1)).abs() < 1e-6);
        // d(sum(fq(x) @ fq(w)))/dw passes through: the fake activations
        // summed over the batch, per input row.
        let grad = values.get(g.output("grad").unwrap()).unwrap();
        assert_eq!(grad.shape, vec![3, 2]);
        assert!(grad.data.iter().all(|v| v.is_finite()));
        // Column 1's largest weight, 1.5, is 127.5 steps of its scale:
        // it rounds to 128, past the i8 range, so the clipping stops its
        // gradient (as in PyTorch); column 0's -0.9 rounds to -128, within.
        assert_eq!(grad.data[3], 0.0, "{grad:?}");
        assert!(
            [0, 1, 2, 4, 5].iter().all(|&i| grad.data[i] != 0.0),
            "{grad:?}"
        );
    }
}
