#!/usr/bin/env bash
# The ACM-style bundle path for the PKCS#11 token end to end, in a cloister-dev-style set-up on one machine:
#   - nsm-sim (PCR0 set), imds-sim behind `cloister host --imds` (the key-holder's credentials and
#     region), kms-local with TLS, `cloister host --outbound vsock:3:8000=...`; the key-holder (the
#     enclave's key process) with its KMS settings on vsock:3:8000/8002 through the vsock stand-in
#     (CLOISTER_VSOCK_STANDIN, unix sockets only at the last connect), its other sockets unix; `p11-kit server` serving libcloister-pkcs11.so; Debian's nginx on 127.0.0.1 through
#     the pkcs11 engine and p11-kit's client module
#   - `cloister acm pack-key` makes bundles with kms-local (key policy: the simulator's PCR0); the
#     operator who made them cannot decrypt them
#   - `cloister host acm --bundle FILE` provisions (the key-holder opens the ciphertext with a KMS
#     Decrypt Recipient), writes the chain, the nginx stanza (0600) and the engine configuration;
#     nginx serves HTTPS and curl verifies the chain
#   - a changed bundle (new key and certificate) is picked up and nginx reloaded while two bounded
#     curl loops run: no request lost; a bundle whose key is bound to another PCR0 is refused with a
#     clear error and the old token keeps working; refresh re-decrypts; expiry without refresh
#   - --bundle http://... from a local HTTP server; bad bundles and bad URLs
#   - the parent as the attacker (issue 11): the enclave's own TLS-key ciphertext (purpose
#     enclave-tls-key) provisioned as a token with a forged certificate and the parent's PIN, a
#     ciphertext made for another token, one under a KMS key the key-holder was not started with
#     (--kms-key-id), a bundle whose chain signature is broken: each refused with its reason
set -euo pipefail
source "$(dirname "$0")/common.bash"

BUILD=${CLOISTER_BUILD_DIR:?}
MODULE=$BUILD/libcloister-pkcs11.so
CLIENT=/usr/lib/x86_64-linux-gnu/pkcs11/p11-kit-client.so
ENGINE=/usr/lib/x86_64-linux-gnu/engines-3/pkcs11.so
for need in nginx p11-kit curl openssl python3; do
    command -v "$need" >/dev/null || { echo "skip: $need not installed (scripts/deps.sh)"; exit 77; }
done
[ -e "$CLIENT" ] && [ -e "$ENGINE" ] || { echo "skip: p11-kit-modules or libengine-pkcs11-openssl missing"; exit 77; }
[ -e "$MODULE" ] || fail "build libcloister-pkcs11.so first"
export CLOISTER_VSOCK_STANDIN=$work/vsock
mkdir -p "$CLOISTER_VSOCK_STANDIN"
"$CLOISTER" acm --help >/dev/null 2>&1 || fail "this build has no 'cloister acm'"

REGION=eu-west-1
PCR0=$(printf '%096d' 7 | tr 0 c)
PCR0_OTHER=$(printf '%096d' 9 | tr 0 d)
OP_ID=AKIAOPERATOR0000000 OP_SECRET=operator-secret-key
mkdir -p "$work/nginx/tmp" "$work/srv" "$work/keys" "$work/khkeys"

# ---- certificates: a CA and three leaves (two for the rotation, one bound to another PCR0) ------
openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -keyout "$work/ca.key" -out "$work/ca.pem" \
    -subj "/CN=cloister acm test CA" -days 2 2>/dev/null
leaf() { # NAME KEYGEN-ARGS...
    local name=$1
    shift
    openssl req -new -newkey "$@" -nodes -keyout "$work/keys/$name.key" -out "$work/$name.csr" -subj /CN=localhost 2>/dev/null
    openssl x509 -req -in "$work/$name.csr" -CA "$work/ca.pem" -CAkey "$work/ca.key" -CAcreateserial -days 2 \
        -extfile <(printf 'subjectAltName=DNS:localhost\nkeyUsage=digitalSignature,keyEncipherment\n') \
        -out "$work/$name.crt" 2>/dev/null
}
leaf a ec -pkeyopt ec_paramgen_curve:P-256
leaf b rsa:2048
leaf c ec -pkeyopt ec_paramgen_curve:P-384

