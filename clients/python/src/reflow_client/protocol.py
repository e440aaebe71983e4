"""The agent's queue protocol, version 1 (docs/protocol.md): typed jobs, envelopes and events,
checked against the protocol's JSON Schema (`protocol.schema.json`, a copy of the agent's
docs/protocol.schema.json), and HMAC signatures over the RFC 8785 canonical form."""

from __future__ import annotations

import datetime
import hashlib
import hmac
import json
import re
import uuid
from dataclasses import dataclass, field
from functools import lru_cache
from importlib import resources
from typing import Any, Dict, List, Mapping, Optional

import jcs
import jsonschema

PROTOCOL_VERSION = 1

#: Every command kind (docs/protocol.md, "Commands").
COMMAND_KINDS = (
    "offers",
    "alloc.new",
    "alloc.keepalive",
    "alloc.free",
    "alloc.inspect",
    "exec.put",
    "exec.inspect",
    "exec.result",
    "exec.promote",
    "exec.remove",
    "exec.logs",
    "load",
    "unload",
    "verify",
    "job",
)

#: Every event kind (docs/protocol.md, "Events").
EVENT_KINDS = (
    "exec.state",
    "exec.completed",
    "alloc.expired",
    "alloc.freed",
    "integrity.error",
    "agent.started",
    "agent.heartbeat",
    "agent.draining",
    "agent.stopped",
    "command.rejected",
    "command.result",
)

_ID = re.compile(r"^[A-Za-z0-9._:-]{1,128}$")


class ProtocolError(ValueError):
    """A command or an event that is not valid under the protocol's schema."""


@lru_cache(maxsize=1)
def schema() -> Dict[str, Any]:
    """The protocol's JSON Schema (draft 2020-12)."""
    text = resources.files(__package__).joinpath("protocol.schema.json").read_text()
    return json.loads(text)


@lru_cache(maxsize=1)
def _validator() -> jsonschema.Draft202012Validator:
    return jsonschema.Draft202012Validator(schema())


def validate(message: Mapping[str, Any], what: str = "message") -> None:
    """Raises ProtocolError unless `message` (a command or an event) is valid."""
    errors = sorted(_validator().iter_errors(message), key=lambda e: list(e.path))
    if errors:
        where = "/".join(str(p) for p in errors[0].path) or "(top)"
        raise ProtocolError(f"{what} is not valid under the protocol schema at {where}: {errors[0].message}")


def new_id(prefix: str = "py") -> str:
    """A fresh command id (the idempotency key)."""
    return f"{prefix}-{uuid.uuid4().hex}"


def now() -> str:
    """The current time, RFC 3339 in UTC."""
    return datetime.datetime.now(datetime.timezone.utc).isoformat()


@dataclass
class Job:
    """A self-contained `job` command: allocate, load inputs, run one exec, send the outputs.

    `cmd` uses Reflow's syntax: `$out` is the output path, `%s` the arguments in order.
    `args` are Reflow `Args` entries as dicts, `config` adds or overrides ExecConfig fields.
    """

    image: str
    cmd: str
    mem: int = 64 << 20
    cpu: float = 1
    args: List[Dict[str, Any]] = field(default_factory=list)
    ident: Optional[str] = None
    inputs_from: Optional[str] = None
    outputs_to: Optional[str] = None
    timeout_secs: Optional[int] = None
    resources: Optional[Dict[str, Any]] = None
    config: Dict[str, Any] = field(default_factory=dict)

    def body(self) -> Dict[str, Any]:
        """The command body: `{"config": ExecConfig, ...}`."""
        cfg: Dict[str, Any] = {
            "Type": "exec",
            "Image": self.image,
            "Cmd": self.cmd,
            "Resources": {"mem": self.mem, "cpu": self.cpu},
        }
        if self.args:
            cfg["Args"] = self.args
        if self.ident:
            cfg["Ident"] = self.ident
        cfg.update(self.config)
        body: Dict[str, Any] = {"config": cfg}
        for k in ("inputs_from", "outputs_to", "timeout_secs", "resources"):
            v = getattr(self, k)
            if v is not None:
                body[k] = v
        return body


def envelope(
    kind: str,
    body: Optional[Dict[str, Any]] = None,
    *,
    id: Optional[str] = None,
    alloc: Optional[str] = None,
    exec: Optional[str] = None,
    reply_to: Optional[str] = None,
    correlation_id: Optional[str] = None,
) -> Dict[str, Any]:
    """A command envelope (unsigned)."""
    if kind not in COMMAND_KINDS:
        raise ProtocolError(f"unknown command kind {kind!r}")
    env: Dict[str, Any] = {"v": PROTOCOL_VERSION, "id": id or new_id(), "kind": kind}
    for k, v in (
        ("alloc", alloc),
        ("exec", exec),
        ("reply_to", reply_to),
        ("correlation_id", correlation_id),
        ("body", body),
    ):
        if v is not None:
            env[k] = v
    if not _ID.match(env["id"]):
        raise ProtocolError("command id must be 1 to 128 of [A-Za-z0-9._:-]")
    return env


