#!/usr/bin/env bash
# Repository ingest and verify throughput against openssl and coreutils on the same data, in the
# same run. Writes its section of bench/RESULTS.md.
#
#   bench/repo.sh [RUNS]        (default 5 runs; medians reported)
#
# Data: 1 GiB as one file, and 1 GiB as 10,000 files, in bench/work/ (page cache warm for all).
# Baselines:
#   - single file: `openssl dgst -sha256 FILE` and `sha256sum FILE`
#   - many files:  a sequential loop `for f in ...; do openssl dgst -sha256 "$f"; done`, and the
#                  stricter `openssl dgst -sha256 f1 f2 ...` (one process for all files)
# Agent:  `reflow-agent repo --dir D ingest PATH` (hash + hard link into a fresh repository) and
#         `reflow-agent repo --dir D verify` (re-hash every object), release build.
set -euo pipefail
cd "$(dirname "$0")/.."
RUNS=${1:-5}
WORK=bench/work
BIN=target/release/reflow-agent
cargo build --release --quiet
mkdir -p "$WORK"

big=$WORK/big.bin
small=$WORK/small
if [ ! -f "$big" ] || [ "$(stat -c %s "$big")" -ne $((1 << 30)) ]; then
  head -c $((1 << 30)) /dev/urandom >"$big"
fi
if [ ! -d "$small" ] || [ "$(find "$small" -type f | wc -l)" -ne 10000 ]; then
  rm -rf "$small"; mkdir -p "$small"
  # 10,000 files of 107,374 bytes each (~1 GiB), cut from the big file.
  split -a 4 -d -b 107374 -n r/10000 "$big" "$small/f" 2>/dev/null || true
  if [ "$(find "$small" -type f | wc -l)" -ne 10000 ]; then
    rm -rf "$small"; mkdir -p "$small"
    for i in $(seq -w 0 9999); do head -c 107374 /dev/urandom >"$small/f$i"; done
  fi
fi
cat "$big" >/dev/null; find "$small" -type f -exec cat {} + >/dev/null   # warm the page cache

source bench/lib.sh

ingest() { "$BIN" --log-format json repo --dir "$WORK/repo" ingest "$1"; }
fresh_repo() { rm -rf "$WORK/repo"; }
verify() { "$BIN" --log-format json repo --dir "$WORK/repo" verify; }
ssl_loop() { for f in "$small"/*; do openssl dgst -sha256 "$f"; done; }
ssl_batch() { find "$small" -type f -print0 | xargs -0 openssl dgst -sha256; }

measure openssl_big secs openssl dgst -sha256 "$big"
measure sha256sum_big secs sha256sum "$big"
PREP=fresh_repo measure ingest_big secs ingest "$big"
measure verify_big secs verify
measure openssl_small_loop secs ssl_loop
measure openssl_small_batch secs ssl_batch
measure sha256sum_small_batch secs bash -c "find '$small' -type f -print0 | xargs -0 sha256sum"
PREP=fresh_repo measure ingest_small secs ingest "$small"
measure verify_small secs verify
rm -rf "$WORK/repo"

cpu=$(cpu_model)
{
  echo "## Repository ingest and verify"
  echo
  echo "Reproduce: \`bench/repo.sh $RUNS\`. Machine: $(nproc) cores, $cpu. Date: $(date -u +%Y-%m-%d)."
  echo "Medians of $RUNS runs, page cache warm. Ratio = baseline time / agent time (above 1.0 = agent faster)."
  echo
  row "data" "operation" "agent (s)" "baseline" "baseline (s)" "ratio"
  echo "|---|---|---|---|---|---|"
  row "1 GiB, 1 file" "ingest" "${T[ingest_big]}" "openssl dgst -sha256" "${T[openssl_big]}" "$(ratio "${T[openssl_big]}" "${T[ingest_big]}")"
  row "1 GiB, 1 file" "verify" "${T[verify_big]}" "openssl dgst -sha256" "${T[openssl_big]}" "$(ratio "${T[openssl_big]}" "${T[verify_big]}")"
  row "1 GiB, 1 file" "ingest" "${T[ingest_big]}" "sha256sum" "${T[sha256sum_big]}" "$(ratio "${T[sha256sum_big]}" "${T[ingest_big]}")"
  row "1 GiB, 10,000 files" "ingest" "${T[ingest_small]}" "sequential openssl loop" "${T[openssl_small_loop]}" "$(ratio "${T[openssl_small_loop]}" "${T[ingest_small]}")"
  row "1 GiB, 10,000 files" "verify" "${T[verify_small]}" "sequential openssl loop" "${T[openssl_small_loop]}" "$(ratio "${T[openssl_small_loop]}" "${T[verify_small]}")"
  row "1 GiB, 10,000 files" "ingest" "${T[ingest_small]}" "one openssl process, all files" "${T[openssl_small_batch]}" "$(ratio "${T[openssl_small_batch]}" "${T[ingest_small]}")"
  row "1 GiB, 10,000 files" "verify" "${T[verify_small]}" "one openssl process, all files" "${T[openssl_small_batch]}" "$(ratio "${T[openssl_small_batch]}" "${T[verify_small]}")"
  row "1 GiB, 10,000 files" "ingest" "${T[ingest_small]}" "sha256sum, all files" "${T[sha256sum_small_batch]}" "$(ratio "${T[sha256sum_small_batch]}" "${T[ingest_small]}")"
  echo
  echo "Targets: single file ingest >= 0.9x openssl; many files >= 1.6x the sequential openssl loop."
} >"$WORK/section.md"
bash bench/update-results.sh repo "$WORK/section.md"
cat "$WORK/section.md"
