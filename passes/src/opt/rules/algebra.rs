//! Algebraic identities, chains of layout ops, and reductions.
//!
//! Exactness: unless a rule's doc says otherwise, both sides compute the
//! same bits for every input (IEEE `f32` included), except that the sign
//! of a zero may differ where noted. Rules marked *reassociates* change the
//! order of a floating-point sum, so results may differ in the last bits;
//! the differential tests bound that.
//!
//! Constant folding is not a rule: the analysis computes the value of any
//! class whose operands are constants and adds the `const` node (counted
//! in the report as `algebra/constant-fold`).

use super::{
    add_op, attr, constant, is_splat, pat_rule, pat_rule_if, reshape, rule, ty, var, widen_to,
    Rule, EG,
};
use crate::opt::lang::Attr;
use egg::{Id, Subst};
use nnc_ir::{BinaryOp, Op, OpKind, ReduceOp, Ties, UnaryOp};

const SET: &str = "algebra";

pub fn rules() -> Result<Vec<Rule>, String> {
    let mut rules = vec![
        rule(
            SET,
            "mul-one",
            "x * 1 = x (broadcast to the product's shape when the one is larger)",
            &["(mul ?x ?c)", "(mul ?c ?x)"],
            |eg, id, s| identity(eg, id, s, 1.0),
        )?,
        rule(
            SET,
            "add-zero",
            "x + 0 = x (broadcast as needed; -0 + 0 is +0, so the sign of a zero may change)",
            &["(add ?x ?c)", "(add ?c ?x)"],
            |eg, id, s| identity(eg, id, s, 0.0),
        )?,
        rule(
            SET,
            "sub-zero",
            "x - 0 = x (broadcast as needed)",
            &["(sub ?x ?c)"],
            |eg, id, s| identity(eg, id, s, 0.0),
        )?,
        rule(
            SET,
            "div-one",
            "x / 1 = x (broadcast as needed)",
            &["(div ?x ?c)"],
            |eg, id, s| identity(eg, id, s, 1.0),
        )?,
        rule(
            SET,
            "zero-sub",
            "0 - x = -x (broadcast as needed; the sign of a zero may change)",
            &["(sub ?c ?x)"],
            |eg, id, s| {
                let (x, c) = (var(s, "?x")?, var(s, "?c")?);
                if !is_splat(eg, c, 0.0) {
                    return None;
                }
                let n = add_op(eg, Op::Unary(UnaryOp::Neg), &[x], None)?;
                widen_to(eg, n, id)
            },
        )?,
        pat_rule(SET, "neg-neg", "-(-x) = x", &["(neg (neg ?x))"], "?x")?,
        pat_rule_if(
            SET,
            "neg-into-constant",
            "-(x * c) = x * (-c) for a constant c, whose negation folds",
            &["(neg (mul ?x ?c))", "(neg (mul ?c ?x))"],
            "(mul ?x (neg ?c))",
            |eg, s| var(s, "?c").is_some_and(|c| eg[c].data.konst.is_some()),
        )?,
        rule(
            SET,
            "div-by-broadcast",
            "x / s = x * (1 / s) when s has at most an eighth of the result's elements (a scalar, \
             a per-row or per-channel divisor): one reciprocal per divisor element instead of a \
             division per result element (within an ulp: the reciprocal is rounded once more)",
            &["(div ?x ?s)"],
            |eg, id, s| {
                let (x, d) = (var(s, "?x")?, var(s, "?s")?);
                let divisor = ty(eg, d)?;
                let result = ty(eg, id)?;
                if divisor.dtype != nnc_ir::DType::F32 || eg[d].data.konst.is_some() {
                    return None;
                }
                // Symbolic dims (the batch) count as 1: a lower bound.
                let m: usize = result
                    .shape
                    .iter()
                    .map(|d| match d {
                        nnc_ir::Dim::Const(n) => *n,
                        nnc_ir::Dim::Sym(_) => 1,
                    })
                    .product();
                let n = divisor.const_numel()?;
                if n.saturating_mul(8) > m {
                    return None;
                }
                let one = constant(eg, 1.0, nnc_ir::TensorType::scalar(divisor.dtype));
                let r = add_op(eg, Op::Binary(BinaryOp::Div), &[one, d], None)?;
                add_op(eg, Op::Binary(BinaryOp::Mul), &[x, r], None)
            },
        )?,
        pat_rule_if(
            SET,
            "exp-log",
            "exp(log x) = x for x >= +0 (within an ulp or two; log(exp x) is left alone: exp overflows)",
            &["(exp (log ?x))"],
            "?x",
            |eg, s| var(s, "?x").is_some_and(|x| eg[x].data.nonneg),
        )?,
        rule(
            SET,
            "select-same",
            "select(c, x, x) = x (broadcast as needed)",
            &["(select ?c ?x ?x)"],
            |eg, id, s| widen_to(eg, var(s, "?x")?, id),
        )?,
        rule(
            SET,
            "transpose-transpose",
            "transpose(transpose(x, p), q) = transpose(x, p∘q), or x when that is the identity",
            &["(transpose (transpose ?x ?p) ?q)"],
            |eg, _, s| {
                let (x, p, q) = (var(s, "?x")?, var(s, "?p")?, var(s, "?q")?);
                let (Some(Attr::Perm(p)), Some(Attr::Perm(q))) = (attr(eg, p), attr(eg, q))
                else {
                    return None;
                };
                let perm: Vec<usize> = q.iter().map(|&i| p.get(i).copied()).collect::<Option<_>>()?;
                if perm.iter().enumerate().all(|(i, &p)| i == p) {
                    Some(x)
                } else {
                    add_op(eg, Op::Transpose { perm }, &[x], None)
                }
            },
        )?,
        rule(
            SET,
            "transpose-identity",
            "transpose(x, [0, 1, ...]) = x",
            &["(transpose ?x ?p)"],
            |eg, _, s| {
                let (x, p) = (var(s, "?x")?, var(s, "?p")?);
                match attr(eg, p) {
                    Some(Attr::Perm(p)) if p.iter().enumerate().all(|(i, &j)| i == j) => Some(x),
                    _ => None,
                }
            },
        )?,
        pat_rule(
            SET,
            "reshape-reshape",
            "reshape(reshape(x)) = reshape(x), or x when the shapes agree",
            &["(reshape (reshape ?x ?t1) ?t2)"],
            "(reshape ?x ?t2)",
        )?,
        pat_rule(
            SET,
            "broadcast-broadcast",
            "broadcast(broadcast(x)) = broadcast(x)",
            &["(broadcast (broadcast ?x ?t1) ?t2)"],
            "(broadcast ?x ?t2)",
        )?,
        rule(
            SET,
            "factor",
            "a*c + b*c = (a + b)*c: one product fewer (reassociates)",
            &[
                "(add (mul ?a ?c) (mul ?b ?c))",
                "(add (mul ?c ?a) (mul ?c ?b))",
                "(add (mul ?a ?c) (mul ?c ?b))",
                "(add (mul ?c ?a) (mul ?b ?c))",
            ],
            |eg, id, s| factor(eg, id, s, BinaryOp::Add),
        )?,
        rule(
            SET,
            "factor-sub",
            "a*c - b*c = (a - b)*c: one product fewer (reassociates)",
            &[
                "(sub (mul ?a ?c) (mul ?b ?c))",
                "(sub (mul ?c ?a) (mul ?c ?b))",
                "(sub (mul ?a ?c) (mul ?c ?b))",
                "(sub (mul ?c ?a) (mul ?b ?c))",
            ],
            |eg, id, s| factor(eg, id, s, BinaryOp::Sub),
        )?,
    ];
    // Reductions: one rule per kind, as the kind is part of the pattern.
    for op in [ReduceOp::Sum, ReduceOp::Mean, ReduceOp::Max] {
        let r = OpKind::Reduce(op).mnemonic();
        let short = op.name();
        if op != ReduceOp::Max {
            rules.push(pat_rule(
                SET,
                &format!("reduce-neg-{short}"),
                "reduce(-x) = -reduce(x) for sum and mean (negation commutes with rounding)",
                &[&format!("({r} (neg ?x) ?a)")],
                &format!("(neg ({r} ?x ?a))"),
            )?);
        }
        rules.push(rule(
            SET,
            &format!("reduce-reduce-{short}"),
            "reduce(reduce(x, a1), a2) = one reduction of x over both axis sets, for one kind \
             (sum and mean reassociate; max is exact)",
            &[&format!("({r} ({r} ?x ?a1) ?a2)")],
            move |eg, id, s| {
                let (x, a1, a2) = (var(s, "?x")?, var(s, "?a1")?, var(s, "?a2")?);
                merge_reductions(eg, id, op, x, a1, a2)
            },
        )?);
        rules.push(rule(
            SET,
            &format!("reshape-of-keepdim-{short}"),
            "reshape(reduce(x, axes, keepdim=true)) that drops exactly the reduced unit dims = \
             reduce(x, axes, keepdim=false)",
            &[&format!("(reshape ({r} ?x ?a) ?t)")],
            move |eg, _, s| {
                let (x, a) = (var(s, "?x")?, var(s, "?a")?);
                let Some(Attr::Axes {
                    axes,
                    keepdim: true,
                    ties,
                }) = attr(eg, a).cloned()
                else {
                    return None;
                };
                let keepdim = false;
                let reduce = Op::Reduce {
                    op,
                    axes,
                    keepdim,
                    ties,
                };
                add_op(eg, reduce, &[x], None)
            },
        )?);
    }
    // Implicit broadcasting: every elementwise op broadcasts its operands
    // itself, so an explicit broadcast of an operand is redundant whenever
    // the result keeps its type. One rule per op, as the op is the pattern.
    for &b in BinaryOp::ALL {
        let name = format!("implicit-broadcast-{}", b.name());
        let left = format!("({} (broadcast ?x ?t) ?y)", b.name());
        let right = format!("({} ?y (broadcast ?x ?t))", b.name());
        rules.push(rule(
            SET,
            &name,
            "op(broadcast(x), y) = op(x, y) when the result's type is unchanged",
            &[&left],
            move |eg, _, s| add_op(eg, Op::Binary(b), &[var(s, "?x")?, var(s, "?y")?], None),
        )?);
        rules.push(rule(
            SET,
            &format!("{name}'"),
            "op(y, broadcast(x)) = op(y, x) when the result's type is unchanged",
            &[&right],
            move |eg, _, s| add_op(eg, Op::Binary(b), &[var(s, "?y")?, var(s, "?x")?], None),
        )?);
    }
    Ok(rules)
}

