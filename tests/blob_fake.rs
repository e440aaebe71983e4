//! Component tests of `s3://` transfers on the in-memory blob store: intern and extern execs,
//! `load` from an `s3://` repository and `s3 cp`'s download path, each against a lying
//! `Content-Sha256`, a missing key and an object replaced while it is read. No network.
#![cfg(feature = "test-util")]

use std::sync::Arc;
use std::time::Duration;

use reflow_agent::blob::memory::MemoryStore;
use reflow_agent::blob::transfer::{self, Listing};
use reflow_agent::blob::{BlobUrl, Progress};
use reflow_agent::clock::SystemClock;
use reflow_agent::digest::Digest;
use reflow_agent::docker::fake::{FakeExit, FakeRuntime};
use reflow_agent::error::{Classify, Kind};
use reflow_agent::executor::{Executor, ExecutorConfig, ExecutorPorts};
use reflow_agent::fileset::{File, Fileset};
use reflow_agent::model::{Arg, ExecConfig, ExecResult};

const B: &str = "bucket";

async fn executor(dir: &std::path::Path, store: Arc<MemoryStore>) -> Executor {
    let rt = FakeRuntime::new(
        &[],
        Arc::new(|_: &reflow_agent::docker::ContainerSpec| FakeExit::default()),
        Arc::new(SystemClock),
    );
    let mut ports = ExecutorPorts::new(rt, Arc::new(SystemClock));
    ports.blob = Some(store);
    Executor::start_with(ExecutorConfig::new("blob", dir), ports)
        .await
        .unwrap()
}

fn blob_exec(kind: &str, url: &str, args: Vec<Arg>) -> ExecConfig {
    ExecConfig {
        kind: kind.into(),
        url: url.into(),
        args,
        ..ExecConfig::default()
    }
}

async fn run(ex: &Executor, name: &str, cfg: ExecConfig) -> ExecResult {
    let e = ex.put(Digest::of(name.as_bytes()), cfg).await.unwrap();
    tokio::time::timeout(Duration::from_secs(10), e.wait())
        .await
        .unwrap()
        .unwrap();
    e.result().unwrap()
}

#[tokio::test]
async fn intern_reads_a_key_and_a_prefix_and_reuses_what_it_holds() {
    let s = Arc::new(MemoryStore::new());
    s.put(B, "data/a.txt", b"alpha\n");
    s.put(B, "data/a.txt.bak", b"sibling of a key\n");
    s.put(B, "data/sub/", b"");
    s.put(B, "data/sub/c.txt", b"gamma\n");
    s.put(B, "data-other/x.txt", b"sibling of a prefix\n");
    let dir = tempfile::tempdir().unwrap();
    let ex = executor(dir.path(), s.clone()).await;

    let r = run(
        &ex,
        "one",
        blob_exec("intern", "s3://bucket/data/a.txt", vec![]),
    )
    .await;
    assert!(r.err.is_none(), "{:?}", r.err);
    assert_eq!(r.fileset.map.keys().collect::<Vec<_>>(), ["."]);
    assert_eq!(r.fileset.map["."].id, Digest::of(b"alpha\n"));
    assert_eq!(r.fileset.map["."].source, "s3://bucket/data/a.txt");
    ex.promote(&Digest::of(b"one")).await.unwrap();

    let before = s.requests();
    let r = run(
        &ex,
        "prefix",
        blob_exec("intern", "s3://bucket/data/", vec![]),
    )
    .await;
    assert!(r.err.is_none(), "{:?}", r.err);
    assert_eq!(
        r.fileset.map.keys().collect::<Vec<_>>(),
        ["a.txt", "a.txt.bak", "sub/c.txt"],
        "no directory marker, nothing from data-other/"
    );
    assert_eq!(r.fileset.map["sub/c.txt"].id, Digest::of(b"gamma\n"));
    assert_eq!(r.fileset.map["a.txt"].source, "s3://bucket/data/a.txt");
    // One HEAD per listed object (4) and a GET for the two it did not hold: a.txt is reused.
    assert_eq!(s.requests() - before, 4 + 2);
    ex.shutdown().await;
}

