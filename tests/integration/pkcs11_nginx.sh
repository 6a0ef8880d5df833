#!/usr/bin/env bash
# The PKCS#11 token end to end, in a `cloister dev`-style set-up on one
# machine: the key-holder (the simulated enclave's key process, supervised
# by `cloister watchdog`) holds the keys; `p11-kit server` serves
# libcloister-pkcs11.so on a unix socket (vsock's stand-in); Debian's nginx
# loads p11-kit's client module through OpenSSL's pkcs11 engine and serves
# HTTPS on 127.0.0.1 with ECDSA P-256, P-384 and RSA-2048 keys it never
# holds.  Checked: curl verifies the chains (TLS 1.3 and 1.2), p11probe and
# pkcs11-tool through the RPC and directly, PIN lock-out, token expiry,
# the provisioning socket's separation, a killed key-holder (handshakes
# fail cleanly, the watchdog brings it back), and a rotation under
# continuous load that loses no request.
set -euo pipefail
source "$(dirname "$0")/common.bash"

BUILD=${CLOISTER_BUILD_DIR:?}
MODULE=$BUILD/libcloister-pkcs11.so
PROBE=$BUILD/tests/p11probe
CLIENT=/usr/lib/x86_64-linux-gnu/pkcs11/p11-kit-client.so
ENGINE=/usr/lib/x86_64-linux-gnu/engines-3/pkcs11.so
for need in nginx p11-kit pkcs11-tool curl openssl python3; do
    command -v "$need" >/dev/null || { echo "skip: $need not installed (scripts/deps.sh)"; exit 77; }
done
[ -e "$CLIENT" ] && [ -e "$ENGINE" ] || { echo "skip: p11-kit-modules or libengine-pkcs11-openssl missing"; exit 77; }
[ -e "$MODULE" ] && [ -x "$PROBE" ] || fail "build the module and p11probe first"

PIN=4711-pin
echo "$PIN" >"$work/pin"
mkdir -p "$work/keys" "$work/nginx/tmp"

# ---- keys and certificates: a CA, and leaves for each key type ----------------------------
openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -keyout "$work/ca.key" -out "$work/ca.pem" \
    -subj "/CN=cloister test CA" -days 2 2>/dev/null
leaf() { # NAME KEYGEN-ARGS...
    local name=$1
    shift
    openssl req -new -newkey "$@" -nodes -keyout "$work/keys/$name.pem" -out "$work/$name.csr" -subj /CN=localhost 2>/dev/null
    openssl x509 -req -in "$work/$name.csr" -CA "$work/ca.pem" -CAkey "$work/ca.key" -CAcreateserial -days 2 \
        -extfile <(printf 'subjectAltName=DNS:localhost\nkeyUsage=digitalSignature,keyEncipherment\n') \
        -out "$work/$name.crt" 2>/dev/null
    cat "$work/$name.crt" "$work/ca.pem" >"$work/$name.chain.pem"
}
leaf p256 ec -pkeyopt ec_paramgen_curve:P-256
leaf p384 ec -pkeyopt ec_paramgen_curve:P-384
leaf rsa rsa:2048
leaf p256b ec -pkeyopt ec_paramgen_curve:P-256 # the rotation's new key

# ---- the key-holder under the watchdog ----------------------------------------------------
KH=$work/kh.sock PROV=$work/prov.sock
kh_cmd="exec '$CLOISTER' keyholder serve --debug --socket unix:$KH --provision unix:$PROV --key-dir '$work/keys'"
for t in p256 p384 rsa; do
    kh_cmd+=" --token $t,key=$t.pem,cert='$work/$t.chain.pem',pin-file='$work/pin'"
done
spawn watchdog "$CLOISTER" watchdog --enclave-command "$kh_cmd" --health-connect "unix:$KH" \
    --health-interval 500ms --backoff-initial 1500ms --restart-budget 5
