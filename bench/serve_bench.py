#!/usr/bin/env python3
"""Serving benchmark of `dseek serve` (standard library only, so it runs on any host with python3).

Starts the server on a free port, then for each concurrency level runs streaming /v1/completions
clients (token-id prompts, greedy, ignore_eos: every request produces exactly --max-tokens tokens)
and prints requests/s, output tokens/s, time to first token (TTFT) and inter-token latency (ITL:
gaps between streamed tokens) percentiles. With --mtp it also measures batch-1 decode tokens/s
with speculative decoding on (the default) and off (--no-speculative), and the acceptance rate.

  python3 bench/serve_bench.py --dseek build/dseek --model DIR [--levels 1,8,32,128]
      [--requests-per-level N] [--prompt-tokens 64] [--max-tokens 64] [--threads N] [--mtp]
      [-- extra dseek serve flags]
"""
import argparse
import http.client
import json
import os
import re
import signal
import subprocess
import sys
import threading
import time


def start(a, flags):
    cmd = [a.dseek, "serve", "--model", a.model, "--port", "0", "--served-model-name", "m",
           "--threads", str(a.threads), "--max-running", "128", "--max-queue", "512",
           "--cache-tokens", str(a.cache_tokens)] + flags + a.extra
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True)
    line = proc.stdout.readline()
    m = re.search(r"listening on http://([^:]+):(\d+)", line)
    if not m:
        proc.kill()
        sys.exit(f"dseek serve did not start: {line!r}")
    return proc, m.group(1), int(m.group(2))


def stop(proc):
    proc.send_signal(signal.SIGTERM)
    if proc.wait(timeout=120) != 0:
        sys.exit(f"dseek serve exited {proc.returncode}")


def prompt(a, i):
    """Deterministic distinct prompts: request i's ids come from a small LCG seeded by i."""
    x = (i + 1) * 2654435761 % 2**32
    ids = []
    for _ in range(a.prompt_tokens):
        x = (x * 1664525 + 1013904223) % 2**32
        ids.append(2 + x % (a.vocab - 2))
    return ids


def one(a, host, port, i):
    """One streamed request: (ttft_s, [gap_s per token], tokens, seconds)."""
    body = json.dumps({"model": "m", "prompt": prompt(a, i), "max_tokens": a.max_tokens,
                       "temperature": 0, "ignore_eos": True, "stream": True, "logprobs": 0})
    t0 = time.perf_counter()
    conn = http.client.HTTPConnection(host, port, timeout=600)
    conn.request("POST", "/v1/completions", body, {"Content-Type": "application/json"})
    res = conn.getresponse()
    if res.status != 200:
        raise RuntimeError(f"status {res.status}: {res.read()[:300]}")
    ttft, last, tokens, gaps = 0.0, 0.0, 0, []
    while True:
        line = res.readline()
        if not line:
            break
        if not line.startswith(b"data: ") or line.startswith(b"data: [DONE]"):
            continue
        chunk = json.loads(line[6:])
        choices = chunk.get("choices") or [{}]
        # logprobs: 0 makes every token its own chunk (text or not), so chunks count tokens.
        n = len(((choices[0].get("logprobs") or {}).get("tokens")) or [])
        if n == 0:
            continue
        now = time.perf_counter()
        if tokens == 0:
            ttft = now - t0
        else:
            gaps.extend([(now - last) / n] * n)
        tokens += n
        last = now
    conn.close()
    return ttft, gaps, tokens, time.perf_counter() - t0


def pct(xs, p):
    if not xs:
        return float("nan")
    s = sorted(xs)
    return s[min(len(s) - 1, int(p * len(s)))]


def level(a, host, port, clients):
    total = a.requests_per_level or max(8, 2 * clients)
    results, lock, counter = [], threading.Lock(), [0]

    def worker():
        while True:
            with lock:
                if counter[0] >= total:
                    return
                i = counter[0]
                counter[0] += 1
            r = one(a, host, port, clients * 100000 + i)
            with lock:
                results.append(r)

    t0 = time.perf_counter()
    threads = [threading.Thread(target=worker) for _ in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    seconds = time.perf_counter() - t0
    tokens = sum(r[2] for r in results)
    if len(results) != total or tokens != total * a.max_tokens:
        sys.exit(f"lost work: {len(results)} of {total} requests, {tokens} tokens")
    ttfts = [r[0] for r in results]
    gaps = [g for r in results for g in r[1]]
    return (total, total / seconds, tokens / seconds, 1e3 * pct(ttfts, 0.5),
            1e3 * pct(ttfts, 0.9), 1e3 * pct(gaps, 0.5), 1e3 * pct(gaps, 0.9))


def metric(host, port, name):
    conn = http.client.HTTPConnection(host, port, timeout=30)
    conn.request("GET", "/metrics")
    text = conn.getresponse().read().decode()
    m = re.search(rf"^{name} (\S+)", text, re.M)
    return m.group(1) if m else "?"


def main():
    argv = sys.argv[1:]
    extra = argv[argv.index("--") + 1:] if "--" in argv else []
    argv = argv[:argv.index("--")] if "--" in argv else argv
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--dseek", default="build/dseek")
    p.add_argument("--model", required=True)
    p.add_argument("--levels", default="1,8,32,128")
    p.add_argument("--requests-per-level", type=int, default=0)
    p.add_argument("--prompt-tokens", type=int, default=64)
    p.add_argument("--max-tokens", type=int, default=64)
    p.add_argument("--threads", type=int, default=0)
    p.add_argument("--cache-tokens", type=int, default=65536)
    p.add_argument("--mtp", action="store_true")
    a = p.parse_args(argv)
    a.extra = extra
    with open(os.path.join(a.model, "config.json")) as f:
        a.vocab = json.load(f)["vocab_size"]
    print(f"model {a.model} | prompt {a.prompt_tokens} tok | max_tokens {a.max_tokens} | "
          f"threads {a.threads or 'default'} | extra flags {' '.join(extra) or '-'}")
    proc, host, port = start(a, [])
    try:
        one(a, host, port, 0)  # warm-up
        print("| clients | requests | req/s | output tok/s | TTFT p50 ms | TTFT p90 ms "
              "| ITL p50 ms | ITL p90 ms |\n" + "| ---: " * 8 + "|")
        for clients in [int(x) for x in a.levels.split(",")]:
            r = level(a, host, port, clients)
            print(f"| {clients} | {r[0]} | {r[1]:.2f} | {r[2]:.1f} | {r[3]:.1f} | {r[4]:.1f} "
                  f"| {r[5]:.2f} | {r[6]:.2f} |", flush=True)
        print(f"speculative acceptance ratio over the run: "
              f"{metric(host, port, 'dseek_spec_acceptance_ratio')}")
    finally:
        stop(proc)
    if a.mtp:
        for flags in (["--no-speculative"], []):
            proc, host, port = start(a, flags)
            try:
                one(a, host, port, 0)
                runs = [one(a, host, port, 1 + i) for i in range(4)]
                decode = sum(r[2] - 1 for r in runs) / sum(r[3] - r[0] for r in runs)
                print(f"batch 1, {'no speculative' if flags else 'MTP speculative'}: decode "
                      f"{decode:.1f} tok/s, acceptance "
                      f"{metric(host, port, 'dseek_spec_acceptance_ratio')}", flush=True)
            finally:
                stop(proc)


if __name__ == "__main__":
    main()
