#!/usr/bin/env bash
# dist/aws/cloister.yaml: valid for cfn-lint (npm; every resource, property, type, reference
# and intrinsic checked against AWS's CloudFormation resource specification), and the linter
# is seen to refuse a broken copy; the instances' user data is valid bash once CloudFormation
# has substituted it; the host.json it writes uses only options `cloister host` has; the KMS
# key opens only for the stack's PCR0, which may never be the debug-mode zeros.
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

python3 - "$template" "$work" "$CLOISTER" "$pcr0" <<'PY' || fail "the template's contents are not as they must be"
import json, re, subprocess, sys, yaml
template, work, cloister, pcr0 = sys.argv[1:]
class Loader(yaml.SafeLoader): pass
def tag(loader, suffix, node):
    value = (loader.construct_scalar(node) if isinstance(node, yaml.ScalarNode)
             else loader.construct_sequence(node) if isinstance(node, yaml.SequenceNode) else loader.construct_mapping(node))
    return {suffix: value}
Loader.add_multi_constructor("!", tag)
t = yaml.load(open(template), Loader=Loader)
res = t["Resources"]
# the user data, substituted as CloudFormation would, is valid bash
sub = res["LaunchTemplate"]["Properties"]["LaunchTemplateData"]["UserData"]["Fn::Base64"]["Sub"]
values = {"EnclaveMemoryMiB": "2048", "EnclaveCpuCount": "2", "ArtifactBucket": "b", "CloisterKey": "cloister/cloister",
          "EifKey": "cloister/app.eif", "Pcr0": pcr0, "AWS::Region": "us-east-1", "DomainName": "enclave.example.com",
          "AWS::StackName": "s"}
unknown = set(re.findall(r"\$\{([^}!]+)\}", sub)) - set(values)
assert not unknown, "user data names unknown parameters: %s" % unknown
script = re.sub(r"\$\{([^}!]+)\}", lambda m: values[m.group(1)], sub)
open(work + "/user-data.sh", "w").write(script)
subprocess.run(["bash", "-n", work + "/user-data.sh"], check=True)
# the host.json it writes is JSON and every key is an option of cloister host
host_json = script.split("cat >/etc/cloister/host.json <<EOF\n")[1].split("\nEOF\n")[0]
settings = json.loads(host_json)
help_text = subprocess.run([cloister, "host", "--help"], capture_output=True, text=True).stdout
for key in settings:
    assert "--" + key in help_text, "host.json key %r is not an option of cloister host" % key
# the KMS key: Decrypt only with an attestation naming the stack's PCR0
statements = res["EnclaveKey"]["Properties"]["KeyPolicy"]["Statement"]
decrypting = [s for s in statements if "kms:Decrypt" in (s["Action"] if isinstance(s["Action"], list) else [s["Action"]])]
assert len(decrypting) == 1, decrypting
cond = decrypting[0]["Condition"]["StringEqualsIgnoreCase"]
assert cond == {"kms:RecipientAttestation:PCR0": {"Ref": "Pcr0"}}, cond
assert not any("kms:Decrypt" in s["Action"] for s in statements if s["Sid"] == "OperatorAdministers")
pattern = t["Parameters"]["Pcr0"]["AllowedPattern"]
assert re.fullmatch(pattern, pcr0) and re.fullmatch(pattern, "f" * 96)
assert not re.fullmatch(pattern, "0" * 96), "the debug-mode PCR0 (zeros) must not be accepted"
assert not re.fullmatch(pattern, "AB" * 48) and not re.fullmatch(pattern, "ab" * 47)
lt = res["LaunchTemplate"]["Properties"]["LaunchTemplateData"]
assert lt["EnclaveOptions"] == {"Enabled": True} and lt["MetadataOptions"]["HttpTokens"] == "required"
PY
pass "the user data is valid bash, its host.json uses only cloister host's options, the key opens only for the stack's PCR0 (never zeros)"
