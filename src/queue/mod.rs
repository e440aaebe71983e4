//! The queue port: where commands come from ([`CommandSource`]), how each is settled
//! ([`Settle`]: ack, requeue, dead-letter), and where events go ([`EventSink`]). Backends are
//! chosen by URL scheme; only domain types (bytes, [`crate::protocol::Event`]) cross the port.
//!
//! Backends: [`spool`] (`spool://DIR`, the embedded zero-dependency default), [`amqp`]
//! (`amqp://`, RabbitMQ) and [`sqs`] (`sqs://QUEUE`). [`open`] picks one by URL scheme.
//!
//! # When a command is settled
//! On every backend a job's delivery is held until the job's outcome is durable (then acked),
//! or handed back (requeued) when this agent cannot run it. While it is held, its lease is kept:
//! SQS visibility is extended ([`Lease`]), and RabbitMQ keeps an unacked delivery for as long
//! as the consumer's connection lives (bounded by the broker's consumer timeout, which the
//! agent derives from `queue.max_job_secs`). A machine that dies therefore loses nothing: its
//! connection or its leases lapse and the broker hands the commands to another agent. The SQS
//! lease (receipt handle) is journaled so a restarted agent re-owns it.

#[cfg(feature = "amqp")]
pub mod amqp;
pub mod amqp_url;
pub mod spool;
#[cfg(feature = "sqs")]
pub mod sqs;

use std::fmt;
use std::path::{Path, PathBuf};

use async_trait::async_trait;
use thiserror::Error;

use crate::error::{Classify, Kind};
use crate::protocol::Event;

