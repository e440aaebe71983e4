//! The queue protocol: a versioned JSON envelope for commands (producers to agents) and events
//! (agents to result topics), independent of any broker. docs/protocol.md has complete examples.
//!
//! [`decode_command`] is the gate for untrusted input: size limit, JSON, version, id, kind,
//! addressing and body are each checked, and every failure is a typed [`ProtocolError`] of kind
//! `Invalid` (rejected to the DLQ with a `command.rejected` event, never retried).

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use thiserror::Error;

use crate::digest::Digest;
use crate::error::{Classify, Kind, ReflowError};
use crate::fileset::Fileset;
use crate::model::{AllocMeta, ConfigError, ExecConfig, ExecResult};
use crate::time::{self, Time};

/// The protocol version this agent speaks.
pub const PROTOCOL_VERSION: u32 = 1;
/// Largest command accepted, in bytes (SQS's message limit; larger data goes through S3).
pub const MAX_COMMAND_BYTES: usize = 256 * 1024;
/// Longest message id.
pub const MAX_ID_LEN: usize = 128;

/// Why a command was rejected.
#[derive(Debug, Error)]
pub enum ProtocolError {
    /// The message is larger than [`MAX_COMMAND_BYTES`].
    #[error("command is {size} bytes, more than {MAX_COMMAND_BYTES}")]
    TooLarge {
        /// Its size.
        size: usize,
    },
    /// Not JSON, or not an envelope.
    #[error("not a command envelope")]
    Json(#[source] serde_json::Error),
    /// A version this agent does not speak.
    #[error("protocol version {found} is not supported (this agent speaks {PROTOCOL_VERSION})")]
    Version {
        /// The version given.
        found: u32,
    },
    /// The id (idempotency key) is missing or malformed.
    #[error("command id must be 1 to {MAX_ID_LEN} of [A-Za-z0-9._:-]")]
    BadId,
    /// `reply_to` is not a queue name or URL an agent can send to.
    #[error("reply_to must be 1 to {MAX_REPLY_TO_LEN} of [A-Za-z0-9._:/-]")]
    BadReplyTo,
    /// An unknown command kind.
    #[error("unknown command kind {kind:?}")]
    UnknownKind {
        /// The kind given (truncated).
        kind: String,
    },
    /// A field the kind needs is missing.
    #[error("{kind} needs {field}")]
    Missing {
        /// The command kind.
        kind: &'static str,
        /// The missing field.
        field: &'static str,
    },
    /// The alloc id is malformed.
    #[error("alloc id must be 16 lowercase hex characters")]
    BadAlloc,
    /// The body does not fit the kind.
    #[error("{kind} body")]
    Body {
        /// The command kind.
        kind: &'static str,
        /// Cause.
        #[source]
        source: serde_json::Error,
    },
    /// An embedded exec config is invalid.
    #[error("{kind} config")]
    Config {
        /// The command kind.
        kind: &'static str,
        /// Cause.
        #[source]
        source: ConfigError,
    },
    /// An embedded fileset is invalid.
    #[error("{kind} fileset")]
    Fileset {
        /// The command kind.
        kind: &'static str,
        /// Cause.
        #[source]
        source: crate::fileset::FilesetError,
    },
    /// A value is out of range.
    #[error("{kind}: {what}")]
    Range {
        /// The command kind.
        kind: &'static str,
        /// What is wrong.
        what: &'static str,
    },
}

impl Classify for ProtocolError {
    fn kind(&self) -> Kind {
        Kind::Invalid
    }
}

/// The envelope of every command and event.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Envelope {
    /// Protocol version.
    pub v: u32,
    /// Message id: the idempotency key of a command, the unique id of an event.
    pub id: String,
    /// What it is, e.g. `exec.put` or `exec.completed`.
    pub kind: String,
    /// The alloc it addresses, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub alloc: Option<String>,
    /// The exec it addresses, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exec: Option<Digest>,
    /// Where the producer wants replies (a topic or queue name), if not the default.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reply_to: Option<String>,
    /// Copied from the command into every event it causes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub correlation_id: Option<String>,
    /// When it was sent.
    #[serde(default, skip_serializing_if = "Option::is_none", with = "opt_time")]
    pub time: Option<Time>,
    /// An optional HMAC-SHA256 signature (docs/protocol.md, "Signatures"); required when the
    /// agent has a key.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub signature: Option<String>,
    /// Kind-specific content.
    #[serde(default)]
    pub body: serde_json::Value,
}

