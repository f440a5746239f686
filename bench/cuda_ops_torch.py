#!/usr/bin/env python3
"""PyTorch baseline for bench_cuda_ops: the same ops on the same shapes in bf16 on the same GPU,
timed the same way (median of synchronised calls after two warm-ups), so the two tables sit side by
side. Usage: python3 bench/cuda_ops_torch.py [reps]"""
import sys
import time

import torch
import torch.nn.functional as F

reps = int(sys.argv[1]) if len(sys.argv) > 1 else 20
dev, bf = "cuda", torch.bfloat16
torch.manual_seed(7)


def time_op(fn):
    fn(); fn(); torch.cuda.synchronize()
    t = []
    for _ in range(reps):
        t0 = time.perf_counter(); fn(); torch.cuda.synchronize(); t.append(time.perf_counter() - t0)
    return sorted(t)[len(t) // 2]


a = torch.empty(1 << 29, dtype=bf, device=dev).fill_(1); b = torch.empty_like(a)
s = time_op(lambda: b.copy_(a)); copy_gbs = 2 * a.numel() * 2 / s / 1e9
print(f"device: {torch.cuda.get_device_name()} (torch {torch.__version__})")
print(f"memory bound: device copy {copy_gbs:.0f} GB/s (read + write)\n")
print("| op | shape | median µs | compute | memory |\n|---|---|---|---|---|")
del a, b


def row(op, shape, flops, nbytes, fn):
    s = time_op(fn)
    if flops:
        print(f"| {op:26} | {shape:30} | {s*1e6:9.1f} | {flops/s/1e12:7.1f} TFLOP/s | {nbytes/s/1e9:7.0f} GB/s |")
    else:
        gbs = nbytes / s / 1e9
        print(f"| {op:26} | {shape:30} | {s*1e6:9.1f} | {'-':>15} | {gbs:7.0f} GB/s ({100*gbs/copy_gbs:3.0f}% of copy) |")


def dims(*d):
    return "x".join(str(v) for v in d)


def r(*shape, scale=1.0):
    return ((torch.rand(*shape, device=dev) * 2 - 1) * scale).to(bf)


for what, T, i, o in [("linear q_proj (prefill)", 4096, 2048, 3072), ("linear dense up (prefill)", 4096, 2048, 10944),
                      ("linear expert up", 1024, 2048, 1408), ("linear lm_head (prefill)", 4096, 2048, 102400),
                      ("linear lm_head (decode)", 1, 2048, 102400), ("linear o_proj (decode b32)", 32, 2048, 2048)]:
    x, w = r(T, i), r(o, i, scale=0.05)
    row(what, dims(T, i, o), 2 * T * i * o, (T * i + o * i + T * o) * 2, lambda: F.linear(x, w))
T, i, o = 4096, 2048, 10944
x, w, dy = r(T, i), r(o, i, scale=0.05), r(T, o)
row("linear backward dx+dW", dims(T, i, o), 4 * T * i * o, 0, lambda: (dy @ w, dy.t() @ x))
# Grouped expert GEMMs as bench_cuda_ops: 4096 tokens × top-6 of 64 experts, random routing, through
# torch._grouped_mm (what transformers' grouped_mm experts call): forward x·W_eᵀ, dx dy·W_e, dW
# dy_eᵀ·x_e (bf16 out, where dseek writes f32).
T, E, K = 4096, 64, 6
N = T * K
ids = torch.stack([torch.randperm(E, device=dev)[:K] for _ in range(T)]).flatten()
offs = torch.bincount(ids, minlength=E).cumsum(0).to(torch.int32)
for what, i, o in [("gate/up", 2048, 1408), ("down", 1408, 2048)]:
    w, x, dy = r(E, o, i, scale=0.05), r(N, i), r(N, o)
    fl = 2 * N * i * o
    for op, fn in [(f"grouped_linear {what} [torch]", lambda: torch._grouped_mm(x, w.transpose(-2, -1), offs=offs)),
                   (f"grouped_linear dx {what} [torch]", lambda: torch._grouped_mm(dy, w, offs=offs)),
                   (f"grouped_linear dW {what} [torch]", lambda: torch._grouped_mm(dy.t(), x, offs=offs))]:
        try:
            row(op, dims(N, E, i, o), fl, 0, fn)
        except Exception as e:  # an op this torch build lacks
            print(f"| {op:26} | {dims(N, E, i, o):30} | n/a: {str(e).splitlines()[0][:80]} |")
T, D = 4096, 2048
x, w, dy = r(T, D), r(D), r(T, D)
row("rms_norm", dims(T, D), 0, 2 * T * D * 2, lambda: F.rms_norm(x, (D,), w, 1e-6))
xg = x.clone().requires_grad_(); wg = w.clone().requires_grad_()
y = F.rms_norm(xg, (D,), wg, 1e-6)
row("rms_norm backward", dims(T, D), 0, 3 * T * D * 2, lambda: torch.autograd.grad(y, (xg, wg), dy, retain_graph=True))
T, Fw = 4096, 10944
g, u = r(T, Fw), r(T, Fw)
row("silu_mul", dims(T, Fw), 0, 3 * T * Fw * 2, lambda: F.silu(g) * u)
T, H, d = 4096, 16, 64
q = r(T, H, d)
inv = 10000.0 ** (-torch.arange(0, d, 2, device=dev).float() / d)
freqs = torch.outer(torch.arange(T, device=dev).float(), inv); cos, sin = freqs.cos().to(bf), freqs.sin().to(bf)
def rope():  # transformers' interleaved rotate-half
    x = q.view(T, H, d // 2, 2).transpose(-1, -2).reshape(T, H, d)
    x1, x2 = x[..., : d // 2], x[..., d // 2:]
    c, s_ = cos[:, None, :], sin[:, None, :]
    return torch.cat((x1 * c - x2 * s_, x2 * c + x1 * s_), dim=-1)
row("rope (in place)", dims(T, H, d), 0, 2 * T * H * d * 2, rope)
T, V, D = 4096, 102400, 2048
table = r(V, D); ids = torch.randint(0, V, (T,), device=dev)
row("embedding", dims(T, D), 0, 2 * T * D * 2, lambda: F.embedding(ids, table))
logits = r(T, V, scale=4.0)
row("cross_entropy forward", dims(T, V), 0, T * V * 2, lambda: F.cross_entropy(logits, ids))
scores = r(T, 2048)
row("softmax", dims(T, 2048), 0, 2 * T * 2048 * 2, lambda: torch.softmax(scores, -1))
for name, T, H, dk, dv in [("MLA", 1024, 16, 192, 128), ("MLA", 2048, 16, 192, 128),
                           ("MLA", 4096, 16, 192, 128), ("MHA", 4096, 16, 128, 128)]:
    q, k, v = r(1, H, T, dk), r(1, H, T, dk), r(1, H, T, dv)
    flops = H * T * T * (dk + dv)  # causal half of 2·T²·H·(dk + dv)
    row(f"causal attention ({name})", dims(T, H, dk, dv), flops, 0,
        lambda: F.scaled_dot_product_attention(q, k, v, is_causal=True, scale=0.07))
    qg, kg, vg = (t.clone().requires_grad_() for t in (q, k, v))
    out = F.scaled_dot_product_attention(qg, kg, vg, is_causal=True, scale=0.07)
    dout = r(1, H, T, dv)
    row(f"causal attention bwd ({name})", dims(T, H, dk, dv), 2.5 * flops, 0,
        lambda: torch.autograd.grad(out, (qg, kg, vg), dout, retain_graph=True))
