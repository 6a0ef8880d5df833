#!/usr/bin/env bash
# cloister host end to end, everything on 127.0.0.1 and unix sockets (the
# stand-in for vsock; no AF_VSOCK socket is ever opened):
#   - 100 MB each way with checksums through two hops, tcp -> unix -> tcp
#   - half-close: the client's EOF travels both hops, the answer still comes back
#   - 2,000 short connections; the read()/write() path (--no-splice) too
#   - a PROXY protocol v2 header with the client's address, parsed by the backend
#   - --idle-timeout and --max-connections; a destination that is absent, one that never
#     accepts (--connect-timeout), one that resets (the client is reset too)
#   - vsock-proxy form: allowlisted by name and by address, refused, bad YAML
#   - DNS names re-resolved every --resolve-interval
#   - the IMDS gate in front of `cloister imds-sim`: the IMDSv2 token flow, 403 for
#     other calls (which never reach IMDS), 401 from IMDS for calls without a token
#   - --config JSON, bad input named, SIGTERM -> exit 0
#   - 10,000 concurrent connections through one forward, with the host's RSS
set -euo pipefail
source "$(dirname "$0")/common.bash"

command -v python3 >/dev/null || { echo "SKIP: python3 is not installed"; exit 77; }
command -v curl >/dev/null || { echo "SKIP: curl is not installed"; exit 77; }
ulimit -n "$(ulimit -Hn)" 2>/dev/null || true

PEER="$SOURCE_DIR/tests/integration/host/peer.py"
peer() { timeout 120 python3 "$PEER" "$@"; }
BIG=$((100 * 1024 * 1024))
HOLD=10000
RSS_LIMIT_KB=$((64 * 1024))
if [ -n "${CLOISTER_TEST_SANITIZED:-}" ]; then
    BIG=$((20 * 1024 * 1024)) # the sanitized build is several times slower
    HOLD=2000
    RSS_LIMIT_KB=$((512 * 1024)) # ASan's shadow memory and quarantine
fi

echo_port=$(free_port)
sink_port=$(free_port)
pp2_port=$(free_port)
spawn echo python3 "$PEER" echo --listen "127.0.0.1:$echo_port"
spawn sink python3 "$PEER" sink --listen "127.0.0.1:$sink_port"
spawn pp2 python3 "$PEER" pp2 --listen "127.0.0.1:$pp2_port"
for s in echo sink pp2; do wait_for_log "$s" '^peer: listening'; done

# ---- two hops: tcp -> unix -> tcp ---------------------------------------------------------
a=$(free_port)
b=$(free_port)
p=$(free_port)
spawn hop2 "$CLOISTER" host --forward "unix:$work/echo.sock=tcp:127.0.0.1:$echo_port" \
    --forward "unix:$work/sink.sock=tcp:127.0.0.1:$sink_port"
spawn hop1 "$CLOISTER" host --forward "tcp:127.0.0.1:$a=unix:$work/echo.sock" \
    --forward "tcp:127.0.0.1:$b=unix:$work/sink.sock" \
    --forward "tcp:127.0.0.1:$p=tcp:127.0.0.1:$pp2_port,proxy-protocol"
wait_for_log hop2 'event=started'
wait_for_log hop1 'event=started'

out=$(peer echo-check --connect "127.0.0.1:$a" --bytes "$BIG") || fail "echo through two hops: $out"
pass "$BIG bytes each way through tcp -> unix -> tcp, checksums equal (${out##*, })"

out=$(peer half-close --connect "127.0.0.1:$b" --bytes $((4 * 1024 * 1024))) || fail "half-close: $out"
pass "half-close: 4 MiB, then EOF through both hops; the sink's answer came back, then EOF"

out=$(peer many --connect "127.0.0.1:$a" --count 2000) || fail "many connections: $out"
pass "2,000 connections of 1 KiB each way (${out##*, })"

out=$(peer pp2-check --connect "127.0.0.1:$p" --expect-dst "127.0.0.1:$p") || fail "PROXY v2: $out"
pass "PROXY protocol v2: ${out#peer: pp2 ok: }, and the payload after it intact"

