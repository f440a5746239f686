#!/usr/bin/env python3
"""Markdown table of dseek training runs (standard library only), for comparing balancing and MTP
settings at the same data, seed and steps (scripts/experiments/balance_and_mtp.sh runs them).

For each run directory (metrics.jsonl, train_config.json, config.json as `dseek train` writes):
  final val loss      val_loss of the last validation (main next-token cross-entropy, nats)
  MaxVio_global       of the last validation: (max load - mean load) / mean load of the expert load
                      summed over the whole validation run, per MoE layer
  batch MaxVio        the same per training step (that step's load), averaged over the steps of the
                      last 20% of the run
  train loss          main cross-entropy averaged over the same last 20% of steps
  tokens/s            training tokens / time spent in training steps (validation excluded), from
                      the per-step `tokens` and `tokens_per_s` fields; step 1 (warm-up) left out
MaxVio is averaged over the MAIN model's MoE layers only (from max_vio_layers /
val_max_vio_layers), so that every run is measured on the same layers: the trainer's own `max_vio`
averages over the layers that routed tokens, which include the MTP module's MoE layer only when
MTP is on (mtp.lambda > 0).

Usage: summarize.py --out results.md [--title TEXT] LABEL=RUN_DIR [LABEL=RUN_DIR ...]
A truncated last line of metrics.jsonl (a run killed mid-write) is skipped with a warning; any
other malformed line is an error naming file:line.
"""
import argparse
import json
import math
import os
import sys


class SummaryError(Exception):
    pass


def warn(message):
    print(f"summarize: warning: {message}", file=sys.stderr)


def read_json(path):
    try:
        with open(path) as f:
            return json.load(f)
    except OSError as e:
        raise SummaryError(f"{path}: cannot read: {e.strerror}")
    except json.JSONDecodeError as e:
        raise SummaryError(f"{path}: invalid JSON: {e}")


def read_metrics(path):
    try:
        with open(path) as f:
            lines = f.read().split("\n")
    except OSError as e:
        raise SummaryError(f"{path}: cannot read: {e.strerror}")
    while lines and lines[-1] == "":
        lines.pop()
    records = []
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as e:
            if number == len(lines):
                warn(f"{path}:{number}: truncated last line skipped")
                continue
            raise SummaryError(f"{path}:{number}: invalid JSON: {e}")
        if not isinstance(record, dict) or not isinstance(record.get("step"), int):
            raise SummaryError(f"{path}:{number}: not a metrics record (no integer 'step')")
        records.append(record)
    if not records:
        raise SummaryError(f"{path}: no steps logged")
    return records


def main_moe_layers(config, path):
    """Indices into max_vio_layers of the main model's MoE layers (MTP blocks come after)."""
    try:
        layers = int(config["num_hidden_layers"])
        depths = int(config.get("num_nextn_predict_layers", 0) or 0)
        experts = int(config.get("n_routed_experts", 0) or 0)
        first_dense = int(config.get("first_k_dense_replace", 0) or 0)
        freq = int(config.get("moe_layer_freq", 1) or 1)
    except (KeyError, TypeError, ValueError) as e:
        raise SummaryError(f"{path}: cannot read the layer layout: {e}")
    moe = [l for l in range(layers + depths) if experts > 0 and l >= first_dense and l % freq == 0]
    return [i for i, l in enumerate(moe) if l < layers]


def layer_mean(values, keep, where):
    if not isinstance(values, list) or any(i >= len(values) for i in keep):
        raise SummaryError(f"{where}: expected a list of at least {max(keep) + 1} per-layer values")
    return sum(float(values[i]) for i in keep) / len(keep)


