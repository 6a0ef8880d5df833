#!/usr/bin/env bash
# cloister enclave's drain in two phases, as a load balancer needs it:
# with -health-listen, SIGTERM first makes GET /enclave/health answer 503
# for -drain-grace while the public listener still accepts (the balancer has
# not seen the 503 yet) and every response closes its connection (HTTP/1.1
# Connection: close, HTTP/2 GOAWAY); then it stops accepting, the request in
# flight finishes, and it exits 0.  POST /enclave/drain on the health
# listener does the same; the public listener has no such endpoint.
# Without -health-listen there is no grace (nobody could see it).
set -euo pipefail
source "$(dirname "$0")/common.bash"

node_modules_present || { echo "SKIP: tests/node/node_modules missing (run scripts/node-deps.sh)"; exit 77; }
command -v nghttp >/dev/null || { echo "SKIP: nghttp missing (Debian package nghttp2-client)"; exit 77; }
start_sim
app_port=$(free_port)
start_app app "$app_port"

health_of() { curl -s -o /dev/null -w '%{http_code}' --max-time 5 "http://127.0.0.1:$1/enclave/health" || true; }

run_enclave() { # NAME: an enclave with a health listener and a 4 s grace; sets pub, hp
    pub=$(free_port)
    hp=$(free_port)
    start_enclave "$1" --listen "tcp:127.0.0.1:$pub" -intport "$(free_port)" -appwebsrv "http://127.0.0.1:$app_port" \
        -health-listen "tcp:127.0.0.1:$hp" -drain-grace 4 -drain-timeout 10
    wait_for_log "$1" 'event=listening listener=public'
}

# ---- SIGTERM -------------------------------------------------------------------------------------
run_enclave enclave
[ "$(health_of "$hp")" = 200 ] || fail "health before the drain: $(health_of "$hp")"
curl -sk --http1.1 --max-time 5 -D "$work/before.h" -o /dev/null "https://127.0.0.1:$pub/hello"
if grep -qi '^connection: close' "$work/before.h"; then fail "Connection: close before any drain"; fi
# an HTTP/2 connection open before the signal, and a slow request in flight across the whole drain
c0=$(curl -s --max-time 5 "http://127.0.0.1:$app_port/count" | sed -n 's/.*"requests":\([0-9]*\).*/\1/p')
nghttp -v "https://127.0.0.1:$pub/slow?ms=6000" >"$work/h2.out" 2>&1 &
h2_client=$!
curl -sk --http1.1 --max-time 30 -o "$work/slow.body" -w '%{http_code}' "https://127.0.0.1:$pub/slow?ms=6000" >"$work/slow.code" &
slow_client=$!
# both requests must have reached the app before the signal (each /count counts itself too)
app_requests() { curl -s --max-time 5 "http://127.0.0.1:$app_port/count" | sed -n 's/.*"requests":\([0-9]*\).*/\1/p'; }
k=0
until [ "$(app_requests)" -ge $((c0 + 2 + (k += 1))) ] 2>/dev/null; do
    [ "$k" -lt 400 ] || fail "the two slow requests did not reach the app"
    sleep 0.05
done
kill -TERM "${pids[enclave]}"
wait_for_log enclave 'event=draining'
[ "$(health_of "$hp")" = 503 ] || fail "health during the grace: $(health_of "$hp")"
curl -s --max-time 5 "http://127.0.0.1:$hp/enclave/health" | has '"draining"' || fail "health body during the grace"
# still accepting, but the connection ends with the response
code=$(curl -sk --http1.1 --max-time 5 -D "$work/during.h" -o /dev/null -w '%{http_code}' "https://127.0.0.1:$pub/hello")
[ "$code" = 200 ] || fail "a new connection during the grace: $code"
grep -qi '^connection: close' "$work/during.h" || fail "no Connection: close during the grace: $(cat "$work/during.h")"
grep -q 'drain_accepting_stopped' "$work/enclave.log" && fail "the grace ended before it should have"
pass "SIGTERM: health 503 for the grace, new connections still accepted, each response closes its connection"
wait_for_log enclave 'event=drain_accepting_stopped' 200
wait "$h2_client" || fail "the HTTP/2 stream in flight failed: $(tail -20 "$work/h2.out")"
grep -q 'recv GOAWAY' "$work/h2.out" || fail "no GOAWAY on the HTTP/2 connection during the grace"
grep -q ':status: 200' "$work/h2.out" || fail "the HTTP/2 stream did not finish"
wait "$slow_client" || true
[ "$(cat "$work/slow.code")" = 200 ] || fail "the request in flight: $(cat "$work/slow.code")"
if curl -sk --max-time 2 -o /dev/null "https://127.0.0.1:$pub/hello" 2>/dev/null; then fail "still accepting after the grace"; fi
status=0
wait "${pids[enclave]}" || status=$?
unset 'pids[enclave]'
[ "$status" = 0 ] || fail "exit status after the drain: $status"
pass "after the grace: no new connections, GOAWAY'd HTTP/2 and HTTP/1.1 requests in flight finished (200), exit 0"

# ---- POST /enclave/drain (health listener only) ------------------------------------------------
run_enclave asked
code=$(curl -sk --max-time 5 -o /dev/null -w '%{http_code}' -X POST "https://127.0.0.1:$pub/enclave/drain")
sleep 0.3
grep -q 'event=draining' "$work/asked.log" && fail "a POST /enclave/drain on the public listener drained (answer $code)"
[ "$(curl -s -o /dev/null -w '%{http_code}' -X GET "http://127.0.0.1:$hp/enclave/drain")" = 405 ] || fail "GET /enclave/drain"
[ "$(curl -s -o /dev/null -w '%{http_code}' -X POST "http://127.0.0.1:$hp/enclave/drain")" = 202 ] || fail "POST /enclave/drain"
wait_for_log asked 'event=draining .*by="POST /enclave/drain"'
[ "$(health_of "$hp")" = 503 ] || fail "health after POST /enclave/drain"
status=0
wait "${pids[asked]}" || status=$?
unset 'pids[asked]'
[ "$status" = 0 ] || fail "exit status after POST /enclave/drain: $status"
pass "POST /enclave/drain on the health listener drains as SIGTERM does (exit 0); on the public listener it does not"

# ---- no health listener: no grace --------------------------------------------------------------
pub=$(free_port)
start_enclave plain --listen "tcp:127.0.0.1:$pub" -intport "$(free_port)" -appwebsrv "http://127.0.0.1:$app_port"
wait_for_log plain 'event=listening listener=public'
kill -TERM "${pids[plain]}"
wait_for_log plain 'event=draining .*grace_s=0'
wait "${pids[plain]}"
unset 'pids[plain]'
pass "without -health-listen the drain starts at once (grace 0)"
