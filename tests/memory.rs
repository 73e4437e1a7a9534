//! The memory plan of every example's training step: the arena is at least
//! the live-set lower bound (no two live buffers share bytes) and at most
//! 1.5× it (issue 6's bound on the first-fit placement), with and without
//! the staging scratch of a two-thread split.

use nnc::driver::{self, OptLevel};
use nnc_runtime::Batch;

mod common;
use common::EXAMPLES;

#[test]
fn arenas_are_within_1_5x_of_the_live_set_bound() {
    for threads in [1, 2] {
        nnc_codegen::set_threads(threads).unwrap();
        for name in EXAMPLES {
            let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
                .join(format!("examples/{name}.nn"));
            let src = nnc_dsl::SourceFile::new(name, std::fs::read_to_string(path).unwrap());
            let module = driver::compile_source(&src, None).unwrap();
            let batch_size = module.train.as_ref().unwrap().batch;
            let step = driver::programs(&module, OptLevel::O2).unwrap().step;
            let batch = Batch::synthetic(&step, batch_size, 1);
            let bindings = nnc_runtime::jit::bind_symbols(&step, &batch).unwrap();
            let layout = nnc_codegen::StateLayout::of(&[&step]).unwrap();
            let plan = nnc_codegen::plan::plan(&step, &bindings, &layout).unwrap();
            let (arena, live) = (plan.arena_bytes as f64, plan.live_bytes as f64);
            assert!(live > 0.0, "{name}: no live bytes");
            assert!(
                live <= arena && arena <= 1.5 * live.max(64.0),
                "{name} on {threads} thread(s): arena {arena} B, live-set bound {live} B"
            );
        }
    }
    nnc_codegen::set_threads(1).unwrap();
}
