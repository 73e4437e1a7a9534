//! Matrix products inside a kernel: a batch of `c = a @ b` (or `c += a @
//! b`) from run-time batch loops, each product as Cranelift loops
//! (`emit::matmul`), an `sgemm` call or a convolution from the image
//! (`crate::conv`), as `plan::matmul` chooses; staged operands unfolded
//! into scratch and staged results folded out of it per batch index. A
//! byte product (`i8`/`u8` operands, `i32` sums) is always an `igemm` call
//! per batch index ([`Operands::Bytes`]).

use super::base::emit_addr;
use super::builder::{addr_at, emit_fill, emit_fill_range, emit_for, range_loop, store};
use super::host::{Calls, Host};
use super::{Addresses, Split};
use crate::igemm::Signs;
use crate::plan::matmul::{column_pieces, columns_per_plane, conv_rows, folds_batch, Stage};
use crate::plan::View;
use crate::CodegenError;
use cranelift_codegen::ir::condcodes::IntCC;
use cranelift_codegen::ir::{types, InstBuilder, Value};
use cranelift_frontend::FunctionBuilder;
use nnc_ir::{DType, Graph, NodeId, Op};

/// What a product multiplies.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Operands {
    /// f32 matrices: Cranelift loops, `sgemm` or a convolution.
    F32,
    /// Byte matrices held one value per `i32` word, summed exactly into
    /// `i32`: always `nnc_igemm`, never staged (`nnc_ir::staging` stages
    /// f32 products only) and never as Cranelift loops (which are
    /// float-only).
    Bytes(Signs),
}

impl Operands {
    /// The operands of a matmul of `a` by `b`.
    pub(crate) fn of(a: DType, b: DType) -> Operands {
        if a.is_byte() && b.is_byte() {
            Operands::Bytes(Signs {
                a_signed: a == DType::I8,
                b_unsigned: b == DType::U8,
            })
        } else {
            Operands::F32
        }
    }
}

/// Emits the matmul `mm` (its operands' views from the plan) into the
/// result view `c`, with the plan's staging; see [`emit_matmul`].
#[allow(clippy::too_many_arguments)]
pub(crate) fn emit_matmul_node(
    b: &mut FunctionBuilder,
    calls: &mut dyn Calls,
    graph: &Graph,
    at: &Addresses,
    mm: NodeId,
    c: (usize, &View),
    accumulate: bool,
    split: Option<Split>,
) -> Result<(), CodegenError> {
    let plan = at.plan;
    let operands = graph.operands(mm);
    let [x, y] = operands[..] else {
        return Err(CodegenError::new("internal error: matmul operands"));
    };
    let stage = |slot: usize| -> Result<Option<Stage>, CodegenError> {
        let Some(s) = plan.staged.get(&(mm, slot)) else {
            return Ok(None);
        };
        let node = graph.node(s.window);
        // The unfolded side: the unfold itself, or the fold's operand.
        let (cols, image, window, fill) = match &node.op {
            Op::Unfold { window, fill } => {
                let image = graph.operands(s.window)[0];
                let word = crate::plan::value_word(*fill, node.ty.dtype);
                (s.window, image, window, Some(word))
            }
            Op::Fold { window } => (graph.operands(s.window)[0], s.window, window, None),
            _ => return Err(CodegenError::new("internal error: a staged window")),
        };
        let shape = &plan.views[&cols].shape;
        let image = &plan.views[&image];
        Ok(Some(Stage {
            window,
            fill,
            dtype: node.ty.dtype,
            image: (at.of(image), image),
            plane: shape[2..].iter().product(),
            channels: shape[1],
            planes: s.planes,
            scratch: at.buffer(s.scratch),
            stride: s.stride,
        }))
    };
    let stages = [stage(0)?, stage(1)?, stage(2)?];
    let (va, vb) = (&plan.views[&x], &plan.views[&y]);
    let operands = Operands::of(graph.ty(x).dtype, graph.ty(y).dtype);
    emit_matmul(
        b,
        calls,
        operands,
        (at.of(va), va),
        (at.of(vb), vb),
        c,
        at.scratch,
        accumulate,
        &stages,
        split,
        plan.tasks,
    )
}

