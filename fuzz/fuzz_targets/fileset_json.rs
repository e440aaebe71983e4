//! Fileset JSON from a queue: decode, path validation and every derived value never panic.
#![no_main]
use libfuzzer_sys::fuzz_target;
use reflow_agent::fileset::Fileset;

fuzz_target!(|data: &[u8]| {
    if let Ok(fs) = serde_json::from_slice::<Fileset>(data) {
        let valid = fs.validate_paths().is_ok();
        let _ = (fs.digest(), fs.files(), fs.n(), fs.pullup(), fs.file(), fs.flatten());
        if valid {
            for (k, _) in fs.pullup().map {
                assert!(reflow_agent::relpath::join(std::path::Path::new("/base"), &k)
                    .unwrap()
                    .starts_with("/base"));
            }
        }
    }
});
