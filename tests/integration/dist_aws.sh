#!/usr/bin/env bash
# dist/aws/cloister.yaml: valid for cfn-lint (npm; every resource, property, type, reference
# and intrinsic checked against AWS's CloudFormation resource specification), and the linter
# is seen to refuse a broken copy; the instances' user data is valid bash once CloudFormation
# has substituted it; the host.json it writes uses only options `cloister host` has; the KMS
# key opens only for the stack's PCR0 (and, during an upgrade, the previous one), which may
# never be the debug-mode zeros; the NLB checks the enclave's /enclave/health through the host's
# ',health' forward and the host drains the enclave before it stops. Every cloister command line
# the recipe runs (user data, the unit, host.json, dist/systemd, and the enclave command inside
# the image scripts/image.sh builds from docs/deploy-aws.md's make image line, the page's own
# commands) parses with cloister's own options parser (tests/integration/dist_commands.py), a
# misspelt flag is caught, and the page shows the enclave command the image really runs.
set -euo pipefail
source "$(dirname "$0")/common.bash"
node_modules_present || { echo "skip: tests/node/node_modules is absent (run scripts/node-deps.sh)"; exit 77; }
template="$SOURCE_DIR/dist/aws/cloister.yaml"
pcr0=$(printf 'ab%.0s' $(seq 48))
params=(VpcId=vpc-0123456789abcdef0 SubnetIds=subnet-0123456789abcdef0,subnet-0fedcba9876543210
        ArtifactBucket=my-artifacts Pcr0="$pcr0" OperatorArn=arn:aws:iam::123456789012:role/Operator
        DomainName=enclave.example.com LatestAmiId=ami-0123456789abcdef0)
validate() { node "$SOURCE_DIR/tests/node/validate_cfn.js" "$1" "${params[@]}" >"$work/lint.txt" 2>&1; }
validate "$template" || fail "cfn-lint finds the template invalid: $(cat "$work/lint.txt")"
for mode in kms sync; do
    node "$SOURCE_DIR/tests/node/validate_cfn.js" "$template" "${params[@]}" IdentityMode=$mode >"$work/lint.txt" 2>&1 ||
        fail "IdentityMode=$mode: $(cat "$work/lint.txt")"
done
sed 's/HttpTokens: required/HttpTokenz: required/' "$template" >"$work/broken.yaml"
if validate "$work/broken.yaml"; then fail "cfn-lint accepted a misspelt property: the check cannot fail"; fi
grep -q 'HttpTokenz is not a valid property' "$work/lint.txt" || fail "cfn-lint said: $(cat "$work/lint.txt")"
pass "cfn-lint validates dist/aws/cloister.yaml in both identity modes (and refuses a broken copy)"

python3 - "$template" "$work" "$CLOISTER" "$pcr0" "$SOURCE_DIR" <<'PY' || fail "the template's contents are not as they must be"
import json, re, subprocess, sys, yaml
template, work, cloister, pcr0, source = sys.argv[1:]
sys.path.insert(0, source + "/tests/integration")
import dist_commands
class Loader(yaml.SafeLoader): pass
def tag(loader, suffix, node):
    value = (loader.construct_scalar(node) if isinstance(node, yaml.ScalarNode)
             else loader.construct_sequence(node) if isinstance(node, yaml.SequenceNode) else loader.construct_mapping(node))
    return {suffix: value}
Loader.add_multi_constructor("!", tag)
t = yaml.load(open(template), Loader=Loader)
res = t["Resources"]
# the user data, substituted as CloudFormation would, is valid bash
sub, variables = res["LaunchTemplate"]["Properties"]["LaunchTemplateData"]["UserData"]["Fn::Base64"]["Fn::Sub"]
values = {"EnclaveMemoryMiB": "2048", "EnclaveCpuCount": "2", "ArtifactBucket": "b", "CloisterKey": "cloister/cloister",
          "EifKey": "cloister/app.eif", "Pcr0": pcr0, "AWS::Region": "us-east-1", "DomainName": "enclave.example.com",
          "AWS::StackName": "s"}
