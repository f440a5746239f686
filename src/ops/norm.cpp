#include "ops/norm.h"

#include <vector>

#include "core/error.h"
#include "ops/cpu/cpu_ops.h"

namespace dseek::ops {

Tensor rms_norm(const Tensor& x, const Tensor& weight, double eps) {
  DSEEK_CHECK(x.defined() && weight.defined(), "[rms_norm] undefined input or weight");
  DSEEK_CHECK(x.dtype() == DType::F32, "[rms_norm] input must be f32, got {}",
              dtype_name(x.dtype()));
  DSEEK_CHECK(x.dim() >= 1 && weight.dim() == 1 && weight.size(0) == x.size(-1),
              "[rms_norm] weight {} does not match input {}", shape_str(weight.shape()),
              shape_str(x.shape()));
  DSEEK_CHECK(eps >= 0, "[rms_norm] negative eps {}", eps);
  const Tensor xc = x.is_contiguous() ? x : x.contiguous();
  const std::vector<float> w = weight.to_vector();
  Tensor y = Tensor::empty(x.shape(), DType::F32);
  const int64_t D = x.size(-1);
  if (y.numel() == 0) return y;
  cpu::rms_norm(xc.data<float>(), w.data(), y.data<float>(), x.numel() / D, D, float(eps));
  return y;
}

}  // namespace dseek::ops
