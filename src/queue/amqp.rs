//! `amqp://user:pass@host:port/vhost`: RabbitMQ through lapin.
//!
//! # Topology (durable; declared at each agent connect, by a client only when missing)
//! ```text
//! NS.commands          quorum queue shared by the fleet (x-delivery-limit, DLX NS.dlx)
//! NS.agent.<agent id>  quorum queue for commands addressed to allocs on one agent
//! NS.dlx               fanout exchange -> NS.commands.dlq (quorum)
//! NS.events            topic exchange; routing key = event kind, e.g. exec.completed
//! ```
//! `NS` is `reflow` unless the URL says `?ns=NAME` (several fleets on one vhost); the `ns`
//! parameter is removed before the URL reaches the client library, other parameters (e.g.
//! `heartbeat`) pass through. Producers publish commands to the default exchange with routing
//! key `NS.commands` (or an agent's queue), persistent. Events are published persistent with publisher confirms; an event
//! whose command named a `reply_to` queue also goes there.
//!
//! A job's delivery is held unacked until its outcome is durable, so a machine that dies
//! (its connection closes, or its heartbeats stop) returns every job it held to the queue for
//! another agent. The consumer prefetch bounds what is held, running jobs included, so an agent
//! receives only what it can start. The command queues are declared with `x-consumer-timeout`
//! from [`super::QueueSettings::max_job`] (honoured by RabbitMQ 3.12 and later; older brokers
//! need `consumer_timeout` in `rabbitmq.conf`, see docs/protocol.md). A lost connection is
//! re-established with backoff; what was held on it goes back to the queue, and when it comes
//! back to this agent it is attached to the job still running here (the journal), never run
//! beside it.
//!
//! Every broker operation (connect, declare, publish and its confirm, ack, cancel) has a deadline,
//! [`super::QueueSettings::op_timeout`]. A broker that stops answering (a half-open TCP link, a
//! publisher blocked by a memory or disk alarm, a restart that hangs half way) makes the operation
//! fail with [`QueueError::Timeout`]; its connection is dropped and made again. The consumer also
//! checks its connection every few seconds, so a link that died silently is noticed without
//! waiting for the next delivery.

use std::collections::BTreeMap;
use std::future::Future;
use std::time::Duration;

use async_trait::async_trait;
use futures_util::{FutureExt, StreamExt};
use lapin::Confirmation;
use lapin::options::{
    BasicAckOptions, BasicCancelOptions, BasicConsumeOptions, BasicGetOptions, BasicNackOptions,
    BasicPublishOptions, BasicQosOptions, ConfirmSelectOptions, ExchangeDeclareOptions,
    QueueBindOptions, QueueDeclareOptions, QueueDeleteOptions,
};
use lapin::types::{AMQPValue, FieldTable, LongString, ShortString};
use lapin::{BasicProperties, Channel, Connection, ConnectionProperties, ExchangeKind};
use tokio::sync::Mutex;

use super::{Batch, CommandSource, Delivery, EventSink, QueueError, QueueSettings, Settle};
use crate::protocol::Event;

use super::amqp_url::with_default;
pub use super::amqp_url::{
    CONSUMER_TIMEOUT_MARGIN, FRAME_MAX, Topology, hosts, split_url, with_heartbeat,
};

/// Header carrying a dead-letter reason.
pub const REASON_HEADER: &str = "x-reflow-reason";

fn amqp_err(op: &'static str) -> impl FnOnce(lapin::Error) -> QueueError {
    move |e| QueueError::Amqp {
        op,
        message: e.to_string(),
    }
}

/// Why a publish may get no answer: the broker blocks publishing connections while it has a
/// resource alarm (memory or disk).
const BLOCKED: &str = "; the broker is blocking publishers (resource alarm)";

/// How often a waiting consumer checks that its connection is still up.
const LIVENESS_CHECK: Duration = Duration::from_secs(5);

/// Runs `f` under the operation deadline `limit`.
async fn deadline<T>(
    op: &'static str,
    limit: Duration,
    f: impl Future<Output = Result<T, QueueError>>,
) -> Result<T, QueueError> {
    // Every broker operation passes here once: counted as a request (`declare` is the whole
    // topology of a connection; `publish` includes its confirm).
    crate::requests::count("amqp", op);
    tokio::time::timeout(limit, f)
        .await
        .unwrap_or(Err(QueueError::Timeout {
            op,
            after: limit,
            blocked: "",
        }))
}

/// [`deadline`] for one lapin call.
async fn call<T>(
    op: &'static str,
    limit: Duration,
    f: impl Future<Output = lapin::Result<T>>,
) -> Result<T, QueueError> {
    deadline(op, limit, async { f.await.map_err(amqp_err(op)) }).await
}

/// Reconnection delays to a broker: from 100 ms, doubling, up to `max`.
fn reconnect_backoff(max: Duration) -> crate::backoff::Backoff {
    crate::backoff::Backoff::new(Duration::from_millis(100), 2.0, max)
}

/// Whether a connection and its channel are both still open.
fn up(conn: &Connection, ch: &Channel) -> bool {
    conn.status().connected() && ch.status().connected()
}

/// Where a broker is and how to trust it: the URL lapin connects to (`amqp://`, or `amqps://`
/// for TLS), and for `amqps://` the CAs to trust besides the system's and the client identity.
/// A URL may name several brokers (a cluster's nodes, [`hosts`]): a connection goes to the one
/// that answered last, else to the others in turn.
#[derive(Clone)]
pub struct Broker {
    url: String,
    urls: Vec<String>,
    /// Which of `urls` answered last (shared by clones).
    current: std::sync::Arc<std::sync::atomic::AtomicUsize>,
    tls: super::Tls,
}

impl Broker {
    /// The broker at `url` (namespace parameter already removed), with `tls` for `amqps://`.
    pub fn new(url: impl Into<String>, tls: super::Tls) -> Broker {
        let url = url.into();
        Broker {
            urls: hosts(&with_default(&url, "frame_max", FRAME_MAX)),
            url,
            current: Default::default(),
            tls,
        }
    }
}

impl std::fmt::Debug for Broker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Broker")
            .field("url", &super::redact(&self.url))
            .field("tls", &self.tls)
            .finish()
    }
}

