//! The pool's resource accounting and admission, and its restore plan: pure functions over
//! plain values (no I/O, no clock reads), table-tested.
//!
//! - [`available`]: total minus the resources of allocs that have not expired.
//! - [`offers`]: one offer (id `"1"`) with everything available, or none when `mem`, `cpu` or
//!   `disk` is exhausted or the pool is stopped.
//! - [`admit`]: whether `want` fits, reclaiming expired allocs most-expired first when it does not.
//! - [`grant_keepalive`]: a requested keepalive clamped to [`MAX_KEEPALIVE`].
//! - [`idle_for`]: whether every alloc has been expired for a while (scale-in).
//! - [`plan_restore`]: what to do with `state.json` and the `allocs/<id>/` directories at start.

use std::collections::{BTreeMap, BTreeSet};

use chrono::Duration;
use thiserror::Error;

use crate::error::{Classify, Kind};
use crate::resources::{CPU, DISK, MEM, Resources};
use crate::time::Time;

/// Keepalive granted to a new alloc.
pub const INITIAL_KEEPALIVE: Duration = Duration::minutes(2);
/// Longest keepalive granted at once.
pub const MAX_KEEPALIVE: Duration = Duration::minutes(5);
/// The id of the pool's single offer.
pub const OFFER_ID: &str = "1";

/// An alloc as accounting sees it.
#[derive(Debug, Clone, PartialEq)]
pub struct AllocView {
    /// Alloc id.
    pub id: String,
    /// Resources it holds.
    pub resources: Resources,
    /// When it expires unless kept alive.
    pub expires: Time,
}

impl AllocView {
    fn expired(&self, now: Time) -> bool {
        self.expires <= now
    }
}

/// An offer of resources.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
#[serde(rename_all = "PascalCase")]
pub struct Offer {
    /// Offer id (always [`OFFER_ID`]).
    #[serde(rename = "ID")]
    pub id: String,
    /// What is available.
    pub available: Resources,
}

/// Why an alloc request was refused.
#[derive(Debug, Error, PartialEq)]
pub enum AdmitError {
    /// The request names no resources.
    #[error("alloc request wants no resources")]
    EmptyWant,
    /// The pool is shutting down.
    #[error("the pool is shutting down")]
    Stopped,
    /// Not enough resources, even after reclaiming every expired alloc.
    #[error("offer expired: {want} does not fit in {available} (after reclaiming expired allocs)")]
    NoRoom {
        /// What was asked.
        want: Resources,
        /// What would be available.
        available: Resources,
    },
}

impl Classify for AdmitError {
    fn kind(&self) -> Kind {
        match self {
            AdmitError::EmptyWant => Kind::Precondition,
            AdmitError::Stopped => Kind::Unavailable,
            AdmitError::NoRoom { .. } => Kind::ResourcesExhausted,
        }
    }
}

/// Total minus the resources of allocs that have not expired at `now`.
pub fn available(total: &Resources, allocs: &[AllocView], now: Time) -> Resources {
    allocs
        .iter()
        .filter(|a| !a.expired(now))
        .fold(total.clone(), |acc, a| acc.sub(&a.resources))
}

/// The pool's offers at `now`.
pub fn offers(total: &Resources, allocs: &[AllocView], now: Time, stopped: bool) -> Vec<Offer> {
    let avail = available(total, allocs, now);
    if stopped || [MEM, CPU, DISK].iter().any(|k| avail.get(k) <= 0.0) {
        return Vec::new();
    }
    vec![Offer {
        id: OFFER_ID.to_string(),
        available: avail,
    }]
}

