#!/usr/bin/env bash
# Renewal before expiry with no failed request: Pebble issues certificates
# valid for 30 s (certificateValidityPeriod, which Debian's Pebble 2.4 reads
# from its configuration), so the enclave renews at two thirds of that
# (20 s, +/- 1.5 s of jitter) while a bounded load of new connections, each
# verifying the chain with Pebble's root, runs across the switch.  Every
# request succeeds, the renewed certificate differs from the first, arrives
# before the first expires, and cloister verify proves it on a new connection.
set -euo pipefail
source "$(dirname "$0")/common.bash"
source "$(dirname "$0")/acme/pebble.bash"
pebble_available

start_sim
tls=$(free_port)
start_pebble "$tls" "$(free_port)" 30
start_enclave enclave -fqdn "$ACME_FQDN" --listen "tcp:127.0.0.1:$tls" -intport "$(free_port)" -acme \
    --acme-directory "$pebble_directory" --acme-ca-file "$work/pebble-ca.pem" --acme-backoff 500ms
wait_for_log enclave 'event=acme_certificate origin=acme' 600
first=$(sed -n 's/.*event=acme_certificate origin=acme.*certificate_sha256=\([0-9a-f]*\).*/\1/p' "$work/enclave.log" | head -1)
first_na=$(sed -n 's/.*event=acme_certificate origin=acme.*not_after=\([^ ]*\).*/\1/p' "$work/enclave.log" | head -1)
pebble_root "$work/pebble-root.pem"
pass "first certificate $first, valid until $first_na"

# a bounded load: at most 3000 requests or 45 s, each a new verified connection
cat >"$work/load.sh" <<LOAD
ok=0; bad=0; end=\$((SECONDS + 45))
for i in \$(seq 1 3000); do
    [ -e "$work/stop-load" ] && break
    [ \$SECONDS -ge \$end ] && break
    if curl -sf --max-time 5 --cacert "$work/pebble-root.pem" --resolve "$ACME_FQDN:$tls:127.0.0.1" \
        "https://$ACME_FQDN:$tls/enclave" -o /dev/null; then ok=\$((ok + 1)); else bad=\$((bad + 1)); fi
    echo "\$ok \$bad" >"$work/load.count"
done
echo "done \$ok \$bad" >"$work/load.count"
LOAD
spawn load bash "$work/load.sh"
for _ in $(seq 1 900); do
    [ "$(grep -c 'event=acme_certificate origin=acme' "$work/enclave.log")" -ge 2 ] && break
    kill -0 "${pids[enclave]}" 2>/dev/null || fail "the enclave died"
    sleep 0.05
done
[ "$(grep -c 'event=acme_certificate origin=acme' "$work/enclave.log")" -ge 2 ] || fail "no renewal within 45 s"
sleep 1 # let the load run on the renewed certificate too
touch "$work/stop-load"
wait "${pids[load]}"
unset "pids[load]"
read -r _ ok bad <"$work/load.count"
second=$(sed -n 's/.*event=acme_certificate origin=acme.*certificate_sha256=\([0-9a-f]*\).*/\1/p' "$work/enclave.log" | sed -n 2p)
renewed_at=$(grep 'event=acme_certificate origin=acme' "$work/enclave.log" | sed -n 2p | sed 's/^ts=\([^ ]*\).*/\1/')
[ "$second" != "$first" ] || fail "the renewal served the same certificate"
[ "$(date -d "$renewed_at" +%s)" -lt "$(date -d "$first_na" +%s)" ] || fail "renewed at $renewed_at, after $first_na"
[ "$bad" = 0 ] && [ "$ok" -gt 0 ] || fail "$bad of $((ok + bad)) requests failed across the renewal"
pass "renewed at $renewed_at (before $first_na) to $second; $ok verified requests across it, none failed"

openssl s_client -connect "127.0.0.1:$tls" -servername "$ACME_FQDN" </dev/null 2>/dev/null |
    openssl x509 -outform DER >"$work/peer.der"
now_sha=$(sha256sum <"$work/peer.der" | cut -c1-64)
last=$(sed -n 's/.*event=acme_certificate origin=acme.*certificate_sha256=\([0-9a-f]*\).*/\1/p' "$work/enclave.log" | tail -1)
[ "$now_sha" = "$last" ] || fail "a new connection got $now_sha, not the latest $last"
"$CLOISTER" verify "https://127.0.0.1:$tls" --root "$work/state/root.pem" >"$work/verify.txt" 2>&1 ||
    fail "cloister verify: $(cat "$work/verify.txt")"
grep -q "^verdict: PROVEN" "$work/verify.txt" || fail "not proven: $(cat "$work/verify.txt")"
pass "new connections get the renewed certificate and cloister verify proves it"

stop enclave || true
no_sanitizer_reports