async fn open_channel(
    broker: &Broker,
    limit: Duration,
) -> Result<(Connection, Channel), QueueError> {
    // TLS for amqps:// (rustls, verifying the broker's certificate and host name against the
    // system's CAs and `tls.ca`, presenting `tls.identity` when set); plain TCP for amqp://. Never a downgrade: an amqps:// broker
    // that does not speak TLS is an error.
    // With the AWS SDK in the build rustls has two crypto providers and picks none by itself;
    // lapin's TLS uses ring (the SDK configures its own provider explicitly).
    static PROVIDER: std::sync::Once = std::sync::Once::new();
    PROVIDER.call_once(|| {
        let _ = rustls::crypto::ring::default_provider().install_default();
    });
    let tls = || lapin::tcp::OwnedTLSConfig {
        identity: broker
            .tls
            .identity
            .as_ref()
            .map(|id| lapin::tcp::OwnedIdentity::PKCS12 {
                der: id.pkcs12.clone(),
                password: id.password.clone(),
            }),
        cert_chain: broker.tls.ca.clone(),
    };
    let first = broker.current.load(std::sync::atomic::Ordering::Relaxed);
    // `hosts` gives at least one URL, so this is replaced by a real failure or never seen.
    let mut failure = QueueError::Url {
        url: super::redact(&broker.url),
    };
    for i in 0..broker.urls.len() {
        let at = (first + i) % broker.urls.len();
        match call(
            "connect",
            limit,
            Connection::connect_with_config(
                &broker.urls[at],
                ConnectionProperties::default().with_connection_name("reflow-agent".into()),
                tls(),
                lapin::runtime::default_runtime().map_err(amqp_err("runtime"))?,
            ),
        )
        .await
        {
            Ok(conn) => {
                broker
                    .current
                    .store(at, std::sync::atomic::Ordering::Relaxed);
                let ch = call("open channel", limit, conn.create_channel()).await?;
                return Ok((conn, ch));
            }
            Err(e) => {
                if broker.urls.len() > 1 {
                    tracing::warn!(broker = %super::redact(&broker.urls[at]), error = %crate::error::chain(&e), "A broker of the URL did not answer; trying the next.");
                }
                failure = e;
            }
        }
    }
    Err(identity_hint(failure, broker))
}

/// A broker that requires a client certificate and gets none closes the link right after the
/// TLS handshake, which the client sees only as an I/O error; say what to configure.
fn identity_hint(e: QueueError, broker: &Broker) -> QueueError {
    match e {
        QueueError::Amqp { op, message }
            if broker.url.starts_with("amqps://")
                && broker.tls.identity.is_none()
                && message.contains("IO error") =>
        {
            QueueError::Amqp {
                op,
                message: format!(
                    "{message} (a broker that requires a client certificate closes the link \
                     like this: set queue.tls_client_identity_file)"
                ),
            }
        }
        other => other,
    }
}

fn quorum_args(t: &Topology, delivery_limit: u32, dlx: bool) -> FieldTable {
    let topo = t;
    let mut t = FieldTable::default();
    t.insert(
        "x-queue-type".into(),
        AMQPValue::LongString("quorum".into()),
    );
    if dlx {
        t.insert(
            "x-delivery-limit".into(),
            AMQPValue::LongInt(i32::try_from(delivery_limit).unwrap_or(i32::MAX)),
        );
        t.insert(
            "x-dead-letter-exchange".into(),
            AMQPValue::LongString(topo.dlx.as_str().into()),
        );
        // The first declaration of a queue sets it; later ones with another value are ignored
        // by the broker (a `consumer-timeout` policy changes it).
        t.insert(
            "x-consumer-timeout".into(),
            AMQPValue::LongLongInt(
                i64::try_from(topo.consumer_timeout.as_millis()).unwrap_or(i64::MAX),
            ),
        );
    }
    t
}

fn durable() -> QueueDeclareOptions {
    QueueDeclareOptions {
        durable: true,
        ..QueueDeclareOptions::default()
    }
}

/// [`durable`], sent without waiting for the broker's answer (a pipelined declaration).
fn durable_nowait() -> QueueDeclareOptions {
    QueueDeclareOptions {
        nowait: true,
        ..durable()
    }
}

/// Declares the shared topology (idempotent; a queue declared earlier with other arguments is
/// reported as the broker's PRECONDITION_FAILED), within `limit`.
async fn declare(
    ch: &Channel,
    t: &Topology,
    delivery_limit: u32,
    limit: Duration,
) -> Result<(), QueueError> {
    deadline("declare", limit, declare_all(ch, t, delivery_limit, false)).await
}

/// The events exchange alone: all an event watch binds to. Sent without waiting for the
/// broker's answer (see [`declare_all`]).
async fn declare_events(ch: &Channel, t: &Topology) -> Result<(), QueueError> {
    ch.exchange_declare(
        t.events.as_str().into(),
        ExchangeKind::Topic,
        ExchangeDeclareOptions {
            durable: true,
            nowait: true,
            ..ExchangeDeclareOptions::default()
        },
        FieldTable::default(),
    )
    .await
    .map_err(amqp_err("declare events exchange"))
}

/// Declares the topology pipelined: every declaration but the last is sent `nowait`, and the
/// last one's answer is awaited. A channel handles its methods in order, so that answer means
/// all of them took effect; a refused one (PRECONDITION_FAILED, naming its queue) closes the
/// channel, and the awaited answer is that error. One round trip instead of five, on the path
/// of every `submit`. With `then_more`, the last one is sent `nowait` too: the caller sends
/// more on the channel and awaits an answer behind them all.
async fn declare_all(
    ch: &Channel,
    t: &Topology,
    delivery_limit: u32,
    then_more: bool,
) -> Result<(), QueueError> {
    let ex = ExchangeDeclareOptions {
        durable: true,
        nowait: true,
        ..ExchangeDeclareOptions::default()
    };
    declare_events(ch, t).await?;
    ch.exchange_declare(
        t.dlx.as_str().into(),
        ExchangeKind::Fanout,
        ex,
        FieldTable::default(),
    )
    .await
    .map_err(amqp_err("declare dead-letter exchange"))?;
    ch.queue_declare(
        t.dlq.as_str().into(),
        durable_nowait(),
        quorum_args(t, delivery_limit, false),
    )
    .await
    .map_err(amqp_err("declare dead-letter queue"))?;
    ch.queue_bind(
        t.dlq.as_str().into(),
        t.dlx.as_str().into(),
        "".into(),
        QueueBindOptions { nowait: true },
        FieldTable::default(),
    )
    .await
    .map_err(amqp_err("bind dead-letter queue"))?;
    ch.queue_declare(
        t.commands.as_str().into(),
        QueueDeclareOptions {
            nowait: then_more,
            ..durable()
        },
        quorum_args(t, delivery_limit, true),
    )
    .await
    .map_err(amqp_err("declare topology (the command queue last)"))?;
    Ok(())
}

