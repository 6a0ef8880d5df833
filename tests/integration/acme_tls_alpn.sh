#!/usr/bin/env bash
# cloister enclave -acme against Debian's Pebble over tls-alpn-01: while the
# CA is unreachable the enclave keeps serving its generated certificate and
# retries; once Pebble is up it orders, proves the name on its own TLS
# listener (ALPN acme-tls/1), and serves the issued chain, which curl
# verifies with Pebble's root and no -k.  cloister verify proves the
# binding for a new connection, and a connection opened before the switch
# still gets documents that bind the certificate it was served.
set -euo pipefail
source "$(dirname "$0")/common.bash"
source "$(dirname "$0")/acme/pebble.bash"
pebble_available
/usr/bin/python3 -c 'import cbor2' 2>/dev/null || { echo "skip: python3-cbor2 is not installed (scripts/deps.sh)"; exit 77; }

start_sim
tls=$(free_port)
metrics=$(free_port)
pebble_prepare "$tls" "$(free_port)"
start_enclave enclave -fqdn "$ACME_FQDN" --listen "tcp:127.0.0.1:$tls" -intport "$(free_port)" \
    --prometheus-listen "tcp:127.0.0.1:$metrics" -acme --acme-directory "$pebble_directory" \
    --acme-ca-file "$work/pebble-ca.pem" --acme-email ops@example.org --acme-backoff 300ms --acme-max-backoff 1s
wait_for_log enclave 'event=listening listener=public'

# ---- no CA yet: a clear error, retries, the generated certificate stays ---------------
wait_for_log enclave 'event=acme_renewal_failed.*failures=2' 400
grep -q 'event=acme_renewal_failed.*localhost.*serving="the generated self-signed certificate"' "$work/enclave.log" ||
    fail "the failure does not say what failed and what is served: $(grep acme_renewal_failed "$work/enclave.log" | head -1)"
generated=$(sed -n 's/.*event=tls_identity origin=generated.*certificate_sha256=\([0-9a-f]*\).*/\1/p' "$work/enclave.log")
[ -n "$generated" ] || fail "no generated identity logged"
pass "the CA unreachable: acme_renewal_failed names it, retries with backoff, the generated certificate is served"

# a connection opened now keeps the generated certificate
spawn early /usr/bin/python3 "$SOURCE_DIR/tests/integration/acme/attest_conn.py" 127.0.0.1 "$tls" "$ACME_FQDN" \
    "$work/go" "$work/early.txt"
for _ in $(seq 1 200); do [ -s "$work/early.txt" ] && break; sleep 0.05; done
[ -s "$work/early.txt" ] || fail "the early connection got no document"

# ---- Pebble up: the order goes through over tls-alpn-01 ------------------------------
pebble_run
wait_for_log enclave 'event=acme_certificate origin=acme' 600
issued=$(sed -n 's/.*event=acme_certificate origin=acme.*certificate_sha256=\([0-9a-f]*\).*/\1/p' "$work/enclave.log")
grep -q 'event=acme_challenge type=tls-alpn-01' "$work/enclave.log" || fail "no tls-alpn-01 challenge was answered"
grep -q 'authz .* set VALID' "$work/pebble.log" || fail "Pebble did not validate the authorization"
pass "Pebble validated tls-alpn-01 on the enclave's own listener and issued $issued"

pebble_root "$work/pebble-root.pem"
curl -sf --cacert "$work/pebble-root.pem" --resolve "$ACME_FQDN:$tls:127.0.0.1" "https://$ACME_FQDN:$tls/enclave" \
    >"$work/curl.txt" || fail "curl with Pebble's root did not verify the enclave's chain"
grep -q "$issued" "$work/curl.txt" || fail "/enclave does not name the issued certificate: $(cat "$work/curl.txt")"
pass "curl --cacert Pebble's root (no -k) verifies the chain the enclave serves"

"$CLOISTER" verify "https://127.0.0.1:$tls" --root "$work/state/root.pem" >"$work/verify.txt" 2>&1 ||
    fail "cloister verify: $(cat "$work/verify.txt")"
grep -q '^verdict: PROVEN' "$work/verify.txt" && grep -q "certificate *$issued" "$work/verify.txt" ||
    fail "cloister verify did not prove the issued certificate: $(cat "$work/verify.txt")"
pass "cloister verify proves the binding of the Pebble-issued certificate"

# ---- the early connection still proves the certificate it was served -------------
touch "$work/go"
wait "${pids[early]}" || fail "the early connection's second request failed: $(cat "$work/early.log")"
unset "pids[early]"
[ "$(wc -l <"$work/early.txt")" = 2 ] || fail "expected two answers: $(cat "$work/early.txt")"
while read -r line; do
    peer=${line#peer=}; peer=${peer%% *}; bound=${line##*bound=}
    [ "$peer" = "$bound" ] || fail "a document on the early connection binds $bound, the connection has $peer"
    [ "$peer" = "$generated" ] || fail "the early connection was served $peer, not the generated $generated"
done <"$work/early.txt"
pass "after the switch, the connection opened before it still proves the generated certificate"

# acme-tls/1 outside a pending challenge: no validation certificate for anyone
set +e
openssl s_client -connect "127.0.0.1:$tls" -servername "$ACME_FQDN" -alpn acme-tls/1 </dev/null >"$work/alpn.out" 2>&1
st=$?
set -e
[ "$st" != 0 ] && ! grep -q 'BEGIN CERTIFICATE\|ALPN protocol: acme-tls/1' "$work/alpn.out" ||
    fail "a handshake offering acme-tls/1 with no challenge pending was answered: $(head -20 "$work/alpn.out")"
openssl s_client -connect "127.0.0.1:$tls" -servername "$ACME_FQDN" -alpn h2 </dev/null 2>/dev/null |
    grep -q 'ALPN protocol: h2' || fail "h2 is no longer negotiated with the ACME hook installed"
pass "acme-tls/1 with no challenge pending is refused; h2 is still negotiated"

curl -sf "http://127.0.0.1:$metrics/metrics" >"$work/metrics.txt"
grep -q '^cloister_acme_certificates_issued_total 1$' "$work/metrics.txt" || fail "metrics: $(grep acme "$work/metrics.txt")"
grep -q '^cloister_acme_last_renewal_failed 0$' "$work/metrics.txt" || fail "metrics: $(grep acme "$work/metrics.txt")"
grep -Eq '^cloister_acme_renewal_failures_total [1-9]' "$work/metrics.txt" || fail "failures not counted"
grep -Eq '^cloister_acme_tls_alpn_answers_total [1-9]' "$work/metrics.txt" || fail "tls-alpn answers not counted"
[ "$(pebble_orders)" = 1 ] || fail "Pebble saw $(pebble_orders) orders, expected 1"
pass "metrics count the issue, the earlier failures and the tls-alpn-01 answers; Pebble saw one order"

stop enclave || true
no_sanitizer_reports
