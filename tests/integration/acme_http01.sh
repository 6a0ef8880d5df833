#!/usr/bin/env bash
# cloister enclave -acme --acme-challenge http-01 against Pebble: the enclave
# answers /.well-known/acme-challenge/TOKEN on its plain challenge listener
# (where the host forwards port 80), nothing else there, and serves the
# issued chain, which curl verifies with Pebble's root.  Pebble is set to
# refuse half of the good nonces (PEBBLE_WFE_NONCEREJECT=50): the client
# retries each badNonce and the order still goes through.
set -euo pipefail
source "$(dirname "$0")/common.bash"
source "$(dirname "$0")/acme/pebble.bash"
pebble_available

start_sim
tls=$(free_port)
http=$(free_port)
metrics=$(free_port)
PEBBLE_WFE_NONCEREJECT=50 start_pebble "$tls" "$http"
start_enclave enclave -fqdn "$ACME_FQDN" --listen "tcp:127.0.0.1:$tls" -intport "$(free_port)" \
    --prometheus-listen "tcp:127.0.0.1:$metrics" -acme --acme-directory "$pebble_directory" \
    --acme-ca-file "$work/pebble-ca.pem" --acme-challenge http-01 --acme-http-listen "tcp:127.0.0.1:$http" \
    --acme-backoff 300ms
# a renewal may still fail when Pebble rejects one request's nonce 6 times running (1 in 64):
# that failure is bounded and retried after --acme-backoff, so wait for the certificate itself
wait_for_log enclave 'event=acme_certificate origin=acme' 600
grep -q 'event=acme_certificate origin=acme' "$work/enclave.log" ||
    fail "no certificate: $(grep acme_renewal_failed "$work/enclave.log" | head -1)"
grep -q 'event=acme_challenge type=http-01' "$work/enclave.log" || fail "no http-01 challenge was answered"
grep -q 'authz .* set VALID' "$work/pebble.log" || fail "Pebble did not validate the authorization"
issued=$(sed -n 's/.*event=acme_certificate origin=acme.*certificate_sha256=\([0-9a-f]*\).*/\1/p' "$work/enclave.log")
pass "Pebble validated http-01 on the enclave's challenge listener and issued $issued"

curl -sf "http://127.0.0.1:$metrics/metrics" >"$work/metrics.txt"
grep -Eq '^cloister_acme_bad_nonce_retries_total [1-9]' "$work/metrics.txt" ||
    fail "Pebble rejected no nonce? $(grep -c badNonce "$work/pebble.log") / $(grep acme_bad "$work/metrics.txt")"
pass "with half the nonces refused, badNonce was retried ($(sed -n 's/^cloister_acme_bad_nonce_retries_total //p' "$work/metrics.txt") times) and the order went through"

pebble_root "$work/pebble-root.pem"
curl -sf --cacert "$work/pebble-root.pem" --resolve "$ACME_FQDN:$tls:127.0.0.1" "https://$ACME_FQDN:$tls/enclave" \
    | has "$issued" || fail "curl with Pebble's root did not verify the enclave's chain"
pass "curl --cacert Pebble's root (no -k) verifies the chain"

# the challenge listener answers challenge paths only, and no stale token
code=$(curl -s -o /dev/null -w '%{http_code}' "http://127.0.0.1:$http/.well-known/acme-challenge/AAAAAAAAAAAAAAAAAAAAAAAAAAAA")
[ "$code" = 404 ] || fail "an unknown token got $code"
code=$(curl -s -o /dev/null -w '%{http_code}' "http://127.0.0.1:$http/enclave/attestation?nonce=00")
[ "$code" = 404 ] || fail "the challenge listener served another path ($code)"
pass "the plain challenge listener serves nothing but live challenge tokens (404 otherwise)"

stop enclave || true
no_sanitizer_reports
