//! What each step of a compiled schedule does: its label, the IR nodes it
//! covers, its arithmetic and its memory traffic. `Program::kernels`
//! returns it for a compiled program (profiles, tests); [`kernels`] plans
//! a graph without generating code (`nnc compile --emit kernels`).

use super::group::GroupConfig;
use crate::plan::scan::ScanPlan;
use crate::plan::{self, Base, Body, Plan, StateLayout, Step, View};
use crate::CodegenError;
use nnc_ir::{Graph, NodeId, Op, ReduceOp};
use std::collections::HashMap;
use std::fmt;

/// One step of the schedule: a kernel, or a copy into the model state.
#[derive(Debug, Clone, PartialEq)]
pub struct KernelInfo {
    /// The op(s) and result shape, as in profiles: `add,add,sub
    /// [784,256]` (three results of one loop), `fold [64,32,28,28]`,
    /// `unfold+matmul [64,1,32,784]` (staged columns), `matmul+reduce_sum`
    /// (a product summed over its batch), `update [256]`.
    pub label: String,
    /// The IR nodes whose values it computes: the results it stores, then
    /// the inline values it evaluates in registers (a value recomputed by
    /// several kernels is listed by each), then nodes whose work it
    /// absorbs (a summed matmul, staged windows). Empty for updates and
    /// copies. `NodeId`s of the compiled graph: `Graph::topo_order` gives
    /// the `%n` numbering of the textual form.
    pub nodes: Vec<NodeId>,
    /// Floating-point operations per run: one per arithmetic op per
    /// element (an `exp` or a `sqrt` counts one; compares, selects and
    /// casts none), `2·m·n·k` per matrix product, one per element reduced
    /// or folded.
    pub flops: u64,
    /// Bytes read from buffers and the model state: each distinct element
    /// of every view read once (a broadcast operand counts its own size).
    pub bytes_read: u64,
    /// Bytes of results written (a reduction's or fold's zeroing not
    /// counted separately).
    pub bytes_written: u64,
}

impl fmt::Display for KernelInfo {
    /// One line: label, FLOPs, bytes read and written, node count.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{:<48} {:>12} flop {:>12} B read {:>12} B written  {} nodes",
            self.label,
            self.flops,
            self.bytes_read,
            self.bytes_written,
            self.nodes.len()
        )
    }
}

/// Elements of `v` that are distinct in memory (broadcast dims count once).
fn distinct(v: &View) -> u64 {
    v.shape
        .iter()
        .zip(&v.strides)
        .filter(|(_, &s)| s != 0)
        .map(|(&n, _)| n as u64)
        .product::<u64>()
        * u64::from(v.shape.iter().all(|&n| n > 0))
}

fn dims(shape: &[usize]) -> String {
    let d: Vec<String> = shape.iter().map(|d| d.to_string()).collect();
    format!("[{}]", d.join(","))
}

fn numel(shape: &[usize]) -> u64 {
    shape.iter().map(|&n| n as u64).product()
}

/// The kernels `graph` compiles to with its symbolic dims bound to
/// `bindings` (`B = 64`) under the grouping rule `config`, without
/// generating code: what `Program::kernels` would return.
pub fn kernels(
    graph: &Graph,
    bindings: &HashMap<String, usize>,
    config: &GroupConfig,
) -> Result<Vec<KernelInfo>, CodegenError> {
    let layout = StateLayout::of(&[graph])?;
    let plan = plan::plan_with(graph, bindings, &layout, config)?;
    Ok(summarize(&plan, graph))
}

/// Each loop body's kernels, labelled by the loop's step (`k3.k0`).
pub type LoopBodies = Vec<(String, KernelInfo)>;

/// [`kernels`] and the kernels of every loop body ([`loop_bodies`]).
pub fn kernels_and_loop_bodies(
    graph: &Graph,
    bindings: &HashMap<String, usize>,
    config: &GroupConfig,
) -> Result<(Vec<KernelInfo>, LoopBodies), CodegenError> {
    let layout = StateLayout::of(&[graph])?;
    let plan = plan::plan_with(graph, bindings, &layout, config)?;
    Ok((summarize(&plan, graph), loop_bodies(&plan)))
}

