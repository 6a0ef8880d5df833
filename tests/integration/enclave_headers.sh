#!/usr/bin/env bash
# What reaches the app in a request head, and what a response head may be
# (issue 11, item 5), over HTTP/1.1 and HTTP/2, against an app that shows
# the head byte for byte (tests/integration/app/raw_app.py):
#  - client-sent forwarding fields, in any case and with '_' for '-', are
#    dropped: the app sees only the X-Forwarded-* cloister writes;
#  - "Connection: host" does not make Host disappear;
#  - HTTP/2 requests with a :scheme other than https, an absolute URI in
#    :path or userinfo in :authority are refused (400), as the HTTP/1.1
#    parser refuses an absolute-form target and userinfo in Host;
#  - a response head between 16 KiB and -max-header-bytes is passed on,
#    one beyond the limit is answered 502 at once (not 504 after
#    -app-timeout).
set -euo pipefail
source "$(dirname "$0")/common.bash"

for tool in curl nghttp; do
    command -v "$tool" >/dev/null || { echo "SKIP: $tool missing (Debian packages curl, nghttp2-client)"; exit 77; }
done
curl --version | has HTTP2 || { echo "SKIP: this curl has no HTTP/2"; exit 77; }

start_sim
app_port=$(free_port)
pub=$(free_port)
spawn app python3 "$SOURCE_DIR/tests/integration/app/raw_app.py" "$app_port"
wait_for_log app 'raw_app: listening'
start_enclave enclave --listen "tcp:127.0.0.1:$pub" -intport "$(free_port)" \
    -appwebsrv "http://127.0.0.1:$app_port" --app-timeout 30 --max-header-bytes 65536
wait_for_log enclave 'event=listening listener=public'
base="https://127.0.0.1:$pub"

# ---- forwarding fields ------------------------------------------------------------
spoof=(-H 'X-Forwarded-For: 6.6.6.6' -H 'X_Forwarded_For: 6.6.6.6' -H 'x_forwarded_for: 6.6.6.6'
    -H 'Forwarded: for=6.6.6.6' -H 'X-Real-IP: 6.6.6.6' -H 'X_Real_IP: 6.6.6.6' -H 'True-Client-IP: 6.6.6.6'
    -H 'X-Forwarded-Proto: gopher' -H 'X_FORWARDED_HOST: evil.example' -H 'X-Forwarded-Port: 6666'
    -H 'Client-IP: 6.6.6.6' -H 'CF-Connecting-IP: 6.6.6.6' -H 'Content_Length: 5' -H 'X-Keep-Me: yes')
for proto in --http1.1 --http2; do
    seen=$(curl -sSk "$proto" --max-time 20 "${spoof[@]}" "$base/echo") || fail "$proto: GET /echo failed"
    if grep -qiE '6\.6\.6\.6|gopher|evil\.example|6666|^forwarded|^x-real|^client-ip|^true-client|^cf-|^content_length' <<<"$seen"; then
        fail "$proto: a client-sent forwarding field reached the app: $seen"
    fi
    grep -qi '^x-forwarded-for: 127\.0\.0\.1' <<<"$seen" || fail "$proto: no X-Forwarded-For from cloister: $seen"
    grep -qi '^x-forwarded-proto: https' <<<"$seen" || fail "$proto: no X-Forwarded-Proto from cloister: $seen"
    [ "$(grep -ci '^x-forwarded-for:' <<<"$seen")" = 1 ] || fail "$proto: more than one X-Forwarded-For: $seen"
    grep -qi '^x-keep-me: yes' <<<"$seen" || fail "$proto: an ordinary field was dropped: $seen"
done
pass "X-Forwarded-*, X_Forwarded_For, Forwarded, X-Real-IP and kin from the client never reach the app (h1, h2)"

# ---- Connection: host ---------------------------------------------------------------
seen=$(curl -sSk --http1.1 --max-time 20 -H 'Connection: host, content-length' "$base/echo") ||
    fail "GET with Connection: host failed"
