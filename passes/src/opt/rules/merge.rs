//! Multi-pattern rewrites in the spirit of TENSAT (Yang et al., MLSys
//! 2021): two matrix products that share an operand become one wider
//! product, and each original result a slice of it.
//!
//! `a @ b1` and `a @ b2` read `a` twice and launch two GEMMs;
//! `(a @ concat(b1, b2))[.., :n1]` and `[.., n1:]` read it once, in one
//! GEMM with better tile use, at the price of copying `b1` and `b2` into
//! the concatenation every run. Whether that pays depends on the sizes, so
//! the rules only add the merged form to the e-graph, and the cost model
//! decides: extraction takes it with a joint move (both results switch to
//! their slices together, see `extract.rs`), e.g. for two narrow heads
//! over one wide feature map, and leaves it when the copied operands
//! outweigh the shared read. Each output element is the same dot product
//! in the same order, so the rewrite is exact.
//!
//! To keep the e-graph finite, an operand that is already a concatenation
//! is not merged again (three products sharing an operand merge pairwise,
//! not into one), and each pair is merged in one order. The pairs are found
//! by [`SharedOperand`], which groups the products by the shared operand in
//! one pass; an egg multi-pattern joins every product with every class and
//! tripled the saturation time of the examples.

use super::{add_op, searcher_rule, ty, var, Rule, EG};
use crate::opt::analysis::TensorAnalysis;
use crate::opt::lang::TensorLang;
use egg::{Id, SearchMatches, Searcher, Subst, Var};
use nnc_ir::{Dim, Op, OpKind, TensorType};
use std::collections::BTreeMap;

const SET: &str = "merge";

/// Which operand the products share.
#[derive(Clone, Copy, Debug)]
enum Shared {
    /// `a @ b1`, `a @ b2`: concatenate `b1`, `b2` along their columns.
    Left,
    /// `a1 @ b`, `a2 @ b`: concatenate `a1`, `a2` along their rows.
    Right,
}

pub fn rules() -> Result<Vec<Rule>, String> {
    let forms: [(Shared, &str, [&'static str; 2]); 2] = [
        (
            Shared::Left,
            "left",
            [
                "a @ b1 = (a @ concat(b1, b2))[.., :n1] given a @ b2 (2-D b1, b2 with one row \
                 count; exact): one wider product reads a once",
                "a @ b2 = (a @ concat(b1, b2))[.., n1:] given a @ b1: the other half of the merge",
            ],
        ),
        (
            Shared::Right,
            "right",
            [
                "a1 @ b = (concat(a1, a2) @ b)[:m1] given a2 @ b (2-D a1, a2 with one column \
                 count; exact): one taller product reads b once",
                "a2 @ b = (concat(a1, a2) @ b)[m1:] given a1 @ b: the other half of the merge",
            ],
        ),
    ];
    let mut rules = Vec::new();
    for (shared, side, docs) in forms {
        // One rule per result: a rule merges into one class.
        for (half, (target, prime)) in [("?c1", ""), ("?c2", "'")].into_iter().enumerate() {
            rules.push(searcher_rule(
                SET,
                &format!("matmul-shared-{side}{prime}"),
                docs[half],
                SharedOperand(shared),
                target,
                move |eg, _, s| merged(eg, s, shared, half),
            )?);
        }
    }
    Ok(rules)
}

/// Finds pairs of products with one operand in common: `?c1 = ?a @ ?b1`,
/// `?c2 = ?a @ ?b2` (left), or `?c1 = ?a1 @ ?b`, `?c2 = ?a2 @ ?b` (right),
/// with `?c1 < ?c2` and different other operands.
#[derive(Debug)]
struct SharedOperand(Shared);

impl SharedOperand {
    fn var(name: &str) -> Var {
        name.parse().expect("a valid variable name")
    }

    /// (shared, first other, second other) variable names.
    fn names(&self) -> [&'static str; 3] {
        match self.0 {
            Shared::Left => ["?a", "?b1", "?b2"],
            Shared::Right => ["?b", "?a1", "?a2"],
        }
    }
}

impl Searcher<TensorLang, TensorAnalysis> for SharedOperand {
    fn search_eclass_with_limit(
        &self,
        egraph: &EG,
        eclass: Id,
        limit: usize,
    ) -> Option<SearchMatches<'_, TensorLang>> {
        let eclass = egraph.find(eclass);
        self.search_with_limit(egraph, usize::MAX)
            .into_iter()
            .find(|m| m.eclass == eclass)
            .map(|mut m| {
                m.substs.truncate(limit);
                m
            })
    }

    fn search_with_limit(&self, egraph: &EG, limit: usize) -> Vec<SearchMatches<'_, TensorLang>> {
        // Products by shared operand: (product class, other operand).
        let mut groups: BTreeMap<Id, Vec<(Id, Id)>> = BTreeMap::new();
        for class in egraph.classes() {
            for node in &class.nodes {
                if node.kind() != Some(OpKind::MatMul) {
                    continue;
                }
                let [a, b] = node.operands() else {
                    continue;
                };
                let (a, b) = (egraph.find(*a), egraph.find(*b));
                let (shared, other) = match self.0 {
                    Shared::Left => (a, b),
                    Shared::Right => (b, a),
                };
                groups.entry(shared).or_default().push((class.id, other));
            }
        }
        let [shared_var, first, second] = self.names().map(Self::var);
        let (c1, c2) = (Self::var("?c1"), Self::var("?c2"));
        let mut out: BTreeMap<Id, Vec<Subst>> = BTreeMap::new();
        let mut found = 0;
        for (shared, mut products) in groups {
            products.sort_unstable();
            products.dedup();
            for (i, &(p1, o1)) in products.iter().enumerate() {
                for &(p2, o2) in &products[i + 1..] {
                    if p1 == p2 || o1 == o2 || found >= limit {
                        continue;
                    }
                    let mut subst = Subst::default();
                    subst.insert(shared_var, shared);
                    subst.insert(first, o1);
                    subst.insert(second, o2);
                    subst.insert(c1, p1);
                    subst.insert(c2, p2);
                    out.entry(p1).or_default().push(subst);
                    found += 1;
                }
            }
        }
        out.into_iter()
            .map(|(eclass, substs)| SearchMatches {
                eclass,
                substs,
                ast: None,
            })
            .collect()
    }

    fn vars(&self) -> Vec<Var> {
        let mut vars: Vec<Var> = self.names().into_iter().map(Self::var).collect();
        vars.push(Self::var("?c1"));
        vars.push(Self::var("?c2"));
        vars
    }
}

