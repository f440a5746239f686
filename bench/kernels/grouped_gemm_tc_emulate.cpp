// Host emulation of the bf16 tensor-core grouped expert GEMMs, both families: mma.sync
// (src/ops/cuda/grouped_gemm_tc_kernels.cuh) and Hopper wgmma (grouped_gemm_wgmma_kernels.cuh),
// for machines without a GPU: the kernels' own source runs on host threads (tc_emulation.h, which
// also reads wgmma's operands through their descriptors) and forward, dx and dW (overwrite and
// accumulate) are checked against a double reference on ragged expert loads with empty experts,
// tails in every dimension, a padded weight row stride, an unaligned weight (the plain-load path)
// and the idle blocks past the real tile count; so are the sums of squares the wgmma dW kernel
// takes of what it stores. It checks indexing, masks and tails, not timing or asynchrony.
// Slow (a barrier per warp step): small shapes only. Build and run by hand (repository root):
//   g++ -std=c++20 -O1 -pthread -Wno-unknown-pragmas -I src -I /usr/local/cuda/include
//       bench/kernels/grouped_gemm_tc_emulate.cpp -o /tmp/grouped_gemm_tc_emulate
//   /tmp/grouped_gemm_tc_emulate
#include "tc_emulation.h"
// clang-format off: the emulation must come first
#include "ops/cuda/grouped_gemm_tc_kernels.cuh"
#include "ops/cuda/grouped_gemm_wgmma_kernels.cuh"
// clang-format on

#include <cmath>
#include <cstdio>
#include <random>

using dseek::ops::cuda::attention_tc::bf16;

