#!/usr/bin/env python3
"""A Python producer signing as docs/protocol.md ("Signatures") shows: RFC 8785 through the
`jcs` package from PyPI, HMAC-SHA256 from the standard library, published with pika on the
default exchange to NS.commands, persistent, with publisher confirms.

Usage: sign_and_publish.py AMQP_URL NS KEY ID IMAGE CMD

Run by tests/control_it.rs (a_python_producer_signs_with_jcs_and_the_agent_agrees).
"""
import datetime
import hashlib
import hmac
import json
import sys

import jcs
import pika


def sign(key: bytes, env: dict) -> str:
    env = {k: v for k, v in env.items() if k != "signature"}
    return "hmac-sha256:" + hmac.new(key, jcs.canonicalize(env), hashlib.sha256).hexdigest()


def main() -> None:
    url, ns, key, command_id, image, cmd = sys.argv[1:7]
    env = {
        "v": 1,
        "id": command_id,
        "kind": "job",
        "body": {
            "config": {
                "Type": "exec",
                "Image": image,
                "Cmd": cmd,
                # 1.0, not 1: JCS writes "1" where json.dumps writes "1.0", so only a
                # canonical form that agrees with RFC 8785 verifies this signature.
                "Resources": {"mem": 67108864, "cpu": 1.0},
            }
        },
    }
    env["time"] = datetime.datetime.now(datetime.timezone.utc).isoformat()
    env["signature"] = sign(key.encode(), env)
    conn = pika.BlockingConnection(pika.URLParameters(url))
    ch = conn.channel()
    ch.confirm_delivery()
    ch.basic_publish(
        exchange="",
        routing_key=f"{ns}.commands",
        body=json.dumps(env, ensure_ascii=False).encode(),
        properties=pika.BasicProperties(delivery_mode=2, content_type="application/json"),
        mandatory=True,
    )
    conn.close()


if __name__ == "__main__":
    main()
