//! The Reflow error model: [`Kind`], the one retry classifier, and [`ReflowError`], the JSON form
//! that crosses the queue.
//!
//! Module errors (`RepoError`, `PersistError`, ...) are thiserror enums with context fields. Each
//! implements [`Classify`], which names its [`Kind`]; whether an error is retryable is decided by
//! [`Kind::is_retryable`] and nowhere else. The conversion to the wire form is
//! [`ReflowError::from_classified`], the only place where a module error becomes JSON.
//!
//! This module owns no I/O.

use std::fmt;

use serde::{Deserialize, Serialize};

/// The kind of an error, with Reflow's names and ordinal order (JSON carries the name).
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize, Default,
)]
pub enum Kind {
    /// No particular kind.
    #[default]
    Other,
    /// The operation was canceled.
    Canceled,
    /// The operation timed out.
    Timeout,
    /// A temporary failure; retrying may succeed (exec exit code 75 maps here).
    Temporary,
    /// The named resource does not exist.
    NotExist,
    /// Access was denied.
    NotAllowed,
    /// The operation is not supported.
    NotSupported,
    /// Retries were exhausted.
    TooManyTries,
    /// Data does not match its digest or size.
    Integrity,
    /// Not enough resources.
    ResourcesExhausted,
    /// An evaluation error (scheduler side).
    Eval,
    /// A service is unavailable.
    Unavailable,
    /// An unrecoverable error.
    Fatal,
    /// The input is invalid.
    Invalid,
    /// A network error.
    Net,
    /// A precondition failed.
    Precondition,
    /// The exec was killed by the out-of-memory killer.
    #[serde(rename = "OOM")]
    Oom,
    /// A module error (scheduler side).
    Module,
    /// The exec's container exited unsuccessfully.
    DockerExec,
}

impl Kind {
    /// All kinds, in ordinal order.
    pub const ALL: [Kind; 19] = [
        Kind::Other,
        Kind::Canceled,
        Kind::Timeout,
        Kind::Temporary,
        Kind::NotExist,
        Kind::NotAllowed,
        Kind::NotSupported,
        Kind::TooManyTries,
        Kind::Integrity,
        Kind::ResourcesExhausted,
        Kind::Eval,
        Kind::Unavailable,
        Kind::Fatal,
        Kind::Invalid,
        Kind::Net,
        Kind::Precondition,
        Kind::Oom,
        Kind::Module,
        Kind::DockerExec,
    ];

    /// The one retry classifier: true when the same command may succeed if tried again later
    /// (requeue), false when it is permanent (reject, publish the failure, dead-letter).
    ///
    /// Retryable: `Timeout`, `Temporary`, `TooManyTries`, `Unavailable` (Reflow's *Transient* set)
    /// plus `Net` and `ResourcesExhausted`, which on a queue worker mean "this agent, now" rather
    /// than "this command". Everything else is permanent, including `OOM` (the same command on the
    /// same limits fails again; the producer decides whether to ask for more memory) and
    /// `Integrity` (reported separately by the `integrity.error` signal).
    pub fn is_retryable(self) -> bool {
        matches!(
            self,
            Kind::Timeout
                | Kind::Temporary
                | Kind::TooManyTries
                | Kind::Unavailable
                | Kind::Net
                | Kind::ResourcesExhausted
        )
    }

