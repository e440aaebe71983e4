//! Reading a process's cgroup: which cgroup it is in (from `/proc/<pid>/cgroup`), where that
//! cgroup lives (`/sys/fs/cgroup`, v1 or v2), and its memory and CPU counters. The parsers are pure
//! functions over file contents; only [`CgroupPaths::resolve`] and the readers touch the
//! filesystem.

use std::fs;
use std::path::{Path, PathBuf};

/// Where cgroup hierarchies are mounted.
pub const CGROUP_ROOT: &str = "/sys/fs/cgroup";

/// One line of `/proc/<pid>/cgroup`: `hierarchy-id:controllers:path`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CgroupLine {
    /// Hierarchy id (0 for the v2 unified hierarchy).
    pub id: u32,
    /// Controllers (empty for v2).
    pub controllers: Vec<String>,
    /// Path within the hierarchy.
    pub path: String,
}

/// Parses `/proc/<pid>/cgroup`; malformed lines are skipped.
pub fn parse_proc_cgroup(text: &str) -> Vec<CgroupLine> {
    text.lines()
        .filter_map(|l| {
            let mut parts = l.splitn(3, ':');
            let id = parts.next()?.parse().ok()?;
            let controllers = parts.next()?;
            let path = parts.next()?;
            if !path.starts_with('/') {
                return None;
            }
            Some(CgroupLine {
                id,
                controllers: controllers
                    .split(',')
                    .filter(|c| !c.is_empty())
                    .map(str::to_string)
                    .collect(),
                path: path.to_string(),
            })
        })
        .collect()
}

/// The directories of a process's memory and CPU accounting cgroups.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CgroupPaths {
    /// cgroup v1: separate memory and cpuacct hierarchies.
    V1 {
        /// The memory cgroup directory.
        memory: PathBuf,
        /// The cpuacct cgroup directory.
        cpuacct: Option<PathBuf>,
    },
    /// cgroup v2: one unified directory.
    V2 {
        /// The cgroup directory.
        dir: PathBuf,
    },
}

impl CgroupPaths {
    /// Maps parsed `/proc/<pid>/cgroup` lines to directories under `root`.
    pub fn from_lines(lines: &[CgroupLine], root: &Path) -> Option<CgroupPaths> {
        let join = |sub: &str, p: &str| root.join(sub).join(p.trim_start_matches('/'));
        let v1 = |ctl: &str| {
            lines
                .iter()
                .find(|l| l.controllers.iter().any(|c| c == ctl))
        };
        if let Some(mem) = v1("memory") {
            // v1 mounts cpuacct at `cpuacct` (alone, or as a link to `cpu,cpuacct`).
            let cpuacct = v1("cpuacct").map(|l| join("cpuacct", &l.path));
            return Some(CgroupPaths::V1 {
                memory: join("memory", &mem.path),
                cpuacct,
            });
        }
        lines
            .iter()
            .find(|l| l.id == 0 && l.controllers.is_empty())
            .map(|l| CgroupPaths::V2 {
                dir: join("", &l.path),
            })
    }

    /// Resolves the cgroups of `pid` from `/proc/<pid>/cgroup`.
    pub fn resolve(pid: i64) -> Option<CgroupPaths> {
        if pid <= 0 {
            return None;
        }
        let text = fs::read_to_string(format!("/proc/{pid}/cgroup")).ok()?;
        CgroupPaths::from_lines(&parse_proc_cgroup(&text), Path::new(CGROUP_ROOT))
    }

    /// Memory in use without page cache, in bytes.
    pub fn memory_usage(&self) -> Option<u64> {
        match self {
            CgroupPaths::V1 { memory, .. } => {
                let usage = read_u64(&memory.join("memory.usage_in_bytes"))?;
                let stat = fs::read_to_string(memory.join("memory.stat")).ok()?;
                let cache = parse_flat_keyed(&stat, "total_cache")
                    .or_else(|| parse_flat_keyed(&stat, "cache"))
                    .unwrap_or(0);
                Some(usage.saturating_sub(cache))
            }
            CgroupPaths::V2 { dir } => {
                let current = read_u64(&dir.join("memory.current"))?;
                let stat = fs::read_to_string(dir.join("memory.stat")).ok()?;
                Some(current.saturating_sub(parse_flat_keyed(&stat, "file").unwrap_or(0)))
            }
        }
    }

