//! Structured pruning: removing whole output channels of a product weight
//! (a dense layer's units, a convolution's filters) and, with them,
//! everything their shapes tie to it — the compile-time analogue of
//! Torch-Pruning's dependency graph, read off the graph's types.
//!
//! A channel of a product weight is one index along its output axis. The
//! index travels through the graph: a bias added along it, a ReLU, a batch
//! norm's statistics and their running state, a max pool, a flatten (where
//! it becomes a block of `h·w` contiguous columns), and finally the next
//! product, where it is contracted against the next weight's input rows.
//! [`group`] follows it forwards and backwards through every op and
//! records, for each value that carries it, a [`Lane`]: the axis and how
//! the channel index sits inside it. Removing channels is then only a
//! change of types: [`shrink`] rewrites the carrying values' sizes and
//! re-verifies the graph, so a graph the analysis misread fails to verify
//! rather than compute something else. The param and state tensors of the
//! group are sliced the same way by [`slice`].
//!
//! A channel that reaches an input, an output, a reduction over its own
//! axis (a layer norm, a softmax over units), a loop or a gather cannot be
//! removed without changing what the model computes: [`group`] says which.

use crate::quantize::rewrite::{sites, Layout};
use crate::PassError;
use nnc_ir::{Dim, Graph, Literal, NodeId, Op, Tensor};
use std::collections::{BTreeMap, VecDeque};

/// How a group's channel index sits in one axis of a value: the axis has
/// `outer · channels · inner` entries and entry `(o · channels + c) · inner
/// + i` belongs to channel `c`. A flatten of `[B, C, h, w]` to `[B, C·h·w]`
/// gives `inner = h·w`; a convolution's columns `[.., C·kh·kw, ..]` give
/// `inner = kh·kw`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Lane {
    pub axis: usize,
    pub outer: usize,
    pub inner: usize,
}

impl Lane {
    fn plain(axis: usize) -> Lane {
        Lane {
            axis,
            outer: 1,
            inner: 1,
        }
    }

    fn on(self, axis: usize) -> Lane {
        Lane { axis, ..self }
    }

    /// The axis's size with `channels` channels.
    pub fn size(&self, channels: usize) -> usize {
        self.outer * channels * self.inner
    }
}

/// Everything tied to the output channels of one product weight.
#[derive(Debug, Clone, PartialEq)]
pub struct ChannelGroup {
    /// The product weight whose output axis defines the channels.
    pub seed: String,
    /// How many channels there are.
    pub channels: usize,
    /// Every value carrying them, with where.
    pub lanes: BTreeMap<NodeId, Lane>,
    /// The params and states among them, by name: what a pruned
    /// checkpoint slices.
    pub leaves: Vec<(String, Lane)>,
}

/// The product weights whose output channels could be pruned, in
/// topological order, each with its group or the reason it cannot be.
pub fn candidates(graph: &Graph) -> Vec<(String, Result<ChannelGroup, PassError>)> {
    sites(graph)
        .into_iter()
        .map(|site| {
            let g = group(graph, &site.weight);
            (site.weight, g)
        })
        .collect()
}

