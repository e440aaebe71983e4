//! The agent's metrics (prometheus-client): what the control plane counts and what the admin
//! listener's `/metrics` renders. docs/operations.md lists every metric.

use std::path::PathBuf;
use std::sync::atomic::AtomicU64;
use std::time::Duration;

use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

use crate::pool::Pool;

type Labels = Vec<(String, String)>;

fn label(k: &str, v: &str) -> Labels {
    vec![(k.to_string(), v.to_string())]
}

/// The agent's metrics.
#[derive(Debug)]
pub struct Metrics {
    registry: Registry,
    received: Family<Labels, Counter>,
    acked: Family<Labels, Counter>,
    rejected: Family<Labels, Counter>,
    dead_lettered: Family<Labels, Counter>,
    redeliveries: Counter,
    queue_lag: Histogram,
    exec_duration: Histogram,
    oom: Family<Labels, Counter>,
    integrity: Counter,
    execs: Family<Labels, Gauge>,
    free: Family<Labels, Gauge<f64, AtomicU64>>,
    repo_bytes: Gauge,
    repo_objects: Gauge,
    repo_scan: RepoScan,
    allocs: Gauge,
    requests: Family<Vec<(String, String)>, Counter>,
    jobs: Family<Labels, Counter>,
    outbox: Gauge,
    ready: Family<Labels, Gauge>,
    heartbeat: Gauge,
    build: Family<Labels, Gauge>,
}

/// How long a repository walk answers the repository gauges: a large repository is walked at
/// most this often, however often `/metrics` is scraped.
pub const REPO_SCAN_EVERY: Duration = Duration::from_secs(30);

/// The last walk of the repository, reused until it is [`REPO_SCAN_EVERY`] old. The lock is
/// held during a walk, so concurrent scrapes wait for one walk instead of starting several.
#[derive(Debug, Default)]
struct RepoScan {
    last: tokio::sync::Mutex<Option<(tokio::time::Instant, u64, u64)>>,
}

impl RepoScan {
    /// Bytes and objects under `root`, walked again only if the last walk is older than
    /// [`REPO_SCAN_EVERY`] at `now`.
    async fn get(&self, root: PathBuf, now: tokio::time::Instant) -> (u64, u64) {
        let mut last = self.last.lock().await;
        if let Some((at, bytes, objects)) = *last
            && now.saturating_duration_since(at) < REPO_SCAN_EVERY
        {
            return (bytes, objects);
        }
        let (bytes, objects) = tokio::task::spawn_blocking(move || repo_size(&root))
            .await
            .unwrap_or((0, 0));
        *last = Some((now, bytes, objects));
        (bytes, objects)
    }
}

impl Default for Metrics {
    fn default() -> Self {
        let mut registry = Registry::with_prefix("reflow");
        let m = Metrics {
            received: Family::default(),
            acked: Family::default(),
            rejected: Family::default(),
            dead_lettered: Family::default(),
            redeliveries: Counter::default(),
            queue_lag: Histogram::new(exponential_buckets(0.01, 4.0, 10)),
            exec_duration: Histogram::new(exponential_buckets(0.1, 3.0, 12)),
            oom: Family::default(),
            integrity: Counter::default(),
            execs: Family::default(),
            free: Family::default(),
            repo_bytes: Gauge::default(),
            repo_objects: Gauge::default(),
            repo_scan: RepoScan::default(),
            allocs: Gauge::default(),
            requests: Family::default(),
            jobs: Family::default(),
            outbox: Gauge::default(),
            ready: Family::default(),
            heartbeat: Gauge::default(),
            build: Family::default(),
            registry: Registry::default(),
        };
        registry.register(
            "commands_received",
            "Commands received, by kind",
            m.received.clone(),
        );
        registry.register(
            "commands_acked",
            "Commands acked (settled done), by kind",
            m.acked.clone(),
        );
        registry.register(
            "commands_rejected",
            "Commands rejected, by error kind",
            m.rejected.clone(),
        );
        registry.register(
            "commands_dead_lettered",
            "Commands moved to the dead-letter queue, by error kind",
            m.dead_lettered.clone(),
        );
        registry.register(
            "queue_redeliveries",
            "Deliveries that the broker marked as repeated",
            m.redeliveries.clone(),
        );
        registry.register(
            "queue_lag_seconds",
            "Time from a command's envelope time to its receipt",
            m.queue_lag.clone(),
        );
        registry.register(
            "exec_duration_seconds",
            "Duration of jobs' execs, accept to outcome",
            m.exec_duration.clone(),
        );
        registry.register(
            "oom_kills",
            "Execs killed by the OOM killer, by deciding evidence source",
            m.oom.clone(),
        );
        registry.register(
            "integrity_errors",
            "Integrity errors (content not matching its digest)",
            m.integrity.clone(),
        );
        registry.register("execs", "Execs of live allocs, by state", m.execs.clone());
        registry.register(
            "free_resources",
            "Resources not held by allocs",
            m.free.clone(),
        );
        registry.register(
            "repository_bytes",
            "Bytes in the agent's repository (walked at most every 30 s)",
            m.repo_bytes.clone(),
        );
        registry.register(
            "repository_objects",
            "Objects in the agent's repository (walked at most every 30 s)",
            m.repo_objects.clone(),
        );
        registry.register("allocs", "Live allocs", m.allocs.clone());
        registry.register(
            "cloud_requests",
            "Requests to AWS services (each SDK attempt) and to the AMQP broker, by service and operation",
            m.requests.clone(),
        );
        registry.register(
            "jobs_completed",
            "Jobs completed, by result: ok, or the error kind (OOM, DockerExec, Timeout, ...)",
            m.jobs.clone(),
        );
        registry.register(
            "outbox_events",
            "Events in the durable outbox, not yet confirmed by the broker",
            m.outbox.clone(),
        );
        registry.register(
            "ready",
            "Readiness checks (as /readyz), 1 passing and 0 failing, by check",
            m.ready.clone(),
        );
        registry.register(
            "heartbeat_timestamp_seconds",
            "Unix time of the last agent.heartbeat",
            m.heartbeat.clone(),
        );
        registry.register(
            "build_info",
            "The build: its version and the optional backends compiled in; always 1",
            m.build.clone(),
        );
        // Series that alerts and the dashboard rate() exist from the start at 0, so the first
        // job or OOM kill is an increase, not a new series.
        m.jobs.get_or_create(&label("result", "ok")).inc_by(0);
        for source in ["docker", "cgroup", "kmsg", "golang", "node"] {
            m.oom.get_or_create(&label("source", source)).inc_by(0);
        }
        m.build
            .get_or_create(&vec![
                ("version".to_string(), env!("CARGO_PKG_VERSION").to_string()),
                ("backends".to_string(), crate::features::built().join(",")),
            ])
            .set(1);
        Metrics { registry, ..m }
    }
}

