#!/usr/bin/env bash
# Verifies systemd/reflow-agent.service with `systemd-analyze verify` (installing systemd's tools
# when missing). The unit's ExecStart names the installed path, so a copy pointing at the built
# binary is verified.
set -euo pipefail
cd "$(dirname "$0")/.."
command -v systemd-analyze >/dev/null 2>&1 || { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq systemd >/dev/null; }
bin=${1:-$PWD/target/debug/reflow-agent}
[ -x "$bin" ] || cargo build --quiet --bin reflow-agent
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
sed "s|/usr/local/bin/reflow-agent|$bin|" systemd/reflow-agent.service >"$tmp/reflow-agent.service"
# docker.service may not exist on a CI machine; verify checks the unit itself, not its peers.
out=$(SYSTEMD_LOG_LEVEL=warning systemd-analyze verify --man=no "$tmp/reflow-agent.service" 2>&1 || true)
bad=$(printf '%s\n' "$out" | grep -v -e 'docker.service' -e '^$' || true)
if [ -n "$bad" ]; then
  printf 'systemd-analyze verify:\n%s\n' "$out" >&2
  exit 1
fi
echo "systemd/reflow-agent.service: verified"
