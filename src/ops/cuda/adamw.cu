// The optimizer ops on the GPU (maths in ops/adamw.h): one launch for all tensors of a step. Each
// block takes chunks of kMultiTensorChunk elements (grid-stride over the launch's chunks) and
// finds its tensor by a binary search over the table's chunk_begin, as apex's multi_tensor_apply
// does with its chunk lists. The AdamW arithmetic uses round-to-nearest intrinsics so that nvcc
// cannot contract it into fused multiply-adds: the same f32 operations as cpu::adamw_update.
#include <cuda_bf16.h>

#include <algorithm>
#include <cstdint>
#include <cstdlib>
#include <type_traits>

#include "core/cuda.h"
#include "core/cuda/cuda_check.h"
#include "core/error.h"
#include "ops/cuda/adamw_element.cuh"
#include "ops/cuda/adamw_kernels.cuh"
#include "ops/cuda/cuda_ops.h"
#include "ops/cuda/reduce.cuh"
#include "ops/cuda/squares.cuh"
#include "ops/split_bits.h"

namespace dseek::ops::cuda {

using dseek::cuda::stream;

namespace {

constexpr int kThreads = 256;
constexpr int64_t kMaxBlocks = 4096;  // enough to fill an H200 several times; chunks loop beyond

unsigned blocks_for(int64_t chunks) {
  return unsigned(std::min(chunks, kMaxBlocks));
}

// The pieces a short-block update cuts each chunk into (DSEEK_UPDATE_PARTS: 1, 2, 4, 8 or 16;
// 4 unless set): a block of a quarter chunk (4096 elements, ~90 KB moved) frees its SM for the
// main stream's next kernel sooner than one of a whole chunk did.
int update_parts() {
  static const int parts = [] {
    const char* env = std::getenv("DSEEK_UPDATE_PARTS");
    const int n = env ? std::atoi(env) : 4;
    return n == 1 || n == 2 || n == 4 || n == 8 || n == 16 ? n : 4;
  }();
  return parts;
}

// f(std::bool_constant<bf16_moments>, std::bool_constant<rows>): the AdamW kernels' two template
// flags from their run-time values, for one launch line a kernel.
template <typename F>
void with_flags(bool bf16_moments, bool rows, F f) {
  using T = std::true_type;
  using N = std::false_type;
  if (bf16_moments && rows)
    f(T{}, T{});
  else if (bf16_moments)
    f(T{}, N{});
  else if (rows)
    f(N{}, T{});
  else
    f(N{}, N{});
}

// partial[c] = Σ grad² over chunk c, in double.
// Chunks [first, last) of the table.
__global__ void sum_of_squares_kernel(const MultiTensorEntry* entries, int64_t count, int64_t first,
                                      int64_t last, double* partial) {
  __shared__ double scratch[32];
  for (int64_t c = first + blockIdx.x; c < last;
       c += gridDim.x) {  // uniform per block: syncs are safe
    const MultiTensorEntry e = entry_at(entries, count, c, &MultiTensorEntry::chunk_begin);
    const int64_t begin = (c - e.chunk_begin) * kMultiTensorChunk;
    const int64_t end = min(e.n, begin + kMultiTensorChunk);
    double sum = 0.0;
    // Four elements a load where the chunk is 16-byte aligned (chunks start at multiples of 4):
    // the scalar loop kept ~58% of the HBM bandwidth busy. Each thread's order stays fixed.
    int64_t tail = begin;
    if (e.grad_bf16) {  // the bf16 values' squares, four elements an 8-byte load where aligned
      const GradRows<false> g{e.grad, nullptr, 0, true};
      if (grad_quads(e)) {
        const int64_t quads = (end - begin) / 4;
        for (int64_t q = threadIdx.x; q < quads; q += blockDim.x) {
          sum = add_squares4(sum, g.load4(begin + 4 * q));
        }
        tail = begin + 4 * quads;
      }
      for (int64_t k = tail + threadIdx.x; k < end; k += blockDim.x) {
        const double v = g.load(k);
        sum = __dadd_rn(sum, __dmul_rn(v, v));
      }
      tail = end;
    } else if ((reinterpret_cast<uintptr_t>(e.grad) & 15) == 0) {
      const float4* g4 = reinterpret_cast<const float4*>(e.grad + begin);
      const int64_t quads = (end - begin) / 4;
#pragma unroll 4
      for (int64_t q = threadIdx.x; q < quads; q += blockDim.x) {
        sum = add_squares4(sum, g4[q]);
      }
      tail = begin + 4 * quads;
    }
    for (int64_t k = tail + threadIdx.x; k < end; k += blockDim.x) {
      const double g = e.grad[k];
      sum = __dadd_rn(sum, __dmul_rn(g, g));
    }
    sum = block_sum(sum, scratch);
    if (threadIdx.x == 0) partial[c] = sum;
  }
}

// Σ partial[0 .. n) in two launches of fixed shapes, so the order of the sums depends on nothing
// but n, and zeros appended to partial leave every sum's bits as they were (SumOfSquaresParts
// appends its writers' slots). One block of 1024 threads took 54 µs for V2-Lite's 137K chunks on
// the step's critical path (docs/BENCHMARKS.md, run Y's timeline); 64 blocks share the reads.
constexpr int kPartialBlocks = 64, kPartialThreads = 256;
// out[b] = Σ partial[i] over i ≡ b·256 + t (mod 64·256) for the block's threads t, then its tree.
__global__ void sum_partials_kernel(const double* partial, int64_t n, double* out) {
  __shared__ double scratch[32];
  double sum = 0.0;
  const int64_t stride = int64_t(gridDim.x) * blockDim.x;
  for (int64_t i = int64_t(blockIdx.x) * blockDim.x + threadIdx.x; i < n; i += stride)
    sum += partial[i];
  sum = block_sum(sum, scratch);
  if (threadIdx.x == 0) out[blockIdx.x] = sum;
}

__global__ void scale_kernel(const MultiTensorEntry* entries, int64_t count, int64_t chunks,
                             float scale) {
  for (int64_t c = blockIdx.x; c < chunks; c += gridDim.x) {
    const MultiTensorEntry e = entry_at(entries, count, c, &MultiTensorEntry::chunk_begin);
    const int64_t begin = (c - e.chunk_begin) * kMultiTensorChunk;
    const int64_t end = min(e.n, begin + kMultiTensorChunk);
    if (e.grad_bf16) {  // scaled in f32, rounded back to bf16
      auto* g16 = reinterpret_cast<uint16_t*>(e.grad);
      for (int64_t k = begin + threadIdx.x; k < end; k += blockDim.x)
        g16[k] = bf16_bits(__fmul_rn(__uint_as_float(uint32_t(g16[k]) << 16), scale));
      continue;
    }
    for (int64_t k = begin + threadIdx.x; k < end; k += blockDim.x)
      e.grad[k] = __fmul_rn(e.grad[k], scale);
  }
}

}  // namespace

void adamw_multi_tensor(const MultiTensorEntry* entries, int64_t count, int64_t chunks,
                        const AdamWScalars& s, bool bf16_moments, bool short_blocks, bool rows,
                        const uint8_t* skip_rows, int64_t skip_row_len) {
  if (count == 0 || chunks == 0) return;
  DSEEK_CHECK(!skip_rows || (count == 1 && skip_row_len > 0 && skip_row_len % 4 == 0),
              "[adamw] rows skipped in a launch of {} tensors, rows of {} elements", count,
              skip_row_len);
  // Short blocks (a piece of a chunk each, a few µs of HBM traffic): on the low-priority
  // background stream the main stream's kernels then get each SM back within microseconds.
  const int parts = short_blocks ? update_parts() : 1;
  const unsigned blocks =
      short_blocks ? unsigned(std::min<int64_t>(chunks * parts, INT32_MAX)) : blocks_for(chunks);
  with_flags(bf16_moments, rows, [&](auto bf16, auto by_rows) {
    adamw_kernel<bf16, by_rows><<<blocks, kThreads, 0, stream()>>>(entries, count, chunks, parts, s,
                                                                   skip_rows, skip_row_len);
  });
  DSEEK_CUDA_CHECK_LAUNCH("adamw_kernel");
}

void adamw_rows(const MultiTensorEntry* entry, const int32_t* rows, int64_t count, int64_t row_len,
                const AdamWScalars& s, bool bf16_moments, bool grad_rows) {
  if (count == 0) return;
  DSEEK_CHECK(row_len > 0 && row_len % 4 == 0, "[adamw] rows of {} elements (a multiple of 4)",
              row_len);
  const unsigned blocks = blocks_for(count);
  with_flags(bf16_moments, grad_rows, [&](auto bf16, auto by_rows) {
    adamw_rows_kernel<bf16, by_rows>
        <<<blocks, kThreads, 0, stream()>>>(entry, rows, count, row_len, s);
  });
  DSEEK_CUDA_CHECK_LAUNCH("adamw_rows_kernel");
}

void sum_of_squares_multi_tensor(const MultiTensorEntry* entries, int64_t count, int64_t chunks,
                                 double* out) {
  if (count == 0 || chunks == 0) {
    dseek::cuda::fill_bytes(out, 0, sizeof(double));  // all-zero bytes are +0.0
    return;
  }
  double* partial = static_cast<double*>(dseek::cuda::alloc(size_t(chunks) * sizeof(double)));
  sum_of_squares_chunks(entries, count, 0, chunks, partial);
  sum_partials(partial, chunks, out);
  dseek::cuda::free(partial);
}

void sum_of_squares_chunks(const MultiTensorEntry* entries, int64_t count, int64_t first,
                           int64_t last, double* partial) {
  if (last <= first) return;
  sum_of_squares_kernel<<<blocks_for(last - first), kThreads, 0, stream()>>>(entries, count, first,
                                                                             last, partial);
  DSEEK_CUDA_CHECK_LAUNCH("sum_of_squares_kernel");
}

__global__ void clip_factor_kernel(const double* sum, double max_norm, double* norm,
                                   float* factor) {
  const double n = sqrt(*sum);  // IEEE square root and division: the host's bits
  *norm = n;
  *factor = max_norm > 0.0 && isfinite(n) && n > max_norm ? float(max_norm / (n + 1e-6)) : 1.0f;
}

void clip_factor_from_sum(const double* sum, double max_norm, double* norm, float* factor) {
  clip_factor_kernel<<<1, 1, 0, stream()>>>(sum, max_norm, norm, factor);
  DSEEK_CUDA_CHECK_LAUNCH("clip_factor_kernel");
}

void sum_partials(const double* partial, int64_t chunks, double* out) {
  auto* blocks = static_cast<double*>(dseek::cuda::alloc(kPartialBlocks * sizeof(double)));
  sum_partials_kernel<<<kPartialBlocks, kPartialThreads, 0, stream()>>>(partial, chunks, blocks);
  DSEEK_CUDA_CHECK_LAUNCH("sum_partials_kernel");
  sum_partials_kernel<<<1, kPartialBlocks, 0, stream()>>>(blocks, kPartialBlocks, out);
  DSEEK_CUDA_CHECK_LAUNCH("sum_partials_kernel");
  dseek::cuda::free(blocks);
}

void scale_multi_tensor(const MultiTensorEntry* entries, int64_t count, int64_t chunks,
                        float scale) {
  if (count == 0 || chunks == 0) return;
  scale_kernel<<<blocks_for(chunks), kThreads, 0, stream()>>>(entries, count, chunks, scale);
  DSEEK_CUDA_CHECK_LAUNCH("scale_kernel");
}

}  // namespace dseek::ops::cuda