unknown = set(re.findall(r"\$\{([^}!]+)\}", sub)) - set(values) - set(variables)
assert not unknown, "user data names unknown parameters: %s" % unknown
help_text = subprocess.run([cloister, "host", "--help"], capture_output=True, text=True).stdout
commands = []
for mode in ("kms", "sync"):
    # the Fn::Sub variables: !If [SyncMode, THEN, ELSE], THEN possibly a !Sub of the leader's name
    chosen = {}
    for name, v in variables.items():
        cond, then, other = v["If"]
        assert cond == "SyncMode", v
        pick = then if mode == "sync" else other
        if isinstance(pick, dict):
            pick = pick["Sub"].replace("${LeaderLoadBalancer.DNSName}", "leader-0123.elb.us-east-1.amazonaws.com")
        chosen[name] = pick
    script = re.sub(r"\$\{([^}!]+)\}", lambda m: {**values, **chosen}[m.group(1)], sub)
    open(work + "/user-data-%s.sh" % mode, "w").write(script)
    subprocess.run(["bash", "-n", work + "/user-data-%s.sh" % mode], check=True)
    # the host.json it writes is JSON and every key is an option of cloister host
    host_json = script.split("cat >/etc/cloister/host.json <<EOF\n")[1].split("\nEOF\n")[0]
    settings = json.loads(host_json)
    for key in settings:
        assert "--" + key in help_text, "host.json key %r is not an option of cloister host" % key
    # the NLB's health check reaches the enclave's -health-listen (vsock 8444) through a ',health' forward;
    # the host drains the enclave (POST /enclave/drain) before it terminates it, within the NLB's detection
    assert "tcp:0.0.0.0:8444=vsock:16:8444,health" in settings["forward"], settings["forward"]
    assert settings["drain-url"] == "vsock:16:8444,/enclave/drain", settings
    # sync mode: the enclave on tap0, the instance's 444 published to its key-sync listener (the leader
    # dials workers there), the unit able to make the TAP device and the nftables table
    assert not any(":444=" in f for f in settings["forward"]), settings["forward"]
    assert settings.get("tap") == ("vsock:4294967295:1024" if mode == "sync" else None), settings
    assert settings.get("tap-forward") == (["444=444"] if mode == "sync" else None), settings
    assert any(o.startswith("vsock:3:8001=leader-0123.") for o in settings["outbound"]) == (mode == "sync")
    caps = re.search(r"^AmbientCapabilities=(.*)$", script, re.M).group(1).split()
    assert caps == (["CAP_NET_BIND_SERVICE", "CAP_NET_ADMIN"] if mode == "sync" else ["CAP_NET_BIND_SERVICE"]), caps
    assert ("dnf install -y aws-nitro-enclaves-cli nftables\n" in script) == (mode == "sync")
    commands += dist_commands.from_shell(script, "user data (%s)" % mode)
    commands += dist_commands.from_host_json(settings, "user data (%s)" % mode)
