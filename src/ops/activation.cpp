#include "ops/activation.h"

#include "core/error.h"
#include "ops/cpu/cpu_ops.h"
#include "ops/cuda/cuda_ops.h"
#include "ops/device.h"

namespace dseek::ops {

Tensor silu_mul(const Tensor& gate, const Tensor& up) {
  DSEEK_CHECK(gate.defined() && up.defined(), "[silu_mul] undefined input");
  const Device device = op_device("silu_mul", {&gate, &up});
  const DType act = activation_dtype("silu_mul", gate);
  DSEEK_CHECK(up.dtype() == act, "[silu_mul] gate is {}, up {}", dtype_name(act),
              dtype_name(up.dtype()));
  DSEEK_CHECK(gate.shape() == up.shape(), "[silu_mul] gate {} and up {} differ in shape",
              shape_str(gate.shape()), shape_str(up.shape()));
  Tensor out = Tensor::empty(gate.shape(), act, device);
  if (device == Device::CUDA) {
#ifdef DSEEK_HAS_CUDA
    // Two halves of one [T, 2I] product (the fused gate_up projection, model/mlp.h) are read in
    // place: rows of contiguous values at a common row stride.
    if (gate.dim() == 2 && gate.strides()[1] == 1 && up.strides()[1] == 1 &&
        gate.strides()[0] == up.strides()[0]) {
      cuda::silu_mul_rows(gate.raw(), up.raw(), gate.strides()[0], out.raw(), gate.size(0),
                          gate.size(1), act);
      return out;
    }
    const Tensor g = gate.is_contiguous() ? gate : gate.contiguous();
    const Tensor u = up.is_contiguous() ? up : up.contiguous();
    cuda::silu_mul(g.raw(), u.raw(), out.raw(), out.numel(), act);
    return out;
#else
    cuda_not_built("silu_mul");
#endif
  }
  const Tensor g = gate.is_contiguous() ? gate : gate.contiguous();
  const Tensor u = up.is_contiguous() ? up : up.contiguous();
  cpu::silu_mul(g.data<float>(), u.data<float>(), out.data<float>(), out.numel());
  return out;
}

SiluMulGrads silu_mul_backward(const Tensor& gate, const Tensor& up, const Tensor& dout) {
  DSEEK_CHECK(gate.defined() && up.defined() && dout.defined(), "[silu_mul] undefined input");
  const Device device = op_device("silu_mul", {&gate, &up, &dout});
  const DType act = activation_dtype("silu_mul", gate);
  DSEEK_CHECK(up.dtype() == act && dout.dtype() == act, "[silu_mul] gate, up and dout must be {}",
              dtype_name(act));
  DSEEK_CHECK(gate.shape() == up.shape() && gate.shape() == dout.shape(),
              "[silu_mul] gate {}, up {} and dout {} differ in shape", shape_str(gate.shape()),
              shape_str(up.shape()), shape_str(dout.shape()));
  const Tensor g = gate.is_contiguous() ? gate : gate.contiguous();
  const Tensor u = up.is_contiguous() ? up : up.contiguous();
  const Tensor d = dout.is_contiguous() ? dout : dout.contiguous();
  SiluMulGrads r{Tensor::empty(gate.shape(), act, device),
                 Tensor::empty(gate.shape(), act, device)};
  if (device == Device::CUDA) {
#ifdef DSEEK_HAS_CUDA
    cuda::silu_mul_backward(g.raw(), u.raw(), d.raw(), r.dgate.raw(), r.dup.raw(), g.numel(), act);
    return r;
#else
    cuda_not_built("silu_mul");
#endif
  }
  cpu::silu_mul_backward(g.data<float>(), u.data<float>(), d.data<float>(), r.dgate.data<float>(),
                         r.dup.data<float>(), g.numel());
  return r;
}

void add_inplace(Tensor& y, const Tensor& x) {
  DSEEK_CHECK(y.defined() && x.defined(), "[add_inplace] undefined input");
  const Device device = op_device("add_inplace", {&y, &x});
  const DType act = activation_dtype("add_inplace", y);
  DSEEK_CHECK(x.dtype() == act, "[add_inplace] y is {}, x {}", dtype_name(act),
              dtype_name(x.dtype()));
  DSEEK_CHECK(y.shape() == x.shape(), "[add_inplace] y {} and x {} differ in shape",
              shape_str(y.shape()), shape_str(x.shape()));
  DSEEK_CHECK(y.is_contiguous(), "[add_inplace] y {} must be contiguous", shape_str(y.shape()));
  const Tensor xc = x.is_contiguous() ? x : x.contiguous();
  const int64_t n = y.numel();
  if (device == Device::CUDA) {
#ifdef DSEEK_HAS_CUDA
    cuda::add_inplace(y.raw(), xc.raw(), n, act);
    return;
#else
    cuda_not_built("add_inplace");
#endif
  }
  float* yp = y.data<float>();
  const float* xp = xc.data<float>();
  for (int64_t i = 0; i < n; ++i) yp[i] += xp[i];
}

}  // namespace dseek::ops
