// MLA's absorbed decode on the GPU (ops/mla_decode.h; CPU twins in ops/cpu/mla_decode.cpp).
//
// mla_decode: FlashMLA-style attention over one sequence's latent rows [c_kv; k_pe]. A block
// serves 32 (query, head) rows, 16 when there are few (row = t·H + h: for a decode step the heads
// of one token, all sharing every latent row) and streams the latent rows through shared memory in
// tiles of 32 (shared_rows.cuh: the whole block loads a tile, many loads in flight), converted to
// f32 once: each row is read from global memory once per block and serves as key (all dk = r + rope
// values) and as value (its first r) for all 32 heads. Lane j of a warp scores tile row j against
// the warp's 4 query rows (a whole dot product per lane, no reduction per key); each row keeps an
// online softmax (running max m, sum l) and an f32 accumulator over the r value columns in
// registers (lane owns columns lane + 32c). When the blocks are too few to fill the GPU (a decode
// step has H / 32 of them), the key range is split over blocks (flash-decoding): each leaves its
// partial (m, l, unnormalised accumulator) in a workspace and a second kernel joins the splits,
// rescaling each by exp(m_split − M). With device-side positions (a cache's storage,
// MlaDecodeArgs::positions) the grid is sized for the whole capacity and both kernels work out from
// the key count they read how many splits hold keys; the others return at once, so a CUDA graph
// captured at one cache length replays at any other.
//
// head_matmul (the absorbed projections around this kernel) is a strided-batched cuBLASLt GEMM, in
// linear.cpp: the plain tiled kernel it replaced took 75 µs a call in batched decode.
#include <algorithm>
#include <atomic>
#include <cstdlib>
#include <memory>
#include <string>

#include "core/cuda.h"
#include "core/cuda/cuda_check.h"
#include "core/env.h"
#include "core/error.h"
#include "ops/cuda/cuda_ops.h"
#include "ops/cuda/element.cuh"
#include "ops/cuda/gemv.h"
#include "ops/cuda/mla_decode_tc_kernels.cuh"
#include "ops/cuda/reduce.cuh"
#include "ops/cuda/shared_rows.cuh"
#include "ops/cuda/split_combine.cuh"

