#!/usr/bin/env python3
"""Checks the import graph of src/: no circle between modules, and no arrow pointing up the layers.

A module is a file under src/ (src/actors/index.rs and src/actors/index/*.rs are `actors::index`).
An arrow A -> B is a `crate::b::...` or `super::b` path in A. Layers, lowest first (a module may use
its own layer and those below it):
  core; config; fs, store, net; actors, pull, index; api; status, versions, oneway; node; cli; main
(`pull`, the I/O of one pull, sends the actors' messages and is used by the Puller only; `index`,
the Index's store views and scan job, uses no actor and is used by the Index only.)
Usage: scripts/layers.py [--graph]   (exit status 1 on a circle or an upward arrow)
"""
import pathlib
import re
import sys

LAYERS = [["core"], ["config"], ["fs", "store", "net"], ["actors", "pull", "index"], ["api"],
          ["status", "versions", "oneway"], ["node"], ["cli"], ["main", "lib"]]
RANK = {name: i for i, names in enumerate(LAYERS) for name in names}
SRC = pathlib.Path(__file__).resolve().parent.parent / "src"


def module_of(path: pathlib.Path) -> tuple:
    parts = list(path.relative_to(SRC).with_suffix("").parts)
    if parts[-1] == "mod":
        parts.pop()
    return tuple(parts[:2])  # top-level module and, inside it, the file (submodules fold in)


def arrows():
    edges = {}
    for f in sorted(SRC.rglob("*.rs")):
        if f.name == "tests.rs":
            continue  # a module's tests, kept in their own file, may use anything
        src = module_of(f)
        text = f.read_text()
        # Test modules may use anything.
        text = text.split("#[cfg(test)]\nmod tests")[0]
        targets = set()
        for m in re.finditer(r"crate::([a-z_]+)(?:::([a-z_]+))?", text):
            top, sub = m.group(1), m.group(2)
            targets.add((top, sub) if sub and (SRC / top / f"{sub}.rs").exists() or
                        sub and (SRC / top / sub).is_dir() else (top,))
        if len(src) == 2:  # super:: inside src/<top>/<file>.rs (or its folder)
            for m in re.finditer(r"super::([a-z_]+)", text):
                sub = m.group(1)
                if (SRC / src[0] / f"{sub}.rs").exists() or (SRC / src[0] / sub).is_dir():
                    targets.add((src[0], sub))
        edges.setdefault(src, set()).update(t for t in targets if t != src and t[:len(src)] != src)
    return edges


def cycles(edges):
    index, low, stack, on, out, counter = {}, {}, [], set(), [], [0]

    def visit(v):
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in edges.get(v, ()):
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
    for v in list(edges):
        if v not in index:
            visit(v)
    return out


def main():
    edges = arrows()
    name = lambda m: "::".join(m)
    if "--graph" in sys.argv:
        for src in sorted(edges):
            print(f"{name(src)} -> {', '.join(sorted(map(name, edges[src])))}")
    bad = 0
    for comp in cycles(edges):
        print("circle: " + " <-> ".join(map(name, comp)))
        bad += 1
    for src, targets in sorted(edges.items()):
        for t in sorted(targets):
            if src[0] != t[0] and RANK.get(t[0], -1) > RANK.get(src[0], 99):
                print(f"upward arrow: {name(src)} -> {name(t)}")
                bad += 1
    if bad:
        sys.exit(1)
    print(f"layers: {len(edges)} modules, no circle, no upward arrow")


main()
