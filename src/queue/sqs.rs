//! `sqs://NAME[?results=R&dlq=D&create=true]`: AWS SQS through the official SDK. Region,
//! endpoint and credentials come from the SDK's standard chain (`AWS_REGION`,
//! `AWS_ENDPOINT_URL`, the usual credential variables, profiles, instance roles), with the
//! agent's `[aws]` overrides.
//!
//! - Commands come from `NAME` by long polling (20 s), no more at once than the control plane can
//!   take (see [`super::CommandSource::next`]).
//! - A received message stays invisible for `visibility_timeout_secs`; while the agent holds
//!   it (waiting for a slot or for room, or running) the agent extends that every third of it
//!   ([`super::Lease`]), and deletes the message once the job's outcome is durable. The
//!   receipt handle is journaled, so an agent
//!   restarted before the visibility ran out re-owns the message instead of letting another
//!   agent run it again.
//! - `NAME`'s redrive policy moves a message received more than the delivery limit to the DLQ
//!   (`D`, default `NAME-dlq`); the agent moves poison there itself with a `reason` attribute.
//! - Events go to the results queue (`R`, default `NAME-results`).
//! - Every request has a deadline: one attempt may take the long poll plus
//!   [`super::QueueSettings::op_timeout`]; past it the SDK abandons the attempt and retries, so
//!   a connection that stops answering never hangs the agent.
//! - `create=true` creates the three queues and the redrive policy (development; production
//!   uses deploy/'s template).

use std::collections::VecDeque;
use std::time::Duration;

use async_trait::async_trait;
use aws_sdk_sqs::Client;
use aws_sdk_sqs::error::{ProvideErrorMetadata, SdkError};
use aws_sdk_sqs::types::{
    MessageAttributeValue, MessageSystemAttributeName, QueueAttributeName,
    SendMessageBatchRequestEntry,
};

use super::{Batch, CommandSource, Delivery, EventSink, QueueError, QueueSettings, Settle};
use crate::protocol::Event;

/// Message attribute carrying a dead-letter reason.
pub const REASON_ATTRIBUTE: &str = "reason";

fn sqs_err<E, R>(op: &'static str) -> impl FnOnce(SdkError<E, R>) -> QueueError
where
    E: ProvideErrorMetadata + std::error::Error + Send + Sync + 'static,
    R: std::fmt::Debug,
{
    move |e| {
        let code = e.code().unwrap_or("").to_string();
        let permanent = matches!(
            code.as_str(),
            "AWS.SimpleQueueService.NonExistentQueue"
                | "QueueDoesNotExist"
                | "InvalidParameterValue"
                | "InvalidAddress"
                | "AccessDenied"
                | "InvalidClientTokenId"
        );
        let message = match e.message() {
            Some(m) => format!("{code}: {m}"),
            None => aws_sdk_sqs::error::DisplayErrorContext(&e).to_string(),
        };
        QueueError::Sqs {
            op,
            message: message.chars().take(500).collect(),
            permanent,
        }
    }
}

/// The queue names in an `sqs://` URL.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Names {
    /// The command queue.
    pub commands: String,
    /// The results queue.
    pub results: String,
    /// The dead-letter queue.
    pub dlq: String,
    /// Create missing queues.
    pub create: bool,
}

/// Parses `sqs://NAME[?results=R&dlq=D&create=true]`.
///
/// # Errors
/// A name SQS would refuse (1 to 80 of `[A-Za-z0-9_-]`) or an unknown parameter.
pub fn parse_url(url: &str) -> Result<Names, QueueError> {
    let bad = || QueueError::Url {
        url: super::redact(url),
    };
    let rest = url.strip_prefix("sqs://").ok_or_else(bad)?;
    let (name, query) = rest.split_once('?').unwrap_or((rest, ""));
    let valid = |n: &str| {
        (1..=80).contains(&n.len())
            && n.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
    };
    if !valid(name) {
        return Err(bad());
    }
    let mut names = Names {
        commands: name.to_string(),
        results: format!("{name}-results"),
        dlq: format!("{name}-dlq"),
        create: false,
    };
    for kv in query.split('&').filter(|s| !s.is_empty()) {
        match kv.split_once('=') {
            Some(("results", v)) if valid(v) => names.results = v.to_string(),
            Some(("dlq", v)) if valid(v) => names.dlq = v.to_string(),
            Some(("create", "true")) => names.create = true,
            Some(("create", "false")) => names.create = false,
            _ => return Err(bad()),
        }
    }
    Ok(names)
}

