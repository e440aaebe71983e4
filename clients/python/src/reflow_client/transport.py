"""The three backends, as docs/protocol.md ("Backends") describes them: AMQP (pika), SQS
(boto3) and a spool directory. Each moves bytes; `client.Client` gives them meaning."""

from __future__ import annotations

import json
import os
import ssl
import time
import urllib.parse
import uuid
from typing import Iterator, List, Optional, Tuple

from .protocol import DeadLetter

#: How long the broker keeps a reply or watch queue nobody reads (as the agent's CLI does).
QUEUE_EXPIRES_MS = 600_000
#: The agents' defaults, for a producer that declares the command queue before any agent did.
DEFAULT_DELIVERY_LIMIT = 5
DEFAULT_CONSUMER_TIMEOUT_MS = (36_000 + 600) * 1000


class TransportError(RuntimeError):
    """A backend failed or was misconfigured."""


class Transport:
    """What every backend does."""

    #: The reply_to this transport puts on commands, if any.
    reply_to: Optional[str] = None

    def submit(self, command_id: str, body: bytes) -> None:
        raise NotImplementedError

    def replies(self, timeout: float) -> List[bytes]:
        """Events for this client's commands (or all events where there is no private
        channel), waiting up to `timeout` seconds for the first."""
        raise NotImplementedError

    def settle(self, raw: bytes, mine: bool) -> None:
        """Done with an event `replies` returned: on a shared queue, one that is not this
        client's (`mine` false) goes back for its owner. Private channels ack as they read."""

    def events(self, timeout: float) -> List[bytes]:
        """Every event published, from now on (the stream of all agents)."""
        raise NotImplementedError

    def dead_letters(self, max: int) -> List[DeadLetter]:
        raise NotImplementedError

    def replay_one(self) -> Optional[DeadLetter]:
        """Moves the oldest dead letter back to the command queue; None when there is none."""
        raise NotImplementedError

    def close(self) -> None:
        pass


def open_transport(url: str, **options) -> Transport:
    """The backend a queue URL names: `amqp://`, `amqps://`, `sqs://` or `spool:///`."""
    scheme = url.split("://", 1)[0]
    if scheme in ("amqp", "amqps"):
        return Amqp(url, **options)
    if scheme == "sqs":
        return Sqs(url, **options)
    if scheme == "spool":
        return Spool(url)
    raise TransportError(f"unsupported queue URL scheme {scheme!r} (amqp, amqps, sqs, spool)")


# ---------------------------------------------------------------------------------------------
# AMQP


def _split_ns(url: str) -> Tuple[str, str]:
    base, _, query = url.partition("?")
    ns, rest = "reflow", []
    for kv in filter(None, query.split("&")):
        if kv.startswith("ns="):
            ns = kv[3:]
        else:
            rest.append(kv)
    return (base + ("?" + "&".join(rest) if rest else "")), ns


def _hosts(url: str) -> List[str]:
    """One URL per broker of `amqp://u:p@h1:5672,h2:5672/vhost`."""
    scheme, _, rest = url.partition("://")
    end = min([i for i in (rest.find("/"), rest.find("?")) if i >= 0] or [len(rest)])
    authority, tail = rest[:end], rest[end:]
    userinfo, _, hostlist = authority.rpartition("@")
    userinfo = userinfo + "@" if userinfo else ""
    return [f"{scheme}://{userinfo}{h}{tail}" for h in hostlist.split(",")]


