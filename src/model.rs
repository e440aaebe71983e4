//! Reflow-compatible exec vocabulary: [`ExecConfig`] and [`Arg`] (what a producer asks to run),
//! [`ExecResult`] (what came out), and the inspect structures. JSON field names follow Reflow's Go
//! structs, so a Reflow user can read and write them.
//!
//! [`ExecConfig::validate`] is the gate for configs that arrive from a queue: it checks everything
//! that can be checked without I/O and returns a typed error.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use thiserror::Error;

use crate::digest::Digest;
use crate::error::{Classify, Kind, ReflowError};
use crate::fileset::{Fileset, FilesetError, null_default};
use crate::profile::{Gauges, Profile};
use crate::resources::{Resources, ResourcesError};
use crate::time::{self, Time};

/// Exec type: a container run.
pub const TYPE_EXEC: &str = "exec";
/// Exec type: download from a URL into the repository.
pub const TYPE_INTERN: &str = "intern";
/// Exec type: upload a fileset to a URL.
pub const TYPE_EXTERN: &str = "extern";
/// Longest accepted command template, in bytes.
pub const MAX_CMD_LEN: usize = 256 * 1024;
/// Most arguments accepted in one exec.
pub const MAX_ARGS: usize = 4096;

/// One argument of an exec: an input fileset or an output placeholder.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct Arg {
    /// Whether this is an output placeholder.
    #[serde(rename = "Out", default)]
    pub out: bool,
    /// The input value (for inputs).
    #[serde(rename = "Fileset", default, skip_serializing_if = "Option::is_none")]
    pub fileset: Option<Fileset>,
    /// The output index (for outputs).
    #[serde(rename = "Index", default)]
    pub index: usize,
}

impl Arg {
    /// An input argument.
    pub fn input(fs: Fileset) -> Self {
        Arg {
            out: false,
            fileset: Some(fs),
            index: 0,
        }
    }

    /// An output placeholder with `index`.
    pub fn output(index: usize) -> Self {
        Arg {
            out: true,
            fileset: None,
            index,
        }
    }
}

/// What to run: Reflow's `ExecConfig`.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
pub struct ExecConfig {
    /// `exec`, `intern` or `extern`.
    #[serde(rename = "Type", default)]
    pub kind: String,
    /// A human label.
    #[serde(rename = "Ident", default)]
    pub ident: String,
    /// Source (intern) or target (extern) URL.
    #[serde(rename = "URL", default)]
    pub url: String,
    /// The Docker image used.
    #[serde(rename = "Image", default)]
    pub image: String,
    /// The image as the user wrote it.
    #[serde(rename = "OriginalImage", default)]
    pub original_image: String,
    /// printf-style command template with one `%s` per argument.
    #[serde(rename = "Cmd", default)]
    pub cmd: String,
    /// Arguments.
    #[serde(rename = "Args", default, deserialize_with = "null_default")]
    pub args: Vec<Arg>,
    /// Resources requested.
    #[serde(rename = "Resources", default, deserialize_with = "null_default")]
    pub resources: Resources,
    /// Pass the agent's AWS credentials into the container (if the agent allows it).
    #[serde(rename = "NeedAWSCreds", default)]
    pub need_aws_creds: bool,
    /// Mount the Docker socket into the container (if the agent allows it).
    #[serde(rename = "NeedDockerAccess", default)]
    pub need_docker_access: bool,
    /// Per output index: whether the output is a directory. Absent: one output at `$out`.
    #[serde(
        rename = "OutputIsDir",
        default,
        skip_serializing_if = "Vec::is_empty",
        deserialize_with = "null_default"
    )]
    pub output_is_dir: Vec<bool>,
}

