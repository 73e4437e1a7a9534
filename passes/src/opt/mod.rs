//! The optimizer: equality saturation over a graph (the training step,
//! usually), then extraction of the cheapest equivalent graph.
//!
//! 1. [`lang::lower`] puts every node into an egg e-graph; the
//!    [`analysis`] gives each class its type and constant value.
//! 2. The level's rule sets ([`rules`]) run until saturation or a node,
//!    iteration or time limit ([`OptConfig`]).
//! 3. [`extract`] picks one node per class to minimize the [`cost`] model
//!    over the whole graph, never a cycle.
//! 4. The choice is rebuilt as a `Graph` through the builder (which infers
//!    every type again) and verified.
//!
//! What is preserved: outputs and updates (same names, same order), every
//! input, param and state leaf (the graph's interface, so checkpoints and
//! data feeding see the same names), and node names and spans where the
//! extracted node is an original node. A new node takes the span of an
//! original node of its class, as it computes the same value.

pub mod analysis;
pub mod cost;
pub mod extract;
pub mod lang;
pub mod rules;

use crate::PassError;
use analysis::TensorAnalysis;
use egg::{Id, Language, Runner, StopReason};
use lang::{attrs_of, to_ir_op, TensorLang};
use nnc_ir::{Graph, NodeId, Op, OpKind, ScanBody, Span, Update};
use std::collections::HashMap;
use std::fmt;
use std::str::FromStr;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// How hard to optimize: `-O0`, `-O1`, `-O2`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub enum OptLevel {
    /// No rewrites: the graph as autodiff and the train-step builder made it.
    O0,
    /// Algebraic simplification and constant folding (and, in the code
    /// generator, full kernel fusion).
    O1,
    /// Everything: algebra, layout, the training-step rules and merged
    /// products.
    #[default]
    O2,
}

impl OptLevel {
    pub const ALL: [OptLevel; 3] = [OptLevel::O0, OptLevel::O1, OptLevel::O2];

    /// The rule sets this level runs.
    pub fn rule_sets(self) -> &'static [&'static str] {
        match self {
            OptLevel::O0 => &[],
            OptLevel::O1 => &["algebra"],
            OptLevel::O2 => &["algebra", "layout", "training", "merge"],
        }
    }
}

impl fmt::Display for OptLevel {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            OptLevel::O0 => "-O0",
            OptLevel::O1 => "-O1",
            OptLevel::O2 => "-O2",
        })
    }
}

impl FromStr for OptLevel {
    type Err = String;

    /// `0`, `1`, `2`, optionally written `O2` or `-O2`.
    fn from_str(s: &str) -> Result<OptLevel, String> {
        match s.trim_start_matches('-').trim_start_matches('O') {
            "0" => Ok(OptLevel::O0),
            "1" => Ok(OptLevel::O1),
            "2" => Ok(OptLevel::O2),
            _ => Err(format!("unknown optimization level `{s}` (0, 1 or 2)")),
        }
    }
}

/// Limits on saturation and extraction.
#[derive(Debug, Clone)]
pub struct OptConfig {
    pub level: OptLevel,
    /// Stop growing the e-graph at this many e-nodes.
    pub node_limit: usize,
    /// Stop after this many rounds of rule applications.
    pub iter_limit: usize,
    /// Stop saturating after this long. A safety net: results depend on
    /// where saturation stopped, so the node and iteration limits are what
    /// normally end it (keeping results deterministic).
    pub time_limit: Duration,
    /// Time for extraction's local search, also a safety net.
    pub extract_budget: Duration,
}

impl OptConfig {
    pub fn new(level: OptLevel) -> OptConfig {
        OptConfig {
            level,
            node_limit: 50_000,
            iter_limit: 30,
            time_limit: Duration::from_secs(10),
            extract_budget: Duration::from_secs(10),
        }
    }
}

impl Default for OptConfig {
    fn default() -> OptConfig {
        OptConfig::new(OptLevel::default())
    }
}

