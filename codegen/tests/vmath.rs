//! Accuracy and special-value tests for the inline vector math in
//! `nnc_codegen::vmath`.
//!
//! Each function is JIT-compiled into `fn(src: *const f32, dst: *mut f32,
//! n: i64)` loops, once over `f32x4` vectors and once over scalar `f32`, at
//! both `opt_level=speed` and `opt_level=none`, and compared against an f64
//! reference (`f64::exp`, `f64::ln`, `f64::tanh`, a two-sided f64 sigmoid):
//! the f32 result is compared with the f64 truth itself, never with the truth
//! rounded to f32.
//!
//! - Results that are normal f32 numbers: relative error `|y - t| / |t|`
//!   must be at most `ACHIEVED_REL` (1e-7), inside the 2e-7 contract (half
//!   an ulp of rounding alone is up to 5.96e-8).
//! - Results below `f32::MIN_POSITIVE` (subnormal or zero): absolute error at
//!   most `SUB_ULPS` units of `2^-149`.
//! - Overflowing truths must give +-inf (or `f32::MAX` within rounding), NaN
//!   truths NaN; named special values are checked exactly.
//! - All four compiled variants must agree bit for bit (NaNs as NaNs), and
//!   so must the AVX-512 host forms (`nnc_codegen::vmath16`) where the CPU
//!   has them.
//!
//! Run with `--nocapture` to see the measured maximum errors.

use cranelift_codegen::ir::condcodes::IntCC;
use cranelift_codegen::ir::{
    types, AbiParam, InstBuilder, MemFlagsData, Type, UserFuncName, Value,
};
use cranelift_frontend::{FunctionBuilder, FunctionBuilderContext};
use cranelift_jit::{JITBuilder, JITModule};
use cranelift_module::{default_libcall_names, Linkage, Module};
use nnc_codegen::vmath;

/// Relative error bound for normal results: the accuracy contract of
/// `vmath`. Each test also asserts the tighter bound its function achieves
/// (maxima over all 2^32 inputs: exp 7.06e-8, log 8.14e-8, tanh 7.48e-8,
/// sigmoid 8.92e-8; each sweep includes its function's worst input),
/// so that an accuracy regression shows even while still within contract.
const CONTRACT_REL: f64 = 2e-7;
/// The bound asserted for every function (worst measured: 8.92e-8, sigmoid).
const ACHIEVED_REL: f64 = 1e-7;
/// Absolute error bound for subnormal (or zero) results, in units of the
/// smallest subnormal `2^-149`.
const SUB_ULPS: f64 = 2.0;

type Emit = fn(&mut FunctionBuilder, Type, Value) -> Value;
type Kernel = unsafe extern "C" fn(*const f32, *mut f32, i64);

/// One compiled loop; the module is kept alive with the code.
struct Compiled {
    _module: JITModule,
    kernel: Kernel,
    lanes: usize,
    label: String,
}

fn compile(emit: Emit, ty: Type, opt_level: &str) -> Compiled {
    let builder = JITBuilder::with_flags(&[("opt_level", opt_level)], default_libcall_names())
        .expect("host ISA");
    let mut module = JITModule::new(builder);
    let ptr = module.target_config().pointer_type();
    let mut sig = module.make_signature();
    sig.params.push(AbiParam::new(ptr));
    sig.params.push(AbiParam::new(ptr));
    sig.params.push(AbiParam::new(types::I64));
    let id = module
        .declare_function("kernel", Linkage::Local, &sig)
        .unwrap();
    let mut ctx = module.make_context();
    ctx.func.signature = sig;
    ctx.func.name = UserFuncName::user(0, id.as_u32());
    let lanes = ty.lane_count() as i64;
    let mut fctx = FunctionBuilderContext::new();
    {
        let mut b = FunctionBuilder::new(&mut ctx.func, &mut fctx);
        let entry = b.create_block();
        let header = b.create_block();
        let body = b.create_block();
        let exit = b.create_block();
        b.append_block_params_for_function_params(entry);
        b.append_block_param(header, types::I64);

        b.switch_to_block(entry);
        let src = b.block_params(entry)[0];
        let dst = b.block_params(entry)[1];
        let n = b.block_params(entry)[2];
        let zero = b.ins().iconst(types::I64, 0);
        b.ins().jump(header, &[zero.into()]);

        b.switch_to_block(header);
        let i = b.block_params(header)[0];
        let more = b.ins().icmp(IntCC::SignedLessThan, i, n);
        b.ins().brif(more, body, &[], exit, &[]);

        b.switch_to_block(body);
        let off = b.ins().ishl_imm_u(i, 2);
        let ps = b.ins().iadd(src, off);
        let flags = MemFlagsData::new().with_notrap();
        let x = b.ins().load(ty, flags, ps, 0);
        let y = emit(&mut b, ty, x);
        let pd = b.ins().iadd(dst, off);
        b.ins().store(flags, y, pd, 0);
        let next = b.ins().iadd_imm_s(i, lanes);
        b.ins().jump(header, &[next.into()]);

        b.switch_to_block(exit);
        b.ins().return_(&[]);
        b.seal_all_blocks();
        b.finalize(module.target_config());
    }
    module.define_function(id, &mut ctx).unwrap();
    module.clear_context(&mut ctx);
    module.finalize_definitions().unwrap();
    let code = module.get_finalized_function(id);
    // SAFETY: the function was declared with exactly this signature.
    let kernel = unsafe { std::mem::transmute::<*const u8, Kernel>(code) };
    Compiled {
        _module: module,
        kernel,
        lanes: lanes as usize,
        label: format!("{ty} opt={opt_level}"),
    }
}

