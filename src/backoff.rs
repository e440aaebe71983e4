//! The one retry policy: exponential backoff with a cap and jitter. Every loop that waits
//! between tries (reconnecting to the broker, publishing events, TaskDB updates, image pulls,
//! a job's retryable steps) takes its delays from a [`Backoff`], so a fleet that lost its
//! broker or its table at the same moment does not come back in lockstep.

use std::time::Duration;

/// Delays that grow by `factor` from `first` up to `max`; each one is jittered to between half
/// and all of its nominal value ("equal jitter").
#[derive(Debug, Clone)]
pub struct Backoff {
    first: Duration,
    factor: f64,
    max: Duration,
    next: Duration,
}

impl Backoff {
    /// A backoff starting at `first`, growing by `factor` per try, never above `max`.
    pub fn new(first: Duration, factor: f64, max: Duration) -> Backoff {
        Backoff {
            first,
            factor,
            max,
            next: first.min(max),
        }
    }

    /// The nominal delay of the next try (before jitter).
    pub fn nominal(&self) -> Duration {
        self.next
    }

    /// The delay before the next try, jittered, and advances the schedule.
    pub fn next_delay(&mut self) -> Duration {
        let nominal = self.next;
        self.next = nominal.mul_f64(self.factor).min(self.max);
        jitter(nominal, random_fraction())
    }

    /// Back to the first delay (after a success).
    pub fn reset(&mut self) {
        self.next = self.first.min(self.max);
    }
}

/// `nominal` scaled into [nominal / 2, nominal] by `fraction` in [0, 1].
fn jitter(nominal: Duration, fraction: f64) -> Duration {
    nominal.mul_f64(0.5 + 0.5 * fraction.clamp(0.0, 1.0))
}

/// A uniform fraction in [0, 1) from the system's random source (0.5 if it fails).
fn random_fraction() -> f64 {
    let mut b = [0u8; 8];
    match getrandom::fill(&mut b) {
        // 53 random bits, the precision of an f64 in [0, 1).
        Ok(()) => (u64::from_le_bytes(b) >> 11) as f64 / (1u64 << 53) as f64,
        Err(_) => 0.5,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grows_to_its_cap_and_resets() {
        let mut b = Backoff::new(Duration::from_millis(100), 2.0, Duration::from_millis(500));
        let nominal: Vec<u128> = (0..5)
            .map(|_| {
                let n = b.nominal();
                let d = b.next_delay();
                assert!(d >= n / 2 && d <= n, "{d:?} outside [{:?}, {n:?}]", n / 2);
                n.as_millis()
            })
            .collect();
        assert_eq!(nominal, vec![100, 200, 400, 500, 500]);
        b.reset();
        assert_eq!(b.nominal(), Duration::from_millis(100));
    }

    #[test]
    fn jitter_spans_half_to_all() {
        let n = Duration::from_secs(10);
        assert_eq!(jitter(n, 0.0), Duration::from_secs(5));
        assert_eq!(jitter(n, 1.0), n);
        assert_eq!(jitter(n, 7.0), n);
    }
}
