#!/usr/bin/env bash
# HTTP/2 cannot multiply what one client costs (issue 11, item 3): 10
# connections of 128 POST streams each, to an app that accepts connections
# and never reads, keep the daemon's descriptors and memory within what its
# limits allow (-h2-max-streams per connection, -max-app-connections in
# all, -max-buffered-body of request bodies waiting), and another client is
# served meanwhile.  Before the limits, the same load held one app
# connection per stream and 4 MiB of body per connection (1302 descriptors
# and 66 MB for 10 connections, 124 MB for 20).
set -euo pipefail
source "$(dirname "$0")/common.bash"

for tool in curl h2load; do
    command -v "$tool" >/dev/null || { echo "SKIP: $tool missing (Debian packages curl, nghttp2-client)"; exit 77; }
done

CONNS=10
STREAMS=128
head -c $((1024 * 1024)) /dev/zero >"$work/body"

start_sim
app_port=$(free_port)
spawn app python3 "$SOURCE_DIR/tests/integration/app/raw_app.py" "$app_port" noread
wait_for_log app 'raw_app: listening'

fds() { ls "/proc/$1/fd" | wc -l; }
rss_kb() { awk '/^VmRSS:/ { print $2 }' "/proc/$1/status"; }

# load NAME LIMIT_FLAGS...: starts an enclave with those flags, measures it
# idle, puts the load on it, and sets max_fds, max_rss_kb, base_fds,
# base_rss_kb and local_ok (a local route answered during the load).
load() {
    local name=$1
    shift
    local pub
    pub=$(free_port)
    start_enclave "$name" --listen "tcp:127.0.0.1:$pub" -intport "$(free_port)" \
        -appwebsrv "http://127.0.0.1:$app_port" --app-timeout 30 --threads 2 "$@"
    wait_for_log "$name" 'event=listening listener=public'
    local pid=${pids[$name]}
    curl -sSk --http2 -o /dev/null "https://127.0.0.1:$pub/enclave" || fail "$name: no answer before the load"
    base_fds=$(fds "$pid")
    base_rss_kb=$(rss_kb "$pid")
    spawn "$name-load" timeout -s INT 20 h2load -n $((CONNS * STREAMS)) -c $CONNS -m $STREAMS -t 2 \
        -d "$work/body" "https://127.0.0.1:$pub/upload"
    max_fds=0
    max_rss_kb=0
    local_ok=0
    for _ in $(seq 1 16); do
        sleep 0.5
        local f r
        f=$(fds "$pid")
        r=$(rss_kb "$pid")
        ((f > max_fds)) && max_fds=$f
        ((r > max_rss_kb)) && max_rss_kb=$r
    done
    # the load is in full swing (every stream open, every window spent): another client still gets through
    code=$(curl -sSk --http2 --max-time 10 -o /dev/null -w '%{http_code}' "https://127.0.0.1:$pub/enclave" || true)
    [ "$code" = 200 ] && local_ok=1
    code=$(curl -sSk --http1.1 --max-time 10 -o /dev/null -w '%{http_code}' "https://127.0.0.1:$pub/enclave" || true)
    [ "$code" = 200 ] || local_ok=0
    for _ in 1 2 3 4; do
        sleep 0.5
        local f r
        f=$(fds "$pid")
        r=$(rss_kb "$pid")
        ((f > max_fds)) && max_fds=$f
        ((r > max_rss_kb)) && max_rss_kb=$r
    done
    kill -INT "${pids[$name-load]}" 2>/dev/null || true
    wait "${pids[$name-load]}" 2>/dev/null || true
    unset "pids[$name-load]"
    echo "$name: descriptors $base_fds idle, at most $max_fds under load;" \
        "RSS $((base_rss_kb / 1024)) MB idle, at most $((max_rss_kb / 1024)) MB under load"
    stop "$name" || true
}

# ---- the defaults --------------------------------------------------------------
# 100 streams per connection, 512 app connections in all (the requests
# beyond wait for one); request bodies held: a 1 MiB connection window each.
load defaults
bound_fds=$((base_fds + CONNS + 512 + 16))
((max_fds <= bound_fds)) || fail "defaults: $max_fds descriptors under load, more than the $bound_fds the limits allow"
# bodies (10 x 1 MiB, in queues that may double) and 512 exchanges' buffers (~48 KiB), plus 24 MB of slack
bound_rss_kb=$((base_rss_kb + CONNS * 2048 + 512 * 48 + 24 * 1024))
((max_rss_kb <= bound_rss_kb)) || [ -n "${CLOISTER_TEST_SANITIZED:-}" ] || # ASan's own memory
    fail "defaults: RSS $((max_rss_kb / 1024)) MB under load, more than the $((bound_rss_kb / 1024)) MB the limits allow"
((local_ok)) || fail "defaults: another client was not served during the load"
pass "defaults: $CONNS h2 connections x $STREAMS POST streams to an app that never reads: $max_fds descriptors" \
    "(bound $bound_fds), $((max_rss_kb / 1024)) MB RSS (bound $((bound_rss_kb / 1024)) MB); another client served"

# ---- tighter limits ------------------------------------------------------------------
load tight --max-app-connections 8 --h2-max-streams 4 --max-buffered-body 262144
bound_fds=$((base_fds + CONNS + 8 + 16))
((max_fds <= bound_fds)) || fail "tight: $max_fds descriptors under load, more than the $bound_fds the limits allow"
bound_rss_kb=$((base_rss_kb + 512 + CONNS * 4 * 48 + 24 * 1024))
((max_rss_kb <= bound_rss_kb)) || [ -n "${CLOISTER_TEST_SANITIZED:-}" ] ||
    fail "tight: RSS $((max_rss_kb / 1024)) MB under load, more than the $((bound_rss_kb / 1024)) MB the limits allow"
((local_ok)) || fail "tight: another client was not served during the load"
pass "-max-app-connections 8 -h2-max-streams 4 -max-buffered-body 256K: $max_fds descriptors (bound $bound_fds)," \
    "$((max_rss_kb / 1024)) MB RSS (bound $((bound_rss_kb / 1024)) MB); another client served"
