#!/usr/bin/env bash
# What a hostile or broken CA (or a parent that relays one) gets out of the
# enclave's ACME client: a clear error naming the problem (the CA's problem
# document in full), bounded retries with backoff, and an enclave that keeps
# serving what it has.  Cases: a directory that is not JSON, a CA answering
# 500 for ever, a 429 with Retry-After, an authorization that stays pending,
# Pebble refusing the name (rejectedIdentifier), and Pebble unable to reach
# the challenge (the authorization turns invalid).
set -euo pipefail
source "$(dirname "$0")/common.bash"
source "$(dirname "$0")/acme/pebble.bash"
pebble_available

start_sim
pebble_tls # the certificate the fake CA and Pebble serve

# run_case NAME MODE EXTRA...: the fake CA in MODE and an enclave ordering from it
run_case() {
    local name=$1 mode=$2
    shift 2
    ca=$(free_port)
    tls=$(free_port)
    spawn "ca_$name" python3 "$SOURCE_DIR/tests/integration/acme/fake_ca.py" "$mode" "$ca" "$work/pebble.pem" "$work/pebble.key"
    wait_for_log "ca_$name" 'fake_ca: listening'
    start_enclave "enclave_$name" -fqdn "$ACME_FQDN" --listen "tcp:127.0.0.1:$tls" -intport "$(free_port)" -acme \
        --acme-directory "https://localhost:$ca/dir" --acme-ca-file "$work/pebble-ca.pem" --acme-backoff 200ms \
        --acme-max-backoff 400ms --acme-poll-interval 100ms --acme-max-polls 3 "$@"
}

# the enclave still serves HTTPS (its generated certificate) while ACME fails
still_serving() {
    curl -sfk "https://127.0.0.1:$tls/enclave" >/dev/null || fail "$1: the enclave stopped serving"
}

requests() { grep -c '^REQ' "$work/ca_$1.log" || true; }
failures() { grep -c 'event=acme_renewal_failed' "$work/enclave_$1.log" || true; }

# ---- a directory that is not JSON ------------------------------------------------------
run_case notjson notjson
wait_for_log enclave_notjson 'event=acme_renewal_failed.*failures=3' 400
grep -q 'acme_renewal_failed.*the ACME directory is not JSON' "$work/enclave_notjson.log" ||
    fail "not named: $(grep acme_renewal_failed "$work/enclave_notjson.log" | head -1)"
still_serving notjson
stop enclave_notjson || true
# (+1: an attempt in flight when the enclave was stopped has no failure line)
[ "$(requests notjson)" -le $(($(failures notjson) + 1)) ] ||
    fail "$(requests notjson) requests for $(failures notjson) attempts: the directory is fetched once per attempt"
pass "a directory that is not JSON: 'the ACME directory is not JSON', one request per attempt, still serving"

# ---- 500 for ever ------------------------------------------------------------------------
run_case 500 500
wait_for_log enclave_500 'event=acme_renewal_failed.*failures=3' 400
grep -q 'acme_renewal_failed.*HTTP 500 without a problem document: oops, the CA is down' "$work/enclave_500.log" ||
    fail "not named: $(grep acme_renewal_failed "$work/enclave_500.log" | head -1)"
still_serving 500
stop enclave_500 || true
[ "$(requests 500)" -le $((3 * $(failures 500) + 3)) ] ||
    fail "$(requests 500) requests for $(failures 500) attempts: more than 3 per attempt"
pass "a CA answering 500 for ever: the answer shown, at most 3 requests per attempt with backoff, still serving"

# ---- 429 with Retry-After --------------------------------------------------------------
run_case ratelimit ratelimit
wait_for_log enclave_ratelimit 'event=acme_renewal_failed' 400
line=$(grep 'event=acme_renewal_failed' "$work/enclave_ratelimit.log" | head -1)
echo "$line" | has 'HTTP 429: urn:ietf:params:acme:error:rateLimited: too many certificates already issued for this name' ||
    fail "the problem document is not shown in full: $line"
echo "$line" | has 'retry_after_s=4' || fail "Retry-After not read: $line"
retry_ms=$(echo "$line" | sed 's/.*retry_in_ms=\([0-9]*\).*/\1/')
[ "$retry_ms" -ge 4000 ] || fail "retried in ${retry_ms} ms, before the CA's Retry-After of 4 s (backoff 200ms)"
still_serving ratelimit
stop enclave_ratelimit || true
pass "429 rateLimited: the problem in full, the next attempt not before Retry-After (${retry_ms} ms > backoff)"

# ---- an authorization that never validates -------------------------------------------------
run_case pending pending
wait_for_log enclave_pending 'event=acme_renewal_failed' 400
grep -q 'acme_renewal_failed.*the tls-alpn-01 challenge for enclave.cloister.test was not validated after 3 polls' \
    "$work/enclave_pending.log" || fail "not named: $(grep acme_renewal_failed "$work/enclave_pending.log" | head -1)"
still_serving pending
stop enclave_pending || true
pass "a challenge that never validates: 'not validated after 3 polls' (--acme-max-polls), still serving"

# ---- Pebble refuses the name, then cannot reach the challenge -----------------------------
tls=$(free_port)
start_pebble "$(free_port)" "$(free_port)" "" "$ACME_FQDN"
start_enclave enclave_refused -fqdn "$ACME_FQDN" --listen "tcp:127.0.0.1:$tls" -intport "$(free_port)" -acme \
    --acme-directory "$pebble_directory" --acme-ca-file "$work/pebble-ca.pem" --acme-backoff 5s
wait_for_log enclave_refused 'event=acme_renewal_failed' 400
grep -q 'acme_renewal_failed.*ACME newOrder: HTTP 400: urn:ietf:params:acme:error:rejectedIdentifier: .*enclave.cloister.test' \
    "$work/enclave_refused.log" || fail "not named: $(grep acme_renewal_failed "$work/enclave_refused.log" | head -1)"
still_serving refused
stop enclave_refused || true
stop pebble || true
stop challtestsrv || true
pass "Pebble refusing the name: rejectedIdentifier and its detail shown, still serving"

# Pebble validates tls-alpn-01 on a port where nothing listens
tls=$(free_port)
start_pebble "$(free_port)" "$(free_port)"
start_enclave enclave_unreached -fqdn "$ACME_FQDN" --listen "tcp:127.0.0.1:$tls" -intport "$(free_port)" -acme \
    --acme-directory "$pebble_directory" --acme-ca-file "$work/pebble-ca.pem" --acme-backoff 5s \
    --acme-poll-interval 200ms
wait_for_log enclave_unreached 'event=acme_renewal_failed' 600
grep -q 'acme_renewal_failed.*the tls-alpn-01 challenge for enclave.cloister.test failed (authorization invalid): urn:ietf:params:acme:error:' \
    "$work/enclave_unreached.log" || fail "not named: $(grep acme_renewal_failed "$work/enclave_unreached.log" | head -1)"
still_serving unreached
pass "a challenge Pebble cannot reach: the authorization's problem shown, still serving"

stop enclave_unreached || true
no_sanitizer_reports