/// What the optimizer did.
#[derive(Debug, Clone, Default)]
pub struct Report {
    pub level: OptLevel,
    /// Times each rule changed the e-graph, in rule order (rules that never
    /// fired included), then `algebra/constant-fold`.
    pub fired: Vec<(String, usize)>,
    pub iterations: usize,
    /// Why saturation stopped.
    pub stop_reason: String,
    pub egraph_nodes: usize,
    pub egraph_classes: usize,
    pub nodes_before: usize,
    pub nodes_after: usize,
    pub before: cost::Totals,
    pub after: cost::Totals,
    pub saturation_time: Duration,
    pub extraction_time: Duration,
    pub total_time: Duration,
    /// Candidate graphs extraction costed, and the changes it kept.
    pub candidates: usize,
    pub improvements: usize,
    /// Scan bodies optimized as graphs of their own (their rule counts
    /// are included in `fired`).
    pub loop_bodies: usize,
}

impl fmt::Display for Report {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let ms = |d: Duration| d.as_secs_f64() * 1e3;
        writeln!(f, "optimizer {}:", self.level)?;
        writeln!(
            f,
            "  nodes {} -> {}; cost model: {} -> {}",
            self.nodes_before, self.nodes_after, self.before, self.after
        )?;
        if self.level == OptLevel::O0 {
            return writeln!(f, "  no rewrites at -O0");
        }
        writeln!(
            f,
            "  saturation: {} iterations, stopped: {}; e-graph {} nodes in {} classes; {:.1} ms",
            self.iterations,
            self.stop_reason,
            self.egraph_nodes,
            self.egraph_classes,
            ms(self.saturation_time)
        )?;
        writeln!(
            f,
            "  extraction: {} candidate graphs costed, {} choices improved; {:.1} ms (total {:.1} ms)",
            self.candidates,
            self.improvements,
            ms(self.extraction_time),
            ms(self.total_time)
        )?;
        if self.loop_bodies > 0 {
            writeln!(
                f,
                "  loop bodies: {} optimized as graphs of their own",
                self.loop_bodies
            )?;
        }
        writeln!(f, "  rules fired:")?;
        let fired: Vec<&(String, usize)> = self.fired.iter().filter(|(_, n)| *n > 0).collect();
        if fired.is_empty() {
            writeln!(f, "    none")?;
        }
        let width = fired.iter().map(|(r, _)| r.len()).max().unwrap_or(0);
        for (rule, n) in fired {
            writeln!(f, "    {rule:width$}  {n}")?;
        }
        Ok(())
    }
}

/// Every rule with its set and one-line doc, for documentation and
/// `--explain`.
pub fn rule_docs() -> Result<Vec<(String, &'static str)>, PassError> {
    let rules = rules::all_rules().map_err(PassError::new)?;
    Ok(rules.iter().map(|r| (r.name(), r.doc)).collect())
}

/// Optimizes `graph` at `level` with the default limits.
pub fn optimize(graph: &Graph, level: OptLevel) -> Result<(Graph, Report), PassError> {
    optimize_with(graph, &OptConfig::new(level))
}

