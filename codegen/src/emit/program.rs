//! A compiled program: one Cranelift function per kernel plus a schedule
//! function that calls them in order and then writes the optimizer updates
//! back into the model state. The schedule is native code end to end:
//! running a step is one indirect call.

use super::base::{base_args, push_base_params, tagged, Region, BASES};
use super::host::{new_module, Calls, Host, HostCalls};
use super::scan::emit_scan;
use super::{emit_copy, emit_kernel, Addresses, Split};
use crate::plan::group::GroupConfig;
use crate::plan::scan::ScanPlan;
use crate::plan::split::splits;
use crate::plan::{self, value_word, Body, Kind, Plan, StateLayout, Step, View, ALIGN};
use crate::CodegenError;
use cranelift_codegen::ir::{types, AbiParam, InstBuilder};
use cranelift_codegen::Context;
use cranelift_frontend::{FunctionBuilder, FunctionBuilderContext};
use cranelift_jit::JITModule;
use cranelift_module::{FuncId, Linkage, Module};
use nnc_ir::{DType, Graph, Literal, Op, Tensor};
use std::collections::HashMap;
use std::time::{Duration, Instant};

/// A 64-byte aligned, zeroed, fixed-size buffer. It never reallocates, so
/// addresses baked into compiled code stay valid for its lifetime.
pub struct AlignedBuf {
    /// Zeroed bytes, `ALIGN` more than needed: the buffer starts at the
    /// first aligned address in them.
    raw: Box<[u8]>,
    start: usize,
    len: usize,
}

impl AlignedBuf {
    /// Zeroed by the allocator, which takes fresh pages (zero already) for
    /// a large buffer: writing every byte here, or asking for 64-byte
    /// alignment (which the system allocator zeroes by hand), made the
    /// compile time of a program grow with its arena (a `scan` of T = 1000
    /// stacks hundreds of MB).
    pub fn zeroed(bytes: usize) -> AlignedBuf {
        let len = bytes.div_ceil(ALIGN).max(1) * ALIGN;
        let raw = vec![0u8; len + ALIGN].into_boxed_slice();
        let start = (raw.as_ptr() as usize).next_multiple_of(ALIGN) - raw.as_ptr() as usize;
        AlignedBuf { raw, start, len }
    }
    pub fn addr(&self) -> usize {
        self.raw.as_ptr() as usize + self.start
    }
    pub fn len(&self) -> usize {
        self.len
    }
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }
    fn words(&self, byte_offset: usize, n: usize) -> &[u32] {
        assert!(byte_offset.is_multiple_of(4) && byte_offset + n * 4 <= self.len());
        // SAFETY: in bounds (checked), aligned to 4, and u32 has no invalid values.
        unsafe { std::slice::from_raw_parts((self.addr() + byte_offset) as *const u32, n) }
    }
    fn words_mut(&mut self, byte_offset: usize, n: usize) -> &mut [u32] {
        assert!(byte_offset.is_multiple_of(4) && byte_offset + n * 4 <= self.len());
        let start = self.start + byte_offset;
        // SAFETY: as above, and `&mut self` makes the borrow unique.
        unsafe { std::slice::from_raw_parts_mut(self.raw.as_mut_ptr().add(start) as *mut u32, n) }
    }
}

/// The model's persistent state (params and optimizer state), shared by
/// every program compiled for the model.
pub struct StateBuffer {
    pub layout: StateLayout,
    buf: AlignedBuf,
}

impl StateBuffer {
    pub fn new(layout: StateLayout) -> StateBuffer {
        let buf = AlignedBuf::zeroed(layout.bytes);
        StateBuffer { layout, buf }
    }

    /// The tensor `name` (for checkpoints and tests).
    pub fn get(&self, name: &str) -> Option<Tensor> {
        let slot = &self.layout.slots[self.layout.slot(name)?];
        let n: usize = slot.shape.iter().product();
        let words = self.buf.words(slot.offset, n);
        let data = words.iter().map(|&w| word_value(w, slot.dtype)).collect();
        Tensor::from_vec(slot.dtype, &slot.shape, data).ok()
    }

