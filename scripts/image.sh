#!/usr/bin/env bash
# Builds an enclave image of cloister + examples/hello, with a root file
# system assembled from this machine's Debian packages, and prints its PCRs.
#
#   scripts/image.sh [--blobs DIR] [--cloister BIN] [--out DIR] [--fqdn NAME]
#
# --blobs: AWS's kernel, cmdline, init and nsm.ko, as aws-nitro-enclaves-cli
#   installs them (default /usr/share/nitro_enclaves/blobs).
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
while [ $# -gt 0 ]; do
    case $1 in
    --blobs) blobs=$2; shift 2 ;;
    --cloister) cloister=$2; shift 2 ;;
    --out) out=$2; shift 2 ;;
    --fqdn) fqdn=$2; shift 2 ;;
    -h|--help) sed -n '2,17p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
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

"$cloister" eif build --kernel "$blobs/$kernel" --cmdline "$blobs/cmdline" --init "$blobs/init" \
    --nsm-module "$blobs/nsm.ko" --rootfs "$root" --name cloister-hello --image-version "$("$cloister" --version | cut -d' ' -f2)" \
    --cmd /usr/bin/cloister --cmd enclave --cmd -fqdn --cmd "$fqdn" --cmd -appcmd \
    --cmd "/usr/bin/python3 /app/hello/app.py" --cmd -app-web-srv --cmd http://127.0.0.1:8081 --cmd -wait-for-app \
    --env PATH=/usr/bin --env SSL_CERT_FILE=/etc/ssl/certs/ca-certificates.crt \
    -o "$out/cloister-hello.eif" >"$out/measurements.json"
cat "$out/measurements.json"
echo "image.sh: $out/cloister-hello.eif ($(du -h "$out/cloister-hello.eif" | cut -f1)); $(wc -l <"$out/manifest.tsv") files listed in $out/manifest.tsv" >&2
