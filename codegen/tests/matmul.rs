//! Differential tests of the Cranelift-emitted matrix product
//! (`nnc_codegen::matmul`) against a plain f64 triple loop.
//!
//! Every product is compiled with `matmul::Kernel`, which emits
//! `emit_small_matmul` whatever `product_in_loops` says, over every
//! `m, n, k ∈ {0..=9, 15, 16, 17, 23, 33}` with plain, transposed, padded
//! (sliced) and broadcast (stride 0) operands and in batches. The operand
//! buffers have guard zones, and `c` starts as NaN: every element of `c`
//! must be written, nothing outside it may be.
//!
//! Tolerance: `|got - want| <= 2·(k + 1)·2^-24 · Σ_k |a·b|` (the f32
//! rounding bound of a k-term dot product, doubled), and exactly 0 for
//! `k = 0`.
//!
//! The last tests go through `Program` (graph → plan → `emit_matmul`), so
//! the dispatch between these loops and `gemm` is covered on both sides of
//! the threshold.

use nnc_codegen::matmul::{self, BatchDim, Kernel, Mat};
use nnc_codegen::{Program, StateBuffer, StateLayout};
use nnc_ir::{shape_of, DType, Graph, Init, TensorType};
use std::collections::HashMap;

const SIZES: [usize; 15] = [0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 15, 16, 17, 23, 33];
const GUARD: usize = 16;
const SENTINEL: f32 = -12345.5;

struct Rng(u64);

