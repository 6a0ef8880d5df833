#!/usr/bin/env bash
# The enclave's TAP network against the other two ways out of it, from an
# "enclave" network namespace to a server in an "internet" namespace, with a
# "parent" namespace between them (all made here, removed at exit):
#
#   tap     tap0 in the enclave namespace, its frames over the stream (a unix
#           socket: the vsock stand-in) to cloister host --tap, whose TAP
#           device the parent's kernel routes, masquerade by nftables; with
#           the offload extension (checksum/TSO records, docs/tap.md)
#   tap-plain  the same with gvproxy's plain framing (cloister tap
#           --tap-offload off: what a parent running the real gvproxy gets)
#   proxy   vsock-proxy style: in the enclave namespace a TCP listener that
#           forwards to the stream (cloister host --forward, the enclave half
#           of a vsock-proxy pair), and on the parent cloister host --outbound
#           to the server (the per-destination proxy the TAP replaces); its
#           links are plain unix: sockets, so both halves splice()
#   proxy-nitro  the same pair on vsock: addresses through the vsock stand-in
#           with the Nitro seams (docs/local-vs-nitro.md): a vsock link has no
#           splice_read on Nitro, so the halves copy from the link as they do
#           there (the TAP relays copy in every case)
#   veth    a plain veth pair from a second enclave namespace to the parent,
#           routed and masqueraded by the same kernel: the kernel's limit
#
#   bench/tap.sh BUILD_DIR [--smoke]
#
# For each: TCP throughput down and up (bench/tap_tcp.py: one connection reading,
# or writing, for BENCH_SECONDS after a second of warm-up, MB/s, and the CPU the
# whole machine spent per MB meanwhile), and request latency and
# rate (wrk, BENCH_SECONDS, 1 connection and 16 connections, against a small
# Node.js HTTP server).  The enclave side of the TAP is `cloister tap` when
# this build has it, else tests/integration/tap/peer.py (a Python relay,
# much slower: said in the output).  BENCH_ROUNDS (3) rounds, medians.
# BENCH_PATHS (all) picks paths, e.g. "tap proxy-nitro".
# BENCH_MTU (1500) sets the MTU of every link (tap0 and the parent's device,
# the veths): 9001 is what EC2 gives inside a VPC.
# BENCH_PERF=DIR records a whole-machine perf profile of each path's first
# down and up transfer (3 s of it) into DIR and splits each path's CPU per
# MB into the time spent copying bytes (the kernel's copy routines, memcpy)
# and everything else: where a path's cost comes from.
# Needs root (namespaces, TAP).  The table is written to BUILD_DIR/bench-tap.txt.
set -euo pipefail
build=${1:?usage: bench/tap.sh BUILD_DIR [--smoke]}
build=$(cd "$build" && pwd)
src=$(cd "$(dirname "$0")/.." && pwd)
cloister=$build/cloister
secs=${BENCH_SECONDS:-5}
mtu=${BENCH_MTU:-1500} # of every link: 9001 is EC2's inside a VPC
rounds=${BENCH_ROUNDS:-3}
[ "${2:-}" = --smoke ] && { secs=1; rounds=1; }
[ "$(id -u)" = 0 ] || { echo "bench-tap: needs root (network namespaces, TAP devices)" >&2; exit 2; }
export CLOISTER_NO_VSOCK=1

work=$(mktemp -d /tmp/cloister-bench-tap.XXXXXX)
suffix="$$"
E="clb-e-$suffix" E2="clb-v-$suffix" P="clb-p-$suffix" I="clb-i-$suffix"
pids=()
cleanup() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  for p in "${pids[@]}"; do wait "$p" 2>/dev/null || true; done
  for ns in "$E" "$E2" "$P" "$I"; do ip netns del "$ns" 2>/dev/null || true; done
  rm -rf "$work"
}
trap cleanup EXIT
bg() { local log=$1; shift; "$@" >"$work/$log.log" 2>&1 & pids+=($!); }
wait_log() {
  for _ in $(seq 1 200); do grep -qE "$2" "$work/$1.log" 2>/dev/null && return 0; sleep 0.05; done
  echo "bench-tap: $1 did not log /$2/:" >&2; tail -20 "$work/$1.log" >&2; exit 1
}