wait_for_log watchdog 'to=running'
kh_pid() { pgrep -P "${pids[watchdog]}" | head -n1; }
[ -n "$(kh_pid)" ] || fail "no key-holder process under the watchdog"
pass "key-holder up under the watchdog with 3 tokens"

"$CLOISTER" keyholder status --provision "unix:$PROV" >"$work/status.txt"
[ "$(grep -c '^token=' "$work/status.txt")" = 3 ] || fail "status: $(cat "$work/status.txt")"
pass "keyholder status lists the tokens"

# ---- the module directly ------------------------------------------------------------------
export CLOISTER_KEYHOLDER=unix:$KH
for t in p256 p384 rsa; do
    "$PROBE" "$MODULE" check "$t" "$PIN" >"$work/probe-$t.txt" 2>&1 || { cat "$work/probe-$t.txt"; fail "p11probe check $t (direct)"; }
done
"$PROBE" "$MODULE" args >"$work/probe-args.txt" 2>&1 || { cat "$work/probe-args.txt"; fail "p11probe args"; }
pass "module directly: every mechanism signs/decrypts and verifies, keys sensitive, unsupported calls refused"
if [ -e "$BUILD/libcloister-pkcs11-asan.so" ] && [ -x "$BUILD/tests/p11probe_asan" ]; then
    for t in p256 p384 rsa; do
        ASAN_OPTIONS=detect_leaks=1:abort_on_error=1 "$BUILD/tests/p11probe_asan" "$BUILD/libcloister-pkcs11-asan.so" \
            check "$t" "$PIN" >"$work/asan-$t.txt" 2>&1 || { cat "$work/asan-$t.txt"; fail "p11probe check $t (ASan)"; }
    done
    ASAN_OPTIONS=detect_leaks=1:abort_on_error=1 "$BUILD/tests/p11probe_asan" "$BUILD/libcloister-pkcs11-asan.so" args \
        >"$work/asan-args.txt" 2>&1 || { cat "$work/asan-args.txt"; fail "p11probe args (ASan)"; }
    pass "the same checks against the module built with ASan+UBSan (leak detection on): clean"
fi

# a key-holder that is absent, or answers garbage, gives CKR_DEVICE_ERROR and no crash
CLOISTER_KEYHOLDER=unix:$work/absent.sock "$PROBE" "$MODULE" down >"$work/down.txt" 2>&1 ||
    { cat "$work/down.txt"; fail "absent key-holder"; }
python3 - "$work/garbage.sock" <<'EOF' &
import os, socket, struct, sys
s = socket.socket(socket.AF_UNIX); s.bind(sys.argv[1]); s.listen(8)
replies = [b'\x7f', struct.pack('>I', 100) + b'short', struct.pack('>I', 2) + b'\x80\x00',
           struct.pack('>I', 3) + b'\x80\xff\xff', b'']
for r in replies * 4:
    c, _ = s.accept()
    try:
        c.recv(65536); c.sendall(r)
    except OSError:
        pass
    c.close()
EOF
pids[garbage]=$!
for _ in $(seq 100); do [ -S "$work/garbage.sock" ] && break; sleep 0.05; done
for _ in 1 2; do
    CLOISTER_KEYHOLDER=unix:$work/garbage.sock "$PROBE" "$MODULE" down >"$work/down.txt" 2>&1 ||
        { cat "$work/down.txt"; fail "garbage from the key-holder"; }
done
kill "${pids[garbage]}" 2>/dev/null || true
pass "key-holder absent or answering garbage (bad type, short frame, truncated lists): CKR_DEVICE_ERROR, no crash"

