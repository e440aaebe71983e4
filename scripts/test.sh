#!/usr/bin/env bash
# Installs and starts every service the tests need (scripts/dev-services.sh), builds the offline
# test image, then runs all checks and tests: fmt, clippy (with every feature inside the test
# build, without the backends in scripts/lint.sh), rustdoc (scripts/lint.sh), unit + component
# tests, the integration tests against the real services (feature `integration`),
# `systemd-analyze verify` of the unit, `cargo deny` (deny.toml), the Python client's tests
# (through tests/python_client_it.rs), and a short run of every fuzz target
# (REFLOW_FUZZ_SECONDS per target, default 10; 0 skips it). Work that does not depend on other
# steps runs beside them: the services start while the tests build, clippy and rustdoc run
# while the tests do, the fuzz build and cargo-deny's install from the start.
#
# This is what .ci/run calls. It works on a fresh Debian machine as root with nothing running.
set -euo pipefail
cd "$(dirname "$0")/.."

# Each step's wall time, printed last (bench/RESULTS.md, "Build, demo and CI time", reads it).
started=$SECONDS step_at=$SECONDS step_name="" times=()
end_step() {
  [ -n "$step_name" ] && times+=("$(printf '%5d s  %s' $((SECONDS - step_at)) "$step_name")")
  step_name=""
}
step() { end_step; step_name=$*; step_at=$SECONDS; printf '\n==> %s\n' "$*"; }
# Work that shares nothing with the steps in between runs in the background, in a session of
# its own: where the kernel schedules by autogroup (one per session), it then gets an equal
# share of the CPU beside the foreground, and the idle time the other steps leave (services
# starting, tests waiting on containers and brokers). (At the lowest CPU priority, measured
# 2026-12-02, it got almost nothing until the tests were over, and CI then waited about 11
# minutes more for the fuzz build and runs.) Compiles go at the lowest I/O priority:
# `background LOG ionice -c 3 COMMAND...`.
bg_pids=()
background() { # LOG COMMAND...: prints nothing; sets bg_pid
  local log=$1
  shift
  setsid "$@" >"$log" 2>&1 &
  bg_pid=$!
  bg_pids+=("$bg_pid")
}
wait_background() { # PID LOG WHAT: waits and shows its log (the tail on failure, then fails)
  local rc=0
  wait "$1" || rc=$?
  if [ "$rc" -ne 0 ]; then
    tail -n 60 "$2" >&2
    echo "$3 failed (exit $rc)" >&2
    exit 1
  fi
  cat "$2" >&2
  rm -f "$2"
}
on_exit() {
  local rc=$?
  # (An `if`: under `set -e` a failing kill, the job being over, would end this handler.)
  for pid in "${bg_pids[@]}"; do
    if kill -0 "$pid" 2>/dev/null; then kill -- "-$pid" 2>/dev/null || true; fi
  done
  end_step
  printf '\n==> time per step\n'
  printf '%s\n' "${times[@]}"
  printf '%5d s  total (exit %d)\n' $((SECONDS - started)) "$rc"
}
trap on_exit EXIT

step "toolchain"
bash scripts/toolchain.sh
fuzz_secs=${REFLOW_FUZZ_SECONDS:-10}
if [ "$fuzz_secs" -gt 0 ]; then
  # The fuzz build (its own rustc flags and target directory) shares nothing with the other
  # compiles; each target then runs for its seconds, still in the background, mostly while the
  # tests wait on containers and brokers. (It needs neither cargo-fuzz nor nightly.)
  fuzz_log=$(mktemp)
  background "$fuzz_log" ionice -c 3 bash scripts/fuzz.sh "$fuzz_secs"
  fuzz_pid=$bg_pid
fi
# cargo-deny, once per machine (scripts/cargo-deny.sh).
deny_log=$(mktemp)
background "$deny_log" ionice -c 3 bash scripts/cargo-deny.sh --install-only
deny_install_pid=$bg_pid
# The services and the offline test image, while the tests build.
services_log=$(mktemp)
background "$services_log" bash -c 'bash scripts/dev-services.sh && bash scripts/test-image.sh'
services_pid=$bg_pid

