//! The executor: Reflow's `local.Executor` on a real container engine. It owns one directory (an
//! alloc's), a content-addressed repository in it, and the execs under `execs/<hex>/`.
//!
//! Layout under the executor directory:
//! ```text
//! objects/                 the executor repository
//! execs/<hex>/manifest.json
//! execs/<hex>/{arg,tmp,return}/   bind-mounted at /arg, /tmp, /return
//! execs/<hex>/objects/     staging repository for outputs (moved by promote)
//! execs/<hex>/{stdout,stderr}
//! ```
//!
//! Containers are named `reflow-<executor>-<exec hex>-<short>` and labelled with the exec and
//! executor ids, so a restarted agent finds them. Stopping the agent (cancelling the executor)
//! leaves containers running on purpose: the manifests let the next start re-attach. Only
//! [`Executor::kill`] and [`Executor::remove`] kill containers.

pub mod cmdfmt;
mod exec;
pub mod images;
pub mod recover;
pub mod spec;

use std::collections::HashMap;
use std::fmt;
use std::fs;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use thiserror::Error;
use tokio::sync::{OnceCell, watch};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

pub use exec::{Exec, LABEL_EXEC, LABEL_EXECUTOR, Status, TEMPORARY_EXIT_CODE};

use crate::clock::Clock;
use crate::digest::Digest;
use crate::docker::auth::Authenticator;
use crate::docker::{ContainerRuntime, RuntimeError};
use crate::error::{Classify, Kind, ReflowError};
use crate::fileset::{File, Fileset};
use crate::manifest::{ExecState, ExecType, MANIFEST_FILE, MAX_MANIFEST_BYTES, Manifest};
use crate::model::{ConfigError, ExecConfig, TYPE_EXEC};
pub(super) use crate::par::lock;
use crate::persist;
use crate::repo::{FileRepository, RepoError, no_progress};
use crate::resources::Resources;
use recover::{DirScan, LabeledContainer, RecoveryAction, ScannedExec};

/// Image pull attempts before giving up.
pub const PULL_ATTEMPTS: u32 = 6;
/// How long an image seen present is trusted without asking the engine again. A create that
/// finds it gone makes the executor check (and pull) again.
pub const IMAGE_PRESENT_TTL: Duration = Duration::from_secs(60);
/// Period of the hanging-exec monitor.
pub const HANG_CHECK_PERIOD: Duration = Duration::from_secs(600);
/// Default period of the resource sampler.
pub const DEFAULT_PROFILE_INTERVAL: Duration = Duration::from_secs(10);

/// AWS credentials passed to execs that ask for them (when allowed). Never logged.
#[derive(Clone, PartialEq, Eq)]
pub struct AwsCredentials {
    /// Access key id.
    pub access_key_id: String,
    /// Secret access key.
    pub secret_access_key: String,
    /// Session token, for temporary credentials.
    pub session_token: Option<String>,
}

impl fmt::Debug for AwsCredentials {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("AwsCredentials(<redacted>)")
    }
}

/// Where an exec that asks for AWS credentials, on an executor that grants them
/// ([`ExecutorConfig::allow_aws_creds`]) and has none of its own
/// ([`ExecutorConfig::aws_credentials`]), gets them: the agent's, asked for at each container's
/// creation, so rotating credentials (an instance role's) are current.
#[async_trait::async_trait]
pub trait AwsCredentialSource: Send + Sync + fmt::Debug {
    /// The current credentials; `None` when there are none to give.
    async fn credentials(&self) -> Option<AwsCredentials>;
}

/// How long an exec waits for a container engine that stopped answering (10 minutes: a
/// dockerd restart or upgrade takes seconds to a minute).
pub const DEFAULT_ENGINE_WAIT: Duration = Duration::from_secs(600);

/// Executor settings.
#[derive(Debug, Clone)]
pub struct ExecutorConfig {
    /// Executor id (the alloc id): 1 to 64 of `[A-Za-z0-9_.-]`.
    pub id: String,
    /// The executor directory, as this process sees it.
    pub dir: PathBuf,
    /// The same directory as the engine sees it (for bind mounts), when the agent runs in a
    /// container with the host filesystem under a prefix. Default: `dir`.
    pub host_dir: Option<PathBuf>,
    /// Limit each container's memory to its exec's `mem` resource (plus 100 MiB swap).
    pub hard_mem_limit: bool,
    /// Allow execs that ask for it to mount the Docker socket.
    pub allow_docker_socket: bool,
    /// Allow execs that ask for them to receive AWS credentials.
    pub allow_aws_creds: bool,
    /// The credentials to pass when allowed.
    pub aws_credentials: Option<AwsCredentials>,
    /// `uid:gid` for containers. Default: the agent's own.
    pub user: Option<String>,
    /// Container network mode. Default `host`.
    pub network_mode: String,
    /// Resource sampling period.
    pub profile_interval: Duration,
    /// First delay between image pull attempts (then x1.5, at most 10 s).
    pub pull_backoff: Duration,
    /// How often a running exec's cgroup OOM counters and the node's memory are read.
    pub oom_poll_interval: Duration,
    /// How long an exec waits for an engine that stopped answering before it fails.
    pub engine_wait: Duration,
}

impl ExecutorConfig {
    /// Defaults for executor `id` in `dir`.
    pub fn new(id: impl Into<String>, dir: impl Into<PathBuf>) -> Self {
        ExecutorConfig {
            id: id.into(),
            dir: dir.into(),
            host_dir: None,
            hard_mem_limit: false,
            allow_docker_socket: false,
            allow_aws_creds: false,
            aws_credentials: None,
            user: None,
            network_mode: "host".to_string(),
            profile_interval: DEFAULT_PROFILE_INTERVAL,
            pull_backoff: Duration::from_secs(1),
            oom_poll_interval: Duration::from_millis(500),
            engine_wait: DEFAULT_ENGINE_WAIT,
        }
    }
}

