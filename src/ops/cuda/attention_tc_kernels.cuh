// The kernels of the bf16 tensor-core attention (attention_tc.cu says what each computes): plain
// device code on raw pointers, kept apart from the launches so that a host emulation of the
// warp-level primitives (attention_mma.cuh, DSEEK_ATTENTION_EMULATION) can run them unchanged.
#pragma once

#include <cmath>
#include <cstdint>
#include <cstring>

#include "ops/cuda/attention_mma.cuh"

namespace dseek::ops::cuda::attention_tc {

constexpr int kThreads = 128;  // 4 warps
constexpr int kRows = 64;      // rows a block owns: 16 per warp

struct TcParams {
  const bf16* q;
  int64_t q_t, q_h;
  const bf16* k;
  int64_t k_s, k_h;
  const bf16* v;
  int64_t v_s, v_h;
  int64_t T, S, H, Hk, G;
  float scale;       // of the scores, as given
  float scale_log2;  // scale · log2(e)
  bf16* out;         // [T, H, dv] or nullptr
  float* lse2;       // [T, H]: m + log2 l in the log2 domain, or nullptr
  const bf16* dout;  // [T, H, dv] or nullptr; with it, dsum [T, H] = dout · out
  float* dsum;
  bf16* dq;  // [T, H, dk]
  bf16* dk;  // [S, Hk, dk]
  bf16* dv;  // [S, Hk, dv]
};

// Sequences packed back to back in q, k, v and every output (a training batch of documents):
// sequence i holds rows start[i] .. start[i + 1] − 1 and attends only within itself (T = S = its
// length). count 0: one sequence, p.T queries over p.S keys, as the arguments say. Grid x runs
// over (head, sequence) pairs, head fastest; grid y over the row tiles of the longest sequence,
// so a shorter sequence's surplus tiles exit at once. A __grid_constant__ kernel parameter: the
// block reads its own start without copying the table.
constexpr int kMaxSequences = 64;
struct Sequences {
  int count;
  int64_t start[kMaxSequences + 1];
};

// The block's head (grid x modulo `heads`) and the arguments moved to its sequence's first row.
template <int DK, int DV>
__device__ __forceinline__ TcParams sequence_params(const TcParams& p, const Sequences& seqs,
                                                    int64_t heads, int64_t& head) {
  head = int64_t(blockIdx.x) % heads;
  if (seqs.count == 0) return p;
  const int64_t i = int64_t(blockIdx.x) / heads;
  const int64_t r = seqs.start[i];
  TcParams s = p;
  s.T = s.S = seqs.start[i + 1] - r;
  s.q += r * p.q_t;
  s.k += r * p.k_s;
  s.v += r * p.v_s;
  if (p.out) s.out += r * p.H * DV;
  if (p.lse2) s.lse2 += r * p.H;
  if (p.dout) s.dout += r * p.H * DV;
  if (p.dsum) s.dsum += r * p.H;
  if (p.dq) s.dq += r * p.H * DK;
  if (p.dk) s.dk += r * p.Hk * DK;
  if (p.dv) s.dv += r * p.Hk * DV;
  return s;
}

// ---- forward -----------------------------------------------------------------------------------
template <int DK, int DV>
struct FwdShape {
  static constexpr int kKeys = 64;  // keys per tile
  static constexpr int QLD = DK + kPad, KLD = DK + kPad, VLD = DV + kPad;
  static constexpr size_t kSmem =
      size_t(kRows * QLD + 2 * kKeys * KLD + 2 * kKeys * VLD) * sizeof(bf16);
};

template <int DK, int DV>
__global__ void __launch_bounds__(kThreads)
    tc_forward_kernel(const TcParams args, const __grid_constant__ Sequences seqs) {
  using Sh = FwdShape<DK, DV>;
  int64_t h;
  const TcParams p = sequence_params<DK, DV>(args, seqs, args.H, h);
  // The last query blocks see the most keys: grid y starts with them.
  const int64_t m0 = int64_t(gridDim.y - 1 - blockIdx.y) * kRows;
  if (m0 >= p.T) return;  // past a shorter sequence's end (uniform over the block)
  constexpr int BN = Sh::kKeys, QLD = Sh::QLD, KLD = Sh::KLD, VLD = Sh::VLD;
  unsigned char* smem_raw = dynamic_smem();
  bf16* qs = reinterpret_cast<bf16*>(smem_raw);
  bf16* ks = qs + kRows * QLD;   // [2][BN][KLD]
  bf16* vs = ks + 2 * BN * KLD;  // [2][BN][VLD]
  const int lane = int(threadIdx.x % 32), warp = int(threadIdx.x / 32);
  const int g = lane / 4, c = lane % 4;
  const int64_t hk = h / p.G;
  const int64_t pos0 = p.S - p.T;
  const int64_t n_end = min(p.S, pos0 + m0 + kRows);  // keys 0 .. n_end − 1 are seen by some row
  const int n_tiles = int(div_up(n_end, BN));
  const bf16* qg = p.q + h * p.q_h;
  const bf16* kg = p.k + hk * p.k_h;
  const bf16* vg = p.v + hk * p.v_h;

  load_tile<kRows, DK, kThreads>(qs, qg, p.q_t, m0, p.T);
  load_tile<BN, DK, kThreads>(ks, kg, p.k_s, 0, n_end);
  load_tile<BN, DV, kThreads>(vs, vg, p.v_s, 0, n_end);
  cp_async_commit();

  // This thread's two rows (C-fragment rows g and g + 8 of the warp's 16) and the last key each
  // sees. Rows past T (zero queries) see every loaded key; they are never stored.
  const int64_t row[2] = {m0 + warp * 16 + g, m0 + warp * 16 + g + 8};
  const int64_t last[2] = {pos0 + row[0], pos0 + row[1]};
  float o[DV / 8][4];
  zero(o);
  float m_run[2] = {-INFINITY, -INFINITY}, l_run[2] = {0.0f, 0.0f};

  for (int j = 0; j < n_tiles; ++j) {
    const int64_t n0 = int64_t(j) * BN;
    if (j + 1 < n_tiles) {  // prefetch the next tile into the other buffer
      const int b = (j + 1) & 1;
      load_tile<BN, DK, kThreads>(ks + b * BN * KLD, kg, p.k_s, n0 + BN, n_end);
      load_tile<BN, DV, kThreads>(vs + b * BN * VLD, vg, p.v_s, n0 + BN, n_end);
    }
    cp_async_commit();  // possibly empty: the wait below always leaves exactly the newest group
    cp_async_wait<1>();
    __syncthreads();
    const bf16* kt = ks + (j & 1) * BN * KLD;
    const bf16* vt = vs + (j & 1) * BN * VLD;

    float s[BN / 8][4];
    zero(s);
    mma_abt<DK, BN / 8>(s, qs + warp * 16 * QLD, QLD, kt, KLD);

    // Keys past a row's last are masked; only tiles reaching past the warp's first row need it
    // (uniform over the warp). Tile 0 holds key 0, which every row sees, so m is finite from the
    // first tile on and later all-masked tiles leave it unchanged.
    const bool mask = n0 + BN - 1 > pos0 + m0 + warp * 16;
    float mx[2] = {-INFINITY, -INFINITY};
#pragma unroll
    for (int nt = 0; nt < BN / 8; ++nt)
#pragma unroll
      for (int e = 0; e < 4; ++e) {
        const int64_t key = n0 + nt * 8 + 2 * c + (e & 1);
        float x = s[nt][e] * p.scale_log2;
        if (mask && key > last[e / 2]) x = -INFINITY;
        s[nt][e] = x;
        mx[e / 2] = fmaxf(mx[e / 2], x);
      }
    float base[2], corr[2], rs[2] = {0.0f, 0.0f};
#pragma unroll
    for (int i = 0; i < 2; ++i) {
      const float m_new = fmaxf(m_run[i], quad_max(mx[i]));
      base[i] = m_new == -INFINITY ? 0.0f : m_new;  // never −inf − −inf
      corr[i] = exp2f(m_run[i] - base[i]);          // 0 on the first tile
      m_run[i] = m_new;
    }
#pragma unroll
    for (int nt = 0; nt < BN / 8; ++nt)
#pragma unroll
      for (int e = 0; e < 4; ++e) {
        s[nt][e] = exp2f(s[nt][e] - base[e / 2]);
        rs[e / 2] += s[nt][e];
      }
    // l stays a per-lane partial sum (the quad's lanes share m, so the rescaling agrees).
    l_run[0] = l_run[0] * corr[0] + rs[0];
    l_run[1] = l_run[1] * corr[1] + rs[1];
#pragma unroll
    for (int nt = 0; nt < DV / 8; ++nt) {
      o[nt][0] *= corr[0];
      o[nt][1] *= corr[0];
      o[nt][2] *= corr[1];
      o[nt][3] *= corr[1];
    }
    uint32_t pa[BN / 16][4];
    c_to_a(s, pa);
    mma_pb<BN / 16, DV / 8>(o, pa, vt, VLD);
    __syncthreads();  // this buffer is refilled by the next iteration's prefetch
  }

  // Every lane takes part in the quad shuffles; the stores are guarded per row.
#pragma unroll
  for (int i = 0; i < 2; ++i) {
    const float l = quad_sum(l_run[i]);
    const float inv = 1.0f / l;  // l ≥ 1: the row's maximum contributes 2^0
    const bool in = row[i] < p.T;
    const int64_t o_off = (row[i] * p.H + h) * DV + 2 * c;
    float dsum = 0.0f;
#pragma unroll
    for (int nt = 0; nt < DV / 8; ++nt) {
      const float y0 = o[nt][2 * i] * inv, y1 = o[nt][2 * i + 1] * inv;
      if (in && p.out) {
        store_bf16x2(p.out + o_off + nt * 8, y0, y1);
      }
      if (in && p.dout) {
        const __nv_bfloat162 d = *reinterpret_cast<const __nv_bfloat162*>(p.dout + o_off + nt * 8);
        dsum += y0 * __low2float(d) + y1 * __high2float(d);
      }
    }
    dsum = quad_sum(dsum);
    if (in && c == 0) {
      if (p.lse2) p.lse2[row[i] * p.H + h] = m_run[i] + log2f(l);
      if (p.dout) p.dsum[row[i] * p.H + h] = dsum;
    }
  }
}

// ---- backward: dk, dv --------------------------------------------------------------------------
template <int DK, int DV>
struct DkdvShape {
  // Query rows per tile: 32 when the accumulators (16 × (DK + DV) per warp) are wide.
  static constexpr int kQ = DK + DV >= 256 ? 32 : 64;
  static constexpr int KLD = DK + kPad, VLD = DV + kPad;
  static constexpr size_t kSmem =
      size_t(kRows * KLD + kRows * VLD + 2 * kQ * KLD + 2 * kQ * VLD) * sizeof(bf16) +
      size_t(2 * 2 * kQ) * sizeof(float);
};

template <int DK, int DV>
__global__ void __launch_bounds__(kThreads)
    tc_dkdv_kernel(const TcParams args, const __grid_constant__ Sequences seqs) {
  using Sh = DkdvShape<DK, DV>;
  int64_t hk;
  const TcParams p = sequence_params<DK, DV>(args, seqs, args.Hk, hk);
  const int64_t n0 = int64_t(blockIdx.y) * kRows;  // key block 0 has the most work: first
  if (n0 >= p.S) return;                           // past a shorter sequence's end
  constexpr int BQ = Sh::kQ, KLD = Sh::KLD, VLD = Sh::VLD;
  unsigned char* smem_raw = dynamic_smem();
  bf16* ks = reinterpret_cast<bf16*>(smem_raw);  // [kRows][KLD]
  bf16* vs = ks + kRows * KLD;                   // [kRows][VLD]
  bf16* qs = vs + kRows * VLD;                   // [2][BQ][KLD] (q rows have dk columns too)
  bf16* dos = qs + 2 * BQ * KLD;                 // [2][BQ][VLD]
  float* lse_s = reinterpret_cast<float*>(dos + 2 * BQ * VLD);  // [2][BQ]
  float* dsum_s = lse_s + 2 * BQ;                               // [2][BQ]
  const int lane = int(threadIdx.x % 32), warp = int(threadIdx.x / 32);
  const int g = lane / 4, c = lane % 4;
  const int64_t pos0 = p.S - p.T;
  // Query t sees key n0 once pos0 + t ≥ n0; the tiles start at a multiple of BQ below that.
  const int64_t m_start = max(int64_t(0), n0 - pos0) / BQ * BQ;
  const int64_t nq = div_up(p.T - m_start, BQ);  // ≥ 1: n0 < S
  const int64_t iters = p.G * nq;                // heads of the group × query tiles

  // Query tile `it` (head hk·G + it / nq, rows from m_start + (it % nq)·BQ) into buffer b.
  auto load_queries = [&](int64_t it, int b) {
    const int64_t h = hk * p.G + it / nq, m = m_start + (it % nq) * BQ;
    load_tile<BQ, DK, kThreads>(qs + b * BQ * KLD, p.q + h * p.q_h, p.q_t, m, p.T);
    load_tile<BQ, DV, kThreads>(dos + b * BQ * VLD, p.dout + h * DV, p.H * DV, m, p.T);
    // Rows past T get lse = +inf: their p is 0, and so are their dS and dV terms.
    for (int r = int(threadIdx.x); r < BQ; r += kThreads) {
      const int64_t t = m + r;
      lse_s[b * BQ + r] = t < p.T ? p.lse2[t * p.H + h] : INFINITY;
      dsum_s[b * BQ + r] = t < p.T ? p.dsum[t * p.H + h] : 0.0f;
    }
  };

  load_tile<kRows, DK, kThreads>(ks, p.k + hk * p.k_h, p.k_s, n0, p.S);
  load_tile<kRows, DV, kThreads>(vs, p.v + hk * p.v_h, p.v_s, n0, p.S);
  load_queries(0, 0);
  cp_async_commit();

  const int64_t key[2] = {n0 + warp * 16 + g, n0 + warp * 16 + g + 8};
  float dk_acc[DK / 8][4], dv_acc[DV / 8][4];
  zero(dk_acc);
  zero(dv_acc);

  for (int64_t it = 0; it < iters; ++it) {
    const int b = int(it & 1);
    if (it + 1 < iters) load_queries(it + 1, b ^ 1);
    cp_async_commit();
    cp_async_wait<1>();
    __syncthreads();
    const int64_t m = m_start + (it % nq) * BQ;
    const bf16* qt = qs + b * BQ * KLD;
    const bf16* dot = dos + b * BQ * VLD;
    const float* lse = lse_s + b * BQ;
    const float* dsum = dsum_s + b * BQ;

    // Pᵀ (this warp's 16 keys × BQ queries) = 2^(scale·log2e·K·Qᵀ − lse2), 0 where key > pos0 + t.
    float pt[BQ / 8][4];
    zero(pt);
    mma_abt<DK, BQ / 8>(pt, ks + warp * 16 * KLD, KLD, qt, KLD);
    const bool mask = n0 + warp * 16 + 15 > pos0 + m;  // uniform over the warp
#pragma unroll
    for (int nt = 0; nt < BQ / 8; ++nt)
#pragma unroll
      for (int e = 0; e < 4; ++e) {
        const int col = nt * 8 + 2 * c + (e & 1);
        const float pv = exp2f(pt[nt][e] * p.scale_log2 - lse[col]);
        pt[nt][e] = mask && key[e / 2] > pos0 + m + col ? 0.0f : pv;
      }
    // dPᵀ = V·dOᵀ
    float dpt[BQ / 8][4];
    zero(dpt);
    mma_abt<DV, BQ / 8>(dpt, vs + warp * 16 * VLD, VLD, dot, VLD);
    // dV += Pᵀ·dO
    uint32_t fa[BQ / 16][4];
    c_to_a(pt, fa);
    mma_pb<BQ / 16, DV / 8>(dv_acc, fa, dot, VLD);
    // dSᵀ = Pᵀ ⊙ (dPᵀ − D); dK += dSᵀ·Q
#pragma unroll
    for (int nt = 0; nt < BQ / 8; ++nt)
#pragma unroll
      for (int e = 0; e < 4; ++e)
        dpt[nt][e] = pt[nt][e] * (dpt[nt][e] - dsum[nt * 8 + 2 * c + (e & 1)]);
    c_to_a(dpt, fa);
    mma_pb<BQ / 16, DK / 8>(dk_acc, fa, qt, KLD);
    __syncthreads();  // this buffer is refilled by the next iteration's prefetch
  }

#pragma unroll
  for (int i = 0; i < 2; ++i) {
    if (key[i] >= p.S) continue;
    bf16* dk_row = p.dk + (key[i] * p.Hk + hk) * DK + 2 * c;
    bf16* dv_row = p.dv + (key[i] * p.Hk + hk) * DV + 2 * c;
#pragma unroll
    for (int nt = 0; nt < DK / 8; ++nt) {
      store_bf16x2(dk_row + nt * 8, dk_acc[nt][2 * i] * p.scale, dk_acc[nt][2 * i + 1] * p.scale);
    }
#pragma unroll
    for (int nt = 0; nt < DV / 8; ++nt) {
      store_bf16x2(dv_row + nt * 8, dv_acc[nt][2 * i], dv_acc[nt][2 * i + 1]);
    }
  }
}

// ---- backward: dq ------------------------------------------------------------------------------
template <int DK, int DV>
struct DqShape {
  static constexpr int kKeys = DK > 128 ? 32 : 64;  // keys per tile (fewer when dQ is wide)
  static constexpr int KLD = DK + kPad, VLD = DV + kPad;
  static constexpr size_t kSmem =
      size_t(kRows * KLD + kRows * VLD + 2 * kKeys * KLD + 2 * kKeys * VLD) * sizeof(bf16);
};

template <int DK, int DV>
__global__ void __launch_bounds__(kThreads)
    tc_dq_kernel(const TcParams args, const __grid_constant__ Sequences seqs) {
  using Sh = DqShape<DK, DV>;
  int64_t h;
  const TcParams p = sequence_params<DK, DV>(args, seqs, args.H, h);
  const int64_t m0 = int64_t(gridDim.y - 1 - blockIdx.y) * kRows;
  if (m0 >= p.T) return;
  constexpr int BN = Sh::kKeys, KLD = Sh::KLD, VLD = Sh::VLD;
  unsigned char* smem_raw = dynamic_smem();
  bf16* qs = reinterpret_cast<bf16*>(smem_raw);  // [kRows][KLD]
  bf16* dos = qs + kRows * KLD;                  // [kRows][VLD]
  bf16* ks = dos + kRows * VLD;                  // [2][BN][KLD]
  bf16* vs = ks + 2 * BN * KLD;                  // [2][BN][VLD]
  const int lane = int(threadIdx.x % 32), warp = int(threadIdx.x / 32);
  const int g = lane / 4, c = lane % 4;
  const int64_t hk = h / p.G;
  const int64_t pos0 = p.S - p.T;
  const int64_t n_end = min(p.S, pos0 + m0 + kRows);
  const int n_tiles = int(div_up(n_end, BN));
  const bf16* kg = p.k + hk * p.k_h;
  const bf16* vg = p.v + hk * p.v_h;

  load_tile<kRows, DK, kThreads>(qs, p.q + h * p.q_h, p.q_t, m0, p.T);
  load_tile<kRows, DV, kThreads>(dos, p.dout + h * DV, p.H * DV, m0, p.T);
  load_tile<BN, DK, kThreads>(ks, kg, p.k_s, 0, n_end);
  load_tile<BN, DV, kThreads>(vs, vg, p.v_s, 0, n_end);
  cp_async_commit();

  const int64_t row[2] = {m0 + warp * 16 + g, m0 + warp * 16 + g + 8};
  const int64_t last[2] = {pos0 + row[0], pos0 + row[1]};
  // Rows past T: lse = +inf makes their p, and so their dS, 0.
  float lse[2], dsum[2];
#pragma unroll
  for (int i = 0; i < 2; ++i) {
    lse[i] = row[i] < p.T ? p.lse2[row[i] * p.H + h] : INFINITY;
    dsum[i] = row[i] < p.T ? p.dsum[row[i] * p.H + h] : 0.0f;
  }
  float dq_acc[DK / 8][4];
  zero(dq_acc);

  for (int j = 0; j < n_tiles; ++j) {
    const int64_t n0 = int64_t(j) * BN;
    if (j + 1 < n_tiles) {
      const int b = (j + 1) & 1;
      load_tile<BN, DK, kThreads>(ks + b * BN * KLD, kg, p.k_s, n0 + BN, n_end);
      load_tile<BN, DV, kThreads>(vs + b * BN * VLD, vg, p.v_s, n0 + BN, n_end);
    }
    cp_async_commit();
    cp_async_wait<1>();
    __syncthreads();
    const bf16* kt = ks + (j & 1) * BN * KLD;
    const bf16* vt = vs + (j & 1) * BN * VLD;

    float s[BN / 8][4];
    zero(s);
    mma_abt<DK, BN / 8>(s, qs + warp * 16 * KLD, KLD, kt, KLD);
    float dp[BN / 8][4];
    zero(dp);
    mma_abt<DV, BN / 8>(dp, dos + warp * 16 * VLD, VLD, vt, VLD);
    const bool mask = n0 + BN - 1 > pos0 + m0 + warp * 16;  // uniform over the warp
#pragma unroll
    for (int nt = 0; nt < BN / 8; ++nt)
#pragma unroll
      for (int e = 0; e < 4; ++e) {
        const int64_t key = n0 + nt * 8 + 2 * c + (e & 1);
        float pv = exp2f(s[nt][e] * p.scale_log2 - lse[e / 2]);
        if (mask && key > last[e / 2]) pv = 0.0f;
        dp[nt][e] = pv * (dp[nt][e] - dsum[e / 2]);  // dS
      }
    uint32_t fa[BN / 16][4];
    c_to_a(dp, fa);
    mma_pb<BN / 16, DK / 8>(dq_acc, fa, kt, KLD);
    __syncthreads();
  }

#pragma unroll
  for (int i = 0; i < 2; ++i) {
    if (row[i] >= p.T) continue;
    bf16* dst = p.dq + (row[i] * p.H + h) * DK + 2 * c;
#pragma unroll
    for (int nt = 0; nt < DK / 8; ++nt) {
      store_bf16x2(dst + nt * 8, dq_acc[nt][2 * i] * p.scale, dq_acc[nt][2 * i + 1] * p.scale);
    }
  }
}

}  // namespace dseek::ops::cuda::attention_tc
