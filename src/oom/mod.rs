//! OOM detection with evidence. Several sources are consulted when an exec's container stops,
//! and [`decide`] picks, by a fixed precedence, the one that names the OOM; the others that agree
//! are listed as corroboration. The result is written into the manifest (`Oom`).
//!
//! Sources, in precedence order (docs/oom.md):
//! 1. **docker**: the engine's `OOMKilled` flag.
//! 2. **cgroup**: the container's memory cgroup counted an OOM kill (`oom_kill` in
//!    `memory.oom_control` on v1, `memory.events` on v2), read while the exec ran.
//! 3. **kmsg**: a kernel OOM record in the exec's window whose cgroup names the container (so a
//!    child process counts) or whose pid is the container's main process ([`kmsg`]).
//! 4. **golang**: `runtime: out of memory` or `runtime: cannot allocate memory` in the logs.
//! 5. **node**: the kernel OOM-killed something during the window while available memory was
//!    below 100 MiB ([`node`]); only for a container killed by SIGKILL (exit 137).
//!
//! Exit code 137 alone is never OOM: `kill -9` from inside the container, or the agent's own kill,
//! exits 137 too.

pub mod kmsg;
pub mod node;

use async_trait::async_trait;
use serde::{Deserialize, Serialize};

pub use kmsg::OomTarget;

use crate::time::{self, Time};

/// Where OOM evidence came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum OomSource {
    /// The engine's `OOMKilled` flag.
    Docker,
    /// The container's memory cgroup counters.
    Cgroup,
    /// The kernel log.
    Kmsg,
    /// Go runtime out-of-memory lines in the exec's logs.
    Golang,
    /// Node-level memory signals.
    Node,
}

impl std::fmt::Display for OomSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            OomSource::Docker => "docker",
            OomSource::Cgroup => "cgroup",
            OomSource::Kmsg => "kmsg",
            OomSource::Golang => "golang",
            OomSource::Node => "node",
        })
    }
}

/// One source's finding about one exec.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Detection {
    /// The source.
    pub source: OomSource,
    /// What it showed.
    pub detail: String,
    /// When the kill happened.
    pub time: Time,
}

/// The seed's detector port: was `target` OOM-killed in the window `(start, end]`? Sources that
/// observe something outside the exec (the kernel log) sit behind it; the engine's flag and the
/// cgroup counters are read by the exec itself.
#[async_trait]
pub trait OomDetector: Send + Sync + std::fmt::Debug {
    /// A detection for `target` in `(start, end]`, if this source has one.
    ///
    /// # Cancel safety
    /// Cancel safe.
    async fn oom(&self, target: &OomTarget, start: Time, end: Time) -> Option<Detection>;
}

/// Why the agent believes an exec was OOM-killed; stored in the manifest under `Oom`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct OomEvidence {
    /// The deciding source.
    pub source: OomSource,
    /// What it showed (e.g. the kernel's `Killed process` line).
    pub detail: String,
    /// When the kill happened (the kernel record's time), or when the exit was observed.
    #[serde(with = "time::go")]
    pub time: Time,
    /// Peak memory of the container's cgroup, bytes, when known.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub peak_memory: Option<u64>,
    /// The container's memory limit, bytes, when known.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub limit: Option<u64>,
    /// Other sources that agree.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub corroborated_by: Vec<OomSource>,
}

pub use crate::cgroup::CgroupMemory;

/// Everything known about an exec's end, for [`decide`].
#[derive(Debug, Clone, Default)]
pub struct OomInputs {
    /// Exit code.
    pub exit_code: i64,
    /// The engine's `OOMKilled` flag.
    pub docker_oom_killed: bool,
    /// The container's cgroup readings.
    pub cgroup: CgroupMemory,
    /// Detections from the [`OomDetector`]s (the kernel log).
    pub detections: Vec<Detection>,
    /// A Go runtime OOM line from the logs.
    pub golang: Option<String>,
    /// A node-level explanation ([`node::NodeWindow::explain`]).
    pub node: Option<String>,
    /// When the exit was observed.
    pub exit_time: Option<Time>,
}

