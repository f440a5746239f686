#include "ops/softmax.h"

#include "core/error.h"
#include "ops/cpu/cpu_ops.h"

namespace dseek::ops {

Tensor softmax(const Tensor& x) {
  DSEEK_CHECK(x.defined() && x.dtype() == DType::F32 && x.dim() >= 1,
              "[softmax] input must be an f32 tensor with at least one dimension");
  Tensor y = x.contiguous();
  const int64_t n = x.size(-1);
  if (y.numel() == 0) return y;
  cpu::softmax_rows(y.data<float>(), y.numel() / n, n, n);
  return y;
}

}  // namespace dseek::ops
