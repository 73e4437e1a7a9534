//! Cranelift emission of each kernel of the plan.
//!
//! Every kernel is specialized: sizes, strides and buffer addresses are
//! compile-time constants, so loops have constant bounds and address
//! arithmetic folds. Elementwise work runs `f32x4`/`i32x4` over the
//! innermost dimension when it is contiguous (or broadcast), with a scalar
//! tail, evaluating the loop's expression (`expr`: inline elementwise
//! work, several results per loop) per element; reductions evaluate their
//! operand's expression and accumulate each result in registers, sums in
//! a cascade (`reduce`); matrix products call the packed `sgemm`, or, for
//! the small shapes where that is measured to be slower, Cranelift-emitted
//! register-tiled loops (`matmul.rs`).
//!
//! This is the emitting half: everything here follows decisions the plan
//! made (`crate::plan`: views, grouping, expressions, matmul forms,
//! staging, splits), and nothing in the plan imports from here. By
//! concern: `builder` (loops, nests, loads, stores, fills), `elementwise`
//! (expression loops and copies), `reduce` (reductions, argmax), `take`
//! (gather, scatter-add), `product` (batches of matrix products, staged
//! windows, `sgemm` and convolution calls), `matmul` (small products as
//! Cranelift loops), `window` (`unfold`, `fold`), `expr` (an expression's
//! steps in registers), `random`, `vmath`, `host` (host functions and the
//! parallel trampoline's `nnc_parallel`), `program` (the JIT module and
//! the schedule).

mod base;
mod builder;
mod elementwise;
pub mod expr;
pub mod host;
pub mod matmul;
pub mod object;
mod product;
pub mod program;
pub mod random;
mod reduce;
mod scan;
mod take;
pub mod vmath;
pub mod window;

pub use elementwise::emit_copy;
pub use host::{Calls, Host};

use crate::plan::matmul::summed_view;
use crate::plan::split::{matmul_units, summed_units};
use crate::plan::{Base, Body, Kernel, Kind, Plan, StateLayout, View};
use crate::CodegenError;
use builder::{emit_fill, strided, Strided};
use cranelift_codegen::ir::{types, Type, Value};
use cranelift_frontend::FunctionBuilder;
use elementwise::{copy, emit_map};
use expr::Code;
use nnc_ir::{Graph, NodeId, Op};
use product::emit_matmul_node;
use reduce::{emit_argmax, emit_reduce_node};
use take::emit_take;

impl Kind {
    pub(crate) fn scalar(self) -> Type {
        match self {
            Kind::F32 => types::F32,
            Kind::I32 => types::I32,
        }
    }
    pub(crate) fn vector(self) -> Type {
        match self {
            Kind::F32 => types::F32X4,
            Kind::I32 => types::I32X4,
        }
    }
}

/// Absolute addresses of the state and work buffers a program uses.
pub struct Addresses<'a> {
    pub state: usize,
    pub work: usize,
    /// The program's GEMM packing scratch (`sgemm::Scratch`).
    pub scratch: usize,
    pub plan: &'a Plan,
    pub layout: &'a StateLayout,
}

impl Addresses<'_> {
    /// Byte address of element 0 of `view`.
    pub fn of(&self, view: &View) -> usize {
        let base = match view.base {
            Base::State(s) => self.state + self.layout.slots[s].offset,
            Base::Work(b) => self.work + self.plan.buffers[b].offset,
        };
        base + view.offset * 4
    }

    /// Byte address of work buffer `b`.
    pub fn buffer(&self, b: usize) -> usize {
        self.work + self.plan.buffers[b].offset
    }
}

/// The run-time arguments of a split kernel: the work units `[start, end)`
/// it computes, and its task index (`0` on the calling thread).
#[derive(Debug, Clone, Copy)]
pub struct Split {
    pub start: Value,
    pub end: Value,
    pub task: Value,
}