/// A product summed over its batch (`c` has stride 0 along every batch
/// dim) whose operands walk the batch as if it continued their shared
/// dim (`a`'s columns, `b`'s rows), as `[m, k·batch] @ [k·batch, n]`: one
/// deep product. A recurrent weight's gradient `Σ_t h_t^T @ g_t` over
/// time-major stacks is `[H, T·B] @ [T·B, 4H]`, where a product per step
/// (`k = B`) ran each through its own packing and thread hand-off.
fn summed_into_depth(a: &View, bm: &View, c: &View) -> Option<[View; 3]> {
    let (ra, rb, rc) = (a.shape.len(), bm.shape.len(), c.shape.len());
    if rc < 3 || ra != rc || rb != rc {
        return None;
    }
    let nb = rc - 2;
    let batch = &c.shape[..nb];
    if c.strides[..nb].iter().any(|&s| s != 0) {
        return None;
    }
    let k = a.shape[ra - 1];
    let continues = |strides: &[isize], k_stride: isize, shape: &[usize]| {
        let mut extent = k_stride * k as isize;
        for i in (0..nb).rev() {
            if shape[i] != batch[i] || strides[i] != extent {
                return false;
            }
            extent *= batch[i] as isize;
        }
        true
    };
    let (a_cs, b_rs) = (a.strides[ra - 1], bm.strides[rb - 2]);
    if !continues(&a.strides, a_cs, &a.shape) || !continues(&bm.strides, b_rs, &bm.shape) {
        return None;
    }
    let depth = k * batch.iter().product::<usize>();
    let matrix = |v: &View, shape: [usize; 2]| View {
        base: v.base,
        offset: v.offset,
        shape: shape.to_vec(),
        strides: v.strides[v.strides.len() - 2..].to_vec(),
    };
    let (m, n) = (a.shape[ra - 2], bm.shape[rb - 1]);
    Some([
        matrix(a, [m, depth]),
        matrix(bm, [depth, n]),
        matrix(c, [m, n]),
    ])
}

