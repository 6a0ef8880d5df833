#!/usr/bin/env bash
# Heartbeats (intervals shortened by the test flags): a worker whose keys
# differ from the leader's is re-synced from its heartbeat -- here because
# the leader was restarted with a new key at the same address, so the
# worker ends up with the new leader's certificate -- and a worker that
# stops is pruned from the leader's set after -sync-prune-after.
set -euo pipefail
source "$(dirname "$0")/common.bash"
source "$(dirname "$0")/sync/sync_common.bash"

start_sims 1 2
lsync=$(free_port)
leader_args=(-sync-prune-after 3s)
start_leader() { # NAME: a leader on the fixed sync port $lsync
    local pub int
    pub=$(free_port); int=$(free_port)
    echo "$pub $int $lsync" >"$work/$1.ports"
    spawn "$1" "$CLOISTER" enclave -fqdn localhost --nsm "unix:$work/sim1.sock" --listen "tcp:127.0.0.1:$pub" \
        -intport "$int" -ext-priv-listen "tcp:127.0.0.1:$lsync" -fqdn-leader "127.0.0.1:$lsync" --sync-root "$root" \
        "${leader_args[@]}"
    wait_for_log "$1" 'event=sync_role role=leader'
}
start_leader leader
first_sha=$(tls_sha_of_log leader)
sync_enclave worker sim2 "$lsync" -sync-heartbeat-interval 200ms
wait_for_log worker 'event=sync_keys_installed'
wport=$(port_of worker sync)
wait_for_log leader "event=sync_worker_registered worker=127.0.0.1:$wport"
[ "$(served_sha worker)" = "$first_sha" ] || fail "the worker does not serve the first leader's certificate"
# heartbeats with matching keys keep it registered past the prune time
sleep 4
! grep -q "event=sync_worker_pruned worker=127.0.0.1:$wport" "$work/leader.log" || fail "a live worker was pruned"
pass "a worker whose heartbeats match stays registered past -sync-prune-after"

# the leader restarts: a new key; the worker's next heartbeat does not match
stop leader || true
start_leader leader2
second_sha=$(tls_sha_of_log leader2)
[ "$second_sha" != "$first_sha" ] || fail "the restarted leader has the same key"
wait_for_log leader2 "event=sync_heartbeat_mismatch worker=127.0.0.1:$wport detail=\"the worker's keys differ from ours: re-syncing\"" 400
wait_for_log leader2 "event=sync_worker_synced worker=127.0.0.1:$wport" 400
for _ in $(seq 1 100); do [ "$(tls_sha_of_log worker)" = "$second_sha" ] && break; sleep 0.05; done
[ "$(served_sha worker)" = "$second_sha" ] || fail "the worker did not take the restarted leader's certificate"
[ "$(proven_sha worker)" = "$second_sha" ] || fail "cloister verify does not prove the new certificate on the worker"
pass "a heartbeat whose hashed_keys differ (the leader restarted with a new key) re-syncs the worker"

# the worker stops: pruned
stop worker || true
wait_for_log leader2 "event=sync_worker_pruned worker=127.0.0.1:$wport workers=0" 400
pass "a worker silent for longer than -sync-prune-after is pruned"
