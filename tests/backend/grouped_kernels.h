// The kernel families the grouped expert GEMMs can run on here, so that one backend test checks
// each of them on the same inputs: the portable kernels everywhere, and Hopper's wgmma where this
// build and GPU have it (ops/cuda/grouped_gemm_tc.h: the bf16 grouped GEMMs' mma.sync vs wgmma
// kernels, and the FP8 training GEMMs' CUDA-core vs wgmma kernels, switch together).
#pragma once

#include <string>
#include <vector>

#include "backend/backend_harness.h"
#ifdef DSEEK_HAS_CUDA
#include "ops/cuda/fp8_train_kernels.h"
#include "ops/cuda/grouped_gemm_tc.h"
#endif

namespace dseek::backend_test {

// The label goes into the op names of the table. tma: the FP8 row GEMMs' wgmma kernel loads
// through the tensor memory accelerator (fp8_tma_kernels.cuh) rather than cp.async (the bf16
// kernels are the same either way).
struct GroupedKernel {
  bool wgmma;
  const char* label;
  bool tma = true;
};
inline std::vector<GroupedKernel> grouped_kernels() {
  std::vector<GroupedKernel> kernels{{false, "mma.sync"}};
#ifdef DSEEK_HAS_CUDA
  if (ops::cuda::grouped_wgmma_available()) {
    kernels.push_back({true, "wgmma (cp.async)", false});
    kernels.push_back({true, "wgmma (TMA)", true});
  }
#endif
  return kernels;
}

// Runs the grouped GEMMs on one kernel family while alive, the default again after.
class UseGroupedKernel {
 public:
  explicit UseGroupedKernel([[maybe_unused]] const GroupedKernel& kernel) {
#ifdef DSEEK_HAS_CUDA
    before_ = ops::cuda::grouped_gemm_wgmma();
    before_tma_ = ops::cuda::tma_loads();
    ops::cuda::set_grouped_gemm_wgmma(kernel.wgmma);
    ops::cuda::set_tma_loads(kernel.tma);
#endif
  }
  ~UseGroupedKernel() {
#ifdef DSEEK_HAS_CUDA
    ops::cuda::set_grouped_gemm_wgmma(before_);
    ops::cuda::set_tma_loads(before_tma_);
#endif
  }
  UseGroupedKernel(const UseGroupedKernel&) = delete;
  UseGroupedKernel& operator=(const UseGroupedKernel&) = delete;

 private:
  [[maybe_unused]] bool before_ = false, before_tma_ = true;
};

inline std::string labelled(const char* op, const GroupedKernel& k) {
  return std::string(op) + " [" + k.label + "]";
}

}  // namespace dseek::backend_test