/// The summary of every step of `plan`, in schedule order.
pub fn summarize(plan: &Plan, graph: &Graph) -> Vec<KernelInfo> {
    plan.steps
        .iter()
        .map(|step| match step {
            Step::Kernel(k) => kernel(plan, graph, *k),
            Step::Copy { src, dst, .. } => KernelInfo {
                label: format!("copy {}", dims(&dst.shape)),
                nodes: Vec::new(),
                flops: 0,
                bytes_read: 4 * distinct(src),
                bytes_written: 4 * numel(&dst.shape),
            },
            Step::Update { value, .. } => {
                let v = &plan.views[value];
                KernelInfo {
                    label: format!("update {}", dims(&v.shape)),
                    nodes: Vec::new(),
                    flops: 0,
                    bytes_read: 4 * distinct(v),
                    bytes_written: 4 * numel(&v.shape),
                }
            }
        })
        .collect()
}

fn kernel(plan: &Plan, graph: &Graph, k: usize) -> KernelInfo {
    let kernel = &plan.kernels[k];
    let root = kernel.root;
    let view = |n: NodeId| plan.views.get(&n);
    let is_virtual = |v: &View| matches!(v.base, Base::Work(b) if plan.buffers[b].bytes == 0);
    let shape = view(root).map_or_else(Vec::new, |v| v.shape.clone());
    match &kernel.body {
        Body::Map { outputs, expr } => {
            let ops: Vec<&str> = outputs
                .iter()
                .map(|&o| graph.node(o).op.mnemonic())
                .collect();
            KernelInfo {
                label: with_inline(format!("{} {}", ops.join(","), dims(&shape)), expr),
                nodes: outputs.iter().chain(&expr.inlined).copied().collect(),
                flops: expr.ops() as u64 * numel(&expr.shape),
                bytes_read: leaves_bytes(expr),
                bytes_written: 4 * numel(&shape) * outputs.len() as u64,
            }
        }
        Body::Operand(expr) => {
            let op = &graph.node(root).op;
            let space = numel(&expr.shape);
            let per = expr.ops() as u64;
            let flops = match op {
                Op::Reduce { op: r, .. } => {
                    (per + 1) * space
                        + if *r == ReduceOp::Mean {
                            numel(&shape)
                        } else {
                            0
                        }
                }
                Op::Fold { .. } => (per + 1) * space,
                _ => per * numel(&shape),
            };
            KernelInfo {
                label: with_inline(format!("{} {}", op.mnemonic(), dims(&shape)), expr),
                nodes: std::iter::once(root)
                    .chain(expr.inlined.iter().copied())
                    .collect(),
                flops,
                bytes_read: leaves_bytes(expr),
                bytes_written: 4 * numel(&shape),
            }
        }
        Body::Scan(scan) => loop_info(plan, graph, scan, &shape),
        Body::Node => {
            // The matmul this kernel runs, if any: its own, or one summed
            // into its reduction.
            let mut nodes = vec![root];
            let mut parts: Vec<&str> = Vec::new();
            let mut product = matches!(graph.node(root).op, Op::MatMul).then_some(root);
            let mut read: Vec<NodeId> = Vec::new();
            for o in graph.operands(root) {
                if plan.fused.contains(&o) {
                    parts.push(graph.node(o).op.mnemonic());
                    nodes.push(o);
                    product = Some(o);
                    read.extend(graph.operands(o));
                } else {
                    read.push(o);
                }
            }
            parts.push(graph.node(root).op.mnemonic());
            let mut bytes_read = 0;
            let mut bytes_written = view(root)
                .filter(|v| !is_virtual(v))
                .map_or(0, |v| 4 * numel(&v.shape));
            let mut flops = 0;
            if let Some(m) = product {
                if let [a, b] = graph.operands(m)[..] {
                    if let (Some(va), Some(vb)) = (view(a), view(b)) {
                        flops = product_flops(&va.shape, &vb.shape);
                    }
                }
                for slot in 0..3 {
                    let Some(st) = plan.staged.get(&(m, slot)) else {
                        continue;
                    };
                    nodes.push(st.window);
                    if slot == 2 {
                        parts.push("fold");
                        bytes_written += view(st.window).map_or(0, |v| 4 * numel(&v.shape));
                    } else {
                        if !parts.contains(&"unfold") {
                            parts.insert(0, "unfold");
                        }
                        let image = graph.operands(st.window)[0];
                        bytes_read += view(image).map_or(0, |v| 4 * distinct(v));
                    }
                }
            } else if let Op::ScatterAdd { .. } = graph.node(root).op {
                flops = view(read[0]).map_or(0, |v| numel(&v.shape));
            } else if let Op::ArgMax { .. } = graph.node(root).op {
                flops = view(read[0]).map_or(0, |v| numel(&v.shape));
            }
            for n in read {
                if let Some(v) = view(n).filter(|v| !is_virtual(v)) {
                    bytes_read += 4 * distinct(v);
                }
            }
            KernelInfo {
                label: format!("{} {}", parts.join("+"), dims(&shape)),
                nodes,
                flops,
                bytes_read,
                bytes_written,
            }
        }
    }
}

