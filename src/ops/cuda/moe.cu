// MoE ops on the GPU (maths in ops/moe.h, CPU twins in ops/cpu/moe.cpp). Nothing here copies to
// the host: expert counts, offsets and tile schedules are computed and read on the device, so a
// MoE layer runs as a fixed sequence of launches.
//
// - moe_route: one warp per token; its E scores live in shared memory; group scores, group
//   ranks (a ballot of the kept groups) and K rounds of warp arg-max give the same choice as the
//   CPU's partial_sort under the same total order (larger first, NaN first, lower index on ties).
// - moe_dispatch: integer histogram, one-block exclusive scan, then one block per expert that
//   walks the slots in order and places its own by ballot prefix counts. The order never depends
//   on atomics (only the counts come from integer atomics, whose sums are exact).
// - grouped_linear: one launch for all experts. A device-side scan turns the offsets into a tile
//   schedule (tiles of 64 rows per expert); each block binary-searches its expert and runs a
//   64×64×16 shared-memory tile with f32 accumulation. The weight gradient gives each expert's
//   [out, in] matrix its own blocks, each summing its expert's rows in order (deterministic).
//   bf16 activations whose row lengths are multiples of 8 take the tensor-core kernels
//   (grouped_gemm_tc.h: wgmma on Hopper, mma.sync elsewhere; same contracts, 128-row tiles)
//   instead; the kernels here
//   serve f32 and the shapes those do not take.
// - moe_combine: one block per token; its K rows are summed in ascending permuted position
//   (= ascending expert, the CPU's order), products rounded before the sum like the CPU's.
#include <algorithm>
#include <climits>
#include <memory>

#include "core/cuda.h"
#include "core/cuda/cuda_check.h"
#include "core/cuda/pdl.cuh"
#include "ops/cuda/cuda_ops.h"
#include "ops/cuda/element.cuh"
#include "ops/cuda/expert_tiles.cuh"
#include "ops/cuda/grouped_gemm_tc.h"
#include "ops/cuda/grouped_gemv.h"
#include "ops/cuda/moe_combine_kernels.cuh"
#include "ops/cuda/reduce.cuh"

