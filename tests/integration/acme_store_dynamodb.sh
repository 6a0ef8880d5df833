#!/usr/bin/env bash
# --acme-store dynamodb:TABLE: the record in DynamoDB (dynalite over TLS,
# through the host's outbound proxy, IMDS credentials as for KMS), its keys
# KMS ciphertexts only kms-local opens for this enclave's PCR0; a restarted
# enclave serves the same Pebble-issued certificate and Pebble saw one order.
set -euo pipefail
source "$(dirname "$0")/common.bash"
node_modules_present || { echo "skip: tests/node/node_modules is absent (run scripts/node-deps.sh)"; exit 77; }
source "$(dirname "$0")/acme/pebble.bash"
pebble_available
source "$(dirname "$0")/dynamodb/setup.bash"

ddb create-table --table acme-store >/dev/null || fail "create-table acme-store"
tls=$(free_port)
start_pebble "$tls" "$(free_port)"
args=(-fqdn "$ACME_FQDN" --nsm "unix:$work/nsm.sock" --listen "tcp:127.0.0.1:$tls" -intport "$(free_port)"
    -acme --acme-directory "$pebble_directory" --acme-ca-file "$work/pebble-ca.pem" --acme-backoff 500ms
    --kms-region "$REGION" --kms-endpoint "https://kms.$REGION.amazonaws.com" --kms-proxy "$KMSP"
    --kms-ca-file "$work/ca.pem" --kms-imds "$IMDS" --acme-store dynamodb:acme-store --acme-store-proxy "$DDBP"
    --acme-store-ca-file "$work/ca.pem" --acme-kms-key-id alias/acme)

spawn enclave1 "$CLOISTER" enclave "${args[@]}"
wait_for_log enclave1 'event=acme_certificate origin=acme|event=acme_renewal_failed' 600
grep -q 'event=acme_certificate origin=acme' "$work/enclave1.log" ||
    fail "no certificate: $(grep acme_renewal_failed "$work/enclave1.log" | head -1)"
grep -q 'acme_store_failed' "$work/enclave1.log" && fail "not stored: $(grep acme_store_failed "$work/enclave1.log")"
first=$(sed -n 's/.*event=acme_certificate origin=acme.*certificate_sha256=\([0-9a-f]*\).*/\1/p' "$work/enclave1.log")
stop enclave1 || true
ddb get --table acme-store --key "{\"pk\": {\"S\": \"record:$ACME_FQDN\"}}" >"$work/item.json" ||
    fail "no item record:$ACME_FQDN in the table"
grep -q 'BEGIN CERTIFICATE' "$work/item.json" || fail "the item holds no chain: $(head -c 300 "$work/item.json")"
! grep -q 'PRIVATE KEY' "$work/item.json" || fail "a private key in the DynamoDB item"
pass "first start: ordered $first and stored it in DynamoDB (dynalite); no private key in the table"

spawn enclave2 "$CLOISTER" enclave "${args[@]}"
wait_for_log enclave2 'event=listening listener=public' 400
grep -q "event=acme_certificate origin=store .*certificate_sha256=$first" "$work/enclave2.log" ||
    fail "the restart did not take the stored certificate: $(grep -E 'acme_(store|cert)' "$work/enclave2.log")"
[ "$(pebble_orders)" = 1 ] || fail "the restart ordered again ($(pebble_orders) orders)"
stop enclave2 || true
no_sanitizer_reports
pass "restart: the same certificate from dynamodb:acme-store, no new order"
