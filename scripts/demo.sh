#!/usr/bin/env bash
# `make run`: the local stand-in for Nitro, end to end.  Until the enclave
# daemon lands this shows the foundation: an NSM simulator, a document from
# it, its verification against the simulator's root (and its rejection
# against AWS's), and the decoded document.
set -euo pipefail
build=${1:-build}
cloister=$(cd "$build" && pwd)/cloister
run=$(mktemp -d /tmp/cloister-run.XXXXXX)
sim_pid=
cleanup() {
  [ -n "$sim_pid" ] && kill "$sim_pid" 2>/dev/null && wait "$sim_pid" 2>/dev/null
  rm -rf "$run"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

step() { printf '\n\033[1m== %s\033[0m\n' "$*"; }

step "starting the NSM simulator (state in $run/state)"
"$cloister" nsm-sim --listen "unix:$run/nsm.sock" --state "$run/state" \
  --image "$cloister" --instance-id i-0123456789abcdef0 2>"$run/nsm-sim.log" &
sim_pid=$!
for _ in $(seq 100); do [ -S "$run/nsm.sock" ] && break; sleep 0.05; done
[ -S "$run/nsm.sock" ] || { cat "$run/nsm-sim.log" >&2; echo "nsm-sim did not start" >&2; exit 1; }
export CLOISTER_NSM="unix:$run/nsm.sock"
"$cloister" nsm describe

step "requesting an attestation document with a fresh nonce"
nonce=$(openssl rand -hex 20)
echo "nonce $nonce"
"$cloister" attest request --nonce "$nonce" --user-data "$(printf 'hello from make run' | od -An -tx1 | tr -d ' \n')" \
  -o "$run/doc.cbor"
echo "wrote $(wc -c <"$run/doc.cbor") bytes"

step "verifying it against the simulator's root, with the nonce and PCR0 = SHA-384 of the image"
pcr0=$(openssl dgst -sha384 -r "$cloister" | cut -d' ' -f1)
"$cloister" attest verify --root "$run/state/root.pem" --nonce "$nonce" --pcr "0=$pcr0" --max-age 60 "$run/doc.cbor"

step "the same document against the AWS Nitro root: it must be rejected"
if "$cloister" attest verify "$run/doc.cbor"; then echo "unexpectedly accepted" >&2; exit 1; fi

step "the decoded document"
"$cloister" attest show "$run/doc.cbor"
