//! Admission checks applied after a command decodes: its HMAC signature (when the agent has a
//! key), the image allowlist, resource limits, and the Docker-socket and AWS-credential
//! passthrough switches. Every failure is a typed [`SecurityError`] of kind `NotAllowed` or
//! `Invalid`, so the command is rejected to the dead-letter queue and never retried.
//!
//! # Signatures
//! `signature` is `hmac-sha256:<64 hex>`, the HMAC-SHA256 under the shared key of the envelope's
//! **canonical form**: the envelope JSON without its `signature` field, with object keys sorted
//! and no whitespace (Python: `json.dumps(env, sort_keys=True, separators=(",", ":"),
//! ensure_ascii=False)`). [`sign`] produces it.

use hmac::{Hmac, Mac};
use sha2::Sha256;
use thiserror::Error;

use crate::error::{Classify, Kind};
use crate::model::ExecConfig;
use crate::protocol::Command;
use crate::resources::Resources;

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
    /// A passthrough the agent's config does not allow.
    #[error("{what} is not allowed by this agent's config ({switch})")]
    Passthrough {
        /// What was asked for.
        what: &'static str,
        /// The config switch that would allow it.
        switch: &'static str,
    },
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
    /// Image prefixes allowed (`repo/name:` or a full reference); empty allows every image.
    pub image_allowlist: Vec<String>,
    /// The most one command may ask for, per resource (absent: no limit beyond the machine).
    pub max_resources: Resources,
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
            .field("max_resources", &self.max_resources)
            .field("allow_docker_socket", &self.allow_docker_socket)
            .field("allow_aws_creds", &self.allow_aws_creds)
            .finish()
    }
}

/// Writes `v` in canonical form (sorted keys, no whitespace) into `out`.
fn canonical(v: &serde_json::Value, out: &mut Vec<u8>) {
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
                canonical(&m[k], out);
            }
            out.push(b'}');
        }
        serde_json::Value::Array(a) => {
            out.push(b'[');
            for (i, x) in a.iter().enumerate() {
                if i > 0 {
                    out.push(b',');
                }
                canonical(x, out);
            }
            out.push(b']');
        }
        other => out.extend(serde_json::to_vec(other).unwrap_or_default()),
    }
}

fn mac(key: &[u8], env: &serde_json::Value) -> Hmac<Sha256> {
    let mut unsigned = env.clone();
    if let Some(m) = unsigned.as_object_mut() {
        m.remove("signature");
    }
    let mut bytes = Vec::new();
    canonical(&unsigned, &mut bytes);
    // HMAC takes keys of any length.
    let mut m = <Hmac<Sha256> as Mac>::new_from_slice(key).unwrap_or_else(|_| unreachable!());
    m.update(&bytes);
    m
}

/// The signature of envelope `env` under `key` (`hmac-sha256:<hex>`).
pub fn sign(key: &[u8], env: &serde_json::Value) -> String {
    format!(
        "{SCHEME}{}",
        hex::encode(mac(key, env).finalize().into_bytes())
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
    // Constant-time comparison.
    mac(key, &env)
        .verify_slice(&given)
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
            Command::Job(job) => self.admit_config(&job.config, job.resources.as_ref()),
            Command::AllocNew { meta } => self.admit_resources(&meta.want),
            _ => Ok(()),
        }
    }

    fn admit_config(
        &self,
        c: &ExecConfig,
        resources: Option<&Resources>,
    ) -> Result<(), SecurityError> {
        if !c.image.is_empty()
            && !self.image_allowlist.is_empty()
            && !self
                .image_allowlist
                .iter()
                .any(|p| c.image.starts_with(p.as_str()))
        {
            return Err(SecurityError::Image {
                image: c.image.chars().take(200).collect(),
            });
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

    #[test]
    fn canonical_form_matches_python_json_dumps() {
        // python3 -c 'import json;print(json.dumps({"b":[1,{"d":"é","c":2.5}],"a":None},
        //   sort_keys=True,separators=(",",":"),ensure_ascii=False))'
        let v = serde_json::json!({"b":[1,{"d":"é","c":2.5}],"a":null});
        let mut out = Vec::new();
        canonical(&v, &mut out);
        assert_eq!(
            String::from_utf8(out).unwrap(),
            r#"{"a":null,"b":[1,{"c":2.5,"d":"é"}]}"#
        );
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
