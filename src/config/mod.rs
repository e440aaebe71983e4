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
//! network_mode = "none"               # "host" needs allow_host_network = true
//! allow_host_network = false
//! profile_interval_secs = 10
//! engine_wait_secs = 600               # an exec waits this long for a dockerd that went away
//!
//! [aws]
//! region = "us-west-2"
//! endpoint_url = "http://127.0.0.1:5000"
//!
//! [taskdb]
//! table = "reflow-taskdb"             # absent: no TaskDB
//! create_table = false                # create it at start (development)
//!
//! [queue]
//! url = "amqp://agent:secret@broker:5672/%2f"  # or sqs://NAME, spool://DIR; default spool://STATE/spool
//! max_jobs = 4                        # jobs at once; default: CPU cores
//! prefetch = 4                        # commands held at once, running ones included; default max_jobs
//! max_job_secs = 36000                # longest job; AMQP consumer timeout derives from it
//! max_deliveries = 5                  # then the command is dead-lettered
//! drain_grace_secs = 300              # running jobs' time to finish at shutdown
//! heartbeat_secs = 30
//! visibility_timeout_secs = 120       # SQS lease per extension
//! job_attempts = 3                    # tries of a job step failing with a retryable error
//! op_timeout_secs = 30                # deadline of one broker operation, then reconnect
//! tls_ca_file = "/etc/reflow-agent/broker-ca.pem"         # amqps://: a private CA
//! tls_client_identity_file = "/etc/reflow-agent/agent.p12"  # amqps://: client certificate
//!
//! [repository]
//! url = "file:///var/lib/reflow-agent/repository"  # default: file://STATE/repository
//!
//! [security]
//! hmac_key_file = "/etc/reflow-agent/hmac.key"     # commands must be signed with this key
//! image_allowlist = ["reflow-agent-test/", "123456789012.dkr.ecr.us-west-2.amazonaws.com/"]
//! repositories = ["s3://shared-bucket/inputs", "file:///data/shared"]  # besides the agent's own
//! max_resources = { mem = 68719476736.0, cpu = 16.0 }
//! ```
//!
//! `REFLOW_AGENT_<SECTION>__<FIELD>` environment variables override any field of the file
//! ([`Config::load_with_env`]); the single variables `REFLOW_AGENT_CONFIG`, `REFLOW_AGENT_QUEUE`,
//! `REFLOW_AGENT_STATE_DIR`, `REFLOW_AGENT_REPOSITORY`, `REFLOW_AGENT_HMAC_KEY` and the flags
//! override both (see `reflow-agent serve --help`).

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use thiserror::Error;

use crate::aws::AwsSettings;
use crate::error::{Classify, Kind};

mod resolved;
pub use resolved::*;

/// The prefix of the environment variables that override config fields:
/// `REFLOW_AGENT_<SECTION>__<FIELD>` (see [`Config::load_with_env`]).
pub const ENV_PREFIX: &str = "REFLOW_AGENT_";

/// An override's value: TOML when it parses as a TOML value, else the text as a string.
fn env_value(text: &str) -> toml::Value {
    toml::from_str::<toml::Table>(&format!("v = {text}"))
        .ok()
        .and_then(|mut t| t.remove("v"))
        .unwrap_or_else(|| toml::Value::String(text.to_string()))
}

/// `message` with every double-quoted span blanked: a parser quotes the value it refused, and
/// an environment value may be a secret.
fn without_quoted(message: &str) -> String {
    let mut out = String::with_capacity(message.len());
    let mut quoted = false;
    for c in message.chars() {
        if c == '"' {
            if !quoted {
                out.push_str("\"…\"");
            }
            quoted = !quoted;
        } else if !quoted {
            out.push(c);
        }
    }
    out
}

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
    /// Remove a dead alloc's directory (a zombie: its exec manifests, results and logs) this many
    /// seconds after its last change. Default 86400 (one day); 0 keeps zombies forever.
    pub zombie_max_age_secs: u64,
    /// Prune done journal entries, stored job results and spool events this many seconds after
    /// they were written. Default 604800 (7 days); 0 keeps them forever. A command delivered
    /// again after its entry was pruned runs again (docs/protocol.md, "Retention").
    pub state_retention_secs: u64,
    /// Poll EC2 instance metadata for a spot interruption or a rebalance recommendation every
    /// this many seconds, and drain at once on one (docs/operations.md). Default 5; 0 turns it
    /// off. Off EC2 it stops by itself after the first try.
    pub interruption_poll_secs: u64,
}

