#!/usr/bin/env bash
# TLS reverse-proxy benchmark: cloister enclave against Debian's nginx and
# haproxy, in one run, in front of the same small backend.
#
#   bench/proxy.sh BUILD_DIR           full run (bench/run.sh, so make bench, runs it)
#   bench/proxy.sh BUILD_DIR --smoke   no timing: each proxy returns the file to
#                                      curl -k, wrk and s_time run for 1 s each
#
# Environment: BENCH_SECONDS (5) per measurement, BENCH_ROUNDS (3) of each
# measurement (the table gives the medians), BENCH_KINDS (which of them:
# "keepalive close full"), BENCH_WARMUP (2) seconds of
# warm-up before each wrk run, BENCH_CONNECTIONS (64), BENCH_THREADS (2, wrk
# threads), BENCH_STIME_PROCS (16 openssl s_time processes), BENCH_KEEP=1
# keeps the work directory (configurations, logs, wrk outputs).
#
# The backend is one nginx (worker_processes 1, keep-alive, access log off)
# serving a 100-byte file on 127.0.0.1, the same process for all three
# proxies; it is not pinned or niced, so it takes the same share of the cores
# (which wrk and the proxy share too) from each.  Its stub_status counts the
# connections each proxy opens to it.  The proxies, all with the same ECDSA
# P-256 key and self-signed certificate, TLSv1.2 and TLSv1.3 with cloister's
# algorithms (lib/core/tls.c) in its order, session tickets, one event loop per
# core, keep-alive both ways:
#   cloister  cloister enclave (with cloister nsm-sim as its NSM)
#   nginx     worker_processes N, proxy_pass to an upstream with keepalive 64
#   haproxy   nbthread N, mode http, http-reuse always
# All three are started (and their idle memory noted), then measured in
# rounds: in each, every measurement below runs against each proxy in turn
# (never two under load at once), in an order rotated from round to round:
#   1. keep-alive:      wrk -tT -cC -dS --latency       -> requests/s, p99
#   2. new connections: wrk ... -H 'Connection: close'  -> requests/s, each a
#                       new TCP connection and TLS handshake; wrk resumes its
#                       previous session (checked with nginx's $ssl_session_reused
#                       and said in the output), so also
#      full handshakes: openssl s_time -new, several at once -> connections/s
#   3. memory:          idle RSS right after start (VmRSS), peak after the runs
#                       (VmHWM), summed over the proxy's processes; and Pss.
# Everything listens on 127.0.0.1 only; every process started here is stopped
# by PID on exit.  The table is also written to BUILD_DIR/bench-proxy.txt.
set -euo pipefail

build=${1:?usage: bench/proxy.sh BUILD_DIR [--smoke]}
build=$(cd "$build" && pwd)
smoke=0
[ "${2:-}" = --smoke ] && smoke=1
cloister=$build/cloister
secs=${BENCH_SECONDS:-5}
rounds=${BENCH_ROUNDS:-3}
kinds=${BENCH_KINDS:-keepalive close full}
for kind in $kinds; do
  case $kind in keepalive | close | full) ;; *) echo "bench-proxy: BENCH_KINDS: unknown '$kind' (keepalive, close, full)" >&2; exit 2 ;; esac
done
warm=${BENCH_WARMUP:-2}
conns=${BENCH_CONNECTIONS:-64}
wthreads=${BENCH_THREADS:-2}
stime_procs=${BENCH_STIME_PROCS:-16}
ncpu=$(nproc)
if [ "$smoke" = 1 ]; then
  secs=1
  warm=0
  rounds=1
fi

die() {
  echo "bench-proxy: $*" >&2
  exit 1
}
[ -x "$cloister" ] || die "$cloister is not built"
for cmd in nginx haproxy wrk curl openssl python3 pgrep; do
  command -v "$cmd" >/dev/null || die "$cmd is not installed (scripts/deps.sh installs it)"
done
ulimit -n 16384 2>/dev/null || true

work=$(mktemp -d /tmp/cloister-bench-proxy.XXXXXX)
# nginx's workers run as nobody when started by root: they read www/ and
# create their temporary directories below here.
chmod 755 "$work"
declare -A pids=()
stime_pids=()

