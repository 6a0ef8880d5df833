# Pebble (Debian's `pebble`, 2.4) as the ACME CA for the acme_* tests,
# sourced after common.bash.  pebble-challtestsrv is its DNS: every name
# resolves to 127.0.0.1, where the enclave's listeners are; Pebble's
# challenge ports are set to those listeners.
#
#   pebble_available              exit 77 (skip) when pebble is not installed
#   start_pebble TLS HTTP [VALIDITY_S] [BLOCKLIST]  (pebble_prepare + pebble_run)
#                                 Pebble on $pebble_port (management
#                                 $pebble_mgmt) validating tls-alpn-01 on TLS
#                                 and http-01 on HTTP; VALIDITY_S sets the
#                                 certificate lifetime (certificateValidityPeriod)
#   pebble_root FILE              Pebble's issuing root (management /roots/0)
#   pebble_orders                 how many orders Pebble has created (its log)
#   ACME_FQDN                     the name the enclave asks for

ACME_FQDN=${ACME_FQDN:-enclave.cloister.test}

pebble_available() {
    command -v pebble >/dev/null && command -v pebble-challtestsrv >/dev/null ||
        { echo "skip: pebble is not installed (scripts/deps.sh installs it)"; exit 77; }
}

# A CA and a certificate for Pebble's own HTTPS (Debian ships none): the
# enclave trusts it with --acme-ca-file.
pebble_tls() {
    openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 2 -subj /CN=pebble-test-ca \
        -keyout "$work/pebble-ca.key" -out "$work/pebble-ca.pem" 2>/dev/null
    openssl req -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -subj /CN=localhost \
        -keyout "$work/pebble.key" -out "$work/pebble.csr" 2>/dev/null
    printf 'subjectAltName=DNS:localhost,IP:127.0.0.1\n' >"$work/pebble.ext"
    openssl x509 -req -in "$work/pebble.csr" -CA "$work/pebble-ca.pem" -CAkey "$work/pebble-ca.key" \
        -CAcreateserial -days 2 -extfile "$work/pebble.ext" -out "$work/pebble.pem" 2>/dev/null
}

# pebble_prepare TLS HTTP [VALIDITY_S] [BLOCKLIST]: ports, certificate and
# configuration ($pebble_directory is known from here on); pebble_run starts it.
pebble_prepare() {
    local tls=$1 http=$2 validity=${3:-} blocklist=${4:-}
    pebble_tls
    pebble_port=${PEBBLE_PORT:-$(free_port)} # PEBBLE_PORT: when the directory URL must be known first
    pebble_mgmt=$(free_port)
    pebble_dns=$(free_port)
    pebble_dns_mgmt=$(free_port)
    pebble_directory="https://localhost:$pebble_port/dir"
    python3 - "$work/pebble.json" "$pebble_port" "$pebble_mgmt" "$work/pebble.pem" "$work/pebble.key" "$http" "$tls" \
        "$validity" "$blocklist" <<'PY'
import json, sys
path, port, mgmt, cert, key, http, tls, validity, blocklist = sys.argv[1:]
p = {"listenAddress": "127.0.0.1:" + port, "managementListenAddress": "127.0.0.1:" + mgmt,
     "certificate": cert, "privateKey": key, "httpPort": int(http), "tlsPort": int(tls),
     "ocspResponderURL": "", "externalAccountBindingRequired": False}
if validity:
    p["certificateValidityPeriod"] = int(validity)
if blocklist:
    p["domainBlocklist"] = [blocklist]
json.dump({"pebble": p}, open(path, "w"))
PY
}

pebble_run() {
    spawn challtestsrv pebble-challtestsrv -dns01 "127.0.0.1:$pebble_dns" -http01 "" -https01 "" -tlsalpn01 "" \
        -management "127.0.0.1:$pebble_dns_mgmt" -defaultIPv4 127.0.0.1 -defaultIPv6 ""
    wait_for_log challtestsrv 'Starting challenge servers|DNS|dns'
    PEBBLE_VA_NOSLEEP=1 PEBBLE_WFE_NONCEREJECT=${PEBBLE_WFE_NONCEREJECT:-0} PEBBLE_AUTHZREUSE=0 \
        spawn pebble pebble -config "$work/pebble.json" -dnsserver "127.0.0.1:$pebble_dns"
    wait_for_log pebble 'Listening on: 127.0.0.1'
    # its management listener may be the one logged: the directory itself must answer before an
    # enclave's first attempt, or that attempt fails to connect (seen under load in CI)
    local _
    for _ in $(seq 1 100); do
        curl -sf --max-time 2 --cacert "$work/pebble-ca.pem" "$pebble_directory" >/dev/null && return 0
        kill -0 "${pids[pebble]}" 2>/dev/null || fail "pebble exited early"
        sleep 0.1
    done
    fail "Pebble's directory $pebble_directory did not answer"
}

start_pebble() {
    pebble_prepare "$@"
    pebble_run
}

pebble_root() {
    curl -sf --cacert "$work/pebble-ca.pem" "https://localhost:$pebble_mgmt/roots/0" >"$1" ||
        fail "Pebble's management interface gave no root"
}

pebble_orders() {
    grep -c 'POST /order-plz' "$work/pebble.log" || true
}

# After the enclaves were stopped: no sanitizer report in any log (the
# asan.integration.acme_* runs use the ASan+UBSan build).
no_sanitizer_reports() {
    local bad
    bad=$(grep -lE 'ERROR: (Address|Leak)Sanitizer|runtime error:' "$work"/*.log 2>/dev/null || true)
    [ -z "$bad" ] || fail "sanitizer reports in $(echo "$bad" | xargs -n1 basename): $(grep -hm1 -E 'Sanitizer|runtime error:' $bad)"
}
