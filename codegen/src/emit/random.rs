//! `random` as an elementwise leaf: `nnc_ir::op::random_uniform` of an
//! element's index, one or four at a time (`i32x4` lanes, `pmulld` for the
//! hash's multiplies), computed in whatever loop reads it (`expr::Code`),
//! bit-identical to the interpreter because the hash is pure 32-bit integer
//! arithmetic and the final conversion is exact (24 bits into an f32
//! mantissa, then a power-of-two scale).

use cranelift_codegen::ir::{types, InstBuilder, MemFlagsData, Type, Value};
use cranelift_frontend::FunctionBuilder;
use nnc_ir::op::lowbias32;

fn flags() -> MemFlagsData {
    MemFlagsData::new().with_notrap()
}

/// `lowbias32` on an `i32` or `i32x4` value (`ty`).
fn hash(b: &mut FunctionBuilder, ty: Type, x: Value) -> Value {
    let constant = |b: &mut FunctionBuilder, c: u32| {
        let s = b.ins().iconst(types::I32, i64::from(c as i32));
        if ty == types::I32 {
            s
        } else {
            b.ins().splat(ty, s)
        }
    };
    let mut x = x;
    for (shift, mul) in [
        (16, Some(0x7feb_352d_u32)),
        (15, Some(0x846c_a68b)),
        (16, None),
    ] {
        let s = b.ins().ushr_imm_u(x, shift);
        x = b.ins().bxor(x, s);
        if let Some(m) = mul {
            let m = constant(b, m);
            x = b.ins().imul(x, m);
        }
    }
    x
}

/// Uniform `[0, 1)` f32 values for element indices `index` (`i32` or
/// `i32x4`, as `ty`) under `seed`: `random_bits`' outer rounds, then the top
/// 24 bits scaled by 2^-24.
pub(crate) fn uniform(b: &mut FunctionBuilder, ty: Type, index: Value, seed: Value) -> Value {
    let h = b.ins().bxor(index, seed);
    let h = hash(b, ty, h);
    let h = b.ins().iadd(h, seed);
    let h = hash(b, ty, h);
    // Below 2^24, so the signed conversion is exact.
    let top = b.ins().ushr_imm_u(h, 8);
    let fty = if ty == types::I32 {
        types::F32
    } else {
        types::F32X4
    };
    let f = b.ins().fcvt_from_sint(fty, top);
    let scale = b.ins().f32const(1.0 / 16_777_216.0);
    let scale = if ty == types::I32 {
        scale
    } else {
        b.ins().splat(fty, scale)
    };
    b.ins().fmul(f, scale)
}

/// The seed of `stream` under the scalar i32 key at `key` (read when the
/// kernel runs): `random_bits`' inner round, once per kernel.
pub(crate) fn emit_seed(b: &mut FunctionBuilder, stream: u32, key: usize) -> Value {
    let key_addr = super::base::emit_addr(b, key);
    let key = b.ins().load(types::I32, flags(), key_addr, 0);
    // The stream's half of the seed is known now.
    let stream_hash = lowbias32(stream.wrapping_add(0x9e37_79b9));
    let sh = b.ins().iconst(types::I32, i64::from(stream_hash as i32));
    let seed = b.ins().bxor(key, sh);
    hash(b, types::I32, seed)
}

/// `[0, 1, 2, 3]` as `i32x4`: lane offsets of four consecutive indices.
pub(crate) fn lanes(b: &mut FunctionBuilder) -> Value {
    let z = b.ins().iconst(types::I32, 0);
    let mut lanes = b.ins().scalar_to_vector(types::I32X4, z);
    for lane in 1..4u8 {
        let v = b.ins().iconst(types::I32, i64::from(lane));
        lanes = b.ins().insertlane(lanes, v, lane);
    }
    lanes
}