namespace {

// The two kernel families behind one interface: their tile shape and launches (each runs its
// grid's blocks one after another: rows<B_KN>(grid_tiles, ...) over the row kernel's grid of
// grid_tiles row tiles, dw(E, ...) over every dW tile).
struct MmaSync {
  static constexpr const char* kName = "mma.sync";
  static constexpr int kBM = dseek::ops::cuda::grouped_tc::kBM,
                       kBN = dseek::ops::cuda::grouped_tc::kBN;
  static constexpr unsigned kThreads = dseek::ops::cuda::grouped_tc::kThreads;
  template <bool B_KN>
  static void rows(int64_t grid_tiles, const bf16* A, const int64_t* offsets,
                   const int64_t* tile_start, int64_t E, const void* const* w, int64_t ldw,
                   int64_t n_total, int64_t k_total, bf16* C) {
    gridDim = uint3{unsigned(grid_tiles * ((n_total + kBN - 1) / kBN)), 1, 1};
    for (unsigned b = 0; b < gridDim.x; ++b)
      run_block(uint3{b, 0, 0}, kThreads, [&] {
        dseek::ops::cuda::grouped_tc::grouped_rows_tc_kernel<B_KN>(A, offsets, tile_start, E, w,
                                                                   ldw, n_total, k_total, C);
      });
  }
  static constexpr bool kSquares = false;  // the launcher sums the squares in another kernel
  static void dw(int64_t E, const bf16* x, const bf16* dy, const int64_t* offsets, int64_t out,
                 int64_t in, float* const* dw, float beta, std::vector<double>*) {
    for (int64_t e = 0; e < E; ++e)
      for (int64_t m = 0; m < (out + kBM - 1) / kBM; ++m)
        for (int64_t n = 0; n < (in + kBN - 1) / kBN; ++n)
          run_block(uint3{unsigned(n), unsigned(m), unsigned(e)}, kThreads, [&] {
            dseek::ops::cuda::grouped_tc::grouped_dw_tc_kernel(x, dy, offsets, out, in, dw, beta);
          });
  }
};
struct Wgmma {
  static constexpr const char* kName = "wgmma";
  static constexpr int kBM = dseek::ops::cuda::grouped_wgmma::kBM,
                       kBN = dseek::ops::cuda::grouped_wgmma::kBN;
  static constexpr unsigned kThreads = dseek::ops::cuda::grouped_wgmma::kThreads;
  template <bool B_KN>
  static void rows(int64_t grid_tiles, const bf16* A, const int64_t* offsets,
                   const int64_t* tile_start, int64_t E, const void* const* w, int64_t ldw,
                   int64_t n_total, int64_t k_total, bf16* C) {
    gridDim = uint3{unsigned(grid_tiles * ((n_total + kBN - 1) / kBN)), 1, 1};
    for (unsigned b = 0; b < gridDim.x; ++b)
      run_block(uint3{b, 0, 0}, kThreads, [&] {
        dseek::ops::cuda::grouped_wgmma::grouped_rows_wgmma_kernel<B_KN>(
            A, offsets, tile_start, E, w, ldw, n_total, k_total, C);
      });
  }
  static constexpr bool kSquares = true;  // each block's Σ dW² into its slot of `squares`
  static void dw(int64_t E, const bf16* x, const bf16* dy, const int64_t* offsets, int64_t out,
                 int64_t in, float* const* dw, float beta, std::vector<double>* squares) {
    const int64_t rows = (out + kBM - 1) / kBM, cols = (in + kBN - 1) / kBN;
    gridDim = uint3{unsigned(cols), unsigned(rows), unsigned(E)};
    squares->assign(size_t(E * rows * cols), NAN);
    for (int64_t e = 0; e < E; ++e)
      for (int64_t m = 0; m < rows; ++m)
        for (int64_t n = 0; n < cols; ++n)
          run_block(uint3{unsigned(n), unsigned(m), unsigned(e)}, kThreads, [&] {
            dseek::ops::cuda::grouped_wgmma::grouped_dw_wgmma_kernel(x, dy, offsets, out, in, dw,
                                                                     beta, squares->data());
          });
  }
};

std::vector<bf16> random_bf16(size_t n, std::mt19937& rng) {
  std::uniform_real_distribution<float> dist(-1.0f, 1.0f);
  std::vector<bf16> v(n);
  for (auto& x : v) x = __float2bfloat16_rn(dist(rng));
  return v;
}
double f(bf16 x) {
  return double(__bfloat162float(x));
}

// Worst |got − want| / bound over all elements (≤ 1 passes); NaN counts as a failure.
struct Worst {
  double ratio = 0;
  void add(double got, double want, double bound) {
    const double d = std::abs(got - want);
    ratio = std::isfinite(got) ? std::max(ratio, d / bound) : INFINITY;
  }
};

struct Case {
  std::vector<int64_t> rows;  // per expert
  int64_t in, out, ldw_pad;   // W_e is [out, in + ldw_pad]
  bool unaligned_w;           // expert 1's matrix starts 2 bytes past a 16-byte boundary
};

template <typename K>
bool run_case(const Case& c, std::mt19937& rng) {
  constexpr int kBM = K::kBM;
  const int64_t E = int64_t(c.rows.size()), in = c.in, out = c.out, ldw = in + c.ldw_pad;
  std::vector<int64_t> offsets{0}, tile_start{0};
  for (int64_t r : c.rows) {
    offsets.push_back(offsets.back() + r);
    tile_start.push_back(tile_start.back() + (r + kBM - 1) / kBM);
  }
  const int64_t N = offsets.back();
  // As the launcher: a 1-D grid, column tiles fastest, idle blocks past the real tiles included.
  const int64_t grid_tiles = (N + kBM - 1) / kBM + E;

  const std::vector<bf16> x = random_bf16(size_t(N * in), rng),
                          dy = random_bf16(size_t(N * out), rng);
  // One buffer for all weights with 8 spare elements, so that expert 1 can be shifted by one.
  std::vector<bf16> wbuf = random_bf16(size_t(E * out * ldw + 8), rng);
  std::vector<const void*> w(static_cast<size_t>(E));
  std::vector<const bf16*> wp(static_cast<size_t>(E));
  for (int64_t e = 0; e < E; ++e) {
    wp[size_t(e)] = wbuf.data() + e * out * ldw + (c.unaligned_w && e == 1 ? 1 : 0);
    w[size_t(e)] = wp[size_t(e)];
  }
  auto W = [&](int64_t e, int64_t o, int64_t i) { return f(wp[size_t(e)][o * ldw + i]); };
  auto expert_of = [&](int64_t r) {
    int64_t e = 0;
    while (offsets[size_t(e + 1)] <= r) ++e;
    return e;
  };

  const bf16 nan = __float2bfloat16_rn(NAN);
  std::vector<bf16> y(size_t(N * out), nan), dx(size_t(N * in), nan);
  std::vector<float> dw0(size_t(E * out * in), NAN), dw1(size_t(E * out * in));
  std::uniform_real_distribution<float> base(-1.0f, 1.0f);
  for (auto& v : dw1) v = base(rng);
  const std::vector<float> dw1_before = dw1;
  std::vector<float*> dwp0(static_cast<size_t>(E)), dwp1(static_cast<size_t>(E));
  for (int64_t e = 0; e < E; ++e) {
    dwp0[size_t(e)] = dw0.data() + e * out * in;
    dwp1[size_t(e)] = dw1.data() + e * out * in;
  }

  K::template rows<false>(grid_tiles, x.data(), offsets.data(), tile_start.data(), E, w.data(), ldw,
                          out, in, y.data());
  K::template rows<true>(grid_tiles, dy.data(), offsets.data(), tile_start.data(), E, w.data(), ldw,
                         in, out, dx.data());
  std::vector<double> squares0, squares1;
  K::dw(E, x.data(), dy.data(), offsets.data(), out, in, dwp0.data(), 0.0f, &squares0);
  K::dw(E, x.data(), dy.data(), offsets.data(), out, in, dwp1.data(), 1.0f, &squares1);
  // The blocks' sums of squares add up to Σ dW² of what they stored (each square is exact in
  // double; only the order of the sums differs).
  auto squares_error = [](const std::vector<double>& slots, const std::vector<float>& dw) {
    if (!K::kSquares) return 0.0;
    double got = 0, want = 0;
    for (double v : slots) got += v;
    for (float v : dw) want += double(v) * double(v);
    return std::isfinite(got) ? std::abs(got - want) / (1e-12 * want + 1e-300) : INFINITY;
  };
  const double sq0 = squares_error(squares0, dw0), sq1 = squares_error(squares1, dw1);

  // Bounds: bf16 outputs round once (at most 2^-8 relative; the bound allows 2^-7) plus f32
  // accumulation error, ≤ 1e-5 of the sum of |terms|; f32 dW only the latter.
  Worst ey, edx, edw0, edw1;
  for (int64_t r = 0; r < N; ++r) {
    const int64_t e = expert_of(r);
    for (int64_t o = 0; o < out; ++o) {
      double s = 0, a = 0;
      for (int64_t i = 0; i < in; ++i) {
        const double t = f(x[size_t(r * in + i)]) * W(e, o, i);
        s += t;
        a += std::abs(t);
      }
      ey.add(f(y[size_t(r * out + o)]), s, std::abs(s) / 128 + 1e-5 * a + 1e-30);
    }
    for (int64_t i = 0; i < in; ++i) {
      double s = 0, a = 0;
      for (int64_t o = 0; o < out; ++o) {
        const double t = f(dy[size_t(r * out + o)]) * W(e, o, i);
        s += t;
        a += std::abs(t);
      }
      edx.add(f(dx[size_t(r * in + i)]), s, std::abs(s) / 128 + 1e-5 * a + 1e-30);
    }
  }
  for (int64_t e = 0; e < E; ++e)
    for (int64_t o = 0; o < out; ++o)
      for (int64_t i = 0; i < in; ++i) {
        double s = 0, a = 0;
        for (int64_t r = offsets[size_t(e)]; r < offsets[size_t(e + 1)]; ++r) {
          const double t = f(dy[size_t(r * out + o)]) * f(x[size_t(r * in + i)]);
          s += t;
          a += std::abs(t);
        }
        const size_t j = size_t((e * out + o) * in + i);
        edw0.add(dw0[j], s, 1e-5 * a + 1e-30);
        edw1.add(dw1[j], dw1_before[j] + s, 1e-5 * (a + 1) + 1e-30);
      }
  const bool ok =
      ey.ratio <= 1 && edx.ratio <= 1 && edw0.ratio <= 1 && edw1.ratio <= 1 && sq0 <= 1 && sq1 <= 1;
  std::printf(
      "%-16s E %2ld N %4ld in %3ld out %3ld ldw %3ld%s: y %.2e  dx %.2e  dW %.2e  dW+= %.2e"
      "  ΣdW² %.2e %.2e  (err / bound)  %s\n",
      K::kName, long(E), long(N), long(in), long(out), long(ldw),
      c.unaligned_w ? " unaligned W" : "", ey.ratio, edx.ratio, edw0.ratio, edw1.ratio, sq0, sq1,
      ok ? "ok" : "FAIL");
  return ok;
}

template <typename K>
bool run_all(std::mt19937& rng) {
  bool ok = true;
  // One expert, one full tile.
  ok &= run_case<K>({{128}, 128, 128, 0, false}, rng);
  // Ragged rows with empty experts (first, middle, last), tails in k (72 = 1 or 2 steps + 8) and n.
  ok &= run_case<K>({{0, 130, 7, 0, 257, 0}, 72, 136, 0, false}, rng);
  // Padded row stride, unaligned expert 1 (plain loads), k a multiple of 8 only.
  ok &= run_case<K>({{33, 140, 1}, 40, 24, 8, true}, rng);
  // Several k steps through the stage ring (wgmma: 264 = 4 steps + 8, rows 200 = 3 + 8), out
  // tile tail, idle tail blocks.
  ok &= run_case<K>({{5, 0, 200}, 168, 264, 0, false}, rng);
  return ok;
}

}  // namespace

int main() {
  std::mt19937 rng(7);
  bool ok = run_all<MmaSync>(rng);
  ok &= run_all<Wgmma>(rng);
  std::printf("%s\n", ok ? "all ok" : "FAILURES");
  return ok ? 0 : 1;
}
