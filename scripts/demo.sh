#!/usr/bin/env bash
# The quick-start demo on the embedded default, with nothing but Docker needed.
#
# Final shape (once the executor and the spool queue exist): make sure a Docker engine is
# reachable, build the offline test image, start the agent on a spool:// queue with a local file
# repository, submit a sample job and print its result manifest.
#
# What it does today (no queue yet): the Docker engine and test image; a source repository with
# a sample input tree; then one exec on the executor that reads those inputs, and its result and
# manifest. See README.md, "Status".
set -euo pipefail
cd "$(dirname "$0")/.."
log() { printf '[demo] %s\n' "$*" >&2; }

log "checking the Docker engine"
REFLOW_SERVICES=docker bash scripts/dev-services.sh
log "building the offline test image"
image=$(bash scripts/test-image.sh)
log "building reflow-agent"
cargo build --quiet
bin=target/debug/reflow-agent

state=${REFLOW_DEMO_DIR:-$(mktemp -d -t reflow-demo.XXXXXX)}
mkdir -p "$state/inputs/reads"
printf 'ACGTACGTAC\n' >"$state/inputs/reads/sample-1.fq"
printf 'TTGACCATGA\n' >"$state/inputs/reads/sample-2.fq"
printf 'chr1\t0\t1000\n' >"$state/inputs/regions.bed"

log "ingesting $state/inputs into the source repository $state/source"
"$bin" --log-format text repo --dir "$state/source" ingest "$state/inputs" >"$state/inputs.fileset.json"
"$bin" --log-format text repo --dir "$state/source" verify

# A Reflow ExecConfig whose one input is that fileset.
python3 - "$state" "$image" <<'PY'
import json, sys
state, image = sys.argv[1], sys.argv[2]
inputs = json.load(open(f"{state}/inputs.fileset.json"))
config = {
    "Type": "exec", "Ident": "demo.count", "Image": image,
    "Cmd": "cd %s && wc -c reads/*.fq regions.bed | sort > $out",
    "Args": [{"Out": False, "Fileset": inputs, "Index": 0}],
    "Resources": {"mem": 64 << 20, "cpu": 1},
}
json.dump(config, open(f"{state}/exec.json", "w"), indent=2)
PY
id=$(sha256sum "$state/exec.json" | cut -c1-64)
log "running exec $id on the executor in $state/alloc"
"$bin" --log-format text exec --dir "$state/alloc" --id "$id" --config "$state/exec.json" \
  --inputs-from "file://$state/source" --promote | tee "$state/result.json"
out=$(python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["Fileset"]["Fileset"]["."]["ID"])' "$state/result.json")
log "output $out:"
"$bin" repo --dir "$state/alloc/objects" cat "$out"
log "manifest ($state/alloc/execs/$id/manifest.json):"
python3 -c 'import json,sys; m=json.load(open(sys.argv[1])); m["Docker"]="(docker inspect, elided)"; print(json.dumps(m, indent=2))' \
  "$state/alloc/execs/$id/manifest.json"
log "done; state is in $state"
log "not yet: submitting the job through a spool:// queue to a running agent (queue control plane)"
