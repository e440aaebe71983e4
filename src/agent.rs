//! The agent: wires the configuration to the container engine, the kernel log reader, the TaskDB
//! and the pool, runs until shutdown (or idleness, for scale-in), and owns the shutdown order.
//! Containers keep running across an agent stop on purpose: the manifests let the next start
//! re-attach.
//!
//! Commands come from the queue named by `queue.url` through [`crate::control`]; on a signal or
//! idleness the control plane drains before the pool shuts down.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use thiserror::Error;
use tokio_util::sync::CancellationToken;

use crate::clock::{Clock, SystemClock};
use crate::config::{Config, ConfigError};
use crate::control::security::Policy;
use crate::control::{Control, ControlConfig};
use crate::docker::bollard::BollardRuntime;
use crate::docker::{ContainerRuntime, RuntimeError};
use crate::error::{Classify, Kind};
use crate::oom::kmsg::KmsgMonitor;
use crate::pool::{Pool, PoolConfig, PoolError};
use crate::queue::QueueSettings;
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
    /// The queue could not be reached or set up.
    #[error("queue {url}")]
    Queue {
        /// The queue URL (no credentials).
        url: String,
        /// Cause.
        #[source]
        source: crate::queue::QueueError,
    },
    /// The control plane's state could not be opened.
    #[error(transparent)]
    Control(#[from] crate::control::ControlError),
    /// The admin listener could not bind.
    #[error("admin listener on {addr}")]
    Admin {
        /// The address.
        addr: std::net::SocketAddr,
        /// Cause.
        #[source]
        source: std::io::Error,
    },
    /// The configured docker config file could not be used.
    #[error("registry credentials from {path}")]
    DockerConfig {
        /// The file.
        path: std::path::PathBuf,
        /// Cause.
        #[source]
        source: crate::docker::auth::AuthError,
    },
    /// The HMAC key file could not be read.
    #[error("read the HMAC key file {path}")]
    HmacKey {
        /// The file.
        path: std::path::PathBuf,
        /// Cause.
        #[source]
        source: crate::persist::PersistError,
    },
}

/// Secrets given to the agent outside its config (never logged).
#[derive(Default, Clone)]
pub struct Secrets {
    /// The HMAC key commands must be signed with (overrides `security.hmac_key_file`).
    pub hmac_key: Option<Vec<u8>>,
}

impl std::fmt::Debug for Secrets {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Secrets")
            .field("hmac_key", &self.hmac_key.as_ref().map(|_| "<redacted>"))
            .finish()
    }
}

impl Classify for AgentError {
    fn kind(&self) -> Kind {
        match self {
            AgentError::Config(_) => Kind::Invalid,
            AgentError::Engine(e) => e.kind(),
            AgentError::TaskDb(e) => e.kind(),
            AgentError::Pool(e) => e.kind(),
            AgentError::Queue { source, .. } => source.kind(),
            AgentError::Control(e) => e.kind(),
            AgentError::HmacKey { source, .. } => source.kind(),
            AgentError::DockerConfig { source, .. } => source.kind(),
            AgentError::Admin { .. } => Kind::Unavailable,
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
    /// Instance metadata announced a spot interruption or a rebalance recommendation.
    Interrupted,
}

/// The host name, for the default pool id.
fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_string())
        .ok()
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "localhost".to_string())
}

/// Registry credentials for pulls: the docker config file (static entries and credential
/// helpers), then ECR tokens. A configured file that cannot be used stops the start; a default
/// one (`~/.docker/config.json`) that cannot is skipped with a warning.
async fn registry_auth(
    cfg: &Config,
    aws: &AwsClients,
    clock: Arc<dyn Clock>,
) -> Result<Option<Arc<dyn crate::docker::auth::Authenticator>>, AgentError> {
    use crate::docker::auth::{Authenticator, ChainAuth, DockerConfigAuth};
    let mut chain: Vec<Arc<dyn Authenticator>> = Vec::new();
    if let Some((path, explicit)) = cfg.docker_config_path() {
        match DockerConfigAuth::load(&path) {
            Ok(a) => {
                tracing::info!(path = %path.display(), registries = a.registries().count(), "Registry credentials from a docker config file.");
                chain.push(Arc::new(a));
            }
            Err(source) if explicit => return Err(AgentError::DockerConfig { path, source }),
            Err(e) => {
                tracing::warn!(path = %path.display(), error = %crate::error::chain(&e), "Ignoring the default docker config file.");
            }
        }
    }
    #[cfg(feature = "ecr")]
    if cfg.executor.ecr_auth {
        chain.push(Arc::new(crate::docker::auth::LazyEcrAuth::new(
            aws.sdk.clone(),
            clock,
        )));
    }
    #[cfg(not(feature = "ecr"))]
    let _ = (aws, clock, cfg.executor.ecr_auth);
    Ok((!chain.is_empty()).then(|| Arc::new(ChainAuth(chain)) as Arc<dyn Authenticator>))
}

