//! The control plane's durable state under the agent's state directory:
//!
//! ```text
//! journal/pending/<sha256(id)>.json   the Entry of each command accepted and not yet done
//! journal/<sha256(command id)>.json   the Entry of each done command (idempotency)
//! outbox/<seq>-<event id>.json        events written before they are published
//! results/<key>.json                  stored results of successful jobs, by exec identity
//! ```
//!
//! A start reads only `journal/pending/` (the commands to resume), so restart time does not grow
//! with the number of commands ever received. Done entries and stored results older than the
//! retention are pruned by file age ([`prune_older`]) while the agent runs.
//!
//! Every file is written atomically (temp file, fsync, rename, fsync the directory). A command
//! is settled with the broker only after its journal entry (or, for a job, its outcome) is on
//! disk; an event is removed from the outbox only after the broker confirmed it. A crash between
//! any two steps therefore replays, never loses, and the deterministic event ids let consumers
//! drop the replays.

use std::fs;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use serde::{Deserialize, Serialize};
use thiserror::Error;

use crate::digest::Digest;
use crate::error::{Classify, Kind};
use crate::persist::{self, PersistError};
use crate::protocol::Event;
use crate::time::{self, Time};

/// Version of the journal entry format.
pub const JOURNAL_VERSION: u32 = 1;
/// Largest journal entry, outbox event or stored result read.
pub const MAX_ENTRY_BYTES: u64 = 4 << 20;

/// Journal failures.
#[derive(Debug, Error)]
pub enum JournalError {
    /// Reading or writing a state file.
    #[error("{what} {path}")]
    Persist {
        /// What the file is.
        what: &'static str,
        /// The file.
        path: PathBuf,
        /// Cause.
        #[source]
        source: PersistError,
    },
    /// Listing or removing.
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
}

impl Classify for JournalError {
    fn kind(&self) -> Kind {
        match self {
            JournalError::Persist { source, .. } => source.kind(),
            JournalError::Io { source, .. } => crate::error::io_kind(source),
        }
    }
}

/// Where a command is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Phase {
    /// Accepted: the agent owns it and resumes it after a crash.
    Accepted,
    /// Done: its outcome events are in the outbox (or published).
    Done,
}

/// One journaled command.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Entry {
    /// Format version.
    pub v: u32,
    /// The command id (idempotency key).
    pub command_id: String,
    /// The command kind.
    pub kind: String,
    /// Where it is.
    pub phase: Phase,
    /// The raw command envelope, so an accepted command can be resumed without the broker.
    pub command: serde_json::Value,
    /// The alloc it runs in, once known.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub alloc: Option<String>,
    /// The exec it runs, once known.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exec: Option<Digest>,
    /// The broker lease held for it (an SQS receipt handle), to re-own it after a restart.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lease: Option<String>,
    /// The outcome events, replayed when the command is delivered again.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub outcome: Vec<Event>,
    /// When it was accepted.
    #[serde(with = "time::go")]
    pub accepted: Time,
}

fn persist_err(what: &'static str, path: &Path) -> impl FnOnce(PersistError) -> JournalError {
    let path = path.to_path_buf();
    move |source| JournalError::Persist { what, path, source }
}

fn io_err(op: &'static str, path: &Path) -> impl FnOnce(std::io::Error) -> JournalError {
    let path = path.to_path_buf();
    move |source| JournalError::Io { op, path, source }
}

/// Reads every `*.json` in `dir` (sorted by name), skipping leftovers; unreadable files are
/// renamed `*.corrupt` and reported, never fatal.
fn read_all<T: serde::de::DeserializeOwned>(
    dir: &Path,
    what: &'static str,
) -> Result<Vec<(String, T)>, JournalError> {
    let mut names: Vec<String> = fs::read_dir(dir)
        .map_err(io_err("list", dir))?
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.ends_with(".json") && !persist::is_leftover(n))
        .collect();
    names.sort();
    let mut out = Vec::with_capacity(names.len());
    for name in names {
        let p = dir.join(&name);
        match persist::read_json::<T>(&p, MAX_ENTRY_BYTES) {
            Ok(v) => out.push((name, v)),
            Err(e) => {
                tracing::error!(file = %p.display(), error = %crate::error::chain(&e), what, "Unreadable state file; set aside as .corrupt.");
                let _ = fs::rename(&p, p.with_extension("corrupt"));
            }
        }
    }
    Ok(out)
}

