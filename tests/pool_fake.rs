//! Component tests of the pool on the fake container runtime, a manual clock and a recording
//! TaskDB: offers, keepalive caps, expiry, reclaim, zombies, idleness and TaskDB rows.
#![cfg(feature = "test-util")]

use std::sync::Arc;
use std::time::Duration as StdDuration;

use chrono::Duration;
use reflow_agent::clock::{Clock, ManualClock, SystemClock};
use reflow_agent::digest::Digest;
use reflow_agent::docker::ContainerSpec;
use reflow_agent::docker::fake::{FakeExit, FakeRuntime};
use reflow_agent::executor::ExecutorConfig;
use reflow_agent::model::ExecConfig;
use reflow_agent::pool::{AllocMeta, Pool, PoolConfig, PoolError};
use reflow_agent::resources::{CPU, DISK, MEM, Resources};
use reflow_agent::taskdb::{MemoryTaskDb, TaskDbCall};

const IMAGE: &str = "fake/image:1";

fn fake() -> Arc<FakeRuntime> {
    FakeRuntime::new(
        &[IMAGE],
        Arc::new(|_: &ContainerSpec| FakeExit {
            stdout: b"logthis\n".to_vec(),
            outputs: vec![("default".into(), b"out".to_vec())],
            runtime: StdDuration::from_millis(10),
            ..FakeExit::default()
        }),
        Arc::new(SystemClock),
    )
}

fn config(dir: &std::path::Path) -> PoolConfig {
    PoolConfig {
        id: "pool-under-test".into(),
        dir: dir.to_path_buf(),
        executor: ExecutorConfig::new("template", dir),
        expected_usable_mem: 0.0,
    }
}

fn half(total: &Resources) -> AllocMeta {
    AllocMeta {
        want: Resources::from_pairs([
            (MEM, total.mem() / 2.0),
            (DISK, total.get(DISK) / 2.0),
            (CPU, 0.0),
        ]),
        owner: "test".into(),
        ..AllocMeta::default()
    }
}

/// A pool in `dir` on `rt` and `clock`, with an in-memory TaskDB.
async fn pool_on(dir: &std::path::Path, rt: Arc<FakeRuntime>, clock: Arc<dyn Clock>) -> Pool {
    Pool::start(config(dir), rt, clock, Arc::new(MemoryTaskDb::default()))
        .await
        .unwrap()
}

#[tokio::test]
async fn offers_keepalive_expiry_reclaim_and_zombies() {
    let dir = tempfile::tempdir().unwrap();
    let clock = ManualClock::new(SystemClock.now());
    let db = Arc::new(MemoryTaskDb::default());
    let pool = Pool::start(
        config(dir.path()),
        fake(),
        Arc::new(clock.clone()),
        db.clone(),
    )
    .await
    .unwrap();
    assert_eq!(pool.name(), "pool-under-test");
    let total = pool.resources();
    let offers = pool.offers().await;
    assert_eq!(offers.len(), 1);
    assert_eq!(offers[0].available, total);

    // Accept half of mem and disk: the next offer shows the remainder.
    let a = pool.new_alloc(half(&total)).await.unwrap();
    let rest = pool.offers().await[0].available.clone();
    assert!((rest.mem() - total.mem() / 2.0).abs() < 1.0);
    assert_eq!(rest.get(CPU), total.get(CPU));

    // Run an exec on it.
    let id = Digest::of(b"pool-exec");
    let cfg = ExecConfig {
        kind: "exec".into(),
        image: IMAGE.into(),
        cmd: "x".into(),
        ..ExecConfig::default()
    };
    let e = a.executor().put(id, cfg).await.unwrap();
    e.wait().await.unwrap();
    let result = e.result().unwrap();

    // Keepalive is granted as asked, capped at 5 minutes.
    assert_eq!(
        pool.keepalive(a.id(), Duration::nanoseconds(1))
            .await
            .unwrap(),
        Duration::nanoseconds(1)
    );
    assert_eq!(
        pool.keepalive(a.id(), Duration::hours(1)).await.unwrap(),
        Duration::minutes(5)
    );
    clock.advance(Duration::minutes(6));
    // Expired: the offer shows everything again.
    assert_eq!(pool.offers().await[0].available, total);

    // Accepting everything reclaims the expired alloc.
    let all = AllocMeta {
        want: total.clone(),
        ..AllocMeta::default()
    };
    let b = pool.new_alloc(all).await.unwrap();
    assert!(pool.alloc(a.id()).await.is_err());
    assert!(pool.keepalive(a.id(), Duration::minutes(1)).await.is_err());
    let z = pool.zombie(a.id()).unwrap();
    assert_eq!(z.meta().unwrap().owner, "test");
    assert_eq!(z.execs(), vec![id]);
    assert_eq!(z.manifest(&id).unwrap().result, result);
    assert_eq!(z.logs(&id).unwrap(), b"logthis\n");
    assert!(pool.offers().await.is_empty(), "no room left");

    // TaskDB rows: both allocs started, a's keepalives and end recorded.
    tokio::time::sleep(StdDuration::from_millis(50)).await; // keepalives are sent asynchronously
    let calls = db.calls();
    let a_row = a.inspect().taskdb_alloc_id;
    assert!(calls.contains(&TaskDbCall::StartAlloc(a_row, a.id().to_string())));
    assert!(
        calls
            .iter()
            .any(|c| matches!(c, TaskDbCall::Keepalive(r, _) if *r == a_row))
    );
    assert!(
        calls
            .iter()
            .any(|c| matches!(c, TaskDbCall::End(r, _) if *r == a_row))
    );
    assert!(calls.contains(&TaskDbCall::StartAlloc(
        b.inspect().taskdb_alloc_id,
        b.id().to_string()
    )));

    // state.json lists only the live alloc.
    let state: serde_json::Value =
        serde_json::from_slice(&std::fs::read(dir.path().join("state.json")).unwrap()).unwrap();
    assert_eq!(
        state.as_object().unwrap().keys().collect::<Vec<_>>(),
        vec![b.id()]
    );
}

