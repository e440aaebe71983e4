//! The S3 blob store against moto's S3 (path-style, endpoint override): intern and extern
//! execs on a real executor, integrity checks, a 64 MiB multipart round trip checked with
//! `sha256sum`, a missing key, and a job whose inputs and outputs live in S3.
#![cfg(feature = "integration")]

use crate::common;

use std::sync::Arc;

use base64::Engine as _;
use std::time::Duration;

use common::*;
use reflow_agent::blob::s3::S3Store;
use reflow_agent::blob::{BlobStore, BlobUrl, Progress};
use reflow_agent::clock::SystemClock;
use reflow_agent::digest::Digest;
use reflow_agent::error::Kind;
use reflow_agent::executor::{Executor, ExecutorPorts};
use reflow_agent::fileset::{File, Fileset};
use reflow_agent::model::{Arg, ExecConfig};

async fn store() -> Arc<S3Store> {
    Arc::new(S3Store::new(&aws_sdk().await))
}

async fn bucket(s: &S3Store) -> String {
    let b = format!("it-{}", &new_id("bucket").hex()[..16]);
    s.client().create_bucket().bucket(&b).send().await.unwrap();
    b
}

async fn put(s: &S3Store, bucket: &str, key: &str, body: &[u8], sha: Option<&str>) {
    let mut req = s
        .client()
        .put_object()
        .bucket(bucket)
        .key(key)
        .body(body.to_vec().into());
    if let Some(h) = sha {
        req = req.metadata("content-sha256", h);
    }
    req.send().await.unwrap();
}

async fn get(s: &S3Store, bucket: &str, key: &str) -> (Vec<u8>, Option<String>) {
    let out = s
        .client()
        .get_object()
        .bucket(bucket)
        .key(key)
        .send()
        .await
        .unwrap();
    let meta = out
        .metadata
        .as_ref()
        .and_then(|m| m.get("content-sha256").cloned());
    (out.body.collect().await.unwrap().to_vec(), meta)
}

async fn blob_executor(dir: &std::path::Path, s: Arc<S3Store>) -> Executor {
    let mut ports = ExecutorPorts::new(runtime(), Arc::new(SystemClock));
    ports.blob = Some(s);
    Executor::start_with(config(dir), ports).await.unwrap()
}

fn transfer(kind: &str, url: &str, args: Vec<Arg>) -> ExecConfig {
    ExecConfig {
        kind: kind.into(),
        url: url.into(),
        args,
        ..ExecConfig::default()
    }
}

#[tokio::test]
async fn intern_one_key_and_a_prefix_without_siblings() {
    let s = store().await;
    let b = bucket(&s).await;
    put(&s, &b, "data/a.txt", b"alpha\n", None).await;
    put(&s, &b, "data/a.txt.bak", b"sibling of a key\n", None).await;
    put(&s, &b, "data/sub/c.txt", b"gamma\n", None).await;
    put(&s, &b, "data-other/x.txt", b"sibling of a prefix\n", None).await;
    let dir = tempfile::tempdir().unwrap();
    let ex = blob_executor(dir.path(), s.clone()).await;

    let one = new_id("intern-one");
    let e = ex
        .put(
            one,
            transfer("intern", &format!("s3://{b}/data/a.txt"), vec![]),
        )
        .await
        .unwrap();
    e.wait().await.unwrap();
    let r = e.result().unwrap();
    assert!(r.err.is_none(), "{:?}", r.err);
    assert_eq!(r.fileset.map.keys().collect::<Vec<_>>(), ["."]);
    let f = &r.fileset.map["."];
    assert_eq!(f.id.hex(), sha256sum(b"alpha\n"));
    assert_eq!(f.source, format!("s3://{b}/data/a.txt"));
    ex.promote(&one).await.unwrap();
    assert!(ex.repository().contains(&f.id));

    // Inspect shows the bytes moved, as Reflow's blob execs do.
    assert_eq!(ex.inspect(&one).await.unwrap().gauges["disk"], 6.0);

    let dir_id = new_id("intern-prefix");
    let e = ex
        .put(
            dir_id,
            transfer("intern", &format!("s3://{b}/data/"), vec![]),
        )
        .await
        .unwrap();
    e.wait().await.unwrap();
    let r = e.result().unwrap();
    assert!(r.err.is_none(), "{:?}", r.err);
    let paths: Vec<&String> = r.fileset.map.keys().collect();
    assert_eq!(
        paths,
        ["a.txt", "a.txt.bak", "sub/c.txt"],
        "data-other/ is not under data/"
    );
    assert_eq!(r.fileset.map["sub/c.txt"].id.hex(), sha256sum(b"gamma\n"));
    ex.shutdown().await;
}