/// Starts consuming `queue` (manual acks) as `tag`, within `limit`.
async fn consume_from(
    ch: &Channel,
    queue: &str,
    tag: &str,
    limit: Duration,
) -> Result<lapin::Consumer, QueueError> {
    call(
        "consume",
        limit,
        ch.basic_consume(
            queue.into(),
            tag.into(),
            BasicConsumeOptions::default(),
            FieldTable::default(),
        ),
    )
    .await
}

fn persistent(headers: FieldTable) -> BasicProperties {
    BasicProperties::default()
        .with_delivery_mode(2)
        .with_content_type("application/json".into())
        .with_headers(headers)
}

/// Publishes with confirms, reconnecting on the next call after a failure.
#[derive(Debug)]
struct Publisher {
    broker: Broker,
    topo: Topology,
    delivery_limit: u32,
    limit: Duration,
    /// Whether a new connection declares the topology before anything else: the agent's,
    /// which publishes to `NS.events`. A client's does not; its commands are sent
    /// `mandatory`, and one the broker returns (no command queue) makes it declare the
    /// topology then ([`Publisher::send_command`]).
    declares: bool,
    ch: Mutex<Option<(Connection, Channel)>>,
}

impl Publisher {
    fn new(
        broker: Broker,
        topo: Topology,
        delivery_limit: u32,
        limit: Duration,
        declares: bool,
    ) -> Publisher {
        Publisher {
            broker,
            topo,
            delivery_limit,
            limit,
            declares,
            ch: Mutex::new(None),
        }
    }

    /// Connects (with publisher confirms, and the topology declared if the publisher
    /// [`declares`](Publisher::declares)) unless connected.
    async fn ready(&self) -> Result<(), QueueError> {
        self.ensure(&mut *self.ch.lock().await, None)
            .await
            .map(drop)
    }

    /// Connects as [`Publisher::ready`] does, and starts the watch `w` on the same channel.
    /// Returns the shared channel and the watch's consumer.
    async fn ensure_watching(
        &self,
        w: &AmqpWatch,
    ) -> Result<(Channel, lapin::Consumer), QueueError> {
        let mut slot = self.ch.lock().await;
        let consumer = self.ensure(&mut slot, Some(w)).await?;
        match (slot.as_ref(), consumer) {
            (Some((_, ch)), Some(consumer)) => Ok((ch.clone(), consumer)),
            _ => unreachable!("connected and watching above"),
        }
    }

    /// Connects unless connected: confirm select, then the topology (if the publisher
    /// declares; else the events exchange alone when `watch` binds to it), pipelined behind it,
    /// and with `watch` that watch's queue declared, bound and consumed behind them, so that
    /// one round trip answers for all of it. A command published on the channel afterwards is
    /// routed only once the watch's queue is there and bound: a channel handles its methods in
    /// order. Returns the watch's consumer.
    async fn ensure(
        &self,
        slot: &mut Option<(Connection, Channel)>,
        watch: Option<&AmqpWatch>,
    ) -> Result<Option<lapin::Consumer>, QueueError> {
        let start = |ch: Channel| async move {
            match watch {
                Some(w) => w.start_on(&ch).await.map(Some),
                None => Ok(None),
            }
        };
        if let Some((conn, ch)) = slot.as_ref()
            && up(conn, ch)
        {
            return start(ch.clone()).await;
        }
        // Dropped first: a dead connection is not kept while a new one is made.
        *slot = None;
        let (conn, ch) = open_channel(&self.broker, self.limit).await?;
        // Polled in order: confirm select's frame is sent first, then the declarations.
        let (confirmed, consumer) = tokio::join!(
            call(
                "confirm select",
                self.limit,
                ch.confirm_select(ConfirmSelectOptions::default()),
            ),
            async {
                let more = watch.is_some();
                if self.declares {
                    let topology = declare_all(&ch, &self.topo, self.delivery_limit, more);
                    deadline("declare", self.limit, topology).await?;
                } else if watch.is_some_and(|w| !w.keys.is_empty()) {
                    declare_events(&ch, &self.topo).await?;
                }
                start(ch.clone()).await
            },
        );
        confirmed?;
        let consumer = consumer?;
        *slot = Some((conn, ch));
        Ok(consumer)
    }

    async fn publish(
        &self,
        exchange: &str,
        routing_key: &str,
        body: &[u8],
        headers: FieldTable,
    ) -> Result<(), QueueError> {
        let one = Outgoing {
            exchange,
            routing_key,
            body,
            headers,
        };
        match self.publish_all(vec![one]).await {
            (_, Some(e)) => Err(e),
            (_, None) => Ok(()),
        }
    }

    /// Publishes `msgs` in order on one channel, pipelined: every message is sent before the
    /// first confirm is awaited, so a batch waits for one round trip and one broker write, not
    /// one per message. Returns how many messages from the first were confirmed, and the first
    /// failure (the connection is then dropped and made again on the next call).
    async fn publish_all(&self, msgs: Vec<Outgoing<'_>>) -> (usize, Option<QueueError>) {
        let mut confirmed = 0;
        let r = self
            .publishing(async |ch: &Channel| {
                // Every message is queued on the channel before any is awaited: lapin hands
                // each publish to its I/O thread and wakes the caller once it is written, so
                // awaiting them one by one cost a hand-off per message (about 0.4 ms each here,
                // 2.5 ms for a job's outcome with its states, each to `NS.events` and a reply
                // queue). A publish queues its frames, and takes its delivery tag, when first
                // polled, which `join_in_order` does in order.
                let sends = msgs.into_iter().map(|m| {
                    ch.basic_publish(
                        m.exchange.into(),
                        m.routing_key.into(),
                        BasicPublishOptions::default(),
                        m.body,
                        persistent(m.headers),
                    )
                });
                let confirms = crate::par::join_in_order(sends)
                    .await
                    .into_iter()
                    .collect::<Result<Vec<_>, _>>()
                    .map_err(amqp_err("publish"))?;
                for confirm in confirms {
                    match confirm.await.map_err(amqp_err("publisher confirm"))? {
                        Confirmation::Nack(_) => return Err(nacked()),
                        _ => confirmed += 1,
                    }
                }
                Ok(())
            })
            .await;
        (confirmed, r.err())
    }

