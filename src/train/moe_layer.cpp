// DeepSeekMoE layer for training (see layers.h). On the GPU it is composed of the device MoE ops
// of ops/moe.h (no host loop over tokens or experts); on the CPU the routed experts run as the
// per-expert loops of moe_layer_host.cpp (the same maths, kept bit-identical to earlier runs).
// Forward: router logits z = x·W_gateᵀ in f32, routing by
// ops::moe_route (scores s = softmax|sigmoid(z); e_score_correction_bias steers the selection of
// noaux_tc gates only), the T·K slots grouped by expert (moe_dispatch, moe_permute), each expert's
// SwiGLU MLP as grouped GEMMs over its rows, out[t] = Σ_k w[t,k] · y_{e_k}(x_t) + shared(x_t)
// (moe_combine: the K products in ascending expert order, then the shared experts).
//
// Backward:
//   combine:  dy_perm rows = w[t,k]·dout[t],  g[t,k] = dout[t]·y_{e_k}(x_t) (moe_combine_backward)
//   experts:  grouped GEMM backward (dx, and dW added into each expert's f32 grad), silu_mul
//             backward, then the K rows of each token summed back (moe_permute_backward)
//   weights:  w_k = f·a_k (/ (Σ_j a_j + 1e-20) when normalised), a_k = s[t, e_k],
//             f = routed_scaling_factor when the model type scales:
//               da_k = f·g_k                                  (not normalised)
//               da_k = f·(g_k/S − Σ_j g_j a_j / S²)           (normalised, S = Σ_j a_j + 1e-20)
//   balance:  ds += loss_scale · ∂(aux loss)/∂s   (moe_balance.h)
//   scores:   dz = ds ⊙ s ⊙ (1 − s)  (sigmoid)   or   dz = s ⊙ (ds − Σ_j ds_j s_j)  (softmax)
//             (weights → scores → logits is ops::moe_route_backward)
//   router:   dW_gate += dzᵀ·x,  dx += dz·W_gate
// The selection itself (top-k, groups, bias) is piecewise constant: it has no gradient.
// Under train.precision fp8 (mark_fp8_linears) the experts' grouped GEMMs run in FP8 from the f32
// masters (ops/fp8_train.h), the masters quantised once a step into W's and Wᵀ's blocks (MoeCache's
// gate_q, up_q, down_q: one pass for the forward's and the dgrad's), their inputs cached as the
// forward's FP8 codes (GroupedInput, the shared experts' LinearInputs); the router stays f32.
#include <string>
#include <vector>

#include "core/error.h"
#include "model/moe_balance.h"
#include "ops/activation.h"
#include "ops/fp8_train.h"
#include "ops/linear.h"
#include "train/expert_parallel.h"
#include "train/layers.h"