    /// Overwrites `name` with `value` (rounded to the slot's dtype).
    pub fn set(&mut self, name: &str, value: &Tensor) -> Result<(), CodegenError> {
        let i = self.layout.slot(name).ok_or_else(|| {
            CodegenError::new(format!("the model has no param or state `{name}`"))
        })?;
        let slot = self.layout.slots[i].clone();
        if slot.shape != value.shape {
            return Err(CodegenError::new(format!(
                "`{name}` has shape {:?} in the model but {:?} was given",
                slot.shape, value.shape
            )));
        }
        let words = self.buf.words_mut(slot.offset, value.data.len());
        for (w, &v) in words.iter_mut().zip(&value.data) {
            *w = value_word(v, slot.dtype);
        }
        Ok(())
    }

    pub fn addr(&self) -> usize {
        self.buf.addr()
    }

    /// The whole buffer, as compiled code reads it (for an object's data).
    pub fn bytes(&self) -> &[u8] {
        &self.buf.raw[self.buf.start..self.buf.start + self.buf.len]
    }
}

fn word_value(w: u32, dtype: DType) -> f64 {
    match Kind::of(dtype) {
        Kind::F32 => f64::from(f32::from_bits(w)),
        Kind::I32 => f64::from(w as i32),
    }
}

/// The control block at the start of the work arena: a status word that
/// kernels set on a fault (an index out of range); an ahead-of-time
/// object's C side keeps its packing space's pointer at byte 8 and its
/// weights' at byte 16.
pub(crate) const CONTROL: usize = ALIGN;

/// A fault a kernel reported while running.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Fault {
    #[error("an index was out of range in a gather or scatter (e.g. an embedding id or a label)")]
    IndexOutOfRange,
}

/// Compile statistics, for `nnc bench` and reports.
#[derive(Debug, Clone, Default)]
pub struct CompileStats {
    pub kernels: usize,
    pub plan_time: Duration,
    pub codegen_time: Duration,
    pub arena_bytes: usize,
    pub unshared_bytes: usize,
    /// The live-set lower bound of the arena ([`crate::plan::Plan::live_bytes`]).
    pub live_bytes: usize,
    /// Floating-point operations per run, summed over the kernels
    /// ([`crate::plan::summary::KernelInfo::flops`]).
    pub flops: u64,
    /// Bytes read and written per run, summed over the kernels.
    pub bytes_moved: u64,
}

/// A compiled function of a program: the schedule, or one of its kernels,
/// called with the program's base addresses (see `emit::base`).
type Entry = unsafe extern "C" fn(usize, usize, usize);

pub struct Program {
    module: Option<JITModule>,
    entry: Entry,
    /// The state, work arena and packing scratch addresses the code runs on.
    bases: [usize; 3],
    work: AlignedBuf,
    /// GEMM packing space (when the program has matrix products); boxed so
    /// its address, baked into the code, is stable.
    _scratch: Option<Box<crate::sgemm::Scratch>>,
    plan: Plan,
    /// Each kernel the schedule calls, in order, with a label (op and
    /// shape) for [`Program::profile`].
    kernels: Vec<(String, Entry)>,
    /// What each of them covers, computes and moves.
    infos: Vec<crate::plan::summary::KernelInfo>,
    /// Each loop body's kernels (labelled as by
    /// [`loop_bodies`](crate::plan::summary::loop_bodies)), which the
    /// loop's kernel calls once per trip.
    body_kernels: Vec<(crate::plan::summary::KernelInfo, String, Entry)>,
    graph_outputs: Vec<(String, View, DType)>,
    inputs: HashMap<String, (View, DType)>,
    pub stats: CompileStats,
}

