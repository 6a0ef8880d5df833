#!/usr/bin/env bash
# cloister verify against a running cloister enclave: the proof holds, an
# independent check (openssl s_client for the certificate, the Node
# verifier for the document) agrees on the binding, and a man in the middle
# with another certificate, a replayed document, wrong PCRs, a foreign root
# and a debug-mode enclave are all refused.
set -euo pipefail
source "$(dirname "$0")/common.bash"
node_modules_present || { echo "skip: tests/node/node_modules is absent (run scripts/node-deps.sh)"; exit 77; }
command -v socat >/dev/null || { echo "skip: socat is not installed (scripts/deps.sh installs it)"; exit 77; }

start_sim
pub=$(free_port)
start_enclave enclave --listen "tcp:127.0.0.1:$pub" -intport "$(free_port)"
wait_for_log enclave 'event=listening listener=public'
root="$work/state/root.pem"
url="https://127.0.0.1:$pub"

# ---- the proof holds, and says what it proved ----------------------------------
"$CLOISTER" verify "$url" --root "$root" >"$work/verify.txt" 2>&1 || { cat "$work/verify.txt" >&2; fail "verify rejected a genuine enclave"; }
grep -q '^verdict: PROVEN' "$work/verify.txt" || fail "no PROVEN verdict: $(cat "$work/verify.txt")"
for field in module certificate nonce PCR0 PCR1 PCR2 'app key hash'; do
    grep -q "^  $field " "$work/verify.txt" || fail "the report lacks '$field'"
done
"$CLOISTER" verify "$url" --root "$root" --json >"$work/verify.json"
pass "cloister verify proves a genuine enclave (exit 0) and reports module, PCRs, certificate, app key hash"

# ---- an independent check agrees ------------------------------------------------
# The certificate the server presents, as openssl s_client sees it.
openssl s_client -connect "127.0.0.1:$pub" -servername localhost </dev/null 2>/dev/null |
    openssl x509 -outform DER >"$work/peer.der"
peer_sha=$(sha256sum <"$work/peer.der" | cut -c1-64)
# A document fetched with curl, checked by the Node verifier (no code shared with cloister).
nonce=$(head -c 20 /dev/urandom | od -An -tx1 | tr -d ' \n')
curl -sk "$url/enclave/attestation?nonce=$nonce" >"$work/doc.b64"
node "$SOURCE_DIR/tests/node/verify.js" --root "$root" --json "$work/doc.b64" >"$work/node.json" ||
    fail "the Node verifier rejected the document: $(cat "$work/node.json")"
node -e '
    const fs = require("fs");
    const [nodeOut, mine, peerSha, nonce] = process.argv.slice(1);
    const n = JSON.parse(fs.readFileSync(nodeOut, "utf8"));
    const m = JSON.parse(fs.readFileSync(mine, "utf8"));
    const problems = [];
    if (n.user_data.length !== 136) problems.push("user_data length " + n.user_data.length / 2);
    if (n.user_data.slice(0, 4) !== "1220" || n.user_data.slice(68, 72) !== "1220") problems.push("not multihash");
    if (n.user_data.slice(4, 68) !== peerSha) problems.push("Node: user_data names " + n.user_data.slice(4, 68) + ", s_client saw " + peerSha);
    if (m.certificate_sha256 !== peerSha) problems.push("cloister verify saw " + m.certificate_sha256 + ", s_client " + peerSha);
    if (n.nonce !== nonce) problems.push("nonce " + n.nonce + " is not " + nonce);
    if (n.pcrs["0"] !== m.pcrs["0"]) problems.push("PCR0 differs");
    if (!m.verified) problems.push("cloister --json says not verified");
    if (problems.length) { console.error(problems.join("; ")); process.exit(1); }
' "$work/node.json" "$work/verify.json" "$peer_sha" "$nonce" || fail "the independent check disagrees"
pass "openssl s_client's certificate, the Node verifier's user_data and cloister verify agree on the binding"