# ---- NSM, KMS, the outbound proxy -------------------------------------------------------------
spawn sim "$CLOISTER" nsm-sim --listen "unix:$work/nsm.sock" --state "$work/state" --pcr "0=$PCR0"
wait_for_log sim '^nsm-sim: listening on '
policy() { # PCR0 -> a key policy: operators encrypt, only that enclave decrypts
    cat <<EOF
{"Version": "2012-10-17", "Statement": [
  {"Sid": "operators encrypt", "Effect": "Allow", "Principal": {"AWS": "arn:aws:iam::111122223333:root"},
   "Action": ["kms:Encrypt", "kms:DescribeKey"], "Resource": "*"},
  {"Sid": "only the enclave opens", "Effect": "Allow", "Principal": {"AWS": "arn:aws:iam::111122223333:root"},
   "Action": "kms:Decrypt", "Resource": "*",
   "Condition": {"StringEqualsIgnoreCase": {"kms:RecipientAttestation:PCR0": "$1"}}}]}
EOF
}
# the key-holder's credentials: the instance role, from imds-sim behind `cloister host --imds`
start_instance_role "$REGION"
policy "$PCR0" >"$work/web-policy.json"
policy "$PCR0_OTHER" >"$work/other-policy.json"
kp=$(free_port)
spawn kms "$CLOISTER" kms-local --listen "tcp:127.0.0.1:$kp" --state "$work/kms" --region "$REGION" --tls \
    --credentials "$OP_ID:$OP_SECRET" --credentials "$role_creds" --root "$work/state/root.pem" \
    --key "alias/web=$work/web-policy.json" --key "alias/other-enclave=$work/other-policy.json" \
    --key "alias/spare=$work/web-policy.json"
wait_for_log kms '^kms-local: listening on '
CA=$work/kms/ca.pem
spawn outbound "$CLOISTER" host --outbound "vsock:3:8000=127.0.0.1:$kp"
wait_for_log outbound 'event=started'

# ---- the bundles, made by the operator ------------------------------------------------------------
pack() { # KEY CERT KEY-ID OUT TOKEN
    "$CLOISTER" acm pack-key --region "$REGION" --endpoint "https://localhost:$kp" --ca-file "$CA" \
        --access-key-id "$OP_ID" --secret-access-key "$OP_SECRET" --key "$1" --cert "$2" --chain "$work/ca.pem" \
        --key-id "$3" --token "$5" -o "$4" 2>"$work/pack.err" || fail "pack-key $1: $(cat "$work/pack.err")"
}
pack "$work/keys/a.key" "$work/a.crt" alias/web "$work/srv/a.json" web
web_arn=$(sed -n 's/^cloister acm pack-key: key encrypted under \(arn:[^ ]*\) .*/\1/p' "$work/pack.err")
[ -n "$web_arn" ] || fail "pack-key did not name the key's ARN: $(cat "$work/pack.err")"
pack "$work/keys/b.key" "$work/b.crt" alias/web "$work/srv/b.json" web
pack "$work/keys/c.key" "$work/c.crt" alias/other-enclave "$work/srv/c.json" web
pack "$work/keys/a.key" "$work/a.crt" alias/web "$work/srv/url-a.json" url
pack "$work/keys/b.key" "$work/b.crt" alias/web "$work/srv/url-b.json" url
pack "$work/keys/a.key" "$work/a.crt" alias/spare "$work/spare.json" web
pack "$work/keys/a.key" "$work/a.crt" alias/web "$work/for-other-token.json" other
python3 - "$work/srv/a.json" "$work/a.crt" <<'EOF' || fail "bundle shape"
import base64, json, sys
d = json.load(open(sys.argv[1]))
assert sorted(d) == ["certificate", "certificateChain", "encryptedPrivateKey"], sorted(d)
assert d["certificate"].strip() == open(sys.argv[2]).read().strip(), "certificate differs"
assert d["certificateChain"].count("BEGIN CERTIFICATE") == 1
assert len(base64.b64decode(d["encryptedPrivateKey"], validate=True)) > 100
assert "PRIVATE KEY" not in open(sys.argv[1]).read()
EOF
python3 -c 'import base64,json,sys; sys.stdout.buffer.write(base64.b64decode(json.load(open(sys.argv[1]))["encryptedPrivateKey"]))' \
    "$work/srv/a.json" >"$work/a.blob"
