//! The constants of `exp`, `log`, `tanh` and `sigmoid`, shared by the
//! host's sixteen-lane forms ([`crate::vmath16`]) and the inline forms
//! the compiler emits (`nnc_codegen::vmath`): the same numbers in both is
//! what makes their results bit-identical.

/// `1/ln 2` rounded to f32.
pub const LOG2E: f32 = std::f32::consts::LOG2_E;
/// `ln 2` rounded to f32 (0x3f317218): the high part of the Cody–Waite split.
pub const LN2_HI: f32 = std::f32::consts::LN_2;
/// `ln 2 - LN2_HI` rounded to f32 (0xb102e308); `ln2 - HI - LO ≈ -8.8e-17`.
pub const LN2_LO: f32 = -1.904_654_2e-9_f32;
/// `1.5 * 2^23`: adding it rounds a float of magnitude `< 2^22` to the
/// nearest integer, which then sits in the low mantissa bits.
pub const ROUND_MAGIC: f32 = 12_582_912.0;
/// Inputs of `exp` are clamped to `[EXP_MIN, EXP_MAX]`. `EXP_MAX` is above
/// `ln(f32::MAX) ≈ 88.7228` (so the result still overflows to +inf) and
/// `EXP_MIN` is below `ln(2^-150) ≈ -103.972` (so the result still rounds to
/// +0); the clamp only keeps the integer exponent `n` within `[-150, 128]`.
pub const EXP_MAX: f32 = 89.0;
pub const EXP_MIN: f32 = -104.0;

/// `exp(r) ≈ 1 + r + r^2 * P(r)` on `|r| <= ln2/2`; `P` in ascending powers.
/// Weighted minimax fit (Lawson iterations, f32 rounding of each coefficient
/// followed by a refit of the remaining ones); the approximation error of
/// `1 + r + r^2 P(r)` relative to `exp(r)` is below 1e-10 (far below f32
/// rounding).
pub const EXP_P: [f32; 6] = [
    0.5,
    0.16666666,
    0.041666463,
    0.00833357,
    0.0013935077,
    0.00019740226,
];

/// `log1p(f) ≈ f - f^2/2 + f^3 * Q(f)` on `f ∈ [sqrt(1/2) - 1, sqrt(2) - 1]`;
/// ascending powers.
pub const LOG_Q: [f32; 9] = [
    0.33333313,
    -0.2500001,
    0.20002073,
    -0.16667996,
    0.14220327,
    -0.12406032,
    0.11883568,
    -0.11671449,
    0.06750956,
];
/// Bit pattern of `sqrt(1/2)` rounded to f32; the mantissa is reduced to
/// `[sqrt(1/2), sqrt(2))`.
pub const LOG_OFF: i32 = 0x3f35_04f3;

/// `tanh(x) ≈ x + x^3 * T(x^2)` for `|x| < TANH_SWITCH`; ascending powers of
/// `x^2`.
pub const TANH_T: [f32; 8] = [
    -0.33333328,
    0.13333175,
    -0.053950716,
    0.021774355,
    -0.008571074,
    0.0030481236,
    -0.000821204,
    0.00011620864,
];
/// Below this `|x|`, tanh uses the odd polynomial; from it on,
/// `1 - 2/(exp(2|x|) + 1)`.
pub const TANH_SWITCH: f32 = 1.0;

pub const SIGN_MASK: i32 = i32::MIN; // 0x8000_0000
