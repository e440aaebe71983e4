//! Registry credentials for image pulls (Reflow's `Authenticator`): a docker config file (its
//! static `auths`, and the credential helpers named by `credHelpers` and `credsStore`), and ECR
//! tokens through the AWS SDK, cached until shortly before they expire. Credentials are never
//! logged; [`RegistryAuth`]'s `Debug` redacts the password, and a helper's output appears in no
//! error.

use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use async_trait::async_trait;
use base64::Engine as _;
use serde::Deserialize;
use thiserror::Error;

use super::RegistryAuth;
#[cfg(feature = "ecr")]
use crate::clock::Clock;
use crate::error::{Classify, Kind};
use crate::persist::{self, PersistError};
#[cfg(feature = "ecr")]
use crate::time::Time;

/// Largest docker config file read.
pub const MAX_DOCKER_CONFIG_BYTES: u64 = 1 << 20;
/// ECR tokens are renewed this long before they expire.
pub const ECR_RENEW_BEFORE: chrono::Duration = chrono::Duration::minutes(5);
/// The host Docker Hub images are pulled from.
pub const DOCKER_HUB: &str = "docker.io";
/// The server URL docker's tools use for Docker Hub (what a credential helper is asked for).
pub const DOCKER_HUB_SERVER: &str = "https://index.docker.io/v1/";
/// How long a credential helper may take.
pub const HELPER_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(30);
/// Largest credential helper answer read.
const MAX_HELPER_OUTPUT: usize = 64 << 10;

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
    /// A credential helper name that is not a plain program suffix (`docker-credential-NAME`).
    #[error("docker config names credential helper {helper:?}, which is not a plain name")]
    BadHelperName {
        /// The name as configured.
        helper: String,
    },
    /// A credential helper could not be run, failed, or answered something unusable.
    #[error("credential helper docker-credential-{helper} for {registry}: {message}")]
    Helper {
        /// The helper's name (`credHelpers`/`credsStore`).
        helper: String,
        /// The registry asked for.
        registry: String,
        /// What went wrong (never the helper's answer, which may hold a secret).
        message: String,
    },
}

