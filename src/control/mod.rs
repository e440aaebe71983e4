//! The control plane: commands from a queue ([`crate::queue`]) become pool and executor calls,
//! and their outcomes become events. docs/protocol.md is the contract; this module keeps its
//! promises:
//!
//! - **Held until done.** A job's delivery is acked only once its outcome is fsynced and published; until then
//!   it is held (its lease kept by a lease keeper), so a machine that dies returns it to the queue.
//!   A request is acked once its result (and, if it changes state, its journal entry) is
//!   durable.
//! - **Idempotent.** The command id is the key. A redelivered job finds its journal entry and
//!   never starts a second container: a running one gets the delivery attached, a finished one
//!   replays its stored outcome. Allocs of a job are named after its command id, and execs after
//!   their config, so even a crash between two steps resumes rather than repeats.
//! - **Published once.** Events go to a durable outbox first and leave it only when the broker
//!   confirmed them; their ids are deterministic, so replays can be dropped by consumers.
//! - **Poison never blocks.** Undecodable, invalid, unsigned, disallowed or over-the-limit
//!   commands are dead-lettered with a reason and a `command.rejected` event.
//! - **Drain.** On shutdown: stop consuming, hand back every command not started, give running
//!   jobs a grace period, and leave the rest running (the journal resumes them at the next start).

pub mod journal;
pub mod security;

use std::collections::{HashMap, HashSet};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{Mutex, Notify, OwnedSemaphorePermit, Semaphore};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::Instrument;

use crate::clock::Clock;
use crate::digest::Digest;
use crate::error::{Classify, Kind, ReflowError};
use crate::manifest::ExecState;
use crate::model::ExecResult;
use crate::pool::{AllocMeta, Pool};
use crate::protocol::{
    Command, Event, EventBody, JobSpec, PROTOCOL_VERSION, ProtocolError, Request, decode_command,
    event_id,
};
use crate::queue::{CommandSource, Delivery, EventSink, Settle};
use crate::repo::FileRepository;
use crate::taskdb::claims::Claim;
use journal::{
    Entry, JOURNAL_VERSION, Journal, JournalError, Outbox, Phase, Results, StoredResult,
};

/// How long a finished job keeps its run slot while its outcome cannot be written (a full or
/// failing disk) before the command is handed back unsettled.
pub const OUTCOME_PATIENCE: Duration = Duration::from_secs(60);

/// How the control plane behaves.
#[derive(Debug, Clone)]
pub struct ControlConfig {
    /// The agent's id, in every event (the pool id).
    pub agent_id: String,
    /// Where the journal, outbox and stored results live (the agent's state directory).
    pub state_dir: PathBuf,
    /// The agent's own repository URL (`file:///...`): the default for a job's inputs and outputs.
    pub repository: String,
    /// Most jobs running at once.
    pub max_jobs: usize,
    /// Most commands received and not yet started (jobs waiting for a slot, requests in progress).
    pub prefetch: usize,
    /// A command delivered more often than this is dead-lettered.
    pub max_deliveries: u32,
    /// How long running jobs may take to finish at shutdown.
    pub drain_grace: Duration,
    /// Heartbeat period.
    pub heartbeat: Duration,
    /// Lease (SQS visibility) granted per extension while a job runs.
    pub lease: Duration,
    /// The longest a job may run, counted from its acceptance (`queue.max_job_secs`).
    pub max_job: Duration,
    /// The fleet's claim store ([`crate::taskdb::claims`]); `None`: claims are per agent only
    /// (its journal).
    pub claims: Option<Arc<dyn crate::taskdb::claims::ClaimStore>>,
    /// Attempts of a job step failing with a retryable error.
    pub job_attempts: u32,
    /// First retry delay (doubled each attempt).
    pub retry_base: Duration,
    /// Admission policy.
    pub security: security::Policy,
    /// Metrics the control plane counts into.
    pub metrics: Arc<crate::admin::Metrics>,
    /// systemd notifications (READY, STATUS, STOPPING).
    pub notifier: crate::notify::Notifier,
    /// The blob store for `s3://` repositories (absent: only `file://`).
    pub blob: Option<Arc<dyn crate::blob::BlobStore>>,
    /// Done journal entries, stored results and spool events older than this are pruned while
    /// the agent runs; `None` keeps them forever.
    pub retention: Option<Duration>,
    /// The container engine's health: while it does not answer, no new command is taken and
    /// jobs not started yet are handed back.
    pub engine: crate::docker::health::EngineHealth,
}

