#!/usr/bin/env python3
"""Every `cloister ...` command line a deployment recipe runs, checked against cloister itself.

The recipes (dist/aws, dist/k8s, dist/systemd, the image's enclave command) are text that no
compiler reads, so a renamed or misspelt flag would only show on a real instance: the enclave
would refuse its command line and never come up.  Here each command line is found, then run as
`cloister ARGS... --help`: the options parser reads the arguments in order and stops with exit
status 2 at the first one the command does not have, before --help prints the usage (exit 0).
Independently, every flag-shaped argument must appear in that command's --help text.

Sources: shell text (a user data script, a systemd unit: `/usr/local/bin/cloister host ...`,
up to a pipe or the end of the line), a Markdown page's code blocks, a host.json (`cloister host --config`: each key is a long
option, turned into `--key value`), a Kubernetes container (`command` + `args`), and an EIF's
`cmd` file (what AWS's init runs in the enclave, one argument per line).

  dist_commands.py check CLOISTER COMMANDS.json   [{"where": ..., "argv": ["cloister", ...]}]
  exit 0 all parse; 1 a command does not (each problem named)
"""
import json
import os
import re
import shlex
import struct
import subprocess
import sys

# the recipes call cloister by its installed path (a bare "cloister" is prose in a comment or a name)
# where a command starts: a line's start, $(, ExecStart=, exec, or after ; && ||
CLOISTER_RE = re.compile(r"(?:^\s*|\$\(|ExecStart=|\bexec\s+|[;&|]\s*)(/usr/local/bin/cloister|/usr/bin/cloister)"
                         r"\s+(?=[a-z-])(.*)$")
FLAG_RE = re.compile(r"^--?[a-z][a-z0-9-]*$")
# cloister's commands that have subcommands: the words that select them come before the options
SUBCOMMANDS = {"host": {"vsock-proxy", "acm", "file-store"},
               "eif": {"build", "measure", "describe", "sign"}}


def from_shell(text, where):
    """cloister command lines in shell text (by its installed path): one per line, up to |, ;, &&,
    ) or a comment."""
    out = []
    for n, line in enumerate(text.splitlines(), 1):
        m = CLOISTER_RE.search(line)
        if not m or line.lstrip().startswith("#"):
            continue
        lexer = shlex.shlex(m.group(2), posix=True, punctuation_chars=True)
        lexer.whitespace_split = True
        lexer.commenters = "#"
        words = []
        try:
            for tok in lexer:
                if tok and all(c in "|;&()<>" for c in tok):
                    break
                words.append(tok)
        except ValueError as e:
            raise AssertionError("%s:%d: cannot split %r: %s" % (where, n, m.group(2), e))
        out.append({"where": "%s:%d" % (where, n), "argv": ["cloister"] + words})
    return out


def markdown_commands(text):
    """(line number, command text) of every command in a Markdown page's fenced code blocks,
    continuation lines joined."""
    out, fenced, pending, start = [], False, "", 0
    for n, line in enumerate(text.splitlines(), 1):
        if line.strip().startswith("```"):
            fenced, pending = not fenced, ""
            continue
        if not fenced:
            continue
        if not pending:
            start = n
        pending += line.strip()
        if pending.endswith("\\"):
            pending = pending[:-1] + " "
            continue
        out.append((start, pending))
        pending = ""
    return out


def from_markdown(text, where):
    """`cloister ...` lines of a Markdown page's code blocks (a page's commands, not its prose)."""
    out = []
    for n, line in markdown_commands(text):
        if line.startswith("cloister "):
            for c in from_shell("/usr/bin/" + line, where):
                out.append(dict(c, where="%s:%d" % (where, n)))
    return out


def from_host_json(settings, where):
    """`cloister host --config FILE` as the command line it stands for."""
    argv = ["cloister", "host"]
    for key, value in settings.items():
        for v in value if isinstance(value, list) else [value]:
            if v is True:
                argv.append("--" + key)
            elif v is False:
                argv.append("--" + key)  # present on the command line only to check the name
            else:
                argv += ["--" + key, str(v)]
    return [{"where": where + " (host.json)", "argv": argv}]


