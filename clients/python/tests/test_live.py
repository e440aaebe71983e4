"""The client against a live agent on each backend: RabbitMQ, SQS (moto) and a spool.

Needs the agent binary (`REFLOW_AGENT_BIN`) and the integration endpoints the agent's own
tests use (`AGENT_IT_AMQP_URL`, `AGENT_IT_AWS_ENDPOINT`, `AGENT_IT_IMAGE`); the agent's
`tests/python_client.rs` runs this with them set (scripts/test.sh)."""

import hashlib
import os
import subprocess
import tempfile
import time
import uuid

import pytest

import reflow_client as rc

BIN = os.environ.get("REFLOW_AGENT_BIN")
AMQP = os.environ.get("AGENT_IT_AMQP_URL")
AWS = os.environ.get("AGENT_IT_AWS_ENDPOINT")
IMAGE = os.environ.get("AGENT_IT_IMAGE", "reflow-agent-test/busybox:1")

pytestmark = pytest.mark.skipif(not (BIN and AMQP and AWS), reason="needs REFLOW_AGENT_BIN and AGENT_IT_*")

AWS_ENV = {
    "AWS_ACCESS_KEY_ID": "testing",
    "AWS_SECRET_ACCESS_KEY": "testing",
    "AWS_REGION": "us-east-1",
    "AWS_DEFAULT_REGION": "us-east-1",
    "AWS_ENDPOINT_URL": AWS or "",
}


def uniq(label):
    return f"{label}-{uuid.uuid4().hex[:10]}"


