//! A `scan` loop's step (`crate::plan::scan`): the consts and initial
//! carries copied into the body's inputs once, then per trip a run-time
//! loop that copies slice `t` of each sequence in, calls the body's
//! compiled steps, copies the stacked results' slice `t` out and the next
//! carries into place; the final carries copied out at the end. The code is
//! the same size for any trip count.

use super::builder::{emit_for, strided, Strided};
use super::elementwise::copy_shifted;
use super::host::Calls;
use super::Addresses;
use crate::plan::scan::{slice_view, ScanPlan};
use crate::plan::{Kind, View};
use crate::CodegenError;
use cranelift_codegen::ir::{types, FuncRef, InstBuilder, Value};
use cranelift_frontend::FunctionBuilder;
use nnc_ir::{Graph, ScanResult};

/// Emits the whole loop `scan` (a kernel of the plan `outer` addresses)
/// whose body's steps are the functions `body_steps`, compiled for the
/// body's addresses `inner`.
pub fn emit_scan(
    b: &mut FunctionBuilder,
    calls: &mut dyn Calls,
    graph: &Graph,
    scan: &ScanPlan,
    outer: &Addresses,
    inner: &Addresses,
    body_steps: &[FuncRef],
) -> Result<(), CodegenError> {
    let body = &scan.body;
    let Some(&(_, root)) = scan.members.first() else {
        return Err(CodegenError::new("internal error: a loop with no nodes"));
    };
    let operands = graph.operands(root);
    let outer_view = |n| {
        outer
            .plan
            .views
            .get(&n)
            .ok_or_else(|| CodegenError::new("internal error: a scan operand has no buffer"))
    };
    let kind = |v: nnc_ir::NodeId| Kind::of(graph.ty(v).dtype);
    let body_kind = |v: nnc_ir::NodeId| Kind::of(body.graph.ty(v).dtype);
    let (consts, carries) = (body.consts, body.carries);
    let first_x = consts + carries;

    // Consts and initial carries, once.
    for (i, &o) in operands.iter().enumerate().take(first_x) {
        let src = outer_view(o)?;
        let dst = scan.input(i)?;
        copy_views(b, calls, (src, outer), (dst, inner), kind(o))?;
    }

    let mut error = None;
    emit_for(b, 0, scan.trip as i64, 1, &mut |b, i| {
        let t = if body.reverse {
            let last = b.ins().iconst(types::I64, scan.trip as i64 - 1);
            b.ins().isub(last, i)
        } else {
            i
        };
        if let Err(e) = trip(b, calls, graph, scan, outer, inner, body_steps, t) {
            error = Some(e);
        }
    });
    if let Some(e) = error {
        return Err(e);
    }

    // The last trip left the final carries in the carries' inputs.
    for (r, n) in scan.members_of(|r| matches!(r, ScanResult::FinalCarry(_))) {
        let ScanResult::FinalCarry(k) = r else {
            continue;
        };
        let dst = outer_view(n)?;
        let src = scan.input(consts + k)?;
        copy_views(
            b,
            calls,
            (src, inner),
            (dst, outer),
            body_kind(body.inputs[consts + k]),
        )?;
    }
    Ok(())
}

