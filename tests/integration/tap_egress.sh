#!/usr/bin/env bash
# cloister tap's egress policy, from inside the enclave's namespace through
# tap0: allowed names (resolved by the gateway's DNS) work; a denied name, a
# denied IP, a raw IP no DNS answer gave, and a denied port fail, and the
# relay's counters say why; UDP and ICMP are policed the same way.  The
# parent is tap_peer.py, written from the README's description of the wire
# protocol.  Also: a bad policy is refused naming its line.
set -euo pipefail
source "$(dirname "$0")/common.bash"
source "$(dirname "$0")/tap_common.bash"

# ---- bad policies: clear errors naming the line, before any interface is made
printf 'egress:\n  allow:\n    - example.com\n    - 10.0.0.0/40\n' >"$work/bad.yaml"
set +e
"$CLOISTER" tap --egress-policy "$work/bad.yaml" --tap-name cltapbad0 >"$work/bad.out" 2>&1
status=$?
set -e
[ $status = 2 ] || fail "a bad policy: exit $status, expected 2: $(cat "$work/bad.out")"
grep -q "bad.yaml:4: egress.allow entry \"10.0.0.0/40\": not a valid IPv4 address or CIDR" "$work/bad.out" ||
    fail "the error does not name the line: $(cat "$work/bad.out")"
printf 'egress:\n  allow: [a.test]\n  alow: [b.test]\n' >"$work/bad2.yaml"
set +e
"$CLOISTER" tap --egress-policy "$work/bad2.yaml" >"$work/bad2.out" 2>&1
status=$?
set -e
[ $status = 2 ] && grep -q 'bad2.yaml:3: unknown key egress.alow' "$work/bad2.out" ||
    fail "unknown key: exit $status: $(cat "$work/bad2.out")"
pass "bad policies are refused with the file and line named"

make_namespaces
start_internet
start_peer peer

cat >"$work/policy.yaml" <<'POLICY'
# enclaver's shape
egress:
  allow:
    - allowed.test
    - "**.corp.test"
    - "*.ok.test:80"
    - 198.51.100.0/24
  deny:
    - 198.51.100.11
    - secret.corp.test
POLICY
start_tap --egress-policy "$work/policy.yaml"
sha=$(sha256sum "$work/policy.yaml" | cut -d' ' -f1)
grep -q "event=egress_policy file=$work/policy.yaml sha256=$sha allow=4 deny=2" "$work/tap.log" ||
    fail "the policy's SHA-256 is not logged at start"
wait_for_log tap 'event=tap_connected'
wait_for_log peer 'connected: POST /connect HTTP/1.1'
pass "tap0 up, stream open, policy $sha logged"

