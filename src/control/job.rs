//! The job path: wait for a slot and room, journal, run the exec with its time limit and its
//! attempts, send the outputs, record the outcome, then settle every delivery of the job.

use super::lease::FleetClaim;
use super::*;

impl Inner {
    /// Waits for room, journals the job and runs it. Until it is journaled it is not started: a
    /// drain hands it back.
    pub(super) async fn accept_job(
        self: &Arc<Self>,
        req: Request,
        spec: JobSpec,
        body: &[u8],
        lease: Option<String>,
        intake: OwnedSemaphorePermit,
    ) {
        let entry = Entry {
            v: JOURNAL_VERSION,
            command_id: req.id.clone(),
            kind: "job".into(),
            phase: Phase::Accepted,
            command: serde_json::from_slice(body).unwrap_or(serde_json::Value::Null),
            alloc: None,
            exec: None,
            lease,
            outcome: Vec::new(),
            accepted: self.clock.now(),
        };
        self.start_job(req, spec, entry, intake).await;
    }

    /// Starts a claimed job: a slot, room in the pool and a journal entry, then [`Self::run_job`].
    pub(super) async fn start_job(
        self: &Arc<Self>,
        req: Request,
        spec: JobSpec,
        entry: Entry,
        intake: OwnedSemaphorePermit,
    ) {
        let want = job_want(&spec);
        if !self.pool.resources().available(&want) {
            tracing::warn!(want = %want, have = %self.pool.resources(), "The job is larger than this agent; handing it back for a larger one.");
            tokio::time::sleep(self.cfg.retry_base).await;
            return self.hand_back(&req).await;
        }
        // The fleet's claim before anything here starts: a job another agent runs is not
        // started beside it.
        match self.fleet_claim(&req).await {
            FleetClaim::Start => {}
            FleetClaim::Drain => return self.hand_back(&req).await,
            FleetClaim::DoneElsewhere => {
                let held = self.active.lock().await.remove(&req.id).unwrap_or_default();
                for s in held {
                    self.settle_later(s, SettleAction::Ack("job")).await;
                }
                return;
            }
        }
        // A slot, then room in the pool; a drain meanwhile hands the job back.
        let slot = tokio::select! {
            () = self.draining.cancelled() => return self.hand_back(&req).await,
            s = self.run_slots.clone().acquire_owned() => s.ok(),
        };
        if !self.engine.is_up() {
            tracing::warn!("The container engine does not answer; handing the job back unstarted.");
            tokio::time::sleep(self.cfg.retry_base).await;
            return self.hand_back(&req).await;
        }
        let mut entry = entry;
        if !self.reserve(&req, &spec, &mut entry).await {
            return self.hand_back(&req).await;
        }
        tracing::debug!(command_id = %req.id, "Alloc reserved.");
        // The exec id is the config's digest: journaled now, with the alloc, so starting the
        // exec needs no second journal write.
        entry.exec = Some(job_exec_id(&spec));
        if let Err(e) = self.journal.put(&entry) {
            tracing::warn!(error = %crate::error::chain(&e), "Journaling the job failed; handing it back.");
            return self.hand_back(&req).await;
        }
        tracing::debug!(command_id = %req.id, "Job journaled.");
        // The intake permit is kept while the job runs: `prefetch` bounds every command held.
        self.run_job(req, spec, entry, slot).await;
        drop(intake);
    }

    /// Reserves the job's alloc before the job is journaled: the pool checks and takes the free
    /// resources in one step, so two jobs can never both pass a check only one of them fits. A
    /// job that fits the agent but not beside the running ones waits here, keeping its delivery
    /// (its lease is kept by [`lease_loop`]); waiting is not an attempt. False when a drain began
    /// meanwhile (hand the job back). Any other pool failure is left to the job's attempts.
    pub(super) async fn reserve(&self, req: &Request, spec: &JobSpec, entry: &mut Entry) -> bool {
        let alloc_id = job_alloc_id(&req.id);
        let mut waited = false;
        loop {
            match self.pool.new_alloc_as(&alloc_id, job_meta(req, spec)).await {
                Ok(_) => {
                    entry.alloc = Some(alloc_id);
                    if waited {
                        tracing::info!(command_id = %req.id, "Room freed up; the job starts.");
                    }
                    return true;
                }
                Err(e) if e.kind() == Kind::ResourcesExhausted => {
                    if !waited {
                        tracing::info!(command_id = %req.id, want = %job_want(spec), "The job waits for room beside the running jobs.");
                        waited = true;
                    }
                }
                Err(e) => {
                    tracing::warn!(command_id = %req.id, error = %crate::error::chain(&e), "Reserving the job's alloc failed; the job's attempts take over.");
                    return true;
                }
            }
            tokio::select! {
                () = self.draining.cancelled() => return false,
                () = tokio::time::sleep(Duration::from_millis(100)) => {}
            }
        }
    }