impl Drop for Program {
    fn drop(&mut self) {
        if let Some(m) = self.module.take() {
            // SAFETY: nothing calls into this module's code after the
            // program (its only owner) is dropped.
            unsafe { m.free_memory() };
        }
    }
}

impl Program {
    /// Specializes `graph` to `bindings`, plans its memory and compiles it.
    /// `state` must outlive the program.
    pub fn compile(
        graph: &Graph,
        bindings: &HashMap<String, usize>,
        state: &StateBuffer,
    ) -> Result<Program, CodegenError> {
        Program::compile_with(graph, bindings, state, &GroupConfig::default())
    }

    /// [`Program::compile`] with the kernel grouping rule `config`
    /// ([`GroupConfig::greedy`] is the baseline grouping, for comparisons).
    pub fn compile_with(
        graph: &Graph,
        bindings: &HashMap<String, usize>,
        state: &StateBuffer,
        config: &GroupConfig,
    ) -> Result<Program, CodegenError> {
        let t0 = Instant::now();
        let plan = plan::plan_with(graph, bindings, &state.layout, config)?;
        let infos = crate::plan::summary::summarize(&plan, graph);
        let plan_time = t0.elapsed();
        let t1 = Instant::now();
        let mut work = AlignedBuf::zeroed(CONTROL + plan.arena_bytes);
        // A matmul may also run inside another node's kernel (one fused
        // into the `reduce_sum` of its batch).
        let mut scratch = has_matmul(&plan, graph).then(|| Box::new(crate::sgemm::Scratch::new()));
        // The code addresses buffers relative to these (see `emit::base`).
        let bases = [
            state.addr(),
            work.addr(),
            scratch
                .as_mut()
                .map_or(0, |s| &mut **s as *mut crate::sgemm::Scratch as usize),
        ];
        let at = relocatable(&plan, &state.layout);
        let mut module = new_module()?;
        let (step_id, kernels, bodies) =
            compile_functions(&mut module, graph, &at, ("step", Linkage::Local))?;
        module
            .finalize_definitions()
            .map_err(|e| CodegenError::new(format!("cranelift: {e}")))?;
        let code = module.get_finalized_function(step_id);
        // SAFETY: `step` was declared with the signature of `Entry` and the
        // module stays alive (owned by the program) while it can be called.
        let entry: Entry = unsafe { std::mem::transmute(code) };
        let kernel_fns = kernels
            .iter()
            .zip(infos.iter().map(|i| i.label.clone()))
            .map(|(&k, label)| {
                let code = module.get_finalized_function(k);
                // SAFETY: every kernel was declared as `step` was.
                let f: Entry = unsafe { std::mem::transmute(code) };
                (label, f)
            })
            .collect();
        let body_ids: HashMap<String, FuncId> = bodies.into_iter().collect();
        let mut body_kernels = Vec::new();
        for (name, info) in crate::plan::summary::loop_bodies(&plan) {
            let Some(&id) = body_ids.get(&name) else {
                return Err(CodegenError::new(format!(
                    "internal error: loop body kernel {name} was not compiled"
                )));
            };
            let code = module.get_finalized_function(id);
            // SAFETY: body kernels are declared as `step` was.
            let f: Entry = unsafe { std::mem::transmute(code) };
            body_kernels.push((info, name, f));
        }

        // Constants are data, written once.
        each_constant(graph, &at, &mut |offset, words| {
            work.words_mut(offset, words.len()).copy_from_slice(words)
        });
        let inputs = plan
            .inputs
            .iter()
            .map(|(name, id)| (name.clone(), (plan.views[id].clone(), graph.ty(*id).dtype)))
            .collect();
        let graph_outputs = plan
            .outputs
            .iter()
            .map(|(name, id)| (name.clone(), plan.views[id].clone(), graph.ty(*id).dtype))
            .collect();
        let stats = CompileStats {
            kernels: kernels.len(),
            plan_time,
            codegen_time: t1.elapsed(),
            arena_bytes: plan.arena_bytes,
            unshared_bytes: plan.unshared_bytes,
            live_bytes: plan.live_bytes,
            flops: infos.iter().map(|i| i.flops).sum(),
            bytes_moved: infos.iter().map(|i| i.bytes_read + i.bytes_written).sum(),
        };
        Ok(Program {
            module: Some(module),
            entry,
            bases,
            work,
            _scratch: scratch,
            plan,
            kernels: kernel_fns,
            infos,
            body_kernels,
            graph_outputs,
            inputs,
            stats,
        })
    }

