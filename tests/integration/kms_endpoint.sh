#!/usr/bin/env bash
# `cloister enclave -kms-for-app`: KMS for unmodified apps, in the enclave's set-up on one machine
# (nsm-sim with a PCR0, imds-sim behind `cloister host --imds`, kms-local with TLS behind
# `cloister host --outbound`, vsock through the unix stand-in), the enclave in its own network
# namespace (unshare --net) and the apps run inside it (nsenter):
#   - boto3 (Debian's python3-boto3) and the AWS SDK for JavaScript v3, with made-up credentials and
#     endpoint_url http://127.0.0.1:INTPORT, get plaintexts from Decrypt and GenerateDataKey under a
#     key whose policy requires a Recipient with the enclave's PCR0; the same calls with the
#     enclave's own credentials straight to kms-local are denied
#   - the app's EncryptionContext passes unchanged; Encrypt/DescribeKey pass through signed
#   - a key bound to another PCR0: KMS's AccessDeniedException reaches the app unchanged
#   - the public listener has no such route (404) and from outside the namespace the internal
#     listener cannot be reached
#   - malformed, oversized, unknown requests: KMS-shaped refusals, the enclave keeps serving
#   - -kms-for-app-keys / -kms-for-app-operations: AccessDeniedException-shaped refusals
set -euo pipefail
source "$(dirname "$0")/common.bash"

[ "$(id -u)" = 0 ] && unshare --net true 2>/dev/null || { echo "skip: needs root and unshare --net"; exit 77; }
PY=/usr/bin/python3
$PY -c 'import boto3' 2>/dev/null || PY=python3
$PY -c 'import boto3' 2>/dev/null || { echo "skip: no boto3 (scripts/deps.sh installs python3-boto3)"; exit 77; }

REGION=eu-west-1
export CLOISTER_VSOCK_STANDIN=$work/vsock
mkdir -p "$CLOISTER_VSOCK_STANDIN"
PCR0=$(printf '%096d' 7 | tr 0 a)
PCR0_OTHER=$(printf '%096d' 9 | tr 0 b)

spawn sim "$CLOISTER" nsm-sim --listen "unix:$work/nsm.sock" --state "$work/state" --pcr "0=$PCR0"
wait_for_log sim '^nsm-sim: listening on '

start_instance_role "$REGION"

policy() { # policy PCR0: the operator encrypts; Decrypt and data keys only with a Recipient of that PCR0
    cat <<EOF
{"Version": "2012-10-17", "Statement": [
  {"Sid": "operators", "Effect": "Allow", "Principal": {"AWS": "arn:aws:iam::111122223333:root"},
   "Action": ["kms:Encrypt", "kms:DescribeKey"], "Resource": "*"},
  {"Sid": "only the enclave opens", "Effect": "Allow", "Principal": {"AWS": "arn:aws:iam::111122223333:root"},
   "Action": ["kms:Decrypt", "kms:GenerateDataKey", "kms:GenerateDataKeyPair", "kms:GenerateRandom"], "Resource": "*",
   "Condition": {"StringEqualsIgnoreCase": {"kms:RecipientAttestation:PCR0": "$1"}}}]}
EOF
}
policy "$PCR0" >"$work/pcr.json"
policy "$PCR0_OTHER" >"$work/other.json"
kp=$(free_port)
spawn kms "$CLOISTER" kms-local --listen "tcp:127.0.0.1:$kp" --state "$work/kms" --region "$REGION" --tls \
    --credentials "$role_key:$role_secret" --credentials AKIAOPERATOR0000000:operator-secret-key \
    --root "$work/state/root.pem" --key "alias/app=$work/pcr.json" --key "alias/other-pcr0=$work/other.json"
wait_for_log kms '^kms-local: listening on '
CA=$work/kms/ca.pem
spawn outbound "$CLOISTER" host --outbound "vsock:3:8000=127.0.0.1:$kp"
wait_for_log outbound 'event=started'

