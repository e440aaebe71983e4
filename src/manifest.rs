//! The per-exec `manifest.json`: Reflow's manifest shape plus a `Version` field.
//!
//! Reflow ignores unknown fields, so it can read our manifests; we read Reflow's (version 0) and
//! our own, and refuse a manifest written by a newer agent rather than misread it. Manifests are
//! written only through [`crate::persist`], atomically.

use serde::{Deserialize, Deserializer, Serialize, Serializer};
use thiserror::Error;

use crate::error::{Classify, Kind};
use crate::model::{ExecConfig, ExecResult};
use crate::profile::{Gauges, Stats};
use crate::resources::Resources;
use crate::time::{self, Time};

/// The manifest version this agent writes.
pub const MANIFEST_VERSION: u32 = 1;
/// File name of the manifest in an exec directory.
pub const MANIFEST_FILE: &str = "manifest.json";
/// Largest manifest we read (docker inspect JSON can be large, but not this large).
pub const MAX_MANIFEST_BYTES: u64 = 16 << 20;

/// The exec state machine's states, ordered; stored as Reflow's integers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub enum ExecState {
    /// Not started (0).
    #[default]
    Unstarted,
    /// Manifest written, nothing created yet (1).
    Init,
    /// Container created (2).
    Created,
    /// Container started (3).
    Running,
    /// Finished; the result is final (4).
    Complete,
}

impl ExecState {
    /// Reflow's integer for the state.
    pub fn code(self) -> u8 {
        match self {
            ExecState::Unstarted => 0,
            ExecState::Init => 1,
            ExecState::Created => 2,
            ExecState::Running => 3,
            ExecState::Complete => 4,
        }
    }

    /// The state for Reflow's integer.
    pub fn from_code(c: u8) -> Option<Self> {
        Some(match c {
            0 => ExecState::Unstarted,
            1 => ExecState::Init,
            2 => ExecState::Created,
            3 => ExecState::Running,
            4 => ExecState::Complete,
            _ => return None,
        })
    }

    /// Whether the state machine may move from `self` to `to`: one step forward, or straight to
    /// `Complete` (an exec can fail or be collected from any live state). Nothing leaves
    /// `Complete`.
    pub fn can_transition(self, to: ExecState) -> bool {
        match (self, to) {
            (ExecState::Complete, _) => false,
            (_, ExecState::Complete) => true,
            (from, to) => to.code() == from.code() + 1,
        }
    }

    /// The inspect name of the state.
    pub fn name(self) -> &'static str {
        match self {
            ExecState::Unstarted | ExecState::Init => "initializing",
            ExecState::Created => "created",
            ExecState::Running => "running",
            ExecState::Complete => "complete",
        }
    }
}

impl Serialize for ExecState {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_u8(self.code())
    }
}

impl<'de> Deserialize<'de> for ExecState {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let c = u8::deserialize(d)?;
        ExecState::from_code(c)
            .ok_or_else(|| serde::de::Error::custom(format!("unknown exec state {c}")))
    }
}

/// What kind of exec a manifest belongs to (Reflow: 0 docker, 1 blob).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum ExecType {
    /// A container exec.
    #[default]
    Docker,
    /// An intern/extern blob transfer.
    Blob,
}

impl Serialize for ExecType {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_u8(match self {
            ExecType::Docker => 0,
            ExecType::Blob => 1,
        })
    }
}

impl<'de> Deserialize<'de> for ExecType {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        match u8::deserialize(d)? {
            0 => Ok(ExecType::Docker),
            1 => Ok(ExecType::Blob),
            c => Err(serde::de::Error::custom(format!("unknown exec type {c}"))),
        }
    }
}

/// An exec's durable state.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Manifest {
    /// Format version; 0 means written by Reflow (and is not written back, so a Reflow
    /// manifest re-encodes as Reflow wrote it).
    #[serde(rename = "Version", default, skip_serializing_if = "is_zero_version")]
    pub version: u32,
    /// Docker or blob.
    #[serde(rename = "Type", default)]
    pub exec_type: ExecType,
    /// Last state reached and saved.
    #[serde(rename = "State", default)]
    pub state: ExecState,
    /// Container main process id on the host (0 when unknown).
    #[serde(rename = "PID", default)]
    pub pid: i64,
    /// When the exec was created.
    #[serde(rename = "Created", with = "time::go", default = "time::zero")]
    pub created: Time,
    /// The result (final once `State` is Complete).
    #[serde(rename = "Result", default)]
    pub result: ExecResult,
    /// The config.
    #[serde(rename = "Config", default)]
    pub config: ExecConfig,
    /// Docker's container inspect JSON (null for blob execs).
    #[serde(rename = "Docker", default)]
    pub docker: serde_json::Value,
    /// Always null (kept for Reflow's shape).
    #[serde(rename = "Resources", default)]
    pub resources: Option<Resources>,
    /// Profiling statistics.
    #[serde(
        rename = "Stats",
        default,
        deserialize_with = "crate::fileset::null_default"
    )]
    pub stats: Stats,
    /// Latest gauges.
    #[serde(
        rename = "Gauges",
        default,
        deserialize_with = "crate::fileset::null_default"
    )]
    pub gauges: Gauges,
    /// OOM evidence, when any source showed an OOM (also for an exec that exited 0).
    #[serde(rename = "Oom", default, skip_serializing_if = "Option::is_none")]
    pub oom: Option<crate::oom::OomEvidence>,
}

