#!/usr/bin/env bash
# The quick-start demo on the embedded default, with nothing but Docker needed.
#
# Final shape (once the executor and the spool queue exist): make sure a Docker engine is
# reachable, build the offline test image, start the agent on a spool:// queue with a local file
# repository, submit a sample job and print its result manifest.
#
# What it does today (foundation only): the Docker engine and test image, then the content-
# addressed repository: it ingests a sample input tree, verifies it, and prints the
# Reflow-compatible fileset that a job would reference. See README.md, "Status".
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

log "ingesting $state/inputs into the repository at $state/objects"
"$bin" --log-format text repo --dir "$state/objects" ingest "$state/inputs" | tee "$state/inputs.fileset.json"
log "verifying every object"
"$bin" --log-format text repo --dir "$state/objects" verify
log "objects:"
"$bin" repo --dir "$state/objects" ls >&2
log "done: image $image is ready; state is in $state"
log "not yet: running the job on the executor via the spool queue (issues 3 and 6)"
