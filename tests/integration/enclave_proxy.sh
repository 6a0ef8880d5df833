#!/usr/bin/env bash
# cloister enclave as a reverse proxy in front of the Node test app, over
# HTTP/1.1 on TLS: streamed 100 MB bodies each way, chunked uploads,
# 100-continue, WebSocket, forwarded and hop-by-hop headers, app failures
# (502, 504, recovery), slowloris and oversized heads not hurting others,
# 1,000 concurrent keep-alive connections, metrics, and a SIGTERM drain.
set -euo pipefail
source "$(dirname "$0")/common.bash"

node_modules_present || { echo "SKIP: tests/node/node_modules missing (run scripts/node-deps.sh)"; exit 77; }
ulimit -n 8192 2>/dev/null || true

APP="$SOURCE_DIR/tests/integration/app"
BIG=$((100 * 1024 * 1024))
if [ -n "${CLOISTER_TEST_SANITIZED:-}" ]; then
    BIG=$((20 * 1024 * 1024)) # the sanitized build is several times slower
fi

start_sim
app_port=$(free_port)
pub=$(free_port)
int=$(free_port)
metrics=$(free_port)
start_app app "$app_port"
start_enclave enclave --listen "tcp:127.0.0.1:$pub" -intport "$int" -appwebsrv "http://127.0.0.1:$app_port" \
    --prometheus-listen "tcp:127.0.0.1:$metrics" --header-timeout 2 --app-timeout 5 --drain-timeout 10
wait_for_log enclave 'event=listening listener=public'
base="https://127.0.0.1:$pub"
c() { curl -sS -k --http1.1 --max-time 60 "$@"; }

# ---- plain proxying and headers ---------------------------------------------
[ "$(c "$base/hello")" = "hello from the app" ] || fail "GET /hello through the proxy"
pass "GET proxied"

headers=$(c -H 'Connection: keep-alive, X-Drop-Me' -H 'X-Drop-Me: 1' -H 'Keep-Alive: timeout=5' \
    -H 'Proxy-Connection: keep-alive' -H 'TE: trailers' -H 'X-Keep-Me: 2' -H 'X-Forwarded-For: 6.6.6.6' \
    "$base/echo-headers")
check_header() {
    node -e '
        const h = JSON.parse(process.argv[1]).headers;
        const [name, want] = [process.argv[2], process.argv[3]];
        const got = h[name];
        if (want === "<absent>" ? got !== undefined : got !== want) {
            console.error(`${name}: got ${JSON.stringify(got)}, want ${want}`);
            process.exit(1);
        }' "$headers" "$1" "$2" || fail "forwarded header $1"
}
check_header x-forwarded-for 127.0.0.1
check_header x-forwarded-proto https
check_header x-forwarded-host "127.0.0.1:$pub"
check_header x-keep-me 2
for h in x-drop-me keep-alive proxy-connection te; do check_header "$h" '<absent>'; done
pass "X-Forwarded-* set (client's X-Forwarded-For replaced), hop-by-hop headers removed"

before=$(curl -sS "http://127.0.0.1:$app_port/count")
for _ in $(seq 1 20); do c "$base/hello" >/dev/null; done
after=$(curl -sS "http://127.0.0.1:$app_port/count")
node -e '
    const [a, b] = [JSON.parse(process.argv[1]), JSON.parse(process.argv[2])];
    // 20 client connections, one after another: without a pool, 20 app connections; with
    // it, one per worker thread (2 here), plus the direct /count connection of this check, plus
    // any pooled connection the app closed after its keep-alive timeout on a slow machine
    process.exit(b.connections - a.connections <= 8 ? 0 : 1);' "$before" "$after" ||
    fail "app connections are not pooled: before $before, after $after"
pass "keep-alive pool: 20 client connections, app connections reused ($before -> $after)"

