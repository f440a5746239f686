// The absorbed MLA's cache append on the GPU (ops/mla_cache.h) in one kernel: a decode step's
// rms_norm of the latent, contiguous copy and rotation of k_pe, and two row scatters were five
// launches a layer. One block per new token:
//   the latent part  as rms_norm_kernel (norm.cu) computes it: the same threads per row, the same
//                    per-thread sums and block reduction, so the same bits;
//   the rope part    as rope_kernel (rope.cu) with one head: the same rope.cuh maths;
// each value rounded to the activation dtype (what the separate ops store), then stored in the
// cache row's dtype (what scatter_rows' conversion does).
#include <algorithm>

#include "core/cuda.h"
#include "core/cuda/cuda_check.h"
#include "core/cuda/pdl.cuh"
#include "ops/cuda/cuda_ops.h"
#include "ops/cuda/element.cuh"
#include "ops/cuda/reduce.cuh"
#include "ops/cuda/rope.cuh"

namespace dseek::ops::cuda {

using dseek::cuda::stream;

namespace {

constexpr int64_t kMaxRopeDim = 1024;  // as ops/cpu (checked by the op)

template <typename Act, typename Row>
__global__ void mla_cache_append_kernel(const Act* kv_a, int64_t kv_t, const void* w, DType w_dtype,
                                        float eps, RopeAngles angles, bool interleaved, Row* rows,
                                        int64_t rows_t, const int64_t* slots, int64_t r,
                                        int64_t d) {
  __shared__ float scratch[32];
  __shared__ float pe[kMaxRopeDim];
  const int64_t t = blockIdx.x;
  const Act* x = kv_a + t * kv_t;
  Row* row = rows + slots[t] * rows_t;
  for (int64_t j = threadIdx.x; j < d; j += blockDim.x) pe[j] = to_f32(x[r + j]);
  float ss = 0;
  for (int64_t j = threadIdx.x; j < r; j += blockDim.x) {
    const float v = to_f32(x[j]);
    ss += v * v;
  }
  const float inv = rsqrtf(block_sum(ss, scratch) / float(r) + eps);  // block_sum syncs: pe ready
  for (int64_t j = threadIdx.x; j < r; j += blockDim.x) {
    const Act y = from_f32<Act>(load_weight(w, w_dtype, j) * (to_f32(x[j]) * inv));
    row[j] = from_f32<Row>(to_f32(y));
  }
  const int64_t half = d / 2;
  for (int64_t j = threadIdx.x; j < half; j += blockDim.x) {
    const float2 y = rope_pair(pe, j, half, rope_cos_sin(angles, t, j), interleaved);
    row[r + j] = from_f32<Row>(to_f32(from_f32<Act>(y.x)));
    row[r + half + j] = from_f32<Row>(to_f32(from_f32<Act>(y.y)));
  }
}

}  // namespace

void mla_cache_append(const void* kv_a, int64_t kv_t, const void* weight, DType w_dtype, float eps,
                      const int64_t* positions, const float* inv_freq, float scaling,
                      bool interleaved, void* rows, int64_t rows_t, DType rows_dtype,
                      const int64_t* slots, int64_t T, int64_t r, int64_t d, DType act) {
  if (T <= 0) return;
  DSEEK_CHECK(d <= kMaxRopeDim, "[mla_cache_append] rope dim {} above {}", d, kMaxRopeDim);
  const RopeAngles angles{0, positions, inv_freq, scaling};
  // The rotation's t is the token's index into positions, as rope_copy's.
  DSEEK_DISPATCH_ACT(act, Act, DSEEK_DISPATCH_ACT(rows_dtype, Row, {
                       mla_cache_append_kernel<Act, Row>
                           <<<unsigned(T), row_block_threads(r), 0, stream()>>>(
                               static_cast<const Act*>(kv_a), kv_t, weight, w_dtype, eps, angles,
                               interleaved, static_cast<Row*>(rows), rows_t, slots, r, d);
                     }));
  DSEEK_CUDA_CHECK_LAUNCH("mla_cache_append_kernel");
}

}  // namespace dseek::ops::cuda
