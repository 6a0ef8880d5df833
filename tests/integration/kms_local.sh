#!/usr/bin/env bash
# cloister kms-local end to end with an independent client, the real AWS SDK
# for JavaScript v3 (@aws-sdk/client-kms): the protocol, SigV4 (a wrong
# secret, an unknown key and a skewed clock refused), key policies; Recipient requests with
# documents from nsm-sim (a policy on the enclave's PCR0 opens, another PCR0,
# a debug-mode enclave, a tampered, an expired and a foreign-root document
# are refused, never a Plaintext), CiphertextForRecipient opened by
# `openssl cms -decrypt` and printed with the real sample's structure; keys
# surviving a restart, a wrong master key refused, TLS with the written CA,
# the SDK over a unix socket, bad flags.
set -euo pipefail
source "$(dirname "$0")/common.bash"

command -v node >/dev/null || { echo "skip: node is not installed"; exit 77; }
[ -d "$SOURCE_DIR/tests/node/node_modules/@aws-sdk/client-kms" ] ||
    { echo "skip: tests/node has no @aws-sdk/client-kms (run scripts/node-deps.sh)"; exit 77; }
SDK="$SOURCE_DIR/tests/node/kms_sdk.js"
VECTORS=${CLOISTER_TEST_VECTORS:-$SOURCE_DIR/tests/vectors}
AK=AKIDKMSLOCALTEST01
SK='kms/local+secret/0123456789abcdefghijklmn'

sdk() { node --no-warnings "$SDK" "$@"; }

# ---- bad command lines ------------------------------------------------------------------
"$CLOISTER" kms-local --help | has 'CiphertextForRecipient' || fail "--help"
for args in "--state $work/x --credentials a:b" "--listen tcp:127.0.0.1:1 --credentials a:b" \
            "--listen tcp:127.0.0.1:1 --state $work/x" "--listen nowhere --state $work/x --credentials a:b" \
            "--listen tcp:127.0.0.1:1 --state $work/x --credentials nocolon" \
            "--listen tcp:127.0.0.1:1 --state $work/x --credentials a:b --account 12" \
            "--listen tcp:127.0.0.1:1 --state $work/x --credentials a:b --bogus"; do
    status=0
    # shellcheck disable=SC2086
    "$CLOISTER" kms-local $args 2>"$work/err" || status=$?
    [ "$status" -eq 2 ] || fail "kms-local $args: exit $status, expected 2"
    grep -q 'cloister kms-local: ' "$work/err" || fail "kms-local $args: no message"
done
pass "bad flags give exit 2 and a message"

# ---- simulators: A (trusted), D (debug, trusted), F (foreign root) ---------------------------
spawn simA "$CLOISTER" nsm-sim --listen "unix:$work/a.sock" --state "$work/simA"
spawn simD "$CLOISTER" nsm-sim --listen "unix:$work/d.sock" --state "$work/simD" --debug
spawn simF "$CLOISTER" nsm-sim --listen "unix:$work/f.sock" --state "$work/simF"
for s in simA simD simF; do wait_for_log "$s" '^nsm-sim: listening on '; done
openssl genpkey -algorithm RSA -pkeyopt rsa_keygen_bits:2048 -out "$work/rk.pem" 2>/dev/null
openssl pkey -in "$work/rk.pem" -pubout -out "$work/rpub.pem"
for s in a d f; do
    "$CLOISTER" attest request --nsm "unix:$work/$s.sock" --public-key "$work/rpub.pem" -o "$work/doc-$s.bin"
