//! The Cranelift lowering of a loop's per-element expression
//! ([`crate::plan::expr::Expr`]): each leaf's address and byte strides,
//! the values made once at the kernel's entry (random seeds), and the steps
//! evaluated in registers on one element or four.

use super::host::{Calls, Host};
use super::Addresses;
use crate::plan::expr::{Expr, Instr, MapOp, Source};
use crate::plan::Kind;
use crate::CodegenError;
use cranelift_codegen::ir::condcodes::{FloatCC, IntCC};
use cranelift_codegen::ir::{types, InstBuilder, MemFlagsData, Value};
use cranelift_frontend::FunctionBuilder;
use nnc_ir::{BinaryOp, UnaryOp};

fn flags() -> MemFlagsData {
    MemFlagsData::new().with_notrap()
}

/// How one leaf is loaded.
enum Load {
    Buffer(Kind),
    /// The key's hash for this stream (scalar, and splatted).
    Random {
        seed: Value,
        seeds: Value,
    },
}

/// The steps of a plain copy: the output is the one leaf.
static COPY: [Instr; 1] = [Instr::Leaf(0)];

/// An expression ready to emit: each leaf's start address and byte
/// strides over the space, and values made once at the kernel's entry.
pub(crate) struct Code<'e> {
    instrs: &'e [Instr],
    outputs: &'e [usize],
    pub addrs: Vec<usize>,
    pub strides: Vec<Vec<isize>>,
    loads: Vec<Load>,
    /// `[0, 1, 2, 3]`, for the indices of four random numbers.
    lanes: Option<Value>,
}