    /// Byte offset of a work-arena view in the arena (`None` for state).
    fn work_offset(&self, view: &View) -> Option<usize> {
        match view.base {
            plan::Base::Work(b) => Some(CONTROL + self.plan.buffers[b].offset + view.offset * 4),
            plan::Base::State(_) => None,
        }
    }

    /// The buffer an input is written into: `[batch, ...sample]` values.
    pub fn input_words(&mut self, name: &str) -> Option<(&mut [u32], DType)> {
        // No clone of the view: this runs every step and must not allocate.
        let (view, dtype) = self.inputs.get(name)?;
        let (off, n, dtype) = (self.work_offset(view)?, view.numel(), *dtype);
        Some((self.work.words_mut(off, n), dtype))
    }

    pub fn has_input(&self, name: &str) -> bool {
        self.inputs.contains_key(name)
    }

    /// Writes f32 values into input `name` (its length must match).
    pub fn set_input_f32(&mut self, name: &str, values: &[f32]) -> Result<(), CodegenError> {
        let (words, dtype) = self
            .input_words(name)
            .ok_or_else(|| CodegenError::new(format!("the program has no input `{name}`")))?;
        if words.len() != values.len() || Kind::of(dtype) != Kind::F32 {
            return Err(CodegenError::new(format!(
                "input `{name}` takes {} {dtype} values, got {} f32",
                words.len(),
                values.len()
            )));
        }
        for (w, v) in words.iter_mut().zip(values) {
            *w = v.to_bits();
        }
        Ok(())
    }

    /// Writes i32 values into input `name` (its length must match).
    pub fn set_input_i32(&mut self, name: &str, values: &[i32]) -> Result<(), CodegenError> {
        let (words, dtype) = self
            .input_words(name)
            .ok_or_else(|| CodegenError::new(format!("the program has no input `{name}`")))?;
        if words.len() != values.len() || Kind::of(dtype) != Kind::I32 {
            return Err(CodegenError::new(format!(
                "input `{name}` takes {} {dtype} values, got {} i32",
                words.len(),
                values.len()
            )));
        }
        for (w, v) in words.iter_mut().zip(values) {
            *w = *v as u32;
        }
        Ok(())
    }

    /// Runs the schedule once.
    pub fn run(&mut self) -> Result<(), Fault> {
        // SAFETY: the code was compiled for this program's arena and its
        // state buffer, both alive; inputs are plain data.
        unsafe { (self.entry)(self.bases[0], self.bases[1], self.bases[2]) };
        let status = self.work.words_mut(0, 1);
        if status[0] != 0 {
            status[0] = 0;
            return Err(Fault::IndexOutOfRange);
        }
        Ok(())
    }

    /// Every step of the schedule in order (kernels, then the copies of
    /// updates into the state): its label, the IR nodes it covers, its
    /// FLOPs and the bytes it reads and writes; see
    /// [`KernelInfo`](crate::KernelInfo). The labels are those of
    /// [`Program::profile`]. For `nnc compile --emit kernels`, e.g. one
    /// line per kernel with its `Display`.
    pub fn kernels(&self) -> &[crate::plan::summary::KernelInfo] {
        &self.infos
    }