/// Optimizes `graph` as `config` says. The input must verify; the result
/// verifies and computes the same outputs and updates (up to the rounding
/// noted on the rules).
pub fn optimize_with(graph: &Graph, config: &OptConfig) -> Result<(Graph, Report), PassError> {
    let started = Instant::now();
    nnc_ir::verify(graph).map_err(|e| PassError::new(format!("optimizer input: {e}")))?;
    let before = cost::graph_cost(graph);
    let mut report = Report {
        level: config.level,
        nodes_before: graph.len(),
        before,
        ..Report::default()
    };
    if config.level == OptLevel::O0 {
        report.nodes_after = graph.len();
        report.after = before;
        report.total_time = started.elapsed();
        return Ok((graph.clone(), report));
    }
    let (bodies_optimized, body_reports) = optimize_bodies(graph, config)?;
    let graph = &bodies_optimized;
    let sets = config.level.rule_sets();
    let rules: Vec<rules::Rule> = rules::all_rules()
        .map_err(PassError::new)?
        .into_iter()
        .filter(|r| sets.contains(&r.set))
        .collect();

    let mut egraph: egg::EGraph<TensorLang, TensorAnalysis> = egg::EGraph::new(TensorAnalysis {
        node_cap: config.node_limit,
        ..TensorAnalysis::default()
    });
    let lowered = lang::lower(graph, &mut egraph, |eg, id| eg[id].data.ty.clone())?;
    egraph.rebuild();
    let rewrites: Vec<&rules::Rw> = rules.iter().map(|r| &r.rewrite).collect();
    let runner = Runner::<TensorLang, TensorAnalysis>::new(TensorAnalysis::default())
        .with_egraph(egraph)
        .with_node_limit(config.node_limit)
        .with_iter_limit(config.iter_limit)
        .with_time_limit(config.time_limit)
        .run(rewrites);
    report.saturation_time = started.elapsed();
    let egraph = runner.egraph;
    if let Some(conflict) = egraph.analysis.conflicts.first() {
        return Err(PassError::new(format!(
            "internal optimizer error: {conflict}"
        )));
    }
    report.iterations = runner.iterations.len();
    report.stop_reason = match &runner.stop_reason {
        // Rules that declined at the cap leave nothing to apply, which egg
        // reports as saturation.
        Some(StopReason::Saturated) if egraph.analysis.capped > 0 => {
            format!("node limit {} (within an iteration)", config.node_limit)
        }
        Some(StopReason::Saturated) => "saturated".into(),
        Some(StopReason::IterationLimit(n)) => format!("iteration limit {n}"),
        Some(StopReason::NodeLimit(n)) => format!("node limit {n}"),
        Some(StopReason::TimeLimit(s)) => format!("time limit {s:.1} s"),
        Some(StopReason::Other(s)) => s.clone(),
        None => "not run".into(),
    };
    report.egraph_nodes = egraph.total_number_of_nodes();
    report.egraph_classes = egraph.number_of_classes();
    let mut counts: HashMap<String, usize> = HashMap::new();
    for it in &runner.iterations {
        for (name, n) in &it.applied {
            *counts.entry(name.to_string()).or_default() += n;
        }
    }
    report.fired = rules
        .iter()
        .map(|r| {
            let name = r.name();
            let n = counts.get(&name).copied().unwrap_or(0);
            (name, n)
        })
        .collect();
    report
        .fired
        .push(("algebra/constant-fold".into(), egraph.analysis.folds));
    report.loop_bodies = body_reports.len();
    for body in &body_reports {
        report.loop_bodies += body.loop_bodies;
        for ((_, n), (_, m)) in report.fired.iter_mut().zip(&body.fired) {
            *n += m;
        }
    }

    // Extraction.
    let extract_start = Instant::now();
    let roots: Vec<Id> = graph
        .outputs
        .iter()
        .map(|o| o.node)
        .chain(graph.updates.iter().map(|u| u.value))
        .map(|n| lowered.class_of[&n])
        .collect();
    let leaves: Vec<Id> = lowered
        .originals
        .iter()
        .filter(|(n, _)| {
            matches!(
                graph.node(*n).op,
                nnc_ir::Op::Input { .. } | nnc_ir::Op::Param { .. } | nnc_ir::Op::State { .. }
            )
        })
        .map(|(n, _)| lowered.class_of[n])
        .collect();
    // Each class's original node: the earliest in topological order.
    let mut hints: HashMap<Id, TensorLang> = HashMap::new();
    for (_, enode) in &lowered.originals {
        let canon = enode.clone().map_children(|c| egraph.find(c));
        let Some(class) = egraph.lookup(canon.clone()) else {
            continue;
        };
        hints.entry(class).or_insert(canon);
    }
    let extraction = extract::extract(&egraph, &roots, &leaves, &hints, config.extract_budget)?;
    report.candidates = extraction.evaluated;
    report.improvements = extraction.improvements;
    let result = rebuild(graph, &egraph, &lowered, &extraction)?;
    report.extraction_time = extract_start.elapsed();
    nnc_ir::verify(&result).map_err(|e| {
        PassError::new(format!(
            "internal optimizer error: the result does not verify: {e}"
        ))
    })?;
    report.after = cost::graph_cost(&result);
    report.nodes_after = result.len();
    report.total_time = started.elapsed();
    Ok((result, report))
}

