//! The pool on a real Docker engine: a restart restores allocs and re-attaches their execs, and a
//! corrupt state.json never kills live containers.
#![cfg(feature = "integration")]
// Every function in an integration-test crate is a test; the lint is for src/.
#![allow(clippy::tests_outside_test_module)]

mod common;

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