/// [`persist::prune_older`] with the journal's error.
///
/// # Errors
/// Listing the directory or removing a file.
pub fn prune_older(dir: &Path, before: std::time::SystemTime) -> Result<usize, JournalError> {
    persist::prune_older(dir, before).map_err(persist_err("prune", dir))
}

/// The command journal: `journal/` for done commands, `journal/pending/` for the rest.
#[derive(Debug, Clone)]
pub struct Journal {
    dir: PathBuf,
    pending: PathBuf,
}

/// Marks a journal whose unfinished entries live in `pending/` (journals written before kept
/// them beside the done ones; the first open moves them).
const SPLIT_MARKER: &str = ".pending-split";

impl Journal {
    /// Opens (creating) the journal under `state_dir`.
    ///
    /// # Errors
    /// Creating the directory.
    pub fn open(state_dir: &Path) -> Result<Journal, JournalError> {
        let dir = state_dir.join("journal");
        let pending = dir.join("pending");
        fs::create_dir_all(&pending).map_err(io_err("create", &pending))?;
        // journal/ itself can hold every command of the retention: its leftovers are cleaned
        // by pruning, in the background.
        let _ = persist::clean_leftovers(&pending);
        let j = Journal { dir, pending };
        if !j.dir.join(SPLIT_MARKER).exists() {
            j.split_pending()?;
        }
        Ok(j)
    }

    /// Moves unfinished entries of an older journal into `pending/`, once.
    fn split_pending(&self) -> Result<(), JournalError> {
        let mut moved = 0;
        for (name, e) in read_all::<Entry>(&self.dir, "journal entry")? {
            if e.phase == Phase::Accepted {
                let (from, to) = (self.dir.join(&name), self.pending.join(&name));
                fs::rename(&from, &to).map_err(io_err("move", &from))?;
                moved += 1;
            }
        }
        persist::sync_dir(&self.pending).map_err(io_err("fsync", &self.pending))?;
        persist::write_atomic(&self.dir.join(SPLIT_MARKER), b"1\n")
            .map_err(persist_err("journal marker", &self.dir))?;
        if moved > 0 {
            tracing::info!(
                moved,
                "Journal: unfinished commands moved to journal/pending/."
            );
        }
        Ok(())
    }

    fn name(command_id: &str) -> String {
        format!("{}.json", Digest::of(command_id.as_bytes()).hex())
    }

    fn path(&self, command_id: &str) -> PathBuf {
        self.dir.join(Journal::name(command_id))
    }

    fn pending_path(&self, command_id: &str) -> PathBuf {
        self.pending.join(Journal::name(command_id))
    }

    /// The entry of `command_id`, if it was accepted before (and not pruned since).
    ///
    /// # Errors
    /// An unreadable entry.
    pub fn get(&self, command_id: &str) -> Result<Option<Entry>, JournalError> {
        for p in [self.path(command_id), self.pending_path(command_id)] {
            match persist::read_json::<Entry>(&p, MAX_ENTRY_BYTES) {
                Ok(e) => return Ok(Some(e)),
                Err(e) if e.kind() == Kind::NotExist => {}
                Err(e) => return Err(persist_err("journal entry", &p)(e)),
            }
        }
        Ok(None)
    }

    /// Writes `e` durably: an unfinished entry under `pending/`; a done one beside it, after
    /// which the pending one is removed (a crash in between leaves both, and the done one wins).
    ///
    /// # Errors
    /// Writing.
    pub fn put(&self, e: &Entry) -> Result<(), JournalError> {
        if e.phase == Phase::Accepted {
            let p = self.pending_path(&e.command_id);
            return persist::write_json_atomic(&p, e).map_err(persist_err("journal entry", &p));
        }
        let p = self.path(&e.command_id);
        persist::write_json_atomic(&p, e).map_err(persist_err("journal entry", &p))?;
        let pending = self.pending_path(&e.command_id);
        match fs::remove_file(&pending) {
            Ok(()) => {}
            Err(err) if err.kind() == std::io::ErrorKind::NotFound => {}
            Err(err) => return Err(io_err("remove", &pending)(err)),
        }
        Ok(())
    }

