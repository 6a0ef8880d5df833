#!/usr/bin/env bash
# The KMS client end to end, in the set-up of an enclave on one machine:
#   - cloister nsm-sim (the NSM), cloister imds-sim behind `cloister host --imds` (credentials),
#     cloister kms-local with TLS (KMS), `cloister host --outbound vsock:3:8000=127.0.0.1:PORT`;
#     the enclave side dials vsock:3:8000 and vsock:3:8002 (IMDS) through the vsock code, with the
#     unix stand-in (CLOISTER_VSOCK_STANDIN) only at the last connect(); TLS to kms-local's CA with
#     SNI kms.eu-west-1.amazonaws.com
#   - an operator encrypts outside the enclave (static credentials, direct connection)
#   - `cloister kms` inside: IMDSv2 credentials, Decrypt / GenerateDataKey / GenerateRandom with a
#     Recipient through the proxy; a key policy on PCR0 refuses the same calls without a Recipient
#     and from an enclave with another PCR0
#   - errors: InvalidCiphertext, bad signature, wrong CA, wrong TLS name, unreachable proxy
#   - retries: a TLS stand-in answering ThrottlingException / 503 first (and checking the request's
#     protocol headers and what SigV4 signed)
#   - `cloister enclave -secret ...`: secrets opened before the listeners, on the internal listener
#     only, as -appcmd's environment; a secret that cannot be opened stops the start naming it;
#     --tls-key-ciphertext serves a certificate whose key came out of KMS
set -euo pipefail
source "$(dirname "$0")/common.bash"

if ! "$CLOISTER" kms-local --help >/dev/null 2>&1; then
    echo "skip: this build has no 'cloister kms-local'"
    exit 77
fi
command -v openssl >/dev/null && command -v curl >/dev/null || { echo "skip: needs openssl and curl"; exit 77; }

REGION=eu-west-1
# vsock as in the enclave; the stand-in puts the sockets at $work/vsock/CID.PORT
export CLOISTER_VSOCK_STANDIN=$work/vsock
mkdir -p "$CLOISTER_VSOCK_STANDIN"
IMDS=vsock:3:8002
KMSP=vsock:3:8000
PCR0=$(printf '%096d' 7 | tr 0 a)
PCR0_OTHER=$(printf '%096d' 9 | tr 0 b)

spawn sim "$CLOISTER" nsm-sim --listen "unix:$work/nsm.sock" --state "$work/state" --pcr "0=$PCR0"
wait_for_log sim '^nsm-sim: listening on '
spawn sim2 "$CLOISTER" nsm-sim --listen "unix:$work/nsm2.sock" --state "$work/state2" --pcr "0=$PCR0_OTHER"
wait_for_log sim2 '^nsm-sim: listening on '
# Both simulators' roots are trusted: only the PCR0 policy tells them apart.
cat "$work/state/root.pem" "$work/state2/root.pem" >"$work/roots.pem"

start_instance_role "$REGION"

cat >"$work/pcr-policy.json" <<EOF
{"Version": "2012-10-17", "Statement": [
  {"Sid": "operators encrypt", "Effect": "Allow", "Principal": {"AWS": "arn:aws:iam::111122223333:root"},
   "Action": ["kms:Encrypt", "kms:DescribeKey"], "Resource": "*"},
  {"Sid": "only the enclave opens", "Effect": "Allow", "Principal": {"AWS": "arn:aws:iam::111122223333:root"},
   "Action": ["kms:Decrypt", "kms:GenerateDataKey"], "Resource": "*",
   "Condition": {"StringEqualsIgnoreCase": {"kms:RecipientAttestation:PCR0": "$PCR0"}}}]}
EOF
kp=$(free_port)
spawn kms "$CLOISTER" kms-local --listen "tcp:127.0.0.1:$kp" --state "$work/kms" --region "$REGION" --tls \
    --credentials "$role_creds" --credentials AKIAOPERATOR0000000:operator-secret-key \
    --root "$work/roots.pem" --key alias/app --key "alias/pcr-bound=$work/pcr-policy.json"
