//! Requests the agent makes to its cloud services (each attempt of an AWS SDK call, counted by
//! the SDK interceptor `aws::CountRequests` on every client) and to its broker (each AMQP
//! operation: connect, declare, publish with its confirm, ack, reject), per service and
//! operation. The admin
//! listener renders them as `reflow_cloud_requests_total{service, operation}`; the bill and
//! the request rates of docs/capacity.md are read from them.
//!
//! The counts are process-wide, as the SDK clients and broker connections they count are.

use std::collections::BTreeMap;
use std::sync::Mutex;

/// service -> operation -> requests.
static COUNTS: Mutex<BTreeMap<String, BTreeMap<String, u64>>> = Mutex::new(BTreeMap::new());

/// Counts one request of `operation` to `service`.
pub fn count(service: &str, operation: &str) {
    let mut counts = crate::par::lock(&COUNTS);
    match counts.get_mut(service) {
        Some(ops) => match ops.get_mut(operation) {
            Some(n) => *n += 1,
            None => {
                ops.insert(operation.to_string(), 1);
            }
        },
        None => {
            counts.insert(
                service.to_string(),
                BTreeMap::from([(operation.to_string(), 1)]),
            );
        }
    }
}

/// Every count so far: `(service, operation, requests)`, sorted.
pub fn snapshot() -> Vec<(String, String, u64)> {
    let counts = crate::par::lock(&COUNTS);
    counts
        .iter()
        .flat_map(|(s, ops)| ops.iter().map(move |(o, n)| (s.clone(), o.clone(), *n)))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The requests of `operation` to `service` so far.
    fn get(service: &str, operation: &str) -> u64 {
        snapshot()
            .into_iter()
            .find(|(s, o, _)| s == service && o == operation)
            .map_or(0, |(_, _, n)| n)
    }

    #[test]
    fn counts_per_service_and_operation() {
        let before = get("test-svc", "Op");
        count("test-svc", "Op");
        count("test-svc", "Op");
        count("test-svc", "Other");
        assert_eq!(get("test-svc", "Op"), before + 2);
        assert!(
            snapshot()
                .iter()
                .any(|(s, o, n)| s == "test-svc" && o == "Other" && *n >= 1)
        );
    }
}
