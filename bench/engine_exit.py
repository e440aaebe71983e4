#!/usr/bin/env python3
"""When the engine tells a client that a container has exited, by each way of asking.

    bench/engine_exit.py [RUNS] [IMAGE]     (default 12 runs of reflow-agent-test/busybox:1)

Runs RUNS containers one at a time on the host network (`echo` to stdout and stderr, then
`sleep 0.2`), each watched five ways over the engine's socket, and prints, per way, the median
(and range) of when it answered relative to the engine's `die` event for that container:

- `wait`: `POST /containers/ID/wait?condition=next-exit`, sent before the start (the agent's
  wait, and `docker run`'s);
- `inspect` and `logs`: sent the moment `die` arrives;
- `follow_end`: the end of `GET /containers/ID/logs?follow=1`, opened right after the start;
- `attach_end`: the end of `POST /containers/ID/attach?stream=1` (stdout and stderr), opened
  before the start, as `docker run` does.

It also checks that each stream carried the container's whole output. Reported in
bench/RESULTS.md (no section of its own: a paragraph quotes it).
"""

import http.client
import json
import socket
import statistics
import sys
import threading
import time
import urllib.parse

SOCK = "/var/run/docker.sock"


class Conn(http.client.HTTPConnection):
    """HTTP over the engine's unix socket."""

    def __init__(self):
        super().__init__("localhost")

    def connect(self):
        self.sock = socket.socket(socket.AF_UNIX)
        self.sock.connect(SOCK)


def call(method, path, body=None):
    c = Conn()
    c.request(method, path, body=json.dumps(body) if body else None,
              headers={"Content-Type": "application/json"})
    r = c.getresponse()
    data = r.read()
    c.close()
    return r.status, data


def attach(cid, t):
    """Attaches before the start (an upgraded connection) and reads until the engine closes it."""
    s = socket.socket(socket.AF_UNIX)
    s.connect(SOCK)
    s.sendall((f"POST /containers/{cid}/attach?stream=1&stdout=1&stderr=1 HTTP/1.1\r\n"
               "Host: localhost\r\nConnection: Upgrade\r\nUpgrade: tcp\r\n\r\n").encode())
    buf = b""
    while b"\r\n\r\n" not in buf:
        buf += s.recv(4096)
    t["attached"].set()
    body = buf.split(b"\r\n\r\n", 1)[1]
    while True:
        d = s.recv(65536)
        if not d:
            break
        body += d
    t["attach_end"] = time.perf_counter()
    t["attach_bytes"] = len(body)
    s.close()


def one(image):
    _, d = call("POST", "/containers/create", {
        "Image": image,
        "Cmd": ["sh", "-c", "echo hello; echo err >&2; sleep 0.2"],
        "HostConfig": {"NetworkMode": "host"},
    })
    cid = json.loads(d)["Id"]
    t = {"attached": threading.Event()}
    events = Conn()
    events.request("GET", "/events?filters=" + urllib.parse.quote(
        json.dumps({"container": [cid], "event": ["die"]})))
    stream = events.getresponse()

    def wait():
        call("POST", f"/containers/{cid}/wait?condition=next-exit")
        t["wait"] = time.perf_counter()

    def follow():
        c = Conn()
        c.request("GET", f"/containers/{cid}/logs?stdout=1&stderr=1&follow=1")
        t["follow_bytes"] = len(c.getresponse().read())
        t["follow_end"] = time.perf_counter()
        c.close()

    def inspect():
        call("GET", f"/containers/{cid}/json")
        t["inspect"] = time.perf_counter()

    def logs():
        t["logs_bytes"] = len(call("GET", f"/containers/{cid}/logs?stdout=1&stderr=1")[1])
        t["logs"] = time.perf_counter()

    before = [threading.Thread(target=wait), threading.Thread(target=attach, args=(cid, t))]
    for th in before:
        th.start()
    t["attached"].wait(5)
    time.sleep(0.05)  # the wait is in place too
    call("POST", f"/containers/{cid}/start")
    after = [threading.Thread(target=follow)]
    after[0].start()
    stream.fp.readline()  # the chunk's size, then the `die` event itself
    stream.fp.readline()
    t["die"] = time.perf_counter()
    at_die = [threading.Thread(target=inspect), threading.Thread(target=logs)]
    for th in at_die:
        th.start()
    for th in before + after + at_die:
        th.join()
    events.close()
    call("DELETE", f"/containers/{cid}?force=1")
    return t


def main():
    runs = int(sys.argv[1]) if len(sys.argv) > 1 else 12
    image = sys.argv[2] if len(sys.argv) > 2 else "reflow-agent-test/busybox:1"
    results = [one(image) for _ in range(runs)]
    for k in ("wait", "inspect", "logs", "follow_end", "attach_end"):
        v = [(r[k] - r["die"]) * 1000 for r in results]
        print(f"{k:11s} after die: median {statistics.median(v):6.1f} ms "
              f"(min {min(v):6.1f}, max {max(v):6.1f})")
    # Each stream frames "hello\n" and "err\n" with 8-byte headers: 26 bytes.
    for k in ("logs_bytes", "follow_bytes", "attach_bytes"):
        sizes = sorted({r[k] for r in results})
        print(f"{k:12s} {sizes}")


if __name__ == "__main__":
    main()