namespace dseek::ops::cuda {
namespace {

constexpr int kWarps = 8;
// (query, head) rows per warp: 4 (32 a block, each latent tile serves 32 rows), or 2 for a few
// rows (16 a block) — a batch-1 step of 16 heads then keeps all 8 warps busy instead of 4, which
// matters because the kernel is latency-bound there (41.8 µs a call in run G's profile).
constexpr int kRowsPerWarpMany = 4, kRowsPerWarpFew = 2;
constexpr int64_t kFewRows = 256;  // up to here (16 tokens of 16 heads) 2 rows a warp
constexpr int kTile = 32;          // latent rows per shared tile: one per lane
constexpr int64_t kMaxRank = 512;  // 16 accumulator registers per lane and row
// A split may be a single tile: at batch 1 a step has only 16 (query, head) rows, one block, so
// without key splits the whole attention ran on one multiprocessor with one warp per scheduler
// (151 µs a layer at 150 keys on an H200, a third of the decode step). Each split costs rank + 2
// f32 partials per row and the combine kernel reads them back; the count stays capped at two
// blocks per multiprocessor.
constexpr int64_t kMinSplitKeys = kTile;

struct DecodeParams {
  MlaDecodeArgs a;
  int n_splits;     // the grid's key splits (for a.S keys; fewer are used when fewer are keys)
  int tile;         // keys per tile: a split is whole tiles (kTile, or mla_tc::kKeys)
  float* part_ml;   // [n_splits][T·H][2] (m, l), with n_splits > 1
  float* part_acc;  // [n_splits][T·H][rank]
};

// S keys over at most `splits` blocks of whole tiles (mla_tc::split_plan): the host sizes the
// grid with it for the most keys (a.S), the kernels recompute it for the actual count, so a graph
// captured at one length replays at any other.
using mla_tc::split_plan;

// The keys: all S rows, or with positions rows 0 .. positions[T − 1] (clamped to [T, S]).
__device__ int64_t key_count(const MlaDecodeArgs& a) {
  return mla_tc::key_count(a.positions, a.T, a.S);
}

// q rows [kRows][dk], latent tile [kTile][dk | 1] (odd stride: lane j reads row j, so the 32
// lanes hit 32 banks), all f32.
size_t decode_shared_bytes(int64_t dk, int rows_per_warp) {
  return size_t(int64_t(kWarps * rows_per_warp) * dk + int64_t(kTile) * (dk | 1)) * sizeof(float);
}

template <typename T, int NV, int kRowsPerWarp>
__global__ void __launch_bounds__(kWarps * 32) mla_decode_kernel(const DecodeParams p) {
  constexpr int kRows = kWarps * kRowsPerWarp;
  extern __shared__ float smem[];
  const MlaDecodeArgs& a = p.a;
  const int lane = int(threadIdx.x % 32), warp = int(threadIdx.x / 32);
  const int64_t S = key_count(a);
  const mla_tc::SplitPlan plan = split_plan(S, p.n_splits, kTile);
  if (int(blockIdx.y) >= plan.used) return;  // no keys here (uniform over the block: no barrier)
  const int64_t rows = a.T * a.H, r0 = int64_t(blockIdx.x) * kRows;
  const int64_t pos0 = S - a.T, dk = a.dk, kst = dk | 1;
  // The block's last row belongs to its latest query, which sees the most latent rows.
  const int64_t block_keys = pos0 + (min(rows, r0 + kRows) - 1) / a.H + 1;
  const int64_t k_begin = int64_t(blockIdx.y) * plan.keys;
  const int64_t k_end = min(block_keys, k_begin + plan.keys);
  float* qs = smem;
  float* ks = qs + kRows * dk;
  const T* q = static_cast<const T*>(a.q);
  const T* kv = static_cast<const T*>(a.kv);

  load_rows_f32<T>(qs, dk, kRows, int(dk), [&](int r) -> const T* {
    const int64_t row = r0 + r;
    return row < rows ? q + (row / a.H) * a.q_t + (row % a.H) * a.q_h : nullptr;
  });

  // This warp's rows: the end of the latent rows each sees in this split (0 past the last row),
  // online softmax state. A row with nothing in the split keeps m = −inf, l = 0.
  int64_t row_end[kRowsPerWarp];
  float m[kRowsPerWarp], l[kRowsPerWarp], acc[kRowsPerWarp][NV];
  int64_t warp_end = 0;
#pragma unroll
  for (int r = 0; r < kRowsPerWarp; ++r) {
    const int64_t row = r0 + warp * kRowsPerWarp + r;
    row_end[r] = row < rows ? min(k_end, pos0 + row / a.H + 1) : 0;
    warp_end = max(warp_end, row_end[r]);
    m[r] = -INFINITY;
    l[r] = 0.0f;
#pragma unroll
    for (int c = 0; c < NV; ++c) acc[r][c] = 0.0f;
  }

  for (int64_t s0 = k_begin; s0 < k_end; s0 += kTile) {
    __syncthreads();  // the previous tile is consumed (the first time: the q rows are stored)
    // Rows past k_end are never read (they may not be written yet); their tile rows are zero
    // and their scores masked.
    load_rows_f32<T>(ks, kst, kTile, int(dk), [&](int j) -> const T* {
      const int64_t s = s0 + j;
      return s < k_end ? kv + s * a.kv_s : nullptr;
    });
    __syncthreads();
    if (warp_end <= s0) continue;  // the same for the whole warp; no barrier until the loop top

    float dot[kRowsPerWarp];
#pragma unroll
    for (int r = 0; r < kRowsPerWarp; ++r) dot[r] = 0.0f;
    const float* kj = ks + lane * kst;
    const float* qw = qs + int64_t(warp) * kRowsPerWarp * dk;
    for (int64_t i = 0; i < dk; ++i) {
      const float kv_i = kj[i];
#pragma unroll
      for (int r = 0; r < kRowsPerWarp; ++r) dot[r] += qw[r * dk + i] * kv_i;
    }
    const int n_tile = int(min(int64_t(kTile), warp_end - s0));
#pragma unroll
    for (int r = 0; r < kRowsPerWarp; ++r) {
      if (row_end[r] <= s0) continue;  // uniform over the warp: the shuffles below see all lanes
      const float sc = s0 + lane < row_end[r] ? dot[r] * a.scale : -INFINITY;
      // Latent row s0 is visible to this row, so m_new is finite from its first tile on.
      const float m_new = fmaxf(m[r], warp_max(sc));
      const float pj = expf(sc - m_new);
      const float corr = expf(m[r] - m_new);
      l[r] = l[r] * corr + warp_sum(pj);
      m[r] = m_new;
#pragma unroll
      for (int c = 0; c < NV; ++c) acc[r][c] *= corr;
      for (int j = 0; j < n_tile; ++j) {
        const float pv = __shfl_sync(0xffffffffu, pj, j);
        const float* vj = ks + j * kst;  // the value: the row's first rank columns
#pragma unroll
        for (int c = 0; c < NV; ++c)
          if (lane + 32 * c < a.rank) acc[r][c] += pv * vj[lane + 32 * c];
      }
    }
  }

  if (p.n_splits > 1) {  // partials for the combine kernel, every row
#pragma unroll
    for (int r = 0; r < kRowsPerWarp; ++r) {
      const int64_t row = r0 + warp * kRowsPerWarp + r;
      if (row >= rows) continue;
      const int64_t item = int64_t(blockIdx.y) * rows + row;
      if (lane == 0) {
        p.part_ml[2 * item] = m[r];
        p.part_ml[2 * item + 1] = l[r];
      }
      float* dst = p.part_acc + item * a.rank;
#pragma unroll
      for (int c = 0; c < NV; ++c)
        if (lane + 32 * c < a.rank) dst[lane + 32 * c] = acc[r][c];
    }
    return;
  }
  T* out = static_cast<T*>(a.out);
#pragma unroll
  for (int r = 0; r < kRowsPerWarp; ++r) {
    if (row_end[r] == 0) continue;  // past the last row
    const int64_t row = r0 + warp * kRowsPerWarp + r;
    const float inv = 1.0f / l[r];
#pragma unroll
    for (int c = 0; c < NV; ++c) {
      const int64_t d = lane + 32 * c;
      if (d < a.rank) out[row * a.rank + d] = from_f32<T>(acc[r][c] * inv);
    }
  }
}

// Joins the key splits of each row: M = max_i m_i, L = Σ_i l_i e^(m_i − M), out = Σ_i acc_i
// e^(m_i − M) / L. Split 0 holds latent row 0, visible to every row, so M is finite; empty splits
// (m = −inf) weigh 0. One thread per output value (block x: the row, block y: 128 of its
// columns): with a warp per row, each lane walked 16 columns one after another, and a batch-1
// step has only 16 rows (13.2 µs a call in run D's profile).
constexpr int kCombineThreads = 128;
template <typename T>
__global__ void __launch_bounds__(kCombineThreads) mla_decode_combine_kernel(const DecodeParams p) {
  const MlaDecodeArgs& a = p.a;
  const int64_t rows = a.T * a.H, row = blockIdx.x;
  const int64_t d = int64_t(blockIdx.y) * kCombineThreads + threadIdx.x;
  if (d >= a.rank) return;  // this kernel has no barrier
  const int used = split_plan(key_count(a), p.n_splits, p.tile).used;
  const SplitTotals s = split_totals(p.part_ml, used, rows, row);
  const float y = split_weighted_sum(p.part_ml, p.part_acc, used, rows, row, a.rank, d, s.max);
  static_cast<T*>(a.out)[row * a.rank + d] = from_f32<T>(y / s.sum);
}

// The join of the key splits' partials (either decode kernel's).
template <typename T>
void launch_combine_kernel(const DecodeParams& p) {
  const dim3 grid(unsigned(p.a.T * p.a.H),
                  unsigned(dseek::cuda::ceil_div<int64_t>(p.a.rank, kCombineThreads)));
  mla_decode_combine_kernel<T><<<grid, kCombineThreads, 0, dseek::cuda::stream()>>>(p);
  DSEEK_CUDA_CHECK_LAUNCH("mla_decode_combine_kernel");
}

template <typename T, int NV, int kRowsPerWarp>
void launch_decode(const DecodeParams& p, dim3 grid, size_t smem) {
  auto kernel = mla_decode_kernel<T, NV, kRowsPerWarp>;
  // Raised once per size (not per call: decode steps are captured into CUDA graphs).
  static size_t smem_allowed = 0;
  if (smem > smem_allowed) {
    DSEEK_CUDA_CHECK(
        cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, int(smem)));
    smem_allowed = smem;
  }
  kernel<<<grid, kWarps * 32, smem, dseek::cuda::stream()>>>(p);
  DSEEK_CUDA_CHECK_LAUNCH("mla_decode_kernel");
  if (p.n_splits > 1) launch_combine_kernel<T>(p);
}

// The accumulator width (registers per lane and row) for the rank.
template <typename T, int kRowsPerWarp>
void launch_rank(const DecodeParams& p, dim3 grid, size_t smem) {
  if (p.a.rank <= 64)
    launch_decode<T, 2, kRowsPerWarp>(p, grid, smem);
  else if (p.a.rank <= 128)
    launch_decode<T, 4, kRowsPerWarp>(p, grid, smem);
  else if (p.a.rank <= 256)
    launch_decode<T, 8, kRowsPerWarp>(p, grid, smem);
  else
    launch_decode<T, 16, kRowsPerWarp>(p, grid, smem);
}

// The tensor-core kernel's shapes: DeepSeek's latent (kv_lora_rank 512 + rope 64) in bf16, heads
// in groups of 16 (one token's rows fill an mma tile), 16-byte aligned rows for cp.async.
// set_mla_decode_tensor_cores(false) (or DSEEK_MLA_DECODE=simt at start-up) keeps the SIMT kernel.
constexpr int64_t kTcDk = 576, kTcRank = 512;
std::atomic<bool>& tensor_cores_on() {
  static std::atomic<bool> on = [] { return !env_is("DSEEK_MLA_DECODE", "simt"); }();
  return on;
}
bool use_tensor_cores(const MlaDecodeArgs& a, DType act) {
  const auto aligned = [](const void* p) { return reinterpret_cast<uintptr_t>(p) % 16 == 0; };
  return tensor_cores_on().load(std::memory_order_relaxed) && act == DType::BF16 && a.dk == kTcDk &&
         a.rank == kTcRank && a.H % mla_tc::kRows == 0 && aligned(a.q) && aligned(a.kv) &&
         aligned(a.out) && a.q_t % 8 == 0 && a.q_h % 8 == 0 && a.kv_s % 8 == 0;
}

// Splits for `blocks_per_sm` blocks a multiprocessor over `row_blocks` rows of blocks, each split
// at least `min_keys` keys; the used count of that plan for a.S keys.
int choose_splits(const MlaDecodeArgs& a, int64_t row_blocks, int blocks_per_sm, int64_t min_keys,
                  int64_t tile) {
  static const int sms = dseek::cuda::device_attribute(cudaDevAttrMultiProcessorCount);
  const int64_t want = dseek::cuda::ceil_div<int64_t>(blocks_per_sm * int64_t(sms), row_blocks);
  const int64_t splits =
      std::clamp<int64_t>(std::min(want, std::max<int64_t>(1, a.S / min_keys)), 1, 65535);
  return split_plan(a.S, splits, tile).used;
}

}  // namespace