/// The AWS SDK configuration shared by every AWS client of the agent (TaskDB, S3, ECR), when
/// this build has one of them. It is loaded on first use (resolving the region and credential
/// chain may probe instance metadata): an agent on a spool or AMQP queue that never touches
/// S3, ECR or DynamoDB never loads it.
struct AwsClients {
    #[cfg(feature = "aws")]
    #[cfg_attr(
        not(any(feature = "s3", feature = "dynamodb", feature = "ecr")),
        expect(dead_code, reason = "only SQS, which loads its own configuration")
    )]
    sdk: Arc<crate::aws::LazySdk>,
}

/// The fleet's claim store.
type Claims = Arc<dyn crate::taskdb::claims::ClaimStore>;

impl AwsClients {
    fn new(settings: &crate::aws::AwsSettings) -> Self {
        #[cfg(not(feature = "aws"))]
        let _ = settings;
        AwsClients {
            #[cfg(feature = "aws")]
            sdk: Arc::new(crate::aws::LazySdk::new(settings.clone())),
        }
    }

    /// The TaskDB named by the config, and the fleet's claim store in the same table: DynamoDB
    /// when a table is set, else none (and no fleet-wide claims).
    async fn taskdb(&self, cfg: &Config) -> Result<(Arc<dyn TaskDb>, Option<Claims>), AgentError> {
        let Some(table) = &cfg.taskdb.table else {
            return Ok((Arc::new(NoopTaskDb), None));
        };
        #[cfg(feature = "dynamodb")]
        {
            let db = Arc::new(crate::taskdb::dynamodb::DynamoDbTaskDb::new(
                self.sdk.get().await,
                table,
            ));
            if cfg.taskdb.create_table {
                db.create_table().await.map_err(AgentError::TaskDb)?;
            }
            Ok((db.clone(), Some(db)))
        }
        #[cfg(not(feature = "dynamodb"))]
        {
            // Config validation refuses this before the agent gets here.
            let _ = table;
            Ok((Arc::new(NoopTaskDb), None))
        }
    }

    /// The blob store for `s3://` repositories and intern/extern execs; the SDK resolves
    /// credentials lazily, so an agent that never touches S3 needs none.
    fn blob(&self) -> Option<Arc<dyn crate::blob::BlobStore>> {
        #[cfg(feature = "s3")]
        return Some(Arc::new(crate::blob::s3::LazyS3Store::new(
            self.sdk.clone(),
        )));
        #[cfg(not(feature = "s3"))]
        None
    }
}