/// Queue failures.
#[derive(Debug, Error)]
pub enum QueueError {
    /// The queue URL is not usable.
    #[error("unsupported queue URL {url:?} (want amqp://, sqs:// or spool://)")]
    Url {
        /// The URL (credentials removed, truncated).
        url: String,
    },
    /// The URL's backend is not in this build.
    #[error("{}", crate::features::not_built(url, feature))]
    NotBuilt {
        /// The URL (credentials removed).
        url: String,
        /// The cargo feature it needs.
        feature: &'static str,
    },
    /// A filesystem operation of the spool failed.
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
    /// An event could not be written.
    #[error("publish event")]
    Publish(#[source] crate::persist::PersistError),
    /// The AMQP broker failed or refused.
    #[error("AMQP {op}: {message}")]
    Amqp {
        /// What was being done.
        op: &'static str,
        /// The client's message.
        message: String,
    },
    /// A broker operation did not finish within the operation deadline; the connection it
    /// used is dropped and made again.
    #[error("{op} got no answer from the broker within {after:?}{blocked}")]
    Timeout {
        /// What was being done.
        op: &'static str,
        /// The deadline.
        after: std::time::Duration,
        /// Why, when the broker said: `"; the broker is blocking publishers (resource alarm)"`.
        blocked: &'static str,
    },
    /// An SQS call failed.
    #[error("SQS {op}: {message}")]
    Sqs {
        /// What was being done.
        op: &'static str,
        /// The SDK's message (no credentials).
        message: String,
        /// Whether the service said the request itself is wrong (permanent).
        permanent: bool,
    },
}

impl Classify for QueueError {
    fn kind(&self) -> Kind {
        match self {
            QueueError::Url { .. } => Kind::Invalid,
            QueueError::NotBuilt { .. } => Kind::NotSupported,
            QueueError::Io { .. } | QueueError::Publish(_) | QueueError::Amqp { .. } => {
                Kind::Unavailable
            }
            QueueError::Timeout { .. } => Kind::Timeout,
            QueueError::Sqs { permanent, .. } => {
                if *permanent {
                    Kind::Invalid
                } else {
                    Kind::Unavailable
                }
            }
        }
    }
}

/// One received command and the means to settle it. Dropping it unsettled leaves the message
/// to the broker's redelivery (the spool returns it at the next start).
#[derive(Debug)]
pub struct Delivery {
    /// The raw command (decode with [`crate::protocol::decode_command`]).
    pub body: Vec<u8>,
    /// Whether the broker says it was delivered before.
    pub redelivered: bool,
    /// Which delivery this is, 1 for the first (from the broker's count where it keeps one).
    pub attempt: u32,
    /// How to settle it.
    pub settle: Box<dyn Settle>,
}

/// Settling a delivery: exactly one of these, once.
#[async_trait]
pub trait Settle: Send + Sync + fmt::Debug {
    /// Done: the outcome is durable; remove the message.
    async fn ack(self: Box<Self>) -> Result<(), QueueError>;
    /// Not done: give it back for this or another agent (retryable failure, drain).
    async fn requeue(self: Box<Self>) -> Result<(), QueueError>;
    /// Never: move it to the dead-letter queue with `reason`.
    async fn dead_letter(self: Box<Self>, reason: &str) -> Result<(), QueueError>;
    /// The message's lease, where the broker has one that must be extended to keep the message
    /// in flight (SQS visibility); `None` where holding the delivery is enough (AMQP, spool).
    fn keeper(&self) -> Option<std::sync::Arc<dyn Lease>> {
        None
    }
    /// A token that lets a restarted agent re-own this message ([`CommandSource::reown`]).
    fn lease(&self) -> Option<String> {
        None
    }
}

/// A lease on one received message that must be extended to keep it (SQS visibility). Held
/// apart from its [`Settle`] so a keeper can extend many leases without holding the deliveries.
#[async_trait]
pub trait Lease: Send + Sync + fmt::Debug {
    /// Keeps the message in flight for `for_at_least` more.
    async fn extend(&self, for_at_least: std::time::Duration) -> Result<(), QueueError>;
}

/// Where commands come from.
#[async_trait]
pub trait CommandSource: Send + Sync + fmt::Debug {
    /// The next command, waiting for one; `None` once the source is closed. `room` is how many
    /// commands the caller can take at once now (at least 1): a source that receives in batches
    /// (SQS) receives no more than that, so nothing waits unextended in a buffer.
    ///
    /// # Cancel safety
    /// Cancel safe: a command is claimed only when it is returned.
    async fn next(&mut self, room: usize) -> Result<Option<Delivery>, QueueError>;
    /// Stops consuming and hands every received-but-unreturned message back to the broker.
    async fn close(&mut self) {}
    /// Re-owns a message from a lease journaled by an earlier run, if the broker still has it.
    async fn reown(&self, _lease: &str) -> Option<Box<dyn Settle>> {
        None
    }
}

/// A dead-lettered command, as an operator sees it.
#[derive(Debug, Clone)]
pub struct DeadLetter {
    /// The raw command.
    pub body: Vec<u8>,
    /// Why it was dead-lettered.
    pub reason: String,
}

/// A producer's and operator's handle on a queue: submit commands, watch events, list and
/// replay the dead-letter queue.
#[async_trait]
pub trait Client: Send + Sync + fmt::Debug {
    /// Sends a command (`id` is its command id; the spool names its file after it).
    async fn submit(&self, id: &str, body: &[u8]) -> Result<(), QueueError>;
    /// Gets ready to submit (a broker connection), so a caller can do it while it sets up
    /// something else, such as a watch; [`Client::submit`] does it too when needed.
    async fn prepare(&self) -> Result<(), QueueError> {
        Ok(())
    }
    /// Starts watching events; `command` narrows them to one command's where the backend
    /// must consume them to read them (SQS).
    async fn watch(&self, command: Option<&str>) -> Result<Box<dyn EventWatch>, QueueError>;
    /// Starts watching command `command`'s events through a queue of the watcher's own that
    /// gets only what names it: the `reply_to` to put in the command, and the watch. `None`
    /// where the backend has no such queue (then [`Client::watch`]).
    ///
    /// The queue is a client's own (`protocol::is_client_queue`), so even the rejection of a
    /// command that fails its signature check is copied to it (docs/protocol.md).
    async fn watch_replies(
        &self,
        _command: &str,
    ) -> Result<Option<(Box<dyn EventWatch>, String)>, QueueError> {
        Ok(None)
    }
    /// Closes the connection commands are sent on, if any (on AMQP the one the client's
    /// watches share too, answered once what they sent on it is done), so the broker sees a
    /// producer leave rather than a link drop. Best effort.
    async fn close(&self) {}
    /// Up to `max` dead-lettered commands, oldest first, left in place.
    async fn dead_letters(&self, max: usize) -> Result<Vec<DeadLetter>, QueueError>;
    /// Moves the oldest dead-lettered command back to the command queue and returns it; `None`
    /// when the dead-letter queue is empty.
    async fn replay_one(&self) -> Result<Option<Vec<u8>>, QueueError>;
}

/// A stream of events.
#[async_trait]
pub trait EventWatch: Send {
    /// The next event, waiting for one.
    ///
    /// # Cancel safety
    /// Cancel safe: dropping the future (a timeout, a `select!`) loses no event; one it was
    /// about to return comes from the next call (or again later: ids tell duplicates).
    async fn next(&mut self) -> Result<Event, QueueError>;
    /// Ends the watch once nothing more is wanted from it, removing what it made on the broker
    /// (an AMQP watch's queue) instead of leaving that to expire. Best effort: a failure is
    /// not reported, and the queue still expires.
    async fn close(self: Box<Self>) {}
}

/// A client for `url`: `amqp://` or `amqps://` (TLS, verified), `sqs://` or `spool://`.
///
/// # Errors
/// An unsupported URL, or a backend that cannot be set up.
pub async fn client(url: &str, opts: &ClientSettings) -> Result<Box<dyn Client>, QueueError> {
    let aws = &opts.aws;
    if let Some(dir) = url.strip_prefix("spool://") {
        let spool = spool::Spool::open(dir)?;
        return Ok(Box::new(spool));
    }
    #[cfg(feature = "amqp")]
    if url.starts_with("amqp://") || url.starts_with("amqps://") {
        return Ok(Box::new(amqp::AmqpClient::new(
            url,
            DEFAULT_DELIVERY_LIMIT,
            opts.tls.clone(),
        )?));
    }
    #[cfg(feature = "sqs")]
    if url.starts_with("sqs://") {
        return Ok(Box::new(
            sqs::SqsClient::new(url, aws, DEFAULT_DELIVERY_LIMIT).await?,
        ));
    }
    let _ = aws;
    Err(unusable(url))
}

/// The longest a job may run unless configured (`queue.max_job_secs`): 10 hours, within
/// SQS's 12-hour cap on a message's visibility, with room for the wait before it starts.
pub const DEFAULT_MAX_JOB: std::time::Duration = std::time::Duration::from_secs(36_000);

/// How a producer's or operator's client reaches its queue.
#[derive(Debug, Clone, Default)]
pub struct ClientSettings {
    /// AWS overrides (`sqs://`).
    pub aws: crate::aws::AwsSettings,
    /// For `amqps://`: whom to trust, and who the client is.
    pub tls: Tls,
}

/// TLS for `amqps://`: the broker's certificate and host name are always verified, against the
/// system's CAs plus [`Tls::ca`]; a broker that verifies clients gets [`Tls::identity`].
#[derive(Clone, Default)]
pub struct Tls {
    /// PEM certificates of CAs to trust besides the system's (a private CA).
    pub ca: Option<String>,
    /// The client's certificate and key, for a broker that requires one.
    pub identity: Option<TlsIdentity>,
}

/// A client certificate with its key, as a PKCS#12 bundle (`openssl pkcs12 -export`).
#[derive(Clone)]
pub struct TlsIdentity {
    /// The bundle (DER).
    pub pkcs12: Vec<u8>,
    /// The bundle's password (empty for none). Never shown.
    pub password: String,
}

impl std::fmt::Debug for TlsIdentity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TlsIdentity")
            .field("pkcs12_bytes", &self.pkcs12.len())
            .field("password", &"<redacted>")
            .finish()
    }
}

