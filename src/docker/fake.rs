//! An in-memory [`ContainerRuntime`] for component tests (feature `test-util`): containers
//! "run" as timers, write their scripted outputs into the bind-mounted `/return`, and exit with
//! scripted codes. Every call is recorded so tests can count creates and pulls.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use futures_util::stream::{self, BoxStream, StreamExt};
use tokio::sync::watch;

use super::{
    ContainerInfo, ContainerRuntime, ContainerSpec, ContainerSummary, LogChunk, LogStream,
    RegistryAuth, RuntimeError,
};
use crate::clock::Clock;
use crate::par::lock;

/// What a fake container does when started.
#[derive(Debug, Clone, Default)]
pub struct FakeExit {
    /// Exit code.
    pub code: i64,
    /// Whether the engine reports an OOM kill.
    pub oom_killed: bool,
    /// Bytes written to stdout.
    pub stdout: Vec<u8>,
    /// Bytes written to stderr.
    pub stderr: Vec<u8>,
    /// Files written under `/return` (relative path, contents) before exiting.
    pub outputs: Vec<(String, Vec<u8>)>,
    /// How long it runs.
    pub runtime: Duration,
    /// Never exits, and `top` shows no processes (a hanging container).
    pub hang: bool,
}

/// Decides each container's behaviour from its spec.
pub type Script = Arc<dyn Fn(&ContainerSpec) -> FakeExit + Send + Sync>;

#[derive(Debug)]
struct Container {
    spec: ContainerSpec,
    id: String,
    running: bool,
    exit: Option<(i64, bool)>,
    logs: (Vec<u8>, Vec<u8>),
    hang: bool,
    done: watch::Sender<bool>,
    /// Another caller's removal is under way: the name stays taken, a start is refused, and
    /// a second removal waits for it (see [`FakeRuntime::begin_removal`]).
    removing: bool,
}

#[derive(Debug, Default)]
struct State {
    containers: BTreeMap<String, Container>,
    images: BTreeSet<String>,
    calls: Vec<String>,
    specs: BTreeMap<String, ContainerSpec>,
    next_id: u64,
    down: bool,
    /// Calls to hold back once, as (op, target, how long): see [`FakeRuntime::delay_next`].
    delays: Vec<(String, String, Duration)>,
    /// Starts to refuse once, as (container name prefix, message): see
    /// [`FakeRuntime::refuse_next_start`].
    refusals: Vec<(String, String)>,
}

/// The fake engine.
pub struct FakeRuntime {
    state: Arc<Mutex<State>>,
    script: Script,
    clock: Arc<dyn Clock>,
    pull_outcome: Mutex<HashMap<String, Result<(), String>>>,
}

impl std::fmt::Debug for FakeRuntime {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FakeRuntime").finish_non_exhaustive()
    }
}

impl FakeRuntime {
    /// A fake engine where `images` are present and containers behave as `script` says.
    pub fn new(images: &[&str], script: Script, clock: Arc<dyn Clock>) -> Arc<Self> {
        let state = State {
            images: images.iter().map(|s| s.to_string()).collect(),
            ..State::default()
        };
        Arc::new(FakeRuntime {
            state: Arc::new(Mutex::new(state)),
            script,
            clock,
            pull_outcome: Mutex::new(HashMap::new()),
        })
    }

    /// Makes pulls of `image` succeed (`Ok`) or fail with a "not found" message (`Err`).
    pub fn set_pull(&self, image: &str, outcome: Result<(), String>) {
        lock(&self.pull_outcome).insert(image.to_string(), outcome);
    }

    /// Makes the engine answer pings (`false`) or not (`true`), as a stopped dockerd.
    pub fn set_down(&self, down: bool) {
        lock(&self.state).down = down;
    }

    /// Makes the next `op` call on `target` wait `d` before the engine acts, as a busy engine's:
    /// a window for races. `op` is `list` (target: the label value), `remove` or `start`
    /// (target: the container name, or its start). Delays set for the same call are used in
    /// the order they were set, one per call.
    pub fn delay_next(&self, op: &str, target: &str, d: Duration) {
        lock(&self.state)
            .delays
            .push((op.to_string(), target.to_string(), d));
    }

    /// Makes the next start of the container whose name starts with `prefix` fail as not found
    /// with the engine's `message` (as a start whose process cannot be found does), leaving
    /// the container as it is.
    pub fn refuse_next_start(&self, prefix: &str, message: &str) {
        lock(&self.state)
            .refusals
            .push((prefix.to_string(), message.to_string()));
    }

    /// Waits out the delay set for this `op` on `target`, if any (once).
    async fn delayed(&self, op: &str, target: &str) {
        let d = {
            let mut st = lock(&self.state);
            let i = st
                .delays
                .iter()
                .position(|(o, t, _)| o == op && target.starts_with(t.as_str()));
            i.map(|i| st.delays.remove(i).2)
        };
        if let Some(d) = d {
            tokio::time::sleep(d).await;
        }
    }

