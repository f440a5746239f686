// CUDA op benchmark: every op of the backend on model-sized shapes (DeepSeek-V2-Lite: hidden 2048,
// 16 heads, MLA 192/128, kv_lora 512, experts of width 1408, vocab 102400), in bf16, with the
// achieved TFLOP/s or GB/s and the fraction of the chip's bound measured in the same run: the
// bf16 GEMM bound is taken as the best of the linear cases, the memory bound as a device-to-device
// copy of 1 GiB. bench/cuda_ops_torch.py prints the same table for PyTorch on the same shapes
// (scripts/device/cuda_check.sh runs both).
//   bench_cuda_ops [reps]
#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <functional>
#include <random>
#include <string>
#include <vector>

#include "core/cuda.h"
#include "core/error.h"
#include "core/tensor.h"
#include "ops/activation.h"
#include "ops/attention.h"
#include "ops/cross_entropy.h"
#include "ops/cuda/cuda_ops.h"
#include "ops/cuda/gemv.h"
#include "ops/cuda/grouped_gemm_tc.h"
#include "ops/cuda/grouped_gemv.h"
#include "ops/embedding.h"
#include "ops/linear.h"
#include "ops/mla_cache.h"
#include "ops/mla_decode.h"
#include "ops/moe.h"
#include "ops/norm.h"
#include "ops/rope.h"
#include "ops/softmax.h"
#include "ops/swiglu.h"
#include "random_routing.h"

using namespace dseek;

namespace {

int g_reps = 20;
double g_copy_gbs = 0;  // measured memory bound, GB/s

Tensor rand_gpu(const Shape& shape, DType dtype, std::mt19937& rng, float scale = 1.0f) {
  std::uniform_real_distribution<float> dist(-scale, scale);
  std::vector<float> v(size_t(shape_numel(shape)));
  for (float& f : v) f = dist(rng);
  return Tensor::from_vector(v, shape).to(dtype).to(Device::CUDA);
}

// Median of `g_reps` timings of fn (each synchronised), in seconds; two warm-up calls first.
double time_op(const std::function<void()>& fn) {
  fn();
  fn();
  cuda::synchronize();
  std::vector<double> t;
  for (int r = 0; r < g_reps; ++r) {
    const auto t0 = std::chrono::steady_clock::now();
    fn();
    cuda::synchronize();
    t.push_back(std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count());
  }
  std::sort(t.begin(), t.end());
  return t[t.size() / 2];
}

// One table row: flops (0 for memory-bound ops) and bytes moved at minimum.
void row(const std::string& op, const std::string& shape, double flops, double bytes,
         const std::function<void()>& fn) {
  double s = 0;
  try {
    s = time_op(fn);
  } catch (const Error& e) {
    std::printf("| %-36s | %-30s | n/a: %s |\n", op.c_str(), shape.c_str(), e.what());
    return;
  }
  const double us = s * 1e6, tflops = flops / s / 1e12, gbs = bytes / s / 1e9;
  if (flops > 0) {
    std::printf("| %-36s | %-30s | %9.1f | %7.1f TFLOP/s | %7.0f GB/s |\n", op.c_str(),
                shape.c_str(), us, tflops, gbs);
  } else {
    std::printf("| %-36s | %-30s | %9.1f | %15s | %7.0f GB/s (%3.0f%% of copy) |\n", op.c_str(),
                shape.c_str(), us, "-", gbs, 100 * gbs / g_copy_gbs);
  }
}

std::string dims(std::initializer_list<int64_t> d) {
  std::string s;
  for (int64_t v : d) s += (s.empty() ? "" : "x") + std::to_string(v);
  return s;
}

}  // namespace

