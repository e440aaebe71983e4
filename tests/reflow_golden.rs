//! Reflow compatibility against values written by Reflow's own Go encoders.
//!
//! `tests/golden/reflow-json/` holds JSON that grailbio/reflow's types marshalled with Go's
//! `encoding/json` (see its README). Every file must decode with the agent's types, and the
//! agent's encoding of the decoded value must equal the original once times are normalised to UTC
//! and `null` lists and maps are read as empty: what Reflow writes, the agent reads, and what the
//! agent writes for the same value, Reflow reads back unchanged.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use reflow_agent::digest::Digest;
use reflow_agent::error::{Kind, ReflowError};
use reflow_agent::fileset::Fileset;
use reflow_agent::manifest::{ExecState, Manifest};
use reflow_agent::model::{ExecConfig, ExecInspect, ExecResult, InspectResponse, RunInfo};
use reflow_agent::pool::{AllocInspect, AllocMeta};
use reflow_agent::resources::Resources;
use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::Value;

fn golden_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/golden/reflow-json")
}

fn read(name: &str) -> String {
    std::fs::read_to_string(golden_dir().join(name)).unwrap_or_else(|e| panic!("{name}: {e}"))
}

/// Go's JSON as compared here: times in UTC in Go's RFC3339Nano form, every number as f64 (Go
/// writes integral floats without a fraction), and `null`, `[]` and `{}` alike.
fn normalise(v: Value) -> Value {
    match v {
        Value::String(s) => match reflow_agent::time::parse(&s) {
            Ok(t) if s.contains('T') => Value::String(reflow_agent::time::format(&t)),
            _ => Value::String(s),
        },
        Value::Number(n) => serde_json::json!(n.as_f64().expect("a finite number")),
        Value::Array(a) if a.is_empty() => Value::Null,
        Value::Object(o) if o.is_empty() => Value::Null,
        Value::Array(a) => Value::Array(a.into_iter().map(normalise).collect()),
        Value::Object(o) => Value::Object(o.into_iter().map(|(k, v)| (k, normalise(v))).collect()),
        other => other,
    }
}

/// Decodes `name` as `T`, re-encodes it, and checks the two agree; returns the decoded value.
fn round_trip<T: DeserializeOwned + Serialize>(name: &str) -> T {
    let text = read(name);
    let value: T = serde_json::from_str(&text).unwrap_or_else(|e| {
        panic!(
            "{name} does not decode as {}: {e}",
            std::any::type_name::<T>()
        )
    });
    let original = normalise(serde_json::from_str(&text).unwrap());
    let ours = serde_json::to_value(&value).unwrap();
    let again = normalise(ours.clone());
    assert_eq!(
        again,
        original,
        "{name}: the agent's encoding differs from Reflow's\n ours: {}\n go:   {text}",
        serde_json::to_string(&ours).unwrap()
    );
    value
}

#[test]
fn every_golden_value_decodes_and_re_encodes_as_reflow_wrote_it() {
    let mut seen = Vec::new();
    for entry in std::fs::read_dir(golden_dir()).unwrap() {
        let name = entry.unwrap().file_name().into_string().unwrap();
        let Some(stem) = name.strip_suffix(".json") else {
            continue;
        };
        match stem {
            s if s.starts_with("alloc_inspect") => drop(round_trip::<AllocInspect>(&name)),
            s if s.starts_with("digest_") => drop(round_trip::<Digest>(&name)),
            s if s.starts_with("error_") => drop(round_trip::<ReflowError>(&name)),
            s if s.starts_with("exec_inspect") => drop(round_trip::<ExecInspect>(&name)),
            s if s.starts_with("execconfig_") => drop(round_trip::<ExecConfig>(&name)),
            s if s.starts_with("fileset_") => drop(round_trip::<Fileset>(&name)),
            s if s.starts_with("inspect_response") => drop(round_trip::<InspectResponse>(&name)),
            s if s.starts_with("manifest_") => drop(round_trip::<Manifest>(&name)),
            s if s.starts_with("meta_json") => drop(round_trip::<AllocMeta>(&name)),
            s if s.starts_with("result_") => drop(round_trip::<ExecResult>(&name)),
            s if s.starts_with("run_info") => drop(round_trip::<RunInfo>(&name)),
            s if s.starts_with("state_json") => {
                drop(round_trip::<BTreeMap<String, Resources>>(&name))
            }
            other => panic!("golden file {other}.json has no type in this test"),
        }
        seen.push(name);
    }
    assert_eq!(seen.len(), 26, "every golden value is checked: {seen:?}");
}

#[test]
fn the_golden_copy_matches_the_shared_reference_when_it_is_there() {
    // CI and developers have ../shared beside the checkout; a plain clone does not.
    let shared = Path::new(env!("CARGO_MANIFEST_DIR")).join("../shared/reference/reflow-json");
    let Ok(entries) = std::fs::read_dir(&shared) else {
        return;
    };
    for entry in entries {
        let path = entry.unwrap().path();
        let name = path.file_name().unwrap().to_str().unwrap().to_string();
        assert_eq!(
            std::fs::read(&path).unwrap(),
            std::fs::read(golden_dir().join(&name)).unwrap_or_default(),
            "tests/golden/reflow-json/{name} differs from the shared reference"
        );
    }
}

