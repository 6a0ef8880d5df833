#!/usr/bin/env bash
# Bad input on the sync listener, from anyone who reaches it: malformed
# JSON, oversized bodies, wrong nonces, bad documents, wrong methods and
# roles each get a clear 4xx; the enclaves keep running and keep their keys.
set -euo pipefail
source "$(dirname "$0")/common.bash"
source "$(dirname "$0")/sync/sync_common.bash"

start_sims 1
sync_enclave leader sim1 self
wait_for_log leader 'event=sync_role role=leader'
lsync=$(port_of leader sync)
sync_enclave worker sim1 "$lsync"
wait_for_log worker 'event=sync_keys_installed'
nobody=$(free_port)
sync_enclave electing sim1 "$nobody"
L="https://127.0.0.1:$lsync"
W="https://127.0.0.1:$(port_of worker sync)"
E="https://127.0.0.1:$(port_of electing sync)"
leader_sha=$(tls_sha_of_log leader)

expect() { # CODE PATTERN CURL-ARGS...: status CODE and PATTERN in the body
    local want=$1 pattern=$2
    shift 2
    local got
    got=$(curl -sk -o "$work/body" -w '%{http_code}' "$@")
    [ "$got" = "$want" ] || fail "curl $*: $got, not $want: $(head -c 300 "$work/body")"
    grep -q -- "$pattern" "$work/body" || fail "curl $*: no /$pattern/ in: $(head -c 300 "$work/body")"
}
n=$(nonce_hex)

# /enclave/leader
expect 200 ok "$E/enclave/leader?nonce=$n"
for bad in "" "nonce=" "nonce=${n:0:39}" "nonce=${n}00" "nonce=${n:0:38}zz" "nonce=${n:0:38}%00"; do
    expect 400 'nonce must be 40 hexadecimal digits' "$E/enclave/leader?$bad"
done
expect 410 'decided' "$L/enclave/leader?nonce=$n"
expect 410 'decided' "$W/enclave/leader?nonce=$n"
expect 405 'use GET' -X POST "$E/enclave/leader?nonce=$n"
grep -q 'event=sync_foreign_nonce' "$work/electing.log" || fail "a foreign nonce was not logged"
pass "/enclave/leader: bad nonces 400 while electing, 410 once decided, 405 for POST"

# /enclave/heartbeat
expect 400 'malformed JSON' -X POST --data '{"hashed_keys":' "$L/enclave/heartbeat"
expect 400 'expected a JSON object' -X POST --data '[1,2]' "$L/enclave/heartbeat"
expect 400 'HOST:PORT' -X POST --data '{"hashed_keys":"","worker_hostname":"nohost"}' "$L/enclave/heartbeat"
expect 400 'must be a string' -X POST --data '{"hashed_keys":7,"worker_hostname":"a:1"}' "$L/enclave/heartbeat"
expect 400 'malformed JSON' -X POST --data '{"worker_hostname":"a:1","worker_hostname":"b:2"}' "$L/enclave/heartbeat"
expect 400 'not a host name' -X POST --data '{"hashed_keys":"","worker_hostname":"a/b@c:1"}' "$L/enclave/heartbeat"
head -c 600 /dev/zero | tr '\0' ' ' >"$work/big"
expect 413 'at most 427 bytes' -X POST --data-binary @"$work/big" "$L/enclave/heartbeat"
expect 410 'not the leader' -X POST --data '{"hashed_keys":"","worker_hostname":"a:1"}' "$W/enclave/heartbeat"
expect 405 'use POST' "$L/enclave/heartbeat"
pass "/enclave/heartbeat: malformed JSON, non-objects, bad or duplicate fields 400; over 427 bytes 413; on a worker 410"