impl std::fmt::Debug for Tls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tls")
            .field("ca", &self.ca.is_some())
            .field("identity", &self.identity.is_some())
            .finish()
    }
}

impl Tls {
    /// Reads the files that configure TLS: `ca` (PEM), `identity` (PKCS#12) and the file
    /// holding the identity's password (its first line; absent: no password).
    ///
    /// # Errors
    /// [`QueueError::Io`] naming the file that could not be read.
    pub fn load(
        ca: Option<&Path>,
        identity: Option<&Path>,
        password: Option<&Path>,
    ) -> Result<Tls, QueueError> {
        let read = |p: &Path| {
            std::fs::read(p).map_err(|source| QueueError::Io {
                op: "read",
                path: p.to_path_buf(),
                source,
            })
        };
        let ca = ca
            .map(|p| read(p).map(|b| String::from_utf8_lossy(&b).into_owned()))
            .transpose()?;
        let password = password
            .map(|p| {
                read(p).map(|b| {
                    let text = String::from_utf8_lossy(&b).into_owned();
                    text.lines().next().unwrap_or("").to_string()
                })
            })
            .transpose()?
            .unwrap_or_default();
        let identity = identity
            .map(|p| read(p).map(|pkcs12| TlsIdentity { pkcs12, password }))
            .transpose()?;
        Ok(Tls { ca, identity })
    }
}