def canonical(env: Mapping[str, Any]) -> bytes:
    """What a signature covers: the envelope without `signature`, canonicalized by RFC 8785."""
    return jcs.canonicalize({k: v for k, v in env.items() if k != "signature"})


def sign(key: bytes, env: Mapping[str, Any]) -> str:
    """`hmac-sha256:<hex>` of the canonical form under `key`."""
    return "hmac-sha256:" + hmac.new(key, canonical(env), hashlib.sha256).hexdigest()


def signed(key: bytes, env: Dict[str, Any]) -> Dict[str, Any]:
    """`env` with `time` (set now unless present, as the agent requires it) and `signature`."""
    out = dict(env)
    out.setdefault("time", now())
    out["signature"] = sign(key, out)
    return out


def error_text(err: Optional[Mapping[str, Any]]) -> str:
    """A Reflow error (`{"Op", "Arg", "Kind", "Cause"?, "Error"}`) as Reflow renders it."""
    parts: List[str] = []
    node: Optional[Mapping[str, Any]] = err
    while node:
        bits = []
        head = " ".join([str(node.get("Op") or "")] + [str(a) for a in node.get("Arg") or []]).strip()
        if head:
            bits.append(head)
        kind = node.get("Kind")
        if kind and kind != "Other":
            bits.append(_KIND_TEXT.get(kind, kind))
        if node.get("Error"):
            bits.append(str(node["Error"]))
        if bits:
            parts.append(": ".join(bits))
        node = node.get("Cause")
    return ": ".join(parts)


_KIND_TEXT = {"DockerExec": "docker exec", "ResourcesExhausted": "resources exhausted", "NotAllowed": "access denied"}


@dataclass
class Event:
    """An event an agent published (docs/protocol.md, "Events")."""

    v: int
    id: str
    agent: str
    time: str
    kind: str
    body: Dict[str, Any]
    alloc: Optional[str] = None
    exec: Optional[str] = None
    correlation_id: Optional[str] = None
    command: Optional[str] = None
    labels: Dict[str, str] = field(default_factory=dict)

    @classmethod
    def from_dict(cls, d: Mapping[str, Any], check: bool = True) -> "Event":
        """An event from its JSON; checked against the schema unless `check` is false."""
        if check:
            validate(d, "event")
        known = set(cls.__dataclass_fields__)
        return cls(**{k: v for k, v in d.items() if k in known})

    @classmethod
    def from_json(cls, raw: bytes | str, check: bool = True) -> "Event":
        """An event from its bytes."""
        return cls.from_dict(json.loads(raw), check)

    def to_dict(self) -> Dict[str, Any]:
        """The event's JSON, as the agent wrote it (absent fields left out)."""
        d: Dict[str, Any] = {}
        for k in self.__dataclass_fields__:
            v = getattr(self, k)
            if v is not None and not (k == "labels" and not v):
                d[k] = v
        return d

    @property
    def error(self) -> Optional[Dict[str, Any]]:
        """The error it reports: an exec's `result.Err`, a rejection's or a request's `error`."""
        if self.kind == "exec.completed":
            return self.body.get("result", {}).get("Err")
        return self.body.get("error")

    @property
    def ok(self) -> bool:
        """No error, and not a rejection."""
        return self.kind != "command.rejected" and self.error is None

    @property
    def outputs(self) -> Dict[str, Dict[str, Any]]:
        """An `exec.completed` event's output files by path (`.` for a single file), each
        `{"ID": "sha256:...", "Size": n, ...}`."""
        files = self.body.get("result", {}).get("Fileset", {})
        out: Dict[str, Dict[str, Any]] = {}

        def walk(fs: Mapping[str, Any], prefix: str) -> None:
            for path, f in (fs.get("Fileset") or {}).items():
                out[prefix + path] = f
            for i, part in enumerate(fs.get("List") or []):
                walk(part, f"{prefix}{i}/")

        walk(files, "")
        return out

    @property
    def value(self) -> Any:
        """A `command.result`'s value."""
        return self.body.get("value")


class Rejected(Exception):
    """The agent rejected the command (it is in the dead-letter queue with this reason)."""

    def __init__(self, event: Event):
        self.event = event
        self.command_id = event.command
        super().__init__(f"command {event.command} rejected: {error_text(event.body.get('error'))}")


@dataclass
class DeadLetter:
    """A dead-lettered command and why it is there."""

    body: bytes
    reason: str

    @property
    def command(self) -> Optional[Dict[str, Any]]:
        """The command, when it is JSON."""
        try:
            v = json.loads(self.body)
        except ValueError:
            return None
        return v if isinstance(v, dict) else None