    /// Runs the schedule once, kernel by kernel, and returns each kernel's
    /// label (op and result shape) and wall time, in schedule order: where
    /// a step's time goes (benches, `nnc bench`). Results are those of
    /// [`Program::run`].
    pub fn profile(&mut self) -> Result<Vec<(String, Duration)>, Fault> {
        let mut times = Vec::with_capacity(self.kernels.len());
        for (label, f) in &self.kernels {
            let t = Instant::now();
            // SAFETY: as in `run`: the kernels of the schedule, in its order.
            unsafe { f(self.bases[0], self.bases[1], self.bases[2]) };
            times.push((label.clone(), t.elapsed()));
        }
        let status = self.work.words_mut(0, 1);
        if status[0] != 0 {
            status[0] = 0;
            return Err(Fault::IndexOutOfRange);
        }
        Ok(times)
    }

    /// Each loop body's kernels (`k23.k4`: kernel 4 of the body of the
    /// loop at step 23) with the median wall time of one call over `runs`
    /// calls: where a loop's trips go. The kernels run on the values the
    /// last trip of the last run left in the body's region (call after
    /// [`Program::run`]); they write only that region, which every trip
    /// rewrites, so later runs are unaffected.
    pub fn profile_loop_bodies(
        &mut self,
        runs: usize,
    ) -> Vec<(crate::plan::summary::KernelInfo, String, Duration)> {
        let mut out = Vec::with_capacity(self.body_kernels.len());
        let [state, work, scratch] = self.bases;
        for (info, name, f) in &self.body_kernels {
            let mut times: Vec<Duration> = (0..runs.max(1))
                .map(|_| {
                    let t = Instant::now();
                    // SAFETY: the kernel addresses the pinned body region,
                    // the state and constants, all alive; it was compiled
                    // to run after the body's earlier kernels, whose
                    // results of the last trip are still in the region.
                    unsafe { f(state, work, scratch) };
                    t.elapsed()
                })
                .collect();
            times.sort();
            out.push((info.clone(), name.clone(), times[times.len() / 2]));
        }
        // A kernel run out of order may have reported an index fault.
        self.work.words_mut(0, 1)[0] = 0;
        out
    }

    /// A one-element output (loss, accuracy), read without allocating.
    pub fn scalar(&self, name: &str, state: &StateBuffer) -> Option<f64> {
        let (_, view, dtype) = self.graph_outputs.iter().find(|(n, _, _)| n == name)?;
        if view.numel() != 1 {
            return None;
        }
        let w = match view.base {
            plan::Base::Work(b) => self
                .work
                .words(CONTROL + self.plan.buffers[b].offset + view.offset * 4, 1)[0],
            plan::Base::State(s) => state
                .buf
                .words(state.layout.slots[s].offset + view.offset * 4, 1)[0],
        };
        Some(word_value(w, *dtype))
    }

    /// An output as a tensor (allocates; not for the training hot path).
    pub fn output(&self, name: &str, state: &StateBuffer) -> Option<Tensor> {
        let (_, view, dtype) = self.graph_outputs.iter().find(|(n, _, _)| n == name)?;
        let (buf, base_off) = match view.base {
            plan::Base::Work(b) => (&self.work, CONTROL + self.plan.buffers[b].offset),
            plan::Base::State(s) => (&state.buf, state.layout.slots[s].offset),
        };
        let numel = view.numel();
        let mut data = Vec::with_capacity(numel);
        let strides = &view.strides;
        for flat in 0..numel {
            let (mut rem, mut off) = (flat, view.offset as isize);
            for i in (0..view.shape.len()).rev() {
                off += (rem % view.shape[i]) as isize * strides[i];
                rem /= view.shape[i];
            }
            let w = buf.words(base_off + off as usize * 4, 1)[0];
            data.push(word_value(w, *dtype));
        }
        Tensor::from_vec(*dtype, &view.shape, data).ok()
    }

    pub fn output_names(&self) -> impl Iterator<Item = &str> {
        self.graph_outputs.iter().map(|(n, _, _)| n.as_str())
    }
}

