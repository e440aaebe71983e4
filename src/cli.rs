//! The command-line interface (everything but argument parsing in `main`): offline tools over a
//! content-addressed repository. Long operations draw a progress bar on stderr when it is a
//! terminal.

use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use clap::Subcommand;
use indicatif::{ProgressBar, ProgressStyle};
use thiserror::Error;

use crate::digest::{Digest, DigestError};
use crate::error::{Classify, Kind};
use crate::par;
use crate::repo::{FileRepository, RepoError};

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

/// Repository subcommands.
#[derive(Debug, Subcommand)]
pub enum RepoCommand {
    /// Store a file (or stdin with `-`) as an object; prints the file as JSON.
    Put {
        /// The file, or `-` for stdin.
        path: PathBuf,
    },
    /// Install a file or directory tree (hard links where possible); prints the fileset as JSON.
    Ingest {
        /// The file or directory.
        path: PathBuf,
    },
    /// Re-hash objects and check them against their names (all objects when none are named).
    Verify {
        /// Digests to check.
        digests: Vec<String>,
    },
    /// List all objects.
    Ls,
    /// Write an object to stdout.
    Cat {
        /// The object's digest.
        digest: String,
    },
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
    let mut out = io::stdout().lock();
    serde_json::to_writer_pretty(&mut out, v).map_err(CliError::Encode)?;
    writeln!(out).map_err(CliError::Output)
}

/// Runs a repository subcommand against the repository at `dir`.
///
/// # Errors
/// Repository, argument and output errors; [`CliError::VerifyFailed`] when objects are corrupt.
pub fn run_repo(dir: &Path, cmd: RepoCommand) -> Result<(), CliError> {
    let repo = FileRepository::open(dir)?;
    match cmd {
        RepoCommand::Put { path } => {
            let f = if path.as_os_str() == "-" {
                repo.put(io::stdin().lock())?
            } else {
                repo.install(&path, &|_| {})?
            };
            print_json(&f)
        }
        RepoCommand::Ingest { path } => {
            let pb = progress_bar(crate::repo::tree_bytes(&path), "ingest");
            let fs = repo.install_tree(&path, false, &|n| pb.inc(n))?;
            pb.finish_and_clear();
            tracing::info!(files = fs.n(), bytes = fs.size(), "Ingested.");
            print_json(&fs)
        }
        RepoCommand::Verify { digests } => {
            let ds: Vec<Digest> = if digests.is_empty() {
                repo.walk()?
            } else {
                digests
                    .iter()
                    .map(|s| Digest::parse(s))
                    .collect::<Result<_, _>>()?
            };
            let total_bytes = par::map(&ds, par::default_threads(), |d| {
                repo.stat(d).map(|f| f.size).unwrap_or(0)
            })
            .iter()
            .sum();
            let pb = progress_bar(total_bytes, "verify");
            let errs = repo.verify_many(&ds, &|n| pb.inc(n));
            pb.finish_and_clear();
            for e in &errs {
                tracing::error!(error = %crate::error::chain(&e), "Object failed verification.");
            }
            if errs.is_empty() {
                tracing::info!(objects = ds.len(), "All objects verified.");
                Ok(())
            } else {
                Err(CliError::VerifyFailed {
                    failed: errs.len(),
                    total: ds.len(),
                })
            }
        }
        RepoCommand::Ls => {
            let mut out = io::stdout().lock();
            for d in repo.walk()? {
                writeln!(out, "{d}").map_err(CliError::Output)?;
            }
            Ok(())
        }
        RepoCommand::Cat { digest } => {
            let d = Digest::parse(&digest)?;
            repo.get(&d, &mut io::stdout().lock())?;
            Ok(())
        }
    }
}

/// Largest exec config file accepted by [`run_exec`].
pub const MAX_CONFIG_BYTES: u64 = 4 << 20;

