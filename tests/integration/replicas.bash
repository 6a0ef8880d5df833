# Shared by the replicas_*.sh scripts (sourced after common.bash):
# `cloister dev --replicas N` behind HAProxy, found through its run directory.
#
#   need_fleet_tools          skips (77) without root, haproxy or wrk
#   start_fleet N [ARGS...]   cloister dev --replicas N on $port, run directory $run
#   host_pid I                replica I's cloister host
#   enclave_pid I             replica I's cloister enclave (the process group of it and its app)
#   wrk_failures FILE         non-2xx answers plus socket errors of a wrk run

need_fleet_tools() {
    [ "$(id -u)" = 0 ] || { echo "SKIP: needs root (network namespaces)"; exit 77; }
    for tool in haproxy wrk openssl python3; do
        command -v "$tool" >/dev/null || [ -x "/usr/sbin/$tool" ] || { echo "SKIP: $tool missing"; exit 77; }
    done
}

start_fleet() {
    local n=$1
    shift
    port=$(free_port)
    run="$work/run"
    spawn dev "$CLOISTER" dev --replicas "$n" --port "$port" --run-dir "$run" "$@"
    wait_for_log dev 'replicas are up behind HAProxy' 1800
}

host_pid() {
    awk -v i="$1" '$1 == i { print $2 }' "$run/replicas.txt"
}

enclave_pid() {
    grep -o 'event=enclave_started runner=local pid=[0-9]*' "$run/r$1/host.log" | tail -1 | sed 's/.*pid=//'
}

# kill_replica N: SIGKILL to everything of replica N at once, as when Nitro stops its enclave and the
# instance dies: the enclave's process group, its app's (the app has its own, so that stopping it
# reaches what its shell started), then the host and its workers.
kill_replica() {
    local host enclave app
    host=$(host_pid "$1")
    enclave=$(enclave_pid "$1")
    app=$(grep -o 'event=app_started name=app pid=[0-9]*' "$run/r$1/host.log" | tail -1 | sed 's/.*pid=//')
    [ -n "$host" ] && [ -n "$enclave" ] && [ -n "$app" ] ||
        fail "no pids for replica $1 (host '$host', enclave '$enclave', app '$app')"
    kill -KILL -- "-$enclave" 2>/dev/null || kill -KILL "$enclave"
    kill -KILL -- "-$app" 2>/dev/null || kill -KILL "$app" 2>/dev/null || true
    kill -KILL -- "-$host" 2>/dev/null || kill -KILL "$host"
}

wrk_failures() {
    python3 - "$1" <<'PY'
import re, sys
text = open(sys.argv[1]).read()
n = 0
m = re.search(r"Non-2xx or 3xx responses: (\d+)", text)
if m:
    n += int(m.group(1))
m = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", text)
if m:
    n += sum(int(x) for x in m.groups())
if not re.search(r"(\d+) requests in", text):
    n = -1
print(n)
PY
}

wrk_requests() {
    grep -o '[0-9]* requests in' "$1" | awk '{ print $1 }'
}