def summarize_run(label, run_dir):
    metrics_path = os.path.join(run_dir, "metrics.jsonl")
    records = read_metrics(metrics_path)
    config = read_json(os.path.join(run_dir, "config.json"))
    train_config = read_json(os.path.join(run_dir, "train_config.json"))
    keep = main_moe_layers(config, os.path.join(run_dir, "config.json"))

    last_step = records[-1]["step"]
    tail_from = last_step - max(1, math.ceil(0.2 * last_step))  # steps > tail_from: the last 20%
    tail = [r for r in records if r["step"] > tail_from]
    row = {"label": label, "run_dir": run_dir, "steps": last_step}

    def section(name):
        value = train_config.get(name, {})
        return value if isinstance(value, dict) else {}

    moe, mtp = section("moe"), section("mtp")
    aux = moe.get("aux_loss", "?")
    setting = [f"γ={moe.get('bias_update_speed', '?')}"]
    setting.append("aux none" if aux == "none" else f"aux {aux} α={moe.get('aux_alpha', '?')}")
    setting.append(f"λ_MTP={mtp.get('lambda', '?')}")
    row["setting"] = ", ".join(setting)

    validations = [r for r in records if "val_loss" in r]
    if validations:
        last_val = validations[-1]
        row["val_loss"] = float(last_val["val_loss"])
        row["val_step"] = last_val["step"]
        if keep and "val_max_vio_layers" in last_val:
            row["val_max_vio"] = layer_mean(last_val["val_max_vio_layers"], keep,
                                            f"{metrics_path} step {last_val['step']}")
    else:
        warn(f"{metrics_path}: no validation logged")

    if keep:
        vios = [layer_mean(r["max_vio_layers"], keep, f"{metrics_path} step {r['step']}")
                for r in tail if "max_vio_layers" in r]
        if vios:
            row["batch_max_vio"] = sum(vios) / len(vios)
    row["train_loss"] = sum(float(r["loss"]) for r in tail) / len(tail)

    tokens, seconds, previous = 0, 0.0, None
    for r in records:
        if previous is not None and r.get("tokens_per_s", 0) > 0 and "tokens" in r:
            step_tokens = r["tokens"] - previous
            tokens += step_tokens
            seconds += step_tokens / float(r["tokens_per_s"])
        previous = r.get("tokens")
    if seconds > 0:
        row["tokens_per_s"] = tokens / seconds
    elif len(records) == 1 and records[0].get("tokens_per_s"):
        row["tokens_per_s"] = float(records[0]["tokens_per_s"])
    return row


def fmt(value, digits):
    return "n/a" if value is None else f"{value:.{digits}f}"


def render(rows, title):
    out = [f"# {title}", ""]
    steps = sorted({r["steps"] for r in rows})
    out.append(f"Runs: {len(rows)}; steps: {', '.join(map(str, steps))}. MaxVio over the main "
               "model's MoE layers; batch MaxVio and train loss averaged over the last 20% of "
               "steps; tokens/s of runs that shared the machine are only roughly comparable.")
    out.append("")
    out.append("| run | setting | final val loss | MaxVio_global (last val) | batch MaxVio "
               "(last 20%) | train loss (last 20%) | tokens/s |")
    out.append("| --- | --- | --- | --- | --- | --- | --- |")
    for r in rows:
        out.append(f"| {r['label']} | {r['setting']} | {fmt(r.get('val_loss'), 4)} | "
                   f"{fmt(r.get('val_max_vio'), 3)} | {fmt(r.get('batch_max_vio'), 3)} | "
                   f"{fmt(r.get('train_loss'), 4)} | {fmt(r.get('tokens_per_s'), 0)} |")
    out.append("")
    for r in rows:
        out.append(f"- {r['label']}: `{r['run_dir']}`" +
                   (f" (last validation at step {r['val_step']})" if "val_step" in r else ""))
    return "\n".join(out) + "\n"


def main(argv=None):
    p = argparse.ArgumentParser(description="Markdown table of dseek runs' final metrics.")
    p.add_argument("--out", required=True, help="markdown file to write")
    p.add_argument("--title", default="dseek balancing and MTP experiments")
    p.add_argument("runs", nargs="+", metavar="LABEL=RUN_DIR")
    args = p.parse_args(argv)
    rows = []
    try:
        for spec in args.runs:
            label, sep, run_dir = spec.partition("=")
            if not sep or not label or not run_dir:
                raise SummaryError(f"'{spec}': expected LABEL=RUN_DIR")
            rows.append(summarize_run(label, run_dir))
        text = render(rows, args.title)
        tmp = args.out + ".tmp"
        with open(tmp, "w") as f:
            f.write(text)
        os.replace(tmp, args.out)
    except SummaryError as e:
        print(f"summarize: {e}", file=sys.stderr)
        return 1
    except OSError as e:
        print(f"summarize: {args.out}: cannot write: {e.strerror}", file=sys.stderr)
        return 1
    sys.stdout.write(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