/// A resumed job's alloc can be reclaimed while expired, and the job then makes its alloc again
/// under the same (command-derived) id. The new alloc waits for the old one's end: otherwise
/// the old executor's kill, which takes every container labeled with the alloc id, would take
/// the new exec's container, and its start would find no such container.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_alloc_made_again_under_a_reclaimed_id_keeps_its_container() {
    let dir = tempfile::tempdir().unwrap();
    let clock = ManualClock::new(SystemClock.now());
    // Its exec runs long enough to be running when the old alloc's containers are listed.
    let rt = FakeRuntime::new(
        &[IMAGE],
        Arc::new(|_: &ContainerSpec| FakeExit {
            runtime: StdDuration::from_millis(500),
            ..FakeExit::default()
        }),
        Arc::new(SystemClock),
    );
    let pool = pool_on(dir.path(), rt.clone(), Arc::new(clock.clone())).await;
    let total = pool.resources();
    let id = "00000000000000aa";
    pool.new_alloc_as(id, part(&total, 0.5)).await.unwrap();
    clock.advance(Duration::minutes(3));
    // Reclaiming it (to make room) lists its containers slowly; meanwhile its id comes back.
    rt.delay_next("list", id, StdDuration::from_millis(300));
    let reclaim = {
        let pool = pool.clone();
        let want = part(&total, 0.75);
        tokio::spawn(async move { pool.new_alloc(want).await })
    };
    tokio::time::sleep(StdDuration::from_millis(100)).await;
    assert!(pool.alloc(id).await.is_err(), "reclaimed");
    let again = pool.new_alloc_as(id, part(&total, 0.25)).await.unwrap();
    let exec = Digest::of(b"made-again");
    let cfg = ExecConfig {
        kind: "exec".into(),
        image: IMAGE.into(),
        cmd: "x".into(),
        ..ExecConfig::default()
    };
    let e = again.executor().put(exec, cfg).await.unwrap();
    e.wait().await.unwrap();
    reclaim.await.unwrap().unwrap();
    let result = e.result().unwrap();
    assert!(result.err.is_none(), "{:?}", result.err);
    assert!(
        !rt.calls().iter().any(|c| c.starts_with("kill ")),
        "no container of the new alloc was killed: {:?}",
        rt.calls()
    );
    assert!(
        again.executor().get(&exec).is_ok(),
        "the new executor lives"
    );
}

/// An expired alloc asked for again by its id (a redelivered or resumed command) is revived
/// for its first lease, so a new alloc's admission does not reclaim it first.
#[tokio::test]
async fn an_expired_alloc_asked_for_again_is_revived() {
    let dir = tempfile::tempdir().unwrap();
    let clock = ManualClock::new(SystemClock.now());
    let pool = pool_on(dir.path(), fake(), Arc::new(clock.clone())).await;
    let total = pool.resources();
    let id = "00000000000000bb";
    pool.new_alloc_as(id, part(&total, 0.5)).await.unwrap();
    clock.advance(Duration::minutes(3));
    let a = pool.new_alloc_as(id, part(&total, 0.5)).await.unwrap();
    assert_eq!(a.expires(), clock.now() + Duration::minutes(2));
    assert!(matches!(
        pool.new_alloc(part(&total, 0.75)).await,
        Err(PoolError::Admit(_))
    ));
    assert!(pool.alloc(id).await.is_ok(), "not reclaimed");
}