    /// Total CPU time consumed, in nanoseconds.
    pub fn cpu_usage_ns(&self) -> Option<u64> {
        match self {
            CgroupPaths::V1 { cpuacct, .. } => read_u64(&cpuacct.as_ref()?.join("cpuacct.usage")),
            CgroupPaths::V2 { dir } => {
                let stat = fs::read_to_string(dir.join("cpu.stat")).ok()?;
                parse_flat_keyed(&stat, "usage_usec").map(|us| us.saturating_mul(1000))
            }
        }
    }
}

impl CgroupPaths {
    /// The memory cgroup's OOM and usage counters; `None` once the cgroup is gone.
    pub fn memory_counters(&self) -> Option<CgroupMemory> {
        match self {
            CgroupPaths::V1 { memory, .. } => {
                let oom = fs::read_to_string(memory.join("memory.oom_control")).ok()?;
                Some(CgroupMemory {
                    oom_kills: parse_flat_keyed(&oom, "oom_kill"),
                    failcnt: read_u64(&memory.join("memory.failcnt")),
                    peak: read_u64(&memory.join("memory.max_usage_in_bytes")),
                    limit: read_u64(&memory.join("memory.limit_in_bytes"))
                        .filter(|l| *l < V1_UNLIMITED),
                })
            }
            CgroupPaths::V2 { dir } => {
                let events = fs::read_to_string(dir.join("memory.events")).ok()?;
                let kills = parse_flat_keyed(&events, "oom_kill");
                let group = parse_flat_keyed(&events, "oom_group_kill").unwrap_or(0);
                Some(CgroupMemory {
                    oom_kills: kills.map(|k| k + group),
                    failcnt: parse_flat_keyed(&events, "max"),
                    peak: read_u64(&dir.join("memory.peak")),
                    limit: fs::read_to_string(dir.join("memory.max"))
                        .ok()
                        .and_then(|s| parse_v2_max(&s)),
                })
            }
        }
    }
}

/// cgroup v1 reports "no limit" as a huge number (page-aligned `i64::MAX`); anything at or
/// above this is unlimited.
pub const V1_UNLIMITED: u64 = 1 << 62;

/// Parses v2 `memory.max`: a number, or `max` for no limit (`None`).
pub fn parse_v2_max(text: &str) -> Option<u64> {
    text.trim().parse().ok()
}

fn read_u64(p: &Path) -> Option<u64> {
    fs::read_to_string(p).ok()?.trim().parse().ok()
}

/// The value of `key` in a flat-keyed file (`key value` per line), e.g. `memory.stat`.
pub fn parse_flat_keyed(text: &str, key: &str) -> Option<u64> {
    text.lines().find_map(|l| {
        let (k, v) = l.split_once(' ')?;
        (k == key).then(|| v.trim().parse().ok()).flatten()
    })
}

/// The container's memory cgroup as seen while the exec ran.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct CgroupMemory {
    /// Highest OOM kill count read (a container's cgroup starts at 0).
    pub oom_kills: Option<u64>,
    /// Times usage hit the limit (v1 `memory.failcnt`, v2 `memory.events` `max`).
    pub failcnt: Option<u64>,
    /// Peak usage, bytes.
    pub peak: Option<u64>,
    /// Limit, bytes (`None` when unlimited).
    pub limit: Option<u64>,
}

