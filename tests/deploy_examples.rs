//! The example configs under deploy/examples parse and validate, as an operator would use them.

use reflow_agent::config::Config;

#[test]
fn example_configs_are_valid() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("deploy/examples");
    let mut n = 0;
    for e in std::fs::read_dir(&dir).unwrap().flatten() {
        let p = e.path();
        if p.extension().is_some_and(|x| x == "toml") {
            let c = Config::load(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display()));
            let errs = c.validate();
            assert!(errs.is_empty(), "{}: {errs:?}", p.display());
            n += 1;
        }
    }
    assert_eq!(n, 3, "amqp, sqs and spool");
}

/// The unit restarts a crashed agent but not one that exited cleanly for scale-in (an idle exit
/// or a drain), which exits 0 (`serve_it` shows both statuses).
#[test]
fn systemd_restarts_crashes_not_scale_in_exits() {
    let unit = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/systemd/reflow-agent.service"
    ))
    .unwrap();
    let restart: Vec<&str> = unit.lines().filter(|l| l.starts_with("Restart=")).collect();
    assert_eq!(restart, ["Restart=on-failure"], "{restart:?}");
}
