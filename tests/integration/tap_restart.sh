#!/usr/bin/env bash
# cloister host --tap across restarts and against a bad stream
# (namespaces: tap/setup.bash):
#   - the parent restarted while the enclave runs: the enclave's relay
#     reconnects and new connections work again
#   - a crash (SIGKILL) leaves the nftables table behind; the next start
#     replaces it, and a clean stop removes table and device
#   - malformed streams (a short frame length, one beyond the MTU, a
#     garbage handshake) are closed, the host
#     keeps running, and the enclave's relay is served again
set -euo pipefail
source "$(dirname "$0")/common.bash"
source "$(dirname "$0")/tap/setup.bash"

make_namespaces
start_internet_dns
web=$(free_port)
start_web web "$web"
start_host host
start_peer
wait_peer_connections 1
curl_e "http://web.test:$web/hello.txt" >/dev/null || fail "the first curl through tap0 failed"

# ---- a restart of the parent ------------------------------------------------------------------
stop host || fail "cloister host did not stop cleanly"
start_host host2
wait_peer_connections 2
curl_e "http://web.test:$web/hello.txt" >/dev/null || fail "curl after the parent's restart failed"
pass "the parent restarted: the enclave's relay reconnected and connections work again"

# ---- a crash: SIGKILL leaves the table, the next start replaces it ------------------------------
kill -KILL "${pids[host2]}"
wait "${pids[host2]}" 2>/dev/null || true
unset "pids[host2]"
in_p nft list table inet cloister_tap_cloister0 >/dev/null 2>&1 ||
    fail "no leftover table after SIGKILL (the test would prove nothing)"
start_host host3
grep -q 'event=tap-ready' "$work/host3.log" || fail "the start after a crash failed"
[ "$(in_p nft list tables | grep -c cloister_tap_cloister0)" = 1 ] || fail "not exactly one table after the restart"
[ "$(in_p nft list table inet cloister_tap_cloister0 | grep -c masquerade)" = 1 ] ||
    fail "the leftover rules were kept beside the new ones: $(in_p nft list table inet cloister_tap_cloister0)"
wait_peer_connections 3
curl_e "http://web.test:$web/hello.txt" >/dev/null || fail "curl after the crash and restart failed"
pass "after SIGKILL the leftover table is replaced on start, and the enclave is served again"

# ---- malformed streams ---------------------------------------------------------------------------
raw() { in_e python3 -u "$PEER" --raw "$TAPSOCK" "$1"; }
zeros() { printf '%0*d' $(($1 * 2)) 0; }
before=$(peer_connections)
raw 0500aabbccddee || fail "a frame length of 5 (shorter than an Ethernet header) did not close the stream"
raw ffff$(zeros 64) || fail "a frame length of 65535 (beyond the MTU) did not close the stream"
raw "$(printf 'GET / HTTP/1.1\r\n\r\n' | od -An -tx1 | tr -d ' \n')" || fail "a garbage handshake did not close the stream"
grep -q 'event=tap-disconnected .*reason=malformed .*tap frame length 5 is shorter' "$work/host3.log" || fail "no malformed-frame log for the short frame"
grep -q 'event=tap-disconnected .*reason=malformed .*tap frame length 65535 exceeds' "$work/host3.log" || fail "no malformed-frame log for the long frame"
grep -q 'event=tap-handshake-refused' "$work/host3.log" || fail "no log for the garbage handshake"
kill -0 "${pids[host3]}" || fail "cloister host died on a malformed stream"
wait_peer_connections $((before + 1))
curl_e "http://web.test:$web/hello.txt" >/dev/null || fail "curl after the malformed streams failed"
pass "malformed streams (short, oversized, garbage handshake) are closed; the host serves the enclave again"

stop host3 || fail "cloister host did not stop cleanly: $(tail -5 "$work/host3.log")"
in_p nft list table inet cloister_tap_cloister0 >/dev/null 2>&1 && fail "the table outlived the host"
in_p ip link show cloister0 >/dev/null 2>&1 && fail "the TAP device outlived the host"
pass "a clean stop removes the table and the device"
