// Causal attention of one sequence on the GPU, forward and backward (see ops/attention.h for the
// maths and ops/cpu/attention.cpp for the reference).
//
// bf16 activations with the common head dims take the tensor-core kernels of attention_tc.cu
// (FlashAttention-2 on mma.sync); everything else the scalar f32-arithmetic kernels here.
// Forward: the flash-style kernel of attention_forward.cuh.
// Backward (FlashAttention-2's split, recomputing the probabilities from saved row statistics):
//   1. the forward kernel without output gives per (query, head) lse = log Σ_s exp(scale q·k_s)
//      and D = dout · out (= Σ_s p_s dP_s);
//   2. dq: blocks of query rows, keys streamed as in the forward; lane j computes p_j =
//      exp(scale q·k_j − lse) and dS_j = p_j (dout·v_j − D), and dq += scale Σ_j dS_j k_j;
//   3. dk, dv: a block owns 16 keys of one key head and walks every query row that sees them
//      (all G query heads of the key head included), 16 threads per key:
//      dk_s += scale dS_s q, dv_s += p_s dout.
// Each output element is written by exactly one thread after a fixed-order sum, so the gradients
// are deterministic (no float atomics), and grouped-query heads are summed inside the kernel.
#include <algorithm>

#include "core/cuda.h"
#include "core/cuda/cuda_check.h"
#include "ops/cuda/attention_forward.cuh"
#include "ops/cuda/attention_tc.cuh"
#include "ops/cuda/cuda_ops.h"
#include "ops/cuda/element.cuh"
#include "ops/cuda/reduce.cuh"

