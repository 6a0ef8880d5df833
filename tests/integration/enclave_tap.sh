#!/usr/bin/env bash
# cloister enclave -tap -egress-policy FILE: the TLS daemon brings up tap0
# itself (the same relay as cloister tap), its /enclave/config shows the
# policy (file, SHA-256, rules), its /metrics the relay's counters, and the
# policy holds for the app's traffic.
set -euo pipefail
source "$(dirname "$0")/common.bash"
source "$(dirname "$0")/tap_common.bash"

make_namespaces
start_internet
start_peer peer
start_sim
cat >"$work/policy.yaml" <<'POLICY'
egress:
  allow: [allowed.test]
  deny: [198.51.100.11]
POLICY
sha=$(sha256sum "$work/policy.yaml" | cut -d' ' -f1)
spawn enclave ip netns exec "$ENC" "$CLOISTER" enclave -fqdn localhost --nsm "unix:$work/nsm.sock" \
    -listen tcp:127.0.0.1:8443 -intport 8080 -prometheus-listen tcp:127.0.0.1:9102 \
    -tap -tap-parent "unix:$work/tap.sock" -tap-resolv-conf "/etc/netns/$ENC/resolv.conf" \
    -egress-policy "$work/policy.yaml"
wait_for_log enclave 'event=tap_connected'
wait_for_log enclave 'event=listening.*8443'
grep -q "event=egress_policy file=$work/policy.yaml sha256=$sha allow=1 deny=1" "$work/enclave.log" ||
    fail "the policy's SHA-256 is not logged"

config=$(in_enc curl -sS -k -m 5 https://127.0.0.1:8443/enclave/config) || fail "GET /enclave/config"
python3 - "$sha" "$work/policy.yaml" <<PY || fail "/enclave/config does not show the policy: $config"
import json, sys
c = json.loads('''$config''')["tap"]
p = c["egress-policy"]
assert c["name"] == "tap0" and c["address"] == "192.168.127.2/24" and c["mtu"] == 1500, c
assert p["sha256"] == sys.argv[1] and p["file"] == sys.argv[2], p
assert p["allow"] == ["allowed.test"] and p["deny"] == ["198.51.100.11"], p
PY
pass "/enclave/config shows tap0 and the policy (file, SHA-256, rules)"

body=$(enc_curl http://allowed.test/) || fail "curl http://allowed.test/ through the enclave's tap0"
[ "$body" = "hello from the internet" ] || fail "allowed.test answered '$body'"
if enc_curl -o /dev/null http://203.0.113.20/ 2>/dev/null; then fail "an unlisted IP was reached"; fi
metrics=$(in_enc curl -sS -m 5 http://127.0.0.1:9102/metrics) || fail "GET /metrics"
grep -q '^cloister_tap_connected 1$' <<<"$metrics" || fail "no tap gauge in /metrics"
n=$(awk '$1 == "cloister_egress_dropped_total{reason=\"not_allowed\"}" { print $2 }' <<<"$metrics")
[ "${n:-0}" -ge 1 ] || fail "the drop is not in the enclave's /metrics"
pass "the enclave's relay enforces the policy; its counters are in the enclave's /metrics"

set +e
"$CLOISTER" enclave -fqdn x -egress-policy "$work/policy.yaml" >"$work/notap.out" 2>&1
status=$?
set -e
[ $status = 2 ] && grep -q 'egress-policy goes with --tap' "$work/notap.out" || fail "-egress-policy without -tap"
pass "-egress-policy without -tap is refused"