/// Applies the precedence of the module docs; `None` when no source shows an OOM.
pub fn decide(i: &OomInputs) -> Option<OomEvidence> {
    let mut found: Vec<(OomSource, String)> = Vec::new();
    if i.docker_oom_killed {
        found.push((
            OomSource::Docker,
            "the engine reports the container OOMKilled".to_string(),
        ));
    }
    if let Some(n) = i.cgroup.oom_kills.filter(|n| *n > 0) {
        found.push((
            OomSource::Cgroup,
            format!("memory cgroup oom_kill count {n}"),
        ));
    }
    for d in &i.detections {
        found.push((d.source, d.detail.clone()));
    }
    if let Some(l) = &i.golang {
        found.push((OomSource::Golang, l.clone()));
    }
    if i.exit_code == 137
        && let Some(n) = &i.node
    {
        found.push((OomSource::Node, n.clone()));
    }
    found.sort_by_key(|(s, _)| *s);
    let mut it = found.into_iter();
    let (source, mut detail) = it.next()?;
    let corroborated_by: Vec<OomSource> = it.map(|(s, _)| s).collect();
    // The kernel's line is the most useful detail; keep it even when another source decided.
    let kernel = i.detections.iter().find(|d| d.source == OomSource::Kmsg);
    if source != OomSource::Kmsg
        && let Some(k) = kernel
    {
        detail = format!("{detail}; kernel: {}", k.detail);
    }
    let time = kernel
        .or(i.detections.first())
        .map(|d| d.time)
        .or(i.exit_time)
        .unwrap_or_else(time::zero);
    Some(OomEvidence {
        source,
        detail,
        time,
        peak_memory: i.cgroup.peak,
        limit: i.cgroup.limit,
        corroborated_by,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rec() -> Detection {
        let r = kmsg::parse_record(
            "3,9,100,-;Memory cgroup out of memory: Killed process 9 (sh) total-vm:1kB",
        )
        .unwrap();
        Detection {
            source: OomSource::Kmsg,
            detail: r.text,
            time: time::parse("2026-01-01T00:00:00Z").unwrap(),
        }
    }

    #[test]
    fn precedence_table() {
        let base = OomInputs {
            exit_code: 1,
            ..OomInputs::default()
        };
        type Want = Option<(OomSource, Vec<OomSource>)>;
        let cases: Vec<(&str, OomInputs, Want)> = vec![
            ("nothing", base.clone(), None),
            (
                "exit 137 alone",
                OomInputs {
                    exit_code: 137,
                    ..base.clone()
                },
                None,
            ),
            (
                "docker",
                OomInputs {
                    docker_oom_killed: true,
                    ..base.clone()
                },
                Some((OomSource::Docker, vec![])),
            ),
            (
                "docker + kmsg + cgroup",
                OomInputs {
                    docker_oom_killed: true,
                    detections: vec![rec()],
                    cgroup: CgroupMemory {
                        oom_kills: Some(1),
                        ..CgroupMemory::default()
                    },
                    ..base.clone()
                },
                Some((OomSource::Docker, vec![OomSource::Cgroup, OomSource::Kmsg])),
            ),
            (
                "kmsg only (a child)",
                OomInputs {
                    detections: vec![rec()],
                    ..base.clone()
                },
                Some((OomSource::Kmsg, vec![])),
            ),
            (
                "cgroup count 0 is nothing",
                OomInputs {
                    cgroup: CgroupMemory {
                        oom_kills: Some(0),
                        ..CgroupMemory::default()
                    },
                    ..base.clone()
                },
                None,
            ),
            (
                "golang",
                OomInputs {
                    golang: Some("runtime: out of memory".into()),
                    ..base.clone()
                },
                Some((OomSource::Golang, vec![])),
            ),
            (
                "node needs exit 137",
                OomInputs {
                    node: Some("node OOM".into()),
                    ..base.clone()
                },
                None,
            ),
            (
                "node with 137",
                OomInputs {
                    exit_code: 137,
                    node: Some("node OOM".into()),
                    ..base.clone()
                },
                Some((OomSource::Node, vec![])),
            ),
        ];
        for (what, inputs, want) in cases {
            let got = decide(&inputs).map(|e| (e.source, e.corroborated_by));
            assert_eq!(got, want, "{what}");
        }
    }

    #[test]
    fn evidence_keeps_the_kernel_line_time_and_memory() {
        let i = OomInputs {
            exit_code: 1,
            docker_oom_killed: true,
            detections: vec![rec()],
            cgroup: CgroupMemory {
                oom_kills: Some(1),
                failcnt: Some(4),
                peak: Some(33 << 20),
                limit: Some(32 << 20),
            },
            ..OomInputs::default()
        };
        let e = decide(&i).unwrap();
        assert!(e.detail.contains("Killed process 9 (sh)"), "{}", e.detail);
        assert_eq!(e.time, rec().time);
        assert_eq!((e.peak_memory, e.limit), (Some(33 << 20), Some(32 << 20)));
        let j = serde_json::to_value(&e).unwrap();
        assert_eq!(j["Source"], "docker");
        assert_eq!(j["CorroboratedBy"][1], "kmsg");
        assert_eq!(serde_json::from_value::<OomEvidence>(j).unwrap(), e);
    }
}
