//! `spool://DIR`: the embedded, zero-dependency queue, for a single machine and the demo.
//!
//! ```text
//! DIR/incoming/NAME     producers drop commands here by atomic rename (write .NAME.tmp, rename)
//! DIR/processing/NAME   claimed by an agent (rename from incoming: exactly one agent wins)
//! DIR/dead/NAME         dead-lettered, with DIR/dead/NAME.reason.json
//! DIR/events/ID.json    published events, one file per event id (a republish is a no-op)
//! ```
//!
//! Commands are taken in name order, so producers that name files by time get FIFO. Files whose
//! names start with `.` are in-progress writes and are never claimed. At start, files left in
//! `processing/` by a crashed agent go back to `incoming/` and are delivered again, marked
//! redelivered.

use std::collections::BTreeSet;
use std::fs;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::time::Duration;

use async_trait::async_trait;
use tokio_util::sync::CancellationToken;

use super::{Batch, CommandSource, Delivery, EventSink, QueueError, Settle};
use crate::persist::{self, sync_dir};
use crate::protocol::{Event, MAX_COMMAND_BYTES};

const INCOMING: &str = "incoming";
const PROCESSING: &str = "processing";
const DEAD: &str = "dead";
const EVENTS: &str = "events";

fn io<'a>(op: &'static str, path: &'a Path) -> impl FnOnce(std::io::Error) -> QueueError + 'a {
    move |source| QueueError::Io {
        op,
        path: path.to_path_buf(),
        source,
    }
}

/// A spool directory.
#[derive(Debug, Clone)]
pub struct Spool {
    dir: PathBuf,
}

impl Spool {
    /// Opens (creating) the spool at `dir`, as a producer or a watcher does: what is in it is
    /// left as it is (an agent may be running the commands in `processing/`).
    ///
    /// # Errors
    /// Creating the directories.
    pub fn open(dir: impl Into<PathBuf>) -> Result<Spool, QueueError> {
        let dir = dir.into();
        for sub in [INCOMING, PROCESSING, DEAD, EVENTS] {
            let p = dir.join(sub);
            fs::create_dir_all(&p).map_err(io("create", &p))?;
        }
        Ok(Spool { dir })
    }

    /// For the agent consuming the spool, at its start: the files a crashed agent left in
    /// `processing/` go back to `incoming/`; their names are returned, to be marked
    /// redelivered. Only the spool's one consumer may call it: another's commands in
    /// `processing/` are running.
    ///
    /// # Errors
    /// Listing or moving the files.
    pub fn recover(&self) -> Result<BTreeSet<String>, QueueError> {
        let processing = self.dir.join(PROCESSING);
        let mut returned = BTreeSet::new();
        for e in fs::read_dir(&processing)
            .map_err(io("list", &processing))?
            .flatten()
        {
            let name = e.file_name().to_string_lossy().into_owned();
            let to = self.dir.join(INCOMING).join(&name);
            fs::rename(e.path(), &to).map_err(io("return", &to))?;
            tracing::warn!(command_file = %name, "Returning a command claimed before a crash; it will be redelivered.");
            returned.insert(name);
        }
        Ok(returned)
    }

    /// A command source over this spool, polling every `poll` until `close` fires. `redelivered`
    /// names are marked redelivered (from [`Spool::recover`]).
    pub fn source(
        &self,
        poll: Duration,
        close: CancellationToken,
        redelivered: BTreeSet<String>,
    ) -> SpoolSource {
        SpoolSource {
            dir: self.dir.clone(),
            wake: DirWake::new(&self.dir.join(INCOMING), false),
            poll,
            close,
            redelivered,
            attempts: std::collections::HashMap::new(),
        }
    }

    /// The event sink of this spool.
    pub fn sink(&self) -> SpoolSink {
        SpoolSink {
            dir: self.dir.join(EVENTS),
        }
    }

    /// Drops a command into `incoming/` atomically, as a producer does.
    ///
    /// # Errors
    /// Writing the file.
    pub fn submit(&self, name: &str, body: &[u8]) -> Result<(), QueueError> {
        let dir = self.dir.join(INCOMING);
        let tmp = dir.join(format!(".{name}.tmp"));
        fs::write(&tmp, body).map_err(io("write", &tmp))?;
        let to = dir.join(name);
        fs::rename(&tmp, &to).map_err(io("rename", &to))
    }

