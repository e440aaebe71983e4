#!/usr/bin/env bash
# update-results.sh NAME FILE: replace the section NAME of bench/RESULTS.md (between
# <!-- NAME:begin --> and <!-- NAME:end -->) with the contents of FILE, appending it if absent.
set -euo pipefail
name=$1 file=$2
results=$(dirname "$0")/RESULTS.md
[ -f "$results" ] || printf '# Benchmark results\n\nEach section is written by the script it names; rerun that script to refresh it.\n' >"$results"
python3 - "$results" "$name" "$file" <<'PY'
import sys, re
results, name, file = sys.argv[1:]
text = open(results).read()
section = open(file).read().rstrip("\n")
begin, end = f"<!-- {name}:begin -->", f"<!-- {name}:end -->"
block = f"{begin}\n{section}\n{end}"
if begin in text and end in text:
    text = re.sub(re.escape(begin) + ".*?" + re.escape(end), lambda _: block, text, flags=re.S)
else:
    text = text.rstrip("\n") + "\n\n" + block + "\n"
open(results, "w").write(text)
PY
