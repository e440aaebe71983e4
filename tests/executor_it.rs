//! The executor against a real Docker engine with the offline test image.
#![cfg(feature = "integration")]

use crate::common;

use std::collections::BTreeMap;
use std::fs;
use std::time::{Duration, Instant};

use common::*;
use reflow_agent::clock::{Clock, SystemClock};
use reflow_agent::digest::Digest;
use reflow_agent::error::{Classify, Kind};
use reflow_agent::executor::{ExecutorError, LABEL_EXECUTOR};
use reflow_agent::fileset::{File, Fileset};
use reflow_agent::manifest::{ExecState, MANIFEST_FILE, Manifest};
use reflow_agent::model::Arg;
use reflow_agent::repo::FileRepository;

fn manifest_state(dir: &std::path::Path, id: &Digest) -> Option<ExecState> {
    let p = dir.join("execs").join(id.hex()).join(MANIFEST_FILE);
    let m: Manifest = serde_json::from_slice(&fs::read(p).ok()?).ok()?;
    Some(m.state)
}

/// A running exec's PID is inspected beside its wait, and the sampler reads the cgroup that PID
/// is in: the profile has the container's memory and CPU, and the manifest its PID.
#[tokio::test]
async fn a_running_execs_profile_comes_from_its_cgroup() {
    let dir = tempfile::tempdir().unwrap();
    let ex = executor(dir.path()).await;
    let e = ex
        .put(new_id("profile"), exec("sleep 2; echo done > $out", vec![]))
        .await
        .unwrap();
    e.wait().await.unwrap();
    assert!(e.result().unwrap().err.is_none());
    let insp = e.inspect();
    for metric in ["mem", "cpu"] {
        assert!(
            insp.profile.get(metric).is_some_and(|p| p.n >= 2),
            "{metric} sampled from the cgroup: {:?}",
            insp.profile.keys().collect::<Vec<_>>()
        );
    }
    assert!(insp.profile["mem"].max > 0.0);
    assert!(e.manifest().pid > 0, "the PID was found");
}