/// Why an exec config was rejected.
#[derive(Debug, Error)]
pub enum ConfigError {
    /// `Type` is not exec, intern or extern.
    #[error("unknown exec type {kind:?} (want exec, intern or extern)")]
    UnknownType {
        /// The type given (truncated).
        kind: String,
    },
    /// A docker exec without an image.
    #[error("exec has no image")]
    NoImage,
    /// An intern/extern without a URL.
    #[error("{kind} has no URL")]
    NoUrl {
        /// intern or extern.
        kind: &'static str,
    },
    /// The command template is too long.
    #[error("command is {len} bytes, more than {MAX_CMD_LEN}")]
    CmdTooLong {
        /// Its length.
        len: usize,
    },
    /// Too many arguments.
    #[error("{n} arguments, more than {MAX_ARGS}")]
    TooManyArgs {
        /// How many.
        n: usize,
    },
    /// An argument is neither a proper input nor a proper output.
    #[error("argument {position}: {reason}")]
    BadArg {
        /// Position in `Args`.
        position: usize,
        /// What is wrong.
        reason: &'static str,
    },
    /// Output indices are not exactly 0..n.
    #[error("output indices must be 0..{n} without gaps or repeats")]
    OutputIndices {
        /// Number of outputs.
        n: usize,
    },
    /// `OutputIsDir` does not have one entry per output.
    #[error("OutputIsDir has {got} entries for {want} outputs")]
    OutputIsDirLen {
        /// Entries given.
        got: usize,
        /// Outputs.
        want: usize,
    },
    /// An extern does not have exactly one input argument.
    #[error("extern takes exactly one argument, got {n}")]
    ExternArgs {
        /// Arguments given.
        n: usize,
    },
    /// An input fileset is malformed.
    #[error("argument {position}")]
    Fileset {
        /// Position in `Args`.
        position: usize,
        /// The fileset error.
        #[source]
        source: FilesetError,
    },
    /// The resources are malformed.
    #[error("resources")]
    Resources(#[from] ResourcesError),
}

impl Classify for ConfigError {
    fn kind(&self) -> Kind {
        Kind::Invalid
    }
}

impl ExecConfig {
    /// Number of output placeholders.
    pub fn outputs(&self) -> usize {
        self.args.iter().filter(|a| a.out).count()
    }

    /// Checks a config from outside; see the module docs.
    ///
    /// # Errors
    /// The first problem found, as a [`ConfigError`] (kind `Invalid`).
    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.args.len() > MAX_ARGS {
            return Err(ConfigError::TooManyArgs { n: self.args.len() });
        }
        self.resources.validate()?;
        for (position, a) in self.args.iter().enumerate() {
            if let Some(fs) = &a.fileset {
                if a.out {
                    return Err(ConfigError::BadArg {
                        position,
                        reason: "an output must not carry a fileset",
                    });
                }
                fs.validate_paths()
                    .map_err(|source| ConfigError::Fileset { position, source })?;
            } else if !a.out {
                return Err(ConfigError::BadArg {
                    position,
                    reason: "an input must carry a fileset",
                });
            }
        }
        match self.kind.as_str() {
            TYPE_EXEC => {
                if self.image.trim().is_empty() {
                    return Err(ConfigError::NoImage);
                }
                if self.cmd.len() > MAX_CMD_LEN {
                    return Err(ConfigError::CmdTooLong {
                        len: self.cmd.len(),
                    });
                }
                let n = self.outputs();
                let mut seen = vec![false; n];
                for a in self.args.iter().filter(|a| a.out) {
                    match seen.get_mut(a.index) {
                        Some(s) if !*s => *s = true,
                        _ => return Err(ConfigError::OutputIndices { n }),
                    }
                }
                if !self.output_is_dir.is_empty() && self.output_is_dir.len() != n {
                    return Err(ConfigError::OutputIsDirLen {
                        got: self.output_is_dir.len(),
                        want: n,
                    });
                }
            }
            TYPE_INTERN | TYPE_EXTERN => {
                let kind = if self.kind == TYPE_INTERN {
                    TYPE_INTERN
                } else {
                    TYPE_EXTERN
                };
                if self.url.is_empty() {
                    return Err(ConfigError::NoUrl { kind });
                }
                if kind == TYPE_EXTERN && (self.args.len() != 1 || self.args[0].out) {
                    return Err(ConfigError::ExternArgs { n: self.args.len() });
                }
            }
            other => {
                return Err(ConfigError::UnknownType {
                    kind: other.chars().take(40).collect(),
                });
            }
        }
        Ok(())
    }
}