    /// The kind's name in JSON (Go's `kind2string`), e.g. `NotExist` or `OOM`.
    pub fn name(self) -> &'static str {
        match self {
            Kind::Other => "Other",
            Kind::Canceled => "Canceled",
            Kind::Timeout => "Timeout",
            Kind::Temporary => "Temporary",
            Kind::NotExist => "NotExist",
            Kind::NotAllowed => "NotAllowed",
            Kind::NotSupported => "NotSupported",
            Kind::TooManyTries => "TooManyTries",
            Kind::Integrity => "Integrity",
            Kind::ResourcesExhausted => "ResourcesExhausted",
            Kind::Eval => "Eval",
            Kind::Unavailable => "Unavailable",
            Kind::Fatal => "Fatal",
            Kind::Invalid => "Invalid",
            Kind::Net => "Net",
            Kind::Precondition => "Precondition",
            Kind::Oom => "OOM",
            Kind::Module => "Module",
            Kind::DockerExec => "DockerExec",
        }
    }

    /// The kind named `name` (see [`Kind::name`]); `None` for an unknown name.
    pub fn from_name(name: &str) -> Option<Kind> {
        Kind::ALL.into_iter().find(|k| k.name() == name)
    }

    /// Reflow's human text for the kind (Go's `Kind.String()`), used when rendering errors.
    pub fn text(self) -> &'static str {
        match self {
            Kind::Other => "unknown error",
            Kind::Canceled => "canceled",
            Kind::Timeout => "timeout",
            Kind::Temporary => "temporary",
            Kind::NotExist => "resource does not exist",
            Kind::NotAllowed => "access denied",
            Kind::NotSupported => "operation not supported",
            Kind::TooManyTries => "too many tries",
            Kind::Integrity => "integrity error",
            Kind::ResourcesExhausted => "resources exhausted",
            Kind::Eval => "evaluation error",
            Kind::Unavailable => "unavailable",
            Kind::Fatal => "fatal",
            Kind::Invalid => "invalid",
            Kind::Net => "network error",
            Kind::Precondition => "precondition was not met",
            Kind::Oom => "OOM error",
            Kind::Module => "invalid module",
            Kind::DockerExec => "docker exec",
        }
    }
}

impl fmt::Display for Kind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.text())
    }
}

/// The kind of an I/O error, the one place that decides it: a missing file is
/// [`Kind::NotExist`]; a full disk or an exhausted quota is [`Kind::ResourcesExhausted`] (it
/// clears when space is freed, so it is retryable, and it is never the work's own fault);
/// anything else is [`Kind::Unavailable`].
pub fn io_kind(e: &std::io::Error) -> Kind {
    match e.kind() {
        std::io::ErrorKind::NotFound => Kind::NotExist,
        std::io::ErrorKind::StorageFull | std::io::ErrorKind::QuotaExceeded => {
            Kind::ResourcesExhausted
        }
        _ => Kind::Unavailable,
    }
}

/// An error with its causes, `top: cause: cause`, for logs: module errors name what failed and
/// leave the why to their source, which a plain `%e` field would drop.
#[derive(Debug)]
pub struct Chain<'a, E: ?Sized>(&'a E);

/// See [`Chain`].
pub fn chain<E: std::error::Error + ?Sized>(e: &E) -> Chain<'_, E> {
    Chain(e)
}

impl<E: std::error::Error + ?Sized> fmt::Display for Chain<'_, E> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)?;
        let mut source = self.0.source();
        while let Some(s) = source {
            write!(f, ": {s}")?;
            source = s.source();
        }
        Ok(())
    }
}

/// Implemented by every module error: which [`Kind`] it is.
pub trait Classify {
    /// The kind of this error.
    fn kind(&self) -> Kind;

    /// Whether the operation may succeed if retried; see [`Kind::is_retryable`].
    fn is_retryable(&self) -> bool {
        self.kind().is_retryable()
    }
}

/// A Reflow error as carried in results, manifests and queue events.
///
/// The model follows Go's `errors.Error`: an operation with arguments, a kind, and one cause,
/// which is either another Reflow error ([`ReflowError::cause`]) or a plain message
/// ([`ReflowError::message`]). At most one of the two is set.
///
/// JSON is exactly Reflow's (`errors.go`, `jsonError`): every node is
/// `{"Op","Arg","Kind","Cause"?,"Error"}` with `Arg` `null` when empty, `Kind` the kind's name and
/// `"Error": ""`. A plain message is a leaf node under `Cause`:
/// `{"Op":"","Arg":null,"Kind":"","Error":"<text>"}`. Decoding also accepts the shape earlier
/// versions of this agent wrote (the message as a top-level `"Error"` beside the kind), `"Kind": ""`
/// and unknown kind names (both read as `Other`, as Go reads them).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ReflowError {
    /// The operation that failed, e.g. `exec`.
    pub op: String,
    /// Arguments of the operation, e.g. the exec digest.
    pub arg: Vec<String>,
    /// The kind.
    pub kind: Kind,
    /// A nested Reflow error, when the cause is itself one.
    pub cause: Option<Box<ReflowError>>,
    /// A plain-text cause.
    pub message: Option<String>,
}

