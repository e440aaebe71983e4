#!/usr/bin/env bash
# Runs every fuzz target for a short time (default 20 s each) with cargo-fuzz on the nightly
# toolchain, installing cargo-fuzz from crates.io if it is missing. A crash fails the script and
# leaves the input under fuzz/artifacts/.
#
# The targets are built unoptimized (`--dev`, with coverage, debug assertions and overflow
# checks): the optimized build was about 860 s of CPU on a 2-core machine against about 330 s,
# and a run of seconds needs coverage feedback more than speed. They are built without
# AddressSanitizer (`-s none`): the crate forbids unsafe code, so ASan could only find memory
# errors in the unsafe code of dependencies, which their own fuzzing covers; panics, overflows,
# hangs and runaway memory are caught without it. That is 226 s of CPU against 309 s with ASan,
# and about 4 times the executions per second (bench/RESULTS.md, "Build, demo and CI time").
#
#   scripts/fuzz.sh [SECONDS_PER_TARGET]
#   scripts/fuzz.sh build      (only builds every target; scripts/test.sh runs this in the
#                               background while the rest of CI waits on services and tests)
set -euo pipefail
cd "$(dirname "$0")/../fuzz"
secs=${1:-20}
if ! cargo +nightly fuzz --version >/dev/null 2>&1; then
  echo "[fuzz] installing cargo-fuzz" >&2
  # It only drives cargo: built unoptimized, like scripts/cargo-deny.sh builds cargo-deny.
  CARGO_PROFILE_RELEASE_OPT_LEVEL=0 CARGO_PROFILE_RELEASE_DEBUG=false \
    cargo +nightly install cargo-fuzz --locked --quiet
fi
if [ "$secs" = build ]; then
  exec cargo +nightly fuzz build --dev -s none
fi
for t in $(cargo +nightly fuzz list); do
  echo "[fuzz] $t for ${secs}s" >&2
  mkdir -p "corpus/$t"
  log=$(mktemp)
  if ! cargo +nightly fuzz run --dev -s none "$t" "corpus/$t" -- -max_total_time="$secs" -max_len=65536 -print_final_stats=1 >"$log" 2>&1; then
    tail -n 60 "$log" >&2
    echo "[fuzz] $t failed; the crashing input is under fuzz/artifacts/$t" >&2
    exit 1
  fi
  grep -E '^Done|stat::number_of_executed_units' "$log" >&2 || true
  rm -f "$log"
done