/// `c = a @ b` (or `c += a @ b` when `accumulate`), batched over the
/// leading dims: small products (see `matmul::product_in_loops`) run as
/// Cranelift loops, the rest call `sgemm`, one product per batch index from
/// a run-time loop nest, so code size does not grow with the batch. Batch
/// dims that all operands walk uniformly are folded into the rows when the
/// right operand is shared across them. An operand broadcast along a batch
/// dim (stride 0: a convolution's weight `[G, O/G, K]` against columns
/// `[N, G, K, L]`) is read in place by every product, never copied.
///
/// A byte product ([`Operands::Bytes`]) calls `nnc_igemm` per batch index
/// (with the same batch folding, broadcasting and splitting), never
/// staged and never as loops.
///
/// `accumulate` always takes the `sgemm` path (the Cranelift loops
/// overwrite); `c` may then have stride 0 along batch dims, which sums the
/// products of those dims into one matrix (a matmul fused with the
/// `reduce_sum` over its batch that autodiff emits for a broadcast weight's
/// gradient).
///
/// `stages[slot]` (`a`, `b`, `c`) stages that slot through scratch: its
/// view then only locates its matrices within the unfolded tensor.
///
/// With `split`, only the indices `[start, end)` of the outermost batch dim
/// are computed (see [`matmul_units`]), staged through the task's slice of
/// scratch, with the task's own `sgemm` packing space (`0`: the worker's);
/// a product summed over its batch (`accumulate` with a staged `b`) is
/// split into `tasks` pieces of its columns instead (see [`summed_units`]).
#[allow(clippy::too_many_arguments)]
pub(crate) fn emit_matmul(
    b: &mut FunctionBuilder,
    calls: &mut dyn Calls,
    operands: Operands,
    a: (usize, &View),
    bm: (usize, &View),
    c: (usize, &View),
    scratch: usize,
    accumulate: bool,
    stages: &[Option<Stage>; 3],
    split: Option<Split>,
    tasks: usize,
) -> Result<(), CodegenError> {
    if split.is_none() && accumulate && stages.iter().all(Option::is_none) {
        if let Some([a2, b2, c2]) = summed_into_depth(a.1, bm.1, c.1) {
            return emit_matmul(
                b,
                calls,
                operands,
                (a.0, &a2),
                (bm.0, &b2),
                (c.0, &c2),
                scratch,
                accumulate,
                stages,
                None,
                tasks,
            );
        }
    }
    let (ra, rb, rc) = (a.1.shape.len(), bm.1.shape.len(), c.1.shape.len());
    let (m, k, n) = (a.1.shape[ra - 2], a.1.shape[ra - 1], bm.1.shape[rb - 1]);
    let batch = &c.1.shape[..rc - 2];
    let strides = |v: &View| crate::plan::batch_strides(v, batch);
    let (ba, bb, bc) = (strides(a.1), strides(bm.1), strides(c.1));
    let (a_rs, a_cs) = (a.1.strides[ra - 2], a.1.strides[ra - 1]);
    let (b_rs, b_cs) = (bm.1.strides[rb - 2], bm.1.strides[rb - 1]);
    let (c_rs, c_cs) = (c.1.strides[rc - 2], c.1.strides[rc - 1]);
    let staging = stages.iter().any(Option::is_some);
    if staging && operands != Operands::F32 {
        return Err(CodegenError::new(
            "internal error: a staged byte product (staging is for f32 only)",
        ));
    }
    let fold = folds_batch(a.1, bm.1, c.1, batch, staging);
    let folded = fold || batch.is_empty();
    let rows = if folded {
        m * batch.iter().product::<usize>()
    } else {
        m
    };
    if batch.contains(&0) {
        return Ok(());
    }
    let views = [a.1, bm.1, c.1];
    // Per slot: where its matrix starts (a staged slot's in its scratch),
    // and how far it moves per step along each batch dim: bytes, or planes
    // of the unfolded tensor when staged.
    let mut bases = [a.0, bm.0, c.0];
    let mut first_plane = [0usize; 3];
    for (slot, stage) in stages.iter().enumerate() {
        if let Some(st) = stage {
            let offset = views[slot].offset;
            bases[slot] = st.scratch + offset % st.plane * 4;
            first_plane[slot] = offset / st.plane;
        }
    }
    let steps: Vec<[isize; 3]> = if folded {
        Vec::new()
    } else {
        (0..batch.len())
            .map(|i| {
                let elements = [ba[i], bb[i], bc[i]];
                std::array::from_fn(|slot| match &stages[slot] {
                    Some(st) => elements[slot] / st.plane as isize,
                    None => elements[slot] * 4,
                })
            })
            .collect()
    };
    let lens: Vec<usize> = if folded { Vec::new() } else { batch.to_vec() };
    if let Some(st) = &stages[2] {
        if !st.image.1.is_contiguous() {
            return Err(CodegenError::new(
                "internal error: a staged fold's result must be a contiguous buffer",
            ));
        }
        match split {
            // Only this task's samples: the products of other tasks fold
            // into theirs.
            Some(sp) => {
                let sample = st.image.1.strides[0] as i64;
                let lo = b.ins().imul_imm_s(sp.start, sample);
                let hi = b.ins().imul_imm_s(sp.end, sample);
                emit_fill_range(b, st.image.0, lo, hi, sample % 4 == 0, 0.0);
            }
            None => emit_fill(b, st.image.0, st.image.1.numel(), 0.0),
        }
    }
    // Per slot: the task's offset into its staging scratch.
    let task_offsets: [Option<Value>; 3] = std::array::from_fn(|slot| {
        let (st, sp) = (stages[slot].as_ref()?, split?);
        Some(b.ins().imul_imm_s(sp.task, st.stride as i64))
    });
    let scratch_arg = match split {
        // Task 0 runs on the calling thread, with the program's packing
        // space; the others pass 0 for their thread's own.
        Some(sp) => {
            let first = b.ins().icmp_imm_s(IntCC::Equal, sp.task, 0);
            let own = emit_addr(b, scratch);
            let zero = b.ins().iconst(types::I64, 0);
            b.ins().select(first, own, zero)
        }
        None => emit_addr(b, scratch),
    };
    let in_place = crate::sgemm::reads_b_in_place(rows, k, a_cs, b_rs, b_cs);
    let small = operands == Operands::F32
        && !accumulate
        && crate::plan::matmul::product_in_loops(rows, n, k, in_place);
    // A split product summed over its batch: split by column pieces of
    // the staged `b` instead of by batch index (see `summed_units`).
    let by_planes = match (split, &stages) {
        (Some(_), [None, Some(st), None]) if accumulate => {
            let per_plane =
                columns_per_plane(bm.1, k, st.plane, st.planes, n).ok_or_else(|| {
                    CodegenError::new("internal error: a split summed product's columns")
                })?;
            Some((per_plane, st.planes))
        }
        _ => None,
    };
    // `at`: each slot's address, or a staged slot's first plane; `piece`:
    // only the columns `[j0, j1)` of a staged `b` and of `c`, unfolding
    // only the channels that hold them.
    let per_plane = by_planes.map_or(1, |(per_plane, _)| per_plane);
    // A convolution computed from the image (see `crate::conv`), one
    // whole sample per product: `w @ unfold(image)` (`b` the columns), or
    // its weight gradient `dy @ unfold(image)^T` (`b` transposed).
    let from_image = match &stages {
        [None, Some(st), None] if !accumulate && split.is_none_or(|_| by_planes.is_none()) => {
            let forward = conv_rows(st, views[1], (rows, k, n), (b_rs, b_cs), c_cs);
            let grad = || {
                let g = conv_rows(st, views[1], (rows, n, k), (b_cs, b_rs), 1)?;
                (a_cs == 1).then_some(g)
            };
            match forward {
                Some(g) => Some((Host::Conv2dRows, g)),
                None => grad().map(|g| (Host::Conv2dWeightGrad, g)),
            }
        }
        _ => None,
    };
    let mut product = |b: &mut FunctionBuilder,
                       at: [Value; 3],
                       piece: Option<(usize, usize)>|
     -> Result<(), CodegenError> {
        if let (Some((host, g)), Some(st)) = (&from_image, &stages[1]) {
            let mut scratch = emit_addr(b, st.scratch);
            if let Some(off) = task_offsets[1] {
                scratch = b.ins().iadd(scratch, off);
            }
            let image = stage_image(b, st, at[1]);
            let fill = i64::from(st.fill.unwrap_or(0));
            let mut konst = |v: isize| b.ins().iconst(types::I64, v as i64);
            let mut args = match host {
                // out, its row stride, image, weight, its strides, rows.
                Host::Conv2dRows => vec![
                    at[2],
                    konst(c_rs),
                    image,
                    at[0],
                    konst(a_rs),
                    konst(a_cs),
                    konst(rows as isize),
                ],
                // grad, its strides, dy, its row stride, rows, image.
                _ => vec![
                    at[2],
                    konst(c_rs),
                    konst(c_cs),
                    at[0],
                    konst(a_rs),
                    konst(rows as isize),
                    image,
                ],
            };
            args.push(scratch);
            for v in g.to_args().into_iter().chain([fill]) {
                args.push(b.ins().iconst(types::I64, v));
            }
            calls.call(b, *host, &args);
            return Ok(());
        }
        let mut addrs = at;
        let (j0, j1) = piece.unwrap_or((0, 0));
        let (p0, p1) = (j0 / per_plane, j1.div_ceil(per_plane));
        for (slot, stage) in stages.iter().enumerate() {
            if let Some(st) = stage {
                addrs[slot] = emit_addr(b, bases[slot]);
                if let Some(off) = task_offsets[slot] {
                    addrs[slot] = b.ins().iadd(addrs[slot], off);
                }
                if let Some(fill) = st.fill {
                    let (first, planes) = match piece {
                        Some(_) => (b.ins().iadd_imm_s(at[slot], p0 as i64), p1 - p0),
                        None => (at[slot], st.planes),
                    };
                    let image = stage_image(b, st, first);
                    super::window::emit_unfold_planes(
                        b,
                        calls,
                        st.window,
                        fill,
                        st.dtype,
                        st.image.1,
                        planes,
                        image,
                        addrs[slot],
                    )?;
                }
            }
        }
        // A piece's columns of `b` (within its first channel's) and of
        // `c`, and how many.
        let n = match (piece, by_planes) {
            (Some(_), Some(_)) => {
                let skipped = (j0 - p0 * per_plane) as i64 * b_cs as i64 * 4;
                addrs[1] = b.ins().iadd_imm_s(addrs[1], skipped);
                addrs[2] = b.ins().iadd_imm_s(addrs[2], j0 as i64 * c_cs as i64 * 4);
                j1 - j0
            }
            _ => n,
        };
        if small {
            use super::matmul::Mat;
            let mat = |rs: isize, cs: isize| Mat { addr: 0, rs, cs };
            super::matmul::emit_small_product(
                b,
                rows,
                n,
                k,
                mat(c_rs, c_cs),
                mat(a_rs, a_cs),
                mat(b_rs, b_cs),
                addrs,
            );
        } else {
            let consts = [
                rows as i64,
                n as i64,
                k as i64,
                c_rs as i64,
                c_cs as i64,
                a_rs as i64,
                a_cs as i64,
                b_rs as i64,
                b_cs as i64,
                i64::from(accumulate),
            ];
            let [m, n, k, c_rs, c_cs, a_rs, a_cs, b_rs, b_cs, acc] =
                consts.map(|v| b.ins().iconst(types::I64, v));
            // `nnc_sgemm`'s last argument is its packing space; the byte
            // product's is the operands' signs (it packs in its thread's).
            let (host, last) = match operands {
                Operands::F32 => (Host::Sgemm, scratch_arg),
                Operands::Bytes(signs) => (Host::Igemm, b.ins().iconst(types::I64, signs.bits())),
            };
            let [a, bm, c] = addrs;
            let args = [
                m, n, k, c, c_rs, c_cs, a, a_rs, a_cs, bm, b_rs, b_cs, acc, last,
            ];
            calls.call(b, host, &args);
        }
        if let Some(st) = &stages[2] {
            let image = stage_image(b, st, at[2]);
            super::window::emit_fold_planes(
                b, calls, st.window, st.dtype, st.image.1, st.planes, image, addrs[2],
            )?;
        }
        Ok(())
    };
    // A staged slot walks plane indices; the others, addresses.
    let start: [Value; 3] = std::array::from_fn(|slot| {
        if stages[slot].is_some() {
            b.ins().iconst(types::I64, first_plane[slot] as i64)
        } else {
            emit_addr(b, bases[slot])
        }
    });
    let (Some(sp), Some((per_plane, planes))) = (split, by_planes) else {
        let outer = split.map(|sp| (sp.start, sp.end));
        return batch_loops(b, &lens, &steps, start, outer, &mut |b, at| {
            product(b, at, None)
        });
    };
    // By column pieces: unit `u` zeroes its columns of the sum, then adds
    // every sample's product for them, in sample order.
    let pieces = column_pieces(per_plane * planes, tasks.min(n));
    let mut result = Ok(());
    range_loop(b, sp.start, sp.end, 1, &mut |b, u| {
        for (i, &(j0, j1)) in pieces.iter().enumerate() {
            let hit = b.ins().icmp_imm_s(IntCC::Equal, u, i as i64);
            let (this, next) = (b.create_block(), b.create_block());
            b.ins().brif(hit, this, &[], next, &[]);
            b.switch_to_block(this);
            let columns = j0..j1;
            emit_for(b, 0, rows as i64, 1, &mut |b, i| {
                let base = emit_addr(b, c.0);
                let row = addr_at(b, base, i, c_rs * 4);
                let zero = b.ins().f32const(0.0);
                emit_for(
                    b,
                    columns.start as i64,
                    columns.end as i64,
                    1,
                    &mut |b, j| {
                        let at = addr_at(b, row, j, c_cs * 4);
                        store(b, zero, at);
                    },
                );
            });
            if let Err(e) = batch_loops(b, &lens, &steps, start, None, &mut |b, at| {
                product(b, at, Some((j0, j1)))
            }) {
                result = Err(e);
            }
            b.ins().jump(next, &[]);
            b.switch_to_block(next);
        }
    });
    result
}

