// Launchers of the bf16 tensor-core grouped expert GEMMs: Hopper's wgmma kernels
// (grouped_gemm_wgmma_kernels.cuh) where the build has sm_90a code and the GPU is a Hopper, the
// mma.sync kernels (grouped_gemm_tc_kernels.cuh) elsewhere. Both are checked without a GPU by
// bench/kernels/grouped_gemm_tc_emulate.cpp and against the CPU by the backend tests.
#include <algorithm>
#include <atomic>
#include <climits>
#include <cstdlib>
#include <cstring>
#include <optional>
#include <vector>

#include "core/cuda.h"
#include "core/cuda/cuda_check.h"
#include "core/error.h"
#include "ops/cuda/cuda_ops.h"
#include "ops/cuda/grouped_gemm_tc.h"
#include "ops/cuda/grouped_gemm_tc_kernels.cuh"
#include "ops/cuda/grouped_gemm_tma_kernels.cuh"
#include "ops/cuda/grouped_gemm_wgmma_kernels.cuh"
#include "ops/cuda/tma_map.h"

namespace dseek::ops::cuda {

using dseek::cuda::ceil_div;
using dseek::cuda::stream;
using grouped_tc::bf16;

static_assert(kTcTileRows == grouped_tc::kBM && kTcTileCols == grouped_tc::kBN);

namespace {

// -1: not decided yet (the environment's DSEEK_GROUPED_GEMM, else the machine's best); 0 / 1.
std::atomic<int> g_use_wgmma{-1};

// Whether the wgmma kernels can run here: sm_90a machine code in this build (a kernel built
// only from the portable compute_80 PTX reports PTX version 80) on a compute capability 9.x GPU.
bool wgmma_runs_here() {
  int device = 0, major = 0;
  if (cudaGetDevice(&device) != cudaSuccess ||
      cudaDeviceGetAttribute(&major, cudaDevAttrComputeCapabilityMajor, device) != cudaSuccess ||
      major != 9)
    return false;
  cudaFuncAttributes attr{};
  if (cudaFuncGetAttributes(&attr, grouped_wgmma::grouped_rows_wgmma_kernel<false>) != cudaSuccess)
    return false;
  return attr.ptxVersion >= 90;
}

bool use_wgmma() {
  int use = g_use_wgmma.load();
  if (use >= 0) return use == 1;
  const char* env = std::getenv("DSEEK_GROUPED_GEMM");
  use = wgmma_runs_here() && !(env && std::strcmp(env, "mma") == 0) ? 1 : 0;
  g_use_wgmma.store(use);
  return use == 1;
}

// -1: not decided yet (DSEEK_LOADS read on first use), 0: cp.async, 1: TMA.
std::atomic<int> g_tma{-1};

using dseek::cuda::compute_sms;

}  // namespace

bool tma_loads() {
  int tma = g_tma.load();
  if (tma < 0) {
    // DSEEK_FP8_LOADS: the name of the switch when only the FP8 kernels had both forms.
    const char* env = std::getenv("DSEEK_LOADS");
    if (!env) env = std::getenv("DSEEK_FP8_LOADS");
    tma = env && std::strcmp(env, "cp_async") == 0 ? 0 : 1;
    g_tma.store(tma);
  }
  return tma == 1;
}

void set_tma_loads(bool tma) {
  g_tma.store(tma ? 1 : 0);
}

bool grouped_wgmma_available() {
  return wgmma_runs_here();
}

void set_grouped_gemm_wgmma(bool wgmma) {
  DSEEK_CHECK(!wgmma || wgmma_runs_here(),
              "[grouped_linear] the wgmma kernels need sm_90a code and a Hopper GPU");
  g_use_wgmma.store(wgmma ? 1 : 0);
}

bool grouped_gemm_wgmma() {
  return use_wgmma();
}

bool grouped_tc_takes(const void* a, const void* c, int64_t k, int64_t n, int64_t ldw) {
  const auto aligned = [](const void* p) { return reinterpret_cast<uintptr_t>(p) % 16 == 0; };
  return aligned(a) && aligned(c) && k % 8 == 0 && n % 8 == 0 && ldw % 8 == 0;
}

void grouped_tc_rows(bool dx, const void* A, int64_t M, const int64_t* offsets,
                     const int64_t* tile_start, int64_t E, int64_t tiles, const void* const* w,
                     int64_t ldw, int64_t n_total, int64_t k_total, void* C, const void* w_maps) {
  static_assert(grouped_tc::kBM == grouped_wgmma::kBM && grouped_tc::kBN == grouped_wgmma::kBN,
                "one tile schedule serves both kernel families");
  const int64_t cols = ceil_div<int64_t>(n_total, grouped_tc::kBN);
  DSEEK_CHECK(tiles <= INT_MAX / cols, "[grouped_linear] {} row tiles × {} columns exceed the grid",
              tiles, n_total);
  const bool wgmma = use_wgmma();
  if (wgmma && tma_loads() && w_maps && M > 0 && tma_bf16_map_takes(A, M, k_total, k_total)) {
    const CUtensorMap map_a = tma_bf16_map(A, M, k_total, k_total, grouped_tma::kStep,
                                           dx ? "grouped dx dy" : "grouped forward x");
    const auto kernel = dx ? grouped_tma::grouped_rows_tma_kernel<true>
                           : grouped_tma::grouped_rows_tma_kernel<false>;
    DSEEK_CUDA_CHECK(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize,
                                          int(grouped_tma::kSmemBytes)));
    const int64_t tma_cols = ceil_div<int64_t>(n_total, grouped_tma::kCols);
    const unsigned blocks = unsigned(std::min<int64_t>(tiles * tma_cols, compute_sms()));
    kernel<<<blocks, grouped_tma::kThreads, grouped_tma::kSmemBytes, stream()>>>(
        map_a, static_cast<const CUtensorMap*>(w_maps), offsets, tile_start, E, n_total, k_total,
        static_cast<bf16*>(C));
    DSEEK_CUDA_CHECK_LAUNCH("grouped_rows_tma_kernel");
    return;
  }
  const dim3 grid{unsigned(tiles * cols)};
  const auto kernel = wgmma ? (dx ? grouped_wgmma::grouped_rows_wgmma_kernel<true>
                                  : grouped_wgmma::grouped_rows_wgmma_kernel<false>)
                            : (dx ? grouped_tc::grouped_rows_tc_kernel<true>
                                  : grouped_tc::grouped_rows_tc_kernel<false>);
  const unsigned threads = wgmma ? grouped_wgmma::kThreads : grouped_tc::kThreads;
  const size_t smem =
      wgmma ? grouped_wgmma::kSmemBytes
            : (dx ? grouped_tc::smem_bytes<false, true>() : grouped_tc::smem_bytes<false, false>());
  DSEEK_CUDA_CHECK(
      cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, int(smem)));
  kernel<<<grid, threads, smem, stream()>>>(static_cast<const bf16*>(A), offsets, tile_start, E, w,
                                            ldw, n_total, k_total, static_cast<bf16*>(C));
  DSEEK_CUDA_CHECK_LAUNCH(wgmma ? "grouped_rows_wgmma_kernel" : "grouped_rows_tc_kernel");
}

