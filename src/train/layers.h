// Training forward and backward of every DeepSeek layer, side by side (llm.c style): each
// *_forward computes the layer's output and saves in a cache what its *_backward needs; each
// *_backward takes the gradient of the output, adds the parameter gradients into the ParamSet's
// grads (so gradient accumulation is just "don't zero") and returns the gradient of the input.
// Parameters are read from the ParamSet under their Hugging Face names, so the inference model
// (src/model) loads what training writes; tests compare the two forwards on the same weights.
//
// Devices: the layers run where the ParamSet's tensors live. Activations are f32, or bf16 on the
// GPU when the params' compute copies are bf16 (the CUDA linear multiplies in one dtype); grads are
// f32 on the params' device.
//
// Batched: x is [N, D] holding sequences back to back, their lengths in a Segments list (a
// batch of equal rows, or documents packed into rows: cu_seqlens as lengths); each sequence sits
// at positions 0 .. length − 1 and attends causally only within itself (every other op works per
// token, so the linears run as one large GEMM over the whole batch).
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "core/tensor.h"
#include "model/config.h"
#include "model/gate.h"
#include "model/rope.h"
#include "ops/attention.h"
#include "ops/fp8_train.h"
#include "ops/moe.h"
#include "synth/synth_layer.h"
#include "train/expert_exchange.h"
#include "train/param.h"