impl Compiled {
    fn run(&self, xs: &[f32]) -> Vec<f32> {
        let mut src = xs.to_vec();
        while !src.len().is_multiple_of(self.lanes) {
            src.push(0.0);
        }
        let mut dst = vec![0.0f32; src.len()];
        // SAFETY: both buffers hold `src.len()` floats, a multiple of the
        // lane count, and the kernel touches exactly those.
        unsafe { (self.kernel)(src.as_ptr(), dst.as_mut_ptr(), src.len() as i64) };
        dst.truncate(xs.len());
        dst
    }
}

/// The four compiled variants of one function.
fn variants(emit: Emit) -> Vec<Compiled> {
    let mut v = Vec::new();
    for opt in ["speed", "none"] {
        v.push(compile(emit, types::F32X4, opt));
        v.push(compile(emit, types::F32, opt));
    }
    v
}

/// The AVX-512 form of function `name` (`vmath16`) on `xs`, or `None`
/// without AVX-512F.
fn run16(name: &str, xs: &[f32]) -> Option<Vec<f32>> {
    use nnc_codegen::vmath16::{apply, available, Func};
    if !available() {
        return None;
    }
    let f = match name {
        "exp" => Func::Exp,
        "log" => Func::Log,
        "tanh" => Func::Tanh,
        "sigmoid" => Func::Sigmoid,
        _ => panic!("no vmath16 form of {name}"),
    };
    let mut ys = xs.to_vec();
    ys.resize(xs.len().div_ceil(16) * 16, 0.0);
    apply(f, &mut ys);
    ys.truncate(xs.len());
    Some(ys)
}

/// Asserts that the AVX-512 form of `name` gives `want` bit for bit.
fn check_vmath16(name: &str, xs: &[f32], want: &[f32]) {
    let Some(ys) = run16(name, xs) else { return };
    for ((&x, &a), &b) in xs.iter().zip(want).zip(&ys) {
        assert!(
            a.to_bits() == b.to_bits() || (a.is_nan() && b.is_nan()),
            "{name}: inline and AVX-512 forms differ at x={x:e}: {a:e} vs {b:e}"
        );
    }
}

/// Size of one ulp of an f32 whose value is `t` (normal range).
fn ulp_of(t: f64) -> f64 {
    let e = ((t.abs().to_bits() >> 52) & 0x7ff) as i32 - 1023;
    2f64.powi(e - 23)
}

#[derive(Default, Debug)]
struct Stats {
    max_rel: f64,
    max_rel_x: f32,
    max_ulps: f64,
    max_sub: f64,
    max_sub_x: f32,
    normal: usize,
    tiny: usize,
}