/// The queue URLs.
#[derive(Debug, Clone)]
struct Urls {
    commands: String,
    results: String,
    dlq: String,
}

async fn queue_url(client: &Client, name: &str) -> Result<String, QueueError> {
    let out = client
        .get_queue_url()
        .queue_name(name)
        .send()
        .await
        .map_err(sqs_err("get queue url"))?;
    out.queue_url.ok_or_else(|| QueueError::Sqs {
        op: "get queue url",
        message: format!("no URL for {name}"),
        permanent: true,
    })
}

async fn create(
    client: &Client,
    name: &str,
    attrs: &[(QueueAttributeName, String)],
) -> Result<String, QueueError> {
    let mut req = client.create_queue().queue_name(name);
    for (k, v) in attrs {
        req = req.attributes(k.clone(), v.clone());
    }
    let out = req.send().await.map_err(sqs_err("create queue"))?;
    out.queue_url.ok_or_else(|| QueueError::Sqs {
        op: "create queue",
        message: format!("no URL for {name}"),
        permanent: true,
    })
}

async fn resolve(client: &Client, names: &Names, delivery_limit: u32) -> Result<Urls, QueueError> {
    if names.create {
        let dlq = create(client, &names.dlq, &[]).await?;
        let arn = client
            .get_queue_attributes()
            .queue_url(&dlq)
            .attribute_names(QueueAttributeName::QueueArn)
            .send()
            .await
            .map_err(sqs_err("get queue attributes"))?
            .attributes
            .and_then(|a| a.get(&QueueAttributeName::QueueArn).cloned())
            .unwrap_or_default();
        let redrive = serde_json::json!({
            "deadLetterTargetArn": arn,
            "maxReceiveCount": delivery_limit.to_string(),
        })
        .to_string();
        let commands = create(
            client,
            &names.commands,
            &[(QueueAttributeName::RedrivePolicy, redrive)],
        )
        .await?;
        let results = create(client, &names.results, &[]).await?;
        return Ok(Urls {
            commands,
            results,
            dlq,
        });
    }
    Ok(Urls {
        commands: queue_url(client, &names.commands).await?,
        results: queue_url(client, &names.results).await?,
        dlq: queue_url(client, &names.dlq).await?,
    })
}

fn secs(d: Duration) -> i32 {
    i32::try_from(d.as_secs())
        .unwrap_or(43_200)
        .clamp(0, 43_200)
}

/// Commands from the command queue.
#[derive(Debug)]
pub struct SqsSource {
    client: Client,
    urls: Urls,
    settings: QueueSettings,
    buffer: VecDeque<aws_sdk_sqs::types::Message>,
}

fn settle_for(client: &Client, urls: &Urls, receipt: String, body: Vec<u8>) -> SqsSettle {
    SqsSettle {
        client: client.clone(),
        urls: urls.clone(),
        receipt,
        body,
    }
}

