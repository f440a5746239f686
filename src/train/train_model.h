// TrainModel: the whole DeepSeek model for training, a batch of sequences at a time, over a ParamSet that
// holds every tensor under its Hugging Face name. Forward:
//   x = embed(inputs); x = Block_l(x) for each layer; h⁰ = norm(x); logits = head(h⁰)
//   main loss = CE(logits, targets)
//   MTP depth k = 1..D (DeepSeek-V3 §2.2; layer L+k−1, embedding and head shared with the main
//   model): row i < T−k sees h^{k−1}_i and the embedding of inputs[i+k] and predicts
//   targets[i+k]:  h^k = Block(eh_proj([enorm(emb(inputs[i+k])); hnorm(h^{k−1}_i)]))
//   MTP loss = λ/D · Σ_k CE(head(shared_head.norm(h^k)), targets[k..])
//   total = main + MTP + Σ_MoE layers balance loss (α inside, see BalanceOptions)
// h⁰ is the output after the final norm, as the inference model's forward_mtp feeds it (vLLM's
// convention for real V3 checkpoints), so trained MTP heads draft correctly at inference.
// targets[i] is normally inputs[i+1]; ops::kIgnoreIndex masks a position (SFT prompts).
// Device: the whole forward and backward runs where the ParamSet's tensors live (layers.h): on a
// GPU the activations are bf16 when params.compute_dtype() is bf16, else f32; the token ids are
// host vectors uploaded by the ops, and the losses come back as doubles.
#pragma once

#include <cstdint>
#include <functional>
#include <string>
#include <vector>

#include "model/config.h"
#include "model/init_weights.h"
#include "model/rope.h"
#include "ops/cross_entropy.h"
#include "train/layers.h"
#include "train/param.h"

namespace dseek::train {

struct LossOptions {
  double mtp_lambda = 0.0;  // λ; 0 skips the MTP modules entirely
  BalanceOptions balance;
  // Per-token weighting of the main loss (DPO, train/dpo.h): called between forward and backward
  // with log p(target_t) of every position (0 where the target is ignored); returns one weight per
  // position, and the main loss becomes Σ_t w_t·CE_t (a weighted sum, not a mean) with gradient
  // Σ_t w_t·∂CE_t. Unset: the mean cross-entropy over counted targets.
  std::function<std::vector<float>(const std::vector<double>& token_logp)> token_weights;
  // Fill SequenceLosses::token_logp (DPO's reference pass reads it; token_weights fills it
  // anyway). On the GPU that reads the picked logits and log-sum-exps back mid-step: a pause the
  // backward's launches then wait for, which a plain language-model step leaves out.
  bool token_logp = true;
  // Data parallelism's exact means (SFT, trainer.cpp): factors the cross-entropy means are
  // multiplied by, loss and gradient: [0] the main head's (unless token_weights is set), [k] MTP
  // depth k's. The trainer's are count·N / Σ_ranks count, so the ranks' summed gradients are of
  // the mean over every rank's targets. Missing entries are 1.
  std::vector<double> ce_shares;
  // Called in backward right after block `layer` (main layers L−1..0, MTP blocks L+k−1) has added
  // its gradients to its own parameters (self_attn.*, mlp.*, input_layernorm,
  // post_attention_layernorm; not an MTP module's enorm/hnorm/eh_proj/shared_head): data
  // parallelism starts reducing those gradients while the rest of backward runs.
  std::function<void(int64_t layer)> on_block_backward;
  // Expert parallelism (train/expert_parallel.h): set, the MoE layers exchange their routed slots
  // with the experts' owners, so every rank must run the same forwards and backwards in step.
  const ExpertParallel* expert_parallel = nullptr;
};

struct SequenceLosses {
  double total = 0.0;               // main + MTP + aux: what the gradient is of
  double main_ce = 0.0;             // mean next-token cross-entropy of the main head (or, with
                                    // LossOptions::token_weights, the weighted sum)
  int64_t main_tokens = 0;          // targets counted in main_ce
  std::vector<double> mtp_ce;       // per depth
  double aux = 0.0;                 // Σ balance losses
  std::vector<std::vector<int64_t>> expert_load;  // per MoE layer (moe_layers() order)
  std::vector<double> token_logp;   // log p(target_t) of the main head, 0 at ignored targets
};

// Everything one MTP depth keeps for its backward.
struct MtpCache {
  std::vector<int32_t> ids, targets;
  Tensor e_in, h_prev, cat, h, logits;
  BlockCache block;
  ops::CrossEntropyResult ce;
  double share = 1.0;  // LossOptions::ce_shares[k]
};

// What the final norm, the head, the cross-entropy and the MTP modules keep for their backward.
struct HeadCache {
  Tensor x_final, h0, logits;
  ops::CrossEntropyResult ce;
  std::vector<float> weights;  // LossOptions::token_weights' result
  bool weighted = false;       // the main loss is the weighted sum (token_weights was set)
  double main_share = 1.0;     // LossOptions::ce_shares[0] (without token weights)
  std::vector<MtpCache> mtp;
  std::vector<Segments> mtp_segments;
  double mtp_weight = 0.0;
};

// The tensors one pipeline stage holds (train/pipeline_parallel.h): the main layers
// [first_layer, last_layer), the embedding where `embedding` is set (the first stage; the last
// one too when its head or MTP modules share it), the final norm, lm_head and MTP modules where
// `head` is set. The default is the whole model.
struct ModelPart {
  int64_t first_layer = 0, last_layer = -1;  // -1: num_hidden_layers
  bool embedding = true, head = true;
};
// Buffers among the tensors (e_score_correction_bias): in the ParamSet, not trained by AdamW.
bool is_training_buffer(const std::string& name);
// Whether tensor `name` (a checkpoint_layout name) belongs to `part`.
bool in_part(const ModelConfig& config, const ModelPart& part, const std::string& name);

class TrainModel {
 public:
  // Checks that `params` holds every tensor of `part` of the config, with the right shapes. With
  // `synth` (kept by the caller, outliving the model), the projections it replaces are its
  // operator's weights instead (SynthOverride::replace_params) and run through it.
  TrainModel(const ModelConfig& config, ParamSet& params, const ModelPart& part = ModelPart(),
             SynthOverride* synth = nullptr);

