// cross_entropy on the GPU (maths in ops/cross_entropy.h). Nothing of size T·V is allocated: the
// logits are streamed.
//   forward:  one block per row reads the row once with an online max and sum (each thread keeps
//             m and Σ exp(x − m), rescaling its sum when m grows), then the block combines
//             (M = max m, S = Σ s·exp(m − M)) into lse = M + log S. f32 sums: a thread adds about
//             V/1024 terms ≤ 1, the block reduction 1024 partial sums.
//             A second kernel of one block sums the rows' losses lse − logit[target] in f64 and
//             counts them, with a fixed row-to-thread mapping and reduction tree: no atomics, the
//             same result on every run.
//   backward: dlogits = w·(exp(x − lse) − [v = target]), element by element from the logits and
//             lse, so it may overwrite the logits (each element is read and written by the same
//             thread). Blocks cover (row, slice of the vocabulary) so a few long rows still fill
//             the GPU.
#include <algorithm>
#include <climits>

#include "core/cuda.h"
#include "core/cuda/cuda_check.h"
#include "core/error.h"
#include "ops/cuda/cuda_ops.h"
#include "ops/cuda/element.cuh"
#include "ops/cuda/reduce.cuh"

namespace dseek::ops::cuda {

using dseek::cuda::ceil_div;
using dseek::cuda::stream;

namespace {

constexpr int kLossThreads = 1024;
constexpr int kBackwardThreads = 256;
constexpr int64_t kBackwardCols = 2048;  // vocabulary entries per backward block

template <typename T>
__global__ void lse_kernel(const T* logits, int64_t V, int64_t ld, float* lse) {
  __shared__ float scratch[32];
  const T* row = logits + int64_t(blockIdx.x) * ld;
  float m = -INFINITY, s = 0.0f;
  for (int64_t j = threadIdx.x; j < V; j += blockDim.x) {
    const float v = to_f32(row[j]);
    if (v > m) {  // the first element: s·exp(−inf) = 0, so s becomes 1
      s = s * expf(m - v) + 1.0f;
      m = v;
    } else {
      s += expf(v - m);  // NaN logits propagate into lse, as on the CPU
    }
  }
  const float M = block_max(m, scratch);
  // A thread that saw no element (V < blockDim.x) has s = 0 and m = −inf: it adds nothing.
  const float S = block_sum(s == 0.0f ? 0.0f : s * expf(m - M), scratch);
  if (threadIdx.x == 0) lse[blockIdx.x] = M + logf(S);
}

// lse_kernel for bf16 rows of whole 16-byte words: a thread takes 8 neighbouring values a load
// (the max of the 8 first, then their terms), 8× fewer loads than one value a load, which ran at
// a third of the copy bandwidth on the 102,400-entry rows of V2-Lite's head.
__global__ void lse_bf16x8_kernel(const __nv_bfloat16* logits, int64_t V, int64_t ld, float* lse) {
  __shared__ float scratch[32];
  const __nv_bfloat16* row = logits + int64_t(blockIdx.x) * ld;
  float m = -INFINITY, s = 0.0f;
  for (int64_t j = int64_t(threadIdx.x) * 8; j < V; j += int64_t(blockDim.x) * 8) {
    Bf16x8 x;
    x.load(row + j);
    float top = x.v[0];
#pragma unroll
    for (int k = 1; k < 8; ++k) top = fmaxf(top, x.v[k]);
    if (top > m) {  // s·exp(−inf) = 0 for the first word
      s *= expf(m - top);
      m = top;
    }
#pragma unroll
    for (int k = 0; k < 8; ++k) s += expf(x.v[k] - m);  // NaN logits propagate into lse
  }
  const float M = block_max(m, scratch);
  const float S = block_sum(s == 0.0f ? 0.0f : s * expf(m - M), scratch);
  if (threadIdx.x == 0) lse[blockIdx.x] = M + logf(S);
}

// Block-wide sums in f64 and i64 for the single-block loss kernel (blockDim.x = kLossThreads).
template <typename U>
__device__ U block_sum_wide(U v, U* scratch) {
  const int lane = threadIdx.x % 32, warp = threadIdx.x / 32, warps = blockDim.x / 32;
  for (int offset = 16; offset > 0; offset /= 2) v += __shfl_xor_sync(0xffffffffu, v, offset);
  __syncthreads();
  if (lane == 0) scratch[warp] = v;
  __syncthreads();
  v = lane < warps ? scratch[lane] : U(0);
  for (int offset = 16; offset > 0; offset /= 2) v += __shfl_xor_sync(0xffffffffu, v, offset);
  return v;
}

// loss_sum[0] = Σ_{t: target ≠ ignore} w_t·(lse[t] − logit[t, target]) (w_t = row_weights[t], or 1
// when null); count[0] (nullable) = the number of those rows. One block.
template <typename T>
__global__ void loss_kernel(const T* logits, int64_t rows, int64_t ld, const int32_t* targets,
                            int32_t ignore_index, const float* lse, const float* row_weights,
                            double* loss_sum, int64_t* count) {
  __shared__ double dscratch[32];
  __shared__ long long nscratch[32];
  double sum = 0;
  long long n = 0;
  for (int64_t t = threadIdx.x; t < rows; t += blockDim.x) {
    const int32_t target = targets[t];
    if (target == ignore_index) continue;
    const double w = row_weights ? double(row_weights[t]) : 1.0;
    sum += w * (double(lse[t]) - double(to_f32(logits[t * ld + target])));
    ++n;
  }
  sum = block_sum_wide(sum, dscratch);
  n = block_sum_wide(n, nscratch);
  if (threadIdx.x == 0) {
    loss_sum[0] = sum;
    if (count) count[0] = int64_t(n);
  }
}

template <typename T>
__global__ void backward_kernel(const T* logits, int64_t V, int64_t ld, const int32_t* targets,
                                int32_t ignore_index, const float* lse, float scale, T* dlogits,
                                int64_t ld_out, const float* row_weights) {
  const int64_t t = blockIdx.x;
  const int64_t begin = int64_t(blockIdx.y) * kBackwardCols, end = min(V, begin + kBackwardCols);
  const T* x = logits + t * ld;
  T* d = dlogits + t * ld_out;
  const int32_t target = targets[t];
  if (target == ignore_index) {
    for (int64_t j = begin + threadIdx.x; j < end; j += blockDim.x) d[j] = from_f32<T>(0.0f);
    return;
  }
  const float l = lse[t];
  const float w = row_weights ? scale * row_weights[t] : scale;
  for (int64_t j = begin + threadIdx.x; j < end; j += blockDim.x) {
    const float g = expf(to_f32(x[j]) - l) * w;
    d[j] = from_f32<T>(j == target ? g - w : g);
  }
}

// backward_kernel for bf16 rows of whole 16-byte words, 8 values a load and store (the same
// expression per value, so the same bits).
__global__ void backward_bf16x8_kernel(const __nv_bfloat16* logits, int64_t V, int64_t ld,
                                       const int32_t* targets, int32_t ignore_index,
                                       const float* lse, float scale, __nv_bfloat16* dlogits,
                                       int64_t ld_out, const float* row_weights) {
  const int64_t t = blockIdx.x;
  const int64_t begin = int64_t(blockIdx.y) * kBackwardCols, end = min(V, begin + kBackwardCols);
  const __nv_bfloat16* x = logits + t * ld;
  __nv_bfloat16* d = dlogits + t * ld_out;
  const int32_t target = targets[t];
  const bool ignored = target == ignore_index;
  const float l = lse[t];
  const float w = row_weights ? scale * row_weights[t] : scale;
  for (int64_t j = begin + int64_t(threadIdx.x) * 8; j < end; j += int64_t(blockDim.x) * 8) {
    Bf16x8 v;
    if (ignored) {
#pragma unroll
      for (int k = 0; k < 8; ++k) v.v[k] = 0.0f;
    } else {
      v.load(x + j);
#pragma unroll
      for (int k = 0; k < 8; ++k) {
        const float g = expf(v.v[k] - l) * w;
        v.v[k] = j + k == target ? g - w : g;
      }
    }
    v.store(d + j);
  }
}

// bf16 rows that are whole 16-byte words (the 8-value kernels).
bool whole_words(DType act, const void* p, int64_t V, int64_t ld) {
  return act == DType::BF16 && V % 8 == 0 && ld % 8 == 0 && aligned16(p);
}

void check_grid(int64_t T, int64_t V) {
  if (T > INT_MAX || ceil_div(V, kBackwardCols) > 65535)
    fail("[cross_entropy] logits [{}, {}]: more than a CUDA grid holds", T, V);
}

}  // namespace

void cross_entropy_forward(const void* logits, int64_t T, int64_t V, int64_t ld,
                           const int32_t* targets, int32_t ignore_index, float* lse,
                           double* loss_sum, int64_t* count, DType act) {
  check_grid(T, V);
  if (T == 0 || V == 0) {  // no rows, or (refused by the op) no vocabulary
    dseek::cuda::fill_bytes(loss_sum, 0, sizeof(double));
    if (count) dseek::cuda::fill_bytes(count, 0, sizeof(int64_t));
    return;
  }
  if (whole_words(act, logits, V, ld)) {
    lse_bf16x8_kernel<<<unsigned(T), row_block_threads(V / 8), 0, stream()>>>(
        static_cast<const __nv_bfloat16*>(logits), V, ld, lse);
    DSEEK_CUDA_CHECK_LAUNCH("cross_entropy lse_bf16x8_kernel");
  } else {
    DSEEK_DISPATCH_ACT(act, E,
                       lse_kernel<E><<<unsigned(T), row_block_threads(V), 0, stream()>>>(
                           static_cast<const E*>(logits), V, ld, lse));
    DSEEK_CUDA_CHECK_LAUNCH("cross_entropy lse_kernel");
  }
  DSEEK_DISPATCH_ACT(act, E,
                     loss_kernel<E><<<1, kLossThreads, 0, stream()>>>(
                         static_cast<const E*>(logits), T, ld, targets, ignore_index, lse, nullptr,
                         loss_sum, count));
  DSEEK_CUDA_CHECK_LAUNCH("cross_entropy loss_kernel");
}

void cross_entropy_weighted_loss(const void* logits, int64_t T, int64_t ld, const int32_t* targets,
                                 int32_t ignore_index, const float* lse, const float* row_weights,
                                 double* loss_sum, DType act) {
  if (T == 0) {
    dseek::cuda::fill_bytes(loss_sum, 0, sizeof(double));
    return;
  }
  DSEEK_DISPATCH_ACT(act, E,
                     loss_kernel<E><<<1, kLossThreads, 0, stream()>>>(
                         static_cast<const E*>(logits), T, ld, targets, ignore_index, lse,
                         row_weights, loss_sum, nullptr));
  DSEEK_CUDA_CHECK_LAUNCH("cross_entropy loss_kernel (weighted)");
}

void cross_entropy_backward(const void* logits, int64_t T, int64_t V, int64_t ld,
                            const int32_t* targets, int32_t ignore_index, const float* lse,
                            float scale, void* dlogits, int64_t ld_out, const float* row_weights,
                            DType act) {
  check_grid(T, V);
  if (T == 0 || V == 0) return;
  const dim3 grid(unsigned(T), unsigned(ceil_div(V, kBackwardCols)));
  if (whole_words(act, logits, V, ld) && whole_words(act, dlogits, V, ld_out)) {
    backward_bf16x8_kernel<<<grid, kBackwardThreads, 0, stream()>>>(
        static_cast<const __nv_bfloat16*>(logits), V, ld, targets, ignore_index, lse, scale,
        static_cast<__nv_bfloat16*>(dlogits), ld_out, row_weights);
    DSEEK_CUDA_CHECK_LAUNCH("cross_entropy backward_bf16x8_kernel");
    return;
  }
  DSEEK_DISPATCH_ACT(act, E,
                     backward_kernel<E><<<grid, kBackwardThreads, 0, stream()>>>(
                         static_cast<const E*>(logits), V, ld, targets, ignore_index, lse, scale,
                         static_cast<E*>(dlogits), ld_out, row_weights));
  DSEEK_CUDA_CHECK_LAUNCH("cross_entropy backward_kernel");
}

}  // namespace dseek::ops::cuda
