# Shared by the sync_*.sh integration tests (sourced after common.bash).
#
#   start_sims N...     nsm-sim instances sim1..simN: one CA chain (the state
#                       is copied, so one root.pem), each its own instance
#                       id (so PCR4 differs, as between parent instances);
#                       start_sim_pcr0 NAME HEX adds one with another PCR0,
#                       start_sim_with NAME ARGS... one with nsm-sim ARGS
#   sync_enclave NAME SIM LEADER_PORT ARGS...
#                       cloister enclave with its own ports ($work/NAME.ports:
#                       public internal sync) and -fqdn-leader 127.0.0.1:LEADER_PORT
#   port_of NAME KIND   public | internal | sync
#   served_sha NAME     SHA-256 of the certificate NAME's public listener presents
#   proven_sha NAME     cloister verify's certificate (must be PROVEN)

root="$work/state/root.pem"

start_sims() {
    "$CLOISTER" nsm-sim --listen "unix:$work/seed.sock" --state "$work/state" >"$work/seed.log" 2>&1 &
    local seed=$!
    for _ in $(seq 1 200); do grep -q '^nsm-sim: listening on ' "$work/seed.log" 2>/dev/null && break; sleep 0.05; done
    kill "$seed"; wait "$seed" 2>/dev/null || true
    [ -f "$root" ] || fail "nsm-sim made no root"
    local i
    for i in "$@"; do
        start_sim_pcr0 "sim$i" ""
    done
}

start_sim_pcr0() { # NAME HEX ("" for the default PCR0)
    local name=$1 pcr0=$2
    if [ -n "$pcr0" ]; then start_sim_with "$name" --pcr "0=$pcr0"; else start_sim_with "$name"; fi
}

start_sim_with() { # NAME NSM-SIM-ARGS...
    local name=$1
    shift
    mkdir -p "$work/$name-state"
    cp -r "$work/state/." "$work/$name-state/"
    rm -f "$work/$name-state/instance-id" "$work/$name-state/instance.key" "$work/$name-state/instance.pem"
    spawn "$name" "$CLOISTER" nsm-sim --listen "unix:$work/$name.sock" --state "$work/$name-state" \
        --instance-id "i-$name-$RANDOM" "$@"
    wait_for_log "$name" '^nsm-sim: listening on '
    cmp -s "$work/$name-state/root.pem" "$root" || fail "$name has another root"
}

sync_enclave() { # NAME SIM LEADER_SYNC_PORT ARGS...
    local name=$1 sim=$2 leader=$3
    shift 3
    local pub int sp
    pub=$(free_port); int=$(free_port); sp=$(free_port)
    [ "$leader" = self ] && leader=$sp
    echo "$pub $int $sp" >"$work/$name.ports"
    spawn "$name" "$CLOISTER" enclave -fqdn localhost --nsm "unix:$work/$sim.sock" \
        --listen "tcp:127.0.0.1:$pub" -intport "$int" -ext-priv-listen "tcp:127.0.0.1:$sp" \
        -fqdn-leader "127.0.0.1:$leader" --sync-root "$root" "$@"
    wait_for_log "$name" 'event=listening listener=public'
}

port_of() {
    local pub int sp
    read -r pub int sp <"$work/$1.ports"
    case $2 in public) echo "$pub" ;; internal) echo "$int" ;; sync) echo "$sp" ;; esac
}

served_sha() {
    openssl s_client -connect "127.0.0.1:$(port_of "$1" public)" -servername localhost </dev/null 2>/dev/null |
        openssl x509 -outform DER | sha256sum | cut -c1-64
}

proven_sha() {
    "$CLOISTER" verify "https://127.0.0.1:$(port_of "$1" public)" --root "$root" --json >"$work/verify-$1.json" ||
        fail "cloister verify did not prove $1: $(cat "$work/verify-$1.json")"
    python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["certificate_sha256"])' "$work/verify-$1.json"
}

tls_sha_of_log() { # NAME: the last certificate_sha256 NAME logged
    sed -n 's/.*event=tls_identity .*certificate_sha256=\([0-9a-f]*\).*/\1/p' "$work/$1.log" | tail -n 1
}

nonce_hex() {
    head -c 20 /dev/urandom | od -An -tx1 | tr -d ' \n'
}

# fake_leader_material: what tests/integration/sync/fake_leader.py is started with: self-signed
# localhost certificates for the fake leader ($work/fake.key, .crt) and for what it pretends
# ($work/evil.key, .crt), and a second NSM simulator, evilsim on $work/evil.sock, of another root.
fake_leader_material() {
    local k
    for k in fake evil; do
        openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 1 -subj /CN=localhost \
            -addext subjectAltName=DNS:localhost -keyout "$work/$k.key" -out "$work/$k.crt" 2>/dev/null
    done
    spawn evilsim "$CLOISTER" nsm-sim --listen "unix:$work/evil.sock" --state "$work/evil-state"
    wait_for_log evilsim '^nsm-sim: listening on '
}
