//! The TaskDB port: rows recording a pool's and its allocs' lives (resources, start, keepalive,
//! end) for fleet accounting. [`NoopTaskDb`] when none is configured; [`MemoryTaskDb`] records
//! calls for tests; [`dynamodb::DynamoDbTaskDb`] for fleets. The same table keeps the fleet's
//! claims on commands ([`claims`]).

pub mod claims;
#[cfg(feature = "dynamodb")]
pub mod dynamodb;

use std::fmt;
use std::sync::Mutex;

use async_trait::async_trait;
use thiserror::Error;

use crate::digest::Digest;
use crate::error::{Classify, Kind};
use crate::resources::Resources;
use crate::time::Time;

/// TaskDB failures.
#[derive(Debug, Error)]
pub enum TaskDbError {
    /// The service throttled the request or failed transiently.
    #[error("{op}: temporary failure: {message}")]
    Temporary {
        /// The operation.
        op: &'static str,
        /// The service's message.
        message: String,
    },
    /// The request was refused or malformed.
    #[error("{op}: {message}")]
    Permanent {
        /// The operation.
        op: &'static str,
        /// The service's message.
        message: String,
    },
}

impl Classify for TaskDbError {
    fn kind(&self) -> Kind {
        match self {
            TaskDbError::Temporary { .. } => Kind::Temporary,
            TaskDbError::Permanent { .. } => Kind::Fatal,
        }
    }
}

/// The row id of an alloc: SHA-256 of `<pool id>/<alloc id>`.
pub fn alloc_row(pool_id: &str, alloc_id: &str) -> Digest {
    Digest::of(format!("{pool_id}/{alloc_id}").as_bytes())
}

/// The row id of a pool: SHA-256 of the pool id.
pub fn pool_row(pool_id: &str) -> Digest {
    Digest::of(pool_id.as_bytes())
}

/// Where pools and allocs are recorded.
#[async_trait]
pub trait TaskDb: Send + Sync + fmt::Debug {
    /// Records a pool: its resources and start time.
    async fn start_pool(
        &self,
        row: Digest,
        pool_id: &str,
        resources: &Resources,
        start: Time,
    ) -> Result<(), TaskDbError>;
    /// Records an alloc of a pool.
    async fn start_alloc(
        &self,
        row: Digest,
        pool: Digest,
        alloc_id: &str,
        resources: &Resources,
        start: Time,
    ) -> Result<(), TaskDbError>;
    /// Moves a row's keepalive (pool or alloc) to `until`.
    async fn keepalive(&self, row: Digest, until: Time) -> Result<(), TaskDbError>;
    /// Sets a row's end time (pool or alloc).
    async fn set_end_time(&self, row: Digest, end: Time) -> Result<(), TaskDbError>;
    /// Sets a pool row's `State` (`draining`) and when it changed, for autoscalers.
    async fn set_state(&self, row: Digest, state: &str, at: Time) -> Result<(), TaskDbError>;
}

/// A TaskDB that records nothing.
#[derive(Debug, Default, Clone, Copy)]
pub struct NoopTaskDb;

#[async_trait]
impl TaskDb for NoopTaskDb {
    async fn start_pool(
        &self,
        _: Digest,
        _: &str,
        _: &Resources,
        _: Time,
    ) -> Result<(), TaskDbError> {
        Ok(())
    }
    async fn start_alloc(
        &self,
        _: Digest,
        _: Digest,
        _: &str,
        _: &Resources,
        _: Time,
    ) -> Result<(), TaskDbError> {
        Ok(())
    }
    async fn keepalive(&self, _: Digest, _: Time) -> Result<(), TaskDbError> {
        Ok(())
    }
    async fn set_end_time(&self, _: Digest, _: Time) -> Result<(), TaskDbError> {
        Ok(())
    }
    async fn set_state(&self, _: Digest, _: &str, _: Time) -> Result<(), TaskDbError> {
        Ok(())
    }
}

/// One recorded call of a [`MemoryTaskDb`].
#[derive(Debug, Clone, PartialEq)]
pub enum TaskDbCall {
    /// `start_pool`.
    StartPool(Digest),
    /// `start_alloc`.
    StartAlloc(Digest, String),
    /// `keepalive`.
    Keepalive(Digest, Time),
    /// `set_end_time`.
    End(Digest, Time),
    /// `set_state`.
    State(Digest, String),
}

/// A TaskDB that records calls in memory; for tests.
#[derive(Debug, Default)]
pub struct MemoryTaskDb {
    calls: Mutex<Vec<TaskDbCall>>,
}

impl MemoryTaskDb {
    /// The calls so far.
    pub fn calls(&self) -> Vec<TaskDbCall> {
        crate::par::lock(&self.calls).clone()
    }

    fn push(&self, c: TaskDbCall) {
        crate::par::lock(&self.calls).push(c);
    }
}

#[async_trait]
impl TaskDb for MemoryTaskDb {
    async fn start_pool(
        &self,
        row: Digest,
        _: &str,
        _: &Resources,
        _: Time,
    ) -> Result<(), TaskDbError> {
        self.push(TaskDbCall::StartPool(row));
        Ok(())
    }
    async fn start_alloc(
        &self,
        row: Digest,
        _: Digest,
        alloc_id: &str,
        _: &Resources,
        _: Time,
    ) -> Result<(), TaskDbError> {
        self.push(TaskDbCall::StartAlloc(row, alloc_id.to_string()));
        Ok(())
    }
    async fn keepalive(&self, row: Digest, until: Time) -> Result<(), TaskDbError> {
        self.push(TaskDbCall::Keepalive(row, until));
        Ok(())
    }
    async fn set_end_time(&self, row: Digest, end: Time) -> Result<(), TaskDbError> {
        self.push(TaskDbCall::End(row, end));
        Ok(())
    }
    async fn set_state(&self, row: Digest, state: &str, _: Time) -> Result<(), TaskDbError> {
        self.push(TaskDbCall::State(row, state.to_string()));
        Ok(())
    }
}