c=$(free_port)
spawn copy "$CLOISTER" host --no-splice --forward "tcp:127.0.0.1:$c=unix:$work/echo.sock"
wait_for_log copy 'splice=no'
out=$(peer echo-check --connect "127.0.0.1:$c" --bytes $((20 * 1024 * 1024))) || fail "--no-splice: $out"
out=$(peer many --connect "127.0.0.1:$c" --count 200) || fail "--no-splice, many: $out"
pass "--no-splice (read/write): 20 MiB each way and 200 connections intact"

# ---- limits ---------------------------------------------------------------------------------
l=$(free_port)
spawn limits "$CLOISTER" host --workers 1 --idle-timeout 2 --max-connections 3 \
    --forward "tcp:127.0.0.1:$l=tcp:127.0.0.1:$echo_port"
wait_for_log limits 'event=started'
out=$(peer idle-check --connect "127.0.0.1:$l" --seconds 4) || fail "idle timeout: $out"
pass "--idle-timeout 2: ${out#peer: idle ok: }"
spawn held python3 "$PEER" hold --connect "127.0.0.1:$l" --count 3 --hold 1.5
wait_for_log held '^peer: holding 3'
python3 - "$l" <<'EOF' || fail "a 4th connection over --max-connections 3 was served"
import socket, sys
s = socket.create_connection(("127.0.0.1", int(sys.argv[1])), timeout=5)
try:
    s.sendall(b"x")
    sys.exit(0 if s.recv(1) == b"" else 1)
except ConnectionResetError:
    sys.exit(0)
EOF
wait_for_log limits 'level=warn .*event=refused .*reason=max-connections'
pass "--max-connections 3: the 4th connection is closed at once and logged at warn"

# a destination that is down, and one that never accepts (its backlog full)
d=$(free_port)
d2=$(free_port)
spawn stalled python3 -c '
import socket, sys, time
s = socket.socket(socket.AF_UNIX)
s.bind(sys.argv[1])
s.listen(0)
print("peer: listening, never accepting", flush=True)
time.sleep(120)' "$work/stalled.sock"
wait_for_log stalled '^peer: listening'
spawn down "$CLOISTER" host --connect-timeout 1 --forward "tcp:127.0.0.1:$d=unix:$work/stalled.sock" \
    --forward "tcp:127.0.0.1:$d2=unix:$work/nobody.sock"
wait_for_log down 'event=started'
python3 - "$d" "$d2" <<'EOF' || fail "connections to a stalled or absent destination were not closed"
import socket, sys, time
stalled, absent = int(sys.argv[1]), int(sys.argv[2])
def closed_within(p, limit):
    start = time.monotonic()
    try:  # the reset may even overtake connect()
        s = socket.create_connection(("127.0.0.1", p), timeout=limit + 2)
        got = s.recv(1)
    except ConnectionResetError:
        got = b""
    return got == b"" and time.monotonic() - start < limit
assert closed_within(absent, 2), "absent destination"
held = [socket.create_connection(("127.0.0.1", stalled)) for _ in range(3)]  # fill its backlog
time.sleep(0.2)
assert closed_within(stalled, 5), "stalled destination"
EOF
wait_for_log down 'level=warn .*event=connect-failed .*dest=unix:.*/nobody.sock error="No such file or directory"'
wait_for_log down 'level=warn .*event=connect-failed .*dest=unix:.*/stalled.sock error="timed out"'
pass "destination absent: closed at once; destination not accepting: closed after --connect-timeout; both logged"

# a destination that resets the connection: the client is reset too, not told "end of data"
r=$(free_port)
rb=$(free_port)
spawn resetter python3 -c '
import socket, struct, sys
s = socket.create_server(("127.0.0.1", int(sys.argv[1])))
print("peer: listening, resetting", flush=True)
while True:
    c, _ = s.accept()
    c.recv(1)
    c.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    c.close()' "$rb"
wait_for_log resetter '^peer: listening'
spawn reset "$CLOISTER" host --forward "tcp:127.0.0.1:$r=tcp:127.0.0.1:$rb"
wait_for_log reset 'event=started'
python3 - "$r" <<'EOF' || fail "a reset by the destination reached the client as an orderly end"
import socket, sys
s = socket.create_connection(("127.0.0.1", int(sys.argv[1])), timeout=5)
s.sendall(b"x")
try:
    sys.exit(1 if s.recv(1) == b"" else 2)