#[tokio::test]
async fn extern_of_a_directory_writes_content_sha256() {
    let s = store().await;
    let b = bucket(&s).await;
    let dir = tempfile::tempdir().unwrap();
    let ex = blob_executor(dir.path(), s.clone()).await;
    let fa = ex.repository().put_bytes(b"first\n").unwrap();
    let fb = ex.repository().put_bytes(b"second\n").unwrap();
    let mut fs = Fileset::default();
    fs.map.insert("a.txt".into(), fa.clone());
    fs.map.insert("nested/b.txt".into(), fb.clone());
    let id = new_id("extern");
    let e = ex
        .put(
            id,
            transfer(
                "extern",
                &format!("s3://{b}/out/"),
                vec![Arg {
                    out: false,
                    fileset: Some(fs),
                    index: 0,
                }],
            ),
        )
        .await
        .unwrap();
    e.wait().await.unwrap();
    let r = e.result().unwrap();
    assert!(r.err.is_none(), "{:?}", r.err);
    let (body, meta) = get(&s, &b, "out/nested/b.txt").await;
    assert_eq!(body, b"second\n");
    assert_eq!(meta.as_deref(), Some(fb.id.hex().as_str()));
    let (body, meta) = get(&s, &b, "out/a.txt").await;
    assert_eq!(
        (body.as_slice(), meta),
        (&b"first\n"[..], Some(fa.id.hex()))
    );
    ex.shutdown().await;
}

#[tokio::test]
async fn a_lying_content_sha256_is_an_integrity_error_and_signal() {
    let s = store().await;
    let b = bucket(&s).await;
    put(
        &s,
        &b,
        "bad.txt",
        b"the real bytes",
        Some(&Digest::of(b"other bytes").hex()),
    )
    .await;
    let dir = tempfile::tempdir().unwrap();
    let ex = blob_executor(dir.path(), s.clone()).await;
    let mut signal = ex.integrity_signal();
    let e = ex
        .put(
            new_id("bad"),
            transfer("intern", &format!("s3://{b}/bad.txt"), vec![]),
        )
        .await
        .unwrap();
    e.wait().await.unwrap();
    let r = e.result().unwrap();
    let err = r.err.expect("an integrity error");
    assert_eq!(err.kind, Kind::Integrity);
    assert!(err.to_string().contains("(expected) != sha256:"), "{err}");
    assert!(r.fileset.map.is_empty(), "no partial result");
    tokio::time::timeout(Duration::from_secs(5), signal.wait_for(|s| s.count == 1))
        .await
        .unwrap()
        .unwrap();
    // A missing key is NotExist.
    let e = ex
        .put(
            new_id("missing"),
            transfer("intern", &format!("s3://{b}/nope.txt"), vec![]),
        )
        .await
        .unwrap();
    e.wait().await.unwrap();
    assert_eq!(e.result().unwrap().err.unwrap().kind, Kind::NotExist);
    assert_eq!(
        s.head(&b, "nope.txt").await.unwrap_err().to_string(),
        format!("head s3://{b}/nope.txt: does not exist")
    );
    ex.shutdown().await;
}

#[tokio::test]
async fn multipart_64_mib_round_trip_checked_with_sha256sum() {
    let s = store().await;
    let b = bucket(&s).await;
    let dir = tempfile::tempdir().unwrap();
    let src = dir.path().join("big");
    let data: Vec<u8> = (0..64u32 << 20)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 13).to_le_bytes()[0])
        .collect();
    std::fs::write(&src, &data).unwrap();
    let want = sha256sum(&data);
    let d = Digest::parse(&want).unwrap();
    let up = Progress::default();
    s.upload(&b, "big.bin", &src, &d, &up).await.unwrap();
    assert_eq!(up.load(std::sync::atomic::Ordering::Relaxed), 64 << 20);
    let info = s.head(&b, "big.bin").await.unwrap();
    assert_eq!((info.size, info.content_sha256), (64 << 20, Some(d)));
    assert!(info.etag.contains('-'), "a multipart ETag: {}", info.etag);
    // Every part carried its CRC32 (S3 verified each), and the object keeps their COMPOSITE.
    let part = usize::try_from(reflow_agent::blob::s3::PART).unwrap();
    let crcs: Vec<u8> = data
        .chunks(part)
        .flat_map(|c| crc32fast::hash(c).to_be_bytes())
        .collect();
    let composite =
        base64::engine::general_purpose::STANDARD.encode(crc32fast::hash(&crcs).to_be_bytes());
    let h = s
        .client()
        .head_object()
        .bucket(&b)
        .key("big.bin")
        .checksum_mode(aws_sdk_s3::types::ChecksumMode::Enabled)
        .send()
        .await
        .unwrap();
    // S3 appends the part count ("…-4"); moto does not.
    let reported = h.checksum_crc32.unwrap_or_default();
    assert_eq!(reported.split('-').next(), Some(composite.as_str()));
    assert_eq!(
        h.checksum_type,
        Some(aws_sdk_s3::types::ChecksumType::Composite)
    );
    let dst = dir.path().join("back");
    let reported = s
        .download(&b, &info, &dst, &Progress::default())
        .await
        .unwrap();
    assert_eq!(reported, Some(d), "the GET reports Content-Sha256");
    let out = std::process::Command::new("sha256sum")
        .arg(&dst)
        .output()
        .unwrap();
    assert!(String::from_utf8_lossy(&out.stdout).starts_with(&want));
}

