#!/usr/bin/env bash
# The multi-party wallet (examples/wallet) end to end: signatures per second through
# `cloister enclave` (TLS inside) and where their time goes, and the signing step alone against
# ethers signing the same kind of hash in Node.
#
#   bench/wallet.sh BUILD_DIR            BENCH_SECONDS (5) per concurrency level (1, 4 clients)
#   bench/wallet.sh BUILD_DIR --smoke    one second each: checks that it works
#
# Set-up as tests/integration/wallet.sh: nsm-sim, kms-local --tls (the key's policy on PCR0 and
# PCR16), dynalite, cloister enclave -appcmd cloister-wallet, all on 127.0.0.1.  A key is created,
# then clients (Python threads, one kept-alive TLS connection each) sign Ethereum hashes with it:
# each signature is a DynamoDB GetItem, a KMS Decrypt with a Recipient (a fresh attestation
# document, RSA-OAEP), the Shamir combination, the public-key check and the signature.  The split
# comes from the wallet's own counters (GET /app/stats).  The table is also written to
# BUILD_DIR/bench-wallet.txt.
set -euo pipefail

build=${1:?usage: bench/wallet.sh BUILD_DIR [--smoke]}
build=$(cd "$build" && pwd)
src=$(cd "$(dirname "$0")/.." && pwd)
seconds=${BENCH_SECONDS:-5}
[ "${2:-}" = --smoke ] && seconds=1
cloister=$build/cloister wallet=$build/cloister-wallet client=$build/cloister-wallet-client
steps=$build/bench_wallet_sign
for b in "$cloister" "$wallet" "$client" "$steps"; do
  [ -x "$b" ] || { echo "bench: build $b first" >&2; exit 1; }
done
[ -d "$src/tests/node/node_modules" ] || { echo "bench: run scripts/node-deps.sh first" >&2; exit 1; }
export NODE_NO_WARNINGS=1 CLOISTER_NO_VSOCK=1

tmp=$(mktemp -d)
pids=()
cleanup() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  for p in "${pids[@]}"; do wait "$p" 2>/dev/null || true; done
  rm -rf "$tmp"
}
trap cleanup EXIT
wait_for() { # FILE PATTERN
  for _ in $(seq 1 600); do grep -qE "$2" "$1" 2>/dev/null && return 0; sleep 0.05; done
  echo "bench: no /$2/ in $1:" >&2; tail -20 "$1" >&2; exit 1
}
port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

PCR0=$(printf '%096d' 5 | tr 0 e)
PCR16=$(python3 - "$wallet" <<'EOF'
import hashlib, sys
pcr = bytes(48)
with open(sys.argv[1], 'rb') as f:
    while block := f.read(1024):
        pcr = hashlib.sha384(pcr + block).digest()
print(pcr.hex())
EOF
)
ROLE=arn:aws:sts::111122223333:assumed-role/wallet-bench/i-0bench
"$cloister" nsm-sim --listen "unix:$tmp/nsm.sock" --state "$tmp/sim" --pcr "0=$PCR0" >"$tmp/sim.log" 2>&1 &
pids+=($!)
wait_for "$tmp/sim.log" '^nsm-sim: listening'
cat >"$tmp/policy.json" <<EOF
{"Version": "2012-10-17", "Statement": [
  {"Effect": "Allow", "Principal": {"AWS": "$ROLE"}, "Action": ["kms:Encrypt"], "Resource": "*"},
  {"Effect": "Allow", "Principal": {"AWS": "$ROLE"}, "Action": ["kms:Decrypt"], "Resource": "*",
   "Condition": {"StringEqualsIgnoreCase": {"kms:RecipientAttestation:PCR0": "$PCR0",
                                            "kms:RecipientAttestation:PCR16": "$PCR16"}}}]}
EOF
kp=$(port)
"$cloister" kms-local --listen "tcp:127.0.0.1:$kp" --state "$tmp/kms" --tls --region us-east-1 \
  --credentials "AKIABENCHWALLET00000:bench-secret:$ROLE" --root "$tmp/sim/root.pem" \
  --key "alias/wallet=$tmp/policy.json" >"$tmp/kms.log" 2>&1 &
pids+=($!)
wait_for "$tmp/kms.log" '^kms-local: listening'
dp=$(port)
node "$src/tests/node/node_modules/dynalite/cli.js" --host 127.0.0.1 --port "$dp" --createTableMs 0 >"$tmp/dynalite.log" 2>&1 &
pids+=($!)
wait_for "$tmp/dynalite.log" 'listening'
node "$src/tests/node/wallet.js" create-table "http://127.0.0.1:$dp" shards

