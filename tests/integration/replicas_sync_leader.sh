#!/usr/bin/env bash
# Key sync behind HAProxy when the leader dies: three replicas, replica 1
# leads.  Killed outright (SIGKILL, host and enclave), the workers keep
# serving the same identity (no failed request once HAProxy's check took it
# out, every connection proven with the same certificate).  Started again
# (kill -USR1 on cloister dev), replica 1 leads again, with a key of its own:
# keys live only in enclaves, and nitriding's election names one address, so
# no worker can take over the lead.  A replica started after that (replica 3,
# stopped and started again) gets the restarted leader's keys, and the
# surviving worker re-syncs to them at its next heartbeat: one certificate
# again.
set -euo pipefail
source "$(dirname "$0")/common.bash"
source "$(dirname "$0")/replicas.bash"
need_fleet_tools
start_fleet 3 --identity sync
dev_pid=${pids[dev]}

verify_cert() { # through the balancer: "CERT MODULE" of one proven connection
    "$CLOISTER" verify "https://127.0.0.1:$port" --root "$run/state/root.pem" >"$work/verify.out" 2>&1 ||
        fail "verify through HAProxy: $(cat "$work/verify.out")"
    echo "$(awk '$1 == "certificate" { print $2 }' "$work/verify.out") $(awk '$1 == "module" { print $2 }' "$work/verify.out")"
}
read -r cert_a _ < <(verify_cert)
grep -q 'event=sync_role role=leader' "$run/r1/host.log" || fail "replica 1 does not lead"

# ---- the leader killed -------------------------------------------------------------------------------
kill_replica 1
wait_for_log dev "replica 1's host exited" 400
for _ in $(seq 1 100); do grep -q 'replicas/r1 is DOWN' "$run/haproxy.log" && break; sleep 0.1; done
grep -q 'replicas/r1 is DOWN' "$run/haproxy.log" || fail "HAProxy did not take the dead leader out"
wrk -t2 -c8 -d3s --timeout 5s "https://127.0.0.1:$port/api/hello" >"$work/wrk.out" 2>&1 || fail "wrk: $(cat "$work/wrk.out")"
[ "$(wrk_failures "$work/wrk.out")" = 0 ] || fail "requests failed with the leader gone: $(cat "$work/wrk.out")"
for _ in 1 2 3 4; do
    read -r c m < <(verify_cert)
    [ "$c" = "$cert_a" ] || fail "after the leader died, $m presents $c, not $cert_a"
done
pass "leader killed: the workers keep serving the same certificate, proven; $(wrk_requests "$work/wrk.out") requests, 0 failed"

# ---- the leader started again ---------------------------------------------------------------------------
kill -USR1 "$dev_pid"
for _ in $(seq 1 600); do
    [ "$(grep -c 'event=sync_role role=leader' "$run/r1/host.log")" -ge 2 ] && break
    sleep 0.1
done
[ "$(grep -c 'event=sync_role role=leader' "$run/r1/host.log")" -ge 2 ] || fail "replica 1 did not lead again"
cert_b=$(sed -n 's/.*event=tls_identity origin=generated .*certificate_sha256=\([0-9a-f]*\).*/\1/p' "$run/r1/host.log" | tail -1)
[ -n "$cert_b" ] || fail "no certificate logged by the restarted leader"
[ "$cert_b" != "$cert_a" ] || fail "the restarted leader has the old key: keys were expected to die with the enclaves"
pass "replica 1 started again leads again, with a new key (keys live only in enclaves; the election names one address)"

# ---- a replica started after that ----------------------------------------------------------------------
kill -TERM "$(host_pid 3)"
wait_for_log dev "replica 3's host exited" 600
before=$(grep -c 'event=sync_keys_installed' "$run/r3/host.log")
kill -USR1 "$dev_pid"
for _ in $(seq 1 600); do
    [ "$(grep -c 'event=sync_keys_installed' "$run/r3/host.log")" -gt "$before" ] && break
    sleep 0.1
done
[ "$(grep -c 'event=sync_keys_installed' "$run/r3/host.log")" -gt "$before" ] || fail "replica 3 did not get keys again"
grep 'event=sync_leader_verified' "$run/r3/host.log" | tail -1 | has 'by=equal-pcrs' ||
    fail "replica 3 did not verify the restarted leader"
# the surviving worker re-syncs at its next heartbeat (2 s in dev): then one certificate everywhere
ok=0
for _ in $(seq 1 40); do
    declare -A seen=()
    all_b=1
    for _ in 1 2 3 4 5 6; do
        read -r c m < <(verify_cert)
        seen[$m]=1
        [ "$c" = "$cert_b" ] || all_b=0
    done
    if [ "$all_b" = 1 ] && [ "${#seen[@]}" = 3 ]; then ok=1; break; fi
    unset seen
    sleep 0.5
done
[ "$ok" = 1 ] || fail "the fleet did not converge on the restarted leader's certificate $cert_b"
pass "replica 3 started later took the restarted leader's keys (verified), replica 2 re-synced: one certificate on all 3"