except ConnectionResetError:
    sys.exit(0)
EOF
pass "a destination's reset is passed on to the client as a reset"

# ---- vsock-proxy form and its allowlist ----------------------------------------------------------
cat >"$work/allow.yaml" <<EOF
# services the enclave may reach
allowlist:
- {address: kms.us-east-1.amazonaws.com, port: 443}
- address: localhost
  port: $echo_port
  note: keys vsock-proxy does not read are ignored, as there
owner: platform-team
EOF
spawn vp "$CLOISTER" host vsock-proxy --config "$work/allow.yaml" -w 4 --listen "unix:$work/vp.sock" \
    8000 localhost "$echo_port"
wait_for_log vp 'event=started'
grep -q "event=allowed dest=localhost port=$echo_port entry=localhost:$echo_port line=4" "$work/vp.log" ||
    fail "vsock-proxy: no allowed event naming the entry"
out=$(peer echo-check --connect "unix:$work/vp.sock" --bytes 1000000) || fail "vsock-proxy forward: $out"
spawn vp_ip "$CLOISTER" host vsock-proxy --config "$work/allow.yaml" --listen "unix:$work/vp-ip.sock" \
    8001 127.0.0.1 "$echo_port"
wait_for_log vp_ip 'event=started'
out=$(peer echo-check --connect "unix:$work/vp-ip.sock" --bytes 1000) || fail "vsock-proxy by address: $out"
pass "vsock-proxy form: allowed by name (entry and line logged) and by address, forwards"

set +e
"$CLOISTER" host vsock-proxy --config "$work/allow.yaml" --listen "unix:$work/refused.sock" \
    8002 localhost "$sink_port" >"$work/refused.out" 2>&1
rc=$?
set -e
[ "$rc" = 1 ] || fail "a destination outside the allowlist: exit status $rc, want 1: $(cat "$work/refused.out")"
grep -q "refusing to start: localhost port $sink_port is not in the allowlist" "$work/refused.out" ||
    fail "no clear refusal: $(cat "$work/refused.out")"
grep -q 'level=warn .*event=refused dest=localhost' "$work/refused.out" || fail "the refusal is not logged at warn"
[ ! -e "$work/refused.sock" ] || fail "the refused proxy listened anyway"
pass "vsock-proxy form: localhost:$sink_port refused at start, exit 1: $(grep refusing "$work/refused.out")"

printf 'allowlist:\n- {address: localhost, port: 99999}\n' >"$work/bad.yaml"
set +e
"$CLOISTER" host vsock-proxy --config "$work/bad.yaml" --listen "unix:$work/x.sock" 8003 localhost 1 >"$work/bad.out" 2>&1
rc=$?
"$CLOISTER" host --allowlist "$work/allow.yaml" --outbound "unix:$work/y.sock=localhost:$sink_port" >"$work/main.out" 2>&1
rc2=$?
set -e
[ "$rc" = 1 ] && grep -q 'allowlist line 2: port must be an integer from 1 to 65535' "$work/bad.out" ||
    fail "bad allowlist YAML: status $rc (vsock-proxy exits 1): $(cat "$work/bad.out")"
[ "$rc2" = 1 ] && grep -q 'is not in the allowlist' "$work/main.out" ||
    fail "--allowlist with --outbound: status $rc2: $(cat "$work/main.out")"
pass "a malformed allowlist names its line (exit 1, as vsock-proxy); --allowlist refuses --outbound destinations too"

