#!/usr/bin/env bash
# The DynamoDB client end to end, in the set-up of an enclave on one machine
# (tests/integration/dynamodb/setup.bash: dynalite over TLS through `cloister host --outbound`
# on the vsock stand-in, credentials from imds-sim through `cloister host --imds`):
#   - `cloister dynamodb`: CRUD, condition failures (exit 1, ConditionalCheckFailedException),
#     a table that does not exist, dynalite down (bounded retries, a clear error), throttling
#     (a stand-in that always answers ProvisionedThroughputExceededException: exactly N attempts),
#     a server that lies (an item outside the grammar, an oversized answer, not JSON)
set -euo pipefail
source "$(dirname "$0")/common.bash"

node_modules_present || { echo "skip: run scripts/node-deps.sh (dynalite)"; exit 77; }
command -v openssl >/dev/null && command -v node >/dev/null || { echo "skip: needs openssl and node"; exit 77; }
source "$(dirname "$0")/dynamodb/setup.bash"

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
echo "$out" | has '"n":{"N":"2"}' || fail "update did not return n=2: $out"
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
echo "$out" | has '"pk":{"S":"k1"}' || fail "delete did not return the old item"
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
# the server logs a request after answering it: its last line may land just after the client exits
for _ in $(seq 40); do [ "$(grep -c '^request ok' "$work/throttle.log")" -ge 4 ] && break; sleep 0.05; done
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
