#!/usr/bin/env bash
# The commands on core/options (every command: nsm, nsm-sim, attest, imds-sim,
# enclave, host, vsock-proxy, watchdog, verify, kms, kms-local, keyholder,
# acm, host acm, dev): --help on
# stdout with exit 0, bad command lines named on stderr with exit 2 before
# any work, --name=value and --name value alike, the flag spellings kept.
set -euo pipefail
source "$(dirname "$0")/common.bash"

# expect STATUS PATTERN CMD...: CMD exits STATUS and its stderr matches PATTERN
expect() {
    local want=$1 pattern=$2 st=0
    shift 2
    "$CLOISTER" "$@" >"$work/out" 2>"$work/err" || st=$?
    [ "$st" = "$want" ] || fail "$*: exit $st, expected $want ($(cat "$work/err"))"
    grep -q -- "$pattern" "$work/err" || fail "$*: stderr '$(cat "$work/err")' lacks '$pattern'"
}

for cmd in "nsm" "nsm-sim" "imds-sim" "attest request" "attest verify" "attest show" "attest" "enclave" "host" \
    "host vsock-proxy" "host acm" "watchdog" "verify" "kms" "kms-local" "keyholder serve" "keyholder put" \
    "acm pack-key" "dev"; do
    # shellcheck disable=SC2086
    "$CLOISTER" $cmd --help >"$work/help" 2>"$work/err" || fail "$cmd --help failed"
    grep -q '^usage: cloister' "$work/help" || fail "$cmd --help: no usage line"
    [ ! -s "$work/err" ] || fail "$cmd --help wrote to stderr"
    # shellcheck disable=SC2086
    "$CLOISTER" $cmd -h | cmp -s - "$work/help" || fail "$cmd -h differs from --help"
done
"$CLOISTER" imds-sim --help | has -- '--role NAME .*(default: cloister-enclave-role)' ||
    fail "imds-sim --help does not show the default role"
"$CLOISTER" attest --help | has '^verify options:' || fail "attest --help lacks the verify group"

expect 2 "unknown option '--bogus' (see --help)" nsm --bogus describe
expect 2 "--nsm needs a value (ADDR)" nsm --nsm
expect 2 "unknown command 'bogus'" nsm bogus
expect 2 "--listen unix:PATH is required" nsm-sim --state "$work/state"
expect 2 "--state DIR is required" nsm-sim --listen "unix:$work/s.sock"
expect 2 "--pcr: 40=00: PCR index" nsm-sim --listen "unix:$work/s.sock" --state "$work/state" --pcr=40=00
expect 2 "unexpected argument 'extra'" nsm-sim --listen "unix:$work/s.sock" --state "$work/state" extra
expect 2 "unknown option '-listen'" nsm-sim -listen "unix:$work/s.sock" --state "$work/state"
[ ! -e "$work/state" ] || fail "a refused nsm-sim command line created its state directory"
expect 2 "--listen ADDR is required" imds-sim
expect 2 "--role 'a b' is not a valid IAM role name" imds-sim --listen tcp:127.0.0.1:1 --role='a b'
expect 2 "unknown option '--instance'" imds-sim --listen tcp:127.0.0.1:1 --instance i-0
expect 2 "no document given" attest verify --allow-debug
expect 2 "--max-age: '0' is below the minimum of 1s" attest verify --max-age 0 x
expect 2 "--max-age: '5d': unknown unit" attest verify --max-age=5d x
expect 2 "--root: at most 16" attest verify $(for i in $(seq 17); do printf -- '--root r%s ' "$i"; done) x
expect 2 "--nonce: " attest request --nonce xyz
expect 2 "expected FILE" attest show
expect 2 "too many arguments: 'b'" attest show a b

