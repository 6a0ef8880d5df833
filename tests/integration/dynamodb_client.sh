#!/usr/bin/env bash
# The DynamoDB client and the ACME store end to end, in the set-up of an enclave on one machine:
#   - dynalite (npm: the DynamoDB protocol) over TLS with this test's certificate for
#     dynamodb.eu-west-1.amazonaws.com, reached through `cloister host --outbound vsock:3:8001=...`
#     (the vsock stand-in), credentials from imds-sim through `cloister host --imds`;
#     kms-local (TLS) through vsock:3:8000, a key whose Decrypt needs a Recipient with PCR0
#   - `cloister dynamodb`: CRUD, condition failures (exit 1, ConditionalCheckFailedException),
#     a table that does not exist, dynalite down (bounded retries, a clear error), throttling
#     (a stand-in that always answers ProvisionedThroughputExceededException: exactly N attempts)
#   - `cloister cert-store` on dynamodb:TABLE and on file:DIR (`cloister host file-store`): records
#     put and read back; the raw table (scanned with the AWS SDK from Node) and the raw files hold
#     no private key; a record edited, renamed or with swapped ciphertexts on the parent's side is
#     refused; the lease: two processes race, one wins; renew/release only by the owner; expiry
#     lets the other in
set -euo pipefail
source "$(dirname "$0")/common.bash"

node_modules_present || { echo "skip: run scripts/node-deps.sh (dynalite)"; exit 77; }
command -v openssl >/dev/null && command -v node >/dev/null || { echo "skip: needs openssl and node"; exit 77; }

REGION=eu-west-1
export CLOISTER_VSOCK_STANDIN=$work/vsock
mkdir -p "$CLOISTER_VSOCK_STANDIN"
IMDS=vsock:3:8002
KMSP=vsock:3:8000
DDBP=vsock:3:8001
FSTORE=vsock:3:8010
DDB_NAME=dynamodb.$REGION.amazonaws.com
PCR0=$(printf '%096d' 5 | tr 0 c)
PCR0_OTHER=$(printf '%096d' 6 | tr 0 d)

spawn sim "$CLOISTER" nsm-sim --listen "unix:$work/nsm.sock" --state "$work/state" --pcr "0=$PCR0"
wait_for_log sim '^nsm-sim: listening on '
spawn sim2 "$CLOISTER" nsm-sim --listen "unix:$work/nsm2.sock" --state "$work/state2" --pcr "0=$PCR0_OTHER"
wait_for_log sim2 '^nsm-sim: listening on '
cat "$work/state/root.pem" "$work/state2/root.pem" >"$work/roots.pem"