impl Default for AgentSection {
    fn default() -> Self {
        AgentSection {
            state_dir: PathBuf::from(DEFAULT_STATE_DIR),
            pool_id: None,
            expected_usable_mem: 0.0,
            idle_exit_after_secs: None,
            zombie_max_age_secs: DEFAULT_ZOMBIE_MAX_AGE_SECS,
            state_retention_secs: DEFAULT_STATE_RETENTION_SECS,
            interruption_poll_secs: DEFAULT_INTERRUPTION_POLL_SECS,
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
    /// Container network mode: `none` (no network, the default) or `host` (the host's
    /// network, which needs [`ExecutorSection::allow_host_network`]).
    pub network_mode: String,
    /// Allow `network_mode = "host"`. A container on the host's network reaches what the
    /// host reaches: the instance metadata service, and through it the instance role's
    /// credentials, whatever `allow_aws_creds` says. Default false.
    pub allow_host_network: bool,
    /// Disk/CPU/memory sampling period, seconds. Default 10.
    pub profile_interval_secs: u64,
    /// A docker config file whose `auths`, `credHelpers` and `credsStore` give registry
    /// credentials for pulls. Default: `$DOCKER_CONFIG/config.json`, else
    /// `$HOME/.docker/config.json`, when that file exists.
    pub docker_config: Option<PathBuf>,
    /// Pull ECR images (`<account>.dkr.ecr.<region>.amazonaws.com/...`) with tokens from ECR's
    /// `GetAuthorizationToken` (the SDK's standard chain). Default true.
    pub ecr_auth: bool,
    /// How long an accepted job's exec waits for a container engine that stopped answering
    /// (a dockerd restart) before it fails, seconds. Default 600.
    pub engine_wait_secs: u64,
    /// Remove images this agent used and no longer needs (ECS: `ECS_DISABLE_IMAGE_CLEANUP`
    /// inverted). Default true.
    pub image_cleanup: bool,
    /// Seconds between cleanup cycles (ECS: `ECS_IMAGE_CLEANUP_INTERVAL`). Default 1800.
    pub image_cleanup_interval_secs: u64,
    /// An image used more recently than this many seconds stays (ECS:
    /// `ECS_IMAGE_MINIMUM_CLEANUP_AGE`). Default 3600.
    pub image_gc_min_age_secs: u64,
    /// The most images removed per cycle (ECS: `ECS_NUM_IMAGES_DELETE_PER_CYCLE`). Default 5.
    pub image_cleanup_per_cycle: usize,
    /// Clean up only while the engine's data disk is at least this full, percent (0: always).
    /// Default 85 (kubelet's `image-gc-high-threshold`).
    pub image_cleanup_disk_percent: u8,
    /// Image references never removed.
    pub image_cleanup_exclude: Vec<String>,
}

impl Default for ExecutorSection {
    fn default() -> Self {
        ExecutorSection {
            hard_mem_limit: false,
            allow_docker_socket: false,
            allow_aws_creds: false,
            network_mode: DEFAULT_NETWORK_MODE.into(),
            allow_host_network: false,
            profile_interval_secs: DEFAULT_PROFILE_INTERVAL_SECS,
            docker_config: None,
            ecr_auth: true,
            engine_wait_secs: DEFAULT_ENGINE_WAIT_SECS,
            image_cleanup: true,
            image_cleanup_interval_secs: DEFAULT_IMAGE_CLEANUP_INTERVAL_SECS,
            image_gc_min_age_secs: DEFAULT_IMAGE_GC_MIN_AGE_SECS,
            image_cleanup_per_cycle: DEFAULT_IMAGE_CLEANUP_PER_CYCLE,
            image_cleanup_disk_percent: DEFAULT_IMAGE_CLEANUP_DISK_PERCENT,
            image_cleanup_exclude: Vec::new(),
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

/// The longest `queue.max_job_secs` on SQS: 12 hours of visibility less 20 minutes for the
/// wait before a job starts and the recording of its outcome.
pub const MAX_SQS_JOB_SECS: u64 = 42_000;

/// `[queue]`.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct QueueSection {
    /// Queue URL: `amqp://user:pass@host:port/vhost`, `sqs://NAME[?results=R&dlq=D]` or
    /// `spool://DIR`. Default: `spool://STATE_DIR/spool`.
    pub url: Option<String>,
    /// Jobs running at once. Default (0): the number of CPU cores.
    pub max_jobs: usize,
    /// Commands held at once, running jobs included: an agent receives only what it can start,
    /// and leaves the rest to idle agents. Default (0): `max_jobs`.
    pub prefetch: usize,
    /// The longest a job may run, seconds: a job declaring a longer `timeout_secs` is refused,
    /// and a job still running past it is stopped and fails with a timeout. AMQP's consumer
    /// timeout (`x-consumer-timeout`) is this plus 10 minutes. On SQS it must stay within the
    /// 12-hour visibility cap (at most 42,000). Default (0): 36,000 (10 hours).
    pub max_job_secs: u64,
    /// Deliveries of one command before it is dead-lettered. Default (0): 5.
    pub max_deliveries: u32,
    /// Seconds running jobs get to finish at shutdown. Default (0): 300.
    pub drain_grace_secs: u64,
    /// Heartbeat period, seconds. Default (0): 30.
    pub heartbeat_secs: u64,
    /// SQS visibility per receive and per extension, seconds. Default (0): 120.
    pub visibility_timeout_secs: u64,
    /// Tries of a job step that fails with a retryable error. Default (0): 3.
    pub job_attempts: u32,
    /// For an `amqps://` broker: a PEM file of CA certificates to trust besides the system's
    /// (a private CA). The broker's certificate and host name are always verified.
    pub tls_ca_file: Option<PathBuf>,
    /// For an `amqps://` broker that verifies clients: the agent's certificate and key as a
    /// PKCS#12 bundle (`openssl pkcs12 -export`).
    pub tls_client_identity_file: Option<PathBuf>,
    /// A file whose first line is the password of `tls_client_identity_file` (absent: none).
    pub tls_client_identity_password_file: Option<PathBuf>,
    /// The event kinds sent to the events topic (`exec.completed`, `command.rejected`, ...;
    /// see docs/protocol.md). Default: all. Leaving out `exec.state` and `alloc.freed` halves a
    /// job's event messages; a producer waiting for outcomes needs `exec.completed` and
    /// `command.rejected`.
    pub publish: Option<Vec<String>>,
    /// Longest wait for one broker operation, seconds: on AMQP connect, declare, publish and
    /// its confirm, ack (then the connection is taken as dead and made again); on SQS one
    /// request attempt beyond the 20 s long poll (then the SDK retries). Default (0): 30.
    pub op_timeout_secs: u64,
}

/// `[repository]`.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RepositorySection {
    /// The agent's repository, the default source and destination of job files
    /// (`file:///...`). Default: `file://STATE_DIR/repository`.
    pub url: Option<String>,
}

/// `[security]`.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SecuritySection {
    /// A file holding the HMAC key; when set (here or by `REFLOW_AGENT_HMAC_KEY`), unsigned or
    /// badly signed commands are rejected. Never logged.
    pub hmac_key_file: Option<PathBuf>,
    /// Images execs may use, as reference patterns matched on path-component boundaries
    /// (`registry.example/team/` for a namespace, a repository, a tag or digest, a trailing
    /// `@` to require digest pinning); empty allows any image.
    pub image_allowlist: Vec<String>,
    /// Repositories commands may name besides the agent's own (`inputs_from`, `outputs_to`,
    /// `load`'s `repo_url`, intern/extern URLs): `file:///path` or `s3://bucket/prefix`, each
    /// granting itself and what is beneath it. Default: none.
    pub repositories: Vec<String>,
    /// The most one command may ask for, per resource (`mem` and `disk` in bytes, `cpu` in cores).
    pub max_resources: crate::resources::Resources,
    /// With a key, how far a signed command's `time` may be from the agent's clock, seconds.
    /// Default (0): 300.
    pub max_clock_skew_secs: u64,
}

/// `[admin]`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AdminSection {
    /// Address of the admin HTTP listener (`/metrics`, `/healthz`, `/readyz`, `/v1/status`);
    /// `"off"` disables it. Default `127.0.0.1:9090`.
    pub listen: String,
}

impl Default for AdminSection {
    fn default() -> Self {
        AdminSection {
            listen: DEFAULT_ADMIN_LISTEN.into(),
        }
    }
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
    /// `[queue]`.
    pub queue: QueueSection,
    /// `[repository]`.
    pub repository: RepositorySection,
    /// `[security]`.
    pub security: SecuritySection,
    /// `[admin]`.
    pub admin: AdminSection,
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
    /// An environment override (`REFLOW_AGENT_<SECTION>__<FIELD>`) names no field or does not
    /// fit it.
    #[error("environment override {vars}: {message}")]
    Env {
        /// The overriding variables (names only; values may be secrets).
        vars: String,
        /// The parser's message.
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
        Config::parse(&Config::read(path)?, path)
    }

