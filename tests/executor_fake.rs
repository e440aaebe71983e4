//! Component tests of the executor on the fake container runtime: exit classification, agent
//! kills, hanging containers, single-flight pulls and restart without a second create. No
//! network, no Docker.
#![cfg(feature = "test-util")]

use std::sync::Arc;
use std::time::Duration;

use reflow_agent::clock::SystemClock;
use reflow_agent::digest::Digest;
use reflow_agent::docker::ContainerSpec;
use reflow_agent::docker::fake::{FakeExit, FakeRuntime, Script};
use reflow_agent::error::Kind;
use reflow_agent::executor::{Executor, ExecutorConfig};
use reflow_agent::manifest::ExecState;
use reflow_agent::model::ExecConfig;

const IMAGE: &str = "fake/image:1";

fn cfg(cmd: &str) -> ExecConfig {
    ExecConfig {
        kind: "exec".into(),
        image: IMAGE.into(),
        cmd: cmd.into(),
        ..ExecConfig::default()
    }
}

/// Each container behaves as the table entry named by its command.
fn script() -> Script {
    Arc::new(|spec: &ContainerSpec| {
        let cmd = spec.entrypoint.last().cloned().unwrap_or_default();
        let ms = |n| Duration::from_millis(n);
        match cmd.as_str() {
            "ok" => FakeExit {
                outputs: vec![("default".into(), b"x".to_vec())],
                runtime: ms(10),
                ..FakeExit::default()
            },
            "fail" => FakeExit {
                code: 1,
                stderr: b"starting\nError: boom\n".to_vec(),
                runtime: ms(10),
                ..FakeExit::default()
            },
            "exit137" => FakeExit {
                code: 137,
                runtime: ms(10),
                ..FakeExit::default()
            },
            "oom" => FakeExit {
                code: 137,
                oom_killed: true,
                runtime: ms(10),
                ..FakeExit::default()
            },
            "temp" => FakeExit {
                code: 75,
                runtime: ms(10),
                ..FakeExit::default()
            },
            "gooom" => FakeExit {
                code: 2,
                stderr: b"fatal error: runtime: out of memory\n".to_vec(),
                runtime: ms(10),
                ..FakeExit::default()
            },
            "short" => FakeExit {
                outputs: vec![("default".into(), b"x".to_vec())],
                runtime: ms(300),
                ..FakeExit::default()
            },
            "hang" => FakeExit {
                hang: true,
                ..FakeExit::default()
            },
            _ => FakeExit {
                runtime: Duration::from_secs(3600),
                ..FakeExit::default()
            },
        }
    })
}

async fn start(dir: &std::path::Path, rt: Arc<FakeRuntime>) -> Executor {
    Executor::start(ExecutorConfig::new("fake", dir), rt, Arc::new(SystemClock))
        .await
        .unwrap()
}

fn id(s: &str) -> Digest {
    Digest::of(s.as_bytes())
}

/// The error exec `name` of `c` fails with.
async fn failure(ex: &Executor, name: &str, c: ExecConfig) -> reflow_agent::error::ReflowError {
    ex.put(id(name), c).await.unwrap().wait().await.unwrap_err()
}

#[tokio::test]
async fn exit_classification_table() {
    let dir = tempfile::tempdir().unwrap();
    let rt = FakeRuntime::new(&[IMAGE], script(), Arc::new(SystemClock));
    let ex = start(dir.path(), rt).await;
    let cases: &[(&str, Option<Kind>)] = &[
        ("ok", None),
        ("fail", Some(Kind::DockerExec)),
        ("exit137", Some(Kind::DockerExec)), // exit 137 alone is not OOM
        ("oom", Some(Kind::Oom)),
        ("temp", Some(Kind::Temporary)),
        ("gooom", Some(Kind::Oom)),
    ];
    for (cmd, want) in cases {
        let e = ex.put(id(cmd), cfg(cmd)).await.unwrap();
        e.wait().await.unwrap();
        let r = e.result().unwrap();
        assert_eq!(r.err.as_ref().map(|e| e.kind), *want, "{cmd}: {:?}", r.err);
        if *cmd == "ok" {
            assert_eq!(r.fileset.file().unwrap().id, Digest::of(b"x"));
        }
        if *cmd == "fail" {
            let text = r.err.unwrap().to_string();
            assert!(
                text.contains(
                    "exited with code 1 (hints from exec logs):\n(stderr) line 2: Error: boom"
                ),
                "{text}"
            );
        }
    }
}