fn is_zero_version(v: &u32) -> bool {
    *v == 0
}

impl Manifest {
    /// A fresh manifest for `config`, created at `created`, in state `Unstarted`.
    pub fn new(exec_type: ExecType, config: ExecConfig, created: Time) -> Self {
        Manifest {
            version: MANIFEST_VERSION,
            exec_type,
            state: ExecState::Unstarted,
            pid: 0,
            created,
            result: ExecResult::default(),
            config,
            docker: serde_json::Value::Null,
            resources: None,
            stats: Stats::new(),
            gauges: Gauges::new(),
            oom: None,
        }
    }

    /// Checks that this agent understands the manifest's version.
    ///
    /// # Errors
    /// [`ManifestError::NewerVersion`] when a newer agent wrote it.
    pub fn check_version(&self) -> Result<(), ManifestError> {
        if self.version > MANIFEST_VERSION {
            return Err(ManifestError::NewerVersion {
                found: self.version,
                supported: MANIFEST_VERSION,
            });
        }
        Ok(())
    }
}

/// Manifest problems beyond I/O and JSON.
#[derive(Debug, Error, PartialEq, Eq)]
pub enum ManifestError {
    /// Written by a newer agent.
    #[error("manifest version {found} is newer than this agent supports ({supported})")]
    NewerVersion {
        /// The version found.
        found: u32,
        /// The newest version this agent reads.
        supported: u32,
    },
}

impl Classify for ManifestError {
    fn kind(&self) -> Kind {
        Kind::NotSupported
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn transitions() {
        use ExecState::*;
        let all = [Unstarted, Init, Created, Running, Complete];
        let allowed: Vec<(ExecState, ExecState)> = all
            .iter()
            .flat_map(|a| all.iter().map(move |b| (*a, *b)))
            .filter(|(a, b)| a.can_transition(*b))
            .collect();
        assert_eq!(
            allowed,
            vec![
                (Unstarted, Init),
                (Unstarted, Complete),
                (Init, Created),
                (Init, Complete),
                (Created, Running),
                (Created, Complete),
                (Running, Complete),
            ]
        );
    }

    #[test]
    fn reads_a_reflow_manifest() {
        let go = r#"{"Type":0,"State":4,"PID":1234,"Created":"2023-10-01T12:00:00.5Z",
          "Result":{"Fileset":{"Fileset":{".":{"ID":"sha256:aec070645fe53ee3b3763059376134f058cc337247c978add178b6ccdfb0019f","Size":7,"LastModified":"0001-01-01T00:00:00Z","ContentHash":"<zero>"}}}},
          "Config":{"Type":"exec","Image":"ubuntu","Cmd":"echo foobar > $out","Args":null,"Resources":null},
          "Docker":{"Id":"abc","State":{"ExitCode":0}},"Resources":null,
          "Stats":{"disk":{"First":"2023-10-01T12:00:01Z","Last":"2023-10-01T12:00:01Z","N":1,"Sum":7,"SumOfSquares":49,"Max":7}},
          "Gauges":{"disk":7},"Unknown":"tolerated"}"#;
        let m: Manifest = serde_json::from_str(go).unwrap();
        assert_eq!(m.version, 0);
        assert_eq!(m.state, ExecState::Complete);
        assert_eq!(m.pid, 1234);
        assert_eq!(m.result.fileset.file().unwrap().size, 7);
        assert_eq!(m.stats["disk"].n, 1);
        assert!(m.check_version().is_ok());
        let j = serde_json::to_value(&m).unwrap();
        assert_eq!(j["State"], 4);
        assert_eq!(j["Type"], 0);
        assert!(j["Resources"].is_null());
    }

    #[test]
    fn refuses_newer_versions_and_bad_states() {
        let m: Manifest = serde_json::from_str(r#"{"Version":99}"#).unwrap();
        assert_eq!(m.check_version().unwrap_err().kind(), Kind::NotSupported);
        assert!(serde_json::from_str::<Manifest>(r#"{"State":9}"#).is_err());
        assert!(serde_json::from_str::<Manifest>(r#"{"Type":7}"#).is_err());
    }

    proptest! {
        #[test]
        fn serde_round_trip(state in 0u8..5, pid in any::<i64>(), cmd in ".{0,40}", secs in 0i64..4_000_000_000, nanos in 0u32..1_000_000_000) {
            let created = chrono::DateTime::from_timestamp(secs, nanos).unwrap();
            let mut m = Manifest::new(ExecType::Docker, ExecConfig { kind: "exec".into(), cmd, ..ExecConfig::default() }, created);
            m.state = ExecState::from_code(state).unwrap();
            m.pid = pid;
            let j = serde_json::to_string(&m).unwrap();
            prop_assert_eq!(serde_json::from_str::<Manifest>(&j).unwrap(), m);
        }
    }
}
