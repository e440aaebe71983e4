//! Admission checks applied after a command decodes: its HMAC signature (when the agent has a
//! key), the image allowlist, resource limits, and the Docker-socket and AWS-credential
//! passthrough switches. Every failure is a typed [`SecurityError`] of kind `NotAllowed` or
//! `Invalid`, so the command is rejected to the dead-letter queue and never retried.
//!
//! # Signatures
//! `signature` is `hmac-sha256:<64 hex>`, the HMAC-SHA256 under the shared key of the envelope's
//! **canonical form**: the envelope JSON without its `signature` field, canonicalized by RFC 8785
//! (JCS, [`canonical`]). [`sign`] produces it; [`verify`] also accepts the form earlier agents
//! signed (Python's `json.dumps(env, sort_keys=True, separators=(",", ":"), ensure_ascii=False)`,
//! which is JCS itself for envelopes without fractional or exponent numbers).

use hmac::{Hmac, Mac};
use sha2::Sha256;
use thiserror::Error;

use crate::error::{Classify, Kind};
use crate::model::ExecConfig;
use crate::protocol::Command;
use crate::resources::Resources;

/// The default replay window of signed commands: 5 minutes either way.
pub const DEFAULT_MAX_CLOCK_SKEW: std::time::Duration = std::time::Duration::from_secs(300);

/// The signature scheme prefix.
pub const SCHEME: &str = "hmac-sha256:";

/// Why a command was not admitted.
#[derive(Debug, Error)]
pub enum SecurityError {
    /// The agent requires signatures and the command has none.
    #[error("command is not signed and this agent requires signatures")]
    Unsigned,
    /// The signature does not match.
    #[error("bad command signature")]
    BadSignature,
    /// A signed command without `time`, or sent too far from the agent's clock: possibly a
    /// captured command replayed.
    #[error(
        "signed command {problem}; it must carry `time` within security.max_clock_skew_secs ({skew_secs} s) of the agent's clock"
    )]
    Replay {
        /// What is wrong.
        problem: String,
        /// The window.
        skew_secs: u64,
    },
    /// The image is not on the allowlist.
    #[error("image {image:?} is not allowed on this agent")]
    Image {
        /// The image (truncated).
        image: String,
    },
    /// The command asks for more than an agent allows one command to take.
    #[error("{resource} {asked} is more than this agent allows one command ({limit})")]
    Limit {
        /// The resource name.
        resource: String,
        /// What was asked.
        asked: f64,
        /// The limit.
        limit: f64,
    },
    /// A repository the agent's config does not grant to queue commands.
    #[error(
        "repository {url:?} ({field}) is not granted to queue commands on this agent; add it to security.repositories"
    )]
    Repository {
        /// The URL (truncated).
        url: String,
        /// Where the command named it.
        field: &'static str,
    },
    /// A reference input read from the agent's host filesystem.
    #[error(
        "input {source_url:?} reads the agent's host filesystem, which queue commands may not do; load it into a granted repository (security.repositories) and name it by digest"
    )]
    HostFile {
        /// The reference's source (truncated).
        source_url: String,
    },
    /// A passthrough the agent's config does not allow.
    #[error("{what} is not allowed by this agent's config ({switch})")]
    Passthrough {
        /// What was asked for.
        what: &'static str,
        /// The config switch that would allow it.
        switch: &'static str,
    },
}

impl SecurityError {
    /// The command could not be authenticated (unsigned, badly signed, or outside the clock
    /// window): nothing it asks for, its `reply_to` included, is trusted.
    #[must_use]
    pub fn is_authentication(&self) -> bool {
        matches!(
            self,
            SecurityError::Unsigned | SecurityError::BadSignature | SecurityError::Replay { .. }
        )
    }
}

impl Classify for SecurityError {
    fn kind(&self) -> Kind {
        Kind::NotAllowed
    }
}

