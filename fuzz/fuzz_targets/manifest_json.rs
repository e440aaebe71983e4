//! manifest.json from disk (possibly torn or tampered): decode never panics.
#![no_main]
use libfuzzer_sys::fuzz_target;
use reflow_agent::manifest::Manifest;

fuzz_target!(|data: &[u8]| {
    if let Ok(m) = serde_json::from_slice::<Manifest>(data) {
        let _ = m.check_version();
        let _ = serde_json::to_vec(&m).unwrap();
    }
});
