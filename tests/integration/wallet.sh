#!/usr/bin/env bash
# The multi-party wallet (examples/wallet) behind `cloister enclave`, with nsm-sim (PCR0), kms-local
# (TLS; the key's policy: Encrypt for the app's role, Decrypt only for a Recipient with this PCR0 and
# PCR16 = the wallet binary) and dynalite (the DynamoDB protocol, persisted to a directory):
#   - the client proves the enclave on its connection (PCRs, app key hash) and refuses another PCR16
#   - create: ethers/node:crypto (tests/node/wallet.js) open the recovery share with the recovery
#     private key and combine it with the user's share (a combiner written from the format) into
#     the key of public_key; exactly one item in the table, holding only a KMS ciphertext that the
#     role itself cannot open
#   - sign: the plain (workshop) signature verifies with ethers and node:crypto; the Ethereum
#     signature recovers the key's address with ethers, low-S
#   - a wrong, tampered or malformed user share: 400 and no signature
#   - the key's policy moved to another PCR0: 403 at the wallet; back: signs again
#   - dynalite down: 503 for create (no key handed out) and sign; back up: the earlier key signs,
#     no orphan item
#   - 100 Ethereum signatures from 10 concurrent HTTPS clients, all verified by ethers
set -euo pipefail
source "$(dirname "$0")/common.bash"
export NODE_NO_WARNINGS=1 # the SDK v3 warns about node 20 on every run

BUILD=${CLOISTER_BUILD_DIR:-$(dirname "$CLOISTER")}
WALLET=$BUILD/cloister-wallet${CLOISTER_WALLET_SUFFIX:-} # -asan: the ASan+UBSan build
CLIENT=$BUILD/cloister-wallet-client${CLOISTER_WALLET_SUFFIX:-}
PEER=$SOURCE_DIR/tests/node/wallet.js
[ -x "$WALLET" ] && [ -x "$CLIENT" ] || fail "build cloister-wallet and cloister-wallet-client first"
node_modules_present || { echo "skip: tests/node/node_modules absent (scripts/node-deps.sh)"; exit 77; }

REGION=us-east-1
PCR0=$(printf '%096d' 7 | tr 0 c)
PCR0_OTHER=$(printf '%096d' 9 | tr 0 d)
# PCR16 as the wallet extends it: SHA-384 chained over 1024-byte blocks of its binary
PCR16=$(python3 - "$WALLET" <<'EOF'
import hashlib, sys
pcr = bytes(48)
with open(sys.argv[1], 'rb') as f:
    while block := f.read(1024):
        pcr = hashlib.sha384(pcr + block).digest()
print(pcr.hex())
EOF
)
ROLE_KEY=AKIAWALLETROLE000001 ROLE_SECRET=wallet-role-secret-key
ROLE_ARN=arn:aws:sts::111122223333:assumed-role/wallet-enclave/i-0wallet
OPER_KEY=AKIAWALLETOPERATOR01 OPER_SECRET=wallet-operator-secret

spawn sim "$CLOISTER" nsm-sim --listen "unix:$work/nsm.sock" --state "$work/state" --pcr "0=$PCR0"
wait_for_log sim '^nsm-sim: listening on '

policy() { # policy PCR0: the operator administers, the role encrypts, Decrypt only for that PCR0 and PCR16
    cat <<EOF
{"Version": "2012-10-17", "Statement": [
  {"Sid": "operator", "Effect": "Allow", "Principal": {"AWS": "arn:aws:iam::111122223333:user/operator"},
   "Action": ["kms:PutKeyPolicy", "kms:GetKeyPolicy", "kms:DescribeKey"], "Resource": "*"},
  {"Sid": "the app's role encrypts", "Effect": "Allow", "Principal": {"AWS": "$ROLE_ARN"},
   "Action": ["kms:Encrypt"], "Resource": "*"},
  {"Sid": "only the wallet's enclave decrypts", "Effect": "Allow", "Principal": {"AWS": "$ROLE_ARN"},
   "Action": ["kms:Decrypt"], "Resource": "*",
   "Condition": {"StringEqualsIgnoreCase": {"kms:RecipientAttestation:PCR0": "$1",
                                            "kms:RecipientAttestation:PCR16": "$PCR16"}}}]}
EOF
}
policy "$PCR0" >"$work/policy.json"
policy "$PCR0_OTHER" >"$work/policy-other.json"
kp=$(free_port)
spawn kms "$CLOISTER" kms-local --listen "tcp:127.0.0.1:$kp" --state "$work/kms" --region "$REGION" --tls \
    --credentials "$ROLE_KEY:$ROLE_SECRET:$ROLE_ARN" \
    --credentials "$OPER_KEY:$OPER_SECRET:arn:aws:iam::111122223333:user/operator" \
    --root "$work/state/root.pem" --key "alias/wallet=$work/policy.json"