    /// Moves dead-lettered command `name` back to `incoming/` (its reason file is removed).
    ///
    /// # Errors
    /// No such dead-lettered command, or a failed rename.
    pub fn replay(&self, name: &str) -> Result<(), QueueError> {
        let from = self.dir.join(DEAD).join(name);
        let to = self.dir.join(INCOMING).join(name);
        fs::rename(&from, &to).map_err(io("replay", &from))?;
        let _ = fs::remove_file(self.dir.join(DEAD).join(format!("{name}.reason.json")));
        Ok(())
    }

    /// The raw bytes of dead-lettered command `name` and its reason.
    ///
    /// # Errors
    /// Reading the files.
    pub fn dead(&self, name: &str) -> Result<(Vec<u8>, String), QueueError> {
        let p = self.dir.join(DEAD).join(name);
        let body =
            persist::read_bounded(&p, MAX_COMMAND_BYTES as u64 + 1).map_err(QueueError::Publish)?;
        let reason = persist::read_json::<serde_json::Value>(
            &self.dir.join(DEAD).join(format!("{name}.reason.json")),
            64 << 10,
        )
        .ok()
        .and_then(|v| v.get("reason").and_then(|r| r.as_str()).map(str::to_string))
        .unwrap_or_default();
        Ok((body, reason))
    }

    /// Names in a subdirectory (`incoming`, `processing`, `dead`, `events`), sorted. Hidden
    /// names are left out: they are files still being written (`.NAME.XXXXXX.tmp`, see
    /// [`persist`]), which a dead letter's reason, for one, is while its command waits.
    pub fn list(&self, sub: &str) -> Vec<String> {
        let mut v: Vec<String> = fs::read_dir(self.dir.join(sub))
            .map(|rd| {
                rd.flatten()
                    .map(|e| e.file_name().to_string_lossy().into_owned())
                    .filter(|n| !n.starts_with('.'))
                    .collect()
            })
            .unwrap_or_default();
        v.sort();
        v
    }
}

/// Claims the first claimable file of `incoming/`; `None` when there is none.
fn claim(dir: &Path) -> Result<Option<(String, Vec<u8>)>, QueueError> {
    let incoming = dir.join(INCOMING);
    let mut names: Vec<String> = fs::read_dir(&incoming)
        .map_err(io("list", &incoming))?
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| !n.starts_with('.'))
        .collect();
    names.sort();
    for name in names {
        let to = dir.join(PROCESSING).join(&name);
        match fs::rename(incoming.join(&name), &to) {
            Ok(()) => {
                // Read one byte past the limit, so the decoder can reject an oversized command
                // without the agent reading all of it.
                let f = fs::File::open(&to).map_err(io("open", &to))?;
                let mut body = Vec::new();
                f.take(MAX_COMMAND_BYTES as u64 + 1)
                    .read_to_end(&mut body)
                    .map_err(io("read", &to))?;
                return Ok(Some((name, body)));
            }
            // Another consumer claimed it first.
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
            Err(e) => return Err(io("claim", &to)(e)),
        }
    }
    Ok(None)
}

/// Wakes a waiter when a directory changes: inotify through the `notify` crate, so a command
/// or an event is seen as soon as it is renamed into place. Where the filesystem offers no
/// notifications (or the watch cannot be set up), the fallback poll alone wakes it; with them,
/// a slow poll stays as a safety net for missed notifications (an overflowed inotify queue).
///
/// When `track`ed it also keeps the names that arrived since [`DirWake::arrivals`] was last
/// asked, so a reader of a large directory (`events/`) need not list it at every wake.
#[derive(Debug)]
struct DirWake {
    notify: std::sync::Arc<tokio::sync::Notify>,
    arrived: std::sync::Arc<std::sync::Mutex<Arrivals>>,
    track: bool,
    watcher: Option<notify::RecommendedWatcher>,
}

/// Names that arrived in a watched directory, in the order the kernel told them.
#[derive(Debug, Default)]
struct Arrivals {
    names: Vec<String>,
    /// Notifications were lost (an overflowed queue, an error): only a listing tells what came.
    lost: bool,
}

/// The safety-net poll while notifications work.
const WATCHED_POLL: Duration = Duration::from_secs(1);

/// What ended a [`DirWake::wait`].
#[derive(Debug, PartialEq)]
enum Woke {
    /// A change was notified.
    Notified,
    /// The poll ran out.
    Polled,
}

