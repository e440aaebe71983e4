#!/usr/bin/env bash
# Checks the dependency policy in deny.toml (bans, licenses, sources: no advisory download),
# installing cargo-deny from crates.io first when this machine lacks it.
#
#   scripts/cargo-deny.sh                 install when missing, then check
#   scripts/cargo-deny.sh --install-only  install when missing (scripts/test.sh runs this in the
#                                         background while the other steps run)
#
# cargo-deny's own release profile is fat LTO in one codegen unit: over 5 minutes of CPU on a
# 2-core machine. A policy check reads `cargo metadata` and runs in about a second at any
# optimization level (2.1 s unoptimized, 1.2 s at opt-level 1), so it is built at opt-level 0
# without LTO or debug info: 69 s on 2 cores (115 s of CPU), against 123 s at opt-level 1.
set -euo pipefail
cd "$(dirname "$0")/.."
if ! cargo deny --version 2>/dev/null | grep -q '^cargo-deny 0\.20\.'; then
  echo "[cargo-deny] installing cargo-deny 0.20" >&2
  CARGO_PROFILE_RELEASE_LTO=false CARGO_PROFILE_RELEASE_CODEGEN_UNITS=16 \
    CARGO_PROFILE_RELEASE_OPT_LEVEL=0 CARGO_PROFILE_RELEASE_DEBUG=false \
    cargo install --locked --quiet cargo-deny --version '^0.20'
fi
[ "${1:-}" = --install-only ] && exit 0
cargo deny --log-level error check bans licenses sources
