//! The queue port: where commands come from ([`CommandSource`]), how each is settled
//! ([`Settle`]: ack, requeue, dead-letter), and where events go ([`EventSink`]). Backends are
//! chosen by URL scheme; only domain types (bytes, [`crate::protocol::Event`]) cross the port.
//!
//! Backends: [`spool`] (`spool://DIR`, the embedded zero-dependency default). AMQP and SQS follow
//! the same contract.

pub mod spool;

use std::fmt;
use std::path::PathBuf;

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
}

impl Classify for QueueError {
    fn kind(&self) -> Kind {
        match self {
            QueueError::Url { .. } => Kind::Invalid,
            QueueError::Io { .. } | QueueError::Publish(_) => Kind::Unavailable,
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
    /// How to settle it.
    pub settle: Box<dyn Settle>,
}

/// Settling a delivery: exactly one of these, once.
#[async_trait]
pub trait Settle: Send + fmt::Debug {
    /// Done: the outcome is durable; remove the message.
    async fn ack(self: Box<Self>) -> Result<(), QueueError>;
    /// Not done: give it back for this or another agent (retryable failure, drain).
    async fn requeue(self: Box<Self>) -> Result<(), QueueError>;
    /// Never: move it to the dead-letter queue with `reason`.
    async fn dead_letter(self: Box<Self>, reason: &str) -> Result<(), QueueError>;
}

/// Where commands come from.
#[async_trait]
pub trait CommandSource: Send + fmt::Debug {
    /// The next command, waiting for one; `None` once the source is closed.
    ///
    /// # Cancel safety
    /// Cancel safe: a command is claimed only when it is returned.
    async fn next(&mut self) -> Result<Option<Delivery>, QueueError>;
}

/// Where events go.
#[async_trait]
pub trait EventSink: Send + Sync + fmt::Debug {
    /// Publishes `event` durably (an event with an id already published is not duplicated).
    async fn publish(&self, event: &Event) -> Result<(), QueueError>;
}