    /// Sends a command to the command queue, `mandatory`. A broker without the command queue
    /// (no agent or client declared the topology yet) returns it: the topology is declared then
    /// on the channel, the dead-letter queue before the command queue, and the command sent
    /// again, once. So a client declares nothing on the path of every command.
    async fn send_command(&self, body: &[u8]) -> Result<(), QueueError> {
        let queue = self.topo.commands.as_str();
        self.publishing(async |ch: &Channel| {
            let mut declared = false;
            loop {
                let confirm = ch
                    .basic_publish(
                        "".into(),
                        queue.into(),
                        BasicPublishOptions {
                            mandatory: true,
                            ..BasicPublishOptions::default()
                        },
                        body,
                        persistent(FieldTable::default()),
                    )
                    .await
                    .map_err(amqp_err("publish"))?;
                match confirm.await.map_err(amqp_err("publisher confirm"))? {
                    Confirmation::Nack(_) => return Err(nacked()),
                    Confirmation::Ack(Some(_)) if !declared => {
                        tracing::debug!(queue, "No command queue yet; declaring the topology.");
                        declare_all(ch, &self.topo, self.delivery_limit, false).await?;
                        declared = true;
                    }
                    Confirmation::Ack(Some(_)) => {
                        return Err(QueueError::Amqp {
                            op: "publish",
                            message: format!(
                                "the broker returned the command: no queue {queue}, even after declaring it"
                            ),
                        });
                    }
                    _ => return Ok(()),
                }
            }
        })
        .await
    }

    /// Runs `publish` on the channel (connecting first unless connected) within the
    /// operation deadline. A failure drops the connection, made again on the next call; a
    /// timeout says so when the broker is blocking publishers.
    async fn publishing(
        &self,
        publish: impl AsyncFnOnce(&Channel) -> Result<(), QueueError>,
    ) -> Result<(), QueueError> {
        let mut guard = self.ch.lock().await;
        self.ensure(&mut guard, None).await?;
        let Some((conn, ch)) = guard.as_ref() else {
            unreachable!("connected above")
        };
        let r = match deadline("publish", self.limit, publish(ch)).await {
            Err(QueueError::Timeout { op, after, .. }) if conn.status().blocked() => {
                Err(QueueError::Timeout {
                    op,
                    after,
                    blocked: BLOCKED,
                })
            }
            r => r,
        };
        if r.is_err() {
            *guard = None;
        }
        r
    }
}

/// The error of a message the broker nacked.
fn nacked() -> QueueError {
    QueueError::Amqp {
        op: "publish",
        message: "the broker nacked the message".into(),
    }
}

/// One message for [`Publisher::publish_all`].
struct Outgoing<'a> {
    exchange: &'a str,
    routing_key: &'a str,
    body: &'a [u8],
    headers: FieldTable,
}

/// Commands from the fleet queue and this agent's queue.
pub struct AmqpSource {
    broker: Broker,
    topo: Topology,
    settings: QueueSettings,
    consumer: Option<(Connection, Channel, lapin::Consumer, lapin::Consumer)>,
    /// The connection of a closed consumer, kept open while the source lives so deliveries in
    /// progress can still be settled; dropping the source returns what is left to the queue.
    closed: Option<(Connection, Channel)>,
    publisher: std::sync::Arc<Publisher>,
    backoff: crate::backoff::Backoff,
}

impl std::fmt::Debug for AmqpSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AmqpSource")
            .field("broker", &self.broker)
            .field("connected", &self.consumer.is_some())
            .finish()
    }
}

const TAG_SHARED: &str = "reflow-agent.shared";
const TAG_OWN: &str = "reflow-agent.own";
/// Deliveries held at once from the agent's own queue (requests addressed to its allocs).
const OWN_PREFETCH: u16 = 16;

impl AmqpSource {
    /// Forgets a consumer whose connection is gone: not ready until the next one is made.
    fn lost(&mut self) {
        self.consumer = None;
        self.settings
            .health
            .store(false, std::sync::atomic::Ordering::SeqCst);
    }

    async fn consume(&mut self) -> Result<(), QueueError> {
        let limit = self.settings.op_timeout;
        let (conn, ch) = open_channel(&self.broker, limit).await?;
        declare(&ch, &self.topo, self.settings.delivery_limit, limit).await?;
        let own = self.topo.agent_queue(&self.settings.agent_id);
        call(
            "declare agent queue",
            limit,
            ch.queue_declare(
                own.as_str().into(),
                durable(),
                quorum_args(&self.topo, self.settings.delivery_limit, true),
            ),
        )
        .await?;
        // A per-consumer limit (qos is set before each consume): the shared queue gives this
        // agent only as many commands as it can hold, running jobs included, so idle agents get
        // the rest; commands addressed to this agent's allocs have their own allowance, so a
        // full agent still answers them.
        let qos = |n: u16| {
            call(
                "qos",
                limit,
                ch.basic_qos(n.max(1), BasicQosOptions::default()),
            )
        };
        qos(self.settings.prefetch).await?;
        let shared = consume_from(&ch, &self.topo.commands, TAG_SHARED, limit).await?;
        qos(OWN_PREFETCH).await?;
        let mine = consume_from(&ch, &own, TAG_OWN, limit).await?;
        tracing::info!(queue = %self.topo.commands, own = %own, prefetch = self.settings.prefetch, "Consuming commands.");
        self.consumer = Some((conn, ch, shared, mine));
        self.backoff.reset();
        self.settings
            .health
            .store(true, std::sync::atomic::Ordering::SeqCst);
        Ok(())
    }
}

