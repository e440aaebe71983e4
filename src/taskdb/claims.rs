//! Fleet-wide claims on commands: before an agent starts a job's container it claims the
//! command id in the claim store (a conditional write: command id → owner, lease expiry) and
//! renews the claim while the job runs. An agent that receives a command another agent holds a
//! live claim on does not start it: it waits, keeping the delivery, until the claim is done
//! (then it settles the duplicate without running it) or has expired (then it takes over).
//! [`MemoryClaims`] for tests; [`super::dynamodb::DynamoDbTaskDb`] keeps claims in the TaskDB
//! table (docs/taskdb.md).

use std::collections::HashMap;
use std::fmt;
use std::sync::Mutex;

use async_trait::async_trait;

use super::TaskDbError;
use crate::digest::Digest;
use crate::time::Time;

/// The row id of the claim on command `command_id`: SHA-256 of `claim/<command id>`.
pub fn claim_row(command_id: &str) -> Digest {
    Digest::of(format!("claim/{command_id}").as_bytes())
}

/// What a claim attempt found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Claim {
    /// The command is this agent's now (it was free, expired, or already ours).
    Ours,
    /// Another agent holds a live claim.
    Held {
        /// The owner (an agent id).
        owner: String,
        /// When its lease runs out unless renewed.
        until: Time,
    },
    /// An agent finished the command (its outcome was published before it said so).
    Done {
        /// Who finished it.
        owner: String,
    },
}

/// Where claims live.
#[async_trait]
pub trait ClaimStore: Send + Sync + fmt::Debug {
    /// Claims `command_id` for `owner` until `until`, if nobody else holds a live claim and it
    /// is not done. `now` decides what has expired.
    async fn claim(
        &self,
        command_id: &str,
        owner: &str,
        now: Time,
        until: Time,
    ) -> Result<Claim, TaskDbError>;
    /// Moves `owner`'s claim to `until`; false when it is no longer `owner`'s (it expired and
    /// another agent took over, or it is done).
    async fn renew(&self, command_id: &str, owner: &str, until: Time) -> Result<bool, TaskDbError>;
    /// Marks `owner`'s claim done: later deliveries anywhere are settled without running. Kept
    /// until `expires` (the store may delete it after).
    async fn done(&self, command_id: &str, owner: &str, expires: Time) -> Result<(), TaskDbError>;
    /// Gives up `owner`'s live claim (the job was handed back unstarted), so another agent can
    /// take it at once.
    async fn release(&self, command_id: &str, owner: &str) -> Result<(), TaskDbError>;
}

/// One claim as [`MemoryClaims`] keeps it.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Row {
    owner: String,
    until: Time,
    done: bool,
}

/// Claims in memory, shared by the agents of one test.
#[derive(Debug, Default)]
pub struct MemoryClaims {
    rows: Mutex<HashMap<String, Row>>,
}

impl MemoryClaims {
    fn rows(&self) -> std::sync::MutexGuard<'_, HashMap<String, Row>> {
        crate::par::lock(&self.rows)
    }
}

/// A claim row as the rule reads it: owner, lease end, done.
pub type Current<'a> = Option<(&'a str, Time, bool)>;

/// The decision of a claim attempt on the current row, shared by every store: a pure function,
/// so the rule is tested in one table.
pub fn decide(current: Current<'_>, owner: &str, now: Time) -> Claim {
    match current {
        None => Claim::Ours,
        Some((o, _, true)) => Claim::Done {
            owner: o.to_string(),
        },
        Some((o, _, false)) if o == owner => Claim::Ours,
        Some((_, until, false)) if until <= now => Claim::Ours,
        Some((o, until, false)) => Claim::Held {
            owner: o.to_string(),
            until,
        },
    }
}

#[async_trait]
impl ClaimStore for MemoryClaims {
    async fn claim(
        &self,
        command_id: &str,
        owner: &str,
        now: Time,
        until: Time,
    ) -> Result<Claim, TaskDbError> {
        let mut rows = self.rows();
        let d = decide(
            rows.get(command_id)
                .map(|r| (r.owner.as_str(), r.until, r.done)),
            owner,
            now,
        );
        if d == Claim::Ours {
            rows.insert(
                command_id.to_string(),
                Row {
                    owner: owner.to_string(),
                    until,
                    done: false,
                },
            );
        }
        Ok(d)
    }

    async fn renew(&self, command_id: &str, owner: &str, until: Time) -> Result<bool, TaskDbError> {
        Ok(match self.rows().get_mut(command_id) {
            Some(r) if r.owner == owner && !r.done => {
                r.until = until;
                true
            }
            _ => false,
        })
    }

    async fn done(&self, command_id: &str, owner: &str, expires: Time) -> Result<(), TaskDbError> {
        if let Some(r) = self.rows().get_mut(command_id)
            && r.owner == owner
        {
            r.done = true;
            r.until = expires;
        }
        Ok(())
    }

    async fn release(&self, command_id: &str, owner: &str) -> Result<(), TaskDbError> {
        let mut rows = self.rows();
        if rows
            .get(command_id)
            .is_some_and(|r| r.owner == owner && !r.done)
        {
            rows.remove(command_id);
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(s: i64) -> Time {
        chrono::DateTime::from_timestamp(1_700_000_000 + s, 0).unwrap()
    }

    #[test]
    fn the_claim_rule_in_one_table() {
        let now = t(100);
        let cases: &[(Current<'_>, Claim)] = &[
            (None, Claim::Ours),
            (Some(("me", t(200), false)), Claim::Ours),
            (Some(("me", t(50), false)), Claim::Ours),
            (Some(("other", t(50), false)), Claim::Ours),
            (Some(("other", t(100), false)), Claim::Ours),
            (
                Some(("other", t(101), false)),
                Claim::Held {
                    owner: "other".into(),
                    until: t(101),
                },
            ),
            (
                Some(("other", t(50), true)),
                Claim::Done {
                    owner: "other".into(),
                },
            ),
            (
                Some(("me", t(200), true)),
                Claim::Done { owner: "me".into() },
            ),
        ];
        for (current, want) in cases {
            assert_eq!(&decide(*current, "me", now), want, "{current:?}");
        }
    }

    #[tokio::test]
    async fn a_claim_is_held_renewed_released_and_done() {
        let c = MemoryClaims::default();
        assert_eq!(c.claim("j", "a", t(0), t(30)).await.unwrap(), Claim::Ours);
        assert!(matches!(
            c.claim("j", "b", t(10), t(40)).await.unwrap(),
            Claim::Held { .. }
        ));
        assert!(c.renew("j", "a", t(60)).await.unwrap());
        assert!(!c.renew("j", "b", t(60)).await.unwrap());
        assert!(matches!(
            c.claim("j", "b", t(45), t(75)).await.unwrap(),
            Claim::Held { .. }
        ));
        // Expired: b takes over, and a's renewal now fails.
        assert_eq!(c.claim("j", "b", t(61), t(91)).await.unwrap(), Claim::Ours);
        assert!(!c.renew("j", "a", t(120)).await.unwrap());
        c.release("j", "b").await.unwrap();
        assert_eq!(c.claim("j", "a", t(62), t(92)).await.unwrap(), Claim::Ours);
        c.done("j", "a", t(1000)).await.unwrap();
        assert_eq!(
            c.claim("j", "b", t(2000), t(2030)).await.unwrap(),
            Claim::Done { owner: "a".into() }
        );
    }
}