/// `x op c = x` when `c` is the splat `v` (the identity of `op`).
fn identity(eg: &mut EG, id: Id, s: &Subst, v: f64) -> Option<Id> {
    let (x, c) = (var(s, "?x")?, var(s, "?c")?);
    if !is_splat(eg, c, v) {
        return None;
    }
    widen_to(eg, x, id)
}

/// `reduce(reduce(x, a1), a2)` as one reduction of `x`, brought to the
/// matched class's type.
fn merge_reductions(eg: &mut EG, id: Id, op: ReduceOp, x: Id, a1: Id, a2: Id) -> Option<Id> {
    // Only amax's ties merge: the first maximum over two nested axis sets
    // is not the first over their union in row-major order.
    let (
        Some(Attr::Axes {
            axes: ax1,
            keepdim: k1,
            ties: Ties::Split,
        }),
        Some(Attr::Axes {
            axes: ax2,
            ties: Ties::Split,
            ..
        }),
    ) = (attr(eg, a1).cloned(), attr(eg, a2).cloned())
    else {
        return None;
    };
    let ties = Ties::Split;
    let rank = ty(eg, x)?.rank();
    // Dims of the inner result, as dims of `x`.
    let inner_dims: Vec<usize> = if k1 {
        (0..rank).collect()
    } else {
        (0..rank).filter(|d| !ax1.contains(d)).collect()
    };
    let mut axes = ax1.clone();
    for &d in &ax2 {
        axes.push(*inner_dims.get(d)?);
    }
    axes.sort_unstable();
    axes.dedup();
    let target = ty(eg, id)?.clone();
    for keepdim in [false, true] {
        let r = add_op(
            eg,
            Op::Reduce {
                op,
                axes: axes.clone(),
                keepdim,
                ties,
            },
            &[x],
            None,
        )?;
        if ty(eg, r)? == &target {
            return Some(r);
        }
    }
    let r = add_op(
        eg,
        Op::Reduce {
            op,
            axes,
            keepdim: true,
            ties,
        },
        &[x],
        None,
    )?;
    reshape(eg, r, target)
}

/// `(a op b) * c` from a match binding `?a`, `?b`, `?c`, once per class:
/// a class holding a product already was factored (or is one), and
/// factoring every pair of its products again multiplies the e-graph
/// (a class with k products summed with another gives k² new sums).
fn factor(eg: &mut EG, id: Id, s: &Subst, op: BinaryOp) -> Option<Id> {
    let has_product = eg[id]
        .nodes
        .iter()
        .any(|n| n.kind() == Some(OpKind::Binary(BinaryOp::Mul)));
    if has_product {
        return None;
    }
    let (a, b, c) = (var(s, "?a")?, var(s, "?b")?, var(s, "?c")?);
    let sum = add_op(eg, Op::Binary(op), &[a, b], None)?;
    add_op(eg, Op::Binary(BinaryOp::Mul), &[sum, c], None)
}
