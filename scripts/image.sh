#!/usr/bin/env bash
# Builds an enclave image of cloister + examples/hello, with a root file
# system assembled from this machine's Debian packages, and prints its PCRs.
#
#   scripts/image.sh [--blobs DIR] [--cloister BIN] [--out DIR] [--fqdn NAME]
#                    [--add SRC=DEST]... [--enclave-arg ARG]...
#
# --blobs: AWS's kernel, cmdline, init and nsm.ko, as aws-nitro-enclaves-cli
#   installs them (default /usr/share/nitro_enclaves/blobs).
# --add SRC=DEST: put the file SRC at DEST in the image (a certificate, KMS
#   ciphertexts: they are measured into PCR0 with everything else).
# --enclave-arg ARG: one more argument for cloister enclave (repeatable),
#   e.g. --enclave-arg -tls-key-ciphertext --enclave-arg @/etc/cloister/tls-key.ct
# The enclave listens on vsock port 443 (PROXY v2 from cloister host's
# forward), answers the load balancer's health check on vsock port 8444
# (-health-listen; cloister host --forward tcp:0.0.0.0:8444=vsock:16:8444,health),
# drains for 25 s on SIGTERM or POST /enclave/drain, and reaches KMS and IMDS
# through the host (vsock:3:8000, vsock:3:8002): docs/deploy-aws.md.
# The root file system holds only: cloister (stripped), Python 3 and its
# standard library for the example app, the shared libraries these load
# (resolved with ldd, libcurl included: cloister loads it on first use), the
# CA bundle, and minimal /etc/passwd and /etc/group.  OUT/manifest.tsv lists
# every file with its SHA-256 and the Debian package and version it came
# from, so the image's contents can be audited; the same packages and the
# same cloister binary give the same image bytes (times from
# SOURCE_DATE_EPOCH, 0 when unset).
set -euo pipefail
here=$(cd "$(dirname "$0")/.." && pwd)
blobs=/usr/share/nitro_enclaves/blobs
cloister="$here/build/cloister"
out="$here/build/image"
fqdn=example.com
adds=()
extra=()
while [ $# -gt 0 ]; do
    case $1 in
    --blobs) blobs=$2; shift 2 ;;
    --cloister) cloister=$2; shift 2 ;;
    --out) out=$2; shift 2 ;;
    --fqdn) fqdn=$2; shift 2 ;;
    --add) adds+=("$2"); shift 2 ;;
    --enclave-arg) extra+=("$2"); shift 2 ;;
    -h|--help) sed -n '2,26p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
    *) echo "image.sh: unknown argument '$1' (see --help)" >&2; exit 2 ;;
    esac
done
kernel=bzImage
[ "$(uname -m)" = aarch64 ] && kernel=Image
for f in "$kernel" cmdline init nsm.ko; do
    if [ ! -f "$blobs/$f" ]; then
        echo "image.sh: $blobs/$f is missing: install aws-nitro-enclaves-cli (it puts AWS's kernel, init and" >&2
        echo "  nsm.ko in /usr/share/nitro_enclaves/blobs) or give --blobs DIR" >&2
        exit 1
    fi
done
[ -x "$cloister" ] || { echo "image.sh: $cloister is not built (make build)" >&2; exit 1; }

root="$out/rootfs"
rm -rf "$root"
mkdir -p "$root/usr/bin" "$root/app/hello" "$root/etc/ssl/certs"
: >"$out/manifest.tsv.unsorted"
record() { printf '%s\t%s\n' "$1" "$2" >>"$out/manifest.tsv.unsorted"; } # DEST-IN-ROOT SOURCE
copy() { # SOURCE [DEST-IN-ROOT]: the file's bytes (links followed) at DEST
    local src=$1 dest=${2:-$1}
    [ -e "$root$dest" ] && return 0
    mkdir -p "$(dirname "$root$dest")"
    cp -L "$src" "$root$dest"
    record "$dest" "$src"
}
libs_of() { ldd "$1" 2>/dev/null | awk '/=> \//{print $3} /^\t\/[^ ]*ld-linux/{print $1}'; }

strip --strip-all -o "$root/usr/bin/cloister" "$cloister"
record /usr/bin/cloister "$root/usr/bin/cloister"
cp "$here/examples/hello/app.py" "$root/app/hello/app.py"
record /app/hello/app.py "$here/examples/hello/app.py"
py=$(readlink -f /usr/bin/python3)
pyver=$(basename "$py")
copy "$py"
ln -s "$pyver" "$root/usr/bin/python3"
# the standard library, without compiled caches and tests (neither is needed)
(cd "/usr/lib/$pyver" && find . -type f ! -path '*/__pycache__/*' ! -path './test/*' ! -path './idlelib/*' \
    ! -path './tkinter/*' ! -path './turtledemo/*' ! -path './ensurepip/*' \
    ! -path './lib2to3/*' ! -path './distutils/*' ! -path './config-*' ! -path './pydoc_data/*' | LC_ALL=C sort) |
    while read -r f; do copy "/usr/lib/$pyver/${f#./}"; done