/// What an executor uses outside itself: the container engine, the clock, and the handles
/// shared by every executor of the agent. [`ExecutorConfig`] holds settings only.
#[derive(Debug, Clone)]
pub struct ExecutorPorts {
    /// The container engine.
    pub runtime: Arc<dyn ContainerRuntime>,
    /// The clock.
    pub clock: Arc<dyn Clock>,
    /// Registry credentials for pulls.
    pub auth: Option<Arc<dyn Authenticator>>,
    /// OOM detectors consulted after an abnormal exit, e.g. the agent's one kernel log reader.
    pub oom_detectors: Vec<Arc<dyn crate::oom::OomDetector>>,
    /// The blob store for `s3://` repositories and intern/extern execs (absent: not supported).
    pub blob: Option<Arc<dyn crate::blob::BlobStore>>,
    /// Records each image an exec uses (for image cleanup).
    pub image_ledger: Option<Arc<images::ImageLedger>>,
    /// Images seen present, shared by every executor made from these ports (a pool's allocs):
    /// a new alloc's first exec needs no check of an image another alloc just used.
    pub seen_images: Arc<SeenImages>,
    /// AWS credentials for execs that ask for them (absent: only [`ExecutorConfig::aws_credentials`]).
    pub aws_credentials: Option<Arc<dyn AwsCredentialSource>>,
}

/// Images seen present on the engine, and when; each is trusted for [`IMAGE_PRESENT_TTL`]. A
/// create that finds one gone forgets it and checks (and pulls) again.
#[derive(Debug, Default)]
pub struct SeenImages(Mutex<HashMap<String, tokio::time::Instant>>);

impl SeenImages {
    fn fresh(&self, image: &str) -> bool {
        lock(&self.0)
            .get(image)
            .is_some_and(|t| t.elapsed() < IMAGE_PRESENT_TTL)
    }

    fn seen(&self, image: &str) {
        lock(&self.0).insert(image.to_string(), tokio::time::Instant::now());
    }

    fn forget(&self, image: &str) {
        lock(&self.0).remove(image);
    }
}

impl ExecutorPorts {
    /// The engine and the clock, without the optional handles.
    pub fn new(runtime: Arc<dyn ContainerRuntime>, clock: Arc<dyn Clock>) -> Self {
        ExecutorPorts {
            runtime,
            clock,
            auth: None,
            oom_detectors: Vec::new(),
            blob: None,
            image_ledger: None,
            seen_images: Arc::default(),
            aws_credentials: None,
        }
    }
}