impl DirWake {
    fn new(dir: &Path, track: bool) -> DirWake {
        use notify::Watcher as _;
        let n = std::sync::Arc::new(tokio::sync::Notify::new());
        let arrived = std::sync::Arc::new(std::sync::Mutex::new(Arrivals::default()));
        let handler = {
            let (n, arrived) = (n.clone(), arrived.clone());
            move |r: notify::Result<notify::Event>| {
                use notify::event::{EventKind, ModifyKind};
                let mut a = crate::par::lock(&arrived);
                match r {
                    // Only arrivals: a file created or renamed in. Listing the directory itself
                    // raises open and access events, which must not wake the lister again.
                    Ok(e) if e.need_rescan() => a.lost = true,
                    Ok(e)
                        if matches!(
                            e.kind,
                            EventKind::Create(_) | EventKind::Modify(ModifyKind::Name(_))
                        ) =>
                    {
                        // A rename within the directory names both ends; the reader skips
                        // what is not there.
                        if track {
                            a.names.extend(e.paths.iter().filter_map(|p| {
                                p.file_name().map(|f| f.to_string_lossy().into_owned())
                            }));
                        }
                    }
                    Ok(_) => return,
                    Err(_) => a.lost = true,
                }
                drop(a);
                // Stored when nobody waits yet, so a change between a scan and the wait is not
                // lost.
                n.notify_one();
            }
        };
        let watcher = notify::recommended_watcher(handler).and_then(|mut w| {
            w.watch(dir, notify::RecursiveMode::NonRecursive)?;
            Ok(w)
        });
        let watcher = match watcher {
            Ok(w) => Some(w),
            Err(e) => {
                tracing::info!(dir = %dir.display(), error = %e, "No change notifications for the spool directory; polling it.");
                None
            }
        };
        DirWake {
            notify: n,
            arrived,
            track,
            watcher,
        }
    }

    /// Waits for a change, or `poll` (without notifications; [`WATCHED_POLL`] with them).
    async fn wait(&self, poll: Duration) -> Woke {
        let poll = if self.watcher.is_some() {
            WATCHED_POLL.max(poll)
        } else {
            poll
        };
        tokio::select! {
            () = self.notify.notified() => Woke::Notified,
            () = tokio::time::sleep(poll) => Woke::Polled,
        }
    }

    /// Ends the watch, cheaply for whoever waits on this process's exit. Closing an inotify
    /// instance whose watch is the last on its directory makes the kernel free the
    /// directory's mark list, then the mark, each after an SRCU grace period; the close waits
    /// for the second, and when the first is still under way that one is a full grace period,
    /// 10 to 20 ms on a machine with containers starting and ending (about 0.1 ms otherwise).
    /// So the watch is removed first and the close comes a moment later, when the first
    /// period is over: measured on Linux 6.18 while containers churned, a close 0.5 ms after
    /// the removal took 0.08 ms, against 10.5 to 15.7 ms for a close alone or right after the
    /// removal (medians of 30 to 40). `submit --wait` on a spool pays this once, at its exit.
    async fn release(mut self, dir: &Path) {
        use notify::Watcher as _;
        let Some(mut w) = self.watcher.take() else {
            return;
        };
        if w.unwatch(dir).is_ok() {
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        drop(w);
    }

    /// The names that arrived since the last call, or `None` when only a listing can tell
    /// (no notifications, or some were lost).
    fn arrivals(&self) -> Option<Vec<String>> {
        let mut a = crate::par::lock(&self.arrived);
        let names = std::mem::take(&mut a.names);
        let lost = std::mem::take(&mut a.lost);
        (self.track && self.watcher.is_some() && !lost).then_some(names)
    }
}

/// Commands from a spool.
#[derive(Debug)]
pub struct SpoolSource {
    dir: PathBuf,
    wake: DirWake,
    poll: Duration,
    close: CancellationToken,
    redelivered: BTreeSet<String>,
    attempts: std::collections::HashMap<String, u32>,
}

#[async_trait]
impl CommandSource for SpoolSource {
    async fn next(&mut self, _room: usize) -> Result<Option<Delivery>, QueueError> {
        loop {
            if self.close.is_cancelled() {
                return Ok(None);
            }
            let dir = self.dir.clone();
            let claimed = tokio::task::spawn_blocking(move || claim(&dir))
                .await
                .map_err(|e| QueueError::Io {
                    op: "claim",
                    path: self.dir.clone(),
                    source: std::io::Error::other(e),
                })??;
            if let Some((name, body)) = claimed {
                let returned = self.redelivered.remove(&name);
                let attempt = self
                    .attempts
                    .entry(name.clone())
                    .and_modify(|n| *n += 1)
                    .or_insert(if returned { 2 } else { 1 });
                return Ok(Some(Delivery {
                    body,
                    redelivered: *attempt > 1,
                    attempt: *attempt,
                    settle: Box::new(SpoolSettle {
                        dir: self.dir.clone(),
                        name,
                    }),
                }));
            }
            tokio::select! {
                () = self.close.cancelled() => return Ok(None),
                _ = self.wake.wait(self.poll) => {}
            }
        }
    }
}

/// Settles one spool file.
#[derive(Debug)]
struct SpoolSettle {
    dir: PathBuf,
    name: String,
}

impl SpoolSettle {
    fn processing(&self) -> PathBuf {
        self.dir.join(PROCESSING).join(&self.name)
    }
}

#[async_trait]
impl Settle for SpoolSettle {
    async fn ack(self: Box<Self>) -> Result<(), QueueError> {
        let p = self.processing();
        fs::remove_file(&p).map_err(io("ack", &p))?;
        let d = self.dir.join(PROCESSING);
        sync_dir(&d).map_err(io("fsync dir", &d))
    }

