// LoadContext: how the model's parts read their weights at load time. It wraps the WeightStore,
// checks each tensor's shape (errors name the tensor and its file), and records which tensor names
// were consumed so Model::load can report checkpoint tensors nothing read. Under a GPU placement
// every weight it hands out is already converted and on the device (model/placement.h); linear()
// hands out FP8 projections as stored (F8_E4M3 + scales) unless the placement dequantises them.
#pragma once

#include <set>
#include <string>
#include <vector>

#include "core/tensor.h"
#include "model/config.h"
#include "model/linear_weight.h"
#include "model/placement.h"
#include "model/safetensors.h"

namespace dseek {

class LoadContext {
 public:
  LoadContext(const ModelConfig& config, const WeightStore& store,
              const Placement& placement = Placement())
      : config_(config), store_(store), placement_(placement) {}

  const ModelConfig& config() const { return config_; }
  const WeightStore& store() const { return store_; }
  const Placement& placement() const { return placement_; }
  bool has(const std::string& name) const { return store_.has(name); }

  // A weight for compute (FP8 dequantised, then placed), shape-checked; throws if missing.
  Tensor weight(const std::string& name, const Shape& shape);
  // A projection's weight [out, in]: FP8 kept as FP8 when the placement says so (load_linear).
  LinearWeight linear(const std::string& name, const Shape& shape);
  // As weight(), or an undefined tensor when the checkpoint does not have it.
  Tensor optional_weight(const std::string& name, const Shape& shape);
  // Marks every tensor under `prefix` (e.g. "model.layers.3.mlp.") as consumed by a part that
  // reads the store directly (Mlp, MoE).
  void consume_prefix(const std::string& prefix);

  // Checkpoint tensors no part consumed (FP8 scale siblings of consumed weights count as consumed).
  std::vector<std::string> unused() const;

 private:
  const ModelConfig& config_;
  const WeightStore& store_;
  Placement placement_;
  std::set<std::string> used_;
  std::vector<std::string> prefixes_;
};

}  // namespace dseek