/// One node of Reflow's error JSON (Go's `jsonError`), in its field order.
#[derive(Serialize, Deserialize)]
struct WireNode {
    #[serde(rename = "Op", default, deserialize_with = "null_string")]
    op: String,
    #[serde(rename = "Arg", default)]
    arg: Option<Vec<String>>,
    #[serde(rename = "Kind", default, deserialize_with = "null_string")]
    kind: String,
    #[serde(rename = "Cause", default, skip_serializing_if = "Option::is_none")]
    cause: Option<Box<WireNode>>,
    #[serde(rename = "Error", default, deserialize_with = "null_string")]
    error: String,
}

fn null_string<'de, D: serde::Deserializer<'de>>(d: D) -> Result<String, D::Error> {
    Ok(Option::<String>::deserialize(d)?.unwrap_or_default())
}

impl WireNode {
    /// A leaf that wraps a plain (non-Reflow) error: only its text.
    fn leaf(text: &str) -> Self {
        WireNode {
            op: String::new(),
            arg: None,
            kind: String::new(),
            cause: None,
            error: text.to_string(),
        }
    }

    fn is_plain_leaf(&self) -> bool {
        !self.error.is_empty()
            && self.op.is_empty()
            && self.arg.as_ref().is_none_or(Vec::is_empty)
            && (self.kind.is_empty() || self.kind == "Other")
            && self.cause.is_none()
    }

    fn from_error(e: &ReflowError) -> Self {
        let cause = match (&e.cause, &e.message) {
            (Some(c), _) => Some(Box::new(WireNode::from_error(c))),
            (None, Some(m)) => Some(Box::new(WireNode::leaf(m))),
            (None, None) => None,
        };
        WireNode {
            op: e.op.clone(),
            arg: (!e.arg.is_empty()).then(|| e.arg.clone()),
            kind: e.kind.name().to_string(),
            cause,
            error: String::new(),
        }
    }

    fn into_error(self) -> ReflowError {
        if self.is_plain_leaf() {
            // Go refuses a bare leaf where an *Error is expected; we read it as a plain error.
            return ReflowError {
                message: Some(self.error),
                ..ReflowError::default()
            };
        }
        let mut e = ReflowError {
            op: self.op,
            arg: self.arg.unwrap_or_default(),
            kind: Kind::from_name(&self.kind).unwrap_or_default(),
            cause: None,
            message: None,
        };
        match self.cause {
            Some(c) if c.is_plain_leaf() => e.message = Some(c.error),
            Some(c) => e.cause = Some(Box::new(c.into_error())),
            None => {}
        }
        if e.message.is_none() && !self.error.is_empty() {
            // The shape earlier agents wrote: the text beside the kind.
            e.message = Some(self.error);
        }
        e
    }
}

impl Serialize for ReflowError {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        WireNode::from_error(self).serialize(s)
    }
}

impl<'de> Deserialize<'de> for ReflowError {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        WireNode::deserialize(d).map(WireNode::into_error)
    }
}

impl ReflowError {
    /// An error of `kind` for operation `op` with a plain-text cause.
    pub fn new(kind: Kind, op: impl Into<String>, message: impl Into<String>) -> Self {
        ReflowError {
            op: op.into(),
            arg: Vec::new(),
            kind,
            cause: None,
            message: Some(message.into()),
        }
    }

    /// Adds an argument (e.g. a digest in text form).
    #[must_use]
    pub fn with_arg(mut self, arg: impl fmt::Display) -> Self {
        self.arg.push(arg.to_string());
        self
    }

    /// Wraps `cause` as the cause of a new error for `op`, as Go's `errors.E(op, cause)` does:
    /// the new error takes the cause's kind and the cause keeps `Other`, so the kind is stated
    /// once; a cause left with neither an op nor a kind is folded into the new error.
    pub fn wrap(op: impl Into<String>, mut cause: ReflowError) -> Self {
        let kind = std::mem::take(&mut cause.kind);
        let mut e = ReflowError {
            op: op.into(),
            arg: Vec::new(),
            kind,
            cause: None,
            message: None,
        };
        if cause.op.is_empty() {
            e.cause = cause.cause;
            e.message = cause.message;
        } else {
            e.cause = Some(Box::new(cause));
        }
        e
    }

    /// The single conversion from a module error to the wire form: the kind comes from
    /// [`Classify`], the text from `Display` (the source chain is appended).
    pub fn from_classified<E>(op: impl Into<String>, err: &E) -> Self
    where
        E: Classify + std::error::Error + ?Sized,
    {
        ReflowError::new(err.kind(), op, chain(err).to_string())
    }

