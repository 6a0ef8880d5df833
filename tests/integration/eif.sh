#!/usr/bin/env bash
# cloister eif: an image built twice from the same inputs is the same bytes
# (other directory, other file times, other umask); its measurements agree
# with a second implementation written from the format's description
# (eif_measure.py); signing adds PCR8 and a signature that holds; every kind
# of damage is refused with a clear error; and `cloister verify --eif`
# proves that an enclave runs exactly that image (the simulator runs it
# with `nsm-sim --eif`), refusing one built from other inputs.
set -euo pipefail
source "$(dirname "$0")/common.bash"
measure_py() { python3 "$SOURCE_DIR/tests/integration/eif_measure.py" "$@"; }
jq_field() { python3 -c 'import json,sys; d=json.load(open(sys.argv[1])); print(eval(sys.argv[2]))' "$@"; }

# Stand-ins for AWS's blobs (the kernel, init and nsm.ko nitro-cli installs):
# random bytes, since only their bytes are measured here.
mkdir -p "$work/blobs"
head -c 200000 /dev/urandom >"$work/blobs/bzImage"
head -c 20000 /dev/urandom >"$work/blobs/init"
head -c 9000 /dev/urandom >"$work/blobs/nsm.ko"
echo "reboot=k panic=30 pci=off nomodules console=ttyS0 random.trust_cpu=on" >"$work/blobs/cmdline"
mkdir -p "$work/a/root/usr/bin" "$work/a/root/etc" "$work/a/root/usr/lib"
cp "$CLOISTER" "$work/a/root/usr/bin/cloister"
echo "hello" >"$work/a/root/etc/motd"
ln -s ../usr/bin/cloister "$work/a/root/etc/cloister-link"
build() { # DIR [extra args]: builds DIR/app.eif from DIR/root
    local dir=$1
    shift
    (cd "$dir" && "$CLOISTER" eif build --kernel "$work/blobs/bzImage" --cmdline "$work/blobs/cmdline" \
        --init "$work/blobs/init" --nsm-module "$work/blobs/nsm.ko" --rootfs root --name app \
        --cmd /usr/bin/cloister --cmd enclave --env TZ=UTC "$@" -o app.eif) >"$dir/build.json" 2>"$dir/build.err"
}
build "$work/a" || fail "build failed: $(cat "$work/a/build.err")"

# ---- reproducible: another copy, other times, other modes, other umask ------------
mkdir -p "$work/b"
cp -r "$work/a/root" "$work/b/root"
touch -d '2011-11-11 11:11' "$work/b/root/etc/motd" "$work/b/root/usr/bin/cloister"
chmod 700 "$work/b/root/etc"
chmod 600 "$work/b/root/etc/motd"
(umask 077 && build "$work/b") || fail "second build failed: $(cat "$work/b/build.err")"
cmp "$work/a/app.eif" "$work/b/app.eif" || fail "two builds from the same inputs differ"
SOURCE_DATE_EPOCH=1700000000 build "$work/b" || fail "build with SOURCE_DATE_EPOCH failed"
if cmp -s "$work/a/app.eif" "$work/b/app.eif"; then fail "SOURCE_DATE_EPOCH did not reach the image"; fi
build "$work/b" || fail "rebuild failed"
cmp "$work/a/app.eif" "$work/b/app.eif" || fail "rebuild differs"
pass "two builds from the same inputs are byte-identical (other copy, file times, modes, umask); SOURCE_DATE_EPOCH is used"

