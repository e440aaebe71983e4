//! Commands from a queue (anyone who can publish can send anything): decoding never panics, a
//! decoded command's kind is one of the protocol's, and checking its signature and admission
//! never panics either.
#![no_main]
use libfuzzer_sys::fuzz_target;
use reflow_agent::control::security::{Policy, verify};
use reflow_agent::protocol::{KINDS, decode_command};

fuzz_target!(|data: &[u8]| {
    if let Ok(req) = decode_command(data) {
        assert!(KINDS.contains(&req.command.kind()));
        let _ = verify(b"fuzz-key", data);
        let policy = Policy {
            image_allowlist: vec!["reflow-agent-test/".into()],
            ..Policy::default()
        };
        let _ = policy.admit(data, &req.command);
    }
});
