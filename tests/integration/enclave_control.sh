#!/usr/bin/env bash
# cloister enclave's control surface: nitriding-style flags and --config,
# /enclave and /enclave/config, the internal listener (/enclave/ready
# gating with -wait-for-app, /enclave/hash bound into attestations), and
# -appcmd (output passed through to the log, restart after a crash, stop
# on shutdown).
set -euo pipefail
source "$(dirname "$0")/common.bash"

node_modules_present || { echo "SKIP: tests/node/node_modules missing (run scripts/node-deps.sh)"; exit 77; }
APP="$SOURCE_DIR/tests/integration/app"
start_sim

# ---- command line ------------------------------------------------------------------
"$CLOISTER" enclave --help | has -- '-wait-for-app' || fail "--help lists the nitriding flags"
set +e
"$CLOISTER" enclave -appwebsrv http://127.0.0.1:1 2>"$work/err.txt"
status=$?
set -e
[ "$status" = 2 ] && grep -q -- '-fqdn is required' "$work/err.txt" || fail "missing -fqdn: status $status, $(cat "$work/err.txt")"
set +e
"$CLOISTER" enclave -fqdn x -bogus 2>"$work/err.txt"
status=$?
set -e
[ "$status" = 2 ] && grep -q "unknown option '-bogus'" "$work/err.txt" || fail "unknown flag: $(cat "$work/err.txt")"
echo '{"fqdn": "x", "intport": "eighty"}' >"$work/bad.json"
set +e
"$CLOISTER" enclave --config "$work/bad.json" 2>"$work/err.txt"
status=$?
set -e
[ "$status" = 2 ] && grep -q '"intport" must be a non-negative integer' "$work/err.txt" ||
    fail "bad config value: $(cat "$work/err.txt")"
pass "usage errors name the problem (exit 2)"

# ---- -wait-for-app, config file, internal listener --------------------------------------
app_port=$(free_port)
pub=$(free_port)
int=$(free_port)
cat >"$work/enclave.json" <<EOF
{"fqdn": "example.test", "appwebsrv": "http://127.0.0.1:$app_port", "intport": $int,
 "listen": "tcp:127.0.0.1:$pub", "wait-for-app": true, "appurl": "https://github.com/example/app"}
