#!/usr/bin/env bash
# dist/k8s: the Helm chart renders (tests/integration/helm_render.py, helm's semantics for
# the subset the chart uses) to exactly dist/k8s/cloister.yaml; every manifest, from the
# plain file and from the chart in both identity modes, validates against the Kubernetes
# schemas (kubernetes-models, npm, plus a check for misspelt field names) and a broken copy
# is refused; the pods ask for the Nitro Enclaves device and hugepages, are ready only while
# the health check says so and drain before they stop; the Service passes TCP through an NLB;
# the leader is one replica behind a headless Service; the host.json uses cloister's options.
set -euo pipefail
source "$(dirname "$0")/common.bash"
node_modules_present || { echo "skip: tests/node/node_modules is absent (run scripts/node-deps.sh)"; exit 77; }
chart="$SOURCE_DIR/dist/k8s/helm/cloister"
render() { python3 "$SOURCE_DIR/tests/integration/helm_render.py" "$chart" "$@"; }
to_json() { python3 -c 'import json,sys,yaml; json.dump([d for d in yaml.safe_load_all(open(sys.argv[1])) if d], open(sys.argv[2], "w"))' "$1" "$2"; }
validate() { to_json "$1" "$work/m.json" && node "$SOURCE_DIR/tests/node/validate_k8s.js" "$work/m.json" >"$work/v.txt" 2>&1; }

render >"$work/default.yaml"
diff <(grep -v '^#' "$SOURCE_DIR/dist/k8s/cloister.yaml") <(grep -v '^#' "$work/default.yaml") >"$work/diff.txt" ||
    fail "dist/k8s/cloister.yaml is not the chart's rendering (regenerate it, see its header): $(head -20 "$work/diff.txt")"
pass "dist/k8s/cloister.yaml is the Helm chart rendered with its defaults"

validate "$SOURCE_DIR/dist/k8s/cloister.yaml" || fail "the manifests are invalid: $(cat "$work/v.txt")"
render --release shop --namespace prod --set sync.enabled=false --set replicas=5 >"$work/kms.yaml"
validate "$work/kms.yaml" || fail "the chart without sync renders invalid manifests: $(cat "$work/v.txt")"
sed 's/periodSeconds: 5/periodSecond: 5/; s/protocol: TCP}/protocol: TCPX}/' "$SOURCE_DIR/dist/k8s/cloister.yaml" >"$work/broken.yaml"
if validate "$work/broken.yaml"; then fail "a broken copy validated: the check cannot fail"; fi
grep -q 'periodSecond' "$work/v.txt" && grep -q 'protocol must be equal to one of the allowed values' "$work/v.txt" ||
    fail "the validator did not name the problems: $(cat "$work/v.txt")"
pass "every manifest validates against the Kubernetes schemas (both identity modes); misspelt fields and bad enums are refused"

python3 - "$SOURCE_DIR/dist/k8s/cloister.yaml" "$work/kms.yaml" "$chart/Chart.yaml" "$CLOISTER" <<'PY' || fail "the manifests are not what the deployment needs"
import json, re, subprocess, sys, yaml
plain = [d for d in yaml.safe_load_all(open(sys.argv[1])) if d]
nosync = [d for d in yaml.safe_load_all(open(sys.argv[2])) if d]
chart = yaml.safe_load(open(sys.argv[3]))
by = {(d["kind"], d["metadata"]["name"]): d for d in plain}
for name in ("cloister", "cloister-leader"):
    pod = by[("Deployment", name)]["spec"]["template"]["spec"]
    c = pod["containers"][0]
    for kind in ("limits", "requests"):
        assert c["resources"][kind]["aws.ec2.nitro/nitro_enclaves"] == "1", name
        assert "hugepages-2Mi" in c["resources"][kind], name
    assert {"emptyDir": {"medium": "HugePages"}, "name": "hugepages"} in pod["volumes"]
    assert c["readinessProbe"]["httpGet"] == {"path": "/health", "port": "health"}
    assert "preStop" in c["lifecycle"] and pod["terminationGracePeriodSeconds"] >= 60
assert by[("Deployment", "cloister-leader")]["spec"]["replicas"] == 1
headless = by[("Service", "cloister-leader")]["spec"]
assert headless["clusterIP"] == "None" and headless["ports"][0]["port"] == 444
svc = by[("Service", "cloister")]
assert svc["spec"]["type"] == "LoadBalancer" and all(p["protocol"] == "TCP" for p in svc["spec"]["ports"])
assert svc["metadata"]["annotations"]["service.beta.kubernetes.io/aws-load-balancer-type"] == "external"
assert not any(d["metadata"]["name"].endswith("-leader") for d in nosync), "sync disabled still renders a leader"
assert by[("Deployment", "cloister")]["spec"]["strategy"]["rollingUpdate"]["maxUnavailable"] == 0
host = json.loads(by[("ConfigMap", "cloister-host")]["data"]["host.json"])
help_text = subprocess.run([sys.argv[4], "host", "--help"], capture_output=True, text=True).stdout
for key in host:
    assert "--" + key in help_text, "host.json key %r is not an option of cloister host" % key
assert "cloister-leader.default.svc.cluster.local:444" in host["outbound"][0]
assert chart["apiVersion"] == "v2" and re.fullmatch(r"\d+\.\d+\.\d+", chart["version"])
PY
pass "pods ask for the enclave device and hugepages, drain (readiness, preStop, grace), NLB TCP passthrough, headless one-replica leader"