# ---- measurements: cloister and the independent reader agree ---------------------
"$CLOISTER" eif measure "$work/a/app.eif" >"$work/m.json"
measure_py "$work/a/app.eif" >"$work/py.json"
for pcr in PCR0 PCR1 PCR2; do
    mine=$(jq_field "$work/m.json" "d['Measurements']['$pcr']")
    theirs=$(jq_field "$work/py.json" "d['Measurements']['$pcr']")
    [ "$mine" = "$theirs" ] && [ ${#mine} = 96 ] || fail "$pcr: cloister says $mine, the second reader $theirs"
done
cmp <(jq_field "$work/m.json" "d['Measurements']") <(jq_field "$work/a/build.json" "d['Measurements']") ||
    fail "build and measure print different measurements"
measure_py "$work/a/app.eif" --list-ramdisk 1 >"$work/entries.json"
python3 - "$work/entries.json" "$CLOISTER" <<'PY' || fail "the root file system archive is not as expected"
import hashlib, json, sys
entries = json.load(open(sys.argv[1]))
names = [e["name"] for e in entries]
assert names[:3] == ["cmd", "env", "rootfs"], names[:3]
for d in ["rootfs/dev", "rootfs/proc", "rootfs/sys", "rootfs/tmp", "rootfs/usr/bin/cloister", "rootfs/etc/motd"]:
    assert d in names, d
assert all(e["uid"] == 0 and e["gid"] == 0 and e["mtime"] == 0 for e in entries)
by = {e["name"]: e for e in entries}
assert by["rootfs/usr/bin/cloister"]["sha256"] == hashlib.sha256(open(sys.argv[2], "rb").read()).hexdigest()
assert by["rootfs/usr/bin/cloister"]["mode"] == "100755" and by["rootfs/etc/motd"]["mode"] == "100644"
assert by["rootfs/etc/cloister-link"]["mode"] == "120777"
assert by["cmd"]["sha256"] == hashlib.sha256(b"/usr/bin/cloister\nenclave\n").hexdigest()
PY
pass "cloister eif measure agrees with an independent reader on PCR0, PCR1, PCR2; the rootfs archive holds the files, owned by 0, time 0"

# ---- describe: nitro-cli's shape ---------------------------------------------------
"$CLOISTER" eif describe "$work/a/app.eif" >"$work/d.json"
python3 - "$work/d.json" <<'PY' || fail "describe's JSON is not nitro-cli's shape: $(cat "$work/d.json")"
import json, sys
d = json.load(open(sys.argv[1]))
assert d["EifVersion"] == 4 and d["IsSigned"] is False and d["CheckCRC"] is True
assert set(d["Measurements"]) == {"HashAlgorithm", "PCR0", "PCR1", "PCR2"}
assert d["ImageName"] == "app" and d["Metadata"]["BuildTool"] == "cloister"
assert d["Metadata"]["BuildTime"] == "1970-01-01T00:00:00+00:00"
PY
pass "cloister eif describe prints nitro-cli's describe-eif fields"

# ---- signing: PCR8, a signature that holds, and one that does not ----------------
openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-384 -nodes -keyout "$work/sign.key" \
    -out "$work/sign.pem" -days 30 -subj /CN=cloister-test-signer 2>/dev/null
"$CLOISTER" eif sign "$work/a/app.eif" --sign-key "$work/sign.key" --sign-cert "$work/sign.pem" \
    -o "$work/signed.eif" >"$work/s.json" 2>"$work/s.err" || fail "sign failed: $(cat "$work/s.err")"
measure_py "$work/signed.eif" --cert "$work/sign.pem" >"$work/pys.json"
for pcr in PCR0 PCR8; do
    [ "$(jq_field "$work/s.json" "d['Measurements']['$pcr']")" = "$(jq_field "$work/pys.json" "d['Measurements']['$pcr']")" ] ||
        fail "signed image: $pcr differs from the independent reader's"
done
[ "$(jq_field "$work/s.json" "d['Measurements']['PCR0']")" = "$(jq_field "$work/m.json" "d['Measurements']['PCR0']")" ] ||
    fail "signing changed PCR0"
"$CLOISTER" eif describe "$work/signed.eif" >"$work/ds.json" || fail "describe refused a good signature"
[ "$(jq_field "$work/ds.json" "d['SignatureCheck']")" = True ] || fail "SignatureCheck is not true"
# The same signature section on an image with another kernel: PCR0 differs.
build "$work/b" --kernel-version other || true
head -c 200000 /dev/urandom >"$work/blobs/bzImage2"
(cd "$work/b" && "$CLOISTER" eif build --kernel "$work/blobs/bzImage2" --cmdline "$work/blobs/cmdline" \
    --init "$work/blobs/init" --nsm-module "$work/blobs/nsm.ko" --rootfs root --name app \
    --cmd /usr/bin/cloister --cmd enclave --env TZ=UTC -o other.eif) >/dev/null 2>&1
python3 - "$work/signed.eif" "$work/b/other.eif" "$work/forged.eif" <<'PY'
# graft the signature section of the first image onto the second, fix the CRC
import struct, sys, zlib
signed, other = open(sys.argv[1], "rb").read(), bytearray(open(sys.argv[2], "rb").read())
H = struct.Struct(">4sHHQQHH32Q32QII")
f = list(H.unpack_from(signed)); g = list(H.unpack_from(other))
n = f[6]; sig_off, sig_size = f[7 + n - 1], f[39 + n - 1]
section = signed[sig_off:sig_off + 12 + sig_size]
g[7 + g[6]] = len(other); g[39 + g[6]] = sig_size; g[6] += 1
other += section
head = H.pack(*g[:-1], 0)
crc = zlib.crc32(bytes(other[H.size:]), zlib.crc32(head[:-4]))
open(sys.argv[3], "wb").write(H.pack(*g[:-1], crc) + bytes(other[H.size:]))
PY
set +e
"$CLOISTER" eif describe "$work/forged.eif" >"$work/df.json" 2>"$work/df.err"; status=$?
set -e
[ "$status" = 1 ] && grep -q 'PCR0' "$work/df.err" && [ "$(jq_field "$work/df.json" "d['SignatureCheck']")" = False ] ||
    fail "a signature grafted from another image was not refused (exit $status): $(cat "$work/df.err")"
pass "eif sign: PCR8 = the certificate's hash (agrees with the independent reader), PCR0 unchanged; a grafted signature is refused"

# ---- damage: each refused with a clear error --------------------------------------
damage() { # NAME PATTERN PYTHON-EXPR-ON-b: writes a damaged copy and expects refusal
    local name=$1 pattern=$2 expr=$3 status=0
    python3 -c "import sys; b=bytearray(open(sys.argv[1],'rb').read()); $expr; open(sys.argv[2],'wb').write(b)" \
        "$work/a/app.eif" "$work/bad.eif"
    "$CLOISTER" eif measure "$work/bad.eif" >"$work/out" 2>&1 || status=$?
    [ "$status" = 1 ] && grep -q "$pattern" "$work/out" || fail "$name: expected exit 1 and /$pattern/, got $status: $(cat "$work/out")"
}
damage magic 'bad magic' 'b[0:4]=b"ELF!"'
damage version 'version 7 not supported' 'b[4:6]=(7).to_bytes(2,"big")'
damage "section offset" 'header puts section 1' 'b[36:44]=(10**6).to_bytes(8,"big")'
damage "section size" 'the header says' 'b[284:292]=(5).to_bytes(8,"big")'
damage "section bounds" 'runs past the end' 'b[560-8:560]=(10**9).to_bytes(8,"big"); b[284:292]=(10**9).to_bytes(8,"big")'
damage crc 'CRC mismatch' 'b[-1]^=1'
damage truncated 'truncated' 'del b[len(b)//2:]'
damage "trailing bytes" 'after the last section' 'b+=b"x"'
damage empty 'truncated' 'del b[:]'
status=0
"$CLOISTER" eif measure "$work/nonexistent.eif" >"$work/out" 2>&1 || status=$?
[ "$status" != 0 ] && grep -q 'nonexistent.eif' "$work/out" || fail "a missing file: $(cat "$work/out")"
pass "damaged images are refused, naming the damage: magic, version, section offset, size, bounds, CRC, truncation, trailing bytes"

# ---- bad command lines --------------------------------------------------------------
status=0; "$CLOISTER" eif build --kernel "$work/blobs/bzImage" --cmdline x -o "$work/x.eif" >"$work/out" 2>&1 || status=$?
[ "$status" = 2 ] && grep -q 'no ramdisk' "$work/out" || fail "no ramdisk: $(cat "$work/out")"
status=0; "$CLOISTER" eif build --kernel "$work/blobs/bzImage" --cmdline x --rootfs "$work/a/root" -o "$work/x.eif" >"$work/out" 2>&1 || status=$?
[ "$status" = 2 ] && grep -q 'go together' "$work/out" || fail "--rootfs alone: $(cat "$work/out")"
status=0; "$CLOISTER" eif sign "$work/a/app.eif" --sign-key "$work/sign.pem" --sign-cert "$work/sign.pem" -o "$work/x.eif" >"$work/out" 2>&1 || status=$?
[ "$status" = 2 ] && grep -q 'not a PEM private key' "$work/out" || fail "a certificate as key: $(cat "$work/out")"
[ ! -e "$work/x.eif" ] || fail "a refused command left an output file"
pass "bad command lines get exit 2 and say what is missing; nothing is written"

# ---- verify --eif: the enclave runs exactly this image ------------------------------
spawn sim "$CLOISTER" nsm-sim --listen "unix:$work/nsm.sock" --state "$work/state" --eif "$work/a/app.eif"
wait_for_log sim '^nsm-sim: listening on '
pub=$(free_port)
start_enclave enclave --listen "tcp:127.0.0.1:$pub" -intport "$(free_port)"
wait_for_log enclave 'event=listening listener=public'
"$CLOISTER" verify "https://127.0.0.1:$pub" --root "$work/state/root.pem" --eif "$work/a/app.eif" >"$work/v.txt" 2>&1 ||
    fail "verify --eif refused the enclave running that image: $(cat "$work/v.txt")"
status=0
"$CLOISTER" verify "https://127.0.0.1:$pub" --root "$work/state/root.pem" --eif "$work/b/other.eif" >"$work/v.txt" 2>&1 || status=$?
[ "$status" = 1 ] && grep -q 'PCR0' "$work/v.txt" || fail "verify --eif with another image: exit $status: $(cat "$work/v.txt")"
pass "verify --eif: the enclave running the image is proven; an image built from other inputs is refused naming PCR0"
