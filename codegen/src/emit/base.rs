//! Relocatable addresses: compiled code bakes in no absolute address of
//! the model's buffers, so the same code runs on any state, arena and
//! packing scratch (the JIT's, or an ahead-of-time object's caller's).
//!
//! Every function of a program takes three base addresses as its first
//! arguments: the state (params and optimizer state), the work arena (from
//! its control block) and the GEMM packing scratch. While emitting, an
//! address is still a plain `usize` computed with ordinary arithmetic
//! (views, strides, staged planes), but inside a *tagged* address space:
//! region `r`'s byte `o` is `r << REGION_SHIFT` plus `o`. Where an address
//! becomes a value of the code, [`emit_addr`] turns the tag back into the
//! function's base argument plus a constant offset, which x86-64 folds
//! into the addressing mode. The tags sit far above any user-space
//! address, so an address that escaped untranslated faults at once.

use cranelift_codegen::ir::{types, AbiParam, Block, InstBuilder, Signature, Value};
use cranelift_frontend::FunctionBuilder;

/// Regions are `1 << REGION_SHIFT` bytes apart; an address rounds to its
/// nearest region, so offsets within ±2⁵¹ bytes (slightly before a
/// buffer, as a padded window's origin is) decode correctly.
const REGION_SHIFT: u32 = 52;

/// A program's base addresses, in argument order.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Region {
    State = 1,
    Work = 2,
    Scratch = 3,
}

/// How many base arguments lead every function's parameters.
pub const BASES: usize = 3;

/// Byte `offset` of `region`, as emitting code computes with addresses.
pub fn tagged(region: Region, offset: usize) -> usize {
    ((region as usize) << REGION_SHIFT) + offset
}

/// The region and signed offset of a tagged address, or `None` for a
/// plain (absolute) one.
pub fn untag(addr: usize) -> Option<(Region, i64)> {
    let half = 1usize << (REGION_SHIFT - 1);
    let region = match addr.wrapping_add(half) >> REGION_SHIFT {
        1 => Region::State,
        2 => Region::Work,
        3 => Region::Scratch,
        _ => return None,
    };
    let offset = addr.wrapping_sub((region as usize) << REGION_SHIFT) as i64;
    Some((region, offset))
}

/// Adds the base parameters to a function signature (before any other).
pub fn push_base_params(sig: &mut Signature) {
    for _ in 0..BASES {
        sig.params.insert(0, AbiParam::new(types::I64));
    }
}

/// The base arguments of the function being built: the first parameters
/// of its entry block (the first block created, which must have been
/// given its function's parameters).
pub fn base_args(b: &FunctionBuilder) -> [Value; BASES] {
    let params = b.func.dfg.block_params(Block::from_u32(0));
    assert!(
        params.len() >= BASES,
        "internal error: a function without base arguments addresses a buffer"
    );
    [params[0], params[1], params[2]]
}

/// `addr` as a value: its region's base argument plus the offset for a
/// tagged address, a constant for a plain one (a host function's own
/// memory, or a test's buffer).
pub fn emit_addr(b: &mut FunctionBuilder, addr: usize) -> Value {
    match untag(addr) {
        Some((region, offset)) => {
            let base = base_args(b)[region as usize - 1];
            if offset == 0 {
                base
            } else {
                b.ins().iadd_imm_s(base, offset)
            }
        }
        None => b.ins().iconst(types::I64, addr as i64),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tags_round_trip_including_just_before_a_region() {
        for region in [Region::State, Region::Work, Region::Scratch] {
            for offset in [0i64, 4, 1 << 40, -64] {
                let addr = tagged(region, 0).wrapping_add_signed(offset as isize);
                assert_eq!(untag(addr), Some((region, offset)));
            }
        }
        assert_eq!(untag(0x7fff_1234_5678), None);
        assert_eq!(untag(0), None);
    }
}
