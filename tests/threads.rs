//! Training steps on several threads compute exactly what one thread
//! does: the pool splits products by whole rows or columns and elementwise
//! loops by whole work units, never a sum. (Its own test binary: the
//! thread count is process-wide.)

use nnc::driver::{self, OptLevel};
use nnc_runtime::{Batch, Executor, Jit};

/// The params and optimizer state after `steps` training steps of the
/// example `name` at batch `size`, on `threads` threads.
fn state_after(name: &str, size: usize, steps: usize, threads: usize) -> Vec<(String, Vec<f64>)> {
    nnc_codegen::set_threads(threads).unwrap();
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join(format!("examples/{name}.nn"));
    let src = nnc_dsl::SourceFile::new(name, std::fs::read_to_string(path).unwrap());
    let module = driver::compile_source(&src, None).unwrap();
    let spec = module.train.clone().unwrap();
    let programs = driver::programs(&module, OptLevel::O2).unwrap();
    let mut batch = Batch::synthetic(&programs.step, size, 7);
    let mut jit = Jit::new(programs, 3).unwrap();
    for k in 0..steps {
        nnc_runtime::train::feed_hyper(&mut batch, &spec.optimizer, spec.optimizer.lr(), k as u64);
        jit.train_step(&batch).unwrap();
    }
    jit.state().into_iter().map(|(n, t)| (n, t.data)).collect()
}

#[test]
fn mlp_lenet_and_cifar_steps_are_identical_on_one_two_and_three_threads() {
    // The MLP at batch 128 splits its products (by columns and rows) and
    // its Adam updates; LeNet adds staged convolutions; CIFAR's conv1 (3
    // input channels, 75 columns of weight gradient) is cut inside a
    // channel on two threads.
    for (name, size) in [("mnist_mlp", 128), ("lenet", 64), ("cifar_cnn", 8)] {
        let one = state_after(name, size, 3, 1);
        for threads in [2, 3] {
            let many = state_after(name, size, 3, threads);
            assert_eq!(one.len(), many.len());
            for ((n1, a), (n2, b)) in one.iter().zip(&many) {
                assert_eq!(n1, n2);
                let same = a.iter().zip(b).all(|(x, y)| x.to_bits() == y.to_bits());
                assert!(
                    same,
                    "{name}: `{n1}` differs between 1 and {threads} threads"
                );
            }
        }
    }
    nnc_codegen::set_threads(1).unwrap();
}
