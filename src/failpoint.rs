//! Failure injection for tests: named points where a test can make the agent die as a crash
//! would, to check what a restart does. Compiled in only with the cargo feature `failpoints`
//! (off by default; the test suite turns it on); in any other build [`hit`] does nothing.
//!
//! `REFLOW_AGENT_FAILPOINT=NAME[,NAME...]` makes the process exit with status 137 (as if
//! SIGKILLed) at each named point, without any cleanup. Points:
//!
//! | name | where |
//! |---|---|
//! | `exec.after_start` | right after the engine started an exec's container, before `Running` is persisted |
//! | `job.after_alloc` | right after a job's alloc was made, before the control journal records it |

/// The environment variable that arms failpoints.
pub const ENV: &str = "REFLOW_AGENT_FAILPOINT";

/// Dies here if failpoint `name` is armed (see the module docs).
pub fn hit(name: &str) {
    #[cfg(feature = "failpoints")]
    if std::env::var(ENV).is_ok_and(|v| v.split(',').any(|p| p.trim() == name)) {
        tracing::error!(failpoint = name, "Failpoint armed: exiting as if killed.");
        std::process::exit(137);
    }
    #[cfg(not(feature = "failpoints"))]
    let _ = name;
}
