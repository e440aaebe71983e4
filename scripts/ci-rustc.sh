#!/usr/bin/env bash
# The rustc wrapper of scripts/test.sh's builds (cargo calls it as `ci-rustc.sh RUSTC ARGS...`),
# so the static checks ride on compiles CI makes anyway instead of checking every dependency
# again in a build of their own (scripts/lint.sh, about 250 s of CPU on 2 cores):
#
# - clippy: the crate is compiled by clippy-driver, as `cargo clippy` does (warnings as errors
#   through CLIPPY_ARGS). As the test build's RUSTC_WORKSPACE_WRAPPER that is every target
#   with every feature; as the RUSTC_WRAPPER of scripts/fuzz.sh's build, with
#   REFLOW_LINT_CRATES=reflow_agent (both set by scripts/test.sh), the library without the
#   optional backends, while every other crate goes to rustc unchanged.
# - rustdoc (REFLOW_RUSTDOC=1): beside the library's compile, rustdoc documents it with the same
#   features, cfgs, lint flags and dependencies' metadata, warnings as errors, into
#   target/doc: what `RUSTDOCFLAGS=-Dwarnings cargo doc --no-deps --lib` checks. Its messages
#   come after the compile's; either failing fails the compile.
#
# Needs CLIPPY_DRIVER (the toolchain's clippy-driver) and, with REFLOW_RUSTDOC=1, RUSTDOC.
set -euo pipefail
rustc=$1
shift
crate="" types=() test=0 out="" prev=""
for a in "$@"; do
  case $prev in
    --crate-name) crate=$a ;;
    --crate-type) types+=("$a") ;;
    --out-dir) out=$a ;;
  esac
  [ "$a" = --test ] && test=1
  prev=$a
done

if [ -n "${REFLOW_LINT_CRATES:-}" ] && [[ " $REFLOW_LINT_CRATES " != *" $crate "* ]]; then
  exec "$rustc" "$@"
fi
if [ "${REFLOW_RUSTDOC:-0}" != 1 ] || [ "$crate" != reflow_agent ] || [ "$test" = 1 ] ||
  [ "${types[*]}" != lib ]; then
  exec "$CLIPPY_DRIVER" "$rustc" "$@"
fi

# The library: rustdoc's arguments are the compile's, less what only a compile takes (what to
# emit and where, codegen options, the JSON diagnostics cargo reads from the compile).
doc=() prev=""
for a in "$@"; do
  case $prev in
    --crate-name | --crate-type | --cfg | --check-cfg | -L | --extern | --cap-lints)
      doc+=("$prev" "$a") ;;
    -C) [[ $a == metadata=* ]] && doc+=(-C "$a") ;;
  esac
  case $a in
    --edition=* | --forbid=* | --deny=* | --warn=* | --allow=* | --cap-lints=*) doc+=("$a") ;;
    *.rs) [ "$prev" != --extern ] && doc+=("$a") ;;
  esac
  prev=$a
done
target=$(dirname "$(dirname "${out:?the compile names no --out-dir}")")
log=$(mktemp)
"$RUSTDOC" "${doc[@]}" -o "$target/doc" -D warnings >"$log" 2>&1 &
doc_pid=$!
rc=0
"$CLIPPY_DRIVER" "$rustc" "$@" || rc=$?
doc_rc=0
wait "$doc_pid" || doc_rc=$?
if [ "$doc_rc" -ne 0 ]; then
  cat "$log" >&2
  echo "rustdoc of the library failed (exit $doc_rc)" >&2
  rc=1
fi
rm -f "$log"
exit "$rc"
