#!/usr/bin/env bash
# The fleet's makespan against the ideal for the capacity present at each moment. Runs the
# integration test `amqp_fleet_of_four_scaled_to_one_completes_every_job_once` (4 agents on one
# RabbitMQ queue, 200 trivial jobs, scaled to 1 agent by SIGTERM once a quarter are done), and in
# the same run measures the engine's own throughput for trivial containers at the concurrency of
# each phase (`xargs -P<slots> docker run --rm`). The ideal makespan runs the jobs at that
# throughput: the 4-agent rate until the scale-in moment, the 1-agent rate after. Writes its
# section of bench/RESULTS.md. The agents are a release build (`cargo test --release`), as users
# run them; a debug build's own CPU time on a 2-core machine shows in the makespan.
#
#   bench/fleet.sh [RUNS]     (default 3; medians)
set -euo pipefail
cd "$(dirname "$0")/.."
RUNS=${1:-3}
IMAGE=${REFLOW_TEST_IMAGE:-reflow-agent-test/busybox:1}
source bench/lib.sh
bash scripts/dev-services.sh >/dev/null
bash scripts/test-image.sh >/dev/null
export AGENT_IT_AMQP_URL=${AGENT_IT_AMQP_URL:-amqp://guest:guest@127.0.0.1:5672/reflow-it}
export AGENT_IT_AWS_ENDPOINT=${AGENT_IT_AWS_ENDPOINT:-http://127.0.0.1:5000}
export AGENT_IT_IMAGE=$IMAGE
rabbitmqctl -q add_vhost reflow-it >/dev/null 2>&1 || true
rabbitmqctl -q set_permissions -p reflow-it guest '.*' '.*' '.*'
TEST=amqp_fleet_of_four_scaled_to_one_completes_every_job_once
cargo test --release --quiet --all-features --test suite --no-run 2>/dev/null

# engine_rate P N: containers per second of `xargs -P P docker run --rm` over N containers.
engine_rate() {
  local s e
  s=$(date +%s.%N)
  seq "$2" | xargs -P "$1" -I{} docker run --rm --network none "$IMAGE" sh -c 'echo {} > /dev/null' >/dev/null
  e=$(date +%s.%N)
  echo "$2 / ($e - $s)" | bc -l
}

makespans=() ideals=() ratios=() rows=()
for ((i = 0; i < RUNS; i++)); do
  line=$(cargo test --release --quiet --all-features --test suite -- --exact "control_it::$TEST" --nocapture 2>&1 | grep '^fleet-bench ' || true)
  [ -n "$line" ] || { echo "the fleet test printed no result" >&2; exit 1; }
  eval "$(echo "$line" | sed 's/^fleet-bench //')"
  r_before=$(engine_rate "$slots_before" 100)
  r_after=$(engine_rate "$slots_after" 50)
  # Ideal: jobs at r_before until the scale-in moment, the rest at r_after.
  ideal=$(python3 -c "
jobs, t1, rb, ra = $jobs, $scale_in_secs, $r_before, $r_after
print(f'{jobs / rb:.3f}' if rb * t1 >= jobs else f'{t1 + (jobs - rb * t1) / ra:.3f}')")
  makespans+=("$makespan_secs"); ideals+=("$ideal")
  ratio=$(echo "$makespan_secs / $ideal" | bc -l)
  ratios+=("$ratio")
  rows+=("$(row "$((i + 1))" "$makespan_secs" "$ideal" "$(printf '%.3f' "$ratio")" \
    "$(printf '%.1f/s at %d, %.1f/s at %d' "$r_before" "$slots_before" "$r_after" "$slots_after")" \
    "$(printf '%.1f' "$scale_in_secs")")")
  printf 'run %d: makespan %.1f s, ideal %.1f s (engine %.1f/s at %d, %.1f/s at %d; scale-in at %.1f s)\n' \
    "$i" "$makespan_secs" "$ideal" "$r_before" "$slots_before" "$r_after" "$slots_after" "$scale_in_secs" >&2
done
M=$(printf '%s\n' "${makespans[@]}" | median)
I=$(printf '%s\n' "${ideals[@]}" | median)
R=$(printf '%s\n' "${ratios[@]}" | median)
out=$(mktemp)
{
  echo "## Fleet scale-in: makespan against the ideal"
  echo
  echo "Reproduce: \`bench/fleet.sh $RUNS\`. Machine: $(nproc) cores, $(cpu_model); one dockerd shared by every agent; RabbitMQ $(rabbitmqctl version 2>/dev/null). Date: $(date -u +%Y-%m-%d). Medians of $RUNS runs; the agents are a release build."
  echo
  echo "$jobs trivial jobs on one queue, 4 agents ($slots_before slots) scaled to 1 ($slots_after slots) by SIGTERM once a quarter are done (the test \`$TEST\`). The ideal runs them at the engine's own throughput for trivial containers at each phase's concurrency (\`xargs -P<slots> docker run --rm\`, measured in the same run): the 4-agent rate until the scale-in, the 1-agent rate after."
  echo
  row "run" "makespan (s)" "ideal (s)" "makespan / ideal" "engine (xargs docker run)" "scale-in at (s)"
  echo "|---|---|---|---|---|---|"
  printf '%s\n' "${rows[@]}"
  echo
  row "median makespan (s)" "median ideal (s)" "median of the ratios" "goal"
  echo "|---|---|---|---|"
  row "$M" "$I" "$(printf '%.3f' "$R")" "<= 1.10"
} >"$out"
cat "$out"
bash bench/update-results.sh fleet "$out"
