//! Image cleanup, with the ECS agent's knobs: every `interval`, when the engine's disk is fuller
//! than `disk_percent`, remove up to `per_cycle` images that this agent used
//! ([`ImageLedger`]), that no exec of a live alloc needs, that are not excluded, and that were
//! last used longer than `min_age` ago, least recently used first. Images the agent never used
//! are never removed; an image a container still uses is refused by the engine (no force).
//! Which images go is a pure plan ([`plan`]), tested in a table.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use crate::clock::Clock;
use crate::docker::ContainerRuntime;
use crate::executor::images::ImageLedger;
use crate::pool::Pool;
use crate::time::Time;

/// What image cleanup may remove, and when.
#[derive(Debug, Clone, PartialEq)]
pub struct Policy {
    /// Time between cycles (ECS: `ECS_IMAGE_CLEANUP_INTERVAL`).
    pub interval: Duration,
    /// An image last used more recently than this stays (ECS: `ECS_IMAGE_MINIMUM_CLEANUP_AGE`).
    pub min_age: Duration,
    /// The most images removed per cycle (ECS: `ECS_NUM_IMAGES_DELETE_PER_CYCLE`).
    pub per_cycle: usize,
    /// Cleanup runs only while the engine's data disk is at least this full, in percent (0:
    /// always; kubelet's `image-gc-high-threshold`).
    pub disk_percent: u8,
    /// Image references never removed (ECS: `ECS_EXCLUDE_UNTRACKED_IMAGE`'s list).
    pub exclude: BTreeSet<String>,
}

/// The images to remove now, least recently used first: tracked in `used` (with their last
/// use), not `in_use` by a live exec, not excluded, and unused for at least `min_age` at `now`.
pub fn plan(
    used: &BTreeMap<String, Time>,
    in_use: &BTreeSet<String>,
    policy: &Policy,
    now: Time,
) -> Vec<String> {
    let min_age = chrono::Duration::from_std(policy.min_age).unwrap_or(chrono::Duration::MAX);
    let mut old: Vec<(&Time, &String)> = used
        .iter()
        .filter(|(image, last)| {
            !in_use.contains(*image)
                && !policy.exclude.contains(*image)
                && now.signed_duration_since(**last) >= min_age
        })
        .map(|(image, last)| (last, image))
        .collect();
    old.sort();
    old.into_iter()
        .take(policy.per_cycle)
        .map(|(_, image)| image.clone())
        .collect()
}

/// Percent of the filesystem holding `dir` in use; `None` when it cannot be read.
fn disk_used_percent(dir: &Path) -> Option<u8> {
    let s = rustix::fs::statvfs(dir).ok()?;
    let total = s.f_blocks;
    if total == 0 {
        return None;
    }
    let used = total.saturating_sub(s.f_bavail);
    u8::try_from(used.saturating_mul(100) / total).ok()
}

/// Images named by an exec of a live alloc.
async fn images_in_use(pool: &Pool) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    for a in pool.allocs().await {
        for e in a.executor().execs() {
            out.insert(e.manifest().config.image);
        }
    }
    out
}

/// One cleanup cycle; the images removed.
pub async fn cycle(
    pool: &Pool,
    runtime: &dyn ContainerRuntime,
    ledger: &ImageLedger,
    policy: &Policy,
    clock: &dyn Clock,
    fallback_dir: &Path,
) -> Vec<String> {
    if policy.disk_percent > 0 {
        let root = runtime.data_root().await.ok();
        let used = root
            .as_deref()
            .and_then(disk_used_percent)
            .or_else(|| disk_used_percent(fallback_dir));
        match used {
            Some(p) if p >= policy.disk_percent => {
                tracing::info!(
                    disk_percent = p,
                    threshold = policy.disk_percent,
                    "The engine's disk is full enough: cleaning up images."
                );
            }
            Some(_) => return Vec::new(),
            None => {
                tracing::warn!(
                    "The engine's disk use cannot be read; no image cleanup this cycle."
                );
                return Vec::new();
            }
        }
    }
    let now = clock.now();
    let in_use = images_in_use(pool).await;
    let mut removed = Vec::new();
    for image in plan(&ledger.snapshot(), &in_use, policy, now) {
        match runtime.remove_image(&image).await {
            Ok(()) => {
                tracing::info!(image = %image, "Removed an unused image.");
                ledger.forget(&image, now);
                removed.push(image);
            }
            Err(e) => {
                tracing::info!(image = %image, error = %crate::error::chain(&e), "Image not removed (in use by a container, or the engine refused); kept.");
            }
        }
    }
    if let Err(e) = ledger.save() {
        tracing::warn!(error = %crate::error::chain(&e), "Saving the image ledger failed; image uses since the last save may be forgotten (those images are then kept).");
    }
    removed
}

/// Runs [`cycle`] every `policy.interval` until `stop`.
pub async fn run_until(
    pool: Pool,
    runtime: Arc<dyn ContainerRuntime>,
    ledger: Arc<ImageLedger>,
    policy: Policy,
    clock: Arc<dyn Clock>,
    fallback_dir: std::path::PathBuf,
    stop: CancellationToken,
) {
    loop {
        tokio::select! {
            () = stop.cancelled() => {
                let _ = ledger.save();
                return;
            }
            () = tokio::time::sleep(policy.interval) => {}
        }
        cycle(
            &pool,
            runtime.as_ref(),
            &ledger,
            &policy,
            clock.as_ref(),
            &fallback_dir,
        )
        .await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(secs: i64) -> Time {
        chrono::DateTime::from_timestamp(1_700_000_000 + secs, 0).unwrap()
    }

    #[test]
    fn plan_table() {
        let policy = Policy {
            interval: Duration::from_secs(1800),
            min_age: Duration::from_secs(3600),
            per_cycle: 2,
            disk_percent: 85,
            exclude: ["keep:1".to_string()].into(),
        };
        let used: BTreeMap<String, Time> = [
            ("old:1", t(0)),
            ("older:1", t(-100)),
            ("oldest:1", t(-200)),
            ("fresh:1", t(3000)),
            ("running:1", t(-500)),
            ("keep:1", t(-900)),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v))
        .collect();
        let in_use: BTreeSet<String> = ["running:1".to_string()].into();
        // (now, per_cycle, keep the exclusion, expected): least recently used first, at most
        // per_cycle.
        let cases = [
            (t(3600), 2, true, vec!["oldest:1", "older:1"]),
            (t(3600), 10, true, vec!["oldest:1", "older:1", "old:1"]),
            (t(3599), 10, true, vec!["oldest:1", "older:1"]),
            (t(3400), 10, true, vec!["oldest:1"]),
            (t(0), 10, true, vec![]),
            (
                t(9000),
                10,
                true,
                vec!["oldest:1", "older:1", "old:1", "fresh:1"],
            ),
            (t(9000), 0, true, vec![]),
            (
                t(9000),
                10,
                false,
                vec!["keep:1", "oldest:1", "older:1", "old:1", "fresh:1"],
            ),
        ];
        for (i, (now, per_cycle, exclude, want)) in cases.into_iter().enumerate() {
            let mut p = policy.clone();
            p.per_cycle = per_cycle;
            if !exclude {
                p.exclude.clear();
            }
            assert_eq!(plan(&used, &in_use, &p, now), want, "case {i}");
        }
    }
}
