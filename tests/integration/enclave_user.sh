#!/usr/bin/env bash
# cloister enclave -user nobody: every listener is bound, lo is up and the
# NSM is open as root, then the daemon drops to nobody (groups, gid, uid;
# root cannot be regained: tests/unit/test_harden.c).  It still serves
# HTTPS and attestation (the NSM connection opened before the drop; the
# simulator's socket is made reachable for nobody, so that a reconnect
# works too), its -appcmd runs as nobody from its first start, its threads
# all run as nobody, it is not dumpable, and SIGTERM drains it to exit 0.
set -euo pipefail
source "$(dirname "$0")/common.bash"
[ "$(id -u)" = 0 ] || { echo "skip: needs root (the drop is from root to nobody)"; exit 77; }
getent passwd nobody >/dev/null || { echo "skip: no user nobody"; exit 77; }
nobody_uid=$(id -u nobody)

chmod 755 "$work"
start_sim
chmod 666 "$work/nsm.sock"
mkdir -m 777 "$work/app"
app=$(free_port)
start_app app "$app"
pub=$(free_port)
ip=$(free_port)
start_enclave enclave -user nobody --listen "tcp:127.0.0.1:$pub" -intport "$ip" -appwebsrv "http://127.0.0.1:$app" \
    -appcmd "id -u >$work/app/uid; exec sleep 60"
wait_for_log enclave 'event=privileges_dropped user=nobody'
wait_for_log enclave 'event=app_started'
epid=${pids[enclave]}
first_drop=$(grep -n 'event=privileges_dropped' "$work/enclave.log" | cut -d: -f1)
last_listen=$(grep -n 'event=listening' "$work/enclave.log" | tail -1 | cut -d: -f1)
[ "$last_listen" -lt "$first_drop" ] || fail "a listener was bound after the drop"

for t in /proc/"$epid"/task/*; do
    read -r _ r e s f < <(grep '^Uid:' "$t/status")
    [ "$r $e $s $f" = "$nobody_uid $nobody_uid $nobody_uid $nobody_uid" ] ||
        fail "thread $(basename "$t") runs as uid $r/$e/$s/$f, not nobody"
    grep -q '^Groups:[[:space:]]*$' "$t/status" || fail "thread $(basename "$t") kept groups: $(grep Groups "$t/status")"
done
grep -q '^CapEff:[[:space:]]*0000000000000000$' "/proc/$epid/status" || fail "capabilities remain: $(grep CapEff "/proc/$epid/status")"
for _ in $(seq 1 100); do [ -s "$work/app/uid" ] && break; sleep 0.05; done
[ "$(cat "$work/app/uid" 2>/dev/null)" = "$nobody_uid" ] || fail "-appcmd ran as uid $(cat "$work/app/uid" 2>/dev/null)"
pass "every thread runs as nobody (uid $nobody_uid, no groups, no capabilities), the app too; listeners bound before the drop"

curl -sk "https://127.0.0.1:$pub/enclave/config" | python3 -c '
import json, sys
h = json.load(sys.stdin)["hardening"]
assert h["user"] == "nobody" and h["uid"] == int(sys.argv[1]), h' "$nobody_uid" || fail "/enclave/config does not report the user"
grep -q 'hello' < <(curl -sk "https://127.0.0.1:$pub/hello") || fail "HTTPS to the app"
"$CLOISTER" verify "https://127.0.0.1:$pub" --root "$work/state/root.pem" >"$work/verify.txt" 2>&1 ||
    fail "verify as nobody: $(cat "$work/verify.txt")"
grep -q '^verdict: PROVEN' "$work/verify.txt" || fail "no PROVEN verdict"
pass "as nobody: /enclave/config names the user, the app is served, attestation PROVEN"

kill -TERM "$epid"
status=0
wait "$epid" || status=$?
unset "pids[enclave]"
[ "$status" = 0 ] || fail "exit $status on SIGTERM"
pass "SIGTERM: drained and exited 0 as nobody"

status=0
"$CLOISTER" enclave -fqdn localhost -user no-such-user-here >"$work/bad.log" 2>&1 || status=$?
[ "$status" = 2 ] && grep -q 'no user named' "$work/bad.log" || fail "an unknown -user: exit $status $(cat "$work/bad.log")"
status=0
"$CLOISTER" enclave -fqdn localhost -user root >"$work/bad.log" 2>&1 || status=$?
[ "$status" = 2 ] && grep -q 'is root' "$work/bad.log" || fail "-user root: exit $status $(cat "$work/bad.log")"
pass "an unknown user and root are refused (exit 2)"
