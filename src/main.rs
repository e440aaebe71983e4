//! The `reflow-agent` binary: parses arguments, sets up logging and hands over to the library.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use reflow_agent::cli::{self, CliError, RepoCommand};
use reflow_agent::telemetry::{self, LogFormat};

#[derive(Debug, Parser)]
#[command(
    name = "reflow-agent",
    version,
    about = "Runs Reflow-compatible execs from a message queue on the local Docker engine."
)]
struct Args {
    /// Log format on stderr.
    #[arg(long, value_enum, default_value_t = LogFormat::Auto, global = true)]
    log_format: LogFormat,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Offline tools for a content-addressed repository directory.
    Repo {
        /// The repository directory (an executor's `objects/`).
        #[arg(long)]
        dir: PathBuf,
        #[command(subcommand)]
        command: RepoCommand,
    },
    /// Run one exec on a local executor directory and print its result.
    Exec {
        /// The executor directory.
        #[arg(long)]
        dir: PathBuf,
        /// The executor id (used in container names and labels).
        #[arg(long, default_value = "local")]
        executor_id: String,
        /// The exec id (a sha256 digest).
        #[arg(long)]
        id: String,
        /// A Reflow ExecConfig JSON file.
        #[arg(long)]
        config: PathBuf,
        /// Load every input fileset from this repository URL (`file:///path`) first.
        #[arg(long)]
        inputs_from: Option<String>,
        /// Promote the outputs into the executor repository.
        #[arg(long)]
        promote: bool,
    },
}

fn main() -> ExitCode {
    let args = Args::parse();
    telemetry::init(args.log_format);
    let result: Result<(), CliError> = match args.command {
        Command::Repo { dir, command } => cli::run_repo(&dir, command),
        Command::Exec {
            dir,
            executor_id,
            id,
            config,
            inputs_from,
            promote,
        } => cli::run_exec(
            &dir,
            &executor_id,
            &id,
            &config,
            inputs_from.as_deref(),
            promote,
        ),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("reflow-agent: {:#}", anyhow::Error::from(e));
            ExitCode::FAILURE
        }
    }
}