    /// Every entry not yet done (to resume at start), oldest first. Reads `pending/` only.
    ///
    /// # Errors
    /// Listing the directory.
    pub fn unfinished(&self) -> Result<Vec<Entry>, JournalError> {
        let mut v: Vec<Entry> = read_all::<Entry>(&self.pending, "journal entry")?
            .into_iter()
            .map(|(_, e)| e)
            .filter(|e| e.phase == Phase::Accepted && !self.path(&e.command_id).exists())
            .collect();
        v.sort_by_key(|e| e.accepted);
        Ok(v)
    }

    /// Removes done entries last written before `before`; unfinished ones are never pruned.
    /// Returns how many were removed. A command delivered again after its entry was pruned is
    /// run again (docs/protocol.md, "Retention").
    ///
    /// # Errors
    /// Listing the directory.
    pub fn prune(&self, before: std::time::SystemTime) -> Result<usize, JournalError> {
        prune_older(&self.dir, before)
    }
}

/// Events waiting to be published, in order.
#[derive(Debug)]
pub struct Outbox {
    dir: PathBuf,
    seq: AtomicU64,
}

impl Outbox {
    /// Opens (creating) the outbox under `state_dir`.
    ///
    /// # Errors
    /// Creating or listing the directory.
    pub fn open(state_dir: &Path, now: Time) -> Result<Outbox, JournalError> {
        let dir = state_dir.join("outbox");
        fs::create_dir_all(&dir).map_err(io_err("create", &dir))?;
        let _ = persist::clean_leftovers(&dir);
        // Sequence numbers start at the wall clock in nanoseconds, so they keep increasing
        // across restarts and file names sort in publication order.
        let start = u64::try_from(now.timestamp_nanos_opt().unwrap_or(0)).unwrap_or(0);
        Ok(Outbox {
            dir,
            seq: AtomicU64::new(start),
        })
    }

    /// Adds `events` in order, all durable when it returns (one directory fsync for them all).
    ///
    /// # Errors
    /// Serializing or writing.
    pub fn add(&self, events: &[Event]) -> Result<(), JournalError> {
        self.add_after(None, events)
    }

    /// [`Outbox::add`], with `first` (a file of another store, as [`Results::file`] gives)
    /// written in the same batch: its fsync overlaps the events', and it is in place before
    /// any of them is, so the outbox's publisher never sees an event without it.
    ///
    /// # Errors
    /// Serializing or writing; then none of the files was replaced.
    pub fn add_after(
        &self,
        first: Option<(PathBuf, Vec<u8>)>,
        events: &[Event],
    ) -> Result<(), JournalError> {
        let mut files: Vec<(PathBuf, Vec<u8>)> = first.into_iter().collect();
        for e in events {
            let seq = self.seq.fetch_add(1, Ordering::SeqCst);
            let path = self.dir.join(format!("{seq:020}-{}.json", e.id));
            let bytes =
                persist::json_bytes(&path, e).map_err(persist_err("outbox event", &path))?;
            files.push((path, bytes));
        }
        persist::write_atomic_all(&files).map_err(persist_err("outbox event", &self.dir))
    }

    /// Whether any of the events `ids` is still pending (names only: no file is read).
    ///
    /// # Errors
    /// Listing the directory.
    pub fn holds_any(&self, ids: &[&str]) -> Result<bool, JournalError> {
        for entry in fs::read_dir(&self.dir).map_err(io_err("list", &self.dir))? {
            let name = entry.map_err(io_err("list", &self.dir))?.file_name();
            let name = name.to_string_lossy();
            if let Some(id) = name
                .strip_suffix(".json")
                .and_then(|n| n.split_once('-'))
                .map(|(_, id)| id)
                && !persist::is_leftover(&name)
                && ids.contains(&id)
            {
                return Ok(true);
            }
        }
        Ok(false)
    }