op() {
    "$CLOISTER" kms --region "$REGION" --endpoint "https://localhost:$kp" --ca-file "$CA" \
        --access-key-id AKIAOPERATOR0000000 --secret-access-key operator-secret-key "$@"
}
head -c 100 /dev/urandom | base64 -w0 >"$work/secret.txt"
op encrypt --key-id alias/app --in "$work/secret.txt" >"$work/app.ct" || fail "operator encrypt"
op encrypt --key-id alias/other-pcr0 --in "$work/secret.txt" >"$work/other.ct" || fail "operator encrypt (other)"
op encrypt --key-id alias/app --context app=kms-test --context tenant=7 --in "$work/secret.txt" >"$work/ctx.ct" ||
    fail "operator encrypt (context)"

# the enclave, in a namespace of its own; its links are the stand-in's files
ip=$(free_port)
start_kms_enclave() { # NAME EXTRA_FLAGS...
    local name=$1
    shift
    spawn "$name" unshare --net "$CLOISTER" enclave -fqdn localhost --nsm "unix:$work/nsm.sock" \
        --listen "unix:$work/$name.sock" -intport "$ip" -kms-imds vsock:3:8002 -kms-proxy vsock:3:8000 \
        -kms-ca-file "$CA" -kms-for-app "$@"
    wait_for_log "$name" 'event=listening listener=public'
    epid=${pids[$name]}
}
start_kms_enclave enclave
grep -q 'event=kms_for_app .*keys=any operations=all' "$work/enclave.log" || fail "no kms_for_app log line"
inside() { nsenter --net="/proc/$epid/ns/net" "$@"; }

out=$(inside $PY "$SOURCE_DIR/tests/integration/kms_endpoint_app.py" through "$ip" alias/app alias/other-pcr0 \
    "$(cat "$work/app.ct")" "$(cat "$work/other.ct")" "$(cat "$work/ctx.ct")" "$work/secret.txt") ||
    fail "boto3 through the endpoint: $out"
echo "$out" | grep -v '^MESSAGE='
msg=$(echo "$out" | sed -n 's/^MESSAGE=//p')
[ -n "$msg" ] && [[ "$msg" != *cloister* ]] || fail "the refusal is not KMS's own: '$msg'"
pass "boto3 inside the enclave's namespace: Decrypt, GenerateDataKey, GenerateRandom, context, pass-through, KMS's refusals unchanged"

out=$($PY "$SOURCE_DIR/tests/integration/kms_endpoint_app.py" denied "https://localhost:$kp" "$role_key" "$role_secret" \
    "$CA" alias/app "$(cat "$work/app.ct")") || fail "straight to kms-local: $out"
echo "$out"
pass "boto3 with the enclave's own credentials straight to kms-local (no Recipient): AccessDeniedException"

if node_modules_present; then
    out=$(inside node "$SOURCE_DIR/tests/node/kms_endpoint.js" through "http://127.0.0.1:$ip" alias/app \
        "$(cat "$work/app.ct")" "$(cat "$work/secret.txt" | base64 -w0)") || fail "SDK v3 through the endpoint: $out"
    echo "$out"
    out=$(node "$SOURCE_DIR/tests/node/kms_endpoint.js" denied "https://localhost:$kp" "$role_key" "$role_secret" \
        "$CA" alias/app "$(cat "$work/app.ct")") || fail "SDK v3 straight to kms-local: $out"
    echo "$out"
    pass "the AWS SDK for JavaScript v3: the same through the endpoint, denied straight to kms-local"
else
    echo "skip: tests/node/node_modules absent (scripts/node-deps.sh): the SDK v3 part"
fi

