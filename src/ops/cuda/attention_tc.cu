// Causal attention for bf16 activations on tensor cores: FlashAttention-2 (Dao, 2023) with
// mma.sync.m16n8k16 (bf16 in, f32 accumulate; building blocks in attention_mma.cuh). Same maths
// and argument semantics as the scalar kernels (attention.cu, ops/attention.h): queries are the
// last T of S positions, query head h reads key head h / G (G = H / Hk), strided q/k/v.
//
// Every kernel runs 4 warps; a warp owns 16 rows of the block's 64 and the tiles it multiplies
// with stream through shared memory with cp.async, double-buffered (the next tile loads while
// the current one is used). Scores live in the log2 domain: x = scale·log2(e)·q·k, p = 2^(x − m).
//
// Forward (tc_forward_kernel): a block = 64 query rows of one head; key tiles of 64 from 0 up to
// the causal limit of its last row. S = Q·Kᵀ, online softmax on the C fragments (a row's four
// values per 8 keys sit in one quad of lanes), P rounded to bf16 and reused as the A fragments of
// O += P·V. The output is O / l; optionally lse2 = m + log2 l and D = dout · O per row (f32).
// Backward, deterministic (each output element summed by one thread in a fixed order):
//   1. the forward kernel without output: lse2 and D per (query, head) — or, given the forward's
//      output and lse2 (ops::AttentionSaved), row_dot_kernel's D = dout · out alone;
//   2. tc_dkdv_kernel: a block = 64 keys of one key head; it walks the query tiles (64 rows, 32
//      when dk + dv ≥ 256 to keep the dK, dV accumulators in registers) that see them, for every
//      head of the group (GQA sums inside the block): Sᵀ = K·Qᵀ, Pᵀ = 2^(Sᵀ − lse2),
//      dPᵀ = V·dOᵀ, dV += Pᵀ·dO, dSᵀ = Pᵀ ⊙ (dPᵀ − D), dK += dSᵀ·Q (scaled at the end);
//   3. tc_dq_kernel: a block = 64 query rows of one head, key tiles as in the forward (32 keys
//      when dk = 192): S, P, dP = dO·Vᵀ, dS, dQ += dS·K. Recomputing S and dP here (7 products
//      instead of FlashAttention-2's 5) buys determinism without an f32 dQ workspace and atomics.
// Checked without a GPU by bench/kernels/attention_tc_emulate.cpp (these kernels on the host).
#include <algorithm>
#include <cmath>
#include <memory>

#include "core/cuda.h"
#include "core/cuda/cuda_check.h"
#include "core/error.h"
#include "ops/cuda/attention_tc.cuh"
#include "ops/cuda/attention_tc_kernels.cuh"