int main(int argc, char** argv) {
  if (argc > 1) g_reps = std::max(3, std::atoi(argv[1]));
  if (!cuda::available()) {
    std::fprintf(stderr, "bench_cuda_ops: %s\n", cuda::describe().c_str());
    return 1;
  }
  std::printf("device: %s\n", cuda::describe().c_str());
  std::mt19937 rng(7);
  const DType bf = DType::BF16;
  const size_t bf_bytes = 2;

  {  // The memory bound: copy 1 GiB device to device (read + write).
    Tensor a = Tensor::empty({int64_t(1) << 29}, bf, Device::CUDA);
    cuda::fill_bytes(a.raw(), 1, a.nbytes());
    Tensor b = Tensor::empty({int64_t(1) << 29}, bf, Device::CUDA);
    const double s = time_op([&] { cuda::copy_on_device(b.raw(), a.raw(), a.nbytes()); });
    g_copy_gbs = 2.0 * double(a.nbytes()) / s / 1e9;
    std::printf("memory bound: device copy %.0f GB/s (read + write)\n\n", g_copy_gbs);
  }

  std::printf("| op | shape | median µs | compute | memory |\n|---|---|---|---|---|\n");
  // GEMMs: y[T, out] = x[T, in]·Wᵀ.
  struct Gemm {
    const char* what;
    int64_t T, in, out;
  };
  for (const Gemm& g : {Gemm{"linear q_proj (prefill)", 4096, 2048, 3072},
                        Gemm{"linear dense up (prefill)", 4096, 2048, 10944},
                        Gemm{"linear expert up", 1024, 2048, 1408},
                        Gemm{"linear lm_head (prefill)", 4096, 2048, 102400},
                        Gemm{"linear lm_head (decode)", 1, 2048, 102400},
                        Gemm{"linear o_proj (decode b32)", 32, 2048, 2048}}) {
    const Tensor x = rand_gpu({g.T, g.in}, bf, rng), w = rand_gpu({g.out, g.in}, bf, rng, 0.05f);
    const double flops = 2.0 * double(g.T) * double(g.in) * double(g.out);
    const double bytes = double((g.T * g.in + g.out * g.in + g.T * g.out) * int64_t(bf_bytes));
    row(g.what, dims({g.T, g.in, g.out}), flops, bytes, [&] { ops::linear(x, w); });
  }
  {  // Backward of the dense up projection: dx and dW.
    const int64_t T = 4096, in = 2048, out = 10944;
    const Tensor x = rand_gpu({T, in}, bf, rng), w = rand_gpu({out, in}, bf, rng, 0.05f);
    const Tensor dy = rand_gpu({T, out}, bf, rng);
    Tensor dx = Tensor::empty({T, in}, bf, Device::CUDA);
    Tensor dw = Tensor::empty({out, in}, DType::F32, Device::CUDA);
    const double flops = 4.0 * double(T) * double(in) * double(out);
    row("linear backward dx+dW", dims({T, in, out}), flops, 0,
        [&] { ops::linear_backward_into(x, w, dy, &dx, &dw, nullptr, false); });
  }
  {  // Grouped expert GEMMs of a V2-Lite MoE layer (issue 10): 4096 tokens × top-6 of 64 experts
     // (≈ 384 rows each, random routing), gate/up [1408, 2048] and down [2048, 1408]; forward,
     // dx and dW (f32, overwritten), on each tensor-core kernel family this GPU runs (wgmma on
     // Hopper, mma.sync; ops/cuda/grouped_gemm_tc.h), beside one dense GEMM of
     // the same FLOPs (all rows through one weight: the cuBLASLt ceiling for this shape).
    const int64_t T = 4096, E = 64, K = 6, N = T * K;
    const ops::MoeDispatch d = bench::random_topk_dispatch(T, E, K, rng);
    struct Grouped {
      const char* what;
      int64_t in, out;
    };
    struct Family {
      bool wgmma, tma;
      const char* label;
    };
    std::vector<Family> families{{false, false, "mma.sync"}};
#ifdef DSEEK_HAS_CUDA
    const bool default_kernel = ops::cuda::grouped_gemm_wgmma();
    const bool default_tma = ops::cuda::tma_loads();
    if (ops::cuda::grouped_wgmma_available())
      families = {
          {true, true, "wgmma, TMA"}, {true, false, "wgmma, cp.async"}, {false, false, "mma.sync"}};
    const Tensor squares = Tensor::empty({1}, DType::I64, Device::CUDA);  // one double
#endif
    for (const Grouped& g : {Grouped{"gate/up", 2048, 1408}, Grouped{"down", 1408, 2048}}) {
      const ops::ExpertMatrices w =
          ops::expert_matrices(rand_gpu({E, g.out, g.in}, bf, rng, 0.05f));
      const ops::ExpertMatrices dw =
          ops::expert_matrices(Tensor::empty({E, g.out, g.in}, DType::F32, Device::CUDA));
      const Tensor x = rand_gpu({N, g.in}, bf, rng), dy = rand_gpu({N, g.out}, bf, rng);
      const double flops = 2.0 * double(N) * double(g.in) * double(g.out);
      const std::string shape = dims({N, E, g.in, g.out});
      {
        const Tensor w1 = rand_gpu({g.out, g.in}, bf, rng, 0.05f);
        row(std::string("dense linear, same FLOPs ") + g.what, dims({N, g.in, g.out}), flops, 0,
            [&] { ops::linear(x, w1); });
      }
      for (const Family& f : families) {
#ifdef DSEEK_HAS_CUDA
        ops::cuda::set_grouped_gemm_wgmma(f.wgmma);
        ops::cuda::set_tma_loads(f.tma);
#endif
        const std::string tag = std::string(" ") + g.what + " [" + f.label + "]";
        row("grouped_linear" + tag, shape, flops, 0, [&] { ops::grouped_linear(x, w, d.offsets); });
        row("grouped_linear dx" + tag, shape, flops, 0,
            [&] { ops::grouped_linear_backward_dx(dy, w, d.offsets); });
        row("grouped_linear dW" + tag, shape, flops, 0,
            [&] { ops::grouped_linear_backward_dw(x, dy, d.offsets, dw, false); });
#ifdef DSEEK_HAS_CUDA
        // As the training step takes it: with the squares for the gradient norm.
        row("grouped_linear dW + squares" + tag, shape, flops, 0, [&] {
          ops::grouped_linear_backward_dw(x, dy, d.offsets, dw, false,
                                          static_cast<double*>(squares.raw()));
        });
#endif
      }
#ifdef DSEEK_HAS_CUDA
      ops::cuda::set_grouped_gemm_wgmma(default_kernel);
      ops::cuda::set_tma_loads(default_tma);
#endif
    }
  }
  {
    const int64_t T = 4096, D = 2048;
    const Tensor x = rand_gpu({T, D}, bf, rng), w = rand_gpu({D}, bf, rng);
    row("rms_norm", dims({T, D}), 0, double(2 * T * D * int64_t(bf_bytes)),
        [&] { ops::rms_norm(x, w, 1e-6); });
    const Tensor dy = rand_gpu({T, D}, bf, rng);
    Tensor dx = Tensor::empty({T, D}, bf, Device::CUDA),
           dw = Tensor::empty({D}, DType::F32, Device::CUDA);
    row("rms_norm backward", dims({T, D}), 0, double(3 * T * D * int64_t(bf_bytes)),
        [&] { ops::rms_norm_backward_into(x, w, 1e-6, dy, dx, &dw, false); });
  }
  {
    const int64_t T = 4096, F = 10944;
    const Tensor g = rand_gpu({T, F}, bf, rng), u = rand_gpu({T, F}, bf, rng);
    row("silu_mul", dims({T, F}), 0, double(3 * T * F * int64_t(bf_bytes)),
        [&] { ops::silu_mul(g, u); });
  }
  {
    const int64_t T = 4096, H = 16, d = 64;
    Tensor q = rand_gpu({T, H, d}, bf, rng);
    std::vector<float> inv_freq(size_t(d / 2));
    for (size_t j = 0; j < inv_freq.size(); ++j)
      inv_freq[j] = std::pow(10000.0f, -2.0f * float(j) / float(d));
    row("rope (in place)", dims({T, H, d}), 0, double(2 * T * H * d * int64_t(bf_bytes)),
        [&] { ops::rope_inplace(q, 0, inv_freq, 1.0f, true); });
  }
  {
    const int64_t T = 4096, V = 102400, D = 2048;
    const Tensor table = rand_gpu({V, D}, bf, rng);
    std::vector<int32_t> ids(static_cast<size_t>(T));
    for (auto& id : ids) id = int32_t(rng() % uint32_t(V));
    row("embedding", dims({T, D}), 0, double(2 * T * D * int64_t(bf_bytes)),
        [&] { ops::embedding(table, ids); });
    const Tensor logits = rand_gpu({T, V}, bf, rng, 4.0f);
    row("cross_entropy forward", dims({T, V}), 0, double(T * V * int64_t(bf_bytes)),
        [&] { ops::cross_entropy_forward(logits, ids); });
    const Tensor scores = rand_gpu({T, 2048}, bf, rng);
    row("softmax", dims({T, 2048}), 0, double(2 * T * 2048 * int64_t(bf_bytes)),
        [&] { ops::softmax(scores); });
  }
  {  // Causal attention, bf16 (the tensor-core kernels): MLA prefill (16 heads, qk 192 = 128 nope
     // + 64 rope, v 128) at 1K/2K/4K, and plain multi-head attention with head dim 128 at 4K.
     // FLOPs count the causal half: 2·(T²/2)·H·(dk + dv) forward, 2.5× that backward (the
     // FlashAttention convention: 5 products of the forward's 2 halves).
    struct Shape {
      const char* name;
      int64_t T, H, dk, dv;
    };
    for (const Shape& a : {Shape{"MLA", 1024, 16, 192, 128}, Shape{"MLA", 2048, 16, 192, 128},
                           Shape{"MLA", 4096, 16, 192, 128}, Shape{"MHA", 4096, 16, 128, 128}}) {
      const int64_t T = a.T, H = a.H, dk = a.dk, dv = a.dv;
      const Tensor q = rand_gpu({T, H, dk}, bf, rng), k = rand_gpu({T, H, dk}, bf, rng);
      const Tensor v = rand_gpu({T, H, dv}, bf, rng);
      const double flops = double(H) * double(T) * double(T) * double(dk + dv);  // causal half
      row(std::string("causal attention (") + a.name + ")", dims({T, H, dk, dv}), flops, 0,
          [&] { ops::causal_attention(q, k, v, 0.07f); });
      const Tensor dout = rand_gpu({T, H, dv}, bf, rng);
      row(std::string("causal attention bwd (") + a.name + ")", dims({T, H, dk, dv}), 2.5 * flops,
          0, [&] { ops::causal_attention_backward(q, k, v, 0.07f, dout); });
    }
  }
  {  // A training batch's sequences (MLA, 4096 rows): 2 × 2048 and 32 documents of 128, as one
     // launch a kernel (ops::causal_attention_packed) and as a launch and a copy a sequence (what
     // training did before). FLOPs: each sequence's causal half, as above.
    const int64_t N = 4096, H = 16, dk = 192, dv = 128;
    const Tensor q = rand_gpu({N, H, dk}, bf, rng), k = rand_gpu({N, H, dk}, bf, rng);
    const Tensor v = rand_gpu({N, H, dv}, bf, rng), dout = rand_gpu({N, H, dv}, bf, rng);
    for (const int64_t docs : {int64_t(2), int64_t(32)}) {
      const std::vector<int64_t> lengths(size_t(docs), N / docs);
      double flops = 0;
      for (int64_t n : lengths) flops += double(H) * double(n) * double(n) * double(dk + dv);
      const auto rows = [](const Tensor& t, int64_t s, int64_t n) { return t.slice(0, s, s + n); };
      const std::string shape = std::to_string(docs) + "x" + std::to_string(N / docs) + "," +
                                std::to_string(H) + "," + std::to_string(dk) + "," +
                                std::to_string(dv);
      row("causal attention packed, one launch", shape, flops, 0,
          [&] { ops::causal_attention_packed(q, k, v, 0.07f, lengths); });
      row("causal attention packed, a launch a sequence", shape, flops, 0, [&] {
        Tensor out = Tensor::empty({N, H, dv}, bf, Device::CUDA);
        int64_t s = 0;
        for (int64_t n : lengths) {
          rows(out, s, n).copy_from(
              ops::causal_attention(rows(q, s, n), rows(k, s, n), rows(v, s, n), 0.07f));
          s += n;
        }
      });
      row("causal attention packed bwd, one launch", shape, 2.5 * flops, 0,
          [&] { ops::causal_attention_packed_backward(q, k, v, 0.07f, dout, lengths); });
      row("causal attention packed bwd, a launch a sequence", shape, 2.5 * flops, 0, [&] {
        ops::AttentionGrads g{Tensor::empty(q.shape(), bf, Device::CUDA),
                              Tensor::empty(k.shape(), bf, Device::CUDA),
                              Tensor::empty(v.shape(), bf, Device::CUDA)};
        int64_t s = 0;
        for (int64_t n : lengths) {
          const ops::AttentionGrads p = ops::causal_attention_backward(
              rows(q, s, n), rows(k, s, n), rows(v, s, n), 0.07f, rows(dout, s, n));
          rows(g.dq, s, n).copy_from(p.dq);
          rows(g.dk, s, n).copy_from(p.dk);
          rows(g.dv, s, n).copy_from(p.dv);
          s += n;
        }
      });
    }
  }
  {  // The routed experts of one decode step (one token, 6 of 64 V2-Lite experts): the grouped
     // GEMVs of gate and up as two launches (before) and as one over the stacked [gate; up]
     // matrices (model/mlp.h's gate_up), and down. x20 back to back, synchronised once; bytes:
     // the six experts' weights read once per call (the roofline of a decode step's experts).
    const int64_t E = 64, K = 6, I = 1408, D = 2048;
    const ops::MoeDispatch d = bench::random_topk_dispatch(1, E, K, rng);
    const Tensor x = rand_gpu({K, D}, bf, rng), h = rand_gpu({K, I}, bf, rng);
    const Tensor gate_up = rand_gpu({E, 2 * I, D}, bf, rng, 0.05f);
    const ops::ExpertMatrices stacked = ops::expert_matrices(gate_up);
    std::vector<Tensor> gates, ups;
    for (int64_t e = 0; e < E; ++e) {
      gates.push_back(gate_up.select(0, e).slice(0, 0, I));
      ups.push_back(gate_up.select(0, e).slice(0, I, 2 * I));
    }
    const ops::ExpertMatrices gate = ops::expert_matrices(gates), up = ops::expert_matrices(ups);
    const ops::ExpertMatrices down = ops::expert_matrices(rand_gpu({E, D, I}, bf, rng, 0.05f));
    const double half = double(K * I * D * int64_t(bf_bytes));
    row("grouped gemv x20 gate, up (2 launches)", dims({1, K, D, I}), 0, 20 * 2 * half, [&] {
      for (int i = 0; i < 20; ++i) {
        ops::grouped_linear(x, gate, d.offsets);
        ops::grouped_linear(x, up, d.offsets);
      }
    });
    for (bool streaming : {true, false}) {
      // One row per expert: gemv_dot.cuh's loads in flight, or the chunk loop (before).
      ops::cuda::set_grouped_gemv_streaming(streaming);
      const std::string how = streaming ? " (one-row streaming)" : " (chunk loop)";
      row("grouped gemv x20 gate_up" + how, dims({1, K, D, 2 * I}), 0, 20 * 2 * half, [&] {
        for (int i = 0; i < 20; ++i) ops::grouped_linear(x, stacked, d.offsets);
      });
      row("grouped gemv x20 down" + how, dims({1, K, I, D}), 0, 20 * half, [&] {
        for (int i = 0; i < 20; ++i) ops::grouped_linear(h, down, d.offsets);
      });
    }
    ops::cuda::set_grouped_gemv_streaming(true);
  }
  {  // The dense projections of one decode step (one token) and the head: the weight-streaming GEMV
     // (ops/cuda/gemv.h) beside cuBLASLt on the same call. x20 back to back, synchronised once;
     // bytes: the weight read once per call.
    struct Dense {
      const char* name;
      int64_t in, out;
    };
    for (const Dense& c : {Dense{"q_proj", 2048, 3072}, Dense{"kv_a_proj", 2048, 576},
                           Dense{"o_proj", 2048, 2048}, Dense{"shared gate_up", 2048, 5632},
                           Dense{"shared down", 2816, 2048}, Dense{"lm_head", 2048, 102400}}) {
      const Tensor x = rand_gpu({1, c.in}, bf, rng), w = rand_gpu({c.out, c.in}, bf, rng, 0.05f);
      const double bytes = double(c.in * c.out * int64_t(bf_bytes));
      for (bool gemv : {true, false}) {
        ops::cuda::set_linear_gemv(gemv);
        row(std::string("linear x20 ") + c.name + (gemv ? " (gemv)" : " (cuBLASLt)"),
            dims({1, c.in, c.out}), 0, 20 * bytes, [&] {
              for (int i = 0; i < 20; ++i) ops::linear(x, w);
            });
      }
      ops::cuda::set_linear_gemv(true);
    }
  }
  {  // MLA's absorbed decode over the latent cache (rank 512 + rope 64): batch 1 of V2-Lite (16
     // heads) and V3 (128) at several cache lengths, the tensor-core kernel beside the SIMT one
     // (set_mla_decode_tensor_cores). A decode call is a few µs, so each timing is 20 calls back to
     // back, synchronised once (the other rows' one synchronisation a call would dominate).
     // Bytes: the latent rows read once, the minimum.
    struct Case {
      int64_t T, H, S;
    };
    for (const Case& c : {Case{1, 16, 190}, Case{1, 16, 1024}, Case{1, 16, 4096},
                          Case{1, 16, 32768}, Case{2, 16, 4096}, Case{1, 128, 4096}}) {
      const Tensor q = rand_gpu({c.T, c.H, 576}, bf, rng), latent = rand_gpu({c.S, 576}, bf, rng);
      const double bytes = double(c.S * 576 * int64_t(bf_bytes));
      for (const char* kernel : {"tensor cores", "simt"}) {
        ops::cuda::set_mla_decode_tensor_cores(std::string(kernel) != "simt");
        row(std::string("mla_decode x20 (") + kernel + ")", dims({c.T, c.H, c.S}), 0, 20 * bytes,
            [&] {
              for (int i = 0; i < 20; ++i) ops::mla_decode(q, latent, 512, 0.07f);
            });
      }
      ops::cuda::set_mla_decode_tensor_cores(true);
    }
  }
  {  // A decode step's small fused kernels beside the separate ops they replace (one token of
     // V2-Lite, x20 back to back, synchronised once): the latent cache append (rms_norm, k_pe
     // copy and rotation, two row scatters) and the MoE routing (route, dispatch, permute).
     // Bytes: the rows read and written once.
    const Tensor kv_a = rand_gpu({1, 576}, bf, rng), w = rand_gpu({512}, bf, rng);
    const Tensor rows = rand_gpu({4096, 576}, bf, rng);
    const Tensor pos = Tensor::from_i64({190}).to(Device::CUDA);
    std::vector<float> inv_freq(32);
    for (int j = 0; j < 32; ++j) inv_freq[size_t(j)] = float(std::pow(10000.0, -2.0 * j / 64));
    for (bool fused : {true, false}) {
      ops::set_mla_cache_append_fused(fused);
      row(std::string("mla_cache_append x20 (") + (fused ? "one kernel)" : "five ops)"),
          dims({1, 512, 64}), 0, 20 * 2 * 576 * 2.0, [&] {
            for (int i = 0; i < 20; ++i)
              ops::mla_cache_append(kv_a, w, 1e-6, pos, inv_freq, 1.0f, true, rows, pos);
          });
    }
    ops::set_mla_cache_append_fused(true);
    ops::MoeRouteParams p;
    p.experts = 64;
    p.top_k = 6;
    p.scale = true;
    const Tensor logits = rand_gpu({1, 64}, DType::F32, rng, 3.0f);
    const Tensor x = rand_gpu({1, 2048}, bf, rng);
    for (bool fused : {true, false}) {
      ops::set_moe_small_route(fused);
      row(std::string("moe_route_permute x20 (") + (fused ? "one kernel)" : "three ops)"),
          dims({1, 64, 6, 2048}), 0, 20 * 7 * 2048 * 2.0, [&] {
            for (int i = 0; i < 20; ++i) (void)ops::moe_route_permute(x, logits, p);
          });
    }
    ops::set_moe_small_route(true);
    // The absorbed MLA's per-head products of one token (16 heads): the per-head GEMV beside
    // cuBLASLt's strided batch. Bytes: the per-head matrices read once.
    struct Heads {
      const char* name;
      int64_t K, N;
    };
    for (const Heads& c :
         {Heads{"absorb q (W_UK)", 128, 512}, Heads{"un-absorb (W_UV)", 512, 128}}) {
      const Tensor hx = rand_gpu({1, 16, c.K}, bf, rng), hw = rand_gpu({16, c.K, c.N}, bf, rng);
      for (bool gemv : {true, false}) {
        ops::cuda::set_linear_gemv(gemv);
        row(std::string("head_matmul x20 ") + c.name + (gemv ? " (gemv)" : " (cuBLASLt)"),
            dims({1, 16, c.K, c.N}), 0, 20 * 16 * c.K * c.N * 2.0, [&] {
              for (int i = 0; i < 20; ++i) (void)ops::head_matmul(hx, hw);
            });
      }
      ops::cuda::set_linear_gemv(true);
    }
  }
  {  // The down projections of one decode step with silu_mul computed inside the GEMV
     // (ops/swiglu.h) beside silu_mul and the GEMV as two kernels: the shared experts (2 × 1408
     // wide) and the routed ones (6 of 64, 1408 wide). x20 back to back; bytes: the weights read
     // once.
    const int64_t E = 64, K = 6, I = 1408, D = 2048;
    const ops::MoeDispatch d = bench::random_topk_dispatch(1, E, K, rng);
    const Tensor gu_shared = rand_gpu({1, 4 * I}, bf, rng),
                 w_shared = rand_gpu({D, 2 * I}, bf, rng);
    const Tensor gu = rand_gpu({K, 2 * I}, bf, rng);
    const ops::ExpertMatrices down = ops::expert_matrices(rand_gpu({E, D, I}, bf, rng, 0.05f));
    for (int variant = 0; variant < 3; ++variant) {
      const bool fused = variant < 2;
      ops::set_swiglu_fused(fused);
      ops::cuda::set_gemv_swiglu_shared(variant == 0);
      const std::string how = variant == 0   ? " (fused, h in shared memory)"
                              : variant == 1 ? " (fused, h recomputed a warp)"
                                             : " (two kernels)";
      row("linear_swiglu x20 shared down" + how, dims({1, 2 * I, D}), 0, 20 * 2.0 * I * D * 2, [&] {
        for (int i = 0; i < 20; ++i) (void)ops::linear_swiglu(gu_shared, w_shared);
      });
      row("grouped_linear_swiglu x20 down" + how, dims({1, K, I, D}), 0, 20 * double(K) * I * D * 2,
          [&] {
            for (int i = 0; i < 20; ++i) (void)ops::grouped_linear_swiglu(gu, down, d.offsets);
          });
    }
    ops::set_swiglu_fused(true);
    ops::cuda::set_gemv_swiglu_shared(true);
  }
  return 0;
}
