#!/usr/bin/env bash
# `make fuzz`: every libFuzzer harness for a bounded time each.
set -euo pipefail
build=${1:-build} seconds=${2:-60}
root=$(cd "$(dirname "$0")/.." && pwd)
shopt -s nullglob
status=0
for harness in "$build"/fuzz/fuzz_*; do
  name=$(basename "$harness"); short=${name#fuzz_}
  echo "== $name for ${seconds}s"
  "$root/scripts/fuzz-one.sh" "$harness" "$root/tests/fuzz/corpus/$short" "$seconds" || status=1
done
exit $status
