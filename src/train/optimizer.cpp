#include "train/optimizer.h"

#include <cmath>
#include <cstring>

#include "core/error.h"

namespace dseek::train {

namespace {

constexpr int64_t kParallelMin = 1 << 15;  // below this a parameter is updated on one thread

bool ends_with(const std::string& s, const std::string& suffix) {
  return s.size() >= suffix.size() &&
         s.compare(s.size() - suffix.size(), suffix.size(), suffix) == 0;
}

void check_state_tensor(const std::map<std::string, Tensor>& tensors, const std::string& name,
                        const Shape& shape) {
  auto it = tensors.find(name);
  DSEEK_CHECK(it != tensors.end(), "[optim] optimizer state: missing tensor '{}'", name);
  DSEEK_CHECK(it->second.defined() && it->second.shape() == shape,
              "[optim] optimizer state: tensor '{}' has shape {}, the parameter has {}", name,
              it->second.defined() ? shape_str(it->second.shape()) : "(undefined)",
              shape_str(shape));
}

}  // namespace

AdamW::AdamW(ParamSet& params, AdamWConfig config) : params_(&params), config_(config) {
  DSEEK_CHECK(config.beta1 >= 0.0 && config.beta1 < 1.0, "[optim] AdamW: beta1 {} not in [0, 1)",
              config.beta1);
  DSEEK_CHECK(config.beta2 >= 0.0 && config.beta2 < 1.0, "[optim] AdamW: beta2 {} not in [0, 1)",
              config.beta2);
  DSEEK_CHECK(config.eps > 0.0 && std::isfinite(config.eps), "[optim] AdamW: eps {} must be > 0",
              config.eps);
  DSEEK_CHECK(config.weight_decay >= 0.0 && std::isfinite(config.weight_decay),
              "[optim] AdamW: weight_decay {} must be >= 0", config.weight_decay);
  for (const Param& p : params.all()) {
    exp_avg_.push_back(p.trainable ? Tensor::zeros(p.value.shape()) : Tensor());
    exp_avg_sq_.push_back(p.trainable ? Tensor::zeros(p.value.shape()) : Tensor());
  }
}

void AdamW::step(double lr) {
  DSEEK_CHECK(std::isfinite(lr) && lr >= 0.0, "[optim] AdamW: learning rate {} must be >= 0", lr);
  DSEEK_CHECK(params_->size() == exp_avg_.size(),
              "[optim] AdamW: the ParamSet has {} parameters, the optimizer was built for {}",
              params_->size(), exp_avg_.size());
  ++step_count_;
  const AdamWStep s = adamw_step_scalars(config_, lr, step_count_);
  size_t index = 0;
  for (Param& p : params_->all()) {
    const size_t i = index++;
    if (!p.trainable) continue;
    adamw_update(s, s.decay_factor(p.decay), p.value.data<float>(), p.grad.data<float>(),
                 exp_avg_[i].data<float>(), exp_avg_sq_[i].data<float>(), p.value.numel());
  }
}

AdamWStep adamw_step_scalars(const AdamWConfig& config, double lr, int64_t step) {
  const double t = double(step);
  AdamWStep s;
  s.beta1 = float(config.beta1);
  s.beta2 = float(config.beta2);
  s.one_minus_beta1 = float(1.0 - config.beta1);
  s.one_minus_beta2 = float(1.0 - config.beta2);
  s.step_size = float(lr / (1.0 - std::pow(config.beta1, t)));
  s.bias_correction2_sqrt = float(std::sqrt(1.0 - std::pow(config.beta2, t)));
  s.eps = float(config.eps);
  s.lr = lr;
  s.weight_decay = config.weight_decay;
  return s;
}

void adamw_update(const AdamWStep& s, float decay_factor, float* value, const float* grad, float* m,
                  float* v, int64_t n) {
#pragma omp parallel for schedule(static) if (n >= kParallelMin)
  for (int64_t k = 0; k < n; ++k) {
    const float g = grad[k];
    m[k] = s.beta1 * m[k] + s.one_minus_beta1 * g;
    v[k] = s.beta2 * v[k] + s.one_minus_beta2 * g * g;
    const float denom = std::sqrt(v[k]) / s.bias_correction2_sqrt + s.eps;
    value[k] = value[k] * decay_factor - s.step_size * m[k] / denom;
  }
}

std::vector<std::pair<std::string, Tensor>> AdamW::state_tensors() const {
  std::vector<std::pair<std::string, Tensor>> out;
  size_t i = 0;
  for (const Param& p : params_->all()) {
    if (p.trainable && i < exp_avg_.size()) {
      out.emplace_back("exp_avg." + p.name, exp_avg_[i]);
      out.emplace_back("exp_avg_sq." + p.name, exp_avg_sq_[i]);
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
      const Tensor m = tensors.at("exp_avg." + p.name).to(DType::F32);
      const Tensor v = tensors.at("exp_avg_sq." + p.name).to(DType::F32);
      std::memcpy(exp_avg_[i].data<float>(), m.data<float>(), m.nbytes());
      std::memcpy(exp_avg_sq_[i].data<float>(), v.data<float>(), v.nbytes());
    }
    ++i;
  }
  step_count_ = step_count;
}

double clip_grad_norm(ParamSet& params, double max_norm) {
  double sum = 0.0;
  for (const Param& p : params.all()) {
    if (!p.trainable) continue;
    const float* g = p.grad.data<float>();
    const int64_t n = p.grad.numel();
    double part = 0.0;
#pragma omp parallel for schedule(static) reduction(+ : part) if (n >= kParallelMin)
    for (int64_t k = 0; k < n; ++k) part += double(g[k]) * double(g[k]);
    sum += part;
  }
  const double norm = std::sqrt(sum);
  if (max_norm > 0.0 && std::isfinite(norm) && norm > max_norm) {
    const float scale = float(max_norm / (norm + 1e-6));
    for (Param& p : params.all()) {
      if (!p.trainable) continue;
      float* g = p.grad.data<float>();
      const int64_t n = p.grad.numel();
#pragma omp parallel for schedule(static) if (n >= kParallelMin)
      for (int64_t k = 0; k < n; ++k) g[k] *= scale;
    }
  }
  return norm;
}

bool decays(const std::string& param_name) {
  return !(ends_with(param_name, "norm.weight") || ends_with(param_name, ".bias") ||
           ends_with(param_name, "e_score_correction_bias"));
}

}  // namespace dseek::train
