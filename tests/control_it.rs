//! The queue control plane end to end: `reflow-agent serve` processes on real RabbitMQ, moto's
//! SQS and the spool, running real containers on dockerd. Containers are counted with
//! `docker events`, independently of the agent.
#![cfg(feature = "integration")]

use crate::common;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::*;
use reflow_agent::control::job_alloc_id;
use reflow_agent::protocol::{Event, EventBody};
use reflow_agent::queue::{self, Client};

/// [`amqp`] through a local proxy listening on `port` (the broker must be the local one).
fn amqp_via(port: u16) -> String {
    amqp().replacen("127.0.0.1:5672", &format!("127.0.0.1:{port}"), 1)
}

/// A unique suffix for names of this test run.
fn uniq(label: &str) -> String {
    format!("{label}-{}", &new_id(label).hex()[..10])
}

/// The logs of the agents this test started, shown when an awaited event never comes.
static AGENT_LOGS: std::sync::Mutex<Vec<PathBuf>> = std::sync::Mutex::new(Vec::new());

/// The last `n` lines of `text`.
fn tail(text: &str, n: usize) -> String {
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

/// The agent's own lines of a log: a broken link fills it with lapin's retries.
fn own_lines(text: &str) -> String {
    text.lines()
        .filter(|l| !l.contains(r#""target":"lapin"#))
        .collect::<Vec<_>>()
        .join("\n")
}

/// The last `n` lines of every agent log of this test.
fn agent_log_tails(n: usize) -> String {
    let logs = AGENT_LOGS.lock().unwrap_or_else(|p| p.into_inner()).clone();
    logs.iter()
        .map(|p| {
            let text = std::fs::read_to_string(p).unwrap_or_default();
            format!("--- {} (last {n} lines)\n{}\n", p.display(), tail(&text, n))
        })
        .collect()
}

/// An agent process.
struct Agent {
    child: Child,
    log: PathBuf,
    /// Where this incarnation's lines start in the shared log.
    from: u64,
}

impl Agent {
    /// Starts `reflow-agent serve` with state under `root/name` on `queue`; `extra` is appended
    /// to the config file. `env` adds environment variables.
    fn start(root: &Path, name: &str, queue: &str, extra: &str, env: &[(&str, &str)]) -> Agent {
        Agent::start_with(root, name, "", queue, extra, env)
    }

    /// [`Agent::start`] with `agent_extra` lines in the `[agent]` section.
    fn start_with(
        root: &Path,
        name: &str,
        agent_extra: &str,
        queue: &str,
        extra: &str,
        env: &[(&str, &str)],
    ) -> Agent {
        let state = root.join(name);
        std::fs::create_dir_all(&state).unwrap();
        let cfg = root.join(format!("{name}.toml"));
        std::fs::write(
            &cfg,
            format!(
                "[agent]\nstate_dir = \"{}\"\npool_id = \"{name}\"\n{agent_extra}\n[admin]\nlisten = \"127.0.0.1:0\"\n[queue]\nurl = \"{queue}\"\nheartbeat_secs = 1\n{extra}",
                state.display()
            ),
        )
        .unwrap();
        let log = root.join(format!("{name}.log"));
        let mut logs = AGENT_LOGS.lock().unwrap_or_else(|p| p.into_inner());
        if !logs.contains(&log) {
            logs.push(log.clone());
        }
        drop(logs);
        let from = std::fs::metadata(&log).map_or(0, |m| m.len());
        let mut c = Command::new(env!("CARGO_BIN_EXE_reflow-agent"));
        c.args(["--log-format", "json", "serve", "--config"])
            .arg(&cfg)
            .envs(aws_env())
            .envs(env.iter().copied())
            .stdout(Stdio::null())
            .stderr(
                // Appended, so one log holds every incarnation of a restarted agent.
                std::fs::OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(&log)
                    .unwrap(),
            );
        Agent {
            child: c.spawn().unwrap(),
            log,
            from,
        }
    }

    fn signal(&self, sig: &str) {
        let st = Command::new("kill")
            .args([sig, &self.child.id().to_string()])
            .status()
            .unwrap();
        assert!(st.success());
    }

    fn wait(&mut self, within: Duration) -> std::process::ExitStatus {
        let deadline = Instant::now() + within;
        loop {
            if let Some(st) = self.child.try_wait().unwrap() {
                return st;
            }
            assert!(
                Instant::now() < deadline,
                "agent did not exit in {within:?}; its own log lines (lapin's left out):\n{}",
                tail(&own_lines(&self.logs()), 80)
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// This incarnation's log lines.
    /// Waits up to 60 s for `text` in this incarnation's log; panics with `why` and the log's tail.
    fn until_logged(&self, text: &str, why: &str) {
        let deadline = Instant::now() + Duration::from_secs(60);
        while !self.logs().contains(text) {
            assert!(
                Instant::now() < deadline,
                "{why}:\n{}",
                tail(&self.logs(), 30)
            );
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    fn logs(&self) -> String {
        let all = std::fs::read(&self.log).unwrap_or_default();
        let from = usize::try_from(self.from)
            .unwrap_or(usize::MAX)
            .min(all.len());
        String::from_utf8_lossy(&all[from..]).into_owned()
    }

    /// The lines of the whole log (every incarnation sharing it) that mention any of
    /// `needles`, the last `max` of them: what a failed assertion about one job shows.
    fn lines_about(&self, needles: &[&str], max: usize) -> String {
        let all = std::fs::read_to_string(&self.log).unwrap_or_default();
        let hits: Vec<&str> = all
            .lines()
            .filter(|l| needles.iter().any(|n| l.contains(n)))
            .collect();
        hits[hits.len().saturating_sub(max)..].join("\n")
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn aws_env() -> Vec<(&'static str, String)> {
    vec![
        ("AWS_ACCESS_KEY_ID", "testing".into()),
        ("AWS_SECRET_ACCESS_KEY", "testing".into()),
        ("AWS_REGION", "us-east-1".into()),
        ("AWS_ENDPOINT_URL", aws_endpoint()),
    ]
}

/// A job command running `cmd` (its output is `$out`).
fn job(id: &str, cmd: &str) -> Vec<u8> {
    serde_json::to_vec(&serde_json::json!({
        "v": 1, "id": id, "kind": "job",
        "body": {"config": {"Type": "exec", "Image": image(), "Cmd": cmd,
                            "Resources": {"mem": 67108864, "cpu": 1}}}
    }))
    .unwrap()
}

/// Container starts of the job with command id `id` seen by `counter` (from the engine's own
/// event stream, independently of the agent).
fn job_starts(counter: &StartCounter, id: &str) -> usize {
    counter.starts(&job_alloc_id(id))
}

/// Events seen so far, from any backend.
struct Events {
    watch: Box<dyn queue::EventWatch>,
    seen: Vec<Event>,
}

impl Events {
    async fn new(client: &dyn Client) -> Events {
        Events {
            watch: client.watch(None).await.unwrap(),
            seen: Vec::new(),
        }
    }

    /// Waits until an event matching `pred` is seen; returns it.
    async fn until(&mut self, what: &str, pred: impl Fn(&Event) -> bool) -> Event {
        if let Some(e) = self.seen.iter().find(|e| pred(e)) {
            return e.clone();
        }
        let r = tokio::time::timeout(Duration::from_secs(90), async {
            loop {
                let e = self.watch.next().await.unwrap();
                self.record(e.clone());
                if pred(&e) {
                    return e;
                }
            }
        })
        .await;
        r.unwrap_or_else(|_| {
            panic!(
                "no {what} within 90 s; seen: {:#?}\n{}",
                self.kinds(),
                agent_log_tails(40)
            )
        })
    }

    /// Waits for the next event (up to 90 s), without cancelling a receive half way (on SQS
    /// that would hide what it received until its visibility runs out).
    async fn one_more(&mut self) {
        let e = tokio::time::timeout(Duration::from_secs(90), self.watch.next())
            .await
            .unwrap_or_else(|_| {
                panic!(
                    "no event within 90 s; seen: {:#?}\n{}",
                    self.kinds(),
                    agent_log_tails(40)
                )
            })
            .unwrap();
        self.record(e);
    }

    /// Keeps an event seen, after checking it against the protocol's schema (every event a
    /// live agent publishes in these tests is checked).
    fn record(&mut self, e: Event) {
        assert_protocol(
            &format!("event {} of {}", e.body.kind(), e.agent),
            &serde_json::to_value(&e).unwrap(),
        );
        self.seen.push(e);
    }

    async fn completed(&mut self, id: &str) -> Event {
        self.until(&format!("exec.completed of {id}"), |e| {
            e.command.as_deref() == Some(id) && e.body.kind() == "exec.completed"
        })
        .await
    }

    fn kinds(&self) -> Vec<String> {
        self.seen
            .iter()
            .map(|e| format!("{} {:?} {}", e.body.kind(), e.command, e.agent))
            .collect()
    }

    /// Reads whatever arrives within `d` (late duplicates, say).
    async fn linger(&mut self, d: Duration) {
        let _ = tokio::time::timeout(d, async {
            loop {
                let e = self.watch.next().await.unwrap();
                self.record(e);
            }
        })
        .await;
    }

    /// The ids of the `kind` events of command `id` seen so far.
    fn ids(&self, id: &str, kind: &str) -> Vec<String> {
        self.seen
            .iter()
            .filter(|e| e.command.as_deref() == Some(id) && e.body.kind() == kind)
            .map(|e| e.id.clone())
            .collect()
    }
}

/// The digest of the single output file of a completed job, and its error if it failed.
fn output(e: &Event) -> (String, bool, bool) {
    match &e.body {
        EventBody::ExecCompleted { result, cached, .. } => {
            let files = result.fileset.files();
            let d = files.first().map(|f| f.id.hex()).unwrap_or_default();
            (d, result.err.is_none(), *cached)
        }
        other => panic!("not exec.completed: {other:?}"),
    }
}

/// An AMQP URL in a namespace of its own.
async fn amqp_ns(label: &str) -> String {
    format!("{}?ns={}", amqp(), uniq(label))
}

/// The events of the AMQP namespace of `url`, through the client's watch: a durable queue of
/// its own that outlives a broker restart (the watch reconnects and goes on).
async fn tap(url: &str) -> Events {
    let client = queue::client(url, &Default::default()).await.unwrap();
    Events::new(client.as_ref()).await
}

/// Submits with retries (the broker may be restarting).
async fn submit(client: &dyn Client, id: &str, body: &[u8]) {
    let command: serde_json::Value = serde_json::from_slice(body).unwrap();
    assert_protocol(&format!("command {id}"), &command);
    for _ in 0..50 {
        if client.submit(id, body).await.is_ok() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    panic!("could not submit {id}");
}

#[test]
fn spool_round_trip_through_the_cli_with_the_minimal_job() {
    let dir = tempfile::tempdir().unwrap();
    let spool = format!("spool://{}", dir.path().join("spool").display());
    let _agent = Agent::start(dir.path(), &uniq("spool"), &spool, "", &[]);
    let id = uniq("hello");
    // Exactly the issue's minimal shape.
    let body = format!(
        r#"{{"v":1,"id":"{id}","kind":"job","body":{{"config":{{"Type":"exec","Image":"reflow-agent-test/busybox:1","Cmd":"echo hello > $out","Resources":{{"mem":67108864,"cpu":1}}}}}}}}"#
    );
    let e = submit_ok(dir.path(), &spool, "hello", &body);
    let (digest, ok, _) = output(&e);
    assert!(ok);
    assert_eq!(digest, sha256sum(b"hello\n"));
    // The output is in the agent's repository.
    let EventBody::ExecCompleted { repository, .. } = &e.body else {
        unreachable!()
    };
    let repo = repository
        .as_deref()
        .unwrap()
        .strip_prefix("file://")
        .unwrap();
    let obj = Path::new(repo).join(&digest[..2]).join(&digest[2..]);
    assert_eq!(
        std::fs::read(&obj).unwrap(),
        b"hello\n",
        "{}",
        obj.display()
    );

    // A job whose exec fails exits non-zero and says why.
    let bad = uniq("exit3");
    let out = submit_wait(
        dir.path(),
        &spool,
        "bad",
        &String::from_utf8(job(&bad, "exit 3")).unwrap(),
    );
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("the exec failed"));
    // The failure as published, byte for byte on the wire: Reflow's error node shape.
    let events = dir.path().join("spool/events");
    // Events the agent is still writing (an alloc's freeing) are temp files (`.NAME.tmp`),
    // renamed into place: skipped.
    let raw: Vec<serde_json::Value> = std::fs::read_dir(&events)
        .unwrap()
        .flatten()
        .filter(|e| !e.file_name().to_string_lossy().starts_with('.'))
        .map(|e| serde_json::from_slice(&std::fs::read(e.path()).unwrap()).unwrap())
        .filter(|v: &serde_json::Value| v["kind"] == "exec.completed" && v["command"] == bad)
        .collect();
    assert_eq!(raw.len(), 1, "one exec.completed for {bad}");
    let err = &raw[0]["body"]["result"]["Err"];
    assert_eq!(err["Kind"], "DockerExec", "{err}");
    assert_eq!(err["Op"], "exec", "{err}");
    assert_eq!(err["Error"], "", "{err}");
    assert_eq!(err["Cause"]["Kind"], "", "{err}");
    assert_eq!(err["Cause"]["Arg"], serde_json::Value::Null, "{err}");
    assert!(
        err["Cause"]["Error"]
            .as_str()
            .unwrap()
            .starts_with("exited with code 3"),
        "{err}"
    );
}

#[tokio::test]
async fn amqp_round_trip_and_identical_jobs_reuse_the_result() {
    let dir = tempfile::tempdir().unwrap();
    let url = amqp_ns("rt").await;
    let mut tap = tap(&url).await;
    let _agent = Agent::start(dir.path(), &uniq("amqp-rt"), &url, "", &[]);
    let client = queue::client(&url, &Default::default()).await.unwrap();
    let starts = StartCounter::new();
    let marker = uniq("m");
    let (a, b) = (uniq("a"), uniq("b"));
    submit(
        client.as_ref(),
        &a,
        &job(&a, &format!("echo {marker} > $out")),
    )
    .await;
    let e = tap.completed(&a).await;
    assert_eq!(
        output(&e),
        (sha256sum(format!("{marker}\n").as_bytes()), true, false)
    );
    assert_eq!(e.correlation_id, None);
    // Another command with the identical exec: the stored result, no container.
    submit(
        client.as_ref(),
        &b,
        &job(&b, &format!("echo {marker} > $out")),
    )
    .await;
    let e = tap.completed(&b).await;
    assert_eq!(
        output(&e),
        (sha256sum(format!("{marker}\n").as_bytes()), true, true)
    );
    assert_eq!(job_starts(&starts, &a), 1);
    assert_eq!(job_starts(&starts, &b), 0);
    tap.until("agent.heartbeat", |e| e.body.kind() == "agent.heartbeat")
        .await;
}

/// Whether the queue `name` exists on the test broker (a passive declaration, on a connection
/// of its own: a refused one closes its channel).
async fn amqp_queue_exists(name: &str) -> bool {
    amqp_queue_depth(name, false).await.is_some()
}

/// How many messages queue `name` holds, `None` when it does not exist; with `make`, it is
/// declared (durable) first.
async fn amqp_queue_depth(name: &str, make: bool) -> Option<u32> {
    use lapin::options::QueueDeclareOptions;
    let conn = lapin::Connection::connect(&amqp(), lapin::ConnectionProperties::default())
        .await
        .unwrap();
    let ch = conn.create_channel().await.unwrap();
    let opts = QueueDeclareOptions {
        passive: !make,
        durable: make,
        ..QueueDeclareOptions::default()
    };
    let depth = ch
        .queue_declare(name.into(), opts, Default::default())
        .await
        .ok()
        .map(|q| q.message_count());
    let _ = conn.close(200, "checked".into()).await;
    depth
}

/// An `agent.draining` event of `agent` with id `id`, as a test puts it on a queue by hand.
fn draining_event(id: &str, agent: &str) -> Event {
    Event {
        v: 1,
        id: id.into(),
        agent: agent.into(),
        alloc: None,
        exec: None,
        correlation_id: None,
        command: None,
        time: reflow_agent::clock::Clock::now(&reflow_agent::clock::SystemClock),
        body: EventBody::AgentDraining {},
        labels: Default::default(),
    }
}

/// An AMQP watch acks the events it took only once it has to wait for more. Events that
/// arrived together are returned with no ack between them, so a watch that dies before it
/// waits again (its connection closed under it) leaves them in its queue for whoever reads it
/// next; a watch that waited leaves none (docs/protocol.md, "Watching events on AMQP").
#[tokio::test]
async fn amqp_watch_acks_what_it_took_once_it_waits() {
    use lapin::options::{BasicPublishOptions, QueueDeleteOptions};
    let url = amqp_ns("burst").await;
    let raw = lapin::Connection::connect(&amqp(), lapin::ConnectionProperties::default())
        .await
        .unwrap();
    let ch = raw.create_channel().await.unwrap();
    let mut queues = Vec::new();
    for waits in [false, true] {
        let client = queue::client(&url, &Default::default()).await.unwrap();
        let (mut watch, queue) = client.watch_replies("burst").await.unwrap().unwrap();
        for i in 0..3 {
            let e = draining_event(&uniq(&format!("burst-{i}")), "burst");
            ch.basic_publish(
                "".into(),
                queue.as_str().into(),
                BasicPublishOptions::default(),
                &serde_json::to_vec(&e).unwrap(),
                Default::default(),
            )
            .await
            .unwrap();
        }
        // All three reach the watch's connection before it reads the first.
        tokio::time::sleep(Duration::from_millis(500)).await;
        for _ in 0..3 {
            tokio::time::timeout(Duration::from_secs(10), watch.next())
                .await
                .unwrap()
                .unwrap();
        }
        if waits {
            let waited = tokio::time::timeout(Duration::from_millis(300), watch.next()).await;
            assert!(waited.is_err(), "no fourth event: {waited:?}");
        }
        // Time for any ack sent to reach the broker.
        tokio::time::sleep(Duration::from_millis(300)).await;
        // The watch dies: dropped unclosed, its connection (the client's) closed.
        drop(watch);
        client.close().await;
        // The broker puts a closed channel's unacked deliveries back as it closes it.
        let left = if waits { 0 } else { 3 };
        let deadline = Instant::now() + Duration::from_secs(5);
        let mut depth = amqp_queue_depth(&queue, false).await;
        while depth != Some(left) && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(100)).await;
            depth = amqp_queue_depth(&queue, false).await;
        }
        assert_eq!(depth, Some(left), "waited: {waits}");
        queues.push(queue);
    }
    for q in queues {
        ch.queue_delete(q.as_str().into(), QueueDeleteOptions::default())
            .await
            .unwrap();
    }
    let _ = raw.close(200, "done".into()).await;
}

/// `command` signed with `key`, with its send time.
fn signed(key: &str, command: &[u8]) -> Vec<u8> {
    let mut env: serde_json::Value = serde_json::from_slice(command).unwrap();
    env["time"] = reflow_agent::time::format(&reflow_agent::clock::Clock::now(
        &reflow_agent::clock::SystemClock,
    ))
    .into();
    env["signature"] = reflow_agent::control::security::sign(key.as_bytes(), &env).into();
    serde_json::to_vec(&env).unwrap()
}

/// A reply watch on AMQP gets the events of the command that names its queue in `reply_to`,
/// the rejection of an unsigned one that names it too (a client's own queue), but not the
/// other events of the result topic; closed, its queue is gone from the broker. An unsigned
/// command whose `reply_to` names any other queue gets nothing there.
#[tokio::test]
async fn amqp_reply_watch_gets_its_commands_events_and_rejections_only() {
    let dir = tempfile::tempdir().unwrap();
    let url = amqp_ns("replies").await;
    let key = "k3y-for-replies";
    let mut tap = tap(&url).await;
    let _agent = Agent::start(
        dir.path(),
        &uniq("amqp-replies"),
        &url,
        "",
        &[("REFLOW_AGENT_HMAC_KEY", key)],
    );
    let client = queue::client(&url, &Default::default()).await.unwrap();
    let (mut replies, reply_to) = client.watch_replies("ours").await.unwrap().unwrap();
    let ns = url.rsplit_once("ns=").unwrap().1;
    assert!(reply_to.starts_with(&format!("{ns}.watch.")), "{reply_to}");
    assert!(amqp_queue_exists(&reply_to).await);
    // An unsigned command that names a queue not a client's: rejected on the result topic,
    // nothing sent to its queue.
    let trap = format!("{ns}.trap");
    assert_eq!(amqp_queue_depth(&trap, true).await, Some(0));
    let hostile = uniq("hostile");
    let mut env: serde_json::Value =
        serde_json::from_slice(&job(&hostile, "echo no > $out")).unwrap();
    env["reply_to"] = trap.clone().into();
    submit(
        client.as_ref(),
        &hostile,
        &serde_json::to_vec(&env).unwrap(),
    )
    .await;
    let rejected = tap
        .until("the hostile command's rejection", |e| {
            e.body.kind() == "command.rejected" && e.command.as_deref() == Some(hostile.as_str())
        })
        .await;
    assert!(!rejected.labels.contains_key("reply_to"), "{rejected:?}");
    // Another producer's job, with no reply_to: on the result topic only.
    let other = uniq("other");
    submit(
        client.as_ref(),
        &other,
        &signed(key, &job(&other, "echo other > $out")),
    )
    .await;
    tap.completed(&other).await;
    // A job that names the watch's queue as its reply_to.
    let replying = |id: &str| {
        let mut env: serde_json::Value =
            serde_json::from_slice(&job(id, "echo ours > $out")).unwrap();
        env["reply_to"] = reply_to.clone().into();
        serde_json::to_vec(&env).unwrap()
    };
    let ours = uniq("ours");
    submit(client.as_ref(), &ours, &signed(key, &replying(&ours))).await;
    // An unsigned command naming the watch's queue: its rejection is sent there.
    let unsigned = uniq("unsigned");
    submit(client.as_ref(), &unsigned, &replying(&unsigned)).await;
    let mut got = Vec::new();
    tokio::time::timeout(Duration::from_secs(90), async {
        while !got
            .iter()
            .any(|e: &Event| e.body.kind() == "command.rejected")
            || !got
                .iter()
                .any(|e: &Event| e.body.kind() == "exec.completed")
        {
            got.push(replies.next().await.unwrap());
        }
    })
    .await
    .unwrap_or_else(|_| panic!("no outcome and rejection in 90 s: {got:#?}"));
    for e in &got {
        match e.body.kind() {
            "command.rejected" => assert_eq!(e.command.as_deref(), Some(unsigned.as_str())),
            _ => assert_eq!(e.command.as_deref(), Some(ours.as_str()), "{e:?}"),
        }
    }
    assert!(
        got.iter().any(|e| e.body.kind() == "exec.state"),
        "every event of the command, not just its outcome: {got:#?}"
    );
    replies.close().await;
    assert!(!amqp_queue_exists(&reply_to).await, "closed: no queue left");
    assert_eq!(
        amqp_queue_depth(&trap, false).await,
        Some(0),
        "nothing sent to {trap}"
    );
}

/// `reflow-agent submit --wait` on AMQP gives the command its own reply queue (the outcome
/// names it; with a key the CLI signs the command after adding it) and leaves no queue behind
/// on the broker. An unsigned command's rejection reaches the CLI through that queue too.
#[tokio::test]
async fn amqp_submit_wait_replies_through_its_own_queue_and_removes_it() {
    let dir = tempfile::tempdir().unwrap();
    let url = amqp_ns("cli-wait").await;
    let key = "k3y-for-the-cli";
    let _agent = Agent::start(
        dir.path(),
        &uniq("amqp-cli-wait"),
        &url,
        "",
        &[("REFLOW_AGENT_HMAC_KEY", key)],
    );
    let submit = |id: &str, key: Option<&str>| {
        let file = dir.path().join(format!("{id}.json"));
        std::fs::write(&file, job(id, "echo waited > $out")).unwrap();
        let out = submit_wait_file(&url, &file, key);
        let e: Event = serde_json::from_slice(&out.stdout)
            .unwrap_or_else(|_| panic!("{}", String::from_utf8_lossy(&out.stderr)));
        (out.status.success(), e)
    };
    let (ok, e) = submit(&uniq("waited"), Some(key));
    assert!(ok, "{e:?}");
    assert_eq!(output(&e), (sha256sum(b"waited\n"), true, false));
    let ns = url.rsplit_once("ns=").unwrap().1;
    let reply_to = e
        .labels
        .get("reply_to")
        .expect("the outcome names its reply queue");
    assert!(reply_to.starts_with(&format!("{ns}.watch.")), "{reply_to}");
    assert!(
        !amqp_queue_exists(reply_to).await,
        "the CLI removed its queue"
    );
    let (ok, e) = submit(&uniq("unsigned"), None);
    assert!(!ok);
    assert_eq!(e.body.kind(), "command.rejected");
    assert!(e.labels.contains_key("reply_to"), "{e:?}");
    assert!(
        serde_json::to_string(&e).unwrap().contains("not signed"),
        "{e:?}"
    );
}

/// `submit --wait` that gives up (its `--timeout-secs` passed) removes its reply queue too,
/// as it does once the outcome is printed, rather than leaving it to the broker's expiry.
#[tokio::test]
async fn amqp_submit_wait_that_times_out_removes_its_queue() {
    let dir = tempfile::tempdir().unwrap();
    let url = amqp_ns("cli-timeout").await;
    let _agent = Agent::start(dir.path(), &uniq("amqp-cli-timeout"), &url, "", &[]);
    let mut events = tap(&url).await;
    let id = uniq("slow");
    let file = dir.path().join("slow.json");
    std::fs::write(&file, job(&id, "sleep 3; echo late > $out")).unwrap();
    let cli = {
        let (url, file) = (url.clone(), file.clone());
        tokio::task::spawn_blocking(move || {
            Command::new(env!("CARGO_BIN_EXE_reflow-agent"))
                .args(["submit", "--wait", "--timeout-secs", "1", "--queue", &url])
                .arg(&file)
                .env_remove("REFLOW_AGENT_HMAC_KEY")
                .output()
                .unwrap()
        })
    };
    // An event of the command names the CLI's queue.
    let e = events
        .until("an event of the command", |e| {
            e.command.as_deref() == Some(id.as_str()) && e.labels.contains_key("reply_to")
        })
        .await;
    let reply_to = e.labels["reply_to"].clone();
    let out = cli.await.unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("no outcome within 1 s"), "{stderr}");
    assert!(
        !amqp_queue_exists(&reply_to).await,
        "the CLI that timed out left {reply_to}"
    );
    // The job itself runs on and completes.
    let done = events.completed(&id).await;
    assert_eq!(output(&done), (sha256sum(b"late\n"), true, false));
}

/// A client declares nothing before sending a command; on a broker no agent or client has
/// prepared, the command comes back (it is sent `mandatory`), and the client declares the
/// topology, dead-letter queue included, and sends it again: it waits there for the first
/// agent.
#[tokio::test]
async fn amqp_submit_on_a_bare_broker_declares_the_topology_and_keeps_the_command() {
    let dir = tempfile::tempdir().unwrap();
    let url = amqp_ns("bare").await;
    let ns = url.rsplit_once("ns=").unwrap().1.to_string();
    let commands = format!("{ns}.commands");
    assert_eq!(amqp_queue_depth(&commands, false).await, None);
    // Through the CLI, which logs nothing of the command the broker returns to it the first
    // time (lapin's own warning would print the whole message).
    let first = uniq("first");
    let secret = uniq("not-for-logs");
    let file = dir.path().join("first.json");
    std::fs::write(&file, job(&first, &format!("echo first > $out # {secret}"))).unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_reflow-agent"))
        .args(["submit", "--queue", &url])
        .arg(&file)
        // Asking for lapin's warnings does not bring that one back.
        .env("RUST_LOG", "info,lapin=warn")
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert!(stderr.contains(&format!("submitted {first}")), "{stderr}");
    assert!(!stderr.contains(&secret), "{stderr}");
    assert!(!stderr.contains("returned us a message"), "{stderr}");
    assert_eq!(amqp_queue_depth(&commands, false).await, Some(1));
    assert_eq!(
        amqp_queue_depth(&format!("{commands}.dlq"), false).await,
        Some(0)
    );
    let mut tap = tap(&url).await;
    let _agent = Agent::start(dir.path(), &uniq("amqp-bare"), &url, "", &[]);
    let e = tap.completed(&first).await;
    assert_eq!(output(&e), (sha256sum(b"first\n"), true, false));
}

#[tokio::test]
async fn sqs_round_trip_and_poison_goes_to_the_dlq_with_a_reason() {
    let name = uniq("jobs");
    let (dir, url, client) = sqs_queue(&name).await;
    let mut events = Events::new(&client).await;
    let agent = Agent::start(dir.path(), &uniq("sqs"), &url, "", &[]);
    client.submit("poison", b"{not json").await.unwrap();
    let unknown = br#"{"v":1,"id":"p-2","kind":"exec.teleport"}"#;
    client.submit("p-2", unknown).await.unwrap();
    let a = uniq("a");
    client
        .submit(&a, &job(&a, "printf sqs > $out"))
        .await
        .unwrap();
    let e = events.completed(&a).await;
    assert_eq!(output(&e), (sha256sum(b"sqs"), true, false));
    let rejected = events
        .until("command.rejected p-2", |e| {
            e.body.kind() == "command.rejected" && e.command.as_deref() == Some("p-2")
        })
        .await;
    let EventBody::CommandRejected { error, .. } = &rejected.body else {
        unreachable!()
    };
    assert!(
        error.to_string().contains("unknown command kind"),
        "{error}"
    );
    let deadline = Instant::now() + Duration::from_secs(30);
    let dead = loop {
        let d = client.dead_letters(10).await.unwrap();
        if d.len() >= 2 || Instant::now() > deadline {
            break d;
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
    };
    let reasons: Vec<&str> = dead.iter().map(|d| d.reason.as_str()).collect();
    assert_eq!(dead.len(), 2, "{reasons:?}");
    assert!(
        reasons.iter().any(|r| r.contains("not a command envelope")),
        "{reasons:?}"
    );
    assert!(
        reasons.iter().any(|r| r.contains("exec.teleport")),
        "{reasons:?}"
    );
    // The operator's view through the CLI; listing leaves them in place.
    let out = Command::new(env!("CARGO_BIN_EXE_reflow-agent"))
        .args(["dlq", "list", "--queue", &url])
        .envs(aws_env())
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(text.lines().count(), 2, "{text}");
    assert!(text.contains("\"p-2\""), "{text}");
    // The agent counted its SQS requests: what it received, deleted and sent.
    let (code, m) = http_get(&admin_addr(&agent).await, "/metrics").await;
    assert_eq!(code, 200);
    let count = |op: &str| -> u64 {
        m.lines()
            .filter(|l| {
                l.starts_with("reflow_cloud_requests_total{")
                    && l.contains("service=\"SQS\"")
                    && l.contains(&format!("operation=\"{op}\""))
            })
            .filter_map(|l| l.rsplit(' ').next()?.parse::<u64>().ok())
            .sum()
    };
    assert!(count("ReceiveMessage") >= 1, "{m}");
    assert!(count("DeleteMessage") >= 1, "{m}");
    assert!(count("SendMessage") + count("SendMessageBatch") >= 2, "{m}");
    // The operator kit reads what a live agent exposes: promtool accepts the exposition, and
    // every metric the dashboard queries is there (after a job, a rejection and a dead letter).
    assert_promtool_accepts(&m);
    let missing: Vec<String> = dashboard_metrics()
        .into_iter()
        .filter(|name| {
            !m.lines().any(|l| {
                l.strip_prefix(name.as_str())
                    .is_some_and(|rest| rest.starts_with(['{', ' ']))
            })
        })
        .collect();
    assert!(
        missing.is_empty(),
        "the dashboard queries {missing:?}, which /metrics lacks:\n{m}"
    );
}

/// Every `reflow_*` metric name in the Grafana dashboard's queries.
fn dashboard_metrics() -> std::collections::BTreeSet<String> {
    let dash: serde_json::Value =
        serde_json::from_str(include_str!("../deploy/grafana/reflow-agent.json")).unwrap();
    let mut names = std::collections::BTreeSet::new();
    for panel in dash["panels"].as_array().unwrap() {
        for target in panel["targets"].as_array().unwrap() {
            let expr = target["expr"].as_str().unwrap();
            let mut rest = expr;
            while let Some(i) = rest.find("reflow_") {
                let tail = &rest[i..];
                let end = tail
                    .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
                    .unwrap_or(tail.len());
                names.insert(tail[..end].to_string());
                rest = &tail[end..];
            }
        }
    }
    assert!(names.len() >= 10, "{names:?}");
    names
}

/// `promtool check metrics` (scripts/dev-services.sh installs it) passes on `exposition`.
fn assert_promtool_accepts(exposition: &str) {
    use std::io::Write;
    let mut child = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("promtool (scripts/dev-services.sh installs Debian's prometheus package)");
    child
        .stdin
        .take()
        .unwrap()
        .write_all(exposition.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "promtool check metrics: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

#[tokio::test]
async fn amqp_duplicate_delivery_runs_one_container() {
    let dir = tempfile::tempdir().unwrap();
    let url = amqp_ns("dup").await;
    let mut tap = tap(&url).await;
    let _agent = Agent::start(dir.path(), &uniq("amqp-dup"), &url, "", &[]);
    let client = queue::client(&url, &Default::default()).await.unwrap();
    let starts = StartCounter::new();
    let a = uniq("dup");
    let body = job(&a, "sleep 2; echo once > $out");
    for _ in 0..3 {
        submit(client.as_ref(), &a, &body).await;
    }
    let e = tap.completed(&a).await;
    assert_eq!(output(&e).0, sha256sum(b"once\n"));
    // A late duplicate, after completion, replays the outcome with the same event id.
    submit(client.as_ref(), &a, &body).await;
    tap.linger(Duration::from_secs(2)).await;
    let ids = tap.ids(&a, "exec.completed");
    assert!(!ids.is_empty());
    assert!(ids.iter().all(|i| *i == ids[0]), "one event id: {ids:?}");
    assert_eq!(job_starts(&starts, &a), 1);
}

#[tokio::test]
async fn amqp_kill9_mid_exec_then_restart_completes_exactly_once() {
    let dir = tempfile::tempdir().unwrap();
    let url = amqp_ns("k9").await;
    let mut tap = tap(&url).await;
    let name = uniq("amqp-k9");
    let mut agent = Agent::start(dir.path(), &name, &url, "", &[]);
    let client = queue::client(&url, &Default::default()).await.unwrap();
    let starts = StartCounter::new();
    let a = uniq("k9");
    submit(
        client.as_ref(),
        &a,
        &job(&a, "sleep 3; echo survived > $out"),
    )
    .await;
    tap.until("exec.state running", |e| {
        e.command.as_deref() == Some(a.as_str()) && e.body.kind() == "exec.state"
    })
    .await;
    agent.signal("-KILL");
    agent.wait(Duration::from_secs(10));
    let _agent = Agent::start(dir.path(), &name, &url, "", &[]);
    let e = tap.completed(&a).await;
    assert_eq!(output(&e), (sha256sum(b"survived\n"), true, false));
    tap.linger(Duration::from_secs(2)).await;
    let ids = tap.ids(&a, "exec.completed");
    assert!(ids.iter().all(|i| *i == ids[0]), "{ids:?}");
    assert_eq!(job_starts(&starts, &a), 1, "re-attached, not re-run");
}

#[tokio::test]
async fn amqp_broker_restart_mid_run_loses_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let url = amqp_ns("restart").await;
    let mut tap = tap(&url).await;
    let _agent = Agent::start(dir.path(), &uniq("amqp-restart"), &url, "", &[]);
    let client = queue::client(&url, &Default::default()).await.unwrap();
    let starts = StartCounter::new();
    let a = uniq("before");
    submit(client.as_ref(), &a, &job(&a, "sleep 4; echo a > $out")).await;
    tap.until("exec.state running", |e| {
        e.command.as_deref() == Some(a.as_str()) && e.body.kind() == "exec.state"
    })
    .await;
    for args in [["stop_app"], ["start_app"]] {
        let st = Command::new("rabbitmqctl").args(args).status().unwrap();
        assert!(st.success());
    }
    let st = Command::new("rabbitmqctl")
        .args(["await_startup"])
        .status()
        .unwrap();
    assert!(st.success());
    // Events of the running job are published once the agent reconnects, and new work flows.
    let b = uniq("after");
    submit(client.as_ref(), &b, &job(&b, "echo b > $out")).await;
    assert_eq!(output(&tap.completed(&a).await).0, sha256sum(b"a\n"));
    assert_eq!(output(&tap.completed(&b).await).0, sha256sum(b"b\n"));
    assert_eq!(job_starts(&starts, &a), 1);
}

#[tokio::test]
async fn amqp_sigterm_drain_hands_back_unstarted_work() {
    let dir = tempfile::tempdir().unwrap();
    let url = amqp_ns("drain").await;
    let mut tap = tap(&url).await;
    let limits = "max_jobs = 1\nprefetch = 3\ndrain_grace_secs = 60\n";
    let mut first = Agent::start(dir.path(), &uniq("drain-1"), &url, limits, &[]);
    let client = queue::client(&url, &Default::default()).await.unwrap();
    let ids = submit_sleepers(client.as_ref(), "d", 3, "2").await;
    tap.until("a job running", |e| e.body.kind() == "exec.state")
        .await;
    first.signal("-TERM");
    let st = first.wait(Duration::from_secs(60));
    assert!(st.success(), "{st:?}");
    let logs = first.logs();
    assert!(logs.contains("prefetched commands handed back"), "{logs}");
    tap.until("agent.stopped", |e| e.body.kind() == "agent.stopped")
        .await;
    let draining = tap
        .seen
        .iter()
        .position(|e| e.body.kind() == "agent.draining")
        .expect("agent.draining");
    let done_by_first: Vec<&String> = ids
        .iter()
        .filter(|id| {
            tap.seen
                .iter()
                .any(|e| e.command.as_ref() == Some(*id) && e.body.kind() == "exec.completed")
        })
        .collect();
    assert_eq!(
        done_by_first.len(),
        1,
        "only the running job finished: {done_by_first:?}"
    );
    assert!(draining < tap.seen.len());
    // The handed-back jobs run on the next agent.
    let _second = Agent::start(dir.path(), &uniq("drain-2"), &url, limits, &[]);
    for id in &ids {
        let e = tap.completed(id).await;
        assert_eq!(output(&e).0, sha256sum(format!("{id}\n").as_bytes()));
    }
}

#[tokio::test]
async fn amqp_two_agents_share_the_work() {
    let dir = tempfile::tempdir().unwrap();
    let url = amqp_ns("share").await;
    let mut tap = tap(&url).await;
    let limits = "max_jobs = 1\nprefetch = 1\n";
    let (n1, n2) = (uniq("share-1"), uniq("share-2"));
    let _a1 = Agent::start(dir.path(), &n1, &url, limits, &[]);
    let _a2 = Agent::start(dir.path(), &n2, &url, limits, &[]);
    // Both consume before the work arrives.
    for n in [&n1, &n2] {
        tap.until("agent.started", |e| {
            e.body.kind() == "agent.started" && e.agent == *n
        })
        .await;
    }
    let client = queue::client(&url, &Default::default()).await.unwrap();
    let ids = submit_sleepers(client.as_ref(), "s", 6, "1").await;
    let mut agents = std::collections::BTreeSet::new();
    for id in &ids {
        agents.insert(tap.completed(id).await.agent);
    }
    assert_eq!(
        agents,
        [n1, n2].into_iter().collect(),
        "both agents ran jobs"
    );
}

#[test]
fn signed_commands_only_when_the_agent_has_a_key() {
    let dir = tempfile::tempdir().unwrap();
    let spool_dir = dir.path().join("spool");
    let spool = format!("spool://{}", spool_dir.display());
    let key = "k3y-for-tests";
    let _agent = Agent::start(
        dir.path(),
        &uniq("signed"),
        &spool,
        "",
        &[("REFLOW_AGENT_HMAC_KEY", key)],
    );
    let submit_file = |file: &Path, key: Option<&str>| submit_wait_file(&spool, file, key);
    let submit = |id: &str, key: Option<&str>| {
        let file = dir.path().join(format!("{id}.json"));
        std::fs::write(&file, job(id, "echo signed > $out")).unwrap();
        submit_file(&file, key)
    };
    let unsigned = submit(&uniq("unsigned"), None);
    assert!(!unsigned.status.success());
    assert!(
        String::from_utf8_lossy(&unsigned.stdout).contains("not signed"),
        "{}",
        String::from_utf8_lossy(&unsigned.stdout)
    );
    let wrong = submit(&uniq("wrong"), Some("another-key"));
    assert!(String::from_utf8_lossy(&wrong.stdout).contains("bad command signature"));
    let signed = submit(&uniq("signed"), Some(key));
    assert!(
        signed.status.success(),
        "{}",
        String::from_utf8_lossy(&signed.stderr)
    );
    // A captured command replayed later: correctly signed, but sent long ago.
    let old = uniq("replayed");
    let mut env: serde_json::Value =
        serde_json::from_slice(&job(&old, "echo replayed > $out")).unwrap();
    env["time"] = "2020-01-01T00:00:00Z".into();
    env["signature"] = reflow_agent::control::security::sign(key.as_bytes(), &env).into();
    let file = dir.path().join("replayed.json");
    std::fs::write(&file, serde_json::to_vec(&env).unwrap()).unwrap();
    let replayed = submit_file(&file, None);
    assert!(!replayed.status.success());
    assert!(
        String::from_utf8_lossy(&replayed.stdout).contains("security.max_clock_skew_secs"),
        "{}",
        String::from_utf8_lossy(&replayed.stdout)
    );
    // The three rejected commands are in the dead-letter directory with their reasons.
    let dead: Vec<_> = std::fs::read_dir(spool_dir.join("dead"))
        .unwrap()
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().ends_with(".reason.json"))
        .collect();
    assert_eq!(dead.len(), 3);
}

/// A producer in Python signs with a standard JCS library (`jcs` from PyPI, installed by
/// scripts/dev-services.sh) exactly as docs/protocol.md shows, and publishes with pika: the
/// agent verifies the signature of a `Cmd` with `>`, `&` and non-ASCII text and a number JCS
/// writes differently from `json.dumps` (`1.0`), runs it, and rejects the same command signed
/// with another key.
#[tokio::test(flavor = "multi_thread")]
async fn a_python_producer_signs_with_jcs_and_the_agent_agrees() {
    let dir = tempfile::tempdir().unwrap();
    let ns = uniq("py");
    let url = format!("{}?ns={ns}", amqp());
    let mut tap = tap(&url).await;
    let key = "py-k3y";
    let _agent = Agent::start(
        dir.path(),
        &uniq("py-agent"),
        &url,
        "",
        &[("REFLOW_AGENT_HMAC_KEY", key)],
    );
    let text = "h\u{e9}llo w\u{f6}rld \u{2713} <&>";
    let publish = |id: &str, key: &str| {
        let out = Command::new("python3")
            .arg(concat!(
                env!("CARGO_MANIFEST_DIR"),
                "/tests/py/sign_and_publish.py"
            ))
            .args([&amqp(), &ns, key, id, &image()])
            .arg(format!("echo '{text}' > $out"))
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "the Python producer failed (scripts/dev-services.sh installs jcs and pika): {}",
            String::from_utf8_lossy(&out.stderr)
        );
    };
    let good = uniq("py-signed");
    publish(&good, key);
    let e = tap.completed(&good).await;
    assert_eq!(
        output(&e),
        (sha256sum(format!("{text}\n").as_bytes()), true, false),
        "{e:?}"
    );
    let bad = uniq("py-wrong-key");
    publish(&bad, "another-key");
    let e = tap
        .until("command.rejected", |e| {
            e.command.as_deref() == Some(bad.as_str()) && e.body.kind() == "command.rejected"
        })
        .await;
    assert!(
        format!("{:?}", e.body).contains("bad command signature"),
        "{:?}",
        e.body
    );
}

/// A URL that names several brokers (a cluster's nodes): the first does not answer, so the agent
/// and the producer connect to the next, and a job runs.
#[tokio::test]
async fn an_amqp_url_with_several_brokers_uses_one_that_answers() {
    let dir = tempfile::tempdir().unwrap();
    // Port 1 on loopback refuses connections: a node that is down.
    let url = amqp_ns("hosts")
        .await
        .replacen("127.0.0.1:5672", "127.0.0.1:1,127.0.0.1:5672", 1);
    assert!(url.contains(",127.0.0.1:5672"), "{url}");
    let _agent = Agent::start(dir.path(), &uniq("hosts"), &url, "", &[]);
    let client = queue::client(&url, &Default::default()).await.unwrap();
    let mut events = Events::new(client.as_ref()).await;
    let id = uniq("two-hosts");
    submit(client.as_ref(), &id, &job(&id, "echo hosts > $out")).await;
    let e = events.completed(&id).await;
    assert_eq!(output(&e), (sha256sum(b"hosts\n"), true, false));
}

/// The topology is declared pipelined, answered once (the command queue's declaration last). A
/// declaration the broker refuses earlier in the pipeline still fails the submit, with the
/// broker's reason naming the queue, and the command is not sent.
#[tokio::test]
async fn a_refused_declaration_fails_the_submit_with_the_brokers_reason() {
    use lapin::options::QueueDeclareOptions;
    let ns = uniq("refused");
    // A classic queue where the dead-letter queue (a quorum queue) goes.
    let conn = lapin::Connection::connect(&amqp(), lapin::ConnectionProperties::default())
        .await
        .unwrap();
    let ch = conn.create_channel().await.unwrap();
    let dlq = format!("{ns}.commands.dlq");
    ch.queue_declare(
        dlq.as_str().into(),
        QueueDeclareOptions {
            durable: true,
            ..QueueDeclareOptions::default()
        },
        Default::default(),
    )
    .await
    .unwrap();
    let url = format!("{}?ns={ns}", amqp());
    let client = queue::client(&url, &Default::default()).await.unwrap();
    let err = client.submit("refused", b"{}").await.unwrap_err();
    let msg = reflow_agent::error::chain(&err).to_string();
    assert!(
        msg.contains("PRECONDITION_FAILED") && msg.contains(&dlq),
        "the broker's reason, naming the queue: {msg}"
    );
    let commands = ch
        .queue_declare(
            format!("{ns}.commands").as_str().into(),
            QueueDeclareOptions {
                passive: true,
                ..QueueDeclareOptions::default()
            },
            Default::default(),
        )
        .await;
    assert!(
        commands.is_err(),
        "nothing after the refused declaration took effect"
    );
}

/// `scripts/rabbitmq-cluster.sh` with `args`; its stdout.
fn cluster(args: &[&str]) -> String {
    let out = Command::new("bash")
        .arg(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/scripts/rabbitmq-cluster.sh"
        ))
        .args(args)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "rabbitmq-cluster.sh {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

/// A real 3-node RabbitMQ cluster (scripts/rabbitmq-cluster.sh): two agents on a URL naming
/// every node, with fleet claims in DynamoDB, run jobs, and the node leading the command queue
/// is stopped mid-run. The quorum queues fail over, the agents reconnect to the surviving
/// nodes, and every job completes once (one container start and one `exec.completed` each).
#[tokio::test(flavor = "multi_thread")]
async fn a_cluster_node_that_leads_the_command_queue_stops_and_no_job_is_lost() {
    const JOBS: usize = 12;
    let base = cluster(&["start"]);
    let ns = uniq("cluster");
    let url = format!("{base}?ns={ns}");
    let dir = tempfile::tempdir().unwrap();
    let starts = StartCounter::new();
    // Deliveries held on the stopped node go back to the queue, perhaps to the other agent:
    // the fleet's claims (DynamoDB, moto) keep a running job from starting beside itself.
    let taskdb = format!(
        "[taskdb]\ntable = \"{}\"\ncreate_table = true\n",
        uniq("cluster-claims")
    );
    let _agents: Vec<Agent> = (0..2)
        .map(|i| Agent::start_with(dir.path(), &uniq(&format!("cl{i}")), &taskdb, &url, "", &[]))
        .collect();
    // The command queue's leader, once the agents declared it. (Whether it exists is asked over
    // AMQP, a passive declaration; each `leader` is a rabbitmqctl call, an Erlang VM of its own.)
    let queue = format!("{ns}.commands");
    let deadline = Instant::now() + Duration::from_secs(60);
    let probe = lapin::Connection::connect(
        "amqp://guest:guest@127.0.0.1:5681/%2f",
        lapin::ConnectionProperties::default(),
    )
    .await
    .unwrap();
    loop {
        let ch = probe.create_channel().await.unwrap();
        let passive = lapin::options::QueueDeclareOptions {
            passive: true,
            ..Default::default()
        };
        if ch
            .queue_declare(queue.as_str().into(), passive, Default::default())
            .await
            .is_ok()
        {
            break;
        }
        assert!(Instant::now() < deadline, "{queue} was never declared");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let _ = probe.close(200, "".into()).await;
    let leader = loop {
        let l = cluster(&["leader", &queue]);
        if !l.is_empty() {
            break l;
        }
        assert!(Instant::now() < deadline, "{queue} was never declared");
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    let victim = leader
        .trim_start_matches("rit")
        .split('@')
        .next()
        .unwrap()
        .to_string();
    // The test's own event queue lives on a node that stays up.
    let keep = if victim == "1" { "2" } else { "1" };
    let tap_url = format!(
        "amqp://guest:guest@127.0.0.1:{}/%2f?ns={ns}",
        5680 + keep.parse::<u16>().unwrap()
    );
    let mut events = tap(&tap_url).await;
    let client = queue::client(&url, &Default::default()).await.unwrap();
    let ids = submit_sleepers(client.as_ref(), "c", JOBS, "2").await;
    // Some are done and others running: the leader goes away.
    events
        .until("a first exec.completed", |e| {
            e.body.kind() == "exec.completed"
        })
        .await;
    cluster(&["stop", &victim]);
    for id in &ids {
        let e = events.completed(id).await;
        let (digest, ok, _) = output(&e);
        assert!(ok, "{id}: {e:?}");
        assert_eq!(digest, sha256sum(format!("{id}\n").as_bytes()), "{id}");
    }
    events.linger(Duration::from_secs(2)).await;
    // Three brokers are not left idling beside the rest of the suite; the next run starts a
    // fresh cluster.
    cluster(&["stop"]);
    for id in &ids {
        assert_eq!(job_starts(&starts, id), 1, "{id}: one container start");
        let mut completed = events.ids(id, "exec.completed");
        completed.dedup();
        assert_eq!(completed.len(), 1, "{id}: {completed:?}");
    }
}

/// The SQS event watch is cancel-safe: a caller that gives up on `next()` (a timeout around
/// it, as `submit --wait` and these tests' `linger` do) loses no event to the visibility
/// timeout (30 s), however often it gives up while a receive is under way.
#[tokio::test(flavor = "multi_thread")]
async fn sqs_event_watch_loses_nothing_to_a_callers_timeouts() {
    let name = uniq("watch");
    let (_dir, _url, client) = sqs_queue(&name).await;
    let mut watch = client.watch(None).await.unwrap();
    let sqs = aws_sdk_sqs::Client::new(&aws_sdk().await);
    let results = sqs
        .get_queue_url()
        .queue_name(format!("{name}-results"))
        .send()
        .await
        .unwrap()
        .queue_url()
        .unwrap()
        .to_string();
    let ids: Vec<String> = (0..30).map(|i| format!("{name}-ev-{i}")).collect();
    for id in &ids {
        let e = draining_event(id, &name);
        sqs.send_message()
            .queue_url(&results)
            .message_body(serde_json::to_string(&e).unwrap())
            .send()
            .await
            .unwrap();
    }
    let mut seen = std::collections::HashSet::new();
    let deadline = Instant::now() + Duration::from_secs(20);
    while seen.len() < ids.len() {
        assert!(
            Instant::now() < deadline,
            "{} of {} events within 20 s",
            seen.len(),
            ids.len()
        );
        if let Ok(Ok(e)) = tokio::time::timeout(Duration::from_millis(3), watch.next()).await {
            seen.insert(e.id);
        }
    }
}

/// Private replies on SQS: a command naming a `reply_to` queue (by name or URL) gets its
/// events there, and the shared results queue does not; a reply queue that does not exist
/// sends them to the results queue instead (nothing is stuck in the outbox). A rejected command
/// replies to its `reply_to` too.
#[tokio::test(flavor = "multi_thread")]
async fn sqs_reply_to_sends_a_commands_events_to_its_own_queue() {
    let name = uniq("replies");
    let (dir, url, client) = sqs_queue(&name).await;
    let mut shared = Events::new(&client).await;
    let sqs = aws_sdk_sqs::Client::new(&aws_sdk().await);
    let mine = format!("{name}-mine");
    let mine_url = sqs
        .create_queue()
        .queue_name(&mine)
        .send()
        .await
        .unwrap()
        .queue_url()
        .unwrap()
        .to_string();
    let _agent = Agent::start(dir.path(), &uniq("sqs"), &url, "", &[]);
    let with_reply = |id: &str, cmd: &str, reply_to: &str| {
        let mut v: serde_json::Value = serde_json::from_slice(&job(id, cmd)).unwrap();
        v["reply_to"] = reply_to.into();
        serde_json::to_vec(&v).unwrap()
    };
    let (by_name, by_url, lost) = (uniq("by-name"), uniq("by-url"), uniq("lost"));
    let bad = uniq("bad");
    let bad_job = br#"{"v":1,"id":"BAD","kind":"job","reply_to":"MINE","body":{"config":{"Type":"exec","Image":"not-allowed/x","Cmd":"true","Resources":{"mem":1,"cpu":1}},"timeout_secs":0}}"#;
    let bad_job = String::from_utf8_lossy(bad_job)
        .replace("BAD", &bad)
        .replace("MINE", &mine);
    for (id, body) in [
        (&by_name, with_reply(&by_name, "echo name > $out", &mine)),
        (&by_url, with_reply(&by_url, "echo url > $out", &mine_url)),
        (
            &lost,
            with_reply(&lost, "echo lost > $out", &format!("{name}-nobody")),
        ),
        (&bad, bad_job.into_bytes()),
    ] {
        client.submit(id, &body).await.unwrap();
    }
    // The job whose reply queue does not exist completes on the shared results queue.
    let e = shared.completed(&lost).await;
    assert_eq!(output(&e), (sha256sum(b"lost\n"), true, false));
    // The private queue gets the other three commands' outcomes.
    let mut private: Vec<Event> = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(60);
    let done = |seen: &[Event]| {
        [&by_name, &by_url].iter().all(|id| {
            seen.iter().any(|e| {
                e.command.as_deref() == Some(id.as_str()) && e.body.kind() == "exec.completed"
            })
        }) && seen.iter().any(|e| {
            e.command.as_deref() == Some(bad.as_str()) && e.body.kind() == "command.rejected"
        })
    };
    while !done(&private) {
        assert!(Instant::now() < deadline, "private queue: {private:?}");
        let r = sqs
            .receive_message()
            .queue_url(&mine_url)
            .max_number_of_messages(10)
            .wait_time_seconds(1)
            .send()
            .await
            .unwrap();
        for m in r.messages() {
            private.push(serde_json::from_str(m.body().unwrap()).unwrap());
        }
    }
    for e in &private {
        assert_protocol("a private reply", &serde_json::to_value(e).unwrap());
    }
    let by_name_done = private
        .iter()
        .find(|e| {
            e.command.as_deref() == Some(by_name.as_str()) && e.body.kind() == "exec.completed"
        })
        .unwrap();
    assert_eq!(output(by_name_done), (sha256sum(b"name\n"), true, false));
    // None of the private commands' events reached the shared queue.
    shared.linger(Duration::from_secs(3)).await;
    for id in [&by_name, &by_url, &bad] {
        assert!(
            shared
                .seen
                .iter()
                .all(|e| e.command.as_deref() != Some(id.as_str())),
            "{id} leaked to the shared results queue"
        );
    }
}

/// A TCP proxy to RabbitMQ that the test can cut and restore, or freeze: bytes stop flowing
/// both ways while every socket stays open (a half-open link, as a silent network partition
/// leaves it; new connections are accepted and hang too).
struct Proxy {
    port: u16,
    tasks: tokio::task::JoinSet<()>,
    frozen: tokio::sync::watch::Sender<bool>,
}

/// Copies `from` to `to`, holding bytes while the gate says frozen.
async fn pump(
    mut from: tokio::net::tcp::OwnedReadHalf,
    mut to: tokio::net::tcp::OwnedWriteHalf,
    mut gate: tokio::sync::watch::Receiver<bool>,
) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut buf = vec![0u8; 16 * 1024];
    loop {
        let n = match from.read(&mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(n) => n,
        };
        if gate.wait_for(|frozen| !frozen).await.is_err() {
            return;
        }
        if to.write_all(&buf[..n]).await.is_err() {
            return;
        }
    }
}

impl Proxy {
    async fn start(port: u16) -> Proxy {
        let listener = tokio::net::TcpListener::bind(("127.0.0.1", port))
            .await
            .unwrap();
        let port = listener.local_addr().unwrap().port();
        let (frozen, gate) = tokio::sync::watch::channel(false);
        let mut tasks = tokio::task::JoinSet::new();
        tasks.spawn(async move {
            let mut conns = tokio::task::JoinSet::new();
            loop {
                let (c, _) = listener.accept().await.unwrap();
                let gate = gate.clone();
                conns.spawn(async move {
                    if let Ok(up) = tokio::net::TcpStream::connect("127.0.0.1:5672").await {
                        let ((cr, cw), (ur, uw)) = (c.into_split(), up.into_split());
                        tokio::join!(pump(cr, uw, gate.clone()), pump(ur, cw, gate));
                    }
                });
            }
        });
        Proxy {
            port,
            tasks,
            frozen,
        }
    }

    /// Stops (`true`) or resumes (`false`) the flow of bytes on every connection.
    fn freeze(&self, frozen: bool) {
        self.frozen.send_replace(frozen);
    }

    /// Cuts every connection and stops listening.
    async fn cut(mut self) -> u16 {
        self.tasks.abort_all();
        while self.tasks.join_next().await.is_some() {}
        self.port
    }
}

/// Waits until the agent's `/readyz` answers `code`; returns its body.
async fn ready_becomes(addr: &str, code: u16, within: Duration) -> String {
    let deadline = Instant::now() + within;
    loop {
        let (c, body) = http_get(addr, "/readyz").await;
        if c == code {
            return body;
        }
        assert!(
            Instant::now() < deadline,
            "/readyz still {c} after {within:?}: {body}\n{}",
            agent_log_tails(40)
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// The admin address an agent logged.
async fn admin_addr(agent: &Agent) -> String {
    for _ in 0..200 {
        for line in agent.logs().lines() {
            if line.contains("Admin listener up") {
                let v: serde_json::Value = serde_json::from_str(line).unwrap();
                return v["fields"]["addr"].as_str().unwrap().to_string();
            }
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("no admin listener; log:\n{}", agent.logs());
}

// Multi-threaded: the notify socket is read with blocking calls while the proxy serves.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_readiness_and_sd_notify_of_a_real_agent() {
    let dir = tempfile::tempdir().unwrap();
    let proxy = Proxy::start(0).await;
    let ns = uniq("admin");
    let url = format!("{}?ns={ns}", amqp_via(proxy.port));
    let notify_path = dir.path().join("notify.sock");
    let notify = std::os::unix::net::UnixDatagram::bind(&notify_path).unwrap();
    notify
        .set_read_timeout(Some(Duration::from_secs(30)))
        .unwrap();
    let direct = format!("{}?ns={ns}", amqp());
    let mut tap = tap(&direct).await;
    let mut agent = Agent::start(
        dir.path(),
        &uniq("admin"),
        &url,
        "",
        &[
            ("NOTIFY_SOCKET", notify_path.to_str().unwrap()),
            ("WATCHDOG_USEC", "2000000"),
        ],
    );
    let recv = |want: &str| {
        let mut buf = [0u8; 512];
        loop {
            let n = notify
                .recv(&mut buf)
                .unwrap_or_else(|e| panic!("waiting for {want}: {e}"));
            let msg = String::from_utf8_lossy(&buf[..n]).into_owned();
            if msg.starts_with(want) {
                return msg;
            }
        }
    };
    recv("READY=1");
    recv("WATCHDOG=1");
    assert!(recv("STATUS=").contains("execs running"));
    let addr = admin_addr(&agent).await;
    assert_eq!(http_get(&addr, "/healthz").await.0, 200);
    let (code, body) = http_get(&addr, "/readyz").await;
    assert_eq!(code, 200, "{body}");

    let client = queue::client(&direct, &Default::default()).await.unwrap();
    let a = uniq("metrics");
    submit(client.as_ref(), &a, &job(&a, "echo m > $out")).await;
    tap.completed(&a).await;
    // The command is acked once its outcome is published, so just after the event is seen.
    let deadline = Instant::now() + Duration::from_secs(30);
    let m = loop {
        let (code, m) = http_get(&addr, "/metrics").await;
        assert_eq!(code, 200);
        // Settled, and its alloc freed (which follows the ack).
        let settled = m.contains("reflow_commands_acked_total{kind=\"job\"} 1")
            && m.contains("reflow_allocs 0");
        if settled || Instant::now() > deadline {
            break m;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    for want in [
        "reflow_commands_received_total{kind=\"job\"} 1",
        "reflow_commands_acked_total{kind=\"job\"} 1",
        "reflow_exec_duration_seconds_count 1",
        "reflow_allocs 0",
        "reflow_free_resources{resource=\"mem\"}",
        "reflow_repository_objects 1",
        "reflow_execs{state=\"running\"} 0",
    ] {
        assert!(m.contains(want), "missing {want:?} in\n{m}");
    }
    let (_, status) = http_get(&addr, "/v1/status").await;
    let status: serde_json::Value = serde_json::from_str(&status).unwrap();
    assert_eq!(status["draining"], false);

    // The broker becomes unreachable: not ready, yet alive; back when it returns.
    let port = proxy.cut().await;
    let body = ready_becomes(&addr, 503, Duration::from_secs(30)).await;
    assert!(body.contains("queue FAIL"), "{body}");
    assert_eq!(http_get(&addr, "/healthz").await.0, 200);
    let _proxy = Proxy::start(port).await;
    ready_becomes(&addr, 200, Duration::from_secs(30)).await;
    agent.signal("-TERM");
    recv("STOPPING=1");
    assert!(agent.wait(Duration::from_secs(60)).success());
}

// Multi-threaded: the proxy pumps bytes while the test blocks on the agent's exit.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn amqp_frozen_link_is_noticed_reconnected_and_never_wedges_a_drain() {
    let dir = tempfile::tempdir().unwrap();
    let proxy = Proxy::start(0).await;
    let ns = uniq("frozen");
    let direct = format!("{}?ns={ns}", amqp());
    // Heartbeat and deadlines of 2 s: a frozen link is noticed within seconds.
    let via_proxy = format!("{}?ns={ns}&heartbeat=2", amqp_via(proxy.port));
    let mut tap = tap(&direct).await;
    let name = uniq("frozen");
    let mut agent = Agent::start(dir.path(), &name, &via_proxy, "op_timeout_secs = 2\n", &[]);
    let addr = admin_addr(&agent).await;
    let client = queue::client(&direct, &Default::default()).await.unwrap();
    let a = uniq("before");
    submit(client.as_ref(), &a, &job(&a, "echo a > $out")).await;
    assert_eq!(output(&tap.completed(&a).await).0, sha256sum(b"a\n"));

    // The link freezes: the consumer notices (missed heartbeats) and the agent is not ready.
    proxy.freeze(true);
    let body = ready_becomes(&addr, 503, Duration::from_secs(30)).await;
    assert!(body.contains("queue FAIL"), "{body}");
    let b = uniq("during");
    submit(client.as_ref(), &b, &job(&b, "echo b > $out")).await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    let logs = agent.logs();
    assert!(
        logs.contains("got no answer from the broker within 2s"),
        "no deadline hit while frozen:\n{}",
        tail(&logs, 40)
    );
    // It thaws: the agent reconnects on its own and the job sent meanwhile runs.
    proxy.freeze(false);
    assert_eq!(output(&tap.completed(&b).await).0, sha256sum(b"b\n"));
    ready_becomes(&addr, 200, Duration::from_secs(30)).await;

    // Frozen again, SIGTERM: the drain cannot publish, yet the agent exits in bounded time
    // (deadlines, then at most 10 s for the outbox), keeping its last events in the outbox.
    proxy.freeze(true);
    ready_becomes(&addr, 503, Duration::from_secs(30)).await;
    let t0 = Instant::now();
    agent.signal("-TERM");
    let st = agent.wait(Duration::from_secs(45));
    assert!(st.success(), "{st:?}");
    let took = t0.elapsed();
    assert!(
        !tap.seen.iter().any(|e| e.body.kind() == "agent.stopped"),
        "agent.stopped went out through a frozen link"
    );
    // The next start on the same state directory publishes what the drain could not.
    let _again = Agent::start(dir.path(), &name, &direct, "", &[]);
    tap.until("the previous run's agent.stopped", |e| {
        e.body.kind() == "agent.stopped" && e.agent == name
    })
    .await;
    eprintln!("drain through a frozen link took {took:?}");
}

/// Runs `reflow-agent submit --wait` of `body` on `queue`.
fn submit_wait(dir: &Path, queue: &str, name: &str, body: &str) -> std::process::Output {
    let file = dir.join(format!("{name}.json"));
    std::fs::write(&file, body).unwrap();
    submit_wait_file(queue, &file, None)
}

/// Runs `reflow-agent submit --wait` of the command in `file` on `queue`, signing it with `key`
/// when given (and with no key from the test's environment otherwise).
fn submit_wait_file(queue: &str, file: &Path, key: Option<&str>) -> std::process::Output {
    let mut c = Command::new(env!("CARGO_BIN_EXE_reflow-agent"));
    c.args([
        "submit",
        "--wait",
        "--timeout-secs",
        "120",
        "--queue",
        queue,
    ])
    .arg(file)
    .env_remove("REFLOW_AGENT_HMAC_KEY");
    if let Some(k) = key {
        c.env("REFLOW_AGENT_HMAC_KEY", k);
    }
    c.output().unwrap()
}

/// [`submit_wait`] that must succeed: the outcome event.
fn submit_ok(dir: &Path, queue: &str, name: &str, body: &str) -> Event {
    let out = submit_wait(dir, queue, name, body);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

#[test]
fn a_served_agent_pulls_with_credentials_from_a_docker_credential_helper() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    // A tag of the test image that only the htpasswd registry has.
    let image = format!("{REGISTRY}/reflow-agent-test/busybox:{}", uniq("helper"));
    let login = dir.path().join("login");
    let as_pusher = |args: &[&str], stdin: Option<&str>| {
        let mut c = Command::new("docker");
        c.env("DOCKER_CONFIG", &login)
            .args(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::null());
        let mut child = c.spawn().unwrap();
        if let Some(s) = stdin {
            use std::io::Write;
            child.stdin.take().unwrap().write_all(s.as_bytes()).unwrap();
        }
        drop(child.stdin.take());
        assert!(child.wait().unwrap().success(), "docker {args:?}");
    };
    as_pusher(
        &[
            "login",
            "-u",
            REGISTRY_CREDS.0,
            "--password-stdin",
            REGISTRY,
        ],
        Some(REGISTRY_CREDS.1),
    );
    as_pusher(&["tag", "reflow-agent-test/busybox:1", &image], None);
    as_pusher(&["push", &image], None);
    as_pusher(&["rmi", &image], None);

    // The helper answers for the registry with the secret in a file, and logs what it is asked.
    let bin = dir.path().join("bin");
    std::fs::create_dir(&bin).unwrap();
    let (secret, asked) = (dir.path().join("secret"), dir.path().join("asked"));
    let helper = bin.join("docker-credential-reflowtest");
    std::fs::write(
        &helper,
        format!(
            "#!/bin/sh\nread -r server; echo \"$1 $server\" >> {asked}\n\
             [ \"$server\" = {REGISTRY} ] || {{ echo 'credentials not found in native keychain'; exit 1; }}\n\
             printf '{{\"ServerURL\":\"%s\",\"Username\":\"{user}\",\"Secret\":\"%s\"}}' \"$server\" \"$(cat {secret})\"\n",
            asked = asked.display(),
            secret = secret.display(),
            user = REGISTRY_CREDS.0,
        ),
    )
    .unwrap();
    std::fs::set_permissions(&helper, std::fs::Permissions::from_mode(0o755)).unwrap();
    let docker_config = dir.path().join("docker-config.json");
    std::fs::write(
        &docker_config,
        format!(r#"{{"credHelpers": {{"{REGISTRY}": "reflowtest"}}}}"#),
    )
    .unwrap();
    let path = format!(
        "{}:{}",
        bin.display(),
        std::env::var("PATH").unwrap_or_default()
    );
    let spool = format!("spool://{}", dir.path().join("spool").display());
    let _agent = Agent::start(
        dir.path(),
        &uniq("creds"),
        &spool,
        &format!(
            "[executor]\ndocker_config = \"{}\"\necr_auth = false\n",
            docker_config.display()
        ),
        &[("PATH", path.as_str())],
    );
    let job = |id: &str| {
        format!(
            r#"{{"v":1,"id":"{id}","kind":"job","body":{{"config":{{"Type":"exec","Image":"{image}","Cmd":"echo pulled > $out","Resources":{{"mem":67108864,"cpu":1}}}}}}}}"#
        )
    };

    // A wrong secret from the helper: the registry refuses it, NotAllowed at once.
    std::fs::write(&secret, "wrong").unwrap();
    let out = submit_wait(dir.path(), &spool, "refused", &job(&uniq("refused")));
    assert!(!out.status.success());
    let e: Event = serde_json::from_slice(&out.stdout).unwrap();
    let text = serde_json::to_string(&e).unwrap();
    assert!(text.contains("\"Kind\":\"NotAllowed\""), "{text}");
    assert!(!text.contains("wrong"), "no secret in the event: {text}");

    // The right one: the pull succeeds and the job runs. The helper is asked at each pull.
    std::fs::write(&secret, REGISTRY_CREDS.1).unwrap();
    let e = submit_ok(dir.path(), &spool, "pulled", &job(&uniq("pulled")));
    assert_eq!(output(&e).0, sha256sum(b"pulled\n"));
    assert!(!docker(&["images", "-q", &image]).trim().is_empty());
    let asked = std::fs::read_to_string(&asked).unwrap();
    assert!(asked.lines().count() >= 2, "{asked}");
    assert!(
        asked.lines().all(|l| l == format!("get {REGISTRY}")),
        "{asked}"
    );
    docker(&["rmi", &image]);
}

#[test]
fn zombie_allocs_are_collected_and_a_resubmitted_job_still_dedupes() {
    let dir = tempfile::tempdir().unwrap();
    let spool = format!("spool://{}", dir.path().join("spool").display());
    let name = uniq("zombies");
    let _agent = Agent::start_with(
        dir.path(),
        &name,
        "zombie_max_age_secs = 1",
        &spool,
        "",
        &[],
    );
    let id = uniq("gc");
    let starts = StartCounter::new();
    let body = String::from_utf8(job(&id, "echo gc > $out")).unwrap();
    let first = submit_ok(dir.path(), &spool, "gc", &body);
    let allocs = dir.path().join(&name).join("allocs");
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let left: Vec<_> = std::fs::read_dir(&allocs)
            .map(|d| d.flatten().map(|e| e.file_name()).collect())
            .unwrap_or_default();
        if left.is_empty() {
            break;
        }
        assert!(Instant::now() < deadline, "zombies left: {left:?}");
        std::thread::sleep(Duration::from_millis(250));
    }
    // The job's outcome lives in the journal, not in the alloc: the same job id again is
    // answered from it, without a container.
    let again = submit_ok(dir.path(), &spool, "gc-again", &body);
    assert_eq!(output(&again).0, output(&first).0);
    assert_eq!(output(&first).0, sha256sum(b"gc\n"));
    assert_eq!(
        job_starts(&starts, &id),
        1,
        "one container for both submissions"
    );
}

/// A job that takes the whole machine's CPUs (so no two fit side by side) and sleeps `secs`.
fn whole_machine_job(id: &str, secs: u32) -> Vec<u8> {
    let cpus = std::thread::available_parallelism().map_or(2, |n| n.get());
    serde_json::to_vec(&serde_json::json!({
        "v": 1, "id": id, "kind": "job",
        "body": {"config": {"Type": "exec", "Image": image(),
                            "Cmd": format!("sleep {secs}; echo {id} > $out"),
                            "Resources": {"mem": 67108864, "cpu": cpus}}}
    }))
    .unwrap()
}

/// Three whole-machine jobs dropped at once: each waits for the one before it, none fails; a
/// job's `exec.state` running, `exec.state` complete and `exec.completed` have three ids; two
/// starts of the agent publish two `agent.started` events.
async fn jobs_wait_for_room_and_events_are_unique(
    root: &Path,
    name: &str,
    url: &str,
    client: &dyn Client,
) {
    let mut events = Events::new(client).await;
    let starts = StartCounter::new();
    let mut agent = Agent::start(root, name, url, "", &[]);
    let ids: Vec<String> = (0..3).map(|i| uniq(&format!("whole{i}"))).collect();
    for id in &ids {
        submit(client, id, &whole_machine_job(id, 1)).await;
    }
    for id in &ids {
        let e = events.completed(id).await;
        let (digest, ok, _) = output(&e);
        assert!(ok, "{id} failed: {e:?}\n{}", tail(&agent.logs(), 40));
        assert_eq!(digest, sha256sum(format!("{id}\n").as_bytes()));
    }
    for id in &ids {
        assert_eq!(job_starts(&starts, id), 1, "{id} started once");
    }
    let first = &ids[0];
    events
        .until("exec.state complete", |e| {
            e.command.as_deref() == Some(first.as_str())
                && matches!(&e.body, EventBody::ExecState { state, .. } if state == "complete")
        })
        .await;
    let mut all = events.ids(first, "exec.state");
    assert_eq!(all.len(), 2, "running and complete: {:#?}", events.kinds());
    all.extend(events.ids(first, "exec.completed"));
    all.sort();
    all.dedup();
    assert_eq!(all.len(), 3, "three distinct ids: {all:?}");
    assert!(
        !agent.logs().contains("\"Job failed.\""),
        "a job failed while it only had to wait"
    );

    // A second start of the same agent: a second agent.started, under its own id.
    agent.signal("-TERM");
    agent.wait(Duration::from_secs(60));
    let _again = Agent::start(root, name, url, "", &[]);
    let started = |e: &Event| e.agent == name && e.body.kind() == "agent.started";
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let mut ids: Vec<&str> = events
            .seen
            .iter()
            .filter(|e| started(e))
            .map(|e| e.id.as_str())
            .collect();
        ids.sort();
        ids.dedup();
        if ids.len() >= 2 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "one agent.started per start: {:#?}\n{}",
            events.kinds(),
            agent_log_tails(40)
        );
        events.linger(Duration::from_millis(500)).await;
    }
}

/// Image cleanup on a live agent and dockerd: an image the agent used and no exec needs goes,
/// least recently used first; the image of a running exec stays until the exec is done; an
/// image the agent never used, and an excluded one, stay.
#[tokio::test(flavor = "multi_thread")]
async fn images_no_exec_needs_are_cleaned_up_and_a_running_execs_never() {
    let (dir, url, client) = spool_queue().await;
    let tag = uniq("gc").to_lowercase();
    let name = |what: &str| format!("reflow-agent-gc/{what}:{tag}");
    let (old, busy, untracked, kept) = (name("old"), name("busy"), name("untracked"), name("kept"));
    for t in [&old, &busy, &untracked, &kept] {
        let st = Command::new("docker")
            .args(["tag", &image(), t])
            .status()
            .unwrap();
        assert!(st.success(), "docker tag {t}");
    }
    let present = |t: &str| {
        Command::new("docker")
            .args(["image", "inspect", t])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .unwrap()
            .success()
    };
    let _agent = Agent::start(
        dir.path(),
        &uniq("gc"),
        &url,
        &format!(
            "[executor]\nimage_cleanup_interval_secs = 1\nimage_gc_min_age_secs = 0\n\
             image_cleanup_disk_percent = 0\nimage_cleanup_per_cycle = 10\n\
             image_cleanup_exclude = [\"{kept}\"]\n"
        ),
        &[],
    );
    let mut events = Events::new(client.as_ref()).await;
    let job_on = |id: &str, image: &str, cmd: &str| {
        serde_json::to_vec(&serde_json::json!({
            "v": 1, "id": id, "kind": "job",
            "body": {"config": {"Type": "exec", "Image": image, "Cmd": cmd,
                                "Resources": {"mem": 67108864, "cpu": 1}}}
        }))
        .unwrap()
    };
    let (a, k, b) = (uniq("gc-old"), uniq("gc-kept"), uniq("gc-busy"));
    submit(client.as_ref(), &a, &job_on(&a, &old, "echo old > $out")).await;
    submit(client.as_ref(), &k, &job_on(&k, &kept, "echo kept > $out")).await;
    assert!(output(&events.completed(&a).await).1);
    assert!(output(&events.completed(&k).await).1);
    submit(
        client.as_ref(),
        &b,
        &job_on(&b, &busy, "sleep 6; echo busy > $out"),
    )
    .await;
    events
        .until("the busy job running", |e| {
            e.command.as_deref() == Some(b.as_str())
                && matches!(&e.body, EventBody::ExecState { state, .. } if state == "running")
        })
        .await;
    let deadline = Instant::now() + Duration::from_secs(20);
    while present(&old) {
        assert!(Instant::now() < deadline, "{old} was never cleaned up");
        assert!(present(&busy), "{busy} was removed while its exec ran");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    // Several more cycles while the busy exec runs.
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert!(present(&busy), "{busy} was removed while its exec ran");
    assert!(output(&events.completed(&b).await).1);
    // Done and freed, the busy image goes too; the untracked and the excluded one never.
    let deadline = Instant::now() + Duration::from_secs(20);
    while present(&busy) {
        assert!(
            Instant::now() < deadline,
            "{busy} was never cleaned up after its exec"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert!(present(&untracked) && present(&kept));
    assert!(
        present(&image()),
        "the underlying image stays (only tags went)"
    );
    for t in [&untracked, &kept] {
        let _ = Command::new("docker").args(["rmi", t]).output();
    }
}

#[tokio::test]
async fn spool_jobs_wait_for_room_and_events_are_unique() {
    let (dir, url, client) = spool_queue().await;
    jobs_wait_for_room_and_events_are_unique(
        dir.path(),
        &uniq("wait-spool"),
        &url,
        client.as_ref(),
    )
    .await;
}

#[tokio::test]
async fn amqp_jobs_wait_for_room_and_events_are_unique() {
    let dir = tempfile::tempdir().unwrap();
    let url = amqp_ns("wait").await;
    let client = queue::client(&url, &Default::default()).await.unwrap();
    jobs_wait_for_room_and_events_are_unique(dir.path(), &uniq("wait-amqp"), &url, client.as_ref())
        .await;
}

#[tokio::test]
async fn sqs_jobs_wait_for_room_and_events_are_unique() {
    let (dir, url, client) = sqs_queue(&uniq("wait")).await;
    jobs_wait_for_room_and_events_are_unique(dir.path(), &uniq("wait-sqs"), &url, &client).await;
}

/// The agent dies right after the engine started a container (before it could persist that);
/// the container exits while no agent runs; the restarted agent waits for it and reports its
/// result. The engine's own events show exactly one start.
#[tokio::test]
async fn a_crash_right_after_start_never_starts_the_container_twice() {
    let (dir, url, client) = spool_queue().await;
    let mut events = Events::new(client.as_ref()).await;
    let starts = StartCounter::new();
    let name = uniq("failpoint");
    let mut agent = Agent::start(
        dir.path(),
        &name,
        &url,
        "",
        &[(reflow_agent::failpoint::ENV, "exec.after_start")],
    );
    let id = uniq("once");
    submit(client.as_ref(), &id, &job(&id, "echo once > $out")).await;
    let status = agent.wait(Duration::from_secs(60));
    assert_eq!(status.code(), Some(137), "the failpoint ended the agent");
    assert!(agent.logs().contains("Failpoint armed"), "{}", agent.logs());
    // Let the container finish while no agent runs.
    let label = format!("label=reflow-executor={}", job_alloc_id(&id));
    let deadline = Instant::now() + Duration::from_secs(30);
    while !docker(&["ps", "-q", "--filter", &label]).trim().is_empty() {
        assert!(Instant::now() < deadline, "the container did not exit");
        std::thread::sleep(Duration::from_millis(100));
    }
    let again = Agent::start(dir.path(), &name, &url, "", &[]);
    let e = events.completed(&id).await;
    assert_eq!(output(&e), (sha256sum(b"once\n"), true, false));
    assert!(
        again
            .logs()
            .contains("waiting for it instead of starting it again"),
        "{}",
        again.logs()
    );
    assert_eq!(job_starts(&starts, &id), 1, "started exactly once");
}

/// The agent dies right after it made a job's alloc, before its journal recorded the alloc.
/// The restarted agent keeps that restored (and so expired) alloc alive before it takes a new
/// command: a second job that needs the whole machine waits for room instead of reclaiming the
/// first job's alloc, and both complete, each with one container start.
#[tokio::test]
async fn a_crash_right_after_a_jobs_alloc_keeps_that_alloc() {
    let (dir, url, client) = spool_queue().await;
    let mut events = Events::new(client.as_ref()).await;
    let starts = StartCounter::new();
    let name = uniq("failpoint-alloc");
    let mut agent = Agent::start(
        dir.path(),
        &name,
        &url,
        "",
        &[(reflow_agent::failpoint::ENV, "job.after_alloc")],
    );
    let first = uniq("alloc-first");
    submit(client.as_ref(), &first, &whole_machine_job(&first, 1)).await;
    let status = agent.wait(Duration::from_secs(60));
    assert_eq!(status.code(), Some(137), "the failpoint ended the agent");
    let second = uniq("alloc-second");
    submit(client.as_ref(), &second, &whole_machine_job(&second, 1)).await;
    let again = Agent::start(dir.path(), &name, &url, "", &[]);
    for id in [&first, &second] {
        let e = events.completed(id).await;
        let (digest, ok, _) = output(&e);
        assert!(ok, "{id} failed: {e:?}\n{}", tail(&again.logs(), 40));
        assert_eq!(digest, sha256sum(format!("{id}\n").as_bytes()), "{id}");
        assert_eq!(job_starts(&starts, id), 1, "{id} started once");
    }
    assert!(
        !again.logs().contains("Reclaiming an expired alloc"),
        "the resumed job's alloc was reclaimed:\n{}",
        again.logs()
    );
}

/// 20 distinct jobs; the agent is SIGKILLed at 10 moments spread over the run and restarted each
/// time. Every job completes once with its own output: one container start per job (from the
/// engine's events) and one `exec.completed` id per job, however often it was republished.
async fn kill9_loop(root: &Path, name: &str, url: &str, client: &dyn Client) {
    // Short SQS leases, so a message a killed agent had received but not journaled comes back
    // within seconds (a journaled one is re-owned through its receipt handle).
    let extra = "visibility_timeout_secs = 6\n";
    let mut events = Events::new(client).await;
    let starts = StartCounter::new();
    // The first agent too: a message it received and did not journal before its kill must
    // come back within the wait below, not after the default 120 s.
    let mut agent = Agent::start(root, name, url, extra, &[]);
    let ids = submit_sleepers(client, "k", 20, "0.3").await;
    // Pseudo-random pauses of 200 to 1000 ms between kills.
    let mut seed = std::time::UNIX_EPOCH.elapsed().unwrap().subsec_nanos() as u64 | 1;
    for _ in 0..10 {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        std::thread::sleep(Duration::from_millis(200 + seed % 800));
        agent.signal("-KILL");
        agent.wait(Duration::from_secs(30));
        agent = Agent::start(root, name, url, extra, &[]);
    }
    for id in &ids {
        let e = events.completed(id).await;
        let (digest, ok, _) = output(&e);
        // Every incarnation's lines about this job: a wrong outcome after kills is rare, and
        // the log is gone with the test's directory.
        let about = || agent.lines_about(&[id, &job_alloc_id(id)], 120);
        assert!(ok, "{id} failed: {e:?}\n{}", about());
        assert_eq!(
            digest,
            sha256sum(format!("{id}\n").as_bytes()),
            "{id}: {e:?}\n{}",
            about()
        );
    }
    events.linger(Duration::from_secs(2)).await;
    for id in &ids {
        assert_eq!(job_starts(&starts, id), 1, "{id}: one container start");
        let mut completed = events.ids(id, "exec.completed");
        completed.sort();
        completed.dedup();
        assert_eq!(
            completed.len(),
            1,
            "{id}: one exec.completed id: {completed:?}"
        );
    }
}

#[tokio::test]
async fn spool_kill9_loop_completes_every_job_once() {
    let (dir, url, client) = spool_queue().await;
    kill9_loop(dir.path(), &uniq("kill-spool"), &url, client.as_ref()).await;
}

#[tokio::test]
async fn amqp_kill9_loop_completes_every_job_once() {
    let dir = tempfile::tempdir().unwrap();
    let url = amqp_ns("kill").await;
    let client = queue::client(&url, &Default::default()).await.unwrap();
    kill9_loop(dir.path(), &uniq("kill-amqp"), &url, client.as_ref()).await;
}

#[tokio::test]
async fn sqs_kill9_loop_completes_every_job_once() {
    let (dir, url, client) = sqs_queue(&uniq("kill")).await;
    kill9_loop(dir.path(), &uniq("kill-sqs"), &url, &client).await;
}

/// Two agents on one queue run 8 jobs, 4 each; then one machine dies for good: its agent is
/// SIGKILLed, its containers are removed and its state directory is deleted. Every job still
/// completes once with its own output, the dead machine's on the survivor: the broker hands
/// back what the dead agent held (its connection closes on AMQP, its leases lapse on SQS).
async fn machine_death(root: &Path, url: &str, client: &dyn Client, extra: &str) {
    let mut events = Events::new(client).await;
    let limits = format!("max_jobs = 4\n{extra}");
    let (dead, survivor) = (uniq("dies"), uniq("survives"));
    let mut doomed = Agent::start(root, &dead, url, &limits, &[]);
    let _survivor = Agent::start(root, &survivor, url, &limits, &[]);
    for n in [&dead, &survivor] {
        events
            .until("agent.started", |e| {
                e.body.kind() == "agent.started" && e.agent == *n
            })
            .await;
    }
    let ids: Vec<String> = (0..8).map(|i| uniq(&format!("m{i}"))).collect();
    for id in &ids {
        let body = serde_json::to_vec(&serde_json::json!({
            "v": 1, "id": id, "kind": "job",
            "body": {"config": {"Type": "exec", "Image": image(),
                                "Cmd": format!("sleep 8; echo {id} > $out"),
                                "Resources": {"mem": 33554432, "cpu": 0.25}}}
        }))
        .unwrap();
        submit(client, id, &body).await;
    }
    let running_on = |events: &Events, agent: &str| -> Vec<String> {
        let mut v: Vec<String> = events
            .seen
            .iter()
            .filter(|e| {
                e.agent == agent
                    && matches!(&e.body, EventBody::ExecState { state, .. } if state == "running")
            })
            .filter_map(|e| e.command.clone())
            .collect();
        v.sort();
        v.dedup();
        v
    };
    // Each agent holds only what it can run (prefetch = max_jobs), so the 8 jobs split 4 and 4.
    let deadline = Instant::now() + Duration::from_secs(60);
    while running_on(&events, &dead).len() < 4 || running_on(&events, &survivor).len() < 4 {
        assert!(
            Instant::now() < deadline,
            "not 4 + 4 running jobs: {:#?}\n{}",
            events.kinds(),
            agent_log_tails(40)
        );
        events.one_more().await;
    }
    let lost = running_on(&events, &dead);
    doomed.signal("-KILL");
    doomed.wait(Duration::from_secs(30));
    for id in &lost {
        let out = Command::new("docker")
            .args(["ps", "-aq", "--filter"])
            .arg(format!("label=reflow-executor={}", job_alloc_id(id)))
            .output()
            .unwrap();
        for c in String::from_utf8_lossy(&out.stdout).split_whitespace() {
            let rm = Command::new("docker")
                .args(["rm", "-f", c])
                .output()
                .unwrap();
            let why = String::from_utf8_lossy(&rm.stderr);
            // The survivor, handed the dead agent's jobs the moment its connection closed,
            // may be replacing that container already (a stale one with its exec's name):
            // that removal goes on by itself, and the container is gone once it ends.
            let going = why.contains("already in progress");
            assert!(rm.status.success() || going, "docker rm -f {c}: {why}");
            let deadline = Instant::now() + Duration::from_secs(30);
            while going
                && !docker(&["ps", "-aq", "--filter", &format!("id={c}")])
                    .trim()
                    .is_empty()
            {
                assert!(
                    Instant::now() < deadline,
                    "{c} still there 30 s after its removal"
                );
                std::thread::sleep(Duration::from_millis(200));
            }
        }
    }
    std::fs::remove_dir_all(root.join(&dead)).unwrap();
    for id in &ids {
        let e = events.completed(id).await;
        let (digest, ok, _) = output(&e);
        assert!(ok, "{id} failed: {e:?}");
        assert_eq!(digest, sha256sum(format!("{id}\n").as_bytes()), "{id}");
        if lost.contains(id) {
            assert_eq!(e.agent, survivor, "{id} completed by the dead machine");
        }
    }
    events.linger(Duration::from_secs(1)).await;
    for id in &ids {
        let mut completed = events.ids(id, "exec.completed");
        completed.sort();
        completed.dedup();
        assert_eq!(completed.len(), 1, "{id}: {completed:?}");
    }
}

#[tokio::test]
async fn amqp_machine_death_loses_no_job() {
    let dir = tempfile::tempdir().unwrap();
    let url = amqp_ns("death").await;
    let client = queue::client(&url, &Default::default()).await.unwrap();
    machine_death(dir.path(), &url, client.as_ref(), "").await;
}

#[tokio::test]
async fn sqs_machine_death_loses_no_job() {
    let (dir, url, client) = sqs_queue(&uniq("death")).await;
    // A short lease, so the dead machine's messages reappear within seconds.
    machine_death(dir.path(), &url, &client, "visibility_timeout_secs = 6\n").await;
}

/// Submits `n` jobs that sleep `secs` seconds and write their own command id (ids `PREFIXi`,
/// made unique); their ids, in order.
async fn submit_sleepers(client: &dyn Client, prefix: &str, n: usize, secs: &str) -> Vec<String> {
    let ids: Vec<String> = (0..n).map(|i| uniq(&format!("{prefix}{i}"))).collect();
    for id in &ids {
        submit(
            client,
            id,
            &job(id, &format!("sleep {secs}; echo {id} > $out")),
        )
        .await;
    }
    ids
}

/// A temporary directory and a new `sqs://NAME?create=true` queue on moto, and a client of it.
async fn sqs_queue(name: &str) -> (tempfile::TempDir, String, queue::sqs::SqsClient) {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqs://{name}?create=true");
    let client = queue::sqs::SqsClient::from_sdk(&url, &aws_sdk().await, 5)
        .await
        .unwrap();
    (dir, url, client)
}

/// A temporary directory with a `spool://` queue in it, and a client of that queue.
async fn spool_queue() -> (tempfile::TempDir, String, Box<dyn Client>) {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("spool://{}", dir.path().join("spool").display());
    let client = queue::client(&url, &Default::default()).await.unwrap();
    (dir, url, client)
}

/// A tmpfs mounted for a test, unmounted when dropped.
struct Tmpfs(PathBuf);

impl Tmpfs {
    fn mount(at: &Path, size: &str) -> Tmpfs {
        std::fs::create_dir_all(at).unwrap();
        let st = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(at)
            .status()
            .unwrap();
        assert!(st.success(), "mounting a tmpfs needs root");
        Tmpfs(at.to_path_buf())
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.0).status();
    }
}

/// Files under `root` whose names say they are torn or half-written: temp files of an atomic
/// write, or state that does not decode.
fn torn_files(root: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).into_iter().flatten().flatten() {
            let p = e.path();
            let name = e.file_name().to_string_lossy().into_owned();
            if e.file_type().is_ok_and(|t| t.is_dir()) {
                stack.push(p);
            } else if reflow_agent::persist::is_leftover(&name)
                || (name.ends_with(".json")
                    && serde_json::from_slice::<serde_json::Value>(&std::fs::read(&p).unwrap())
                        .is_err())
            {
                out.push(p);
            }
        }
    }
    out
}

/// The state directory sits on a 24 MiB tmpfs and a job's output fills it. The job completes
/// with a clear `ResourcesExhausted` error instead of wedging its slot, nothing on disk is torn,
/// and once the space is freed the next job runs.
#[tokio::test]
async fn a_full_disk_fails_the_job_clearly_and_the_next_one_runs() {
    let (dir, url, client) = spool_queue().await;
    let name = uniq("full");
    let _fs = Tmpfs::mount(&dir.path().join(&name), "24m");
    // One run slot: a wedged slot would hold up the second job.
    let agent = Agent::start(dir.path(), &name, &url, "max_jobs = 1\n", &[]);
    let mut events = Events::new(client.as_ref()).await;
    // One job fails because its write hit the full disk; the other ignores the failed write and
    // exits 0 with a truncated output. Both are the full disk's doing.
    for cmd in [
        "cat /dev/zero > $out",
        "cat /dev/zero > $out 2>/dev/null || true",
    ] {
        let fill = uniq("fill");
        submit(client.as_ref(), &fill, &job(&fill, cmd)).await;
        let e = events.completed(&fill).await;
        let EventBody::ExecCompleted { result, .. } = &e.body else {
            unreachable!()
        };
        let Some(err) = result.err.as_ref() else {
            panic!(
                "{cmd}: a job that filled the disk succeeded: {e:?}\n{}",
                tail(&agent.logs(), 60)
            );
        };
        assert_eq!(
            err.kind,
            reflow_agent::error::Kind::ResourcesExhausted,
            "{cmd}: {err}\n{}",
            tail(&agent.logs(), 40)
        );
        assert!(
            err.to_string().contains("No space left on device"),
            "{cmd}: the error says why: {err}"
        );
    }
    let next = uniq("next");
    submit(client.as_ref(), &next, &job(&next, "echo fine > $out")).await;
    let e = events.completed(&next).await;
    let (digest, ok, _) = output(&e);
    assert!(ok, "{e:?}\n{}", tail(&agent.logs(), 40));
    assert_eq!(digest, sha256sum(b"fine\n"));
    let torn = torn_files(&dir.path().join(&name));
    assert!(torn.is_empty(), "torn state: {torn:?}");
}

/// Kills dockerd and starts it again the way `scripts/dev-services.sh` does, while jobs run and
/// while more arrive. Nothing is lost,
/// nothing fails, every output is right: jobs whose containers the restart stopped run again,
/// and the agent takes no new work while the engine is away. Runs alone (.config/nextest.toml).
#[tokio::test]
async fn engine_restart_mid_run_loses_and_fails_nothing() {
    let (dir, url, client) = spool_queue().await;
    let name = uniq("engine");
    let agent = Agent::start(dir.path(), &name, &url, "max_jobs = 2\n", &[]);
    let addr = admin_addr(&agent).await;
    let mut events = Events::new(client.as_ref()).await;
    let ids: Vec<String> = (0..6).map(|i| uniq(&format!("e{i}"))).collect();
    // The first two outlast the outage: the restarted daemon, without live-restore, stops them
    // as it starts (they exit on its SIGTERM; as PID 1 they would otherwise ignore it and hold
    // the daemon's start for its 10 s stop timeout). The rest are short.
    let job_of = |i: usize, id: &String| {
        let run = if i < 2 {
            "trap 'exit 143' TERM; sleep 10 & wait $!"
        } else {
            "sleep 1"
        };
        job(id, &format!("{run}; echo {id} > $out"))
    };
    for (i, id) in ids[..4].iter().enumerate() {
        submit(client.as_ref(), id, &job_of(i, id)).await;
    }
    ready_becomes(&addr, 200, Duration::from_secs(30)).await;
    tokio::time::sleep(Duration::from_millis(1500)).await;
    // dockerd crashes. Its containers outlive it (their shims keep them), and the restarted
    // daemon, without live-restore, kills them as it starts: the agent must see that as the
    // engine's doing and run those execs again.
    let st = Command::new("pkill")
        .args(["-KILL", "-x", "dockerd"])
        .status()
        .unwrap();
    assert!(st.success(), "no dockerd to kill");
    ready_becomes(&addr, 503, Duration::from_secs(30)).await;
    // Work that arrives while the engine is away waits for it.
    for (i, id) in ids.iter().enumerate().skip(4) {
        submit(client.as_ref(), id, &job_of(i, id)).await;
    }
    let deadline = Instant::now() + Duration::from_secs(60);
    while Command::new("pgrep")
        .args(["-x", "dockerd"])
        .stdout(Stdio::null())
        .status()
        .unwrap()
        .success()
    {
        assert!(Instant::now() < deadline, "dockerd did not stop");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let st = Command::new("bash")
        .arg(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/scripts/dev-services.sh"
        ))
        .env("REFLOW_SERVICES", "docker")
        .stdout(Stdio::null())
        .status()
        .unwrap();
    assert!(st.success(), "dockerd did not start again");
    ready_becomes(&addr, 200, Duration::from_secs(30)).await;
    for id in &ids {
        let e = events.completed(id).await;
        let (digest, ok, _) = output(&e);
        assert!(ok, "{id} failed: {e:?}\n{}", tail(&agent.logs(), 60));
        assert_eq!(digest, sha256sum(format!("{id}\n").as_bytes()), "{id}");
    }
    let logs = agent.logs();
    assert!(
        !logs.contains("\"Job failed.\""),
        "a job failed:\n{}",
        tail(&logs, 60)
    );
    assert!(
        logs.contains("The container engine does not answer"),
        "the outage is logged"
    );
    assert!(
        logs.contains("stopped by the engine, not a failure of the exec"),
        "no container was stopped by the restart: the test did not test it\n{}",
        tail(&logs, 60)
    );
}

/// A queue command is not a root shell: on a live agent, commands that name an image off the
/// allowlist, a repository that is not granted, or a host file as an input are refused before
/// anything is read or written, dead-lettered with a reason that names the setting to change.
/// A granted repository works.
#[tokio::test]
async fn commands_reach_only_granted_repositories_and_allowed_images() {
    let (dir, url, client) = spool_queue().await;
    let granted = dir.path().join("granted");
    let not_granted = dir.path().join("not-granted");
    let agent = Agent::start(
        dir.path(),
        &uniq("grants"),
        &url,
        &format!(
            "[security]\nimage_allowlist = [\"reflow-agent-test/\"]\nrepositories = [\"file://{}\"]\n",
            granted.display()
        ),
        &[],
    );
    let mut events = Events::new(client.as_ref()).await;
    let with = |id: &str, f: &dyn Fn(&mut serde_json::Value)| {
        let mut v: serde_json::Value = serde_json::from_slice(&job(id, "echo x > $out")).unwrap();
        f(&mut v);
        serde_json::to_vec(&v).unwrap()
    };
    let host = format!("file://{}", not_granted.display());
    let cases: Vec<(String, Vec<u8>, &str)> = vec![
        {
            let id = uniq("image");
            let body = with(&id, &|v| {
                v["body"]["config"]["Image"] = "reflow-agent-test-evil/busybox:1".into();
            });
            (id, body, "is not allowed on this agent")
        },
        {
            let id = uniq("inputs");
            let body = with(&id, &|v| v["body"]["inputs_from"] = "file:///etc".into());
            (id, body, "security.repositories")
        },
        {
            let id = uniq("outputs");
            let body = with(&id, &|v| v["body"]["outputs_to"] = host.clone().into());
            (id, body, "security.repositories")
        },
        {
            let id = uniq("escape");
            let esc = format!("file://{}/../not-granted", granted.display());
            let body = with(&id, &|v| v["body"]["outputs_to"] = esc.clone().into());
            (id, body, "security.repositories")
        },
        {
            let id = uniq("hostfile");
            let body = with(&id, &|v| {
                v["body"]["config"]["Args"] = serde_json::json!([{"Fileset": {"Fileset": {"f": {
                    "Size": 5, "Source": "file:///etc/hostname", "ETag": "x"}}}}]);
            });
            (id, body, "host filesystem")
        },
        {
            let id = uniq("load");
            let body = serde_json::to_vec(&serde_json::json!({
                "v": 1, "id": id, "kind": "load", "alloc": "0123456789abcdef",
                "body": {"repo_url": "file:///etc", "fileset": {}}
            }))
            .unwrap();
            (id, body, "security.repositories")
        },
    ];
    for (id, body, _) in &cases {
        submit(client.as_ref(), id, body).await;
    }
    for (id, _, why) in &cases {
        let e = events
            .until(&format!("command.rejected {id}"), |e| {
                e.body.kind() == "command.rejected" && e.command.as_deref() == Some(id.as_str())
            })
            .await;
        let EventBody::CommandRejected { error, .. } = &e.body else {
            unreachable!()
        };
        assert_eq!(
            error.kind,
            reflow_agent::error::Kind::NotAllowed,
            "{id}: {error}"
        );
        assert!(error.to_string().contains(why), "{id}: {error}");
    }
    let deadline = Instant::now() + Duration::from_secs(30);
    let dead = loop {
        let d = client.dead_letters(20).await.unwrap();
        if d.len() >= cases.len() || Instant::now() > deadline {
            break d;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    assert_eq!(dead.len(), cases.len(), "every refusal is dead-lettered");
    assert!(
        dead.iter().all(|d| d.reason.contains("not allowed")
            || d.reason.contains("not granted")
            || d.reason.contains("host filesystem")),
        "{:?}",
        dead.iter().map(|d| &d.reason).collect::<Vec<_>>()
    );
    assert!(
        !not_granted.exists(),
        "nothing was written outside the grants"
    );
    // A granted repository is usable.
    let ok = uniq("granted");
    let out = format!("file://{}/run", granted.display());
    submit(
        client.as_ref(),
        &ok,
        &with(&ok, &|v| v["body"]["outputs_to"] = out.clone().into()),
    )
    .await;
    let e = events.completed(&ok).await;
    let (digest, fine, _) = output(&e);
    assert!(fine, "{e:?}\n{}", tail(&agent.logs(), 30));
    assert_eq!(digest, sha256sum(b"x\n"));
    assert!(
        granted.join("run").exists(),
        "outputs sent to the granted repository"
    );
}

/// Secrets never reach a log or an event: a live agent with an HMAC key, its own AWS secret
/// key and registry credentials signs-checks jobs, pulls an image with auth, writes outputs to
/// S3 and rejects a bad command; then every log line, event and dead letter is searched for
/// each secret (and the registry's base64 `auth`). Serialised with the registry tests, which
/// remove and pull the same image (.config/nextest.toml).
#[tokio::test]
async fn secrets_never_reach_logs_or_events() {
    use base64::Engine as _;
    let (dir, url, client) = spool_queue().await;
    let hmac = format!("hmac-{}", uniq("secret"));
    let aws_secret = format!("aws-{}", uniq("secret"));
    let registry_auth = base64::engine::general_purpose::STANDARD
        .encode(format!("{}:{}", REGISTRY_CREDS.0, REGISTRY_CREDS.1));
    let docker_config = dir.path().join("docker-config.json");
    std::fs::write(
        &docker_config,
        format!(r#"{{"auths": {{"{REGISTRY}": {{"auth": "{registry_auth}"}}}}}}"#),
    )
    .unwrap();
    let s3 = reflow_agent::blob::s3::S3Store::new(&aws_sdk().await);
    let bucket = format!("it-{}", &uniq("secrets")[8..]);
    s3.client()
        .create_bucket()
        .bucket(&bucket)
        .send()
        .await
        .unwrap();
    let image = format!("{REGISTRY}/reflow-agent-test/busybox:1");
    let _ = Command::new("docker").args(["rmi", "-f", &image]).output();
    let name = uniq("secrets");
    let agent = Agent::start_with(
        dir.path(),
        &name,
        "",
        &url,
        &format!(
            "[executor]\ndocker_config = \"{}\"\nallow_aws_creds = true\n[security]\nrepositories = [\"s3://{bucket}/repo\"]\n",
            docker_config.display()
        ),
        &[
            ("REFLOW_AGENT_HMAC_KEY", hmac.as_str()),
            ("AWS_SECRET_ACCESS_KEY", aws_secret.as_str()),
            // Debug logs included: no library's log of a request may carry them either.
            ("RUST_LOG", "debug"),
        ],
    );
    let mut events = Events::new(client.as_ref()).await;
    let signed = |mut env: serde_json::Value| {
        let now = reflow_agent::clock::Clock::now(&reflow_agent::clock::SystemClock);
        env["time"] = reflow_agent::time::format(&now).into();
        env["signature"] = reflow_agent::control::security::sign(hmac.as_bytes(), &env).into();
        serde_json::to_vec(&env).unwrap()
    };
    let ok = uniq("pulled");
    let mut body: serde_json::Value =
        serde_json::from_slice(&job(&ok, "echo secretless > $out")).unwrap();
    body["body"]["config"]["Image"] = image.clone().into();
    body["body"]["outputs_to"] = format!("s3://{bucket}/repo").into();
    submit(client.as_ref(), &ok, &signed(body)).await;
    // An exec that asks for AWS credentials gets the agent's (executor.allow_aws_creds), in
    // its environment only: it writes the key id and the secret's length, never the secret.
    let creds = uniq("creds");
    let mut body: serde_json::Value = serde_json::from_slice(&job(
        &creds,
        "echo \"$AWS_ACCESS_KEY_ID ${#AWS_SECRET_ACCESS_KEY}\" > $out",
    ))
    .unwrap();
    body["body"]["config"]["NeedAWSCreds"] = true.into();
    submit(client.as_ref(), &creds, &signed(body)).await;
    let unsigned = uniq("unsigned");
    submit(
        client.as_ref(),
        &unsigned,
        &job(&unsigned, "echo no > $out"),
    )
    .await;
    let e = events.completed(&ok).await;
    let (digest, fine, _) = output(&e);
    assert!(fine, "{e:?}\n{}", tail(&agent.logs(), 40));
    assert_eq!(digest, sha256sum(b"secretless\n"));
    let e = events.completed(&creds).await;
    let (digest, fine, _) = output(&e);
    assert!(fine, "{e:?}\n{}", tail(&agent.logs(), 40));
    let key_id = aws_env()
        .into_iter()
        .find(|(k, _)| *k == "AWS_ACCESS_KEY_ID")
        .map(|(_, v)| v)
        .unwrap();
    assert_eq!(
        digest,
        sha256sum(format!("{key_id} {}\n", aws_secret.len()).as_bytes()),
        "the exec got the agent's credentials"
    );
    events
        .until("command.rejected (unsigned)", |e| {
            e.body.kind() == "command.rejected" && e.command.as_deref() == Some(unsigned.as_str())
        })
        .await;
    events.linger(Duration::from_millis(500)).await;
    let mut haystack = std::fs::read_to_string(dir.path().join(format!("{name}.log"))).unwrap();
    for sub in ["spool/events", "spool/dead"] {
        for f in std::fs::read_dir(dir.path().join(sub)).unwrap().flatten() {
            haystack.push_str(&std::fs::read_to_string(f.path()).unwrap_or_default());
        }
    }
    for e in &events.seen {
        haystack.push_str(&format!("{e:?}"));
    }
    assert!(
        haystack.contains(&ok),
        "the search covers the job's own records"
    );
    for (what, secret) in [
        ("HMAC key", hmac.as_str()),
        ("AWS secret key", aws_secret.as_str()),
        ("registry password", REGISTRY_CREDS.1),
        ("registry auth", registry_auth.as_str()),
    ] {
        assert!(
            !haystack.contains(secret),
            "the {what} leaked into logs or events"
        );
    }
}

/// `queue.max_job_secs` bounds every job: one asking for more is rejected with the reason, and
/// one still running past its own `timeout_secs` is stopped and fails with `Timeout`.
#[tokio::test]
async fn a_job_past_its_time_limit_is_stopped_and_a_longer_one_refused() {
    let (dir, url, client) = spool_queue().await;
    let mut events = Events::new(client.as_ref()).await;
    let _agent = Agent::start(dir.path(), &uniq("limit"), &url, "max_job_secs = 60\n", &[]);
    let with_timeout = |id: &str, cmd: &str, secs: u64| {
        let mut v: serde_json::Value = serde_json::from_slice(&job(id, cmd)).unwrap();
        v["body"]["timeout_secs"] = secs.into();
        serde_json::to_vec(&v).unwrap()
    };
    let (long, slow) = (uniq("too-long"), uniq("slow"));
    submit(client.as_ref(), &long, &with_timeout(&long, "true", 61)).await;
    submit(
        client.as_ref(),
        &slow,
        &with_timeout(&slow, "sleep 600; echo > $out", 3),
    )
    .await;
    let rejected = events
        .until("command.rejected", |e| {
            e.body.kind() == "command.rejected" && e.command.as_deref() == Some(long.as_str())
        })
        .await;
    let reason = rejected.labels.get("reason").cloned().unwrap_or_default();
    assert!(
        reason.contains("timeout_secs 61") && reason.contains("max_job_secs"),
        "{reason}"
    );
    let started = Instant::now();
    let e = events.completed(&slow).await;
    let EventBody::ExecCompleted { result, .. } = &e.body else {
        unreachable!()
    };
    let err = result.err.as_ref().expect("the slow job failed");
    assert_eq!(err.kind, reflow_agent::error::Kind::Timeout, "{err:?}");
    assert!(
        started.elapsed() < Duration::from_secs(60),
        "stopped at its own limit"
    );
    let left = Command::new("docker")
        .args(["ps", "-aq", "--filter"])
        .arg(format!("label=reflow-executor={}", job_alloc_id(&slow)))
        .output()
        .unwrap();
    assert!(
        String::from_utf8_lossy(&left.stdout).trim().is_empty(),
        "its container is gone"
    );
}

/// With a claim store (the DynamoDB TaskDB on moto), a command redelivered to a second agent
/// while the first still runs it is not started there: the second waits on the first's live
/// claim, and settles its delivery without running once the first is done. The redelivery is
/// real: the first agent is frozen (SIGSTOP) until RabbitMQ drops its connection for missed
/// heartbeats and hands the job to the second.
#[tokio::test]
async fn amqp_redelivery_to_a_second_agent_waits_on_the_claim_and_runs_once() {
    let dir = tempfile::tempdir().unwrap();
    let url = amqp_ns("claim").await;
    let client = queue::client(&url, &Default::default()).await.unwrap();
    let mut events = Events::new(client.as_ref()).await;
    let starts = StartCounter::new();
    let taskdb = format!(
        "[taskdb]\ntable = \"{}\"\ncreate_table = true\n",
        uniq("claims")
    );
    // Heartbeats follow op_timeout_secs: a frozen agent is dropped within a few seconds.
    let limits = "max_jobs = 1\nop_timeout_secs = 2\n";
    let (first, second) = (uniq("claim-1"), uniq("claim-2"));
    let a = Agent::start_with(dir.path(), &first, &taskdb, &url, limits, &[]);
    let id = uniq("claimed");
    submit(
        client.as_ref(),
        &id,
        &job(&id, &format!("sleep 12; echo {id} > $out")),
    )
    .await;
    events
        .until("running on the first agent", |e| {
            e.agent == first
                && e.command.as_deref() == Some(id.as_str())
                && matches!(&e.body, EventBody::ExecState { state, .. } if state == "running")
        })
        .await;
    let b = Agent::start_with(dir.path(), &second, &taskdb, &url, limits, &[]);
    a.signal("-STOP");
    b.until_logged(
        "Another agent holds a live claim",
        "the second agent never saw the job",
    );
    a.signal("-CONT");
    let e = events.completed(&id).await;
    assert_eq!(e.agent, first);
    assert_eq!(
        output(&e),
        (sha256sum(format!("{id}\n").as_bytes()), true, false)
    );
    b.until_logged(
        "Another agent finished this job",
        "the second agent never settled its duplicate",
    );
    events.linger(Duration::from_secs(2)).await;
    let mut completed = events.ids(&id, "exec.completed");
    completed.dedup();
    assert_eq!(completed.len(), 1, "{completed:?}");
    assert_eq!(
        job_starts(&starts, &id),
        1,
        "one container start in the fleet"
    );
}

/// SQS leases follow what the agent holds: with a 3 s visibility, jobs that wait 4 to 8 s for
/// room (held, not running) and then run 4 s never reappear (no second receive of any of them),
/// and each starts once.
#[tokio::test]
async fn sqs_held_messages_never_reappear_while_they_wait_or_run() {
    let (dir, url, client) = sqs_queue(&uniq("held")).await;
    let mut events = Events::new(&client).await;
    let starts = StartCounter::new();
    let agent = Agent::start(
        dir.path(),
        &uniq("held"),
        &url,
        "max_jobs = 3\nprefetch = 3\nvisibility_timeout_secs = 3\n",
        &[],
    );
    let ids: Vec<String> = (0..3).map(|i| uniq(&format!("held{i}"))).collect();
    for id in &ids {
        submit(&client, id, &whole_machine_job(id, 4)).await;
    }
    for id in &ids {
        let e = events.completed(id).await;
        assert!(output(&e).1, "{id} failed: {e:?}");
    }
    let logs = agent.logs();
    assert!(
        logs.contains("The job waits for room"),
        "no job had to wait: {}",
        tail(&logs, 30)
    );
    assert!(
        !logs.contains("\"attempt\":2"),
        "a held message was received again: {}",
        tail(&logs, 30)
    );
    for id in &ids {
        assert_eq!(job_starts(&starts, id), 1, "{id} started once");
    }
}

/// A fleet: 4 agents on one RabbitMQ share 200 trivial jobs; once a quarter of them completed,
/// 3 agents are scaled in by SIGTERM (they drain: hand back what they have not started, finish
/// what runs). Every job completes once: one container start each, one `exec.completed` id each.
#[tokio::test]
async fn amqp_fleet_of_four_scaled_to_one_completes_every_job_once() {
    const JOBS: usize = 200;
    let dir = tempfile::tempdir().unwrap();
    let url = amqp_ns("fleet").await;
    let client = queue::client(&url, &Default::default()).await.unwrap();
    let mut events = Events::new(client.as_ref()).await;
    let starts = StartCounter::new();
    let names: Vec<String> = (0..4).map(|i| uniq(&format!("fleet{i}"))).collect();
    let mut agents: Vec<Agent> = names
        .iter()
        .map(|n| Agent::start(dir.path(), n, &url, "drain_grace_secs = 60\n", &[]))
        .collect();
    for n in &names {
        events
            .until("agent.started", |e| {
                e.body.kind() == "agent.started" && e.agent == *n
            })
            .await;
    }
    let started = Instant::now();
    let ids: Vec<String> = (0..JOBS).map(|i| uniq(&format!("f{i}"))).collect();
    for id in &ids {
        submit(client.as_ref(), id, &job(id, &format!("echo {id} > $out"))).await;
    }
    let done = |events: &Events| -> usize {
        let mut c: Vec<&str> = events
            .seen
            .iter()
            .filter(|e| e.body.kind() == "exec.completed")
            .filter_map(|e| e.command.as_deref())
            .collect();
        c.sort_unstable();
        c.dedup();
        c.len()
    };
    while done(&events) < JOBS / 4 {
        events.one_more().await;
    }
    let scaled_in = Instant::now();
    for a in &agents[1..] {
        a.signal("-TERM");
    }
    for id in &ids {
        let e = events.completed(id).await;
        let (digest, ok, _) = output(&e);
        assert!(ok, "{id} failed: {e:?}");
        assert_eq!(digest, sha256sum(format!("{id}\n").as_bytes()), "{id}");
    }
    let makespan = started.elapsed();
    for a in &mut agents[1..] {
        assert!(
            a.wait(Duration::from_secs(90)).success(),
            "a drained agent exits 0"
        );
    }
    events.linger(Duration::from_secs(2)).await;
    let counts = starts.all_starts();
    for id in &ids {
        assert_eq!(
            counts.get(&job_alloc_id(id)).copied().unwrap_or(0),
            1,
            "{id}: one container start"
        );
        let mut completed = events.ids(id, "exec.completed");
        completed.sort();
        completed.dedup();
        assert_eq!(completed.len(), 1, "{id}: {completed:?}");
    }
    let by_agent = names
        .iter()
        .map(|n| {
            let c = events
                .seen
                .iter()
                .filter(|e| e.body.kind() == "exec.completed" && e.agent == *n)
                .count();
            format!("{n}: {c}")
        })
        .collect::<Vec<_>>();
    eprintln!(
        "fleet: {JOBS} jobs in {makespan:?} (4 agents for {:?}, then 1); completions {by_agent:?}",
        scaled_in - started
    );
    // For bench/fleet.sh, which compares the makespan with the ideal for the capacity present
    // (each agent runs `max_jobs` = CPU cores at once, the default).
    let slots = std::thread::available_parallelism().map_or(1, std::num::NonZero::get);
    eprintln!(
        "fleet-bench jobs={JOBS} makespan_secs={:.3} scale_in_secs={:.3} slots_before={} slots_after={slots}",
        makespan.as_secs_f64(),
        (scaled_in - started).as_secs_f64(),
        4 * slots
    );
}

/// The test broker's TLS listener (scripts/dev-services.sh): `AGENT_IT_AMQP_URL` on
/// `amqps://localhost:5671`, and the CA that signed its certificate.
fn amqps() -> (String, PathBuf) {
    let url =
        amqp()
            .replacen("amqp://", "amqps://", 1)
            .replacen("127.0.0.1:5672", "localhost:5671", 1);
    let ca = std::env::var("AGENT_IT_TLS_CA")
        .unwrap_or_else(|_| "/var/lib/reflow-agent-dev/tls/ca.pem".to_string());
    (url, PathBuf::from(ca))
}

/// `amqps://` end to end: an agent and a producer that trust the broker's private CA and show
/// the client certificate it requires (PKCS#12 with a password, as scripts/dev-services.sh
/// makes them) run a job over TLS (port 5671 speaks nothing else). An agent that does not trust
/// the CA, one without a client certificate, and one whose amqps:// URL points at the
/// plaintext port refuse to start with the reason: never a connection without TLS.
#[tokio::test]
async fn amqps_verifies_the_broker_and_never_falls_back_to_plaintext() {
    let (base, ca) = amqps();
    let (identity, password) = (
        ca.with_file_name("client.p12"),
        ca.with_file_name("client.p12.pass"),
    );
    let ns = uniq("tls");
    let url = format!("{base}?ns={ns}");
    let dir = tempfile::tempdir().unwrap();
    let ca_only = format!("tls_ca_file = \"{}\"\n", ca.display());
    let tls = format!(
        "{ca_only}tls_client_identity_file = \"{}\"\ntls_client_identity_password_file = \"{}\"\n",
        identity.display(),
        password.display()
    );
    let _agent = Agent::start(dir.path(), &uniq("tls"), &url, &tls, &[]);
    let settings = queue::ClientSettings {
        tls: queue::Tls::load(Some(&ca), Some(&identity), Some(&password)).unwrap(),
        ..Default::default()
    };
    let client = queue::client(&url, &settings).await.unwrap();
    let mut events = Events::new(client.as_ref()).await;
    let id = uniq("over-tls");
    submit(client.as_ref(), &id, &job(&id, "echo tls > $out")).await;
    let e = events.completed(&id).await;
    assert_eq!(output(&e), (sha256sum(b"tls\n"), true, false));

    // Refusals: an unknown CA, and a plaintext port behind an amqps:// URL.
    let plain = url.replacen("localhost:5671", "localhost:5672", 1);
    for (label, url, extra, want) in [
        ("untrusted", url.as_str(), "", "certificate"),
        (
            "no client certificate",
            url.as_str(),
            ca_only.as_str(),
            "certificate",
        ),
        ("plaintext", plain.as_str(), tls.as_str(), "connect"),
    ] {
        let name = uniq(label);
        let mut a = Agent::start(
            dir.path(),
            &name,
            url,
            &format!("{extra}op_timeout_secs = 5\n"),
            &[],
        );
        let st = a.wait(Duration::from_secs(60));
        assert!(!st.success(), "{label}: the agent started anyway");
        let log = a.logs();
        assert!(
            log.to_lowercase().contains(want),
            "{label}: no {want:?} in\n{}",
            tail(&log, 20)
        );
        assert!(!log.contains("Consuming commands."), "{label}: it consumed");
    }
}

/// `exec.logs` of a running exec, sent through the queue like any request, answers with what
/// the exec wrote so far: the agent writes its container's output as it comes.
#[test]
fn exec_logs_of_a_running_exec_show_its_output_so_far() {
    let dir = tempfile::tempdir().unwrap();
    let spool = format!("spool://{}", dir.path().join("spool").display());
    let _agent = Agent::start(dir.path(), &uniq("live"), &spool, "", &[]);
    // The reply's value, or the CLI's error.
    let ask = |name: &str, cmd: serde_json::Value| -> Result<serde_json::Value, String> {
        let out = submit_wait(dir.path(), &spool, name, &cmd.to_string());
        if !out.status.success() {
            return Err(String::from_utf8_lossy(&out.stderr).into_owned());
        }
        let e: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        Ok(e["body"]["value"].clone())
    };
    let new_alloc = uniq("alloc");
    ask(
        "alloc",
        serde_json::json!({"v": 1, "id": new_alloc, "kind": "alloc.new",
            "body": {"meta": {"Want": {"mem": 67108864, "cpu": 1}, "Owner": "test", "Labels": {}}}}),
    )
    .unwrap();
    let alloc = job_alloc_id(&new_alloc);
    let exec = format!("sha256:{}", sha256sum(uniq("live-exec").as_bytes()));
    ask(
        "put",
        serde_json::json!({"v": 1, "id": uniq("put"), "kind": "exec.put", "alloc": alloc, "exec": exec,
            "body": {"config": {"Type": "exec", "Image": image(),
                "Cmd": "echo hello; echo oops >&2; sleep 120", "Resources": {"mem": 67108864, "cpu": 1}}}}),
    )
    .unwrap();
    let logs = |what: serde_json::Value| {
        ask(
            "logs",
            serde_json::json!({"v": 1, "id": uniq("logs"), "kind": "exec.logs", "alloc": alloc,
                "exec": exec, "body": what}),
        )
    };
    let deadline = Instant::now() + Duration::from_secs(60);
    let both = loop {
        match logs(serde_json::json!({})) {
            Ok(v) if v["logs"] == "hello\noops\n" => break v,
            other => {
                assert!(
                    Instant::now() < deadline,
                    "no logs of the running exec: {other:?}"
                );
                std::thread::sleep(Duration::from_millis(200));
            }
        }
    };
    assert_eq!(both["bytes"], 11);
    let out = logs(serde_json::json!({"stderr": false})).unwrap();
    assert_eq!(out["logs"], "hello\n");
    let inspect = ask(
        "inspect",
        serde_json::json!({"v": 1, "id": uniq("inspect"), "kind": "exec.inspect", "alloc": alloc, "exec": exec}),
    )
    .unwrap();
    assert_eq!(inspect["State"], "running", "{inspect}");
    ask(
        "free",
        serde_json::json!({"v": 1, "id": uniq("free"), "kind": "alloc.free", "alloc": alloc}),
    )
    .unwrap();
}
