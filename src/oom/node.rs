//! Node-level memory signals (Reflow's node OOM detector, on procfs instead of node_exporter):
//! the kernel's OOM kill counter (`/proc/vmstat` `oom_kill`), available memory
//! (`/proc/meminfo` `MemAvailable`) and memory pressure (`/proc/pressure/memory`). procfs
//! parses the files; the parsers here take their text (so they can be tested and fuzzed), and
//! [`NodeSnapshot::read`] reads the live ones.

use procfs::{Current, FromRead};

/// A node-level OOM is only blamed when available memory fell below this (Reflow's threshold).
pub const LOW_MEM_AVAILABLE: u64 = 100 << 20;

fn oom_kill(v: &procfs::VmStat) -> Option<u64> {
    v.0.get("oom_kill").and_then(|n| u64::try_from(*n).ok())
}

/// `oom_kill` from `/proc/vmstat` text.
pub fn parse_vmstat_oom_kill(text: &str) -> Option<u64> {
    oom_kill(&procfs::VmStat::from_read(text.as_bytes()).ok()?)
}

/// `MemAvailable` from `/proc/meminfo` text, in bytes.
pub fn parse_meminfo_available(text: &str) -> Option<u64> {
    procfs::Meminfo::from_read(text.as_bytes())
        .ok()?
        .mem_available
}

/// The `full` line's `total` (microseconds all tasks were stalled on memory) from
/// `/proc/pressure/memory` text.
pub fn parse_psi_full_total(text: &str) -> Option<u64> {
    // procfs 0.18 slices each `some`/`full` line at byte 5 unchecked: a line cut short (or with
    // a multi-byte character there) would panic it. The kernel never writes one; fuzzing did.
    let cut = text
        .lines()
        .any(|l| (l.starts_with("some") || l.starts_with("full")) && !l.is_char_boundary(5));
    if cut {
        return None;
    }
    Some(
        procfs::MemoryPressure::from_read(text.as_bytes())
            .ok()?
            .full
            .total,
    )
}

/// One reading of the node's memory signals.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct NodeSnapshot {
    /// Kernel OOM kills since boot.
    pub oom_kills: Option<u64>,
    /// Available memory, bytes.
    pub mem_available: Option<u64>,
    /// Memory stall time (all tasks), microseconds since boot.
    pub psi_full_us: Option<u64>,
}

impl NodeSnapshot {
    /// Reads the node's signals now; unreadable files leave fields empty.
    pub fn read() -> NodeSnapshot {
        NodeSnapshot {
            oom_kills: procfs::VmStat::current().ok().as_ref().and_then(oom_kill),
            mem_available: procfs::Meminfo::current()
                .ok()
                .and_then(|m| m.mem_available),
            psi_full_us: procfs::MemoryPressure::current().ok().map(|p| p.full.total),
        }
    }
}

/// Node signals over an exec's window: first and last snapshots and the lowest available memory.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct NodeWindow {
    /// At the start of the window.
    pub first: NodeSnapshot,
    /// At the end.
    pub last: NodeSnapshot,
    /// Lowest `MemAvailable` seen.
    pub min_available: Option<u64>,
}

impl NodeWindow {
    /// Adds a snapshot.
    pub fn observe(&mut self, s: NodeSnapshot) {
        if self.first == NodeSnapshot::default() {
            self.first = s;
        }
        self.last = s;
        self.min_available = match (self.min_available, s.mem_available) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        };
    }

    /// Kernel OOM kills during the window.
    pub fn oom_kills(&self) -> u64 {
        match (self.first.oom_kills, self.last.oom_kills) {
            (Some(a), Some(b)) => b.saturating_sub(a),
            _ => 0,
        }
    }

    /// A node-level OOM explanation, when the kernel killed something during the window while
    /// available memory was below [`LOW_MEM_AVAILABLE`].
    pub fn explain(&self) -> Option<String> {
        let min = self.min_available?;
        let kills = self.oom_kills();
        (kills > 0 && min < LOW_MEM_AVAILABLE).then(|| {
            let stall = match (self.first.psi_full_us, self.last.psi_full_us) {
                (Some(a), Some(b)) => format!(", memory stall {} ms", b.saturating_sub(a) / 1000),
                _ => String::new(),
            };
            format!("node OOM: {kills} kernel OOM kill(s) in the window, min MemAvailable {min} bytes{stall}")
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parsers() {
        assert_eq!(
            parse_vmstat_oom_kill("nr_free_pages 100\noom_kill 3\n"),
            Some(3)
        );
        assert_eq!(parse_vmstat_oom_kill("nr_free_pages 100\n"), None);
        let meminfo = [
            "MemTotal",
            "MemFree",
            "Buffers",
            "Cached",
            "SwapCached",
            "Active",
            "Inactive",
            "SwapTotal",
            "SwapFree",
            "Dirty",
            "Writeback",
            "Mapped",
            "Slab",
            "Committed_AS",
            "VmallocTotal",
            "VmallocUsed",
            "VmallocChunk",
        ]
        .iter()
        .map(|k| format!("{k}:       100 kB\n"))
        .collect::<String>();
        assert_eq!(
            parse_meminfo_available(&format!("{meminfo}MemAvailable:    2048 kB\n")),
            Some(2048 * 1024)
        );
        assert_eq!(parse_meminfo_available(&meminfo), None);
        assert_eq!(parse_meminfo_available("MemAvailable: lots\n"), None);
        // The live files parse on this machine.
        let now = NodeSnapshot::read();
        assert!(
            now.oom_kills.is_some() && now.mem_available.is_some(),
            "{now:?}"
        );
        let psi = "some avg10=0.00 avg60=0.00 avg300=0.00 total=10\nfull avg10=1.50 avg60=0.00 avg300=0.00 total=123456\n";
        assert_eq!(parse_psi_full_total(psi), Some(123456));
        assert_eq!(parse_psi_full_total("some total=1\n"), None);
        // Found by fuzzing: lines procfs would slice inside.
        assert_eq!(parse_psi_full_total("some"), None);
        assert_eq!(parse_psi_full_total("full\u{e9}x"), None);
    }

    #[test]
    fn window_explains_only_kills_under_pressure() {
        let snap = |k, a| NodeSnapshot {
            oom_kills: Some(k),
            mem_available: Some(a),
            psi_full_us: Some(0),
        };
        let mut w = NodeWindow::default();
        w.observe(snap(5, 8 << 30));
        w.observe(snap(6, 8 << 30));
        assert_eq!(w.oom_kills(), 1);
        assert!(
            w.explain().is_none(),
            "a kill elsewhere with plenty of memory is not blamed on us"
        );
        w.observe(snap(6, 50 << 20));
        assert!(w.explain().unwrap().contains("1 kernel OOM kill"));
        let mut quiet = NodeWindow::default();
        quiet.observe(snap(5, 10 << 20));
        quiet.observe(snap(5, 10 << 20));
        assert!(
            quiet.explain().is_none(),
            "low memory without a kill is not an OOM"
        );
    }
}