  // Fills an empty ParamSet for `config` (the tensors of `part`): model/init_weights.h's layout
  // and per-tensor streams (normal(0, std) matrices, unit norms), e_score_correction_bias as a
  // zero buffer, no separate MTP embedding/head (shared with the main model). Weight decay:
  // matrices only. A part gets exactly the values the whole model has for its tensors.
  static void init_params(const ModelConfig& config, uint64_t seed, double std, ParamSet& params,
                          const ModelPart& part = ModelPart());
  // The tensors init_params adds for the whole model, in its order (the checkpoint's order).
  static std::vector<WeightSpec> param_specs(const ModelConfig& config);
  // Loads every tensor of a checkpoint directory (f32 copies); MTP embed/head copies are dropped.
  static void load_params(const ModelConfig& config, const std::string& dir, ParamSet& params);

  // Forward and backward of a batch: inputs/targets hold N/seq_len sequences of seq_len tokens
  // back to back (seq_len 0: one sequence of all N). Adds loss_scale · ∂total/∂θ to the grads;
  // the cross-entropies are means over all counted targets of the batch.
  SequenceLosses forward_backward(const std::vector<int32_t>& inputs,
                                  const std::vector<int32_t>& targets, const LossOptions& options,
                                  float loss_scale, int64_t seq_len = 0);
  // The same for sequences of any lengths (documents packed into rows, layers.h's Segments):
  // each attends only within itself, with RoPE positions, MTP shifts and the sequence-wise
  // balance loss per segment, so a packed document trains exactly as if it were alone.
  SequenceLosses forward_backward(const std::vector<int32_t>& inputs,
                                  const std::vector<int32_t>& targets, const LossOptions& options,
                                  float loss_scale, const Segments& segments);
  // Forward only (validation). No gradients are touched.
  SequenceLosses forward(const std::vector<int32_t>& inputs, const std::vector<int32_t>& targets,
                         const LossOptions& options, int64_t seq_len = 0);
  SequenceLosses forward(const std::vector<int32_t>& inputs, const std::vector<int32_t>& targets,
                         const LossOptions& options, const Segments& segments);

  // The pieces forward_backward runs in sequence, for pipeline stages that run some of them
  // (train/pipeline_parallel.h): embedding, main blocks [first, last), then the final norm, head,
  // cross-entropy and MTP modules (head_forward returns the main and MTP losses without the
  // balance losses, which add_block_stats / add_mtp_stats add with the loads). Each backward
  // adds its parameters' gradients and returns the gradient of its input.
  void check_batch(const std::vector<int32_t>& inputs, const std::vector<int32_t>& targets,
                   const Segments& segments) const;
  DType activation_dtype() const;
  Tensor embed_forward(const std::vector<int32_t>& inputs);
  void embed_backward(const std::vector<int32_t>& inputs, const Tensor& dx);
  Tensor blocks_forward(int64_t first, int64_t last, Tensor x, const Segments& segments,
                        const LossOptions& options, std::vector<BlockCache>& blocks);
  Tensor blocks_backward(int64_t first, int64_t last, const std::vector<BlockCache>& blocks,
                         Tensor dx, const LossOptions& options, float loss_scale);
  SequenceLosses head_forward(const Tensor& x_final, const std::vector<int32_t>& inputs,
                              const std::vector<int32_t>& targets, const LossOptions& options,
                              const Segments& segments, HeadCache& cache);
  Tensor head_backward(HeadCache& cache, const std::vector<int32_t>& targets,
                       const LossOptions& options, float loss_scale);
  static void add_block_stats(const std::vector<BlockCache>& blocks, SequenceLosses& out);
  void add_mtp_stats(const HeadCache& cache, SequenceLosses& out) const;

  // Prefixes ("model.layers.<i>.mlp") of the MoE layers, main layers then MTP blocks: the order
  // of SequenceLosses::expert_load.
  const std::vector<std::string>& moe_layers() const { return moe_layers_; }
  const ModelConfig& config() const { return config_; }
  ParamSet& params() { return params_; }
  SynthOverride* synth() const { return synth_; }

 private:
  // The embedding's rows as the lookup reads them: the f32 master, or for a split one (a tied
  // embedding on the GPU) its bf16 high half, which the bf16 activations round to anyway.
  const Tensor& embedding_table();
  SequenceLosses run(const std::vector<int32_t>& inputs, const std::vector<int32_t>& targets,
                     const LossOptions& options, bool backward, float loss_scale,
                     const Segments& segments);

  ModelConfig config_;
  RopeParams rope_;
  ParamSet& params_;
  SynthOverride* synth_ = nullptr;
  std::vector<std::string> moe_layers_;
};

}  // namespace dseek::train
