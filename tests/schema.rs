//! The protocol as a schema: docs/protocol.schema.json (JSON Schema, draft 2020-12) accepts
//! every example in docs/protocol.md and every event kind the agent's own encoder writes, and
//! refuses what the decoder refuses. (The integration tests also check every event a live agent
//! publishes and every command they send: see `control_it`.)

use crate::common;

use common::{assert_protocol, protocol_schema};
use reflow_agent::protocol::{EVENT_KINDS, Event};

/// The ```json blocks of docs/protocol.md. A block that is a body alone (an `exec.completed`
/// body, with `result`) is checked inside an event.
fn doc_examples() -> Vec<serde_json::Value> {
    let text =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/docs/protocol.md")).unwrap();
    text.split("```json\n")
        .skip(1)
        .map(|rest| rest.split("```").next().unwrap())
        .map(|block| serde_json::from_str(block).unwrap_or_else(|e| panic!("{e}: {block}")))
        .collect()
}

fn event(kind: &str, body: serde_json::Value) -> serde_json::Value {
    serde_json::json!({
        "v": 1, "id": "0123456789abcdef0123456789abcdef", "agent": "i-0123",
        "time": "2026-12-02T00:00:00Z", "kind": kind, "body": body
    })
}

#[test]
fn every_example_in_the_protocol_doc_is_valid() {
    let examples = doc_examples();
    assert!(examples.len() >= 4, "{}", examples.len());
    for ex in examples {
        if ex.get("v").is_some() {
            assert_protocol("a docs/protocol.md example", &ex);
        } else {
            assert!(ex.get("result").is_some(), "{ex}");
            assert_protocol(
                "a docs/protocol.md exec.completed body",
                &event("exec.completed", ex),
            );
        }
    }
}

#[test]
fn every_event_kind_the_agent_writes_is_valid() {
    use reflow_agent::error::{Kind, ReflowError};
    use reflow_agent::protocol::EventBody;
    let res = reflow_agent::resources::Resources::from_pairs([("mem", 1.0e9), ("cpu", 2.0)]);
    let err = ReflowError::new(Kind::NotAllowed, "command", "not allowed: image");
    let bodies = vec![
        EventBody::ExecState {
            state: "running".into(),
            error: Some(err.clone()),
            manifest: None,
        },
        EventBody::ExecCompleted {
            result: reflow_agent::model::ExecResult::default(),
            repository: Some("file:///repo".into()),
            cached: true,
            locations: Some([("out".to_string(), "s3://b/k".to_string())].into()),
        },
        EventBody::AllocExpired {},
        EventBody::AllocFreed {},
        EventBody::IntegrityError {
            detail: "sha256 mismatch".into(),
        },
        EventBody::AgentStarted {
            resources: res.clone(),
        },
        EventBody::AgentHeartbeat {
            free: res,
            running_execs: 3,
        },
        EventBody::AgentDraining {},
        EventBody::AgentStopped {},
        EventBody::CommandRejected {
            command_id: Some("c-1".into()),
            error: err.clone(),
        },
        EventBody::CommandResult {
            command_id: "c-2".into(),
            value: serde_json::json!({"any": ["thing"]}),
            error: Some(err),
        },
    ];
    let kinds: Vec<&str> = bodies.iter().map(EventBody::kind).collect();
    assert_eq!(kinds, EVENT_KINDS, "a kind without a case here");
    for body in bodies {
        let e = Event {
            v: 1,
            id: "0123456789abcdef0123456789abcdef".into(),
            agent: "i-0123".into(),
            alloc: Some("0123456789abcdef".into()),
            exec: Some(reflow_agent::digest::Digest::of(b"x")),
            correlation_id: Some("job-1".into()),
            command: Some("c-1".into()),
            time: reflow_agent::clock::Clock::now(&reflow_agent::clock::SystemClock),
            body,
            labels: [("k".to_string(), "v".to_string())].into(),
        };
        assert_protocol(e.body.kind(), &serde_json::to_value(&e).unwrap());
    }
}

#[test]
fn the_schema_refuses_what_the_decoder_refuses() {
    for (why, cmd) in [
        (
            "unknown field",
            r#"{"v":1,"id":"x","kind":"offers","bogus":1}"#,
        ),
        ("bad id", r#"{"v":1,"id":"x y","kind":"offers"}"#),
        (
            "reply_to no backend can send to",
            r#"{"v":1,"id":"x","kind":"offers","reply_to":"my queue"}"#,
        ),
        ("other version", r#"{"v":2,"id":"x","kind":"offers"}"#),
        ("unknown kind", r#"{"v":1,"id":"x","kind":"exec.teleport"}"#),
        (
            "exec.put without alloc",
            r#"{"v":1,"id":"x","kind":"exec.put","exec":"sha256:0000000000000000000000000000000000000000000000000000000000000000","body":{"config":{"Type":"exec"}}}"#,
        ),
        (
            "bad alloc id",
            r#"{"v":1,"id":"x","kind":"alloc.free","alloc":"XYZ"}"#,
        ),
        (
            "job with an unknown body field",
            r#"{"v":1,"id":"x","kind":"job","body":{"config":{"Type":"exec"},"zzz":1}}"#,
        ),
    ] {
        let v: serde_json::Value = serde_json::from_str(cmd).unwrap();
        assert!(!protocol_schema().is_valid(&v), "{why}: accepted {cmd}");
        assert!(
            reflow_agent::protocol::decode_command(cmd.as_bytes()).is_err(),
            "{why}: the decoder accepts {cmd}"
        );
    }
}

/// The Python client ships a copy of the schema (as package data); it is this one.
#[test]
fn the_python_clients_schema_is_this_one() {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    let docs = std::fs::read(root.join("docs/protocol.schema.json")).unwrap();
    let client =
        std::fs::read(root.join("clients/python/src/reflow_client/protocol.schema.json")).unwrap();
    assert!(
        docs == client,
        "clients/python/src/reflow_client/protocol.schema.json differs from docs/protocol.schema.json: copy it"
    );
}
