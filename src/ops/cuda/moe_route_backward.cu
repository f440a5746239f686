// ops::moe_route_backward on the GPU (maths in ops/moe.h, CPU twin in ops/cpu/moe.cpp): one warp
// per token. The K chosen experts' sums S and Σ g·a and the softmax's Σ ds·s are warp reductions in
// double; each lane owns experts e ≡ lane (mod 32) and adds the K contributions to its ds[e] in k
// order (as the CPU), so only the order of those double sums differs from the CPU.
#include "core/cuda.h"
#include "core/cuda/cuda_check.h"
#include "ops/cuda/cuda_ops.h"

namespace dseek::ops::cuda {

using dseek::cuda::ceil_div;
using dseek::cuda::stream;

namespace {

constexpr unsigned kFullMask = 0xffffffffu;
constexpr int kTokensPerBlock = 4;  // one warp each

__device__ __forceinline__ double warp_sum(double v) {
  for (int offset = 16; offset > 0; offset /= 2) v += __shfl_xor_sync(kFullMask, v, offset);
  return v;
}

__global__ void moe_route_backward_kernel(const float* scores, const int32_t* ids,
                                          const float* dweights, const float* extra, int64_t T,
                                          int E, int K, bool sigmoid, bool normalise, double f,
                                          float* dz) {
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  const int64_t t = int64_t(blockIdx.x) * kTokensPerBlock + warp;
  if (t >= T) return;  // the whole warp leaves together: the shuffles below see all 32 lanes
  const float* s = scores + t * E;
  const float* g = dweights + t * K;
  const int32_t* id = ids + t * K;
  float* d = dz + t * E;  // holds ds first, then dz

  double S = 0.0, ga = 0.0;
  for (int k = lane; k < K; k += 32) {
    const int e = id[k];
    if (e < 0 || e >= E) continue;
    const double a = s[e];
    S += a;
    ga += double(g[k]) * a;
  }
  S = warp_sum(S) + 1e-20;
  ga = warp_sum(ga);

  for (int e = lane; e < E; e += 32) {
    float v = extra ? extra[t * E + e] : 0.0f;
    for (int k = 0; k < K; ++k) {
      if (id[k] != e) continue;
      const double gk = g[k];
      v += float(normalise ? f * (gk / S - ga / (S * S)) : f * gk);
    }
    d[e] = sigmoid ? v * s[e] * (1.0f - s[e]) : v;
  }
  if (sigmoid) return;
  double dot = 0.0;
  for (int e = lane; e < E; e += 32) dot += double(d[e]) * double(s[e]);  // own entries only
  dot = warp_sum(dot);
  for (int e = lane; e < E; e += 32) d[e] = s[e] * float(double(d[e]) - dot);
}

}  // namespace

void moe_route_backward(const float* scores, const int32_t* ids, const float* dweights,
                        const float* extra, int64_t T, int64_t E, int64_t K, bool sigmoid,
                        bool normalise, float factor, float* dz) {
  if (T == 0) return;
  moe_route_backward_kernel<<<unsigned(ceil_div<int64_t>(T, kTokensPerBlock)), kTokensPerBlock * 32,
                              0, stream()>>>(scores, ids, dweights, extra, T, int(E), int(K),
                                             sigmoid, normalise, double(factor), dz);
  DSEEK_CUDA_CHECK_LAUNCH("moe_route_backward_kernel");
}

}  // namespace dseek::ops::cuda
