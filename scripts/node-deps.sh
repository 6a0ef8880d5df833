#!/usr/bin/env bash
# Installs the npm packages of tests/node (the independent Node.js verifier's
# cbor, the proxy test app's ws) from its lock file, once and again whenever
# the lock file changes.
set -euo pipefail
cd "$(dirname "$0")/../tests/node"
stamp=node_modules/.cloister-installed
if [ ! -f "$stamp" ] || [ package-lock.json -nt "$stamp" ]; then
  npm ci --no-audit --no-fund --loglevel=error >/dev/null
  touch "$stamp"
fi
