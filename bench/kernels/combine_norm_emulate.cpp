// Host emulation of the MoE layer's fused end (combine_add_rms_norm_kernel in
// src/ops/cuda/moe_combine_kernels.cuh: the combine, the residual add and the next layer's RMS
// norm in one block) for machines without a GPU: the kernels' own source on host threads
// (tc_emulation.h). It checks that the fused kernel gives, bit for bit, what the two kernels it
// replaces give one after the other (combine_kernel, then norm_kernels.cuh's add_rms_norm_kernel
// over its output and the residual, each with its own launch shape), and that both are close to
// a double-precision reference: bf16 and f32 activations, f32 and bf16 norm weights, with and
// without the shared experts' row, positions of -1 (an expert on another rank), a decode step's
// shape (one token, 6 of 64 experts, 2048 columns) and a few tokens of odd width. Not timing.
// Build and run by hand (from the repository root):
//   g++ -std=c++20 -O1 -pthread -Wno-unknown-pragmas -I src -I /usr/local/cuda/include
//       bench/kernels/combine_norm_emulate.cpp -o /tmp/combine_norm_emulate
//   /tmp/combine_norm_emulate
#include "tc_emulation.h"
// clang-format off: the emulation must come first
#include "ops/cuda/moe_combine_kernels.cuh"
#include "ops/cuda/norm_kernels.cuh"
// clang-format on

#include <cstdio>
#include <random>

using namespace dseek::ops::cuda;
using dseek::DType;