m=$(free_port)
spawn imds_sim "$CLOISTER" imds-sim --listen "tcp:127.0.0.1:$m" --role enclave-role --region "$REGION"
wait_for_log imds_sim 'event=listening'
spawn imds "$CLOISTER" host --imds "$IMDS" --imds-endpoint "http://127.0.0.1:$m"
wait_for_log imds 'event=started'
token=$(curl -sS --unix-socket "$CLOISTER_VSOCK_STANDIN/3.8002" -X PUT -H 'X-aws-ec2-metadata-token-ttl-seconds: 60' \
    http://169.254.169.254/latest/api/token)
curl -sS --unix-socket "$CLOISTER_VSOCK_STANDIN/3.8002" -H "X-aws-ec2-metadata-token: $token" \
    http://169.254.169.254/latest/meta-data/iam/security-credentials/enclave-role >"$work/role.json"
role_creds=$(python3 -c 'import json,sys; c=json.load(open(sys.argv[1])); print(c["AccessKeyId"]+":"+c["SecretAccessKey"])' "$work/role.json")

cat >"$work/policy.json" <<EOF
{"Version": "2012-10-17", "Statement": [
  {"Sid": "seal", "Effect": "Allow", "Principal": {"AWS": "arn:aws:iam::111122223333:root"},
   "Action": ["kms:Encrypt", "kms:DescribeKey"], "Resource": "*"},
  {"Sid": "only the enclave opens", "Effect": "Allow", "Principal": {"AWS": "arn:aws:iam::111122223333:root"},
   "Action": "kms:Decrypt", "Resource": "*",
   "Condition": {"StringEqualsIgnoreCase": {"kms:RecipientAttestation:PCR0": "$PCR0"}}}]}
EOF
kp=$(free_port)
spawn kms "$CLOISTER" kms-local --listen "tcp:127.0.0.1:$kp" --state "$work/kms" --region "$REGION" --tls \
    --credentials "$role_creds" --root "$work/roots.pem" --key "alias/acme=$work/policy.json"
wait_for_log kms '^kms-local: listening on '

# dynalite over TLS with a certificate for DynamoDB's name: the client never resolves it
openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 2 -subj "/CN=$DDB_NAME" \
    -addext "subjectAltName=DNS:$DDB_NAME,DNS:localhost" -keyout "$work/ddb.key" -out "$work/ddb.pem" 2>/dev/null
cat "$work/kms/ca.pem" "$work/ddb.pem" >"$work/ca.pem"
dp=$(free_port)
spawn dynalite node "$SOURCE_DIR/tests/integration/dynamodb/dynalite.js" --port "$dp" --cert "$work/ddb.pem" \
    --key "$work/ddb.key"
wait_for_log dynalite 'dynalite: listening'
spawn outbound "$CLOISTER" host --outbound "$KMSP=127.0.0.1:$kp" --outbound "$DDBP=127.0.0.1:$dp"
wait_for_log outbound 'event=started'

# as inside the enclave: IMDS credentials, DynamoDB's real name through the proxy, TLS checked
ddb() {
    "$CLOISTER" dynamodb --imds "$IMDS" --proxy "$DDBP" --ca-file "$work/ca.pem" "$@"
}
KEY='{"pk": {"S": "k1"}}'

# ---- the client ------------------------------------------------------------------------------
ddb create-table --table store1 >/dev/null || fail "create-table"
[ "$(ddb describe-table --table store1)" = ACTIVE ] || fail "describe-table"
ddb put --table store1 --item '{"pk": {"S": "k1"}, "n": {"N": "1"}, "b": {"B": "AAEC/w=="}, "l": {"L": [{"S": "x"}, {"M": {"t": {"BOOL": true}}}]}}' ||
    fail "put"
out=$(ddb get --table store1 --key "$KEY" --consistent-read) || fail "get"
[ "$out" = '{"b":{"B":"AAEC/w=="},"l":{"L":[{"S":"x"},{"M":{"t":{"BOOL":true}}}]},"n":{"N":"1"},"pk":{"S":"k1"}}' ] ||
    fail "get returned $out"
out=$(ddb update --table store1 --key "$KEY" --update 'SET #n = #n + :one' --condition '#n = :cur' \
    --names '{"#n": "n"}' --values '{":one": {"N": "1"}, ":cur": {"N": "1"}}' --return-values) || fail "update"
echo "$out" | grep -q '"n":{"N":"2"}' || fail "update did not return n=2: $out"
grep -q 'target=/latest/meta-data/iam/security-credentials/enclave-role' "$work/imds_sim.log" ||
    fail "credentials did not come from IMDS"
pass "CreateTable, PutItem, GetItem (consistent), UpdateItem with a condition: IMDS credentials, TLS to $DDB_NAME via $DDBP"

set +e
ddb put --table store1 --item '{"pk": {"S": "k1"}}' --condition 'attribute_not_exists(pk)' 2>"$work/err"; st=$?
set -e
[ $st = 1 ] && grep -q 'ConditionalCheckFailedException' "$work/err" || fail "condition: want exit 1, got $st: $(cat "$work/err")"
set +e
ddb update --table store1 --key "$KEY" --update 'SET #n = :v' --condition '#n = :cur' --names '{"#n": "n"}' \
    --values '{":v": {"N": "9"}, ":cur": {"N": "1"}}' 2>"$work/err"; st=$?
set -e
[ $st = 1 ] && grep -q 'ConditionalCheckFailedException' "$work/err" || fail "update condition: $st $(cat "$work/err")"
[ "$(ddb get --table store1 --key "$KEY" | grep -o '"n":{"N":"[0-9]*"}')" = '"n":{"N":"2"}' ] ||
    fail "a failed condition changed the item"
out=$(ddb delete --table store1 --key "$KEY" --return-values) || fail "delete"
echo "$out" | grep -q '"pk":{"S":"k1"}' || fail "delete did not return the old item"
set +e
ddb get --table store1 --key "$KEY" 2>"$work/err"; st=$?
set -e
[ $st = 1 ] && grep -q 'no such item' "$work/err" || fail "get after delete: $st $(cat "$work/err")"
pass "conditions that do not hold: ConditionalCheckFailedException, exit 1, nothing changed; DeleteItem"

set +e
ddb get --table no-such-table --key "$KEY" 2>"$work/err"; st=$?
set -e
[ $st = 1 ] && grep -q 'ResourceNotFoundException' "$work/err" || fail "missing table: $st $(cat "$work/err")"
pass "a table that does not exist: ResourceNotFoundException, exit 1"

# dynalite down (a port nobody listens on): bounded retries and the reason
dead=$(free_port)
set +e
"$CLOISTER" dynamodb --region "$REGION" --access-key-id AKIAEXAMPLE00000000 --secret-access-key s \
    --endpoint "https://localhost:$dead" --ca-file "$work/ca.pem" --max-attempts 3 \
    get --table store1 --key "$KEY" 2>"$work/err"; st=$?
set -e
[ $st = 3 ] && grep -q 'after 3 attempts' "$work/err" && grep -qi 'connect' "$work/err" ||
    fail "DynamoDB down: want exit 3 after 3 attempts, got $st: $(cat "$work/err")"
pass "DynamoDB unreachable: exit 3 after exactly the 3 attempts asked for, naming the connection failure"

# a server that always throttles: exactly max-attempts requests, then CL_EBUSY (exit 3)
tp=$(free_port)
cat >"$work/throttle.py" <<'EOF'
import http.server, sys
class H(http.server.BaseHTTPRequestHandler):
    def do_POST(self):
        self.rfile.read(int(self.headers.get('Content-Length', 0)))
        ok = self.headers.get('X-Amz-Target') == 'DynamoDB_20120810.GetItem' and \
             self.headers.get('Content-Type') == 'application/x-amz-json-1.0' and \
             'Credential=AKIAEXAMPLE00000000/' in self.headers.get('Authorization', '') and \
             '/dynamodb/aws4_request' in self.headers.get('Authorization', '')
        body = b'{"__type":"com.amazonaws.dynamodb.v20120810#ProvisionedThroughputExceededException","message":"slow down"}'
        self.send_response(400 if ok else 500)
        self.send_header('Content-Length', str(len(body)))
        self.end_headers()
        self.wfile.write(body)
        print('request', 'ok' if ok else 'bad-headers', flush=True)
    def log_message(self, *a): pass
http.server.HTTPServer(('127.0.0.1', int(sys.argv[1])), H).serve_forever()
EOF
spawn throttle python3 "$work/throttle.py" "$tp"
for _ in $(seq 50); do python3 -c "import socket; socket.create_connection(('127.0.0.1', $tp))" 2>/dev/null && break; sleep 0.1; done
set +e
"$CLOISTER" dynamodb --region "$REGION" --access-key-id AKIAEXAMPLE00000000 --secret-access-key s \
    --endpoint "http://127.0.0.1:$tp" --allow-http --max-attempts 4 get --table store1 --key "$KEY" 2>"$work/err"; st=$?
set -e
[ $st = 3 ] && grep -q 'after 4 attempts' "$work/err" && grep -q 'ProvisionedThroughputExceededException: slow down' "$work/err" ||
    fail "throttled: $st $(cat "$work/err")"
[ "$(grep -c '^request ok' "$work/throttle.log")" = 4 ] && ! grep -q bad-headers "$work/throttle.log" ||
    fail "want 4 well-formed requests: $(cat "$work/throttle.log")"
set +e
"$CLOISTER" dynamodb --region "$REGION" --access-key-id AKIAEXAMPLE00000000 --secret-access-key s \
    --endpoint "http://127.0.0.1:$tp" get --table store1 --key "$KEY" 2>"$work/err"; st=$?
set -e
[ $st = 2 ] && grep -q 'https://' "$work/err" || fail "http:// without --allow-http: $st $(cat "$work/err")"
pass "throttling: retried with backoff, exactly 4 attempts (headers and SigV4 scope checked), then exit 3; http:// only when allowed"

# a server that lies: an item outside the attribute-value grammar, an oversized answer, not JSON
lp=$(free_port)
cat >"$work/liar.py" <<'EOF'
import http.server, sys
class H(http.server.BaseHTTPRequestHandler):
    def do_POST(self):
        self.rfile.read(int(self.headers.get('Content-Length', 0)))
        op = self.headers.get('X-Amz-Target', '').split('.')[-1]
        body = {'GetItem': b'{"Item": {"pk": {"S": "a", "N": "1"}}}',
                'DeleteItem': b'{"Attributes": {"pk": {"S": "' + b'x' * (3 << 20) + b'"}}}',
                'PutItem': b'<html>not json</html>'}.get(op, b'{}')
        self.send_response(200)
        self.send_header('Content-Length', str(len(body)))
        self.end_headers()
        self.wfile.write(body)
        print('request', op, flush=True)
    def log_message(self, *a): pass
http.server.HTTPServer(('127.0.0.1', int(sys.argv[1])), H).serve_forever()
EOF
spawn liar python3 "$work/liar.py" "$lp"
for _ in $(seq 50); do python3 -c "import socket; socket.create_connection(('127.0.0.1', $lp))" 2>/dev/null && break; sleep 0.1; done
liar() {
    "$CLOISTER" dynamodb --region "$REGION" --access-key-id AKIAEXAMPLE00000000 --secret-access-key s \
        --endpoint "http://127.0.0.1:$lp" --allow-http --max-attempts 3 "$@"
}
set +e
liar get --table store1 --key "$KEY" >"$work/out" 2>"$work/err"; st1=$?
grep -q 'exactly one type' "$work/err"; g1=$?
liar delete --table store1 --key "$KEY" --return-values >"$work/out" 2>>"$work/err"; st2=$?
grep -q 'larger than' "$work/err"; g2=$?
liar put --table store1 --item "$KEY" >"$work/out" 2>>"$work/err"; st3=$?
grep -q 'not a JSON object' "$work/err"; g3=$?
set -e
[ "$st1$st2$st3" = 333 ] && [ "$g1$g2$g3" = 000 ] && [ ! -s "$work/out" ] || fail "lying server: $st1 $st2 $st3: $(cat "$work/err")"
[ "$(grep -c DeleteItem "$work/liar.log")" = 1 ] || fail "an oversized answer was retried: $(cat "$work/liar.log")"
pass "a lying server: an item outside the grammar, a 3 MiB answer (not retried), an answer that is not JSON: refused, exit 3"

# ---- the ACME store on DynamoDB -------------------------------------------------------------
openssl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-256 -out "$work/account.pem" 2>/dev/null
openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 30 -subj "/CN=app.example" \
    -keyout "$work/cert.key" -out "$work/cert.pem" 2>/dev/null
openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 30 -subj "/CN=other.example" \
    -keyout "$work/other.key" -out "$work/other.pem" 2>/dev/null
store() {
    "$CLOISTER" cert-store --key-id alias/acme --imds "$IMDS" --kms-endpoint "https://kms.$REGION.amazonaws.com" \
        --kms-proxy "$KMSP" --dynamodb-proxy "$DDBP" --ca-file "$work/ca.pem" --nsm "unix:$work/nsm.sock" "$@"
}
ddb create-table --table acme-store >/dev/null || fail "create-table acme-store"
store --store dynamodb:acme-store put --name site --account-key "$work/account.pem" --cert-key "$work/cert.key" \
    --chain "$work/cert.pem" --metadata '{"domains": ["app.example"], "account_url": "https://ca/acct/1"}' ||
    fail "cert-store put"
out=$(store --store dynamodb:acme-store get --name site --chain-out "$work/chain.out") || fail "cert-store get"
echo "$out" | grep -q '"account_url":"https://ca/acct/1"' && echo "$out" | grep -q '"cert_key":true' ||
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
    store --store "$spec" lease-acquire --name order --owner "$winner" --ttl 60s >/dev/null || fail "$spec: re-acquire"
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
store --store "$FS" get --name site | grep -q '"domains":\["app.example"\]' || fail "file get"
! grep -l 'PRIVATE KEY' "$work/acme-files"/* || fail "a private key in the parent's files"
pass "cert-store on file:DIR through cloister host file-store ($FSTORE): put, get; the files hold no private key"

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
