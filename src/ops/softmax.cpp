#include "ops/softmax.h"

#include "core/error.h"
#include "ops/cpu/cpu_ops.h"

namespace dseek::ops {

Tensor softmax(const Tensor& x) {
  DSEEK_CHECK(x.defined() && x.dtype() == DType::F32 && x.dim() >= 1,
              "[softmax] input must be an f32 tensor with at least one dimension");
  Tensor y = x.clone();  // a copy: contiguous() would alias a contiguous x, and x must survive
  const int64_t n = x.size(-1);
  if (y.numel() == 0) return y;
  cpu::softmax_rows(y.data<float>(), y.numel() / n, n, n);
  return y;
}

Tensor softmax_backward(const Tensor& y, const Tensor& dy) {
  DSEEK_CHECK(y.defined() && dy.defined() && y.dtype() == DType::F32 && dy.dtype() == DType::F32 &&
                  y.dim() >= 1,
              "[softmax] y and dy must be f32 tensors with at least one dimension");
  DSEEK_CHECK(y.shape() == dy.shape(), "[softmax] y {} and dy {} differ in shape",
              shape_str(y.shape()), shape_str(dy.shape()));
  Tensor dx = Tensor::empty(y.shape(), DType::F32);
  const int64_t n = y.size(-1);
  if (dx.numel() == 0) return dx;
  const Tensor yc = y.is_contiguous() ? y : y.contiguous();
  const Tensor dyc = dy.is_contiguous() ? dy : dy.contiguous();
  cpu::softmax_backward_rows(yc.data<float>(), dyc.data<float>(), dx.data<float>(), y.numel() / n,
                             n);
  return dx;
}

}  // namespace dseek::ops