mod opt_time {
    use serde::{Deserialize, Deserializer, Serializer};

    use crate::time::{self, Time};

    pub fn serialize<S: Serializer>(t: &Option<Time>, s: S) -> Result<S::Ok, S::Error> {
        match t {
            Some(t) => s.serialize_str(&time::format(t)),
            None => s.serialize_none(),
        }
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Time>, D::Error> {
        Option::<String>::deserialize(d)?
            .map(|s| time::parse(&s).map_err(serde::de::Error::custom))
            .transpose()
    }
}

/// What a `job` does: allocate, load inputs, run, promote, send outputs, free.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct JobSpec {
    /// The exec to run (reflow-compatible).
    pub config: ExecConfig,
    /// Repository the inputs are loaded from (`file:///...` or `s3://bucket/prefix`); the
    /// agent's own repository when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub inputs_from: Option<String>,
    /// Repository the outputs are sent to; the agent's own repository when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub outputs_to: Option<String>,
    /// Resources to allocate; the exec's own resources when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resources: Option<crate::resources::Resources>,
    /// The longest the job may take, seconds, counted from when the agent accepted it: past
    /// it the exec is stopped and the job fails with `Timeout`. A job asking for more than the
    /// agent's `queue.max_job_secs` is rejected; absent, that bound applies.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout_secs: Option<u64>,
}

/// A decoded, validated command.
#[derive(Debug, Clone, PartialEq)]
pub enum Command {
    /// List the pool's offers.
    Offers,
    /// Create an alloc.
    AllocNew {
        /// The request.
        meta: AllocMeta,
    },
    /// Keep an alloc alive.
    AllocKeepalive {
        /// Alloc id.
        alloc: String,
        /// Requested interval, nanoseconds.
        interval_ns: i64,
    },
    /// Free an alloc.
    AllocFree {
        /// Alloc id.
        alloc: String,
    },
    /// Describe an alloc.
    AllocInspect {
        /// Alloc id.
        alloc: String,
    },
    /// Start (or find) an exec.
    ExecPut {
        /// Alloc id.
        alloc: String,
        /// Exec id.
        exec: Digest,
        /// What to run.
        config: ExecConfig,
    },
    /// Describe an exec.
    ExecInspect {
        /// Alloc id.
        alloc: String,
        /// Exec id.
        exec: Digest,
    },
    /// An exec's result.
    ExecResult {
        /// Alloc id.
        alloc: String,
        /// Exec id.
        exec: Digest,
    },
    /// An exec's saved logs.
    ExecLogs {
        /// Alloc id.
        alloc: String,
        /// Exec id.
        exec: Digest,
        /// Include stdout.
        stdout: bool,
        /// Include stderr.
        stderr: bool,
    },
    /// Promote an exec's outputs.
    ExecPromote {
        /// Alloc id.
        alloc: String,
        /// Exec id.
        exec: Digest,
    },
    /// Remove an exec.
    ExecRemove {
        /// Alloc id.
        alloc: String,
        /// Exec id.
        exec: Digest,
    },
    /// Load a fileset into an alloc.
    Load {
        /// Alloc id.
        alloc: String,
        /// Source repository.
        repo_url: String,
        /// What to load.
        fileset: Fileset,
    },
    /// Unload a fileset.
    Unload {
        /// Alloc id.
        alloc: String,
        /// What to unload.
        fileset: Fileset,
    },
    /// Verify a fileset.
    Verify {
        /// Alloc id.
        alloc: String,
        /// What to verify.
        fileset: Fileset,
    },
    /// A whole job.
    Job(Box<JobSpec>),
}

