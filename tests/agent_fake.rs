//! The whole agent (`agent::run_with`: pool, control plane, admin-less background tasks and
//! the shutdown order) on fakes: a spool queue, the fake container runtime, the memory TaskDB
//! and claims, and the in-memory blob store. Jobs read from and write to `s3://`, a lying
//! object fails with an integrity error, and the agent stops on request and when idle.
#![cfg(feature = "test-util")]

use std::sync::Arc;
use std::time::Duration;

use reflow_agent::agent::{self, Exit, Lifecycle, Ports};
use reflow_agent::blob::BlobUrl;
use reflow_agent::blob::memory::MemoryStore;
use reflow_agent::clock::SystemClock;
use reflow_agent::config::{Config, Resolved};
use reflow_agent::digest::Digest;
use reflow_agent::docker::ContainerSpec;
use reflow_agent::docker::fake::{FakeExit, FakeRuntime};
use reflow_agent::error::Kind;
use reflow_agent::fileset::File;
use reflow_agent::protocol::{Event, EventBody};
use reflow_agent::queue::spool::Spool;
use reflow_agent::queue::{Client, EventWatch};
use reflow_agent::taskdb::claims::MemoryClaims;
use reflow_agent::taskdb::{MemoryTaskDb, TaskDbCall, pool_row};

const IMAGE: &str = "fake/image:1";

struct Agent {
    dir: tempfile::TempDir,
    fake: Arc<FakeRuntime>,
    store: Arc<MemoryStore>,
    taskdb: Arc<MemoryTaskDb>,
    stop: tokio::sync::oneshot::Sender<()>,
    task: tokio::task::JoinHandle<Result<Exit, agent::AgentError>>,
}

fn config(dir: &std::path::Path, extra: &str) -> Resolved {
    let toml = format!(
        "[agent]\nstate_dir = \"{state}\"\npool_id = \"fake-agent\"\ninterruption_poll_secs = 0\n{extra}\n\
         [queue]\nurl = \"spool://{spool}\"\nmax_jobs = 2\ndrain_grace_secs = 10\n\
         [admin]\nlisten = \"off\"\n[security]\nrepositories = [\"s3://bucket/repo\"]\n",
        state = dir.join("state").display(),
        spool = dir.join("spool").display(),
    );
    let path = dir.join("agent.toml");
    std::fs::write(&path, toml).unwrap();
    Config::resolve(Some(&path), [], &Default::default()).unwrap()
}

async fn start(extra: &str) -> Agent {
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(dir.path(), extra);
    // Each container writes its command, upper-cased, as its output.
    let fake = FakeRuntime::new(
        &[IMAGE],
        Arc::new(|spec: &ContainerSpec| FakeExit {
            outputs: vec![(
                "default".into(),
                spec.entrypoint.last().unwrap().to_uppercase().into_bytes(),
            )],
            runtime: Duration::from_millis(50),
            ..FakeExit::default()
        }),
        Arc::new(SystemClock),
    );
    let store = Arc::new(MemoryStore::new());
    let taskdb = Arc::new(MemoryTaskDb::default());
    let life = Lifecycle::new();
    let (queue, queue_ok) = agent::open_queue(&cfg, &life).await.unwrap();
    let ports = Ports {
        runtime: fake.clone(),
        clock: Arc::new(SystemClock),
        queue,
        queue_ok,
        blob: Some(store.clone()),
        taskdb: taskdb.clone(),
        claims: Some(Arc::new(MemoryClaims::default())),
        auth: None,
        aws_credentials: None,
        oom: Vec::new(),
        metrics: Arc::default(),
        notifier: Default::default(),
    };
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let task = tokio::spawn(agent::run_with(cfg, None, ports, life, async {
        let _ = stopped.await;
    }));
    Agent {
        dir,
        fake,
        store,
        taskdb,
        stop,
        task,
    }
}

impl Agent {
    fn spool(&self) -> Spool {
        Spool::open(self.dir.path().join("spool")).unwrap()
    }

    fn send(&self, v: &serde_json::Value) {
        let id = v["id"].as_str().unwrap();
        self.spool()
            .submit(id, &serde_json::to_vec(v).unwrap())
            .unwrap();
    }

    async fn stop(self) -> (Exit, tempfile::TempDir) {
        let _ = self.stop.send(());
        let exit = tokio::time::timeout(Duration::from_secs(30), self.task)
            .await
            .expect("the agent stops")
            .unwrap()
            .unwrap();
        (exit, self.dir)
    }
}

/// The events seen so far, and more as they come.
struct Watch {
    watch: Box<dyn EventWatch>,
    seen: Vec<Event>,
}

