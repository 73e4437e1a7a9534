//! `nnc-dsl`: the front end of nnc — grammar, AST, parser, diagnostics data,
//! the prelude, and elaboration of a `.nn` program into an `nnc_ir::Module`.
//!
//! ```
//! use nnc_dsl::{parse, SourceFile};
//! let src = SourceFile::new("m.nn", "model M { input x: f32[B, 4] output x }");
//! let program = parse(&src).unwrap();
//! assert_eq!(program.items.len(), 1);
//! ```

// Front-end errors carry labels, notes and help for the renderer; they are
// built once per failed compile, so their size on the error path is no cost.
#![allow(clippy::result_large_err)]

mod args;
pub mod ast;
mod builtins;
mod elaborate;
pub mod error;
mod lower;
pub mod parse;
mod scan;
pub mod span;
mod value;

pub use ast::Program;
pub use error::Error;
pub use lower::{compile, compile_program, parse_program, prelude_file, PRELUDE};
pub use parse::{describe_token, parse, ParseError};
pub use span::{SourceFile, Span};