wait_for_log kms '^kms-local: listening on '
CA=$work/kms/ca.pem
spawn outbound "$CLOISTER" host --outbound "$KMSP=127.0.0.1:$kp"
wait_for_log outbound 'event=started'

# the operator, outside the enclave: static credentials, straight to the endpoint
op() {
    "$CLOISTER" kms --region "$REGION" --endpoint "https://localhost:$kp" --ca-file "$CA" \
        --access-key-id AKIAOPERATOR0000000 --secret-access-key operator-secret-key "$@"
}
# inside: IMDSv2 credentials through the gate, KMS through the outbound proxy, Recipient from the NSM
inside() {
    "$CLOISTER" kms --imds "$IMDS" --proxy "$KMSP" --ca-file "$CA" \
        --nsm "unix:$work/nsm.sock" "$@"
}

# ---- Encrypt outside, Decrypt inside with a Recipient ----------------------------------------
printf 'db-password: correct horse battery staple' >"$work/secret.txt"
op encrypt --key-id alias/app --in "$work/secret.txt" >"$work/app.ct" || fail "operator encrypt"
op encrypt --key-id alias/pcr-bound --in "$work/secret.txt" -o "$work/pcr.ct.bin" || fail "operator encrypt (raw)"
base64 -w0 "$work/pcr.ct.bin" >"$work/pcr.ct"
grep -qE '^[A-Za-z0-9+/]+=*$' "$work/app.ct" || fail "encrypt did not print base64"
inside --stats decrypt --in "$work/app.ct" -o "$work/out.txt" 2>"$work/stats" || fail "decrypt inside: $(cat "$work/stats")"
cmp -s "$work/secret.txt" "$work/out.txt" || fail "decrypted plaintext differs"
[ "$(stat -c %a "$work/out.txt")" = 600 ] || fail "plaintext file is not 0600"
grep -qE 'kms-stats: calls=1 attempts=1 retries=0 .*attestation_us=[1-9][0-9]* rsa_us=[1-9][0-9]* network_us=[1-9]' \
    "$work/stats" || fail "no Recipient timings: $(cat "$work/stats")"
grep -q 'credentials=imds' "$work/stats" || fail "credentials did not come from IMDS"
grep -q 'target=/latest/api/token' "$work/imds_sim.log" && \
    grep -q 'target=/latest/meta-data/iam/security-credentials/enclave-role' "$work/imds_sim.log" ||
    fail "imds-sim did not see the IMDSv2 token and credentials calls"
pass "Encrypt outside (static credentials, direct), Decrypt inside: IMDSv2 credentials, Recipient, vsock:3:8000 proxy (stand-in)"

# curl's own unix-socket path (the same listeners, named by their files) still works
"$CLOISTER" kms --imds "unix:$CLOISTER_VSOCK_STANDIN/3.8002" --proxy "unix:$CLOISTER_VSOCK_STANDIN/3.8000" \
    --ca-file "$CA" --nsm "unix:$work/nsm.sock" decrypt --in "$work/app.ct" -o "$work/out2.txt" ||
    fail "decrypt over unix: addresses"
cmp -s "$work/out2.txt" "$work/secret.txt" || fail "unix: decrypt differs"
# without the stand-in the vsock path opens AF_VSOCK, which CLOISTER_NO_VSOCK refuses
st=0
env -u CLOISTER_VSOCK_STANDIN "$CLOISTER" kms --imds "$IMDS" --proxy "$KMSP" --ca-file "$CA" \
    --nsm "unix:$work/nsm.sock" decrypt --in "$work/app.ct" >/dev/null 2>"$work/err" || st=$?
[ $st != 0 ] && grep -q 'CLOISTER_NO_VSOCK' "$work/err" || fail "vsock without the stand-in: $st $(cat "$work/err")"
pass "the same listeners through curl's unix: path; without the stand-in, CLOISTER_NO_VSOCK refuses the vsock dial"

