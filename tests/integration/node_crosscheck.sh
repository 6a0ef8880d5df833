#!/usr/bin/env bash
# Cross-checks cloister's attestation documents with an independent verifier
# (tests/node/verify.js: Node's crypto and the `cbor` npm package, no code
# shared with cloister).
#
#  (a) verify.js itself on AWS's real documents: the five good ones verify at
#      their own timestamps, bad-selfsigned and tamperings are rejected
#      (tests/vectors/nitro, part of the repository: missing ones fail);
#  (b) documents from `cloister nsm-sim` obtained with `cloister attest
#      request` verify with verify.js against the simulator's root, carry the
#      requested nonce, user data and public key, and are rejected when a
#      signature byte is flipped or when checked against the AWS root.
#
# Env: CLOISTER (the cloister binary), CLOISTER_SOURCE_DIR, CLOISTER_TEST_VECTORS.
set -euo pipefail

src=${CLOISTER_SOURCE_DIR:-$(cd "$(dirname "$0")/../.." && pwd)}
cloister=${CLOISTER:-${CLOISTER_BUILD_DIR:-$src/build}/cloister}
node_dir=$src/tests/node
verify=$node_dir/verify.js
vectors=${CLOISTER_TEST_VECTORS:-$src/tests/vectors}/nitro

fail() {
  echo "FAIL: $*" >&2
  exit 1
}
step() { echo "== $*"; }

command -v node >/dev/null || fail "node is not installed (scripts/deps.sh installs it)"
[ -d "$node_dir/node_modules/cbor" ] ||
  fail "$node_dir/node_modules is missing: run scripts/node-deps.sh first (make test does)"
[ -x "$cloister" ] || fail "$cloister is not built"

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

# Runs verify.js; "expect_ok" / "expect_rejected" for each file.
vjs() { timeout 60 node "$verify" "$@"; }
expect_ok() {
  local root=$1
  shift
  local out
  out=$(vjs --root "$root" "$@" 2>&1) || fail "verify.js rejected: $out"
  echo "$out"
}
expect_rejected() {
  local root=$1 file=$2 out
  if out=$(vjs --root "$root" "$file" 2>&1); then
    fail "verify.js accepted $file: $out"
  fi
  case $out in
  *": rejected: "*) echo "$out" ;;
  *) fail "verify.js did not reject $file cleanly: $out" ;;
  esac
}

# ---- (a) real AWS documents -------------------------------------------------
[ -d "$vectors" ] || fail "$vectors is missing (tests/vectors is part of the repository)"
step "verify.js on the real Nitro documents in $vectors"
aws_root=$vectors/aws-nitro-root-g1.pem
expect_ok "$aws_root" "$vectors/nitro-2022-10-13.cbor" "$vectors/nitro-2022-10-12-debug.cbor" \
  "$vectors/nitro-2023-09-18.b64" "$vectors/nitro-2024-09-07-maxfields.b64" \
  "$vectors/nitro-2024-09-07-debug.b64"
expect_rejected "$aws_root" "$vectors/bad-selfsigned.b64"
step "verify.js self-test (tamperings of the real documents)"
(cd "$node_dir" && timeout 60 node selftest.js "$vectors") >"$tmp/selftest.log" 2>&1 || {
  cat "$tmp/selftest.log" >&2
  fail "verify.js self-test"
}
tail -n 1 "$tmp/selftest.log"

# ---- (b) simulator documents --------------------------------------------------
step "starting cloister nsm-sim"
sock=$tmp/nsm.sock
state=$tmp/state
mkdir -p "$state"
"$cloister" nsm-sim --listen "unix:$sock" --state "$state" >"$tmp/sim.log" 2>&1 &
sim_pid=$!
for _ in $(seq 1 100); do
  [ -S "$sock" ] && [ -s "$state/root.pem" ] && break
  kill -0 "$sim_pid" 2>/dev/null || { cat "$tmp/sim.log" >&2; fail "nsm-sim exited"; }
  sleep 0.1
done
[ -S "$sock" ] || { cat "$tmp/sim.log" >&2; fail "nsm-sim did not create $sock within 10 s"; }
[ -s "$state/root.pem" ] || fail "nsm-sim did not write $state/root.pem"
sim_root=$state/root.pem

request() { timeout 30 "$cloister" attest request --nsm "unix:$sock" "$@"; }
hex_random() { openssl rand -hex "$1"; }