/// The outcome of a completed exec: its output fileset, and an error when the exec itself failed
/// (non-zero exit, OOM, ...). This is distinct from the state machine failing.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
pub struct ExecResult {
    /// The outputs.
    #[serde(rename = "Fileset", default)]
    pub fileset: Fileset,
    /// Why the exec failed, if it did.
    #[serde(rename = "Err", default, skip_serializing_if = "Option::is_none")]
    pub err: Option<ReflowError>,
}

/// A reference to an object in a repository.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct RepoObjectRef {
    /// The repository URL, empty when none. In JSON it is Go's `url.URL` struct, or `null`, as
    /// Reflow writes it (see [`gourl`]); a plain string is also read.
    #[serde(rename = "RepoURL", default, with = "gourl")]
    pub repo_url: String,
    /// The object's digest.
    #[serde(rename = "Digest", default)]
    pub digest: Digest,
}

/// Live or stored description of an exec: Reflow's `ExecInspect`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ExecInspect {
    /// When the exec was created.
    #[serde(rename = "Created", with = "time::go", default = "time::zero")]
    pub created: Time,
    /// Its config.
    #[serde(rename = "Config", default)]
    pub config: ExecConfig,
    /// `initializing`, `created`, `running`, `complete` or `zombie`.
    #[serde(rename = "State", default)]
    pub state: String,
    /// Human-readable status.
    #[serde(rename = "Status", default)]
    pub status: String,
    /// The state machine's error, if it failed.
    #[serde(rename = "Error", default, skip_serializing_if = "Option::is_none")]
    pub error: Option<ReflowError>,
    /// Resource profile (set at completion).
    #[serde(rename = "Profile", default, deserialize_with = "null_default")]
    pub profile: Profile,
    /// Latest gauges.
    #[serde(rename = "Gauges", default, deserialize_with = "null_default")]
    pub gauges: Gauges,
    /// Process command lines while running.
    #[serde(rename = "Commands", default, deserialize_with = "null_default")]
    pub commands: Vec<String>,
    /// Docker's container inspect JSON.
    #[serde(rename = "Docker", default)]
    pub docker: serde_json::Value,
    /// The exec's own error (`Result.Err`).
    #[serde(rename = "ExecError", default, skip_serializing_if = "Option::is_none")]
    pub exec_error: Option<ReflowError>,
}

/// Summary of a completed exec saved to a repository: Reflow's `ExecRunInfo`.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
pub struct RunInfo {
    /// Container run time in nanoseconds (FinishedAt - StartedAt, at least 0).
    #[serde(rename = "Runtime", default)]
    pub runtime_ns: i64,
    /// Resource profile.
    #[serde(rename = "Profile", default, deserialize_with = "null_default")]
    pub profile: Profile,
    /// Resources the exec was configured with.
    #[serde(rename = "Resources", default, deserialize_with = "null_default")]
    pub resources: Resources,
    /// Where the inspect JSON was saved.
    #[serde(rename = "InspectDigest", default)]
    pub inspect_digest: RepoObjectRef,
    /// Where stdout was saved.
    #[serde(rename = "Stdout", default)]
    pub stdout: RepoObjectRef,
    /// Where stderr was saved.
    #[serde(rename = "Stderr", default)]
    pub stderr: RepoObjectRef,
}

/// Reply to an inspect: at most one of the two is set.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
pub struct InspectResponse {
    /// Live inspect (no repository given).
    #[serde(rename = "Inspect", default, skip_serializing_if = "Option::is_none")]
    pub inspect: Option<Box<ExecInspect>>,
    /// Run info (repository given, exec complete).
    #[serde(rename = "RunInfo", default, skip_serializing_if = "Option::is_none")]
    pub run_info: Option<RunInfo>,
}

