// Launchers of the bf16 tensor-core grouped expert GEMMs (kernels and design in
// grouped_gemm_tc_kernels.cuh). Checked without a GPU by bench/kernels/grouped_gemm_tc_emulate.cpp.
#include <climits>

#include "core/cuda.h"
#include "core/cuda/cuda_check.h"
#include "core/error.h"
#include "ops/cuda/grouped_gemm_tc.h"
#include "ops/cuda/grouped_gemm_tc_kernels.cuh"

namespace dseek::ops::cuda {

using dseek::cuda::ceil_div;
using dseek::cuda::stream;
using grouped_tc::bf16;

static_assert(kTcTileRows == grouped_tc::kBM && kTcTileCols == grouped_tc::kBN);

bool grouped_tc_takes(const void* a, const void* c, int64_t k, int64_t n, int64_t ldw) {
  const auto aligned = [](const void* p) { return reinterpret_cast<uintptr_t>(p) % 16 == 0; };
  return aligned(a) && aligned(c) && k % 8 == 0 && n % 8 == 0 && ldw % 8 == 0;
}

void grouped_tc_rows(bool dx, const void* A, const int64_t* offsets, const int64_t* tile_start,
                     int64_t E, int64_t tiles, const void* const* w, int64_t ldw, int64_t n_total,
                     int64_t k_total, void* C) {
  const int64_t cols = ceil_div<int64_t>(n_total, grouped_tc::kBN);
  DSEEK_CHECK(tiles <= INT_MAX / cols, "[grouped_linear] {} row tiles × {} columns exceed the grid",
              tiles, n_total);
  const dim3 grid{unsigned(tiles * cols)};
  const auto launch = [&](auto kernel, size_t smem, const char* name) {
    DSEEK_CUDA_CHECK(
        cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, int(smem)));
    kernel<<<grid, grouped_tc::kThreads, smem, stream()>>>(static_cast<const bf16*>(A), offsets,
                                                           tile_start, E, w, ldw, n_total, k_total,
                                                           static_cast<bf16*>(C));
    DSEEK_CUDA_CHECK_LAUNCH(name);
  };
  if (dx) {
    launch(grouped_tc::grouped_rows_tc_kernel<true>, grouped_tc::smem_bytes<false, true>(),
           "grouped_rows_tc_kernel<dx>");
  } else {
    launch(grouped_tc::grouped_rows_tc_kernel<false>, grouped_tc::smem_bytes<false, false>(),
           "grouped_rows_tc_kernel<forward>");
  }
}

void grouped_tc_dw(const void* x, const void* dy, const int64_t* offsets, int64_t E, int64_t out,
                   int64_t in, float* const* dw, float beta) {
  const int64_t cols = ceil_div<int64_t>(in, grouped_tc::kBN),
                rows = ceil_div<int64_t>(out, grouped_tc::kBM);
  DSEEK_CHECK(cols <= INT_MAX && rows <= 65535 && E <= 65535,
              "[grouped_linear] dW of {} experts × [{}, {}] exceeds the grid", E, out, in);
  const dim3 grid{unsigned(cols), unsigned(rows), unsigned(E)};
  constexpr size_t smem = grouped_tc::smem_bytes<true, true>();
  DSEEK_CUDA_CHECK(cudaFuncSetAttribute(grouped_tc::grouped_dw_tc_kernel,
                                        cudaFuncAttributeMaxDynamicSharedMemorySize, int(smem)));
  grouped_tc::grouped_dw_tc_kernel<<<grid, grouped_tc::kThreads, smem, stream()>>>(
      static_cast<const bf16*>(x), static_cast<const bf16*>(dy), offsets, out, in, dw, beta);
  DSEEK_CUDA_CHECK_LAUNCH("grouped_dw_tc_kernel");
}

}  // namespace dseek::ops::cuda
