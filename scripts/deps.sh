#!/usr/bin/env bash
# Installs the Debian packages cloister needs to build and test, and only
# those that are missing.  Silent when nothing is missing; idempotent.
set -euo pipefail

packages=(
  make cmake clang libclang-rt-14-dev gcc pkg-config
  libssl-dev openssl libjansson-dev libnghttp2-dev libcurl4-openssl-dev
  libsqlite3-dev libsodium-dev libyaml-dev libsecp256k1-dev libseccomp-dev valgrind
  nginx-light haproxy wrk nghttp2-client socat pebble nftables dnsmasq-base
  python3-jsonschema python3-yaml python3-nacl python3-cbor2 python3-cryptography
  ca-certificates curl iproute2 procps python3 python3-boto3
  nginx libp11-kit-dev p11-kit p11-kit-modules libengine-pkcs11-openssl opensc softhsm2
)

missing=()
for p in "${packages[@]}"; do
  if [ "$(dpkg-query -W -f='${Status}' "$p" 2>/dev/null)" != "install ok installed" ]; then
    missing+=("$p")
  fi
done
# Node.js may come from Debian or from elsewhere: judge by the commands.
command -v node >/dev/null 2>&1 || missing+=(nodejs)
command -v npm >/dev/null 2>&1 || missing+=(npm)

if [ ${#missing[@]} -gt 0 ]; then
  if [ "$(id -u)" != 0 ]; then
    echo "deps: missing packages: ${missing[*]}; run as root or install them" >&2
    exit 1
  fi
  echo "deps: installing ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi
