//! EC2 interruption notices: a spot instance's interruption (`spot/instance-action`) and a
//! rebalance recommendation (`events/recommendations/rebalance`), read from instance metadata
//! (IMDSv2, plain HTTP) every poll period. A notice starts the agent's drain at once, so work not
//! started goes back to the queue while the machine still has its two minutes.
//!
//! Off EC2 the token requests fail; after three polls that never reached instance metadata the
//! watch stops for good (logged once). The endpoint is read from the environment as the AWS SDKs
//! read it ([`endpoint`]): `AWS_EC2_METADATA_SERVICE_ENDPOINT`, the IPv6 address under
//! `AWS_EC2_METADATA_SERVICE_ENDPOINT_MODE=IPv6`, or `http://169.254.169.254`; and
//! `AWS_EC2_METADATA_DISABLED=true` turns the watch off.

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
/// `every`; never completes where there is no instance metadata, or where
/// `AWS_EC2_METADATA_DISABLED` is `true`.
///
/// # Cancel safety
/// Cancel safe: it only reads.
pub async fn watch(every: Duration) -> Notice {
    let endpoint = match endpoint(|k| std::env::var(k).ok()) {
        Ok(Some(e)) => e,
        Ok(None) => {
            tracing::info!(
                "Instance metadata is disabled (AWS_EC2_METADATA_DISABLED): interruption notices are off."
            );
            return std::future::pending().await;
        }
        Err(e) => {
            tracing::warn!(error = %crate::error::chain(&e), "Interruption notices are off.");
            return std::future::pending().await;
        }
    };
    match poll(&mut Imds::new(endpoint), every).await {
        Some(n) => n,
        None => {
            tracing::info!("No instance metadata here: interruption notices are off.");
            std::future::pending().await
        }
    }
}

