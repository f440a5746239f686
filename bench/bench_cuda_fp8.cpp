// FP8 GEMM benchmark (issue 4): ops::fp8_gemm (1×128 activation tiles × 128×128 weight blocks)
// against the bf16 cuBLASLt linear on the same shapes, dense (DeepSeek-V3 projections) and
// MoE-shaped (one expert's gate/up and down GEMM per call over ragged token counts). Also times
// the activation quantisation that linear_fp8 adds. A second table times the grouped FP8 GEMMs of
// training (ops/fp8_train.h) on a V2-Lite MoE layer — one launch for all 64 experts over ragged
// loads — on each kernel family this GPU runs (wgmma on Hopper, the CUDA-core kernels), beside
// the bf16 grouped GEMMs on the same shape. A third times the activation quantisations of that
// layer against the copy bandwidth. fp8_gemm runs as ops::fp8_gemm picks (cuBLASLt's
// block-scaled FP8 GEMM on Hopper where it applies: K and N multiples of 128) and, for
// comparison, forced onto the plain f32-FMA kernel, both with f32 output (cuBLASLt takes only f32
// output for now: see fp8_cublaslt.cpp). The last column is the fraction of the
// H100/H200 SXM dense FP8 tensor-core peak (1979 TFLOP/s) that the first reaches.
//   bench_cuda_fp8 [reps]
#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <functional>
#include <random>
#include <string>
#include <tuple>
#include <vector>

#include "core/cuda.h"
#include "core/tensor.h"
#include "ops/cuda/fp8_kernels.h"
#include "ops/cuda/fp8_train_kernels.h"
#include "ops/cuda/grouped_gemm_tc.h"
#include "ops/fp8.h"
#include "ops/fp8_train.h"
#include "ops/linear.h"
#include "ops/moe.h"
#include "random_routing.h"

using namespace dseek;