# Clients that close right after their response (wrk with Connection: close, 4 at a time):
# the pool must still keep its app connections (a late ACK once closed 3 of 4 of them).
# Each wrk connection offers the ticket of the one before it (one SSL object,
# SSL_clear between connections): every TLS 1.3 resumption must hand out a
# fresh ticket, or every other handshake is a full one.
tls_counter() {
    curl -sS "http://127.0.0.1:$metrics/metrics" | awk -v m="cloister_tls_$1_total" '$1 == m { print $2 }'
}
if command -v wrk >/dev/null; then
    before=$(curl -sS "http://127.0.0.1:$app_port/count")
    hs0=$(tls_counter handshakes) resumed0=$(tls_counter resumptions)
    wrk -t1 -c4 -d2s -H 'Connection: close' "$base/hello" >"$work/wrk.out" 2>&1 || fail "wrk: $(cat "$work/wrk.out")"
    hs=$(($(tls_counter handshakes) - hs0)) resumed=$(($(tls_counter resumptions) - resumed0))
    [ "$hs" -ge 100 ] && [ $((resumed * 100)) -ge $((hs * 90)) ] ||
        fail "wrk Connection: close: only $resumed of $hs TLS handshakes resumed a session (want 90%)"
    pass "wrk Connection: close: $resumed of $hs TLS handshakes resumed a session"
    after=$(curl -sS "http://127.0.0.1:$app_port/count")
    node -e '
        const [a, b] = [JSON.parse(process.argv[1]), JSON.parse(process.argv[2])];
        const requests = b.requests - a.requests, conns = b.connections - a.connections;
        console.log(`${requests} requests on ${conns} new app connections`);
        process.exit(requests >= 100 && conns <= 16 ? 0 : 1);' "$before" "$after" >"$work/pool.out" ||
        fail "Connection: close clients: $(cat "$work/pool.out")"
    pass "Connection: close clients: $(cat "$work/pool.out") (the pool survives clients that hang up)"
else
    echo "skip: wrk is not installed (scripts/deps.sh installs it): Connection: close pool check"
    skipped_part="the Connection: close pool check (wrk is not installed)"
fi

# ---- bodies -------------------------------------------------------------------
want=$(node "$APP/app.js" --gen "$BIG" 7 | sha256sum | cut -c1-64)
got=$(c "$base/bytes?n=$BIG&seed=7" | sha256sum | cut -c1-64)
[ "$got" = "$want" ] || fail "download with Content-Length: checksum"
got=$(c "$base/bytes?n=$BIG&seed=7&chunked=1" | sha256sum | cut -c1-64)
[ "$got" = "$want" ] || fail "chunked download: checksum"
pass "$BIG-byte downloads (Content-Length and chunked) arrive intact"

node "$APP/app.js" --gen "$BIG" 9 >"$work/upload.bin"
want=$(sha256sum <"$work/upload.bin" | cut -c1-64)
answer=$(c -H 'Expect:' --data-binary @"$work/upload.bin" "$base/upload")
echo "$answer" | has "\"sha256\":\"$want\"" || fail "upload with Content-Length: $answer"
answer=$(c -H 'Transfer-Encoding: chunked' --data-binary @"$work/upload.bin" "$base/upload")
echo "$answer" | has "\"sha256\":\"$want\"" || fail "chunked upload: $answer"
answer=$(c -H 'Expect: 100-continue' --data-binary @"$work/upload.bin" "$base/upload")
echo "$answer" | has "\"sha256\":\"$want\"" || fail "upload with 100-continue: $answer"
rm -f "$work/upload.bin"
pass "$BIG-byte uploads (Content-Length, chunked, 100-continue) arrive intact"

# ---- WebSocket ----------------------------------------------------------------
out=$(node "$APP/ws_client.js" "wss://127.0.0.1:$pub/ws" one two three) || fail "WebSocket echo: $out"
pass "WebSocket upgrade passed through, messages echoed"

# ---- app failures ---------------------------------------------------------------
code=$(c -o /dev/null -w '%{http_code}' "$base/slow?ms=8000")
[ "$code" = 504 ] || fail "slow app: expected 504, got $code"
pass "app too slow -> 504"
stop app || true
code=$(c -o /dev/null -w '%{http_code}' "$base/hello")
[ "$code" = 502 ] || fail "app down: expected 502, got $code"
pass "app down -> 502"
start_app app "$app_port"
code=$(c -o /dev/null -w '%{http_code}' "$base/hello")
[ "$code" = 200 ] || fail "app back: expected 200, got $code"
pass "app back -> 200, the daemon stayed up"