# ---- p11-kit server, as in the enclave (unix socket instead of vsock) -----------------------
P11SOCK=$work/p11.sock
spawn p11kit p11-kit server -f --provider "$MODULE" -n "$P11SOCK" "pkcs11:"
for _ in $(seq 100); do [ -S "$P11SOCK" ] && break; sleep 0.05; done
[ -S "$P11SOCK" ] || fail "p11-kit server did not create its socket"
export P11_KIT_SERVER_ADDRESS=unix:path=$P11SOCK
for t in p256 p384 rsa; do
    "$PROBE" "$CLIENT" check "$t" "$PIN" --rpc >"$work/rpc-$t.txt" 2>&1 || { cat "$work/rpc-$t.txt"; fail "p11probe check $t (RPC)"; }
done
pass "through p11-kit RPC: the same checks; ECDSA_SHA*/SHA256_RSA_PKCS_PSS are not carried by the RPC (as documented)"

pkcs11-tool --module "$CLIENT" -L >"$work/tool-L.txt" 2>&1
for t in p256 p384 rsa; do grep -q "token label *: $t\$" "$work/tool-L.txt" || fail "pkcs11-tool -L: no $t"; done
pkcs11-tool --module "$CLIENT" --token-label rsa -M >"$work/tool-M.txt" 2>&1
for m in ECDSA RSA-PKCS RSA-PKCS-PSS SHA256-RSA-PKCS RSA-X-509 RSA-PKCS-OAEP; do
    grep -q "^  $m," "$work/tool-M.txt" || fail "pkcs11-tool -M: no $m"
done
echo "cloister pkcs11 test message" >"$work/msg"
pkcs11-tool --module "$CLIENT" --token-label p256 --login --pin "$PIN" --sign -m ECDSA --label p256 \
    -i <(openssl dgst -sha256 -binary "$work/msg") -o "$work/msg.sig" --signature-format openssl >/dev/null 2>&1 ||
    fail "pkcs11-tool --sign"
openssl x509 -in "$work/p256.crt" -pubkey -noout >"$work/p256.pub"
openssl dgst -sha256 -verify "$work/p256.pub" -signature "$work/msg.sig" "$work/msg" >/dev/null || fail "pkcs11-tool's signature"
pkcs11-tool --module "$CLIENT" --token-label rsa --login --pin "$PIN" -O --type privkey >"$work/tool-O.txt" 2>&1
grep -q "Access: *sensitive" "$work/tool-O.txt" && ! grep "Access:" "$work/tool-O.txt" | has extractable ||
    fail "pkcs11-tool: private key not sensitive/non-extractable: $(cat "$work/tool-O.txt")"
if pkcs11-tool --module "$CLIENT" --token-label rsa --login --pin "$PIN" --read-object --type privkey --label rsa \
    -o "$work/stolen.der" >/dev/null 2>&1 && [ -s "$work/stolen.der" ]; then
    fail "pkcs11-tool read a private key"
fi
pass "pkcs11-tool lists tokens and mechanisms, signs (OpenSSL verifies), shows the key sensitive, cannot read it"