#[async_trait]
impl CommandSource for SqsSource {
    async fn next(&mut self, room: usize) -> Result<Option<Delivery>, QueueError> {
        loop {
            if self.settings.close.is_cancelled() {
                return Ok(None);
            }
            if let Some(m) = self.buffer.pop_front() {
                let Some(receipt) = m.receipt_handle.clone() else {
                    continue;
                };
                let attempt = m
                    .attributes
                    .as_ref()
                    .and_then(|a| a.get(&MessageSystemAttributeName::ApproximateReceiveCount))
                    .and_then(|n| n.parse::<u32>().ok())
                    .unwrap_or(1);
                let body = m.body.unwrap_or_default().into_bytes();
                return Ok(Some(Delivery {
                    settle: Box::new(settle_for(&self.client, &self.urls, receipt, body.clone())),
                    body,
                    redelivered: attempt > 1,
                    attempt,
                }));
            }
            // Only what the control plane can take now: a message waiting in this buffer would
            // have no one extending its lease.
            let want = i32::try_from(room.clamp(1, 10)).unwrap_or(1);
            let recv = self
                .client
                .receive_message()
                .queue_url(&self.urls.commands)
                .max_number_of_messages(want)
                .wait_time_seconds(LONG_POLL_SECS)
                .visibility_timeout(secs(self.settings.visibility))
                .message_system_attribute_names(MessageSystemAttributeName::ApproximateReceiveCount)
                .send();
            let out = tokio::select! {
                () = self.settings.close.cancelled() => return Ok(None),
                r = recv => r,
            };
            let out = match out {
                Ok(o) => {
                    self.settings
                        .health
                        .store(true, std::sync::atomic::Ordering::SeqCst);
                    o
                }
                Err(e) => {
                    self.settings
                        .health
                        .store(false, std::sync::atomic::Ordering::SeqCst);
                    return Err(sqs_err("receive")(e));
                }
            };
            self.buffer.extend(out.messages.unwrap_or_default());
        }
    }

    async fn close(&mut self) {
        let mut returned = 0;
        for m in self.buffer.drain(..) {
            if let Some(r) = m.receipt_handle {
                let _ = self
                    .client
                    .change_message_visibility()
                    .queue_url(&self.urls.commands)
                    .receipt_handle(r)
                    .visibility_timeout(0)
                    .send()
                    .await;
                returned += 1;
            }
        }
        tracing::info!(
            returned,
            "Stopped receiving; received commands handed back."
        );
    }

    async fn reown(&self, lease: &str) -> Option<Box<dyn Settle>> {
        let s = settle_for(&self.client, &self.urls, lease.to_string(), Vec::new());
        match s.visibility(self.settings.visibility).await {
            Ok(()) => Some(Box::new(s)),
            Err(e) => {
                tracing::info!(error = %crate::error::chain(&e), "The journaled SQS lease is no longer valid.");
                None
            }
        }
    }
}

/// Settles one SQS message by its receipt handle.
struct SqsSettle {
    client: Client,
    urls: Urls,
    receipt: String,
    body: Vec<u8>,
}

impl std::fmt::Debug for SqsSettle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SqsSettle").finish_non_exhaustive()
    }
}

impl SqsSettle {
    async fn delete(&self) -> Result<(), QueueError> {
        self.client
            .delete_message()
            .queue_url(&self.urls.commands)
            .receipt_handle(&self.receipt)
            .send()
            .await
            .map_err(sqs_err("delete"))?;
        Ok(())
    }

    async fn visibility(&self, d: Duration) -> Result<(), QueueError> {
        self.client
            .change_message_visibility()
            .queue_url(&self.urls.commands)
            .receipt_handle(&self.receipt)
            .visibility_timeout(secs(d))
            .send()
            .await
            .map_err(sqs_err("change visibility"))?;
        Ok(())
    }
}

#[async_trait]
impl Settle for SqsSettle {
    async fn ack(self: Box<Self>) -> Result<(), QueueError> {
        self.delete().await
    }

    async fn requeue(self: Box<Self>) -> Result<(), QueueError> {
        self.visibility(Duration::ZERO).await
    }