def from_container(container, where):
    words = list(container.get("command") or []) + list(container.get("args") or [])
    if not words or os.path.basename(words[0]) != "cloister":
        return []
    return [{"where": "%s container %s" % (where, container.get("name")), "argv": ["cloister"] + words[1:]}]


def from_eif(path):
    """The `cmd` file of an EIF's customer ramdisk: what init runs."""
    data = open(path, "rb").read()
    count = struct.unpack_from(">H", data, 26)[0]
    offsets = struct.unpack_from(">32Q", data, 28)
    for i in range(count):
        kind, _flags, size = struct.unpack_from(">HHQ", data, offsets[i])
        if kind != 3:
            continue
        blob = data[offsets[i] + 12:offsets[i] + 12 + size]
        pos = 0
        while blob[pos:pos + 6] == b"070701":
            fields = [int(blob[pos + 6 + 8 * k:pos + 14 + 8 * k], 16) for k in range(13)]
            namesize, filesize = fields[11], fields[6]
            name = blob[pos + 110:pos + 110 + namesize - 1].decode()
            pos = (pos + 110 + namesize + 3) & ~3
            body = blob[pos:pos + filesize]
            pos = (pos + filesize + 3) & ~3
            if name == "cmd":
                words = body.decode().split("\n")
                words = words[:-1] if words and words[-1] == "" else words
                assert os.path.basename(words[0]) == "cloister", "the image runs %r, not cloister" % words[0]
                return [{"where": path + " (cmd)", "argv": ["cloister"] + words[1:]}]
            if name == "TRAILER!!!":
                break
    raise AssertionError("%s: no cmd file in its ramdisks" % path)


def command_words(argv):
    """The leading words that name the (sub)command: ["host"], ["eif", "measure"]."""
    words = [argv[1]]
    if len(argv) > 2 and argv[1] in SUBCOMMANDS and argv[2] in SUBCOMMANDS[argv[1]]:
        words.append(argv[2])
    return words


def check(cloister, cmds):
    env = dict(os.environ, CLOISTER_NO_VSOCK="1")
    problems = []
    helps = {}
    for c in cmds:
        argv = c["argv"]
        words = command_words(argv)
        key = " ".join(words)
        if key not in helps:
            r = subprocess.run([cloister] + words + ["--help"], capture_output=True, text=True, timeout=10, env=env)
            if r.returncode != 0 or "usage:" not in r.stdout:
                problems.append("%s: `cloister %s` is not a command (%s)" % (c["where"], key, r.stderr.strip()))
                continue
            helps[key] = r.stdout
        text = helps[key]
        # the real parser: an unknown option stops it (exit 2) before --help is reached
        r = subprocess.run([cloister] + argv[1:] + ["--help"], capture_output=True, text=True, timeout=10, env=env)
        if r.returncode != 0 or "usage:" not in r.stdout:
            problems.append("%s: cloister %s refuses its command line: %s" %
                            (c["where"], key, (r.stderr.strip() or "exit %d" % r.returncode)))
        # and every flag-shaped word is in that command's --help
        for w in argv[1 + len(words):]:
            if not FLAG_RE.match(w):
                continue
            name = w.lstrip("-")
            if not re.search(r"(^|[\s,])--?%s\b(?!-)" % re.escape(name), text, re.M):
                problems.append("%s: cloister %s has no option %s" % (c["where"], key, w))
    return problems


def main():
    if len(sys.argv) != 4 or sys.argv[1] != "check":
        sys.exit(__doc__)
    cmds = json.load(open(sys.argv[3]))
    assert cmds, "no command lines found"
    problems = check(sys.argv[2], cmds)
    for c in cmds:
        print("checked %s: %s" % (c["where"], " ".join(shlex.quote(a) for a in c["argv"])))
    for p in problems:
        print("PROBLEM " + p)
    sys.exit(1 if problems else 0)


if __name__ == "__main__":
    main()
