#include "train/train_model.h"

#include <algorithm>
#include <cstdlib>
#include <limits>

#include "core/env.h"
#include "core/error.h"
#include "model/init_weights.h"
#include "model/safetensors.h"
#include "ops/activation.h"
#include "ops/cross_entropy.h"
#include "ops/embedding.h"
#include "ops/fp8_nan_check.h"
#include "ops/fp8_train.h"
#include "ops/linear.h"
#include "ops/norm.h"
#include "train/optimizer.h"
#include "train/synth_override.h"

namespace dseek::train {
namespace {

// MTP modules share the main embedding and head in training (DeepSeek-V3 §2.2).
bool is_shared_mtp_tensor(const ModelConfig& c, const std::string& name) {
  for (int64_t k = 0; k < c.num_nextn_predict_layers; ++k) {
    const std::string p = "model.layers." + std::to_string(c.num_hidden_layers + k);
    if (name == p + ".embed_tokens.weight" || name == p + ".shared_head.head.weight") return true;
  }
  return false;
}


// logits[t, targets[t]] of every row (0 at ignored targets), on the host. On the GPU the values are
// gathered there (ops::embedding over the logits seen as a [rows·V, 1] table, in chunks of rows
// whose flat index fits the op's i32 ids) so only T floats come back.
std::vector<float> target_logits(const Tensor& logits, const std::vector<int32_t>& targets) {
  const int64_t T = logits.size(0), V = logits.size(1);
  std::vector<float> out(size_t(T), 0.0f);
  const Tensor flat = logits.contiguous();
  if (!flat.is_cuda()) {
    const float* lg = flat.data<float>();
    for (int64_t t = 0; t < T; ++t)
      if (targets[size_t(t)] != ops::kIgnoreIndex) out[size_t(t)] = lg[t * V + targets[size_t(t)]];
    return out;
  }
  const int64_t chunk = std::max<int64_t>(1, std::numeric_limits<int32_t>::max() / V);
  for (int64_t a = 0; a < T; a += chunk) {
    const int64_t b = std::min(T, a + chunk);
    std::vector<int32_t> ids(size_t(b - a));
    for (int64_t t = a; t < b; ++t) {
      const int32_t target = targets[size_t(t)];
      ids[size_t(t - a)] = int32_t((t - a) * V + (target == ops::kIgnoreIndex ? 0 : target));
    }
    const std::vector<float> got =
        ops::embedding(flat.slice(0, a, b).reshape({(b - a) * V, 1}), ids).to_vector();
    for (int64_t t = a; t < b; ++t)
      if (targets[size_t(t)] != ops::kIgnoreIndex) out[size_t(t)] = got[size_t(t - a)];
  }
  return out;
}

// An untied model's embedding is only looked up (Param::lookup_only): the head has a matrix of
// its own, so no stage or set multiplies the embedding.
void mark_lookup_only(const ModelConfig& config, ParamSet& params) {
  const std::string embed = "model.embed_tokens.weight";
  if (!config.tie_word_embeddings && params.has(embed)) params.at(embed).lookup_only = true;
}

}  // namespace

bool is_training_buffer(const std::string& name) {
  return name.ends_with(".e_score_correction_bias");
}

bool in_part(const ModelConfig& config, const ModelPart& part, const std::string& name) {
  if (name == "model.embed_tokens.weight") return part.embedding;
  if (name == "model.norm.weight" || name == "lm_head.weight") return part.head;
  const std::string prefix = "model.layers.";
  DSEEK_CHECK(name.compare(0, prefix.size(), prefix) == 0, "[train] tensor '{}' has no model part",
              name);
  const int64_t layer = std::stoll(name.substr(prefix.size()));
  const int64_t last = part.last_layer < 0 ? config.num_hidden_layers : part.last_layer;
  if (layer >= config.num_hidden_layers) return part.head;  // an MTP module
  return layer >= part.first_layer && layer < last;
}

std::vector<WeightSpec> TrainModel::param_specs(const ModelConfig& config) {
  std::vector<WeightSpec> specs;
  for (const WeightSpec& spec : checkpoint_layout(config))
    if (!is_shared_mtp_tensor(config, spec.name)) specs.push_back(spec);
  return specs;
}

void TrainModel::init_params(const ModelConfig& config, uint64_t seed, double std,
                             ParamSet& params, const ModelPart& part) {
  DSEEK_CHECK(params.size() == 0, "[train] init_params needs an empty ParamSet");
  InitOptions options;
  options.dtype = DType::F32;
  options.seed = seed;
  options.std = std;
  for (const WeightSpec& spec : param_specs(config)) {
    if (!in_part(config, part, spec.name)) continue;
    if (is_training_buffer(spec.name)) {
      params.add(spec.name, Tensor::zeros(spec.shape), false, false);
    } else {
      params.add(spec.name, init_tensor(spec, options), true, decays(spec.name));
    }
  }
  mark_lookup_only(config, params);
}

void TrainModel::load_params(const ModelConfig& config, const std::string& dir,
                             ParamSet& params) {
  DSEEK_CHECK(params.size() == 0, "[train] load_params needs an empty ParamSet");
  const WeightStore store = WeightStore::open(dir);
  for (const WeightSpec& spec : checkpoint_layout(config)) {
    if (is_shared_mtp_tensor(config, spec.name)) continue;
    if (config.tie_word_embeddings && spec.name == "lm_head.weight") continue;
    const Tensor t = store.get_weight(spec.name, spec.shape);
    params.add(spec.name, t, !is_training_buffer(spec.name), decays(spec.name));
  }
  mark_lookup_only(config, params);
}

TrainModel::TrainModel(const ModelConfig& config, ParamSet& params, const ModelPart& part,
                       SynthOverride* synth)
    : config_(config), rope_(rope_params(config)), params_(params), synth_(synth) {
  validate_model_config(config_, "training model");
  DSEEK_CHECK(config_.hidden_act == "silu", "[train] hidden_act '{}': only silu is supported",
              config_.hidden_act);
  DSEEK_CHECK(!config_.mlp_bias && !config_.attention_bias,
              "[train] mlp_bias / attention_bias: training supports bias-free layers only");
  for (const WeightSpec& spec : param_specs(config_)) {
    if (!in_part(config_, part, spec.name)) continue;
    if (synth_ && synth_->replaces(spec.name)) {
      DSEEK_CHECK(!params_.has(spec.name),
                  "[train] parameter '{}' is replaced by the synthesised operator {} but is still "
                  "in the parameters (SynthOverride::replace_params)",
                  spec.name, synth_->source());
      const std::vector<std::string> names = synth_->param_names(spec.name);
      const std::vector<Shape> shapes = synth_->param_shapes(spec.name);
      for (size_t w = 0; w < names.size(); ++w)
        DSEEK_CHECK(params_.at(names[w]).shape() == shapes[w],
                    "[train] parameter '{}' has shape {}, expected {}", names[w],
                    shape_str(params_.at(names[w]).shape()), shape_str(shapes[w]));
      continue;
    }
    const Param& p = params_.at(spec.name);
    DSEEK_CHECK(p.shape() == spec.shape, "[train] parameter '{}' has shape {}, expected {}",
                spec.name, shape_str(p.shape()), shape_str(spec.shape));
  }
  const int64_t layers = config_.num_hidden_layers + config_.num_nextn_predict_layers;
  for (int64_t l = 0; l < layers; ++l)
    if (config_.is_moe_layer(l)) moe_layers_.push_back("model.layers." + std::to_string(l) + ".mlp");
  // The embedding's gradient: a batch writes only its tokens' rows (ops/grad_rows.h). A tied head
  // writes every row, so its flags would only cost a fill a step. DSEEK_GRAD_ROWS=0: no flags
  // (every row read, summed and zeroed, as before), for comparisons.
  static const bool grad_rows = [] { return !env_is("DSEEK_GRAD_ROWS", "0"); }();
  const std::string embed = "model.embed_tokens.weight";
  if (grad_rows && !config_.tie_word_embeddings && params_.has(embed) &&
      params_.at(embed).trainable)
    params_.track_grad_rows(embed);
}

namespace {

// seq_len 0: the whole batch is one sequence.
Segments segments_of(int64_t tokens, int64_t seq_len) {
  return seq_len > 0 ? equal_segments(tokens, seq_len) : Segments{tokens};
}

}  // namespace

SequenceLosses TrainModel::forward_backward(const std::vector<int32_t>& inputs,
                                            const std::vector<int32_t>& targets,
                                            const LossOptions& options, float loss_scale,
                                            int64_t seq_len) {
  return run(inputs, targets, options, true, loss_scale, segments_of(int64_t(inputs.size()), seq_len));
}

SequenceLosses TrainModel::forward_backward(const std::vector<int32_t>& inputs,
                                            const std::vector<int32_t>& targets,
                                            const LossOptions& options, float loss_scale,
                                            const Segments& segments) {
  return run(inputs, targets, options, true, loss_scale, segments);
}

SequenceLosses TrainModel::forward(const std::vector<int32_t>& inputs,
                                   const std::vector<int32_t>& targets,
                                   const LossOptions& options, int64_t seq_len) {
  return run(inputs, targets, options, false, 0.0f, segments_of(int64_t(inputs.size()), seq_len));
}

SequenceLosses TrainModel::forward(const std::vector<int32_t>& inputs,
                                   const std::vector<int32_t>& targets,
                                   const LossOptions& options, const Segments& segments) {
  return run(inputs, targets, options, false, 0.0f, segments);
}

void TrainModel::check_batch(const std::vector<int32_t>& inputs,
                             const std::vector<int32_t>& targets, const Segments& segments) const {
  const int64_t T = int64_t(inputs.size());
  DSEEK_CHECK(T > 0 && targets.size() == inputs.size(),
              "[train] sequence: {} inputs and {} targets (need equal, non-zero)", inputs.size(),
              targets.size());
  check_segments(segments, T, "training batch");
  for (size_t i = 0; i < inputs.size(); ++i)
    DSEEK_CHECK(inputs[i] >= 0 && inputs[i] < config_.vocab_size,
                "[train] token id {} at position {} is outside the vocabulary [0, {})", inputs[i],
                i, config_.vocab_size);
}

// Everything runs on the params' device; activations are bf16 there when the compute copies are
// (the CUDA linear multiplies in one dtype), else f32 (the CPU widens bf16 weights itself).
DType TrainModel::activation_dtype() const {
  return params_.device() == Device::CUDA && params_.compute_dtype() == DType::BF16 ? DType::BF16
                                                                                    : DType::F32;
}

const Tensor& TrainModel::embedding_table() {
  const Param& p = params_.at("model.embed_tokens.weight");
  return p.split() ? p.compute : p.value;
}

Tensor TrainModel::embed_forward(const std::vector<int32_t>& inputs) {
  // Only the rows of `inputs` are read: AdamW::step_async may still be updating the others
  // (its next_lookup), and then the lookup waits for these rows alone.
  const Param& p = params_.at_for_lookup("model.embed_tokens.weight", inputs);
  return ops::embedding(p.split() ? p.compute : p.value, inputs, activation_dtype());
}

void TrainModel::embed_backward(const std::vector<int32_t>& inputs, const Tensor& dx) {
  Param& e = params_.at("model.embed_tokens.weight");
  ops::embedding_backward_accumulate(inputs, dx, grad_rows_to_add(e), e.grad_rows);
}

Tensor TrainModel::blocks_forward(int64_t first, int64_t last, Tensor x, const Segments& segments,
                                  const LossOptions& options, std::vector<BlockCache>& blocks) {
  const LayerContext ctx{config_, rope_, params_, options.expert_parallel, synth_};
  blocks.assign(size_t(last - first), BlockCache());
  for (int64_t l = first; l < last; ++l)
    x = block_forward(ctx, l, x, segments, options.balance, blocks[size_t(l - first)]);
  return x;
}

Tensor TrainModel::blocks_backward(int64_t first, int64_t last,
                                   const std::vector<BlockCache>& blocks, Tensor dx,
                                   const LossOptions& options, float loss_scale) {
  const LayerContext ctx{config_, rope_, params_, options.expert_parallel, synth_};
  for (int64_t l = last - 1; l >= first; --l) {
    dx = block_backward(ctx, l, blocks[size_t(l - first)], dx, loss_scale);
    if (options.on_block_backward) options.on_block_backward(l);
  }
  return dx;
}

void TrainModel::add_block_stats(const std::vector<BlockCache>& blocks, SequenceLosses& out) {
  for (const BlockCache& b : blocks) {
    if (!b.is_moe) continue;
    out.aux += b.moe.aux_loss;
    out.expert_load.push_back(moe_expert_load(b.moe));
  }
}

void TrainModel::add_mtp_stats(const HeadCache& head, SequenceLosses& out) const {
  const ModelConfig& c = config_;
  for (const MtpCache& m : head.mtp)
    if (m.block.is_moe) {
      out.aux += m.block.moe.aux_loss;
      out.expert_load.push_back(moe_expert_load(m.block.moe));
    }
  // MTP depths skipped (λ = 0 or a short sequence) report zero load so the layout stays fixed.
  for (size_t k = head.mtp.size(); k < size_t(c.num_nextn_predict_layers); ++k)
    if (c.is_moe_layer(c.num_hidden_layers + int64_t(k)))
      out.expert_load.emplace_back(size_t(c.n_routed_experts), 0);
}

SequenceLosses TrainModel::head_forward(const Tensor& x_final, const std::vector<int32_t>& inputs,
                                        const std::vector<int32_t>& targets,
                                        const LossOptions& options, const Segments& segments,
                                        HeadCache& hc) {
  const ModelConfig& c = config_;
  const int64_t T = int64_t(inputs.size()), D = c.hidden_size, L = c.num_hidden_layers;
  const LayerContext ctx{c, rope_, params_, options.expert_parallel, synth_};
  const std::string head = c.tie_word_embeddings ? "model.embed_tokens.weight" : "lm_head.weight";
  const double eps = c.rms_norm_eps;
  const Device device = params_.device();
  const DType act = activation_dtype();
  hc.x_final = x_final;
  hc.h0 = norm_forward(params_, "model.norm.weight", hc.x_final, eps);
  const Tensor& h0 = hc.h0;
  hc.logits = linear_forward(params_, head, h0);
  Tensor& logits = hc.logits;
  hc.ce = ops::cross_entropy_forward(logits, targets);
  const ops::CrossEntropyResult& ce = hc.ce;

  SequenceLosses out;
  out.main_tokens = ce.count;
  if (options.token_logp || options.token_weights) {
    out.token_logp.assign(size_t(T), 0.0);
    const std::vector<float> picked = target_logits(logits, targets);
    const std::vector<float> lse = ce.lse.to_vector();
    for (int64_t t = 0; t < T; ++t)
      if (targets[size_t(t)] != ops::kIgnoreIndex)
        out.token_logp[size_t(t)] = double(picked[size_t(t)]) - double(lse[size_t(t)]);
  }
  std::vector<float>& weights = hc.weights;
  weights.clear();
  hc.main_share = 1.0;
  hc.weighted = bool(options.token_weights);
  if (options.token_weights) {
    weights = options.token_weights(out.token_logp);
    DSEEK_CHECK(int64_t(weights.size()) == T, "[train] token_weights gave {} weights for {} tokens",
                weights.size(), T);
    out.main_ce = ops::weighted_cross_entropy_loss(logits, targets, ce, weights);
  } else {
    if (!options.ce_shares.empty()) hc.main_share = options.ce_shares[0];
    out.main_ce = ce.loss * hc.main_share;
  }
  out.total = out.main_ce;

  // Multi-token prediction.
  const int64_t depths = options.mtp_lambda > 0.0 ? c.num_nextn_predict_layers : 0;
  hc.mtp_weight = depths > 0 ? options.mtp_lambda / double(depths) : 0.0;
  const double mtp_weight = hc.mtp_weight;
  std::vector<MtpCache>& mtp = hc.mtp;
  mtp.clear();
  mtp.reserve(size_t(depths));
  // Segment lengths of h^{k−1} (k = 1: the main model's); depth k keeps rows i < n − k of each.
  std::vector<Segments>& mtp_segments = hc.mtp_segments;
  mtp_segments.assign(1, segments);
  for (int64_t k = 1; k <= depths; ++k) {
    // Per segment, rows i < n − k: the embedding of token i + k and h^{k−1}_i (whose segments
    // are n − k + 1 rows long), predicting target i + k.
    const Segments& prev_segments = mtp_segments.back();
    Segments seg_k;
    int64_t N = 0;
    for (int64_t n : segments) {
      seg_k.push_back(std::max<int64_t>(n - k, 0));
      N += seg_k.back();
    }
    if (N == 0) break;
    const int64_t layer = L + k - 1;
    const std::string p = "model.layers." + std::to_string(layer);
    MtpCache& m = mtp.emplace_back();
    const Tensor& prev = k == 1 ? h0 : mtp[size_t(k - 2)].h;
    m.h_prev = Tensor::empty({N, D}, act, device);
    int64_t src = 0, dst = 0, tok = 0;
    for (size_t b = 0; b < segments.size(); ++b) {
      const int64_t nk = seg_k[b];
      if (nk > 0) {
        m.ids.insert(m.ids.end(), inputs.begin() + tok + k, inputs.begin() + tok + k + nk);
        m.targets.insert(m.targets.end(), targets.begin() + tok + k, targets.begin() + tok + k + nk);
        m.h_prev.slice(0, dst, dst + nk).copy_from(prev.slice(0, src, src + nk));
      }
      tok += segments[b];
      src += prev_segments[b];
      dst += nk;
    }
    mtp_segments.push_back(seg_k);
    m.e_in = ops::embedding(embedding_table(), m.ids, act);
    const Tensor e = norm_forward(params_, p + ".enorm.weight", m.e_in, eps);
    const Tensor hn = norm_forward(params_, p + ".hnorm.weight", m.h_prev, eps);
    m.cat = Tensor::empty({N, 2 * D}, act, device);
    m.cat.slice(1, 0, D).copy_from(e);
    m.cat.slice(1, D, 2 * D).copy_from(hn);
    const Tensor xk = linear_forward(params_, p + ".eh_proj.weight", m.cat);
    m.h = block_forward(ctx, layer, xk, mtp_segments.back(), options.balance, m.block);
    m.logits = linear_forward(params_, head,
                              norm_forward(params_, p + ".shared_head.norm.weight", m.h, eps));
    m.ce = ops::cross_entropy_forward(m.logits, m.targets);
    m.share = size_t(k) < options.ce_shares.size() ? options.ce_shares[size_t(k)] : 1.0;
    out.mtp_ce.push_back(m.ce.loss * m.share);
    out.total += mtp_weight * m.ce.loss * m.share;
  }

  return out;
}

Tensor TrainModel::head_backward(HeadCache& hc, const std::vector<int32_t>& targets,
                                 const LossOptions& options, float loss_scale) {
  const ModelConfig& c = config_;
  const int64_t T = int64_t(targets.size()), D = c.hidden_size, L = c.num_hidden_layers;
  const LayerContext ctx{c, rope_, params_, options.expert_parallel, synth_};
  const std::string head = c.tie_word_embeddings ? "model.embed_tokens.weight" : "lm_head.weight";
  const double eps = c.rms_norm_eps;
  const Device device = params_.device();
  const DType act = activation_dtype();
  std::vector<MtpCache>& mtp = hc.mtp;
  const std::vector<Segments>& mtp_segments = hc.mtp_segments;
  const double mtp_weight = hc.mtp_weight;
  Tensor& logits = hc.logits;
  const Tensor& h0 = hc.h0;
  const ops::CrossEntropyResult& ce = hc.ce;
  std::vector<float>& weights = hc.weights;

  // Backward: MTP depths last to first (depth k+1 feeds the gradient of h^k), then the main model.
  std::vector<Tensor> d_hidden(mtp.size());  // gradient w.r.t. h^k from depth k+1, k ≥ 1
  Tensor dh0 = Tensor::zeros({T, D}, act, device);
  for (int64_t k = int64_t(mtp.size()); k >= 1; --k) {
    MtpCache& m = mtp[size_t(k - 1)];
    const int64_t layer = L + k - 1;
    const std::string p = "model.layers." + std::to_string(layer);
    const Tensor hn2 = norm_forward(params_, p + ".shared_head.norm.weight", m.h, eps);
    ops::cross_entropy_backward_inplace(m.logits, m.targets, m.ce,
                                        float(loss_scale * mtp_weight * m.share));
    const Tensor d_hn2 = linear_backward(params_, head, hn2, m.logits);
    Tensor dh = norm_backward(params_, p + ".shared_head.norm.weight", m.h, eps, d_hn2);
    if (d_hidden[size_t(k - 1)].defined()) ops::add_inplace(dh, d_hidden[size_t(k - 1)]);
    const Tensor dxk = block_backward(ctx, layer, m.block, dh, loss_scale);
    if (options.on_block_backward) options.on_block_backward(layer);
    const Tensor d_cat = linear_backward(params_, p + ".eh_proj.weight", m.cat, dxk);
    const Tensor de = d_cat.slice(1, 0, D).contiguous();
    const Tensor dhn = d_cat.slice(1, D, 2 * D).contiguous();
    const Tensor d_e_in = norm_backward(params_, p + ".enorm.weight", m.e_in, eps, de);
    Param& e = params_.at("model.embed_tokens.weight");
    ops::embedding_backward_accumulate(m.ids, d_e_in, grad_rows_to_add(e), e.grad_rows);
    const Tensor d_prev = norm_backward(params_, p + ".hnorm.weight", m.h_prev, eps, dhn);
    // Rows i < n − k of each segment of h^{k−1} received d_prev.
    const Segments& prev_segments = mtp_segments[size_t(k - 1)];
    const Segments& seg_k = mtp_segments[size_t(k)];
    Tensor& target = k == 1 ? dh0 : d_hidden[size_t(k - 2)];
    int64_t prev_rows = 0;
    for (int64_t n : prev_segments) prev_rows += n;
    if (!target.defined()) target = Tensor::zeros({prev_rows, D}, act, device);
    int64_t src = 0, dst = 0;
    for (size_t b = 0; b < seg_k.size(); ++b) {
      if (seg_k[b] > 0) {
        Tensor rows = target.slice(0, dst, dst + seg_k[b]);  // whole rows: contiguous
        ops::add_inplace(rows, d_prev.slice(0, src, src + seg_k[b]));
      }
      src += seg_k[b];
      dst += prev_segments[b];
    }
  }

  // (As the forward chose: the backward's options may not carry the forward's token weights, a
  // pipeline's last stage setting them per micro-batch.)
  if (hc.weighted) {
    for (float& w : weights) w *= loss_scale;
    ops::weighted_cross_entropy_backward_inplace(logits, targets, ce, weights);
  } else {
    ops::cross_entropy_backward_inplace(logits, targets, ce, float(loss_scale * hc.main_share));
  }
  ops::add_inplace(dh0, linear_backward(params_, head, h0, logits));
  return norm_backward(params_, "model.norm.weight", hc.x_final, eps, dh0);
}

SequenceLosses TrainModel::run(const std::vector<int32_t>& inputs,
                               const std::vector<int32_t>& targets, const LossOptions& options,
                               bool backward, float loss_scale, const Segments& segments) {
  check_batch(inputs, targets, segments);
  // The GPU's FP8 quantisations report NaN/Inf input in one read at the end instead of a
  // synchronisation each (ops/fp8_nan_check.h).
  ops::DeferredFp8Checks fp8_checks;
  // The weights do not change until the optimizer step: the FP8 linears quantise each once.
  ops::Fp8WeightCacheScope fp8_weights(&params_.fp8_images());
  const int64_t L = config_.num_hidden_layers;
  // Forward: embedding, main blocks, head (+ MTP); a pipeline stage runs a part of this.
  std::vector<BlockCache> blocks;
  const Tensor x_final = blocks_forward(0, L, embed_forward(inputs), segments, options, blocks);
  HeadCache hc;
  SequenceLosses out = head_forward(x_final, inputs, targets, options, segments, hc);
  // Balance losses and loads, main layers then MTP blocks.
  add_block_stats(blocks, out);
  add_mtp_stats(hc, out);
  out.total += out.aux;
  if (!backward) {
    params_.await_all();  // (the stream waits; the forward has waited for most of it already)
    ops::check_fp8_image_updates();
    fp8_checks.check();
    return out;
  }
  // Backward: MTP depths last to first and the main head (head_backward), then the main model.
  const Tensor dh = head_backward(hc, targets, options, loss_scale);
  const Tensor dx = blocks_backward(0, L, blocks, dh, options, loss_scale);
  embed_backward(inputs, dx);
  // Gradients zero_grad(true) left to writers that did not run (an expert-parallel rank without
  // rows for its experts) are zeros from here on, for every reader.
  params_.settle_grads();
  params_.await_all();  // (the stream waits; the forward has waited for most of it already)
  ops::check_fp8_image_updates();
  fp8_checks.check();
  return out;
}

}  // namespace dseek::train
