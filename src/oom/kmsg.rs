//! The kernel log (`/dev/kmsg`) as an OOM evidence source: a pure parser for OOM records in both
//! kernel formats, and one bounded reader per agent.
//!
//! Formats (the text after `;` in a kmsg record `<prio>,<seq>,<usec>,<flags>;<text>`):
//! - old kernels: `Out of memory: Kill process <pid> (<comm>) score ...` and
//!   `Memory cgroup out of memory: Kill process <pid> (<comm>) score ...`
//! - kernels from about 5.0: `oom-kill:constraint=...,task_memcg=<path>,task=<comm>,pid=<pid>,uid=...`
//!   followed by `Memory cgroup out of memory: Killed process <pid> (<comm>) total-vm:...`
//!   (or `Out of memory: Killed process ...` for a global OOM).
//!
//! A record matches an exec when its cgroup path names the container's id (so a child process of
//! the container counts) or its pid is the container's main pid, and its time is in the exec's
//! window.

use std::collections::VecDeque;
use std::fs::File;
use std::io::{self, Read};
use std::os::fd::OwnedFd;
use std::os::unix::fs::OpenOptionsExt;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio_util::sync::CancellationToken;

use crate::time::Time;

/// The kernel log device.
pub const KMSG_PATH: &str = "/dev/kmsg";
/// Most OOM records kept in memory; older ones are dropped first.
pub const MAX_RECORDS: usize = 4096;
/// Largest kmsg record (the kernel's limit is about 1 KiB of text; 8 KiB is safe).
const RECORD_BUF: usize = 8192;

/// What kind of OOM line a record is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OomLineKind {
    /// `oom-kill:constraint=...,task_memcg=...,pid=...` (new kernels).
    OomKill,
    /// `... Killed process <pid> (...)` (new kernels).
    KilledProcess,
    /// `... Kill process <pid> (...)` (old kernels).
    KillProcess,
}

/// One OOM record from the kernel log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OomRecord {
    /// kmsg sequence number.
    pub seq: u64,
    /// Microseconds since boot.
    pub usec: u64,
    /// The kind of line.
    pub kind: OomLineKind,
    /// The killed process.
    pub pid: Option<u32>,
    /// Its command name.
    pub task: Option<String>,
    /// The cgroup of the killed task (`task_memcg=`), when the line names it.
    pub task_memcg: Option<String>,
    /// Whether the kill was within a memory cgroup (vs. the whole machine).
    pub memcg: bool,
    /// The message text, cut to 512 bytes.
    pub text: String,
}

fn field<'a>(text: &'a str, key: &str) -> Option<&'a str> {
    text.split(',').find_map(|kv| {
        kv.trim()
            .strip_prefix(key)
            .and_then(|v| v.strip_prefix('='))
    })
}

fn pid_after(text: &str, marker: &str) -> Option<(u32, Option<String>)> {
    let rest = &text[text.find(marker)? + marker.len()..];
    let mut it = rest.trim_start().splitn(2, ' ');
    let pid = it.next()?.parse().ok()?;
    let comm = it
        .next()
        .and_then(|r| r.strip_prefix('('))
        .and_then(|r| r.split_once(')'))
        .map(|(c, _)| c.to_string());
    Some((pid, comm))
}