impl Watch {
    async fn outcome(&mut self, id: &str, kind: &str) -> Event {
        let is = |e: &Event| e.command.as_deref() == Some(id) && e.body.kind() == kind;
        if let Some(e) = self.seen.iter().find(|e| is(e)) {
            return e.clone();
        }
        tokio::time::timeout(Duration::from_secs(20), async {
            loop {
                let e = self.watch.next().await.unwrap();
                self.seen.push(e.clone());
                if is(&e) {
                    return e;
                }
            }
        })
        .await
        .unwrap_or_else(|_| panic!("no {kind} for {id}"))
    }
}

fn job(id: &str, cmd: &str, input: Option<File>) -> serde_json::Value {
    let mut j = serde_json::json!({"v": 1, "id": id, "kind": "job", "body": {
        "config": {"Type": "exec", "Image": IMAGE, "Cmd": cmd,
                   "Resources": {"mem": 1048576, "cpu": 0.1}}}});
    if let Some(f) = input {
        j["body"]["config"]["Args"] =
            serde_json::json!([{"Out": false, "Index": 0, "Fileset": {"Fileset": {".": f}}}]);
        j["body"]["config"]["Cmd"] = format!("{cmd} %s").into();
        j["body"]["inputs_from"] = "s3://bucket/repo".into();
        j["body"]["outputs_to"] = "s3://bucket/repo".into();
    }
    j
}

#[tokio::test]
async fn jobs_read_and_write_s3_and_the_agent_stops_in_order() {
    let a = start("").await;
    let mut watch = Watch {
        watch: Client::watch(&a.spool(), None).await.unwrap(),
        seen: Vec::new(),
    };
    let repo = BlobUrl::parse("s3://bucket/repo").unwrap();

    a.send(&job("plain", "echo plain > $out", None));
    let e = watch.outcome("plain", "exec.completed").await;
    let EventBody::ExecCompleted { result, .. } = &e.body else {
        unreachable!()
    };
    assert!(result.err.is_none(), "{:?}", result.err);
    assert_eq!(
        result.fileset.files()[0].id,
        Digest::of(b"ECHO PLAIN > $OUT")
    );

    // Input from the s3:// repository, output to it.
    let input = b"from the bucket";
    let d = Digest::of(input);
    a.store.put("bucket", &repo.object_key(&d), input);
    let f = File::resolved(d, input.len() as u64);
    a.send(&job("s3", "tr", Some(f)));
    let e = watch.outcome("s3", "exec.completed").await;
    let EventBody::ExecCompleted {
        result, locations, ..
    } = &e.body
    else {
        unreachable!()
    };
    assert!(result.err.is_none(), "{:?}", result.err);
    let out = result.fileset.files()[0].id;
    let key = repo.object_key(&out);
    let (bytes, meta) = a
        .store
        .get("bucket", &key)
        .expect("the output was uploaded");
    assert_eq!((Digest::of(&bytes), meta), (out, Some(out)));
    let loc = locations.as_ref().unwrap()["."].clone();
    assert_eq!(loc, format!("s3://bucket/{key}"));

    // An object that does not hold the bytes its name promises.
    let claimed = Digest::of(b"what the producer claims");
    a.store.put_with_sha256(
        "bucket",
        &repo.object_key(&claimed),
        b"other",
        Some(claimed),
    );
    a.send(&job("lie", "tr", Some(File::resolved(claimed, 5))));
    let e = watch.outcome("lie", "exec.completed").await;
    let EventBody::ExecCompleted { result, .. } = &e.body else {
        unreachable!()
    };
    assert_eq!(result.err.as_ref().map(|e| e.kind), Some(Kind::Integrity));
    watch.outcome("lie", "integrity.error").await;
    assert_eq!(a.fake.count("create"), 2, "the lying job ran no container");

    let taskdb = a.taskdb.clone();
    let (exit, dir) = a.stop().await;
    assert_eq!(exit, Exit::Shutdown);
    // The pool's row says it is draining; nothing is left in flight.
    let row = pool_row("fake-agent");
    assert!(
        taskdb
            .calls()
            .iter()
            .any(|c| matches!(c, TaskDbCall::State(r, s) if *r == row && s == "draining")),
        "{:?}",
        taskdb.calls()
    );
    let spool = Spool::open(dir.path().join("spool")).unwrap();
    assert!(spool.list("incoming").is_empty() && spool.list("processing").is_empty());
}

#[tokio::test]
async fn an_idle_agent_exits_for_scale_in() {
    let a = start("idle_exit_after_secs = 1").await;
    let exit = tokio::time::timeout(Duration::from_secs(30), a.task)
        .await
        .expect("the idle agent exits by itself")
        .unwrap()
        .unwrap();
    assert_eq!(exit, Exit::Idle);
}
