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

    /// Reflow's human text for the kind, used when rendering errors.
    pub fn text(self) -> &'static str {
        match self {
            Kind::Other => "unknown error",
            Kind::Canceled => "operation was canceled",
            Kind::Timeout => "operation timed out",
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
            Kind::Invalid => "invalid argument",
            Kind::Net => "network error",
            Kind::Precondition => "precondition failed",
            Kind::Oom => "OOM error",
            Kind::Module => "module error",
            Kind::DockerExec => "docker exec",
        }
    }
}

impl fmt::Display for Kind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.text())
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
/// JSON (compatible with Reflow's `errors.Error`):
/// `{"Op": "...", "Arg": ["..."], "Kind": "NotExist", "Cause": {...}}` or with `"Error": "text"`
/// for a plain-text cause.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "PascalCase")]
pub struct ReflowError {
    /// The operation that failed, e.g. `exec`.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub op: String,
    /// Arguments of the operation, e.g. the exec digest.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub arg: Vec<String>,
    /// The kind.
    #[serde(default)]
    pub kind: Kind,
    /// A nested Reflow error, when the cause is itself one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cause: Option<Box<ReflowError>>,
    /// A plain-text cause.
    #[serde(default, rename = "Error", skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
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

    /// Wraps `cause` as the cause of a new error for `op`. The new error takes the cause's kind.
    pub fn wrap(op: impl Into<String>, cause: ReflowError) -> Self {
        ReflowError {
            op: op.into(),
            arg: Vec::new(),
            kind: cause.kind,
            cause: Some(Box::new(cause)),
            message: None,
        }
    }

    /// The single conversion from a module error to the wire form: the kind comes from
    /// [`Classify`], the text from `Display` (the source chain is appended).
    pub fn from_classified<E>(op: impl Into<String>, err: &E) -> Self
    where
        E: Classify + std::error::Error + ?Sized,
    {
        let mut text = err.to_string();
        let mut source = err.source();
        while let Some(s) = source {
            text.push_str(": ");
            text.push_str(&s.to_string());
            source = s.source();
        }
        ReflowError::new(err.kind(), op, text)
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

impl fmt::Display for ReflowError {
    /// Renders as Reflow does: `op arg1 arg2: kind text: cause`, nested errors separated by
    /// `":\n\t"`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut parts: Vec<String> = Vec::new();
        if !self.op.is_empty() {
            let mut head = self.op.clone();
            for a in &self.arg {
                head.push(' ');
                head.push_str(a);
            }
            parts.push(head);
        }
        if self.kind != Kind::Other {
            parts.push(self.kind.text().to_string());
        }
        if let Some(m) = &self.message {
            parts.push(m.clone());
        }
        f.write_str(&parts.join(": "))?;
        if let Some(c) = &self.cause {
            if !parts.is_empty() {
                f.write_str(":\n\t")?;
            }
            write!(f, "{c}")?;
        }
        Ok(())
    }
}

impl std::error::Error for ReflowError {}

#[cfg(test)]
mod tests {
    use super::*;

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
            "load: resource does not exist:\n\tstat: resource does not exist: no such object"
        );
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
        assert_eq!(j["Cause"]["Error"], "exit code 75");
        assert_eq!(j["Cause"]["Arg"][0], "x");
        let back: ReflowError = serde_json::from_value(j).unwrap();
        assert_eq!(back, e);
        assert!(back.is(Kind::Temporary));
    }

    #[test]
    fn is_looks_through_other_wrappers() {
        let mut outer = ReflowError::wrap("a", ReflowError::new(Kind::Integrity, "b", "c"));
        outer.kind = Kind::Other;
        assert!(outer.is(Kind::Integrity));
        assert!(!outer.is(Kind::NotExist));
    }
}
