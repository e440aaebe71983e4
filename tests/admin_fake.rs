//! The admin listener on the fake engine: readiness flips when the engine stops answering and
//! when the queue is down, and comes back; liveness stays; status and metrics answer.
#![cfg(feature = "test-util")]

use crate::common;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use common::http_get;
use reflow_agent::admin::{AdminState, Metrics, serve};
use reflow_agent::clock::SystemClock;
use reflow_agent::docker::ContainerSpec;
use reflow_agent::docker::fake::{FakeExit, FakeRuntime};
use reflow_agent::executor::ExecutorConfig;
use reflow_agent::pool::{Pool, PoolConfig};
use reflow_agent::taskdb::NoopTaskDb;
use tokio_util::sync::CancellationToken;

#[tokio::test]
async fn readiness_follows_the_engine_and_the_queue() {
    let dir = tempfile::tempdir().unwrap();
    let fake = FakeRuntime::new(
        &["fake/image:1"],
        Arc::new(|_: &ContainerSpec| FakeExit::default()),
        Arc::new(SystemClock),
    );
    let pool = Pool::start(
        PoolConfig {
            id: "admin-test".into(),
            dir: dir.path().to_path_buf(),
            executor: ExecutorConfig::new("template", dir.path()),
            expected_usable_mem: 0.0,
        },
        fake.clone(),
        Arc::new(SystemClock),
        Arc::new(NoopTaskDb),
    )
    .await
    .unwrap();
    let queue_ok = Arc::new(AtomicBool::new(true));
    let draining = CancellationToken::new();
    let stop = CancellationToken::new();
    let addr = serve(
        "127.0.0.1:0".parse().unwrap(),
        AdminState {
            agent_id: "admin-test".into(),
            metrics: Arc::new(Metrics::default()),
            pool,
            runtime: fake.clone(),
            queue_ok: queue_ok.clone(),
            draining: draining.clone(),
            state_dir: dir.path().to_path_buf(),
            repo: None,
        },
        stop.clone(),
    )
    .await
    .unwrap()
    .to_string();
    assert_eq!(
        http_get(&addr, "/readyz").await,
        (
            200,
            "queue ok\ndockerd ok\nstate_dir ok\nnot_draining ok\n".into()
        )
    );
    fake.set_down(true);
    let (code, body) = http_get(&addr, "/readyz").await;
    assert_eq!(code, 503);
    assert!(body.contains("dockerd FAIL"), "{body}");
    assert_eq!(
        http_get(&addr, "/healthz").await.0,
        200,
        "alive while not ready"
    );
    fake.set_down(false);
    queue_ok.store(false, Ordering::SeqCst);
    assert!(http_get(&addr, "/readyz").await.1.contains("queue FAIL"));
    queue_ok.store(true, Ordering::SeqCst);
    assert_eq!(http_get(&addr, "/readyz").await.0, 200);
    draining.cancel();
    let (code, body) = http_get(&addr, "/readyz").await;
    assert_eq!(code, 503, "a draining agent takes no traffic");
    assert!(body.contains("not_draining FAIL"));
    let (_, status) = http_get(&addr, "/v1/status").await;
    let status: serde_json::Value = serde_json::from_str(&status).unwrap();
    assert_eq!(
        (status["agent"].as_str(), status["draining"].as_bool()),
        (Some("admin-test"), Some(true))
    );
    let (code, metrics) = http_get(&addr, "/metrics").await;
    assert_eq!(code, 200);
    assert!(
        metrics.contains("reflow_queue_redeliveries_total 0"),
        "{metrics}"
    );
    assert_eq!(http_get(&addr, "/nope").await.0, 404);
    stop.cancel();
    tokio::time::sleep(Duration::from_millis(50)).await;
}