/// The group of `seed`'s output channels in `graph`: `seed` must be the
/// weight of a dense product (`x @ w`, channels along `w`'s columns) or of
/// a convolution (`reshape(w) @ cols`, along `w`'s first axis).
pub fn group(graph: &Graph, seed: &str) -> Result<ChannelGroup, PassError> {
    let site = sites(graph)
        .into_iter()
        .find(|s| s.weight == seed)
        .ok_or_else(|| {
            PassError::new(format!(
                "`{seed}` is not the weight of a dense layer or a convolution"
            ))
        })?;
    let w = graph
        .find_leaf(seed)
        .ok_or_else(|| PassError::new(format!("the graph has no param `{seed}`")))?;
    let axis = match site.layout {
        Layout::Dense => 1,
        Layout::Conv => 0,
    };
    let channels = match graph.ty(w).shape.get(axis) {
        Some(Dim::Const(n)) => *n,
        _ => {
            return Err(PassError::new(format!(
                "`{seed}` has no constant output axis"
            )))
        }
    };
    let mut walk = Walk {
        graph,
        seed,
        channels,
        lanes: BTreeMap::new(),
        queue: VecDeque::new(),
    };
    walk.reach(w, Lane::plain(axis))?;
    while let Some(v) = walk.queue.pop_front() {
        walk.spread(v)?;
    }
    let leaves = walk
        .lanes
        .iter()
        .filter_map(|(&id, &lane)| match &graph.node(id).op {
            Op::Param { name, .. } | Op::State { name, .. } => Some((name.clone(), lane)),
            _ => None,
        })
        .collect();
    Ok(ChannelGroup {
        seed: seed.to_string(),
        channels,
        lanes: walk.lanes,
        leaves,
    })
}

/// Removes all but `kept` of the output channels of `seed` from `graph`:
/// every value of its group gets the smaller size, then the graph is
/// verified (every op's type inferred again from its operands).
pub fn shrink(graph: &mut Graph, seed: &str, kept: usize) -> Result<ChannelGroup, PassError> {
    let group = group(graph, seed)?;
    if kept == 0 || kept > group.channels {
        return Err(PassError::new(format!(
            "cannot keep {kept} of the {} channels of `{seed}`",
            group.channels
        )));
    }
    for (&id, lane) in &group.lanes {
        graph.node_mut(id).ty.shape[lane.axis] = Dim::Const(lane.size(kept));
    }
    nnc_ir::verify(graph).map_err(|e| {
        PassError::new(format!(
            "pruning the channels of `{seed}` left an inconsistent graph: {e}"
        ))
    })?;
    Ok(group)
}

/// The entries of `t` that belong to the channels `kept` (indices into
/// the `channels` channels, increasing) along `lane`.
pub fn slice(
    t: &Tensor,
    lane: &Lane,
    channels: usize,
    kept: &[usize],
) -> Result<Tensor, PassError> {
    let axis_len = t.shape.get(lane.axis).copied().unwrap_or(0);
    if axis_len != lane.size(channels) || kept.iter().any(|&c| c >= channels) {
        return Err(PassError::new(format!(
            "a tensor of shape {:?} has no {channels} channels along axis {}",
            t.shape, lane.axis
        )));
    }
    // Positions kept along the axis, in order.
    let mut positions = Vec::with_capacity(lane.size(kept.len()));
    for o in 0..lane.outer {
        for &c in kept {
            let start = (o * channels + c) * lane.inner;
            positions.extend(start..start + lane.inner);
        }
    }
    let before: usize = t.shape[..lane.axis].iter().product();
    let after: usize = t.shape[lane.axis + 1..].iter().product();
    let mut data = Vec::with_capacity(before * positions.len() * after);
    for b in 0..before {
        for &p in &positions {
            let start = (b * axis_len + p) * after;
            data.extend_from_slice(&t.data[start..start + after]);
        }
    }
    let mut shape = t.shape.clone();
    shape[lane.axis] = positions.len();
    Tensor::from_vec(t.dtype, &shape, data).map_err(|e| PassError::new(e.to_string()))
}

/// The L1 norm of each channel's entries of `t` along `lane`: a
/// convolution's filter norms (Li et al., "Pruning Filters for Efficient
/// ConvNets"), or `|γ|` of a batch norm's scale.
pub fn l1_by_channel(t: &Tensor, lane: &Lane, channels: usize) -> Result<Vec<f64>, PassError> {
    let axis_len = t.shape.get(lane.axis).copied().unwrap_or(0);
    if axis_len != lane.size(channels) {
        return Err(PassError::new(format!(
            "a tensor of shape {:?} has no {channels} channels along axis {}",
            t.shape, lane.axis
        )));
    }
    let after: usize = t.shape[lane.axis + 1..].iter().product();
    let mut norms = vec![0.0; channels];
    for (i, v) in t.data.iter().enumerate() {
        let position = (i / after) % axis_len;
        norms[(position / lane.inner) % channels] += v.abs();
    }
    Ok(norms)
}

