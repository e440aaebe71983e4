#!/usr/bin/env bash
# End-to-end queue benchmarks, each against a baseline measured in the same run. Writes its
# section of bench/RESULTS.md.
#
#   bench/queue.sh [RUNS]     (default 3 runs of each measurement; medians reported)
#
# - Job latency: `reflow-agent submit --wait` of one trivial job through RabbitMQ (submit to
#   exec.completed, including the CLI's start and connections) against `docker run --rm` of the
#   same command.
# - Job throughput: 200 distinct trivial jobs through RabbitMQ to one agent running 8 at once,
#   against `xargs -P8 docker run --rm` of 200 containers.
# - Cheap commands: alloc.inspect request/reply through the agent and RabbitMQ against a raw
#   lapin echo (confirmed publish, consumer acks and publishes a confirmed reply).
set -euo pipefail
cd "$(dirname "$0")/.."
RUNS=${1:-3}
N=200
REQS=500
IMAGE=${REFLOW_TEST_IMAGE:-reflow-agent-test/busybox:1}
AMQP=amqp://guest:guest@127.0.0.1:5672/%2f
bash scripts/dev-services.sh >/dev/null
bash scripts/test-image.sh >/dev/null
cargo build --release --quiet --bin reflow-agent --example queue_bench
AGENT=target/release/reflow-agent
BENCH=target/release/examples/queue_bench
source bench/lib.sh

WORK=$(mktemp -d)
NS=bench-$(date +%s)
Q="$AMQP?ns=$NS"
cat >"$WORK/agent.toml" <<TOML
[agent]
state_dir = "$WORK/state"
pool_id = "bench"
[queue]
url = "$Q"
max_jobs = 8
prefetch = 16
heartbeat_secs = 30
# The baseline runs `docker run --network host`; the agent runs its containers alike.
[executor]
network_mode = "host"
allow_host_network = true
TOML
"$AGENT" --log-format json serve --config "$WORK/agent.toml" 2>"$WORK/agent.log" &
AGENT_PID=$!
trap 'kill $AGENT_PID 2>/dev/null; wait $AGENT_PID 2>/dev/null; rm -rf "$WORK"' EXIT
sleep 2

bsecs() { "$BENCH" "$@" | python3 -c 'import json,sys; print(json.load(sys.stdin)["seconds"])'; }
one_job() {
  local id="lat-$(date +%s%N)"
  printf '{"v":1,"id":"%s","kind":"job","body":{"config":{"Type":"exec","Image":"%s","Cmd":"echo %s > $out","Resources":{"mem":16777216,"cpu":0.1}}}}' "$id" "$IMAGE" "$id" >"$WORK/job.json"
  secs "$AGENT" submit --wait --queue "$Q" "$WORK/job.json"
}
docker_one() { secs docker run --rm --network host "$IMAGE" sh -c 'echo x > /dev/null'; }
xargs_n() { seq $N | xargs -P8 -I{} docker run --rm --network host "$IMAGE" sh -c 'echo {} > /dev/null'; }

one_job >/dev/null  # warm up
measure_interleaved docker_one "docker_one" agent_one "one_job"
measure xargs_par secs xargs_n
measure agent_par bsecs jobs "$Q" $N "$IMAGE"
measure echo bsecs echo "$AMQP" $REQS
measure requests bsecs requests "$Q" $REQS

rate() { echo "scale=1; $1 / $2" | bc -l; }
cpu=$(cpu_model)
DIGITS=3
out=$(mktemp)
{
  echo "## Queue: end-to-end jobs and commands"
  echo
  echo "Reproduce: \`bench/queue.sh $RUNS\`. Machine: $(nproc) cores, $cpu; $(docker version --format 'dockerd {{.Server.Version}}'); RabbitMQ $(rabbitmqctl version 2>/dev/null). Date: $(date -u +%Y-%m-%d). Medians of $RUNS runs; release build; one agent, \`max_jobs = 8\`."
  echo
  row "measurement" "agent" "baseline" "agent / baseline"
  echo "|---|---|---|---|"
  row "one job, submit to exec.completed (s)" "${T[agent_one]}" "docker run --rm: ${T[docker_one]}" "$(ratio "${T[agent_one]}" "${T[docker_one]}")"
  row "$N jobs at concurrency 8 (jobs/s)" "$(rate $N "${T[agent_par]}")" "xargs -P8 docker run --rm: $(rate $N "${T[xargs_par]}")" "$(ratio "${T[xargs_par]}" "${T[agent_par]}") (throughput)"
  row "$REQS alloc.inspect request/replies (per s)" "$(rate $REQS "${T[requests]}")" "raw lapin echo: $(rate $REQS "${T[echo]}")" "$(ratio "${T[echo]}" "${T[requests]}") (throughput)"
  echo
  echo "A job's latency includes the CLI process, its connections and an exclusive reply queue, the journal and outbox fsyncs, the alloc, the container, promoting and sending its output, and the confirmed event. A request is decoded, checked, answered from the pool, written to the outbox (fsync) and published with a confirm."
} >"$out"
cat "$out"
bash bench/update-results.sh queue "$out"
