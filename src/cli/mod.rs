//! The command-line interface (everything but argument parsing in `main`), one file per
//! subcommand: `serve` runs the agent, `submit` and `dlq` are the
//! producer's and operator's queue tools, `repo`, `exec`, `inspect`
//! and `s3` work offline. This file holds what they share: the error type, progress bars,
//! JSON output, the HMAC key and TLS arguments. Long operations draw a progress bar on stderr
//! when it is a terminal.

use crate::digest::{Digest, DigestError};
use crate::error::{Classify, Kind};
use crate::par;
use crate::repo::{FileRepository, RepoError};
use clap::Subcommand;
use indicatif::{ProgressBar, ProgressStyle};
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use thiserror::Error;

mod dlq;
mod exec;
mod inspect;
mod repo;
mod s3;
mod serve;
mod submit;

pub use dlq::{DlqCommand, run_dlq};
pub use exec::{ExecOptions, MAX_CONFIG_BYTES, run_exec};
pub use inspect::{InspectOptions, run_inspect};
pub use repo::{RepoCommand, run_repo};
pub use s3::{S3CpOptions, run_s3_cp};
pub use serve::{ServeOptions, run_serve};
pub use submit::{SubmitOptions, run_submit};

/// CLI failures.
#[derive(Debug, Error)]
pub enum CliError {
    /// A repository operation failed.
    #[error(transparent)]
    Repo(#[from] RepoError),
    /// A digest argument is malformed.
    #[error(transparent)]
    Digest(#[from] DigestError),
    /// Writing output failed.
    #[error("write output")]
    Output(#[source] io::Error),
    /// Encoding JSON output failed.
    #[error("encode output")]
    Encode(#[source] serde_json::Error),
    /// An executor operation failed.
    #[error(transparent)]
    Executor(#[from] crate::executor::ExecutorError),
    /// A config file could not be read.
    #[error("read {what}")]
    Input {
        /// What was being read.
        what: &'static str,
        /// Cause.
        #[source]
        source: crate::persist::PersistError,
    },
    /// The async runtime could not start.
    #[error("start the async runtime")]
    Runtime(#[source] io::Error),
    /// The container engine is unusable.
    #[error(transparent)]
    Engine(#[from] crate::docker::RuntimeError),
    /// The agent failed.
    #[error(transparent)]
    Agent(#[from] crate::agent::AgentError),
    /// The configuration could not be read.
    #[error(transparent)]
    Config(#[from] crate::config::ConfigError),
    /// The configuration has problems (all of them are listed).
    #[error(transparent)]
    InvalidConfig(#[from] crate::config::ConfigErrors),
    /// A queue operation failed.
    #[error(transparent)]
    Queue(#[from] crate::queue::QueueError),
    /// The command to submit is not valid.
    #[error("the command is not valid")]
    Command(#[from] crate::protocol::ProtocolError),
    /// The command needs a backend this build does not have.
    #[error("{}", crate::features::not_built(what, feature))]
    NotBuilt {
        /// What needs it.
        what: &'static str,
        /// The cargo feature.
        feature: &'static str,
    },
    /// The submitted command failed or was rejected (the event was printed).
    #[error("{what}: {error}")]
    Failed {
        /// What failed.
        what: &'static str,
        /// The error the agent reported.
        error: crate::error::ReflowError,
    },
    /// No outcome arrived in time.
    #[error("no outcome within {secs} s")]
    Timeout {
        /// The wait, seconds.
        secs: u64,
    },
    /// A blob store transfer failed (`s3 cp`); the error names the object.
    #[error(transparent)]
    Blob(#[from] crate::blob::BlobError),
    /// A file named on the command line could not be read.
    #[error("read {path}")]
    Read {
        /// The file.
        path: PathBuf,
        /// Cause.
        #[source]
        source: io::Error,
    },
    /// Some objects failed verification.
    #[error("{failed} of {total} objects failed verification")]
    VerifyFailed {
        /// How many failed.
        failed: usize,
        /// How many were checked.
        total: usize,
    },
}

impl Classify for CliError {
    fn kind(&self) -> Kind {
        match self {
            CliError::Repo(e) => e.kind(),
            CliError::Digest(e) => e.kind(),
            CliError::Executor(e) => e.kind(),
            CliError::Input { source, .. } => source.kind(),
            CliError::Engine(e) => e.kind(),
            CliError::Agent(e) => e.kind(),
            CliError::Config(e) => e.kind(),
            CliError::InvalidConfig(e) => e.kind(),
            CliError::Output(_) | CliError::Encode(_) | CliError::Runtime(_) => Kind::Other,
            CliError::VerifyFailed { .. } => Kind::Integrity,
            CliError::Blob(e) => e.kind(),
            CliError::Queue(e) => e.kind(),
            CliError::Command(e) => e.kind(),
            CliError::Failed { error, .. } => error.kind,
            CliError::Timeout { .. } => Kind::Timeout,
            CliError::NotBuilt { .. } => Kind::NotSupported,
            CliError::Read { source, .. } => crate::error::io_kind(source),
        }
    }
}

fn progress_bar(total: u64, what: &str) -> ProgressBar {
    let pb = ProgressBar::new(total);
    if let Ok(style) = ProgressStyle::with_template(
        "{msg} [{bar:30}] {bytes}/{total_bytes} {bytes_per_sec} eta {eta}",
    ) {
        pb.set_style(style.progress_chars("=> "));
    }
    pb.set_message(what.to_string());
    pb
}

fn print_json<T: serde::Serialize>(v: &T) -> Result<(), CliError> {
    // Buffered: stdout alone writes each line as it ends, and a fileset of 10,000 files is
    // 60,000 lines.
    let mut out = io::BufWriter::new(io::stdout().lock());
    serde_json::to_writer_pretty(&mut out, v).map_err(CliError::Encode)?;
    writeln!(out).map_err(CliError::Output)?;
    out.flush().map_err(CliError::Output)
}

/// The HMAC key shared by producers and agents: from `REFLOW_AGENT_HMAC_KEY` (hidden from
/// `--help`, never logged).
#[derive(Clone, clap::Args)]
pub struct HmacKeyArg {
    /// The key.
    #[arg(
        long = "hmac-key",
        env = "REFLOW_AGENT_HMAC_KEY",
        hide = true,
        hide_env_values = true
    )]
    pub hmac_key: Option<String>,
}

impl std::fmt::Debug for HmacKeyArg {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HmacKeyArg")
            .field("hmac_key", &self.hmac_key.as_ref().map(|_| "<redacted>"))
            .finish()
    }
}

fn runtime() -> Result<tokio::runtime::Runtime, CliError> {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(CliError::Runtime)
}

/// A spinner on stderr (hidden when stderr is not a terminal).
fn spinner(msg: &str) -> ProgressBar {
    let bar = ProgressBar::new_spinner();
    bar.set_style(
        ProgressStyle::with_template("{spinner} {elapsed} {msg}")
            .unwrap_or_else(|_| ProgressStyle::default_spinner()),
    );
    bar.set_message(msg.to_string());
    bar.enable_steady_tick(std::time::Duration::from_millis(120));
    bar
}

/// How a CLI client connects to an `amqps://` broker.
#[derive(Debug, Clone, Default, clap::Args)]
pub struct TlsArgs {
    /// A PEM file of CA certificates to trust besides the system's.
    #[arg(long, env = "REFLOW_AGENT_TLS_CA_FILE")]
    pub tls_ca_file: Option<PathBuf>,
    /// The client's certificate and key as PKCS#12, for a broker that verifies clients.
    #[arg(long, env = "REFLOW_AGENT_TLS_CLIENT_IDENTITY_FILE")]
    pub tls_client_identity_file: Option<PathBuf>,
    /// A file whose first line is the PKCS#12 bundle's password.
    #[arg(long, env = "REFLOW_AGENT_TLS_CLIENT_IDENTITY_PASSWORD_FILE")]
    pub tls_client_identity_password_file: Option<PathBuf>,
}

impl TlsArgs {
    /// The client settings, with the files read now.
    fn settings(&self) -> Result<crate::queue::ClientSettings, CliError> {
        Ok(crate::queue::ClientSettings {
            aws: Default::default(),
            tls: crate::queue::Tls::load(
                self.tls_ca_file.as_deref(),
                self.tls_client_identity_file.as_deref(),
                self.tls_client_identity_password_file.as_deref(),
            )?,
        })
    }
}
