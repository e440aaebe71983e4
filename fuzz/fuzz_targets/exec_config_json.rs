//! ExecConfig JSON from a queue: decode and validate never panic; a valid config round-trips.
#![no_main]
use libfuzzer_sys::fuzz_target;
use reflow_agent::model::ExecConfig;

fuzz_target!(|data: &[u8]| {
    if let Ok(c) = serde_json::from_slice::<ExecConfig>(data) {
        if c.validate().is_ok() {
            let j = serde_json::to_vec(&c).unwrap();
            let back: ExecConfig = serde_json::from_slice(&j).unwrap();
            assert!(back.validate().is_ok());
        }
    }
});
