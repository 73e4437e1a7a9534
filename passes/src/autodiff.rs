//! Reverse-mode automatic differentiation as a graph-to-graph pass.
//!
//! Walking the graph in reverse topological order, each node's adjoint is
//! pushed to its operands by the op's vector-Jacobian product (`vjp`). The
//! backward nodes are appended to the same graph, so the forward values they
//! need are shared rather than recomputed, and the optimizer later sees
//! forward and backward as one program.

use crate::PassError;
use nnc_ir::{
    BinaryOp, Dim, Graph, NodeId, Op, OpClass, ReduceOp, ScanBody, ScanResult, TensorType, Ties,
    UnaryOp, GRADIENT_PREFIX,
};
use std::collections::{HashMap, HashSet};
use std::sync::Arc;

/// Appends to `graph` the gradient of the scalar `loss` with respect to each
/// node of `wrt` and returns the gradient nodes, in order. A node the loss
/// does not depend on gets a zero gradient.
pub fn gradients(
    graph: &mut Graph,
    loss: NodeId,
    wrt: &[NodeId],
) -> Result<Vec<NodeId>, PassError> {
    let loss_ty = graph.ty(loss).clone();
    if !loss_ty.shape.is_empty() || !loss_ty.dtype.is_float() {
        return Err(PassError::new(format!(
            "the loss must be a float scalar, found {loss_ty}"
        )));
    }
    let seed = graph.scalar(1.0, loss_ty.dtype);
    backprop(graph, &[(loss, seed)], wrt)
}

/// Appends to `graph` the vector-Jacobian product of the nodes in `seeds`
/// (each with its cotangent, a node of its type) with respect to each node
/// of `wrt`: the gradient of `sum(node * cotangent)` over the seeds. A node
/// the seeds do not depend on gets a zero gradient.
fn backprop(
    graph: &mut Graph,
    seeds: &[(NodeId, NodeId)],
    wrt: &[NodeId],
) -> Result<Vec<NodeId>, PassError> {
    let order = graph.topo_order();
    let position: HashMap<NodeId, usize> = order.iter().enumerate().map(|(i, &n)| (n, i)).collect();
    let needs_grad = depends_on(graph, &order, wrt);
    let saved_span = graph.current_span;

    let mut adjoint: HashMap<NodeId, NodeId> = HashMap::new();
    for &(node, cotangent) in seeds {
        let total = match adjoint.get(&node) {
            Some(&prev) => graph.add_(prev, cotangent)?,
            None => cotangent,
        };
        adjoint.insert(node, total);
    }

    for &node in order.iter().rev() {
        if !needs_grad.contains(&node) {
            continue;
        }
        let operands = graph.operands(node);
        if !operands.iter().any(|o| needs_grad.contains(o)) {
            continue;
        }
        let contributions = if let Op::Scan { body, .. } = &graph.node(node).op {
            // All results of one loop get one backward loop, built at the
            // loop's first node in topological order: by then every other
            // result node and all their readers have passed on their
            // adjoints.
            let body = body.clone();
            let results = loop_results(graph, node, &body, &operands);
            if results
                .iter()
                .flatten()
                .any(|r| position.get(r) < position.get(&node))
            {
                continue;
            }
            let cotangents: Vec<Option<NodeId>> = results
                .iter()
                .map(|r| r.and_then(|r| adjoint.get(&r).copied()))
                .collect();
            if cotangents.iter().all(Option::is_none) {
                continue;
            }
            let wants: Vec<bool> = operands.iter().map(|o| needs_grad.contains(o)).collect();
            graph.current_span = graph.node(node).span;
            scan_vjp(graph, &body, &operands, &results, &cotangents, &wants)?
        } else {
            let Some(&g) = adjoint.get(&node) else {
                continue;
            };
            graph.current_span = graph.node(node).span;
            vjp(graph, node, &operands, g)?
        };
        for (operand, grad) in operands.iter().zip(contributions) {
            let Some(grad) = grad else { continue };
            if !needs_grad.contains(operand) {
                continue;
            }
            let total = match adjoint.get(operand) {
                Some(&prev) => add_gradients(graph, prev, grad)?,
                None => grad,
            };
            adjoint.insert(*operand, total);
        }
    }
    graph.current_span = saved_span;

    wrt.iter()
        .map(|&w| match adjoint.get(&w) {
            Some(&g) => Ok(g),
            None => {
                let ty = graph.ty(w).clone();
                Ok(graph.splat(0.0, ty))
            }
        })
        .collect()
}

/// The node of each result of the loop `node` belongs to (same body, same
/// operands), by result index; `None` for results nobody built.
fn loop_results(
    graph: &Graph,
    node: NodeId,
    body: &Arc<ScanBody>,
    operands: &[NodeId],
) -> Vec<Option<NodeId>> {
    let mut results = vec![None; body.results()];
    let candidates = match operands.first() {
        Some(&o) => graph.users(o),
        None => vec![node],
    };
    for n in candidates {
        if let Op::Scan { body: b, result } = &graph.node(n).op {
            if **b == **body && graph.operands(n) == operands && results[*result].is_none() {
                results[*result] = Some(n);
            }
        }
    }
    results
}

