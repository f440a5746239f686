// Host emulation of the bf16 tensor-core attention kernels (src/ops/cuda/attention_tc_kernels.cuh)
// for machines without a GPU: the kernels' own source runs on host threads with the warp-level
// primitives re-implemented from their PTX definitions (tc_emulation.h).
// It checks the fragment and tile indexing, masks and tails against a double-precision reference
// (forward, lse and D, dq/dk/dv), not timing or asynchrony. Slow (a barrier per warp step): small
// shapes only. Build and run by hand (from the repository root):
//   g++ -std=c++20 -O1 -pthread -Wno-unknown-pragmas -I src -I /usr/local/cuda/include
//       bench/kernels/attention_tc_emulate.cpp -o /tmp/attention_tc_emulate
//   /tmp/attention_tc_emulate            (the fixed cases)
//   /tmp/attention_tc_emulate T S H Hk   (one case with MLA's head dims 192 / 128)
#include "tc_emulation.h"
// clang-format off: the emulation must come first
#include "ops/cuda/attention_tc_kernels.cuh"
// clang-format on

#include <cstdio>
#include <cstdlib>
#include <random>
#include <string>
#include <vector>

using namespace dseek::ops::cuda::attention_tc;

constexpr int kEmuThreads = 128;

// Runs kernel over grid (x, y), one block after another, kEmuThreads threads each.
template <typename Kernel>
void run_grid(Kernel kernel, unsigned gx, unsigned gy, const TcParams& p, const Sequences& seqs) {
  gridDim = uint3{gx, gy, 1};
  for (unsigned y = 0; y < gy; ++y)
    for (unsigned x = 0; x < gx; ++x)
      run_block(uint3{x, y, 0}, kEmuThreads, [&] { kernel(p, seqs); });
}

// T queries over S keys; or, with `packed` lengths, those sequences back to back (T = S = Σ).
struct Case {
  int64_t T, S, H, Hk, dk, dv;
  std::vector<int64_t> packed = {};
};

std::vector<bf16> random_bf16(size_t n, std::mt19937& rng, float scale) {
  std::uniform_real_distribution<float> dist(-scale, scale);
  std::vector<bf16> v(n);
  for (auto& x : v) x = __float2bfloat16_rn(dist(rng));
  return v;
}
double f(bf16 x) {
  return double(__bfloat162float(x));
}

// The worst ratio |got − want| / (a·scale(row) + r·|want| + 1e-4) over a tensor of rows of n (the
// reference's vectors): ≤ 1 passes the bound the conformance test
// (tests/backend/test_backend_attention.cpp, expect_close_rows) puts on the GPU kernels, whose
// row scale is the row's RMS floored at a quarter of the tensor's (dq of a query that sees a few
// keys cancels to far below its terms; packed sequences have such rows at every start).
double err(const std::vector<double>& want, const std::vector<bf16>& got, size_t n, double a,
           double r) {
  double total = 0;
  for (double x : want) total += x * x;
  const double floor = 0.25 * std::sqrt(total / double(std::max<size_t>(want.size(), 1)));
  double worst = 0;
  for (size_t r0 = 0; r0 < want.size(); r0 += n) {
    double ss = 0;
    for (size_t i = r0; i < r0 + n; ++i) ss += want[i] * want[i];
    const double rms = std::max(std::sqrt(ss / double(n)), floor);
    for (size_t i = r0; i < r0 + n; ++i) {
      const double d = std::abs(f(got[i]) - want[i]);
      worst = std::isfinite(d) ? std::max(worst, d / (a * rms + r * std::abs(want[i]) + 1e-4))
                               : INFINITY;
    }
  }
  return worst;
}