/// The `keep` channels of largest saliency, in increasing order (ties
/// keep the lower index, so the choice is deterministic).
pub fn most_salient(saliency: &[f64], keep: usize) -> Vec<usize> {
    let mut order: Vec<usize> = (0..saliency.len()).collect();
    order.sort_by(|&a, &b| saliency[b].total_cmp(&saliency[a]).then(a.cmp(&b)));
    let mut kept: Vec<usize> = order.into_iter().take(keep).collect();
    kept.sort_unstable();
    kept
}

/// The search: values reached with their lane, and those whose
/// neighbours are still to be looked at.
struct Walk<'g> {
    graph: &'g Graph,
    seed: &'g str,
    channels: usize,
    lanes: BTreeMap<NodeId, Lane>,
    queue: VecDeque<NodeId>,
}

impl Walk<'_> {
    fn fail(&self, why: String) -> PassError {
        PassError::new(format!("the channels of `{}` {why}", self.seed))
    }

    /// Records that `v` carries the channels along `lane`.
    fn reach(&mut self, v: NodeId, lane: Lane) -> Result<(), PassError> {
        let size = match self.graph.ty(v).shape.get(lane.axis) {
            Some(Dim::Const(n)) => *n,
            _ => 0,
        };
        if size != lane.size(self.channels) {
            return Err(self.fail(format!(
                "do not fit axis {} of `{}` ({})",
                lane.axis,
                self.describe(v),
                self.graph.ty(v)
            )));
        }
        match self.lanes.get(&v) {
            Some(&seen) if seen == lane => return Ok(()),
            Some(_) => {
                return Err(self.fail(format!(
                    "reach `{}` along two different axes",
                    self.describe(v)
                )))
            }
            None => {}
        }
        // An output's shape is the model's interface: checked first, as
        // the plainest reason a layer's channels must stay.
        if let Some(output) = self.graph.outputs.iter().find(|o| o.node == v) {
            return Err(self.fail(format!("reach the output `{}`", output.name)));
        }
        self.lanes.insert(v, lane);
        self.queue.push_back(v);
        Ok(())
    }

    fn describe(&self, v: NodeId) -> String {
        let node = self.graph.node(v);
        match (&node.op, &node.name) {
            (Op::Param { name, .. } | Op::State { name, .. } | Op::Input { name }, _) => {
                name.clone()
            }
            (op, Some(name)) => format!("{} ({name})", op.mnemonic()),
            (op, None) => op.mnemonic().to_string(),
        }
    }

    /// Follows the channels of `v` to its operands (what `v` computes
    /// from) and to its users.
    fn spread(&mut self, v: NodeId) -> Result<(), PassError> {
        let lane = self.lanes[&v];
        self.check_leaf(v, lane)?;
        for (i, l) in self.operand_lanes(v, lane)? {
            let operand = self.graph.operands(v)[i];
            self.reach(operand, l)?;
        }
        for u in self.graph.users(v) {
            let operands = self.graph.operands(u);
            for (i, _) in operands.iter().enumerate().filter(|(_, &o)| o == v) {
                match self.result_lane(u, i, lane)? {
                    Some(l) => self.reach(u, l)?,
                    None => {
                        // Contracted by a product: the other factor's
                        // rows (or columns) carry them.
                        let (other, l) = self.contraction_partner(u, i, lane)?;
                        self.reach(operands[other], l)?;
                    }
                }
            }
        }
        // A state's update and the state carry the same channels.
        for update in &self.graph.updates {
            if update.value == v {
                if let Some(state) = self.graph.find_leaf(&update.target) {
                    self.reach(state, lane)?;
                }
            }
            if self.graph.find_leaf(&update.target) == Some(v) {
                self.reach(update.value, lane)?;
            }
        }
        Ok(())
    }

    fn check_leaf(&self, v: NodeId, lane: Lane) -> Result<(), PassError> {
        match &self.graph.node(v).op {
            Op::Input { name } => Err(self.fail(format!("reach the input `{name}`"))),
            Op::Const(Literal::Dense(_)) => Err(self.fail("reach a constant tensor".to_string())),
            Op::Iota { axis } if *axis == lane.axis => {
                Err(self.fail("index an `iota` along their axis".to_string()))
            }
            Op::Scan { .. } => Err(self.fail("reach a loop (`scan`)".to_string())),
            Op::Gather { .. } | Op::ScatterAdd { .. } => {
                Err(self.fail(format!("reach `{}`", self.graph.node(v).op.mnemonic())))
            }
            _ => Ok(()),
        }
    }

    fn rank(&self, v: NodeId) -> usize {
        self.graph.ty(v).rank()
    }

    fn dims(&self, v: NodeId) -> &[Dim] {
        &self.graph.ty(v).shape
    }

    /// Where operands of `v` carry the channels, given `v` carries them
    /// along `lane`.
    fn operand_lanes(&self, v: NodeId, lane: Lane) -> Result<Vec<(usize, Lane)>, PassError> {
        let operands = self.graph.operands(v);
        let rank = self.rank(v);
        let out = |axis: usize| lane.on(axis);
        Ok(match &self.graph.node(v).op {
            Op::Unary(_) | Op::Binary(_) | Op::Select | Op::Cast | Op::Broadcast => operands
                .iter()
                .enumerate()
                .filter_map(|(i, &o)| {
                    let r = self.rank(o);
                    let axis = (lane.axis + r).checked_sub(rank)?;
                    (self.dims(o)[axis] == self.dims(v)[lane.axis]).then(|| (i, out(axis)))
                })
                .collect(),
            Op::Reduce { axes, keepdim, .. } => {
                let axis = if *keepdim {
                    lane.axis
                } else {
                    unreduced_axis(axes, lane.axis)
                };
                vec![(0, out(axis))]
            }
            Op::ArgMax { axis } => {
                vec![(0, out(unreduced_axis(&[*axis], lane.axis)))]
            }
            Op::Transpose { perm } => vec![(0, out(perm[lane.axis]))],
            Op::Reshape => {
                let from = self.dims(v);
                let to = self.dims(operands[0]);
                match regroup(from, to, lane, self.channels) {
                    Some(l) => vec![(0, l)],
                    None => {
                        return Err(self.fail(format!(
                            "are split across axes by a reshape to {}",
                            nnc_ir::ShapeDisplay(to)
                        )))
                    }
                }
            }
            Op::MatMul => {
                let (a, b) = (operands[0], operands[1]);
                let (ra, rb) = (self.rank(a), self.rank(b));
                if lane.axis == rank - 2 {
                    vec![(0, out(ra - 2))]
                } else if lane.axis == rank - 1 {
                    vec![(1, out(rb - 1))]
                } else {
                    // A batch axis, broadcast like an elementwise op.
                    [(0, a, ra), (1, b, rb)]
                        .into_iter()
                        .filter_map(|(i, o, r)| {
                            let axis = (lane.axis + r).checked_sub(rank)?;
                            (axis < r - 2 && self.dims(o)[axis] == self.dims(v)[lane.axis])
                                .then(|| (i, out(axis)))
                        })
                        .collect()
                }
            }
            Op::Unfold { .. } | Op::Fold { .. } => {
                if lane.axis > 1 {
                    return Err(self.fail("reach a window's spatial axes".to_string()));
                }
                vec![(0, lane)]
            }
            Op::Slice { axis, .. } | Op::Concat { axis } => {
                if *axis == lane.axis {
                    return Err(self.fail(format!(
                        "are cut by `{}` along their axis",
                        self.graph.node(v).op.mnemonic()
                    )));
                }
                (0..operands.len()).map(|i| (i, lane)).collect()
            }
            // Leaves, constants, `random`: nothing upstream.
            _ => Vec::new(),
        })
    }

    /// Where the result of `u` carries the channels, given its operand `i`
    /// carries them along `lane`; `None` when a product contracts them.
    fn result_lane(&self, u: NodeId, i: usize, lane: Lane) -> Result<Option<Lane>, PassError> {
        let operand = self.graph.operands(u)[i];
        let (r, rank) = (self.rank(operand), self.rank(u));
        let out = |axis: usize| Some(lane.on(axis));
        Ok(match &self.graph.node(u).op {
            Op::Unary(_) | Op::Binary(_) | Op::Select | Op::Cast | Op::Broadcast => {
                out(lane.axis + rank - r)
            }
            Op::Reduce { axes, keepdim, .. } => {
                if axes.contains(&lane.axis) {
                    return Err(self.fail("are reduced over".to_string()));
                }
                if *keepdim {
                    out(lane.axis)
                } else {
                    out(lane.axis - axes.iter().filter(|&&a| a < lane.axis).count())
                }
            }
            Op::ArgMax { axis } => {
                if *axis == lane.axis {
                    return Err(self.fail("are reduced over by `argmax`".to_string()));
                }
                out(lane.axis - usize::from(*axis < lane.axis))
            }
            Op::Transpose { perm } => out(perm
                .iter()
                .position(|&p| p == lane.axis)
                .unwrap_or(lane.axis)),
            Op::Reshape => {
                let from = self.dims(operand);
                let to = self.dims(u);
                match regroup(from, to, lane, self.channels) {
                    Some(l) => Some(l),
                    None => {
                        return Err(self.fail(format!(
                            "are split across axes by a reshape to {}",
                            nnc_ir::ShapeDisplay(to)
                        )))
                    }
                }
            }
            Op::MatMul => {
                if i == 0 && lane.axis == r - 2 {
                    out(rank - 2)
                } else if i == 1 && lane.axis == r - 1 {
                    out(rank - 1)
                } else if lane.axis + 2 < r {
                    out(lane.axis + rank - r)
                } else {
                    None
                }
            }
            Op::Unfold { .. } | Op::Fold { .. } => {
                if lane.axis > 1 {
                    return Err(self.fail("reach a window's spatial axes".to_string()));
                }
                Some(lane)
            }
            Op::Slice { axis, .. } | Op::Concat { axis } => {
                if *axis == lane.axis {
                    return Err(self.fail(format!(
                        "are cut by `{}` along their axis",
                        self.graph.node(u).op.mnemonic()
                    )));
                }
                Some(lane)
            }
            Op::Scan { .. } => return Err(self.fail("reach a loop (`scan`)".to_string())),
            op => {
                return Err(self.fail(format!("reach `{}`", op.mnemonic())));
            }
        })
    }

    /// The other factor of product `u` and where it carries the channels
    /// that operand `i` carries along its contracted axis.
    fn contraction_partner(
        &self,
        u: NodeId,
        i: usize,
        lane: Lane,
    ) -> Result<(usize, Lane), PassError> {
        let other = 1 - i;
        let r = self.rank(self.graph.operands(u)[other]);
        Ok((other, lane.on(if other == 0 { r - 1 } else { r - 2 })))
    }
}