/// The gradient of a loop: a loop over the body's own gradient, run in the
/// other direction. Step `t` of the backward loop recomputes the forward
/// step from the carries it started with (a result of the forward loop,
/// stacked, so nothing is recomputed across steps) and pushes the
/// cotangents of its outputs (the carries' from step `t + 1`, the `ys`'
/// from outside) back to its inputs: the carries' cotangent is the
/// backward loop's carry, the consts' gradients are summed in carries of
/// their own, and the sequences' gradients are its stacked outputs.
fn scan_vjp(
    graph: &mut Graph,
    body: &Arc<ScanBody>,
    x: &[NodeId],
    results: &[Option<NodeId>],
    cotangents: &[Option<NodeId>],
    wants: &[bool],
) -> Result<Vec<Option<NodeId>>, PassError> {
    let (c, k) = (body.consts, body.carries);
    let first_x = c + k;
    for &carry in &x[c..first_x] {
        if !graph.ty(carry).dtype.is_float() {
            return Err(PassError::new(format!(
                "cannot differentiate a scan with a {} carry",
                graph.ty(carry)
            )));
        }
    }
    let float = |i: usize| wants[i] && graph.ty(x[i]).dtype.is_float();
    let want_consts: Vec<usize> = (0..c).filter(|&i| float(i)).collect();
    let want_xs: Vec<usize> = (first_x..x.len()).filter(|&i| float(i)).collect();
    let cotangent = |r: ScanResult| cotangents[body.result_index(r)];
    let carries_in: Vec<usize> = (0..k)
        .filter(|&j| cotangent(ScanResult::CarriesIn(j)).is_some())
        .collect();

    // The backward body: the forward step, its inputs kept, plus the
    // cotangents and accumulators as new inputs.
    let fwd = &body.graph;
    let mut b = fwd.clone();
    b.name = format!("{}.grad", fwd.name);
    b.outputs.clear();
    let mut names: HashSet<String> =
        b.g.node_indices()
            .filter_map(|n| match &b.node(n).op {
                Op::Input { name } => Some(name.clone()),
                _ => None,
            })
            .collect();
    let mut input = |b: &mut Graph, base: String, ty: TensorType| {
        let mut name = base.clone();
        let mut i = 1;
        while !names.insert(name.clone()) {
            name = format!("{base}.{i}");
            i += 1;
        }
        b.input(&name, ty)
    };
    let input_name = |id: NodeId| match &fwd.node(id).op {
        Op::Input { name } => name.clone(),
        _ => String::new(),
    };
    let carry_in = &body.inputs[c..first_x];
    let x_in = &body.inputs[first_x..];
    let d_carry: Vec<NodeId> = carry_in
        .iter()
        .map(|&n| input(&mut b, format!("d.{}", input_name(n)), fwd.ty(n).clone()))
        .collect();
    let d_ys: Vec<NodeId> = fwd.outputs[k..]
        .iter()
        .map(|o| input(&mut b, format!("d.{}", o.name), fwd.ty(o.node).clone()))
        .collect();
    let d_carries_in: Vec<NodeId> = carries_in
        .iter()
        .map(|&j| {
            let n = carry_in[j];
            input(&mut b, format!("d.in.{}", input_name(n)), fwd.ty(n).clone())
        })
        .collect();

    let seeds: Vec<(NodeId, NodeId)> = fwd
        .outputs
        .iter()
        .zip(d_carry.iter().chain(&d_ys))
        .map(|(o, &d)| (o.node, d))
        .collect();
    let mut wrt: Vec<NodeId> = carry_in.to_vec();
    wrt.extend(want_consts.iter().map(|&i| body.inputs[i]));
    wrt.extend(want_xs.iter().map(|&i| body.inputs[i]));
    let grads = backprop(&mut b, &seeds, &wrt)?;
    let (g_carry, rest) = grads.split_at(k);
    let (g_consts, g_xs) = rest.split_at(want_consts.len());

    // A const's gradient is summed over the steps. Its terms that are a
    // weight gradient `a^T @ g` of per-step `a` and `g` leave the loop:
    // both are stacked, and one product after the loop sums all steps
    // (an LSTM's `h^T @ dgates` for `W_hh`: one large product instead of
    // a small product and a `[H, 4H]` accumulation per step). The other
    // terms are summed in a carry of the backward loop.
    let mut per_step_inputs: Vec<NodeId> = d_carry.clone();
    per_step_inputs.extend(&body.inputs[c..]);
    per_step_inputs.extend(&d_ys);
    per_step_inputs.extend(&d_carries_in);
    let per_step = depends_on(&b, &b.topo_order(), &per_step_inputs);
    let mut accumulated: Vec<(usize, NodeId, NodeId)> = Vec::new();
    let mut hoisted: Vec<(usize, NodeId, NodeId)> = Vec::new();
    for (p, &g) in g_consts.iter().enumerate() {
        let i = want_consts[p];
        let mut kept = Vec::new();
        for term in sum_terms(&b, fwd, g) {
            match weight_gradient(&b, term, &per_step, body.axis, graph.ty(x[i]).rank()) {
                Some((a, g)) => hoisted.push((p, a, g)),
                None => kept.push(term),
            }
        }
        if kept.is_empty() {
            continue;
        }
        let n = body.inputs[i];
        let acc = input(&mut b, format!("acc.{}", input_name(n)), fwd.ty(n).clone());
        let mut sum = acc;
        for term in kept {
            sum = b.add_(sum, term)?;
        }
        accumulated.push((p, acc, sum));
    }
    for (j, &g) in g_carry.iter().enumerate() {
        let mut d = g;
        if let Some(p) = carries_in.iter().position(|&i| i == j) {
            d = b.add_(d, d_carries_in[p])?;
        }
        b.set_output(format!("d.carry.{j}"), d);
    }
    for &(p, _, sum) in &accumulated {
        b.set_output(format!("d.const.{p}"), sum);
    }
    for (p, &g) in g_xs.iter().enumerate() {
        b.set_output(format!("d.x.{p}"), g);
    }
    let factors: Vec<NodeId> = hoisted.iter().flat_map(|&(_, a, g)| [a, g]).collect();
    for (f, &n) in factors.iter().enumerate() {
        b.set_output(format!("hoist.{f}"), n);
    }
    // The forward values the gradient reads become inputs of the backward
    // body, stacked by the forward loop as extra outputs.
    let saved = residuals(&b, fwd, &body.inputs[c..]);
    let mut saved_inputs = Vec::with_capacity(saved.len());
    for &r in &saved {
        let name = fwd
            .node(r)
            .name
            .clone()
            .unwrap_or_else(|| format!("{}", r.index()));
        let s = input(&mut b, format!("saved.{name}"), fwd.ty(r).clone());
        b.replace_uses(r, s);
        saved_inputs.push(s);
    }
    let mut inputs: Vec<NodeId> = body.inputs[..c].to_vec();
    inputs.extend(&d_carry);
    inputs.extend(accumulated.iter().map(|a| a.1));
    inputs.extend(carry_in);
    inputs.extend(x_in);
    inputs.extend(&d_ys);
    inputs.extend(&d_carries_in);
    inputs.extend(&saved_inputs);
    let carries = k + accumulated.len();
    let stacked = stacked_factors(
        &mut b,
        &inputs[c + carries..],
        c + carries,
        carries,
        factors.len(),
    );
    b.prune_keeping(&inputs);
    let backward = ScanBody::new(b, inputs, c, carries, body.axis, !body.reverse)
        .map_err(|e| PassError::new(format!("internal error: the gradient of a scan: {e}")))?;
    let (forward, saved_ys) = save_residuals(graph, body, results, &saved)?;

    // The backward loop's operands.
    let mut operands: Vec<NodeId> = x[..c].to_vec();
    for j in 0..k {
        operands.push(match cotangent(ScanResult::FinalCarry(j)) {
            Some(d) => d,
            None => {
                let ty = graph.ty(x[c + j]).clone();
                graph.splat(0.0, ty)
            }
        });
    }
    for &(p, _, _) in &accumulated {
        let ty = graph.ty(x[want_consts[p]]).clone();
        operands.push(graph.splat(0.0, ty));
    }
    let result_of = |graph: &mut Graph, r: ScanResult| match results[body.result_index(r)] {
        Some(n) => Ok(n),
        None => {
            let op = Op::Scan {
                body: forward.clone(),
                result: forward.result_index(r),
            };
            graph.add(op, x, None)
        }
    };
    for j in 0..k {
        operands.push(result_of(graph, ScanResult::CarriesIn(j))?);
    }
    operands.extend(&x[first_x..]);
    for y in 0..body.ys() {
        let r = ScanResult::Ys(y);
        operands.push(match cotangent(r) {
            Some(d) => d,
            None => {
                let op = Op::Scan {
                    body: body.clone(),
                    result: body.result_index(r),
                };
                let ty = nnc_ir::infer::infer(&op, &types(graph, x), None)?;
                graph.splat(0.0, ty)
            }
        });
    }
    for &j in &carries_in {
        operands.extend(cotangent(ScanResult::CarriesIn(j)));
    }
    for &y in &saved_ys {
        let op = Op::Scan {
            body: forward.clone(),
            result: forward.result_index(ScanResult::Ys(y)),
        };
        operands.push(graph.add(op, x, None)?);
    }

    let mut out: Vec<Option<NodeId>> = vec![None; x.len()];
    let result = |graph: &mut Graph, r: ScanResult| {
        let op = Op::Scan {
            body: backward.clone(),
            result: backward.result_index(r),
        };
        graph.add(op, &operands, None)
    };
    for j in 0..k {
        out[c + j] = Some(result(graph, ScanResult::FinalCarry(j))?);
    }
    for (q, &(p, _, _)) in accumulated.iter().enumerate() {
        out[want_consts[p]] = Some(result(graph, ScanResult::FinalCarry(k + q))?);
    }
    for (p, &i) in want_xs.iter().enumerate() {
        out[i] = Some(result(graph, ScanResult::Ys(p))?);
    }
    let stacked_factor = |graph: &mut Graph, f: usize| match stacked[f] {
        Stacked::Operand(pos) => Ok(operands[pos]),
        Stacked::Ys(y) => result(graph, ScanResult::Ys(y)),
    };
    for (h, &(p, _, _)) in hoisted.iter().enumerate() {
        let (a_s, g_s) = (
            stacked_factor(graph, 2 * h)?,
            stacked_factor(graph, 2 * h + 1)?,
        );
        let at = transpose_last2(graph, a_s)?;
        let product = graph.matmul(at, g_s)?;
        let i = want_consts[p];
        let term = unbroadcast(graph, product, x[i])?;
        out[i] = Some(match out[i] {
            Some(prev) => graph.add_(prev, term)?,
            None => term,
        });
    }
    Ok(out)
}

