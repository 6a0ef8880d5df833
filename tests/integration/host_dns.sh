#!/usr/bin/env bash
# cloister host resolves an outbound destination's name again when its DNS
# TTL has passed (not only every --resolve-interval), follows a changed
# answer, and keeps the previous addresses when DNS fails.  The DNS server is
# a local stand-in (host/dns_server.py) given with --dns-server.
set -euo pipefail
source "$(dirname "$0")/common.bash"
here="$(dirname "$0")/host"

name=svc.cloister.test
dns_port=$(free_port)
port=$(free_port)
echo "{\"$name\": {\"ip\": \"127.0.0.1\", \"ttl\": 1}}" >"$work/zone.json"
spawn dns python3 "$here/dns_server.py" "$dns_port" "$work/zone.json"
wait_for_log dns '^dns: listening'
tag_server='import socket,sys
s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind((sys.argv[1], int(sys.argv[2]))); s.listen(16); print("tag: listening", flush=True)
while True:
    c, _ = s.accept(); c.sendall(sys.argv[3].encode() + b"\n"); c.close()'
spawn tagA python3 -c "$tag_server" 127.0.0.1 "$port" A
spawn tagB python3 -c "$tag_server" 127.0.0.2 "$port" B
wait_for_log tagA '^tag: listening'
wait_for_log tagB '^tag: listening'
through() { # the tag of the server that a connection through the outbound proxy reached
    python3 -c 'import socket,sys; s=socket.socket(socket.AF_UNIX); s.settimeout(5); s.connect(sys.argv[1]); print(s.recv(16).decode().strip())' "$work/out.sock"
}
resolved() { grep -c "event=resolved route=outbound name=$name .*$1" "$work/host.log" || true; }
within() { # SECONDS WHAT CMD...
    local end=$((SECONDS + $1)) what=$2
    shift 2
    until "$@" >/dev/null 2>&1; do
        [ $SECONDS -lt $end ] || fail "$what: not within the time"
        sleep 0.1
    done
}
at_least() { [ "$(resolved "$1")" -ge "$2" ]; }

spawn host "$CLOISTER" host --outbound "unix:$work/out.sock=$name:$port" --dns-server "127.0.0.1:$dns_port" --debug
wait_for_log host 'event=started'
grep -q "event=resolved route=outbound name=$name port=$port addresses=127.0.0.1 changed=yes source=dns ttl=1 again_in_s=1" \
    "$work/host.log" || fail "the first resolution does not show the TTL: $(grep resolved "$work/host.log")"
[ "$(through)" = A ] || fail "the outbound proxy did not reach 127.0.0.1"
within 5 "three resolutions driven by TTL 1 (the interval is 60 s)" at_least 'ttl=1 ' 4
pass "TTL 1: resolved again every second although --resolve-interval is 60 s; forwarding to 127.0.0.1"

echo "{\"$name\": {\"ip\": \"127.0.0.2\", \"ttl\": 30}}" >"$work/zone.json"
within 5 "the changed answer" at_least "addresses=127.0.0.2 changed=yes source=dns ttl=30 again_in_s=30" 1
[ "$(through)" = B ] || fail "after the answer changed, connections do not go to 127.0.0.2"
pass "a changed answer is followed (new connections go to 127.0.0.2); TTL 30 -> next resolution in 30 s"

# TTL longer than the interval: the interval bounds it.
stop host || true
echo "{\"$name\": {\"ip\": \"127.0.0.2\", \"ttl\": 3600}}" >"$work/zone.json"
spawn host2 "$CLOISTER" host --outbound "unix:$work/out.sock=$name:$port" --dns-server "127.0.0.1:$dns_port" \
    --resolve-interval 1
