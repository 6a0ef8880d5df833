#!/usr/bin/env bash
# cloister host --tap, end to end in three network namespaces (enclave,
# parent, internet; tap/setup.bash): the enclave's relay carries tap0's
# frames to the parent's TAP device, and the parent's kernel routes them.
#   - outbound: curl in the enclave namespace reaches a server in the
#     internet namespace by name, through the gateway's DNS (the relay, then
#     dnsmasq), with the parent's nftables masquerade
#   - inbound: HTTPS from the internet to the parent's published port
#     (--tap-forward 8443=443) reaches cloister enclave over tap0, and
#     cloister verify proves it
#   - IMDSv2 at 169.254.169.254 from the enclave goes to the host's IMDS gate
#     (imds-sim behind it): the calls an enclave needs work, the rest get 403
set -euo pipefail
source "$(dirname "$0")/common.bash"
source "$(dirname "$0")/tap/setup.bash"

make_namespaces
start_internet_dns
web=$(free_port)
start_web web "$web"
start_sim
imds=$(free_port)
spawn imds_sim ip netns exec "$PNS" "$CLOISTER" imds-sim --listen "tcp:127.0.0.1:$imds" --role enclave-role \
    --region eu-west-3
wait_for_log imds_sim 'event=listening'
local_port=$(free_port)
mkdir -p "$work/local"
echo "parent loopback" >"$work/local/x.txt"
spawn local_web ip netns exec "$PNS" python3 -m http.server --bind 127.0.0.1 --directory "$work/local" "$local_port"
start_host host --tap-forward 8443=443 --imds "unix:$work/imds.sock" --imds-endpoint "http://127.0.0.1:$imds" \
    --tap-loopback "$local_port"
grep -q 'dns=relay' "$work/host.log" || fail "the relay is not the default DNS: $(grep tap-ready "$work/host.log")"
start_peer
wait_peer_connections 1

# ---- outbound, by name --------------------------------------------------------------------
body=$(curl_e "http://web.test:$web/hello.txt") || fail "curl from the enclave to web.test through tap0 failed"
[ "$body" = "hello from the internet" ] || fail "unexpected body: $body"
grep -q 'query\[A\] web.test from 10\.' "$work/inet_dns.log" ||
    fail "the internet's DNS did not see the parent's query for web.test"
# the internet sees the parent's address, not the enclave's (masquerade)
grep -q "\"GET /hello.txt HTTP/1.1\" 200" "$work/web.log" || fail "the web server did not log the request"
grep -q "^$PARENT_IP " "$work/web.log" || fail "the request did not come from the parent's address (masquerade): $(tail -1 "$work/web.log")"
pass "curl in the enclave namespace reaches web.test in the internet namespace through tap0 (gateway DNS relay, masquerade)"

# DNS over TCP through the relay as well
in_e python3 - <<'PY' 2>"$work/dnstcp.err" || fail "DNS over TCP through the gateway relay failed: $(cat "$work/dnstcp.err")"
import socket, struct
q = struct.pack(">HHHHHH", 0x1234, 0x0100, 1, 0, 0, 0) + b"\x03web\x04test\x00" + struct.pack(">HH", 1, 1)
s = socket.create_connection(("192.168.127.1", 53), timeout=5)
s.sendall(struct.pack(">H", len(q)) + q)
n = struct.unpack(">H", s.recv(2))[0]
a = b""
while len(a) < n:
    a += s.recv(n - len(a))
assert a[:2] == b"\x12\x34" and struct.unpack(">H", a[6:8])[0] >= 1, a
PY
pass "DNS over TCP at the gateway is relayed too"

# ---- the parent's loopback service opened with --tap-loopback, and only that one ------------------
body=$(curl_e "http://192.168.127.1:$local_port/x.txt") || fail "--tap-loopback: the enclave cannot reach the parent's 127.0.0.1:$local_port"
[ "$body" = "parent loopback" ] || fail "--tap-loopback: unexpected body: $body"
in_e curl -s --max-time 2 "http://192.168.127.1:$imds/latest/meta-data/placement/region" >/dev/null &&
    fail "the parent's loopback imds-sim was reachable from the enclave without --tap-loopback"
pass "--tap-loopback PORT: the enclave reaches the parent's 127.0.0.1:PORT at the gateway, no other loopback port"

# ---- inbound: the internet reaches cloister enclave through the published port ------------------
spawn enclave ip netns exec "$ENS" "$CLOISTER" enclave -fqdn localhost --nsm "unix:$work/nsm.sock" \
    --listen tcp:0.0.0.0:443 -intport 8080
wait_for_log enclave 'event=listening listener=public'
in_i "$CLOISTER" verify "https://$PARENT_IP:8443" --root "$work/state/root.pem" >"$work/verify.txt" 2>&1 ||
    fail "cloister verify through the published port failed: $(cat "$work/verify.txt")"
