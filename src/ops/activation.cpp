#include "ops/activation.h"

#include "core/error.h"
#include "ops/cpu/cpu_ops.h"

namespace dseek::ops {

Tensor silu_mul(const Tensor& gate, const Tensor& up) {
  DSEEK_CHECK(gate.defined() && up.defined(), "[silu_mul] undefined input");
  DSEEK_CHECK(gate.dtype() == DType::F32 && up.dtype() == DType::F32,
              "[silu_mul] inputs must be f32, got {} and {}", dtype_name(gate.dtype()),
              dtype_name(up.dtype()));
  DSEEK_CHECK(gate.shape() == up.shape(), "[silu_mul] gate {} and up {} differ in shape",
              shape_str(gate.shape()), shape_str(up.shape()));
  const Tensor g = gate.is_contiguous() ? gate : gate.contiguous();
  const Tensor u = up.is_contiguous() ? up : up.contiguous();
  Tensor out = Tensor::empty(gate.shape(), DType::F32);
  cpu::silu_mul(g.data<float>(), u.data<float>(), out.data<float>(), out.numel());
  return out;
}

SiluMulGrads silu_mul_backward(const Tensor& gate, const Tensor& up, const Tensor& dout) {
  DSEEK_CHECK(gate.defined() && up.defined() && dout.defined(), "[silu_mul] undefined input");
  DSEEK_CHECK(gate.dtype() == DType::F32 && up.dtype() == DType::F32 && dout.dtype() == DType::F32,
              "[silu_mul] gate, up and dout must be f32");
  DSEEK_CHECK(gate.shape() == up.shape() && gate.shape() == dout.shape(),
              "[silu_mul] gate {}, up {} and dout {} differ in shape", shape_str(gate.shape()),
              shape_str(up.shape()), shape_str(dout.shape()));
  const Tensor g = gate.is_contiguous() ? gate : gate.contiguous();
  const Tensor u = up.is_contiguous() ? up : up.contiguous();
  const Tensor d = dout.is_contiguous() ? dout : dout.contiguous();
  SiluMulGrads r{Tensor::empty(gate.shape(), DType::F32), Tensor::empty(gate.shape(), DType::F32)};
  cpu::silu_mul_backward(g.data<float>(), u.data<float>(), d.data<float>(), r.dgate.data<float>(),
                         r.dup.data<float>(), g.numel());
  return r;
}

}  // namespace dseek::ops
