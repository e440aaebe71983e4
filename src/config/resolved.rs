//! The configuration the agent runs on: the file, the environment and the command-line flags
//! merged (flags win over the environment, which wins over the file), validated, and every
//! default applied from the named constants below, in this one place.
//!
//! A field left at `0` or absent in the file means "the default"; after [`Config::resolve`]
//! nothing does: [`Resolved`] holds durations, counts and URLs only.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use thiserror::Error;

use super::{Config, ConfigError};
use crate::error::{Classify, Kind};

/// Default of `agent.state_dir`.
pub const DEFAULT_STATE_DIR: &str = "/var/lib/reflow-agent";
/// Default of `agent.interruption_poll_secs`: AWS's advice for spot notices.
pub const DEFAULT_INTERRUPTION_POLL_SECS: u64 = 5;
/// Default of `agent.zombie_max_age_secs`: one day.
pub const DEFAULT_ZOMBIE_MAX_AGE_SECS: u64 = 86_400;
/// Default of `agent.state_retention_secs`: seven days.
pub const DEFAULT_STATE_RETENTION_SECS: u64 = 7 * 86_400;
/// Default of `executor.network_mode`: no network.
pub const DEFAULT_NETWORK_MODE: &str = "none";
/// Default of `executor.profile_interval_secs`.
pub const DEFAULT_PROFILE_INTERVAL_SECS: u64 = 10;
/// Default of `executor.engine_wait_secs`.
pub const DEFAULT_ENGINE_WAIT_SECS: u64 = crate::executor::DEFAULT_ENGINE_WAIT.as_secs();
/// Default of `executor.image_cleanup_interval_secs` (ECS's).
pub const DEFAULT_IMAGE_CLEANUP_INTERVAL_SECS: u64 = 1800;
/// Default of `executor.image_gc_min_age_secs` (ECS's).
pub const DEFAULT_IMAGE_GC_MIN_AGE_SECS: u64 = 3600;
/// Default of `executor.image_cleanup_per_cycle` (ECS's).
pub const DEFAULT_IMAGE_CLEANUP_PER_CYCLE: usize = 5;
/// Default of `executor.image_cleanup_disk_percent` (kubelet's `image-gc-high-threshold`).
pub const DEFAULT_IMAGE_CLEANUP_DISK_PERCENT: u8 = 85;
/// Default of `admin.listen`.
pub const DEFAULT_ADMIN_LISTEN: &str = "127.0.0.1:9090";
/// Default of `queue.max_deliveries`: deliveries of one command before it is dead-lettered.
pub const DEFAULT_MAX_DELIVERIES: u32 = crate::queue::DEFAULT_DELIVERY_LIMIT;
/// Default of `queue.max_job_secs`: ten hours.
pub const DEFAULT_MAX_JOB_SECS: u64 = crate::queue::DEFAULT_MAX_JOB.as_secs();
/// Default of `queue.drain_grace_secs`: what running jobs get to finish at shutdown.
pub const DEFAULT_DRAIN_GRACE_SECS: u64 = 300;
/// Default of `queue.heartbeat_secs`.
pub const DEFAULT_HEARTBEAT_SECS: u64 = 30;
/// Default of `queue.visibility_timeout_secs` (SQS visibility per receive and extension).
pub const DEFAULT_VISIBILITY_TIMEOUT_SECS: u64 = 120;
/// Default of `queue.job_attempts`: tries of a job step that fails retryably.
pub const DEFAULT_JOB_ATTEMPTS: u32 = 3;
/// Default of `queue.op_timeout_secs`: the longest wait for one broker operation.
pub const DEFAULT_OP_TIMEOUT_SECS: u64 = crate::queue::DEFAULT_OP_TIMEOUT.as_secs();
/// Default of `security.max_clock_skew_secs`.
pub const DEFAULT_MAX_CLOCK_SKEW_SECS: u64 =
    crate::control::security::DEFAULT_MAX_CLOCK_SKEW.as_secs();
/// First delay before a job step that failed retryably is tried again (then doubled, jittered).
pub const JOB_RETRY_BASE: Duration = Duration::from_secs(1);
/// The longest time between two checks of `agent.idle_exit_after_secs`.
pub const IDLE_CHECK_MAX: Duration = Duration::from_secs(60);