impl<'e> Code<'e> {
    /// Emits the per-kernel values at the current position (the kernel's
    /// entry block, so they dominate every loop).
    pub fn new(
        b: &mut FunctionBuilder,
        expr: &'e Expr,
        at: &Addresses,
    ) -> Result<Code<'e>, CodegenError> {
        expr.check()?;
        let mut code = Code {
            instrs: &expr.instrs,
            outputs: &expr.outputs,
            addrs: Vec::new(),
            strides: Vec::new(),
            loads: Vec::new(),
            lanes: None,
        };
        for leaf in &expr.leaves {
            let strides = leaf.view.strides.iter().map(|s| s * 4).collect();
            let (addr, load) = match &leaf.source {
                Source::Buffer(_) => (at.of(&leaf.view), Load::Buffer(leaf.kind)),
                Source::Random { stream, key } => {
                    let key_view = at.plan.views.get(key).ok_or_else(|| {
                        CodegenError::new("internal error: no view of a random key")
                    })?;
                    let seed = super::random::emit_seed(b, *stream, at.of(key_view));
                    let seeds = b.ins().splat(types::I32X4, seed);
                    if code.lanes.is_none() {
                        code.lanes = Some(super::random::lanes(b));
                    }
                    (leaf.view.offset * 4, Load::Random { seed, seeds })
                }
            };
            code.addrs.push(addr);
            code.strides.push(strides);
            code.loads.push(load);
        }
        Ok(code)
    }

    /// A copy of the `kind` elements at `addr`, `strides` bytes apart.
    pub fn copy(addr: usize, strides: Vec<isize>, kind: Kind) -> Code<'static> {
        Code {
            instrs: &COPY,
            outputs: &[0],
            addrs: vec![addr],
            strides: vec![strides],
            loads: vec![Load::Buffer(kind)],
            lanes: None,
        }
    }

    pub fn vectorizes(&self) -> bool {
        self.instrs.iter().all(|i| match i {
            Instr::Apply { op, .. } => op.vectorizes(),
            _ => true,
        })
    }

    fn kind_of(&self, step: usize) -> Kind {
        match &self.instrs[step] {
            Instr::Leaf(l) => match self.loads[*l] {
                Load::Buffer(kind) => kind,
                Load::Random { .. } => Kind::F32,
            },
            Instr::Const { kind, .. } | Instr::Apply { kind, .. } => *kind,
        }
    }

    /// The kind of output `i`'s values.
    pub fn output_kind(&self, i: usize) -> Kind {
        self.kind_of(self.outputs[i])
    }

    /// Leaf `k` at byte address `addr + imm`: one element, or four
    /// (`vector`) `stride` bytes apart (4, or 0 for one splatted).
    pub fn load(
        &self,
        b: &mut FunctionBuilder,
        k: usize,
        addr: Value,
        imm: i32,
        vector: bool,
        stride: isize,
    ) -> Value {
        match &self.loads[k] {
            Load::Buffer(kind) => {
                if vector && stride != 0 {
                    b.ins().load(kind.vector(), flags(), addr, imm)
                } else {
                    let s = b.ins().load(kind.scalar(), flags(), addr, imm);
                    if vector {
                        b.ins().splat(kind.vector(), s)
                    } else {
                        s
                    }
                }
            }
            Load::Random { seed, seeds } => {
                // The "address" is the random tensor's index times 4.
                let a = b.ins().iadd_imm_s(addr, i64::from(imm));
                let index = b.ins().ushr_imm_u(a, 2);
                let index = b.ins().ireduce(types::I32, index);
                if !vector {
                    return super::random::uniform(b, types::I32, index, *seed);
                }
                let mut idx = b.ins().splat(types::I32X4, index);
                if let (Some(lanes), true) = (self.lanes, stride != 0) {
                    idx = b.ins().iadd(idx, lanes);
                }
                super::random::uniform(b, types::I32X4, idx, *seeds)
            }
        }
    }

    /// Evaluates the steps on the leaves' loaded values; returns the value
    /// of each output.
    pub fn evaluate(
        &self,
        b: &mut FunctionBuilder,
        calls: &mut dyn Calls,
        vector: bool,
        leaves: &[Value],
    ) -> Result<Vec<Value>, CodegenError> {
        let mut vals: Vec<(Value, Kind)> = Vec::with_capacity(self.instrs.len());
        for (step, instr) in self.instrs.iter().enumerate() {
            let v = match instr {
                Instr::Leaf(l) => (leaves[*l], self.kind_of(step)),
                Instr::Const { word, kind } => (constant(b, *word, *kind, vector), *kind),
                Instr::Apply { op, args, kind } => {
                    let a: Vec<(Value, Kind)> = args.iter().map(|&j| vals[j]).collect();
                    (compute(b, calls, *op, vector, &a, *kind)?, *kind)
                }
            };
            vals.push(v);
        }
        Ok(self.outputs.iter().map(|&o| vals[o].0).collect())
    }
}

/// Elements per chunk of a staged loop ([`Code::staging`]): each of its
/// `exp`, `log`, `tanh` and `sigmoid` runs as one `crate::vmath16` call
/// over this many arguments (a call costs about as much as 16 lanes of
/// work, so chunks amortize it).
pub const CHUNK: usize = 128;

/// The `vmath16` function of a transcendental op.
fn wide_func(op: MapOp) -> Option<crate::vmath16::Func> {
    match op {
        MapOp::Unary(u) => crate::plan::expr::vmath16_func(u),
        _ => None,
    }
}

/// How a loop evaluates [`CHUNK`] elements at a time with its
/// transcendental functions on AVX-512 (see [`Code::staging`]).
#[derive(Debug, Clone)]
pub struct Staging {
    /// Per step: how many transcendental functions deep it is (0: none
    /// below it).
    depth: Vec<usize>,
    /// The transcendental steps, each with its function and its buffer
    /// (`CHUNK` floats) in the stack slot.
    funcs: Vec<(usize, crate::vmath16::Func)>,
    /// The deepest transcendental step: the loop makes `stages + 1` passes
    /// over a chunk.
    pub stages: usize,
}

impl Staging {
    /// Bytes of the stack slot that holds every function's buffer.
    pub fn slot_bytes(&self) -> u32 {
        (self.funcs.len() * CHUNK * 4) as u32
    }