    /// Begins another caller's removal of container `name` (as one an agent sent just before
    /// it was killed), which ends after `takes`: meanwhile the engine reports it `removing`,
    /// a create of its name conflicts and a start of it is refused. Not recorded as a call.
    pub fn begin_removal(&self, name: &str, takes: Duration) {
        {
            let mut st = lock(&self.state);
            let Some(c) = st.containers.get_mut(name) else {
                return;
            };
            c.removing = true;
            c.running = false;
            c.done.send_replace(true);
        }
        let (state, name) = (self.state.clone(), name.to_string());
        tokio::spawn(async move {
            tokio::time::sleep(takes).await;
            lock(&state).containers.remove(&name);
        });
    }

    /// Every call made, as `op name` strings, in order.
    pub fn calls(&self) -> Vec<String> {
        lock(&self.state).calls.clone()
    }

    /// The spec of every container created so far, by name (removed ones included).
    pub fn specs(&self) -> BTreeMap<String, ContainerSpec> {
        lock(&self.state).specs.clone()
    }

    /// How many calls started with `prefix`.
    pub fn count(&self, prefix: &str) -> usize {
        lock(&self.state)
            .calls
            .iter()
            .filter(|c| c.starts_with(prefix))
            .count()
    }

    fn record(&self, call: String) {
        lock(&self.state).calls.push(call);
    }

    fn finish(state: &Mutex<State>, name: &str, code: i64, oom: bool) {
        let mut st = lock(state);
        if let Some(c) = st.containers.get_mut(name)
            && c.running
        {
            c.running = false;
            c.exit = Some((code, oom));
            c.done.send_replace(true);
        }
    }
}

fn return_dir(spec: &ContainerSpec) -> Option<PathBuf> {
    spec.binds
        .iter()
        .find(|b| b.container == "/return")
        .map(|b| PathBuf::from(&b.host))
}

fn not_found(op: &'static str, target: &str) -> RuntimeError {
    RuntimeError::NotFound {
        op,
        target: target.to_string(),
        message: "no such container".to_string(),
    }
}

#[async_trait]
impl ContainerRuntime for FakeRuntime {
    async fn ping(&self) -> Result<(), RuntimeError> {
        if lock(&self.state).down {
            return Err(RuntimeError::Engine {
                op: "ping",
                target: String::new(),
                status: 503,
                message: "engine stopped".into(),
            });
        }
        Ok(())
    }

    async fn remove_image(&self, image: &str) -> Result<(), RuntimeError> {
        lock(&self.state).images.remove(image);
        Ok(())
    }

    async fn data_root(&self) -> Result<std::path::PathBuf, RuntimeError> {
        Ok(std::env::temp_dir())
    }

    async fn image_present(&self, image: &str) -> Result<bool, RuntimeError> {
        self.record(format!("image {image}"));
        Ok(lock(&self.state).images.contains(image))
    }

    async fn pull(&self, image: &str, _auth: Option<RegistryAuth>) -> Result<(), RuntimeError> {
        self.record(format!("pull {image}"));
        tokio::time::sleep(Duration::from_millis(50)).await;
        let outcome = lock(&self.pull_outcome).get(image).cloned();
        match outcome {
            Some(Ok(())) => {
                lock(&self.state).images.insert(image.to_string());
                Ok(())
            }
            Some(Err(message)) => Err(RuntimeError::NotFound {
                op: "pull",
                target: image.to_string(),
                message,
            }),
            None => Err(RuntimeError::Engine {
                op: "pull",
                target: image.to_string(),
                status: 500,
                message: "registry unreachable".into(),
            }),
        }
    }

    async fn create(&self, spec: &ContainerSpec) -> Result<String, RuntimeError> {
        self.record(format!("create {}", spec.name));
        let mut st = lock(&self.state);
        if st.containers.contains_key(&spec.name) {
            return Err(RuntimeError::Conflict {
                op: "create",
                target: spec.name.clone(),
                message: "name in use".into(),
            });
        }
        st.next_id += 1;
        st.specs.insert(spec.name.clone(), spec.clone());
        let id = format!("fake{:060}", st.next_id);
        let c = Container {
            spec: spec.clone(),
            id: id.clone(),
            running: false,
            exit: None,
            logs: (Vec::new(), Vec::new()),
            hang: false,
            done: watch::Sender::new(false),
            removing: false,
        };
        st.containers.insert(spec.name.clone(), c);
        Ok(id)
    }

