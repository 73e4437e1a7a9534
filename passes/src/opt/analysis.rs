//! The e-class analysis: every class's tensor type, its constant value when
//! it has one, and two facts about its elements that conditional rules
//! need (non-negative, finite).
//!
//! Types come from `ir::infer`, so a class's type is exactly the type the
//! rebuilt graph's builder will infer. Every member of a class computes
//! the same tensor, so two classes may merge only when their types agree;
//! rules check that before they union (see `rules::merge_checked`), and
//! `merge` records any disagreement as an internal error.
//!
//! Constant folding lives here: a class whose operands are all constants
//! gets the value the reference interpreter computes (in `f32` mode, the
//! semantics compiled code has), and `modify` adds the `const` node for it.

use super::lang::{attrs_of, enode_of, to_ir_op, TensorLang};
use egg::{Analysis, DidMerge, EGraph, Id};
use nnc_ir::{
    DType, Dim, Env, EvalOptions, Graph, Literal, Op, OpClass, OpKind, TensorType, UnaryOp,
};
use std::sync::Arc;

/// Dense constants are folded only up to this many elements: folding a big
/// constant would trade a cheap kernel for a big literal in the program.
pub const DENSE_LIMIT: usize = 1024;

/// A class's value when it is a compile-time constant, as the interpreter
/// sees it (rounded to the dtype).
#[derive(Debug, Clone, PartialEq)]
pub enum Konst {
    /// Every element equals this value (any shape, also symbolic).
    Splat(f64),
    /// Row-major values of a constant-shaped tensor.
    Dense(Arc<Vec<f64>>),
}

impl Konst {
    fn same(&self, other: &Konst) -> bool {
        match (self, other) {
            (Konst::Splat(a), Konst::Splat(b)) => a.to_bits() == b.to_bits(),
            (Konst::Dense(a), Konst::Dense(b)) => {
                a.len() == b.len()
                    && a.iter()
                        .zip(b.iter())
                        .all(|(x, y)| x.to_bits() == y.to_bits())
            }
            _ => false,
        }
    }

    pub fn literal(&self) -> Literal {
        match self {
            Konst::Splat(v) => Literal::Splat(*v),
            Konst::Dense(vs) => Literal::Dense(vs.as_ref().clone()),
        }
    }
}

/// What the analysis knows about one class.
#[derive(Debug, Clone, Default)]
pub struct Data {
    /// The tensor type; `None` for attribute classes.
    pub ty: Option<TensorType>,
    pub konst: Option<Konst>,
    /// Every element is `+0.0`, positive, or NaN (never `-0.0`): products
    /// with `+0.0` stay `+0.0`, and `exp(log x) = x`.
    pub nonneg: bool,
    /// No element is infinite or NaN: `x * 0 = 0` needs it.
    pub finite: bool,
}

/// The analysis state of one e-graph.
#[derive(Debug, Default)]
pub struct TensorAnalysis {
    /// Merges of classes whose types differ: a rule bug. `optimize` fails
    /// rather than build a graph from them.
    pub conflicts: Vec<String>,
    /// `const` nodes added by constant folding.
    pub folds: usize,
    /// Rules stop adding nodes once the e-graph holds this many (0: no
    /// cap). egg checks its node limit only between iterations, and one
    /// iteration of a rule with many matches can add far more.
    pub node_cap: usize,
    /// Rewrites declined because of `node_cap`.
    pub capped: usize,
}

impl Analysis<TensorLang> for TensorAnalysis {
    type Data = Data;

    fn make(egraph: &mut EGraph<TensorLang, Self>, enode: &TensorLang, _id: Id) -> Data {
        make(egraph, enode).unwrap_or_default()
    }

    fn merge(&mut self, a: &mut Data, b: Data) -> DidMerge {
        if a.ty != b.ty {
            let show = |t: &Option<TensorType>| {
                t.as_ref().map_or("an attribute".into(), |t| t.to_string())
            };
            self.conflicts.push(format!(
                "merged a class of {} with one of {}",
                show(&a.ty),
                show(&b.ty)
            ));
            debug_assert!(false, "type conflict: {:?}", self.conflicts.last());
            return DidMerge(false, false);
        }
        let mut to_a = false;
        let mut to_b = false;
        match (&a.konst, b.konst) {
            (None, Some(k)) => {
                a.konst = Some(k);
                to_a = true;
            }
            (Some(_), None) => to_b = true,
            // Two routes to one value may round differently (a rule that
            // reassociates); keep the first, both are within tolerance.
            (Some(x), Some(y)) => to_b = !x.same(&y),
            (None, None) => {}
        }
        for (fa, fb) in [(&mut a.nonneg, b.nonneg), (&mut a.finite, b.finite)] {
            to_a |= fb && !*fa;
            to_b |= *fa && !fb;
            *fa |= fb;
        }
        DidMerge(to_a, to_b)
    }

