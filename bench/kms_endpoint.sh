#!/usr/bin/env bash
# The app's KMS endpoint (`cloister enclave -kms-for-app`) against cloister's own KMS client doing
# the same Decrypt with a Recipient in process: what the endpoint costs an app.
#
#   bench/kms_endpoint.sh BUILD_DIR            BENCH_ROUNDS (3) rounds of BENCH_SECONDS (3) per case
#   bench/kms_endpoint.sh BUILD_DIR --smoke    one second per case: checks that it works
#
# Set-up as bench/kms.sh: cloister nsm-sim, kms-local --tls on 127.0.0.1, `cloister host --outbound
# unix:RUN/kms.sock=127.0.0.1:PORT` standing in for vsock:3:8000; a 32-byte data key encrypted under
# alias/bench. Cases (sequential calls, one kept-alive connection, best round kept):
#   in-process       bench/bench_kms: libcloister's client, Decrypt with a Recipient through the proxy
#   endpoint, raw    cloister enclave -kms-for-app (same credentials, proxy, NSM), called over
#                    HTTP/1.1 keep-alive on 127.0.0.1 by a small Python client sending the JSON
#                    request (the client's own cost is small and measured: "client floor", the same
#                    loop against a GenerateRandom refused by the endpoint without reaching KMS)
#   endpoint, boto3  the same through boto3 (what an unmodified app sees, boto3's own cost included)
# The table is also written to BUILD_DIR/bench-kms-endpoint.txt.
set -euo pipefail

build=${1:?usage: bench/kms_endpoint.sh BUILD_DIR [--smoke]}
build=$(cd "$build" && pwd)
seconds=${BENCH_SECONDS:-3}
rounds=${BENCH_ROUNDS:-3}
[ "${2:-}" = --smoke ] && seconds=1 rounds=1
cloister=$build/cloister
bench=$build/bench/bench_kms
[ -x "$cloister" ] && [ -x "$bench" ] || { echo "bench: build $cloister and $bench first" >&2; exit 1; }
PY=/usr/bin/python3
$PY -c 'import boto3' 2>/dev/null || PY=python3

tmp=$(mktemp -d)
pids=()
cleanup() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  for p in "${pids[@]}"; do wait "$p" 2>/dev/null || true; done
  rm -rf "$tmp"
}
trap cleanup EXIT
wait_for() { # FILE PATTERN
  for _ in $(seq 1 400); do grep -qE "$2" "$1" 2>/dev/null && return 0; sleep 0.05; done
  echo "bench: no /$2/ in $1:" >&2; cat "$1" >&2; exit 1
}
port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
export CLOISTER_NO_VSOCK=1

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

ip=$(port)
env AWS_ACCESS_KEY_ID=AKIABENCH0000000000 AWS_SECRET_ACCESS_KEY=bench-secret AWS_REGION=us-east-1 \
  "$cloister" enclave -fqdn localhost --nsm "unix:$tmp/nsm.sock" --listen "unix:$tmp/public.sock" -intport "$ip" \
  -kms-proxy "unix:$tmp/kms.sock" -kms-ca-file "$tmp/kms/ca.pem" -kms-for-app >"$tmp/enclave.log" 2>&1 &
pids+=($!)
wait_for "$tmp/enclave.log" 'event=listening listener=public'

cat >"$tmp/client.py" <<'EOF'
import base64, http.client, json, sys, time
mode, port, ct, seconds = sys.argv[1], int(sys.argv[2]), open(sys.argv[3]).read().strip(), float(sys.argv[4])
want = open(sys.argv[5], "rb").read()
if mode == "boto3":
    import boto3
    kms = boto3.client("kms", endpoint_url=f"http://127.0.0.1:{port}", region_name="us-east-1",
                       aws_access_key_id="x", aws_secret_access_key="y")
    blob = base64.b64decode(ct)
    call = lambda: kms.decrypt(CiphertextBlob=blob)["Plaintext"]
else:
    conn = http.client.HTTPConnection("127.0.0.1", port)
    target, body = ("TrentService.Decrypt", json.dumps({"CiphertextBlob": ct}))
    if mode == "floor":
        target, body = ("TrentService.GenerateRandom", '{"NumberOfBytes": 0}')
    headers = {"Content-Type": "application/x-amz-json-1.1", "X-Amz-Target": target}
    def call():
        conn.request("POST", "/", body=body, headers=headers)
        r = conn.getresponse()
        d = r.read()
        if mode == "floor":
            assert r.status == 400, d
            return want
        assert r.status == 200, d
        return base64.b64decode(json.loads(d)["Plaintext"])
assert call() == want
n, t0 = 0, time.monotonic()
while time.monotonic() - t0 < seconds:
    assert call() == want
    n += 1
wall = time.monotonic() - t0
print(f"calls={n} per_s={n / wall:.1f} mean_ms={1000 * wall / n:.3f}")
EOF

labels=("in-process (libcloister client)" "endpoint, raw HTTP client" "endpoint, boto3" "client floor (refused locally)")
run_case() { # INDEX
  case $1 in
  0) "$bench" --region us-east-1 --key AKIABENCH0000000000 --secret bench-secret --ca-file "$tmp/kms/ca.pem" \
       --ciphertext "$tmp/ct" --seconds "$seconds" --proxy "unix:$tmp/kms.sock" --nsm "unix:$tmp/nsm.sock" ;;
  1) $PY "$tmp/client.py" raw "$ip" "$tmp/ct" "$seconds" "$tmp/key.bin" ;;
  2) $PY "$tmp/client.py" boto3 "$ip" "$tmp/ct" "$seconds" "$tmp/key.bin" ;;
  3) $PY "$tmp/client.py" floor "$ip" "$tmp/ct" "$seconds" "$tmp/key.bin" ;;
  esac
}
declare -A best=() best_rate=()
echo "KMS Decrypt with a Recipient, in process vs through -kms-for-app: $rounds rounds of ${seconds} s, best kept ($(nproc) cores)"
for r in $(seq 1 "$rounds"); do
  for i in "${!labels[@]}"; do
    line=$(run_case "$i") || { echo "bench: ${labels[$i]} failed" >&2; tail -20 "$tmp/enclave.log" >&2; exit 1; }
    echo "  round $r, ${labels[$i]}: $line"
    rate=$(sed -E 's/.*per_s=([0-9.]+).*/\1/' <<<"$line")
    if [ -z "${best_rate[$i]:-}" ] || python3 -c "import sys; sys.exit(not $rate > ${best_rate[$i]})"; then
      best_rate[$i]=$rate
      best[$i]=$line
    fi
  done
done
rows=()
for i in "${!labels[@]}"; do rows+=("${labels[$i]}|${best[$i]}"); done
python3 - "$build/bench-kms-endpoint.txt" "${rows[@]}" <<'EOF'
import sys
out, rows = sys.argv[1], sys.argv[2:]
lines = ["| case | calls/s | ms/call | / in-process |", "|---|---|---|---|"]
base = None
for r in rows:
    label, kv = r.split("|", 1)
    f = dict(x.split("=") for x in kv.split() if "=" in x)
    rate, mean = float(f["per_s"]), float(f["mean_ms"])
    base = base or rate
    lines.append(f"| {label} | {rate:.0f} | {mean:.2f} | {rate / base:.2f}x |")
text = "\n".join(lines)
print(text)
open(out, "w").write(text + "\n")
EOF
