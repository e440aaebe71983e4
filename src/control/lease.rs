//! Keeping what the agent holds: leases extended while held and healthy, and the fleet's claims
//! on commands (claim, renew, finish, release).

use super::*;

impl Inner {
    /// Running jobs whose exec is hanging (the executor's check: its container running with no
    /// processes). Their leases and claims are not extended: the message reappears for another
    /// agent instead of being held by a job that makes no progress.
    pub(super) async fn hanging_jobs(&self) -> HashSet<String> {
        let running: Vec<(String, (String, Digest))> = lock(&self.running)
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        let mut hung = HashSet::new();
        for (command, (alloc, exec)) in running {
            if let Ok(a) = self.pool.alloc(&alloc).await
                && a.is_hanging(&exec).await
            {
                tracing::warn!(command_id = %command, exec = %exec, "The job's exec is hanging: its lease is no longer extended.");
                hung.insert(command);
            }
        }
        hung
    }

    /// Claims command `req` in the fleet's claim store before its container is created. While
    /// another agent holds a live claim, waits (keeping the delivery, whose lease
    /// [`lease_loop`] keeps) until that claim is done or expired. A store that does not answer
    /// does not stop the job: it starts, as it would without a store.
    pub(super) async fn fleet_claim(&self, req: &Request) -> FleetClaim {
        let Some(store) = &self.claims else {
            return FleetClaim::Start;
        };
        let me = &self.cfg.agent_id;
        let lease = chrono::Duration::from_std(self.cfg.lease).unwrap_or_default();
        let mut told = false;
        loop {
            let now = self.clock.now();
            match store.claim(&req.id, me, now, now + lease).await {
                Ok(Claim::Ours) => {
                    lock(&self.claimed).insert(req.id.clone());
                    if told {
                        tracing::info!(
                            "The other agent's claim ended; this agent takes the job over."
                        );
                    }
                    return FleetClaim::Start;
                }
                Ok(Claim::Done { owner }) => {
                    tracing::info!(owner = %owner, "Another agent finished this job: settling the duplicate without running it.");
                    return FleetClaim::DoneElsewhere;
                }
                Ok(Claim::Held { owner, until }) => {
                    if !told {
                        tracing::info!(owner = %owner, until = %crate::time::format(&until), "Another agent holds a live claim on this job: waiting for it to finish or lapse, without starting it.");
                        told = true;
                    }
                }
                Err(e) => {
                    tracing::warn!(error = %crate::error::chain(&e), "The claim store did not answer; starting the job without a fleet-wide claim.");
                    return FleetClaim::Start;
                }
            }
            tokio::select! {
                () = self.draining.cancelled() => return FleetClaim::Drain,
                () = tokio::time::sleep((self.cfg.lease / 3).min(Duration::from_secs(5))) => {}
            }
        }
    }

    /// Takes the fleet claim of a job resumed after a restart back (it is still this agent's
    /// unless it lapsed while the agent was down and another agent took the job over).
    pub(super) async fn reclaim(&self, command_id: &str) {
        let Some(store) = &self.claims else {
            return;
        };
        let now = self.clock.now();
        let until = now + chrono::Duration::from_std(self.cfg.lease).unwrap_or_default();
        match store
            .claim(command_id, &self.cfg.agent_id, now, until)
            .await
        {
            Ok(Claim::Ours) => {
                lock(&self.claimed).insert(command_id.to_string());
            }
            Ok(other) => {
                tracing::warn!(command_id, claim = ?other, "The claim on a resumed job lapsed while this agent was down and another agent holds it; the job may run twice.");
            }
            Err(e) => {
                tracing::warn!(command_id, error = %crate::error::chain(&e), "The claim store did not answer; resuming without a fleet-wide claim.");
            }
        }
    }

    /// Gives up this agent's fleet claim on `command_id` (handed back unstarted).
    pub(super) async fn release_claim(&self, command_id: &str) {
        if let Some(store) = &self.claims
            && lock(&self.claimed).remove(command_id)
            && let Err(e) = store.release(command_id, &self.cfg.agent_id).await
        {
            tracing::warn!(command_id, error = %crate::error::chain(&e), "Releasing a claim failed; it lapses with its lease.");
        }
    }

    /// Marks this agent's fleet claim on `command_id` done (its outcome is published).
    pub(super) async fn finish_claim(&self, command_id: &str) {
        if let Some(store) = &self.claims
            && lock(&self.claimed).remove(command_id)
        {
            let keep = self
                .cfg
                .retention
                .unwrap_or(Duration::from_secs(7 * 24 * 3600));
            let expires = self.clock.now() + chrono::Duration::from_std(keep).unwrap_or_default();
            if let Err(e) = store.done(command_id, &self.cfg.agent_id, expires).await {
                tracing::warn!(command_id, error = %crate::error::chain(&e), "Marking a claim done failed; it lapses with its lease.");
            }
        }
    }
}

/// Keeps the lease of every delivery this process holds (waiting or running), every third of
/// the lease: a held message never reappears for another agent while this one has it.
pub(super) async fn lease_loop(inner: Arc<Inner>) {
    loop {
        tokio::time::sleep(inner.cfg.lease / 3).await;
        let hung = inner.hanging_jobs().await;
        let leases: Vec<(String, Arc<dyn crate::queue::Lease>)> = inner
            .active
            .lock()
            .await
            .iter()
            .filter(|(id, _)| !hung.contains(*id))
            .flat_map(|(id, held)| held.iter().filter_map(|s| Some((id.clone(), s.keeper()?))))
            .collect();
        let lease = inner.cfg.lease;
        futures_util::future::join_all(leases.into_iter().map(|(id, l)| async move {
            if let Err(e) = l.extend(lease).await {
                tracing::warn!(command_id = %id, error = %crate::error::chain(&e), "Extending a lease failed.");
            }
        }))
        .await;
        if let Some(store) = &inner.claims {
            let ids: Vec<String> = lock(&inner.claimed)
                .iter()
                .filter(|id| !hung.contains(*id))
                .cloned()
                .collect();
            let until = inner.clock.now() + chrono::Duration::from_std(lease).unwrap_or_default();
            for id in ids {
                match store.renew(&id, &inner.cfg.agent_id, until).await {
                    Ok(true) => {}
                    Ok(false) => {
                        tracing::warn!(command_id = %id, "This agent's claim on a running job expired and another agent took it over; the job may run twice.");
                        lock(&inner.claimed).remove(&id);
                    }
                    Err(e) => {
                        tracing::warn!(command_id = %id, error = %crate::error::chain(&e), "Renewing a claim failed.");
                    }
                }
            }
        }
    }
}

/// What the fleet's claim store says about starting a job here.
pub(super) enum FleetClaim {
    /// Start it (claimed, or no claim store, or the store does not answer).
    Start,
    /// Another agent finished it: settle this delivery without running.
    DoneElsewhere,
    /// A drain began while waiting for another agent's claim: hand the job back.
    Drain,
}