/// The allocs of one pool share what their executors saw of the engine's images: the second
/// alloc's exec of an image the first just used needs no check.
#[tokio::test]
async fn allocs_share_the_images_seen_present() {
    let dir = tempfile::tempdir().unwrap();
    let rt = fake();
    let pool = pool_on(dir.path(), rt.clone(), Arc::new(SystemClock)).await;
    let total = pool.resources();
    for n in 0..2u8 {
        let a = pool.new_alloc(part(&total, 0.25)).await.unwrap();
        let cfg = ExecConfig {
            kind: "exec".into(),
            image: IMAGE.into(),
            cmd: format!("x{n}"),
            ..ExecConfig::default()
        };
        let e = a.executor().put(Digest::of(&[n]), cfg).await.unwrap();
        e.wait().await.unwrap();
    }
    assert_eq!(rt.count("image "), 1, "{:?}", rt.calls());
}

fn part(total: &Resources, share: f64) -> AllocMeta {
    AllocMeta {
        want: Resources::from_pairs([
            (MEM, total.mem() * share),
            (DISK, total.get(DISK) * share),
            (CPU, 0.0),
        ]),
        owner: "test".into(),
        ..AllocMeta::default()
    }
}

#[tokio::test]
async fn free_rewrites_state_and_idle_pools_stop() {
    let dir = tempfile::tempdir().unwrap();
    let clock = ManualClock::new(SystemClock.now());
    let pool = pool_on(dir.path(), fake(), Arc::new(clock.clone())).await;
    let (idle, _) = pool.stop_if_idle_for(Duration::minutes(10)).await;
    assert!(idle, "an empty pool is idle");

    let dir2 = tempfile::tempdir().unwrap();
    let pool = pool_on(dir2.path(), fake(), Arc::new(clock.clone())).await;
    let a = pool.new_alloc(half(&pool.resources())).await.unwrap();
    let (idle, wait) = pool.stop_if_idle_for(Duration::minutes(10)).await;
    assert!(!idle);
    assert_eq!(
        wait,
        Duration::minutes(12),
        "initial keepalive 2 min + 10 min idle"
    );
    pool.free(a.id()).await.unwrap();
    let state: serde_json::Value =
        serde_json::from_slice(&std::fs::read(dir2.path().join("state.json")).unwrap()).unwrap();
    assert!(
        state.as_object().unwrap().is_empty(),
        "freed allocs leave state.json"
    );
    assert!(matches!(
        pool.free(a.id()).await,
        Err(PoolError::NoSuchAlloc { .. })
    ));
    assert!(pool.zombie("../../etc/passwd").is_err());
}

