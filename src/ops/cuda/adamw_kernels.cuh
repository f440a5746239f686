// The AdamW step's kernels over a multi-tensor table (adamw.cu launches them; ops/adamw.h has the
// maths): the whole table, the table but the rows a flag array skips, and a list of rows. All
// three step each element through adamw_range, so a tensor updated in parts by rows gets the
// bits the whole table's launch gives it. In a header of their own so that the kernel emulator
// (bench/kernels/adamw_rows_emulate.cpp) runs this source on host threads.
#pragma once

#include <cstdint>

#include "ops/cuda/adamw_element.cuh"
#include "ops/cuda/cuda_ops.h"
#include "ops/split_bits.h"

namespace dseek::ops::cuda {

// The step is memory-bound (16 bytes read and 12–14 written per element with f32 moments, 12 and
// 10 with bf16 ones), so where a tensor's arrays are aligned its elements move four at a time
// (16-byte loads and stores of the f32 arrays; chunks start at multiples of 4); the arithmetic
// per element is the same.
//
// The step of elements [begin, end) of entry e by the block's threads: the body of every AdamW
// launch below, so that a part of a tensor updated by one launch gets the bits the whole
// tensor's launch gives it. begin a multiple of 4 (quads where the arrays are aligned).
// ROWS: some entry of the launch has gradient row flags (MultiTensorEntry::row_flags); without
// them the kernel is the plain one (the flags' loads and divisions cost the update 11% when every
// launch had them: 22.1 against 19.9 ms a step in run Z's profile).
template <bool BF16_MOMENTS, bool ROWS>
__device__ __forceinline__ void adamw_range(const MultiTensorEntry& e, int64_t begin, int64_t end,
                                            const AdamWScalars& s) {
  const float decay = e.decay ? s.decay_factor : 1.0f;
  const MomentArray<BF16_MOMENTS> m_of{e.exp_avg}, v_of{e.exp_avg_sq};
  const GradRows<ROWS> grad{e.grad, e.row_flags, e.row_len, e.grad_bf16 != 0};
  const uintptr_t moment_addresses =
      reinterpret_cast<uintptr_t>(e.exp_avg) | reinterpret_cast<uintptr_t>(e.exp_avg_sq);
  if (e.low) {  // a split master: its halves are the compute copy and e.low
    const bool vec =
        grad_quads(e) && (moment_addresses & (BF16_MOMENTS ? 7 : 15)) == 0 &&
        ((reinterpret_cast<uintptr_t>(e.compute) | reinterpret_cast<uintptr_t>(e.low)) & 7) == 0;
    int64_t tail = begin;
    if (vec) {
      const int64_t quads = (end - begin) / 4;
      for (int64_t q = threadIdx.x; q < quads; q += blockDim.x)
        adamw_split_quad(e.compute, e.low, grad, m_of, v_of, begin + 4 * q, s, decay);
      tail = begin + 4 * quads;
    }
    for (int64_t k = tail + threadIdx.x; k < end; k += blockDim.x) {
      float p = __uint_as_float(join_bits(e.compute[k], e.low[k])), m = m_of.load(k),
            v = v_of.load(k);
      adamw_element(p, m, v, grad.load(k), s, decay);
      m_of.store(k, m);
      v_of.store(k, v);
      e.compute[k] = split_high(__float_as_uint(p));
      e.low[k] = split_low(__float_as_uint(p));
    }
    return;
  }
  const bool vec = (reinterpret_cast<uintptr_t>(e.value) & 15) == 0 && grad_quads(e) &&
                   (moment_addresses & (BF16_MOMENTS ? 7 : 15)) == 0 &&
                   (reinterpret_cast<uintptr_t>(e.compute) & 7) == 0;
  int64_t tail = begin;
  if (vec) {
    const auto store_compute = [&e](int64_t k, float4 p) {
      if (!e.compute) return;
      const uint2 bits{uint32_t(bf16_bits(p.x)) | uint32_t(bf16_bits(p.y)) << 16,
                       uint32_t(bf16_bits(p.z)) | uint32_t(bf16_bits(p.w)) << 16};
      *reinterpret_cast<uint2*>(e.compute + k) = bits;
    };
    const int64_t quads = (end - begin) / 4;
    for (int64_t q = threadIdx.x; q < quads; q += blockDim.x) {
      const int64_t k = begin + 4 * q;
      store_compute(k, adamw_quad(e.value, grad, m_of, v_of, k, s, decay));
    }
    tail = begin + 4 * quads;
  }
  for (int64_t k = tail + threadIdx.x; k < end; k += blockDim.x) {
    float p = e.value[k], m = m_of.load(k), v = v_of.load(k);
    adamw_element(p, m, v, grad.load(k), s, decay);
    m_of.store(k, m);
    v_of.store(k, v);
    e.value[k] = p;
    if (e.compute) e.compute[k] = bf16_bits(p);
  }
}

// A unit is 1/parts of a chunk (parts divides kMultiTensorChunk / 4: pieces of whole quads).
// skip (a one-entry launch, or null): flags of the tensor's rows of skip_len elements (a multiple
// of 4); the rows flagged 1 are left as they are (adamw_rows_kernel updates them).
template <bool BF16_MOMENTS, bool ROWS>
__global__ void adamw_kernel(const MultiTensorEntry* entries, int64_t count, int64_t chunks,
                             int parts, AdamWScalars s, const uint8_t* skip, int64_t skip_len) {
  resolve_grad_scale(s);
  const int64_t piece = kMultiTensorChunk / parts;
  for (int64_t u = blockIdx.x; u < chunks * parts; u += gridDim.x) {
    const int64_t c = u / parts;
    const MultiTensorEntry e = entry_at(entries, count, c, &MultiTensorEntry::chunk_begin);
    const int64_t begin = min(e.n, (c - e.chunk_begin) * kMultiTensorChunk + (u % parts) * piece);
    const int64_t end = min(e.n, begin + piece);
    if (!skip) {
      adamw_range<BF16_MOMENTS, ROWS>(e, begin, end, s);
      continue;
    }
    for (int64_t r = begin / skip_len; r * skip_len < end; ++r)  // (the same rows for the block)
      if (!skip[r])
        adamw_range<BF16_MOMENTS, ROWS>(e, max(begin, r * skip_len), min(end, (r + 1) * skip_len),
                                        s);
  }
}

// The step of rows rows[0..count) (of row_len elements, a multiple of 4) of one entry: a block a
// row, each row's elements as adamw_kernel steps them.
template <bool BF16_MOMENTS, bool ROWS>
__global__ void adamw_rows_kernel(const MultiTensorEntry* entry, const int32_t* rows, int64_t count,
                                  int64_t row_len, AdamWScalars s) {
  resolve_grad_scale(s);
  const MultiTensorEntry e = *entry;
  for (int64_t i = blockIdx.x; i < count; i += gridDim.x) {
    const int64_t begin = int64_t(rows[i]) * row_len;
    adamw_range<BF16_MOMENTS, ROWS>(e, begin, min(e.n, begin + row_len), s);
  }
}

}  // namespace dseek::ops::cuda