    fn read(path: &Path) -> Result<String, ConfigError> {
        let bytes = crate::persist::read_bounded(path, MAX_CONFIG_BYTES).map_err(|source| {
            ConfigError::Read {
                path: path.to_path_buf(),
                source,
            }
        })?;
        Ok(String::from_utf8_lossy(&bytes).into_owned())
    }

    /// The config file at `path` (none: the defaults) with every environment override of
    /// `env` applied: `REFLOW_AGENT_<SECTION>__<FIELD>=VALUE` sets `[section] field` (names are
    /// case-insensitive). VALUE is a TOML value (`4`, `true`, `["a", "b"]`,
    /// `{ mem = 1e9, cpu = 2.0 }`, `"123"`); anything that is not valid TOML is a string, so
    /// `amqp://host/vhost` needs no quotes.
    ///
    /// # Errors
    /// Reading or parsing the file, or an override that names no field or does not fit it.
    pub fn load_with_env(
        path: Option<&Path>,
        env: impl IntoIterator<Item = (String, String)>,
    ) -> Result<Config, ConfigError> {
        let (text, shown) = match path {
            Some(p) => (Config::read(p)?, p.to_path_buf()),
            None => (String::new(), PathBuf::from("(defaults)")),
        };
        // The file alone first, so its own mistakes are reported as the file's.
        Config::parse(&text, &shown)?;
        let mut table: toml::Table = toml::from_str(&text).map_err(|e| ConfigError::Parse {
            path: shown.clone(),
            message: e.to_string(),
        })?;
        let mut vars = Vec::new();
        for (name, value) in env {
            let Some((section, field)) = name
                .strip_prefix(ENV_PREFIX)
                .and_then(|rest| rest.split_once("__"))
            else {
                continue;
            };
            let section = table
                .entry(section.to_ascii_lowercase())
                .or_insert_with(|| toml::Value::Table(toml::Table::new()));
            let toml::Value::Table(section) = section else {
                continue; // not a section: deserializing reports it
            };
            section.insert(field.to_ascii_lowercase(), env_value(&value));
            vars.push(name);
        }
        if vars.is_empty() {
            return Config::parse(&text, &shown);
        }
        vars.sort();
        Config::deserialize(toml::Value::Table(table)).map_err(|e| ConfigError::Env {
            vars: vars.join(", "),
            message: without_quoted(&e.to_string()),
        })
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
        if self.executor.network_mode == "host" && !self.executor.allow_host_network {
            bad(
                "executor.network_mode",
                "\"host\" lets every container reach what the host reaches, the instance \
                 metadata service and the instance role's credentials included; set \
                 executor.allow_host_network = true to allow it, or use \"none\"",
            );
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
        if self.taskdb.table.is_some() && !cfg!(feature = "dynamodb") {
            bad(
                "taskdb.table",
                &crate::features::not_built("a DynamoDB TaskDB", "dynamodb"),
            );
        }
        for (field, url) in [
            ("queue.url", &self.queue.url),
            ("repository.url", &self.repository.url),
        ] {
            if let Some(feature) = url.as_deref().and_then(crate::features::missing_for_url) {
                bad(field, &crate::features::not_built("this URL", feature));
            }
        }
        if let Some(kinds) = &self.queue.publish {
            for k in kinds {
                if !crate::protocol::EVENT_KINDS.contains(&k.as_str()) {
                    bad(
                        "queue.publish",
                        &format!(
                            "unknown event kind {k:?}; the kinds are {}",
                            crate::protocol::EVENT_KINDS.join(", ")
                        ),
                    );
                }
            }
        }
        for (field, path) in [
            ("queue.tls_ca_file", &self.queue.tls_ca_file),
            (
                "queue.tls_client_identity_file",
                &self.queue.tls_client_identity_file,
            ),
            (
                "queue.tls_client_identity_password_file",
                &self.queue.tls_client_identity_password_file,
            ),
        ] {
            if path.as_deref().is_some_and(|p| !p.is_absolute()) {
                bad(field, "must be an absolute path");
            }
        }
        // Defaults derive from agent.state_dir, already checked; only given URLs are checked.
        if let Some(url) = &self.queue.url
            && !["amqp://", "amqps://", "sqs://", "spool:///"]
                .iter()
                .any(|p| url.starts_with(p))
        {
            bad(
                "queue.url",
                "must be amqp://..., sqs://NAME or spool:///ABSOLUTE/DIR",
            );
        }
        if let Some(url) = &self.repository.url
            && !url
                .strip_prefix("file://")
                .is_some_and(|p| p.starts_with('/'))
            && crate::blob::BlobUrl::parse(url).is_err()
        {
            bad(
                "repository.url",
                "must be file:///ABSOLUTE/DIR or s3://bucket/prefix",
            );
        }
        if self
            .queue
            .url
            .as_deref()
            .is_some_and(|u| u.starts_with("sqs://"))
            && self.max_job().as_secs() > MAX_SQS_JOB_SECS
        {
            bad(
                "queue.max_job_secs",
                "must be at most 42000 on SQS: a message's visibility cannot be extended past 12 hours after it was received",
            );
        }
        if self.queue.visibility_timeout_secs > 43_200 {
            bad(
                "queue.visibility_timeout_secs",
                "must be at most 43200 (SQS's limit)",
            );
        }
        if self.security.max_resources.validate().is_err() {
            bad(
                "security.max_resources",
                "values must be finite and non-negative",
            );
        }
        if self.admin.listen != "off" && self.admin_listen().is_none() {
            bad(
                "admin.listen",
                "must be an address such as 127.0.0.1:9090, or \"off\"",
            );
        }
        if self.security.image_allowlist.iter().any(|p| p.is_empty()) {
            bad(
                "security.image_allowlist",
                "an empty prefix would allow every image; leave the list empty instead",
            );
        }
        if let Some(p) =
            self.security.image_allowlist.iter().find(|p| {
                !p.is_empty() && crate::control::security::ImagePattern::parse(p).is_none()
            })
        {
            bad(
                "security.image_allowlist",
                &format!(
                    "{p:?} is not an image reference such as registry.example/team/ or ubuntu:24.04"
                ),
            );
        }
        if let Some(r) = self.security.repositories.iter().find(|r| {
            !(r.starts_with("file:///") || r.starts_with("s3://"))
                || r.split('/').skip(3).any(|c| c == "." || c == "..")
        }) {
            bad(
                "security.repositories",
                &format!("{r:?} is not a file:///absolute/path or s3://bucket/prefix"),
            );
        }
        errs
    }

    /// The admin listener's address; `None` when it is off.
    pub fn admin_listen(&self) -> Option<std::net::SocketAddr> {
        self.admin.listen.parse().ok()
    }

    /// The queue URL, with its default.
    pub fn queue_url(&self) -> String {
        self.queue
            .url
            .clone()
            .unwrap_or_else(|| format!("spool://{}", self.agent.state_dir.join("spool").display()))
    }

    /// The repository URL, with its default.
    pub fn repository_url(&self) -> String {
        self.repository.url.clone().unwrap_or_else(|| {
            format!(
                "file://{}",
                self.agent.state_dir.join("repository").display()
            )
        })
    }

    /// The longest a job may run: `queue.max_job_secs`, or [`DEFAULT_MAX_JOB_SECS`].
    pub fn max_job(&self) -> std::time::Duration {
        resolved::secs(self.queue.max_job_secs, DEFAULT_MAX_JOB_SECS)
    }

    /// Jobs at once: `queue.max_jobs`, or the number of CPU cores.
    pub fn max_jobs(&self) -> usize {
        match self.queue.max_jobs {
            0 => std::thread::available_parallelism().map_or(2, |n| n.get()),
            n => n,
        }
    }

    /// The docker config file registry credentials come from: `executor.docker_config`, else
    /// `$DOCKER_CONFIG/config.json` or `$HOME/.docker/config.json` when it exists; with whether
    /// it was configured explicitly.
    pub fn docker_config_path(&self) -> Option<(PathBuf, bool)> {
        if let Some(p) = &self.executor.docker_config {
            return Some((p.clone(), true));
        }
        let dir = std::env::var_os("DOCKER_CONFIG")
            .map(PathBuf::from)
            .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".docker")))?;
        let p = dir.join("config.json");
        p.is_file().then_some((p, false))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs
            .iter()
            .map(|(k, v)| ((*k).to_string(), (*v).to_string()))
            .collect()
    }

    #[test]
    fn every_field_can_come_from_the_environment() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("a.toml");
        std::fs::write(&file, "[queue]\nprefetch = 2\nurl = \"spool:///file\"\n").unwrap();
        let c = Config::load_with_env(
            Some(&file),
            env(&[
                ("REFLOW_AGENT_QUEUE__PREFETCH", "4"),
                ("REFLOW_AGENT_QUEUE__URL", "amqp://u:p@host:5672/%2f?ns=x"),
                ("REFLOW_AGENT_AGENT__POOL_ID", "\"123\""),
                ("REFLOW_AGENT_EXECUTOR__ALLOW_HOST_NETWORK", "true"),
                ("REFLOW_AGENT_SECURITY__IMAGE_ALLOWLIST", "[\"a/\", \"b/\"]"),
                (
                    "REFLOW_AGENT_SECURITY__MAX_RESOURCES",
                    "{ mem = 1e9, cpu = 2.0 }",
                ),
                ("REFLOW_AGENT_ADMIN__LISTEN", "off"),
                // Not overrides: no section separator, or another prefix.
                ("REFLOW_AGENT_QUEUE", "spool:///flag"),
                ("OTHER_QUEUE__PREFETCH", "9"),
            ]),
        )
        .unwrap();
        assert_eq!(c.queue.prefetch, 4);
        assert_eq!(
            c.queue.url.as_deref(),
            Some("amqp://u:p@host:5672/%2f?ns=x")
        );
        assert_eq!(c.agent.pool_id.as_deref(), Some("123"));
        assert!(c.executor.allow_host_network);
        assert_eq!(c.security.image_allowlist, vec!["a/", "b/"]);
        assert_eq!(c.admin.listen, "off");
        // Without a file, the defaults are overridden.
        let c = Config::load_with_env(None, env(&[("REFLOW_AGENT_QUEUE__PREFETCH", "7")])).unwrap();
        assert_eq!(c.queue.prefetch, 7);
        assert_eq!(c.agent, AgentSection::default());
    }

    #[test]
    fn a_bad_override_is_named_without_its_value() {
        for (var, value, says) in [
            (
                "REFLOW_AGENT_QUEUE__PREFTECH",
                "4",
                "unknown field `prefetch`",
            ),
            ("REFLOW_AGENT_QUEUE__PREFETCH", "many", "invalid type"),
            ("REFLOW_AGENT_NOSUCH__X", "1", "unknown field `nosuch`"),
        ] {
            let e = Config::load_with_env(None, env(&[(var, value)])).unwrap_err();
            let text = e.to_string();
            assert!(matches!(e, ConfigError::Env { .. }), "{text}");
            assert!(text.contains(var), "{text}");
            assert!(
                text.contains(says) || text.contains("unknown field"),
                "{var}: {text}"
            );
        }
        let e = Config::load_with_env(
            None,
            env(&[
                ("REFLOW_AGENT_QUEUE__URL", "s3cr3t-in-a-bad-place"),
                ("REFLOW_AGENT_QUEUE__PREFETCH", "x"),
            ]),
        )
        .unwrap_err();
        assert!(!e.to_string().contains("s3cr3t"), "{e}");
    }

    #[test]
    // What it accepts or refuses depends on the backends built in.
    #[cfg(feature = "amqp")]
    fn amqps_is_accepted_and_its_ca_file_must_be_absolute() {
        let c = Config::parse(
            "[queue]\nurl = \"amqps://u:p@broker:5671/\"\ntls_ca_file = \"ca.pem\"\n",
            Path::new("x.toml"),
        )
        .unwrap();
        let errs: Vec<String> = c.validate().iter().map(ToString::to_string).collect();
        assert_eq!(errs.len(), 1, "{errs:?}");
        assert!(errs[0].contains("queue.tls_ca_file"), "{errs:?}");
    }

    #[test]
    fn a_backend_missing_from_the_build_is_refused_by_name() {
        let text = r#"
            [queue]
            url = "sqs://jobs"
            [repository]
            url = "s3://bucket/prefix"
            [taskdb]
            table = "reflow-taskdb"
        "#;
        let c = Config::parse(text, Path::new("x.toml")).unwrap();
        let errs: Vec<String> = c.validate().iter().map(ToString::to_string).collect();
        // Holds in every build: a refusal exactly when the feature is missing.
        for (field, built) in [
            ("queue.url", cfg!(feature = "sqs")),
            ("repository.url", cfg!(feature = "s3")),
            ("taskdb.table", cfg!(feature = "dynamodb")),
        ] {
            let refused = errs
                .iter()
                .any(|e| e.starts_with(field) && e.contains("cargo feature"));
            assert_eq!(refused, !built, "{field}: {errs:?}");
        }
    }

    #[test]
    // What it accepts or refuses depends on the backends built in.
    #[cfg(feature = "dynamodb")]
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
            docker_config = "/etc/reflow-agent/docker.json"
            ecr_auth = false
            [aws]
            region = "us-west-2"
            endpoint_url = "http://127.0.0.1:5000"
            [taskdb]
            table = "reflow-taskdb"
            create_table = true
        "#;
        let c = Config::parse(text, Path::new("x.toml")).unwrap();
        assert!(c.validate().is_empty(), "{:?}", c.validate());
        assert!(c.executor.hard_mem_limit);
        assert_eq!(c.executor.network_mode, "none");
        assert_eq!(c.aws.endpoint_url.as_deref(), Some("http://127.0.0.1:5000"));
        assert!(!c.executor.ecr_auth);
        assert_eq!(
            c.docker_config_path(),
            Some((PathBuf::from("/etc/reflow-agent/docker.json"), true))
        );
    }

    #[test]
    // What it accepts or refuses depends on the backends built in.
    #[cfg(all(feature = "s3", feature = "dynamodb"))]
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
            "[agent]\nstate_dir = \"relative\"\nidle_exit_after_secs = 0\n[executor]\nnetwork_mode = \"bridge\"\n[taskdb]\ncreate_table = true\n[queue]\nurl = \"http://x\"\n[repository]\nurl = \"s3://b\"\n[security]\nimage_allowlist = [\"\"]\n",
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
                "taskdb.create_table",
                "queue.url",
                "repository.url",
                "security.image_allowlist"
            ]
        );
    }

    #[test]
    fn host_network_is_refused_unless_allowed() {
        let c = Config::default();
        assert_eq!(c.executor.network_mode, "none");
        assert!(c.validate().is_empty());
        let host = Config::parse("[executor]\nnetwork_mode = \"host\"\n", Path::new("x")).unwrap();
        let errs: Vec<String> = host.validate().iter().map(ToString::to_string).collect();
        assert_eq!(errs.len(), 1, "{errs:?}");
        assert!(
            errs[0].contains("executor.allow_host_network") && errs[0].contains("metadata"),
            "{errs:?}"
        );
        let allowed = Config::parse(
            "[executor]\nnetwork_mode = \"host\"\nallow_host_network = true\n",
            Path::new("x"),
        )
        .unwrap();
        assert!(allowed.validate().is_empty());
    }

    #[test]
    fn published_event_kinds_are_checked() {
        let ok = Config::parse(
            "[queue]\npublish = [\"exec.completed\", \"command.rejected\"]\n",
            Path::new("x"),
        )
        .unwrap();
        assert!(ok.validate().is_empty());
        let bad = Config::parse("[queue]\npublish = [\"exec.done\"]\n", Path::new("x")).unwrap();
        let errs: Vec<String> = bad.validate().iter().map(ToString::to_string).collect();
        assert!(
            errs.len() == 1
                && errs[0].contains("queue.publish")
                && errs[0].contains("exec.completed"),
            "{errs:?}"
        );
    }
}
