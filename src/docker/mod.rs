//! The container runtime port: what the executor needs from a container engine, in domain
//! types only. [`bollard::BollardRuntime`] implements it against a real Docker engine; no
//! `bollard` type crosses this boundary.

pub mod auth;
pub mod bollard;
#[cfg(any(test, feature = "test-util"))]
pub mod fake;
pub mod health;

use std::collections::BTreeMap;
use std::fmt;

use async_trait::async_trait;
use futures_util::stream::BoxStream;
use thiserror::Error;

use crate::error::{Classify, Kind};
use crate::time::Time;

/// A bind mount.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Bind {
    /// Path on the host (as the engine sees it).
    pub host: String,
    /// Path in the container.
    pub container: String,
}

/// Everything needed to create a container.
#[derive(Clone, PartialEq, Eq, Default)]
pub struct ContainerSpec {
    /// Container name.
    pub name: String,
    /// Image reference.
    pub image: String,
    /// Entrypoint and its arguments.
    pub entrypoint: Vec<String>,
    /// Environment, `KEY=value`.
    pub env: Vec<String>,
    /// Labels.
    pub labels: BTreeMap<String, String>,
    /// Bind mounts.
    pub binds: Vec<Bind>,
    /// Network mode (`host` or `none`).
    pub network_mode: String,
    /// `uid:gid` to run as; the image's default when `None`.
    pub user: Option<String>,
    /// OOM score adjustment of the container's processes.
    pub oom_score_adj: i64,
    /// Memory limit in bytes.
    pub memory: Option<i64>,
    /// Memory plus swap limit in bytes.
    pub memory_swap: Option<i64>,
}

impl fmt::Debug for ContainerSpec {
    /// Environment values are not shown: they may hold credentials.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let env_keys: Vec<&str> = self
            .env
            .iter()
            .map(|e| e.split('=').next().unwrap_or(""))
            .collect();
        f.debug_struct("ContainerSpec")
            .field("name", &self.name)
            .field("image", &self.image)
            .field("entrypoint", &self.entrypoint)
            .field("env_keys", &env_keys)
            .field("labels", &self.labels)
            .field("binds", &self.binds)
            .field("network_mode", &self.network_mode)
            .field("user", &self.user)
            .field("oom_score_adj", &self.oom_score_adj)
            .field("memory", &self.memory)
            .field("memory_swap", &self.memory_swap)
            .finish()
    }
}

/// The state of a container, from an inspect.
#[derive(Debug, Clone, PartialEq)]
pub struct ContainerInfo {
    /// Container id.
    pub id: String,
    /// Whether it is running.
    pub running: bool,
    /// Engine status text (`created`, `running`, `exited`, ...).
    pub status: String,
    /// Exit code (meaningful when not running).
    pub exit_code: i64,
    /// Whether the engine reports an OOM kill.
    pub oom_killed: bool,
    /// Main process id on the host (0 when not running).
    pub pid: i64,
    /// When it started, if it did.
    pub started_at: Option<Time>,
    /// When it finished, if it did.
    pub finished_at: Option<Time>,
    /// The engine's full inspect JSON (stored in manifests).
    pub raw: serde_json::Value,
}

/// A container in a listing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ContainerSummary {
    /// Container id.
    pub id: String,
    /// Name without the leading `/`.
    pub name: String,
    /// Labels.
    pub labels: BTreeMap<String, String>,
    /// Engine state text.
    pub state: String,
}

/// Which output stream a log chunk came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogStream {
    /// Standard output.
    Stdout,
    /// Standard error.
    Stderr,
}

/// A piece of a container's log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogChunk {
    /// The stream.
    pub stream: LogStream,
    /// The bytes.
    pub bytes: Vec<u8>,
}

/// A container's end as the engine announced it (its `die` event).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Exit {
    /// The exit code.
    pub code: i64,
    /// The engine announced an OOM kill in the container (an `oom` event) before its end.
    pub oom_killed: bool,
    /// When it started (its `start` event), when that was seen.
    pub started_at: Option<Time>,
    /// When it ended, when the engine said.
    pub finished_at: Option<Time>,
}