st=0
"$CLOISTER" kms --region "$REGION" --endpoint "https://localhost:$kp" --ca-file "$CA" --access-key-id "$OP_ID" \
    --secret-access-key "$OP_SECRET" decrypt --in "$work/a.blob" >/dev/null 2>"$work/err" || st=$?
[ "$st" = 1 ] && grep -q AccessDeniedException "$work/err" || fail "the operator could decrypt the bundle's key ($st)"
st=0
"$CLOISTER" acm pack-key --region "$REGION" --endpoint "https://localhost:$kp" --ca-file "$CA" --access-key-id "$OP_ID" \
    --secret-access-key "$OP_SECRET" --key "$work/keys/a.key" --cert "$work/b.crt" --key-id alias/web --token web \
    >/dev/null 2>"$work/err" || st=$?
[ "$st" = 2 ] && grep -q "do not belong together" "$work/err" || fail "pack-key with a foreign certificate: $st $(cat "$work/err")"
pass "acm pack-key: bundles {certificate, certificateChain, encryptedPrivateKey} with kms-local; the operator cannot open them; a key/certificate mismatch is refused"

# ---- the key-holder with its KMS settings, p11-kit server -------------------------------------
KH=$work/kh.sock PROV=$work/prov.sock
spawn kh env -u AWS_ACCESS_KEY_ID -u AWS_SECRET_ACCESS_KEY \
    "$CLOISTER" keyholder serve --socket "unix:$KH" --provision "unix:$PROV" --token-ttl 4s \
    --kms-imds vsock:3:8002 --kms-proxy vsock:3:8000 --kms-ca-file "$CA" --nsm "unix:$work/nsm.sock" \
    --kms-key-id "$web_arn" --kms-key-id alias/other-enclave --key-dir "$work/khkeys"
wait_for_log kh 'keyholder: ready'
grep -q 'event=kms_session region=eu-west-1 proxy=vsock:3:8000 credentials=imds' "$work/kh.log" ||
    fail "no KMS session with IMDS credentials in the key-holder"
P11SOCK=$work/p11.sock
export CLOISTER_KEYHOLDER=unix:$KH # the module's key-holder, in p11-kit server's environment
spawn p11kit p11-kit server -f --provider "$MODULE" -n "$P11SOCK" "pkcs11:"
for _ in $(seq 100); do [ -S "$P11SOCK" ] && break; sleep 0.05; done
[ -S "$P11SOCK" ] || fail "p11-kit server did not create its socket"
export P11_KIT_SERVER_ADDRESS=unix:path=$P11SOCK

# ---- refusals before anything is provisioned ------------------------------------------------------
acm_once() { # BUNDLE LABEL [ARGS...]
    local b=$1 l=$2
    shift 2
    # (without nginx's OPENSSL_CONF: libcurl would load the pkcs11 engine, whose method copies leak)
    env -u OPENSSL_CONF "$CLOISTER" host acm --once --bundle "$b" --token "$l" --provision "unix:$PROV" \
        --nginx-conf "$work/once/$l.conf" "$@"
}
mkdir -p "$work/once"
st=0
acm_once "$work/srv/c.json" other >"$work/out" 2>"$work/err" || st=$?
[ "$st" = 1 ] && grep -q 'KMS refused to open the key for this enclave' "$work/err" ||
    fail "a bundle for another PCR0: want exit 1 naming the KMS refusal, got $st: $(cat "$work/err")"
grep -q 'event=token_put_failed token=other .*AccessDeniedException' "$work/kh.log" || fail "the key-holder did not log KMS's answer"
[ ! -e "$work/once/other.conf" ] || fail "a refused bundle wrote an nginx stanza"
echo '{"certificate": "x", "certificateChain": "", "encryptedPrivateKey": "AAAA", "extra": 1}' >"$work/bad.json"
st=0
acm_once "$work/bad.json" bad >/dev/null 2>"$work/err" || st=$?
[ "$st" = 1 ] && grep -q 'unknown field "extra"' "$work/err" || fail "bad bundle: $st $(cat "$work/err")"
python3 -c 'import json,sys; d=json.load(open(sys.argv[1])); d["certificate"]="-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n"; json.dump(d,open(sys.argv[2],"w"))' \
    "$work/srv/a.json" "$work/bad2.json"