#[tokio::test]
async fn intern_faults_are_typed_and_leave_no_partial_result() {
    let s = Arc::new(MemoryStore::new());
    s.put_with_sha256(B, "lies.txt", b"the real bytes", Some(Digest::of(b"other")));
    s.put(B, "moving/a.txt", b"first version");
    s.put(B, "moving/b.txt", b"steady");
    s.replace_during_next_download(B, "moving/a.txt", b"second version");
    let dir = tempfile::tempdir().unwrap();
    let ex = executor(dir.path(), s.clone()).await;
    let mut signal = ex.integrity_signal();

    let r = run(
        &ex,
        "lies",
        blob_exec("intern", "s3://bucket/lies.txt", vec![]),
    )
    .await;
    let err = r.err.expect("an integrity error");
    assert_eq!(err.kind, Kind::Integrity, "{err}");
    assert!(err.to_string().contains("(expected) != sha256:"), "{err}");
    assert!(r.fileset.map.is_empty(), "no partial result");
    tokio::time::timeout(Duration::from_secs(5), signal.wait_for(|s| s.count == 1))
        .await
        .unwrap()
        .unwrap();

    let r = run(
        &ex,
        "gone",
        blob_exec("intern", "s3://bucket/nope.txt", vec![]),
    )
    .await;
    let err = r.err.expect("a missing key fails");
    assert_eq!(err.kind, Kind::NotExist, "{err}");
    assert!(err.to_string().contains("s3://bucket/nope.txt"), "{err}");

    let r = run(
        &ex,
        "moving",
        blob_exec("intern", "s3://bucket/moving/", vec![]),
    )
    .await;
    let err = r.err.expect("a replaced object fails the download");
    assert_eq!(err.kind, Kind::Temporary, "retryable: {err}");
    assert!(
        err.to_string().contains("changed while it was read"),
        "{err}"
    );
    assert!(r.fileset.map.is_empty(), "no partial result");
    // Read again, the new version is what comes back.
    let r = run(
        &ex,
        "moving again",
        blob_exec("intern", "s3://bucket/moving/", vec![]),
    )
    .await;
    assert!(r.err.is_none(), "{:?}", r.err);
    assert_eq!(r.fileset.map["a.txt"].id, Digest::of(b"second version"));
    ex.shutdown().await;
}

#[tokio::test]
async fn extern_writes_each_file_with_its_digest() {
    let s = Arc::new(MemoryStore::new());
    let dir = tempfile::tempdir().unwrap();
    let ex = executor(dir.path(), s.clone()).await;
    let fa = ex.repository().put_bytes(b"first\n").unwrap();
    let fb = ex.repository().put_bytes(b"second\n").unwrap();
    let fs = Fileset::from_map([("a".to_string(), fa.clone()), ("d/b".to_string(), fb)].into());
    let arg = Arg {
        fileset: Some(fs.clone()),
        ..Arg::default()
    };
    let r = run(
        &ex,
        "ext",
        blob_exec("extern", "s3://bucket/out/", vec![arg]),
    )
    .await;
    assert!(r.err.is_none(), "{:?}", r.err);
    assert_eq!(s.keys(B), ["out/a", "out/d/b"]);
    assert_eq!(
        s.get(B, "out/d/b"),
        Some((b"second\n".to_vec(), Some(Digest::of(b"second\n"))))
    );
    // One file to one key.
    let one = Fileset::from_map([(".".to_string(), fa)].into());
    let arg = Arg {
        fileset: Some(one),
        ..Arg::default()
    };
    let r = run(
        &ex,
        "ext1",
        blob_exec("extern", "s3://bucket/single", vec![arg]),
    )
    .await;
    assert!(r.err.is_none(), "{:?}", r.err);
    assert_eq!(s.get(B, "single").unwrap().0, b"first\n");
    ex.shutdown().await;
}

