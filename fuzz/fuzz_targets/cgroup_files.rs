//! /proc/<pid>/cgroup, /proc/self/mountinfo and flat-keyed cgroup and /proc files (parsed by
//! procfs and by the agent): parsers never panic.
#![no_main]
use libfuzzer_sys::fuzz_target;
use reflow_agent::cgroup::{
    CgroupPaths, parse_flat_keyed, parse_mountinfo, parse_proc_cgroup, parse_v2_max,
};
use reflow_agent::oom::node::{parse_meminfo_available, parse_psi_full_total, parse_vmstat_oom_kill};

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    let lines = parse_proc_cgroup(&text);
    let mounts = parse_mountinfo(&text);
    let _ = CgroupPaths::from_lines(&lines, &mounts);
    let _ = parse_flat_keyed(&text, "oom_kill");
    let _ = parse_v2_max(&text);
    let _ = (parse_meminfo_available(&text), parse_psi_full_total(&text), parse_vmstat_oom_kill(&text));
});
