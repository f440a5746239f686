#include "model/moe.h"

#include <omp.h>

#include <algorithm>
#include <cstring>
#include <exception>

#include "core/cuda.h"
#include "core/error.h"
#include "dist/process_group.h"
#include "model/safetensors.h"
#include "ops/activation.h"
#include "ops/device.h"
#include "ops/moe.h"
#include "ops/norm.h"
#include "ops/swiglu.h"

namespace dseek {

namespace {

// Bound on the per-slot contribution buffer (T·K rows of D floats): long prompts are dispatched in
// token chunks so a V3-sized layer does not need gigabytes of scratch.
constexpr int64_t kMaxContributionFloats = int64_t(1) << 26;  // 256 MiB

// Token-to-expert grouping of one chunk of tokens: slots (t·K + k, relative to the chunk) sorted
// by expert with a stable counting sort, so each expert's rows stay in token order.
struct Dispatch {
  std::vector<int64_t> offsets;  // [E + 1] start of each expert's run in `slots`
  std::vector<int64_t> slots;    // [n·K]
  std::vector<int32_t> active;   // experts with at least one token, busiest first
};

Dispatch group_by_expert(const int32_t* ids, int64_t slot_count, int64_t experts) {
  Dispatch d;
  d.offsets.assign(size_t(experts + 1), 0);
  for (int64_t s = 0; s < slot_count; ++s) ++d.offsets[size_t(ids[s]) + 1];
  for (int64_t e = 0; e < experts; ++e) {
    if (d.offsets[size_t(e) + 1] > 0) d.active.push_back(int32_t(e));
    d.offsets[size_t(e) + 1] += d.offsets[size_t(e)];
  }
  d.slots.resize(size_t(slot_count));
  std::vector<int64_t> next(d.offsets.begin(), d.offsets.end() - 1);
  for (int64_t s = 0; s < slot_count; ++s) d.slots[size_t(next[size_t(ids[s])]++)] = s;
  // Largest runs first: dynamic scheduling then balances the threads better.
  std::stable_sort(d.active.begin(), d.active.end(), [&](int32_t a, int32_t b) {
    return d.offsets[size_t(a) + 1] - d.offsets[size_t(a)] >
           d.offsets[size_t(b) + 1] - d.offsets[size_t(b)];
  });
  return d;
}

}  // namespace

MoE::MoE(const ModelConfig& config, const WeightStore& weights, const std::string& prefix,
         const Placement& placement)
    : gate_(config, weights, prefix + ".gate", placement) {
  DSEEK_CHECK(config.moe_intermediate_size > 0,
              "[moe] {}: moe_intermediate_size must be positive, got {}", prefix,
              config.moe_intermediate_size);
  DSEEK_CHECK(config.n_shared_experts >= 0, "[moe] {}: n_shared_experts must be >= 0, got {}",
              prefix, config.n_shared_experts);
  // Routed experts are dequantised at load even from an FP8 checkpoint: the grouped expert GEMMs
  // (ops/moe.h) take one plain weight per expert; the shared experts, one dense Mlp, stay FP8.
  Placement routed = placement;
  routed.fp8 = Fp8Weights::Dequantise;
  // Under an expert shard only this rank's block is read: the other experts' tensors are never
  // asked of the store (a memory-mapped checkpoint never pages them in).
  const ExpertShard& shard = placement.experts;
  const int64_t local = shard.count(config.n_routed_experts);
  expert_first_ = shard.first(config.n_routed_experts);
  if (shard.sharded()) {
    group_ = shard.group;
    device_group_ = shard.device_group;
  }
  experts_.reserve(size_t(local));
  for (int64_t e = expert_first_; e < expert_first_ + local; ++e) {
    experts_.emplace_back(weights, prefix + ".experts." + std::to_string(e), config.hidden_size,
                          config.moe_intermediate_size, routed);
  }
  if (config.n_shared_experts > 0) {
    shared_.emplace(weights, prefix + ".shared_experts", config.hidden_size,
                    config.moe_intermediate_size * config.n_shared_experts, placement);
  }
  check_parts();
  build_device_experts();
}

MoE::MoE(Gate gate, std::vector<Mlp> experts, std::optional<Mlp> shared_experts)
    : gate_(std::move(gate)), experts_(std::move(experts)), shared_(std::move(shared_experts)) {
  check_parts();
  build_device_experts();
}

void MoE::build_device_experts() {
  on_device_ = !experts_.empty() && experts_[0].gate_proj().is_cuda();
  if (!on_device_) return;
  DSEEK_CHECK(gate_.weight().is_cuda(), "[moe] experts on the GPU but the gate weight on the {}",
              device_name(gate_.weight().device()));
  std::vector<Tensor> gate_up, down;
  // The grouped GEMMs index matrices by global expert id. Under an expert shard the other ranks'
  // experts become one zero matrix per shape: their slots contribute exactly 0 (weight × 0), so
  // a token's sum is its local experts' in ascending order (compute is not saved, memory is).
  const int64_t E = gate_.config().n_routed_experts;
  const Mlp& first = experts_[0];
  const Tensor zero_in = group_ ? Tensor::zeros({2 * first.intermediate(), first.hidden()},
                                                first.down_proj().dtype(), Device::CUDA)
                                : Tensor();
  const Tensor zero_out =
      group_ ? Tensor::zeros(first.down_proj().shape(), first.down_proj().dtype(), Device::CUDA)
             : Tensor();
  for (int64_t g = 0; g < E; ++g) {
    const int64_t e = g - expert_first_;
    if (e < 0 || e >= int64_t(experts_.size())) {
      gate_up.push_back(zero_in);
      down.push_back(zero_out);
      continue;
    }
    // grouped_linear has no bias term; DeepSeek's routed experts have none.
    DSEEK_CHECK(!experts_[size_t(e)].has_bias(),
                "[moe] expert {}: biases on routed experts are not supported on the GPU", g);
    DSEEK_CHECK(experts_[size_t(e)].gate_up().defined(),
                "[moe] expert {}: routed experts on the GPU need plain (not FP8) weights", g);
    gate_up.push_back(experts_[size_t(e)].gate_up());
    down.push_back(experts_[size_t(e)].down_proj());
  }
  // expert_matrices checks one shape, dtype and device for all.
  gate_up_mats_ = ops::expert_matrices(std::move(gate_up));
  down_mats_ = ops::expert_matrices(std::move(down));
}

void MoE::check_parts() const {
  const ModelConfig& c = gate_.config();
  const int64_t expected = group_ ? c.n_routed_experts / group_->size() : c.n_routed_experts;
  DSEEK_CHECK(int64_t(experts_.size()) == expected && expected > 0,
              "[moe] {} experts given, expected {} (n_routed_experts {} over {} ranks)",
              experts_.size(), expected, c.n_routed_experts, group_ ? group_->size() : 1);
  for (size_t e = 0; e < experts_.size(); ++e) {
    DSEEK_CHECK(experts_[e].hidden() == c.hidden_size, "[moe] expert {}: hidden {}, expected {}", e,
                experts_[e].hidden(), c.hidden_size);
  }
  if (shared_) {
    DSEEK_CHECK(shared_->hidden() == c.hidden_size, "[moe] shared_experts: hidden {}, expected {}",
                shared_->hidden(), c.hidden_size);
  }
}

Tensor MoE::forward_add_norm(const Tensor& x, const Tensor& residual, const Tensor& norm_weight,
                             double eps, Tensor& normed) const {
  if (x.is_cuda() && !group_ && x.dim() == 2 && x.size(0) > 0) {
    const ResidualNorm then{residual, norm_weight, eps, normed};
    return forward_device(x, &then);
  }
  Tensor out = forward(x);
  normed = ops::add_rms_norm(out, residual, norm_weight, eps);  // out += residual
  return out;
}

Tensor MoE::forward_device(const Tensor& x, const ResidualNorm* then) const {
  const int64_t D = gate_.config().hidden_size;
  const DType act = ops::activation_dtype("moe", x);
  DSEEK_CHECK(on_device_,
              "[moe] input on the GPU but the experts on the CPU: load the model with "
              "a GPU placement");
  DSEEK_CHECK(x.dim() == 2 && x.size(1) == D, "[moe] input shape {} ({}), expected [T, {}]",
              shape_str(x.shape()), dtype_name(x.dtype()), D);
  DSEEK_CHECK(act == gate_up_mats_.dtype, "[moe] input is {}, the experts are {}", dtype_name(act),
              dtype_name(gate_up_mats_.dtype));
  last_load_.clear();
  if (x.size(0) == 0) return Tensor::zeros({0, D}, act, x.device());
  const Tensor input = x.contiguous();
  // The shared experts do not depend on the routing: on a second stream they run beside the
  // routing chain's small kernels (core/cuda.h Fork). `input` lives until the join below.
  cuda::Fork fork(shared_.has_value() && cuda::branches_enabled());
  Tensor shared;
  if (shared_) {
    cuda::Fork::Side side(fork);
    shared = shared_->forward(input);
  }
  // Route, dispatch and permute (one kernel for a decode step's tokens). Global expert ids: under
  // an expert shard the other ranks' slots are the zero matrices.
  const ops::MoeRouted routed = ops::moe_route_permute(
      input, gate_.logits(input), route_params(gate_.config()), gate_.correction_bias_tensor());
  const ops::MoeRouting& r = routed.routing;
  const ops::MoeDispatch& d = routed.dispatch;
  const Tensor& x_perm = routed.x_perm;
  // gate and up in one grouped product [N, 2I] (one launch); silu_mul over its halves inside the
  // down projection (a decode step's one kernel) or as its own op (ops/swiglu.h).
  const Tensor gu = ops::grouped_linear(x_perm, gate_up_mats_, d.offsets);
  const Tensor y_perm = ops::grouped_linear_swiglu(gu, down_mats_, d.offsets);
  // transformers: routed output first, then `+ shared_experts(residuals)`; moe_combine adds it
  // after the K products, in that order. Under an expert shard the ranks' routed parts are summed
  // first and the shared experts added to that sum.
  fork.join();
  if (!group_ && then)  // the layer's end: the residual add and the next norm in the same kernel
    return ops::moe_combine_add_rms_norm(y_perm, r.weights, d, shared, then->residual, then->weight,
                                         then->eps, then->normed);
  if (!group_) return ops::moe_combine(y_perm, r.weights, d, shared);
  Tensor out = ops::moe_combine(y_perm, r.weights, d);
  sum_over_ranks(out);
  if (shared.defined()) ops::add_inplace(out, shared);
  return out;
}

void MoE::sum_over_ranks(Tensor& out) const {
  if (!group_) return;
  if (device_group_ && out.is_cuda()) {
    // NCCL on the device, in f32 and in rank order (deterministic): every rank the same bits,
    // no host copy; the compute stream waits for the sum.
    Tensor sum = out.dtype() == DType::F32 ? out.contiguous() : out.to(DType::F32);
    device_group_->all_reduce(std::span<float>(sum.data<float>(), size_t(sum.numel())));
    out = out.dtype() == DType::F32 ? sum : sum.to(out.dtype());
    return;
  }
  // The process group sums f32 host buffers: a GPU (or bf16) partial sum goes through the host.
  Tensor host = out.to(Device::CPU);  // contiguous
  if (host.dtype() != DType::F32) host = host.to(DType::F32);
  group_->all_reduce(std::span<float>(host.data<float>(), size_t(host.numel())));
  out = out.is_cuda() ? host.to(out.dtype()).to(Device::CUDA) : host;
}

int64_t MoE::routed_expert_bytes() const {
  int64_t bytes = 0;
  for (const Mlp& e : experts_)
    bytes += e.gate_proj().nbytes() + e.up_proj().nbytes() + e.down_proj().nbytes();
  return bytes;
}

Tensor MoE::forward(const Tensor& x) const {
  if (x.is_cuda()) return forward_device(x);
  const int64_t D = gate_.config().hidden_size;
  if (x.dim() == 2 && x.size(0) == 0 && x.size(1) == D && x.dtype() == DType::F32) {
    last_load_.assign(size_t(gate_.config().n_routed_experts), 0);
    return Tensor::zeros({0, D});
  }
  const Routing routing = gate_.route(x);
  Tensor out = forward_experts(x, routing);
  sum_over_ranks(out);
  last_load_ = routing.expert_load();
  if (shared_) {
    const Tensor shared = shared_->forward(x);
    float* o = out.data<float>();
    const float* s = shared.data<float>();
    const int64_t n = out.numel();
    // transformers: routed output first, then `+ shared_experts(residuals)`.
    for (int64_t i = 0; i < n; ++i) o[i] += s[i];
  }
  return out;
}

Tensor MoE::forward_experts(const Tensor& x, const Routing& routing, int64_t chunk_tokens) const {
  // E: every routed expert (routing ids are global); this rank holds [first, first + local).
  const int64_t D = gate_.config().hidden_size, E = gate_.config().n_routed_experts;
  const int64_t first = expert_first_, local = int64_t(experts_.size());
  auto is_local = [&](int32_t e) { return e >= first && e < first + local; };
  DSEEK_CHECK(x.dim() == 2 && x.size(1) == D && x.dtype() == DType::F32,
              "[moe] input shape {} ({}), expected [T, {}] f32", shape_str(x.shape()),
              dtype_name(x.dtype()), D);
  const int64_t T = x.size(0), K = routing.top_k;
  DSEEK_CHECK(routing.tokens == T && K >= 1 && int64_t(routing.expert_ids.size()) == T * K &&
                  int64_t(routing.weights.size()) == T * K,
              "[moe] routing covers {} tokens × {} experts, input has {} tokens", routing.tokens, K,
              T);
  for (int32_t e : routing.expert_ids) {
    DSEEK_CHECK(e >= 0 && e < E, "[moe] routing names expert {}, the layer has {}", e, E);
  }

  const Tensor input = x.contiguous();
  const float* xp = input.data<float>();
  Tensor out = Tensor::empty({T, D});
  float* op = out.data<float>();
  const int64_t chunk = chunk_tokens > 0
                            ? chunk_tokens
                            : std::max<int64_t>(1, std::min(T, kMaxContributionFloats / (K * D)));

  for (int64_t t0 = 0; t0 < T; t0 += chunk) {
    const int64_t n = std::min(chunk, T - t0);
    const int32_t* ids = routing.expert_ids.data() + t0 * K;
    const float* weights = routing.weights.data() + t0 * K;
    Dispatch d = group_by_expert(ids, n * K, E);
    std::erase_if(d.active, [&](int32_t e) { return !is_local(e); });
    // contribution[s] = w[s] · expert(x[token of s]), one row per slot of the chunk.
#ifndef NDEBUG
    // NaN until written: a slot that no expert fills shows up in the tests' outputs.
    Tensor contribution = Tensor::poisoned({n * K, D});
#else
    Tensor contribution = Tensor::empty({n * K, D});
#endif
    float* cp = contribution.data<float>();

    // One token (decode): the few experts run one after another, each linear using all threads.
    // Not inside a parallel region with if(false): libgomp starts fresh threads for every nested
    // region under a one-thread team, which made each expert GEMV slower on 2 threads than on 1.
    const bool across_experts =
        parallel_experts_ && n > 1 && d.active.size() > 1 && omp_get_max_threads() > 1;
    std::exception_ptr error;
    const auto run_expert = [&](size_t i) {
      try {
        const int32_t e = d.active[i];
        const int64_t begin = d.offsets[size_t(e)], rows = d.offsets[size_t(e) + 1] - begin;
        Tensor gathered = Tensor::empty({rows, D});
        float* gp = gathered.data<float>();
        for (int64_t r = 0; r < rows; ++r) {
          const int64_t token = t0 + d.slots[size_t(begin + r)] / K;
          std::memcpy(gp + r * D, xp + token * D, size_t(D) * sizeof(float));
        }
        const Tensor y = experts_[size_t(e - first)].forward(gathered).contiguous();
        const float* yp = y.data<float>();
        for (int64_t r = 0; r < rows; ++r) {
          const int64_t slot = d.slots[size_t(begin + r)];
          const float w = weights[slot];
          float* c = cp + slot * D;
          for (int64_t j = 0; j < D; ++j) c[j] = yp[r * D + j] * w;
        }
      } catch (...) {
#pragma omp critical(dseek_moe_error)
        if (!error) error = std::current_exception();
      }
    };
    if (across_experts) {
#pragma omp parallel for schedule(dynamic, 1)
      for (size_t i = 0; i < d.active.size(); ++i) run_expert(i);
    } else {
      for (size_t i = 0; i < d.active.size(); ++i) run_expert(i);
    }
    if (error) std::rethrow_exception(error);

      // Per token: sum its K contributions in ascending expert order (transformers' loop order).
#pragma omp parallel for schedule(static) if (n > 1)
    for (int64_t t = 0; t < n; ++t) {
      int64_t order[64];
      int64_t* ks = order;
      std::vector<int64_t> many;
      if (K > 64) {
        many.resize(size_t(K));
        ks = many.data();
      }
      for (int64_t k = 0; k < K; ++k) ks[k] = k;
      std::sort(ks, ks + K, [&](int64_t a, int64_t b) { return ids[t * K + a] < ids[t * K + b]; });
      float* o = op + (t0 + t) * D;
      std::fill(o, o + D, 0.0f);
      for (int64_t i = 0; i < K; ++i) {
        if (!is_local(ids[t * K + ks[i]])) continue;  // another rank's expert: in its sum
        const float* c = cp + (t * K + ks[i]) * D;
        for (int64_t j = 0; j < D; ++j) o[j] += c[j];
      }
    }
  }
  return out;
}

}  // namespace dseek
