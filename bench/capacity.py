#!/usr/bin/env python3
"""The capacity model of docs/capacity.md: request rates, limits and cost for a fleet, from the
requests per job that bench/requests.sh measured (read from bench/RESULTS.md).

    python3 bench/capacity.py            print the model (markdown)
    python3 bench/capacity.py --check    fail unless docs/capacity.md holds exactly this output
    python3 bench/capacity.py --write    rewrite that section of docs/capacity.md

Every input is a named constant below or a measured figure; change one and rerun.
"""
import math
import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

# The fleet.
AGENTS = 10_000
JOBS_PER_DAY = 1_000_000
JOB_SECS = 600            # mean run time of a job
MAX_JOBS = 8              # queue.max_jobs per agent (prefetch defaults to it)
# The agent's periods (defaults; docs/configuration.md).
HEARTBEAT_SECS = 30       # queue.heartbeat_secs: one agent.heartbeat event each
LONG_POLL_SECS = 20       # an idle SQS receive waits this long
LEASE_SECS = 120          # queue.visibility_timeout_secs; extended every third
ALLOC_KEEPALIVE_SECS = 30 # a running job's alloc row keepalive
POOL_ROW_SECS = 90        # the pool row keepalive (pool::POOL_ROW_PERIOD)
# AWS quotas and list prices (us-east-1), as AWS documents them; inputs, not measurements.
SQS_INFLIGHT_LIMIT = 120_000        # in-flight messages per standard queue
DDB_TABLE_WRU_LIMIT = 40_000        # on-demand write request units per second per table (default quota)
DDB_PARTITION_WRU_LIMIT = 1_000     # per partition (per key here: rows are keyed by digest)
SQS_PRICE_PER_M = 0.40              # USD per million requests (standard queue)
DDB_WRITE_PRICE_PER_M = 0.625       # USD per million on-demand write request units
# RabbitMQ: what each agent holds on a 3-node cluster.
RMQ_NODES = 3
RMQ_CONNECTIONS_PER_AGENT = 2       # the consumer's and the publisher's
RMQ_QUEUES_PER_AGENT = 1            # its own quorum queue (NS.agent.ID)
RMQ_KIB_PER_CONNECTION = 100        # RabbitMQ's networking guide: about 100 KiB each with default buffers


def measured():
    """Requests per job from bench/RESULTS.md, section `requests`: {config: {(svc, op): n}}."""
    text = (ROOT / "bench/RESULTS.md").read_text()
    m = re.search(r"<!-- requests:begin -->(.*?)<!-- requests:end -->", text, re.S)
    if not m:
        sys.exit("bench/RESULTS.md has no requests section: run bench/requests.sh")
    rows = {}
    for line in m.group(1).splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) == 4 and cells[1] not in ("operation", "**all**") and not cells[0].startswith("-"):
            try:
                rows[(cells[0], cells[1])] = (float(cells[2]), float(cells[3]))
            except ValueError:
                pass
    return {"all": {k: v[0] for k, v in rows.items()}, "outcomes": {k: v[1] for k, v in rows.items()}}


def model(per_job, heartbeats):
    job_rate = JOBS_PER_DAY / 86_400
    running = job_rate * JOB_SECS
    ext_per_job = JOB_SECS / (LEASE_SECS / 3)
    sqs_job = sum(n for (s, op), n in per_job.items() if s == "SQS" and op != "ChangeMessageVisibility")
    ddb_job = sum(n for (s, op), n in per_job.items() if s == "DynamoDB" and op in ("PutItem", "UpdateItem"))
    # Per running job over its life: visibility extensions and claim renewals every third of the
    # lease, alloc keepalives every ALLOC_KEEPALIVE_SECS after the first lease.
    sqs_per_job = sqs_job + ext_per_job
    ddb_per_job = ddb_job + ext_per_job + JOB_SECS / ALLOC_KEEPALIVE_SECS
    idle_sqs = AGENTS / LONG_POLL_SECS + (AGENTS / HEARTBEAT_SECS if heartbeats else 0)
    idle_ddb = AGENTS / POOL_ROW_SECS
    return {
        "job_rate": job_rate,
        "running": running,
        "sqs_per_job": sqs_per_job,
        "ddb_per_job": ddb_per_job,
        "sqs_jobs_rps": job_rate * sqs_per_job,
        "sqs_idle_rps": idle_sqs,
        "ddb_jobs_wps": job_rate * ddb_per_job,
        "ddb_idle_wps": idle_ddb,
        "inflight_peak": AGENTS * MAX_JOBS,
    }


