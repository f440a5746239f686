// Flash-style causal attention forward on the GPU, shared by attention.cu (one sequence, keys in a
// strided tensor) and paged_attention.cu (a batch of sequences, keys reached through page tables).
// Same maths as ops/cpu/attention.cpp: out = softmax(scale · q kᵀ) v over the visible keys, f32.
//
// A block serves R = warps · kRowsPerWarp query rows of one sequence and one key head hk. Row r of
// a (sequence, key head) is query t = r / G at head hk·G + r % G (G = H / Hk), so the G heads that
// share a key head share every key and value row the block reads: with MLA's absorbed decode (Hk =
// 1, 128 heads, T = 1) a block of 32 rows reads each latent row once for 32 heads.
// Keys stream through shared memory in tiles of 32 rows, converted to f32 (shared_rows.cuh: the
// whole block loads a tile, many loads in flight). Lane j of a warp scores
// key j of the tile against the warp's rows (each lane one whole dot product: no reduction per
// key), then every row updates its online softmax: running max m, running sum l and an f32
// accumulator over the value columns in registers (lane owns columns lane + 32c). No [T, S] matrix
// exists anywhere. Value rows wider than kMaxValueChunk are done in column chunks, recomputing the
// scores per chunk (only MLA's 512-wide latent values need one chunk; more is rare).
// When the blocks are too few to fill the GPU (a decode of a few sequences: one block per 32
// heads), the keys are split into ranges (flash-decoding): each block of a range leaves its rows'
// partial (m, l, unnormalised accumulator) in a workspace, and a second kernel combines the
// ranges, rescaling each by exp(m_range − m).
//
// The backward pass (attention.cu) runs the same kernel with out = nullptr to get each row's
// log-sum-exp and D = dout · out, which its dq and dk/dv kernels need.
#pragma once

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <memory>

#include "core/cuda.h"
#include "core/cuda/cuda_check.h"
#include "core/error.h"
#include "ops/cuda/element.cuh"
#include "ops/cuda/reduce.cuh"
#include "ops/cuda/shared_rows.cuh"
#include "ops/cuda/split_combine.cuh"