ep=$(port) ip=$(port) ap=$(port)
AWS_ACCESS_KEY_ID=AKIABENCHWALLET00000 AWS_SECRET_ACCESS_KEY=bench-secret \
"$cloister" enclave -fqdn localhost --nsm "unix:$tmp/nsm.sock" --listen "tcp:127.0.0.1:$ep" -intport "$ip" \
  -appwebsrv "http://127.0.0.1:$ap" -wait-for-app -appcmd "$wallet --listen tcp:127.0.0.1:$ap --intport $ip \
--nsm unix:$tmp/nsm.sock --kms-region us-east-1 --kms-endpoint https://localhost:$kp --kms-ca-file $tmp/kms/ca.pem \
--dynamodb-endpoint http://127.0.0.1:$dp --table shards --threads 8" >"$tmp/enclave.log" 2>&1 &
pids+=($!)
wait_for "$tmp/enclave.log" 'event=listening listener=public'
openssl ecparam -name secp384r1 -genkey -noout -out "$tmp/rec.pem" 2>/dev/null
openssl ec -in "$tmp/rec.pem" -pubout -out "$tmp/rec.pub" 2>/dev/null
"$client" "https://localhost:$ep" --root "$tmp/sim/root.pem" --pcr "0=$PCR0" --pcr "16=$PCR16" create \
  --recovery-public-key "$tmp/rec.pub" --out "$tmp/key.json" 2>/dev/null

load() { # CLIENTS SECONDS -> "signatures per_second"
  python3 - "$ep" "$tmp/key.json" "$1" "$2" <<'EOF'
import http.client, json, os, ssl, sys, threading, time
port, key, clients, seconds = int(sys.argv[1]), json.load(open(sys.argv[2])), int(sys.argv[3]), float(sys.argv[4])
ctx = ssl._create_unverified_context()
count, errors, lock = [0], [0], threading.Lock()
end = time.monotonic() + seconds
def run():
    c = http.client.HTTPSConnection("127.0.0.1", port, context=ctx)
    while time.monotonic() < end:
        body = json.dumps({"key_shard_b64": key["key_shard"], "pub_key": key["public_key"],
                           "tx_hash": "0x" + os.urandom(32).hex(), "mode": "ethereum"})
        c.request("POST", "/app/sss/signature", body, {"Content-Type": "application/json"})
        r = c.getresponse(); r.read()
        with lock:
            if r.status == 200: count[0] += 1
            else: errors[0] += 1
t0 = time.monotonic()
ts = [threading.Thread(target=run) for _ in range(clients)]
[t.start() for t in ts]; [t.join() for t in ts]
el = time.monotonic() - t0
if errors[0]: sys.exit(f"bench: {errors[0]} failed signatures")
print(count[0], f"{count[0] / el:.1f}")
EOF
}
stats() { curl -sk "https://127.0.0.1:$ep/app/stats"; }

out=$build/bench-wallet.txt
{
  echo "wallet signatures end to end (Ethereum mode; TLS inside cloister enclave, DynamoDB GetItem, KMS Decrypt"
  echo "with a Recipient, combine, key check, sign), ${seconds}s per level, $(nproc) cores, load $(cut -d' ' -f1-3 /proc/loadavg)"
  printf '%-10s %12s %14s\n' clients signatures 'signatures/s'
  for c in 1 4; do
    read -r n rate < <(load "$c" "$seconds")
    printf '%-10s %12s %14s\n' "$c" "$n" "$rate"
  done
  echo
  echo "where a signature's time goes (the wallet's counters, all signatures above):"
  stats | python3 -c '
import json, sys
s = json.load(sys.stdin); n = s["signatures"]; us = s["us"]
for k in ("store_get", "kms_decrypt_recipient", "combine", "sign", "total"):
    print(f"  {k:24s} {us[k] / n / 1000:8.3f} ms")
print(f"  ({n} signatures; total = from the parsed request to the answer, inside the wallet)")'
  echo
  echo "the steps alone, in process (bench_wallet_sign) and ethers (Node $(node --version)):"
  "$steps" 2000 | tr ' ' '\n' | sed 's/^/  /'
  node "$src/tests/node/wallet.js" sign-bench 2000 | tr ' ' '\n' | sed 's/^/  /'
} | tee "$out"
