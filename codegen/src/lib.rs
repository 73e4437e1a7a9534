//! Native code generation for nnc graphs (Cranelift JIT, GEMM dispatch,
//! memory planning). Empty until the JIT lands: today every graph runs on
//! the reference interpreter in `nnc_ir::interp`.