#[tokio::test]
async fn load_from_an_s3_repository_verifies_each_object_by_its_name() {
    let s = Arc::new(MemoryStore::new());
    let repo = BlobUrl::parse("s3://bucket/repo").unwrap();
    let good = Digest::of(b"good bytes");
    s.put(B, &repo.object_key(&good), b"good bytes");
    // An object named for one digest that holds other bytes, whatever its metadata says.
    let claimed = Digest::of(b"what the name promises");
    s.put_with_sha256(
        B,
        &repo.object_key(&claimed),
        b"something else",
        Some(claimed),
    );
    let dir = tempfile::tempdir().unwrap();
    let ex = executor(dir.path(), s.clone()).await;
    let fileset =
        |d: Digest, n: u64| Fileset::from_map([("x".to_string(), File::resolved(d, n))].into());

    let got = ex
        .load("s3://bucket/repo", &fileset(good, 10))
        .await
        .unwrap();
    assert_eq!(got.map["x"].id, good);
    assert!(ex.repository().contains(&good));

    let e = ex
        .load("s3://bucket/repo", &fileset(claimed, 22))
        .await
        .unwrap_err();
    assert_eq!(e.kind(), Kind::Integrity, "{e}");
    assert!(!ex.repository().contains(&claimed));

    let missing = Digest::of(b"never uploaded");
    let e = ex
        .load("s3://bucket/repo", &fileset(missing, 3))
        .await
        .unwrap_err();
    assert_eq!(e.kind(), Kind::NotExist, "{e}");
    ex.shutdown().await;
}

#[tokio::test]
async fn a_download_to_files_never_leaves_a_bad_file_under_its_name() {
    let s = MemoryStore::new();
    s.put(B, "tree/ok.txt", b"fine");
    s.put_with_sha256(B, "tree/lies.txt", b"real", Some(Digest::of(b"claimed")));
    s.put(B, "tree/moving.txt", b"v1");
    s.replace_during_next_download(B, "tree/moving.txt", b"v2");
    let dir = tempfile::tempdir().unwrap();
    let url = BlobUrl::parse("s3://bucket/tree/").unwrap();
    let progress = Progress::default();
    for (key, kind) in [
        ("tree/lies.txt", Kind::Integrity),
        ("tree/moving.txt", Kind::Temporary),
    ] {
        let info = transfer::objects(
            &s,
            &BlobUrl::parse(&format!("s3://bucket/{key}")).unwrap(),
            Listing::KeysOnly,
        )
        .await
        .unwrap()
        .remove(0);
        let target = dir.path().join("out.txt");
        let e = transfer::download_to(&s, B, info, &target, &progress)
            .await
            .unwrap_err();
        assert_eq!(e.kind(), kind, "{key}: {e}");
        assert!(!target.exists(), "{key}");
        let leftovers: Vec<_> = std::fs::read_dir(dir.path()).unwrap().collect();
        assert!(leftovers.is_empty(), "{key}: temp file left: {leftovers:?}");
    }
    // The whole tree, now that the object has settled: each file under its path.
    s.put(B, "tree/lies.txt", b"real");
    let infos = transfer::objects(&s, &url, Listing::KeysOnly)
        .await
        .unwrap();
    transfer::download_all_to(&s, &url, infos, &dir.path().join("t"), 2, &progress)
        .await
        .unwrap();
    assert_eq!(
        std::fs::read(dir.path().join("t/moving.txt")).unwrap(),
        b"v2"
    );
    assert_eq!(std::fs::read(dir.path().join("t/ok.txt")).unwrap(), b"fine");

    let e = transfer::objects(
        &s,
        &BlobUrl::parse("s3://bucket/nope").unwrap(),
        Listing::KeysOnly,
    )
    .await
    .unwrap_err();
    assert_eq!(e.kind(), Kind::NotExist, "{e}");
}