    async fn dead_letter(self: Box<Self>, reason: &str) -> Result<(), QueueError> {
        let attr = MessageAttributeValue::builder()
            .data_type("String")
            .string_value(reason.chars().take(1000).collect::<String>())
            .build()
            .map_err(|e| QueueError::Sqs {
                op: "dead-letter",
                message: e.to_string(),
                permanent: true,
            })?;
        self.client
            .send_message()
            .queue_url(&self.urls.dlq)
            .message_body(String::from_utf8_lossy(&self.body))
            .message_attributes(REASON_ATTRIBUTE, attr)
            .send()
            .await
            .map_err(sqs_err("send to DLQ"))?;
        self.delete().await
    }

    fn keeper(&self) -> Option<std::sync::Arc<dyn super::Lease>> {
        Some(std::sync::Arc::new(SqsLease {
            client: self.client.clone(),
            queue: self.urls.commands.clone(),
            receipt: self.receipt.clone(),
        }))
    }

    fn lease(&self) -> Option<String> {
        Some(self.receipt.clone())
    }
}

/// The visibility lease of one received message.
struct SqsLease {
    client: Client,
    queue: String,
    receipt: String,
}

impl std::fmt::Debug for SqsLease {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SqsLease").finish_non_exhaustive()
    }
}

#[async_trait]
impl super::Lease for SqsLease {
    async fn extend(&self, for_at_least: Duration) -> Result<(), QueueError> {
        self.client
            .change_message_visibility()
            .queue_url(&self.queue)
            .receipt_handle(&self.receipt)
            .visibility_timeout(secs(for_at_least))
            .send()
            .await
            .map_err(sqs_err("change visibility"))?;
        Ok(())
    }
}

/// Events to the results queue, or to the `reply_to` queue of the command that caused them.
#[derive(Debug)]
pub struct SqsSink {
    client: Client,
    urls: Urls,
    /// Reply queue names resolved to URLs (bounded: cleared when it grows past
    /// [`MAX_REPLY_QUEUES`]).
    replies: std::sync::Mutex<std::collections::HashMap<String, String>>,
}

/// The most reply queue URLs an agent remembers.
const MAX_REPLY_QUEUES: usize = 1024;

/// An event's message body and its `kind` attribute.
fn event_message(event: &Event) -> Result<(String, MessageAttributeValue), QueueError> {
    let body = serde_json::to_string(event).map_err(|e| QueueError::Sqs {
        op: "encode event",
        message: e.to_string(),
        permanent: true,
    })?;
    let kind = MessageAttributeValue::builder()
        .data_type("String")
        .string_value(event.body.kind())
        .build()
        .map_err(|e| QueueError::Sqs {
            op: "event attribute",
            message: e.to_string(),
            permanent: true,
        })?;
    Ok((body, kind))
}

/// SQS's most entries in one `SendMessageBatch`.
const MAX_BATCH: usize = 10;
/// SQS's most bytes in one `SendMessageBatch` (all bodies and attributes together), less a
/// margin for the attributes.
const MAX_BATCH_BYTES: usize = 256 * 1024 - 4 * 1024;

fn reply_to(event: &Event) -> Option<&String> {
    event.labels.get(crate::protocol::REPLY_TO_LABEL)
}

/// A failure that sending again will not cure: no such queue, no permission, a bad name.
fn is_permanent(e: &QueueError) -> bool {
    matches!(
        e,
        QueueError::Sqs {
            permanent: true,
            ..
        }
    )
}

impl SqsSink {
    fn new(client: Client, urls: Urls) -> SqsSink {
        SqsSink {
            client,
            urls,
            replies: Default::default(),
        }
    }

