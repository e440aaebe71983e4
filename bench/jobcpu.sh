#!/usr/bin/env bash
# Where the CPU of a job goes: N trivial jobs at concurrency 8 through a spool:// agent and an
# amqp:// agent, and as many `docker run --rm` from `xargs -P8`, in turns, measuring the whole
# machine's busy CPU time (/proc/stat) and that of dockerd, containerd, the agent and RabbitMQ
# (/proc/PID/stat) over each batch.
# Writes its section of bench/RESULTS.md.
#
#   bench/jobcpu.sh [ROUNDS] [N]     (default 3 rounds of 40 jobs; medians reported)
#
# Both batches are CPU-bound on a 2-core machine, so throughput follows CPU per job: what the
# agent adds to the engine's work (its own process, and its extra engine calls: inspect, logs
# and remove where `docker run --rm` has the engine remove the container) against what the
# baseline adds (a docker CLI process per container). On AMQP the broker runs on the same machine,
# so its work for each job (the command, the events, their confirms and acks) is the machine's too.
set -euo pipefail
cd "$(dirname "$0")/.."
ROUNDS=${1:-3}
N=${2:-40}
IMAGE=${REFLOW_TEST_IMAGE:-reflow-agent-test/busybox:1}
source bench/lib.sh
queue_bench_prepare

WORK=$(mktemp -d)
SPOOL="spool://$WORK/spool"
AQ="amqp://guest:guest@127.0.0.1:5672/%2f?ns=jobcpu-$(date +%s)"
PIDS=()
trap 'kill "${PIDS[@]}" 2>/dev/null; wait 2>/dev/null; amqp_drop_ns "$AQ" bench-amqp; rm -rf "$WORK"' EXIT
declare -A APIDS
for q in spool amqp; do
  url=$SPOOL
  extra=""
  if [ "$q" = amqp ]; then url=$AQ extra="prefetch = 16"; fi
  agent_toml "$WORK/$q.toml" "$q" "$url" "$extra"
  "$AGENT" --log-format json serve --config "$WORK/$q.toml" 2>"$WORK/$q.log" &
  PIDS+=($!)
  APIDS[$q]=$!
done
sleep 2
HZ=$(getconf CLK_TCK)
DPID=$(pgrep -xo dockerd)
CPID=$(pgrep -xo containerd)
BPID=$(pgrep -o beam.smp)
busy() { awk '/^cpu /{print $2+$3+$4+$7+$8+$9}' /proc/stat; }
ticks() { awk '{print $14+$15}' "/proc/$1/stat"; }
# snap [AGENT_PID]: a timestamp and the busy CPU ticks of the machine, dockerd, containerd,
# the agent (0 without one) and the broker.
snap() {
  local a=0
  [ -n "${1:-}" ] && a=$(ticks "$1")
  echo "$(date +%s.%N) $(busy) $(ticks "$DPID") $(ticks "$CPID") $a $(ticks "$BPID")"
}
# per_job NAME BEFORE AFTER: appends wall s, and machine, dockerd, containerd, agent and broker
# CPU in ms per job, to $WORK/NAME.
per_job() {
  read -r t0 b0 d0 c0 a0 r0 <<<"$2"
  read -r t1 b1 d1 c1 a1 r1 <<<"$3"
  echo "$t0 $t1 $b0 $b1 $d0 $d1 $c0 $c1 $a0 $a1 $r0 $r1" | awk -v n="$N" -v hz="$HZ" \
    '{ms = 1000 / hz / n; printf "%.3f %.1f %.1f %.1f %.1f %.1f\n", $2 - $1, ($4-$3)*ms, ($6-$5)*ms, ($8-$7)*ms, ($10-$9)*ms, ($12-$11)*ms}' \
    >>"$WORK/cpu-$1"
}
"$BENCH" jobs "$SPOOL" 8 "$IMAGE" >/dev/null # warm up
"$BENCH" jobs "$AQ" 8 "$IMAGE" >/dev/null
seq 8 | xargs -P8 -I{} docker run --rm --network host "$IMAGE" sh -c 'echo {} > /dev/null'
for ((i = 0; i < ROUNDS; i++)); do
  s0=$(snap)
  seq "$N" | xargs -P8 -I{} docker run --rm --network host "$IMAGE" sh -c 'echo {} > /dev/null'
  per_job xargs "$s0" "$(snap)"
  for q in spool amqp; do
    url=$SPOOL
    [ "$q" = amqp ] && url=$AQ
    s0=$(snap "${APIDS[$q]}")
    "$BENCH" jobs "$url" "$N" "$IMAGE" >/dev/null
    per_job "$q" "$s0" "$(snap "${APIDS[$q]}")"
  done
done
# col FILE K: the median of column K of FILE (one decimal; the wall time, column 1, two).
col() {
  awk -v k="$2" '{print $k}' "$WORK/cpu-$1" | median |
    awk -v k="$2" '{printf (k == 1 ? "%.2f\n" : "%.1f\n"), $1}'
}
out=$(mktemp)
{
  echo "## CPU per job"
  echo
  echo "Reproduce: \`bench/jobcpu.sh $ROUNDS $N\`. Machine: $(nproc) cores, $(cpu_model); $(docker version --format 'dockerd {{.Server.Version}}'); $(rabbitmqctl -q version 2>/dev/null | sed 's/^/RabbitMQ /'). Date: $(date -u +%Y-%m-%d). $N trivial jobs at concurrency 8, medians of $ROUNDS interleaved rounds; release build; CPU from /proc/stat and /proc/PID/stat, in ms per job."
  echo
  row "batch" "wall (s)" "machine CPU" "dockerd" "containerd" "agent process" "broker (beam.smp)"
  echo "|---|---|---|---|---|---|---|"
  row "\`xargs -P8 docker run --rm\`" "$(col xargs 1)" "$(col xargs 2)" "$(col xargs 3)" "$(col xargs 4)" "-" "$(col xargs 6)"
  row "agent on \`spool://\`" "$(col spool 1)" "$(col spool 2)" "$(col spool 3)" "$(col spool 4)" "$(col spool 5)" "$(col spool 6)"
  row "agent on \`amqp://\`" "$(col amqp 1)" "$(col amqp 2)" "$(col amqp 3)" "$(col amqp 4)" "$(col amqp 5)" "$(col amqp 6)"
  echo
  echo "The machine's CPU includes the containers, containerd's shims, runc and the kernel's work for each container, which every batch pays; the baseline's also holds a docker CLI process per container, the agents' their own process, and on AMQP the broker's work for the job's messages (every number is per job; the broker's figure in the other rows is its idle work)."
} >"$out"
cat "$out"
bash bench/update-results.sh jobcpu "$out"