    async fn requeue(self: Box<Self>) -> Result<(), QueueError> {
        let to = self.dir.join(INCOMING).join(&self.name);
        fs::rename(self.processing(), &to).map_err(io("requeue", &to))
    }

    async fn dead_letter(self: Box<Self>, reason: &str) -> Result<(), QueueError> {
        let dead = self.dir.join(DEAD);
        #[derive(serde::Serialize)]
        struct Reason<'a> {
            reason: &'a str,
        }
        persist::write_json_atomic(
            &dead.join(format!("{}.reason.json", self.name)),
            &Reason { reason },
        )
        .map_err(QueueError::Publish)?;
        let to = dead.join(&self.name);
        fs::rename(self.processing(), &to).map_err(io("dead-letter", &to))?;
        sync_dir(&dead).map_err(io("fsync dir", &dead))
    }
}

/// Events into a spool's `events/`.
#[derive(Debug, Clone)]
pub struct SpoolSink {
    dir: PathBuf,
}

impl SpoolSink {
    /// The file of event `event`. Event ids are hex (see protocol::event_id), so they are safe
    /// file names; others are hashed to be safe.
    fn path(&self, event: &Event) -> PathBuf {
        let name = if event
            .id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-')
            && !event.id.is_empty()
        {
            event.id.clone()
        } else {
            crate::digest::Digest::of(event.id.as_bytes()).hex()
        };
        self.dir.join(format!("{name}.json"))
    }

    /// Writes the events not published yet, atomically, with one fsync of the directory for
    /// them all. An event with a durable copy in `stored` (its file in the outbox, the same
    /// JSON) is linked from it instead: no new file, no data to write or fsync. One that
    /// cannot be linked (another filesystem, the copy gone) is written.
    async fn write(&self, events: &[Event], stored: &[PathBuf]) -> Result<(), QueueError> {
        let files: Vec<(PathBuf, Event, Option<PathBuf>)> = events
            .iter()
            .enumerate()
            .map(|(i, e)| (self.path(e), e, stored.get(i)))
            .filter(|(p, _, _)| !p.exists()) // already published
            .map(|(p, e, s)| (p, e.clone(), s.cloned()))
            .collect();
        let dir = self.dir.clone();
        tokio::task::spawn_blocking(move || {
            let mut unlinked: Vec<(PathBuf, &Event)> = Vec::new();
            for (path, event, copy) in &files {
                match copy.as_ref().map(|c| fs::hard_link(c, path)) {
                    Some(Ok(())) => {}
                    Some(Err(e)) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
                    _ => unlinked.push((path.clone(), event)),
                }
            }
            if unlinked.is_empty() {
                // All linked, or there already (perhaps renamed into place by a try whose
                // directory fsync failed): the directory's fsync makes them durable.
                return sync_dir(&dir).map_err(io("fsync dir", &dir));
            }
            persist::write_json_atomic_all(&unlinked).map_err(QueueError::Publish)
        })
        .await
        .map_err(|e| QueueError::Io {
            op: "publish",
            path: self.dir.clone(),
            source: std::io::Error::other(e),
        })?
    }
}

#[async_trait]
impl EventSink for SpoolSink {
    async fn publish(&self, event: &Event) -> Result<(), QueueError> {
        self.write(std::slice::from_ref(event), &[]).await
    }

    fn max_batch(&self) -> usize {
        64
    }

    async fn publish_batch(&self, events: &[Event]) -> Batch {
        self.publish_stored(events, &[]).await
    }

    async fn publish_stored(&self, events: &[Event], stored: &[PathBuf]) -> Batch {
        // On a failure none counts as published: those already in place are found there (and
        // their directory fsynced) when they are tried again.
        match self.write(events, stored).await {
            Ok(()) => Batch {
                published: vec![true; events.len()],
                error: None,
            },
            Err(e) => Batch {
                published: vec![false; events.len()],
                error: Some(e),
            },
        }
    }

