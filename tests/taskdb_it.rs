//! TaskDB rows in DynamoDB (moto): the pool row and alloc rows exist, keepalives advance, and end
//! times are set on free and on shutdown.
#![cfg(all(feature = "integration", feature = "test-util"))]

use crate::common;

use std::sync::Arc;
use std::time::Duration as StdDuration;

use chrono::Duration;
use common::*;
use reflow_agent::clock::{Clock, ManualClock, SystemClock};
use reflow_agent::docker::ContainerSpec;
use reflow_agent::docker::fake::{FakeExit, FakeRuntime};
use reflow_agent::pool::{AllocMeta, Pool, PoolConfig};
use reflow_agent::resources::{MEM, Resources};
use reflow_agent::taskdb::dynamodb::DynamoDbTaskDb;
use reflow_agent::taskdb::{TaskDb, alloc_row};
use tokio_util::sync::CancellationToken;

#[tokio::test]
async fn pool_and_alloc_rows_in_dynamodb() {
    let table = format!("reflow-taskdb-{}", &new_id("table").hex()[..12]);
    let db = Arc::new(DynamoDbTaskDb::new(&aws_sdk().await, &table));
    db.create_table().await.unwrap();
    db.create_table().await.unwrap(); // idempotent

    let dir = tempfile::tempdir().unwrap();
    let clock = ManualClock::new(SystemClock.now());
    let rt = FakeRuntime::new(
        &[],
        Arc::new(|_: &ContainerSpec| FakeExit::default()),
        Arc::new(SystemClock),
    );
    let cfg = PoolConfig {
        id: "i-0123456789abcdef0".into(),
        dir: dir.path().to_path_buf(),
        executor: config(dir.path()),
        expected_usable_mem: 0.0,
    };
    let pool = Pool::start(cfg, rt, Arc::new(clock.clone()), db.clone())
        .await
        .unwrap();

    // The pool row: resources and start, then kept alive.
    let cancel = CancellationToken::new();
    let maintain = {
        let (pool, cancel) = (pool.clone(), cancel.clone());
        tokio::spawn(async move { pool.maintain_taskdb_row(cancel).await })
    };
    let pool_row = pool.taskdb_row();
    let mut row = None;
    for _ in 0..100 {
        row = db.row(pool_row).await.unwrap();
        if row.as_ref().is_some_and(|r| r.contains_key("Keepalive")) {
            break;
        }
        tokio::time::sleep(StdDuration::from_millis(20)).await;
    }
    let row = row.expect("pool row");
    assert_eq!(row["Type"], "pool");
    assert_eq!(row["PoolID"], "i-0123456789abcdef0");
    assert!(row["Resources"].contains("\"mem\""));

    // An alloc row: start, keepalive advancing, end on free.
    let a = pool
        .new_alloc(AllocMeta {
            want: Resources::from_pairs([(MEM, 1e6)]),
            ..AllocMeta::default()
        })
        .await
        .unwrap();
    let arow = alloc_row("i-0123456789abcdef0", a.id());
    assert_eq!(a.inspect().taskdb_alloc_id, arow);
    let r = db.row(arow).await.unwrap().expect("alloc row");
    assert_eq!(
        (
            r["Type"].as_str(),
            r["AllocID"].as_str(),
            r["PoolID"].clone()
        ),
        ("alloc", a.id(), pool_row.hex())
    );
    let first = r["Keepalive"].clone();
    clock.advance(Duration::minutes(1));
    pool.keepalive(a.id(), Duration::minutes(3)).await.unwrap();
    let mut advanced = false;
    for _ in 0..100 {
        if db.row(arow).await.unwrap().unwrap()["Keepalive"] > first {
            advanced = true;
            break;
        }
        tokio::time::sleep(StdDuration::from_millis(20)).await;
    }
    assert!(advanced, "the alloc row's keepalive advances");
    pool.free(a.id()).await.unwrap();
    let ended = db.row(arow).await.unwrap().unwrap();
    assert!(ended.contains_key("EndTime"));
    // Rows expire by DynamoDB's TTL, 30 days after their last write.
    let ttl: i64 = ended["TTL"].parse().unwrap();
    let end = chrono::DateTime::parse_from_rfc3339(&ended["EndTime"]).unwrap();
    assert_eq!(ttl, (end + Duration::days(30)).timestamp(), "{ended:?}");

    // Shutdown: the pool row gets its end time.
    cancel.cancel();
    maintain.await.unwrap();
    assert!(
        db.row(pool_row)
            .await
            .unwrap()
            .unwrap()
            .contains_key("EndTime")
    );

    // Direct calls work too, and a row that was never started can be ended (no crash).
    db.set_end_time(reflow_agent::digest::Digest::of(b"unknown"), clock.now())
        .await
        .unwrap();
}