step "fmt"
cargo fmt --check
# clippy with every feature runs inside the test build: clippy-driver, the rustc that
# `cargo clippy` itself puts in as the wrapper of the workspace's crates, compiles every target
# of the crate (library, unit tests, test suite, binary, examples) with clippy's lints, warnings
# as errors. The dependencies are then built once, where a separate `cargo clippy` would check
# all of them again (about 170 s of CPU). `CLIPPY_ARGS` is how cargo-clippy hands clippy-driver
# its arguments. The test run keeps the same environment, so it reuses this build.
export RUSTC_WORKSPACE_WRAPPER
RUSTC_WORKSPACE_WRAPPER="$(rustc --print sysroot)/bin/clippy-driver"
export CLIPPY_ARGS="-D__CLIPPY_HACKERY__warnings__CLIPPY_HACKERY__"
step "test build with clippy (unit, component, integration)"
if cargo nextest --version >/dev/null 2>&1; then
  cargo nextest run --all-features --no-run
else
  cargo test --all-features --no-run
fi
# clippy without the optional backends and rustdoc (scripts/lint.sh, a target directory of
# their own) while the tests run: the tests spend most of their time waiting on containers and
# brokers. (Not under the clippy-driver wrapper: cargo clippy sets its own.)
lint_log=$(mktemp)
background "$lint_log" ionice -c 3 env -u RUSTC_WORKSPACE_WRAPPER -u CLIPPY_ARGS \
  LINT_CLIPPY_ALL_FEATURES=0 bash scripts/lint.sh
lint_pid=$bg_pid

step "services and test image (started with the test build)"
wait_background "$services_pid" "$services_log" "starting the services"
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
# The integration tests' executors (ids `it` + 10 hex digits) can leave exited containers: a
# test that ends as its exec completes stops the removal that follows the result. They are
# removed before and after the tests, so they do not pile up in the engine across runs (every
# container listing and `docker ps` costs more with each).
remove_test_containers() {
  docker ps -aq --filter 'name=^reflow-it[0-9a-f]{10}-' | xargs -r docker rm -f >/dev/null
}
remove_test_containers
export AGENT_IT_AMQP_URL=${AGENT_IT_AMQP_URL:-amqp://guest:guest@127.0.0.1:5672/reflow-it}
export AGENT_IT_AWS_ENDPOINT=${AGENT_IT_AWS_ENDPOINT:-http://127.0.0.1:5000}
export AGENT_IT_IMAGE=${AGENT_IT_IMAGE:-reflow-agent-test/busybox:1}
export AGENT_IT_TLS_CA=${AGENT_IT_TLS_CA:-/var/lib/reflow-agent-dev/tls/ca.pem}

step "python client (clients/python, built and installed with pip)"
python3 -m pip install -q --disable-pip-version-check "./clients/python[test]"

# (The crate has no doctests.)
step "tests (unit, component, integration)"
if cargo nextest --version >/dev/null 2>&1; then
  cargo nextest run --all-features --no-fail-fast
else
  cargo test --all-features --no-fail-fast
fi
remove_test_containers
# After the tests: their build made the binary the unit's copy points at.
step "systemd unit and deploy files"
bash scripts/check-systemd.sh
bash scripts/check-deploy.sh
step "clippy without the backends, and rustdoc (scripts/lint.sh, started with the tests)"
wait_background "$lint_pid" "$lint_log" "clippy or rustdoc"
step "capacity model (docs/capacity.md from bench/RESULTS.md)"
python3 bench/capacity.py --check
step "dependency policy (cargo deny, deny.toml)"
wait_background "$deny_install_pid" "$deny_log" "installing cargo-deny"
bash scripts/cargo-deny.sh
if [ "$fuzz_secs" -gt 0 ]; then
  step "fuzz (started at the beginning: the build, then ${fuzz_secs}s per target)"
  wait_background "$fuzz_pid" "$fuzz_log" "the fuzz targets"
fi