# All processes of a tree: PID and its descendants.
tree_pids() {
  local p=$1 c
  echo "$p"
  for c in $(pgrep -P "$p" 2>/dev/null || true); do
    tree_pids "$c"
  done
}

# stop NAME: SIGTERM to the process, wait up to 5 s, then SIGKILL what is
# left of its tree (nginx's workers, by the PIDs seen before the SIGTERM).
stop() {
  local name=$1 pid tree p
  pid=${pids[$name]:-}
  [ -n "$pid" ] || return 0
  tree=$(tree_pids "$pid")
  kill "$pid" 2>/dev/null || true
  for _ in $(seq 1 50); do
    kill -0 "$pid" 2>/dev/null || break
    sleep 0.1
  done
  for p in $tree; do
    kill -KILL "$p" 2>/dev/null || true
  done
  wait "$pid" 2>/dev/null || true
  unset "pids[$name]"
}

cleanup() {
  local status=$? name p
  for p in "${stime_pids[@]}"; do
    kill "$p" 2>/dev/null || true
  done
  for name in "${!pids[@]}"; do
    stop "$name"
  done
  if [ "$status" != 0 ] || [ -n "${BENCH_KEEP:-}" ]; then
    echo "bench-proxy: logs kept in $work" >&2
  else
    rm -rf "$work"
  fi
  exit "$status"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

spawn() {
  local name=$1
  shift
  "$@" >"$work/$name.log" 2>&1 &
  pids[$name]=$!
}

show_log() {
  echo "--- $1.log (last 30 lines) ---" >&2
  tail -n 30 "$work/$1.log" >&2 || true
}

# wait_for NAME CHECK-COMMAND...: until the command succeeds (or NAME dies).
wait_for() {
  local name=$1
  shift
  for _ in $(seq 1 200); do
    "$@" >/dev/null 2>&1 && return 0
    kill -0 "${pids[$name]}" 2>/dev/null || { show_log "$name"; die "$name exited early"; }
    sleep 0.05
  done
  show_log "$name"
  die "$name did not become ready"
}

free_port() {
  python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}

# sum_status FIELD PID...: the sum of /proc/PID/status FIELD, in kB.
sum_status() {
  local field=$1
  shift
  local total=0 p v
  for p in "$@"; do
    v=$(awk -v f="$field:" '$1 == f { print $2 }' "/proc/$p/status" 2>/dev/null || true)
    total=$((total + ${v:-0}))
  done
  echo "$total"
}

# The TLS algorithms of lib/core/tls.c, in its order, for nginx and haproxy too, so
# that all three do the same cryptography (the server's order wins in all three).
tls12_ciphers=ECDHE-ECDSA-AES128-GCM-SHA256:ECDHE-ECDSA-AES256-GCM-SHA384:ECDHE-ECDSA-CHACHA20-POLY1305
tls13_suites=TLS_AES_128_GCM_SHA256:TLS_AES_256_GCM_SHA384:TLS_CHACHA20_POLY1305_SHA256

# ---- key, certificate, backend ------------------------------------------------
openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -subj /CN=localhost -days 1 \
  -keyout "$work/key.pem" -out "$work/cert.pem" 2>/dev/null || die "openssl req failed"
cat "$work/cert.pem" "$work/key.pem" >"$work/combined.pem"
mkdir -p "$work/www"
head -c 100 /dev/zero | tr '\0' 'x' >"$work/www/file"
chmod 644 "$work/www/file"

# nginx_conf DIR: the directives every nginx here shares (pid, logs, temp
# directories, all inside DIR, which is its -p prefix).
nginx_common() {
  local dir=$1 workers=$2
  mkdir -p "$dir/tmp"
  cat <<EOF
daemon off;
master_process on;
worker_processes $workers;
pid $dir/nginx.pid;
error_log $dir/error.log warn;
events { worker_connections 8192; }
EOF
}
nginx_temp_paths() {
  local dir=$1 t
  for t in client_body proxy fastcgi uwsgi scgi; do
    echo "    ${t}_temp_path $dir/tmp/$t;"
  done
}

backend_port=$(free_port)
mkdir -p "$work/backend"
{
  nginx_common "$work/backend" 1
  cat <<EOF
http {
$(nginx_temp_paths "$work/backend")
    access_log off;
    keepalive_requests 1000000000;
    keepalive_timeout 300s;
    default_type application/octet-stream;
    open_file_cache max=16;
    server {
        listen 127.0.0.1:$backend_port;
        root $work/www;
        location = /status { stub_status; }
    }
}
EOF
} >"$work/backend/nginx.conf"
spawn backend nginx -e "$work/backend/error.log" -p "$work/backend/" -c "$work/backend/nginx.conf"
wait_for backend curl -sf -o /dev/null "http://127.0.0.1:$backend_port/file"

# ---- the three proxies ------------------------------------------------------------
# start_PROXY PORT: starts it in the background as pids[PROXY], listening on
# 127.0.0.1:PORT; the caller waits for the file to come through.

metrics_port=
start_cloister() {
  local port=$1
  rm -rf "$work/nsm.sock" "$work/state"
  mkdir -p "$work/state"
  spawn nsm-sim "$cloister" nsm-sim --listen "unix:$work/nsm.sock" --state "$work/state"
  wait_for nsm-sim grep -q '^nsm-sim: listening on ' "$work/nsm-sim.log"
  metrics_port=$(free_port)
  spawn cloister "$cloister" enclave -fqdn localhost --listen "tcp:127.0.0.1:$port" --nsm "unix:$work/nsm.sock" \
    -intport "$(free_port)" -appwebsrv "http://127.0.0.1:$backend_port" \
    --cert "$work/cert.pem" --key "$work/key.pem" --prometheus-listen "tcp:127.0.0.1:$metrics_port"
  wait_for cloister grep -q 'event=listening listener=public' "$work/cloister.log"
}

# nginx_proxy_conf DIR PORT [ACCESS_LOG_LINE]
nginx_proxy_conf() {
  local dir=$1 port=$2 log=${3:-"access_log off;"}
  nginx_common "$dir" "$ncpu"
  cat <<EOF
http {
$(nginx_temp_paths "$dir")
    log_format reuse '\$ssl_session_reused \$ssl_protocol \$ssl_cipher';
    $log
    keepalive_requests 1000000000;
    keepalive_timeout 300s;
    upstream backend {
        server 127.0.0.1:$backend_port;
        keepalive 64;
        keepalive_requests 1000000000;
    }
    server {
        listen 127.0.0.1:$port ssl;
        ssl_certificate $work/cert.pem;
        ssl_certificate_key $work/key.pem;
        ssl_protocols TLSv1.2 TLSv1.3;
        ssl_session_tickets on;
        # cloister's algorithms and order, server preference, one ticket (lib/core/tls.c)
        ssl_prefer_server_ciphers on;
        ssl_ciphers $tls12_ciphers;
        ssl_conf_command Ciphersuites $tls13_suites;
        ssl_conf_command Groups X25519:P-256:P-384;
        ssl_conf_command NumTickets 1;
        location / {
            proxy_pass http://backend;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
        }
    }
}
EOF
}

start_nginx() {
  local port=$1 dir=$work/nginx
  mkdir -p "$dir"
  nginx_proxy_conf "$dir" "$port" >"$dir/nginx.conf"
  spawn nginx nginx -e "$dir/error.log" -p "$dir/" -c "$dir/nginx.conf"
}

start_haproxy() {
  local port=$1
  cat >"$work/haproxy.cfg" <<EOF
global
    nbthread $ncpu
    maxconn 4096
    ssl-default-bind-options ssl-min-ver TLSv1.2
    # cloister's algorithms and order (haproxy prefers the server's order)
    ssl-default-bind-ciphers $tls12_ciphers
    ssl-default-bind-ciphersuites $tls13_suites
    ssl-default-bind-curves X25519:P-256:P-384

defaults
    mode http
    option http-keep-alive
    timeout connect 5s
    timeout client 300s
    timeout server 300s
    timeout http-request 10s
    timeout http-keep-alive 300s

frontend public
    bind 127.0.0.1:$port ssl crt $work/combined.pem
    default_backend app

backend app
    http-reuse always
    server backend 127.0.0.1:$backend_port
EOF
  haproxy -c -q -f "$work/haproxy.cfg" || die "haproxy rejects $work/haproxy.cfg"
  spawn haproxy haproxy -db -f "$work/haproxy.cfg"
}

# ---- wrk ---------------------------------------------------------------------------
# wrk_run OUT URL [ARGS...]: SECONDS of load; OUT gets wrk's output.
wrk_run() {
  local out=$1 url=$2 d=$3
  shift 3
  timeout $((d + 60)) wrk -t"$wthreads" -c"$conns" -d"${d}s" --timeout 10s "$@" "$url" >"$out" 2>&1 ||
    { cat "$out" >&2; die "wrk failed: wrk $* $url"; }
}
rps_of() { awk '/^Requests\/sec:/ { print $2 }' "$1"; }
requests_of() { awk '/ requests in / { print $1 }' "$1"; }
# p99 in milliseconds from --latency's distribution.
p99_of() {
  awk '$1 == "99%" {
    v = $2; u = v; sub(/^[0-9.]+/, "", u); sub(/[a-z]+$/, "", v)
    f = (u == "us") ? 0.001 : (u == "ms") ? 1 : (u == "s") ? 1000 : (u == "m") ? 60000 : -1
    if (f < 0) { print "?"; exit }
    printf "%.2f\n", v * f }' "$1"
}
# Problems wrk saw: non-2xx answers and socket errors, or nothing.
errors_of() {
  local non2xx sock
  non2xx=$(awk '/Non-2xx or 3xx responses:/ { print $NF }' "$1")
  sock=$(sed -n 's/^ *Socket errors: *//p' "$1")
  [ -n "$non2xx" ] && printf 'non-2xx/3xx responses: %s; ' "$non2xx"
  [ -n "$sock" ] && printf 'socket errors: %s; ' "$sock"
  return 0
}

