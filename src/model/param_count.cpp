#include "model/param_count.h"

#include <map>

#include "core/error.h"

namespace dseek {

namespace {

// A tensor of the checkpoint; routed experts appear once with `copies` = n_routed_experts and
// "{e}" in the name where the expert index goes.
struct Entry {
  std::string name;
  Shape shape;
  int64_t copies = 1;
};

int64_t checked_add(int64_t a, int64_t b) {
  int64_t out;
  DSEEK_CHECK(!__builtin_add_overflow(a, b, &out), "[params] parameter count overflows int64");
  return out;
}

int64_t checked_mul(int64_t a, int64_t b) {
  int64_t out;
  DSEEK_CHECK(!__builtin_mul_overflow(a, b, &out), "[params] parameter count overflows int64");
  return out;
}

int64_t checked_numel(const Shape& shape) {
  int64_t n = 1;
  for (int64_t d : shape) n = checked_mul(n, d);
  return n;
}

void add_mlp(std::vector<Entry>& out, const std::string& prefix, int64_t hidden, int64_t inter,
             bool bias, int64_t copies = 1) {
  out.push_back({prefix + "gate_proj.weight", {inter, hidden}, copies});
  out.push_back({prefix + "up_proj.weight", {inter, hidden}, copies});
  out.push_back({prefix + "down_proj.weight", {hidden, inter}, copies});
  if (bias) {
    out.push_back({prefix + "gate_proj.bias", {inter}, copies});
    out.push_back({prefix + "up_proj.bias", {inter}, copies});
    out.push_back({prefix + "down_proj.bias", {hidden}, copies});
  }
}

void add_attention(std::vector<Entry>& out, const ModelConfig& c, const std::string& p) {
  const int64_t D = c.hidden_size, H = c.num_attention_heads;
  const bool bias = c.attention_bias;
  if (c.is_mla()) {
    // As transformers' DeepseekV2/V3Attention: only q_a, kv_a and o carry attention_bias.
    if (c.q_lora_rank > 0) {
      out.push_back({p + "q_a_proj.weight", {c.q_lora_rank, D}});
      if (bias) out.push_back({p + "q_a_proj.bias", {c.q_lora_rank}});
      out.push_back({p + "q_a_layernorm.weight", {c.q_lora_rank}});
      out.push_back({p + "q_b_proj.weight", {H * c.qk_head_dim(), c.q_lora_rank}});
    } else {
      out.push_back({p + "q_proj.weight", {H * c.qk_head_dim(), D}});
    }
    out.push_back({p + "kv_a_proj_with_mqa.weight", {c.kv_lora_rank + c.qk_rope_head_dim, D}});
    if (bias) out.push_back({p + "kv_a_proj_with_mqa.bias", {c.kv_lora_rank + c.qk_rope_head_dim}});
    out.push_back({p + "kv_a_layernorm.weight", {c.kv_lora_rank}});
    out.push_back(
        {p + "kv_b_proj.weight", {H * (c.qk_nope_head_dim + c.v_head_dim), c.kv_lora_rank}});
    out.push_back({p + "o_proj.weight", {D, H * c.v_head_dim}});
    if (bias) out.push_back({p + "o_proj.bias", {D}});
    return;
  }
  const int64_t q = H * c.head_dim, kv = c.num_key_value_heads * c.head_dim;
  out.push_back({p + "q_proj.weight", {q, D}});
  out.push_back({p + "k_proj.weight", {kv, D}});
  out.push_back({p + "v_proj.weight", {kv, D}});
  out.push_back({p + "o_proj.weight", {D, q}});
  if (bias) {
    out.push_back({p + "q_proj.bias", {q}});
    out.push_back({p + "k_proj.bias", {kv}});
    out.push_back({p + "v_proj.bias", {kv}});
    out.push_back({p + "o_proj.bias", {D}});
  }
}

void add_layer(std::vector<Entry>& out, const ModelConfig& c, int64_t layer) {
  const int64_t D = c.hidden_size;
  const std::string p = "model.layers." + std::to_string(layer) + ".";
  out.push_back({p + "input_layernorm.weight", {D}});
  add_attention(out, c, p + "self_attn.");
  out.push_back({p + "post_attention_layernorm.weight", {D}});
  if (!c.is_moe_layer(layer)) {
    add_mlp(out, p + "mlp.", D, c.intermediate_size, c.mlp_bias);
    return;
  }
  out.push_back({p + "mlp.gate.weight", {c.n_routed_experts, D}});
  if (c.topk_method == "noaux_tc")
    out.push_back({p + "mlp.gate.e_score_correction_bias", {c.n_routed_experts}});
  add_mlp(out, p + "mlp.experts.{e}.", D, c.moe_intermediate_size, false, c.n_routed_experts);
  if (c.n_shared_experts > 0) {
    add_mlp(out, p + "mlp.shared_experts.", D, c.moe_intermediate_size * c.n_shared_experts, false);
  }
}

std::vector<Entry> checkpoint_entries(const ModelConfig& c) {
  const int64_t D = c.hidden_size, V = c.vocab_size;
  std::vector<Entry> out;
  out.push_back({"model.embed_tokens.weight", {V, D}});
  for (int64_t i = 0; i < c.num_hidden_layers; ++i) add_layer(out, c, i);
  out.push_back({"model.norm.weight", {D}});
  if (!c.tie_word_embeddings) out.push_back({"lm_head.weight", {V, D}});
  for (int64_t k = 0; k < c.num_nextn_predict_layers; ++k) {
    const int64_t layer = c.num_hidden_layers + k;
    const std::string p = "model.layers." + std::to_string(layer) + ".";
    out.push_back({p + "embed_tokens.weight", {V, D}});
    out.push_back({p + "enorm.weight", {D}});
    out.push_back({p + "hnorm.weight", {D}});
    out.push_back({p + "eh_proj.weight", {D, 2 * D}});
    add_layer(out, c, layer);
    out.push_back({p + "shared_head.norm.weight", {D}});
    out.push_back({p + "shared_head.head.weight", {V, D}});
  }
  return out;
}

// Layer index of "model.layers.<i>.<...>", or -1.
int64_t layer_of(const std::string& name) {
  static const std::string prefix = "model.layers.";
  if (name.compare(0, prefix.size(), prefix) != 0) return -1;
  int64_t layer = 0;
  size_t i = prefix.size();
  if (i >= name.size() || name[i] < '0' || name[i] > '9') return -1;
  for (; i < name.size() && name[i] >= '0' && name[i] <= '9'; ++i) {
    if (layer > (int64_t(1) << 40)) return -1;
    layer = layer * 10 + (name[i] - '0');
  }
  return i < name.size() && name[i] == '.' ? layer : -1;
}

class Tally {
 public:
  explicit Tally(const ModelConfig& c) : c_(c) {}

