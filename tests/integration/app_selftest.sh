#!/usr/bin/env bash
# The proxy tests' peer app (tests/integration/app/app.js) checked on its own,
# with curl and ws_client.js straight at it: every endpoint, 100 MB bodies
# each way (Content-Length, chunked, 100-continue) against `app.js --gen`,
# keep-alive and /count, streaming, WebSocket echo, a unix socket listener,
# SIGTERM.  Does not need the cloister binary.
set -euo pipefail

src=${CLOISTER_SOURCE_DIR:-$(cd "$(dirname "$0")/../.." && pwd)}
app_dir=$src/tests/integration/app
app=$app_dir/app.js
ws_client=$app_dir/ws_client.js

command -v node >/dev/null || { echo "SKIP: node is not installed (scripts/deps.sh installs it)"; exit 77; }
[ -d "$src/tests/node/node_modules/ws" ] ||
    { echo "SKIP: $src/tests/node/node_modules/ws missing (run scripts/node-deps.sh)"; exit 77; }

work=$(mktemp -d /tmp/cloister-app-selftest.XXXXXX)
app_pid=
unix_pid=
bg_pid=

cleanup() {
    local status=$?
    for pid in $bg_pid $unix_pid $app_pid; do
        kill "$pid" 2>/dev/null || true
        wait "$pid" 2>/dev/null || true
    done
    if [ "$status" -ne 0 ]; then
        for log in "$work"/*.log; do
            [ -f "$log" ] || continue
            echo "--- $(basename "$log") ---" >&2
            tail -n 30 "$log" >&2
        done
    fi
    rm -rf "$work"
    exit "$status"
}
trap cleanup EXIT

fail() {
    echo "FAIL: $*" >&2
    exit 1
}
pass() { echo "ok   $*"; }

# wait_ready LOG PID: until LOG has the readiness line (or PID dies).
wait_ready() {
    for _ in $(seq 1 200); do
        grep -q '^app: listening on ' "$1" && return 0
        kill -0 "$2" 2>/dev/null || fail "app exited early: $(cat "$1")"
        sleep 0.05
    done
    fail "app did not report readiness"
}

sha() { sha256sum | cut -c1-64; }
now_ms() { date +%s%3N; }
# json EXPR: evaluates EXPR on the JSON on stdin (as `j`), prints the result.
json() { node -e 'let s="";process.stdin.on("data",d=>s+=d).on("end",()=>{const j=JSON.parse(s);console.log(eval(process.argv[1]))})' "$1"; }

# ---- usage ---------------------------------------------------------------------------
status=0
node "$app" 2>"$work/err" || status=$?
[ "$status" -eq 2 ] && grep -q -- '--listen' "$work/err" || fail "no --listen: exit $status, $(cat "$work/err")"
status=0
node "$app" --listen 127.0.0.1:99999 2>/dev/null || status=$?
[ "$status" -eq 2 ] || fail "port 99999: exit $status, expected 2"
node "$app" --help | grep -c -- '--gen N SEED' >/dev/null || fail "--help does not document --gen"
pass "usage errors exit 2"

# ---- the byte stream -----------------------------------------------------------------
[ "$(node "$app" --gen 0 1 | wc -c)" -eq 0 ] || fail "--gen 0 printed bytes"
[ "$(node "$app" --gen 100003 1 | wc -c)" -eq 100003 ] || fail "--gen 100003: wrong length"
[ "$(node "$app" --gen 1000 1 | sha)" = "$(node "$app" --gen 5000 1 | head -c 1000 | sha)" ] ||
    fail "--gen is not a prefix-stable stream"
[ "$(node "$app" --gen 1000 1 | sha)" != "$(node "$app" --gen 1000 2 | sha)" ] || fail "seeds 1 and 2 give the same bytes"
pass "--gen: exact lengths, deterministic prefix-stable stream, seed-dependent"

# ---- start on TCP --------------------------------------------------------------------
port=$(python3 -c 'import socket;s=socket.socket();s.bind(("127.0.0.1",0));print(s.getsockname()[1])')
node "$app" --listen "127.0.0.1:$port" >"$work/app.log" 2>&1 &
app_pid=$!
wait_ready "$work/app.log" "$app_pid"
grep -qx "app: listening on 127.0.0.1:$port" "$work/app.log" || fail "readiness line: $(head -1 "$work/app.log")"
base="http://127.0.0.1:$port"
c() { curl -sS --max-time 30 "$@"; }

[ "$(c "$base/hello")" = "hello from the app" ] || fail "GET /hello"
[ "$(c -o /dev/null -w '%{http_code}' "$base/nope")" = 404 ] || fail "unknown path is not 404"
pass "GET /hello, 404 elsewhere"

# ---- /echo-headers -------------------------------------------------------------------
c -H 'X-Test: one' -H 'Connection: keep-alive, X-Test' "$base/echo-headers?q=1" >"$work/eh.json"
[ "$(json 'j.method+" "+j.url+" "+j.httpVersion' <"$work/eh.json")" = "GET /echo-headers?q=1 1.1" ] ||
    fail "echo-headers request line: $(cat "$work/eh.json")"
[ "$(json 'j.headers["x-test"]+" "+j.headers.connection+" "+j.remoteAddress' <"$work/eh.json")" = \
    "one keep-alive, X-Test 127.0.0.1" ] || fail "echo-headers headers: $(cat "$work/eh.json")"
[ "$(json 'j.rawHeaders.some(([n,v])=>n==="X-Test"&&v==="one")' <"$work/eh.json")" = true ] ||
    fail "echo-headers rawHeaders: $(cat "$work/eh.json")"
pass "GET /echo-headers reports method, url, version, headers as received, remote address"

# ---- downloads -----------------------------------------------------------------------
BIG=$((100 * 1024 * 1024))
want=$(node "$app" --gen "$BIG" 7 | sha)
t0=$(now_ms)
got=$(c -D "$work/h1" "$base/bytes?n=$BIG&seed=7" | sha)
t1=$(now_ms)
[ "$got" = "$want" ] || fail "download with Content-Length: checksum"
grep -qi "^content-length: $BIG" "$work/h1" || fail "no Content-Length: $(cat "$work/h1")"
got=$(c -D "$work/h2" "$base/bytes?n=$BIG&seed=7&chunked=1" | sha)
[ "$got" = "$want" ] || fail "chunked download: checksum"
grep -qi '^transfer-encoding: chunked' "$work/h2" || fail "chunked=1 is not chunked: $(cat "$work/h2")"
! grep -qi '^content-length' "$work/h2" || fail "chunked=1 has a Content-Length"
[ "$(c "$base/bytes?n=0&seed=7" | wc -c)" -eq 0 ] || fail "n=0 sent bytes"
[ "$(c "$base/bytes?n=12345&seed=x" | sha)" = "$(node "$app" --gen 12345 x | sha)" ] || fail "n=12345 seed=x"
[ "$(c -o /dev/null -w '%{http_code}' "$base/bytes?n=-1")" = 400 ] || fail "n=-1 is not 400"
pass "GET /bytes: 100 MB with Content-Length ($((BIG / 1024 / 1024 * 1000 / (t1 - t0 + 1))) MB/s) and chunked match --gen"

# ---- uploads -------------------------------------------------------------------------
node "$app" --gen "$BIG" 9 >"$work/upload.bin"
want=$(sha <"$work/upload.bin")
answer=$(c -H 'Expect:' --data-binary @"$work/upload.bin" "$base/upload")
echo "$answer" | grep -q "\"bytes\":$BIG,\"sha256\":\"$want\"" || fail "upload with Content-Length: $answer"
echo "$answer" | grep -q '"chunked":false' || fail "Content-Length upload seen as chunked: $answer"
answer=$(c -H 'Transfer-Encoding: chunked' --data-binary @"$work/upload.bin" "$base/upload")
echo "$answer" | grep -q "\"bytes\":$BIG,\"sha256\":\"$want\"" || fail "chunked upload: $answer"
echo "$answer" | grep -q '"chunked":true' || fail "chunked upload not seen as chunked: $answer"
answer=$(c -v --expect100-timeout 20 -H 'Expect: 100-continue' -X PUT --data-binary @"$work/upload.bin" \
    "$base/upload" 2>"$work/continue.txt")
echo "$answer" | grep -q "\"sha256\":\"$want\",\"method\":\"PUT\"" || fail "PUT with 100-continue: $answer"
grep -q '^< HTTP/1.1 100 Continue' "$work/continue.txt" || fail "no 100 Continue sent"
rm -f "$work/upload.bin"
answer=$(c --data-binary '' "$base/upload")
[ "$answer" = '{"bytes":0,"sha256":"e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855","method":"POST","chunked":false}' ] ||
    fail "empty upload: $answer"
[ "$(c -o /dev/null -w '%{http_code}' "$base/upload")" = 405 ] || fail "GET /upload is not 405"
pass "POST/PUT /upload: 100 MB with Content-Length, chunked and 100-continue hash right; empty body; 405 for GET"

# ---- /slow, /status --------------------------------------------------------------------
t0=$(now_ms)
[ "$(c "$base/slow?ms=300")" = slow ] || fail "GET /slow"
t1=$(now_ms)
[ $((t1 - t0)) -ge 300 ] || fail "/slow?ms=300 answered after $((t1 - t0)) ms"
[ "$(c -o /dev/null -w '%{http_code}' "$base/slow?ms=x")" = 400 ] || fail "/slow?ms=x is not 400"
[ "$(c -w ' %{http_code}' "$base/status?code=503")" = "status 503
 503" ] || fail "/status?code=503"
[ "$(c -w '%{http_code}' "$base/status?code=204")" = 204 ] || fail "/status?code=204"
[ "$(c -o /dev/null -w '%{http_code}' "$base/status?code=42")" = 400 ] || fail "/status?code=42 is not 400"
pass "GET /slow waits, GET /status answers with the status asked for"

# ---- streaming -------------------------------------------------------------------------
# The app waits 100 ms between ticks, so five ticks take at least 400 ms however
# busy the machine is: a lower bound, not a timing assertion.
for p in sse stream; do
    t0=$(date +%s%N)
    body=$(c -N "$base/$p")
    t1=$(date +%s%N)
    [ "$body" = "$(printf 'tick\ntick\ntick\ntick\ntick')" ] || fail "/$p body: $body"
    [ $(((t1 - t0) / 1000000)) -ge 400 ] || fail "/$p took $(((t1 - t0) / 1000000)) ms for ticks 100 ms apart"
done
c -D "$work/h3" -o /dev/null "$base/sse"
grep -qi '^content-type: text/event-stream' "$work/h3" || fail "/sse content type"
pass "GET /sse and /stream write a tick every 100 ms"

# ---- keep-alive and /count -------------------------------------------------------------
# Each body ends in a newline and is followed by curl's count of new connections.
c "$base/count" "$base/hello" "$base/hello" "$base/count" -w '%{num_connects}\n' >"$work/count.txt"
first=$(sed -n 1p "$work/count.txt")
last=$(sed -n 7p "$work/count.txt")
[ "$(sed -n '4p;6p;8p' "$work/count.txt" | tr -d '\n')" = 000 ] ||
    fail "curl did not reuse its connection: $(cat "$work/count.txt")"
r1=$(echo "$first" | json 'j.requests')
c1=$(echo "$first" | json 'j.connections')
r2=$(echo "$last" | json 'j.requests')
c2=$(echo "$last" | json 'j.connections')
[ "$r2" -eq $((r1 + 3)) ] && [ "$c2" -eq "$c1" ] || fail "/count: $first then $last"
c3=$(c "$base/count" | json 'j.connections')
[ "$c3" -eq $((c1 + 1)) ] || fail "/count: a new connection is not counted ($c1 -> $c3)"
pass "keep-alive: 4 requests on one connection; /count tells requests and connections ($r2, $c2)"

# ---- WebSocket ---------------------------------------------------------------------------
out=$(node "$ws_client" "ws://127.0.0.1:$port/ws" one 'two words' '') || fail "WebSocket text echo: $out"
[ "$out" = "text: one
text: two words
text: " ] || fail "WebSocket text echo printed: $out"
out=$(node "$ws_client" --binary --size 3000000 "ws://127.0.0.1:$port/ws" bin) || fail "WebSocket binary echo: $out"
echo "$out" | grep -q '^binary: 3000000 bytes sha256=' || fail "WebSocket binary echo printed: $out"
status=0
node "$ws_client" "ws://127.0.0.1:$port/elsewhere" x >/dev/null 2>"$work/err" || status=$?
[ "$status" -eq 1 ] && grep -q 'HTTP 404' "$work/err" || fail "WebSocket on a wrong path: exit $status, $(cat "$work/err")"
# A server that accepts and never answers: ws_client times out.
python3 -c '
import socket, time
s = socket.socket(); s.bind(("127.0.0.1", 0)); s.listen(4)
print(s.getsockname()[1], flush=True)
c, _ = s.accept(); time.sleep(30)' >"$work/mute.port" &
bg_pid=$!
for _ in $(seq 1 100); do [ -s "$work/mute.port" ] && break; sleep 0.05; done
status=0
node "$ws_client" --timeout 500 "ws://127.0.0.1:$(cat "$work/mute.port")/ws" x >/dev/null 2>"$work/err" || status=$?
[ "$status" -eq 1 ] && grep -q 'timeout' "$work/err" || fail "ws_client against a mute server: exit $status, $(cat "$work/err")"
kill "$bg_pid" 2>/dev/null || true
wait "$bg_pid" 2>/dev/null || true
bg_pid=
[ "$(c "$base/count" | json 'j.websockets')" -ge 2 ] || fail "/count does not count WebSocket sessions"
pass "WebSocket /ws echoes text and binary; ws_client fails on a refused handshake and on a timeout"

# ---- unix socket ---------------------------------------------------------------------------
sock=$work/app.sock
node "$app" --listen "unix:$sock" >"$work/unix.log" 2>&1 &
unix_pid=$!
wait_ready "$work/unix.log" "$unix_pid"
grep -qx "app: listening on unix:$sock" "$work/unix.log" || fail "unix readiness line: $(head -1 "$work/unix.log")"
[ "$(c --unix-socket "$sock" http://app/hello)" = "hello from the app" ] || fail "GET /hello on the unix socket"
kill -TERM "$unix_pid"
status=0
wait "$unix_pid" || status=$?
unix_pid=
[ "$status" -eq 0 ] || fail "unix app exited $status after SIGTERM"
[ ! -e "$sock" ] || fail "socket file left behind"
pass "unix:PATH listener; SIGTERM removes the socket file"

# ---- SIGTERM with connections open -------------------------------------------------------------
curl -sS --max-time 30 "$base/slow?ms=20000" >/dev/null 2>&1 &
bg_pid=$!
sleep 0.2
t0=$(now_ms)
kill -TERM "$app_pid"
status=0
wait "$app_pid" || status=$?
t1=$(now_ms)
app_pid=
[ "$status" -eq 0 ] || fail "app exited $status after SIGTERM"
[ $((t1 - t0)) -lt 2000 ] || fail "app took $((t1 - t0)) ms to stop"
wait "$bg_pid" 2>/dev/null || true
bg_pid=
grep -q '^app: stopping on SIGTERM' "$work/app.log" || fail "no stop line"
pass "SIGTERM with a request in flight: exit 0 in $((t1 - t0)) ms"

echo "app_selftest: all checks passed"
