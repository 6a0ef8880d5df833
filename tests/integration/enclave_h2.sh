#!/usr/bin/env bash
# cloister enclave over HTTP/2 (ALPN "h2" on TLS) in front of the Node test
# app: local routes (an attestation document fetched over h2 and verified),
# proxied requests and headers, 100 MB bodies each way streamed with flow
# control, a stalled client not making the daemon buffer, many concurrent
# streams on few connections (h2load), limits (431, 413), app failures
# (502, 504, a response cut short -> RST_STREAM), metrics once per stream,
# and a SIGTERM drain (GOAWAY, the stream in flight finishes).
set -euo pipefail
source "$(dirname "$0")/common.bash"

node_modules_present || { echo "SKIP: tests/node/node_modules missing (run scripts/node-deps.sh)"; exit 77; }
for tool in curl nghttp h2load; do
    command -v "$tool" >/dev/null || { echo "SKIP: $tool missing (Debian packages curl, nghttp2-client)"; exit 77; }
done
curl --version | has HTTP2 || { echo "SKIP: this curl has no HTTP/2"; exit 77; }

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
    --prometheus-listen "tcp:127.0.0.1:$metrics" --app-timeout 5 --drain-timeout 10
wait_for_log enclave 'event=listening listener=public'
base="https://127.0.0.1:$pub"
c() { curl -sS -k --http2 --max-time 60 "$@"; }
app_200s() {
    curl -sS "http://127.0.0.1:$metrics/metrics" |
        awk '$1 == "cloister_http_requests_total{route=\"app\",code=\"200\"}" { print $2; found = 1 }
             END { if (!found) print 0 }'
}

# ---- ALPN and local routes ------------------------------------------------------
version=$(c -o /dev/null -w '%{http_version}' "$base/enclave")
[ "$version" = 2 ] || fail "ALPN did not choose h2: HTTP version $version"
c "$base/enclave" | has 'Nitro Enclave' || fail "GET /enclave over h2"
nonce=$(head -c 20 /dev/urandom | od -An -tx1 | tr -d ' \n')
c -o "$work/doc.b64" -w '%{http_code}' "$base/enclave/attestation?nonce=$nonce" >"$work/code"
[ "$(cat "$work/code")" = 200 ] || fail "attestation over h2: status $(cat "$work/code")"
"$CLOISTER" attest verify --root "$work/state/root.pem" --nonce "$nonce" "$work/doc.b64" >"$work/verify.out" 2>&1 ||
    fail "the document fetched over h2 does not verify: $(cat "$work/verify.out")"
code=$(c -o /dev/null -w '%{http_code}' "$base/enclave/attestation?nonce=xyz")
[ "$code" = 400 ] || fail "bad nonce over h2: expected 400, got $code"
head_out=$(c -I "$base/enclave")
grep -qi '^content-length: [1-9]' <<<"$head_out" || fail "HEAD /enclave lacks its length: $head_out"
pass "ALPN h2; /enclave and an attestation document (verified, nonce bound) answered locally, HEAD and 400 too"

# ---- proxied requests ---------------------------------------------------------------
[ "$(c "$base/hello")" = "hello from the app" ] || fail "GET /hello over h2"
headers=$(c -H 'Cookie: a=1' -H 'Cookie: b=2' -H 'X-Forwarded-For: 6.6.6.6' -H 'X-Keep-Me: 2' -H 'TE: trailers' \
    "$base/echo-headers")
check_header() {
    node -e '
        const j = JSON.parse(process.argv[1]);
        const [name, want] = [process.argv[2], process.argv[3]];
        const got = name === "httpVersion" ? j.httpVersion : j.headers[name];
        if (want === "<absent>" ? got !== undefined : got !== want) {
            console.error(`${name}: got ${JSON.stringify(got)}, want ${want}`);
            process.exit(1);
        }' "$headers" "$1" "$2" || fail "header $1 as the app saw it: $headers"
}
check_header httpVersion 1.1
check_header host "127.0.0.1:$pub"
check_header cookie 'a=1; b=2'
check_header x-forwarded-for 127.0.0.1
check_header x-forwarded-proto https
check_header x-forwarded-host "127.0.0.1:$pub"
check_header x-keep-me 2
check_header te '<absent>'
check_header content-length '<absent>'
check_header transfer-encoding '<absent>'
resp=$(c -D - -o /dev/null "$base/status?code=503")
grep -q '^HTTP/2 503' <<<"$resp" || fail "app status over h2: $resp"
grep -qi '^connection:\|^keep-alive:\|^transfer-encoding:' <<<"$resp" && fail "hop-by-hop response headers over h2: $resp"
pass "proxied as HTTP/1.1: Host from :authority, cookies joined, X-Forwarded-* set, hop-by-hop fields dropped"