impl CgroupMemory {
    /// Folds in a later reading (counters only grow; the latest limit wins).
    pub fn merge(&mut self, r: CgroupMemory) {
        let max = |a: Option<u64>, b: Option<u64>| match (a, b) {
            (Some(x), Some(y)) => Some(x.max(y)),
            (x, y) => x.or(y),
        };
        self.oom_kills = max(self.oom_kills, r.oom_kills);
        self.failcnt = max(self.failcnt, r.failcnt);
        self.peak = max(self.peak, r.peak);
        self.limit = r.limit.or(self.limit);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const V1: &str =
        "12:memory:/docker/abc123\n11:cpu,cpuacct:/docker/abc123\n3:pids:/docker/abc123\n0::/\n";
    const V2: &str = "0::/system.slice/docker-abc123.scope\n";

    #[test]
    fn parses_both_versions() {
        let l = parse_proc_cgroup(V1);
        assert_eq!(l.len(), 4);
        assert_eq!(l[1].controllers, vec!["cpu", "cpuacct"]);
        let p = CgroupPaths::from_lines(&l, Path::new("/sys/fs/cgroup")).unwrap();
        assert_eq!(
            p,
            CgroupPaths::V1 {
                memory: "/sys/fs/cgroup/memory/docker/abc123".into(),
                cpuacct: Some("/sys/fs/cgroup/cpuacct/docker/abc123".into()),
            }
        );
        let p =
            CgroupPaths::from_lines(&parse_proc_cgroup(V2), Path::new("/sys/fs/cgroup")).unwrap();
        assert_eq!(
            p,
            CgroupPaths::V2 {
                dir: "/sys/fs/cgroup/system.slice/docker-abc123.scope".into()
            }
        );
    }

    #[test]
    fn malformed_lines_are_skipped() {
        assert!(parse_proc_cgroup("garbage\nx:y\n1:memory:relative\n:::\n").is_empty());
        assert!(CgroupPaths::from_lines(&[], Path::new("/")).is_none());
    }

    #[test]
    fn memory_counters_from_files() {
        let dir = tempfile::tempdir().unwrap();
        let v1 = dir.path().join("memory/docker/abc");
        fs::create_dir_all(&v1).unwrap();
        fs::write(
            v1.join("memory.oom_control"),
            "oom_kill_disable 0\nunder_oom 0\noom_kill 2\n",
        )
        .unwrap();
        fs::write(v1.join("memory.failcnt"), "17\n").unwrap();
        fs::write(v1.join("memory.max_usage_in_bytes"), "33554432\n").unwrap();
        fs::write(v1.join("memory.limit_in_bytes"), "33554432\n").unwrap();
        let p = CgroupPaths::V1 {
            memory: v1.clone(),
            cpuacct: None,
        };
        let c = p.memory_counters().unwrap();
        assert_eq!(
            (c.oom_kills, c.failcnt, c.peak, c.limit),
            (Some(2), Some(17), Some(32 << 20), Some(32 << 20))
        );
        fs::write(v1.join("memory.limit_in_bytes"), "9223372036854771712\n").unwrap();
        assert_eq!(p.memory_counters().unwrap().limit, None, "v1 unlimited");

        let v2 = dir.path().join("system.slice/docker-abc.scope");
        fs::create_dir_all(&v2).unwrap();
        fs::write(
            v2.join("memory.events"),
            "low 0\nhigh 0\nmax 12\noom 1\noom_kill 1\noom_group_kill 1\n",
        )
        .unwrap();
        fs::write(v2.join("memory.peak"), "40000000\n").unwrap();
        fs::write(v2.join("memory.max"), "max\n").unwrap();
        let c = CgroupPaths::V2 { dir: v2.clone() }
            .memory_counters()
            .unwrap();
        assert_eq!(
            (c.oom_kills, c.failcnt, c.peak, c.limit),
            (Some(2), Some(12), Some(40_000_000), None)
        );
        assert_eq!(parse_v2_max("33554432\n"), Some(32 << 20));

        // Gone (the container exited and its cgroup was removed): no reading, no panic.
        assert!(
            CgroupPaths::V2 {
                dir: dir.path().join("gone")
            }
            .memory_counters()
            .is_none()
        );
    }

    #[test]
    fn flat_keyed() {
        let stat = "cache 4096\nrss 8192\ntotal_cache 12288\n";
        assert_eq!(parse_flat_keyed(stat, "total_cache"), Some(12288));
        assert_eq!(parse_flat_keyed(stat, "cache"), Some(4096));
        assert_eq!(parse_flat_keyed(stat, "missing"), None);
        assert_eq!(
            parse_flat_keyed("usage_usec notanumber\n", "usage_usec"),
            None
        );
    }
}