# ---- allowed: a name through a CNAME chain, a wildcard name, a CIDR
body=$(enc_curl http://allowed.test/) || fail "curl http://allowed.test/ failed"
[ "$body" = "hello from the internet" ] || fail "allowed.test answered '$body'"
enc_curl -o /dev/null http://www.corp.test/ || fail "curl http://www.corp.test/ (**.corp.test) failed"
enc_curl -o /dev/null http://198.51.100.12/ || fail "curl to an allowed CIDR failed"
enc_curl -o /dev/null http://svc.ok.test/ || fail "curl http://svc.ok.test/ (port 80 allowed) failed"
[ "$(metric cloister_egress_learned_total)" -ge 3 ] || fail "addresses not learned from DNS"
pass "allowed name (CNAME), ** wildcard, CIDR and allowed port reach the internet namespace"

# ---- denied: each fails, and its counter moves
d0=$(dropped dns_query)
if enc_curl -o /dev/null http://secret.corp.test/ 2>"$work/denied.err"; then fail "a denied name was reached"; fi
# answered REFUSED by the relay itself, not left to the resolver's timeout
grep -q 'Could not resolve host' "$work/denied.err" || fail "a denied name: $(cat "$work/denied.err")"
[ "$(dropped dns_query)" -gt "$d0" ] || fail "the query for a denied name was not counted"
grep -q 'event=egress_drop reason=dns_query .*name=secret.corp.test' "$work/tap.log" || fail "no drop log for the name"
d0=$(dropped dns_query)
if enc_curl -o /dev/null http://other.test/ 2>/dev/null; then fail "a name outside the policy was reached"; fi
[ "$(dropped dns_query)" -gt "$d0" ] || fail "the query for an unlisted name was not counted"
pass "denied and unlisted names: their DNS queries never leave (dropped, counted, logged, answered REFUSED)"

d0=$(dropped denied)
if enc_curl -o /dev/null http://198.51.100.11/ 2>/dev/null; then fail "a denied IP was reached"; fi
[ "$(dropped denied)" -gt "$d0" ] || fail "the denied IP was not counted"
pass "a denied IP inside an allowed CIDR fails (denied counted)"

d0=$(dropped not_allowed)
if enc_curl -o /dev/null http://203.0.113.20/ 2>/dev/null; then fail "a raw IP no DNS answer gave was reached"; fi
[ "$(dropped not_allowed)" -gt "$d0" ] || fail "the raw IP was not counted"
pass "a raw IP not learned from DNS fails (not_allowed counted)"

d0=$(dropped port)
if enc_curl -o /dev/null http://svc.ok.test:8080/ 2>/dev/null; then fail "a denied port was reached"; fi
[ "$(dropped port)" -gt "$d0" ] || fail "the denied port was not counted"
pass "an allowed name on a port its rule does not list fails (port counted)"

# ---- UDP and ICMP, policed the same way
udp() {
    in_enc python3 -c '
import socket, sys
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.settimeout(2)
s.sendto(b"ping", (sys.argv[1], 9999))
try:
    print(s.recvfrom(100)[0].decode())
except socket.timeout:
    print("timeout")
' "$1"
}
enc_curl -o /dev/null http://allowed.test/ || fail "allowed.test again"
[ "$(udp 203.0.113.10)" = "echo:ping" ] || fail "UDP to allowed.test's address did not pass"
d0=$(dropped not_allowed)
[ "$(udp 203.0.113.20)" = "timeout" ] || fail "UDP to an unlisted IP passed"
[ "$(dropped not_allowed)" -gt "$d0" ] || fail "the UDP drop was not counted"
pass "UDP: to a learned allowed address passes, to another is dropped and counted"

# ICMP echo with a raw socket (no ping binary needed): exit 0 on a reply
ping1() {
    in_enc python3 -c '
import os, socket, struct, sys, time
def csum(b):
    s = sum(struct.unpack("!%dH" % (len(b) // 2), b))
    s = (s >> 16) + (s & 0xffff)
    return ~(s + (s >> 16)) & 0xffff
ident = os.getpid() & 0xffff
body = struct.pack("!BBHHH", 8, 0, 0, ident, 1) + b"cloister"
pkt = body[:2] + struct.pack("!H", csum(body)) + body[4:]
s = socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_ICMP)
s.sendto(pkt, (sys.argv[1], 0))
end = time.time() + 2
while time.time() < end:
    s.settimeout(max(0.01, end - time.time()))
    try:
        data, src = s.recvfrom(2048)
    except socket.timeout:
        break
    ihl = (data[0] & 15) * 4
    if src[0] == sys.argv[1] and data[ihl] == 0 and struct.unpack("!H", data[ihl + 4:ihl + 6])[0] == ident:
        sys.exit(0)
sys.exit(1)
' "$1"
}
ping1 203.0.113.10 || fail "ICMP echo to allowed.test's address failed"
d0=$(dropped not_allowed)
if ping1 203.0.113.20; then fail "ICMP to an unlisted IP passed"; fi
[ "$(dropped not_allowed)" -gt "$d0" ] || fail "the ICMP drop was not counted"
d0=$(dropped port)
if ping1 203.0.113.30; then fail "ICMP to a port-limited name passed"; fi
[ "$(dropped port)" -gt "$d0" ] || fail "ICMP to a port-limited name was not counted as port"
pass "ICMP: to an allowed address passes; unlisted, or a name allowed only on a port, dropped and counted"