impl Command {
    /// The wire name of the command's kind.
    pub fn kind(&self) -> &'static str {
        match self {
            Command::Offers => "offers",
            Command::AllocNew { .. } => "alloc.new",
            Command::AllocKeepalive { .. } => "alloc.keepalive",
            Command::AllocFree { .. } => "alloc.free",
            Command::AllocInspect { .. } => "alloc.inspect",
            Command::ExecPut { .. } => "exec.put",
            Command::ExecInspect { .. } => "exec.inspect",
            Command::ExecResult { .. } => "exec.result",
            Command::ExecLogs { .. } => "exec.logs",
            Command::ExecPromote { .. } => "exec.promote",
            Command::ExecRemove { .. } => "exec.remove",
            Command::Load { .. } => "load",
            Command::Unload { .. } => "unload",
            Command::Verify { .. } => "verify",
            Command::Job(_) => "job",
        }
    }
}

/// A decoded command with its envelope fields.
#[derive(Debug, Clone, PartialEq)]
pub struct Request {
    /// The idempotency key.
    pub id: String,
    /// Reply destination, if given.
    pub reply_to: Option<String>,
    /// Correlation id, if given.
    pub correlation_id: Option<String>,
    /// When the producer sent it, if given.
    pub time: Option<Time>,
    /// The command.
    pub command: Command,
}

fn valid_message_id(id: &str) -> bool {
    (1..=MAX_ID_LEN).contains(&id.len())
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"._:-".contains(&b))
}

