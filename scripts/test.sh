#!/usr/bin/env bash
# Installs and starts every service the tests need (scripts/dev-services.sh), builds the offline
# test image, then runs all checks and tests: fmt, clippy, docs, unit + component tests, the
# integration tests against the real services (feature `integration`), `systemd-analyze verify` of
# the unit, `cargo deny` (deny.toml), the Python client's tests (through
# tests/python_client_it.rs), and a short run of every
# fuzz target (REFLOW_FUZZ_SECONDS per target, default 10; 0 skips it).
#
# This is what .ci/run calls. It works on a fresh Debian machine as root with nothing running.
set -euo pipefail
cd "$(dirname "$0")/.."

step() { printf '\n==> %s\n' "$*"; }

step "toolchain"
bash scripts/toolchain.sh
step "services"
bash scripts/dev-services.sh
step "test image"
bash scripts/test-image.sh

# Endpoints for the integration tests (localhost defaults; override to point elsewhere).
if [ -z "${AGENT_IT_AMQP_URL:-}" ]; then
  # The AMQP tests get a vhost of their own on the local broker, emptied at every run. Each test
  # leaves its namespace's quorum queues behind; across runs they pile up into the hundreds, and
  # every broker start, and the test that restarts the broker, must recover them all.
  step "test vhost"
  rabbitmqctl -q delete_vhost reflow-it >/dev/null 2>&1 || true
  rabbitmqctl -q add_vhost reflow-it
  rabbitmqctl -q set_permissions -p reflow-it guest '.*' '.*' '.*'
fi
export AGENT_IT_AMQP_URL=${AGENT_IT_AMQP_URL:-amqp://guest:guest@127.0.0.1:5672/reflow-it}
export AGENT_IT_AWS_ENDPOINT=${AGENT_IT_AWS_ENDPOINT:-http://127.0.0.1:5000}
export AGENT_IT_IMAGE=${AGENT_IT_IMAGE:-reflow-agent-test/busybox:1}
export AGENT_IT_TLS_CA=${AGENT_IT_TLS_CA:-/var/lib/reflow-agent-dev/tls/ca.pem}

step "python client (clients/python, built and installed with pip)"
python3 -m pip install -q --disable-pip-version-check "./clients/python[test]"

step "fmt"
cargo fmt --check
step "dependency policy (cargo deny, deny.toml)"
# bans, licenses and sources need no advisory download. Installed once per machine.
if ! cargo deny --version 2>/dev/null | grep -q '^cargo-deny 0\.20\.'; then
  cargo install --locked --quiet cargo-deny --version '^0.20'
fi
cargo deny --log-level error check bans licenses sources
step "clippy"
cargo clippy --all-targets --all-features -- -D warnings
# The build without optional backends (what scripts/demo.sh and the fuzz targets compile).
cargo clippy --all-targets --no-default-features -- -D warnings
step "docs"
RUSTDOCFLAGS=-Dwarnings cargo doc --no-deps --all-features --quiet
fuzz_secs=${REFLOW_FUZZ_SECONDS:-10}
if [ "$fuzz_secs" -gt 0 ]; then
  step "fuzz (${fuzz_secs}s per target)"
  bash scripts/fuzz.sh "$fuzz_secs"
fi
step "systemd unit and deploy files"
bash scripts/check-systemd.sh
bash scripts/check-deploy.sh
step "capacity model (docs/capacity.md from bench/RESULTS.md)"
python3 bench/capacity.py --check
# Last, so the runner's summary closes the output. (The crate has no doctests.)
step "tests (unit, component, integration)"
if cargo nextest --version >/dev/null 2>&1; then
  cargo nextest run --all-features --no-fail-fast
else
  cargo test --all-features --no-fail-fast
fi
