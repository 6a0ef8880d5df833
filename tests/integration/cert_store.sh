#!/usr/bin/env bash
# The ACME store (`cloister cert-store`) end to end, in the set-up of an enclave on one machine
# (tests/integration/dynamodb/setup.bash: dynalite over TLS and kms-local through `cloister host
# --outbound` on the vsock stand-in, IMDS credentials, Decrypt only with a PCR0 Recipient):
#   - dynamodb:TABLE and file:DIR (`cloister host file-store`): records put and read back; the raw
#     table (scanned with the AWS SDK from Node) and the raw files hold no private key
#   - a record edited, renamed or with swapped ciphertexts on the parent's side is refused; another
#     PCR0 cannot open it
#   - the lease: two processes race, one wins; renew/release only by the owner; expiry lets the
#     other in
set -euo pipefail
source "$(dirname "$0")/common.bash"

node_modules_present || { echo "skip: run scripts/node-deps.sh (dynalite)"; exit 77; }
command -v openssl >/dev/null && command -v node >/dev/null || { echo "skip: needs openssl and node"; exit 77; }
source "$(dirname "$0")/dynamodb/setup.bash"

# ---- the ACME store on DynamoDB -------------------------------------------------------------
openssl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-256 -out "$work/account.pem" 2>/dev/null
openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 30 -subj "/CN=app.example" \
    -keyout "$work/cert.key" -out "$work/cert.pem" 2>/dev/null
openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 30 -subj "/CN=other.example" \
    -keyout "$work/other.key" -out "$work/other.pem" 2>/dev/null
# only get opens keys (a Recipient from the NSM); put seals with Encrypt, the lease needs no KMS call
store() {
    local nsm=()
    for a in "$@"; do [ "$a" != get ] || nsm=(--nsm "unix:$work/nsm.sock"); done
    "$CLOISTER" cert-store --key-id alias/acme --imds "$IMDS" --kms-endpoint "https://kms.$REGION.amazonaws.com" \
        --kms-proxy "$KMSP" --dynamodb-proxy "$DDBP" --ca-file "$work/ca.pem" "${nsm[@]}" "$@"
}
ddb create-table --table acme-store >/dev/null || fail "create-table acme-store"
store --store dynamodb:acme-store put --name site --account-key "$work/account.pem" --cert-key "$work/cert.key" \
    --chain "$work/cert.pem" --metadata '{"domains": ["app.example"], "account_url": "https://ca/acct/1"}' ||
    fail "cert-store put"
out=$(store --store dynamodb:acme-store get --name site --chain-out "$work/chain.out") || fail "cert-store get"
echo "$out" | has '"account_url":"https://ca/acct/1"' && echo "$out" | has '"cert_key":true' ||
    fail "get: $out"
cmp -s "$work/chain.out" "$work/cert.pem" || fail "the chain read back differs"
store --store dynamodb:acme-store put --name other --account-key "$work/account.pem" --cert-key "$work/other.key" \
    --chain "$work/other.pem" --metadata '{"domains": ["other.example"]}' || fail "put other"
set +e
store --store dynamodb:acme-store put --name bad --account-key "$work/account.pem" --cert-key "$work/other.key" \
    --chain "$work/cert.pem" 2>"$work/err"; st=$?
set -e
[ $st != 0 ] && grep -q 'leaf certificate does not hold the certificate key' "$work/err" || fail "mismatched put: $(cat "$work/err")"
pass "cert-store on dynamodb: a record put (KMS Encrypt) and read back (Decrypt with a Recipient, chain and metadata verified)"

# the raw table, read with the AWS SDK: ciphertexts only
cat >"$work/scan.js" <<'EOF'
const path = require('path');
const { DynamoDBClient, ScanCommand } = require(path.join(process.env.SOURCE_DIR, 'tests/node/node_modules/@aws-sdk/client-dynamodb'));
const fs = require('fs');
const client = new DynamoDBClient({ region: 'eu-west-1', endpoint: process.argv[2],
  credentials: { accessKeyId: 'AKIAEXAMPLE00000000', secretAccessKey: 's' } });
client.send(new ScanCommand({ TableName: 'acme-store' })).then((r) => {
  const der = (f) => Buffer.from(fs.readFileSync(f, 'utf8').replace(/-----[^-]+-----/g, '').replace(/\s/g, ''), 'base64');
  const secrets = [der(process.argv[3]), der(process.argv[4])];
  for (const item of r.Items) {
    const raw = JSON.stringify(item);
    if (/PRIVATE KEY/.test(raw)) throw new Error('a PEM private key in ' + item.pk.S);
    for (const k of ['account_key', 'cert_key']) {
      if (!item[k]) continue;
      const b = Buffer.from(item[k].B);
      if (b[0] !== 1 || b.length < 60) throw new Error(k + ' is not a KMS ciphertext blob');
      for (const s of secrets) if (b.includes(s.subarray(s.length - 32))) throw new Error(k + ' holds key bytes');
    }
    console.log(item.pk.S, Object.keys(item).sort().join(','));
  }
}).catch((e) => { console.error(e.message); process.exit(1); });
EOF
SOURCE_DIR=$SOURCE_DIR NODE_TLS_REJECT_UNAUTHORIZED=0 node "$work/scan.js" "https://localhost:$dp" "$work/account.pem" \
    "$work/cert.key" >"$work/scan.out" 2>&1 || fail "scan: $(cat "$work/scan.out")"
