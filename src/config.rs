//! The agent's configuration: a TOML file (every field optional, unknown fields rejected), then
//! command-line overrides. [`Config::validate`] reports every problem at once.
//!
//! ```toml
//! [agent]
//! state_dir = "/var/lib/reflow-agent"
//! pool_id = "i-0123456789abcdef0"     # default: the host name
//! expected_usable_mem = 0             # bytes; 0 disables the check
//! idle_exit_after_secs = 600          # exit when idle this long (scale-in); absent: never
//!
//! [executor]
//! hard_mem_limit = false
//! allow_docker_socket = false
//! allow_aws_creds = false
//! network_mode = "host"
//! profile_interval_secs = 10
//!
//! [aws]
//! region = "us-west-2"
//! endpoint_url = "http://127.0.0.1:5000"
//!
//! [taskdb]
//! table = "reflow-taskdb"             # absent: no TaskDB
//! create_table = false                # create it at start (development)
//! ```

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use thiserror::Error;

use crate::aws::AwsSettings;
use crate::error::{Classify, Kind};
use crate::executor::ExecutorConfig;

/// Default state directory.
pub const DEFAULT_STATE_DIR: &str = "/var/lib/reflow-agent";
/// Largest config file read.
pub const MAX_CONFIG_BYTES: u64 = 1 << 20;

/// `[agent]`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AgentSection {
    /// Where the pool keeps `state.json` and the allocs. Default `/var/lib/reflow-agent`.
    pub state_dir: PathBuf,
    /// The pool's id (names its TaskDB row). Default: the host name.
    pub pool_id: Option<String>,
    /// Fail to start when usable memory (95% of the total) is below this many bytes; 0 disables.
    pub expected_usable_mem: f64,
    /// Exit cleanly after this many seconds with every alloc expired (scale-in). Default: never.
    pub idle_exit_after_secs: Option<u64>,
}

impl Default for AgentSection {
    fn default() -> Self {
        AgentSection {
            state_dir: PathBuf::from(DEFAULT_STATE_DIR),
            pool_id: None,
            expected_usable_mem: 0.0,
            idle_exit_after_secs: None,
        }
    }
}

/// `[executor]`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ExecutorSection {
    /// Limit each container's memory to its exec's `mem` (plus 100 MiB swap). Default false.
    pub hard_mem_limit: bool,
    /// Let execs that ask mount the Docker socket. Default false.
    pub allow_docker_socket: bool,
    /// Pass the agent's AWS credentials to execs that ask. Default false.
    pub allow_aws_creds: bool,
    /// Container network mode: `host` or `none`. Default `host`.
    pub network_mode: String,
    /// Disk/CPU/memory sampling period, seconds. Default 10.
    pub profile_interval_secs: u64,
}

impl Default for ExecutorSection {
    fn default() -> Self {
        ExecutorSection {
            hard_mem_limit: false,
            allow_docker_socket: false,
            allow_aws_creds: false,
            network_mode: "host".into(),
            profile_interval_secs: 10,
        }
    }
}

/// `[taskdb]`.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TaskDbSection {
    /// DynamoDB table name. Absent: no TaskDB.
    pub table: Option<String>,
    /// Create the table at start (development). Default false.
    pub create_table: bool,
}

/// The whole configuration.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// `[agent]`.
    pub agent: AgentSection,
    /// `[executor]`.
    pub executor: ExecutorSection,
    /// `[aws]`: overrides on the SDK's standard chain.
    pub aws: AwsSettings,
    /// `[taskdb]`.
    pub taskdb: TaskDbSection,
}

/// Configuration problems.
#[derive(Debug, Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("read config {path}")]
    Read {
        /// The file.
        path: PathBuf,
        /// Cause.
        #[source]
        source: crate::persist::PersistError,
    },
    /// The file is not valid TOML for the schema.
    #[error("parse config {path}: {message}")]
    Parse {
        /// The file.
        path: PathBuf,
        /// The parser's message (with line and column).
        message: String,
    },
    /// A value is not allowed.
    #[error("{field}: {message}")]
    Invalid {
        /// The field, e.g. `executor.network_mode`.
        field: &'static str,
        /// What is wrong.
        message: String,
    },
}

impl Classify for ConfigError {
    fn kind(&self) -> Kind {
        match self {
            ConfigError::Read { source, .. } => source.kind(),
            _ => Kind::Invalid,
        }
    }
}

impl Config {
    /// Parses TOML text (`path` is only for messages).
    ///
    /// # Errors
    /// [`ConfigError::Parse`] naming the line.
    pub fn parse(text: &str, path: &Path) -> Result<Config, ConfigError> {
        toml::from_str(text).map_err(|e| ConfigError::Parse {
            path: path.to_path_buf(),
            message: e.to_string(),
        })
    }

