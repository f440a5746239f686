// Linear, RMSNorm and the SwiGLU MLP for training (see layers.h).
#include "core/error.h"
#include "ops/activation.h"
#include "ops/fp8_train.h"
#include "ops/linear.h"
#include "ops/norm.h"
#include "train/layers.h"

namespace dseek::train {

Tensor linear_forward(ParamSet& params, const std::string& name, const Tensor& x) {
  const Param& p = params.at(name);
  if (p.fp8) return ops::linear_fp8_train_forward(x, p.value);  // FP8 from the f32 master
  return ops::linear(x, p.weight());
}

Tensor linear_backward(ParamSet& params, const std::string& name, const Tensor& x,
                       const Tensor& dy) {
  Param& p = params.at(name);
  Tensor dx = Tensor::empty(x.shape(), x.dtype(), x.device());
  if (p.fp8) {
    // x is cached in the activation dtype and quantised again here (the forward's codes).
    ops::linear_fp8_train_backward(ops::fp8_linear_cache(x), p.value, dy, &dx,
                                   p.grad.defined() ? &p.grad : nullptr, true);
    return dx;
  }
  // Two calls, one GEMM each: dx is written (no zero-fill), dW is added to the accumulated grad.
  const Tensor xc = x.contiguous(), dyc = dy.contiguous();
  ops::linear_backward_into(xc, p.weight(), dyc, &dx, nullptr, nullptr, false);
  ops::linear_backward_into(xc, p.weight(), dyc, nullptr, &p.grad, nullptr, true);
  return dx;
}

Tensor norm_forward(ParamSet& params, const std::string& name, const Tensor& x, double eps) {
  return ops::rms_norm(x, params.value(name), eps);
}

Tensor norm_backward(ParamSet& params, const std::string& name, const Tensor& x, double eps,
                     const Tensor& dy) {
  Param& p = params.at(name);
  Tensor dx = Tensor::empty(x.shape(), x.dtype(), x.device());
  ops::rms_norm_backward_into(x, p.value, eps, dy, dx, &p.grad, true);
  return dx;
}

Tensor mlp_forward(ParamSet& params, const std::string& prefix, const Tensor& x, MlpCache& c) {
  c.x = x.contiguous();
  c.gate = linear_forward(params, prefix + ".gate_proj.weight", c.x);
  c.up = linear_forward(params, prefix + ".up_proj.weight", c.x);
  c.inner = ops::silu_mul(c.gate, c.up);
  return linear_forward(params, prefix + ".down_proj.weight", c.inner);
}

Tensor mlp_backward(ParamSet& params, const std::string& prefix, const MlpCache& c,
                    const Tensor& dy) {
  const Tensor d_inner = linear_backward(params, prefix + ".down_proj.weight", c.inner, dy);
  const ops::SiluMulGrads g = ops::silu_mul_backward(c.gate, c.up, d_inner);
  Tensor dx = linear_backward(params, prefix + ".gate_proj.weight", c.x, g.dgate);
  ops::add_inplace(dx, linear_backward(params, prefix + ".up_proj.weight", c.x, g.dup));
  return dx;
}

}  // namespace dseek::train