    /// Whether this error is of `kind`, looking through `Other`-kinded wrappers as Reflow's
    /// `errors.Is` does.
    pub fn is(&self, kind: Kind) -> bool {
        if self.kind == kind {
            return true;
        }
        match (&self.kind, &self.cause) {
            (Kind::Other, Some(c)) => c.is(kind),
            _ => false,
        }
    }
}

impl Classify for ReflowError {
    fn kind(&self) -> Kind {
        self.kind
    }
}

impl ReflowError {
    /// Renders as Go's `ErrorSeparator(sep)`: `op arg1 arg2: kind text: cause`, with `sep`
    /// before a nested Reflow error and `": "` before a plain message.
    pub fn render(&self, sep: &str) -> String {
        let mut out = String::new();
        let pad = |out: &mut String, s: &str| {
            if !out.is_empty() {
                out.push_str(s);
            }
        };
        if !self.op.is_empty() {
            out.push_str(&self.op);
            for a in &self.arg {
                out.push(' ');
                out.push_str(a);
            }
        }
        if self.kind != Kind::Other {
            pad(&mut out, ": ");
            out.push_str(self.kind.text());
        }
        if let Some(c) = &self.cause {
            pad(&mut out, sep);
            out.push_str(&c.render(sep));
        } else if let Some(m) = &self.message {
            pad(&mut out, ": ");
            out.push_str(m);
        }
        out
    }

    /// The error on one line (nested errors separated by `": "`), for listings and logs.
    pub fn one_line(&self) -> String {
        self.render(": ")
    }
}

impl fmt::Display for ReflowError {
    /// Renders as Reflow does (Go's `Error()`): nested errors separated by `":\n\t"`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.render(":\n\t"))
    }
}

impl std::error::Error for ReflowError {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn io_errors_have_one_classifier() {
        use std::io::{Error, ErrorKind};
        let table = [
            (ErrorKind::NotFound, Kind::NotExist),
            (ErrorKind::StorageFull, Kind::ResourcesExhausted),
            (ErrorKind::QuotaExceeded, Kind::ResourcesExhausted),
            (ErrorKind::PermissionDenied, Kind::Unavailable),
            (ErrorKind::Other, Kind::Unavailable),
        ];
        for (io, kind) in table {
            assert_eq!(io_kind(&Error::from(io)), kind, "{io:?}");
        }
        // ENOSPC as the kernel reports it.
        assert_eq!(
            io_kind(&Error::from_raw_os_error(28)),
            Kind::ResourcesExhausted
        );
        let p = crate::persist::PersistError::io(
            "write",
            std::path::Path::new("x"),
            Error::from_raw_os_error(28),
        );
        assert_eq!(Classify::kind(&p), Kind::ResourcesExhausted);
        assert!(
            chain(&p)
                .to_string()
                .ends_with("No space left on device (os error 28)"),
            "{}",
            chain(&p)
        );
    }

    #[test]
    fn classifier_table() {
        let retryable: Vec<Kind> = Kind::ALL.into_iter().filter(|k| k.is_retryable()).collect();
        assert_eq!(
            retryable,
            vec![
                Kind::Timeout,
                Kind::Temporary,
                Kind::TooManyTries,
                Kind::ResourcesExhausted,
                Kind::Unavailable,
                Kind::Net
            ]
        );
        for k in [
            Kind::Invalid,
            Kind::NotExist,
            Kind::DockerExec,
            Kind::Oom,
            Kind::Integrity,
        ] {
            assert!(!k.is_retryable(), "{k:?}");
        }
    }

    #[test]
    fn kind_json_names() {
        assert_eq!(serde_json::to_string(&Kind::Oom).unwrap(), "\"OOM\"");
        assert_eq!(
            serde_json::to_string(&Kind::NotExist).unwrap(),
            "\"NotExist\""
        );
        for k in Kind::ALL {
            let s = serde_json::to_string(&k).unwrap();
            assert_eq!(serde_json::from_str::<Kind>(&s).unwrap(), k);
        }
        assert!(serde_json::from_str::<Kind>("\"Bogus\"").is_err());
    }