  void add(const std::string& name, int64_t count) {
    out_.total = checked_add(out_.total, count);
    int64_t layer = layer_of(name);
    if (layer >= c_.num_hidden_layers) {
      out_.mtp = checked_add(out_.mtp, count);
      return;
    }
    if (layer >= 0 && name.find(".mlp.experts.") != std::string::npos) {
      routed_[layer] = checked_add(routed_[layer], count);
      return;
    }
    if (name == "model.embed_tokens.weight" && !c_.tie_word_embeddings) return;  // a lookup
    out_.active = checked_add(out_.active, count);
  }

  ParamCount finish() const {
    ParamCount out = out_;
    for (const auto& [layer, routed] : routed_) {
      int64_t experts = c_.n_routed_experts > 0 ? c_.n_routed_experts : 1;
      int64_t k = std::min(c_.num_experts_per_tok, experts);
      out.active = checked_add(out.active, int64_t((__int128)routed * k / experts));
    }
    return out;
  }

 private:
  const ModelConfig& c_;
  ParamCount out_;
  std::map<int64_t, int64_t> routed_;
};

}  // namespace

std::vector<std::pair<std::string, Shape>> checkpoint_tensor_shapes(const ModelConfig& config) {
  std::vector<std::pair<std::string, Shape>> out;
  for (const Entry& e : checkpoint_entries(config)) {
    size_t at = e.name.find("{e}");
    if (at == std::string::npos) {
      out.emplace_back(e.name, e.shape);
      continue;
    }
    for (int64_t x = 0; x < e.copies; ++x) {
      out.emplace_back(e.name.substr(0, at) + std::to_string(x) + e.name.substr(at + 3), e.shape);
    }
  }
  return out;
}

ParamCount count_params(const ModelConfig& config) {
  Tally tally(config);
  for (const Entry& e : checkpoint_entries(config)) {
    tally.add(e.name, checked_mul(checked_numel(e.shape), e.copies));
  }
  return tally.finish();
}

ParamCount count_stored_params(const WeightStore& store, const ModelConfig& config) {
  Tally tally(config);
  static const std::string scale_suffix = "_scale_inv";
  for (const auto& file : store.files()) {
    for (const auto& [name, info] : file->tensors()) {
      if (!store.has(name) || store.file_of(name) != file->path()) continue;  // not in the index
      if (name.size() >= scale_suffix.size() &&
          name.compare(name.size() - scale_suffix.size(), scale_suffix.size(), scale_suffix) == 0) {
        continue;
      }
      tally.add(name, checked_numel(info.shape));
    }
  }
  return tally.finish();
}

int64_t kv_cache_bytes_per_token(const ModelConfig& config, DType dtype) {
  int64_t per_layer = config.is_mla()
                          ? config.kv_lora_rank + config.qk_rope_head_dim
                          : checked_mul(2 * config.num_key_value_heads, config.head_dim);
  return checked_mul(checked_mul(per_layer, config.num_hidden_layers), int64_t(dtype_size(dtype)));
}

}  // namespace dseek
