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

namespace {

// dx of an FP8 linear from its input's codes; dW written over the grad's zeros or added to it.
Tensor fp8_linear_backward(Param& p, const ops::Fp8LinearCache& x, const Tensor& dy,
                           ops::Fp8WgradInput* shared_x = nullptr) {
  Tensor dx = Tensor::empty(x.x_shape, x.act, x.x.data.device());
  const bool wgrad = p.grad.defined(), add = wgrad && !overwrite_grad(p);
  ops::linear_fp8_train_backward(x, p.value, dy, &dx, wgrad ? &p.grad : nullptr, add, shared_x);
  return dx;
}

}  // namespace

Tensor linear_backward(ParamSet& params, const std::string& name, const Tensor& x,
                       const Tensor& dy) {
  Param& p = params.at(name);
  // x held in the activation dtype: quantised again here (the forward's codes).
  if (p.fp8) return fp8_linear_backward(p, ops::fp8_linear_cache(x), dy);
  Tensor dx = Tensor::empty(x.shape(), x.dtype(), x.device());
  // Two calls, one GEMM each: dx is written (no zero-fill), dW written over the grad's zeros
  // (overwrite_grad) or added to the accumulated grad.
  const Tensor xc = x.contiguous(), dyc = dy.contiguous();
  ops::linear_backward_into(xc, p.weight(), dyc, &dx, nullptr, nullptr, false);
  if (p.grad.defined())
    ops::linear_backward_into(xc, p.weight(), dyc, nullptr, &p.grad, nullptr, !overwrite_grad(p));
  return dx;
}

Tensor linear_forward(ParamSet& params, const std::string& name, const Tensor& x, LinearInput& in) {
  const Param& p = params.at(name);
  const bool codes = p.fp8 && !in.keep_x && params.fp8_input_cache();
  if (!codes) in.x = x;
  if (!p.fp8) return ops::linear(x, p.weight());
  // The first FP8 reader of x quantises it; the next ones multiply its codes.
  if (codes && in.codes_of == x.raw() && in.fp8.x.data.defined() && in.fp8.x_shape == x.shape())
    return ops::linear_fp8_train_forward(in.fp8, p.value);
  Tensor y = ops::linear_fp8_train_forward(x, p.value, codes ? &in.fp8 : nullptr);
  if (codes) in.codes_of = x.raw();
  return y;
}

Tensor linear_backward(ParamSet& params, const std::string& name, const LinearInput& in,
                       const Tensor& dy, ops::Fp8WgradInput* shared_x) {
  Param& p = params.at(name);
  if (p.fp8 && in.fp8.x.data.defined()) return fp8_linear_backward(p, in.fp8, dy, shared_x);
  // x held in the activation dtype (keep_x): its codes again, the same x̂.
  if (p.fp8) return fp8_linear_backward(p, ops::fp8_linear_cache(in.x), dy, shared_x);
  return linear_backward(params, name, in.x, dy);
}

Tensor norm_forward(ParamSet& params, const std::string& name, const Tensor& x, double eps) {
  return ops::rms_norm(x, params.value(name), eps);
}

Tensor norm_backward(ParamSet& params, const std::string& name, const Tensor& x, double eps,
                     const Tensor& dy) {
  Param& p = params.at(name);
  Tensor dx = Tensor::empty(x.shape(), x.dtype(), x.device());
  ops::rms_norm_backward_into(x, p.value, eps, dy, dx, p.grad.defined() ? &grad_to_add(p) : nullptr,
                              true);
  return dx;
}

namespace {

// One projection of the MLP: the linear, or the synthesised operator that replaces it (which
// keeps what its backward needs in its own cache).
Tensor project(ParamSet& params, SynthOverride* synth, const std::string& name, const Tensor& x,
               LinearInput& in, synth::SynthLayerCache& cache) {
  if (synth && synth->replaces(name)) return synth->forward(params, name, x, cache);
  return linear_forward(params, name, x, in);
}

Tensor project_backward(ParamSet& params, SynthOverride* synth, const std::string& name,
                        const LinearInput& in, const synth::SynthLayerCache& cache,
                        const Tensor& dy, ops::Fp8WgradInput* shared_x = nullptr) {
  if (synth && synth->replaces(name)) return synth->backward(params, name, cache, dy);
  return linear_backward(params, name, in, dy, shared_x);
}

}  // namespace

Tensor mlp_forward(ParamSet& params, const std::string& prefix, const Tensor& x, MlpCache& c,
                   SynthOverride* synth, bool keep_x) {
  const Tensor xc = x.contiguous();
  c = MlpCache{};  // filled afresh: no codes of an earlier batch
  c.x.keep_x = keep_x;
  c.gate = project(params, synth, prefix + ".gate_proj.weight", xc, c.x, c.synth_gate);
  c.up = project(params, synth, prefix + ".up_proj.weight", xc, c.x, c.synth_up);
  const Tensor inner = ops::silu_mul(c.gate, c.up);
  return project(params, synth, prefix + ".down_proj.weight", inner, c.inner, c.synth_down);
}

Tensor mlp_backward(ParamSet& params, const std::string& prefix, const MlpCache& c,
                    const Tensor& dy, SynthOverride* synth) {
  const Tensor d_inner =
      project_backward(params, synth, prefix + ".down_proj.weight", c.inner, c.synth_down, dy);
  const ops::SiluMulGrads g = ops::silu_mul_backward(c.gate, c.up, d_inner);
  ops::Fp8WgradInput x_cols;  // x̂'s column tiles, for gate_proj's and up_proj's FP8 wgrads
  Tensor dx = project_backward(params, synth, prefix + ".gate_proj.weight", c.x, c.synth_gate,
                               g.dgate, &x_cols);
  ops::add_inplace(dx, project_backward(params, synth, prefix + ".up_proj.weight", c.x, c.synth_up,
                                        g.dup, &x_cols));
  return dx;
}

}  // namespace dseek::train