/// A loop is one step of the schedule: the body's kernels times the trip
/// count, plus the copies of consts, carries and slices in and out.
fn loop_info(plan: &Plan, graph: &Graph, scan: &ScanPlan, shape: &[usize]) -> KernelInfo {
    let body = summarize(&scan.plan, &scan.body.graph);
    let trip = scan.trip as u64;
    let per_trip = |f: fn(&KernelInfo) -> u64| trip * body.iter().map(f).sum::<u64>();
    let root = scan.members.first().map(|&(_, n)| n);
    let operands = root.map_or_else(Vec::new, |r| graph.operands(r));
    let read: u64 = operands
        .iter()
        .filter_map(|o| plan.views.get(o))
        .map(|v| 4 * distinct(v))
        .sum();
    let written: u64 = scan
        .members
        .iter()
        .filter_map(|(_, n)| plan.views.get(n))
        .map(|v| 4 * numel(&v.shape))
        .sum();
    KernelInfo {
        label: format!(
            "scan x{} ({} kernels per trip{}) {}",
            scan.trip,
            body.len(),
            if scan.body.reverse { ", reverse" } else { "" },
            dims(shape)
        ),
        nodes: scan.members.iter().map(|&(_, n)| n).collect(),
        flops: per_trip(|k| k.flops),
        bytes_read: per_trip(|k| k.bytes_read) + read,
        bytes_written: per_trip(|k| k.bytes_written) + written,
    }
}

/// The kernels of each loop's body, labelled by the loop's step (`k3.k0`,
/// a nested body's `k3.k1.k0`), each body after its loop's: what a listing
/// of a program's kernels may show under a loop's line.
pub fn loop_bodies(plan: &Plan) -> LoopBodies {
    let mut out = Vec::new();
    bodies_into(plan, "", &mut out);
    out
}

fn bodies_into(plan: &Plan, prefix: &str, out: &mut Vec<(String, KernelInfo)>) {
    for (i, step) in plan.steps.iter().enumerate() {
        let Step::Kernel(k) = step else { continue };
        let Body::Scan(scan) = &plan.kernels[*k].body else {
            continue;
        };
        let here = format!("{prefix}k{i}.");
        for (j, info) in summarize(&scan.plan, &scan.body.graph)
            .into_iter()
            .enumerate()
        {
            out.push((format!("{here}k{j}"), info));
        }
        bodies_into(&scan.plan, &here, out);
    }
}

/// Appends `+n inline` to a label when the loop evaluates inline values.
fn with_inline(label: String, expr: &super::expr::Expr) -> String {
    match expr.inlined.len() {
        0 => label,
        n => format!("{label} +{n} inline"),
    }
}

/// Bytes an expression's leaves read (random numbers read only their key).
fn leaves_bytes(expr: &super::expr::Expr) -> u64 {
    expr.leaves
        .iter()
        .map(|l| match l.source {
            super::expr::Source::Buffer(_) => 4 * distinct(&l.view),
            super::expr::Source::Random { .. } => 4,
        })
        .sum()
}

/// `2·m·k·n` per product of `a @ b`, times the broadcast batch.
fn product_flops(a: &[usize], b: &[usize]) -> u64 {
    let (ra, rb) = (a.len(), b.len());
    if ra < 2 || rb < 2 {
        return 0;
    }
    let r = ra.max(rb);
    let dim = |s: &[usize], i: usize| (i + s.len()).checked_sub(r).map_or(1, |j| s[j]);
    let batch: u64 = (0..r - 2)
        .map(|i| dim(a, i).max(dim(b, i)) as u64)
        .product();
    2 * batch * (a[ra - 2] * a[ra - 1] * b[rb - 1]) as u64
}