# a raw ciphertext file is accepted too; --base64 output; the region came from IMDS
inside decrypt --in "$work/pcr.ct.bin" --base64 >"$work/out.b64" || fail "decrypt of a raw blob"
[ "$(base64 -d "$work/out.b64")" = "$(cat "$work/secret.txt")" ] || fail "--base64 output"
pass "PCR-bound key: the enclave with PCR0=$PCR0 opens it (region from IMDS, raw input, --base64)"

# ---- the key policy on PCR0 ----------------------------------------------------------------------
set +e
op decrypt --in "$work/pcr.ct" >/dev/null 2>"$work/err"; st=$?
set -e
[ $st = 1 ] && grep -q 'AccessDeniedException' "$work/err" || fail "no Recipient: want AccessDenied exit 1, got $st: $(cat "$work/err")"
set +e
"$CLOISTER" kms --imds "$IMDS" --proxy "$KMSP" --ca-file "$CA" \
    --nsm "unix:$work/nsm2.sock" decrypt --in "$work/pcr.ct" >/dev/null 2>"$work/err"; st=$?
set -e
[ $st = 1 ] && grep -q 'AccessDeniedException' "$work/err" || fail "other PCR0: want AccessDenied, got $st: $(cat "$work/err")"
pass "the same Decrypt without a Recipient, or from an enclave with another PCR0: AccessDeniedException (exit 1)"

# ---- GenerateDataKey and GenerateRandom with a Recipient --------------------------------------
inside generate-data-key --key-id alias/pcr-bound >"$work/gdk.json" || fail "generate-data-key"
python3 - "$work/gdk.json" <<'EOF' || fail "generate-data-key JSON: $(cat "$work/gdk.json")"
import base64, json, sys
d = json.load(open(sys.argv[1]))
assert set(d) == {"KeyId", "CiphertextBlob", "Plaintext"}, d.keys()
assert d["KeyId"].startswith("arn:aws:kms:eu-west-1:111122223333:key/"), d["KeyId"]
assert len(base64.b64decode(d["Plaintext"])) == 32
open(sys.argv[1] + ".blob", "w").write(d["CiphertextBlob"])
open(sys.argv[1] + ".key", "w").write(d["Plaintext"])
EOF
inside decrypt --in "$work/gdk.json.blob" --base64 >"$work/gdk.again" || fail "decrypt of the data key"
[ "$(cat "$work/gdk.again")" = "$(cat "$work/gdk.json.key")" ] || fail "the data key does not decrypt to itself"
inside generate-data-key --key-id alias/pcr-bound --bytes 48 >"$work/gdk48.json" || fail "generate-data-key --bytes"
python3 -c 'import base64,json,sys; assert len(base64.b64decode(json.load(open(sys.argv[1]))["Plaintext"])) == 48' \
    "$work/gdk48.json" || fail "NumberOfBytes 48"
inside generate-random --bytes 64 -o "$work/rnd" || fail "generate-random"
[ "$(stat -c %s "$work/rnd")" = 64 ] || fail "generate-random size"
inside generate-random --bytes 64 -o "$work/rnd2"
! cmp -s "$work/rnd" "$work/rnd2" || fail "two GenerateRandom answers are equal"
pass "GenerateDataKey (AES_256, NumberOfBytes 48) and GenerateRandom with a Recipient; the data key decrypts to itself"

# ---- errors ---------------------------------------------------------------------------------------
expect_fail() { # STATUS FRAGMENT CMD...
    local want=$1 fragment=$2 st=0
    shift 2
    "$@" >/dev/null 2>"$work/err" </dev/null || st=$?
    [ "$st" = "$want" ] && grep -qF -- "$fragment" "$work/err" ||
        fail "$*: want exit $want with '$fragment', got $st: $(cat "$work/err")"
}
echo "AQIDBAUGBwgJCgsMDQ4PEA==" >"$work/garbage.ct"
expect_fail 1 "InvalidCiphertextException" inside decrypt --in "$work/garbage.ct"
expect_fail 1 "KMS Encrypt: " "$CLOISTER" kms --region "$REGION" --endpoint "https://localhost:$kp" --ca-file "$CA" \
    --access-key-id AKIAOPERATOR0000000 --secret-access-key wrong-secret encrypt --key-id alias/app --in "$work/secret.txt"
