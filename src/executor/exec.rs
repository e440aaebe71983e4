//! One Docker exec: its durable manifest, its in-memory status, and its state machine
//! (Init → Created → Running → Complete). Every successful step is persisted before it is
//! published, so a restart resumes from the last durable step.

use std::fs;
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures_util::StreamExt;
use tokio::sync::{OnceCell, watch};
use tokio_util::sync::CancellationToken;

use super::{Inner, lock};
use crate::cgroup::CgroupPaths;
use crate::digest::Digest;
use crate::docker::{ContainerInfo, ContainerSpec, LogStream, RuntimeError};
use crate::error::{Kind, ReflowError};
use crate::fileset::Fileset;
use crate::manifest::{ExecState, MANIFEST_FILE, Manifest};
use crate::model::{ExecConfig, ExecInspect, ExecResult};
use crate::profile::{self, Gauges, Stats};
use crate::relpath;
use crate::repo::{FileRepository, no_progress};
use crate::{persist, time};

/// Exit code an exec uses to ask for a retry (`EX_TEMPFAIL`).
pub const TEMPORARY_EXIT_CODE: i64 = 75;
/// Most log lines kept as hints in a DockerExec error.
pub const MAX_HINT_LINES: usize = 20;
/// Longest hint line kept, in bytes.
pub const MAX_HINT_LINE: usize = 256;
/// Label carrying the exec id on containers.
pub const LABEL_EXEC: &str = "reflow-id";
/// Label carrying the executor id on containers.
pub const LABEL_EXECUTOR: &str = "reflow-executor";

/// The in-memory status: the state reached and, if the state machine failed, why.
#[derive(Debug, Clone, PartialEq)]
pub struct Status {
    /// The state reached.
    pub state: ExecState,
    /// The state machine's error.
    pub err: Option<ReflowError>,
}

/// A Docker exec.
#[derive(Debug)]
pub struct Exec {
    pub(super) id: Digest,
    pub(super) dir: PathBuf,
    host_dir: PathBuf,
    pub(super) container: String,
    pub(super) manifest: Mutex<Manifest>,
    pub(super) status: watch::Sender<Status>,
    pub(super) cancel: CancellationToken,
    pub(super) killed: AtomicBool,
    /// The engine stopped answering while the container ran: a non-zero exit is then the
    /// engine's doing (its shutdown stops containers), not the exec's.
    engine_lost: AtomicBool,
    /// This process made the container (create answered, no conflict) and has not tried to
    /// start it yet: it cannot have run, so the first start needs no check for a container an
    /// earlier incarnation started.
    created_here: AtomicBool,
    /// Put in this process into a new exec directory, and not yet created: no earlier
    /// incarnation of this exec here can own a container of its name, so one that create finds
    /// is stale (left under an alloc directory collected since). It never ran for this put, so
    /// it is replaced, never waited for. A put into an existing directory (a quarantined
    /// manifest) takes a container of its name for its own, as recovery does.
    pub(super) fresh: AtomicBool,
    /// Its container was found gone, or being removed, before it ever started, and was made
    /// again (see `start`); once per exec, so a container that keeps vanishing fails the exec.
    remade: AtomicBool,
    promoted: OnceCell<Result<(), ReflowError>>,
    /// The container watched from before its start, in this process (see `Watching`); taken by
    /// the wait step.
    watching: Mutex<Option<Watching>>,
    /// The exec's `stdout` and `stderr` are written as its container writes (it is watched).
    live_logs: AtomicBool,
    /// Cancelled when no state machine runs for this exec (it ended, or never ran here): after
    /// Complete the state machine still removes the container, off the path to the result.
    pub(super) ended: CancellationToken,
}

fn err(kind: Kind, op: &str, id: &Digest, msg: impl Into<String>) -> ReflowError {
    ReflowError::new(kind, op, msg).with_arg(id)
}

impl Exec {
    pub(super) fn new(
        id: Digest,
        dir: PathBuf,
        host_dir: PathBuf,
        container: String,
        manifest: Manifest,
        status: Status,
        cancel: CancellationToken,
    ) -> Arc<Exec> {
        Arc::new(Exec {
            id,
            dir,
            host_dir,
            container,
            manifest: Mutex::new(manifest),
            status: watch::Sender::new(status),
            cancel,
            killed: AtomicBool::new(false),
            engine_lost: AtomicBool::new(false),
            created_here: AtomicBool::new(false),
            fresh: AtomicBool::new(false),
            remade: AtomicBool::new(false),
            promoted: OnceCell::new(),
            watching: Mutex::new(None),
            live_logs: AtomicBool::new(false),
            ended: CancellationToken::new(),
        })
    }

    /// The exec id.
    pub fn id(&self) -> Digest {
        self.id
    }

    /// The container name.
    pub fn container_name(&self) -> &str {
        &self.container
    }

    /// The exec directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The current status.
    pub fn status(&self) -> Status {
        self.status.borrow().clone()
    }

    /// A copy of the manifest.
    pub fn manifest(&self) -> Manifest {
        lock(&self.manifest).clone()
    }

    /// Waits until the state is at least `min` or the state machine failed.
    ///
    /// # Errors
    /// The state machine's error.
    ///
    /// # Cancel safety
    /// Cancel safe.
    pub async fn wait_until(&self, min: ExecState) -> Result<(), ReflowError> {
        let mut rx = self.status.subscribe();
        let st = rx
            .wait_for(|s| s.state >= min || s.err.is_some())
            .await
            .map(|s| s.clone())
            .map_err(|_| err(Kind::Unavailable, "wait", &self.id, "exec dropped"))?;
        match st.err {
            Some(e) => Err(e),
            None => Ok(()),
        }
    }

    /// Waits until the exec completes (or its state machine fails).
    ///
    /// # Errors
    /// The state machine's error.
    ///
    /// # Cancel safety
    /// Cancel safe.
    pub async fn wait(&self) -> Result<(), ReflowError> {
        self.wait_until(ExecState::Complete).await
    }

    /// The result: the state machine's error, "exec not complete", or the stored result.
    ///
    /// # Errors
    /// As described.
    pub fn result(&self) -> Result<ExecResult, ReflowError> {
        let st = self.status();
        if let Some(e) = st.err {
            return Err(e);
        }
        if st.state != ExecState::Complete {
            return Err(err(
                Kind::Unavailable,
                "result",
                &self.id,
                "exec not complete",
            ));
        }
        Ok(lock(&self.manifest).result.clone())
    }

    /// Reflow's `ExecInspect` for this exec.
    pub fn inspect(&self) -> ExecInspect {
        let m = self.manifest();
        let st = self.status();
        let status = match st.state {
            ExecState::Unstarted | ExecState::Init => "the exec is still initializing",
            ExecState::Created => "the exec container was created",
            ExecState::Running => "the exec container is running",
            ExecState::Complete => "the exec container has completed",
        };
        ExecInspect {
            created: m.created,
            config: m.config.clone(),
            state: st.state.name().to_string(),
            status: status.to_string(),
            error: st.err,
            profile: profile::profile(&m.stats),
            gauges: m.gauges.clone(),
            commands: Vec::new(),
            docker: m.docker.clone(),
            exec_error: m.result.err.clone(),
        }
    }

