#!/usr/bin/env python3
"""Copies the results files that the bench scripts write (benches/results/*.md) into the docs that quote them.

A doc quotes a results file between two markers:

    <!-- results: benches/results/compare_candle.md -->
    ... (written by this script: the file's facts and its first table) ...
    <!-- /results -->

    python3 benches/quote_results.py          # rewrites every quote in README.md, docs/*.md, firmware/README.md
    python3 benches/quote_results.py --check  # exits 1, naming the doc, when a quote differs from its file

So no figure in the docs is typed by hand: run the script (benches/*.sh), then this.
"""
import glob
import os
import re
import sys

ROOT = os.path.normpath(os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
DOCS = ["README.md", "firmware/README.md"] + sorted(
    os.path.relpath(p, ROOT) for p in glob.glob(os.path.join(ROOT, "docs", "*.md"))
)
QUOTE = re.compile(r"(<!-- results: (\S+) -->\n)(.*?)(<!-- /results -->)", re.S)


def quote(path):
    """The results file from its facts through its first ```text block, without its title, and a pointer to
    it, as a markdown block quote."""
    try:
        with open(os.path.join(ROOT, path), encoding="utf-8") as f:
            lines = f.read().splitlines()
    except FileNotFoundError:
        raise SystemExit(f"a doc quotes {path}, which does not exist: run the bench script that writes it")
    out, fences = [], 0
    for line in lines:
        if line.startswith("# ") and not out:
            continue
        if not out and not line.strip():
            continue
        out.append(line)
        if line.startswith("```"):
            fences += 1
            if fences == 2:
                break
    if fences < 2:
        raise SystemExit(f"{path}: no ```text table in it")
    out += ["", f"(Quoted by `benches/quote_results.py` from [`{path}`]({path}), which has the rest of the run.)"]
    return "".join(f"> {line}\n" if line else ">\n" for line in out)


def main():
    check = "--check" in sys.argv[1:]
    stale = []
    for doc in DOCS:
        full = os.path.join(ROOT, doc)
        with open(full, encoding="utf-8") as f:
            text = f.read()
        # Links in the pointer are relative to the doc.
        rel = os.path.relpath(ROOT, os.path.dirname(full))

        def sub(m):
            body = quote(m.group(2))
            if rel != ".":
                body = body.replace(f"]({m.group(2)})", f"]({rel}/{m.group(2)})")
            return m.group(1) + body + m.group(4)

        new = QUOTE.sub(sub, text)
        if new != text:
            stale.append(doc)
            if not check:
                with open(full, "w", encoding="utf-8") as f:
                    f.write(new)
    if check and stale:
        print("docs whose quoted results differ from benches/results (run python3 benches/quote_results.py):",
              ", ".join(stale), file=sys.stderr)
        sys.exit(1)
    for doc in stale:
        print(f"updated {doc}")


if __name__ == "__main__":
    main()