tg = res["TargetGroup"]["Properties"]
assert (tg["HealthCheckProtocol"], tg["HealthCheckPort"], tg["HealthCheckPath"]) == ("HTTP", "8444", "/enclave/health"), tg
# the enclave's grace covers the NLB's detection (interval x unhealthy threshold); deregistration the drain
assert tg["HealthCheckIntervalSeconds"] * tg["UnhealthyThresholdCount"] < 25, tg
assert int({a["Key"]: a["Value"] for a in tg["TargetGroupAttributes"]}["deregistration_delay.timeout_seconds"]) >= 55
# 444 (key sync, tap-forwarded to the enclave) open to the VPC in sync mode only
ingress = res["InstanceSecurityGroup"]["Properties"]["SecurityGroupIngress"]
assert not any(r["FromPort"] == 444 for r in ingress), ingress
sync_rule = res["SyncIngress"]
assert sync_rule["Condition"] == "SyncMode" and sync_rule["Properties"]["FromPort"] == 444, sync_rule
assert sync_rule["Properties"]["CidrIp"] == {"Ref": "VpcCidr"}, sync_rule
ltg = res["LeaderTargetGroup"]["Properties"]
assert {a["Key"]: a["Value"] for a in ltg["TargetGroupAttributes"]}["preserve_client_ip.enabled"] == "false"
assert len([c for c in commands if c["argv"][1:3] == ["host", "--config"]]) == 2, commands
unit = open(source + "/dist/systemd/cloister-host.service").read()
commands += dist_commands.from_shell(unit, "dist/systemd/cloister-host.service")
commands += dist_commands.from_host_json(json.load(open(source + "/dist/host.example.json")), "dist/host.example.json")
json.dump(commands, open(work + "/commands.json", "w"))
# the KMS key: Decrypt only with an attestation naming the stack's PCR0
statements = res["EnclaveKey"]["Properties"]["KeyPolicy"]["Statement"]
decrypting = [s for s in statements if "kms:Decrypt" in (s["Action"] if isinstance(s["Action"], list) else [s["Action"]])]
assert len(decrypting) == 1, decrypting
cond = decrypting[0]["Condition"]["StringEqualsIgnoreCase"]
assert cond == {"kms:RecipientAttestation:PCR0": {"If": ["Upgrading", [{"Ref": "Pcr0"}, {"Ref": "PreviousPcr0"}],
                                                          {"Ref": "Pcr0"}]}}, cond
assert t["Conditions"]["Upgrading"] == {"Not": [{"Equals": [{"Ref": "PreviousPcr0"}, ""]}]}
assert not any("kms:Decrypt" in s["Action"] for s in statements if s["Sid"] == "OperatorAdministers")
pattern = t["Parameters"]["Pcr0"]["AllowedPattern"]
assert re.fullmatch(pattern, pcr0) and re.fullmatch(pattern, "f" * 96)
assert not re.fullmatch(pattern, "0" * 96), "the debug-mode PCR0 (zeros) must not be accepted"
assert not re.fullmatch(pattern, "AB" * 48) and not re.fullmatch(pattern, "ab" * 47)
previous = t["Parameters"]["PreviousPcr0"]["AllowedPattern"]
assert re.fullmatch(previous, "") and re.fullmatch(previous, pcr0) and not re.fullmatch(previous, "0" * 96)
lt = res["LaunchTemplate"]["Properties"]["LaunchTemplateData"]
assert lt["EnclaveOptions"] == {"Enabled": True} and lt["MetadataOptions"]["HttpTokens"] == "required"
PY
pass "the user data is valid bash in both modes, its host.json uses only cloister host's options and forwards the health check, the NLB checks /enclave/health, the key opens only for the stack's PCR0s (never zeros)"

# the enclave's command line inside the image (scripts/image.sh, what `make image` runs), with
# stand-ins for AWS's blobs (only their bytes are packed)
mkdir -p "$work/blobs"
head -c 30000 /dev/urandom >"$work/blobs/bzImage"
head -c 3000 /dev/urandom >"$work/blobs/init"
head -c 3000 /dev/urandom >"$work/blobs/nsm.ko"
echo "reboot=k panic=30 console=ttyS0" >"$work/blobs/cmdline"
# docs/deploy-aws.md's make image line: its IMAGE_ARGS, with its files made here ($PWD = $work)
python3 - "$SOURCE_DIR/docs/deploy-aws.md" "$work" >"$work/image-args" <<'PY' || fail "docs/deploy-aws.md has no make image line"
import re, shlex, sys
sys.path.insert(0, sys.argv[1].rsplit("/docs/", 1)[0] + "/tests/integration")
import dist_commands
lines = [l for _, l in dist_commands.markdown_commands(open(sys.argv[1]).read()) if l.startswith("make image ")]
lines = [l for l in lines if "-fqdn-leader" not in l]  # kms mode's; sync mode's: sync_tap_fleet.sh
assert len(lines) == 1, lines
args = shlex.split(re.search(r'IMAGE_ARGS="([^"]*)"', lines[0]).group(1).replace("$PWD", sys.argv[2]))
print("\n".join(args))
PY
for f in tls-cert.pem tls-key.ct db.ct; do echo "$f" >"$work/$f"; done
mapfile -t image_args <"$work/image-args"
"$SOURCE_DIR/scripts/image.sh" --blobs "$work/blobs" --cloister "$CLOISTER" --out "$work/image" "${image_args[@]}" \
    >"$work/image.json" 2>"$work/image.err" || fail "scripts/image.sh failed: $(cat "$work/image.err")"