grep -qE 'InvalidSignatureException|SignatureDoesNotMatch' "$work/err" || fail "bad secret: $(cat "$work/err")"
expect_fail 3 "certificate" "$CLOISTER" kms --region "$REGION" --proxy "$KMSP" \
    --access-key-id AKIAOPERATOR0000000 --secret-access-key operator-secret-key --max-attempts 1 \
    encrypt --key-id alias/app --in "$work/secret.txt"
# the TLS name is the endpoint's host: kms-local's certificate does not name us-west-2
expect_fail 3 "kms.us-west-2.amazonaws.com" "$CLOISTER" kms --region us-west-2 --proxy "$KMSP" \
    --ca-file "$CA" --access-key-id AKIAOPERATOR0000000 --secret-access-key operator-secret-key --max-attempts 1 \
    encrypt --key-id alias/app --in "$work/secret.txt"
grep -qiE "certificate|SSL|subject" "$work/err" || fail "wrong name: $(cat "$work/err")"
expect_fail 3 "$work/nothing.sock" op --proxy "unix:$work/nothing.sock" --max-attempts 2 encrypt --key-id alias/app \
    --in "$work/secret.txt"
grep -q "after 2 attempts" "$work/err" || fail "connection failures are not retried: $(cat "$work/err")"
expect_fail 1 "NotFoundException" op encrypt --key-id alias/nope --in "$work/secret.txt"
expect_fail 2 "needs --key-id" op encrypt --in "$work/secret.txt"
expect_fail 2 "unknown operation" op frobnicate
expect_fail 3 "no AWS credentials" env -u AWS_ACCESS_KEY_ID -u AWS_SECRET_ACCESS_KEY "$CLOISTER" kms --region "$REGION" \
    generate-random --bytes 8
expect_fail 3 "the Recipient needs the NSM" inside --nsm "unix:$work/no-nsm.sock" decrypt --in "$work/app.ct"
pass "errors: InvalidCiphertext, bad signature, unknown CA, wrong TLS name, no proxy (retried), NotFound, usage, no credentials, no NSM"

# ---- retries, and the protocol as sent ----------------------------------------------------------
openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 1 -subj "/CN=kms.$REGION.amazonaws.com" \
    -addext "subjectAltName=DNS:kms.$REGION.amazonaws.com" -keyout "$work/fake.key" -out "$work/fake.pem" 2>/dev/null
fp=$(free_port)
cat >"$work/fake_kms.py" <<'EOF'
# A TLS stand-in for KMS: answers each POST from a script of (status, body), checks the
# protocol headers and what SigV4 signed, and logs one line per request.
import http.server, json, ssl, sys
port, cert, key = int(sys.argv[1]), sys.argv[2], sys.argv[3]
script = [(400, {"__type": "ThrottlingException", "message": "Rate exceeded"}),
          (503, {"__type": "ServiceUnavailableException", "message": "try again"}),
          (200, {"KeyId": "arn:aws:kms:eu-west-1:111122223333:key/fake", "CiphertextBlob": "AQID"})]