#[tokio::test]
async fn echo_to_out_matches_sha256sum() {
    let dir = tempfile::tempdir().unwrap();
    let ex = executor(dir.path()).await;
    let id = new_id("echo");
    let e = ex
        .put(id, exec("echo foobar > $out", vec![]))
        .await
        .unwrap();
    e.wait().await.unwrap();
    let r = e.result().unwrap();
    assert!(r.err.is_none(), "{:?}", r.err);
    let f = r.fileset.file().unwrap();
    assert_eq!(f.id.hex(), sha256sum(b"foobar\n"));
    assert_eq!(f.size, 7);
    // Profiles: disk sampled at least once, at stop.
    let insp = e.inspect();
    assert_eq!(insp.state, "complete");
    assert!(insp.profile["disk"].n >= 1);
    assert!(insp.profile["disk"].max >= 7.0);
    // Logs are saved, the container is removed (right after the result is out), and a re-put
    // returns the same exec at once.
    assert_eq!(e.logs(true, true).unwrap(), b"");
    let deadline = Instant::now() + Duration::from_secs(10);
    while container_exists(e.container_name()) {
        assert!(
            Instant::now() < deadline,
            "the completed exec's container stays"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let t = Instant::now();
    let again = ex.put(id, exec("echo other > $out", vec![])).await.unwrap();
    assert!(std::sync::Arc::ptr_eq(&again, &e));
    assert!(t.elapsed() < Duration::from_millis(100));
    // Promote moves the output into the executor repository.
    ex.promote(&id).await.unwrap();
    assert!(ex.repository().contains(&f.id));
    assert_eq!(ex.refcount(&f.id), 1);
}

#[tokio::test]
async fn multiple_outputs_with_output_is_dir() {
    let dir = tempfile::tempdir().unwrap();
    let ex = executor(dir.path()).await;
    let mut cfg = exec(
        "mkdir -p %s/sub && echo a > /return/0/sub/a && echo b > /return/0/b && echo file > %s",
        vec![Arg::output(0), Arg::output(1)],
    );
    cfg.output_is_dir = vec![true, false];
    let e = ex.put(new_id("multi"), cfg).await.unwrap();
    e.wait().await.unwrap();
    let r = e.result().unwrap();
    assert!(r.err.is_none(), "{:?}", r.err);
    assert_eq!(r.fileset.list.len(), 2);
    let dir0 = &r.fileset.list[0].map;
    assert_eq!(dir0.keys().collect::<Vec<_>>(), vec!["b", "sub/a"]);
    assert_eq!(dir0["sub/a"].id.hex(), sha256sum(b"a\n"));
    assert_eq!(
        r.fileset.list[1].file().unwrap().id.hex(),
        sha256sum(b"file\n")
    );
}

#[tokio::test]
async fn inputs_via_load_then_unload_empties_the_repository() {
    let dir = tempfile::tempdir().unwrap();
    let src_dir = dir.path().join("source-repo");
    let src = FileRepository::open(&src_dir).unwrap();
    let a = src.put_bytes(b"hello\n").unwrap();
    let b = src.put_bytes(b"world\n").unwrap();
    let input = Fileset::from_map(BTreeMap::from([
        ("in/a.txt".to_string(), a.clone()),
        ("b.txt".to_string(), b.clone()),
    ]));
    let ex = executor(&dir.path().join("alloc")).await;
    let url = format!("file://{}", src_dir.display());
    let loaded = ex.load(&url, &input).await.unwrap();
    assert_eq!(loaded, input);
    assert_eq!(ex.refcount(&a.id), 1);

    let id = new_id("load");
    let e = ex
        .put(
            id,
            exec(
                "cat %s/in/a.txt %s/b.txt > $out",
                vec![Arg::input(loaded.clone()), Arg::input(loaded.clone())],
            ),
        )
        .await
        .unwrap();
    e.wait().await.unwrap();
    let r = e.result().unwrap();
    assert!(r.err.is_none(), "{:?}", r.err);
    assert_eq!(
        r.fileset.file().unwrap().id.hex(),
        sha256sum(b"hello\nworld\n")
    );
    ex.verify_integrity(&loaded).await.unwrap();
    ex.promote(&id).await.unwrap();

    // Unload everything: the repository ends empty. Unloading again is an error, not a panic.
    ex.unload(&loaded).unwrap();
    ex.unload(&r.fileset).unwrap();
    ex.wait_gc().await;
    assert!(ex.repository().walk().unwrap().is_empty());
    let again = ex.unload(&loaded).unwrap_err();
    assert!(
        matches!(again, ExecutorError::NotLoaded { .. }),
        "{again:?}"
    );

    // A reference with a known content hash reuses the local object; a missing object is NotExist.
    let missing = Fileset::single(File::resolved(Digest::of(b"nowhere"), 7));
    let err = ex.load(&url, &missing).await.unwrap_err();
    assert_eq!(err.kind(), Kind::NotExist, "{err}");
    assert_eq!(
        ex.refcount(&Digest::of(b"nowhere")),
        0,
        "a failed load leaks no reference"
    );
}

#[tokio::test]
async fn load_of_corrupt_source_is_integrity_and_signals() {
    let dir = tempfile::tempdir().unwrap();
    let src_dir = dir.path().join("src");
    let src = FileRepository::open(&src_dir).unwrap();
    let f = src.put_bytes(b"original").unwrap();
    fs::write(src.path(&f.id), b"tampered").unwrap();
    let ex = executor(&dir.path().join("alloc")).await;
    let mut sig = ex.integrity_signal();
    let err = ex
        .load(
            &format!("file://{}", src_dir.display()),
            &Fileset::single(f),
        )
        .await
        .unwrap_err();
    assert_eq!(err.kind(), Kind::Integrity, "{err}");
    assert!(sig.has_changed().unwrap());
    assert_eq!(sig.borrow_and_update().count, 1);

    // verify_integrity reports every mismatch.
    let good = ex.repository().put_bytes(b"good").unwrap();
    let bad = ex.repository().put_bytes(b"bad").unwrap();
    fs::write(ex.repository().path(&bad.id), b"rot").unwrap();
    let fs_ = Fileset::from_map(BTreeMap::from([
        ("g".into(), good),
        ("b".into(), bad.clone()),
    ]));
    let err = ex.verify_integrity(&fs_).await.unwrap_err();
    assert_eq!(err.kind(), Kind::Integrity);
    assert!(err.to_string().contains(&bad.id.to_string()), "{err}");
    assert_eq!(sig.borrow().count, 2);
}

#[tokio::test]
async fn nonzero_exit_and_exit_75() {
    let dir = tempfile::tempdir().unwrap();
    let ex = executor(dir.path()).await;
    let e = ex
        .put(
            new_id("exit3"),
            exec("echo 'fatal error: bad input' >&2; exit 3", vec![]),
        )
        .await
        .unwrap();
    e.wait().await.unwrap();
    let err = e.result().unwrap().err.expect("exec error");
    assert_eq!(err.kind, Kind::DockerExec);
    let text = err.to_string();
    assert!(text.contains("exited with code 3"), "{text}");
    assert!(
        text.contains("(stderr) line 1: fatal error: bad input"),
        "{text}"
    );
    assert_eq!(e.logs(false, true).unwrap(), b"fatal error: bad input\n");

    let e = ex
        .put(new_id("exit75"), exec("exit 75", vec![]))
        .await
        .unwrap();
    e.wait().await.unwrap();
    let err = e.result().unwrap().err.expect("exec error");
    assert_eq!(err.kind, Kind::Temporary);
    assert!(err.kind.is_retryable());

    // A failed exec is re-run from a clean directory by a re-put with the same id.
    let id = new_id("rerun");
    let e = ex
        .put(id, exec("echo stale > /return/default; exit 1", vec![]))
        .await
        .unwrap();
    e.wait().await.unwrap();
    assert!(e.result().unwrap().err.is_some());
    let e2 = ex
        .put(id, exec("test ! -e $out && echo fresh > $out", vec![]))
        .await
        .unwrap();
    assert!(!std::sync::Arc::ptr_eq(&e, &e2));
    e2.wait().await.unwrap();
    let r = e2.result().unwrap();
    assert!(r.err.is_none(), "{:?}", r.err);
    assert_eq!(r.fileset.file().unwrap().id.hex(), sha256sum(b"fresh\n"));
}

#[tokio::test]
async fn missing_image_is_not_exist_naming_the_image() {
    let dir = tempfile::tempdir().unwrap();
    let ex = executor(dir.path()).await;
    let mut cfg = exec("true", vec![]);
    cfg.image = "127.0.0.1:9/reflow-agent-test/absent:1".into();
    let e = ex.put(new_id("noimage"), cfg).await.unwrap();
    let err = e.wait().await.unwrap_err();
    assert_eq!(err.kind, Kind::NotExist, "{err}");
    assert!(
        err.to_string()
            .contains("127.0.0.1:9/reflow-agent-test/absent:1"),
        "{err}"
    );
}

#[tokio::test]
async fn remove_is_idempotent_and_kills_running_execs() {
    let dir = tempfile::tempdir().unwrap();
    let ex = executor(dir.path()).await;
    let done = new_id("rm-done");
    ex.put(done, exec("echo x > $out", vec![]))
        .await
        .unwrap()
        .wait()
        .await
        .unwrap();
    ex.remove(&done).await.unwrap();
    assert!(ex.get(&done).is_err());
    assert!(!dir.path().join("execs").join(done.hex()).exists());
    ex.remove(&done).await.unwrap();

    let running = new_id("rm-running");
    let e = ex.put(running, exec("sleep 300", vec![])).await.unwrap();
    e.wait_until(ExecState::Running).await.unwrap();
    let name = e.container_name().to_string();
    assert!(container_exists(&name));
    ex.remove(&running).await.unwrap();
    assert!(!container_exists(&name));
    assert!(ex.get(&running).is_err());
}

#[tokio::test]
async fn kill_of_the_executor() {
    let dir = tempfile::tempdir().unwrap();
    let ex = executor(dir.path()).await;
    let id = new_id("kill");
    let e = ex.put(id, exec("sleep 300", vec![])).await.unwrap();
    e.wait_until(ExecState::Running).await.unwrap();
    ex.repository().put_bytes(b"some object").unwrap();
    ex.kill().await.unwrap();
    let label = format!("label={LABEL_EXECUTOR}={}", ex.uri());
    assert!(
        docker(&["ps", "-a", "-q", "--filter", &label])
            .trim()
            .is_empty(),
        "containers remain"
    );
    assert!(
        dir.path()
            .join("execs")
            .join(id.hex())
            .join(MANIFEST_FILE)
            .exists(),
        "exec dirs are kept"
    );
    assert!(ex.repository().walk().unwrap().is_empty());
    let err = ex
        .put(new_id("after"), exec("true", vec![]))
        .await
        .unwrap_err();
    assert_eq!(err.kind(), Kind::NotExist);
    assert!(ex.kill().await.is_err());
}

#[tokio::test]
async fn container_that_finishes_while_no_agent_runs_is_collected() {
    let dir = tempfile::tempdir().unwrap();
    let id = new_id("offline");
    {
        let ex = executor(dir.path()).await;
        let e = ex
            .put(id, exec("sleep 1; echo done > $out", vec![]))
            .await
            .unwrap();
        e.wait_until(ExecState::Running).await.unwrap();
        ex.shutdown().await; // the agent stops; the container keeps running
    }
    assert_eq!(manifest_state(dir.path(), &id), Some(ExecState::Running));
    tokio::time::sleep(Duration::from_secs(2)).await; // it exits while no agent runs
    let ex = executor(dir.path()).await;
    let e = ex.get(&id).unwrap();
    e.wait().await.unwrap();
    let r = e.result().unwrap();
    assert!(r.err.is_none(), "{:?}", r.err);
    assert_eq!(r.fileset.file().unwrap().id.hex(), sha256sum(b"done\n"));
    assert_eq!(manifest_state(dir.path(), &id), Some(ExecState::Complete));
}

#[tokio::test]
async fn torn_manifest_is_quarantined_and_its_container_left_running() {
    let dir = tempfile::tempdir().unwrap();
    let id = new_id("torn");
    let name;
    {
        let ex = executor(dir.path()).await;
        let e = ex.put(id, exec("sleep 300", vec![])).await.unwrap();
        e.wait_until(ExecState::Running).await.unwrap();
        name = e.container_name().to_string();
        ex.shutdown().await;
    }
    let exec_dir = dir.path().join("execs").join(id.hex());
    fs::write(
        exec_dir.join(MANIFEST_FILE),
        b"{\"Version\":1,\"State\":3,\"Con",
    )
    .unwrap();
    let ex = executor(dir.path()).await; // must not fail
    assert!(ex.get(&id).is_err(), "a corrupt exec is not registered");
    assert!(!exec_dir.join(MANIFEST_FILE).exists());
    let quarantined = fs::read_dir(&exec_dir)
        .unwrap()
        .filter_map(|e| e.ok())
        .any(|e| {
            e.file_name()
                .to_string_lossy()
                .starts_with("manifest.json.corrupt-")
        });
    assert!(quarantined);
    assert_eq!(
        docker(&["inspect", "-f", "{{.State.Running}}", &name]).trim(),
        "true",
        "the container keeps running"
    );
    // A re-put (a redelivered command) takes the running container for its own: it is not
    // replaced, and never started a second time.
    let before = docker(&["inspect", "-f", "{{.Id}}", &name]);
    let again = ex.put(id, exec("sleep 300", vec![])).await.unwrap();
    again.wait_until(ExecState::Running).await.unwrap();
    assert_eq!(again.container_name(), name);
    assert_eq!(
        docker(&["inspect", "-f", "{{.Id}}", &name]),
        before,
        "the same container"
    );
    ex.kill().await.unwrap();
    docker(&["rm", "-f", &name]);
}

/// A separate process hosts the executor and is SIGKILLed mid-exec; a new executor on the same
/// directory re-attaches and completes, and Docker saw exactly one container for the exec.
#[tokio::test]
async fn crash_mid_exec_reattaches_with_exactly_one_container() {
    let dir = tempfile::tempdir().unwrap();
    let cfg_path = dir.path().join("config.json");
    fs::write(
        &cfg_path,
        serde_json::to_vec(&exec("sleep 3; echo survived > $out", vec![])).unwrap(),
    )
    .unwrap();
    let id = new_id("crash");
    let exec_cfg = config(dir.path());
    let since = SystemClock.now().timestamp() - 1;
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_reflow-agent"))
        .args(["--log-format", "json", "exec", "--dir"])
        .arg(dir.path())
        .args(["--executor-id", &exec_cfg.id, "--id", &id.hex(), "--config"])
        .arg(&cfg_path)
        .stdout(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    while manifest_state(dir.path(), &id) != Some(ExecState::Running) {
        assert!(Instant::now() < deadline, "exec never reached Running");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    child.kill().unwrap(); // SIGKILL
    child.wait().unwrap();

    let ex = executor(dir.path()).await;
    let e = ex.get(&id).unwrap();
    e.wait().await.unwrap();
    let r = e.result().unwrap();
    assert!(r.err.is_none(), "{:?}", r.err);
    assert_eq!(r.fileset.file().unwrap().id.hex(), sha256sum(b"survived\n"));

    let until = SystemClock.now().timestamp() + 1;
    let created = docker(&[
        "events",
        "--since",
        &since.to_string(),
        "--until",
        &until.to_string(),
        "--filter",
        "event=create",
        "--filter",
        &format!("label=reflow-id={}", id.hex()),
        "--format",
        "{{.Actor.Attributes.name}}",
    ]);
    assert_eq!(
        created.lines().count(),
        1,
        "containers created for the exec: {created:?}"
    );
}

/// A removal that the engine is already carrying out for another caller (as one an agent sent
/// just before it was killed, which dockerd finishes anyway) makes `remove` wait: when it
/// returns, the container is gone and its name free for the next create. (Returning at the
/// engine's "already in progress" left the name taken: a create then conflicted, and the
/// start after it found no such container.)
#[tokio::test]
async fn a_remove_during_another_removal_returns_once_the_container_is_gone() {
    use reflow_agent::docker::ContainerRuntime;
    let rt = runtime();
    let name = format!("reflow-it{}-removing", &new_id("removing").hex()[..10]);
    // Many files in its writable layer: the engine takes a while to delete them.
    let made = std::process::Command::new("docker")
        .args(["run", "--network", "none", "--name", &name, &image()])
        .args(["sh", "-c", "mkdir /d && cd /d && seq 1 60000 | xargs touch"])
        .output()
        .unwrap();
    assert!(made.status.success(), "{made:?}");
    let mut other = std::process::Command::new("docker")
        .args(["rm", "-f", &name])
        .stdout(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        match rt.inspect(&name).await.unwrap() {
            Some(info) if info.is_removing() => break,
            Some(_) => {}
            None => panic!("the other removal ended before it could be seen in progress"),
        }
        assert!(Instant::now() < deadline, "the other removal never began");
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    rt.remove(&name, true).await.unwrap();
    assert!(
        rt.inspect(&name).await.unwrap().is_none(),
        "the container is gone when remove returns"
    );
    assert!(other.wait().unwrap().success());
}

/// Puts an exec of `cmd` (no arguments) under a fresh id labelled `label`.
async fn put(
    ex: &reflow_agent::executor::Executor,
    label: &str,
    cmd: &str,
) -> std::sync::Arc<reflow_agent::executor::Exec> {
    ex.put(new_id(label), exec(cmd, vec![])).await.unwrap()
}

/// Waits for `e` to complete; its result, which must be a success.
async fn succeeded(e: &reflow_agent::executor::Exec) -> reflow_agent::model::ExecResult {
    e.wait().await.unwrap();
    let r = e.result().unwrap();
    assert!(r.err.is_none(), "{:?}", r.err);
    r
}

/// Waits until `path` holds `want`, for up to 20 s.
async fn until_file_is(path: &std::path::Path, want: &[u8]) {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let got = fs::read(path).unwrap_or_default();
        if got == want {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{} holds {:?}, not {:?}",
            path.display(),
            String::from_utf8_lossy(&got),
            String::from_utf8_lossy(want)
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// A container started by the executor is watched from before its start: what it writes is in
/// the exec's `stdout` and `stderr` while it runs, and its clean exit, announced by the
/// engine, is in the manifest's Docker JSON as an inspect after the exit would show it.
#[tokio::test]
async fn a_watched_exec_writes_its_output_as_it_runs_and_records_its_exit() {
    let dir = tempfile::tempdir().unwrap();
    let ex = executor(dir.path()).await;
    let e = put(
        &ex,
        "watched",
        "echo hello; echo oops >&2; until [ -e /tmp/go ]; do sleep 0.05; done; echo foobar > $out",
    )
    .await;
    e.wait_until(ExecState::Running).await.unwrap();
    // The exec waits for the file below: its output so far is on disk while it runs, and
    // its logs say so.
    until_file_is(&e.dir().join("stdout"), b"hello\n").await;
    until_file_is(&e.dir().join("stderr"), b"oops\n").await;
    assert_eq!(e.status().state, ExecState::Running);
    assert_eq!(e.logs(true, false).unwrap(), b"hello\n");
    assert_eq!(e.logs(true, true).unwrap(), b"hello\noops\n");
    fs::write(e.dir().join("tmp").join("go"), b"").unwrap();
    let r = succeeded(&e).await;
    assert_eq!(r.fileset.file().unwrap().id.hex(), sha256sum(b"foobar\n"));
    assert_eq!(e.logs(true, true).unwrap(), b"hello\noops\n");
    let m = e.manifest();
    let state = &m.docker["State"];
    assert_eq!(state["Status"], "exited", "{state}");
    assert_eq!(state["Running"], false);
    assert_eq!(state["ExitCode"], 0);
    assert_eq!(state["OOMKilled"], false);
    let time = |k: &str| {
        reflow_agent::time::parse(state[k].as_str().unwrap_or_default())
            .unwrap_or_else(|e| panic!("{k} of {state}: {e}"))
    };
    assert!(time("StartedAt").timestamp() > 0, "{state}");
    assert!(time("FinishedAt") > time("StartedAt"), "{state}");
    assert_eq!(m.docker["Config"]["Image"], image());
    assert_eq!(
        m.docker["Name"].as_str().unwrap().trim_start_matches('/'),
        e.container_name()
    );
}

/// A watched exec's output is whole however much it writes, on both streams at once.
#[tokio::test]
async fn a_watched_execs_heavy_output_is_whole() {
    let dir = tempfile::tempdir().unwrap();
    let ex = executor(dir.path()).await;
    const OUT: usize = 8 << 20;
    const ERR: usize = 1 << 20;
    let cmd = format!(
        "({{ yes e || true; }} | head -c {ERR} >&2) & {{ yes 0123456789abcdef || true; }} | head -c {OUT}; wait; echo ok > $out"
    );
    let e = put(&ex, "heavy", &cmd).await;
    succeeded(&e).await;
    let expect = |line: &[u8], n: usize| line.iter().copied().cycle().take(n).collect::<Vec<u8>>();
    let out = e.logs(true, false).unwrap();
    assert_eq!(out.len(), OUT);
    assert!(out == expect(b"0123456789abcdef\n", OUT), "stdout differs");
    let err = e.logs(false, true).unwrap();
    assert_eq!(err, expect(b"e\n", ERR));
}

/// An exec that closes its output and runs on is waited for until it exits (the watch gives
/// it a few seconds, then the engine's wait takes over), and what it wrote before is kept.
#[tokio::test]
async fn an_exec_that_closes_its_output_is_waited_for() {
    let dir = tempfile::tempdir().unwrap();
    let ex = executor(dir.path()).await;
    let e = put(
        &ex,
        "closes",
        "echo before; exec >&- 2>&-; sleep 7; echo done > $out",
    )
    .await;
    let r = succeeded(&e).await;
    assert_eq!(r.fileset.file().unwrap().id.hex(), sha256sum(b"done\n"));
    assert_eq!(e.logs(true, true).unwrap(), b"before\n");
    assert_eq!(e.manifest().docker["State"]["ExitCode"], 0);
}