EOF
start_app app "$app_port"
start_enclave enclave --config "$work/enclave.json" -fqdn localhost
wait_for_log enclave 'event=listening listener=internal'
wait_for_log enclave 'event=waiting_for_app'
if curl -sk --max-time 2 "https://127.0.0.1:$pub/hello" >/dev/null 2>&1; then fail "public listener open before /enclave/ready"; fi
[ "$(curl -s -o /dev/null -w '%{http_code}' "http://127.0.0.1:$int/enclave/ready")" = 200 ] || fail "first /enclave/ready"
got=$(curl -sk "https://127.0.0.1:$pub/hello" 2>&1) || true
[ "$got" = "hello from the app" ] || fail "public listener after /enclave/ready: got '$got'"
[ "$(curl -s -o /dev/null -w '%{http_code}' "http://127.0.0.1:$int/enclave/ready")" = 410 ] || fail "second /enclave/ready"
pass "-wait-for-app: public listener closed until /enclave/ready (200), then 410"

config=$(curl -sk "https://127.0.0.1:$pub/enclave/config")
node -e '
    const c = JSON.parse(process.argv[1]);
    const ok = c.fqdn === "localhost" && c["wait-for-app"] === true && c.appurl === "https://github.com/example/app" &&
        /^[0-9a-f]{64}$/.test(c["certificate-sha256"]) && !("key" in c);
    process.exit(ok ? 0 : 1);' "$config" || fail "/enclave/config: $config"
curl -sk "https://127.0.0.1:$pub/enclave" | has 'https://github.com/example/app' || fail "/enclave text"
pass "/enclave/config reflects the config file with the flag overriding it; /enclave names the app source"

# the internal listener is not the public one: no proxying, no TLS
[ "$(curl -s -o /dev/null -w '%{http_code}' "http://127.0.0.1:$int/hello")" = 404 ] || fail "internal listener proxied"

# ---- /enclave/hash -----------------------------------------------------------------
hash_hex=$(printf 'app public key' | sha256sum | cut -c1-64)
hash_b64=$(printf 'app public key' | openssl dgst -sha256 -binary | base64)
[ "$(curl -s -o /dev/null -w '%{http_code}' --data "not base64 of 32 bytes" "http://127.0.0.1:$int/enclave/hash")" = 400 ] ||
    fail "a malformed hash is refused"
[ "$(curl -s -o /dev/null -w '%{http_code}' --data "$hash_b64" "http://127.0.0.1:$int/enclave/hash")" = 200 ] ||
    fail "POST /enclave/hash"
nonce=$(head -c 20 /dev/urandom | od -An -tx1 | tr -d ' \n')
curl -sk "https://127.0.0.1:$pub/enclave/attestation?nonce=$nonce" | base64 -d >"$work/doc.cbor"
shown=$("$CLOISTER" attest show "$work/doc.cbor")
cert_hex=$(echo | openssl s_client -connect "127.0.0.1:$pub" 2>/dev/null | openssl x509 -outform DER | sha256sum | cut -c1-64)
grep -q "\"user_data\": \"1220${cert_hex}1220${hash_hex}\"" <<<"$shown" || fail "user_data does not bind certificate and app hash: $shown"
grep -q "\"nonce\": \"$nonce\"" <<<"$shown" || fail "nonce not in the document"
internal_doc=$(curl -s "http://127.0.0.1:$int/enclave/attestation?nonce=$nonce" | base64 -d | "$CLOISTER" attest show -)
grep -q "1220${hash_hex}" <<<"$internal_doc" || fail "internal attestation lacks the app hash"
pass "user_data = 0x1220 SHA-256(certificate) 0x1220 app hash, on both listeners"
stop enclave || fail "enclave exit status after SIGTERM"
stop app || true

# ---- -appcmd -----------------------------------------------------------------------
app_port=$(free_port)
pub=$(free_port)
int=$(free_port)
metrics=$(free_port)
start_enclave enclave2 --listen "tcp:127.0.0.1:$pub" -intport "$int" -appwebsrv "http://127.0.0.1:$app_port" \
    -appcmd "exec node $APP/app.js --listen 127.0.0.1:$app_port" --prometheus-listen "tcp:127.0.0.1:$metrics"
wait_for_log enclave2 'event=app_output stream=app.stdout line="app: listening on'
[ "$(curl -sk "https://127.0.0.1:$pub/hello")" = "hello from the app" ] || fail "app started by -appcmd"
app_pid=$(grep -oE 'event=app_started name=app pid=[0-9]+' "$work/enclave2.log" | head -1 | grep -oE '[0-9]+$')
kill -KILL "$app_pid"
wait_for_log enclave2 'event=app_exited name=app pid='"$app_pid"' status="killed by signal 9"'
for _ in $(seq 1 100); do
    [ "$(grep -c 'event=app_started' "$work/enclave2.log")" -ge 2 ] && break
    sleep 0.1
done
[ "$(grep -c 'event=app_started' "$work/enclave2.log")" -ge 2 ] || fail "app not restarted"
for _ in $(seq 1 100); do
    [ "$(curl -sk "https://127.0.0.1:$pub/hello" 2>/dev/null)" = "hello from the app" ] && break
    sleep 0.1
done
[ "$(curl -sk "https://127.0.0.1:$pub/hello")" = "hello from the app" ] || fail "app back after restart"
curl -sS "http://127.0.0.1:$metrics/metrics" -o "$work/metrics.txt" || fail "GET /metrics" # not piped: grep -q would SIGPIPE curl
grep -q '^cloister_app_restarts_total 1$' "$work/metrics.txt" || fail "restart not counted"
new_pid=$(grep -oE 'event=app_started name=app pid=[0-9]+' "$work/enclave2.log" | tail -1 | grep -oE '[0-9]+$')
stop enclave2 || fail "enclave exit status after SIGTERM"
kill -0 "$new_pid" 2>/dev/null && fail "the app outlived the enclave"
grep -q 'event=app_exited name=app pid='"$new_pid" "$work/enclave2.log" || fail "app stop not logged"
pass "-appcmd: output in the log, restarted after SIGKILL, stopped with the daemon"