/// Compares `ys` (from `f(xs)`) with the f64 reference; panics on the first
/// violation of the non-numeric rules and returns the error statistics.
fn measure(name: &str, label: &str, xs: &[f32], ys: &[f32], reference: fn(f64) -> f64) -> Stats {
    let mut s = Stats::default();
    let max = f32::MAX as f64;
    for (&x, &y) in xs.iter().zip(ys) {
        let t = reference(x as f64);
        let ctx = || {
            format!(
                "{name} [{label}] x={x:e} ({:#010x}) y={y:e} truth={t:e}",
                x.to_bits()
            )
        };
        if t.is_nan() {
            assert!(y.is_nan(), "expected NaN: {}", ctx());
        } else if t.abs() >= 2f64.powi(128) {
            assert!(
                y.is_infinite() && (y > 0.0) == (t > 0.0),
                "expected inf: {}",
                ctx()
            );
        } else if t.abs() > max {
            assert!(
                (y as f64).abs() >= max && (y > 0.0) == (t > 0.0),
                "expected MAX or inf: {}",
                ctx()
            );
        } else if t.abs() >= f32::MIN_POSITIVE as f64 {
            assert!(y.is_finite(), "expected finite: {}", ctx());
            let rel = ((y as f64) - t).abs() / t.abs();
            s.normal += 1;
            if rel > s.max_rel {
                s.max_rel = rel;
                s.max_rel_x = x;
            }
            s.max_ulps = s.max_ulps.max(((y as f64) - t).abs() / ulp_of(t));
        } else {
            assert!(y.is_finite(), "expected finite: {}", ctx());
            let err = ((y as f64) - t).abs() / 2f64.powi(-149);
            s.tiny += 1;
            if err > s.max_sub {
                s.max_sub = err;
                s.max_sub_x = x;
            }
        }
    }
    s
}

/// Runs all variants over `xs`, checks they agree bit for bit, measures the
/// error against `reference`, prints it and asserts the bounds.
fn check_sweep(name: &str, fns: &[Compiled], xs: &[f32], reference: fn(f64) -> f64) {
    const _: () = assert!(ACHIEVED_REL <= CONTRACT_REL);
    let results: Vec<Vec<f32>> = fns.iter().map(|c| c.run(xs)).collect();
    for (c, ys) in fns.iter().zip(&results).skip(1) {
        for ((&x, &a), &b) in xs.iter().zip(&results[0]).zip(ys) {
            assert!(
                a.to_bits() == b.to_bits() || (a.is_nan() && b.is_nan()),
                "{name}: [{}] and [{}] differ at x={x:e}: {a:e} vs {b:e}",
                fns[0].label,
                c.label
            );
        }
    }
    check_vmath16(name, xs, &results[0]);
    // The variants agree bit for bit; measure the vector and the scalar one.
    for (c, ys) in fns.iter().zip(&results).take(2) {
        let s = measure(name, &c.label, xs, ys, reference);
        println!(
            "{name:>7} [{:<16}] {:>8} normal: max rel err {:.3e} ({:.3} ulp max) at x={:e}; \
             {} tiny: max abs err {:.2} x 2^-149 at x={:e}",
            c.label, s.normal, s.max_rel, s.max_ulps, s.max_rel_x, s.tiny, s.max_sub, s.max_sub_x
        );
        assert!(
            s.max_rel <= ACHIEVED_REL,
            "{name} [{}]: max relative error {:e} at x={:e} exceeds {ACHIEVED_REL:e}",
            c.label,
            s.max_rel,
            s.max_rel_x
        );
        assert!(
            s.max_sub <= SUB_ULPS,
            "{name} [{}]: subnormal error {} x 2^-149 at x={:e} exceeds {SUB_ULPS}",
            c.label,
            s.max_sub,
            s.max_sub_x
        );
    }
}

/// Asserts exact results for named inputs (`None` expects NaN); compares bit
/// patterns, so the sign of zero matters.
fn check_specials(name: &str, fns: &[Compiled], cases: &[(f32, Option<f32>)]) {
    let xs: Vec<f32> = cases.iter().map(|c| c.0).collect();
    check_vmath16(name, &xs, &fns[0].run(&xs));
    for c in fns {
        let ys = c.run(&xs);
        for (&(x, want), &y) in cases.iter().zip(&ys) {
            match want {
                None => assert!(y.is_nan(), "{name} [{}]({x:e}) = {y:e}, want NaN", c.label),
                Some(w) => assert!(
                    y.to_bits() == w.to_bits(),
                    "{name} [{}]({x:e}) = {y:e}, want {w:e}",
                    c.label
                ),
            }
        }
    }
}