# ---- nginx with the three keys through the engine -------------------------------------------
cat >"$work/openssl.cnf" <<EOF
openssl_conf = openssl_init
[openssl_init]
engines = engine_section
[engine_section]
pkcs11 = pkcs11_section
[pkcs11_section]
engine_id = pkcs11
dynamic_path = $ENGINE
MODULE_PATH = $CLIENT
init = 1
EOF
export OPENSSL_CONF=$work/openssl.cnf
declare -A port
for t in p256 p384 rsa; do port[$t]=$(free_port); done
nginx_conf() { # writes nginx.conf with the p256 server's chain file $1
    {
        # workers as root: p11-kit server's unix socket admits one uid (-u), and the master
        # (root) and the workers both connect; over vsock on Nitro there is no such check
        echo "daemon off; user root; worker_processes 2; pid $work/nginx/nginx.pid;"
        echo "error_log $work/nginx/error.log info; env P11_KIT_SERVER_ADDRESS;"
        echo "events { worker_connections 512; }"
        echo "http { access_log off; ssl_protocols TLSv1.2 TLSv1.3; ssl_session_cache off; ssl_session_tickets off;"
        echo "  client_body_temp_path $work/nginx/tmp; proxy_temp_path $work/nginx/tmp; fastcgi_temp_path $work/nginx/tmp;"
        echo "  uwsgi_temp_path $work/nginx/tmp; scgi_temp_path $work/nginx/tmp;"
        for t in p256 p384 rsa; do
            local chain=$work/$t.chain.pem
            [ "$t" = p256 ] && chain=$1
            echo "  server { listen 127.0.0.1:${port[$t]} ssl; ssl_certificate $chain;"
            echo "    ssl_certificate_key \"engine:pkcs11:pkcs11:token=$t;object=$t;type=private?pin-value=$PIN\";"
            echo "    location / { return 200 \"$t ok\\n\"; } }"
        done
        echo "}"
    } >"$work/nginx/nginx.conf"
}
nginx_conf "$work/p256.chain.pem"
spawn nginx nginx -p "$work/nginx" -e "$work/nginx/error.log" -c "$work/nginx/nginx.conf"
for _ in $(seq 100); do
    curl -s --cacert "$work/ca.pem" "https://localhost:${port[p256]}/" --resolve "localhost:${port[p256]}:127.0.0.1" \
        >/dev/null 2>&1 && break
    kill -0 "${pids[nginx]}" 2>/dev/null || { cat "$work/nginx/error.log"; fail "nginx exited"; }
    sleep 0.1
done
get() { # TOKEN [curl args]: one HTTPS request, chain verified against the CA
    local t=$1
    shift
    curl -sS --max-time 10 --cacert "$work/ca.pem" "$@" "https://localhost:${port[$t]}/" \
        --resolve "localhost:${port[$t]}:127.0.0.1"
}
for t in p256 p384 rsa; do
    [ "$(get $t --tlsv1.3)" = "$t ok" ] || fail "TLS 1.3 with $t"
    [ "$(get $t --tlsv1.2 --tls-max 1.2)" = "$t ok" ] || fail "TLS 1.2 with $t"
done
pass "nginx serves HTTPS with P-256, P-384 and RSA-2048 keys in the key-holder; curl verifies the chains (TLS 1.3 and 1.2)"

# RSA: which raw operations the engine asks for, as the key-holder logs them
before=$(grep -c 'event=sign op=' "$work/watchdog.log" || true)
for sig in "-tls1_3" "-tls1_2 -sigalgs RSA-PSS+SHA256" "-tls1_2 -sigalgs RSA+SHA256"; do
    # shellcheck disable=SC2086
    openssl s_client -connect "127.0.0.1:${port[rsa]}" -servername localhost $sig -CAfile "$work/ca.pem" \
        -verify_return_error </dev/null >"$work/sclient.txt" 2>&1 || fail "openssl s_client $sig: $(tail -3 "$work/sclient.txt")"
done
ops=$(grep 'event=sign op=' "$work/watchdog.log" | tail -n +"$((before + 1))" | sed 's/.*op=\([a-z0-9-]*\).*/\1/' | sort | uniq -c | awk '{printf "%s%s x%s", (NR > 1 ? ", " : ""), $2, $1}')
grep -q "op=rsa-pss\|op=rsa-x509" "$work/watchdog.log" || fail "RSA-PSS handshakes used no PSS/raw operation: $ops"
pass "RSA: TLS 1.3 (PSS) and TLS 1.2 (PSS and PKCS#1) through the engine; key-holder operations: $ops"

# ---- the provisioning socket is separate and typed ------------------------------------------
python3 - "$KH" "$PROV" <<'EOF' || fail "socket separation"
import socket, struct, sys
def call(path, body):
    s = socket.socket(socket.AF_UNIX); s.connect(path)
    s.sendall(struct.pack('>I', len(body)) + body)
    hdr = s.recv(4)
    if len(hdr) < 4: return None
    n = struct.unpack('>I', hdr)[0]; data = b''
    while len(data) < n: data += s.recv(n - len(data))
    return data
