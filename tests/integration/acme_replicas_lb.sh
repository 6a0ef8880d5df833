#!/usr/bin/env bash
# Three replicas with key sync and -acme behind one balancer: only the leader
# orders, but the CA's validation may reach any replica.  Pebble is pointed
# at a WORKER: for tls-alpn-01 its tlsPort is worker1's public listener,
# then for http-01 its httpPort is worker2's challenge listener; and for
# tls-alpn-01 once more through HAProxy, which sends the validation round
# robin over the three replicas, workers first.  Each order succeeds only if
# the leader pushed the pending challenge to the workers (over key sync,
# from its verified document) before telling the CA to look.
#
# The attack: a leader whose image differs (another PCR0, the workers do
# not allow it) orders with Pebble validating on a worker: the worker
# refuses its sync, so it holds no answer, and the validation fails.
set -euo pipefail
source "$(dirname "$0")/common.bash"
source "$(dirname "$0")/sync/sync_common.bash"
source "$(dirname "$0")/acme/pebble.bash"
pebble_available

# ACME_LB_ONLY=alpn|http|lb|evil runs one part (to show each fails on an old build)
want() { [ -z "${ACME_LB_ONLY:-}" ] || [ "$ACME_LB_ONLY" = "$1" ]; }

start_sims 1 2 3
pebble_tls

# run_fleet TAG TYPE: a leader and two workers ordering with TYPE; each gets
# its own http-01 listener ($work/TAG-NAME.http)
run_fleet() {
    local tag=$1 type=$2 ca_port=$3 leader_sim=${4:-sim1} leader_extra=${5:-} name sim leader_sync extra
    for name in leader worker1 worker2; do
        sim=$leader_sim
        [ "$name" = worker1 ] && sim=sim2
        [ "$name" = worker2 ] && sim=sim3
        free_port >"$work/$tag-$name.http"
        extra=()
        if [ "$name" = leader ]; then
            leader_sync=self
            [ -n "$leader_extra" ] && extra=(--sync-allow-pcr0 "$leader_extra")
        else
            leader_sync=$(port_of "$tag-leader" sync)
        fi
        sync_enclave "$tag-$name" "$sim" "$leader_sync" "${extra[@]}" -fqdn "$ACME_FQDN" -acme \
            --acme-directory "https://localhost:$ca_port/dir" --acme-ca-file "$work/pebble-ca.pem" \
            --acme-challenge "$type" --acme-http-listen "tcp:127.0.0.1:$(cat "$work/$tag-$name.http")" \
            --acme-backoff 300ms --acme-max-backoff 1s --acme-poll-interval 200ms
        if [ "$name" = leader ]; then
            wait_for_log "$tag-leader" 'event=sync_role role=leader' 400
        fi
    done
    for name in worker1 worker2; do
        wait_for_log "$tag-$name" 'event=sync_role role=worker' 400
        # registered with the leader (its keys arrived), unless the attack
        [ "$leader_sim" = sim1 ] && wait_for_log "$tag-$name" 'event=sync_keys_installed' 400
    done
    return 0
}

# expect_issued TAG: the leader got a certificate, the workers never ordered
expect_issued() {
    local tag=$1
    wait_for_log "$tag-leader" 'event=acme_certificate origin=acme|event=acme_renewal_failed.*challenge for' 600
    grep -q 'event=acme_certificate origin=acme' "$work/$tag-leader.log" ||
        fail "$tag: validation on a worker failed: $(grep -m1 "acme_renewal_failed.*challenge for" "$work/$tag-leader.log")"
    grep -q 'event=acme_order' "$work/$tag-worker1.log" "$work/$tag-worker2.log" && fail "$tag: a worker ordered"
    return 0
}

stop_fleet() {
    local n
    for n in leader worker1 worker2; do stop "$1-$n" || true; done
    stop pebble || true
    stop challtestsrv || true
}

# ---- tls-alpn-01, Pebble validating on worker1 ------------------------------
if want alpn; then
ca_port=$(free_port)
run_fleet alpn tls-alpn-01 "$ca_port"
PEBBLE_PORT=$ca_port pebble_prepare "$(port_of alpn-worker1 public)" "$(free_port)"
pebble_run
expect_issued alpn
grep -q 'event=acme_challenge_synced type=tls-alpn-01' "$work/alpn-worker1.log" ||
    fail "worker1 logged no pushed challenge"