/// The delivery count of a quorum-queue message (`x-delivery-count` counts earlier deliveries).
fn attempt_of(props: &BasicProperties, redelivered: bool) -> u32 {
    let earlier = props
        .headers()
        .as_ref()
        .and_then(|h| h.inner().get("x-delivery-count").cloned())
        .and_then(|v| match v {
            AMQPValue::LongLongInt(n) => u32::try_from(n).ok(),
            AMQPValue::LongInt(n) => u32::try_from(n).ok(),
            AMQPValue::ShortInt(n) => u32::try_from(n).ok(),
            AMQPValue::LongUInt(n) => Some(n),
            _ => None,
        });
    match earlier {
        Some(n) => n.saturating_add(1),
        None => 1 + u32::from(redelivered),
    }
}

#[async_trait]
impl CommandSource for AmqpSource {
    async fn next(&mut self, _room: usize) -> Result<Option<Delivery>, QueueError> {
        loop {
            if self.settings.close.is_cancelled() {
                return Ok(None);
            }
            if self.consumer.is_none()
                && let Err(e) = self.consume().await
            {
                let wait = self.backoff.next_delay();
                tracing::warn!(error = %crate::error::chain(&e), retry_in_ms = u64::try_from(wait.as_millis()).unwrap_or(u64::MAX), "AMQP connection failed; reconnecting.");
                tokio::select! {
                    () = self.settings.close.cancelled() => return Ok(None),
                    () = tokio::time::sleep(wait) => {}
                }
                continue;
            }
            let Some((conn, ch, shared, mine)) = self.consumer.as_mut() else {
                continue;
            };
            let item = tokio::select! {
                () = self.settings.close.cancelled() => return Ok(None),
                item = shared.next() => Some(item),
                item = mine.next() => Some(item),
                () = tokio::time::sleep(LIVENESS_CHECK) => None,
            };
            let Some(item) = item else {
                if !up(conn, ch) {
                    tracing::warn!(
                        "AMQP connection lost while waiting for commands; reconnecting."
                    );
                    self.lost();
                }
                continue;
            };
            match item {
                Some(Ok(d)) => {
                    let attempt = attempt_of(&d.properties, d.redelivered);
                    let lapin::message::Delivery {
                        data,
                        acker,
                        redelivered,
                        ..
                    } = d;
                    return Ok(Some(Delivery {
                        settle: Box::new(AmqpSettle {
                            acker,
                            limit: self.settings.op_timeout,
                            body: data.clone(),
                            publisher: self.publisher.clone(),
                        }),
                        body: data,
                        redelivered,
                        attempt,
                    }));
                }
                Some(Err(e)) => {
                    tracing::warn!(error = %crate::error::chain(&e), "AMQP consumer failed; reconnecting.");
                    self.lost();
                }
                None => {
                    tracing::warn!("AMQP consumer ended; reconnecting.");
                    self.lost();
                }
            }
        }
    }

    async fn close(&mut self) {
        let Some((conn, ch, shared, mine)) = self.consumer.take() else {
            return;
        };
        let limit = self.settings.op_timeout;
        let mut stream = futures_util::stream::select(shared, mine);
        for tag in [TAG_SHARED, TAG_OWN] {
            if let Err(e) = call(
                "cancel consumer",
                limit,
                ch.basic_cancel(tag.into(), BasicCancelOptions::default()),
            )
            .await
            {
                // The connection is gone or not answering: what it held goes back to the
                // queue when the broker notices, and the journal dedupes it.
                tracing::warn!(error = %crate::error::chain(&e), "Cancelling the consumer failed.");
                return;
            }
        }
        // Messages prefetched but not returned by next(): hand them back at once.
        let mut returned = 0;
        while let Ok(Some(Ok(d))) =
            tokio::time::timeout(Duration::from_millis(200), stream.next()).await
        {
            if let Err(e) = call("nack", limit, d.acker.nack(requeue())).await {
                tracing::warn!(error = %crate::error::chain(&e), returned, "Handing back prefetched commands failed; the broker requeues them when the connection closes.");
                return;
            }
            returned += 1;
        }
        tracing::info!(
            returned,
            "Stopped consuming; prefetched commands handed back."
        );
        self.closed = Some((conn, ch));
    }
}

fn requeue() -> BasicNackOptions {
    BasicNackOptions {
        requeue: true,
        ..BasicNackOptions::default()
    }
}

/// Settles one AMQP delivery.
struct AmqpSettle {
    acker: lapin::Acker,
    limit: Duration,
    body: Vec<u8>,
    publisher: std::sync::Arc<Publisher>,
}

impl std::fmt::Debug for AmqpSettle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AmqpSettle").finish_non_exhaustive()
    }
}

#[async_trait]
impl Settle for AmqpSettle {
    async fn ack(self: Box<Self>) -> Result<(), QueueError> {
        call(
            "ack",
            self.limit,
            self.acker.ack(BasicAckOptions::default()),
        )
        .await
        .map(drop)
    }

    async fn requeue(self: Box<Self>) -> Result<(), QueueError> {
        call("nack", self.limit, self.acker.nack(requeue()))
            .await
            .map(drop)
    }

    async fn dead_letter(self: Box<Self>, reason: &str) -> Result<(), QueueError> {
        // A copy with the reason goes to the dead-letter exchange (confirmed), then the
        // original is acked: the reason travels with the message.
        let mut h = FieldTable::default();
        h.insert(
            REASON_HEADER.into(),
            AMQPValue::LongString(LongString::from(
                reason.chars().take(1000).collect::<String>(),
            )),
        );
        let dlx = self.publisher.topo.dlx.clone();
        self.publisher.publish(&dlx, "", &self.body, h).await?;
        call(
            "ack",
            self.limit,
            self.acker.ack(BasicAckOptions::default()),
        )
        .await
        .map(drop)
    }
}

/// Events to the topic exchange.
#[derive(Debug)]
pub struct AmqpSink {
    publisher: std::sync::Arc<Publisher>,
}

/// Most events [`AmqpSink::publish_batch`] pipelines at once.
const PIPELINE: usize = 64;

#[async_trait]
impl EventSink for AmqpSink {
    async fn publish(&self, event: &Event) -> Result<(), QueueError> {
        self.publish_batch(std::slice::from_ref(event))
            .await
            .into_result()
    }

    fn max_batch(&self) -> usize {
        PIPELINE
    }

