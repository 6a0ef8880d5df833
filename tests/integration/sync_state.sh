#!/usr/bin/env bash
# /enclave/state on the internal listener: 403 without key sync, 503 while
# the election runs, 410 for the wrong role; a PUT on the leader reaches
# every worker (ETag with it), a long poll (?wait=S with If-None-Match)
# returns as soon as the state changes and 304 when it does not, a state
# over 1 MiB gets 413.
set -euo pipefail
source "$(dirname "$0")/common.bash"
source "$(dirname "$0")/sync/sync_common.bash"

start_sims 1 2
code() { curl -s -o /dev/null -w '%{http_code}' "$@"; }

plain_int=$(free_port)
start_enclave plain --nsm "unix:$work/sim1.sock" --listen "tcp:127.0.0.1:$(free_port)" -intport "$plain_int"
wait_for_log plain 'event=listening listener=public'
[ "$(code "http://127.0.0.1:$plain_int/enclave/state")" = 403 ] || fail "GET state without sync is not 403"
[ "$(code -X PUT --data x "http://127.0.0.1:$plain_int/enclave/state")" = 403 ] || fail "PUT state without sync is not 403"
stop plain || true

nobody=$(free_port)
sync_enclave lost sim1 "$nobody"
lint=$(port_of lost internal)
[ "$(code "http://127.0.0.1:$lint/enclave/state")" = 503 ] || fail "GET state during the election is not 503"
[ "$(code -X PUT --data x "http://127.0.0.1:$lint/enclave/state")" = 503 ] || fail "PUT state during the election is not 503"
stop lost || true
pass "403 without -fqdn-leader, 503 while the leader is not decided (GET and PUT)"

sync_enclave leader sim1 self
wait_for_log leader 'event=sync_role role=leader'
lsync=$(port_of leader sync)
sync_enclave worker1 sim2 "$lsync"
sync_enclave worker2 sim2 "$lsync"
wait_for_log worker1 'event=sync_keys_installed'
wait_for_log worker2 'event=sync_keys_installed'
L="http://127.0.0.1:$(port_of leader internal)/enclave/state"
W1="http://127.0.0.1:$(port_of worker1 internal)/enclave/state"
W2="http://127.0.0.1:$(port_of worker2 internal)/enclave/state"
[ "$(code "$L")" = 410 ] || fail "GET state on the leader is not 410"
[ "$(code -X PUT --data x "$W1")" = 410 ] || fail "PUT state on a worker is not 410"
[ "$(code -X POST --data x "$L")" = 405 ] || fail "POST state is not 405"
pass "410 for the wrong role (GET on the leader, PUT on a worker), 405 for another method"

# a PUT reaches every worker
head -c 4096 /dev/urandom >"$work/v1"
[ "$(code -X PUT --data-binary @"$work/v1" "$L")" = 200 ] || fail "PUT state on the leader failed"
for w in "$W1" "$W2"; do
    for _ in $(seq 1 100); do
        curl -s "$w" -o "$work/got" && cmp -s "$work/got" "$work/v1" && break
        sleep 0.05
    done
    cmp -s "$work/got" "$work/v1" || fail "$w did not receive the state"
done
etag=$(curl -s -D - -o /dev/null "$W1" | tr -d '\r' | sed -n 's/^ETag: //Ip')
[ -n "$etag" ] || fail "no ETag on GET /enclave/state"
pass "PUT on the leader reaches both workers (4 KiB of binary state, byte for byte), with an ETag"

# long poll: unchanged -> 304 after the wait
[ "$(code -H "If-None-Match: $etag" "$W1?wait=1")" = 304 ] || fail "an unchanged long poll did not end in 304"
[ "$(code -H "If-None-Match: $etag" "$W1")" = 304 ] || fail "If-None-Match without wait is not 304"
[ "$(code -H 'If-None-Match: "other"' "$W1?wait=1")" = 200 ] || fail "a stale ETag did not get the state at once"
[ "$(code "$W1?wait=x")" = 400 ] || fail "wait=x is not 400"
[ "$(code "$W1?wait=61")" = 400 ] || fail "wait=61 is not 400"
# long poll: a change ends it at once (wait=50; the test gives it far less)
curl -s -D "$work/lp.head" -o "$work/lp.body" -H "If-None-Match: $etag" "$W1?wait=50" &
poll=$!
sleep 0.5
printf 'v2' >"$work/v2"
[ "$(code -X PUT --data-binary @"$work/v2" "$L")" = 200 ] || fail "second PUT failed"
for _ in $(seq 1 200); do kill -0 "$poll" 2>/dev/null || break; sleep 0.05; done
if kill -0 "$poll" 2>/dev/null; then kill "$poll"; fail "the long poll did not return when the state changed"; fi
wait "$poll" || true
grep -q '^HTTP/1.1 200' "$work/lp.head" || fail "the long poll did not answer 200: $(cat "$work/lp.head")"
cmp -s "$work/lp.body" "$work/v2" || fail "the long poll did not return the new state"
new_etag=$(tr -d '\r' <"$work/lp.head" | sed -n 's/^ETag: //Ip')
[ -n "$new_etag" ] && [ "$new_etag" != "$etag" ] || fail "the ETag did not change with the state"
pass "long poll: 304 when unchanged after wait, 200 at once for a stale ETag, and it returns with the new state as soon as a PUT changes it; bad wait 400"

# 1 MiB is the limit
head -c $((1024 * 1024)) /dev/zero >"$work/max"
head -c $((1024 * 1024 + 1)) /dev/zero >"$work/over"
c=$(code -X PUT --data-binary @"$work/max" "$L"); [ "$c" = 200 ] || fail "a 1 MiB state was refused ($c)"
[ "$(code -X PUT --data-binary @"$work/over" "$L")" = 413 ] || fail "a state over 1 MiB is not 413"
for _ in $(seq 1 100); do
    [ "$(curl -s "$W2" | wc -c)" = $((1024 * 1024)) ] && break
    sleep 0.05
done
[ "$(curl -s "$W2" | wc -c)" = $((1024 * 1024)) ] || fail "the 1 MiB state did not reach worker2 ($(curl -s "$W2" | wc -c) bytes)"
pass "a 1 MiB state is taken and synced; 1 MiB + 1 byte gets 413"