for ns in "$E" "$E2" "$P" "$I"; do ip netns add "$ns"; ip -n "$ns" link set lo up; done
ip -n "$P" link add vp0 type veth peer name vi0 netns "$I"
ip -n "$P" link set vp0 mtu "$mtu"; ip -n "$I" link set vi0 mtu "$mtu"
ip -n "$P" addr add 10.250.0.1/24 dev vp0; ip -n "$P" link set vp0 up
ip -n "$I" addr add 10.250.0.2/24 dev vi0; ip -n "$I" link set vi0 up
ip -n "$P" link add ve0 type veth peer name ve1 netns "$E2"
ip -n "$P" link set ve0 mtu "$mtu"; ip -n "$E2" link set ve1 mtu "$mtu"
ip -n "$P" addr add 192.168.200.1/24 dev ve0; ip -n "$P" link set ve0 up
ip -n "$E2" addr add 192.168.200.2/24 dev ve1; ip -n "$E2" link set ve1 up
ip -n "$E2" route add default via 192.168.200.1
ip netns exec "$P" nft -f - <<'NFT'
table ip clbench {
  chain post { type nat hook postrouting priority srcnat; policy accept; ip saddr 192.168.200.0/24 oifname "vp0" masquerade; }
}
NFT

# the internet's servers
bg tcp ip netns exec "$I" python3 "$src/bench/tap_tcp.py" serve 10.250.0.2 5001
bg sink ip netns exec "$I" python3 "$src/bench/tap_tcp.py" sink 10.250.0.2 5002
bg http ip netns exec "$I" node -e '
  require("http").createServer((q, s) => { s.setHeader("Content-Type", "text/plain"); s.end("hello from the internet\n"); })
    .listen(8080, "10.250.0.2", () => console.log("http: listening"));'
wait_log tcp 'listening'
wait_log sink 'listening'
wait_log http 'listening'

# the parent: the TAP bridge, and the outbound proxy
bg host ip netns exec "$P" "$cloister" host --tap "unix:$work/tap.sock" --tap-dns off --tap-mtu "$mtu" \
  --outbound "unix:$work/out-tcp.sock=10.250.0.2:5001" --outbound "unix:$work/out-up.sock=10.250.0.2:5002" --outbound "unix:$work/out-http.sock=10.250.0.2:8080"
wait_log host 'event=tap-ready'
wait_log host 'event=started'

# the enclave: its TAP relay, and the enclave halves of the proxy pairs
relay="tests/integration/tap/peer.py (Python)"
paths="tap proxy veth"
relay_pid=
relay_n=0
start_relay() { # auto|off: the offload extension offered or not
  if [ -n "$relay_pid" ]; then kill "$relay_pid"; wait "$relay_pid" 2>/dev/null || true; fi
  relay_n=$((relay_n + 1))
  bg "relay$relay_n" ip netns exec "$E" "$cloister" tap --tap-parent "unix:$work/tap.sock" --tap-resolv-conf "" \
    --tap-mtu "$mtu" --tap-offload "$1"
  relay_pid=$!
  wait_log "relay$relay_n" 'event=tap_connected'
  local want=vnet-v1; [ "$1" = off ] && want=off
  grep -q "event=tap_connected.*offload=$want" "$work/relay$relay_n.log" ||
    { echo "bench-tap: the relay did not connect with offload=$want:" >&2; cat "$work/relay$relay_n.log" >&2; exit 1; }
  for _ in $(seq 1 100); do ip netns exec "$E" curl -sf --max-time 1 http://10.250.0.2:8080/ >/dev/null && break; sleep 0.1; done
}
if "$cloister" tap --help 2>&1 | grep -c tap-offload >/dev/null; then
  relay="cloister tap"
  paths="tap tap-plain proxy veth"
  start_relay auto
elif "$cloister" tap --help >/dev/null 2>&1; then
  relay="cloister tap"
  bg relay ip netns exec "$E" "$cloister" tap --tap-parent "unix:$work/tap.sock" --tap-resolv-conf "" --tap-mtu "$mtu"
  wait_log relay 'event=tap_connected'
