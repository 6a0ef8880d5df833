#!/usr/bin/env bash
# cloister enclave -seccomp enforce -appcmd: the app is started by the
# launcher (lib/enclave/launcher.c), forked before the filter, so the daemon
# runs filtered (Seccomp 2 on every thread) while the launcher and the app
# run without it (Seccomp 0) and the app is served through the enclave.
# Killing the app: the daemon's supervisor restarts it through the
# launcher (app_restarts_total goes up).  The app inherits no socket of the
# daemon's or the launcher's.  The attack: a compromised daemon writing on
# the launcher's socket a START with a command line of its own -- this
# script takes a copy of the daemon's socket (pidfd_getfd) and does just
# that: the launcher refuses, stops the app and exits, and the command is
# not run.  SIGTERM to the daemon, or SIGKILL: the launcher and the app are
# gone too.  With -user nobody the launcher and the app run as nobody, the
# launcher undumpable.  Before the launcher, enforce with -appcmd was
# refused (exit 2) and every check here failed.
set -euo pipefail
source "$(dirname "$0")/common.bash"
command -v curl >/dev/null || { echo "skip: needs curl"; exit 77; }
MODE=enforce
if [ -n "${CLOISTER_TEST_SANITIZED:-}" ]; then
    # LeakSanitizer's exit-time scan needs calls outside the list (see
    # enclave_seccomp.sh); log installs the same filter, letting them through
    MODE=log
fi

chmod 755 "$work"
start_sim
chmod 666 "$work/nsm.sock"
mkdir -p "$work/www"
echo "served by the unfiltered app" >"$work/www/hello.txt"
app=$(free_port)
pub=$(free_port)
ip=$(free_port)
mp=$(free_port)
APPCMD="cd $work/www && exec python3 -m http.server --bind 127.0.0.1 $app"
start_enclave enclave -seccomp "$MODE" --listen "tcp:127.0.0.1:$pub" -intport "$ip" \
    -appwebsrv "http://127.0.0.1:$app" -prometheus-listen "tcp:127.0.0.1:$mp" -appcmd "$APPCMD"
wait_for_log enclave "event=seccomp_installed mode=$MODE"
wait_for_log enclave 'event=app_started'
epid=${pids[enclave]}
url="https://127.0.0.1:$pub"

# log_pid NAME EVENT [NTH]: the pid= of the NTH (default last) EVENT line in NAME's log
log_pid() {
    grep "event=$2 " "$work/$1.log" | sed -n "${3:-\$}p" | sed -E 's/.* pid=([0-9]+).*/\1/'
}
# served: the app's page through the enclave, waited for (the app may still be starting)
served() {
    for _ in $(seq 1 100); do
        [ "$(curl -sk "$url/hello.txt" 2>/dev/null)" = "served by the unfiltered app" ] && return 0
        sleep 0.1
    done
    return 1
}
seccomp_of() { awk '/^Seccomp:/ { print $2 }' "/proc/$1/status"; }
ppid_of() { awk '/^PPid:/ { print $2 }' "/proc/$1/status"; }
socket_inodes() { ls -l "/proc/$1/fd/" 2>/dev/null | sed -nE 's/.*socket:\[([0-9]+)\].*/\1/p' | sort -u; }
gone() {
    for _ in $(seq 1 100); do
        kill -0 "$1" 2>/dev/null || return 0
        sleep 0.05
    done
    return 1
}

