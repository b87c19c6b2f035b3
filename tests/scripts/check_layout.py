#!/usr/bin/env python3
"""The house rules of docs/architecture.md that a machine can check.

    check_layout.py SOURCE_DIR OBJECT_DIR

1. No cycle between the library's source files: file A depends on file B when A's object
   uses a symbol B's object defines (read with `nm` from OBJECT_DIR, the object files of
   the library target). A cycle means some lower layer calls up into a higher one.
2. No layer calls a layer above it: a file of src/<layer>/ may use only its own layer and
   the layers listed below it in LAYERS.
3. No file of src/, cl/ or include/ is longer than MAX_LINES lines.

Each finding is printed on a line of its own; the exit status is 1 when there is any.
"""
import os
import subprocess
import sys

MAX_LINES = 600

# Each layer and the layers it may use (besides itself). core is the bottom.
LAYERS = {
    "core": [],
    "tuning": ["core"],
    "paths": ["tuning", "core"],
    "backward": ["paths", "tuning", "core"],
    "api": ["backward", "paths", "tuning", "core"],
    "kv": ["api", "paths", "tuning", "core"],
    "reference": ["backward", "core"],
}


def read_objects(src_dir, obj_dir):
    """{source file relative to src/: (defined symbols, undefined symbols)}. An object
    whose source is gone (a build folder from before a file moved) is left out."""
    out = {}
    for root, _, files in os.walk(obj_dir):
        for f in files:
            if not f.endswith(".c.o") or f.startswith("kernel_sources"):
                continue
            path = os.path.join(root, f)
            rel = os.path.relpath(path, obj_dir)
            rel = rel.split("src" + os.sep, 1)[-1][: -len(".o")]
            if not os.path.isfile(os.path.join(src_dir, "src", rel)):
                continue
            text = subprocess.run(["nm", path], capture_output=True, text=True,
                                  check=True).stdout
            defined, undefined = set(), set()
            for line in text.splitlines():
                parts = line.split()
                if len(parts) == 3 and parts[1] in "TDBRC":
                    defined.add(parts[2])
                elif len(parts) == 2 and parts[0] == "U":
                    undefined.add(parts[1])
            out[rel] = (defined, undefined)
    return out


def dependency_graph(objects):
    owner = {}
    for name, (defined, _) in objects.items():
        for sym in defined:
            owner[sym] = name
    graph = {}
    for name, (_, undefined) in objects.items():
        graph[name] = {}
        for sym in undefined:
            dep = owner.get(sym)
            if dep and dep != name:
                graph[name].setdefault(dep, []).append(sym)
    return graph


def cycles(graph):
    """Strongly connected components of more than one file (Tarjan, iterative)."""
    index, low, stack, on_stack, found = {}, {}, [], set(), []
    counter = 0
    for root in sorted(graph):
        if root in index:
            continue
        work = [(root, iter(sorted(graph[root])))]
        index[root] = low[root] = counter
        counter += 1
        stack.append(root)
        on_stack.add(root)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is not None:
                if child not in index:
                    index[child] = low[child] = counter
                    counter += 1
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted(graph[child]))))
                elif child in on_stack:
                    low[node] = min(low[node], index[child])
                continue
            work.pop()
            if work:
                parent = work[-1][0]
                low[parent] = min(low[parent], low[node])
            if low[node] == index[node]:
                comp = []
                while True:
                    w = stack.pop()
                    on_stack.discard(w)
                    comp.append(w)
                    if w == node:
                        break
                if len(comp) > 1:
                    found.append(sorted(comp))
    return found


def main():
    if len(sys.argv) != 3:
        sys.exit(__doc__)
    src_dir, obj_dir = sys.argv[1], sys.argv[2]
    problems = []
    objects = read_objects(src_dir, obj_dir)
    if not objects:
        sys.exit("check_layout: no object files under " + obj_dir)
    graph = dependency_graph(objects)
    for comp in cycles(graph):
        problems.append("cycle between " + ", ".join(comp))
        for a in comp:
            for b, syms in sorted(graph[a].items()):
                if b in comp:
                    problems.append("    %s -> %s (%s)" % (a, b, ", ".join(sorted(syms)[:4])))
    for a, deps in sorted(graph.items()):
        la = a.split("/")[0]
        if la not in LAYERS:
            problems.append("%s: not in a known layer (%s)" % (a, ", ".join(LAYERS)))
            continue
        for b, syms in sorted(deps.items()):
            lb = b.split("/")[0]
            if lb != la and lb not in LAYERS[la]:
                problems.append("%s (layer %s) calls up into %s (layer %s): %s"
                                % (a, la, b, lb, ", ".join(sorted(syms)[:4])))
    for top in ("src", "cl", "include"):
        for root, _, files in os.walk(os.path.join(src_dir, top)):
            for f in sorted(files):
                if not f.endswith((".c", ".h", ".cl")):
                    continue
                path = os.path.join(root, f)
                with open(path, encoding="utf-8") as fh:
                    n = sum(1 for _ in fh)
                if n > MAX_LINES:
                    problems.append("%s: %d lines (at most %d)"
                                    % (os.path.relpath(path, src_dir), n, MAX_LINES))
    for p in problems:
        print(p)
    print("check_layout: %d files, %d findings" % (len(objects), len(problems)))
    sys.exit(1 if problems else 0)


if __name__ == "__main__":
    main()
