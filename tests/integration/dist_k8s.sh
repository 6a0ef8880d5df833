#!/usr/bin/env bash
# dist/k8s: the Helm chart renders (tests/integration/helm_render.py, helm's semantics for
# the subset the chart uses) to exactly dist/k8s/cloister.yaml; every manifest, from the
# plain file and from the chart in both identity modes, validates against the Kubernetes
# schemas (kubernetes-models, npm, plus a check for misspelt field names) and a broken copy
# is refused; the pods ask for the Nitro Enclaves device and hugepages, are ready only while
# the health check says so and drain before they stop; the Service passes TCP through an NLB;
# the leader is one replica behind a ClusterIP Service; sync mode puts the enclave on tap0 (NET_ADMIN,
# /dev/net/tun, the sync port a hostPort); the host.json uses cloister's options.
# The readiness probe and the NLB's check hit the enclave's /enclave/health through the host's
# ',health' forward, preStop drains (SIGTERM to cloister host), and every cloister command line
# (the containers' command, host.json as `cloister host` options) parses with cloister's own
# options parser (tests/integration/dist_commands.py; a misspelt flag is caught).
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
render --release shop --namespace prod --set sync.enabled=true --set replicas=5 >"$work/sync.yaml"
validate "$work/sync.yaml" || fail "the chart with sync renders invalid manifests: $(cat "$work/v.txt")"
sed 's/periodSeconds: 5/periodSecond: 5/; s/protocol: TCP}/protocol: TCPX}/' "$SOURCE_DIR/dist/k8s/cloister.yaml" >"$work/broken.yaml"
if validate "$work/broken.yaml"; then fail "a broken copy validated: the check cannot fail"; fi
grep -q 'periodSecond' "$work/v.txt" && grep -q 'protocol must be equal to one of the allowed values' "$work/v.txt" ||
    fail "the validator did not name the problems: $(cat "$work/v.txt")"
pass "every manifest validates against the Kubernetes schemas (both identity modes); misspelt fields and bad enums are refused"

python3 - "$SOURCE_DIR/dist/k8s/cloister.yaml" "$work/sync.yaml" "$chart/Chart.yaml" "$CLOISTER" "$work" "$SOURCE_DIR" <<'PY' || fail "the manifests are not what the deployment needs"
import json, re, subprocess, sys, yaml
sys.path.insert(0, sys.argv[6] + "/tests/integration")
import dist_commands
plain = [d for d in yaml.safe_load_all(open(sys.argv[1])) if d]
synced = [d for d in yaml.safe_load_all(open(sys.argv[2])) if d]
chart = yaml.safe_load(open(sys.argv[3]))
help_text = subprocess.run([sys.argv[4], "host", "--help"], capture_output=True, text=True).stdout
commands = []
by = {(d["kind"], d["metadata"]["name"]): d for d in plain}
sby = {(d["kind"], d["metadata"]["name"]): d for d in synced}
assert not any(d["metadata"]["name"].endswith("-leader") for d in plain), "sync is off by default: no leader"
for where, deployment in (("default", by[("Deployment", "cloister")]), ("sync", sby[("Deployment", "shop")]),
                          ("sync leader", sby[("Deployment", "shop-leader")])):
    pod = deployment["spec"]["template"]["spec"]
    c = pod["containers"][0]
    for kind in ("limits", "requests"):
        assert c["resources"][kind]["aws.ec2.nitro/nitro_enclaves"] == "1", where
        assert "hugepages-2Mi" in c["resources"][kind], where
    assert {"emptyDir": {"medium": "HugePages"}, "name": "hugepages"} in pod["volumes"]
    # readiness is the enclave's health endpoint through the host's health forward (port "health")
    assert c["readinessProbe"]["httpGet"] == {"path": "/enclave/health", "port": "health"}, where
    health_port = [p["containerPort"] for p in c["ports"] if p["name"] == "health"][0]
    # preStop drains: SIGTERM to cloister host (the container's PID 1, its command) and wait for it
    hook = " ".join(c["lifecycle"]["preStop"]["exec"]["command"])
    assert "kill -TERM 1" in hook and "while kill -0 1" in hook, hook
    assert pod["terminationGracePeriodSeconds"] >= 25 + 30 + 10, where
    commands += dist_commands.from_container(c, "%s deployment" % where)
