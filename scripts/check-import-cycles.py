#!/usr/bin/env python3
"""List the import cycles between the modules of monitor/src; exit 1 if there is any.

A file is a module (`a/mod.rs` and `a.rs` are module `a`, `lib.rs` is the crate root).
An edge M -> N is a path in M's code (comments and string literals removed) that names
module N or an item in it: `crate::a::b`, `super::x`, `self::x`, or a bare path that starts
with one of M's own child modules (`engine::Engine` in `gate/mod.rs`), in `use` trees and
anywhere else. A path that ends in an item a module re-exports (`pub use child::Item`)
leads on to the module that defines it, so a cycle through a parent module's re-export is
found too. `mod child;` declarations are not edges, and neither is a path from a module
to an item its own parent (or grandparent) module defines: a folder's `mod.rs` holds what
its files share, so `super::Error` in `gate/engine.rs` is not a cycle with `gate`, while
`gate` -> `gate::engine` -> `config` -> `gate` is. Test code counts like any other code.

Then the same for the crate's top-level modules (a folder with everything in it is one
node: `config` -> `approver` -> `config` is a cycle even when the two edges come from
different files), for production code only: `#[cfg(test)]` items and modules are left
out there, since a test may well drive two layers together (the RPC layer's tests use a
fake daemon that signs like the real one).

Usage: scripts/check-import-cycles.py [--graph] [SRC_DIR]   (default monitor/src)
"""

import os
import re
import sys


def strip(text):
    """Blank out comments, string and char literals (keeps line structure)."""
    out = []
    i, n = 0, len(text)
    while i < n:
        c = text[i]
        if text.startswith("//", i):
            j = text.find("\n", i)
            j = n if j < 0 else j
            i = j
            continue
        if text.startswith("/*", i):
            depth, j = 1, i + 2
            while j < n and depth:
                if text.startswith("/*", j):
                    depth, j = depth + 1, j + 2
                elif text.startswith("*/", j):
                    depth, j = depth - 1, j + 2
                else:
                    j += 1
            out.append("\n" * text.count("\n", i, j))
            i = j
            continue
        m = re.match(r'b?r(#*)"', text[i:i + 40])
        if m and (i == 0 or not (text[i - 1].isalnum() or text[i - 1] == "_")):
            end = '"' + m.group(1)
            j = text.find(end, i + m.end())
            j = n if j < 0 else j + len(end)
            out.append('""' + "\n" * text.count("\n", i, j))
            i = j
            continue
        if c == '"':
            j = i + 1
            while j < n and text[j] != '"':
                j += 2 if text[j] == "\\" else 1
            j += 1
            out.append('""' + "\n" * text.count("\n", i, j))
            i = j
            continue
        if c == "'":
            if text.startswith("\\", i + 1):
                j = text.find("'", i + 3)
                i = n if j < 0 else j + 1
                out.append("' '")
                continue
            if i + 2 < n and text[i + 2] == "'":
                i += 3
                out.append("' '")
                continue
        out.append(c)
        i += 1
    return "".join(out)


def expand_use(tree):
    """`a::{b, c::{d, e as f}}` -> [['a','b'], ['a','c','d'], ['a','c','e']] (with the
    re-exported name as the last element's alias kept in a parallel list)."""
    tree = re.sub(r"\s+", "", tree)
    results = []

    def parse(s, prefix):
        depth, start, parts = 0, 0, []
        for k, ch in enumerate(s):
            if ch == "{":
                depth += 1
            elif ch == "}":
                depth -= 1
            elif ch == "," and depth == 0:
                parts.append(s[start:k])
                start = k + 1
        parts.append(s[start:])
        for p in parts:
            if not p:
                continue
            if "{" in p:
                head, _, rest = p.partition("{")
                inner = rest[: rest.rfind("}")]
                segs = [x for x in head.split("::") if x]
                parse(inner, prefix + segs)
            else:
                alias = None
                if "as" in p and re.search(r"[A-Za-z0-9_]as[A-Za-z_]", p):
                    # whitespace was removed: split on the last `as` between names
                    m = re.match(r"^(.*[A-Za-z0-9_*])as([A-Za-z_][A-Za-z0-9_]*)$", p)
                    if m and "::" not in m.group(2):
                        p, alias = m.group(1), m.group(2)
                segs = [x for x in p.split("::") if x]
                results.append((prefix + segs, alias))

    parse(tree, [])
    return results


