#!/usr/bin/env bash
# One job's latency on the embedded default queue (spool://) against the docker command a user
# would type instead. Writes its section of bench/RESULTS.md.
#
#   bench/spool.sh [RUNS]     (default 15; medians reported)
#
# Agent: `reflow-agent submit --wait` of one trivial job (a fresh id each run) to a running
# `serve` on a spool queue, from the CLI's start to the printed exec.completed. Baseline:
# `docker run --rm --network host` of the same command. Interleaved, so drift hits both alike.
set -euo pipefail
cd "$(dirname "$0")/.."
RUNS=${1:-15}
IMAGE=${REFLOW_TEST_IMAGE:-reflow-agent-test/busybox:1}
bash scripts/dev-services.sh >/dev/null
bash scripts/test-image.sh >/dev/null
cargo build --release --quiet --bin reflow-agent
AGENT=${AGENT:-target/release/reflow-agent}
source bench/lib.sh

WORK=$(mktemp -d)
agent_toml "$WORK/agent.toml" spool "spool://$WORK/spool"
"$AGENT" serve --config "$WORK/agent.toml" 2>"$WORK/agent.log" &
PID=$!
trap 'kill $PID 2>/dev/null; wait $PID 2>/dev/null; rm -rf "$WORK"' EXIT
for _ in $(seq 1 100); do [ -d "$WORK/spool/incoming" ] && break; sleep 0.1; done

n=0
agent_job() {
  n=$((n + 1))
  local id="lat-$$-$n-$RANDOM"
  job_json "$WORK/job.json" "$id" 67108864 1
  secs "$AGENT" submit --wait --timeout-secs 60 --queue "spool://$WORK/spool" "$WORK/job.json"
}
docker_job() { secs docker run --rm --network host "$IMAGE" sh -c 'echo x > /dev/null'; }
agent_job >/dev/null; docker_job >/dev/null  # warm both
measure_interleaved agent "agent_job" docker "docker_job"
R=$(ratio "${T[agent]}" "${T[docker]}")
printf 'spool latency ratio: %s\n' "$R" >&2

out=$(mktemp)
cat >"$out" <<EOF2
## One job on spool://

\`bench/spool.sh $RUNS\` on $(nproc) cores ($(cpu_model)), $(date -u +%Y-%m-%d), release build.
Medians of $RUNS runs, interleaved.

| measurement | agent | baseline | ratio | goal |
|---|---|---|---|---|
| one job, \`submit --wait\` on \`spool://\` (CLI start to exec.completed) | ${T[agent]} s | \`docker run --rm --network host\`: ${T[docker]} s | ${R}x | <= 1.05x |

The agent's source and the CLI's event watch wake on inotify (the \`notify\` crate), with a
slow poll as the fallback on filesystems without it.
EOF2
bash bench/update-results.sh spool "$out"
rm -f "$out"
