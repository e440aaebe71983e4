#!/usr/bin/env bash
# Installs and starts every service the tests need (scripts/dev-services.sh), builds the offline
# test image, then runs all checks and tests: fmt, clippy (with every feature inside the test
# build, without the backends inside the fuzz build), rustdoc (inside the test build), unit +
# component tests, the integration tests against the real services (feature `integration`),
# `systemd-analyze verify` of the unit, `cargo deny` (deny.toml), the Python client's tests
# (through tests/python_client_it.rs), and a short run of every fuzz target
# (REFLOW_FUZZ_SECONDS per target, default 10; 0 only builds them). Work that does not depend on
# other steps runs beside them: the services start while the tests build, the fuzz build from
# the start, cargo-deny's install while the tests run. (scripts/lint.sh runs the same static
# checks in a build of their own, for use outside CI.)
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
sysroot=$(rustc --print sysroot)
# The static checks ride on the builds (scripts/ci-rustc.sh, the wrapper of both): they compile
# the crate anyway, where scripts/lint.sh checks every dependency again in a build of its own
# (about 250 s of CPU on 2 cores). clippy-driver compiles the crate as `cargo clippy` does;
# `CLIPPY_ARGS` is how cargo-clippy hands it its arguments (warnings as errors).
export CLIPPY_DRIVER="$sysroot/bin/clippy-driver" RUSTDOC="$sysroot/bin/rustdoc"
export CLIPPY_ARGS="-D__CLIPPY_HACKERY__warnings__CLIPPY_HACKERY__"
# The fuzz build (its own rustc flags and target directory) shares nothing with the other
# compiles; each target then runs for its seconds, still in the background, mostly while the
# tests wait on containers and brokers. (It needs neither cargo-fuzz nor nightly.) It is also
# clippy without the optional backends: the fuzz targets' dependency on the library has none,
# and the wrapper lints that library (and only it) there. The binary without the backends is
# not compiled in CI: src/main.rs holds no `cfg`, and its code is linted with every feature.
if grep -q 'cfg(' src/main.rs; then
  echo "src/main.rs has a cfg: CI lints the binary only with every feature (see scripts/test.sh)" >&2
  exit 1
fi
fuzz_log=$(mktemp)
fuzz_arg=$fuzz_secs
[ "$fuzz_secs" -gt 0 ] || fuzz_arg=build
background "$fuzz_log" ionice -c 3 env RUSTC_WRAPPER="$PWD/scripts/ci-rustc.sh" \
  REFLOW_LINT_CRATES=reflow_agent bash scripts/fuzz.sh "$fuzz_arg"
fuzz_pid=$bg_pid
# The services and the offline test image, while the tests build.
services_log=$(mktemp)
background "$services_log" bash -c 'bash scripts/dev-services.sh && bash scripts/test-image.sh'
services_pid=$bg_pid

step "fmt"
cargo fmt --check
# clippy with every feature and rustdoc run inside the test build: the wrapper compiles every
# target of the crate (library, unit tests, test suite, binary, examples) with clippy's lints,
# warnings as errors, and documents the library beside its compile. The dependencies are then
# built once, where a separate `cargo clippy` and `cargo doc` would check all of them again. The
# test run keeps the same environment, so it reuses this build.
export RUSTC_WORKSPACE_WRAPPER="$PWD/scripts/ci-rustc.sh" REFLOW_RUSTDOC=1
step "test build with clippy and rustdoc (unit, component, integration)"
if cargo nextest --version >/dev/null 2>&1; then
  cargo nextest run --all-features --no-run
else
  cargo test --all-features --no-run
fi
# cargo-deny, once per machine (scripts/cargo-deny.sh), built while the tests run: they leave
# about a fifth of the CPU idle (waiting on containers and brokers), where beside the test
# build it took a third of the machine from it (each background session gets an equal share).
# (Without the wrapper: cargo-deny would be the workspace it wraps.)
deny_log=$(mktemp)
background "$deny_log" ionice -c 3 env -u RUSTC_WORKSPACE_WRAPPER -u REFLOW_RUSTDOC \
  bash scripts/cargo-deny.sh --install-only
deny_install_pid=$bg_pid

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
step "capacity model (docs/capacity.md from bench/RESULTS.md)"
python3 bench/capacity.py --check
step "dependency policy (cargo deny, deny.toml)"
wait_background "$deny_install_pid" "$deny_log" "installing cargo-deny"
bash scripts/cargo-deny.sh
step "fuzz build with clippy without the backends (started at the beginning), then ${fuzz_secs}s per target"
wait_background "$fuzz_pid" "$fuzz_log" "the fuzz build or targets"
