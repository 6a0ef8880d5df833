#!/usr/bin/env bash
# ACME: time from `cloister enclave -acme` starting to serving a
# Pebble-issued certificate, on a first start (an empty --acme-store: the
# enclave makes an account, orders, answers tls-alpn-01, finalizes,
# downloads, stores the record with both keys as KMS ciphertexts) and on a
# restart (the record is read, its keys opened by KMS Decrypt with a
# Recipient through the host, no order).
#
#   bench/acme.sh BUILD_DIR          RUNS (default 3) of each
#
# The parent's side is the acme_store test's (tests/integration/acme/
# store_env.bash: imds-sim, kms-local over TLS, cloister host file-store, all
# through the vsock stand-in) and Debian's Pebble with PEBBLE_VA_NOSLEEP=1.
# Measured per run from just before the enclave's exec to the first new
# connection whose chain curl verifies with Pebble's root (polled every
# 20 ms).  The enclave runs with its defaults (polls of the order and
# authorization every 1 s unless the CA says otherwise).  Every process
# started here is stopped by PID on exit.
set -euo pipefail
build=${1:?usage: bench/acme.sh BUILD_DIR}
export CLOISTER
CLOISTER=$(cd "$build" && pwd)/cloister
src=$(cd "$(dirname "$0")/.." && pwd)
runs=${RUNS:-3}
source "$src/tests/integration/common.bash"
source "$src/tests/integration/acme/pebble.bash"
source "$src/tests/integration/acme/store_env.bash"
pebble_available

start_store_env
tls=$(free_port)
start_pebble "$tls" "$(free_port)"
pebble_root "$work/root.pem"
args=(-fqdn "$ACME_FQDN" --nsm "unix:$work/nsm.sock" --listen "tcp:127.0.0.1:$tls" -intport "$(free_port)"
    -acme --acme-directory "$pebble_directory" --acme-ca-file "$work/pebble-ca.pem" "${ACME_STORE_FLAGS[@]}")

# one run: ms from spawn to the first verified connection
run_once() { # NAME
    local t0 t1
    t0=$(date +%s%N)
    spawn "$1" "$CLOISTER" enclave "${args[@]}"
    for _ in $(seq 1 3000); do
        if curl -sf --max-time 2 --cacert "$work/root.pem" --resolve "$ACME_FQDN:$tls:127.0.0.1" \
            "https://$ACME_FQDN:$tls/enclave" -o /dev/null 2>/dev/null; then
            t1=$(date +%s%N)
            stop "$1" || true
            echo $(((t1 - t0) / 1000000))
            return
        fi
        kill -0 "${pids[$1]}" 2>/dev/null || fail "$1 exited"
        sleep 0.02
    done
    fail "$1 never served a Pebble-issued certificate"
}

median() { tr ' ' '\n' | sort -n | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}'; }
first=() restart=()
for i in $(seq 1 "$runs"); do
    rm -f "$work/acme-files"/*
    first+=("$(run_once "first$i")")
    restart+=("$(run_once "restart$i")")
    echo "run $i: first start ${first[-1]} ms, restart from the store ${restart[-1]} ms"
done
orders=$(pebble_orders)
echo "ACME, start to serving a Pebble-issued certificate (median of $runs; Pebble saw $orders orders):"
echo "  first start (account, order, tls-alpn-01, finalize, store)  $(echo "${first[*]}" | median) ms"
echo "  restart from --acme-store file: (KMS Decrypt, no order)     $(echo "${restart[*]}" | median) ms"
