#!/usr/bin/env bash
# New-handshake rate of nginx with a P-256 key held three ways, in one run:
#   (a) file      the key in a PEM file, in nginx's memory
#   (b) cloister  OpenSSL's pkcs11 engine -> p11-kit client -> p11-kit server
#                 (unix socket) -> libcloister-pkcs11.so -> key-holder
#   (c) softhsm   the same engine and p11-kit RPC, SoftHSM2 behind p11-kit server
#
#   bench/pkcs11.sh BUILD_DIR
#
# nginx: 2 workers, keepalive_requests 1 and no session cache or tickets, so
# every request is a full handshake (TLS 1.3, X25519, ECDSA P-256); h2load
# --h1 reconnects after each.  ROUNDS (default 3) rounds of the three,
# interleaved so that a busy machine hurts each alike; the median is printed.
# REQUESTS (default 3000) handshakes per measurement, CLIENTS (default 16).
set -euo pipefail
build=$(cd "${1:?usage: bench/pkcs11.sh BUILD_DIR}" && pwd)
rounds=${ROUNDS:-3} requests=${REQUESTS:-3000} clients=${CLIENTS:-16}
cloister=$build/cloister
module=$build/libcloister-pkcs11.so
client=/usr/lib/x86_64-linux-gnu/pkcs11/p11-kit-client.so
engine=/usr/lib/x86_64-linux-gnu/engines-3/pkcs11.so
softhsm=/usr/lib/softhsm/libsofthsm2.so
for f in "$cloister" "$module" "$client" "$engine" "$softhsm"; do
    [ -e "$f" ] || { echo "bench/pkcs11: $f missing (build; scripts/deps.sh)" >&2; exit 1; }
done
for c in nginx h2load p11-kit softhsm2-util openssl; do
    command -v "$c" >/dev/null || { echo "bench/pkcs11: $c missing" >&2; exit 1; }
done

tmp=$(mktemp -d /tmp/cloister-bench-p11.XXXXXX)
started=()
cleanup() {
    for p in "${started[@]}"; do kill "$p" 2>/dev/null || true; done
    for p in "${started[@]}"; do wait "$p" 2>/dev/null || true; done
    rm -rf "$tmp"
}
trap cleanup EXIT
start() { # LOGNAME CMD...
    local log=$1
    shift
    "$@" >"$tmp/$log.log" 2>&1 &
    started+=($!)
}
port() { python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }

PIN=bench-pin
echo "$PIN" >"$tmp/pin"
mkdir -p "$tmp/keys" "$tmp/softhsm" "$tmp/ng/tmp"
openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -keyout "$tmp/keys/key.pem" \
    -out "$tmp/cert.pem" -subj /CN=localhost -days 2 -addext subjectAltName=DNS:localhost 2>/dev/null

# (b) the key-holder and p11-kit server for the cloister module
start keyholder "$cloister" keyholder serve --socket "unix:$tmp/kh.sock" --key-dir "$tmp/keys" \
    --token bench,key=key.pem,cert="$tmp/cert.pem",pin-file="$tmp/pin"
for _ in $(seq 100); do [ -S "$tmp/kh.sock" ] && break; sleep 0.05; done
CLOISTER_KEYHOLDER=unix:$tmp/kh.sock start p11-cloister p11-kit server -f --provider "$module" -n "$tmp/p11-cloister.sock" "pkcs11:token=bench"

# (c) SoftHSM2 with the same key, behind its own p11-kit server
echo "directories.tokendir = $tmp/softhsm" >"$tmp/softhsm2.conf"
export SOFTHSM2_CONF=$tmp/softhsm2.conf
softhsm2-util --init-token --free --label bench --pin "$PIN" --so-pin "so-$PIN" >/dev/null
openssl pkcs8 -topk8 -nocrypt -in "$tmp/keys/key.pem" -out "$tmp/key.p8"
softhsm2-util --import "$tmp/key.p8" --token bench --label bench --id 01 --pin "$PIN" >/dev/null
start p11-softhsm p11-kit server -f --provider "$softhsm" -n "$tmp/p11-softhsm.sock" "pkcs11:token=bench"
for s in p11-cloister p11-softhsm; do
    for _ in $(seq 100); do [ -S "$tmp/$s.sock" ] && break; sleep 0.05; done
    [ -S "$tmp/$s.sock" ] || { cat "$tmp/$s.log" >&2; echo "bench/pkcs11: $s did not start" >&2; exit 1; }
done

cat >"$tmp/openssl.cnf" <<EOF
openssl_conf = openssl_init
[openssl_init]
engines = engine_section
[engine_section]
pkcs11 = pkcs11_section
[pkcs11_section]
engine_id = pkcs11
dynamic_path = $engine
MODULE_PATH = $client
init = 1
EOF

declare -A ports keys socks
ports[file]=$(port) ports[cloister]=$(port) ports[softhsm]=$(port)
keys[file]=$tmp/keys/key.pem
keys[cloister]="\"engine:pkcs11:pkcs11:token=bench;object=bench;type=private?pin-value=$PIN\""
keys[softhsm]=${keys[cloister]}
socks[cloister]=$tmp/p11-cloister.sock socks[softhsm]=$tmp/p11-softhsm.sock
for kind in file cloister softhsm; do
    cat >"$tmp/ng/$kind.conf" <<EOF