st=0
acm_once "$work/bad2.json" bad >/dev/null 2>"$work/err" || st=$?
[ "$st" = 1 ] && grep -q 'not a valid PEM X.509 certificate' "$work/err" || fail "bad certificate: $st $(cat "$work/err")"
python3 -c 'import json,sys; a=json.load(open(sys.argv[1])); b=json.load(open(sys.argv[2])); a["certificate"]=b["certificate"]; json.dump(a,open(sys.argv[3],"w"))' \
    "$work/srv/a.json" "$work/srv/b.json" "$work/mismatch.json"
st=0
acm_once "$work/mismatch.json" web >/dev/null 2>"$work/err" || st=$?
[ "$st" = 1 ] && grep -q 'key unreadable or not matching the certificate' "$work/err" ||
    fail "key of a, certificate of b: $st $(cat "$work/err")"
grep -q "event=token_put_failed token=web error=\"the certificate's public key is not the key's\"" "$work/kh.log" ||
    fail "the key-holder did not log the mismatch"
st=0
acm_once "$work/nonexistent.json" bad >/dev/null 2>"$work/err" || st=$?
[ "$st" = 3 ] && grep -q 'nonexistent.json' "$work/err" || fail "missing bundle: $st $(cat "$work/err")"
st=0
"$CLOISTER" host acm --bundle ftp://x/y --token t --provision "unix:$PROV" >/dev/null 2>"$work/err" || st=$?
[ "$st" = 2 ] && grep -q 'only http:// and https://' "$work/err" || fail "ftp URL: $st $(cat "$work/err")"
pass "refused: a bundle bound to another PCR0 (exit 1, 'KMS refused ...', AccessDeniedException in the key-holder's log, no files), a certificate that is not the key's, unknown fields, a broken certificate, a missing file, a non-HTTP URL"

# ---- the parent as the attacker --------------------------------------------------------------------
# The enclave's own TLS key is kept as a KMS ciphertext (purpose=enclave-tls-key, under the enclave's
# key alias/web) which the parent stores and relays at every start.  The parent knows its public key
# (the enclave's certificate shows it), forges a certificate for it under a CA of its own, and asks
# the key-holder for a token holding that ciphertext with a PIN of its choice: with the token it
# could sign as the attested enclave.  The key-holder must refuse, naming why.
openssl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-256 -out "$work/enclave-tls.key" 2>/dev/null
"$CLOISTER" kms --region "$REGION" --endpoint "https://localhost:$kp" --ca-file "$CA" --access-key-id "$OP_ID" \
    --secret-access-key "$OP_SECRET" encrypt --key-id alias/web --purpose enclave-tls-key \
    --in "$work/enclave-tls.key" >"$work/enclave-tls.ct" 2>"$work/err" || fail "TLS key ciphertext: $(cat "$work/err")"
openssl pkey -in "$work/enclave-tls.key" -pubout -out "$work/enclave-tls.pub"
openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -keyout "$work/evil-ca.key" \
    -out "$work/evil-ca.pem" -subj "/CN=parent's own CA" -days 1 2>/dev/null
openssl x509 -new -subj /CN=localhost -force_pubkey "$work/enclave-tls.pub" -CA "$work/evil-ca.pem" \
    -CAkey "$work/evil-ca.key" -days 1 -out "$work/forged.pem" 2>/dev/null || fail "forging the certificate"
python3 - "$work/forged.pem" "$work/evil-ca.pem" "$work/enclave-tls.ct" "$work/attack.json" <<'EOF2'
import json, sys
json.dump({"certificate": open(sys.argv[1]).read(), "certificateChain": open(sys.argv[2]).read(),
           "encryptedPrivateKey": open(sys.argv[3]).read().strip()}, open(sys.argv[4], "w"))
EOF2
echo "the-parent-s-pin" >"$work/parent-pin"
st=0
acm_once "$work/attack.json" web --pin-file "$work/parent-pin" >"$work/out" 2>"$work/err" || st=$?
[ "$st" = 1 ] || fail "ATTACK: the enclave's TLS-key ciphertext became a PKCS#11 token (exit $st): $(cat "$work/out" "$work/err")"
grep 'event=token_put_failed token=web' "$work/kh.log" | tail -1 |
    grep -q 'the key.s KMS ciphertext was not made for token \\"web\\" (it must carry the encryption context purpose=pkcs11-token, token=web.*InvalidCiphertextException' ||
    fail "the TLS-key ciphertext was refused without its reason: $(grep token_put_failed "$work/kh.log" | tail -1)"