namespace dseek::ops::cuda::attention_detail {

constexpr int kKeyTile = 32;             // keys per shared-memory tile: one per lane
constexpr int kRowsPerWarp = 2;          // query rows a warp scores against each key it reads
constexpr int64_t kMaxValueChunk = 512;  // value columns per launch (16 registers per lane and row)

struct ForwardParams {
  const void* q;
  int64_t q_t, q_h;  // query row t, head h at q + t·q_t + h·q_h
  const void* k;
  int64_t k_s, k_h;  // key of cache row s, key head hk at k + s·k_s + hk·k_h
  const void* v;
  int64_t v_s, v_h;
  void* out;  // [rows, H, dv] contiguous; nullptr writes no output (backward statistics pass)
  int64_t H, G, dk, dv;
  int64_t c0, dvc;  // value columns c0 .. c0 + dvc of this launch
  float scale;
  // Dense (one sequence): T queries, the last T of S positions.
  int64_t T, S;
  // Paged: as cuda::PagedAttentionArgs (device pointers).
  const int64_t* q_start;
  const int64_t* pos0;
  const int32_t* page_table;
  const int64_t* page_start;
  int64_t page_tokens;
  // Backward statistics (nullptr: none): lse[row·H + h] = m + log l and, with dout ([rows, H,
  // dv] contiguous), dsum[row·H + h] = dout · out (accumulated over value chunks when
  // dsum_accumulate).
  float* lse;
  const void* dout;
  float* dsum;
  bool dsum_accumulate;
  // Key splits (set by attention_forward): split i covers keys i·split_keys .. (i+1)·split_keys;
  // with n_splits > 1 the kernel writes partials for rows_total·H rows: part_ml [n_splits][rows·H]
  // [2] (m, l) and part_acc [n_splits][rows·H][dvc].
  int n_splits;
  int64_t split_keys, rows_total;
  float* part_ml;
  float* part_acc;
};

// One sequence as a block sees it: its first q row, its query count and first query position.
struct SeqView {
  int64_t row0, T, pos0;
  const int32_t* pages;
};

template <bool Paged>
__device__ __forceinline__ SeqView seq_view(const ForwardParams& p, int64_t seq) {
  if constexpr (Paged) {
    const int64_t r0 = p.q_start[seq];
    return SeqView{r0, p.q_start[seq + 1] - r0, p.pos0[seq], p.page_table + p.page_start[seq]};
  } else {
    return SeqView{0, p.T, p.S - p.T, nullptr};
  }
}

// The cache row holding position s of the sequence.
template <bool Paged>
__device__ __forceinline__ int64_t cache_row(const SeqView& sv, int64_t s, int64_t page_tokens) {
  if constexpr (Paged)
    return int64_t(sv.pages[s / page_tokens]) * page_tokens + s % page_tokens;
  else
    return s;
}

// Shared memory of a block of `warps` warps: q rows [R][dk], key tile [32][dk | 1] (odd stride:
// lane j reads row j, so 32 lanes hit 32 banks), value tile [32][dvc].
inline size_t forward_shared_bytes(int warps, int64_t dk, int64_t dvc) {
  return size_t(int64_t(warps) * kRowsPerWarp * dk + kKeyTile * (dk | 1) + kKeyTile * dvc) *
         sizeof(float);
}

template <typename T, int NV, bool Paged>
__global__ void __launch_bounds__(512) attention_forward_kernel(const ForwardParams p) {
  extern __shared__ float smem[];
  __shared__ int64_t k_off[kKeyTile], v_off[kKeyTile];
  const int lane = int(threadIdx.x % 32), warp = int(threadIdx.x / 32);
  const int warps = int(blockDim.x / 32), R = warps * kRowsPerWarp;
  const int split = int(blockIdx.z % unsigned(p.n_splits));
  const SeqView sv = seq_view<Paged>(p, blockIdx.z / unsigned(p.n_splits));
  const int64_t rows = sv.T * p.G;
  const int64_t r0 = int64_t(blockIdx.x) * R;
  if (r0 >= rows) return;  // the whole block: this sequence has fewer rows than the longest
  // Keys this block reads: those its rows see, within its split.
  const int64_t block_keys = sv.pos0 + (min(rows, r0 + R) - 1) / p.G + 1;
  const int64_t k_begin = p.n_splits > 1 ? split * p.split_keys : 0;
  const int64_t k_end = p.n_splits > 1 ? min(block_keys, k_begin + p.split_keys) : block_keys;
  const int64_t hk = blockIdx.y;
  const int64_t dk = p.dk, dvc = p.dvc, kst = dk | 1;
  float* qs = smem;
  float* ks = qs + R * dk;
  float* vs = ks + kKeyTile * kst;
  const T* q = static_cast<const T*>(p.q);
  const T* k = static_cast<const T*>(p.k);
  const T* v = static_cast<const T*>(p.v);

  load_rows_f32<T>(qs, dk, R, int(dk), [&](int r) -> const T* {
    const int64_t row = r0 + r;
    return row < rows ? q + (sv.row0 + row / p.G) * p.q_t + (hk * p.G + row % p.G) * p.q_h
                      : nullptr;
  });

  // This warp's rows: the end of the keys each sees in this split (0 for rows past the end of
  // the sequence), online softmax state. A row with no key in the split keeps m = −inf, l = 0.
  int64_t row_end[kRowsPerWarp];
  float m[kRowsPerWarp], l[kRowsPerWarp], acc[kRowsPerWarp][NV];
  int64_t warp_end = 0;
  for (int r = 0; r < kRowsPerWarp; ++r) {
    const int64_t row = r0 + warp * kRowsPerWarp + r;
    row_end[r] = row < rows ? min(k_end, sv.pos0 + row / p.G + 1) : 0;
    warp_end = max(warp_end, row_end[r]);
    m[r] = -INFINITY;
    l[r] = 0.0f;
    for (int c = 0; c < NV; ++c) acc[r][c] = 0.0f;
  }

  for (int64_t s0 = k_begin; s0 < k_end; s0 += kKeyTile) {
    __syncthreads();  // the previous tile is consumed (the first time: the q rows are stored)
    if (threadIdx.x < kKeyTile) {
      const int64_t s = s0 + threadIdx.x;
      const bool in = s < k_end;
      const int64_t row = in ? cache_row<Paged>(sv, s, p.page_tokens) : 0;
      k_off[threadIdx.x] = in ? row * p.k_s + hk * p.k_h : -1;
      v_off[threadIdx.x] = in ? row * p.v_s + hk * p.v_h + p.c0 : -1;
    }
    __syncthreads();
    // Keys past the block's last visible one (or its split) are never read (a paged pool holds
    // other sequences' rows there, or nothing); their tile rows are zero and their scores masked.
    load_rows_f32<T>(ks, kst, kKeyTile, int(dk),
                     [&](int j) -> const T* { return k_off[j] >= 0 ? k + k_off[j] : nullptr; });
    load_rows_f32<T>(vs, dvc, kKeyTile, int(dvc),
                     [&](int j) -> const T* { return v_off[j] >= 0 ? v + v_off[j] : nullptr; });
    __syncthreads();
    if (warp_end <= s0) continue;  // the same for the whole warp; no barrier until the loop top

    float dot[kRowsPerWarp];
    for (int r = 0; r < kRowsPerWarp; ++r) dot[r] = 0.0f;
    const float* kj = ks + lane * kst;
    const float* qw = qs + int64_t(warp) * kRowsPerWarp * dk;
    for (int64_t i = 0; i < dk; ++i) {
      const float kv = kj[i];
      for (int r = 0; r < kRowsPerWarp; ++r) dot[r] += qw[r * dk + i] * kv;
    }
    const int n_tile = int(min(int64_t(kKeyTile), warp_end - s0));
    for (int r = 0; r < kRowsPerWarp; ++r) {
      if (row_end[r] <= s0) continue;  // uniform over the warp: the shuffles below see all lanes
      const float sc = s0 + lane < row_end[r] ? dot[r] * p.scale : -INFINITY;
      // Key s0 is visible here, so m_new is finite from the row's first tile on.
      const float m_new = fmaxf(m[r], warp_max(sc));
      const float pj = expf(sc - m_new);
      const float corr = expf(m[r] - m_new);
      l[r] = l[r] * corr + warp_sum(pj);
      m[r] = m_new;
      for (int c = 0; c < NV; ++c) acc[r][c] *= corr;
      for (int j = 0; j < n_tile; ++j) {
        const float pv = __shfl_sync(0xffffffffu, pj, j);
        const float* vj = vs + j * dvc;
        for (int c = 0; c < NV; ++c)
          if (lane + 32 * c < dvc) acc[r][c] += pv * vj[lane + 32 * c];
      }
    }
  }

  if (p.n_splits > 1) {  // partials for the combine kernel, every row of the sequence
    for (int r = 0; r < kRowsPerWarp; ++r) {
      const int64_t row = r0 + warp * kRowsPerWarp + r;
      if (row >= rows) continue;
      const int64_t item =
          int64_t(split) * p.rows_total * p.H + (sv.row0 + row / p.G) * p.H + hk * p.G + row % p.G;
      if (lane == 0) {
        p.part_ml[2 * item] = m[r];
        p.part_ml[2 * item + 1] = l[r];
      }
      float* dst = p.part_acc + item * dvc;
      for (int c = 0; c < NV; ++c)
        if (lane + 32 * c < dvc) dst[lane + 32 * c] = acc[r][c];
    }
    return;
  }
  T* out = static_cast<T*>(p.out);
  const T* dout = static_cast<const T*>(p.dout);
  for (int r = 0; r < kRowsPerWarp; ++r) {
    if (row_end[r] == 0) continue;  // uniform over the warp
    const int64_t row = r0 + warp * kRowsPerWarp + r;
    const int64_t qrow = sv.row0 + row / p.G, h = hk * p.G + row % p.G;
    const int64_t o = (qrow * p.H + h) * p.dv + p.c0;
    const float inv = 1.0f / l[r];
    float dsum = 0.0f;
    for (int c = 0; c < NV; ++c) {
      const int64_t d = lane + 32 * c;
      if (d >= dvc) continue;
      const float y = acc[r][c] * inv;
      if (out) out[o + d] = from_f32<T>(y);
      if (dout) dsum += y * to_f32(dout[o + d]);
    }
    if (p.lse && lane == 0) p.lse[qrow * p.H + h] = m[r] + logf(l[r]);
    if (dout) {
      dsum = warp_sum(dsum);
      if (lane == 0) {
        float& dst = p.dsum[qrow * p.H + h];
        dst = p.dsum_accumulate ? dst + dsum : dsum;
      }
    }
  }
}

// Joins the key splits of row item = qrow·H + h (one warp each): M = max_i m_i, L = Σ_i l_i
// e^(m_i − M), out = Σ_i acc_i e^(m_i − M) / L; lse and dsum as the forward kernel leaves them.
// Split 0 holds key 0 of every row, so M is finite; empty splits (m = −inf) weigh 0.
template <typename T>
__global__ void __launch_bounds__(256) attention_combine_kernel(const ForwardParams p) {
  const int lane = int(threadIdx.x % 32);
  const int64_t items = p.rows_total * p.H;
  const int64_t item = int64_t(blockIdx.x) * (blockDim.x / 32) + threadIdx.x / 32;
  if (item >= items) return;  // the whole warp; this kernel has no barrier
  const SplitTotals s = split_totals(p.part_ml, p.n_splits, items, item);
  const float M = s.max, L = s.sum, inv = 1.0f / L;
  T* out = static_cast<T*>(p.out);
  const T* dout = static_cast<const T*>(p.dout);
  const int64_t o = item * p.dv + p.c0;
  float dsum = 0.0f;
  for (int64_t d = lane; d < p.dvc; d += 32) {
    const float y =
        split_weighted_sum(p.part_ml, p.part_acc, p.n_splits, items, item, p.dvc, d, M) * inv;
    if (out) out[o + d] = from_f32<T>(y);
    if (dout) dsum += y * to_f32(dout[o + d]);
  }
  if (p.lse && lane == 0) p.lse[item] = M + logf(L);
  if (dout) {
    dsum = warp_sum(dsum);
    if (lane == 0) p.dsum[item] = p.dsum_accumulate ? p.dsum[item] + dsum : dsum;
  }
}

// The largest dynamic shared memory a block may opt into on the current device.
inline int max_shared_bytes() {
  static const int bytes = dseek::cuda::device_attribute(cudaDevAttrMaxSharedMemoryPerBlockOptin);
  return bytes;
}

using dseek::cuda::multiprocessors;

// Dynamic shared memory a block may use: the opt-in maximum less room for static arrays.
inline size_t shared_budget() {
  return size_t(max_shared_bytes()) - 1024;
}

// Lets `kernel` use `bytes` of dynamic shared memory (above 48 KiB it must opt in).
template <typename Kernel>
void allow_shared_bytes(Kernel kernel, size_t bytes) {
  DSEEK_CUDA_CHECK(
      cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, int(bytes)));
}