/// A freed alloc is ended once: the next start leaves its directory alone (no executor, no
/// container listing), also when `state.json` is lost, where it would otherwise come back as a
/// live alloc. One freed just before a crash, whose end mark is missing, is ended at the start
/// and then marked. An id allocated again is live again.
#[tokio::test]
async fn an_ended_alloc_stays_a_zombie_across_restarts() {
    let dir = tempfile::tempdir().unwrap();
    let clock: Arc<dyn Clock> = Arc::new(SystemClock);
    let part = |owner: &str| AllocMeta {
        want: Resources::from_pairs([(MEM, (64u64 << 20) as f64)]),
        owner: owner.into(),
        ..AllocMeta::default()
    };
    let ids = ["00000000000000a1", "00000000000000b2", "00000000000000c3"];
    let pool = pool_on(dir.path(), fake(), clock.clone()).await;
    for (i, id) in ids.iter().enumerate() {
        let a = pool.new_alloc_as(id, part(id)).await.unwrap();
        let cfg = ExecConfig {
            kind: "exec".into(),
            image: IMAGE.into(),
            cmd: "x".into(),
            ..ExecConfig::default()
        };
        let e = a
            .executor()
            .put(Digest::of(id.as_bytes()), cfg)
            .await
            .unwrap();
        e.wait().await.unwrap();
        if i < 2 {
            pool.free(id).await.unwrap();
        }
    }
    let mark = |id: &str| dir.path().join("allocs").join(id).join("ended");
    assert!(mark(ids[0]).exists() && mark(ids[1]).exists());
    assert!(!mark(ids[2]).exists(), "a live alloc has no end mark");
    // The second was freed, and the agent died before its mark was written.
    std::fs::remove_file(mark(ids[1])).unwrap();
    pool.shutdown().await;

    let rt = fake();
    let pool = pool_on(dir.path(), rt.clone(), clock.clone()).await;
    assert_eq!(rt.count(&format!("list {}", ids[0])), 0, "{:?}", rt.calls());
    assert!(
        rt.count(&format!("list {}", ids[1])) > 0,
        "{:?}",
        rt.calls()
    );
    assert!(mark(ids[1]).exists(), "ended at the start, then marked");
    assert!(pool.alloc(ids[0]).await.is_err() && pool.alloc(ids[1]).await.is_err());
    assert!(pool.alloc(ids[2]).await.is_ok());
    assert_eq!(pool.zombie(ids[0]).unwrap().meta().unwrap().owner, ids[0]);
    pool.shutdown().await;

    // Without a state: the live alloc is restored, the ended ones are not.
    std::fs::remove_file(dir.path().join("state.json")).unwrap();
    let rt = fake();
    let pool = pool_on(dir.path(), rt.clone(), clock.clone()).await;
    assert!(pool.alloc(ids[0]).await.is_err() && pool.alloc(ids[1]).await.is_err());
    assert!(pool.alloc(ids[2]).await.is_ok());
    for id in &ids[..2] {
        assert_eq!(rt.count(&format!("list {id}")), 0, "{:?}", rt.calls());
    }

    // Allocated again under its id: live, unmarked, and restored by the next start.
    pool.new_alloc_as(ids[0], part("again")).await.unwrap();
    assert!(!mark(ids[0]).exists());
    pool.shutdown().await;
    let pool = pool_on(dir.path(), fake(), clock).await;
    assert_eq!(
        pool.alloc(ids[0]).await.unwrap().inspect().meta.owner,
        "again"
    );
}

#[tokio::test]
async fn an_absurd_memory_expectation_fails_start() {
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = config(dir.path());
    cfg.expected_usable_mem = 1e18;
    let err = Pool::start(
        cfg,
        fake(),
        Arc::new(SystemClock),
        Arc::new(MemoryTaskDb::default()),
    )
    .await
    .unwrap_err();
    assert!(matches!(err, PoolError::Unviable { .. }), "{err}");
}

#[tokio::test]
async fn inspect_reads_a_state_directory_offline() {
    let dir = tempfile::tempdir().unwrap();
    let pool = pool_on(dir.path(), fake(), Arc::new(SystemClock)).await;
    let live = pool.new_alloc(half(&pool.resources())).await.unwrap();
    let gone = pool
        .new_alloc(AllocMeta {
            want: Resources::from_pairs([(MEM, 1e6)]),
            owner: "old".into(),
            ..AllocMeta::default()
        })
        .await
        .unwrap();
    let id = Digest::of(b"inspected");
    let mut cfg = ExecConfig {
        kind: "exec".into(),
        image: IMAGE.into(),
        cmd: "x".into(),
        ..ExecConfig::default()
    };
    cfg.ident = "align.sample1".into();
    live.executor()
        .put(id, cfg)
        .await
        .unwrap()
        .wait()
        .await
        .unwrap();
    pool.free(gone.id()).await.unwrap();
    pool.shutdown().await;

    let run = |args: &[&str]| {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_reflow-agent"))
            .args(args)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap()
    };
    let d = dir.path().to_str().unwrap();
    let list = run(&["inspect", "--dir", d]);
    assert!(
        list.contains(&format!("alloc {} (live)", live.id())),
        "{list}"
    );
    assert!(
        list.contains(&format!("alloc {} (zombie) owner=old", gone.id())),
        "{list}"
    );
    assert!(
        list.contains(&format!("{} complete", id.short())) && list.contains("align.sample1"),
        "{list}"
    );
    let one = run(&["inspect", "--dir", d, &id.hex()]);
    assert!(
        one.contains("state      complete")
            && one.contains(&format!("output     . {}", Digest::of(b"out"))),
        "{one}"
    );
    let json: serde_json::Value =
        serde_json::from_str(&run(&["inspect", "--dir", d, "--json"])).unwrap();
    assert_eq!(json.as_array().unwrap().len(), 2);
}
