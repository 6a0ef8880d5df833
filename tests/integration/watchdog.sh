#!/usr/bin/env bash
# cloister watchdog: the nitro-cli runner against a fake nitro-cli (exact
# run-enclave arguments, restart after the enclave dies, terminate on stop,
# nitro-cli errors), and the local runner with a real process answering HTTP
# on a unix socket (kill -9, 503, a hung health endpoint, a command that
# always dies, a start timeout, SIGTERM, READY=1 to $NOTIFY_SOCKET).
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/common.bash"

command -v python3 >/dev/null || { echo "skip: python3 is absent"; exit 77; }
here="$SOURCE_DIR/tests/integration/watchdog"
fast=(--health-interval 200ms --health-timeout 500ms --health-failures 2 --backoff-initial 200ms --backoff-max 1s)

# Processes the watchdog started are stopped by it; should a check fail
# first, they are killed here by PID (fake enclaves and python enclaves).
kill_leftovers() {
    if [ -f "$work/nitro/pids" ]; then
        while read -r p; do kill -9 "$p" 2>/dev/null || true; done <"$work/nitro/pids"
    fi
    for p in $(cat "$work"/*.log 2>/dev/null | grep -o 'enclave: listening pid=[0-9]*' | cut -d= -f2); do
        kill -9 "$p" 2>/dev/null || true
    done
    return 0
}
trap 'st=$?; kill_leftovers; (exit $st); cleanup' EXIT

# alive PID: a process that has not exited (zombies waiting for init are dead)
alive() {
    local state
    state=$(awk '{print $3}' "/proc/$1/stat" 2>/dev/null) || return 1
    [ -n "$state" ] && [ "$state" != Z ] && [ "$state" != X ]
}

# within SECONDS WHAT CMD...: CMD succeeds within SECONDS, or fail.
within() {
    local limit=$1 what=$2
    shift 2
    local deadline=$(($(date +%s%N) + limit * 1000000000))
    until "$@"; do
        [ "$(date +%s%N)" -lt "$deadline" ] || fail "$what: not within ${limit}s"
        sleep 0.05
    done
}

count() { # count NAME REGEX: matching lines in NAME's log
    grep -cE "$2" "$work/$1.log" 2>/dev/null || true
}

# wait_exit NAME SECONDS: waits for NAME to exit by itself; sets $exit_status
wait_exit() {
    local name=$1 pid=${pids[$1]}
    within "$2" "$name exits" eval '! kill -0 '"$pid"' 2>/dev/null'
    exit_status=0
    wait "$pid" || exit_status=$?
    unset "pids[$name]"
}

# ---- command line -------------------------------------------------------------------------

st=0
"$CLOISTER" watchdog --eif x.eif --cpu-count 2 --memory 512 --enclave-command true >"$work/usage.out" 2>&1 || st=$?
[ "$st" = 2 ] && grep -q 'exclude each other' "$work/usage.out" || fail "both runners: exit $st: $(cat "$work/usage.out")"
st=0
"$CLOISTER" watchdog --eif x.eif --memory 512 >"$work/usage.out" 2>&1 || st=$?
[ "$st" = 2 ] && grep -q -- '--cpu-count is required' "$work/usage.out" || fail "no --cpu-count: exit $st"
st=0
"$CLOISTER" watchdog --enclave-command true --health-interval 5x >"$work/usage.out" 2>&1 || st=$?
[ "$st" = 2 ] && grep -q -- '--health-interval' "$work/usage.out" || fail "bad duration: exit $st"
st=0
"$CLOISTER" watchdog --enclave-command true --health-url unix:/x >"$work/usage.out" 2>&1 || st=$?
[ "$st" = 2 ] && grep -q 'ADDR,PATH' "$work/usage.out" || fail "bad --health-url: exit $st"
# every key of the sample configuration is a flag of cloister host or cloister watchdog
"$CLOISTER" watchdog --help >"$work/help.out"
"$CLOISTER" host --help >>"$work/help.out" 2>&1 || true
for key in $(python3 -c 'import json,sys; print("\n".join(json.load(open(sys.argv[1]))))' \
    "$SOURCE_DIR/dist/host.example.json"); do
    grep -q -- "--$key\b" "$work/help.out" || fail "dist/host.example.json: '$key' is not a flag"
done
pass "command line and sample configuration"

# ---- nitro-cli runner, fake nitro-cli ---------------------------------------------------------

mkdir -p "$work/bin" "$work/nitro"
cp "$here/fake-nitro-cli" "$work/bin/nitro-cli"
export FAKE_NITRO_DIR="$work/nitro"
touch "$work/app.eif"
# an enclave of ours left over from an earlier run: replaced at start
PATH="$work/bin:$PATH" nitro-cli run-enclave --eif-path "$work/app.eif" --cpu-count 2 --memory 512 \
    --enclave-cid 16 >/dev/null 2>&1
read -r stale_id stale_pid _ <"$work/nitro/enclave"
spawn nitro env PATH="$work/bin:$PATH" "$CLOISTER" watchdog --eif "$work/app.eif" --cpu-count 2 --memory 512 \
    --enclave-cid 16 --debug-mode "${fast[@]}"
wait_for_log nitro 'event=enclave_state from=starting to=running'
calls="$work/nitro/calls"
[ "$(sed -n 2p "$calls")" = "describe-enclaves" ] || fail "first call: $(sed -n 2p "$calls")"
[ "$(sed -n 3p "$calls")" = "terminate-enclave --enclave-id $stale_id" ] || fail "stale enclave: $(sed -n 3p "$calls")"
alive "$stale_pid" && fail "stale enclave still running"
grep -q "event=stale_enclave runner=nitro-cli enclave_id=$stale_id name=app cid=16 state=RUNNING action=terminate" \
    "$work/nitro.log" || fail "stale enclave not logged"
[ "$(sed -n 4p "$calls")" = "run-enclave --eif-path $work/app.eif --cpu-count 2 --memory 512 --enclave-cid 16 --debug-mode" ] ||
    fail "run-enclave arguments: $(sed -n 4p "$calls")"
read -r id1 pid1 _ <"$work/nitro/enclave"
grep -qE "event=enclave_started runner=nitro-cli enclave_id=$id1 name=app cid=16 process_id=$pid1 cpus=2 memory_mib=512" \
    "$work/nitro.log" || fail "enclave_started line"
within 2 "describe-enclaves polled" eval '[ "$(grep -c "^describe-enclaves" "$calls")" -ge 3 ]'
pass "nitro-cli: stale enclave replaced, run-enclave with the exact arguments, polled with describe-enclaves"

kill -9 "$pid1"
within 5 "restart after the enclave's process died" eval '[ "$(count nitro "from=starting to=running")" = 2 ]'
grep -q "to=terminating reason=\"enclave $id1 no longer listed by describe-enclaves\"" "$work/nitro.log" ||
    fail "death not noticed through describe-enclaves"
term_line=$(grep -n "^terminate-enclave --enclave-id $id1\$" "$calls" | cut -d: -f1)
run2_line=$(grep -n '^run-enclave' "$calls" | sed -n 3p | cut -d: -f1)
[ -n "$term_line" ] && [ -n "$run2_line" ] && [ "$term_line" -lt "$run2_line" ] ||
    fail "expected terminate-enclave $id1 before the second run-enclave: $(cat "$calls")"
[ "$(sed -n "${run2_line}p" "$calls")" = "$(sed -n 4p "$calls")" ] || fail "second run-enclave differs"
read -r id2 pid2 _ <"$work/nitro/enclave"
[ "$id2" != "$id1" ] && alive "$pid2" || fail "no new enclave"
pass "nitro-cli: kill -9 of the enclave -> terminate-enclave, run-enclave again within 5 s"

stop nitro || fail "watchdog exited with status $? on SIGTERM"
[ "$(tail -n 1 "$calls")" = "terminate-enclave --enclave-id $id2" ] || fail "last call: $(tail -n 1 "$calls")"
alive "$pid2" && fail "enclave process $pid2 still alive"
grep -q 'from=terminating to=stopped reason="stop requested"' "$work/nitro.log" || fail "no stopped state"
pass "nitro-cli: SIGTERM -> terminate-enclave, exit 0"

touch "$work/nitro/fail-run"
spawn nitrofail env PATH="$work/bin:$PATH" "$CLOISTER" watchdog --eif "$work/app.eif" --cpu-count 2 --memory 64 \
    --restart-budget 1 --backoff-initial 100ms
wait_exit nitrofail 10
[ "$exit_status" = 3 ] || fail "nitro-cli failing: exit status $exit_status, expected 3"
grep -q 'event=enclave_start_failed runner=nitro-cli error=".*run-enclave failed (exit status 1): stderr: \[ E26 \] Insufficient memory.*err2026-11-22T11:00:00.000000000+00:00.log' \
    "$work/nitrofail.log" || fail "nitro-cli's error (code and log path) not in the message"
grep -q 'to=failed reason="restart budget exhausted: 1 restarts' "$work/nitrofail.log" || fail "no budget message"
[ "$(grep -c '^run-enclave' "$calls")" = 5 ] || fail "expected 2 more run-enclave calls"
rm "$work/nitro/fail-run"
pass "nitro-cli: run-enclave failing -> its stderr in the log, budget exhausted, exit 3"

# ---- local runner ---------------------------------------------------------------------------

spawn notify python3 "$here/notify_listener.py" "$work/notify.sock"
wait_for_log notify 'notify: listening'
sock="$work/e.sock"
spawn local env NOTIFY_SOCKET="$work/notify.sock" "$CLOISTER" watchdog \
    --enclave-command "python3 $here/enclave.py $sock" --health-url "unix:$sock,/enclave" "${fast[@]}" --stop-grace 3s
wait_for_log local 'from=starting to=running reason=healthy'
wait_for_log notify 'notify: READY=1'
grep -q 'notify: STATUS=enclave running: healthy' "$work/notify.log" || fail "no STATUS"
grep -q 'notify_socket=-' "$work/local.log" || fail "the enclave inherited NOTIFY_SOCKET"
pass "local: healthy, READY=1 sent, NOTIFY_SOCKET not inherited"

enclave_pid() { # the Nth enclave process, from its own log line
    grep -o 'enclave: listening pid=[0-9]*' "$work/local.log" | sed -n "${1}p" | cut -d= -f2
}
p1=$(enclave_pid 1)
kill -9 "$p1"
within 5 "restart after kill -9" eval '[ "$(count local "from=starting to=running")" = 2 ]'
grep -q 'to=terminating reason="exited (exit status 137)"' "$work/local.log" || fail "exit not logged"
p2=$(enclave_pid 2)
[ -n "$p2" ] && [ "$p2" != "$p1" ] && alive "$p2" || fail "no new enclave process"
pass "local: kill -9 -> restarted within 5 s"

touch "$sock.sick-$p2"
within 5 "restart when unhealthy (503)" eval '[ "$(count local "from=starting to=running")" = 3 ]'
grep -q 'to=terminating reason="unhealthy: 2 consecutive failed health checks (last: HTTP 503)"' "$work/local.log" ||
    fail "503 not the reason"
alive "$p2" && fail "unhealthy enclave $p2 still alive"
pass "local: health endpoint answering 503 -> terminated, restarted"

p3=$(enclave_pid 3)
touch "$sock.hang-$p3"
within 5 "restart when the health endpoint hangs" eval '[ "$(count local "from=starting to=running")" = 4 ]'
grep -q 'reason="unhealthy: 2 consecutive failed health checks (last: waiting for the response: timed out)"' \
    "$work/local.log" || fail "timeout not the reason"
pass "local: health endpoint hanging -> terminated, restarted"

p4=$(enclave_pid 4)
leader=$(grep -o 'event=enclave_started runner=local pid=[0-9]*' "$work/local.log" | tail -n 1 | cut -d= -f4)
stop local || fail "watchdog exited with status $? on SIGTERM"
alive "$p4" && fail "enclave $p4 left running"
alive "$leader" && fail "enclave's shell $leader left running"
for stat in /proc/[0-9]*/stat; do
    read -r -a f <"$stat" 2>/dev/null || continue
    [ "${f[4]:-}" = "$leader" ] && [ "${f[2]}" != Z ] && fail "process ${f[0]} of the enclave's group left"
done
wait_for_log notify 'notify: STOPPING=1'
[ "$(count notify 'READY=1')" = 1 ] || fail "READY=1 sent more than once"
grep -q 'from=terminating to=stopped reason="stop requested"' "$work/local.log" || fail "no stopped state"
pass "local: SIGTERM -> enclave stopped, STOPPING=1, exit 0, no process left"

spawn dies "$CLOISTER" watchdog --enclave-command 'echo dying; exit 1' --restart-budget 2 --restart-window 1m \
    --backoff-initial 100ms
wait_exit dies 10
[ "$exit_status" = 3 ] || fail "always dying: exit status $exit_status, expected 3"
[ "$(count dies 'event=enclave_started')" = 3 ] || fail "expected 3 starts (2 restarts)"
grep -q 'level=error .*to=failed reason="restart budget exhausted: 2 restarts within 60 s (last failure: exited (exit status 1))"' \
    "$work/dies.log" || fail "no budget exhausted state"
grep -q 'event=watchdog_gave_up' "$work/dies.log" || fail "no gave-up line"
pass "local: a command that always dies -> budget exhausted, exit 3"

spawn slow "$CLOISTER" watchdog --enclave-command 'exec sleep 30' --health-connect "unix:$work/nothing.sock" \
    --start-timeout 500ms --restart-budget 0 "${fast[@]}"
wait_exit slow 10
[ "$exit_status" = 3 ] || fail "never healthy: exit status $exit_status, expected 3"
grep -q 'reason="not healthy within the start timeout of 500 ms (last: connect: No such file or directory)"' \
    "$work/slow.log" || fail "start timeout not the reason"
slow_pid=$(grep -o 'event=enclave_started runner=local pid=[0-9]*' "$work/slow.log" | cut -d= -f4)
alive "$slow_pid" && fail "the enclave that never became healthy is still running"
pass "local: never healthy -> start timeout, budget 0, exit 3"