    fn modify(egraph: &mut EGraph<TensorLang, Self>, id: Id) {
        let data = &egraph[id].data;
        let (Some(k), Some(ty)) = (data.konst.clone(), data.ty.clone()) else {
            return;
        };
        let has_const = egraph[id]
            .nodes
            .iter()
            .any(|n| n.kind() == Some(OpKind::Const));
        if has_const {
            return;
        }
        let node = enode_of(egraph, &Op::Const(k.literal()), &ty, &[]);
        let c = egraph.add(node);
        if egraph.union(id, c) {
            egraph.analysis.folds += 1;
        }
    }
}

fn make(egraph: &EGraph<TensorLang, TensorAnalysis>, enode: &TensorLang) -> Option<Data> {
    let TensorLang::Op { kind, .. } = enode else {
        return None;
    };
    let attrs = attrs_of(egraph, enode)?;
    let (op, declared) = to_ir_op(*kind, &attrs)?;
    let args: Vec<&Data> = enode.operands().iter().map(|&c| &egraph[c].data).collect();
    let types: Vec<&TensorType> = args.iter().map(|d| d.ty.as_ref()).collect::<Option<_>>()?;
    let ty = nnc_ir::infer::infer(&op, &types, declared.as_ref()).ok()?;
    let konst = fold(&op, &ty, &args);
    let (nonneg, finite) = facts(&op, &args, konst.as_ref());
    Some(Data {
        ty: Some(ty),
        konst,
        nonneg,
        finite,
    })
}

/// Non-negativity and finiteness of an op's result from its operands'.
fn facts(op: &Op, args: &[&Data], konst: Option<&Konst>) -> (bool, bool) {
    if let Some(k) = konst {
        let values: &[f64] = match k {
            Konst::Splat(v) => std::slice::from_ref(v),
            Konst::Dense(vs) => vs,
        };
        return (
            values.iter().all(|v| !v.is_sign_negative()),
            values.iter().all(|v| v.is_finite()),
        );
    }
    let all = |f: fn(&Data) -> bool| !args.is_empty() && args.iter().all(|d| f(d));
    let nonneg = |d: &Data| d.nonneg;
    let finite = |d: &Data| d.finite;
    let from_ints = |d: &Data| d.ty.as_ref().is_some_and(|t| !t.dtype.is_float());
    match op {
        Op::Iota { .. } | Op::Random { .. } => (true, true),
        // Integers and booleans convert to finite floats; a float cast
        // keeps the sign but may overflow (f64 to f32).
        Op::Cast => {
            let from_bool = args[0].ty.as_ref().is_some_and(|t| t.dtype == DType::Bool);
            (from_bool || args[0].nonneg, from_ints(args[0]))
        }
        Op::Unary(UnaryOp::Exp | UnaryOp::Sigmoid) => (true, false),
        Op::Unary(UnaryOp::Abs) => (true, all(finite)),
        Op::Unary(UnaryOp::Sqrt) => (all(nonneg), false),
        Op::Unary(UnaryOp::Neg) => (false, all(finite)),
        Op::Binary(b) if b.is_comparison() => (true, true),
        Op::Binary(nnc_ir::BinaryOp::Max | nnc_ir::BinaryOp::Min) => (all(nonneg), all(finite)),
        Op::Binary(nnc_ir::BinaryOp::Add | nnc_ir::BinaryOp::Mul | nnc_ir::BinaryOp::Div) => {
            (all(nonneg), false)
        }
        Op::Select => (
            args[1..].iter().all(|d| d.nonneg),
            args[1..].iter().all(|d| d.finite),
        ),
        Op::Reduce {
            op: nnc_ir::ReduceOp::Sum | nnc_ir::ReduceOp::Mean,
            ..
        } => (all(nonneg), false),
        Op::Reshape
        | Op::Transpose { .. }
        | Op::Broadcast
        | Op::Slice { .. }
        | Op::Concat { .. } => (all(nonneg), all(finite)),
        Op::Gather { .. } => (args[0].nonneg, args[0].finite),
        Op::Unfold { fill, .. } => (
            args[0].nonneg && !fill.is_sign_negative(),
            args[0].finite && fill.is_finite(),
        ),
        Op::Fold { .. } => (args[0].nonneg, false),
        _ => (false, false),
    }
}

