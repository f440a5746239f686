#include "ops/cuda/cublaslt_util.h"

#include "core/cuda.h"
#include "core/error.h"

namespace dseek::ops::cuda {

const LtContext& lt_context() {
  static const LtContext* instance = [] {
    auto* c = new LtContext;
    const cublasStatus_t status = cublasLtCreate(&c->handle);
    if (status != CUBLAS_STATUS_SUCCESS)
      fail("[cublasLt] cublasLtCreate: {} ({})", cublasLtGetStatusName(status),
           cublasLtGetStatusString(status));
    c->workspace = dseek::cuda::alloc(kLtWorkspaceBytes);
    return c;
  }();
  return *instance;
}

}  // namespace dseek::ops::cuda
