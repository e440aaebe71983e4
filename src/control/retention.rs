//! Retention: pruning done journal entries, stored results and spool events.

use super::*;

/// Prunes done journal entries, stored results and spool events older than the retention: a
/// minute after the start, then every tenth of the retention (at most hourly). Only file ages
/// are read, in a blocking task.
pub(super) async fn prune_loop(inner: Arc<Inner>) {
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

pub(super) fn warn_zero(what: &str, e: &dyn std::error::Error) -> usize {
    tracing::warn!(what, error = %crate::error::chain(&e), "Pruning failed; trying again later.");
    0
}
