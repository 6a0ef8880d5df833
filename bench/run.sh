#!/usr/bin/env bash
# Attestation verification benchmark: cloister (C, libcloister) against an
# independent straightforward verifier in Node.js (tests/node/verify.js),
# over the same documents in one run.
#
#   bench/run.sh BUILD_DIR        (make bench runs: bench/run.sh build)
#
# Starts `cloister nsm-sim` in a temporary directory, asks it for DOCS
# (default 500) documents with distinct nonces from one simulated enclave,
# verifies all of them ROUNDS (default 5) times in one process with each
# implementation, each document at its own timestamp, and prints
# documents/second and the ratio.  Then times one real AWS document's
# verification (nitro-2024-09-07-maxfields.b64 at its timestamp, AWS root)
# (tests/vectors/nitro).  Then, unless BENCH_PROXY=0, the TLS
# reverse-proxy benchmark against nginx and haproxy (bench/proxy.sh), then (unless BENCH_KMS=0)
# KMS Decrypt with a Recipient through the host proxy to kms-local (bench/kms.sh).
set -euo pipefail

build=${1:?usage: bench/run.sh BUILD_DIR}
build=$(cd "$build" && pwd)
src=$(cd "$(dirname "$0")/.." && pwd)
docs_n=${DOCS:-500}
rounds=${ROUNDS:-5}
cloister=$build/cloister
bench=$build/bench/bench_verify
node_bench=$src/bench/verify-node.js

die() {
  echo "bench: $*" >&2
  exit 1
}
[ -x "$cloister" ] || die "$cloister is not built"
[ -x "$bench" ] || die "$bench is not built"
command -v node >/dev/null || die "node is not installed (scripts/deps.sh installs it)"
[ -d "$src/tests/node/node_modules/cbor" ] || die "tests/node/node_modules is missing: run scripts/node-deps.sh"

tmp=$(mktemp -d)
sim_pid=
cleanup() {
  if [ -n "$sim_pid" ]; then
    kill "$sim_pid" 2>/dev/null || true
    wait "$sim_pid" 2>/dev/null || true
  fi
  rm -rf "$tmp"
}
trap cleanup EXIT

sock=$tmp/nsm.sock
mkdir -p "$tmp/state" "$tmp/docs"
"$cloister" nsm-sim --listen "unix:$sock" --state "$tmp/state" >"$tmp/sim.log" 2>&1 &
sim_pid=$!
for _ in $(seq 1 100); do
  [ -S "$sock" ] && [ -s "$tmp/state/root.pem" ] && break
  kill -0 "$sim_pid" 2>/dev/null || { cat "$tmp/sim.log" >&2; die "nsm-sim exited"; }
  sleep 0.1
done
[ -S "$sock" ] || die "nsm-sim did not start"
root=$tmp/state/root.pem

echo "generating $docs_n documents from one simulated enclave..."
for i in $(seq 1 "$docs_n"); do
  printf '%s\n' "$i"
done | xargs -P 4 -I{} sh -c '
  timeout 30 "$1" attest request --nsm "unix:$2" --nonce "$(printf "%064x" "$3")" -o "$4/doc-$3.cbor"
' sh "$cloister" "$sock" {} "$tmp/docs" || die "attest request failed"
files=("$tmp"/docs/doc-*.cbor)
[ "${#files[@]}" -eq "$docs_n" ] || die "expected $docs_n documents, got ${#files[@]}"
kill "$sim_pid" && wait "$sim_pid" 2>/dev/null || true
sim_pid=

# value KEY < RESULT line
value() { sed -n "s/^RESULT .*\b$1=\([^ ]*\).*/\1/p"; }

echo "verifying ($rounds rounds each)..."
"$bench" --root "$root" --rounds "$rounds" "${files[@]}" >"$tmp/c.out"
"$bench" --root "$root" --rounds "$rounds" --no-cache "${files[@]}" >"$tmp/c0.out"
timeout 600 node "$node_bench" --root "$root" --rounds "$rounds" "${files[@]}" >"$tmp/node.out"

row() {
  printf '%-28s %12s %12s %12s\n' "$1" "$(value first_per_s <"$2")" "$(value steady_per_s <"$2")" \
    "$(value overall_per_s <"$2")"
}
echo
echo "$docs_n simulator documents x $rounds rounds, each verified in full at its own timestamp"
printf '%-28s %12s %12s %12s\n' "documents/s" "first round" "later rounds" "overall"
row "cloister (cert cache)" "$tmp/c.out"
row "cloister (cache disabled)" "$tmp/c0.out"
row "node verify.js ($(node --version))" "$tmp/node.out"
ratio() { awk -v a="$1" -v b="$2" 'BEGIN { printf "%.1fx", a / b }'; }
c_all=$(value overall_per_s <"$tmp/c.out")
c0_all=$(value overall_per_s <"$tmp/c0.out")
n_all=$(value overall_per_s <"$tmp/node.out")
n_steady=$(value steady_per_s <"$tmp/node.out")
c_first=$(value first_per_s <"$tmp/c.out")
echo
echo "ratio cloister/node, overall:            $(ratio "$c_all" "$n_all")   (target >= 3x)"
echo "ratio cloister/node, first round:        $(ratio "$c_first" "$(value first_per_s <"$tmp/node.out")")"
echo "ratio cloister without cache/node:       $(ratio "$c0_all" "$n_all")"

maxfields=$src/tests/vectors/nitro/nitro-2024-09-07-maxfields.b64
aws_root=$src/tests/vectors/nitro/aws-nitro-root-g1.pem
if [ -f "$maxfields" ]; then
  echo
  echo "one real AWS document (nitro-2024-09-07-maxfields.b64, at its timestamp, AWS root):"
  "$bench" --single "$maxfields" --root "$aws_root" --runs 200 | grep -v '^RESULT' | tail -n 3
  node "$node_bench" --root "$aws_root" --rounds 200 "$maxfields" >"$tmp/node1.out"
  awk -v r="$(value steady_per_s <"$tmp/node1.out")" \
    'BEGIN { printf "  node verify.js:  %8.1f us per verification\n", 1e6 / r }'
else
  echo "FAIL: $maxfields is missing (tests/vectors is part of the repository)" >&2
  exit 1
fi

if [ "${BENCH_PROXY:-1}" != 0 ]; then
  echo
  echo "TLS reverse proxy: cloister enclave, nginx, haproxy (bench/proxy.sh)"
  "$src/bench/proxy.sh" "$build"
fi

if [ "${BENCH_HOST:-1}" != 0 ]; then
  echo
  echo "byte forwarding: cloister host against socat (bench/host.sh)"
  "$src/bench/host.sh" "$build"
fi

if [ "${BENCH_KMS:-1}" != 0 ]; then
  echo
  echo "KMS Decrypt with a Recipient through the host proxy to kms-local (bench/kms.sh)"
  "$src/bench/kms.sh" "$build"
fi

if [ "${BENCH_PKCS11:-1}" != 0 ]; then
  echo
  echo "nginx handshakes with the key in a file, the cloister token, SoftHSM2 (bench/pkcs11.sh)"
  "$src/bench/pkcs11.sh" "$build"
fi
