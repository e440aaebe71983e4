//! Queue benchmarks for bench/queue.sh. Prints one JSON object.
//!
//! ```text
//! queue_bench jobs URL N IMAGE      submit N distinct trivial jobs, wait for N exec.completed
//! queue_bench requests URL N        alloc.new, then N alloc.inspect, wait for N command.result
//! queue_bench echo AMQP_URL N       raw lapin: publish N, a consumer echoes each, wait for N
//! ```
//! All timings start before the first submit and stop at the last outcome.

use std::time::Instant;

use futures_util::StreamExt;
use lapin::options::{
    BasicAckOptions, BasicConsumeOptions, BasicPublishOptions, ConfirmSelectOptions,
    QueueDeclareOptions,
};
use lapin::types::FieldTable;
use lapin::{BasicProperties, Connection, ConnectionProperties};
use reflow_agent::protocol::{Event, EventBody};
use reflow_agent::queue::{self, EventWatch};

fn run_id() -> String {
    use reflow_agent::clock::Clock;
    let now = reflow_agent::clock::SystemClock.now();
    format!("{:x}", now.timestamp_nanos_opt().unwrap_or(0))
}

async fn wait_for(
    watch: &mut Box<dyn EventWatch>,
    n: usize,
    pred: impl Fn(&Event) -> bool,
) -> anyhow::Result<()> {
    let mut seen = std::collections::HashSet::new();
    while seen.len() < n {
        let e = watch.next().await?;
        if pred(&e) {
            if let EventBody::ExecCompleted { result, .. } = &e.body {
                anyhow::ensure!(result.err.is_none(), "a job failed: {:?}", result.err);
            }
            seen.insert(e.command.clone().unwrap_or_default());
        }
    }
    Ok(())
}

async fn jobs(url: &str, n: usize, image: &str) -> anyhow::Result<f64> {
    let client = queue::client(url, &Default::default()).await?;
    let mut watch = client.watch(None).await?;
    let run = run_id();
    let start = Instant::now();
    for i in 0..n {
        let id = format!("bench-{run}-{i}");
        // Distinct commands, so no job reuses another's stored result.
        let body = serde_json::json!({"v": 1, "id": id, "kind": "job", "body": {"config": {
            "Type": "exec", "Image": image, "Cmd": format!("echo {run}-{i} > $out"),
            "Resources": {"mem": 16777216, "cpu": 0.1}}}});
        client.submit(&id, &serde_json::to_vec(&body)?).await?;
    }
    let prefix = format!("bench-{run}-");
    wait_for(&mut watch, n, |e| {
        e.body.kind() == "exec.completed"
            && e.command.as_deref().is_some_and(|c| c.starts_with(&prefix))
    })
    .await?;
    let took = start.elapsed().as_secs_f64();
    // Its queue would get every event of later runs until it expires.
    watch.close().await;
    Ok(took)
}

async fn requests(url: &str, n: usize) -> anyhow::Result<f64> {
    let client = queue::client(url, &Default::default()).await?;
    let mut watch = client.watch(None).await?;
    let run = run_id();
    let new_id = format!("bench-alloc-{run}");
    let new = serde_json::json!({"v": 1, "id": new_id, "kind": "alloc.new",
        "body": {"meta": {"Want": {"mem": 16777216, "cpu": 0.1}, "Owner": "bench"}}});
    client.submit(&new_id, &serde_json::to_vec(&new)?).await?;
    let alloc = loop {
        let e = watch.next().await?;
        if e.command.as_deref() == Some(new_id.as_str()) {
            match e.body {
                EventBody::CommandResult {
                    value, error: None, ..
                } => {
                    break value["ID"].as_str().unwrap_or_default().to_string();
                }
                other => anyhow::bail!("alloc.new failed: {other:?}"),
            }
        }
    };
    let start = Instant::now();
    for i in 0..n {
        let id = format!("bench-inspect-{run}-{i}");
        let body = serde_json::json!({"v": 1, "id": id, "kind": "alloc.inspect", "alloc": alloc});
        client.submit(&id, &serde_json::to_vec(&body)?).await?;
    }
    let prefix = format!("bench-inspect-{run}-");
    wait_for(&mut watch, n, |e| {
        e.body.kind() == "command.result"
            && e.command.as_deref().is_some_and(|c| c.starts_with(&prefix))
    })
    .await?;
    let took = start.elapsed().as_secs_f64();
    // Its queue would get every event of later runs until it expires.
    watch.close().await;
    Ok(took)
}

