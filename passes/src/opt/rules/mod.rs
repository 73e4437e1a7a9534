//! Rule sets, and the small vocabulary rules are written in.
//!
//! A rule is an egg pattern (ops by their IR mnemonic, attributes as
//! variables) and a replacement: another pattern where the rewrite is
//! plain ([`pat_rule`], with an optional condition on analysis facts),
//! or a Rust function that builds it from the match, or declines, where
//! it computes attributes or types. Every replacement is built through [`add_op`],
//! which infers its type with `ir::infer` and refuses ill-typed nodes, and
//! is merged by [`merge_checked`] only when its type equals the matched
//! class's: a rule can fail to fire, but never makes the e-graph
//! ill-typed. (This is what makes broadcasting safe: `x * 1` where the `1`
//! is larger than `x` has a different type than `x` and is left alone.)
//!
//! Each rule carries a one-line doc, printed by `nnc compile --explain`
//! and listed in spec/ir.md.

pub mod algebra;
pub mod layout;
pub mod merge;
pub mod training;

use super::analysis::{Konst, TensorAnalysis};
use super::lang::{attrs_of, enode_of, to_ir_op, Attr, TensorLang};
use egg::{
    Applier, EGraph, ENodeOrVar, Id, Language, Pattern, PatternAst, Rewrite, SearchMatches,
    Searcher, Subst, Symbol, Var,
};
use nnc_ir::{Op, TensorType};

pub type EG = EGraph<TensorLang, TensorAnalysis>;
pub type Rw = Rewrite<TensorLang, TensorAnalysis>;

/// A rewrite with its documentation.
pub struct Rule {
    pub rewrite: Rw,
    /// The rule set (`algebra`, `layout`, `training`, `merge`).
    pub set: &'static str,
    pub doc: &'static str,
}

impl Rule {
    pub fn name(&self) -> String {
        self.rewrite.name.to_string()
    }
}

/// Builds a replacement for a match: `(egraph, matched class, subst)`.
pub trait BuildFn: Fn(&mut EG, Id, &Subst) -> Option<Id> + Send + Sync + 'static {}
impl<F: Fn(&mut EG, Id, &Subst) -> Option<Id> + Send + Sync + 'static> BuildFn for F {}

/// A rule from one or more patterns that bind the same variables (the
/// operand orders of a commutative op, say) and a builder. The rule's name
/// is `set/name`.
pub fn rule(
    set: &'static str,
    name: &str,
    doc: &'static str,
    patterns: &[&str],
    build: impl BuildFn,
) -> Result<Rule, String> {
    let full = format!("{set}/{name}");
    let patterns = parse_patterns(&full, patterns)?;
    any_of_rule(set, &full, doc, patterns, build)
}

fn parse_patterns(rule: &str, patterns: &[&str]) -> Result<Vec<Pattern<TensorLang>>, String> {
    patterns
        .iter()
        .map(|p| {
            p.parse::<Pattern<TensorLang>>()
                .map_err(|e| format!("rule {rule}: pattern `{p}`: {e}"))
        })
        .collect()
}

/// A rule named `full` that matches any of `patterns` and merges what
/// `build` makes into the matched class.
fn any_of_rule(
    set: &'static str,
    full: &str,
    doc: &'static str,
    patterns: Vec<Pattern<TensorLang>>,
    build: impl BuildFn,
) -> Result<Rule, String> {
    let rewrite = Rewrite::new(
        full,
        AnyOf(patterns),
        Build {
            target: None,
            build,
        },
    )?;
    Ok(Rule { rewrite, set, doc })
}

/// A rule written as patterns on both sides: `lhs => rhs`, as egg's
/// `rewrite!` would, e.g. `(neg (neg ?x)) => ?x`. The right side is built
/// node by node through [`add_op`] (types inferred and checked; a reshape
/// or broadcast to its operand's own type is elided, as the graph builder
/// does) and merged by [`merge_checked`], so a pattern rule is as safe as a
/// closure. Every variable of `rhs` must be bound by each left pattern.
pub fn pat_rule(
    set: &'static str,
    name: &str,
    doc: &'static str,
    lhs: &[&str],
    rhs: &str,
) -> Result<Rule, String> {
    pat_rule_if(set, name, doc, lhs, rhs, |_, _| true)
}

/// [`pat_rule`] that fires only where `condition` holds of the match, a
/// fact of the analysis (a constant, a non-negative class), never the
/// absence of a node, which a later merge may add.
pub fn pat_rule_if(
    set: &'static str,
    name: &str,
    doc: &'static str,
    lhs: &[&str],
    rhs: &str,
    condition: impl Fn(&EG, &Subst) -> bool + Send + Sync + 'static,
) -> Result<Rule, String> {
    let full = format!("{set}/{name}");
    let rhs = parse_patterns(&full, &[rhs])?.remove(0);
    let patterns = parse_patterns(&full, lhs)?;
    for (p, text) in patterns.iter().zip(lhs) {
        let bound = p.vars();
        if let Some(v) = rhs.vars().iter().find(|v| !bound.contains(v)) {
            return Err(format!("rule {full}: `{v}` is not bound by `{text}`"));
        }
    }
    let build = move |eg: &mut EG, _: Id, s: &Subst| {
        if !condition(eg, s) {
            return None;
        }
        instantiate(eg, &rhs.ast, s)
    };
    any_of_rule(set, &full, doc, patterns, build)
}