launcher=$(log_pid enclave launcher_started)
app_pid=$(log_pid enclave app_started)
[ -n "$launcher" ] && [ -n "$app_pid" ] || fail "no launcher_started or app_started pid in the log"
[ "$(ppid_of "$launcher")" = "$epid" ] || fail "the launcher $launcher is not the daemon's child"
[ "$(ppid_of "$app_pid")" = "$launcher" ] || fail "the app $app_pid is not the launcher's child"
for t in /proc/"$epid"/task/*; do
    grep -q '^Seccomp:[[:space:]]*2$' "$t/status" || fail "daemon thread $(basename "$t") runs without the filter"
done
[ "$(seccomp_of "$launcher")" = 0 ] || fail "the launcher runs with Seccomp $(seccomp_of "$launcher")"
[ "$(seccomp_of "$app_pid")" = 0 ] || fail "the app runs with Seccomp $(seccomp_of "$app_pid")"
grep -q '^NoNewPrivs:[[:space:]]*0$' "/proc/$app_pid/status" || fail "the app has no_new_privs (the daemon's filter's)"
served || fail "the app is not served through the enclave"
pass "-seccomp $MODE -appcmd: daemon $epid Seccomp 2 (every thread), launcher $launcher and app $app_pid Seccomp 0; the app is served"

# the app holds no socket of the daemon (listeners, NSM) nor of the launcher (its request socket)
theirs=$( (socket_inodes "$epid"; socket_inodes "$launcher") | sort -u)
shared=$(comm -12 <(echo "$theirs") <(socket_inodes "$app_pid"))
[ -z "$shared" ] || fail "the app holds sockets of the daemon or the launcher: $shared"
pass "the app inherits no socket of the daemon or the launcher"

# ---- the app dies: the supervisor restarts it through the launcher ------------------------------
kill -KILL "$app_pid"
for _ in $(seq 1 100); do
    [ "$(grep -c 'event=app_started' "$work/enclave.log")" -ge 2 ] && break
    sleep 0.05
done
app2=$(log_pid enclave app_started 2)
[ -n "$app2" ] && [ "$app2" != "$app_pid" ] || fail "the app was not restarted"
grep -q "event=app_exited name=app pid=$app_pid status=\"killed by signal 9\"" "$work/enclave.log" ||
    fail "the app's exit (signal 9) did not reach the supervisor"
[ "$(ppid_of "$app2")" = "$launcher" ] || fail "the restarted app $app2 is not the launcher's child"
[ "$(seccomp_of "$app2")" = 0 ] || fail "the restarted app runs with Seccomp $(seccomp_of "$app2")"
served || fail "the restarted app is not served"
curl -sS "http://127.0.0.1:$mp/metrics" -o "$work/metrics.txt" || fail "GET /metrics"
restarts=$(awk '$1 == "cloister_app_restarts_total" { print $2 }' "$work/metrics.txt")
[ "${restarts:-0}" -ge 1 ] || fail "app_restarts_total is ${restarts:-absent}"
kill -0 "$epid" || fail "the daemon died"
pass "app killed: restarted through the launcher (pid $app2, Seccomp 0), served again, app_restarts_total $restarts"

# ---- the attack: a compromised daemon asks the launcher for another command ---------------------
python3 - "$epid" "$work/pwned" >"$work/attack.out" 2>&1 <<'PY' || fail "the attack could not be staged: $(cat "$work/attack.out")"
import ctypes, os, socket, sys
daemon, marker = int(sys.argv[1]), sys.argv[2]
libc = ctypes.CDLL(None, use_errno=True)
pidfd = os.pidfd_open(daemon)
for name in os.listdir(f"/proc/{daemon}/fd"):
    fd = libc.syscall(438, pidfd, int(name), 0)  # pidfd_getfd: a copy of the daemon's descriptor
    if fd < 0:
        continue
    try:
        s = socket.socket(fileno=fd)
    except OSError:
        os.close(fd)
        continue
    if s.family == socket.AF_UNIX and s.type == socket.SOCK_SEQPACKET:
        # a well-formed START, then the attacker's command line in the same message
        s.send(b"CLLQ\x01\x01" + bytes(10) + f"touch {marker}".encode() + bytes(1))
        print("sent on descriptor", name)
        sys.exit(0)
    s.close()
sys.exit("no SOCK_SEQPACKET socket in the daemon")
PY
wait_for_log enclave 'component=enclave-launcher event=launcher_refused'
grep -qE 'event=launcher_refused error="a request of [0-9]+ bytes \(every request is 16\)' "$work/enclave.log" ||
    fail "the refusal does not name the request's size: $(grep launcher_refused "$work/enclave.log")"
gone "$launcher" || fail "the launcher $launcher still runs after refusing"
gone "$app2" || fail "the app $app2 still runs after the launcher's refusal"
wait_for_log enclave 'event=app_launcher_lost'
[ ! -e "$work/pwned" ] || fail "the attacker's command ran"
kill -0 "$epid" || fail "the daemon died"
pass "a START with a command line on the launcher's socket: refused (logged), app stopped, launcher gone, nothing run"

stop enclave || fail "the daemon did not exit 0 on SIGTERM"

# ---- the daemon's end is the launcher's and the app's ------------------------------------------
start_enclave second -seccomp "$MODE" --listen "tcp:127.0.0.1:$(free_port)" -intport "$(free_port)" \
    -appwebsrv "http://127.0.0.1:$app" -appcmd "$APPCMD"
wait_for_log second 'event=app_started'
l2=$(log_pid second launcher_started)
a2=$(log_pid second app_started)
kill -TERM "${pids[second]}"
status=0
wait "${pids[second]}" || status=$?
unset "pids[second]"
[ "$status" = 0 ] || fail "exit $status on SIGTERM"
grep -q "event=app_exited name=app pid=$a2 status=\"killed by signal 15\"" "$work/second.log" ||
    fail "the app was not stopped with SIGTERM through the launcher"
gone "$l2" || fail "the launcher $l2 outlived the daemon"
gone "$a2" || fail "the app $a2 outlived the daemon"
pass "SIGTERM: the app stopped through the launcher, daemon exit 0, launcher and app gone"

start_enclave third -seccomp "$MODE" --listen "tcp:127.0.0.1:$(free_port)" -intport "$(free_port)" \
    -appwebsrv "http://127.0.0.1:$app" -appcmd "$APPCMD"
wait_for_log third 'event=app_started'
l3=$(log_pid third launcher_started)
a3=$(log_pid third app_started)
kill -KILL "${pids[third]}"
wait "${pids[third]}" 2>/dev/null || true
unset "pids[third]"
gone "$l3" || fail "the launcher $l3 outlived a killed daemon"
gone "$a3" || fail "the app $a3 outlived a killed daemon"
pass "SIGKILL to the daemon: launcher and app gone"

# ---- with -user: the launcher and the app as that user --------------------------------------
if [ "$(id -u)" = 0 ] && getent passwd nobody >/dev/null; then
    nobody_uid=$(id -u nobody)
    mkdir -m 777 "$work/u"
    start_enclave user -user nobody -seccomp "$MODE" --listen "tcp:127.0.0.1:$(free_port)" -intport "$(free_port)" \
        -appcmd "id -u >$work/u/uid; exec sleep 60"
    wait_for_log user 'event=app_started'
    lu=$(log_pid user launcher_started)
    au=$(log_pid user app_started)
    for _ in $(seq 1 100); do [ -s "$work/u/uid" ] && break; sleep 0.05; done
    [ "$(cat "$work/u/uid" 2>/dev/null)" = "$nobody_uid" ] || fail "-user: the app ran as uid $(cat "$work/u/uid")"
    read -r _ r e s _ < <(grep '^Uid:' "/proc/$lu/status")
    [ "$r $e $s" = "$nobody_uid $nobody_uid $nobody_uid" ] || fail "-user: the launcher runs as $r/$e/$s"
    [ "$(seccomp_of "$lu")" = 0 ] && [ "$(seccomp_of "$au")" = 0 ] || fail "-user: the launcher or the app is filtered"
    # an undumpable process's /proc/PID files belong to root: the app (same user) cannot trace the launcher
    [ "$(stat -c %u "/proc/$lu/status")" = 0 ] || fail "-user: the launcher is dumpable"
    [ "$(stat -c %u "/proc/$au/status")" = "$nobody_uid" ] || fail "-user: unexpected owner of the app's /proc entry"
    stop user || fail "-user: exit status on SIGTERM"
    gone "$lu" && gone "$au" || fail "-user: the launcher or the app outlived the daemon"
    pass "-user nobody: launcher and app run as nobody (Seccomp 0), the launcher undumpable"
fi