grep -q '^verdict: PROVEN' "$work/verify.txt" || fail "no PROVEN verdict: $(cat "$work/verify.txt")"
pass "HTTPS from the internet to the parent's port 8443 reaches cloister enclave over tap0; cloister verify proves it"

# ---- IMDSv2 through the gate ------------------------------------------------------------------------
token=$(curl_e -X PUT -H 'X-aws-ec2-metadata-token-ttl-seconds: 60' http://169.254.169.254/latest/api/token) ||
    fail "the IMDSv2 token PUT from the enclave failed"
[ -n "$token" ] || fail "an empty IMDSv2 token"
region=$(curl_e -H "X-aws-ec2-metadata-token: $token" http://169.254.169.254/latest/meta-data/placement/region) ||
    fail "GET region from the enclave failed"
[ "$region" = eu-west-3 ] || fail "region: '$region'"
role=$(curl_e -H "X-aws-ec2-metadata-token: $token" \
    http://169.254.169.254/latest/meta-data/iam/security-credentials/) || fail "GET the role name failed"
[ "$role" = enclave-role ] || fail "role: '$role'"
curl_e -H "X-aws-ec2-metadata-token: $token" \
    "http://169.254.169.254/latest/meta-data/iam/security-credentials/$role" | has AccessKeyId ||
    fail "GET the role's credentials failed"
for path in /latest/user-data /latest/meta-data/instance-id /latest/meta-data/ami-id; do
    code=$(in_e curl -s -o /dev/null -w '%{http_code}' --max-time 5 -H "X-aws-ec2-metadata-token: $token" \
        "http://169.254.169.254$path")
    [ "$code" = 403 ] || fail "GET $path from the enclave: $code, not 403 from the gate"
done
grep -q 'target=/latest/user-data' "$work/imds_sim.log" && fail "the gate let /latest/user-data through to IMDS"
pass "IMDSv2 at 169.254.169.254 from the enclave: token, region, role and credentials through the gate; others 403"

# ---- the gate cannot be gone around: a "real" IMDS at 169.254.169.254 beyond the parent ----------------
# (in the internet namespace, on port 80 and 8080, routed from the parent)
ip -n "$INS" addr add 169.254.169.254/32 dev vi0
ip -n "$PNS" route add 169.254.169.254/32 via "$NET_IP"
mkdir -p "$work/fake/latest"
echo "secret user data" >"$work/fake/latest/user-data"
spawn fake80 ip netns exec "$INS" python3 -m http.server --bind 169.254.169.254 --directory "$work/fake" 80
spawn fake8080 ip netns exec "$INS" python3 -m http.server --bind 169.254.169.254 --directory "$work/fake" 8080
for _ in $(seq 1 100); do in_p curl -sf --max-time 1 http://169.254.169.254:8080/latest/user-data >/dev/null && break; sleep 0.05; done
in_p curl -sf --max-time 2 http://169.254.169.254:8080/latest/user-data | has 'secret user data' ||
    fail "the parent cannot reach the stand-in IMDS (the checks below would prove nothing)"
fake_hits() { cat "$work/fake80.log" "$work/fake8080.log" | grep -c 'GET /latest/user-data' || true; }
hits=$(fake_hits)
code=$(in_e curl -s -o /dev/null -w '%{http_code}' --max-time 3 -H "X-aws-ec2-metadata-token: $token" \
    http://169.254.169.254/latest/user-data) || true
[ "$code" = 403 ] || fail "the enclave's 169.254.169.254:80 did not go to the gate (HTTP $code)"
in_e curl -s --max-time 3 http://169.254.169.254:8080/latest/user-data >/dev/null &&
    fail "the enclave reached 169.254.169.254:8080 around the gate"
[ "$(fake_hits)" = "$hits" ] || fail "a request from the enclave reached the stand-in IMDS"
pass "169.254.169.254 beyond the parent: port 80 goes to the gate (403), other ports are dropped"

# ---- the same with dnsmasq at the gateway ----------------------------------------------------------------
stop host || true
start_host host2 --tap-dns dnsmasq
wait_peer_connections 2
body=$(curl_e "http://web.test:$web/hello.txt") || fail "curl by name with --tap-dns dnsmasq failed"
[ "$body" = "hello from the internet" ] || fail "unexpected body: $body"
pass "--tap-dns dnsmasq: dnsmasq on the gateway address answers the enclave"
stop host2 || fail "cloister host did not stop cleanly: $(tail -5 "$work/host2.log")"
in_p nft list table inet cloister_tap_cloister0 >/dev/null 2>&1 && fail "the nftables table outlived the host"
in_p ip link show cloister0 >/dev/null 2>&1 && fail "the TAP device outlived the host"
pgrep -f "listen-address=192.168.127.1" >/dev/null && fail "dnsmasq outlived the host"
pass "on stop: the table, the device and dnsmasq are gone"