pcr0=$(node -e 'console.log(JSON.parse(require("fs").readFileSync(process.argv[1])).pcrs["0"])' "$work/verify.json")
"$CLOISTER" verify "$url" --root "$root" --pcr "0=$pcr0" >/dev/null || fail "the right PCR0 was refused"
set +e
"$CLOISTER" verify "$url" --root "$root" --pcr "0=$(printf 'ab%.0s' $(seq 48))" >"$work/out" 2>&1; status=$?
set -e
[ "$status" = 1 ] && grep -q 'PCR0' "$work/out" || fail "a wrong PCR0 was not refused (exit $status): $(cat "$work/out")"
pass "--pcr: the right PCR0 passes, a wrong one is refused naming PCR0 (exit 1)"

expect_refused() { # NAME PATTERN ARGS...: cloister verify must exit 1 with PATTERN in its output
    local name=$1 pattern=$2 status=0
    shift 2
    "$CLOISTER" verify "$@" >"$work/out" 2>&1 || status=$?
    [ "$status" = 1 ] || fail "$name: expected exit 1, got $status: $(cat "$work/out")"
    grep -q "$pattern" "$work/out" || fail "$name: expected /$pattern/ in: $(cat "$work/out")"
}

# ---- nonce validation on both listeners ------------------------------------------------
int_port=$(sed -n 's/.*event=listening listener=internal addr=tcp:127.0.0.1:\([0-9]*\).*/\1/p' "$work/enclave.log")
upper=$(head -c 20 /dev/urandom | od -An -tx1 | tr -d ' \n' | tr a-f A-F)
for base in "$url" "http://127.0.0.1:$int_port"; do
    code=$(curl -sk -o /dev/null -w '%{http_code}' "$base/enclave/attestation?nonce=$upper")
    [ "$code" = 200 ] || fail "$base: an upper-case nonce got $code"
    for bad in "" "nonce=" "nonce=${nonce:0:39}" "nonce=${nonce}0" "nonce=${nonce:0:38}zz" "nonce=${nonce:0:38}%00" \
               "nonce=${nonce:0:38}+0" "nonce=$nonce$nonce"; do
        code=$(curl -sk -o /dev/null -w '%{http_code}' "$base/enclave/attestation?$bad")
        [ "$code" = 400 ] || fail "$base: nonce query '$bad' got $code, not 400"
    done
done
pass "nonces: 40 hex digits of either case accepted; other lengths, characters and encodings get 400 (both listeners)"

# ---- refusals ---------------------------------------------------------------------
# The embedded AWS root does not vouch for the simulator.
expect_refused "foreign root" 'trusted root' "$url"

# A man in the middle: TLS terminated with another certificate, requests relayed to the enclave.
openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 1 -subj /CN=localhost \
    -keyout "$work/mitm.key" -out "$work/mitm.crt" 2>/dev/null
mitm=$(free_port)
spawn mitm socat "openssl-listen:$mitm,bind=127.0.0.1,reuseaddr,fork,cert=$work/mitm.crt,key=$work/mitm.key,verify=0" \
    "openssl:127.0.0.1:$pub,verify=0"
for _ in $(seq 1 100); do (exec 3<>"/dev/tcp/127.0.0.1/$mitm") 2>/dev/null && break; sleep 0.05; done
expect_refused "man in the middle" 'is not the one on this TLS connection' "https://127.0.0.1:$mitm" --root "$root"
stop mitm || true
pass "refused: a foreign root, and a relay presenting another certificate"

# A replayed document: the right certificate and key (a static identity this
# test knows), but a document captured earlier for another nonce.
openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 1 -subj /CN=localhost \
    -addext subjectAltName=DNS:localhost -keyout "$work/static.key" -out "$work/static.crt" 2>/dev/null