    fn prune(&self, before: std::time::SystemTime) -> Result<usize, QueueError> {
        persist::prune_older(&self.dir, before).map_err(QueueError::Publish)
    }
}

/// The file name a submitted command gets: the time (for FIFO order) and a safe form of its id.
fn submit_name(id: &str) -> String {
    use crate::clock::Clock;
    let nanos = crate::clock::SystemClock
        .now()
        .timestamp_nanos_opt()
        .unwrap_or(0);
    let safe: String = id
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || "-_".contains(c) {
                c
            } else {
                '_'
            }
        })
        .take(100)
        .collect();
    format!("{nanos:024}-{safe}.json")
}

#[async_trait]
impl super::Client for Spool {
    async fn submit(&self, id: &str, body: &[u8]) -> Result<(), QueueError> {
        Spool::submit(self, &submit_name(id), body)
    }

    async fn watch(&self, command: Option<&str>) -> Result<Box<dyn super::EventWatch>, QueueError> {
        Ok(Box::new(SpoolWatch {
            dir: self.dir.join(EVENTS),
            // Made before the first listing, so nothing falls between the two.
            wake: DirWake::new(&self.dir.join(EVENTS), true),
            seen: std::collections::HashSet::new(),
            ready: std::collections::VecDeque::new(),
            first: Some(command.map_or(Existing::All, |c| Existing::Only(outcome_files(c)))),
            list: false,
        }))
    }

    async fn dead_letters(&self, max: usize) -> Result<Vec<super::DeadLetter>, QueueError> {
        let mut out = Vec::new();
        for name in self
            .list(DEAD)
            .into_iter()
            .filter(|n| !n.ends_with(".reason.json"))
        {
            if out.len() >= max {
                break;
            }
            let (body, reason) = self.dead(&name)?;
            out.push(super::DeadLetter { body, reason });
        }
        Ok(out)
    }

    async fn replay_one(&self) -> Result<Option<Vec<u8>>, QueueError> {
        let Some(name) = self
            .list(DEAD)
            .into_iter()
            .find(|n| !n.ends_with(".reason.json"))
        else {
            return Ok(None);
        };
        let (body, _) = self.dead(&name)?;
        self.replay(&name)?;
        Ok(Some(body))
    }
}

/// Events of a spool, including those already there (a replayed outcome is not rewritten).
///
/// The directory is listed once, at the first call; after that only the names notified as
/// arrived are read, so a wait costs what arrives, not what the directory holds. It is listed
/// again when notifications are missing or lost, and at each safety-net poll.
struct SpoolWatch {
    dir: PathBuf,
    wake: DirWake,
    seen: std::collections::HashSet<String>,
    ready: std::collections::VecDeque<Event>,
    /// What the first listing reads of the events already there; `None` once it is done.
    first: Option<Existing>,
    /// The next scan lists the directory.
    list: bool,
}

/// What a watch reads of the events already in `events/` when it starts.
enum Existing {
    /// Every one.
    All,
    /// Only these files (one command's outcomes); the others are taken as seen.
    Only([String; 3]),
}

/// The files of command `id`'s outcome events in `events/` ([`SpoolSink`] names a file after
/// its event's id, which is deterministic): `exec.completed`, `command.result`,
/// `command.rejected`.
fn outcome_files(id: &str) -> [String; 3] {
    ["exec.completed", "command.result", "command.rejected"]
        .map(|kind| format!("{}.json", crate::protocol::event_id(id, kind, 0)))
}

impl SpoolWatch {
    /// The event files to look at now.
    fn scan(&mut self) -> Result<Vec<String>, QueueError> {
        let notified = match self.first.is_some() || std::mem::take(&mut self.list) {
            true => None,
            false => self.wake.arrivals(),
        };
        let mut names = match notified {
            Some(names) => names,
            None => {
                // Whatever arrived meanwhile is in the listing.
                let _ = self.wake.arrivals();
                let mut names: Vec<String> = fs::read_dir(&self.dir)
                    .map_err(io("list", &self.dir))?
                    .flatten()
                    .map(|e| e.file_name().to_string_lossy().into_owned())
                    .collect();
                names.sort();
                names
            }
        };
        // A rename in the directory is notified as its two ends and as the pair.
        let mut once = std::collections::HashSet::new();
        names
            .retain(|n| n.ends_with(".json") && !persist::is_leftover(n) && once.insert(n.clone()));
        if let Some(Existing::Only(wanted)) = self.first.take() {
            let (read, skip): (Vec<String>, Vec<String>) =
                names.into_iter().partition(|n| wanted.contains(n));
            self.seen.extend(skip);
            names = read;
        }
        Ok(names)
    }
}