template <int DK, int DV>
bool run_case(const Case& c, std::mt19937& rng) {
  const int64_t T = c.T, S = c.S, H = c.H, Hk = c.Hk, G = H / Hk;
  // q is a view with row padding (q_h = dk + 8), k and v share rows of one [S, Hk, dk + dv] buffer.
  const int64_t q_h = DK + 8, q_t = H * q_h, kv_h = DK + DV, kv_s = Hk * kv_h;
  const std::vector<bf16> qb = random_bf16(size_t(T * q_t), rng, 1.5f);
  const std::vector<bf16> kvb = random_bf16(size_t(S * kv_s), rng, 1.5f);
  const std::vector<bf16> dout = random_bf16(size_t(T * H * DV), rng, 1.0f);
  const float scale = 1.5f / std::sqrt(float(DK));
  auto Q = [&](int64_t t, int64_t h, int64_t i) { return f(qb[size_t(t * q_t + h * q_h + i)]); };
  auto K = [&](int64_t s, int64_t hk, int64_t i) {
    return f(kvb[size_t(s * kv_s + hk * kv_h + i)]);
  };
  auto V = [&](int64_t s, int64_t hk, int64_t d) {
    return f(kvb[size_t(s * kv_s + hk * kv_h + DK + d)]);
  };
  auto DO = [&](int64_t t, int64_t h, int64_t d) { return f(dout[size_t((t * H + h) * DV + d)]); };

  // Reference in double, per sequence: query rows q0 .. q0 + Tq − 1 over key rows k0 .. k0 + Sq −
  // 1, the queries the last Tq of the Sq positions.
  struct Seq {
    int64_t q0, k0, T, S;
  };
  std::vector<Seq> seqs;
  if (c.packed.empty()) {
    seqs.push_back({0, 0, T, S});
  } else {
    int64_t r = 0;
    for (int64_t n : c.packed) {
      seqs.push_back({r, r, n, n});
      r += n;
    }
  }
  std::vector<double> out(size_t(T * H * DV)), lse2(size_t(T * H)), dsum(size_t(T * H));
  std::vector<double> dq(size_t(T * H * DK)), dk(size_t(S * Hk * DK)), dv(size_t(S * Hk * DV));
  for (const Seq& sq : seqs)
    for (int64_t t = sq.q0; t < sq.q0 + sq.T; ++t)
      for (int64_t h = 0; h < H; ++h) {
        const int64_t hk = h / G, s_end = sq.k0 + (sq.S - sq.T) + (t - sq.q0) + 1;
        std::vector<double> p(static_cast<size_t>(s_end - sq.k0));
        double m = -INFINITY;
        for (int64_t s = sq.k0; s < s_end; ++s) {
          double dot = 0;
          for (int64_t i = 0; i < DK; ++i) dot += Q(t, h, i) * K(s, hk, i);
          p[size_t(s - sq.k0)] = dot * scale;
          m = std::max(m, p[size_t(s - sq.k0)]);
        }
        double l = 0;
        for (auto& x : p) l += (x = std::exp(x - m));
        for (auto& x : p) x /= l;
        lse2[size_t(t * H + h)] = (m + std::log(l)) / std::log(2.0);
        double D = 0;
        for (int64_t d = 0; d < DV; ++d) {
          double y = 0;
          for (int64_t s = sq.k0; s < s_end; ++s) y += p[size_t(s - sq.k0)] * V(s, hk, d);
          out[size_t((t * H + h) * DV + d)] = y;
          D += y * DO(t, h, d);
        }
        dsum[size_t(t * H + h)] = D;
        for (int64_t s = sq.k0; s < s_end; ++s) {
          double x = 0;
          for (int64_t d = 0; d < DV; ++d) x += DO(t, h, d) * V(s, hk, d);
          const double ps = p[size_t(s - sq.k0)], ds = ps * (x - D);
          for (int64_t i = 0; i < DK; ++i) {
            dq[size_t((t * H + h) * DK + i)] += scale * ds * K(s, hk, i);
            dk[size_t((s * Hk + hk) * DK + i)] += scale * ds * Q(t, h, i);
          }
          for (int64_t d = 0; d < DV; ++d) dv[size_t((s * Hk + hk) * DV + d)] += ps * DO(t, h, d);
        }
      }

  // The kernels, outputs poisoned with NaN first.
  const bf16 nan = __float2bfloat16_rn(NAN);
  std::vector<bf16> g_out(out.size(), nan), g_dq(dq.size(), nan), g_dk(dk.size(), nan),
      g_dv(dv.size(), nan);
  std::vector<float> g_lse(size_t(T * H), NAN), g_dsum(size_t(T * H), NAN);
  TcParams p{};
  p.q = qb.data();
  p.q_t = q_t;
  p.q_h = q_h;
  p.k = kvb.data();
  p.k_s = kv_s;
  p.k_h = kv_h;
  p.v = kvb.data() + DK;
  p.v_s = kv_s;
  p.v_h = kv_h;
  p.T = T;
  p.S = S;
  p.H = H;
  p.Hk = Hk;
  p.G = G;
  p.scale = scale;
  p.scale_log2 = scale * 1.4426950408889634f;
  p.out = g_out.data();
  p.lse2 = g_lse.data();
  p.dout = dout.data();
  p.dsum = g_dsum.data();
  p.dq = g_dq.data();
  p.dk = g_dk.data();
  p.dv = g_dv.data();
  // The launches as attention_tc.cu makes them: grid x over (head, sequence), y over row tiles
  // of the longest sequence.
  Sequences table{};
  int64_t longest_q = T, longest_k = S;
  if (!c.packed.empty()) {
    table.count = int(seqs.size());
    longest_q = longest_k = 0;
    for (size_t i = 0; i < seqs.size(); ++i) {
      table.start[i] = seqs[i].q0;
      longest_q = longest_k = std::max(longest_q, seqs[i].T);
    }
    table.start[seqs.size()] = T;
  }
  const unsigned n_seq = unsigned(std::max(table.count, 1));
  const unsigned qblocks = unsigned(div_up(longest_q, kRows)),
                 kblocks = unsigned(div_up(longest_k, kRows));
  run_grid(tc_forward_kernel<DK, DV>, unsigned(H) * n_seq, qblocks, p, table);
  run_grid(tc_dkdv_kernel<DK, DV>, unsigned(Hk) * n_seq, kblocks, p, table);
  run_grid(tc_dq_kernel<DK, DV>, unsigned(H) * n_seq, qblocks, p, table);

  double lse_err = 0, dsum_err = 0, dsum_scale = 1e-2;
  for (double x : dsum) dsum_scale = std::max(dsum_scale, std::abs(x));
  for (size_t i = 0; i < lse2.size(); ++i) {
    lse_err = std::max(lse_err, std::isfinite(g_lse[i]) ? std::abs(g_lse[i] - lse2[i]) : INFINITY);
    dsum_err =
        std::max(dsum_err, std::isfinite(g_dsum[i]) ? std::abs(g_dsum[i] - dsum[i]) : INFINITY);
  }
  const double e_out = err(out, g_out, DV, 2e-2, 1e-2), e_dq = err(dq, g_dq, DK, 3e-2, 1.6e-2),
               e_dk = err(dk, g_dk, DK, 3e-2, 1.6e-2), e_dv = err(dv, g_dv, DV, 3e-2, 1.6e-2);
  // D = dout · out carries the rounding of p to bf16 in out (2^-9 of each term): relative bound.
  const bool ok = e_out <= 1 && e_dq <= 1 && e_dk <= 1 && e_dv <= 1 && lse_err < 1e-3 &&
                  dsum_err < 1e-2 * dsum_scale;
  std::string packed;
  for (int64_t n : c.packed) packed += (packed.empty() ? " packed " : "+") + std::to_string(n);
  std::printf(
      "T %4ld S %4ld H %2ld/%ld d %3d/%3d%s: out %.2e  lse2 %.1e  D %.1e  dq %.2e  dk %.2e  dv %.2e"
      "  (err / bound; lse2, D abs)  %s\n",
      long(T), long(S), long(H), long(Hk), DK, DV, packed.c_str(), e_out, lse_err, dsum_err, e_dq,
      e_dk, e_dv, ok ? "ok" : "FAIL");
  return ok;
}