grep -q 'event=acme_challenge_pushed type=tls-alpn-01 workers=2 acked=2' "$work/alpn-leader.log" ||
    fail "the leader did not push to both workers: $(grep acme_challenge_push "$work/alpn-leader.log")"
wait_for_log alpn-worker1 'event=acme_challenge_synced state="none pending"' 200
push_ms=$(python3 - "$work/alpn-leader.log" <<'PY'
import re, sys, datetime
t = {}
for line in open(sys.argv[1]):
    m = re.match(r"ts=(\S+)Z .*event=(acme_challenge|acme_challenge_pushed) ", line)
    if m and m.group(2) not in t:
        t[m.group(2)] = datetime.datetime.fromisoformat(m.group(1))
print(int((t["acme_challenge_pushed"] - t["acme_challenge"]).total_seconds() * 1000))
PY
)
pass "tls-alpn-01 validated on a worker: the leader pushed the challenge to both workers (acked, in $push_ms ms) and withdrew it"
stop_fleet alpn
fi

# ---- http-01, Pebble validating on worker2 -----------------------------------
if want http; then
ca_port=$(free_port)
run_fleet http http-01 "$ca_port"
PEBBLE_PORT=$ca_port pebble_prepare "$(free_port)" "$(cat "$work/http-worker2.http")"
pebble_run
expect_issued http
grep -q 'event=acme_challenge_synced type=http-01' "$work/http-worker2.log" ||
    fail "worker2 logged no pushed challenge"
token=$(sed -n 's/.*event=acme_challenge_synced type=http-01 .*token=\([A-Za-z0-9_-]*\).*/\1/p' \
    "$work/http-worker2.log" | head -n 1)
wait_for_log http-worker2 'event=acme_challenge_synced state="none pending"' 200
code=$(curl -s -o /dev/null -w '%{http_code}' \
    "http://127.0.0.1:$(cat "$work/http-worker2.http")/.well-known/acme-challenge/$token")
[ "$code" = 404 ] || fail "the withdrawn token still answers $code on worker2"
pass "http-01 validated on a worker's challenge listener; the token is gone there once the leader withdrew it"
stop_fleet http
fi

# ---- tls-alpn-01 through HAProxy, round robin over the three ------------------
if want lb && command -v haproxy >/dev/null; then
    ca_port=$(free_port)
    run_fleet lb tls-alpn-01 "$ca_port"
    lb=$(free_port)
    cat >"$work/haproxy.cfg" <<EOF
global
    maxconn 64
defaults
    mode tcp
    timeout connect 2s
    timeout client 10s
    timeout server 10s
frontend public
    bind 127.0.0.1:$lb
    default_backend replicas
backend replicas
    balance roundrobin
    server worker1 127.0.0.1:$(port_of lb-worker1 public)
    server worker2 127.0.0.1:$(port_of lb-worker2 public)
    server leader 127.0.0.1:$(port_of lb-leader public)
EOF
    spawn haproxy haproxy -db -f "$work/haproxy.cfg"
    sleep 0.3
    kill -0 "${pids[haproxy]}" 2>/dev/null || fail "haproxy did not start"
    PEBBLE_PORT=$ca_port pebble_prepare "$lb" "$(free_port)"
    pebble_run
    expect_issued lb
    issued=$(sed -n 's/.*event=acme_certificate origin=acme.*certificate_sha256=\([0-9a-f]*\).*/\1/p' "$work/lb-leader.log")
    for w in lb-worker1 lb-worker2; do # the issued certificate reaches them through key sync
        wait_for_log "$w" "event=tls_identity origin=key-sync .*certificate_sha256=$issued" 400
    done
    pebble_root "$work/pebble-root.pem"
    for _ in 1 2 3; do
        curl -sf --cacert "$work/pebble-root.pem" --resolve "$ACME_FQDN:$lb:127.0.0.1" \
            "https://$ACME_FQDN:$lb/enclave" -o /dev/null || fail "curl through the balancer refused the chain"
    done
    pass "tls-alpn-01 through HAProxy round robin validated; curl verifies $issued through the balancer"
    stop haproxy || true
    stop_fleet lb
fi