/// Go's `url.URL` in JSON, as Reflow writes a `RepoObjectRef.RepoURL`: a struct of the URL's
/// parts, or `null` for no URL. The agent keeps the URL as a string; this serde `with` module
/// converts both ways, and also reads a plain string (what earlier agents wrote).
///
/// Go's `Userinfo` has no exported fields, so Go writes a URL's user as `{}` and loses it; so do
/// we. A percent-escaped path is kept in `RawPath`, its decoded form in `Path`, as Go does.
pub mod gourl {
    use serde::{Deserialize, Deserializer, Serialize, Serializer};

    /// The fields of Go's `url.URL`, in declaration order.
    #[derive(Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
    #[serde(rename_all = "PascalCase", default)]
    pub struct GoUrl {
        /// `s3`, `file`, ...
        pub scheme: String,
        /// The part after `scheme:` when it does not start with `/`.
        pub opaque: String,
        /// `{}` when the URL had a user (Go writes no more), else `null`.
        pub user: Option<serde_json::Map<String, serde_json::Value>>,
        /// Host, or host:port.
        pub host: String,
        /// Path, percent-decoded.
        pub path: String,
        /// The path as written, when it had escapes.
        pub raw_path: String,
        /// Go 1.19+: no `//` after the scheme.
        pub omit_host: bool,
        /// A `?` with an empty query.
        pub force_query: bool,
        /// The query, without `?`.
        pub raw_query: String,
        /// The fragment, without `#`.
        pub fragment: String,
        /// The fragment as written, when it had escapes.
        pub raw_fragment: String,
    }

    fn percent_decode(s: &str) -> String {
        let b = s.as_bytes();
        let mut out = Vec::with_capacity(b.len());
        let mut i = 0;
        while i < b.len() {
            let hex = |c: u8| (c as char).to_digit(16);
            match (
                b[i],
                b.get(i + 1).copied().and_then(hex),
                b.get(i + 2).copied().and_then(hex),
            ) {
                (b'%', Some(h), Some(l)) => {
                    // Two hex digits make one byte: h and l are below 16.
                    out.push(u8::try_from(h * 16 + l).unwrap_or(b'?'));
                    i += 3;
                }
                (c, _, _) => {
                    out.push(c);
                    i += 1;
                }
            }
        }
        String::from_utf8_lossy(&out).into_owned()
    }

    impl GoUrl {
        /// Splits `s` as Go's `url.Parse` does for the URLs a repository can have.
        pub fn parse(s: &str) -> GoUrl {
            let mut u = GoUrl::default();
            let (rest, fragment) = match s.split_once('#') {
                Some((r, f)) => (r, Some(f)),
                None => (s, None),
            };
            if let Some(f) = fragment {
                u.fragment = percent_decode(f);
                if u.fragment != f {
                    u.raw_fragment = f.to_string();
                }
            }
            let (rest, query) = match rest.split_once('?') {
                Some((r, q)) => (r, Some(q)),
                None => (rest, None),
            };
            if let Some(q) = query {
                u.raw_query = q.to_string();
                u.force_query = q.is_empty();
            }
            let scheme_end = rest.find(':').filter(|&i| {
                let sch = &rest[..i];
                sch.starts_with(|c: char| c.is_ascii_alphabetic())
                    && sch
                        .chars()
                        .all(|c| c.is_ascii_alphanumeric() || matches!(c, '+' | '-' | '.'))
            });
            let mut rest = rest;
            if let Some(i) = scheme_end {
                u.scheme = rest[..i].to_ascii_lowercase();
                rest = &rest[i + 1..];
                if !rest.starts_with('/') {
                    u.opaque = rest.to_string();
                    return u;
                }
            }
            if let Some(auth_and_path) = rest.strip_prefix("//") {
                let cut = auth_and_path.find('/').unwrap_or(auth_and_path.len());
                let authority = &auth_and_path[..cut];
                rest = &auth_and_path[cut..];
                u.host = match authority.rsplit_once('@') {
                    Some((_, host)) => {
                        u.user = Some(serde_json::Map::new());
                        host.to_string()
                    }
                    None => authority.to_string(),
                };
            }
            u.path = percent_decode(rest);
            if u.path != rest {
                u.raw_path = rest.to_string();
            }
            u
        }