#[tokio::test]
async fn an_agent_kill_is_canceled_not_oom() {
    let dir = tempfile::tempdir().unwrap();
    let rt = FakeRuntime::new(&[IMAGE], script(), Arc::new(SystemClock));
    let ex = start(dir.path(), rt.clone()).await;
    let e = ex.put(id("long"), cfg("long")).await.unwrap();
    e.wait_until(ExecState::Running).await.unwrap();
    ex.remove(&id("long")).await.unwrap();
    let err = e.result().unwrap().err.expect("a killed exec has an error");
    assert_eq!(err.kind, Kind::Canceled, "{err}");
    assert_eq!(rt.count("kill "), 1);
}

#[tokio::test]
async fn hanging_containers_are_removed_and_the_exec_fails_retryably() {
    let dir = tempfile::tempdir().unwrap();
    let rt = FakeRuntime::new(&[IMAGE], script(), Arc::new(SystemClock));
    let ex = start(dir.path(), rt.clone()).await;
    let hang = ex.put(id("hang"), cfg("hang")).await.unwrap();
    let busy = ex.put(id("busy"), cfg("busy")).await.unwrap();
    hang.wait_until(ExecState::Running).await.unwrap();
    busy.wait_until(ExecState::Running).await.unwrap();
    let insp = ex.inspect(&id("busy")).await.unwrap();
    assert_eq!(insp.state, "running");
    assert_eq!(insp.commands.len(), 1, "a live inspect lists processes");
    assert_eq!(
        ex.check_hanging().await,
        1,
        "only the container with no processes"
    );
    let err = hang.wait().await.unwrap_err();
    assert!(err.kind.is_retryable(), "{err}");
    assert_eq!(busy.status().state, ExecState::Running);
}

#[tokio::test]
async fn concurrent_execs_share_one_pull() {
    let dir = tempfile::tempdir().unwrap();
    let rt = FakeRuntime::new(&[], script(), Arc::new(SystemClock));
    rt.set_pull(IMAGE, Ok(()));
    let ex = start(dir.path(), rt.clone()).await;
    let mut handles = Vec::new();
    for i in 0..5 {
        let ex = ex.clone();
        handles.push(tokio::spawn(async move {
            let e = ex.put(id(&format!("pull{i}")), cfg("ok")).await.unwrap();
            e.wait().await.unwrap();
        }));
    }
    for h in handles {
        h.await.unwrap();
    }
    assert_eq!(rt.count("pull "), 1, "{:?}", rt.calls());

    rt.set_pull("fake/missing:1", Err("manifest unknown".into()));
    let mut c = cfg("ok");
    c.image = "fake/missing:1".into();
    let err = failure(&ex, "missing", c).await;
    assert_eq!(err.kind, Kind::NotExist);
    assert!(err.to_string().contains("fake/missing:1"), "{err}");
}

#[tokio::test]
async fn restart_reattaches_without_a_second_create() {
    let dir = tempfile::tempdir().unwrap();
    let rt = FakeRuntime::new(&[IMAGE], script(), Arc::new(SystemClock));
    let first = start(dir.path(), rt.clone()).await;
    let e = first.put(id("r"), cfg("long")).await.unwrap();
    e.wait_until(ExecState::Running).await.unwrap();
    first.shutdown().await;
    // A redelivered put after the restart finds the running exec instead of creating another.
    let second = start(dir.path(), rt.clone()).await;
    let again = second.put(id("r"), cfg("long")).await.unwrap();
    assert_eq!(again.status().state, ExecState::Running);
    assert_eq!(rt.count("create "), 1, "{:?}", rt.calls());
    second.kill().await.unwrap();
}