def strip_cfg_test(code):
    """`code` without its `#[cfg(test)]` items, and the names of the `#[cfg(test)] mod x;`
    declarations in it."""
    out, test_mods, pos = [], set(), 0
    for m in re.finditer(r"#\[cfg\(test\)\]", code):
        if m.start() < pos:
            continue
        out.append(code[pos:m.start()])
        j = m.end()
        semi, brace = code.find(";", j), code.find("{", j)
        if semi >= 0 and (brace < 0 or semi < brace):
            decl = re.match(r"\s*(?:#\[[^\]]*\]\s*)*(?:pub(?:\([^)]*\))?\s+)?mod\s+(\w+)\s*;",
                            code[j:semi + 1])
            if decl:
                test_mods.add(decl.group(1))
            pos = semi + 1
        elif brace >= 0:
            depth, k = 0, brace
            while k < len(code):
                if code[k] == "{":
                    depth += 1
                elif code[k] == "}":
                    depth -= 1
                    if depth == 0:
                        break
                k += 1
            pos = k + 1
        else:
            pos = len(code)
    out.append(code[pos:])
    return "".join(out), test_mods


class Crate:
    def __init__(self, src):
        self.src = src
        self.files = {}  # module tuple -> path
        for root, _, names in os.walk(src):
            for name in names:
                if not name.endswith(".rs"):
                    continue
                rel = os.path.relpath(os.path.join(root, name), src)
                parts = rel[:-3].split(os.sep)
                if parts == ["main"]:
                    continue  # the binary: a separate crate
                if parts == ["lib"]:
                    mod = ()
                elif parts[-1] == "mod":
                    mod = tuple(parts[:-1])
                else:
                    mod = tuple(parts)
                self.files[mod] = os.path.join(root, name)
        self.code = {}
        for mod, path in self.files.items():
            with open(path, encoding="utf-8") as f:
                self.code[mod] = strip(f.read())
        self.reexports = {m: self._reexports(m) for m in self.files}
        # Production code: test items removed, test modules (and what is below them) gone.
        self.prod_code, test = {}, set()
        for mod, code in self.code.items():
            stripped, names = strip_cfg_test(code)
            self.prod_code[mod] = stripped
            test |= {mod + (n,) for n in names}
        self.test_modules = {m for m in self.files if any(m[: len(t)] == t for t in test)}

    def children(self, mod):
        return {m[-1] for m in self.files if len(m) == len(mod) + 1 and m[:-1] == mod}

    def absolute(self, mod, segs):
        """Make a path absolute (a tuple of segments from the crate root), or None when
        it names another crate or a local item."""
        if not segs:
            return None
        head = segs[0]
        if head == "crate":
            return tuple(segs[1:])
        if head in ("self", "super"):
            base = list(mod)
            k = 0
            while k < len(segs) and segs[k] in ("self", "super"):
                if segs[k] == "super":
                    if not base:
                        return None
                    base.pop()
                k += 1
            return tuple(base) + tuple(segs[k:])
        if head in self.children(mod):
            return tuple(mod) + tuple(segs)
        return None

    def _reexports(self, mod):
        out = {}
        for m in re.finditer(r"\bpub(?:\([^)]*\))?\s+use\s+([^;]+);", self.code[mod]):
            for segs, alias in expand_use(m.group(1)):
                if not segs or segs[-1] == "*":
                    continue
                name = alias or segs[-1]
                if name == "self" and len(segs) > 1:
                    name = segs[-2]
                    segs = segs[:-1]
                absolute = self.absolute(mod, segs)
                if absolute is not None:
                    out[name] = absolute
        return out

    def target(self, absolute, seen=None):
        """The module a path names or that defines the item it names."""
        seen = seen or set()
        k = len(absolute)
        while k and absolute[:k] not in self.files:
            k -= 1
        mod = absolute[:k]
        if k < len(absolute):
            item = absolute[k]
            if item in self.reexports.get(mod, {}) and (mod, item) not in seen:
                seen.add((mod, item))
                return self.target(self.reexports[mod][item] + absolute[k + 1:], seen)
        return mod

    def edges(self, mod, production=False):
        code = self.prod_code[mod] if production else self.code[mod]
        paths = []
        for m in re.finditer(r"\buse\s+([^;]+);", code):
            paths += [segs for segs, _ in expand_use(m.group(1))]
        # every other path: `crate::a::b`, `super::x`, `self::x`, `child::x`
        no_use = re.sub(r"\buse\s+[^;]+;", ";", code)
        words = r"(?:crate|super|self|[a-z_][a-z0-9_]*)(?:\s*::\s*(?:[A-Za-z_][A-Za-z0-9_]*))+"
        for m in re.finditer(r"(?<![\w:])" + words, no_use):
            paths.append(re.sub(r"\s+", "", m.group(0)).split("::"))
        out = set()
        for segs in paths:
            segs = [s for s in segs if s != "*"]
            absolute = self.absolute(mod, segs)
            if absolute is None:
                continue
            target = self.target(absolute)
            # A module may use what its own parent (or grandparent) module defines: a
            # folder's `mod.rs` holds the types its files share, and its children are
            # its parts, not its peers. Everything else counts.
            if target != mod[: len(target)]:
                out.add(target)
        return out