    /// Reads and parses a config file.
    ///
    /// # Errors
    /// Reading or parsing.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let bytes = crate::persist::read_bounded(path, MAX_CONFIG_BYTES).map_err(|source| {
            ConfigError::Read {
                path: path.to_path_buf(),
                source,
            }
        })?;
        Config::parse(&String::from_utf8_lossy(&bytes), path)
    }

    /// Every problem with the values, at once (empty when valid).
    pub fn validate(&self) -> Vec<ConfigError> {
        let mut errs = Vec::new();
        let mut bad = |field: &'static str, message: &str| {
            errs.push(ConfigError::Invalid {
                field,
                message: message.into(),
            })
        };
        if !self.agent.state_dir.is_absolute() {
            bad("agent.state_dir", "must be an absolute path");
        }
        if !self.agent.expected_usable_mem.is_finite() || self.agent.expected_usable_mem < 0.0 {
            bad(
                "agent.expected_usable_mem",
                "must be a non-negative number of bytes",
            );
        }
        if self
            .agent
            .pool_id
            .as_deref()
            .is_some_and(|p| p.is_empty() || p.len() > 256)
        {
            bad("agent.pool_id", "must be 1 to 256 characters");
        }
        if self.agent.idle_exit_after_secs == Some(0) {
            bad(
                "agent.idle_exit_after_secs",
                "must be positive (omit it to never exit)",
            );
        }
        if !["host", "none"].contains(&self.executor.network_mode.as_str()) {
            bad("executor.network_mode", "must be \"host\" or \"none\"");
        }
        if self.executor.profile_interval_secs == 0 {
            bad("executor.profile_interval_secs", "must be positive");
        }
        if self
            .taskdb
            .table
            .as_deref()
            .is_some_and(|t| t.len() < 3 || t.len() > 255)
        {
            bad(
                "taskdb.table",
                "DynamoDB table names are 3 to 255 characters",
            );
        }
        if self.taskdb.create_table && self.taskdb.table.is_none() {
            bad("taskdb.create_table", "needs taskdb.table");
        }
        errs
    }

    /// The settings every alloc's executor gets (its id and directory are filled in per alloc).
    pub fn executor_template(&self) -> ExecutorConfig {
        let mut c = ExecutorConfig::new("template", self.agent.state_dir.join("allocs"));
        c.hard_mem_limit = self.executor.hard_mem_limit;
        c.allow_docker_socket = self.executor.allow_docker_socket;
        c.allow_aws_creds = self.executor.allow_aws_creds;
        c.network_mode = self.executor.network_mode.clone();
        c.profile_interval = Duration::from_secs(self.executor.profile_interval_secs);
        c
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_and_full_file() {
        let c = Config::parse("", Path::new("x.toml")).unwrap();
        assert_eq!(c, Config::default());
        assert!(c.validate().is_empty());
        let text = r#"
            [agent]
            state_dir = "/srv/reflow"
            pool_id = "i-1"
            idle_exit_after_secs = 600
            [executor]
            hard_mem_limit = true
            network_mode = "none"
            [aws]
            region = "us-west-2"
            endpoint_url = "http://127.0.0.1:5000"
            [taskdb]
            table = "reflow-taskdb"
            create_table = true
        "#;
        let c = Config::parse(text, Path::new("x.toml")).unwrap();
        assert!(c.validate().is_empty(), "{:?}", c.validate());
        let e = c.executor_template();
        assert!(e.hard_mem_limit);
        assert_eq!(e.network_mode, "none");
        assert_eq!(c.aws.endpoint_url.as_deref(), Some("http://127.0.0.1:5000"));
    }

    #[test]
    fn unknown_fields_and_bad_values_are_reported() {
        let e = Config::parse(
            "[executor]\nhard_mem_limt = true\n",
            Path::new("agent.toml"),
        )
        .unwrap_err();
        let msg = e.to_string();
        assert!(
            msg.contains("agent.toml") && msg.contains("hard_mem_limt"),
            "{msg}"
        );
        let c = Config::parse(
            "[agent]\nstate_dir = \"relative\"\nidle_exit_after_secs = 0\n[executor]\nnetwork_mode = \"bridge\"\n[taskdb]\ncreate_table = true\n",
            Path::new("x"),
        )
        .unwrap();
        let fields: Vec<String> = c
            .validate()
            .iter()
            .map(|e| match e {
                ConfigError::Invalid { field, .. } => field.to_string(),
                other => other.to_string(),
            })
            .collect();
        assert_eq!(
            fields,
            vec![
                "agent.state_dir",
                "agent.idle_exit_after_secs",
                "executor.network_mode",
                "taskdb.create_table"
            ]
        );
    }
}
