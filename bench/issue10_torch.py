#!/usr/bin/env python3
"""transformers baselines for issue 10, on the shapes bench_train_cuda / bench_decode_cuda run.

Rows (each also written as a JSON object to --json, the format the C++ benches write):
  gemm_peak  bf16 torch.matmul TFLOP/s, best of n x n x n for n = 8192, 16384 (the MFU reference)
  copy_bw    device-to-device copy of 1 GiB, read + write GB/s (the decode roofline's bandwidth)
  train      DeepseekV2ForCausalLM (random init, bf16 parameters, sdpa attention) training step:
             forward, cross-entropy over all B*T positions (f32 logits), backward, clip to 1.0,
             torch.optim.AdamW(fused=True), zero_grad; eager, then under torch.compile
  decode     greedy decode with the model's own KV cache (a manual loop: forward of one token per
             sequence, argmax on the GPU), batch 1 after a 128-token prompt and batches 32/64/128
  prefill    4096 tokens into an empty cache, logits for every row (as dseek computes them)

The config comes from `bench_train_cuda --write-config FILE` (one JSON text for both sides);
--train-layers / --decode-layers override num_hidden_layers. Medians of synchronised timings.

  --merge DIR [--out FILE]   no torch needed: reads DIR/{torch,train_dseek,decode_dseek}.json and
                             prints the side-by-side markdown of scripts/device/bench_issue10.sh
  --tiny                     a toy shape on the CPU (for checking this script's logic)

Written against torch 2.11 and transformers 5.17 (whose DeepseekV2Config reads the hub-style keys
of the config file: q_lora_rank null, n_routed_experts, first_k_dense_replace, rope_theta, ...).
"""
import argparse
import gc
import json
import math
import os
import sys
import time


def describe(e):
    """One line naming an exception, for a row's 'n/a (...)'."""
    text = str(e).strip().splitlines()
    return f"{type(e).__name__}: {text[0][:200]}" if text else type(e).__name__


def log(msg):
    print(msg, file=sys.stderr, flush=True)


def parse_args():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--config", help="config.json of the shape (bench_train_cuda --write-config)")
    p.add_argument("--what", default="peak,train,decode,prefill",
                   help="comma list of: peak, train, decode, prefill")
    p.add_argument("--train-layers", type=int, default=4)
    p.add_argument("--decode-layers", type=int, default=27)
    p.add_argument("--batch", type=int, default=2)
    p.add_argument("--seq", type=int, default=2048)
    p.add_argument("--steps", type=int, default=5)
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--compile-warmup", type=int, default=3,
                   help="untimed steps under torch.compile")
    p.add_argument("--no-compile", action="store_true")
    p.add_argument("--lr", type=float, default=1e-4)
    p.add_argument("--prompt", type=int, default=128)
    p.add_argument("--new", type=int, default=64, help="tokens decoded at batch 1")
    p.add_argument("--batches", default="32,64,128", help="batched decode sizes ('' for none)")
    p.add_argument("--batch-steps", type=int, default=32, help="decode steps of the batched runs")
    p.add_argument("--prefill", type=int, default=4096)
    p.add_argument("--attn", default="sdpa", choices=["sdpa", "eager"])
    p.add_argument("--experts-impl", default="",
                   help="transformers' experts_implementation (default: its own default)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", help="write the rows here")
    p.add_argument("--tiny", action="store_true", help="toy shape on the CPU")
    p.add_argument("--merge", metavar="DIR", help="merge result files of DIR (no torch needed)")
    p.add_argument("--out", help="with --merge: write the markdown here too")
    return p.parse_args()


# ---------------------------------------------------------------------------------------------
# Merge (stdlib only).

def load_rows(path):
    try:
        with open(path) as f:
            rows = json.load(f)
        return rows if isinstance(rows, list) else []
    except (OSError, json.JSONDecodeError):
        return []


def find(rows, **keys):
    for r in rows:
        if all(r.get(k) == v for k, v in keys.items()):
            return r
    return None


