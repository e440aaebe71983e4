#!/usr/bin/env bash
# Makes the toolchain pinned in rust-toolchain.toml usable without a download: when rustup does not
# know the pinned version by name but the installed stable toolchain *is* that version, register
# stable under the pinned name (rustup toolchain link). Machines here cannot download toolchains.
set -euo pipefail
cd "$(dirname "$0")/.."
want=$(sed -n 's/^channel *= *"\(.*\)"/\1/p' rust-toolchain.toml)
if rustup toolchain list | grep -q "^$want"; then exit 0; fi
have=$(rustup run stable rustc --version 2>/dev/null | awk '{print $2}')
if [ "$have" = "$want" ]; then
  rustup toolchain link "$want" "$(rustup run stable rustc --print sysroot)"
  echo "[toolchain] linked stable ($have) as $want" >&2
else
  echo "[toolchain] rust-toolchain.toml pins $want but stable is ${have:-absent}; install $want" >&2
  exit 1
fi
