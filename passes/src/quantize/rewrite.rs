//! Post-training quantization of the products of dense layers and
//! convolutions: a product of `f32` activations and an `f32` weight param
//! becomes an integer product of `u8` activations and `i8` weights
//! (quantized per output channel), corrected for the activations' zero
//! point and rescaled per output channel:
//!
//! ```text
//! qx  = u8(round(x · (1 / sx)) + zx)                quantize (ATen's formula)
//! acc = qx @ qw          (dense: x [..., in] @ w [in, out])
//!     = qw @ qx          (convolution: w [G, O/G, K] @ cols [B, G, K, L])
//! y   = f32(acc − zx · Σ_k qw) · (sx · sw_o)        per output channel o
//! ```
//!
//! which is `dequantize(qx) @ dequantize(qw)` exactly up to the final
//! `f32` rounding. The correction is taken in `i32` (exact: `zx · Σ qw`
//! can pass 2^24, where `f32` would round). The weight keeps its name
//! with dtype `i8`, so a quantized checkpoint holds the same names at a
//! quarter of the size; the scales and corrections are constants of the
//! graph. A convolution's activations are its unfolded columns; when they
//! are `unfold(image, fill = 0)` read by the product alone, the image is
//! quantized instead (once per pixel, not once per kernel position) and
//! its bytes unfolded with `fill = zx`: the same values, since 0
//! quantizes to exactly `zx` (every range holds 0).
//!
//! This is the graph-to-graph half of quantization (values change, so it
//! is not an e-graph rewrite); choosing where integer arithmetic pays and
//! fusing the epilogue are the optimizer's.

use super::{QParams, Scheme};
use crate::PassError;
use nnc_ir::{BinaryOp, DType, Dim, Graph, Literal, NodeId, Op, Tensor, TensorType, UnaryOp};

/// Which side of the product the weight is on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Layout {
    /// `x @ w`, `w: [in, out]` a param: output channels are `w`'s columns.
    Dense,
    /// `reshape(w) @ cols`, `w: [O, C/G, k...]` a param viewed as `[G,
    /// O/G, K]`: output channels are `w`'s first axis.
    Conv,
}

/// A product that can run in integers.
#[derive(Debug, Clone, PartialEq)]
pub struct Site {
    pub matmul: NodeId,
    /// `x` (dense) or the columns (convolution): what calibration observes.
    pub activation: NodeId,
    /// The weight param's name.
    pub weight: String,
    pub layout: Layout,
}

/// The products of `graph` that can run in integers, in topological
/// order: `x @ w` with `w` a rank-2 `f32` param, and `reshape(w) @ cols`
/// with `w` an `f32` param of rank 3 or more (a convolution's), the
/// activations `f32`. A weight read by anything else keeps its `f32` form.
pub fn sites(graph: &Graph) -> Vec<Site> {
    let param = |id: NodeId| match &graph.node(id).op {
        Op::Param { name, .. }
            if graph.ty(id).dtype == DType::F32 && graph.users(id).len() == 1 =>
        {
            Some(name.clone())
        }
        _ => None,
    };
    graph
        .topo_order()
        .into_iter()
        .filter(|&id| matches!(graph.node(id).op, Op::MatMul))
        .filter_map(|id| {
            let [a, b] = graph.operands(id)[..] else {
                return None;
            };
            if graph.ty(a).dtype != DType::F32 || graph.ty(b).dtype != DType::F32 {
                return None;
            }
            if let Some(name) = param(b).filter(|_| graph.ty(b).rank() == 2) {
                return Some(Site {
                    matmul: id,
                    activation: a,
                    weight: name,
                    layout: Layout::Dense,
                });
            }
            let viewed = matches!(graph.node(a).op, Op::Reshape) && graph.users(a).len() == 1;
            let w = graph.operands(a).first().copied().filter(|_| viewed)?;
            let name = param(w).filter(|_| graph.ty(w).rank() >= 3)?;
            Some(Site {
                matmul: id,
                activation: b,
                weight: name,
                layout: Layout::Conv,
            })
        })
        .collect()
}

