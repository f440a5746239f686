#include "train/expert_parallel.h"

#include <algorithm>
#include <cmath>
#include <cstring>

#include "core/error.h"
#include "ops/adamw.h"

namespace dseek::train {

ExpertParallel make_expert_parallel(dist::ProcessGroup& group, const ModelConfig& config,
                                    int size) {
  DSEEK_CHECK(config.n_routed_experts > 0,
              "[train] expert parallel: model type {} has no routed experts to spread over ranks",
              config.model_type);
  DSEEK_CHECK(size >= 1 && group.size() % size == 0,
              "[train] expert parallel {}: must divide the number of MPI ranks ({})", size,
              group.size());
  DSEEK_CHECK(config.n_routed_experts % size == 0,
              "[train] expert parallel {}: must divide the {} routed experts (each rank owns an "
              "equal slice)",
              size, config.n_routed_experts);
  ExpertParallel ep;
  ep.group = &group;
  ep.experts = config.n_routed_experts;
  ep.size = size;
  ep.exchange = group.split(group.rank() / size);
  ep.replica = group.split(group.rank() % size);
  return ep;
}

int64_t node_limit(const ModelConfig& config, int64_t ranks) {
  const int64_t E = config.n_routed_experts, K = config.num_experts_per_tok;
  int64_t limit = std::min(ranks, K);
  const bool grouped =
      config.topk_method == "group_limited_greedy" || config.topk_method == "noaux_tc";
  if (grouped && config.n_group > 1 && ranks > 0 && E % ranks == 0) {
    // A group of E/n_group experts spans this many rank slices of E/ranks at most (groups and
    // slices both contiguous): ⌈group / slice⌉, plus one when a group can straddle a boundary.
    const int64_t group = E / config.n_group, slice = E / ranks;
    const int64_t spans =
        group % slice == 0 || slice % group == 0 ? (group + slice - 1) / slice : group / slice + 2;
    limit = std::min(limit, config.topk_group * spans);
  }
  return limit;
}

int64_t routed_expert_of(const std::string& name) {
  const std::string key = ".mlp.experts.";
  const size_t at = name.find(key);
  if (at == std::string::npos) return -1;
  size_t i = at + key.size();
  int64_t e = 0;
  bool digits = false;
  while (i < name.size() && name[i] >= '0' && name[i] <= '9') {
    e = e * 10 + (name[i++] - '0');
    digits = true;
  }
  return digits && i < name.size() && name[i] == '.' ? e : -1;
}

ExpertShard::ExpertShard(const ExpertParallel& ep, ParamSet& params, AdamWConfig config)
    : ep_(ep), config_(config) {
  DSEEK_CHECK(config.moment_dtype == DType::F32,
              "[dist] this sharded optimizer keeps f32 moments (optim.moment_dtype bf16 is for one "
              "process)");
  for (Param& p : params.all()) {
    const int64_t e = routed_expert_of(p.name);
    if (e < 0 || !p.trainable) continue;
    DSEEK_CHECK(e < ep.experts, "[train] expert parallel: parameter {} names expert {} of {}",
                p.name, e, ep.experts);
    Slot s{&p, ep.owner(e), {}, {}};
    if (s.owner == ep.rank()) {
      s.m = Tensor::zeros(p.value.shape(), DType::F32, p.value.device());
      s.v = Tensor::zeros(p.value.shape(), DType::F32, p.value.device());
    }
    slots_.push_back(std::move(s));
  }
}

void ExpertShard::follow_params() {
  for (Slot& s : slots_) {
    if (s.owner != ep_.rank() || s.m.device() == s.param->value.device()) continue;
    s.m = s.m.to(s.param->value.device());
    s.v = s.v.to(s.param->value.device());
  }
}

void ExpertShard::reduce_grads() {
  if (ep_.replicas() == 1) return;
  // The owned experts' gradients, one flat buffer on their device, summed over the replicas of
  // this slice.
  std::vector<Tensor> owned = grads();
  if (owned.empty()) return;
  int64_t total = 0;
  for (const Tensor& g : owned) total += g.numel();
  const Tensor flat = Tensor::empty({total}, DType::F32, owned[0].device());
  int64_t at = 0;
  for (const Tensor& g : owned) {
    flat.slice(0, at, at + g.numel()).copy_from(g.reshape({g.numel()}));
    at += g.numel();
  }
  ep_.replica->all_reduce(std::span<float>(flat.data<float>(), size_t(total)));
  at = 0;
  for (const Tensor& g : owned) {
    g.reshape({g.numel()}).copy_from(flat.slice(0, at, at + g.numel()));
    at += g.numel();
  }
}

std::vector<Tensor> ExpertShard::grads() {
  std::vector<Tensor> out;
  for (Slot& s : slots_)
    if (s.owner == ep_.rank()) out.push_back(s.param->grad);
  return out;
}

void ExpertShard::step(double lr) {
  DSEEK_CHECK(std::isfinite(lr) && lr >= 0.0, "[optim] AdamW: learning rate {} must be >= 0", lr);
  follow_params();
  ++step_count_;
  std::vector<Tensor> values, grads, ms, vs;
  std::vector<uint8_t> decay;
  for (Slot& slot : slots_) {
    if (slot.owner != ep_.rank()) continue;
    values.push_back(slot.param->value);
    grads.push_back(slot.param->grad);
    ms.push_back(slot.m);
    vs.push_back(slot.v);
    decay.push_back(slot.param->decay ? 1 : 0);
  }
  if (values.empty()) return;
  // The fused multi-tensor step (ops/adamw.h: the per-element arithmetic of AdamW::step).
  ops::adamw_step(ops::adamw_tensors(std::move(values), std::move(grads), std::move(ms),
                                     std::move(vs), std::move(decay)),
                  adamw_step_scalars(config_, lr, step_count_));
}

void ExpertShard::gather_values() {
  dist::ProcessGroup& g = *ep_.group;
  for (Slot& s : slots_) {
    if (s.owner == 0) continue;  // rank 0's own copy is current
    const int64_t n = s.param->value.numel();
    std::vector<int64_t> counts(size_t(g.size()), 0);
    counts[size_t(s.owner)] = n;
    float* value = s.param->value.data<float>();
    const std::span<const float> mine(value, size_t(s.owner == g.rank() ? n : 0));
    const std::span<float> all(value, size_t(g.rank() == 0 ? n : 0));
    g.gather(mine, all, counts, 0);
  }
}

std::vector<std::pair<std::string, Tensor>> ExpertShard::gather_state() {
  follow_params();
  dist::ProcessGroup& g = *ep_.group;
  std::vector<std::pair<std::string, Tensor>> out;
  for (Slot& s : slots_) {
    const Param& p = *s.param;
    const int64_t n = p.value.numel();
    std::vector<int64_t> counts(size_t(g.size()), 0);
    counts[size_t(s.owner)] = n;
    // Received where the group's buffers live (the GPU under NCCL), handed over on the host.
    Tensor tm, tv;
    if (g.rank() == 0) {
      tm = Tensor::empty(p.value.shape(), DType::F32, p.value.device());
      tv = Tensor::empty(p.value.shape(), DType::F32, p.value.device());
    }
    for (auto [moment, into] : {std::pair{&s.m, &tm}, std::pair{&s.v, &tv}}) {
      if (s.owner == 0) {  // rank 0's own: no exchange
        if (g.rank() == 0) into->copy_from(*moment);
        continue;
      }
      // From the owner in group 0 (world rank = owner); its replicas send nothing.
      const bool sends = g.rank() == s.owner;
      const std::span<const float> mine(sends ? moment->data<float>() : nullptr,
                                        size_t(sends ? n : 0));
      const std::span<float> all(g.rank() == 0 ? into->data<float>() : nullptr,
                                 size_t(g.rank() == 0 ? n : 0));
      g.gather(mine, all, counts, 0);
    }
    if (g.rank() == 0) {
      out.emplace_back("exp_avg." + p.name, tm.to(Device::CPU));
      out.emplace_back("exp_avg_sq." + p.name, tv.to(Device::CPU));
    }
  }
  return out;
}

void ExpertShard::load_state(const std::map<std::string, Tensor>& tensors, int64_t step_count) {
  DSEEK_CHECK(step_count >= 0, "[optim] optimizer state: step count {} is negative", step_count);
  for (const Slot& s : slots_)
    for (const std::string kind : {"exp_avg.", "exp_avg_sq."})
      check_state_tensor(tensors, kind + s.param->name, s.param->value.shape());
  for (Slot& s : slots_) {
    if (s.owner != ep_.rank()) continue;
    s.m.copy_from(tensors.at("exp_avg." + s.param->name).to(DType::F32).to(s.m.device()));
    s.v.copy_from(tensors.at("exp_avg_sq." + s.param->name).to(DType::F32).to(s.v.device()));
  }
  step_count_ = step_count;
}

}  // namespace dseek::train
