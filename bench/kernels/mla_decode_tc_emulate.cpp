// Host emulation of the tensor-core MLA decode kernel (src/ops/cuda/mla_decode_tc_kernels.cuh) for
// machines without a GPU: the kernel's own source runs on host threads with the warp-level
// primitives re-implemented from their PTX definitions (tc_emulation.h). It checks the fragment
// and tile indexing, the cross-warp softmax, masks, split ranges (with device-style positions and
// a capacity larger than the keys, rows past the keys NaN) and the split partials — joined here as
// mla_decode.cu's combine kernel joins them — against a double-precision reference. Not timing.
// Build and run by hand (from the repository root):
//   g++ -std=c++20 -O1 -pthread -Wno-unknown-pragmas -I src -I /usr/local/cuda/include
//       bench/kernels/mla_decode_tc_emulate.cpp -o /tmp/mla_decode_tc_emulate
//   /tmp/mla_decode_tc_emulate
#include "tc_emulation.h"
// clang-format off: the emulation must come first
#include "ops/cuda/mla_decode_tc_kernels.cuh"
// clang-format on

#include <cstdio>
#include <random>

using namespace dseek::ops::cuda::mla_tc;

struct Case {
  int64_t T, keys, capacity, H, splits;  // splits: the grid's (the host's choice)
  bool positions;
};

double f(bf16 x) {
  return double(__bfloat162float(x));
}

