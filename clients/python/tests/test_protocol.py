"""The typed classes against the protocol's schema, and signing against RFC 8785. Offline."""

import dataclasses
import hashlib
import hmac
import json
import pathlib

import pytest

import reflow_client as rc
from reflow_client.protocol import schema

DOCS_SCHEMA = pathlib.Path(__file__).resolve().parents[3] / "docs" / "protocol.schema.json"


def defs():
    return schema()["$defs"]


def test_the_packaged_schema_is_the_agents():
    if not DOCS_SCHEMA.exists():
        pytest.skip("not in the agent's source tree")
    assert json.loads(DOCS_SCHEMA.read_text()) == schema()


def test_kinds_are_the_schemas():
    assert set(rc.COMMAND_KINDS) == set(defs()["command"]["properties"]["kind"]["enum"])
    assert set(rc.EVENT_KINDS) == set(defs()["event"]["properties"]["kind"]["enum"])


def test_event_fields_are_the_schemas():
    ev = defs()["event"]
    assert set(rc.Event.__dataclass_fields__) == set(ev["properties"])
    required = {
        f for f, d in rc.Event.__dataclass_fields__.items()
        if d.default is dataclasses.MISSING and d.default_factory is dataclasses.MISSING
    }
    assert required == set(ev["required"])


def test_a_job_is_a_valid_command():
    job = rc.Job(image="reflow-agent-test/busybox:1", cmd="echo hi > $out", timeout_secs=60,
                 outputs_to="s3://bucket/prefix")
    env = rc.envelope("job", job.body(), reply_to="mine", correlation_id="c-1")
    rc.validate(env, "command")
    signed = rc.signed(b"k", env)
    rc.validate(signed, "command")
    bad = dict(env, kind="exec.teleport")
    with pytest.raises(rc.ProtocolError):
        rc.validate(bad, "command")
    with pytest.raises(rc.ProtocolError):
        rc.envelope("job", job.body(), id="no spaces allowed")


def test_signing_is_hmac_over_rfc_8785():
    env = {"v": 1, "id": "x", "kind": "job", "time": "2026-12-02T00:00:00Z",
           "body": {"config": {"Cmd": "a <&> b \u00e9", "Resources": {"cpu": 1.0, "mem": 1e21}}}}
    canon = rc.canonical(dict(env, signature="hmac-sha256:" + "0" * 64))
    # Keys sorted, no whitespace, <&> and non-ASCII literal, numbers as JavaScript writes them.
    assert canon == (
        '{"body":{"config":{"Cmd":"a <&> b \u00e9","Resources":{"cpu":1,"mem":1e+21}}},'
        '"id":"x","kind":"job","time":"2026-12-02T00:00:00Z","v":1}'
    ).encode()
    assert rc.sign(b"key", env) == "hmac-sha256:" + hmac.new(b"key", canon, hashlib.sha256).hexdigest()


def test_events_read_outputs_and_errors():
    ok = rc.Event.from_dict({
        "v": 1, "id": "0" * 32, "agent": "a", "time": "2026-12-02T00:00:00Z", "kind": "exec.completed",
        "command": "c", "body": {"result": {"Fileset": {"Fileset": {".": {
            "ID": "sha256:" + "a" * 64, "Size": 3}}}}},
    })
    assert ok.ok and ok.outputs["."]["Size"] == 3
    failed = rc.Event.from_dict({
        "v": 1, "id": "1" * 32, "agent": "a", "time": "2026-12-02T00:00:00Z", "kind": "exec.completed",
        "body": {"result": {"Fileset": {}, "Err": {
            "Op": "exec", "Arg": ["sha256:f42b"], "Kind": "DockerExec",
            "Cause": {"Op": "", "Arg": None, "Kind": "", "Error": "exited with code 1"}, "Error": ""}}},
    })
    assert not failed.ok
    assert rc.error_text(failed.error) == "exec sha256:f42b: docker exec: exited with code 1"
    with pytest.raises(rc.ProtocolError):
        rc.Event.from_dict({"v": 1, "id": "short", "agent": "a", "time": "x", "kind": "exec.completed", "body": {}})
