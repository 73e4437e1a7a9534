//! DAG-aware extraction: one e-node per e-class, chosen to minimize the
//! cost of the whole extracted graph under [`cost::evaluate`].
//!
//! A tree cost (egg's `Extractor`) counts a value once per use, so it
//! prefers recomputing over sharing and cannot see fusion, which depends on
//! how many users a value has. Here every candidate is costed as a whole
//! DAG in which each class appears once:
//!
//! 1. A default choice per class: the cheapest node by a bottom-up tree
//!    cost, used for classes that only rewrites created.
//! 2. The starting point: each class's original node (the one earliest in
//!    the input's topological order). Along original nodes that position
//!    strictly decreases from user to operand, so this start is acyclic
//!    and is never worse than the input graph.
//! 3. Local search: for each class in use, try each other node (with
//!    default choices for classes it newly needs); keep a change when the
//!    whole graph's cost drops and the graph has no cycle. When a node
//!    needs a class nothing uses yet and does not pay alone, also try it
//!    together with one other class in use switching to a node that reads
//!    the same new class (a *joint move*: two products merged into one
//!    wider product pay only when both results are sliced from it, see
//!    `rules/merge.rs`). Repeat until a sweep changes nothing or the time
//!    budget is spent.
//!
//! Only acyclic candidates are ever accepted, so the result has no cycle.
//! Classes and nodes are visited in a fixed order and only strict
//! improvements are kept, so extraction is deterministic (the time budget
//! is a safety net far above what the examples need).

use super::analysis::TensorAnalysis;
use super::cost::{self, DagNode, NodeCost, Role, Scratch, Totals};
use super::lang::{attrs_of, to_ir_op, TensorLang};
use crate::PassError;
use egg::{EGraph, Id, Language};
use nnc_ir::TensorType;
use std::collections::HashMap;
use std::time::{Duration, Instant};

type EG = EGraph<TensorLang, TensorAnalysis>;

/// One candidate e-node of a class.
struct Cand {
    node: TensorLang,
    /// Operand classes, as dense class numbers.
    operands: Vec<u32>,
    cost: NodeCost,
}

/// The chosen graph.
pub struct Extraction {
    /// Chosen e-nodes in a topological order (operands first), with their
    /// (canonical) classes.
    pub nodes: Vec<(Id, TensorLang)>,
    pub totals: Totals,
    /// Candidate graphs costed.
    pub evaluated: usize,
    /// Choices changed by the local search.
    pub improvements: usize,
}

struct Problem {
    ids: Vec<Id>,
    cands: Vec<Vec<Cand>>,
    /// Per class: the (class, candidate) pairs whose node reads it.
    readers: Vec<Vec<(u32, u32)>>,
    roots: Vec<u32>,
    results: Vec<bool>,
}

