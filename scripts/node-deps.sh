#!/usr/bin/env bash
# Installs the npm packages of the independent Node.js verifier (tests/node)
# from its lock file, once.
set -euo pipefail
cd "$(dirname "$0")/../tests/node"
stamp=node_modules/.cloister-installed
if [ ! -f "$stamp" ] || [ package-lock.json -nt "$stamp" ]; then
  npm ci --no-audit --no-fund --loglevel=error >/dev/null
  touch "$stamp"
fi