    /// The transcendental steps `stage` computes, with their buffer's byte
    /// offset in the slot: after pass `stage` has stored their arguments,
    /// one `vmath16` call each.
    pub fn calls(&self, stage: usize) -> Vec<(usize, crate::vmath16::Func)> {
        self.funcs
            .iter()
            .enumerate()
            .filter(|(_, (step, _))| self.depth[*step] == stage)
            .map(|(i, &(_, f))| (i * CHUNK * 4, f))
            .collect()
    }

    fn buffer(&self, step: usize) -> Option<usize> {
        self.funcs
            .iter()
            .position(|&(s, _)| s == step)
            .map(|i| i * CHUNK * 4)
    }
}

impl Code<'_> {
    /// How to evaluate this expression a chunk at a time when it applies
    /// a function `crate::vmath16` has and this CPU runs it; `None`
    /// otherwise. Pass `s` (`1..=stages`) evaluates what the functions of
    /// depth `s` read and stores their arguments; then each runs over the
    /// chunk in place; the last pass evaluates the rest, reading every
    /// function's results. Cheap steps are evaluated again in each pass.
    pub fn staging(&self) -> Option<Staging> {
        if !crate::vmath16::available() || !self.vectorizes() {
            return None;
        }
        let mut depth = vec![0usize; self.instrs.len()];
        let mut funcs = Vec::new();
        for (step, instr) in self.instrs.iter().enumerate() {
            if let Instr::Apply { op, args, .. } = instr {
                let below = args.iter().map(|&a| depth[a]).max().unwrap_or(0);
                depth[step] = match wide_func(*op) {
                    Some(f) => {
                        funcs.push((step, f));
                        below + 1
                    }
                    None => below,
                };
            }
        }
        let stages = depth.iter().copied().max().unwrap_or(0);
        (!funcs.is_empty()).then_some(Staging {
            depth,
            funcs,
            stages,
        })
    }

    /// Pass `stage` of a staged loop ([`Code::staging`]) on one `f32x4` of
    /// a chunk: `leaves` as for [`Code::evaluate`], `buffers` the stack
    /// slot's address plus the vector's byte offset in the chunk. Before
    /// the last pass it stores the arguments of the functions of depth
    /// `stage` and returns nothing; the last pass returns the outputs.
    pub fn evaluate_stage(
        &self,
        b: &mut FunctionBuilder,
        calls: &mut dyn Calls,
        staging: &Staging,
        stage: usize,
        leaves: &[Value],
        buffers: Value,
    ) -> Result<Vec<Value>, CodegenError> {
        let last = stage > staging.stages;
        let mut vals: Vec<Option<(Value, Kind)>> = Vec::with_capacity(self.instrs.len());
        for (step, instr) in self.instrs.iter().enumerate() {
            let d = staging.depth[step];
            let needed = last || d < stage || staging.buffer(step).is_some() && d == stage;
            if !needed {
                vals.push(None);
                continue;
            }
            let arg = |vals: &[Option<(Value, Kind)>], i: usize| {
                vals[i].ok_or_else(|| {
                    CodegenError::new("internal error: a staged step reads a later stage")
                })
            };
            let v = match instr {
                Instr::Leaf(l) => (leaves[*l], self.kind_of(step)),
                Instr::Const { word, kind } => (constant(b, *word, *kind, true), *kind),
                Instr::Apply { op, args, kind } => match staging.buffer(step) {
                    Some(offset) if d < stage => {
                        let y = b.ins().load(types::F32X4, flags(), buffers, offset as i32);
                        (y, *kind)
                    }
                    Some(offset) => {
                        // This pass's function: store its argument.
                        let x = arg(&vals, args[0])?.0;
                        b.ins().store(flags(), x, buffers, offset as i32);
                        vals.push(None);
                        continue;
                    }
                    None => {
                        let a = args
                            .iter()
                            .map(|&i| arg(&vals, i))
                            .collect::<Result<Vec<_>, _>>()?;
                        (compute(b, calls, *op, true, &a, *kind)?, *kind)
                    }
                },
            };
            vals.push(Some(v));
        }
        if !last {
            return Ok(Vec::new());
        }
        self.outputs
            .iter()
            .map(|&o| {
                vals[o].map(|v| v.0).ok_or_else(|| {
                    CodegenError::new("internal error: a staged loop's output was not computed")
                })
            })
            .collect()
    }
}

