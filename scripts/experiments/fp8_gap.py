#!/usr/bin/env python3
"""The FP8-vs-baseline loss gap of docs/FP8.md from `dseek train` run directories.

Usage: fp8_gap.py BASELINE_RUN OTHER_RUN [OTHER_RUN ...]
Reads each run's metrics.jsonl (one line per step; validation steps carry "val_loss") and prints a
markdown table: validation loss at every evaluated step, the mean training loss of the last 20
steps, tokens seen (cumulative), and each run's relative gap to the baseline, (other - baseline) / baseline.
"""
import json
import sys
from pathlib import Path


def load(run):
    rows = [json.loads(line) for line in (Path(run) / "metrics.jsonl").read_text().splitlines()
            if line.strip()]
    val = {r["step"]: r["val_loss"] for r in rows if "val_loss" in r}
    tokens = rows[-1].get("tokens", 0)  # cumulative
    last = rows[-20:]
    return {"val": val, "train": sum(r["loss"] for r in last) / len(last), "tokens": tokens,
            "steps": rows[-1]["step"]}


def main():
    if len(sys.argv) < 3:
        sys.exit(__doc__)
    runs = [(r, load(r)) for r in sys.argv[1:]]
    base_name, base = runs[0]
    steps = sorted(base["val"])
    print("| run | tokens | " + " | ".join(f"val loss @{s}" for s in steps) +
          " | train loss (last 20 steps) | gap: final val | gap: train |")
    print("|" + " --- |" * (len(steps) + 5))
    for name, m in runs:
        vals = " | ".join(f"{m['val'].get(s, float('nan')):.4f}" for s in steps)
        final = steps[-1]
        gv = (m["val"][final] - base["val"][final]) / base["val"][final]
        gt = (m["train"] - base["train"]) / base["train"]
        print(f"| {name} | {m['tokens']} | {vals} | {m['train']:.4f} | {gv:+.3%} | {gt:+.3%} |")


if __name__ == "__main__":
    main()
