#!/usr/bin/env bash
# `cloister dev --app wallet --check`: the wallet in the whole local picture (the enclave in its own
# network namespace, vsock through the stand-in, IMDS credentials, KMS and DynamoDB through the
# host's outbound proxies, dynalite): the client proves the enclave, creates a key and signs in both
# modes; nothing is left behind (dynalite included).
set -euo pipefail
source "$(dirname "$0")/common.bash"
node_modules_present || { echo "skip: tests/node/node_modules absent (scripts/node-deps.sh)"; exit 77; }
[ -x "$(dirname "$CLOISTER")/cloister-wallet" ] || fail "build cloister-wallet first"
run=$work/run
port=$(free_port)
rc=0
"$CLOISTER" dev --app wallet --check --port "$port" --run-dir "$run" >"$work/dev.log" 2>&1 || rc=$?
[ "$rc" = 0 ] || { cat "$work/dev.log" >&2; fail "dev --app wallet --check exited $rc"; }
for step in "wallet verify" "wallet create" "wallet sign" "wallet sign --ethereum"; do
    grep -q "^ok    $step\$" "$work/dev.log" || fail "no '$step' in the walk-through"
done
grep -q '"v": 2[78]' "$work/dev.log" || fail "no Ethereum signature shown"
grep -q 'PCR16 ' "$work/dev.log" || fail "cloister verify did not show the locked PCR16"
[ ! -e "$run" ] || fail "the run directory was left behind"
! pgrep -f "$run" >/dev/null || fail "processes of the run were left behind: $(pgrep -af "$run")"
pass "cloister dev --app wallet --check: proven, key created, both signatures, nothing left behind"
