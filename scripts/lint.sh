#!/usr/bin/env bash
# The static checks, warnings as errors: clippy on every target with every feature and without
# the optional backends (what scripts/demo.sh builds), then rustdoc.
#
# They build into a target directory of their own (LINT_TARGET_DIR, default target/lint): a
# check build shares nothing with the test build, and with its own directory it never waits on
# the test build's lock, so scripts/test.sh runs it beside the tests.
#
# LINT_CLIPPY_ALL_FEATURES=0 skips clippy with every feature: scripts/test.sh runs that one inside
# its test build instead (clippy-driver as the workspace's rustc wrapper).
set -euo pipefail
cd "$(dirname "$0")/.."
export CARGO_TARGET_DIR=${LINT_TARGET_DIR:-target/lint}
if [ "${LINT_CLIPPY_ALL_FEATURES:-1}" != 0 ]; then
  cargo clippy --all-targets --all-features -- -D warnings
fi
cargo clippy --all-targets --no-default-features -- -D warnings
# With the examples, whose dev-dependencies give the dependencies the feature set clippy's check
# built them with: after clippy with every feature, rustdoc reuses its metadata instead of
# checking most of the dependency graph again (62 s of CPU against 24 s). The binary shares the
# library's name, so cargo documents the library alone, as it would by default.
RUSTDOCFLAGS=-Dwarnings cargo doc --no-deps --all-features --lib --examples --quiet