fn valid_alloc(id: &str) -> bool {
    id.len() == 16
        && id
            .bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct AllocNewBody {
    meta: AllocMeta,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct KeepaliveBody {
    interval_ns: i64,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct PutBody {
    config: ExecConfig,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct LogsBody {
    #[serde(default = "yes")]
    stdout: bool,
    #[serde(default = "yes")]
    stderr: bool,
}

fn yes() -> bool {
    true
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct LoadBody {
    repo_url: String,
    fileset: Fileset,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct FilesetBody {
    fileset: Fileset,
}

/// Decodes and validates a command; see the module docs.
///
/// # Errors
/// A [`ProtocolError`] naming the first problem.
pub fn decode_command(bytes: &[u8]) -> Result<Request, ProtocolError> {
    if bytes.len() > MAX_COMMAND_BYTES {
        return Err(ProtocolError::TooLarge { size: bytes.len() });
    }
    let env: Envelope = serde_json::from_slice(bytes).map_err(ProtocolError::Json)?;
    if env.v != PROTOCOL_VERSION {
        return Err(ProtocolError::Version { found: env.v });
    }
    if !valid_message_id(&env.id) {
        return Err(ProtocolError::BadId);
    }
    if let Some(r) = &env.reply_to
        && !valid_reply_to(r)
    {
        return Err(ProtocolError::BadReplyTo);
    }
    let kind = KINDS
        .iter()
        .copied()
        .find(|k| *k == env.kind)
        .ok_or_else(|| ProtocolError::UnknownKind {
            kind: env.kind.chars().take(64).collect(),
        })?;
    let alloc = || -> Result<String, ProtocolError> {
        let a = env.alloc.clone().ok_or(ProtocolError::Missing {
            kind,
            field: "alloc",
        })?;
        if valid_alloc(&a) {
            Ok(a)
        } else {
            Err(ProtocolError::BadAlloc)
        }
    };
    let exec = || -> Result<Digest, ProtocolError> {
        env.exec
            .filter(|d| !d.is_zero())
            .ok_or(ProtocolError::Missing {
                kind,
                field: "exec",
            })
    };
    fn body<T: serde::de::DeserializeOwned>(
        kind: &'static str,
        v: &serde_json::Value,
    ) -> Result<T, ProtocolError> {
        serde_json::from_value(v.clone()).map_err(|source| ProtocolError::Body { kind, source })
    }
    let fileset_ok = |fs: &Fileset| {
        fs.validate_paths()
            .map_err(|source| ProtocolError::Fileset { kind, source })
    };
    let config_ok = |c: &ExecConfig| {
        c.validate()
            .map_err(|source| ProtocolError::Config { kind, source })
    };
    let command = match kind {
        "offers" => Command::Offers,
        "alloc.new" => {
            let b: AllocNewBody = body(kind, &env.body)?;
            b.meta.want.validate().map_err(|e| ProtocolError::Config {
                kind,
                source: e.into(),
            })?;
            Command::AllocNew { meta: b.meta }
        }
        "alloc.keepalive" => {
            let b: KeepaliveBody = body(kind, &env.body)?;
            if b.interval_ns <= 0 {
                return Err(ProtocolError::Range {
                    kind,
                    what: "interval_ns must be positive",
                });
            }
            Command::AllocKeepalive {
                alloc: alloc()?,
                interval_ns: b.interval_ns,
            }
        }
        "alloc.free" => Command::AllocFree { alloc: alloc()? },
        "alloc.inspect" => Command::AllocInspect { alloc: alloc()? },
        "exec.put" => {
            let b: PutBody = body(kind, &env.body)?;
            config_ok(&b.config)?;
            Command::ExecPut {
                alloc: alloc()?,
                exec: exec()?,
                config: b.config,
            }
        }
        "exec.inspect" => Command::ExecInspect {
            alloc: alloc()?,
            exec: exec()?,
        },
        "exec.result" => Command::ExecResult {
            alloc: alloc()?,
            exec: exec()?,
        },
        "exec.logs" => {
            let b: LogsBody = if env.body.is_null() {
                LogsBody {
                    stdout: true,
                    stderr: true,
                }
            } else {
                body(kind, &env.body)?
            };
            Command::ExecLogs {
                alloc: alloc()?,
                exec: exec()?,
                stdout: b.stdout,
                stderr: b.stderr,
            }
        }
        "exec.promote" => Command::ExecPromote {
            alloc: alloc()?,
            exec: exec()?,
        },
        "exec.remove" => Command::ExecRemove {
            alloc: alloc()?,
            exec: exec()?,
        },
        "load" => {
            let b: LoadBody = body(kind, &env.body)?;
            fileset_ok(&b.fileset)?;
            Command::Load {
                alloc: alloc()?,
                repo_url: b.repo_url,
                fileset: b.fileset,
            }
        }
        "unload" | "verify" => {
            let b: FilesetBody = body(kind, &env.body)?;
            fileset_ok(&b.fileset)?;
            if kind == "unload" {
                Command::Unload {
                    alloc: alloc()?,
                    fileset: b.fileset,
                }
            } else {
                Command::Verify {
                    alloc: alloc()?,
                    fileset: b.fileset,
                }
            }
        }
        "job" => {
            let b: JobSpec = body(kind, &env.body)?;
            config_ok(&b.config)?;
            if let Some(r) = &b.resources {
                r.validate().map_err(|e| ProtocolError::Config {
                    kind,
                    source: e.into(),
                })?;
            }
            Command::Job(Box::new(b))
        }
        _ => unreachable!("kind comes from KINDS"),
    };
    Ok(Request {
        id: env.id,
        reply_to: env.reply_to,
        correlation_id: env.correlation_id,
        time: env.time,
        command,
    })
}

/// Every command kind.
pub const KINDS: [&str; 15] = [
    "offers",
    "alloc.new",
    "alloc.keepalive",
    "alloc.free",
    "alloc.inspect",
    "exec.put",
    "exec.inspect",
    "exec.result",
    "exec.logs",
    "exec.promote",
    "exec.remove",
    "load",
    "unload",
    "verify",
    "job",
];

/// Events an agent publishes.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", content = "body")]
pub enum EventBody {
    /// An exec reached a state (with its manifest's state name and any state-machine error).
    #[serde(rename = "exec.state")]
    ExecState {
        /// `initializing`, `created`, `running` or `complete`.
        state: String,
        /// The state machine's error, if it failed.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        error: Option<ReflowError>,
        /// The exec's manifest at this state (Reflow-compatible JSON).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        manifest: Option<Box<crate::manifest::Manifest>>,
    },
    /// An exec completed: its reflow-compatible result.
    #[serde(rename = "exec.completed")]
    ExecCompleted {
        /// The result.
        result: ExecResult,
        /// The repository holding the result's files (a job's `outputs_to`).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        repository: Option<String>,
        /// True when an identical exec had already completed and its stored result is returned.
        #[serde(default, skip_serializing_if = "std::ops::Not::not")]
        cached: bool,
        /// For an `s3://` repository: each output path's object URL.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        locations: Option<BTreeMap<String, String>>,
    },
    /// An alloc expired.
    #[serde(rename = "alloc.expired")]
    AllocExpired {},
    /// An alloc was freed.
    #[serde(rename = "alloc.freed")]
    AllocFreed {},
    /// Corrupt data was found; the agent is about to stop taking work.
    #[serde(rename = "integrity.error")]
    IntegrityError {
        /// What was found.
        detail: String,
    },
    /// The agent started.
    #[serde(rename = "agent.started")]
    AgentStarted {
        /// Its resources.
        resources: crate::resources::Resources,
    },
    /// Periodic state for autoscalers.
    #[serde(rename = "agent.heartbeat")]
    AgentHeartbeat {
        /// Free resources.
        free: crate::resources::Resources,
        /// Running execs.
        running_execs: u64,
    },
    /// The agent is draining: it takes no new work.
    #[serde(rename = "agent.draining")]
    AgentDraining {},
    /// The agent stopped.
    #[serde(rename = "agent.stopped")]
    AgentStopped {},
    /// A command was rejected.
    #[serde(rename = "command.rejected")]
    CommandRejected {
        /// The command's id, when it could be read.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        command_id: Option<String>,
        /// Why.
        error: ReflowError,
    },
    /// The reply to a request command (offers, inspect, result, logs, ...).
    #[serde(rename = "command.result")]
    CommandResult {
        /// The command's id.
        command_id: String,
        /// The reply.
        #[serde(default)]
        value: serde_json::Value,
        /// The failure, if it failed.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        error: Option<ReflowError>,
    },
}

/// Every event kind, as [`EventBody::kind`] names them.
pub const EVENT_KINDS: &[&str] = &[
    "exec.state",
    "exec.completed",
    "alloc.expired",
    "alloc.freed",
    "integrity.error",
    "agent.started",
    "agent.heartbeat",
    "agent.draining",
    "agent.stopped",
    "command.rejected",
    "command.result",
];

impl EventBody {
    /// The wire name of the event's kind.
    pub fn kind(&self) -> &'static str {
        match self {
            EventBody::ExecState { .. } => "exec.state",
            EventBody::ExecCompleted { .. } => "exec.completed",
            EventBody::AllocExpired {} => "alloc.expired",
            EventBody::AllocFreed {} => "alloc.freed",
            EventBody::IntegrityError { .. } => "integrity.error",
            EventBody::AgentStarted { .. } => "agent.started",
            EventBody::AgentHeartbeat { .. } => "agent.heartbeat",
            EventBody::AgentDraining {} => "agent.draining",
            EventBody::AgentStopped {} => "agent.stopped",
            EventBody::CommandRejected { .. } => "command.rejected",
            EventBody::CommandResult { .. } => "command.result",
        }
    }
}

/// An event: envelope fields plus a typed body.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Event {
    /// Protocol version.
    pub v: u32,
    /// Unique event id (deterministic, so a republished event can be deduplicated).
    pub id: String,
    /// The agent that sent it.
    pub agent: String,
    /// The alloc it concerns.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub alloc: Option<String>,
    /// The exec it concerns.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exec: Option<Digest>,
    /// The correlation id of the command that caused it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub correlation_id: Option<String>,
    /// The id of the command that caused it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub command: Option<String>,
    /// When it happened.
    #[serde(with = "time::go")]
    pub time: Time,
    /// Kind and body.
    #[serde(flatten)]
    pub body: EventBody,
    /// Extra labels.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub labels: BTreeMap<String, String>,
}

/// The longest `reply_to`: an AMQP queue name (a short string) and any SQS queue URL fit.
pub const MAX_REPLY_TO_LEN: usize = 255;

/// A `reply_to` every backend can send to as it is: an AMQP queue name, an SQS queue name or
/// URL. A longer or stranger one would fail every publish of its events, holding up the outbox.
fn valid_reply_to(r: &str) -> bool {
    (1..=MAX_REPLY_TO_LEN).contains(&r.len())
        && r.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"._:/-".contains(&b))
}

/// The infix of an event watch's queue on AMQP, `NS.watch.<id>` (also `reflow-agent submit
/// --wait`'s reply queue), `<id>` being [`CLIENT_QUEUE_ID_LEN`] lowercase hex digits.
pub const WATCH_QUEUE_INFIX: &str = ".watch.";

/// The infix of the Python client's reply queue on AMQP, `NS.reply.<id>`.
pub const REPLY_QUEUE_INFIX: &str = ".reply.";

/// The length of a client queue's random id (8 bytes in hex).
pub const CLIENT_QUEUE_ID_LEN: usize = 16;

/// Whether `reply_to` names a queue of a client's own ([`WATCH_QUEUE_INFIX`],
/// [`REPLY_QUEUE_INFIX`]), which only the client that made it reads. The rejection of a command
/// that failed its signature check goes there too: a copy of an event the result topic carries
/// anyway, in a queue no agent consumes, so an unauthenticated command can neither learn
/// anything from it nor make an agent feed its own queues. Any other `reply_to` of such a
/// command is ignored.
#[must_use]
pub fn is_client_queue(reply_to: &str) -> bool {
    // A queue name, never a URL (an SQS `reply_to` may be one).
    !reply_to.contains(['/', ':'])
        && [WATCH_QUEUE_INFIX, REPLY_QUEUE_INFIX].iter().any(|infix| {
            reply_to
                .len()
                .checked_sub(CLIENT_QUEUE_ID_LEN)
                .and_then(|at| reply_to.split_at_checked(at))
                .is_some_and(|(head, id)| {
                    head.len() > infix.len()
                        && head.ends_with(infix)
                        && id.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
                })
        })
}

/// The event label naming where, besides the result topic, the event goes: the `reply_to` of the
/// command that caused it. On AMQP it is a queue the event is also published to; on SQS a queue
/// (name or URL) the event goes to instead of the results queue.
pub const REPLY_TO_LABEL: &str = "reply_to";

/// A deterministic event id, one per (cause, kind, occurrence): the cause is the command id (or
/// the agent and occasion), the occurrence tells events of one kind and cause apart (the exec
/// state of an `exec.state`, the agent's incarnation of a lifecycle event, a sequence number).
/// The id is stored with the event, so a republished event keeps it and consumers can drop
/// duplicates.
pub fn event_id(cause: &str, kind: &str, occurrence: impl std::fmt::Display) -> String {
    Digest::of(format!("{cause}\0{kind}\0{occurrence}").as_bytes()).hex()[..32].to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn client_queues_are_told_from_other_reply_to_names() {
        let id = "0123456789abcdef";
        for (name, want) in [
            (format!("reflow.watch.{id}"), true),
            (format!("reflow.reply.{id}"), true),
            (format!("a.b.watch.{id}"), true),
            (format!(".watch.{id}"), false),
            (format!("reflow.watch.{id}0"), false),
            ("reflow.watch.0123456789ABCDEF".to_string(), false),
            ("reflow.watch.0123456789abcde".to_string(), false),
            (format!("reflow.commands.{id}"), false),
            ("reflow.commands".to_string(), false),
            ("reflow.agent.pool-1".to_string(), false),
            (format!("https://sqs.example/1/reflow.watch.{id}x"), false),
            (format!("https://sqs.example/1/reflow.watch.{id}"), false),
            (format!("a:b.reply.{id}"), false),
            ("é".repeat(20), false),
            (String::new(), false),
        ] {
            assert_eq!(is_client_queue(&name), want, "{name}");
        }
    }

    const ALLOC: &str = "0123456789abcdef";

    fn env(kind: &str, body: serde_json::Value) -> serde_json::Value {
        serde_json::json!({
            "v": 1, "id": "cmd-1", "kind": kind, "alloc": ALLOC,
            "exec": format!("sha256:{}", "ab".repeat(32)), "time": "2026-11-29T12:00:00Z", "body": body
        })
    }

    fn decode(v: serde_json::Value) -> Result<Request, ProtocolError> {
        decode_command(&serde_json::to_vec(&v).unwrap())
    }

    fn config() -> serde_json::Value {
        serde_json::json!({"Type": "exec", "Image": "img:1", "Cmd": "echo hi > $out", "Args": [], "Resources": {"mem": 1e6}})
    }

    #[test]
    fn every_kind_decodes() {
        let fs = serde_json::json!({"Fileset": {"a": {"ID": format!("sha256:{}", "cd".repeat(32)), "Size": 1}}});
        let cases = vec![
            env("offers", serde_json::json!({})),
            env(
                "alloc.new",
                serde_json::json!({"meta": {"Want": {"mem": 1e9}, "Owner": "p"}}),
            ),
            env(
                "alloc.keepalive",
                serde_json::json!({"interval_ns": 120_000_000_000i64}),
            ),
            env("alloc.free", serde_json::Value::Null),
            env("alloc.inspect", serde_json::Value::Null),
            env("exec.put", serde_json::json!({"config": config()})),
            env("exec.inspect", serde_json::Value::Null),
            env("exec.result", serde_json::Value::Null),
            env("exec.logs", serde_json::json!({"stderr": false})),
            env("exec.promote", serde_json::Value::Null),
            env("exec.remove", serde_json::Value::Null),
            env(
                "load",
                serde_json::json!({"repo_url": "file:///repo", "fileset": fs}),
            ),
            env("unload", serde_json::json!({"fileset": fs})),
            env("verify", serde_json::json!({"fileset": fs})),
            env(
                "job",
                serde_json::json!({"config": config(), "inputs_from": "s3://b/in", "outputs_to": "s3://b/out"}),
            ),
        ];
        let kinds: Vec<&str> = cases
            .into_iter()
            .map(|c| decode(c).unwrap().command.kind())
            .collect();
        assert_eq!(kinds, KINDS.to_vec());
        let logs = decode(env("exec.logs", serde_json::json!({"stderr": false}))).unwrap();
        assert!(matches!(
            logs.command,
            Command::ExecLogs {
                stdout: true,
                stderr: false,
                ..
            }
        ));
    }

    #[test]
    fn rejections_are_typed() {
        let mut no_alloc = env("exec.result", serde_json::Value::Null);
        no_alloc.as_object_mut().unwrap().remove("alloc");
        let mut bad_config = config();
        bad_config["Type"] = "shell".into();
        let mut extra = env("offers", serde_json::json!({}));
        extra["surprise"] = 1.into();
        let cases: Vec<(Vec<u8>, &str)> = vec![
            (vec![b' '; MAX_COMMAND_BYTES + 1], "more than"),
            (b"not json".to_vec(), "not a command envelope"),
            (
                serde_json::to_vec(&extra).unwrap(),
                "not a command envelope",
            ),
            (
                serde_json::to_vec(&serde_json::json!({"v": 2, "id": "x", "kind": "offers"}))
                    .unwrap(),
                "version 2",
            ),
            (
                serde_json::to_vec(&serde_json::json!({"v": 1, "id": "", "kind": "offers"}))
                    .unwrap(),
                "command id",
            ),
            (
                serde_json::to_vec(&serde_json::json!({"v": 1, "id": "a b", "kind": "offers"}))
                    .unwrap(),
                "command id",
            ),
            (
                serde_json::to_vec(&serde_json::json!({"v": 1, "id": "x", "kind": "rm -rf"}))
                    .unwrap(),
                "unknown command kind",
            ),
            (
                serde_json::to_vec(
                    &serde_json::json!({"v": 1, "id": "x", "kind": "offers", "reply_to": "a b"}),
                )
                .unwrap(),
                "reply_to must be",
            ),
            (
                serde_json::to_vec(
                    &serde_json::json!({"v": 1, "id": "x", "kind": "offers", "reply_to": "q".repeat(256)}),
                )
                .unwrap(),
                "reply_to must be",
            ),
            (
                serde_json::to_vec(&no_alloc).unwrap(),
                "exec.result needs alloc",
            ),
            (
                serde_json::to_vec(&env("exec.put", serde_json::json!({"config": bad_config})))
                    .unwrap(),
                "exec.put config",
            ),
            (
                serde_json::to_vec(&env("exec.put", serde_json::json!({}))).unwrap(),
                "exec.put body",
            ),
            (
                serde_json::to_vec(&env(
                    "alloc.keepalive",
                    serde_json::json!({"interval_ns": -1}),
                ))
                .unwrap(),
                "positive",
            ),
            (
                serde_json::to_vec(&env(
                    "unload",
                    serde_json::json!({"fileset": {"Fileset": {"../x": {"Size": 1}}}}),
                ))
                .unwrap(),
                "unload fileset",
            ),
        ];
        for (bytes, want) in cases {
            let e = decode_command(&bytes).unwrap_err();
            assert!(e.to_string().contains(want), "{e} !~ {want}");
            assert_eq!(e.kind(), Kind::Invalid);
        }
        let mut bad_alloc = env("alloc.free", serde_json::Value::Null);
        bad_alloc["alloc"] = "../../etc".into();
        assert!(matches!(decode(bad_alloc), Err(ProtocolError::BadAlloc)));
    }

    #[test]
    fn events_round_trip_with_kind_and_body() {
        let e = Event {
            v: PROTOCOL_VERSION,
            id: event_id("cmd-1", "exec.completed", 0),
            agent: "agent-1".into(),
            alloc: Some(ALLOC.into()),
            exec: Some(Digest::of(b"x")),
            correlation_id: Some("corr".into()),
            command: Some("cmd-1".into()),
            time: time::parse("2026-11-29T12:00:00Z").unwrap(),
            body: EventBody::ExecCompleted {
                result: ExecResult::default(),
                repository: Some("file:///repo".into()),
                cached: false,
                locations: None,
            },
            labels: BTreeMap::new(),
        };
        let j = serde_json::to_value(&e).unwrap();
        assert_eq!(j["kind"], "exec.completed");
        assert_eq!(e.body.kind(), "exec.completed");
        assert!(j["body"]["result"]["Fileset"].is_object());
        assert_eq!(serde_json::from_value::<Event>(j).unwrap(), e);
        assert_eq!(event_id("a", "b", 1), event_id("a", "b", 1));
        assert_ne!(event_id("a", "b", 1), event_id("a", "b", 2));
    }

    #[test]
    fn every_error_on_the_wire_is_a_reflow_error_node() {
        // What every backend carries: these bytes go to spool files, AMQP bodies and SQS messages.
        let err = ReflowError::new(Kind::DockerExec, "exec", "exited with code 1")
            .with_arg(Digest::of(b"x"));
        let want = serde_json::json!({
            "Op": "exec", "Arg": [Digest::of(b"x").to_string()], "Kind": "DockerExec",
            "Cause": {"Op": "", "Arg": null, "Kind": "", "Error": "exited with code 1"},
            "Error": ""
        });
        let bodies = [
            (
                EventBody::ExecState {
                    state: "complete".into(),
                    error: Some(err.clone()),
                    manifest: None,
                },
                "/body/error",
            ),
            (
                EventBody::ExecCompleted {
                    result: ExecResult {
                        err: Some(err.clone()),
                        ..ExecResult::default()
                    },
                    repository: None,
                    cached: false,
                    locations: None,
                },
                "/body/result/Err",
            ),
            (
                EventBody::CommandRejected {
                    command_id: Some("c".into()),
                    error: err.clone(),
                },
                "/body/error",
            ),
            (
                EventBody::CommandResult {
                    command_id: "c".into(),
                    value: serde_json::Value::Null,
                    error: Some(err.clone()),
                },
                "/body/error",
            ),
        ];
        for (body, at) in bodies {
            let kind = body.kind();
            let e = Event {
                v: PROTOCOL_VERSION,
                id: event_id("c", kind, 0),
                agent: "a".into(),
                alloc: None,
                exec: None,
                correlation_id: None,
                command: Some("c".into()),
                time: time::parse("2026-11-29T12:00:00Z").unwrap(),
                body,
                labels: BTreeMap::new(),
            };
            let bytes = serde_json::to_vec(&e).unwrap();
            let j: serde_json::Value = serde_json::from_slice(&bytes).unwrap();
            assert_eq!(j.pointer(at), Some(&want), "{kind}");
            assert_eq!(
                serde_json::from_slice::<Event>(&bytes).unwrap(),
                e,
                "{kind}"
            );
        }
    }
}