impl Metrics {
    /// A command of `kind` arrived (`redelivered` as the broker says).
    pub fn received(&self, kind: &str, redelivered: bool) {
        self.received.get_or_create(&label("kind", kind)).inc();
        if redelivered {
            self.redeliveries.inc();
        }
    }

    /// A command of `kind` was acked.
    pub fn acked(&self, kind: &str) {
        self.acked.get_or_create(&label("kind", kind)).inc();
    }

    /// A command was rejected with an error of `kind`; `dead_lettered` when the DLQ took it.
    pub fn rejected(&self, kind: crate::error::Kind, dead_lettered: bool) {
        let l = label("error", &format!("{kind:?}"));
        self.rejected.get_or_create(&l).inc();
        if dead_lettered {
            self.dead_lettered.get_or_create(&l).inc();
        }
    }

    /// A command's envelope time lagged its receipt by `secs`.
    pub fn lag(&self, secs: f64) {
        if secs.is_finite() && secs >= 0.0 {
            self.queue_lag.observe(secs);
        }
    }

    /// A job's exec took `secs` and ended with `result` (`ok` or an error kind); `oom` names the
    /// deciding source when the OOM killer ended it.
    pub fn exec_done(&self, secs: f64, result: &str, oom: Option<&str>) {
        self.exec_duration.observe(secs.max(0.0));
        self.jobs.get_or_create(&label("result", result)).inc();
        if let Some(source) = oom {
            self.oom.get_or_create(&label("source", source)).inc();
        }
    }

    /// The outbox holds `n` events (read by the publisher).
    pub fn outbox(&self, n: usize) {
        self.outbox.set(i64::try_from(n).unwrap_or(i64::MAX));
    }

    /// One event left the outbox.
    pub fn outbox_sent(&self) {
        if self.outbox.get() > 0 {
            self.outbox.dec();
        }
    }

    /// An `agent.heartbeat` went out at `unix_secs`.
    pub fn heartbeat(&self, unix_secs: i64) {
        self.heartbeat.set(unix_secs);
    }

    /// The readiness checks' latest results.
    pub fn readiness(&self, checks: &[(&str, bool)]) {
        for (name, ok) in checks {
            self.ready
                .get_or_create(&label("check", name))
                .set(i64::from(*ok));
        }
    }

    /// An integrity error was reported.
    pub fn integrity_error(&self) {
        self.integrity.inc();
    }

