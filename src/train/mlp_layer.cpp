// Linear, RMSNorm and the SwiGLU MLP for training (see layers.h).
#include "core/error.h"
#include "ops/activation.h"
#include "ops/fp8_train.h"
#include "ops/linear.h"
#include "ops/norm.h"
#include "train/layers.h"
#include "train/synth_override.h"

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

namespace {

// One projection of the MLP: the linear, or the synthesised operator that replaces it.
Tensor project(ParamSet& params, SynthOverride* synth, const std::string& name, const Tensor& x,
               synth::SynthLayerCache& cache) {
  if (synth && synth->replaces(name)) return synth->forward(params, name, x, cache);
  return linear_forward(params, name, x);
}

Tensor project_backward(ParamSet& params, SynthOverride* synth, const std::string& name,
                        const Tensor& x, const synth::SynthLayerCache& cache, const Tensor& dy) {
  if (synth && synth->replaces(name)) return synth->backward(params, name, cache, dy);
  return linear_backward(params, name, x, dy);
}

}  // namespace

Tensor mlp_forward(ParamSet& params, const std::string& prefix, const Tensor& x, MlpCache& c,
                   SynthOverride* synth) {
  c.x = x.contiguous();
  c.gate = project(params, synth, prefix + ".gate_proj.weight", c.x, c.synth_gate);
  c.up = project(params, synth, prefix + ".up_proj.weight", c.x, c.synth_up);
  c.inner = ops::silu_mul(c.gate, c.up);
  return project(params, synth, prefix + ".down_proj.weight", c.inner, c.synth_down);
}

Tensor mlp_backward(ParamSet& params, const std::string& prefix, const MlpCache& c,
                    const Tensor& dy, SynthOverride* synth) {
  const Tensor d_inner =
      project_backward(params, synth, prefix + ".down_proj.weight", c.inner, c.synth_down, dy);
  const ops::SiluMulGrads g = ops::silu_mul_backward(c.gate, c.up, d_inner);
  Tensor dx = project_backward(params, synth, prefix + ".gate_proj.weight", c.x, c.synth_gate,
                               g.dgate);
  ops::add_inplace(
      dx, project_backward(params, synth, prefix + ".up_proj.weight", c.x, c.synth_up, g.dup));
  return dx;
}

}  // namespace dseek::train
