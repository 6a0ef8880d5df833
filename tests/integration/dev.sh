#!/usr/bin/env bash
# cloister dev: the whole picture on one machine.  --check end to end; an
# interactive run whose enclave is in its own network namespace with only lo;
# SIGTERM and SIGINT stop everything and leave no process, namespace, socket
# or file behind; bad command lines.
set -euo pipefail
source "$(dirname "$0")/common.bash"
command -v python3 >/dev/null || { echo "skip: python3 is not installed (the example app)"; exit 77; }
root_user=0
[ "$(id -u)" = 0 ] && unshare --net true 2>/dev/null && root_user=1

# Everything a run left: processes naming its run directory, the directory itself.
leftovers() { # RUN_DIR
    python3 - "$1" <<'PY'
import os, sys
run = sys.argv[1].encode()
found = []
for pid in filter(str.isdigit, os.listdir("/proc")):
    if int(pid) == os.getpid():
        continue
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            if run in f.read():
                found.append(pid)
    except OSError:
        pass  # gone meanwhile
if os.path.exists(sys.argv[1]):
    found.append("directory " + sys.argv[1])
print(" ".join(found))
PY
}
in_netns() { # INODE: pids whose network namespace is INODE
    local found=""
    for ns in /proc/[0-9]*/ns/net; do
        [ "$(stat -L -c %i "$ns" 2>/dev/null)" = "$1" ] && found+=" $(basename "$(dirname "$(dirname "$ns")")")"
    done 2>/dev/null
    echo "$found"
}

