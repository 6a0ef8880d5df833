#!/usr/bin/env bash
# Three replicas with key sync and -acme: only the elected leader orders
# from Pebble; the two workers never talk to the CA and receive the issued
# certificate and its key through key sync (verified attestation both
# ways).  All three present the same Pebble-issued certificate, curl
# verifies each with Pebble's root, cloister verify proves it on each, and
# Pebble saw one order.
set -euo pipefail
source "$(dirname "$0")/common.bash"
source "$(dirname "$0")/sync/sync_common.bash"
source "$(dirname "$0")/acme/pebble.bash"
pebble_available

start_sims 1 2 3
pebble_tls
acme_flags() { # the same -acme settings on every replica
    echo -fqdn "$ACME_FQDN" -acme --acme-directory "https://localhost:$1/dir" --acme-ca-file "$work/pebble-ca.pem" \
        --acme-backoff 300ms --acme-max-backoff 1s
}
ca_port=$(free_port)
# shellcheck disable=SC2046
sync_enclave leader sim1 self $(acme_flags "$ca_port")
wait_for_log leader 'event=sync_role role=leader' 400
lsync=$(port_of leader sync)
# shellcheck disable=SC2046
sync_enclave worker1 sim2 "$lsync" $(acme_flags "$ca_port")
# shellcheck disable=SC2046
sync_enclave worker2 sim3 "$lsync" $(acme_flags "$ca_port")
for w in worker1 worker2; do
    wait_for_log "$w" 'event=sync_role role=worker' 400
    wait_for_log "$w" 'event=sync_keys_installed' 400
done

# Pebble validates tls-alpn-01 on the leader's public listener
PEBBLE_PORT=$ca_port pebble_prepare "$(port_of leader public)" "$(free_port)"
pebble_run
wait_for_log leader 'event=acme_certificate origin=acme' 600
issued=$(sed -n 's/.*event=acme_certificate origin=acme.*certificate_sha256=\([0-9a-f]*\).*/\1/p' "$work/leader.log")
for w in worker1 worker2; do
    for _ in $(seq 1 400); do
        grep -q "event=tls_identity origin=key-sync .*certificate_sha256=$issued" "$work/$w.log" && break
        sleep 0.05
    done
    grep -q "event=tls_identity origin=key-sync .*certificate_sha256=$issued" "$work/$w.log" ||
        fail "$w did not receive the issued certificate through key sync"
    grep -q 'event=acme_order' "$work/$w.log" && fail "$w ordered from the CA"
done
pass "the leader ordered $issued; both workers received it through key sync and never ordered"

pebble_root "$work/pebble-root.pem"
for name in leader worker1 worker2; do
    port=$(port_of "$name" public)
    sha=$(openssl s_client -connect "127.0.0.1:$port" -servername "$ACME_FQDN" </dev/null 2>/dev/null |
        openssl x509 -outform DER | sha256sum | cut -c1-64)
    [ "$sha" = "$issued" ] || fail "$name presents $sha, not $issued"
    curl -sf --cacert "$work/pebble-root.pem" --resolve "$ACME_FQDN:$port:127.0.0.1" \
        "https://$ACME_FQDN:$port/enclave" -o /dev/null || fail "curl with Pebble's root refused $name"
    proven=$(proven_sha "$name")
    [ "$proven" = "$issued" ] || fail "cloister verify proved $proven on $name"
done
[ "$(pebble_orders)" = 1 ] || fail "Pebble saw $(pebble_orders) orders"
pass "all three present the Pebble-issued certificate (curl verifies, cloister verify proves each); Pebble saw one order"

for n in leader worker1 worker2; do stop "$n" || true; done
no_sanitizer_reports
