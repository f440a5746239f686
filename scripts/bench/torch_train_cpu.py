#!/usr/bin/env python3
"""PyTorch baseline for bench/bench_train.cpp: CPU training throughput of the same model shape.

Builds transformers' DeepseekV3ForCausalLM (or DeepseekV2 / Llama, by the config's model_type)
from a dseek config.json with random initialisation, in float32 (no bf16, no autocast), and times
optimizer steps exactly like bench_train: forward, next-token cross-entropy over all B*T positions,
backward, global-norm clipping to 1.0, AdamW(lr, betas (0.9, 0.95), weight_decay 0.1), zero_grad,
on uniformly random tokens. Prints tokens/s over --steps after --warmup steps.

transformers' DeepseekV3 has NO multi-token-prediction module (num_nextn_predict_layers is ignored;
its weights are dropped when loading hub checkpoints), and no auxiliary-loss-free bias update. So
compare with `bench_train --mtp-lambda 0`, which also skips dseek's MTP block and second head.
(transformers applies weight decay to every parameter here, dseek only to matrices and embeddings:
the optimizer's cost is the same.)

Where the config comes from (same shape as dseek's presets):
  bench_train --presets tiny,small --vocab 4096 --write-configs /tmp/cfg   -> /tmp/cfg/tiny.json
  or the config.json of any dseek run directory (`dseek train ... --steps 1 --out RUN`).

Usage:
  python3 scripts/bench/torch_train_cpu.py --config /tmp/cfg/tiny.json [--batch 8] [--seq-len 128]
      [--steps 10] [--warmup 2] [--threads N] [--lr 1e-3] [--seed 0] [--attn sdpa|eager]
Needs torch and transformers 5.x (written against torch 2.11, transformers 5.17).
"""
import argparse
import json
import math
import os
import sys
import time


def fail(message):
    print(f"torch_train_cpu: {message}", file=sys.stderr)
    sys.exit(1)


def parse_args():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--config", required=True,
                   help="dseek/HF config.json, or a directory holding one (a dseek run directory)")
    p.add_argument("--batch", type=int, default=8, help="sequences per step")
    p.add_argument("--seq-len", type=int, default=128, help="tokens per sequence")
    p.add_argument("--steps", type=int, default=10, help="timed optimizer steps")
    p.add_argument("--warmup", type=int, default=2, help="untimed steps first")
    p.add_argument("--threads", type=int, default=0,
                   help="torch.set_num_threads (0: torch's default)")
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--attn", default="sdpa", choices=["sdpa", "eager"],
                   help="transformers attention implementation")
    a = p.parse_args()
    for name in ("batch", "seq_len", "steps"):
        if getattr(a, name) < 1:
            fail(f"--{name.replace('_', '-')} must be at least 1, got {getattr(a, name)}")
    if a.warmup < 0 or a.threads < 0:
        fail("--warmup and --threads must not be negative")
    return a


def load_config_json(path):
    if os.path.isdir(path):
        path = os.path.join(path, "config.json")
    if not os.path.isfile(path):
        fail(f"{path}: no such config file (write one with `bench_train --write-configs DIR`, or "
             "pass a dseek run directory)")
    try:
        with open(path) as f:
            cfg = json.load(f)
    except (OSError, json.JSONDecodeError) as e:
        fail(f"{path}: cannot read as JSON: {e}")
    if not isinstance(cfg, dict) or "model_type" not in cfg:
        fail(f"{path}: not a model config.json (no model_type)")
    return path, cfg


def main():
    args = parse_args()
    path, cfg = load_config_json(args.config)
    try:
        import torch
        import torch.nn.functional as F
        import transformers
    except ImportError as e:
        fail(f"needs torch and transformers (pip install torch transformers): {e}")

    classes = {"deepseek_v3": "DeepseekV3", "deepseek_v2": "DeepseekV2", "llama": "Llama"}
    model_type = cfg["model_type"]
    if model_type not in classes:
        fail(f"{path}: model_type '{model_type}' is not one of {sorted(classes)}")
    prefix = classes[model_type]
    try:
        config_cls = getattr(transformers, prefix + "Config")
        model_cls = getattr(transformers, prefix + "ForCausalLM")
    except AttributeError:
        fail(f"transformers {transformers.__version__} has no {prefix}ForCausalLM (need 5.x)")
    if args.seq_len > cfg.get("max_position_embeddings", args.seq_len):
        fail(f"--seq-len {args.seq_len} exceeds max_position_embeddings "
             f"{cfg['max_position_embeddings']} of {path}")

    if args.threads > 0:
        torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    config = config_cls.from_dict(cfg)
    config.use_cache = False
    try:
        model = model_cls._from_config(config, attn_implementation=args.attn, dtype=torch.float32)
    except TypeError:
        model = model_cls._from_config(config, attn_implementation=args.attn,
                                       torch_dtype=torch.float32)
    model.train()
    params = sum(p.numel() for p in model.parameters())
    optimizer = torch.optim.AdamW(model.parameters(), lr=args.lr, betas=(0.9, 0.95),
                                  weight_decay=0.1, eps=1e-8)
    vocab = config.vocab_size
    B, T = args.batch, args.seq_len
    gen = torch.Generator().manual_seed(args.seed + 1)

    print("# PyTorch CPU training baseline")
    print(f"config {path}: {model_type}, {params / 1e6:.2f}M parameters, vocab {vocab}")
    print(f"torch {torch.__version__}, transformers {transformers.__version__}, "
          f"{torch.get_num_threads()} threads, attn {args.attn}, float32")
    if cfg.get("num_nextn_predict_layers", 0):
        print(f"note: transformers' {prefix}ForCausalLM has no MTP module; the config's "
              f"num_nextn_predict_layers={cfg['num_nextn_predict_layers']} is ignored. "
              "Compare with `bench_train --mtp-lambda 0`.")
    if cfg.get("topk_method") == "noaux_tc":
        print("note: no auxiliary-loss-free bias update in transformers (the bias is a constant)")

    def step():
        window = torch.randint(0, vocab, (B, T + 1), generator=gen)
        inputs, targets = window[:, :-1], window[:, 1:]
        t0 = time.perf_counter()
        logits = model(input_ids=inputs).logits
        loss = F.cross_entropy(logits.reshape(-1, logits.size(-1)).float(), targets.reshape(-1))
        loss.backward()
        t1 = time.perf_counter()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=False)
        t2 = time.perf_counter()
        return loss.item(), t1 - t0, t2 - t1

    for _ in range(args.warmup):
        step()
    fwd_bwd = optim = 0.0
    loss = math.nan
    for _ in range(args.steps):
        loss, a, b = step()
        fwd_bwd += a
        optim += b
    if not math.isfinite(loss):
        fail(f"the loss is {loss} after {args.warmup + args.steps} steps")
    per_step = (fwd_bwd + optim) / args.steps
    print()
    print("| config | batch x seq_len | ms/step (fwd+bwd + optim) | tokens/s |")
    print("| --- | --- | --- | --- |")
    print(f"| {os.path.basename(path)} (torch) | {B} x {T} | {per_step * 1e3:.1f} "
          f"({fwd_bwd / args.steps * 1e3:.1f} + {optim / args.steps * 1e3:.1f}) | "
          f"{B * T / per_step:.0f} |")
    print(f"\nloss after the last step: {loss:.3f} (ln vocab = {math.log(vocab):.3f})")


if __name__ == "__main__":
    main()
