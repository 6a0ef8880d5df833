#!/usr/bin/env python3
"""The house rules of lib/, checked from the built objects and the sources.

  zones    an enclave- or core-zone object never needs a symbol that only
           host- or sim-zone objects define (nm on the built objects)
  cycles   no two files of lib/ depend on each other, directly or through
           others: neither by symbols (nm) nor by includes
  exports  libcloister.so exports only cl_* symbols, and every public
           header sets default visibility for its declarations
  private  src/ includes no lib-private header

usage: check_layers.py BUILD_DIR SOURCE_DIR [zones|cycles|exports|private]...
"""
import os
import re
import subprocess
import sys

ZONES = ("core", "enclave", "host", "sim")
MAY_NEED = {"core": {"core"}, "enclave": {"core", "enclave"},
            "host": set(ZONES), "sim": set(ZONES)}


def objects(build):
    """{object path: zone} of the zone object libraries."""
    found = {}
    for zone in ZONES:
        top = os.path.join(build, "CMakeFiles", f"cloister_{zone}.dir")
        for root, _, files in os.walk(top):
            for name in files:
                if name.endswith(".o"):
                    found[os.path.join(root, name)] = zone
    if not found:
        sys.exit(f"no zone objects under {build}/CMakeFiles: build first")
    return found


def symbols(path):
    out = subprocess.run(["nm", path], check=True, capture_output=True, text=True).stdout
    defined, undefined = set(), set()
    for line in out.splitlines():
        parts = line.split()
        if len(parts) == 2 and parts[0] == "U":
            undefined.add(parts[1])
        elif len(parts) == 3 and parts[1] in "TDBRVWC" and parts[1].isupper():
            defined.add(parts[2])
    return defined, undefined


def unit_name(path, source):
    m = re.search(r"/lib/(\w+)/([\w.]+)\.o$", path)
    return f"lib/{m.group(1)}/{m.group(2)}" if m else os.path.relpath(path, source)


def sccs(graph):
    """Tarjan's strongly connected components of more than one node."""
    index, low, stack, on, out, counter = {}, {}, [], set(), [], [0]

    def visit(v):
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in sorted(graph.get(v, ())):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    sys.setrecursionlimit(10000)
    for v in sorted(graph):
        if v not in index:
            visit(v)
    return out


def check_zones_and_cycles(build, source, which):
    objs = objects(build)
    table = {p: symbols(p) for p in objs}
    owners = {}
    for path, (defined, _) in table.items():
        for sym in defined:
            owners.setdefault(sym, set()).add(path)
    failures = []
    graph = {}
    for path, (_, undefined) in table.items():
        me = unit_name(path, source)
        for sym in sorted(undefined):
            where = owners.get(sym, set())
            if not where:
                continue  # a system library's symbol
            zones = {objs[p] for p in where}
            if "zones" in which and not zones & MAY_NEED[objs[path]]:
                failures.append(f"zones: {me} ({objs[path]}) needs {sym}, defined only in "
                                + ", ".join(sorted(unit_name(p, source) for p in where)))
            for p in where:
                if p != path:
                    graph.setdefault(me, set()).add(unit_name(p, source))
    if "cycles" in which:
        for comp in sccs(graph):
            failures.append("cycles: these files need each other's symbols in a loop: " + " <-> ".join(comp))
        failures += include_cycles(source)
    return failures


def include_cycles(source):
    graph = {}
    files = []
    for top in ("lib", "include"):
        for root, _, names in os.walk(os.path.join(source, top)):
            files += [os.path.join(root, n) for n in names if n.endswith((".c", ".h"))]
    by_rel = {os.path.relpath(f, source): f for f in files}

    def resolve(inc, here):
        for cand in (os.path.join(os.path.dirname(here), inc), os.path.join("include", inc), os.path.join("lib", inc)):
            cand = os.path.normpath(cand)
            if cand in by_rel:
                return cand
        return None

    for rel, path in by_rel.items():
        with open(path, encoding="utf-8") as fh:
            for inc in re.findall(r'^\s*#\s*include\s+"([^"]+)"', fh.read(), re.M):
                target = resolve(inc, rel)
                if target:
                    graph.setdefault(rel, set()).add(target)
    return ["cycles: these files include each other in a loop: " + " <-> ".join(c) for c in sccs(graph)]


def check_exports(build, source):
    failures = []
    lib = os.path.join(build, "libcloister.so")
    out = subprocess.run(["nm", "-D", "--defined-only", lib], check=True, capture_output=True, text=True).stdout
    names = [line.split()[-1] for line in out.splitlines() if line.strip()]
    if not names:
        failures.append("exports: libcloister.so exports nothing")
    failures += [f"exports: libcloister.so exports {n}, not a cl_* symbol" for n in names if not n.startswith("cl_")]
    for root, _, files in os.walk(os.path.join(source, "include", "cloister")):
        for name in files:
            text = open(os.path.join(root, name), encoding="utf-8").read()
            if "#pragma GCC visibility push(default)" not in text or "#pragma GCC visibility pop" not in text:
                failures.append(f"exports: {os.path.relpath(os.path.join(root, name), source)} does not set default visibility")
    return failures


def check_private(source):
    failures = []
    private = set()
    for zone in ZONES:
        d = os.path.join(source, "lib", zone)
        if os.path.isdir(d):
            private |= {f"{zone}/{n}" for n in os.listdir(d) if n.endswith(".h")}
    for root, _, files in os.walk(os.path.join(source, "src")):
        for name in files:
            text = open(os.path.join(root, name), encoding="utf-8").read()
            for inc in re.findall(r'^\s*#\s*include\s+"([^"]+)"', text, re.M):
                if inc in private:
                    failures.append(f"private: src/{name} includes the lib-private header lib/{inc}")
    return failures


def main():
    if len(sys.argv) < 3:
        sys.exit(__doc__)
    build, source = sys.argv[1], sys.argv[2]
    which = set(sys.argv[3:]) or {"zones", "cycles", "exports", "private"}
    failures = []
    if which & {"zones", "cycles"}:
        failures += check_zones_and_cycles(build, source, which)
    if "exports" in which:
        failures += check_exports(build, source)
    if "private" in which:
        failures += check_private(source)
    for f in failures:
        print("FAIL", f)
    print(f"{len(which)} checks ({', '.join(sorted(which))}): {len(failures)} failures")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