else
  bg relay ip netns exec "$E" python3 -u "$src/tests/integration/tap/peer.py" --connect "$work/tap.sock" --dev tap0
  wait_log relay 'tap0 ready'
  ip -n "$E" link set tap0 mtu "$mtu"
  ip -n "$E" addr add 192.168.127.2/24 dev tap0
  ip -n "$E" link set tap0 up
  ip -n "$E" route add default via 192.168.127.1
fi
bg enc_fwd ip netns exec "$E" "$cloister" host --forward "tcp:127.0.0.1:5001=unix:$work/out-tcp.sock" \
  --forward "tcp:127.0.0.1:5002=unix:$work/out-up.sock" \
  --forward "tcp:127.0.0.1:8080=unix:$work/out-http.sock"
wait_log enc_fwd 'event=started'
# proxy-nitro: the pair again, on vsock addresses as on Nitro (parent CID 3, enclave CID 16)
export CLOISTER_VSOCK_STANDIN=$work/vsock
mkdir -p "$CLOISTER_VSOCK_STANDIN"
bg host_nitro ip netns exec "$P" env CLOISTER_VSOCK_STANDIN_CID=3 CLOISTER_LINK_NO_SPLICE=1 "$cloister" host \
  --outbound "vsock:3:8101=10.250.0.2:5001" --outbound "vsock:3:8102=10.250.0.2:5002" \
  --outbound "vsock:3:8103=10.250.0.2:8080"
wait_log host_nitro 'event=started'
bg enc_fwd_nitro ip netns exec "$E" env CLOISTER_VSOCK_STANDIN_CID=16 CLOISTER_LINK_NO_SPLICE=1 CLOISTER_LINK_NO_PEEK=1 \
  "$cloister" host --forward "tcp:127.0.0.1:15001=vsock:3:8101" --forward "tcp:127.0.0.1:15002=vsock:3:8102" \
  --forward "tcp:127.0.0.1:18080=vsock:3:8103"
wait_log enc_fwd_nitro 'event=started'
paths="${paths/proxy/proxy proxy-nitro}"
paths=${BENCH_PATHS:-$paths} # e.g. BENCH_PATHS="tap veth" for a shorter run
for _ in $(seq 1 100); do ip netns exec "$E" curl -sf --max-time 1 http://10.250.0.2:8080/ >/dev/null && break; sleep 0.1; done
ip netns exec "$E" curl -sf --max-time 5 http://127.0.0.1:18080/ >/dev/null ||
  { echo "bench-tap: the proxy-nitro pair does not answer:" >&2; tail -5 "$work/host_nitro.log" "$work/enc_fwd_nitro.log" >&2; exit 1; }

median() { sort -n | awk '{a[NR]=$1} END {if (NR == 0) print "-"; else print a[int((NR + 1) / 2)]}'; }
declare -A thr up lat1 rps1 lat16 rps16 cpu cpuup
path_ns() { case $1 in tap | tap-plain | proxy | proxy-nitro) echo "$E" ;; veth) echo "$E2" ;; esac; }
path_host() { case $1 in proxy | proxy-nitro) echo 127.0.0.1 ;; *) echo 10.250.0.2 ;; esac; }
path_port() { case $1 in proxy-nitro) echo $((10000 + $2)) ;; *) echo "$2" ;; esac; } # PATH PORT
wrk_run() { # NS URL CONNS -> "p50_ms p99_ms rps"
  ip netns exec "$1" wrk -t1 -c"$3" -d"${secs}s" --latency "$2" 2>/dev/null | awk '
    function ms(v) { if (v ~ /us$/) return v / 1000; if (v ~ /ms$/) return v + 0; if (v ~ /s$/) return v * 1000; return v }
    /^ +50%/ {p50 = ms($2)} /^ +99%/ {p99 = ms($2)} /^Requests\/sec/ {rps = $2}
    END {printf "%.3f %.3f %.0f\n", p50, p99, rps}'
}
perf_dir=${BENCH_PERF:-}
if [ -n "$perf_dir" ]; then
  command -v perf >/dev/null || { echo "bench-tap: BENCH_PERF needs perf (Debian: linux-perf)" >&2; exit 2; }
  [ "$secs" -ge 4 ] || { echo "bench-tap: BENCH_PERF needs BENCH_SECONDS of 4 or more" >&2; exit 2; }
  mkdir -p "$perf_dir"; perf_dir=$(cd "$perf_dir" && pwd)
