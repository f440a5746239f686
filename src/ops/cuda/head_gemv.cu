// head_matmul for a decode step's few rows (ops/mla_decode.h): the absorbed MLA's two per-head
// products, out[t, h, n] = Σ_k x[t, h, k]·w[h, k, n] (q_nope·W_UK[h]: K 128, N 512; o_lat·W_UVᵀ[h]:
// K 512, N 128). cuBLASLt runs each as a strided batch of tiny GEMMs; here a block owns one head's
// slice of `cols` output columns: its threads read the weight's rows of that slice with 16-byte
// loads (cols / 8 threads a row, the block's 256 threads taking 256·8 / cols rows at a time, so
// every group of threads walks its own k's), sum in f32 against the token rows staged in shared
// memory, and the groups' partial sums are added in group order (deterministic), rounded once.
// An extra block a head can rotate the absorbed query's q_pe in the same launch (HeadGemvRope), and
// the rows can come straight from the absorbed decode's key splits (HeadGemvJoin).
#include <cuda_bf16.h>

#include <climits>
#include <cstdint>

#include "core/cuda.h"
#include "core/cuda/cuda_check.h"
#include "core/cuda/pdl.cuh"
#include "core/error.h"
#include "ops/cuda/gemv.h"
#include "ops/cuda/gemv_dot.cuh"
#include "ops/cuda/mla_decode_tc_kernels.cuh"
#include "ops/cuda/rope.cuh"
#include "ops/cuda/split_combine.cuh"