    /// Runs a journaled job to its outcome and settles every delivery attached to it.
    pub(super) async fn run_job(
        self: &Arc<Self>,
        req: Request,
        spec: JobSpec,
        mut entry: Entry,
        slot: Option<OwnedSemaphorePermit>,
    ) {
        let started = self.clock.now();
        let (mut events, stored) = self.job_outcome(&req, &spec, &mut entry).await;
        lock(&self.running).remove(&req.id);
        let oom = match (&entry.alloc, entry.exec) {
            (Some(a), Some(x)) => match self.pool.alloc(a).await {
                Ok(a) => a.oom_source(&x),
                Err(_) => None,
            },
            _ => None,
        };
        let took = (self.clock.now() - started).num_milliseconds() as f64 / 1000.0;
        let result = events
            .iter()
            .find_map(|e| match &e.body {
                EventBody::ExecCompleted { result, .. } => Some(
                    result
                        .err
                        .as_ref()
                        .map_or_else(|| "ok".to_string(), |e| format!("{:?}", e.kind)),
                ),
                _ => None,
            })
            .unwrap_or_else(|| "none".to_string());
        self.metrics.exec_done(took, &result, oom.as_deref());
        let exec = entry.exec;
        for e in &mut events {
            e.alloc = e.alloc.take().or_else(|| entry.alloc.clone());
            e.exec = e.exec.or(exec);
        }
        // A successful result is stored with the outcome, in place before it: an identical job
        // sent after the outcome is seen reuses it (the outbox's publisher, woken by the
        // outcome, never publishes it before the result is stored).
        let result_file = stored.and_then(|(key, stored)| match self.results.file(&key, &stored) {
            Ok(f) => Some(f),
            Err(e) => {
                tracing::warn!(error = %crate::error::chain(&e), "Storing the job result failed (identical jobs will run again).");
                None
            }
        });
        let recorded = self.record_outcome(&req, &events, result_file).await;
        if let Err(e) = recorded {
            // The outcome is not durable, so the command must not be settled: hand every
            // delivery back and release the slot. The journal entry stays unfinished, so a
            // redelivery (or the next start) resumes the job and finds its result again.
            tracing::error!(command_id = %req.id, error = %crate::error::chain(&e), "Could not record the job's outcome; handing the command back.");
            self.release_claim(&req.id).await;
            let held = self.active.lock().await.remove(&req.id).unwrap_or_default();
            for s in held {
                self.settle_later(s, SettleAction::Requeue).await;
            }
            return;
        }
        tracing::debug!(command_id = %req.id, "Job outcome recorded.");
        entry.phase = Phase::Done;
        entry.outcome = events;
        // The journal's done entry is written while the outcome is published, off the path to
        // the event; the command is settled only after both.
        let written = {
            let (inner, entry) = (self.clone(), entry.clone());
            tokio::task::spawn_blocking(move || {
                if let Err(e) = inner.journal.put(&entry) {
                    tracing::error!(error = %crate::error::chain(&e), "Journaling a job outcome failed; a redelivery resumes it and finds the same result.");
                }
            })
        };
        // Published, then settled: a machine that dies between the two leaves the command in
        // the queue, never an acked command whose outcome was only on its disk.
        let published = self.until_published(&entry.outcome).await;
        tracing::debug!(command_id = %req.id, published, "Job outcome published.");
        let _ = written.await;
        let action = if published {
            self.finish_claim(&req.id).await;
            SettleAction::Ack("job")
        } else {
            tracing::warn!(command_id = %req.id, "The job's outcome was not published in time; handing the command back (a redelivery here replays it).");
            self.release_claim(&req.id).await;
            SettleAction::Requeue
        };
        let held = self.active.lock().await.remove(&req.id).unwrap_or_default();
        for s in held {
            self.settle_later(s, action).await;
        }
        self.free_job_alloc(&req, entry.alloc.as_deref()).await;
        drop(slot);
    }

