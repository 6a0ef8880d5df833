#!/usr/bin/env bash
# What the in-enclave daemon brings into the image: the `cloister` binary
# (as built and stripped), libcloister.so (for programs linking the
# library; the binary links it statically), and every shared library the
# binary loads with its size and Debian package, plus libcurl and SQLite,
# which cloister loads on first use (lib/core/lazy.h) but the enclave
# daemon maps only for ACME, a DynamoDB store or KMS over HTTPS.
#   scripts/enclave-footprint.sh [BUILD_DIR]     (default: build)
set -euo pipefail
cd "$(dirname "$0")/.."
build=${1:-build}
bin=$build/cloister
[ -x "$bin" ] || { echo "enclave-footprint: $bin is not built (cmake --build $build)" >&2; exit 2; }
size() { stat -L -c %s "$1"; }
human() { numfmt --to=iec-i --suffix=B "$1"; }
pkg() { # FILE: the Debian package that owns it (resolving /lib -> /usr/lib)
    local real
    real=$(readlink -f "$1")
    dpkg -S "$real" 2>/dev/null | head -1 | cut -d: -f1 ||
        dpkg -S "${real#/usr}" 2>/dev/null | head -1 | cut -d: -f1 || echo '?'
}
stripped=$(mktemp)
trap 'rm -f "$stripped"' EXIT
strip -o "$stripped" "$bin"
row() { printf '  %-50s %10s  %s\n' "$1" "$2" "$3"; }
echo "the in-enclave daemon ($bin):"
row "cloister (as built, with debug info)" "$(human "$(size "$bin")")" ""
row "cloister (stripped: what an image holds)" "$(human "$(size "$stripped")")" ""
lib=$(ls "$build"/libcloister.so.*.*.* 2>/dev/null | head -1 || true)
if [ -n "$lib" ]; then
    strip -o "$stripped.so" "$lib"
    row "libcloister.so (stripped; not needed by cloister)" "$(human "$(size "$stripped.so")")" ""
    rm -f "$stripped.so"
fi
echo "shared libraries cloister loads at start (ldd):"
total=$(size "$stripped")
libs=$(ldd "$bin" | awk '/=> \// { print $3 } /^\t\/.*ld-linux/ { print $1 }' | sort -u)
for l in $libs; do
    s=$(size "$l")
    total=$((total + s))
    row "$(basename "$l")" "$(human "$s")" "$(pkg "$l")"
done
echo "loaded on first use only (dlopen):"
lazy_total=0
for name in libcurl.so.4 libsqlite3.so.0; do
    # awk reads to the end: an early exit would SIGPIPE ldconfig under pipefail
    l=$(ldconfig -p | awk -v n="$name" '$1 == n && /x86-64|aarch64|AArch64/ && !found { print $NF; found = 1 }')
    [ -n "$l" ] || continue
    s=$(size "$l")
    lazy_total=$((lazy_total + s))
    row "$name" "$(human "$s")" "$(pkg "$l")"
done
echo "total at start (stripped cloister + its libraries): $(human "$total") ($total bytes)"
echo "with the dlopen'd ones: $(human $((total + lazy_total))) (their own dependencies not counted)"
