#!/usr/bin/env bash
# cloister host --tap with an enclave side that is not cloister's: the
# independent peer tests/integration/tap/peer.py, written from the
# protocol's description (docs/tap.md: Go's POST /connect head with its
# User-Agent and empty Host, 16-bit little-endian lengths).  curl in the
# enclave namespace reaches a server in the internet namespace by name, and
# again after the parent restarts (the peer reconnects).
set -euo pipefail
source "$(dirname "$0")/common.bash"
TAP_PEER=python
source "$(dirname "$0")/tap/setup.bash"

make_namespaces
start_internet_dns
web=$(free_port)
start_web web "$web"
start_host host
start_peer
wait_peer_connections 1
body=$(curl_e "http://web.test:$web/hello.txt") || fail "curl through tap0 with the independent peer failed"
[ "$body" = "hello from the internet" ] || fail "unexpected body: $body"
grep -q 'event=tap-connected' "$work/host.log" || fail "the host did not log the peer's stream"
pass "an independent gvproxy-protocol peer: curl by name from the enclave namespace through cloister host --tap"
stop host || fail "cloister host did not stop cleanly"
start_host host2
wait_peer_connections 2
curl_e "http://web.test:$web/hello.txt" >/dev/null || fail "curl after the parent's restart failed"
pass "the independent peer reconnects to a restarted parent and connections work again"
