#!/usr/bin/env bash
# Runs one libFuzzer harness for SECONDS from its seed corpus.  New inputs
# go to a scratch directory so that the committed corpus stays as it is.
set -euo pipefail
harness=$1 corpus=$2 seconds=${3:-5}
scratch=$(mktemp -d)
trap 'rm -rf "$scratch"' EXIT
"$harness" -max_total_time="$seconds" -timeout=10 -rss_limit_mb=2048 -print_final_stats=1 \
  -artifact_prefix="$scratch/" "$scratch" "$corpus" 2>"$scratch/log" || {
  tail -n 60 "$scratch/log" >&2
  for crash in "$scratch"/crash-* "$scratch"/leak-* "$scratch"/timeout-*; do
    [ -e "$crash" ] && { echo "reproducer: $(base64 -w0 "$crash")" >&2; }
  done
  exit 1
}
grep -E '^stat::number_of_executed_units' "$scratch/log" || true