/// The `serve` flags that override the file and the environment.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Overrides {
    /// `--queue`: `queue.url`.
    pub queue_url: Option<String>,
    /// `--state-dir`: `agent.state_dir`.
    pub state_dir: Option<PathBuf>,
    /// `--repository`: `repository.url`.
    pub repository_url: Option<String>,
    /// `--hard-mem-limit`: sets `executor.hard_mem_limit`.
    pub hard_mem_limit: bool,
    /// `--idle-exit-after-secs`: `agent.idle_exit_after_secs`.
    pub idle_exit_after_secs: Option<u64>,
}

/// Every problem of a configuration, found at once.
#[derive(Debug, Error)]
#[error("invalid configuration:\n{}", .0.iter().map(|e| format!("  - {}", crate::error::chain(e))).collect::<Vec<_>>().join("\n"))]
pub struct ConfigErrors(pub Vec<ConfigError>);

impl Classify for ConfigErrors {
    fn kind(&self) -> Kind {
        self.0.first().map_or(Kind::Invalid, ConfigError::kind)
    }
}

/// A valid configuration with every default applied: what the agent runs on. Built only
/// by [`Config::resolve`] and [`Config::into_resolved`].
#[derive(Debug, Clone, PartialEq)]
pub struct Resolved {
    /// The sections as given, for the settings used as they are (`[aws]`, `[security]` lists,
    /// `[executor]` switches).
    pub config: Config,
    /// The pool's id (`agent.pool_id`, else the host name).
    pub pool_id: String,
    /// The queue (`queue.url`, else `spool://STATE_DIR/spool`).
    pub queue_url: String,
    /// The agent's repository (`repository.url`, else `file://STATE_DIR/repository`).
    pub repository_url: String,
    /// Jobs at once (`queue.max_jobs`, else the CPU cores).
    pub max_jobs: usize,
    /// Commands held at once (`queue.prefetch`, else `max_jobs`).
    pub prefetch: usize,
    /// Deliveries before the dead-letter queue.
    pub max_deliveries: u32,
    /// The longest a job may run.
    pub max_job: Duration,
    /// What running jobs get to finish at shutdown.
    pub drain_grace: Duration,
    /// Heartbeat period.
    pub heartbeat: Duration,
    /// SQS visibility per receive and extension (the lease).
    pub visibility: Duration,
    /// Tries of a job step that fails retryably.
    pub job_attempts: u32,
    /// The longest wait for one broker operation.
    pub op_timeout: Duration,
    /// How far a signed command's time may be from the agent's clock.
    pub max_clock_skew: Duration,
    /// When done journal entries and results are pruned (`None`: kept).
    pub retention: Option<Duration>,
    /// When a dead alloc's directory is removed (`None`: kept).
    pub zombie_max_age: Option<Duration>,
    /// Spot notice polling (`None`: off).
    pub interruption_poll: Option<Duration>,
    /// Exit after this long with every alloc expired (`None`: never).
    pub idle_exit_after: Option<Duration>,
    /// The admin listener (`None`: off).
    pub admin_listen: Option<SocketAddr>,
    /// Image cleanup (`None`: off).
    pub image_gc: Option<crate::imagegc::Policy>,
}

/// `n` seconds, or `default` seconds when `n` is 0 ("the default").
pub(super) fn secs(n: u64, default: u64) -> Duration {
    Duration::from_secs(if n == 0 { default } else { n })
}

fn some_secs(n: u64) -> Option<Duration> {
    (n > 0).then(|| Duration::from_secs(n))
}

/// The host name, for the default pool id.
fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_string())
        .ok()
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "localhost".to_string())
}

impl Config {
    /// The config file at `path` (none: the embedded defaults), the `REFLOW_AGENT_*`
    /// overrides of `env`, then `flags`, validated and resolved.
    ///
    /// # Errors
    /// Every problem found: reading or parsing, an override that fits no field, and every
    /// invalid value at once.
    pub fn resolve(
        path: Option<&Path>,
        env: impl IntoIterator<Item = (String, String)>,
        flags: &Overrides,
    ) -> Result<Resolved, ConfigErrors> {
        let mut cfg = Config::load_with_env(path, env).map_err(|e| ConfigErrors(vec![e]))?;
        cfg.apply(flags);
        cfg.into_resolved()
    }