fi
transfer() { # ROUND PATH get|put NS HOST PORT -> "MBPS CPU_MS_PER_MB STEAL_PCT", profiled in round 1 with BENCH_PERF
  local pp=
  if [ -n "$perf_dir" ] && [ "$1" = 1 ]; then
    # from 1.5 s (after the warm-up second) for 3 s, inside the counted seconds
    (sleep 1.5; exec perf record -a -q -o "$perf_dir/$2-$3.data" -- sleep 3 >/dev/null 2>&1) & pp=$!
  fi
  ip netns exec "$4" python3 "$src/bench/tap_tcp.py" "$3" "$5" "$6" "$secs"
  [ -z "$pp" ] || wait "$pp" || true
}
copy_share() { # PERF_DATA -> "COPY_PCT_OF_BUSY BUSY_PCT"
  perf report -i "$1" --no-children --sort comm,sym --stdio 2>/dev/null | awk '
    /^#/ || NF < 4 {next}
    {pct = $1; sub(/%/, "", pct); total += pct
     if ($2 == "swapper") idle += pct
     else if ($NF ~ /copy_(to|from)_iter|copy_page_(to|from)_iter|copy_user|memcpy|memmove|rep_movs/) copy += pct}
    END {busy = total - idle; if (busy > 0) printf "%.0f %.0f\n", 100 * copy / busy, busy; else print "- -"}'
}
for round in $(seq 1 "$rounds"); do
  for path in $paths; do
    ns=$(path_ns $path) h=$(path_host $path)
    case $path in tap) [ "$round" = 1 ] || start_relay auto ;; tap-plain) start_relay off ;; esac
    read -r mbps cpu steal < <(transfer "$round" "$path" get "$ns" "$h" "$(path_port $path 5001)")
    echo "$mbps" >>"$work/thr.$path"; echo "$cpu" >>"$work/cpu.$path"; echo "$steal" >>"$work/steal"
    read -r mbps cpu steal < <(transfer "$round" "$path" put "$ns" "$h" "$(path_port $path 5002)")
    echo "$mbps" >>"$work/up.$path"; echo "$cpu" >>"$work/cpuup.$path"; echo "$steal" >>"$work/steal"
    read -r p50 p99 rps < <(wrk_run "$ns" "http://$h:$(path_port $path 8080)/" 1)
    echo "$p50" >>"$work/lat1.$path"; echo "$rps" >>"$work/rps1.$path"
    read -r p50 p99 rps < <(wrk_run "$ns" "http://$h:$(path_port $path 8080)/" 16)
    echo "$p99" >>"$work/lat16.$path"; echo "$rps" >>"$work/rps16.$path"
  done
done
for path in $paths; do
  thr[$path]=$(median <"$work/thr.$path"); up[$path]=$(median <"$work/up.$path"); lat1[$path]=$(median <"$work/lat1.$path")
  rps1[$path]=$(median <"$work/rps1.$path"); lat16[$path]=$(median <"$work/lat16.$path")
  rps16[$path]=$(median <"$work/rps16.$path")
  cpu[$path]=$(median <"$work/cpu.$path"); cpuup[$path]=$(median <"$work/cpuup.$path")
