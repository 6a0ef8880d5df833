# Shared by the integration scripts (sourced, not run).  Every process is
# started through `spawn` so that cleanup can stop it by PID, also when a
# check fails halfway.
#
#   work                  a fresh temporary directory, removed on exit
#   spawn NAME CMD...     starts CMD in the background, output in $work/NAME.log
#   wait_for_log NAME RE  waits until NAME's log matches RE (or NAME dies)
#   stop NAME             SIGTERM, then wait for it
#   free_port             prints a free TCP port on 127.0.0.1
#   fail MESSAGE          prints the logs of every spawned process and exits 1

CLOISTER=${CLOISTER:?set CLOISTER to the cloister binary}
# Every cloister started here refuses AF_VSOCK (cl_socket): the unix
# stand-in is the only vsock path tests may use, also when run by hand.
export CLOISTER_NO_VSOCK=1
SOURCE_DIR=${CLOISTER_SOURCE_DIR:-$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)}
work=$(mktemp -d /tmp/cloister-it.XXXXXX)
declare -A pids=()

# network namespaces a test made: deleted (with their /etc/netns files) once
# its processes are gone
cleanup_namespaces=()

cleanup() {
    local status=$?
    for name in "${!pids[@]}"; do
        kill "${pids[$name]}" 2>/dev/null || true
    done
    for name in "${!pids[@]}"; do
        wait "${pids[$name]}" 2>/dev/null || true
    done
    local ns
    for ns in "${cleanup_namespaces[@]}"; do
        ip netns del "$ns" 2>/dev/null || true
        rm -rf "/etc/netns/$ns"
    done
    rm -rf "$work"
    exit "$status"
}
trap cleanup EXIT

