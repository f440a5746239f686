// The kernel families the grouped expert GEMMs can run on here, so that one backend test checks
// each of them on the same inputs: the portable kernels everywhere, and Hopper's wgmma where this
// build and GPU have it (ops/cuda/grouped_gemm_tc.h: the bf16 grouped GEMMs' mma.sync vs wgmma
// kernels, and the FP8 training GEMMs' CUDA-core vs wgmma kernels, switch together).
#pragma once

#include <string>
#include <vector>

#include "backend/backend_harness.h"
#ifdef DSEEK_HAS_CUDA
#include "ops/cuda/grouped_gemm_tc.h"
#endif

namespace dseek::backend_test {

// The label goes into the op names of the table.
struct GroupedKernel {
  bool wgmma;
  const char* label;
};
inline std::vector<GroupedKernel> grouped_kernels() {
  std::vector<GroupedKernel> kernels{{false, "mma.sync"}};
#ifdef DSEEK_HAS_CUDA
  if (ops::cuda::grouped_wgmma_available()) kernels.push_back({true, "wgmma"});
#endif
  return kernels;
}

// Runs the grouped GEMMs on one kernel family while alive, the default again after.
class UseGroupedKernel {
 public:
  explicit UseGroupedKernel([[maybe_unused]] bool wgmma) {
#ifdef DSEEK_HAS_CUDA
    before_ = ops::cuda::grouped_gemm_wgmma();
    ops::cuda::set_grouped_gemm_wgmma(wgmma);
#endif
  }
  ~UseGroupedKernel() {
#ifdef DSEEK_HAS_CUDA
    ops::cuda::set_grouped_gemm_wgmma(before_);
#endif
  }
  UseGroupedKernel(const UseGroupedKernel&) = delete;
  UseGroupedKernel& operator=(const UseGroupedKernel&) = delete;

 private:
  [[maybe_unused]] bool before_ = false;
};

inline std::string labelled(const char* op, const GroupedKernel& k) {
  return std::string(op) + " [" + k.label + "]";
}

}  // namespace dseek::backend_test
