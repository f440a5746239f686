// MLA's absorbed decode on tensor cores (FlashMLA's layout, mma.sync): the kernel of mla_decode.cu
// for bf16 latent caches with DeepSeek's shapes, kept apart from the launch so that the host
// emulation of the warp-level primitives (bench/kernels/tc_emulation.h) can run it unchanged.
//
// A block serves one token's 16 heads — the M = 16 of an mma.m16n8k16 tile, every row reading the
// same latent rows — over one split of the keys, in tiles of 64 latent rows [c_kv; k_pe]:
//   scores   warp w: S[16 × 16] = Q · K[16w .. 16w + 16)ᵀ over all DK columns (DK / 16 k-steps),
//            scaled into the log2 domain and masked past the token's last key;
//   softmax  the tile's row maxima meet in shared memory, so all four warps move their running max
//            m the same way; each warp keeps its own row sum l (of its keys), P goes to shared
//            memory as bf16;
//   values   warp w: O[16 × RANK/4] (its quarter of the value columns, the latent rows' first RANK
//            values) = corr · O + P[16 × 64] · V[64 × RANK/4] (mma with ldmatrix.trans).
// The next tile is loaded with cp.async while this one is multiplied (two buffers). The SIMT kernel
// it replaces for these shapes computed each score as one lane's 576-long dot product out of shared
// memory: 28.6 µs a call for 16 heads and ~190 keys (run G), bound by shared-memory loads on the
// ~6 blocks a batch-1 step has. Splits leave (m, l, acc) partials in mla_decode.cu's layout (m in
// the natural-log domain), which its combine kernel joins.
#pragma once

#include <cmath>
#include <cstdint>

#include "ops/cuda/attention_mma.cuh"