grep -q '^record:site account_key,cert_key,chain,metadata,pk,updated,v$' "$work/scan.out" || fail "scan: $(cat "$work/scan.out")"
pass "the raw table (AWS SDK Scan): only KMS ciphertext blobs for the keys, no key bytes, no PEM private key"

# the parent edits the table: each edit is refused, nothing of the record is used
refused() { # what, then the store's arguments
    local what=$1
    shift
    set +e
    store --store dynamodb:acme-store get --name site >"$work/out" 2>"$work/err"
    local st=$?
    set -e
    [ $st = 1 ] && grep -q "$1" "$work/err" && [ ! -s "$work/out" ] || fail "$what: want refused ($1), got $st: $(cat "$work/err" "$work/out")"
}
ddb get --table acme-store --key '{"pk": {"S": "record:site"}}' >"$work/orig.json"
restore() { ddb put --table acme-store --item "$(cat "$work/orig.json")"; }
ddb update --table acme-store --key '{"pk": {"S": "record:site"}}' --update 'SET metadata = :m' \
    --values '{":m": {"S": "{\"domains\": [\"evil.example\"], \"account_url\": \"https://ca/acct/1\"}"}}'
refused "edited metadata" "KMS would not open"
restore
other_chain=$(ddb get --table acme-store --key '{"pk": {"S": "record:other"}}' | python3 -c 'import json,sys; print(json.dumps(json.load(sys.stdin)["chain"]))')
ddb update --table acme-store --key '{"pk": {"S": "record:site"}}' --update 'SET chain = :c' --values "{\":c\": $other_chain}"
refused "another chain" "KMS would not open"
restore
other_ct=$(ddb get --table acme-store --key '{"pk": {"S": "record:other"}}' | python3 -c 'import json,sys; print(json.dumps(json.load(sys.stdin)["cert_key"]))')
ddb update --table acme-store --key '{"pk": {"S": "record:site"}}' --update 'SET cert_key = :c' --values "{\":c\": $other_ct}"
refused "swapped certificate key ciphertext" "KMS would not open"
restore
python3 -c 'import json,sys; i=json.load(open(sys.argv[1])); i["pk"]["S"]="record:site"; print(json.dumps(i))' \
    <(ddb get --table acme-store --key '{"pk": {"S": "record:other"}}') >"$work/renamed.json"
ddb put --table acme-store --item "$(cat "$work/renamed.json")"
refused "another record under this name" "KMS would not open"
restore
store --store dynamodb:acme-store get --name site >/dev/null || fail "the restored record"
set +e
"$CLOISTER" cert-store --key-id alias/acme --imds "$IMDS" --kms-endpoint "https://kms.$REGION.amazonaws.com" \
    --kms-proxy "$KMSP" --dynamodb-proxy "$DDBP" --ca-file "$work/ca.pem" --nsm "unix:$work/nsm2.sock" \
    --store dynamodb:acme-store get --name site 2>"$work/err" >/dev/null; st=$?
set -e
[ $st = 1 ] && grep -q 'AccessDeniedException' "$work/err" || fail "other PCR0: $st $(cat "$work/err")"
pass "the parent's edits (metadata, chain, swapped ciphertext, another record renamed) are refused; another PCR0 cannot open it"

# ---- the lease on DynamoDB: two processes race, one wins --------------------------------------
lease_race() { # store spec
    local spec=$1 a b
    set +e
    store --store "$spec" lease-acquire --name order --owner enclave-a --ttl 60s >"$work/la" 2>&1 &
    a=$!
    store --store "$spec" lease-acquire --name order --owner enclave-b --ttl 60s >"$work/lb" 2>&1 &
    b=$!
    wait $a; sa=$?
    wait $b; sb=$?
    set -e
    { [ $sa = 0 ] && [ $sb = 1 ]; } || { [ $sa = 1 ] && [ $sb = 0 ]; } ||
        fail "$spec: lease race: want one winner, got $sa/$sb: $(cat "$work/la" "$work/lb")"
    if [ $sa = 0 ]; then winner=enclave-a loser=enclave-b; else winner=enclave-b loser=enclave-a; fi
    grep -q "held by '$winner'" "$work/la" "$work/lb" || fail "$spec: the loser was not told who holds it"
    set +e
    store --store "$spec" lease-renew --name order --owner "$loser" --ttl 60s >/dev/null 2>&1; st=$?
    store --store "$spec" lease-release --name order --owner "$loser" >/dev/null 2>&1
    store --store "$spec" lease-acquire --name order --owner "$loser" --ttl 60s >/dev/null 2>&1; st2=$?
    set -e
    [ $st = 1 ] && [ $st2 = 1 ] || fail "$spec: the loser renewed ($st) or its release freed the lease ($st2)"
    # the owner shortens it by renewing: then it expires and the other gets in
    store --store "$spec" lease-renew --name order --owner "$winner" --ttl 1s >/dev/null || fail "$spec: owner renew"
    sleep 1.2
    store --store "$spec" lease-acquire --name order --owner "$loser" --ttl 5s >/dev/null ||
        fail "$spec: an expired lease did not let the other in"
    set +e
    store --store "$spec" lease-renew --name order --owner "$winner" --ttl 5s >/dev/null 2>&1; st=$?
    set -e
    [ $st = 1 ] || fail "$spec: the former owner renewed a lease taken over"
    store --store "$spec" lease-release --name order --owner "$loser" >/dev/null || fail "$spec: release"
    store --store "$spec" lease-acquire --name order --owner "$winner" --ttl 5s >/dev/null ||
        fail "$spec: a released lease is not free"
    store --store "$spec" lease-release --name order --owner "$winner" >/dev/null
}
lease_race dynamodb:acme-store
pass "lease on dynamodb: of two racing processes one wins; only the owner renews/releases; expiry lets the other in"

