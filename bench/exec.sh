#!/usr/bin/env bash
# Exec latency and throughput through the executor against `docker run --rm` and against the
# engine's own floor (bare create/start/wait/remove on the API), in the same run. Writes its
# section of bench/RESULTS.md.
#
#   bench/exec.sh [RUNS]       (default 3 runs of each measurement; medians reported)
#
# All variants run the same image, entrypoint (`/bin/bash -e -l -o pipefail -c true`) and host
# networking. Sequential: 50 containers one after another. Concurrent: 50 containers, 8 at once.
set -euo pipefail
cd "$(dirname "$0")/.."
RUNS=${1:-3}
N=50
IMAGE=${REFLOW_TEST_IMAGE:-reflow-agent-test/busybox:1}
bash scripts/test-image.sh >/dev/null
cargo build --release --quiet --example exec_bench
BENCH=target/release/examples/exec_bench
RUN=(docker run --rm --network host --entrypoint /bin/bash "$IMAGE" -e -l -o pipefail -c true)

median() { sort -g | awk '{a[NR]=$1} END {m=(NR%2)?a[(NR+1)/2]:(a[NR/2]+a[NR/2+1])/2; printf "%.3f\n", m}'; }
secs() { local s e; s=$(date +%s.%N); "$@" >/dev/null 2>&1; e=$(date +%s.%N); echo "$e - $s" | bc -l; }
json_secs() { "$@" | python3 -c 'import json,sys; print(json.load(sys.stdin)["seconds"])'; }
cli_seq() { for _ in $(seq $N); do "${RUN[@]}"; done; }
cli_par() { seq $N | xargs -P8 -I{} "${RUN[@]}"; }

declare -A T
measure() { # name cmd...
  local name=$1; shift; local xs=() i
  for ((i = 0; i < RUNS; i++)); do xs+=("$("$@")"); done
  T[$name]=$(printf '%s\n' "${xs[@]}" | median)
  printf '%-16s %s s for %d containers (median of %d)\n' "$name" "${T[$name]}" "$N" "$RUNS" >&2
}
measure cli_seq secs cli_seq
measure floor_seq json_secs "$BENCH" floor $N 1 "$IMAGE"
measure agent_seq json_secs "$BENCH" executor $N 1 "$IMAGE"
measure cli_par secs cli_par
measure floor_par json_secs "$BENCH" floor $N 8 "$IMAGE"
measure agent_par json_secs "$BENCH" executor $N 8 "$IMAGE"
rss=$("$BENCH" rss 100 "$IMAGE")

per() { echo "scale=4; $1 / $N" | bc -l | sed 's/^\./0./'; }
rate() { echo "scale=2; $N / $1" | bc -l | sed 's/^\./0./'; }
ratio() { echo "scale=3; $1 / $2" | bc -l | sed 's/^\./0./'; }
ovh_ms() { echo "scale=1; ($1 - $2) * 1000 / $N" | bc -l | sed 's/^\./0./;s/^-\./-0./'; }
rss_idle=$(echo "$rss" | python3 -c 'import json,sys; print(json.load(sys.stdin)["rss_kib_idle"])')
rss_run=$(echo "$rss" | python3 -c 'import json,sys; print(json.load(sys.stdin)["rss_kib_running"])')
cpu=$(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ //')
{
  echo "## Exec latency and throughput"
  echo
  echo "Reproduce: \`bench/exec.sh $RUNS\`. Machine: $(nproc) cores, $cpu; $(docker version --format 'dockerd {{.Server.Version}}'). Date: $(date -u +%Y-%m-%d)."
  echo "$N trivial containers (\`true\` under \`bash -l\`, host network, image $IMAGE); medians of $RUNS runs."
  echo
  echo "| measurement | seconds for $N | per container (s) | containers/s |"
  echo "|---|---|---|---|"
  echo "| docker run --rm, sequential | ${T[cli_seq]} | $(per "${T[cli_seq]}") | $(rate "${T[cli_seq]}") |"
  echo "| engine floor (API create/start/wait/remove), sequential | ${T[floor_seq]} | $(per "${T[floor_seq]}") | $(rate "${T[floor_seq]}") |"
  echo "| executor, sequential | ${T[agent_seq]} | $(per "${T[agent_seq]}") | $(rate "${T[agent_seq]}") |"
  echo "| xargs -P8 docker run --rm | ${T[cli_par]} | | $(rate "${T[cli_par]}") |"
  echo "| engine floor, concurrency 8 | ${T[floor_par]} | | $(rate "${T[floor_par]}") |"
  echo "| executor, concurrency 8 | ${T[agent_par]} | | $(rate "${T[agent_par]}") |"
  echo
  echo "| ratio | value | goal |"
  echo "|---|---|---|"
  echo "| executor / docker run latency (sequential) | $(ratio "${T[agent_seq]}" "${T[cli_seq]}") | <= 1.05 |"
  echo "| executor / floor latency (sequential) | $(ratio "${T[agent_seq]}" "${T[floor_seq]}") | <= 1.10 |"
  echo "| executor / floor throughput (concurrency 8) | $(ratio "${T[floor_par]}" "${T[agent_par]}") | >= 0.95 |"
  echo "| executor / xargs -P8 docker run throughput | $(ratio "${T[cli_par]}" "${T[agent_par]}") | |"
  echo
  echo "Agent's own overhead per exec over the floor (manifests with fsync, exec directories, saved logs, output install): $(ovh_ms "${T[agent_seq]}" "${T[floor_seq]}") ms sequential."
  echo
  echo "RSS of a process hosting an executor: ${rss_idle} KiB idle, ${rss_run} KiB with 100 execs running."
} >bench/work-exec-section.md
bash bench/update-results.sh exec bench/work-exec-section.md
cat bench/work-exec-section.md
rm -f bench/work-exec-section.md
