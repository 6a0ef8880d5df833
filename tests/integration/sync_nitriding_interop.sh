#!/usr/bin/env bash
# Key sync between cloister and an independent nitriding-compatible peer
# (tests/integration/nitriding_peer.py, written from docs/key-sync.md):
#  1. a cloister leader and a nitriding worker: election, registration, the
#     worker verifies the leader's document and installs its certificate (same
#     fingerprint), heartbeats agree on hashed_keys, PUT /enclave/state
#     reaches the worker;
#  2. a nitriding leader and a cloister worker: the same the other way round;
#  3. what cloister's worker refuses from a would-be leader (ciphertext not
#     bound, stale nonce, a document under another root, another PCR0) while
#     an honest one of the same image is taken (so the refusals are the
#     checks', not a closed door);
#  4. what cloister's leader refuses from a would-be worker (a document with
#     another nonce, another PCR0, another root): no keys are sent;
#  5. the status codes nitriding peers and apps act on.
# Enclaves on 127.0.0.1 and peers on 127.0.0.2/.3 share one sync port, as
# nitriding's leader reaches a worker on its own -ext-priv-port
# (docs/key-sync.md section 4).
set -euo pipefail
source "$(dirname "$0")/common.bash"

PY=/usr/bin/python3
PEER="$SOURCE_DIR/tests/integration/nitriding_peer.py"
"$PY" -c 'import nacl.public, cbor2, cryptography' 2>/dev/null ||
    { echo "skip: python3-nacl, python3-cbor2 or python3-cryptography missing (scripts/deps.sh)"; exit 77; }
command -v openssl >/dev/null || { echo "skip: openssl is not installed"; exit 77; }

# ---- simulators: one root; cloister's and the peer's have their own PCR4 --------------
root="$work/state/root.pem"
sim() { # NAME STATE_DIR ARGS...
    local name=$1 dir=$2
    shift 2
    spawn "$name" "$CLOISTER" nsm-sim --listen "unix:$work/$name.sock" --state "$dir" "$@"
    wait_for_log "$name" '^nsm-sim: listening on '
}
sim simc "$work/state" --instance-id i-cloister
same_root() { # DIR: a state directory with the same CA chain, without the instance's own
    mkdir -p "$1" && cp -r "$work/state/." "$1/" && rm -f "$1/instance-id" "$1/instance.key" "$1/instance.pem"
}
same_root "$work/peer-state"
sim simp "$work/peer-state" --instance-id i-peer
cmp -s "$root" "$work/peer-state/root.pem" || fail "the peer's simulator has another root"
sim simf "$work/foreign-state" --instance-id i-foreign   # another root
same_root "$work/pcr0-state"
sim simx "$work/pcr0-state" --instance-id i-other --pcr "0=$(printf 'ab%.0s' $(seq 48))"

peer() { # NAME MODE ARGS...: the nitriding peer, on the peer's simulator unless --nsm is given again
    local name=$1
    shift
    spawn "$name" "$PY" "$PEER" "$@"
}
push() { # SIM ROOT ARGS...: one unasked key delivery; exit status of the peer
    local s=$1 r=$2
    shift 2
    "$PY" "$PEER" push --nsm "unix:$work/$s.sock" --root "$r" "$@" >>"$work/push.log" 2>&1
}
cloister_enclave() { # NAME SYNC_ADDR SYNC_PORT ARGS...: a cloister enclave in key sync
    local name=$1 addr=$2 port=$3 pub int
    shift 3
    pub=$(free_port); int=$(free_port)
    echo "$pub $int" >"$work/$name.ports"
    spawn "$name" "$CLOISTER" enclave -fqdn localhost --nsm "unix:$work/simc.sock" --listen "tcp:127.0.0.1:$pub" \
        -intport "$int" -ext-priv-listen "tcp:$addr:$port" -ext-priv-port "$port" -fqdn-leader 127.0.0.1 \
        --sync-root "$root" "$@"
    wait_for_log "$name" 'event=listening listener=public'
}
public_of() { cut -d' ' -f1 "$work/$1.ports"; }
internal_of() { cut -d' ' -f2 "$work/$1.ports"; }
served_sha() { # HOST:PORT
    openssl s_client -connect "$1" -servername localhost </dev/null 2>/dev/null | openssl x509 -outform DER |
        sha256sum | cut -c1-64
}
pem_sha() { openssl x509 -in "$1" -outform DER | sha256sum | cut -c1-64; }
peer_synced_sha() { # NAME: the certificate of the peer's last sync
    sed -n 's/.*event=synced cert_sha256=\([0-9a-f]*\).*/\1/p' "$work/$1.log" | tail -n 1
}
count() { grep -c -- "$2" "$work/$1.log" || true; }
wait_count() { # NAME PATTERN N: until NAME's log has N lines matching PATTERN
    local name=$1 pattern=$2 n=$3
    for _ in $(seq 1 300); do
        [ "$(count "$name" "$pattern")" -ge "$n" ] && return 0
        kill -0 "${pids[$name]}" 2>/dev/null || fail "$name exited early"
        sleep 0.05
    done
    fail "$name did not log /$pattern/ $n times in time"
}
http_code() { curl -sk -o /dev/null -w '%{http_code}' "$@"; }
new_cert() { # NAME: a P-256 key (PKCS#8) and self-signed certificate, as nitriding makes them
    openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -keyout "$work/$1.key" -out "$work/$1.pem" \
        -subj "/O=AWS Nitro enclave application" -addext subjectAltName=DNS:localhost \
        -addext basicConstraints=critical,CA:FALSE -days 2 2>/dev/null
}