/// A new executor directory has nothing to recover: starting lists no containers (one engine
/// call less per new alloc). A container left under the same name (its directory was removed
/// while it ran on) is stale: a put replaces it and runs its own, never waiting for the old
/// one's exit. A directory with execs is recovered, listing the containers.
#[tokio::test]
async fn a_new_directory_lists_nothing_and_a_put_replaces_a_stale_container() {
    use std::sync::atomic::{AtomicUsize, Ordering};
    let dir = tempfile::tempdir().unwrap();
    let runs = Arc::new(AtomicUsize::new(0));
    // The first container runs for an hour; the next one writes its output and exits 0.
    let script: Script = {
        let runs = runs.clone();
        Arc::new(
            move |_: &ContainerSpec| match runs.fetch_add(1, Ordering::SeqCst) {
                0 => FakeExit {
                    code: 3,
                    runtime: Duration::from_secs(3600),
                    ..FakeExit::default()
                },
                _ => FakeExit {
                    outputs: vec![("default".into(), b"new".to_vec())],
                    runtime: Duration::from_millis(10),
                    ..FakeExit::default()
                },
            },
        )
    };
    let rt = FakeRuntime::new(&[IMAGE], script, Arc::new(SystemClock));
    let first = start(dir.path(), rt.clone()).await;
    assert_eq!(rt.count("list "), 0, "a new directory: {:?}", rt.calls());
    let e = first.put(id("stale"), cfg("any")).await.unwrap();
    e.wait_until(ExecState::Running).await.unwrap();
    first.shutdown().await;
    // The directory goes (a collected alloc); its container runs on.
    std::fs::remove_dir_all(dir.path()).unwrap();

    let second = start(dir.path(), rt.clone()).await;
    assert_eq!(
        rt.count("list "),
        0,
        "a new directory again: {:?}",
        rt.calls()
    );
    let again = second.put(id("stale"), cfg("any")).await.unwrap();
    again.wait().await.unwrap();
    let r = again.result().unwrap();
    assert!(
        r.err.is_none(),
        "its own run, not the stale one's: {:?}",
        r.err
    );
    assert_eq!(r.fileset.file().unwrap().id, Digest::of(b"new"));
    assert_eq!(
        (rt.count("create "), rt.count("start ")),
        (3, 2),
        "the stale container was replaced: {:?}",
        rt.calls()
    );
    second.shutdown().await;

    // Execs on disk: recovered, with the containers listed.
    let third = start(dir.path(), rt.clone()).await;
    assert_eq!(rt.count("list "), 1, "{:?}", rt.calls());
    assert_eq!(
        third.get(&id("stale")).unwrap().status().state,
        ExecState::Complete
    );
}

#[tokio::test]
async fn a_container_made_here_is_started_without_a_check_first() {
    // The container this executor just created cannot have run: no inspect before its start
    // (one engine call less per exec). A resumed one is checked (the next test).
    let dir = tempfile::tempdir().unwrap();
    let rt = FakeRuntime::new(&[IMAGE], script(), Arc::new(SystemClock));
    let ex = start(dir.path(), rt.clone()).await;
    let e = ex.put(id("f"), cfg("short")).await.unwrap();
    e.wait().await.unwrap();
    let calls = rt.calls();
    let at = calls.iter().position(|c| c.starts_with("start ")).unwrap();
    assert!(calls[at - 1].starts_with("create "), "{calls:?}");
}

/// A completed exec's container is removed after its result is out. A re-put of the failed exec
/// makes a container of the same name: it waits until the old state machine's removal is
/// done, so a slow removal never takes the new container (made, not yet started).
#[tokio::test]
async fn a_re_put_waits_for_the_old_containers_removal() {
    let dir = tempfile::tempdir().unwrap();
    let rt = FakeRuntime::new(&[IMAGE], script(), Arc::new(SystemClock));
    let ex = start(dir.path(), rt.clone()).await;
    let x = id("re-put");
    // The exec's container names start so. Its first removal (after the first run) is held
    // 300 ms; its first start goes at once, its second (the re-put's) is held 500 ms.
    let name = format!("reflow-fake-{}", x.hex());
    rt.delay_next("remove", &name, Duration::from_millis(300));
    rt.delay_next("start", &name, Duration::ZERO);
    rt.delay_next("start", &name, Duration::from_millis(500));
    let e = ex.put(x, cfg("fail")).await.unwrap();
    assert!(e.container_name().starts_with(&name));
    e.wait().await.unwrap();
    assert!(e.result().unwrap().err.is_some(), "failed by its exit code");
    // Its removal is under way (held 300 ms); the re-put's start is held 500 ms.
    let again = ex.put(x, cfg("fail")).await.unwrap();
    again.wait().await.unwrap();
    let r = again.result().unwrap();
    let msg = r.err.as_ref().map(|e| e.to_string()).unwrap_or_default();
    assert!(
        msg.contains("exit"),
        "the re-put ran to its own exit: {msg}"
    );
}

