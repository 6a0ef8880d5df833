#!/usr/bin/env bash
# An HTTP/1.1 request body that keeps arriving is not cut at -idle-timeout
# (issue 11, item 4): one byte every 100 ms for 2.5 s with -idle-timeout 1
# completes; a body that stops is cut at the idle timeout (the connection
# closes without an answer; the app's own timeout, far longer, would have
# answered 504).
set -euo pipefail
source "$(dirname "$0")/common.bash"

start_sim
app_port=$(free_port)
pub=$(free_port)
spawn app python3 "$SOURCE_DIR/tests/integration/app/raw_app.py" "$app_port"
wait_for_log app 'raw_app: listening'
start_enclave enclave --listen "tcp:127.0.0.1:$pub" -intport "$(free_port)" \
    -appwebsrv "http://127.0.0.1:$app_port" --idle-timeout 1 --app-timeout 60 --disable-http2
wait_for_log enclave 'event=listening listener=public'

# upload BYTES STALL_AFTER: sends a POST of BYTES body bytes, one every 100
# ms, stopping for good after STALL_AFTER of them (-1: never); prints what
# came back ("closed" if the connection ended without a response).
upload() {
    python3 - "$pub" "$1" "$2" <<'PY'
import socket, ssl, sys, time
port, total, stall_after = int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3])
ctx = ssl.create_default_context()
ctx.check_hostname = False
ctx.verify_mode = ssl.CERT_NONE
s = ctx.wrap_socket(socket.create_connection(("127.0.0.1", port)), server_hostname="localhost")
s.settimeout(20)
s.sendall(b"POST /upload HTTP/1.1\r\nHost: localhost\r\nContent-Length: %d\r\n\r\n" % total)
try:
    for i in range(total):
        if i == stall_after:
            break
        s.sendall(b"x")
        time.sleep(0.1)
except OSError:
    pass  # the daemon closed the connection: the answer (if any) says why
data = b""
try:
    while True:
        chunk = s.recv(4096)
        if not chunk:
            break
        data += chunk
        if b"\r\n\r\n" in data and data.endswith(b"\n") and b"bytes" in data:
            break
except (OSError, ssl.SSLError):
    pass
print(data.split(b"\r\n", 1)[0].decode() + " | " + data.rsplit(b"\r\n\r\n", 1)[-1].decode().strip() if data else "closed")
PY
}

out=$(upload 25 -1)
grep -q '^HTTP/1.1 200 .*got 25 bytes' <<<"$out" ||
    fail "a body trickling in for 2.5 s (one byte per 100 ms, -idle-timeout 1 s) was cut: $out"
pass "a slow HTTP/1.1 upload (2.5 s, a byte every 100 ms) completes with -idle-timeout 1: $out"

out=$(upload 25 3)
[ "$out" = closed ] || fail "a body that stopped coming was not cut at the idle timeout: $out"
pass "an upload that stalls is cut at the idle timeout (closed, no answer)"
