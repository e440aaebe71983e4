//! Kernel log records (anything the kernel or a process writing to /dev/kmsg can produce): the
//! parser and the matcher never panic.
#![no_main]
use libfuzzer_sys::fuzz_target;
use reflow_agent::oom::kmsg::{OomTarget, find, parse_record};

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    let records: Vec<_> = text.split('\u{1}').filter_map(parse_record).collect();
    let target = OomTarget { pid: 1, container_id: "abc".into(), cgroup: Some("/docker/abc".into()) };
    let _ = find(&records, &target, 0, u64::MAX);
});
