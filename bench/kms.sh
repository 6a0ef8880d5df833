#!/usr/bin/env bash
# KMS Decrypt-with-Recipient round trips from the enclave's side through the host's outbound
# proxy to `cloister kms-local`, and where the time goes.
#
#   bench/kms.sh BUILD_DIR            full run (bench/run.sh, i.e. make bench, runs it)
#   bench/kms.sh BUILD_DIR --smoke    one second per case: checks that it works
#
# Set-up as in tests/integration/kms_client.sh: cloister nsm-sim (documents), cloister kms-local
# --tls on 127.0.0.1, `cloister host --outbound unix:RUN/kms.sock=127.0.0.1:PORT` standing in for
# vsock:3:8000. The client is bench/bench_kms (libcloister's KMS client), each thread with its own
# RSA-2048 session key and kept-alive TLS connection. Cases (BENCH_SECONDS each, default 5):
#   recipient, proxy          Decrypt with a Recipient through the proxy: the enclave's call
#   recipient, proxy, 4 thr.  the same from 4 threads at once
#   recipient, new conn.      a new TCP+TLS connection per call
#   recipient, direct         straight to kms-local's TCP port (no proxy hop)
#   plain, proxy              Decrypt without a Recipient (KMS returns Plaintext): the baseline
# Time per call, as the client measures it: attestation (the NSM document), RSA (opening the
# CMS envelope: RSA-OAEP + AES), network (the HTTP exchange, including the proxy, TLS and
# kms-local's own work: SigV4, policy, verifying the document, sealing the envelope). The table
# is also written to BUILD_DIR/bench-kms.txt.
set -euo pipefail

build=${1:?usage: bench/kms.sh BUILD_DIR [--smoke]}
build=$(cd "$build" && pwd)
seconds=${BENCH_SECONDS:-5}
[ "${2:-}" = --smoke ] && seconds=1
cloister=$build/cloister
bench=$build/bench/bench_kms
[ -x "$cloister" ] && [ -x "$bench" ] || { echo "bench: build $cloister and $bench first" >&2; exit 1; }

tmp=$(mktemp -d)
pids=()
cleanup() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  for p in "${pids[@]}"; do wait "$p" 2>/dev/null || true; done
  rm -rf "$tmp"
}
trap cleanup EXIT
wait_for() { # FILE PATTERN
  for _ in $(seq 1 200); do grep -qE "$2" "$1" 2>/dev/null && return 0; sleep 0.05; done
  echo "bench: no /$2/ in $1:" >&2; cat "$1" >&2; exit 1
}
port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

"$cloister" nsm-sim --listen "unix:$tmp/nsm.sock" --state "$tmp/sim" >"$tmp/sim.log" 2>&1 &
pids+=($!)
wait_for "$tmp/sim.log" '^nsm-sim: listening'
kp=$(port)
"$cloister" kms-local --listen "tcp:127.0.0.1:$kp" --state "$tmp/kms" --tls --region us-east-1 \
  --credentials AKIABENCH0000000000:bench-secret --root "$tmp/sim/root.pem" --key alias/bench >"$tmp/kms.log" 2>&1 &
pids+=($!)
wait_for "$tmp/kms.log" '^kms-local: listening'
"$cloister" host --outbound "unix:$tmp/kms.sock=127.0.0.1:$kp" >"$tmp/host.log" 2>&1 &
pids+=($!)
wait_for "$tmp/host.log" 'event=started'

head -c 32 /dev/urandom >"$tmp/key.bin"
"$cloister" kms --region us-east-1 --endpoint "https://localhost:$kp" --ca-file "$tmp/kms/ca.pem" \
  --access-key-id AKIABENCH0000000000 --secret-access-key bench-secret encrypt --key-id alias/bench \
  --in "$tmp/key.bin" >"$tmp/ct"

common=(--region us-east-1 --key AKIABENCH0000000000 --secret bench-secret --ca-file "$tmp/kms/ca.pem"
        --ciphertext "$tmp/ct" --seconds "$seconds")
via=(--proxy "unix:$tmp/kms.sock")
rows=()
run_case() { # LABEL ARGS...
  local label=$1
  shift
  local line
  line=$("$bench" "${common[@]}" "$@") || { echo "bench: $label failed" >&2; exit 1; }
  rows+=("$label|$line")
  echo "  $label: $line"
}
echo "KMS Decrypt round trips, ${seconds} s per case ($(nproc) cores)"
run_case "recipient, proxy" "${via[@]}" --nsm "unix:$tmp/nsm.sock"
run_case "recipient, proxy, 4 threads" "${via[@]}" --nsm "unix:$tmp/nsm.sock" --threads 4
run_case "recipient, new connection" "${via[@]}" --nsm "unix:$tmp/nsm.sock" --new-connection
run_case "recipient, direct" --proxy "tcp:127.0.0.1:$kp" --nsm "unix:$tmp/nsm.sock"
run_case "plain, proxy" "${via[@]}"

python3 - "$build/bench-kms.txt" "${rows[@]}" <<'EOF'
import sys
out, rows = sys.argv[1], sys.argv[2:]
lines = ["| case | calls/s | ms/call | attestation | RSA | network | other |", "|---|---|---|---|---|---|---|"]
keygen = None
for r in rows:
    label, kv = r.split("|", 1)
    f = dict(x.split("=") for x in kv.split())
    mean = float(f["mean_ms"])
    share = lambda k: f'{float(f[k]):.2f} ms ({100 * float(f[k]) / mean:.0f}%)' if mean else "-"
    lines.append(f"| {label} | {float(f['per_s']):.0f} | {mean:.2f} | {share('attestation_ms')} | "
                 f"{share('rsa_ms')} | {share('network_ms')} | {share('other_ms')} |")
    if float(f["keygen_ms"]) > 0 and keygen is None:
        keygen = float(f["keygen_ms"])
if keygen is not None:
    lines.append("")
    lines.append(f"RSA-2048 session key generation (once per session): {keygen:.0f} ms")
text = "\n".join(lines)
print(text)
open(out, "w").write(text + "\n")
EOF