void set_mla_decode_tensor_cores(bool on) {
  tensor_cores_on().store(on);
}
bool mla_decode_tensor_cores() {
  return tensor_cores_on().load();
}

namespace {

// The tensor-core kernel's launch for p (its splits and workspace set).
void launch_tc(const DecodeParams& p) {
  const MlaDecodeArgs& a = p.a;
  using Shape = mla_tc::Shape<kTcDk, kTcRank>;
  mla_tc::Params tp{};
  tp.q = static_cast<const mla_tc::bf16*>(a.q);
  tp.q_t = a.q_t;
  tp.q_h = a.q_h;
  tp.kv = static_cast<const mla_tc::bf16*>(a.kv);
  tp.kv_s = a.kv_s;
  tp.out = static_cast<mla_tc::bf16*>(a.out);
  tp.part_ml = p.part_ml;
  tp.part_acc = p.part_acc;
  tp.T = a.T;
  tp.S = a.S;
  tp.H = a.H;
  tp.positions = a.positions;
  tp.scale_log2 = a.scale * 1.4426950408889634f;
  tp.n_splits = p.n_splits;
  auto kernel = mla_tc::mla_decode_tc_kernel<kTcDk, kTcRank>;
  static const bool smem_raised = [&] {
    DSEEK_CUDA_CHECK(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize,
                                          int(Shape::kSmem)));
    return true;
  }();
  (void)smem_raised;
  const dim3 grid(unsigned(a.T * a.H / mla_tc::kRows), unsigned(p.n_splits));
  kernel<<<grid, mla_tc::kThreads, Shape::kSmem, dseek::cuda::stream()>>>(tp);
  DSEEK_CUDA_CHECK_LAUNCH("mla_decode_tc_kernel");
}

