//! The `amqp://` URL of a queue and the names of the queues and exchanges it selects: string
//! functions only, compiled without the `amqp` feature, so the fuzz targets check them without
//! building lapin. The `amqp` backend (`queue::amqp`) re-exports them.

use std::time::Duration;

use super::QueueError;

/// Names of the queues and exchanges of one namespace.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Topology {
    /// The namespace.
    pub ns: String,
    /// The fleet's command queue.
    pub commands: String,
    /// The dead-letter exchange.
    pub dlx: String,
    /// The dead-letter queue.
    pub dlq: String,
    /// The events exchange.
    pub events: String,
    /// `x-consumer-timeout` of the command queues: how long the broker lets a consumer hold
    /// a delivery unacked (RabbitMQ 3.12+; older brokers ignore it, see the module docs).
    pub consumer_timeout: Duration,
}

/// The margin the consumer timeout adds to the longest job: time to wait for a slot and to
/// record the outcome.
pub const CONSUMER_TIMEOUT_MARGIN: Duration = Duration::from_secs(600);

impl Topology {
    /// The names in namespace `ns`.
    pub fn new(ns: &str) -> Topology {
        Topology {
            ns: ns.to_string(),
            commands: format!("{ns}.commands"),
            dlx: format!("{ns}.dlx"),
            dlq: format!("{ns}.commands.dlq"),
            events: format!("{ns}.events"),
            consumer_timeout: super::DEFAULT_MAX_JOB + CONSUMER_TIMEOUT_MARGIN,
        }
    }

    /// The per-agent queue name.
    pub fn agent_queue(&self, agent_id: &str) -> String {
        let safe: String = agent_id
            .chars()
            .map(|c| {
                if c.is_ascii_alphanumeric() || "-_.".contains(c) {
                    c
                } else {
                    '_'
                }
            })
            .take(200)
            .collect();
        format!("{}.agent.{safe}", self.ns)
    }
}

/// Splits the namespace parameter off an `amqp://` URL.
///
/// # Errors
/// A namespace that is empty or not `[A-Za-z0-9._-]`.
pub fn split_url(url: &str) -> Result<(String, Topology), QueueError> {
    let (base, query) = url.split_once('?').unwrap_or((url, ""));
    let mut ns = "reflow".to_string();
    let mut rest = Vec::new();
    for kv in query.split('&').filter(|s| !s.is_empty()) {
        match kv.strip_prefix("ns=") {
            Some(v)
                if !v.is_empty()
                    && v.len() <= 100
                    && v.bytes()
                        .all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b)) =>
            {
                ns = v.to_string();
            }
            Some(_) => {
                return Err(QueueError::Url {
                    url: super::redact(url),
                });
            }
            None => rest.push(kv),
        }
    }
    let lapin_url = if rest.is_empty() {
        base.to_string()
    } else {
        format!("{base}?{}", rest.join("&"))
    };
    Ok((lapin_url, Topology::new(&ns)))
}

/// One URL per broker of a URL that names several, `amqp://user:pass@h1:5672,h2:5672/vhost`
/// (the nodes of a cluster): the same credentials, virtual host and parameters for each. A URL
/// with one host is returned as it is.
pub fn hosts(url: &str) -> Vec<String> {
    let Some((scheme, rest)) = url.split_once("://") else {
        return vec![url.to_string()];
    };
    let end = rest.find(['/', '?']).unwrap_or(rest.len());
    let (authority, tail) = rest.split_at(end);
    let (userinfo, hostlist) = match authority.rfind('@') {
        Some(i) => (&authority[..=i], &authority[i + 1..]),
        None => ("", authority),
    };
    let list: Vec<&str> = hostlist.split(',').filter(|h| !h.is_empty()).collect();
    if list.len() <= 1 {
        return vec![url.to_string()];
    }
    list.iter()
        .map(|h| format!("{scheme}://{userinfo}{h}{tail}"))
        .collect()
}

