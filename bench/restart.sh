#!/usr/bin/env bash
# Restart time and memory with a large history: an agent whose state directory holds 100,000 done
# journal entries (and as many stored results) and 10,000 completed exec manifests in 10 live
# allocs, and one holding 2,000 freed allocs' directories (zombies, each with one completed
# exec), with their end marks and without them (as a start before the marks found every one),
# against the same agent on an empty state directory, in the same run. Time is from the
# process start to `/readyz` answering 200; memory is the VmRSS right after. Writes its section
# of bench/RESULTS.md.
#
#   bench/restart.sh [RUNS]        (default 5 runs; medians reported)
#
# Needs a reachable Docker engine (readiness includes an engine ping).
set -euo pipefail
cd "$(dirname "$0")/.."
RUNS=${1:-5}
JOURNAL=${JOURNAL:-100000}
MANIFESTS=${MANIFESTS:-10000}
ZOMBIES=${ZOMBIES:-2000}
WORK=bench/work/restart
BIN=target/release/reflow-agent
cargo build --release --quiet --bin reflow-agent
source bench/lib.sh

# generate DIR JOURNAL MANIFESTS: a state directory with that history (made once, then reused).
generate() {
  local dir=$1 journal=$2 manifests=$3
  [ -f "$dir/.complete-$journal-$manifests" ] && return 0
  rm -rf "$dir"; mkdir -p "$dir"
  python3 - "$dir" "$journal" "$manifests" <<'PY'
import hashlib, json, os, sys
root, n_journal, n_manifests = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
golden = json.load(open("tests/golden/reflow-json/manifest_docker_ok.json"))
os.makedirs(f"{root}/journal/pending", exist_ok=True)
os.makedirs(f"{root}/results", exist_ok=True)
open(f"{root}/journal/.pending-split", "w").write("1\n")
for i in range(n_journal):
    cid = f"history-{i}"
    entry = {"v": 1, "command_id": cid, "kind": "job", "phase": "done",
             "command": {"v": 1, "id": cid, "kind": "job"}, "accepted": "2026-11-01T00:00:00Z"}
    h = hashlib.sha256(cid.encode()).hexdigest()
    with open(f"{root}/journal/{h}.json", "w") as f:
        json.dump(entry, f)
    with open(f"{root}/results/{hashlib.sha256(h.encode()).hexdigest()}.json", "w") as f:
        json.dump({"result": golden["Result"], "repository": "file:///nowhere", "exec": "sha256:" + h}, f)
allocs = 10
state = {}
for a in range(allocs):
    aid = f"{a:016x}"
    state[aid] = {"cpu": 0, "mem": 0}
    d = f"{root}/allocs/{aid}"
    os.makedirs(f"{d}/execs", exist_ok=True)
    json.dump({"Want": {"cpu": 0, "mem": 0}, "Owner": "bench", "Labels": None}, open(f"{d}/meta.json", "w"))
    for i in range(n_manifests // allocs):
        h = hashlib.sha256(f"{a}-{i}".encode()).hexdigest()
        os.makedirs(f"{d}/execs/{h}", exist_ok=True)
        json.dump(golden, open(f"{d}/execs/{h}/manifest.json", "w"))
json.dump(state, open(f"{root}/state.json", "w"))
PY
  touch "$dir/.complete-$journal-$manifests"
}
big=$WORK/big
journal_only=$WORK/journal-only
generate "$big" "$JOURNAL" "$MANIFESTS"
generate "$journal_only" "$JOURNAL" 0

# generate_zombies DIR N MARK: a state directory whose valid state.json lists no alloc, and N
# freed allocs' directories, each with one completed exec; with MARK=1 each has its end mark.
generate_zombies() {
  local dir=$1 n=$2 mark=$3
  [ -f "$dir/.complete-$n-$mark" ] && return 0
  rm -rf "$dir"; mkdir -p "$dir"
  python3 - "$dir" "$n" "$mark" <<'PY'
import hashlib, json, os, sys
root, n, mark = sys.argv[1], int(sys.argv[2]), sys.argv[3] == "1"
golden = json.load(open("tests/golden/reflow-json/manifest_docker_ok.json"))
for a in range(n):
    d = f"{root}/allocs/{a + 1:016x}"
    h = hashlib.sha256(f"zombie-{a}".encode()).hexdigest()
    os.makedirs(f"{d}/execs/{h}", exist_ok=True)
    json.dump({"Want": {"cpu": 0, "mem": 0}, "Owner": "bench", "Labels": None}, open(f"{d}/meta.json", "w"))
    json.dump(golden, open(f"{d}/execs/{h}/manifest.json", "w"))
    if mark:
        open(f"{d}/ended", "w").write("2026-11-01T00:00:00Z")
json.dump({}, open(f"{root}/state.json", "w"))
PY
  touch "$dir/.complete-$n-$mark"
}
zombies=$WORK/zombies
unmarked=$WORK/zombies-unmarked
generate_zombies "$zombies" "$ZOMBIES" 1
generate_zombies "$unmarked" "$ZOMBIES" 0

# start_ready STATE_TEMPLATE: copies the template, starts the agent on it, prints seconds to
# /readyz 200 and the RSS (KiB) then, and stops it.
start_ready() {
  local tmpl=$1 dir port pid s e rss
  dir=$(mktemp -d -p bench/work)
  # Hard links: the agent replaces files by rename, never in place, so the template stays intact.
  cp -al "$tmpl/." "$dir/" 2>/dev/null || true
  port=$((20000 + RANDOM % 20000))
  cat >"$dir/agent.toml" <<EOF
[agent]
state_dir = "$(realpath "$dir")"
pool_id = "bench-restart"
state_retention_secs = 0
[admin]
listen = "127.0.0.1:$port"
[queue]
url = "spool://$(realpath "$dir")/spool"
EOF
  sync
  s=$(date +%s.%N)
  "$BIN" --log-format json serve --config "$dir/agent.toml" 2>"$dir/agent.log" &
  pid=$!
  until curl -fs "http://127.0.0.1:$port/readyz" >/dev/null 2>&1; do
    if ! kill -0 "$pid" 2>/dev/null; then echo "agent died: $(tail -5 "$dir/agent.log")" >&2; exit 1; fi
    sleep 0.005
  done
  e=$(date +%s.%N)
  rss=$(awk '/VmRSS/ {print $2}' "/proc/$pid/status")
  kill -TERM "$pid"; wait "$pid" 2>/dev/null || true
  rm -rf "$dir"
  echo "$(echo "$e - $s" | bc -l) $rss"
}

empty=$WORK/empty
mkdir -p "$empty"
declare -a te tb tj tz tu re rb rj rz ru
for ((i = 0; i < RUNS; i++)); do
  read -r t r < <(start_ready "$empty"); te+=("$t"); re+=("$r")
  read -r t r < <(start_ready "$journal_only"); tj+=("$t"); rj+=("$r")
  read -r t r < <(start_ready "$big"); tb+=("$t"); rb+=("$r")
  read -r t r < <(start_ready "$zombies"); tz+=("$t"); rz+=("$r")
  read -r t r < <(start_ready "$unmarked"); tu+=("$t"); ru+=("$r")
done
T[zombies]=$(printf '%s\n' "${tz[@]}" | median)
T[unmarked]=$(printf '%s\n' "${tu[@]}" | median)
R_ZOMBIES=$(printf '%s\n' "${rz[@]}" | median)
R_UNMARKED=$(printf '%s\n' "${ru[@]}" | median)
T[empty]=$(printf '%s\n' "${te[@]}" | median)
T[journal]=$(printf '%s\n' "${tj[@]}" | median)
T[big]=$(printf '%s\n' "${tb[@]}" | median)
R_EMPTY=$(printf '%s\n' "${re[@]}" | median)
R_JOURNAL=$(printf '%s\n' "${rj[@]}" | median)
R_BIG=$(printf '%s\n' "${rb[@]}" | median)
printf 'ready, empty state:     %s s, RSS %s KiB\n' "${T[empty]}" "$R_EMPTY" >&2
printf 'ready, large history:   %s s, RSS %s KiB\n' "${T[big]}" "$R_BIG" >&2

out=$(mktemp)
cat >"$out" <<EOF
## Restart with a large history

\`bench/restart.sh $RUNS\` on $(nproc) cores ($(cpu_model)), $(date -u +%Y-%m-%d), release build.
Medians of $RUNS starts each, alternating; time from process start to \`/readyz\` 200, memory
(VmRSS) right then. The large state directory holds $JOURNAL done journal entries, as many stored
results, and $MANIFESTS completed exec manifests in 10 live allocs.

| state directory | ready after | RSS |
|---|---|---|
| empty | ${T[empty]} s | $((${R_EMPTY%.*} / 1024)) MiB |
| $JOURNAL journal entries (and results) | ${T[journal]} s | $((${R_JOURNAL%.*} / 1024)) MiB |
| $JOURNAL journal entries, $MANIFESTS manifests | ${T[big]} s | $((${R_BIG%.*} / 1024)) MiB |
| $ZOMBIES zombie allocs (freed, with their end marks) | ${T[zombies]} s | $((${R_ZOMBIES%.*} / 1024)) MiB |
| $ZOMBIES freed allocs without end marks (each ended again: every start before the marks) | ${T[unmarked]} s | $((${R_UNMARKED%.*} / 1024)) MiB |

Goal: ready in under 1 s with the large history (issue 14); RSS flat in the journal's size
(issue 20: compare the first two rows). A start reads only \`journal/pending/\`, so done entries
cost nothing; the manifests of live allocs are each read (on every core) and kept by recovery,
which is the memory of the third row. Freed allocs' directories stay (zombies, collected after
\`agent.zombie_max_age_secs\`, a day by default): a start leaves one with its end mark alone,
where it used to make an executor for each (recovery, a container listing, a kill), so a busy
machine's start took time in proportion to its last day of jobs (the last row).
EOF
bash bench/update-results.sh restart "$out"
rm -f "$out"