/// A weight quantized per output channel, symmetric `i8`: the `i8`
/// tensor and each channel's parameters. Dense weights `[in, out]` have
/// their channels as columns; convolution weights `[O, ...]` as the first
/// axis.
pub fn quantize_weight(w: &Tensor, layout: Layout) -> Result<(Tensor, Vec<QParams>), PassError> {
    let values: Vec<f32> = w.data.iter().map(|&v| v as f32).collect();
    if let Some(bad) = values.iter().find(|v| !v.is_finite()) {
        return Err(PassError::new(format!(
            "the weight holds {bad}, which cannot be quantized"
        )));
    }
    // `channel(i)`: the output channel of element `i`.
    let (channels, channel): (usize, Box<dyn Fn(usize) -> usize>) = match (layout, &w.shape[..]) {
        (Layout::Dense, &[_, cols]) => (cols, Box::new(move |i| i % cols)),
        (Layout::Conv, [o, rest @ ..]) if !rest.is_empty() => {
            let per: usize = rest.iter().product();
            (*o, Box::new(move |i| i / per.max(1)))
        }
        _ => {
            return Err(PassError::new(format!(
                "a {} weight has rank {}, this one has shape {:?}",
                match layout {
                    Layout::Dense => "dense",
                    Layout::Conv => "convolution",
                },
                match layout {
                    Layout::Dense => "2",
                    Layout::Conv => "3 or more",
                },
                w.shape
            )))
        }
    };
    let mut ranges = vec![(0.0f32, 0.0f32); channels];
    for (i, &v) in values.iter().enumerate() {
        let r = &mut ranges[channel(i)];
        *r = (r.0.min(v), r.1.max(v));
    }
    let params: Vec<QParams> = ranges
        .iter()
        .map(|&(lo, hi)| QParams::from_range(lo as f64, hi as f64, Scheme::SymmetricI8))
        .collect();
    let q = values
        .iter()
        .enumerate()
        .map(|(i, &v)| params[channel(i)].quantize(v) as f64)
        .collect();
    let tensor = Tensor::from_vec(DType::I8, &w.shape, q)
        .map_err(|e| PassError::new(format!("internal error: {e}")))?;
    Ok((tensor, params))
}

/// The image a convolution's columns unfold, with the window and the
/// columns' view, when they are `reshape(unfold(image, fill = 0))` read
/// by the product alone.
fn unfolded_image(graph: &Graph, site: &Site) -> Option<(NodeId, nnc_ir::Window, nnc_ir::Shape)> {
    if site.layout != Layout::Conv {
        return None;
    }
    let view = site.activation;
    if !matches!(graph.node(view).op, Op::Reshape) || graph.users(view).len() != 1 {
        return None;
    }
    let cols = graph.operands(view)[0];
    match &graph.node(cols).op {
        Op::Unfold { window, fill } if *fill == 0.0 && graph.users(cols).len() == 1 => Some((
            graph.operands(cols)[0],
            window.clone(),
            graph.ty(view).shape.clone(),
        )),
        _ => None,
    }
}

