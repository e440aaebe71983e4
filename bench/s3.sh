#!/usr/bin/env bash
# S3 transfer throughput against `aws s3 cp --only-show-errors --recursive` (awscli from PyPI) on the same moto
# server, in the same run. Writes its section of bench/RESULTS.md.
#
#   bench/s3.sh [RUNS]     (default 3 runs of each measurement; medians reported)
#
# Data: 1 GiB as one file, and as 1,000 files of 1 MiB. Both tools copy a local directory to a
# fresh prefix (upload) and that prefix back to an empty directory (download). The agent hashes
# each file for its Content-Sha256 on upload and verifies it on download; awscli signs each body's
# SHA-256 (SigV4 over plain HTTP) and verifies nothing.
set -euo pipefail
cd "$(dirname "$0")/.."
RUNS=${1:-3}
REFLOW_SERVICES=moto bash scripts/dev-services.sh >/dev/null
command -v aws >/dev/null 2>&1 || pip install -q awscli
cargo build --release --quiet --bin reflow-agent
AGENT=$PWD/target/release/reflow-agent
export AWS_ACCESS_KEY_ID=testing AWS_SECRET_ACCESS_KEY=testing AWS_REGION=us-east-1
export AWS_ENDPOINT_URL=${AWS_ENDPOINT_URL:-http://127.0.0.1:5000}
AWS=(aws --endpoint-url "$AWS_ENDPOINT_URL")
source bench/lib.sh

WORK=$(mktemp -d -p "${TMPDIR:-/tmp}" reflow-s3-bench.XXXXXX)
trap 'rm -rf "$WORK"' EXIT
mkdir -p "$WORK/one" "$WORK/many"
head -c $((1 << 30)) /dev/urandom >"$WORK/one/blob.bin"
for i in $(seq -w 1 1000); do head -c $((1 << 20)) /dev/urandom >"$WORK/many/f$i"; done
BUCKET=bench-$(date +%s)
"${AWS[@]}" s3 mb "s3://$BUCKET" >/dev/null

n=0
up() { # TOOL DATASET -> seconds
  n=$((n + 1)); local p="s3://$BUCKET/$1-$2-$n/"
  sync # untimed: the previous step's dirty pages are not written back during this one
  if [ "$1" = agent ]; then secs "$AGENT" s3 cp "$WORK/$2" "$p"; else secs "${AWS[@]}" s3 cp --only-show-errors --recursive "$WORK/$2" "$p"; fi
  echo "$p" >"$WORK/last-$1-$2"
}
down() { # TOOL DATASET -> seconds
  local p; p=$(cat "$WORK/last-$1-$2"); rm -rf "$WORK/dl"; mkdir -p "$WORK/dl"; sync
  if [ "$1" = agent ]; then secs "$AGENT" s3 cp "$p" "$WORK/dl/"; else secs "${AWS[@]}" s3 cp --only-show-errors --recursive "$p" "$WORK/dl/"; fi
  "${AWS[@]}" s3 rm --only-show-errors --recursive "$p" >/dev/null
}
for ds in one many; do
  for ((r = 0; r < RUNS; r++)); do
    # Which tool goes first alternates, so neither always follows the other's aftermath.
    if ((r % 2 == 0)); then
      a=$(up agent $ds); c=$(up cli $ds); ad=$(down agent $ds); cd_=$(down cli $ds)
    else
      c=$(up cli $ds); a=$(up agent $ds); cd_=$(down cli $ds); ad=$(down agent $ds)
    fi
    echo "$a" >>"$WORK/up-agent-$ds"; echo "$c" >>"$WORK/up-cli-$ds"
    echo "$ad" >>"$WORK/down-agent-$ds"; echo "$cd_" >>"$WORK/down-cli-$ds"
  done
  for k in up-agent up-cli down-agent down-cli; do T[$k-$ds]=$(median <"$WORK/$k-$ds"); done
done
"${AWS[@]}" s3 rb "s3://$BUCKET" --force >/dev/null

mibs() { echo "scale=1; 1024 / $1" | bc -l; }
out=$(mktemp)
{
  echo "## S3 transfers against aws s3 cp"
  echo
  echo "Reproduce: \`bench/s3.sh $RUNS\`. Machine: $(nproc) cores, $(cpu_model); moto server on 127.0.0.1; $("${AWS[@]}" --version 2>&1 | cut -d' ' -f1). Date: $(date -u +%Y-%m-%d). Medians of $RUNS interleaved runs (the tool that goes first alternates; \`sync\` before each timed step); release build. The agent: 8 objects and 8 parts of 16 MiB in flight; awscli: its defaults (10 requests in flight, 8 MiB parts)."
  echo
  row "data" "direction" "agent (s)" "aws s3 cp (s)" "agent MiB/s" "aws MiB/s" "agent / aws (throughput)"
  echo "|---|---|---|---|---|---|---|"
  for ds in one many; do
    label=$([ $ds = one ] && echo "1 GiB, 1 file" || echo "1,000 MiB, 1,000 files")
    for dir in up down; do
      a=${T[$dir-agent-$ds]}; c=${T[$dir-cli-$ds]}
      row "$label" "$([ $dir = up ] && echo upload || echo download)" "$a" "$c" "$(mibs "$a")" "$(mibs "$c")" "$(ratio "$c" "$a")"
    done
  done
  echo
  echo "The agent's uploads include hashing each file for \`Content-Sha256\` before its first request; its downloads verify each file against the \`Content-Sha256\` its GET reports. awscli hashes each request body for its SigV4 signature (plain HTTP), in its worker threads, and verifies nothing on download. The goal is a ratio of at least 1.0. Both tools send each request body's CRC32. Without it (until 2026-11-29) the agent's single-file upload ran at 0.50x: for a multipart upload that names no checksum algorithm, moto computes a FULL_OBJECT CRC64NVME over the whole object in Python at CompleteMultipartUpload (py-spy showed it); awscli names CRC32, so moto only combined the parts' CRC32s. Before \`sync\` and the alternating order (also 2026-11-29), the agent's upload always followed awscli's download, which does not fsync, so awscli's 1 GiB was written back during the agent's upload; those runs gave 0.99 and 1.07."
} >"$out"
cat "$out"
bash bench/update-results.sh s3 "$out"
