//! The Python producer library (`clients/python`) against live agents on RabbitMQ, SQS (moto)
//! and a spool: its own pytest suite, run with this build's agent binary. scripts/test.sh
//! installs the package (`pip install ./clients/python[test]`) first, as a user would.
#![cfg(feature = "integration")]

use crate::common;

use std::process::Command;

use common::*;

#[test]
fn the_python_client_submits_waits_signs_and_replays_on_every_backend() {
    let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/clients/python");
    let importable = Command::new("python3")
        .args(["-c", "import reflow_client, pytest"])
        .status()
        .unwrap();
    assert!(
        importable.success(),
        "the client is not installed: python3 -m pip install './clients/python[test]' (scripts/test.sh does)"
    );
    let out = Command::new("python3")
        .args([
            "-m",
            "pytest",
            "-q",
            "-p",
            "no:cacheprovider",
            "-o",
            "faulthandler_timeout=120",
            "tests",
        ])
        .current_dir(dir)
        .env("REFLOW_AGENT_BIN", env!("CARGO_BIN_EXE_reflow-agent"))
        .env("AGENT_IT_AMQP_URL", amqp())
        .env("AGENT_IT_AWS_ENDPOINT", aws_endpoint())
        .env("AGENT_IT_IMAGE", image())
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "pytest failed:\n{text}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // Every test ran: none was skipped for a missing endpoint.
    assert!(!text.contains("skipped"), "{text}");
}