/// Emits the body of `kernel` into `b` (which ends it with a return).
///
/// With `range`, the kernel is one whose work
/// [`splits`](crate::plan::split::splits): it computes the work units
/// `[start, end)` of the run-time range only, as task `task` (which
/// selects its slice of staging scratch), and returns how many units its
/// whole work has.
pub fn emit_kernel(
    b: &mut FunctionBuilder,
    calls: &mut dyn Calls,
    graph: &Graph,
    kernel: &Kernel,
    at: &Addresses,
    status: usize,
    range: Option<Split>,
) -> Result<Option<usize>, CodegenError> {
    let plan = at.plan;
    let id = kernel.root;
    let node = graph.node(id);
    let view_of = |n: NodeId| -> Result<&View, CodegenError> {
        plan.views.get(&n).ok_or_else(|| {
            CodegenError::new(format!(
                "internal error: `{}` has no buffer",
                graph.node(n).op.mnemonic()
            ))
        })
    };
    let out_view = view_of(id)?;
    let out_addr = at.of(out_view);
    let out_kind = Kind::of(node.ty.dtype);
    match &kernel.body {
        Body::Map { outputs, expr } => {
            let code = Code::new(b, expr, at)?;
            let mut outs = Vec::new();
            for &o in outputs {
                let v = view_of(o)?;
                outs.push((strided(at.of(v), v), Kind::of(graph.ty(o).dtype)));
            }
            let units = range.map(|r| (r.start, r.end));
            let split = emit_map(b, calls, &code, &expr.shape, &outs, units)?;
            return Ok(Some(split.units));
        }
        Body::Operand(expr) => {
            let code = Code::new(b, expr, at)?;
            let units = range.map(|r| (r.start, r.end));
            return match &node.op {
                Op::Reduce { op, axes, .. } => {
                    if code.output_kind(0) != Kind::F32 {
                        return Err(CodegenError::new(
                            "the JIT reduces f32 tensors only (use --backend interp)",
                        ));
                    }
                    emit_reduce_node(b, calls, *op, &code, &expr.shape, axes, out_addr, units)
                }
                Op::Unfold { window, fill } => {
                    let word = crate::plan::value_word(*fill, node.ty.dtype);
                    window::emit_unfold(
                        b,
                        calls,
                        window,
                        word,
                        node.ty.dtype,
                        (&code, &expr.shape),
                        (out_addr, out_view),
                        units,
                    )
                }
                Op::Fold { window } => window::emit_fold(
                    b,
                    calls,
                    window,
                    node.ty.dtype,
                    (&code, &expr.shape),
                    (out_addr, out_view),
                    units,
                ),
                // The plan gives an operand loop only to ops that read
                // theirs as a prologue or a window (`Op::operand_use`).
                Op::Input { .. }
                | Op::Param { .. }
                | Op::State { .. }
                | Op::Const(_)
                | Op::Iota { .. }
                | Op::Unary(_)
                | Op::Binary(_)
                | Op::Select
                | Op::Cast
                | Op::ArgMax { .. }
                | Op::MatMul
                | Op::Reshape
                | Op::Transpose { .. }
                | Op::Broadcast
                | Op::Slice { .. }
                | Op::Concat { .. }
                | Op::Gather { .. }
                | Op::ScatterAdd { .. }
                | Op::Random { .. }
                | Op::Scan { .. } => Err(CodegenError::new(format!(
                    "internal error: `{}` does not loop over its operand",
                    node.op.mnemonic()
                ))),
            };
        }
        Body::Node => {}
        Body::Scan(_) => {
            return Err(CodegenError::new(
                "internal error: a loop is emitted by the program, not as a kernel",
            ))
        }
    }
    let operands = graph.operands(id);
    let operand = |i: usize| -> Result<(&View, usize, Kind), CodegenError> {
        let v = view_of(operands[i])?;
        Ok((v, at.of(v), Kind::of(graph.ty(operands[i]).dtype)))
    };
    match &node.op {
        Op::Reshape => {
            // The plan schedules a reshape only for an operand no view
            // reshapes: walk it in row-major order of its own shape into
            // the result.
            let (v, a, k) = operand(0)?;
            let dst = Strided {
                addr: out_addr,
                strides: crate::plan::row_major(&v.shape)
                    .iter()
                    .map(|s| s * 4)
                    .collect(),
            };
            copy(b, calls, &v.shape, dst, strided(a, v), k)?
        }
        Op::Concat { axis } => {
            let mut start = 0usize;
            for i in 0..operands.len() {
                let (v, a, k) = operand(i)?;
                let mut dst = strided(out_addr, out_view);
                dst.addr =
                    (dst.addr as isize + start as isize * out_view.strides[*axis] * 4) as usize;
                copy(b, calls, &v.shape, dst, strided(a, v), k)?;
                start += v.shape[*axis];
            }
        }
        Op::Reduce { axes, keepdim, .. } if plan.fused.contains(&operands[0]) => {
            // The plan fused the matmul this sums (`plan::summed_products`).
            let mm = operands[0];
            let [x, y] = graph.operands(mm)[..] else {
                return Err(CodegenError::new(
                    "internal error: a fused matmul's operands",
                ));
            };
            let (va, vb) = (view_of(x)?, view_of(y)?);
            let c = summed_view(va, vb, out_view, axes, *keepdim)?;
            let split = range.and_then(|r| Some((r, summed_units(graph, plan, id)?)));
            if split.is_none() {
                emit_fill(b, out_addr, out_view.numel(), 0.0);
            }
            let units = split.map(|(_, u)| u);
            emit_matmul_node(
                b,
                calls,
                graph,
                at,
                mm,
                (out_addr, &c),
                true,
                split.map(|(r, _)| r),
            )?;
            return Ok(units);
        }
        Op::ArgMax { axis } => {
            let (v, a, k) = operand(0)?;
            emit_argmax(b, v, a, k, *axis, out_addr);
        }
        Op::MatMul => {
            let split = range.and_then(|r| Some((r, matmul_units(graph, plan, id)?)));
            emit_matmul_node(
                b,
                calls,
                graph,
                at,
                id,
                (out_addr, out_view),
                false,
                split.map(|(r, _)| r),
            )?;
            return Ok(split.map(|(_, units)| units));
        }
        Op::Gather { axis } => {
            let (v, a, _) = operand(0)?;
            let (vi, ai, _) = operand(1)?;
            emit_take(
                b,
                false,
                out_kind,
                (a, v),
                (ai, vi),
                (out_addr, out_view),
                *axis,
                status,
            );
        }
        Op::ScatterAdd { axis } => {
            emit_fill(b, out_addr, out_view.numel(), 0.0);
            let (vu, au, _) = operand(0)?;
            let (vi, ai, _) = operand(1)?;
            emit_take(
                b,
                true,
                out_kind,
                (out_addr, out_view),
                (ai, vi),
                (au, vu),
                *axis,
                status,
            );
        }
        // Leaves and constants run no kernel, views are strides, and the
        // plan gives elementwise ops, `random`, reductions and windows loop
        // bodies of their own (above).
        Op::Input { .. }
        | Op::Param { .. }
        | Op::State { .. }
        | Op::Const(_)
        | Op::Iota { .. }
        | Op::Unary(_)
        | Op::Binary(_)
        | Op::Select
        | Op::Cast
        | Op::Reduce { .. }
        | Op::Transpose { .. }
        | Op::Broadcast
        | Op::Slice { .. }
        | Op::Unfold { .. }
        | Op::Fold { .. }
        | Op::Random { .. }
        | Op::Scan { .. } => {
            return Err(CodegenError::new(format!(
                "internal error: `{}` is not a kernel of its own",
                node.op.mnemonic()
            )))
        }
    }
    Ok(None)
}
