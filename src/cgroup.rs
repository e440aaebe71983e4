//! Reading a process's cgroup: which cgroup it is in (`/proc/<pid>/cgroup`), where that
//! hierarchy is mounted (`/proc/self/mountinfo`, v1 or v2), and its memory and CPU counters.
//! procfs parses the `/proc` files; mapping them to directories is a pure function
//! ([`CgroupPaths::from_lines`]); only [`CgroupPaths::resolve`] and the readers touch the
//! filesystem.

use std::fs;
use std::path::{Path, PathBuf};

use procfs::FromRead;

/// Where cgroup hierarchies are usually mounted (for messages; the mounts are read).
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

/// Parses `/proc/<pid>/cgroup` (procfs); lines whose path is not absolute are skipped, and a
/// file that does not parse gives none.
pub fn parse_proc_cgroup(text: &str) -> Vec<CgroupLine> {
    procfs::ProcessCGroups::from_read(text.as_bytes())
        .map(|c| c.0)
        .unwrap_or_default()
        .into_iter()
        .filter(|c| c.pathname.starts_with('/'))
        .map(|c| CgroupLine {
            id: c.hierarchy,
            controllers: c.controllers,
            path: c.pathname,
        })
        .collect()
}

/// A mounted cgroup hierarchy: the hierarchy path at its root and where it is mounted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CgroupMount {
    /// The v1 controllers of the hierarchy (empty for v2).
    pub controllers: Vec<String>,
    /// The path within the hierarchy that the mount shows (`/` unless a cgroup namespace or a
    /// bind mount shows a subtree).
    pub root: String,
    /// Where it is mounted.
    pub point: PathBuf,
}

impl CgroupMount {
    /// The directory of hierarchy path `path` under this mount, if the mount shows it.
    fn dir(&self, path: &str) -> Option<PathBuf> {
        let root = self.root.trim_end_matches('/');
        let rel = if root.is_empty() {
            path
        } else {
            path.strip_prefix(root)
                .filter(|r| r.is_empty() || r.starts_with('/'))?
        };
        Some(self.point.join(rel.trim_start_matches('/')))
    }
}