        /// The URL as text, as Go's `URL.String` writes it.
        pub fn to_url_string(&self) -> String {
            let mut out = String::new();
            if !self.scheme.is_empty() {
                out.push_str(&self.scheme);
                out.push(':');
            }
            if !self.opaque.is_empty() {
                out.push_str(&self.opaque);
            } else {
                let has_authority = !self.scheme.is_empty() || !self.host.is_empty();
                if has_authority
                    && !(self.omit_host && self.host.is_empty())
                    && (!self.host.is_empty() || !self.path.is_empty() || self.user.is_some())
                {
                    out.push_str("//");
                }
                out.push_str(&self.host);
                out.push_str(if self.raw_path.is_empty() {
                    &self.path
                } else {
                    &self.raw_path
                });
            }
            if self.force_query || !self.raw_query.is_empty() {
                out.push('?');
                out.push_str(&self.raw_query);
            }
            if !self.fragment.is_empty() {
                out.push('#');
                out.push_str(if self.raw_fragment.is_empty() {
                    &self.fragment
                } else {
                    &self.raw_fragment
                });
            }
            out
        }
    }

    /// Serializes `""` as `null` and anything else as Go's struct.
    ///
    /// # Errors
    /// Only the serializer's own errors.
    pub fn serialize<S: Serializer>(url: &str, s: S) -> Result<S::Ok, S::Error> {
        if url.is_empty() {
            s.serialize_none()
        } else {
            GoUrl::parse(url).serialize(s)
        }
    }

    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Either {
        Text(String),
        Go(Box<GoUrl>),
    }