/// The allocs to reclaim (most expired first) so that `want` fits; empty when it fits already.
///
/// # Errors
/// [`AdmitError`] when `want` is empty, the pool is stopped, or nothing makes room.
pub fn admit(
    total: &Resources,
    allocs: &[AllocView],
    want: &Resources,
    now: Time,
    stopped: bool,
) -> Result<Vec<String>, AdmitError> {
    if want.equivalent(&Resources::default()) {
        return Err(AdmitError::EmptyWant);
    }
    if stopped {
        return Err(AdmitError::Stopped);
    }
    // Every alloc counts, expired or not, until it is reclaimed.
    let mut free = allocs
        .iter()
        .fold(total.clone(), |acc, a| acc.sub(&a.resources));
    let mut expired: Vec<&AllocView> = allocs.iter().filter(|a| a.expired(now)).collect();
    expired.sort_by(|a, b| a.expires.cmp(&b.expires).then_with(|| a.id.cmp(&b.id)));
    let mut reclaim = Vec::new();
    let mut candidates = expired.into_iter();
    while !free.available(want) {
        match candidates.next() {
            Some(a) => {
                free = free.add(&a.resources);
                reclaim.push(a.id.clone());
            }
            None => {
                return Err(AdmitError::NoRoom {
                    want: want.clone(),
                    available: free,
                });
            }
        }
    }
    Ok(reclaim)
}

/// The keepalive granted for a requested one: at most [`MAX_KEEPALIVE`], and never negative.
pub fn grant_keepalive(requested: Duration) -> Duration {
    requested.clamp(Duration::zero(), MAX_KEEPALIVE)
}

/// Whether the pool is idle: every alloc has been expired for at least `d` (no allocs is idle).
/// When not idle, also how long until it could be (the longest remaining wait).
pub fn idle_for(allocs: &[AllocView], now: Time, d: Duration) -> (bool, Duration) {
    let wait = allocs
        .iter()
        .map(|a| (a.expires + d) - now)
        .max()
        .unwrap_or_else(Duration::zero);
    if wait <= Duration::zero() {
        (true, Duration::zero())
    } else {
        (false, wait)
    }
}

/// What the start-up scan found for `state.json`.
#[derive(Debug, Clone, PartialEq)]
pub enum StateScan {
    /// Absent.
    Missing,
    /// Decoded: alloc id to resources.
    Ok(BTreeMap<String, Resources>),
    /// Present but unusable.
    Corrupt(String),
}

/// What the scan found for one `allocs/<id>/` directory's `meta.json`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MetaScan {
    /// Readable.
    Ok,
    /// Readable, and the alloc ended before the restart: its [`ENDED_MARK`] is there, written
    /// once its containers were gone.
    Ended,
    /// Absent.
    Missing,
    /// Present but unusable.
    Corrupt(String),
}

/// One restore step.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub enum RestoreAction {
    /// Move an unusable `state.json` aside, loudly.
    QuarantineState {
        /// Why.
        reason: String,
    },
    /// Restore the alloc (its executor re-attaches its execs); it starts expired until a
    /// keepalive arrives.
    Restore {
        /// Alloc id.
        id: String,
    },
    /// The alloc was freed before the restart (a valid state no longer lists it): kill its
    /// containers and record its end. Its directory stays, as a zombie.
    EndUnlisted {
        /// Alloc id.
        id: String,
    },
    /// Leave a zombie alone: the alloc ended before the restart, and nothing of it runs.
    Zombie {
        /// Alloc id.
        id: String,
    },
    /// Leave a directory without a usable `meta.json` alone, and report it.
    Skip {
        /// Alloc id.
        id: String,
        /// Why.
        reason: String,
    },
    /// The state lists an alloc with no directory; report and drop it.
    Orphan {
        /// Alloc id.
        id: String,
    },
}

/// The file an alloc's directory gets once the alloc has ended (its containers killed and
/// removed): the restore leaves such a zombie alone.
pub const ENDED_MARK: &str = "ended";