wait_for_log host2 'event=started'
grep -q "name=$name .*ttl=3600 again_in_s=1" "$work/host2.log" || fail "--resolve-interval does not bound a long TTL"
# DNS gone: the previous addresses stay.
stop dns || true
wait_for_log host2 'event=resolve-failed route=outbound name=svc.cloister.test' 200
[ "$(python3 -c 'import socket,sys; s=socket.socket(socket.AF_UNIX); s.settimeout(5); s.connect(sys.argv[1]); print(s.recv(16).decode().strip())' "$work/out.sock")" = B ] ||
    fail "after a failed resolution the previous addresses were not kept"
pass "--resolve-interval bounds a long TTL; DNS failing keeps the previous addresses (logged at warn)"

# DNS rebinding: with --allowlist, every resolution is checked, not only the first at start.  The
# allowlist names 127.0.0.1; the name is re-bound to 127.0.0.2 (outside it) after its TTL: the new
# address is refused and logged, and connections keep going to 127.0.0.1.
stop host2 || true
echo "{\"$name\": {\"ip\": \"127.0.0.1\", \"ttl\": 1}}" >"$work/zone.json"
spawn dns2 python3 "$here/dns_server.py" "$dns_port" "$work/zone.json"
wait_for_log dns2 '^dns: listening'
printf 'allowlist:\n- {address: 127.0.0.1, port: %s}\n' "$port" >"$work/allow.yaml"
spawn host3 "$CLOISTER" host --outbound "unix:$work/out3.sock=$name:$port" --dns-server "127.0.0.1:$dns_port" \
    --allowlist "$work/allow.yaml"
wait_for_log host3 'event=started'
through3() { python3 -c 'import socket,sys; s=socket.socket(socket.AF_UNIX); s.settimeout(5); s.connect(sys.argv[1]); print(s.recv(16).decode().strip())' "$work/out3.sock"; }
[ "$(through3)" = A ] || fail "allowlisted 127.0.0.1 not reached"
echo "{\"$name\": {\"ip\": \"127.0.0.2\", \"ttl\": 1}}" >"$work/zone.json"
wait_for_log host3 "event=refused route=outbound name=$name port=$port address=127.0.0.2 reason=\"resolved to an address not in the allowlist\"" 100
for _ in 1 2 3 4 5; do
    [ "$(through3)" = A ] || fail "DNS rebinding: a connection went to 127.0.0.2, outside the allowlist"
done
! grep -q "event=resolved route=outbound name=$name .*addresses=127.0.0.2" "$work/host3.log" ||
    fail "127.0.0.2 was taken as the destination's address"
grep -q "event=resolve-failed route=outbound name=$name .*not in the allowlist (127.0.0.2)" "$work/host3.log" ||
    fail "the refused re-resolution is not logged as such: $(grep "$name" "$work/host3.log" | tail -3)"
# back inside the allowlist: followed again
echo "{\"$name\": {\"ip\": \"127.0.0.1\", \"ttl\": 1}}" >"$work/zone.json"
sleep 2.5
[ "$(through3)" = A ] || fail "127.0.0.1 again"
stop host3 || true
# a name that resolves outside the allowlist at start is refused at start
echo "{\"$name\": {\"ip\": \"127.0.0.2\", \"ttl\": 1}}" >"$work/zone.json"
status=0
"$CLOISTER" host --outbound "unix:$work/out4.sock=$name:$port" --dns-server "127.0.0.1:$dns_port" \
    --allowlist "$work/allow.yaml" >"$work/start.out" 2>&1 || status=$?
[ "$status" != 0 ] || fail "a start with the name outside the allowlist succeeded"
stop dns2 || true
pass "DNS rebinding: a re-resolution to an address outside the allowlist is refused and logged, connections stay on the allowlisted address"

for bad in "::1" "x.y" "127.0.0.1:0" "127.0.0.1:99999"; do
    status=0
    "$CLOISTER" host --outbound "unix:$work/bad.sock=$name:$port" --dns-server "$bad" >"$work/out" 2>&1 || status=$?
    [ "$status" = 2 ] && grep -q -- '--dns-server' "$work/out" || fail "--dns-server $bad: exit $status: $(cat "$work/out")"
done
pass "a bad --dns-server is refused at start (exit 2) naming the problem"
