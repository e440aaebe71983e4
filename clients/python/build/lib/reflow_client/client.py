"""`Client`: submit jobs and requests to reflow-agents, wait for their outcomes, read every
event, and list or replay the dead-letter queue, on `amqp://`, `sqs://` and `spool://` alike."""

from __future__ import annotations

import json
import os
import time
from typing import Any, Dict, Iterator, List, Mapping, Optional, Union

from .protocol import DeadLetter, Event, Job, ProtocolError, Rejected, envelope, signed, validate
from .transport import open_transport

#: Events that end a command: a job's `exec.completed`, a request's `command.result`, and
#: `command.rejected` for either.
TERMINAL = ("exec.completed", "command.result", "command.rejected")


class Client:
    """A producer's and operator's handle on one queue URL.

    - `hmac_key`: signs every command (default: `REFLOW_AGENT_HMAC_KEY`, as the agent's CLI).
    - `reply_queue` (SQS): a queue of this producer's own (created if missing) that gets the
      events of its commands, instead of the shared results queue. On AMQP every client has a
      private reply queue anyway; on a spool every event is in `events/`.
    - `check`: validate commands and events against the protocol's schema (default on).
    - AMQP TLS: `tls_ca_file`, `tls_cert_file`, `tls_key_file`; SQS: `session`, `endpoint_url`.
    """

    def __init__(
        self,
        url: str,
        *,
        hmac_key: Optional[bytes] = None,
        reply_queue: Optional[str] = None,
        check: bool = True,
        **transport_options: Any,
    ):
        if hmac_key is None and os.environ.get("REFLOW_AGENT_HMAC_KEY"):
            hmac_key = os.environ["REFLOW_AGENT_HMAC_KEY"].encode()
        self.hmac_key = hmac_key
        self.check = check
        self.transport = open_transport(url, reply_queue=reply_queue, **transport_options)
        self._mine: set = set()
        self._done: Dict[str, Event] = {}
        self._seen: Dict[str, List[Event]] = {}

    def __enter__(self) -> "Client":
        return self

    def __exit__(self, *_: object) -> None:
        self.close()

    def close(self) -> None:
        """Closes the broker connection."""
        self.transport.close()

    # -- submitting ----------------------------------------------------------------------------

    def command(self, kind: str, body: Optional[Dict[str, Any]] = None, **fields: Any) -> Dict[str, Any]:
        """An envelope of `kind` ready to submit, with this client's `reply_to` (requests such
        as `offers`, `alloc.inspect`, `exec.logs`)."""
        return envelope(kind, body, reply_to=self.transport.reply_to, **fields)

    def submit(
        self,
        job: Union[Job, Mapping[str, Any]],
        *,
        id: Optional[str] = None,
        correlation_id: Optional[str] = None,
    ) -> str:
        """Publishes a job (or any command envelope) durably; returns its command id. Submitting
        the same id again is the same command (the agents deduplicate it)."""
        if isinstance(job, Job):
            env = envelope("job", job.body(), id=id, reply_to=self.transport.reply_to,
                           correlation_id=correlation_id)
        else:
            env = dict(job)
            env.setdefault("v", 1)
            if id:
                env["id"] = id
            env.setdefault("id", envelope("offers")["id"])
            if self.transport.reply_to:
                env.setdefault("reply_to", self.transport.reply_to)
        if self.hmac_key:
            env = signed(self.hmac_key, env)
        if self.check:
            validate(env, "command")
        body = json.dumps(env, ensure_ascii=False, separators=(",", ":")).encode()
        if len(body) > 256 * 1024:
            raise ProtocolError(f"command is {len(body)} bytes, more than 262144")
        self._mine.add(env["id"])
        self.transport.submit(env["id"], body)
        return env["id"]

    # -- waiting -------------------------------------------------------------------------------

    def _read(self, timeout: float) -> List[Event]:
        out = []
        for raw in self.transport.replies(timeout):
            try:
                ev = Event.from_json(raw, self.check)
            except (ValueError, ProtocolError):
                self.transport.settle(raw, mine=False)
                continue
            mine = ev.command in self._mine
            self.transport.settle(raw, mine=mine)
            if not mine:
                continue
            self._seen.setdefault(ev.command, []).append(ev)
            if ev.kind in TERMINAL:
                self._done.setdefault(ev.command, ev)
            out.append(ev)
        return out

    def wait(self, command_id: str, timeout: float = 600) -> Event:
        """The event that ends command `command_id`: `exec.completed` for a job (check `.ok`),
        `command.result` for a request. Raises `Rejected` if the agent rejected it, and
        `TimeoutError` after `timeout` seconds."""
        self._mine.add(command_id)
        deadline = time.monotonic() + timeout
        while command_id not in self._done:
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError(f"no outcome for command {command_id} within {timeout} s")
            self._read(min(left, 5))
        ev = self._done[command_id]
        if ev.kind == "command.rejected":
            raise Rejected(ev)
        return ev

    def submit_and_wait(self, job: Union[Job, Mapping[str, Any]], timeout: float = 600, **kw: Any) -> Event:
        """`submit`, then `wait` for it."""
        return self.wait(self.submit(job, **kw), timeout)

    def events_of(self, command_id: str) -> List[Event]:
        """The events of one of this client's commands seen so far (`exec.state` included)."""
        return list(self._seen.get(command_id, []))

    def events(self, timeout: Optional[float] = None) -> Iterator[Event]:
        """Every event every agent publishes from now on (AMQP: a watch queue bound to all
        kinds; SQS: the results queue, or the reply queue when this client has one; spool:
        `events/`, those already there included). Ends after `timeout` seconds without one."""
        while True:
            got = self.transport.events(5 if timeout is None else min(timeout, 5))
            if not got:
                if timeout is not None:
                    return
                continue
            for raw in got:
                try:
                    yield Event.from_json(raw, self.check)
                except (ValueError, ProtocolError):
                    continue

    # -- dead letters --------------------------------------------------------------------------

    def dlq_list(self, max: int = 100) -> List[DeadLetter]:
        """Up to `max` dead-lettered commands with their reasons, left in place."""
        return self.transport.dead_letters(max)

    def dlq_replay(self, max: Optional[int] = None, dry_run: bool = False, rate: Optional[float] = None) -> List[DeadLetter]:
        """Moves dead letters back to the command queue (oldest first, at most `max`, at most
        `rate` per second) until the queue is empty or a command it moved comes back; returns
        them. `dry_run` only lists what would move."""
        if dry_run:
            return self.dlq_list(max or 100)
        out: List[DeadLetter] = []
        replayed = set()
        while max is None or len(out) < max:
            d = self.transport.replay_one()
            if d is None:
                break
            # Rejected again, a command comes back while this runs: seen twice, it ends the
            # replay instead of looping.
            if d.body in replayed:
                break
            replayed.add(d.body)
            out.append(d)
            if rate:
                time.sleep(1 / rate)
        return out
