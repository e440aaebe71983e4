//! SQS leases follow the health of what the agent holds: on moto's SQS, with a 3 s visibility,
//! the message of a job whose exec hangs (its container running with no processes; the fake
//! engine stands in for dockerd here, which cannot be made to hang on demand) reappears for
//! another consumer, while the message of a healthy job running longer than the visibility never
//! does.
#![cfg(all(feature = "integration", feature = "test-util"))]

use crate::common;

use std::sync::Arc;
use std::time::{Duration, Instant};

use common::*;
use reflow_agent::clock::SystemClock;
use reflow_agent::control::security::Policy;
use reflow_agent::control::{Control, ControlConfig, ControlPorts};
use reflow_agent::docker::ContainerSpec;
use reflow_agent::docker::fake::{FakeExit, FakeRuntime};
use reflow_agent::executor::ExecutorConfig;
use reflow_agent::pool::{Pool, PoolConfig};
use reflow_agent::queue::{self, Client, QueueSettings};
use reflow_agent::taskdb::NoopTaskDb;
use tokio_util::sync::CancellationToken;

const IMAGE: &str = "fake/image:1";

fn job(id: &str, cmd: &str) -> Vec<u8> {
    serde_json::to_vec(&serde_json::json!({
        "v": 1, "id": id, "kind": "job",
        "body": {"config": {"Type": "exec", "Image": IMAGE, "Cmd": cmd,
                            "Resources": {"mem": 1048576, "cpu": 0.1}}}
    }))
    .unwrap()
}

#[tokio::test(flavor = "multi_thread")]
async fn a_hanging_jobs_message_reappears_and_a_healthy_ones_never_does() {
    let dir = tempfile::tempdir().unwrap();
    let fake = FakeRuntime::new(
        &[IMAGE],
        Arc::new(|spec: &ContainerSpec| FakeExit {
            hang: spec.entrypoint.join(" ").contains("hang"),
            runtime: Duration::from_secs(9),
            outputs: vec![("default".into(), b"out".to_vec())],
            ..FakeExit::default()
        }),
        Arc::new(SystemClock),
    );
    let state = dir.path().join("state");
    let pool = Pool::start(
        PoolConfig {
            id: "lease-agent".into(),
            dir: state.clone(),
            executor: ExecutorConfig::new("template", &state),
            expected_usable_mem: 0.0,
        },
        fake.clone(),
        Arc::new(SystemClock),
        Arc::new(NoopTaskDb),
    )
    .await
    .unwrap();
    let name = format!("lease-{}", &new_id("lease").hex()[..12]);
    let url = format!("sqs://{name}?create=true");
    let lease = Duration::from_secs(3);
    let close = CancellationToken::new();
    let settings = QueueSettings {
        agent_id: "lease-agent".into(),
        prefetch: 2,
        delivery_limit: 5,
        visibility: lease,
        max_job: Duration::from_secs(3600),
        aws: Default::default(),
        tls: Default::default(),
        close: close.clone(),
        health: Default::default(),
        op_timeout: Duration::from_secs(30),
    };
    let sdk = aws_sdk().await;
    let backend = queue::sqs::open_with(&url, &settings, &sdk).await.unwrap();
    let control = Control::new(
        ControlConfig {
            agent_id: "lease-agent".into(),
            state_dir: state.clone(),
            repository: format!("file://{}", state.join("repository").display()),
            // Both jobs run at once and fill the agent, so it receives nothing more: a message
            // that reappears can only be read by this test.
            max_jobs: 2,
            prefetch: 2,
            max_deliveries: 5,
            drain_grace: Duration::from_secs(1),
            heartbeat: Duration::from_secs(3600),
            lease,
            max_job: Duration::from_secs(3600),
            job_attempts: 1,
            retry_base: Duration::from_millis(10),
            security: Policy::default(),
            retention: None,
            publish: None,
            linger: reflow_agent::control::DEFAULT_LINGER,
        },
        ControlPorts {
            pool,
            clock: Arc::new(SystemClock),
            sink: backend.sink.clone(),
            claims: None,
            metrics: Default::default(),
            notifier: Default::default(),
            blob: None,
            engine: Default::default(),
        },
    )
    .unwrap();
    let stop = CancellationToken::new();
    let task = {
        let stop = stop.clone();
        tokio::spawn(async move { control.run(backend.source, stop).await })
    };
    let client = queue::sqs::SqsClient::from_sdk(&url, &sdk, 5)
        .await
        .unwrap();
    client
        .submit("hung", &job("hung", "hang forever"))
        .await
        .unwrap();
    client
        .submit("healthy", &job("healthy", "work 9 s"))
        .await
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    while fake.count("start") < 2 {
        assert!(
            Instant::now() < deadline,
            "the jobs never started: {:?}",
            fake.calls()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // Read the command queue as a second consumer would, while the healthy job still runs.
    let sqs = aws_sdk_sqs::Client::new(&sdk);
    let queue_url = sqs
        .get_queue_url()
        .queue_name(&name)
        .send()
        .await
        .unwrap()
        .queue_url
        .unwrap();
    let mut seen = Vec::new();
    let until = Instant::now() + Duration::from_secs(7);
    while Instant::now() < until {
        let out = sqs
            .receive_message()
            .queue_url(&queue_url)
            .wait_time_seconds(1)
            .visibility_timeout(60)
            .send()
            .await
            .unwrap();
        for m in out.messages.unwrap_or_default() {
            let v: serde_json::Value =
                serde_json::from_str(m.body.as_deref().unwrap_or("{}")).unwrap();
            seen.push(v["id"].as_str().unwrap_or("?").to_string());
        }
    }
    assert_eq!(
        seen,
        vec!["hung".to_string()],
        "only the hanging job's message reappeared"
    );
    stop.cancel();
    close.cancel();
    let _ = tokio::time::timeout(Duration::from_secs(20), task).await;
}
