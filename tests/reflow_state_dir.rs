//! A state directory written by Reflow: `reflow-agent inspect` lists and shows its failed execs
//! with their errors, and a pool restored from it (on the fake runtime) keeps every manifest,
//! quarantining none. The manifests are the golden values Reflow's own encoders wrote.
#![cfg(feature = "test-util")]

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;

use reflow_agent::clock::SystemClock;
use reflow_agent::digest::Digest;
use reflow_agent::docker::ContainerSpec;
use reflow_agent::docker::fake::{FakeExit, FakeRuntime};
use reflow_agent::error::Kind;
use reflow_agent::executor::ExecutorConfig;
use reflow_agent::manifest::ExecState;
use reflow_agent::pool::{Pool, PoolConfig};
use reflow_agent::taskdb::MemoryTaskDb;

const ALLOC: &str = "0123456789abcdef";
/// The exec id Reflow's failed docker manifest names in its error.
const FAILED: &str = "f42b7a9069c383bbfa5b0a4b3c29d4ebbc393a6d037f7e5be00a358d4f16e417";

fn golden(name: &str) -> Vec<u8> {
    std::fs::read(
        Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("tests/golden/reflow-json")
            .join(name),
    )
    .unwrap()
}

fn exec_id(name: &str) -> Digest {
    if name == "manifest_docker_failed.json" {
        Digest::parse(FAILED).unwrap()
    } else {
        Digest::of(name.as_bytes())
    }
}

/// Lays out what Reflow's local pool leaves on disk: `state.json`, `allocs/<id>/meta.json` and
/// one `execs/<hex>/manifest.json` per golden manifest.
fn reflow_state_dir(root: &Path) -> PathBuf {
    let alloc = root.join("allocs").join(ALLOC);
    std::fs::create_dir_all(&alloc).unwrap();
    std::fs::write(root.join("state.json"), golden("state_json.json")).unwrap();
    std::fs::write(alloc.join("meta.json"), golden("meta_json.json")).unwrap();
    for m in [
        "manifest_docker_ok.json",
        "manifest_docker_failed.json",
        "manifest_blob_failed.json",
        "manifest_running.json",
    ] {
        let dir = alloc.join("execs").join(exec_id(m).hex());
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("manifest.json"), golden(m)).unwrap();
    }
    alloc
}

fn inspect(args: &[&str]) -> String {
    let out = Command::new(env!("CARGO_BIN_EXE_reflow-agent"))
        .arg("inspect")
        .args(args)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "inspect {args:?} failed: {stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    stdout
}

#[test]
fn inspect_lists_and_shows_reflow_written_failed_execs() {
    let dir = tempfile::tempdir().unwrap();
    reflow_state_dir(dir.path());
    let root = dir.path().to_str().unwrap();

    let list = inspect(&["--dir", root]);
    assert!(
        list.contains(&format!("alloc {ALLOC} (live) owner=me@example.com")),
        "{list}"
    );
    assert_eq!(
        list.matches("\n  ").count(),
        4,
        "all four execs are listed:\n{list}"
    );
    let failed_short = Digest::parse(FAILED).unwrap().short();
    let failed_line = list
        .lines()
        .find(|l| l.contains(&failed_short))
        .unwrap_or_else(|| panic!("the failed exec is listed:\n{list}"));
    assert!(failed_line.contains("complete"), "{failed_line}");
    assert!(
        failed_line.contains("docker exec: exited with code 1"),
        "{failed_line}"
    );
    let blob_short = exec_id("manifest_blob_failed.json").short();
    let blob_line = list.lines().find(|l| l.contains(&blob_short)).unwrap();
    assert!(
        blob_line.contains("intern s3://b/k: resource does not exist: s3.get: NoSuchKey"),
        "{blob_line}"
    );

    let one = inspect(&["--dir", root, FAILED]);
    assert!(one.contains("state      complete"), "{one}");
    assert!(
        one.contains(&format!(
            "error      exec sha256:{FAILED}: docker exec: exited with code 1"
        )),
        "{one}"
    );
    let json: serde_json::Value =
        serde_json::from_str(&inspect(&["--dir", root, "--json", FAILED])).unwrap();
    // The manifest comes back in Reflow's own error shape.
    assert_eq!(json["Result"]["Err"]["Kind"], "DockerExec");
    assert_eq!(
        json["Result"]["Err"]["Cause"]["Error"],
        "exited with code 1"
    );
    assert_eq!(json["Result"]["Err"]["Error"], "");
}

#[tokio::test]
async fn a_pool_restored_from_reflows_state_keeps_every_manifest() {
    let dir = tempfile::tempdir().unwrap();
    let alloc_dir = reflow_state_dir(dir.path());
    let rt = FakeRuntime::new(
        &["ubuntu"],
        Arc::new(|_: &ContainerSpec| FakeExit::default()),
        Arc::new(SystemClock),
    );
    let pool = Pool::start(
        PoolConfig {
            id: "reflow-compat".into(),
            dir: dir.path().to_path_buf(),
            executor: ExecutorConfig::new("template", dir.path()),
            expected_usable_mem: 0.0,
        },
        rt,
        Arc::new(SystemClock),
        Arc::new(MemoryTaskDb::default()),
    )
    .await
    .unwrap();
    let alloc = pool.alloc(ALLOC).await.unwrap();
    assert_eq!(alloc.inspect().meta.owner, "me@example.com");
    let ex = alloc.executor();

    let failed = ex.get(&Digest::parse(FAILED).unwrap()).unwrap();
    assert_eq!(failed.status().state, ExecState::Complete);
    let err = failed.result().unwrap().err.unwrap();
    assert_eq!(err.kind, Kind::DockerExec);
    assert_eq!(err.message.as_deref(), Some("exited with code 1"));

    let blob = ex.get(&exec_id("manifest_blob_failed.json")).unwrap();
    assert_eq!(blob.result().unwrap().err.unwrap().kind, Kind::NotExist);

    let ok = ex.get(&exec_id("manifest_docker_ok.json")).unwrap();
    assert!(ok.result().unwrap().err.is_none());

    // Nothing was quarantined: every manifest is where Reflow left it.
    for entry in walk(&alloc_dir) {
        let name = entry.file_name().unwrap().to_string_lossy().into_owned();
        assert!(
            !name.contains(".corrupt-"),
            "quarantined: {}",
            entry.display()
        );
    }
    for m in [
        "manifest_docker_ok.json",
        "manifest_docker_failed.json",
        "manifest_blob_failed.json",
        "manifest_running.json",
    ] {
        let path = alloc_dir
            .join("execs")
            .join(exec_id(m).hex())
            .join("manifest.json");
        assert!(path.exists(), "{m} is still in place");
    }
    pool.shutdown().await;
}

fn walk(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).unwrap().flatten() {
        let p = e.path();
        if p.is_dir() {
            out.extend(walk(&p));
        } else {
            out.push(p);
        }
    }
    out
}
