#!/usr/bin/env bash
# Byte-forwarding benchmark: `cloister host` against socat, each as the same
# two hops, tcp -> unix -> tcp (the enclave's inbound path, with a unix
# socket standing in for vsock), in one run.
#
#   bench/host.sh BUILD_DIR            full run (bench/run.sh, i.e. make bench, runs it)
#   bench/host.sh BUILD_DIR --smoke    small sizes, a few seconds: checks that it works
#
# Environment: BENCH_BYTES (1 GiB) per throughput run, BENCH_RUNS (3, the median
# is reported), BENCH_SECONDS (5) per connection-rate run, BENCH_PARALLEL (16
# client threads), BENCH_HOLD (10000) concurrent connections through cloister,
# BENCH_SOCAT_HOLD (1000) through socat (it forks a process per connection and
# hop), BENCH_KEEP (keep the logs).
#
# Backends and load (bench_host, C, one epoll thread each): a sink that counts
# bytes and an echo server on 127.0.0.1.  Measured, for each forwarder:
#   throughput   BENCH_BYTES client -> sink through both hops, until the sink's
#                count is back                                        -> MB/s
#   rate         new connection, 1 KiB out, EOF, 1 KiB echoed back, close,
#                BENCH_PARALLEL at a time                             -> connections/s
#   concurrency  N connections open at once, each echoed one byte, held; memory
#                of each hop's processes (RSS summed; PSS, which shares library
#                pages fairly between processes)
# cloister: default settings (one worker process per core, splice); socat 1.7
# with its defaults (fork per connection, 8 KiB buffer) and, for throughput,
# also with -b 262144.  Everything listens on 127.0.0.1 or in a temporary
# directory; every process started here is stopped by PID on exit.  The
# table is also written to BUILD_DIR/bench-host.txt.
set -euo pipefail

build=${1:?usage: bench/host.sh BUILD_DIR [--smoke]}
build=$(cd "$build" && pwd)
smoke=0
[ "${2:-}" = --smoke ] && smoke=1
cloister=$build/cloister
load=$build/bench/bench_host
bytes=${BENCH_BYTES:-1073741824}
runs=${BENCH_RUNS:-3}
secs=${BENCH_SECONDS:-5}
parallel=${BENCH_PARALLEL:-16}
hold=${BENCH_HOLD:-10000}
socat_hold=${BENCH_SOCAT_HOLD:-1000}
if [ "$smoke" = 1 ]; then
  bytes=$((64 * 1024 * 1024))
  runs=1
  secs=1
  hold=200
  socat_hold=50
fi

die() {
  echo "bench-host: $*" >&2
  exit 1
}
[ -x "$cloister" ] || die "$cloister is not built"
[ -x "$load" ] || die "$load is not built"
command -v socat >/dev/null || die "socat is not installed (scripts/deps.sh installs it)"
command -v python3 >/dev/null || die "python3 is not installed"
ulimit -n "$(ulimit -Hn)" 2>/dev/null || true
nofile=$(ulimit -n)
# the load client holds N descriptors, the echo backend N more: both need headroom
if [ "$hold" -gt $((nofile - 100)) ]; then
  echo "bench-host: descriptor limit $nofile: holding $((nofile - 100)) connections instead of $hold" >&2
  hold=$((nofile - 100))
fi

tmp=$(mktemp -d /tmp/cloister-bench-host.XXXXXX)
declare -a started=()
cleanup() {
  local status=$?
  for pid in "${started[@]}"; do kill "$pid" 2>/dev/null || true; done
  for pid in "${started[@]}"; do wait "$pid" 2>/dev/null || true; done
  if [ -n "${BENCH_KEEP:-}" ]; then echo "bench-host: logs kept in $tmp" >&2; else rm -rf "$tmp"; fi
  exit "$status"
}
trap cleanup EXIT

start() { # start NAME CMD...: background, output in $tmp/NAME.log, PID in $last
  local name=$1
  shift
  "$@" >"$tmp/$name.log" 2>&1 &
  last=$!
  started+=("$last")
}
stop_pid() {
  kill "$1" 2>/dev/null || true
  wait "$1" 2>/dev/null || true
}
free_port() {
  python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}