namespace dseek::ops::cuda::attention_tc {

using dseek::cuda::ceil_div;

namespace {

// ---- launches ----------------------------------------------------------------------------------
template <typename Kernel>
void launch(Kernel kernel, dim3 grid, size_t smem, const TcParams& p, const char* name) {
  DSEEK_CUDA_CHECK(
      cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, int(smem)));
  kernel<<<grid, kThreads, smem, dseek::cuda::stream()>>>(p);
  DSEEK_CUDA_CHECK_LAUNCH(name);
}

template <int DK, int DV>
void forward(const TcParams& p) {
  launch(tc_forward_kernel<DK, DV>, dim3(unsigned(ceil_div<int64_t>(p.T, kRows)), unsigned(p.H)),
         FwdShape<DK, DV>::kSmem, p, "tc_forward_kernel");
}

template <int DK, int DV>
void backward(const TcParams& p, bool row_stats) {
  if (row_stats) forward<DK, DV>(p);  // lse2 and dsum (p.out is null)
  launch(tc_dkdv_kernel<DK, DV>, dim3(unsigned(ceil_div<int64_t>(p.S, kRows)), unsigned(p.Hk)),
         DkdvShape<DK, DV>::kSmem, p, "tc_dkdv_kernel");
  launch(tc_dq_kernel<DK, DV>, dim3(unsigned(ceil_div<int64_t>(p.T, kRows)), unsigned(p.H)),
         DqShape<DK, DV>::kSmem, p, "tc_dq_kernel");
}

// Runs fn<DK, DV> for the supported head dims (tc_supported checked them).
template <template <int, int> class Fn>
void dispatch(int64_t dk, int64_t dv, const TcParams& p) {
  if (dk == 64 && dv == 64) return Fn<64, 64>::run(p);
  if (dk == 64 && dv == 128) return Fn<64, 128>::run(p);
  if (dk == 128 && dv == 64) return Fn<128, 64>::run(p);
  if (dk == 128 && dv == 128) return Fn<128, 128>::run(p);
  if (dk == 192 && dv == 64) return Fn<192, 64>::run(p);
  if (dk == 192 && dv == 128) return Fn<192, 128>::run(p);
  dseek::fail("[attention] no tensor-core kernel for head dims dk {} / dv {}", dk, dv);
}
template <int DK, int DV>
struct Forward {
  static void run(const TcParams& p) { forward<DK, DV>(p); }
};
template <int DK, int DV>
struct Backward {
  static void run(const TcParams& p) { backward<DK, DV>(p, true); }
};
template <int DK, int DV>
struct BackwardFromSaved {  // lse2 and dsum already made
  static void run(const TcParams& p) { backward<DK, DV>(p, false); }
};

// D = dout · out per (query, head) row of the kept forward output, f32 [T·H]: a warp a row, each
// lane two bf16 pairs apart by 64, then the warp's fixed xor tree (deterministic).
__global__ void row_dot_kernel(const bf16* out, const bf16* dout, int64_t rows, int dv,
                               float* dsum) {
  const int lane = threadIdx.x % 32;
  const int64_t row = (int64_t(blockIdx.x) * blockDim.x + threadIdx.x) / 32;
  if (row >= rows) return;  // uniform over the warp
  const __nv_bfloat162* o = reinterpret_cast<const __nv_bfloat162*>(out + row * dv);
  const __nv_bfloat162* d = reinterpret_cast<const __nv_bfloat162*>(dout + row * dv);
  float sum = 0.0f;
  for (int j = lane; j < dv / 2; j += 32) {
    const float2 a = __bfloat1622float2(o[j]), b = __bfloat1622float2(d[j]);
    sum += a.x * b.x + a.y * b.y;
  }
#pragma unroll
  for (int offset = 16; offset > 0; offset /= 2) sum += __shfl_xor_sync(0xffffffffu, sum, offset);
  if (lane == 0) dsum[row] = sum;
}

TcParams params(const AttentionArgs& a) {
  TcParams p{};
  p.q = static_cast<const bf16*>(a.q);
  p.q_t = a.q_t;
  p.q_h = a.q_h;
  p.k = static_cast<const bf16*>(a.k);
  p.k_s = a.k_s;
  p.k_h = a.k_h;
  p.v = static_cast<const bf16*>(a.v);
  p.v_s = a.v_s;
  p.v_h = a.v_h;
  p.T = a.T;
  p.S = a.S;
  p.H = a.H;
  p.Hk = a.Hk;
  p.G = a.H / a.Hk;
  p.scale = a.scale;
  p.scale_log2 = a.scale * 1.4426950408889634f;
  return p;
}

bool aligned16(const void* ptr) {
  return reinterpret_cast<uintptr_t>(ptr) % 16 == 0;
}

// The largest dynamic shared memory a block may opt into on the current device.
size_t shared_optin() {
  static const size_t bytes =
      size_t(dseek::cuda::device_attribute(cudaDevAttrMaxSharedMemoryPerBlockOptin));
  return bytes;
}

}  // namespace

bool tc_supported(const AttentionArgs& a) {
  const bool dims = (a.dk == 64 || a.dk == 128 || a.dk == 192) && (a.dv == 64 || a.dv == 128);
  if (!dims || a.H > 65535 || a.Hk <= 0 || a.H % a.Hk != 0) return false;
  for (int64_t stride : {a.q_t, a.q_h, a.k_s, a.k_h, a.v_s, a.v_h})
    if (stride % 8 != 0) return false;
  // The widest block (forward, dk 192 / dv 128) takes 112 KB: any sm_80+ GPU but the smallest.
  return aligned16(a.q) && aligned16(a.k) && aligned16(a.v) &&
         FwdShape<192, 128>::kSmem <= shared_optin();
}

void tc_forward(const AttentionArgs& a, float* lse2) {
  TcParams p = params(a);
  p.out = static_cast<bf16*>(a.out);
  p.lse2 = lse2;
  dispatch<Forward>(a.dk, a.dv, p);
}

void tc_backward(const AttentionGradArgs& g, const void* out, const float* lse2) {
  const AttentionArgs& a = g.fwd;
  TcParams p = params(a);
  // Row statistics of the forward pass: lse2 and D = dout · out, f32 [T, H] each.
  const size_t n = size_t(a.T * a.H);
  const bool saved = out && lse2;
  std::unique_ptr<void, void (*)(void*)> stats(
      dseek::cuda::alloc((saved ? 1 : 2) * n * sizeof(float)), dseek::cuda::free);
  p.lse2 = saved ? const_cast<float*>(lse2) : static_cast<float*>(stats.get());  // only read
  p.dsum = saved ? static_cast<float*>(stats.get()) : p.lse2 + n;
  p.dout = static_cast<const bf16*>(g.dout);
  p.dq = static_cast<bf16*>(g.dq);
  p.dk = static_cast<bf16*>(g.dk);
  p.dv = static_cast<bf16*>(g.dv);
  if (!saved) return dispatch<Backward>(a.dk, a.dv, p);
  constexpr int kRowsPerBlock = 8;  // warps of a 256-thread block
  row_dot_kernel<<<unsigned(ceil_div<int64_t>(int64_t(n), kRowsPerBlock)), 32 * kRowsPerBlock, 0,
                   dseek::cuda::stream()>>>(static_cast<const bf16*>(out), p.dout, int64_t(n),
                                            int(a.dv), p.dsum);
  DSEEK_CUDA_CHECK_LAUNCH("row_dot_kernel");
  dispatch<BackwardFromSaved>(a.dk, a.dv, p);
}

}  // namespace dseek::ops::cuda::attention_tc