put = b'\x41' + struct.pack('>H', 3) + b'web' + struct.pack('>H', 4) + b'1234' + struct.pack('>H', 3) + b'web' + b'\x01' + struct.pack('>I', 1) + b'x' + struct.pack('>I', 0)
assert call(sys.argv[1], put) == b'\x81' + struct.pack('>I', 2), "token socket accepted a provisioning message"
assert call(sys.argv[2], b'\x01') == b'\x81' + struct.pack('>I', 2), "provisioning socket accepted a token message"
assert call(sys.argv[1], b'\x05\x00') == b'\x81' + struct.pack('>I', 1), "truncated sign not refused as malformed"
s = socket.socket(socket.AF_UNIX); s.connect(sys.argv[1]); s.sendall(struct.pack('>I', 1 << 30))
assert s.recv(4) == b'', "an oversized frame did not close the connection"
kms = b'\x41' + struct.pack('>H', 3) + b'kms' + struct.pack('>H', 4) + b'1234' + struct.pack('>H', 3) + b'kms' + b'\x02' + struct.pack('>I', 4) + b'ciph' + struct.pack('>I', 0)
assert call(sys.argv[2], kms) == b'\x81' + struct.pack('>I', 14), "a KMS-ciphertext key was not refused as not implemented"
EOF
pass "token and provisioning sockets accept only their own messages; bad frames refused; KMS source not implemented (refused)"

# ---- PIN lock-out on its own token ----------------------------------------------------------
"$CLOISTER" keyholder put --provision "unix:$PROV" --token locktest --pin-file "$work/pin" --key p384.pem \
    --chain "$work/p384.chain.pem" >/dev/null || fail "put locktest"
"$PROBE" "$CLIENT" lockout locktest "$PIN" 5 >"$work/lock.txt" 2>&1 || { cat "$work/lock.txt"; fail "lock-out"; }
"$CLOISTER" keyholder status --provision "unix:$PROV" | has '^token=locktest .* locked' || fail "status: not locked"
"$CLOISTER" keyholder put --provision "unix:$PROV" --token locktest --pin-file "$work/pin" --key p384.pem \
    --chain "$work/p384.chain.pem" >/dev/null || fail "put locktest again"
"$PROBE" "$CLIENT" sign locktest "$PIN" 3 >/dev/null 2>&1 || fail "a re-provisioned token is still locked"
"$CLOISTER" keyholder delete --provision "unix:$PROV" --token locktest >/dev/null || fail "delete"
pass "5 wrong PINs lock the token (CKR_PIN_LOCKED, also for the right PIN); provisioning again unlocks it"

# ---- token expiry (a second key-holder with --token-ttl) ------------------------------------
spawn kh_ttl "$CLOISTER" keyholder serve --socket "unix:$work/ttl.sock" --provision "unix:$work/ttlprov.sock" \
    --key-dir "$work/keys" --token-ttl 1500ms
wait_for_log kh_ttl 'keyholder: ready'
"$CLOISTER" keyholder put --provision "unix:$work/ttlprov.sock" --token ttl --pin-file "$work/pin" --key p256.pem \
    --chain "$work/p256.chain.pem" >/dev/null || fail "put ttl"
CLOISTER_KEYHOLDER=unix:$work/ttl.sock "$PROBE" "$MODULE" sign ttl "$PIN" 2 >/dev/null 2>&1 || fail "fresh token cannot sign"
sleep 1
"$CLOISTER" keyholder put --provision "unix:$work/ttlprov.sock" --token ttl --pin-file "$work/pin" --key p256.pem \
    --chain "$work/p256.chain.pem" | has 'generation=1' || fail "a refresh changed the generation"