/// What an agent admits.
#[derive(Clone, Default)]
pub struct Policy {
    /// The HMAC key; when set, every command must carry a valid signature.
    pub hmac_key: Option<Vec<u8>>,
    /// Images allowed, as reference patterns (see [`ImagePattern`]); empty allows every image.
    pub image_allowlist: Vec<String>,
    /// The agent's own repository, always granted.
    pub own_repository: String,
    /// Further repositories commands may read and write (`file:///path` or `s3://bucket/prefix`,
    /// matched on path-component boundaries).
    pub repositories: Vec<String>,
    /// The most one command may ask for, per resource (absent: no limit beyond the machine).
    pub max_resources: Resources,
    /// With a key, how far a command's `time` may be from the agent's clock, either way
    /// (zero: [`DEFAULT_MAX_CLOCK_SKEW`]).
    pub max_clock_skew: std::time::Duration,
    /// Execs may mount the Docker socket.
    pub allow_docker_socket: bool,
    /// Execs may receive the agent's AWS credentials.
    pub allow_aws_creds: bool,
}

impl std::fmt::Debug for Policy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Policy")
            .field("hmac_key", &self.hmac_key.as_ref().map(|_| "<redacted>"))
            .field("image_allowlist", &self.image_allowlist)
            .field("repositories", &self.repositories)
            .field("max_clock_skew", &self.max_clock_skew)
            .field("max_resources", &self.max_resources)
            .field("allow_docker_socket", &self.allow_docker_socket)
            .field("allow_aws_creds", &self.allow_aws_creds)
            .finish()
    }
}

/// Writes `v` in the canonical form of RFC 8785 (JCS) into `out`: no whitespace, object keys
/// sorted by their UTF-16 code units, strings with only the escapes JSON requires (`"`, `\\`
/// and control characters, as `\n` or `\u001f`), and numbers as ECMAScript writes a double
/// (`100`, `2.5`, `1e+21`, `1e-7`). The serialization is `serde_json_canonicalizer`'s.
pub fn canonical(v: &serde_json::Value, out: &mut Vec<u8>) {
    // A `Value` always serializes: its numbers are finite and its keys are strings.
    out.extend(serde_json_canonicalizer::to_vec(v).unwrap_or_default());
}

/// The canonical form earlier agents signed: keys sorted by bytes, numbers as serde_json
/// writes them (`100.0` stays `100.0`), the same as Python's `json.dumps(env, sort_keys=True,
/// separators=(",", ":"), ensure_ascii=False)`. Still accepted by [`verify`].
fn legacy_canonical(v: &serde_json::Value, out: &mut Vec<u8>) {
    match v {
        serde_json::Value::Object(m) => {
            out.push(b'{');
            let mut keys: Vec<&String> = m.keys().collect();
            keys.sort();
            for (i, k) in keys.into_iter().enumerate() {
                if i > 0 {
                    out.push(b',');
                }
                out.extend(serde_json::to_vec(k).unwrap_or_default());
                out.push(b':');
                legacy_canonical(&m[k], out);
            }
            out.push(b'}');
        }
        serde_json::Value::Array(a) => {
            out.push(b'[');
            for (i, x) in a.iter().enumerate() {
                if i > 0 {
                    out.push(b',');
                }
                legacy_canonical(x, out);
            }
            out.push(b']');
        }
        other => out.extend(serde_json::to_vec(other).unwrap_or_default()),
    }
}

fn mac(
    key: &[u8],
    env: &serde_json::Value,
    form: fn(&serde_json::Value, &mut Vec<u8>),
) -> Hmac<Sha256> {
    let mut unsigned = env.clone();
    if let Some(m) = unsigned.as_object_mut() {
        m.remove("signature");
    }
    let mut bytes = Vec::new();
    form(&unsigned, &mut bytes);
    // HMAC takes keys of any length.
    let mut m = <Hmac<Sha256> as Mac>::new_from_slice(key).unwrap_or_else(|_| unreachable!());
    m.update(&bytes);
    m
}

/// The signature of envelope `env` under `key` (`hmac-sha256:<hex>`).
pub fn sign(key: &[u8], env: &serde_json::Value) -> String {
    format!(
        "{SCHEME}{}",
        hex::encode(mac(key, env, canonical).finalize().into_bytes())
    )
}