    /// The saved logs of a completed exec: stdout then stderr, as requested. A running exec
    /// whose container this process started and watches has its logs so far.
    ///
    /// # Errors
    /// NotExist when the exec is neither complete nor running watched here, or a log file is
    /// missing.
    pub fn logs(&self, stdout: bool, stderr: bool) -> Result<Vec<u8>, ReflowError> {
        let state = self.status().state;
        let live = state == ExecState::Running && self.live_logs.load(Ordering::SeqCst);
        if state != ExecState::Complete && !live {
            return Err(err(
                Kind::NotExist,
                "logs",
                &self.id,
                "exec not yet complete",
            ));
        }
        let mut out = Vec::new();
        for (want, name) in [(stdout, "stdout"), (stderr, "stderr")] {
            if want {
                let bytes = fs::read(self.dir.join(name))
                    .map_err(|e| err(Kind::NotExist, "logs", &self.id, format!("{name}: {e}")))?;
                out.extend(bytes);
            }
        }
        Ok(out)
    }

    /// A module error as this exec's wire error for `op`.
    fn classified<E: crate::error::Classify + std::error::Error>(
        &self,
        op: &str,
        e: &E,
    ) -> ReflowError {
        ReflowError::from_classified(op, e).with_arg(self.id)
    }

    fn publish(&self, state: ExecState, e: Option<ReflowError>) {
        self.status.send_replace(Status { state, err: e });
    }

    async fn save(&self) -> Result<(), ReflowError> {
        let m = self.manifest();
        let path = self.dir.join(MANIFEST_FILE);
        let id = self.id;
        tokio::task::spawn_blocking(move || persist::write_json_atomic(&path, &m))
            .await
            .map_err(|e| err(Kind::Fatal, "save manifest", &id, e.to_string()))?
            .map_err(|e| ReflowError::from_classified("save manifest", &e).with_arg(id))
    }

    /// Moves the manifest to state `s` in memory (checking that the move is allowed), without
    /// writing or publishing it.
    fn set_state(&self, s: ExecState) -> Result<(), ReflowError> {
        let mut m = lock(&self.manifest);
        let from = m.state;
        if from != s && !from.can_transition(s) {
            return Err(err(
                Kind::Fatal,
                "transition",
                &self.id,
                format!("{from:?} -> {s:?} is not allowed"),
            ));
        }
        m.state = s;
        Ok(())
    }

    /// Persists the manifest in state `s` (checking that the move is allowed), without
    /// publishing it.
    async fn persist_state(&self, s: ExecState) -> Result<(), ReflowError> {
        self.set_state(s)?;
        self.save().await
    }

    /// Persists the manifest in state `s` and publishes it.
    pub(super) async fn transition(&self, s: ExecState) -> Result<(), ReflowError> {
        self.persist_state(s).await?;
        self.publish(s, None);
        Ok(())
    }

    /// Runs the state machine from `from` to completion, a failure, or cancellation.
    pub(super) async fn run(self: Arc<Self>, inner: Arc<Inner>, from: ExecState) {
        let mut state = from;
        let blob = lock(&self.manifest).exec_type == crate::manifest::ExecType::Blob;
        while state != ExecState::Complete {
            let step = async {
                match (blob, state) {
                    // A blob exec has no container: its transfer is the Running step, redone
                    // from scratch when an agent restarts before it completes.
                    (true, ExecState::Unstarted | ExecState::Init) => Ok(ExecState::Created),
                    (true, ExecState::Created) => Ok(ExecState::Running),
                    (true, ExecState::Running) => self.transfer(&inner).await,
                    (false, ExecState::Unstarted | ExecState::Init) => self.create(&inner).await,
                    (false, ExecState::Created) => self.start(&inner).await,
                    (false, ExecState::Running) => self.wait_exit(&inner).await,
                    (_, ExecState::Complete) => Ok(ExecState::Complete),
                }
            };
            let next = tokio::select! {
                r = step => r,
                () = self.cancel.cancelled() => Err(err(Kind::Canceled, "exec", &self.id, "executor stopped")),
            };
            match next {
                Ok(next) => {
                    // `Created` is kept in memory only: recovery resumes an exec left in `Init`
                    // whose container exists just as it would one left in `Created` (create
                    // answers Conflict, start inspects first), so its fsyncs would buy nothing.
                    let persisted = if next == ExecState::Created && !blob {
                        self.set_state(next)
                    } else {
                        self.persist_state(next).await
                    };
                    if let Err(e) = persisted {
                        if e.kind == Kind::ResourcesExhausted {
                            self.discard_scratch(Some(&inner)).await;
                        }
                        self.publish(state, Some(e));
                        return;
                    }
                    tracing::debug!(exec = %self.id, state = ?next, "Exec state.");
                    self.publish(next, None);
                    if next == ExecState::Complete && !blob {
                        // Durable and told; the container is no longer needed. Removed after
                        // waiters are told (its removal is off the path to the result), before
                        // the state machine ends: whoever reuses the container's name (a re-put,
                        // the executor's kill) waits for that end first. A crash in between
                        // leaves a container that recovery removes.
                        if let Err(e) = inner.runtime.remove(&self.container, false).await {
                            tracing::warn!(exec = %self.id, error = %crate::error::chain(&e), "Removing a completed exec's container failed.");
                        }
                    }
                    state = next;
                }
                Err(e) => {
                    if e.kind == Kind::Unavailable && !blob && self.outage(&inner).await {
                        // The engine went away and came back: redo the step. (Create finds its
                        // container; start inspects first; wait finds the exit code.)
                        if state == ExecState::Running {
                            self.engine_lost.store(true, Ordering::SeqCst);
                        }
                        continue;
                    }
                    if e.kind != Kind::Canceled {
                        tracing::warn!(exec = %self.id, error = %crate::error::chain(&e), "Exec state machine failed.");
                    }
                    self.publish(state, Some(e));
                    return;
                }
            }
        }
    }

    /// After a full disk failed the exec: removes its container and what it wrote (`return/`,
    /// `tmp/`, and the staging `objects/` its outputs were installed into, never promoted),
    /// which is often what filled the disk, so the agent can record outcomes and run
    /// the next job. Without a container, a restart marks the exec lost: never a success
    /// without its outputs.
    async fn discard_scratch(&self, container: Option<&Inner>) {
        tracing::warn!(exec = %self.id, "The disk is full: discarding what the exec wrote.");
        if let Some(inner) = container
            && let Err(e) = inner.runtime.remove(&self.container, true).await
        {
            tracing::warn!(exec = %self.id, error = %crate::error::chain(&e), "Removing the container failed.");
        }
        let dir = self.dir.clone();
        let _ = tokio::task::spawn_blocking(move || {
            for sub in ["return", "tmp", "objects"] {
                let p = dir.join(sub);
                if let Err(e) = fs::remove_dir_all(&p)
                    && e.kind() != std::io::ErrorKind::NotFound
                {
                    tracing::warn!(path = %p.display(), error = %e, "Discarding failed.");
                }
            }
        })
        .await;
    }

    /// After a step failed as unavailable: whether the engine was down and is back. A pinged
    /// engine that answers means the failure was the step's own (false at once). One that does
    /// not is waited for, up to `engine_wait`; false when it stays away or the exec is stopped.
    async fn outage(&self, inner: &Inner) -> bool {
        let ping = || crate::docker::health::answers(inner.runtime.as_ref());
        if ping().await {
            return false;
        }
        let bound = inner.cfg.engine_wait;
        tracing::warn!(exec = %self.id, wait_secs = bound.as_secs(), "The container engine does not answer; the exec waits for it.");
        let deadline = tokio::time::Instant::now() + bound;
        while tokio::time::Instant::now() < deadline {
            tokio::select! {
                () = self.cancel.cancelled() => return false,
                () = tokio::time::sleep(Duration::from_secs(1)) => {}
            }
            if ping().await {
                tracing::info!(exec = %self.id, "The container engine is back; the exec goes on.");
                return true;
            }
        }
        tracing::error!(exec = %self.id, wait_secs = bound.as_secs(), "The container engine stayed away; the exec fails.");
        false
    }

