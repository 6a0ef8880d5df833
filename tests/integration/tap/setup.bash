# The TAP tests' picture (sourced after common.bash): three network
# namespaces made for this run only,
#
#   $ENS  the enclave: lo and tap0 (192.168.127.2/24, via .1), made by the
#         enclave-side relay (tap/peer.py, or cloister tap when given)
#   $PNS  the parent: cloister host --tap, its device and nftables table,
#         and a veth to the internet namespace (10.$net.0.1/24)
#   $INS  the "internet": 10.$net.0.2, test servers and their DNS (dnsmasq
#         answering web.test with 10.$net.0.2)
#
# Everything lives in those namespaces: deleting them at exit (also on
# failure) removes the devices and the nftables tables with them; the
# processes are stopped by PID first, and /etc/netns/$ENS (the enclave's
# resolv.conf for `ip netns exec`) is removed.

[ "$(id -u)" = 0 ] || { echo "skip: the TAP tests need root (network namespaces, TAP devices)"; exit 77; }
command -v nft >/dev/null || { echo "skip: nft is not installed (scripts/deps.sh installs nftables)"; exit 77; }
command -v dnsmasq >/dev/null || { echo "skip: dnsmasq is not installed (scripts/deps.sh installs dnsmasq-base)"; exit 77; }
[ -c /dev/net/tun ] || { echo "skip: no /dev/net/tun"; exit 77; }
ip netns add "cltap-probe-$$" 2>/dev/null || { echo "skip: cannot create network namespaces"; exit 77; }
ip netns del "cltap-probe-$$"

suffix="$$$RANDOM"
ENS="cltap-e-$suffix"
PNS="cltap-p-$suffix"
INS="cltap-i-$suffix"
net=$((RANDOM % 200 + 20))
PARENT_IP="10.$net.0.1"
NET_IP="10.$net.0.2"
TAPSOCK="$work/tap.sock"
PEER="$SOURCE_DIR/tests/integration/tap/peer.py"

cleanup_namespaces=("$ENS" "$PNS" "$INS")

in_e() { ip netns exec "$ENS" "$@"; }
in_p() { ip netns exec "$PNS" "$@"; }
in_i() { ip netns exec "$INS" "$@"; }

make_namespaces() {
    for ns in "$ENS" "$PNS" "$INS"; do
        ip netns add "$ns"
        ip -n "$ns" link set lo up
    done
    ip -n "$PNS" link add vp0 type veth peer name vi0 netns "$INS"
    ip -n "$PNS" addr add "$PARENT_IP/24" dev vp0
    ip -n "$INS" addr add "$NET_IP/24" dev vi0
    ip -n "$PNS" link set vp0 up
    ip -n "$INS" link set vi0 up
    mkdir -p "/etc/netns/$ENS"
    echo "nameserver 192.168.127.1" >"/etc/netns/$ENS/resolv.conf"
}

# The internet's DNS: web.test is 10.$net.0.2.
start_internet_dns() {
    spawn inet_dns ip netns exec "$INS" dnsmasq --keep-in-foreground --conf-file=/dev/null --pid-file= --no-resolv \
        --no-hosts --bind-interfaces --listen-address="$NET_IP" --address=/web.test/"$NET_IP" --log-facility=- \
        --user=root --log-queries
    wait_for_log inet_dns 'started, version'
}

# start_web NAME PORT: a plain HTTP server in the internet namespace serving $work/www.
start_web() {
    mkdir -p "$work/www"
    echo "hello from the internet" >"$work/www/hello.txt"
    spawn "$1" ip netns exec "$INS" python3 -m http.server --bind "$NET_IP" --directory "$work/www" "$2"
    for _ in $(seq 1 100); do
        in_i curl -sf "http://$NET_IP:$2/hello.txt" >/dev/null 2>&1 && return 0
        sleep 0.05
    done
    fail "the web server in the internet namespace did not start"
}

# start_host NAME ARGS...: cloister host --tap in the parent namespace.
start_host() {
    local name=$1
    shift
    spawn "$name" ip netns exec "$PNS" "$CLOISTER" host --tap "unix:$TAPSOCK" --dns-server "$NET_IP" "$@"
    wait_for_log "$name" 'event=tap-ready'
}

# start_peer: the enclave-side relay in the enclave namespace, tap0
# configured: `cloister tap` (the enclave side cloister ships), or with
# TAP_PEER=python (or a build without it) tap/peer.py, the independent peer.
if [ "${TAP_PEER:-}" != python ] && "$CLOISTER" tap --help >/dev/null 2>&1; then
    TAP_PEER=cloister
else
    TAP_PEER=python
fi
start_peer() {
    if [ "$TAP_PEER" = cloister ]; then
        # resolv.conf: /etc/netns/$ENS's, which ip netns exec shows the tests; none written by tap
        spawn peer ip netns exec "$ENS" "$CLOISTER" tap --tap-parent "unix:$TAPSOCK" --tap-resolv-conf "" \
            --tap-reconnect-max 500ms "$@"
        wait_for_log peer 'event=tap_up'
        return
    fi
    spawn peer ip netns exec "$ENS" python3 -u "$PEER" --connect "$TAPSOCK" --dev tap0
    wait_for_log peer 'tap0 ready'
    ip -n "$ENS" addr add 192.168.127.2/24 dev tap0
    ip -n "$ENS" link set tap0 up
    ip -n "$ENS" route add default via 192.168.127.1
}

# peer_connections: how many times the enclave's relay has connected.
peer_connections() {
    grep -cE 'peer: connected|event=tap_connected' "$work/peer.log" 2>/dev/null || true
}

wait_peer_connections() {
    local want=$1
    for _ in $(seq 1 200); do
        [ "$(peer_connections)" -ge "$want" ] && return 0
        sleep 0.05
    done
    fail "the enclave's relay did not connect (the ${want}th time)"
}

# curl_e URL: from the enclave namespace, retried for up to ~5 s (ARP,
# a reconnecting relay), with the body on stdout.
curl_e() {
    for _ in $(seq 1 50); do
        in_e curl -sf --max-time 2 "$@" && return 0
        sleep 0.1
    done
    return 1
}