// No arguments: the fixed cases below. "T S H Hk": one MLA-dims case (dk 192, dv 128).
int main(int argc, char** argv) {
  std::mt19937 rng(5);
  if (argc == 5) {
    const Case c{
        std::atol(argv[1]), std::atol(argv[2]), std::atol(argv[3]), std::atol(argv[4]), 192, 128};
    return run_case<192, 128>(c, rng) ? 0 : 1;
  }
  bool ok = true;
  ok &= run_case<64, 64>({17, 17, 2, 1, 64, 64}, rng);
  ok &= run_case<64, 128>({1, 1, 1, 1, 64, 128}, rng);
  ok &= run_case<128, 64>({100, 100, 2, 2, 128, 64}, rng);
  ok &= run_case<64, 64>({70, 200, 2, 1, 64, 64}, rng);
  ok &= run_case<192, 128>({33, 150, 1, 1, 192, 128}, rng);
  ok &= run_case<128, 128>({1, 75, 4, 2, 128, 128}, rng);
  ok &= run_case<192, 64>({65, 65, 1, 1, 192, 64}, rng);
  ok &= run_case<64, 64>({130, 130, 4, 1, 64, 64}, rng);
  ok &= run_case<192, 128>({129, 300, 2, 2, 192, 128}, rng);
  // Packed sequences (ragged, an empty one, tails of the 64-row tiles), GQA.
  ok &= run_case<192, 128>({127, 127, 2, 1, 192, 128, {17, 0, 70, 40}}, rng);
  ok &= run_case<64, 64>({131, 131, 2, 1, 64, 64, {1, 65, 64, 1}}, rng);
  std::printf("%s\n", ok ? "all ok" : "FAILURES");
  return ok ? 0 : 1;
}