    /// Refreshes the gauges from the pool and renders the text exposition.
    pub async fn render(&self, pool: &Pool, repo: Option<PathBuf>) -> String {
        let mut states = std::collections::BTreeMap::<&str, i64>::new();
        for s in ["initializing", "created", "running", "complete"] {
            states.insert(s, 0);
        }
        let allocs = pool.allocs().await;
        for a in &allocs {
            for e in a.executor().execs() {
                *states.entry(e.status().state.name()).or_default() += 1;
            }
        }
        for (s, n) in states {
            self.execs.get_or_create(&label("state", s)).set(n);
        }
        self.allocs
            .set(i64::try_from(allocs.len()).unwrap_or(i64::MAX));
        for (k, v) in &pool.available().await.0 {
            self.free.get_or_create(&label("resource", k)).set(*v);
        }
        if let Some(root) = repo {
            let (bytes, objects) = self.repo_scan.get(root, tokio::time::Instant::now()).await;
            self.repo_bytes
                .set(i64::try_from(bytes).unwrap_or(i64::MAX));
            self.repo_objects
                .set(i64::try_from(objects).unwrap_or(i64::MAX));
        }
        for (service, operation, n) in crate::requests::snapshot() {
            let c = self.requests.get_or_create(&vec![
                ("service".to_string(), service),
                ("operation".to_string(), operation),
            ]);
            // The counts only grow; the counter follows them.
            c.inc_by(n.saturating_sub(c.get()));
        }
        let mut out = String::new();
        let _ = prometheus_client::encoding::text::encode(&mut out, &self.registry);
        prometheus_text(&out)
    }
}

/// The Prometheus text format (0.0.4, what `/metrics` declares and `promtool check metrics`
/// reads) from prometheus-client's OpenMetrics text: a counter's `HELP` and `TYPE` name the
/// `_total` samples, and there is no `# EOF`.
fn prometheus_text(openmetrics: &str) -> String {
    let counters: std::collections::HashSet<&str> = openmetrics
        .lines()
        .filter_map(|l| l.strip_prefix("# TYPE "))
        .filter_map(|l| l.strip_suffix(" counter"))
        .collect();
    let mut out = String::with_capacity(openmetrics.len() + 16 * counters.len());
    for line in openmetrics.lines() {
        if line == "# EOF" {
            continue;
        }
        let meta = ["# HELP ", "# TYPE "]
            .into_iter()
            .find_map(|p| line.strip_prefix(p).map(|rest| (p, rest)));
        match meta {
            Some((prefix, rest)) => {
                let (name, tail) = rest.split_once(' ').unwrap_or((rest, ""));
                let total = if counters.contains(name) {
                    "_total"
                } else {
                    ""
                };
                out.push_str(&format!("{prefix}{name}{total} {tail}\n"));
            }
            None => {
                out.push_str(line);
                out.push('\n');
            }
        }
    }
    out
}

/// Bytes and objects under a repository root (`<2 hex>/<62 hex>` files).
fn repo_size(root: &std::path::Path) -> (u64, u64) {
    let (mut bytes, mut n) = (0, 0);
    for d in std::fs::read_dir(root).into_iter().flatten().flatten() {
        if d.file_name().len() != 2 {
            continue;
        }
        for f in std::fs::read_dir(d.path()).into_iter().flatten().flatten() {
            if let Ok(m) = f.metadata()
                && m.is_file()
            {
                bytes += m.len();
                n += 1;
            }
        }
    }
    (bytes, n)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counters_are_named_as_their_samples_and_there_is_no_eof() {
        let om = "# HELP reflow_jobs Jobs.\n# TYPE reflow_jobs counter\nreflow_jobs_total{result=\"ok\"} 1\n# HELP reflow_allocs Live allocs.\n# TYPE reflow_allocs gauge\nreflow_allocs 0\n# EOF\n";
        assert_eq!(
            prometheus_text(om),
            "# HELP reflow_jobs_total Jobs.\n# TYPE reflow_jobs_total counter\nreflow_jobs_total{result=\"ok\"} 1\n# HELP reflow_allocs Live allocs.\n# TYPE reflow_allocs gauge\nreflow_allocs 0\n"
        );
    }

    #[tokio::test]
    async fn the_repository_is_walked_at_most_every_scan_period() {
        let dir = tempfile::tempdir().unwrap();
        let add = |name: &str, len: usize| {
            std::fs::create_dir_all(dir.path().join(&name[..2])).unwrap();
            std::fs::write(dir.path().join(&name[..2]).join(&name[2..]), vec![0u8; len]).unwrap();
        };
        add("ab0001", 10);
        std::fs::create_dir_all(dir.path().join("tmp")).unwrap();
        std::fs::write(dir.path().join("tmp/partial"), b"not an object").unwrap();
        let scan = RepoScan::default();
        let t0 = tokio::time::Instant::now();
        assert_eq!(scan.get(dir.path().into(), t0).await, (10, 1));
        add("cd0002", 5);
        let soon = t0 + REPO_SCAN_EVERY - Duration::from_millis(1);
        assert_eq!(scan.get(dir.path().into(), soon).await, (10, 1), "cached");
        let later = t0 + REPO_SCAN_EVERY;
        assert_eq!(
            scan.get(dir.path().into(), later).await,
            (15, 2),
            "walked again"
        );
    }
}
