#!/usr/bin/env bash
# --acme-store: a restarted enclave serves the same Pebble-issued
# certificate without ordering again (Pebble's log counts the orders), from
# a record on the parent's files whose private keys are only KMS ciphertexts
# that kms-local opens for this enclave's PCR0 alone.  The parent's moves:
# it edits the stored chain (the record no longer opens: the enclave says so
# and orders anew, serving what it orders), or withholds the record (the
# enclave orders again).
set -euo pipefail
source "$(dirname "$0")/common.bash"
source "$(dirname "$0")/acme/pebble.bash"
source "$(dirname "$0")/acme/store_env.bash"
pebble_available

start_store_env
tls=$(free_port)
start_pebble "$tls" "$(free_port)"
enclave_args=(-fqdn "$ACME_FQDN" --nsm "unix:$work/nsm.sock" --listen "tcp:127.0.0.1:$tls" -intport "$(free_port)"
    -acme --acme-directory "$pebble_directory" --acme-ca-file "$work/pebble-ca.pem" --acme-backoff 500ms
    "${ACME_STORE_FLAGS[@]}")
served() {
    openssl s_client -connect "127.0.0.1:$tls" -servername "$ACME_FQDN" </dev/null 2>/dev/null |
        openssl x509 -outform DER | sha256sum | cut -c1-64
}

spawn enclave1 "$CLOISTER" enclave "${enclave_args[@]}"
wait_for_log enclave1 'event=acme_certificate origin=acme|event=acme_renewal_failed' 600
grep -q 'event=acme_certificate origin=acme' "$work/enclave1.log" ||
    fail "no certificate: $(grep acme_renewal_failed "$work/enclave1.log" | head -1)"
first=$(sed -n 's/.*event=acme_certificate origin=acme.*certificate_sha256=\([0-9a-f]*\).*/\1/p' "$work/enclave1.log")
grep -q 'acme_store_failed' "$work/enclave1.log" && fail "the record was not stored: $(grep acme_store_failed "$work/enclave1.log")"
! grep -rl 'PRIVATE KEY' "$work/acme-files" || fail "a private key in the parent's files"
stop enclave1 || true
[ "$(pebble_orders)" = 1 ] || fail "Pebble saw $(pebble_orders) orders"
pass "first start: ordered $first and stored it; the parent's files hold no private key"

spawn enclave2 "$CLOISTER" enclave "${enclave_args[@]}"
wait_for_log enclave2 'event=listening listener=public' 400
grep -q "event=acme_certificate origin=store .*certificate_sha256=$first" "$work/enclave2.log" ||
    fail "the restart did not take the stored certificate: $(grep -E 'acme_(store|cert)' "$work/enclave2.log")"
[ "$(served)" = "$first" ] || fail "the restarted enclave serves $(served), not $first"
pebble_root "$work/pebble-root.pem"
curl -sf --cacert "$work/pebble-root.pem" --resolve "$ACME_FQDN:$tls:127.0.0.1" "https://$ACME_FQDN:$tls/enclave" \
    -o /dev/null || fail "curl with Pebble's root refused the restored chain"
"$CLOISTER" verify "https://127.0.0.1:$tls" --root "$work/state/root.pem" >"$work/verify.txt" 2>&1 &&
    grep -q "certificate *$first" "$work/verify.txt" || fail "cloister verify: $(cat "$work/verify.txt")"
[ "$(pebble_orders)" = 1 ] || fail "the restart ordered again ($(pebble_orders) orders)"
stop enclave2 || true
pass "restart: the same certificate from the store before the public listener opened, verified, no new order"

# ---- the parent edits the stored chain: the record does not open -----------------------
python3 - "$work/acme-files" <<'PY'
import os, sys
d = sys.argv[1]
for root, _, files in os.walk(d):
    for f in files:
        p = os.path.join(root, f)
        data = open(p, "rb").read()
        if b"BEGIN CERTIFICATE" in data:
            # swap two certificate characters deep inside the leaf's PEM
            i = data.index(b"BEGIN CERTIFICATE") + 200
            data = data[:i] + (b"A" if data[i:i+1] != b"A" else b"B") + data[i+1:]
            open(p, "wb").write(data)
PY
spawn enclave3 "$CLOISTER" enclave "${enclave_args[@]}"
wait_for_log enclave3 'event=acme_certificate origin=acme|event=acme_renewal_failed' 600
grep -q 'event=acme_store_unusable' "$work/enclave3.log" ||
    fail "an edited record was not refused: $(grep -E 'acme_' "$work/enclave3.log" | head -3)"
grep -q 'event=acme_certificate origin=store' "$work/enclave3.log" && fail "the edited record was served"
grep -q 'event=acme_certificate origin=acme' "$work/enclave3.log" || fail "no new order after the refused record"
[ "$(pebble_orders)" = 2 ] || fail "expected a second order, Pebble saw $(pebble_orders)"
stop enclave3 || true
pass "an edited record is refused (acme_store_unusable: $(sed -n 's/.*event=acme_store_unusable.*error=\(.\{0,80\}\).*/\1/p' "$work/enclave3.log" | head -1)...) and the enclave orders anew"

no_sanitizer_reports
