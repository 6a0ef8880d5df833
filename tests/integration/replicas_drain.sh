#!/usr/bin/env bash
# Drain behind a real load balancer: three replicas behind HAProxy under a
# bounded wrk load; replica 2's cloister host gets SIGTERM.  It must first fail
# its health check (HAProxy sees a 503 from the replica, not a refused
# connection), then drain (its enclave closes connections after their
# response, stops accepting, finishes what is in flight) and exit 0, and
# wrk must count no failed request at all.  Also: the client's address
# reaches the app through HAProxy's PROXY v2 header, and POST /enclave/drain
# from a client (through the balancer) drains nothing.
set -euo pipefail
source "$(dirname "$0")/common.bash"
source "$(dirname "$0")/replicas.bash"
need_fleet_tools
start_fleet 3

# ---- the client's address, through HAProxy and the host --------------------------------------
got=$(curl -sk --max-time 10 --interface 127.0.0.2 "https://127.0.0.1:$port/api/hello")
grep -q '"client": "127.0.0.2"' <<<"$got" || fail "the app did not see the client's address 127.0.0.2: $got"
pass "the app sees the client's address (127.0.0.2) through HAProxy's PROXY v2 header and the host"

# ---- a client cannot drain a replica ---------------------------------------------------------------
for _ in 1 2 3; do
    curl -sk --max-time 10 -o /dev/null -X POST "https://127.0.0.1:$port/enclave/drain" || true
done
sleep 0.5
for i in 1 2 3; do
    grep -q 'event=draining' "$run/r$i/host.log" && fail "replica $i drains after a client's POST /enclave/drain"
done
grep -q ' is DOWN' "$work/dev.log" "$run/haproxy.log" && fail "a replica went down after a client's POST /enclave/drain"
pass "POST /enclave/drain from a client (public listener) drains nothing: only the parent's health listener has it"

# ---- SIGTERM under load ------------------------------------------------------------------------------
wrk -t2 -c12 -d10s --timeout 5s "https://127.0.0.1:$port/api/hello" >"$work/wrk.out" 2>&1 &
wrk_pid=$!
pids[wrk]=$wrk_pid
sleep 3
victim=$(host_pid 2)
[ -n "$victim" ] && [ "$victim" -gt 0 ] || fail "no pid for replica 2's host"
kill -TERM "$victim"
wait_for_log dev "replica 2's host exited" 600
grep -q "replica 2's host exited (exit status 0)" "$work/dev.log" || fail "replica 2's host did not exit 0: $(grep 'replica 2' "$work/dev.log")"
wait "$wrk_pid" || fail "wrk failed: $(cat "$work/wrk.out")"
unset 'pids[wrk]'
cp "$run/r2/host.log" "$work/r2-host.log"  # shown if a check below fails
cp "$run/haproxy.log" "$work/haproxy-copy.log"

# the order: the health check failed with the replica's own 503 (it still accepted), then the drain
grep -E 'replicas/r2 is DOWN.*(503|Layer7)' "$run/haproxy.log" >/dev/null ||
    fail "HAProxy did not take r2 out on a 503 health answer: $(grep -i 'r2' "$run/haproxy.log" | tail -5)"
for event in 'component=host event=draining health=503' 'component=enclave event=draining' 'event=enclave_draining runner=local status=202' \
    'event=drain_accepting_stopped' 'component=enclave event=stopped' 'component=host event=drained'; do
    grep -q "$event" "$run/r2/host.log" || fail "replica 2's log lacks '$event'"
done
failures=$(wrk_failures "$work/wrk.out")
requests=$(wrk_requests "$work/wrk.out")
[ "$failures" = 0 ] || fail "$failures failed requests of $requests during the drain: $(cat "$work/wrk.out")"
[ "${requests:-0}" -gt 100 ] || fail "too few requests to tell: $(cat "$work/wrk.out")"
pass "SIGTERM: r2 failed its check with 503 first, drained, exited 0; $requests requests through HAProxy, 0 failed"

# the other two still serve, the same identity
for _ in 1 2 3 4; do
    "$CLOISTER" verify "https://127.0.0.1:$port" --root "$run/state/root.pem" >"$work/verify.out" 2>&1 ||
        fail "verify after the drain: $(cat "$work/verify.out")"
done
pass "after the drain the two others still serve, proven"