wait_tcp() {
  for _ in $(seq 1 200); do
    (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null && return 0
    sleep 0.05
  done
  die "nothing listens on 127.0.0.1:$1"
}
wait_unix() {
  for _ in $(seq 1 200); do
    [ -S "$1" ] && return 0
    sleep 0.05
  done
  die "no socket at $1"
}
value() { sed -n "s/^RESULT .*\b$1=\([^ ]*\).*/\1/p"; }
median() { sort -n | awk '{ v[NR] = $1 } END { print v[int((NR + 1) / 2)] }'; }
# tree PID...: the processes and their children
tree() {
  local p
  for p in "$@"; do echo "$p"; pgrep -P "$p" || true; done
}
# memory rss|pss PID...: VmRSS or Pss summed over the processes, in KiB
memory() {
  local key=$1 files=() pid
  shift
  for pid in "$@"; do
    if [ "$key" = rss ]; then files+=("/proc/$pid/status"); else files+=("/proc/$pid/smaps_rollup"); fi
  done
  if [ "$key" = rss ]; then
    awk '/^VmRSS:/ { s += $2 } END { print s + 0 }' "${files[@]}" 2>/dev/null
  else
    awk '/^Pss:/ { s += $2 } END { print s + 0 }' "${files[@]}" 2>/dev/null
  fi
}

sink_port=$(free_port)
echo_port=$(free_port)
start sink "$load" serve --listen "tcp:127.0.0.1:$sink_port" --mode sink
start echo "$load" serve --listen "tcp:127.0.0.1:$echo_port" --mode echo
wait_tcp "$sink_port"
wait_tcp "$echo_port"

# hops KIND: starts the two hops for the sink and the echo server; sets
# hop1 and hop2 (PIDs), in_sink and in_echo (the client-side ports)
hops() {
  local kind=$1 sink_sock=$tmp/$1-sink.sock echo_sock=$tmp/$1-echo.sock
  in_sink=$(free_port)
  in_echo=$(free_port)
  case $kind in
  cloister)
    start cloister-hop2 "$cloister" host --forward "unix:$sink_sock=tcp:127.0.0.1:$sink_port" \
      --forward "unix:$echo_sock=tcp:127.0.0.1:$echo_port"
    hop2=$last
    start cloister-hop1 "$cloister" host --forward "tcp:127.0.0.1:$in_sink=unix:$sink_sock" \
      --forward "tcp:127.0.0.1:$in_echo=unix:$echo_sock"
    hop1=$last
    ;;
  socat*)
    local b=()
    [ "$kind" = socat-b256k ] && b=(-b 262144)
    # one socat per listener; each forks a process per connection
    start "$kind-hop2s" socat "${b[@]}" "UNIX-LISTEN:$sink_sock,fork,backlog=4096" "TCP:127.0.0.1:$sink_port"
    local h2s=$last
    start "$kind-hop2e" socat "${b[@]}" "UNIX-LISTEN:$echo_sock,fork,backlog=4096" "TCP:127.0.0.1:$echo_port"
    hop2="$h2s $last"
    start "$kind-hop1s" socat "${b[@]}" "TCP-LISTEN:$in_sink,bind=127.0.0.1,fork,reuseaddr,backlog=4096" \
      "UNIX-CONNECT:$sink_sock"
    local h1s=$last
    start "$kind-hop1e" socat "${b[@]}" "TCP-LISTEN:$in_echo,bind=127.0.0.1,fork,reuseaddr,backlog=4096" \
      "UNIX-CONNECT:$echo_sock"
    hop1="$h1s $last"
    ;;
  esac
  wait_unix "$sink_sock"
  wait_unix "$echo_sock"
  wait_tcp "$in_sink"
  wait_tcp "$in_echo"
}
unhops() {
  local pid
  for pid in $hop1 $hop2; do stop_pid "$pid"; done
  sleep 0.5 # forked socat children finish with their connections
}

