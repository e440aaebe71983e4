#!/usr/bin/env bash
# The quick-start demo on the embedded default, with nothing but Docker needed: make sure a
# Docker engine is reachable, build the offline test image, ingest a sample input tree into a
# file repository, start the agent on a spool:// queue with that repository, submit a job over
# those inputs with `submit --wait`, and print its exec.completed event, output and manifest.
set -euo pipefail
cd "$(dirname "$0")/.."
log() { printf '[demo] %s\n' "$*" >&2; }

log "checking the Docker engine"
REFLOW_SERVICES=docker bash scripts/dev-services.sh
log "building the offline test image"
image=$(bash scripts/test-image.sh)
# The embedded default (spool queue, file repository, no TaskDB) needs none of the optional
# backends, so the demo builds without them: no AWS SDK, no AMQP client.
log "building reflow-agent (no optional backends)"
cargo build --quiet --no-default-features --bin reflow-agent
bin=target/debug/reflow-agent

state=${REFLOW_DEMO_DIR:-$(mktemp -d -t reflow-demo.XXXXXX)}
mkdir -p "$state/inputs/reads"
printf 'ACGTACGTAC\n' >"$state/inputs/reads/sample-1.fq"
printf 'TTGACCATGA\n' >"$state/inputs/reads/sample-2.fq"
printf 'chr1\t0\t1000\n' >"$state/inputs/regions.bed"

log "ingesting $state/inputs into the source repository $state/source"
"$bin" --log-format text repo --dir "$state/source" ingest "$state/inputs" >"$state/inputs.fileset.json"
"$bin" --log-format text repo --dir "$state/source" verify

log "starting the agent: queue spool://$state/spool, repository file://$state/source"
"$bin" --log-format text serve --state-dir "$state/agent" --queue "spool://$state/spool" \
  --repository "file://$state/source" 2>"$state/agent.log" &
agent=$!
trap 'kill -TERM $agent 2>/dev/null; wait $agent 2>/dev/null || true' EXIT

# A job whose exec (a Reflow ExecConfig) reads that fileset from the agent's repository.
python3 - "$state" "$image" <<'PY'
import json, os, sys
state, image = sys.argv[1], sys.argv[2]
inputs = json.load(open(f"{state}/inputs.fileset.json"))
job = {"v": 1, "id": "demo-" + os.path.basename(state), "kind": "job", "correlation_id": "demo",
       "body": {"config": {
           "Type": "exec", "Ident": "demo.count", "Image": image,
           "Cmd": "cd %s && wc -c reads/*.fq regions.bed | sort > $out",
           "Args": [{"Out": False, "Fileset": inputs, "Index": 0}],
           "Resources": {"mem": 64 << 20, "cpu": 1}}}}
json.dump(job, open(f"{state}/job.json", "w"), indent=2)
PY
log "submitting $state/job.json to spool://$state/spool and waiting for exec.completed"
"$bin" --log-format text submit --wait --queue "spool://$state/spool" "$state/job.json" | tee "$state/completed.json"
read -r out exec alloc < <(python3 -c 'import json,sys; e=json.load(open(sys.argv[1])); print(e["body"]["result"]["Fileset"]["Fileset"]["."]["ID"], e["exec"], e["alloc"])' "$state/completed.json")
log "output $out, from the repository the job sent it to:"
"$bin" repo --dir "$state/source" cat "$out"
log "manifest of $exec, read offline from the agent's state directory:"
"$bin" inspect --dir "$state/agent" "$exec"
log "done; state is in $state (agent log: $state/agent.log)"