    /// The pending events with their file names, in order.
    ///
    /// # Errors
    /// Listing the directory.
    pub fn pending(&self) -> Result<Vec<(String, Event)>, JournalError> {
        read_all(&self.dir, "outbox event")
    }

    /// The file of the pending event named `name` (as [`Outbox::pending`] names it): the
    /// event's pretty JSON, durable.
    pub fn file(&self, name: &str) -> PathBuf {
        self.dir.join(name)
    }

    /// Removes a published event.
    ///
    /// # Errors
    /// Removing the file.
    pub fn remove(&self, name: &str) -> Result<(), JournalError> {
        let p = self.file(name);
        match fs::remove_file(&p) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(io_err("remove", &p)(e)),
        }
    }
}

/// A stored successful job result, reused by a later job running the identical exec.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StoredResult {
    /// The exec's result.
    pub result: crate::model::ExecResult,
    /// The repository holding its files.
    pub repository: String,
    /// The exec id.
    pub exec: Digest,
}

/// Stored results of successful jobs.
#[derive(Debug, Clone)]
pub struct Results {
    dir: PathBuf,
}

impl Results {
    /// Opens (creating) the store under `state_dir`.
    ///
    /// # Errors
    /// Creating the directory.
    pub fn open(state_dir: &Path) -> Result<Results, JournalError> {
        let dir = state_dir.join("results");
        fs::create_dir_all(&dir).map_err(io_err("create", &dir))?;
        // Leftovers are cleaned by pruning, in the background (see Journal::open).
        Ok(Results { dir })
    }

    fn path(&self, key: &Digest) -> PathBuf {
        self.dir.join(format!("{}.json", key.hex()))
    }

    /// The stored result for `key`, if any (an unreadable one counts as absent).
    pub fn get(&self, key: &Digest) -> Option<StoredResult> {
        persist::read_json(&self.path(key), MAX_ENTRY_BYTES).ok()
    }

    /// The file that stores `r` under `key`, for [`Outbox::add_after`] to write with the
    /// job's outcome.
    ///
    /// # Errors
    /// Serializing.
    pub fn file(&self, key: &Digest, r: &StoredResult) -> Result<(PathBuf, Vec<u8>), JournalError> {
        let p = self.path(key);
        let bytes = persist::json_bytes(&p, r).map_err(persist_err("stored result", &p))?;
        Ok((p, bytes))
    }