! "$CLOISTER" keyholder status --provision "unix:$PROV" | has '^token=web ' || fail "a token web exists after the attack"
[ ! -e "$work/once/web.conf" ] || fail "the refused attack wrote an nginx stanza"
# the same with the TLS key encrypted without any context (as cloister made such ciphertexts before
# purposes existed): refused too
"$CLOISTER" kms --region "$REGION" --endpoint "https://localhost:$kp" --ca-file "$CA" --access-key-id "$OP_ID" \
    --secret-access-key "$OP_SECRET" encrypt --key-id alias/web --in "$work/enclave-tls.key" >"$work/enclave-tls-noctx.ct"
python3 -c 'import json,sys; d=json.load(open(sys.argv[1])); d["encryptedPrivateKey"]=open(sys.argv[2]).read().strip(); json.dump(d,open(sys.argv[3],"w"))' \
    "$work/attack.json" "$work/enclave-tls-noctx.ct" "$work/attack-noctx.json"
st=0
acm_once "$work/attack-noctx.json" web --pin-file "$work/parent-pin" >"$work/out" 2>"$work/err" || st=$?
[ "$st" = 1 ] && grep 'event=token_put_failed token=web' "$work/kh.log" | tail -1 | has 'was not made for token' ||
    fail "ATTACK: a context-free TLS-key ciphertext became a PKCS#11 token (exit $st): $(cat "$work/out" "$work/err")"
! "$CLOISTER" keyholder status --provision "unix:$PROV" | has '^token=web ' || fail "a token web exists after the attack"
# the same with a token key made for another token
st=0
acm_once "$work/for-other-token.json" web --pin-file "$work/parent-pin" >/dev/null 2>"$work/err" || st=$?
[ "$st" = 1 ] && grep 'event=token_put_failed token=web' "$work/kh.log" | tail -1 | has 'was not made for token' ||
    fail "a key made for token 'other' became token web: $st $(cat "$work/err")"
# a ciphertext under a KMS key the key-holder was not started with (alias/spare: same policy, not pinned)
st=0
acm_once "$work/spare.json" web >/dev/null 2>"$work/err" || st=$?
[ "$st" = 1 ] && grep 'event=token_put_failed token=web' "$work/kh.log" | tail -1 |
    grep -q 'not under a KMS key this key-holder was started with (--kms-key-id).*IncorrectKeyException' ||
    fail "a ciphertext under an unpinned key: $st $(grep token_put_failed "$work/kh.log" | tail -1)"
# a bundle whose chain signature is broken: an impostor CA with the real CA's name
openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -keyout "$work/impostor.key" \
    -out "$work/impostor.pem" -subj "/CN=cloister acm test CA" -days 2 2>/dev/null
python3 -c 'import json,sys; d=json.load(open(sys.argv[1])); d["certificateChain"]=open(sys.argv[2]).read(); json.dump(d,open(sys.argv[3],"w"))' \
    "$work/srv/a.json" "$work/impostor.pem" "$work/broken-chain.json"
st=0
acm_once "$work/broken-chain.json" web >/dev/null 2>"$work/err" || st=$?
[ "$st" = 1 ] && grep -q "certificate chain: certificate 1's signature does not verify" "$work/err" ||
    fail "host acm took a bundle with a broken chain: $st $(cat "$work/err")"
# and the key-holder itself (the parent need not run host acm): a put with that chain
cp "$work/keys/a.key" "$work/khkeys/a.key"
cat "$work/a.crt" "$work/impostor.pem" >"$work/broken-chain.pem"
st=0
"$CLOISTER" keyholder put --provision "unix:$PROV" --token chaintest --pin-file "$work/parent-pin" --key a.key \
    --chain "$work/broken-chain.pem" >/dev/null 2>"$work/err" || st=$?
[ "$st" != 0 ] && grep -q "event=token_put_failed token=chaintest error=\"certificate chain: certificate 1's signature does not verify" \
    "$work/kh.log" || fail "the key-holder took a broken chain: $st $(cat "$work/err")"
cat "$work/a.crt" "$work/ca.pem" >"$work/good-chain.pem"
"$CLOISTER" keyholder put --provision "unix:$PROV" --token chaintest --pin-file "$work/parent-pin" --key a.key \
    --chain "$work/good-chain.pem" >/dev/null 2>"$work/err" || fail "the key-holder refused a good chain: $(cat "$work/err")"