def fmt(x, digits=0):
    return "n/a" if x is None else f"{x:,.{digits}f}"


def ratio(a, b):
    return f"{a / b:.2f}x" if a and b else "n/a"


def figure(row, key, digits=0):
    """The value of a row, or 'n/a (reason)'."""
    if row is None:
        return "n/a (not run or crashed: see the logs)"
    if row.get("error"):
        return f"n/a ({row['error']})"
    return fmt(row.get(key), digits)


def merge(directory):
    torch_rows = load_rows(os.path.join(directory, "torch.json"))
    train_rows = load_rows(os.path.join(directory, "train_dseek.json"))
    decode_rows = load_rows(os.path.join(directory, "decode_dseek.json"))
    peak_row = find(torch_rows, bench="gemm_peak", impl="torch")
    peak = peak_row.get("tflops") if peak_row else None
    dseek_peak_row = find(train_rows, bench="gemm_peak", impl="dseek")
    copy_row = find(torch_rows, bench="copy_bw", impl="torch") or find(decode_rows, bench="copy_bw")
    gbs = copy_row.get("gbs") if copy_row else None
    out = []
    out.append("## Training step (issue 10 shape)\n")
    d = find(train_rows, bench="train", impl="dseek")
    e = find(torch_rows, bench="train", impl="torch eager")
    c = find(torch_rows, bench="train", impl="torch compile")
    flops = (d or e or c or {}).get("flops_per_token")
    shape = d or e or c or {}
    out.append(f"{shape.get('layers', '?')} layers, batch {shape.get('batch', '?')} x "
               f"{shape.get('seq', '?')} tokens; model FLOPs/token "
               f"{fmt(flops / 1e9 if flops else None, 3)} G (6 x active non-embedding parameters "
               f"incl. the head + attention); bf16 GEMM peak (torch.matmul, same run): "
               f"{fmt(peak, 1)} TFLOP/s"
               + (f"; dseek ops::linear 8192^3: {fmt(dseek_peak_row.get('tflops'), 1)} TFLOP/s"
                  if dseek_peak_row else "") + "\n")
    out.append("| implementation | ms/step | tokens/s | model TFLOP/s | MFU | vs torch.compile |")
    out.append("| --- | --- | --- | --- | --- | --- |")
    ct = c.get("tokens_per_s") if c and not c.get("error") else None
    for label, r in (("dseek (bf16 compute, f32 masters)", d), ("transformers eager (bf16)", e),
                     ("transformers torch.compile (bf16)", c)):
        tps = r.get("tokens_per_s") if r and not r.get("error") else None
        tf = tps * flops / 1e12 if tps and flops else None
        mfu = f"{100 * tf / peak:.1f}%" if tf and peak else "n/a"
        out.append(f"| {label} | {figure(r, 'step_ms', 1)} | {fmt(tps)} | {fmt(tf, 1)} | {mfu} | "
                   f"{ratio(tps, ct)} |")
    out.append("\n## Inference (27 layers)\n")
    out.append(f"copy bandwidth (torch, same run): {fmt(gbs)} GB/s\n")
    out.append("| what | dseek tokens/s | transformers tokens/s | dseek / transformers | "
               "roofline tokens/s | dseek % of roofline |")
    out.append("| --- | --- | --- | --- | --- | --- |")
    batches = sorted({1, 32, 64, 128} | {r.get("batch") for r in decode_rows + torch_rows
                                          if r.get("bench") == "decode" and r.get("batch")})
    for b in batches:
        dr = find(decode_rows, bench="decode", batch=b)
        tr = find(torch_rows, bench="decode", batch=b, impl="torch")
        dt = dr.get("tokens_per_s") if dr and not dr.get("error") else None
        tt = tr.get("tokens_per_s") if tr and not tr.get("error") else None
        roof = pct = "-"
        if b == 1 and dr and dr.get("bytes_per_token") and gbs:
            roof_v = gbs * 1e9 / dr["bytes_per_token"]
            roof = f"{roof_v:,.0f} ({dr['bytes_per_token'] / 1e9:.2f} GB/token)"
            pct = f"{100 * dt / roof_v:.1f}%" if dt else "n/a"
        out.append(f"| decode, batch {b} | {figure(dr, 'tokens_per_s', 1)} | "
                   f"{figure(tr, 'tokens_per_s', 1)} | {ratio(dt, tt)} | {roof} | {pct} |")
    dp = find(decode_rows, bench="prefill")
    tp = find(torch_rows, bench="prefill", impl="torch")
    n = (dp or tp or {}).get("tokens", "?")
    dpt = dp.get("tokens_per_s") if dp and not dp.get("error") else None
    tpt = tp.get("tokens_per_s") if tp and not tp.get("error") else None
    out.append(f"| prefill {n} tokens | {figure(dp, 'tokens_per_s')} | {figure(tp, 'tokens_per_s')}"
               f" | {ratio(dpt, tpt)} | - | - |")
    return "\n".join(out) + "\n"


