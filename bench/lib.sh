# Helpers shared by the bench scripts (source it). Each measurement runs RUNS times and keeps the
# median; T[name] holds it.

declare -A T
# X[NAME]: measure_interleaved's values of NAME, one per round, in round order.
declare -A X

# median: the median of the numbers on stdin, three decimals.
median() { sort -g | awk '{a[NR]=$1} END {m=(NR%2)?a[(NR+1)/2]:(a[NR/2]+a[NR/2+1])/2; printf "%.3f\n", m}'; }

# secs CMD...: wall seconds CMD takes (its output discarded).
secs() {
  local s e
  s=$(date +%s.%N); "$@" >/dev/null 2>&1; e=$(date +%s.%N)
  echo "$e - $s" | bc -l
}

# ratio A B: A / B with DIGITS decimals (default 2).
ratio() { echo "scale=${DIGITS:-2}; $1 / $2" | bc -l | sed 's/^\./0./'; }

# measure NAME CMD...: runs CMD (which prints seconds) RUNS times, after the untimed $PREP when
# set, and stores the median in T[NAME].
measure() {
  local name=$1; shift
  local xs=() i
  for ((i = 0; i < RUNS; i++)); do
    if [ -n "${PREP:-}" ]; then $PREP; fi
    xs+=("$("$@")")
  done
  T[$name]=$(printf '%s\n' "${xs[@]}" | median)
  printf '%-28s %s s (median of %d)\n' "$name" "${T[$name]}" "$RUNS" >&2
}

# queue_bench_prepare: the services and the offline test image, and a release build of the
# agent and examples/queue_bench, as $AGENT and $BENCH (how the queue benchmarks start).
queue_bench_prepare() {
  bash scripts/dev-services.sh >/dev/null
  bash scripts/test-image.sh >/dev/null
  cargo build --release --quiet --bin reflow-agent --example queue_bench
  AGENT=target/release/reflow-agent
  BENCH=target/release/examples/queue_bench
}