/// Where the backward loop's caller finds a hoisted factor stacked over
/// the steps.
#[derive(Debug, Clone, Copy)]
enum Stacked {
    /// A sequence the backward loop already reads: its operand at this
    /// position.
    Operand(usize),
    /// One of the backward loop's stacked outputs.
    Ys(usize),
}

/// Resolves the backward body's outputs `hoist.0..hoist.{count}` (its
/// first `carries` outputs are its carries; the sequence inputs `xs` are
/// its inputs from operand position `first` on): a factor that is a
/// sequence input or another stacked output is read from there and its
/// output dropped; the others stay stacked outputs.
fn stacked_factors(
    b: &mut Graph,
    xs: &[NodeId],
    first: usize,
    carries: usize,
    count: usize,
) -> Vec<Stacked> {
    let mut names = Vec::with_capacity(count);
    for f in 0..count {
        let name = format!("hoist.{f}");
        let Some(at) = b.outputs.iter().position(|o| o.name == name) else {
            continue;
        };
        let node = b.outputs[at].node;
        if let Some(pos) = xs.iter().position(|&i| i == node) {
            b.outputs.remove(at);
            names.push(Err(first + pos));
        } else if let Some(o) = b.outputs[carries..at].iter().find(|o| o.node == node) {
            let same = o.name.clone();
            b.outputs.remove(at);
            names.push(Ok(same));
        } else {
            names.push(Ok(name));
        }
    }
    names
        .into_iter()
        .map(|n| match n {
            Err(pos) => Stacked::Operand(pos),
            Ok(name) => {
                let at = b
                    .outputs
                    .iter()
                    .position(|o| o.name == name)
                    .unwrap_or(carries);
                Stacked::Ys(at - carries)
            }
        })
        .collect()
}