def cycles(graph):
    """Strongly connected components of more than one node (Tarjan), each with one
    shortest cycle through it for the report."""
    index, low, stack, on, comps = {}, {}, [], set(), []
    counter = [0]
    sys.setrecursionlimit(10000)

    def visit(v):
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in graph.get(v, ()):
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
                comps.append(sorted(comp))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return sorted(comps)


def cycles_in(graph, comp):
    """Every elementary cycle of length 2, and one shortest cycle through each node."""
    members = set(comp)
    found = []
    seen = set()
    for start in comp:
        # BFS for the shortest path start -> ... -> start inside the component
        prev = {start: None}
        queue = [start]
        done = False
        while queue and not done:
            nxt = []
            for v in queue:
                for w in sorted(graph.get(v, ())):
                    if w not in members:
                        continue
                    if w == start:
                        path = [v]
                        while prev[path[-1]] is not None:
                            path.append(prev[path[-1]])
                        path.reverse()
                        key = frozenset(zip(path, path[1:] + [start]))
                        if key not in seen:
                            seen.add(key)
                            found.append(path + [start])
                        done = True
                        break
                    if w not in prev:
                        prev[w] = v
                        nxt.append(w)
                if done:
                    break
            queue = nxt
    return found


def name(mod):
    return "::".join(mod) or "crate"


def main():
    args = [a for a in sys.argv[1:] if not a.startswith("--")]
    src = args[0] if args else os.path.join(os.path.dirname(__file__), "..", "monitor", "src")
    crate = Crate(os.path.normpath(src))
    graph = {m: crate.edges(m) for m in crate.files}
    if "--graph" in sys.argv:
        for m in sorted(graph):
            print(f"{name(m)} -> {', '.join(sorted(name(t) for t in graph[m]))}")
    # Top-level modules, production code: an edge names the files behind it.
    top, why = {}, {}
    for m in crate.files:
        if m in crate.test_modules or not m:
            continue
        for t in crate.edges(m, production=True):
            if t and t[0] != m[0] and t not in crate.test_modules:
                top.setdefault(m[:1], set()).add(t[:1])
                why.setdefault((m[:1], t[:1]), set()).add(f"{name(m)} -> {name(t)}")
    found = 0
    comps = cycles(graph)
    if comps:
        print(f"import cycles between modules: {len(comps)} group(s) that reach each other")
        for comp in comps:
            print(f"- {', '.join(name(m) for m in comp)}")
            for cyc in cycles_in(graph, comp):
                print(f"    {' -> '.join(name(m) for m in cyc)}")
        found += len(comps)
    else:
        print(f"import cycles between modules: none ({len(graph)} modules)")
    comps = cycles(top)
    if comps:
        print(f"import cycles between top-level modules (production code): {len(comps)}")
        for comp in comps:
            print(f"- {', '.join(name(m) for m in comp)}")
            for cyc in cycles_in(top, comp):
                print(f"    {' -> '.join(name(m) for m in cyc)}")
                for a, b in zip(cyc, cyc[1:]):
                    print(f"        {name(a)} -> {name(b)}: {'; '.join(sorted(why[(a, b)]))}")
        found += len(comps)
    else:
        tops = len({m[:1] for m in crate.files if m})
        print(f"import cycles between top-level modules (production code): none ({tops} modules)")
    return 1 if found else 0


if __name__ == "__main__":
    sys.exit(main())