def render():
    data = measured()
    out = []
    w = out.append
    w(f"Inputs: {AGENTS:,} agents, {JOBS_PER_DAY:,} jobs a day of {JOB_SECS} s each, `max_jobs = {MAX_JOBS}`, "
      f"heartbeats every {HEARTBEAT_SECS} s, lease {LEASE_SECS} s. Requests per job as measured by "
      "`bench/requests.sh` (bench/RESULTS.md).")
    w("")
    w("| | every event kind (default) | outcomes only (`queue.publish`) |")
    w("|---|---|---|")
    # The outcomes-only list leaves out agent.heartbeat too.
    ms = {k: model(v, heartbeats=(k == "all")) for k, v in data.items()}
    def row(label, f):
        w(f"| {label} | {f(ms['all'])} | {f(ms['outcomes'])} |")
    row("jobs per second (mean)", lambda m: f"{m['job_rate']:.1f}")
    row("jobs running at once (mean)", lambda m: f"{m['running']:,.0f}")
    row("SQS requests per job, extensions included", lambda m: f"{m['sqs_per_job']:.1f}")
    row("SQS requests/s for jobs", lambda m: f"{m['sqs_jobs_rps']:,.0f}")
    row("SQS requests/s idle fleet (long polls, heartbeats)", lambda m: f"{m['sqs_idle_rps']:,.0f}")
    row("DynamoDB writes per job, keepalives included", lambda m: f"{m['ddb_per_job']:.1f}")
    row("DynamoDB writes/s for jobs", lambda m: f"{m['ddb_jobs_wps']:,.0f}")
    row("DynamoDB writes/s idle fleet (pool rows)", lambda m: f"{m['ddb_idle_wps']:,.0f}")
    def cost(m):
        sqs = (m["sqs_jobs_rps"] + m["sqs_idle_rps"]) * 86_400 / 1e6 * SQS_PRICE_PER_M
        ddb = (m["ddb_jobs_wps"] + m["ddb_idle_wps"]) * 86_400 / 1e6 * DDB_WRITE_PRICE_PER_M
        return sqs, ddb
    row("SQS cost per day (USD)", lambda m: f"{cost(m)[0]:,.0f}")
    row("DynamoDB write cost per day (USD)", lambda m: f"{cost(m)[1]:,.0f}")
    row("cost per million jobs, idle fleet included (USD)",
        lambda m: f"{sum(cost(m)) / (JOBS_PER_DAY / 1e6):,.0f}")
    row("cost per million jobs, jobs alone (USD)",
        lambda m: f"{(m['sqs_jobs_rps'] * SQS_PRICE_PER_M + m['ddb_jobs_wps'] * DDB_WRITE_PRICE_PER_M) * 86_400 / 1e6 / (JOBS_PER_DAY / 1e6):,.2f}")
    w("")
    m = ms["all"]
    ddb_total = m["ddb_jobs_wps"] + m["ddb_idle_wps"]
    w("| limit | quota | this fleet | headroom |")
    w("|---|---|---|---|")
    w(f"| SQS in-flight messages per standard queue | {SQS_INFLIGHT_LIMIT:,} | up to {m['inflight_peak']:,} (every slot busy or prefetched) | {SQS_INFLIGHT_LIMIT / m['inflight_peak']:.2f}x |")
    w(f"| DynamoDB on-demand writes/s per table | {DDB_TABLE_WRU_LIMIT:,} | {ddb_total:,.0f} | {DDB_TABLE_WRU_LIMIT / ddb_total:.1f}x |")
    w(f"| DynamoDB writes/s per partition (one row) | {DDB_PARTITION_WRU_LIMIT:,} | 1 row: at most one write per {min(ALLOC_KEEPALIVE_SECS, LEASE_SECS // 3)} s | ample |")
    conns = AGENTS * RMQ_CONNECTIONS_PER_AGENT
    w(f"| RabbitMQ connections per node ({RMQ_NODES} nodes) | memory: ~{RMQ_KIB_PER_CONNECTION} KiB each | {conns / RMQ_NODES:,.0f} (~{conns / RMQ_NODES * RMQ_KIB_PER_CONNECTION / 1024 / 1024:.1f} GiB) | set by node memory |")
    w(f"| RabbitMQ quorum queues | one Raft group each | {AGENTS * RMQ_QUEUES_PER_AGENT + 2:,} (one per agent, plus the command and dead-letter queues) | the first to bind |")
    return "\n".join(out) + "\n"


def main():
    text = render()
    doc = ROOT / "docs/capacity.md"
    begin, end = "<!-- capacity:begin -->\n", "<!-- capacity:end -->"
    if len(sys.argv) > 1 and sys.argv[1] in ("--check", "--write"):
        current = doc.read_text()
        a, b = current.index(begin) + len(begin), current.index(end)
        if sys.argv[1] == "--write":
            doc.write_text(current[:a] + text + current[b:])
        elif current[a:b] != text:
            sys.exit("docs/capacity.md is out of date with bench/capacity.py and bench/RESULTS.md: run python3 bench/capacity.py --write")
        return
    sys.stdout.write(text)


if __name__ == "__main__":
    main()