    // === create ===

    /// The exec's config, once its image is present (pulled if need be).
    async fn config_with_image(&self, inner: &Inner) -> Result<ExecConfig, ReflowError> {
        let config = lock(&self.manifest).config.clone();
        inner
            .images
            .ensure(&config.image)
            .await
            .map_err(|e| ReflowError::wrap(format!("ensureimage {}", config.image), e))?;
        Ok(config)
    }

    async fn create(&self, inner: &Inner) -> Result<ExecState, ReflowError> {
        let config = self.config_with_image(inner).await?;
        let spec = {
            let dir = self.dir.clone();
            let repo = inner.repo.clone();
            let cfg = config.clone();
            let id = self.id;
            tokio::task::spawn_blocking(move || prepare_dirs(&dir, &repo, &cfg, &id))
                .await
                .map_err(|e| err(Kind::Fatal, "create", &self.id, e.to_string()))??
        };
        let spec = self.container_spec(inner, &config, spec).await?;
        self.create_container(inner, &config, &spec).await
    }

    /// Asks the engine for the container of `spec` (the exec's directories are prepared).
    async fn create_container(
        &self,
        inner: &Inner,
        config: &ExecConfig,
        spec: &ContainerSpec,
    ) -> Result<ExecState, ReflowError> {
        // No existence check first: a container left by an earlier incarnation (a crash after
        // create, before Created was durable) makes create answer Conflict, which means Created.
        // For a fresh put, Conflict means a stale container, replaced once.
        let mut image_retry = true;
        loop {
            match inner.runtime.create(spec).await {
                Ok(_) => {
                    tracing::debug!(exec = %self.id, "Container created.");
                    self.fresh.store(false, Ordering::SeqCst);
                    self.created_here.store(true, Ordering::SeqCst);
                    return Ok(ExecState::Created);
                }
                Err(crate::docker::RuntimeError::Conflict { .. })
                    if self.fresh.swap(false, Ordering::SeqCst) =>
                {
                    tracing::warn!(exec = %self.id, container = %self.container, "A stale container has this exec's name; replacing it.");
                    inner
                        .runtime
                        .remove(&self.container, true)
                        .await
                        .map_err(|e| self.classified("remove stale container", &e))?;
                }
                Err(crate::docker::RuntimeError::Conflict { .. }) => return Ok(ExecState::Created),
                // The image vanished since it was last seen: check (and pull) again, once.
                Err(crate::docker::RuntimeError::NotFound { .. }) if image_retry => {
                    image_retry = false;
                    inner.images.forget(&config.image);
                    inner.images.ensure(&config.image).await.map_err(|e| {
                        ReflowError::wrap(format!("ensureimage {}", config.image), e)
                    })?;
                }
                Err(e) => return Err(self.classified("create", &e)),
            }
        }
    }

    /// The container for `cfg`. An exec that asks for AWS credentials, on an executor that
    /// grants them but holds none of its own, gets the current ones from the credential source.
    async fn container_spec(
        &self,
        inner: &Inner,
        cfg: &ExecConfig,
        args: Vec<String>,
    ) -> Result<ContainerSpec, ReflowError> {
        let mut policy = std::borrow::Cow::Borrowed(&inner.cfg);
        if cfg.need_aws_creds && inner.cfg.allow_aws_creds && inner.cfg.aws_credentials.is_none() {
            // No source (a build without the AWS SDK) will never have any: that is permanent,
            // unlike a source that has none at the moment.
            let Some(source) = &inner.aws_credentials else {
                return Err(err(
                    Kind::NotSupported,
                    "create",
                    &self.id,
                    "the exec asks for AWS credentials, and this agent has no source of them (a build without the AWS SDK has none)",
                ));
            };
            policy.to_mut().aws_credentials = source.credentials().await;
        }
        super::spec::container_spec(
            &policy,
            &super::spec::Placement {
                exec: &self.id,
                container: &self.container,
                host_dir: &self.host_dir,
            },
            cfg,
            &args,
        )
    }

    // === start ===

    async fn start(&self, inner: &Inner) -> Result<ExecState, ReflowError> {
        // An agent that died after the engine started the container, but before `Running` was
        // persisted, resumes here: a container that has ever started (running, or exited since)
        // is waited for, never started a second time. So does a start tried again after a
        // failure, which the engine may have carried out. Only the first start of a container
        // this process created skips the check (one engine call less per exec).
        let first_of_ours = self.created_here.swap(false, Ordering::SeqCst);
        if !first_of_ours {
            match inner.runtime.inspect(&self.container).await {
                Ok(Some(info)) if info.has_started() => {
                    tracing::warn!(exec = %self.id, status = %info.status, "The container started before the agent stopped; waiting for it instead of starting it again.");
                    let mut m = lock(&self.manifest);
                    m.pid = info.pid;
                    m.docker = info.raw;
                    return Ok(ExecState::Running);
                }
                Ok(found) if vanished(found.as_ref()) => {
                    return self.remake(inner, "gone or being removed").await;
                }
                _ => {}
            }
        }
        // The first start of a container made here is watched from before it (its output and
        // its exit as they happen); any other start is waited for the slow way.
        let watching = if first_of_ours {
            self.watch(inner).await
        } else {
            None
        };
        if let Err(e) = inner.runtime.start(&self.container).await {
            if let Some(w) = watching {
                w.writer.cancel().await;
            }
            // Removed between its create (or inspect) and this start, never having run: the
            // engine says so, and the container is gone or going. Any other refusal is the
            // start's own (an engine message such as "executable file not found" reads as not
            // found too).
            if (e.is_not_found() || e.is_removal_in_progress())
                && inner
                    .runtime
                    .inspect(&self.container)
                    .await
                    .is_ok_and(|found| vanished(found.as_ref()))
            {
                return self.remake(inner, "removed before it started").await;
            }
            return Err(self.classified("start", &e));
        }
        self.live_logs.store(watching.is_some(), Ordering::SeqCst);
        *lock(&self.watching) = watching;
        crate::failpoint::hit("exec.after_start");
        tracing::debug!(exec = %self.id, "Container started.");
        // Its PID is asked for beside the wait (see `wait_exit`).
        Ok(ExecState::Running)
    }

    /// Watches the created container (see [`crate::docker::Watch`]): its output goes to the
    /// exec's `stdout` and `stderr` as the container writes it. `None` when the runtime cannot
    /// or the watch fails; the wait step then waits, inspects and reads the logs.
    async fn watch(&self, inner: &Inner) -> Option<Watching> {
        let w = match inner.runtime.watch(&self.container).await {
            Ok(w) => w?,
            Err(e) => {
                tracing::debug!(exec = %self.id, error = %crate::error::chain(&e), "Watching the container failed; its exit will be waited for.");
                return None;
            }
        };
        let (out, errf) = self.log_files()?;
        Some(Watching {
            created: w.created,
            writer: crate::par::Task::spawn(write_output(w.output, out, errf)),
            exit: w.exit,
        })
    }