/// One trip over slice `t` (a run-time index).
#[allow(clippy::too_many_arguments)]
fn trip(
    b: &mut FunctionBuilder,
    calls: &mut dyn Calls,
    graph: &Graph,
    scan: &ScanPlan,
    outer: &Addresses,
    inner: &Addresses,
    body_steps: &[FuncRef],
    t: Value,
) -> Result<(), CodegenError> {
    let body = &scan.body;
    let (consts, carries, axis) = (body.consts, body.carries, body.axis);
    let first_x = consts + carries;
    let operands = graph.operands(scan.members[0].1);
    let outer_view = |n| {
        outer
            .plan
            .views
            .get(&n)
            .ok_or_else(|| CodegenError::new("internal error: a scan value has no buffer"))
    };
    let body_kind = |v: nnc_ir::NodeId| Kind::of(body.graph.ty(v).dtype);

    // Slice `t` of each sequence the body reads into its input.
    for (i, &o) in operands.iter().enumerate().skip(first_x) {
        if body.graph.users(body.inputs[i]).is_empty() {
            continue;
        }
        let xs = outer_view(o)?;
        let dst = scan.input(i)?;
        let (src, shift) = sliced(b, xs, outer, axis, t, &dst.shape)?;
        copy_shifted(
            b,
            calls,
            &dst.shape,
            (strided(inner.of(dst), dst), None),
            (src, Some(shift)),
            Kind::of(graph.ty(o).dtype),
        )?;
    }
    // The carries this trip starts from, and after the body its outputs,
    // into slice `t` of their stacked results.
    for (r, n) in scan.members_of(|r| matches!(r, ScanResult::CarriesIn(_))) {
        if let ScanResult::CarriesIn(k) = r {
            let node = body.inputs[consts + k];
            store_slice(
                b,
                calls,
                (scan.input(consts + k)?, inner),
                (n, outer),
                t,
                axis,
                body_kind(node),
            )?;
        }
    }
    let bases = super::base::base_args(b);
    for &f in body_steps {
        b.ins().call(f, &bases);
    }
    for (r, n) in scan.members_of(|r| matches!(r, ScanResult::Ys(_))) {
        if let ScanResult::Ys(y) = r {
            let node = body.graph.outputs[carries + y].node;
            store_slice(
                b,
                calls,
                (scan.output(carries + y)?, inner),
                (n, outer),
                t,
                axis,
                body_kind(node),
            )?;
        }
    }
    // Next carries: first those that read a carry input another one
    // overwrites go aside, then every carry into place.
    for k in 0..carries {
        if let Some(aside) = &scan.staging[k] {
            let kind = body_kind(body.inputs[consts + k]);
            copy_views(b, calls, (scan.output(k)?, inner), (aside, outer), kind)?;
        }
    }
    for k in 0..carries {
        if scan.carry_kept(k)? {
            continue;
        }
        let kind = body_kind(body.inputs[consts + k]);
        let dst = scan.input(consts + k)?;
        match &scan.staging[k] {
            Some(aside) => copy_views(b, calls, (aside, outer), (dst, inner), kind)?,
            None => copy_views(b, calls, (scan.output(k)?, inner), (dst, inner), kind)?,
        }
    }
    Ok(())
}

/// Copies the body's value `src` into slice `t` (a run-time index) along
/// `axis` of the loop's stacked result `node`.
fn store_slice(
    b: &mut FunctionBuilder,
    calls: &mut dyn Calls,
    (src, inner): (&View, &Addresses),
    (node, outer): (nnc_ir::NodeId, &Addresses),
    t: Value,
    axis: usize,
    kind: Kind,
) -> Result<(), CodegenError> {
    let stacked = outer
        .plan
        .views
        .get(&node)
        .ok_or_else(|| CodegenError::new("internal error: a scan value has no buffer"))?;
    let (dst, shift) = sliced(b, stacked, outer, axis, t, &src.shape)?;
    copy_shifted(
        b,
        calls,
        &src.shape,
        (dst, Some(shift)),
        (strided(inner.of(src), src), None),
        kind,
    )
}

/// Slice 0 of `view` along `axis`, and the run-time byte offset of slice `t`.
fn sliced(
    b: &mut FunctionBuilder,
    view: &View,
    at: &Addresses,
    axis: usize,
    t: Value,
    like: &[usize],
) -> Result<(Strided, Value), CodegenError> {
    let slice = slice_view(view, axis)?;
    if slice.shape != like {
        return Err(CodegenError::new(format!(
            "internal error: a scan's slice {:?} meets the body's {like:?}",
            slice.shape
        )));
    }
    let shift = b.ins().imul_imm_s(t, view.strides[axis] as i64 * 4);
    Ok((strided(at.of(view), &slice), shift))
}

/// `dst = src` (same shape), each view addressed by its own plan.
fn copy_views(
    b: &mut FunctionBuilder,
    calls: &mut dyn Calls,
    (src, src_at): (&View, &Addresses),
    (dst, dst_at): (&View, &Addresses),
    kind: Kind,
) -> Result<(), CodegenError> {
    if src.shape != dst.shape {
        return Err(CodegenError::new(format!(
            "internal error: a scan copies {:?} into {:?}",
            src.shape, dst.shape
        )));
    }
    copy_shifted(
        b,
        calls,
        &dst.shape,
        (strided(dst_at.of(dst), dst), None),
        (strided(src_at.of(src), src), None),
        kind,
    )
}