# ---- the attack: a leader of another image cannot hand a worker answers -----
if want evil; then
# It allows the workers' PCR0 (so it sends them its keys and challenges);
# the workers do not allow its PCR0.
pcr0_a=$("$CLOISTER" nsm --nsm "unix:$work/sim1.sock" pcr 0 | cut -d' ' -f1)
pcr0_b=$(printf 'b0%.0s' $(seq 48))
start_sim_pcr0 simB "$pcr0_b"
ca_port=$(free_port)
run_fleet evil tls-alpn-01 "$ca_port" simB "$pcr0_a"
# the leader has verified both workers and offered them its keys
for _ in $(seq 1 400); do
    [ "$(grep -c 'event=sync_worker_verified' "$work/evil-leader.log")" -ge 2 ] && break
    sleep 0.05
done
PEBBLE_PORT=$ca_port pebble_prepare "$(port_of evil-worker1 public)" "$(free_port)"
pebble_run
wait_for_log evil-leader 'event=acme_certificate origin=acme|event=acme_renewal_failed.*challenge for' 600
grep -q 'event=acme_certificate origin=acme' "$work/evil-leader.log" &&
    fail "Pebble validated on a worker whose leader it does not trust"
grep -q 'event=acme_challenge_synced' "$work/evil-worker1.log" "$work/evil-worker2.log" &&
    fail "a worker installed a challenge from a leader of another image"
pcr0_short=${pcr0_b:0:32}
grep -q "event=sync_refused reason=\"the peer's PCR0 $pcr0_short" "$work/evil-worker1.log" ||
    fail "worker1 did not refuse the leader of another image"
pass "a leader with another PCR0 cannot install challenge answers on a worker (its sync is refused; validation fails)"
stop_fleet evil
fi

# ---- the attack: a plain HTTPS server as leader pushes an http-01 answer ------
if want fake && /usr/bin/python3 -c 'import nacl.public' 2>/dev/null; then
    fake_leader_material
    fake=$(free_port)
    pub=$(free_port)
    http=$(free_port)
    token=evilTOKEN_0123456789
    keyauth="$token.0123456789012345678901234567890123456789abc"
    spawn fake env CLOISTER="$CLOISTER" /usr/bin/python3 "$SOURCE_DIR/tests/integration/sync/fake_leader.py" \
        --listen "$fake" --cert "$work/fake.crt" --key "$work/fake.key" --evil-cert "$work/evil.crt" \
        --evil-key "$work/evil.key" --evil-nsm "unix:$work/evil.sock" --genuine "https://127.0.0.1:$pub" \
        --attacks foreign-root,genuine-doc,garbage,unasked \
        --acme-challenge "http-01 $ACME_FQDN $token $keyauth $(($(date +%s) + 600))"
    wait_for_log fake 'fake-leader: listening'
    int=$(free_port); sp=$(free_port)
    echo "$pub $int $sp" >"$work/fworker.ports"
    spawn fworker "$CLOISTER" enclave -fqdn "$ACME_FQDN" --nsm "unix:$work/sim2.sock" --listen "tcp:127.0.0.1:$pub" \
        -intport "$int" -ext-priv-listen "tcp:127.0.0.1:$sp" -fqdn-leader "127.0.0.1:$fake" --sync-root "$root" \
        -sync-register-interval 200ms -acme --acme-directory "https://localhost:$(free_port)/dir" \
        --acme-challenge http-01 --acme-http-listen "tcp:127.0.0.1:$http"
    wait_for_log fworker 'event=sync_role role=worker'
    wait_for_log fake 'fake-leader: done' 400
    [ "$(grep -c 'event=sync_refused' "$work/fworker.log")" -ge 4 ] || fail "the worker did not refuse each fake sync"
    grep -q 'event=acme_challenge_synced' "$work/fworker.log" && fail "the worker installed the fake leader's challenge"
    code=$(curl -s -o /dev/null -w '%{http_code}' "http://127.0.0.1:$http/.well-known/acme-challenge/$token")
    [ "$code" = 404 ] || fail "the worker answers the fake leader's token ($code)"
    pass "a plain HTTPS leader cannot install an http-01 answer on a worker (4 fake syncs refused; the token gets 404)"
    stop fworker || true
    stop fake || true
fi

no_sanitizer_reports