/// A created container watched from before its start: what it writes as it writes it, and its
/// end as the engine announces it, sooner than a wait, an inspect or a logs request answer
/// (the engine holds the container through its clean-up after the process ends; on dockerd
/// 20.10 about 10 ms).
pub struct Watch {
    /// The container as inspected before its start: its id and configuration.
    pub created: ContainerInfo,
    /// Its standard output and error, attached before the start; ends when the container
    /// closes them (when it ends, or earlier if it closes them itself).
    pub output: BoxStream<'static, Result<LogChunk, RuntimeError>>,
    /// Its end; an error when the engine's event stream breaks or ends first, or the container
    /// is destroyed without ending.
    pub exit: futures_util::future::BoxFuture<'static, Result<Exit, RuntimeError>>,
}

impl fmt::Debug for Watch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Watch")
            .field("created", &self.created.id)
            .finish_non_exhaustive()
    }
}

/// Fills an inspect's `State` (taken before or during the run) with `exit`, as an inspect
/// after the exit would show it.
pub fn exited_state(inspect: &mut serde_json::Value, exit: &Exit) {
    let Some(obj) = inspect.as_object_mut() else {
        return;
    };
    let state = obj
        .entry("State")
        .or_insert_with(|| serde_json::Value::Object(serde_json::Map::new()));
    let Some(state) = state.as_object_mut() else {
        return;
    };
    let started = state
        .get("StartedAt")
        .and_then(serde_json::Value::as_str)
        .and_then(|s| crate::time::parse(s).ok())
        .filter(|t| t.timestamp() > 0);
    if started.is_none()
        && let Some(t) = &exit.started_at
    {
        state.insert("StartedAt".into(), crate::time::format(t).into());
    }
    for (k, v) in [
        ("Status", serde_json::Value::from("exited")),
        ("Running", false.into()),
        ("Paused", false.into()),
        ("Restarting", false.into()),
        ("OOMKilled", exit.oom_killed.into()),
        ("Dead", false.into()),
        ("Pid", 0.into()),
        ("ExitCode", exit.code.into()),
        ("Error", "".into()),
    ] {
        state.insert(k.into(), v);
    }
    if let Some(t) = &exit.finished_at {
        state.insert("FinishedAt".into(), crate::time::format(t).into());
    }
}

/// The variable an exec with `NeedAWSCreds` finds its secret access key in.
pub const AWS_SECRET_ACCESS_KEY: &str = "AWS_SECRET_ACCESS_KEY";
/// The variable an exec with `NeedAWSCreds` finds its session token in (temporary credentials).
pub const AWS_SESSION_TOKEN: &str = "AWS_SESSION_TOKEN";

/// Environment variables whose values never leave the container: the AWS credentials an exec
/// with `NeedAWSCreds` is given. Their values are cut out of every inspect the agent keeps
/// ([`redact_env`]).
pub const SECRET_ENV: &[&str] = &[AWS_SECRET_ACCESS_KEY, AWS_SESSION_TOKEN];

/// Replaces the value of every [`SECRET_ENV`] variable in an inspect's `Config.Env` with
/// `<redacted>`, so the engine's JSON can be kept in manifests and sent in events.
pub fn redact_env(inspect: &mut serde_json::Value) {
    let Some(env) = inspect
        .pointer_mut("/Config/Env")
        .and_then(serde_json::Value::as_array_mut)
    else {
        return;
    };
    for var in env {
        let Some(name) = var.as_str().and_then(|s| s.split_once('=')).map(|(n, _)| n) else {
            continue;
        };
        if SECRET_ENV.contains(&name) {
            *var = format!("{name}=<redacted>").into();
        }
    }
}

/// Registry credentials for a pull.
#[derive(Clone, PartialEq, Eq)]
pub struct RegistryAuth {
    /// User name.
    pub username: String,
    /// Password or token.
    pub password: String,
    /// Registry address.
    pub server: String,
}

impl fmt::Debug for RegistryAuth {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RegistryAuth")
            .field("username", &self.username)
            .field("password", &"<redacted>")
            .field("server", &self.server)
            .finish()
    }
}