# The commands converted from their own loops keep their spellings and exit 2.
expect 2 "unknown option '-bogus'" enclave -bogus
expect 2 "-h2-max-streams: '5000' exceeds the maximum 1000" enclave -fqdn x -h2-max-streams 5000
expect 2 "-fqdn is required" enclave --intport=8081
long_name=$(printf 'a%.0s' $(seq 60)).$(printf 'b%.0s' $(seq 60)).example # 129: a DNS name, too long for the store
expect 2 "-fqdn is longer than a DNS name can be" enclave -fqdn "$long_name.$long_name"
expect 2 "with --acme-store, -fqdn is at most 122 characters" enclave -fqdn "$long_name" -acme \
    --acme-store file:/nonexistent --acme-kms-key-id alias/x
"$CLOISTER" enclave -help | has -- '-ext-pub-port PORT .*(default: 443)' || fail "enclave -help: no default port"
"$CLOISTER" enclave -help | has -- '-max-buffered-body BYTES' || fail "enclave -help lacks -max-buffered-body"
expect 2 "--memory: 'x' is not a size" watchdog --memory x
expect 2 "--cpu-count: '0' is below the minimum 1" watchdog --cpu-count 0
expect 2 "no enclave to run" watchdog --health-interval 1s
expect 2 "--max-age: must be at least 1 second" verify --max-age 0 https://x
expect 2 "give one URL" verify https://x https://y
expect 2 "--bytes: '2000' exceeds the maximum 1024" kms --bytes 2000 generate-random
expect 2 "which operation?" kms --region us-east-1
expect 2 "--threads: '0' is below the minimum 1" kms-local --listen tcp:127.0.0.1:1 --state "$work/kl" --threads 0
expect 2 "--state DIR is required" kms-local --listen tcp:127.0.0.1:1
expect 2 "--socket ADDR is required" keyholder serve --max-pin-failures 3
expect 2 "--token-ttl: '1d': unknown unit" keyholder serve --socket "unix:$work/kh.sock" --token-ttl 1d
expect 2 "--poll: '50ms' is below the minimum of 100ms" host acm --bundle x --token t --provision unix:/x --poll 50ms
expect 2 "--key, --cert, --key-id and --token are required" acm pack-key --key k
expect 2 "--fidelity: nitro or loose" dev --fidelity x
expect 2 "unknown option '--listen'" host --listen unix:/x
expect 2 "--idle-timeout: '0' is below the minimum 1" host --idle-timeout 0 --forward tcp:127.0.0.1:1=tcp:127.0.0.1:2
echo '{"restart-budget": 2, "forward": "x"}' >"$work/host.json"
expect 2 "the enclave's options need --run-enclave-eif" host --config "$work/host.json"
expect 2 "unknown option '--bogus'" host vsock-proxy --bogus 1 a 2
expect 1 "--num_workers: 'x' is not a decimal number" host vsock-proxy -w x 1 a 2
"$CLOISTER" host vsock-proxy -V | has '^cloister host vsock-proxy ' || fail "vsock-proxy -V"
[ ! -e "$work/kl" ] || fail "a refused kms-local command line created its state directory"

# The same settings spelled every accepted way work end to end.
sock="$work/nsm.sock"
spawn nsm_sim "$CLOISTER" nsm-sim --listen="unix:$sock" --state "$work/state" --debug
wait_for_log nsm_sim '^nsm-sim: listening on '
"$CLOISTER" nsm --nsm="unix:$sock" pcr 16 | has ' unlocked$' || fail "nsm --nsm=ADDR"
"$CLOISTER" attest request --nsm "unix:$sock" --nonce=0a0b -o "$work/doc.cbor" || fail "attest request"
"$CLOISTER" attest verify --root="$work/state/root.pem" --nonce 0a0b --allow-debug --max-age 5m -- "$work/doc.cbor" |
    grep -q ': ok ' || fail "attest verify with --name=value and --"
"$CLOISTER" attest verify --root "$work/state/root.pem" --nonce 0a0c --allow-debug "$work/doc.cbor" >"$work/out" &&
    fail "a wrong nonce was accepted"
grep -q 'rejected' "$work/out" || fail "wrong nonce: $(cat "$work/out")"
stop nsm_sim
echo "options_cli: ok"
