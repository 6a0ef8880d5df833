#!/usr/bin/env bash
# Scale-out throughput: HTTPS through HAProxy (TCP mode, PROXY v2, round
# robin) to 1, 2 and 3 cloister replicas (`cloister dev --replicas N`: host
# forward -> vsock stand-in -> cloister enclave, which answers GET /enclave
# itself, so no application is measured), and the same HAProxy in front of
# 1, 2 and 3 nginx replicas answering the same number of bytes over the same
# TLS (a P-256 certificate, TLS 1.3, keep-alive).  Prints requests/second and
# the ratio to one replica for each, and cloister's relative to nginx's.
#
#   bench/replicas.sh BUILD_DIR        (root: network namespaces; haproxy, nginx, wrk)
#
# DURATION (8s) and CONNECTIONS (32) of each wrk run.  Both sides are
# CPU-bound on a small machine: the point is the ratios, i.e. that cloister
# loses nothing of its own when scaled out.
set -euo pipefail

build=${1:?usage: bench/replicas.sh BUILD_DIR}
build=$(cd "$build" && pwd)
cloister=$build/cloister
duration=${DURATION:-8s}
conns=${CONNECTIONS:-32}
export CLOISTER_NO_VSOCK=1
die() {
    echo "bench/replicas: $*" >&2
    exit 1
}
[ -x "$cloister" ] || die "$cloister is not built"
[ "$(id -u)" = 0 ] || die "needs root (network namespaces)"
haproxy=$(command -v haproxy || echo /usr/sbin/haproxy)
nginx=$(command -v nginx || echo /usr/sbin/nginx)
[ -x "$haproxy" ] && [ -x "$nginx" ] && command -v wrk >/dev/null || die "needs haproxy, nginx and wrk"

tmp=$(mktemp -d /tmp/cloister-bench-replicas.XXXXXX)
dev_pid=
haproxy_pid=
nginx_pids=()
cleanup() {
    [ -n "$dev_pid" ] && { kill "$dev_pid" 2>/dev/null; wait "$dev_pid" 2>/dev/null || true; }
    [ -n "$haproxy_pid" ] && { kill "$haproxy_pid" 2>/dev/null; wait "$haproxy_pid" 2>/dev/null || true; }
    for p in "${nginx_pids[@]}"; do kill "$p" 2>/dev/null || true; done
    for p in "${nginx_pids[@]}"; do wait "$p" 2>/dev/null || true; done
    rm -rf "$tmp"
}
trap cleanup EXIT

free_port() {
    python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}

# requests/second of one wrk run against URL (after a 1 s warm-up)
rps() {
    wrk -t2 -c"$conns" -d1s "$1" >/dev/null 2>&1 || true
    wrk -t2 -c"$conns" -d"$duration" "$1" >"$tmp/wrk.out" 2>&1 || die "wrk: $(cat "$tmp/wrk.out")"
    if grep -q 'Non-2xx\|Socket errors' "$tmp/wrk.out"; then
        echo "bench/replicas: warning: $(grep 'Non-2xx\|Socket errors' "$tmp/wrk.out" | tr '\n' ' ')" >&2
    fi
    awk '/^Requests\/sec/ { printf "%d", $2 }' "$tmp/wrk.out"
}

declare -A cl ng
body_len=0
for n in 1 2 3; do
    port=$(free_port)
    "$cloister" dev --replicas "$n" --port "$port" --run-dir "$tmp/run$n" >"$tmp/dev$n.log" 2>&1 &
    dev_pid=$!
    sleep 0.2
    for _ in $(seq 1 1200); do
        grep -q 'replicas are up behind HAProxy' "$tmp/dev$n.log" && break
        kill -0 "$dev_pid" 2>/dev/null || die "cloister dev --replicas $n: $(tail -20 "$tmp/dev$n.log")"
        sleep 0.1
    done
    grep -q 'replicas are up behind HAProxy' "$tmp/dev$n.log" || die "cloister dev --replicas $n did not start"
    [ "$body_len" -gt 0 ] || body_len=$(curl -sk "https://127.0.0.1:$port/enclave" | wc -c)
    cl[$n]=$(rps "https://127.0.0.1:$port/enclave")
    echo "cloister $n replica(s): ${cl[$n]} requests/s" >&2
    kill "$dev_pid"
    wait "$dev_pid" 2>/dev/null || true
    dev_pid=
