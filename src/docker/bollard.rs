//! [`ContainerRuntime`] on a real Docker engine through `bollard`. This is the only module that
//! names `bollard` types; every error is mapped to [`RuntimeError`] here.

use std::collections::HashMap;
use std::time::Duration;

use async_trait::async_trait;
use bollard::Docker;
use bollard::auth::DockerCredentials;
use bollard::container::LogOutput;
use bollard::errors::Error as BollardError;
use bollard::models::{ContainerCreateBody, EventMessage, HostConfig};
use bollard::query_parameters::{
    AttachContainerOptions, CreateContainerOptions, CreateImageOptions, EventsOptions,
    InspectContainerOptions, KillContainerOptions, ListContainersOptions, LogsOptions,
    RemoveContainerOptions, RemoveImageOptions, StartContainerOptions, TopOptions,
    WaitContainerOptions,
};
use futures_util::stream::{BoxStream, StreamExt};

use super::{
    ContainerInfo, ContainerRuntime, ContainerSpec, ContainerSummary, Exit, LogChunk, LogStream,
    RegistryAuth, RuntimeError, Watch,
};
use crate::time;

/// The engine's unix socket: `DOCKER_HOST`'s `unix://` path, or the default socket when it is
/// unset; `None` for an engine reached otherwise (tcp, ssh).
fn unix_socket() -> Option<String> {
    match std::env::var("DOCKER_HOST") {
        Ok(host) if !host.is_empty() => host.strip_prefix("unix://").map(str::to_owned),
        _ => Some("/var/run/docker.sock".to_owned()),
    }
}

/// A client of the engine on the unix socket at `path` that keeps its connections for the next
/// request. bollard's own unix client keeps none (`pool_max_idle_per_host(0)`), so each of a
/// job's engine calls paid a connect, and dockerd a new connection, for one request. dockerd
/// does not close idle connections; one found closed when a request is sent is replaced
/// (hyper retries a request that was never written).
fn pooled_unix(path: &str) -> Result<Docker, BollardError> {
    let client = std::sync::Arc::new(
        hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
            .pool_idle_timeout(Duration::from_secs(30))
            .build(hyperlocal::UnixConnector),
    );
    // hyperlocal's form of the address: the socket's path, hex-encoded, as the host.
    let host: String = path.bytes().map(|b| format!("{b:02x}")).collect();
    Docker::connect_with_custom_transport(
        move |req: bollard::BollardRequest| {
            let client = client.clone();
            async move { client.request(req).await.map_err(BollardError::from) }
        },
        Some(format!("unix://{host}")),
        DEFAULT_API_TIMEOUT.as_secs(),
        bollard::API_DEFAULT_VERSION,
    )
}

/// Timeout for quick API calls (inspect, create, start, ...).
pub const DEFAULT_API_TIMEOUT: Duration = Duration::from_secs(120);
/// Timeout for calls that last as long as a container (wait, logs, pull).
pub const LONG_API_TIMEOUT: Duration = Duration::from_secs(7 * 24 * 3600);

/// The Docker engine, via `DOCKER_HOST` or the local socket.
#[derive(Debug, Clone)]
pub struct BollardRuntime {
    quick: Docker,
    long: Docker,
}

impl BollardRuntime {
    /// Connects with the local defaults (`DOCKER_HOST`, else `unix:///var/run/docker.sock`).
    /// No request is made until the first call.
    ///
    /// # Errors
    /// [`RuntimeError::Unreachable`] when the address is unusable.
    pub fn connect() -> Result<Self, RuntimeError> {
        match unix_socket() {
            Some(path) if std::path::Path::new(&path).exists() => Self::connect_unix(&path),
            _ => Docker::connect_with_local_defaults()
                .map(Self::with)
                .map_err(|e| map_err("connect", "docker", e)),
        }
    }

    /// Connects to the engine on the unix socket at `path`, whatever `DOCKER_HOST` says. No
    /// request is made until the first call.
    ///
    /// # Errors
    /// [`RuntimeError::Unreachable`] when the address is unusable.
    pub fn connect_unix(path: &str) -> Result<Self, RuntimeError> {
        let docker = pooled_unix(path).map_err(|e| map_err("connect", "docker", e))?;
        Ok(Self::with(docker))
    }