bool expert_tma_maps(const void* const* matrices, int64_t E, int64_t rows, int64_t cols, int64_t ld,
                     void* out) {
  static_assert(sizeof(CUtensorMap) == kExpertMapBytes);
  if (!wgmma_runs_here() || reinterpret_cast<uintptr_t>(out) % 64 != 0) return false;
  std::vector<CUtensorMap> maps(static_cast<size_t>(E));
  for (int64_t e = 0; e < E; ++e) {
    if (!tma_bf16_map_takes(matrices[e], rows, cols, ld)) return false;
    maps[size_t(e)] =
        tma_bf16_map(matrices[e], rows, cols, ld, grouped_tma::kStep, "expert matrix");
  }
  dseek::cuda::copy_to_device(out, maps.data(), maps.size() * sizeof(CUtensorMap));
  return true;
}

namespace {

// The TMA wgrad kernel (grouped_dw_tma_kernel<BF16_DW>) where this GPU and the operands take it;
// false, launching nothing, elsewhere.
template <bool BF16_DW>
bool grouped_dw_tma(const void* x, const void* dy, const int64_t* offsets, int64_t E, int64_t N,
                    int64_t out, int64_t in, void* const* dw, float beta, double* squares) {
  if (!(use_wgmma() && tma_loads() && N > 0 && tma_bf16_map_takes(dy, N, out, out) &&
        tma_bf16_map_takes(x, N, in, in)))
    return false;
  const CUtensorMap map_dy = tma_bf16_map(dy, N, out, out, grouped_tma::kStep, "grouped dW dy");
  const CUtensorMap map_x = tma_bf16_map(x, N, in, in, grouped_tma::kStep, "grouped dW x");
  const auto kernel = grouped_tma::grouped_dw_tma_kernel<BF16_DW>;
  DSEEK_CUDA_CHECK(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize,
                                        int(grouped_tma::kSmemBytes)));
  const int64_t tiles =
      E * ceil_div<int64_t>(out, 128) * ceil_div<int64_t>(in, grouped_tma::kCols);  // 128-row tiles
  const unsigned blocks = unsigned(std::min<int64_t>(tiles, compute_sms()));
  std::optional<SquarePartials> partial;
  if (squares) partial.emplace(int64_t(blocks) * grouped_tma::kMultiplierWarps);
  kernel<<<blocks, grouped_tma::kThreads, grouped_tma::kSmemBytes, stream()>>>(
      map_dy, map_x, offsets, E, out, in, dw, beta, partial ? partial->data() : nullptr);
  DSEEK_CUDA_CHECK_LAUNCH("grouped_dw_tma_kernel");
  if (partial) partial->finish(squares);
  return true;
}

}  // namespace