/// `count + 1` evenly spaced points from `a` to `b` (computed in f64).
fn grid(a: f64, b: f64, count: usize) -> Vec<f32> {
    (0..=count)
        .map(|i| (a + (b - a) * i as f64 / count as f64) as f32)
        .collect()
}

/// Every `stride`-th f32 bit pattern from `lo` to `hi` (inclusive).
fn bits_range(lo: u32, hi: u32, stride: usize) -> Vec<f32> {
    (lo..=hi).step_by(stride).map(f32::from_bits).collect()
}

/// Deterministic pseudo-random f32 in `[a, b)`.
fn random(a: f32, b: f32, count: usize, seed: u64) -> Vec<f32> {
    let mut state = seed;
    (0..count)
        .map(|_| {
            state = state
                .wrapping_mul(6_364_136_223_846_793_005)
                .wrapping_add(1_442_695_040_888_963_407);
            let u = (state >> 40) as f32 / (1u64 << 24) as f32;
            a + (b - a) * u
        })
        .collect()
}

/// `±2^-k` and `±1.5·2^-k` for all k: tiny inputs down to subnormals.
fn powers_of_two() -> Vec<f32> {
    let mut v = Vec::new();
    for k in 0..=149 {
        let p = 2f64.powi(-k);
        for m in [1.0, 1.5, 1.999_999] {
            v.push((p * m) as f32);
            v.push(-(p * m) as f32);
        }
    }
    v
}

/// `x` and its 100 f32 neighbours on each side.
fn around(x: f32) -> Vec<f32> {
    let b = x.to_bits();
    bits_range(b - 100, b + 100, 1)
}

/// Values that every function sees: zeros, infinities, NaN, extremes.
fn common_specials() -> Vec<f32> {
    vec![
        0.0,
        -0.0,
        f32::INFINITY,
        f32::NEG_INFINITY,
        f32::NAN,
        -f32::NAN,
        f32::MAX,
        f32::MIN,
        f32::MIN_POSITIVE,
        -f32::MIN_POSITIVE,
        f32::from_bits(1),
        f32::from_bits(0x8000_0001),
        f32::from_bits(0x007f_ffff),
        f32::from_bits(0x807f_ffff),
        f32::EPSILON,
        1.0,
        -1.0,
    ]
}

fn sigmoid_ref(x: f64) -> f64 {
    if x >= 0.0 {
        1.0 / (1.0 + (-x).exp())
    } else {
        let e = x.exp();
        e / (1.0 + e)
    }
}

#[test]
fn exp_accuracy() {
    let fns = variants(vmath::exp);
    let mut xs = grid(-110.0, 90.0, 2_000_000);
    xs.extend(random(-104.0, 89.0, 500_000, 1));
    xs.extend(grid(-1e-3, 1e-3, 200_000));
    // Around the overflow and underflow thresholds, ulp by ulp.
    let hi = 88.722_84f32.to_bits();
    xs.extend(bits_range(hi - 2000, hi + 2000, 1));
    for t in [-103.972_08f32, -103.278_93, -87.336_55] {
        let b = t.to_bits();
        xs.extend(bits_range(b - 2000, b + 2000, 1));
    }
    xs.extend(around(48.181_007)); // worst input over all f32
    xs.extend(powers_of_two());
    xs.extend(common_specials());
    check_sweep("exp", &fns, &xs, f64::exp);

    check_specials(
        "exp",
        &fns,
        &[
            (f32::NEG_INFINITY, Some(0.0)),
            (f32::INFINITY, Some(f32::INFINITY)),
            (f32::NAN, None),
            (-f32::NAN, None),
            (0.0, Some(1.0)),
            (-0.0, Some(1.0)),
            (1.0, Some(std::f32::consts::E)),
            (88.723, Some(f32::INFINITY)),
            (89.0, Some(f32::INFINITY)),
            (100.0, Some(f32::INFINITY)),
            (f32::MAX, Some(f32::INFINITY)),
            (-103.98, Some(0.0)),
            (-104.0, Some(0.0)),
            (-200.0, Some(0.0)),
            (f32::MIN, Some(0.0)),
            // ln(2^-149) = -103.2789: the smallest subnormal.
            (-103.2789, Some(f32::from_bits(1))),
        ],
    );
}