done
set +u # with BENCH_PATHS, a ratio to a path not run is "-"
ratio() { awk -v a="$1" -v b="$2" 'BEGIN { if (b > 0) printf "%.2f", a / b; else print "-" }'; }
{
  echo "bench/tap.sh: enclave namespace -> internet namespace, $rounds round(s) of ${secs} s, medians; MTU $mtu; enclave relay: $relay"
  printf "%-10s %12s %12s %14s %12s %15s %13s\n" path "TCP MB/s" "up MB/s" "p50 ms (c=1)" "req/s (c=1)" "p99 ms (c=16)" "req/s (c=16)"
  for path in $paths; do
    printf "%-10s %12s %12s %14s %12s %15s %13s\n" "$path" "${thr[$path]}" "${up[$path]}" "${lat1[$path]}" "${rps1[$path]}" "${lat16[$path]}" "${rps16[$path]}"
  done
  echo "CPU per MB moved (the whole machine's user+system+irq+softirq time over the counted seconds, ms/MB; lower is"
  echo "cheaper, and it swings far less than MB/s on a shared machine), down / up; hypervisor steal during the transfers:" \
       "median $(median <"$work/steal")%, max $(sort -n "$work/steal" | tail -n 1)%"
  for path in $paths; do
    printf "%-12s %7s / %-7s" "$path" "${cpu[$path]}" "${cpuup[$path]}"
    [ "$path" = tap ] || printf "   tap/%s: %s / %s" "$path" "$(ratio "${cpu[tap]}" "${cpu[$path]}")" "$(ratio "${cpuup[tap]}" "${cpuup[$path]}")"
    echo
  done
  echo "tap/veth: throughput $(ratio "${thr[tap]}" "${thr[veth]}"), up $(ratio "${up[tap]}" "${up[veth]}"), req/s c=16 $(ratio "${rps16[tap]}" "${rps16[veth]}");" \
       "tap/proxy: throughput $(ratio "${thr[tap]}" "${thr[proxy]}"), up $(ratio "${up[tap]}" "${up[proxy]}"), req/s c=16 $(ratio "${rps16[tap]}" "${rps16[proxy]}")"
  echo "tap/proxy-nitro (the proxy pair copying from its links as on Nitro): throughput $(ratio "${thr[tap]}" "${thr[proxy-nitro]}")," \
       "up $(ratio "${up[tap]}" "${up[proxy-nitro]}"), req/s c=1 $(ratio "${rps1[tap]}" "${rps1[proxy-nitro]}"), req/s c=16 $(ratio "${rps16[tap]}" "${rps16[proxy-nitro]}")"
  if [ -n "$perf_dir" ]; then
    echo "Where the CPU per MB goes (perf, 3 s of each path's first transfer, $perf_dir): the share of the busy"
    echo "samples in the kernel's copy routines and memcpy, and that share of the CPU per MB, down / up"
    for path in $paths; do
      read -r cd bd < <(copy_share "$perf_dir/$path-get.data"); read -r cu bu < <(copy_share "$perf_dir/$path-put.data")
      printf "%-12s copying %3s%% / %3s%% of the busy time (%s%% / %s%% of the machine busy):" "$path" "$cd" "$cu" "$bd" "$bu"
      printf " %s / %s ms/MB copying, %s / %s ms/MB the rest\n" \
        "$(awk -v c="$cd" -v m="${cpu[$path]}" 'BEGIN { printf "%.3f", m * c / 100 }')" \
        "$(awk -v c="$cu" -v m="${cpuup[$path]}" 'BEGIN { printf "%.3f", m * c / 100 }')" \
        "$(awk -v c="$cd" -v m="${cpu[$path]}" 'BEGIN { printf "%.3f", m * (100 - c) / 100 }')" \
        "$(awk -v c="$cu" -v m="${cpuup[$path]}" 'BEGIN { printf "%.3f", m * (100 - c) / 100 }')"
    done
  fi
  stat() { ip netns exec "$1" cat "/sys/class/net/$2/statistics/$3" 2>/dev/null || echo -; } # NS DEV COUNTER
  echo "TAP queues over the run: the parent's cloister0 dropped $(stat "$P" cloister0 tx_dropped) of" \
       "$(stat "$P" cloister0 tx_packets) frames toward the enclave, the enclave's tap0 $(stat "$E" tap0 tx_dropped) of" \
       "$(stat "$E" tap0 tx_packets) toward the parent"
  if [ -n "${thr[tap-plain]:-}" ]; then
    echo "tap-plain/veth: throughput $(ratio "${thr[tap-plain]}" "${thr[veth]}");" \
         "tap-plain/proxy: throughput $(ratio "${thr[tap-plain]}" "${thr[proxy]}");" \
         "tap/tap-plain: throughput $(ratio "${thr[tap]}" "${thr[tap-plain]}"), up $(ratio "${up[tap]}" "${up[tap-plain]}")"
  fi
} | tee "$build/bench-tap.txt"
