//! `reflow-agent serve` as a process: exits by itself when idle (scale-in) with its TaskDB row
//! ended in DynamoDB (moto), stops cleanly on SIGTERM, and lists every config problem.
#![cfg(feature = "integration")]

use crate::common;

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::*;
use reflow_agent::taskdb::dynamodb::DynamoDbTaskDb;
use reflow_agent::taskdb::pool_row;

fn serve(config: &std::path::Path) -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_reflow-agent"));
    c.args(["--log-format", "json", "serve", "--config"])
        .arg(config)
        // The SDK's standard credential chain, as in production.
        .env("AWS_ACCESS_KEY_ID", "testing")
        .env("AWS_SECRET_ACCESS_KEY", "testing")
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    c
}

fn wait_exit(child: &mut std::process::Child, within: Duration) -> std::process::ExitStatus {
    let deadline = Instant::now() + within;
    loop {
        if let Some(st) = child.try_wait().unwrap() {
            return st;
        }
        assert!(
            Instant::now() < deadline,
            "serve did not exit in {within:?}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[tokio::test]
async fn idle_exit_ends_the_pool_row() {
    let dir = tempfile::tempdir().unwrap();
    let table = format!("reflow-serve-{}", &new_id("serve").hex()[..12]);
    let pool_id = format!("it-serve-{}", &new_id("pool").hex()[..8]);
    let cfg = dir.path().join("agent.toml");
    std::fs::write(
        &cfg,
        format!(
            "[agent]\nstate_dir = \"{}\"\npool_id = \"{pool_id}\"\nidle_exit_after_secs = 1\n[admin]\nlisten = \"127.0.0.1:0\"\n\
             [aws]\nregion = \"us-east-1\"\nendpoint_url = \"{}\"\n\
             [taskdb]\ntable = \"{table}\"\ncreate_table = true\n",
            dir.path().join("state").display(),
            aws_endpoint()
        ),
    )
    .unwrap();
    let mut child = serve(&cfg).spawn().unwrap();
    let status = wait_exit(&mut child, Duration::from_secs(60));
    assert!(status.success(), "{status:?}");
    assert!(dir.path().join("state/state.json").exists());
    let db = DynamoDbTaskDb::new(&aws_sdk().await, &table);
    let row = db.row(pool_row(&pool_id)).await.unwrap().expect("pool row");
    assert_eq!(row["PoolID"], pool_id);
    assert!(row.contains_key("EndTime"), "{row:?}");
    // The idle exit is a drain, and says so to autoscalers reading the table.
    assert_eq!(row["State"], "draining", "{row:?}");
    assert!(row.contains_key("StateTime"), "{row:?}");
}

#[test]
fn sigterm_stops_serve_cleanly() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("agent.toml");
    std::fs::write(
        &cfg,
        format!(
            "[agent]\nstate_dir = \"{}\"\n[admin]\nlisten = \"127.0.0.1:0\"\n",
            dir.path().join("state").display()
        ),
    )
    .unwrap();
    let mut child = serve(&cfg).spawn().unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    while !dir.path().join("state/state.json").exists() {
        assert!(Instant::now() < deadline, "serve never started");
        std::thread::sleep(Duration::from_millis(50));
    }
    let st = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(st.success());
    let status = wait_exit(&mut child, Duration::from_secs(20));
    assert!(status.success(), "{status:?}");
}

#[test]
fn an_invalid_config_lists_every_problem() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("agent.toml");
    std::fs::write(
        &cfg,
        "[agent]\nstate_dir = \"relative\"\n[executor]\nnetwork_mode = \"bridge\"\n",
    )
    .unwrap();
    let out = serve(&cfg).output().unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("agent.state_dir") && stderr.contains("executor.network_mode"),
        "{stderr}"
    );
}

/// Without a config file, every setting from `REFLOW_AGENT_<SECTION>__<FIELD>`: the state dir,
/// the pool id, the admin listener and an idle exit, which the agent then honours; an override
/// that names no field stops the start, naming the variable.
#[test]
fn the_whole_config_can_come_from_the_environment() {
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("from-env");
    let agent = |extra: &[(&str, &str)]| {
        let mut c = Command::new(env!("CARGO_BIN_EXE_reflow-agent"));
        c.args(["serve"])
            .env("REFLOW_AGENT_AGENT__STATE_DIR", &state)
            .env("REFLOW_AGENT_AGENT__POOL_ID", "\"4711\"")
            .env("REFLOW_AGENT_AGENT__IDLE_EXIT_AFTER_SECS", "1")
            .env("REFLOW_AGENT_ADMIN__LISTEN", "127.0.0.1:0")
            .env("REFLOW_AGENT_EXECUTOR__NETWORK_MODE", "none")
            .envs(extra.iter().copied())
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        c
    };
    let out = agent(&[]).output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert!(state.join("state.json").exists(), "{stderr}");
    assert!(
        stderr.contains("4711"),
        "the pool id names the agent: {stderr}"
    );
    let out = agent(&[("REFLOW_AGENT_QUEUE__PREFTECH", "2")])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("REFLOW_AGENT_QUEUE__PREFTECH"), "{stderr}");
}

