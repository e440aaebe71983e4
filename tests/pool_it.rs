//! The pool on a real Docker engine: a restart restores allocs and re-attaches their execs, and a
//! corrupt state.json never kills live containers.
#![cfg(feature = "integration")]

use crate::common;

use std::sync::Arc;

use common::*;
use reflow_agent::clock::SystemClock;
use reflow_agent::manifest::ExecState;
use reflow_agent::pool::{AllocMeta, Pool, PoolConfig};
use reflow_agent::resources::{MEM, Resources};
use reflow_agent::taskdb::NoopTaskDb;

async fn pool(dir: &std::path::Path) -> Pool {
    let cfg = PoolConfig {
        id: "it-pool".into(),
        dir: dir.to_path_buf(),
        executor: config(dir),
        expected_usable_mem: 0.0,
    };
    Pool::start(cfg, runtime(), Arc::new(SystemClock), Arc::new(NoopTaskDb))
        .await
        .unwrap()
}

fn meta() -> AllocMeta {
    AllocMeta {
        want: Resources::from_pairs([(MEM, (64u64 << 20) as f64)]),
        owner: "it".into(),
        ..AllocMeta::default()
    }
}

#[tokio::test]
async fn restart_restores_the_alloc_and_reattaches_its_exec() {
    let dir = tempfile::tempdir().unwrap();
    let id = new_id("pool-restart");
    let alloc_id;
    {
        let p = pool(dir.path()).await;
        let a = p.new_alloc(meta()).await.unwrap();
        alloc_id = a.id().to_string();
        let e = a
            .executor()
            .put(id, exec("sleep 2; echo restored > $out", vec![]))
            .await
            .unwrap();
        e.wait_until(ExecState::Running).await.unwrap();
        p.shutdown().await; // the agent stops; the container keeps running
    }
    let p = pool(dir.path()).await;
    let a = p.alloc(&alloc_id).await.expect("restored");
    assert!(
        a.expires() <= reflow_agent::clock::Clock::now(&SystemClock),
        "restored allocs start expired"
    );
    let e = a.executor().get(&id).unwrap();
    e.wait().await.unwrap();
    let r = e.result().unwrap();
    assert!(r.err.is_none(), "{:?}", r.err);
    assert_eq!(r.fileset.file().unwrap().id.hex(), sha256sum(b"restored\n"));
    p.free(&alloc_id).await.unwrap();
}

#[tokio::test]
async fn a_corrupt_state_file_does_not_kill_live_containers() {
    let dir = tempfile::tempdir().unwrap();
    let id = new_id("pool-corrupt");
    let (alloc_id, name);
    {
        let p = pool(dir.path()).await;
        let a = p.new_alloc(meta()).await.unwrap();
        alloc_id = a.id().to_string();
        let e = a
            .executor()
            .put(id, exec("sleep 300", vec![]))
            .await
            .unwrap();
        e.wait_until(ExecState::Running).await.unwrap();
        name = e.container_name().to_string();
        p.shutdown().await;
    }
    std::fs::write(dir.path().join("state.json"), b"{\"torn\": {\"mem\": 1").unwrap();
    let p = pool(dir.path()).await;
    assert_eq!(
        docker(&["inspect", "-f", "{{.State.Running}}", &name]).trim(),
        "true",
        "the container keeps running"
    );
    let a = p
        .alloc(&alloc_id)
        .await
        .expect("restored despite the corrupt state");
    assert_eq!(
        a.executor().get(&id).unwrap().status().state,
        ExecState::Running
    );
    let quarantined = std::fs::read_dir(dir.path()).unwrap().flatten().any(|e| {
        e.file_name()
            .to_string_lossy()
            .starts_with("state.json.corrupt-")
    });
    assert!(quarantined);
    // The rewritten state lists the restored alloc.
    let state: serde_json::Value =
        serde_json::from_slice(&std::fs::read(dir.path().join("state.json")).unwrap()).unwrap();
    assert!(state.get(&alloc_id).is_some());
    p.free(&alloc_id).await.unwrap();
    assert!(
        !container_exists(&name),
        "free kills the alloc's containers"
    );
}

/// The child half of `sigkilled_process_restart_restores_alloc_and_exec`: creates a pool, an
/// alloc and a running exec, records the ids, then waits to be killed. Not a test by itself.
#[tokio::test]
#[ignore = "helper: run in a child process by sigkilled_process_restart_restores_alloc_and_exec"]
async fn pool_child_process_for_restart_test() {
    let Ok(dir) = std::env::var("REFLOW_POOL_CHILD_DIR") else {
        return;
    }; // only as the child
    let dir = std::path::PathBuf::from(dir);
    let p = pool(&dir).await;
    let a = p.new_alloc(meta()).await.unwrap();
    let id = new_id("pool-sigkill");
    let e = a
        .executor()
        .put(id, exec("sleep 3; echo after the crash > $out", vec![]))
        .await
        .unwrap();
    e.wait_until(ExecState::Running).await.unwrap();
    // Written aside and renamed: the parent kills this process as soon as `ids` exists, and
    // must never read it half written.
    std::fs::write(dir.join("ids.tmp"), format!("{} {}", a.id(), id.hex())).unwrap();
    std::fs::rename(dir.join("ids.tmp"), dir.join("ids")).unwrap();
    tokio::time::sleep(std::time::Duration::from_secs(600)).await; // killed long before this
}

#[tokio::test]
async fn sigkilled_process_restart_restores_alloc_and_exec() {
    let dir = tempfile::tempdir().unwrap();
    let mut child = std::process::Command::new(std::env::current_exe().unwrap())
        .args([
            "--exact",
            "pool_it::pool_child_process_for_restart_test",
            "--ignored",
            "--nocapture",
        ])
        .env("REFLOW_POOL_CHILD_DIR", dir.path())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let ids = dir.path().join("ids");
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    while !ids.exists() {
        assert!(
            std::time::Instant::now() < deadline,
            "child never started the exec"
        );
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    child.kill().unwrap(); // SIGKILL, mid-exec
    child.wait().unwrap();
    let text = std::fs::read_to_string(&ids).unwrap();
    let (alloc_id, exec_hex) = text.split_once(' ').unwrap();
    let exec_id = reflow_agent::digest::Digest::parse(exec_hex).unwrap();

    let p = pool(dir.path()).await;
    let a = p
        .alloc(alloc_id)
        .await
        .expect("the alloc is restored after the crash");
    let e = a.executor().get(&exec_id).expect("its exec is re-attached");
    e.wait().await.unwrap();
    let r = e.result().unwrap();
    assert!(r.err.is_none(), "{:?}", r.err);
    assert_eq!(
        r.fileset.file().unwrap().id.hex(),
        sha256sum(b"after the crash\n")
    );
    p.free(alloc_id).await.unwrap();
}