namespace {

struct Case {
  int64_t T, K, D;
  bool add, bf16_weight;
};

template <typename T>
std::vector<uint8_t> bytes_of(const std::vector<T>& v) {
  std::vector<uint8_t> b(v.size() * sizeof(T));
  std::memcpy(b.data(), v.data(), b.size());
  return b;
}

template <typename T>
bool run_case(const Case& c, std::mt19937& rng) {
  const int64_t T_ = c.T, K = c.K, D = c.D, N = T_ * K;
  std::normal_distribution<float> dist(0.0f, 1.0f);
  const auto fill = [&](int64_t n, float scale) {
    std::vector<T> v(static_cast<size_t>(n));
    for (T& x : v) x = from_f32<T>(scale * dist(rng));
    return v;
  };
  const std::vector<T> y = fill(N * D, 1.0f), add = fill(T_ * D, 0.5f),
                       residual = fill(T_ * D, 4.0f);
  // Each token's K slots in a shuffled order of positions; every 5th slot -1 (another rank's).
  std::vector<int32_t> position(static_cast<size_t>(N));
  for (int64_t i = 0; i < N; ++i) position[size_t(i)] = int32_t(i);
  std::shuffle(position.begin(), position.end(), rng);
  for (int64_t i = 0; i < N; i += 5) position[size_t(i)] = -1;
  std::vector<float> weights(static_cast<size_t>(N));
  for (float& w : weights) w = std::abs(dist(rng)) / float(K);
  std::vector<float> norm_f32(static_cast<size_t>(D));
  for (float& w : norm_f32) w = 1.0f + 0.1f * dist(rng);
  std::vector<__nv_bfloat16> norm_bf16(static_cast<size_t>(D));
  for (int64_t j = 0; j < D; ++j) norm_bf16[size_t(j)] = __float2bfloat16_rn(norm_f32[size_t(j)]);
  const void* norm_w = c.bf16_weight ? static_cast<const void*>(norm_bf16.data()) : norm_f32.data();
  const DType w_dtype = c.bf16_weight ? DType::BF16 : DType::F32;
  const T* add_p = c.add ? add.data() : nullptr;
  const float eps = 1e-6f;
  const unsigned row_threads = unsigned(row_block_threads(D));

  // The two kernels, with their own launch shapes (moe.cu's combine: a block a token's 256
  // columns for few tokens; norm.cu: a block a row).
  std::vector<T> combined(static_cast<size_t>(T_ * D)), normed_two(size_t(T_ * D));
  const unsigned columns = 256, column_blocks = unsigned((D + columns - 1) / columns);
  gridDim = uint3{unsigned(T_), column_blocks, 1};
  for (unsigned t = 0; t < unsigned(T_); ++t)
    for (unsigned b = 0; b < column_blocks; ++b)
      run_block(uint3{t, b, 0}, columns, [&] {
        combine_kernel<T>(y.data(), weights.data(), position.data(), K, D, add_p, combined.data());
      });
  std::vector<T> sum_two = combined;
  gridDim = uint3{unsigned(T_), 1, 1};
  for (unsigned t = 0; t < unsigned(T_); ++t)
    run_block(uint3{t, 0, 0}, row_threads, [&] {
      add_rms_norm_kernel<T>(sum_two.data(), residual.data(), norm_w, w_dtype, normed_two.data(), D,
                             eps);
    });
  // The fused kernel: a block a token.
  std::vector<T> sum_one(static_cast<size_t>(T_ * D), from_f32<T>(NAN)), normed_one = sum_one;
  for (unsigned t = 0; t < unsigned(T_); ++t)
    run_block(uint3{t, 0, 0}, row_threads, [&] {
      combine_add_rms_norm_kernel<T>(y.data(), weights.data(), position.data(), K, D, add_p,
                                     residual.data(), norm_w, w_dtype, eps, sum_one.data(),
                                     normed_one.data());
    });
  const bool same =
      bytes_of(sum_one) == bytes_of(sum_two) && bytes_of(normed_one) == bytes_of(normed_two);

  // The double reference: relative RMS error of the normed output.
  double err = 0, ref = 0;
  for (int64_t t = 0; t < T_; ++t) {
    std::vector<double> s(static_cast<size_t>(D));
    double ss = 0;
    for (int64_t j = 0; j < D; ++j) {
      double acc = 0;
      for (int64_t k = 0; k < K; ++k) {
        const int32_t p = position[size_t(t * K + k)];
        if (p >= 0) acc += double(to_f32(y[size_t(p * D + j)])) * weights[size_t(t * K + k)];
      }
      if (c.add) acc += to_f32(add[size_t(t * D + j)]);
      s[size_t(j)] = acc + to_f32(residual[size_t(t * D + j)]);
      ss += s[size_t(j)] * s[size_t(j)];
    }
    const double r = 1.0 / std::sqrt(ss / double(D) + eps);
    for (int64_t j = 0; j < D; ++j) {
      const double w = c.bf16_weight ? double(__bfloat162float(norm_bf16[size_t(j)]))
                                     : double(norm_f32[size_t(j)]);
      const double want = w * s[size_t(j)] * r, got = to_f32(normed_one[size_t(t * D + j)]);
      err += (got - want) * (got - want);
      ref += want * want;
    }
  }
  const double rel = std::sqrt(err / ref);
  const bool close = rel < (sizeof(T) == 2 ? 1e-2 : 1e-5);
  std::printf(
      "T %2ld K %d D %4ld %s, %s norm weight%s: fused = two kernels %s, rel. RMS error "
      "%.2e %s\n",
      long(T_), int(K), long(D), sizeof(T) == 2 ? "bf16" : "f32 ", c.bf16_weight ? "bf16" : "f32",
      c.add ? ", + shared" : "", same ? "ok" : "FAIL", rel, close ? "ok" : "FAIL");
  return same && close;
}

}  // namespace

int main() {
  std::mt19937 rng(7);
  bool ok = true;
  ok &= run_case<__nv_bfloat16>({1, 6, 2048, true, false}, rng);  // V2-Lite's decode step
  ok &= run_case<__nv_bfloat16>({1, 6, 2048, false, true}, rng);
  ok &= run_case<__nv_bfloat16>({3, 8, 200, true, true}, rng);  // a row shorter than a block
  ok &= run_case<float>({2, 6, 1040, true, false}, rng);
  ok &= run_case<float>({4, 3, 72, false, true}, rng);
  std::printf("%s\n", ok ? "all ok" : "FAILURES");
  return ok ? 0 : 1;
}