/// Checks the signature of the raw command `bytes` (already decoded once, so it is JSON).
///
/// # Errors
/// [`SecurityError::Unsigned`] or [`SecurityError::BadSignature`].
pub fn verify(key: &[u8], bytes: &[u8]) -> Result<(), SecurityError> {
    let env: serde_json::Value =
        serde_json::from_slice(bytes).map_err(|_| SecurityError::BadSignature)?;
    let sig = env
        .get("signature")
        .and_then(|s| s.as_str())
        .ok_or(SecurityError::Unsigned)?;
    let given = sig
        .strip_prefix(SCHEME)
        .and_then(|h| hex::decode(h).ok())
        .ok_or(SecurityError::BadSignature)?;
    // Constant-time comparisons: RFC 8785 first, then the form earlier agents signed.
    mac(key, &env, canonical)
        .verify_slice(&given)
        .or_else(|_| mac(key, &env, legacy_canonical).verify_slice(&given))
        .map_err(|_| SecurityError::BadSignature)
}

impl Policy {
    /// Admits (or not) a decoded command whose raw bytes are `bytes`.
    ///
    /// # Errors
    /// The first [`SecurityError`] found.
    pub fn admit(&self, bytes: &[u8], command: &Command) -> Result<(), SecurityError> {
        if let Some(key) = &self.hmac_key {
            verify(key, bytes)?;
        }
        match command {
            Command::ExecPut { config, .. } => self.admit_config(config, None),
            Command::Job(job) => {
                for (url, field) in [
                    (&job.inputs_from, "inputs_from"),
                    (&job.outputs_to, "outputs_to"),
                ] {
                    if let Some(url) = url {
                        self.admit_repository(url, field)?;
                    }
                }
                self.admit_config(&job.config, job.resources.as_ref())
            }
            Command::Load {
                repo_url, fileset, ..
            } => {
                self.admit_repository(repo_url, "repo_url")?;
                admit_files(fileset)
            }
            Command::Unload { fileset, .. } | Command::Verify { fileset, .. } => {
                admit_files(fileset)
            }
            Command::AllocNew { meta } => self.admit_resources(&meta.want),
            _ => Ok(()),
        }
    }

    /// With a key, checks that the command says when it was sent (`time`, covered by the
    /// signature) and that this is within the replay window of `now`. An id seen before is the
    /// same command (the journal answers it), so a replay inside the window runs nothing new.
    ///
    /// # Errors
    /// [`SecurityError::Replay`].
    pub fn admit_time(
        &self,
        sent: Option<crate::time::Time>,
        now: crate::time::Time,
    ) -> Result<(), SecurityError> {
        if self.hmac_key.is_none() {
            return Ok(());
        }
        let window = if self.max_clock_skew.is_zero() {
            DEFAULT_MAX_CLOCK_SKEW
        } else {
            self.max_clock_skew
        };
        let skew_secs = window.as_secs();
        let Some(sent) = sent else {
            return Err(SecurityError::Replay {
                problem: "has no `time`".into(),
                skew_secs,
            });
        };
        let off = (now - sent).num_seconds();
        if off.unsigned_abs() > skew_secs {
            return Err(SecurityError::Replay {
                problem: format!("was sent at {sent} and it is {now} ({off} s apart)"),
                skew_secs,
            });
        }
        Ok(())
    }

    /// Whether `url` is the agent's own repository or under a granted one.
    fn admit_repository(&self, url: &str, field: &'static str) -> Result<(), SecurityError> {
        let refused = || SecurityError::Repository {
            url: url.chars().take(200).collect(),
            field,
        };
        let Some(want) = RepoPath::parse(url) else {
            return Err(refused());
        };
        let granted = std::iter::once(&self.own_repository)
            .chain(&self.repositories)
            .filter_map(|g| RepoPath::parse(g))
            .any(|g| g.covers(&want));
        if granted { Ok(()) } else { Err(refused()) }
    }

