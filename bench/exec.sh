#!/usr/bin/env bash
# Exec latency and throughput through the executor against `docker run --rm` and against the
# engine's own floor (bare create/start/wait/remove on the API), in the same run. Writes its
# section of bench/RESULTS.md.
#
#   bench/exec.sh [RUNS]       (default 3 runs of each measurement; medians reported)
#
# Floor and executor runs are interleaved (floor, executor, floor, ...) so drift on this noisy
# machine affects both alike. All variants run the same image, entrypoint (`/bin/bash -e -l -o pipefail -c true`) and host
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

source bench/lib.sh
# json_secs CMD...: runs an exec_bench mode, prints its seconds, and appends its CPU seconds per
# container to $WORK_CPU/<mode>.
WORK_CPU=$(mktemp -d)
json_secs() {
  "$@" | python3 -c 'import json,sys,os
d = json.load(sys.stdin)
open(os.path.join(sys.argv[1], d["mode"] + str(d["concurrency"])), "a").write(str(d["cpu_seconds"] / d["n"] * 1000) + "\n")
print(d["seconds"])' "$WORK_CPU"
}
cli_seq() { for _ in $(seq $N); do "${RUN[@]}"; done; }
cli_par() { seq $N | xargs -P8 -I{} "${RUN[@]}"; }

measure cli_seq secs cli_seq
measure_interleaved floor_seq "json_secs $BENCH floor $N 1 $IMAGE" agent_seq "json_secs $BENCH executor $N 1 $IMAGE"
measure cli_par secs cli_par
measure_interleaved floor_par "json_secs $BENCH floor $N 8 $IMAGE" agent_par "json_secs $BENCH executor $N 8 $IMAGE"
rss=$("$BENCH" rss 100 "$IMAGE")

per() { echo "scale=4; $1 / $N" | bc -l | sed 's/^\./0./'; }
rate() { echo "scale=2; $N / $1" | bc -l | sed 's/^\./0./'; }
rss_idle=$(echo "$rss" | python3 -c 'import json,sys; print(json.load(sys.stdin)["rss_kib_idle"])')
rss_run=$(echo "$rss" | python3 -c 'import json,sys; print(json.load(sys.stdin)["rss_kib_running"])')
cpu=$(cpu_model)
DIGITS=3
{
  echo "## Exec latency and throughput"
  echo
  echo "Reproduce: \`bench/exec.sh $RUNS\`. Machine: $(nproc) cores, $cpu; $(docker version --format 'dockerd {{.Server.Version}}'). Date: $(date -u +%Y-%m-%d)."
  echo "$N trivial containers (\`true\` under \`bash -l\`, host network, image $IMAGE); medians of $RUNS runs."
  echo
  row "measurement" "seconds for $N" "per container (s)" "containers/s"
  echo "|---|---|---|---|"
  row "docker run --rm, sequential" "${T[cli_seq]}" "$(per "${T[cli_seq]}")" "$(rate "${T[cli_seq]}")"
  row "engine floor (API create/start/wait/remove), sequential" "${T[floor_seq]}" "$(per "${T[floor_seq]}")" "$(rate "${T[floor_seq]}")"
  row "executor, sequential" "${T[agent_seq]}" "$(per "${T[agent_seq]}")" "$(rate "${T[agent_seq]}")"
  row "xargs -P8 docker run --rm" "${T[cli_par]}" "" "$(rate "${T[cli_par]}")"
  row "engine floor, concurrency 8" "${T[floor_par]}" "" "$(rate "${T[floor_par]}")"
  row "executor, concurrency 8" "${T[agent_par]}" "" "$(rate "${T[agent_par]}")"
  echo
  row "ratio" "value" "goal"
  echo "|---|---|---|"
  row "executor / docker run latency (sequential)" "$(ratio "${T[agent_seq]}" "${T[cli_seq]}")" "<= 1.05"
  row "executor / floor latency (sequential)" "$(ratio "${T[agent_seq]}" "${T[floor_seq]}")" "<= 1.10"
  row "executor / floor throughput (concurrency 8)" "$(ratio "${T[floor_par]}" "${T[agent_par]}")" ">= 0.95"
  row "executor / xargs -P8 docker run throughput" "$(ratio "${T[cli_par]}" "${T[agent_par]}")" ""
  echo
  echo "The agent's own work per exec (manifests with fsync, exec directories, saved logs, output install, the extra"
  echo "inspect/logs calls), as CPU time of the process hosting the executor: $(median <"$WORK_CPU/executor1") ms sequential and"
  echo "$(median <"$WORK_CPU/executor8") ms at concurrency 8, against $(median <"$WORK_CPU/floor1") ms and $(median <"$WORK_CPU/floor8") ms for the bare API client (medians)."
  echo
  echo "RSS of a process hosting an executor: ${rss_idle} KiB idle, ${rss_run} KiB with 100 execs running."
} >bench/work-exec-section.md
bash bench/update-results.sh exec bench/work-exec-section.md
cat bench/work-exec-section.md
rm -rf bench/work-exec-section.md "$WORK_CPU"
