// A synthesised operator (an operator file, synth/serialize.h) in place of linear projections of a
// train model's MLPs: `train.synth_override = { file = "op.json", site = "mlp.up_proj" }` or
// `dseek train --synth-op op.json --synth-site mlp.up_proj`.
//
// Sites: mlp.gate_proj, mlp.up_proj, mlp.down_proj of every dense MLP layer, or `mlp` for all
// three; shared_experts.gate_proj / up_proj / down_proj of every MoE layer's shared experts, or
// `shared_experts` for all three. (The routed experts keep their linears.)
//
// Parameters: each replaced weight "model.layers.L.mlp.up_proj.weight" leaves the ParamSet and the
// operator's weights take its place, in its position, as "model.layers.L.mlp.up_proj.synth.w0",
// ".w1", ... (Share order, shapes at the site's sizes). So the optimizer, gradient clipping,
// weight decay, checkpoints, resume and the data-parallel buckets (which go by the block layer of a
// name) treat them as any other matrix. They are initialised by the synth layer's fan-in rule
// (synth/synth_layer.h) rescaled so that the operator's output starts with the variance of the
// dense layer it replaces (weights ~ N(0, init_std²)): every weight is multiplied by
// (init_std·√d_in)^(1/W), W the number of weights — for the dense operator exactly N(0, init_std²).
//
// Sizes: the operator must be token-wise [T, ...] → [T, ...] (synth_layer.h) and fit each site's
// [T, d_in] → [T, d_out]. Its valuation there is the first of the file's valuations under which
// the per-token input and output sizes are d_in and d_out; failing that, when the input and output
// are [T, X] and [T, Y] with X and Y primary variables, the file's first valuation with X = d_in
// and Y = d_out (every size of the operator must then be a positive integer). Otherwise the error
// names the file, the site and the mismatch.
//
// Compute: forward and backward run the operator's lowered plan (synth/lower.h) on the ParamSet's
// f32 values, on the params' device; bf16 activations are widened to f32 for it and the results
// rounded back.
#pragma once

#include <cstdint>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "core/tensor.h"
#include "model/config.h"
#include "synth/serialize.h"
#include "synth/synth_layer.h"
#include "train/param.h"

namespace dseek::train {

// The allowed values of train.synth_override.site, and them as one comma-separated line.
const std::vector<std::string>& synth_override_sites();
std::string synth_override_sites_list();

class SynthOverride {
 public:
  // `source` names the operator in errors (its file). Throws dseek::Error if the site is unknown,
  // the model has no projection there, or the operator does not fit one of them.
  SynthOverride(synth::OperatorRecord record, std::string source, std::string site,
                const ModelConfig& config);
  // Reads an operator file (synth/serialize.h).
  static std::unique_ptr<SynthOverride> load(const std::string& file, const std::string& site,
                                             const ModelConfig& config);

  const std::string& site() const { return site_; }
  const std::string& source() const { return source_; }
  const synth::OperatorRecord& record() const { return record_; }
  // The operator file's normalised text (operator_to_json): what a run directory records.
  std::string json() const;

  // The replaced weights ("model.layers.0.mlp.up_proj.weight"), in checkpoint layout order.
  const std::vector<std::string>& replaced() const { return order_; }
  bool replaces(const std::string& weight_name) const { return proj_.count(weight_name) != 0; }
  // The operator's parameters standing in for `weight_name`, and their shapes.
  std::vector<std::string> param_names(const std::string& weight_name) const;
  std::vector<Shape> param_shapes(const std::string& weight_name) const;

  // In `params` (filled by TrainModel::init_params, no optimizer yet): every replaced weight is
  // removed and the operator's weights are added at its position (trainable, decayed), drawn
  // from per-name streams of `seed` (see the header comment for the scale).
  void replace_params(ParamSet& params, uint64_t seed, double init_std) const;

  // y [N, d_out] = op(x [N, d_in]) for the projection `weight_name`, with its weights from
  // `params`; y has x's dtype. Fills `cache` for backward.
  Tensor forward(ParamSet& params, const std::string& weight_name, const Tensor& x,
                 synth::SynthLayerCache& cache);
  // Adds dW into the weights' grads; returns dx [N, d_in] in dy's dtype.
  Tensor backward(ParamSet& params, const std::string& weight_name,
                  const synth::SynthLayerCache& cache, const Tensor& dy);

  // Per token, for one replaced projection: its sizes, the operator's parameters and FLOPs
  // (synth/cost.h) and those of the dense linear it replaces (d_in·d_out, 2·d_in·d_out).
  struct Cost {
    int64_t d_in = 0, d_out = 0;
    int64_t params = 0, flops = 0;
    int64_t dense_params = 0, dense_flops = 0;
  };
  Cost cost(const std::string& weight_name) const;

 private:
  // One (d_in, d_out) shape the operator is used at: its valuation and the layer that holds its
  // lowered plans (its own weights are only the init draw).
  struct Fit {
    int64_t d_in = 0, d_out = 0;
    synth::Valuation values;
    std::unique_ptr<synth::SynthLayer> layer;
  };
  const Fit& fit_of(const std::string& weight_name) const;

  synth::OperatorRecord record_;
  std::string source_, site_;
  int token_var_ = -1;
  std::vector<Fit> fits_;
  std::map<std::string, size_t> proj_;  // replaced weight name -> fit index
  std::vector<std::string> order_;
};

}  // namespace dseek::train