    /// Removes results stored before `before` (an identical job after that runs again).
    ///
    /// # Errors
    /// Listing the directory.
    pub fn prune(&self, before: std::time::SystemTime) -> Result<usize, JournalError> {
        prune_older(&self.dir, before)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::{EventBody, PROTOCOL_VERSION, event_id};

    fn t(s: &str) -> Time {
        time::parse(s).unwrap()
    }

    fn entry(id: &str, phase: Phase, accepted: &str) -> Entry {
        Entry {
            v: JOURNAL_VERSION,
            command_id: id.into(),
            kind: "job".into(),
            phase,
            command: serde_json::json!({"v": 1, "id": id}),
            alloc: None,
            exec: None,
            lease: None,
            outcome: vec![],
            accepted: t(accepted),
        }
    }

    fn unfinished_ids(j: &Journal) -> Vec<String> {
        j.unfinished()
            .unwrap()
            .into_iter()
            .map(|e| e.command_id)
            .collect()
    }

    #[test]
    fn journal_round_trip_unfinished_and_prune() {
        let dir = tempfile::tempdir().unwrap();
        let j = Journal::open(dir.path()).unwrap();
        assert_eq!(j.get("..").unwrap(), None, "ids never become paths");
        j.put(&entry("b", Phase::Accepted, "2026-01-02T00:00:00Z"))
            .unwrap();
        j.put(&entry("a", Phase::Accepted, "2026-01-01T00:00:00Z"))
            .unwrap();
        j.put(&entry("c", Phase::Done, "2026-01-01T00:00:00Z"))
            .unwrap();
        let ids = unfinished_ids(&j);
        assert_eq!(ids, ["a", "b"], "oldest first, done ones skipped");
        assert_eq!(j.get("c").unwrap().unwrap().phase, Phase::Done);
        // Done moves an entry out of pending/.
        j.put(&entry("b", Phase::Done, "2026-01-02T00:00:00Z"))
            .unwrap();
        assert_eq!(j.get("b").unwrap().unwrap().phase, Phase::Done);
        assert_eq!(j.unfinished().unwrap().len(), 1);
        assert!(!j.pending_path("b").exists());
        // Pruning goes by file age and never touches unfinished entries.
        let future =
            std::time::SystemTime::from(crate::clock::Clock::now(&crate::clock::SystemClock))
                + std::time::Duration::from_secs(3600);
        assert_eq!(j.prune(std::time::SystemTime::UNIX_EPOCH).unwrap(), 0);
        assert_eq!(j.prune(future).unwrap(), 2);
        assert_eq!(j.get("c").unwrap(), None);
        assert!(j.get("a").unwrap().is_some(), "unfinished ones are kept");

        // A torn entry is set aside, not fatal.
        let torn = j.pending_path("torn");
        std::fs::write(&torn, b"{\"v\":1,").unwrap();
        assert_eq!(j.unfinished().unwrap().len(), 1);
        assert!(torn.with_extension("corrupt").exists());
    }

    #[test]
    fn an_older_journal_is_split_once() {
        let dir = tempfile::tempdir().unwrap();
        let jdir = dir.path().join("journal");
        std::fs::create_dir_all(&jdir).unwrap();
        // What earlier agents wrote: every entry in journal/.
        for (id, phase) in [("old-a", Phase::Accepted), ("old-d", Phase::Done)] {
            let e = entry(id, phase, "2026-01-01T00:00:00Z");
            std::fs::write(
                jdir.join(Journal::name(id)),
                serde_json::to_vec(&e).unwrap(),
            )
            .unwrap();
        }
        let j = Journal::open(dir.path()).unwrap();
        let ids = unfinished_ids(&j);
        assert_eq!(ids, ["old-a"]);
        assert!(j.pending_path("old-a").exists());
        assert_eq!(j.get("old-d").unwrap().unwrap().phase, Phase::Done);
        assert!(jdir.join(SPLIT_MARKER).exists());
        // Reopening does not scan again, and finds the same.
        let j2 = Journal::open(dir.path()).unwrap();
        assert_eq!(j2.unfinished().unwrap().len(), 1);
    }

    #[test]
    fn outbox_keeps_order_across_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let ev = |n: u64| Event {
            v: PROTOCOL_VERSION,
            id: event_id("cmd", "agent.heartbeat", n),
            agent: "a".into(),
            alloc: None,
            exec: None,
            correlation_id: None,
            command: None,
            time: t("2026-01-01T00:00:00Z"),
            body: EventBody::AgentStopped {},
            labels: Default::default(),
        };
        let o = Outbox::open(dir.path(), t("2026-01-01T00:00:00Z")).unwrap();
        o.add(&[ev(0), ev(1)]).unwrap();
        // A restart continues the sequence from the (later) clock.
        let o2 = Outbox::open(dir.path(), t("2026-01-01T00:00:01Z")).unwrap();
        o2.add(&[ev(2)]).unwrap();
        let ids: Vec<String> = o2
            .pending()
            .unwrap()
            .into_iter()
            .map(|(_, e)| e.id)
            .collect();
        assert_eq!(ids, [ev(0).id, ev(1).id, ev(2).id]);
        let (first, _) = &o2.pending().unwrap()[0];
        assert!(o2.holds_any(&[&ev(0).id, "other"]).unwrap());
        o2.remove(first).unwrap();
        o2.remove(first).unwrap();
        assert_eq!(o2.pending().unwrap().len(), 2);
        // Pending is told from the names alone: the removed event is gone, the others are not.
        assert!(!o2.holds_any(&[&ev(0).id]).unwrap());
        assert!(o2.holds_any(&[&ev(0).id, &ev(2).id]).unwrap());
        assert!(!o2.holds_any(&[]).unwrap());
    }
}
