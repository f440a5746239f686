#include "model/mlp.h"

#include "core/error.h"
#include "model/safetensors.h"
#include "ops/activation.h"
#include "ops/device.h"
#include "ops/swiglu.h"

namespace dseek {

namespace {

Tensor optional_bias(const WeightStore& weights, const std::string& name, int64_t size,
                     const Placement& placement) {
  if (!weights.has(name)) return Tensor();
  return place_weight(weights.get(name, {size}), placement);
}

}  // namespace

Mlp::Mlp(const WeightStore& weights, const std::string& prefix, int64_t hidden,
         int64_t intermediate, const Placement& placement)
    : name_(prefix), hidden_(hidden), intermediate_(intermediate) {
  DSEEK_CHECK(hidden > 0 && intermediate > 0,
              "[mlp] {}: hidden {} and intermediate {} must be positive", prefix, hidden,
              intermediate);
  auto weight = [&](const std::string& name, const Shape& shape) {
    return load_linear(weights, prefix + name, shape, placement);
  };
  gate_proj_ = weight(".gate_proj.weight", {intermediate, hidden});
  up_proj_ = weight(".up_proj.weight", {intermediate, hidden});
  down_proj_ = weight(".down_proj.weight", {hidden, intermediate});
  gate_bias_ = optional_bias(weights, prefix + ".gate_proj.bias", intermediate, placement);
  up_bias_ = optional_bias(weights, prefix + ".up_proj.bias", intermediate, placement);
  down_bias_ = optional_bias(weights, prefix + ".down_proj.bias", hidden, placement);
  if (placement.device == Device::CUDA && !fp8() && !has_bias()) {
    gate_up_ = Tensor::empty({2 * intermediate, hidden}, gate_proj_.weight.dtype(), Device::CUDA);
    gate_up_.slice(0, 0, intermediate).copy_from(gate_proj_.weight);
    gate_up_.slice(0, intermediate, 2 * intermediate).copy_from(up_proj_.weight);
    gate_proj_.weight = gate_up_.slice(0, 0, intermediate);  // the separate copies are freed
    up_proj_.weight = gate_up_.slice(0, intermediate, 2 * intermediate);
  }
}

Mlp::Mlp(Tensor gate_proj, Tensor up_proj, Tensor down_proj, const std::string& name)
    : name_(name),
      gate_proj_{std::move(gate_proj), Tensor()},
      up_proj_{std::move(up_proj), Tensor()},
      down_proj_{std::move(down_proj), Tensor()} {
  const Tensor& gate = gate_proj_.weight;
  DSEEK_CHECK(gate.dim() == 2, "[mlp] {}.gate_proj.weight: expected 2 dimensions, got shape {}",
              name_, shape_str(gate.shape()));
  intermediate_ = gate.size(0);
  hidden_ = gate.size(1);
  check_shapes();
}

void Mlp::check_shapes() const {
  const Shape in_shape{intermediate_, hidden_}, out_shape{hidden_, intermediate_};
  DSEEK_CHECK(up_proj().shape() == in_shape, "[mlp] {}.up_proj.weight: shape {}, expected {}",
              name_, shape_str(up_proj().shape()), shape_str(in_shape));
  DSEEK_CHECK(down_proj().shape() == out_shape, "[mlp] {}.down_proj.weight: shape {}, expected {}",
              name_, shape_str(down_proj().shape()), shape_str(out_shape));
}

Tensor Mlp::forward(const Tensor& x) const {
  const DType act = ops::activation_dtype("mlp", x);  // f32, or bf16 on the GPU
  DSEEK_CHECK(x.dim() == 2 && x.size(1) == hidden_,
              "[mlp] {}: input shape {} ({}), expected [T, {}]", name_, shape_str(x.shape()),
              dtype_name(x.dtype()), hidden_);
  if (x.size(0) == 0) return Tensor::zeros({0, hidden_}, act, x.device());
  const Tensor input = x.contiguous();
  if (gate_up_.defined()) {
    const Tensor gu = apply_linear(input, LinearWeight{gate_up_, Tensor()});  // [T, 2I]
    if (!down_proj_.fp8()) {  // silu_mul inside the down projection's kernel where it can be
      return ops::linear_swiglu(gu, down_proj_.weight,
                                down_bias_.defined() ? &down_bias_ : nullptr);
    }
    const Tensor h =
        ops::silu_mul(gu.slice(1, 0, intermediate_), gu.slice(1, intermediate_, 2 * intermediate_));
    return apply_linear(h, down_proj_, down_bias_);
  }
  const Tensor gate = apply_linear(input, gate_proj_, gate_bias_);
  const Tensor up = apply_linear(input, up_proj_, up_bias_);
  return apply_linear(ops::silu_mul(gate, up), down_proj_, down_bias_);
}

}  // namespace dseek