#[tokio::test]
async fn a_container_started_before_a_crash_is_never_started_again() {
    // The agent died after the engine started the container but before `Running` was
    // persisted: the manifest on disk still says Created, and the container ran on (here it
    // exits while no agent runs).
    let dir = tempfile::tempdir().unwrap();
    let rt = FakeRuntime::new(&[IMAGE], script(), Arc::new(SystemClock));
    let first = start(dir.path(), rt.clone()).await;
    let e = first.put(id("s"), cfg("short")).await.unwrap();
    e.wait_until(ExecState::Running).await.unwrap();
    first.shutdown().await;
    let manifest = dir
        .path()
        .join("execs")
        .join(id("s").hex())
        .join("manifest.json");
    let mut m: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&manifest).unwrap()).unwrap();
    assert_eq!(m["State"], 3);
    m["State"] = serde_json::json!(2);
    std::fs::write(&manifest, serde_json::to_vec(&m).unwrap()).unwrap();
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(rt.count("start "), 1);

    let second = start(dir.path(), rt.clone()).await;
    let again = second.get(&id("s")).unwrap();
    again.wait().await.unwrap();
    assert_eq!(again.status().state, ExecState::Complete);
    assert!(again.result().unwrap().err.is_none());
    assert_eq!(rt.count("start "), 1, "started once: {:?}", rt.calls());
}

#[tokio::test]
async fn docker_socket_and_aws_credentials_only_when_allowed_and_never_in_manifests() {
    use reflow_agent::executor::AwsCredentials;
    let dir = tempfile::tempdir().unwrap();
    let rt = FakeRuntime::new(&[IMAGE], script(), Arc::new(SystemClock));
    let mut asking = cfg("ok");
    asking.need_docker_access = true;
    asking.need_aws_creds = true;

    // Not allowed: the exec fails with NotAllowed and no container is created.
    let ex = start(&dir.path().join("strict"), rt.clone()).await;
    let err = failure(&ex, "strict", asking.clone()).await;
    assert_eq!(err.kind, Kind::NotAllowed, "{err}");
    assert_eq!(rt.count("create "), 0);

    // Allowed: the socket is mounted and the credentials are in the environment only.
    let mut c = ExecutorConfig::new("open", dir.path().join("open"));
    c.allow_docker_socket = true;
    c.allow_aws_creds = true;
    c.aws_credentials = Some(AwsCredentials {
        access_key_id: "AKIDEXAMPLE".into(),
        secret_access_key: "very-secret-key".into(),
        session_token: Some("session-token-value".into()),
    });
    let ex = Executor::start(c, rt.clone(), Arc::new(SystemClock))
        .await
        .unwrap();
    let e = ex.put(id("open"), asking).await.unwrap();
    e.wait().await.unwrap();
    assert!(e.result().unwrap().err.is_none());
    let spec = rt.specs().remove(e.container_name()).unwrap();
    assert!(
        spec.binds
            .iter()
            .any(|b| b.container == "/var/run/docker.sock")
    );
    assert!(
        spec.env
            .contains(&"AWS_SECRET_ACCESS_KEY=very-secret-key".to_string())
    );
    assert!(
        !format!("{spec:?}").contains("very-secret-key"),
        "the spec's Debug hides values"
    );
    let manifest = std::fs::read_to_string(e.dir().join("manifest.json")).unwrap();
    assert!(!manifest.contains("very-secret-key") && !manifest.contains("session-token-value"));
}

/// Credentials that change at each ask, as an instance role's rotate: `AKID<n>` for the n-th.
#[derive(Debug, Default)]
struct RotatingCredentials(std::sync::atomic::AtomicU32);

#[async_trait::async_trait]
impl reflow_agent::executor::AwsCredentialSource for RotatingCredentials {
    async fn credentials(&self) -> Option<reflow_agent::executor::AwsCredentials> {
        let n = self.0.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        Some(reflow_agent::executor::AwsCredentials {
            access_key_id: format!("AKID{n}"),
            secret_access_key: format!("secret-{n}"),
            session_token: None,
        })
    }
}

