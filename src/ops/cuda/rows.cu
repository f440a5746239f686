// Row scatter on the GPU (ops/rows.h): one block per source row copies its bytes in the widest
// unit the row's size and alignments allow (16, 8, 4, 2 or 1 bytes).
#include <cstdint>

#include "core/cuda.h"
#include "core/cuda/cuda_check.h"
#include "ops/cuda/cuda_ops.h"

namespace dseek::ops::cuda {

using dseek::cuda::stream;

namespace {

template <typename Unit>
__global__ void scatter_rows_kernel(char* dst, size_t dst_stride, const char* src,
                                    const int64_t* rows, size_t units) {
  const int64_t i = blockIdx.x;
  const Unit* from = reinterpret_cast<const Unit*>(src + size_t(i) * units * sizeof(Unit));
  Unit* to = reinterpret_cast<Unit*>(dst + size_t(rows[i]) * dst_stride);
  for (size_t u = threadIdx.x; u < units; u += blockDim.x) to[u] = from[u];
}

template <typename Unit>
void launch(void* dst, size_t dst_stride, const void* src, const int64_t* rows, int64_t N,
            size_t row_bytes) {
  const size_t units = row_bytes / sizeof(Unit);
  const unsigned threads = units >= 256 ? 256 : units >= 64 ? 64 : 32;
  // N is a batch's token count; the grid's x dimension allows 2^31 − 1 blocks.
  scatter_rows_kernel<Unit><<<unsigned(N), threads, 0, stream()>>>(
      static_cast<char*>(dst), dst_stride, static_cast<const char*>(src), rows, units);
  DSEEK_CUDA_CHECK_LAUNCH("scatter_rows_kernel");
}

}  // namespace

void scatter_rows(void* dst, size_t dst_stride_bytes, const void* src, const int64_t* rows,
                  int64_t N, size_t row_bytes) {
  if (N <= 0 || row_bytes == 0) return;
  // The widest unit that divides the row size, the destination stride and both base addresses.
  const uintptr_t align = uintptr_t(dst) | uintptr_t(src) | dst_stride_bytes | row_bytes;
  if (align % 16 == 0) return launch<uint4>(dst, dst_stride_bytes, src, rows, N, row_bytes);
  if (align % 8 == 0) return launch<uint2>(dst, dst_stride_bytes, src, rows, N, row_bytes);
  if (align % 4 == 0) return launch<uint32_t>(dst, dst_stride_bytes, src, rows, N, row_bytes);
  if (align % 2 == 0) return launch<uint16_t>(dst, dst_stride_bytes, src, rows, N, row_bytes);
  launch<uint8_t>(dst, dst_stride_bytes, src, rows, N, row_bytes);
}

}  // namespace dseek::ops::cuda
