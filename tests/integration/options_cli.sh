#!/usr/bin/env bash
# The commands on core/options (nsm, nsm-sim, attest, imds-sim): --help on
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

for cmd in "nsm" "nsm-sim" "imds-sim" "attest request" "attest verify" "attest show" "attest"; do
    # shellcheck disable=SC2086
    "$CLOISTER" $cmd --help >"$work/help" 2>"$work/err" || fail "$cmd --help failed"
    grep -q '^usage: cloister' "$work/help" || fail "$cmd --help: no usage line"
    [ ! -s "$work/err" ] || fail "$cmd --help wrote to stderr"
    # shellcheck disable=SC2086
    "$CLOISTER" $cmd -h | cmp -s - "$work/help" || fail "$cmd -h differs from --help"
done
"$CLOISTER" imds-sim --help | grep -q -- '--role NAME .*(default: cloister-enclave-role)' ||
    fail "imds-sim --help does not show the default role"
"$CLOISTER" attest --help | grep -q '^verify options:' || fail "attest --help lacks the verify group"

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

# The same settings spelled every accepted way work end to end.
sock="$work/nsm.sock"
spawn nsm_sim "$CLOISTER" nsm-sim --listen="unix:$sock" --state "$work/state" --debug
wait_for_log nsm_sim '^nsm-sim: listening on '
"$CLOISTER" nsm --nsm="unix:$sock" pcr 16 | grep -q ' unlocked$' || fail "nsm --nsm=ADDR"
"$CLOISTER" attest request --nsm "unix:$sock" --nonce=0a0b -o "$work/doc.cbor" || fail "attest request"
"$CLOISTER" attest verify --root="$work/state/root.pem" --nonce 0a0b --allow-debug --max-age 5m -- "$work/doc.cbor" |
    grep -q ': ok ' || fail "attest verify with --name=value and --"
"$CLOISTER" attest verify --root "$work/state/root.pem" --nonce 0a0c --allow-debug "$work/doc.cbor" >"$work/out" &&
    fail "a wrong nonce was accepted"
grep -q 'rejected' "$work/out" || fail "wrong nonce: $(cat "$work/out")"
stop nsm_sim
echo "options_cli: ok"