show_logs() {
    for log in "$work"/*.log; do
        [ -f "$log" ] || continue
        echo "--- $(basename "$log") (last 30 lines) ---" >&2
        tail -n 30 "$log" >&2
    done
}

# CLOISTER_TEST_KEEP_LOGS=DIR: a failing test also copies all its logs to DIR/<test>.<pid>/, for
# failures that show only under load (CI prints the last lines of each log only)
fail() {
    echo "FAIL: $*" >&2
    # a test may define fail_hook to write more of its state into $work/*.log first
    if declare -F fail_hook >/dev/null; then fail_hook >"$work/fail_hook.log" 2>&1 || true; fi
    show_logs
    if [ -n "${CLOISTER_TEST_KEEP_LOGS:-}" ]; then
        local keep="$CLOISTER_TEST_KEEP_LOGS/$(basename "$0" .sh).$$"
        mkdir -p "$keep" && cp "$work"/*.log "$keep"/ 2>/dev/null
        echo "logs kept in $keep" >&2
    fi
    exit 1
}

# CMD | has [GREP FLAGS] PATTERN: grep -q that reads all of its input. After `CMD | grep -q` grep
# quits at the first match, so a CMD still writing (nft writes line by line) dies of SIGPIPE and
# under pipefail the check fails at random under load.
has() {
    grep -c "$@" >/dev/null
}

pass() {
    echo "ok   $*"
}

spawn() {
    local name=$1
    shift
    "$@" >"$work/$name.log" 2>&1 &
    pids[$name]=$!
}

wait_for_log() {
    local name=$1 pattern=$2 tries=${3:-200}
    for _ in $(seq 1 "$tries"); do
        grep -qE "$pattern" "$work/$name.log" 2>/dev/null && return 0
        kill -0 "${pids[$name]}" 2>/dev/null || fail "$name exited early"
        sleep 0.05
    done
    fail "$name did not log /$pattern/ in time"
}

stop() {
    local name=$1
    local pid=${pids[$name]:-}
    [ -n "$pid" ] || return 0
    kill "$pid" 2>/dev/null || true
    local status=0
    wait "$pid" 2>/dev/null || status=$?
    unset "pids[$name]"
    return $status
}

free_port() {
    python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}

node_modules_present() {
    [ -d "$SOURCE_DIR/tests/node/node_modules" ]
}

# start_instance_role REGION: the instance's role as the enclave sees it: imds-sim (role
# enclave-role) behind `cloister host --imds vsock:3:8002` (CLOISTER_VSOCK_STANDIN set), and the
# role's credentials read through that gate the way the enclave reads them, for kms-local to know:
# sets role_key, role_secret and role_creds (KEY:SECRET, kms-local --credentials' form).
start_instance_role() {
    local port token
    port=$(free_port)
    spawn imds_sim "$CLOISTER" imds-sim --listen "tcp:127.0.0.1:$port" --role enclave-role --region "$1"
    wait_for_log imds_sim 'event=listening'
    spawn imds "$CLOISTER" host --imds vsock:3:8002 --imds-endpoint "http://127.0.0.1:$port"
    wait_for_log imds 'event=started'
    local gate=$CLOISTER_VSOCK_STANDIN/3.8002
    token=$(curl -sS --unix-socket "$gate" -X PUT -H 'X-aws-ec2-metadata-token-ttl-seconds: 60' \
        http://169.254.169.254/latest/api/token)
    curl -sS --unix-socket "$gate" -H "X-aws-ec2-metadata-token: $token" \
        http://169.254.169.254/latest/meta-data/iam/security-credentials/enclave-role >"$work/role.json"
    read -r role_key role_secret < <(python3 -c 'import json, sys; c = json.load(open(sys.argv[1]))
print(c["AccessKeyId"], c["SecretAccessKey"])' "$work/role.json")
    [ -n "$role_key" ] && [ -n "$role_secret" ] || fail "no role credentials through the IMDS gate: $(cat "$work/role.json")"
    role_creds=$role_key:$role_secret
}

# Rotation under load (pkcs11_nginx, pkcs11_acm). start_handshake_load PORT BATCH MAX starts two
# loops, each making batches of BATCH fresh TLS handshakes to https://localhost:PORT (no session
# reuse, Connection: close, $work/ca.pem) with one status line per request in $work/loadN.txt,
# until finish_handshake_load is called and for two batches more (MAX batches at most).
# finish_handshake_load MIN fails the test unless both loops outlived the rotation, every request
# answered 200 and there were at least MIN; it sets load_total.
handshake_batch() {
    local urls=() i
    for i in $(seq "$2"); do urls+=("https://localhost:$1/?$i" -o /dev/null); done
    curl -s --no-sessionid -H 'Connection: close' --max-time 60 --cacert "$work/ca.pem" \
        --resolve "localhost:$1:127.0.0.1" -w '%{http_code}\n' "${urls[@]}" || true
}
handshake_loop() {
    local after=0
    for _ in $(seq "$3"); do
        handshake_batch "$1" "$2"
        if [ -e "$work/rotated" ]; then
            after=$((after + 1))
            [ "$after" -ge 2 ] && return 0
        fi
    done
}
start_handshake_load() {
    rm -f "$work/rotated"
    handshake_loop "$@" >"$work/load1.txt" &
    load_pids=($!)
    handshake_loop "$@" >"$work/load2.txt" &
    load_pids+=($!)
}
finish_handshake_load() {
    kill -0 "${load_pids[0]}" 2>/dev/null && kill -0 "${load_pids[1]}" 2>/dev/null ||
        fail "the load ended before the rotation"
    touch "$work/rotated"
    wait "${load_pids[@]}"
    local ok
    ok=$(cat "$work/load1.txt" "$work/load2.txt" | grep -c '^200$' || true)
    load_total=$(cat "$work/load1.txt" "$work/load2.txt" | wc -l)
    [ "$ok" = "$load_total" ] && [ "$load_total" -ge "$1" ] ||
        fail "rotation under load: $ok of $load_total requests succeeded ($(sort "$work/load1.txt" "$work/load2.txt" | uniq -c | tr '\n' ' '))"
}

# start_sim: an NSM simulator on $work/nsm.sock with its state in $work/state.
start_sim() {
    spawn sim "$CLOISTER" nsm-sim --listen "unix:$work/nsm.sock" --state "$work/state"
    wait_for_log sim '^nsm-sim: listening on '
}

# start_app NAME PORT: the Node test app on 127.0.0.1:PORT.
start_app() {
    spawn "$1" node "$SOURCE_DIR/tests/integration/app/app.js" --listen "127.0.0.1:$2"
    wait_for_log "$1" 'app: listening on'
}

# start_enclave NAME ARGS...: cloister enclave with the simulator's NSM.
start_enclave() {
    local name=$1
    shift
    spawn "$name" "$CLOISTER" enclave -fqdn localhost --nsm "unix:$work/nsm.sock" "$@"
}