# stime_run OUT HOST:PORT SECONDS: full TLS handshakes, no session reuse
# (openssl s_time -new), BENCH_STIME_PROCS processes at once, each one
# connection at a time, "GET /file HTTP/1.0" on each.  Sets stime_n (the
# connections) and stime_rate (per second of wall time); OUT gets the outputs.
stime_run() {
  local out=$1 addr=$2 d=$3 i t0 t1
  : >"$out"
  stime_pids=()
  t0=$(date +%s.%N)
  for i in $(seq 1 "$stime_procs"); do
    timeout $((d + 60)) openssl s_time -connect "$addr" -new -time "$d" -www /file >"$out.$i" 2>&1 &
    stime_pids+=($!)
  done
  for i in "${stime_pids[@]}"; do
    wait "$i" || { cat "$out".* >&2; die "openssl s_time -connect $addr failed"; }
  done
  stime_pids=()
  t1=$(date +%s.%N)
  cat "$out".* >"$out" && rm -f "$out".*
  stime_n=$(awk '/connections in .* real seconds/ { n += $1 } END { print n + 0 }' "$out")
  stime_rate=$(awk -v n="$stime_n" -v a="$t0" -v b="$t1" 'BEGIN { printf "%.2f", n / (b - a) }')
}

# Connections the backend has accepted so far (nginx stub_status).
backend_accepts() {
  curl -sf "http://127.0.0.1:$backend_port/status" | awk 'NR == 3 { print $1 }'
}