"$CLOISTER" keyholder delete --provision "unix:$PROV" --token chaintest >/dev/null || fail "delete chaintest"
pass "the parent as attacker: the enclave's TLS-key ciphertext with a forged certificate and the parent's PIN, a key made for another token, a key under an unpinned KMS key, a broken chain signature (host acm and the key-holder): all refused with the reason"

# ---- host acm provisions; nginx serves ------------------------------------------------------------
cp "$work/srv/a.json" "$work/bundle.json"
NGINX=(nginx -p "$work/nginx" -e "$work/nginx/error.log" -c "$work/nginx/nginx.conf")
echo "pin-$RANDOM-$RANDOM" >"$work/pin"
spawn acm "$CLOISTER" host acm --bundle "$work/bundle.json" --token web --provision "unix:$PROV" \
    --nginx-conf "$work/nginx/web.conf" --pin-file "$work/pin" --poll 300ms --refresh 1s \
    --reload-command "${NGINX[*]} -s reload" --p11-kit-server "unix:$P11SOCK"
wait_for_log acm 'event=provisioned token=web why=start generation=1'
[ "$(stat -c %a "$work/nginx/web.conf")" = 600 ] || fail "the stanza is not 0600"
grep -qxF "ssl_certificate_key \"engine:pkcs11:pkcs11:token=web;object=web;type=private?pin-value=$(cat "$work/pin")\";" \
    "$work/nginx/web.conf" || fail "stanza: $(cat "$work/nginx/web.conf")"
grep -qxF "ssl_certificate $work/nginx/web.chain.pem;" "$work/nginx/web.conf" || fail "stanza: no ssl_certificate"
for line in "engine_id = pkcs11" "MODULE_PATH = $CLIENT" "dynamic_path = $ENGINE" "init = 1"; do
    grep -qxF "$line" "$work/nginx/web.openssl.cnf" || fail "engine configuration lacks '$line'"
done
grep -qxF "#   P11_KIT_SERVER_ADDRESS='unix:path=$P11SOCK'" "$work/nginx/web.openssl.cnf" ||
    fail "engine configuration does not give NGINX's P11_KIT_SERVER_ADDRESS: $(cat "$work/nginx/web.openssl.cnf")"
# the line as written, quoted, is what a shell (or systemd's Environment=) reads back
[ "$(bash -c "$(sed -n "s/^#   //p" "$work/nginx/web.openssl.cnf" | grep '^P11_KIT'); echo \"\$P11_KIT_SERVER_ADDRESS\"")" = "$P11_KIT_SERVER_ADDRESS" ] ||
    fail "the P11_KIT_SERVER_ADDRESS line does not read back as the test's own"
st=0
"$CLOISTER" host acm --once --bundle x --token t --provision "unix:$PROV" --p11-kit-server vsock:4294967295:9999 \
    >/dev/null 2>"$work/err" || st=$?
[ "$st" = 2 ] && grep -q "enclave's CID" "$work/err" || fail "--p11-kit-server with CID ANY: $st $(cat "$work/err")"
[ "$(grep -c 'BEGIN CERTIFICATE' "$work/nginx/web.chain.pem")" = 2 ] || fail "chain file"
! grep -rq "PRIVATE KEY" "$work/nginx" || fail "a private key on the host side"
grep -q 'event=kms_key_opened' "$work/kh.log" || fail "the key-holder did not open the key with KMS"
port=$(free_port)
cat >"$work/nginx/nginx.conf" <<EOF
daemon off; user root; worker_processes 2; pid $work/nginx/nginx.pid;
error_log $work/nginx/error.log info; env P11_KIT_SERVER_ADDRESS;
events { worker_connections 512; }
http { access_log off; ssl_protocols TLSv1.2 TLSv1.3; ssl_session_cache off; ssl_session_tickets off;
  client_body_temp_path $work/nginx/tmp; proxy_temp_path $work/nginx/tmp; fastcgi_temp_path $work/nginx/tmp;
  uwsgi_temp_path $work/nginx/tmp; scgi_temp_path $work/nginx/tmp;
  server { listen 127.0.0.1:$port ssl; include $work/nginx/web.conf; location / { return 200 "web ok\n"; } } }
EOF
export OPENSSL_CONF=$work/nginx/web.openssl.cnf
spawn nginx "${NGINX[@]}"
get() { curl -sS --max-time 10 --cacert "$work/ca.pem" "$@" "https://localhost:$port/" --resolve "localhost:$port:127.0.0.1"; }
for _ in $(seq 100); do
    get >/dev/null 2>&1 && break
    kill -0 "${pids[nginx]}" 2>/dev/null || { cat "$work/nginx/error.log"; fail "nginx exited"; }
    sleep 0.1