    /// Writes a job's outcome events to the outbox, with its stored result first when it has
    /// one, retrying for up to [`OUTCOME_PATIENCE`]. The writes run on a blocking thread.
    pub(super) async fn record_outcome(
        self: &Arc<Self>,
        req: &Request,
        events: &[Event],
        mut result_file: Option<(std::path::PathBuf, Vec<u8>)>,
    ) -> Result<(), JournalError> {
        let deadline = tokio::time::Instant::now() + OUTCOME_PATIENCE;
        loop {
            let (inner, evs, first) = (self.clone(), events.to_vec(), result_file.clone());
            let written = tokio::task::spawn_blocking(move || inner.outbox.add_after(first, &evs))
                .await
                .unwrap_or_else(|e| {
                    Err(JournalError::Io {
                        op: "write outcome",
                        path: "outbox".into(),
                        source: std::io::Error::other(e),
                    })
                });
            let e = match written {
                Ok(()) => {
                    self.outbox_wake.notify_one();
                    return Ok(());
                }
                Err(e) => e,
            };
            if result_file.take().is_some() {
                // The result is only a cache for identical jobs: the outcome goes on without it.
                tracing::warn!(error = %crate::error::chain(&e), "Storing the job result with its outcome failed; retrying without it (identical jobs will run again).");
                continue;
            }
            if tokio::time::Instant::now() >= deadline {
                return Err(e);
            }
            tracing::error!(command_id = %req.id, error = %crate::error::chain(&e), "Recording a job outcome failed; retrying.");
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
    }

    /// Frees a job's alloc, when it has one, and says so with `alloc.freed`.
    pub(super) async fn free_job_alloc(&self, req: &Request, alloc: Option<&str>) {
        let Some(alloc) = alloc else { return };
        match self.pool.free(alloc).await {
            Ok(()) => {
                let mut e = self.command_event(req, 0, EventBody::AllocFreed {});
                e.alloc = Some(alloc.to_string());
                self.emit(&[e]);
            }
            Err(e) => tracing::debug!(error = %crate::error::chain(&e), "Freeing the job's alloc."),
        }
    }

    /// The events of a job's outcome: `exec.completed` (with the error when it failed), and a
    /// successful result to store under its key before the outcome is published.
    pub(super) async fn job_outcome(
        &self,
        req: &Request,
        spec: &JobSpec,
        entry: &mut Entry,
    ) -> (Vec<Event>, Option<(Digest, StoredResult)>) {
        let outputs_to = spec
            .outputs_to
            .clone()
            .unwrap_or_else(|| self.cfg.repository.clone());
        let exec_id = job_exec_id(spec);
        let key = Digest::of(format!("{}\0{outputs_to}", exec_id.hex()).as_bytes());
        let completed = |result: ExecResult, cached: bool| {
            let ok = result.err.is_none();
            let mut e = self.command_event(
                req,
                0,
                EventBody::ExecCompleted {
                    locations: if ok {
                        locations(&outputs_to, &result)
                    } else {
                        None
                    },
                    result,
                    repository: ok.then(|| outputs_to.clone()),
                    cached,
                },
            );
            e.exec = Some(exec_id);
            e
        };
        if let Some(stored) = self.results.get(&key) {
            tracing::info!(exec = %exec_id, "An identical exec already succeeded: returning its stored result.");
            return (vec![completed(stored.result, true)], None);
        }
        let mut events = Vec::new();
        let mut delay =
            crate::backoff::Backoff::new(self.cfg.retry_base, 2.0, Duration::from_secs(60));
        let mut attempt = 1;
        let result = loop {
            match self.try_job(req, spec, entry, exec_id, &outputs_to).await {
                Ok((r, complete)) => {
                    events.extend(complete);
                    break r;
                }
                Err(e)
                    if e.kind.is_retryable()
                        && attempt < self.cfg.job_attempts
                        && !self.draining.is_cancelled() =>
                {
                    tracing::warn!(error = %crate::error::chain(&e), attempt, "Job step failed; retrying.");
                    if let Some(a) = &entry.alloc
                        && let Ok(a) = self.pool.alloc(a).await
                    {
                        let _ = a.executor().remove(&exec_id).await;
                    }
                    tokio::time::sleep(delay.next_delay()).await;
                    attempt += 1;
                }
                Err(e) => {
                    tracing::warn!(error = %crate::error::chain(&e), attempt, "Job failed.");
                    break ExecResult {
                        fileset: Default::default(),
                        err: Some(e),
                    };
                }
            }
        };
        let stored = result.err.is_none().then(|| {
            (
                key,
                StoredResult {
                    result: result.clone(),
                    repository: outputs_to.clone(),
                    exec: exec_id,
                },
            )
        });
        if let Some(e) = result.err.as_ref().filter(|e| e.kind == Kind::Integrity) {
            // Corrupt data: said at once, not only by the next heartbeat (the alloc is freed).
            self.metrics.integrity_error();
            events.push(self.command_event(
                req,
                0,
                EventBody::IntegrityError {
                    detail: e.to_string(),
                },
            ));
        }
        events.push(completed(result, false));
        (events, stored)
    }

    /// One try of a job: its result, with the `exec.state` event of its exec's completion
    /// when it ran to the end.
    pub(super) async fn try_job(
        &self,
        req: &Request,
        spec: &JobSpec,
        entry: &mut Entry,
        exec_id: Digest,
        outputs_to: &str,
    ) -> Result<(ExecResult, Option<Event>), ReflowError> {
        let alloc_id = job_alloc_id(&req.id);
        let alloc = self
            .pool
            .new_alloc_as(&alloc_id, job_meta(req, spec))
            .await
            .or_reflow("alloc")?;
        crate::failpoint::hit("job.after_alloc");
        if entry.alloc.as_deref() != Some(alloc_id.as_str()) {
            entry.alloc = Some(alloc_id.clone());
            self.journal.put(entry).or_reflow("journal")?;
        }
        // Keep the alloc alive while the job runs. A new alloc's first lease (2 minutes) covers
        // the first period, so its TaskDB row is not written again at once; a restored one
        // whose lease is nearly out is renewed now.
        let keepalive = {
            let (pool, id) = (self.pool.clone(), alloc_id.clone());
            let renew_now = alloc.expires() < self.clock.now() + chrono::Duration::seconds(60);
            crate::par::Task::spawn(async move {
                if renew_now {
                    let _ = pool.keepalive(&id, chrono::Duration::seconds(120)).await;
                }
                loop {
                    tokio::time::sleep(Duration::from_secs(30)).await;
                    let _ = pool.keepalive(&id, chrono::Duration::seconds(120)).await;
                }
            })
        };
        // Stopped when the job ends (dropped).
        let _stop_keepalive = keepalive;
        let ex = alloc.executor();
        let exec = match ex.get(&exec_id) {
            Ok(x) => x,
            Err(_) => {
                let inputs_from = spec
                    .inputs_from
                    .clone()
                    .unwrap_or_else(|| self.cfg.repository.clone());
                let mut config = spec.config.clone();
                for arg in config.args.iter_mut() {
                    if let Some(fs) = &arg.fileset {
                        arg.fileset = Some(ex.load(&inputs_from, fs).await.or_reflow("load")?);
                    }
                }
                ex.put(exec_id, config).await.or_reflow("put")?
            }
        };
        if entry.exec != Some(exec_id) {
            entry.exec = Some(exec_id);
            self.journal.put(entry).or_reflow("journal")?;
        }
        lock(&self.running).insert(req.id.clone(), (alloc_id.clone(), exec_id));
        let limit = spec
            .timeout_secs
            .map_or(self.cfg.max_job, Duration::from_secs)
            .min(self.cfg.max_job);
        let left = (entry.accepted
            + chrono::Duration::from_std(limit).unwrap_or(chrono::TimeDelta::MAX)
            - self.clock.now())
        .to_std()
        .unwrap_or(Duration::ZERO);
        let ran = tokio::time::timeout(left, async {
            exec.wait_until(ExecState::Running).await?;
            self.emit(&[self.exec_state_event(req, &exec, &alloc_id, "running")]);
            exec.wait().await
        })
        .await;
        match ran {
            Ok(r) => r?,
            Err(_) => {
                tracing::warn!(exec = %exec_id, limit_secs = limit.as_secs(), "The job ran out of time; stopping its exec.");
                ex.remove(&exec_id).await.or_reflow("remove")?;
                let err = ReflowError::new(
                    Kind::Timeout,
                    "job",
                    format!(
                        "still running {} s after it was accepted, its limit (timeout_secs, at most queue.max_job_secs); its exec was stopped",
                        limit.as_secs()
                    ),
                );
                let result = ExecResult {
                    fileset: Default::default(),
                    err: Some(err),
                };
                return Ok((result, None));
            }
        }
        let result = exec.result()?;
        if let Some(e) = result.err.as_ref().filter(|e| e.kind == Kind::Unavailable) {
            // Not the exec's own failure (e.g. the engine stopped its container while it
            // restarted): one more attempt, like a failed step.
            return Err(e.clone());
        }
        if result.err.is_none() {
            ex.promote(&exec_id).await.or_reflow("promote")?;
            send_outputs(
                ex.repository(),
                &result.fileset,
                outputs_to,
                self.blob.as_ref(),
            )
            .await?;
            tracing::debug!(command_id = %req.id, "Job outputs sent.");
        }
        let complete = self.exec_state_event(req, &exec, &alloc_id, "complete");
        Ok((result, Some(complete)))
    }
}

/// The alloc a job asks the pool for.
pub(super) fn job_meta(req: &Request, spec: &JobSpec) -> AllocMeta {
    AllocMeta {
        want: job_want(spec),
        owner: format!("job {}", req.id),
        labels: [("command_id".to_string(), req.id.clone())].into(),
    }
}

/// What a job allocates: its `resources`, else its exec's.
pub(super) fn job_want(spec: &JobSpec) -> crate::resources::Resources {
    spec.resources
        .clone()
        .unwrap_or_else(|| spec.config.resources.clone())
}

/// Copies the files of `fileset` from `from` into the repository at `to` (`file:///...`).
pub(super) async fn send_outputs(
    from: &FileRepository,
    fileset: &crate::fileset::Fileset,
    to: &str,
    blob: Option<&Arc<dyn crate::blob::BlobStore>>,
) -> Result<(), ReflowError> {
    if to.starts_with("s3://") {
        let store = blob.ok_or_else(|| {
            ReflowError::new(
                Kind::NotSupported,
                "send outputs",
                "no blob store is configured",
            )
        })?;
        return send_outputs_s3(from, fileset, to, store.as_ref()).await;
    }
    let Some(root) = to.strip_prefix("file://").filter(|p| p.starts_with('/')) else {
        return Err(ReflowError::new(
            Kind::NotSupported,
            "send outputs",
            format!("repository {to:?} is not supported (want file:///... or s3://...)"),
        ));
    };
    let (from, root, files) = (from.clone(), PathBuf::from(root), fileset.files());
    tokio::task::spawn_blocking(move || -> Result<(), ReflowError> {
        let target = FileRepository::open(&root).or_reflow("send outputs")?;
        for f in files {
            if !target.contains(&f.id) {
                target
                    .link_in(&from.path(&f.id), &f.id)
                    .or_reflow("send outputs")?;
            }
        }
        Ok(())
    })
    .await
    .map_err(|e| ReflowError::new(Kind::Fatal, "send outputs", e.to_string()))?
}

/// Uploads the files of `fileset` to the content-addressed repository at `to` (`s3://`),
/// skipping objects already there with the same size and digest.
pub(super) async fn send_outputs_s3(
    from: &FileRepository,
    fileset: &crate::fileset::Fileset,
    to: &str,
    store: &dyn crate::blob::BlobStore,
) -> Result<(), ReflowError> {
    use crate::blob::transfer;
    let url = crate::blob::BlobUrl::parse(to).or_reflow("send outputs")?;
    let files = fileset
        .files()
        .into_iter()
        .map(|f| (url.object_key(&f.id), f));
    transfer::upload_from_repo(
        store,
        &url.bucket,
        from,
        files,
        transfer::Existing::KeepSame,
        &crate::blob::Progress::default(),
    )
    .await
    .or_reflow("send outputs")
}

/// Where each output of `result` lives in the repository at `repo` (`s3://` only).
pub(super) fn locations(
    repo: &str,
    result: &ExecResult,
) -> Option<std::collections::BTreeMap<String, String>> {
    let url = crate::blob::BlobUrl::parse(repo).ok()?;
    Some(
        result
            .fileset
            .pullup()
            .map
            .iter()
            .map(|(path, f)| (path.clone(), url.display(&url.object_key(&f.id))))
            .collect(),
    )
}