/// Deliveries before a message is dead-lettered, unless configured.
pub const DEFAULT_DELIVERY_LIMIT: u32 = 5;

/// A connected backend.
#[derive(Debug)]
pub struct Backend {
    /// Commands in.
    pub source: Box<dyn CommandSource>,
    /// Events out.
    pub sink: std::sync::Arc<dyn EventSink>,
    /// The URL with any credentials removed, for logs.
    pub display: String,
}

/// Settings shared by every backend.
#[derive(Debug, Clone)]
pub struct QueueSettings {
    /// This agent's id (names its own AMQP queue).
    pub agent_id: String,
    /// Most commands held at once: received and not yet settled, running jobs included (AMQP's
    /// consumer prefetch; SQS receives no more than the control plane has room for).
    pub prefetch: u16,
    /// Redeliveries before the broker dead-letters a message.
    pub delivery_limit: u32,
    /// SQS visibility granted per receive and per extension.
    pub visibility: std::time::Duration,
    /// The longest a job may run (`queue.max_job_secs`): AMQP's consumer timeout is derived
    /// from it.
    pub max_job: std::time::Duration,
    /// AWS overrides (`sqs://`).
    pub aws: crate::aws::AwsSettings,
    /// For `amqps://`: whom to trust, and who the agent is.
    pub tls: Tls,
    /// Closes the source (drain).
    pub close: tokio_util::sync::CancellationToken,
    /// Kept by the backend: whether it is connected and receiving (for `/readyz`).
    pub health: std::sync::Arc<std::sync::atomic::AtomicBool>,
    /// Longest wait for one broker operation (AMQP: connect, declare, publish and its confirm,
    /// ack, cancel; SQS: one request attempt beyond the long poll). Past it the connection is
    /// taken as dead, dropped and made again (the SDK retries), so a broker that stops
    /// answering (a half-open link, a publisher blocked by a resource alarm) never wedges the
    /// agent or its shutdown.
    pub op_timeout: std::time::Duration,
}

/// [`QueueSettings::op_timeout`] unless configured.
pub const DEFAULT_OP_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(30);

/// `url` without its password, for logs and errors.
pub fn redact(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(s), Some(at)) if at > s => {
            let creds = &url[s + 3..at];
            let user = creds.split(':').next().unwrap_or("");
            format!("{}{user}:***{}", &url[..s + 3], &url[at..])
        }
        _ => url.to_string(),
    }
    .chars()
    .take(300)
    .collect()
}

