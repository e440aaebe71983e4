//! Registry credentials for image pulls (Reflow's `Authenticator`): static credentials from a
//! docker config file, and ECR tokens through the AWS SDK, cached until shortly before they
//! expire. Credentials are never logged; [`RegistryAuth`]'s `Debug` redacts the password.

use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use async_trait::async_trait;
use base64::Engine as _;
use serde::Deserialize;
use thiserror::Error;

use super::RegistryAuth;
use crate::clock::Clock;
use crate::error::{Classify, Kind};
use crate::persist::{self, PersistError};
use crate::time::Time;

/// Largest docker config file read.
pub const MAX_DOCKER_CONFIG_BYTES: u64 = 1 << 20;
/// ECR tokens are renewed this long before they expire.
pub const ECR_RENEW_BEFORE: chrono::Duration = chrono::Duration::minutes(5);
/// The host Docker Hub images are pulled from.
pub const DOCKER_HUB: &str = "docker.io";

/// Credential lookup failures.
#[derive(Debug, Error)]
pub enum AuthError {
    /// The docker config file could not be read or decoded.
    #[error("docker config {path}")]
    Config {
        /// The file.
        path: PathBuf,
        /// Cause.
        #[source]
        source: PersistError,
    },
    /// An `auth` entry is not base64 of `user:password`.
    #[error("docker config entry for {registry} has a malformed auth field")]
    BadAuthField {
        /// The registry.
        registry: String,
    },
    /// ECR refused or failed to issue a token.
    #[error("ECR GetAuthorizationToken: {message}")]
    Ecr {
        /// The SDK's error text.
        message: String,
    },
    /// ECR answered without a usable token.
    #[error("ECR returned no usable authorization token")]
    NoToken,
}

impl Classify for AuthError {
    fn kind(&self) -> Kind {
        match self {
            AuthError::Config { source, .. } => source.kind(),
            AuthError::BadAuthField { .. } => Kind::Invalid,
            AuthError::Ecr { .. } | AuthError::NoToken => Kind::Unavailable,
        }
    }
}

/// The registry host of an image reference: the first path component when it looks like a host
/// (has a `.` or `:`, or is `localhost`), else Docker Hub.
pub fn registry_host(image: &str) -> String {
    match image.split_once('/') {
        Some((first, _)) if first.contains('.') || first.contains(':') || first == "localhost" => {
            first.to_string()
        }
        _ => DOCKER_HUB.to_string(),
    }
}

/// Whether `host` is an ECR registry (`<account>.dkr.ecr.<region>.amazonaws.com[.cn]`).
pub fn is_ecr_host(host: &str) -> bool {
    let parts: Vec<&str> = host.split('.').collect();
    parts.len() >= 6
        && parts[0].len() == 12
        && parts[0].bytes().all(|b| b.is_ascii_digit())
        && parts[1] == "dkr"
        && parts[2] == "ecr"
        && parts[4] == "amazonaws"
        && (parts[5..] == ["com"] || parts[5..] == ["com", "cn"])
}

/// Supplies credentials for pulling images.
#[async_trait]
pub trait Authenticator: Send + Sync + fmt::Debug {
    /// Credentials for pulling `image`, or `None` when this authenticator has none for its
    /// registry.
    async fn authenticate(&self, image: &str) -> Result<Option<RegistryAuth>, AuthError>;
}

/// Static credentials from a docker config file (`~/.docker/config.json`, `auths` section).
#[derive(Debug, Clone, Default)]
pub struct DockerConfigAuth {
    auths: BTreeMap<String, RegistryAuth>,
}

#[derive(Deserialize)]
struct DockerConfigFile {
    #[serde(default)]
    auths: BTreeMap<String, DockerConfigEntry>,
}

#[derive(Deserialize)]
struct DockerConfigEntry {
    #[serde(default)]
    auth: Option<String>,
    #[serde(default)]
    username: Option<String>,
    #[serde(default)]
    password: Option<String>,
}

/// `https://index.docker.io/v1/` -> `docker.io`; `http://host:5000/` -> `host:5000`.
fn normalize_registry(key: &str) -> String {
    let k = key
        .trim_start_matches("https://")
        .trim_start_matches("http://");
    let host = k.split('/').next().unwrap_or(k);
    match host {
        "index.docker.io" | "registry-1.docker.io" => DOCKER_HUB.to_string(),
        h => h.to_string(),
    }
}

