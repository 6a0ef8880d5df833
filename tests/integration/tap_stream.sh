#!/usr/bin/env bash
# cloister tap's stream to the parent: the parent restarted while the
# enclave runs (the relay reconnects; tap0 stays; a new connection works),
# and a parent that sends malformed frames (a length below an Ethernet
# header, one above the link's maximum, random bytes, an HTTP reply instead
# of frames): each closes the stream cleanly, is counted, and the relay
# reconnects to the next, honest parent.  No egress policy here.
set -euo pipefail
source "$(dirname "$0")/common.bash"
source "$(dirname "$0")/tap_common.bash"

make_namespaces
start_internet
start_peer peer1
start_tap
wait_for_log tap 'event=tap_connected'
grep -q 'event=egress_policy policy="none' "$work/tap.log" || fail "no policy: not said at start"
body=$(enc_curl http://203.0.113.10/) || fail "curl through tap0 failed"
[ "$body" = "hello from the internet" ] || fail "answered '$body'"
pass "through tap0 to the internet namespace (no policy: every frame passes)"

# ---- the parent goes away and comes back
stop peer1 || true
wait_for_log tap 'event=tap_disconnected'
[ "$(metric cloister_tap_connected)" = 0 ] || fail "still connected after the parent died"
in_enc ip link show tap0 >/dev/null || fail "tap0 went away with the parent"
start_peer peer2
wait_metric cloister_tap_connects_total 2
body=$(enc_curl http://203.0.113.10/) || fail "curl after the parent's restart failed"
[ "$body" = "hello from the internet" ] || fail "after restart: '$body'"
pass "parent restarted: the relay reconnected, tap0 stayed, a new connection works"

# ---- malformed streams from the parent
connects=2
errors=0
for kind in short oversized garbage http; do
    stop peer2 2>/dev/null || true
    start_peer "evil_$kind" --evil "$kind"
    connects=$((connects + 1))
    errors=$((errors + 1))
    wait_metric cloister_tap_stream_errors_total "$errors"
    wait_for_log "evil_$kind" 'evil: peer closed'
    case $kind in
    short) want='tap frame length 5 is shorter than an Ethernet header' ;;
    oversized) want='tap frame length 9000 exceeds this link' ;;
    garbage) want='tap frame length 65279 exceeds this link' ;;
    http) want='answered POST /connect with an HTTP response' ;;
    esac
    grep -q "event=tap_disconnected .*$want" "$work/tap.log" || fail "$kind: no clear disconnect reason ($want)"
    kill -0 "${pids[tap]}" || fail "cloister tap died on a $kind stream"
    stop "evil_$kind" || true
    start_peer peer2
    connects=$((connects + 1))
    wait_metric cloister_tap_connects_total "$connects"
    enc_curl -o /dev/null http://203.0.113.10/ || fail "after a $kind stream: curl failed"
    pass "$kind stream from the parent: closed and counted, the relay reconnected and traffic flows"
done

stop tap || fail "cloister tap did not exit 0 on SIGTERM"
if in_enc ip link show tap0 >/dev/null 2>&1; then fail "tap0 outlived cloister tap"; fi
pass "SIGTERM: exit 0, tap0 gone"
