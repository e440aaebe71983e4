//! Shared helpers for the integration tests: the real Docker engine, the offline test image, and
//! executors in temporary directories. Endpoints come from the environment with localhost
//! defaults (see README, "Development").
#![allow(dead_code)]

use std::path::Path;
use std::process::Command;
use std::sync::Arc;
use std::time::Duration;

use reflow_agent::clock::SystemClock;
use reflow_agent::digest::Digest;
use reflow_agent::docker::bollard::BollardRuntime;
use reflow_agent::executor::{Executor, ExecutorConfig};
use reflow_agent::model::{Arg, ExecConfig};

/// The offline test image (built by scripts/test-image.sh).
pub fn image() -> String {
    std::env::var("AGENT_IT_IMAGE").unwrap_or_else(|_| "reflow-agent-test/busybox:1".to_string())
}

/// The real Docker engine.
pub fn runtime() -> Arc<BollardRuntime> {
    Arc::new(BollardRuntime::connect().expect("docker client"))
}

/// An executor config with a unique id in `dir`, sampling fast.
pub fn config(dir: &Path) -> ExecutorConfig {
    let id = format!(
        "it{}",
        &Digest::of(dir.to_string_lossy().as_bytes()).hex()[..10]
    );
    let mut c = ExecutorConfig::new(id, dir);
    c.profile_interval = Duration::from_millis(200);
    c.pull_backoff = Duration::from_millis(10);
    c
}

/// Starts an executor on `dir`.
pub async fn executor(dir: &Path) -> Executor {
    Executor::start(config(dir), runtime(), Arc::new(SystemClock))
        .await
        .expect("start executor")
}

/// A docker exec config running `cmd` in the test image.
pub fn exec(cmd: &str, args: Vec<Arg>) -> ExecConfig {
    ExecConfig {
        kind: "exec".into(),
        image: image(),
        cmd: cmd.into(),
        args,
        ..ExecConfig::default()
    }
}

/// A fresh exec id.
pub fn new_id(label: &str) -> Digest {
    use reflow_agent::clock::Clock;
    Digest::of(format!("{label}-{:?}", SystemClock.now()).as_bytes())
}

/// sha256 of `data` computed by coreutils' `sha256sum`, independently of the code under test.
pub fn sha256sum(data: &[u8]) -> String {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("data");
    std::fs::write(&p, data).unwrap();
    let out = Command::new("sha256sum").arg(&p).output().unwrap();
    String::from_utf8(out.stdout)
        .unwrap()
        .split_whitespace()
        .next()
        .unwrap()
        .to_string()
}

