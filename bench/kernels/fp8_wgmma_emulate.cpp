// Host emulation of the FP8 training GEMMs on Hopper's wgmma (src/ops/cuda/fp8_wgmma_kernels.cuh)
// for machines without a GPU: the kernels' own source runs on host threads (tc_emulation.h reads
// the E4M3 operands through their descriptors) and the grouped row GEMM (f32 and bf16 outputs)
// and the grouped wgrad (overwrite and accumulate) are checked against a double reference of the
// block-scaled recipe, on ragged expert loads with empty experts, tails in every dimension, rows
// past the last expert, idle blocks past the real tile count and several promotion steps. The
// wgrad reads dyᵀ and xᵀ in the padded K-major layout this program builds the way
// fp8_train.cu's transpose_col_tiles_kernel does (the GPU backend tests check that kernel).
// It checks indexing, masks, scales and tails, not timing or asynchrony. Slow: small shapes only.
// Build and run by hand (repository root):
//   g++ -std=c++20 -O1 -pthread -Wno-unknown-pragmas -I src -I /usr/local/cuda/include
//       bench/kernels/fp8_wgmma_emulate.cpp -o /tmp/fp8_wgmma_emulate
//   /tmp/fp8_wgmma_emulate
#include "tc_emulation.h"
// clang-format off: the emulation must come first
#include "ops/cuda/fp8_wgmma_kernels.cuh"
// clang-format on

#include <cmath>
#include <cstdio>
#include <random>

namespace fw = dseek::ops::cuda::fp8_wgmma;
using dseek::ops::cuda::attention_tc::bf16;

