#!/usr/bin/env bash
# The enclave-parent link as on Nitro: vsock addresses through the vsock
# code (the unix stand-in only at the last bind/connect), MSG_PEEK failing
# with EOPNOTSUPP on the link as the 4.14 enclave kernel of nitro-cli 1.5.0
# answers on vsock (CLOISTER_LINK_NO_PEEK), splice failing with EINVAL on
# it (CLOISTER_LINK_NO_SPLICE).  The PROXY v2 header must then be read with
# ordinary reads, and the TLS bytes after it must still reach TLS: split
# anywhere, or in one segment with the header.
set -euo pipefail
source "$(dirname "$0")/common.bash"
command -v curl >/dev/null || { echo "skip: needs curl"; exit 77; }

export CLOISTER_VSOCK_STANDIN=$work/vsock CLOISTER_LINK_NO_PEEK=1 CLOISTER_LINK_NO_SPLICE=1
mkdir -p "$CLOISTER_VSOCK_STANDIN"
start_sim
int=$(free_port)
# the enclave is CID 16 and listens on VMADDR_CID_ANY, as on Nitro
CLOISTER_VSOCK_STANDIN_CID=16 start_enclave enclave --listen vsock:4294967295:443 -intport "$int" --proxy-protocol
wait_for_log enclave 'event=listening listener=public'
[ -S "$CLOISTER_VSOCK_STANDIN/16.443" ] || fail "the enclave's listener is not at the stand-in's 16.443"
pub=$(free_port)
CLOISTER_VSOCK_STANDIN_CID=3 spawn host "$CLOISTER" host --forward "tcp:127.0.0.1:$pub=vsock:16:443,proxy-protocol"
wait_for_log host 'event=started'

for i in 1 2 3; do
    curl -sk --max-time 10 "https://127.0.0.1:$pub/enclave" >"$work/out" 2>&1 || true
    grep -q 'inside an AWS Nitro Enclave' "$work/out" || fail "request $i through the host: $(cat "$work/out")"
done
body=$(curl -sk --max-time 10 -X POST --data-binary @/dev/null "https://127.0.0.1:$pub/enclave/ready" -o /dev/null \
    -w '%{http_code}') || true
[ -n "$body" ] && [ "$body" != 000 ] || fail "POST through the host got no answer"
pass "client -> host (PROXY v2) -> vsock:16:443 stand-in -> enclave, with MSG_PEEK and splice failing on the link"

# the same link named by its unix path: the host would splice, the seam makes
# splice from the link fail with EINVAL as vsock does, and it copies instead
pub2=$(free_port)
spawn host2 "$CLOISTER" host --forward "tcp:127.0.0.1:$pub2=unix:$CLOISTER_VSOCK_STANDIN/16.443,proxy-protocol"
wait_for_log host2 'event=started'
nonce=$(printf '%040d' 0 | tr 0 a)
for i in 1 2; do
    curl -sk --max-time 10 "https://127.0.0.1:$pub2/enclave/attestation?nonce=$nonce" -o "$work/att" \
        -w '%{http_code}' >"$work/code" 2>&1 || true
    [ "$(cat "$work/code")" = 200 ] && [ "$(stat -c %s "$work/att")" -gt 1000 ] ||
        fail "attestation through the splice-refusing host: $(cat "$work/code")"
done
stop host2 || true
pass "splice from the link refused (EINVAL): the host copies with read/write, whole responses arrive"

# Straight to the enclave's link, as the parent would write: the header
# byte by byte, then in two pieces, then in one segment with the ClientHello.
python3 - "$CLOISTER_VSOCK_STANDIN/16.443" <<'PY' || fail "direct PROXY v2 + TLS clients"
import socket, ssl, struct, sys, time
path = sys.argv[1]
def header():
    addrs = socket.inet_aton("203.0.113.7") + socket.inet_aton("10.0.0.1") + struct.pack("!HH", 40000, 443)
    return b"\r\n\r\n\x00\r\nQUIT\n" + bytes([0x21, 0x11]) + struct.pack("!H", len(addrs)) + addrs
def tls_over(sock, first=b""):
    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    inc, out = ssl.MemoryBIO(), ssl.MemoryBIO()
    t = ctx.wrap_bio(inc, out, server_hostname="localhost")
    pending = first
    def pump():
        nonlocal pending
        data = pending + out.read()
        pending = b""
        if data:
            sock.sendall(data)
    while True:
        try:
            t.do_handshake()
            break
        except ssl.SSLWantReadError:
            pump()
            chunk = sock.recv(65536)
            if not chunk:
                raise SystemExit("closed during the handshake")
            inc.write(chunk)
    t.write(b"GET /enclave HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
    pump()
    got = b""
    while b"inside an AWS Nitro Enclave" not in got:
        chunk = sock.recv(65536)
        if not chunk:
            break
        inc.write(chunk)
        try:
            got += t.read(65536)
        except ssl.SSLWantReadError:
            pass
        except ssl.SSLZeroReturnError:
            break
    if b"inside an AWS Nitro Enclave" not in got:
        raise SystemExit("no answer over TLS after the header: %r" % got[:200])
def connect():
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.settimeout(10)
    s.connect(path)
    return s
h = header()
s = connect()
for b in h:
    s.send(bytes([b]))
    time.sleep(0.002)
tls_over(s); s.close()
s = connect()
s.send(h[:7]); time.sleep(0.05); s.send(h[7:])
tls_over(s); s.close()
s = connect()
tls_over(s, first=h)  # the header and the ClientHello in one write
s.close()
PY
pass "PROXY v2 header byte by byte, in two pieces, and in one segment with the ClientHello: TLS follows"

# a header that is not PROXY v2 is still refused
python3 - "$CLOISTER_VSOCK_STANDIN/16.443" <<'PY' || fail "bad header not refused"
import socket, sys
s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
s.settimeout(10)
s.connect(sys.argv[1])
s.sendall(b"\x16\x03\x01\x00\x10" + b"\x00" * 16)
try:
    got = s.recv(100)
except ConnectionResetError:
    got = b""
if got != b"":
    raise SystemExit("the enclave answered a connection without a PROXY header")
PY
grep -q 'event=proxy_header_refused' "$work/enclave.log" || fail "no proxy_header_refused logged"
pass "a connection without the header is refused (logged)"