# ---- where the endpoint is not ----------------------------------------------------------------
st=$(curl -sk -o "$work/pub.out" -w '%{http_code}' --unix-socket "$work/enclave.sock" -X POST \
    -H 'X-Amz-Target: TrentService.Decrypt' -H 'Content-Type: application/x-amz-json-1.1' \
    --data "{\"CiphertextBlob\":\"$(cat "$work/app.ct")\"}" https://localhost/) || true
[ "$st" = 404 ] || fail "the public listener answered $st to a KMS call: $(cat "$work/pub.out")"
rc=0
curl -s -m 5 -o /dev/null -X POST -H 'X-Amz-Target: TrentService.GenerateRandom' \
    -H 'Content-Type: application/x-amz-json-1.1' --data '{"NumberOfBytes":8}' "http://127.0.0.1:$ip/" || rc=$?
[ "$rc" = 7 ] || fail "from outside the enclave's namespace: curl exit $rc (want 7, refused)"
st=$(inside curl -s -o /dev/null -w '%{http_code}' -X POST -H 'X-Amz-Target: TrentService.GenerateRandom' \
    -H 'Content-Type: application/x-amz-json-1.1' --data '{"NumberOfBytes":8}' "http://127.0.0.1:$ip/")
[ "$st" = 200 ] || fail "the same request inside: $st"
pass "the public listener has no KMS route (404); outside the namespace the internal listener cannot be reached"

# ---- bad input ---------------------------------------------------------------------------------
out=$(inside $PY "$SOURCE_DIR/tests/integration/kms_endpoint_app.py" bad "$ip") || fail "bad input: $out"
echo "$out"
kill -0 "$epid" || fail "the enclave died"
out=$(inside $PY "$SOURCE_DIR/tests/integration/kms_endpoint_app.py" through "$ip" alias/app alias/other-pcr0 \
    "$(cat "$work/app.ct")" "$(cat "$work/other.ct")" "$(cat "$work/ctx.ct")" "$work/secret.txt") ||
    fail "after the bad input: $out"
pass "malformed JSON, duplicates, unknown targets and members, wrong types, 6 KiB + 1, oversized and deep bodies: KMS-shaped refusals, still serving"

# ---- allowed keys and operations ---------------------------------------------------------------
stop enclave || true
start_kms_enclave restricted -kms-for-app-keys alias/app -kms-for-app-operations Decrypt,GenerateDataKey
out=$(inside $PY "$SOURCE_DIR/tests/integration/kms_endpoint_app.py" restricted "$ip" alias/app alias/other-pcr0 \
    "$(cat "$work/app.ct")" "$work/secret.txt") || fail "restricted: $out"
echo "$out"
pass "-kms-for-app-keys and -kms-for-app-operations: AccessDeniedException-shaped refusals"

st=0
"$CLOISTER" enclave -fqdn localhost --nsm "unix:$work/nsm.sock" --listen "unix:$work/x.sock" -intport "$(free_port)" \
    -kms-imds vsock:3:8002 -kms-proxy vsock:3:8000 -kms-ca-file "$CA" -kms-for-app \
    -kms-for-app-operations Decrypt,CreateKey >"$work/bad-op.log" 2>&1 || st=$?
[ $st = 3 ] && grep -q "unknown KMS operation 'CreateKey'" "$work/bad-op.log" || fail "an unknown operation: $st $(cat "$work/bad-op.log")"
st=0
"$CLOISTER" enclave -fqdn localhost --nsm "unix:$work/nsm.sock" --listen "unix:$work/x.sock" -intport "$(free_port)" \
    -kms-for-app-keys alias/app >"$work/bad-keys.log" 2>&1 || st=$?
[ $st = 3 ] && grep -q "go with -kms-for-app" "$work/bad-keys.log" || fail "keys without the endpoint: $st $(cat "$work/bad-keys.log")"
pass "an unknown operation or keys without -kms-for-app stop the start"

# ---- examples/kms-app under cloister dev ------------------------------------------------------
stop restricted || true
dp=$(free_port)
spawn dev "$CLOISTER" dev --port "$dp" --app "$PY $SOURCE_DIR/examples/kms-app/app.py"
wait_for_log dev '^Try it:' 1200
got=""
for _ in $(seq 1 60); do
    got=$(curl -sk "https://127.0.0.1:$dp/secret" || true)
    [[ "$got" == *sha256* ]] && break
    sleep 0.25
done
dev_epid=$(sed -n 's/.*cloister enclave (pid \([0-9]*\)).*/\1/p' "$work/dev.log")
want=$(nsenter --net="/proc/$dev_epid/ns/net" curl -s http://127.0.0.1:8080/enclave/secrets/demo | sha256sum | cut -d' ' -f1)
[ -n "$dev_epid" ] && [[ "$got" == *"\"sha256\": \"$want\""* ]] ||
    fail "examples/kms-app: '$got', want the SHA-256 of the demo secret $want"
stop dev || fail "cloister dev did not stop cleanly"
grep -q 'cloister dev: stopped; .* removed' "$work/dev.log" || fail "cloister dev left its run directory"
pass "examples/kms-app (boto3, endpoint_url only) under cloister dev --app: the SHA-256 of the PCR0-bound demo secret"