impl Classify for AuthError {
    fn kind(&self) -> Kind {
        match self {
            AuthError::Config { source, .. } => source.kind(),
            AuthError::BadAuthField { .. } | AuthError::BadHelperName { .. } => Kind::Invalid,
            AuthError::Ecr { .. } | AuthError::NoToken | AuthError::Helper { .. } => {
                Kind::Unavailable
            }
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

/// Credentials from a docker config file (`~/.docker/config.json`): a registry named in
/// `credHelpers` asks that helper, any other asks the `credsStore` helper when one is set, and a
/// registry the helper has nothing for (or no helper) uses the static `auths` entry, as the
/// docker CLI does.
#[derive(Debug, Clone, Default)]
pub struct DockerConfigAuth {
    auths: BTreeMap<String, RegistryAuth>,
    helpers: BTreeMap<String, String>,
    store: Option<String>,
    helper_path: Option<std::ffi::OsString>,
}

#[derive(Deserialize)]
struct DockerConfigFile {
    #[serde(default)]
    auths: BTreeMap<String, DockerConfigEntry>,
    #[serde(default, rename = "credHelpers")]
    cred_helpers: BTreeMap<String, String>,
    #[serde(default, rename = "credsStore")]
    creds_store: Option<String>,
}

/// What `docker-credential-NAME get` prints.
#[derive(Deserialize)]
struct HelperAnswer {
    #[serde(rename = "Username")]
    username: String,
    #[serde(rename = "Secret")]
    secret: String,
}

/// Whether `name` can be a `docker-credential-NAME` program suffix (no path, no options).
fn plain_helper_name(name: &str) -> bool {
    !name.is_empty()
        && !name.starts_with('-')
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
        && name != "."
        && name != ".."
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
    /// Reads a docker config file: its `auths`, `credHelpers` and `credsStore`. Helpers run
    /// later, at each pull that needs credentials.
    ///
    /// # Errors
    /// An unreadable file, a malformed `auth` field, or a helper name that is not plain.
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
        let helpers: BTreeMap<String, String> = file
            .cred_helpers
            .into_iter()
            .map(|(k, v)| (normalize_registry(&k), v))
            .collect();
        // An empty `credsStore` (some tools write one) means none.
        let store = file.creds_store.filter(|s| !s.is_empty());
        for h in helpers.values().chain(store.iter()) {
            if !plain_helper_name(h) {
                return Err(AuthError::BadHelperName { helper: h.clone() });
            }
        }
        Ok(DockerConfigAuth {
            auths,
            helpers,
            store,
            helper_path: None,
        })
    }

    /// Looks credential helpers up in `path` (a `PATH`-style list) instead of the process's
    /// `PATH`.
    #[must_use]
    pub fn with_helper_path(mut self, path: impl Into<std::ffi::OsString>) -> Self {
        self.helper_path = Some(path.into());
        self
    }

    /// Runs `docker-credential-HELPER get` for `host`: `None` when it has no credentials.
    async fn ask_helper(
        &self,
        helper: &str,
        host: &str,
    ) -> Result<Option<RegistryAuth>, AuthError> {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let fail = |message: String| AuthError::Helper {
            helper: helper.to_string(),
            registry: host.to_string(),
            message,
        };
        let server = if host == DOCKER_HUB {
            DOCKER_HUB_SERVER
        } else {
            host
        };
        let mut cmd = tokio::process::Command::new(format!("docker-credential-{helper}"));
        cmd.arg("get")
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::null())
            .kill_on_drop(true);
        if let Some(p) = &self.helper_path {
            cmd.env("PATH", p);
        }
        let mut child = cmd
            .spawn()
            .map_err(|e| fail(format!("cannot run it: {e}")))?;
        let run = async {
            if let Some(mut stdin) = child.stdin.take() {
                // A helper may answer without reading its input.
                match stdin.write_all(server.as_bytes()).await {
                    Err(e) if e.kind() != std::io::ErrorKind::BrokenPipe => return Err(e),
                    _ => {}
                }
            }
            let mut out = Vec::new();
            if let Some(stdout) = child.stdout.take() {
                stdout
                    .take(MAX_HELPER_OUTPUT as u64)
                    .read_to_end(&mut out)
                    .await?;
            }
            Ok::<_, std::io::Error>((child.wait().await?, out))
        };
        let (status, out) = tokio::time::timeout(HELPER_TIMEOUT, run)
            .await
            .map_err(|_| fail(format!("no answer within {} s", HELPER_TIMEOUT.as_secs())))?
            .map_err(|e| fail(e.to_string()))?;
        if !status.success() {
            // The helper protocol's answer for an unknown server; anything else is a failure.
            let text = String::from_utf8_lossy(&out);
            if text.contains("credentials not found") {
                return Ok(None);
            }
            let first: String = text
                .lines()
                .next()
                .unwrap_or("")
                .chars()
                .take(200)
                .collect();
            return Err(fail(format!("{status}: {first}")));
        }
        let answer: HelperAnswer = serde_json::from_slice(&out)
            .map_err(|_| fail("the answer is not the helper protocol's JSON".into()))?;
        if answer.username == "<token>" {
            return Err(fail(
                "it returned an identity token, which image pulls here do not support".into(),
            ));
        }
        tracing::debug!(
            helper,
            registry = host,
            "Credentials from a credential helper."
        );
        Ok(Some(RegistryAuth {
            username: answer.username,
            password: answer.secret,
            server: host.to_string(),
        }))
    }

    /// Registries this file has credentials for.
    pub fn registries(&self) -> impl Iterator<Item = &str> {
        self.auths.keys().map(String::as_str)
    }
}

#[async_trait]
impl Authenticator for DockerConfigAuth {
    async fn authenticate(&self, image: &str) -> Result<Option<RegistryAuth>, AuthError> {
        let host = registry_host(image);
        if let Some(helper) = self.helpers.get(&host).or(self.store.as_ref())
            && let Some(auth) = self.ask_helper(helper, &host).await?
        {
            return Ok(Some(auth));
        }
        Ok(self.auths.get(&host).cloned())
    }
}

#[cfg(feature = "ecr")]
/// ECR tokens from `GetAuthorizationToken`, cached until [`ECR_RENEW_BEFORE`] before expiry.
/// Only images on ECR hosts are claimed.
pub struct EcrAuth {
    client: aws_sdk_ecr::Client,
    clock: Arc<dyn Clock>,
    cache: tokio::sync::Mutex<Option<(RegistryAuth, Time)>>,
}

#[cfg(feature = "ecr")]
impl fmt::Debug for EcrAuth {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("EcrAuth").finish_non_exhaustive()
    }
}