/// `graph` with each scan body optimized as a graph of its own (once per
/// body, however many nodes read it), and the reports of those runs. The
/// outer e-graph then sees each loop as one node over its operands.
fn optimize_bodies(graph: &Graph, config: &OptConfig) -> Result<(Graph, Vec<Report>), PassError> {
    let mut done: HashMap<*const ScanBody, Arc<ScanBody>> = HashMap::new();
    let mut reports = Vec::new();
    let mut out = graph.clone();
    let scans: Vec<NodeId> = out
        .g
        .node_indices()
        .filter(|&n| matches!(out.node(n).op, Op::Scan { .. }))
        .collect();
    for id in scans {
        let Op::Scan { body, result } = &out.node(id).op else {
            continue;
        };
        let result = *result;
        let key = Arc::as_ptr(body);
        let optimized = match done.get(&key) {
            Some(b) => b.clone(),
            None => {
                let (b, report) = optimize_body(body, config)?;
                reports.push(report);
                done.insert(key, b.clone());
                b
            }
        };
        out.node_mut(id).op = Op::Scan {
            body: optimized,
            result,
        };
    }
    Ok((out, reports))
}

/// One scan body through the optimizer. The optimizer keeps every leaf
/// and the outputs in order, so the inputs are found again by name.
fn optimize_body(
    body: &ScanBody,
    config: &OptConfig,
) -> Result<(Arc<ScanBody>, Report), PassError> {
    let (graph, report) = optimize_with(&body.graph, config)?;
    let inputs = body
        .inputs
        .iter()
        .map(|&i| match &body.graph.node(i).op {
            Op::Input { name } => graph.find_leaf(name).ok_or_else(|| {
                PassError::new(format!(
                    "internal optimizer error: scan body input `{name}` was dropped"
                ))
            }),
            _ => Err(PassError::new(
                "internal optimizer error: a scan body input is not an input",
            )),
        })
        .collect::<Result<Vec<_>, _>>()?;
    let optimized = ScanBody::new(
        graph,
        inputs,
        body.consts,
        body.carries,
        body.axis,
        body.reverse,
    )
    .map_err(|e| PassError::new(format!("internal optimizer error: {e}")))?;
    Ok((optimized, report))
}

/// An order of the extracted nodes (indices into `nodes`, which is
/// topological) that follows the input graph's order: node indices decide
/// how the graph prints, and a reader compares it with the unoptimized
/// one. Kahn's algorithm, taking first the node whose class came first in
/// the input; a class new to the optimizer goes with its latest operand.
fn readable_order(
    egraph: &egg::EGraph<TensorLang, TensorAnalysis>,
    lowered: &lang::Lowered,
    nodes: &[(Id, TensorLang)],
) -> Vec<usize> {
    use std::cmp::Reverse;
    let mut first: HashMap<Id, usize> = HashMap::new();
    for (pos, (n, _)) in lowered.originals.iter().enumerate() {
        first.entry(egraph.find(lowered.class_of[n])).or_insert(pos);
    }
    let index: HashMap<Id, usize> = nodes
        .iter()
        .enumerate()
        .map(|(i, (c, _))| (*c, i))
        .collect();
    let operands: Vec<Vec<usize>> = nodes
        .iter()
        .map(|(_, n)| {
            let mut ops: Vec<usize> = n
                .operands()
                .iter()
                .filter_map(|&o| index.get(&egraph.find(o)).copied())
                .collect();
            ops.sort_unstable();
            ops.dedup();
            ops
        })
        .collect();
    let mut key: Vec<(usize, bool, usize)> = Vec::with_capacity(nodes.len());
    for (i, (class, _)) in nodes.iter().enumerate() {
        key.push(match first.get(class) {
            Some(&p) => (p, false, i),
            None => {
                let p = operands[i].iter().map(|&o| key[o].0).max().unwrap_or(0);
                (p, true, i)
            }
        });
    }
    let mut users: Vec<Vec<usize>> = vec![Vec::new(); nodes.len()];
    let mut pending: Vec<usize> = vec![0; nodes.len()];
    for (i, ops) in operands.iter().enumerate() {
        pending[i] = ops.len();
        for &o in ops {
            users[o].push(i);
        }
    }
    // (first position, new to the optimizer, extraction index), node.
    type Ready = Reverse<((usize, bool, usize), usize)>;
    let mut ready: std::collections::BinaryHeap<Ready> = (0..nodes.len())
        .filter(|&i| pending[i] == 0)
        .map(|i| Reverse((key[i], i)))
        .collect();
    let mut order = Vec::with_capacity(nodes.len());
    while let Some(Reverse((_, i))) = ready.pop() {
        order.push(i);
        for &u in &users[i] {
            pending[u] -= 1;
            if pending[u] == 0 {
                ready.push(Reverse((key[u], u)));
            }
        }
    }
    order
}

