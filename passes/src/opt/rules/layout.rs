//! Layout: moving reshapes, transposes and broadcasts past elementwise ops.
//!
//! Views are free in the code generator (`codegen/src/plan.rs`), but they
//! stand between an elementwise producer and its consumer, and fusion
//! needs the consumer to be elementwise of the same shape. Sinking a view
//! below an elementwise op puts producer and consumer next to each other,
//! so they fuse; doing an elementwise op before a broadcast does it on the
//! small tensor. All rules here are exact.
//!
//! Transposes into matmul operands need no rule: the matmul kernels read
//! operands at any strides, so a transpose feeding a matmul is already a
//! free view (what "operand flags" are elsewhere).

use super::{add_op, broadcast, pat_rule, reshape, rule, ty, var, Rule};
use nnc_ir::{BinaryOp, Dim, Op, UnaryOp};

const SET: &str = "layout";

pub fn rules() -> Result<Vec<Rule>, String> {
    let mut rules = Vec::new();
    for &u in UnaryOp::ALL {
        let n = u.name();
        rules.push(pat_rule(
            SET,
            &format!("{n}-before-reshape"),
            "u(reshape(x)) = reshape(u(x)) for an elementwise unary u",
            &[&format!("({n} (reshape ?x ?t))")],
            &format!("(reshape ({n} ?x) ?t)"),
        )?);
        rules.push(pat_rule(
            SET,
            &format!("{n}-before-transpose"),
            "u(transpose(x, p)) = transpose(u(x), p) for an elementwise unary u",
            &[&format!("({n} (transpose ?x ?p))")],
            &format!("(transpose ({n} ?x) ?p)"),
        )?);
        rules.push(pat_rule(
            SET,
            &format!("{n}-before-broadcast"),
            "u(broadcast(x)) = broadcast(u(x)): u runs on the smaller tensor",
            &[&format!("({n} (broadcast ?x ?t))")],
            &format!("(broadcast ({n} ?x) ?t)"),
        )?);
    }
    rules.push(rule(
        SET,
        "cast-before-reshape",
        "cast(reshape(x)) = reshape(cast(x))",
        &["(cast (reshape ?x ?t) ?d)"],
        |eg, id, s| {
            let x = var(s, "?x")?;
            let t = ty(eg, id)?.clone();
            let c = add_op(eg, Op::Cast, &[x], Some(ty(eg, x)?.with_dtype(t.dtype)))?;
            reshape(eg, c, t)
        },
    )?);
    rules.push(rule(
        SET,
        "cast-before-broadcast",
        "cast(broadcast(x)) = broadcast(cast(x)): the cast runs on the smaller tensor",
        &["(cast (broadcast ?x ?t) ?d)"],
        |eg, id, s| {
            let x = var(s, "?x")?;
            let t = ty(eg, id)?.clone();
            let c = add_op(eg, Op::Cast, &[x], Some(ty(eg, x)?.with_dtype(t.dtype)))?;
            broadcast(eg, c, t)
        },
    )?);
    for &b in BinaryOp::ALL {
        let n = b.name();
        rules.push(rule(
            SET,
            &format!("{n}-before-reshape"),
            "op(reshape(a), reshape(b)) = reshape(op(a, b)) when a and b have one type, and \
             op(reshape(a), s) = reshape(op(a, s)) for a one-element s",
            &[
                &format!("({n} (reshape ?a ?t1) (reshape ?b ?t2))"),
                &format!("({n} (reshape ?a ?t1) ?b)"),
                &format!("({n} ?a (reshape ?b ?t2))"),
            ],
            move |eg, id, s| {
                let (a, b_) = (var(s, "?a")?, var(s, "?b")?);
                let (ta, tb) = (ty(eg, a)?, ty(eg, b_)?);
                // Same-typed sources line up element for element; a single
                // element lines up with anything. Nothing else is safe.
                if ta != tb && !one_element(&ta.shape) && !one_element(&tb.shape) {
                    return None;
                }
                let y = add_op(eg, Op::Binary(b), &[a, b_], None)?;
                let t = ty(eg, id)?.clone();
                reshape(eg, y, t)
            },
        )?);
    }
    rules.push(rule(
        SET,
        "reshape-of-broadcast-scalar",
        "reshape(broadcast(x)) = broadcast(reshape(x)) for a one-element x: \
         the reshape then moves one element, and the broadcast stays a view",
        &["(reshape (broadcast ?x ?t1) ?t2)"],
        |eg, id, s| {
            let x = var(s, "?x")?;
            if !one_element(&ty(eg, x)?.shape) {
                return None;
            }
            let t = ty(eg, id)?.clone();
            let ones = vec![Dim::Const(1); t.rank()];
            let r = reshape(eg, x, ty(eg, x)?.with_shape(ones))?;
            broadcast(eg, r, t)
        },
    )?);
    Ok(rules)
}

/// A shape of constant unit dims (or no dims).
fn one_element(shape: &[Dim]) -> bool {
    shape.iter().all(|d| d.is_one())
}
