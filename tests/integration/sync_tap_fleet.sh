#!/usr/bin/env bash
# Key sync across a fleet as dist/aws/cloister.yaml wires it in IdentityMode sync, run with the
# recipe's own lines: the image is built from docs/deploy-aws.md's sync-mode `make image` line
# (scripts/image.sh, stand-in blobs) and its enclave command taken from the EIF; each parent runs
# `cloister host --config host.json` with the host.json the template's user data writes (tap0 on
# vsock:4294967295:1024, --tap-forward 444=444, the leader route vsock:3:8001 to the leader NLB's
# name). Only what a laptop cannot be is replaced: the vsock stand-in, nitro-cli by an
# enclave-command (the enclave in its own network namespace), nsm-sim, imds-sim (each instance's
# local-ipv4), short drain times, and the app's path.
#
#   VPC        a bridge namespace, 10.N.0.0/24: the leader NLB (a TCP relay on .2:444, the client
#              address not preserved), the VPC's DNS (.2), an attacker (.3)
#   instance   a parent namespace (.1X on the bridge: cloister host, its TAP device and nftables,
#              imds-sim) and an enclave namespace (cloister enclave -tap, the example app)
#
# Checks: the leader (instance 1) delivers its key to the workers (2, 3) at their IMDS local-ipv4
# over tap0, and `cloister verify` from the VPC through each instance's 443 proves one certificate;
# then the attacks: an enclave of another image (another PCR0, itself willing) joining the fleet is
# refused by the leader; a worker whose parent points its leader route at a fake leader refuses the
# fake's keys; a registration naming an address outside the egress policy (VPC_CIDR:444) is never
# dialed by the leader, while one inside it is; 40 such registrations at once do not keep a new
# worker from its keys. Apart: the unit's user and capabilities run the template's tap settings.
set -euo pipefail
source "$(dirname "$0")/common.bash"
source "$(dirname "$0")/tap/setup.bash" # root, nft, /dev/net/tun, namespaces: or skip
source "$(dirname "$0")/sync/sync_common.bash"
command -v socat >/dev/null || { echo "skip: socat is not installed"; exit 77; }
/usr/bin/python3 -c 'import nacl.public, yaml' 2>/dev/null || { echo "skip: python3-nacl or python3-yaml is absent"; exit 77; }

suffix="$$$RANDOM"
VNS="clf-v-$suffix"
cleanup_namespaces=("$VNS")
net=$((RANDOM % 200 + 20))
vpc="10.$net.0"
NLB="$vpc.2"
EVIL="$vpc.3"
FLEET="$SOURCE_DIR/tests/integration/sync/fleet.py"
in_v() { ip netns exec "$VNS" "$@"; }
fail_hook() { # the VPC's and every instance's network, for a failure seen only under load
    local ns
    for ns in "${cleanup_namespaces[@]}"; do
        echo "== $ns"
        ip -n "$ns" -br addr
        ip -n "$ns" neigh
        ip -n "$ns" route
        ip netns exec "$ns" ss -tan
        ip netns exec "$ns" nft list ruleset
        ip netns exec "$ns" sysctl net.ipv4.ip_forward net.ipv4.conf.all.rp_filter
    done
    bridge -n "$VNS" fdb show br br0
    bridge -n "$VNS" link
    ip -n "$VNS" -d link show br0
}

# ---- the image, from the page's sync-mode make image line ------------------------------------
mkdir -p "$work/blobs"
head -c 30000 /dev/urandom >"$work/blobs/bzImage"
head -c 3000 /dev/urandom >"$work/blobs/init"
head -c 3000 /dev/urandom >"$work/blobs/nsm.ko"
echo "reboot=k panic=30 console=ttyS0" >"$work/blobs/cmdline"
# the page: "cp dist/aws/sync-egress.yaml egress.yaml # put the stack's VpcCidr in it"
sed "s|10\.0\.0\.0/16|$vpc.0/24|" "$SOURCE_DIR/dist/aws/sync-egress.yaml" >"$work/egress.yaml"
grep -q "\"$vpc.0/24:444\"" "$work/egress.yaml" || fail "dist/aws/sync-egress.yaml does not allow 10.0.0.0/16:444"
/usr/bin/python3 "$FLEET" image-args "$SOURCE_DIR/docs/deploy-aws.md" "$work" >"$work/image-args" ||
    fail "no sync-mode make image line in docs/deploy-aws.md"