template <typename T, int NV, bool Paged>
void launch_forward(const ForwardParams& p, dim3 grid, int warps, size_t smem) {
  auto kernel = attention_forward_kernel<T, NV, Paged>;
  allow_shared_bytes(kernel, smem);
  kernel<<<grid, unsigned(warps * 32), smem, dseek::cuda::stream()>>>(p);
  DSEEK_CUDA_CHECK_LAUNCH("attention_forward_kernel");
  if (p.n_splits > 1) {
    const int64_t items = p.rows_total * p.H;
    attention_combine_kernel<T>
        <<<unsigned(dseek::cuda::ceil_div<int64_t>(items, 8)), 256, 0, dseek::cuda::stream()>>>(p);
    DSEEK_CUDA_CHECK_LAUNCH("attention_combine_kernel");
  }
}

// Splits of the keys for a launch of `blocks` blocks over sequences of at most max_keys keys:
// enough for two blocks per multiprocessor, each split at least kMinSplitKeys long.
constexpr int64_t kMinSplitKeys = 128;
inline int64_t key_splits(int64_t blocks, int64_t max_keys, int64_t n_seqs) {
  const int64_t want = dseek::cuda::ceil_div<int64_t>(2 * multiprocessors(), blocks);
  const int64_t most = std::max<int64_t>(1, max_keys / kMinSplitKeys);
  return std::clamp<int64_t>(std::min(want, most), 1, std::max<int64_t>(1, 65535 / n_seqs));
}

