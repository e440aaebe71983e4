"""A Python producer library for reflow-agent (docs/protocol.md): submit jobs, wait for their
outcomes, read events, and list or replay dead letters over AMQP, SQS or a spool directory."""

from .client import Client
from .protocol import (
    COMMAND_KINDS,
    EVENT_KINDS,
    DeadLetter,
    Event,
    Job,
    ProtocolError,
    Rejected,
    canonical,
    envelope,
    error_text,
    schema,
    sign,
    signed,
    validate,
)
from .transport import TransportError

__all__ = [
    "COMMAND_KINDS",
    "EVENT_KINDS",
    "Client",
    "DeadLetter",
    "Event",
    "Job",
    "ProtocolError",
    "Rejected",
    "TransportError",
    "canonical",
    "envelope",
    "error_text",
    "schema",
    "sign",
    "signed",
    "validate",
]