sleep 1
CLOISTER_KEYHOLDER=unix:$work/ttl.sock "$PROBE" "$MODULE" sign ttl "$PIN" 2 >/dev/null 2>&1 || fail "refreshed token expired"
sleep 2
if CLOISTER_KEYHOLDER=unix:$work/ttl.sock "$PROBE" "$MODULE" sign ttl "$PIN" 2 >"$work/ttl.txt" 2>&1; then
    fail "an expired token still signs"
fi
grep -q 'event=token_expired token=ttl' "$work/kh_ttl.log" || fail "no token_expired log"
stop kh_ttl
pass "a refresh (same key) keeps the generation and the token alive; without one it expires and its key is wiped"

# ---- killing the key-holder: clean failures, the watchdog brings it back --------------------
old=$(kh_pid)
kill -KILL "$old"
start=$(date +%s%N)
if get p256 >/dev/null 2>&1; then fail "a handshake succeeded with the key-holder dead"; fi
elapsed=$(( ($(date +%s%N) - start) / 1000000 ))
[ "$elapsed" -lt 5000 ] || fail "the failing handshake took ${elapsed} ms"
grep -q 'p11-kit: .*\|SSL_do_handshake() failed\|PKCS#11' "$work/nginx/error.log" || true
back=0
for _ in $(seq 100); do
    if [ "$(get p256 2>/dev/null)" = "p256 ok" ]; then back=1; break; fi
    sleep 0.1
done
[ "$back" = 1 ] || fail "handshakes did not recover after the watchdog's restart"
[ "$(kh_pid)" != "$old" ] || fail "same key-holder pid"
for t in p384 rsa; do [ "$(get $t)" = "$t ok" ] || fail "$t after the restart"; done
pass "key-holder killed: the handshake failed cleanly in ${elapsed} ms; the watchdog restarted it and nginx recovered"

# ---- rotation under continuous load: no request lost ----------------------------------------
start_handshake_load "${port[p256]}" 50 60
sleep 1
"$CLOISTER" keyholder put --provision "unix:$PROV" --token p256 --pin-file "$work/pin" --key p256b.pem \
    --chain "$work/p256b.chain.pem" | has 'generation=2' || fail "rotation put"
nginx_conf "$work/p256b.chain.pem"
nginx -p "$work/nginx" -e "$work/nginx/error.log" -c "$work/nginx/nginx.conf" -s reload 2>"$work/reload.txt" ||
    fail "nginx -s reload: $(cat "$work/reload.txt")"
finish_handshake_load 300
served=$(openssl s_client -connect "127.0.0.1:${port[p256]}" -servername localhost </dev/null 2>/dev/null |
    openssl x509 -noout -fingerprint -sha256)
want=$(openssl x509 -in "$work/p256b.crt" -noout -fingerprint -sha256)
[ "$served" = "$want" ] || fail "after the rotation nginx serves $served, not the new certificate"
openssl s_client -connect "127.0.0.1:${port[p256]}" -servername localhost -CAfile "$work/ca.pem" -verify_return_error \
    </dev/null >/dev/null 2>&1 || fail "the new chain does not verify"
pass "rotation (new key and certificate, nginx -s reload) under $load_total fresh handshakes from 2 clients: none failed; the new certificate is served"

stop nginx || true
stop p11kit || true
stop watchdog || true
# the watchdog restarted the key-holder exactly once (the kill above), never on its own
starts=$(grep -c 'event=enclave_state from=[a-z]* to=starting' "$work/watchdog.log" || true)
[ "$starts" = 2 ] || fail "the key-holder was started $starts times (expected 2: the start and after the kill)"
if grep -q 'AddressSanitizer\|runtime error:\|LeakSanitizer' "$work"/*.log; then
    fail "sanitizer report: $(grep -h 'AddressSanitizer\|runtime error:\|LeakSanitizer' "$work"/*.log | head -3)"
fi
grep -q 'event=stopped keys=wiped' "$work/watchdog.log" || fail "the key-holder did not wipe its keys on exit"
pass "key-holder wipes its keys on SIGTERM"