throughput() { # prints the median MB/s of $runs runs
  for _ in $(seq 1 "$runs"); do
    timeout 300 "$load" throughput --connect "tcp:127.0.0.1:$in_sink" --bytes "$bytes" | value mb_per_s ||
      die "throughput run failed"
  done | median
}
rate() {
  timeout $((secs + 60)) "$load" rate --connect "tcp:127.0.0.1:$in_echo" --seconds "$secs" --parallel "$parallel" \
    >"$tmp/rate.out" || die "connection-rate run failed: $(cat "$tmp/rate.out")"
  value conn_per_s <"$tmp/rate.out"
}
# concurrency N: holds N connections; sets rss1 pss1 procs1 (first hop) and
# rss2 pss2 (second hop)
concurrency() {
  local n=$1
  start holder "$load" hold --connect "tcp:127.0.0.1:$in_echo" --count "$n" --hold 600
  local holder=$last
  for _ in $(seq 1 1200); do
    grep -q "^holding $n" "$tmp/holder.log" 2>/dev/null && break
    kill -0 "$holder" 2>/dev/null || die "holding $n connections failed: $(cat "$tmp/holder.log")"
    sleep 0.05
  done
  grep -q "^holding $n" "$tmp/holder.log" || die "holding $n connections timed out"
  local t1 t2
  # shellcheck disable=SC2086
  mapfile -t t1 < <(tree $hop1)
  # shellcheck disable=SC2086
  mapfile -t t2 < <(tree $hop2)
  rss1=$(memory rss "${t1[@]}") pss1=$(memory pss "${t1[@]}") procs1=${#t1[@]}
  rss2=$(memory rss "${t2[@]}") pss2=$(memory pss "${t2[@]}")
  kill -0 "$holder" 2>/dev/null || die "the holding client exited early: $(cat "$tmp/holder.log")"
  stop_pid "$holder"
}

echo "cloister host vs socat, two hops tcp -> unix -> tcp, on $(nproc) cores" >&2
echo "  cloister..." >&2
hops cloister
c_tp=$(throughput)
c_rate=$(rate)
concurrency "$hold"
c_rss1=$rss1 c_pss1=$pss1 c_rss2=$rss2 c_pss2=$pss2 c_procs1=$procs1
unhops

echo "  socat (defaults)..." >&2
hops socat
s_tp=$(throughput)
s_rate=$(rate)
concurrency "$socat_hold"
s_rss1=$rss1 s_pss1=$pss1 s_rss2=$rss2 s_pss2=$pss2 s_procs1=$procs1
unhops

echo "  socat -b 262144 (throughput only)..." >&2
hops socat-b256k
sb_tp=$(throughput)
unhops

ratio() { awk -v a="$1" -v b="$2" 'BEGIN { printf "%.1fx", a / b }'; }
mib() { awk -v k="$1" 'BEGIN { printf "%.1f MiB", k / 1024 }'; }
per_conn() { awk -v k="$1" -v n="$2" 'BEGIN { printf "%.2f KiB", k / n }'; }
{
  echo
  echo "byte forwarding, two hops tcp -> unix -> tcp, $(nproc) cores ($(socat -V | sed -n 's/^socat version \([^ ]*\).*/\1/p' | head -1) socat)"
  printf '%-34s %14s %14s %14s\n' "" "cloister host" "socat" "socat -b 256K"
  printf '%-34s %14s %14s %14s\n' "throughput, MB/s (median of $runs)" "$c_tp" "$s_tp" "$sb_tp"
  printf '%-34s %14s %14s %14s\n' "connections/s (1 KiB each way)" "$c_rate" "$s_rate" "-"
  echo
  echo "concurrent connections held, memory of the first hop (tcp -> unix):"
  printf '  cloister  %6s connections: RSS %s, PSS %s (%s processes; PSS %s per connection)\n' "$hold" \
    "$(mib "$c_rss1")" "$(mib "$c_pss1")" "$c_procs1" "$(per_conn "$c_pss1" "$hold")"
  printf '  socat     %6s connections: RSS %s, PSS %s (%s processes; PSS %s per connection)\n' "$socat_hold" \
    "$(mib "$s_rss1")" "$(mib "$s_pss1")" "$s_procs1" "$(per_conn "$s_pss1" "$socat_hold")"
  printf '  second hop (unix -> tcp): cloister RSS %s / PSS %s, socat RSS %s / PSS %s\n' "$(mib "$c_rss2")" \
    "$(mib "$c_pss2")" "$(mib "$s_rss2")" "$(mib "$s_pss2")"
  echo
  echo "ratio cloister/socat, throughput:       $(ratio "$c_tp" "$s_tp")   (target >= 2x; $(ratio "$c_tp" "$sb_tp") against socat -b 262144)"
  echo "ratio cloister/socat, connections/s:    $(ratio "$c_rate" "$s_rate")   (target >= 2x)"
  echo "cloister, $hold connections held:       RSS $(mib "$c_rss1") (target < 64 MiB)"
} | tee "$build/bench-host.txt"
