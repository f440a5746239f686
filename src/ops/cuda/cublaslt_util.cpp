#include "ops/cuda/cublaslt_util.h"

#include "core/cuda.h"
#include "core/cuda/cuda_check.h"
#include "core/error.h"

namespace dseek::ops::cuda {

int lt_sm_target() {
  const int sms = dseek::cuda::compute_sms();
  return sms < dseek::cuda::multiprocessors() ? sms : 0;
}

const LtContext& lt_context() {
  static const LtContext* instance = [] {
    auto* c = new LtContext;
    const cublasStatus_t status = cublasLtCreate(&c->handle);
    if (status != CUBLAS_STATUS_SUCCESS)
      fail("[cublasLt] cublasLtCreate: {} ({})", cublasLtGetStatusName(status),
           cublasLtGetStatusString(status));
    c->workspace = dseek::cuda::alloc(kLtWorkspaceBytes);
    // Allocated on the current stream, which may be a fork's side stream: ready before any
    // stream uses it.
    dseek::cuda::synchronize();
    return c;
  }();
  if (!dseek::cuda::on_side_stream()) return *instance;
  // A GEMM on the side stream (core/cuda.h Fork) may run while one on the main stream does: it gets
  // a workspace of its own (the handle is not tied to a stream). Made at its first use, which is a
  // graph's eager warm-up step rather than the capture.
  static const LtContext* side =
      new LtContext{instance->handle, dseek::cuda::alloc(kLtWorkspaceBytes)};
  return *side;
}

}  // namespace dseek::ops::cuda