class Amqp(Transport):
    """Commands to `NS.commands` on the default exchange (persistent, mandatory, confirmed);
    replies through a queue of this client's own, `NS.reply.<random>`."""

    def __init__(
        self,
        url: str,
        tls_ca_file: Optional[str] = None,
        tls_cert_file: Optional[str] = None,
        tls_key_file: Optional[str] = None,
        **_: object,
    ):
        import pika

        self._pika = pika
        base, self.ns = _split_ns(url)
        self.params = []
        for u in _hosts(base):
            p = pika.URLParameters(u)
            if u.startswith("amqps://"):
                ctx = ssl.create_default_context(cafile=tls_ca_file)
                if tls_cert_file:
                    ctx.load_cert_chain(tls_cert_file, tls_key_file)
                p.ssl_options = pika.SSLOptions(ctx, server_hostname=p.host)
            self.params.append(p)
        self.commands = f"{self.ns}.commands"
        self.dlq = f"{self.ns}.commands.dlq"
        self.exchange = f"{self.ns}.events"
        self.reply_to = f"{self.ns}.reply.{uuid.uuid4().hex[:16]}"
        self._conn = None
        self._ch = None
        self._declared = False
        self._watch: Optional[str] = None

    def _channel(self):
        if self._ch is None or self._ch.is_closed or self._conn is None or self._conn.is_closed:
            self._drop()
            self._conn = self._pika.BlockingConnection(self.params)
            self._ch = self._conn.channel()
            self._ch.confirm_delivery()
            self._declared = False
        if not self._declared:
            self._declare()
        return self._ch

    def _drop(self) -> None:
        try:
            if self._conn is not None and self._conn.is_open:
                self._conn.close()
        except Exception:  # noqa: BLE001 - closing a broken link
            pass
        self._conn = self._ch = None

    def _declare(self) -> None:
        ch = self._ch
        pika = self._pika
        try:
            ch.queue_declare(self.commands, passive=True)
        except pika.exceptions.ChannelClosedByBroker as e:
            if e.reply_code != 404:
                raise
            # No agent has started yet: declare what the agents declare, with their defaults.
            ch = self._ch = self._conn.channel()
            ch.confirm_delivery()
            ch.exchange_declare(self.exchange, "topic", durable=True)
            ch.exchange_declare(f"{self.ns}.dlx", "fanout", durable=True)
            ch.queue_declare(self.dlq, durable=True, arguments={"x-queue-type": "quorum"})
            ch.queue_bind(self.dlq, f"{self.ns}.dlx", routing_key="")
            ch.queue_declare(
                self.commands,
                durable=True,
                arguments={
                    "x-queue-type": "quorum",
                    "x-delivery-limit": DEFAULT_DELIVERY_LIMIT,
                    "x-dead-letter-exchange": f"{self.ns}.dlx",
                    "x-consumer-timeout": DEFAULT_CONSUMER_TIMEOUT_MS,
                },
            )
        ch.exchange_declare(self.exchange, "topic", durable=True)
        for q in filter(None, (self.reply_to, self._watch)):
            ch.queue_declare(q, durable=True, arguments={"x-expires": QUEUE_EXPIRES_MS})
        if self._watch:
            ch.queue_bind(self._watch, self.exchange, routing_key="#")
        self._declared = True

    def _retry(self, op):
        """Runs `op(channel)`, once more on a fresh connection if the link failed."""
        try:
            return op(self._channel())
        except (self._pika.exceptions.AMQPConnectionError, self._pika.exceptions.ChannelClosed):
            self._drop()
            return op(self._channel())

    def submit(self, command_id: str, body: bytes) -> None:
        pika = self._pika
        props = pika.BasicProperties(delivery_mode=2, content_type="application/json")

        def publish(ch):
            ch.basic_publish("", self.commands, body, properties=props, mandatory=True)

        try:
            self._retry(publish)
        except (pika.exceptions.UnroutableError, pika.exceptions.NackError) as e:
            raise TransportError(f"the broker did not take command {command_id}: {e}") from e

    def _get(self, queue: str, timeout: float) -> List[bytes]:
        deadline = time.monotonic() + timeout
        while True:
            got = self._retry(lambda ch: ch.basic_get(queue, auto_ack=False))
            method, _, body = got
            if method is not None:
                out = [body]
                self._ch.basic_ack(method.delivery_tag)
                return out
            if time.monotonic() >= deadline:
                return []
            self._conn.sleep(0.02)

    def replies(self, timeout: float) -> List[bytes]:
        return self._get(self.reply_to, timeout)

    def events(self, timeout: float) -> List[bytes]:
        if self._watch is None:
            self._watch = f"{self.ns}.watch.{uuid.uuid4().hex[:16]}"
            self._declared = False
        return self._get(self._watch, timeout)

    def dead_letters(self, max: int) -> List[DeadLetter]:
        # Read without acking, then close the channel: every message goes back, in order.
        ch = self._channel()
        out = []
        try:
            while len(out) < max:
                method, props, body = ch.basic_get(self.dlq, auto_ack=False)
                if method is None:
                    break
                out.append(DeadLetter(body, _amqp_reason(props)))
        finally:
            self._ch.close()
            self._ch = None
        return out

    def replay_one(self) -> Optional[DeadLetter]:
        ch = self._channel()
        method, props, body = ch.basic_get(self.dlq, auto_ack=False)
        if method is None:
            return None
        d = DeadLetter(body, _amqp_reason(props))
        p = self._pika.BasicProperties(delivery_mode=2, content_type="application/json")
        ch.basic_publish("", self.commands, body, properties=p, mandatory=True)
        ch.basic_ack(method.delivery_tag)
        return d

    def close(self) -> None:
        # The client's own queues go with it: nothing else reads them, and left to `x-expires`
        # they would gather its commands' later events for ten minutes. A broken connection
        # leaves them to that.
        if self._declared and self._conn is not None and self._conn.is_open:
            try:
                ch = self._ch if self._ch is not None and self._ch.is_open else self._conn.channel()
                for q in filter(None, (self.reply_to, self._watch)):
                    ch.queue_delete(q)
            except Exception:  # noqa: BLE001 - closing; the broker expires what is left
                pass
        self._drop()


