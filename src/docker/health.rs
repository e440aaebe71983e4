//! Whether the container engine answers, watched by one task for the whole agent: the control
//! plane takes no new commands while it does not (see docs/reliability.md).

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use super::ContainerRuntime;

/// How long one ping may take before the engine counts as not answering.
pub const PING_TIMEOUT: Duration = Duration::from_secs(2);

/// Whether `runtime` answers a ping within [`PING_TIMEOUT`].
pub async fn answers(runtime: &dyn ContainerRuntime) -> bool {
    matches!(
        tokio::time::timeout(PING_TIMEOUT, runtime.ping()).await,
        Ok(Ok(()))
    )
}

/// The engine's health as last seen; cheap to clone.
#[derive(Debug, Clone)]
pub struct EngineHealth {
    tx: Arc<watch::Sender<bool>>,
}

impl Default for EngineHealth {
    /// An engine taken to be up (until a watch says otherwise).
    fn default() -> Self {
        EngineHealth::new(true)
    }
}

impl EngineHealth {
    /// A health starting as `up`.
    pub fn new(up: bool) -> Self {
        EngineHealth {
            tx: Arc::new(watch::Sender::new(up)),
        }
    }

    /// Whether the engine answered its last ping.
    pub fn is_up(&self) -> bool {
        *self.tx.borrow()
    }

    /// Records a ping's outcome; true when it changed the health.
    pub fn set(&self, up: bool) -> bool {
        self.tx.send_if_modified(|v| std::mem::replace(v, up) != up)
    }

    /// Returns once the engine is up.
    pub async fn until_up(&self) {
        let mut rx = self.tx.subscribe();
        // The sender lives as long as `self`, so this cannot fail.
        let _ = rx.wait_for(|up| *up).await;
    }

    /// Pings `runtime` every `every` until `stop`, logging each change of health once.
    pub fn watch(
        &self,
        runtime: Arc<dyn ContainerRuntime>,
        every: Duration,
        stop: CancellationToken,
    ) -> tokio::task::JoinHandle<()> {
        let health = self.clone();
        tokio::spawn(async move {
            loop {
                let up = answers(runtime.as_ref()).await;
                if health.set(up) {
                    if up {
                        tracing::info!("The container engine answers again; taking commands.");
                    } else {
                        tracing::warn!(
                            "The container engine does not answer: no new commands are taken, and accepted jobs wait for it."
                        );
                    }
                }
                tokio::select! {
                    () = stop.cancelled() => return,
                    () = tokio::time::sleep(every) => {}
                }
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn changes_are_reported_once_and_waiters_wake() {
        let h = EngineHealth::new(false);
        assert!(!h.is_up());
        assert!(!h.set(false));
        let waiter = tokio::spawn({
            let h = h.clone();
            async move { h.until_up().await }
        });
        assert!(h.set(true));
        assert!(!h.set(true));
        waiter.await.unwrap();
        assert!(h.is_up());
    }
}