template <int DK, int RANK>
bool run_case(const Case& c, std::mt19937& rng) {
  const int64_t T = c.T, S = c.keys, H = c.H, pos0 = S - T, rows = T * H;
  // q rows of a wider buffer (q_h = DK + 16: MLA's q_abs is a view), the cache's capacity rows
  // NaN past the keys when positions give the count.
  const int64_t q_h = DK + 16, q_t = H * q_h, kv_s = DK + 8;
  std::uniform_real_distribution<float> dist(-1.5f, 1.5f);
  std::vector<bf16> qb(size_t(T * q_t)), kvb(size_t(c.capacity * kv_s), __float2bfloat16_rn(NAN));
  for (auto& x : qb) x = __float2bfloat16_rn(dist(rng));
  for (int64_t s = 0; s < (c.positions ? S : c.capacity); ++s)
    for (int64_t i = 0; i < kv_s; ++i) kvb[size_t(s * kv_s + i)] = __float2bfloat16_rn(dist(rng));
  const float scale = 1.0f / std::sqrt(float(DK));

  std::vector<double> want(size_t(rows * RANK));
  for (int64_t t = 0; t < T; ++t)
    for (int64_t h = 0; h < H; ++h) {
      const int64_t n = pos0 + t + 1;
      std::vector<double> pr(static_cast<size_t>(n));
      double m = -INFINITY, l = 0;
      for (int64_t s = 0; s < n; ++s) {
        double dot = 0;
        for (int64_t i = 0; i < DK; ++i)
          dot += f(qb[size_t(t * q_t + h * q_h + i)]) * f(kvb[size_t(s * kv_s + i)]);
        pr[size_t(s)] = dot * scale;
        m = std::max(m, pr[size_t(s)]);
      }
      for (auto& x : pr) l += (x = std::exp(x - m));
      for (int64_t d = 0; d < RANK; ++d) {
        double y = 0;
        for (int64_t s = 0; s < n; ++s) y += pr[size_t(s)] * f(kvb[size_t(s * kv_s + d)]);
        want[size_t((t * H + h) * RANK + d)] = y / l;
      }
    }

  std::vector<int64_t> pos(static_cast<size_t>(T));
  for (int64_t t = 0; t < T; ++t) pos[size_t(t)] = pos0 + t;
  const bf16 nan = __float2bfloat16_rn(NAN);
  std::vector<bf16> out(size_t(rows * RANK), nan);
  std::vector<float> ml(size_t(c.splits * rows * 2), NAN), acc(size_t(c.splits * rows * RANK), NAN);
  Params p{};
  p.q = qb.data();
  p.q_t = q_t;
  p.q_h = q_h;
  p.kv = kvb.data();
  p.kv_s = kv_s;
  p.out = out.data();
  p.part_ml = ml.data();
  p.part_acc = acc.data();
  p.T = T;
  p.S = c.positions ? c.capacity : S;
  p.H = H;
  p.positions = c.positions ? pos.data() : nullptr;
  p.scale_log2 = scale * 1.4426950408889634f;
  p.n_splits = int(c.splits);
  gridDim = uint3{unsigned(rows / kRows), unsigned(c.splits), 1};
  for (unsigned y = 0; y < gridDim.y; ++y)
    for (unsigned x = 0; x < gridDim.x; ++x)
      run_block(uint3{x, y, 0}, kThreads, [&] { mla_decode_tc_kernel<DK, RANK>(p); });

  // mla_decode.cu's combine, over the splits that hold keys.
  const int used = split_plan(S, c.splits, kKeys).used;
  double worst = 0;
  for (int64_t row = 0; row < rows; ++row) {
    double ss = 0;
    for (int64_t d = 0; d < RANK; ++d)
      ss += want[size_t(row * RANK + d)] * want[size_t(row * RANK + d)];
    const double rms = std::sqrt(ss / RANK);
    double M = -INFINITY, L = 0;
    if (c.splits > 1) {
      for (int i = 0; i < used; ++i) M = std::max(M, double(ml[size_t(2 * (i * rows + row))]));
      for (int i = 0; i < used; ++i) {
        const double mi = ml[size_t(2 * (i * rows + row))];
        if (mi != -INFINITY) L += ml[size_t(2 * (i * rows + row) + 1)] * std::exp(mi - M);
      }
    }
    for (int64_t d = 0; d < RANK; ++d) {
      double y;
      if (c.splits > 1) {
        y = 0;
        for (int i = 0; i < used; ++i) {
          const double mi = ml[size_t(2 * (i * rows + row))];
          if (mi != -INFINITY) y += acc[size_t((i * rows + row) * RANK + d)] * std::exp(mi - M);
        }
        y /= L;
      } else {
        y = f(out[size_t(row * RANK + d)]);
      }
      const double w = want[size_t(row * RANK + d)];
      const double e = std::abs(y - w) / (2e-2 * rms + 1e-2 * std::abs(w) + 1e-4);
      worst = std::isfinite(e) ? std::max(worst, e) : INFINITY;
    }
  }
  const bool ok = worst <= 1;
  std::printf(
      "T %ld keys %4ld capacity %4ld H %3ld splits %3ld (used %d) dk %d rank %d%s: "
      "err/bound %.3f %s\n",
      long(T), long(S), long(c.capacity), long(H), long(c.splits), used, DK, RANK,
      c.positions ? " positions" : "", worst, ok ? "ok" : "FAIL");
  return ok;
}

int main() {
  std::mt19937 rng(3);
  bool ok = true;
  ok &= run_case<96, 64>({1, 1, 1, 16, 1, false}, rng);
  ok &= run_case<96, 64>({1, 70, 70, 16, 1, false}, rng);      // two tiles, a ragged one
  ok &= run_case<96, 64>({1, 190, 192, 16, 3, false}, rng);    // three splits
  ok &= run_case<96, 64>({1, 37, 4000, 16, 63, true}, rng);    // capacity: one split used
  ok &= run_case<96, 64>({3, 200, 260, 32, 4, true}, rng);     // T > 1: some rows see less
  ok &= run_case<96, 64>({2, 129, 129, 16, 3, false}, rng);    // token 0 has no key in split 2
  ok &= run_case<160, 128>({1, 300, 300, 16, 2, false}, rng);  // 3 tiles a split
  ok &= run_case<576, 512>({1, 190, 192, 16, 3, false}, rng);  // V2-Lite's batch-1 step
  ok &= run_case<576, 512>({2, 100, 128, 16, 1, true}, rng);
  std::printf("%s\n", ok ? "all ok" : "FAILURES");
  return ok ? 0 : 1;
}
