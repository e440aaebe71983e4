//! Digest text from producers: parse never panics, and what parses round-trips.
#![no_main]
use libfuzzer_sys::fuzz_target;
use reflow_agent::digest::Digest;

fuzz_target!(|data: &[u8]| {
    if let Ok(s) = std::str::from_utf8(data) {
        if let Ok(d) = Digest::parse(s) {
            assert_eq!(Digest::parse(&d.to_string()).unwrap(), d);
        }
    }
});
