// Causal attention for bf16 activations on tensor cores: FlashAttention-2 (Dao, 2023) with
// mma.sync.m16n8k16 (bf16 in, f32 accumulate; building blocks in attention_mma.cuh). Same maths
// and argument semantics as the scalar kernels (attention.cu, ops/attention.h): queries are the
// last T of S positions, query head h reads key head h / G (G = H / Hk), strided q/k/v.
//
// Sequences packed back to back (a training batch: ops::causal_attention_packed) run in one launch
// per 64 of them: grid x covers (head, sequence), y the row tiles, and each block moves its
// pointers to its sequence's rows (sequence_params) and computes what a one-sequence launch's
// block would.
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
void launch(Kernel kernel, dim3 grid, size_t smem, const TcParams& p, const Sequences& seqs,
            const char* name) {
  DSEEK_CUDA_CHECK(
      cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, int(smem)));
  kernel<<<grid, kThreads, smem, dseek::cuda::stream()>>>(p, seqs);
  DSEEK_CUDA_CHECK_LAUNCH(name);
}

// The grid of a kernel over `heads` heads and row tiles of `rows` (the longest sequence's):
// x = (head, sequence) pairs, y = the tiles.
dim3 grid_of(int64_t heads, const Sequences& seqs, int64_t rows) {
  return dim3(unsigned(heads * std::max(seqs.count, 1)), unsigned(ceil_div<int64_t>(rows, kRows)));
}

// The longest sequence of a launch, or T (S) of the single one.
int64_t longest(const Sequences& seqs, int64_t single) {
  if (seqs.count == 0) return single;
  int64_t n = 0;
  for (int i = 0; i < seqs.count; ++i) n = std::max(n, seqs.start[i + 1] - seqs.start[i]);
  return n;
}

template <int DK, int DV>
void forward(const TcParams& p, const Sequences& seqs) {
  launch(tc_forward_kernel<DK, DV>, grid_of(p.H, seqs, longest(seqs, p.T)), FwdShape<DK, DV>::kSmem,
         p, seqs, "tc_forward_kernel");
}

template <int DK, int DV>
void backward(const TcParams& p, const Sequences& seqs, bool row_stats) {
  if (row_stats) forward<DK, DV>(p, seqs);  // lse2 and dsum (p.out is null)
  launch(tc_dkdv_kernel<DK, DV>, grid_of(p.Hk, seqs, longest(seqs, p.S)), DkdvShape<DK, DV>::kSmem,
         p, seqs, "tc_dkdv_kernel");
  launch(tc_dq_kernel<DK, DV>, grid_of(p.H, seqs, longest(seqs, p.T)), DqShape<DK, DV>::kSmem, p,
         seqs, "tc_dq_kernel");
}

// Runs Fn<DK, DV>::run(p, seqs) for the supported head dims (tc_supported checked them).
template <template <int, int> class Fn>
void dispatch(int64_t dk, int64_t dv, const TcParams& p, const Sequences& seqs) {
  if (dk == 64 && dv == 64) return Fn<64, 64>::run(p, seqs);
  if (dk == 64 && dv == 128) return Fn<64, 128>::run(p, seqs);
  if (dk == 128 && dv == 64) return Fn<128, 64>::run(p, seqs);
  if (dk == 128 && dv == 128) return Fn<128, 128>::run(p, seqs);
  if (dk == 192 && dv == 64) return Fn<192, 64>::run(p, seqs);
  if (dk == 192 && dv == 128) return Fn<192, 128>::run(p, seqs);
  dseek::fail("[attention] no tensor-core kernel for head dims dk {} / dv {}", dk, dv);
}
template <int DK, int DV>
struct Forward {
  static void run(const TcParams& p, const Sequences& s) { forward<DK, DV>(p, s); }
};
template <int DK, int DV>
struct Backward {
  static void run(const TcParams& p, const Sequences& s) { backward<DK, DV>(p, s, true); }
};
template <int DK, int DV>
struct BackwardFromSaved {  // lse2 and dsum already made
  static void run(const TcParams& p, const Sequences& s) { backward<DK, DV>(p, s, false); }
};

// Calls fn(seqs) for the launches of a's sequences: one with count 0 for a single sequence, else
// one per kMaxSequences of the packed ones (their starts in rows of the whole tensors).
template <typename Fn>
void for_each_launch(const AttentionArgs& a, Fn fn) {
  Sequences seqs{};
  if (a.seq_count == 0) return fn(seqs);
  int64_t row = 0;
  for (int64_t i = 0; i < a.seq_count;) {
    seqs.count = int(std::min<int64_t>(kMaxSequences, a.seq_count - i));
    for (int j = 0; j < seqs.count; ++j, ++i) {
      seqs.start[j] = row;
      row += a.seq_lengths[i];
    }
    seqs.start[seqs.count] = row;
    if (row > seqs.start[0]) fn(seqs);  // (a table of empty sequences has no rows: no grid)
  }
}

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
  if (!dims || a.Hk <= 0 || a.H % a.Hk != 0) return false;
  // Grid x: heads × (up to kMaxSequences) sequences; grid y: row tiles.
  if (a.H * kMaxSequences > INT32_MAX || ceil_div<int64_t>(a.S, kRows) > 65535) return false;
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
  for_each_launch(a, [&](const Sequences& seqs) { dispatch<Forward>(a.dk, a.dv, p, seqs); });
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
  if (!saved)
    return for_each_launch(a,
                           [&](const Sequences& seqs) { dispatch<Backward>(a.dk, a.dv, p, seqs); });
  constexpr int kRowsPerBlock = 8;  // warps of a 256-thread block
  row_dot_kernel<<<unsigned(ceil_div<int64_t>(int64_t(n), kRowsPerBlock)), 32 * kRowsPerBlock, 0,
                   dseek::cuda::stream()>>>(static_cast<const bf16*>(out), p.dout, int64_t(n),
                                            int(a.dv), p.dsum);
  DSEEK_CUDA_CHECK_LAUNCH("row_dot_kernel");
  for_each_launch(a,
                  [&](const Sequences& seqs) { dispatch<BackwardFromSaved>(a.dk, a.dv, p, seqs); });
}

}  // namespace dseek::ops::cuda::attention_tc