/// A constant's value (its bits `word`), splatted when `vector`.
fn constant(b: &mut FunctionBuilder, word: u32, kind: Kind, vector: bool) -> Value {
    let s = match kind {
        Kind::F32 => b.ins().f32const(f32::from_bits(word)),
        Kind::I32 => b.ins().iconst(types::I32, i64::from(word as i32)),
    };
    if vector {
        b.ins().splat(kind.vector(), s)
    } else {
        s
    }
}

/// Computes one element (or four lanes) of an elementwise op.
fn compute(
    b: &mut FunctionBuilder,
    calls: &mut dyn Calls,
    op: MapOp,
    vector: bool,
    ins: &[(Value, Kind)],
    out: Kind,
) -> Result<Value, CodegenError> {
    let ty = |k: Kind| if vector { k.vector() } else { k.scalar() };
    let bool01 = |b: &mut FunctionBuilder, c: Value| -> Value {
        if vector {
            let one = b.ins().iconst(types::I32, 1);
            let ones = b.ins().splat(types::I32X4, one);
            b.ins().band(c, ones)
        } else {
            b.ins().uextend(types::I32, c)
        }
    };
    let v = match op {
        MapOp::Unary(u) => {
            let x = ins[0].0;
            match u {
                UnaryOp::Neg => b.ins().fneg(x),
                UnaryOp::Abs => b.ins().fabs(x),
                UnaryOp::Round => b.ins().nearest(x),
                UnaryOp::Detach => x,
                UnaryOp::Sqrt => b.ins().sqrt(x),
                UnaryOp::Exp => super::vmath::exp(b, ty(Kind::F32), x),
                UnaryOp::Log => super::vmath::log(b, ty(Kind::F32), x),
                UnaryOp::Tanh => super::vmath::tanh(b, ty(Kind::F32), x),
                UnaryOp::Sigmoid => super::vmath::sigmoid(b, ty(Kind::F32), x),
            }
        }
        MapOp::Binary(op) => {
            let (x, y) = (ins[0].0, ins[1].0);
            // Comparisons give 0 or 1 of the result's kind.
            let fcmp = |b: &mut FunctionBuilder, cc| {
                let c = b.ins().fcmp(cc, x, y);
                bool01(b, c)
            };
            let icmp = |b: &mut FunctionBuilder, cc| {
                let c = b.ins().icmp(cc, x, y);
                bool01(b, c)
            };
            match (ins[0].1, op) {
                (Kind::F32, BinaryOp::Add) => b.ins().fadd(x, y),
                (Kind::F32, BinaryOp::Sub) => b.ins().fsub(x, y),
                (Kind::F32, BinaryOp::Mul) => b.ins().fmul(x, y),
                (Kind::F32, BinaryOp::Div) => b.ins().fdiv(x, y),
                (Kind::F32, BinaryOp::Max) => b.ins().fmax(x, y),
                (Kind::F32, BinaryOp::Min) => b.ins().fmin(x, y),
                (Kind::F32, BinaryOp::Pow) => calls.call(b, Host::Powf, &[x, y])[0],
                (Kind::F32, BinaryOp::Lt) => fcmp(b, FloatCC::LessThan),
                (Kind::F32, BinaryOp::Le) => fcmp(b, FloatCC::LessThanOrEqual),
                (Kind::F32, BinaryOp::Gt) => fcmp(b, FloatCC::GreaterThan),
                (Kind::F32, BinaryOp::Ge) => fcmp(b, FloatCC::GreaterThanOrEqual),
                (Kind::F32, BinaryOp::Eq) => fcmp(b, FloatCC::Equal),
                (Kind::F32, BinaryOp::Ne) => fcmp(b, FloatCC::NotEqual),
                (Kind::I32, BinaryOp::Add) => b.ins().iadd(x, y),
                (Kind::I32, BinaryOp::Sub) => b.ins().isub(x, y),
                (Kind::I32, BinaryOp::Mul) => b.ins().imul(x, y),
                (Kind::I32, BinaryOp::Max) => b.ins().smax(x, y),
                (Kind::I32, BinaryOp::Min) => b.ins().smin(x, y),
                (Kind::I32, BinaryOp::Div | BinaryOp::Pow) => {
                    return Err(CodegenError::new(format!(
                        "integer `{op}` is not supported by the JIT (use --backend interp)"
                    )))
                }
                (Kind::I32, BinaryOp::Lt) => icmp(b, IntCC::SignedLessThan),
                (Kind::I32, BinaryOp::Le) => icmp(b, IntCC::SignedLessThanOrEqual),
                (Kind::I32, BinaryOp::Gt) => icmp(b, IntCC::SignedGreaterThan),
                (Kind::I32, BinaryOp::Ge) => icmp(b, IntCC::SignedGreaterThanOrEqual),
                (Kind::I32, BinaryOp::Eq) => icmp(b, IntCC::Equal),
                (Kind::I32, BinaryOp::Ne) => icmp(b, IntCC::NotEqual),
            }
        }
        MapOp::Select => {
            let (c, x, y) = (ins[0].0, ins[1].0, ins[2].0);
            if vector {
                let zero = b.ins().iconst(types::I32, 0);
                let zeros = b.ins().splat(types::I32X4, zero);
                let mask = b.ins().icmp(IntCC::NotEqual, c, zeros);
                let mask = if out == Kind::F32 {
                    b.ins().bitcast(
                        types::F32X4,
                        MemFlagsData::new()
                            .with_endianness(cranelift_codegen::ir::Endianness::Little),
                        mask,
                    )
                } else {
                    mask
                };
                b.ins().bitselect(mask, x, y)
            } else {
                b.ins().select(c, x, y)
            }
        }
        MapOp::NonZero => {
            let (x, from) = ins[0];
            let c = match from {
                Kind::F32 => {
                    let z = b.ins().f32const(0.0);
                    let z = if vector {
                        b.ins().splat(types::F32X4, z)
                    } else {
                        z
                    };
                    b.ins().fcmp(FloatCC::NotEqual, x, z)
                }
                Kind::I32 => {
                    let z = b.ins().iconst(types::I32, 0);
                    let z = if vector {
                        b.ins().splat(types::I32X4, z)
                    } else {
                        z
                    };
                    b.ins().icmp(IntCC::NotEqual, x, z)
                }
            };
            bool01(b, c)
        }
        MapOp::Cast => {
            let (x, from) = ins[0];
            match (from, out) {
                (Kind::F32, Kind::I32) => b.ins().fcvt_to_sint_sat(ty(Kind::I32), x),
                (Kind::I32, Kind::F32) => b.ins().fcvt_from_sint(ty(Kind::F32), x),
                _ => x,
            }
        }
        MapOp::Narrow(dtype) => {
            let (x, from) = ins[0];
            let x = match from {
                Kind::F32 => b.ins().fcvt_to_sint_sat(ty(Kind::I32), x),
                Kind::I32 => x,
            };
            let (lo, hi) = dtype.int_range().unwrap_or((0.0, 0.0));
            let lo = constant(b, lo as i32 as u32, Kind::I32, vector);
            let hi = constant(b, hi as i32 as u32, Kind::I32, vector);
            let x = b.ins().smax(x, lo);
            b.ins().smin(x, hi)
        }
    };
    Ok(v)
}