done
[ "$(get --tlsv1.3)" = "web ok" ] && [ "$(get --tlsv1.2 --tls-max 1.2)" = "web ok" ] || fail "HTTPS through the token"
served() { openssl s_client -connect "127.0.0.1:$port" -servername localhost </dev/null 2>/dev/null | openssl x509 -noout -fingerprint -sha256; }
[ "$(served)" = "$(openssl x509 -in "$work/a.crt" -noout -fingerprint -sha256)" ] || fail "nginx does not serve a.crt"
pass "host acm: token provisioned from the bundle (KMS Decrypt with Recipient in the key-holder), stanza 0600 + chain + engine conf written, no key on the host; nginx serves HTTPS, curl verifies (TLS 1.3 and 1.2)"

# ---- rotation: a changed bundle under load ------------------------------------------------------
start_handshake_load "$port" 25 40
sleep 0.5
cp "$work/srv/b.json" "$work/bundle.json.new" && mv "$work/bundle.json.new" "$work/bundle.json"
wait_for_log acm 'event=provisioned token=web why=changed generation=2' 200
wait_for_log acm 'event=nginx_reloaded' 100
sleep 0.5 # the new workers take over
finish_handshake_load 100
[ "$(served)" = "$(openssl x509 -in "$work/b.crt" -noout -fingerprint -sha256)" ] || fail "after the rotation nginx does not serve b.crt"
[ "$(get)" = "web ok" ] || fail "the new chain does not verify"
pass "a changed bundle (new RSA key and certificate): token rotated, nginx reloaded under $load_total fresh handshakes from 2 clients, none failed; b.crt served"

# ---- a bundle the enclave cannot open: refused, the old token keeps working ----------------------
cp "$work/srv/c.json" "$work/bundle.json.new" && mv "$work/bundle.json.new" "$work/bundle.json"
wait_for_log acm 'event=bundle_refused token=web why=changed' 200
grep 'event=bundle_refused' "$work/acm.log" | has 'KMS refused to open the key for this enclave' ||
    fail "the refusal does not say why: $(grep bundle_refused "$work/acm.log")"
grep -q 'event=token_put_failed token=web .*AccessDeniedException' "$work/kh.log" || fail "no AccessDenied in the key-holder's log"
for _ in 1 2 3; do [ "$(get)" = "web ok" ] || fail "the old token stopped working after a refused bundle"; done
[ "$(served)" = "$(openssl x509 -in "$work/b.crt" -noout -fingerprint -sha256)" ] || fail "a refused bundle changed the certificate"
grep -qxF "ssl_certificate_key \"engine:pkcs11:pkcs11:token=web;object=web;type=private?pin-value=$(cat "$work/pin")\";" \
    "$work/nginx/web.conf" || fail "the stanza changed"
pass "a bundle whose key is bound to another PCR0: refused ('KMS refused to open the key for this enclave'; AccessDeniedException in the key-holder); b.crt still served"

# ---- refresh re-decrypts; the TTL restarts ------------------------------------------------------
before=$(grep -c 'event=kms_key_opened' "$work/kh.log")
sleep 3
after=$(grep -c 'event=kms_key_opened' "$work/kh.log")
[ $((after - before)) -ge 2 ] || fail "refresh: $((after - before)) KMS opens in 3 s"
grep -q 'event=provisioned token=web why=refresh generation=2' "$work/acm.log" || fail "no refresh"
"$CLOISTER" keyholder status --provision "unix:$PROV" >"$work/status"
grep -qE '^token=web .*generation=2 age_ms=[0-9]{1,4}$' "$work/status" || fail "status: $(cat "$work/status")"
pass "refresh every 1 s: the key-holder opened the ciphertext with KMS again ($((after - before)) times in 3 s), generation unchanged, TTL restarted"

