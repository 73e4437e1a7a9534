//! Rules about the shapes autodiff and the prelude's layers produce in a
//! training step.
//!
//! - The ReLU mask `x > 0` of the backward pass is recomputed from the
//!   pre-activation `x`; reading it from the forward output `max(x, 0)`
//!   instead leaves `x` with one user, so `x` (a bias add, say) fuses into
//!   the ReLU and is never stored.
//! - Softmax is computed as `exp(z - max(z))`. The gradient through the
//!   `max` is zero in exact arithmetic (log-softmax does not change when
//!   every logit moves by one amount), but autodiff builds it anyway, from
//!   a row sum that is zero up to rounding. These rules prove that sum
//!   zero and drop the whole path (dead gradient elimination): they change
//!   the gradient by the rounding noise the path added, and NaN logits
//!   give a zero instead of a NaN on that path (the loss is NaN anyway).
//! - Zero gradients propagate: a 0/1 mask times zero, `select(c, 0, 0)`.
//!
//! Cross-entropy's backward is already `softmax * sum(onehot) - onehot`
//! scaled; the further step to `probs - onehot` needs every label in range
//! (one-hot rows summing to one), which the graph cannot prove, so it is
//! not done.

use super::{add_op, attr, constant, is_splat, multi_rule, rule, ty, var, widen_to, Rule, EG};
use crate::opt::lang::Attr;
use egg::Id;
use nnc_ir::{BinaryOp, Op, OpKind, UnaryOp};

const SET: &str = "training";

pub fn rules() -> Result<Vec<Rule>, String> {
    // The logsumexp backward: G + broadcast(sum(-G) / sum(E)) * E, in each
    // operand order autodiff may produce, with and without the broadcast.
    let mut softmax_sums = Vec::new();
    for bcast in [true, false] {
        let d = "(div (reduce_sum (neg ?g) ?a) (reduce_sum ?e ?a))";
        let d = if bcast {
            format!("(broadcast {d} ?t)")
        } else {
            d.to_string()
        };
        for m in [format!("(mul {d} ?e)"), format!("(mul ?e {d})")] {
            for sum in [format!("(add ?g {m})"), format!("(add {m} ?g)")] {
                softmax_sums.push(format!("(reduce_sum {sum} ?a)"));
            }
        }
    }
    let softmax_sums: Vec<&str> = softmax_sums.iter().map(String::as_str).collect();
    Ok(vec![
        multi_rule(
            SET,
            "relu-mask-from-output",
            "x > 0 = max(x, 0) > 0: the backward's ReLU mask reads the forward's output, \
             so the pre-activation has one user and fuses into the ReLU",
            "?r = (max ?x ?z), ?m = (gt ?x ?z)",
            "?m",
            |eg, _, s| {
                let (r, z) = (var(s, "?r")?, var(s, "?z")?);
                if !is_splat(eg, z, 0.0) {
                    return None;
                }
                add_op(eg, Op::Binary(BinaryOp::Gt), &[r, z], None)
            },
        )?,
        rule(
            SET,
            "softmax-gradient-sums-to-zero",
            "the log-softmax backward G + (sum(-G) / sum(E)) * E sums to zero over the softmax \
             axes (E = exp(...) of G's shape, so sum(E) > 0; zero up to rounding before)",
            &softmax_sums,
            |eg, id, s| {
                let (g, e, a) = (var(s, "?g")?, var(s, "?e")?, var(s, "?a")?);
                let is_exp = eg[e]
                    .nodes
                    .iter()
                    .any(|n| n.kind() == Some(OpKind::Unary(UnaryOp::Exp)));
                // The row sums must broadcast back along the reduced axes
                // (keepdim), and `E` must not itself be broadcast along
                // them, or the sum of `D * E` is not `D * sum(E)`.
                let keepdim = matches!(attr(eg, a), Some(Attr::Axes { keepdim: true, .. }));
                if !is_exp || !keepdim || ty(eg, g)? != ty(eg, e)? {
                    return None;
                }
                let t = ty(eg, id)?.clone();
                Some(constant(eg, 0.0, t))
            },
        )?,
        rule(
            SET,
            "zero-over-max-count",
            "0 / (number of maxima of x along the reduced axes) = 0: the count is at least 1 \
             unless x holds a NaN (or the axes are empty)",
            &[
                "(div ?z (reduce_sum (cast (eq ?x (reduce_max ?x ?a)) ?d) ?a))",
                "(div ?z (reduce_sum (cast (eq ?x (reshape (reduce_max ?x ?a0) ?t)) ?d) ?a))",
            ],
            |eg, id, s| {
                let z = var(s, "?z")?;
                if !is_splat(eg, z, 0.0) {
                    return None;
                }
                // With the reshape, the max and the count must reduce the
                // same axes.
                if let Some(a0) = var(s, "?a0") {
                    if !same_axes(eg, a0, var(s, "?a")?) {
                        return None;
                    }
                }
                widen_to(eg, z, id)
            },
        )?,
        rule(
            SET,
            "mask-times-zero",
            "m * 0 = 0 for finite m >= +0 (a 0/1 mask): the zero keeps its sign",
            &["(mul ?m ?z)", "(mul ?z ?m)"],
            |eg, id, s| {
                let (m, z) = (var(s, "?m")?, var(s, "?z")?);
                let d = &eg[m].data;
                if !(d.nonneg && d.finite && is_splat(eg, z, 0.0)) {
                    return None;
                }
                widen_to(eg, z, id)
            },
        )?,
        rule(
            SET,
            "select-zeros",
            "select(c, 0, 0) = 0: a zero gradient through a mask stays zero",
            &["(select ?c ?a ?b)"],
            |eg, id, s| {
                let (a, b) = (var(s, "?a")?, var(s, "?b")?);
                let za = super::splat(eg, a)?;
                let zb = super::splat(eg, b)?;
                if za != 0.0 || za.to_bits() != zb.to_bits() {
                    return None;
                }
                widen_to(eg, a, id)
            },
        )?,
    ])
}

/// Whether two axes attributes name the same axes (keepdim aside).
fn same_axes(eg: &EG, a: Id, b: Id) -> bool {
    match (attr(eg, a), attr(eg, b)) {
        (Some(Attr::Axes { axes: x, .. }), Some(Attr::Axes { axes: y, .. })) => x == y,
        _ => false,
    }
}