/// With no credentials of its own, an executor that grants them asks its source at each
/// container's creation, and only for execs that ask for them: every container gets the
/// credentials current at its creation.
#[tokio::test]
async fn aws_credentials_come_from_the_source_at_each_creation() {
    use reflow_agent::executor::ExecutorPorts;
    let dir = tempfile::tempdir().unwrap();
    let rt = FakeRuntime::new(&[IMAGE], script(), Arc::new(SystemClock));
    let source = Arc::new(RotatingCredentials::default());
    let mut c = ExecutorConfig::new("rotating", dir.path().join("x"));
    c.allow_aws_creds = true;
    let mut ports = ExecutorPorts::new(rt.clone(), Arc::new(SystemClock));
    ports.aws_credentials = Some(source.clone());
    let ex = Executor::start_with(c, ports).await.unwrap();
    let mut asking = cfg("ok");
    asking.need_aws_creds = true;
    let mut keys = Vec::new();
    for name in ["first", "second"] {
        let e = ex.put(id(name), cfg("ok")).await.unwrap();
        e.wait().await.unwrap();
        let e = ex
            .put(id(&format!("{name}-asks")), asking.clone())
            .await
            .unwrap();
        e.wait().await.unwrap();
        let spec = rt.specs().remove(e.container_name()).unwrap();
        keys.extend(
            spec.env
                .iter()
                .filter(|v| v.starts_with("AWS_ACCESS_KEY_ID="))
                .cloned(),
        );
    }
    assert_eq!(keys, ["AWS_ACCESS_KEY_ID=AKID0", "AWS_ACCESS_KEY_ID=AKID1"]);
    assert_eq!(
        source.0.load(std::sync::atomic::Ordering::SeqCst),
        2,
        "asked once per exec that wants credentials, never for the others"
    );
}

/// An executor that grants AWS credentials but has neither its own nor a source of them (an
/// agent built without the AWS SDK) fails an exec that asks for them as NotSupported, which is
/// not retried, and creates no container; an exec that does not ask runs.
#[tokio::test]
async fn aws_credentials_with_no_source_fail_as_not_supported() {
    let dir = tempfile::tempdir().unwrap();
    let rt = FakeRuntime::new(&[IMAGE], script(), Arc::new(SystemClock));
    let mut c = ExecutorConfig::new("sourceless", dir.path().join("x"));
    c.allow_aws_creds = true;
    let ex = Executor::start(c, rt.clone(), Arc::new(SystemClock))
        .await
        .unwrap();
    let mut asking = cfg("ok");
    asking.need_aws_creds = true;
    let err = failure(&ex, "asks", asking).await;
    assert_eq!(err.kind, Kind::NotSupported, "{err}");
    assert!(err.to_string().contains("no source"), "{err}");
    assert_eq!(rt.count("create "), 0);
    let e = ex.put(id("plain"), cfg("ok")).await.unwrap();
    e.wait().await.unwrap();
    assert!(e.result().unwrap().err.is_none());
}

#[tokio::test]
async fn references_reuse_local_objects_and_file_sources_are_verified() {
    use reflow_agent::fileset::{File, Fileset};
    let dir = tempfile::tempdir().unwrap();
    let rt = FakeRuntime::new(&[IMAGE], script(), Arc::new(SystemClock));
    let ex = start(&dir.path().join("alloc"), rt).await;
    let local = ex.repository().put_bytes(b"already here").unwrap();
    let src = format!("file://{}", dir.path().join("no-such-repo").display());

    // A reference whose content hash is present locally needs no source at all.
    let mut r = File::reference("s3://bucket/key", "etag-1", 12);
    r.content_hash = local.id;
    let out = ex.load(&src, &Fileset::single(r)).await.unwrap();
    let f = out.file().unwrap();
    assert_eq!(
        (f.id, f.size, f.source.as_str(), f.etag.as_str()),
        (local.id, 12, "s3://bucket/key", "etag-1")
    );
    assert_eq!(ex.refcount(&local.id), 1);

    // A file:// reference is read and checked against its content hash.
    let path = dir.path().join("input.txt");
    std::fs::write(&path, b"contents").unwrap();
    let mut good = File::reference(format!("file://{}", path.display()), "", 8);
    good.content_hash = Digest::of(b"contents");
    assert_eq!(
        ex.load(&src, &Fileset::single(good))
            .await
            .unwrap()
            .file()
            .unwrap()
            .id,
        Digest::of(b"contents")
    );
    let mut bad = File::reference(format!("file://{}", path.display()), "", 8);
    bad.content_hash = Digest::of(b"something else");
    let sig = ex.integrity_signal();
    let err = ex.load(&src, &Fileset::single(bad)).await.unwrap_err();
    assert_eq!(
        reflow_agent::error::Classify::kind(&err),
        Kind::Integrity,
        "{err}"
    );
    assert!(sig.has_changed().unwrap());
}