// Runs the forward over n_seqs sequences of at most max_T queries and max_keys keys each,
// rows_total query rows in all (p's dense or paged fields filled in; the chunk and split fields
// are set here, one launch per value chunk).
template <bool Paged>
void attention_forward(ForwardParams p, int64_t n_seqs, int64_t max_T, int64_t max_keys,
                       int64_t rows_total, int64_t Hk, DType act, const char* op) {
  const int64_t rows = max_T * p.G;  // per (sequence, key head)
  if (rows == 0 || n_seqs == 0 || p.dv == 0) return;
  p.rows_total = rows_total;
  DSEEK_CHECK(Hk <= 65535 && n_seqs <= 65535,
              "[{}] {} key heads and {} sequences: the kernel takes at most 65535 of each", op, Hk,
              n_seqs);
  for (int64_t c0 = 0; c0 < p.dv; c0 += kMaxValueChunk) {
    p.c0 = c0;
    p.dvc = std::min(kMaxValueChunk, p.dv - c0);
    p.dsum_accumulate = c0 > 0;
    // Many heads per key head (MLA) share tiles in blocks of 32 rows; otherwise 16 at most.
    const int64_t max_warps = p.G >= 32 ? 16 : 8;
    int warps =
        int(std::clamp<int64_t>(dseek::cuda::ceil_div<int64_t>(rows, kRowsPerWarp), 1, max_warps));
    while (warps > 1 && forward_shared_bytes(warps, p.dk, p.dvc) > shared_budget()) warps /= 2;
    const size_t smem = forward_shared_bytes(warps, p.dk, p.dvc);
    DSEEK_CHECK(
        smem <= shared_budget(),
        "[{}] head dims dk {} / dv {} need {} bytes of shared memory, the GPU gives a block "
        "{}",
        op, p.dk, p.dv, smem, shared_budget());
    const int64_t row_blocks = dseek::cuda::ceil_div<int64_t>(rows, int64_t(warps) * kRowsPerWarp);
    const int64_t splits = key_splits(row_blocks * Hk * n_seqs, max_keys, n_seqs);
    p.split_keys =
        dseek::cuda::ceil_div<int64_t>(dseek::cuda::ceil_div(max_keys, splits), kKeyTile) *
        kKeyTile;
    p.n_splits = int(dseek::cuda::ceil_div(max_keys, p.split_keys));
    std::unique_ptr<void, void (*)(void*)> workspace(nullptr, dseek::cuda::free);
    if (p.n_splits > 1) {
      const size_t n = size_t(p.n_splits) * size_t(rows_total * p.H);
      workspace.reset(dseek::cuda::alloc(n * size_t(2 + p.dvc) * sizeof(float)));
      p.part_ml = static_cast<float*>(workspace.get());
      p.part_acc = p.part_ml + 2 * n;
    }
    const dim3 grid(unsigned(row_blocks), unsigned(Hk), unsigned(n_seqs * p.n_splits));
    DSEEK_DISPATCH_ACT(act, T, {
      if (p.dvc <= 64)
        launch_forward<T, 2, Paged>(p, grid, warps, smem);
      else if (p.dvc <= 128)
        launch_forward<T, 4, Paged>(p, grid, warps, smem);
      else if (p.dvc <= 256)
        launch_forward<T, 8, Paged>(p, grid, warps, smem);
      else
        launch_forward<T, 16, Paged>(p, grid, warps, smem);
    });
  }
}

}  // namespace dseek::ops::cuda::attention_detail