libcurl=$(ldconfig -p | awk '/libcurl\.so\.4 .*x86-64|libcurl\.so\.4 .*AArch64/{print $NF; exit}')
for bin in "$cloister" "$py" "$libcurl" $(find "/usr/lib/$pyver/lib-dynload" -name '*.so' | LC_ALL=C sort); do
    for lib in $(libs_of "$bin"); do copy "$lib"; done
done
[ -n "$libcurl" ] && copy "$libcurl"
copy /etc/ssl/certs/ca-certificates.crt
for a in ${adds[@]+"${adds[@]}"}; do
    src=${a%%=*} dest=${a#*=}
    case $a in *=/*) ;; *) echo "image.sh: --add $a: expected SRC=/ABSOLUTE/DEST" >&2; exit 2 ;; esac
    [ -f "$src" ] || { echo "image.sh: --add $a: $src is not a file" >&2; exit 2; }
    [ -e "$root$dest" ] && { echo "image.sh: --add $a: $dest is already in the image" >&2; exit 2; }
    copy "$src" "$dest"
done
printf 'root:x:0:0:root:/:/bin/false\nnobody:x:65534:65534:nobody:/:/bin/false\n' >"$root/etc/passwd"
printf 'root:x:0:\nnogroup:x:65534:\n' >"$root/etc/group"
# path, SHA-256 and the Debian package (and version) each file came from, in one pass
python3 - "$out/manifest.tsv.unsorted" "$root" "$here" >"$out/manifest.tsv" <<'PY'
import glob, hashlib, os, subprocess, sys
owner = {}
for lst in glob.glob("/var/lib/dpkg/info/*.list"):
    pkg = os.path.basename(lst)[:-5].split(":")[0]
    for line in open(lst, errors="replace"):
        owner.setdefault(line.rstrip("\n"), pkg)
versions = dict(l.split("\t") for l in subprocess.run(["dpkg-query", "-W", "-f=${Package}\t${Version}\n"],
                capture_output=True, text=True).stdout.splitlines() if "\t" in l)
rows = []
for line in open(sys.argv[1]):
    dest, src = line.rstrip("\n").split("\t")
    digest = hashlib.sha256(open(sys.argv[2] + dest, "rb").read()).hexdigest()
    real = os.path.realpath(src)
    candidates = [src, real] + [c[4:] for c in (src, real) if c.startswith("/usr/")] + ["/usr" + c for c in (src, real)]
    pkg = next((owner[c] for c in candidates if c in owner), None)
    if pkg:
        origin = "%s=%s" % (pkg, versions.get(pkg, "?"))
    elif src.startswith(sys.argv[3]) or dest == "/usr/bin/cloister":
        origin = "cloister (this source tree and build)"
    else:
        origin = "not from a package (generated on this machine)"
    rows.append("%s\t%s\t%s" % (dest, digest, origin))
print("\n".join(sorted(rows)))
PY
rm "$out/manifest.tsv.unsorted"

# the enclave's command line (measured into PCR0): the public listener and the
# health listener on vsock (the host forwards 443 and 8444 to them), the drain
# (the grace covers an NLB's 2 x 10 s health check), KMS and IMDS through the host
enclave_cmd=(/usr/bin/cloister enclave -fqdn "$fqdn" -listen vsock:4294967295:443 -proxy-protocol
    -health-listen vsock:4294967295:8444 -drain-grace 25 -drain-timeout 30
    -kms-proxy vsock:3:8000 -kms-imds vsock:3:8002
    -appcmd "/usr/bin/python3 /app/hello/app.py" -appwebsrv http://127.0.0.1:8081 -wait-for-app
    ${extra[@]+"${extra[@]}"})
cmd=()
for w in "${enclave_cmd[@]}"; do cmd+=(--cmd "$w"); done
"$cloister" eif build --kernel "$blobs/$kernel" --cmdline "$blobs/cmdline" --init "$blobs/init" \
    --nsm-module "$blobs/nsm.ko" --rootfs "$root" --name cloister-hello --image-version "$("$cloister" --version | cut -d' ' -f2)" \
    "${cmd[@]}" \
    --env PATH=/usr/bin --env SSL_CERT_FILE=/etc/ssl/certs/ca-certificates.crt \
    -o "$out/cloister-hello.eif" >"$out/measurements.json"
cat "$out/measurements.json"
echo "image.sh: $out/cloister-hello.eif ($(du -h "$out/cloister-hello.eif" | cut -f1)); $(wc -l <"$out/manifest.tsv") files listed in $out/manifest.tsv" >&2