# exit statuses as AWS's vsock-proxy: clap's 2 for the command line's shape, 1 for every other error
vp_status() { # WANT ARGS...
    local want=$1 st=0
    shift
    "$CLOISTER" host vsock-proxy "$@" >"$work/vps.out" 2>&1 || st=$?
    [ "$st" = "$want" ] || fail "vsock-proxy $*: exit $st, want $want: $(cat "$work/vps.out")"
}
vp_status 2 --no-such-option 8000 localhost "$echo_port"
vp_status 2 --config "$work/allow.yaml" 8000 localhost
vp_status 2 -4 -6 --config "$work/allow.yaml" 8000 localhost "$echo_port"
vp_status 1 --config "$work/allow.yaml" --listen "unix:$work/p.sock" 8000 localhost 70000
vp_status 1 --config "$work/allow.yaml" --listen "unix:$work/p.sock" x localhost "$echo_port"
vp_status 1 --config "$work/allow.yaml" --listen "unix:$work/p.sock" -w 0 8000 localhost "$echo_port"
vp_status 1 --config "$work/nonexistent.yaml" --listen "unix:$work/p.sock" 8000 localhost "$echo_port"
vp_status 1 --config "$work/allow.yaml" --listen "unix:$work/no/such/dir/p.sock" 8000 localhost "$echo_port"
grep -q 'no/such/dir' "$work/vps.out" || fail "cannot listen: not named: $(cat "$work/vps.out")"
vp_status 1 --config "$work/allow.yaml" --listen "unix:$work/p.sock" 8000 LOCALHOST.invalid "$echo_port"
vp_status 0 --version
grep -q '^cloister host vsock-proxy [0-9]' "$work/vps.out" || fail "--version: $(cat "$work/vps.out")"
vp_status 0 -V
pass "vsock-proxy form: exit 2 for unknown options and missing arguments, 1 for bad values, allowlist, listen; --version"

# ---- DNS names, re-resolved -----------------------------------------------------------------------
spawn dns "$CLOISTER" host --debug --resolve-interval 1 --outbound "unix:$work/out.sock=localhost:$echo_port"
wait_for_log dns 'event=started'
sleep 3.5
n=$(grep -c "event=resolved route=outbound name=localhost port=$echo_port addresses=" "$work/dns.log" || true)
[ "$n" -ge 3 ] || fail "localhost resolved $n times in 3.5 s with --resolve-interval 1, want >= 3"
out=$(peer echo-check --connect "unix:$work/out.sock" --bytes 1000000) || fail "outbound after re-resolution: $out"
pass "outbound to localhost:$echo_port: resolved $n times in 3.5 s (--resolve-interval 1), still forwarding"