    fn admit_config(
        &self,
        c: &ExecConfig,
        resources: Option<&Resources>,
    ) -> Result<(), SecurityError> {
        if !c.image.is_empty() && !self.image_allowed(&c.image) {
            return Err(SecurityError::Image {
                image: c.image.chars().take(200).collect(),
            });
        }
        if matches!(c.kind.as_str(), "intern" | "extern") && !c.url.is_empty() {
            self.admit_repository(&c.url, "URL")?;
        }
        for fs in c.args.iter().filter_map(|a| a.fileset.as_ref()) {
            admit_files(fs)?;
        }
        if c.need_docker_access && !self.allow_docker_socket {
            return Err(SecurityError::Passthrough {
                what: "NeedDockerAccess",
                switch: "executor.allow_docker_socket",
            });
        }
        if c.need_aws_creds && !self.allow_aws_creds {
            return Err(SecurityError::Passthrough {
                what: "NeedAWSCreds",
                switch: "executor.allow_aws_creds",
            });
        }
        self.admit_resources(&c.resources)?;
        match resources {
            Some(r) => self.admit_resources(r),
            None => Ok(()),
        }
    }

    /// Whether `image` matches an allowlist entry (every image when the list is empty).
    pub fn image_allowed(&self, image: &str) -> bool {
        if self.image_allowlist.is_empty() {
            return true;
        }
        let Some(image) = ImageRef::parse(image) else {
            return false;
        };
        self.image_allowlist
            .iter()
            .filter_map(|p| ImagePattern::parse(p))
            .any(|p| p.matches(&image))
    }

    fn admit_resources(&self, want: &Resources) -> Result<(), SecurityError> {
        for (name, &limit) in &self.max_resources.0 {
            let asked = want.get(name);
            if limit > 0.0 && asked > limit {
                return Err(SecurityError::Limit {
                    resource: name.to_string(),
                    asked,
                    limit,
                });
            }
        }
        Ok(())
    }
}

/// Refuses reference files whose source is on the agent's host (`file://`): a queue command
/// must not make the agent read host files as root.
fn admit_files(fs: &crate::fileset::Fileset) -> Result<(), SecurityError> {
    match fs
        .files()
        .into_iter()
        .find(|f| f.is_ref() && !f.source.starts_with("s3://"))
    {
        Some(f) => Err(SecurityError::HostFile {
            source_url: f.source.chars().take(200).collect(),
        }),
        None => Ok(()),
    }
}

/// A repository location: a scheme, then path components (`file`: absolute path; `s3`: the
/// bucket, then the key prefix's components).
#[derive(Debug, PartialEq)]
struct RepoPath {
    scheme: &'static str,
    parts: Vec<String>,
}

impl RepoPath {
    /// `file:///abs/path` or `s3://bucket[/prefix]`; `None` for anything else, and for paths
    /// with `.`, `..` or empty components (no way around a grant).
    fn parse(url: &str) -> Option<RepoPath> {
        let (scheme, rest) = if let Some(p) = url.strip_prefix("file://") {
            ("file", p.strip_prefix('/')?)
        } else if let Some(p) = url.strip_prefix("s3://") {
            ("s3", p)
        } else {
            return None;
        };
        let rest = rest.strip_suffix('/').unwrap_or(rest);
        let parts: Vec<String> = rest.split('/').map(str::to_string).collect();
        if parts.iter().any(|p| p.is_empty() || p == "." || p == "..") {
            return None;
        }
        Some(RepoPath { scheme, parts })
    }

    /// Whether `other` is this location or under it.
    fn covers(&self, other: &RepoPath) -> bool {
        self.scheme == other.scheme && other.parts.starts_with(&self.parts)
    }
}

/// Whether the first component of a reference names a registry host, as Docker decides: it has
/// a `.` or a port, or is `localhost`.
fn is_registry(first: &str) -> bool {
    first.contains('.') || first.contains(':') || first == "localhost"
}

/// A parsed image reference: registry host, repository path, tag and digest, normalized the
/// way Docker does (`ubuntu` is `docker.io/library/ubuntu`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ImageRef {
    /// The registry host (with port), `docker.io` when the reference names none.
    pub registry: String,
    /// The repository path's components.
    pub path: Vec<String>,
    /// The tag, if any.
    pub tag: Option<String>,
    /// The digest (`sha256:<hex>`), if any.
    pub digest: Option<String>,
}