namespace {

constexpr double kFp8PeakTflops = 1979.0;
int g_reps = 10;

Tensor rand_gpu(const Shape& shape, DType dtype, std::mt19937& rng, float scale = 1.0f) {
  std::uniform_real_distribution<float> dist(-scale, scale);
  std::vector<float> v(size_t(shape_numel(shape)));
  for (float& f : v) f = dist(rng);
  return Tensor::from_vector(v, shape).to(dtype).to(Device::CUDA);
}

double time_op(const std::function<void()>& fn) {
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

// rows: token counts of the GEMMs timed together (one for a dense layer, one per expert for MoE).
void bench_gemm(const std::string& name, const std::vector<int64_t>& rows, int64_t K, int64_t N,
                std::mt19937& rng) {
  std::vector<ops::Fp8Tensor> a;
  std::vector<Tensor> x_bf16;
  double flops = 0;
  for (int64_t M : rows) {
    const Tensor x = rand_gpu({M, K}, DType::BF16, rng);
    a.push_back(ops::quantize_fp8(x, ops::Fp8Layout::Tile1x128, false, "x"));
    x_bf16.push_back(x);
    flops += 2.0 * double(M) * double(K) * double(N);
  }
  const Tensor w_bf16 = rand_gpu({N, K}, DType::BF16, rng, 0.05f);
  const ops::Fp8Tensor w = ops::quantize_fp8(w_bf16, ops::Fp8Layout::Block128x128, false, "w");
  const double t_fp8 = time_op([&] {
    for (const ops::Fp8Tensor& ai : a) ops::fp8_gemm(ai, w, nullptr, DType::F32);
  });
  const double t_plain = time_op([&] {
    for (const ops::Fp8Tensor& ai : a)
      ops::fp8_gemm(ai, w, nullptr, DType::F32, ops::Fp8GemmKernel::Plain);
  });
  const double t_bf16 = time_op([&] {
    for (const Tensor& xi : x_bf16) ops::linear(xi, w_bf16);
  });
  const double t_quant = time_op([&] {
    for (const Tensor& xi : x_bf16) ops::quantize_fp8(xi, ops::Fp8Layout::Tile1x128, false, "x");
  });
  std::string shape = "M=";
  for (size_t i = 0; i < rows.size(); ++i) shape += (i ? "," : "") + std::to_string(rows[i]);
  shape += " K=" + std::to_string(K) + " N=" + std::to_string(N);
  const double fp8_tf = flops / t_fp8 / 1e12, plain_tf = flops / t_plain / 1e12,
               bf16_tf = flops / t_bf16 / 1e12;
  std::printf(
      "| %-22s | %-44s | %8.1f TFLOP/s | %8.1f TFLOP/s | %8.1f TFLOP/s | %7.1f us | %5.1f%% |\n",
      name.c_str(), shape.c_str(), fp8_tf, plain_tf, bf16_tf, t_quant * 1e6,
      100.0 * fp8_tf / kFp8PeakTflops);
}

// The grouped GEMMs of one V2-Lite MoE layer in training: 4096 tokens × top-6 of 64 experts
// (random routing, ≈ 384 rows an expert), gate/up [1408, 2048] and down [2048, 1408]. Kernel
// rows time the GEMM on operands quantised beforehand (the wgrad's includes its transposition of
// the column tiles); op rows time the whole training op (quantising x or dy, and every expert's
// f32 master weight, on each call).
// (The kernel entry points exist only in CUDA builds; the others print no second table.)
void bench_grouped([[maybe_unused]] std::mt19937& rng) {
#ifdef DSEEK_HAS_CUDA
  const int64_t T = 4096, E = 64, top_k = 6, N = T * top_k;
  const ops::MoeDispatch d = bench::random_topk_dispatch(T, E, top_k, rng);
  const int64_t* offsets = d.offsets.data<int64_t>();
  // tma: the wgmma kernels load through the tensor memory accelerator (warp-specialised,
  // fp8_tma_kernels.cuh) rather than cp.async.
  struct Family {
    bool wgmma;
    const char* label;
    bool tma = true;
  };
  const bool default_kernel = ops::cuda::grouped_gemm_wgmma();
  const bool default_tma = ops::cuda::tma_loads();
  std::vector<Family> families{{false, "CUDA cores"}};
  if (ops::cuda::grouped_wgmma_available())
    families.insert(families.begin(), {{true, "wgmma TMA", true}, {true, "wgmma cp.async", false}});
  std::printf("\n| %-34s | %-26s | %10s | %12s | %6s |\n", "grouped GEMM (V2-Lite MoE layer)",
              "shape N,E,in,out", "us", "TFLOP/s", "% peak");
  std::printf("|---|---|---|---|---|\n");
  auto row = [&](const std::string& what, const std::string& shape, double flops,
                 const std::function<void()>& fn) {
    const double t = time_op(fn), tf = flops / t / 1e12;
    std::printf("| %-34s | %-26s | %10.1f | %12.1f | %5.1f%% |\n", what.c_str(), shape.c_str(),
                t * 1e6, tf, 100.0 * tf / kFp8PeakTflops);
  };
  for (const auto& projection : {std::tuple<const char*, int64_t, int64_t>{"gate/up", 2048, 1408},
                                 std::tuple<const char*, int64_t, int64_t>{"down", 1408, 2048}}) {
    // Named (not bound): the rows' lambdas capture them.
    const char* what = std::get<0>(projection);
    const int64_t in = std::get<1>(projection), out = std::get<2>(projection);
    const std::string shape = std::to_string(N) + "," + std::to_string(E) + "," +
                              std::to_string(in) + "," + std::to_string(out);
    const double flops = 2.0 * double(N) * double(in) * double(out);
    const Tensor x = rand_gpu({N, in}, DType::BF16, rng), dy = rand_gpu({N, out}, DType::BF16, rng);
    const Tensor w_f32 = rand_gpu({E, out, in}, DType::F32, rng, 0.05f);
    const ops::ExpertMatrices w = ops::expert_matrices(w_f32);
    const ops::ExpertMatrices w_bf16 = ops::expert_matrices(w_f32.to(DType::BF16));
    const ops::ExpertMatrices dw =
        ops::expert_matrices(Tensor::empty({E, out, in}, DType::F32, Device::CUDA));
    // Operands as the training ops make them: x and dy in 1×128 tiles, W in 128×128 blocks
    // (the stacked [E·out, in] matrix: out is a multiple of 128, so its blocks are the experts'),
    // Wᵀ's blocks, and the column tiles of the wgrad.
    const ops::Fp8Tensor qx = ops::quantize_fp8(x, ops::Fp8Layout::Tile1x128, false, "x");
    const ops::Fp8Tensor qdy = ops::quantize_fp8(dy, ops::Fp8Layout::Tile1x128, false, "dy");
    const ops::Fp8Tensor qw =
        ops::quantize_fp8(w_f32.reshape({E * out, in}), ops::Fp8Layout::Block128x128, false, "w");
    const ops::Fp8Tensor qwt =
        ops::quantize_fp8(w_f32.transpose(1, 2).contiguous().reshape({E * in, out}),
                          ops::Fp8Layout::Block128x128, false, "wt");
    const ops::Fp8ColTiles cx = ops::quantize_fp8_cols(x, &d.offsets, "x");
    const ops::Fp8ColTiles cdy = ops::quantize_fp8_cols(dy, &d.offsets, "dy");
    // As the training op makes them for the tensor cores: quantised and transposed in one pass.
    const ops::Fp8ColTiles tx = ops::quantize_fp8_cols_transposed(x, d.offsets, "x");
    const ops::Fp8ColTiles tdy = ops::quantize_fp8_cols_transposed(dy, d.offsets, "dy");
    Tensor y = Tensor::empty({N, out}, DType::BF16, Device::CUDA);
    Tensor dx = Tensor::empty({N, in}, DType::BF16, Device::CUDA);
    row(std::string("bf16 grouped_linear ") + what, shape, flops,
        [&] { ops::grouped_linear(x, w_bf16, d.offsets); });
    row(std::string("bf16 grouped_linear dW ") + what, shape, flops,
        [&] { ops::grouped_linear_backward_dw(x, dy, d.offsets, dw, false); });
    for (const Family& f : families) {
      ops::cuda::set_grouped_gemm_wgmma(f.wgmma);
      ops::cuda::set_tma_loads(f.tma);
      const std::string tag = std::string(" ") + what + " [" + f.label + "]";
      row("fp8 forward" + tag, shape, flops, [&] {
        ops::cuda::fp8_grouped_gemm(qx.data.data<uint8_t>(), qx.scale.data<float>(), N, in, offsets,
                                    E, qw.data.data<uint8_t>(), qw.scale.data<float>(), out,
                                    y.raw(), DType::BF16);
      });
      row("fp8 dgrad" + tag, shape, flops, [&] {
        ops::cuda::fp8_grouped_gemm(qdy.data.data<uint8_t>(), qdy.scale.data<float>(), N, out,
                                    offsets, E, qwt.data.data<uint8_t>(), qwt.scale.data<float>(),
                                    in, dx.raw(), DType::BF16);
      });
      row("fp8 wgrad" + tag, shape, flops, [&] {
        ops::cuda::fp8_grouped_wgrad(cdy.data.data<uint8_t>(), cdy.scale.data<float>(),
                                     cx.data.data<uint8_t>(), cx.scale.data<float>(), N, out, in,
                                     offsets, E, static_cast<float* const*>(dw.table.raw()), 0.0f);
      });
      if (f.wgmma) {
        // The training op's: operands transposed beforehand, dW written (the step's first
        // contribution) or added to.
        for (float beta : {0.0f, 1.0f})
          row(std::string("fp8 wgrad, pre-transposed") + (beta != 0 ? " (+=)" : "") + tag, shape,
              flops, [&] {
                ops::cuda::fp8_grouped_wgrad_t(tdy.data.data<uint8_t>(), tdy.scale.data<float>(),
                                               tx.data.data<uint8_t>(), tx.scale.data<float>(), N,
                                               out, in, offsets, E,
                                               static_cast<float* const*>(dw.table.raw()), beta);
              });
        if (!f.tma) continue;  // the rest does not depend on the loads
        row("fp8 column tiles, transposed (x, dy)" + tag, shape, 0.0, [&] {
          ops::quantize_fp8_cols_transposed(x, d.offsets, "x");
          ops::quantize_fp8_cols_transposed(dy, d.offsets, "dy");
        });
      }
      row("fp8 forward op" + tag, shape, flops,
          [&] { ops::grouped_linear_fp8_forward(x, w, d.offsets, nullptr); });
    }
    ops::cuda::set_grouped_gemm_wgmma(default_kernel);
    ops::cuda::set_tma_loads(default_tma);
  }
#endif
}

// The activation quantisations of FP8 training on the V2-Lite MoE layer's shapes (24,576 permuted
// rows; x 2048 wide, the expert's inner 1408): µs and achieved GB/s (bytes read + codes and
// scales written), beside a device-to-device copy of the input (the bandwidth such a pass can
// reach). Row tiles on both kernels (ops/cuda/fp8.cu: 8 columns a lane, 4 columns a lane); the
// wgrad's column tiles quantised and transposed in one pass, from bf16 activations and from the
// forward's row tiles (x̂).
void bench_quantisation([[maybe_unused]] std::mt19937& rng) {
#ifdef DSEEK_HAS_CUDA
  constexpr int64_t T = 4096, E = 64, top_k = 6, N = T * top_k;
  const ops::MoeDispatch d = bench::random_topk_dispatch(T, E, top_k, rng);
  std::printf("\n| %-40s | %-14s | %10s | %10s | %14s |\n", "activation quantisation", "shape",
              "us", "GB/s", "copy GB/s");
  std::printf("|---|---|---|---|---|\n");
  for (int64_t cols : {int64_t(2048), int64_t(1408)}) {
    const Tensor x = rand_gpu({N, cols}, DType::BF16, rng);
    const std::string shape = std::to_string(N) + "x" + std::to_string(cols);
    const double in_bytes = double(N) * double(cols) * 2.0;
    const double t_copy = time_op([&] { x.clone(); });
    const double copy_gbs = 2.0 * in_bytes / t_copy / 1e9;
    auto line = [&](const std::string& what, double bytes, const std::function<void()>& fn) {
      const double t = time_op(fn);
      std::printf("| %-40s | %-14s | %10.1f | %10.1f | %14.1f |\n", what.c_str(), shape.c_str(),
                  t * 1e6, bytes / t / 1e9, copy_gbs);
    };
    // Codes (1 byte a value) and one f32 scale a 128-value tile.
    const double row_bytes = in_bytes + double(N) * double(cols) * (1.0 + 4.0 / 128.0);
    for (bool wide : {true, false}) {
      ops::cuda::set_quantize_fp8_rows_wide(wide);
      line(std::string("row tiles, bf16 (") + (wide ? "8" : "4") + " columns a lane)", row_bytes,
           [&] { ops::quantize_fp8(x, ops::Fp8Layout::Tile1x128, false, "x"); });
    }
    ops::cuda::set_quantize_fp8_rows_wide(true);
    const ops::Fp8Tensor rows = ops::quantize_fp8(x, ops::Fp8Layout::Tile1x128, false, "x");
    const double slots = double(ops::fp8_col_tile_rows(N, E));
    const double col_out = double(cols) * slots * (128.0 + 4.0);
    line("column tiles transposed, from bf16", in_bytes + col_out,
         [&] { ops::quantize_fp8_cols_transposed(x, d.offsets, "x"); });
    line("column tiles transposed, from row tiles", row_bytes - in_bytes + col_out,
         [&] { ops::quantize_fp8_cols_transposed(rows, d.offsets); });
  }
#endif
}

}  // namespace

int main(int argc, char** argv) {
  if (argc > 1) g_reps = std::max(1, std::atoi(argv[1]));
  if (!cuda::available()) {
    std::printf("no CUDA device: %s\n", cuda::describe().c_str());
    return 0;
  }
  std::mt19937 rng(7);
  std::printf("| %-22s | %-44s | %-15s | %-15s | %-15s | %-10s | %-6s |\n", "case", "shape",
              "fp8_gemm", "fp8_gemm plain", "bf16 linear", "quant x", "% peak");
  std::printf("|---|---|---|---|---|---|---|\n");
  // DeepSeek-V3: hidden 7168, q_lora 1536, kv_lora 512, MLA o_proj in 16384, experts of 2048.
  bench_gemm("dense q_a_proj", {4096}, 7168, 1536, rng);
  bench_gemm("dense o_proj", {4096}, 16384, 7168, rng);
  bench_gemm("decode o_proj", {1}, 16384, 7168, rng);
  // Ragged expert loads (tokens per expert after top-8 routing of 4096 tokens over 256 experts
  // are ~128 on average with a long tail).
  const std::vector<int64_t> ragged = {1, 17, 64, 128, 129, 200, 384, 1000};
  bench_gemm("MoE gate/up (ragged)", ragged, 7168, 2 * 2048, rng);
  bench_gemm("MoE down (ragged)", ragged, 2048, 7168, rng);
  bench_grouped(rng);
  bench_quantisation(rng);
  return 0;
}