/// Parses one kmsg record; `None` unless it is a well-formed OOM record. Never panics.
pub fn parse_record(line: &str) -> Option<OomRecord> {
    let (header, text) = line.split_once(';')?;
    let mut h = header.split(',');
    let _prio: u32 = h.next()?.trim().parse().ok()?;
    let seq: u64 = h.next()?.trim().parse().ok()?;
    let usec: u64 = h.next()?.trim().parse().ok()?;
    // Continuation lines (` KEY=value`) follow the first line; only the first matters here.
    let text = text.lines().next().unwrap_or("").trim_end();
    let cut: String = text.chars().take(512).collect();
    if let Some(rest) = text.strip_prefix("oom-kill:") {
        let pid = field(rest, "pid").and_then(|p| p.parse().ok());
        let constraint = field(rest, "constraint").unwrap_or("");
        return Some(OomRecord {
            seq,
            usec,
            kind: OomLineKind::OomKill,
            pid,
            task: field(rest, "task").map(str::to_string),
            task_memcg: field(rest, "task_memcg").map(str::to_string),
            memcg: constraint == "CONSTRAINT_MEMCG",
            text: cut,
        });
    }
    let memcg = text.contains("Memory cgroup out of memory");
    if !(memcg || text.contains("Out of memory")) {
        return None;
    }
    let (kind, marker) = if text.contains("Killed process ") {
        (OomLineKind::KilledProcess, "Killed process ")
    } else if text.contains("Kill process ") {
        (OomLineKind::KillProcess, "Kill process ")
    } else {
        return None;
    };
    let (pid, task) = pid_after(text, marker)?;
    Some(OomRecord {
        seq,
        usec,
        kind,
        pid: Some(pid),
        task,
        task_memcg: None,
        memcg,
        text: cut,
    })
}

/// What an exec is, for matching kernel records.
#[derive(Debug, Clone, Default)]
pub struct OomTarget {
    /// Container main process pid (0 when unknown).
    pub pid: i64,
    /// Container id (full hex).
    pub container_id: String,
    /// The container's memory cgroup path, when known (e.g. `/docker/<id>`).
    pub cgroup: Option<String>,
}

impl OomTarget {
    fn matches(&self, r: &OomRecord, related: &[OomRecord]) -> bool {
        let by_cgroup = |memcg: &Option<String>| {
            memcg.as_deref().is_some_and(|m| {
                (!self.container_id.is_empty() && m.contains(&self.container_id))
                    || self
                        .cgroup
                        .as_deref()
                        .is_some_and(|c| !c.is_empty() && m == c)
            })
        };
        if by_cgroup(&r.task_memcg) {
            return true;
        }
        // A "Killed process N" line belongs to the oom-kill line with the same pid just before it.
        if r.kind != OomLineKind::OomKill
            && related.iter().any(|o| {
                o.kind == OomLineKind::OomKill
                    && o.pid == r.pid
                    && o.seq < r.seq
                    && r.seq - o.seq <= 8
                    && by_cgroup(&o.task_memcg)
            })
        {
            return true;
        }
        self.pid > 0 && r.pid.is_some_and(|p| i64::from(p) == self.pid)
    }
}

/// Finds the first record for `target` with boot-relative time in `(start, end]` (microseconds).
pub fn find(
    records: &[OomRecord],
    target: &OomTarget,
    start_usec: u64,
    end_usec: u64,
) -> Option<OomRecord> {
    records
        .iter()
        .filter(|r| r.usec > start_usec && r.usec <= end_usec)
        // Prefer the human-readable "Killed process" line when both are there.
        .filter(|r| target.matches(r, records))
        .min_by_key(|r| (r.kind == OomLineKind::OomKill, r.seq))
        .cloned()
}

#[async_trait::async_trait]
impl super::OomDetector for KmsgMonitor {
    /// Waits until the reader has drained the log after this call (so a kill that ended the
    /// exec has been read; at most 2 s), then looks for a record for `target` in the window.
    async fn oom(&self, target: &OomTarget, start: Time, end: Time) -> Option<super::Detection> {
        if !self.caught_up(Instant::now(), Duration::from_secs(2)).await {
            tracing::warn!("The kernel log reader did not catch up; kmsg evidence may be missing.");
        }
        let boot = boot_time(self.clock.now())?;
        let usec = |t: Time| u64::try_from((t - boot).num_microseconds().unwrap_or(0)).unwrap_or(0);
        let r = find(&self.records(), target, usec(start), usec(end))?;
        Some(super::Detection {
            source: super::OomSource::Kmsg,
            time: boot + chrono::Duration::microseconds(i64::try_from(r.usec).unwrap_or(0)),
            detail: r.text,
        })
    }
}