mapfile -t image_args <"$work/image-args"
"$SOURCE_DIR/scripts/image.sh" --blobs "$work/blobs" --cloister "$CLOISTER" --out "$work/image" "${image_args[@]}" \
    >"$work/image.json" 2>"$work/image.err" || fail "scripts/image.sh failed: $(cat "$work/image.err")"
/usr/bin/python3 "$FLEET" enclave-argv "$work/image/cloister-hello.eif" >"$work/enclave-argv"
cmp -s "$work/image/rootfs/etc/cloister/egress.yaml" "$work/egress.yaml" || fail "the image does not hold the egress policy"
/usr/bin/python3 "$FLEET" shown "$SOURCE_DIR/docs/deploy-aws.md" >"$work/shown-argv"
cmp -s "$work/shown-argv" "$work/enclave-argv" ||
    fail "docs/deploy-aws.md shows another sync-mode enclave command than the image runs: $(diff "$work/shown-argv" "$work/enclave-argv")"
# the image's paths, and what stands in for Nitro here
mapfile -t image_argv <"$work/enclave-argv"
[ "${image_argv[0]}" = enclave ] || fail "the image runs cloister ${image_argv[0]}"
enclave_argv=()
for ((i = 1; i < ${#image_argv[@]}; i++)); do
    w=${image_argv[$i]}
    case $w in
    /etc/cloister/egress.yaml) w="$work/egress.yaml" ;;
    "/usr/bin/python3 /app/hello/app.py") w="/usr/bin/python3 $SOURCE_DIR/examples/hello/app.py" ;;
    esac
    case ${image_argv[$((i - 1))]} in -drain-grace | -drain-timeout) w=1 ;; esac
    enclave_argv+=("$w")
done
for want in -tap -fqdn-leader -sync-advertise-imds; do
    printf '%s\n' "${enclave_argv[@]}" | has -x -- "$want" || fail "the image's command lacks $want: ${enclave_argv[*]}"
done

# ---- the VPC: a bridge, its DNS, the leader's load balancer --------------------------------------
ip netns add "$VNS"
ip -n "$VNS" link set lo up
# A fixed address: a bridge without one takes the lowest of its ports' and changes it as ports join,
# and an instance whose ARP entry names the old one is cut off until that entry fails (30-50 s).
ip -n "$VNS" link add br0 address 02:00:00:00:0a:02 type bridge
ip -n "$VNS" addr add "$NLB/24" dev br0
ip -n "$VNS" addr add "$EVIL/24" dev br0
ip -n "$VNS" link set br0 up
leader_nlb_name=leader-nlb.vpc.test
spawn vpc_dns ip netns exec "$VNS" dnsmasq --keep-in-foreground --conf-file=/dev/null --pid-file= --no-resolv \
    --no-hosts --bind-interfaces --listen-address="$NLB" --address=/$leader_nlb_name/"$NLB" \
    --address=/kms.us-east-1.amazonaws.com/"$NLB" --log-facility=- --user=root
wait_for_log vpc_dns 'started, version'
/usr/bin/python3 "$FLEET" host-json "$SOURCE_DIR/dist/aws/cloister.yaml" "$leader_nlb_name" >"$work/host.json" ||
    fail "cannot take host.json from the template"
start_sims 1 2 3
pcr0_a=$("$CLOISTER" nsm --nsm "unix:$work/sim1.sock" pcr 0 | cut -d' ' -f1)