wait_for_log kms '^kms-local: listening on '
CA=$work/kms/ca.pem
KEY_ARN=$(sed -n 's/.*event=key alias=alias\/wallet arn=\([^ ]*\).*/\1/p' "$work/kms.log")

dp=$(free_port)
start_dynalite() {
    spawn dynalite node "$SOURCE_DIR/tests/node/node_modules/dynalite/cli.js" --host 127.0.0.1 --port "$dp" \
        --path "$work/dynalite" --createTableMs 0
    for _ in $(seq 1 100); do
        curl -s -o /dev/null "http://127.0.0.1:$dp/" && return 0
        sleep 0.1
    done
    fail "dynalite did not start"
}
start_dynalite
TABLE=wallet-shards
node "$PEER" create-table "http://127.0.0.1:$dp" "$TABLE" || fail "create-table"

# the enclave and the wallet behind it; the app's role credentials as the environment would give them
ep=$(free_port) ip=$(free_port) ap=$(free_port)
export AWS_ACCESS_KEY_ID=$ROLE_KEY AWS_SECRET_ACCESS_KEY=$ROLE_SECRET
app_cmd="$WALLET --listen tcp:127.0.0.1:$ap --intport $ip --nsm unix:$work/nsm.sock --kms-region $REGION \
--kms-endpoint https://localhost:$kp --kms-ca-file $CA --dynamodb-endpoint http://127.0.0.1:$dp --table $TABLE \
--key-id alias/wallet"
start_enclave enclave --listen "tcp:127.0.0.1:$ep" -intport "$ip" -appwebsrv "http://127.0.0.1:$ap" \
    -appcmd "$app_cmd" -wait-for-app
wait_for_log enclave 'event=listening listener=public' 600
unset AWS_ACCESS_KEY_ID AWS_SECRET_ACCESS_KEY
grep -q "event=measured pcr16=$PCR16" "$work/enclave.log" || fail "the wallet did not log PCR16 $PCR16"
URL=https://localhost:$ep
client() {
    "$CLIENT" "$URL" --root "$work/state/root.pem" --pcr "0=$PCR0" --pcr "16=$PCR16" "$@"
}

# ---- verify ------------------------------------------------------------------------------------
client verify >"$work/verify.out" 2>&1 || fail "verify: $(cat "$work/verify.out")"
grep -q PROVEN "$work/verify.out" || fail "verify said nothing"
rc=0
"$CLIENT" "$URL" --root "$work/state/root.pem" --pcr "0=$PCR0" --pcr "16=$(printf '%096d' 1)" verify \
    >"$work/verify-bad.out" 2>&1 || rc=$?
[ "$rc" = 1 ] && grep -q 'PCR16' "$work/verify-bad.out" || fail "another PCR16 was accepted ($rc): $(cat "$work/verify-bad.out")"
rc=0
"$CLIENT" "$URL" --root "$work/state/root.pem" --app-key-hash "$(printf '%064d' 0)" verify >"$work/verify-bad.out" 2>&1 ||
    rc=$?
[ "$rc" = 1 ] || fail "another app key hash was accepted ($rc)"
pass "the client proves the enclave on its connection (PCR0, PCR16, app key hash) and refuses other values"

# ---- create --------------------------------------------------------------------------------------
openssl ecparam -name secp384r1 -genkey -noout -out "$work/recovery.pem" 2>/dev/null
openssl ec -in "$work/recovery.pem" -pubout -out "$work/recovery.pub" 2>/dev/null
client create --recovery-public-key "$work/recovery.pub" --out "$work/key.json" 2>"$work/create.err" ||
    fail "create: $(cat "$work/create.err")"