    /// Makes the container again after it was found `why` (gone, or being removed) before it
    /// ever started. Its name was taken by a container that another removal was ending, such
    /// as one an agent sent just before it was killed, which the engine carries out anyway:
    /// create then answered Conflict and took that container for this exec's. Nothing of it
    /// ran, so a new one runs the exec once. Waits for the removal to end first; returns
    /// `Created`, whose start comes next. Once per exec: a second time fails the exec.
    ///
    /// The exec's directories are left as they are (their create prepared them): cleaning
    /// `return/` again could only lose what a container of this name wrote, if one ever ran.
    async fn remake(&self, inner: &Inner, why: &str) -> Result<ExecState, ReflowError> {
        if self.remade.swap(true, Ordering::SeqCst) {
            return Err(err(
                Kind::Unavailable,
                "start",
                &self.id,
                format!(
                    "container {} was {why} again before it started",
                    self.container
                ),
            ));
        }
        tracing::warn!(exec = %self.id, container = %self.container, why, "The exec's container vanished before it started; making it again.");
        inner
            .runtime
            .remove(&self.container, true)
            .await
            .map_err(|e| self.classified("remove vanishing container", &e))?;
        let config = self.config_with_image(inner).await?;
        let args = arg_paths(&config, &self.id)?;
        let spec = self.container_spec(inner, &config, args).await?;
        self.create_container(inner, &config, &spec).await
    }

    /// The container's PID, inspected when the manifest has none yet (0 when it has exited or
    /// cannot be inspected), recorded in the manifest and sent to the sampler. Returns what
    /// the inspect found, when it inspected.
    async fn find_pid(
        &self,
        inner: &Inner,
        to: tokio::sync::oneshot::Sender<i64>,
    ) -> Option<ContainerInfo> {
        let known = lock(&self.manifest).pid;
        if known > 0 {
            let _ = to.send(known);
            return None;
        }
        // On its own task, so a watched exec that ends before the engine answers (it answers
        // a short exec's inspect only after its clean-up) leaves the request to finish rather
        // than breaking it off, which dockerd logs as an error.
        let inspect = {
            let (runtime, name) = (inner.runtime.clone(), self.container.clone());
            tokio::spawn(async move { runtime.inspect(&name).await })
        };
        match inspect.await.unwrap_or(Ok(None)) {
            Ok(Some(info)) => {
                {
                    let mut m = lock(&self.manifest);
                    m.pid = info.pid;
                    m.docker = info.raw.clone();
                }
                let _ = to.send(info.pid);
                Some(info)
            }
            Ok(None) | Err(_) => {
                tracing::warn!(exec = %self.id, "Inspecting a started container failed; PID unknown.");
                None
            }
        }
    }

    // === wait ===

    async fn wait_exit(&self, inner: &Inner) -> Result<ExecState, ReflowError> {
        // The wait goes out at once, beside the inspect for the PID (the sampler's cgroup): for a
        // short exec the engine answers both only once the exit is processed, so neither waits
        // for the other, and `Running` was made durable without waiting for the PID.
        let (pid_tx, pid_rx) = tokio::sync::oneshot::channel();
        let sampler = Sampler::spawn(
            self.dir.clone(),
            pid_rx,
            inner.cfg.profile_interval,
            inner.cfg.oom_poll_interval,
            inner.clock.clone(),
        );
        let find_pid = self.find_pid(inner, pid_tx);
        tokio::pin!(find_pid);
        // A container watched from before its start ends with its announced exit and the end of
        // its output, while the PID is asked for.
        let mut seen = None;
        let watching = lock(&self.watching).take();
        let ended = match watching {
            Some(w) => {
                let ended = w.ended(WATCH_GRACE);
                tokio::pin!(ended);
                loop {
                    tokio::select! {
                        e = &mut ended => break e.map_err(|why| {
                            tracing::debug!(exec = %self.id, why, "The watched container gave no exit; waiting for it.");
                        }).ok(),
                        s = &mut find_pid, if seen.is_none() => seen = Some(s),
                    }
                }
            }
            None => None,
        };
        // A clean exit needs nothing more from the engine. Any other is inspected for its
        // evidence (the engine's OOM flag, its times for the kernel log's window).
        let output = match ended {
            Some(e) if e.exit.code == 0 && !e.exit.oom_killed => {
                return self.exited_cleanly(inner, sampler, e, seen.flatten()).await;
            }
            Some(e) => Some(e.output),
            None => None,
        };
        let seen = async {
            match seen {
                Some(s) => s,
                None => find_pid.await,
            }
        };
        let (waited, seen) = tokio::join!(inner.runtime.wait(&self.container), seen);
        let pid = lock(&self.manifest).pid;
        tracing::debug!(exec = %self.id, "Container exited.");
        // Stop at once: the final cgroup reading races the engine removing the cgroup.
        let sampled = sampler.stop().await;
        let code = waited.map_err(|e| self.classified("wait", &e))?;
        // The logs (unless the watch wrote them) and the exit's details, asked of the engine at
        // once. An inspect for the PID that the engine answered once the container had exited
        // (a short exec's) has the exit's details already: the engine records the exit code,
        // the time and the OOM kill in one step.
        let exit_details = async {
            match seen {
                Some(info) if info.has_exited() => Ok(Some(info)),
                _ => inner.runtime.inspect(&self.container).await,
            }
        };
        let logs = async {
            match output {
                Some(files) => Some(sync_logs(files)),
                None => {
                    // The files are written again from the engine's logs: until the exec
                    // completes, `logs` answers as for an exec not watched here rather than
                    // read them half written.
                    self.live_logs.store(false, Ordering::SeqCst);
                    self.save_logs(inner).await
                }
            }
        };
        let (logs_synced, info) = tokio::join!(logs, exit_details);
        tracing::debug!(exec = %self.id, "Container's logs and exit read.");
        let info = info.map_err(|e| self.classified("inspect", &e))?;
        let Some(info) = info else {
            return Err(err(
                Kind::Unavailable,
                "wait",
                &self.id,
                "container disappeared before it could be inspected",
            ));
        };
        {
            let mut m = lock(&self.manifest);
            m.stats = sampled.stats;
            m.gauges = sampled.gauges;
            m.docker = info.raw.clone();
        }
        let code = if code == 0 && info.exit_code != 0 {
            info.exit_code
        } else {
            code
        };
        if info.running || info.finished_at.is_none() {
            return Err(err(
                Kind::Temporary,
                "exec",
                &self.id,
                "container returned in running state; docker daemon likely shutting down",
            ));
        }
        let inputs = crate::oom::OomInputs {
            exit_code: code,
            docker_oom_killed: info.oom_killed,
            cgroup: sampled.cgroup,
            detections: self.detections(inner, &info, pid, code).await,
            golang: self.go_oom_line(),
            node: sampled.node.explain(),
            exit_time: Some(inner.clock.now()),
        };
        self.conclude(code, &inputs, logs_synced).await
    }

    /// A watched container's clean exit (code 0, no OOM kill announced), concluded without
    /// asking the engine: the manifest's Docker JSON is the run's inspect (or the one before
    /// the start, when the PID's inspect had no answer yet) with the exit filled in.
    async fn exited_cleanly(
        &self,
        inner: &Inner,
        sampler: Sampler,
        ended: Ended,
        seen: Option<ContainerInfo>,
    ) -> Result<ExecState, ReflowError> {
        tracing::debug!(exec = %self.id, "Container exited.");
        let sampled = sampler.stop().await;
        let logs_synced = sync_logs(ended.output);
        let mut docker = seen
            .filter(|i| i.id == ended.created.id)
            .unwrap_or(ended.created)
            .raw;
        crate::docker::exited_state(&mut docker, &ended.exit);
        {
            let mut m = lock(&self.manifest);
            m.stats = sampled.stats;
            m.gauges = sampled.gauges;
            m.docker = docker;
        }
        let inputs = crate::oom::OomInputs {
            exit_code: 0,
            docker_oom_killed: false,
            cgroup: sampled.cgroup,
            detections: Vec::new(),
            golang: self.go_oom_line(),
            node: sampled.node.explain(),
            exit_time: Some(inner.clock.now()),
        };
        self.conclude(0, &inputs, Some(logs_synced)).await
    }

