# The parent's side for --acme-store file:DIR (sourced after common.bash):
# imds-sim behind `cloister host --imds`, kms-local (TLS) with a key whose
# Decrypt needs a Recipient with PCR0=$ACME_PCR0, `cloister host file-store`,
# all on vsock addresses through the unix stand-in, and an nsm-sim with that
# PCR0.  Sets ACME_STORE_FLAGS for cloister enclave.
REGION=eu-west-1
export CLOISTER_VSOCK_STANDIN=$work/vsock
mkdir -p "$CLOISTER_VSOCK_STANDIN" "$work/acme-files"
ACME_PCR0=$(printf '%096d' 7 | tr 0 a)

start_store_env() {
    spawn sim "$CLOISTER" nsm-sim --listen "unix:$work/nsm.sock" --state "$work/state" --pcr "0=$ACME_PCR0"
    wait_for_log sim '^nsm-sim: listening on '
    local kp
    start_instance_role "$REGION"
    cat >"$work/policy.json" <<POLICY
{"Version": "2012-10-17", "Statement": [
  {"Sid": "seal", "Effect": "Allow", "Principal": {"AWS": "arn:aws:iam::111122223333:root"},
   "Action": ["kms:Encrypt", "kms:DescribeKey"], "Resource": "*"},
  {"Sid": "only the enclave opens", "Effect": "Allow", "Principal": {"AWS": "arn:aws:iam::111122223333:root"},
   "Action": "kms:Decrypt", "Resource": "*",
   "Condition": {"StringEqualsIgnoreCase": {"kms:RecipientAttestation:PCR0": "$ACME_PCR0"}}}]}
POLICY
    kp=$(free_port)
    spawn kms "$CLOISTER" kms-local --listen "tcp:127.0.0.1:$kp" --state "$work/kms" --region "$REGION" --tls \
        --credentials "$role_creds" --root "$work/state/root.pem" --key "alias/acme=$work/policy.json"
    wait_for_log kms '^kms-local: listening on '
    spawn outbound "$CLOISTER" host --outbound "vsock:3:8000=127.0.0.1:$kp"
    wait_for_log outbound 'event=started'
    spawn fstore "$CLOISTER" host file-store --listen vsock:3:8010 --dir "$work/acme-files"
    wait_for_log fstore 'event=listening'
    ACME_STORE_FLAGS=(--kms-region "$REGION" --kms-endpoint "https://kms.$REGION.amazonaws.com" --kms-proxy vsock:3:8000
        --kms-ca-file "$work/kms/ca.pem" --kms-imds vsock:3:8002 --acme-store "file:$work/acme-files"
        --acme-store-proxy vsock:3:8010 --acme-kms-key-id alias/acme)
}
