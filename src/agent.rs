//! The agent: wires the configuration to the container engine, the kernel log reader, the TaskDB
//! and the pool, runs until shutdown (or idleness, for scale-in), and owns the shutdown order.
//! Containers keep running across an agent stop on purpose: the manifests let the next start
//! re-attach.
//!
//! The queue consumer (commands in, events out) plugs in here; until it exists `serve` runs the
//! pool, keeps its TaskDB row and exits on idleness or a signal.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use thiserror::Error;
use tokio_util::sync::CancellationToken;

use crate::clock::{Clock, SystemClock};
use crate::config::{Config, ConfigError};
use crate::docker::bollard::BollardRuntime;
use crate::docker::{ContainerRuntime, RuntimeError};
use crate::error::{Classify, Kind};
use crate::oom::kmsg::KmsgMonitor;
use crate::pool::{Pool, PoolConfig, PoolError};
use crate::taskdb::dynamodb::DynamoDbTaskDb;
use crate::taskdb::{NoopTaskDb, TaskDb, TaskDbError};

/// Why the agent could not run.
#[derive(Debug, Error)]
pub enum AgentError {
    /// The configuration has problems (all of them are listed).
    #[error("invalid configuration:\n{}", .0.iter().map(|e| format!("  - {e}")).collect::<Vec<_>>().join("\n"))]
    Config(Vec<ConfigError>),
    /// The container engine is not usable.
    #[error("the Docker engine is not reachable")]
    Engine(#[source] RuntimeError),
    /// The TaskDB table could not be created.
    #[error("TaskDB")]
    TaskDb(#[source] TaskDbError),
    /// The pool could not start.
    #[error(transparent)]
    Pool(#[from] PoolError),
}

impl Classify for AgentError {
    fn kind(&self) -> Kind {
        match self {
            AgentError::Config(_) => Kind::Invalid,
            AgentError::Engine(e) => e.kind(),
            AgentError::TaskDb(e) => e.kind(),
            AgentError::Pool(e) => e.kind(),
        }
    }
}

/// How the agent ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Exit {
    /// A shutdown signal.
    Shutdown,
    /// Every alloc stayed expired for `idle_exit_after_secs` (scale-in).
    Idle,
}

/// The host name, for the default pool id.
fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_string())
        .ok()
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "localhost".to_string())
}

/// Runs the agent until `shutdown` completes or the pool has been idle long enough.
///
/// # Errors
/// An invalid config, an unreachable engine, a TaskDB table that cannot be created, or a pool
/// that cannot start.
///
/// # Cancel safety
/// Not cancel safe: drive it to completion (use `shutdown` to stop it).
pub async fn run(cfg: Config, shutdown: impl Future<Output = ()>) -> Result<Exit, AgentError> {
    let errs = cfg.validate();
    if !errs.is_empty() {
        return Err(AgentError::Config(errs));
    }
    let runtime = Arc::new(BollardRuntime::connect().map_err(AgentError::Engine)?);
    runtime.ping().await.map_err(AgentError::Engine)?;
    let clock: Arc<dyn Clock> = Arc::new(SystemClock);
    let kmsg = KmsgMonitor::start(clock.clone());
    let taskdb: Arc<dyn TaskDb> = match &cfg.taskdb.table {
        Some(table) => {
            let db = DynamoDbTaskDb::new(&crate::aws::sdk_config(&cfg.aws).await, table);
            if cfg.taskdb.create_table {
                db.create_table().await.map_err(AgentError::TaskDb)?;
            }
            Arc::new(db)
        }
        None => Arc::new(NoopTaskDb),
    };
    let mut executor = cfg.executor_template();
    executor.oom_detectors = vec![Arc::new(kmsg.clone())];
    let pool_cfg = PoolConfig {
        id: cfg.agent.pool_id.clone().unwrap_or_else(hostname),
        dir: cfg.agent.state_dir.clone(),
        executor,
        expected_usable_mem: cfg.agent.expected_usable_mem,
    };
    let pool = Pool::start(pool_cfg, runtime, clock, taskdb).await?;
    tracing::info!(state_dir = %cfg.agent.state_dir.display(), resources = %pool.resources(), hard_mem_limit = cfg.executor.hard_mem_limit, "Agent started.");

    let cancel = CancellationToken::new();
    let maintain = {
        let (pool, cancel) = (pool.clone(), cancel.clone());
        tokio::spawn(async move { pool.maintain_taskdb_row(cancel).await })
    };
    let idle = cfg.agent.idle_exit_after_secs;
    let check_every = Duration::from_secs(idle.unwrap_or(60).clamp(1, 60));
    tokio::pin!(shutdown);
    let exit = loop {
        tokio::select! {
            () = &mut shutdown => break Exit::Shutdown,
            () = tokio::time::sleep(check_every) => {
                if let Some(secs) = idle {
                    let (is_idle, _) = pool.stop_if_idle_for(chrono::Duration::seconds(i64::try_from(secs).unwrap_or(i64::MAX))).await;
                    if is_idle {
                        tracing::info!(idle_secs = secs, "Idle; exiting for scale-in.");
                        break Exit::Idle;
                    }
                }
            }
        }
    };
    tracing::info!(
        ?exit,
        "Stopping; running containers keep running and are re-attached at the next start."
    );
    pool.shutdown().await;
    cancel.cancel();
    if let Err(e) = maintain.await {
        tracing::warn!(error = %e, "The TaskDB row task failed.");
    }
    kmsg.stop();
    Ok(exit)
}

/// Completes on SIGTERM or SIGINT.
///
/// # Panics
/// When the signal handlers cannot be installed (no signal support in this process).
pub async fn signals() {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate()).expect("install SIGTERM handler");
    let mut int = signal(SignalKind::interrupt()).expect("install SIGINT handler");
    tokio::select! {
        _ = term.recv() => tracing::info!("SIGTERM."),
        _ = int.recv() => tracing::info!("SIGINT."),
    }
}