/// Builds the extracted nodes as a graph with `graph`'s name, outputs and
/// updates, names and spans carried over from original nodes.
fn rebuild(
    graph: &Graph,
    egraph: &egg::EGraph<TensorLang, TensorAnalysis>,
    lowered: &lang::Lowered,
    extraction: &extract::Extraction,
) -> Result<Graph, PassError> {
    // Provenance: the original node behind each canonical e-node (the
    // first named one in topological order), and a span per class.
    let mut origin: HashMap<TensorLang, NodeId> = HashMap::new();
    let mut class_span: HashMap<Id, Span> = HashMap::new();
    for (n, enode) in &lowered.originals {
        let canon = enode.clone().map_children(|c| egraph.find(c));
        let node = graph.node(*n);
        match origin.get(&canon) {
            Some(prev) if graph.node(*prev).name.is_some() || node.name.is_none() => {}
            _ => {
                origin.insert(canon, *n);
            }
        }
        if let Some(span) = node.span {
            class_span
                .entry(egraph.find(lowered.class_of[n]))
                .or_insert(span);
        }
    }

    let mut out = Graph::new(graph.name.clone());
    let mut built: HashMap<Id, NodeId> = HashMap::with_capacity(extraction.nodes.len());
    let fail = |m: String| PassError::new(format!("internal optimizer error: {m}"));
    for &i in &readable_order(egraph, lowered, &extraction.nodes) {
        let (class, enode) = &extraction.nodes[i];
        let kind: OpKind = enode
            .kind()
            .ok_or_else(|| fail("an attribute was extracted as a tensor".into()))?;
        let attrs = attrs_of(egraph, enode).ok_or_else(|| fail("missing attributes".into()))?;
        let (op, declared) =
            to_ir_op(kind, &attrs).ok_or_else(|| fail(format!("bad attributes of `{kind:?}`")))?;
        let operands: Vec<NodeId> = enode
            .operands()
            .iter()
            .map(|&o| built.get(&egraph.find(o)).copied())
            .collect::<Option<_>>()
            .ok_or_else(|| fail("an operand was extracted after its user".into()))?;
        let id = out
            .add(op, &operands, declared)
            .map_err(|e| fail(format!("rebuilding `{}`: {e}", kind.mnemonic())))?;
        let node = out.node_mut(id);
        match origin.get(enode) {
            Some(&orig) => {
                node.name = graph.node(orig).name.clone();
                node.span = graph.node(orig).span;
            }
            None => node.span = class_span.get(class).copied(),
        }
        built.insert(*class, id);
    }
    let node_of = |n: NodeId| -> Result<NodeId, PassError> {
        let class = egraph.find(lowered.class_of[&n]);
        built
            .get(&class)
            .copied()
            .ok_or_else(|| fail("a result was not extracted".into()))
    };
    for o in &graph.outputs {
        let id = node_of(o.node)?;
        out.set_output(o.name.clone(), id);
    }
    for u in &graph.updates {
        out.updates.push(Update {
            target: u.target.clone(),
            value: node_of(u.value)?,
        });
    }
    Ok(out)
}
