//! Image pulls with registry authentication, against Debian's docker-registry on 127.0.0.1:5001
//! with htpasswd auth (scripts/dev-services.sh pushes the offline test image there), and ECR
//! tokens from the AWS emulator.
#![cfg(feature = "integration")]

use crate::common;

use std::sync::Arc;

use base64::Engine as _;
use common::*;
use reflow_agent::clock::{Clock, ManualClock, SystemClock};
use reflow_agent::docker::auth::{Authenticator, DockerConfigAuth, EcrAuth};
use reflow_agent::error::Kind;
use reflow_agent::executor::{Executor, ExecutorPorts};

fn docker_config(dir: &std::path::Path, password: &str) -> Arc<DockerConfigAuth> {
    let auth = base64::engine::general_purpose::STANDARD
        .encode(format!("{}:{password}", REGISTRY_CREDS.0));
    let p = dir.join("docker-config.json");
    std::fs::write(
        &p,
        format!(r#"{{"auths": {{"{REGISTRY}": {{"auth": "{auth}"}}}}}}"#),
    )
    .unwrap();
    Arc::new(DockerConfigAuth::load(&p).unwrap())
}

async fn executor_with(dir: &std::path::Path, password: &str) -> Executor {
    let mut ports = ExecutorPorts::new(runtime(), Arc::new(SystemClock));
    ports.auth = Some(docker_config(dir, password));
    Executor::start_with(config(&dir.join("alloc")), ports)
        .await
        .unwrap()
}

#[tokio::test]
async fn pull_with_the_right_password() {
    let dir = tempfile::tempdir().unwrap();
    let image = format!("{REGISTRY}/reflow-agent-test/busybox:1");
    docker(&["rmi", "-f", &image]);
    let ex = executor_with(dir.path(), REGISTRY_CREDS.1).await;
    let mut cfg = exec("echo pulled > $out", vec![]);
    cfg.image = image.clone();
    let e = ex.put(new_id("pull-ok"), cfg).await.unwrap();
    e.wait().await.unwrap();
    let r = e.result().unwrap();
    assert!(r.err.is_none(), "{:?}", r.err);
    assert_eq!(r.fileset.file().unwrap().id.hex(), sha256sum(b"pulled\n"));
    assert!(
        !docker(&["images", "-q", &image]).trim().is_empty(),
        "the image was pulled"
    );
}

#[tokio::test]
async fn pull_with_a_wrong_password_is_not_allowed() {
    let dir = tempfile::tempdir().unwrap();
    let ex = executor_with(dir.path(), "wrong-password").await;
    let mut cfg = exec("true", vec![]);
    cfg.image = format!("{REGISTRY}/reflow-agent-test/busybox:wrong-password");
    let e = ex.put(new_id("pull-denied"), cfg).await.unwrap();
    let err = e.wait().await.unwrap_err();
    assert_eq!(err.kind, Kind::NotAllowed, "{err}");
    assert!(
        !err.to_string().contains("wrong-password\""),
        "no secrets in errors: {err}"
    );
}

#[tokio::test]
async fn pull_of_a_missing_image_is_not_exist() {
    let dir = tempfile::tempdir().unwrap();
    let ex = executor_with(dir.path(), REGISTRY_CREDS.1).await;
    let mut cfg = exec("true", vec![]);
    cfg.image = format!("{REGISTRY}/reflow-agent-test/absent:1");
    let e = ex.put(new_id("pull-missing"), cfg).await.unwrap();
    let err = e.wait().await.unwrap_err();
    assert_eq!(err.kind, Kind::NotExist, "{err}");
    assert!(
        err.to_string().contains("reflow-agent-test/absent:1"),
        "{err}"
    );
}

#[tokio::test]
async fn ecr_tokens_from_the_sdk_are_cached_until_expiry() {
    let sdk = aws_sdk().await;
    let clock = ManualClock::new(SystemClock.now());
    let ecr = EcrAuth::new(&sdk, Arc::new(clock.clone()));
    let image = "123456789012.dkr.ecr.us-east-1.amazonaws.com/tools:1";
    let a = ecr
        .authenticate(image)
        .await
        .unwrap()
        .expect("ECR claims its own hosts");
    assert_eq!(a.username, "AWS");
    assert!(!a.password.is_empty());
    assert_eq!(a.server, "123456789012.dkr.ecr.us-east-1.amazonaws.com");
    assert_eq!(
        ecr.authenticate(image).await.unwrap().unwrap(),
        a,
        "served from the cache"
    );
    clock.advance(chrono::Duration::days(2));
    assert_eq!(
        ecr.authenticate(image).await.unwrap().unwrap().username,
        "AWS",
        "renewed after expiry"
    );
    assert!(
        ecr.authenticate("docker.io/library/ubuntu")
            .await
            .unwrap()
            .is_none()
    );
}