/// Boot time, as `now - /proc/uptime`.
pub fn boot_time(now: Time) -> Option<Time> {
    use procfs::Current;
    let secs = procfs::Uptime::current().ok()?.uptime;
    // Microsecond precision is plenty; uptime has centiseconds.
    #[allow(clippy::cast_possible_truncation)]
    let us = (secs * 1e6) as i64;
    Some(now - chrono::Duration::microseconds(us))
}

/// One reader of `/dev/kmsg` per agent, keeping the last [`MAX_RECORDS`] OOM records. It reads
/// the whole ring buffer first, so an OOM that happened while no agent ran is still found.
///
/// The reader thread sleeps in `poll(2)` on the log and on an eventfd of its own: it wakes when
/// the kernel logs a record, when [`KmsgMonitor::caught_up`] asks it to drain, or when it is
/// stopped, and an idle agent costs it no wakeups.
#[derive(Debug, Clone)]
pub struct KmsgMonitor {
    clock: Arc<dyn crate::clock::Clock>,
    records: Arc<Mutex<VecDeque<OomRecord>>>,
    last_seq: Arc<Mutex<Option<u64>>>,
    reader: Arc<tokio::sync::watch::Sender<Reader>>,
    /// Wakes the reader thread (`None` for fixed records, which have no reader).
    wake: Option<Arc<OwnedFd>>,
    stop: CancellationToken,
}

/// Where the reader thread is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Reader {
    /// Started, not yet through the log once.
    Starting,
    /// It last found the log drained at this instant: every record logged before it is read.
    Drained(Instant),
    /// Not reading: stopped, or the log could not be read.
    Stopped,
}

impl KmsgMonitor {
    /// Starts the reader thread. Without a readable `/dev/kmsg` it logs once and stays empty.
    /// `clock` turns the kernel's boot-relative timestamps into wall-clock times.
    pub fn start(clock: Arc<dyn crate::clock::Clock>) -> Self {
        let wake = match rustix::event::eventfd(
            0,
            rustix::event::EventfdFlags::CLOEXEC | rustix::event::EventfdFlags::NONBLOCK,
        ) {
            Ok(fd) => Some(Arc::new(fd)),
            Err(e) => {
                tracing::warn!(error = %crate::error::chain(&e), "Creating the kernel log reader's eventfd failed; OOM evidence from the kernel log is unavailable.");
                None
            }
        };
        let m = KmsgMonitor {
            clock,
            records: Arc::new(Mutex::new(VecDeque::new())),
            last_seq: Arc::new(Mutex::new(None)),
            reader: Arc::new(tokio::sync::watch::Sender::new(Reader::Starting)),
            wake,
            stop: CancellationToken::new(),
        };
        let Some(wake) = m.wake.clone() else {
            m.reader.send_replace(Reader::Stopped);
            return m;
        };
        let (records, last_seq, reader, stop) = (
            m.records.clone(),
            m.last_seq.clone(),
            m.reader.clone(),
            m.stop.clone(),
        );
        let spawned = std::thread::Builder::new()
            .name("kmsg".into())
            .spawn(move || {
                if let Err(e) = read_loop(&records, &last_seq, &reader, &wake, &stop) {
                    tracing::warn!(error = %crate::error::chain(&e), "Reading the kernel log stopped; OOM evidence from it is unavailable.");
                }
                reader.send_replace(Reader::Stopped);
            });
        if let Err(e) = spawned {
            tracing::warn!(error = %crate::error::chain(&e), "Starting the kernel log reader failed.");
            m.reader.send_replace(Reader::Stopped);
        }
        m
    }

