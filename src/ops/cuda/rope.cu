// Rotary position embedding on the GPU, in place (see ops/rope.h and ops/cpu/rope.cpp for the
// maths and the layouts). One warp per [t, h] row: the warp first copies its row into shared
// memory, then writes the rotated values back. The copy is what makes the in-place update safe:
// with `interleaved`, the lane that writes x[j] is not the one that reads it.
// cos/sin are computed as the CPU's rope_tables computes them (the angle one f32 product, cos and
// sin in double, rounded to f32, then × scaling), so only the rotation's own rounding differs. For
// many rows they come from a [T, d/2] table built first (T·d/2 double-precision sincos instead of
// T·H·d/2); for a few rows (a decode step: 16 heads of one token) the rotation computes them
// itself — one launch instead of a table allocation, two launches and a free per call.
#include <algorithm>

#include "core/cuda.h"
#include "core/cuda/cuda_check.h"
#include "ops/cuda/cuda_ops.h"
#include "ops/cuda/element.cuh"
#include "ops/cuda/rope.cuh"

namespace dseek::ops::cuda {

using dseek::cuda::ceil_div;
using dseek::cuda::stream;

namespace {

constexpr int kWarps = 8;  // rows per block

constexpr int64_t kInlineRows = 64;  // up to this many [t, h] rows: cos/sin without a table

// cs[t, j] = cos_sin(t, j).
__global__ void rope_table_kernel(float2* cs, int64_t T, int64_t half, const RopeAngles a) {
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < T * half;
       i += int64_t(gridDim.x) * blockDim.x)
    cs[i] = rope_cos_sin(a, i / half, i % half);
}

// cs: the table, or null to compute each (cos, sin) from `a`. Rows are read from `src` and written
// to `dst` (the same memory for the in-place ops).
template <typename Act, bool kBackward>
__global__ void rope_kernel(const Act* src, int64_t s_t, int64_t s_h, Act* dst, int64_t d_t,
                            int64_t d_h, int64_t T, int64_t H, int64_t d, const float2* cs,
                            const RopeAngles a, bool interleaved) {
  extern __shared__ float rows_buf[];  // [kWarps, d]
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  float* buf = rows_buf + warp * d;
  const int64_t half = d / 2, rows = T * H;
  // r is the same for all lanes of a warp, so every lane reaches each __syncwarp.
  for (int64_t r = blockIdx.x * int64_t(kWarps) + warp; r < rows;
       r += int64_t(gridDim.x) * kWarps) {
    const int64_t t = r / H, h = r % H;
    const Act* in = src + t * s_t + h * s_h;
    Act* row = dst + t * d_t + h * d_h;
    for (int64_t i = lane; i < d; i += 32) buf[i] = to_f32(in[i]);
    __syncwarp();
    for (int64_t j = lane; j < half; j += 32) {
      const float2 c_s = cs ? cs[t * half + j] : rope_cos_sin(a, t, j);
      if (!kBackward) {
        // y = R(θ)·P·x: gather the pair (de-interleaving if asked), rotate, write the halves.
        const float2 y = rope_pair(buf, j, half, c_s, interleaved);
        row[j] = from_f32<Act>(y.x);
        row[half + j] = from_f32<Act>(y.y);
      } else {
        // dx = Pᵀ·R(−θ)·dy: rotate the halves back, then re-interleave if asked.
        const float c = c_s.x, s = c_s.y;
        const float a = buf[j], b = buf[half + j];
        const float z0 = a * c + b * s, z1 = b * c - a * s;
        row[interleaved ? 2 * j : j] = from_f32<Act>(z0);
        row[interleaved ? 2 * j + 1 : half + j] = from_f32<Act>(z1);
      }
    }
    __syncwarp();  // every lane is done with buf before it is refilled for the next row
  }
}

template <bool kBackward>
void launch(const void* src, int64_t s_t, int64_t s_h, void* dst, int64_t d_t, int64_t d_h,
            int64_t T, int64_t H, int64_t d, int64_t pos0, const int64_t* positions,
            const float* inv_freq, float scaling, bool interleaved, DType act) {
  if (T <= 0 || H <= 0 || d <= 0) return;
  const int64_t half = d / 2, rows = T * H;
  const RopeAngles a{pos0, positions, inv_freq, scaling};
  float2* cs = nullptr;
  if (rows > kInlineRows) {
    cs = static_cast<float2*>(dseek::cuda::alloc(size_t(T * half) * sizeof(float2)));
    rope_table_kernel<<<unsigned(std::min<int64_t>(ceil_div<int64_t>(T * half, 256), 1 << 16)), 256,
                        0, stream()>>>(cs, T, half, a);
    DSEEK_CUDA_CHECK_LAUNCH("rope_table_kernel");
  }
  const unsigned blocks = unsigned(std::min<int64_t>(ceil_div<int64_t>(rows, kWarps), 1 << 20));
  const size_t smem = size_t(kWarps) * size_t(d) * sizeof(float);
  DSEEK_DISPATCH_ACT(act, Act,
                     rope_kernel<Act, kBackward><<<blocks, kWarps * 32, smem, stream()>>>(
                         static_cast<const Act*>(src), s_t, s_h, static_cast<Act*>(dst), d_t, d_h,
                         T, H, d, cs, a, interleaved));
  DSEEK_CUDA_CHECK_LAUNCH(kBackward ? "rope_backward_kernel" : "rope_kernel");
  if (cs) dseek::cuda::free(cs);
}

}  // namespace

void rope(void* x, int64_t T, int64_t H, int64_t d, int64_t x_t, int64_t x_h, int64_t pos0,
          const int64_t* positions, const float* inv_freq, float scaling, bool interleaved,
          DType act) {
  launch<false>(x, x_t, x_h, x, x_t, x_h, T, H, d, pos0, positions, inv_freq, scaling, interleaved,
                act);
}

void rope_copy(const void* src, int64_t s_t, int64_t s_h, void* dst, int64_t d_t, int64_t d_h,
               int64_t T, int64_t H, int64_t d, const int64_t* positions, const float* inv_freq,
               float scaling, bool interleaved, DType act) {
  launch<false>(src, s_t, s_h, dst, d_t, d_h, T, H, d, 0, positions, inv_freq, scaling, interleaved,
                act);
}

void rope_backward(void* dy, int64_t T, int64_t H, int64_t d, int64_t x_t, int64_t x_h,
                   int64_t pos0, const int64_t* positions, const float* inv_freq, float scaling,
                   bool interleaved, DType act) {
  launch<true>(dy, x_t, x_h, dy, x_t, x_h, T, H, d, pos0, positions, inv_freq, scaling, interleaved,
               act);
}

}  // namespace dseek::ops::cuda