    fn with(docker: Docker) -> Self {
        BollardRuntime {
            quick: docker.clone().with_timeout(DEFAULT_API_TIMEOUT),
            long: docker.with_timeout(LONG_API_TIMEOUT),
        }
    }

    /// Waits until container `name` is gone, as another caller's removal ends: inspected every
    /// 50 ms for up to [`super::REMOVAL_WAIT`]. A container still there then is a
    /// [`RuntimeError::Conflict`].
    async fn until_removed(&self, name: &str) -> Result<(), RuntimeError> {
        let deadline = tokio::time::Instant::now() + super::REMOVAL_WAIT;
        loop {
            if self.inspect(name).await?.is_none() {
                return Ok(());
            }
            if tokio::time::Instant::now() >= deadline {
                return Err(RuntimeError::Conflict {
                    op: "remove",
                    target: name.to_string(),
                    message: format!(
                        "another removal of the container was still in progress after {} s",
                        super::REMOVAL_WAIT.as_secs()
                    ),
                });
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

/// A log or attach frame as the port's chunk; standard input's frames are dropped.
fn log_chunk(
    op: &'static str,
    target: &str,
    item: Result<LogOutput, BollardError>,
) -> Option<Result<LogChunk, RuntimeError>> {
    match item {
        Ok(LogOutput::StdOut { message }) | Ok(LogOutput::Console { message }) => {
            Some(Ok(LogChunk {
                stream: LogStream::Stdout,
                bytes: message.to_vec(),
            }))
        }
        Ok(LogOutput::StdErr { message }) => Some(Ok(LogChunk {
            stream: LogStream::Stderr,
            bytes: message.to_vec(),
        })),
        Ok(LogOutput::StdIn { .. }) => None,
        Err(e) => Some(Err(map_err(op, target, e))),
    }
}

/// Reads container events until the container's `die`: its exit code, and whether an `oom`
/// and a `start` came before it. A `destroy` first, or the stream's end, is an error.
async fn until_die(
    mut events: impl futures_util::Stream<Item = Result<EventMessage, BollardError>> + Unpin,
    target: String,
) -> Result<Exit, RuntimeError> {
    let at = |e: &EventMessage| {
        e.time_nano
            .map(chrono::DateTime::from_timestamp_nanos)
            .filter(|t: &time::Time| t.timestamp() > 0)
    };
    let mut oom_killed = false;
    let mut started_at = None;
    let gone = |message: &str| RuntimeError::Engine {
        op: "events",
        target: target.clone(),
        status: 0,
        message: message.to_string(),
    };
    while let Some(event) = events.next().await {
        let event = event.map_err(|e| map_err("events", &target, e))?;
        match event.action.as_deref() {
            Some("start") => started_at = at(&event),
            Some("oom") => oom_killed = true,
            Some("die") => {
                let code = event
                    .actor
                    .as_ref()
                    .and_then(|a| a.attributes.as_ref())
                    .and_then(|a| a.get("exitCode"))
                    .and_then(|c| c.parse::<i64>().ok())
                    .ok_or_else(|| gone("die event without an exit code"))?;
                return Ok(Exit {
                    code,
                    oom_killed,
                    started_at,
                    finished_at: at(&event),
                });
            }
            Some("destroy") => return Err(gone("container destroyed before it ended")),
            _ => {}
        }
    }
    Err(gone("event stream ended before the container did"))
}

/// Maps a bollard error to the port's error. Registry errors arrive as engine messages, so the
/// message text decides between not-found and not-allowed.
fn map_err(op: &'static str, target: &str, e: BollardError) -> RuntimeError {
    let target = target.to_string();
    match e {
        BollardError::DockerResponseServerError {
            status_code,
            message,
        } => classify(op, target, status_code, message),
        BollardError::DockerStreamError { error } => classify(op, target, 500, error),
        other => RuntimeError::Unreachable {
            op,
            target,
            source: Box::new(other),
        },
    }
}

fn classify(op: &'static str, target: String, status: u16, message: String) -> RuntimeError {
    let lower = message.to_ascii_lowercase();
    let denied = [
        "unauthorized",
        "authentication required",
        "no basic auth credentials",
        "incorrect username or password",
    ];
    let missing = [
        "not found",
        "manifest unknown",
        "does not exist",
        "no such image",
        "no such container",
    ];
    if status == 401 || status == 403 || denied.iter().any(|m| lower.contains(m)) {
        RuntimeError::NotAllowed {
            op,
            target,
            message,
        }
    } else if status == 404 || missing.iter().any(|m| lower.contains(m)) {
        RuntimeError::NotFound {
            op,
            target,
            message,
        }
    } else if status == 409 {
        RuntimeError::Conflict {
            op,
            target,
            message,
        }
    } else {
        RuntimeError::Engine {
            op,
            target,
            status,
            message,
        }
    }
}

#[async_trait]
impl ContainerRuntime for BollardRuntime {
    async fn ping(&self) -> Result<(), RuntimeError> {
        // The engine's network list, not `/_ping`: a deadlocked dockerd (20.10's libnetwork,
        // moby/moby#46661, docs/operations.md) still answers `/_ping` from its HTTP server while
        // its container calls hang; the list goes through its network controller and hangs with
        // them. (`/info` would too, but dockerd 20.10 runs `runc --version` and `docker-init
        // --version` for each, too much for a ping every second.)
        self.quick
            .list_networks(None::<bollard::query_parameters::ListNetworksOptions>)
            .await
            .map(|_| ())
            .map_err(|e| map_err("ping", "docker", e))
    }

    async fn image_present(&self, image: &str) -> Result<bool, RuntimeError> {
        match self.quick.inspect_image(image).await {
            Ok(_) => Ok(true),
            Err(e) => match map_err("inspect image", image, e) {
                RuntimeError::NotFound { .. } => Ok(false),
                e => Err(e),
            },
        }
    }

    async fn remove_image(&self, image: &str) -> Result<(), RuntimeError> {
        let opts = RemoveImageOptions {
            force: false,
            noprune: false,
        };
        match self.quick.remove_image(image, Some(opts), None).await {
            Ok(_) => Ok(()),
            Err(e) => match map_err("remove image", image, e) {
                RuntimeError::NotFound { .. } => Ok(()),
                e => Err(e),
            },
        }
    }

    async fn data_root(&self) -> Result<std::path::PathBuf, RuntimeError> {
        let info = self
            .quick
            .info()
            .await
            .map_err(|e| map_err("info", "engine", e))?;
        Ok(info
            .docker_root_dir
            .unwrap_or_else(|| "/var/lib/docker".into())
            .into())
    }

    async fn watch(&self, name: &str) -> Result<Option<Watch>, RuntimeError> {
        let Some(created) = self.inspect(name).await? else {
            return Err(RuntimeError::NotFound {
                op: "watch",
                target: name.to_string(),
                message: "no such container".to_string(),
            });
        };
        // Events since the container's creation (by the engine's clock), so those of a start
        // sent before the engine took this request are replayed from its buffer; by id, so no
        // earlier container of the same name is read.
        let since = created
            .raw
            .get("Created")
            .and_then(serde_json::Value::as_str)
            .and_then(|t| time::parse(t).ok())
            .map_or(0, |t| t.timestamp() - 1);
        let opts = EventsOptions {
            since: Some(since.to_string()),
            until: None,
            filters: Some(HashMap::from([
                ("type".to_string(), vec!["container".to_string()]),
                ("container".to_string(), vec![created.id.clone()]),
                (
                    "event".to_string(),
                    ["start", "oom", "die", "destroy"]
                        .map(String::from)
                        .to_vec(),
                ),
            ])),
        };
        let events = self.long.events(Some(opts));
        let exit = crate::par::Task::spawn(until_die(Box::pin(events), name.to_string()));
        let attach = AttachContainerOptions {
            stream: true,
            stdout: true,
            stderr: true,
            ..Default::default()
        };
        let attached = self
            .long
            .attach_container(name, Some(attach))
            .await
            .map_err(|e| map_err("attach", name, e))?;
        let target = name.to_string();
        let output = attached
            .output
            .filter_map(move |item| std::future::ready(log_chunk("attach", &target, item)))
            .boxed();
        let target = name.to_string();
        Ok(Some(Watch {
            created,
            output,
            exit: Box::pin(async move {
                exit.await.unwrap_or_else(|| {
                    Err(RuntimeError::Engine {
                        op: "events",
                        target,
                        status: 0,
                        message: "the event reader stopped".to_string(),
                    })
                })
            }),
        }))
    }

    async fn pull(&self, image: &str, auth: Option<RegistryAuth>) -> Result<(), RuntimeError> {
        let opts = CreateImageOptions {
            from_image: Some(image.to_string()),
            ..Default::default()
        };
        let creds = auth.map(|a| DockerCredentials {
            username: Some(a.username),
            password: Some(a.password),
            serveraddress: Some(a.server),
            ..Default::default()
        });
        let mut stream = self.long.create_image(Some(opts), None, creds);
        // Consume the whole progress stream; an error item fails the pull.
        while let Some(item) = stream.next().await {
            let info = item.map_err(|e| map_err("pull", image, e))?;
            if let Some(err) = info.error_detail.and_then(|d| d.message) {
                return Err(classify("pull", image.to_string(), 500, err));
            }
        }
        Ok(())
    }

    async fn create(&self, spec: &ContainerSpec) -> Result<String, RuntimeError> {
        let host = HostConfig {
            binds: Some(
                spec.binds
                    .iter()
                    .map(|b| format!("{}:{}", b.host, b.container))
                    .collect(),
            ),
            network_mode: Some(spec.network_mode.clone()),
            oom_score_adj: Some(spec.oom_score_adj),
            memory: spec.memory,
            memory_swap: spec.memory_swap,
            ..Default::default()
        };
        let body = ContainerCreateBody {
            image: Some(spec.image.clone()),
            entrypoint: Some(spec.entrypoint.clone()),
            cmd: Some(Vec::new()),
            env: Some(spec.env.clone()),
            labels: Some(
                spec.labels
                    .iter()
                    .map(|(k, v)| (k.clone(), v.clone()))
                    .collect::<HashMap<_, _>>(),
            ),
            user: spec.user.clone(),
            // No network, said to the engine as such: it then skips its network set-up hook
            // (up to Docker 27, a re-execution of dockerd in every container's start, about a
            // third of a trivial container's CPU). runc still gives the container its own
            // network namespace, with the loopback interface up, as `--network none` does.
            network_disabled: Some(spec.network_mode == "none"),
            host_config: Some(host),
            ..Default::default()
        };
        let opts = CreateContainerOptions {
            name: Some(spec.name.clone()),
            ..Default::default()
        };
        let resp = self
            .quick
            .create_container(Some(opts), body)
            .await
            .map_err(|e| map_err("create", &spec.name, e))?;
        Ok(resp.id)
    }

    async fn start(&self, name: &str) -> Result<(), RuntimeError> {
        match self
            .quick
            .start_container(name, None::<StartContainerOptions>)
            .await
        {
            Ok(()) => Ok(()),
            // 304: already started.
            Err(BollardError::DockerResponseServerError {
                status_code: 304, ..
            }) => Ok(()),
            Err(e) => Err(map_err("start", name, e)),
        }
    }

    async fn inspect(&self, name: &str) -> Result<Option<ContainerInfo>, RuntimeError> {
        let resp = match self
            .quick
            .inspect_container(name, None::<InspectContainerOptions>)
            .await
        {
            Ok(r) => r,
            Err(e) => {
                return match map_err("inspect", name, e) {
                    RuntimeError::NotFound { .. } => Ok(None),
                    e => Err(e),
                };
            }
        };
        let mut raw = serde_json::to_value(&resp).unwrap_or(serde_json::Value::Null);
        super::redact_env(&mut raw);
        let state = resp.state.unwrap_or_default();
        let parse = |s: Option<String>| {
            s.and_then(|s| time::parse(&s).ok())
                .filter(|t| !time::is_zero(t) && t.timestamp() > 0)
        };
        Ok(Some(ContainerInfo {
            id: resp.id.unwrap_or_default(),
            running: state.running.unwrap_or(false),
            status: state.status.map(|s| s.to_string()).unwrap_or_default(),
            exit_code: state.exit_code.unwrap_or(0),
            oom_killed: state.oom_killed.unwrap_or(false),
            pid: state.pid.unwrap_or(0),
            started_at: parse(state.started_at),
            finished_at: parse(state.finished_at),
            raw,
        }))
    }

    async fn wait(&self, name: &str) -> Result<i64, RuntimeError> {
        let opts = WaitContainerOptions {
            condition: "not-running".to_string(),
        };
        let mut stream = self.long.wait_container(name, Some(opts));
        match stream.next().await {
            Some(Ok(r)) => Ok(r.status_code),
            // bollard reports any non-zero exit as an error; it is an exit code, not a failure.
            Some(Err(BollardError::DockerContainerWaitError { code, .. })) => Ok(code),
            Some(Err(e)) => Err(map_err("wait", name, e)),
            None => Err(RuntimeError::Engine {
                op: "wait",
                target: name.to_string(),
                status: 0,
                message: "wait stream ended without a status".to_string(),
            }),
        }
    }

    fn logs(&self, name: &str) -> BoxStream<'static, Result<LogChunk, RuntimeError>> {
        let opts = LogsOptions {
            stdout: true,
            stderr: true,
            follow: false,
            ..Default::default()
        };
        let target = name.to_string();
        self.long
            .logs(name, Some(opts))
            .filter_map(move |item| std::future::ready(log_chunk("logs", &target, item)))
            .boxed()
    }

    async fn kill(&self, name: &str) -> Result<(), RuntimeError> {
        let opts = KillContainerOptions {
            signal: "SIGKILL".to_string(),
        };
        match self.quick.kill_container(name, Some(opts)).await {
            Ok(()) => Ok(()),
            Err(e) => match map_err("kill", name, e) {
                // Gone, or not running: nothing to kill.
                RuntimeError::NotFound { .. } | RuntimeError::Conflict { .. } => Ok(()),
                e => Err(e),
            },
        }
    }

    async fn remove(&self, name: &str, force: bool) -> Result<(), RuntimeError> {
        let opts = RemoveContainerOptions {
            force,
            ..Default::default()
        };
        match self.quick.remove_container(name, Some(opts)).await {
            Ok(()) => Ok(()),
            Err(e) => match map_err("remove", name, e) {
                RuntimeError::NotFound { .. } => Ok(()),
                // Another caller's removal (often one that an agent process sent just before it
                // was killed, which the engine carries out anyway). Until it ends, the name is
                // still taken: a create answers Conflict and a start fails later with "No such
                // container". So this removal ends when that one does.
                RuntimeError::Conflict { message, .. } if super::removal_in_progress(&message) => {
                    self.until_removed(name).await
                }
                e => Err(e),
            },
        }
    }

    async fn list_labeled(
        &self,
        key: &str,
        value: &str,
    ) -> Result<Vec<ContainerSummary>, RuntimeError> {
        let opts = ListContainersOptions {
            all: true,
            filters: Some(HashMap::from([(
                "label".to_string(),
                vec![format!("{key}={value}")],
            )])),
            ..Default::default()
        };
        let list = self
            .quick
            .list_containers(Some(opts))
            .await
            .map_err(|e| map_err("list", key, e))?;
        Ok(list
            .into_iter()
            .map(|c| ContainerSummary {
                id: c.id.unwrap_or_default(),
                name: c
                    .names
                    .and_then(|n| n.into_iter().next())
                    .map(|n| n.trim_start_matches('/').to_string())
                    .unwrap_or_default(),
                labels: c.labels.unwrap_or_default().into_iter().collect(),
                state: c.state.map(|s| s.to_string()).unwrap_or_default(),
            })
            .collect())
    }

    async fn top(&self, name: &str) -> Result<Vec<String>, RuntimeError> {
        let opts = TopOptions {
            ps_args: "auwx".to_string(),
        };
        let top = self
            .quick
            .top_processes(name, Some(opts))
            .await
            .map_err(|e| map_err("top", name, e))?;
        let idx = top
            .titles
            .unwrap_or_default()
            .iter()
            .position(|t| t == "COMMAND" || t == "CMD")
            .unwrap_or(0);
        Ok(top
            .processes
            .unwrap_or_default()
            .into_iter()
            .filter_map(|p| p.get(idx).cloned())
            .collect())
    }
}

#[cfg(test)]
mod tests {
    use std::io::{Read, Write};

    use super::*;

    fn event(
        action: &str,
        at_ns: i64,
        attrs: &[(&str, &str)],
    ) -> Result<EventMessage, BollardError> {
        Ok(EventMessage {
            action: Some(action.to_string()),
            actor: Some(bollard::models::EventActor {
                id: Some("abc".to_string()),
                attributes: Some(
                    attrs
                        .iter()
                        .map(|(k, v)| (k.to_string(), v.to_string()))
                        .collect(),
                ),
            }),
            time_nano: Some(at_ns),
            ..Default::default()
        })
    }

    #[tokio::test]
    async fn the_die_event_gives_the_exit_and_an_oom_before_it_is_kept() {
        let s = 1_800_000_000_000_000_000;
        let events = futures_util::stream::iter(vec![
            event("create", s, &[]),
            event("start", s + 1, &[]),
            event("oom", s + 2, &[]),
            event("die", s + 3, &[("exitCode", "137"), ("name", "c")]),
        ]);
        let exit = until_die(events, "c".into()).await.unwrap();
        assert_eq!(exit.code, 137);
        assert!(exit.oom_killed);
        assert_eq!(exit.started_at.unwrap().timestamp_nanos_opt(), Some(s + 1));
        assert_eq!(exit.finished_at.unwrap().timestamp_nanos_opt(), Some(s + 3));
        // A destroy first, a die without a code, or a stream that ends: no exit.
        for events in [
            vec![event("destroy", s, &[])],
            vec![event("die", s, &[])],
            vec![event("start", s, &[])],
        ] {
            let e = until_die(futures_util::stream::iter(events), "c".into()).await;
            assert!(e.is_err(), "{e:?}");
        }
    }

    /// Serves, on `path`, an engine whose HTTP server answers `/_ping` and holds every other
    /// request unanswered, as dockerd 20.10 deadlocked in libnetwork did (docs/operations.md).
    fn wedged_engine(path: &std::path::Path) {
        let listener = std::os::unix::net::UnixListener::bind(path).unwrap();
        std::thread::spawn(move || {
            for conn in listener.incoming() {
                let Ok(mut conn) = conn else { return };
                std::thread::spawn(move || {
                    let mut buf = [0u8; 4096];
                    while let Ok(n @ 1..) = conn.read(&mut buf) {
                        let req = String::from_utf8_lossy(&buf[..n]).into_owned();
                        let path = req.split_whitespace().nth(1).unwrap_or_default();
                        if !path.ends_with("/_ping") {
                            // Held: the connection stays open and nothing is answered.
                            std::thread::sleep(Duration::from_secs(60));
                            return;
                        }
                        let ok = b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: 2\r\n\r\nOK";
                        if conn.write_all(ok).is_err() {
                            return;
                        }
                    }
                });
            }
        });
    }

    #[tokio::test]
    async fn an_engine_that_answers_pings_but_not_container_calls_is_not_up() {
        let dir = tempfile::tempdir().unwrap();
        let sock = dir.path().join("docker.sock");
        wedged_engine(&sock);
        let rt = BollardRuntime::connect_unix(sock.to_str().unwrap()).unwrap();
        let pinged = rt.quick.ping().await;
        assert!(pinged.is_ok(), "its HTTP server answers /_ping: {pinged:?}");
        assert!(
            !crate::docker::health::answers(&rt).await,
            "the agent does not take it for up"
        );
    }
}