# ---- the ACME store on the parent's files ---------------------------------------------------
mkdir -p "$work/acme-files"
spawn fstore "$CLOISTER" host file-store --listen "$FSTORE" --dir "$work/acme-files"
wait_for_log fstore 'event=listening'
FS=file:$work/acme-files
store --store "$FS" put --name site --account-key "$work/account.pem" --cert-key "$work/cert.key" \
    --chain "$work/cert.pem" --metadata '{"domains": ["app.example"]}' || fail "file put"
store --store "$FS" put --name other --account-key "$work/account.pem" --cert-key "$work/other.key" \
    --chain "$work/other.pem" || fail "file put other"
store --store "$FS" get --name site | has '"domains":\["app.example"\]' || fail "file get"
# a record larger than one read of the host's server (12 KiB of metadata)
big=$(python3 -c 'import json; print(json.dumps({"history": ["renewed %05d" % i for i in range(800)]}))')
store --store "$FS" put --name big --account-key "$work/account.pem" --metadata "$big" || fail "file put of 12 KiB"
store --store "$FS" get --name big | has '"renewed 00799"' || fail "file get of 12 KiB"
! grep -l 'PRIVATE KEY' "$work/acme-files"/* || fail "a private key in the parent's files"
pass "cert-store on file:DIR through cloister host file-store ($FSTORE): put, get (a 12 KiB record too); the files hold no private key"

cp "$work/acme-files/record.site" "$work/site.orig"
fix() { cp "$work/site.orig" "$work/acme-files/record.site"; }
frefused() { # what, pattern
    set +e
    store --store "$FS" get --name site >"$work/out" 2>"$work/err"
    local st=$?
    set -e
    [ $st = 1 ] && grep -q "$2" "$work/err" && [ ! -s "$work/out" ] || fail "$1: want refused, got $st: $(cat "$work/err")"
}
python3 - "$work/acme-files/record.site" <<'EOF'
import json, sys
r = json.load(open(sys.argv[1])); r["metadata"] = '{"domains": ["evil.example"]}'; json.dump(r, open(sys.argv[1], "w"))
EOF
frefused "edited metadata file" "KMS would not open"
fix
python3 - "$work/acme-files/record.site" "$work/other.pem" <<'EOF'
import json, sys
r = json.load(open(sys.argv[1])); r["chain"] = open(sys.argv[2]).read(); json.dump(r, open(sys.argv[1], "w"))
EOF
frefused "another chain in the file" "KMS would not open"
fix
python3 - "$work/acme-files/record.site" "$work/acme-files/record.other" <<'EOF'
import json, sys
r = json.load(open(sys.argv[1])); o = json.load(open(sys.argv[2])); r["account_key"] = o["account_key"]
json.dump(r, open(sys.argv[1], "w"))
EOF
frefused "swapped account key ciphertext" "KMS would not open"
cp "$work/acme-files/record.other" "$work/acme-files/record.site"
frefused "another record's file under this name" "names itself"
python3 - "$work/acme-files/record.site" <<'EOF'
import json, sys
r = json.load(open(sys.argv[1])); r["name"] = "site"; json.dump(r, open(sys.argv[1], "w"))
EOF
frefused "another record's file, renamed inside too" "KMS would not open"
echo 'not json' >"$work/acme-files/record.site"
frefused "garbage" "not a JSON object"
fix
store --store "$FS" get --name site >/dev/null || fail "the restored file"
set +e
store --store "$FS" get --name nothing-here 2>"$work/err" >/dev/null; st=$?
set -e
[ $st = 1 ] && grep -q 'no object record.nothing-here' "$work/err" || fail "missing record: $st $(cat "$work/err")"
pass "the parent's file edits (metadata, chain, swapped ciphertext, another record's file, garbage) are refused"

lease_race "$FS"
pass "lease on file:DIR: one winner of two racing processes (compare-and-swap in the host's store), owner-only renew/release, expiry"
