#!/usr/bin/env bash
# Runs every fuzz target (the `[[bin]]`s of fuzz/Cargo.toml, libFuzzer through libfuzzer-sys) for
# a short time (default 20 s each). A crash fails the script and leaves the input under
# fuzz/artifacts/TARGET/.
#
# It builds the targets as `cargo fuzz build --dev -s none` does, with the same rustc flags
# (SanitizerCoverage: inline 8-bit counters, PC table, traced compares and stack depth; `--cfg
# fuzzing`; debug assertions) into the same directory (fuzz/target/HOST/debug), but without
# cargo-fuzz itself: it needs no nightly toolchain and no install (cargo-fuzz's was about 78 s of
# CPU on a fresh machine). `cargo fuzz run --dev -s none TARGET` reuses this build.
#
# The targets are built unoptimized (`--dev`: coverage, debug assertions and overflow checks):
# the optimized build was about 860 s of CPU on a 2-core machine against about 330 s, and a run
# of seconds needs coverage feedback more than speed. They are built without AddressSanitizer:
# the crate forbids unsafe code, so ASan could only find memory errors in the unsafe code of
# dependencies, which their own fuzzing covers; panics, overflows, hangs and runaway memory are
# caught without it. That is 226 s of CPU against 309 s with ASan, and about 4 times the
# executions per second (bench/RESULTS.md, "Build, demo and CI time").
#
#   scripts/fuzz.sh [SECONDS_PER_TARGET]
#   scripts/fuzz.sh build      (only builds every target)
set -euo pipefail
cd "$(dirname "$0")/../fuzz"
secs=${1:-20}
host=$(rustc -vV | sed -n 's/^host: //p')
# cargo-fuzz 0.13's flags for `--dev -s none` on Linux (src/project.rs, `cargo`).
export RUSTFLAGS="-Cpasses=sancov-module -Cllvm-args=-sanitizer-coverage-level=4 \
-Cllvm-args=-sanitizer-coverage-inline-8bit-counters -Cllvm-args=-sanitizer-coverage-pc-table \
-Cllvm-args=-sanitizer-coverage-trace-compares --cfg fuzzing \
-Cllvm-args=-simplifycfg-branch-fold-threshold=0 -Cllvm-args=-sanitizer-coverage-stack-depth \
-Cdebug-assertions${RUSTFLAGS:+ $RUSTFLAGS}"
# `--target` keeps these flags off build scripts and proc macros, as cargo-fuzz does.
cargo build --quiet --bins --target "$host"
[ "$secs" = build ] && exit 0
targets=$(sed -n '/^\[\[bin\]\]/,/^name/s/^name *= *"\(.*\)"/\1/p' Cargo.toml)
[ -n "$targets" ] || { echo "[fuzz] no [[bin]] targets in fuzz/Cargo.toml" >&2; exit 1; }
for t in $targets; do
  echo "[fuzz] $t for ${secs}s" >&2
  mkdir -p "corpus/$t" "artifacts/$t"
  log=$(mktemp)
  if ! "target/$host/debug/$t" -artifact_prefix="artifacts/$t/" "corpus/$t" \
    -max_total_time="$secs" -max_len=65536 -print_final_stats=1 >"$log" 2>&1; then
    tail -n 60 "$log" >&2
    echo "[fuzz] $t failed; the crashing input is under fuzz/artifacts/$t" >&2
    exit 1
  fi
  grep -E '^Done|stat::number_of_executed_units' "$log" >&2 || true
  rm -f "$log"
done
