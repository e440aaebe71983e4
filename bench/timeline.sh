#!/usr/bin/env bash
# Where one job's time goes: sequential `submit --wait` of one trivial job on spool:// and on
# RabbitMQ, with the agent's debug events (RUST_LOG=reflow_agent=debug), each step's median
# time since the CLI started, and `docker run --rm` of the same command beside it. Writes its
# section of bench/RESULTS.md.
#
#   bench/timeline.sh [JOBS]     (default 16 jobs per backend; the first 2 are a warm-up)
set -euo pipefail
cd "$(dirname "$0")/.."
JOBS=${1:-16}
IMAGE=${REFLOW_TEST_IMAGE:-reflow-agent-test/busybox:1}
bash scripts/dev-services.sh >/dev/null
bash scripts/test-image.sh >/dev/null
cargo build --release --quiet --bin reflow-agent
AGENT=target/release/reflow-agent
source bench/lib.sh

WORK=$(mktemp -d)
PIDS=()
AQ="amqp://guest:guest@127.0.0.1:5672/%2f?ns=timeline-$(date +%s)"
trap 'kill "${PIDS[@]}" 2>/dev/null || true; wait 2>/dev/null; amqp_drop_ns "$AQ" bench-amqp; rm -rf "$WORK"' EXIT

# timeline NAME URL: runs JOBS jobs through an agent on URL; writes NAME.tsv (step, median ms).
timeline() {
  local name=$1 url=$2 i id s e
  agent_toml "$WORK/$name.toml" "$name" "$url" "prefetch = 16"
  RUST_LOG=reflow_agent=debug "$AGENT" --log-format json serve --config "$WORK/$name.toml" 2>"$WORK/$name.log" &
  PIDS+=($!)
  # The engine's own view of each container's end: its `die` event (the exit seen) and its
  # `destroy` (removed), beside the agent's steps.
  docker events --filter type=container --filter event=die --filter event=destroy \
    --format '{{.TimeNano}} {{.Action}}' >"$WORK/$name.engine" &
  PIDS+=($!)
  sleep 2
  : >"$WORK/$name.marks"
  for ((i = 0; i < JOBS; i++)); do
    id="timeline-$name-$$-$i"
    job_json "$WORK/job.json" "$id"
    s=$(date +%s.%N)
    "$AGENT" submit --wait --timeout-secs 60 --queue "$url" "$WORK/job.json" >/dev/null 2>&1
    e=$(date +%s.%N)
    echo "$s $e" >>"$WORK/$name.marks"
    echo "docker $(docker_ms)" >>"$WORK/docker.ms"
  done
  kill "${PIDS[-1]}" "${PIDS[-2]}"
  wait "${PIDS[-1]}" "${PIDS[-2]}" 2>/dev/null || true
  python3 - "$WORK/$name.log" "$WORK/$name.marks" "$WORK/$name.engine" >"$WORK/$name.tsv" <<'PY'
import collections, datetime, json, statistics, sys
events = []
for line in open(sys.argv[1]):
    try:
        j = json.loads(line)
    except ValueError:
        continue
    f = j.get("fields", {})
    msg = f.get("message", "")
    if msg == "Exec state.":
        msg = "exec " + f.get("state", "")
    t = datetime.datetime.fromisoformat(j["timestamp"].replace("Z", "+00:00")).timestamp()
    events.append((t, msg))
engine = {"die": "Engine: `die` event.", "destroy": "Engine: `destroy` event (removed)."}
for line in open(sys.argv[3]):
    ns, action = line.split()
    events.append((int(ns) / 1e9, engine[action]))
events.sort()
steps, order = collections.defaultdict(list), []
marks = [tuple(map(float, l.split())) for l in open(sys.argv[2])][2:]
for s, e in marks:
    seen = set()
    for t, msg in events:
        if s <= t <= e and msg not in seen:
            seen.add(msg)
            if msg not in order:
                order.append(msg)
            steps[msg].append((t - s) * 1000)
    steps["CLI exits (outcome printed)"].append((e - s) * 1000)
order.append("CLI exits (outcome printed)")
order.sort(key=lambda m: statistics.median(steps[m]))
for msg in order:
    if len(steps[msg]) * 2 >= len(marks):  # steps of most jobs, not one-off log lines
        print(f"{msg}\t{statistics.median(steps[msg]):.1f}")
PY
}

docker_ms() {
  local s e
  s=$(date +%s%N)
  docker run --rm --network host "$IMAGE" sh -c 'echo x > /dev/null'
  e=$(date +%s%N)
  echo $(((e - s) / 100000))
}

: >"$WORK/docker.ms"
timeline spool "spool://$WORK/spool"
timeline amqp "$AQ"
docker=$(awk '{print $2 / 10}' "$WORK/docker.ms" | median)

out=$(mktemp)
{
  echo "## Where one job's time goes"
  echo
  echo "Reproduce: \`bench/timeline.sh $JOBS\`. Machine: $(nproc) cores, $(cpu_model); $(docker version --format 'dockerd {{.Server.Version}}'). Date: $(date -u +%Y-%m-%d). Sequential \`submit --wait\` of one trivial job (the first 2 of $JOBS are a warm-up); each step is the agent's debug event, as the median time since the CLI started. \`docker run --rm --network host\` of the same command, after each job: median $(printf '%.1f' "$docker") ms."
  echo
  echo "| step | spool:// (ms) | amqp:// (ms) |"
  echo "|---|---|---|"
  python3 - "$WORK/spool.tsv" "$WORK/amqp.tsv" <<'PY'
import sys
cols = [dict(l.rstrip("\n").split("\t") for l in open(p)) for p in sys.argv[1:]]
order = [l.split("\t")[0] for l in open(sys.argv[1])]
order += [k for k in cols[1] if k not in order]
for step in order:
    print(f"| {step} | " + " | ".join(c.get(step, "") for c in cols) + " |")
PY
  echo
  echo "The container's own time (created to exited) is the engine's, as for \`docker run\`: the start returns before the container has run, and the container's end is its \`die\` event, which the agent reads from the engine's event stream (opened with an attach to its output before the start; docs/executor.md, \"Watching a container from its start\"). On AMQP, 'Command received' includes the CLI's broker connection (TCP, the AMQP handshake, a channel), what is sent on it in one pipeline (confirm select, and the CLI's durable reply queue, declared and consumed: about 2 to 4 ms of the broker's time, measured with pika, which the broker does before it routes the command sent behind it; since df372da no topology and no binding), and the quorum queue's commit before it delivers the command. The CLI's exit follows the deletion of its reply queue, which the broker carries out before it answers the connection's close. The engine's rows come from \`docker events\`. dockerd 20.10 logs \`die\` before its cleanup (unmounting the container's filesystems, releasing its network) and answers a wait, an inspect or a logs request only after it, about 10 ms later, holding the container's lock throughout; until 492fada the agent's 'Container exited.' came that much after \`die\`. \`docker run --rm\` waits for the same cleanup, and then for the removal (\`destroy\`)."
} >"$out"
cat "$out"
bash bench/update-results.sh timeline "$out"