done

# ---- nginx replicas, the same bytes over the same TLS ---------------------------------------------
openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 2 -subj /CN=localhost \
    -keyout "$tmp/key.pem" -out "$tmp/cert.pem" >/dev/null 2>&1
body=$(head -c "$((body_len - 1))" /dev/zero | tr '\0' 'x')
ports=()
for i in 1 2 3; do
    p=$(free_port)
    ports+=("$p")
    mkdir -p "$tmp/nginx$i/logs"
    cat >"$tmp/nginx$i/nginx.conf" <<EOF
worker_processes auto;
daemon off;
pid $tmp/nginx$i/nginx.pid;
error_log $tmp/nginx$i/logs/error.log;
events { worker_connections 4096; }
http {
    access_log off;
    server {
        listen 127.0.0.1:$p ssl proxy_protocol;
        ssl_certificate $tmp/cert.pem;
        ssl_certificate_key $tmp/key.pem;
        ssl_protocols TLSv1.2 TLSv1.3;
        keepalive_requests 100000;
        location / { default_type text/plain; return 200 "$body\n"; }
    }
}
EOF
done
start_nginx_haproxy() { # N: sets front and haproxy_pid
    local n=$1
    front=$(free_port)
    {
        printf 'global\n    maxconn 4096\ndefaults\n    mode tcp\n    timeout connect 2s\n    timeout client 60s\n'
        printf '    timeout server 60s\nfrontend https\n    bind 127.0.0.1:%s\n    default_backend replicas\n' "$front"
        printf 'backend replicas\n    balance roundrobin\n    default-server send-proxy-v2 inter 500ms fall 2 rise 2\n'
        for i in $(seq 1 "$n"); do printf '    server n%s 127.0.0.1:%s check\n' "$i" "${ports[$((i - 1))]}"; done
    } >"$tmp/haproxy-nginx.cfg"
    "$haproxy" -db -f "$tmp/haproxy-nginx.cfg" >"$tmp/haproxy-nginx.log" 2>&1 &
    haproxy_pid=$!
    for _ in $(seq 1 100); do curl -sk -o /dev/null "https://127.0.0.1:$front/" 2>/dev/null && break; sleep 0.1; done
}
for i in 1 2 3; do
    "$nginx" -p "$tmp/nginx$i" -c "$tmp/nginx$i/nginx.conf" >"$tmp/nginx$i/out.log" 2>&1 &
    nginx_pids+=($!)
done
for n in 1 2 3; do
    start_nginx_haproxy "$n"
    ng[$n]=$(rps "https://127.0.0.1:$front/")
    echo "nginx $n replica(s): ${ng[$n]} requests/s" >&2
    kill "$haproxy_pid"
    wait "$haproxy_pid" 2>/dev/null || true
    haproxy_pid=
done

echo
echo "HTTPS through HAProxy (TCP, PROXY v2), $conns connections, $duration, GET of $body_len bytes, $(nproc) cores"
printf '%-9s %14s %9s %14s %9s %18s\n' replicas "cloister req/s" "vs 1" "nginx req/s" "vs 1" "cloister/nginx"
for n in 1 2 3; do
    awk -v n="$n" -v c="${cl[$n]}" -v c1="${cl[1]}" -v g="${ng[$n]}" -v g1="${ng[1]}" \
        'BEGIN { printf "%-9s %14d %8.2fx %14d %8.2fx %17.2fx\n", n, c, c / c1, g, g / g1, c / g }'
done
