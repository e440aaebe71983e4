#!/usr/bin/env bash
# Where the CPU of a job goes: N trivial jobs at concurrency 8 through a spool:// agent, and as
# many `docker run --rm` from `xargs -P8`, in turns, measuring the whole machine's busy CPU time
# (/proc/stat) and that of dockerd, containerd and the agent (/proc/PID/stat) over each batch.
# Writes its section of bench/RESULTS.md.
#
#   bench/jobcpu.sh [ROUNDS] [N]     (default 3 rounds of 40 jobs; medians reported)
#
# Both batches are CPU-bound on a 2-core machine, so throughput follows CPU per job: what the
# agent adds to the engine's work (its own process, and its extra engine calls: inspect, logs
# and remove where `docker run --rm` has the engine remove the container) against what the
# baseline adds (a docker CLI process per container).
set -euo pipefail
cd "$(dirname "$0")/.."
ROUNDS=${1:-3}
N=${2:-40}
IMAGE=${REFLOW_TEST_IMAGE:-reflow-agent-test/busybox:1}
bash scripts/dev-services.sh >/dev/null
bash scripts/test-image.sh >/dev/null
cargo build --release --quiet --bin reflow-agent --example queue_bench
AGENT=target/release/reflow-agent
BENCH=target/release/examples/queue_bench
source bench/lib.sh

WORK=$(mktemp -d)
APID=""
trap '[ -n "$APID" ] && kill "$APID" 2>/dev/null; wait 2>/dev/null; rm -rf "$WORK"' EXIT
agent_toml "$WORK/spool.toml" spool "spool://$WORK/spool" ""
"$AGENT" --log-format json serve --config "$WORK/spool.toml" 2>"$WORK/spool.log" &
APID=$!
sleep 2
HZ=$(getconf CLK_TCK)
DPID=$(pgrep -xo dockerd)
CPID=$(pgrep -xo containerd)
busy() { awk '/^cpu /{print $2+$3+$4+$7+$8+$9}' /proc/stat; }
ticks() { awk '{print $14+$15}' "/proc/$1/stat"; }
snap() { echo "$(date +%s.%N) $(busy) $(ticks "$DPID") $(ticks "$CPID") $(ticks "$APID")"; }
# per_job NAME BEFORE AFTER: appends wall s, and machine, dockerd, containerd and agent CPU in
# ms per job, to $WORK/NAME.
per_job() {
  read -r t0 b0 d0 c0 a0 <<<"$2"
  read -r t1 b1 d1 c1 a1 <<<"$3"
  echo "$t0 $t1 $b0 $b1 $d0 $d1 $c0 $c1 $a0 $a1" | awk -v n="$N" -v hz="$HZ" \
    '{ms = 1000 / hz / n; printf "%.3f %.1f %.1f %.1f %.1f\n", $2 - $1, ($4-$3)*ms, ($6-$5)*ms, ($8-$7)*ms, ($10-$9)*ms}' \
    >>"$WORK/$1"
}
"$BENCH" jobs "spool://$WORK/spool" 8 "$IMAGE" >/dev/null # warm up
seq 8 | xargs -P8 -I{} docker run --rm --network host "$IMAGE" sh -c 'echo {} > /dev/null'
for ((i = 0; i < ROUNDS; i++)); do
  s0=$(snap)
  seq "$N" | xargs -P8 -I{} docker run --rm --network host "$IMAGE" sh -c 'echo {} > /dev/null'
  per_job xargs "$s0" "$(snap)"
  s0=$(snap)
  "$BENCH" jobs "spool://$WORK/spool" "$N" "$IMAGE" >/dev/null
  per_job agent "$s0" "$(snap)"
done
# col FILE K: the median of column K of FILE (one decimal; the wall time, column 1, two).
col() {
  awk -v k="$2" '{print $k}' "$WORK/$1" | median |
    awk -v k="$2" '{printf (k == 1 ? "%.2f\n" : "%.1f\n"), $1}'
}
out=$(mktemp)
{
  echo "## CPU per job"
  echo
  echo "Reproduce: \`bench/jobcpu.sh $ROUNDS $N\`. Machine: $(nproc) cores, $(cpu_model); $(docker version --format 'dockerd {{.Server.Version}}'). Date: $(date -u +%Y-%m-%d). $N trivial jobs at concurrency 8, medians of $ROUNDS interleaved rounds; release build; CPU from /proc/stat and /proc/PID/stat, in ms per job."
  echo
  row "batch" "wall (s)" "machine CPU" "dockerd" "containerd" "agent process"
  echo "|---|---|---|---|---|---|"
  row "\`xargs -P8 docker run --rm\`" "$(col xargs 1)" "$(col xargs 2)" "$(col xargs 3)" "$(col xargs 4)" "-"
  row "agent on \`spool://\`" "$(col agent 1)" "$(col agent 2)" "$(col agent 3)" "$(col agent 4)" "$(col agent 5)"
  echo
  echo "The machine's CPU includes the containers, containerd's shims, runc and the kernel's work for each container, which both batches pay; the baseline's also holds a docker CLI process per container, the agent's its own process (every number is per job)."
} >"$out"
cat "$out"
bash bench/update-results.sh jobcpu "$out"
