#!/usr/bin/env bash
# AWS's enclave init leaves lo down: cloister enclave brings it up itself,
# says so in its log, and then serves on 127.0.0.1.  Run in a fresh network
# namespace, whose lo is down as in an enclave.
set -euo pipefail
source "$(dirname "$0")/common.bash"
[ "$(id -u)" = 0 ] && unshare --net true 2>/dev/null || { echo "skip: needs root and unshare --net"; exit 77; }
command -v ip >/dev/null && command -v curl >/dev/null || { echo "skip: needs ip and curl"; exit 77; }

start_sim
# Inside the namespace: lo before, the enclave, lo after, one request to each
# listener; the enclave is stopped by the script (also when a step fails).
cat >"$work/inside.sh" <<'SH'
set -u
work=$1 cloister=$2
ip -o link show lo >"$work/lo.before"
"$cloister" enclave -fqdn localhost --nsm "unix:$work/nsm.sock" --listen tcp:127.0.0.1:8443 -intport 8080 \
    >"$work/enc.log" 2>&1 &
pid=$!
trap 'kill $pid 2>/dev/null; wait $pid 2>/dev/null' EXIT
for _ in $(seq 1 300); do
    grep -q 'event=listening listener=public' "$work/enc.log" && break
    kill -0 $pid 2>/dev/null || break
    sleep 0.05
done
ip -o link show lo >"$work/lo.after"
curl -sk --max-time 10 https://127.0.0.1:8443/enclave >"$work/public.out" 2>&1
curl -s --max-time 10 -o /dev/null -w '%{http_code}' http://127.0.0.1:8080/enclave/ready >"$work/internal.out" 2>&1
exit 0
SH
timeout 60 unshare --net bash "$work/inside.sh" "$work" "$CLOISTER" || fail "the namespace script: exit $?"

grep -q 'state DOWN' "$work/lo.before" || fail "the namespace's lo was not down to begin with: $(cat "$work/lo.before")"
grep -q 'event=loopback_up interface=lo' "$work/enc.log" || fail "no loopback_up in the log: $(cat "$work/enc.log")"
grep -q '<LOOPBACK,UP' "$work/lo.after" || fail "lo is not up after the start: $(cat "$work/lo.after")"
grep -q 'inside an AWS Nitro Enclave' "$work/public.out" || fail "public listener on 127.0.0.1: $(cat "$work/public.out")"
[ -n "$(cat "$work/internal.out")" ] && [ "$(cat "$work/internal.out")" != 000 ] ||
    fail "internal listener on 127.0.0.1 did not answer"
pass "lo down in a fresh namespace: the enclave brings it up, logs event=loopback_up, serves on 127.0.0.1"

# lo already up (this machine's namespace): nothing to do, nothing logged
int=$(free_port)
pub=$(free_port)
start_enclave enc2 --listen "tcp:127.0.0.1:$pub" -intport "$int"
wait_for_log enc2 'event=listening listener=public'
! grep -q 'loopback_up' "$work/enc2.log" || fail "loopback_up logged although lo was up"
stop enc2 || true
pass "lo already up: left alone"
