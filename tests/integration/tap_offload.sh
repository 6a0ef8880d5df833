#!/usr/bin/env bash
# The offload extension of the TAP stream (docs/tap.md, "The offload
# extension"), end to end in three namespaces (tap/setup.bash) with cloister
# on both sides:
#   - cloister tap offers it in POST /connect, cloister host --tap accepts;
#     both log it and the relay's metrics say so
#   - 50 MB each way through tap0 arrive intact (sha256), and outbound the
#     relay moved superframes (more bytes per record than a 1514-byte frame)
#   - the egress policy still judges every outbound record: the download's
#     server is allowed by name (learned from the gateway's DNS answers, which
#     come back as records), a denied port and an address no rule allows are
#     dropped and counted
#   - cloister host --tap-offload off: the offer is refused, plain framing,
#     transfers intact
#   - a parent that accepts and then sends a bad virtio header (UFO, which
#     is never offered) has its stream closed, the relay lives and reconnects
set -euo pipefail
source "$(dirname "$0")/common.bash"
source "$(dirname "$0")/tap/setup.bash"
[ "$TAP_PEER" = cloister ] || { echo "skip: needs cloister tap"; exit 77; }

make_namespaces
start_internet_dns
web=$(free_port)
start_web web "$web"
web2=$(free_port)
spawn web2 ip netns exec "$INS" python3 -m http.server --bind "$NET_IP" --directory "$work/www" "$web2"
head -c 50000000 /dev/urandom >"$work/www/big.bin"
want=$(sha256sum "$work/www/big.bin" | cut -d' ' -f1)
upl=$(free_port)
# the upload sink: sha256 of everything a client sends, written back at its EOF
spawn sink ip netns exec "$INS" python3 -u -c '
import hashlib, socket, sys, threading
ls = socket.socket(); ls.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
ls.bind((sys.argv[1], int(sys.argv[2]))); ls.listen(4)
print("sink listening", flush=True)
def one(c):
    h = hashlib.sha256()
    while True:
        b = c.recv(1 << 20)
        if not b: break
        h.update(b)
    c.sendall(h.hexdigest().encode()); c.close()
while True:
    c, _ = ls.accept(); threading.Thread(target=one, args=(c,), daemon=True).start()
' "$NET_IP" "$upl"
wait_for_log sink 'sink listening'
cat >"$work/policy.yaml" <<POLICY
egress:
  allow:
    - "web.test:$web"
    - "$NET_IP:$upl"
POLICY

upload() { # sha256 as the sink saw it of $work/www/big.bin sent from the enclave
    in_e timeout 60 python3 -c '
import socket, sys
s = socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=30)
with open(sys.argv[3], "rb") as f:
    while True:
        b = f.read(1 << 20)
        if not b: break
        s.sendall(b)
s.shutdown(socket.SHUT_WR)
print(s.makefile().read())
' "$NET_IP" "$upl" "$work/www/big.bin"
}
download() {
    in_e curl -sf --max-time 60 "http://web.test:$web/big.bin" | sha256sum | cut -d' ' -f1
}
metric() {
    in_e curl -sS -m 5 http://127.0.0.1:9101/metrics | awk -v k="$1" '$1 == k { print $2 }'
}

# ---- agreed ---------------------------------------------------------------------------------
start_host host
start_peer --metrics tcp:127.0.0.1:9101 --egress-policy "$work/policy.yaml"
wait_for_log peer 'event=tap_connected'
grep -q 'event=tap_connected.*offload=vnet-v1' "$work/peer.log" ||
    fail "the relay did not agree on the offload extension: $(grep tap_connected "$work/peer.log")"
wait_for_log host 'event=tap-connected.*offload=vnet-v1'
[ "$(metric cloister_tap_offload)" = 1 ] || fail "cloister_tap_offload is not 1"
[ "$(metric cloister_tap_offload_streams_total)" = 1 ] || fail "cloister_tap_offload_streams_total is not 1"
pass "offload extension agreed (both logs, metrics)"

