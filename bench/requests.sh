#!/usr/bin/env bash
# Cloud requests per job: one agent on SQS with a DynamoDB TaskDB (moto), N distinct trivial
# jobs, and the agent's own counters (`reflow_cloud_requests_total{service, operation}` on
# /metrics, one per SDK attempt) read before and after. Writes its section of bench/RESULTS.md.
#
#   bench/requests.sh [N]     (default 200 jobs)
#
# Two configurations, each with its own agent, queue and table: every event kind (the default)
# and outcomes only (`queue.publish`). The idle cost (long polls, heartbeats, keepalives) is
# measured over the same length of time with no jobs and subtracted, so "per job" is what a job
# adds. bench/capacity.py reads the result.
set -euo pipefail
cd "$(dirname "$0")/.."
N=${1:-200}
IMAGE=${REFLOW_TEST_IMAGE:-reflow-agent-test/busybox:1}
export AWS_ACCESS_KEY_ID=testing AWS_SECRET_ACCESS_KEY=testing AWS_REGION=us-east-1
export AWS_ENDPOINT_URL=${AGENT_IT_AWS_ENDPOINT:-http://127.0.0.1:5000}
bash scripts/dev-services.sh >/dev/null
bash scripts/test-image.sh >/dev/null
cargo build --release --quiet --all-features --bin reflow-agent --example queue_bench
AGENT=target/release/reflow-agent
BENCH=target/release/examples/queue_bench

WORK=$(mktemp -d)
trap 'kill $(jobs -p) 2>/dev/null || true; rm -rf "$WORK"' EXIT

# counts PORT FILE: "service operation n" lines of the agent's request counters.
counts() {
  curl -fs "http://127.0.0.1:$1/metrics" \
    | sed -n 's/^reflow_cloud_requests_total{\(.*\)} \([0-9]*\)$/\1 \2/p' \
    | sed 's/service="\([^"]*\)",operation="\([^"]*\)"/\1 \2/; s/operation="\([^"]*\)",service="\([^"]*\)"/\2 \1/' \
    | sort >"$2"
}

# run LABEL EXTRA_QUEUE_TOML: one agent with its own queue and table, N jobs, then as long idle;
# leaves LABEL.start, LABEL.jobs, LABEL.idle and LABEL.secs in $WORK.
run() {
  local label=$1 extra=$2 name port pid s e
  name=reqbench-$label-$(date +%s)
  port=$((20000 + RANDOM % 20000))
  cat >"$WORK/$label.toml" <<TOML
[agent]
state_dir = "$WORK/$label-state"
pool_id = "reqbench-$label"
[admin]
listen = "127.0.0.1:$port"
[queue]
url = "sqs://$name?create=true"
max_jobs = 8
$extra
[taskdb]
table = "$name"
create_table = true
TOML
  "$AGENT" serve --config "$WORK/$label.toml" 2>"$WORK/$label.log" &
  pid=$!
  for _ in $(seq 100); do curl -fs "http://127.0.0.1:$port/readyz" >/dev/null 2>&1 && break; sleep 0.2; done
  counts "$port" "$WORK/$label.start"
  s=$(date +%s.%N)
  "$BENCH" jobs "sqs://$name" "$N" "$IMAGE" >/dev/null
  e=$(date +%s.%N)
  counts "$port" "$WORK/$label.jobs"
  echo "$e - $s" | bc -l >"$WORK/$label.secs"
  # The same time idle, for the cost of just being there.
  sleep "$(cat "$WORK/$label.secs")"
  counts "$port" "$WORK/$label.idle"
  kill "$pid"; wait "$pid" 2>/dev/null || true
}

run all ""
run outcomes 'publish = ["exec.completed", "command.rejected", "command.result"]'

out=$(mktemp)
python3 - "$WORK" "$N" >"$out" <<'PY'
import sys, collections
work, n = sys.argv[1], int(sys.argv[2])
def load(label, name):
    d = collections.Counter()
    for line in open(f"{work}/{label}.{name}"):
        s, o, c = line.split()
        d[(s, o)] = int(c)
    return d
print("## Cloud requests per job")
print()
print(f"Reproduce: `bench/requests.sh {n}`. One agent (`max_jobs = 8`) on SQS with a DynamoDB TaskDB, both moto; {n} distinct trivial jobs, then as long idle. Counted by the agent itself (`reflow_cloud_requests_total`, one per SDK attempt); the producer's own requests are not included. Per job = (requests during the jobs - requests in the same time idle) / jobs.")
print()
configs = [("all", "every event kind (the default)"), ("outcomes", "`queue.publish = [\"exec.completed\", \"command.rejected\", \"command.result\"]`")]
data = {}
for label, _ in configs:
    start, jobs, idle = load(label, "start"), load(label, "jobs"), load(label, "idle")
    secs = float(open(f"{work}/{label}.secs").read())
    data[label] = {k: ((jobs[k] - start[k]) - (idle[k] - jobs[k])) / n for k in set(start) | set(jobs) | set(idle)}
    data[label]["_secs"] = secs
keys = sorted({k for d in data.values() for k in d if k != "_secs"})
print("| service | operation | " + " | ".join(f"per job, {desc}" for _, desc in configs) + " |")
print("|---|---|" + "---|" * len(configs))
for k in keys:
    if all(abs(data[l].get(k, 0)) < 0.005 for l, _ in configs):
        continue
    print(f"| {k[0]} | {k[1]} | " + " | ".join(f"{data[l].get(k, 0):.2f}" for l, _ in configs) + " |")
for svc in sorted({k[0] for k in keys}):
    print(f"| **{svc}** | **all** | " + " | ".join(f"**{sum(v for k, v in data[l].items() if k != '_secs' and k[0] == svc):.2f}**" for l, _ in configs) + " |")
print()
print("Wall time for the jobs: " + ", ".join(f"{data[l]['_secs']:.1f} s ({l})" for l, _ in configs) + ".")
print()
print("Goal (issue 17): at most 4 SQS requests per job plus 1 per visibility extension (`ChangeMessageVisibility`), and at most 3 DynamoDB writes per alloc plus keepalives. A job here is one alloc plus its fleet claim: `PutItem` of the claim and of the alloc row, `UpdateItem` of the claim when done and of the alloc row's end time.")
PY
cat "$out"
bash bench/update-results.sh requests "$out"