python3 - "$work" "$SOURCE_DIR" <<'PY' || fail "the image's enclave command is not the deployment's"
import json, sys
work, source = sys.argv[1:]
sys.path.insert(0, source + "/tests/integration")
import dist_commands
cmd = dist_commands.from_eif(work + "/image/cloister-hello.eif")
argv = cmd[0]["argv"]
def value(flag):
    return argv[argv.index(flag) + 1]
# what the host's forwards, health check and drain expect of the enclave
assert argv[1] == "enclave" and value("-fqdn") == "your.domain", argv
assert value("-listen") == "vsock:4294967295:443" and "-proxy-protocol" in argv, argv
assert value("-health-listen") == "vsock:4294967295:8444", argv
assert int(value("-drain-grace")) >= 25 and value("-kms-proxy") == "vsock:3:8000" and value("-kms-imds") == "vsock:3:8002"
for name in ("tls-cert.pem", "tls-key.ct", "db.ct"):
    assert open(work + "/image/rootfs/etc/cloister/" + name).read() == name + "\n", name
# the page shows the very command the image runs
doc = dist_commands.from_markdown(open(source + "/docs/deploy-aws.md").read(), "docs/deploy-aws.md")
shown = [c for c in doc if c["argv"][1] == "enclave" and "-fqdn-leader" not in c["argv"]]
assert len(shown) == 1 and shown[0]["argv"] == argv, (shown, argv)
commands = json.load(open(work + "/commands.json")) + cmd + doc
json.dump(commands, open(work + "/commands.json", "w"))
# the same checks must fail on a flag cloister does not have: the image's old -app-web-srv, a
# misspelt host.json key
broken = [dict(cmd[0], argv=[("-app-web-srv" if a == "-appwebsrv" else a) for a in argv])]
broken += dist_commands.from_host_json({"forward": "tcp:0.0.0.0:443=vsock:16:443", "drain-uri": "x"}, "broken")
json.dump(broken, open(work + "/broken.json", "w"))
PY
python3 "$SOURCE_DIR/tests/integration/dist_commands.py" check "$CLOISTER" "$work/commands.json" >"$work/check.txt" 2>&1 ||
    fail "a cloister command line in the recipe does not parse: $(grep PROBLEM "$work/check.txt" || cat "$work/check.txt")"
[ "$(grep -c '^checked' "$work/check.txt")" -ge 14 ] || fail "too few command lines found: $(cat "$work/check.txt")"
if python3 "$SOURCE_DIR/tests/integration/dist_commands.py" check "$CLOISTER" "$work/broken.json" >"$work/broken.txt" 2>&1; then
    fail "a command line with a flag cloister lacks passed the check: $(cat "$work/broken.txt")"
fi
grep -q "unknown option '-app-web-srv'" "$work/broken.txt" && grep -q 'cloister host has no option --drain-uri' "$work/broken.txt" ||
    fail "the check did not name the flags: $(cat "$work/broken.txt")"
pass "every cloister command line (user data, host.json, the unit, the image's enclave command, docs/deploy-aws.md) parses; a bad flag is caught"