impl Rng {
    fn unit(&mut self) -> f32 {
        self.0 = self
            .0
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        ((self.0 >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0
    }
}

/// A buffer of `len` floats between guard zones of `SENTINEL`.
struct Buf {
    data: Vec<f32>,
}

impl Buf {
    fn new(len: usize, fill: impl FnMut() -> f32) -> Buf {
        let mut data = vec![SENTINEL; len + 2 * GUARD];
        data[GUARD..GUARD + len]
            .iter_mut()
            .zip(std::iter::repeat_with(fill))
            .for_each(|(d, v)| *d = v);
        Buf { data }
    }
    fn addr(&self) -> usize {
        self.data[GUARD..].as_ptr() as usize
    }
    fn at(&self, i: isize) -> f32 {
        self.data[(GUARD as isize + i) as usize]
    }
    fn guards_intact(&self) -> bool {
        let n = self.data.len();
        self.data[..GUARD]
            .iter()
            .chain(&self.data[n - GUARD..])
            .all(|&v| v == SENTINEL)
    }
}

/// How an operand `[rows, cols]` is laid out in its buffer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Layout {
    /// Row-major.
    Plain,
    /// A transposed view of a row-major `[cols, rows]`.
    Transposed,
    /// Row-major with 3 unused elements after each row (a slice).
    Padded,
    /// One row repeated: row stride 0.
    RowBroadcast,
}

impl Layout {
    /// `(rs, cs, elements)`.
    fn strides(self, rows: usize, cols: usize) -> (isize, isize, usize) {
        let (r, c) = (rows as isize, cols as isize);
        match self {
            Layout::Plain => (c, 1, rows * cols),
            Layout::Transposed => (1, r, rows * cols),
            Layout::Padded => (c + 3, 1, rows * (cols + 3)),
            Layout::RowBroadcast => (0, 1, cols),
        }
    }
}

/// Batch dims of a batched case, with each operand's batch strides given
/// in units of that operand's matrix size (`0`: shared).
#[derive(Debug, Clone)]
struct Batch {
    dims: Vec<usize>,
    a: Vec<isize>,
    b: Vec<isize>,
}

/// One product `c = a @ b`.
#[derive(Debug, Clone)]
struct Case {
    m: usize,
    n: usize,
    k: usize,
    a: Layout,
    b: Layout,
    /// Extra elements after each row of `c`.
    c_pad: usize,
    batch: Batch,
}

fn plain(m: usize, n: usize, k: usize, a: Layout, b: Layout) -> Case {
    Case {
        m,
        n,
        k,
        a,
        b,
        c_pad: 0,
        batch: Batch {
            dims: Vec::new(),
            a: Vec::new(),
            b: Vec::new(),
        },
    }
}

/// Compiles and runs `case`, compares with f64 and checks the guards.
fn check(case: &Case, rng: &mut Rng) {
    let Case { m, n, k, .. } = *case;
    let (a_rs, a_cs, a_len) = case.a.strides(m, k);
    let (b_rs, b_cs, b_len) = case.b.strides(k, n);
    let c_rs = (n + case.c_pad) as isize;
    let c_len = m * (n + case.c_pad);
    let count: usize = case.batch.dims.iter().product();
    // Batch strides in elements, and the buffer sizes they need.
    let scaled = |units: &[isize], len: usize| -> (Vec<isize>, usize) {
        let s: Vec<isize> = units.iter().map(|&u| u * len as isize).collect();
        if count == 0 {
            return (s, len);
        }
        let span = case
            .batch
            .dims
            .iter()
            .zip(&s)
            .map(|(&d, &st)| (d as isize - 1) * st)
            .sum::<isize>() as usize;
        (s, span + len)
    };
    let (ba, a_total) = scaled(&case.batch.a, a_len);
    let (bb, b_total) = scaled(&case.batch.b, b_len);
    let c_units: Vec<isize> = {
        // `c` is contiguous over the batch dims.
        let mut acc = 1isize;
        let mut v = vec![0; case.batch.dims.len()];
        for i in (0..v.len()).rev() {
            v[i] = acc;
            acc *= case.batch.dims[i] as isize;
        }
        v
    };
    let (bc, c_total) = scaled(&c_units, c_len);
    let a = Buf::new(a_total, || rng.unit());
    let b = Buf::new(b_total, || rng.unit());
    let mut c = Buf::new(c_total, || f32::NAN);
    if case.c_pad > 0 {
        // Padding between rows must stay untouched: mark it.
        for flat in 0..count {
            let co = batch_offset(flat, &case.batch.dims, &bc);
            for i in 0..m {
                for j in n..n + case.c_pad {
                    c.data[GUARD + (co + i as isize * c_rs) as usize + j] = SENTINEL;
                }
            }
        }
    }
    let dims: Vec<BatchDim> = (0..case.batch.dims.len())
        .map(|i| BatchDim {
            len: case.batch.dims[i],
            a: ba[i],
            b: bb[i],
            c: bc[i],
        })
        .collect();
    let mat = |buf: &Buf, rs, cs| Mat {
        addr: buf.addr(),
        rs,
        cs,
    };
    // SAFETY: the buffers outlive the kernel's one run, and `c` is its own
    // allocation.
    let kernel = unsafe {
        Kernel::compile(
            m,
            n,
            k,
            mat(&c, c_rs, 1),
            mat(&a, a_rs, a_cs),
            mat(&b, b_rs, b_cs),
            &dims,
        )
    }
    .unwrap_or_else(|e| panic!("{case:?}: {e}"));
    // SAFETY: as above.
    unsafe { kernel.run() };
    assert!(
        a.guards_intact() && b.guards_intact() && c.guards_intact(),
        "{case:?}: wrote outside c"
    );
    for flat in 0..count {
        let (ao, bo, co) = (
            batch_offset(flat, &case.batch.dims, &ba),
            batch_offset(flat, &case.batch.dims, &bb),
            batch_offset(flat, &case.batch.dims, &bc),
        );
        for i in 0..m {
            for j in 0..n + case.c_pad {
                let got = c.at(co + i as isize * c_rs + j as isize);
                if j >= n {
                    assert_eq!(got, SENTINEL, "{case:?}: wrote c's row padding");
                    continue;
                }
                let (mut want, mut mag) = (0f64, 0f64);
                for kk in 0..k {
                    let x = f64::from(a.at(ao + i as isize * a_rs + kk as isize * a_cs));
                    let y = f64::from(b.at(bo + kk as isize * b_rs + j as isize * b_cs));
                    want += x * y;
                    mag += (x * y).abs();
                }
                let tol = 2.0 * (k as f64 + 1.0) * f64::from(f32::EPSILON) / 2.0 * mag;
                let err = (f64::from(got) - want).abs();
                assert!(
                    err <= tol,
                    "{case:?} batch {flat} c[{i},{j}] = {got}, want {want} (error {err:e} > {tol:e})"
                );
            }
        }
    }
}

fn batch_offset(flat: usize, dims: &[usize], strides: &[isize]) -> isize {
    let (mut rem, mut off) = (flat, 0isize);
    for i in (0..dims.len()).rev() {
        off += (rem % dims[i]) as isize * strides[i];
        rem /= dims[i];
    }
    off
}

fn every_shape(a: Layout, b: Layout, seed: u64) {
    let mut rng = Rng(seed);
    for &m in &SIZES {
        for &n in &SIZES {
            for &k in &SIZES {
                check(&plain(m, n, k, a, b), &mut rng);
            }
        }
    }
}

#[test]
fn every_shape_a_at_b() {
    every_shape(Layout::Plain, Layout::Plain, 1);
}

#[test]
fn every_shape_a_at_b_transposed() {
    // The dot-product form (k >= 4) and its k % 4 tails.
    every_shape(Layout::Plain, Layout::Transposed, 2);
}

#[test]
fn every_shape_a_transposed_at_b() {
    every_shape(Layout::Transposed, Layout::Plain, 3);
}

#[test]
fn every_shape_both_transposed() {
    // `b`'s columns gathered four scalars at a time.
    every_shape(Layout::Transposed, Layout::Transposed, 4);
}

#[test]
fn padded_and_broadcast_operands_and_padded_c() {
    let mut rng = Rng(5);
    let layouts = [
        Layout::Plain,
        Layout::Transposed,
        Layout::Padded,
        Layout::RowBroadcast,
    ];
    let sizes = [1usize, 3, 4, 5, 8, 9, 17];
    for &a in &layouts {
        for &b in &layouts {
            for &m in &sizes {
                for &n in &sizes {
                    for &k in &[0usize, 1, 4, 7, 9] {
                        let mut case = plain(m, n, k, a, b);
                        case.c_pad = (m + n + k) % 3;
                        check(&case, &mut rng);
                    }
                }
            }
        }
    }
}

#[test]
fn batched_products() {
    let mut rng = Rng(6);
    let batches = [
        // Everything per batch.
        (vec![3], vec![1], vec![1]),
        // `b` shared by every batch (not folded here: a loop over batches).
        (vec![2], vec![1], vec![0]),
        // `a` shared.
        (vec![2], vec![0], vec![1]),
        // Two batch dims, `b` broadcast along the first.
        (vec![2, 3], vec![3, 1], vec![0, 1]),
        // A batch of one, and an empty batch.
        (vec![1], vec![1], vec![1]),
        (vec![0], vec![1], vec![1]),
    ];
    for (dims, ua, ub) in &batches {
        for &(m, n, k) in &[
            (1, 1, 1),
            (3, 5, 4),
            (4, 8, 8),
            (5, 9, 7),
            (9, 17, 5),
            (2, 3, 0),
        ] {
            for &(a, b) in &[
                (Layout::Plain, Layout::Plain),
                (Layout::Plain, Layout::Transposed),
                (Layout::Transposed, Layout::Plain),
            ] {
                let mut case = plain(m, n, k, a, b);
                case.batch = Batch {
                    dims: dims.clone(),
                    a: ua.clone(),
                    b: ub.clone(),
                };
                case.c_pad = m % 2;
                check(&case, &mut rng);
            }
        }
    }
}

#[test]
fn larger_shapes_than_the_tests_above() {
    // Shapes of the MLP benchmarks and some over the threshold, forced
    // through the Cranelift loops.
    let mut rng = Rng(7);
    for &(m, n, k) in &[
        (32, 64, 64),
        (32, 10, 64),
        (64, 64, 32),
        (1, 784, 128),
        (8, 128, 784),
        (128, 130, 67),
    ] {
        for &(a, b) in &[
            (Layout::Plain, Layout::Plain),
            (Layout::Plain, Layout::Transposed),
            (Layout::Transposed, Layout::Plain),
        ] {
            check(&plain(m, n, k, a, b), &mut rng);
        }
    }
}

// ---- through `Program`: the dispatch in `emit_matmul` ----

/// `y = x @ w` and `z = x @ w^T`-style products of the given sizes through
/// a compiled program, compared with f64.
fn program_products(m: usize, n: usize, k: usize) {
    let f32t = |d: &[usize]| TensorType::new(DType::F32, shape_of(d));
    let mut g = Graph::new("mm");
    let x = g.input("x", f32t(&[m, k]));
    let w = g.param("w", f32t(&[k, n]), Init::Zeros);
    let wt = g.param("wt", f32t(&[n, k]), Init::Zeros);
    let y = g.matmul(x, w).unwrap();
    let t = g.transpose(wt, vec![1, 0]).unwrap();
    let z = g.matmul(x, t).unwrap();
    g.set_output("y", y);
    g.set_output("z", z);
    let mut rng = Rng((m * 31 + n * 7 + k) as u64);
    let xs: Vec<f32> = (0..m * k).map(|_| rng.unit()).collect();
    let ws: Vec<f32> = (0..k * n).map(|_| rng.unit()).collect();
    let wts: Vec<f32> = (0..n * k).map(|_| rng.unit()).collect();
    let mut state = StateBuffer::new(StateLayout::of(&[&g]).unwrap());
    let tensor = |d: &[usize], v: &[f32]| {
        nnc_ir::Tensor::from_vec(DType::F32, d, v.iter().map(|&x| f64::from(x)).collect()).unwrap()
    };
    state.set("w", &tensor(&[k, n], &ws)).unwrap();
    state.set("wt", &tensor(&[n, k], &wts)).unwrap();
    let mut program = Program::compile(&g, &HashMap::new(), &state).unwrap();
    program.set_input_f32("x", &xs).unwrap();
    program.run().unwrap();
    for (name, bw) in [("y", false), ("z", true)] {
        let got = program.output(name, &state).unwrap();
        assert_eq!(got.shape, vec![m, n]);
        for i in 0..m {
            for j in 0..n {
                let (mut want, mut mag) = (0f64, 0f64);
                for kk in 0..k {
                    let wv = if bw { wts[j * k + kk] } else { ws[kk * n + j] };
                    let p = f64::from(xs[i * k + kk]) * f64::from(wv);
                    want += p;
                    mag += p.abs();
                }
                let tol = (k as f64 + 1.0) * f64::from(f32::EPSILON) * mag;
                let got = got.data[i * n + j];
                assert!(
                    (got - want).abs() <= tol,
                    "{m}x{n}x{k} `{name}`[{i},{j}] = {got}, want {want}"
                );
            }
        }
    }
}

#[test]
fn program_products_below_and_above_the_threshold() {
    // (m, n, k), and whether the product runs as Cranelift loops.
    let cases = [
        ((4, 10, 64), true),
        ((8, 64, 128), true),
        ((32, 64, 64), false),
        ((128, 256, 256), false),
        ((7, 5, 0), true),
        ((1, 10, 3), true),
    ];
    for ((m, n, k), cranelift) in cases {
        assert_eq!(matmul::product_in_loops(m, n, k, false), cranelift);
        program_products(m, n, k);
    }
}