/// A fake EC2 instance metadata service on 127.0.0.1 (IMDSv2: a token by PUT, then GETs with
/// it). `path` answers 404 until `announce` is set, then `body`; counts the GETs and remembers
/// when the notice was first served.
struct FakeImds {
    addr: std::net::SocketAddr,
    announce: std::sync::Arc<std::sync::atomic::AtomicBool>,
    gets: std::sync::Arc<std::sync::atomic::AtomicUsize>,
    served: std::sync::Arc<std::sync::Mutex<Option<Instant>>>,
}

impl FakeImds {
    fn start(path: &'static str, body: &'static str) -> FakeImds {
        use std::io::{BufRead, BufReader, Write};
        use std::sync::atomic::Ordering;
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let fake = FakeImds {
            addr: listener.local_addr().unwrap(),
            announce: Default::default(),
            gets: Default::default(),
            served: Default::default(),
        };
        let (announce, gets, served) = (
            fake.announce.clone(),
            fake.gets.clone(),
            fake.served.clone(),
        );
        std::thread::spawn(move || {
            for conn in listener.incoming() {
                let Ok(mut conn) = conn else { continue };
                let mut reader = BufReader::new(conn.try_clone().unwrap());
                let mut line = String::new();
                if reader.read_line(&mut line).is_err() {
                    continue;
                }
                let mut header = String::new();
                while reader.read_line(&mut header).is_ok_and(|n| n > 2) {
                    header.clear();
                }
                let mut parts = line.split_whitespace();
                let (method, target) = (parts.next().unwrap_or(""), parts.next().unwrap_or(""));
                let (status, extra, text) = if method == "PUT" && target == "/latest/api/token" {
                    (
                        "200 OK",
                        "X-aws-ec2-metadata-token-ttl-seconds: 21600\r\n",
                        "tok",
                    )
                } else if method == "GET" && target == path {
                    gets.fetch_add(1, Ordering::SeqCst);
                    if announce.load(Ordering::SeqCst) {
                        served
                            .lock()
                            .unwrap_or_else(|p| p.into_inner())
                            .get_or_insert_with(Instant::now);
                        ("200 OK", "", body)
                    } else {
                        ("404 Not Found", "", "")
                    }
                } else {
                    ("404 Not Found", "", "")
                };
                let _ = write!(
                    conn,
                    "HTTP/1.1 {status}\r\n{extra}Content-Length: {}\r\nConnection: close\r\n\r\n{text}",
                    text.len()
                );
            }
        });
        fake
    }
}

/// A spot interruption notice, and a rebalance recommendation, served by a fake instance
/// metadata endpoint: the agent starts its drain within one poll period (1 s here) and exits
/// cleanly.
#[test]
fn an_interruption_notice_starts_a_drain_within_one_poll() {
    use std::sync::atomic::Ordering;
    for (path, body) in [
        (
            "/latest/meta-data/spot/instance-action",
            r#"{"action": "terminate", "time": "2026-12-02T08:22:00Z"}"#,
        ),
        (
            "/latest/meta-data/events/recommendations/rebalance",
            r#"{"noticeTime": "2026-12-02T08:20:00Z"}"#,
        ),
    ] {
        let imds = FakeImds::start(path, body);
        let dir = tempfile::tempdir().unwrap();
        let cfg = dir.path().join("agent.toml");
        std::fs::write(
            &cfg,
            format!(
                "[agent]\nstate_dir = \"{}\"\ninterruption_poll_secs = 1\n[admin]\nlisten = \"127.0.0.1:0\"\n",
                dir.path().join("state").display()
            ),
        )
        .unwrap();
        let mut child = serve(&cfg)
            .env(
                "AWS_EC2_METADATA_SERVICE_ENDPOINT",
                format!("http://{}", imds.addr),
            )
            .spawn()
            .unwrap();
        // Polling: two reads answered "no notice".
        let deadline = Instant::now() + Duration::from_secs(30);
        while imds.gets.load(Ordering::SeqCst) < 2 {
            assert!(Instant::now() < deadline, "the agent never polled {path}");
            std::thread::sleep(Duration::from_millis(50));
        }
        let announced = Instant::now();
        imds.announce.store(true, Ordering::SeqCst);
        let status = wait_exit(&mut child, Duration::from_secs(30));
        let out = child.wait_with_output().unwrap();
        let log = String::from_utf8_lossy(&out.stderr);
        assert!(status.success(), "{status:?}\n{log}");
        let seen = imds
            .served
            .lock()
            .unwrap()
            .expect("the notice was never read");
        assert!(
            seen.duration_since(announced) <= Duration::from_millis(1500),
            "read {:?} after it was announced, more than one 1 s poll",
            seen.duration_since(announced)
        );
        for want in ["The instance is going away", "Draining.", "Interrupted"] {
            assert!(log.contains(want), "{path}: no {want:?} in\n{log}");
        }
    }
}