curl_e "http://web.test:$web/hello.txt" >/dev/null || fail "no HTTP by name through tap0 (DNS learned with offloads)"
got=$(download)
[ "$got" = "$want" ] || fail "50 MB download through tap0 with offloads: sha256 $got, want $want"
pass "50 MB download intact"
f0=$(metric cloister_tap_frames_out_total) b0=$(metric cloister_tap_bytes_out_total)
got=$(upload) || fail "upload failed"
[ "$got" = "$want" ] || fail "50 MB upload through tap0 with offloads: sha256 $got, want $want"
f1=$(metric cloister_tap_frames_out_total) b1=$(metric cloister_tap_bytes_out_total)
avg=$(( (b1 - b0) / (f1 - f0) ))
[ "$avg" -gt 1514 ] || fail "outbound records average $avg bytes: no superframes went out"
pass "50 MB upload intact, outbound records average $avg bytes (superframes)"
[ "$(metric cloister_tap_vnet_refused_total)" = 0 ] || fail "the relay refused its own kernel's headers"

# ---- the egress policy still judges every record ---------------------------------------------
port0=$(metric 'cloister_egress_dropped_total{reason="port"}')
na0=$(metric 'cloister_egress_dropped_total{reason="not_allowed"}')
in_e curl -sf --max-time 2 "http://$NET_IP:$web2/hello.txt" >/dev/null && fail "a denied port was reachable"
in_e curl -sf --max-time 2 "http://$PARENT_IP:$web/hello.txt" >/dev/null && fail "an address no rule allows was reachable"
[ "$(metric 'cloister_egress_dropped_total{reason="port"}')" -gt "$port0" ] || fail "no drop counted for the denied port"
[ "$(metric 'cloister_egress_dropped_total{reason="not_allowed"}')" -gt "$na0" ] ||
    fail "no drop counted for the address no rule allows"
grep -q 'event=egress_drop' "$work/peer.log" || fail "no egress_drop logged"
[ "$(metric cloister_egress_learned_total)" -ge 1 ] || fail "nothing learned from DNS answers with offloads on"
pass "egress policy with offloads on: a name allowed through DNS answers, a denied port and an unlisted address dropped"

# ---- refused by the host: plain framing --------------------------------------------------------
stop host || true
start_host host2 --tap-offload off
wait_for_log peer 'offload=.none'
wait_for_log host2 'event=tap-connected.*offload=.offered, refused'
curl_e "http://web.test:$web/hello.txt" >/dev/null || fail "no HTTP through tap0 with plain framing"
got=$(download)
[ "$got" = "$want" ] || fail "download with plain framing: sha256 $got, want $want"
[ "$(metric cloister_tap_offload)" = 0 ] || fail "cloister_tap_offload is not 0 on a plain stream"
pass "--tap-offload off on the host: plain framing, 50 MB intact"

# ---- a parent that lies in its virtio headers ----------------------------------------------------
stop host2 || true
spawn evil ip netns exec "$PNS" python3 -u -c '
import os, socket, struct, sys
path = sys.argv[1]
try: os.unlink(path)
except FileNotFoundError: pass
ls = socket.socket(socket.AF_UNIX); ls.bind(path); ls.listen(4)
print("evil listening", flush=True)
for n in range(2):
    c, _ = ls.accept()
    head = b""
    while b"\r\n\r\n" not in head:
        b = c.recv(4096)
        if not b: break
        head += b
    print("offered" if b"Cloister-Tap-Offload: vnet-v1" in head else "not offered", flush=True)
    c.sendall(b"HTTP/1.1 200 OK\r\nCloister-Tap-Offload: vnet-v1\r\nContent-Length: 0\r\n\r\n")
    frame = bytes(6) + bytes(6) + b"\x08\x00" + bytes(60)
    hdr = struct.pack("<BBHHHH", 1, 3, 34, 1400, 34, 6)   # gso_type 3: UFO, never offered
    c.sendall(struct.pack("<I", len(hdr) + len(frame)) + hdr + frame)
    c.settimeout(10)
    try:
        while c.recv(4096): pass
        print("closed by the enclave", flush=True)
    except socket.timeout:
        print("still open", flush=True)
    c.close()
' "$TAPSOCK"
wait_for_log evil 'closed by the enclave'
grep -q offered "$work/evil.log" || fail "the relay did not offer"
wait_for_log peer 'event=tap_disconnected.*gso_type'
[ "$(metric cloister_tap_stream_errors_total)" -ge 1 ] || fail "the bad header was not counted as a stream error"
wait_for_log evil 'closed by the enclave.*' 
for _ in $(seq 1 100); do [ "$(grep -c 'closed by the enclave' "$work/evil.log")" -ge 2 ] && break; sleep 0.1; done
[ "$(grep -c 'closed by the enclave' "$work/evil.log")" -ge 2 ] || fail "the relay did not reconnect and close again"
kill -0 "${pids[peer]}" || fail "the relay died"
pass "a bad virtio header from the parent closes the stream; the relay lives and reconnects"
