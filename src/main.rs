//! `nnc`: check, compile and run `.nn` neural-network programs.

use clap::{Parser, Subcommand, ValueEnum};
use nnc::driver::{self, Emit, RunSettings};
use std::path::PathBuf;
use std::process::ExitCode;

#[derive(Parser)]
#[command(name = "nnc", version, about = "A compiler for neural networks", long_about = None)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Parse and type-check a file: shapes, names, data and train blocks.
    Check {
        file: PathBuf,
        /// The model to check when the file has several and no `train` block.
        #[arg(long)]
        model: Option<String>,
    },
    /// Print a stage of the compilation.
    Compile {
        file: PathBuf,
        /// What to print.
        #[arg(long, value_enum, default_value_t = EmitArg::Ir)]
        emit: EmitArg,
        #[arg(long)]
        model: Option<String>,
    },
    /// Train the model as the file's `train` block says.
    Run {
        file: PathBuf,
        /// How to execute the graphs.
        #[arg(long, value_enum, default_value_t = Backend::Interp)]
        backend: Backend,
        /// Resolve the data block's relative paths here instead of next to FILE.
        #[arg(long)]
        data_dir: Option<PathBuf>,
        /// Override the number of epochs.
        #[arg(long)]
        epochs: Option<usize>,
        /// Override the batch size.
        #[arg(long)]
        batch: Option<usize>,
        /// Override the seed.
        #[arg(long)]
        seed: Option<u64>,
        #[arg(long)]
        model: Option<String>,
    },
}

#[derive(Clone, Copy, ValueEnum)]
enum EmitArg {
    /// The parsed syntax tree.
    Ast,
    /// The model's forward graph (and the objective with the loss).
    Ir,
    /// The objective with the gradient of the loss for every param.
    Grad,
    /// The whole training step: forward, loss, backward, optimizer update.
    TrainStep,
}

#[derive(Clone, Copy, ValueEnum)]
enum Backend {
    /// The reference interpreter: slow, and the definition of correct.
    Interp,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Check { file, model } => driver::read_source(&file)
            .and_then(|src| driver::compile_source(&src, model.as_deref()).map(|m| (src, m)))
            .map(|(src, m)| {
                let params: usize = m
                    .forward
                    .params()
                    .iter()
                    .filter_map(|(n, _)| m.forward.ty(*n).const_numel())
                    .sum();
                println!("{}: ok — model {} with {params} params", src.path, m.name);
            }),
        Command::Compile { file, emit, model } => {
            let stage = match emit {
                EmitArg::Ast => Emit::Ast,
                EmitArg::Ir => Emit::Ir,
                EmitArg::Grad => Emit::Grad,
                EmitArg::TrainStep => Emit::TrainStep,
            };
            driver::read_source(&file)
                .and_then(|src| driver::emit(&src, stage, model.as_deref()))
                .map(|text| print!("{text}"))
        }
        Command::Run {
            file,
            backend: Backend::Interp,
            data_dir,
            epochs,
            batch,
            seed,
            model,
        } => {
            let settings = RunSettings {
                data_dir,
                model,
                options: nnc_runtime::TrainOptions {
                    epochs,
                    batch,
                    seed,
                },
            };
            driver::run(&file, &settings, &mut |line| println!("{line}")).map(|_| ())
        }
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(failure) => {
            eprint!("{failure}");
            ExitCode::from(1)
        }
    }
}