#[test]
fn log_accuracy() {
    let fns = variants(vmath::log);
    // All positive finite floats, subnormals included, by bit pattern.
    let mut xs = bits_range(1, f32::MAX.to_bits(), 997);
    // Dense around 1, where log(x) -> 0 and relative error is hardest.
    xs.extend(bits_range(0.9f32.to_bits(), 1.1f32.to_bits(), 3));
    // Around the mantissa reduction boundaries sqrt(1/2) and sqrt(2).
    for t in [std::f32::consts::FRAC_1_SQRT_2, std::f32::consts::SQRT_2] {
        let b = t.to_bits();
        xs.extend(bits_range(b - 5000, b + 5000, 1));
    }
    xs.extend(random(0.0, 100.0, 300_000, 2));
    xs.extend(around(2.720_702_6)); // worst input over all f32
    xs.extend(powers_of_two().into_iter().filter(|x| *x > 0.0));
    xs.extend(common_specials());
    xs.extend([-1.0, -1e-30, -100.0]);
    check_sweep("log", &fns, &xs, f64::ln);

    check_specials(
        "log",
        &fns,
        &[
            (0.0, Some(f32::NEG_INFINITY)),
            (-0.0, Some(f32::NEG_INFINITY)),
            (-1.0, None),
            (-f32::MIN_POSITIVE, None),
            (f32::from_bits(0x8000_0001), None),
            (f32::NEG_INFINITY, None),
            (f32::INFINITY, Some(f32::INFINITY)),
            (f32::NAN, None),
            (-f32::NAN, None),
            (1.0, Some(0.0)),
            (2.0, Some(std::f32::consts::LN_2)),
            (f32::MAX, Some(88.722_84)),
            // Smallest subnormal: ln(2^-149) = -103.27893.
            (f32::from_bits(1), Some(-103.278_93)),
        ],
    );
}

#[test]
fn tanh_accuracy() {
    let fns = variants(vmath::tanh);
    let mut xs = grid(-100.0, 100.0, 2_000_000);
    xs.extend(grid(-1e-3, 1e-3, 1_000_000));
    xs.extend(random(-10.0, 10.0, 500_000, 3));
    // Both sides of the polynomial / exp switch point, ulp by ulp.
    let b = 1.0f32.to_bits();
    xs.extend(bits_range(b - 20_000, b + 20_000, 1));
    xs.extend(bits_range(b - 20_000, b + 20_000, 1).iter().map(|x| -x));
    xs.extend(around(0.876_473_9)); // worst input over all f32
    xs.extend(powers_of_two());
    xs.extend(common_specials());
    check_sweep("tanh", &fns, &xs, f64::tanh);

    let tiny = f32::from_bits(1);
    check_specials(
        "tanh",
        &fns,
        &[
            (f32::INFINITY, Some(1.0)),
            (f32::NEG_INFINITY, Some(-1.0)),
            (f32::NAN, None),
            (-f32::NAN, None),
            (0.0, Some(0.0)),
            (-0.0, Some(-0.0)),
            (tiny, Some(tiny)),
            (-tiny, Some(-tiny)),
            (1e-20, Some(1e-20)),
            (-1e-20, Some(-1e-20)),
            (f32::MAX, Some(1.0)),
            (f32::MIN, Some(-1.0)),
            (20.0, Some(1.0)),
            (-20.0, Some(-1.0)),
        ],
    );
}

#[test]
fn sigmoid_accuracy() {
    let fns = variants(vmath::sigmoid);
    let mut xs = grid(-110.0, 100.0, 2_000_000);
    xs.extend(grid(-1e-3, 1e-3, 1_000_000));
    xs.extend(random(-20.0, 20.0, 500_000, 4));
    xs.extend(around(-86.642_334)); // worst input over all f32
    xs.extend(powers_of_two());
    xs.extend(common_specials());
    check_sweep("sigmoid", &fns, &xs, sigmoid_ref);

    check_specials(
        "sigmoid",
        &fns,
        &[
            (f32::NEG_INFINITY, Some(0.0)),
            (f32::INFINITY, Some(1.0)),
            (f32::NAN, None),
            (-f32::NAN, None),
            (0.0, Some(0.5)),
            (-0.0, Some(0.5)),
            (f32::MAX, Some(1.0)),
            (f32::MIN, Some(0.0)),
            (20.0, Some(1.0)),
            (-200.0, Some(0.0)),
            // Smallest subnormal, 2^-149 = sigmoid(-103.2789).
            (-103.2789, Some(f32::from_bits(1))),
        ],
    );
}