/// Builds a pattern's term under `subst`, bottom up; `None` when a node
/// does not type-check.
fn instantiate(egraph: &mut EG, ast: &PatternAst<TensorLang>, subst: &Subst) -> Option<Id> {
    let mut ids: Vec<Id> = Vec::with_capacity(ast.as_ref().len());
    for node in ast.as_ref() {
        let id = match node {
            ENodeOrVar::Var(v) => *subst.get(*v)?,
            ENodeOrVar::ENode(TensorLang::Attr(a)) => egraph.add(TensorLang::Attr(a.clone())),
            ENodeOrVar::ENode(n @ TensorLang::Op { kind, .. }) => {
                let args: Vec<Id> = n.children().iter().map(|&c| ids[usize::from(c)]).collect();
                let built = TensorLang::op(*kind, args);
                let attrs: Vec<Attr> = attrs_of(egraph, &built)?.into_iter().cloned().collect();
                let attrs: Vec<&Attr> = attrs.iter().collect();
                let (op, declared) = to_ir_op(*kind, &attrs)?;
                let operands = built.operands().to_vec();
                match (&op, &declared) {
                    (Op::Reshape | Op::Broadcast, Some(t))
                        if ty(egraph, operands[0]) == Some(t) =>
                    {
                        operands[0]
                    }
                    _ => add_op(egraph, op, &operands, declared)?,
                }
            }
        };
        ids.push(id);
    }
    ids.last().copied()
}

/// A rule over a multi-pattern (several terms that must all exist, joined
/// by shared variables), whose replacement is merged into the class bound
/// to `target`.
pub fn multi_rule(
    set: &'static str,
    name: &str,
    doc: &'static str,
    pattern: &str,
    target: &str,
    build: impl BuildFn,
) -> Result<Rule, String> {
    let searcher: egg::MultiPattern<TensorLang> = pattern
        .parse()
        .map_err(|e| format!("rule {set}/{name}: pattern `{pattern}`: {e}"))?;
    searcher_rule(set, name, doc, searcher, target, build)
}

/// A rule over any searcher (one that finds matches faster than a pattern
/// would), whose replacement is merged into the class bound to `target`.
pub fn searcher_rule(
    set: &'static str,
    name: &str,
    doc: &'static str,
    searcher: impl Searcher<TensorLang, TensorAnalysis> + Send + Sync + 'static,
    target: &str,
    build: impl BuildFn,
) -> Result<Rule, String> {
    let full = format!("{set}/{name}");
    let target: Var = target
        .parse()
        .map_err(|e| format!("rule {full}: target `{target}`: {e}"))?;
    let rewrite = Rewrite::new(
        full.as_str(),
        searcher,
        Build {
            target: Some(target),
            build,
        },
    )?;
    Ok(Rule { rewrite, set, doc })
}

/// Matches any of several patterns.
pub struct AnyOf(Vec<Pattern<TensorLang>>);

impl Searcher<TensorLang, TensorAnalysis> for AnyOf {
    fn search_eclass_with_limit(
        &self,
        egraph: &EG,
        eclass: Id,
        limit: usize,
    ) -> Option<SearchMatches<'_, TensorLang>> {
        let mut substs = Vec::new();
        for p in &self.0 {
            if substs.len() >= limit {
                break;
            }
            if let Some(m) = p.search_eclass_with_limit(egraph, eclass, limit - substs.len()) {
                substs.extend(m.substs);
            }
        }
        (!substs.is_empty()).then_some(SearchMatches {
            eclass,
            substs,
            ast: None,
        })
    }

    fn search_with_limit(&self, egraph: &EG, limit: usize) -> Vec<SearchMatches<'_, TensorLang>> {
        let mut out = Vec::new();
        let mut found = 0;
        for p in &self.0 {
            if found >= limit {
                break;
            }
            for m in p.search_with_limit(egraph, limit - found) {
                found += m.substs.len();
                out.push(SearchMatches {
                    eclass: m.eclass,
                    substs: m.substs,
                    ast: None,
                });
            }
        }
        out
    }

    fn get_pattern_ast(&self) -> Option<&PatternAst<TensorLang>> {
        None
    }

    fn vars(&self) -> Vec<Var> {
        let mut vars: Vec<Var> = self.0.iter().flat_map(|p| p.vars()).collect();
        vars.sort();
        vars.dedup();
        vars
    }
}

struct Build<F> {
    /// The class to merge into: the match's own class when `None`.
    target: Option<Var>,
    build: F,
}

