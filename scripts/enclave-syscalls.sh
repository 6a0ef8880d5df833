#!/usr/bin/env bash
# The system calls `cloister enclave` makes while it serves, for keeping
# lib/enclave/syscall_filter.c's list right: the daemon (without a filter)
# under `strace -f -c` with nsm-sim, an app, HTTPS, h2, attestation,
# metrics and a drain (POST /enclave/drain); prints strace's table and the
# calls it saw that the list does not name (expect only the start's:
# execve, set*id, the interface ioctls...).  Needs strace, curl, python3.
#   scripts/enclave-syscalls.sh [BUILD_DIR]
set -euo pipefail
cd "$(dirname "$0")/.."
src=$PWD
build=$(cd "${1:-build}" && pwd)
command -v strace >/dev/null || { echo "enclave-syscalls: needs strace (apt-get install strace)" >&2; exit 2; }
export CLOISTER_NO_VSOCK=1
work=$(mktemp -d /tmp/cloister-syscalls.XXXXXX)
pids=()
trap 'for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; rm -rf "$work"' EXIT
port() { python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }
"$build/cloister" nsm-sim --listen "unix:$work/nsm.sock" --state "$work/state" >"$work/sim.log" 2>&1 &
pids+=($!)
app=$(port) pub=$(port) ip=$(port) mp=$(port) hp=$(port)
python3 -m http.server --bind 127.0.0.1 "$app" --directory "$src/docs" >/dev/null 2>&1 &
pids+=($!)
for _ in $(seq 100); do [ -S "$work/nsm.sock" ] && break; sleep 0.05; done
strace -f -c -o "$work/counts" "$build/cloister" enclave -fqdn localhost --nsm "unix:$work/nsm.sock" \
    --listen "tcp:127.0.0.1:$pub" -intport "$ip" -appwebsrv "http://127.0.0.1:$app" \
    -prometheus-listen "tcp:127.0.0.1:$mp" -health-listen "tcp:127.0.0.1:$hp" -drain-grace 0 >"$work/enclave.log" 2>&1 &
daemon=$!
for _ in $(seq 200); do grep -q 'listener=public' "$work/enclave.log" && break; sleep 0.05; done
url="https://127.0.0.1:$pub"
for _ in 1 2 3; do
    curl -sk --http1.1 "$url/figures.md" -o /dev/null
    curl -sk --http2 "$url/figures.md" -o /dev/null
    curl -sk "$url/enclave/attestation?nonce=$(head -c 20 /dev/urandom | od -An -tx1 | tr -d ' \n')" -o /dev/null
    curl -s "http://127.0.0.1:$mp/metrics" -o /dev/null
done
"$build/cloister" verify "$url" --root "$work/state/root.pem" >/dev/null || echo "warning: verify failed" >&2
curl -s -X POST "http://127.0.0.1:$hp/enclave/drain" -o /dev/null
wait "$daemon" || true
cat "$work/counts"
listed=$(grep -o '"[a-z0-9_]*"' "$src/lib/enclave/syscall_filter.c" | tr -d '"' | sort -u)
echo "seen but not in lib/enclave/syscall_filter.c's list (start-only calls are expected here):"
awk 'NR > 2 && $NF ~ /^[a-z_0-9]+$/ && $NF != "total" { print $NF }' "$work/counts" | sort -u |
    while read -r call; do
        case "$call" in socket|ioctl|kill) continue ;; esac
        grep -qx "$call" <<<"$listed" || echo "  $call"
    done