# ---- a client that stops reading ----------------------------------------------------
# The daemon must hold the app back, not buffer the body: measured before any
# other large body went through, so that a heap grown earlier cannot hide it.
rss() { awk '/^VmRSS/ { print $2 }' "/proc/${pids[enclave]}/status"; }
rss_before=$(rss)
( c "$base/bytes?n=$BIG&seed=3" | { sleep 3; sha256sum | cut -c1-64 >"$work/stalled.sum"; } ) &
stalled=$!
sleep 2
rss_stalled=$(rss)
wait "$stalled" || fail "the stalled download failed"
[ "$(cat "$work/stalled.sum")" = "$(node "$APP/app.js" --gen "$BIG" 3 | sha256sum | cut -c1-64)" ] ||
    fail "the stalled download: checksum"
[ $((rss_stalled - rss_before)) -lt 32768 ] ||
    fail "a stalled client made the daemon grow by $((rss_stalled - rss_before)) KiB"
pass "a stalled h2 client backpressures the app (daemon RSS $rss_before -> $rss_stalled KiB), then completes"

# ---- 100 MB each way -----------------------------------------------------------------
want=$(node "$APP/app.js" --gen "$BIG" 7 | sha256sum | cut -c1-64)
got=$(c -D "$work/len.h" "$base/bytes?n=$BIG&seed=7" | sha256sum | cut -c1-64)
[ "$got" = "$want" ] || fail "h2 download with Content-Length: checksum"
grep -qi "^content-length: $BIG" "$work/len.h" || fail "Content-Length not passed on: $(cat "$work/len.h")"
got=$(c -D "$work/chunked.h" "$base/bytes?n=$BIG&seed=7&chunked=1" | sha256sum | cut -c1-64)
[ "$got" = "$want" ] || fail "h2 download of a chunked response: checksum"
grep -qi '^content-length\|^transfer-encoding' "$work/chunked.h" && fail "framing headers on h2: $(cat "$work/chunked.h")"
pass "$BIG-byte downloads over h2 intact (Content-Length kept; chunked framing gone)"

node "$APP/app.js" --gen "$BIG" 9 >"$work/upload.bin"
want=$(sha256sum <"$work/upload.bin" | cut -c1-64)
answer=$(c --data-binary @"$work/upload.bin" "$base/upload")
grep -q "\"bytes\":$BIG,\"sha256\":\"$want\".*\"chunked\":false" <<<"$answer" || fail "h2 upload with a length: $answer"
answer=$(c -T - -X POST "$base/upload" <"$work/upload.bin")
grep -q "\"bytes\":$BIG,\"sha256\":\"$want\".*\"chunked\":true" <<<"$answer" || fail "h2 upload without a length: $answer"
rm -f "$work/upload.bin"
pass "$BIG-byte uploads over h2 intact (with Content-Length; without, sent on chunked)"

# ---- many streams ----------------------------------------------------------------------
before=$(app_200s)
h2load -n 2000 -c 4 -m 32 "$base/hello" >"$work/h2load.out" 2>&1 || fail "h2load: $(tail -5 "$work/h2load.out")"
grep -q '2000 succeeded, 0 failed, 0 errored, 0 timeout' "$work/h2load.out" ||
    fail "h2load: $(grep -E 'requests:|status codes:' "$work/h2load.out")"
