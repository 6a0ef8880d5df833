#!/usr/bin/env bash
# Key sync with a leader and two workers, each on its own nsm-sim instance
# (one root, another PCR4 each, as on separate parent instances): the
# workers take the leader's key after each side verified the other's
# document, all three present the same certificate and `cloister verify`
# proves it on each; a connection opened before the switch keeps its old
# certificate and /enclave/attestation on it binds that one, while new
# connections get (and bind) the leader's.
set -euo pipefail
source "$(dirname "$0")/common.bash"
source "$(dirname "$0")/sync/sync_common.bash"

start_sims 1 2 3
sync_enclave leader sim1 self
wait_for_log leader 'event=sync_role role=leader'
lsync=$(port_of leader sync)
leader_sha=$(tls_sha_of_log leader)

sync_enclave worker1 sim2 "$lsync"
sync_enclave worker2 sim3 "$lsync"
for w in worker1 worker2; do
    wait_for_log "$w" 'event=sync_role role=worker'
    wait_for_log "$w" 'event=sync_keys_installed'
    grep -q 'event=sync_leader_verified .*by=equal-pcrs' "$work/$w.log" || fail "$w did not log verifying the leader"
    wport=$(port_of "$w" sync)
    wait_for_log leader "event=sync_worker_verified worker=127.0.0.1:$wport .*by=equal-pcrs"
    wait_for_log leader "event=sync_worker_synced worker=127.0.0.1:$wport"
done
pass "election: one leader, two workers; the leader verified each worker's document and each worker the leader's"

for name in leader worker1 worker2; do
    served=$(served_sha "$name")
    [ "$served" = "$leader_sha" ] || fail "$name presents $served, not the leader's $leader_sha"
    proven=$(proven_sha "$name")
    [ "$proven" = "$leader_sha" ] || fail "cloister verify proved $proven on $name, not $leader_sha"
done
pass "leader and both workers present the leader's certificate (s_client) and cloister verify proves it on each"

# The modules differ (separate simulator instances), PCR4 differs, PCR0 is the same.
python3 - "$work"/verify-leader.json "$work"/verify-worker1.json <<'PY' || fail "the replicas' documents do not differ as expected"
import json, sys
a, b = (json.load(open(p)) for p in sys.argv[1:])
assert a["module_id"] != b["module_id"], "same module"
assert a["pcrs"]["4"] != b["pcrs"]["4"], "same PCR4"
assert a["pcrs"]["0"] == b["pcrs"]["0"], "PCR0 differs"
PY
pass "the replicas are distinct modules with their own PCR4 and one PCR0"

# ---- a connection from before the switch keeps its certificate ------------------------
# worker3 starts while the leader is unreachable (it dials a port nobody
# listens on until a relay starts there), so it serves its own key;
# a keep-alive connection opened then must keep that key after the sync.
gate=$(free_port)
sync_enclave worker3 sim2 "$gate" -sync-advertise "127.0.0.1:$(free_port)"
w3=$(port_of worker3 public)
own_sha=$(tls_sha_of_log worker3)
[ "$own_sha" != "$leader_sha" ] || fail "worker3 started with the leader's certificate"
python3 - "$w3" "$work/w3" <<'PY' &
import socket, ssl, sys, time, os, base64, hashlib
port, base = int(sys.argv[1]), sys.argv[2]
ctx = ssl.create_default_context()
ctx.check_hostname = False
ctx.verify_mode = ssl.CERT_NONE
s = ctx.wrap_socket(socket.create_connection(("127.0.0.1", port)), server_hostname="localhost")
open(base + ".before", "w").write(hashlib.sha256(s.getpeercert(True)).hexdigest())
open(base + ".open", "w").write("1")
while not os.path.exists(base + ".go"):
    time.sleep(0.05)
nonce = os.urandom(20).hex()
s.sendall(f"GET /enclave/attestation?nonce={nonce} HTTP/1.1\r\nHost: localhost\r\n\r\n".encode())
data = b""
while b"\r\n\r\n" not in data:
    data += s.recv(65536)
head, body = data.split(b"\r\n\r\n", 1)
length = int([l.split(b":")[1] for l in head.split(b"\r\n") if l.lower().startswith(b"content-length")][0])
while len(body) < length:
    body += s.recv(65536)
open(base + ".doc", "wb").write(base64.b64decode(body.strip()))
open(base + ".after", "w").write(hashlib.sha256(s.getpeercert(True)).hexdigest())
PY
client=$!
for _ in $(seq 1 200); do [ -f "$work/w3.open" ] && break; sleep 0.05; done
[ -f "$work/w3.open" ] || fail "the early client did not connect"
# now let worker3 and the leader reach each other: relays on the port worker3
# dials for the leader and on the one it advertised for its sync listener
adv=$(sed -n 's/.*event=sync_started .*advertise=127.0.0.1:\([0-9]*\).*/\1/p' "$work/worker3.log")
spawn adv socat "tcp-listen:$adv,bind=127.0.0.1,reuseaddr,fork" "tcp:127.0.0.1:$(port_of worker3 sync)"
spawn gate socat "tcp-listen:$gate,bind=127.0.0.1,reuseaddr,fork" "tcp:127.0.0.1:$lsync"
wait_for_log worker3 'event=sync_keys_installed' 400
touch "$work/w3.go"
wait "$client" || fail "the early client failed"
[ "$(cat "$work/w3.before")" = "$own_sha" ] || fail "the early connection did not see worker3's own certificate"
[ "$(cat "$work/w3.after")" = "$own_sha" ] || fail "the early connection's certificate changed"
"$CLOISTER" attest show "$work/w3.doc" >"$work/w3.json"
bound=$(python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["user_data"][4:68])' "$work/w3.json")
[ "$bound" = "$own_sha" ] || fail "attestation on the early connection binds $bound, not its own certificate $own_sha"
[ "$(served_sha worker3)" = "$leader_sha" ] || fail "a new connection to worker3 does not get the leader's certificate"
[ "$(proven_sha worker3)" = "$leader_sha" ] || fail "cloister verify on a new connection did not prove the leader's certificate"
pass "after the sync: an early connection keeps worker3's own certificate and its attestation binds that one; new connections get and bind the leader's"