count = 0
class H(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    def log_message(self, *a): pass
    def do_POST(self):
        global count
        body = self.rfile.read(int(self.headers["Content-Length"]))
        auth = self.headers.get("Authorization", "")
        signed = auth.split("SignedHeaders=")[1].split(",")[0] if "SignedHeaders=" in auth else ""
        ok = (self.path == "/" and self.headers["Content-Type"] == "application/x-amz-json-1.1"
              and self.headers["X-Amz-Target"] == "TrentService.Encrypt"
              and self.headers["X-Amz-Security-Token"] == "the-session-token"
              and auth.startswith("AWS4-HMAC-SHA256 Credential=ASIAFAKE/")
              and "/eu-west-1/kms/aws4_request" in auth
              and all(h in signed.split(";") for h in ("host", "x-amz-date", "x-amz-target", "x-amz-security-token"))
              and json.loads(body)["KeyId"] == "alias/app")
        print(f"request ok={ok} signed={signed} host={self.headers['Host']}", flush=True)
        status, answer = script[min(count, len(script) - 1)] if ok else (400, {"__type": "BadRequest", "message": "protocol"})
        count += 1
        data = json.dumps(answer).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/x-amz-json-1.1")
        self.send_header("x-amzn-RequestId", f"req-{count}")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)
ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
ctx.load_cert_chain(cert, key)
srv = http.server.ThreadingHTTPServer(("127.0.0.1", port), H)
srv.socket = ctx.wrap_socket(srv.socket, server_side=True)
print("fake-kms: listening", flush=True)
srv.serve_forever()
EOF
spawn fake python3 "$work/fake_kms.py" "$fp" "$work/fake.pem" "$work/fake.key"
wait_for_log fake 'fake-kms: listening'
"$CLOISTER" kms --region "$REGION" --proxy "tcp:127.0.0.1:$fp" --ca-file "$work/fake.pem" --access-key-id ASIAFAKE \
    --secret-access-key s3cr3t --session-token the-session-token --stats encrypt --key-id alias/app \
    --in "$work/secret.txt" >"$work/fake.out" 2>"$work/stats" || fail "retries: $(cat "$work/stats")"
[ "$(cat "$work/fake.out")" = "AQID" ] || fail "retried answer: $(cat "$work/fake.out")"
grep -q 'attempts=3 retries=2' "$work/stats" || fail "want 3 attempts: $(cat "$work/stats")"
[ "$(grep -c 'request ok=True' "$work/fake.log")" = 3 ] || fail "protocol headers: $(cat "$work/fake.log")"
grep -q "host=kms.$REGION.amazonaws.com" "$work/fake.log" || fail "Host header is not KMS's name"
stop fake || true
spawn fake python3 "$work/fake_kms.py" "$fp" "$work/fake.pem" "$work/fake.key"
wait_for_log fake 'fake-kms: listening'
expect_fail 3 "ThrottlingException: Rate exceeded (HTTP 400, request id req-1)" "$CLOISTER" kms --region "$REGION" \
    --proxy "tcp:127.0.0.1:$fp" --ca-file "$work/fake.pem" --access-key-id ASIAFAKE --secret-access-key s3cr3t \
    --session-token the-session-token --max-attempts 1 encrypt --key-id alias/app --in "$work/secret.txt"
pass "ThrottlingException and 503 retried with backoff (3 attempts); headers, SigV4 scope and signed headers as KMS wants"

# ---- cloister enclave: secrets at boot ------------------------------------------------------------
echo -n "sk_live_0123456789" >"$work/api.txt"
api_ct=$(op encrypt --key-id alias/pcr-bound --purpose enclave-secret:api_key --in "$work/api.txt")
# each secret's ciphertext carries purpose=enclave-secret and its name (the enclave requires both)
op encrypt --key-id alias/pcr-bound --purpose enclave-secret:db --in "$work/secret.txt" >"$work/db.ct"
ip=$(free_port)
pp=$(free_port)
kms_flags=(-kms-imds "$IMDS" -kms-proxy "$KMSP" -kms-ca-file "$CA")
start_enclave enc -listen "tcp:127.0.0.1:$pp" -intport "$ip" "${kms_flags[@]}" \
    -secret "db=@$work/db.ct" -secret "api_key=$api_ct" -secrets-env \
    -appcmd "env > $work/app.env; exec sleep 60"
