//! Events: building them (deterministic ids), the durable outbox, the publisher that empties it
//! in order, and the heartbeat.

use super::*;

impl Inner {
    pub(super) fn first_report(&self, what: &str) -> bool {
        lock(&self.reported).insert(what.to_string())
    }

    /// An event caused by the agent itself (`cause` names the occasion, for its id).
    pub(super) fn agent_event(&self, cause: &str, body: EventBody) -> Event {
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
    pub(super) fn lifecycle_event(&self, body: EventBody) -> Event {
        let cause = format!("{} {}", body.kind(), self.incarnation);
        self.agent_event(&cause, body)
    }

    /// An event caused by command `req` (the `seq`th of its kind). It goes to the command's
    /// `reply_to` too, when it names one (the `reply_to` label).
    pub(super) fn command_event(&self, req: &Request, seq: u64, body: EventBody) -> Event {
        let labels = req
            .reply_to
            .iter()
            .map(|r| (crate::protocol::REPLY_TO_LABEL.to_string(), r.clone()))
            .collect();
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
            labels,
        }
    }

    /// A job's `exec.state` event, with the exec's manifest; its id is one per state.
    pub(super) fn exec_state_event(
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
    pub(super) fn emit(&self, events: &[Event]) {
        if let Err(e) = self.outbox.add(events) {
            tracing::error!(error = %crate::error::chain(&e), "Writing events to the outbox failed.");
        }
        self.outbox_wake.notify_one();
    }

    /// Like [`Inner::emit`], for outcomes: the caller must not settle when this fails.
    pub(super) fn emit_durable(&self, events: &[Event]) -> Result<(), JournalError> {
        self.outbox.add(events)?;
        self.outbox_wake.notify_one();
        Ok(())
    }

    /// Waits until `events` have left the outbox (the broker confirmed them), up to
    /// [`OUTCOME_PATIENCE`], and once a drain has begun up to [`DRAIN_PUBLISH_PATIENCE`] more;
    /// false when they have not by then (the outbox keeps them for the next start).
    pub(super) async fn until_published(&self, events: &[Event]) -> bool {
        // Someone waits: the publisher holds nothing back meanwhile.
        let _waiting = Awaiting::new(&self.awaiting);
        let mut changed = self.published.subscribe();
        let deadline = tokio::time::Instant::now() + OUTCOME_PATIENCE;
        // A drain does not wait out the whole patience for a broker that is not answering.
        let drained = async {
            self.draining.cancelled().await;
            tokio::time::sleep(DRAIN_PUBLISH_PATIENCE).await;
        };
        tokio::pin!(drained);
        let ids: Vec<&str> = events.iter().map(|e| e.id.as_str()).collect();
        loop {
            let waiting = self.outbox.holds_any(&ids).unwrap_or(true);
            if !waiting {
                return true;
            }
            self.outbox_wake.notify_one();
            tokio::select! {
                () = tokio::time::sleep_until(deadline) => return false,
                () = &mut drained => return false,
                _ = changed.changed() => {}
                () = tokio::time::sleep(Duration::from_secs(1)) => {}
            }
        }
    }
}

/// Event kinds a producer waits for: its outcome, its reply, its rejection, corrupt data.
fn awaited(kind: &str) -> bool {
    matches!(
        kind,
        "exec.completed" | "command.result" | "command.rejected" | "integrity.error"
    )
}

/// Publishes the outbox in order until `stop`, retrying with backoff while the broker is away:
/// up to [`crate::queue::EventSink::max_batch`] events per request, and events of kinds the
/// operator does not publish (`queue.publish`) removed unsent.
///
/// Where the sink batches ([`crate::queue::EventSink::lingers`]), events nobody waits for (an
/// exec's `running` state, `alloc.freed`, heartbeats) wait up to [`ControlConfig::linger`] for company: on
/// SQS they ride in the request of the next outcome instead of taking a request each, on AMQP
/// in its pipelined batch. Anything a producer or a settle waits for goes at once, with
/// everything before it.
pub(super) async fn publish_loop(inner: Arc<Inner>, stop: CancellationToken) {
    let mut backoff =
        crate::backoff::Backoff::new(Duration::from_millis(100), 2.0, Duration::from_secs(10));
    let per_request = inner.sink.max_batch().max(1);
    let mut held_since: Option<tokio::time::Instant> = None;
    loop {
        let mut failed = false;
        let mut again = false;
        match inner.outbox.pending() {
            Ok(pending) => {
                inner.metrics.outbox(pending.len());
                if per_request > 1 && inner.sink.lingers() {
                    let sendable: Vec<&Event> = pending
                        .iter()
                        .map(|(_, e)| e)
                        .filter(|e| inner.cfg.publishes(e.body.kind()))
                        .collect();
                    let urgent = inner.awaiting.load(std::sync::atomic::Ordering::SeqCst) > 0
                        || sendable.len() >= per_request
                        || sendable.iter().any(|e| awaited(e.body.kind()));
                    if !sendable.is_empty() && !urgent {
                        let since = *held_since.get_or_insert_with(tokio::time::Instant::now);
                        if since.elapsed() < inner.cfg.linger {
                            tokio::select! {
                                () = stop.cancelled() => return,
                                () = inner.outbox_wake.notified() => {}
                                () = tokio::time::sleep_until(since + inner.cfg.linger) => {}
                            }
                            continue;
                        }
                    }
                    held_since = None;
                }
                for chunk in pending.chunks(per_request) {
                    let (send, skip): (Vec<_>, Vec<_>) = chunk
                        .iter()
                        .partition(|(_, e)| inner.cfg.publishes(e.body.kind()));
                    for (name, _) in skip {
                        inner.published_one(name);
                    }
                    if send.is_empty() {
                        continue;
                    }
                    let events: Vec<Event> = send.iter().map(|(_, e)| e.clone()).collect();
                    let stored: Vec<_> = send.iter().map(|(n, _)| inner.outbox.file(n)).collect();
                    // A publish still under way at stop is dropped: the events stay in the
                    // outbox and go out at the next start (consumers dedupe by event id).
                    let out = tokio::select! {
                        () = stop.cancelled() => return,
                        r = inner.sink.publish_stored(&events, &stored) => r,
                    };
                    for ((name, _), ok) in send.iter().zip(&out.published) {
                        if *ok {
                            inner.published_one(name);
                        }
                    }
                    if let Some(e) = out.error {
                        tracing::warn!(error = %crate::error::chain(&e), events = events.len(), "Publishing failed; retrying.");
                        failed = true;
                        break;
                    }
                    backoff.reset();
                    if !out.published.iter().all(|p| *p) {
                        // Some did not fit in the request: read the outbox again now.
                        again = true;
                        break;
                    }
                }
            }
            Err(e) => {
                tracing::warn!(error = %crate::error::chain(&e), "Reading the outbox failed.");
                failed = true;
            }
        }
        if again {
            continue;
        }
        let wait = if failed {
            backoff.next_delay()
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

impl Inner {
    /// An event left the outbox (sent, or not to be sent): removes it and wakes those waiting
    /// on [`Inner::until_published`].
    fn published_one(&self, name: &str) {
        if let Err(e) = self.outbox.remove(name) {
            tracing::warn!(error = %crate::error::chain(&e), "Removing a published event failed.");
        }
        self.metrics.outbox_sent();
        self.published.send_modify(|n| *n += 1);
    }
}

/// Publishes heartbeats, and alloc-expiry and integrity events as they are noticed.
pub(super) async fn heartbeat_loop(inner: Arc<Inner>, stop: CancellationToken) {
    let mut n = 0u64;
    loop {
        let free = inner.pool.available().await;
        let allocs = inner.pool.allocs().await;
        let now = inner.clock.now();
        let mut running = 0u64;
        let mut events = Vec::new();
        for a in &allocs {
            running += a.running_execs() as u64;
            if a.expires() < now && inner.first_report(&format!("expired {}", a.id())) {
                let mut e =
                    inner.agent_event(&format!("expired {}", a.id()), EventBody::AllocExpired {});
                e.alloc = Some(a.id().to_string());
                events.push(e);
            }
            let sig = a.integrity();
            if sig.count > 0 && inner.first_report(&format!("integrity {} {}", a.id(), sig.count)) {
                inner.metrics.integrity_error();
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
        inner.notifier.notify(&format!(
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
        inner.metrics.heartbeat(now.timestamp());
        n += 1;
        tokio::select! {
            () = stop.cancelled() => return,
            () = tokio::time::sleep(inner.cfg.heartbeat) => {}
        }
    }
}

/// Counts a waiter on the outbox for as long as it lives.
struct Awaiting<'a>(&'a std::sync::atomic::AtomicUsize);

impl<'a> Awaiting<'a> {
    fn new(n: &'a std::sync::atomic::AtomicUsize) -> Self {
        n.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        Awaiting(n)
    }
}

impl Drop for Awaiting<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, std::sync::atomic::Ordering::SeqCst);
    }
}