/// Whether `plan` or a loop body in it multiplies f32 matrices (and so
/// needs the `sgemm` packing scratch; byte products pack in their
/// thread's, see `host::nnc_igemm`).
fn has_matmul(plan: &Plan, graph: &Graph) -> bool {
    let is_matmul = |id: &nnc_ir::NodeId| {
        let node = graph.node(*id);
        matches!(node.op, nnc_ir::Op::MatMul) && node.ty.dtype.is_float()
    };
    plan.fused.iter().any(is_matmul)
        || plan.kernels.iter().any(|k| match &k.body {
            Body::Scan(scan) => has_matmul(&scan.plan, &scan.body.graph),
            _ => is_matmul(&k.root),
        })
}

/// The constants of `at`'s plan, and of every loop body in it: each one's
/// byte offset in the arena (from its start) and its words, for `write`.
pub(crate) fn each_constant(graph: &Graph, at: &Addresses, write: &mut dyn FnMut(usize, &[u32])) {
    let plan = at.plan;
    for &id in &plan.constants {
        // The arena starts zeroed and a constant's buffer is its own for
        // the whole program (constants are pinned, and so is a loop body's
        // region): zeros need no writing. The zero paddings a gradient
        // reads are as long as the sequence, so writing them made compile
        // time grow with it.
        if matches!(graph.node(id).op, Op::Const(Literal::Splat(v)) if v.to_bits() == 0) {
            continue;
        }
        let view = &plan.views[&id];
        let words = plan::constant_words(graph, id, &view.shape);
        write(at.of(view) - tagged(Region::Work, 0), &words);
    }
    for k in &plan.kernels {
        if let Body::Scan(scan) = &k.body {
            each_constant(&scan.body.graph, &body_addresses(at, scan), write);
        }
    }
}

/// The addresses code compiled for `plan` uses: relative to the base
/// arguments (see [`super::base`]), the arena's buffers after its control
/// block.
pub(crate) fn relocatable<'a>(plan: &'a Plan, layout: &'a StateLayout) -> Addresses<'a> {
    Addresses {
        state: tagged(Region::State, 0),
        work: tagged(Region::Work, CONTROL),
        scratch: tagged(Region::Scratch, 0),
        plan,
        layout,
    }
}

/// Compiles every kernel of `at`'s plan into `module` and the schedule
/// that calls them in order, named and linked as `schedule` says: the
/// schedule's id, the kernels' (in order) and the loop bodies' (by name).
/// Every function takes the base addresses (see [`super::base`]).
#[allow(clippy::type_complexity)]
pub(crate) fn compile_functions(
    module: &mut dyn Module,
    graph: &Graph,
    at: &Addresses,
    schedule: (&str, Linkage),
) -> Result<(FuncId, Vec<FuncId>, Vec<(String, FuncId)>), CodegenError> {
    let mut host_ids: HashMap<Host, FuncId> = HashMap::new();
    let mut ctx = module.make_context();
    let mut fctx = FunctionBuilderContext::new();
    let (kernels, bodies) = {
        let mut c = Compiler {
            module: &mut *module,
            host_ids: &mut host_ids,
            ctx: &mut ctx,
            fctx: &mut fctx,
            status: tagged(Region::Work, 0),
            bodies: Vec::new(),
        };
        let kernels = c.steps(graph, at, "k")?;
        (kernels, c.bodies)
    };
    ctx.func.signature = kernel_signature(&*module);
    {
        let mut b = FunctionBuilder::new(&mut ctx.func, &mut fctx);
        let entry = b.create_block();
        b.append_block_params_for_function_params(entry);
        b.switch_to_block(entry);
        let bases = base_args(&b);
        for &k in &kernels {
            let f = module.declare_func_in_func(k, b.func);
            b.ins().call(f, &bases);
        }
        b.ins().return_(&[]);
        b.seal_all_blocks();
        b.finalize(module.target_config());
    }
    let (name, linkage) = schedule;
    let step_id = module
        .declare_function(name, linkage, &ctx.func.signature)
        .map_err(|e| CodegenError::new(format!("cranelift: {e}")))?;
    module.define_function(step_id, &mut ctx).map_err(|e| {
        CodegenError::new(format!("cranelift could not compile the schedule: {e:?}"))
    })?;
    module.clear_context(&mut ctx);
    Ok((step_id, kernels, bodies))
}