# /enclave/sync
expect 400 'nonce must be' "$W/enclave/sync?nonce=xyz"
expect 200 '"document"' "$W/enclave/sync?nonce=$n"
expect 410 'leads' "$L/enclave/sync?nonce=$n"
expect 503 'in progress' "$E/enclave/sync?nonce=$n"
expect 400 'malformed JSON' -X POST --data 'not json' "$W/enclave/sync"
expect 400 'no "document"' -X POST --data '{"encrypted_keys":"AAAA"}' "$W/enclave/sync"
expect 400 'not base64' -X POST --data '{"document":"%%%","encrypted_keys":"AAAA"}' "$W/enclave/sync"
expect 400 'no "encrypted_keys"' -X POST --data '{"document":"AAAA","encrypted_keys":""}' "$W/enclave/sync"
ek=$(head -c 100 /dev/urandom | base64 -w0)
expect 400 "the leader's attestation document" -X POST --data "{\"document\":\"AAAA\",\"encrypted_keys\":\"$ek\"}" "$W/enclave/sync"
# a genuine document of the worker itself, for a nonce it never chose
doc=$(curl -sk "https://127.0.0.1:$(port_of worker public)/enclave/attestation?nonce=$n")
expect 400 'does not carry the nonce of a sync we started' -X POST \
    --data "{\"document\":\"$doc\",\"encrypted_keys\":\"$ek\"}" "$W/enclave/sync"
head -c $((3 * 1024 * 1024 + 1)) /dev/zero >"$work/huge"
expect 413 'too large' -X POST --data-binary @"$work/huge" "$W/enclave/sync"
expect 405 'use GET or POST' -X PUT --data x "$W/enclave/sync"
expect 404 'not found' "$W/enclave/other"
pass "/enclave/sync: bad nonce, bad JSON, missing fields, bad base64, garbage and unasked documents 400; over 3 MiB 413; wrong role 410/503"

for name in leader worker electing; do
    kill -0 "${pids[$name]}" 2>/dev/null || fail "$name died"
done
[ "$(served_sha worker)" = "$leader_sha" ] || fail "the worker lost the leader's certificate"
[ "$(proven_sha leader)" = "$leader_sha" ] || fail "the leader is not proven after the bad input"
grep -q 'event=sync_keys_installed' "$work/worker.log" && [ "$(grep -c 'event=sync_keys_installed' "$work/worker.log")" = 1 ] ||
    fail "the worker installed keys more than once"
pass "all three enclaves still run, the worker still serves the leader's certificate"

# A worker's own address.  -fqdn is the balancer's name, shared by every
# replica: a worker that named itself by it would be one worker to the leader,
# reached at a random replica.  Without --sync-advertise or a concrete
# -ext-priv-listen it takes IMDS's local-hostname (as nitriding does), or
# refuses to start.
set +e
timeout 30 "$CLOISTER" enclave -fqdn localhost --nsm "unix:$work/sim1.sock" --listen "tcp:127.0.0.1:$(free_port)" \
    -intport "$(free_port)" -ext-priv-listen "tcp:0.0.0.0:$(free_port)" -fqdn-leader "127.0.0.1:$lsync" \
    --sync-root "$root" >"$work/noaddr.log" 2>&1
status=$?
set -e
[ "$status" != 0 ] && [ "$status" != 124 ] || fail "an enclave with no address of its own for the leader started (exit $status)"
grep -q -- '--sync-advertise HOST:PORT' "$work/noaddr.log" || fail "no clear refusal: $(cat "$work/noaddr.log")"
imds=$(free_port)
spawn imds "$CLOISTER" imds-sim --listen "tcp:127.0.0.1:$imds" --region eu-west-1
wait_for_log imds 'listening'
sp=$(free_port)
spawn named "$CLOISTER" enclave -fqdn localhost --nsm "unix:$work/sim1.sock" --listen "tcp:127.0.0.1:$(free_port)" \
    -intport "$(free_port)" -ext-priv-listen "tcp:0.0.0.0:$sp" -ext-priv-port "$sp" -fqdn-leader "127.0.0.1:$lsync" \
    --sync-root "$root" -kms-imds "tcp:127.0.0.1:$imds"
wait_for_log named 'event=sync_started'
grep -Eq "event=sync_started .*advertise=ip-[0-9-]+\.eu-west-1\.compute\.internal:$sp( |$)" "$work/named.log" ||
    fail "the worker did not name itself by IMDS's local-hostname: $(grep sync_started "$work/named.log")"
pass "a worker's address: refused without one, else IMDS's local-hostname:-ext-priv-port (not the shared -fqdn)"