# ---- 1. cloister leader, nitriding worker ---------------------------------------------
p1=$(free_port)
cloister_enclave leader 127.0.0.1 "$p1"
wait_for_log leader 'event=sync_role role=leader'
leader_sha=$(sed -n 's/.*event=tls_identity origin=generated .*certificate_sha256=\([0-9a-f]*\).*/\1/p' "$work/leader.log")
[ "$(served_sha "127.0.0.1:$(public_of leader)")" = "$leader_sha" ] || fail "the leader does not serve the certificate it logged"
wint=$(free_port)
peer worker worker --nsm "unix:$work/simp.sock" --root "$root" --fqdn-leader 127.0.0.1 --ext-priv-port "$p1" \
    --listen 127.0.0.2 --intport "$wint" --heartbeat-interval 0.5
wait_for_log worker 'event=synced ' 300
[ "$(peer_synced_sha worker)" = "$leader_sha" ] || fail "the nitriding worker received $(peer_synced_sha worker), the leader serves $leader_sha"
grep -q 'event=synced .*app_keys=null' "$work/worker.log" || fail "a leader without app state sent app_keys other than null"
[ "$(served_sha "127.0.0.2:$p1")" = "$leader_sha" ] || fail "the nitriding worker does not serve the leader's certificate"
wait_for_log leader 'event=sync_worker_verified worker=127.0.0.2:'
pass "cloister leader -> nitriding worker: elected by nonce, registered, each verified the other, same certificate $leader_sha"

# heartbeats: the leader computes hashed_keys as the worker does, so they do not re-sync
wait_count worker 'event=heartbeat status=200' 3
syncs=$(count worker 'event=synced ')
mismatches=$(count leader 'event=sync_heartbeat_mismatch worker=127.0.0.2')
wait_count worker 'event=heartbeat status=200' 6
[ "$(count worker 'event=synced ')" = "$syncs" ] && [ "$(count leader 'event=sync_heartbeat_mismatch worker=127.0.0.2')" = "$mismatches" ] ||
    fail "the leader keeps re-syncing a worker with its keys: hashed_keys disagree"
pass "heartbeats: cloister and the peer agree on hashed_keys (base64 SHA-256 of cert || key || app_keys)"