/// The addresses of a loop body's plan: its arena is the loop's region.
fn body_addresses<'a>(at: &Addresses<'a>, scan: &'a ScanPlan) -> Addresses<'a> {
    Addresses {
        state: at.state,
        work: at.buffer(scan.region),
        scratch: at.scratch,
        plan: &scan.plan,
        layout: at.layout,
    }
}

/// Compiles the steps of a plan into functions of one JIT module.
struct Compiler<'c> {
    module: &'c mut dyn Module,
    host_ids: &'c mut HashMap<Host, FuncId>,
    ctx: &'c mut Context,
    fctx: &'c mut FunctionBuilderContext,
    /// The status word kernels report faults in.
    status: usize,
    /// Every loop body kernel compiled, by name (`k23.k4`).
    bodies: Vec<(String, FuncId)>,
}

impl Compiler<'_> {
    /// One function per step of `at`'s plan (of `graph`), in schedule order,
    /// each `fn()`; a loop's function calls its body's, compiled first.
    /// Function names start with `prefix`.
    fn steps(
        &mut self,
        graph: &Graph,
        at: &Addresses,
        prefix: &str,
    ) -> Result<Vec<FuncId>, CodegenError> {
        let plan = at.plan;
        let mut kernels: Vec<FuncId> = Vec::new();
        for (i, step) in plan.steps.iter().enumerate() {
            if let Step::Kernel(k) = step {
                if let Body::Scan(scan) = &plan.kernels[*k].body {
                    let id = self.scan(graph, at, scan, &format!("{prefix}{i}"))?;
                    kernels.push(id);
                    continue;
                }
            }
            let module = &mut *self.module;
            let ctx = &mut *self.ctx;
            ctx.func.signature = kernel_signature(module);
            // A kernel whose work splits also takes `(start, end, task)`:
            // work units and a task index; a trampoline runs it over the
            // pool.
            let split = matches!(step, Step::Kernel(k) if splits(&plan.kernels[*k], graph, plan));
            if split {
                for _ in 0..3 {
                    ctx.func.signature.params.push(AbiParam::new(types::I64));
                }
            }
            let mut units = None;
            {
                let mut b = FunctionBuilder::new(&mut ctx.func, self.fctx);
                let entry = b.create_block();
                b.append_block_params_for_function_params(entry);
                b.switch_to_block(entry);
                let range = split.then(|| {
                    let p = &b.block_params(entry)[BASES..];
                    Split {
                        start: p[0],
                        end: p[1],
                        task: p[2],
                    }
                });
                let mut calls = HostCalls {
                    module: &mut *module,
                    ids: &mut *self.host_ids,
                    refs: HashMap::new(),
                };
                match step {
                    Step::Kernel(k) => {
                        units = emit_kernel(
                            &mut b,
                            &mut calls,
                            graph,
                            &plan.kernels[*k],
                            at,
                            self.status,
                            range,
                        )?;
                    }
                    Step::Copy { src, dst, dtype } => {
                        emit_copy(
                            &mut b,
                            &mut calls,
                            src,
                            at.of(src),
                            dst,
                            at.of(dst),
                            Kind::of(*dtype),
                        )?;
                    }
                    Step::Update { slot, value } => {
                        let s = &at.layout.slots[*slot];
                        let dst = View::contiguous(plan::Base::State(*slot), s.shape.clone());
                        emit_copy(
                            &mut b,
                            &mut calls,
                            &plan.views[value],
                            at.of(&plan.views[value]),
                            &dst,
                            at.of(&dst),
                            Kind::of(s.dtype),
                        )?;
                    }
                }
                b.ins().return_(&[]);
                b.seal_all_blocks();
                b.finalize(module.target_config());
            }
            let name = if split {
                format!("{prefix}{i}.units")
            } else {
                format!("{prefix}{i}")
            };
            let id = self.define(&name, &format!("kernel {i} ({step:?})"))?;
            if !split {
                kernels.push(id);
                continue;
            }
            // The trampoline: `nnc_parallel(kernel, units, tasks)`.
            let units = units.unwrap_or(1);
            let module = &mut *self.module;
            let ctx = &mut *self.ctx;
            ctx.func.signature = kernel_signature(module);
            {
                let mut b = FunctionBuilder::new(&mut ctx.func, self.fctx);
                let entry = b.create_block();
                b.append_block_params_for_function_params(entry);
                b.switch_to_block(entry);
                let f = module.declare_func_in_func(id, b.func);
                let addr = b.ins().func_addr(types::I64, f);
                let n = b.ins().iconst(types::I64, units as i64);
                let tasks = b.ins().iconst(types::I64, plan.tasks as i64);
                let mut calls = HostCalls {
                    module: &mut *module,
                    ids: &mut *self.host_ids,
                    refs: HashMap::new(),
                };
                let mut args = vec![addr, n, tasks];
                args.extend(base_args(&b));
                calls.call(&mut b, Host::Parallel, &args);
                b.ins().return_(&[]);
                b.seal_all_blocks();
                b.finalize(module.target_config());
            }
            let tid = self.define(&format!("{prefix}{i}"), &format!("kernel {i}'s trampoline"))?;
            kernels.push(tid);
        }
        Ok(kernels)
    }

    /// A loop's function: its body's steps compiled once, called per trip.
    fn scan(
        &mut self,
        graph: &Graph,
        at: &Addresses,
        scan: &ScanPlan,
        name: &str,
    ) -> Result<FuncId, CodegenError> {
        let inner = body_addresses(at, scan);
        let body_steps = self.steps(&scan.body.graph, &inner, &format!("{name}.k"))?;
        for (j, &id) in body_steps.iter().enumerate() {
            self.bodies.push((format!("{name}.k{j}"), id));
        }
        let module = &mut *self.module;
        let ctx = &mut *self.ctx;
        ctx.func.signature = kernel_signature(module);
        {
            let mut b = FunctionBuilder::new(&mut ctx.func, self.fctx);
            let entry = b.create_block();
            b.append_block_params_for_function_params(entry);
            b.switch_to_block(entry);
            let refs: Vec<_> = body_steps
                .iter()
                .map(|&f| module.declare_func_in_func(f, b.func))
                .collect();
            let mut calls = HostCalls {
                module: &mut *module,
                ids: &mut *self.host_ids,
                refs: HashMap::new(),
            };
            emit_scan(&mut b, &mut calls, graph, scan, at, &inner, &refs)?;
            b.ins().return_(&[]);
            b.seal_all_blocks();
            b.finalize(module.target_config());
        }
        self.define(name, &format!("the loop {name}"))
    }

    /// Declares and defines the function built in the context.
    fn define(&mut self, name: &str, what: &str) -> Result<FuncId, CodegenError> {
        let id = self
            .module
            .declare_function(name, Linkage::Local, &self.ctx.func.signature)
            .map_err(|e| CodegenError::new(format!("cranelift: {e}")))?;
        self.module
            .define_function(id, self.ctx)
            .map_err(|e| CodegenError::new(format!("cranelift could not compile {what}: {e:?}")))?;
        self.module.clear_context(self.ctx);
        Ok(id)
    }
}

/// The signature every function of a program starts from: the base
/// addresses (see [`super::base`]), no result.
fn kernel_signature(module: &dyn Module) -> cranelift_codegen::ir::Signature {
    let mut sig = module.make_signature();
    push_base_params(&mut sig);
    sig
}