    /// Each event costs the broker a routing, a write to every durable queue bound to it and
    /// a confirm, and each watcher a delivery: an exec's `created` and `running` states sent
    /// at once take that CPU while the engine starts the container. Held for company, they go
    /// in one pipelined batch with the outcome (measured: one job about 6 ms sooner).
    fn lingers(&self) -> bool {
        true
    }

    /// Every event to the topic exchange (and a reply's copy to its queue), all pipelined on
    /// the publisher's channel before the first confirm is awaited.
    async fn publish_batch(&self, events: &[Event]) -> Batch {
        let mut bodies = Vec::with_capacity(events.len());
        let mut encode_error = None;
        for event in events {
            match serde_json::to_vec(event) {
                Ok(b) => bodies.push(b),
                Err(e) => {
                    encode_error = Some(QueueError::Amqp {
                        op: "encode event",
                        message: e.to_string(),
                    });
                    break;
                }
            }
        }
        // Per event, how many messages there are up to and including its own.
        let mut ends = Vec::with_capacity(bodies.len());
        let mut msgs = Vec::with_capacity(bodies.len());
        for (event, body) in events.iter().zip(&bodies) {
            let mut headers = FieldTable::default();
            headers.insert(
                "event-id".into(),
                AMQPValue::LongString(event.id.as_str().into()),
            );
            msgs.push(Outgoing {
                exchange: &self.publisher.topo.events,
                routing_key: event.body.kind(),
                body,
                headers: headers.clone(),
            });
            if let Some(q) = event.labels.get(crate::protocol::REPLY_TO_LABEL) {
                msgs.push(Outgoing {
                    exchange: "",
                    routing_key: q,
                    body,
                    headers,
                });
            }
            ends.push(msgs.len());
        }
        let (confirmed, error) = if msgs.is_empty() {
            (0, None)
        } else {
            self.publisher.publish_all(msgs).await
        };
        let mut published: Vec<bool> = ends.iter().map(|end| *end <= confirmed).collect();
        published.resize(events.len(), false);
        Batch {
            published,
            error: error.or(encode_error),
        }
    }
}

/// Connects the agent's source and sink.
///
/// # Errors
/// The broker cannot be reached or the topology conflicts with an existing one.
pub(super) async fn connect(
    url: &str,
    settings: &QueueSettings,
) -> Result<(AmqpSource, AmqpSink), QueueError> {
    let (url, mut topo) = split_url(url)?;
    topo.consumer_timeout = settings.max_job + CONSUMER_TIMEOUT_MARGIN;
    let broker = Broker::new(
        with_heartbeat(&url, settings.op_timeout),
        settings.tls.clone(),
    );
    let publisher = std::sync::Arc::new(Publisher::new(
        broker.clone(),
        topo.clone(),
        settings.delivery_limit,
        settings.op_timeout,
        true,
    ));
    let mut source = AmqpSource {
        broker,
        topo,
        settings: settings.clone(),
        consumer: None,
        closed: None,
        publisher: publisher.clone(),
        backoff: reconnect_backoff(Duration::from_secs(10)),
    };
    // Fail fast at start on a wrong URL or credentials; later losses reconnect.
    source.consume().await?;
    Ok((source, AmqpSink { publisher }))
}

/// A producer's and operator's view of an AMQP queue.
#[derive(Debug)]
pub struct AmqpClient {
    broker: Broker,
    publisher: Publisher,
}

/// How long the broker keeps an event watch's queue once nothing consumes it.
pub const WATCH_QUEUE_EXPIRES: Duration = Duration::from_secs(600);

impl AmqpClient {
    /// A watch through a new queue of its own, `NS.watch.<random>`, bound to `NS.events` with
    /// each of `keys`.
    async fn watch_queue(&self, keys: &[&'static str]) -> Result<AmqpWatch, QueueError> {
        let mut b = [0u8; 8];
        getrandom::fill(&mut b).map_err(|e| QueueError::Amqp {
            op: "name watch queue",
            message: e.to_string(),
        })?;
        let hex: String = b.iter().map(|x| format!("{x:02x}")).collect();
        let mut w = AmqpWatch {
            broker: self.broker.clone(),
            topo: self.topo().clone(),
            limit: self.limit(),
            queue: format!(
                "{}{}{hex}",
                self.topo().ns,
                crate::protocol::WATCH_QUEUE_INFIX
            ),
            keys: keys.to_vec(),
            conn: None,
            taken: Vec::new(),
        };
        // The queue is made here, so events from now on are kept for the watcher; on the
        // publisher's connection, so a command sent next needs no connection of its own.
        let (ch, consumer) = self.publisher.ensure_watching(&w).await?;
        w.conn = Some((None, ch, consumer));
        Ok(w)
    }

    /// A client of the broker at `url`, with `tls` for `amqps://`.
    ///
    /// # Errors
    /// A malformed namespace parameter.
    pub fn new(url: &str, delivery_limit: u32, tls: super::Tls) -> Result<AmqpClient, QueueError> {
        let (url, topo) = split_url(url)?;
        let broker = Broker::new(url, tls);
        Ok(AmqpClient {
            publisher: Publisher::new(
                broker.clone(),
                topo,
                delivery_limit,
                super::DEFAULT_OP_TIMEOUT,
                false,
            ),
            broker,
        })
    }

    fn topo(&self) -> &Topology {
        &self.publisher.topo
    }

    fn limit(&self) -> Duration {
        self.publisher.limit
    }
}

#[async_trait]
impl super::Client for AmqpClient {
    async fn prepare(&self) -> Result<(), QueueError> {
        self.publisher.ready().await
    }

    async fn submit(&self, _id: &str, body: &[u8]) -> Result<(), QueueError> {
        self.publisher.send_command(body).await
    }

    async fn watch(
        &self,
        _command: Option<&str>,
    ) -> Result<Box<dyn super::EventWatch>, QueueError> {
        Ok(Box::new(self.watch_queue(&["#"]).await?))
    }

    async fn watch_replies(
        &self,
        _command: &str,
    ) -> Result<Option<(Box<dyn super::EventWatch>, String)>, QueueError> {
        // Bound to nothing: every event of the command, its rejection included, is copied
        // to the queue (`protocol::is_client_queue`).
        let w = self.watch_queue(&[]).await?;
        let reply_to = w.queue.clone();
        Ok(Some((Box::new(w), reply_to)))
    }

