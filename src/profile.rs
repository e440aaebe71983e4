//! Resource profiling values: running [`Stats`] per metric (stored in manifests), the exported
//! [`Profile`] derived from them, and [`Gauges`] (latest values).

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::time::{self, Time};

/// Latest value per metric: `cpu` (cores), `mem` (bytes), `tmp` and `disk` (bytes).
pub type Gauges = BTreeMap<String, f64>;

/// Running statistics of one metric.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct Stat {
    /// Earliest observation time.
    #[serde(with = "time::go", default = "time::zero")]
    pub first: Time,
    /// Latest observation time.
    #[serde(with = "time::go", default = "time::zero")]
    pub last: Time,
    /// Number of observations.
    #[serde(default)]
    pub n: i64,
    /// Sum of observed values.
    #[serde(default)]
    pub sum: f64,
    /// Sum of squares of observed values.
    #[serde(default)]
    pub sum_of_squares: f64,
    /// Largest observed value (starts at 0, so negative values never raise it).
    #[serde(default)]
    pub max: f64,
}

impl Default for Stat {
    fn default() -> Self {
        Stat {
            first: time::zero(),
            last: time::zero(),
            n: 0,
            sum: 0.0,
            sum_of_squares: 0.0,
            max: 0.0,
        }
    }
}

/// Running statistics per metric name.
pub type Stats = BTreeMap<String, Stat>;

/// Records observation `v` of metric `name` at `t`.
pub fn observe(stats: &mut Stats, t: Time, name: &str, v: f64) {
    let s = stats.entry(name.to_string()).or_default();
    if s.n == 0 || t < s.first {
        s.first = t;
    }
    if s.n == 0 || t > s.last {
        s.last = t;
    }
    s.n += 1;
    s.sum += v;
    s.sum_of_squares += v * v;
    if v > s.max {
        s.max = v;
    }
}

/// Summary of one metric in a [`Profile`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct ProfileEntry {
    /// Largest value.
    #[serde(default)]
    pub max: f64,
    /// Mean (-1 when there are no observations).
    #[serde(default)]
    pub mean: f64,
    /// Population variance (-1 when there are no observations).
    #[serde(default)]
    pub var: f64,
    /// Number of observations.
    #[serde(default)]
    pub n: i64,
    /// Earliest observation.
    #[serde(with = "time::go", default = "time::zero")]
    pub first: Time,
    /// Latest observation.
    #[serde(with = "time::go", default = "time::zero")]
    pub last: Time,
}

/// Exported resource profile per metric.
pub type Profile = BTreeMap<String, ProfileEntry>;

/// The profile of `stats`: mean = sum/n, var = sum_sq/n - mean^2.
pub fn profile(stats: &Stats) -> Profile {
    stats
        .iter()
        .map(|(k, s)| {
            let (mean, var) = if s.n == 0 {
                (-1.0, -1.0)
            } else {
                let n = s.n as f64;
                let mean = s.sum / n;
                (mean, s.sum_of_squares / n - mean * mean)
            };
            (
                k.clone(),
                ProfileEntry {
                    max: s.max,
                    mean,
                    var,
                    n: s.n,
                    first: s.first,
                    last: s.last,
                },
            )
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::Duration;

    #[test]
    fn shuffled_observations() {
        let base = time::parse("2023-01-01T00:00:00Z").unwrap();
        let mut stats = Stats::new();
        for i in [3, 7, 0, 9, 1, 5, 2, 8, 4, 6] {
            observe(&mut stats, base + Duration::seconds(i), "mem", i as f64);
        }
        let s = &stats["mem"];
        assert_eq!(s.n, 10);
        assert_eq!(s.first, base);
        assert_eq!(s.last, base + Duration::seconds(9));
        assert_eq!(s.max, 9.0);
        let p = profile(&stats);
        assert_eq!(p["mem"].mean, 4.5);
        assert!((p["mem"].var - 8.25).abs() < 1e-9);
    }

    #[test]
    fn constant_series_has_zero_variance_and_negatives_keep_max() {
        let t = time::parse("2023-01-01T00:00:00Z").unwrap();
        let mut stats = Stats::new();
        observe(&mut stats, t, "disk", 5.0);
        observe(&mut stats, t, "disk", 5.0);
        observe(&mut stats, t, "neg", -3.0);
        let p = profile(&stats);
        assert_eq!(p["disk"].var, 0.0);
        assert_eq!(p["neg"].max, 0.0);
        let empty = profile(&Stats::from([("x".into(), Stat::default())]));
        assert_eq!((empty["x"].mean, empty["x"].var), (-1.0, -1.0));
    }
}
