#!/usr/bin/env bash
# cloister dev --network tap --check: the whole local picture with the
# enclave on tap0 (cloister enclave -tap in its namespace)
# and the host's TAP bridge instead of the KMS proxy and the IMDS link: the
# enclave is proven through the host's forward to 192.168.127.2:443, the
# app reaches IMDS at 169.254.169.254 (DNAT to the gate), the enclave opens
# its KMS secret from kms-local at the gateway (--tap-loopback).  dev runs
# in a network namespace of its own (unshare), so its TAP device, nftables
# table and ip_forward never touch this machine's.
set -euo pipefail
source "$(dirname "$0")/common.bash"
[ "$(id -u)" = 0 ] || { echo "skip: needs root (network namespaces, TAP devices)"; exit 77; }
command -v nft >/dev/null || { echo "skip: nft is not installed (scripts/deps.sh installs nftables)"; exit 77; }
unshare --net true 2>/dev/null || { echo "skip: cannot create network namespaces"; exit 77; }
"$CLOISTER" tap --help >/dev/null 2>&1 || { echo "skip: this build has no cloister tap"; exit 77; }

port=$(free_port)
spawn dev unshare --net sh -c 'ip link set lo up && exec "$0" dev --network tap --check --port "$1" --run-dir "$2"' \
    "$CLOISTER" "$port" "$work/run"
status=0
wait "${pids[dev]}" || status=$?
unset "pids[dev]"
[ "$status" = 0 ] || fail "cloister dev --network tap --check exited $status: $(grep -v '^ts=' "$work/dev.log" | tail -20)"
for line in '^verdict: PROVEN' '^ok +GET /region +200' '^ok +GET /secret +200' '^ok +Decrypt under a key bound to another PCR0' \
    'interfaces: lo tap0' 'TAP bridge vsock:4294967295:1024'; do
    grep -qE "$line" "$work/dev.log" || fail "dev's output lacks /$line/"
done
[ ! -e "$work/run" ] || fail "dev left its run directory behind"
pass "cloister dev --network tap --check: proven over tap0, IMDS at 169.254.169.254 through the gate, KMS at the gateway"