    /// The queue URL `event` goes to: its `reply_to` (a queue URL as given, a name resolved
    /// once), else the results queue.
    async fn queue_for(&self, event: &Event) -> Result<String, QueueError> {
        let Some(name) = reply_to(event) else {
            return Ok(self.urls.results.clone());
        };
        if name.starts_with("https://") || name.starts_with("http://") {
            return Ok(name.clone());
        }
        let known = crate::par::lock(&self.replies).get(name).cloned();
        if let Some(url) = known {
            return Ok(url);
        }
        let url = self
            .client
            .get_queue_url()
            .queue_name(name)
            .send()
            .await
            .map_err(sqs_err("find reply queue"))?
            .queue_url()
            .unwrap_or_default()
            .to_string();
        let mut m = crate::par::lock(&self.replies);
        if m.len() >= MAX_REPLY_QUEUES {
            m.clear();
        }
        m.insert(name.clone(), url.clone());
        Ok(url)
    }

    async fn send_one(&self, url: &str, event: &Event) -> Result<(), QueueError> {
        let (body, kind) = event_message(event)?;
        self.client
            .send_message()
            .queue_url(url)
            .message_body(body)
            .message_attributes("kind", kind)
            .send()
            .await
            .map_err(sqs_err("send event"))?;
        Ok(())
    }

    /// One `SendMessageBatch` to `url` of the first of `events` that fit in one request.
    async fn send_batch(&self, url: &str, events: &[Event]) -> Batch {
        let mut out = Batch {
            published: vec![false; events.len()],
            error: None,
        };
        let mut entries = Vec::new();
        let mut bytes = 0;
        for (i, e) in events.iter().enumerate().take(MAX_BATCH) {
            let (body, kind) = match event_message(e) {
                Ok(m) => m,
                Err(err) => {
                    out.error = Some(err);
                    break;
                }
            };
            if !entries.is_empty() && bytes + body.len() > MAX_BATCH_BYTES {
                break;
            }
            bytes += body.len();
            let entry = SendMessageBatchRequestEntry::builder()
                .id(i.to_string())
                .message_body(body)
                .message_attributes("kind", kind)
                .build()
                .map_err(|e| QueueError::Sqs {
                    op: "event batch entry",
                    message: e.to_string(),
                    permanent: true,
                });
            match entry {
                Ok(entry) => entries.push(entry),
                Err(err) => {
                    out.error = Some(err);
                    break;
                }
            }
        }
        if entries.is_empty() {
            return out;
        }
        match self
            .client
            .send_message_batch()
            .queue_url(url)
            .set_entries(Some(entries))
            .send()
            .await
        {
            Ok(r) => {
                for ok in r.successful() {
                    if let Some(p) = ok
                        .id()
                        .parse::<usize>()
                        .ok()
                        .and_then(|i| out.published.get_mut(i))
                    {
                        *p = true;
                    }
                }
                if let Some(f) = r.failed().first() {
                    out.error = out.error.take().or(Some(QueueError::Sqs {
                        op: "send event batch",
                        message: format!("{}: {}", f.code(), f.message().unwrap_or("")),
                        permanent: false,
                    }));
                }
            }
            Err(e) => out.error = Some(sqs_err("send event batch")(e)),
        }
        out
    }

    /// Sends `events` (all with one destination) where they go; when a reply queue refuses
    /// them for good (it does not exist, or the agent may not send to it), to the results
    /// queue instead, so an outcome is never stuck in the outbox.
    async fn send(&self, events: &[Event]) -> Batch {
        let first = &events[0];
        let batch = match self.queue_for(first).await {
            Ok(url) if events.len() == 1 => {
                let r = self.send_one(&url, first).await;
                Batch {
                    published: vec![r.is_ok()],
                    error: r.err(),
                }
            }
            Ok(url) => self.send_batch(&url, events).await,
            Err(e) => Batch {
                published: vec![false; events.len()],
                error: Some(e),
            },
        };
        match (&batch.error, reply_to(first)) {
            (Some(e), Some(queue)) if is_permanent(e) && !batch.published.iter().any(|p| *p) => {
                tracing::warn!(reply_to = %queue, error = %e, "The reply queue refuses events; sending them to the results queue.");
                let mut plain: Vec<Event> = events.to_vec();
                for e in &mut plain {
                    e.labels.remove(crate::protocol::REPLY_TO_LABEL);
                }
                Box::pin(self.send(&plain)).await
            }
            _ => batch,
        }
    }
}

