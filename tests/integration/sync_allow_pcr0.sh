#!/usr/bin/env bash
# --sync-allow-pcr0: a rolling upgrade from image A to image B keeps the
# certificate when both sides allow the other's PCR0 (the leader gives keys
# to B, the B worker takes them from A); without it on the worker the
# leader's keys are refused, without it on the leader the worker is.
set -euo pipefail
source "$(dirname "$0")/common.bash"
source "$(dirname "$0")/sync/sync_common.bash"

start_sims 1
pcr0_a=$("$CLOISTER" nsm --nsm "unix:$work/sim1.sock" pcr 0 | cut -d' ' -f1)
pcr0_b=$(printf 'b1%.0s' $(seq 48))
start_sim_pcr0 simB "$pcr0_b"

"$CLOISTER" enclave -fqdn localhost -fqdn-leader 127.0.0.1:1 --sync-allow-pcr0 abcd >"$work/bad.txt" 2>&1 && fail "a short PCR0 was accepted"
grep -q 'sync-allow-pcr0.*96 hexadecimal digits' "$work/bad.txt" || fail "no clear error for a bad --sync-allow-pcr0: $(cat "$work/bad.txt")"
pass "--sync-allow-pcr0 takes 96 hex digits, else a clear error"

sync_enclave leader sim1 self --sync-allow-pcr0 "$pcr0_b"
wait_for_log leader 'event=sync_role role=leader'
lsync=$(port_of leader sync)
leader_sha=$(tls_sha_of_log leader)

# image B with A allowed: takes the leader's key
sync_enclave upgraded simB "$lsync" --sync-allow-pcr0 "$pcr0_a"
wait_for_log upgraded 'event=sync_keys_installed' 400
grep -q 'event=sync_leader_verified .*by=sync-allow-pcr0' "$work/upgraded.log" || fail "the B worker did not log the allowed PCR0"
grep -q "event=sync_worker_verified worker=127.0.0.1:$(port_of upgraded sync) .*by=sync-allow-pcr0" "$work/leader.log" ||
    fail "the leader did not log accepting image B by --sync-allow-pcr0"
[ "$(proven_sha upgraded)" = "$leader_sha" ] || fail "image B does not present the leader's certificate"
python3 -c 'import json,sys; d=json.load(open(sys.argv[1])); assert d["pcrs"]["0"] == sys.argv[2], d["pcrs"]["0"]' \
    "$work/verify-upgraded.json" "$pcr0_b" || fail "the upgraded replica does not attest PCR0 B"
pass "image B (PCR0 B) takes image A's certificate when each side allows the other's PCR0; cloister verify proves it with PCR0 B"

# image B without A allowed: refuses the leader's keys
sync_enclave strict simB "$lsync" -sync-register-interval 200ms
own=$(tls_sha_of_log strict)
wait_for_log strict "event=sync_refused reason=\"the peer's PCR0 ${pcr0_a:0:32}\\.\\.\\. differs from ours and is not in --sync-allow-pcr0" 400
[ "$(served_sha strict)" = "$own" ] || fail "the strict B worker changed its certificate"
pass "without --sync-allow-pcr0 on the worker, image A's keys are refused (PCR0 named)"
stop strict || true
stop upgraded || true

# a leader that does not allow B: refuses to give its keys
stop leader || true
sync_enclave leader2 sim1 self
wait_for_log leader2 'event=sync_role role=leader'
sync_enclave upgraded2 simB "$(port_of leader2 sync)" --sync-allow-pcr0 "$pcr0_a" -sync-register-interval 200ms
own=$(tls_sha_of_log upgraded2)
wait_for_log leader2 "event=sync_worker_failed worker=127.0.0.1:$(port_of upgraded2 sync) error=\"the peer's PCR0 ${pcr0_b:0:32}\\.\\.\\. differs from ours and is not in --sync-allow-pcr0" 400
[ "$(served_sha upgraded2)" = "$own" ] || fail "image B got keys from a leader that does not allow it"
pass "without --sync-allow-pcr0 on the leader, image B gets no keys (the leader names PCR0)"

# --sync-allow-signer: image A cannot name a later image B's PCR0 (it is
# measured before B exists), but both are signed with one certificate
# (PCR8).  A leader and workers that allow their own signer sync across
# images; a worker signed by anyone else gets nothing, and an image signed by
# another certificate is refused as a leader.
stop upgraded2 || true
stop leader2 || true
signer=$(printf '5a%.0s' $(seq 48))
other_signer=$(printf '6b%.0s' $(seq 48))
start_sim_with signedA --pcr "8=$signer"
start_sim_with signedB --pcr "0=$(printf 'c3%.0s' $(seq 48))" --pcr "8=$signer"
start_sim_with foreign --pcr "0=$(printf 'd4%.0s' $(seq 48))" --pcr "8=$other_signer"
sync_enclave sleader signedA self --sync-allow-signer
wait_for_log sleader 'event=sync_role role=leader'
slsync=$(port_of sleader sync)
sleader_sha=$(tls_sha_of_log sleader)
sync_enclave sworker signedB "$slsync" --sync-allow-signer
wait_for_log sworker 'event=sync_keys_installed' 400
grep -q 'event=sync_leader_verified .*by=sync-allow-signer' "$work/sworker.log" || fail "the B worker did not log the signer rule"
grep -q "event=sync_worker_verified worker=127.0.0.1:$(port_of sworker sync) .*by=sync-allow-signer" "$work/sleader.log" ||
    fail "the leader did not log accepting image B by its signer"
[ "$(proven_sha sworker)" = "$sleader_sha" ] || fail "image B (same signer) does not present the leader's certificate"
pass "--sync-allow-signer: image B, unknown to image A but signed by the same certificate (PCR8), takes A's certificate"

sync_enclave intruder foreign "$slsync" --sync-allow-signer -sync-register-interval 200ms
own=$(tls_sha_of_log intruder)
wait_for_log sleader "event=sync_worker_failed worker=127.0.0.1:$(port_of intruder sync) error=\"the peer's PCR0 d4d4d4d4.*nor signed by our signing certificate" 400
[ "$(served_sha intruder)" = "$own" ] || fail "an image signed by another certificate got the leader's keys"
pass "--sync-allow-signer: an image signed by another certificate gets no keys (the leader says why)"