/// Rewrites `site` in `graph` as an integer product (see the module
/// docs), with the activations' parameters `activation` (affine `u8`)
/// and the weight already quantized (`quantize_weight`).
pub fn quantize_site(
    graph: &mut Graph,
    site: &Site,
    activation: QParams,
    weight: &Tensor,
    channels: &[QParams],
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
    let (count, per) = match site.layout {
        Layout::Dense => (weight.shape[1], weight.shape[0]),
        Layout::Conv => (weight.shape[0], weight.data.len() / weight.shape[0].max(1)),
    };
    if channels.len() != count {
        return Err(PassError::new(format!(
            "`{}` has {count} output channels but {} scales",
            site.weight,
            channels.len()
        )));
    }
    // The sum of each channel's weights, for the zero-point correction.
    let sums: Vec<i64> = (0..count)
        .map(|o| match site.layout {
            Layout::Dense => (0..per).map(|i| weight.data[i * count + o] as i64).sum(),
            Layout::Conv => weight.data[o * per..(o + 1) * per]
                .iter()
                .map(|&v| v as i64)
                .sum(),
        })
        .collect();
    // The i8 weight takes the f32 one's place under the same name.
    let init = match &graph.node(w_node).op {
        Op::Param { init, .. } => init.clone(),
        _ => return Err(PassError::new("internal error: a site's weight is a param")),
    };
    let qw = graph.param(
        &site.weight,
        TensorType::new(DType::I8, w_ty.shape.clone()),
        init,
    );
    let quantized = |graph: &mut Graph, x: NodeId| -> Result<NodeId, PassError> {
        let inv = graph.scalar(1.0 / activation.scale, DType::F32);
        let scaled = graph.mul(x, inv)?;
        let rounded = graph.unary(UnaryOp::Round, scaled)?;
        let zx = graph.scalar(activation.zero_point as f64, DType::F32);
        let shifted = graph.binary(BinaryOp::Add, rounded, zx)?;
        Ok(graph.cast(shifted, DType::U8)?)
    };
    let qx = match unfolded_image(graph, site) {
        // Quantizing commutes with unfolding (a zero fill quantizes to
        // exactly the zero point): quantize the image, once per pixel
        // rather than once per kernel position, and unfold the bytes.
        Some((image, window, view)) => {
            let q_image = quantized(graph, image)?;
            let fill = activation.zero_point as f64;
            let cols = graph.unfold(q_image, window, fill)?;
            graph.reshape(cols, view)?
        }
        None => quantized(graph, site.activation)?,
    };
    let operands = graph.operands(site.matmul);
    let (acc, channel_shape) = match site.layout {
        Layout::Dense => (graph.matmul(qx, qw)?, vec![Dim::Const(count)]),
        Layout::Conv => {
            // The weight's view `[G, O/G, K]`, now of the i8 weight;
            // a channel's constants broadcast along the columns.
            let view = graph.ty(operands[0]).shape.clone();
            let qv = graph.reshape(qw, view.clone())?;
            let mut shape = view;
            let last = shape.len() - 1;
            shape[last] = Dim::Const(1);
            (graph.matmul(qv, qx)?, shape)
        }
    };
    let constant = |graph: &mut Graph, values: Vec<f64>, dtype| {
        let ty = TensorType::new(dtype, channel_shape.clone());
        graph.add(Op::Const(Literal::Dense(values)), &[], Some(ty))
    };
    let corrections = sums
        .iter()
        .map(|&s| (activation.zero_point as i64 * s) as f64)
        .collect();
    let correction = constant(graph, corrections, DType::I32)?;
    let centered = graph.binary(BinaryOp::Sub, acc, correction)?;
    let float = graph.cast(centered, DType::F32)?;
    let scales = channels
        .iter()
        .map(|c| (activation.scale as f32 * c.scale as f32) as f64)
        .collect();
    let scales = constant(graph, scales, DType::F32)?;
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
        let (qw, columns) = quantize_weight(&w, Layout::Dense).unwrap();
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
    fn weights_get_one_scale_per_output_channel() {
        // Dense [2, 3]: columns' largest magnitudes 2, 0.5, 0.
        let w =
            Tensor::from_vec(DType::F32, &[2, 3], vec![1.0, -0.5, 0.0, -2.0, 0.25, 0.0]).unwrap();
        let (q, qs) = quantize_weight(&w, Layout::Dense).unwrap();
        assert_eq!(qs[0].scale, (2.0f32 / 127.5) as f64);
        assert_eq!(qs[1].scale, (0.5f32 / 127.5) as f64);
        assert_eq!(qs[2].scale, f32::EPSILON as f64);
        // `1 / scale` is the f32 63.749996 (column 0) and 254.99998
        // (column 1), so -2 and -0.5 map to -127.49999: -127 by ATen's
        // formula (a true division would tie at -127.5 and give -128).
        assert_eq!(q.data, [64.0, -127.0, 0.0, -127.0, 64.0, 0.0]);
        // A convolution's [O, C, k]: a scale per first-axis slice.
        let w = Tensor::from_vec(DType::F32, &[2, 1, 2], vec![0.5, -1.0, 0.1, 0.2]).unwrap();
        let (q, qs) = quantize_weight(&w, Layout::Conv).unwrap();
        assert_eq!(qs[0].scale, (1.0f32 / 127.5) as f64);
        assert_eq!(qs[1].scale, (0.2f32 / 127.5) as f64);
        assert_eq!(q.data[1], -127.0);
        assert_eq!(q.data[3], 127.0, "127.5 → 128, clamped");
    }

    /// `y = reshape(w) @ reshape(unfold(x))`, the prelude's conv1d.
    #[test]
    fn a_convolution_runs_in_integers_as_dequantized_operands_would() {
        let mut g = Graph::new("forward");
        let x = g.input(
            "x",
            TensorType::new(DType::F32, [Dim::sym("B"), Dim::Const(1), Dim::Const(4)]),
        );
        let window = nnc_ir::Window {
            kernel: vec![3],
            stride: vec![1],
            padding: vec![1],
            dilation: vec![1],
        };
        let cols = g.unfold(x, window, 0.0).unwrap();
        let cols = g
            .reshape(
                cols,
                vec![Dim::sym("B"), Dim::Const(1), Dim::Const(3), Dim::Const(4)],
            )
            .unwrap();
        let w = g.param(
            "c.w",
            TensorType::new(DType::F32, shape_of(&[2, 1, 3])),
            Init::Zeros,
        );
        let wv = g.reshape(w, shape_of(&[1, 2, 3])).unwrap();
        let y = g.matmul(wv, cols).unwrap();
        g.set_output("y", y);
        let found = sites(&g);
        assert_eq!(found.len(), 1);
        assert_eq!(
            (found[0].layout, found[0].weight.as_str()),
            (Layout::Conv, "c.w")
        );
        let wt = Tensor::from_vec(
            DType::F32,
            &[2, 1, 3],
            vec![0.5, -1.0, 0.25, 0.3, 0.1, -0.2],
        )
        .unwrap();
        let (qw, channels) = quantize_weight(&wt, Layout::Conv).unwrap();
        let act = QParams::from_range(-0.5, 2.0, Scheme::AffineU8);
        quantize_site(&mut g, &found[0], act, &qw, &channels).unwrap();
        nnc_ir::verify(&g).unwrap();
        let xs = [0.3, -0.4, 1.9, 0.05];
        let env = Env::new()
            .with(
                "x",
                Tensor::from_vec(DType::F32, &[1, 1, 4], xs.to_vec()).unwrap(),
            )
            .with("c.w", qw.clone());
        let got = eval(&g, &env, EvalOptions::F32).unwrap();
        let got = got.output("y").unwrap();
        assert_eq!(got.shape, [1, 1, 2, 4]);
        // Padding 1: the columns at position l are x[l-1], x[l], x[l+1].
        let at = |i: isize| {
            if (0..4).contains(&i) {
                xs[i as usize]
            } else {
                0.0
            }
        };
        for (o, channel) in channels.iter().enumerate() {
            for l in 0..4 {
                let acc: i64 = (0..3)
                    .map(|k| {
                        let q = act.quantize(at(l as isize + k as isize - 1) as f32) as i64;
                        (q - act.zero_point as i64) * qw.data[o * 3 + k] as i64
                    })
                    .sum();
                let want = acc as f32 * (act.scale as f32 * channel.scale as f32);
                assert_eq!(got.data[o * 4 + l], want as f64, "y[{o}, {l}]");
                let float: f64 = (0..3)
                    .map(|k| at(l as isize + k as isize - 1) * wt.data[o * 3 + k])
                    .sum();
                assert!((got.data[o * 4 + l] - float).abs() < 0.03, "{float}");
            }
        }
    }

    #[test]
    fn weights_that_cannot_be_quantized_are_errors() {
        let w = Tensor::from_vec(DType::F32, &[2], vec![1.0, 2.0]).unwrap();
        assert!(quantize_weight(&w, Layout::Dense)
            .unwrap_err()
            .message
            .contains("rank 2"));
        let w = Tensor::from_vec(DType::F32, &[1, 2], vec![f64::NAN, 2.0]).unwrap();
        assert!(quantize_weight(&w, Layout::Dense)
            .unwrap_err()
            .message
            .contains("NaN"));
        let mut g = dense();
        let site = sites(&g).remove(0);
        let (qw, columns) = quantize_weight(
            &Tensor::from_vec(DType::F32, &[3, 2], vec![1.0; 6]).unwrap(),
            Layout::Dense,
        )
        .unwrap();
        let act = QParams::from_range(0.0, 1.0, Scheme::AffineU8);
        let e = quantize_site(&mut g, &site, act, &qw, &columns[..1]).unwrap_err();
        assert!(e.message.contains("2 output channels but 1 scales"), "{e}");
    }
}