/// The operand axis of a result axis of a reduction without `keepdim`:
/// the `result_axis`-th axis that is not reduced.
fn unreduced_axis(axes: &[usize], result_axis: usize) -> usize {
    (0..)
        .filter(|a| !axes.contains(a))
        .nth(result_axis)
        .unwrap_or(result_axis)
}

/// Where the channels sit after a reshape from `from` to `to` (the same
/// elements in row-major order), or `None` when the reshape splits a
/// channel's entries across axes. The channel index of a flat position
/// `p` is `(p / s) mod channels`, where `s` is the flat stride of one
/// channel step; it is a [`Lane`] of axis `j` of `to` exactly when that
/// axis's stride divides `s` and its extent is a multiple of
/// `s · channels`.
fn regroup(from: &[Dim], to: &[Dim], lane: Lane, channels: usize) -> Option<Lane> {
    let step: usize = lane.inner * constant_product(&from[lane.axis + 1..])?;
    let span = step * channels;
    let mut stride = 1usize;
    for j in (0..to.len()).rev() {
        let Dim::Const(n) = to[j] else {
            return None;
        };
        let extent = stride * n;
        // The innermost axis whose extent holds a whole run of channels.
        if span <= extent {
            let fits = stride <= step && step.is_multiple_of(stride) && extent.is_multiple_of(span);
            return fits.then(|| Lane {
                axis: j,
                outer: extent / span,
                inner: step / stride,
            });
        }
        stride = extent;
    }
    None
}

