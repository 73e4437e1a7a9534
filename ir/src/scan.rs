//! `scan`: a loop over a sequence axis whose body is a graph of its own
//! (JAX's `lax.scan`, ONNX's `Scan`). The body is held once, behind an
//! [`Arc`], by every node that reads a result of the same loop, so the
//! graph, the e-graph and compile time stay the size of one step whatever
//! the sequence length.
//!
//! A scan node reads `consts ++ init carries ++ xs`. Step `t` (counting
//! down when `reverse`) evaluates the body on the consts, the carries and
//! slice `t` of every `xs` along `axis`; the body's first outputs are the
//! next carries, the rest are this step's `ys`. The loop has three kinds of
//! results, each one node (`Op::Scan { result }`):
//!
//! | results | what |
//! |---|---|
//! | `0 .. K` | the final carries |
//! | `K .. K+Y` | the `ys`, stacked along `axis` in sequence order |
//! | `K+Y .. 2K+Y` | the carries each step *started* from, stacked along `axis` |
//!
//! The last kind costs the loop nothing extra and is what the gradient reads:
//! the backward scan differentiates the body at each step's own carries.
//! Nodes reading the same body with the same operands are one loop; every
//! executor runs it once.

use crate::graph::{Graph, NodeId};
use crate::op::Op;
use crate::types::{Dim, TensorType};
use std::fmt;
use std::sync::Arc;

/// A scan's body and how the loop reads it.
#[derive(Debug, Clone)]
pub struct ScanBody {
    /// One step. Its leaves are `input`s (the ones in `inputs`) and
    /// constants; it has no params, state or updates. Its outputs are the
    /// next carries, then the step's `ys`.
    pub graph: Graph,
    /// The body's inputs in operand order: consts, carries, then one per
    /// `xs` (a slice, `axis` removed).
    pub inputs: Vec<NodeId>,
    pub consts: usize,
    pub carries: usize,
    /// The sequence axis of every `xs` operand and every stacked result.
    pub axis: usize,
    /// Steps run from the last slice to the first (the `ys` still stack in
    /// sequence order, so `ys[t]` belongs to `xs[t]`).
    pub reverse: bool,
    /// A hash of the printed body, so equal bodies compare equal (and
    /// order the same in every run) without comparing graphs.
    fingerprint: u64,
}

/// What result `r` of a scan is (see the module's table).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ScanResult {
    FinalCarry(usize),
    Ys(usize),
    CarriesIn(usize),
}

impl ScanBody {
    /// Checks the body's structure (not its types against operands: that
    /// is `infer`'s) and wraps it for sharing.
    pub fn new(
        graph: Graph,
        inputs: Vec<NodeId>,
        consts: usize,
        carries: usize,
        axis: usize,
        reverse: bool,
    ) -> Result<Arc<ScanBody>, String> {
        crate::verify::verify(&graph).map_err(|e| format!("scan body: {e}"))?;
        if !graph.updates.is_empty() {
            return Err("a scan body has no updates".into());
        }
        let mut listed: Vec<NodeId> = inputs.clone();
        listed.sort_unstable();
        listed.dedup();
        if listed.len() != inputs.len() {
            return Err("a scan body lists an input twice".into());
        }
        for id in graph.g.node_indices() {
            let op = &graph.node(id).op;
            match op {
                Op::Input { .. } if !inputs.contains(&id) => {
                    return Err(format!("scan body input {op:?} is not in its input list"))
                }
                Op::Param { .. } | Op::State { .. } => {
                    return Err(format!(
                        "a scan body reads no params or state (found `{}`): pass them as consts",
                        op.mnemonic()
                    ))
                }
                _ => {}
            }
        }
        for &id in &inputs {
            if !graph.contains(id) || !matches!(graph.node(id).op, Op::Input { .. }) {
                return Err("a scan body's input list names a node that is not an input".into());
            }
        }
        if consts + carries >= inputs.len() {
            return Err(format!(
                "a scan needs at least one sequence input: {} inputs for {consts} consts and {carries} carries",
                inputs.len()
            ));
        }
        if graph.outputs.len() < carries {
            return Err(format!(
                "a scan body with {carries} carries has only {} outputs",
                graph.outputs.len()
            ));
        }
        for k in 0..carries {
            let (inp, out) = (
                graph.ty(inputs[consts + k]),
                graph.ty(graph.outputs[k].node),
            );
            if inp != out {
                return Err(format!(
                    "scan carry {k} enters the body as {inp} but leaves it as {out}"
                ));
            }
        }
        let fingerprint = fnv1a(
            format!(
                "{consts} {carries} {axis} {reverse} {:?}\n{graph}",
                inputs_order(&graph, &inputs)
            )
            .as_bytes(),
        );
        Ok(Arc::new(ScanBody {
            graph,
            inputs,
            consts,
            carries,
            axis,
            reverse,
            fingerprint,
        }))
    }