/// Plans the restore. With a valid `state.json`, listed allocs are restored and unlisted ones
/// ended, unless they already were (their [`ENDED_MARK`]): those are left alone. Without one
/// (missing or corrupt), nothing is known to be freed, so every alloc with a usable `meta.json`
/// and no end mark is restored: running work is never killed on a guess, and a day of zombies
/// does not come back as live allocs. A valid state's word beats a mark: a listed alloc is
/// restored even with one.
pub fn plan_restore(state: &StateScan, dirs: &[(String, MetaScan)]) -> Vec<RestoreAction> {
    use RestoreAction::*;
    let mut out = Vec::new();
    let listed: Option<BTreeSet<&String>> = match state {
        StateScan::Ok(m) => Some(m.keys().collect()),
        StateScan::Corrupt(reason) => {
            out.push(QuarantineState {
                reason: reason.clone(),
            });
            None
        }
        StateScan::Missing => None,
    };
    for (id, meta) in dirs {
        out.push(match meta {
            MetaScan::Missing => Skip {
                id: id.clone(),
                reason: "no meta.json".into(),
            },
            MetaScan::Corrupt(r) => Skip {
                id: id.clone(),
                reason: r.clone(),
            },
            MetaScan::Ok => match &listed {
                Some(l) if !l.contains(id) => EndUnlisted { id: id.clone() },
                _ => Restore { id: id.clone() },
            },
            MetaScan::Ended => match &listed {
                Some(l) if l.contains(id) => Restore { id: id.clone() },
                _ => Zombie { id: id.clone() },
            },
        });
    }
    if let StateScan::Ok(m) = state {
        let have: BTreeSet<&String> = dirs.iter().map(|(id, _)| id).collect();
        out.extend(
            m.keys()
                .filter(|id| !have.contains(id))
                .map(|id| Orphan { id: id.clone() }),
        );
    }
    out.sort();
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    const GIB: f64 = (1u64 << 30) as f64;

    fn t(s: i64) -> Time {
        crate::time::parse("2026-01-01T00:00:00Z").unwrap() + Duration::seconds(s)
    }

    fn r(mem_gib: f64, cpu: f64, disk_gib: f64) -> Resources {
        Resources::from_pairs([(MEM, mem_gib * GIB), (CPU, cpu), (DISK, disk_gib * GIB)])
    }

    fn alloc(id: &str, res: Resources, expires: i64) -> AllocView {
        AllocView {
            id: id.into(),
            resources: res,
            expires: t(expires),
        }
    }

    #[test]
    fn offers_and_accounting() {
        let total = r(16.0, 4.0, 100.0);
        assert_eq!(
            offers(&total, &[], t(0), false),
            vec![Offer {
                id: "1".into(),
                available: total.clone()
            }]
        );
        let half = alloc("a", r(8.0, 0.0, 50.0), 100);
        let o = offers(&total, std::slice::from_ref(&half), t(0), false);
        assert_eq!(o[0].available, r(8.0, 4.0, 50.0));
        // Expired allocs do not count against offers.
        assert_eq!(
            offers(&total, std::slice::from_ref(&half), t(100), false)[0].available,
            total
        );
        // No offer when a key is exhausted, or when stopped.
        assert!(offers(&total, &[alloc("b", r(16.0, 0.0, 0.0), 100)], t(0), false).is_empty());
        assert!(offers(&total, &[], t(0), true).is_empty());
    }

    #[test]
    fn admission_reclaims_most_expired_first() {
        let total = r(16.0, 4.0, 100.0);
        let allocs = vec![
            alloc("fresh", r(4.0, 1.0, 10.0), 500),
            alloc("old", r(4.0, 1.0, 10.0), 10),
            alloc("older", r(4.0, 1.0, 10.0), 5),
            alloc("newer-expired", r(4.0, 1.0, 10.0), 50),
        ];
        assert_eq!(
            admit(&total, &allocs, &r(1.0, 0.0, 0.0), t(100), false),
            Ok(vec!["older".to_string()])
        );
        assert_eq!(
            admit(&total, &allocs, &r(8.0, 0.0, 0.0), t(100), false),
            Ok(vec!["older".to_string(), "old".to_string()])
        );
        let all_but_fresh = admit(&total, &allocs, &r(12.0, 3.0, 0.0), t(100), false).unwrap();
        assert_eq!(all_but_fresh, vec!["older", "old", "newer-expired"]);
        let e = admit(&total, &allocs, &r(13.0, 0.0, 0.0), t(100), false).unwrap_err();
        assert!(matches!(e, AdmitError::NoRoom { .. }));
        assert_eq!(e.kind(), Kind::ResourcesExhausted);
        assert_eq!(
            admit(&total, &[], &Resources::default(), t(0), false),
            Err(AdmitError::EmptyWant)
        );
        assert_eq!(
            admit(&total, &[], &r(1.0, 0.0, 0.0), t(0), true),
            Err(AdmitError::Stopped)
        );
        assert_eq!(
            admit(&total, &[], &total, t(0), false),
            Ok(vec![]),
            "the whole pool fits"
        );
    }

    #[test]
    fn keepalive_caps() {
        assert_eq!(
            grant_keepalive(Duration::nanoseconds(1)),
            Duration::nanoseconds(1)
        );
        assert_eq!(grant_keepalive(Duration::minutes(2)), Duration::minutes(2));
        assert_eq!(grant_keepalive(Duration::hours(1)), MAX_KEEPALIVE);
        assert_eq!(grant_keepalive(Duration::seconds(-5)), Duration::zero());
    }

    #[test]
    fn idleness() {
        assert_eq!(
            idle_for(&[], t(0), Duration::minutes(10)),
            (true, Duration::zero())
        );
        let allocs = vec![
            alloc("a", r(1.0, 1.0, 1.0), 0),
            alloc("b", r(1.0, 1.0, 1.0), 100),
        ];
        assert_eq!(
            idle_for(&allocs, t(50), Duration::seconds(10)),
            (false, Duration::seconds(60))
        );
        assert_eq!(
            idle_for(&allocs, t(110), Duration::seconds(10)),
            (true, Duration::zero())
        );
    }

    #[test]
    fn restore_table() {
        use RestoreAction::*;
        let listed = |ids: &[&str]| {
            StateScan::Ok(
                ids.iter()
                    .map(|i| (i.to_string(), r(1.0, 1.0, 1.0)))
                    .collect(),
            )
        };
        let d = |id: &str, m: MetaScan| (id.to_string(), m);
        type Case = (
            &'static str,
            StateScan,
            Vec<(String, MetaScan)>,
            Vec<RestoreAction>,
        );
        let cases: Vec<Case> = vec![
            ("empty", StateScan::Missing, vec![], vec![]),
            (
                "listed",
                listed(&["a"]),
                vec![d("a", MetaScan::Ok)],
                vec![Restore { id: "a".into() }],
            ),
            (
                "unlisted is ended",
                listed(&["a"]),
                vec![d("a", MetaScan::Ok), d("b", MetaScan::Ok)],
                vec![Restore { id: "a".into() }, EndUnlisted { id: "b".into() }],
            ),
            (
                "an ended alloc is left alone, unless a valid state lists it",
                listed(&["a"]),
                vec![d("a", MetaScan::Ended), d("b", MetaScan::Ended)],
                vec![Restore { id: "a".into() }, Zombie { id: "b".into() }],
            ),
            (
                "without a state, ended allocs stay zombies",
                StateScan::Missing,
                vec![d("a", MetaScan::Ok), d("b", MetaScan::Ended)],
                vec![Restore { id: "a".into() }, Zombie { id: "b".into() }],
            ),
            (
                "orphan",
                listed(&["a", "gone"]),
                vec![d("a", MetaScan::Ok)],
                vec![Restore { id: "a".into() }, Orphan { id: "gone".into() }],
            ),
            (
                "missing meta",
                listed(&["a"]),
                vec![d("a", MetaScan::Missing)],
                vec![Skip {
                    id: "a".into(),
                    reason: "no meta.json".into(),
                }],
            ),
            (
                "corrupt meta",
                listed(&["a"]),
                vec![d("a", MetaScan::Corrupt("bad".into()))],
                vec![Skip {
                    id: "a".into(),
                    reason: "bad".into(),
                }],
            ),
            (
                "corrupt state restores every alloc, kills none",
                StateScan::Corrupt("torn".into()),
                vec![d("a", MetaScan::Ok), d("b", MetaScan::Ok)],
                vec![
                    QuarantineState {
                        reason: "torn".into(),
                    },
                    Restore { id: "a".into() },
                    Restore { id: "b".into() },
                ],
            ),
            (
                "missing state restores too",
                StateScan::Missing,
                vec![d("a", MetaScan::Ok)],
                vec![Restore { id: "a".into() }],
            ),
        ];
        for (what, state, dirs, mut want) in cases {
            want.sort();
            assert_eq!(plan_restore(&state, &dirs), want, "{what}");
        }
    }
}