    /// Applies the `serve` flags.
    pub fn apply(&mut self, flags: &Overrides) {
        if let Some(d) = &flags.state_dir {
            self.agent.state_dir = d.clone();
        }
        if let Some(q) = &flags.queue_url {
            self.queue.url = Some(q.clone());
        }
        if let Some(r) = &flags.repository_url {
            self.repository.url = Some(r.clone());
        }
        if flags.hard_mem_limit {
            self.executor.hard_mem_limit = true;
        }
        if flags.idle_exit_after_secs.is_some() {
            self.agent.idle_exit_after_secs = flags.idle_exit_after_secs;
        }
    }

    /// This configuration, validated, with every default applied.
    ///
    /// # Errors
    /// Every invalid value at once.
    pub fn into_resolved(self) -> Result<Resolved, ConfigErrors> {
        let errs = self.validate();
        if !errs.is_empty() {
            return Err(ConfigErrors(errs));
        }
        let (q, a, x) = (&self.queue, &self.agent, &self.executor);
        let max_jobs = self.max_jobs();
        Ok(Resolved {
            pool_id: a.pool_id.clone().unwrap_or_else(hostname),
            queue_url: self.queue_url(),
            repository_url: self.repository_url(),
            max_jobs,
            prefetch: if q.prefetch == 0 {
                max_jobs
            } else {
                q.prefetch
            },
            max_deliveries: if q.max_deliveries == 0 {
                DEFAULT_MAX_DELIVERIES
            } else {
                q.max_deliveries
            },
            max_job: self.max_job(),
            drain_grace: secs(q.drain_grace_secs, DEFAULT_DRAIN_GRACE_SECS),
            heartbeat: secs(q.heartbeat_secs, DEFAULT_HEARTBEAT_SECS),
            visibility: secs(q.visibility_timeout_secs, DEFAULT_VISIBILITY_TIMEOUT_SECS),
            job_attempts: if q.job_attempts == 0 {
                DEFAULT_JOB_ATTEMPTS
            } else {
                q.job_attempts
            },
            op_timeout: secs(q.op_timeout_secs, DEFAULT_OP_TIMEOUT_SECS),
            max_clock_skew: secs(
                self.security.max_clock_skew_secs,
                DEFAULT_MAX_CLOCK_SKEW_SECS,
            ),
            retention: some_secs(a.state_retention_secs),
            zombie_max_age: some_secs(a.zombie_max_age_secs),
            interruption_poll: some_secs(a.interruption_poll_secs),
            idle_exit_after: a.idle_exit_after_secs.map(Duration::from_secs),
            admin_listen: self.admin_listen(),
            image_gc: x.image_cleanup.then(|| crate::imagegc::Policy {
                interval: Duration::from_secs(x.image_cleanup_interval_secs.max(1)),
                min_age: Duration::from_secs(x.image_gc_min_age_secs),
                per_cycle: x.image_cleanup_per_cycle,
                disk_percent: x.image_cleanup_disk_percent,
                exclude: x.image_cleanup_exclude.iter().cloned().collect(),
            }),
            config: self,
        })
    }
}

impl Resolved {
    /// How often idleness is checked: the idle limit, within 1 s and [`IDLE_CHECK_MAX`].
    pub fn idle_check_every(&self) -> Duration {
        self.idle_exit_after
            .unwrap_or(IDLE_CHECK_MAX)
            .clamp(Duration::from_secs(1), IDLE_CHECK_MAX)
    }

