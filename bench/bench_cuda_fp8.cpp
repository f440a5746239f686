// FP8 GEMM benchmark (issue 4): ops::fp8_gemm (1×128 activation tiles × 128×128 weight blocks)
// against the bf16 cuBLASLt linear on the same shapes, dense (DeepSeek-V3 projections) and
// MoE-shaped (one expert's gate/up and down GEMM per call over ragged token counts, as a grouped
// FP8 GEMM would see them; no grouped FP8 kernel exists yet). Also times the activation
// quantisation that linear_fp8 adds. fp8_gemm runs as ops::fp8_gemm picks (cuBLASLt's
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
#include <vector>

#include "core/cuda.h"
#include "core/tensor.h"
#include "ops/fp8.h"
#include "ops/linear.h"

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
void bench(const std::string& name, const std::vector<int64_t>& rows, int64_t K, int64_t N,
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
  bench("dense q_a_proj", {4096}, 7168, 1536, rng);
  bench("dense o_proj", {4096}, 16384, 7168, rng);
  bench("decode o_proj", {1}, 16384, 7168, rng);
  // Ragged expert loads (tokens per expert after top-8 routing of 4096 tokens over 256 experts
  // are ~128 on average with a long tail).
  const std::vector<int64_t> ragged = {1, 17, 64, 128, 129, 200, 384, 1000};
  bench("MoE gate/up (ragged)", ragged, 7168, 2 * 2048, rng);
  bench("MoE down (ragged)", ragged, 2048, 7168, rng);
  return 0;
}
