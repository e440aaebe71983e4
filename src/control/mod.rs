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
//!
//! # Rooms
//! This file holds the configuration, the shared state ([`Control`]'s `Inner`) and the main loop
//! ([`Control::run`]). Each concern has a file of its own:
//! `dispatch` (decode, admit, route and settle a delivery; resume after a restart), `job` (the
//! job state machine, its time limit and outputs), `requests` (alloc and exec requests),
//! `events` (event ids, the outbox and its publisher, heartbeats), `lease` (leases and the
//! fleet's claims), `retention` (pruning), [`journal`] (the durable journal, outbox and
//! results) and [`security`] (admission).

mod dispatch;
mod events;
mod job;
pub mod journal;
mod lease;
mod requests;
mod retention;
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
use crate::par::lock;
use crate::pool::{AllocMeta, Pool};
use crate::protocol::{
    Command, Event, EventBody, JobSpec, PROTOCOL_VERSION, ProtocolError, Request, decode_command,
    event_id,
};
use crate::queue::{CommandSource, Delivery, EventSink, Settle};
use crate::repo::FileRepository;
use crate::taskdb::claims::Claim;
use events::{heartbeat_loop, publish_loop};
use journal::{
    Entry, JOURNAL_VERSION, Journal, JournalError, Outbox, Phase, Results, StoredResult,
};
use lease::lease_loop;
use retention::prune_loop;

/// How long a finished job keeps its run slot while its outcome cannot be written (a full or
/// failing disk) before the command is handed back unsettled.
pub const OUTCOME_PATIENCE: Duration = Duration::from_secs(60);

/// How long a drain waits for the broker to take the events still in the outbox (after the
/// last job, and for each job's outcome); what is left goes at the next start.
pub const DRAIN_PUBLISH_PATIENCE: Duration = Duration::from_secs(10);

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
    /// Attempts of a job step failing with a retryable error.
    pub job_attempts: u32,
    /// First retry delay (doubled each attempt).
    pub retry_base: Duration,
    /// Admission policy.
    pub security: security::Policy,
    /// Done journal entries, stored results and spool events older than this are pruned while
    /// the agent runs; `None` keeps them forever.
    pub retention: Option<Duration>,
    /// The event kinds sent to the events topic (`queue.publish`); `None`: all. Events of
    /// other kinds leave the outbox unsent.
    pub publish: Option<Vec<String>>,
    /// How long events nobody waits for are held for company where the sink batches them
    /// ([`crate::queue::EventSink::lingers`]); the agent uses [`DEFAULT_LINGER`].
    pub linger: Duration,
}

/// The agent's [`ControlConfig::linger`].
pub const DEFAULT_LINGER: Duration = Duration::from_millis(250);

impl ControlConfig {
    /// Whether events of `kind` are sent.
    pub fn publishes(&self, kind: &str) -> bool {
        self.publish
            .as_ref()
            .is_none_or(|kinds| kinds.iter().any(|k| k == kind))
    }
}

/// What the control plane uses outside itself: the pool, the clock, the events topic, and
/// the handles the agent shares with it. [`ControlConfig`] holds settings only.
#[derive(Debug, Clone)]
pub struct ControlPorts {
    /// The pool jobs and requests go to.
    pub pool: Pool,
    /// The clock.
    pub clock: Arc<dyn Clock>,
    /// The events topic.
    pub sink: Arc<dyn EventSink>,
    /// The fleet's claim store: one agent runs a command at a time across the fleet (absent:
    /// no fleet-wide claims).
    pub claims: Option<Arc<dyn crate::taskdb::claims::ClaimStore>>,
    /// The counters `/metrics` shows.
    pub metrics: Arc<crate::metrics::Metrics>,
    /// systemd notifications.
    pub notifier: crate::notify::Notifier,
    /// The blob store for `s3://` outputs (absent: not supported).
    pub blob: Option<Arc<dyn crate::blob::BlobStore>>,
    /// Whether the container engine answers (intake pauses while it does not).
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
    claims: Option<Arc<dyn crate::taskdb::claims::ClaimStore>>,
    metrics: Arc<crate::metrics::Metrics>,
    notifier: crate::notify::Notifier,
    blob: Option<Arc<dyn crate::blob::BlobStore>>,
    engine: crate::docker::health::EngineHealth,
    outbox_wake: Notify,
    /// Callers waiting for events to be published ([`Inner::until_published`]).
    awaiting: std::sync::atomic::AtomicUsize,
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

/// The one mapping of a port's error (pool, executor, journal, ...) to the wire's
/// [`ReflowError`], named after the operation: `.or_reflow("alloc")`.
trait OrReflow<T> {
    fn or_reflow(self, op: &str) -> Result<T, ReflowError>;
}

impl<T, E: Classify + std::error::Error> OrReflow<T> for Result<T, E> {
    fn or_reflow(self, op: &str) -> Result<T, ReflowError> {
        self.map_err(|e| rerr(op, &e))
    }
}

impl Control {
    /// Opens the control plane's state under `cfg.state_dir`.
    ///
    /// # Errors
    /// The state directories cannot be created.
    pub fn new(cfg: ControlConfig, ports: ControlPorts) -> Result<Control, ControlError> {
        let ControlPorts {
            pool,
            clock,
            sink,
            claims,
            metrics,
            notifier,
            blob,
            engine,
        } = ports;
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
                claims,
                metrics,
                notifier,
                blob,
                engine,
                outbox_wake: Notify::new(),
                awaiting: Default::default(),
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
        inner.notifier.notify("READY=1");
        loop {
            let intake = tokio::select! {
                () = shutdown.cancelled() => break,
                p = inner.intake.clone().acquire_owned() => match p {
                    Ok(p) => p,
                    Err(_) => break,
                },
            };
            if !inner.engine.is_up() {
                // Paused: nothing more is received until the engine answers again. What was
                // received and not started is handed back (`start_job`).
                tokio::select! {
                    () = shutdown.cancelled() => break,
                    () = inner.engine.until_up() => {}
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
        inner.notifier.notify("STOPPING=1");
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
        let deadline = tokio::time::Instant::now() + DRAIN_PUBLISH_PATIENCE;
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

#[derive(Debug, Clone, Copy)]
enum SettleAction {
    /// Ack a command of this kind.
    Ack(&'static str),
    Requeue,
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
}