impl ImageRef {
    /// Parses a reference: `[registry/]path[:tag][@digest]`. `None` when malformed.
    pub fn parse(s: &str) -> Option<ImageRef> {
        let (rest, digest) = match s.split_once('@') {
            Some((r, d)) => (r, Some(d)),
            None => (s, None),
        };
        if let Some(d) = digest {
            let hex = d.strip_prefix("sha256:")?;
            if hex.len() != 64 || !hex.bytes().all(|b| b.is_ascii_hexdigit()) {
                return None;
            }
        }
        // A tag follows the last ':' after the last '/' (a ':' before it is a registry port).
        let (name, tag) = match rest.rfind(':') {
            Some(i) if !rest[i..].contains('/') => (&rest[..i], Some(&rest[i + 1..])),
            _ => (rest, None),
        };
        if tag.is_some_and(|t| t.is_empty() || t.len() > 128) {
            return None;
        }
        let mut parts: Vec<&str> = name.split('/').collect();
        let registry = if parts.len() > 1 && is_registry(parts[0]) {
            parts.remove(0).to_string()
        } else {
            "docker.io".to_string()
        };
        if parts.iter().any(|p| {
            p.is_empty()
                || !p
                    .bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"._-".contains(&b))
        }) {
            return None;
        }
        let mut path: Vec<String> = parts.into_iter().map(str::to_string).collect();
        if registry == "docker.io" && path.len() == 1 {
            path.insert(0, "library".into());
        }
        Some(ImageRef {
            registry,
            path,
            tag: tag.map(str::to_string),
            digest: digest.map(str::to_string),
        })
    }
}

/// An allowlist entry, an image reference matched on path-component boundaries:
/// - `registry.example/team/` (trailing `/`): every image under that namespace;
/// - `registry.example/team/tool`: that repository, any tag (and `team/tool/...` beneath it);
/// - `...:tag` or `...@sha256:<hex>`: only that tag or digest;
/// - a trailing `@` (`registry.example/team/@`): as without it, and the image must be pinned
///   by digest.
///
/// `team` never matches `team-evil`; `ubuntu` and `docker.io/library/ubuntu` are the same.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ImagePattern {
    registry: String,
    path: Vec<String>,
    tag: Option<String>,
    digest: Option<String>,
    pinned: bool,
}

impl ImagePattern {
    /// Parses an entry; `None` when malformed.
    pub fn parse(s: &str) -> Option<ImagePattern> {
        let (s, pinned) = match s.strip_suffix('@') {
            Some(r) => (r, true),
            None => (s, false),
        };
        let r = match s.strip_suffix('/') {
            // A namespace: no `library/` for a single component, no tag.
            Some(ns) => {
                let mut parts: Vec<&str> = ns.split('/').collect();
                let registry = if parts.len() > 1 && is_registry(parts[0]) {
                    parts.remove(0).to_string()
                } else if parts.len() == 1 && is_registry(parts[0]) {
                    // A whole registry: `registry.example/`.
                    return Some(ImagePattern {
                        registry: parts[0].to_string(),
                        path: Vec::new(),
                        tag: None,
                        digest: None,
                        pinned,
                    });
                } else {
                    "docker.io".to_string()
                };
                if parts.iter().any(|p| p.is_empty()) {
                    return None;
                }
                ImageRef {
                    registry,
                    path: parts.into_iter().map(str::to_string).collect(),
                    tag: None,
                    digest: None,
                }
            }
            None => ImageRef::parse(s)?,
        };
        Some(ImagePattern {
            registry: r.registry,
            path: r.path,
            tag: r.tag,
            digest: r.digest,
            pinned,
        })
    }

