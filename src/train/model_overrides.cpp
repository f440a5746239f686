#include "train/model_overrides.h"

#include <cmath>

#include "core/error.h"

namespace dseek::train {

bool has_model_overrides(const TrainConfig& c) {
  return !c.rope_type.empty() || c.rope_factor != -1 || c.rope_original_max != -1 ||
         c.rope_beta_fast != -1 || c.rope_beta_slow != -1 || c.rope_mscale != -1 ||
         c.rope_mscale_all_dim != -1 || c.max_position_embeddings != -1;
}

void apply_model_overrides(const TrainConfig& c, ModelConfig& model) {
  RopeScaling& r = model.rope_scaling;
  const int64_t context_before = model.max_position_embeddings;
  const bool type_changed = !c.rope_type.empty();
  if (type_changed) {
    DSEEK_CHECK(c.rope_type == "none" || c.rope_type == "yarn" || c.rope_type == "linear",
                "[train] model.rope_scaling.type: '{}' is not one of none, yarn, linear",
                c.rope_type);
    const std::string type = c.rope_type == "none" ? "default" : c.rope_type;
    if (type != r.type) {
      r = RopeScaling{};
      r.type = type;
      // The context the model was trained at is the one YaRN's correction dims are computed for.
      if (type == "yarn") r.original_max_position_embeddings = context_before;
    }
  }
  const bool scaled = r.type != "default";
  auto need_scaling = [&](double v, const char* key) {
    DSEEK_CHECK(v == -1 || scaled,
                "[train] {}: the model has no rope scaling; set model.rope_scaling.type too", key);
  };
  need_scaling(c.rope_factor, "model.rope_scaling.factor");
  need_scaling(double(c.rope_original_max), "model.rope_scaling.original_max_position_embeddings");
  need_scaling(c.rope_beta_fast, "model.rope_scaling.beta_fast");
  need_scaling(c.rope_beta_slow, "model.rope_scaling.beta_slow");
  need_scaling(c.rope_mscale, "model.rope_scaling.mscale");
  need_scaling(c.rope_mscale_all_dim, "model.rope_scaling.mscale_all_dim");
  if (c.rope_factor != -1) {
    DSEEK_CHECK(c.rope_factor >= 1, "[train] model.rope_scaling.factor: must be >= 1, got {}",
                c.rope_factor);
    r.factor = c.rope_factor;
  }
  if (r.type != "yarn") {
    for (const auto& [v, key] :
         {std::pair<double, const char*>{double(c.rope_original_max),
                                         "model.rope_scaling.original_max_position_embeddings"},
          {c.rope_beta_fast, "model.rope_scaling.beta_fast"},
          {c.rope_beta_slow, "model.rope_scaling.beta_slow"},
          {c.rope_mscale, "model.rope_scaling.mscale"},
          {c.rope_mscale_all_dim, "model.rope_scaling.mscale_all_dim"}})
      DSEEK_CHECK(v == -1, "[train] {}: only yarn rope scaling has this setting (type is {})", key,
                  r.type);
  } else {
    if (c.rope_original_max != -1) {
      DSEEK_CHECK(c.rope_original_max > 0,
                  "[train] model.rope_scaling.original_max_position_embeddings: must be positive");
      r.original_max_position_embeddings = c.rope_original_max;
    }
    if (c.rope_beta_fast != -1) r.beta_fast = c.rope_beta_fast;
    if (c.rope_beta_slow != -1) r.beta_slow = c.rope_beta_slow;
    DSEEK_CHECK(r.beta_fast > 0 && r.beta_slow > 0 && r.beta_fast > r.beta_slow,
                "[train] model.rope_scaling.beta_fast/beta_slow: need beta_fast > beta_slow > 0, "
                "got {} and {}",
                r.beta_fast, r.beta_slow);
    if (c.rope_mscale != -1) r.mscale = c.rope_mscale;
    if (c.rope_mscale_all_dim != -1) r.mscale_all_dim = c.rope_mscale_all_dim;
    DSEEK_CHECK(r.mscale >= 0 && r.mscale_all_dim >= 0,
                "[train] model.rope_scaling.mscale/mscale_all_dim: must be >= 0");
  }
  if (c.max_position_embeddings != -1) {
    DSEEK_CHECK(c.max_position_embeddings > 0,
                "[train] model.max_position_embeddings: must be positive, got {}",
                c.max_position_embeddings);
    model.max_position_embeddings = c.max_position_embeddings;
  } else if (scaled && (type_changed || c.rope_factor != -1 || c.rope_original_max != -1)) {
    // The extended context: what the scaling was chosen for.
    const int64_t base =
        r.type == "yarn" ? r.original_max_position_embeddings : context_before;
    model.max_position_embeddings = int64_t(std::llround(double(base) * r.factor));
  }
  validate_model_config(model, "model overrides");
}

}  // namespace dseek::train
