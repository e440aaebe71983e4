#!/usr/bin/env bash
# End-to-end queue benchmarks on every backend, each against a baseline measured in the same
# run. Writes its section of bench/RESULTS.md.
#
#   bench/queue.sh [RUNS [TPUT_RUNS]]   (default 3: 5 x RUNS rounds of each one-job latency,
#                                       which is cheap and noisier, and TPUT_RUNS rounds of each
#                                       throughput measurement, default RUNS; medians reported)
#
# - Job latency: `reflow-agent submit --wait` of one trivial job (a fresh id each time) through
#   spool:// and RabbitMQ, submit to exec.completed, including the CLI's start and connections,
#   on two networks: an agent whose containers use the host network against `docker run --rm
#   --network host`, and an agent with its default (`none`) against plain `docker run --rm`
#   (the engine's default network: here a network namespace of its own with loopback only, as
#   dockerd runs without a bridge). The four agents and both baselines take turns in each round,
#   with `docker run --network host` a second time as a control. Then SQS (moto) on the host
#   network, taking turns with docker run, with only the SQS agent running (its long polls are
#   moto's work too).
# - Job throughput: 40 and 200 distinct trivial jobs to one agent running 8 at once, each of the
#   four agents against `xargs -P8 docker run --rm` of as many containers on the same network,
#   taking turns in each round; for 40 the host-network baseline a second time as a control.
# - The controls (a second `docker run`, a second 40-container batch, each in the same rounds as
#   the first) show what this machine's noise alone makes of a ratio.
# - Cheap commands: alloc.inspect request/reply through the agent and RabbitMQ against a raw
#   lapin echo (confirmed publish, consumer acks and publishes a confirmed reply).
set -euo pipefail
cd "$(dirname "$0")/.."
RUNS=${1:-3}
LAT_RUNS=$((RUNS * 5))
TPUT_RUNS=${2:-$RUNS}
REQS=500
IMAGE=${REFLOW_TEST_IMAGE:-reflow-agent-test/busybox:1}
AMQP=amqp://guest:guest@127.0.0.1:5672/%2f
export AWS_ACCESS_KEY_ID=testing AWS_SECRET_ACCESS_KEY=testing AWS_REGION=us-east-1
export AWS_ENDPOINT_URL=${AGENT_IT_AWS_ENDPOINT:-http://127.0.0.1:5000}
source bench/lib.sh
queue_bench_prepare

WORK=$(mktemp -d)
NS=bench-$(date +%s)
AQ="$AMQP?ns=$NS"
SPOOL="spool://$WORK/spool"
SQS="sqs://$NS?create=true"
PIDS=()
trap 'kill "${PIDS[@]}" 2>/dev/null; wait 2>/dev/null; amqp_drop_ns "$AQ" bench-amqp; amqp_drop_ns "${AQ_NONE:-}" bench-amqp-none; rm -rf "$WORK"' EXIT
# What a new file costs on the state disk, before and after (see "What a new file costs here").
CREATE_START=$(create_cost "$WORK/create-start" 1000 fresh)

# agent NAME URL EXTRA: starts `serve` on URL with 8 slots; its admin listener is off.
agent() {
  agent_toml "$WORK/$1.toml" "$1" "$2" "$3"
  "$AGENT" --log-format json serve --config "$WORK/$1.toml" 2>"$WORK/$1.log" &
  PIDS+=($!)
}

bsecs() { "$BENCH" "$@" | python3 -c 'import json,sys; print(json.load(sys.stdin)["seconds"])'; }
# settle (the $PREP of every measurement): waits, untimed, until the agents' containers are
# gone (no more agent containers than before the first measurement) and the machine is quiet
# again (under 10% of its CPU busy over 200 ms; at most 10 s). An agent removes a finished
# job's container, frees its alloc and deletes its directory after the outcome is out (off the
# path to the result), and the broker settles a batch's messages after it: without this, that
# work would run during, and slow, whatever is measured next. (`docker run --rm` returns once
# its container is removed.)
agent_containers() { docker ps -aq --filter label=reflow-executor | wc -l; }
busy_ticks() { awk '/^cpu /{print $2+$3+$4+$7+$8+$9, $2+$3+$4+$5+$6+$7+$8+$9}' /proc/stat; }
settle() {
  local i b0 t0 b1 t1
  for ((i = 0; i < 200; i++)); do
    [ "$(agent_containers)" -le "$BEFORE" ] && break
    sleep 0.05
  done
  for ((i = 0; i < 50; i++)); do
    read -r b0 t0 < <(busy_ticks)
    sleep 0.2
    read -r b1 t1 < <(busy_ticks)
    [ $(((b1 - b0) * 10)) -lt $((t1 - t0)) ] && break
  done
}
n=0
# one_job URL: seconds for `submit --wait` of one fresh job on URL.
one_job() {
  n=$((n + 1))
  local id="lat-$$-$n-$RANDOM"
  job_json "$WORK/job.json" "$id"
  secs "$AGENT" submit --wait --timeout-secs 60 --queue "$1" "$WORK/job.json"
}
# docker_one [ARGS]: seconds for one `docker run --rm ARGS` of a trivial command (no ARGS: the
# engine's default network).
docker_one() { secs docker run --rm "$@" "$IMAGE" sh -c 'echo x > /dev/null'; }
# xargs_n N [ARGS]: N trivial `docker run --rm ARGS` from `xargs -P8`.
xargs_n() {
  local n=$1
  shift
  seq "$n" | xargs -P8 -I{} docker run --rm "$@" "$IMAGE" sh -c 'echo {} > /dev/null'
}

# Two agents per backend: on the host network (as `docker run --network host`), and on the
# agent's default, no network (as plain `docker run`, which has the engine's default).
AQ_NONE="$AMQP?ns=$NS-none"
SPOOL_NONE="spool://$WORK/spool-none"
agent amqp "$AQ" "prefetch = 16"
agent spool "$SPOOL" ""
AGENT_NETWORK=none agent amqp-none "$AQ_NONE" "prefetch = 16"
AGENT_NETWORK=none agent spool-none "$SPOOL_NONE" ""
sleep 2
for u in "$AQ" "$SPOOL" "$AQ_NONE" "$SPOOL_NONE"; do one_job "$u" >/dev/null; done # warm up
docker_one --network host >/dev/null; docker_one >/dev/null
sleep 2
BEFORE=$(agent_containers) PREP=settle
RUNS=$LAT_RUNS measure_interleaved docker_one "docker_one --network host" spool_one "one_job $SPOOL" amqp_one "one_job '$AQ'" \
  docker_default_one "docker_one" none_spool_one "one_job $SPOOL_NONE" \
  none_amqp_one "one_job '$AQ_NONE'" docker_again "docker_one --network host"
# Interleaved too: on a shared machine the baseline alone drifts by a third between batches.
for N in 40 200; do
  again=()
  [ "$N" = 40 ] && again=(xargs_again_40 "secs xargs_n 40 --network host")
  RUNS=$TPUT_RUNS measure_interleaved "xargs_$N" "secs xargs_n $N --network host" \
    "spool_$N" "bsecs jobs '$SPOOL' $N '$IMAGE'" \
    "amqp_$N" "bsecs jobs '$AQ' $N '$IMAGE'" \
    "xargs_default_$N" "secs xargs_n $N" \
    "none_spool_$N" "bsecs jobs '$SPOOL_NONE' $N '$IMAGE'" \
    "none_amqp_$N" "bsecs jobs '$AQ_NONE' $N '$IMAGE'" "${again[@]}"
done
measure echo bsecs echo "$AMQP" $REQS
measure requests bsecs requests "$AQ" $REQS
kill "${PIDS[@]}"; wait "${PIDS[@]}" 2>/dev/null || true; PIDS=()

agent sqs "$SQS" ""
sleep 3
one_job "$SQS" >/dev/null; docker_one --network host >/dev/null  # warm up
sleep 2
BEFORE=$(agent_containers) PREP=settle
RUNS=$LAT_RUNS measure_interleaved docker_two "docker_one --network host" sqs_one "one_job '$SQS'"

CREATE_END=$(create_cost "$WORK/create-end" 1000 fresh)
rate() { echo "scale=1; $1 / $2" | bc -l; }
cpu=$(cpu_model)
DIGITS=3
out=$(mktemp)
{
  echo "## Queue: end-to-end jobs and commands"
  echo
  echo "Reproduce: \`bench/queue.sh $RUNS $TPUT_RUNS\`. Machine: $(nproc) cores, $cpu; $(docker version --format 'dockerd {{.Server.Version}}'); RabbitMQ $(rabbitmqctl version 2>/dev/null); SQS on moto. Date: $(date -u +%Y-%m-%d). Medians of $LAT_RUNS runs for one job and of $TPUT_RUNS for throughput; release build; one agent per backend, \`max_jobs = 8\`. The agent and its baseline take turns in each round, each round starting one further along the list, so that each takes each place in turn; the last column pairs them by round (each round's agent against the same round's baseline): the median of the rounds' ratios, and in brackets a 95% confidence interval for it (bootstrap over the rounds), how finely this machine's noise lets the rounds tell the ratio."
  echo
  row "measurement" "agent" "baseline" "agent / baseline" "goal" "per round: median (95% CI)"
  echo "|---|---|---|---|---|---|"
  for q in spool amqp; do
    row "one job on \`$q://\`, host network, submit to exec.completed (s)" "${T[${q}_one]}" "docker run --rm --network host: ${T[docker_one]}" "$(ratio "${T[${q}_one]}" "${T[docker_one]}")" "<= 1.05" "$(spread "${q}_one" docker_one)"
    row "one job on \`$q://\`, the defaults of both, submit to exec.completed (s)" "${T[none_${q}_one]}" "docker run --rm: ${T[docker_default_one]}" "$(ratio "${T[none_${q}_one]}" "${T[docker_default_one]}")" "<= 1.05" "$(spread "none_${q}_one" docker_default_one)"
  done
  row "one job on \`sqs://\` (moto), host network, submit to exec.completed (s)" "${T[sqs_one]}" "docker run --rm --network host: ${T[docker_two]}" "$(ratio "${T[sqs_one]}" "${T[docker_two]}")" "reported" "$(spread sqs_one docker_two)"
  for N in 40 200; do
    for q in spool amqp; do
      row "$N jobs at concurrency 8 on \`$q://\`, host network (jobs/s)" "$(rate "$N" "${T[${q}_$N]}")" "xargs -P8 docker run --rm --network host: $(rate "$N" "${T[xargs_$N]}")" "$(ratio "${T[xargs_$N]}" "${T[${q}_$N]}") (throughput)" ">= 1.0" "$(spread "xargs_$N" "${q}_$N")"
      row "$N jobs at concurrency 8 on \`$q://\`, the defaults of both (jobs/s)" "$(rate "$N" "${T[none_${q}_$N]}")" "xargs -P8 docker run --rm: $(rate "$N" "${T[xargs_default_$N]}")" "$(ratio "${T[xargs_default_$N]}" "${T[none_${q}_$N]}") (throughput)" ">= 1.0" "$(spread "xargs_default_$N" "none_${q}_$N")"
    done
  done
  row "control: one \`docker run --rm --network host\` against another in the same rounds (s)" "${T[docker_again]}" "docker run --rm --network host: ${T[docker_one]}" "$(ratio "${T[docker_again]}" "${T[docker_one]}")" "" "$(spread docker_again docker_one)"
  row "control: 40 containers from \`xargs -P8\` against another 40 in the same rounds (jobs/s)" "$(rate 40 "${T[xargs_again_40]}")" "xargs -P8 docker run --rm --network host: $(rate 40 "${T[xargs_40]}")" "$(ratio "${T[xargs_40]}" "${T[xargs_again_40]}") (throughput)" "" "$(spread xargs_40 xargs_again_40)"
  row "$REQS alloc.inspect request/replies on \`amqp://\` (per s)" "$(rate $REQS "${T[requests]}")" "raw lapin echo: $(rate $REQS "${T[echo]}")" "$(ratio "${T[echo]}" "${T[requests]}") (throughput)" "" ""
  echo
  echo "A job's latency includes the CLI process, its connection (on AMQP one, on which the CLI declares its durable reply queue and sends the command, and at the end deletes the queue), the journal and outbox fsyncs, the alloc, the container, promoting and sending its output, and the event. A request is decoded, checked, answered from the pool, written to the outbox (fsync) and published with a confirm. The control rows run the baseline twice in the same rounds: the difference between two medians of the same command is what this machine's noise alone makes of a ratio. CPU per new empty file on the state disk ($(df --output=fstype "$WORK" | tail -1)), 1000 creates in a new directory: ${CREATE_START} us at the start of the run, ${CREATE_END} us at its end. The agent makes about 28 new inodes per job beside its container's own (\`bench/inodes.sh\`, where this disk has measured 10 to 950 us per create): at the high end that is about 25 ms of CPU per job, which the throughput rows pay."
} >"$out"
cat "$out"
bash bench/update-results.sh queue "$out"