    async fn close(&self) {
        if let Some((conn, _ch)) = self.publisher.ch.lock().await.take() {
            let _ = tokio::time::timeout(self.limit(), conn.close(200, "done".into())).await;
        }
    }

    async fn dead_letters(&self, max: usize) -> Result<Vec<super::DeadLetter>, QueueError> {
        // Read without acking, then close the channel: every message goes back, in order.
        let limit = self.limit();
        let (conn, ch) = open_channel(&self.broker, limit).await?;
        declare(&ch, self.topo(), self.publisher.delivery_limit, limit).await?;
        let mut out = Vec::new();
        while out.len() < max {
            let Some(m) = call(
                "get",
                limit,
                ch.basic_get(
                    self.topo().dlq.as_str().into(),
                    BasicGetOptions { no_ack: false },
                ),
            )
            .await?
            else {
                break;
            };
            out.push(super::DeadLetter {
                reason: reason_of(&m.delivery.properties),
                body: m.delivery.data.clone(),
            });
        }
        close_quietly(conn, ch, "listed", limit).await;
        Ok(out)
    }

    async fn replay_one(&self) -> Result<Option<Vec<u8>>, QueueError> {
        let limit = self.limit();
        let (conn, ch) = open_channel(&self.broker, limit).await?;
        let got = call(
            "get",
            limit,
            ch.basic_get(
                self.topo().dlq.as_str().into(),
                BasicGetOptions { no_ack: false },
            ),
        )
        .await?;
        let out = match got {
            Some(m) => {
                self.publisher.send_command(&m.delivery.data).await?;
                call(
                    "ack",
                    limit,
                    m.delivery.acker.ack(BasicAckOptions::default()),
                )
                .await?;
                Some(m.delivery.data.clone())
            }
            None => None,
        };
        close_quietly(conn, ch, "replayed", limit).await;
        Ok(out)
    }
}

/// Closes a short-lived channel and its connection, waiting at most `limit` for each.
async fn close_quietly(conn: Connection, ch: Channel, why: &str, limit: Duration) {
    let _ = tokio::time::timeout(limit, ch.close(200, why.into())).await;
    let _ = tokio::time::timeout(limit, conn.close(200, why.into())).await;
}

fn reason_of(props: &BasicProperties) -> String {
    let Some(h) = props.headers().as_ref() else {
        return String::new();
    };
    let inner: &BTreeMap<ShortString, AMQPValue> = h.inner();
    if let Some(AMQPValue::LongString(s)) = inner.get(REASON_HEADER) {
        return s.to_string();
    }
    // Dead-lettered by the broker itself (e.g. over the delivery limit): x-death names why.
    if let Some(AMQPValue::FieldArray(a)) = inner.get("x-death")
        && let Some(AMQPValue::FieldTable(t)) = a.as_slice().first()
        && let Some(AMQPValue::LongString(r)) = t.inner().get("reason")
    {
        return format!("broker: {r}");
    }
    String::new()
}

/// Events through a durable queue of the watcher's own: bound to every event kind (`#`), or
/// to `command.rejected` alone when it is a command's `reply_to`. It outlives a lost
/// connection or a broker restart: the watch reconnects and goes on where it stopped, so
/// `submit --wait` misses nothing. [`super::EventWatch::close`] deletes the queue; else the
/// broker does, [`WATCH_QUEUE_EXPIRES`] after its last consumer is gone.
struct AmqpWatch {
    broker: Broker,
    topo: Topology,
    limit: Duration,
    queue: String,
    /// The routing keys the queue is bound to `NS.events` with.
    keys: Vec<&'static str>,
    /// The channel read, with its connection when the watch has one of its own (a reconnected
    /// watch); else it shares its client's publishing connection.
    conn: Option<(Option<Connection>, Channel, lapin::Consumer)>,
    /// Deliveries returned by `next` and not yet acked (see [`AmqpWatch::take`]).
    taken: Vec<lapin::Acker>,
}

impl AmqpWatch {
    /// Reconnects on a connection of the watch's own.
    async fn connect(&mut self) -> Result<(), QueueError> {
        let limit = self.limit;
        let (conn, ch) = open_channel(&self.broker, limit).await?;
        // Only what the watch binds to; the command queues are declared where commands are sent.
        deadline("declare", limit, declare_events(&ch, &self.topo)).await?;
        let consumer = self.start_on(&ch).await?;
        self.conn = Some((Some(conn), ch, consumer));
        Ok(())
    }

    /// Declares the watch's queue on `ch` (where `NS.events` is declared already, or before it
    /// in the same pipeline), binds it and consumes it.
    async fn start_on(&self, ch: &Channel) -> Result<lapin::Consumer, QueueError> {
        let limit = self.limit;
        let mut args = FieldTable::default();
        args.insert(
            "x-expires".into(),
            AMQPValue::LongInt(i32::try_from(WATCH_QUEUE_EXPIRES.as_millis()).unwrap_or(i32::MAX)),
        );
        // Pipelined like `declare_all`: the consume's answer means the queue exists and is
        // bound (a refused declaration closes the channel, and the consume fails with it).
        call(
            "declare watch queue",
            limit,
            ch.queue_declare(self.queue.as_str().into(), durable_nowait(), args),
        )
        .await?;
        for key in &self.keys {
            call(
                "bind watch queue",
                limit,
                ch.queue_bind(
                    self.queue.as_str().into(),
                    self.topo.events.as_str().into(),
                    (*key).into(),
                    QueueBindOptions { nowait: true },
                    FieldTable::default(),
                ),
            )
            .await?;
        }
        consume_from(ch, &self.queue, "reflow-agent.watch", limit).await
    }