/// The terms of a gradient summed by the gradient graph (`add` nodes the
/// gradient built, not the forward step's own).
fn sum_terms(b: &Graph, fwd: &Graph, g: NodeId) -> Vec<NodeId> {
    let mut terms = Vec::new();
    let mut stack = vec![g];
    while let Some(n) = stack.pop() {
        if !fwd.contains(n) && matches!(b.node(n).op, Op::Binary(BinaryOp::Add)) {
            let ops = b.operands(n);
            if ops.iter().all(|&o| b.ty(o) == b.ty(n)) {
                stack.extend(ops.into_iter().rev());
                continue;
            }
        }
        terms.push(n);
    }
    terms
}

/// `(a, g)` when `term` is `a^T @ g` of two per-step matrices, a rank-2
/// const's weight gradient, in a loop over axis 0 or 1 (whose stacked `a`
/// and `g` are `[T, B, ·]` or `[B, T, ·]`: a batched product summed over
/// its batch then sums every step).
fn weight_gradient(
    b: &Graph,
    term: NodeId,
    per_step: &HashSet<NodeId>,
    axis: usize,
    rank: usize,
) -> Option<(NodeId, NodeId)> {
    if axis > 1 || rank != 2 || !matches!(b.node(term).op, Op::MatMul) {
        return None;
    }
    let [t, g] = b.operands(term)[..] else {
        return None;
    };
    let Op::Transpose { perm } = &b.node(t).op else {
        return None;
    };
    let a = *b.operands(t).first()?;
    let matrices = perm[..] == [1, 0] && b.ty(a).rank() == 2 && b.ty(g).rank() == 2;
    (matrices && per_step.contains(&a) && per_step.contains(&g)).then_some((a, g))
}

/// The values of the forward body `fwd` that its gradient graph `b` (built
/// on a copy of `fwd`, so forward nodes keep their ids) reads and that
/// change per step (depend on one of `per_step_inputs`), in topological
/// order: what the backward loop reads from the forward loop instead of
/// recomputing it. An LSTM's are its gate activations and `tanh(c)`: saving
/// them costs five `[B, H]` slices per step, recomputing them the step's
/// product and every transcendental function again (half the backward
/// loop's time). Views (reshape, transpose, slice, broadcast) are
/// recomputed from what they read, and inputs are already at hand.
fn residuals(b: &Graph, fwd: &Graph, per_step_inputs: &[NodeId]) -> Vec<NodeId> {
    let order = fwd.topo_order();
    let per_step = depends_on(fwd, &order, per_step_inputs);
    let mut live = HashSet::new();
    let mut stack: Vec<NodeId> = b.outputs.iter().map(|o| o.node).collect();
    while let Some(n) = stack.pop() {
        if live.insert(n) {
            stack.extend(b.operands(n));
        }
    }
    let mut saved = HashSet::new();
    let mut needed: Vec<NodeId> = live
        .iter()
        .filter(|&&n| !fwd.contains(n))
        .flat_map(|&n| b.operands(n))
        .collect();
    let mut seen = HashSet::new();
    while let Some(n) = needed.pop() {
        if !fwd.contains(n) || !per_step.contains(&n) || !seen.insert(n) {
            continue;
        }
        match fwd.node(n).op.class() {
            OpClass::Leaf => {}
            OpClass::View => needed.extend(fwd.operands(n)),
            _ => {
                saved.insert(n);
            }
        }
    }
    order.into_iter().filter(|n| saved.contains(n)).collect()
}