    /// Reads `null`, Go's struct, or a string.
    ///
    /// # Errors
    /// Anything else.
    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<String, D::Error> {
        Ok(match Option::<Either>::deserialize(d)? {
            None => String::new(),
            Some(Either::Text(s)) => s,
            Some(Either::Go(u)) => u.to_url_string(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fileset::File;

    #[test]
    fn go_url_round_trips() {
        for s in [
            "s3://bucket/prefix",
            "s3://bucket",
            "file:///var/lib/repo",
            "file:///var/a%20b",
            "http://h:5000/p?x=1#frag",
            "mailto:someone",
            "relative/path",
        ] {
            let u = gourl::GoUrl::parse(s);
            assert_eq!(u.to_url_string(), s, "{u:?}");
        }
        let u = gourl::GoUrl::parse("s3://bucket/prefix");
        assert_eq!(
            (u.scheme.as_str(), u.host.as_str(), u.path.as_str()),
            ("s3", "bucket", "/prefix")
        );
        let esc = gourl::GoUrl::parse("file:///var/a%20b");
        assert_eq!(
            (esc.path.as_str(), esc.raw_path.as_str()),
            ("/var/a b", "/var/a%20b")
        );
    }

    fn exec(cmd: &str, args: Vec<Arg>) -> ExecConfig {
        ExecConfig {
            kind: TYPE_EXEC.into(),
            image: "reflow-agent-test/busybox:1".into(),
            cmd: cmd.into(),
            args,
            ..ExecConfig::default()
        }
    }

    #[test]
    fn reads_reflow_json() {
        let go = r#"{"Type":"exec","Ident":"hello","URL":"","Image":"ubuntu","OriginalImage":"ubuntu",
            "Cmd":"cat %s > %s","Args":[{"Out":false,"Fileset":{"Fileset":{".":{"ID":"sha256:2d711642b726b04401627ca9fbac32f5c8530fb1903cc4db02258717921a4881","Size":1,
            "LastModified":"0001-01-01T00:00:00Z","ContentHash":"<zero>"}}},"Index":0},{"Out":true,"Fileset":null,"Index":0}],
            "Resources":{"mem":1073741824,"cpu":1},"NeedAWSCreds":false,"NeedDockerAccess":false}"#;
        let c: ExecConfig = serde_json::from_str(go).unwrap();
        assert_eq!(c.outputs(), 1);
        assert!(c.validate().is_ok());
        let j = serde_json::to_value(&c).unwrap();
        assert_eq!(j["Resources"]["mem"], 1073741824.0);
        assert!(j.get("OutputIsDir").is_none());
        assert_eq!(serde_json::from_value::<ExecConfig>(j).unwrap(), c);
    }

    #[test]
    fn validation_table() {
        let input = || Arg::input(Fileset::single(File::resolved(Digest::of(b"x"), 1)));
        let ok = exec("cat %s > %s", vec![input(), Arg::output(0)]);
        assert!(ok.validate().is_ok());
        let mut bad_path = ok.clone();
        bad_path.args[0]
            .fileset
            .as_mut()
            .unwrap()
            .map
            .insert("/abs".into(), File::default());
        let mut bad_res = ok.clone();
        bad_res.resources.set("mem", -5.0);
        let cases: Vec<(ExecConfig, &str)> = vec![
            (
                ExecConfig {
                    kind: "shell".into(),
                    ..ok.clone()
                },
                "unknown exec type",
            ),
            (
                ExecConfig {
                    image: " ".into(),
                    ..ok.clone()
                },
                "no image",
            ),
            (exec("x", vec![Arg::output(1)]), "output indices"),
            (
                exec("x", vec![Arg::output(0), Arg::output(0)]),
                "output indices",
            ),
            (exec("x", vec![Arg::default()]), "must carry a fileset"),
            (
                ExecConfig {
                    output_is_dir: vec![true, false],
                    ..ok.clone()
                },
                "OutputIsDir has 2 entries for 1 outputs",
            ),
            (bad_path, "argument 0"),
            (bad_res, "resources"),
            (
                ExecConfig {
                    kind: TYPE_EXTERN.into(),
                    url: "s3://b/p/".into(),
                    args: vec![],
                    ..ExecConfig::default()
                },
                "exactly one argument",
            ),
            (
                ExecConfig {
                    kind: TYPE_INTERN.into(),
                    ..ExecConfig::default()
                },
                "intern has no URL",
            ),
        ];
        for (c, want) in cases {
            let e = c.validate().unwrap_err();
            assert!(e.to_string().contains(want), "{e} !~ {want}");
            assert_eq!(e.kind(), Kind::Invalid);
        }
    }

    #[test]
    fn result_json() {
        let r = ExecResult {
            fileset: Fileset::default(),
            err: Some(ReflowError::new(
                Kind::DockerExec,
                "exec",
                "exited with code 1",
            )),
        };
        let j = serde_json::to_value(&r).unwrap();
        assert_eq!(j["Err"]["Kind"], "DockerExec");
        assert_eq!(serde_json::from_value::<ExecResult>(j).unwrap(), r);
        let ok: ExecResult = serde_json::from_str(r#"{"Fileset":{}}"#).unwrap();
        assert!(ok.err.is_none());
    }
}

/// What a producer asks an alloc for (Reflow's `AllocMeta`).
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct AllocMeta {
    /// Resources wanted (`null`, as Go writes a nil map, reads as none).
    #[serde(default, deserialize_with = "null_default")]
    pub want: Resources,
    /// Who asked.
    #[serde(default)]
    pub owner: String,
    /// Free-form labels.
    #[serde(default, deserialize_with = "null_default")]
    pub labels: BTreeMap<String, String>,
}

/// An alloc's description (Reflow's `AllocInspect`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct AllocInspect {
    /// Alloc id.
    #[serde(rename = "ID")]
    pub id: String,
    /// Its TaskDB row.
    #[serde(rename = "TaskDBAllocID")]
    pub taskdb_alloc_id: Digest,
    /// Resources held.
    pub resources: Resources,
    /// The request.
    pub meta: AllocMeta,
    /// Creation time.
    #[serde(with = "time::go")]
    pub created: Time,
    /// Last keepalive.
    #[serde(with = "time::go")]
    pub last_keepalive: Time,
    /// Expiry.
    #[serde(with = "time::go")]
    pub expires: Time,
}