#[async_trait]
impl EventSink for SqsSink {
    async fn publish(&self, event: &Event) -> Result<(), QueueError> {
        self.send(std::slice::from_ref(event)).await.into_result()
    }

    fn max_batch(&self) -> usize {
        MAX_BATCH
    }

    fn lingers(&self) -> bool {
        true
    }

    /// `SendMessageBatch` of up to 10 events with one destination whose bodies fit in one
    /// request (the others wait for the next batch); a lone event goes by `SendMessage`.
    async fn publish_batch(&self, events: &[Event]) -> Batch {
        let Some(first) = events.first() else {
            return Batch {
                published: vec![],
                error: None,
            };
        };
        let run = events
            .iter()
            .take_while(|e| reply_to(e) == reply_to(first))
            .count();
        let mut batch = self.send(&events[..run]).await;
        batch.published.resize(events.len(), false);
        batch
    }
}

/// How long a receive waits for a message (SQS's most).
const LONG_POLL_SECS: i32 = 20;

/// An SQS client whose every attempt ends within a long poll plus `op_timeout`; the SDK
/// config's other timeouts (its connect timeout) are kept.
fn client_with_deadline(sdk: &aws_config::SdkConfig, op_timeout: Duration) -> Client {
    let long_poll = Duration::from_secs(LONG_POLL_SECS.unsigned_abs().into());
    let timeouts = sdk
        .timeout_config()
        .map(|t| t.to_builder())
        .unwrap_or_default()
        .operation_attempt_timeout(long_poll + op_timeout)
        .build();
    Client::from_conf(
        aws_sdk_sqs::config::Builder::from(sdk)
            .timeout_config(timeouts)
            .interceptor(crate::aws::CountRequests)
            .build(),
    )
}

/// Connects the agent's source and sink.
///
/// # Errors
/// A malformed URL or queues that cannot be found (or created).
pub(super) async fn connect(
    url: &str,
    settings: &QueueSettings,
) -> Result<(SqsSource, SqsSink), QueueError> {
    let sdk = crate::aws::sdk_config(&settings.aws).await;
    connect_with(url, settings, &sdk).await
}

/// [`super::open`] of an `sqs://` URL with an SDK configuration of the caller's (an embedder's
/// credentials, a test's emulator) instead of `settings.aws`.
///
/// # Errors
/// A malformed URL or queues that cannot be found (or created).
pub async fn open_with(
    url: &str,
    settings: &QueueSettings,
    sdk: &aws_config::SdkConfig,
) -> Result<super::Backend, QueueError> {
    let (source, sink) = connect_with(url, settings, sdk).await?;
    Ok(super::Backend {
        source: Box::new(source),
        sink: std::sync::Arc::new(sink),
        display: super::redact(url),
    })
}

async fn connect_with(
    url: &str,
    settings: &QueueSettings,
    sdk: &aws_config::SdkConfig,
) -> Result<(SqsSource, SqsSink), QueueError> {
    let names = parse_url(url)?;
    let client = client_with_deadline(sdk, settings.op_timeout);
    let urls = resolve(&client, &names, settings.delivery_limit).await?;
    tracing::info!(queue = %names.commands, results = %names.results, dlq = %names.dlq, "SQS queues resolved.");
    settings
        .health
        .store(true, std::sync::atomic::Ordering::SeqCst);
    Ok((
        SqsSource {
            client: client.clone(),
            urls: urls.clone(),
            settings: settings.clone(),
            buffer: VecDeque::new(),
        },
        SqsSink::new(client, urls),
    ))
}

/// A producer's and operator's view of an SQS queue.
#[derive(Debug)]
pub struct SqsClient {
    client: Client,
    urls: Urls,
}