# ---- IMDS ---------------------------------------------------------------------------------------
m=$(free_port)
spawn imds_sim "$CLOISTER" imds-sim --listen "tcp:127.0.0.1:$m" --role enclave-role --region eu-west-1
wait_for_log imds_sim 'event=listening'
spawn imds "$CLOISTER" host --imds "unix:$work/imds.sock" --imds-endpoint "http://127.0.0.1:$m"
wait_for_log imds 'event=started'
im() { curl -sS --max-time 10 --unix-socket "$work/imds.sock" -o "$work/body" -w '%{http_code}' "$@"; }
code=$(im -X PUT -H 'X-aws-ec2-metadata-token-ttl-seconds: 21600' http://169.254.169.254/latest/api/token)
token=$(cat "$work/body")
[ "$code" = 200 ] && [ "${#token}" -ge 40 ] || fail "IMDSv2 token: $code $token"
hdr=(-H "X-aws-ec2-metadata-token: $token")
code=$(im "${hdr[@]}" http://169.254.169.254/latest/meta-data/iam/security-credentials/)
[ "$code" = 200 ] && [ "$(cat "$work/body")" = enclave-role ] || fail "role name: $code $(cat "$work/body")"
code=$(im "${hdr[@]}" http://169.254.169.254/latest/meta-data/iam/security-credentials/enclave-role)
[ "$code" = 200 ] || fail "credentials: $code"
python3 - "$work/body" <<'EOF' || fail "credentials JSON: $(cat "$work/body")"
import json, re, sys
c = json.load(open(sys.argv[1]))
assert set(c) == {"Code", "LastUpdated", "Type", "AccessKeyId", "SecretAccessKey", "Token", "Expiration"}, c.keys()
assert c["Code"] == "Success" and c["Type"] == "AWS-HMAC"
assert re.fullmatch(r"ASIA[A-Z2-7]{16}", c["AccessKeyId"]) and len(c["SecretAccessKey"]) == 40
for k in ("LastUpdated", "Expiration"):
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ", c[k]), k
assert c["Expiration"] > c["LastUpdated"]
EOF
code=$(im "${hdr[@]}" http://169.254.169.254/latest/meta-data/placement/region)
[ "$code" = 200 ] && [ "$(cat "$work/body")" = eu-west-1 ] || fail "region: $code"
code=$(im "${hdr[@]}" http://169.254.169.254/latest/meta-data/local-hostname)
[ "$code" = 200 ] && grep -qE '^ip-172-31-[0-9-]+\.eu-west-1\.compute\.internal$' "$work/body" || fail "hostname: $code"
code=$(im "${hdr[@]}" http://169.254.169.254/latest/dynamic/instance-identity/document)
[ "$code" = 200 ] || fail "identity document: $code"
python3 - "$work/body" <<'EOF' || fail "identity document JSON: $(cat "$work/body")"
import json, sys
d = json.load(open(sys.argv[1]))
for k in ("accountId", "architecture", "availabilityZone", "imageId", "instanceId", "instanceType",
          "pendingTime", "privateIp", "region", "version"):
    assert isinstance(d[k], str) and d[k], k
assert d["region"] == "eu-west-1" and d["availabilityZone"].startswith("eu-west-1")
assert d["instanceId"].startswith("i-") and d["imageId"].startswith("ami-")
EOF
pass "IMDSv2 through the gate: token, role, credentials (7 fields), region, hostname, identity document"

for call in "GET /latest/meta-data/instance-id" "GET /latest/user-data" "POST /latest/api/token" \
    "GET /latest/meta-data/iam/security-credentials/../../user-data" \
    "GET /latest/meta-data/placement/region?x=1" "DELETE /latest/meta-data/placement/region"; do
    code=$(im "${hdr[@]}" -X "${call%% *}" --path-as-is "http://169.254.169.254${call#* }")
    [ "$code" = 403 ] || fail "$call: $code, want 403"
    grep -q "is not an instance metadata call the enclave may make" "$work/body" || fail "$call: 403 body"
done
! grep -qE 'target=/latest/(user-data|meta-data/instance-id)' "$work/imds_sim.log" ||
    fail "a refused call reached IMDS"
grep -q 'level=warn .*event=imds-refused .*method=GET target=/latest/user-data' "$work/imds.log" ||
    fail "refusals are not logged at warn"
pass "other IMDS calls: 403 with the allowed list, logged at warn, never sent to IMDS"

code=$(im http://169.254.169.254/latest/meta-data/placement/region)
[ "$code" = 401 ] || fail "GET without a token: $code, want 401"
code=$(im -H 'X-aws-ec2-metadata-token: AAAA' http://169.254.169.254/latest/meta-data/placement/region)
[ "$code" = 401 ] || fail "GET with a wrong token: $code, want 401"
code=$(im -X PUT http://169.254.169.254/latest/api/token)
[ "$code" = 400 ] || fail "token PUT without a TTL: $code, want 400"
code=$(im -X PUT -H 'X-aws-ec2-metadata-token-ttl-seconds: 21601' http://169.254.169.254/latest/api/token)
[ "$code" = 400 ] || fail "token PUT with TTL 21601: $code, want 400"
code=$(im -X PUT -H 'X-aws-ec2-metadata-token-ttl-seconds: 1' http://169.254.169.254/latest/api/token)
short=$(cat "$work/body")
sleep 1.2
code=$(im -H "X-aws-ec2-metadata-token: $short" http://169.254.169.254/latest/meta-data/placement/region)
[ "$code" = 401 ] || fail "GET with an expired token: $code, want 401"
code=$(im -X PUT -H 'X-aws-ec2-metadata-token-ttl-seconds: 60' -H 'X-Forwarded-For: 10.0.0.1' \
    http://169.254.169.254/latest/api/token)
[ "$code" = 403 ] || fail "token PUT with X-Forwarded-For: $code, want 403"
pass "IMDS itself: 401 without, with a wrong and with an expired token; 400 for TTL 0/21601; 403 with X-Forwarded-For"

# ---- configuration -----------------------------------------------------------------------------
j=$(free_port)
cat >"$work/host.json" <<EOF
{"forward": ["tcp:127.0.0.1:$j=unix:$work/echo.sock"], "idle-timeout": 30, "workers": 1, "debug": true}
EOF
spawn cfg "$CLOISTER" host --config "$work/host.json"
wait_for_log cfg 'event=started workers=1 .*idle_timeout_s=30'
out=$(peer echo-check --connect "127.0.0.1:$j" --bytes 1000) || fail "--config forward: $out"
wait_for_log cfg 'level=debug .*event=closed .*reason=done bytes_up=1000 bytes_down=1000'
pass "--config JSON: forward, idle-timeout, workers and debug taken; connections logged at debug"

bad() {
    local want=$1
    shift
    set +e
    "$CLOISTER" host "$@" >"$work/bad.out" 2>&1
    local rc=$?
    set -e
    [ "$rc" = 2 ] && grep -qF -- "$want" "$work/bad.out" ||
        fail "cloister host $*: status $rc, want 2 and '$want': $(cat "$work/bad.out")"
}
echo '{"forward": "tcp:127.0.0.1:1=unix:/x", "frobnicate": 1}' >"$work/c1.json"
echo '{"idle-timeout": "10"}' >"$work/c2.json"
echo '{"forward": [1]}' >"$work/c3.json"
echo '{"forward": ' >"$work/c4.json"
bad 'unknown setting "frobnicate"' --config "$work/c1.json"
bad '"idle-timeout" must be a non-negative integer' --config "$work/c2.json"
bad '"forward"[0] must be a string' --config "$work/c3.json"
bad "--config $work/c4.json: line" --config "$work/c4.json"
bad 'expected LISTEN=DEST' --forward tcp:127.0.0.1:1
bad "address 'udp:1' must be" --forward udp:1=tcp:127.0.0.1:2
bad "unknown option 'gzip'" --forward tcp:127.0.0.1:1=tcp:127.0.0.1:2,gzip
bad 'expected HOST:PORT' --outbound unix:/tmp/x=kms.example.com
bad 'expected http://HOST[:PORT]' --imds unix:/tmp/x --imds-endpoint https://169.254.169.254
bad 'nothing to do'
bad '--idle-timeout: ' --idle-timeout 0 --forward tcp:127.0.0.1:1=tcp:127.0.0.1:2
bad 'exclude each other' -4 -6 --forward tcp:127.0.0.1:1=tcp:127.0.0.1:2
bad 'is the listen address of two routes' --forward tcp:127.0.0.1:1=tcp:127.0.0.1:2 --forward tcp:127.0.0.1:1=unix:/x
pass "bad flags and configuration: exit 2, each message naming the problem"

# ---- 10,000 concurrent connections -------------------------------------------------------------
spawn hold_echo python3 "$PEER" echo --listen "unix:$work/hold.sock"
wait_for_log hold_echo '^peer: listening'
h=$(free_port)
spawn big "$CLOISTER" host --forward "tcp:127.0.0.1:$h=unix:$work/hold.sock"
wait_for_log big 'event=started'
spawn holder python3 "$PEER" hold --connect "127.0.0.1:$h" --count "$HOLD" --hold 3
wait_for_log holder "^peer: holding $HOLD " 900
rss=0
procs=0
for pid in "${pids[big]}" $(pgrep -P "${pids[big]}"); do
    kb=$(awk '/^VmRSS:/ {print $2}' "/proc/$pid/status")
    rss=$((rss + kb))
    procs=$((procs + 1))
done
[ "$rss" -lt "$RSS_LIMIT_KB" ] || fail "$HOLD connections: host RSS ${rss} KiB, limit ${RSS_LIMIT_KB} KiB"
wait "${pids[holder]}" || fail "the holding client failed"
unset "pids[holder]"
pass "$HOLD concurrent connections, each echoed; host RSS $((rss / 1024)) MiB over $procs processes (parent + workers)"

# ---- SIGTERM ----------------------------------------------------------------------------------
for name in hop1 hop2 big dns imds vp; do
    stop "$name" || fail "$name: exit status $? after SIGTERM, want 0"
    grep -q 'event=stopped' "$work/$name.log" || fail "$name: no stopped event"
done
[ ! -e "$work/echo.sock" ] || fail "the unix listener's socket file was left behind"
for log in "$work"/*.log; do
    ! grep -qE 'AddressSanitizer|LeakSanitizer|runtime error:|event=worker-(exited|failed)|level=error' "$log" ||
        fail "$(basename "$log"): $(grep -m1 -E 'Sanitizer|runtime error:|worker-|level=error' "$log")"
done
pass "SIGTERM: stop accepting, close, exit 0, unix socket files removed"