# start_instance NAME IDX SIM [--leader-route HOST:PORT] [ENCLAVE ARGS...]: a parent namespace on
# the bridge at $vpc.(10+IDX) running the template's host.json, and the enclave's namespace.
start_instance() {
    local name=$1 idx=$2 sim=$3
    shift 3
    local route=""
    if [ "${1:-}" = --leader-route ]; then route=$2; shift 2; fi
    local pns="clf-p$idx-$suffix" ens="clf-e$idx-$suffix" ip="$vpc.$((10 + idx))" dir="$work/$name"
    cleanup_namespaces+=("$pns" "$ens")
    mkdir -p "$dir/vsock" "/etc/netns/$pns"
    echo "nameserver $NLB" >"/etc/netns/$pns/resolv.conf"
    ip netns add "$pns"
    ip netns add "$ens"
    ip -n "$pns" link set lo up
    ip -n "$VNS" link add "vv$idx" type veth peer name eth0 netns "$pns"
    ip -n "$VNS" link set "vv$idx" master br0 up
    ip -n "$pns" addr add "$ip/24" dev eth0
    ip -n "$pns" link set eth0 up
    local imds
    imds=$(free_port)
    spawn "$name-imds" ip netns exec "$pns" "$CLOISTER" imds-sim --listen "tcp:127.0.0.1:$imds" --local-ipv4 "$ip"
    wait_for_log "$name-imds" 'event=listening'
    # the enclave: the image's command in its own namespace, with the stand-ins' arguments
    {
        echo '#!/bin/sh'
        printf 'exec ip netns exec %q env CLOISTER_VSOCK_STANDIN_CID=16 %q enclave' "$ens" "$CLOISTER"
        printf ' %q' "${enclave_argv[@]}" --nsm "unix:$work/$sim.sock" -sync-root "$root" -tap-resolv-conf "" \
            -sync-register-interval 200ms "$@"
        echo
    } >"$dir/enclave.sh"
    chmod +x "$dir/enclave.sh"
    /usr/bin/python3 - "$work/host.json" "$dir/host.json" "$dir/enclave.sh" "$imds" "$route" <<'PY'
import json, sys
src, dst, script, imds, route = sys.argv[1:]
s = json.load(open(src))
for nitro_only in ("run-enclave-eif", "cpu-count", "memory", "enclave-cid"):
    del s[nitro_only]
s["enclave-command"] = "exec " + script
s["imds-endpoint"] = "http://127.0.0.1:" + imds
s.update({"drain-grace": "1s", "drain-timeout": "1s", "drain-wait": "2s", "stop-grace": "3s"})
if route:  # this parent is the attacker: its leader route goes elsewhere
    s["outbound"] = [o if not o.startswith("vsock:3:8001=") else "vsock:3:8001=" + route for o in s["outbound"]]
json.dump(s, open(dst, "w"), indent=2)
PY
    spawn "$name" ip netns exec "$pns" env CLOISTER_VSOCK_STANDIN="$dir/vsock" CLOISTER_VSOCK_STANDIN_CID=3 \
        "$CLOISTER" host --config "$dir/host.json"
    wait_for_log "$name" 'event=tap-ready'
    echo "$ip" >"$dir/ip"
}
ip_of() { cat "$work/$1/ip"; }

# verify_sha NAME: cloister verify from the VPC through NAME's 443 (PROVEN), its certificate's SHA-256
verify_sha() {
    local out="$work/verify-$1.json"
    for _ in $(seq 1 100); do
        in_v "$CLOISTER" verify "https://$(ip_of "$1"):443" --root "$root" --json >"$out" 2>"$out.err" && break
        sleep 0.1
    done
    /usr/bin/python3 -c 'import json,sys; d=json.load(open(sys.argv[1])); print(d["certificate_sha256"])' "$out" ||
        fail "cloister verify did not prove $1: $(cat "$out" "$out.err")"
}

# ---- the leader NLB (its own target: the leader instance's 444), the leader, two workers ----------------
spawn nlb ip netns exec "$VNS" socat "tcp-listen:444,bind=$NLB,reuseaddr,fork" "tcp:$vpc.11:444"
start_instance leader 1 sim1
wait_for_log leader 'event=sync_role role=leader' 600
leader_sha=$(sed -n 's/.*event=tls_identity .*certificate_sha256=\([0-9a-f]*\).*/\1/p' "$work/leader.log" | head -n 1)
[ -n "$leader_sha" ] || fail "the leader logged no certificate"
start_instance worker1 2 sim2
start_instance worker2 3 sim3
for w in worker1 worker2; do
    wait_for_log "$w" 'event=sync_role role=worker' 600
    grep -q "event=sync_started .*advertise=$(ip_of "$w"):444" "$work/$w.log" ||
        fail "$w does not advertise its IMDS local-ipv4:444: $(grep sync_started "$work/$w.log")"
    wait_for_log "$w" 'event=sync_keys_installed' 600
    grep -q 'event=sync_leader_verified .*by=equal-pcrs' "$work/$w.log" || fail "$w did not verify the leader"
    wait_for_log leader "event=sync_worker_synced worker=$(ip_of "$w"):444" 600
done
pass "the leader (its own NLB reached through the host's route) delivered its key over tap0 to each worker at its IMDS local-ipv4:444"

for name in leader worker1 worker2; do
    sha=$(verify_sha "$name")
    [ "$sha" = "$leader_sha" ] || fail "cloister verify through $name's 443 proved $sha, not the leader's $leader_sha"