#[test]
fn a_job_reads_and_writes_s3() {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let s = rt.block_on(store());
    let b = rt.block_on(bucket(&s));
    let repo = BlobUrl::parse(&format!("s3://{b}/repo")).unwrap();
    let input = b"reads from s3\n";
    let d = Digest::of(input);
    let dir = tempfile::tempdir().unwrap();
    let src = dir.path().join("in");
    std::fs::write(&src, input).unwrap();
    rt.block_on(s.upload(&b, &repo.object_key(&d), &src, &d, &Progress::default()))
        .unwrap();
    let spool = dir.path().join("spool");
    let cfg = dir.path().join("agent.toml");
    std::fs::write(
        &cfg,
        format!(
            "[agent]\nstate_dir = \"{}\"\n[queue]\nurl = \"spool://{}\"\n[admin]\nlisten = \"127.0.0.1:0\"\n[security]\nrepositories = [\"s3://{b}/repo\"]\n",
            dir.path().join("state").display(),
            spool.display()
        ),
    )
    .unwrap();
    let mut agent = std::process::Command::new(env!("CARGO_BIN_EXE_reflow-agent"))
        .args(["serve", "--config"])
        .arg(&cfg)
        .env("AWS_ACCESS_KEY_ID", "testing")
        .env("AWS_SECRET_ACCESS_KEY", "testing")
        .env("AWS_REGION", "us-east-1")
        .env("AWS_ENDPOINT_URL", aws_endpoint())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let id = format!("s3-job-{}", &new_id("job").hex()[..8]);
    let file = File::resolved(d, input.len() as u64);
    let job = serde_json::json!({"v": 1, "id": id, "kind": "job", "body": {
        "config": {"Type": "exec", "Image": image(), "Cmd": "tr a-z A-Z < %s > $out",
                   "Args": [{"Out": false, "Index": 0, "Fileset": {"Fileset": {".": file}}}],
                   "Resources": {"mem": 67108864, "cpu": 1}},
        "inputs_from": format!("s3://{b}/repo"), "outputs_to": format!("s3://{b}/repo")}});
    let job_file = dir.path().join("job.json");
    std::fs::write(&job_file, serde_json::to_vec(&job).unwrap()).unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_reflow-agent"))
        .args(["submit", "--wait", "--timeout-secs", "90", "--queue"])
        .arg(format!("spool://{}", spool.display()))
        .arg(&job_file)
        .output()
        .unwrap();
    // An input whose S3 object does not hold its digest's bytes: Integrity, and an event.
    let lie = Digest::of(b"what the producer claims");
    let corrupt = dir.path().join("corrupt");
    std::fs::write(&corrupt, b"what the bucket holds").unwrap();
    rt.block_on(s.upload(
        &b,
        &repo.object_key(&lie),
        &corrupt,
        &lie,
        &Progress::default(),
    ))
    .unwrap();
    let bad_id = format!("{id}-bad");
    let mut bad = job.clone();
    bad["id"] = bad_id.clone().into();
    bad["body"]["config"]["Args"][0]["Fileset"]["Fileset"]["."] =
        serde_json::to_value(File::resolved(lie, 24)).unwrap();
    let bad_file = dir.path().join("bad.json");
    std::fs::write(&bad_file, serde_json::to_vec(&bad).unwrap()).unwrap();
    let bad_out = std::process::Command::new(env!("CARGO_BIN_EXE_reflow-agent"))
        .args(["submit", "--wait", "--timeout-secs", "90", "--queue"])
        .arg(format!("spool://{}", spool.display()))
        .arg(&bad_file)
        .output()
        .unwrap();
    let _ = agent.kill();
    let _ = agent.wait();
    assert!(!bad_out.status.success());
    let bad_event: serde_json::Value = serde_json::from_slice(&bad_out.stdout).unwrap();
    assert_eq!(bad_event["body"]["result"]["Err"]["Kind"], "Integrity");
    let integrity = std::fs::read_dir(spool.join("events"))
        .unwrap()
        .flatten()
        .filter_map(|e| std::fs::read(e.path()).ok())
        .filter_map(|b| serde_json::from_slice::<serde_json::Value>(&b).ok())
        .any(|e| e["kind"] == "integrity.error" && e["command"] == bad_id.as_str());
    assert!(integrity, "an integrity.error event for {bad_id}");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let e: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let want = sha256sum(b"READS FROM S3\n");
    let got = e["body"]["result"]["Fileset"]["Fileset"]["."]["ID"]
        .as_str()
        .unwrap();
    assert_eq!(got, format!("sha256:{want}"));
    let loc = e["body"]["locations"]["."].as_str().unwrap();
    let key = repo.object_key(&Digest::parse(&want).unwrap());
    assert_eq!(loc, format!("s3://{b}/{key}"));
    let (body, meta) = rt.block_on(get(&s, &b, &key));
    assert_eq!(
        (body.as_slice(), meta),
        (&b"READS FROM S3\n"[..], Some(want))
    );
}

