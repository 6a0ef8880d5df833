#!/usr/bin/env bash
# Fake leaders: a worker takes keys only from a leader whose attestation
# document verifies under the trusted root, carries the nonce the worker
# chose, binds the ciphertext's SHA-256, and has the worker's PCRs (PCR4
# aside) or an allowed PCR0.  Each fake is refused with the reason in the
# worker's log, and the worker keeps its own key and empty state:
#  - a plain HTTPS server that wins the election (answers 410) and pushes
#    keys it made under: a document from its own simulator (another root),
#    a genuine document of the enclave for the worker's nonce (wrong
#    user_data), garbage, and a document for a nonce the worker never made;
#  - a real enclave (simulator with another PCR0) that is itself willing to
#    give its keys to the worker (--sync-allow-pcr0 of the worker's image).
set -euo pipefail
source "$(dirname "$0")/common.bash"
source "$(dirname "$0")/sync/sync_common.bash"
/usr/bin/python3 -c 'import nacl.public' 2>/dev/null || { echo "skip: python3-nacl is absent (scripts/deps.sh installs it)"; exit 77; }

start_sims 1 2
pcr0_a=$("$CLOISTER" nsm --nsm "unix:$work/sim1.sock" pcr 0 | cut -d' ' -f1)

# ---- a plain HTTPS server as leader ------------------------------------------------------
fake_leader_material
fake=$(free_port)
pub=$(free_port)  # the worker's public port, known before it starts: the fake fetches genuine documents there
spawn fake env CLOISTER="$CLOISTER" /usr/bin/python3 "$SOURCE_DIR/tests/integration/sync/fake_leader.py" --listen "$fake" \
    --cert "$work/fake.crt" --key "$work/fake.key" --evil-cert "$work/evil.crt" --evil-key "$work/evil.key" \
    --evil-nsm "unix:$work/evil.sock" --genuine "https://127.0.0.1:$pub" --attacks foreign-root,genuine-doc,garbage,unasked
wait_for_log fake 'fake-leader: listening'

int=$(free_port); sp=$(free_port)
echo "$pub $int $sp" >"$work/worker.ports"
spawn worker "$CLOISTER" enclave -fqdn localhost --nsm "unix:$work/sim1.sock" --listen "tcp:127.0.0.1:$pub" \
    -intport "$int" -ext-priv-listen "tcp:127.0.0.1:$sp" -fqdn-leader "127.0.0.1:$fake" --sync-root "$root" \
    -sync-register-interval 200ms
wait_for_log worker 'event=listening listener=public'
own_sha=$(tls_sha_of_log worker)
wait_for_log worker 'event=sync_role role=worker'
wait_for_log fake 'fake-leader: done' 400

expect_refusal() { # ATTACK STATUS WORKER-LOG-PATTERN
    grep -q "attack=$1 status=$2 " "$work/fake.log" || fail "attack $1: expected HTTP $2: $(grep "attack=$1" "$work/fake.log")"
    grep -q "event=sync_refused reason=.*$3" "$work/worker.log" || fail "attack $1: the worker did not log /$3/"
}
expect_refusal foreign-root 400 'trusted root'
expect_refusal genuine-doc 400 'does not bind SHA-256 of the encrypted keys'
expect_refusal garbage 400 'attestation\|COSE\|CBOR'
expect_refusal unasked 400 'does not carry the nonce of a sync we started'
! grep -q 'event=sync_keys_installed' "$work/worker.log" || fail "the worker installed keys from the fake leader"
[ "$(served_sha worker)" = "$own_sha" ] || fail "the worker no longer presents its own certificate"
[ "$(proven_sha worker)" = "$own_sha" ] || fail "cloister verify does not prove the worker's own certificate"
state=$(curl -s "http://127.0.0.1:$int/enclave/state")
[ -z "$state" ] || fail "the worker's state is '$state' after the fake leader's pushes"
pass "a plain HTTPS leader is refused (foreign root, a genuine document binding something else, garbage, an unasked nonce), each reason logged; the worker keeps its own key and empty state"
stop worker || true
stop fake || true

# ---- a real enclave with another image as leader ------------------------------------------
pcr0_b=$(printf 'b0%.0s' $(seq 48))
start_sim_pcr0 simB "$pcr0_b"
sync_enclave leaderB simB self --sync-allow-pcr0 "$pcr0_a"
wait_for_log leaderB 'event=sync_role role=leader'
sync_enclave workerA sim2 "$(port_of leaderB sync)" -sync-register-interval 200ms
own_sha=$(tls_sha_of_log workerA)
wait_for_log leaderB 'event=sync_worker_verified .*by=sync-allow-pcr0'
wait_for_log workerA "event=sync_refused reason=\"the peer's PCR0 ${pcr0_b:0:32}\.\.\. differs from ours and is not in --sync-allow-pcr0" 400
! grep -q 'event=sync_keys_installed' "$work/workerA.log" || fail "workerA installed keys from another image"
[ "$(served_sha workerA)" = "$own_sha" ] || fail "workerA no longer presents its own certificate"
pass "a simulator enclave with another PCR0, willing to give its keys, is refused by the worker (PCR0 named), which keeps its key"