[ "$(grep -ci "^host: 127\.0\.0\.1:$pub" <<<"$seen")" = 1 ] || fail "Connection: host made Host disappear: $seen"
code=$(curl -sSk --http1.1 --max-time 20 -o /dev/null -w '%{http_code}' -H 'Connection: content-length' \
    -X POST --data-binary hello "$base/upload")
[ "$code" = 200 ] || fail "Connection: content-length broke a POST: $code"
pass "Connection: host / content-length leave Host and the framing alone"

# ---- HTTP/2 pseudo-headers ------------------------------------------------------------
# prints the response's :status, or "reset" for a RST_STREAM (nghttp2's
# own checks refuse some heads that way before cloister sees them)
h2_status() {
    nghttp -n -v "$@" 2>&1 | awk '/recv \(stream_id=[0-9]+\) :status:/ { print $NF; found = 1; exit }
                                  /recv RST_STREAM/ { reset = 1 }
                                  END { if (!found) print reset ? "reset" : "none" }'
}
refused() {
    local got
    got=$(h2_status "$@")
    [ "$got" = 400 ] || [ "$got" = reset ]
}
[ "$(h2_status "$base/echo")" = 200 ] || fail "nghttp GET /echo: no 200"
refused -H ':scheme: http' "$base/echo" || fail ":scheme http was not refused"
refused -H ':scheme: gopher' "$base/echo" || fail ":scheme gopher was not refused"
refused -H ':path: http://evil.example/echo' "$base/echo" ||
    fail "an absolute URI in :path was not refused"
refused -H ':path: echo' "$base/echo" || fail "a :path without its slash was not refused"
refused -H ":authority: user:pw@127.0.0.1:$pub" "$base/echo" ||
    fail "userinfo in :authority was not refused"
refused -H ':authority: evil.example' -H 'host: user@evil.example' "$base/echo" ||
    fail "userinfo in host was not refused"
pass "HTTP/2: :scheme other than https, absolute :path, userinfo in :authority refused (400 or RST_STREAM)"

# the HTTP/1.1 equivalents, on a raw connection (curl would rewrite them)
raw_status() {
    python3 - "$pub" "$1" <<'PY'
import socket, ssl, sys
ctx = ssl.create_default_context()
ctx.check_hostname = False
ctx.verify_mode = ssl.CERT_NONE
s = ctx.wrap_socket(socket.create_connection(("127.0.0.1", int(sys.argv[1]))), server_hostname="localhost")
s.settimeout(20)
s.sendall(sys.argv[2].encode().replace(b"|", b"\r\n"))
print(s.recv(4096).split(b" ", 2)[1].decode())
PY
}
[ "$(raw_status 'GET http://evil.example/echo HTTP/1.1|Host: localhost||')" = 400 ] ||
    fail "HTTP/1.1: an absolute-form target was not refused"
[ "$(raw_status 'GET /echo HTTP/1.1|Host: user@localhost||')" = 400 ] || fail "HTTP/1.1: userinfo in Host not refused"
[ "$(raw_status 'GET /echo HTTP/1.1|Host: localhost||')" = 200 ] || fail "HTTP/1.1: a plain GET was not answered"
pass "HTTP/1.1: absolute-form target and userinfo in Host refused with 400"

# ---- large response heads -------------------------------------------------------------
for proto in --http1.1 --http2; do
    code=$(curl -sSk "$proto" --max-time 15 -o /dev/null -w '%{http_code}' "$base/bighead?n=20000" || echo "none")
    [ "$code" = 200 ] || fail "$proto: a 20 KB response head under -max-header-bytes 65536: $code (504 is the old 16 KiB buffer)"
    code=$(curl -sSk "$proto" --max-time 15 -o /dev/null -w '%{http_code}' "$base/bighead?n=70000" || echo "none")
    [ "$code" = 502 ] || fail "$proto: a 70 KB response head over -max-header-bytes 65536: $code, not 502 at once"
done
pass "a 20 KB response head is passed on under a 64 KiB limit, a 70 KB one is 502 at once (h1, h2)"
