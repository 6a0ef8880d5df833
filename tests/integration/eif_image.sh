#!/usr/bin/env bash
# scripts/image.sh (make image): the image of cloister + examples/hello is
# rebuilt byte for byte, its manifest names the Debian package of every file
# it took from this machine, its measurements agree with the independent
# reader, and without AWS's blobs it stops with a clear message.  The blobs
# (AWS's kernel, init, nsm.ko) are not on this machine: random stand-ins
# take their place, which is enough here since only their bytes are packed.
set -euo pipefail
source "$(dirname "$0")/common.bash"
mkdir -p "$work/blobs"
head -c 300000 /dev/urandom >"$work/blobs/bzImage"
head -c 3000 /dev/urandom >"$work/blobs/init"
head -c 3000 /dev/urandom >"$work/blobs/nsm.ko"
echo "reboot=k panic=30 console=ttyS0" >"$work/blobs/cmdline"
image() { "$SOURCE_DIR/scripts/image.sh" --blobs "$work/blobs" --cloister "$CLOISTER" --out "$1" >"$1.json" 2>"$1.err"; }
image "$work/one" || fail "image.sh failed: $(cat "$work/one.err")"
image "$work/two" || fail "image.sh failed the second time: $(cat "$work/two.err")"
cmp "$work/one/cloister-hello.eif" "$work/two/cloister-hello.eif" || fail "two image builds differ"
cmp "$work/one/manifest.tsv" "$work/two/manifest.tsv" || fail "two manifests differ"
pass "make image: two builds give the same bytes and the same manifest"

python3 - "$work/one/manifest.tsv" "$work/one/rootfs" <<'PY' || fail "the manifest does not account for the root file system"
import hashlib, os, sys
rows = [l.rstrip("\n").split("\t") for l in open(sys.argv[1])]
listed = {r[0]: r for r in rows}
for must in ["/usr/bin/cloister", "/app/hello/app.py", "/etc/ssl/certs/ca-certificates.crt"]:
    assert must in listed, must
assert any("libc6=" in r[2] for r in rows), "libc is not attributed to libc6"
assert any(r[2].startswith("libpython3") for r in rows), "python's library is not attributed to its package"
assert any("libcurl" in r[0] for r in rows), "libcurl (loaded on first use) is missing"
root = sys.argv[2]
for dirpath, _, files in os.walk(root):
    for f in files:
        path = os.path.join(dirpath, f)
        if os.path.islink(path) or "/etc/passwd" in path or "/etc/group" in path:
            continue
        rel = path[len(root):]
        assert rel in listed, "not in the manifest: " + rel
        assert hashlib.sha256(open(path, "rb").read()).hexdigest() == listed[rel][1], "hash differs: " + rel
PY
pass "the manifest lists every file of the root file system with its SHA-256 and Debian package"

python3 "$SOURCE_DIR/tests/integration/eif_measure.py" "$work/one/cloister-hello.eif" >"$work/py.json"
python3 - "$work/one.json" "$work/py.json" <<'PY' || fail "the image's printed measurements disagree with the independent reader"
import json, sys
a = json.load(open(sys.argv[1]))["Measurements"]; b = json.load(open(sys.argv[2]))["Measurements"]
assert all(a[k] == b[k] for k in ("PCR0", "PCR1", "PCR2")), (a, b)
PY
pass "the image's measurements agree with the independent reader"

rm "$work/blobs/nsm.ko"
status=0
"$SOURCE_DIR/scripts/image.sh" --blobs "$work/blobs" --cloister "$CLOISTER" --out "$work/three" >"$work/out" 2>&1 || status=$?
[ "$status" = 1 ] && grep -q 'nsm.ko is missing' "$work/out" || fail "missing blobs: exit $status: $(cat "$work/out")"
pass "without AWS's blobs, image.sh says which file is missing and where to get it"