    async fn start(&self, name: &str) -> Result<(), RuntimeError> {
        self.record(format!("start {name}"));
        self.delayed("start", name).await;
        let exit = {
            let mut st = lock(&self.state);
            if let Some(i) = st
                .refusals
                .iter()
                .position(|(p, _)| name.starts_with(p.as_str()))
            {
                let (_, message) = st.refusals.remove(i);
                return Err(RuntimeError::NotFound {
                    op: "start",
                    target: name.to_string(),
                    message,
                });
            }
            let c = st
                .containers
                .get_mut(name)
                .ok_or_else(|| not_found("start", name))?;
            if c.removing {
                return Err(RuntimeError::Conflict {
                    op: "start",
                    target: name.to_string(),
                    message: "container is marked for removal and cannot be started".into(),
                });
            }
            if c.running || c.exit.is_some() {
                return Ok(());
            }
            let exit = (self.script)(&c.spec);
            c.running = true;
            c.hang = exit.hang;
            c.logs = (exit.stdout.clone(), exit.stderr.clone());
            (exit, return_dir(&c.spec))
        };
        let (exit, ret) = exit;
        if exit.hang {
            return Ok(());
        }
        let state = self.state.clone();
        let name = name.to_string();
        tokio::spawn(async move {
            tokio::time::sleep(exit.runtime).await;
            if let Some(ret) = ret {
                for (rel, bytes) in &exit.outputs {
                    let p = ret.join(rel);
                    if let Some(parent) = p.parent() {
                        let _ = std::fs::create_dir_all(parent);
                    }
                    let _ = std::fs::write(p, bytes);
                }
            }
            FakeRuntime::finish(&state, &name, exit.code, exit.oom_killed);
        });
        Ok(())
    }

    async fn inspect(&self, name: &str) -> Result<Option<ContainerInfo>, RuntimeError> {
        self.record(format!("inspect {name}"));
        let st = lock(&self.state);
        let now = self.clock.now();
        Ok(st.containers.get(name).map(|c| ContainerInfo {
            id: c.id.clone(),
            running: c.running,
            status: if c.removing {
                "removing"
            } else if c.running {
                "running"
            } else if c.exit.is_some() {
                "exited"
            } else {
                "created"
            }
            .to_string(),
            exit_code: c.exit.map(|e| e.0).unwrap_or(0),
            oom_killed: c.exit.map(|e| e.1).unwrap_or(false),
            pid: if c.running { 4_000_000 } else { 0 },
            started_at: (c.running || c.exit.is_some()).then_some(now),
            finished_at: c.exit.map(|_| now),
            raw: serde_json::json!({"Id": c.id, "Name": format!("/{name}")}),
        }))
    }

    async fn wait(&self, name: &str) -> Result<i64, RuntimeError> {
        let mut rx = {
            let st = lock(&self.state);
            st.containers
                .get(name)
                .ok_or_else(|| not_found("wait", name))?
                .done
                .subscribe()
        };
        let _ = rx.wait_for(|d| *d).await;
        let st = lock(&self.state);
        Ok(st
            .containers
            .get(name)
            .and_then(|c| c.exit)
            .map(|e| e.0)
            .unwrap_or(137))
    }

    fn logs(&self, name: &str) -> BoxStream<'static, Result<LogChunk, RuntimeError>> {
        let logs = lock(&self.state)
            .containers
            .get(name)
            .map(|c| c.logs.clone())
            .unwrap_or_default();
        stream::iter(vec![
            Ok(LogChunk {
                stream: LogStream::Stdout,
                bytes: logs.0,
            }),
            Ok(LogChunk {
                stream: LogStream::Stderr,
                bytes: logs.1,
            }),
        ])
        .boxed()
    }

    async fn kill(&self, name: &str) -> Result<(), RuntimeError> {
        self.record(format!("kill {name}"));
        FakeRuntime::finish(&self.state, name, 137, false);
        Ok(())
    }

    async fn remove(&self, name: &str, force: bool) -> Result<(), RuntimeError> {
        self.record(format!("remove {name}"));
        self.delayed("remove", name).await;
        // Another caller's removal: this one ends when that one does (the port's contract).
        while lock(&self.state)
            .containers
            .get(name)
            .is_some_and(|c| c.removing)
        {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        let mut st = lock(&self.state);
        if let Some(c) = st.containers.get(name) {
            if c.running && !force {
                return Err(RuntimeError::Conflict {
                    op: "remove",
                    target: name.to_string(),
                    message: "container is running".into(),
                });
            }
            c.done.send_replace(true);
            st.containers.remove(name);
        }
        Ok(())
    }

    async fn list_labeled(
        &self,
        key: &str,
        value: &str,
    ) -> Result<Vec<ContainerSummary>, RuntimeError> {
        self.record(format!("list {value}"));
        self.delayed("list", value).await;
        Ok(lock(&self.state)
            .containers
            .iter()
            .filter(|(_, c)| c.spec.labels.get(key).is_some_and(|v| v == value))
            .map(|(name, c)| ContainerSummary {
                id: c.id.clone(),
                name: name.clone(),
                labels: c.spec.labels.clone(),
                state: if c.removing {
                    "removing"
                } else if c.running {
                    "running"
                } else {
                    "exited"
                }
                .to_string(),
            })
            .collect())
    }

    async fn top(&self, name: &str) -> Result<Vec<String>, RuntimeError> {
        let st = lock(&self.state);
        let c = st
            .containers
            .get(name)
            .ok_or_else(|| not_found("top", name))?;
        Ok(if c.running && !c.hang {
            vec![c.spec.entrypoint.join(" ")]
        } else {
            Vec::new()
        })
    }
}