    pub fn xs(&self) -> usize {
        self.inputs.len() - self.consts - self.carries
    }

    pub fn ys(&self) -> usize {
        self.graph.outputs.len() - self.carries
    }

    /// How many results the loop has: `2 * carries + ys`.
    pub fn results(&self) -> usize {
        2 * self.carries + self.ys()
    }

    pub fn result(&self, r: usize) -> Option<ScanResult> {
        let (k, y) = (self.carries, self.ys());
        Some(if r < k {
            ScanResult::FinalCarry(r)
        } else if r < k + y {
            ScanResult::Ys(r - k)
        } else if r < 2 * k + y {
            ScanResult::CarriesIn(r - k - y)
        } else {
            return None;
        })
    }

    /// The index of a result kind.
    pub fn result_index(&self, r: ScanResult) -> usize {
        match r {
            ScanResult::FinalCarry(i) => i,
            ScanResult::Ys(i) => self.carries + i,
            ScanResult::CarriesIn(i) => self.carries + self.ys() + i,
        }
    }

    pub fn fingerprint(&self) -> u64 {
        self.fingerprint
    }

    /// The type of result `r` for a loop of `trip` steps.
    pub fn result_type(&self, r: usize, trip: &Dim) -> Option<TensorType> {
        let stacked = |t: &TensorType| {
            let mut t = t.clone();
            (self.axis <= t.shape.len()).then(|| {
                t.shape.insert(self.axis, trip.clone());
                t
            })
        };
        match self.result(r)? {
            ScanResult::FinalCarry(k) => Some(self.graph.ty(self.graph.outputs[k].node).clone()),
            ScanResult::Ys(y) => stacked(self.graph.ty(self.graph.outputs[self.carries + y].node)),
            ScanResult::CarriesIn(k) => stacked(self.graph.ty(self.inputs[self.consts + k])),
        }
    }

    /// The type each operand must have for a loop of `trip` steps.
    pub fn operand_type(&self, i: usize, trip: &Dim) -> Option<TensorType> {
        let mut t = self.graph.ty(*self.inputs.get(i)?).clone();
        if i >= self.consts + self.carries {
            if self.axis > t.shape.len() {
                return None;
            }
            t.shape.insert(self.axis, trip.clone());
        }
        Some(t)
    }
}

/// Where each listed input sits in the printed body (its `%n`), so the
/// fingerprint sees the order of the list, not only the graph.
fn inputs_order(graph: &Graph, inputs: &[NodeId]) -> Vec<usize> {
    let order = graph.topo_order();
    inputs
        .iter()
        .map(|i| order.iter().position(|o| o == i).unwrap_or(usize::MAX))
        .collect()
}

fn fnv1a(bytes: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for &b in bytes {
        h ^= b as u64;
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    h
}

/// Two bodies are equal when they are the same body or print the same.
impl PartialEq for ScanBody {
    fn eq(&self, other: &ScanBody) -> bool {
        std::ptr::eq(self, other) || self.fingerprint == other.fingerprint
    }
}

impl Eq for ScanBody {}

impl std::hash::Hash for ScanBody {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        self.fingerprint.hash(state)
    }
}

impl fmt::Display for ScanResult {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ScanResult::FinalCarry(k) => write!(f, "final carry {k}"),
            ScanResult::Ys(y) => write!(f, "stacked output {y}"),
            ScanResult::CarriesIn(k) => write!(f, "carry {k} at each step"),
        }
    }
}