PUB=$(python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["public_key"])' "$work/key.json")
out=$(node "$PEER" check-create "$work/key.json" "$work/recovery.pem") || fail "check-create: $out"
ADDRESS=$(echo "$out" | sed -n 's/^address=\([^ ]*\) .*/\1/p')
KEYHEX=$(echo "$out" | sed -n 's/.* key=0x//p')
pass "create: user + recovery shares combine (independent combiner) into the key of $PUB ($ADDRESS)"

node "$PEER" scan "http://127.0.0.1:$dp" "$TABLE" >"$work/scan.json"
[ "$(wc -l <"$work/scan.json")" = 1 ] || fail "one create, $(wc -l <"$work/scan.json") items: $(cat "$work/scan.json")"
python3 - "$work/scan.json" "$PUB" "$KEYHEX" "$work/key.json" >"$work/shard.b64" <<'EOF' || fail "the item: $(cat "$work/scan.json")"
import base64, json, sys
item = json.loads(open(sys.argv[1]).read())
assert sorted(item) == ["PublicKey", "Shard"], item
assert item["PublicKey"] == {"S": sys.argv[2]}, item
blob = base64.b64decode(item["Shard"]["S"], validate=True)
key = bytes.fromhex(sys.argv[3])
user = base64.b64decode(json.load(open(sys.argv[4]))["key_shard"])
raw = open(sys.argv[1], "rb").read()
for secret in (key, user, user[:32]):
    assert secret not in blob and secret.hex().encode() not in raw and base64.b64encode(secret) not in raw
# no 33 bytes of the stored blob are a share of the key: a point (x, y) on the line through (0, key)
# and the user's share, in GF(2^8) with the AES polynomial
def mul(a, b):
    p = 0
    for _ in range(8):
        if b & 1: p ^= a
        a = ((a << 1) ^ 0x11b) if a & 0x80 else a << 1
        b >>= 1
    return p
inv = {a: next(x for x in range(1, 256) if mul(a, x) == 1) for a in range(1, 256)}
xu = user[32]
def on_line(w):
    x = w[32]
    return x != 0 and all(w[i] == key[i] ^ mul(mul(key[i] ^ user[i], inv[xu]), x) for i in range(32))
assert not any(on_line(blob[i:i + 33]) for i in range(len(blob) - 32)), "a share of the key in the table"
assert blob[0] == 1 and len(blob) > 33 + 28, len(blob)   # kms-local's ciphertext blob: 0x01 || key id || IV || ct || tag
print(item["Shard"]["S"])
EOF
base64 -d "$work/shard.b64" >"$work/shard.ct"
rc=0
"$CLOISTER" kms --region "$REGION" --endpoint "https://localhost:$kp" --ca-file "$CA" --access-key-id "$ROLE_KEY" \
    --secret-access-key "$ROLE_SECRET" decrypt --in "$work/shard.ct" >"$work/role-decrypt.out" 2>&1 || rc=$?
[ "$rc" != 0 ] && grep -q AccessDenied "$work/role-decrypt.out" ||
    fail "the role opened the stored share without the enclave ($rc): $(cat "$work/role-decrypt.out")"
pass "the table holds one item (PublicKey, Shard: a KMS ciphertext, no key or share), which the role alone cannot open"

# ---- sign ----------------------------------------------------------------------------------------
client sign --key "$work/key.json" --tx-hash "pay bob 5" >"$work/plain.json" 2>"$work/sign.err" ||
    fail "sign: $(cat "$work/sign.err")"
out=$(node "$PEER" check-plain "$PUB" "pay bob 5" "$work/plain.json") || fail "plain signature: $out"
HASH=0x$(openssl rand -hex 32)
client sign --key "$work/key.json" --tx-hash "$HASH" --ethereum >"$work/eth.json" 2>"$work/sign.err" ||
    fail "sign --ethereum: $(cat "$work/sign.err")"
out=$(node "$PEER" check-eth "$PUB" "$HASH" "$work/eth.json") || fail "ethereum signature: $out"
[ "$out" = "address=$ADDRESS" ] || fail "ethers recovered $out, expected $ADDRESS"
pass "sign: the plain signature verifies (ethers, node:crypto); ethers recovers $ADDRESS from (r, s, v), low-S"