for where, docs, release, ns in (("default", by, "cloister", "default"), ("sync", sby, "shop", "prod")):
    host = json.loads(docs[("ConfigMap", release + "-host")]["data"]["host.json"])
    for key in host:
        assert "--" + key in help_text, "host.json key %r is not an option of cloister host" % key
    assert "tcp:0.0.0.0:%d=vsock:16:8444,health" % health_port in host["forward"], host["forward"]
    assert host["drain-url"] == "vsock:16:8444,/enclave/drain" and host["drain-grace"] == "25s", host
    assert host["outbound"][0] == "vsock:3:8000=kms.us-east-1.amazonaws.com:443", host["outbound"]
    assert (("vsock:3:8001=%s-leader.%s.svc.cluster.local:444" % (release, ns)) in host["outbound"]) == (where == "sync")
    # sync: the enclave on tap0, the pod's 444 published to its key-sync listener
    assert not any(":444=" in f for f in host["forward"]), host["forward"]
    assert host.get("tap") == ("vsock:4294967295:1024" if where == "sync" else None), host
    assert host.get("tap-forward") == (["444=444"] if where == "sync" else None), host
    commands += dist_commands.from_host_json(host, "%s ConfigMap" % where)
assert sby[("Deployment", "shop-leader")]["spec"]["replicas"] == 1
leader_svc = sby[("Service", "shop-leader")]["spec"]
assert leader_svc["type"] == "ClusterIP" and "clusterIP" not in leader_svc and leader_svc["ports"][0]["port"] == 444
# sync: NET_ADMIN and /dev/net/tun for the TAP device, the sync port on the node (a hostPort), only then
for where, docs, name in (("default", by, "cloister"), ("sync", sby, "shop"), ("sync leader", sby, "shop-leader")):
    pod = docs[("Deployment", name)]["spec"]["template"]["spec"]
    c = pod["containers"][0]
    synced_pod = where != "default"
    assert ("NET_ADMIN" in c["securityContext"]["capabilities"]["add"]) == synced_pod, where
    assert any(v.get("hostPath", {}).get("path") == "/dev/net/tun" for v in pod["volumes"]) == synced_pod, where
    sync_port = [p for p in c["ports"] if p["name"] == "sync"][0]
    assert sync_port.get("hostPort") == (444 if synced_pod else None), (where, sync_port)
svc = by[("Service", "cloister")]
assert svc["spec"]["type"] == "LoadBalancer" and all(p["protocol"] == "TCP" for p in svc["spec"]["ports"])
notes = svc["metadata"]["annotations"]
assert notes["service.beta.kubernetes.io/aws-load-balancer-type"] == "external"
assert notes["service.beta.kubernetes.io/aws-load-balancer-healthcheck-path"] == "/enclave/health"
assert notes["service.beta.kubernetes.io/aws-load-balancer-healthcheck-port"] == str(health_port)
assert notes["service.beta.kubernetes.io/aws-load-balancer-healthcheck-protocol"] == "http"
assert by[("Deployment", "cloister")]["spec"]["strategy"]["rollingUpdate"]["maxUnavailable"] == 0
assert chart["apiVersion"] == "v2" and re.fullmatch(r"\d+\.\d+\.\d+", chart["version"])
json.dump(commands, open(sys.argv[5] + "/commands.json", "w"))
broken = [dict(commands[0], argv=commands[0]["argv"] + ["--config-file", "x"])]
broken += dist_commands.from_host_json({"forward": "tcp:0.0.0.0:443=vsock:16:443", "drain-grase": "5s"}, "broken")
json.dump(broken, open(sys.argv[5] + "/broken.json", "w"))
PY
pass "pods ask for the enclave device and hugepages; readiness and the NLB check /enclave/health through the ',health' forward; preStop drains; one-replica leader behind a ClusterIP, the enclave on tap0 (NET_ADMIN, /dev/net/tun, hostPort 444) with sync"

python3 "$SOURCE_DIR/tests/integration/dist_commands.py" check "$CLOISTER" "$work/commands.json" >"$work/check.txt" 2>&1 ||
    fail "a cloister command line in the chart does not parse: $(grep PROBLEM "$work/check.txt" || cat "$work/check.txt")"
[ "$(grep -c '^checked' "$work/check.txt")" -ge 5 ] || fail "too few command lines found: $(cat "$work/check.txt")"
if python3 "$SOURCE_DIR/tests/integration/dist_commands.py" check "$CLOISTER" "$work/broken.json" >"$work/broken.txt" 2>&1; then
    fail "a command line with a flag cloister lacks passed the check: $(cat "$work/broken.txt")"
fi
grep -q "unknown option '--config-file'" "$work/broken.txt" && grep -q 'cloister host has no option --drain-grase' "$work/broken.txt" ||
    fail "the check did not name the flags: $(cat "$work/broken.txt")"
pass "every cloister command line of the chart (containers, host.json) parses; a bad flag is caught"