def _amqp_reason(props) -> str:
    h = props.headers or {}
    r = h.get("x-reflow-reason")
    if r is not None:
        return r.decode() if isinstance(r, bytes) else str(r)
    death = h.get("x-death") or []
    if death and isinstance(death[0], dict) and death[0].get("reason"):
        r = death[0]["reason"]
        return "broker: " + (r.decode() if isinstance(r, bytes) else str(r))
    return ""


# ---------------------------------------------------------------------------------------------
# SQS


class Sqs(Transport):
    """`sqs://NAME[?results=R&dlq=D&create=true]`; with `reply_queue`, the client's own results
    queue (created if missing), named in every command's `reply_to`."""

    def __init__(
        self,
        url: str,
        reply_queue: Optional[str] = None,
        session=None,
        endpoint_url: Optional[str] = None,
        delivery_limit: int = DEFAULT_DELIVERY_LIMIT,
        **_: object,
    ):
        import boto3

        rest = url[len("sqs://") :]
        name, _, query = rest.partition("?")
        self.names = {"commands": name, "results": f"{name}-results", "dlq": f"{name}-dlq"}
        create = False
        for k, v in urllib.parse.parse_qsl(query):
            if k in ("results", "dlq"):
                self.names[k] = v
            elif k == "create":
                create = v == "true"
            else:
                raise TransportError(f"unknown sqs:// parameter {k!r}")
        session = session or boto3.session.Session()
        self.sqs = session.client("sqs", endpoint_url=endpoint_url or os.environ.get("AWS_ENDPOINT_URL"))
        self.urls = {}
        if create:
            dlq = self.sqs.create_queue(QueueName=self.names["dlq"])["QueueUrl"]
            arn = self.sqs.get_queue_attributes(QueueUrl=dlq, AttributeNames=["QueueArn"])["Attributes"]["QueueArn"]
            redrive = json.dumps({"deadLetterTargetArn": arn, "maxReceiveCount": str(delivery_limit)})
            self.urls["dlq"] = dlq
            self.urls["commands"] = self.sqs.create_queue(
                QueueName=self.names["commands"], Attributes={"RedrivePolicy": redrive}
            )["QueueUrl"]
            self.urls["results"] = self.sqs.create_queue(QueueName=self.names["results"])["QueueUrl"]
        self.reply_url = None
        if reply_queue:
            self.reply_url = self.sqs.create_queue(QueueName=reply_queue)["QueueUrl"]
            self.reply_to = self.reply_url

    def _url(self, which: str) -> str:
        if which not in self.urls:
            self.urls[which] = self.sqs.get_queue_url(QueueName=self.names[which])["QueueUrl"]
        return self.urls[which]

    def submit(self, command_id: str, body: bytes) -> None:
        self.sqs.send_message(QueueUrl=self._url("commands"), MessageBody=body.decode())

    def _receive(self, url: str, timeout: float, delete: bool) -> List[Tuple[bytes, str]]:
        wait = max(0, min(20, int(timeout)))
        r = self.sqs.receive_message(
            QueueUrl=url,
            MaxNumberOfMessages=10,
            WaitTimeSeconds=wait,
            VisibilityTimeout=30,
            MessageAttributeNames=["All"],
        )
        out = []
        for m in r.get("Messages", []):
            out.append((m["Body"].encode(), m["ReceiptHandle"]))
            if delete:
                self.sqs.delete_message(QueueUrl=url, ReceiptHandle=m["ReceiptHandle"])
        return out

    def replies(self, timeout: float) -> List[bytes]:
        if self.reply_url:
            return [b for b, _ in self._receive(self.reply_url, timeout, delete=True)]
        # The shared results queue: the caller hands back what is not its own.
        got = self._receive(self._url("results"), timeout, delete=False)
        self._held = dict(got)
        return [b for b, _ in got]

    def settle(self, raw: bytes, mine: bool) -> None:
        """On the shared results queue: deletes an event read by `replies`, or hands it back."""
        receipt = getattr(self, "_held", {}).pop(raw, None)
        if receipt is None:
            return
        url = self._url("results")
        if mine:
            self.sqs.delete_message(QueueUrl=url, ReceiptHandle=receipt)
        else:
            self.sqs.change_message_visibility(QueueUrl=url, ReceiptHandle=receipt, VisibilityTimeout=0)

    def events(self, timeout: float) -> List[bytes]:
        url = self.reply_url or self._url("results")
        return [b for b, _ in self._receive(url, timeout, delete=True)]

    def dead_letters(self, max: int) -> List[DeadLetter]:
        url = self._url("dlq")
        out, held = [], []
        while len(out) < max:
            r = self.sqs.receive_message(
                QueueUrl=url, MaxNumberOfMessages=10, WaitTimeSeconds=1, VisibilityTimeout=30,
                MessageAttributeNames=["All"],
            )
            ms = r.get("Messages", [])
            if not ms:
                break
            for m in ms:
                out.append(DeadLetter(m["Body"].encode(), _sqs_reason(m)))
                held.append(m["ReceiptHandle"])
        for h in held:
            self.sqs.change_message_visibility(QueueUrl=url, ReceiptHandle=h, VisibilityTimeout=0)
        return out[:max]

    def replay_one(self) -> Optional[DeadLetter]:
        url = self._url("dlq")
        r = self.sqs.receive_message(
            QueueUrl=url, MaxNumberOfMessages=1, WaitTimeSeconds=1, VisibilityTimeout=30,
            MessageAttributeNames=["All"],
        )
        ms = r.get("Messages", [])
        if not ms:
            return None
        m = ms[0]
        d = DeadLetter(m["Body"].encode(), _sqs_reason(m))
        self.sqs.send_message(QueueUrl=self._url("commands"), MessageBody=m["Body"])
        self.sqs.delete_message(QueueUrl=url, ReceiptHandle=m["ReceiptHandle"])
        return d


