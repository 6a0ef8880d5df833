#!/usr/bin/env bash
# A replica killed outright behind HAProxy: three replicas under a bounded wrk
# load; replica 2's cloister host and its enclave get SIGKILL.  Only requests
# in flight on it may fail (at most one per wrk connection: each has one in
# flight); once HAProxy's check has taken it out (500 ms x 2), none: a second
# wrk run then counts no failure at all, and the others still prove the same
# certificate.
set -euo pipefail
source "$(dirname "$0")/common.bash"
source "$(dirname "$0")/replicas.bash"
need_fleet_tools
start_fleet 3
conns=12

"$CLOISTER" verify "https://127.0.0.1:$port" --root "$run/state/root.pem" >"$work/verify-before.out" 2>&1 ||
    fail "verify before: $(cat "$work/verify-before.out")"
cert_before=$(awk '$1 == "certificate" { print $2 }' "$work/verify-before.out")

wrk -t2 -c$conns -d8s --timeout 5s "https://127.0.0.1:$port/api/hello" >"$work/wrk1.out" 2>&1 &
pids[wrk]=$!
sleep 3
kill_replica 2
wait "${pids[wrk]}" || fail "wrk failed: $(cat "$work/wrk1.out")"
unset 'pids[wrk]'
failed1=$(wrk_failures "$work/wrk1.out")
requests1=$(wrk_requests "$work/wrk1.out")
[ "$failed1" -ge 0 ] && [ "$failed1" -le "$conns" ] ||
    fail "$failed1 failed requests of $requests1: more than the $conns that can be in flight: $(cat "$work/wrk1.out")"
pass "SIGKILL under load: $failed1 of $requests1 requests failed (at most the $conns in flight)"

grep -q 'replicas/r2 is DOWN' "$run/haproxy.log" || { sleep 2; grep -q 'replicas/r2 is DOWN' "$run/haproxy.log"; } ||
    fail "HAProxy did not take r2 out"
wrk -t2 -c$conns -d4s --timeout 5s "https://127.0.0.1:$port/api/hello" >"$work/wrk2.out" 2>&1 ||
    fail "wrk failed: $(cat "$work/wrk2.out")"
failed2=$(wrk_failures "$work/wrk2.out")
requests2=$(wrk_requests "$work/wrk2.out")
[ "$failed2" = 0 ] && [ "${requests2:-0}" -gt 50 ] ||
    fail "after HAProxy's check took r2 out: $failed2 failed of $requests2: $(cat "$work/wrk2.out")"
pass "after HAProxy's check interval: $requests2 requests, 0 failed"

for _ in 1 2 3 4; do
    "$CLOISTER" verify "https://127.0.0.1:$port" --root "$run/state/root.pem" >"$work/verify.out" 2>&1 ||
        fail "verify after the kill: $(cat "$work/verify.out")"
    [ "$(awk '$1 == "certificate" { print $2 }' "$work/verify.out")" = "$cert_before" ] ||
        fail "another certificate after the kill"
done
pass "the two others still prove the same certificate"