impl SqsClient {
    /// A client of the queues named by `url`.
    ///
    /// # Errors
    /// A malformed URL or missing queues.
    pub async fn new(
        url: &str,
        aws: &crate::aws::AwsSettings,
        delivery_limit: u32,
    ) -> Result<SqsClient, QueueError> {
        Self::from_sdk(url, &crate::aws::sdk_config(aws).await, delivery_limit).await
    }

    /// A client from an SDK configuration already loaded.
    ///
    /// # Errors
    /// A malformed URL or missing queues.
    pub async fn from_sdk(
        url: &str,
        sdk: &aws_config::SdkConfig,
        delivery_limit: u32,
    ) -> Result<SqsClient, QueueError> {
        let names = parse_url(url)?;
        let client = client_with_deadline(sdk, super::DEFAULT_OP_TIMEOUT);
        let urls = resolve(&client, &names, delivery_limit).await?;
        Ok(SqsClient { client, urls })
    }

    async fn receive(
        &self,
        queue: &str,
        n: i32,
        wait: i32,
        visibility: i32,
    ) -> Result<Vec<aws_sdk_sqs::types::Message>, QueueError> {
        Ok(self
            .client
            .receive_message()
            .queue_url(queue)
            .max_number_of_messages(n)
            .wait_time_seconds(wait)
            .visibility_timeout(visibility)
            .message_attribute_names("All")
            .send()
            .await
            .map_err(sqs_err("receive"))?
            .messages
            .unwrap_or_default())
    }

    /// Makes a received message visible again in `after_secs`.
    async fn release(&self, queue: &str, receipt: &str, after_secs: i32) {
        let _ = self
            .client
            .change_message_visibility()
            .queue_url(queue)
            .receipt_handle(receipt)
            .visibility_timeout(after_secs)
            .send()
            .await;
    }
}

#[async_trait]
impl super::Client for SqsClient {
    async fn submit(&self, _id: &str, body: &[u8]) -> Result<(), QueueError> {
        self.client
            .send_message()
            .queue_url(&self.urls.commands)
            .message_body(String::from_utf8_lossy(body))
            .send()
            .await
            .map_err(sqs_err("send"))?;
        Ok(())
    }

    async fn watch(&self, command: Option<&str>) -> Result<Box<dyn super::EventWatch>, QueueError> {
        Ok(Box::new(SqsWatch::start(
            SqsClient {
                client: self.client.clone(),
                urls: self.urls.clone(),
            },
            command.map(str::to_string),
        )))
    }

    async fn dead_letters(&self, max: usize) -> Result<Vec<super::DeadLetter>, QueueError> {
        let mut out = Vec::new();
        let mut held = Vec::new();
        while out.len() < max {
            let batch = self.receive(&self.urls.dlq, 10, 1, 30).await?;
            if batch.is_empty() {
                break;
            }
            for m in batch {
                let reason = m
                    .message_attributes
                    .as_ref()
                    .and_then(|a| a.get(REASON_ATTRIBUTE))
                    .and_then(|v| v.string_value.clone())
                    .unwrap_or_else(|| "over the delivery limit (redrive policy)".into());
                out.push(super::DeadLetter {
                    body: m.body.unwrap_or_default().into_bytes(),
                    reason,
                });
                held.extend(m.receipt_handle);
            }
        }
        for r in held {
            self.release(&self.urls.dlq, &r, 0).await;
        }
        out.truncate(max);
        Ok(out)
    }

    async fn replay_one(&self) -> Result<Option<Vec<u8>>, QueueError> {
        let Some(m) = self
            .receive(&self.urls.dlq, 1, 1, 30)
            .await?
            .into_iter()
            .next()
        else {
            return Ok(None);
        };
        let body = m.body.unwrap_or_default();
        self.client
            .send_message()
            .queue_url(&self.urls.commands)
            .message_body(&body)
            .send()
            .await
            .map_err(sqs_err("send"))?;
        if let Some(r) = m.receipt_handle {
            self.client
                .delete_message()
                .queue_url(&self.urls.dlq)
                .receipt_handle(r)
                .send()
                .await
                .map_err(sqs_err("delete"))?;
        }
        Ok(Some(body.into_bytes()))
    }
}