# ---- --check ------------------------------------------------------------------------
role_pcr_check() { # RUN_DIR: what the instance role may do with alias/dev (output in $work/role.out)
    local run=$1 token creds
    token=$(curl -sS --unix-socket "$run/vsock/3.8002" -X PUT -H 'X-aws-ec2-metadata-token-ttl-seconds: 60' \
        http://169.254.169.254/latest/api/token) || return 1
    role=$(curl -sS --unix-socket "$run/vsock/3.8002" -H "X-aws-ec2-metadata-token: $token" \
        http://169.254.169.254/latest/meta-data/iam/security-credentials/) || return 1
    curl -sS --unix-socket "$run/vsock/3.8002" -H "X-aws-ec2-metadata-token: $token" \
        "http://169.254.169.254/latest/meta-data/iam/security-credentials/$role" >"$work/role.json" || return 1
    # kms-local through the host's KMS proxy (vsock:3:8000, the stand-in's file), SigV4 by hand (kms has no PutKeyPolicy verb)
    python3 - "$run" "$work/role.json" >"$work/role.out" 2>&1 <<'PY'
import datetime, hashlib, hmac, json, socket, ssl, sys
run, creds = sys.argv[1], json.load(open(sys.argv[2]))
host, region = "kms.us-east-1.amazonaws.com", "us-east-1"
def call(op, body):
    body = json.dumps(body).encode()
    now = datetime.datetime.now(datetime.timezone.utc)
    amz_date, day = now.strftime("%Y%m%dT%H%M%SZ"), now.strftime("%Y%m%d")
    headers = {"content-type": "application/x-amz-json-1.1", "host": host, "x-amz-date": amz_date,
               "x-amz-target": "TrentService." + op}
    if creds.get("Token"):
        headers["x-amz-security-token"] = creds["Token"]
    names = ";".join(sorted(headers))
    canonical = "\n".join(["POST", "/", "", "".join(f"{k}:{headers[k]}\n" for k in sorted(headers)), names,
                           hashlib.sha256(body).hexdigest()])
    scope = f"{day}/{region}/kms/aws4_request"
    to_sign = "\n".join(["AWS4-HMAC-SHA256", amz_date, scope, hashlib.sha256(canonical.encode()).hexdigest()])
    key = ("AWS4" + creds["SecretAccessKey"]).encode()
    for part in (day, region, "kms", "aws4_request"):
        key = hmac.new(key, part.encode(), hashlib.sha256).digest()
    sig = hmac.new(key, to_sign.encode(), hashlib.sha256).hexdigest()
    headers["authorization"] = (f"AWS4-HMAC-SHA256 Credential={creds['AccessKeyId']}/{scope}, "
                                f"SignedHeaders={names}, Signature={sig}")
    raw = socket.socket(socket.AF_UNIX)
    raw.connect(run + "/vsock/3.8000")  # vsock:3:8000 through the stand-in
    ctx = ssl.create_default_context(cafile=run + "/kms/ca.pem")
    s = ctx.wrap_socket(raw, server_hostname=host)
    head = "".join(f"{k}: {v}\r\n" for k, v in headers.items())
    s.sendall(f"POST / HTTP/1.1\r\n{head}content-length: {len(body)}\r\nconnection: close\r\n\r\n".encode() + body)
    data = b""
    while chunk := s.recv(65536):
        data += chunk
    status = int(data.split(b" ", 2)[1])
    return status, json.loads(data.split(b"\r\n\r\n", 1)[1] or b"{}")
open_policy = json.dumps({"Version": "2012-10-17", "Statement": [{"Effect": "Allow",
    "Principal": {"AWS": "arn:aws:iam::111122223333:root"}, "Action": "kms:*", "Resource": "*"}]})
status, answer = call("ListAliases", {})
print("ListAliases", status)
key_id = [a["TargetKeyId"] for a in answer.get("Aliases", []) if a["AliasName"] == "alias/dev"]
assert status == 200 and key_id, "alias/dev not listed"
status, answer = call("PutKeyPolicy", {"KeyId": key_id[0], "PolicyName": "default", "Policy": open_policy})
print("PutKeyPolicy", status, answer)
assert status == 400 and answer.get("__type") == "AccessDeniedException", "the role rewrote the key policy"
assert "assumed-role/" in answer.get("message", ""), "the role has no ARN of its own"
import base64
ct = base64.b64encode(open(run + "/secret-dev.ct", "rb").read()).decode()
status, answer = call("Decrypt", {"CiphertextBlob": ct, "EncryptionContext": {"purpose": "enclave-secret", "name": "demo"}})
print("Decrypt", status, answer)
assert status == 400 and answer.get("__type") == "AccessDeniedException", "the role decrypted without attestation"
print("role refused")
PY
}

port=$(free_port)
status=0
"$CLOISTER" dev --check --port "$port" >"$work/check.out" 2>&1 || status=$?
run=$(sed -n 's/^cloister dev: run directory //p' "$work/check.out")
[ "$status" = 0 ] || { cat "$work/check.out" >&2; fail "cloister dev --check: exit $status"; }
for want in 'verdict: PROVEN' 'ok    GET /api/hello  200' 'ok    GET /region     200' 'ok    GET /secret     200' \
            'Decrypt under a key bound to another PCR0: AccessDeniedException' 'cloister dev --check: passed' \
            'app key hash     [0-9a-f]{64}'; do
    grep -qE -- "$want" "$work/check.out" || fail "--check output lacks /$want/: $(cat "$work/check.out")"
done
if [ "$root_user" = 1 ]; then
    grep -q 'network: its own namespace (interfaces: lo)' "$work/check.out" || fail "the enclave was not isolated"
    # dev leaves lo down, as AWS's enclave init does: the enclave brings it up
    grep -q "loopback   lo was down in the enclave's namespace; cloister enclave brought it up" "$work/check.out" ||
        fail "lo was not brought up by the enclave: $(cat "$work/check.out")"
fi
# --fidelity nitro is the default: vsock addresses through the vsock code
grep -q -- '-> vsock:16:443 (vsock code, unix stand-in at the last connect)' "$work/check.out" &&
    grep -q 'KMS proxy vsock:3:8000' "$work/check.out" && grep -q 'IMDS gate vsock:3:8002' "$work/check.out" &&
    grep -q 'fidelity   nitro' "$work/check.out" || fail "not the nitro profile: $(cat "$work/check.out")"
[ -n "$run" ] || fail "no run directory named"
[ -z "$(leftovers "$run")" ] || fail "--check left behind:$(leftovers "$run")"
pass "cloister dev --check (fidelity nitro: vsock stand-in, no MSG_PEEK/splice on links, lo down at start): proven; app reached through the host; IMDS from the app; the KMS secret opened inside, another PCR0 refused; nothing left"

# ---- interactive, stopped by SIGTERM, then by SIGINT ---------------------------------
for sig in TERM INT; do
    port=$(free_port)
    spawn "dev$sig" "$CLOISTER" dev --port "$port"
    wait_for_log "dev$sig" '^Ctrl-C stops everything' 1200
    run=$(sed -n 's/^cloister dev: run directory //p' "$work/dev$sig.log")
    [ "$(curl -sk "https://127.0.0.1:$port/api/hello" | python3 -c 'import json,sys; print(json.load(sys.stdin)["message"])')" = \
        "hello from inside the enclave" ] || fail "the app through https://127.0.0.1:$port"
    "$CLOISTER" verify "https://127.0.0.1:$port" --root "$run/state/root.pem" >/dev/null || fail "verify while running"
    curl -sk "https://127.0.0.1:$port/secret" | has -E '"sha256": "[0-9a-f]{64}"' || fail "GET /secret"
    [ ! -e "$run/secret.txt" ] || fail "the demo secret's plaintext was left in the run directory"
    if [ "$sig" = TERM ]; then
        # The instance role's credentials, as anything on the parent gets them from IMDS, can neither
        # rewrite the PCR0-bound key's policy (only the operator administers it) nor decrypt without
        # an attestation document.
        role_pcr_check "$run" || fail "the instance role's credentials: $(cat "$work/role.out")"
    fi
    for f in 16.443 3.8000 3.8002; do
        [ -S "$run/vsock/$f" ] || fail "no vsock stand-in socket $run/vsock/$f"
    done
    epid=$(sed -n 's/.*cloister enclave (pid \([0-9]*\)).*/\1/p' "$work/dev$sig.log")
    [ -n "$epid" ] && kill -0 "$epid" || fail "no enclave pid in the output"
    ns=$(stat -L -c %i "/proc/$epid/ns/net")
    # the enclave runs with the seams set as on Nitro
    for want in CLOISTER_VSOCK_STANDIN="$run/vsock" CLOISTER_VSOCK_STANDIN_CID=16 CLOISTER_LINK_NO_PEEK=1 \
        CLOISTER_LINK_NO_SPLICE=1 CLOISTER_NO_VSOCK=1; do
        tr '\0' '\n' <"/proc/$epid/environ" | has -x -- "$want" || fail "the enclave's environment lacks $want"
    done
    if [ "$root_user" = 1 ]; then
        [ "$ns" != "$(stat -L -c %i /proc/self/ns/net)" ] || fail "the enclave shares this network namespace"
        ifaces=$(awk -F: 'NR > 2 {gsub(/ /, "", $1); print $1}' "/proc/$epid/net/dev" | tr '\n' ' ')
        [ "$ifaces" = "lo " ] || fail "the enclave's namespace has interfaces: $ifaces"
        # from inside, the host's loopback services are out of reach
        port_outside=$(free_port)
        # a log of its own per signal: the previous round's "listening" must not be taken for this one's
        spawn "outside$sig" python3 -c 'import socket,sys,time; s=socket.socket(); s.bind(("127.0.0.1", int(sys.argv[1]))); s.listen(8); print("listening", flush=True); time.sleep(30)' "$port_outside"
        wait_for_log "outside$sig" '^listening'
        (exec 3<>"/dev/tcp/127.0.0.1/$port_outside") 2>/dev/null || fail "the outside listener is not reachable from here"
        if nsenter --net="/proc/$epid/ns/net" bash -c "exec 3<>/dev/tcp/127.0.0.1/$port_outside" 2>/dev/null; then
            fail "the enclave's namespace reaches the host's 127.0.0.1"
        fi
        stop "outside$sig" || true
    fi
    pid=${pids[dev$sig]}
    kill -"$sig" "$pid"
    status=0
    wait "$pid" || status=$?
    unset "pids[dev$sig]"
    [ "$status" = 0 ] || fail "cloister dev exited $status on SIG$sig: $(tail -5 "$work/dev$sig.log")"
    grep -q "cloister dev: stopped; $run removed" "$work/dev$sig.log" || fail "no stop report after SIG$sig"
    [ -z "$(leftovers "$run")" ] || fail "SIG$sig left behind:$(leftovers "$run")"
    if [ "$root_user" = 1 ]; then
        [ -z "$(in_netns "$ns")" ] || fail "processes still in the enclave's namespace after SIG$sig:$(in_netns "$ns")"
    fi
done
if [ "$root_user" = 1 ]; then
    pass "interactive: enclave in its own namespace with only lo; SIGTERM and SIGINT leave no process, namespace or file"
else
    pass "interactive (not root: no namespace): SIGTERM and SIGINT leave no process or file"
fi

# ---- the fallback without isolation is said --------------------------------------------
port=$(free_port)
"$CLOISTER" dev --check --no-netns --port "$port" >"$work/nonetns.out" 2>&1 || fail "--no-netns --check: $(cat "$work/nonetns.out")"
grep -q 'WARNING: the enclave side is NOT isolated (--no-netns)' "$work/nonetns.out" || fail "the fallback is not said"
grep -q 'NOT isolated (interfaces:' "$work/nonetns.out" || fail "the report does not say the network is shared"
pass "--no-netns: works, and says clearly that the enclave side is not isolated"

# ---- --fidelity loose: the old unix: links, without the seams --------------------------
port=$(free_port)
"$CLOISTER" dev --check --fidelity loose --port "$port" >"$work/loose.out" 2>&1 ||
    fail "--fidelity loose --check: $(cat "$work/loose.out")"
grep -q 'unix sockets for vsock: --fidelity loose' "$work/loose.out" && ! grep -q 'fidelity   nitro' "$work/loose.out" ||
    fail "--fidelity loose did not use unix: links"
pass "--fidelity loose: the links as unix: addresses, still proven"

# ---- bad command lines, a port in use ---------------------------------------------------
for args in "--port 0" "--port x" "--app-port 9000" "extra" "--bogus" "--fidelity exact"; do
    status=0
    # shellcheck disable=SC2086
    "$CLOISTER" dev $args >"$work/out" 2>&1 || status=$?
    [ "$status" = 2 ] || fail "'dev $args': exit $status, expected 2"
    grep -q 'cloister dev\|usage' "$work/out" || fail "'dev $args' did not say what is wrong"
done
busy=$(free_port)
spawn holder python3 -c 'import socket,sys,time; s=socket.socket(); s.bind(("127.0.0.1", int(sys.argv[1]))); s.listen(8); print("holding", flush=True); time.sleep(30)' "$busy"
wait_for_log holder '^holding'
status=0
"$CLOISTER" dev --check --port "$busy" >"$work/busy.out" 2>&1 || status=$?
stop holder || true
[ "$status" = 3 ] && grep -q "127.0.0.1:$busy is already in use" "$work/busy.out" || fail "port in use: exit $status: $(cat "$work/busy.out")"
pass "bad command lines exit 2; a port in use is named (exit 3)"