done
pcr0=$("$CLOISTER" nsm --nsm "unix:$work/a.sock" pcr 0 | cut -d' ' -f1)
[ ${#pcr0} -eq 96 ] || fail "PCR0 of the simulator: '$pcr0'"
# a tampered copy: one byte of the signature changed
cp "$work/doc-a.bin" "$work/doc-t.bin"
size=$(stat -c %s "$work/doc-t.bin")
printf '\x55' | dd of="$work/doc-t.bin" bs=1 seek=$((size - 20)) conv=notrunc status=none
cmp -s "$work/doc-a.bin" "$work/doc-t.bin" && printf '\x66' | dd of="$work/doc-t.bin" bs=1 seek=$((size - 20)) conv=notrunc status=none

policy() { # policy FILE PCR0: admin for the account root, Decrypt/GenerateDataKey/GenerateRandom on PCR0
    cat >"$1" <<EOF
{
  "Version": "2012-10-17",
  "Statement": [
    {"Sid": "admin", "Effect": "Allow", "Principal": {"AWS": "arn:aws:iam::111122223333:root"},
     "NotAction": ["kms:Decrypt", "kms:GenerateDataKey"], "Resource": "*"},
    {"Sid": "enclave", "Effect": "Allow", "Principal": {"AWS": "arn:aws:iam::111122223333:root"},
     "Action": ["kms:Decrypt", "kms:GenerateDataKey"], "Resource": "*",
     "Condition": {"StringEqualsIgnoreCase": {"kms:RecipientAttestation:ImageSha384": "$2"}}}
  ]
}
EOF
}
policy "$work/enclave.json" "${pcr0^^}" # upper case: IgnoreCase matters
policy "$work/otherpcr.json" "$(printf 'ab%.0s' $(seq 48))"

# ---- kms-local over TCP -------------------------------------------------------------------------
port=$(free_port)
EP="http://127.0.0.1:$port"
start_kms() {
    spawn kms "$CLOISTER" kms-local --listen "tcp:127.0.0.1:$port" --state "$work/kms" --credentials "$AK:$SK" \
        --root "$work/simA/root.pem" --root "$work/simD/root.pem" --root aws \
        --key "alias/enclave=$work/enclave.json" --key "alias/otherpcr=$work/otherpcr.json" "$@"
    wait_for_log kms '^kms-local: listening on '
}
start_kms
[ "$(stat -c %a "$work/kms/master.key")" = 600 ] || fail "master.key is not 0600"

sdk basic "$EP" "$AK" "$SK" >"$work/basic.out" 2>&1 || { cat "$work/basic.out" >&2; fail "AWS SDK basic operations"; }
grep -c '^ok ' "$work/basic.out" | has -v '^0$' || fail "no checks ran"
pass "AWS SDK: CreateKey/Describe/aliases/Encrypt/Decrypt/ReEncrypt/GenerateDataKey/GenerateRandom/policies/states ($(grep -c '^ok ' "$work/basic.out") checks)"
blob=$(sed -n 's/^BLOB=//p' "$work/basic.out")
[ -n "$blob" ] || fail "no blob from the SDK run"

sdk expect-error "$EP" "$AK" "wrong-secret" InvalidSignatureException | has '^ok ' || fail "wrong secret"
sdk expect-error "$EP" AKIDNOSUCHKEY000000 "$SK" UnrecognizedClientException | has '^ok ' || fail "unknown key"
pass "a wrong secret key gives InvalidSignatureException, an unknown key UnrecognizedClientException"
out=$(sdk skewed "$EP" "$AK" "$SK") || fail "skewed clock: $out"
pass "a client clock 10 minutes slow gives InvalidSignatureException 'Signature expired: ...'"
curl -s -X POST "$EP/" -H 'X-Amz-Target: TrentService.ListKeys' -H "Content-Type: application/x-amz-json-1.1" \
    -d '{}' | has '"__type":"MissingAuthenticationTokenException"' || fail "unsigned request"
pass "an unsigned request gives MissingAuthenticationTokenException"

# ---- Recipient ------------------------------------------------------------------------------------
eblob=$(sdk encrypt "$EP" "$AK" "$SK" alias/enclave "enclave secret" | sed -n 's/^BLOB=//p')
[ -n "$eblob" ] || fail "Encrypt under alias/enclave"
recipient() { # recipient OP KEY DOC OUT [BLOB]: prints the SDK's lines
    sdk recipient "$EP" "$AK" "$SK" "$@"
}
out=$(recipient decrypt "" "$work/doc-a.bin" "$work/cfr.ber" "$eblob")
echo "$out" | has '^FAIL' && fail "Decrypt with a Recipient: $out"
[ -s "$work/cfr.ber" ] || fail "no CiphertextForRecipient: $out"
[ "$(openssl cms -decrypt -inform DER -in "$work/cfr.ber" -inkey "$work/rk.pem")" = "enclave secret" ] ||
    fail "openssl cms -decrypt does not give the plaintext"
pass "Decrypt with a Recipient on the policy's PCR0: no Plaintext, CiphertextForRecipient opened by openssl cms -decrypt"

strip() { openssl cms -cmsout -print -inform DER -in "$1" | grep -v '^ *[0-9a-f]\{4\} - '; }
[ -f "$VECTORS/kms/kms-ciphertext-for-recipient.ber" ] ||
    fail "the real KMS sample $VECTORS/kms/kms-ciphertext-for-recipient.ber is missing (part of the repository)"
diff <(strip "$work/cfr.ber") <(strip "$VECTORS/kms/kms-ciphertext-for-recipient.ber") >"$work/shape.diff" ||
    fail "CMS structure differs from the real KMS sample: $(cat "$work/shape.diff")"
pass "openssl cms -cmsout -print: the same structure as the real KMS CiphertextForRecipient"

out=$(recipient datakey alias/enclave "$work/doc-a.bin" "$work/dk.ber")
echo "$out" | has '^FAIL\|^ERROR' && fail "GenerateDataKey with a Recipient: $out"
[ "$(openssl cms -decrypt -inform DER -in "$work/dk.ber" -inkey "$work/rk.pem" | wc -c)" -eq 32 ] ||
    fail "the data key from CiphertextForRecipient is not 32 bytes"
if [ -f "$VECTORS/kms/kms-ciphertext-for-recipient.ber" ]; then
    # a 32-byte data key makes an envelope of the sample's very size: offsets, lengths and
    # indefinite forms must all be the same
    layout() { openssl asn1parse -inform DER -in "$1" | sed 's/\(prim\|cons\): *\([A-Za-z0-9 ]*\).*/\1 \2/'; }
    diff <(layout "$work/dk.ber") <(layout "$VECTORS/kms/kms-ciphertext-for-recipient.ber") >"$work/layout.diff" ||
        fail "BER layout differs from the real sample: $(cat "$work/layout.diff")"
    [ "$(stat -c %s "$work/dk.ber")" -eq 493 ] || fail "the envelope of a 32-byte key is not 493 bytes"
    pass "a data key's CiphertextForRecipient has the real sample's exact BER layout (493 bytes)"
fi
out=$(recipient random "" "$work/doc-a.bin" "$work/rnd.ber")
echo "$out" | has '^FAIL\|^ERROR' && fail "GenerateRandom with a Recipient: $out"
[ "$(openssl cms -decrypt -inform DER -in "$work/rnd.ber" -inkey "$work/rk.pem" | wc -c)" -eq 32 ] ||
    fail "GenerateRandom for a Recipient"
pass "GenerateDataKey and GenerateRandom with a Recipient: CiphertextForRecipient only"

oblob=$(sdk encrypt "$EP" "$AK" "$SK" alias/otherpcr "x" | sed -n 's/^BLOB=//p')
expect_refused() { # expect_refused WHAT TYPE ARGS...
    local what=$1 type=$2
    shift 2
    rm -f "$work/refused.ber"
    local out
    out=$(recipient "$@" "$work/refused.ber" "${blob_arg:-}")
    echo "$out" | has "^ERROR=$type\$" || fail "$what: expected $type, got: $out"
    [ ! -e "$work/refused.ber" ] || fail "$what: a CiphertextForRecipient came back"
}
blob_arg=$oblob expect_refused "a policy requiring another PCR0" AccessDeniedException decrypt "" "$work/doc-a.bin"
blob_arg=$eblob expect_refused "a debug-mode enclave (PCR0 zero)" AccessDeniedException decrypt "" "$work/doc-d.bin"
blob_arg=$eblob expect_refused "a tampered document" ValidationException decrypt "" "$work/doc-t.bin"
blob_arg=$eblob expect_refused "a document under a foreign root" ValidationException decrypt "" "$work/doc-f.bin"
blob_arg="" expect_refused "another PCR0 (GenerateDataKey)" AccessDeniedException datakey alias/otherpcr "$work/doc-a.bin"
if [ -f "$VECTORS/nitro/nitro-2024-09-07-maxfields.b64" ]; then
    base64 -d "$VECTORS/nitro/nitro-2024-09-07-maxfields.b64" >"$work/doc-expired.bin"
    blob_arg=$eblob expect_refused "an expired real AWS document" ValidationException decrypt "" "$work/doc-expired.bin"
    grep -q 'not valid at\|expired' <(recipient decrypt "" "$work/doc-expired.bin" "$work/x" "$eblob") ||
        fail "the expired document's refusal does not say so"
fi
out=$(sdk decrypt-blob "$EP" "$AK" "$SK" "$eblob" 2>&1 || true)
echo "$out" | has 'AccessDeniedException' || fail "Decrypt without a Recipient of a PCR0-bound key: $out"
pass "refused: another PCR0, a debug-mode enclave, a tampered, a foreign-root and an expired document, no Recipient"

# ---- four SDK clients at once on one server ---------------------------------------------------------
for i in 1 2 3 4; do
    sdk basic "$EP" "$AK" "$SK" >"$work/par$i.out" 2>&1 &
    par[$i]=$!
done
for i in 1 2 3 4; do
    wait "${par[$i]}" || { cat "$work/par$i.out"; fail "parallel SDK client $i"; }
done
pass "four SDK clients at once: every check passes"

# ---- restarts, master key -----------------------------------------------------------------------
stop kms
start_kms
[ "$(sdk decrypt-blob "$EP" "$AK" "$SK" "$blob")" = "PLAINTEXT=survives restarts" ] || fail "key lost in a restart"
grep -c 'event=key ' "$work/kms.log" | has 2 || fail "--key did not log its keys"
stop kms
status=0
CLOISTER_KMS_MASTER_KEY=$(printf '00%.0s' $(seq 32)) timeout 10 "$CLOISTER" kms-local --listen "tcp:127.0.0.1:$port" \
    --state "$work/kms" --credentials "$AK:$SK" 2>"$work/err" || status=$?
[ "$status" -ne 0 ] && grep -q 'master key' "$work/err" || fail "a wrong master key was not refused: $(cat "$work/err")"
pass "keys survive a restart; another master key is refused at start"

# the master key from a file, then the same key from the environment; none given is refused
openssl rand -hex 32 >"$work/master.hex"
spawn kms2 "$CLOISTER" kms-local --listen "tcp:127.0.0.1:$port" --state "$work/kms2" --credentials "$AK:$SK" \
    --master-key-file "$work/master.hex"
wait_for_log kms2 '^kms-local: listening on '
[ ! -e "$work/kms2/master.key" ] || fail "a master.key was written although --master-key-file was given"
key2=$(sdk basic "$EP" "$AK" "$SK" | sed -n 's/^BLOB=//p')
stop kms2
CLOISTER_KMS_MASTER_KEY=$(cat "$work/master.hex") spawn kms2 "$CLOISTER" kms-local --listen "tcp:127.0.0.1:$port" \
    --state "$work/kms2" --credentials "$AK:$SK"
wait_for_log kms2 '^kms-local: listening on '
[ "$(sdk decrypt-blob "$EP" "$AK" "$SK" "$key2")" = "PLAINTEXT=survives restarts" ] || fail "master key from the environment"
stop kms2
status=0
timeout 10 "$CLOISTER" kms-local --listen "tcp:127.0.0.1:$port" --state "$work/kms2" --credentials "$AK:$SK" \
    2>"$work/err" || status=$?
[ "$status" -ne 0 ] && grep -q 'no master key was given' "$work/err" || fail "no master key for an existing state: $(cat "$work/err")"
[ ! -e "$work/kms2/master.key" ] || fail "a master.key was generated for an existing state"
# a secret is read from the file itself: a symbolic link put in its place is refused
ln -s "$work/master.hex" "$work/master-link.hex"
status=0
timeout 10 "$CLOISTER" kms-local --listen "tcp:127.0.0.1:$port" --state "$work/kms2" --credentials "$AK:$SK" \
    --master-key-file "$work/master-link.hex" 2>"$work/err" || status=$?
[ "$status" -ne 0 ] && grep -q 'master-link.hex: a symbolic link' "$work/err" ||
    fail "a master key file that is a symbolic link: $status $(cat "$work/err")"
pass "master key from --master-key-file and from \$CLOISTER_KMS_MASTER_KEY; none for an existing state, or through a symbolic link, is refused"

# ---- TLS with the written CA; the SDK over a unix socket ---------------------------------------------
tport=$(free_port)
spawn tls "$CLOISTER" kms-local --listen "tcp:127.0.0.1:$tport" --state "$work/kms" --credentials "$AK:$SK" --tls
wait_for_log tls '^kms-local: listening on .* ca='
[ -f "$work/kms/ca.pem" ] && [ "$(stat -c %a "$work/kms/ca.key")" = 600 ] || fail "CA files"
echo | openssl s_client -connect "127.0.0.1:$tport" -CAfile "$work/kms/ca.pem" -verify_return_error \
    -verify_hostname kms.us-east-1.amazonaws.com >/dev/null 2>&1 || fail "TLS certificate does not verify under ca.pem"
sdk basic "https://127.0.0.1:$tport" "$AK" "$SK" "$work/kms/ca.pem" >"$work/tls.out" || { cat "$work/tls.out"; fail "SDK over TLS"; }
pass "TLS: the certificate verifies under DIR/ca.pem for kms.us-east-1.amazonaws.com; the SDK works over HTTPS"
stop tls

spawn unix "$CLOISTER" kms-local --listen "unix:$work/kms.sock" --state "$work/kms" --credentials "$AK:$SK"
wait_for_log unix '^kms-local: listening on unix:'
[ "$(sdk decrypt-blob "unix:$work/kms.sock" "$AK" "$SK" "$blob")" = "PLAINTEXT=survives restarts" ] ||
    fail "SDK over the unix socket"
stop unix
[ ! -e "$work/kms.sock" ] || fail "the unix socket was left behind"
pass "the SDK over a unix socket; the socket removed on exit"
