#!/usr/bin/env bash
# cloister host's drain on SIGTERM: for --drain-grace its ',health' forward
# answers 503 itself (a load balancer takes the replica out) while the other
# forwards still carry new connections; then the listeners close, the
# connection in flight finishes within --drain-timeout, and the host exits 0.
# Before this, SIGTERM cut every forwarded connection at once.
set -euo pipefail
source "$(dirname "$0")/common.bash"

node_modules_present || { echo "SKIP: tests/node/node_modules missing (run scripts/node-deps.sh)"; exit 77; }
app_port=$(free_port)
start_app app "$app_port"
fwd=$(free_port)
hc=$(free_port)
spawn host "$CLOISTER" host --forward "tcp:127.0.0.1:$fwd=tcp:127.0.0.1:$app_port" \
    --forward "tcp:127.0.0.1:$hc=tcp:127.0.0.1:$app_port,health" --drain-grace 3s --drain-timeout 15s
wait_for_log host 'event=started'
[ "$(curl -s -o /dev/null -w '%{http_code}' "http://127.0.0.1:$hc/hello")" = 200 ] || fail "the health forward before"

curl -s --max-time 30 -o /dev/null -w '%{http_code}' "http://127.0.0.1:$fwd/slow?ms=6000" >"$work/slow.code" &
slow_client=$!
sleep 0.5
kill -TERM "${pids[host]}"
wait_for_log host 'event=draining'
body=$(curl -s --max-time 5 -w ' %{http_code}' "http://127.0.0.1:$hc/hello")
[[ "$body" == *'"draining"'*' 503' ]] || fail "the health forward during the grace: $body"
[ "$(curl -s --max-time 5 -o /dev/null -w '%{http_code}' "http://127.0.0.1:$fwd/hello")" = 200 ] ||
    fail "a new connection on the other forward during the grace"
grep -q 'drain_accepting_stopped' "$work/host.log" && fail "the grace ended early"
pass "SIGTERM: the health forward answers 503 itself, the other forward still takes new connections"
wait_for_log host 'event=drain_accepting_stopped' 200
if curl -s --max-time 2 -o /dev/null "http://127.0.0.1:$fwd/hello" 2>/dev/null; then fail "still accepting after the grace"; fi
wait "$slow_client" || true
[ "$(cat "$work/slow.code")" = 200 ] || fail "the connection in flight: $(cat "$work/slow.code")"
status=0
wait "${pids[host]}" || status=$?
unset 'pids[host]'
[ "$status" = 0 ] || fail "exit status: $status"
grep -q 'event=drained connections_left=0' "$work/host.log" || fail "not drained: $(tail -5 "$work/host.log")"
pass "after the grace: listeners closed, the request in flight finished (200), exit 0"