namespace dseek::ops::cuda::mla_tc {

using attention_tc::bf16;
using attention_tc::div_up;
using attention_tc::kPad;

constexpr int kThreads = 128;  // 4 warps
constexpr int kRows = 16;      // (query, head) rows a block serves: 16 heads of one token
constexpr int kKeys = 64;      // latent rows per tile: 16 per warp for the scores
constexpr float kLn2 = 0.69314718055994531f;

struct Params {
  const bf16* q;  // row t·H + h at q + t·q_t + h·q_h (DK values)
  int64_t q_t, q_h;
  const bf16* kv;  // latent row s at kv + s·kv_s (DK values; the first RANK are the value)
  int64_t kv_s;
  bf16* out;                 // [T·H, RANK], with n_splits == 1
  float* part_ml;            // [n_splits][T·H][2] (m, l), with n_splits > 1
  float* part_acc;           // [n_splits][T·H][RANK]
  int64_t T, S, H;           // H a multiple of kRows
  const int64_t* positions;  // null: all S rows are keys (see key_count)
  float scale_log2;          // the scores' scale · log2(e)
  int n_splits;
};

// S keys over at most `splits` blocks, whole tiles of `tile` keys each: split i covers keys
// i·keys .. (i+1)·keys; `used` of them hold keys. The host sizes the grid for the most keys, the
// kernels recompute it from the actual count, so a CUDA graph captured at one length replays at
// any.
struct SplitPlan {
  int64_t keys;
  int used;
};
__host__ __device__ inline SplitPlan split_plan(int64_t S, int64_t splits, int64_t tile) {
  const int64_t keys = div_up(div_up(S, splits), tile) * tile;
  return {keys, int(div_up(S, keys))};
}

// The keys: all S rows, or rows 0 .. positions[T − 1] (clamped to [T, S]) of a cache's storage.
__device__ inline int64_t key_count(const int64_t* positions, int64_t T, int64_t S) {
  if (!positions) return S;
  return min(max(positions[T - 1] + 1, T), S);
}

template <int DK, int RANK>
struct Shape {
  static_assert(DK % 16 == 0 && RANK % 64 == 0 && RANK <= DK, "mla_tc: DK / 16, RANK / 64");
  static constexpr int QLD = DK + kPad, KLD = DK + kPad, PLD = kKeys + kPad;
  static constexpr int kCols = RANK / 4;  // value columns per warp
  static constexpr size_t kSmem =
      size_t(kRows * QLD + 2 * kKeys * KLD + kRows * PLD) * sizeof(bf16) +
      size_t(4 * kRows) * sizeof(float);
};

template <int DK, int RANK>
__global__ void __launch_bounds__(kThreads) mla_decode_tc_kernel(const Params p) {
  using namespace attention_tc;
  using Sh = Shape<DK, RANK>;
  constexpr int QLD = Sh::QLD, KLD = Sh::KLD, PLD = Sh::PLD, kCols = Sh::kCols;
  constexpr int NV = kCols / 8;  // n-tiles of value columns per warp
  unsigned char* smem_raw = dynamic_smem();
  bf16* qs = reinterpret_cast<bf16*>(smem_raw);             // [kRows][QLD]
  bf16* ks = qs + kRows * QLD;                              // [2][kKeys][KLD]
  bf16* ps = ks + 2 * kKeys * KLD;                          // [kRows][PLD]: the tile's P
  float* red = reinterpret_cast<float*>(ps + kRows * PLD);  // [4 warps][kRows]
  const int lane = int(threadIdx.x % 32), warp = int(threadIdx.x / 32);
  const int g = lane / 4, c = lane % 4;

  const int64_t S = key_count(p.positions, p.T, p.S);
  const SplitPlan plan = split_plan(S, p.n_splits, kKeys);
  if (int(blockIdx.y) >= plan.used) return;  // no keys here (uniform over the block)
  const int64_t rows = p.T * p.H, r0 = int64_t(blockIdx.x) * kRows;
  const int64_t t = r0 / p.H, h0 = r0 % p.H;  // all 16 rows belong to token t
  const int64_t k_begin = int64_t(blockIdx.y) * plan.keys;
  // Token t sees latent rows 0 .. S − T + t; this split may hold none of them (a T > 1 step).
  const int64_t k_end = min(S - p.T + t + 1, k_begin + plan.keys);
  const int n_tiles = k_end > k_begin ? int(div_up(k_end - k_begin, kKeys)) : 0;

  load_tile<kRows, DK, kThreads>(qs, p.q + t * p.q_t + h0 * p.q_h, p.q_h, 0, kRows);
  if (n_tiles > 0)
    load_tile<kKeys, DK, kThreads>(ks, p.kv + k_begin * p.kv_s, p.kv_s, 0, k_end - k_begin);
  cp_async_commit();

  float o[NV][4];
  zero(o);
  // Rows g and g + 8 of the 16: the running max (the same in every warp) and this warp's share of
  // the row sum (a per-lane partial, like the attention forward's).
  float m_run[2] = {-INFINITY, -INFINITY}, l_run[2] = {0.0f, 0.0f};
  for (int j = 0; j < n_tiles; ++j) {
    const int64_t n0 = k_begin + int64_t(j) * kKeys;
    if (j + 1 < n_tiles)  // the next tile into the other buffer; rows past k_end become zeros
      load_tile<kKeys, DK, kThreads>(ks + ((j + 1) & 1) * kKeys * KLD, p.kv + (n0 + kKeys) * p.kv_s,
                                     p.kv_s, 0, k_end - n0 - kKeys);
    cp_async_commit();  // possibly empty: the wait leaves exactly the newest group in flight
    cp_async_wait<1>();
    __syncthreads();
    const bf16* kt = ks + (j & 1) * kKeys * KLD;

    float s[2][4];
    zero(s);
    mma_abt<DK, 2>(s, qs, QLD, kt + warp * 16 * KLD, KLD);
    float mx[2] = {-INFINITY, -INFINITY};
#pragma unroll
    for (int nt = 0; nt < 2; ++nt)
#pragma unroll
      for (int e = 0; e < 4; ++e) {
        const int64_t key = n0 + warp * 16 + nt * 8 + 2 * c + (e & 1);
        const float x = key < k_end ? s[nt][e] * p.scale_log2 : -INFINITY;
        s[nt][e] = x;
        mx[e / 2] = fmaxf(mx[e / 2], x);
      }
    mx[0] = quad_max(mx[0]);
    mx[1] = quad_max(mx[1]);
    if (c == 0) {
      red[warp * kRows + g] = mx[0];
      red[warp * kRows + g + 8] = mx[1];
    }
    __syncthreads();
    // The tile's first key is visible (n0 < k_end), so m is finite from the first tile on.
    float base[2], corr[2], rs[2] = {0.0f, 0.0f};
#pragma unroll
    for (int i = 0; i < 2; ++i) {
      float tile_max = red[g + 8 * i];
#pragma unroll
      for (int w = 1; w < 4; ++w) tile_max = fmaxf(tile_max, red[w * kRows + g + 8 * i]);
      const float m_new = fmaxf(m_run[i], tile_max);
      base[i] = m_new == -INFINITY ? 0.0f : m_new;  // never −inf − −inf
      corr[i] = exp2f(m_run[i] - base[i]);          // 0 on the first tile
      m_run[i] = m_new;
    }
#pragma unroll
    for (int nt = 0; nt < 2; ++nt) {
#pragma unroll
      for (int e = 0; e < 4; ++e) {
        s[nt][e] = exp2f(s[nt][e] - base[e / 2]);
        rs[e / 2] += s[nt][e];
      }
      const int col = warp * 16 + nt * 8 + 2 * c;
      store_bf16x2(ps + g * PLD + col, s[nt][0], s[nt][1]);
      store_bf16x2(ps + (g + 8) * PLD + col, s[nt][2], s[nt][3]);
    }
    l_run[0] = l_run[0] * corr[0] + rs[0];
    l_run[1] = l_run[1] * corr[1] + rs[1];
#pragma unroll
    for (int nt = 0; nt < NV; ++nt) {
      o[nt][0] *= corr[0];
      o[nt][1] *= corr[0];
      o[nt][2] *= corr[1];
      o[nt][3] *= corr[1];
    }
    __syncthreads();  // P is whole; the maxima are read

    uint32_t pa[kKeys / 16][4];
#pragma unroll
    for (int kk = 0; kk < kKeys / 16; ++kk)
      ldsm_x4(pa[kk], ps + (lane % 16) * PLD + kk * 16 + (lane / 16) * 8);
    mma_pb<kKeys / 16, NV>(o, pa, kt + warp * kCols, KLD);
    __syncthreads();  // the tile buffer and P are refilled by the next iteration
  }

  // The row sums: over the quad's lanes, then over the warps (each summed its own keys).
  const float lw0 = quad_sum(l_run[0]), lw1 = quad_sum(l_run[1]);
  if (c == 0) {
    red[warp * kRows + g] = lw0;
    red[warp * kRows + g + 8] = lw1;
  }
  __syncthreads();
#pragma unroll
  for (int i = 0; i < 2; ++i) {
    const int64_t row = r0 + g + 8 * i;
    float l = 0.0f;
#pragma unroll
    for (int w = 0; w < 4; ++w) l += red[w * kRows + g + 8 * i];
    if (p.n_splits > 1) {  // partials for the combine kernel (a row with no key here: m = −inf)
      const int64_t item = int64_t(blockIdx.y) * rows + row;
      if (warp == 0 && c == 0) {
        p.part_ml[2 * item] = m_run[i] == -INFINITY ? -INFINITY : m_run[i] * kLn2;
        p.part_ml[2 * item + 1] = l;
      }
      float* dst = p.part_acc + item * RANK + warp * kCols + 2 * c;
#pragma unroll
      for (int nt = 0; nt < NV; ++nt) {
        dst[nt * 8] = o[nt][2 * i];
        dst[nt * 8 + 1] = o[nt][2 * i + 1];
      }
    } else {
      const float inv = 1.0f / l;  // l ≥ 1: the row's maximum contributes 2^0
      bf16* dst = p.out + row * RANK + warp * kCols + 2 * c;
#pragma unroll
      for (int nt = 0; nt < NV; ++nt)
        store_bf16x2(dst + nt * 8, o[nt][2 * i] * inv, o[nt][2 * i + 1] * inv);
    }
  }
}

}  // namespace dseek::ops::cuda::mla_tc