# cloister_counter NAME: one of cloister's TLS counters (handshakes, resumptions).
cloister_counter() {
  curl -sf "http://127.0.0.1:$metrics_port/metrics" | awk -v m="tls_$1_total" '$1 ~ (m "$") { print $2 }'
}

# resumes HOST:PORT: whether a session from one connection is resumed on the
# next (openssl s_client -sess_out, then -sess_in).
resumes() {
  rm -f "$work/sess.pem"
  (printf 'GET /file HTTP/1.1\r\nHost: localhost\r\n\r\n'; sleep 0.5) |
    timeout 10 openssl s_client -connect "$1" -sess_out "$work/sess.pem" -quiet -no_ign_eof >/dev/null 2>&1 || true
  if [ -s "$work/sess.pem" ] && timeout 10 openssl s_client -connect "$1" -sess_in "$work/sess.pem" </dev/null 2>&1 |
    grep -q '^Reused,'; then
    echo yes
  else
    echo no
  fi
}

# ---- the runs -------------------------------------------------------------------------
declare -A r_ka r_p99 r_hs r_full r_idle r_peak r_pss r_tls r_err r_note r_nproc r_h2 r_resume r_bconn r_bconn_full
declare -A all_ka all_p99 all_hs all_full bconn_n bconn_req bconn_full_n bconn_full_req hs_total rs_total urls