grep -q 'status codes: 2000 2xx' "$work/h2load.out" || fail "h2load: $(grep 'status codes:' "$work/h2load.out")"
after=$(app_200s)
[ $((after - before)) = 2000 ] || fail "metrics counted $((after - before)) requests for 2000 streams"
h2load -n 400 -c 2 -m 64 "$base/enclave" >"$work/h2load2.out" 2>&1 || fail "h2load /enclave"
grep -q '400 succeeded, 0 failed, 0 errored' "$work/h2load2.out" || fail "h2load /enclave: $(grep 'requests:' "$work/h2load2.out")"
nghttp -n "$base/hello" "$base/bytes?n=1000000&seed=1" "$base/enclave" "$base/echo-headers" "$base/slow?ms=200" \
    >"$work/nghttp.out" 2>&1 ||
    fail "nghttp: several streams at once on one connection"
pass "2000 streams on 4 connections (32 at a time) and 400 local ones: 0 failed; metrics count each stream once"

# ---- limits ------------------------------------------------------------------------------
big_header=$(head -c 20000 /dev/zero | tr '\0' a)
code=$(c -o /dev/null -w '%{http_code}' -H "X-Big: $big_header" "$base/hello")
[ "$code" = 431 ] || fail "oversized head over h2: expected 431, got $code"
head -c 100000 /dev/zero >"$work/100k"
code=$(c -o /dev/null -w '%{http_code}' --data-binary @"$work/100k" "$base/enclave")
[ "$code" = 413 ] || fail "oversized body for a local route over h2: expected 413, got $code"
code=$(c -o /dev/null -w '%{http_code}' -T - -X POST "$base/enclave" <"$work/100k")
[ "$code" = 413 ] || fail "oversized body without a length for a local route: expected 413, got $code"
[ "$(c "$base/hello")" = "hello from the app" ] || fail "a normal request after the limits"
pass "oversized head -> 431, oversized local body -> 413 (with and without a length)"

# ---- app failures ---------------------------------------------------------------------------
code=$(c -o /dev/null -w '%{http_code}' "$base/slow?ms=8000")
[ "$code" = 504 ] || fail "slow app over h2: expected 504, got $code"
code=$(c -o /dev/null -w '%{http_code}' "$base/abort")
[ "$code" = 502 ] || fail "app closing without an answer over h2: expected 502, got $code"
# the app dies in the middle of a response: the stream is reset, not ended
status=0
( c "$base/bytes?n=$BIG&seed=5" | { sleep 1; cat >/dev/null; } ) 2>"$work/cut.err" &
cut_client=$!
sleep 0.5
stop app || true
wait "$cut_client" || status=$?
[ "$status" != 0 ] || fail "a response cut short by the app ended as if complete"
grep -qi 'stream\|HTTP/2\|partial' "$work/cut.err" || fail "cut-short response: $(cat "$work/cut.err")"
resp=$(c -w ' %{http_code} %{http_version}' "$base/hello")
[[ "$resp" == "502 Bad Gateway"*" 502 2" ]] || fail "app down over h2: expected 502, got $resp"
pass "app too slow -> 504, no answer -> 502, cut short -> RST_STREAM, app down -> 502"
start_app app2 "$app_port" # a new log name: wait_for_log must not see the first app's line
[ "$(c "$base/hello")" = "hello from the app" ] || fail "app back over h2"

# ---- SIGTERM drain -------------------------------------------------------------------------------
nghttp -v "$base/slow?ms=1500" >"$work/drain.out" 2>&1 &
drain_client=$!
sleep 0.5
kill -TERM "${pids[enclave]}"
wait "$drain_client" || fail "the stream in flight failed during the drain: $(tail -20 "$work/drain.out")"
grep -q 'recv GOAWAY' "$work/drain.out" || fail "no GOAWAY during the drain"
grep -q ':status: 200' "$work/drain.out" || fail "the stream in flight did not finish: $(tail -20 "$work/drain.out")"
status=0
wait "${pids[enclave]}" || status=$?
unset 'pids[enclave]'
[ "$status" = 0 ] || fail "enclave exit status after SIGTERM: $status"
pass "SIGTERM: GOAWAY sent, the h2 stream in flight finished (200), the daemon exited 0"