/// Container runtime failures.
#[derive(Debug, Error)]
pub enum RuntimeError {
    /// The container or image does not exist.
    #[error("{op} {target}: not found: {message}")]
    NotFound {
        /// The operation.
        op: &'static str,
        /// Container or image.
        target: String,
        /// The engine's message.
        message: String,
    },
    /// A name is already in use, or the state forbids the operation.
    #[error("{op} {target}: conflict: {message}")]
    Conflict {
        /// The operation.
        op: &'static str,
        /// Container or image.
        target: String,
        /// The engine's message.
        message: String,
    },
    /// The registry or engine refused the credentials.
    #[error("{op} {target}: not allowed: {message}")]
    NotAllowed {
        /// The operation.
        op: &'static str,
        /// Container or image.
        target: String,
        /// The engine's message.
        message: String,
    },
    /// The engine answered with another error.
    #[error("{op} {target}: engine error {status}: {message}")]
    Engine {
        /// The operation.
        op: &'static str,
        /// Container or image.
        target: String,
        /// HTTP status.
        status: u16,
        /// The engine's message.
        message: String,
    },
    /// The engine could not be reached or the connection failed.
    #[error("{op} {target}: engine unreachable")]
    Unreachable {
        /// The operation.
        op: &'static str,
        /// Container or image.
        target: String,
        /// Cause.
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
}

impl Classify for RuntimeError {
    fn kind(&self) -> Kind {
        match self {
            RuntimeError::NotFound { .. } => Kind::NotExist,
            RuntimeError::NotAllowed { .. } => Kind::NotAllowed,
            RuntimeError::Conflict { .. }
            | RuntimeError::Engine { .. }
            | RuntimeError::Unreachable { .. } => Kind::Unavailable,
        }
    }
}

impl RuntimeError {
    /// Whether the container or image does not exist.
    pub fn is_not_found(&self) -> bool {
        matches!(self, RuntimeError::NotFound { .. })
    }

    /// Whether the engine refused because the container is being removed (a start of it, or a
    /// second removal).
    pub fn is_removal_in_progress(&self) -> bool {
        matches!(self, RuntimeError::Conflict { message, .. } if removal_in_progress(message))
    }
}

/// How long [`ContainerRuntime::remove`] waits for another caller's removal of the same
/// container to end.
pub const REMOVAL_WAIT: std::time::Duration = std::time::Duration::from_secs(60);

/// Whether an engine's conflict message says the container is being removed: Docker answers
/// "removal of container … is already in progress" to a second removal and "container is
/// marked for removal and cannot be started" to a start.
pub(crate) fn removal_in_progress(message: &str) -> bool {
    message.contains("already in progress") || message.contains("marked for removal")
}

impl ContainerInfo {
    /// Whether the engine is removing the container (status `removing`).
    pub fn is_removing(&self) -> bool {
        self.status == "removing"
    }

    /// Whether the container ran and exited: the engine has recorded its exit (code, time, OOM
    /// kill), so a later inspect would find the same.
    pub fn has_exited(&self) -> bool {
        !self.running && self.status == "exited" && self.finished_at.is_some()
    }