    /// The agent's repository as a local directory, when it is a `file://` one.
    pub fn repository_dir(&self) -> Option<PathBuf> {
        self.repository_url
            .strip_prefix("file://")
            .map(PathBuf::from)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn resolve(
        toml: &str,
        env: &[(&str, &str)],
        flags: &Overrides,
    ) -> Result<Resolved, ConfigErrors> {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("agent.toml");
        std::fs::write(&path, toml).unwrap();
        let env = env
            .iter()
            .map(|(k, v)| ((*k).to_string(), (*v).to_string()));
        Config::resolve(Some(&path), env, flags)
    }

    #[test]
    fn zero_and_absent_mean_the_named_defaults() {
        let r = resolve(
            "[agent]\nstate_dir = \"/s\"\npool_id = \"p\"\n[queue]\nmax_jobs = 3\n",
            &[],
            &Overrides::default(),
        )
        .unwrap();
        assert_eq!(r.pool_id, "p");
        assert_eq!(r.queue_url, "spool:///s/spool");
        assert_eq!(r.repository_url, "file:///s/repository");
        assert_eq!(r.repository_dir(), Some(PathBuf::from("/s/repository")));
        assert_eq!((r.max_jobs, r.prefetch), (3, 3));
        assert_eq!(r.max_deliveries, DEFAULT_MAX_DELIVERIES);
        assert_eq!(r.max_job, Duration::from_secs(DEFAULT_MAX_JOB_SECS));
        assert_eq!(r.drain_grace, Duration::from_secs(DEFAULT_DRAIN_GRACE_SECS));
        assert_eq!(r.heartbeat, Duration::from_secs(DEFAULT_HEARTBEAT_SECS));
        assert_eq!(
            r.visibility,
            Duration::from_secs(DEFAULT_VISIBILITY_TIMEOUT_SECS)
        );
        assert_eq!(r.job_attempts, DEFAULT_JOB_ATTEMPTS);
        assert_eq!(r.op_timeout, Duration::from_secs(DEFAULT_OP_TIMEOUT_SECS));
        assert_eq!(
            r.max_clock_skew,
            Duration::from_secs(DEFAULT_MAX_CLOCK_SKEW_SECS)
        );
        assert_eq!(
            r.retention,
            Some(Duration::from_secs(
                super::super::DEFAULT_STATE_RETENTION_SECS
            ))
        );
        assert_eq!(r.idle_exit_after, None);
        assert_eq!(r.idle_check_every(), IDLE_CHECK_MAX);
        assert_eq!(r.admin_listen, Some("127.0.0.1:9090".parse().unwrap()));
        assert!(r.image_gc.is_some());
    }

    #[test]
    fn flags_win_over_the_environment_which_wins_over_the_file() {
        let toml = "[agent]\nstate_dir = \"/file\"\n[queue]\nurl = \"spool:///file-q\"\nmax_deliveries = 7\nprefetch = 1\n[admin]\nlisten = \"off\"\n";
        let env = [
            ("REFLOW_AGENT_QUEUE__URL", "spool:///env-q"),
            ("REFLOW_AGENT_QUEUE__MAX_DELIVERIES", "9"),
            ("REFLOW_AGENT_AGENT__STATE_RETENTION_SECS", "0"),
        ];
        let flags = Overrides {
            queue_url: Some("spool:///flag-q".into()),
            state_dir: Some("/flag".into()),
            idle_exit_after_secs: Some(5),
            ..Overrides::default()
        };
        let r = resolve(toml, &env, &flags).unwrap();
        assert_eq!(r.queue_url, "spool:///flag-q");
        assert_eq!(r.repository_url, "file:///flag/repository");
        assert_eq!(r.max_deliveries, 9);
        assert_eq!(r.prefetch, 1);
        assert_eq!(r.retention, None, "0 keeps state forever");
        assert_eq!(r.idle_exit_after, Some(Duration::from_secs(5)));
        assert_eq!(r.idle_check_every(), Duration::from_secs(5));
        assert_eq!(r.admin_listen, None);
        let r = resolve(toml, &env, &Overrides::default()).unwrap();
        assert_eq!(r.queue_url, "spool:///env-q");
    }

    #[test]
    fn every_problem_is_reported_at_once() {
        let e = resolve(
            "[agent]\nstate_dir = \"relative\"\n[executor]\nnetwork_mode = \"bridge\"\n",
            &[],
            &Overrides::default(),
        )
        .unwrap_err();
        assert!(e.0.len() >= 2, "{e}");
        let text = e.to_string();
        assert!(
            text.contains("agent.state_dir") && text.contains("executor.network_mode"),
            "{text}"
        );
        assert_eq!(e.kind(), Kind::Invalid);
        let e = resolve("[queue]\nnope = 1\n", &[], &Overrides::default()).unwrap_err();
        assert!(e.to_string().contains("nope"), "{e}");
    }
}
