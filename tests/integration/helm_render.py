#!/usr/bin/env python3
"""Renders dist/k8s/helm/cloister the way `helm template` does, for the subset of Go
templates the chart uses (and nothing more, so that the chart stays renderable by this
stand-in): {{ .Values.a.b }}, {{ .Release.Name }}, {{ .Release.Namespace }},
{{ X | quote }}, {{- if .Values.x }} ... {{- end }}, and "{{-" / "-}}" trimming.  Anything
else in a template is an error.  Helm is not packaged for Debian; the chart is plain Helm,
so `helm template` renders it the same way.

usage: helm_render.py CHART_DIR [--release NAME] [--namespace NS] [--set key.path=value]...
Prints the manifests, one YAML document per template document, in template-name order."""
import os
import re
import sys

import yaml


def lookup(path, ctx):
    node = ctx
    for part in path.strip(".").split("."):
        if not isinstance(node, dict) or part not in node:
            raise SystemExit("helm_render: no value for .%s" % path.strip("."))
        node = node[part]
    return node


def value_of(expr, ctx):
    expr = expr.strip()
    pipes = [p.strip() for p in expr.split("|")]
    head = pipes[0]
    if not re.fullmatch(r"\.(Values|Release)(\.[A-Za-z0-9_]+)+", head):
        raise SystemExit("helm_render: unsupported expression {{ %s }}" % expr)
    v = lookup(head, ctx)
    for p in pipes[1:]:
        if p != "quote":
            raise SystemExit("helm_render: unsupported function %s" % p)
        v = '"%s"' % str(v).replace("\\", "\\\\").replace('"', '\\"')
    if isinstance(v, bool):
        return "true" if v else "false"
    return str(v)


def render(text, ctx):
    out, pos, stack = [], 0, []
    for m in re.finditer(r"\{\{(-?)\s*(.*?)\s*(-?)\}\}", text, re.S):
        chunk = text[pos:m.start()]
        if m.group(1):
            chunk = chunk.rstrip(" \t\n")
        if all(stack):
            out.append(chunk)
        body = m.group(2)
        if body.startswith("if "):
            stack.append(all(stack) and bool(lookup(body[3:].strip(), ctx)))
        elif body == "end":
            if not stack:
                raise SystemExit("helm_render: end without if")
            stack.pop()
        elif body.startswith("/*"):
            pass
        elif all(stack):
            out.append(value_of(body, ctx))
        pos = m.end()
        if m.group(3):
            rest = text[pos:]
            pos += len(rest) - len(rest.lstrip(" \t\n"))
    if stack:
        raise SystemExit("helm_render: if without end")
    out.append(text[pos:])
    return "".join(out)


def main():
    args = sys.argv[1:]
    chart = args[0]
    release, namespace, sets = "cloister", "default", []
    i = 1
    while i < len(args):
        if args[i] == "--release":
            release = args[i + 1]
        elif args[i] == "--namespace":
            namespace = args[i + 1]
        elif args[i] == "--set":
            sets.append(args[i + 1])
        else:
            raise SystemExit("helm_render: unknown argument " + args[i])
        i += 2
    values = yaml.safe_load(open(os.path.join(chart, "values.yaml")))
    for s in sets:
        key, _, raw = s.partition("=")
        node = values
        parts = key.split(".")
        for p in parts[:-1]:
            node = node.setdefault(p, {})
        node[parts[-1]] = yaml.safe_load(raw)
    ctx = {"Values": values, "Release": {"Name": release, "Namespace": namespace}}
    docs = []
    tdir = os.path.join(chart, "templates")
    for name in sorted(os.listdir(tdir)):
        if not name.endswith(".yaml"):
            continue
        rendered = render(open(os.path.join(tdir, name)).read(), ctx)
        for doc in re.split(r"^---\s*$", rendered, flags=re.M):
            if yaml.safe_load(doc) is not None:
                docs.append("# Source: cloister/templates/%s\n%s" % (name, doc.strip("\n")))
    print("---\n" + "\n---\n".join(docs))


if __name__ == "__main__":
    main()