/// The floor for request/reply through the broker: durable publish with confirms, a consumer
/// that acks and publishes a confirmed reply, a reader of replies.
async fn echo(url: &str, n: usize) -> anyhow::Result<f64> {
    let run = run_id();
    let (rq, pq) = (
        format!("bench.echo.req.{run}"),
        format!("bench.echo.rep.{run}"),
    );
    let conn = Connection::connect(url, ConnectionProperties::default()).await?;
    let pubch = conn.create_channel().await?;
    pubch
        .confirm_select(ConfirmSelectOptions::default())
        .await?;
    let durable = QueueDeclareOptions {
        durable: true,
        ..Default::default()
    };
    let temp = QueueDeclareOptions {
        auto_delete: true,
        ..durable
    };
    pubch
        .queue_declare(rq.as_str().into(), temp, FieldTable::default())
        .await?;
    pubch
        .queue_declare(pq.as_str().into(), temp, FieldTable::default())
        .await?;
    // The echo server.
    let srv = conn.create_channel().await?;
    srv.confirm_select(ConfirmSelectOptions::default()).await?;
    let mut reqs = srv
        .basic_consume(
            rq.as_str().into(),
            "echo".into(),
            BasicConsumeOptions::default(),
            FieldTable::default(),
        )
        .await?;
    let server = tokio::spawn({
        let (srv, pq) = (srv.clone(), pq.clone());
        async move {
            while let Some(Ok(d)) = reqs.next().await {
                let props = BasicProperties::default().with_delivery_mode(2);
                srv.basic_publish(
                    "".into(),
                    pq.as_str().into(),
                    BasicPublishOptions::default(),
                    &d.data,
                    props,
                )
                .await?
                .await?;
                d.acker.ack(BasicAckOptions::default()).await?;
            }
            Ok::<_, lapin::Error>(())
        }
    });
    let readch = conn.create_channel().await?;
    let mut reps = readch
        .basic_consume(
            pq.as_str().into(),
            "reader".into(),
            BasicConsumeOptions {
                no_ack: true,
                ..Default::default()
            },
            FieldTable::default(),
        )
        .await?;
    let start = Instant::now();
    for i in 0..n {
        let props = BasicProperties::default().with_delivery_mode(2);
        pubch
            .basic_publish(
                "".into(),
                rq.as_str().into(),
                BasicPublishOptions::default(),
                format!("{i}").as_bytes(),
                props,
            )
            .await?
            .await?;
    }
    for _ in 0..n {
        reps.next()
            .await
            .ok_or_else(|| anyhow::anyhow!("replies ended"))??;
    }
    let secs = start.elapsed().as_secs_f64();
    server.abort();
    let _ = conn.close(200, "done".into()).await;
    Ok(secs)
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().collect();
    let usage = "usage: queue_bench jobs URL N IMAGE | requests URL N | echo AMQP_URL N";
    let mode = args.get(1).map(String::as_str).unwrap_or_default();
    let url = args.get(2).ok_or_else(|| anyhow::anyhow!(usage))?;
    let n: usize = args.get(3).ok_or_else(|| anyhow::anyhow!(usage))?.parse()?;
    let secs = match mode {
        "jobs" => jobs(url, n, args.get(4).ok_or_else(|| anyhow::anyhow!(usage))?).await?,
        "requests" => requests(url, n).await?,
        "echo" => echo(url, n).await?,
        _ => anyhow::bail!(usage),
    };
    println!(
        "{}",
        serde_json::json!({"mode": mode, "n": n, "seconds": secs})
    );
    Ok(())
}
