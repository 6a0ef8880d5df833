#!/usr/bin/env bash
# The in-enclave trusted computing base, in lines of code (not blank, not
# only a comment): the enclave and core zones of lib/, the PKCS#11 module,
# and the subcommands that run inside the enclave.
set -euo pipefail
cd "$(dirname "$0")/.."
count() { # FILES...: code lines
    cat "$@" | awk '
        /^[[:space:]]*$/ { next }
        { line = $0 }
        in_comment { if (sub(/.*\*\//, "", line)) in_comment = 0; else next }
        { gsub(/\/\*.*\*\//, "", line) }
        /\/\*/ && !/\*\// { sub(/\/\*.*/, "", line); in_comment = 1 }
        line ~ /^[[:space:]]*(\/\/.*)?$/ { next }
        { n++ }
        END { print n + 0 }'
}
row() { printf '  %-66s %6s\n' "$1" "$2"; }
core=$(count lib/core/*.[ch] include/cloister/core/*.h)
enclave=$(count lib/enclave/*.[ch] include/cloister/enclave/*.h)
pkcs11=$(count pkcs11/*.[ch])
inside=(src/enclave*.[ch] src/tap.c src/keyholder*.[ch] src/kms.c src/nsm.c src/main.c src/commands.h)
cmds=0
for f in "${inside[@]}"; do [ -e "$f" ] && cmds=$((cmds + $(count "$f"))); done
echo "in-enclave trusted computing base (lines of code):"
row "core zone (lib/core, include/cloister/core)" "$core"
row "enclave zone (lib/enclave, include/cloister/enclave)" "$enclave"
row "PKCS#11 module (pkcs11/)" "$pkcs11"
row "in-enclave subcommands (src/: enclave*, tap, keyholder, kms, nsm)" "$cmds"
row "total" "$((core + enclave + pkcs11 + cmds))"
echo "not in it: host zone $(count lib/host/*.[ch] include/cloister/host/*.h), sim zone $(count lib/sim/*.[ch] include/cloister/sim/*.h)"