// The tensor-core kernel's parameters for a: its tiles and split count (one block a
// multiprocessor, its ~170 KB of shared memory; a tile at least per split), no workspace yet.
DecodeParams tc_plan(const MlaDecodeArgs& a) {
  DecodeParams p{};
  p.a = a;
  p.tile = mla_tc::kKeys;
  p.n_splits = choose_splits(a, a.T * a.H / mla_tc::kRows, 1, mla_tc::kKeys, mla_tc::kKeys);
  return p;
}

// Split partials' workspace, freed on the stream when it goes: n_splits · rows · (2 + rank) f32.
std::unique_ptr<void, void (*)(void*)> split_workspace(DecodeParams& p) {
  std::unique_ptr<void, void (*)(void*)> workspace(nullptr, dseek::cuda::free);
  if (p.n_splits <= 1) return workspace;
  const size_t n = size_t(p.n_splits) * size_t(p.a.T * p.a.H);
  workspace.reset(dseek::cuda::alloc(n * size_t(2 + p.a.rank) * sizeof(float)));
  p.part_ml = static_cast<float*>(workspace.get());
  p.part_acc = p.part_ml + 2 * n;
  return workspace;
}

}  // namespace

bool mla_decode_projected(const MlaDecodeArgs& a, const void* w, void* out, int64_t out_t,
                          int64_t out_h, int64_t N, DType act) {
  if (a.T == 0 || a.H == 0 || !use_tensor_cores(a, act) ||
      !head_gemv_takes(a.T, a.H, a.rank, N, w, out, out_t, out_h, act))
    return false;
  DecodeParams p = tc_plan(a);
  if (p.n_splits <= 1) return false;  // the decode kernel writes its rows whole: nothing to join
  const auto workspace = split_workspace(p);
  launch_tc(p);
  HeadGemvJoin join;
  join.part_ml = p.part_ml;
  join.part_acc = p.part_acc;
  join.n_splits = p.n_splits;
  join.tile = p.tile;
  join.positions = a.positions;
  join.S = a.S;
  head_gemv(nullptr, 0, 0, w, out, out_t, out_h, a.T, a.H, a.rank, N, nullptr, &join);
  return true;
}