/// Connects the backend named by `url`'s scheme.
///
/// # Errors
/// An unsupported URL, or a backend that cannot be reached or set up.
pub async fn open(url: &str, settings: &QueueSettings) -> Result<Backend, QueueError> {
    let display = redact(url);
    if let Some(dir) = url.strip_prefix("spool://") {
        let spool = spool::Spool::open(dir)?;
        let returned = spool.recover()?;
        settings
            .health
            .store(true, std::sync::atomic::Ordering::SeqCst);
        return Ok(Backend {
            source: Box::new(spool.source(
                std::time::Duration::from_millis(100),
                settings.close.clone(),
                returned,
            )),
            sink: std::sync::Arc::new(spool.sink()),
            display,
        });
    }
    #[cfg(feature = "amqp")]
    if url.starts_with("amqp://") || url.starts_with("amqps://") {
        let (source, sink) = amqp::connect(url, settings).await?;
        return Ok(Backend {
            source: Box::new(source),
            sink: std::sync::Arc::new(sink),
            display,
        });
    }
    #[cfg(feature = "sqs")]
    if url.starts_with("sqs://") {
        let (source, sink) = sqs::connect(url, settings).await?;
        return Ok(Backend {
            source: Box::new(source),
            sink: std::sync::Arc::new(sink),
            display,
        });
    }
    Err(unusable(url))
}

/// The error for a URL no backend of this build takes: a missing feature, or a bad scheme.
fn unusable(url: &str) -> QueueError {
    let url = redact(url);
    match crate::features::missing_for_url(&url) {
        Some(feature) => QueueError::NotBuilt { url, feature },
        None => QueueError::Url { url },
    }
}

/// Where events go.
#[async_trait]
pub trait EventSink: Send + Sync + fmt::Debug {
    /// Publishes `event` durably (an event with an id already published is not duplicated).
    async fn publish(&self, event: &Event) -> Result<(), QueueError>;

    /// Most events [`EventSink::publish_batch`] takes at once with advantage (1: it publishes
    /// them one by one).
    fn max_batch(&self) -> usize {
        1
    }

    /// Whether events nobody waits for are worth holding a moment for company: where each
    /// batch is a request of its own (SQS), or where each event sent alone costs the broker
    /// and the watchers work that a batch shares (AMQP). False for a spool.
    fn lingers(&self) -> bool {
        false
    }

    /// Publishes `events`, in one request where the backend has a batch call (SQS's
    /// `SendMessageBatch`): which of them went out, and the first error. By default one by
    /// one, stopping at the first failure.
    async fn publish_batch(&self, events: &[Event]) -> Batch {
        let mut out = Batch {
            published: vec![false; events.len()],
            error: None,
        };
        for (i, e) in events.iter().enumerate() {
            match self.publish(e).await {
                Ok(()) => out.published[i] = true,
                Err(err) => {
                    out.error = Some(err);
                    break;
                }
            }
        }
        out
    }

    /// [`EventSink::publish_batch`] of events the outbox holds durably: `stored[i]` is the
    /// file of `events[i]` (its JSON, as a spool writes an event), or `stored` is shorter. A
    /// sink that keeps events as files on the same filesystem (the spool) links them instead
    /// of writing them again. By default `publish_batch`.
    async fn publish_stored(&self, events: &[Event], stored: &[std::path::PathBuf]) -> Batch {
        let _ = stored;
        self.publish_batch(events).await
    }

    /// Removes events this sink keeps itself (the spool's `events/`) published before
    /// `before`; returns how many. Brokers keep no such history: a no-op there.
    ///
    /// # Errors
    /// The store cannot be listed.
    fn prune(&self, _before: std::time::SystemTime) -> Result<usize, QueueError> {
        Ok(0)
    }
}

/// What [`EventSink::publish_batch`] did.
#[derive(Debug)]
pub struct Batch {
    /// Per event, in order: whether it was published.
    pub published: Vec<bool>,
    /// The first failure, if any (the events not published are tried again later).
    pub error: Option<QueueError>,
}

impl Batch {
    /// The batch as one result: its first failure, if any (how a sink publishes one event as a
    /// batch of one).
    ///
    /// # Errors
    /// The batch's first failure.
    pub fn into_result(self) -> Result<(), QueueError> {
        self.error.map_or(Ok(()), Err)
    }
}

#[cfg(test)]
mod tests {

    use super::*;

    #[test]
    fn redact_hides_passwords_only() {
        assert_eq!(
            redact("amqp://guest:s3cret@127.0.0.1:5672/%2f"),
            "amqp://guest:***@127.0.0.1:5672/%2f"
        );
        assert_eq!(redact("sqs://jobs"), "sqs://jobs");
        assert_eq!(redact("spool:///var/spool/x"), "spool:///var/spool/x");
    }
}