/// The forward loop with `saved` (values of its body) as extra stacked
/// outputs, unless it already outputs them: the loop's existing result
/// nodes (`results`, by result index of `body`) are rewritten in place to
/// the same results of the new body. Returns the new body and the `ys`
/// index of each saved value.
fn save_residuals(
    graph: &mut Graph,
    body: &Arc<ScanBody>,
    results: &[Option<NodeId>],
    saved: &[NodeId],
) -> Result<(Arc<ScanBody>, Vec<usize>), PassError> {
    let k = body.carries;
    let mut extended = body.graph.clone();
    let mut ys = Vec::with_capacity(saved.len());
    for (i, &r) in saved.iter().enumerate() {
        let existing = body.graph.outputs[k..].iter().position(|o| o.node == r);
        ys.push(match existing {
            Some(y) => y,
            None => {
                let mut name = format!("saved.{i}");
                while extended.output(&name).is_some() {
                    name.push('_');
                }
                extended.set_output(name, r);
                extended.outputs.len() - 1 - k
            }
        });
    }
    if extended.outputs.len() == body.graph.outputs.len() {
        return Ok((body.clone(), ys));
    }
    let forward = ScanBody::new(
        extended,
        body.inputs.clone(),
        body.consts,
        k,
        body.axis,
        body.reverse,
    )
    .map_err(|e| PassError::new(format!("internal error: a loop's saved values: {e}")))?;
    for (i, &n) in results.iter().enumerate() {
        let (Some(n), Some(r)) = (n, body.result(i)) else {
            continue;
        };
        graph.node_mut(n).op = Op::Scan {
            body: forward.clone(),
            result: forward.result_index(r),
        };
    }
    Ok((forward, ys))
}

fn types<'g>(graph: &'g Graph, nodes: &[NodeId]) -> Vec<&'g TensorType> {
    nodes.iter().map(|&n| graph.ty(n)).collect()
}

/// Nodes whose value depends on one of `wrt` (including `wrt` itself).
fn depends_on(graph: &Graph, order: &[NodeId], wrt: &[NodeId]) -> HashSet<NodeId> {
    let mut set: HashSet<NodeId> = wrt.iter().copied().collect();
    for &n in order {
        if graph.operands(n).iter().any(|o| set.contains(o)) {
            set.insert(n);
        }
    }
    set
}

