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
use crate::config::{Config, Resolved};
use crate::control::security::Policy;
use crate::control::{Control, ControlConfig, ControlPorts};
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

/// The agent's own AWS credentials from the SDK's chain (environment, profile, instance role),
/// for execs with `NeedAWSCreds` on an executor that grants them. The chain caches and
/// refreshes them; each container's creation asks again.
#[cfg(feature = "aws")]
#[derive(Debug, Clone)]
struct SdkCredentials(Arc<crate::aws::LazySdk>);

#[cfg(feature = "aws")]
#[async_trait::async_trait]
impl crate::executor::AwsCredentialSource for SdkCredentials {
    async fn credentials(&self) -> Option<crate::executor::AwsCredentials> {
        use aws_credential_types::provider::ProvideCredentials as _;
        let provider = self.0.get().await.credentials_provider()?;
        match provider.provide_credentials().await {
            Ok(c) => Some(crate::executor::AwsCredentials {
                access_key_id: c.access_key_id().to_string(),
                secret_access_key: c.secret_access_key().to_string(),
                session_token: c.session_token().map(str::to_string),
            }),
            Err(e) => {
                tracing::warn!(error = %crate::error::chain(&e), "No AWS credentials for an exec that asks for them.");
                None
            }
        }
    }
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

    /// The source of the AWS credentials that execs with `NeedAWSCreds` get, when the config
    /// grants them (`executor.allow_aws_creds`): the agent's own, from the SDK's chain. None in
    /// a build without the AWS SDK (such an exec then fails for want of credentials).
    fn credentials(&self, cfg: &Resolved) -> Option<Arc<dyn crate::executor::AwsCredentialSource>> {
        if !cfg.config.executor.allow_aws_creds {
            return None;
        }
        #[cfg(feature = "aws")]
        {
            Some(Arc::new(SdkCredentials(self.sdk.clone())))
        }
        #[cfg(not(feature = "aws"))]
        {
            None
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

/// The agent's cancellation tree. Cancelling [`Lifecycle::intake`] stops taking work (the
/// control plane drains, the queue closes); cancelling the root stops everything else (the
/// admin listener, keepalives, the kernel log reader, image cleanup), and the intake with it.
#[derive(Debug, Clone, Default)]
pub struct Lifecycle {
    root: CancellationToken,
    intake: CancellationToken,
}

impl Lifecycle {
    /// A new tree.
    pub fn new() -> Self {
        let root = CancellationToken::new();
        let intake = root.child_token();
        Lifecycle { root, intake }
    }

    /// The intake's token: cancelled first at shutdown.
    pub fn intake(&self) -> CancellationToken {
        self.intake.clone()
    }

    /// The root's token: cancelled last.
    pub fn root(&self) -> CancellationToken {
        self.root.clone()
    }
}

/// The agent's handles to everything outside it, one per port. [`Ports::connect`] builds the
/// real ones from a configuration; a test can build them from fakes.
#[derive(Debug)]
pub struct Ports {
    /// The container engine.
    pub runtime: Arc<dyn ContainerRuntime>,
    /// The clock.
    pub clock: Arc<dyn Clock>,
    /// The command queue and the events topic.
    pub queue: crate::queue::Backend,
    /// Whether the queue is connected and receiving (kept by the backend, read by `/readyz`).
    pub queue_ok: Arc<std::sync::atomic::AtomicBool>,
    /// The blob store for `s3://` (absent: not supported).
    pub blob: Option<Arc<dyn crate::blob::BlobStore>>,
    /// The TaskDB.
    pub taskdb: Arc<dyn TaskDb>,
    /// The fleet's claim store (absent: no fleet-wide claims).
    pub claims: Option<Claims>,
    /// Registry credentials for pulls.
    pub auth: Option<Arc<dyn crate::docker::auth::Authenticator>>,
    /// AWS credentials for execs with `NeedAWSCreds`, when `executor.allow_aws_creds` grants them.
    pub aws_credentials: Option<Arc<dyn crate::executor::AwsCredentialSource>>,
    /// OOM evidence beyond the engine's and the cgroup's (the kernel log).
    pub oom: Vec<Arc<dyn crate::oom::OomDetector>>,
    /// The counters `/metrics` shows.
    pub metrics: Arc<crate::metrics::Metrics>,
    /// systemd notifications.
    pub notifier: crate::notify::Notifier,
}

impl Ports {
    /// The real adapters `cfg` names: the Docker engine (pinged), the kernel log reader, the
    /// TaskDB, S3, registry credentials and the queue (opened on `life`'s intake).
    ///
    /// # Errors
    /// An unreachable engine, a TaskDB table that cannot be created, unusable registry
    /// credentials, or a queue that cannot be reached.
    pub async fn connect(cfg: &Resolved, life: &Lifecycle) -> Result<Ports, AgentError> {
        let runtime = Arc::new(BollardRuntime::connect().map_err(AgentError::Engine)?);
        runtime.ping().await.map_err(AgentError::Engine)?;
        let clock: Arc<dyn Clock> = Arc::new(SystemClock);
        let kmsg = KmsgMonitor::start(clock.clone());
        tokio::spawn({
            let (kmsg, root) = (kmsg.clone(), life.root());
            async move {
                root.cancelled().await;
                kmsg.stop();
            }
        });
        let aws = AwsClients::new(&cfg.config.aws);
        let (taskdb, claims) = aws.taskdb(&cfg.config).await?;
        let auth = registry_auth(&cfg.config, &aws, clock.clone()).await?;
        let (queue, queue_ok) = open_queue(cfg, life).await?;
        Ok(Ports {
            runtime,
            clock,
            queue,
            queue_ok,
            blob: aws.blob(),
            taskdb,
            claims,
            auth,
            aws_credentials: aws.credentials(cfg),
            oom: vec![Arc::new(kmsg)],
            metrics: Arc::default(),
            notifier: crate::notify::Notifier::from_env(),
        })
    }
}

/// Opens the queue `cfg` names, closed by `life`'s intake; with the flag the backend keeps
/// of whether it is connected.
///
/// # Errors
/// TLS files that cannot be used, or a queue that cannot be reached or set up.
pub async fn open_queue(
    cfg: &Resolved,
    life: &Lifecycle,
) -> Result<(crate::queue::Backend, Arc<std::sync::atomic::AtomicBool>), AgentError> {
    let q = &cfg.config.queue;
    let err = |source| AgentError::Queue {
        url: crate::queue::redact(&cfg.queue_url),
        source,
    };
    let tls = crate::queue::Tls::load(
        q.tls_ca_file.as_deref(),
        q.tls_client_identity_file.as_deref(),
        q.tls_client_identity_password_file.as_deref(),
    )
    .map_err(err)?;
    let settings = QueueSettings {
        tls,
        agent_id: cfg.pool_id.clone(),
        prefetch: u16::try_from(cfg.prefetch).unwrap_or(u16::MAX),
        delivery_limit: cfg.max_deliveries,
        visibility: cfg.visibility,
        max_job: cfg.max_job,
        aws: cfg.config.aws.clone(),
        close: life.intake(),
        health: Arc::default(),
        op_timeout: cfg.op_timeout,
    };
    let backend = crate::queue::open(&cfg.queue_url, &settings)
        .await
        .map_err(err)?;
    Ok((backend, settings.health))
}

/// The HMAC key commands must be signed with: the one given outside the config, else the
/// contents of `security.hmac_key_file`.
fn hmac_key(cfg: &Resolved, secrets: &Secrets) -> Result<Option<Vec<u8>>, AgentError> {
    match (&secrets.hmac_key, &cfg.config.security.hmac_key_file) {
        (Some(k), _) => Ok(Some(k.clone())),
        (None, Some(path)) => crate::persist::read_bounded(path, 64 << 10)
            .map(|k| Some(k.trim_ascii().to_vec()))
            .map_err(|source| AgentError::HmacKey {
                path: path.clone(),
                source,
            }),
        (None, None) => Ok(None),
    }
}

/// Runs the agent on the real adapters until `shutdown` completes, the pool has been idle
/// long enough, or the instance is going away.
///
/// # Errors
/// An unreachable engine or queue, a TaskDB table that cannot be created, or a pool that
/// cannot start.
///
/// # Cancel safety
/// Not cancel safe: drive it to completion (use `shutdown` to stop it).
pub async fn run(
    cfg: Resolved,
    secrets: Secrets,
    shutdown: impl Future<Output = ()>,
) -> Result<Exit, AgentError> {
    let life = Lifecycle::new();
    let hmac_key = hmac_key(&cfg, &secrets)?;
    let ports = match Ports::connect(&cfg, &life).await {
        Ok(p) => p,
        Err(e) => {
            life.root.cancel();
            return Err(e);
        }
    };
    run_with(cfg, hmac_key, ports, life, shutdown).await
}

/// Runs the agent on `ports` until `shutdown` completes, the pool has been idle long enough,
/// or the instance is going away; then shuts down in order: the intake drains, the pool stops, then the root.
///
/// # Errors
/// A pool or control plane that cannot start, or an admin listener that cannot bind.
pub async fn run_with(
    cfg: Resolved,
    hmac_key: Option<Vec<u8>>,
    ports: Ports,
    life: Lifecycle,
    shutdown: impl Future<Output = ()>,
) -> Result<Exit, AgentError> {
    let started = start(&cfg, hmac_key, ports, &life).await;
    let agent = match started {
        Ok(a) => a,
        Err(e) => {
            life.root.cancel();
            return Err(e);
        }
    };
    let exit = wait_for_exit(&cfg, &agent.pool, shutdown).await;
    tracing::info!(?exit, "Stopping.");
    shut_down(agent, &life).await;
    Ok(exit)
}

/// What runs while the agent is up.
struct Running {
    pool: Pool,
    control: tokio::task::JoinHandle<()>,
    maintain: tokio::task::JoinHandle<()>,
}

/// Starts the pool, the control plane and the background tasks, each on `life`'s tree.
async fn start(
    cfg: &Resolved,
    hmac_key: Option<Vec<u8>>,
    ports: Ports,
    life: &Lifecycle,
) -> Result<Running, AgentError> {
    let Ports {
        runtime,
        clock,
        queue,
        queue_ok,
        blob,
        taskdb,
        claims,
        auth,
        aws_credentials,
        oom,
        metrics,
        notifier,
    } = ports;
    let state_dir = &cfg.config.agent.state_dir;
    let ledger = Arc::new(crate::executor::images::ImageLedger::open(
        state_dir.join("images.json"),
        clock.clone(),
    ));
    let executor_ports = crate::executor::ExecutorPorts {
        runtime: runtime.clone(),
        clock: clock.clone(),
        auth,
        oom_detectors: oom,
        blob: blob.clone(),
        image_ledger: Some(ledger.clone()),
        seen_images: Arc::default(),
        aws_credentials,
    };
    let pool_cfg = PoolConfig {
        id: cfg.pool_id.clone(),
        dir: state_dir.clone(),
        executor: executor_template(cfg),
        expected_usable_mem: cfg.config.agent.expected_usable_mem,
    };
    let pool = Pool::start_with(pool_cfg, executor_ports, taskdb).await?;
    let engine = crate::docker::health::EngineHealth::default();
    let control = Control::new(
        control_config(cfg, hmac_key),
        ControlPorts {
            pool: pool.clone(),
            clock: clock.clone(),
            sink: queue.sink.clone(),
            claims,
            metrics: metrics.clone(),
            notifier: notifier.clone(),
            blob,
            engine: engine.clone(),
        },
    )?;
    tracing::info!(
        state_dir = %state_dir.display(),
        queue = %queue.display,
        repository = %cfg.repository_url,
        resources = %pool.resources(),
        max_jobs = cfg.max_jobs,
        hard_mem_limit = cfg.config.executor.hard_mem_limit,
        "Agent started."
    );
    let root = life.root();
    // Each stops with the root.
    let _engine_watch = engine.watch(runtime.clone(), Duration::from_secs(1), root.clone());
    if let Some(addr) = cfg.admin_listen {
        let st = crate::admin::AdminState {
            agent_id: pool.name().to_string(),
            metrics,
            pool: pool.clone(),
            runtime: runtime.clone(),
            queue_ok,
            draining: control.draining(),
            state_dir: state_dir.clone(),
            repo: cfg.repository_dir(),
        };
        crate::admin::serve(addr, st, root.clone())
            .await
            .map_err(|source| AgentError::Admin { addr, source })?;
    }
    tokio::spawn(notifier.watchdog_loop(root.clone()));
    let maintain = spawn_upkeep(cfg, &pool, runtime, clock, ledger, &root);
    let control = tokio::spawn({
        let (source, intake) = (queue.source, life.intake());
        async move { control.run(source, intake).await }
    });
    Ok(Running {
        pool,
        control,
        maintain,
    })
}

/// The pool's upkeep, each task stopped by `root`: the TaskDB row (returned, awaited at
/// shutdown), zombie collection and image cleanup when configured.
fn spawn_upkeep(
    cfg: &Resolved,
    pool: &Pool,
    runtime: Arc<dyn ContainerRuntime>,
    clock: Arc<dyn Clock>,
    ledger: Arc<crate::executor::images::ImageLedger>,
    root: &CancellationToken,
) -> tokio::task::JoinHandle<()> {
    if let Some(max_age) = cfg.zombie_max_age {
        let (pool, root) = (pool.clone(), root.clone());
        tokio::spawn(async move { pool.collect_zombies_until(max_age, root).await });
    }
    if let Some(policy) = cfg.image_gc.clone() {
        tokio::spawn(crate::imagegc::run_until(
            pool.clone(),
            runtime,
            ledger,
            policy,
            clock,
            cfg.config.agent.state_dir.clone(),
            root.clone(),
        ));
    }
    let (pool, root) = (pool.clone(), root.clone());
    tokio::spawn(async move { pool.maintain_taskdb_row(root).await })
}

/// The control plane's settings.
fn control_config(cfg: &Resolved, hmac_key: Option<Vec<u8>>) -> ControlConfig {
    let (c, security) = (&cfg.config, &cfg.config.security);
    ControlConfig {
        agent_id: cfg.pool_id.clone(),
        state_dir: c.agent.state_dir.clone(),
        repository: cfg.repository_url.clone(),
        max_jobs: cfg.max_jobs,
        prefetch: usize::from(u16::try_from(cfg.prefetch).unwrap_or(u16::MAX)),
        max_deliveries: cfg.max_deliveries,
        drain_grace: cfg.drain_grace,
        heartbeat: cfg.heartbeat,
        lease: cfg.visibility,
        max_job: cfg.max_job,
        job_attempts: cfg.job_attempts,
        retry_base: crate::config::JOB_RETRY_BASE,
        security: Policy {
            hmac_key,
            image_allowlist: security.image_allowlist.clone(),
            own_repository: cfg.repository_url.clone(),
            max_clock_skew: cfg.max_clock_skew,
            repositories: security.repositories.clone(),
            max_resources: security.max_resources.clone(),
            allow_docker_socket: c.executor.allow_docker_socket,
            allow_aws_creds: c.executor.allow_aws_creds,
        },
        retention: cfg.retention,
        publish: c.queue.publish.clone(),
        linger: crate::control::DEFAULT_LINGER,
    }
}

/// Waits for the reason to stop: `shutdown`, a spot notice, or idleness.
async fn wait_for_exit(cfg: &Resolved, pool: &Pool, shutdown: impl Future<Output = ()>) -> Exit {
    tokio::pin!(shutdown);
    let notice = match cfg.interruption_poll {
        None => futures_util::future::Either::Left(std::future::pending()),
        Some(every) => futures_util::future::Either::Right(crate::notice::watch(every)),
    };
    tokio::pin!(notice);
    loop {
        tokio::select! {
            () = &mut shutdown => return Exit::Shutdown,
            n = &mut notice => {
                tracing::warn!(notice = ?n, "The instance is going away: draining now.");
                return Exit::Interrupted;
            }
            () = tokio::time::sleep(cfg.idle_check_every()) => {
                if let Some(idle) = cfg.idle_exit_after {
                    let limit = chrono::Duration::from_std(idle).unwrap_or(chrono::Duration::MAX);
                    if pool.stop_if_idle_for(limit).await.0 {
                        tracing::info!(idle_secs = idle.as_secs(), "Idle; exiting for scale-in.");
                        return Exit::Idle;
                    }
                }
            }
        }
    }
}

/// The shutdown order: mark the pool draining in the TaskDB while the intake stops (the
/// control plane drains its running jobs within the grace, the queue closes), then the pool
/// shuts down (containers keep running, re-attached at the next start), then the root stops
/// everything else.
async fn shut_down(agent: Running, life: &Lifecycle) {
    let marked = tokio::spawn({
        let pool = agent.pool.clone();
        async move { pool.mark_draining().await }
    });
    life.intake.cancel();
    if let Err(e) = agent.control.await {
        tracing::warn!(error = %crate::error::chain(&e), "The control plane task failed.");
    }
    tracing::info!(
        "Stopped taking work; running containers keep running and are re-attached at the next start."
    );
    agent.pool.shutdown().await;
    let _ = marked.await;
    life.root.cancel();
    if let Err(e) = agent.maintain.await {
        tracing::warn!(error = %crate::error::chain(&e), "The TaskDB row task failed.");
    }
}

/// The settings every alloc's executor gets from the config (its id and directory are filled
/// in per alloc; the live handles are its [`crate::executor::ExecutorPorts`]).
fn executor_template(cfg: &Resolved) -> crate::executor::ExecutorConfig {
    let x = &cfg.config.executor;
    let mut c =
        crate::executor::ExecutorConfig::new("template", cfg.config.agent.state_dir.join("allocs"));
    c.hard_mem_limit = x.hard_mem_limit;
    c.allow_docker_socket = x.allow_docker_socket;
    c.allow_aws_creds = x.allow_aws_creds;
    c.network_mode = x.network_mode.clone();
    c.profile_interval = Duration::from_secs(x.profile_interval_secs);
    c.engine_wait = Duration::from_secs(x.engine_wait_secs);
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