/// Polls `imds` every `every` until a notice (`Some`), or until three polls in a row never got
/// a token before any poll did (`None`: no instance metadata here).
async fn poll(imds: &mut Imds, every: Duration) -> Option<Notice> {
    // Polls in a row that never reached instance metadata, before any that did.
    let mut unreached = Some(0u32);
    loop {
        for path in [SPOT, REBALANCE] {
            match imds.get(path).await {
                Ok(Some(body)) => {
                    unreached = None;
                    if let Some(n) = parse(path, &body) {
                        return Some(n);
                    }
                    tracing::warn!(path, "An interruption notice that does not parse; ignored.");
                }
                Ok(None) => unreached = None,
                Err(e) => {
                    if let Some(n) = unreached.as_mut()
                        && matches!(e, ImdsError::Token { .. })
                    {
                        *n += 1;
                        if *n >= 3 {
                            return None;
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

/// Instance metadata's address when nothing names another.
pub const DEFAULT_ENDPOINT: &str = "http://169.254.169.254";
/// Instance metadata's address with `AWS_EC2_METADATA_SERVICE_ENDPOINT_MODE=IPv6`.
pub const DEFAULT_ENDPOINT_IPV6: &str = "http://[fd00:ec2::254]";
/// How long a session token is asked to last (the SDKs' value), and how long before its end it
/// is replaced.
const TOKEN_TTL: Duration = Duration::from_secs(21_600);
const TOKEN_SLACK: Duration = Duration::from_secs(60);
/// The largest token or notice body read.
const MAX_BODY: usize = 64 * 1024;
const CONNECT_TIMEOUT: Duration = Duration::from_secs(1);
const READ_TIMEOUT: Duration = Duration::from_secs(2);

/// Why instance metadata could not be read.
#[derive(Debug, thiserror::Error)]
pub enum ImdsError {
    /// `AWS_EC2_METADATA_SERVICE_ENDPOINT` is not an `http://` URL.
    #[error("AWS_EC2_METADATA_SERVICE_ENDPOINT {value:?} is not an http:// URL with a host")]
    Endpoint {
        /// The variable's value.
        value: String,
    },
    /// No session token: instance metadata is unreachable, or refused one.
    #[error("getting an instance metadata token from {endpoint}: {message}")]
    Token {
        /// The endpoint asked.
        endpoint: String,
        /// What went wrong.
        message: String,
    },
    /// A read with a token failed.
    #[error("reading instance metadata {path}: {message}")]
    Get {
        /// The path read.
        path: &'static str,
        /// What went wrong.
        message: String,
    },
}

/// Where instance metadata is, from the environment as the AWS SDKs read it: `None` when
/// `AWS_EC2_METADATA_DISABLED` is `true`; else `AWS_EC2_METADATA_SERVICE_ENDPOINT`, else the
/// IPv6 address under `AWS_EC2_METADATA_SERVICE_ENDPOINT_MODE=IPv6`, else
/// [`DEFAULT_ENDPOINT`]. Returned without a trailing `/`.
///
/// # Errors
/// An endpoint that is not an `http://` URL with a host.
pub fn endpoint(var: impl Fn(&str) -> Option<String>) -> Result<Option<String>, ImdsError> {
    if var("AWS_EC2_METADATA_DISABLED").is_some_and(|v| v.trim().eq_ignore_ascii_case("true")) {
        return Ok(None);
    }
    if let Some(value) = var("AWS_EC2_METADATA_SERVICE_ENDPOINT").filter(|v| !v.is_empty()) {
        let ok = value
            .parse::<hyper::Uri>()
            .is_ok_and(|u| u.scheme_str() == Some("http") && u.host().is_some());
        return match ok {
            true => Ok(Some(value.trim_end_matches('/').to_string())),
            false => Err(ImdsError::Endpoint { value }),
        };
    }
    match var("AWS_EC2_METADATA_SERVICE_ENDPOINT_MODE") {
        Some(m) if m.trim().eq_ignore_ascii_case("ipv6") => {
            Ok(Some(DEFAULT_ENDPOINT_IPV6.to_string()))
        }
        _ => Ok(Some(DEFAULT_ENDPOINT.to_string())),
    }
}

type Body = http_body_util::Empty<hyper::body::Bytes>;

/// An IMDSv2 client: a session token by `PUT /latest/api/token`, kept until shortly before it
/// ends, then `GET`s with it. Plain HTTP over the hyper client the agent already has, so
/// watching for notices loads no AWS SDK (an idle agent maps about 2.4 MiB less of its binary).
struct Imds {
    endpoint: String,
    client: hyper_util::client::legacy::Client<
        hyper_util::client::legacy::connect::HttpConnector,
        Body,
    >,
    token: Option<(String, tokio::time::Instant)>,
}

impl Imds {
    fn new(endpoint: String) -> Imds {
        let mut http = hyper_util::client::legacy::connect::HttpConnector::new();
        http.set_connect_timeout(Some(CONNECT_TIMEOUT));
        let client =
            hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
                .build(http);
        Imds {
            endpoint,
            client,
            token: None,
        }
    }

    /// One request, with the read timeout, and its body (at most [`MAX_BODY`]).
    async fn send(
        &self,
        method: hyper::Method,
        path: &str,
        header: (&'static str, &str),
    ) -> Result<(hyper::StatusCode, String), String> {
        use http_body_util::BodyExt;
        let req = hyper::Request::builder()
            .method(method)
            .uri(format!("{}{path}", self.endpoint))
            .header(header.0, header.1)
            .body(Body::new())
            .map_err(|e| e.to_string())?;
        let exchange = async {
            let resp = self
                .client
                .request(req)
                .await
                .map_err(|e| crate::error::chain(&e).to_string())?;
            let status = resp.status();
            let body = http_body_util::Limited::new(resp.into_body(), MAX_BODY)
                .collect()
                .await
                .map_err(|e| e.to_string())?
                .to_bytes();
            Ok((status, String::from_utf8_lossy(&body).into_owned()))
        };
        tokio::time::timeout(READ_TIMEOUT, exchange)
            .await
            .map_err(|_| format!("no answer in {READ_TIMEOUT:?}"))?
    }

    async fn token(&mut self) -> Result<String, ImdsError> {
        let now = tokio::time::Instant::now();
        if let Some((t, until)) = &self.token
            && now < *until
        {
            return Ok(t.clone());
        }
        let failed = |message: String| ImdsError::Token {
            endpoint: self.endpoint.clone(),
            message,
        };
        let ttl = TOKEN_TTL.as_secs().to_string();
        let (status, body) = self
            .send(
                hyper::Method::PUT,
                "/latest/api/token",
                ("x-aws-ec2-metadata-token-ttl-seconds", &ttl),
            )
            .await
            .map_err(failed)?;
        if status != hyper::StatusCode::OK || body.trim().is_empty() {
            return Err(failed(format!("answered {status}")));
        }
        let token = body.trim().to_string();
        self.token = Some((token.clone(), now + TOKEN_TTL - TOKEN_SLACK));
        Ok(token)
    }

    /// `path`'s body, or `None` where it is absent (404).
    async fn get(&mut self, path: &'static str) -> Result<Option<String>, ImdsError> {
        let token = self.token().await?;
        let failed = |message: String| ImdsError::Get { path, message };
        let (status, body) = self
            .send(
                hyper::Method::GET,
                path,
                ("x-aws-ec2-metadata-token", &token),
            )
            .await
            .map_err(failed)?;
        match status {
            hyper::StatusCode::OK => Ok(Some(body)),
            hyper::StatusCode::NOT_FOUND => Ok(None),
            s => {
                if s == hyper::StatusCode::UNAUTHORIZED {
                    // The token ended early (the service restarted): the next read gets another.
                    self.token = None;
                }
                Err(failed(format!("answered {s}")))
            }
        }
    }
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

    type Vars = &'static [(&'static str, &'static str)];

    #[test]
    fn the_endpoint_is_read_as_the_sdks_read_it() {
        let env = |pairs: Vars| {
            move |k: &str| {
                pairs
                    .iter()
                    .find(|(n, _)| *n == k)
                    .map(|(_, v)| v.to_string())
            }
        };
        let cases: &[(Vars, Option<&str>)] = &[
            (&[], Some(DEFAULT_ENDPOINT)),
            (&[("AWS_EC2_METADATA_DISABLED", "TRUE")], None),
            (
                &[("AWS_EC2_METADATA_DISABLED", "false")],
                Some(DEFAULT_ENDPOINT),
            ),
            (
                &[("AWS_EC2_METADATA_SERVICE_ENDPOINT_MODE", "IPv6")],
                Some(DEFAULT_ENDPOINT_IPV6),
            ),
            (
                &[(
                    "AWS_EC2_METADATA_SERVICE_ENDPOINT",
                    "http://127.0.0.1:8111/",
                )],
                Some("http://127.0.0.1:8111"),
            ),
            // The named endpoint wins over the mode; disabled wins over both.
            (
                &[
                    ("AWS_EC2_METADATA_SERVICE_ENDPOINT", "http://[::1]:9"),
                    ("AWS_EC2_METADATA_SERVICE_ENDPOINT_MODE", "IPv6"),
                ],
                Some("http://[::1]:9"),
            ),
            (
                &[
                    ("AWS_EC2_METADATA_SERVICE_ENDPOINT", "http://10.0.0.1"),
                    ("AWS_EC2_METADATA_DISABLED", "true"),
                ],
                None,
            ),
        ];
        for (vars, want) in cases {
            assert_eq!(endpoint(env(vars)).unwrap().as_deref(), *want, "{vars:?}");
        }
        for bad in ["https://169.254.169.254", "169.254.169.254", "http://"] {
            let vars: Vars =
                Box::leak(vec![("AWS_EC2_METADATA_SERVICE_ENDPOINT", bad)].into_boxed_slice());
            assert!(
                matches!(endpoint(env(vars)), Err(ImdsError::Endpoint { .. })),
                "{bad}"
            );
        }
    }

    /// A fake IMDSv2 on 127.0.0.1: a token by PUT (with the TTL header), reads only with that
    /// token; `SPOT` is absent for the first `absent` reads. Counts the tokens handed out.
    async fn fake_imds(absent: usize) -> (String, std::sync::Arc<std::sync::atomic::AtomicUsize>) {
        use std::sync::atomic::{AtomicUsize, Ordering};
        use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let tokens = std::sync::Arc::new(AtomicUsize::new(0));
        let (issued, reads) = (tokens.clone(), std::sync::Arc::new(AtomicUsize::new(0)));
        tokio::spawn(async move {
            loop {
                let (conn, _) = listener.accept().await.unwrap();
                let (issued, reads) = (issued.clone(), reads.clone());
                tokio::spawn(async move {
                    let mut conn = BufReader::new(conn);
                    loop {
                        let mut lines = Vec::new();
                        loop {
                            let mut l = String::new();
                            if conn.read_line(&mut l).await.unwrap_or(0) == 0 {
                                return;
                            }
                            if l == "\r\n" {
                                break;
                            }
                            lines.push(l.trim_end().to_ascii_lowercase());
                        }
                        let has = |h: &str| lines.iter().any(|l| l.starts_with(h));
                        let (status, body) = if lines[0].starts_with("put /latest/api/token ") {
                            match has("x-aws-ec2-metadata-token-ttl-seconds: 21600") {
                                true => {
                                    issued.fetch_add(1, Ordering::SeqCst);
                                    ("200 OK", "tok")
                                }
                                false => ("400 Bad Request", ""),
                            }
                        } else if !has("x-aws-ec2-metadata-token: tok") {
                            ("401 Unauthorized", "")
                        } else if lines[0].starts_with(&format!("get {SPOT} ")) {
                            match reads.fetch_add(1, Ordering::SeqCst) < absent {
                                true => ("404 Not Found", ""),
                                false => ("200 OK", r#"{"action": "stop", "time": "t"}"#),
                            }
                        } else {
                            ("404 Not Found", "")
                        };
                        let resp = format!(
                            "HTTP/1.1 {status}\r\ncontent-length: {}\r\n\r\n{body}",
                            body.len()
                        );
                        conn.get_mut().write_all(resp.as_bytes()).await.unwrap();
                    }
                });
            }
        });
        (format!("http://{addr}"), tokens)
    }

    #[tokio::test]
    async fn a_notice_is_read_with_one_token_after_polls_that_find_none() {
        let (url, tokens) = fake_imds(3).await;
        let got = poll(&mut Imds::new(url), Duration::from_millis(10)).await;
        assert_eq!(
            got,
            Some(Notice::Spot {
                action: "stop".into(),
                time: "t".into()
            })
        );
        assert_eq!(tokens.load(std::sync::atomic::Ordering::SeqCst), 1);
    }

    #[tokio::test]
    async fn without_instance_metadata_the_watch_stops_after_three_polls() {
        // A port nothing listens on: every token request is refused.
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let mut imds = Imds::new(format!("http://127.0.0.1:{port}"));
        let got = tokio::time::timeout(
            Duration::from_secs(10),
            poll(&mut imds, Duration::from_millis(10)),
        )
        .await
        .expect("the watch kept polling");
        assert_eq!(got, None);
    }
}