    /// Decides the OOM evidence and the result of an exit with `code`, cleans the exec's
    /// scratch directories, and waits until its logs are durable.
    async fn conclude(
        &self,
        code: i64,
        inputs: &crate::oom::OomInputs,
        logs_synced: Option<tokio::task::JoinHandle<()>>,
    ) -> Result<ExecState, ReflowError> {
        let evidence = crate::oom::decide(inputs);
        if let Some(ev) = &evidence {
            tracing::warn!(exec = %self.id, exit_code = code, source = %ev.source, detail = %ev.detail, "OOM evidence.");
        }
        lock(&self.manifest).oom = evidence.clone();
        let result = self.classify(code, evidence).await?;
        lock(&self.manifest).result = result;
        for sub in ["arg", "tmp"] {
            if let Err(e) = fs::remove_dir_all(self.dir.join(sub)) {
                tracing::debug!(exec = %self.id, error = %crate::error::chain(&e), dir = sub, "Cleaning an exec directory failed.");
            }
        }
        // The logs are durable before the manifest that says the exec is complete.
        if let Some(synced) = logs_synced {
            let _ = synced.await;
        }
        Ok(ExecState::Complete)
    }

    /// Detections for this container in its run window from the configured detectors, asked
    /// only for abnormal exits.
    async fn detections(
        &self,
        inner: &Inner,
        info: &ContainerInfo,
        pid: i64,
        code: i64,
    ) -> Vec<crate::oom::Detection> {
        if code == 0 && !info.oom_killed {
            return Vec::new();
        }
        let target = crate::oom::OomTarget {
            pid,
            container_id: info.id.clone(),
            cgroup: None,
        };
        // A second of slack on both sides: the engine's clock and the kernel's differ a little.
        let slack = chrono::Duration::seconds(1);
        let end = inner.clock.now() + slack;
        let start = info
            .started_at
            .map(|t| t - slack)
            .unwrap_or_else(time::zero);
        let mut out = Vec::new();
        for d in &inner.oom_detectors {
            out.extend(d.oom(&target, start, end).await);
        }
        out
    }

    async fn classify(
        &self,
        code: i64,
        oom: Option<crate::oom::OomEvidence>,
    ) -> Result<ExecResult, ReflowError> {
        let e = |kind, msg: String| Some(err(kind, "exec", &self.id, msg));
        let killed = self.killed.load(Ordering::SeqCst);
        if !killed && code != 0 && self.engine_lost.load(Ordering::SeqCst) {
            return Ok(ExecResult {
                fileset: Fileset::default(),
                err: Some(err(
                    Kind::Unavailable,
                    "exec",
                    &self.id,
                    format!(
                        "the container engine went away while the exec ran and its container ended with exit code {code}: stopped by the engine, not a failure of the exec"
                    ),
                )),
            });
        }
        if !killed && let Some(free) = free_bytes(&self.dir).filter(|f| *f < MIN_FREE_AFTER_EXEC) {
            // The disk under the exec's directory is full. Whatever the exit code, a write of the
            // exec most likely failed (a truncated output, or the very reason it exited), and the
            // agent could not record the result anyway. Reported as the full disk it is, and what
            // the exec wrote is discarded so the agent can go on.
            self.discard_scratch(None).await;
            return Ok(ExecResult {
                fileset: Fileset::default(),
                err: Some(err(
                    Kind::ResourcesExhausted,
                    "exec",
                    &self.id,
                    format!(
                        "No space left on device: {free} bytes free under {} when the exec exited (exit code {code}); its outputs may be truncated and were discarded",
                        self.dir.display()
                    ),
                )),
            });
        }
        let err = if code == 0 && !killed {
            // A process of the exec may have been OOM-killed while the exec still succeeded by its
            // own account; the evidence stays in the manifest.
            let dir = self.dir.clone();
            let id = self.id;
            let cfg = lock(&self.manifest).config.clone();
            let fileset = tokio::task::spawn_blocking(move || collect_outputs(&dir, &cfg, &id))
                .await
                .map_err(|e| err(Kind::Fatal, "install", &self.id, e.to_string()))??;
            return Ok(ExecResult { fileset, err: None });
        } else if killed {
            e(
                Kind::Canceled,
                format!("killed by the agent (exit code {code})"),
            )
        } else if code == TEMPORARY_EXIT_CODE {
            e(
                Kind::Temporary,
                format!("exec returned exit code {TEMPORARY_EXIT_CODE} (considered temporary)"),
            )
        } else if let Some(ev) = oom {
            e(
                Kind::Oom,
                format!("killed by OOM killer ({}): {}", ev.source, ev.detail),
            )
        } else {
            let hints = self.hints();
            let mut msg = format!("exited with code {code}");
            if !hints.is_empty() {
                msg.push_str(" (hints from exec logs):\n");
                msg.push_str(&hints);
            }
            e(Kind::DockerExec, msg)
        };
        Ok(ExecResult {
            fileset: Fileset::default(),
            err,
        })
    }

    /// Writes the container's logs to `stdout` and `stderr` in the exec's directory; the
    /// returned task fsyncs them, so the outputs are installed meanwhile.
    async fn save_logs(&self, inner: &Inner) -> Option<tokio::task::JoinHandle<()>> {
        let (out, errf) = self.log_files()?;
        match write_output(inner.runtime.logs(&self.container), out, errf).await {
            Ok(files) => Some(sync_logs(files)),
            Err(why) => {
                tracing::warn!(exec = %self.id, why, "Saving exec logs failed.");
                None
            }
        }
    }

    /// The exec's `stdout` and `stderr` files, made empty.
    fn log_files(&self) -> Option<(fs::File, fs::File)> {
        let open = |name: &str| fs::File::create(self.dir.join(name));
        match (open("stdout"), open("stderr")) {
            (Ok(o), Ok(e)) => Some((o, e)),
            _ => {
                tracing::warn!(exec = %self.id, "Creating log files failed.");
                None
            }
        }
    }

    fn log_lines(&self, name: &str) -> impl Iterator<Item = String> {
        fs::File::open(self.dir.join(name))
            .map(|f| {
                BufReader::new(f)
                    .split(b'\n')
                    .map_while(Result::ok)
                    .map(|l| String::from_utf8_lossy(&l).into_owned())
            })
            .into_iter()
            .flatten()
    }

    /// The first Go runtime out-of-memory line in the saved logs.
    fn go_oom_line(&self) -> Option<String> {
        ["stdout", "stderr"].iter().find_map(|n| {
            self.log_lines(n)
                .find(|l| {
                    l.contains("runtime: out of memory")
                        || l.contains("runtime: cannot allocate memory")
                })
                .map(|l| l.chars().take(MAX_HINT_LINE).collect())
        })
    }

    /// Up to [`MAX_HINT_LINES`] log lines that look like errors, each cut to [`MAX_HINT_LINE`].
    fn hints(&self) -> String {
        let mut out = String::new();
        let mut n = 0;
        for name in ["stderr", "stdout"] {
            for (i, line) in self.log_lines(name).enumerate() {
                if n >= MAX_HINT_LINES {
                    return out;
                }
                if ["panic", "error", "Error", "ERROR"]
                    .iter()
                    .any(|k| line.contains(k))
                {
                    let cut: String = line.chars().take(MAX_HINT_LINE).collect();
                    out.push_str(&format!("({name}) line {}: {cut}\n", i + 1));
                    n += 1;
                }
            }
        }
        out
    }