namespace dseek::train {

using Segments = std::vector<int64_t>;
// N / seq_len sequences of seq_len tokens; throws unless they tile N exactly.
Segments equal_segments(int64_t tokens, int64_t seq_len);
// Throws unless `segments` are non-negative lengths summing to `tokens` (`where` names the caller).
void check_segments(const Segments& segments, int64_t tokens, const std::string& where);

struct ExpertParallel;  // train/expert_parallel.h
class SynthOverride;    // train/synth_override.h

struct LayerContext {
  const ModelConfig& config;
  const RopeParams& rope;
  ParamSet& params;
  // Set: the MoE layers' routed experts are spread over ranks and exchanged (on the CPU by
  // moe_layer_ep.cpp's host loops; on the ops path by train/expert_exchange.h).
  const ExpertParallel* expert_parallel = nullptr;
  // Set: MLP projections replaced by a synthesised operator (dense MLPs and shared experts).
  SynthOverride* synth = nullptr;
  // The MoE layer on CPU tensors through the GPU's path (ops/moe.h's ops) instead of the host
  // loops: the GPU's expert-parallel exchange checked on CPU ranks (tests).
  bool moe_ops_on_cpu = false;
};

// y = x·Wᵀ with W = params[name]: the backward adds dW to the param's grad, returns dx.
Tensor linear_forward(ParamSet& params, const std::string& name, const Tensor& x);
Tensor linear_backward(ParamSet& params, const std::string& name, const Tensor& x,
                       const Tensor& dy);

// The input of linear layers as their backward needs it. A plain linear's backward multiplies by
// x itself; an FP8 linear's needs only x as its forward quantised it (ops::Fp8LinearCache: one
// E4M3 byte per element and an f32 scale per 1×128 tile). So where FP8 linears are x's only
// readers the cache holds the codes and not x, and x's memory is freed once the caller drops it
// (DeepSeek-V3 caches the linears' inputs in FP8, §3.3.3). The codes are the forward's, so the
// backward is bit for bit what quantising x again would give (quantisation is deterministic).
struct LinearInput {
  Tensor x;                 // set where a non-FP8 linear reads it, or with keep_x
  ops::Fp8LinearCache fp8;  // set where an FP8 linear reads it
  // x's data address while fp8 holds its codes: the next FP8 reader of the same x multiplies
  // those rather than quantising x again.
  const void* codes_of = nullptr;
  // Set by the owner before the forward: x stays alive for another reader anyway (the MoE's input
  // is the router's), so it is held as it is (no memory) rather than as codes (more memory) and
  // the FP8 backward quantises it again.
  bool keep_x = false;
};
// The same linear, recording its input in `in` (one LinearInput can serve several linears of the
// same x: q_a_proj and kv_a_proj_with_mqa, gate_proj and up_proj).
Tensor linear_forward(ParamSet& params, const std::string& name, const Tensor& x, LinearInput& in);
// `shared_x`: x̂'s column tiles for the FP8 wgrads of several linears of one input (made by the
// first, reused by the next: ops::Fp8WgradInput); ignored by the other linears.
Tensor linear_backward(ParamSet& params, const std::string& name, const LinearInput& in,
                       const Tensor& dy, ops::Fp8WgradInput* shared_x = nullptr);

// y = rms_norm(x; w = params[name], eps).
Tensor norm_forward(ParamSet& params, const std::string& name, const Tensor& x, double eps);
Tensor norm_backward(ParamSet& params, const std::string& name, const Tensor& x, double eps,
                     const Tensor& dy);

// SwiGLU MLP: y = down(silu(gate(x)) ⊙ up(x)), weights <prefix>.{gate,up,down}_proj.weight. With
// `synth`, the projections it replaces run its operator instead (train/synth_override.h). With
// `keep_x`, x is held as it is (LinearInput::keep_x: the caller keeps it anyway).
struct MlpCache {
  LinearInput x;      // gate_proj's and up_proj's input
  Tensor gate, up;    // silu_mul's backward reads both: kept in the activation dtype
  LinearInput inner;  // silu(gate) ⊙ up, down_proj's input
  synth::SynthLayerCache synth_gate, synth_up, synth_down;  // replaced projections only
};
Tensor mlp_forward(ParamSet& params, const std::string& prefix, const Tensor& x, MlpCache& cache,
                   SynthOverride* synth = nullptr, bool keep_x = false);
Tensor mlp_backward(ParamSet& params, const std::string& prefix, const MlpCache& cache,
                    const Tensor& dy, SynthOverride* synth = nullptr);

// Self-attention of a decoder layer: MLA for deepseek_v2/v3 (q_lora optional, decoupled RoPE,
// YaRN through the RopeParams and config.softmax_scale()), multi-head/grouped-query attention with
// RoPE for llama and deepseek. Weights under <prefix> = "model.layers.<i>.self_attn".
// The tensors the RMSNorms and the attention core read in their backward stay in the activation
// dtype; the projections' inputs are LinearInputs (FP8 codes under FP8 training).
struct AttentionCache {
  LinearInput x;           // the q and kv projections' input
  Tensor q_a;              // MLA with q_lora_rank > 0: q_a_layernorm's input
  LinearInput q_a_normed;  // its output, q_b_proj's input
  Tensor kv_a;             // MLA: kv_a_proj_with_mqa(x) [T, r + rope]; kv_a_layernorm reads [:, :r]
  LinearInput c_kv;        // MLA: kv_a_layernorm(kv_a[:, :r]) [T, r], kv_b_proj's input
  Tensor q, k, v;          // what attention saw (roped q, k)
  LinearInput attn;        // attention output [T, H·v], o_proj's input
  Segments segments;
  // The attention output and its rows' statistics (T·H·dv in the activation dtype, T·H f32), so
  // that the backward need not run the forward again (ops::AttentionSaved; empty where the
  // forward's path keeps none).
  ops::AttentionSaved saved;
};
Tensor attention_forward(const LayerContext& ctx, const std::string& prefix, const Tensor& x,
                         const Segments& segments, AttentionCache& cache);
Tensor attention_backward(const LayerContext& ctx, const std::string& prefix,
                          const AttentionCache& cache, const Tensor& dy);

// How MoE layers are balanced while training.
struct BalanceOptions {
  // "none", "sequence" (DeepSeek-V3's sequence-wise loss), "expert" (DeepSeekMoE expert-level),
  // "device" (DeepSeekMoE device-level, experts split over `devices` groups).
  std::string aux_loss = "none";
  double alpha = 0.0;
  int64_t devices = 1;
};

// DeepSeekMoE feed-forward: gate (with e_score_correction_bias for noaux_tc), routed experts,
// shared experts. Weights under <prefix> = "model.layers.<i>.mlp". On the GPU: ops::moe_route and
// grouped GEMMs over the slots sorted by expert (ops/moe.h), no host loop. The CPU path keeps per-expert loops over a host Routing (moe_layer_host.cpp): CPU training stays
// bit-identical to what it was before the GPU path, whose ops sum in other orders (data-parallel
// tests compare runs whose routing must not flip on a last-bit difference).
struct MoeHostCache {
  Routing routing;
  std::vector<int64_t> offsets, slots;  // slots grouped by expert (counting sort)
  std::vector<MlpCache> experts;        // per expert, rows = its slots in order
  Tensor expert_out;                    // [T·K, D] unweighted expert outputs per slot
  // Expert parallelism: the count exchange (experts then holds the P local experts' caches), and
  // the most ranks one token was dispatched to.
  ExchangeCounts ep_counts;
  int64_t ep_max_ranks = 0;
};
// A grouped GEMM's input as its backward needs it (LinearInput's rule, for the routed experts'
// GEMMs of the GPU path): the FP8 codes where FP8 GEMMs read it, else x itself.
struct GroupedInput {
  Tensor x;
  ops::Fp8GroupedCache fp8;
  const void* codes_of = nullptr;  // as LinearInput's
};
struct MoeCache {
  // The layer's input [T, D]. Kept where it is f32 (it is then x_router); bf16 (the GPU) is
  // released after the forward, its readers keeping what they need (x_router its f32 copy).
  Tensor x;
  bool ops_path = false;  // the GPU's path (on a GPU, or on the CPU with moe_ops_on_cpu)
  MoeHostCache host;      // CPU path
  // Ops path (ops/moe.h); under expert parallelism the grouped GEMMs' tensors (x_perm … inner)
  // hold this rank's experts' rows, expert-major (train/expert_exchange.h), y_perm the results
  // back in the dispatch's layout.
  Tensor x_router;  // x in f32: the router's input (x itself when already f32)
  ops::MoeRouteParams route;
  ops::MoeRouting routing;  // ids [T, K], weights [T, K], scores [T, E] on the device
  ops::MoeDispatch dispatch;
  ops::ExpertMatrices gate_w, up_w, down_w;  // the experts' compute weights
  ops::Fp8ExpertWeights gate_q, up_q, down_q;  // under FP8: their blocks, W's and Wᵀ's
  // Per slot, grouped by expert: gate_proj's and up_proj's input, their outputs (silu_mul's
  // backward reads both: kept in the activation dtype), and down_proj's input silu(gate) ⊙ up.
  GroupedInput x_perm;
  Tensor gate, up;
  GroupedInput inner;
  Tensor y_perm;  // [T·K, D] unweighted expert outputs
  ExpertExchange exchange;  // under expert parallelism
  MlpCache shared;
  bool has_shared = false;
  double aux_loss = 0.0;               // balance loss value (α included)
  std::vector<float> aux_grad_scores;  // its gradient wrt the scores [T×E] (host)
};
// The sequence-wise balance loss treats each segment as one sequence.
Tensor moe_forward(const LayerContext& ctx, const std::string& prefix, const Tensor& x,
                   const Segments& segments, const BalanceOptions& balance, MoeCache& cache);
// loss_scale multiplies the balance loss's own gradient (the scale the whole loss gets).
Tensor moe_backward(const LayerContext& ctx, const std::string& prefix, const MoeCache& cache,
                    const Tensor& dy, float loss_scale);
// Tokens routed to each expert [E] (copied to the host).
std::vector<int64_t> moe_expert_load(const MoeCache& cache);
// The CPU path's routed experts (moe_layer_host.cpp), called by moe_forward / moe_backward:
// the forward fills cache.host from the router logits and returns Σ_k w·y (no shared experts);
// the backward adds the routed experts' input gradient into dx and returns the gradient of the
// router logits dz [T, E] (through the combine weights and the balance loss).
Tensor moe_routed_forward_host(const LayerContext& ctx, const std::string& prefix,
                               const Tensor& logits, MoeCache& cache);
Tensor moe_routed_backward_host(const LayerContext& ctx, const std::string& prefix,
                                const MoeCache& cache, const Tensor& dy, float loss_scale,
                                Tensor& dx);

// Expert parallelism (moe_layer_ep.cpp, train/expert_parallel.h), called by the host path when
// ctx.expert_parallel is set: the forward exchanges the sorted slots' rows with their experts'
// owners, runs the local experts and fills cache.host.expert_out; the backward sends the
// weighted output gradients the same way and adds the returned input gradients into dx in the
// order one process adds them.
void moe_experts_forward_ep(const LayerContext& ctx, const std::string& prefix, MoeCache& cache);
void moe_experts_backward_ep(const LayerContext& ctx, const std::string& prefix,
                             const MoeCache& cache, const Tensor& dy, Tensor& dx);

// Decoder layer: h = x + attn(norm1(x)); out = h + ffn(norm2(h)). x and h are the norms' inputs
// (their backward reads them); norm1(x) and norm2(h) are held by the attention and the MLP or MoE
// caches, as those keep them (FP8 codes where FP8 projections are their only readers).
struct BlockCache {
  Tensor x, h;
  AttentionCache attn;
  bool is_moe = false;
  MlpCache mlp;
  MoeCache moe;
};
Tensor block_forward(const LayerContext& ctx, int64_t layer, const Tensor& x,
                     const Segments& segments, const BalanceOptions& balance, BlockCache& cache);
Tensor block_backward(const LayerContext& ctx, int64_t layer, const BlockCache& cache,
                      const Tensor& dy, float loss_scale);

}  // namespace dseek::train