    /// Takes a delivery: its event, or `None` (logged) when it does not decode. Its ack waits
    /// until the watch next has to wait for the broker (or holds [`MAX_TAKEN`]), when all it
    /// took is acked: a burst of events, such as a job's last states with its outcome, is
    /// returned with no ack on the way, and `submit --wait` deletes its queue after the
    /// outcome without acking that burst first (about a millisecond of the broker's time
    /// before it answers the close). Deliveries not acked when the connection goes come again
    /// (consumers dedupe by event id). Nothing is awaited between taking the delivery and
    /// returning it: a caller that drops the future (a timeout, a select) loses no event.
    fn take(&mut self, d: lapin::message::Delivery) -> Option<Event> {
        self.taken.push(d.acker);
        if self.taken.len() >= MAX_TAKEN {
            ack_taken(&mut self.taken, self.limit);
        }
        match serde_json::from_slice::<Event>(&d.data) {
            Ok(e) => Some(e),
            Err(e) => {
                tracing::warn!(error = %crate::error::chain(&e), "Skipping an undecodable event.");
                None
            }
        }
    }
}

/// How many deliveries a watch takes before it acks them even while more are waiting.
const MAX_TAKEN: usize = 64;

/// Acks every delivery in `taken`, one by one (a shared channel may carry another watch's
/// deliveries, which `multiple` would ack too), on a task of its own.
fn ack_taken(taken: &mut Vec<lapin::Acker>, limit: Duration) {
    if taken.is_empty() {
        return;
    }
    let ackers = std::mem::take(taken);
    tokio::spawn(async move {
        // A failed ack is not retried: its event comes again.
        let acks = ackers
            .iter()
            .map(|a| call("ack", limit, a.ack(BasicAckOptions::default())));
        crate::par::join_in_order(acks).await;
    });
}

#[async_trait]
impl super::EventWatch for AmqpWatch {
    async fn next(&mut self) -> Result<Event, QueueError> {
        let mut backoff = reconnect_backoff(Duration::from_secs(5));
        loop {
            let Some((conn, ch, consumer)) = self.conn.as_mut() else {
                if let Err(e) = self.connect().await {
                    tracing::warn!(error = %crate::error::chain(&e), "Reconnecting the event watch failed; retrying.");
                    tokio::time::sleep(backoff.next_delay()).await;
                }
                continue;
            };
            // A delivery already here is taken without waiting; only a watch about to wait
            // acks what it took before (`take`).
            let item = match consumer.next().now_or_never() {
                Some(item) => Some(item),
                None => {
                    ack_taken(&mut self.taken, self.limit);
                    tokio::select! {
                        item = consumer.next() => Some(item),
                        () = tokio::time::sleep(LIVENESS_CHECK) => None,
                    }
                }
            };
            match item {
                Some(Some(Ok(d))) => {
                    if let Some(e) = self.take(d) {
                        return Ok(e);
                    }
                }
                None if ch.status().connected()
                    && conn.as_ref().is_none_or(|c| c.status().connected()) => {}
                other => {
                    let why = match other {
                        Some(Some(Err(e))) => e.to_string(),
                        _ => "connection lost".into(),
                    };
                    tracing::warn!(error = %why, "The event watch lost its connection; reconnecting.");
                    self.conn = None;
                    // Unacked on a channel that is gone: the broker hands them out again.
                    self.taken.clear();
                }
            }
        }
    }

    async fn close(self: Box<Self>) {
        let Some((conn, ch, _consumer)) = self.conn else {
            return;
        };
        // Not waited for: the broker handles a channel's methods in order, and answers a
        // connection's close once its channels have handled theirs, so the delete is done by
        // then; the client's close does that for a shared connection.
        let _ = call(
            "delete watch queue",
            self.limit,
            ch.queue_delete(
                self.queue.as_str().into(),
                QueueDeleteOptions {
                    nowait: true,
                    ..QueueDeleteOptions::default()
                },
            ),
        )
        .await;
        if let Some(conn) = conn {
            let _ = tokio::time::timeout(self.limit, conn.close(200, "watch done".into())).await;
        }
    }
}

/// Deletes the shared topology's queues (tests and benchmarks start from a clean broker).
///
/// # Errors
/// The broker cannot be reached.
pub async fn delete_queues(url: &str, agent_ids: &[&str]) -> Result<(), QueueError> {
    let (url, t) = split_url(url)?;
    let limit = super::DEFAULT_OP_TIMEOUT;
    let (conn, ch) = open_channel(&Broker::new(url, Default::default()), limit).await?;
    let mut names = vec![t.commands.clone(), t.dlq.clone()];
    names.extend(agent_ids.iter().map(|a| t.agent_queue(a)));
    for q in names {
        call(
            "delete queue",
            limit,
            ch.queue_delete(q.as_str().into(), QueueDeleteOptions::default()),
        )
        .await?;
    }
    close_quietly(conn, ch, "deleted", limit).await;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    use crate::error::Classify;

    #[test]
    fn attempts_follow_the_quorum_delivery_count() {
        let with = |n: i64| {
            let mut h = FieldTable::default();
            h.insert("x-delivery-count".into(), AMQPValue::LongLongInt(n));
            BasicProperties::default().with_headers(h)
        };
        assert_eq!(attempt_of(&BasicProperties::default(), false), 1);
        assert_eq!(attempt_of(&BasicProperties::default(), true), 2);
        assert_eq!(attempt_of(&with(3), true), 4);
    }

    #[test]
    fn every_broker_url_asks_for_small_frames_unless_it_names_a_size() {
        let b = Broker::new("amqp://u:p@h1,h2/v?heartbeat=9", Default::default());
        assert_eq!(
            b.urls,
            [
                "amqp://u:p@h1/v?heartbeat=9&frame_max=16384",
                "amqp://u:p@h2/v?heartbeat=9&frame_max=16384"
            ]
        );
        let b = Broker::new("amqp://h/v?frame_max=131072", Default::default());
        assert_eq!(b.urls, ["amqp://h/v?frame_max=131072"]);
        // A parameter whose name only starts like it is another parameter.
        assert_eq!(
            with_default("amqp://h?frame_max_x=1", "frame_max", 2),
            "amqp://h?frame_max_x=1&frame_max=2"
        );
    }

    #[tokio::test]
    async fn an_operation_past_its_deadline_is_a_retryable_timeout() {
        let e = deadline("publish", Duration::from_millis(20), async {
            std::future::pending::<Result<(), QueueError>>().await
        })
        .await
        .unwrap_err();
        assert!(
            matches!(e, QueueError::Timeout { op: "publish", .. }),
            "{e:?}"
        );
        assert!(e.kind().is_retryable());
        assert_eq!(
            e.to_string(),
            "publish got no answer from the broker within 20ms"
        );
        let ok = deadline("publish", Duration::from_secs(5), async { Ok(7) }).await;
        assert_eq!(ok.unwrap(), 7);
    }
}