impl DockerConfigAuth {
    /// Reads the `auths` of a docker config file. Credential helpers are not consulted.
    ///
    /// # Errors
    /// An unreadable file or a malformed `auth` field.
    pub fn load(path: &Path) -> Result<Self, AuthError> {
        let file: DockerConfigFile =
            persist::read_json(path, MAX_DOCKER_CONFIG_BYTES).map_err(|source| {
                AuthError::Config {
                    path: path.to_path_buf(),
                    source,
                }
            })?;
        let mut auths = BTreeMap::new();
        for (key, entry) in file.auths {
            let server = normalize_registry(&key);
            let (username, password) = match (entry.auth, entry.username, entry.password) {
                (Some(a), _, _) if !a.is_empty() => {
                    let decoded = base64::engine::general_purpose::STANDARD
                        .decode(a.trim())
                        .ok()
                        .and_then(|b| String::from_utf8(b).ok())
                        .ok_or_else(|| AuthError::BadAuthField {
                            registry: server.clone(),
                        })?;
                    let (u, p) =
                        decoded
                            .split_once(':')
                            .ok_or_else(|| AuthError::BadAuthField {
                                registry: server.clone(),
                            })?;
                    (u.to_string(), p.to_string())
                }
                (_, Some(u), Some(p)) => (u, p),
                _ => continue,
            };
            auths.insert(
                server.clone(),
                RegistryAuth {
                    username,
                    password,
                    server,
                },
            );
        }
        Ok(DockerConfigAuth { auths })
    }

    /// Registries this file has credentials for.
    pub fn registries(&self) -> impl Iterator<Item = &str> {
        self.auths.keys().map(String::as_str)
    }
}

#[async_trait]
impl Authenticator for DockerConfigAuth {
    async fn authenticate(&self, image: &str) -> Result<Option<RegistryAuth>, AuthError> {
        Ok(self.auths.get(&registry_host(image)).cloned())
    }
}

/// ECR tokens from `GetAuthorizationToken`, cached until [`ECR_RENEW_BEFORE`] before expiry.
/// Only images on ECR hosts are claimed.
pub struct EcrAuth {
    client: aws_sdk_ecr::Client,
    clock: Arc<dyn Clock>,
    cache: tokio::sync::Mutex<Option<(RegistryAuth, Time)>>,
}

impl fmt::Debug for EcrAuth {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("EcrAuth").finish_non_exhaustive()
    }
}

impl EcrAuth {
    /// An authenticator using `sdk` (region, endpoint and credentials from the standard chain or
    /// the agent's config).
    pub fn new(sdk: &aws_config::SdkConfig, clock: Arc<dyn Clock>) -> Self {
        EcrAuth {
            client: aws_sdk_ecr::Client::new(sdk),
            clock,
            cache: tokio::sync::Mutex::new(None),
        }
    }

    /// A token for the account's registry, from the cache when still fresh.
    ///
    /// # Errors
    /// ECR errors, or a reply without a token.
    pub async fn token(&self) -> Result<RegistryAuth, AuthError> {
        let mut cache = self.cache.lock().await;
        if let Some((auth, expires)) = cache.as_ref()
            && self.clock.now() + ECR_RENEW_BEFORE < *expires
        {
            return Ok(auth.clone());
        }
        let out = self
            .client
            .get_authorization_token()
            .send()
            .await
            .map_err(|e| AuthError::Ecr {
                message: aws_sdk_ecr::error::DisplayErrorContext(&e).to_string(),
            })?;
        let data = out.authorization_data().first().ok_or(AuthError::NoToken)?;
        let token = data.authorization_token().ok_or(AuthError::NoToken)?;
        let decoded = base64::engine::general_purpose::STANDARD
            .decode(token)
            .ok()
            .and_then(|b| String::from_utf8(b).ok())
            .ok_or(AuthError::NoToken)?;
        let (username, password) = decoded.split_once(':').ok_or(AuthError::NoToken)?;
        let server = data
            .proxy_endpoint()
            .map(normalize_registry)
            .unwrap_or_default();
        let expires = data
            .expires_at()
            .and_then(|t| chrono::DateTime::from_timestamp(t.secs(), t.subsec_nanos()))
            .unwrap_or_else(|| self.clock.now() + chrono::Duration::hours(1));
        let auth = RegistryAuth {
            username: username.to_string(),
            password: password.to_string(),
            server,
        };
        tracing::info!(registry = %auth.server, expires = %crate::time::format(&expires), "Obtained an ECR token.");
        *cache = Some((auth.clone(), expires));
        Ok(auth)
    }
}