    /// Whether the container has ever started (it runs, or it ran and exited).
    pub fn has_started(&self) -> bool {
        self.running || self.started_at.is_some() || self.status == "exited"
    }
}

/// A container engine.
#[async_trait]
pub trait ContainerRuntime: Send + Sync + fmt::Debug {
    /// Checks that the engine answers, through more than its HTTP server: the Docker engine is
    /// asked for its network list, which a deadlocked engine does not give.
    async fn ping(&self) -> Result<(), RuntimeError>;
    /// Whether `image` is present locally.
    async fn image_present(&self, image: &str) -> Result<bool, RuntimeError>;
    /// Pulls `image`, consuming the whole progress stream.
    async fn pull(&self, image: &str, auth: Option<RegistryAuth>) -> Result<(), RuntimeError>;
    /// Creates a container; returns its id.
    async fn create(&self, spec: &ContainerSpec) -> Result<String, RuntimeError>;
    /// Starts a container (starting a running one is not an error).
    async fn start(&self, name: &str) -> Result<(), RuntimeError>;
    /// Inspects a container; `None` when it does not exist.
    async fn inspect(&self, name: &str) -> Result<Option<ContainerInfo>, RuntimeError>;
    /// Waits until the container is not running; returns its exit code.
    ///
    /// # Cancel safety
    /// Cancel safe: dropping the future only stops waiting.
    async fn wait(&self, name: &str) -> Result<i64, RuntimeError>;
    /// The container's complete logs (not following).
    fn logs(&self, name: &str) -> BoxStream<'static, Result<LogChunk, RuntimeError>>;
    /// Sends SIGKILL; a container that is gone or not running is not an error.
    async fn kill(&self, name: &str) -> Result<(), RuntimeError>;
    /// Removes a container and returns once it is gone; one that is gone is not an error. When
    /// the engine is already removing it for another caller, waits (up to [`REMOVAL_WAIT`]) for
    /// that removal to end rather than returning while the name is still taken.
    async fn remove(&self, name: &str, force: bool) -> Result<(), RuntimeError>;
    /// All containers (running or not) with label `key=value`.
    async fn list_labeled(
        &self,
        key: &str,
        value: &str,
    ) -> Result<Vec<ContainerSummary>, RuntimeError>;
    /// Command lines of the container's processes.
    async fn top(&self, name: &str) -> Result<Vec<String>, RuntimeError>;
    /// Removes image reference `image` (untags it; the layers go with the last reference).
    /// Never forced: an image a container uses is a [`RuntimeError::Conflict`]. One that is
    /// gone is not an error.
    async fn remove_image(&self, image: &str) -> Result<(), RuntimeError>;
    /// The engine's data directory (where images live), for its disk use.
    async fn data_root(&self) -> Result<std::path::PathBuf, RuntimeError>;
    /// Watches created container `name` from before its start (see [`Watch`]). `Ok(None)`
    /// when this runtime cannot; the caller then waits, inspects and reads the logs.
    async fn watch(&self, name: &str) -> Result<Option<Watch>, RuntimeError> {
        let _ = name;
        Ok(None)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_announced_exit_fills_the_state_of_an_earlier_inspect() {
        let t = |s: &str| crate::time::parse(s).unwrap();
        let exit = Exit {
            code: 0,
            oom_killed: false,
            started_at: Some(t("2026-12-04T10:00:00.5Z")),
            finished_at: Some(t("2026-12-04T10:00:01.25Z")),
        };
        // Inspected before the start: the start's time comes from the exit.
        let mut created = serde_json::json!({
            "Id": "abc",
            "State": {"Status": "created", "Running": false, "Pid": 0, "ExitCode": 0,
                      "StartedAt": "0001-01-01T00:00:00Z", "FinishedAt": "0001-01-01T00:00:00Z"},
            "Config": {"Image": "busybox"}
        });
        exited_state(&mut created, &exit);
        assert_eq!(created["State"]["Status"], "exited");
        assert_eq!(created["State"]["StartedAt"], "2026-12-04T10:00:00.5Z");
        assert_eq!(created["State"]["FinishedAt"], "2026-12-04T10:00:01.25Z");
        assert_eq!(created["State"]["ExitCode"], 0);
        assert_eq!(created["Config"]["Image"], "busybox");
        // Inspected while it ran: its own start time and PID give way to the exit's state.
        let mut running = serde_json::json!({
            "State": {"Status": "running", "Running": true, "Pid": 42,
                      "StartedAt": "2026-12-04T10:00:00.4Z"}
        });
        exited_state(&mut running, &Exit { code: 3, ..exit });
        assert_eq!(running["State"]["StartedAt"], "2026-12-04T10:00:00.4Z");
        assert_eq!(running["State"]["Running"], false);
        assert_eq!(running["State"]["Pid"], 0);
        assert_eq!(running["State"]["ExitCode"], 3);
        assert_eq!(running["State"]["OOMKilled"], false);
    }

    #[test]
    fn secret_environment_values_are_cut_from_an_inspect() {
        let mut raw = serde_json::json!({
            "Id": "abc",
            "Config": {"Env": [
                "HOME=/tmp",
                "AWS_ACCESS_KEY_ID=AKIDEXAMPLE",
                "AWS_SECRET_ACCESS_KEY=very=secret",
                "AWS_SESSION_TOKEN=token",
                "NOT_AWS_SECRET_ACCESS_KEY=kept",
                "BARE",
                7
            ]}
        });
        redact_env(&mut raw);
        assert_eq!(
            raw["Config"]["Env"],
            serde_json::json!([
                "HOME=/tmp",
                "AWS_ACCESS_KEY_ID=AKIDEXAMPLE",
                "AWS_SECRET_ACCESS_KEY=<redacted>",
                "AWS_SESSION_TOKEN=<redacted>",
                "NOT_AWS_SECRET_ACCESS_KEY=kept",
                "BARE",
                7
            ])
        );
        // No `Config.Env`, or not a list: left as it is.
        for mut v in [
            serde_json::json!({"Id": "x"}),
            serde_json::json!({"Config": {"Env": null}}),
        ] {
            let before = v.clone();
            redact_env(&mut v);
            assert_eq!(v, before);
        }
    }
}