# cpu_model: the CPU's model name.
cpu_model() { grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ //'; }

# measure_interleaved NAME CMD [NAME CMD]...: like measure for several commands (each after the
# untimed $PREP when set), running each once per round in turn so machine drift affects all
# alike. Round i starts with the (i mod K)th of the K commands and goes round from there, so
# over K rounds each command runs once in each place: the machine drifts within a round (here,
# batches of containers mostly got slower as a run went on), and a fixed order would charge
# that drift to the same command every round. The commands are strings (eval'd).
measure_interleaved() {
  local names=() cmds=() xs=() i j k
  while [ $# -ge 2 ]; do names+=("$1"); cmds+=("$2"); shift 2; done
  for ((i = 0; i < RUNS; i++)); do
    for ((k = 0; k < ${#names[@]}; k++)); do
      j=$(((i + k) % ${#names[@]}))
      if [ -n "${PREP:-}" ]; then $PREP; fi
      xs[j]+="$(eval "${cmds[j]}") "
    done
  done
  for j in "${!names[@]}"; do
    # shellcheck disable=SC2086 # one number per word
    T[${names[j]}]=$(printf '%s\n' ${xs[j]} | median)
    X[${names[j]}]=${xs[j]}
    printf '%-28s %s s (median of %d, interleaved)\n' "${names[j]}" "${T[${names[j]}]}" "$RUNS" >&2
  done
}

# spread A B: A / B paired by round over an interleaved measurement (A's value of each round
# over B's of the same round): the median of those ratios and a 95% confidence interval for it
# (percentile bootstrap over the rounds, 10,000 resamples, fixed seed), "M (LO to HI)" with
# DIGITS decimals (default 2). Pairing by round takes out the drift between rounds; the interval
# is how finely this machine's noise lets the rounds tell the ratio.
spread() {
  python3 - "${DIGITS:-2}" "${X[$1]}" "${X[$2]}" <<'PY'
import random, statistics, sys
d, a, b = int(sys.argv[1]), sys.argv[2].split(), sys.argv[3].split()
r = [float(x) / float(y) for x, y in zip(a, b)]
rng = random.Random(1)
boot = sorted(statistics.median(rng.choices(r, k=len(r))) for _ in range(10000))
lo, hi = boot[249], boot[9749]
print(f"{statistics.median(r):.{d}f} ({lo:.{d}f} to {hi:.{d}f})")
PY
}

# row CELL...: one markdown table row.
row() {
  local out="|" c
  for c in "$@"; do out+=" $c |"; done
  echo "$out"
}

# agent_toml FILE NAME URL [EXTRA]: a benchmark agent's `serve` config in FILE: state in
# $WORK/NAME-state, 8 slots on URL (EXTRA: more [queue] lines), no admin listener, and its
# containers on the host network, as the `docker run --network host` baselines run theirs
# (with AGENT_NETWORK=none, the agent's default: no network).
agent_toml() {
  local executor='network_mode = "host"
allow_host_network = true'
  [ "${AGENT_NETWORK:-host}" = none ] && executor='network_mode = "none"'
  cat >"$1" <<TOML
[agent]
state_dir = "$WORK/$2-state"
pool_id = "bench-$2"
[queue]
url = "$3"
max_jobs = 8
${4:-}
[admin]
listen = "off"
[executor]
$executor
TOML
}

# job_json FILE ID [MEM CPU]: one trivial job with command id ID in $IMAGE (it writes its id to
# its output), asking for MEM bytes (default 16 MiB) and CPU cores (default 0.1).
job_json() {
  printf '{"v":1,"id":"%s","kind":"job","body":{"config":{"Type":"exec","Image":"%s","Cmd":"echo %s > $out","Resources":{"mem":%s,"cpu":%s}}}}' \
    "$2" "$IMAGE" "$2" "${3:-16777216}" "${4:-0.1}" >"$1"
}

# amqp_drop_ns URL POOL...: deletes the namespace of URL (amqp://...?ns=NS) from the broker: its
# command and dead-letter queues, the queue of each agent POOL (a pool id) and its exchanges.
# A benchmark's namespace is of no use after it, and its quorum queues would stay, recovered at
# every start of the broker. Best effort: a failure here only leaves them.
amqp_drop_ns() {
  [ -n "${1:-}" ] || return 0
  python3 - "$@" <<'PY' || true
import sys, urllib.parse, pika
url, pools = sys.argv[1], sys.argv[2:]
base, _, query = url.partition("?")
ns = urllib.parse.parse_qs(query).get("ns", ["reflow"])[0]
conn = pika.BlockingConnection(pika.URLParameters(base))
ch = conn.channel()
for q in [f"{ns}.commands", f"{ns}.commands.dlq"] + [f"{ns}.agent.{p}" for p in pools]:
    ch.queue_delete(q)
for x in (f"{ns}.events", f"{ns}.dlx"):
    ch.exchange_delete(x)
conn.close()
PY
}

# create_cost DIR N [fresh]: microseconds of CPU per create of an empty file in DIR (made if
# missing; its files are left), fresh, after N deletions and after 2N; with `fresh`, the first
# alone (nothing deleted: the probe leaves the disk as the creates found it). On ext4 without a
# journal a create costs more the more files were deleted near it lately (bench/inodes.sh).
create_cost() {
  python3 - "$1" "$2" "${3:-}" <<'PY'
import os, sys
d, n, fresh = sys.argv[1], int(sys.argv[2]), sys.argv[3] == "fresh"
os.makedirs(d, exist_ok=True)
def cpu():
    t = os.times()
    return t.user + t.system
def create(tag):
    c = cpu()
    for i in range(n):
        os.close(os.open(f"{d}/{tag}{i}", os.O_WRONLY | os.O_CREAT, 0o644))
    return (cpu() - c) * 1e6 / n
out = [create("a")]
for tag in () if fresh else ("a", "b"):
    for i in range(n):
        os.unlink(f"{d}/{tag}{i}")
    out.append(create(chr(ord(tag) + 1)))
print(" ".join(f"{x:.0f}" for x in out))
PY
}
