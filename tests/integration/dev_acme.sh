#!/usr/bin/env bash
# cloister dev --acme --check: Pebble as the CA; the enclave (in its own
# network namespace when root) orders through the host's outbound proxy,
# Pebble validates tls-alpn-01 through the host's public forward (PROXY v2
# into the enclave), and the check passes only when the forward serves a
# chain that verifies with Pebble's root.  Nothing is left behind.
set -euo pipefail
source "$(dirname "$0")/common.bash"
source "$(dirname "$0")/acme/pebble.bash"
pebble_available
command -v python3 >/dev/null || { echo "skip: python3 is not installed (the example app)"; exit 77; }

port=$(free_port)
"$CLOISTER" dev --acme --check --port "$port" --run-dir "$work/run" >"$work/dev.out" 2>&1 ||
    fail "cloister dev --acme --check failed: $(tail -40 "$work/dev.out")"
grep -q 'the enclave serves a Pebble-issued certificate' "$work/dev.out" ||
    fail "no Pebble-issued certificate: $(grep -A1 'acme ' "$work/dev.out")"
grep -q '^cloister dev --check: passed' "$work/dev.out" || fail "the check did not pass"
[ ! -e "$work/run" ] || fail "the run directory was left behind"
! pgrep -f "$work/run" >/dev/null || fail "processes of the run were left behind: $(pgrep -af "$work/run")"
pass "dev --acme --check: a Pebble-issued certificate on the host's forward, the usual checks pass, nothing left"