def sha256(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


class Agent:
    """`reflow-agent serve` on `url`, its state in a temporary directory."""

    def __init__(self, url, env=None):
        self.dir = tempfile.TemporaryDirectory()
        cfg = os.path.join(self.dir.name, "agent.toml")
        with open(cfg, "w") as f:
            f.write(
                f'[agent]\nstate_dir = "{self.dir.name}/state"\npool_id = "{uniq("py")}"\n'
                f'[admin]\nlisten = "127.0.0.1:0"\n[queue]\nurl = "{url}"\n'
            )
        self.log = open(os.path.join(self.dir.name, "agent.log"), "wb")
        self.proc = subprocess.Popen(
            [BIN, "serve", "--config", cfg],
            env={**os.environ, **AWS_ENV, **(env or {})},
            stdout=subprocess.DEVNULL,
            stderr=self.log,
        )

    def stop(self):
        self.proc.terminate()
        try:
            self.proc.wait(30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
        self.log.close()
        self.dir.cleanup()


@pytest.fixture(autouse=True)
def aws_env(monkeypatch):
    for k, v in AWS_ENV.items():
        monkeypatch.setenv(k, v)


def run_hello(client, word):
    job = rc.Job(image=IMAGE, cmd=f"echo '{word}' > $out")
    ev = client.submit_and_wait(job, timeout=120)
    assert ev.kind == "exec.completed" and ev.ok, ev
    assert ev.outputs["."]["ID"] == sha256(f"{word}\n".encode())
    kinds = [e.kind for e in client.events_of(ev.command)]
    return ev, kinds


def test_a_job_on_amqp():
    url = f"{AMQP}?ns={uniq('pyc')}"
    # The client comes first: it declares the command queue the agent will consume.
    with rc.Client(url) as client:
        cid = client.submit(rc.Job(image=IMAGE, cmd="echo early > $out"))
        agent = Agent(url)
        try:
            ev = client.wait(cid, timeout=120)
            assert ev.ok and ev.outputs["."]["ID"] == sha256(b"early\n")
            _, kinds = run_hello(client, "amqp")
            assert "exec.state" in kinds
        finally:
            agent.stop()


def queue_exists(name):
    import pika

    conn = pika.BlockingConnection(pika.URLParameters(AMQP))
    try:
        conn.channel().queue_declare(name, passive=True)
        return True
    except pika.exceptions.ChannelClosedByBroker as e:
        assert e.reply_code == 404, e
        return False
    finally:
        if conn.is_open:
            conn.close()


def test_an_amqp_client_that_timed_out_deletes_its_queues_when_closed():
    url = f"{AMQP}?ns={uniq('pyc')}"
    agent = Agent(url)
    try:
        client = rc.Client(url)
        cid = client.submit(rc.Job(image=IMAGE, cmd="sleep 3; echo late > $out"))
        with pytest.raises(TimeoutError):
            client.wait(cid, timeout=1)
        list(client.events(timeout=0.1))
        mine = [client.transport.reply_to, client.transport._watch]
        assert all(mine) and all(queue_exists(q) for q in mine), mine
        client.close()
        assert [q for q in mine if queue_exists(q)] == [], "left after close"
    finally:
        agent.stop()


def test_a_job_on_sqs_with_a_private_reply_queue():
    name = uniq("pyc")
    url = f"sqs://{name}?create=true"
    mine = rc.Client(url, reply_queue=f"{name}-reply-me", endpoint_url=AWS)
    agent = Agent(url)
    try:
        ev, _ = run_hello(mine, "sqs")
        assert ev.labels.get("reply_to", "").endswith(f"{name}-reply-me")
        # Nothing of this producer's reached the shared results queue.
        shared = rc.Client(url, endpoint_url=AWS)
        leaked = [e for e in shared.events(timeout=2) if e.command == ev.command]
        assert leaked == []
    finally:
        agent.stop()


def test_a_job_on_a_spool():
    with tempfile.TemporaryDirectory() as d:
        url = f"spool://{d}/spool"
        client = rc.Client(url)
        agent = Agent(url)
        try:
            run_hello(client, "spool")
            seen = [e.kind for e in client.events(timeout=1)]
            assert "agent.started" in seen
        finally:
            agent.stop()


def test_a_signed_job_runs_and_a_wrongly_signed_one_is_dead_lettered():
    url = f"{AMQP}?ns={uniq('pyc')}"
    key = b"py-client-k3y"
    agent = Agent(url, env={"REFLOW_AGENT_HMAC_KEY": key.decode()})
    try:
        with rc.Client(url, hmac_key=key) as good:
            run_hello(good, "signed <&> \u00e9")
        with rc.Client(url, hmac_key=b"another key") as bad:
            cid = bad.submit(rc.Job(image=IMAGE, cmd="echo never > $out"))
            # Its rejection reaches the client's own reply queue (a client's queue, though the
            # command failed its signature check).
            with pytest.raises(rc.Rejected) as rejected:
                bad.wait(cid, timeout=60)
            assert "signature" in str(rejected.value), rejected.value
            dead = wait_for_dead_letter(bad, cid)
            assert "signature" in dead.reason, dead.reason
    finally:
        agent.stop()


def wait_for_dead_letter(client, cid, timeout=60):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for d in client.dlq_list():
            if (d.command or {}).get("id") == cid:
                return d
        time.sleep(0.3)
    raise AssertionError(f"{cid} never reached the dead-letter queue")


@pytest.mark.parametrize("backend", ["amqp", "sqs", "spool"])
def test_a_rejected_job_is_read_from_the_dlq_and_replayed(backend):
    tmp = tempfile.TemporaryDirectory()
    name = uniq("pyc")
    url = {
        "amqp": f"{AMQP}?ns={name}",
        "sqs": f"sqs://{name}?create=true",
        "spool": f"spool://{tmp.name}/spool",
    }[backend]
    agent = Agent(url)
    try:
        client = rc.Client(url, reply_queue=f"{name}-reply" if backend == "sqs" else None, endpoint_url=AWS)
        # Longer than the agent's queue.max_job_secs: rejected, never run.
        too_long = rc.Job(image=IMAGE, cmd="echo no > $out", timeout_secs=10**7)
        cid = client.submit(too_long)
        with pytest.raises(rc.Rejected) as err:
            client.wait(cid, timeout=60)
        assert "timeout_secs" in str(err.value)
        dead = wait_for_dead_letter(client, cid)
        assert "timeout_secs" in dead.reason
        assert [d.command["id"] for d in client.dlq_replay(dry_run=True)] == [cid]
        assert [d.command["id"] for d in client.dlq_replay()] == [cid]
        # Replayed, it is rejected again: back in the DLQ.
        wait_for_dead_letter(client, cid)
        client.close()
    finally:
        agent.stop()
        tmp.cleanup()