    #[test]
    fn renders_like_reflow() {
        let e = ReflowError::new(Kind::DockerExec, "exec", "exited with code 1")
            .with_arg("sha256:0000000000000000000000000000000000000000000000000000000000000001");
        assert_eq!(
            e.to_string(),
            "exec sha256:0000000000000000000000000000000000000000000000000000000000000001: docker exec: exited with code 1"
        );
        let w = ReflowError::wrap(
            "load",
            ReflowError::new(Kind::NotExist, "stat", "no such object"),
        );
        assert_eq!(w.kind, Kind::NotExist);
        assert_eq!(
            w.to_string(),
            "load: resource does not exist:\n\tstat: no such object"
        );
        assert_eq!(w.cause.as_ref().unwrap().kind, Kind::Other);
        // A cause with neither op nor kind folds into the wrapper, as Go's errors.E does.
        let folded = ReflowError::wrap("get", ReflowError::new(Kind::Other, "", "boom"));
        assert_eq!(folded.to_string(), "get: boom");
        assert!(folded.cause.is_none());
    }

    #[test]
    fn kind_names_and_texts_are_reflows() {
        for k in Kind::ALL {
            assert_eq!(Kind::from_name(k.name()), Some(k));
            assert_eq!(serde_json::to_value(k).unwrap(), k.name());
        }
        assert_eq!(Kind::from_name("Bogus"), None);
        let texts: Vec<&str> = [
            Kind::Canceled,
            Kind::Timeout,
            Kind::Invalid,
            Kind::Precondition,
        ]
        .into_iter()
        .map(Kind::text)
        .collect();
        assert_eq!(
            texts,
            ["canceled", "timeout", "invalid", "precondition was not met"]
        );
    }

    #[test]
    fn decodes_every_node_shape() {
        // Reflow's: kind on the node, plain text as a leaf cause, Arg null.
        let go: ReflowError = serde_json::from_str(
            r#"{"Op":"exec","Arg":null,"Kind":"DockerExec","Cause":{"Op":"","Arg":null,"Kind":"","Error":"exited with code 1"},"Error":""}"#,
        )
        .unwrap();
        assert_eq!(
            go,
            ReflowError::new(Kind::DockerExec, "exec", "exited with code 1")
        );
        // What earlier agents wrote: the text beside the kind.
        let legacy: ReflowError = serde_json::from_str(
            r#"{"Op":"exec","Kind":"DockerExec","Error":"exited with code 1"}"#,
        )
        .unwrap();
        assert_eq!(legacy, go);
        // A bare leaf, an empty kind, an unknown kind: read as Other, never refused.
        let leaf: ReflowError = serde_json::from_str(r#"{"Error":"boom"}"#).unwrap();
        assert_eq!(
            (leaf.kind, leaf.message.as_deref()),
            (Kind::Other, Some("boom"))
        );
        let unknown: ReflowError = serde_json::from_str(r#"{"Op":"x","Kind":"Bogus"}"#).unwrap();
        assert_eq!(unknown.kind, Kind::Other);
        assert!(serde_json::from_str::<ReflowError>(r#"{"Op":5}"#).is_err());
    }

    #[test]
    fn json_round_trip_and_shape() {
        let e = ReflowError::wrap(
            "put",
            ReflowError::new(Kind::Temporary, "exec", "exit code 75").with_arg("x"),
        );
        let j = serde_json::to_value(&e).unwrap();
        assert_eq!(j["Op"], "put");
        assert_eq!(j["Kind"], "Temporary");
        assert_eq!(j["Error"], "");
        assert_eq!(j["Arg"], serde_json::Value::Null);
        assert_eq!(j["Cause"]["Op"], "exec");
        assert_eq!(j["Cause"]["Kind"], "Other");
        assert_eq!(j["Cause"]["Arg"][0], "x");
        assert_eq!(j["Cause"]["Cause"]["Error"], "exit code 75");
        assert_eq!(j["Cause"]["Cause"]["Kind"], "");
        let back: ReflowError = serde_json::from_value(j).unwrap();
        assert_eq!(back, e);
        assert!(back.is(Kind::Temporary));
    }

    #[test]
    fn is_looks_through_other_wrappers() {
        let outer = ReflowError {
            op: "a".into(),
            cause: Some(Box::new(ReflowError::new(Kind::Integrity, "b", "c"))),
            ..ReflowError::default()
        };
        assert!(outer.is(Kind::Integrity));
        assert!(!outer.is(Kind::NotExist));
    }
}