/// How long a watch keeps another reader's event invisible, so its next receives see other
/// messages of the results queue.
const WATCH_RELEASE_SECS: i32 = 2;

/// Events from the results queue: those of `command` are consumed, others are left for their
/// readers (visible again after [`WATCH_RELEASE_SECS`]). A task of its own receives and deletes, and hands events over a channel, so `next`
/// is cancel-safe: a caller that gives up waiting (a timeout around it)
/// loses nothing. (Receiving inside `next` lost the rest of a received batch to the visibility
/// timeout whenever the caller's timeout fired in between, and again at the next try.)
#[derive(Debug)]
struct SqsWatch {
    events: tokio::sync::mpsc::Receiver<Result<Event, QueueError>>,
    task: tokio::task::JoinHandle<()>,
}

impl SqsWatch {
    fn start(client: SqsClient, command: Option<String>) -> SqsWatch {
        let (tx, events) = tokio::sync::mpsc::channel(64);
        let task = tokio::spawn(async move {
            let results = client.urls.results.clone();
            loop {
                let received = match client.receive(&results, 10, 5, 30).await {
                    Ok(m) => m,
                    Err(e) => {
                        if tx.send(Err(e)).await.is_err() {
                            return;
                        }
                        tokio::time::sleep(Duration::from_secs(1)).await;
                        continue;
                    }
                };
                for m in received {
                    let event = m
                        .body
                        .as_deref()
                        .and_then(|b| serde_json::from_str::<Event>(b).ok());
                    let Some(receipt) = m.receipt_handle else {
                        continue;
                    };
                    match event {
                        Some(e) if command.is_none() || e.command == command => {
                            if tx.send(Ok(e)).await.is_err() {
                                // Nobody watches any more: the message comes back after its
                                // visibility timeout for whoever reads next.
                                return;
                            }
                            let _ = client
                                .client
                                .delete_message()
                                .queue_url(&results)
                                .receipt_handle(receipt)
                                .send()
                                .await;
                        }
                        // Another reader's: back in a moment, not at once. Released at
                        // once, the same oldest messages came back to every receive (moto
                        // answers in order), and a watch behind a few dozen events nobody
                        // reads (`alloc.freed` after its CLI left) never reached its own.
                        _ => client.release(&results, &receipt, WATCH_RELEASE_SECS).await,
                    }
                }
            }
        });
        SqsWatch { events, task }
    }
}

impl Drop for SqsWatch {
    fn drop(&mut self) {
        self.task.abort();
    }
}

#[async_trait]
impl super::EventWatch for SqsWatch {
    async fn next(&mut self) -> Result<Event, QueueError> {
        match self.events.recv().await {
            Some(r) => r,
            None => Err(QueueError::Sqs {
                op: "watch events",
                message: "the receiving task ended".into(),
                permanent: false,
            }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_name_three_queues() {
        assert_eq!(
            parse_url("sqs://jobs").unwrap(),
            Names {
                commands: "jobs".into(),
                results: "jobs-results".into(),
                dlq: "jobs-dlq".into(),
                create: false
            }
        );
        let n = parse_url("sqs://jobs?results=out&dlq=dead&create=true").unwrap();
        assert_eq!(
            (n.results.as_str(), n.dlq.as_str(), n.create),
            ("out", "dead", true)
        );
        for bad in [
            "sqs://",
            "sqs://a/b",
            "sqs://jobs?x=1",
            "sqs://jobs?dlq=",
            "amqp://x",
        ] {
            assert!(parse_url(bad).is_err(), "{bad}");
        }
    }
}
