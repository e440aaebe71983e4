//! Reflow's `Resources`: a map from resource name to amount. Well-known keys are `mem` (bytes),
//! `cpu` (cores) and `disk` (bytes); CPU feature keys such as `intel_avx2` count cores that have
//! the feature. A missing key is 0.

use std::collections::BTreeMap;
use std::fmt;

use serde::{Deserialize, Serialize};
use thiserror::Error;

use crate::error::{Classify, Kind};

/// Memory, in bytes.
pub const MEM: &str = "mem";
/// CPU, in cores.
pub const CPU: &str = "cpu";
/// Disk, in bytes.
pub const DISK: &str = "disk";

/// An amount of named resources.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Resources(pub BTreeMap<String, f64>);

/// Why a resources value from outside was rejected.
#[derive(Debug, Error, PartialEq)]
pub enum ResourcesError {
    /// A value is negative, NaN or infinite.
    #[error("invalid resources: {key} = {value} (must be a finite, non-negative number)")]
    BadValue {
        /// The resource name (truncated).
        key: String,
        /// The value.
        value: f64,
    },
    /// A key is empty or unreasonably long.
    #[error("invalid resources: key {key:?} must be 1 to 64 characters")]
    BadKey {
        /// The resource name (truncated).
        key: String,
    },
}

impl Classify for ResourcesError {
    fn kind(&self) -> Kind {
        Kind::Invalid
    }
}

impl Resources {
    /// Resources from (key, value) pairs.
    pub fn from_pairs<'a>(pairs: impl IntoIterator<Item = (&'a str, f64)>) -> Self {
        Resources(pairs.into_iter().map(|(k, v)| (k.to_string(), v)).collect())
    }

    /// The amount of `key` (0 when absent).
    pub fn get(&self, key: &str) -> f64 {
        self.0.get(key).copied().unwrap_or(0.0)
    }

    /// Sets `key` to `value`.
    pub fn set(&mut self, key: &str, value: f64) {
        self.0.insert(key.to_string(), value);
    }

    /// Memory in bytes.
    pub fn mem(&self) -> f64 {
        self.get(MEM)
    }

    /// Whether every key of `want` is covered: `self[k] >= want[k]`.
    pub fn available(&self, want: &Resources) -> bool {
        want.0.iter().all(|(k, v)| self.get(k) >= *v)
    }

    fn combine(&self, other: &Resources, f: impl Fn(f64, f64) -> f64) -> Resources {
        let mut out = self.clone();
        for (k, v) in &other.0 {
            let cur = out.get(k);
            out.0.insert(k.clone(), f(cur, *v));
        }
        out
    }

    /// `self + other`, key by key.
    pub fn add(&self, other: &Resources) -> Resources {
        self.combine(other, |a, b| a + b)
    }

    /// `self - other`, key by key (may go negative; see [`Resources::available`]).
    pub fn sub(&self, other: &Resources) -> Resources {
        self.combine(other, |a, b| a - b)
    }

    /// Key-wise minimum over the keys of both.
    pub fn min(&self, other: &Resources) -> Resources {
        let mut out = self.combine(other, f64::min);
        for (k, v) in out.0.iter_mut() {
            if !other.0.contains_key(k) {
                *v = v.min(0.0);
            }
        }
        out
    }

    /// Key-wise maximum over the keys of both.
    pub fn max(&self, other: &Resources) -> Resources {
        let mut out = self.combine(other, f64::max);
        for (k, v) in out.0.iter_mut() {
            if !other.0.contains_key(k) {
                *v = v.max(0.0);
            }
        }
        out
    }

    /// Every value multiplied by `factor`.
    pub fn scale(&self, factor: f64) -> Resources {
        Resources(
            self.0
                .iter()
                .map(|(k, v)| (k.clone(), v * factor))
                .collect(),
        )
    }

    /// Equality where a missing key equals 0, so `{}` equals `{"mem": 0}`.
    pub fn equivalent(&self, other: &Resources) -> bool {
        self.0
            .keys()
            .chain(other.0.keys())
            .all(|k| self.get(k) == other.get(k))
    }

    /// `|Δmem| / 8 GiB + |Δcpu|`, for ranking offers.
    pub fn scaled_distance(&self, other: &Resources) -> f64 {
        const GIB8: f64 = 8.0 * (1u64 << 30) as f64;
        (self.get(MEM) - other.get(MEM)).abs() / GIB8 + (self.get(CPU) - other.get(CPU)).abs()
    }

    /// Checks values from outside: finite, non-negative, sane keys.
    ///
    /// # Errors
    /// The first bad key or value.
    pub fn validate(&self) -> Result<(), ResourcesError> {
        for (k, v) in &self.0 {
            if k.is_empty() || k.len() > 64 {
                return Err(ResourcesError::BadKey {
                    key: k.chars().take(80).collect(),
                });
            }
            if !v.is_finite() || *v < 0.0 {
                return Err(ResourcesError::BadValue {
                    key: k.clone(),
                    value: *v,
                });
            }
        }
        Ok(())
    }
}