    /// Promotes the result's objects from the staging repository into the executor's, once.
    ///
    /// # Errors
    /// The result's error, or a repository error (memoized).
    pub(super) async fn promote(&self, inner: &Arc<Inner>) -> Result<(), ReflowError> {
        self.promoted
            .get_or_init(|| async {
                let result = self.result()?;
                if let Some(e) = result.err {
                    return Err(e);
                }
                let staging = self.dir.join("objects");
                let inner = inner.clone();
                let id = self.id;
                tokio::task::spawn_blocking(move || {
                    inner.promote_blocking(&result.fileset, &staging, &id)
                })
                .await
                .map_err(|e| err(Kind::Fatal, "promote", &id, e.to_string()))?
            })
            .await
            .clone()
    }
}

impl Exec {
    /// The transfer of an intern or extern exec; its failure is the exec's result, and a partial
    /// result never survives it.
    async fn transfer(&self, inner: &Arc<Inner>) -> Result<ExecState, ReflowError> {
        let cfg = lock(&self.manifest).config.clone();
        let op = cfg.kind.clone();
        let progress = crate::blob::Progress::default();
        let work = async {
            match inner.blob.clone() {
                None => Err(err(
                    Kind::NotSupported,
                    &op,
                    &self.id,
                    "no blob store is configured",
                )),
                Some(store) => match cfg.kind.as_str() {
                    crate::model::TYPE_INTERN => {
                        self.intern(store.as_ref(), &cfg, inner, &progress).await
                    }
                    _ => self.extern_(store.as_ref(), &cfg, inner, &progress).await,
                },
            }
        };
        tokio::pin!(work);
        // Inspect shows the bytes moved so far as the `disk` gauge (Reflow's blob-exec gauge).
        let gauge = |p: &crate::blob::Progress| {
            let bytes = p.load(Ordering::Relaxed) as f64;
            lock(&self.manifest).gauges.insert("disk".into(), bytes);
        };
        let r = loop {
            tokio::select! {
                r = &mut work => break r,
                () = tokio::time::sleep(Duration::from_millis(250)) => gauge(&progress),
            }
        };
        gauge(&progress);
        let result = match r {
            Ok(fileset) => ExecResult { fileset, err: None },
            Err(e) => {
                if e.kind == Kind::Integrity {
                    inner.signal_integrity(e.to_string());
                }
                let mut e = e;
                e.op = op.clone();
                e.arg = vec![cfg.url.clone()];
                ExecResult {
                    fileset: Default::default(),
                    err: Some(e),
                }
            }
        };
        lock(&self.manifest).result = result;
        Ok(ExecState::Complete)
    }

    /// Downloads `cfg.url` (one key, or every key under a `/` prefix) into the exec's staging
    /// repository; objects whose `Content-Sha256` the executor already holds are reused.
    async fn intern(
        &self,
        store: &dyn crate::blob::BlobStore,
        cfg: &ExecConfig,
        inner: &Arc<Inner>,
        progress: &crate::blob::Progress,
    ) -> Result<Fileset, ReflowError> {
        use crate::blob::transfer;
        let rerr = |e: crate::blob::BlobError| ReflowError::from_classified("intern", &e);
        let url = crate::blob::BlobUrl::parse(&cfg.url).map_err(rerr)?;
        let staging = crate::repo::FileRepository::open(self.dir.join("objects"))
            .map_err(|e| ReflowError::from_classified("intern", &e))?;
        let infos = transfer::objects(store, &url, transfer::Listing::WithDigests)
            .await
            .map_err(rerr)?;
        let held = |d: &Digest| -> Result<Option<crate::fileset::File>, crate::blob::BlobError> {
            if !inner.repo.contains(d) {
                return Ok(None);
            }
            inner
                .repo
                .stat(d)
                .map(Some)
                .map_err(|e| crate::blob::BlobError::Io {
                    op: "stat",
                    path: inner.repo.path(d),
                    source: std::io::Error::other(crate::error::chain(&e).to_string()),
                })
        };
        let files = transfer::fetch_all_into(
            store,
            &url,
            infos,
            &staging,
            transfer::CONCURRENCY,
            held,
            progress,
        )
        .await
        .map_err(rerr)?;
        Ok(Fileset::from_map(files.into_iter().collect()))
    }

    /// Uploads the exec's one input fileset under `cfg.url` (path `.` is the URL itself), each
    /// object streamed from the executor repository with its `Content-Sha256`.
    async fn extern_(
        &self,
        store: &dyn crate::blob::BlobStore,
        cfg: &ExecConfig,
        inner: &Arc<Inner>,
        progress: &crate::blob::Progress,
    ) -> Result<Fileset, ReflowError> {
        use crate::blob::transfer;
        let rerr = |e: crate::blob::BlobError| ReflowError::from_classified("extern", &e);
        let url = crate::blob::BlobUrl::parse(&cfg.url).map_err(rerr)?;
        let input = cfg
            .args
            .first()
            .and_then(|a| a.fileset.clone())
            .unwrap_or_default()
            .pullup();
        let files = input
            .map
            .iter()
            .map(|(path, f)| (transfer::key_of(&url, path), f.clone()));
        transfer::upload_from_repo(
            store,
            &url.bucket,
            &inner.repo,
            files,
            transfer::Existing::Replace,
            progress,
        )
        .await
        .map_err(rerr)?;
        Ok(input)
    }
}

/// Cleans and lays out the exec directory, materializes the inputs, and returns the argument
/// strings for the command template.
/// A container watched from before its start (see [`crate::docker::Watch`]).
struct Watching {
    /// The container as inspected before its start.
    created: ContainerInfo,
    /// Writes its output to the exec's `stdout` and `stderr` as it comes.
    writer: crate::par::Task<Result<(fs::File, fs::File), String>>,
    /// Its end, as the engine announces it.
    exit: futures_util::future::BoxFuture<'static, Result<crate::docker::Exit, RuntimeError>>,
}

impl std::fmt::Debug for Watching {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Watching")
            .field("created", &self.created.id)
            .finish_non_exhaustive()
    }
}

/// A watched container's end: its exit, and its whole output written.
#[derive(Debug)]
struct Ended {
    created: ContainerInfo,
    exit: crate::docker::Exit,
    output: (fs::File, fs::File),
}

/// How long a watched container's exit is awaited once its output ended, or its output once
/// it exited, before it is waited for the slow way. A process may close its output and run on;
/// the output ends with the process otherwise, a moment before the engine announces the exit.
const WATCH_GRACE: Duration = Duration::from_secs(5);

