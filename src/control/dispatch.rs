//! Dispatch: each delivery is decoded, admitted and routed (a job, a request, a duplicate of
//! either, or a rejection to the DLQ), jobs journaled before a restart are resumed, and
//! deliveries are settled.

use super::*;

impl Inner {
    pub(super) async fn settle_later(&self, settle: Box<dyn Settle>, f: SettleAction) {
        let r = match f {
            SettleAction::Ack(_) => settle.ack().await,
            SettleAction::Requeue => settle.requeue().await,
        };
        if let (Ok(()), SettleAction::Ack(kind)) = (&r, f) {
            self.metrics.acked(kind);
        }
        if let Err(e) = r {
            tracing::warn!(error = %crate::error::chain(&e), "Settling a command failed; the broker will redeliver it and the journal dedupes it.");
        }
    }

    /// Rejects a command: a `command.rejected` event (to `reply_to` too, when given), then the
    /// dead-letter queue.
    pub(super) async fn reject<E: Classify + std::error::Error>(
        &self,
        settle: Box<dyn Settle>,
        command_id: Option<String>,
        reply_to: Option<&str>,
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
        if let Some(r) = reply_to {
            ev.labels
                .insert(crate::protocol::REPLY_TO_LABEL.into(), r.to_string());
        }
        if let Err(err) = self.emit_durable(&[ev]) {
            tracing::error!(error = %crate::error::chain(&err), "Could not record the rejection; handing the command back.");
            return self.settle_later(settle, SettleAction::Requeue).await;
        }
        match settle.dead_letter(&e.to_string()).await {
            Ok(()) => self.metrics.rejected(e.kind, true),
            Err(err) => {
                self.metrics.rejected(e.kind, false);
                tracing::warn!(error = %crate::error::chain(&err), "Dead-lettering failed; the broker will redeliver it.");
            }
        }
    }

    /// Resumes the jobs the journal says this agent owns.
    pub(super) async fn resume(self: &Arc<Self>, source: &dyn CommandSource) {
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
            // so a new job's admission cannot reclaim it (and kill its container) first. The
            // alloc id is the command's derived one even when the journal has not recorded it
            // yet (a crash right after the alloc was made).
            let alloc = entry.alloc.clone().unwrap_or_else(|| job_alloc_id(&req.id));
            if let Err(e) = self
                .pool
                .keepalive(&alloc, chrono::Duration::seconds(120))
                .await
            {
                tracing::debug!(%alloc, error = %crate::error::chain(&e), "Keeping a resumed job's alloc alive.");
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

    pub(super) async fn handle(self: Arc<Self>, d: Delivery, intake: OwnedSemaphorePermit) {
        let Delivery {
            body,
            attempt,
            settle,
            ..
        } = d;
        let req = match decode_command(&body) {
            Ok(r) => r,
            Err(e) => {
                self.metrics.received("undecodable", attempt > 1);
                return self
                    .reject(settle, guess_id(&body), None, &Rejection::from(e))
                    .await;
            }
        };
        self.metrics.received(req.command.kind(), attempt > 1);
        if let Some(t) = req.time {
            let lag = self.clock.now() - t;
            self.metrics.lag(lag.num_milliseconds() as f64 / 1000.0);
        }
        let span = tracing::info_span!("command", command_id = %req.id, kind = req.command.kind(), attempt);
        async move {
            tracing::debug!("Command received.");
            if let Err(e) = self
                .cfg
                .security
                .admit(&body, &req.command)
                .and_then(|()| self.cfg.security.admit_time(req.time, self.clock.now()))
            {
                // Replies go where an authentic command asks; one that failed its signature
                // check does not get to direct the agent's messages, beyond a copy of its
                // rejection in a client's own queue (`protocol::is_client_queue`).
                let reply_to = req.reply_to.as_deref().filter(|r| {
                    !e.is_authentication() || crate::protocol::is_client_queue(r)
                });
                return self.reject(settle, Some(req.id.clone()), reply_to, &Rejection::from(e)).await;
            }
            if let Command::Job(spec) = &req.command
                && let Some(asked) = spec.timeout_secs
                && (asked == 0 || asked > self.cfg.max_job.as_secs())
            {
                let e = Rejection::JobTooLong { asked, max: self.cfg.max_job.as_secs() };
                return self.reject(settle, Some(req.id.clone()), req.reply_to.as_deref(), &e).await;
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
                        return self.reject(settle, Some(req.id.clone()), req.reply_to.as_deref(), &e).await;
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
    pub(super) async fn claim(&self, req: &Request, settle: Box<dyn Settle>) -> bool {
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
    pub(super) async fn hand_back(&self, req: &Request) {
        self.release_claim(&req.id).await;
        let held = self.active.lock().await.remove(&req.id).unwrap_or_default();
        for s in held {
            self.settle_later(s, SettleAction::Requeue).await;
        }
    }
}

/// The command id in `bytes`, if it can be read at all (for rejections).
pub(super) fn guess_id(bytes: &[u8]) -> Option<String> {
    let v: serde_json::Value = serde_json::from_slice(bytes).ok()?;
    let id = v.get("id")?.as_str()?;
    (id.len() <= crate::protocol::MAX_ID_LEN).then(|| id.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn guess_id_reads_what_it_can() {
        assert_eq!(guess_id(br#"{"id":"x-1","v":9}"#).as_deref(), Some("x-1"));
        assert_eq!(guess_id(b"\xff\xfe"), None);
        assert_eq!(
            guess_id(format!(r#"{{"id":"{}"}}"#, "a".repeat(500)).as_bytes()),
            None
        );
    }
}
