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
    Exec(cli::ExecOptions),
    /// Run the agent: the pool of allocs on this machine, until SIGTERM/SIGINT or idleness.
    Serve(cli::ServeOptions),
    /// Read allocs and exec manifests from a state directory, offline (post-mortems).
    Inspect(cli::InspectOptions),
    /// Send a command (e.g. a job) to a queue; with --wait, print its outcome event.
    Submit(cli::SubmitOptions),
    /// Copy files to or from S3 (with a progress bar; uploads carry Content-Sha256, downloads
    /// are verified).
    S3 {
        #[command(subcommand)]
        command: S3Command,
    },
    /// List or replay a queue's dead-lettered commands.
    Dlq {
        #[command(subcommand)]
        command: cli::DlqCommand,
    },
}

#[derive(Debug, Subcommand)]
enum S3Command {
    /// Copy a file or directory to S3, or an object or prefix from S3.
    Cp(cli::S3CpOptions),
}

fn main() -> ExitCode {
    let args = Args::parse();
    telemetry::init(args.log_format);
    let result: Result<(), CliError> = match args.command {
        Command::Repo { dir, command } => cli::run_repo(&dir, command),
        Command::Exec(opts) => cli::run_exec(&opts),
        Command::Serve(opts) => cli::run_serve(&opts),
        Command::Inspect(opts) => cli::run_inspect(&opts),
        Command::Submit(opts) => cli::run_submit(&opts),
        Command::Dlq { command } => cli::run_dlq(&command),
        Command::S3 {
            command: S3Command::Cp(opts),
        } => cli::run_s3_cp(&opts),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("reflow-agent: {:#}", anyhow::Error::from(e));
            ExitCode::FAILURE
        }
    }
}