# ---- the client sends no share to an enclave it has not proven on that connection ------------------
signatures() { curl -sk "$URL/app/stats" | python3 -c 'import json,sys; print(json.load(sys.stdin)["signatures"])'; }
before=$(signatures)
rc=0
"$CLIENT" "$URL" --root "$work/state/root.pem" --pcr "0=$PCR0_OTHER" sign --key "$work/key.json" --tx-hash x \
    >/dev/null 2>"$work/refused.err" || rc=$?
[ "$rc" = 1 ] || fail "sign to an enclave with another PCR0 ($rc): $(cat "$work/refused.err")"
openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -keyout "$work/relay.key" -out "$work/relay.pem" \
    -subj /CN=localhost -days 1 2>/dev/null
rp=$(free_port)
spawn relay socat "openssl-listen:$rp,bind=127.0.0.1,reuseaddr,fork,cert=$work/relay.pem,key=$work/relay.key,verify=0" \
    "openssl:127.0.0.1:$ep,verify=0"
for _ in $(seq 1 50); do curl -sk -o /dev/null "https://127.0.0.1:$rp/app/stats" && break; sleep 0.1; done
rc=0
client --connect "tcp:127.0.0.1:$rp" sign --key "$work/key.json" --tx-hash x >/dev/null 2>"$work/relay.err" || rc=$?
[ "$rc" = 1 ] && grep -q 'not the one on this TLS connection' "$work/relay.err" ||
    fail "sign through a TLS relay with its own certificate ($rc): $(cat "$work/relay.err")"
stop relay || true
[ "$(signatures)" = "$before" ] || fail "the wallet signed for a client that had not proven it ($before -> $(signatures))"
pass "the client refuses (another PCR0, a relay with its own certificate) before any share leaves it"

# ---- wrong, tampered, malformed user shares -------------------------------------------------------
sign_raw() { # BODY -> status in $st, answer in $work/raw.out
    st=$(curl -sk -o "$work/raw.out" -w '%{http_code}' -H 'Content-Type: application/json' --data "$1" \
        "$URL/app/sss/signature")
}
SHARD=$(python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["key_shard"])' "$work/key.json")
tampered=$(python3 -c 'import base64,sys; b=bytearray(base64.b64decode(sys.argv[1])); b[5]^=1; print(base64.b64encode(b).decode())' "$SHARD")
client create --recovery-public-key "$work/recovery.pub" --out "$work/key2.json" 2>/dev/null || fail "second create"
other=$(python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["key_shard"])' "$work/key2.json")
xflip=$(python3 -c 'import base64,sys; b=bytearray(base64.b64decode(sys.argv[1])); b[32]^=0x80; print(base64.b64encode(b).decode())' "$SHARD")
for bad in "$tampered" "$other" "$xflip" "AAAA" "not base64!" ""; do
    sign_raw "{\"key_shard_b64\": \"$bad\", \"pub_key\": \"$PUB\", \"tx_hash\": \"x\"}"
    [ "$st" = 400 ] || fail "share '$bad': $st $(cat "$work/raw.out")"
    ! grep -q '"signature"' "$work/raw.out" || fail "a signature for share '$bad'"
done
grep -q 'error' "$work/raw.out" || fail "no error message"
sign_raw "{\"key_shard_b64\": \"$SHARD\", \"pub_key\": \"$PUB\", \"tx_hash\": \"x\", \"extra\": \"1\"}"
[ "$st" = 400 ] || fail "an unknown member: $st"
sign_raw '{"key_shard_b64": "a", "key_shard_b64": "b", "pub_key": "x", "tx_hash": "x"}'
[ "$st" = 400 ] || fail "duplicate members: $st"
sign_raw "{\"key_shard_b64\": \"$SHARD\", \"pub_key\": \"$PUB\", \"tx_hash\": \"x\"}"
[ "$st" = 200 ] && grep -q '"signature"' "$work/raw.out" || fail "the right share after the wrong ones: $st"
pass "a tampered, another key's, a moved-x or malformed share: 400 with an error, no signature"

# ---- the key's policy names another PCR0 ----------------------------------------------------------
NODE_EXTRA_CA_CERTS=$CA node "$PEER" put-key-policy "https://localhost:$kp" "$KEY_ARN" "$work/policy-other.json" \
    "$OPER_KEY" "$OPER_SECRET" || fail "put-key-policy"
