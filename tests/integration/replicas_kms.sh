#!/usr/bin/env bash
# Shared identity without a leader: three replicas behind HAProxy each open
# the one KMS-encrypted TLS key (--tls-key-ciphertext, a key policy naming
# this image's PCR0) and present the same certificate, with no key sync at
# all.  The attack: an enclave of another image (another PCR0) given the same
# ciphertext through the same KMS cannot open it and does not start; the same
# command with this image's NSM does (the control).
set -euo pipefail
source "$(dirname "$0")/common.bash"
source "$(dirname "$0")/replicas.bash"
need_fleet_tools

# --check is the user's view of the same claims
port=$(free_port)
"$CLOISTER" dev --replicas 3 --check --port "$port" >"$work/check.log" 2>&1 || fail "dev --replicas 3 --check: $(cat "$work/check.log")"
grep -q 'ok    9/9 connections through HAProxy proven; one certificate' "$work/check.log" || fail "--check: $(cat "$work/check.log")"
grep -q 'from 3 distinct enclaves' "$work/check.log" || fail "--check did not reach all 3 replicas"
pass "cloister dev --replicas 3 --check: passed"

start_fleet 3
declare -A modules=()
cert=""
for _ in $(seq 1 9); do
    "$CLOISTER" verify "https://127.0.0.1:$port" --root "$run/state/root.pem" >"$work/verify.out" 2>&1 ||
        fail "verify: $(cat "$work/verify.out")"
    c=$(awk '$1 == "certificate" { print $2 }' "$work/verify.out")
    m=$(awk '$1 == "module" { print $2 }' "$work/verify.out")
    [ -z "$cert" ] && cert=$c
    [ "$c" = "$cert" ] || fail "two certificates through the balancer: $cert and $c"
    modules[$m]=1
done
[ "${#modules[@]}" = 3 ] || fail "expected 3 enclaves behind the balancer, saw ${#modules[@]}"
expected=$(openssl x509 -in "$run/tls-cert.pem" -outform DER | sha256sum | awk '{ print $1 }')
[ "$cert" = "$expected" ] || fail "the certificate served ($cert) is not the shared one ($expected)"
for i in 1 2 3; do
    grep -q 'event=tls_key_opened' "$run/r$i/host.log" || fail "replica $i did not open the TLS key from KMS"
    if grep -qE '/enclave/(sync|leader|heartbeat)|event=sync' "$run/r$i/host.log"; then fail "replica $i has sync traffic"; fi
done
pass "3 replicas, 9 proven connections, one certificate (the shared one), each key opened from KMS, no sync traffic"

# ---- another image with the same ciphertext ----------------------------------------------------------
read -r imds_port kms_port < <(sed -n 's/.*imds-sim 127.0.0.1:\([0-9]*\), kms-local 127.0.0.1:\([0-9]*\),.*/\1 \2/p' "$work/dev.log")
[ -n "$kms_port" ] || fail "no kms-local port in dev's output"
# the same root (state directory) as the fleet: only the measurement differs
spawn evil-sim "$CLOISTER" nsm-sim --listen "unix:$work/evil.sock" --state "$run/state" --image /bin/sh --instance-id i-0e1111111111111111
wait_for_log evil-sim '^nsm-sim: listening on '
enclave_with() { # NSM, LOG: an enclave of the fleet's settings outside it, through the same KMS; sets pub
    local int
    pub=$(free_port)
    int=$(free_port)
    spawn "$2" "$CLOISTER" enclave -fqdn localhost --nsm "$1" --listen "tcp:127.0.0.1:$pub" -intport "$int" \
        -drain-grace 0 --cert "$run/tls-cert.pem" --tls-key-ciphertext "@$run/tls-key.ct" \
        -kms-imds "tcp:127.0.0.1:$imds_port" -kms-endpoint "https://localhost:$kms_port" \
        -kms-proxy "tcp:127.0.0.1:$kms_port" -kms-ca-file "$run/kms/ca.pem" -kms-region us-east-1
}
enclave_with "unix:$work/evil.sock" evil
for _ in $(seq 1 200); do kill -0 "${pids[evil]}" 2>/dev/null || break; sleep 0.1; done
status=0
wait "${pids[evil]}" || status=$?
unset 'pids[evil]'
[ "$status" != 0 ] || fail "an enclave of another image opened the shared TLS key"
grep -q 'AccessDeniedException' "$work/evil.log" || fail "refused, but not by KMS: $(tail -5 "$work/evil.log")"
enclave_with "unix:$run/r1/nsm.sock" control
wait_for_log control 'event=listening listener=public' 400
got=$("$CLOISTER" verify "https://127.0.0.1:$pub" --root "$run/state/root.pem" | awk '$1 == "certificate" { print $2 }')
[ "$got" = "$cert" ] || fail "the control enclave (this image) did not serve the shared certificate: $got"
pass "another image's enclave is refused the key by KMS (AccessDeniedException); this image's opens it (control)"
