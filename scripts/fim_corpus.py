#!/usr/bin/env python3
"""Small code corpus for the FIM demo and tests: the top-level functions of the Python standard
library's own sources (/usr/lib/python3.11/*.py, Debian's libpython3.11-stdlib, installed with
python3), one JSONL document {"text": ...} per function of at most --max-bytes bytes. Functions
are deduplicated and split by a hash of their text into train and held-out files, so the split does
not depend on the order the files are read in.

    scripts/fim_corpus.py --out DIR [--src /usr/lib/python3.11] [--max-bytes 600]
writes DIR/train.jsonl and DIR/heldout.jsonl.
"""
import argparse
import ast
import hashlib
import json
import pathlib
import sys


def functions(path, max_bytes):
    try:
        source = path.read_text(encoding="utf-8")
        tree = ast.parse(source)
    except (SyntaxError, UnicodeDecodeError, ValueError):
        return
    for node in tree.body:
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            text = ast.get_source_segment(source, node)
            if text and len(text.encode("utf-8")) <= max_bytes and text.count("\n") >= 2:
                yield text + "\n"


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", required=True)
    ap.add_argument("--src", default=f"/usr/lib/python3.{sys.version_info.minor}")
    ap.add_argument("--max-bytes", type=int, default=600)
    ap.add_argument("--heldout-percent", type=int, default=5)
    args = ap.parse_args()
    src = pathlib.Path(args.src)
    if not src.is_dir():
        sys.exit(f"fim_corpus: {src}: no Python standard library here (apt-get install libpython3.11-stdlib)")
    out = pathlib.Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    seen = set()
    counts = {"train": 0, "heldout": 0}
    with open(out / "train.jsonl", "w") as train, open(out / "heldout.jsonl", "w") as heldout:
        for path in sorted(src.glob("*.py")):
            for text in functions(path, args.max_bytes):
                digest = hashlib.sha256(text.encode("utf-8")).digest()
                if digest in seen:
                    continue
                seen.add(digest)
                held = digest[0] * 100 // 256 < args.heldout_percent
                (heldout if held else train).write(json.dumps({"text": text}) + "\n")
                counts["heldout" if held else "train"] += 1
    print(f"fim_corpus: {counts['train']} training and {counts['heldout']} held-out functions from {src}")


if __name__ == "__main__":
    main()
