//! Which images this agent used, and when last: the only candidates of image cleanup (the
//! `imagegc` module removes none it never used, as the ECS agent leaves untracked images).
//! Kept in memory, written atomically to `STATE_DIR/images.json` by the cleanup at each cycle.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use crate::clock::Clock;
use crate::persist::PersistError;
use crate::time::Time;

/// The largest ledger file read (a line per image).
const MAX_LEDGER_BYTES: u64 = 16 << 20;

/// Images and when this agent last used each (an exec ensured it present).
#[derive(Debug)]
pub struct ImageLedger {
    path: PathBuf,
    clock: Arc<dyn Clock>,
    used: Mutex<BTreeMap<String, Time>>,
}

impl ImageLedger {
    /// The ledger saved at `path` (empty when there is none or it does not parse: untracked
    /// images are never removed, so losing it only keeps images longer).
    pub fn open(path: impl Into<PathBuf>, clock: Arc<dyn Clock>) -> ImageLedger {
        let path = path.into();
        let used = crate::persist::read_json::<BTreeMap<String, TimeJson>>(&path, MAX_LEDGER_BYTES)
            .map(|m| m.into_iter().map(|(k, v)| (k, v.0)).collect())
            .unwrap_or_default();
        ImageLedger {
            path,
            clock,
            used: Mutex::new(used),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, BTreeMap<String, Time>> {
        crate::par::lock(&self.used)
    }

    /// `image` is used now.
    pub fn used(&self, image: &str) {
        let now = self.clock.now();
        self.lock().insert(image.to_string(), now);
    }

    /// Every tracked image and when it was last used.
    pub fn snapshot(&self) -> BTreeMap<String, Time> {
        self.lock().clone()
    }

    /// Stops tracking `image` (it was removed), unless it was used since `seen`.
    pub fn forget(&self, image: &str, seen: Time) {
        let mut m = self.lock();
        if m.get(image).is_some_and(|t| *t <= seen) {
            m.remove(image);
        }
    }

    /// Writes the ledger atomically.
    ///
    /// # Errors
    /// The write failed.
    pub fn save(&self) -> Result<(), PersistError> {
        let m: BTreeMap<String, TimeJson> = self
            .snapshot()
            .into_iter()
            .map(|(k, v)| (k, TimeJson(v)))
            .collect();
        crate::persist::write_json_atomic(&self.path, &m)
    }
}

/// A time as Go's JSON writes it.
#[derive(serde::Serialize, serde::Deserialize)]
struct TimeJson(#[serde(with = "crate::time::go")] Time);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn uses_survive_a_save_and_forgetting_keeps_a_newer_use() {
        let dir = tempfile::tempdir().unwrap();
        let clock = crate::clock::ManualClock::new(
            chrono::DateTime::from_timestamp(1_700_000_000, 0).unwrap(),
        );
        let path = dir.path().join("images.json");
        let l = ImageLedger::open(&path, Arc::new(clock.clone()));
        l.used("a:1");
        let seen = clock.now();
        clock.advance(chrono::Duration::seconds(5));
        l.used("b:1");
        l.save().unwrap();
        let again = ImageLedger::open(&path, Arc::new(clock.clone()));
        assert_eq!(again.snapshot(), l.snapshot());
        // b was used after `seen`: a removal decided before then does not forget it.
        again.forget("a:1", seen);
        again.forget("b:1", seen);
        assert_eq!(again.snapshot().keys().collect::<Vec<_>>(), vec!["b:1"]);
        std::fs::write(&path, b"{not json").unwrap();
        assert!(
            ImageLedger::open(&path, Arc::new(clock))
                .snapshot()
                .is_empty()
        );
    }
}