void mla_decode(const MlaDecodeArgs& a, DType act) {
  if (a.T == 0 || a.H == 0 || a.rank == 0) return;
  DSEEK_CHECK(a.rank <= kMaxRank, "[mla_decode] rank {} above the kernel's {}", a.rank, kMaxRank);
  const int64_t rows = a.T * a.H;
  // The combine kernel's grid has a block column per row.
  DSEEK_CHECK(rows <= int64_t(0x7fffffff), "[mla_decode] {} rows are too many", rows);
  if (use_tensor_cores(a, act)) {
    DecodeParams p = tc_plan(a);
    const auto workspace = split_workspace(p);
    launch_tc(p);
    if (p.n_splits > 1) launch_combine_kernel<mla_tc::bf16>(p);
    return;
  }

  static const int max_smem =
      dseek::cuda::device_attribute(cudaDevAttrMaxSharedMemoryPerBlockOptin);
  const int rows_per_warp = rows <= kFewRows ? kRowsPerWarpFew : kRowsPerWarpMany;
  const size_t smem = decode_shared_bytes(a.dk, kRowsPerWarpMany);  // checked for the larger
  DSEEK_CHECK(smem + 1024 <= size_t(max_smem),
              "[mla_decode] rows of {} values need {} bytes of shared memory, the GPU gives a "
              "block {}",
              a.dk, smem, max_smem);
  const int64_t row_blocks = dseek::cuda::ceil_div<int64_t>(rows, kWarps * rows_per_warp);
  // Enough splits for two blocks per multiprocessor, each at least kMinSplitKeys rows long.
  DecodeParams p{};
  p.a = a;
  p.tile = kTile;
  p.n_splits = choose_splits(a, row_blocks, 2, kMinSplitKeys, kTile);
  const auto workspace = split_workspace(p);
  const dim3 grid(unsigned(row_blocks), unsigned(p.n_splits));
  const size_t used_smem = decode_shared_bytes(a.dk, rows_per_warp);
  DSEEK_DISPATCH_ACT(act, T, {
    if (rows_per_warp == kRowsPerWarpFew)
      launch_rank<T, kRowsPerWarpFew>(p, grid, used_smem);
    else
      launch_rank<T, kRowsPerWarpMany>(p, grid, used_smem);
  });
}

}  // namespace dseek::ops::cuda