/// The cgroup mounts in `/proc/<pid>/mountinfo` text (procfs): `cgroup2` and `cgroup` mounts,
/// a v1 mount's controllers from its super options.
pub fn parse_mountinfo(text: &str) -> Vec<CgroupMount> {
    const CONTROLLERS: &[&str] = &[
        "memory", "cpuacct", "cpu", "pids", "blkio", "cpuset", "devices", "freezer",
    ];
    procfs::process::MountInfos::from_read(text.as_bytes())
        .map(|m| m.0)
        .unwrap_or_default()
        .into_iter()
        .filter(|m| m.fs_type == "cgroup2" || m.fs_type == "cgroup")
        .map(|m| CgroupMount {
            controllers: if m.fs_type == "cgroup" {
                CONTROLLERS
                    .iter()
                    .filter(|c| m.super_options.contains_key(**c))
                    .map(|c| (*c).to_string())
                    .collect()
            } else {
                Vec::new()
            },
            root: m.root,
            point: m.mount_point,
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
    /// Maps a process's cgroups (`/proc/<pid>/cgroup` lines) to directories under `mounts`.
    pub fn from_lines(lines: &[CgroupLine], mounts: &[CgroupMount]) -> Option<CgroupPaths> {
        let v1 = |ctl: &str| {
            let line = lines
                .iter()
                .find(|l| l.controllers.iter().any(|c| c == ctl))?;
            mounts
                .iter()
                .filter(|m| m.controllers.iter().any(|c| c == ctl))
                .find_map(|m| m.dir(&line.path))
        };
        if let Some(memory) = v1("memory") {
            return Some(CgroupPaths::V1 {
                memory,
                cpuacct: v1("cpuacct"),
            });
        }
        let line = lines
            .iter()
            .find(|l| l.id == 0 && l.controllers.is_empty())?;
        mounts
            .iter()
            .filter(|m| m.controllers.is_empty())
            .find_map(|m| m.dir(&line.path))
            .map(|dir| CgroupPaths::V2 { dir })
    }

    /// Resolves the cgroups of `pid` (a pid of this process's PID namespace) from procfs: its
    /// `/proc/<pid>/cgroup` and this process's mount table.
    pub fn resolve(pid: i64) -> Option<CgroupPaths> {
        let pid = i32::try_from(pid).ok().filter(|p| *p > 0)?;
        let lines: Vec<CgroupLine> = procfs::process::Process::new(pid)
            .ok()?
            .cgroups()
            .ok()?
            .0
            .into_iter()
            .map(|c| CgroupLine {
                id: c.hierarchy,
                controllers: c.controllers,
                path: c.pathname,
            })
            .collect();
        let mounts = fs::read_to_string("/proc/self/mountinfo").ok()?;
        CgroupPaths::from_lines(&lines, &parse_mountinfo(&mounts))
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

    /// A cgroup v1 host (this machine's layout) and a v2 host, as mountinfo shows them.
    const V1_MOUNTS: &str = "\
30 25 0:26 / /sys/fs/cgroup ro,nosuid,nodev,noexec shared:9 - tmpfs tmpfs ro,mode=755
33 30 0:29 / /sys/fs/cgroup/memory rw,nosuid,nodev,noexec,relatime shared:15 - cgroup cgroup rw,memory
34 30 0:30 / /sys/fs/cgroup/cpu,cpuacct rw,nosuid,nodev,noexec,relatime shared:16 - cgroup cgroup rw,cpu,cpuacct
35 30 0:31 / /sys/fs/cgroup/pids rw,nosuid,nodev,noexec,relatime shared:17 - cgroup cgroup rw,pids
";
    const V2_MOUNTS: &str = "\
29 23 0:26 / /sys/fs/cgroup rw,nosuid,nodev,noexec,relatime shared:4 - cgroup2 cgroup2 rw,nsdelegate
";

    #[test]
    fn parses_both_versions_against_the_mounts() {
        let l = parse_proc_cgroup(V1);
        assert_eq!(l.len(), 4);
        assert_eq!(l[1].controllers, vec!["cpu", "cpuacct"]);
        let mounts = parse_mountinfo(V1_MOUNTS);
        assert_eq!(mounts.len(), 3, "{mounts:?}");
        let p = CgroupPaths::from_lines(&l, &mounts).unwrap();
        assert_eq!(
            p,
            CgroupPaths::V1 {
                memory: "/sys/fs/cgroup/memory/docker/abc123".into(),
                cpuacct: Some("/sys/fs/cgroup/cpu,cpuacct/docker/abc123".into()),
            }
        );
        let p =
            CgroupPaths::from_lines(&parse_proc_cgroup(V2), &parse_mountinfo(V2_MOUNTS)).unwrap();
        assert_eq!(
            p,
            CgroupPaths::V2 {
                dir: "/sys/fs/cgroup/system.slice/docker-abc123.scope".into()
            }
        );
        // Mounted elsewhere, and showing a subtree (a cgroup namespace or a bind mount).
        let moved = "40 30 0:29 /docker /host/cgroup/memory rw - cgroup cgroup rw,memory\n";
        assert_eq!(
            CgroupPaths::from_lines(&parse_proc_cgroup(V1), &parse_mountinfo(moved)),
            Some(CgroupPaths::V1 {
                memory: "/host/cgroup/memory/abc123".into(),
                cpuacct: None,
            })
        );
        // The path is outside what the mount shows: no directory.
        let other = "40 30 0:29 /kubepods /sys/fs/cgroup/memory rw - cgroup cgroup rw,memory\n";
        assert_eq!(
            CgroupPaths::from_lines(&parse_proc_cgroup(V1), &parse_mountinfo(other)),
            None
        );
    }

    #[test]
    fn this_process_resolves_on_this_machine() {
        let me = i64::from(std::process::id());
        let p = CgroupPaths::resolve(me).expect("this process's cgroups");
        let dir = match &p {
            CgroupPaths::V1 { memory, .. } => memory,
            CgroupPaths::V2 { dir } => dir,
        };
        assert!(dir.is_dir(), "{p:?}");
        assert!(p.memory_usage().is_some(), "{p:?}");
    }

    #[test]
    fn malformed_input_gives_nothing() {
        assert!(parse_proc_cgroup("garbage\nx:y\n1:memory:relative\n:::\n").is_empty());
        assert!(parse_mountinfo("not a mount table\n").is_empty());
        assert!(CgroupPaths::from_lines(&[], &[]).is_none());
        assert!(CgroupPaths::resolve(0).is_none());
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