step "requesting documents with cloister attest request"
nonce=$(hex_random 32)
user_data=$(hex_random 100)
big_nonce=$(hex_random 1024)
big_user_data=$(hex_random 1024)
openssl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-384 -out "$tmp/ec.key" 2>/dev/null
openssl pkey -in "$tmp/ec.key" -pubout -out "$tmp/ec.pub.pem"
openssl genpkey -algorithm RSA -pkeyopt rsa_keygen_bits:4096 -out "$tmp/rsa.key" 2>/dev/null
openssl pkey -in "$tmp/rsa.key" -pubout -out "$tmp/rsa.pub.pem"
der_hex() { openssl pkey -pubin -in "$1" -outform DER | od -An -v -tx1 | tr -d ' \n'; }
ec_pub=$(der_hex "$tmp/ec.pub.pem")
rsa_pub=$(der_hex "$tmp/rsa.pub.pem")

request -o "$tmp/plain.cbor"
request --nonce "$nonce" -o "$tmp/nonce.cbor"
request --user-data "$user_data" -o "$tmp/userdata.cbor"
request --public-key "$tmp/ec.pub.pem" -o "$tmp/pubkey.cbor"
request --nonce "$big_nonce" --user-data "$big_user_data" --public-key "$tmp/rsa.pub.pem" -o "$tmp/all.cbor"
request --nonce "$(hex_random 16)" >"$tmp/stdout.cbor"
docs="plain nonce userdata pubkey all stdout"
for d in $docs; do [ -s "$tmp/$d.cbor" ] || fail "attest request wrote no $d.cbor"; done
base64 -w 76 <"$tmp/nonce.cbor" >"$tmp/nonce.b64"

step "verify.js on the simulator's documents (root $sim_root)"
files=()
for d in $docs; do files+=("$tmp/$d.cbor"); done
expect_ok "$sim_root" "${files[@]}" "$tmp/nonce.b64"
# The verification time defaults to the document's timestamp; now works too.
expect_ok "$sim_root" --at "$(($(date +%s) * 1000))" "$tmp/plain.cbor" >/dev/null

step "the documents carry what was asked for"
# field FILE NAME -> hex of the field, "null" when absent
field() {
  vjs --root "$sim_root" --json "$1" |
    node -e 'let s="";process.stdin.on("data",d=>s+=d).on("end",()=>{const o=JSON.parse(s);
      if(!o.ok){console.error(o.reason);process.exit(1)}const v=o[process.argv[1]];
      console.log(v===null||v===undefined?"null":v)})' "$2"
}
check_field() {
  local got
  got=$(field "$tmp/$1.cbor" "$2") || fail "$1: verify.js --json failed"
  [ "$got" = "$3" ] || fail "$1: $2 is ${got:0:80}..., expected ${3:0:80}..."
  case $2 in
  keys | cabundle_length) echo "$1: $2 is $3" ;;
  *) [ "$3" = null ] && echo "$1: $2 is null" || echo "$1: $2 as requested (${#3} hex digits)" ;;
  esac
}
# Real documents carry all nine keys in this order, absent ones as null.
aws_keys=module_id,digest,timestamp,pcrs,certificate,cabundle,public_key,user_data,nonce
check_field plain keys "$aws_keys"
check_field all keys "$aws_keys"
check_field plain cabundle_length 4
check_field plain nonce null
check_field plain user_data null
check_field plain public_key null
check_field nonce nonce "$nonce"
check_field userdata user_data "$user_data"
check_field pubkey public_key "$ec_pub"
check_field all nonce "$big_nonce"
check_field all user_data "$big_user_data"
check_field all public_key "$rsa_pub"

step "cloister's own verifier agrees on the same documents"
timeout 60 "$cloister" attest verify --root "$sim_root" --at doc --allow-debug "${files[@]}" ||
  fail "cloister attest verify rejected a simulator document that verify.js accepted"

step "tampered and wrongly-rooted documents are rejected"
node -e 'const fs=require("fs");const b=fs.readFileSync(process.argv[1]);
  b[b.length-1]^=1;fs.writeFileSync(process.argv[2],b)' "$tmp/plain.cbor" "$tmp/sigflip.cbor"
node -e 'const fs=require("fs");const b=fs.readFileSync(process.argv[1]);
  b[b.length-50]^=0x80;fs.writeFileSync(process.argv[2],b)' "$tmp/nonce.cbor" "$tmp/sigflip2.cbor"
expect_rejected "$sim_root" "$tmp/sigflip.cbor"
expect_rejected "$sim_root" "$tmp/sigflip2.cbor"
if timeout 60 "$cloister" attest verify --root "$sim_root" --at doc --allow-debug "$tmp/sigflip.cbor" >/dev/null 2>&1; then
  fail "cloister attest verify accepted a flipped signature"
fi
expect_rejected "$aws_root" "$tmp/plain.cbor"
expect_rejected "$aws_root" "$tmp/all.cbor"

echo "node cross-check: all passed"
