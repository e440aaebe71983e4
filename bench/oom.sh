#!/usr/bin/env bash
# OOM detection delay: over N real OOM kills (bash growing past a 32 MiB limit), the time from
# the kernel's kill record to the exec being classified (its result published). Writes its
# section of bench/RESULTS.md.
#
#   bench/oom.sh [N]        (default 20)
set -euo pipefail
cd "$(dirname "$0")/.."
N=${1:-20}
IMAGE=${REFLOW_TEST_IMAGE:-reflow-agent-test/busybox:1}
bash scripts/test-image.sh >/dev/null
cargo build --release --quiet --example exec_bench
out=$(target/release/examples/exec_bench oom "$N" "$IMAGE")
read -r min med max < <(python3 -c 'import json,sys; d=json.loads(sys.argv[1]); print(round(d["delay_ms_min"],1), round(d["delay_ms_median"],1), round(d["delay_ms_max"],1))' "$out")
section=$(mktemp)
{
  echo "## OOM detection delay"
  echo
  echo "Reproduce: \`bench/oom.sh $N\`. Machine: $(nproc) cores; $(docker version --format 'dockerd {{.Server.Version}}'); kernel $(uname -r). Date: $(date -u +%Y-%m-%d)."
  echo "$N real OOM kills (bash growing past a 32 MiB HardMemLimit); delay from the kernel's kill record to the exec's result being published."
  echo "This includes the engine noticing the exit, saving logs, the inspect, the kernel log reader catching up, and the manifest write."
  echo
  echo "| min (ms) | median (ms) | max (ms) |"
  echo "|---|---|---|"
  echo "| $min | $med | $max |"
} >"$section"
bash bench/update-results.sh oom "$section"
cat "$section"
rm -f "$section"