#[tokio::test]
async fn concurrent_load_unload_loops_end_empty() {
    use reflow_agent::fileset::Fileset;
    use reflow_agent::repo::FileRepository;
    let dir = tempfile::tempdir().unwrap();
    let src_dir = dir.path().join("src");
    let src = FileRepository::open(&src_dir).unwrap();
    let mut fs = Fileset::default();
    for i in 0..10u8 {
        fs.map
            .insert(format!("f{i}"), src.put_bytes(&[i; 1000]).unwrap());
    }
    let rt = FakeRuntime::new(&[IMAGE], script(), Arc::new(SystemClock));
    let ex = start(&dir.path().join("alloc"), rt).await;
    let url = format!("file://{}", src_dir.display());
    let mut tasks = Vec::new();
    for _ in 0..8 {
        let (ex, url, fs) = (ex.clone(), url.clone(), fs.clone());
        tasks.push(tokio::spawn(async move {
            for _ in 0..25 {
                let loaded = ex.load(&url, &fs).await.unwrap();
                ex.verify_integrity(&loaded).await.unwrap();
                ex.unload(&loaded).unwrap();
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    ex.wait_gc().await;
    for f in fs.files() {
        assert_eq!(ex.refcount(&f.id), 0);
    }
    assert!(ex.repository().walk().unwrap().is_empty());
}

/// An agent killed just after it asked the engine to remove an exec's container leaves that
/// removal running in the engine. The next agent resumes the exec (its manifest says Init and
/// the container, not yet gone, is listed). It must not take that container for the exec's:
/// it waits for the removal to end, makes the container again and runs the exec once.
#[tokio::test]
async fn a_container_being_removed_when_its_exec_resumes_is_made_again() {
    let dir = tempfile::tempdir().unwrap();
    let rt = FakeRuntime::new(&[IMAGE], script(), Arc::new(SystemClock));
    let x = id("vanishing");
    // The first agent's start is held until that agent stops: its container never starts.
    rt.delay_next(
        "start",
        &format!("reflow-fake-{}", x.hex()),
        Duration::from_secs(3600),
    );
    let first = start(dir.path(), rt.clone()).await;
    let e = first.put(x, cfg("ok")).await.unwrap();
    while rt.count("start ") == 0 {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    first.shutdown().await;
    rt.begin_removal(e.container_name(), Duration::from_millis(300));

    let second = start(dir.path(), rt.clone()).await;
    let again = second.get(&x).unwrap();
    again.wait().await.unwrap();
    let r = again.result().unwrap();
    assert!(r.err.is_none(), "the exec ran: {:?}", r.err);
    assert_eq!(r.fileset.file().unwrap().id, Digest::of(b"x"));
    assert_eq!(rt.count("create "), 2, "made again: {:?}", rt.calls());
    second.shutdown().await;
}

/// A start the engine refuses as "not found" while the container is still there (its process
/// could not be found, say) is the start's own failure, reported as it is: the container is
/// not made again.
#[tokio::test]
async fn a_start_refused_as_not_found_with_its_container_there_fails_as_it_is() {
    let dir = tempfile::tempdir().unwrap();
    let rt = FakeRuntime::new(&[IMAGE], script(), Arc::new(SystemClock));
    let x = id("refused");
    rt.refuse_next_start(
        &format!("reflow-fake-{}", x.hex()),
        "exec: \"run\": executable file not found in $PATH",
    );
    let ex = start(dir.path(), rt.clone()).await;
    let e = ex.put(x, cfg("ok")).await.unwrap();
    let err = e.wait().await.unwrap_err();
    assert_eq!(err.kind, Kind::NotExist, "{err}");
    assert!(
        err.to_string().contains("executable file not found"),
        "{err}"
    );
    assert_eq!(rt.count("create "), 1, "not made again: {:?}", rt.calls());
}