# ---- hostile clients ---------------------------------------------------------------
spawn slowloris node "$APP/clients.js" slowloris "$pub" 6
for _ in 1 2 3 4 5; do
    [ "$(c "$base/hello")" = "hello from the app" ] || fail "a normal client during slowloris"
    sleep 0.2
done
wait "${pids[slowloris]}" || fail "slowloris connection not closed by the header timeout: $(cat "$work/slowloris.log")"
unset 'pids[slowloris]'
pass "slowloris cut off by the header timeout ($(cat "$work/slowloris.log")); others served meanwhile"

big_header=$(head -c 20000 /dev/zero | tr '\0' a)
code=$(c -o /dev/null -w '%{http_code}' -H "X-Big: $big_header" "$base/hello")
[ "$code" = 431 ] || fail "oversized head: expected 431, got $code"
[ "$(c "$base/hello")" = "hello from the app" ] || fail "a normal client after an oversized head"
pass "oversized head -> 431, others unaffected"

# With the default limits: the 2 s header budget above (handshake and first
# head) is for slowloris, not for 1000 handshakes on a busy machine.
pub2=$(free_port)
start_enclave enclave2 --listen "tcp:127.0.0.1:$pub2" -intport "$(free_port)" -appwebsrv "http://127.0.0.1:$app_port"
wait_for_log enclave2 'event=listening listener=public'
out=$(node "$APP/clients.js" many "$pub2" 1000 /hello) || fail "1000 keep-alive connections: $out"
stop enclave2 || fail "the second enclave did not stop cleanly"
pass "1000 concurrent keep-alive connections, two requests each ($out)"

# ---- metrics ---------------------------------------------------------------------
c "$base/enclave/attestation?nonce=$(head -c 20 /dev/urandom | od -An -tx1 | tr -d ' \n')" >/dev/null
m=$(curl -sS "http://127.0.0.1:$metrics/metrics")
for want in 'cloister_http_requests_total{route="app",code="200"}' \
    'cloister_http_requests_total{route="app",code="502"} 1' \
    'cloister_http_requests_total{route="app",code="504"} 1' \
    'cloister_http_requests_total{route="attestation",code="200"} 1' \
    'cloister_http_request_duration_seconds_bucket{route="app",le="+Inf"}' \
    'cloister_tls_handshakes_total' 'cloister_connections_open' 'cloister_attestations_total 1' \
    'cloister_app_restarts_total 0'; do
    grep -qF "$want" <<<"$m" || fail "metrics lack '$want'"
done
pass "Prometheus metrics by route class and status, handshakes, connections, attestations"

# ---- SIGTERM drain ------------------------------------------------------------------
c -o "$work/drained.txt" -w '%{http_code}' "$base/slow?ms=1500" >"$work/drained.code" &
slow_client=$!
sleep 0.5
kill -TERM "${pids[enclave]}"
wait "$slow_client" || fail "the request in flight failed during the drain"
[ "$(cat "$work/drained.code")" = 200 ] || fail "request in flight during drain: $(cat "$work/drained.code")"
status=0
wait "${pids[enclave]}" || status=$?
unset 'pids[enclave]'
[ "$status" = 0 ] || fail "enclave exit status after SIGTERM: $status"
grep -q 'event=stopped' "$work/enclave.log" || fail "no stopped event in the log"
if curl -sk --max-time 2 "$base/hello" >/dev/null 2>&1; then fail "still accepting after the drain"; fi
pass "SIGTERM: the request in flight finished (200), then the daemon exited 0"
# a check that could not run makes the test "skipped" (77) for CTest, never "passed"
if [ -n "${skipped_part:-}" ]; then
    echo "skip: $skipped_part"
    exit 77
fi