#[async_trait]
impl super::EventWatch for SpoolWatch {
    async fn next(&mut self) -> Result<Event, QueueError> {
        loop {
            if let Some(e) = self.ready.pop_front() {
                return Ok(e);
            }
            for n in self.scan()? {
                if !self.seen.contains(&n)
                    && let Ok(e) = persist::read_json::<Event>(&self.dir.join(&n), 16 << 20)
                {
                    self.seen.insert(n);
                    self.ready.push_back(e);
                }
            }
            if self.ready.is_empty()
                && self.wake.wait(Duration::from_millis(50)).await == Woke::Polled
            {
                self.list = true;
            }
        }
    }

    async fn close(self: Box<Self>) {
        let SpoolWatch { dir, wake, .. } = *self;
        wake.release(&dir).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::{EventBody, PROTOCOL_VERSION};
    use crate::queue::EventWatch as _;

    fn src(s: &Spool) -> SpoolSource {
        s.source(
            Duration::from_millis(5),
            CancellationToken::new(),
            BTreeSet::new(),
        )
    }

    #[tokio::test]
    async fn claim_ack_requeue_dead_letter() {
        let dir = tempfile::tempdir().unwrap();
        let spool = Spool::open(dir.path()).unwrap();
        spool.submit("0001-a", b"A").unwrap();
        spool.submit("0002-b", b"B").unwrap();
        spool.submit("0003-c", b"C").unwrap();
        std::fs::write(dir.path().join("incoming/.0000-partial.tmp"), b"half").unwrap();
        let mut s = src(&spool);
        let a = s.next(1).await.unwrap().unwrap();
        assert_eq!(
            (a.body.as_slice(), a.redelivered),
            (&b"A"[..], false),
            "name order, partial writes skipped"
        );
        a.settle.ack().await.unwrap();
        let b = s.next(1).await.unwrap().unwrap();
        b.settle.requeue().await.unwrap();
        let b_again = s.next(1).await.unwrap().unwrap();
        assert_eq!((b_again.body.as_slice(), b_again.attempt), (&b"B"[..], 2));
        b_again
            .settle
            .dead_letter("bad input: reasons are kept")
            .await
            .unwrap();
        let c = s.next(1).await.unwrap().unwrap();
        assert_eq!(c.body, b"C");
        drop(c); // a crash: left in processing/
        assert_eq!(spool.list("processing"), vec!["0003-c"]);
        // Another command's reason, half written: not a dead letter of its own.
        std::fs::write(
            dir.path().join("dead/.0004-d.reason.json.Xy12Z3.tmp"),
            b"{\"re",
        )
        .unwrap();
        assert_eq!(spool.list("dead"), vec!["0002-b", "0002-b.reason.json"]);
        let reason = std::fs::read_to_string(dir.path().join("dead/0002-b.reason.json")).unwrap();
        assert!(reason.contains("reasons are kept"));

        // The next start returns it and marks it redelivered.
        let spool = Spool::open(dir.path()).unwrap();
        let returned = spool.recover().unwrap();
        let mut s = spool.source(Duration::from_millis(5), CancellationToken::new(), returned);
        let c = s.next(1).await.unwrap().unwrap();
        assert_eq!(
            (c.body.as_slice(), c.redelivered, c.attempt),
            (&b"C"[..], true, 2)
        );
        c.settle.ack().await.unwrap();
        assert!(spool.list("incoming").is_empty());
    }

    #[tokio::test]
    async fn competing_consumers_never_share_a_command() {
        let dir = tempfile::tempdir().unwrap();
        let spool = Spool::open(dir.path()).unwrap();
        for i in 0..200 {
            spool
                .submit(&format!("{i:04}"), format!("{i}").as_bytes())
                .unwrap();
        }
        let close = CancellationToken::new();
        let mut tasks = Vec::new();
        for _ in 0..4 {
            let mut s = spool.source(Duration::from_millis(1), close.clone(), BTreeSet::new());
            tasks.push(tokio::spawn(async move {
                let mut got = Vec::new();
                while let Ok(Some(d)) = tokio::time::timeout(Duration::from_millis(200), s.next(1))
                    .await
                    .unwrap_or(Ok(None))
                {
                    got.push(String::from_utf8(d.body.clone()).unwrap());
                    d.settle.ack().await.unwrap();
                }
                got
            }));
        }
        let mut all = Vec::new();
        for t in tasks {
            all.extend(t.await.unwrap());
        }
        close.cancel();
        all.sort_by_key(|s| s.parse::<u32>().unwrap());
        assert_eq!(
            all,
            (0..200).map(|i| i.to_string()).collect::<Vec<_>>(),
            "each exactly once"
        );
    }

    #[tokio::test]
    async fn close_ends_the_source_and_events_are_deduplicated() {
        let dir = tempfile::tempdir().unwrap();
        let spool = Spool::open(dir.path()).unwrap();
        let close = CancellationToken::new();
        let mut s = spool.source(Duration::from_millis(5), close.clone(), BTreeSet::new());
        let waiter = tokio::spawn(async move { s.next(1).await.unwrap().is_none() });
        close.cancel();
        assert!(waiter.await.unwrap(), "a closed source returns None");

        let e = Event {
            v: PROTOCOL_VERSION,
            id: crate::protocol::event_id("cmd", "agent.started", 0),
            agent: "a".into(),
            alloc: None,
            exec: None,
            correlation_id: None,
            command: None,
            time: crate::time::parse("2026-01-01T00:00:00Z").unwrap(),
            body: EventBody::AgentStopped {},
            labels: Default::default(),
        };
        let sink = spool.sink();
        sink.publish(&e).await.unwrap();
        sink.publish(&e).await.unwrap();
        assert_eq!(spool.list("events"), vec![format!("{}.json", e.id)]);
    }

    /// An event the outbox holds is linked into `events/` (the same inode: nothing written
    /// again); one whose stored copy is gone is written; one already there is left alone.
    #[tokio::test]
    async fn stored_events_are_linked_from_the_outbox() {
        use std::os::unix::fs::MetadataExt as _;
        let dir = tempfile::tempdir().unwrap();
        let spool = Spool::open(dir.path()).unwrap();
        let outbox = tempfile::tempdir_in(dir.path()).unwrap();
        let (a, b, c) = (rejected("a"), rejected("b"), rejected("c"));
        let stored: Vec<PathBuf> = ["a", "b", "c"]
            .map(|n| outbox.path().join(format!("{n}.json")))
            .into();
        persist::write_json_atomic(&stored[0], &a).unwrap();
        persist::write_json_atomic(&stored[2], &c).unwrap();
        let sink = spool.sink();
        sink.publish(&c).await.unwrap(); // already published: its copy is not linked
        let out = sink
            .publish_stored(&[a.clone(), b.clone(), c.clone()], &stored)
            .await;
        assert!(out.error.is_none() && out.published == [true; 3]);
        let ino = |p: &Path| std::fs::metadata(p).unwrap().ino();
        let events = dir.path().join(EVENTS);
        let file = |e: &Event| events.join(format!("{}.json", e.id));
        assert_eq!(ino(&file(&a)), ino(&stored[0]), "linked");
        assert_ne!(ino(&file(&c)), ino(&stored[2]), "left as it was");
        for e in [&a, &b, &c] {
            let read: Event = persist::read_json(&file(e), 1 << 20).unwrap();
            assert_eq!(read.command, e.command, "written or linked, the same event");
        }
        std::fs::remove_file(&stored[0]).unwrap();
        assert!(file(&a).exists(), "the outbox's removal leaves the event");
    }

    /// An event of command `cmd`, kind `kind`, with the id its agent would give it.
    fn event(cmd: &str, kind: &str, body: EventBody) -> Event {
        Event {
            v: PROTOCOL_VERSION,
            id: crate::protocol::event_id(cmd, kind, 0),
            agent: "a".into(),
            alloc: None,
            exec: None,
            correlation_id: None,
            command: Some(cmd.into()),
            time: crate::time::parse("2026-01-01T00:00:00Z").unwrap(),
            body,
            labels: Default::default(),
        }
    }

    fn rejected(cmd: &str) -> Event {
        event(
            cmd,
            "command.rejected",
            EventBody::CommandRejected {
                command_id: Some(cmd.into()),
                error: crate::error::ReflowError::new(crate::error::Kind::Other, "decode", "no"),
            },
        )
    }

    /// A command's watch finds its outcome among the events already there without reading the
    /// others, then reads only what arrives: the directory is not listed again while the
    /// notifications tell what came, and is listed when they may have been lost.
    #[tokio::test]
    async fn a_commands_watch_reads_its_outcome_and_then_only_what_arrives() {
        let dir = tempfile::tempdir().unwrap();
        let spool = Spool::open(dir.path()).unwrap();
        let sink = spool.sink();
        for i in 0..50 {
            sink.publish(&rejected(&format!("old-{i}"))).await.unwrap();
        }
        sink.publish(&rejected("mine")).await.unwrap();
        let mut w = SpoolWatch {
            dir: dir.path().join(EVENTS),
            wake: DirWake::new(&dir.path().join(EVENTS), true),
            seen: Default::default(),
            ready: Default::default(),
            first: Some(Existing::Only(outcome_files("mine"))),
            list: false,
        };
        assert!(w.wake.watcher.is_some(), "inotify works here");
        assert_eq!(
            w.scan().unwrap(),
            [format!("{}.json", rejected("mine").id)],
            "one listing; of what was there, only the outcome is read"
        );
        assert_eq!(w.seen.len(), 50);
        let e = w.next().await.unwrap();
        assert_eq!(e.command.as_deref(), Some("mine"));
        // Arrivals: named by the notifications, without a listing.
        sink.publish(&rejected("new-1")).await.unwrap();
        sink.publish(&rejected("new-2")).await.unwrap();
        let want: Vec<String> = ["new-1", "new-2"]
            .map(|c| format!("{}.json", rejected(c).id))
            .into();
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        let mut got = Vec::new();
        while got.len() < 2 && std::time::Instant::now() < deadline {
            w.wake.wait(Duration::from_millis(50)).await;
            got.extend(w.scan().unwrap());
        }
        assert_eq!(got, want, "only the arrived names, in arrival order");
        // Lost notifications: the next scan lists the directory.
        w.wake.arrived.lock().unwrap().lost = true;
        assert_eq!(w.scan().unwrap().len(), 53);
        // (The scans above took the names without reading them: the next listing reads them.)
        assert_eq!(two_commands(&mut w).await, ["new-1", "new-2"]);
    }

    /// The inotify watches of this process on the directory whose inode is `ino`.
    fn watches_on(ino: u64) -> usize {
        let tag = format!(" ino:{ino:x} ");
        std::fs::read_dir("/proc/self/fdinfo")
            .unwrap()
            .flatten()
            .filter_map(|e| std::fs::read_to_string(e.path()).ok())
            .map(|info| {
                info.lines()
                    .filter(|l| l.starts_with("inotify ") && l.contains(&tag))
                    .count()
            })
            .sum()
    }

    #[tokio::test]
    async fn closing_a_watch_removes_its_inotify_watch_before_the_close() {
        use std::os::unix::fs::MetadataExt as _;
        let dir = tempfile::tempdir().unwrap();
        let spool = Spool::open(dir.path()).unwrap();
        let ino = std::fs::metadata(dir.path().join(EVENTS)).unwrap().ino();
        let w = super::super::Client::watch(&spool, Some("mine"))
            .await
            .unwrap();
        assert_eq!(watches_on(ino), 1, "the watch is notified by inotify");
        w.close().await;
        assert_eq!(
            watches_on(ino),
            0,
            "closed, the directory is no longer watched, whenever the notify thread closes its instance"
        );
    }

    /// A watch of every event reads those already there too.
    #[tokio::test]
    async fn a_watch_of_everything_reads_what_was_there() {
        let dir = tempfile::tempdir().unwrap();
        let spool = Spool::open(dir.path()).unwrap();
        let sink = spool.sink();
        sink.publish(&rejected("a")).await.unwrap();
        sink.publish(&rejected("b")).await.unwrap();
        let mut w = super::super::Client::watch(&spool, None).await.unwrap();
        assert_eq!(two_commands(w.as_mut()).await, ["a", "b"]);
    }

    /// The commands of the next two events of `w`, sorted.
    async fn two_commands(w: &mut (dyn crate::queue::EventWatch + '_)) -> [String; 2] {
        let mut got = [(); 2].map(|()| String::new());
        for c in &mut got {
            *c = w.next().await.unwrap().command.unwrap_or_default();
        }
        got.sort();
        got
    }

    /// A producer (or a watcher) that opens the spool while the agent runs a command leaves
    /// that command where it is: only the agent's own start returns what is in `processing/`.
    #[tokio::test]
    async fn a_producer_opening_the_spool_leaves_running_commands_alone() {
        let dir = tempfile::tempdir().unwrap();
        let spool = Spool::open(dir.path()).unwrap();
        spool.submit("0001-a", b"A").unwrap();
        let mut s = src(&spool);
        let a = s.next(1).await.unwrap().unwrap();
        let url = format!("spool://{}", dir.path().display());
        let producer = crate::queue::client(&url, &Default::default())
            .await
            .unwrap();
        producer.submit("b", b"B").await.unwrap();
        assert_eq!(spool.list("processing"), ["0001-a"]);
        a.settle.ack().await.unwrap();
        assert!(spool.list("processing").is_empty());
    }
}
