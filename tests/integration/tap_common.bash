# Shared by the tap_*.sh scripts (sourced after common.bash): three network
# namespaces, as on a Nitro instance with nitriding-style networking:
#
#   $ENC  "the enclave": tap0 made by `cloister tap`
#   $PAR  "the parent":  tap_peer.py (the stream's other end, a TAP device
#                        at 192.168.127.1, DNS for test names), the kernel
#                        routes, nftables masquerades
#   $NET  "the internet": test servers on 203.0.113.0/24 and 198.51.100.0/24
#
# The enclave's stream to the parent is the unix socket $work/tap.sock (the
# vsock stand-in's role).  Namespaces, /etc/netns/$ENC and every process are
# removed on exit, also after a failure.

if [ "$(id -u)" != 0 ] || ! command -v ip >/dev/null || ! command -v nft >/dev/null ||
    ! command -v curl >/dev/null || [ ! -c /dev/net/tun ]; then
    echo "SKIP: needs root, ip, nft, curl and /dev/net/tun"
    exit 77
fi

tag=$$
ENC=cl-tap-e$tag
PAR=cl-tap-p$tag
NET=cl-tap-n$tag

cleanup_namespaces=("$ENC" "$PAR" "$NET")

in_enc() { ip netns exec "$ENC" "$@"; }
in_par() { ip netns exec "$PAR" "$@"; }
in_net() { ip netns exec "$NET" "$@"; }

make_namespaces() {
    ip netns add "$ENC" && ip netns add "$PAR" && ip netns add "$NET" || fail "cannot create namespaces"
    in_par ip link add vp type veth peer name vn || fail "veth"
    in_par ip link set vn netns "$NET" || fail "veth"
    in_par ip link set lo up
    in_par ip addr add 10.200.0.1/30 dev vp
    in_par ip link set vp up
    in_par ip route add 203.0.113.0/24 via 10.200.0.2
    in_par ip route add 198.51.100.0/24 via 10.200.0.2
    in_par sysctl -qw net.ipv4.ip_forward=1
    in_par nft -f - <<'EOF' || fail "nft"
table ip cloister_tap_test {
    chain post {
        type nat hook postrouting priority 100;
        oifname "vp" ip saddr 192.168.127.0/24 masquerade
    }
}
EOF
    in_net ip link set lo up
    in_net ip addr add 10.200.0.2/30 dev vn
    for a in 203.0.113.10 203.0.113.20 203.0.113.30 203.0.113.40 203.0.113.41 198.51.100.11 198.51.100.12; do
        in_net ip addr add "$a/32" dev vn
    done
    in_net ip link set vn up
    mkdir -p "/etc/netns/$ENC"
}

# internet servers: HTTP on 80 and 8080, UDP echo on 9999
start_internet() {
    mkdir -p "$work/www"
    echo "hello from the internet" >"$work/www/index.html"
    spawn http80 ip netns exec "$NET" python3 -u -m http.server --bind 0.0.0.0 --directory "$work/www" 80
    spawn http8080 ip netns exec "$NET" python3 -u -m http.server --bind 0.0.0.0 --directory "$work/www" 8080
    spawn udpecho ip netns exec "$NET" python3 -c '
import select, socket
# one socket per address: a reply must leave from the address it was sent to
socks = []
for a in ("203.0.113.10", "203.0.113.20"):
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.bind((a, 9999))
    socks.append(s)
print("udp echo ready", flush=True)
while True:
    for s in select.select(socks, [], [])[0]:
        m, a = s.recvfrom(2048)
        s.sendto(b"echo:" + m, a)
'
    wait_for_log http80 'Serving HTTP'
    wait_for_log http8080 'Serving HTTP'
    wait_for_log udpecho 'udp echo ready'
}

# start_peer NAME [--evil KIND]: the parent's end (tap_peer.py) in $PAR
start_peer() {
    local name=$1
    shift
    spawn "$name" ip netns exec "$PAR" python3 "$SOURCE_DIR/tests/integration/tap_peer.py" --listen "$work/tap.sock" \
        --tap tp0 --gateway 192.168.127.1/24 \
        --cname allowed.test=edge.cdn.test --a edge.cdn.test=203.0.113.10 --a svc.ok.test=203.0.113.30 \
        --a secret.corp.test=203.0.113.40 --a www.corp.test=203.0.113.41 --a other.test=203.0.113.20 "$@"
    wait_for_log "$name" 'listening on'
}

# start_tap [ARGS...]: cloister tap in $ENC, metrics on its own 127.0.0.1:9101
start_tap() {
    spawn tap ip netns exec "$ENC" "$CLOISTER" tap --tap-parent "unix:$work/tap.sock" \
        --tap-resolv-conf "/etc/netns/$ENC/resolv.conf" --tap-reconnect-max 1s --metrics tcp:127.0.0.1:9101 "$@"
    wait_for_log tap 'event=tap_up'
}

# metric NAME: the value of one sample of the relay's /metrics
metric() {
    in_enc curl -sS -m 5 http://127.0.0.1:9101/metrics | awk -v k="$1" '$1 == k { print $2 }'
}

dropped() {
    metric "cloister_egress_dropped_total{reason=\"$1\"}"
}

# wait_metric NAME VALUE: until the sample reaches VALUE (or 10 s pass)
wait_metric() {
    for _ in $(seq 1 100); do
        [ "$(metric "$1")" = "$2" ] && return 0
        sleep 0.1
    done
    fail "metric $1 did not reach $2 (is $(metric "$1"))"
}

enc_curl() {
    in_enc curl -sS -m 5 "$@"
}