/// Executor errors.
#[derive(Debug, Error)]
pub enum ExecutorError {
    /// The executor was killed.
    #[error("executor {id} is dead")]
    Dead {
        /// Executor id.
        id: String,
    },
    /// No exec with this id.
    #[error("exec {id} does not exist")]
    NoSuchExec {
        /// Exec id.
        id: Digest,
    },
    /// The executor id is not usable in container names.
    #[error("invalid executor id {id:?}: use 1 to 64 of [A-Za-z0-9_.-]")]
    BadId {
        /// The id (truncated).
        id: String,
    },
    /// The exec config was rejected.
    #[error("invalid exec config")]
    Config(#[from] ConfigError),
    /// A blob store operation failed.
    #[error(transparent)]
    Blob(#[from] crate::blob::BlobError),
    /// The exec type is not handled by this executor yet.
    #[error("exec type {kind:?} is not supported by this executor")]
    Unsupported {
        /// The type.
        kind: String,
    },
    /// An exec's state machine failed, or the exec failed.
    #[error(transparent)]
    Exec(#[from] ReflowError),
    /// A repository operation failed.
    #[error(transparent)]
    Repo(#[from] RepoError),
    /// The container engine failed.
    #[error(transparent)]
    Runtime(#[from] RuntimeError),
    /// A state file could not be written or read.
    #[error(transparent)]
    Persist(#[from] persist::PersistError),
    /// A directory operation failed.
    #[error("{op} {path}")]
    Io {
        /// What was being done.
        op: &'static str,
        /// The path.
        path: PathBuf,
        /// Cause.
        #[source]
        source: std::io::Error,
    },
    /// Objects do not match their digests.
    #[error("digest mismatches: {mismatches}")]
    Integrity {
        /// `expected (ID) != actual (digest)` entries, comma-separated.
        mismatches: String,
    },
    /// Unload of an object that was never loaded (or already unloaded).
    #[error("unload {digest}: not loaded")]
    NotLoaded {
        /// The object.
        digest: Digest,
    },
    /// A fileset passed to verify or unload still has references.
    #[error("unresolved file {digest} in fileset")]
    Unresolved {
        /// The reference's digest.
        digest: Digest,
    },
    /// The source repository URL is not supported.
    #[error("unsupported repository URL {url:?} (want file:///path)")]
    RepoUrl {
        /// The URL (truncated).
        url: String,
    },
}

impl Classify for ExecutorError {
    fn kind(&self) -> Kind {
        match self {
            ExecutorError::Dead { .. } | ExecutorError::NoSuchExec { .. } => Kind::NotExist,
            ExecutorError::BadId { .. }
            | ExecutorError::Unresolved { .. }
            | ExecutorError::RepoUrl { .. } => Kind::Invalid,
            ExecutorError::Blob(e) => e.kind(),
            ExecutorError::Config(e) => e.kind(),
            ExecutorError::Unsupported { .. } => Kind::NotSupported,
            ExecutorError::Exec(e) => e.kind,
            ExecutorError::Repo(e) => e.kind(),
            ExecutorError::Runtime(e) => e.kind(),
            ExecutorError::Persist(e) => e.kind(),
            ExecutorError::Io { source, .. } => crate::error::io_kind(source),
            ExecutorError::Integrity { .. } => Kind::Integrity,
            ExecutorError::NotLoaded { .. } => Kind::Precondition,
        }
    }
}

fn io_err<'a>(
    op: &'static str,
    path: &'a Path,
) -> impl FnOnce(std::io::Error) -> ExecutorError + 'a {
    move |source| ExecutorError::Io {
        op,
        path: path.to_path_buf(),
        source,
    }
}

/// An integrity failure, as published on the integrity signal.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct IntegritySignal {
    /// How many integrity failures this executor has seen.
    pub count: u64,
    /// The latest failure.
    pub last: String,
}

/// Why one pull attempt failed.
enum PullFailure {
    /// Retrying will not help.
    Final(ReflowError),
    /// Worth another attempt; the cause.
    Retry(String),
}

/// The shared outcome of one image check-or-pull.
type PullOutcome = Arc<OnceCell<Result<(), ReflowError>>>;

/// Single-flight image presence checks and pulls, per image reference.
#[derive(Debug)]
struct Images {
    ledger: Option<Arc<images::ImageLedger>>,
    runtime: Arc<dyn ContainerRuntime>,
    /// Images seen present (shared with the pool's other executors).
    present: Arc<SeenImages>,
    auth: Option<Arc<dyn Authenticator>>,
    backoff: Duration,
    inflight: Mutex<HashMap<String, PullOutcome>>,
}

impl Images {
    async fn ensure(&self, image: &str) -> Result<(), ReflowError> {
        if let Some(l) = &self.ledger {
            l.used(image);
        }
        if self.present.fresh(image) {
            return Ok(());
        }
        let cell = {
            let mut m = lock(&self.inflight);
            m.entry(image.to_string()).or_default().clone()
        };
        let r = cell.get_or_init(|| self.check_or_pull(image)).await.clone();
        // Forget the shared outcome either way: a failure is retried by the next caller; a
        // success is remembered in `present` for a while.
        let mut m = lock(&self.inflight);
        if m.get(image).is_some_and(|c| Arc::ptr_eq(c, &cell)) {
            m.remove(image);
        }
        drop(m);
        if r.is_ok() {
            self.present.seen(image);
        }
        r
    }

    /// Forgets that `image` was seen present.
    fn forget(&self, image: &str) {
        self.present.forget(image);
    }

    /// One pull attempt, with credentials when an authenticator has them.
    async fn pull_once(&self, image: &str) -> Result<(), PullFailure> {
        let creds = match &self.auth {
            Some(a) => a
                .authenticate(image)
                .await
                .map_err(|e| PullFailure::Retry(e.to_string()))?,
            None => None,
        };
        match self.runtime.pull(image, creds).await {
            Ok(()) => Ok(()),
            // The registry answered: the image is missing or the credentials are refused.
            Err(e @ (RuntimeError::NotFound { .. } | RuntimeError::NotAllowed { .. })) => {
                Err(PullFailure::Final(ReflowError::new(
                    e.kind(),
                    "pull",
                    format!("image {image} is not present and cannot be pulled: {e}"),
                )))
            }
            Err(e) => Err(PullFailure::Retry(e.to_string())),
        }
    }

    async fn check_or_pull(&self, image: &str) -> Result<(), ReflowError> {
        let rt = |e: RuntimeError| ReflowError::from_classified("ensureimage", &e).with_arg(image);
        if self.runtime.image_present(image).await.map_err(rt)? {
            return Ok(());
        }
        let mut delay = crate::backoff::Backoff::new(self.backoff, 1.5, Duration::from_secs(10));
        let mut last = String::new();
        for attempt in 1..=PULL_ATTEMPTS {
            match self.pull_once(image).await {
                Ok(()) => return Ok(()),
                Err(PullFailure::Final(e)) => return Err(e),
                Err(PullFailure::Retry(msg)) => {
                    tracing::warn!(image, attempt, error = %msg, "Image pull failed; retrying.");
                    last = msg;
                }
            }
            if attempt < PULL_ATTEMPTS {
                tokio::time::sleep(delay.next_delay()).await;
            }
        }
        // Absent locally and not pullable after every attempt: the image does not exist for this
        // agent. The last cause is kept in the message.
        let msg = last;
        Err(ReflowError::new(
            Kind::NotExist,
            "pull",
            format!(
                "image {image} is not present and could not be pulled after {PULL_ATTEMPTS} attempts: {msg}"
            ),
        ))
    }
}

/// Shared executor state.
#[derive(Debug)]
pub(crate) struct Inner {
    cfg: ExecutorConfig,
    runtime: Arc<dyn ContainerRuntime>,
    clock: Arc<dyn Clock>,
    oom_detectors: Vec<Arc<dyn crate::oom::OomDetector>>,
    blob: Option<Arc<dyn crate::blob::BlobStore>>,
    aws_credentials: Option<Arc<dyn AwsCredentialSource>>,
    repo: FileRepository,
    images: Images,
    execs: Mutex<HashMap<Digest, Arc<Exec>>>,
    put_lock: tokio::sync::Mutex<()>,
    refs: Mutex<HashMap<Digest, u64>>,
    gc: TaskTracker,
    tasks: TaskTracker,
    cancel: CancellationToken,
    dead: AtomicBool,
    integrity: watch::Sender<IntegritySignal>,
    resources: Mutex<Resources>,
}

impl Inner {
    fn signal_integrity(&self, what: String) {
        tracing::error!(executor = %self.cfg.id, detail = %what, "Integrity error.");
        // send_modify never blocks, whether or not anyone listens.
        self.integrity.send_modify(|s| {
            s.count += 1;
            s.last = what;
        });
    }

    fn incr(&self, d: &Digest) {
        *lock(&self.refs).entry(*d).or_insert(0) += 1;
    }

    fn decr(&self, d: &Digest) {
        let mut refs = lock(&self.refs);
        if let Some(c) = refs.get_mut(d) {
            *c = c.saturating_sub(1);
            if *c == 0 {
                refs.remove(d);
            }
        }
    }

    /// Moves a completed exec's outputs from its staging repository into the executor's and
    /// counts a reference to each.
    fn promote_blocking(
        &self,
        result: &Fileset,
        staging_dir: &Path,
        id: &Digest,
    ) -> Result<(), ReflowError> {
        let staging = FileRepository::open(staging_dir)
            .map_err(|e| ReflowError::from_classified("promote", &e).with_arg(id))?;
        for f in result.files() {
            if !self.repo.contains(&f.id) {
                self.repo
                    .link_in(&staging.path(&f.id), &f.id)
                    .map_err(|e| ReflowError::from_classified("promote", &e).with_arg(id))?;
            }
            self.incr(&f.id);
        }
        for d in staging
            .walk()
            .map_err(|e| ReflowError::from_classified("promote", &e).with_arg(id))?
        {
            let _ = staging.delete(&d);
        }
        Ok(())
    }
}

/// A handle to an executor; cheap to clone.
#[derive(Debug, Clone)]
pub struct Executor {
    inner: Arc<Inner>,
}

fn valid_id(id: &str) -> bool {
    (1..=64).contains(&id.len())
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'.' || b == b'-')
}

/// The agent's own `uid:gid`, read from `/proc/self` (owned by the process's effective ids).
fn own_user() -> Option<String> {
    fs::metadata("/proc/self")
        .ok()
        .map(|m| format!("{}:{}", m.uid(), m.gid()))
}

impl Executor {
    /// Builds the executor on `cfg.dir` and recovers its execs from disk (see [`recover`]).
    ///
    /// # Errors
    /// A bad id, an unusable directory, or an engine that cannot list containers.
    pub async fn start(
        cfg: ExecutorConfig,
        runtime: Arc<dyn ContainerRuntime>,
        clock: Arc<dyn Clock>,
    ) -> Result<Executor, ExecutorError> {
        Executor::start_with(cfg, ExecutorPorts::new(runtime, clock)).await
    }

    /// [`Executor::start`] with every port: registry credentials, OOM detectors, the blob
    /// store and the image ledger besides the engine and the clock.
    ///
    /// # Errors
    /// As [`Executor::start`].
    pub async fn start_with(
        mut cfg: ExecutorConfig,
        ports: ExecutorPorts,
    ) -> Result<Executor, ExecutorError> {
        let ExecutorPorts {
            runtime,
            clock,
            auth,
            oom_detectors,
            blob,
            image_ledger,
            seen_images,
            aws_credentials,
        } = ports;
        if !valid_id(&cfg.id) {
            return Err(ExecutorError::BadId {
                id: cfg.id.chars().take(80).collect(),
            });
        }
        if cfg.user.is_none() {
            cfg.user = own_user();
        }
        let execs_dir = cfg.dir.join("execs");
        // A directory without `execs/` has no exec to recover (see `recover`).
        let fresh = !execs_dir.exists();
        fs::create_dir_all(&execs_dir).map_err(io_err("create", &execs_dir))?;
        let repo = FileRepository::open(cfg.dir.join("objects"))?;
        repo.clean_tmp()?;
        let inner = Arc::new(Inner {
            images: Images {
                ledger: image_ledger,
                runtime: runtime.clone(),
                present: seen_images,
                backoff: cfg.pull_backoff,
                auth,
                inflight: Mutex::new(HashMap::new()),
            },
            cfg,
            runtime,
            clock,
            oom_detectors,
            blob,
            aws_credentials,
            repo,
            execs: Mutex::new(HashMap::new()),
            put_lock: tokio::sync::Mutex::new(()),
            refs: Mutex::new(HashMap::new()),
            gc: TaskTracker::new(),
            tasks: TaskTracker::new(),
            cancel: CancellationToken::new(),
            dead: AtomicBool::new(false),
            integrity: watch::Sender::new(IntegritySignal::default()),
            resources: Mutex::new(Resources::default()),
        });
        let ex = Executor { inner };
        // A new directory skips recovery and its container listing, one engine call per new
        // alloc: any container of this executor's label belongs to no exec of this directory.
        // One named like an exec put here is replaced at its create (`Exec::fresh`), and the
        // executor's kill removes every labelled container.
        if !fresh {
            ex.recover().await?;
        }
        let monitor = ex.clone();
        ex.inner.tasks.spawn(async move {
            loop {
                tokio::select! {
                    () = monitor.inner.cancel.cancelled() => return,
                    () = tokio::time::sleep(HANG_CHECK_PERIOD) => {}
                }
                let n = monitor.check_hanging().await;
                if n > 0 {
                    tracing::warn!(executor = %monitor.inner.cfg.id, removed = n, "Removed hanging exec containers.");
                }
            }
        });
        Ok(ex)
    }

    /// The executor id (its URI).
    pub fn uri(&self) -> &str {
        &self.inner.cfg.id
    }

    /// The executor repository.
    pub fn repository(&self) -> &FileRepository {
        &self.inner.repo
    }

    /// The resources assigned to this executor.
    pub fn resources(&self) -> Resources {
        lock(&self.inner.resources).clone()
    }

    /// Sets the resources assigned to this executor.
    pub fn set_resources(&self, r: Resources) {
        *lock(&self.inner.resources) = r;
    }

    /// Subscribes to integrity failures (a load or verify that found corrupt data).
    pub fn integrity_signal(&self) -> watch::Receiver<IntegritySignal> {
        self.inner.integrity.subscribe()
    }

    fn check_alive(&self) -> Result<(), ExecutorError> {
        if self.inner.dead.load(Ordering::SeqCst) {
            return Err(ExecutorError::Dead {
                id: self.inner.cfg.id.clone(),
            });
        }
        Ok(())
    }

    fn exec_dir(&self, id: &Digest) -> PathBuf {
        self.inner.cfg.dir.join("execs").join(id.hex())
    }

    fn new_exec(&self, id: Digest, manifest: Manifest, status: Status) -> Arc<Exec> {
        let dir = self.exec_dir(&id);
        let host_dir = self
            .inner
            .cfg
            .host_dir
            .as_ref()
            .unwrap_or(&self.inner.cfg.dir)
            .join("execs")
            .join(id.hex());
        let short = Digest::of(dir.to_string_lossy().as_bytes()).short();
        let container = format!("reflow-{}-{}-{}", self.inner.cfg.id, id.hex(), short);
        Exec::new(
            id,
            dir,
            host_dir,
            container,
            manifest,
            status,
            self.inner.cancel.child_token(),
        )
    }

    fn spawn(&self, exec: Arc<Exec>, from: ExecState) {
        use tracing::Instrument;
        let inner = self.inner.clone();
        // One span per exec: every log line of its state machine names the exec and executor,
        // under the command span that started it (if any).
        let span = tracing::info_span!("exec", exec = %exec.id(), executor = %inner.cfg.id);
        self.inner.tasks.spawn(
            async move {
                let ended = exec.ended.clone();
                exec.run(inner, from).await;
                ended.cancel();
            }
            .instrument(span),
        );
    }

    /// Starts exec `id` with `config`, or returns the existing one when it is running or
    /// succeeded. A failed exec (state machine error, or a result error) is killed and re-run
    /// from a clean directory. Returns once the exec's Init manifest is durable.
    ///
    /// # Errors
    /// Dead executor, invalid config, or failing to write the manifest.
    pub async fn put(&self, id: Digest, config: ExecConfig) -> Result<Arc<Exec>, ExecutorError> {
        self.check_alive()?;
        config.validate()?;
        let exec_type = match config.kind.as_str() {
            TYPE_EXEC => ExecType::Docker,
            crate::model::TYPE_INTERN | crate::model::TYPE_EXTERN if self.inner.blob.is_some() => {
                ExecType::Blob
            }
            _ => return Err(ExecutorError::Unsupported { kind: config.kind }),
        };
        let _g = self.inner.put_lock.lock().await;
        self.check_alive()?;
        let existing = lock(&self.inner.execs).get(&id).cloned();
        if let Some(e) = existing {
            let st = e.status();
            let failed = st.err.is_some()
                || (st.state == ExecState::Complete && e.manifest().result.err.is_some());
            if !failed {
                return Ok(e);
            }
            tracing::info!(exec = %id, "Replacing a failed exec.");
            self.stop_exec(&e).await;
            lock(&self.inner.execs).remove(&id);
        }
        let dir = self.exec_dir(&id);
        // No directory: no earlier incarnation of this exec here (see `Exec::fresh`). With one (a
        // quarantined manifest, a failed exec replaced), a container of its name is its own.
        let fresh = !dir.exists();
        match fs::remove_dir_all(&dir) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(io_err("clean", &dir)(e)),
        }
        fs::create_dir_all(&dir).map_err(io_err("create", &dir))?;
        let manifest = Manifest::new(exec_type, config, self.inner.clock.now());
        let exec = self.new_exec(
            id,
            manifest,
            Status {
                state: ExecState::Unstarted,
                err: None,
            },
        );
        exec.fresh.store(fresh, Ordering::SeqCst);
        exec.transition(ExecState::Init).await?;
        lock(&self.inner.execs).insert(id, exec.clone());
        tracing::info!(exec = %id, executor = %self.inner.cfg.id, "Started exec.");
        self.spawn(exec.clone(), ExecState::Init);
        Ok(exec)
    }

    /// Kills an exec's container (as the agent's own kill: the result is Canceled) and waits
    /// for its state machine to stop.
    async fn stop_exec(&self, e: &Arc<Exec>) {
        if e.status().state != ExecState::Complete {
            e.killed.store(true, Ordering::SeqCst);
            if let Err(err) = self.inner.runtime.kill(e.container_name()).await {
                tracing::warn!(exec = %e.id(), error = %crate::error::chain(&err), "Killing an exec's container failed.");
            }
            // A state machine that is not waiting on the container stops on cancellation.
            let _ = tokio::time::timeout(Duration::from_secs(30), e.wait()).await;
            e.cancel.cancel();
        }
        // A completed exec's state machine may still be removing its container: it ends
        // first, so that removal can never take a successor's container of the same name.
        let _ = tokio::time::timeout(Duration::from_secs(30), e.ended.cancelled()).await;
        if let Err(err) = self.inner.runtime.remove(e.container_name(), true).await {
            tracing::warn!(exec = %e.id(), error = %crate::error::chain(&err), "Removing an exec's container failed.");
        }
    }

    /// The exec `id`.
    ///
    /// # Errors
    /// Dead executor, or no such exec.
    pub fn get(&self, id: &Digest) -> Result<Arc<Exec>, ExecutorError> {
        self.check_alive()?;
        lock(&self.inner.execs)
            .get(id)
            .cloned()
            .ok_or(ExecutorError::NoSuchExec { id: *id })
    }

    /// All registered execs, in id order.
    pub fn execs(&self) -> Vec<Arc<Exec>> {
        let mut v: Vec<_> = lock(&self.inner.execs).values().cloned().collect();
        v.sort_by_key(|e| e.id());
        v
    }

    /// Removes exec `id`: kills it if still running, removes its container and directory, and
    /// forgets it. Unknown ids and a dead executor are fine (idempotent).
    ///
    /// # Errors
    /// Deleting the exec directory.
    pub async fn remove(&self, id: &Digest) -> Result<(), ExecutorError> {
        if self.inner.dead.load(Ordering::SeqCst) {
            return Ok(());
        }
        let _g = self.inner.put_lock.lock().await;
        let Some(e) = lock(&self.inner.execs).get(id).cloned() else {
            return Ok(());
        };
        self.stop_exec(&e).await;
        match fs::remove_dir_all(e.dir()) {
            Ok(()) => {}
            Err(err) if err.kind() == std::io::ErrorKind::NotFound => {}
            Err(err) => return Err(io_err("remove", e.dir())(err)),
        }
        lock(&self.inner.execs).remove(id);
        Ok(())
    }

    /// Kills the executor: it becomes dead, its execs' state machines stop, its containers are
    /// killed and removed, and its repository is emptied. Exec directories are kept for
    /// inspection.
    ///
    /// # Errors
    /// Already dead, or the engine cannot list containers.
    pub async fn kill(&self) -> Result<(), ExecutorError> {
        if self.inner.dead.swap(true, Ordering::SeqCst) {
            return Err(ExecutorError::Dead {
                id: self.inner.cfg.id.clone(),
            });
        }
        for e in self.execs() {
            e.killed.store(true, Ordering::SeqCst);
        }
        self.inner.cancel.cancel();
        self.inner.tasks.close();
        self.inner.tasks.wait().await;
        let containers = self
            .inner
            .runtime
            .list_labeled(LABEL_EXECUTOR, &self.inner.cfg.id)
            .await?;
        for c in containers {
            if let Err(e) = self.inner.runtime.kill(&c.name).await {
                tracing::warn!(container = %c.name, error = %crate::error::chain(&e), "Killing a container failed.");
            }
            if let Err(e) = self.inner.runtime.remove(&c.name, true).await {
                tracing::warn!(container = %c.name, error = %crate::error::chain(&e), "Removing a container failed.");
            }
        }
        self.wait_gc().await;
        let repo = self.inner.repo.clone();
        tokio::task::spawn_blocking(move || -> Result<(), RepoError> {
            for d in repo.walk()? {
                repo.delete(&d)?;
            }
            Ok(())
        })
        .await
        .map_err(|e| ExecutorError::Exec(ReflowError::new(Kind::Fatal, "kill", e.to_string())))??;
        lock(&self.inner.refs).clear();
        Ok(())
    }

    /// Stops this executor's state machines without touching containers, as an agent shutdown
    /// does: the next start re-attaches.
    pub async fn shutdown(&self) {
        self.inner.cancel.cancel();
        self.inner.tasks.close();
        self.inner.tasks.wait().await;
        self.wait_gc().await;
    }

    /// Finds running execs whose container the engine reports running with no processes (twice,
    /// 100 ms apart) and force-removes their containers, so their wait fails with Unavailable
    /// and a re-put runs them again. Returns how many were removed. Errors are expected races
    /// and only logged.
    pub async fn check_hanging(&self) -> usize {
        let mut removed = 0;
        for e in self.execs() {
            if self.hanging(&e).await {
                tracing::warn!(exec = %e.id(), container = %e.container_name(), "Exec is hanging (running, no processes); removing its container.");
                match self.inner.runtime.remove(e.container_name(), true).await {
                    Ok(()) => removed += 1,
                    Err(err) => {
                        tracing::debug!(exec = %e.id(), error = %crate::error::chain(&err), "Removing a hanging container failed.")
                    }
                }
            }
        }
        removed
    }

    /// Whether exec `id` is hanging: running, and its container reported running with no
    /// processes twice, 100 ms apart (Reflow's `IsHanging`). Unknown execs are not.
    pub async fn is_hanging(&self, id: &Digest) -> bool {
        match self.get(id) {
            Ok(e) => self.hanging(&e).await,
            Err(_) => false,
        }
    }

    async fn hanging(&self, e: &Exec) -> bool {
        let st = e.status();
        if st.state != ExecState::Running || st.err.is_some() {
            return false;
        }
        for round in 0..2 {
            if round > 0 {
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            let running = matches!(self.inner.runtime.inspect(e.container_name()).await, Ok(Some(ref i)) if i.running);
            let idle = matches!(self.inner.runtime.top(e.container_name()).await, Ok(ref p) if p.is_empty());
            if !(running && idle) {
                return false;
            }
        }
        true
    }

    /// Reflow's `ExecInspect` of exec `id`; while it runs, `Commands` lists its processes.
    ///
    /// # Errors
    /// No such exec.
    pub async fn inspect(&self, id: &Digest) -> Result<crate::model::ExecInspect, ExecutorError> {
        let e = self.get(id)?;
        let mut insp = e.inspect();
        if e.status().state == ExecState::Running {
            match self.inner.runtime.top(e.container_name()).await {
                Ok(cmds) => insp.commands = cmds,
                Err(err) => {
                    tracing::debug!(exec = %id, error = %crate::error::chain(&err), "Listing exec processes failed.")
                }
            }
        }
        Ok(insp)
    }

    /// Promotes exec `id`'s outputs into the executor repository (once).
    ///
    /// # Errors
    /// No such exec, the exec's error, or a repository error.
    pub async fn promote(&self, id: &Digest) -> Result<(), ExecutorError> {
        let e = self.get(id)?;
        Ok(e.promote(&self.inner).await?)
    }

    /// Makes every file of `fileset` present in the executor repository, fetching from the
    /// source repository at `repo_url` (`file:///path`), and returns the resolved fileset.
    /// Every loaded file is counted once more (see [`Executor::unload`]).
    ///
    /// # Errors
    /// Missing objects (NotExist), content that does not match its digest (Integrity; the
    /// integrity signal is raised), an unsupported URL or reference source.
    pub async fn load(&self, repo_url: &str, fileset: &Fileset) -> Result<Fileset, ExecutorError> {
        self.check_alive()?;
        fileset
            .validate_paths()
            .map_err(|e| ExecutorError::Exec(ReflowError::from_classified("load", &e)))?;
        if repo_url.starts_with("s3://") {
            return self.load_s3(repo_url, fileset).await;
        }
        let src = match repo_url.strip_prefix("file://") {
            Some(p) if p.starts_with('/') => PathBuf::from(p),
            _ => {
                return Err(ExecutorError::RepoUrl {
                    url: repo_url.chars().take(200).collect(),
                });
            }
        };
        let files = fileset.files();
        let inner = self.inner.clone();
        let results = tokio::task::spawn_blocking(move || {
            crate::par::map(&files, crate::par::default_threads() * 2, |f| {
                (f.digest(), load_one(&inner, &src, f))
            })
        })
        .await
        .map_err(|e| ExecutorError::Exec(ReflowError::new(Kind::Fatal, "load", e.to_string())))?;
        self.finish_load(fileset, results)
    }

    /// The end of every load: substitutes the loaded files into `fileset`, or, when any file
    /// failed, raises the integrity signal for integrity errors and releases what was counted
    /// (a failed load leaks no references) and returns the first error.
    fn finish_load(
        &self,
        fileset: &Fileset,
        results: Vec<(Digest, Result<File, ExecutorError>)>,
    ) -> Result<Fileset, ExecutorError> {
        let mut subst = HashMap::new();
        let mut first_err = None;
        for (key, r) in results {
            match r {
                Ok(f) => {
                    subst.insert(key, f);
                }
                Err(e) => {
                    if e.kind() == Kind::Integrity {
                        self.inner.signal_integrity(e.to_string());
                    }
                    first_err.get_or_insert(e);
                }
            }
        }
        if let Some(e) = first_err {
            for f in subst.values() {
                self.inner.decr(&f.id);
            }
            return Err(e);
        }
        let (out, resolved) = fileset.subst(&subst);
        if !resolved {
            return Err(ExecutorError::Exec(ReflowError::new(
                Kind::Invalid,
                "load",
                "fileset not resolved",
            )));
        }
        Ok(out)
    }

    /// [`Executor::load`] from the content-addressed repository at `s3://bucket/prefix`: files
    /// already present are reused, others are downloaded (8 at a time) and verified.
    async fn load_s3(&self, repo_url: &str, fileset: &Fileset) -> Result<Fileset, ExecutorError> {
        use crate::blob::transfer;
        let store = self
            .inner
            .blob
            .clone()
            .ok_or_else(|| ExecutorError::RepoUrl {
                url: repo_url.chars().take(200).collect(),
            })?;
        let url = crate::blob::BlobUrl::parse(repo_url)?;
        let inner = &self.inner;
        let files = fileset.files();
        let missing: Vec<File> = files
            .iter()
            .filter(|f| !f.is_ref() && !inner.repo.contains(&f.id))
            .cloned()
            .collect();
        let mut fetched: HashMap<Digest, crate::blob::BlobError> = transfer::fetch_objects(
            store.as_ref(),
            &url,
            missing,
            &inner.repo,
            transfer::CONCURRENCY,
            &crate::blob::Progress::default(),
        )
        .await
        .into_iter()
        .filter_map(|(d, r)| r.err().map(|e| (d, e)))
        .collect();
        let results = files
            .into_iter()
            .map(|f| {
                let key = f.digest();
                let r = if f.is_ref() {
                    Err(ExecutorError::Unresolved { digest: key })
                } else if let Some(e) = fetched.remove(&f.id) {
                    Err(ExecutorError::Blob(e))
                } else {
                    inner.incr(&f.id);
                    inner.repo.stat(&f.id).map_err(ExecutorError::from)
                };
                (key, r)
            })
            .collect();
        self.finish_load(fileset, results)
    }

    /// Drops one reference to every file of `fileset`; objects that reach zero are deleted in
    /// the background. Unloading a file that is not loaded is an error, and then nothing is
    /// decremented.
    ///
    /// # Errors
    /// [`ExecutorError::NotLoaded`] or [`ExecutorError::Unresolved`].
    pub fn unload(&self, fileset: &Fileset) -> Result<(), ExecutorError> {
        let files = fileset.files();
        let dead: Vec<Digest> = {
            let mut refs = lock(&self.inner.refs);
            for f in &files {
                if f.is_ref() {
                    return Err(ExecutorError::Unresolved { digest: f.digest() });
                }
                if !refs.contains_key(&f.id) {
                    return Err(ExecutorError::NotLoaded { digest: f.id });
                }
            }
            let mut dead = Vec::new();
            for f in &files {
                if let Some(c) = refs.get_mut(&f.id) {
                    *c -= 1;
                    if *c == 0 {
                        refs.remove(&f.id);
                        dead.push(f.id);
                    }
                }
            }
            dead
        };
        if !dead.is_empty() {
            let inner = self.inner.clone();
            self.inner.gc.spawn_blocking(move || {
                for d in dead {
                    // Holding the refcount lock makes "still unreferenced" and the delete atomic
                    // with respect to a concurrent load, which counts before it looks.
                    let refs = lock(&inner.refs);
                    if !refs.contains_key(&d)
                        && let Err(e) = inner.repo.delete(&d)
                    {
                        tracing::warn!(object = %d, error = %crate::error::chain(&e), "Garbage collection failed.");
                    }
                    drop(refs);
                }
            });
        }
        Ok(())
    }

    /// Waits for background garbage collection to finish.
    pub async fn wait_gc(&self) {
        self.inner.gc.close();
        self.inner.gc.wait().await;
        self.inner.gc.reopen();
    }

    /// The reference count of object `d`.
    pub fn refcount(&self, d: &Digest) -> u64 {
        lock(&self.inner.refs).get(d).copied().unwrap_or(0)
    }

    /// Re-hashes every file of `fileset` in the repository, in parallel.
    ///
    /// # Errors
    /// [`ExecutorError::Integrity`] listing every mismatch (and the integrity signal is raised),
    /// or the first other error (a reference, a missing object).
    pub async fn verify_integrity(&self, fileset: &Fileset) -> Result<(), ExecutorError> {
        let files = fileset.files();
        if let Some(f) = files.iter().find(|f| f.is_ref()) {
            return Err(ExecutorError::Unresolved { digest: f.digest() });
        }
        let ids: Vec<Digest> = files.iter().map(|f| f.id).collect();
        let repo = self.inner.repo.clone();
        let errs = tokio::task::spawn_blocking(move || repo.verify_many(&ids, &no_progress))
            .await
            .map_err(|e| {
                ExecutorError::Exec(ReflowError::new(Kind::Fatal, "verify", e.to_string()))
            })?;
        let mismatches: Vec<String> = errs
            .iter()
            .filter_map(|e| match e {
                RepoError::Integrity { expected, actual } => {
                    Some(format!("{expected} (ID) != {actual} (digest)"))
                }
                _ => None,
            })
            .collect();
        if !mismatches.is_empty() {
            let m = mismatches.join(", ");
            self.inner.signal_integrity(format!("verify: {m}"));
            return Err(ExecutorError::Integrity { mismatches: m });
        }
        match errs.into_iter().next() {
            Some(e) => Err(e.into()),
            None => Ok(()),
        }
    }

    // === recovery ===

    async fn recover(&self) -> Result<(), ExecutorError> {
        let execs_dir = self.inner.cfg.dir.join("execs");
        let scanned = {
            let d = execs_dir.clone();
            tokio::task::spawn_blocking(move || scan_execs(&d))
                .await
                .map_err(|e| {
                    ExecutorError::Exec(ReflowError::new(Kind::Fatal, "recover", e.to_string()))
                })??
        };
        let containers: Vec<LabeledContainer> = self
            .inner
            .runtime
            .list_labeled(LABEL_EXECUTOR, &self.inner.cfg.id)
            .await?
            .into_iter()
            .map(|c| LabeledContainer {
                exec: c
                    .labels
                    .get(LABEL_EXEC)
                    .and_then(|h| Digest::parse(h).ok())
                    .filter(|d| !d.is_zero()),
                name: c.name,
            })
            .collect();
        let (scanned, manifests): (Vec<ScannedExec>, Vec<Option<Manifest>>) =
            scanned.into_iter().unzip();
        let plan = recover::plan(&scanned, &containers);
        let mut manifests: HashMap<String, Manifest> = scanned
            .iter()
            .zip(manifests)
            .filter_map(|(s, m)| Some((s.name.clone(), m?)))
            .collect();
        let served = plan
            .iter()
            .filter(|a| matches!(a, RecoveryAction::Serve { .. }))
            .count();
        for action in plan {
            // Completed execs are served as they are: one summary line, not one line each.
            if matches!(action, RecoveryAction::Serve { .. }) {
                tracing::debug!(executor = %self.inner.cfg.id, action = ?action, "Recovery.");
            } else {
                tracing::info!(executor = %self.inner.cfg.id, action = ?action, "Recovery.");
            }
            self.apply(action, &execs_dir, &mut manifests).await;
        }
        if served > 0 {
            tracing::info!(executor = %self.inner.cfg.id, served, "Recovery: completed execs served from their manifests.");
        }
        Ok(())
    }

    async fn apply(
        &self,
        action: RecoveryAction,
        execs_dir: &Path,
        manifests: &mut HashMap<String, Manifest>,
    ) {
        // Each manifest is moved into its exec, never copied. The status's state is `state`, or
        // the manifest's own when `None`.
        let mut register =
            |id: Digest, state: Option<ExecState>, err: Option<ReflowError>| -> Option<Arc<Exec>> {
                let m = manifests.remove(&id.hex())?;
                let status = Status {
                    state: state.unwrap_or(m.state),
                    err,
                };
                let e = self.new_exec(id, m, status);
                lock(&self.inner.execs).insert(id, e.clone());
                Some(e)
            };
        match action {
            RecoveryAction::Resume { id, from } => {
                // The state it resumes from: a `Created` whose container is gone goes back to
                // `Init`; an `Init` whose container exists goes on as `Created`.
                if let Some(e) = register(id, Some(from), None) {
                    lock(&e.manifest).state = from;
                    self.spawn(e, from);
                }
            }
            RecoveryAction::Serve { id } => {
                // No state machine runs for it.
                if let Some(e) = register(id, Some(ExecState::Complete), None) {
                    e.ended.cancel();
                }
            }
            RecoveryAction::MarkLost { id } => {
                let err = ReflowError::new(
                    Kind::Unavailable,
                    "exec",
                    "container disappeared while the agent was down",
                )
                .with_arg(id);
                tracing::error!(exec = %id, "Exec lost: its container disappeared while no agent ran.");
                if let Some(e) = register(id, Some(ExecState::Running), Some(err)) {
                    e.ended.cancel();
                }
            }
            RecoveryAction::Quarantine { name, reason } => {
                let from = execs_dir.join(&name).join(MANIFEST_FILE);
                let to = execs_dir.join(&name).join(format!(
                    "{MANIFEST_FILE}.corrupt-{}",
                    self.inner.clock.now().timestamp()
                ));
                tracing::error!(exec_dir = %name, %reason, quarantined = %to.display(), "Unreadable manifest quarantined; its container, if any, is left running.");
                if let Err(e) = fs::rename(&from, &to) {
                    tracing::error!(error = %crate::error::chain(&e), "Quarantining a manifest failed.");
                }
            }
            RecoveryAction::RemoveDir { name } => {
                tracing::warn!(exec_dir = %name, "Removing an exec directory that never reached Init.");
                let _ = fs::remove_dir_all(execs_dir.join(name));
            }
            RecoveryAction::Ignore { name } => {
                tracing::warn!(entry = %name, "Ignoring a foreign entry in the execs directory.");
            }
            RecoveryAction::RemoveContainer { name } => {
                tracing::warn!(container = %name, "Removing a container without a live exec.");
                if let Err(e) = self.inner.runtime.remove(&name, true).await {
                    tracing::warn!(container = %name, error = %crate::error::chain(&e), "Removing a container failed.");
                }
            }
        }
    }
}

/// Loads one file into the executor repository; see [`Executor::load`].
fn load_one(inner: &Inner, src: &Path, f: &File) -> Result<File, ExecutorError> {
    let repo = &inner.repo;
    if !f.is_ref() {
        inner.incr(&f.id);
        let r = (|| {
            if !repo.contains(&f.id) {
                let source = FileRepository::existing(src)?;
                let reader = source.open_object(&f.id)?;
                let got = repo.put(reader)?;
                if got.id != f.id {
                    return Err(ExecutorError::Integrity {
                        mismatches: format!("{} ({}) != {} ({})", f.id, f.size, got.id, got.size),
                    });
                }
            }
            Ok(repo.stat(&f.id)?)
        })();
        if r.is_err() {
            inner.decr(&f.id);
        }
        return r;
    }
    let carry = |mut local: File| {
        local.source = f.source.clone();
        local.etag = f.etag.clone();
        local.last_modified = f.last_modified;
        local
    };
    if !f.content_hash.is_zero() && repo.contains(&f.content_hash) {
        inner.incr(&f.content_hash);
        return Ok(carry(repo.stat(&f.content_hash)?));
    }
    let Some(path) = f
        .source
        .strip_prefix("file://")
        .filter(|p| p.starts_with('/'))
    else {
        return Err(ExecutorError::Unsupported {
            kind: format!(
                "reference source {}",
                f.source.chars().take(200).collect::<String>()
            ),
        });
    };
    let got = repo.put(fs::File::open(path).map_err(io_err("open", Path::new(path)))?)?;
    if got.size != f.size {
        return Err(ExecutorError::Integrity {
            mismatches: format!("size {} (expected) != {} (actual)", f.size, got.size),
        });
    }
    if !f.content_hash.is_zero() && got.id != f.content_hash {
        return Err(ExecutorError::Integrity {
            mismatches: format!(
                "digest {} (expected) != {} (actual)",
                f.content_hash, got.id
            ),
        });
    }
    inner.incr(&got.id);
    Ok(carry(got))
}

/// Scans `execs/` for recovery: each entry's name, id and manifest state, with the manifest
/// itself when it is usable.
fn scan_execs(dir: &Path) -> Result<Vec<(ScannedExec, Option<Manifest>)>, ExecutorError> {
    let mut names = Vec::new();
    for entry in fs::read_dir(dir).map_err(io_err("list", dir))? {
        let entry = entry.map_err(io_err("list", dir))?;
        if entry.file_type().is_ok_and(|t| t.is_dir()) {
            names.push(entry.file_name().to_string_lossy().into_owned());
        }
    }
    // Reading and decoding thousands of manifests is most of a restart: on every core.
    Ok(crate::par::map(
        &names,
        crate::par::default_threads(),
        |name| scan_exec(dir, name.clone()),
    ))
}

/// One entry of `execs/`: see [`scan_execs`].
fn scan_exec(dir: &Path, name: String) -> (ScannedExec, Option<Manifest>) {
    {
        let path = dir.join(&name);
        let id = (name.len() == 64)
            .then(|| Digest::parse(&name).ok())
            .flatten();
        let _ = persist::clean_leftovers(&path);
        let p = path.join(MANIFEST_FILE);
        let (scan, manifest) = match persist::read_json::<Manifest>(&p, MAX_MANIFEST_BYTES) {
            Ok(m) => match m.check_version() {
                Ok(()) if m.exec_type == ExecType::Blob => {
                    (DirScan::BlobManifest(m.state), Some(m))
                }
                Ok(()) => (DirScan::Manifest(m.state), Some(m)),
                Err(e) => (DirScan::Corrupt(e.to_string()), None),
            },
            Err(e) if e.is_not_found() => (DirScan::NoManifest, None),
            Err(e) => {
                let cause = std::error::Error::source(&e)
                    .map(|s| s.to_string())
                    .unwrap_or_default();
                (DirScan::Corrupt(format!("{e}: {cause}")), None)
            }
        };
        (ScannedExec { name, id, scan }, manifest)
    }
}