namespace dseek::ops::cuda {

using dseek::cuda::ceil_div;

namespace {

constexpr int kThreads = 256;
constexpr int64_t kSmemLimit = 48 << 10;  // without opting in

// Shared memory: the T token rows [T, K] and the partial sums [groups, T, cols] (groups·cols is
// kThreads·8 whatever cols is).
size_t smem_bytes(int64_t T, int64_t K) {
  return size_t(T * K + int64_t(kThreads) * 8 * T) * sizeof(float);
}

// HeadGemvRope's rotation of head h's `rows` rows, by one block: the rows into shared memory
// (`buf`, rows·d floats), then each pair as rope_kernel rotates it (rope.cuh), rounded to bf16.
__device__ void rope_head(const HeadGemvRope& r, int64_t h, int rows, float* buf) {
  const int64_t d = r.d, half = d / 2;
  const auto* src = static_cast<const __nv_bfloat16*>(r.src);
  auto* dst = static_cast<__nv_bfloat16*>(r.dst);
  for (int64_t i = threadIdx.x; i < rows * d; i += blockDim.x)
    buf[i] = __bfloat162float(src[(i / d) * r.s_t + h * r.s_h + i % d]);
  __syncthreads();
  const RopeAngles a{0, r.positions, r.inv_freq, r.scaling};
  for (int64_t i = threadIdx.x; i < rows * half; i += blockDim.x) {
    const int64_t t = i / half, j = i % half;
    const float2 y = rope_pair(buf + t * d, j, half, rope_cos_sin(a, t, j), r.interleaved);
    __nv_bfloat16* row = dst + t * r.d_t + h * r.d_h;
    row[j] = __float2bfloat16(y.x);
    row[half + j] = __float2bfloat16(y.y);
  }
}

// Grid (H, N / cols), one more column of blocks when rope.dst is set: those rotate (rope_head).
template <int kRows>
__global__ void __launch_bounds__(kThreads)
    head_gemv_kernel(const __nv_bfloat16* __restrict__ x, int64_t x_t, int64_t x_h,
                     const __nv_bfloat16* __restrict__ w, __nv_bfloat16* __restrict__ out,
                     int64_t out_t, int64_t out_h, int rows, int64_t K, int64_t N, int cols,
                     const HeadGemvRope rope, const HeadGemvJoin join) {
  extern __shared__ float head_smem[];
  if (rope.dst != nullptr && blockIdx.y == gridDim.y - 1) {  // block-uniform
    dseek::cuda::pdl_wait();
    dseek::cuda::pdl_trigger();
    rope_head(rope, blockIdx.x, rows, head_smem);
    return;
  }
  const int64_t h = blockIdx.x, n0 = int64_t(blockIdx.y) * cols;
  const int tid = int(threadIdx.x), per_row = cols / 8, groups = kThreads / per_row;
  const int c = tid % per_row, g = tid / per_row;
  const __nv_bfloat16* wh = w + h * K * N + n0 + c * 8;
  // The weights are constants: on their way to L2 while the kernel before finishes (pdl.cuh).
  for (int64_t k = g; k < K; k += groups)
    if (c == 0) prefetch_l2(wh + k * N);
  dseek::cuda::pdl_wait();
  dseek::cuda::pdl_trigger();
  float* xs = head_smem;               // [rows, K]
  float* part = head_smem + rows * K;  // [groups, rows, cols]
  if (join.part_ml) {
    // Row t of head h is split row t·H + h: its totals first (part's space, free until the sums).
    const int64_t all = int64_t(rows) * gridDim.x;
    const int used = mla_tc::split_plan(mla_tc::key_count(join.positions, rows, join.S),
                                        join.n_splits, join.tile)
                         .used;
    if (tid < rows) {
      const SplitTotals s = split_totals(join.part_ml, used, all, tid * int64_t(gridDim.x) + h);
      part[2 * tid] = s.max;
      part[2 * tid + 1] = s.sum;
    }
    __syncthreads();
    for (int64_t i = tid; i < rows * K; i += kThreads) {
      const int64_t t = i / K, row = t * int64_t(gridDim.x) + h;
      const float y =
          split_weighted_sum(join.part_ml, join.part_acc, used, all, row, K, i % K, part[2 * t]);
      xs[i] = __bfloat162float(__float2bfloat16_rn(y / part[2 * t + 1]));
    }
  } else {
    for (int64_t i = tid; i < rows * K; i += kThreads)
      xs[i] = __bfloat162float(x[(i / K) * x_t + h * x_h + i % K]);
  }
  __syncthreads();
  float acc[kRows][8] = {};
#pragma unroll 4
  for (int64_t k = g; k < K; k += groups) {
    const uint4 raw = __ldcs(reinterpret_cast<const uint4*>(wh + k * N));
    const __nv_bfloat162* wp = reinterpret_cast<const __nv_bfloat162*>(&raw);
    float wf[8];
#pragma unroll
    for (int i = 0; i < 4; ++i) {
      const float2 f = __bfloat1622float2(wp[i]);
      wf[2 * i] = f.x;
      wf[2 * i + 1] = f.y;
    }
#pragma unroll
    for (int r = 0; r < kRows; ++r) {
      if (r >= rows) break;
      const float xv = xs[r * K + k];
#pragma unroll
      for (int i = 0; i < 8; ++i) acc[r][i] = fmaf(wf[i], xv, acc[r][i]);
    }
  }
#pragma unroll
  for (int r = 0; r < kRows; ++r) {
    if (r >= rows) break;
#pragma unroll
    for (int i = 0; i < 8; ++i) part[(g * rows + r) * cols + c * 8 + i] = acc[r][i];
  }
  __syncthreads();
  for (int i = tid; i < rows * cols; i += kThreads) {
    const int r = i / cols, n = i % cols;
    float sum = 0.0f;
    for (int gg = 0; gg < groups; ++gg) sum += part[(gg * rows + r) * cols + n];
    out[r * out_t + h * out_h + n0 + n] = __float2bfloat16(sum);
  }
}

// Output columns a block: 64, or 32 where 64 would leave most of the GPU idle (few heads).
int block_cols(int64_t H, int64_t N) {
  return N % 64 == 0 && H * (N / 64) >= 96 ? 64 : 32;
}

bool aligned16(const void* p) {
  return reinterpret_cast<uintptr_t>(p) % 16 == 0;
}

}  // namespace

bool head_gemv_takes(int64_t T, int64_t H, int64_t K, int64_t N, const void* w, const void* out,
                     int64_t out_t, int64_t out_h, DType act) {
  return act == DType::BF16 && T >= 1 && T <= kHeadGemvMaxRows && H >= 1 && H <= INT_MAX &&
         K >= 1 && N % 32 == 0 && N / block_cols(H, N) <= 65535 && aligned16(w) && aligned16(out) &&
         out_t % 8 == 0 && out_h % 8 == 0 && int64_t(smem_bytes(T, K)) <= kSmemLimit &&
         linear_gemv_enabled();
}

void head_gemv(const void* x, int64_t x_t, int64_t x_h, const void* w, void* out, int64_t out_t,
               int64_t out_h, int64_t T, int64_t H, int64_t K, int64_t N, const HeadGemvRope* rope,
               const HeadGemvJoin* join) {
  DSEEK_CHECK(head_gemv_takes(T, H, K, N, w, out, out_t, out_h, DType::BF16),
              "[head_matmul] the per-head GEMV does not take T {} H {} K {} N {}", T, H, K, N);
  const HeadGemvRope job = rope ? *rope : HeadGemvRope{};
  const HeadGemvJoin splits = join ? *join : HeadGemvJoin{};
  DSEEK_CHECK(job.dst == nullptr || (job.d > 0 && job.d % 2 == 0 && job.d <= K + 2048),
              "[head_matmul] a rotation of {} values beside the GEMV", job.d);
  const int cols = block_cols(H, N);
  const dim3 grid(unsigned(H), unsigned(N / cols + (job.dst ? 1 : 0)));
  const auto* xb = static_cast<const __nv_bfloat16*>(x);
  const auto* wb = static_cast<const __nv_bfloat16*>(w);
  auto* ob = static_cast<__nv_bfloat16*>(out);
  const size_t smem = smem_bytes(T, K);  // ≥ T·d floats, the rotation's rows
  if (T == 1)
    dseek::cuda::launch_pdl(head_gemv_kernel<1>, grid, dim3(kThreads), smem, xb, x_t, x_h, wb, ob,
                            out_t, out_h, 1, K, N, cols, job, splits);
  else
    dseek::cuda::launch_pdl(head_gemv_kernel<kHeadGemvMaxRows>, grid, dim3(kThreads), smem, xb, x_t,
                            x_h, wb, ob, out_t, out_h, int(T), K, N, cols, job, splits);
  DSEEK_CUDA_CHECK_LAUNCH("head_gemv_kernel");
}

}  // namespace dseek::ops::cuda