/// Extracts the graph that computes `roots` (outputs and update values,
/// in order; `keep` are further classes that must stay, such as leaves).
/// `hints` maps a class to its original e-node.
pub fn extract(
    egraph: &EG,
    roots: &[Id],
    keep: &[Id],
    hints: &HashMap<Id, TensorLang>,
    budget: Duration,
) -> Result<Extraction, PassError> {
    let started = Instant::now();
    let problem = Problem::new(egraph, roots, keep)?;
    let n = problem.ids.len();
    let defaults = problem.default_choice();

    let mut choice: Vec<u32> = Vec::with_capacity(n);
    for (c, cands) in problem.cands.iter().enumerate() {
        let hinted = hints.get(&problem.ids[c]).and_then(|h| {
            let h = h.clone().map_children(|id| egraph.find(id));
            cands.iter().position(|cand| cand.node == h)
        });
        choice.push(match (hinted, defaults[c]) {
            (Some(j), _) => j as u32,
            (None, Some(j)) => j,
            (None, None) => u32::MAX,
        });
    }
    let mut eval = Evaluator::new(n);
    let mut evaluated = 0;
    let mut improvements = 0;
    'sweeps: loop {
        // The current choice's cost and classes in use.
        let mut best = eval
            .cost(&problem, &choice)
            .ok_or_else(|| PassError::new("the e-graph has no acyclic extraction of the input"))?;
        evaluated += 1;
        let order = eval.order.clone();
        let mut in_use = eval.in_use();
        let mut improved = false;
        for c in order {
            let c = c as usize;
            for j in 0..problem.cands[c].len() as u32 {
                if j == choice[c] {
                    continue;
                }
                if started.elapsed() > budget {
                    break 'sweeps;
                }
                let old = choice[c];
                choice[c] = j;
                evaluated += 1;
                let mut accepted = match eval.cost(&problem, &choice) {
                    // Relative slack, so rounding noise never counts as a gain.
                    Some(t) if t.cost() < best.cost() * (1.0 - 1e-12) => {
                        best = t;
                        true
                    }
                    _ => false,
                };
                if !accepted {
                    // Joint moves with a partner reading a class that only
                    // this node brings into use.
                    let fresh = problem.cands[c][j as usize]
                        .operands
                        .iter()
                        .filter(|&&o| !in_use[o as usize]);
                    'partners: for &o in fresh {
                        for &(c2, k) in &problem.readers[o as usize] {
                            let c2 = c2 as usize;
                            if c2 == c || !in_use[c2] || choice[c2] == k {
                                continue;
                            }
                            let old2 = choice[c2];
                            choice[c2] = k;
                            evaluated += 1;
                            match eval.cost(&problem, &choice) {
                                Some(t) if t.cost() < best.cost() * (1.0 - 1e-12) => {
                                    best = t;
                                    accepted = true;
                                    improvements += 1;
                                    break 'partners;
                                }
                                _ => choice[c2] = old2,
                            }
                        }
                    }
                }
                if accepted {
                    improved = true;
                    improvements += 1;
                    eval.cost(&problem, &choice);
                    in_use = eval.in_use();
                } else {
                    choice[c] = old;
                }
            }
        }
        if !improved {
            break;
        }
    }
    // Re-derive the order of the final choice.
    let totals = eval
        .cost(&problem, &choice)
        .ok_or_else(|| PassError::new("internal error: the extraction has a cycle"))?;
    let nodes = eval
        .order
        .iter()
        .map(|&c| {
            let c = c as usize;
            (
                problem.ids[c],
                problem.cands[c][choice[c] as usize].node.clone(),
            )
        })
        .collect();
    Ok(Extraction {
        nodes,
        totals,
        evaluated,
        improvements,
    })
}

impl Problem {
    fn new(egraph: &EG, roots: &[Id], keep: &[Id]) -> Result<Problem, PassError> {
        let mut ids: Vec<Id> = egraph
            .classes()
            .filter(|c| c.data.ty.is_some())
            .map(|c| c.id)
            .collect();
        ids.sort_unstable();
        let index: HashMap<Id, u32> = ids
            .iter()
            .enumerate()
            .map(|(i, &id)| (id, i as u32))
            .collect();
        let mut cands = Vec::with_capacity(ids.len());
        for &id in &ids {
            let class = &egraph[id];
            let mut list = Vec::with_capacity(class.nodes.len());
            let Some(ty) = class.data.ty.as_ref() else {
                continue;
            };
            for node in &class.nodes {
                if let Some(c) = cand(egraph, node, ty, &index) {
                    list.push(c);
                }
            }
            cands.push(list);
        }
        let find = |id: Id| {
            index
                .get(&egraph.find(id))
                .copied()
                .ok_or_else(|| PassError::new("internal error: a root is not a tensor class"))
        };
        let mut results = vec![false; ids.len()];
        let mut root_list = Vec::new();
        for &r in roots {
            let r = find(r)?;
            results[r as usize] = true;
            root_list.push(r);
        }
        for &k in keep {
            root_list.push(find(k)?);
        }
        let mut readers: Vec<Vec<(u32, u32)>> = vec![Vec::new(); ids.len()];
        for (c, list) in cands.iter().enumerate() {
            for (j, cand) in list.iter().enumerate() {
                for &o in &cand.operands {
                    let entry = (c as u32, j as u32);
                    if !readers[o as usize].contains(&entry) {
                        readers[o as usize].push(entry);
                    }
                }
            }
        }
        Ok(Problem {
            ids,
            cands,
            readers,
            roots: root_list,
            results,
        })
    }

    /// The bottom-up tree-cost choice of every class that has one.
    fn default_choice(&self) -> Vec<Option<u32>> {
        let n = self.ids.len();
        let mut best: Vec<(f64, Option<u32>)> = vec![(f64::INFINITY, None); n];
        loop {
            let mut changed = false;
            for c in 0..n {
                for (j, cand) in self.cands[c].iter().enumerate() {
                    let mut total = standalone(&cand.cost);
                    for &o in &cand.operands {
                        total += best[o as usize].0;
                    }
                    if total < best[c].0 {
                        best[c] = (total, Some(j as u32));
                        changed = true;
                    }
                }
            }
            if !changed {
                break;
            }
        }
        best.into_iter().map(|(_, j)| j).collect()
    }
}

