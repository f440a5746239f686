// `dseek info --model DIR [--json]`: what a checkpoint is — architecture, sizes, stored dtypes,
// parameter counts (stored and analytic from config.json), active parameters per token, KV-cache
// bytes per token and context length. The weights are optional: a directory with only
// config.json gets the analytic figures.
#include <filesystem>
#include <iostream>
#include <map>
#include <nlohmann/json.hpp>
#include <optional>

#include "cli/commands.h"
#include "core/error.h"
#include "model/config.h"
#include "model/param_count.h"
#include "model/safetensors.h"

namespace dseek::cli {

namespace {

using json = nlohmann::ordered_json;

std::string attention_kind(const ModelConfig& c) {
  if (c.is_mla()) return "MLA";
  return c.num_key_value_heads == c.num_attention_heads ? "MHA" : "GQA";
}

std::string gate_variant(const ModelConfig& c) {
  if (c.n_routed_experts == 0) return "none";
  return c.scoring_func + " + " + c.topk_method;
}

// 671026522112 -> "671.03B".
std::string human(int64_t n) {
  const char* units[] = {"", "K", "M", "B", "T"};
  double v = double(n);
  int u = 0;
  while (v >= 1000.0 && u < 4) v /= 1000.0, ++u;
  return u == 0 ? std::to_string(n) : fmt::format("{:.2f}{}", v, units[u]);
}

json count_json(const ParamCount& p) {
  return {{"total", p.total}, {"mtp", p.mtp}, {"active", p.active}};
}

void run_info(const std::string& dir, bool as_json) {
  std::error_code ec;
  DSEEK_CHECK(std::filesystem::is_directory(dir, ec), "[info] {}: not a directory", dir);
  ModelConfig c = load_model_config(dir);
  ParamCount analytic = count_params(c);
  bool has_weights =
      std::filesystem::exists(std::filesystem::path(dir) / "model.safetensors", ec) ||
      std::filesystem::exists(std::filesystem::path(dir) / "model.safetensors.index.json", ec);
  std::optional<ParamCount> stored;
  std::map<std::string, int64_t> dtypes;  // stored dtype -> tensor count
  if (has_weights) {
    WeightStore store = WeightStore::open(dir);
    stored = count_stored_params(store, c);
    for (const auto& file : store.files()) {
      for (const auto& [name, info] : file->tensors()) {
        if (store.has(name) && store.file_of(name) == file->path())
          ++dtypes[std::string(dtype_name(info.dtype))];
      }
    }
  }
  const int64_t kv_bf16 = kv_cache_bytes_per_token(c, DType::BF16);
  const int64_t kv_f32 = kv_cache_bytes_per_token(c, DType::F32);
  const RopeScaling& r = c.rope_scaling;

  if (as_json) {
    json j;
    j["model"] = dir;
    j["model_type"] = c.model_type;
    j["attention"] = attention_kind(c);
    j["gate"] = gate_variant(c);
    j["num_hidden_layers"] = c.num_hidden_layers;
    j["num_nextn_predict_layers"] = c.num_nextn_predict_layers;
    j["first_k_dense_replace"] = c.first_k_dense_replace;
    j["hidden_size"] = c.hidden_size;
    j["num_attention_heads"] = c.num_attention_heads;
    j["num_key_value_heads"] = c.num_key_value_heads;
    j["n_routed_experts"] = c.n_routed_experts;
    j["n_shared_experts"] = c.n_shared_experts;
    j["num_experts_per_tok"] = c.num_experts_per_tok;
    j["vocab_size"] = c.vocab_size;
    j["stored_dtypes"] = dtypes;
    j["params_stored"] = stored ? count_json(*stored) : json(nullptr);
    j["params_analytic"] = count_json(analytic);
    j["kv_cache_bytes_per_token"] = {{"bf16", kv_bf16}, {"f32", kv_f32}};
    j["max_position_embeddings"] = c.max_position_embeddings;
    j["rope"] = {{"type", r.type}, {"theta", c.rope_theta}, {"factor", r.factor}};
    if (r.type == "yarn")
      j["rope"]["original_max_position_embeddings"] = r.original_max_position_embeddings;
    std::cout << j.dump(2) << "\n";
    return;
  }

  std::string attention = attention_kind(c);
  if (c.is_mla()) {
    attention += fmt::format(" (q_lora_rank {}, kv_lora_rank {}, qk {}+{}, v {})", c.q_lora_rank,
                             c.kv_lora_rank, c.qk_nope_head_dim, c.qk_rope_head_dim, c.v_head_dim);
  } else {
    attention += fmt::format(" (head_dim {})", c.head_dim);
  }
  fmt::print("model          {}\n", dir);
  fmt::print("architecture   {}: {} attention, {}\n", c.model_type, attention,
             c.n_routed_experts > 0 ? gate_variant(c) + " gate" : "dense MLP (no MoE)");
  fmt::print(
      "layers         {}{}{}\n", c.num_hidden_layers,
      c.n_routed_experts > 0 ? fmt::format(" (first {} dense, MoE every {})",
                                           c.first_k_dense_replace, c.moe_layer_freq)
                             : "",
      c.num_nextn_predict_layers > 0 ? fmt::format(" + {} MTP", c.num_nextn_predict_layers) : "");
  fmt::print("hidden         {} (dense MLP {})\n", c.hidden_size, c.intermediate_size);
  fmt::print("heads          {} query, {} key/value\n", c.num_attention_heads,
             c.num_key_value_heads);
  if (c.n_routed_experts > 0) {
    fmt::print("experts        {} routed (top-{}, width {}), {} shared", c.n_routed_experts,
               c.num_experts_per_tok, c.moe_intermediate_size, c.n_shared_experts);
    if (c.topk_method != "greedy") fmt::print(", {} groups (top-{})", c.n_group, c.topk_group);
    fmt::print("\n");
  } else {
    fmt::print("experts        none (dense)\n");
  }
  fmt::print("vocab          {}\n", c.vocab_size);
  std::string dtype_list;
  for (const auto& [dtype, count] : dtypes) {
    dtype_list += fmt::format("{}{} ({} tensors)", dtype_list.empty() ? "" : ", ", dtype, count);
  }
  fmt::print("stored dtypes  {}\n", has_weights ? dtype_list : "no weights");
  if (stored) {
    fmt::print("parameters     {} stored ({}), of which MTP {}\n", human(stored->total),
               stored->total, human(stored->mtp));
  }
  fmt::print("               {} from config.json ({}), of which MTP {}\n", human(analytic.total),
             analytic.total, human(analytic.mtp));
  const ParamCount& shown = stored ? *stored : analytic;
  fmt::print(
      "active/token   {} ({}; {}output head counted, embedding lookup not)\n", human(shown.active),
      shown.active,
      c.n_routed_experts > 0 ? fmt::format("top-{} routed experts, ", c.num_experts_per_tok) : "");
  fmt::print("KV cache/token {} bytes bf16, {} bytes f32 ({})\n", kv_bf16, kv_f32,
             c.is_mla() ? "latent c_kv + k_pe" : "keys + values");
  std::string rope = fmt::format("rope theta {}", c.rope_theta);
  if (r.type == "yarn") {
    rope += fmt::format(", yarn factor {} from {} (beta {}/{}, mscale {}/{})", r.factor,
                        r.original_max_position_embeddings, r.beta_fast, r.beta_slow, r.mscale,
                        r.mscale_all_dim);
  } else if (r.type == "linear") {
    rope += fmt::format(", linear factor {}", r.factor);
  }
  fmt::print("context        {} tokens, {}\n", c.max_position_embeddings, rope);
}

}  // namespace

void add_info_command(CLI::App& app) {
  auto* cmd = app.add_subcommand(
      "info", "Describe a checkpoint: architecture, sizes, parameters, KV cache");
  auto model = std::make_shared<std::string>();
  auto as_json = std::make_shared<bool>(false);
  cmd->add_option("--model", *model, "checkpoint directory (config.json + safetensors)")
      ->required();
  cmd->add_flag("--json", *as_json, "print the same facts as JSON");
  cmd->callback([model, as_json] { run_info(*model, *as_json); });
}

}  // namespace dseek::cli