bool grouped_tc_dw_bf16(const void* x, const void* dy, const int64_t* offsets, int64_t E, int64_t N,
                        int64_t out, int64_t in, void* const* dw, float beta, double* squares) {
  if (out == 0 || in == 0 || !grouped_tc_takes(x, dy, in, out, 8)) return false;
  return grouped_dw_tma<true>(x, dy, offsets, E, N, out, in, dw, beta, squares);
}

void grouped_tc_dw(const void* x, const void* dy, const int64_t* offsets, int64_t E, int64_t N,
                   int64_t out, int64_t in, float* const* dw, float beta, double* squares) {
  const int64_t cols = ceil_div<int64_t>(in, grouped_tc::kBN),
                rows = ceil_div<int64_t>(out, grouped_tc::kBM);
  DSEEK_CHECK(cols <= INT_MAX && rows <= 65535 && E <= 65535,
              "[grouped_linear] dW of {} experts × [{}, {}] exceeds the grid", E, out, in);
  if (grouped_dw_tma<false>(x, dy, offsets, E, N, out, in, reinterpret_cast<void* const*>(dw), beta,
                            squares))
    return;
  const bool wgmma = use_wgmma();
  const dim3 grid{unsigned(cols), unsigned(rows), unsigned(E)};
  if (wgmma) {
    const auto kernel = grouped_wgmma::grouped_dw_wgmma_kernel;
    DSEEK_CUDA_CHECK(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize,
                                          int(grouped_wgmma::kSmemBytes)));
    std::optional<SquarePartials> partial;
    if (squares) partial.emplace(int64_t(grid.x) * grid.y * grid.z);
    kernel<<<grid, grouped_wgmma::kThreads, grouped_wgmma::kSmemBytes, stream()>>>(
        static_cast<const bf16*>(x), static_cast<const bf16*>(dy), offsets, out, in, dw, beta,
        partial ? partial->data() : nullptr);
    DSEEK_CUDA_CHECK_LAUNCH("grouped_dw_wgmma_kernel");
    if (partial) partial->finish(squares);
    return;
  }
  const auto kernel = grouped_tc::grouped_dw_tc_kernel;
  const size_t smem = grouped_tc::smem_bytes<true, true>();
  DSEEK_CUDA_CHECK(
      cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, int(smem)));
  kernel<<<grid, grouped_tc::kThreads, smem, stream()>>>(
      static_cast<const bf16*>(x), static_cast<const bf16*>(dy), offsets, out, in, dw, beta);
  DSEEK_CUDA_CHECK_LAUNCH("grouped_dw_tc_kernel");
  if (squares) matrices_sum_of_squares(dw, E, out, in, squares);
}

}  // namespace dseek::ops::cuda
