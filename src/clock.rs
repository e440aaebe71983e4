//! The clock port: every read of wall-clock time goes through a [`Clock`], so tests can fix it.

use std::fmt;
use std::sync::{Arc, Mutex};

use crate::time::Time;

/// Source of wall-clock time.
pub trait Clock: Send + Sync + fmt::Debug {
    /// The current time.
    fn now(&self) -> Time;
}

/// The system clock.
#[derive(Debug, Clone, Copy, Default)]
pub struct SystemClock;

impl Clock for SystemClock {
    #[allow(clippy::disallowed_methods)] // The one sanctioned read of the system clock.
    fn now(&self) -> Time {
        chrono::Utc::now()
    }
}

/// A clock that only moves when told to; for tests.
#[derive(Debug, Clone)]
pub struct ManualClock(Arc<Mutex<Time>>);

impl ManualClock {
    /// A clock standing at `t`.
    pub fn new(t: Time) -> Self {
        ManualClock(Arc::new(Mutex::new(t)))
    }

    /// Moves the clock forward by `d`.
    pub fn advance(&self, d: chrono::Duration) {
        let mut t = crate::par::lock(&self.0);
        *t += d;
    }
}

impl Clock for ManualClock {
    fn now(&self) -> Time {
        *crate::par::lock(&self.0)
    }
}