/// Options of the `exec` subcommand.
#[derive(Debug, clap::Args)]
pub struct ExecOptions {
    /// The executor directory.
    #[arg(long)]
    pub dir: PathBuf,
    /// The executor id (used in container names and labels).
    #[arg(long, default_value = "local")]
    pub executor_id: String,
    /// The exec id (a sha256 digest).
    #[arg(long)]
    pub id: String,
    /// A Reflow ExecConfig JSON file.
    #[arg(long)]
    pub config: PathBuf,
    /// Load every input fileset from this repository URL (`file:///path`) first.
    #[arg(long)]
    pub inputs_from: Option<String>,
    /// Promote the outputs into the executor repository.
    #[arg(long)]
    pub promote: bool,
    /// Limit the container's memory to the exec's `mem` resource (plus 100 MiB swap).
    #[arg(long)]
    pub hard_mem_limit: bool,
}

/// Runs one exec on an executor hosted by this process (recovering whatever the directory holds
/// first), waits for it, and prints its result JSON. Inputs are loaded from `inputs_from` first
/// when given; outputs are promoted with `promote`. One kernel log reader serves OOM evidence.
///
/// # Errors
/// Config, engine and executor errors; the exec's own failure is part of the printed result.
pub fn run_exec(opts: &ExecOptions) -> Result<(), CliError> {
    let id = Digest::parse(&opts.id)?;
    let mut config: crate::model::ExecConfig =
        crate::persist::read_json(&opts.config, MAX_CONFIG_BYTES).map_err(|source| {
            CliError::Input {
                what: "exec config",
                source,
            }
        })?;
    let rt = runtime()?;
    rt.block_on(async {
        let runtime = std::sync::Arc::new(crate::docker::bollard::BollardRuntime::connect()?);
        let mut cfg = crate::executor::ExecutorConfig::new(&opts.executor_id, &opts.dir);
        cfg.hard_mem_limit = opts.hard_mem_limit;
        let kmsg =
            crate::oom::kmsg::KmsgMonitor::start(std::sync::Arc::new(crate::clock::SystemClock));
        cfg.oom_detectors = vec![std::sync::Arc::new(kmsg.clone())];
        let ex = crate::executor::Executor::start(
            cfg,
            runtime,
            std::sync::Arc::new(crate::clock::SystemClock),
        )
        .await?;
        if let Some(url) = opts.inputs_from.as_deref() {
            for arg in config.args.iter_mut() {
                if let Some(fs) = &arg.fileset {
                    arg.fileset = Some(ex.load(url, fs).await?);
                }
            }
        }
        let exec = ex.put(id, config).await?;
        exec.wait()
            .await
            .map_err(crate::executor::ExecutorError::from)?;
        if opts.promote {
            ex.promote(&id).await?;
        }
        let result = exec
            .result()
            .map_err(crate::executor::ExecutorError::from)?;
        ex.shutdown().await;
        print_json(&result)
    })
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

/// Options of the `serve` subcommand. Flags override environment variables, which override the
/// config file.
#[derive(Debug, clap::Args)]
pub struct ServeOptions {
    /// A TOML config file (see docs/configuration.md); defaults apply without one.
    #[arg(long, env = "REFLOW_AGENT_CONFIG")]
    pub config: Option<PathBuf>,
    /// Overrides `queue.url` (`amqp://...`, `sqs://NAME`, `spool:///DIR`).
    #[arg(long, env = "REFLOW_AGENT_QUEUE")]
    pub queue: Option<String>,
    /// Overrides `agent.state_dir`.
    #[arg(long, env = "REFLOW_AGENT_STATE_DIR")]
    pub state_dir: Option<PathBuf>,
    /// Overrides `repository.url` (`file:///DIR`).
    #[arg(long, env = "REFLOW_AGENT_REPOSITORY")]
    pub repository: Option<String>,
    /// The HMAC key commands must be signed with.
    #[command(flatten)]
    pub hmac: HmacKeyArg,
    /// Overrides `executor.hard_mem_limit` (sets it).
    #[arg(long)]
    pub hard_mem_limit: bool,
    /// Overrides `agent.idle_exit_after_secs`.
    #[arg(long)]
    pub idle_exit_after_secs: Option<u64>,
}

/// Loads the config, applies the command-line overrides and runs the agent until SIGTERM/SIGINT
/// or idleness.
///
/// # Errors
/// Config, engine, TaskDB or pool errors.
pub fn run_serve(opts: &ServeOptions) -> Result<(), CliError> {
    let mut cfg = crate::config::Config::load_with_env(opts.config.as_deref(), std::env::vars())?;
    if let Some(d) = &opts.state_dir {
        cfg.agent.state_dir = d.clone();
    }
    if let Some(q) = &opts.queue {
        cfg.queue.url = Some(q.clone());
    }
    if let Some(r) = &opts.repository {
        cfg.repository.url = Some(r.clone());
    }
    if opts.config.is_none() && cfg.queue.url.is_none() {
        eprintln!(
            "reflow-agent: no config; embedded defaults: queue {} (drop commands into its incoming/), repository {}, state {}",
            cfg.queue_url(),
            cfg.repository_url(),
            cfg.agent.state_dir.display()
        );
    }
    let secrets = crate::agent::Secrets {
        hmac_key: opts.hmac.hmac_key.as_ref().map(|k| k.as_bytes().to_vec()),
    };
    if opts.hard_mem_limit {
        cfg.executor.hard_mem_limit = true;
    }
    if opts.idle_exit_after_secs.is_some() {
        cfg.agent.idle_exit_after_secs = opts.idle_exit_after_secs;
    }
    let rt = runtime()?;
    // The handlers go in before anything is written, so an early SIGTERM is a clean stop.
    let exit = rt.block_on(async {
        let signals = crate::agent::signals();
        crate::agent::run(cfg, secrets, signals).await
    })?;
    tracing::info!(?exit, "Agent stopped.");
    Ok(())
}

/// Options of the `inspect` subcommand.
#[derive(Debug, clap::Args)]
pub struct InspectOptions {
    /// The agent's state directory (`agent.state_dir`).
    #[arg(long)]
    pub dir: PathBuf,
    /// An exec id (sha256 digest, prefixed or bare): show its manifest.
    pub exec: Option<String>,
    /// Print JSON instead of text.
    #[arg(long)]
    pub json: bool,
}

/// One alloc found in a state directory.
#[derive(Debug, serde::Serialize)]
struct AllocSummary {
    id: String,
    live: bool,
    owner: String,
    want: crate::resources::Resources,
    execs: Vec<ExecSummary>,
}

/// One exec found in an alloc.
#[derive(Debug, serde::Serialize)]
struct ExecSummary {
    id: Digest,
    state: String,
    ident: String,
    error: Option<String>,
    oom: Option<String>,
}

fn summarize(m: &crate::manifest::Manifest, id: Digest) -> ExecSummary {
    ExecSummary {
        id,
        state: m.state.name().to_string(),
        ident: m.config.ident.clone(),
        error: m
            .result
            .err
            .as_ref()
            .map(crate::error::ReflowError::one_line),
        oom: m.oom.as_ref().map(|o| {
            format!(
                "{} ({})",
                o.source,
                o.detail.chars().take(120).collect::<String>()
            )
        }),
    }
}

/// Reads allocs and exec manifests from a state directory, offline (no agent needed).
///
/// # Errors
/// An unreadable directory, a malformed exec id, or an exec that is not found.
pub fn run_inspect(opts: &InspectOptions) -> Result<(), CliError> {
    use crate::persist::read_json;
    let live: std::collections::BTreeMap<String, crate::resources::Resources> =
        read_json(&opts.dir.join("state.json"), 4 << 20).unwrap_or_default();
    let allocs_dir = opts.dir.join("allocs");
    let mut ids: Vec<String> = std::fs::read_dir(&allocs_dir)
        .map_err(|e| {
            CliError::Output(io::Error::new(
                e.kind(),
                format!("{}: {e}", allocs_dir.display()),
            ))
        })?
        .flatten()
        .filter(|e| e.path().is_dir())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    ids.sort();
    let manifest_path = |alloc: &str, exec: &Digest| {
        allocs_dir
            .join(alloc)
            .join("execs")
            .join(exec.hex())
            .join(crate::manifest::MANIFEST_FILE)
    };
    let manifest_of = |alloc: &str, exec: &Digest| {
        read_json::<crate::manifest::Manifest>(
            &manifest_path(alloc, exec),
            crate::manifest::MAX_MANIFEST_BYTES,
        )
    };
    if let Some(want) = &opts.exec {
        let want = Digest::parse(want)?;
        for alloc in &ids {
            let m = match manifest_of(alloc, &want) {
                Err(e) if e.is_not_found() => continue,
                r => r.map_err(|source| CliError::Input {
                    what: "the exec manifest",
                    source,
                })?,
            };
            if opts.json {
                return print_json(&m);
            }
            let s = summarize(&m, want);
            let mut out = io::stdout().lock();
            let line = |out: &mut io::StdoutLock, k: &str, v: &str| {
                writeln!(out, "{k:<10} {v}").map_err(CliError::Output)
            };
            line(&mut out, "exec", &want.to_string())?;
            line(&mut out, "alloc", alloc)?;
            line(&mut out, "ident", &s.ident)?;
            line(&mut out, "state", &s.state)?;
            line(&mut out, "created", &crate::time::format(&m.created))?;
            line(&mut out, "image", &m.config.image)?;
            line(&mut out, "command", &m.config.cmd)?;
            line(&mut out, "error", s.error.as_deref().unwrap_or("-"))?;
            line(&mut out, "oom", s.oom.as_deref().unwrap_or("-"))?;
            for (k, f) in m.result.fileset.pullup().map {
                line(
                    &mut out,
                    "output",
                    &format!("{k} {} {} bytes", f.id, f.size),
                )?;
            }
            for (k, p) in crate::profile::profile(&m.stats) {
                line(
                    &mut out,
                    "profile",
                    &format!("{k}: max {} mean {:.1} n {}", p.max, p.mean, p.n),
                )?;
            }
            return Ok(());
        }
        return Err(CliError::Executor(
            crate::executor::ExecutorError::NoSuchExec { id: want },
        ));
    }
    let mut summaries = Vec::new();
    for alloc in ids {
        let meta: crate::pool::AllocMeta =
            read_json(&allocs_dir.join(&alloc).join("meta.json"), 4 << 20).unwrap_or_default();
        let mut execs: Vec<ExecSummary> = std::fs::read_dir(allocs_dir.join(&alloc).join("execs"))
            .map(|rd| {
                rd.flatten()
                    .filter_map(|e| Digest::parse(&e.file_name().to_string_lossy()).ok())
                    .filter_map(|d| match manifest_of(&alloc, &d) {
                        Ok(m) => Some(summarize(&m, d)),
                        Err(e) if e.is_not_found() => None,
                        Err(e) => Some(ExecSummary {
                            id: d,
                            state: "unreadable".into(),
                            ident: String::new(),
                            error: Some(
                                crate::error::ReflowError::from_classified("read", &e).one_line(),
                            ),
                            oom: None,
                        }),
                    })
                    .collect()
            })
            .unwrap_or_default();
        execs.sort_by_key(|e| e.id);
        summaries.push(AllocSummary {
            live: live.contains_key(&alloc),
            id: alloc,
            owner: meta.owner,
            want: meta.want,
            execs,
        });
    }
    if opts.json {
        return print_json(&summaries);
    }
    let mut out = io::stdout().lock();
    for a in summaries {
        let status = if a.live { "live" } else { "zombie" };
        writeln!(
            out,
            "alloc {} ({status}) owner={} want={}",
            a.id, a.owner, a.want
        )
        .map_err(CliError::Output)?;
        for e in a.execs {
            let tail = e.error.or(e.oom).unwrap_or_default();
            writeln!(
                out,
                "  {} {:<12} {} {}",
                e.id.short(),
                e.state,
                e.ident,
                tail
            )
            .map_err(CliError::Output)?;
        }
    }
    Ok(())
}

fn runtime() -> Result<tokio::runtime::Runtime, CliError> {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(CliError::Runtime)
}

/// Options of the `submit` subcommand.
#[derive(Debug, clap::Args)]
pub struct SubmitOptions {
    /// The command file (a protocol envelope, e.g. a `job`).
    pub file: PathBuf,
    /// The queue (`amqp://...`, `amqps://...`, `sqs://NAME`, `spool:///DIR`).
    #[arg(long, env = "REFLOW_AGENT_QUEUE")]
    pub queue: String,
    /// TLS for `amqps://`.
    #[command(flatten)]
    pub tls: TlsArgs,
    /// Wait for the outcome, show progress, and print the final event.
    #[arg(long)]
    pub wait: bool,
    /// How long `--wait` waits, seconds.
    #[arg(long, default_value_t = 3600)]
    pub timeout_secs: u64,
    /// Signs the command with this HMAC key when it has no signature.
    #[command(flatten)]
    pub hmac: HmacKeyArg,
}

/// Whether `e` ends command `id`: its job's `exec.completed`, a request's `command.result`, or
/// a rejection.
fn is_outcome(e: &crate::protocol::Event, id: &str, job: bool) -> bool {
    use crate::protocol::EventBody;
    if e.command.as_deref() != Some(id) {
        return false;
    }
    match &e.body {
        EventBody::ExecCompleted { .. } => job,
        EventBody::CommandResult { .. } => !job,
        EventBody::CommandRejected { .. } => true,
        _ => false,
    }
}

/// Validates (and, with a key, signs) a command, sends it, and with `--wait` prints its outcome.
///
/// # Errors
/// An invalid command, a queue error, a timeout, or (with `--wait`) a failed or rejected command.
pub fn run_submit(opts: &SubmitOptions) -> Result<(), CliError> {
    use crate::protocol::EventBody;
    let bytes =
        crate::persist::read_bounded(&opts.file, crate::protocol::MAX_COMMAND_BYTES as u64 + 1)
            .map_err(|source| CliError::Input {
                what: "command file",
                source,
            })?;
    let req = crate::protocol::decode_command(&bytes)?;
    let bytes = match &opts.hmac.hmac_key {
        Some(k) => {
            let mut env: serde_json::Value =
                serde_json::from_slice(&bytes).map_err(CliError::Encode)?;
            if env.get("signature").is_none() {
                // A signed command says when it was sent (the agent's replay window).
                if env.get("time").is_none() {
                    let now = crate::clock::Clock::now(&crate::clock::SystemClock);
                    env["time"] = crate::time::format(&now).into();
                }
                env["signature"] = crate::control::security::sign(k.as_bytes(), &env).into();
            }
            serde_json::to_vec(&env).map_err(CliError::Encode)?
        }
        None => bytes,
    };
    let job = matches!(req.command, crate::protocol::Command::Job(_));
    runtime()?.block_on(async {
        let client = crate::queue::client(&opts.queue, &opts.tls.settings()?).await?;
        let mut watch = match opts.wait {
            true => Some(client.watch(Some(&req.id)).await?),
            false => None,
        };
        client.submit(&req.id, &bytes).await?;
        eprintln!("submitted {} ({})", req.id, req.command.kind());
        let Some(watch) = watch.as_mut() else {
            return Ok(());
        };
        let bar = spinner(&format!("{} {}", req.command.kind(), req.id));
        let deadline = std::time::Duration::from_secs(opts.timeout_secs);
        let outcome = tokio::time::timeout(deadline, async {
            loop {
                let e = watch.next().await?;
                if e.command.as_deref() == Some(req.id.as_str()) {
                    bar.set_message(format!(
                        "{} {}: {}",
                        req.command.kind(),
                        req.id,
                        e.body.kind()
                    ));
                }
                if is_outcome(&e, &req.id, job) {
                    return Ok::<_, CliError>(e);
                }
            }
        })
        .await
        .map_err(|_| CliError::Timeout {
            secs: opts.timeout_secs,
        })??;
        bar.finish_and_clear();
        print_json(&outcome)?;
        match outcome.body {
            EventBody::ExecCompleted { result, .. } => match result.err {
                Some(error) => Err(CliError::Failed {
                    what: "the exec failed",
                    error,
                }),
                None => Ok(()),
            },
            EventBody::CommandRejected { error, .. } => Err(CliError::Failed {
                what: "the command was rejected",
                error,
            }),
            EventBody::CommandResult {
                error: Some(error), ..
            } => Err(CliError::Failed {
                what: "the command failed",
                error,
            }),
            _ => Ok(()),
        }
    })
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

/// `dlq` subcommands.
#[derive(Debug, Subcommand)]
pub enum DlqCommand {
    /// Print dead-lettered commands (JSON lines: reason, id, kind, command), leaving them there.
    List {
        /// The queue whose dead-letter queue to read.
        #[arg(long, env = "REFLOW_AGENT_QUEUE")]
        queue: String,
        /// TLS for `amqps://`.
        #[command(flatten)]
        tls: TlsArgs,
        /// At most this many.
        #[arg(long, default_value_t = 100)]
        max: usize,
    },
    /// Move dead-lettered commands back to the command queue, oldest first.
    Replay {
        /// The queue whose dead-letter queue to replay.
        #[arg(long, env = "REFLOW_AGENT_QUEUE")]
        queue: String,
        /// TLS for `amqps://`.
        #[command(flatten)]
        tls: TlsArgs,
        /// Only print what would be replayed.
        #[arg(long)]
        dry_run: bool,
        /// Commands per second.
        #[arg(long, default_value_t = 10.0)]
        rate: f64,
        /// At most this many.
        #[arg(long, default_value_t = 1000)]
        max: usize,
    },
}

fn dead_line(body: &[u8], reason: &str) -> serde_json::Value {
    let cmd: Option<serde_json::Value> = serde_json::from_slice(body).ok();
    let field = |k: &str| {
        cmd.as_ref()
            .and_then(|c| c.get(k))
            .cloned()
            .unwrap_or(serde_json::Value::Null)
    };
    serde_json::json!({
        "reason": reason,
        "id": field("id"),
        "kind": field("kind"),
        "command": cmd.clone().unwrap_or_else(|| String::from_utf8_lossy(&body[..body.len().min(4096)]).into()),
    })
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

/// Lists or replays a dead-letter queue.
///
/// # Errors
/// Queue errors, or a rate that is not positive.
pub fn run_dlq(cmd: &DlqCommand) -> Result<(), CliError> {
    runtime()?.block_on(async {
        match cmd {
            DlqCommand::List { queue, max, tls } => {
                let client = crate::queue::client(queue, &tls.settings()?).await?;
                let mut out = io::stdout().lock();
                for d in client.dead_letters(*max).await? {
                    writeln!(out, "{}", dead_line(&d.body, &d.reason)).map_err(CliError::Output)?;
                }
                Ok(())
            }
            DlqCommand::Replay {
                queue,
                dry_run,
                rate,
                max,
                tls,
            } => {
                if !(rate.is_finite() && *rate > 0.0) {
                    return Err(CliError::Failed {
                        what: "--rate",
                        error: crate::error::ReflowError::new(
                            Kind::Invalid,
                            "dlq replay",
                            "must be a positive number",
                        ),
                    });
                }
                let client = crate::queue::client(queue, &tls.settings()?).await?;
                if *dry_run {
                    let mut out = io::stdout().lock();
                    for d in client.dead_letters(*max).await? {
                        writeln!(out, "would replay {}", dead_line(&d.body, &d.reason))
                            .map_err(CliError::Output)?;
                    }
                    return Ok(());
                }
                let bar = spinner("replaying");
                let pause = std::time::Duration::from_secs_f64(1.0 / rate);
                let mut n = 0;
                // A command rejected again comes back to the DLQ while this runs: replaying it
                // once more would loop, so a body seen twice ends the replay.
                let mut replayed = std::collections::HashSet::new();
                while n < *max {
                    let Some(body) = client.replay_one().await? else {
                        break;
                    };
                    if !replayed.insert(crate::digest::Digest::of(&body)) {
                        eprintln!("a replayed command came back to the DLQ; stopping");
                        break;
                    }
                    n += 1;
                    bar.set_message(format!("replayed {n}"));
                    println!("replayed {}", dead_line(&body, "")["id"]);
                    tokio::time::sleep(pause).await;
                }
                bar.finish_and_clear();
                eprintln!("replayed {n} command(s)");
                Ok(())
            }
        }
    })
}

/// Options of `s3 cp`.
#[derive(Debug, clap::Args)]
pub struct S3CpOptions {
    /// Source: a local file or directory, or `s3://bucket/key-or-prefix/`.
    pub src: String,
    /// Destination: `s3://bucket/key-or-prefix/`, or a local file or directory.
    pub dst: String,
    /// Objects (or files) in flight at once.
    #[arg(long, default_value_t = 8)]
    pub jobs: usize,
}

/// Files under `root` (or `root` itself), with their paths relative to it.
fn walk_files(root: &Path) -> Result<Vec<(String, PathBuf)>, CliError> {
    if root.is_file() {
        return Ok(vec![(String::new(), root.to_path_buf())]);
    }
    let mut out = Vec::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(d) = stack.pop() {
        let rd = std::fs::read_dir(&d).map_err(CliError::Output)?;
        for e in rd {
            let e = e.map_err(CliError::Output)?;
            let p = e.path();
            if p.is_dir() {
                stack.push(p);
            } else if p.is_file() {
                let rel = p
                    .strip_prefix(root)
                    .map(|r| r.to_string_lossy().into_owned())
                    .unwrap_or_default();
                out.push((rel, p));
            }
        }
    }
    out.sort();
    Ok(out)
}

/// The SHA-256 and size of the file at `path`, hashed off the async threads.
async fn hash_file(path: PathBuf) -> Result<(Digest, u64), CliError> {
    tokio::task::spawn_blocking(move || std::fs::File::open(&path).and_then(Digest::of_reader))
        .await
        .map_err(|e| CliError::Output(io::Error::other(e)))?
        .map_err(CliError::Output)
}

/// The S3 store for `s3 cp`, configured by the SDK's standard chain.
async fn s3_store() -> Result<Arc<dyn crate::blob::BlobStore>, CliError> {
    #[cfg(feature = "s3")]
    return Ok(Arc::new(crate::blob::s3::S3Store::new(
        &crate::aws::sdk_config(&Default::default()).await,
    )));
    #[cfg(not(feature = "s3"))]
    Err(CliError::NotBuilt {
        what: "s3 cp",
        feature: "s3",
    })
}

/// Copies between local files and S3 with a progress bar: uploads carry `Content-Sha256`,
/// downloads are verified against it.
///
/// # Errors
/// Blob store, I/O and integrity errors.
pub fn run_s3_cp(opts: &S3CpOptions) -> Result<(), CliError> {
    use crate::blob::{BlobUrl, Progress};
    use futures_util::StreamExt;
    runtime()?.block_on(async {
        let store = s3_store().await?;
        let progress = Progress::default();
        let jobs = opts.jobs.max(1);
        if opts.dst.starts_with("s3://") {
            let url = BlobUrl::parse(&opts.dst)?;
            let files = walk_files(Path::new(&opts.src))?;
            let total: u64 = files
                .iter()
                .filter_map(|(_, p)| p.metadata().ok())
                .map(|m| m.len())
                .sum();
            let bar = progress_bar(total, "upload");
            let (store, url, progress, bar) = (&store, &url, &progress, &bar);
            let done: Vec<Result<(), CliError>> = futures_util::stream::iter(files)
                .map(|(rel, path)| async move {
                    let (d, _) = hash_file(path.clone()).await?;
                    let key = match (url.key.trim_end_matches('/'), rel.as_str()) {
                        (k, "") => k.to_string(),
                        ("", r) => r.to_string(),
                        (k, r) => format!("{k}/{r}"),
                    };
                    store.upload(&url.bucket, &key, &path, &d, progress).await?;
                    bar.set_position(progress.load(std::sync::atomic::Ordering::Relaxed));
                    Ok(())
                })
                .buffer_unordered(jobs)
                .collect()
                .await;
            bar.finish_and_clear();
            done.into_iter().collect::<Result<(), _>>()?;
        } else {
            // Neither side is s3://: name the destination, the likelier typo (`s3:/bucket`).
            let remote = if opts.src.starts_with("s3://") {
                &opts.src
            } else {
                &opts.dst
            };
            let url = BlobUrl::parse(remote)?;
            // The listing alone (no HEAD per object): each GET reports the Content-Sha256 that
            // the download is then verified against.
            let infos = if url.is_prefix() {
                store.list_keys(&url.bucket, &url.key).await?
            } else {
                vec![store.head(&url.bucket, &url.key).await?]
            };
            let total: u64 = infos.iter().map(|i| i.size).sum();
            let bar = progress_bar(total, "download");
            let (store, url, progress, bar) = (&store, &url, &progress, &bar);
            let dst = PathBuf::from(&opts.dst);
            let dst = &dst;
            let done: Vec<Result<(), CliError>> = futures_util::stream::iter(infos)
                .filter(|i| {
                    let keep = !i.key.ends_with('/');
                    async move { keep }
                })
                .map(|info| async move {
                    let target = if url.is_prefix() {
                        dst.join(&info.key[url.key.len()..])
                    } else {
                        dst.clone()
                    };
                    // Into a temporary file beside the target, renamed once verified: a
                    // failed or corrupt download never leaves a file under the target's name.
                    let parent = match target.parent() {
                        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
                        _ => PathBuf::from("."),
                    };
                    std::fs::create_dir_all(&parent).map_err(CliError::Output)?;
                    let tmp = tempfile::Builder::new()
                        .prefix(".reflow-s3-cp.")
                        // The mode a plain create gives (0666 less the umask), not 0600.
                        .permissions(std::os::unix::fs::PermissionsExt::from_mode(0o666))
                        .tempfile_in(&parent)
                        .map_err(CliError::Output)?;
                    let sha = store
                        .download(&url.bucket, &info, tmp.path(), progress)
                        .await?;
                    bar.set_position(progress.load(std::sync::atomic::Ordering::Relaxed));
                    if let Some(sha) = sha {
                        let info = crate::blob::BlobInfo {
                            content_sha256: Some(sha),
                            ..info
                        };
                        let (d, n) = hash_file(tmp.path().to_path_buf()).await?;
                        crate::blob::verify(&url.display(&info.key), &info, n, &d)?;
                    }
                    tmp.persist(&target)
                        .map_err(|e| CliError::Output(e.error))?;
                    Ok(())
                })
                .buffer_unordered(jobs)
                .collect()
                .await;
            bar.finish_and_clear();
            done.into_iter().collect::<Result<(), _>>()?;
        }
        Ok(())
    })
}