/// The gradient contribution of `node`'s adjoint `g` to each operand, or
/// `None` where the operand is not differentiable (indices, conditions).
fn vjp(
    graph: &mut Graph,
    node: NodeId,
    x: &[NodeId],
    g: NodeId,
) -> Result<Vec<Option<NodeId>>, PassError> {
    let op = graph.node(node).op.clone();
    let y = node;
    let out = match op {
        Op::Input { .. } | Op::Param { .. } | Op::State { .. } | Op::Const(_) | Op::Iota { .. } => {
            vec![]
        }
        Op::Unary(u) => {
            let gx = match u {
                // Piecewise constant: zero almost everywhere, as
                // `torch.round`'s gradient. Quantization-aware training
                // passes the gradient straight through in the prelude.
                UnaryOp::Round => return Ok(vec![None]),
                // What `detach` is for.
                UnaryOp::Detach => return Ok(vec![None]),
                UnaryOp::Neg => graph.neg(g)?,
                UnaryOp::Exp => graph.mul(g, y)?,
                UnaryOp::Log => graph.div(g, x[0])?,
                UnaryOp::Sqrt => {
                    let half = graph.scalar_like(0.5, g);
                    let t = graph.div(g, y)?;
                    graph.mul(t, half)?
                }
                UnaryOp::Tanh => {
                    let one = graph.scalar_like(1.0, g);
                    let yy = graph.mul(y, y)?;
                    let d = graph.sub(one, yy)?;
                    graph.mul(g, d)?
                }
                UnaryOp::Sigmoid => {
                    let one = graph.scalar_like(1.0, g);
                    let d = graph.sub(one, y)?;
                    let d = graph.mul(y, d)?;
                    graph.mul(g, d)?
                }
                UnaryOp::Abs => {
                    let zero = graph.scalar_like(0.0, x[0]);
                    let pos = graph.binary(BinaryOp::Gt, x[0], zero)?;
                    let neg_mask = graph.binary(BinaryOp::Lt, x[0], zero)?;
                    let ng = graph.neg(g)?;
                    let zg = graph.scalar_like(0.0, g);
                    let inner = graph.select(neg_mask, ng, zg)?;
                    graph.select(pos, g, inner)?
                }
            };
            vec![Some(gx)]
        }
        Op::Binary(b) => {
            let (a, bb) = (x[0], x[1]);
            let (ga, gb) = match b {
                BinaryOp::Add => (Some(g), Some(g)),
                BinaryOp::Sub => (Some(g), Some(graph.neg(g)?)),
                BinaryOp::Mul => (Some(graph.mul(g, bb)?), Some(graph.mul(g, a)?)),
                BinaryOp::Div => {
                    let ga = graph.div(g, bb)?;
                    let gy = graph.mul(g, y)?;
                    let q = graph.div(gy, bb)?;
                    (Some(ga), Some(graph.neg(q)?))
                }
                BinaryOp::Pow => {
                    // d/da a^b = b * a^(b-1); d/db a^b = a^b * log(a).
                    let one = graph.scalar_like(1.0, bb);
                    let bm1 = graph.sub(bb, one)?;
                    let p = graph.binary(BinaryOp::Pow, a, bm1)?;
                    let d = graph.mul(bb, p)?;
                    let ga = graph.mul(g, d)?;
                    let la = graph.unary(UnaryOp::Log, a)?;
                    let gy = graph.mul(g, y)?;
                    (Some(ga), Some(graph.mul(gy, la)?))
                }
                // Ties send the gradient to the second operand, so that
                // `max(x, 0)` has PyTorch's relu gradient of 0 at 0.
                BinaryOp::Max | BinaryOp::Min => {
                    let cmp = if b == BinaryOp::Max {
                        BinaryOp::Gt
                    } else {
                        BinaryOp::Lt
                    };
                    let first = graph.binary(cmp, a, bb)?;
                    let zero = graph.scalar_like(0.0, g);
                    (
                        Some(graph.select(first, g, zero)?),
                        Some(graph.select(first, zero, g)?),
                    )
                }
                BinaryOp::Lt
                | BinaryOp::Le
                | BinaryOp::Gt
                | BinaryOp::Ge
                | BinaryOp::Eq
                | BinaryOp::Ne => (None, None),
            };
            vec![
                ga.map(|ga| unbroadcast(graph, ga, a)).transpose()?,
                gb.map(|gb| unbroadcast(graph, gb, bb)).transpose()?,
            ]
        }
        Op::Select => {
            let zero = graph.scalar_like(0.0, g);
            let ga = graph.select(x[0], g, zero)?;
            let gb = graph.select(x[0], zero, g)?;
            vec![
                None,
                Some(unbroadcast(graph, ga, x[1])?),
                Some(unbroadcast(graph, gb, x[2])?),
            ]
        }
        Op::Cast => {
            let from = graph.ty(x[0]).dtype;
            if from.is_float() && graph.ty(y).dtype.is_float() {
                vec![Some(graph.cast(g, from)?)]
            } else {
                vec![None]
            }
        }
        Op::Reduce {
            op,
            axes,
            keepdim,
            ties,
        } => {
            let xt = graph.ty(x[0]).clone();
            let g_keep = if keepdim {
                g
            } else {
                graph.reshape(g, keepdim_shape(&xt.shape, &axes))?
            };
            let gx = match op {
                ReduceOp::Sum => graph.broadcast(g_keep, xt.shape.clone())?,
                ReduceOp::Mean => {
                    // n as the sum of ones (the mean of ones would be 1):
                    // exact for symbolic dims, and constant-folded once
                    // shapes are concrete.
                    let ones = graph.splat(1.0, xt.clone());
                    let n = graph.reduce(ReduceOp::Sum, ones, axes.clone(), true)?;
                    let scaled = graph.div(g_keep, n)?;
                    graph.broadcast(scaled, xt.shape.clone())?
                }
                ReduceOp::Max => {
                    let y_keep = if keepdim {
                        y
                    } else {
                        graph.reshape(y, keepdim_shape(&xt.shape, &axes))?
                    };
                    let hit = graph.binary(BinaryOp::Eq, x[0], y_keep)?;
                    match ties {
                        // Split evenly among tied maxima, like torch.amax.
                        Ties::Split => {
                            let mask = graph.cast(hit, xt.dtype)?;
                            let count = graph.reduce(ReduceOp::Sum, mask, axes.clone(), true)?;
                            let share = graph.div(g_keep, count)?;
                            graph.mul(mask, share)?
                        }
                        Ties::First => first_max_gradient(graph, x[0], hit, g_keep, &axes)?,
                    }
                }
            };
            vec![Some(gx)]
        }
        Op::ArgMax { .. } => vec![None],
        Op::MatMul => {
            let (a, b) = (x[0], x[1]);
            let bt = transpose_last2(graph, b)?;
            let at = transpose_last2(graph, a)?;
            let ga = graph.matmul(g, bt)?;
            let gb = graph.matmul(at, g)?;
            vec![
                Some(unbroadcast(graph, ga, a)?),
                Some(unbroadcast(graph, gb, b)?),
            ]
        }
        Op::Reshape => {
            let shape = graph.ty(x[0]).shape.clone();
            vec![Some(graph.reshape(g, shape)?)]
        }
        Op::Transpose { perm } => {
            let mut inverse = vec![0; perm.len()];
            for (i, &p) in perm.iter().enumerate() {
                inverse[p] = i;
            }
            vec![Some(graph.transpose(g, inverse)?)]
        }
        Op::Broadcast => vec![Some(unbroadcast(graph, g, x[0])?)],
        Op::Slice { axis, start, end } => {
            let xt = graph.ty(x[0]).clone();
            let full = xt.shape[axis].as_const().unwrap_or(end);
            let mut parts = Vec::new();
            if start > 0 {
                parts.push(zeros_along(graph, &xt, axis, start));
            }
            parts.push(g);
            if end < full {
                parts.push(zeros_along(graph, &xt, axis, full - end));
            }
            let gx = if parts.len() == 1 {
                g
            } else {
                graph.concat(&parts, axis)?
            };
            vec![Some(gx)]
        }
        Op::Concat { axis } => {
            let mut start = 0;
            let mut grads = Vec::with_capacity(x.len());
            for &operand in x {
                let size = graph.ty(operand).shape[axis].as_const().unwrap_or(0);
                grads.push(Some(graph.slice(g, axis, start, start + size)?));
                start += size;
            }
            grads
        }
        Op::Gather { axis } => {
            let ty = graph.ty(x[0]).clone();
            vec![Some(graph.scatter_add(g, x[1], axis, ty)?), None]
        }
        Op::ScatterAdd { axis } => vec![Some(graph.gather(g, x[1], axis)?), None],
        // Unfold and fold are each other's adjoints; padding reads a
        // constant, so its gradient is dropped by the fold.
        Op::Unfold { window, .. } => {
            let ty = graph.ty(x[0]).clone();
            vec![Some(graph.fold(g, window, ty)?)]
        }
        Op::Fold { window } => vec![Some(graph.unfold(g, window, 0.0)?)],
        Op::Random { .. } => vec![None],
        // `backprop` differentiates a loop's results together.
        Op::Scan { .. } => {
            return Err(PassError::new(
                "internal error: a scan node's gradient is its loop's (scan_vjp)",
            ))
        }
    };
    Ok(out)
}

