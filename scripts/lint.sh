#!/usr/bin/env bash
# The static checks, warnings as errors: clippy on every target with every feature, rustdoc, and
# clippy without the optional backends on the library and binary (what scripts/demo.sh builds).
#
# They build into a target directory of their own (LINT_TARGET_DIR, default target/lint), which
# never waits on the test build's lock. scripts/test.sh (CI) does not call it: its test and fuzz
# builds run the same checks on compiles they make anyway (scripts/ci-rustc.sh).
#
# The order saves CPU: rustdoc needs every dependency checked with every feature, and clippy
# without the backends then re-checks only the crates whose features differ without them
# (196 s of CPU, then 36 s, measured cold on 2 cores; the other way round, clippy first on every
# target, it was about 290 s). The no-backend clippy checks the library and the binary: every
# `cfg(not(feature = ...))` is there, and the tests and examples are linted with every feature.
set -euo pipefail
cd "$(dirname "$0")/.."
export CARGO_TARGET_DIR=${LINT_TARGET_DIR:-target/lint}
cargo clippy --all-targets --all-features -- -D warnings
# The binary shares the library's name, so cargo documents the library alone, as it would by
# default.
RUSTDOCFLAGS=-Dwarnings cargo doc --no-deps --all-features --lib --quiet
cargo clippy --lib --bins --no-default-features -- -D warnings