/// Formats a byte count with binary units and one decimal, e.g. `1.5GiB`.
pub fn format_size(bytes: f64) -> String {
    const UNITS: [&str; 7] = ["B", "KiB", "MiB", "GiB", "TiB", "PiB", "EiB"];
    let mut v = bytes;
    let mut i = 0;
    while v.abs() >= 1024.0 && i < UNITS.len() - 1 {
        v /= 1024.0;
        i += 1;
    }
    if i == 0 {
        format!("{v}B")
    } else {
        format!("{v:.1}{}", UNITS[i])
    }
}

impl fmt::Display for Resources {
    /// `{mem:<size> cpu:<n> disk:<size> key:value...}` with non-zero extra keys sorted; `{}` when
    /// empty.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.0.is_empty() {
            return f.write_str("{}");
        }
        write!(
            f,
            "{{mem:{} cpu:{} disk:{}",
            format_size(self.get(MEM)),
            self.get(CPU),
            format_size(self.get(DISK))
        )?;
        for (k, v) in &self.0 {
            if [MEM, CPU, DISK].contains(&k.as_str()) || *v == 0.0 {
                continue;
            }
            write!(f, " {k}:{v}")?;
        }
        f.write_str("}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const GIB: f64 = (1u64 << 30) as f64;

    fn r(pairs: &[(&str, f64)]) -> Resources {
        Resources::from_pairs(pairs.iter().copied())
    }

    #[test]
    fn arithmetic() {
        let a = r(&[("mem", 10.0), ("cpu", 4.0)]);
        let b = r(&[("mem", 3.0), ("disk", 5.0)]);
        assert_eq!(a.add(&b), r(&[("mem", 13.0), ("cpu", 4.0), ("disk", 5.0)]));
        assert_eq!(a.sub(&b), r(&[("mem", 7.0), ("cpu", 4.0), ("disk", -5.0)]));
        assert_eq!(a.min(&b), r(&[("mem", 3.0), ("cpu", 0.0), ("disk", 0.0)]));
        assert_eq!(a.max(&b), r(&[("mem", 10.0), ("cpu", 4.0), ("disk", 5.0)]));
        assert_eq!(a.scale(0.5), r(&[("mem", 5.0), ("cpu", 2.0)]));
        assert!(a.available(&r(&[("mem", 10.0)])));
        assert!(!a.available(&r(&[("mem", 10.5)])));
        assert!(!a.available(&r(&[("gpu", 1.0)])));
        assert!(a.available(&Resources::default()));
        assert!(Resources::default().equivalent(&r(&[("mem", 0.0)])));
        assert!(!a.equivalent(&b));
        assert_eq!(
            r(&[("mem", 8.0 * GIB), ("cpu", 1.0)]).scaled_distance(&Resources::default()),
            2.0
        );
    }

    #[test]
    fn display() {
        assert_eq!(Resources::default().to_string(), "{}");
        let x = r(&[
            ("mem", 2.0 * GIB),
            ("cpu", 2.0),
            ("disk", 1.5 * GIB),
            ("intel_avx", 2.0),
            ("zero", 0.0),
        ]);
        assert_eq!(x.to_string(), "{mem:2.0GiB cpu:2 disk:1.5GiB intel_avx:2}");
        assert_eq!(format_size(512.0), "512B");
    }

    #[test]
    fn json_and_validation() {
        let x: Resources = serde_json::from_str(r#"{"mem": 1073741824, "cpu": 1}"#).unwrap();
        assert_eq!(x.mem(), GIB);
        assert_eq!(
            serde_json::to_string(&x).unwrap(),
            r#"{"cpu":1.0,"mem":1073741824.0}"#
        );
        assert!(x.validate().is_ok());
        assert!(matches!(
            r(&[("mem", -1.0)]).validate(),
            Err(ResourcesError::BadValue { .. })
        ));
        assert!(matches!(
            r(&[("", 1.0)]).validate(),
            Err(ResourcesError::BadKey { .. })
        ));
        assert!(r(&[("cpu", f64::INFINITY)]).validate().is_err());
    }
}
