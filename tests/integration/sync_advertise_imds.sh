#!/usr/bin/env bash
# -sync-advertise-imds local-ipv4: a worker names itself to the leader by its instance's private
# address from IMDS (through the host's gate, which allows exactly that call besides the others),
# so that a leader on tap0 dials an address without DNS (dist/aws, IdentityMode sync). The parent
# answers IMDS, so the answer is untrusted: anything but a dotted-quad IPv4 address is refused at
# start with a clear error, also digits and dots that are no address ("1..2.3", "999.1.1.1"),
# which the enclave would otherwise hand to the resolver as a name; an unknown field is refused.
set -euo pipefail
source "$(dirname "$0")/common.bash"
source "$(dirname "$0")/sync/sync_common.bash"

start_sims 1
sync_enclave leader sim1 self
wait_for_log leader 'event=sync_role role=leader'
lsync=$(port_of leader sync)

# through the host's IMDS gate to imds-sim, as on an instance
imds=$(free_port)
spawn imds "$CLOISTER" imds-sim --listen "tcp:127.0.0.1:$imds" --local-ipv4 10.1.2.3
wait_for_log imds 'listening'
spawn gate "$CLOISTER" host --imds "unix:$work/imds.sock" --imds-endpoint "http://127.0.0.1:$imds"
for _ in $(seq 1 100); do [ -S "$work/imds.sock" ] && break; sleep 0.05; done
sp=$(free_port)
spawn named "$CLOISTER" enclave -fqdn localhost --nsm "unix:$work/sim1.sock" --listen "tcp:127.0.0.1:$(free_port)" \
    -intport "$(free_port)" -ext-priv-listen "tcp:0.0.0.0:$sp" -ext-priv-port "$sp" -fqdn-leader "127.0.0.1:$lsync" \
    --sync-root "$root" -kms-imds "unix:$work/imds.sock" -sync-advertise-imds local-ipv4
wait_for_log named 'event=sync_started'
grep -q "event=sync_started .*advertise=10\.1\.2\.3:$sp\( \|$\)" "$work/named.log" ||
    fail "the worker did not name itself by IMDS's local-ipv4: $(grep sync_started "$work/named.log")"
grep -q 'event=request method=GET target=/latest/meta-data/local-ipv4 status=200' "$work/imds.log" ||
    fail "imds-sim did not answer local-ipv4 through the gate: $(cat "$work/imds.log")"
pass "-sync-advertise-imds local-ipv4: the worker advertises IMDS's local-ipv4:-ext-priv-port, through the host's gate"
stop named || true

set +e
timeout 30 "$CLOISTER" enclave -fqdn localhost --nsm "unix:$work/sim1.sock" --listen "tcp:127.0.0.1:$(free_port)" \
    -intport "$(free_port)" -ext-priv-listen "tcp:0.0.0.0:$sp" -fqdn-leader "127.0.0.1:$lsync" --sync-root "$root" \
    -kms-imds "unix:$work/imds.sock" -sync-advertise-imds public-ipv4 >"$work/field.log" 2>&1
status=$?
set -e
[ "$status" != 0 ] && [ "$status" != 124 ] || fail "-sync-advertise-imds public-ipv4 was taken (exit $status)"
grep -q 'neither local-hostname nor local-ipv4' "$work/field.log" || fail "no clear refusal: $(cat "$work/field.log")"
pass "-sync-advertise-imds takes only local-hostname or local-ipv4"

# a lying IMDS (the parent's): a well-formed IMDSv2 with credentials, and local-ipv4 = $1
cat >"$work/liar.py" <<'PY'
import http.server, json, sys
answer = sys.argv[2]
class H(http.server.BaseHTTPRequestHandler):
    def reply(self, body):
        b = body.encode()
        self.send_response(200)
        self.send_header("Content-Length", str(len(b)))
        self.end_headers()
        self.wfile.write(b)
    def do_PUT(self):
        self.reply("T" * 56)
    def do_GET(self):
        if self.path == "/latest/meta-data/iam/security-credentials/":
            self.reply("role")
        elif self.path == "/latest/meta-data/iam/security-credentials/role":
            self.reply(json.dumps({"Code": "Success", "AccessKeyId": "ASIAAAAAAAAAAAAAAAAA", "SecretAccessKey": "s" * 40,
                                   "Token": "t" * 100, "Expiration": "2099-01-01T00:00:00Z"}))
        elif self.path == "/latest/meta-data/local-ipv4":
            self.reply(answer)
        else:
            self.send_error(404)
    def log_message(self, *a):
        pass
print("liar: listening", flush=True)
http.server.HTTPServer(("127.0.0.1", int(sys.argv[1])), H).serve_forever()
PY
n=0
for lie in "1..2.3" "999.1.1.1" "10.0.0.1:80" "evil.example" "10.0.0.1/8" ""; do
    n=$((n + 1))
    port=$(free_port)
    spawn "liar$n" /usr/bin/python3 -u "$work/liar.py" "$port" "$lie"
    wait_for_log "liar$n" 'liar: listening'
    set +e
    timeout 30 "$CLOISTER" enclave -fqdn localhost --nsm "unix:$work/sim1.sock" --listen "tcp:127.0.0.1:$(free_port)" \
        -intport "$(free_port)" -ext-priv-listen "tcp:0.0.0.0:$sp" -fqdn-leader "127.0.0.1:$lsync" --sync-root "$root" \
        -kms-imds "tcp:127.0.0.1:$port" -sync-advertise-imds local-ipv4 >"$work/lie$n.log" 2>&1
    status=$?
    set -e
    [ "$status" != 0 ] && [ "$status" != 124 ] || fail "IMDS local-ipv4 '$lie' was taken (exit $status): $(grep sync_started "$work/lie$n.log")"
    grep -q "private IPv4 address that is not one" "$work/lie$n.log" || fail "'$lie': no clear refusal: $(tail -3 "$work/lie$n.log")"
    stop "liar$n" || true
done
pass "an IMDS local-ipv4 that is no IPv4 address ('1..2.3', '999.1.1.1', with a port, a name, a prefix, empty) stops the start with a clear error"