# ---- --bundle URL -------------------------------------------------------------------------------
hp=$(free_port)
spawn http python3 -m http.server "$hp" --bind 127.0.0.1 --directory "$work/srv"
for _ in $(seq 100); do curl -s "http://127.0.0.1:$hp/" >/dev/null 2>&1 && break; sleep 0.05; done
acm_once "http://127.0.0.1:$hp/url-a.json" url >"$work/out" 2>"$work/err" || fail "--bundle URL: $(cat "$work/err")"
grep -q '^token=url ' "$work/out" || fail "--once output: $(cat "$work/out")"
[ "$(openssl x509 -in "$work/once/url.chain.pem" -noout -fingerprint -sha256)" = \
  "$(openssl x509 -in "$work/a.crt" -noout -fingerprint -sha256)" ] || fail "chain from the URL"
"$CLOISTER" keyholder status --provision "unix:$PROV" | has '^token=url ' || fail "no token from the URL"
st=0
acm_once "http://127.0.0.1:$hp/missing.json" url >/dev/null 2>"$work/err" || st=$?
[ "$st" = 3 ] && grep -q 'HTTP status 404' "$work/err" || fail "404 URL: $st $(cat "$work/err")"
st=0
acm_once "https://127.0.0.1:$hp/url-a.json" url >/dev/null 2>"$work/err" || st=$?
[ "$st" = 3 ] || fail "https:// to a plain HTTP server: $st $(cat "$work/err")"
grep -qE 'pin-value=[0-9a-f]{32}";$' "$work/once/url.conf" || fail "no random 32-hex PIN without --pin-file"
# https: a TLS server with a certificate from the test CA
sp=$(free_port)
spawn https python3 -c '
import http.server, ssl, sys, functools
h = functools.partial(http.server.SimpleHTTPRequestHandler, directory=sys.argv[2])
s = http.server.HTTPServer(("127.0.0.1", int(sys.argv[1])), h)
c = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER); c.load_cert_chain(sys.argv[3], sys.argv[4])
s.socket = c.wrap_socket(s.socket, server_side=True)
print("https: listening", flush=True); s.serve_forever()' "$sp" "$work/srv" "$work/a.crt" "$work/keys/a.key"
wait_for_log https 'https: listening'
acm_once "https://localhost:$sp/url-b.json" url --ca-file "$work/ca.pem" >/dev/null 2>"$work/err" ||
    fail "--bundle https:// with --ca-file: $(cat "$work/err")"
[ "$(openssl x509 -in "$work/once/url.chain.pem" -noout -fingerprint -sha256)" = \
  "$(openssl x509 -in "$work/b.crt" -noout -fingerprint -sha256)" ] || fail "chain from the https URL"
st=0
acm_once "https://localhost:$sp/url-b.json" url >/dev/null 2>"$work/err" || st=$?
[ "$st" = 3 ] && grep -qi 'certificate' "$work/err" || fail "https:// without the CA: $st $(cat "$work/err")"
stop https || true
pass "--bundle http:// and https:// (libcurl, --ca-file) provision; HTTP 404, a failed TLS handshake and an untrusted certificate exit 3 with the reason; no --pin-file: a random PIN"

# ---- expiry: KMS out of reach, so no refresh succeeds for longer than --token-ttl -----------------
stop outbound || true
wait_for_log acm 'event=bundle_refused token=web why=refresh .*KMS unreachable from the enclave' 100
for _ in $(seq 120); do grep -q 'event=token_expired token=web' "$work/kh.log" && break; sleep 0.1; done
grep -q 'event=token_expired token=web' "$work/kh.log" || fail "the token did not expire without refresh"
if get >/dev/null 2>&1; then fail "nginx still completes handshakes with an expired token"; fi
"$CLOISTER" keyholder status --provision "unix:$PROV" | has '^token=web .* expired' || fail "status: not expired"
stop acm || true
pass "KMS out of reach (outbound proxy stopped): refreshes refused as 'KMS unreachable from the enclave', the token expires after --token-ttl 4s, its key is wiped, handshakes fail"

stop nginx || true
stop p11kit || true
stop kh || true
grep -q 'event=stopped keys=wiped' "$work/kh.log" || fail "the key-holder did not wipe its keys on exit"
grep -q 'event=stopped' "$work/acm.log" || fail "host acm did not stop cleanly"
if grep -lE 'ERROR: (Address|Leak)Sanitizer|runtime error:' "$work"/*.log >/dev/null 2>&1; then
    fail "sanitizer reports in $(grep -lE 'ERROR: (Address|Leak)Sanitizer|runtime error:' "$work"/*.log | xargs -n1 basename)"
fi
pass "host acm stopped on SIGTERM; the key-holder wiped its keys; no sanitizer report in any log"
