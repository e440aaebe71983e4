//! `reflow-agent serve` as a process: exits by itself when idle (scale-in) with its TaskDB row
//! ended in DynamoDB (moto), stops cleanly on SIGTERM, and lists every config problem.
#![cfg(feature = "integration")]
// Every function in an integration-test crate is a test; the lint is for src/.
#![allow(clippy::tests_outside_test_module)]

mod common;

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
