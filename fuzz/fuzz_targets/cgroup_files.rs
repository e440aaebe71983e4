//! The agent's own cgroup code on arbitrary input: flat-keyed cgroup files (`memory.stat`,
//! `memory.events`, `cpu.stat`), `memory.max`, and the mapping of a process's cgroups onto the
//! mounted hierarchies. Never panics. (The `/proc` files themselves are the kernel's, parsed by
//! procfs; they are not untrusted input.)
#![no_main]
use libfuzzer_sys::fuzz_target;
use reflow_agent::cgroup::{CgroupLine, CgroupMount, CgroupPaths, parse_flat_keyed, parse_v2_max};

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    let _ = parse_flat_keyed(&text, "oom_kill");
    let _ = parse_v2_max(&text);
    // Lines `id:controllers:path` and `mount root point controllers`, as the fuzzer writes them.
    let mut lines = Vec::new();
    let mut mounts = Vec::new();
    for l in text.lines() {
        if let Some(rest) = l.strip_prefix("mount ") {
            let mut f = rest.splitn(3, ' ');
            let (root, point, ctls) = (f.next().unwrap_or(""), f.next().unwrap_or(""), f.next().unwrap_or(""));
            mounts.push(CgroupMount {
                controllers: ctls.split(',').filter(|c| !c.is_empty()).map(str::to_string).collect(),
                root: root.to_string(),
                point: point.into(),
            });
        } else {
            let mut f = l.splitn(3, ':');
            let (id, ctls, path) = (f.next().unwrap_or(""), f.next().unwrap_or(""), f.next().unwrap_or(""));
            lines.push(CgroupLine {
                id: id.parse().unwrap_or(0),
                controllers: ctls.split(',').filter(|c| !c.is_empty()).map(str::to_string).collect(),
                path: path.to_string(),
            });
        }
    }
    let _ = CgroupPaths::from_lines(&lines, &mounts);
});
