//! Requests (`offers`, `alloc.*`, `exec.*`, `load`, ...): run against the pool, answered with a
//! `command.result`, their outcome journaled when they change state.

use super::*;

impl Inner {
    /// Answers a request command with a `command.result` (plus any side events), journaling the
    /// outcome of commands that change state, and acks it.
    pub(super) async fn request(&self, req: Request, settle: Box<dyn Settle>) {
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
        let reply = self.command_event(
            &req,
            0,
            EventBody::CommandResult {
                command_id: req.id.clone(),
                value,
                error,
            },
        );
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
    pub(super) async fn execute(
        &self,
        req: &Request,
    ) -> (Result<serde_json::Value, ReflowError>, Vec<Event>) {
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
                        .or_reflow(op)?;
                    to_json(&a.inspect())
                }
                Command::AllocKeepalive { alloc, interval_ns } => {
                    let granted = pool
                        .keepalive(alloc, chrono::Duration::nanoseconds(*interval_ns))
                        .await
                        .or_reflow(op)?;
                    serde_json::json!({ "granted_ns": granted.num_nanoseconds() })
                }
                Command::AllocFree { alloc } => {
                    pool.free(alloc).await.or_reflow(op)?;
                    let mut e = self.command_event(req, 0, EventBody::AllocFreed {});
                    e.alloc = Some(alloc.clone());
                    extra.push(e);
                    serde_json::json!({})
                }
                Command::AllocInspect { alloc } => {
                    to_json(&pool.alloc(alloc).await.or_reflow(op)?.inspect())
                }
                Command::ExecPut { alloc, exec, config } => {
                    let a = pool.alloc(alloc).await.or_reflow(op)?;
                    let x = a
                        .executor()
                        .put(*exec, config.clone())
                        .await
                        .or_reflow(op)?;
                    to_json(&x.inspect())
                }
                Command::ExecInspect { alloc, exec } => {
                    let a = pool.alloc(alloc).await.or_reflow(op)?;
                    to_json(&a.executor().inspect(exec).await.or_reflow(op)?)
                }
                Command::ExecResult { alloc, exec } => {
                    let a = pool.alloc(alloc).await.or_reflow(op)?;
                    let x = a.executor().get(exec).or_reflow(op)?;
                    to_json(&x.result()?)
                }
                Command::ExecLogs { alloc, exec, stdout, stderr } => {
                    let a = pool.alloc(alloc).await.or_reflow(op)?;
                    let x = a.executor().get(exec).or_reflow(op)?;
                    let logs = x.logs(*stdout, *stderr)?;
                    // Events stay small: the last 64 KiB.
                    let tail = &logs[logs.len().saturating_sub(64 << 10)..];
                    serde_json::json!({ "logs": String::from_utf8_lossy(tail), "bytes": logs.len() })
                }
                Command::ExecPromote { alloc, exec } => {
                    let a = pool.alloc(alloc).await.or_reflow(op)?;
                    a.executor().promote(exec).await.or_reflow(op)?;
                    serde_json::json!({})
                }
                Command::ExecRemove { alloc, exec } => {
                    let a = pool.alloc(alloc).await.or_reflow(op)?;
                    a.executor().remove(exec).await.or_reflow(op)?;
                    serde_json::json!({})
                }
                Command::Load { alloc, repo_url, fileset } => {
                    let a = pool.alloc(alloc).await.or_reflow(op)?;
                    to_json(&a.executor().load(repo_url, fileset).await.or_reflow(op)?)
                }
                Command::Unload { alloc, fileset } => {
                    let a = pool.alloc(alloc).await.or_reflow(op)?;
                    a.executor().unload(fileset).or_reflow(op)?;
                    serde_json::json!({})
                }
                Command::Verify { alloc, fileset } => {
                    let a = pool.alloc(alloc).await.or_reflow(op)?;
                    a.executor().verify_integrity(fileset).await.or_reflow(op)?;
                    serde_json::json!({})
                }
                Command::Job(_) => unreachable!("jobs are not requests"),
            })
        }
        .await;
        (r, extra)
    }
}

/// A reply value.
pub(super) fn to_json<T: serde::Serialize>(v: &T) -> serde_json::Value {
    serde_json::to_value(v).unwrap_or(serde_json::Value::Null)
}

/// The alloc a command addresses.
pub(super) fn command_alloc(c: &Command) -> Option<String> {
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
pub(super) fn changes_state(c: &Command) -> bool {
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

#[cfg(test)]
mod tests {
    use super::*;

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