/// Why the control plane could not start.
#[derive(Debug, thiserror::Error)]
pub enum ControlError {
    /// The journal, outbox or results store could not be opened.
    #[error("control-plane state")]
    State(#[from] JournalError),
    /// The agent's repository could not be opened.
    #[error("agent repository")]
    Repo(#[from] crate::repo::RepoError),
}

impl Classify for ControlError {
    fn kind(&self) -> Kind {
        match self {
            ControlError::State(e) => e.kind(),
            ControlError::Repo(e) => e.kind(),
        }
    }
}

/// The control plane of one agent.
#[derive(Debug, Clone)]
pub struct Control {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    cfg: ControlConfig,
    pool: Pool,
    clock: Arc<dyn Clock>,
    journal: Journal,
    outbox: Outbox,
    results: Results,
    sink: Arc<dyn EventSink>,
    outbox_wake: Notify,
    /// Jobs claimed by this process (waiting for a slot or room, or running), with every
    /// delivery of each: all are held (their leases kept) until the job's outcome is durable,
    /// then acked together, or handed back together.
    active: Mutex<HashMap<String, Vec<Box<dyn Settle>>>>,
    run_slots: Arc<Semaphore>,
    intake: Arc<Semaphore>,
    tasks: TaskTracker,
    draining: CancellationToken,
    reported: std::sync::Mutex<HashSet<String>>,
    /// Running jobs' allocs and execs by command id, for [`lease_loop`]'s health check.
    running: std::sync::Mutex<HashMap<String, (String, Digest)>>,
    /// Command ids this agent holds a fleet claim on (renewed by [`lease_loop`]).
    claimed: std::sync::Mutex<HashSet<String>>,
    /// Bumped by the publisher each time it removes published events from the outbox.
    published: tokio::sync::watch::Sender<u64>,
    /// This start of the agent (random), which tells its lifecycle events from other starts'.
    incarnation: String,
}

/// A random name for this start of the agent: 16 hex characters from the OS's CSPRNG (the
/// clock, should that fail: two starts in the same nanosecond are not a concern then).
fn incarnation(clock: &dyn Clock) -> String {
    let mut b = [0u8; 8];
    match getrandom::fill(&mut b) {
        Ok(()) => hex::encode(b),
        Err(_) => format!(
            "{:016x}",
            clock.now().timestamp_nanos_opt().unwrap_or_default()
        ),
    }
}

/// The deterministic alloc id of the job with command id `command_id`.
pub fn job_alloc_id(command_id: &str) -> String {
    Digest::of(format!("job-alloc\0{command_id}").as_bytes()).hex()[..16].to_string()
}

/// The exec id of a job: the digest of its ExecConfig's JSON, so identical execs share it.
pub fn job_exec_id(spec: &JobSpec) -> Digest {
    Digest::of(&serde_json::to_vec(&spec.config).unwrap_or_default())
}

/// The command id in `bytes`, if it can be read at all (for rejections).
fn guess_id(bytes: &[u8]) -> Option<String> {
    let v: serde_json::Value = serde_json::from_slice(bytes).ok()?;
    let id = v.get("id")?.as_str()?;
    (id.len() <= crate::protocol::MAX_ID_LEN).then(|| id.to_string())
}

/// Why a command was rejected after it decoded.
#[derive(Debug, thiserror::Error)]
enum Rejection {
    #[error(transparent)]
    Protocol(#[from] ProtocolError),
    #[error(transparent)]
    Security(#[from] security::SecurityError),
    #[error("delivered {attempt} times, more than the limit of {limit}")]
    DeliveryLimit { attempt: u32, limit: u32 },
    #[error("timeout_secs {asked} is outside 1..={max}, this agent's limit (queue.max_job_secs)")]
    JobTooLong { asked: u64, max: u64 },
}

impl Classify for Rejection {
    fn kind(&self) -> Kind {
        match self {
            Rejection::Protocol(e) => e.kind(),
            Rejection::Security(e) => e.kind(),
            Rejection::DeliveryLimit { .. } => Kind::TooManyTries,
            Rejection::JobTooLong { .. } => Kind::Invalid,
        }
    }
}

fn rerr<E: Classify + std::error::Error>(op: &str, e: &E) -> ReflowError {
    ReflowError::from_classified(op, e)
}

impl Control {
    /// Opens the control plane's state under `cfg.state_dir`.
    ///
    /// # Errors
    /// The state directories cannot be created.
    pub fn new(
        cfg: ControlConfig,
        pool: Pool,
        clock: Arc<dyn Clock>,
        sink: Arc<dyn EventSink>,
    ) -> Result<Control, ControlError> {
        let journal = Journal::open(&cfg.state_dir)?;
        let outbox = Outbox::open(&cfg.state_dir, clock.now())?;
        let results = Results::open(&cfg.state_dir)?;
        let incarnation = incarnation(clock.as_ref());
        if let Some(p) = cfg.repository.strip_prefix("file://") {
            FileRepository::open(p)?;
        }
        Ok(Control {
            inner: Arc::new(Inner {
                run_slots: Arc::new(Semaphore::new(cfg.max_jobs.max(1))),
                intake: Arc::new(Semaphore::new(cfg.prefetch.max(1))),
                cfg,
                pool,
                clock,
                journal,
                outbox,
                results,
                sink,
                outbox_wake: Notify::new(),
                active: Mutex::new(HashMap::new()),
                tasks: TaskTracker::new(),
                draining: CancellationToken::new(),
                reported: std::sync::Mutex::new(HashSet::new()),
                claimed: std::sync::Mutex::new(HashSet::new()),
                running: std::sync::Mutex::new(HashMap::new()),
                published: tokio::sync::watch::Sender::new(0),
                incarnation,
            }),
        })
    }

    /// Cancelled once the control plane drains.
    pub fn draining(&self) -> CancellationToken {
        self.inner.draining.clone()
    }

    /// Runs until `shutdown` fires (or the source closes), then drains; see the module docs.
    ///
    /// # Cancel safety
    /// Not cancel safe: drive it to completion and stop it with `shutdown`.
    pub async fn run(&self, mut source: Box<dyn CommandSource>, shutdown: CancellationToken) {
        let inner = &self.inner;
        let publisher_stop = CancellationToken::new();
        let publisher = tokio::spawn(publish_loop(inner.clone(), publisher_stop.clone()));
        inner.resume(source.as_ref()).await;
        let started = inner.lifecycle_event(EventBody::AgentStarted {
            resources: inner.pool.resources(),
        });
        inner.emit(&[started]);
        let heartbeat = tokio::spawn(heartbeat_loop(inner.clone(), shutdown.clone()));
        let pruner = tokio::spawn(prune_loop(inner.clone()));
        let keeper = tokio::spawn(lease_loop(inner.clone()));
        inner.cfg.notifier.notify("READY=1");
        loop {
            let intake = tokio::select! {
                () = shutdown.cancelled() => break,
                p = inner.intake.clone().acquire_owned() => match p {
                    Ok(p) => p,
                    Err(_) => break,
                },
            };
            if !inner.cfg.engine.is_up() {
                // Paused: nothing more is received until the engine answers again. What was
                // received and not started is handed back (`start_job`).
                tokio::select! {
                    () = shutdown.cancelled() => break,
                    () = inner.cfg.engine.until_up() => {}
                }
            }
            let room = 1 + inner.intake.available_permits();
            let next = tokio::select! {
                () = shutdown.cancelled() => break,
                n = source.next(room) => n,
            };
            match next {
                Ok(Some(d)) => {
                    let inner = inner.clone();
                    inner
                        .tasks
                        .clone()
                        .spawn(async move { inner.handle(d, intake).await });
                }
                Ok(None) => break,
                Err(e) => {
                    tracing::warn!(error = %crate::error::chain(&e), "Receiving commands failed; retrying.");
                    tokio::select! {
                        () = shutdown.cancelled() => break,
                        () = tokio::time::sleep(Duration::from_secs(1)) => {}
                    }
                }
            }
        }
        // Drain.
        tracing::info!(grace_secs = inner.cfg.drain_grace.as_secs(), "Draining.");
        inner.cfg.notifier.notify("STOPPING=1");
        let draining = inner.lifecycle_event(EventBody::AgentDraining {});
        inner.emit(&[draining]);
        inner.draining.cancel();
        source.close().await;
        inner.tasks.close();
        if tokio::time::timeout(inner.cfg.drain_grace, inner.tasks.wait())
            .await
            .is_err()
        {
            let left: Vec<String> = inner.active.lock().await.keys().cloned().collect();
            tracing::warn!(jobs = ?left, "Drain grace period over; these jobs keep running and are resumed at the next start.");
        }
        heartbeat.abort();
        pruner.abort();
        keeper.abort();
        let stopped = inner.lifecycle_event(EventBody::AgentStopped {});
        inner.emit(&[stopped]);
        // Give the publisher a moment to empty the outbox; what is left goes at the next start.
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        while tokio::time::Instant::now() < deadline
            && inner
                .outbox
                .pending()
                .map(|p| !p.is_empty())
                .unwrap_or(false)
        {
            inner.outbox_wake.notify_one();
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        publisher_stop.cancel();
        let _ = publisher.await;
    }
}

/// Keeps the lease of every delivery this process holds (waiting or running), every third of
/// the lease: a held message never reappears for another agent while this one has it.
async fn lease_loop(inner: Arc<Inner>) {
    loop {
        tokio::time::sleep(inner.cfg.lease / 3).await;
        let hung = inner.hanging_jobs().await;
        let leases: Vec<(String, Arc<dyn crate::queue::Lease>)> = inner
            .active
            .lock()
            .await
            .iter()
            .filter(|(id, _)| !hung.contains(*id))
            .flat_map(|(id, held)| held.iter().filter_map(|s| Some((id.clone(), s.keeper()?))))
            .collect();
        let lease = inner.cfg.lease;
        futures_util::future::join_all(leases.into_iter().map(|(id, l)| async move {
            if let Err(e) = l.extend(lease).await {
                tracing::warn!(command_id = %id, error = %crate::error::chain(&e), "Extending a lease failed.");
            }
        }))
        .await;
        if let Some(store) = &inner.cfg.claims {
            let ids: Vec<String> = lock(&inner.claimed)
                .iter()
                .filter(|id| !hung.contains(*id))
                .cloned()
                .collect();
            let until = inner.clock.now() + chrono::Duration::from_std(lease).unwrap_or_default();
            for id in ids {
                match store.renew(&id, &inner.cfg.agent_id, until).await {
                    Ok(true) => {}
                    Ok(false) => {
                        tracing::warn!(command_id = %id, "This agent's claim on a running job expired and another agent took it over; the job may run twice.");
                        lock(&inner.claimed).remove(&id);
                    }
                    Err(e) => {
                        tracing::warn!(command_id = %id, error = %crate::error::chain(&e), "Renewing a claim failed.");
                    }
                }
            }
        }
    }
}

/// A poisoned lock's data is still consistent here (sets of ids): take it.
fn lock<T>(m: &std::sync::Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// What the fleet's claim store says about starting a job here.
enum FleetClaim {
    /// Start it (claimed, or no claim store, or the store does not answer).
    Start,
    /// Another agent finished it: settle this delivery without running.
    DoneElsewhere,
    /// A drain began while waiting for another agent's claim: hand the job back.
    Drain,
}

/// Prunes done journal entries, stored results and spool events older than the retention: a
/// minute after the start, then every tenth of the retention (at most hourly). Only file ages
/// are read, in a blocking task.
async fn prune_loop(inner: Arc<Inner>) {
    let Some(retention) = inner.cfg.retention else {
        return;
    };
    let every = (retention / 10).clamp(Duration::from_secs(1), Duration::from_secs(3600));
    tokio::time::sleep(every.min(Duration::from_secs(60))).await;
    loop {
        let (journal, results, sink) = (
            inner.journal.clone(),
            inner.results.clone(),
            inner.sink.clone(),
        );
        let before = std::time::SystemTime::from(inner.clock.now()) - retention;
        let pruned = tokio::task::spawn_blocking(move || {
            (
                journal.prune(before),
                results.prune(before),
                sink.prune(before),
            )
        })
        .await;
        match pruned {
            Ok((j, r, s)) => {
                let (j, r, s) = (
                    j.unwrap_or_else(|e| warn_zero("journal", &e)),
                    r.unwrap_or_else(|e| warn_zero("results", &e)),
                    s.unwrap_or_else(|e| warn_zero("spool events", &e)),
                );
                if j + r + s > 0 {
                    tracing::info!(
                        journal = j,
                        results = r,
                        events = s,
                        retention_secs = retention.as_secs(),
                        "Pruned state older than the retention."
                    );
                }
            }
            Err(e) => {
                tracing::warn!(error = %crate::error::chain(&e), "Pruning stopped unexpectedly.")
            }
        }
        tokio::time::sleep(every).await;
    }
}

fn warn_zero(what: &str, e: &dyn std::error::Error) -> usize {
    tracing::warn!(what, error = %crate::error::chain(&e), "Pruning failed; trying again later.");
    0
}

/// Publishes the outbox in order until `stop`, retrying with backoff while the broker is away.
async fn publish_loop(inner: Arc<Inner>, stop: CancellationToken) {
    let mut backoff = Duration::from_millis(100);
    loop {
        let mut failed = false;
        match inner.outbox.pending() {
            Ok(pending) => {
                for (name, event) in pending {
                    // A publish still under way at stop is dropped: the event stays in the
                    // outbox and goes out at the next start (consumers dedupe by event id).
                    let published = tokio::select! {
                        () = stop.cancelled() => return,
                        r = inner.sink.publish(&event) => r,
                    };
                    match published {
                        Ok(()) => {
                            if let Err(e) = inner.outbox.remove(&name) {
                                tracing::warn!(error = %crate::error::chain(&e), "Removing a published event failed.");
                            }
                            inner.published.send_modify(|n| *n += 1);
                            backoff = Duration::from_millis(100);
                        }
                        Err(e) => {
                            tracing::warn!(error = %crate::error::chain(&e), event = %event.id, kind = event.body.kind(), "Publishing failed; retrying.");
                            failed = true;
                            break;
                        }
                    }
                }
            }
            Err(e) => {
                tracing::warn!(error = %crate::error::chain(&e), "Reading the outbox failed.");
                failed = true;
            }
        }
        let wait = if failed {
            backoff = (backoff * 2).min(Duration::from_secs(10));
            backoff
        } else {
            Duration::from_secs(5)
        };
        tokio::select! {
            () = stop.cancelled() => return,
            () = inner.outbox_wake.notified() => {}
            () = tokio::time::sleep(wait) => {}
        }
    }
}

/// Publishes heartbeats, and alloc-expiry and integrity events as they are noticed.
async fn heartbeat_loop(inner: Arc<Inner>, stop: CancellationToken) {
    let mut n = 0u64;
    loop {
        let free = inner.pool.available().await;
        let allocs = inner.pool.allocs().await;
        let now = inner.clock.now();
        let mut running = 0u64;
        let mut events = Vec::new();
        for a in &allocs {
            running += a
                .executor()
                .execs()
                .iter()
                .filter(|e| e.status().state < ExecState::Complete)
                .count() as u64;
            if a.expires() < now && inner.first_report(&format!("expired {}", a.id())) {
                let mut e =
                    inner.agent_event(&format!("expired {}", a.id()), EventBody::AllocExpired {});
                e.alloc = Some(a.id().to_string());
                events.push(e);
            }
            let sig = a.executor().integrity_signal().borrow().clone();
            if sig.count > 0 && inner.first_report(&format!("integrity {} {}", a.id(), sig.count)) {
                inner.cfg.metrics.integrity_error();
                let mut e = inner.agent_event(
                    &format!("integrity {} {}", a.id(), sig.count),
                    EventBody::IntegrityError { detail: sig.last },
                );
                e.alloc = Some(a.id().to_string());
                events.push(e);
            }
        }
        let mut hb = inner.agent_event(
            &format!("heartbeat {n}"),
            EventBody::AgentHeartbeat {
                free,
                running_execs: running,
            },
        );
        // Heartbeats are unique per run (they carry the time), so their ids are too.
        inner.cfg.notifier.notify(&format!(
            "STATUS=consuming; {} allocs, {running} execs running",
            allocs.len()
        ));
        hb.id = event_id(
            &format!("{} {}", inner.cfg.agent_id, crate::time::format(&now)),
            "agent.heartbeat",
            n,
        );
        events.push(hb);
        inner.emit(&events);
        n += 1;
        tokio::select! {
            () = stop.cancelled() => return,
            () = tokio::time::sleep(inner.cfg.heartbeat) => {}
        }
    }
}

impl Inner {
    /// Running jobs whose exec is hanging (the executor's check: its container running with no
    /// processes). Their leases and claims are not extended: the message reappears for another
    /// agent instead of being held by a job that makes no progress.
    async fn hanging_jobs(&self) -> HashSet<String> {
        let running: Vec<(String, (String, Digest))> = lock(&self.running)
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        let mut hung = HashSet::new();
        for (command, (alloc, exec)) in running {
            if let Ok(a) = self.pool.alloc(&alloc).await
                && a.executor().is_hanging(&exec).await
            {
                tracing::warn!(command_id = %command, exec = %exec, "The job's exec is hanging: its lease is no longer extended.");
                hung.insert(command);
            }
        }
        hung
    }

    fn first_report(&self, what: &str) -> bool {
        self.reported
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(what.to_string())
    }

    /// An event caused by the agent itself (`cause` names the occasion, for its id).
    fn agent_event(&self, cause: &str, body: EventBody) -> Event {
        Event {
            v: PROTOCOL_VERSION,
            id: event_id(
                &format!("agent {} {cause}", self.cfg.agent_id),
                body.kind(),
                0,
            ),
            agent: self.cfg.agent_id.clone(),
            alloc: None,
            exec: None,
            correlation_id: None,
            command: None,
            time: self.clock.now(),
            body,
            labels: Default::default(),
        }
    }

    /// A lifecycle event (`agent.started`, `agent.draining`, `agent.stopped`): one per start of
    /// the agent.
    fn lifecycle_event(&self, body: EventBody) -> Event {
        let cause = format!("{} {}", body.kind(), self.incarnation);
        self.agent_event(&cause, body)
    }

    /// An event caused by command `req` (the `seq`th of its kind).
    fn command_event(&self, req: &Request, seq: u64, body: EventBody) -> Event {
        Event {
            v: PROTOCOL_VERSION,
            id: event_id(&req.id, body.kind(), seq),
            agent: self.cfg.agent_id.clone(),
            alloc: None,
            exec: None,
            correlation_id: req.correlation_id.clone(),
            command: Some(req.id.clone()),
            time: self.clock.now(),
            body,
            labels: Default::default(),
        }
    }

    /// A job's `exec.state` event, with the exec's manifest; its id is one per state.
    fn exec_state_event(
        &self,
        req: &Request,
        exec: &crate::executor::Exec,
        alloc: &str,
        state: &str,
    ) -> Event {
        let mut e = self.command_event(
            req,
            0,
            EventBody::ExecState {
                state: state.into(),
                error: None,
                manifest: Some(Box::new(exec.manifest())),
            },
        );
        e.id = event_id(&req.id, "exec.state", state);
        e.exec = Some(exec.id());
        e.alloc = Some(alloc.to_string());
        e
    }

    /// Puts events in the outbox (durably) and wakes the publisher. A failing outbox write is
    /// logged: these are agent events, not command outcomes.
    fn emit(&self, events: &[Event]) {
        if let Err(e) = self.outbox.add(events) {
            tracing::error!(error = %crate::error::chain(&e), "Writing events to the outbox failed.");
        }
        self.outbox_wake.notify_one();
    }

    /// Like [`Inner::emit`], for outcomes: the caller must not settle when this fails.
    fn emit_durable(&self, events: &[Event]) -> Result<(), JournalError> {
        self.outbox.add(events)?;
        self.outbox_wake.notify_one();
        Ok(())
    }

    async fn settle_later(&self, settle: Box<dyn Settle>, f: SettleAction) {
        let r = match f {
            SettleAction::Ack(_) => settle.ack().await,
            SettleAction::Requeue => settle.requeue().await,
        };
        if let (Ok(()), SettleAction::Ack(kind)) = (&r, f) {
            self.cfg.metrics.acked(kind);
        }
        if let Err(e) = r {
            tracing::warn!(error = %crate::error::chain(&e), "Settling a command failed; the broker will redeliver it and the journal dedupes it.");
        }
    }

    /// Rejects a command: a `command.rejected` event, then the dead-letter queue.
    async fn reject<E: Classify + std::error::Error>(
        &self,
        settle: Box<dyn Settle>,
        command_id: Option<String>,
        err: &E,
    ) {
        let e = rerr("decode", err);
        tracing::warn!(command_id = command_id.as_deref().unwrap_or("?"), reason = %e, "Rejecting a command.");
        let cause = command_id.clone().unwrap_or_else(|| {
            format!(
                "unreadable {}",
                self.clock.now().timestamp_nanos_opt().unwrap_or(0)
            )
        });
        let mut ev = Event {
            v: PROTOCOL_VERSION,
            id: event_id(&cause, "command.rejected", 0),
            agent: self.cfg.agent_id.clone(),
            alloc: None,
            exec: None,
            correlation_id: None,
            command: command_id.clone(),
            time: self.clock.now(),
            body: EventBody::CommandRejected {
                command_id,
                error: e.clone(),
            },
            labels: Default::default(),
        };
        ev.labels.insert("reason".into(), e.to_string());
        if let Err(err) = self.emit_durable(&[ev]) {
            tracing::error!(error = %crate::error::chain(&err), "Could not record the rejection; handing the command back.");
            return self.settle_later(settle, SettleAction::Requeue).await;
        }
        match settle.dead_letter(&e.to_string()).await {
            Ok(()) => self.cfg.metrics.rejected(e.kind, true),
            Err(err) => {
                self.cfg.metrics.rejected(e.kind, false);
                tracing::warn!(error = %crate::error::chain(&err), "Dead-lettering failed; the broker will redeliver it.");
            }
        }
    }

    /// Resumes the jobs the journal says this agent owns.
    async fn resume(self: &Arc<Self>, source: &dyn CommandSource) {
        let entries = match self.journal.unfinished() {
            Ok(v) => v,
            Err(e) => {
                tracing::error!(error = %crate::error::chain(&e), "Reading the journal failed; nothing resumed.");
                return;
            }
        };
        for entry in entries {
            let req = match serde_json::to_vec(&entry.command)
                .ok()
                .and_then(|b| decode_command(&b).ok())
            {
                Some(r) => r,
                None => {
                    tracing::error!(command_id = %entry.command_id, "A journaled command no longer decodes; marking it done.");
                    let mut e = entry;
                    e.phase = Phase::Done;
                    let _ = self.journal.put(&e);
                    continue;
                }
            };
            let Command::Job(spec) = req.command.clone() else {
                continue;
            };
            let settle = match &entry.lease {
                Some(l) => source.reown(l).await,
                None => None,
            };
            tracing::info!(command_id = %entry.command_id, reowned = settle.is_some(), "Resuming a job accepted before a restart.");
            self.reclaim(&entry.command_id).await;
            // A restored alloc starts expired; kept alive now, before any new command is taken,
            // so a new job's admission cannot reclaim it (and kill its container) first.
            if let Some(a) = &entry.alloc
                && let Err(e) = self.pool.keepalive(a, chrono::Duration::seconds(120)).await
            {
                tracing::debug!(alloc = %a, error = %crate::error::chain(&e), "Keeping a resumed job's alloc alive.");
            }
            self.active
                .lock()
                .await
                .insert(entry.command_id.clone(), settle.into_iter().collect());
            let slot = self.run_slots.clone().acquire_owned().await.ok();
            let inner = self.clone();
            self.tasks.spawn(async move {
                inner.run_job(req, *spec, entry, slot).await;
            });
        }
    }

    async fn handle(self: Arc<Self>, d: Delivery, intake: OwnedSemaphorePermit) {
        let Delivery {
            body,
            attempt,
            settle,
            ..
        } = d;
        let req = match decode_command(&body) {
            Ok(r) => r,
            Err(e) => {
                self.cfg.metrics.received("undecodable", attempt > 1);
                return self
                    .reject(settle, guess_id(&body), &Rejection::from(e))
                    .await;
            }
        };
        self.cfg.metrics.received(req.command.kind(), attempt > 1);
        if let Some(t) = req.time {
            let lag = self.clock.now() - t;
            self.cfg.metrics.lag(lag.num_milliseconds() as f64 / 1000.0);
        }
        let span = tracing::info_span!("command", command_id = %req.id, kind = req.command.kind(), attempt);
        async move {
            if let Err(e) = self
                .cfg
                .security
                .admit(&body, &req.command)
                .and_then(|()| self.cfg.security.admit_time(req.time, self.clock.now()))
            {
                return self.reject(settle, Some(req.id.clone()), &Rejection::from(e)).await;
            }
            if let Command::Job(spec) = &req.command
                && let Some(asked) = spec.timeout_secs
                && (asked == 0 || asked > self.cfg.max_job.as_secs())
            {
                let e = Rejection::JobTooLong { asked, max: self.cfg.max_job.as_secs() };
                return self.reject(settle, Some(req.id.clone()), &e).await;
            }
            match self.journal.get(&req.id) {
                Err(e) => {
                    tracing::warn!(error = %crate::error::chain(&e), "Reading the journal failed; handing the command back.");
                    tokio::time::sleep(Duration::from_secs(1)).await;
                    return self.settle_later(settle, SettleAction::Requeue).await;
                }
                Ok(Some(entry)) if entry.phase == Phase::Done => {
                    tracing::info!("Duplicate of a finished command: replaying its outcome.");
                    if let Err(e) = self.emit_durable(&entry.outcome) {
                        tracing::warn!(error = %crate::error::chain(&e), "Replaying an outcome failed; handing the command back.");
                        return self.settle_later(settle, SettleAction::Requeue).await;
                    }
                    if !self.until_published(&entry.outcome).await {
                        tracing::warn!("The replayed outcome was not published in time; handing the command back.");
                        return self.settle_later(settle, SettleAction::Requeue).await;
                    }
                    return self.settle_later(settle, SettleAction::Ack(req.command.kind())).await;
                }
                Ok(found) => {
                    // The delivery count is the poison rule for what this agent has not taken
                    // on. A command its journal holds came back because the agent stopped or
                    // lost its connection while holding it, not because it harms the agent: it
                    // is resumed or attached, however often that happened.
                    if found.is_none() && attempt > self.cfg.max_deliveries {
                        let e = Rejection::DeliveryLimit { attempt, limit: self.cfg.max_deliveries };
                        return self.reject(settle, Some(req.id.clone()), &e).await;
                    }
                    let Command::Job(spec) = req.command.clone() else {
                        return self.request(req, settle).await;
                    };
                    let lease = settle.lease();
                    // One claim per command id in this process, taken before anything is
                    // awaited: a second delivery arriving while the first still waits for room
                    // (not journaled yet) is attached to it, never started beside it.
                    if !self.claim(&req, settle).await {
                        return;
                    }
                    match found {
                        Some(entry) => {
                            tracing::info!("Resuming a job accepted before, with this delivery.");
                            self.start_job(req, *spec, entry, intake).await
                        }
                        None => self.accept_job(req, *spec, &body, lease, intake).await,
                    }
                }
            }
        }
        .instrument(span)
        .await
    }

    /// Claims command `req` for this process and holds `settle` with it: true when nobody runs
    /// it here yet (the caller starts it), false when it is running or starting here (the
    /// delivery was attached to it and is settled with it).
    async fn claim(&self, req: &Request, settle: Box<dyn Settle>) -> bool {
        let mut active = self.active.lock().await;
        if let Some(held) = active.get_mut(&req.id) {
            tracing::info!("Duplicate of a running job: attached, no second container.");
            held.push(settle);
            return false;
        }
        active.insert(req.id.clone(), vec![settle]);
        true
    }

    /// Hands a claimed job back before it was journaled: every delivery held for it goes back
    /// to the broker, and the claim is released.
    async fn hand_back(&self, req: &Request) {
        self.release_claim(&req.id).await;
        let held = self.active.lock().await.remove(&req.id).unwrap_or_default();
        for s in held {
            self.settle_later(s, SettleAction::Requeue).await;
        }
    }

    /// Claims command `req` in the fleet's claim store before its container is created. While
    /// another agent holds a live claim, waits (keeping the delivery, whose lease
    /// [`lease_loop`] keeps) until that claim is done or expired. A store that does not answer
    /// does not stop the job: it starts, as it would without a store.
    async fn fleet_claim(&self, req: &Request) -> FleetClaim {
        let Some(store) = &self.cfg.claims else {
            return FleetClaim::Start;
        };
        let me = &self.cfg.agent_id;
        let lease = chrono::Duration::from_std(self.cfg.lease).unwrap_or_default();
        let mut told = false;
        loop {
            let now = self.clock.now();
            match store.claim(&req.id, me, now, now + lease).await {
                Ok(Claim::Ours) => {
                    lock(&self.claimed).insert(req.id.clone());
                    if told {
                        tracing::info!(
                            "The other agent's claim ended; this agent takes the job over."
                        );
                    }
                    return FleetClaim::Start;
                }
                Ok(Claim::Done { owner }) => {
                    tracing::info!(owner = %owner, "Another agent finished this job: settling the duplicate without running it.");
                    return FleetClaim::DoneElsewhere;
                }
                Ok(Claim::Held { owner, until }) => {
                    if !told {
                        tracing::info!(owner = %owner, until = %crate::time::format(&until), "Another agent holds a live claim on this job: waiting for it to finish or lapse, without starting it.");
                        told = true;
                    }
                }
                Err(e) => {
                    tracing::warn!(error = %crate::error::chain(&e), "The claim store did not answer; starting the job without a fleet-wide claim.");
                    return FleetClaim::Start;
                }
            }
            tokio::select! {
                () = self.draining.cancelled() => return FleetClaim::Drain,
                () = tokio::time::sleep((self.cfg.lease / 3).min(Duration::from_secs(5))) => {}
            }
        }
    }

    /// Takes the fleet claim of a job resumed after a restart back (it is still this agent's
    /// unless it lapsed while the agent was down and another agent took the job over).
    async fn reclaim(&self, command_id: &str) {
        let Some(store) = &self.cfg.claims else {
            return;
        };
        let now = self.clock.now();
        let until = now + chrono::Duration::from_std(self.cfg.lease).unwrap_or_default();
        match store
            .claim(command_id, &self.cfg.agent_id, now, until)
            .await
        {
            Ok(Claim::Ours) => {
                lock(&self.claimed).insert(command_id.to_string());
            }
            Ok(other) => {
                tracing::warn!(command_id, claim = ?other, "The claim on a resumed job lapsed while this agent was down and another agent holds it; the job may run twice.");
            }
            Err(e) => {
                tracing::warn!(command_id, error = %crate::error::chain(&e), "The claim store did not answer; resuming without a fleet-wide claim.");
            }
        }
    }

    /// Gives up this agent's fleet claim on `command_id` (handed back unstarted).
    async fn release_claim(&self, command_id: &str) {
        if let Some(store) = &self.cfg.claims
            && lock(&self.claimed).remove(command_id)
            && let Err(e) = store.release(command_id, &self.cfg.agent_id).await
        {
            tracing::warn!(command_id, error = %crate::error::chain(&e), "Releasing a claim failed; it lapses with its lease.");
        }
    }

    /// Marks this agent's fleet claim on `command_id` done (its outcome is published).
    async fn finish_claim(&self, command_id: &str) {
        if let Some(store) = &self.cfg.claims
            && lock(&self.claimed).remove(command_id)
        {
            let keep = self
                .cfg
                .retention
                .unwrap_or(Duration::from_secs(7 * 24 * 3600));
            let expires = self.clock.now() + chrono::Duration::from_std(keep).unwrap_or_default();
            if let Err(e) = store.done(command_id, &self.cfg.agent_id, expires).await {
                tracing::warn!(command_id, error = %crate::error::chain(&e), "Marking a claim done failed; it lapses with its lease.");
            }
        }
    }

    /// Waits until `events` have left the outbox (the broker confirmed them), up to
    /// [`OUTCOME_PATIENCE`]; false when they have not by then.
    async fn until_published(&self, events: &[Event]) -> bool {
        let mut changed = self.published.subscribe();
        let deadline = tokio::time::Instant::now() + OUTCOME_PATIENCE;
        loop {
            let waiting = match self.outbox.pending() {
                Ok(p) => p.iter().any(|(_, e)| events.iter().any(|o| o.id == e.id)),
                Err(_) => true,
            };
            if !waiting {
                return true;
            }
            self.outbox_wake.notify_one();
            tokio::select! {
                () = tokio::time::sleep_until(deadline) => return false,
                _ = changed.changed() => {}
                () = tokio::time::sleep(Duration::from_secs(1)) => {}
            }
        }
    }

    /// Answers a request command with a `command.result` (plus any side events), journaling the
    /// outcome of commands that change state, and acks it.
    async fn request(&self, req: Request, settle: Box<dyn Settle>) {
        let (value, extra) = self.execute(&req).await;
        let (value, error) = match value {
            Ok(v) => (v, None),
            Err(e) => {
                tracing::info!(error = %crate::error::chain(&e), "Command failed.");
                (serde_json::Value::Null, Some(e))
            }
        };
        if error.as_ref().is_some_and(|e| e.kind.is_retryable()) && !self.draining.is_cancelled() {
            // Transient: hand it back (after a pause) for this or another agent.
            tokio::time::sleep(self.cfg.retry_base).await;
            return self.settle_later(settle, SettleAction::Requeue).await;
        }
        let mut reply = self.command_event(
            &req,
            0,
            EventBody::CommandResult {
                command_id: req.id.clone(),
                value,
                error,
            },
        );
        if let Some(r) = &req.reply_to {
            reply.labels.insert("reply_to".into(), r.clone());
        }
        let mut events = extra;
        events.push(reply);
        for e in &mut events {
            if e.alloc.is_none() {
                e.alloc = command_alloc(&req.command);
            }
        }
        if let Err(e) = self.emit_durable(&events) {
            tracing::warn!(error = %crate::error::chain(&e), "Recording the outcome failed; handing the command back.");
            return self.settle_later(settle, SettleAction::Requeue).await;
        }
        if changes_state(&req.command) {
            let entry = Entry {
                v: JOURNAL_VERSION,
                command_id: req.id.clone(),
                kind: req.command.kind().into(),
                phase: Phase::Done,
                command: serde_json::Value::Null,
                alloc: command_alloc(&req.command),
                exec: None,
                lease: None,
                outcome: events,
                accepted: self.clock.now(),
            };
            if let Err(e) = self.journal.put(&entry) {
                tracing::warn!(error = %crate::error::chain(&e), "Journaling the outcome failed; a redelivery runs it again.");
            }
        }
        self.settle_later(settle, SettleAction::Ack(req.command.kind()))
            .await;
    }

    /// Runs a request command: its reply value, and events it causes besides the reply.
    async fn execute(&self, req: &Request) -> (Result<serde_json::Value, ReflowError>, Vec<Event>) {
        let mut extra = Vec::new();
        let op = req.command.kind();
        let pool = &self.pool;
        let r: Result<serde_json::Value, ReflowError> = async {
            Ok(match &req.command {
                Command::Offers => to_json(&pool.offers().await),
                Command::AllocNew { meta } => {
                    let a = pool
                        .new_alloc_as(&job_alloc_id(&req.id), meta.clone())
                        .await
                        .map_err(|e| rerr(op, &e))?;
                    to_json(&a.inspect())
                }
                Command::AllocKeepalive { alloc, interval_ns } => {
                    let granted = pool
                        .keepalive(alloc, chrono::Duration::nanoseconds(*interval_ns))
                        .await
                        .map_err(|e| rerr(op, &e))?;
                    serde_json::json!({ "granted_ns": granted.num_nanoseconds() })
                }
                Command::AllocFree { alloc } => {
                    pool.free(alloc).await.map_err(|e| rerr(op, &e))?;
                    let mut e = self.command_event(req, 0, EventBody::AllocFreed {});
                    e.alloc = Some(alloc.clone());
                    extra.push(e);
                    serde_json::json!({})
                }
                Command::AllocInspect { alloc } => {
                    to_json(&pool.alloc(alloc).await.map_err(|e| rerr(op, &e))?.inspect())
                }
                Command::ExecPut { alloc, exec, config } => {
                    let a = pool.alloc(alloc).await.map_err(|e| rerr(op, &e))?;
                    let x = a
                        .executor()
                        .put(*exec, config.clone())
                        .await
                        .map_err(|e| rerr(op, &e))?;
                    to_json(&x.inspect())
                }
                Command::ExecInspect { alloc, exec } => {
                    let a = pool.alloc(alloc).await.map_err(|e| rerr(op, &e))?;
                    to_json(&a.executor().inspect(exec).await.map_err(|e| rerr(op, &e))?)
                }
                Command::ExecResult { alloc, exec } => {
                    let a = pool.alloc(alloc).await.map_err(|e| rerr(op, &e))?;
                    let x = a.executor().get(exec).map_err(|e| rerr(op, &e))?;
                    to_json(&x.result()?)
                }
                Command::ExecLogs { alloc, exec, stdout, stderr } => {
                    let a = pool.alloc(alloc).await.map_err(|e| rerr(op, &e))?;
                    let x = a.executor().get(exec).map_err(|e| rerr(op, &e))?;
                    let logs = x.logs(*stdout, *stderr)?;
                    // Events stay small: the last 64 KiB.
                    let tail = &logs[logs.len().saturating_sub(64 << 10)..];
                    serde_json::json!({ "logs": String::from_utf8_lossy(tail), "bytes": logs.len() })
                }
                Command::ExecPromote { alloc, exec } => {
                    let a = pool.alloc(alloc).await.map_err(|e| rerr(op, &e))?;
                    a.executor().promote(exec).await.map_err(|e| rerr(op, &e))?;
                    serde_json::json!({})
                }
                Command::ExecRemove { alloc, exec } => {
                    let a = pool.alloc(alloc).await.map_err(|e| rerr(op, &e))?;
                    a.executor().remove(exec).await.map_err(|e| rerr(op, &e))?;
                    serde_json::json!({})
                }
                Command::Load { alloc, repo_url, fileset } => {
                    let a = pool.alloc(alloc).await.map_err(|e| rerr(op, &e))?;
                    to_json(&a.executor().load(repo_url, fileset).await.map_err(|e| rerr(op, &e))?)
                }
                Command::Unload { alloc, fileset } => {
                    let a = pool.alloc(alloc).await.map_err(|e| rerr(op, &e))?;
                    a.executor().unload(fileset).map_err(|e| rerr(op, &e))?;
                    serde_json::json!({})
                }
                Command::Verify { alloc, fileset } => {
                    let a = pool.alloc(alloc).await.map_err(|e| rerr(op, &e))?;
                    a.executor().verify_integrity(fileset).await.map_err(|e| rerr(op, &e))?;
                    serde_json::json!({})
                }
                Command::Job(_) => unreachable!("jobs are not requests"),
            })
        }
        .await;
        (r, extra)
    }

    /// Waits for room, journals the job and runs it. Until it is journaled it is not started: a
    /// drain hands it back.
    async fn accept_job(
        self: &Arc<Self>,
        req: Request,
        spec: JobSpec,
        body: &[u8],
        lease: Option<String>,
        intake: OwnedSemaphorePermit,
    ) {
        let entry = Entry {
            v: JOURNAL_VERSION,
            command_id: req.id.clone(),
            kind: "job".into(),
            phase: Phase::Accepted,
            command: serde_json::from_slice(body).unwrap_or(serde_json::Value::Null),
            alloc: None,
            exec: None,
            lease,
            outcome: Vec::new(),
            accepted: self.clock.now(),
        };
        self.start_job(req, spec, entry, intake).await;
    }

    /// Starts a claimed job: a slot, room in the pool and a journal entry, then [`Self::run_job`].
    async fn start_job(
        self: &Arc<Self>,
        req: Request,
        spec: JobSpec,
        entry: Entry,
        intake: OwnedSemaphorePermit,
    ) {
        let want = job_want(&spec);
        if !self.pool.resources().available(&want) {
            tracing::warn!(want = %want, have = %self.pool.resources(), "The job is larger than this agent; handing it back for a larger one.");
            tokio::time::sleep(self.cfg.retry_base).await;
            return self.hand_back(&req).await;
        }
        // The fleet's claim before anything here starts: a job another agent runs is not
        // started beside it.
        match self.fleet_claim(&req).await {
            FleetClaim::Start => {}
            FleetClaim::Drain => return self.hand_back(&req).await,
            FleetClaim::DoneElsewhere => {
                let held = self.active.lock().await.remove(&req.id).unwrap_or_default();
                for s in held {
                    self.settle_later(s, SettleAction::Ack("job")).await;
                }
                return;
            }
        }
        // A slot, then room in the pool; a drain meanwhile hands the job back.
        let slot = tokio::select! {
            () = self.draining.cancelled() => return self.hand_back(&req).await,
            s = self.run_slots.clone().acquire_owned() => s.ok(),
        };
        if !self.cfg.engine.is_up() {
            tracing::warn!("The container engine does not answer; handing the job back unstarted.");
            tokio::time::sleep(self.cfg.retry_base).await;
            return self.hand_back(&req).await;
        }
        let mut entry = entry;
        if !self.reserve(&req, &spec, &mut entry).await {
            return self.hand_back(&req).await;
        }
        if let Err(e) = self.journal.put(&entry) {
            tracing::warn!(error = %crate::error::chain(&e), "Journaling the job failed; handing it back.");
            return self.hand_back(&req).await;
        }
        // The intake permit is kept while the job runs: `prefetch` bounds every command held.
        self.run_job(req, spec, entry, slot).await;
        drop(intake);
    }

    /// Reserves the job's alloc before the job is journaled: the pool checks and takes the free
    /// resources in one step, so two jobs can never both pass a check only one of them fits. A
    /// job that fits the agent but not beside the running ones waits here, keeping its delivery
    /// (its lease is kept by [`lease_loop`]); waiting is not an attempt. False when a drain began
    /// meanwhile (hand the job back). Any other pool failure is left to the job's attempts.
    async fn reserve(&self, req: &Request, spec: &JobSpec, entry: &mut Entry) -> bool {
        let alloc_id = job_alloc_id(&req.id);
        let mut waited = false;
        loop {
            match self.pool.new_alloc_as(&alloc_id, job_meta(req, spec)).await {
                Ok(_) => {
                    entry.alloc = Some(alloc_id);
                    if waited {
                        tracing::info!(command_id = %req.id, "Room freed up; the job starts.");
                    }
                    return true;
                }
                Err(e) if e.kind() == Kind::ResourcesExhausted => {
                    if !waited {
                        tracing::info!(command_id = %req.id, want = %job_want(spec), "The job waits for room beside the running jobs.");
                        waited = true;
                    }
                }
                Err(e) => {
                    tracing::warn!(command_id = %req.id, error = %crate::error::chain(&e), "Reserving the job's alloc failed; the job's attempts take over.");
                    return true;
                }
            }
            tokio::select! {
                () = self.draining.cancelled() => return false,
                () = tokio::time::sleep(Duration::from_millis(100)) => {}
            }
        }
    }

    /// Runs a journaled job to its outcome and settles every delivery attached to it.
    async fn run_job(
        self: &Arc<Self>,
        req: Request,
        spec: JobSpec,
        mut entry: Entry,
        slot: Option<OwnedSemaphorePermit>,
    ) {
        let started = self.clock.now();
        let mut events = self.job_outcome(&req, &spec, &mut entry).await;
        lock(&self.running).remove(&req.id);
        let oom = match (&entry.alloc, entry.exec) {
            (Some(a), Some(x)) => match self.pool.alloc(a).await {
                Ok(a) => a
                    .executor()
                    .get(&x)
                    .ok()
                    .and_then(|e| e.manifest().oom)
                    .map(|o| format!("{:?}", o.source).to_lowercase()),
                Err(_) => None,
            },
            _ => None,
        };
        let took = (self.clock.now() - started).num_milliseconds() as f64 / 1000.0;
        self.cfg.metrics.exec_done(took, oom.as_deref());
        let exec = entry.exec;
        for e in &mut events {
            e.alloc = e.alloc.take().or_else(|| entry.alloc.clone());
            e.exec = e.exec.or(exec);
        }
        // Outcome first, then the journal, then the broker: each step is durable before the next.
        if let Err(e) = self.record_outcome(&req, &events).await {
            // The outcome is not durable, so the command must not be settled: hand every
            // delivery back and release the slot. The journal entry stays unfinished, so a
            // redelivery (or the next start) resumes the job and finds its result again.
            tracing::error!(command_id = %req.id, error = %crate::error::chain(&e), "Could not record the job's outcome; handing the command back.");
            self.release_claim(&req.id).await;
            let held = self.active.lock().await.remove(&req.id).unwrap_or_default();
            for s in held {
                self.settle_later(s, SettleAction::Requeue).await;
            }
            return;
        }
        entry.phase = Phase::Done;
        entry.outcome = events;
        if let Err(e) = self.journal.put(&entry) {
            tracing::error!(error = %crate::error::chain(&e), "Journaling a job outcome failed; a redelivery resumes it and finds the same result.");
        }
        // Published, then settled: a machine that dies between the two leaves the command in
        // the queue, never an acked command whose outcome was only on its disk.
        let action = if self.until_published(&entry.outcome).await {
            self.finish_claim(&req.id).await;
            SettleAction::Ack("job")
        } else {
            tracing::warn!(command_id = %req.id, "The job's outcome was not published in time; handing the command back (a redelivery here replays it).");
            self.release_claim(&req.id).await;
            SettleAction::Requeue
        };
        let held = self.active.lock().await.remove(&req.id).unwrap_or_default();
        for s in held {
            self.settle_later(s, action).await;
        }
        self.free_job_alloc(&req, entry.alloc.as_deref()).await;
        drop(slot);
    }

    /// Writes a job's outcome events to the outbox, retrying for up to [`OUTCOME_PATIENCE`].
    async fn record_outcome(&self, req: &Request, events: &[Event]) -> Result<(), JournalError> {
        let deadline = tokio::time::Instant::now() + OUTCOME_PATIENCE;
        loop {
            let e = match self.emit_durable(events) {
                Ok(()) => return Ok(()),
                Err(e) => e,
            };
            if tokio::time::Instant::now() >= deadline {
                return Err(e);
            }
            tracing::error!(command_id = %req.id, error = %crate::error::chain(&e), "Recording a job outcome failed; retrying.");
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
    }

    /// Frees a job's alloc, when it has one, and says so with `alloc.freed`.
    async fn free_job_alloc(&self, req: &Request, alloc: Option<&str>) {
        let Some(alloc) = alloc else { return };
        match self.pool.free(alloc).await {
            Ok(()) => {
                let mut e = self.command_event(req, 0, EventBody::AllocFreed {});
                e.alloc = Some(alloc.to_string());
                self.emit(&[e]);
            }
            Err(e) => tracing::debug!(error = %crate::error::chain(&e), "Freeing the job's alloc."),
        }
    }

    /// The events of a job's outcome: `exec.completed` (with the error when it failed).
    async fn job_outcome(&self, req: &Request, spec: &JobSpec, entry: &mut Entry) -> Vec<Event> {
        let outputs_to = spec
            .outputs_to
            .clone()
            .unwrap_or_else(|| self.cfg.repository.clone());
        let exec_id = job_exec_id(spec);
        let key = Digest::of(format!("{}\0{outputs_to}", exec_id.hex()).as_bytes());
        let completed = |result: ExecResult, cached: bool| {
            let ok = result.err.is_none();
            let mut e = self.command_event(
                req,
                0,
                EventBody::ExecCompleted {
                    locations: if ok {
                        locations(&outputs_to, &result)
                    } else {
                        None
                    },
                    result,
                    repository: ok.then(|| outputs_to.clone()),
                    cached,
                },
            );
            e.exec = Some(exec_id);
            e
        };
        if let Some(stored) = self.results.get(&key) {
            tracing::info!(exec = %exec_id, "An identical exec already succeeded: returning its stored result.");
            return vec![completed(stored.result, true)];
        }
        let mut events = Vec::new();
        let mut delay = self.cfg.retry_base;
        let mut attempt = 1;
        let result = loop {
            match self
                .try_job(req, spec, entry, exec_id, &outputs_to, &mut events)
                .await
            {
                Ok(r) => break r,
                Err(e)
                    if e.kind.is_retryable()
                        && attempt < self.cfg.job_attempts
                        && !self.draining.is_cancelled() =>
                {
                    tracing::warn!(error = %crate::error::chain(&e), attempt, "Job step failed; retrying.");
                    if let Some(a) = &entry.alloc
                        && let Ok(a) = self.pool.alloc(a).await
                    {
                        let _ = a.executor().remove(&exec_id).await;
                    }
                    tokio::time::sleep(delay).await;
                    delay *= 2;
                    attempt += 1;
                }
                Err(e) => {
                    tracing::warn!(error = %crate::error::chain(&e), attempt, "Job failed.");
                    break ExecResult {
                        fileset: Default::default(),
                        err: Some(e),
                    };
                }
            }
        };
        if result.err.is_none() {
            let stored = StoredResult {
                result: result.clone(),
                repository: outputs_to.clone(),
                exec: exec_id,
            };
            if let Err(e) = self.results.put(&key, &stored) {
                tracing::warn!(error = %crate::error::chain(&e), "Storing the job result failed (identical jobs will run again).");
            }
        }
        if let Some(e) = result.err.as_ref().filter(|e| e.kind == Kind::Integrity) {
            // Corrupt data: said at once, not only by the next heartbeat (the alloc is freed).
            self.cfg.metrics.integrity_error();
            events.push(self.command_event(
                req,
                0,
                EventBody::IntegrityError {
                    detail: e.to_string(),
                },
            ));
        }
        events.push(completed(result, false));
        events
    }

    async fn try_job(
        &self,
        req: &Request,
        spec: &JobSpec,
        entry: &mut Entry,
        exec_id: Digest,
        outputs_to: &str,
        events: &mut Vec<Event>,
    ) -> Result<ExecResult, ReflowError> {
        let alloc_id = job_alloc_id(&req.id);
        let alloc = self
            .pool
            .new_alloc_as(&alloc_id, job_meta(req, spec))
            .await
            .map_err(|e| rerr("alloc", &e))?;
        if entry.alloc.as_deref() != Some(alloc_id.as_str()) {
            entry.alloc = Some(alloc_id.clone());
            self.journal.put(entry).map_err(|e| rerr("journal", &e))?;
        }
        // Keep the alloc alive while the job runs.
        let keepalive = {
            let (pool, id) = (self.pool.clone(), alloc_id.clone());
            tokio::spawn(async move {
                loop {
                    let _ = pool.keepalive(&id, chrono::Duration::seconds(120)).await;
                    tokio::time::sleep(Duration::from_secs(30)).await;
                }
            })
        };
        let _stop_keepalive = AbortOnDrop(keepalive);
        let ex = alloc.executor();
        let exec = match ex.get(&exec_id) {
            Ok(x) => x,
            Err(_) => {
                let inputs_from = spec
                    .inputs_from
                    .clone()
                    .unwrap_or_else(|| self.cfg.repository.clone());
                let mut config = spec.config.clone();
                for arg in config.args.iter_mut() {
                    if let Some(fs) = &arg.fileset {
                        arg.fileset = Some(
                            ex.load(&inputs_from, fs)
                                .await
                                .map_err(|e| rerr("load", &e))?,
                        );
                    }
                }
                ex.put(exec_id, config).await.map_err(|e| rerr("put", &e))?
            }
        };
        if entry.exec != Some(exec_id) {
            entry.exec = Some(exec_id);
            self.journal.put(entry).map_err(|e| rerr("journal", &e))?;
        }
        lock(&self.running).insert(req.id.clone(), (alloc_id.clone(), exec_id));
        let limit = spec
            .timeout_secs
            .map_or(self.cfg.max_job, Duration::from_secs)
            .min(self.cfg.max_job);
        let left = (entry.accepted
            + chrono::Duration::from_std(limit).unwrap_or(chrono::TimeDelta::MAX)
            - self.clock.now())
        .to_std()
        .unwrap_or(Duration::ZERO);
        let ran = tokio::time::timeout(left, async {
            exec.wait_until(ExecState::Running).await?;
            self.emit(&[self.exec_state_event(req, &exec, &alloc_id, "running")]);
            exec.wait().await
        })
        .await;
        match ran {
            Ok(r) => r?,
            Err(_) => {
                tracing::warn!(exec = %exec_id, limit_secs = limit.as_secs(), "The job ran out of time; stopping its exec.");
                ex.remove(&exec_id).await.map_err(|e| rerr("remove", &e))?;
                return Ok(ExecResult {
                    fileset: Default::default(),
                    err: Some(ReflowError::new(
                        Kind::Timeout,
                        "job",
                        format!(
                            "still running {} s after it was accepted, its limit (timeout_secs, at most queue.max_job_secs); its exec was stopped",
                            limit.as_secs()
                        ),
                    )),
                });
            }
        }
        let result = exec.result()?;
        if let Some(e) = result.err.as_ref().filter(|e| e.kind == Kind::Unavailable) {
            // Not the exec's own failure (e.g. the engine stopped its container while it
            // restarted): one more attempt, like a failed step.
            return Err(e.clone());
        }
        if result.err.is_none() {
            ex.promote(&exec_id)
                .await
                .map_err(|e| rerr("promote", &e))?;
            send_outputs(
                ex.repository(),
                &result.fileset,
                outputs_to,
                self.cfg.blob.as_ref(),
            )
            .await?;
        }
        events.push(self.exec_state_event(req, &exec, &alloc_id, "complete"));
        Ok(result)
    }
}

/// Aborts a task when dropped.
struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

#[derive(Debug, Clone, Copy)]
enum SettleAction {
    /// Ack a command of this kind.
    Ack(&'static str),
    Requeue,
}

/// A reply value.
fn to_json<T: serde::Serialize>(v: &T) -> serde_json::Value {
    serde_json::to_value(v).unwrap_or(serde_json::Value::Null)
}

/// The alloc a job asks the pool for.
fn job_meta(req: &Request, spec: &JobSpec) -> AllocMeta {
    AllocMeta {
        want: job_want(spec),
        owner: format!("job {}", req.id),
        labels: [("command_id".to_string(), req.id.clone())].into(),
    }
}

/// What a job allocates: its `resources`, else its exec's.
fn job_want(spec: &JobSpec) -> crate::resources::Resources {
    spec.resources
        .clone()
        .unwrap_or_else(|| spec.config.resources.clone())
}

/// The alloc a command addresses.
fn command_alloc(c: &Command) -> Option<String> {
    match c {
        Command::AllocKeepalive { alloc, .. }
        | Command::AllocFree { alloc }
        | Command::AllocInspect { alloc }
        | Command::ExecPut { alloc, .. }
        | Command::ExecInspect { alloc, .. }
        | Command::ExecResult { alloc, .. }
        | Command::ExecLogs { alloc, .. }
        | Command::ExecPromote { alloc, .. }
        | Command::ExecRemove { alloc, .. }
        | Command::Load { alloc, .. }
        | Command::Unload { alloc, .. }
        | Command::Verify { alloc, .. } => Some(alloc.clone()),
        Command::Offers | Command::AllocNew { .. } | Command::Job(_) => None,
    }
}

/// Whether a request changes state, so its outcome is journaled and replayed on redelivery
/// instead of being run again.
fn changes_state(c: &Command) -> bool {
    matches!(
        c,
        Command::AllocNew { .. }
            | Command::AllocFree { .. }
            | Command::ExecPut { .. }
            | Command::ExecPromote { .. }
            | Command::ExecRemove { .. }
            | Command::Load { .. }
            | Command::Unload { .. }
    )
}

/// Copies the files of `fileset` from `from` into the repository at `to` (`file:///...`).
async fn send_outputs(
    from: &FileRepository,
    fileset: &crate::fileset::Fileset,
    to: &str,
    blob: Option<&Arc<dyn crate::blob::BlobStore>>,
) -> Result<(), ReflowError> {
    if to.starts_with("s3://") {
        let store = blob.ok_or_else(|| {
            ReflowError::new(
                Kind::NotSupported,
                "send outputs",
                "no blob store is configured",
            )
        })?;
        return send_outputs_s3(from, fileset, to, store.as_ref()).await;
    }
    let Some(root) = to.strip_prefix("file://").filter(|p| p.starts_with('/')) else {
        return Err(ReflowError::new(
            Kind::NotSupported,
            "send outputs",
            format!("repository {to:?} is not supported (want file:///... or s3://...)"),
        ));
    };
    let (from, root, files) = (from.clone(), PathBuf::from(root), fileset.files());
    tokio::task::spawn_blocking(move || -> Result<(), ReflowError> {
        let target = FileRepository::open(&root).map_err(|e| rerr("send outputs", &e))?;
        for f in files {
            if !target.contains(&f.id) {
                target
                    .link_in(&from.path(&f.id), &f.id)
                    .map_err(|e| rerr("send outputs", &e))?;
            }
        }
        Ok(())
    })
    .await
    .map_err(|e| ReflowError::new(Kind::Fatal, "send outputs", e.to_string()))?
}

/// Uploads the files of `fileset` to the content-addressed repository at `to` (`s3://`),
/// skipping objects already there with the same size and digest.
async fn send_outputs_s3(
    from: &FileRepository,
    fileset: &crate::fileset::Fileset,
    to: &str,
    store: &dyn crate::blob::BlobStore,
) -> Result<(), ReflowError> {
    use futures_util::StreamExt;
    let url = crate::blob::BlobUrl::parse(to).map_err(|e| rerr("send outputs", &e))?;
    let progress = crate::blob::Progress::default();
    let (url, progress) = (&url, &progress);
    let done: Vec<Result<(), ReflowError>> = futures_util::stream::iter(fileset.files())
        .map(|f| async move {
            let key = url.object_key(&f.id);
            match store.head(&url.bucket, &key).await {
                Ok(i) if i.size == f.size && i.content_sha256 == Some(f.id) => return Ok(()),
                _ => {}
            }
            store
                .upload(&url.bucket, &key, &from.path(&f.id), &f.id, progress)
                .await
                .map_err(|e| rerr("send outputs", &e))
        })
        .buffer_unordered(8)
        .collect()
        .await;
    done.into_iter().collect()
}

/// Where each output of `result` lives in the repository at `repo` (`s3://` only).
fn locations(
    repo: &str,
    result: &ExecResult,
) -> Option<std::collections::BTreeMap<String, String>> {
    let url = crate::blob::BlobUrl::parse(repo).ok()?;
    Some(
        result
            .fileset
            .pullup()
            .map
            .iter()
            .map(|(path, f)| (path.clone(), url.display(&url.object_key(&f.id))))
            .collect(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn job_ids_are_deterministic_and_valid() {
        let a = job_alloc_id("hello-1");
        assert_eq!(a, job_alloc_id("hello-1"));
        assert_ne!(a, job_alloc_id("hello-2"));
        assert_eq!(a.len(), 16);
        assert!(
            a.bytes()
                .all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase())
        );
    }

    #[test]
    fn guess_id_reads_what_it_can() {
        assert_eq!(guess_id(br#"{"id":"x-1","v":9}"#).as_deref(), Some("x-1"));
        assert_eq!(guess_id(b"\xff\xfe"), None);
        assert_eq!(
            guess_id(format!(r#"{{"id":"{}"}}"#, "a".repeat(500)).as_bytes()),
            None
        );
    }

    #[test]
    fn only_state_changing_requests_are_journaled() {
        assert!(changes_state(&Command::AllocFree {
            alloc: "0".repeat(16)
        }));
        assert!(!changes_state(&Command::Offers));
        assert_eq!(
            command_alloc(&Command::AllocFree { alloc: "a".into() }).as_deref(),
            Some("a")
        );
    }
}
