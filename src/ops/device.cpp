#include "ops/device.h"

#include "core/error.h"

namespace dseek::ops {

Device op_device(std::string_view op, std::initializer_list<const Tensor*> tensors) {
  bool found = false;
  Device device = Device::CPU;
  for (const Tensor* t : tensors) {
    if (!t || !t->defined()) continue;
    if (!found) {
      device = t->device();
      found = true;
    } else if (t->device() != device) {
      fail("[{}] tensors on different devices ({} and {}): move them with Tensor::to(Device)", op,
           device_name(device), device_name(t->device()));
    }
  }
  return device;
}

DType activation_dtype(std::string_view op, const Tensor& x) {
  const DType t = x.dtype();
  if (t == DType::F32) return t;
  DSEEK_CHECK(x.is_cuda() && t == DType::BF16,
              "[{}] activations must be f32{}, got {}", op, x.is_cuda() ? " or bf16" : "",
              dtype_name(t));
  return t;
}

void cuda_not_built(std::string_view op) {
  fail("[{}] a CUDA tensor, but dseek was built without CUDA (cmake -DDSEEK_CUDA=ON)", op);
}

}  // namespace dseek::ops