namespace dseek::ops::cuda {

using dseek::cuda::ceil_div;
using dseek::cuda::stream;

namespace {

constexpr unsigned kFull = 0xffffffffu;

// ---- routing ---------------------------------------------------------------------------------

// torch.topk's order, as cpu::ranks_before: larger first, NaN above everything, ties to the lower
// index.
__device__ __forceinline__ bool ranks_before(float a, int ia, float b, int ib) {
  const bool na = isnan(a), nb = isnan(b);
  if (na != nb) return na;
  if (!na && a != b) return a > b;
  return ia < ib;
}

// Every lane ends with the warp's best (v, i).
__device__ __forceinline__ void warp_best(float& v, int& i) {
  for (int offset = 16; offset > 0; offset /= 2) {
    const float ov = __shfl_xor_sync(kFull, v, offset);
    const int oi = __shfl_xor_sync(kFull, i, offset);
    if (ranks_before(ov, oi, v, i)) {
      v = ov;
      i = oi;
    }
  }
}

__device__ __forceinline__ double warp_sum_double(double v) {
  for (int offset = 16; offset > 0; offset /= 2) v += __shfl_xor_sync(kFull, v, offset);
  return v;
}

constexpr int kRouteWarps = 4;  // tokens per block

// Token t's routing by one warp (every lane calls it; only __syncwarp inside), with s and c the
// warp's own E floats each of shared memory. Shared by moe_route_kernel and the decode step's
// small_route_kernel, so both give the same bits.
__device__ void route_token(const float* logits, int64_t t, int64_t ld, const float* bias,
                            const MoeRouteArgs& a, float* s, float* c, int32_t* ids, float* weights,
                            float* scores) {
  const int lane = threadIdx.x % 32;
  const int E = int(a.experts), K = int(a.top_k);
  const bool noaux = a.method == 2;
  const float* z = logits + t * ld;

  // Scores, as cpu::moe_route: softmax with the sum in double, or sigmoid.
  if (a.sigmoid) {
    for (int e = lane; e < E; e += 32) s[e] = 1.0f / (1.0f + expf(-z[e]));
  } else {
    float m = -INFINITY;
    for (int e = lane; e < E; e += 32) m = fmaxf(m, z[e]);
    m = warp_max(m);
    double sum = 0.0;
    for (int e = lane; e < E; e += 32) {
      const float v = expf(z[e] - m);
      s[e] = v;
      sum += v;
    }
    const float inv = float(1.0 / warp_sum_double(sum));
    for (int e = lane; e < E; e += 32) s[e] *= inv;
  }
  for (int e = lane; e < E; e += 32) {
    c[e] = s[e] + (noaux && bias ? bias[e] : 0.0f);
    scores[t * E + e] = s[e];
  }
  __syncwarp();

  if (a.method != 0) {
    // Group scores (lane g owns group g), then keep the groups that fewer than topk_group
    // groups rank before.
    const int G = int(a.n_group), group_size = E / G;
    float score = -INFINITY;
    if (lane < G) {
      const float* cg = c + lane * group_size;
      if (noaux) {
        float v1 = -INFINITY, v2 = -INFINITY;
        int i1 = INT_MAX, i2 = INT_MAX;
        for (int j = 0; j < group_size; ++j) {
          const float v = cg[j];
          if (ranks_before(v, j, v1, i1)) {
            v2 = v1;
            i2 = i1;
            v1 = v;
            i1 = j;
          } else if (ranks_before(v, j, v2, i2)) {
            v2 = v;
            i2 = j;
          }
        }
        score = cg[i1] + cg[i2];
      } else {
        score = cg[0];  // std::max_element: the first of the largest under operator<
        for (int j = 1; j < group_size; ++j) {
          if (score < cg[j]) score = cg[j];
        }
      }
    }
    int rank = 0;
    for (int h = 0; h < G; ++h) {
      const float other = __shfl_sync(kFull, score, h);
      if (h != lane && ranks_before(other, h, score, lane)) ++rank;
    }
    const unsigned kept = __ballot_sync(kFull, lane < G && rank < a.topk_group);
    // Every lane has finished reading its group's c before any lane zeroes experts (the ballot
    // converges the warp but, unlike __syncwarp, does not order shared-memory accesses).
    __syncwarp();
    for (int e = lane; e < E; e += 32) {
      if (!((kept >> (e / group_size)) & 1u)) c[e] = 0.0f;
    }
    __syncwarp();
  }

  // Top-K of c: K rounds of warp arg-max; lane l owns experts l, l + 32, ... (bit j of `taken`).
  unsigned taken = 0;
  int32_t* id = ids + t * K;
  float* w = weights + t * K;
  for (int k = 0; k < K; ++k) {
    float bv = -INFINITY;
    int bi = INT_MAX;
    for (int j = 0, e = lane; e < E; ++j, e += 32) {
      if ((taken >> j) & 1u) continue;
      if (ranks_before(c[e], e, bv, bi)) {
        bv = c[e];
        bi = e;
      }
    }
    warp_best(bv, bi);
    if ((bi & 31) == lane) taken |= 1u << (bi >> 5);
    if (lane == 0) {
      id[k] = bi;
      w[k] = noaux ? s[bi] : c[bi];
    }
  }
  if (lane == 0) {
    if (a.normalise) {
      float sum = 0.0f;
      for (int k = 0; k < K; ++k) sum += w[k];
      const float denominator = sum + 1e-20f;
      for (int k = 0; k < K; ++k) w[k] /= denominator;
    }
    if (a.scale) {
      for (int k = 0; k < K; ++k) w[k] *= a.routed_scaling_factor;
    }
  }
}

__global__ void moe_route_kernel(const float* logits, int64_t T, int64_t ld, const float* bias,
                                 MoeRouteArgs a, int32_t* ids, float* weights, float* scores) {
  extern __shared__ float route_smem[];  // per warp: s[E], c[E]
  const int warp = threadIdx.x / 32;
  const int64_t t = int64_t(blockIdx.x) * kRouteWarps + warp;
  if (t >= T) return;  // whole warps leave; only __syncwarp below
  float* s = route_smem + size_t(warp) * 2 * size_t(a.experts);
  route_token(logits, t, ld, bias, a, s, s + a.experts, ids, weights, scores);
}

// ---- dispatch --------------------------------------------------------------------------------

constexpr int64_t kSharedHistogram = 8192;  // experts counted in shared memory (32 KiB)

__global__ void histogram_kernel(const int32_t* ids, int64_t N, int64_t E, unsigned* counts) {
  extern __shared__ unsigned local_counts[];
  const bool shared = E <= kSharedHistogram;  // uniform over the block
  if (shared) {
    for (int64_t e = threadIdx.x; e < E; e += blockDim.x) local_counts[e] = 0;
    __syncthreads();
  }
  for (int64_t s = int64_t(blockIdx.x) * blockDim.x + threadIdx.x; s < N;
       s += int64_t(gridDim.x) * blockDim.x) {
    const int32_t id = ids[s];
    if (id < 0 || id >= E) continue;
    atomicAdd(shared ? &local_counts[id] : &counts[id], 1u);
  }
  if (shared) {
    __syncthreads();
    for (int64_t e = threadIdx.x; e < E; e += blockDim.x) {
      if (local_counts[e]) atomicAdd(&counts[e], local_counts[e]);
    }
  }
}

constexpr int kBM = 64, kBN = 64, kBK = 16, kGemmThreads = 256;

// One block of 1024 threads: out[0] = 0, out[e + 1] = out[e] + value(e) for e < E, where value is
// counts[e] or (TILES) the number of tile_rows-row tiles of expert e,
// ceil((o[e+1] − o[e]) / tile_rows).
template <bool TILES>
__global__ void scan_kernel(const unsigned* counts, const int64_t* offsets, int64_t E,
                            int64_t tile_rows, int64_t* out) {
  __shared__ int64_t warp_totals[32];
  __shared__ int64_t carry;
  const int lane = threadIdx.x % 32, warp = threadIdx.x / 32, warps = blockDim.x / 32;
  if (threadIdx.x == 0) {
    carry = 0;
    out[0] = 0;
  }
  __syncthreads();
  for (int64_t base = 0; base < E; base += blockDim.x) {
    const int64_t e = base + threadIdx.x;
    int64_t v = 0;
    if (e < E) {
      v = TILES ? (offsets[e + 1] - offsets[e] + tile_rows - 1) / tile_rows : int64_t(counts[e]);
    }
    for (int d = 1; d < 32; d *= 2) {
      const int64_t u = __shfl_up_sync(kFull, v, d);
      if (lane >= d) v += u;
    }
    if (lane == 31) warp_totals[warp] = v;
    __syncthreads();
    if (warp == 0) {
      int64_t x = lane < warps ? warp_totals[lane] : 0;
      for (int d = 1; d < 32; d *= 2) {
        const int64_t u = __shfl_up_sync(kFull, x, d);
        if (lane >= d) x += u;
      }
      warp_totals[lane] = x;
    }
    __syncthreads();
    const int64_t inclusive = carry + (warp > 0 ? warp_totals[warp - 1] : 0) + v;
    if (e < E) out[e + 1] = inclusive;
    __syncthreads();  // everyone has read carry and warp_totals
    if (threadIdx.x == blockDim.x - 1) carry = inclusive;
    __syncthreads();
  }
}

constexpr int kPlaceThreads = 256;

// Block e walks the slots in order and writes its own at offsets[e] + (earlier slots of e).
__global__ void place_kernel(const int32_t* ids, int64_t N, const int64_t* offsets, int32_t* order,
                             int32_t* position) {
  __shared__ int warp_counts[kPlaceThreads / 32];
  const int e = int(blockIdx.x);
  const int64_t begin = offsets[e], count = offsets[e + 1] - begin;
  const int lane = threadIdx.x % 32, warp = threadIdx.x / 32;
  int64_t placed = 0;  // the same in every thread, so the loop condition is uniform
  for (int64_t base = 0; base < N && placed < count; base += kPlaceThreads) {
    const int64_t s = base + threadIdx.x;
    const bool mine = s < N && ids[s] == e;
    const unsigned ballot = __ballot_sync(kFull, mine);
    if (lane == 0) warp_counts[warp] = __popc(ballot);
    __syncthreads();
    int before = 0, total = 0;
    for (int w = 0; w < kPlaceThreads / 32; ++w) {
      const int n = warp_counts[w];
      if (w < warp) before += n;
      total += n;
    }
    if (mine) {
      const int64_t i = begin + placed + before + __popc(ballot & ((1u << lane) - 1u));
      order[i] = int32_t(s);
      position[s] = int32_t(i);
    }
    placed += total;
    __syncthreads();  // warp_counts is rewritten next round
  }
}

// A decode step's dispatch (a few tokens' slots) in one block instead of three kernels and three
// fills, which in a decode step cost more in launches than in work: every slot's order/position
// set to −1, the counts in shared memory, one warp's scan into the offsets, then each warp places
// the slots of experts warp, warp + 32, ... in slot order with ballots (the same stable order as
// place_kernel).
constexpr int64_t kSmallDispatchSlots = 2048, kSmallDispatchExperts = 1024;
constexpr int kSmallDispatchThreads = 1024;

// The block's dispatch of N slots over E experts (every thread of the block calls it);
// counts[E] and starts[E + 1] in shared memory.
__device__ void dispatch_in_block(const int32_t* ids, int N, int E, int64_t* offsets,
                                  int32_t* order, int32_t* position, unsigned* counts,
                                  int64_t* starts) {
  const int lane = int(threadIdx.x) % 32, warp = int(threadIdx.x) / 32;
  for (int i = int(threadIdx.x); i < N; i += blockDim.x) order[i] = position[i] = -1;
  for (int e = int(threadIdx.x); e < E; e += blockDim.x) counts[e] = 0;
  __syncthreads();
  for (int s = int(threadIdx.x); s < N; s += blockDim.x) {
    const int32_t id = ids[s];
    if (id >= 0 && id < E) atomicAdd(&counts[id], 1u);
  }
  __syncthreads();
  if (warp == 0) {
    int64_t carry = 0;
    if (lane == 0) starts[0] = offsets[0] = 0;
    for (int base = 0; base < E; base += 32) {
      int64_t v = base + lane < E ? int64_t(counts[base + lane]) : 0;
      for (int d = 1; d < 32; d *= 2) {
        const int64_t u = __shfl_up_sync(kFull, v, d);
        if (lane >= d) v += u;
      }
      if (base + lane < E) starts[base + lane + 1] = offsets[base + lane + 1] = carry + v;
      carry += __shfl_sync(kFull, v, 31);
    }
  }
  __syncthreads();
  const int warps = int(blockDim.x) / 32;
  for (int e = warp; e < E; e += warps) {
    const int64_t begin = starts[e], count = starts[e + 1] - begin;
    int64_t placed = 0;  // the same in every lane: the loop condition is warp-uniform
    for (int base = 0; base < N && placed < count; base += 32) {
      const int s = base + lane;
      const bool mine = s < N && ids[s] == e;
      const unsigned ballot = __ballot_sync(kFull, mine);
      if (mine) {
        const int64_t i = begin + placed + __popc(ballot & ((1u << lane) - 1u));
        order[i] = int32_t(s);
        position[s] = int32_t(i);
      }
      placed += __popc(ballot);
    }
  }
}

__global__ void __launch_bounds__(kSmallDispatchThreads)
    small_dispatch_kernel(const int32_t* ids, int N, int E, int64_t* offsets, int32_t* order,
                          int32_t* position) {
  __shared__ unsigned counts[kSmallDispatchExperts];
  __shared__ int64_t starts[kSmallDispatchExperts + 1];
  dispatch_in_block(ids, N, E, offsets, order, position, counts, starts);
}

// A decode step's routing, dispatch and permutation in one block (three launches before, for a
// few tokens' work): warp t routes token t (route_token, its scores in shared memory), the block
// then places the T·K slots (dispatch_in_block) and copies each permuted row. The global writes
// of one phase are read by the next after __syncthreads, which makes them visible to the block.
constexpr int64_t kSmallRouteTokens = 8, kSmallRouteExperts = 256;

template <typename T>
__global__ void __launch_bounds__(kSmallDispatchThreads)
    small_route_kernel(const float* logits, int64_t tokens, int64_t ld, const float* bias,
                       MoeRouteArgs a, int32_t* ids, float* weights, float* scores,
                       int64_t* offsets, int32_t* order, int32_t* position, const T* x, int64_t D,
                       T* x_perm) {
  __shared__ unsigned counts[kSmallDispatchExperts];
  __shared__ int64_t starts[kSmallDispatchExperts + 1];
  __shared__ float route_smem[kSmallRouteTokens * 2 * kSmallRouteExperts];
  const int warp = int(threadIdx.x) / 32, lane = int(threadIdx.x) % 32;
  const int E = int(a.experts), K = int(a.top_k), N = int(tokens) * K;
  if (warp < tokens) {
    float* s = route_smem + size_t(warp) * 2 * size_t(E);
    route_token(logits, warp, ld, bias, a, s, s + E, ids, weights, scores);
  }
  __syncthreads();
  dispatch_in_block(ids, N, E, offsets, order, position, counts, starts);
  __syncthreads();
  // The permuted rows by the whole block, 16 bytes a thread where the rows allow: a decode
  // step's 6 rows of 2048 bf16 copied a warp a row, 2 bytes a lane, were a chain of 64 dependent
  // loads a lane, most of this kernel's 17.5 µs on an H100.
  const bool vectors = (D * int64_t(sizeof(T))) % 16 == 0 &&
                       reinterpret_cast<uintptr_t>(x) % 16 == 0 &&
                       reinterpret_cast<uintptr_t>(x_perm) % 16 == 0;
  if (vectors) {
    const int64_t per_row = D * int64_t(sizeof(T)) / 16;
    for (int64_t v = threadIdx.x; v < int64_t(N) * per_row; v += blockDim.x) {
      const int64_t i = v / per_row, j = v % per_row;
      const int32_t slot = order[i];
      // from_f32<T>(0.0f) is all zero bits, as the scalar loop writes.
      reinterpret_cast<uint4*>(x_perm + i * D)[j] =
          slot < 0 ? make_uint4(0, 0, 0, 0)
                   : reinterpret_cast<const uint4*>(x + int64_t(slot / K) * D)[j];
    }
    return;
  }
  const int warps = int(blockDim.x) / 32;
  for (int i = warp; i < N; i += warps) {
    const int32_t slot = order[i];
    T* dst = x_perm + int64_t(i) * D;
    const T* src = x + int64_t(slot < 0 ? 0 : slot / K) * D;
    for (int64_t j = lane; j < D; j += 32) dst[j] = slot < 0 ? from_f32<T>(0.0f) : src[j];
  }
}

// ---- permute ---------------------------------------------------------------------------------

template <typename T>
__global__ void permute_kernel(const T* x, const int32_t* order, int64_t K, int64_t D, T* x_perm) {
  const int64_t i = blockIdx.x;
  const int32_t s = order[i];
  T* dst = x_perm + i * D;
  if (s < 0) {
    for (int64_t j = threadIdx.x; j < D; j += blockDim.x) dst[j] = from_f32<T>(0.0f);
    return;
  }
  const T* src = x + int64_t(s) / K * D;
  for (int64_t j = threadIdx.x; j < D; j += blockDim.x) dst[j] = src[j];
}

template <typename T>
__global__ void permute_backward_kernel(const T* dx_perm, const int32_t* position, int64_t K,
                                        int64_t D, T* dx) {
  const int64_t t = blockIdx.x;
  const int32_t* p = position + t * K;
  for (int64_t j = threadIdx.x; j < D; j += blockDim.x) {
    float acc = 0.0f;
    for (int64_t k = 0; k < K; ++k) {
      if (p[k] >= 0) acc += to_f32(dx_perm[int64_t(p[k]) * D + j]);
    }
    dx[t * D + j] = from_f32<T>(acc);
  }
}

// ---- grouped GEMM ----------------------------------------------------------------------------

struct GemmTiles {
  float a[kBK][kBM + 4];
  float b[kBK][kBN + 4];
};

// acc += Σ_{k0 ≤ k < k1} A(m, k)·B(k, n) over the block's 64×64 tile at (m0, n0), with
// A(m, k) = A[m·a_m + k·a_k], B(k, n) = B[k·b_k + n·b_n], rows m < m_end, columns n < n_end.
// Thread (ty, tx) owns rows m0 + ty + 16i and columns n0 + tx + 16j (i, j < 4). The *_K_CONTIG
// flags pick the load order that reads consecutive addresses with consecutive threads.
template <typename T, bool A_K_CONTIG, bool B_K_CONTIG>
__device__ __forceinline__ void gemm_tile(const T* A, int64_t a_m, int64_t a_k, int64_t m0,
                                          int64_t m_end, const T* B, int64_t b_k, int64_t b_n,
                                          int64_t n0, int64_t n_end, int64_t k0, int64_t k1,
                                          GemmTiles& tiles, float (&acc)[4][4]) {
  const int tid = threadIdx.x, tx = tid % 16, ty = tid / 16;
  for (int64_t kt = k0; kt < k1; kt += kBK) {
    for (int l = tid; l < kBM * kBK; l += kGemmThreads) {
      const int mm = A_K_CONTIG ? l / kBK : l % kBM, kk = A_K_CONTIG ? l % kBK : l / kBM;
      const int64_t m = m0 + mm, k = kt + kk;
      tiles.a[kk][mm] = m < m_end && k < k1 ? to_f32(A[m * a_m + k * a_k]) : 0.0f;
    }
    for (int l = tid; l < kBN * kBK; l += kGemmThreads) {
      const int nn = B_K_CONTIG ? l / kBK : l % kBN, kk = B_K_CONTIG ? l % kBK : l / kBN;
      const int64_t n = n0 + nn, k = kt + kk;
      tiles.b[kk][nn] = n < n_end && k < k1 ? to_f32(B[k * b_k + n * b_n]) : 0.0f;
    }
    __syncthreads();
#pragma unroll
    for (int kk = 0; kk < kBK; ++kk) {
      float av[4], bv[4];
#pragma unroll
      for (int i = 0; i < 4; ++i) av[i] = tiles.a[kk][ty + 16 * i];
#pragma unroll
      for (int j = 0; j < 4; ++j) bv[j] = tiles.b[kk][tx + 16 * j];
#pragma unroll
      for (int i = 0; i < 4; ++i) {
#pragma unroll
        for (int j = 0; j < 4; ++j) acc[i][j] += av[i] * bv[j];
      }
    }
    __syncthreads();
  }
}

// C[m, :n_total] = A[m, :k_total] · B_e for the rows m of one expert tile: forward (B(k, n) =
// W_e[n, k], B_K_CONTIG) and dx (B(k, n) = W_e[k, n]). A rows lda apart, C rows n_total apart.
template <typename T, bool B_K_CONTIG>
__global__ void __launch_bounds__(kGemmThreads)
    grouped_rows_kernel(const T* A, int64_t lda, const int64_t* offsets, const int64_t* tile_start,
                        int64_t E, const void* const* w, int64_t b_k, int64_t b_n, int64_t n_total,
                        int64_t k_total, T* C) {
  __shared__ GemmTiles tiles;
  const int64_t tile = blockIdx.x;
  if (tile >= tile_start[E]) return;  // the grid covers the most tiles any routing can need
  const int64_t e = expert_of_tile(tile_start, E, tile);
  const int64_t m0 = offsets[e] + (tile - tile_start[e]) * kBM, m_end = offsets[e + 1];
  const int64_t n0 = int64_t(blockIdx.y) * kBN;
  float acc[4][4] = {};
  gemm_tile<T, true, B_K_CONTIG>(A, lda, 1, m0, m_end, static_cast<const T*>(w[e]), b_k, b_n, n0,
                                 n_total, 0, k_total, tiles, acc);
  const int tx = threadIdx.x % 16, ty = threadIdx.x / 16;
#pragma unroll
  for (int i = 0; i < 4; ++i) {
    const int64_t m = m0 + ty + 16 * i;
    if (m >= m_end) continue;
#pragma unroll
    for (int j = 0; j < 4; ++j) {
      const int64_t n = n0 + tx + 16 * j;
      if (n < n_total) C[m * n_total + n] = from_f32<T>(acc[i][j]);
    }
  }
}

// dw[e][o, i] (+)= Σ_{rows r of e} dy[r, o]·x[r, i]: block (i tile, o tile, expert).
template <typename T>
__global__ void __launch_bounds__(kGemmThreads)
    grouped_dw_kernel(const T* x, const T* dy, const int64_t* offsets, int64_t out, int64_t in,
                      float* const* dw, float beta) {
  __shared__ GemmTiles tiles;
  const int64_t e = blockIdx.z;
  const int64_t m0 = int64_t(blockIdx.y) * kBM, n0 = int64_t(blockIdx.x) * kBN;
  float acc[4][4] = {};
  // A(m = o, k = r) = dy[r·out + o], B(k = r, n = i) = x[r·in + i]: both contiguous along m/n.
  gemm_tile<T, false, false>(dy, 1, out, m0, out, x, in, 1, n0, in, offsets[e], offsets[e + 1],
                             tiles, acc);
  float* d = dw[e];
  const int tx = threadIdx.x % 16, ty = threadIdx.x / 16;
#pragma unroll
  for (int i = 0; i < 4; ++i) {
    const int64_t m = m0 + ty + 16 * i;
    if (m >= out) continue;
#pragma unroll
    for (int j = 0; j < 4; ++j) {
      const int64_t n = n0 + tx + 16 * j;
      if (n < in) d[m * in + n] = beta == 0.0f ? acc[i][j] : beta * d[m * in + n] + acc[i][j];
    }
  }
}

// ---- combine ---------------------------------------------------------------------------------

template <typename T>
__global__ void combine_backward_dy_kernel(const float* weights, const int32_t* order, int64_t K,
                                           int64_t D, const T* dout, T* dy_perm) {
  const int64_t i = blockIdx.x;
  const int32_t s = order[i];
  T* dst = dy_perm + i * D;
  const float w = s >= 0 ? weights[s] : 0.0f;
  const T* g = dout + (s >= 0 ? int64_t(s) / K * D : 0);
  for (int64_t j = threadIdx.x; j < D; j += blockDim.x) {
    dst[j] = from_f32<T>(s >= 0 ? w * to_f32(g[j]) : 0.0f);
  }
}

constexpr int kWeightWarps = 8;

// dweights[s] = dout[s / K] · y_perm[position[s]]: one warp per slot.
template <typename T>
__global__ void combine_backward_w_kernel(const T* y, const int32_t* position, int64_t N, int64_t K,
                                          int64_t D, const T* dout, float* dweights) {
  const int64_t s = int64_t(blockIdx.x) * kWeightWarps + threadIdx.x / 32;
  const int lane = threadIdx.x % 32;
  if (s >= N) return;  // whole warps
  const int32_t p = position[s];
  float sum = 0.0f;
  if (p >= 0) {
    const T* g = dout + s / K * D;
    const T* r = y + int64_t(p) * D;
    for (int64_t j = lane; j < D; j += 32) sum += to_f32(g[j]) * to_f32(r[j]);
  }
  sum = warp_sum(sum);
  if (lane == 0) dweights[s] = sum;
}

int row_threads(int64_t D) {
  return int(std::min<int64_t>(256, std::max<int64_t>(32, ceil_div<int64_t>(D, 32) * 32)));
}

dim3 row_tile_grid(const char* op, int64_t N, int64_t E, int64_t n_total) {
  const int64_t tiles = ceil_div<int64_t>(N, kBM) + E, cols = ceil_div<int64_t>(n_total, kBN);
  DSEEK_CHECK(tiles <= INT_MAX && cols <= 65535, "[{}] {} rows × {} columns exceed the grid", op, N,
              n_total);
  return dim3(unsigned(tiles), unsigned(cols));
}

}  // namespace

int64_t* tile_schedule(const int64_t* offsets, int64_t E, int64_t rows) {
  int64_t* tiles = static_cast<int64_t*>(dseek::cuda::alloc(size_t(E + 1) * sizeof(int64_t)));
  scan_kernel<true><<<1, 1024, 0, stream()>>>(nullptr, offsets, E, rows, tiles);
  DSEEK_CUDA_CHECK_LAUNCH("scan_kernel<tiles>");
  return tiles;
}

void moe_route(const float* logits, int64_t T, int64_t ld, const float* bias, const MoeRouteArgs& a,
               int32_t* ids, float* weights, float* scores) {
  if (T == 0) return;
  const size_t smem = size_t(kRouteWarps) * 2 * size_t(a.experts) * sizeof(float);
  moe_route_kernel<<<unsigned(ceil_div<int64_t>(T, kRouteWarps)), kRouteWarps * 32, smem,
                     stream()>>>(logits, T, ld, bias, a, ids, weights, scores);
  DSEEK_CUDA_CHECK_LAUNCH("moe_route_kernel");
}

bool small_route_fits(int64_t T, const MoeRouteArgs& a) {
  return T >= 1 && T <= kSmallRouteTokens && a.experts <= kSmallRouteExperts &&
         T * a.top_k <= kSmallDispatchSlots;
}

void small_route(const float* logits, int64_t T, int64_t ld, const float* bias,
                 const MoeRouteArgs& a, int32_t* ids, float* weights, float* scores,
                 int64_t* offsets, int32_t* order, int32_t* position, const void* x, int64_t D,
                 void* x_perm, DType act) {
  DSEEK_CHECK(small_route_fits(T, a),
              "[moe_route] {} tokens over {} experts exceed the one-block "
              "routing",
              T, a.experts);
  DSEEK_DISPATCH_ACT(act, X,
                     small_route_kernel<X><<<1, kSmallDispatchThreads, 0, stream()>>>(
                         logits, T, ld, bias, a, ids, weights, scores, offsets, order, position,
                         static_cast<const X*>(x), D, static_cast<X*>(x_perm)));
  DSEEK_CUDA_CHECK_LAUNCH("small_route_kernel");
}

void moe_dispatch(const int32_t* ids, int64_t N, int64_t E, int64_t* offsets, int32_t* order,
                  int32_t* position) {
  if (N == 0) {
    dseek::cuda::fill_bytes(offsets, 0, size_t(E + 1) * sizeof(int64_t));
    return;
  }
  DSEEK_CHECK(E <= INT_MAX, "[moe_dispatch] {} experts exceed the grid", E);
  if (N <= kSmallDispatchSlots && E <= kSmallDispatchExperts) {
    small_dispatch_kernel<<<1, kSmallDispatchThreads, 0, stream()>>>(ids, int(N), int(E), offsets,
                                                                     order, position);
    DSEEK_CUDA_CHECK_LAUNCH("small_dispatch_kernel");
    return;
  }
  // Unplaced slots (ids out of range) keep −1.
  dseek::cuda::fill_bytes(order, 0xff, size_t(N) * sizeof(int32_t));
  dseek::cuda::fill_bytes(position, 0xff, size_t(N) * sizeof(int32_t));
  unsigned* counts = static_cast<unsigned*>(dseek::cuda::alloc(size_t(E) * sizeof(unsigned)));
  dseek::cuda::fill_bytes(counts, 0, size_t(E) * sizeof(unsigned));
  const unsigned blocks = unsigned(std::min<int64_t>(1024, ceil_div<int64_t>(N, 256)));
  const size_t smem = E <= kSharedHistogram ? size_t(E) * sizeof(unsigned) : 0;
  histogram_kernel<<<blocks, 256, smem, stream()>>>(ids, N, E, counts);
  DSEEK_CUDA_CHECK_LAUNCH("histogram_kernel");
  scan_kernel<false><<<1, 1024, 0, stream()>>>(counts, nullptr, E, 0, offsets);
  DSEEK_CUDA_CHECK_LAUNCH("scan_kernel<counts>");
  place_kernel<<<unsigned(E), kPlaceThreads, 0, stream()>>>(ids, N, offsets, order, position);
  DSEEK_CUDA_CHECK_LAUNCH("place_kernel");
  dseek::cuda::free(counts);
}

void moe_permute(const void* x, const int32_t* order, int64_t N, int64_t K, int64_t D, void* x_perm,
                 DType act) {
  if (N == 0 || D == 0) return;
  DSEEK_DISPATCH_ACT(act, T,
                     permute_kernel<T><<<unsigned(N), row_threads(D), 0, stream()>>>(
                         static_cast<const T*>(x), order, K, D, static_cast<T*>(x_perm)));
  DSEEK_CUDA_CHECK_LAUNCH("permute_kernel");
}

void moe_permute_backward(const void* dx_perm, const int32_t* position, int64_t T, int64_t K,
                          int64_t D, void* dx, DType act) {
  if (T == 0 || D == 0) return;
  DSEEK_CHECK(T <= INT_MAX, "[moe_permute] {} tokens exceed the grid", T);
  DSEEK_DISPATCH_ACT(act, T_,
                     permute_backward_kernel<T_><<<unsigned(T), row_threads(D), 0, stream()>>>(
                         static_cast<const T_*>(dx_perm), position, K, D, static_cast<T_*>(dx)));
  DSEEK_CUDA_CHECK_LAUNCH("permute_backward_kernel");
}

void grouped_linear(const void* x, const int64_t* offsets, int64_t E, int64_t N, int64_t in,
                    const void* const* w, int64_t ldw, int64_t out, void* y, DType act,
                    const void* w_maps) {
  if (N == 0 || out == 0) return;
  if (grouped_gemv_takes(N, E)) {
    grouped_gemv(x, offsets, E, N, in, w, ldw, out, y, act);
    return;
  }
  if (act == DType::BF16 && grouped_tc_takes(x, y, in, out, ldw)) {
    // The most tiles any routing can need: one partial tile per expert beyond ceil(N / rows).
    const std::unique_ptr<int64_t, void (*)(void*)> tiles(tile_schedule(offsets, E, kTcTileRows),
                                                          dseek::cuda::free);
    grouped_tc_rows(false, x, N, offsets, tiles.get(), E, ceil_div<int64_t>(N, kTcTileRows) + E, w,
                    ldw, out, in, y, w_maps);
    return;
  }
  const dim3 grid = row_tile_grid("grouped_linear", N, E, out);
  int64_t* tiles = tile_schedule(offsets, E, kBM);
  // A = x [N, in]; B(k = i, n = o) = W_e[o·ldw + i].
  DSEEK_DISPATCH_ACT(
      act, T,
      grouped_rows_kernel<T, true><<<grid, kGemmThreads, 0, stream()>>>(
          static_cast<const T*>(x), in, offsets, tiles, E, w, 1, ldw, out, in, static_cast<T*>(y)));
  DSEEK_CUDA_CHECK_LAUNCH("grouped_rows_kernel<forward>");
  dseek::cuda::free(tiles);
}

void grouped_linear_backward_dx(const void* dy, const int64_t* offsets, int64_t E, int64_t N,
                                int64_t out, const void* const* w, int64_t ldw, int64_t in,
                                void* dx, DType act, const void* w_maps) {
  if (N == 0 || in == 0) return;
  if (act == DType::BF16 && grouped_tc_takes(dy, dx, out, in, ldw)) {
    const std::unique_ptr<int64_t, void (*)(void*)> tiles(tile_schedule(offsets, E, kTcTileRows),
                                                          dseek::cuda::free);
    grouped_tc_rows(true, dy, N, offsets, tiles.get(), E, ceil_div<int64_t>(N, kTcTileRows) + E, w,
                    ldw, in, out, dx, w_maps);
    return;
  }
  const dim3 grid = row_tile_grid("grouped_linear", N, E, in);
  int64_t* tiles = tile_schedule(offsets, E, kBM);
  // A = dy [N, out]; B(k = o, n = i) = W_e[o·ldw + i].
  DSEEK_DISPATCH_ACT(act, T,
                     grouped_rows_kernel<T, false><<<grid, kGemmThreads, 0, stream()>>>(
                         static_cast<const T*>(dy), out, offsets, tiles, E, w, ldw, 1, in, out,
                         static_cast<T*>(dx)));
  DSEEK_CUDA_CHECK_LAUNCH("grouped_rows_kernel<dx>");
  dseek::cuda::free(tiles);
}

void grouped_linear_backward_dw(const void* x, const void* dy, const int64_t* offsets, int64_t E,
                                int64_t N, int64_t out, int64_t in, float* const* dw, float beta,
                                DType act, double* squares) {
  if (out == 0 || in == 0) {
    if (squares) matrices_sum_of_squares(dw, E, out, in, squares);  // zero
    return;
  }
  if (act == DType::BF16 && grouped_tc_takes(x, dy, in, out, 8)) {
    grouped_tc_dw(x, dy, offsets, E, N, out, in, dw, beta, squares);
    return;
  }
  const int64_t cols = ceil_div<int64_t>(in, kBN), rows = ceil_div<int64_t>(out, kBM);
  DSEEK_CHECK(cols <= INT_MAX && rows <= 65535 && E <= 65535,
              "[grouped_linear] dW of {} experts × [{}, {}] exceeds the grid", E, out, in);
  const dim3 grid{unsigned(cols), unsigned(rows), unsigned(E)};
  DSEEK_DISPATCH_ACT(
      act, T,
      grouped_dw_kernel<T><<<grid, kGemmThreads, 0, stream()>>>(
          static_cast<const T*>(x), static_cast<const T*>(dy), offsets, out, in, dw, beta));
  DSEEK_CUDA_CHECK_LAUNCH("grouped_dw_kernel");
  if (squares) matrices_sum_of_squares(dw, E, out, in, squares);
}

void moe_combine(const void* y_perm, const float* weights, const int32_t* position, int64_t T,
                 int64_t K, int64_t D, const void* add, void* out, DType act) {
  if (T == 0 || D == 0) return;
  DSEEK_CHECK(K <= kMaxCombineK && T <= INT_MAX,
              "[moe_combine] {} tokens × {} experts exceed "
              "the kernel's limits (K ≤ {})",
              T, K, kMaxCombineK);
  // Few tokens (decode): a block per 256 columns of each; many: a block per token.
  const int threads = row_threads(D);
  const int64_t column_blocks = T < 64 ? ceil_div<int64_t>(D, threads) : 1;
  DSEEK_CHECK(column_blocks <= 65535, "[moe_combine] rows of {} values are too wide", D);
  const dim3 grid{unsigned(T), unsigned(column_blocks)};
  DSEEK_DISPATCH_ACT(act, T_,
                     combine_kernel<T_><<<grid, threads, 0, stream()>>>(
                         static_cast<const T_*>(y_perm), weights, position, K, D,
                         static_cast<const T_*>(add), static_cast<T_*>(out)));
  DSEEK_CUDA_CHECK_LAUNCH("combine_kernel");
}

void moe_combine_add_rms_norm(const void* y_perm, const float* weights, const int32_t* position,
                              int64_t T, int64_t K, int64_t D, const void* add,
                              const void* residual, const void* norm_weight, DType w_dtype,
                              float eps, void* out, void* normed, DType act) {
  if (T == 0 || D == 0) return;
  DSEEK_CHECK(K <= kMaxCombineK && T <= INT_MAX,
              "[moe_combine_add_rms_norm] {} tokens × {} experts exceed the kernel's limits "
              "(K ≤ {})",
              T, K, kMaxCombineK);
  DSEEK_DISPATCH_ACT(act, T_,
                     combine_add_rms_norm_kernel<T_>
                     <<<unsigned(T), row_block_threads(D), 0, stream()>>>(
                         static_cast<const T_*>(y_perm), weights, position, K, D,
                         static_cast<const T_*>(add), static_cast<const T_*>(residual), norm_weight,
                         w_dtype, eps, static_cast<T_*>(out), static_cast<T_*>(normed)));
  DSEEK_CUDA_CHECK_LAUNCH("combine_add_rms_norm_kernel");
}

void moe_combine_backward(const void* y_perm, const float* weights, const int32_t* order,
                          const int32_t* position, int64_t T, int64_t K, int64_t D,
                          const void* dout, void* dy_perm, float* dweights, DType act) {
  const int64_t N = T * K;
  if (N == 0) return;
  if (D > 0) {
    DSEEK_DISPATCH_ACT(
        act, T_,
        combine_backward_dy_kernel<T_><<<unsigned(N), row_threads(D), 0, stream()>>>(
            weights, order, K, D, static_cast<const T_*>(dout), static_cast<T_*>(dy_perm)));
    DSEEK_CUDA_CHECK_LAUNCH("combine_backward_dy_kernel");
  }
  DSEEK_DISPATCH_ACT(
      act, T_,
      combine_backward_w_kernel<T_>
      <<<unsigned(ceil_div<int64_t>(N, kWeightWarps)), kWeightWarps * 32, 0, stream()>>>(
          static_cast<const T_*>(y_perm), position, N, K, D, static_cast<const T_*>(dout),
          dweights));
  DSEEK_CUDA_CHECK_LAUNCH("combine_backward_w_kernel");
}

}  // namespace dseek::ops::cuda
