//! Commands from a queue (anyone who can publish can send anything): decoding never panics, and a
//! decoded command's kind is one of the protocol's.
#![no_main]
use libfuzzer_sys::fuzz_target;
use reflow_agent::protocol::{KINDS, decode_command};

fuzz_target!(|data: &[u8]| {
    if let Ok(req) = decode_command(data) {
        assert!(KINDS.contains(&req.command.kind()));
    }
});