/// The address of a staged slice's first image plane: plane `p` of the
/// unfolded tensor is channel `p % C` of sample `p / C`.
pub(crate) fn stage_image(b: &mut FunctionBuilder, st: &Stage, plane: Value) -> Value {
    let (addr, view) = st.image;
    let c = b.ins().iconst(types::I64, st.channels as i64);
    let n = b.ins().udiv(plane, c);
    let ch = b.ins().urem(plane, c);
    let base = emit_addr(b, addr);
    let p = addr_at(b, base, n, view.strides[0] * 4);
    addr_at(b, p, ch, view.strides[1] * 4)
}

/// The work of one batch index of a matmul, given each slot's state.
pub(crate) type BatchBody<'a> =
    dyn FnMut(&mut FunctionBuilder, [Value; 3]) -> Result<(), CodegenError> + 'a;

/// Calls `body` once per index of the batch `lens` (row-major), from
/// run-time loops; `state[slot]` starts at `state` and moves by
/// `steps[dim][slot]` per step along each dim.
///
/// `outer`: a run-time range of the first dim's indices to loop over
/// instead of all of them (a split kernel's share; the first dim then has
/// at least two indices).
pub(crate) fn batch_loops(
    b: &mut FunctionBuilder,
    lens: &[usize],
    steps: &[[isize; 3]],
    state: [Value; 3],
    outer: Option<(Value, Value)>,
    body: &mut BatchBody,
) -> Result<(), CodegenError> {
    let Some((&len, rest)) = lens.split_first() else {
        return body(b, state);
    };
    if len == 1 && outer.is_none() {
        return batch_loops(b, rest, &steps[1..], state, None, body);
    }
    let mut result = Ok(());
    let mut level = |b: &mut FunctionBuilder, i: Value| {
        let here: [Value; 3] =
            std::array::from_fn(|slot| addr_at(b, state[slot], i, steps[0][slot]));
        if let Err(e) = batch_loops(b, rest, &steps[1..], here, None, body) {
            result = Err(e);
        }
    };
    match outer {
        Some((start, end)) => {
            range_loop(b, start, end, 1, &mut level);
        }
        None => emit_for(b, 0, len as i64, 1, &mut level),
    }
    result
}
