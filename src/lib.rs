//! The `nnc` command-line driver: reads a `.nn` file, runs the pipeline
//! `dsl → ir → passes → runtime`, and renders every error one way.

pub mod bench;
pub mod compress;
pub mod diagnostic;
pub mod driver;
pub mod serve;
pub mod summary;