namespace dseek::ops::cuda {

using dseek::cuda::ceil_div;
using dseek::cuda::stream;
using namespace attention_detail;

namespace {

ForwardParams dense_forward_params(const AttentionArgs& a) {
  ForwardParams p{};
  p.q = a.q;
  p.q_t = a.q_t;
  p.q_h = a.q_h;
  p.k = a.k;
  p.k_s = a.k_s;
  p.k_h = a.k_h;
  p.v = a.v;
  p.v_s = a.v_s;
  p.v_h = a.v_h;
  p.out = a.out;
  p.H = a.H;
  p.G = a.H / a.Hk;
  p.dk = a.dk;
  p.dv = a.dv;
  p.scale = a.scale;
  p.T = a.T;
  p.S = a.S;
  return p;
}

struct GradParams {
  const void* q;
  int64_t q_t, q_h;
  const void* k;
  int64_t k_s, k_h;
  const void* v;
  int64_t v_s, v_h;
  const void* dout;   // [T, H, dv] contiguous
  const float* lse;   // [T, H]
  const float* dsum;  // [T, H]
  void* dq;           // [T, H, dk]
  void* dk;           // [S, Hk, dk]
  void* dv;           // [S, Hk, dv]
  int64_t T, S, H, Hk, G, dk_dim, dv_dim;
  float scale;
};

// ---- dq ----------------------------------------------------------------------------------------
// Block: R = warps·kRowsPerWarp query rows of key head blockIdx.y (rows as in the forward), dq
// columns c0 .. c0 + 32·NQ with c0 = blockIdx.z·32·NQ. Shared: q rows [R][dk], dout rows [R][dv],
// key tile [32][dk | 1], value tile [32][dv | 1] (odd strides: lane j reads row j).
inline size_t dq_shared_bytes(int warps, int64_t dk, int64_t dv) {
  const int64_t R = int64_t(warps) * kRowsPerWarp;
  return size_t(R * dk + R * dv + kKeyTile * (dk | 1) + kKeyTile * (dv | 1)) * sizeof(float);
}

template <typename T, int NQ>
__global__ void __launch_bounds__(512) attention_backward_dq_kernel(const GradParams p) {
  extern __shared__ float smem[];
  const int lane = int(threadIdx.x % 32), warp = int(threadIdx.x / 32);
  const int warps = int(blockDim.x / 32), R = warps * kRowsPerWarp;
  const int64_t rows = p.T * p.G;
  const int64_t r0 = int64_t(blockIdx.x) * R;
  const int64_t hk = blockIdx.y;
  const int64_t c0 = int64_t(blockIdx.z) * 32 * NQ;
  const int64_t dk = p.dk_dim, dv = p.dv_dim, kst = dk | 1, vst = dv | 1;
  const int64_t pos0 = p.S - p.T;
  float* qs = smem;
  float* os = qs + R * dk;
  float* ks = os + R * dv;
  float* vs = ks + kKeyTile * kst;
  const T* q = static_cast<const T*>(p.q);
  const T* k = static_cast<const T*>(p.k);
  const T* v = static_cast<const T*>(p.v);
  const T* dout = static_cast<const T*>(p.dout);

  for (int r = warp; r < R; r += warps) {
    const int64_t row = r0 + r;
    const bool in = row < rows;
    const int64_t t = row / p.G, h = hk * p.G + row % p.G;
    for (int64_t i = lane; i < dk; i += 32)
      qs[r * dk + i] = in ? to_f32(q[t * p.q_t + h * p.q_h + i]) : 0.0f;
    for (int64_t d = lane; d < dv; d += 32)
      os[r * dv + d] = in ? to_f32(dout[(t * p.H + h) * dv + d]) : 0.0f;
  }

  int64_t n_keys[kRowsPerWarp];
  float lse[kRowsPerWarp], dsum[kRowsPerWarp], acc[kRowsPerWarp][NQ];
  int64_t warp_keys = 0;
  for (int r = 0; r < kRowsPerWarp; ++r) {
    const int64_t row = r0 + warp * kRowsPerWarp + r;
    const int64_t t = row / p.G, h = hk * p.G + row % p.G;
    n_keys[r] = row < rows ? pos0 + t + 1 : 0;
    lse[r] = row < rows ? p.lse[t * p.H + h] : 0.0f;
    dsum[r] = row < rows ? p.dsum[t * p.H + h] : 0.0f;
    warp_keys = max(warp_keys, n_keys[r]);
    for (int c = 0; c < NQ; ++c) acc[r][c] = 0.0f;
  }
  const int64_t block_keys = pos0 + (min(rows, r0 + R) - 1) / p.G + 1;

  for (int64_t s0 = 0; s0 < block_keys; s0 += kKeyTile) {
    __syncthreads();  // the previous tile is consumed (the first time: q and dout rows stored)
    for (int j = warp; j < kKeyTile; j += warps) {
      const int64_t s = s0 + j;
      const bool in = s < block_keys;
      for (int64_t i = lane; i < dk; i += 32)
        ks[j * kst + i] = in ? to_f32(k[s * p.k_s + hk * p.k_h + i]) : 0.0f;
      for (int64_t d = lane; d < dv; d += 32)
        vs[j * vst + d] = in ? to_f32(v[s * p.v_s + hk * p.v_h + d]) : 0.0f;
    }
    __syncthreads();
    if (warp_keys <= s0) continue;  // the same for the whole warp

    float qk[kRowsPerWarp], ov[kRowsPerWarp];
    for (int r = 0; r < kRowsPerWarp; ++r) qk[r] = ov[r] = 0.0f;
    const float* qw = qs + int64_t(warp) * kRowsPerWarp * dk;
    const float* ow = os + int64_t(warp) * kRowsPerWarp * dv;
    const float* kj = ks + lane * kst;
    const float* vj = vs + lane * vst;
    for (int64_t i = 0; i < dk; ++i) {
      const float kv = kj[i];
      for (int r = 0; r < kRowsPerWarp; ++r) qk[r] += qw[r * dk + i] * kv;
    }
    for (int64_t d = 0; d < dv; ++d) {
      const float vv = vj[d];
      for (int r = 0; r < kRowsPerWarp; ++r) ov[r] += ow[r * dv + d] * vv;
    }
    const int n_tile = int(min(int64_t(kKeyTile), warp_keys - s0));
    for (int r = 0; r < kRowsPerWarp; ++r) {
      if (n_keys[r] <= s0) continue;  // uniform over the warp
      const float pj = s0 + lane < n_keys[r] ? expf(qk[r] * p.scale - lse[r]) : 0.0f;
      const float ds = pj * (ov[r] - dsum[r]);
      for (int j = 0; j < n_tile; ++j) {
        const float dsj = __shfl_sync(0xffffffffu, ds, j);
        const float* krow = ks + j * kst + c0;
        for (int c = 0; c < NQ; ++c)
          if (c0 + lane + 32 * c < dk) acc[r][c] += dsj * krow[lane + 32 * c];
      }
    }
  }

  T* dq = static_cast<T*>(p.dq);
  for (int r = 0; r < kRowsPerWarp; ++r) {
    if (n_keys[r] == 0) continue;
    const int64_t row = r0 + warp * kRowsPerWarp + r;
    const int64_t t = row / p.G, h = hk * p.G + row % p.G;
    T* dst = dq + (t * p.H + h) * dk + c0;
    for (int c = 0; c < NQ; ++c)
      if (c0 + lane + 32 * c < dk) dst[lane + 32 * c] = from_f32<T>(acc[r][c] * p.scale);
  }
}

// ---- dk, dv ------------------------------------------------------------------------------------
// Block: kBwdKeys keys s0 .. s0 + 15 of key head blockIdx.y, 16 threads per key (thread l of key
// j owns dk and dv columns c0 + l + 16c, c < NA, with c0 = blockIdx.z·16·NA). Query rows come
// through shared memory kBwdRows at a time. Key and value tile strides are ≡ 16 (mod 32) words,
// so the two keys a warp reads sit in opposite halves of the banks.
constexpr int kBwdKeys = 16;
constexpr int kBwdRows = 16;

__host__ __device__ inline int64_t half_bank_stride(int64_t n) {
  const int64_t s = (n + 15) / 16 * 16;
  return (s / 16) % 2 == 0 ? s + 16 : s;
}

inline size_t dkdv_shared_bytes(int64_t dk, int64_t dv) {
  return size_t(kBwdKeys * (half_bank_stride(dk) + half_bank_stride(dv)) + kBwdRows * (dk + dv)) *
         sizeof(float);
}

template <typename T, int NA>
__global__ void __launch_bounds__(kBwdKeys * 16)
    attention_backward_dkdv_kernel(const GradParams p) {
  extern __shared__ float smem[];
  __shared__ float lse_s[kBwdRows], dsum_s[kBwdRows];
  __shared__ int64_t n_keys_s[kBwdRows];
  const int j = int(threadIdx.x / 16), l = int(threadIdx.x % 16);
  const int lane = int(threadIdx.x % 32), warp = int(threadIdx.x / 32),
            warps = int(blockDim.x / 32);
  const int64_t s0 = int64_t(blockIdx.x) * kBwdKeys, s = s0 + j;
  const int64_t hk = blockIdx.y;
  const int64_t c0 = int64_t(blockIdx.z) * 16 * NA;
  const int64_t dk = p.dk_dim, dv = p.dv_dim;
  const int64_t kst = half_bank_stride(dk), vst = half_bank_stride(dv);
  const int64_t pos0 = p.S - p.T, rows = p.T * p.G;
  float* ks = smem;
  float* vs = ks + kBwdKeys * kst;
  float* qs = vs + kBwdKeys * vst;
  float* os = qs + kBwdRows * dk;
  const T* q = static_cast<const T*>(p.q);
  const T* k = static_cast<const T*>(p.k);
  const T* v = static_cast<const T*>(p.v);
  const T* dout = static_cast<const T*>(p.dout);

  for (int64_t i = l; i < dk; i += 16)
    ks[j * kst + i] = s < p.S ? to_f32(k[s * p.k_s + hk * p.k_h + i]) : 0.0f;
  for (int64_t d = l; d < dv; d += 16)
    vs[j * vst + d] = s < p.S ? to_f32(v[s * p.v_s + hk * p.v_h + d]) : 0.0f;

  float dk_acc[NA], dv_acc[NA];
  for (int c = 0; c < NA; ++c) dk_acc[c] = dv_acc[c] = 0.0f;
  // Query t sees key s0 once pos0 + t >= s0: earlier rows contribute nothing to this block.
  const int64_t first_row = std::max<int64_t>(0, s0 - pos0) * p.G;
  for (int64_t rr0 = first_row; rr0 < rows; rr0 += kBwdRows) {
    __syncthreads();  // the previous rows are consumed (the first time: the key tile is stored)
    for (int r = warp; r < kBwdRows; r += warps) {
      const int64_t row = rr0 + r;
      const bool in = row < rows;
      const int64_t t = row / p.G, h = hk * p.G + row % p.G;
      for (int64_t i = lane; i < dk; i += 32)
        qs[r * dk + i] = in ? to_f32(q[t * p.q_t + h * p.q_h + i]) : 0.0f;
      for (int64_t d = lane; d < dv; d += 32)
        os[r * dv + d] = in ? to_f32(dout[(t * p.H + h) * dv + d]) : 0.0f;
      if (lane == 0) {
        lse_s[r] = in ? p.lse[t * p.H + h] : 0.0f;
        dsum_s[r] = in ? p.dsum[t * p.H + h] : 0.0f;
        n_keys_s[r] = in ? pos0 + t + 1 : 0;
      }
    }
    __syncthreads();
    const int n_rows = int(min(int64_t(kBwdRows), rows - rr0));
    for (int r = 0; r < n_rows; ++r) {
      const float* qr = qs + r * dk;
      const float* orow = os + r * dv;
      const float* kr = ks + j * kst;
      const float* vr = vs + j * vst;
      float qk = 0.0f, ov = 0.0f;
      for (int64_t i = l; i < dk; i += 16) qk += qr[i] * kr[i];
      for (int64_t d = l; d < dv; d += 16) ov += orow[d] * vr[d];
      for (int offset = 8; offset > 0; offset /= 2) {  // within the key's 16 lanes
        qk += __shfl_xor_sync(0xffffffffu, qk, offset);
        ov += __shfl_xor_sync(0xffffffffu, ov, offset);
      }
      // n_keys ≤ S, so a visible key exists.
      const float pj = s < n_keys_s[r] ? expf(qk * p.scale - lse_s[r]) : 0.0f;
      const float ds = pj * (ov - dsum_s[r]) * p.scale;
      for (int c = 0; c < NA; ++c) {
        const int64_t i = c0 + l + 16 * c;
        if (i < dk) dk_acc[c] += ds * qr[i];
        if (i < dv) dv_acc[c] += pj * orow[i];
      }
    }
  }

  if (s >= p.S) return;
  T* dk_out = static_cast<T*>(p.dk) + (s * p.Hk + hk) * dk;
  T* dv_out = static_cast<T*>(p.dv) + (s * p.Hk + hk) * dv;
  for (int c = 0; c < NA; ++c) {
    const int64_t i = c0 + l + 16 * c;
    if (i < dk) dk_out[i] = from_f32<T>(dk_acc[c]);
    if (i < dv) dv_out[i] = from_f32<T>(dv_acc[c]);
  }
}

// A device buffer freed (stream-ordered) when it goes out of scope, also on an exception.
struct DeviceBuffer {
  void* ptr;
  explicit DeviceBuffer(size_t bytes) : ptr(dseek::cuda::alloc(bytes)) {}
  ~DeviceBuffer() { dseek::cuda::free(ptr); }
  DeviceBuffer(const DeviceBuffer&) = delete;
  DeviceBuffer& operator=(const DeviceBuffer&) = delete;
  float* f32() const { return static_cast<float*>(ptr); }
};

template <typename T, int NQ>
void launch_dq(const GradParams& p, int warps, size_t smem) {
  auto kernel = attention_backward_dq_kernel<T, NQ>;
  allow_shared_bytes(kernel, smem);
  const int64_t R = int64_t(warps) * kRowsPerWarp;
  const dim3 grid(unsigned(ceil_div<int64_t>(p.T * p.G, R)), unsigned(p.Hk),
                  unsigned(ceil_div<int64_t>(p.dk_dim, 32 * NQ)));
  kernel<<<grid, unsigned(warps * 32), smem, stream()>>>(p);
  DSEEK_CUDA_CHECK_LAUNCH("attention_backward_dq_kernel");
}

template <typename T, int NA>
void launch_dkdv(const GradParams& p, size_t smem) {
  auto kernel = attention_backward_dkdv_kernel<T, NA>;
  allow_shared_bytes(kernel, smem);
  const dim3 grid(unsigned(ceil_div<int64_t>(p.S, kBwdKeys)), unsigned(p.Hk),
                  unsigned(ceil_div<int64_t>(std::max(p.dk_dim, p.dv_dim), 16 * NA)));
  kernel<<<grid, kBwdKeys * 16, smem, stream()>>>(p);
  DSEEK_CUDA_CHECK_LAUNCH("attention_backward_dkdv_kernel");
}

}  // namespace

bool causal_attention_saves_stats(const AttentionArgs& a, DType act) {
  return act == DType::BF16 && attention_tc::tc_supported(a);
}

void causal_attention(const AttentionArgs& a, DType act, float* lse2) {
  if (a.T == 0 || a.H == 0 || a.dv == 0) return;
  if (causal_attention_saves_stats(a, act)) return attention_tc::tc_forward(a, lse2);
  DSEEK_CHECK(a.seq_count == 0, "[attention] packed sequences need the tensor-core kernels");
  attention_forward<false>(dense_forward_params(a), 1, a.T, a.S, a.T, a.Hk, act, "attention");
}

void causal_attention_backward(const AttentionGradArgs& g, DType act, const void* out,
                               const float* lse2) {
  const AttentionArgs& a = g.fwd;
  const size_t esize = act == DType::BF16 ? 2 : 4;
  if (a.T == 0 || a.H == 0 || a.dv == 0) {  // no query sees any key, or out is empty
    dseek::cuda::fill_bytes(g.dq, 0, size_t(a.T * a.H * a.dk) * esize);
    dseek::cuda::fill_bytes(g.dk, 0, size_t(a.S * a.Hk * a.dk) * esize);
    dseek::cuda::fill_bytes(g.dv, 0, size_t(a.S * a.Hk * a.dv) * esize);
    return;
  }
  if (causal_attention_saves_stats(a, act) && reinterpret_cast<uintptr_t>(g.dout) % 16 == 0)
    return attention_tc::tc_backward(g, out, lse2);
  DSEEK_CHECK(a.seq_count == 0, "[attention] packed sequences need the tensor-core kernels");
  DSEEK_CHECK(a.Hk <= 65535, "[attention] {} key heads: the kernels take at most 65535", a.Hk);
  const int64_t rows = a.T * (a.H / a.Hk);
  // The shared memory both kernels need, checked before any work is queued.
  int warps = int(std::clamp<int64_t>(ceil_div<int64_t>(rows, kRowsPerWarp), 1, 8));
  while (warps > 1 && dq_shared_bytes(warps, a.dk, a.dv) > shared_budget()) warps /= 2;
  const size_t dq_smem = dq_shared_bytes(warps, a.dk, a.dv),
               dkdv_smem = dkdv_shared_bytes(a.dk, a.dv);
  DSEEK_CHECK(std::max(dq_smem, dkdv_smem) <= shared_budget(),
              "[attention] backward with head dims dk {} / dv {} needs {} bytes of shared memory, "
              "the GPU gives a block {}",
              a.dk, a.dv, std::max(dq_smem, dkdv_smem), shared_budget());

  // 1. Row statistics: lse and D = dout · out, from the forward kernel writing no output.
  DeviceBuffer lse(size_t(a.T * a.H) * sizeof(float)), dsum(size_t(a.T * a.H) * sizeof(float));
  ForwardParams fp = dense_forward_params(a);
  fp.out = nullptr;
  fp.lse = lse.f32();
  fp.dout = g.dout;
  fp.dsum = dsum.f32();
  attention_forward<false>(fp, 1, a.T, a.S, a.T, a.Hk, act, "attention");

  GradParams p{};
  p.q = a.q;
  p.q_t = a.q_t;
  p.q_h = a.q_h;
  p.k = a.k;
  p.k_s = a.k_s;
  p.k_h = a.k_h;
  p.v = a.v;
  p.v_s = a.v_s;
  p.v_h = a.v_h;
  p.dout = g.dout;
  p.lse = lse.f32();
  p.dsum = dsum.f32();
  p.dq = g.dq;
  p.dk = g.dk;
  p.dv = g.dv;
  p.T = a.T;
  p.S = a.S;
  p.H = a.H;
  p.Hk = a.Hk;
  p.G = a.H / a.Hk;
  p.dk_dim = a.dk;
  p.dv_dim = a.dv;
  p.scale = a.scale;
  if (a.dk > 0) {  // 2. dq
    DSEEK_DISPATCH_ACT(act, T, {
      if (a.dk <= 64)
        launch_dq<T, 2>(p, warps, dq_smem);
      else if (a.dk <= 128)
        launch_dq<T, 4>(p, warps, dq_smem);
      else if (a.dk <= 256)
        launch_dq<T, 8>(p, warps, dq_smem);
      else
        launch_dq<T, 16>(p, warps, dq_smem);
    });
  }
  // 3. dk, dv
  const int64_t widest = std::max(a.dk, a.dv);
  if (widest == 0) return;
  DSEEK_DISPATCH_ACT(act, T, {
    if (widest <= 32)
      launch_dkdv<T, 2>(p, dkdv_smem);
    else if (widest <= 64)
      launch_dkdv<T, 4>(p, dkdv_smem);
    else if (widest <= 128)
      launch_dkdv<T, 8>(p, dkdv_smem);
    else
      launch_dkdv<T, 16>(p, dkdv_smem);
  });
}

}  // namespace dseek::ops::cuda