/// Runs `reflow-agent s3 cp SRC DST` against the emulator.
fn s3_cp(src: &str, dst: &str) -> std::process::Output {
    std::process::Command::new(env!("CARGO_BIN_EXE_reflow-agent"))
        .args(["s3", "cp", src, dst])
        .env("AWS_ACCESS_KEY_ID", "testing")
        .env("AWS_SECRET_ACCESS_KEY", "testing")
        .env("AWS_REGION", "us-east-1")
        .env("AWS_ENDPOINT_URL", aws_endpoint())
        .output()
        .unwrap()
}

#[tokio::test]
async fn s3_cp_round_trips_a_tree_and_names_its_errors() {
    let s = store().await;
    let b = bucket(&s).await;
    let dir = tempfile::tempdir().unwrap();
    let src = dir.path().join("src");
    std::fs::create_dir_all(src.join("sub/deeper")).unwrap();
    std::fs::write(src.join("a.txt"), b"alpha\n").unwrap();
    std::fs::write(src.join("sub/deeper/b.bin"), vec![7u8; 20 << 20]).unwrap();
    let up = s3_cp(src.to_str().unwrap(), &format!("s3://{b}/tree/"));
    assert!(
        up.status.success(),
        "{}",
        String::from_utf8_lossy(&up.stderr)
    );
    // Each object carries its SHA-256.
    let (_, meta) = get(&s, &b, "tree/a.txt").await;
    assert_eq!(meta.as_deref(), Some(sha256sum(b"alpha\n").as_str()));
    let back = dir.path().join("back");
    let down = s3_cp(&format!("s3://{b}/tree/"), back.to_str().unwrap());
    assert!(
        down.status.success(),
        "{}",
        String::from_utf8_lossy(&down.stderr)
    );
    assert_eq!(std::fs::read(back.join("a.txt")).unwrap(), b"alpha\n");
    assert_eq!(
        std::fs::read(back.join("sub/deeper/b.bin")).unwrap(),
        vec![7u8; 20 << 20]
    );
    let names: Vec<_> = std::fs::read_dir(&back)
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(names.len(), 2, "no temporary files left: {names:?}");

    // An object whose Content-Sha256 lies: a non-zero exit naming the object once, and no file.
    put(
        &s,
        &b,
        "lie.txt",
        b"actual bytes",
        Some(&sha256sum(b"claimed")),
    )
    .await;
    let target = dir.path().join("lie.txt");
    let bad = s3_cp(&format!("s3://{b}/lie.txt"), target.to_str().unwrap());
    let err = String::from_utf8_lossy(&bad.stderr);
    assert!(!bad.status.success());
    assert!(err.contains("integrity error: digest sha256:"), "{err}");
    assert_eq!(
        err.matches(&format!("s3://{b}/lie.txt")).count(),
        1,
        "{err}"
    );
    assert!(!target.exists(), "a corrupt download is not left behind");
    assert_eq!(
        std::fs::read_dir(dir.path()).unwrap().count(),
        2,
        "src and back only"
    );

    // A missing key, and a URL that is not one.
    let missing = s3_cp(&format!("s3://{b}/nope"), target.to_str().unwrap());
    let err = String::from_utf8_lossy(&missing.stderr);
    assert!(
        err.contains(&format!("s3://{b}/nope: does not exist")),
        "{err}"
    );
    let typo = s3_cp(src.join("a.txt").to_str().unwrap(), &format!("s3:/{b}/x"));
    let err = String::from_utf8_lossy(&typo.stderr);
    assert!(!typo.status.success());
    assert!(
        err.contains(&format!("unsupported blob URL \"s3:/{b}/x\"")),
        "{err}"
    );
}
