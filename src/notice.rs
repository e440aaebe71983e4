//! EC2 interruption notices: a spot instance's interruption (`spot/instance-action`) and a
//! rebalance recommendation (`events/recommendations/rebalance`), read from instance metadata
//! (IMDSv2, through the AWS SDK's client) every poll period. A notice starts the agent's drain at
//! once, so work not started goes back to the queue while the machine still has its two minutes.
//!
//! Off EC2 the token requests fail; after three polls that never reached instance metadata the
//! watch stops for good (logged once). The
//! endpoint follows the SDK's rules: `AWS_EC2_METADATA_SERVICE_ENDPOINT`, the profile, or
//! `http://169.254.169.254`.

use std::time::Duration;

/// A notice that the machine is going away.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Notice {
    /// `spot/instance-action`: the spot instance is interrupted.
    Spot {
        /// `terminate`, `stop` or `hibernate`.
        action: String,
        /// When, as IMDS says (RFC 3339).
        time: String,
    },
    /// `events/recommendations/rebalance`: the instance is at elevated risk of interruption.
    Rebalance {
        /// When the recommendation was made (RFC 3339).
        time: String,
    },
}

/// Parses a notice document from `path`'s body; `None` when it is not one.
pub fn parse(path: &str, body: &str) -> Option<Notice> {
    let v: serde_json::Value = serde_json::from_str(body).ok()?;
    let text = |k: &str| v.get(k).and_then(|x| x.as_str()).map(str::to_string);
    match path {
        SPOT => Some(Notice::Spot {
            action: text("action")?,
            time: text("time").unwrap_or_default(),
        }),
        REBALANCE => Some(Notice::Rebalance {
            time: text("noticeTime").unwrap_or_default(),
        }),
        _ => None,
    }
}

const SPOT: &str = "/latest/meta-data/spot/instance-action";
const REBALANCE: &str = "/latest/meta-data/events/recommendations/rebalance";

/// Completes when instance metadata announces an interruption or a rebalance, polling every
/// `every`; never completes where there is no instance metadata.
///
/// # Cancel safety
/// Cancel safe: it only reads.
#[cfg(feature = "aws")]
pub async fn watch(every: Duration) -> Notice {
    use aws_config::imds::client::error::ImdsError;
    let provider = aws_config::provider_config::ProviderConfig::default()
        .with_http_client(crate::aws::https_client());
    let client = aws_config::imds::Client::builder()
        .configure(&provider)
        .max_attempts(1)
        .connect_timeout(Duration::from_secs(1))
        .read_timeout(Duration::from_secs(2))
        .build();
    // Polls in a row that never reached instance metadata, before any that did.
    let mut unreached = Some(0u32);
    loop {
        for path in [SPOT, REBALANCE] {
            match client.get(path).await {
                Ok(body) => {
                    unreached = None;
                    if let Some(n) = parse(path, body.as_ref()) {
                        return n;
                    }
                    tracing::warn!(path, "An interruption notice that does not parse; ignored.");
                }
                Err(ImdsError::ErrorResponse(e)) if e.response().status().as_u16() == 404 => {
                    unreached = None;
                }
                Err(e) => {
                    if let Some(n) = unreached.as_mut()
                        && matches!(e, ImdsError::FailedToLoadToken(_))
                    {
                        *n += 1;
                        if *n >= 3 {
                            tracing::info!(
                                "No instance metadata here: interruption notices are off."
                            );
                            return std::future::pending().await;
                        }
                        break;
                    }
                    tracing::debug!(path, error = %crate::error::chain(&e), "Reading instance metadata failed; trying again at the next poll.");
                }
            }
        }
        tokio::time::sleep(every).await;
    }
}

/// Without the AWS SDK in the build there are no notices.
#[cfg(not(feature = "aws"))]
pub async fn watch(_every: Duration) -> Notice {
    std::future::pending().await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn notices_parse_as_imds_writes_them() {
        assert_eq!(
            parse(
                SPOT,
                r#"{"action": "terminate", "time": "2017-09-18T08:22:00Z"}"#
            ),
            Some(Notice::Spot {
                action: "terminate".into(),
                time: "2017-09-18T08:22:00Z".into()
            })
        );
        assert_eq!(
            parse(REBALANCE, r#"{"noticeTime": "2020-10-27T08:22:00Z"}"#),
            Some(Notice::Rebalance {
                time: "2020-10-27T08:22:00Z".into()
            })
        );
        assert_eq!(parse(SPOT, "<html>"), None);
        assert_eq!(parse(SPOT, "{}"), None);
    }
}
