#!/usr/bin/env python3
"""What sync_tap_fleet.sh runs, taken from the deployment recipe itself, not retyped:

  fleet.py image-args DOC WORKDIR       the --add/--enclave-arg words of docs/deploy-aws.md's
                                        sync-mode `make image` line ($PWD = WORKDIR), one a line
  fleet.py host-json TEMPLATE NAME      the host.json dist/aws/cloister.yaml's user data writes in
                                        IdentityMode sync, the leader NLB's name being NAME
  fleet.py unit-caps TEMPLATE            the unit's AmbientCapabilities in sync mode, setpriv's way
  fleet.py enclave-argv EIF             the enclave's command inside the image, one word a line
  fleet.py shown DOC                    the sync-mode `cloister enclave` command the page shows, one
                                        word a line
"""
import json
import os
import re
import shlex
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import dist_commands  # noqa: E402


def image_args(doc, workdir):
    lines = [l for _, l in dist_commands.markdown_commands(open(doc).read())
             if l.startswith("make image ") and "-fqdn-leader" in l]
    assert len(lines) == 1, "docs/deploy-aws.md: %d sync-mode make image lines" % len(lines)
    words = shlex.split(re.search(r'IMAGE_ARGS="([^"]*)"', lines[0]).group(1).replace("$PWD", workdir))
    print("\n".join(words))


def user_data(template, leader_name):
    """The user data script in IdentityMode sync, substituted as CloudFormation would."""
    import yaml

    class Loader(yaml.SafeLoader):
        pass

    def tag(loader, suffix, node):
        value = (loader.construct_scalar(node) if isinstance(node, yaml.ScalarNode)
                 else loader.construct_sequence(node) if isinstance(node, yaml.SequenceNode)
                 else loader.construct_mapping(node))
        return {suffix: value}

    Loader.add_multi_constructor("!", tag)
    t = yaml.load(open(template), Loader=Loader)
    ud = t["Resources"]["LaunchTemplate"]["Properties"]["LaunchTemplateData"]["UserData"]["Fn::Base64"]["Fn::Sub"]
    sub, variables = ud
    values = {"EnclaveMemoryMiB": "2048", "EnclaveCpuCount": "2", "AWS::Region": "us-east-1"}
    for name, v in variables.items():
        cond, then, _other = v["If"]
        assert cond == "SyncMode", v
        if isinstance(then, dict):
            then = then["Sub"].replace("${LeaderLoadBalancer.DNSName}", leader_name)
        values[name] = then
    return re.sub(r"\$\{([^}!]+)\}", lambda m: values.get(m.group(1), m.group(0)), sub)


def host_json(template, leader_name):
    text = user_data(template, leader_name).split("cat >/etc/cloister/host.json <<EOF\n")[1].split("\nEOF\n")[0]
    print(json.dumps(json.loads(text), indent=2))


def unit_caps(template):
    """The capabilities the unit gives cloister host in sync mode, as setpriv's list: +net_admin,..."""
    caps = re.search(r"^AmbientCapabilities=(.*)$", user_data(template, "x"), re.M).group(1).split()
    print(",".join("+" + c.lower().replace("cap_", "", 1) for c in caps))


def enclave_argv(eif):
    print("\n".join(dist_commands.from_eif(eif)[0]["argv"][1:]))


def shown(doc):
    cmds = [c for c in dist_commands.from_markdown(open(doc).read(), doc)
            if c["argv"][1] == "enclave" and "-fqdn-leader" in c["argv"]]
    assert len(cmds) == 1, "docs/deploy-aws.md shows %d sync-mode enclave commands" % len(cmds)
    print("\n".join(cmds[0]["argv"][1:]))


if __name__ == "__main__":
    {"image-args": lambda: image_args(*sys.argv[2:4]), "host-json": lambda: host_json(*sys.argv[2:4]),
     "enclave-argv": lambda: enclave_argv(sys.argv[2]), "shown": lambda: shown(sys.argv[2]),
     "unit-caps": lambda: unit_caps(sys.argv[2])}[sys.argv[1]]()