fn constant_product(dims: &[Dim]) -> Option<usize> {
    dims.iter().try_fold(1usize, |acc, d| match d {
        Dim::Const(n) => Some(acc * n),
        Dim::Sym(_) => None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use nnc_ir::interp::{eval, Env, EvalOptions};
    use nnc_ir::{parse_graph, DType};

    /// conv 4@3x3 -> +bias -> relu -> maxpool 2 -> batch-norm-like scale
    /// by a state -> flatten -> dense 5, on [B, 3, 8, 8].
    const CONV_NET: &str = r#"
graph forward {
  %0 = input "image" : f32[B,3,8,8]
  %1 = unfold %0 kernel=[3,3] stride=[1,1] padding=[0,0] dilation=[1,1] fill=0.0 : f32[B,3,3,3,6,6]
  %2 = param "conv.w" init=kaiming_uniform : f32[4,3,3,3]
  %3 = reshape %2 : f32[1,4,27]
  %4 = reshape %1 : f32[B,1,27,36]
  %5 = matmul %3, %4 : f32[B,1,4,36]
  %6 = reshape %5 : f32[B,4,6,6]
  %7 = param "conv.b" init=zeros : f32[4]
  %8 = reshape %7 : f32[4,1,1]
  %9 = add %6, %8 : f32[B,4,6,6]
  %10 = const 0.0 : f32[]
  %11 = max %9, %10 : f32[B,4,6,6]
  %12 = unfold %11 kernel=[2,2] stride=[2,2] padding=[0,0] dilation=[1,1] fill=-inf : f32[B,4,2,2,3,3]
  %13 = reduce_max %12 axes=[2,3] keepdim=false ties=first : f32[B,4,3,3]
  %14 = state "bn.scale" init=ones : f32[4]
  %15 = reshape %14 : f32[1,4,1,1]
  %16 = mul %13, %15 : f32[B,4,3,3]
  %17 = reshape %16 : f32[B,36]
  %18 = param "dense.w" init=xavier_uniform : f32[36,5]
  %19 = matmul %17, %18 : f32[B,5]
  output logits = %19
}
"#;

    fn tensor(shape: &[usize], seed: u64) -> Tensor {
        let n: usize = shape.iter().product();
        let data = (0..n)
            .map(|i| {
                let x = (i as u64 + 1).wrapping_mul(0x9e37_79b9_7f4a_7c15 ^ seed);
                ((x >> 40) as f64 / (1u64 << 24) as f64) - 0.5
            })
            .collect();
        Tensor::from_vec(DType::F32, shape, data).unwrap()
    }

    fn weights() -> Vec<(&'static str, Tensor)> {
        vec![
            ("conv.w", tensor(&[4, 3, 3, 3], 1)),
            ("conv.b", tensor(&[4], 2)),
            ("bn.scale", tensor(&[4], 3)),
            ("dense.w", tensor(&[36, 5], 4)),
        ]
    }

    fn logits(graph: &Graph, weights: &[(&str, Tensor)], image: &Tensor) -> Tensor {
        let mut env = Env::new().with("image", image.clone());
        for (name, t) in weights {
            env.insert(*name, t.clone());
        }
        let values = eval(graph, &env, EvalOptions::F32).unwrap();
        values.get(graph.output("logits").unwrap()).unwrap().clone()
    }

    #[test]
    fn a_convolution_s_channels_reach_its_bias_its_state_and_the_next_rows() {
        let graph = parse_graph(CONV_NET).unwrap();
        let g = group(&graph, "conv.w").unwrap();
        assert_eq!(g.channels, 4);
        let leaves: Vec<(&str, Lane)> = g.leaves.iter().map(|(n, l)| (n.as_str(), *l)).collect();
        let lane = |axis, inner| Lane {
            axis,
            outer: 1,
            inner,
        };
        assert_eq!(
            leaves,
            vec![
                ("conv.w", lane(0, 1)),
                ("conv.b", lane(0, 1)),
                ("bn.scale", lane(0, 1)),
                ("dense.w", lane(0, 9)),
            ]
        );
    }

    #[test]
    fn a_pruned_graph_computes_the_model_with_those_channels_silenced() {
        let mut graph = parse_graph(CONV_NET).unwrap();
        let original = graph.clone();
        let kept = [0, 2, 3];
        let g = shrink(&mut graph, "conv.w", kept.len()).unwrap();
        let image = tensor(&[2, 3, 8, 8], 9);
        // The original with channel 1's filter and bias zeroed: its ReLU
        // output is 0, so nothing of it reaches the logits.
        let mut silenced = weights();
        for (name, t) in silenced.iter_mut() {
            if *name == "conv.w" || *name == "conv.b" {
                let per = t.numel() / 4;
                t.data[per..2 * per].iter_mut().for_each(|v| *v = 0.0);
            }
        }
        let want = logits(&original, &silenced, &image);
        let sliced: Vec<(&str, Tensor)> = weights()
            .into_iter()
            .map(|(name, t)| {
                let (_, lane) = g.leaves.iter().find(|(n, _)| n == name).unwrap();
                (name, slice(&t, lane, 4, &kept).unwrap())
            })
            .collect();
        assert_eq!(sliced[3].1.shape, vec![27, 5]);
        let got = logits(&graph, &sliced, &image);
        assert!(got.allclose(&want, 1e-5, 1e-6), "{got:?} vs {want:?}");
    }

    #[test]
    fn slicing_keeps_whole_blocks_of_a_flattened_channel() {
        // [2 rows, 3 channels x 2 inner] keeping channel 2.
        let t = Tensor::from_vec(DType::F32, &[2, 6], (0..12).map(f64::from).collect()).unwrap();
        let lane = Lane {
            axis: 1,
            outer: 1,
            inner: 2,
        };
        let s = slice(&t, &lane, 3, &[2]).unwrap();
        assert_eq!(s.shape, vec![2, 2]);
        assert_eq!(s.data, vec![4.0, 5.0, 10.0, 11.0]);
    }

    #[test]
    fn the_last_layer_s_units_are_the_output_and_cannot_be_pruned() {
        let graph = parse_graph(CONV_NET).unwrap();
        let e = group(&graph, "dense.w").unwrap_err();
        assert_eq!(
            e.message,
            "the channels of `dense.w` reach the output `logits`"
        );
    }

    #[test]
    fn a_normalization_over_the_channels_stops_the_pruning() {
        let graph = parse_graph(
            r#"
graph forward {
  %0 = input "x" : f32[B,8]
  %1 = param "a.w" init=xavier_uniform : f32[8,6]
  %2 = matmul %0, %1 : f32[B,6]
  %3 = reduce_mean %2 axes=[1] keepdim=true : f32[B,1]
  %4 = sub %2, %3 : f32[B,6]
  %5 = param "b.w" init=xavier_uniform : f32[6,2]
  %6 = matmul %4, %5 : f32[B,2]
  output y = %6
}
"#,
        )
        .unwrap();
        let e = group(&graph, "a.w").unwrap_err();
        assert_eq!(e.message, "the channels of `a.w` are reduced over");
        assert!(group(&graph, "nope").is_err());
    }

    #[test]
    fn regroup_follows_flattens_and_refuses_splits() {
        let c = |n| Dim::Const(n);
        let b = Dim::Sym("B".into());
        let lane = Lane::plain(1);
        // [B, 64, 5, 5] -> [B, 1600]: channel blocks of 25.
        let flat = regroup(
            &[b.clone(), c(64), c(5), c(5)],
            &[b.clone(), c(1600)],
            lane,
            64,
        );
        assert_eq!(
            flat,
            Some(Lane {
                axis: 1,
                outer: 1,
                inner: 25
            })
        );
        // [B, 64] -> [B, 8, 8] splits each channel index over two axes.
        assert_eq!(
            regroup(&[b.clone(), c(64)], &[b, c(8), c(8)], lane, 64),
            None
        );
    }

    #[test]
    fn filter_norms_pick_the_channels_kept() {
        let w = weights().remove(0).1;
        let norms = l1_by_channel(&w, &Lane::plain(0), 4).unwrap();
        let by_hand: Vec<f64> = w
            .data
            .chunks(27)
            .map(|f| f.iter().map(|v| v.abs()).sum())
            .collect();
        assert_eq!(norms, by_hand);
        assert_eq!(most_salient(&[0.5, 3.0, 1.0, 3.0], 2), vec![1, 3]);
        assert_eq!(most_salient(&[1.0, 1.0, 1.0], 2), vec![0, 1]);
        // A flattened channel's block of rows counts as one channel.
        let rows = Tensor::from_vec(DType::F32, &[4, 1], vec![1.0, -2.0, 3.0, 0.5]).unwrap();
        let lane = Lane {
            axis: 0,
            outer: 1,
            inner: 2,
        };
        assert_eq!(l1_by_channel(&rows, &lane, 2).unwrap(), vec![3.0, 3.5]);
    }

    #[test]
    fn a_running_statistic_is_pruned_with_the_batch_it_is_updated_from() {
        let mut graph = parse_graph(
            r#"
graph objective {
  %0 = input "x" : f32[B,8]
  %1 = param "a.w" init=xavier_uniform : f32[8,6]
  %2 = matmul %0, %1 : f32[B,6]
  %3 = reduce_mean %2 axes=[0] keepdim=false : f32[6]
  %4 = state "bn.running_mean" init=zeros : f32[6]
  %5 = const 0.9 : f32[]
  %6 = mul %4, %5 : f32[6]
  %7 = add %6, %3 : f32[6]
  %8 = param "b.w" init=xavier_uniform : f32[6,2]
  %9 = matmul %2, %8 : f32[B,2]
  output y = %9
  update "bn.running_mean" = %7
}
"#,
        )
        .unwrap();
        let g = shrink(&mut graph, "a.w", 4).unwrap();
        let names: Vec<&str> = g.leaves.iter().map(|(n, _)| n.as_str()).collect();
        assert_eq!(names, vec!["a.w", "bn.running_mean", "b.w"]);
        let state = graph.find_leaf("bn.running_mean").unwrap();
        assert_eq!(graph.ty(state).to_string(), "f32[4]");
    }

    #[test]
    fn shrinking_to_nothing_or_more_is_refused() {
        let mut graph = parse_graph(CONV_NET).unwrap();
        assert!(shrink(&mut graph, "conv.w", 0).is_err());
        assert!(shrink(&mut graph, "conv.w", 5).is_err());
    }
}