/// The constant value of `op` over constant operands, computed by the
/// reference interpreter, or `None`.
fn fold(op: &Op, ty: &TensorType, args: &[&Data]) -> Option<Konst> {
    if let Op::Const(lit) = op {
        return Some(match lit {
            Literal::Splat(v) => Konst::Splat(nnc_ir::tensor::round_value(ty.dtype, *v)),
            Literal::Dense(vs) => Konst::Dense(Arc::new(
                vs.iter()
                    .map(|&v| nnc_ir::tensor::round_value(ty.dtype, v))
                    .collect(),
            )),
        });
    }
    if matches!(op, Op::Random { .. }) {
        return None;
    }
    if args.is_empty() {
        // `iota` of a small constant shape: its values, so that position
        // arithmetic on it (max-pool's window positions) folds to one
        // constant instead of being recomputed by every loop reading it.
        let small = ty.const_numel().is_some_and(|n| n <= DENSE_LIMIT);
        if !matches!(op, Op::Iota { .. }) || !small {
            return None;
        }
        let out = evaluate(op, ty, &[])?;
        return Some(match out.split_first() {
            Some((first, rest)) if rest.iter().all(|v| v.to_bits() == first.to_bits()) => {
                Konst::Splat(*first)
            }
            _ => Konst::Dense(Arc::new(out)),
        });
    }
    let konsts: Vec<&Konst> = args
        .iter()
        .map(|d| d.konst.as_ref())
        .collect::<Option<_>>()?;
    let splats: Option<Vec<f64>> = konsts
        .iter()
        .map(|k| match k {
            Konst::Splat(v) => Some(*v),
            Konst::Dense(_) => None,
        })
        .collect();
    if let Some(values) = splats {
        match op.class() {
            // A view of a splat is the same splat.
            OpClass::View => {
                return Some(Konst::Splat(values[0]));
            }
            OpClass::Join if values.iter().all(|v| v.to_bits() == values[0].to_bits()) => {
                return Some(Konst::Splat(values[0]));
            }
            // Elementwise over splats: one scalar evaluation, any shape.
            OpClass::Elementwise => {
                let scalars: Vec<(TensorType, Literal)> = args
                    .iter()
                    .zip(&values)
                    .map(|(d, &v)| {
                        let dtype = d.ty.as_ref().map_or(DType::F32, |t| t.dtype);
                        (TensorType::scalar(dtype), Literal::Splat(v))
                    })
                    .collect();
                let out = evaluate(op, &TensorType::scalar(ty.dtype), &scalars)?;
                return out.first().map(|&v| Konst::Splat(v));
            }
            _ => {}
        }
    }
    // Anything else: evaluate whole tensors, when every shape is constant
    // and small.
    let small = |t: &TensorType| t.const_numel().is_some_and(|n| n <= DENSE_LIMIT);
    if !small(ty) || !args.iter().all(|d| d.ty.as_ref().is_some_and(small)) {
        return None;
    }
    let operands: Vec<(TensorType, Literal)> = args
        .iter()
        .zip(&konsts)
        .map(|(d, k)| Some((d.ty.clone()?, k.literal())))
        .collect::<Option<_>>()?;
    let out = evaluate(op, ty, &operands)?;
    match out.split_first() {
        Some((first, rest)) if rest.iter().all(|v| v.to_bits() == first.to_bits()) => {
            Some(Konst::Splat(*first))
        }
        _ => Some(Konst::Dense(Arc::new(out))),
    }
}

/// Runs `op` on constant operands with the reference interpreter in `f32`
/// mode; `None` if the interpreter refuses (e.g. an integer division by
/// zero, which must stay a run-time error).
fn evaluate(op: &Op, ty: &TensorType, operands: &[(TensorType, Literal)]) -> Option<Vec<f64>> {
    if ty.shape.iter().any(|d| matches!(d, Dim::Sym(_))) {
        return None;
    }
    let mut g = Graph::new("fold");
    let mut ids = Vec::with_capacity(operands.len());
    for (t, lit) in operands {
        ids.push(g.add(Op::Const(lit.clone()), &[], Some(t.clone())).ok()?);
    }
    let declared = needs_declared(op).then(|| ty.clone());
    let out = g.add(op.clone(), &ids, declared).ok()?;
    g.set_output("out", out);
    let values = nnc_ir::eval(&g, &Env::new(), EvalOptions::F32).ok()?;
    values.get(out).map(|t| t.data.clone())
}

/// Ops whose result type is an attribute of the node.
pub fn needs_declared(op: &Op) -> bool {
    matches!(
        op,
        Op::Input { .. }
            | Op::Param { .. }
            | Op::State { .. }
            | Op::Const(_)
            | Op::Iota { .. }
            | Op::Cast
            | Op::Reshape
            | Op::Broadcast
            | Op::ScatterAdd { .. }
            | Op::Fold { .. }
            | Op::Random { .. }
    )
}