/// A node's cost as if it ran alone: the tree cost's per-node term.
fn standalone(c: &NodeCost) -> f64 {
    match c.role {
        Role::Leaf | Role::Constant | Role::View => 1.0,
        Role::Elementwise | Role::Kernel => {
            cost::LAUNCH + c.flops * cost::FLOP + c.elems * c.bytes_per_elem * cost::BYTE
        }
    }
}

fn cand(egraph: &EG, node: &TensorLang, ty: &TensorType, index: &HashMap<Id, u32>) -> Option<Cand> {
    let kind = node.kind()?;
    let attrs = attrs_of(egraph, node)?;
    let (op, _) = to_ir_op(kind, &attrs)?;
    let mut operands = Vec::with_capacity(node.operands().len());
    let mut types: Vec<&TensorType> = Vec::with_capacity(node.operands().len());
    for &o in node.operands() {
        let o = egraph.find(o);
        operands.push(*index.get(&o)?);
        types.push(egraph[o].data.ty.as_ref()?);
    }
    Some(Cand {
        node: node.clone(),
        operands,
        cost: cost::node_cost(&op, ty, &types),
    })
}

/// Costs candidate choices, reusing its buffers.
struct Evaluator {
    /// Per class: 0 unvisited, 1 on the DFS stack, 2 done.
    state: Vec<u8>,
    /// Position of each visited class in `order`.
    position: Vec<u32>,
    /// Visited classes, operands first.
    order: Vec<u32>,
    operands: Vec<u32>,
    spans: Vec<(usize, usize)>,
    scratch: Scratch,
}

impl Evaluator {
    fn new(n: usize) -> Evaluator {
        Evaluator {
            state: vec![0; n],
            position: vec![0; n],
            order: Vec::with_capacity(n),
            operands: Vec::new(),
            spans: Vec::new(),
            scratch: Scratch::default(),
        }
    }

    /// Which classes the last costed choice uses.
    fn in_use(&self) -> Vec<bool> {
        self.state.iter().map(|&s| s == 2).collect()
    }

    /// The totals of the graph `choice` selects, or `None` when it has a
    /// cycle or needs a class with no choice.
    fn cost(&mut self, p: &Problem, choice: &[u32]) -> Option<Totals> {
        self.state.iter_mut().for_each(|s| *s = 0);
        self.order.clear();
        // Iterative post-order DFS: (class, next operand to visit).
        let mut stack: Vec<(u32, usize)> = Vec::new();
        for &r in &p.roots {
            if self.state[r as usize] != 0 {
                continue;
            }
            self.state[r as usize] = 1;
            stack.push((r, 0));
            while let Some(top) = stack.last_mut() {
                let (c, next) = *top;
                let cand = p.cands[c as usize].get(*choice.get(c as usize)? as usize)?;
                if let Some(&o) = cand.operands.get(next) {
                    top.1 += 1;
                    match self.state[o as usize] {
                        0 => {
                            self.state[o as usize] = 1;
                            stack.push((o, 0));
                        }
                        1 => return None, // a cycle
                        _ => {}
                    }
                } else {
                    self.state[c as usize] = 2;
                    self.position[c as usize] = self.order.len() as u32;
                    self.order.push(c);
                    stack.pop();
                }
            }
        }
        self.operands.clear();
        self.spans.clear();
        for &c in &self.order {
            let cand = &p.cands[c as usize][choice[c as usize] as usize];
            let start = self.operands.len();
            self.operands
                .extend(cand.operands.iter().map(|&o| self.position[o as usize]));
            self.spans.push((start, self.operands.len()));
        }
        let nodes: Vec<DagNode> = self
            .order
            .iter()
            .zip(&self.spans)
            .map(|(&c, &(a, b))| DagNode {
                cost: &p.cands[c as usize][choice[c as usize] as usize].cost,
                operands: &self.operands[a..b],
                result: p.results[c as usize],
            })
            .collect();
        Some(cost::evaluate(&nodes, &mut self.scratch))
    }
}