# ---------------------------------------------------------------------------------------------
# Measurements (torch).

def main():
    args = parse_args()
    if args.merge:
        text = merge(args.merge)
        print(text)
        if args.out:
            with open(args.out, "w") as f:
                f.write(text)
        return

    import torch
    import torch.nn.functional as F
    import transformers

    dev = "cpu" if args.tiny else "cuda"
    bf = torch.bfloat16
    rows = []

    def emit(row):
        rows.append(row)
        if args.json:
            with open(args.json, "w") as f:
                json.dump(rows, f, indent=2)

    def sync():
        if dev == "cuda":
            torch.cuda.synchronize()

    def median(xs):
        xs = sorted(xs)
        n = len(xs)
        return xs[n // 2] if n % 2 else 0.5 * (xs[n // 2 - 1] + xs[n // 2])

    def timed(fn, reps, warm=2):
        for _ in range(warm):
            fn()
        sync()
        ts = []
        for _ in range(reps):
            t0 = time.perf_counter()
            fn()
            sync()
            ts.append(time.perf_counter() - t0)
        return median(ts)

    if args.tiny:
        base = {"model_type": "deepseek_v2", "vocab_size": 512, "hidden_size": 64,
                "intermediate_size": 96, "moe_intermediate_size": 32, "num_attention_heads": 4,
                "num_key_value_heads": 4, "kv_lora_rank": 32, "q_lora_rank": None,
                "qk_nope_head_dim": 16, "qk_rope_head_dim": 8, "v_head_dim": 16,
                "n_routed_experts": 8, "n_shared_experts": 2, "num_experts_per_tok": 2,
                "first_k_dense_replace": 1, "moe_layer_freq": 1, "topk_method": "greedy",
                "n_group": 1, "topk_group": 1, "norm_topk_prob": False, "scoring_func": "softmax",
                "routed_scaling_factor": 1.0, "max_position_embeddings": 8192,
                "rope_theta": 10000.0, "rope_scaling": None, "rms_norm_eps": 1e-6,
                "tie_word_embeddings": False, "bos_token_id": 0, "eos_token_id": 1,
                "hidden_act": "silu", "attention_bias": False}
        args.seq, args.prefill = min(args.seq, 64), min(args.prefill, 64)
        args.new, args.batch_steps, args.steps = min(args.new, 4), min(args.batch_steps, 2), 2
    else:
        if not args.config:
            sys.exit("issue10_torch: --config FILE needed (bench_train_cuda --write-config FILE)")
        with open(args.config) as f:
            base = json.load(f)
    what = set(args.what.split(","))
    torch.manual_seed(args.seed)
    log(f"torch {torch.__version__}, transformers {transformers.__version__}, device "
        f"{torch.cuda.get_device_name() if dev == 'cuda' else 'cpu'}")
    print(f"# transformers baselines (torch {torch.__version__}, transformers "
          f"{transformers.__version__})")

    def build(layers):
        cfg = dict(base, num_hidden_layers=layers)
        config = transformers.DeepseekV2Config.from_dict(cfg)
        kwargs = {"attn_implementation": args.attn}
        if args.experts_impl:
            kwargs["experts_implementation"] = args.experts_impl
        t0 = time.perf_counter()
        with torch.device(dev):  # parameters are created and initialised on the device
            try:
                model = transformers.DeepseekV2ForCausalLM._from_config(config, dtype=bf, **kwargs)
            except TypeError:  # older transformers name the argument torch_dtype
                model = transformers.DeepseekV2ForCausalLM._from_config(config, torch_dtype=bf,
                                                                        **kwargs)
        model.to(dev)
        sync()
        experts = getattr(model.config, "_experts_implementation", None)
        log(f"built {layers} layers in {time.perf_counter() - t0:.1f} s (experts "
            f"implementation {experts})")
        return model, config

    def active_params(model, config):
        """Non-embedding parameters a token is multiplied by: routed experts at top-k / E."""
        k, E = config.num_experts_per_tok, config.n_routed_experts
        n = 0.0
        for name, p in model.named_parameters():
            if "embed_tokens" in name:
                continue
            n += p.numel() * (k / E if ".experts." in name else 1.0)
        return n

    if "peak" in what and dev == "cuda":
        best = 0.0
        for n in (8192, 16384):
            a = torch.randn(n, n, device=dev, dtype=bf)
            b = torch.randn(n, n, device=dev, dtype=bf)
            s = timed(lambda: torch.matmul(a, b), 10)
            best = max(best, 2 * n ** 3 / s / 1e12)
            del a, b
        print(f"bf16 matmul peak: {best:.1f} TFLOP/s")
        emit({"bench": "gemm_peak", "impl": "torch", "tflops": best})
        a = torch.empty(1 << 29, dtype=bf, device=dev).fill_(1)
        b = torch.empty_like(a)
        s = timed(lambda: b.copy_(a), 10)
        gbs = 2 * a.numel() * 2 / s / 1e9
        print(f"device copy: {gbs:.0f} GB/s (read + write)")
        emit({"bench": "copy_bw", "impl": "torch", "gbs": gbs})
        del a, b
        torch.cuda.empty_cache()

    if "train" in what:
        model, config = build(args.train_layers)
        model.train()
        B, T, V = args.batch, args.seq, config.vocab_size
        act = active_params(model, config)
        attn = 6 * config.num_hidden_layers * T * config.num_attention_heads * (
            config.qk_nope_head_dim + config.qk_rope_head_dim + config.v_head_dim)
        flops_per_token = 6 * act + attn
        total = sum(p.numel() for p in model.parameters())
        print(f"train: {args.train_layers} layers, {total / 1e9:.3f}B parameters, "
              f"{act / 1e9:.3f}B active, {flops_per_token / 1e9:.3f} GFLOP/token")
        opt = torch.optim.AdamW(model.parameters(), lr=args.lr, betas=(0.9, 0.95), eps=1e-8,
                                weight_decay=0.1, fused=(dev == "cuda"))
        gen = torch.Generator(device="cpu").manual_seed(args.seed + 1)

        def run(fwd, label, warm):
            row = {"bench": "train", "impl": label, "layers": args.train_layers, "batch": B,
                   "seq": T, "flops_per_token": flops_per_token, "active_params": act}
            try:
                times, loss = [], math.nan
                for s in range(warm + args.steps):
                    w = torch.randint(0, V, (B, T + 1), generator=gen).to(dev)
                    inputs, targets = w[:, :-1], w[:, 1:]
                    sync()
                    t0 = time.perf_counter()
                    logits = fwd(input_ids=inputs, use_cache=False).logits
                    l = F.cross_entropy(logits.reshape(-1, V).float(), targets.reshape(-1))
                    l.backward()
                    torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
                    opt.step()
                    opt.zero_grad(set_to_none=True)
                    sync()
                    dt = time.perf_counter() - t0
                    loss = l.item()
                    log(f"{label} step {s}: loss {loss:.4f}, {dt * 1e3:.1f} ms")
                    if s >= warm:
                        times.append(dt)
                    del logits, l
                step = median(times)
                row.update(step_ms=step * 1e3, tokens_per_s=B * T / step, loss=loss,
                           tflops=B * T / step * flops_per_token / 1e12)
                print(f"| {label} | {step * 1e3:.1f} ms/step | {B * T / step:,.0f} tokens/s | "
                      f"{row['tflops']:.1f} model TFLOP/s | loss {loss:.3f} |")
            except Exception as e:  # a failed baseline is a row, not the end of the run
                row["error"] = describe(e)
                print(f"| {label} | n/a ({row['error']}) |")
            emit(row)

        run(model, "torch eager", args.warmup)
        if not args.no_compile and not args.tiny:  # (compile on a CPU needs a C++ toolchain)
            t0 = time.perf_counter()
            compiled = torch.compile(model)
            run(compiled, "torch compile", args.compile_warmup)
            log(f"torch.compile run (compile included): {time.perf_counter() - t0:.1f} s")
            del compiled
        del model, opt
        gc.collect()
        if dev == "cuda":
            torch.cuda.empty_cache()

    if "decode" in what or "prefill" in what:
        model, config = build(args.decode_layers)
        model.eval()
        V = config.vocab_size
        act = active_params(model, config)
        print(f"inference: {args.decode_layers} layers, "
              f"{sum(p.numel() for p in model.parameters()) / 1e9:.2f}B parameters, "
              f"{act / 1e9:.3f}B active")

        @torch.inference_mode()
        def greedy(B, prompt_len, steps):
            ids = torch.randint(0, V, (B, prompt_len), device=dev)
            out = model(input_ids=ids, use_cache=True, logits_to_keep=1)
            cache = out.past_key_values
            nxt = out.logits[:, -1].argmax(-1, keepdim=True)
            times = []
            for _ in range(steps):
                sync()
                t0 = time.perf_counter()
                out = model(input_ids=nxt, past_key_values=cache, use_cache=True)
                cache = out.past_key_values
                nxt = out.logits[:, -1].argmax(-1, keepdim=True)
                sync()
                times.append(time.perf_counter() - t0)
            return times

        if "decode" in what:
            sizes = [1] + [int(b) for b in args.batches.split(",") if b]
            for B in sizes:
                steps = args.new if B == 1 else args.batch_steps
                row = {"bench": "decode", "impl": "torch", "batch": B, "prompt": args.prompt,
                       "new_tokens": steps, "layers": args.decode_layers, "active_params": act}
                try:
                    greedy(B, 16, 2)  # warm-up
                    times = greedy(B, args.prompt, steps)
                    tps = B * len(times) / sum(times)
                    row.update(tokens_per_s=tps, median_step_ms=median(times) * 1e3)
                    print(f"| decode b{B} | {tps:,.1f} tokens/s | median step "
                          f"{median(times) * 1e3:.2f} ms |")
                except Exception as e:
                    row["error"] = describe(e)
                    print(f"| decode b{B} | n/a ({row['error']}) |")
                emit(row)
                if dev == "cuda":
                    torch.cuda.empty_cache()

        if "prefill" in what and args.prefill > 0:
            row = {"bench": "prefill", "impl": "torch", "tokens": args.prefill,
                   "layers": args.decode_layers}
            try:
                @torch.inference_mode()
                def prefill():
                    ids = torch.randint(0, V, (1, args.prefill), device=dev)
                    model(input_ids=ids, use_cache=True)  # every row's logits, as dseek

                s = timed(prefill, 2, warm=1)
                row.update(tokens_per_s=args.prefill / s, ms=s * 1e3)
                print(f"| prefill {args.prefill} | {args.prefill / s:,.0f} tokens/s | "
                      f"{s * 1e3:.1f} ms |")
            except Exception as e:
                row["error"] = describe(e)
                print(f"| prefill {args.prefill} | n/a ({row['error']}) |")
            emit(row)


if __name__ == "__main__":
    main()