# median of the numbers given ("-" for none: a kind not measured)
median() {
  [ $# -gt 0 ] || { echo -; return; }
  printf '%s\n' "$@" | sort -g | awk '{ v[NR] = $1 } END { if (NR % 2) print v[(NR + 1) / 2]; else printf "%.2f\n", (v[NR / 2] + v[NR / 2 + 1]) / 2 }'
}

# prepare NAME: start it, check it serves the file, note its idle memory.
prepare() {
  local name=$1 port url body
  port=$(free_port)
  echo "== $name"
  "start_$name" "$port"
  url=https://127.0.0.1:$port/file
  urls[$name]=$url
  wait_for "$name" curl -skf --http1.1 -o /dev/null "$url"
  sleep 0.5
  # shellcheck disable=SC2046
  r_idle[$name]=$(sum_status VmRSS $(tree_pids "${pids[$name]}"))
  body=$(curl -sk --http1.1 --max-time 10 "$url") || die "$name: curl $url failed"
  if [ "${#body}" != 100 ] || [ "$body" != "$(cat "$work/www/file")" ]; then
    die "$name: expected the 100-byte file, got ${#body} bytes: ${body:0:200}"
  fi
  r_tls[$name]=$(curl -skv --http1.1 -o /dev/null "$url" 2>&1 | sed -n 's/^\* SSL connection using //p' | head -n 1)
  echo "   curl -k --http1.1 $url: the 100-byte file (${r_tls[$name]})"
  # wrk speaks HTTP/1.1 without ALPN; a default curl offers h2 as well.
  local h2err
  if ! h2err=$(curl -sSk --max-time 10 -o /dev/null "$url" 2>&1); then
    r_h2[$name]="curl -k $url (ALPN h2,http/1.1) fails: $h2err"
    echo "   WARNING: ${r_h2[$name]}"
  fi
  r_resume[$name]=$(resumes "127.0.0.1:$port")
  echo "   resumes a TLS session from a ticket: ${r_resume[$name]}"
  r_err[$name]=
  all_ka[$name]= all_p99[$name]= all_hs[$name]= all_full[$name]=
  bconn_n[$name]=0 bconn_req[$name]=0 bconn_full_n[$name]=0 bconn_full_req[$name]=0
  hs_total[$name]=0 rs_total[$name]=0
}

# run_keepalive / run_close / run_full NAME ROUND: one measurement, kept for the median.
run_keepalive() {
  local name=$1 round=$2 url=${urls[$1]} out b0 b1 e
  out=$work/$name-ka-$round.txt
  [ "$warm" -gt 0 ] && wrk_run "$work/$name-warm.txt" "$url" "$warm"
  b0=$(backend_accepts)
  wrk_run "$out" "$url" "$secs" --latency
  b1=$(backend_accepts)
  all_ka[$name]+=" $(rps_of "$out")"
  all_p99[$name]+=" $(p99_of "$out")"
  e=$(errors_of "$out")
  [ -n "$e" ] && r_err[$name]+="keep-alive run $round: $e"
  echo "   $name keep-alive:                  $(requests_of "$out") requests, $(rps_of "$out")/s, p99 $(p99_of "$out") ms, $((b1 - b0)) new backend connections"
}

run_close() {
  local name=$1 round=$2 url=${urls[$1]} out b0 b1 n e hs0 rs0
  out=$work/$name-hs-$round.txt
  [ "$warm" -gt 0 ] && wrk_run "$work/$name-warm2.txt" "$url" "$warm" -H 'Connection: close'
  [ "$name" = cloister ] && hs0=$(cloister_counter handshakes) rs0=$(cloister_counter resumptions)
  b0=$(backend_accepts)
  wrk_run "$out" "$url" "$secs" -H 'Connection: close'
  b1=$(backend_accepts)
  n=$(requests_of "$out")
  all_hs[$name]+=" $(rps_of "$out")"
  bconn_n[$name]=$((bconn_n[$name] + b1 - b0)) bconn_req[$name]=$((bconn_req[$name] + n))
  echo "   $name Connection: close (wrk):     $n requests, $(rps_of "$out")/s, $((b1 - b0)) new backend connections"
  if [ "$name" = cloister ]; then
    hs_total[$name]=$((hs_total[$name] + $(cloister_counter handshakes) - hs0))
    rs_total[$name]=$((rs_total[$name] + $(cloister_counter resumptions) - rs0))
  fi
  e=$(errors_of "$out")
  [ -n "$e" ] && r_err[$name]+="Connection: close run $round: $e"
  return 0
}

run_full() {
  local name=$1 round=$2 b0 b1
  b0=$(backend_accepts)
  local addr=${urls[$name]#https://}
  stime_run "$work/$name-stime-$round.txt" "${addr%/file}" "$secs"
  b1=$(backend_accepts)
  all_full[$name]+=" $stime_rate"
  bconn_full_n[$name]=$((bconn_full_n[$name] + b1 - b0)) bconn_full_req[$name]=$((bconn_full_req[$name] + stime_n))
  echo "   $name full handshakes (s_time -new): $stime_n connections, $stime_rate/s, $((b1 - b0)) new backend connections"
}

# finish NAME: medians, memory after the runs, then stop it.
finish() {
  local name=$1 tree pss=0 p v
  # shellcheck disable=SC2086
  r_ka[$name]=$(median ${all_ka[$name]})
  # shellcheck disable=SC2086
  r_p99[$name]=$(median ${all_p99[$name]})
  # shellcheck disable=SC2086
  r_hs[$name]=$(median ${all_hs[$name]})
  # shellcheck disable=SC2086
  r_full[$name]=$(median ${all_full[$name]})
  r_bconn[$name]="${bconn_n[$name]} for ${bconn_req[$name]} requests"
  r_bconn_full[$name]="${bconn_full_n[$name]} for ${bconn_full_req[$name]}"
  [ "$name" = cloister ] &&
    r_note[$name]="cloister: ${rs_total[$name]} of ${hs_total[$name]} TLS handshakes resumed a session in wrk's Connection: close runs"
  kill -0 "${pids[$name]}" 2>/dev/null || { show_log "$name"; die "$name died during the runs"; }
  tree=$(tree_pids "${pids[$name]}")
  # shellcheck disable=SC2086
  r_peak[$name]=$(sum_status VmHWM $tree)
  for p in $tree; do
    v=$(awk '$1 == "Pss:" { print $2 }' "/proc/$p/smaps_rollup" 2>/dev/null || true)
    pss=$((pss + ${v:-0}))
  done
  r_pss[$name]=$pss
  r_nproc[$name]=$(wc -w <<<"$tree")
  stop "$name"
  [ "$name" = cloister ] && stop nsm-sim
  return 0
}

load0=$(cut -d' ' -f1-3 /proc/loadavg)
proxies=(cloister nginx haproxy)
for proxy in "${proxies[@]}"; do
  prepare "$proxy"
done
# Rounds, each proxy in turn and the order rotated from round to round, so
# that a noisy minute of the machine is shared out rather than falling on
# one of them; the table gives the median of the rounds.
for round in $(seq 1 "$rounds"); do
  order=("${proxies[@]:$(((round - 1) % 3))}" "${proxies[@]:0:$(((round - 1) % 3))}")
  echo "== round $round of $rounds (${order[*]})"
  for kind in $kinds; do
    for proxy in "${order[@]}"; do
      "run_$kind" "$proxy" "$round"
    done
  done
done
for proxy in "${proxies[@]}"; do
  [ -n "${r_err[$proxy]}" ] && echo "   WARNING: wrk against $proxy reported: ${r_err[$proxy]}"
  finish "$proxy"
done

# ---- which handshakes were those? ------------------------------------------------------
# An nginx configured as above but logging $ssl_session_reused ("r" or "."),
# for a second of each client's load.
echo "== session resumption by the clients (nginx \$ssl_session_reused)"
check_port=$(free_port)
mkdir -p "$work/nginx-check"
nginx_proxy_conf "$work/nginx-check" "$check_port" "access_log $work/nginx-check/access.log reuse;" \
  >"$work/nginx-check/nginx.conf"
spawn nginx-check nginx -e "$work/nginx-check/error.log" -p "$work/nginx-check/" -c "$work/nginx-check/nginx.conf"
wait_for nginx-check curl -skf --http1.1 -o /dev/null "https://127.0.0.1:$check_port/file"
# counts LOG: "R of N"
reuse_count() { awk '$1 == "r" { r++ } END { printf "%d of %d", r, NR }' "$1"; }
: >"$work/nginx-check/access.log"
wrk_run "$work/check-wrk.txt" "https://127.0.0.1:$check_port/file" 1 -H 'Connection: close'
sleep 0.2
wrk_reuse=$(reuse_count "$work/nginx-check/access.log")
wrk_proto=$(awk '{ print $2, $3 }' "$work/nginx-check/access.log" | sort | uniq -c | sort -rn | head -n 1 |
  awk '{ print $2, $3 }')
: >"$work/nginx-check/access.log"
stime_run "$work/check-stime.txt" "127.0.0.1:$check_port" 1
sleep 0.2
stime_reuse=$(reuse_count "$work/nginx-check/access.log")
stop nginx-check
resumption_wrk="wrk -H 'Connection: close': $wrk_reuse connections resumed a session ($wrk_proto)"
resumption_stime="openssl s_time -new: $stime_reuse connections resumed a session"
echo "   $resumption_wrk"
echo "   $resumption_stime"

stop backend

if [ "$smoke" = 1 ]; then
  for p in cloister nginx haproxy; do
    if [ -z "${r_ka[$p]}" ] || [ -z "${r_hs[$p]}" ] || [ "${r_full[$p]%.*}" = 0 ]; then
      die "smoke: no requests/s from wrk or s_time for $p"
    fi
    [ -z "${r_err[$p]:-}" ] || echo "smoke: WARNING: $p: wrk reported ${r_err[$p]}" >&2
    [ -z "${r_h2[$p]:-}" ] || echo "smoke: WARNING: $p: ${r_h2[$p]}" >&2
  done
  echo "smoke: ok (all three return the 100-byte file through curl -k; wrk and s_time run against each)"
  exit 0
fi

# ---- the table -------------------------------------------------------------------------
mib() { awk -v k="$1" 'BEGIN { printf "%.1f", k / 1024 }'; }
ratio() { awk -v a="$1" -v b="$2" 'BEGIN { if (b + 0 == 0 || a == "?" || b == "?" || a == "-" || b == "-") print "n/a"; else printf "%.2fx", a / b }'; }
fmt() { awk -v v="$1" 'BEGIN { if (v == "-") print v; else printf "%.0f", v }'; }
{
  echo "TLS reverse proxy in front of one nginx (1 worker) serving a 100-byte file, all on 127.0.0.1"
  echo "$(date -u +%Y-%m-%dT%H:%MZ), $(nproc) CPUs ($(sed -n 's/^model name[[:space:]]*: //p' /proc/cpuinfo | head -n 1)), load average before: $load0"
  echo "wrk -t$wthreads -c$conns -d${secs}s after ${warm}s warm-up; $stime_procs x openssl s_time -new for ${secs}s;"
  echo "medians of $rounds rounds, each proxy in turn in every round, the order rotated between rounds"
  echo "ECDSA P-256 certificate, cloister's TLS algorithms for all three; one event loop per core ($ncpu)"
  echo "  cloister: $("$cloister" --version 2>/dev/null | head -n 1) ($build)"
  echo "  nginx:    $(nginx -v 2>&1 | sed 's/^nginx version: //'), worker_processes $ncpu"
  echo "  haproxy:  $(haproxy -v | head -n 1 | awk '{ print $3 }'), nbthread $ncpu"
  echo
  row() { printf '%-10s %11s %8s %11s %11s %9s %9s %9s %6s\n' "$@"; }
  row "" "keep-alive" "p99" "conn:close" "full hs" "idle RSS" "peak RSS" "Pss" "procs"
  row "" "req/s" "ms" "req/s" "conn/s" "MiB" "MiB" "MiB" ""
  for p in cloister nginx haproxy; do
    row "$p" "$(fmt "${r_ka[$p]}")" "${r_p99[$p]}" "$(fmt "${r_hs[$p]}")" "$(fmt "${r_full[$p]}")" \
      "$(mib "${r_idle[$p]}")" "$(mib "${r_peak[$p]}")" "$(mib "${r_pss[$p]}")" "${r_nproc[$p]}"
  done
  echo
  for o in nginx haproxy; do
    row "c/$o" "$(ratio "${r_ka[cloister]}" "${r_ka[$o]}")" \
      "$(ratio "${r_p99[cloister]}" "${r_p99[$o]}")" "$(ratio "${r_hs[cloister]}" "${r_hs[$o]}")" \
      "$(ratio "${r_full[cloister]}" "${r_full[$o]}")" "$(ratio "${r_idle[cloister]}" "${r_idle[$o]}")" \
      "$(ratio "${r_peak[cloister]}" "${r_peak[$o]}")" "$(ratio "${r_pss[cloister]}" "${r_pss[$o]}")" ""
  done
  echo "(c/X: cloister's figure divided by X's; req/s and conn/s: higher is better; p99 and memory: lower is better)"
  echo
  echo "keep-alive: wrk --latency, HTTP/1.1 without ALPN; p99 is its 99th percentile latency."
  echo "conn:close: wrk -H 'Connection: close', a new TCP connection and TLS handshake per request;"
  echo "  wrk offers the session ticket of its previous connection, so these are mostly resumed"
  echo "  TLS 1.3 handshakes (PSK with X25519, no certificate signature); measured with nginx's"
  echo "  \$ssl_session_reused, $resumption_wrk."
  echo "  ${r_note[cloister]:-}"
  echo "  Connections the backend accepted in these runs (its stub_status): cloister ${r_bconn[cloister]},"
  echo "  nginx ${r_bconn[nginx]}, haproxy ${r_bconn[haproxy]}."
  echo "full hs: full handshakes (X25519 + ECDSA P-256 signature), one GET /file HTTP/1.0 each, by"
  echo "  $stime_procs openssl s_time -new processes at once, each one connection at a time;"
  echo "  measured likewise, $resumption_stime."
  echo "  The client's side of a full handshake costs more CPU than the server's, on the same cores."
  echo "  Connections the backend accepted in these runs: cloister ${r_bconn_full[cloister]},"
  echo "  nginx ${r_bconn_full[nginx]}, haproxy ${r_bconn_full[haproxy]}."
  echo "  Session tickets resumed by each (s_client -sess_out/-sess_in): cloister ${r_resume[cloister]},"
  echo "  nginx ${r_resume[nginx]}, haproxy ${r_resume[haproxy]}."
  echo "idle RSS: VmRSS right after start; peak RSS: VmHWM after the runs; both summed over the"
  echo "  proxy's processes (nginx: master + $ncpu workers, which share pages, so the sum overcounts;"
  echo "  cloister's nsm-sim, standing in for the NSM device, is not counted);"
  echo "  Pss: proportional set size after the runs, summed (shared pages divided among sharers)."
  echo "TLS as curl sees it: cloister ${r_tls[cloister]}; nginx ${r_tls[nginx]}; haproxy ${r_tls[haproxy]}"
  for p in cloister nginx haproxy; do
    [ -z "${r_err[$p]:-}" ] || echo "WARNING: wrk against $p reported ${r_err[$p]}"
    [ -z "${r_h2[$p]:-}" ] || echo "WARNING: $p: ${r_h2[$p]}"
  done
} | tee "$build/bench-proxy.txt"
echo "(written to $build/bench-proxy.txt)"