def _sqs_reason(m) -> str:
    a = (m.get("MessageAttributes") or {}).get("reason")
    if a and "StringValue" in a:
        return a["StringValue"]
    return "over the delivery limit (redrive policy)"


# ---------------------------------------------------------------------------------------------
# Spool


class Spool(Transport):
    """`spool:///DIR`: commands dropped into `DIR/incoming/` by atomic rename, events read from
    `DIR/events/`, dead letters in `DIR/dead/`."""

    def __init__(self, url: str):
        self.dir = urllib.parse.unquote(url[len("spool://") :])
        if not self.dir.startswith("/"):
            raise TransportError("a spool URL names an absolute directory: spool:///DIR")
        for sub in ("incoming", "processing", "dead", "events"):
            os.makedirs(os.path.join(self.dir, sub), exist_ok=True)
        # Read positions of the two readers: `replies` (wait) and `events` (the stream).
        self._seen = {"replies": set(), "events": set()}

    def submit(self, command_id: str, body: bytes) -> None:
        safe = "".join(c if c.isascii() and (c.isalnum() or c in "-_") else "_" for c in command_id)[:100]
        name = f"{time.time_ns():024d}-{safe}.json"
        incoming = os.path.join(self.dir, "incoming")
        tmp = os.path.join(incoming, f".{name}.tmp")
        with open(tmp, "wb") as f:
            f.write(body)
            f.flush()
            os.fsync(f.fileno())
        os.rename(tmp, os.path.join(incoming, name))
        fd = os.open(incoming, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)

    def _new_events(self, reader: str) -> List[bytes]:
        d = os.path.join(self.dir, "events")
        seen = self._seen[reader]
        out = []
        for n in sorted(os.listdir(d)):
            if n.startswith(".") or not n.endswith(".json") or n in seen:
                continue
            try:
                with open(os.path.join(d, n), "rb") as f:
                    out.append(f.read())
            except FileNotFoundError:  # pruned meanwhile
                continue
            seen.add(n)
        return out

    def replies(self, timeout: float) -> List[bytes]:
        return self._poll("replies", timeout)

    def events(self, timeout: float) -> List[bytes]:
        return self._poll("events", timeout)

    def _poll(self, reader: str, timeout: float) -> List[bytes]:
        deadline = time.monotonic() + timeout
        while True:
            got = self._new_events(reader)
            if got or time.monotonic() >= deadline:
                return got
            time.sleep(0.02)

    def _dead_names(self) -> Iterator[str]:
        d = os.path.join(self.dir, "dead")
        return (n for n in sorted(os.listdir(d)) if not n.endswith(".reason.json") and not n.startswith("."))

    def _dead(self, name: str) -> DeadLetter:
        d = os.path.join(self.dir, "dead")
        with open(os.path.join(d, name), "rb") as f:
            body = f.read()
        try:
            with open(os.path.join(d, name + ".reason.json")) as f:
                reason = json.load(f).get("reason", "")
        except FileNotFoundError:
            reason = ""
        return DeadLetter(body, reason)

    def dead_letters(self, max: int) -> List[DeadLetter]:
        out = []
        for n in self._dead_names():
            if len(out) >= max:
                break
            out.append(self._dead(n))
        return out

    def replay_one(self) -> Optional[DeadLetter]:
        name = next(self._dead_names(), None)
        if name is None:
            return None
        d = self._dead(name)
        dead = os.path.join(self.dir, "dead")
        os.rename(os.path.join(dead, name), os.path.join(self.dir, "incoming", name))
        try:
            os.remove(os.path.join(dead, name + ".reason.json"))
        except FileNotFoundError:
            pass
        return d