sign_raw "{\"key_shard_b64\": \"$SHARD\", \"pub_key\": \"$PUB\", \"tx_hash\": \"x\"}"
[ "$st" = 403 ] && ! grep -q '"signature"' "$work/raw.out" || fail "another PCR0 in the policy: $st $(cat "$work/raw.out")"
grep -q AccessDenied "$work/raw.out" || fail "the 403 does not say AccessDenied: $(cat "$work/raw.out")"
NODE_EXTRA_CA_CERTS=$CA node "$PEER" put-key-policy "https://localhost:$kp" "$KEY_ARN" "$work/policy.json" \
    "$OPER_KEY" "$OPER_SECRET" || fail "put-key-policy back"
sign_raw "{\"key_shard_b64\": \"$SHARD\", \"pub_key\": \"$PUB\", \"tx_hash\": \"x\"}"
[ "$st" = 200 ] || fail "the policy back: $st"
pass "a key policy naming another PCR0: 403 (AccessDeniedException), no signature; restored: signs"

# ---- DynamoDB down ---------------------------------------------------------------------------------
stop dynalite || true
rc=0
client create --recovery-public-key "$work/recovery.pub" --out "$work/key3.json" 2>"$work/down.err" || rc=$?
[ "$rc" = 1 ] && grep -q 'answered 503' "$work/down.err" || fail "create with DynamoDB down ($rc): $(cat "$work/down.err")"
[ ! -s "$work/key3.json" ] || fail "a key was handed out although its share was not stored"
sign_raw "{\"key_shard_b64\": \"$SHARD\", \"pub_key\": \"$PUB\", \"tx_hash\": \"x\"}"
[ "$st" = 503 ] && ! grep -q '"signature"' "$work/raw.out" || fail "sign with DynamoDB down: $st"
start_dynalite
client sign --key "$work/key.json" --tx-hash "after the outage" >"$work/after.json" 2>"$work/sign.err" ||
    fail "sign after the outage: $(cat "$work/sign.err")"
node "$PEER" check-plain "$PUB" "after the outage" "$work/after.json" >/dev/null || fail "the signature after the outage"
node "$PEER" scan "http://127.0.0.1:$dp" "$TABLE" >"$work/scan.json"
[ "$(wc -l <"$work/scan.json")" = 2 ] || fail "$(wc -l <"$work/scan.json") items after two keys and a failed create"
pass "DynamoDB down: 503 for create (no key handed out) and sign; back: the key signs, no orphan item"

# ---- 10 clients, 100 signatures ----------------------------------------------------------------------
# ten HTTPS clients at once, each on its own kept-alive connection (the proving client's cost per
# connection is covered above; here the wallet's concurrency is the point)
python3 - "$ep" "$work/key.json" "$work/conc.txt" <<'EOF2' || fail "concurrent signatures: $(cat "$work/conc.txt" 2>/dev/null | head -3)"
import http.client, json, os, ssl, sys, threading
port, key, out = int(sys.argv[1]), json.load(open(sys.argv[2])), sys.argv[3]
ctx = ssl._create_unverified_context()
lines, errors, lock = [], [], threading.Lock()
def client():
    c = http.client.HTTPSConnection("localhost", port, context=ctx, timeout=60)
    for _ in range(10):
        h = "0x" + os.urandom(32).hex()
        c.request("POST", "/app/sss/signature", json.dumps({"key_shard_b64": key["key_shard"],
                  "pub_key": key["public_key"], "tx_hash": h, "mode": "ethereum"}), {"Content-Type": "application/json"})
        r = c.getresponse()
        body = r.read().decode()
        with lock:
            (lines if r.status == 200 else errors).append(f"{h} {body.strip()}")
threads = [threading.Thread(target=client) for _ in range(10)]
[t.start() for t in threads]
[t.join() for t in threads]
open(out, "w").write("\n".join(lines + errors) + "\n")
sys.exit(1 if errors or len(lines) != 100 else 0)
EOF2
out=$(node "$PEER" check-eth-many "$PUB" "$work/conc.txt") || fail "concurrent signatures: $out"
[ "$out" = "verified=100" ] || fail "concurrent signatures: $out"
pass "10 concurrent clients, 100 Ethereum signatures, all recover $ADDRESS"
