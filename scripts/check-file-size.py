#!/usr/bin/env python3
"""List production files of monitor/src and monitor-ebpf/src over the size limit; exit 1 if any.

Counts lines of code: blank lines, comments (`//`, `///`, `//!`, `/* */`) and test code
(`#[cfg(test)]` items and modules, files that are test modules: `tests.rs`, `*_tests.rs`,
`testing.rs` compiled only under cfg(test)) are not counted.

Usage: scripts/check-file-size.py [--all] [--limit N] [DIR ...]
"""

import os
import re
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from importlib import import_module

strip = import_module("check-import-cycles").strip

LIMIT = 700


def code_lines(text):
    """Lines of production code in a Rust source text."""
    out = strip(text).split("\n")
    # Drop #[cfg(test)] items: the attribute, then the item up to its balanced closing brace
    # (or `;` for a `mod x;` declaration).
    count = 0
    i = 0
    n = len(out)
    while i < n:
        l = out[i].strip()
        if l.startswith("#[cfg(test)]") or l.startswith("#[cfg(all(test"):
            depth = 0
            opened = False
            j = i + 1
            # same line item after the attribute?
            rest = l.split("]", 1)[1] if "]" in l else ""
            chunks = [rest] if rest.strip() else []
            while j <= n:
                text = chunks.pop(0) if chunks else (out[j] if j < n else "")
                if not chunks and (j < n):
                    j += 1
                elif j >= n:
                    break
                depth += text.count("{") - text.count("}")
                if "{" in text:
                    opened = True
                if opened and depth <= 0:
                    break
                if not opened and text.strip().endswith(";"):
                    break
            i = j
            continue
        if l:
            count += 1
        i += 1
    return count


def is_test_file(path):
    base = os.path.basename(path)
    return base == "tests.rs" or base.endswith("_tests.rs") or base == "testing.rs"


def main(argv):
    limit = LIMIT
    show_all = False
    dirs = []
    args = list(argv)
    while args:
        a = args.pop(0)
        if a == "--all":
            show_all = True
        elif a == "--limit":
            limit = int(args.pop(0))
        else:
            dirs.append(a)
    if not dirs:
        root = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..")
        dirs = [os.path.join(root, "monitor/src"), os.path.join(root, "monitor-ebpf/src"),
                os.path.join(root, "monitor-common/src")]
    rows = []
    for d in dirs:
        for dp, _, files in os.walk(d):
            for f in files:
                if not f.endswith(".rs"):
                    continue
                p = os.path.join(dp, f)
                if is_test_file(p):
                    continue
                with open(p, encoding="utf-8") as fh:
                    rows.append((code_lines(fh.read()), os.path.relpath(p)))
    rows.sort(reverse=True)
    over = [r for r in rows if r[0] > limit]
    for c, p in rows if show_all else over:
        print(f"{c:6} {p}")
    if over:
        print(f"{len(over)} production file(s) over {limit} lines of code")
        return 1
    print(f"file sizes: none over {limit} lines of code ({len(rows)} files)")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