namespace dseek::train {
namespace {

std::string expert_prefix(const std::string& prefix, int64_t e) {
  return prefix + ".experts." + std::to_string(e);
}

// The routed experts this rank computes: all E, or under expert parallelism its P = E/N.
struct LocalExperts {
  int64_t first = 0, count = 0;
};
LocalExperts local_experts(const LayerContext& ctx) {
  if (const ExpertParallel* ep = ctx.expert_parallel) return {ep->first(), ep->per_rank()};
  return {0, ctx.config.n_routed_experts};
}

// One projection of this rank's routed experts as ExpertMatrices: their compute weights for the
// forward and the input gradient (the f32 masters under FP8, which quantises them itself).
ops::ExpertMatrices expert_weights(ParamSet& params, const std::string& prefix, LocalExperts local,
                                   const std::string& proj) {
  std::vector<Tensor> m;
  m.reserve(size_t(local.count));
  for (int64_t e = local.first; e < local.first + local.count; ++e) {
    Param& p = params.at(expert_prefix(prefix, e) + "." + proj + ".weight");
    m.push_back(p.fp8 ? p.value : p.weight());
  }
  return ops::expert_matrices(std::move(m));
}

// FP8 training (train.precision fp8) marks the routed experts' projections (mark_fp8_linears).
bool experts_fp8(ParamSet& params, const std::string& prefix) {
  return params.at(expert_prefix(prefix, 0) + ".gate_proj.weight").fp8;
}

// The grouped GEMMs in FP8 or in the compute dtype. The forward records its input in `in` as the
// weight gradient needs it (layers.h's LinearInput rule; gate_proj and up_proj share x_perm's).
// Under FP8 `q` holds the experts' blocks (quantised once a step for the forward and the dgrad).
Tensor grouped_forward(const ParamSet& params, bool fp8, const Tensor& x,
                       const ops::ExpertMatrices& w, const ops::Fp8ExpertWeights& q,
                       const Tensor& o, GroupedInput& in) {
  const bool codes = fp8 && params.fp8_input_cache();
  if (!codes) in.x = x;
  if (!fp8) return ops::grouped_linear(x, w, o);
  // The first reader of x quantises it; the next (up_proj after gate_proj) multiplies its codes.
  if (codes && in.codes_of == x.raw() && in.fp8.x.data.defined() &&
      in.fp8.x.data.shape() == x.shape())
    return ops::grouped_linear_fp8_forward(in.fp8, q, o);
  Tensor y = ops::grouped_linear_fp8_forward(x, q, o, codes ? &in.fp8 : nullptr);
  if (codes) in.codes_of = x.raw();
  return y;
}
Tensor grouped_dx(bool fp8, const Tensor& dy, const ops::ExpertMatrices& w,
                  const ops::Fp8ExpertWeights& q, const Tensor& o) {
  return fp8 ? ops::grouped_linear_fp8_backward_dx(dy, q, o)
             : ops::grouped_linear_backward_dx(dy, w, o);
}
// dW of projection `proj` of this rank's experts, in one launch: written over the grads when they
// all still hold zero_grad's zeros (overwrite_grad for each), else added to them (grad_to_add).
// `shared_x`: x̂'s column tiles for gate_proj's and up_proj's FP8 wgrads (ops::Fp8WgradInput).
// Where BackwardGradNorm gave the experts a slot (Param::grad_squares), the wgrad puts Σ dW² there.
void grouped_dw(ParamSet& params, const std::string& prefix, LocalExperts local,
                const std::string& proj, bool fp8, const GroupedInput& in, const Tensor& dy,
                const Tensor& o, ops::Fp8WgradInput* shared_x = nullptr) {
  std::vector<Tensor> grads;
  grads.reserve(size_t(local.count));
  bool zero = true;
  std::vector<Param*> ps;
  double* squares = nullptr;  // Param::grad_squares: one slot for all of them, or none
  for (int64_t e = local.first; e < local.first + local.count; ++e) {
    Param& p = params.at(expert_prefix(prefix, e) + "." + proj + ".weight");
    grads.push_back(p.grad);
    ps.push_back(&p);
    zero = zero && p.grad_zero;
    if (e == local.first) squares = p.grad_squares;
    DSEEK_CHECK(p.grad_squares == squares,
                "[moe] the experts of {}.{} do not share one sum-of-squares slot", prefix, proj);
    p.grad_squares = nullptr;
  }
  for (Param* p : ps) {  // all overwrite, or all add
    if (zero)
      overwrite_grad(*p);
    else
      grad_to_add(*p);
  }
  const ops::ExpertMatrices dw = ops::expert_matrices(std::move(grads));
  const bool accumulate = !zero;
  if (!fp8)
    ops::grouped_linear_backward_dw(in.x, dy, o, dw, accumulate, squares);
  else if (in.fp8.x.data.defined())
    ops::grouped_linear_fp8_backward_dw(in.fp8, dy, o, dw, accumulate, shared_x, squares);
  else
    ops::grouped_linear_fp8_backward_dw(ops::fp8_grouped_cache(in.x), dy, o, dw, accumulate,
                                        shared_x, squares);
}

// The routing on the host, as model/moe_balance.h's losses take it. A host synchronisation (ids
// and scores copied back) left for later: only taken when a balance loss is on.
Routing host_routing(const ops::MoeRouting& r) {
  Routing h;
  h.tokens = r.scores.size(0);
  h.experts = r.scores.size(1);
  h.top_k = r.ids.size(1);
  const Tensor ids = r.ids.to(Device::CPU);
  h.expert_ids.assign(ids.data<int32_t>(), ids.data<int32_t>() + ids.numel());
  h.weights = r.weights.to_vector();
  h.scores = r.scores.to_vector();
  return h;
}

// The GPU path's routed experts: route, dispatch, grouped GEMMs; returns the routed output with
// the shared experts' `shared` added by moe_combine (in the inference MoE's order). Under expert
// parallelism the permuted rows travel to their experts' owners and the results back between the
// permute and the combine (train/expert_exchange.h); everything else is one process's.
Tensor routed_forward_device(const LayerContext& ctx, const std::string& prefix,
                             const Tensor& logits, const Tensor& shared, MoeCache& c) {
  const ModelConfig& cfg = ctx.config;
  const int64_t E = cfg.n_routed_experts, D = cfg.hidden_size;
  const ExpertParallel* ep = ctx.expert_parallel;
  const LocalExperts local = local_experts(ctx);
  c.route = route_params(cfg);
  Tensor bias;
  if (cfg.topk_method == "noaux_tc")
    bias = ctx.params.value(prefix + ".gate.e_score_correction_bias");
  c.routing = ops::moe_route(logits, c.route, bias);
  c.dispatch = ops::moe_dispatch(c.routing.ids, E);
  // Each projection's weights are taken just before its GEMM: under AdamW::step_async the
  // update writes the down projections after gate and up, and the GEMMs need not wait for them.
  c.gate_w = expert_weights(ctx.params, prefix, local, "gate_proj");
  c.up_w = expert_weights(ctx.params, prefix, local, "up_proj");
  Tensor x_perm = ops::moe_permute(c.x, c.dispatch);
  Tensor o = c.dispatch.offsets;
  if (ep) {
    c.exchange = plan_expert_exchange(*ep, c.dispatch, c.routing.ids);
    x_perm = send_to_owners(*ep, c.exchange, x_perm);
    o = c.exchange.offsets;
  }
  const bool fp8 = experts_fp8(ctx.params, prefix);
  if (fp8) {
    const std::string experts = prefix + ".experts.*.";
    c.gate_q = ops::quantize_fp8_expert_weights(c.gate_w, experts + "gate_proj.weight");
    c.up_q = ops::quantize_fp8_expert_weights(c.up_w, experts + "up_proj.weight");
  }
  const auto take_down = [&] {
    c.down_w = expert_weights(ctx.params, prefix, local, "down_proj");
    if (fp8)
      c.down_q = ops::quantize_fp8_expert_weights(c.down_w, prefix + ".experts.*.down_proj.weight");
  };
  Tensor y_perm;
  if (x_perm.size(0) > 0) {
    c.gate = grouped_forward(ctx.params, fp8, x_perm, c.gate_w, c.gate_q, o, c.x_perm);
    c.up = grouped_forward(ctx.params, fp8, x_perm, c.up_w, c.up_q, o, c.x_perm);
    const Tensor inner = ops::silu_mul(c.gate, c.up);
    take_down();
    y_perm = grouped_forward(ctx.params, fp8, inner, c.down_w, c.down_q, o, c.inner);
  } else {  // no rows for this rank's experts (expert parallelism)
    take_down();
    y_perm = Tensor::empty({0, D}, x_perm.dtype(), x_perm.device());
  }
  c.y_perm = ep ? return_to_sources(*ep, c.exchange, y_perm) : y_perm;
  return ops::moe_combine(c.y_perm, c.routing.weights, c.dispatch, shared);
}

// The GPU path's backward of the routed experts and the router: returns dx of the routed half
// plus the router (the caller adds the shared experts').
Tensor routed_backward_device(const LayerContext& ctx, const std::string& prefix, const MoeCache& c,
                              const Tensor& dy, float loss_scale) {
  const int64_t T = c.x_router.size(0), E = ctx.config.n_routed_experts;
  const ExpertParallel* ep = ctx.expert_parallel;
  const LocalExperts local = local_experts(ctx);
  const Tensor& offsets = ep ? c.exchange.offsets : c.dispatch.offsets;
  const ops::MoeCombineGrads cg =
      ops::moe_combine_backward(c.y_perm, c.routing.weights, c.dispatch, dy);
  // Under expert parallelism the output gradients travel the forward's way to the experts' owners
  // and the input gradients come back: each owner's dW then covers every rank's rows.
  const Tensor dy_perm = ep ? send_to_owners(*ep, c.exchange, cg.dy_perm) : cg.dy_perm;
  const bool fp8 = experts_fp8(ctx.params, prefix);
  Tensor dx_perm;
  if (dy_perm.size(0) > 0) {
    const Tensor d_inner = grouped_dx(fp8, dy_perm, c.down_w, c.down_q, offsets);
    grouped_dw(ctx.params, prefix, local, "down_proj", fp8, c.inner, dy_perm, offsets);
    const ops::SiluMulGrads sg = ops::silu_mul_backward(c.gate, c.up, d_inner);
    dx_perm = grouped_dx(fp8, sg.dgate, c.gate_w, c.gate_q, offsets);
    ops::add_inplace(dx_perm, grouped_dx(fp8, sg.dup, c.up_w, c.up_q, offsets));
    ops::Fp8WgradInput x_cols;  // x̂_perm's column tiles, for both wgrads
    grouped_dw(ctx.params, prefix, local, "gate_proj", fp8, c.x_perm, sg.dgate, offsets, &x_cols);
    grouped_dw(ctx.params, prefix, local, "up_proj", fp8, c.x_perm, sg.dup, offsets, &x_cols);
  } else {  // no rows for this rank's experts: their gradients stay as they are
    dx_perm = Tensor::empty({0, dy_perm.size(1)}, dy_perm.dtype(), dy_perm.device());
    for (int64_t e = local.first; e < local.first + local.count; ++e)
      for (const char* proj : {"gate_proj", "up_proj", "down_proj"})
        settle_grad(ctx.params.at(expert_prefix(prefix, e) + "." + proj + ".weight"));
  }
  if (ep) dx_perm = return_to_sources(*ep, c.exchange, dx_perm);
  Tensor dx = ops::moe_permute_backward(dx_perm, c.dispatch);

  // Router: combine weights (and the balance loss) → scores → logits → x.
  Tensor extra;
  if (!c.aux_grad_scores.empty()) {
    std::vector<float> ds(c.aux_grad_scores.size());
    for (size_t i = 0; i < ds.size(); ++i) ds[i] = loss_scale * c.aux_grad_scores[i];
    extra = Tensor::from_vector(ds, {T, E}).to(dx.device());
  }
  const Tensor dz =
      ops::moe_route_backward(c.routing.scores, c.routing.ids, cg.dweights, c.route, extra);
  const Tensor dx_gate = linear_backward(ctx.params, prefix + ".gate.weight", c.x_router, dz);
  ops::add_inplace(dx, dx_gate.dtype() == dx.dtype() ? dx_gate : dx_gate.to(dx.dtype()));
  return dx;
}

}  // namespace

Tensor moe_forward(const LayerContext& ctx, const std::string& prefix, const Tensor& x,
                   const Segments& segments, const BalanceOptions& balance, MoeCache& c) {
  const ModelConfig& cfg = ctx.config;
  c = MoeCache{};  // filled afresh: no codes of an earlier batch
  c.x = x.contiguous();
  c.ops_path = c.x.is_cuda() || ctx.moe_ops_on_cpu;
  c.has_shared = cfg.n_shared_experts > 0;
  // The router runs in f32 whatever the activation dtype (model/gate.h): its weight has no
  // compute copy, and bf16 activations are widened.
  const bool x_is_router_input = c.x.dtype() == DType::F32;
  c.x_router = x_is_router_input ? c.x : c.x.to(DType::F32);
  const Tensor logits = linear_forward(ctx.params, prefix + ".gate.weight", c.x_router);
  DSEEK_CHECK(!ctx.expert_parallel || !c.ops_path ||
                  ctx.expert_parallel->exchange->device() == c.x.device(),
              "[train] expert parallelism: the {} group's buffers live on {}, the layer runs on {}",
              ctx.expert_parallel->exchange->backend(),
              device_name(ctx.expert_parallel->exchange->device()), device_name(c.x.device()));
  // The shared experts read x too. Where the router's backward keeps it (f32), they hold it as it
  // is: FP8 codes of it would add memory, not free it (V3 too runs its gating modules in BF16/FP32,
  // §3.3.1, so their input stays in that precision).
  Tensor out;
  if (c.ops_path) {
    const Tensor shared = c.has_shared ? mlp_forward(ctx.params, prefix + ".shared_experts", c.x,
                                                     c.shared, ctx.synth, x_is_router_input)
                                       : Tensor();
    out = routed_forward_device(ctx, prefix, logits, shared, c);
    // bf16: x_router is an f32 copy; every other reader of x keeps what its backward needs.
    if (!x_is_router_input) c.x = Tensor();
  } else {
    out = moe_routed_forward_host(ctx, prefix, logits, c);
    if (c.has_shared)
      ops::add_inplace(out, mlp_forward(ctx.params, prefix + ".shared_experts", c.x, c.shared,
                                        ctx.synth, x_is_router_input));
  }

  c.aux_loss = 0.0;
  c.aux_grad_scores.clear();
  if (balance.aux_loss != "none" && balance.alpha > 0.0) {
    const Routing routing = c.ops_path ? host_routing(c.routing) : c.host.routing;
    BalanceLoss b;
    if (balance.aux_loss == "sequence") {
      b = sequence_balance_loss(routing, segments, balance.alpha, cfg.scoring_func == "sigmoid");
    } else if (balance.aux_loss == "expert") {
      // Expert parallelism: the statistics of the global batch, as one process computes them.
      b = ctx.expert_parallel ? global_balance_loss(*ctx.expert_parallel, routing,
                                                    cfg.n_routed_experts, balance.alpha)
                              : expert_balance_loss(routing, balance.alpha);
    } else if (balance.aux_loss == "device") {
      b = ctx.expert_parallel
              ? global_balance_loss(*ctx.expert_parallel, routing, balance.devices, balance.alpha)
              : device_balance_loss(routing, balance.devices, balance.alpha);
    } else {
      fail("[train] aux_loss '{}': expected none, sequence, expert or device", balance.aux_loss);
    }
    c.aux_loss = b.value;
    c.aux_grad_scores = std::move(b.grad_scores);
  }
  return out;
}

std::vector<int64_t> moe_expert_load(const MoeCache& c) {
  if (!c.ops_path) return c.host.routing.expert_load();
  // Tokens per expert = the dispatch's group sizes (E + 1 offsets copied back: a host
  // synchronisation, taken once per layer after the forward has been queued).
  const Tensor o = c.dispatch.offsets.to(Device::CPU);
  const int64_t* p = o.data<int64_t>();
  std::vector<int64_t> load(size_t(o.numel() - 1));
  for (size_t e = 0; e < load.size(); ++e) load[e] = p[e + 1] - p[e];
  return load;
}

Tensor moe_backward(const LayerContext& ctx, const std::string& prefix, const MoeCache& c,
                    const Tensor& dy_in, float loss_scale) {
  const Tensor dy = dy_in.contiguous();
  if (c.ops_path) {
    Tensor dx = routed_backward_device(ctx, prefix, c, dy, loss_scale);
    if (c.has_shared)
      ops::add_inplace(
          dx, mlp_backward(ctx.params, prefix + ".shared_experts", c.shared, dy, ctx.synth));
    return dx;
  }
  // CPU: the shared experts' gradient first, the routed rows added in expert order, the router
  // last (the order of the original CPU trainer).
  Tensor dx = c.has_shared
                  ? mlp_backward(ctx.params, prefix + ".shared_experts", c.shared, dy, ctx.synth)
                  : Tensor::zeros(c.x.shape());
  const Tensor dz = moe_routed_backward_host(ctx, prefix, c, dy, loss_scale, dx);
  ops::add_inplace(dx, linear_backward(ctx.params, prefix + ".gate.weight", c.x, dz));
  return dx;
}

}  // namespace dseek::train