namespace {

constexpr int kTile = 128;

// Random codes of finite E4M3 values (|v| ≤ 448; 0x7f and 0xff are NaN).
std::vector<uint8_t> random_codes(size_t n, std::mt19937& rng) {
  std::uniform_int_distribution<int> dist(0, 255);
  std::vector<uint8_t> v(n);
  for (auto& c : v) {
    do c = uint8_t(dist(rng));
    while ((c & 0x7f) == 0x7f);
  }
  return v;
}
std::vector<float> random_scales(size_t n, std::mt19937& rng) {
  std::uniform_real_distribution<float> dist(0.25f, 4.0f);
  std::vector<float> v(n);
  for (auto& s : v) s = dist(rng) / 448.0f;
  return v;
}
double decode(uint8_t c) {
  __nv_fp8_e4m3 v;
  v.__x = c;
  return double(float(v));
}
double value(float x) {
  return x;
}
double value(bf16 x) {
  return __bfloat162float(x);
}

struct Worst {
  double ratio = 0;
  void add(double got, double want, double bound) {
    const double d = std::abs(got - want);
    ratio = std::isfinite(got) ? std::max(ratio, d / bound) : INFINITY;
  }
};

struct Case {
  std::vector<int64_t> rows;  // per expert
  int64_t K, N;               // reduction and output width of the row GEMM; dW is [N, K]
  int64_t spare_rows;         // rows past the last expert (not written by the row GEMM)
};

// dense: the kernel's one-GEMM form (offsets nullptr) over all M rows, as one expert.
template <typename T>
Worst run_rows(const Case& c, const std::vector<int64_t>& expert_offsets, bool dense,
               std::mt19937& rng) {
  const int64_t M = expert_offsets.back() + c.spare_rows;
  const std::vector<int64_t> offsets = dense ? std::vector<int64_t>{0, M} : expert_offsets;
  const int64_t E = int64_t(offsets.size()) - 1, K = c.K, N = c.N;
  const int64_t kb = (K + kTile - 1) / kTile, nb = (N + kTile - 1) / kTile;
  std::vector<int64_t> tile_start{0};
  for (int64_t e = 0; e < E; ++e)
    tile_start.push_back(tile_start.back() +
                         (offsets[size_t(e + 1)] - offsets[size_t(e)] + fw::kBM - 1) / fw::kBM);
  const std::vector<uint8_t> a = random_codes(size_t(M * K), rng),
                             w = random_codes(size_t(E * N * K), rng);
  const std::vector<float> sa = random_scales(size_t(M * kb), rng),
                           sw = random_scales(size_t(E * nb * kb), rng);
  const T poison = T(NAN);
  std::vector<T> y(size_t(M * N), poison);
  const int64_t tiles = (offsets.back() + fw::kBM - 1) / fw::kBM + E;  // as the launcher
  gridDim = uint3{unsigned(tiles * nb), 1, 1};
  for (unsigned b = 0; b < gridDim.x; ++b)
    run_block(uint3{b, 0, 0}, fw::kThreads, [&] {
      fw::fp8_rows_wgmma_kernel<T>(a.data(), sa.data(), M, dense ? nullptr : offsets.data(),
                                   dense ? nullptr : tile_start.data(), E, w.data(), sw.data(), N,
                                   K, y.data());
    });
  Worst worst;
  for (int64_t e = 0; e < E; ++e)
    for (int64_t m = offsets[size_t(e)]; m < offsets[size_t(e + 1)]; ++m)
      for (int64_t n = 0; n < N; ++n) {
        double s = 0, abs = 0;
        for (int64_t b = 0; b < kb; ++b) {
          double part = 0;
          for (int64_t k = b * kTile; k < std::min(K, (b + 1) * kTile); ++k)
            part += decode(a[size_t(m * K + k)]) * decode(w[size_t((e * N + n) * K + k)]);
          const double scale = sa[size_t(m * kb + b)] * sw[size_t((e * nb + n / kTile) * kb + b)];
          s += part * scale;
          for (int64_t k = b * kTile; k < std::min(K, (b + 1) * kTile); ++k)
            abs += std::abs(decode(a[size_t(m * K + k)]) * decode(w[size_t((e * N + n) * K + k)])) *
                   scale;
        }
        // f32 sums of exact products (2^-20 of Σ|terms| covers them), a bf16 output one rounding
        // more.
        const double bound =
            std::ldexp(abs, -20) + (sizeof(T) == 2 ? std::abs(s) / 128 : 0) + 1e-30;
        worst.add(value(y[size_t(m * N + n)]), s, bound);
      }
  // Rows past the last expert stay poisoned.
  for (int64_t i = offsets.back() * N; i < M * N; ++i)
    if (!std::isnan(value(y[size_t(i)]))) worst.ratio = INFINITY;
  return worst;
}

// dW_e [N, K] from column tiles of dy [rows, N] and x [rows, K]; beta 0 and 1; the kernel with
// WG warpgroups a block.
template <int WG>
Worst run_wgrad(const Case& c, const std::vector<int64_t>& offsets, float beta, std::mt19937& rng) {
  const int64_t E = int64_t(c.rows.size()), K = c.K, N = c.N, rows = offsets.back() + c.spare_rows;
  const int64_t slots = rows / kTile + E, P = slots * kTile;
  const std::vector<uint8_t> dy = random_codes(size_t(rows * N), rng),
                             x = random_codes(size_t(rows * K), rng);
  const std::vector<float> sdy = random_scales(size_t(slots * N), rng),
                           sx = random_scales(size_t(slots * K), rng);
  // The padded transposed layout: row t of expert e at column 128·(o_e/128 + e) + (t − o_e).
  std::vector<uint8_t> dyt(size_t(N * P), 0), xt(size_t(K * P), 0);
  auto column = [&](int64_t e, int64_t t) {
    return (offsets[size_t(e)] / kTile + e) * kTile + (t - offsets[size_t(e)]);
  };
  for (int64_t e = 0; e < E; ++e)
    for (int64_t t = offsets[size_t(e)]; t < offsets[size_t(e + 1)]; ++t) {
      for (int64_t n = 0; n < N; ++n) dyt[size_t(n * P + column(e, t))] = dy[size_t(t * N + n)];
      for (int64_t k = 0; k < K; ++k) xt[size_t(k * P + column(e, t))] = x[size_t(t * K + k)];
    }
  std::vector<float> dw(size_t(E * N * K));
  std::uniform_real_distribution<float> base(-1.0f, 1.0f);
  for (auto& v : dw) v = beta == 0.0f ? NAN : base(rng);
  const std::vector<float> before = dw;
  std::vector<float*> dwp(static_cast<size_t>(E));
  for (int64_t e = 0; e < E; ++e) dwp[size_t(e)] = dw.data() + e * N * K;
  gridDim = uint3{unsigned((K + fw::kBN - 1) / fw::kBN), unsigned((N + 64 * WG - 1) / (64 * WG)),
                  unsigned(E)};
  for (unsigned z = 0; z < gridDim.z; ++z)
    for (unsigned yb = 0; yb < gridDim.y; ++yb)
      for (unsigned xb = 0; xb < gridDim.x; ++xb)
        run_block(uint3{xb, yb, z}, fw::threads(WG), [&] {
          fw::fp8_wgrad_wgmma_kernel<WG>(dyt.data(), sdy.data(), xt.data(), sx.data(), N, K, P,
                                         offsets.data(), dwp.data(), beta);
        });
  Worst worst;
  for (int64_t e = 0; e < E; ++e)
    for (int64_t n = 0; n < N; ++n)
      for (int64_t k = 0; k < K; ++k) {
        double s = 0, abs = 0;
        for (int64_t t = offsets[size_t(e)]; t < offsets[size_t(e + 1)]; ++t) {
          const int64_t slot = column(e, t) / kTile;
          const double term = decode(dy[size_t(t * N + n)]) * decode(x[size_t(t * K + k)]) *
                              sdy[size_t(slot * N + n)] * sx[size_t(slot * K + k)];
          s += term;
          abs += std::abs(term);
        }
        const size_t j = size_t((e * N + n) * K + k);
        const double want = beta == 0.0f ? s : before[j] + s;
        worst.add(dw[j], want, std::ldexp(abs + (beta == 0.0f ? 0 : 1), -20) + 1e-30);
      }
  return worst;
}

bool run_case(const Case& c, std::mt19937& rng) {
  std::vector<int64_t> offsets{0};
  for (int64_t r : c.rows) offsets.push_back(offsets.back() + r);
  const Worst y32 = run_rows<float>(c, offsets, false, rng),
              y16 = run_rows<bf16>(c, offsets, false, rng);
  const Worst dense = run_rows<float>(c, offsets, true, rng);
  const Worst dw0 = run_wgrad<1>(c, offsets, 0.0f, rng), dw1 = run_wgrad<1>(c, offsets, 1.0f, rng);
  const Worst dw2 = run_wgrad<2>(c, offsets, 0.0f, rng);
  const bool ok = y32.ratio <= 1 && y16.ratio <= 1 && dense.ratio <= 1 && dw0.ratio <= 1 &&
                  dw1.ratio <= 1 && dw2.ratio <= 1;
  std::printf(
      "E %ld rows %4ld (+%ld) K %3ld N %3ld: y f32 %.2e  y bf16 %.2e  dense %.2e  dW %.2e"
      "  dW+= %.2e  dW (2 warpgroups) %.2e  (err / bound)  %s\n",
      long(c.rows.size()), long(offsets.back()), long(c.spare_rows), long(c.K), long(c.N),
      y32.ratio, y16.ratio, dense.ratio, dw0.ratio, dw1.ratio, dw2.ratio, ok ? "ok" : "FAIL");
  return ok;
}

}  // namespace

int main() {
  std::mt19937 rng(11);
  bool ok = true;
  // One expert, one full tile and one promotion step.
  ok &= run_case({{128}, 128, 128, 0}, rng);
  // Ragged experts with empty ones (first, middle, last), offsets off the 128 grid, a k tail
  // (272 = 2 steps + 16), an n tail (144), rows past the last expert.
  ok &= run_case({{0, 130, 7, 0, 257, 0}, 272, 144, 5}, rng);
  // More promotion steps than ring stages (5 > 4) in both kernels (wgrad: 600 rows = 5 tiles).
  ok &= run_case({{600, 3}, 640, 32, 0}, rng);
  // An even number of steps (4: the overlapped row loop's last step in the second partial sum).
  ok &= run_case({{200, 77}, 512, 48, 0}, rng);
  // The tiny fixtures' expert widths: a reduction of 16 (one chunk a line) and outputs of 16.
  ok &= run_case({{3, 0, 40, 9}, 16, 64, 2}, rng);
  ok &= run_case({{3, 0, 40, 9}, 64, 16, 0}, rng);
  std::printf("%s\n", ok ? "all ok" : "FAILURES");
  return ok ? 0 : 1;
}
