#include "ops/linear.h"

#include <vector>

#include "core/error.h"
#include "ops/cpu/cpu_ops.h"

namespace dseek::ops {

Tensor linear(const Tensor& x, const Tensor& weight, const Tensor* bias) {
  DSEEK_CHECK(x.defined() && weight.defined(), "[linear] undefined input or weight");
  DSEEK_CHECK(x.dtype() == DType::F32, "[linear] input must be f32, got {}", dtype_name(x.dtype()));
  DSEEK_CHECK(x.dim() >= 1, "[linear] input must have at least one dimension");
  DSEEK_CHECK(weight.dim() == 2, "[linear] weight must be [out, in], got {}",
              shape_str(weight.shape()));
  DType wt = weight.dtype();
  DSEEK_CHECK(wt == DType::F32 || wt == DType::BF16 || wt == DType::F16,
              "[linear] weight dtype {} not supported (f32, bf16, f16)", dtype_name(wt));
  const int64_t in = weight.size(1), out = weight.size(0);
  DSEEK_CHECK(x.size(-1) == in, "[linear] input {} does not match weight {}", shape_str(x.shape()),
              shape_str(weight.shape()));
  DSEEK_CHECK(weight.strides()[1] == 1 || in <= 1, "[linear] weight columns must be contiguous");
  const int64_t ldw = out > 1 ? weight.strides()[0] : in;
  DSEEK_CHECK(ldw >= in, "[linear] weight rows overlap (stride {} < {})", ldw, in);
  if (bias) {
    DSEEK_CHECK(bias->defined() && bias->dim() == 1 && bias->size(0) == out,
                "[linear] bias must be [{}], got {}", out,
                bias->defined() ? shape_str(bias->shape()) : std::string("undefined"));
  }

  const Tensor xc = x.is_contiguous() ? x : x.contiguous();
  int64_t T = 1;
  for (int d = 0; d + 1 < x.dim(); ++d) T *= x.size(d);
  Shape out_shape = x.shape();
  out_shape.back() = out;
  Tensor y = Tensor::empty(out_shape, DType::F32);
  if (y.numel() == 0) return y;
  float* yp = y.data<float>();
  if (T <= kLinearGemvMaxTokens) {
    cpu::linear_gemv(xc.data<float>(), T, in, weight.raw(), wt, ldw, out, yp);
  } else {
    cpu::linear_gemm(xc.data<float>(), T, in, weight.raw(), wt, ldw, out, yp);
  }
  if (bias) {
    const std::vector<float> b = bias->to_vector();
    for (int64_t t = 0; t < T; ++t)
      for (int64_t o = 0; o < out; ++o) yp[t * out + o] += b[size_t(o)];
  }
  return y;
}

}  // namespace dseek::ops
