#include "ops/softmax.h"

#include "core/error.h"
#include "ops/cpu/cpu_ops.h"
#include "ops/cuda/cuda_ops.h"
#include "ops/device.h"

namespace dseek::ops {

Tensor softmax(const Tensor& x) {
  DSEEK_CHECK(x.defined() && x.dim() >= 1,
              "[softmax] input must be a tensor with at least one dimension");
  [[maybe_unused]] const DType act = activation_dtype("softmax", x);
  Tensor y = x.clone();  // a copy: contiguous() would alias a contiguous x, and x must survive
  const int64_t n = x.size(-1);
  if (y.numel() == 0) return y;
  if (y.is_cuda()) {
#ifdef DSEEK_HAS_CUDA
    cuda::softmax_rows(y.raw(), y.numel() / n, n, n, act);
    return y;
#else
    cuda_not_built("softmax");
#endif
  }
  cpu::softmax_rows(y.data<float>(), y.numel() / n, n, n);
  return y;
}

Tensor softmax_backward(const Tensor& y, const Tensor& dy) {
  DSEEK_CHECK(y.defined() && dy.defined() && y.dim() >= 1,
              "[softmax] y and dy must be tensors with at least one dimension");
  const Device device = op_device("softmax", {&y, &dy});
  const DType act = activation_dtype("softmax", y);
  DSEEK_CHECK(dy.dtype() == act, "[softmax] y is {}, dy {}", dtype_name(act),
              dtype_name(dy.dtype()));
  DSEEK_CHECK(y.shape() == dy.shape(), "[softmax] y {} and dy {} differ in shape",
              shape_str(y.shape()), shape_str(dy.shape()));
  Tensor dx = Tensor::empty(y.shape(), act, device);
  const int64_t n = y.size(-1);
  if (dx.numel() == 0) return dx;
  const Tensor yc = y.is_contiguous() ? y : y.contiguous();
  const Tensor dyc = dy.is_contiguous() ? dy : dy.contiguous();
  if (device == Device::CUDA) {
#ifdef DSEEK_HAS_CUDA
    cuda::softmax_backward_rows(yc.raw(), dyc.raw(), dx.raw(), y.numel() / n, n, act);
    return dx;
#else
    cuda_not_built("softmax");
#endif
  }
  cpu::softmax_backward_rows(yc.data<float>(), dyc.data<float>(), dx.data<float>(), y.numel() / n,
                             n);
  return dx;
}

}  // namespace dseek::ops
