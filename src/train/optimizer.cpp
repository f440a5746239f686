#include "train/optimizer.h"

#include <cmath>

#include "core/error.h"

namespace dseek::train {

namespace {

bool ends_with(const std::string& s, const std::string& suffix) {
  return s.size() >= suffix.size() &&
         s.compare(s.size() - suffix.size(), suffix.size(), suffix) == 0;
}

}  // namespace

void check_state_tensor(const std::map<std::string, Tensor>& tensors, const std::string& name,
                        const Shape& shape) {
  auto it = tensors.find(name);
  DSEEK_CHECK(it != tensors.end(), "[optim] optimizer state: missing tensor '{}'", name);
  DSEEK_CHECK(it->second.defined() && it->second.shape() == shape,
              "[optim] optimizer state: tensor '{}' has shape {}, the parameter has {}", name,
              it->second.defined() ? shape_str(it->second.shape()) : "(undefined)",
              shape_str(shape));
}

AdamW::AdamW(ParamSet& params, AdamWConfig config) : params_(&params), config_(config) {
  DSEEK_CHECK(config.beta1 >= 0.0 && config.beta1 < 1.0, "[optim] AdamW: beta1 {} not in [0, 1)",
              config.beta1);
  DSEEK_CHECK(config.beta2 >= 0.0 && config.beta2 < 1.0, "[optim] AdamW: beta2 {} not in [0, 1)",
              config.beta2);
  DSEEK_CHECK(config.eps > 0.0 && std::isfinite(config.eps), "[optim] AdamW: eps {} must be > 0",
              config.eps);
  DSEEK_CHECK(config.weight_decay >= 0.0 && std::isfinite(config.weight_decay),
              "[optim] AdamW: weight_decay {} must be >= 0", config.weight_decay);
  DSEEK_CHECK(config.moment_dtype == DType::F32 || config.moment_dtype == DType::BF16,
              "[optim] AdamW: moments must be f32 or bf16, got {}",
              dtype_name(config.moment_dtype));
  const DType md = config.moment_dtype;
  for (const Param& p : params.all()) {
    const Device d = p.value.device();
    exp_avg_.push_back(p.trainable ? Tensor::zeros(p.value.shape(), md, d) : Tensor());
    exp_avg_sq_.push_back(p.trainable ? Tensor::zeros(p.value.shape(), md, d) : Tensor());
  }
}

void AdamW::to(Device device) {
  for (size_t i = 0; i < exp_avg_.size(); ++i) {
    if (!exp_avg_[i].defined()) continue;
    exp_avg_[i] = exp_avg_[i].to(device);
    exp_avg_sq_[i] = exp_avg_sq_[i].to(device);
  }
  fused_ = ops::AdamWTensors();  // its table names the old storage
}

// Whether fused_ still names every trainable parameter's current value, grad and moments (a
// ParamSet::to or a replaced tensor gives them new storage).
bool AdamW::fused_current() const {
  size_t k = 0, i = 0;
  for (const Param& p : params_->all()) {
    const size_t index = i++;
    if (!p.trainable) continue;
    if (k >= fused_.values.size() || fused_.values[k].raw() != p.value.raw() ||
        fused_.grads[k].raw() != p.grad.raw() ||
        fused_.exp_avgs[k].raw() != exp_avg_[index].raw() ||
        fused_.exp_avg_sqs[k].raw() != exp_avg_sq_[index].raw() ||
        fused_.computes[k].defined() != p.compute.defined() ||
        (p.compute.defined() && fused_.computes[k].raw() != p.compute.raw()))
      return false;
    ++k;
  }
  return k == fused_.values.size();
}

void AdamW::step(double lr, float grad_scale) {
  DSEEK_CHECK(std::isfinite(lr) && lr >= 0.0, "[optim] AdamW: learning rate {} must be >= 0", lr);
  DSEEK_CHECK(params_->size() == exp_avg_.size(),
              "[optim] AdamW: the ParamSet has {} parameters, the optimizer was built for {}",
              params_->size(), exp_avg_.size());
  if (!fused_current()) {
    std::vector<Tensor> values, grads, ms, vs, computes;
    std::vector<uint8_t> decay;
    size_t i = 0;
    for (const Param& p : params_->all()) {
      const size_t index = i++;
      if (!p.trainable) continue;
      DSEEK_CHECK(exp_avg_[index].device() == p.value.device(),
                  "[optim] AdamW: parameter '{}' is on {}, its moments on {} (call AdamW::to after "
                  "ParamSet::to)",
                  p.name, device_name(p.value.device()), device_name(exp_avg_[index].device()));
      values.push_back(p.value);
      grads.push_back(p.grad);
      ms.push_back(exp_avg_[index]);
      vs.push_back(exp_avg_sq_[index]);
      decay.push_back(p.decay ? 1 : 0);
      computes.push_back(p.compute);
    }
    fused_ = ops::adamw_tensors(std::move(values), std::move(grads), std::move(ms), std::move(vs),
                                std::move(decay), std::move(computes));
  }
  ++step_count_;
  ops::adamw_step(fused_, adamw_step_scalars(config_, lr, step_count_), grad_scale);
}

AdamWStep adamw_step_scalars(const AdamWConfig& config, double lr, int64_t step) {
  return ops::adamw_step_scalars(config.beta1, config.beta2, config.eps, config.weight_decay, lr,
                                 step);
}

std::vector<std::pair<std::string, Tensor>> AdamW::state_tensors() const {
  std::vector<std::pair<std::string, Tensor>> out;
  size_t i = 0;
  for (const Param& p : params_->all()) {
    if (p.trainable && i < exp_avg_.size()) {
      // bf16 moments as f32 copies (exact): checkpoints hold f32 tensors.
      const auto f32 = [](const Tensor& t) {
        return t.dtype() == DType::F32 ? t : t.to(DType::F32);
      };
      out.emplace_back("exp_avg." + p.name, f32(exp_avg_[i]));
      out.emplace_back("exp_avg_sq." + p.name, f32(exp_avg_sq_[i]));
    }
    ++i;
  }
  return out;
}

void AdamW::load_state(const std::map<std::string, Tensor>& tensors, int64_t step_count) {
  DSEEK_CHECK(step_count >= 0, "[optim] optimizer state: step count {} is negative", step_count);
  DSEEK_CHECK(params_->size() == exp_avg_.size(),
              "[optim] AdamW: the ParamSet has {} parameters, the optimizer was built for {}",
              params_->size(), exp_avg_.size());
  // Validate everything first so a bad checkpoint leaves the optimizer as it was.
  for (const Param& p : params_->all()) {
    if (!p.trainable) continue;
    check_state_tensor(tensors, "exp_avg." + p.name, p.value.shape());
    check_state_tensor(tensors, "exp_avg_sq." + p.name, p.value.shape());
  }
  size_t i = 0;
  for (const Param& p : params_->all()) {
    if (p.trainable) {
      // (converted to the moments' dtype: a checkpoint of either loads)
      copy_values(exp_avg_[i], tensors.at("exp_avg." + p.name), "exp_avg." + p.name);
      copy_values(exp_avg_sq_[i], tensors.at("exp_avg_sq." + p.name), "exp_avg_sq." + p.name);
    }
    ++i;
  }
  step_count_ = step_count;
}

double grad_norm(const ParamSet& params) {
  std::vector<Tensor> grads;
  for (const Param& p : params.all())
    if (p.trainable) grads.push_back(p.grad);
  return std::sqrt(ops::sum_of_squares(grads));
}

float clip_factor(double norm, double max_norm) {
  return max_norm > 0.0 && std::isfinite(norm) && norm > max_norm ? float(max_norm / (norm + 1e-6))
                                                                  : 1.0f;
}

double clip_grad_norm(ParamSet& params, double max_norm) {
  const double norm = grad_norm(params);
  const float factor = clip_factor(norm, max_norm);
  if (factor != 1.0f) {
    std::vector<Tensor> grads;
    for (const Param& p : params.all())
      if (p.trainable) grads.push_back(p.grad);
    ops::scale_inplace(grads, factor);
  }
  return norm;
}

bool decays(const std::string& param_name) {
  return !(ends_with(param_name, "norm.weight") || ends_with(param_name, ".bias") ||
           ends_with(param_name, "e_score_correction_bias"));
}

}  // namespace dseek::train