impl<F: BuildFn> Applier<TensorLang, TensorAnalysis> for Build<F> {
    fn apply_one(
        &self,
        egraph: &mut EG,
        eclass: Id,
        subst: &Subst,
        _ast: Option<&PatternAst<TensorLang>>,
        _rule: Symbol,
    ) -> Vec<Id> {
        let cap = egraph.analysis.node_cap;
        if cap > 0 && egraph.total_size() >= cap {
            egraph.analysis.capped += 1;
            return vec![];
        }
        let target = match self.target {
            Some(v) => match subst.get(v) {
                Some(&id) => id,
                None => return vec![],
            },
            None => eclass,
        };
        match (self.build)(egraph, target, subst) {
            Some(new) => merge_checked(egraph, target, new),
            None => vec![],
        }
    }
}

/// Unions `new` into `target` when both are tensors of one type.
pub fn merge_checked(egraph: &mut EG, target: Id, new: Id) -> Vec<Id> {
    match (ty(egraph, target), ty(egraph, new)) {
        (Some(a), Some(b)) if a == b => {}
        _ => return vec![],
    }
    if egraph.union(target, new) {
        vec![egraph.find(target)]
    } else {
        vec![]
    }
}

// ---- reading a match ----

/// The class bound to `?name`.
pub fn var(subst: &Subst, name: &str) -> Option<Id> {
    let v: Var = name.parse().ok()?;
    subst.get(v).copied()
}

pub fn ty(egraph: &EG, id: Id) -> Option<&TensorType> {
    egraph[id].data.ty.as_ref()
}

/// The value every element of the class has, when that is known.
pub fn splat(egraph: &EG, id: Id) -> Option<f64> {
    match egraph[id].data.konst {
        Some(Konst::Splat(v)) => Some(v),
        _ => None,
    }
}

/// Whether every element is `v` (`0.0` also matches `-0.0`).
pub fn is_splat(egraph: &EG, id: Id, v: f64) -> bool {
    splat(egraph, id).is_some_and(|x| x == v)
}

/// The attribute in an attribute class.
pub fn attr(egraph: &EG, id: Id) -> Option<&Attr> {
    egraph[id].nodes.iter().find_map(|n| match n {
        TensorLang::Attr(a) => Some(a),
        TensorLang::Op { .. } => None,
    })
}

// ---- building replacements ----

/// Adds `op` over `operands`, with `declared` as the result type for ops
/// that take it from the node; `None` when the types do not fit.
pub fn add_op(
    egraph: &mut EG,
    op: Op,
    operands: &[Id],
    declared: Option<TensorType>,
) -> Option<Id> {
    let types: Vec<&TensorType> = operands
        .iter()
        .map(|&o| ty(egraph, o))
        .collect::<Option<_>>()?;
    let t = nnc_ir::infer::infer(&op, &types, declared.as_ref()).ok()?;
    if declared.as_ref().is_some_and(|d| *d != t) {
        return None;
    }
    let node = enode_of(egraph, &op, &t, operands);
    Some(egraph.add(node))
}

/// `x` reshaped to `t` (or `x` itself when it already has that type).
pub fn reshape(egraph: &mut EG, x: Id, t: TensorType) -> Option<Id> {
    if ty(egraph, x)? == &t {
        return Some(x);
    }
    add_op(egraph, Op::Reshape, &[x], Some(t))
}

/// `x` broadcast to `t` (or `x` itself).
pub fn broadcast(egraph: &mut EG, x: Id, t: TensorType) -> Option<Id> {
    if ty(egraph, x)? == &t {
        return Some(x);
    }
    add_op(egraph, Op::Broadcast, &[x], Some(t))
}

/// The constant `v` of type `t`.
pub fn constant(egraph: &mut EG, v: f64, t: TensorType) -> Id {
    let node = enode_of(egraph, &Op::Const(nnc_ir::Literal::Splat(v)), &t, &[]);
    egraph.add(node)
}

/// `x` brought to the matched class's type by a free broadcast, for
/// identities like `x * 1 = x` whose other operand may widen the result.
pub fn widen_to(egraph: &mut EG, x: Id, target: Id) -> Option<Id> {
    let t = ty(egraph, target)?.clone();
    broadcast(egraph, x, t)
}

/// Every rule set, in the order the levels enable them.
pub fn all_rules() -> Result<Vec<Rule>, String> {
    let mut rules = algebra::rules()?;
    rules.extend(layout::rules()?);
    rules.extend(training::rules()?);
    rules.extend(merge::rules()?);
    Ok(rules)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_pattern_rule_refuses_a_variable_its_left_side_does_not_bind() {
        let Err(e) = pat_rule("t", "bad", "", &["(neg ?x)", "(exp ?y)"], "?y") else {
            panic!("an unbound `?y` was accepted");
        };
        assert_eq!(e, "rule t/bad: `?y` is not bound by `(neg ?x)`");
    }

    #[test]
    fn every_rule_parses() {
        let rules = all_rules().unwrap();
        assert!(rules.len() > 50, "{} rules", rules.len());
    }
}