/// Runs the agent until `shutdown` completes or the pool has been idle long enough.
///
/// # Errors
/// An invalid config, an unreachable engine, a TaskDB table that cannot be created, or a pool
/// that cannot start.
///
/// # Cancel safety
/// Not cancel safe: drive it to completion (use `shutdown` to stop it).
pub async fn run(
    cfg: Config,
    secrets: Secrets,
    shutdown: impl Future<Output = ()>,
) -> Result<Exit, AgentError> {
    let errs = cfg.validate();
    if !errs.is_empty() {
        return Err(AgentError::Config(errs));
    }
    let hmac_key = match (&secrets.hmac_key, &cfg.security.hmac_key_file) {
        (Some(k), _) => Some(k.clone()),
        (None, Some(path)) => Some(
            crate::persist::read_bounded(path, 64 << 10)
                .map(|k| k.trim_ascii().to_vec())
                .map_err(|source| AgentError::HmacKey {
                    path: path.clone(),
                    source,
                })?,
        ),
        (None, None) => None,
    };
    let runtime = Arc::new(BollardRuntime::connect().map_err(AgentError::Engine)?);
    runtime.ping().await.map_err(AgentError::Engine)?;
    let clock: Arc<dyn Clock> = Arc::new(SystemClock);
    let kmsg = KmsgMonitor::start(clock.clone());
    let aws = AwsClients::new(&cfg.aws);
    let (taskdb, claims) = aws.taskdb(&cfg).await?;
    let blob = aws.blob();
    let mut executor = executor_template(&cfg);
    executor.auth = registry_auth(&cfg, &aws, clock.clone()).await?;
    executor.oom_detectors = vec![Arc::new(kmsg.clone())];
    executor.blob = blob.clone();
    let image_ledger = Arc::new(crate::executor::images::ImageLedger::open(
        cfg.agent.state_dir.join("images.json"),
        clock.clone(),
    ));
    executor.image_ledger = Some(image_ledger.clone());
    let pool_cfg = PoolConfig {
        id: cfg.agent.pool_id.clone().unwrap_or_else(hostname),
        dir: cfg.agent.state_dir.clone(),
        executor,
        expected_usable_mem: cfg.agent.expected_usable_mem,
    };
    let agent_id = pool_cfg.id.clone();
    let pool = Pool::start(pool_cfg, runtime.clone(), clock.clone(), taskdb).await?;
    let queue_url = cfg.queue_url();
    let close = CancellationToken::new();
    let max_jobs = cfg.max_jobs();
    let or = |v: u64, d: u64| if v == 0 { d } else { v };
    let tls = crate::queue::Tls::load(
        cfg.queue.tls_ca_file.as_deref(),
        cfg.queue.tls_client_identity_file.as_deref(),
        cfg.queue.tls_client_identity_password_file.as_deref(),
    )
    .map_err(|source| AgentError::Queue {
        url: crate::queue::redact(&queue_url),
        source,
    })?;
    let settings = QueueSettings {
        tls,
        agent_id: agent_id.clone(),
        prefetch: u16::try_from(match cfg.queue.prefetch {
            0 => max_jobs,
            n => n,
        })
        .unwrap_or(u16::MAX),
        delivery_limit: match cfg.queue.max_deliveries {
            0 => 5,
            n => n,
        },
        visibility: Duration::from_secs(or(cfg.queue.visibility_timeout_secs, 120)),
        max_job: cfg.max_job(),
        aws: cfg.aws.clone(),
        close: close.clone(),
        health: Arc::new(std::sync::atomic::AtomicBool::new(false)),
        op_timeout: Duration::from_secs(or(
            cfg.queue.op_timeout_secs,
            crate::queue::DEFAULT_OP_TIMEOUT.as_secs(),
        )),
    };
    let metrics = Arc::new(crate::admin::Metrics::default());
    let notifier = crate::notify::Notifier::from_env();
    let engine = crate::docker::health::EngineHealth::default();

    let backend = crate::queue::open(&queue_url, &settings)
        .await
        .map_err(|source| AgentError::Queue {
            url: crate::queue::redact(&queue_url),
            source,
        })?;
    let control_cfg = ControlConfig {
        agent_id,
        state_dir: cfg.agent.state_dir.clone(),
        repository: cfg.repository_url(),
        max_jobs,
        prefetch: usize::from(settings.prefetch),
        max_deliveries: settings.delivery_limit,
        drain_grace: Duration::from_secs(or(cfg.queue.drain_grace_secs, 300)),
        heartbeat: Duration::from_secs(or(cfg.queue.heartbeat_secs, 30)),
        lease: settings.visibility,
        max_job: settings.max_job,
        claims,
        job_attempts: match cfg.queue.job_attempts {
            0 => 3,
            n => n,
        },
        retry_base: Duration::from_secs(1),
        security: Policy {
            hmac_key,
            image_allowlist: cfg.security.image_allowlist.clone(),
            own_repository: cfg.repository_url(),
            max_clock_skew: Duration::from_secs(cfg.security.max_clock_skew_secs),
            repositories: cfg.security.repositories.clone(),
            max_resources: cfg.security.max_resources.clone(),
            allow_docker_socket: cfg.executor.allow_docker_socket,
            allow_aws_creds: cfg.executor.allow_aws_creds,
        },
        metrics: metrics.clone(),
        notifier: notifier.clone(),
        blob,
        retention: (cfg.agent.state_retention_secs > 0)
            .then(|| Duration::from_secs(cfg.agent.state_retention_secs)),
        engine: engine.clone(),
        publish: cfg.queue.publish.clone(),
    };
    let control = Control::new(
        control_cfg,
        pool.clone(),
        clock.clone(),
        backend.sink.clone(),
    )?;
    tracing::info!(
        state_dir = %cfg.agent.state_dir.display(),
        queue = %backend.display,
        repository = %cfg.repository_url(),
        resources = %pool.resources(),
        max_jobs,
        hard_mem_limit = cfg.executor.hard_mem_limit,
        "Agent started."
    );

    let cancel = CancellationToken::new();
    // Stops with `cancel`.
    let _engine_watch = engine.watch(runtime.clone(), Duration::from_secs(1), cancel.clone());
    if let Some(addr) = cfg.admin_listen() {
        let st = crate::admin::AdminState {
            agent_id: pool.name().to_string(),
            metrics,
            pool: pool.clone(),
            runtime: runtime.clone(),
            queue_ok: settings.health.clone(),
            draining: control.draining(),
            state_dir: cfg.agent.state_dir.clone(),
            repo: cfg
                .repository_url()
                .strip_prefix("file://")
                .map(std::path::PathBuf::from),
        };
        crate::admin::serve(addr, st, cancel.clone())
            .await
            .map_err(|source| AgentError::Admin { addr, source })?;
    }
    tokio::spawn(notifier.clone().watchdog_loop(cancel.clone()));
    let maintain = {
        let (pool, cancel) = (pool.clone(), cancel.clone());
        tokio::spawn(async move { pool.maintain_taskdb_row(cancel).await })
    };
    if cfg.agent.zombie_max_age_secs > 0 {
        let (pool, cancel) = (pool.clone(), cancel.clone());
        let max_age = Duration::from_secs(cfg.agent.zombie_max_age_secs);
        tokio::spawn(async move { pool.collect_zombies_until(max_age, cancel).await });
    }
    if cfg.executor.image_cleanup {
        let policy = crate::imagegc::Policy {
            interval: Duration::from_secs(cfg.executor.image_cleanup_interval_secs.max(1)),
            min_age: Duration::from_secs(cfg.executor.image_gc_min_age_secs),
            per_cycle: cfg.executor.image_cleanup_per_cycle,
            disk_percent: cfg.executor.image_cleanup_disk_percent,
            exclude: cfg.executor.image_cleanup_exclude.iter().cloned().collect(),
        };
        tokio::spawn(crate::imagegc::run_until(
            pool.clone(),
            runtime.clone(),
            image_ledger,
            policy,
            clock.clone(),
            cfg.agent.state_dir.clone(),
            cancel.clone(),
        ));
    }
    let stop = CancellationToken::new();
    let control_task = {
        let (control, stop) = (control.clone(), stop.clone());
        tokio::spawn(async move { control.run(backend.source, stop).await })
    };
    let idle = cfg.agent.idle_exit_after_secs;
    let check_every = Duration::from_secs(idle.unwrap_or(60).clamp(1, 60));
    tokio::pin!(shutdown);
    let notice = match cfg.agent.interruption_poll_secs {
        0 => futures_util::future::Either::Left(std::future::pending()),
        secs => {
            futures_util::future::Either::Right(crate::notice::watch(Duration::from_secs(secs)))
        }
    };
    tokio::pin!(notice);
    let exit = loop {
        tokio::select! {
            () = &mut shutdown => break Exit::Shutdown,
            n = &mut notice => {
                tracing::warn!(notice = ?n, "The instance is going away: draining now.");
                break Exit::Interrupted;
            }
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
    tracing::info!(?exit, "Stopping.");
    let marked = {
        let pool = pool.clone();
        tokio::spawn(async move { pool.mark_draining().await })
    };
    stop.cancel();
    close.cancel();
    if let Err(e) = control_task.await {
        tracing::warn!(error = %crate::error::chain(&e), "The control plane task failed.");
    }
    tracing::info!(
        "Stopped taking work; running containers keep running and are re-attached at the next start."
    );
    pool.shutdown().await;
    let _ = marked.await;
    cancel.cancel();
    if let Err(e) = maintain.await {
        tracing::warn!(error = %crate::error::chain(&e), "The TaskDB row task failed.");
    }
    kmsg.stop();
    Ok(exit)
}

/// The settings every alloc's executor gets from the config (its id and directory are filled
/// in per alloc; the live handles by [`run`]).
fn executor_template(cfg: &Config) -> crate::executor::ExecutorConfig {
    let mut c =
        crate::executor::ExecutorConfig::new("template", cfg.agent.state_dir.join("allocs"));
    c.hard_mem_limit = cfg.executor.hard_mem_limit;
    c.allow_docker_socket = cfg.executor.allow_docker_socket;
    c.allow_aws_creds = cfg.executor.allow_aws_creds;
    c.network_mode = cfg.executor.network_mode.clone();
    c.profile_interval = Duration::from_secs(cfg.executor.profile_interval_secs);
    c.engine_wait = Duration::from_secs(cfg.executor.engine_wait_secs);
    c
}

/// Installs the SIGTERM and SIGINT handlers now and returns a future that completes on either.
///
/// The handlers are registered before this returns, not when the future is first polled: a
/// signal that arrives while the agent is still starting (after `state.json` exists, say) is
/// held for the main loop instead of killing the process with the default action.
///
/// # Panics
/// When the signal handlers cannot be installed (no signal support in this process).
pub fn signals() -> impl Future<Output = ()> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate()).expect("install SIGTERM handler");
    let mut int = signal(SignalKind::interrupt()).expect("install SIGINT handler");
    async move {
        tokio::select! {
            _ = term.recv() => tracing::info!("SIGTERM."),
            _ = int.recv() => tracing::info!("SIGINT."),
        }
    }
}