done
/usr/bin/python3 - "$work"/verify-leader.json "$work"/verify-worker1.json <<'PY' || fail "the replicas' documents are not of two modules of one image"
import json, sys
a, b = (json.load(open(p)) for p in sys.argv[1:])
assert a["module_id"] != b["module_id"] and a["pcrs"]["4"] != b["pcrs"]["4"] and a["pcrs"]["0"] == b["pcrs"]["0"]
PY
pass "cloister verify from the VPC through each instance's 443 proves the leader's certificate on all three (distinct modules, one PCR0)"

# ---- another image joins: willing to take the keys, refused by the leader ---------------------------------
pcr0_b=$(printf 'b0%.0s' $(seq 48))
start_sim_pcr0 simB "$pcr0_b"
start_instance rogue 4 simB --sync-allow-pcr0 "$pcr0_a"
# (the enclave's lines are quoted inside the host's log: error=\"...)
wait_for_log leader "event=sync_worker_failed worker=$(ip_of rogue):444 error=.{1,2}the peer's PCR0 ${pcr0_b:0:32}\\.\\.\\. differs from ours" 600
! grep -q 'event=sync_keys_installed' "$work/rogue.log" || fail "the enclave of another image got the keys"
[ "$(verify_sha rogue)" != "$leader_sha" ] || fail "the other image presents the leader's certificate"
pass "an enclave of another image (another PCR0) that joins the fleet is refused by the leader and keeps its own certificate"

# ---- a worker's parent sends its leader route to a fake leader --------------------------------------------
fake_leader_material
fake=$(free_port)
spawn fake ip netns exec "$VNS" env CLOISTER="$CLOISTER" /usr/bin/python3 "$SOURCE_DIR/tests/integration/sync/fake_leader.py" \
    --listen "$fake" --cert "$work/fake.crt" --key "$work/fake.key" --evil-cert "$work/evil.crt" --evil-key "$work/evil.key" \
    --evil-nsm "unix:$work/evil.sock" --genuine "https://$vpc.15:443" --attacks foreign-root,genuine-doc
wait_for_log fake 'fake-leader: listening'
spawn fake_front ip netns exec "$VNS" socat "tcp-listen:4444,bind=$EVIL,reuseaddr,fork" "tcp:127.0.0.1:$fake"
start_instance victim 5 sim2 --leader-route "$EVIL:4444"
wait_for_log victim 'event=sync_role role=worker' 600
wait_for_log fake 'fake-leader: done' 600
grep -q 'event=sync_refused reason=.*trusted root' "$work/victim.log" || fail "the worker did not refuse the foreign root"
grep -q 'event=sync_refused reason=.*does not bind SHA-256 of the encrypted keys' "$work/victim.log" ||
    fail "the worker did not refuse a genuine document binding something else"
! grep -q 'event=sync_keys_installed' "$work/victim.log" || fail "the worker installed the fake leader's keys"
[ "$(verify_sha victim)" != "$leader_sha" ] || fail "the victim presents the leader's certificate?"
pass "a worker whose parent routes -fqdn-leader to a fake leader (over the same tap0 path) refuses its keys, each reason logged"

# ---- registrations naming where the leader must not go: the egress policy ----------------------------------
stop rogue || true
stop victim || true
# the attacker in the VPC registers itself with the leader (its 444 is open to the VPC) twice: at
# EVIL:8443 (outside VPC_CIDR:444) and at EVIL:444 (inside); a listener on each port counts connections
spawn evil_listen ip netns exec "$VNS" /usr/bin/python3 -u -c '
import socket, sys, threading
host = sys.argv[1]
def serve(port):
    s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.bind((host, port)); s.listen(8)
    print("listening %d" % port, flush=True)
    while True:
        c, a = s.accept(); print("connection %d from %s" % (port, a[0]), flush=True); c.close()
threading.Thread(target=serve, args=(8443,), daemon=True).start()
serve(444)' "$EVIL"
wait_for_log evil_listen 'listening 444'
register() { # WORKER_HOSTNAME: POST /enclave/heartbeat to the leader's instance, from the VPC
    in_v curl -sk --max-time 5 -o /dev/null -w '%{http_code}' -X POST -H 'Content-Type: text/plain' \
        --data "{\"hashed_keys\":\"\",\"worker_hostname\":\"$1\"}" "https://$vpc.11:444/enclave/heartbeat"
}
code=$(register "$EVIL:8443") || true
[ "$code" = 200 ] || fail "the leader did not take the registration (HTTP $code)"
wait_for_log leader "event=egress_drop reason=port .*dst=$EVIL port=8443" 600
wait_for_log leader "event=sync_worker_failed worker=$EVIL:8443" 600
! grep -q 'connection 8443' "$work/evil_listen.log" || fail "the leader's enclave reached $EVIL:8443 through tap0"
code=$(register "$EVIL:444") || true
[ "$code" = 200 ] || fail "the leader did not take the second registration (HTTP $code)"
wait_for_log evil_listen "connection 444 from $vpc.11" 600
wait_for_log leader "event=sync_worker_failed worker=$EVIL:444" 600
pass "a registration naming $EVIL:8443 is never dialed (egress policy: only VPC_CIDR:444); one naming $EVIL:444 is, and gets no keys"