/// The concatenated product's slice that equals result `half` (0: `?c1`,
/// 1: `?c2`) of the match, or `None` when the operands do not qualify.
fn merged(eg: &mut EG, s: &Subst, shared: Shared, half: usize) -> Option<Id> {
    let (common, x1, x2) = match shared {
        Shared::Left => (var(s, "?a")?, var(s, "?b1")?, var(s, "?b2")?),
        Shared::Right => (var(s, "?b")?, var(s, "?a1")?, var(s, "?a2")?),
    };
    let (x1, x2) = (eg.find(x1), eg.find(x2));
    if x1 == x2 || is_concat(eg, x1) || is_concat(eg, x2) {
        return None;
    }
    let (t1, t2) = (ty(eg, x1)?.clone(), ty(eg, x2)?.clone());
    // The axis the operands are joined along, and the one they must agree on.
    let (join, agree) = match shared {
        Shared::Left => (1, 0),
        Shared::Right => (0, 1),
    };
    if !plain_matrix(&t1) || !plain_matrix(&t2) || t1.dtype != t2.dtype {
        return None;
    }
    if t1.shape[agree] != t2.shape[agree] {
        return None;
    }
    let n1 = t1.shape[join].as_const()?;
    let n2 = t2.shape[join].as_const()?;
    // The common operand must be a plain matrix too when it is the right
    // one (rows of a batched left operand would interleave batches).
    if matches!(shared, Shared::Right) && !plain_matrix(ty(eg, common)?) {
        return None;
    }
    let cat = add_op(eg, Op::Concat { axis: join }, &[x1, x2], None)?;
    let product = match shared {
        Shared::Left => add_op(eg, Op::MatMul, &[common, cat], None)?,
        Shared::Right => add_op(eg, Op::MatMul, &[cat, common], None)?,
    };
    let rank = ty(eg, product)?.rank();
    let axis = match shared {
        Shared::Left => rank - 1,
        Shared::Right => rank - 2,
    };
    let (start, end) = if half == 0 { (0, n1) } else { (n1, n1 + n2) };
    add_op(eg, Op::Slice { axis, start, end }, &[product], None)
}

/// A rank-2 tensor with constant dims.
fn plain_matrix(t: &TensorType) -> bool {
    t.rank() == 2 && t.shape.iter().all(|d| matches!(d, Dim::Const(_)))
}

fn is_concat(eg: &EG, id: Id) -> bool {
    eg[id]
        .nodes
        .iter()
        .any(|n| n.kind() == Some(OpKind::Concat))
}