impl Watching {
    /// The exit and the end of the output, the second awaited for up to `grace` after the
    /// first, or why not (the slow way then takes over; the writer has stopped when this
    /// returns).
    async fn ended(self, grace: Duration) -> Result<Ended, String> {
        let Watching {
            created,
            mut writer,
            mut exit,
        } = self;
        let announced = |e: Result<crate::docker::Exit, RuntimeError>| {
            e.map_err(|e| crate::error::chain(&e).to_string())
        };
        let written = |w: Option<Result<(fs::File, fs::File), String>>| {
            w.unwrap_or_else(|| Err("the output's writer stopped".to_string()))
        };
        let both = async {
            tokio::select! {
                w = &mut writer => {
                    let output = written(w)?;
                    let exit = tokio::time::timeout(grace, &mut exit)
                        .await
                        .map_err(|_| "no exit announced after the output ended".to_string())?;
                    Ok((announced(exit)?, output))
                }
                e = &mut exit => {
                    let exit = announced(e)?;
                    let output = tokio::time::timeout(grace, &mut writer)
                        .await
                        .map_err(|_| "the output did not end after the exit".to_string())?;
                    Ok((exit, written(output)?))
                }
            }
        };
        match both.await {
            Ok((exit, output)) => Ok(Ended {
                created,
                exit,
                output,
            }),
            Err(why) => {
                writer.cancel().await;
                Err(why)
            }
        }
    }
}

/// Writes a container's output to the exec's `stdout` and `stderr` files as it comes; returns
/// the files at its end.
async fn write_output(
    mut stream: futures_util::stream::BoxStream<
        'static,
        Result<crate::docker::LogChunk, RuntimeError>,
    >,
    mut out: fs::File,
    mut errf: fs::File,
) -> Result<(fs::File, fs::File), String> {
    while let Some(chunk) = stream.next().await {
        let c = chunk.map_err(|e| format!("reading: {}", crate::error::chain(&e)))?;
        let f = if c.stream == LogStream::Stdout {
            &mut out
        } else {
            &mut errf
        };
        f.write_all(&c.bytes)
            .map_err(|e| format!("writing: {}", crate::error::chain(&e)))?;
    }
    Ok((out, errf))
}

/// A task that makes the log files durable.
fn sync_logs((out, errf): (fs::File, fs::File)) -> tokio::task::JoinHandle<()> {
    tokio::task::spawn_blocking(move || {
        let _ = out.sync_all();
        let _ = errf.sync_all();
    })
}

fn prepare_dirs(
    dir: &Path,
    repo: &FileRepository,
    cfg: &ExecConfig,
    id: &Digest,
) -> Result<Vec<String>, ReflowError> {
    let io = |op: &str, p: &Path, e: std::io::Error| {
        ReflowError::new(
            crate::error::io_kind(&e),
            op,
            format!("{}: {e}", p.display()),
        )
        .with_arg(id)
    };
    for sub in ["arg", "tmp", "return"] {
        let p = dir.join(sub);
        match fs::remove_dir_all(&p) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(io("clean", &p, e)),
        }
        fs::create_dir_all(&p).map_err(|e| io("create", &p, e))?;
    }
    for (i, is_dir) in cfg.output_is_dir.iter().enumerate() {
        if *is_dir {
            let p = dir.join("return").join(i.to_string());
            fs::create_dir_all(&p).map_err(|e| io("create", &p, e))?;
        }
    }
    let args = arg_paths(cfg, id)?;
    for (i, arg) in cfg.args.iter().enumerate() {
        let Some(fs_) = arg.fileset.as_ref().filter(|_| !arg.out) else {
            continue;
        };
        for (j, elem) in fs_.flatten().into_iter().enumerate() {
            let base = dir.join("arg").join(i.to_string()).join(j.to_string());
            for (key, file) in &elem.map {
                let dst = relpath::join(&base, key)
                    .map_err(|e| ReflowError::from_classified("create", &e).with_arg(id))?;
                if file.is_ref() {
                    return Err(ReflowError::new(
                        Kind::Invalid,
                        "create",
                        format!("argument {i}: unresolved file {key}; load it first"),
                    )
                    .with_arg(id));
                }
                repo.link_out(&file.id, &dst)
                    .map_err(|e| ReflowError::from_classified("materialize", &e).with_arg(id))?;
            }
        }
    }
    Ok(args)
}

/// Whether an inspect found an exec's container gone, or being removed without ever having
/// started: nothing of it ran, so it may be made again (see `Exec::remake`).
fn vanished(found: Option<&ContainerInfo>) -> bool {
    found.is_none_or(|info| info.is_removing() && !info.has_started())
}

/// The container paths of an exec's arguments, as `prepare_dirs` lays them out: an output is
/// `/return/<index>`, an input the space-separated `/arg/<i>/<j>` of its fileset's elements.
fn arg_paths(cfg: &ExecConfig, id: &Digest) -> Result<Vec<String>, ReflowError> {
    let mut args = Vec::with_capacity(cfg.args.len());
    for (i, arg) in cfg.args.iter().enumerate() {
        if arg.out {
            args.push(format!("/return/{}", arg.index));
            continue;
        }
        let Some(fs_) = &arg.fileset else {
            return Err(ReflowError::new(
                Kind::Invalid,
                "create",
                format!("argument {i} has no fileset"),
            )
            .with_arg(id));
        };
        let paths: Vec<String> = (0..fs_.flatten().len())
            .map(|j| format!("/arg/{i}/{j}"))
            .collect();
        args.push(paths.join(" "));
    }
    Ok(args)
}

/// Below this many free bytes under an exec's directory when it exits, the exec is taken to have
/// hit a full disk (see `classify`).
const MIN_FREE_AFTER_EXEC: u64 = 1 << 20;

/// Bytes available to the agent on the filesystem of `dir`.
fn free_bytes(dir: &Path) -> Option<u64> {
    let s = rustix::fs::statvfs(dir).ok()?;
    s.f_bavail.checked_mul(s.f_frsize)
}

/// Installs the exec's outputs into its staging repository (originals become digest symlinks).
fn collect_outputs(dir: &Path, cfg: &ExecConfig, id: &Digest) -> Result<Fileset, ReflowError> {
    let staging = FileRepository::open(dir.join("objects"))
        .map_err(|e| ReflowError::from_classified("install", &e).with_arg(id))?;
    let install = |p: PathBuf| {
        staging
            .install_tree(&p, true, &no_progress)
            .map_err(|e| ReflowError::from_classified("install", &e).with_arg(id))
    };
    let ret = dir.join("return");
    if cfg.output_is_dir.is_empty() {
        install(ret.join("default"))
    } else {
        let list = (0..cfg.output_is_dir.len())
            .map(|i| install(ret.join(i.to_string())))
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Fileset::from_list(list))
    }
}

/// Polls an exec's resource use while it runs: `disk` and `tmp` from the exec directory, `mem`
/// and `cpu` from the container's cgroup files.
///
/// Polling the kernel's cgroup files costs dockerd nothing. A streaming `docker stats` per
/// container does not: measured here (dockerd 20.10, 2 cores), 20 running containers cost
/// dockerd 0 CPU ticks in 10 s when idle and 16 ticks (1.6% of a core, ~0.08% per container)
/// with one stats stream each, on the engine that is already the bottleneck for short execs
/// (bench/RESULTS.md). So profiles come from polling cgroups.
struct Sampler {
    stop: CancellationToken,
    /// Stops the polling task when the sampler is dropped without `stop` (the wait step was
    /// cancelled by an agent shutdown).
    _guard: tokio_util::sync::DropGuard,
    handle: tokio::task::JoinHandle<Sampled>,
}

/// What a [`Sampler`] saw over an exec's run.
#[derive(Debug, Default)]
struct Sampled {
    stats: Stats,
    gauges: Gauges,
    cgroup: crate::oom::CgroupMemory,
    node: crate::oom::node::NodeWindow,
}

impl Sampled {
    fn observe(&mut self, now: time::Time, name: &str, v: f64) {
        profile::observe(&mut self.stats, now, name, v);
        self.gauges.insert(name.to_string(), v);
    }