    /// A monitor over fixed records; for tests.
    pub fn from_records(records: Vec<OomRecord>, clock: Arc<dyn crate::clock::Clock>) -> Self {
        KmsgMonitor {
            clock,
            last_seq: Arc::new(Mutex::new(records.iter().map(|r| r.seq).max())),
            records: Arc::new(Mutex::new(records.into())),
            // Fixed records are always "read": no waiting for a reader.
            reader: Arc::new(tokio::sync::watch::Sender::new(Reader::Drained(
                Instant::now() + Duration::from_secs(365 * 24 * 3600),
            ))),
            wake: None,
            stop: CancellationToken::new(),
        }
    }

    /// The OOM records kept.
    pub fn records(&self) -> Vec<OomRecord> {
        crate::par::lock(&self.records).iter().cloned().collect()
    }

    /// The sequence number of the last record read (any record, not only OOM ones).
    pub fn last_seq(&self) -> Option<u64> {
        *crate::par::lock(&self.last_seq)
    }

    /// Waits until the reader has drained the log at some point after `since` (so every record
    /// logged before `since` has been read), for at most `max`. Returns whether it caught up;
    /// at once `false` when no reader runs.
    ///
    /// The reader is woken to drain now, so this takes about as long as reading what the
    /// kernel logged since the reader last looked.
    ///
    /// # Cancel safety
    /// Cancel safe.
    pub async fn caught_up(&self, since: Instant, max: Duration) -> bool {
        let mut rx = self.reader.subscribe();
        self.wake_reader();
        let done = rx.wait_for(|r| match r {
            Reader::Drained(t) => *t >= since,
            Reader::Stopped => true,
            Reader::Starting => false,
        });
        match tokio::time::timeout(max, done).await {
            Ok(Ok(r)) => matches!(*r, Reader::Drained(_)),
            _ => false,
        }
    }

    /// Stops the reader thread.
    pub fn stop(&self) {
        self.stop.cancel();
        self.wake_reader();
    }

    fn wake_reader(&self) {
        if let Some(fd) = &self.wake {
            // Adds 1 to the eventfd's counter; it cannot fail short of the counter's overflow,
            // and a wakeup already pending does as well.
            let _ = rustix::io::write(&**fd, &1u64.to_ne_bytes());
        }
    }
}