code=$(curl -s -o /dev/null -w '%{http_code}' -X PUT --data-binary 'state from cloister' "http://127.0.0.1:$(internal_of leader)/enclave/state")
[ "$code" = 200 ] || fail "PUT /enclave/state on the leader got $code"
wait_count worker 'event=synced ' $((syncs + 1))
grep -q "event=synced .*app_keys=$(printf 'state from cloister' | base64)" "$work/worker.log" || fail "the worker's app_keys are not the leader's state"
[ "$(curl -s "http://127.0.0.1:$wint/enclave/state")" = 'state from cloister' ] || fail "GET /enclave/state on the worker"
pass "PUT /enclave/state on the cloister leader re-syncs the nitriding worker, whose GET /enclave/state returns it"

# ---- 2. nitriding leader, cloister worker ---------------------------------------------
p2=$(free_port)
new_cert pl
pl_sha=$(pem_sha "$work/pl.pem")
printf 'state from nitriding' >"$work/pl.state"
lint=$(free_port)
peer pleader leader --nsm "unix:$work/simp.sock" --root "$root" --ext-priv-port "$p2" --listen 127.0.0.1 \
    --cert "$work/pl.pem" --key "$work/pl.key" --state-file "$work/pl.state" --intport "$lint"
wait_for_log pleader 'event=elected role=leader'
cloister_enclave cworker 127.0.0.2 "$p2" --sync-heartbeat-interval 500ms
wait_for_log cworker 'event=sync_role role=worker'
wait_for_log cworker 'event=sync_keys_installed' 300
grep -q "event=tls_identity origin=key-sync .*certificate_sha256=$pl_sha" "$work/cworker.log" || fail "the cloister worker did not log the leader's certificate"
[ "$(served_sha "127.0.0.1:$(public_of cworker)")" = "$pl_sha" ] || fail "the cloister worker does not serve the nitriding leader's certificate"
grep -q 'event=sync-delivered worker=127.0.0.2:' "$work/pleader.log" || fail "the peer did not log the delivery"
[ "$(curl -s "http://127.0.0.1:$(internal_of cworker)/enclave/state")" = 'state from nitriding' ] || fail "GET /enclave/state on the cloister worker"
pass "nitriding leader -> cloister worker: same certificate $pl_sha, app state delivered"

wait_count pleader 'event=heartbeat-received worker=127.0.0.2 matches=true' 2
grep -q 'matches=false' <(grep 'event=heartbeat-received' "$work/pleader.log" | tail -n +2) &&
    fail "a cloister heartbeat after the sync carried other hashed_keys than the peer's"
code=$(curl -s -o /dev/null -w '%{http_code}' -X PUT --data-binary 'second state' "http://127.0.0.1:$lint/enclave/state")
[ "$code" = 200 ] || fail "PUT on the peer leader got $code"
for _ in $(seq 1 100); do
    [ "$(curl -s "http://127.0.0.1:$(internal_of cworker)/enclave/state")" = 'second state' ] && break
    sleep 0.05
done
[ "$(curl -s "http://127.0.0.1:$(internal_of cworker)/enclave/state")" = 'second state' ] || fail "the re-sync did not reach the cloister worker"
pass "cloister's heartbeats match the peer's hashed_keys; a new state on the nitriding leader reaches the cloister worker"

# ---- 3. would-be leaders the cloister worker must refuse -------------------------------
expect_refused() { # WHAT PATTERN SIM ROOT ARGS...
    local what=$1 pattern=$2
    shift 2
    if push "$@" --to 127.0.0.2 --ext-priv-port "$p2"; then
        fail "$what: the cloister worker took the keys"
    fi
    tail -n 1 "$work/push.log" | has 'HTTP code 4' || fail "$what: not refused by the worker: $(tail -n 1 "$work/push.log")"
    wait_for_log cworker "event=sync_refused reason=.*$pattern"
    [ "$(served_sha "127.0.0.1:$(public_of cworker)")" = "$pl_sha" ] || fail "$what: the worker's certificate changed"
}
new_cert evil
expect_refused "ciphertext not bound" 'SHA-256 of the encrypted keys' simp "$root" --cert "$work/evil.pem" --key "$work/evil.key" --tamper hash
expect_refused "stale nonce" 'nonce' simp "$root" --cert "$work/evil.pem" --key "$work/evil.key" --tamper nonce
expect_refused "foreign root" 'trusted root' simf "$work/foreign-state/root.pem" --skip-worker-check \
    --cert "$work/evil.pem" --key "$work/evil.key"
expect_refused "another PCR0" 'PCR0' simx "$root" --skip-worker-check --cert "$work/evil.pem" --key "$work/evil.key"
pass "the cloister worker refuses keys whose ciphertext the document does not bind, a stale nonce, another root, another PCR0"
# the control: an enclave of the same image may deliver (nitriding accepts that too)
new_cert other
push simp "$root" --to 127.0.0.2 --ext-priv-port "$p2" --cert "$work/other.pem" --key "$work/other.key" ||
    fail "an honest delivery was refused: $(tail -n 1 "$work/push.log")"
# (its log, not the served certificate: the real leader restores its own at the next heartbeat)
grep -q "event=tls_identity origin=key-sync .*certificate_sha256=$(pem_sha "$work/other.pem")" "$work/cworker.log" ||
    fail "the honest delivery was not installed"
pass "control: the same delivery from an enclave of the same image is taken"

# ---- 4. would-be workers the cloister leader must not give keys to --------------------
bad_worker() { # NAME ADDR WHAT PATTERN ARGS...
    local name=$1 addr=$2 what=$3 pattern=$4
    shift 4
    peer "$name" worker --fqdn-leader 127.0.0.1 --ext-priv-port "$p1" --listen "$addr" "$@"
    wait_for_log "$name" 'event=sync-requested' 300
    for _ in $(seq 1 300); do
        grep -q 'event=sync-post-received' "$work/$name.log" && fail "$what: the leader sent keys"
        grep -qE "event=sync_worker_failed worker=$addr:$p1 .*$pattern" "$work/leader.log" && break
        sleep 0.05
    done
    grep -qE "event=sync_worker_failed worker=$addr:$p1 .*$pattern" "$work/leader.log" ||
        fail "$what: the leader did not log its refusal (/$pattern/)"
    grep -q 'event=sync-post-received' "$work/$name.log" && fail "$what: the leader sent keys"
    stop "$name" || true
}
bad_worker badnonce 127.0.0.3 "a document for another nonce" 'nonce' --nsm "unix:$work/simp.sock" --root "$root" --tamper worker-nonce
bad_worker badpcr 127.0.0.4 "another PCR0" 'PCR0' --nsm "unix:$work/simx.sock" --root "$root"
bad_worker badroot 127.0.0.5 "another root" 'trusted root' --nsm "unix:$work/simf.sock" --root "$work/foreign-state/root.pem"
# a document any enclave of the image signs for anyone: /enclave/attestation with the leader's nonce
bad_worker clientdoc 127.0.0.6 "a client attestation document" 'public key' --nsm "unix:$work/simp.sock" --root "$root" \
    --tamper attestation-doc --attestation-from "127.0.0.1:$(public_of leader)"
pass "the cloister leader sends no keys to a worker whose document has another nonce, another PCR0 or another root, or is a client attestation document"

# ---- 5. status codes peers and apps act on (docs/key-sync.md sections 6, 7) ---------------
n=$(head -c 20 /dev/urandom | od -An -tx1 | tr -d ' \n')
for who in "127.0.0.1:$p1" "127.0.0.2:$p2"; do
    [ "$(http_code "https://$who/enclave/leader?nonce=$n")" = 410 ] || fail "$who: /enclave/leader after the election is not 410"
done
[ "$(http_code "http://127.0.0.1:$(internal_of leader)/enclave/state")" = 410 ] || fail "GET /enclave/state on the leader is not 410"
[ "$(http_code -X PUT --data-binary x "http://127.0.0.1:$(internal_of cworker)/enclave/state")" = 410 ] || fail "PUT /enclave/state on a worker is not 410"
[ "$(http_code "https://127.0.0.2:$p2/enclave/sync?nonce=${n:0:38}")" = 400 ] || fail "a short sync nonce on a worker is not 400"
[ "$(http_code -X POST --data-binary '{"hashed_keys":"","worker_hostname":"'"$(printf 'a%.0s' $(seq 500))"'"}' "https://127.0.0.1:$p1/enclave/heartbeat")" != 200 ] ||
    fail "a heartbeat over nitriding's 427 bytes was accepted"
pass "410 from /enclave/leader after the election and /enclave/state in the wrong role, 400 for a bad nonce, oversized heartbeat refused"

# ---- clean exits (under ASan+UBSan also: no leak, no error) -------------------------------
for name in cworker leader; do
    status=0
    stop "$name" || status=$?
    [ "$status" = 0 ] || fail "$name exited with status $status on SIGTERM"
done
pass "both cloister enclaves exit cleanly on SIGTERM"