wait_for_log enc 'event=listening listener=public'
grep -q 'event=secret_opened name=db bytes=41' "$work/enc.log" || fail "db not logged as opened"
first_secret=$(grep -n 'event=secret_opened' "$work/enc.log" | head -1 | cut -d: -f1)
first_listen=$(grep -n 'event=listening' "$work/enc.log" | head -1 | cut -d: -f1)
[ "$first_secret" -lt "$first_listen" ] || fail "a listener opened before the secrets"
! grep -q 'correct horse' "$work/enc.log" || fail "a plaintext reached the log"
curl -sS "http://127.0.0.1:$ip/enclave/secrets/db" -o "$work/got.db" || fail "GET secret"
cmp -s "$work/got.db" "$work/secret.txt" || fail "/enclave/secrets/db differs"
[ "$(curl -sS "http://127.0.0.1:$ip/enclave/secrets/api_key")" = "sk_live_0123456789" ] || fail "api_key"
[ "$(curl -sS -o /dev/null -w '%{http_code}' "http://127.0.0.1:$ip/enclave/secrets/nope")" = 404 ] || fail "unknown secret"
[ "$(curl -sS -o /dev/null -w '%{http_code}' -X POST "http://127.0.0.1:$ip/enclave/secrets/db")" = 405 ] || fail "POST"
code=$(curl -sk -o "$work/pub" -w '%{http_code}' "https://127.0.0.1:$pp/enclave/secrets/db")
[ "$code" != 200 ] && ! grep -q 'correct horse' "$work/pub" || fail "the public listener served a secret ($code)"
for _ in $(seq 1 100); do [ -s "$work/app.env" ] && break; sleep 0.05; done
grep -qx 'db=db-password: correct horse battery staple' "$work/app.env" && grep -qx 'api_key=sk_live_0123456789' \
    "$work/app.env" || fail "secrets not in -appcmd's environment"
curl -sk "https://127.0.0.1:$pp/enclave/config" | python3 -c \
    'import json,sys; c=json.load(sys.stdin); assert c["secrets"] == ["db", "api_key"] and c["secrets-env"], c' ||
    fail "/enclave/config secrets"
stop enc || true
pass "enclave: secrets opened with a Recipient before the listeners, GET /enclave/secrets/NAME internal only, -appcmd env"

# the same settings from --config: "secret" takes a string or an array
cat >"$work/enclave.json" <<EOF
{"fqdn": "localhost", "nsm": "unix:$work/nsm.sock", "listen": "tcp:127.0.0.1:$pp", "intport": $ip,
 "kms-imds": "$IMDS", "kms-proxy": "$KMSP", "kms-ca-file": "$CA",
 "secret": ["db=@$work/db.ct", "api_key=$api_ct"]}
EOF
spawn enc3 "$CLOISTER" enclave --config "$work/enclave.json"
wait_for_log enc3 'event=listening listener=public'
[ "$(curl -sS "http://127.0.0.1:$ip/enclave/secrets/api_key")" = "sk_live_0123456789" ] || fail "--config secrets"
stop enc3 || true
pass "the secrets and KMS settings from --config JSON"

# a secret that cannot be opened stops the start, naming it; so does one for another enclave
st=0
"$CLOISTER" enclave -fqdn localhost --nsm "unix:$work/nsm.sock" -listen "tcp:127.0.0.1:$pp" -intport "$ip" \
    "${kms_flags[@]}" -secret "db=@$work/db.ct" -secret "broken=AQIDBAUGBwgJCgsMDQ4PEA==" >"$work/bad.log" 2>&1 || st=$?
[ $st = 3 ] && grep -q 'secret "broken" cannot be opened: not made for purpose=enclave-secret, name=broken .*KMS Decrypt: InvalidCiphertextException' "$work/bad.log" ||
    fail "broken secret: exit $st: $(cat "$work/bad.log")"
! grep -q 'event=listening' "$work/bad.log" || fail "a listener opened although a secret failed"
st=0
"$CLOISTER" enclave -fqdn localhost --nsm "unix:$work/nsm2.sock" -listen "tcp:127.0.0.1:$pp" -intport "$ip" \
    "${kms_flags[@]}" -secret "db=@$work/db.ct" >"$work/bad.log" 2>&1 || st=$?
[ $st = 3 ] && grep -q 'secret "db" cannot be opened: KMS Decrypt: AccessDeniedException' "$work/bad.log" ||
    fail "other enclave: exit $st: $(cat "$work/bad.log")"
st=0
"$CLOISTER" enclave -fqdn localhost --nsm "unix:$work/nsm.sock" -intport "$ip" "${kms_flags[@]}" \
    -secret "1bad=AQID" >"$work/bad.log" 2>&1 || st=$?
[ $st = 3 ] && grep -q "expected NAME=BASE64 or NAME=@FILE" "$work/bad.log" || fail "bad name: $st $(cat "$work/bad.log")"
pass "a secret that cannot be opened (bad ciphertext, another enclave's PCR0, bad name) stops the start, naming it"

# --tls-key-ciphertext: the certificate's private key is a KMS ciphertext
openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 1 -subj "/CN=localhost" \
    -addext "subjectAltName=DNS:localhost" -keyout "$work/tls.key" -out "$work/tls.pem" 2>/dev/null
op encrypt --key-id alias/pcr-bound --purpose enclave-tls-key --in "$work/tls.key" >"$work/tls.key.ct"
op encrypt --key-id alias/pcr-bound --purpose enclave-tls-key --in "$work/secret.txt" >"$work/notkey.ct"
op encrypt --key-id alias/pcr-bound --purpose pkcs11-token:web --in "$work/tls.key" >"$work/tokenkey.ct"
start_enclave enc2 -listen "tcp:127.0.0.1:$pp" -intport "$ip" "${kms_flags[@]}" --cert "$work/tls.pem" \
    --tls-key-ciphertext "@$work/tls.key.ct"
wait_for_log enc2 'event=listening listener=public'
grep -q 'event=tls_key_opened' "$work/enc2.log" || fail "tls key not opened"
curl -sS --cacert "$work/tls.pem" --resolve "localhost:$pp:127.0.0.1" "https://localhost:$pp/enclave" |
    grep -q 'inside an AWS Nitro Enclave' || fail "TLS with the KMS-held key"
stop enc2 || true
st=0
"$CLOISTER" enclave -fqdn localhost --nsm "unix:$work/nsm.sock" -intport "$ip" "${kms_flags[@]}" --cert "$work/tls.pem" \
    --tls-key-ciphertext "@$work/notkey.ct" >"$work/bad.log" 2>&1 || st=$?
[ $st = 3 ] && grep -q -- '--tls-key-ciphertext cannot be opened: the TLS private key is neither PEM nor DER' \
    "$work/bad.log" || fail "not a key: $st $(cat "$work/bad.log")"
pass "--tls-key-ciphertext: HTTPS with a key opened from KMS inside the enclave; a ciphertext of no key stops the start"

# the parent hands in ciphertexts made for something else: each is refused by KMS (the context is
# authenticated), naming the purpose the enclave wanted
for wrong in "$work/db.ct" "$work/pcr.ct" "$work/tokenkey.ct"; do
    st=0
    "$CLOISTER" enclave -fqdn localhost --nsm "unix:$work/nsm.sock" -intport "$ip" "${kms_flags[@]}" \
        --cert "$work/tls.pem" --tls-key-ciphertext "@$wrong" >"$work/bad.log" 2>&1 || st=$?
    [ $st = 3 ] && grep -q -- '--tls-key-ciphertext cannot be opened: not made for purpose=enclave-tls-key' "$work/bad.log" &&
        grep -q InvalidCiphertextException "$work/bad.log" || fail "TLS key of another purpose ($wrong): $st $(cat "$work/bad.log")"
    ! grep -q 'event=listening' "$work/bad.log" || fail "a listener opened with a wrong-purpose TLS key"
done
st=0
"$CLOISTER" enclave -fqdn localhost --nsm "unix:$work/nsm.sock" -intport "$ip" "${kms_flags[@]}" \
    -secret "db=$api_ct" >"$work/bad.log" 2>&1 || st=$?
[ $st = 3 ] && grep -q 'secret "db" cannot be opened: not made for purpose=enclave-secret, name=db' "$work/bad.log" ||
    fail "api_key's ciphertext as db: $st $(cat "$work/bad.log")"
pass "wrong purpose refused: a secret's, a context-free and a PKCS#11 token's ciphertext as the TLS key; one secret's ciphertext under another secret's name"