/// The digest of the one output of the job `cmd`, submitted with `reflow-agent submit --wait`
/// to the spool queue under `state`.
fn run_job(state: &std::path::Path, cmd: &str) -> String {
    let id = format!("net-{}", &new_id(cmd).hex()[..12]);
    let file = state.with_extension(format!("{id}.json"));
    let body = serde_json::json!({
        "v": 1, "id": id, "kind": "job",
        "body": {"config": {"Type": "exec", "Image": image(), "Cmd": cmd,
                            "Resources": {"mem": 67108864, "cpu": 1}}}
    });
    std::fs::write(&file, serde_json::to_vec(&body).unwrap()).unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_reflow-agent"))
        .args(["submit", "--wait", "--timeout-secs", "90", "--queue"])
        .arg(format!("spool://{}", state.join("spool").display()))
        .arg(&file)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let e: reflow_agent::protocol::Event = serde_json::from_slice(&out.stdout).unwrap();
    match e.body {
        reflow_agent::protocol::EventBody::ExecCompleted { result, .. } => {
            assert!(result.err.is_none(), "{:?}", result.err);
            result.fileset.files()[0].id.hex()
        }
        other => panic!("not exec.completed: {other:?}"),
    }
}

/// A stand-in for the instance metadata service on the host's loopback, serving a role's
/// credentials: a job's container cannot reach it under the default network mode (`none`),
/// where it has only a loopback interface, which works (a server and a client inside the
/// container talk over 127.0.0.1); a config asking for `host` without
/// `executor.allow_host_network` is refused at start, naming that setting; with the grant the
/// same job reads the credentials (so the test can tell).
#[test]
fn containers_reach_no_network_unless_host_is_granted() {
    use std::sync::atomic::Ordering;
    let imds = FakeImds::start(
        "/latest/meta-data/iam/security-credentials/agent-role",
        "ROLE-CREDENTIALS",
    );
    imds.announce.store(true, Ordering::SeqCst);
    // nc, not the image's static wget (which crashes resolving); the body is the last line.
    let cmd = format!(
        "printf 'GET /latest/meta-data/iam/security-credentials/agent-role HTTP/1.0\\r\\n\\r\\n' \
         | nc {} {} | tail -n 1 > $out || echo unreachable > $out",
        imds.addr.ip(),
        imds.addr.port()
    );
    let dir = tempfile::tempdir().unwrap();
    let start = |name: &str, executor: &str| {
        let state = dir.path().join(name);
        let cfg = dir.path().join(format!("{name}.toml"));
        std::fs::write(
            &cfg,
            format!(
                "[agent]\nstate_dir = \"{}\"\ninterruption_poll_secs = 0\n[admin]\nlisten = \"127.0.0.1:0\"\n[executor]\n{executor}\n",
                state.display()
            ),
        )
        .unwrap();
        (state, serve(&cfg))
    };
    let stop = |mut child: std::process::Child| {
        let _ = Command::new("kill")
            .args(["-TERM", &child.id().to_string()])
            .status();
        wait_exit(&mut child, Duration::from_secs(30));
    };

    let (state, mut c) = start("default", "");
    let child = c.stderr(Stdio::null()).spawn().unwrap();
    assert_eq!(run_job(&state, &cmd), sha256sum(b"unreachable\n"));
    // The server accepts again after each connection and the client tries until the server has
    // written what it got: busybox nc's exit status does not say its line was delivered (a CI
    // run once ended with nothing received), and a second attempt must find a listener. A
    // failed attempt does not end the job, which runs under `bash -e -o pipefail`: one made
    // before the server listens fails (nc refused, or echo's SIGPIPE: a CI run once exited 141).
    let loopback = "(while :; do nc -l -p 7000 127.0.0.1 >> /tmp/got; done) & \
         for i in $(seq 100); do echo hi | nc -w 1 127.0.0.1 7000 || true; [ -s /tmp/got ] && break; sleep 0.1; done; \
         kill $!; ls /sys/class/net > $out; head -n 1 /tmp/got >> $out";
    assert_eq!(run_job(&state, loopback), sha256sum(b"lo\nhi\n"));
    stop(child);
    assert_eq!(imds.gets.load(Ordering::SeqCst), 0);

    let (_, mut c) = start("host-only", "network_mode = \"host\"");
    let out = c.output().unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("executor.allow_host_network"), "{stderr}");

    let (state, mut c) = start(
        "host-granted",
        "network_mode = \"host\"\nallow_host_network = true",
    );
    let child = c.stderr(Stdio::null()).spawn().unwrap();
    assert_eq!(run_job(&state, &cmd), sha256sum(b"ROLE-CREDENTIALS"));
    stop(child);
    assert_eq!(imds.gets.load(Ordering::SeqCst), 1);
}