/// `url` with an AMQP heartbeat of `limit` (at least 1 s) unless it names one. Two missed
/// heartbeats close the connection, so a link that dies without a word (no FIN, no RST) is
/// noticed within twice the operation deadline instead of RabbitMQ's default two minutes.
pub fn with_heartbeat(url: &str, limit: Duration) -> String {
    with_default(url, "heartbeat", limit.as_secs().max(1))
}

/// The largest AMQP frame a connection asks for unless its URL names one (`frame_max=`).
///
/// lapin keeps two ring buffers of 32 frames per connection and sizes them to the negotiated
/// frame size. Left to RabbitMQ's default (128 KiB) they grow to 4 MiB each right after the
/// handshake, zero-filled: that stalled the first channel of every connection by about 5 ms on
/// the benchmark machine, and a long-lived connection keeps them resident. Commands and events
/// are a few KiB, so 16 KiB frames carry them whole; a larger message travels in more frames.
pub const FRAME_MAX: u32 = 16 * 1024;

/// `url` with the parameter `key=value` appended unless its query names `key` already.
pub(crate) fn with_default(url: &str, key: &str, value: impl std::fmt::Display) -> String {
    let query = url.split_once('?').map_or("", |(_, q)| q);
    if query
        .split('&')
        .any(|kv| kv.split_once('=').map_or(kv, |(k, _)| k) == key)
    {
        return url.to_string();
    }
    let sep = if url.contains('?') { '&' } else { '?' };
    format!("{url}{sep}{key}={value}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_url_may_name_several_brokers() {
        assert_eq!(
            hosts("amqp://u:p@h1:5672,h2:5673,h3/vh?heartbeat=5"),
            [
                "amqp://u:p@h1:5672/vh?heartbeat=5",
                "amqp://u:p@h2:5673/vh?heartbeat=5",
                "amqp://u:p@h3/vh?heartbeat=5"
            ]
        );
        assert_eq!(hosts("amqps://h1,h2"), ["amqps://h1", "amqps://h2"]);
        // A password with an `@` or a `,` before the last `@` stays with the credentials.
        assert_eq!(
            hosts("amqp://u:a,b@c@h1,h2/%2f"),
            ["amqp://u:a,b@c@h1/%2f", "amqp://u:a,b@c@h2/%2f"]
        );
        assert_eq!(hosts("amqp://u:p@h1:5672/%2f"), ["amqp://u:p@h1:5672/%2f"]);
        assert_eq!(hosts("not a url"), ["not a url"]);
    }
    #[test]
    fn the_namespace_parameter_names_the_topology_and_is_removed() {
        let (url, t) = split_url("amqp://u:p@h:5672/%2f?heartbeat=10&ns=t-1").unwrap();
        assert_eq!(url, "amqp://u:p@h:5672/%2f?heartbeat=10");
        assert_eq!(t.commands, "t-1.commands");
        assert_eq!(t.agent_queue("i-0ab/c d"), "t-1.agent.i-0ab_c_d");
        assert_eq!(split_url("amqp://h").unwrap().1, Topology::new("reflow"));
        assert!(split_url("amqp://h?ns=a/b").is_err());
    }

    #[test]
    fn the_heartbeat_follows_the_deadline_unless_the_url_names_one() {
        let d = Duration::from_secs(30);
        assert_eq!(
            with_heartbeat("amqp://h/%2f", d),
            "amqp://h/%2f?heartbeat=30"
        );
        assert_eq!(
            with_heartbeat("amqp://h/%2f?frame_max=8192", d),
            "amqp://h/%2f?frame_max=8192&heartbeat=30"
        );
        assert_eq!(
            with_heartbeat("amqp://h/%2f?heartbeat=5", d),
            "amqp://h/%2f?heartbeat=5"
        );
        assert_eq!(
            with_heartbeat("amqp://h", Duration::from_millis(10)),
            "amqp://h?heartbeat=1"
        );
    }
}