#[test]
fn reflow_errors_decode_with_their_kinds_causes_and_texts() {
    let e: ReflowError = round_trip("error_nested.json");
    assert_eq!(e.kind, Kind::NotExist);
    assert_eq!(e.op, "load");
    assert!(e.arg.is_empty());
    let cause = e.cause.as_deref().unwrap();
    assert_eq!(cause.op, "stat");
    assert_eq!(cause.kind, Kind::Other);
    assert_eq!(cause.message.as_deref(), Some("no such object"));
    // Go's Error(): kind text once, nested errors after ":\n\t", a plain cause after ": ".
    assert_eq!(
        e.to_string(),
        "load: resource does not exist:\n\tstat sha256:f42b7a9069c383bbfa5b0a4b3c29d4ebbc393a6d037f7e5be00a358d4f16e417: no such object"
    );
    assert!(e.is(Kind::NotExist));

    let oom: ExecResult = round_trip("result_oom.json");
    let err = oom.err.unwrap();
    assert_eq!(err.kind, Kind::Oom);
    assert_eq!(
        err.message.as_deref(),
        Some("killed by OOM killer (docker)")
    );
    assert_eq!(
        err.to_string(),
        "exec sha256:f42b7a9069c383bbfa5b0a4b3c29d4ebbc393a6d037f7e5be00a358d4f16e417: OOM error: killed by OOM killer (docker)"
    );

    let plain: ReflowError = round_trip("error_plain_recovered.json");
    assert_eq!(plain.kind, Kind::Other);
    assert_eq!(plain.to_string(), "boom");

    let bare: ReflowError = round_trip("error_no_cause.json");
    assert_eq!(bare.kind, Kind::Integrity);
    assert!(bare.cause.is_none() && bare.message.is_none());
}

#[test]
fn agent_errors_are_written_in_reflows_node_shape() {
    let e = ReflowError::new(Kind::DockerExec, "exec", "exited with code 1")
        .with_arg("sha256:f42b7a9069c383bbfa5b0a4b3c29d4ebbc393a6d037f7e5be00a358d4f16e417");
    let ours = serde_json::to_string(&ExecResult {
        fileset: Fileset::default(),
        err: Some(e),
    })
    .unwrap();
    // Byte for byte what Reflow wrote for the same result (Go escapes nothing here).
    assert_eq!(ours, read("result_dockerexec.json").trim_end());
    let no_arg = serde_json::to_value(ReflowError::new(Kind::Temporary, "", "x")).unwrap();
    assert_eq!(
        no_arg,
        serde_json::json!({"Op": "", "Arg": null, "Kind": "Temporary",
            "Cause": {"Op": "", "Arg": null, "Kind": "", "Error": "x"}, "Error": ""})
    );
}

#[test]
fn failed_and_running_manifests_keep_their_state_and_error() {
    let failed: Manifest = round_trip("manifest_docker_failed.json");
    assert_eq!(failed.state, ExecState::Complete);
    assert_eq!(failed.result.err.as_ref().unwrap().kind, Kind::DockerExec);
    assert_eq!(failed.version, 0);
    let blob: Manifest = round_trip("manifest_blob_failed.json");
    let err = blob.result.err.unwrap();
    assert_eq!(err.kind, Kind::NotExist);
    assert_eq!(
        err.to_string(),
        "intern s3://b/k: resource does not exist:\n\ts3.get: NoSuchKey"
    );
    let running: Manifest = round_trip("manifest_running.json");
    assert_eq!(running.state, ExecState::Running);
}

#[test]
fn run_info_urls_are_gos_url_struct_both_ways() {
    let ri: RunInfo = round_trip("run_info.json");
    assert_eq!(ri.inspect_digest.repo_url, "s3://bucket/prefix");
    assert_eq!(ri.stdout.repo_url, "");
    let resp: InspectResponse = round_trip("inspect_response_runinfo.json");
    assert_eq!(resp.run_info.unwrap(), ri);
    // The agent's older string form still reads.
    let legacy: RunInfo = serde_json::from_str(
        r#"{"Runtime":1,"InspectDigest":{"RepoURL":"file:///var/repo","Digest":"<zero>"}}"#,
    )
    .unwrap();
    assert_eq!(legacy.inspect_digest.repo_url, "file:///var/repo");
    let j = serde_json::to_value(&legacy).unwrap();
    assert_eq!(j["InspectDigest"]["RepoURL"]["Scheme"], "file");
    assert_eq!(j["InspectDigest"]["RepoURL"]["Host"], "");
    assert_eq!(j["InspectDigest"]["RepoURL"]["Path"], "/var/repo");
}

#[test]
fn golden_filesets_have_reflows_digests() {
    // Computed independently (Python's hashlib) from Reflow's digest rules: a list fileset is its
    // elements' material only; a map entry is the path, 0x0005 and the file digest's 32 bytes; a
    // reference without content hash is SHA-256 of size (8 bytes LE), source and ETag.
    let list: Fileset = round_trip("fileset_list.json");
    assert_eq!(
        list.digest().to_string(),
        "sha256:9d14306462208faf22f594b3187fdd242ed80615680ae9ffac3a9f8ac7e21e90"
    );
    let refs: Fileset = round_trip("fileset_times.json");
    assert_eq!(
        refs.digest().to_string(),
        "sha256:cb7bf8e14a27adbe09e98fb388b413469aac42e181ceb19e69505027321b80d2"
    );
    let x: Digest = round_trip("digest_x.json");
    assert_eq!(x, Digest::of(b"x"));
    let zero: Digest = round_trip("digest_zero.json");
    assert!(zero.is_zero());
}

#[test]
fn meta_with_null_want_and_labels_reads_as_empty() {
    let m: AllocMeta = round_trip("meta_json_zero.json");
    assert!(m.want.0.is_empty());
    assert!(m.labels.is_empty());
}
