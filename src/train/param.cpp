#include "train/param.h"

#include <cstring>

#include "core/error.h"

namespace dseek::train {

Param& ParamSet::add(const std::string& name, const Tensor& value, bool trainable, bool decay) {
  DSEEK_CHECK(!has(name), "[train] parameter '{}' added twice", name);
  Param p;
  p.name = name;
  p.value = value.to(DType::F32);  // always a fresh contiguous copy: the master is our own
  p.trainable = trainable;
  p.decay = trainable && decay;
  if (trainable) p.grad = Tensor::zeros(p.value.shape());
  index_[name] = params_.size();
  params_.push_back(std::move(p));
  return params_.back();
}

Param& ParamSet::at(const std::string& name) {
  auto it = index_.find(name);
  DSEEK_CHECK(it != index_.end(), "[train] no parameter '{}'", name);
  return params_[it->second];
}

const Param& ParamSet::at(const std::string& name) const {
  auto it = index_.find(name);
  DSEEK_CHECK(it != index_.end(), "[train] no parameter '{}'", name);
  return params_[it->second];
}

void ParamSet::zero_grad() {
  for (Param& p : params_)
    if (p.grad.defined()) std::memset(p.grad.data<float>(), 0, size_t(p.grad.numel()) * sizeof(float));
}

void ParamSet::set_compute_dtype(DType dtype) {
  DSEEK_CHECK(dtype == DType::F32 || dtype == DType::BF16,
              "[train] compute dtype: f32 or bf16, got {}", dtype_name(dtype));
  compute_dtype_ = dtype;
  for (Param& p : params_) p.compute = Tensor();
  refresh_compute();
}

void ParamSet::refresh_compute() {
  if (compute_dtype_ == DType::F32) return;
  // Router weights stay f32, as DeepSeek-V3 keeps its gates in higher precision.
  auto is_router = [](const std::string& n) {
    return n.size() >= 12 && n.compare(n.size() - 12, 12, ".gate.weight") == 0;
  };
  for (Param& p : params_)
    if (p.trainable && p.value.dim() == 2 && !is_router(p.name))
      p.compute = p.value.to(compute_dtype_);
}

int64_t ParamSet::numel(bool trainable_only) const {
  int64_t n = 0;
  for (const Param& p : params_)
    if (!trainable_only || p.trainable) n += p.value.numel();
  return n;
}

}  // namespace dseek::train