/// The gradient `g_keep` (the result's, with the reduced dims kept as 1s)
/// of a max of `x` over `axes`, all of it to the first maximum in
/// row-major order over `axes`, as `nn.MaxPool` routes it by its arg-max
/// indices; `hit` marks the elements equal to the maximum. A NaN counts
/// as the maximum (the max is NaN then, and equals nothing), the first
/// NaN winning, as in PyTorch.
///
/// The first maximum is found as the max of the negated positions of the
/// maxima: a max reduction over an elementwise prologue, like the forward
/// max and the tie count of the split gradient, rather than an `argmax`,
/// which is a scalar loop that must read its operand from memory. The
/// routing select then reads no `x`, only the small position constant.
fn first_max_gradient(
    graph: &mut Graph,
    x: NodeId,
    hit: NodeId,
    g_keep: NodeId,
    axes: &[usize],
) -> Result<NodeId, PassError> {
    let xt = graph.ty(x).clone();
    let mut sorted = axes.to_vec();
    sorted.sort_unstable();
    // -(the row-major position over the reduced axes), with size-1 dims
    // elsewhere: the index along the last axis plus the next one's times
    // the last's size, and so on.
    let mut position: Option<NodeId> = None;
    let mut stride = 1usize;
    for (i, &axis) in sorted.iter().enumerate().rev() {
        let mut shape = vec![Dim::Const(1); xt.rank()];
        shape[axis] = xt.shape[axis].clone();
        let index = graph.iota(axis, xt.with_shape(shape))?;
        let term = if stride == 1 {
            index
        } else {
            let scale = graph.scalar_like(stride as f64, index);
            graph.mul(index, scale)?
        };
        position = Some(match position {
            None => term,
            Some(p) => graph.add_(p, term)?,
        });
        if i > 0 {
            let size = xt.shape[axis].as_const().ok_or_else(|| {
                PassError::new(format!(
                    "reduce_max with ties=first over axes {axes:?} of {xt} needs constant \
                     sizes for every reduced axis but the first"
                ))
            })?;
            stride *= size;
        }
    }
    let Some(position) = position else {
        // Over no axes each element is its own maximum.
        return Ok(graph.broadcast(g_keep, xt.shape.clone())?);
    };
    let neg_position = graph.neg(position)?;
    let neg_inf = graph.scalar_like(f64::NEG_INFINITY, x);
    let candidate = graph.select(hit, neg_position, neg_inf)?;
    let nan = graph.binary(BinaryOp::Ne, x, x)?;
    let candidate = graph.select(nan, neg_position, candidate)?;
    let first = graph.reduce(ReduceOp::Max, candidate, axes.to_vec(), true)?;
    let route = graph.binary(BinaryOp::Eq, neg_position, first)?;
    let zero = graph.scalar_like(0.0, g_keep);
    Ok(graph.select(route, g_keep, zero)?)
}

/// Sums `grad` down to the shape of `like`, undoing numpy broadcasting.
fn unbroadcast(graph: &mut Graph, grad: NodeId, like: NodeId) -> Result<NodeId, PassError> {
    let target = graph.ty(like).shape.clone();
    let shape = graph.ty(grad).shape.clone();
    if shape == target {
        return Ok(grad);
    }
    let extra = shape.len() - target.len();
    let mut g = grad;
    if extra > 0 {
        g = graph.reduce(ReduceOp::Sum, g, (0..extra).collect(), false)?;
    }
    let shape = graph.ty(g).shape.clone();
    let stretched: Vec<usize> = (0..target.len())
        .filter(|&i| target[i].is_one() && !shape[i].is_one())
        .collect();
    if !stretched.is_empty() {
        g = graph.reduce(ReduceOp::Sum, g, stretched, true)?;
    }
    Ok(graph.reshape(g, target)?)
}