# ---- many such registrations at once must not keep a new worker from its keys ----------------------------
# The leader runs at most 32 deliveries at a time. Each dropped SYN used to hold one for the kernel's
# connect retries (about two minutes), so 40 registrations naming dropped addresses shut every new
# worker out for that long (sync_busy); now a delivery gives up after its 3 s request timeout.
for k in $(seq 0 39); do
    code=$(register "$EVIL:$((9000 + k))") || true
    [ "$code" = 200 ] || fail "registration $k: HTTP $code"
done
wait_for_log leader "event=sync_busy" 600
start_instance worker3 6 sim3
wait_for_log worker3 'event=sync_keys_installed' 600
[ "$(verify_sha worker3)" = "$leader_sha" ] || fail "worker3 does not present the leader's certificate"
pass "40 registrations naming dropped addresses (all 32 delivery slots taken) do not keep a new worker from the leader's key"

# ---- the unit's privileges: the template's host.json as the unit runs it ----------------------------------
# User=cloister with AmbientCapabilities from the template (CAP_NET_ADMIN added in sync mode): the TAP
# device, the nftables table and net.ipv4.ip_forward (0 here, as on a fresh instance) need no more.
# systemd's udev rule makes /dev/net/tun 0666 on Amazon Linux; where it is not (this machine's may be
# 0600), CAP_DAC_OVERRIDE stands in for that mode bit and nothing else.
caps=$(/usr/bin/python3 "$FLEET" unit-caps "$SOURCE_DIR/dist/aws/cloister.yaml")
[ "$caps" = "+net_bind_service,+net_admin" ] || fail "the unit's capabilities in sync mode: $caps"
extra=""
[ "$(stat -c %a /dev/net/tun)" = 666 ] || extra=",+dac_override"
PRIV="clf-u-$suffix"
cleanup_namespaces+=("$PRIV")
ip netns add "$PRIV"
ip -n "$PRIV" link set lo up
ip netns exec "$PRIV" sysctl -qw net.ipv4.ip_forward=0
chmod o+x "$work"
mkdir -m 0777 "$work/unit-vsock"
/usr/bin/python3 -c 'import json,sys; s=json.load(open(sys.argv[1])); print(json.dumps({k: s[k] for k in ("tap", "tap-forward", "imds", "forward")}))' \
    "$work/host.json" >"$work/unit-host.json"
chmod 0644 "$work/unit-host.json"
as_unit() { # NAME CAPS: cloister host --config, as nobody with only CAPS
    spawn "$1" ip netns exec "$PRIV" env CLOISTER_VSOCK_STANDIN="$work/unit-vsock" CLOISTER_VSOCK_STANDIN_CID=3 \
        setpriv --reuid=65534 --regid=65534 --clear-groups --inh-caps="$2" --ambient-caps="$2" \
        "$CLOISTER" host --config "$work/unit-host.json"
}
as_unit unit_old "+net_bind_service$extra"
for _ in $(seq 1 100); do kill -0 "${pids[unit_old]}" 2>/dev/null || break; sleep 0.05; done
! kill -0 "${pids[unit_old]}" 2>/dev/null || fail "cloister host --tap ran without CAP_NET_ADMIN (the check proves nothing)"
grep -q 'Operation not permitted\|Permission denied' "$work/unit_old.log" || fail "no clear refusal: $(cat "$work/unit_old.log")"
stop unit_old || true
as_unit unit "$caps$extra"
wait_for_log unit 'event=tap-ready'
[ "$(ip netns exec "$PRIV" sysctl -n net.ipv4.ip_forward)" = 1 ] || fail "net.ipv4.ip_forward was not set"
ip netns exec "$PRIV" nft list table inet cloister_tap_cloister0 | has 'tcp dport 444 dnat ip to 192.168.127.2:444' ||
    fail "the unprivileged host did not install the 444 DNAT"
pass "the unit's user and capabilities (CAP_NET_ADMIN added in sync mode) run cloister host --tap: device, nftables, ip_forward; without CAP_NET_ADMIN it stops"