/// Runs `docker` with `args`; returns stdout.
pub fn docker(args: &[&str]) -> String {
    let out = Command::new("docker")
        .args(args)
        .output()
        .expect("docker CLI");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Whether a container with this name exists (any state).
pub fn container_exists(name: &str) -> bool {
    !docker(&["ps", "-a", "-q", "--filter", &format!("name=^/{name}$")])
        .trim()
        .is_empty()
}

/// The local registry started by scripts/dev-services.sh (htpasswd auth, test-only user).
pub const REGISTRY: &str = "127.0.0.1:5001";
/// The registry's test user and password.
pub const REGISTRY_CREDS: (&str, &str) = ("reflow", "reflow-test");

/// The broker of the integration tests: `AGENT_IT_AMQP_URL`, by default a vhost of their own on
/// the local broker, which scripts/test.sh empties at every run.
pub fn amqp() -> String {
    std::env::var("AGENT_IT_AMQP_URL")
        .unwrap_or_else(|_| "amqp://guest:guest@127.0.0.1:5672/reflow-it".to_string())
}

/// The AWS emulator endpoint.
pub fn aws_endpoint() -> String {
    std::env::var("AGENT_IT_AWS_ENDPOINT").unwrap_or_else(|_| "http://127.0.0.1:5000".to_string())
}

/// SDK config for the emulator, with fixed test credentials.
#[cfg(feature = "ecr")]
pub async fn aws_sdk() -> aws_config::SdkConfig {
    aws_config::defaults(aws_config::BehaviorVersion::latest())
        .http_client(reflow_agent::aws::https_client())
        .region(aws_config::Region::new("us-east-1"))
        .endpoint_url(aws_endpoint())
        .credentials_provider(aws_sdk_ecr::config::Credentials::new(
            "testing",
            "testing",
            None,
            None,
            "reflow-agent-tests",
        ))
        .load()
        .await
}

/// GET `path` from an HTTP/1.1 server at `addr` (the admin listener): status code and body.
pub async fn http_get(addr: &str, path: &str) -> (u16, String) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    s.write_all(format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").as_bytes())
        .await
        .unwrap();
    let mut buf = String::new();
    s.read_to_string(&mut buf).await.unwrap();
    let code = buf.split(' ').nth(1).unwrap().parse().unwrap();
    let body = buf
        .split_once("\r\n\r\n")
        .map(|x| x.1.to_string())
        .unwrap_or_default();
    (code, body)
}

/// Counts container `start` events per `reflow-executor` label from a `docker events` stream
/// opened when it is made (dockerd keeps only its last 256 events, so `--since` after a long or
/// busy test can miss some). The stream begins two seconds back, so nothing between making the
/// counter and the stream's connection is missed.
pub struct StartCounter {
    child: std::process::Child,
    seen: Arc<std::sync::Mutex<Vec<String>>>,
}

impl StartCounter {
    /// Opens the stream.
    pub fn new() -> StartCounter {
        use std::io::BufRead;
        let since = std::time::UNIX_EPOCH.elapsed().unwrap().as_secs() - 2;
        let mut child = Command::new("docker")
            .args([
                "events",
                "--since",
                &since.to_string(),
                "--filter",
                "type=container",
                "--filter",
                "event=start",
                "--format",
                "{{index .Actor.Attributes \"reflow-executor\"}}",
            ])
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("docker events");
        let out = child.stdout.take().unwrap();
        let seen = Arc::new(std::sync::Mutex::new(Vec::new()));
        let sink = seen.clone();
        std::thread::spawn(move || {
            for line in std::io::BufReader::new(out).lines().map_while(Result::ok) {
                sink.lock().unwrap_or_else(|p| p.into_inner()).push(line);
            }
        });
        StartCounter { child, seen }
    }

    /// Starts so far of containers labelled `reflow-executor=executor`, after letting the
    /// stream catch up for a moment.
    pub fn starts(&self, executor: &str) -> usize {
        std::thread::sleep(Duration::from_millis(500));
        self.seen
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
            .filter(|l| l.trim() == executor)
            .count()
    }
}

impl StartCounter {
    /// Container starts per executor label, after one settling wait (for many at once).
    pub fn all_starts(&self) -> std::collections::HashMap<String, usize> {
        std::thread::sleep(Duration::from_millis(500));
        let mut m = std::collections::HashMap::new();
        for l in self.seen.lock().unwrap_or_else(|p| p.into_inner()).iter() {
            *m.entry(l.trim().to_string()).or_insert(0) += 1;
        }
        m
    }
}

impl Drop for StartCounter {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The protocol's JSON Schema (docs/protocol.schema.json), compiled once.
pub fn protocol_schema() -> &'static jsonschema::Validator {
    static SCHEMA: std::sync::OnceLock<jsonschema::Validator> = std::sync::OnceLock::new();
    SCHEMA.get_or_init(|| {
        let text = std::fs::read_to_string(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/docs/protocol.schema.json"
        ))
        .unwrap();
        let schema: serde_json::Value = serde_json::from_str(&text).unwrap();
        jsonschema::draft202012::new(&schema).unwrap()
    })
}

/// Panics unless `message` (a command or an event, as JSON) is valid under the protocol's
/// schema; `what` names it in the message.
pub fn assert_protocol(what: &str, message: &serde_json::Value) {
    let errors: Vec<String> = protocol_schema()
        .iter_errors(message)
        .map(|e| format!("{} at {}", e, e.instance_path()))
        .collect();
    assert!(
        errors.is_empty(),
        "{what} does not match docs/protocol.schema.json: {errors:#?}\n{message}"
    );
}