    /// Records a [`disk_use`] reading.
    fn record_disk(&mut self, now: time::Time, (disk, tmp): (u64, u64)) {
        self.observe(now, "disk", disk as f64);
        self.observe(now, "tmp", tmp as f64);
    }
}

/// Bytes under an exec's `return/` (metric `disk`) and `tmp/` (metric `tmp`).
fn disk_use(dir: &Path) -> (u64, u64) {
    (
        crate::repo::tree_bytes(&dir.join("return")),
        crate::repo::tree_bytes(&dir.join("tmp")),
    )
}

impl Sampler {
    /// Polls every `counters` the cgroup's memory and OOM counters and the node's memory (cheap
    /// file reads), and every `every` the exec directory's disk use. The cgroup is the one of
    /// the PID `pid` sends, from when it comes (none when it never does).
    fn spawn(
        dir: PathBuf,
        pid: tokio::sync::oneshot::Receiver<i64>,
        every: Duration,
        counters: Duration,
        clock: Arc<dyn crate::clock::Clock>,
    ) -> Sampler {
        let stop = CancellationToken::new();
        let token = stop.clone();
        let handle = tokio::spawn(async move {
            let mut s = Sampled::default();
            let mut pid = Some(pid);
            let mut cg: Option<CgroupPaths> = None;
            let mut last_cpu: Option<(u64, tokio::time::Instant)> = None;
            let mut last_disk: Option<tokio::time::Instant> = None;
            loop {
                let now = clock.now();
                let at = tokio::time::Instant::now();
                if last_disk.is_none_or(|t| at.duration_since(t) >= every) {
                    let d = dir.clone();
                    let disk = tokio::task::spawn_blocking(move || disk_use(&d))
                        .await
                        .unwrap_or((0, 0));
                    s.record_disk(now, disk);
                    last_disk = Some(at);
                }
                s.node.observe(crate::oom::node::NodeSnapshot::read());
                if let Some(cg) = &cg {
                    if let Some(c) = cg.memory_counters() {
                        s.cgroup.merge(c);
                    }
                    if let Some(mem) = cg.memory_usage() {
                        s.observe(now, "mem", mem as f64);
                    }
                    if let Some(ns) = cg.cpu_usage_ns() {
                        if let Some((prev, then)) = last_cpu {
                            let secs = at.duration_since(then).as_secs_f64();
                            if secs > 0.0 && ns >= prev {
                                s.observe(now, "cpu", (ns - prev) as f64 / 1e9 / secs);
                            }
                        }
                        last_cpu = Some((ns, at));
                    }
                }
                let pending = async {
                    match pid.as_mut() {
                        Some(rx) => rx.await.ok(),
                        None => std::future::pending().await,
                    }
                };
                tokio::select! {
                    () = token.cancelled() => break,
                    () = tokio::time::sleep(counters.min(every)) => {}
                    got = pending => {
                        // Read at once: a short exec's cgroup goes with its exit.
                        pid = None;
                        cg = got.and_then(CgroupPaths::resolve);
                    }
                }
            }
            // Final readings at stop: the cgroup may still be there, and every exec gets at
            // least one disk sample.
            if let Some(c) = cg.as_ref().and_then(CgroupPaths::memory_counters) {
                s.cgroup.merge(c);
            }
            s.node.observe(crate::oom::node::NodeSnapshot::read());
            s.record_disk(clock.now(), disk_use(&dir));
            s
        });
        let _guard = stop.clone().drop_guard();
        Sampler {
            stop,
            _guard,
            handle,
        }
    }

    async fn stop(self) -> Sampled {
        self.stop.cancel();
        self.handle.await.unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::docker::{Exit, LogChunk};
    use futures_util::FutureExt;

    /// A watch whose output is `chunks` (then ends when `output_ends`, else stays open) and
    /// whose `exit` is announced after its delay, or never (`None`).
    fn watching(
        dir: &Path,
        chunks: Vec<LogChunk>,
        output_ends: bool,
        exit: Option<(Duration, Result<Exit, RuntimeError>)>,
    ) -> Watching {
        let open = |n: &str| fs::File::create(dir.join(n)).unwrap();
        let mut output = futures_util::stream::iter(chunks.into_iter().map(Ok)).boxed();
        if !output_ends {
            output = output.chain(futures_util::stream::pending()).boxed();
        }
        let exit = match exit {
            Some((after, e)) => async move {
                tokio::time::sleep(after).await;
                e
            }
            .boxed(),
            None => futures_util::future::pending().boxed(),
        };
        Watching {
            created: ContainerInfo {
                id: "c".into(),
                running: false,
                status: "created".into(),
                exit_code: 0,
                oom_killed: false,
                pid: 0,
                started_at: None,
                finished_at: None,
                raw: serde_json::Value::Null,
            },
            writer: crate::par::Task::spawn(write_output(output, open("stdout"), open("stderr"))),
            exit,
        }
    }

    fn chunk(stream: LogStream, s: &str) -> LogChunk {
        LogChunk {
            stream,
            bytes: s.as_bytes().to_vec(),
        }
    }

    fn exit(code: i64) -> Result<Exit, RuntimeError> {
        Ok(Exit {
            code,
            oom_killed: false,
            started_at: None,
            finished_at: None,
        })
    }

    const GRACE: Duration = Duration::from_millis(200);

    #[tokio::test]
    async fn a_watch_ends_with_the_exit_and_the_whole_output_in_either_order() {
        let dir = tempfile::tempdir().unwrap();
        let out = vec![
            chunk(LogStream::Stdout, "a"),
            chunk(LogStream::Stderr, "b"),
            chunk(LogStream::Stdout, "c"),
        ];
        // The output ends first (as on dockerd), then the exit is announced.
        let w = watching(
            dir.path(),
            out.clone(),
            true,
            Some((Duration::from_millis(20), exit(3))),
        );
        let e = w.ended(GRACE).await.unwrap();
        assert_eq!(e.exit.code, 3);
        assert_eq!(fs::read(dir.path().join("stdout")).unwrap(), b"ac");
        assert_eq!(fs::read(dir.path().join("stderr")).unwrap(), b"b");
        // The exit first: the output is still read to its end.
        let w = watching(dir.path(), out, true, Some((Duration::ZERO, exit(0))));
        let e = w.ended(GRACE).await.unwrap();
        assert_eq!(e.exit.code, 0);
        assert_eq!(fs::read(dir.path().join("stdout")).unwrap(), b"ac");
    }

    #[tokio::test]
    async fn a_watch_without_both_ends_gives_way_to_the_wait() {
        let dir = tempfile::tempdir().unwrap();
        // Output closed, the process runs on: no exit within the grace.
        let w = watching(dir.path(), vec![chunk(LogStream::Stdout, "x")], true, None);
        let why = w.ended(GRACE).await.unwrap_err();
        assert!(why.contains("no exit announced"), "{why}");
        // Exited, but the output never ends: the writer is stopped before this returns.
        let w = watching(
            dir.path(),
            Vec::new(),
            false,
            Some((Duration::ZERO, exit(0))),
        );
        let why = w.ended(GRACE).await.unwrap_err();
        assert!(why.contains("did not end"), "{why}");
        // The engine's event stream broke.
        let broken = Err(RuntimeError::Engine {
            op: "events",
            target: "c".into(),
            status: 0,
            message: "event stream ended before the container did".into(),
        });
        let w = watching(
            dir.path(),
            Vec::new(),
            false,
            Some((Duration::ZERO, broken)),
        );
        let why = w.ended(GRACE).await.unwrap_err();
        assert!(why.contains("event stream ended"), "{why}");
    }
}