    /// Whether `image` is allowed by this entry.
    pub fn matches(&self, image: &ImageRef) -> bool {
        self.registry == image.registry
            && image.path.starts_with(&self.path)
            && self
                .tag
                .as_ref()
                .is_none_or(|t| image.tag.as_ref() == Some(t))
            && self
                .digest
                .as_ref()
                .is_none_or(|d| image.digest.as_ref() == Some(d))
            && (!self.pinned || image.digest.is_some())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::decode_command;

    fn job(image: &str) -> serde_json::Value {
        serde_json::json!({"v":1,"id":"hello-1","kind":"job","body":{"config":{
            "Type":"exec","Image":image,"Cmd":"echo hello > $out",
            "Resources":{"mem":67108864,"cpu":1}}}})
    }

    fn admit(p: &Policy, env: &serde_json::Value) -> Result<(), SecurityError> {
        let bytes = serde_json::to_vec(env).unwrap();
        let req = decode_command(&bytes).unwrap();
        p.admit(&bytes, &req.command)
    }

    #[test]
    fn signatures_are_checked_only_with_a_key() {
        let env = job("reflow-agent-test/busybox:1");
        assert!(admit(&Policy::default(), &env).is_ok());
        let p = Policy {
            hmac_key: Some(b"k3y".to_vec()),
            ..Policy::default()
        };
        assert!(matches!(admit(&p, &env), Err(SecurityError::Unsigned)));
        let mut signed = env.clone();
        signed["signature"] = sign(b"k3y", &env).into();
        admit(&p, &signed).unwrap();
        // Key order and whitespace do not matter; content does.
        let text = serde_json::to_string_pretty(&signed).unwrap();
        let req = decode_command(text.as_bytes()).unwrap();
        p.admit(text.as_bytes(), &req.command).unwrap();
        let mut tampered = signed.clone();
        tampered["body"]["config"]["Cmd"] = "rm -rf / > $out".into();
        assert!(matches!(
            admit(&p, &tampered),
            Err(SecurityError::BadSignature)
        ));
        let mut wrong_key = env.clone();
        wrong_key["signature"] = sign(b"other", &env).into();
        assert!(matches!(
            admit(&p, &wrong_key),
            Err(SecurityError::BadSignature)
        ));
        let mut garbage = env.clone();
        garbage["signature"] = "hmac-sha256:zz".into();
        assert!(matches!(
            admit(&p, &garbage),
            Err(SecurityError::BadSignature)
        ));
    }

    /// `x` in the canonical form.
    fn es6_number(x: f64) -> String {
        let mut out = Vec::new();
        canonical(&serde_json::json!(x), &mut out);
        String::from_utf8(out).unwrap()
    }

    #[test]
    fn canonical_form_is_rfc_8785() {
        let jcs = |v: serde_json::Value| {
            let mut out = Vec::new();
            canonical(&v, &mut out);
            String::from_utf8(out).unwrap()
        };
        // Python's json.dumps(sort_keys=True, separators=(",", ":"), ensure_ascii=False) agrees
        // where there are no fractional or exponent numbers.
        assert_eq!(
            jcs(serde_json::json!({"b":[1,{"d":"é","c":2.5}],"a":null})),
            r#"{"a":null,"b":[1,{"c":2.5,"d":"é"}]}"#
        );
        // RFC 8785, appendix B: numbers as ECMAScript writes doubles.
        for (bits, want) in [
            (0x0000000000000000_u64, "0"),
            (0x8000000000000000, "0"),
            (0x0000000000000001, "5e-324"),
            (0x8000000000000001, "-5e-324"),
            (0x7fefffffffffffff, "1.7976931348623157e+308"),
            (0x4340000000000000, "9007199254740992"),
            (0x444b1ae4d6e2ef4f, "999999999999999900000"),
            (0x444b1ae4d6e2ef50, "1e+21"),
            (0x3eb0c6f7a0b5ed8c, "9.999999999999997e-7"),
            (0x3eb0c6f7a0b5ed8d, "0.000001"),
            (0x4430000000000000, "295147905179352830000"),
            (0x44b52d02c7e14af6, "1e+23"),
            (0x44b52d02c7e14af7, "1.0000000000000001e+23"),
            (0x41b3de4355555553, "333333333.3333332"),
            (0xbecbf647612f3696, "-0.0000033333333333333333"),
            (0x43143ff3c1cb0959, "1424953923781206.2"),
            (0x3e7ad7f29abcaf48, "1e-7"),
            (0x4024000000000000, "10"),
            (0x3fe0000000000000, "0.5"),
        ] {
            assert_eq!(es6_number(f64::from_bits(bits)), want, "{bits:#x}");
        }
        assert_eq!(
            jcs(serde_json::json!({"mem": 100.0, "cpu": 1e21})),
            r#"{"cpu":1e+21,"mem":100}"#
        );
        // RFC 8785, 3.2.3: keys sorted by UTF-16 code units (U+1F600 is D83D DE00, before U+E000).
        assert_eq!(
            jcs(serde_json::json!({"\u{e000}": 1, "\u{1f600}": 2, "a": 3})),
            "{\"a\":3,\"\u{1f600}\":2,\"\u{e000}\":1}"
        );
        // Only the escapes JSON requires, lower-case hex; `<`, `>`, `&` and `/` stay literal.
        assert_eq!(
            jcs(serde_json::json!({"s": "<a&b>/\u{1f}\n\"\\"})),
            r#"{"s":"<a&b>/\u001f\n\"\\"}"#
        );
    }

    proptest::proptest! {
        /// Every finite double's canonical number reads back as the same double, in no more
        /// digits than Rust's shortest form.
        #[test]
        fn canonical_numbers_round_trip(bits in proptest::prelude::any::<u64>()) {
            let x = f64::from_bits(bits);
            proptest::prop_assume!(x.is_finite());
            let s = es6_number(x);
            let back: f64 = s.parse().unwrap();
            proptest::prop_assert!(back == x || (back == 0.0 && x == 0.0), "{} -> {}", x, s);
            let sig = |t: &str| t.split(['e', 'E']).next().unwrap_or("").chars().filter(char::is_ascii_digit).collect::<String>().trim_matches('0').len();
            proptest::prop_assert!(sig(&s) <= sig(&format!("{x:e}")), "{} -> {}", x, s);
        }
    }

    #[test]
    fn signatures_over_the_earlier_form_still_verify() {
        let key = b"k";
        let env = serde_json::json!({"v": 1, "id": "x", "kind": "offers", "body": {"mem": 100.0}});
        let mut legacy = Vec::new();
        legacy_canonical(&env, &mut legacy);
        assert_eq!(
            String::from_utf8_lossy(&legacy),
            r#"{"body":{"mem":100.0},"id":"x","kind":"offers","v":1}"#
        );
        let mut m = <Hmac<Sha256> as Mac>::new_from_slice(key).unwrap();
        m.update(&legacy);
        let mut signed = env.clone();
        signed["signature"] = format!("{SCHEME}{}", hex::encode(m.finalize().into_bytes())).into();
        verify(key, &serde_json::to_vec(&signed).unwrap()).unwrap();
        let mut jcs = env.clone();
        jcs["signature"] = sign(key, &env).into();
        verify(key, &serde_json::to_vec(&jcs).unwrap()).unwrap();
        assert_ne!(
            signed["signature"], jcs["signature"],
            "the two forms differ here"
        );
    }

    #[test]
    fn signed_commands_carry_a_recent_time() {
        let now = crate::time::parse("2026-12-02T12:00:00Z").unwrap();
        let at = |s: &str| Some(crate::time::parse(s).unwrap());
        assert!(
            Policy::default().admit_time(None, now).is_ok(),
            "no key: no window"
        );
        let p = Policy {
            hmac_key: Some(b"k".to_vec()),
            ..Policy::default()
        };
        assert!(p.admit_time(at("2026-12-02T11:56:00Z"), now).is_ok());
        assert!(p.admit_time(at("2026-12-02T12:04:59Z"), now).is_ok());
        for bad in [None, at("2026-12-02T11:54:59Z"), at("2026-12-02T12:06:00Z")] {
            let e = p.admit_time(bad, now).unwrap_err();
            assert!(
                e.to_string().contains("security.max_clock_skew_secs"),
                "{e}"
            );
            assert_eq!(e.kind(), Kind::NotAllowed);
        }
    }

    #[test]
    fn images_are_matched_as_references() {
        let d = format!("sha256:{}", "ab".repeat(32));
        let table: &[(&str, &str, bool)] = &[
            ("ubuntu", "docker.io/library/ubuntu:24.04", true),
            ("docker.io/library/ubuntu", "ubuntu", true),
            ("ubuntu", "ubuntu-evil", false),
            ("ubuntu", "evil/ubuntu", false),
            ("team/", "team/tool:1", true),
            ("team/", "team-evil/tool:1", false),
            ("team/", "teamx/tool", false),
            ("registry.example/team/", "registry.example/team/tool", true),
            (
                "registry.example/team/",
                "registry.example/team-evil/tool",
                false,
            ),
            (
                "registry.example/team",
                "registry.example/team/sub/tool:2",
                true,
            ),
            ("registry.example/team/", "other.example/team/tool", false),
            ("registry.example/team/", "team/tool", false),
            ("localhost:5001/", "localhost:5001/x/y:1", true),
            ("localhost:5001/", "localhost:5002/x/y:1", false),
            (
                "127.0.0.1:5001/reflow-agent-test/",
                "127.0.0.1:5001/reflow-agent-test/busybox:1",
                true,
            ),
            (
                "registry.example/",
                "registry.example/anything/at/all",
                true,
            ),
            ("ubuntu:24.04", "ubuntu:24.04", true),
            ("ubuntu:24.04", "ubuntu:22.04", false),
            ("ubuntu:24.04", "ubuntu", false),
            ("team/@", "team/tool:1", false),
            ("team/@", &format!("team/tool@{d}"), true),
            (&format!("team/tool@{d}"), &format!("team/tool@{d}"), true),
            (&format!("team/tool@{d}"), "team/tool:latest", false),
            ("team/", "team/Tool", false), // not a valid reference
            ("team/", "team//tool", false),
        ];
        for (entry, image, want) in table {
            let p = Policy {
                image_allowlist: vec![entry.to_string()],
                ..Policy::default()
            };
            assert_eq!(p.image_allowed(image), *want, "{entry} vs {image}");
        }
        assert!(ImagePattern::parse("team//").is_none());
        assert!(ImageRef::parse("x@sha256:zz").is_none());
    }

    #[test]
    fn repositories_are_granted_on_component_boundaries() {
        let p = Policy {
            own_repository: "file:///var/lib/reflow-agent/repository".into(),
            repositories: vec!["file:///data/shared".into(), "s3://bucket/in".into()],
            ..Policy::default()
        };
        let table = [
            ("file:///var/lib/reflow-agent/repository", true),
            ("file:///data/shared", true),
            ("file:///data/shared/", true),
            ("file:///data/shared/run-1", true),
            ("file:///data/shared-evil", false),
            ("file:///data/shared/../../etc", false),
            ("file:///data/./shared", false),
            ("file:///data", false),
            ("file:///etc", false),
            ("file://host/data/shared", false),
            ("s3://bucket/in", true),
            ("s3://bucket/in/x/y", true),
            ("s3://bucket/input", false),
            ("s3://bucket", false),
            ("s3://other/in", false),
            ("http://bucket/in", false),
        ];
        for (url, want) in table {
            let r = p.admit_repository(url, "outputs_to");
            assert_eq!(r.is_ok(), want, "{url}: {r:?}");
            if let Err(e) = r {
                assert!(e.to_string().contains("security.repositories"), "{e}");
            }
        }
    }

    #[test]
    fn allowlist_limits_and_passthrough() {
        let p = Policy {
            image_allowlist: vec!["reflow-agent-test/".into()],
            max_resources: Resources::from_pairs([("mem", 1e9)]),
            ..Policy::default()
        };
        admit(&p, &job("reflow-agent-test/busybox:1")).unwrap();
        assert!(matches!(
            admit(&p, &job("evil/miner:latest")),
            Err(SecurityError::Image { .. })
        ));
        let mut big = job("reflow-agent-test/busybox:1");
        big["body"]["config"]["Resources"]["mem"] = 2e9.into();
        let e = admit(&p, &big).unwrap_err();
        assert!(e.to_string().contains("mem"), "{e}");
        let mut sock = job("reflow-agent-test/busybox:1");
        sock["body"]["config"]["NeedDockerAccess"] = true.into();
        assert!(matches!(
            admit(&p, &sock),
            Err(SecurityError::Passthrough { .. })
        ));
        assert_eq!(
            SecurityError::BadSignature.kind(),
            Kind::NotAllowed,
            "never retried"
        );
    }
}