daemon off; user root; worker_processes 2; pid $tmp/ng/$kind.pid; error_log $tmp/ng/$kind.err warn;
env P11_KIT_SERVER_ADDRESS;
events { worker_connections 1024; }
http { access_log off; ssl_protocols TLSv1.3; ssl_session_cache off; ssl_session_tickets off; keepalive_requests 1;
  client_body_temp_path $tmp/ng/tmp; proxy_temp_path $tmp/ng/tmp; fastcgi_temp_path $tmp/ng/tmp;
  uwsgi_temp_path $tmp/ng/tmp; scgi_temp_path $tmp/ng/tmp;
  server { listen 127.0.0.1:${ports[$kind]} ssl; ssl_certificate $tmp/cert.pem; ssl_certificate_key ${keys[$kind]};
    location / { return 200 "ok\n"; } } }
EOF
    if [ "$kind" = file ]; then
        start "nginx-$kind" nginx -p "$tmp/ng" -e "$tmp/ng/$kind.err" -c "$tmp/ng/$kind.conf"
    else
        OPENSSL_CONF=$tmp/openssl.cnf P11_KIT_SERVER_ADDRESS=unix:path=${socks[$kind]} \
            start "nginx-$kind" nginx -p "$tmp/ng" -e "$tmp/ng/$kind.err" -c "$tmp/ng/$kind.conf"
    fi
done
for kind in file cloister softhsm; do
    ok=0
    for _ in $(seq 100); do
        if curl -s -k "https://127.0.0.1:${ports[$kind]}/" >/dev/null 2>&1; then ok=1; break; fi
        sleep 0.1
    done
    [ "$ok" = 1 ] || { cat "$tmp/ng/$kind.err" "$tmp/nginx-$kind.log" >&2; echo "bench/pkcs11: nginx ($kind) not serving" >&2; exit 1; }
done

# The server side's processes for each kind: nginx (master, workers) and,
# behind the engine, p11-kit server's per-connection processes (and the
# key-holder).  Their CPU time per handshake does not depend on what else
# the (shared) machine is doing, unlike the rate.
server_pids() {
    local master
    master=$(cat "$tmp/ng/$1.pid")
    echo "$master" $(pgrep -P "$master")
    case $1 in
    cloister) echo "${started[1]}" $(pgrep -P "${started[1]}") "${started[0]}" ;;
    softhsm) echo "${started[2]}" $(pgrep -P "${started[2]}") ;;
    esac
}
cpu_ticks() { # PIDS... -> utime+stime, clock ticks
    local t=0 p f
    for p in "$@"; do
        f=$(cat "/proc/$p/stat" 2>/dev/null) || continue
        f=${f##*) }
        set -- $f
        t=$((t + ${12} + ${13}))
    done
    echo "$t"
}
hz=$(getconf CLK_TCK)
measure() { # KIND -> "handshakes/s cpu-us-per-handshake"
    local out pids c0 c1
    pids=$(server_pids "$1")
    c0=$(cpu_ticks $pids)
    out=$(h2load --h1 -n "$requests" -c "$clients" "https://127.0.0.1:${ports[$1]}/" 2>&1)
    c1=$(cpu_ticks $pids)
    echo "$out" | grep -q "$requests succeeded, 0 failed" || { echo "$out" >&2; echo "bench/pkcs11: failures ($1)" >&2; exit 1; }
    echo "$(echo "$out" | sed -n 's/^finished in .*, \([0-9.]*\) req\/s.*/\1/p')" \
        "$(awk -v d=$((c1 - c0)) -v hz="$hz" -v n="$requests" 'BEGIN { printf "%.0f", d * 1e6 / hz / n }')"
}
measure file >/dev/null # warm-up
measure cloister >/dev/null
measure softhsm >/dev/null
declare -A rates cpus
for r in $(seq "$rounds"); do
    for kind in file cloister softhsm; do
        read -r v c <<<"$(measure "$kind")"
        rates[$kind]+="$v "
        cpus[$kind]+="$c "
        echo "  round $r $kind: $v handshakes/s, server CPU $c us/handshake"
    done
done
median() { tr ' ' '\n' | grep . | sort -n | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}'; }
echo
echo "nginx new TLS 1.3 handshakes, ECDSA P-256, median of $rounds x $requests ($clients clients, $(nproc) cores, load $(cut -d' ' -f1 /proc/loadavg)):"
awk -v f="$(echo "${rates[file]}" | median)" -v c="$(echo "${rates[cloister]}" | median)" \
    -v h="$(echo "${rates[softhsm]}" | median)" -v fc="$(echo "${cpus[file]}" | median)" \
    -v cc="$(echo "${cpus[cloister]}" | median)" -v hc="$(echo "${cpus[softhsm]}" | median)" 'BEGIN {
    printf "                                   handshakes/s          server CPU us/handshake\n"
    printf "  (a) file key                     %6.0f                %6.0f\n", f, fc
    printf "  (b) cloister token over RPC      %6.0f  %.2fx (a) %.2fx (c)  %6.0f  (a)/(b) = %.2fx, (c)/(b) = %.2fx\n", c, c / f, c / h, cc, fc / cc, hc / cc
    printf "  (c) SoftHSM2 over the same RPC   %6.0f  %.2fx (a)         %6.0f  (a)/(c) = %.2fx\n", h, h / f, hc, fc / hc }'