#[async_trait]
impl Authenticator for EcrAuth {
    async fn authenticate(&self, image: &str) -> Result<Option<RegistryAuth>, AuthError> {
        let host = registry_host(image);
        if !is_ecr_host(&host) {
            return Ok(None);
        }
        let mut auth = self.token().await?;
        auth.server = host;
        Ok(Some(auth))
    }
}

/// Asks each authenticator in turn; the first with credentials wins.
#[derive(Debug, Default, Clone)]
pub struct ChainAuth(pub Vec<Arc<dyn Authenticator>>);

#[async_trait]
impl Authenticator for ChainAuth {
    async fn authenticate(&self, image: &str) -> Result<Option<RegistryAuth>, AuthError> {
        for a in &self.0 {
            if let Some(c) = a.authenticate(image).await? {
                return Ok(Some(c));
            }
        }
        Ok(None)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn registry_hosts() {
        let cases = [
            ("ubuntu", "docker.io"),
            ("library/ubuntu:22.04", "docker.io"),
            (
                "127.0.0.1:5001/reflow-agent-test/busybox:1",
                "127.0.0.1:5001",
            ),
            ("localhost/x", "localhost"),
            (
                "123456789012.dkr.ecr.us-west-2.amazonaws.com/tools:1",
                "123456789012.dkr.ecr.us-west-2.amazonaws.com",
            ),
            ("quay.io/org/img@sha256:abc", "quay.io"),
        ];
        for (image, host) in cases {
            assert_eq!(registry_host(image), host, "{image}");
        }
    }

    #[test]
    fn ecr_hosts() {
        assert!(is_ecr_host("123456789012.dkr.ecr.us-west-2.amazonaws.com"));
        assert!(is_ecr_host(
            "123456789012.dkr.ecr.cn-north-1.amazonaws.com.cn"
        ));
        assert!(!is_ecr_host("12345.dkr.ecr.us-west-2.amazonaws.com"));
        assert!(!is_ecr_host("123456789012.dkr.ecr.us-west-2.example.com"));
        assert!(!is_ecr_host("docker.io"));
    }

    #[tokio::test]
    async fn docker_config_file() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("config.json");
        // base64("reflow:reflow-test") and base64("hub:secret")
        std::fs::write(
            &p,
            r#"{"auths": {"127.0.0.1:5001": {"auth": "cmVmbG93OnJlZmxvdy10ZXN0"},
                          "https://index.docker.io/v1/": {"auth": "aHViOnNlY3JldA=="},
                          "other.example": {"username": "u", "password": "p"},
                          "helper.example": {}},
                "credsStore": "desktop"}"#,
        )
        .unwrap();
        let a = DockerConfigAuth::load(&p).unwrap();
        let c = a
            .authenticate("127.0.0.1:5001/x/y:1")
            .await
            .unwrap()
            .unwrap();
        assert_eq!(
            (c.username.as_str(), c.password.as_str()),
            ("reflow", "reflow-test")
        );
        assert_eq!(
            a.authenticate("ubuntu").await.unwrap().unwrap().username,
            "hub"
        );
        assert_eq!(
            a.authenticate("other.example/z")
                .await
                .unwrap()
                .unwrap()
                .password,
            "p"
        );
        assert!(a.authenticate("unknown.example/z").await.unwrap().is_none());
        assert!(
            !format!("{c:?}").contains("reflow-test"),
            "Debug must redact the password"
        );

        std::fs::write(&p, r#"{"auths": {"h.example": {"auth": "!!notbase64"}}}"#).unwrap();
        assert!(matches!(
            DockerConfigAuth::load(&p),
            Err(AuthError::BadAuthField { .. })
        ));
        assert_eq!(
            DockerConfigAuth::load(&dir.path().join("missing"))
                .unwrap_err()
                .kind(),
            Kind::NotExist
        );
    }
}