fn keepdim_shape(shape: &[Dim], axes: &[usize]) -> Vec<Dim> {
    shape
        .iter()
        .enumerate()
        .map(|(i, d)| {
            if axes.contains(&i) {
                Dim::Const(1)
            } else {
                d.clone()
            }
        })
        .collect()
}

fn transpose_last2(graph: &mut Graph, x: NodeId) -> Result<NodeId, PassError> {
    let rank = graph.ty(x).rank();
    let mut perm: Vec<usize> = (0..rank).collect();
    perm.swap(rank - 2, rank - 1);
    Ok(graph.transpose(x, perm)?)
}

/// `a + b`, except that two gradients of slices of one value (each the
/// slice's gradient padded with zeros by a `concat`, as `slice`'s VJP
/// builds it) whose non-zero parts do not overlap become one `concat`:
/// the four gates of an LSTM, sliced from one product, get one gradient
/// buffer instead of four padded copies and their sums.
fn add_gradients(graph: &mut Graph, a: NodeId, b: NodeId) -> Result<NodeId, PassError> {
    if let Some(merged) = merge_padded(graph, a, b)? {
        return Ok(merged);
    }
    Ok(graph.add_(a, b)?)
}

/// A part of a `concat` along its axis: `(start, end, part)`, `None` for a
/// part of zeros.
type Part = (usize, usize, Option<NodeId>);

/// A `concat`'s axis and parts.
fn padded_parts(graph: &Graph, n: NodeId) -> Option<(usize, Vec<Part>)> {
    let Op::Concat { axis } = graph.node(n).op else {
        return None;
    };
    let mut start = 0;
    let mut parts = Vec::new();
    for p in graph.operands(n) {
        let size = graph.ty(p).shape[axis].as_const()?;
        let zero = matches!(graph.node(p).op, Op::Const(nnc_ir::Literal::Splat(v)) if v == 0.0);
        parts.push((start, start + size, (!zero).then_some(p)));
        start += size;
    }
    Some((axis, parts))
}

fn merge_padded(graph: &mut Graph, a: NodeId, b: NodeId) -> Result<Option<NodeId>, PassError> {
    let (Some((axis, pa)), Some((axis_b, pb))) = (padded_parts(graph, a), padded_parts(graph, b))
    else {
        return Ok(None);
    };
    if axis != axis_b || graph.ty(a) != graph.ty(b) {
        return Ok(None);
    }
    // Every non-zero part of each inside zeros of the other.
    let inside_zeros = |parts: &[Part], s: usize, e: usize| {
        parts
            .iter()
            .filter(|&&(ps, pe, _)| ps < e && s < pe)
            .all(|&(_, _, p)| p.is_none())
    };
    let nonzero = |parts: &[Part]| -> Vec<(usize, usize, NodeId)> {
        parts
            .iter()
            .filter_map(|&(s, e, p)| p.map(|p| (s, e, p)))
            .collect()
    };
    let (na, nb) = (nonzero(&pa), nonzero(&pb));
    if !na.iter().all(|&(s, e, _)| inside_zeros(&pb, s, e))
        || !nb.iter().all(|&(s, e, _)| inside_zeros(&pa, s, e))
    {
        return Ok(None);
    }
    let mut filled: Vec<(usize, usize, NodeId)> = na.into_iter().chain(nb).collect();
    filled.sort_unstable_by_key(|&(s, _, _)| s);
    let ty = graph.ty(a).clone();
    let full = ty.shape[axis].as_const().unwrap_or(0);
    let mut parts = Vec::new();
    let mut at = 0;
    for (s, e, p) in filled {
        if s > at {
            parts.push(zeros_along(graph, &ty, axis, s - at));
        }
        parts.push(p);
        at = e;
    }
    if at < full {
        parts.push(zeros_along(graph, &ty, axis, full - at));
    }
    Ok(Some(if parts.len() == 1 {
        parts[0]
    } else {
        graph.concat(&parts, axis)?
    }))
}

fn zeros_along(graph: &mut Graph, like: &TensorType, axis: usize, size: usize) -> NodeId {
    let mut shape = like.shape.clone();
    shape[axis] = Dim::Const(size);
    graph.splat(0.0, like.with_shape(shape))
}

/// `--emit grad`: the objective with one extra output `grad.<param>` per
/// trainable param.
pub fn differentiate(objective: &Graph, loss: &str) -> Result<Graph, PassError> {
    let mut graph = objective.clone();
    graph.name = "grad".into();
    let loss = graph
        .output(loss)
        .ok_or_else(|| PassError::new(format!("the graph has no output `{loss}`")))?;
    let params: Vec<(NodeId, String)> = graph
        .params()
        .into_iter()
        .map(|(n, name)| (n, name.to_string()))
        .collect();
    let ids: Vec<NodeId> = params.iter().map(|(n, _)| *n).collect();
    let grads = gradients(&mut graph, loss, &ids)?;
    for ((_, name), g) in params.iter().zip(grads) {
        graph.set_output(format!("{GRADIENT_PREFIX}{name}"), g);
    }
    graph.prune();
    Ok(graph)
}