#[cfg(feature = "ecr")]
impl EcrAuth {
    /// An authenticator using `sdk` (region, endpoint and credentials from the standard chain or
    /// the agent's config).
    pub fn new(sdk: &aws_config::SdkConfig, clock: Arc<dyn Clock>) -> Self {
        EcrAuth {
            client: aws_sdk_ecr::Client::from_conf(
                aws_sdk_ecr::config::Builder::from(sdk)
                    .interceptor(crate::aws::CountRequests)
                    .build(),
            ),
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

#[cfg(feature = "ecr")]
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

/// [`EcrAuth`] made on the first pull from an ECR host, so an agent that never pulls from ECR
/// never loads the AWS SDK configuration.
#[cfg(feature = "ecr")]
#[derive(Debug)]
pub struct LazyEcrAuth {
    sdk: Arc<crate::aws::LazySdk>,
    clock: Arc<dyn Clock>,
    auth: tokio::sync::OnceCell<EcrAuth>,
}

#[cfg(feature = "ecr")]
impl LazyEcrAuth {
    /// An authenticator that loads `sdk` when an ECR image is first pulled.
    pub fn new(sdk: Arc<crate::aws::LazySdk>, clock: Arc<dyn Clock>) -> Self {
        LazyEcrAuth {
            sdk,
            clock,
            auth: tokio::sync::OnceCell::new(),
        }
    }
}

#[cfg(feature = "ecr")]
#[async_trait]
impl Authenticator for LazyEcrAuth {
    async fn authenticate(&self, image: &str) -> Result<Option<RegistryAuth>, AuthError> {
        if !is_ecr_host(&registry_host(image)) {
            return Ok(None);
        }
        let auth = self
            .auth
            .get_or_init(|| async { EcrAuth::new(self.sdk.get().await, self.clock.clone()) })
            .await;
        auth.authenticate(image).await
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

    #[cfg(feature = "ecr")]
    #[tokio::test]
    async fn lazy_ecr_loads_nothing_for_other_registries() {
        let sdk = Arc::new(crate::aws::LazySdk::new(Default::default()));
        let auth = LazyEcrAuth::new(sdk.clone(), Arc::new(crate::clock::SystemClock));
        for image in [
            "ubuntu",
            "127.0.0.1:5001/team/tool:1",
            "ghcr.io/x/y@sha256:00",
        ] {
            assert_eq!(auth.authenticate(image).await.unwrap(), None, "{image}");
        }
        assert!(!sdk.loaded(), "no AWS configuration was loaded");
    }

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
                "credsStore": ""}"#,
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

    /// Writes an executable `docker-credential-NAME` shell script into `dir`.
    fn helper(dir: &Path, name: &str, body: &str) {
        use std::os::unix::fs::PermissionsExt;
        let p = dir.join(format!("docker-credential-{name}"));
        std::fs::write(&p, format!("#!/bin/sh\n{body}\n")).unwrap();
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o755)).unwrap();
    }

    #[tokio::test]
    async fn credential_helpers_then_static_auths() {
        let dir = tempfile::tempdir().unwrap();
        let bin = dir.path().join("bin");
        std::fs::create_dir(&bin).unwrap();
        let asked = dir.path().join("asked");
        helper(
            &bin,
            "desktop",
            &format!(
                r#"read -r server; echo "$1 $server" >> {}
case "$server" in
  127.0.0.1:5001) echo '{{"ServerURL":"127.0.0.1:5001","Username":"fromhelper","Secret":"s3cret"}}' ;;
  *) echo "credentials not found in native keychain"; exit 1 ;;
esac"#,
                asked.display()
            ),
        );
        helper(&bin, "broken", "echo boom; exit 3");
        helper(
            &bin,
            "token",
            r#"echo '{"Username":"<token>","Secret":"refresh"}'"#,
        );
        helper(&bin, "garbage", "echo 'not json secret-ish'");
        let p = dir.path().join("config.json");
        // base64("reflow:static") and base64("hub:secret")
        std::fs::write(
            &p,
            r#"{"auths": {"127.0.0.1:5001": {"auth": "cmVmbG93OnN0YXRpYw=="},
                          "https://index.docker.io/v1/": {"auth": "aHViOnNlY3JldA=="}},
                "credsStore": "desktop",
                "credHelpers": {"broken.example": "broken", "token.example": "token",
                                "https://garbage.example/v1/": "garbage"}}"#,
        )
        .unwrap();
        let a = DockerConfigAuth::load(&p).unwrap().with_helper_path(&bin);
        // The store's answer wins over the static entry.
        let c = a
            .authenticate("127.0.0.1:5001/x/y:1")
            .await
            .unwrap()
            .unwrap();
        assert_eq!(
            (c.username.as_str(), c.password.as_str(), c.server.as_str()),
            ("fromhelper", "s3cret", "127.0.0.1:5001")
        );
        // Not in the store: the static entry. Docker Hub is asked by its server URL.
        let hub = a.authenticate("ubuntu").await.unwrap().unwrap();
        assert_eq!(hub.username, "hub");
        assert!(a.authenticate("unknown.example/z").await.unwrap().is_none());
        assert_eq!(
            std::fs::read_to_string(&asked).unwrap(),
            "get 127.0.0.1:5001\nget https://index.docker.io/v1/\nget unknown.example\n"
        );
        // A failing helper, an identity token and an answer that is not JSON are errors that
        // never quote the answer.
        let e = a.authenticate("broken.example/z").await.unwrap_err();
        assert_eq!(e.kind(), Kind::Unavailable);
        assert!(
            e.to_string()
                .contains("docker-credential-broken for broken.example"),
            "{e}"
        );
        assert!(e.to_string().contains("boom"), "{e}");
        let e = a.authenticate("token.example/z").await.unwrap_err();
        assert!(e.to_string().contains("identity token"), "{e}");
        assert!(!e.to_string().contains("refresh"), "{e}");
        let e = a.authenticate("garbage.example/z").await.unwrap_err();
        assert!(!e.to_string().contains("secret-ish"), "{e}");
        // A helper that is not installed.
        let none = DockerConfigAuth::load(&p)
            .unwrap()
            .with_helper_path(dir.path().join("empty"));
        let e = none.authenticate("ubuntu").await.unwrap_err();
        assert!(
            e.to_string()
                .contains("docker-credential-desktop for docker.io: cannot run it"),
            "{e}"
        );
        // A helper name that would leave the docker-credential- namespace.
        for bad in ["../evil", "-x", "a/b", ""] {
            std::fs::write(
                &p,
                format!(r#"{{"credHelpers": {{"r.example": "{bad}"}}}}"#),
            )
            .unwrap();
            assert!(
                matches!(
                    DockerConfigAuth::load(&p),
                    Err(AuthError::BadHelperName { .. })
                ),
                "{bad}"
            );
        }
    }
}
