# The common set-up of dynamodb_client.sh and cert_store.sh (sourced after common.bash): the
# enclave's view of AWS on one machine.
#   - nsm-sim (PCR0=$PCR0) and a second one with another PCR0; imds-sim behind `cloister host
#     --imds $IMDS` (the vsock stand-in), whose role's credentials kms-local knows
#   - kms-local (TLS) with alias/acme: Encrypt for the account, Decrypt only for a Recipient with $PCR0
#   - dynalite (npm) over TLS with this test's certificate for dynamodb.REGION.amazonaws.com
#   - `cloister host --outbound $KMSP=kms-local --outbound $DDBP=dynalite`
#   - ddb: `cloister dynamodb` as inside the enclave (IMDS credentials, the proxy, TLS to DynamoDB's name)
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

start_instance_role "$REGION"

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