fn read_loop(
    records: &Mutex<VecDeque<OomRecord>>,
    last_seq: &Mutex<Option<u64>>,
    reader: &tokio::sync::watch::Sender<Reader>,
    wake: &OwnedFd,
    stop: &CancellationToken,
) -> io::Result<()> {
    use rustix::event::{PollFd, PollFlags, poll};
    // Non-blocking: drained is `EAGAIN`, and then the thread sleeps in poll.
    let mut f = File::options()
        .read(true)
        .custom_flags(libc::O_NONBLOCK)
        .open(KMSG_PATH)?;
    let mut buf = vec![0u8; RECORD_BUF];
    while !stop.is_cancelled() {
        // Taken before the read: a read that finds the log drained says every record logged
        // before it began has been read (one logged after the stamp could be unread).
        let reading = Instant::now();
        match f.read(&mut buf) {
            Ok(n) if n > 0 => {
                let line = String::from_utf8_lossy(&buf[..n]);
                if let Some(seq) = line.split(',').nth(1).and_then(|s| s.parse().ok()) {
                    *crate::par::lock(last_seq) = Some(seq);
                }
                if let Some(r) = parse_record(&line) {
                    let mut q = crate::par::lock(records);
                    if q.len() == MAX_RECORDS {
                        q.pop_front();
                    }
                    q.push_back(r);
                }
            }
            Ok(_) => idle(reading, reader, &f, wake)?,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => idle(reading, reader, &f, wake)?,
            // Records were overwritten before we read them; continue with the next ones.
            Err(e) if e.kind() == io::ErrorKind::BrokenPipe => {}
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    return Ok(());

    /// The log was drained at `at`: says so, then sleeps until the kernel logs more or the
    /// reader is woken, and takes the wakeups.
    fn idle(
        at: Instant,
        reader: &tokio::sync::watch::Sender<Reader>,
        log: &File,
        wake: &OwnedFd,
    ) -> io::Result<()> {
        reader.send_replace(Reader::Drained(at));
        let mut fds = [
            PollFd::new(log, PollFlags::IN),
            PollFd::new(wake, PollFlags::IN),
        ];
        match poll(&mut fds, None) {
            Ok(_) | Err(rustix::io::Errno::INTR) => {}
            Err(e) => return Err(e.into()),
        }
        let mut counter = [0u8; 8];
        match rustix::io::read(wake, &mut counter) {
            Ok(_) | Err(rustix::io::Errno::AGAIN) => Ok(()),
            Err(e) => Err(e.into()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const ID: &str = "4f1d0e7c2b3a49586a7b8c9d0e1f2a3b4c5d6e7f8091a2b3c4d5e6f708192a3b";

    fn new_format() -> Vec<String> {
        vec![
            "6,1001,30000000,-;bash invoked oom-killer: gfp_mask=0xcc0(GFP_KERNEL), order=0, oom_score_adj=1000".into(),
            format!("6,1002,30000100,-;oom-kill:constraint=CONSTRAINT_MEMCG,nodemask=(null),cpuset={ID},mems_allowed=0,oom_memcg=/docker/{ID},task_memcg=/docker/{ID},task=sh,pid=4242,uid=0"),
            "3,1003,30000200,-;Memory cgroup out of memory: Killed process 4242 (sh) total-vm:40000kB, anon-rss:32000kB, file-rss:0kB, shmem-rss:0kB, UID:0 pgtables:100kB oom_score_adj:1000".into(),
        ]
    }

    #[test]
    fn parses_new_format() {
        let recs: Vec<_> = new_format()
            .iter()
            .filter_map(|l| parse_record(l))
            .collect();
        assert_eq!(recs.len(), 2);
        assert_eq!(recs[0].kind, OomLineKind::OomKill);
        assert_eq!(recs[0].pid, Some(4242));
        assert_eq!(recs[0].task.as_deref(), Some("sh"));
        assert_eq!(
            recs[0].task_memcg.as_deref(),
            Some(format!("/docker/{ID}").as_str())
        );
        assert!(recs[0].memcg);
        assert_eq!(recs[1].kind, OomLineKind::KilledProcess);
        assert_eq!(
            (recs[1].pid, recs[1].task.as_deref(), recs[1].usec),
            (Some(4242), Some("sh"), 30000200)
        );
    }

    #[test]
    fn parses_old_format() {
        let r = parse_record("3,55,180000000,-;Memory cgroup out of memory: Kill process 3 (java) score 999 or sacrifice child").unwrap();
        assert_eq!(
            (r.kind, r.pid, r.memcg),
            (OomLineKind::KillProcess, Some(3), true)
        );
        let g = parse_record(
            "3,56,190000000,-;Out of memory: Kill process 7 (x) score 1 or sacrifice child",
        )
        .unwrap();
        assert_eq!((g.pid, g.memcg), (Some(7), false));
        let k = parse_record("3,57,190000001,-;Out of memory: Killed process 8 (y) total-vm:1kB")
            .unwrap();
        assert_eq!((k.kind, k.pid), (OomLineKind::KilledProcess, Some(8)));
    }

    #[test]
    fn continuation_lines_and_other_records_are_ignored() {
        let with_dict =
            "3,9,100,-;Out of memory: Killed process 9 (z) total-vm:1kB\n SUBSYSTEM=memory\n";
        assert_eq!(parse_record(with_dict).unwrap().pid, Some(9));
        assert!(parse_record("6,10,100,-;eth0: link up").is_none());
    }

    #[test]
    fn malformed_lines_never_panic() {
        let bad = [
            "",
            ";",
            "garbage",
            "6,x,1,-;Out of memory: Kill process 1 (a)",
            "6,1,x,-;Out of memory: Kill process 1 (a)",
            "6,1,1,-;Out of memory: Kill process",
            "6,1,1,-;Out of memory: Kill process notanumber (a)",
            "6,1,1,-;Out of memory: Killed process 99999999999 (a)",
            "6,1,1,-;oom-kill:",
            "6,1,1,-;oom-kill:pid=,task_memcg",
            "6,1,1,-;Out of memory: Kill process 5 (unterminated",
            "é,ü,ß;Out of memory",
        ];
        for l in bad {
            let _ = parse_record(l);
        }
        assert!(parse_record("6,1,1,-;Out of memory: Kill process").is_none());
        let unterminated =
            parse_record("6,1,1,-;Out of memory: Kill process 5 (unterminated").unwrap();
        assert_eq!((unterminated.pid, unterminated.task), (Some(5), None));
        assert_eq!(
            parse_record("6,1,1,-;oom-kill:pid=,task_memcg")
                .unwrap()
                .pid,
            None
        );
    }

    #[tokio::test]
    async fn the_detector_port_finds_a_child_kill_with_its_kernel_time() {
        use crate::clock::{Clock, ManualClock};
        use crate::oom::{OomDetector, OomSource};
        let recs: Vec<_> = new_format()
            .iter()
            .filter_map(|l| parse_record(l))
            .collect();
        let clock = ManualClock::new(crate::time::parse("2026-06-01T12:00:00Z").unwrap());
        let m = KmsgMonitor::from_records(recs, Arc::new(clock.clone()));
        let boot = boot_time(clock.now()).unwrap();
        let target = OomTarget {
            pid: 1,
            container_id: ID.into(),
            cgroup: None,
        };
        let d = m.oom(&target, boot, clock.now()).await.unwrap();
        assert_eq!(d.source, OomSource::Kmsg);
        assert!(d.detail.contains("Killed process 4242"), "{}", d.detail);
        // The record's 30.0002 s after boot, give or take the uptime read between the two calls.
        let off = (d.time - boot).num_milliseconds();
        assert!((29_000..31_000).contains(&off), "{off}");
        let other = OomTarget {
            pid: 1,
            container_id: "ffff".repeat(16),
            cgroup: None,
        };
        assert!(m.oom(&other, boot, clock.now()).await.is_none());
    }

    #[test]
    fn matching_by_cgroup_pid_and_window() {
        let mut recs: Vec<_> = new_format()
            .iter()
            .filter_map(|l| parse_record(l))
            .collect();
        recs.push(
            parse_record(
                "3,2000,90000000,-;Memory cgroup out of memory: Kill process 3 (old) score 1",
            )
            .unwrap(),
        );
        let by_id = OomTarget {
            pid: 1,
            container_id: ID.into(),
            cgroup: None,
        };
        // A child (pid 4242, not the main pid 1) of the container counts; the readable line wins.
        let hit = find(&recs, &by_id, 29_000_000, 31_000_000).unwrap();
        assert_eq!(hit.kind, OomLineKind::KilledProcess);
        assert!(
            find(&recs, &by_id, 30_000_200, 31_000_000).is_none(),
            "window is (start, end]"
        );
        let other = OomTarget {
            pid: 1,
            container_id: "ffff".repeat(16),
            cgroup: None,
        };
        assert!(find(&recs, &other, 0, u64::MAX).is_none());
        // Old kernels name only the pid.
        let by_pid = OomTarget {
            pid: 3,
            container_id: "ffff".repeat(16),
            cgroup: None,
        };
        assert_eq!(
            find(&recs, &by_pid, 60_000_000, 660_000_000).unwrap().pid,
            Some(3)
        );
        assert!(find(&recs, &by_pid, 0, 60_000_000).is_none());
    }
}