spub=$(free_port)
start_enclave static --listen "tcp:127.0.0.1:$spub" -intport "$(free_port)" --cert "$work/static.crt" --key "$work/static.key"
wait_for_log static 'event=listening listener=public'
"$CLOISTER" verify "https://127.0.0.1:$spub" --root "$root" >/dev/null || fail "the static identity was not proven"
old_nonce=$(head -c 20 /dev/urandom | od -An -tx1 | tr -d ' \n')
curl -sk "https://127.0.0.1:$spub/enclave/attestation?nonce=$old_nonce" >"$work/captured.b64"
stop static || true
replay=$(free_port)
spawn replay python3 -c '
import http.server, ssl, sys
port, cert, key, doc = int(sys.argv[1]), sys.argv[2], sys.argv[3], open(sys.argv[4], "rb").read()
class Replay(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        self.send_response(200)
        self.send_header("Content-Length", str(len(doc)))
        self.end_headers()
        self.wfile.write(doc)
    def log_message(self, *a):
        pass
srv = http.server.HTTPServer(("127.0.0.1", port), Replay)
ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
ctx.load_cert_chain(cert, key)
srv.socket = ctx.wrap_socket(srv.socket, server_side=True)
print("replay: listening", flush=True)
srv.serve_forever()
' "$replay" "$work/static.crt" "$work/static.key" "$work/captured.b64"
wait_for_log replay 'replay: listening'
expect_refused "replayed document" 'nonce' "https://127.0.0.1:$replay" --root "$root"
stop replay || true
pass "refused: a replayed document with the right certificate (nonce mismatch)"

# A debug-mode enclave (PCR0 all zero) is refused unless --allow-debug.
spawn dsim "$CLOISTER" nsm-sim --listen "unix:$work/dnsm.sock" --state "$work/dstate" --debug
wait_for_log dsim '^nsm-sim: listening on '
dpub=$(free_port)
spawn debug "$CLOISTER" enclave -fqdn localhost --nsm "unix:$work/dnsm.sock" --listen "tcp:127.0.0.1:$dpub" -intport "$(free_port)"
wait_for_log debug 'event=listening listener=public'
expect_refused "debug mode" 'debug' "https://127.0.0.1:$dpub" --root "$work/dstate/root.pem"
"$CLOISTER" verify "https://127.0.0.1:$dpub" --root "$work/dstate/root.pem" --allow-debug >/dev/null ||
    fail "--allow-debug did not accept a debug-mode enclave"
pass "a debug-mode enclave is refused, and accepted with --allow-debug"

# ---- usage and unreachable servers ---------------------------------------------------
for args in "" "http://127.0.0.1:$pub" "https://127.0.0.1:$pub/some/path" "https://127.0.0.1:0" "$url --pcr 99=00" "$url --timeout 0" "$url --max-age 0"; do
    status=0
    # shellcheck disable=SC2086
    "$CLOISTER" verify $args >"$work/out" 2>&1 || status=$?
    [ "$status" = 2 ] || fail "'verify $args': expected exit 2, got $status"
    grep -q 'cloister verify:' "$work/out" || fail "'verify $args' did not say what is wrong"
done
"$CLOISTER" verify "$url" --root "$root" --max-age 0 >"$work/out" 2>&1 || true
grep -q -- '--max-age: must be at least 1 second' "$work/out" ||
    fail "--max-age 0 is not refused with its reason (it would switch the timestamp checks off)"
closed=$(free_port)
status=0
"$CLOISTER" verify "https://127.0.0.1:$closed" --root "$root" >"$work/out" 2>&1 || status=$?
[ "$status" = 3 ] || fail "an unreachable server: expected exit 3, got $status: $(cat "$work/out")"
# A server that accepts and never answers: the timeout ends it.
spawn silent python3 -c '
import socket, sys, time
s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(("127.0.0.1", int(sys.argv[1]))); s.listen(8); print("silent: listening", flush=True)
conns = []
while True:
    c, _ = s.accept(); conns.append(c)
' "$closed"
wait_for_log silent 'silent: listening'
status=0
"$CLOISTER" verify "https://127.0.0.1:$closed" --root "$root" --timeout 1 >"$work/out" 2>&1 || status=$?
[ "$status" = 3 ] && grep -q 'timed out' "$work/out" || fail "a silent server: expected a timeout (exit 3), got $status: $(cat "$work/out")"
pass "bad command lines exit 2 naming the problem; unreachable and silent servers exit 3"
