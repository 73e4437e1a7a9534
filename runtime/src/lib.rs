//! Runtime support for compiled `nnc` models: what a generated training or
//! inference program needs at run time besides its own kernels.

pub mod data;
