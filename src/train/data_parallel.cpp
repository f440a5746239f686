#include "train/data_parallel.h"

#include <algorithm>
#include <cmath>
#include <cstring>

#include "core/error.h"

namespace dseek::train {
namespace {

// The block layer index of a parameter of a decoder block ("model.layers.<l>.self_attn.*",
// ".mlp.*", ".input_layernorm.*", ".post_attention_layernorm.*"); −1 for anything else (the
// embedding, final norm, head, and an MTP module's enorm/hnorm/eh_proj/shared_head).
int64_t block_layer_of(const std::string& name) {
  const std::string prefix = "model.layers.";
  if (name.rfind(prefix, 0) != 0) return -1;
  size_t at = prefix.size();
  int64_t layer = 0;
  bool digits = false;
  while (at < name.size() && name[at] >= '0' && name[at] <= '9') {
    layer = layer * 10 + (name[at++] - '0');
    digits = true;
  }
  if (!digits || at >= name.size() || name[at] != '.') return -1;
  const std::string rest = name.substr(at + 1);
  for (const char* part : {"self_attn.", "mlp.", "input_layernorm.", "post_attention_layernorm."})
    if (rest.rfind(part, 0) == 0) return layer;
  return -1;
}

// Elements of [a0, a1) inside [b0, b1).
int64_t overlap(int64_t a0, int64_t a1, int64_t b0, int64_t b1) {
  return std::max<int64_t>(0, std::min(a1, b1) - std::max(a0, b0));
}

}  // namespace

DataParallel::DataParallel(dist::ProcessGroup& group, ParamSet& params, AdamWConfig config,
                           int64_t num_hidden_layers, int64_t bucket_elements,
                           const std::function<bool(const Param&)>& exclude)
    : group_(group), config_(config), num_hidden_layers_(num_hidden_layers) {
  DSEEK_CHECK(config.moment_dtype == DType::F32,
              "[dist] this sharded optimizer keeps f32 moments (optim.moment_dtype bf16 is for one "
              "process)");
  DSEEK_CHECK(bucket_elements > 0, "[dist] bucket of {} elements", bucket_elements);
  for (Param& p : params.all()) {
    if (!p.trainable || (exclude && exclude(p))) continue;
    slots_.push_back(
        {&p, flat_size_, block_layer_of(p.name), p.name == "model.embed_tokens.weight"});
    flat_size_ += p.value.numel();
  }
  ready_.assign(slots_.size(), 0);
  shard_ = dist::even_share(flat_size_, group.size(), group.rank());
  grad_.assign(size_t(shard_.count), 0.0f);
  m_.assign(size_t(shard_.count), 0.0f);
  v_.assign(size_t(shard_.count), 0.0f);
  value_.assign(size_t(shard_.count), 0.0f);

  size_t slot = 0;
  for (int64_t first = 0; first < flat_size_; first += bucket_elements) {
    Bucket b;
    b.first = first;
    b.last = std::min(flat_size_, first + bucket_elements);
    for (int r = 0; r < group.size(); ++r) {
      const dist::Range s = dist::even_share(flat_size_, group.size(), r);
      b.counts.push_back(overlap(b.first, b.last, s.first, s.first + s.count));
    }
    while (slot < slots_.size() &&
           slots_[slot].offset + slots_[slot].param->value.numel() <= b.first)
      ++slot;
    b.slot_begin = slot;
    size_t end = slot;
    while (end < slots_.size() && slots_[end].offset < b.last) ++end;
    b.slot_end = end;
    b.buffer.assign(size_t(b.last - b.first), 0.0f);
    buckets_.push_back(std::move(b));
  }
}

void DataParallel::arm() {
  for (const Bucket& b : buckets_)
    DSEEK_CHECK(!b.issued, "[dist] arm: a bucket of the previous step is still in flight");
  std::fill(ready_.begin(), ready_.end(), 0);
  next_bucket_ = int64_t(buckets_.size()) - 1;
  armed_ = true;
}

void DataParallel::on_block_backward(int64_t layer) {
  if (!armed_) return;
  for (size_t i = 0; i < slots_.size(); ++i) {
    const Slot& s = slots_[i];
    const bool now = layer < num_hidden_layers_ ? !s.embedding && !(s.layer >= 0 && s.layer < layer)
                                                : s.layer == layer;
    if (now) ready_[i] = 1;
  }
  issue_ready();
  // MPI progresses nonblocking collectives inside MPI calls: a test per issued bucket keeps them
  // moving while backward computes.
  for (Bucket& b : buckets_)
    if (b.issued) b.work->test();
}

void DataParallel::issue_ready() {
  // Strictly descending: every rank issues the same collectives in the same order even if its
  // backward announced readiness differently.
  while (next_bucket_ >= 0) {
    Bucket& b = buckets_[size_t(next_bucket_)];
    bool all = true;
    for (size_t i = b.slot_begin; i < b.slot_end && all; ++i) all = ready_[i] != 0;
    if (!all) break;
    issue(b);
    --next_bucket_;
  }
}

void DataParallel::issue(Bucket& b) {
  for (size_t i = b.slot_begin; i < b.slot_end; ++i) {
    const Slot& s = slots_[i];
    const int64_t n = s.param->value.numel();
    const int64_t a = std::max(b.first, s.offset), e = std::min(b.last, s.offset + n);
    std::memcpy(b.buffer.data() + (a - b.first), s.param->grad.data<float>() + (a - s.offset),
                size_t(e - a) * sizeof(float));
  }
  const int64_t mine = b.counts[size_t(group_.rank())];
  const int64_t at = mine > 0 ? std::max(b.first, shard_.first) - shard_.first : 0;
  b.work = group_.reduce_scatter_async(b.buffer, std::span<float>(grad_.data() + at, size_t(mine)),
                                       b.counts);
  b.issued = true;
}

void DataParallel::reduce_gradients() {
  if (!armed_) arm();
  std::fill(ready_.begin(), ready_.end(), 1);
  issue_ready();
  for (Bucket& b : buckets_) {
    b.work->wait();
    b.work.reset();
    b.issued = false;
  }
  armed_ = false;
}

double DataParallel::clip_grad_norm(double max_norm, const std::vector<std::span<float>>& extra,
                                    bool count_extra) {
  // Per parameter, then summed, as clip_grad_norm groups it (one rank: the same bits).
  double sum = 0.0;
  const int64_t lo = shard_.first, hi = shard_.first + shard_.count;
  for (const Slot& slot : slots_) {
    const int64_t a = std::max(lo, slot.offset),
                  e = std::min(hi, slot.offset + slot.param->value.numel());
    if (a >= e) continue;
    const float* g = grad_.data() + (a - lo);
    const int64_t n = e - a;
    double part = 0.0;
#pragma omp parallel for schedule(static) reduction(+ : part) if (n >= (1 << 15))
    for (int64_t k = 0; k < n; ++k) part += double(g[k]) * double(g[k]);
    sum += part;
  }
  for (const std::span<float> g : extra) {
    if (!count_extra) break;
    double part = 0.0;
    for (const float x : g) part += double(x) * double(x);
    sum += part;
  }
  double total[1] = {sum};
  group_.all_reduce(std::span<double>(total, 1));
  const double norm = std::sqrt(total[0]);
  if (max_norm > 0.0 && std::isfinite(norm) && norm > max_norm) {
    const float scale = float(max_norm / (norm + 1e-6));
    for (float& x : grad_) x *= scale;
    for (const std::span<float> g : extra)
      for (float& x : g) x *= scale;
  }
  return norm;
}

void DataParallel::step(double lr) {
  DSEEK_CHECK(std::isfinite(lr) && lr >= 0.0, "[optim] AdamW: learning rate {} must be >= 0", lr);
  ++step_count_;
  const AdamWStep s = adamw_step_scalars(config_, lr, step_count_);
  const int64_t lo = shard_.first, hi = shard_.first + shard_.count;
  for (const Slot& slot : slots_) {
    const int64_t n = slot.param->value.numel();
    const int64_t a = std::max(lo, slot.offset), e = std::min(hi, slot.offset + n);
    if (a >= e) continue;
    float* value = slot.param->value.data<float>() + (a - slot.offset);
    adamw_update(s, s.decay_factor(slot.param->decay), value, grad_.data() + (a - lo),
                 m_.data() + (a - lo), v_.data() + (a - lo), e - a);
    std::memcpy(value_.data() + (a - lo), value, size_t(e - a) * sizeof(float));
  }
  // Every bucket's all-gather in flight at once, then each copied back into the parameters.
  for (Bucket& b : buckets_) {
    const int64_t mine = b.counts[size_t(group_.rank())];
    const int64_t at = mine > 0 ? std::max(b.first, lo) - lo : 0;
    b.work = group_.all_gather_async(std::span<const float>(value_.data() + at, size_t(mine)),
                                     b.buffer, b.counts);
  }
  for (Bucket& b : buckets_) {
    b.work->wait();
    b.work.reset();
    for (size_t i = b.slot_begin; i < b.slot_end; ++i) {
      const Slot& sl = slots_[i];
      const int64_t n = sl.param->value.numel();
      const int64_t a = std::max(b.first, sl.offset), e = std::min(b.last, sl.offset + n);
      std::memcpy(sl.param->value.data<float>() + (a - sl.offset), b.buffer.data() + (a - b.first),
                  size_t(e - a) * sizeof(float));
    }
  }
}

std::vector<std::pair<std::string, Tensor>> DataParallel::gather_state() {
  std::vector<int64_t> counts;
  for (int r = 0; r < group_.size(); ++r)
    counts.push_back(dist::even_share(flat_size_, group_.size(), r).count);
  const bool root = group_.rank() == 0;
  std::vector<float> m(root ? size_t(flat_size_) : 0), v(root ? size_t(flat_size_) : 0);
  group_.gather(m_, m, counts, 0);
  group_.gather(v_, v, counts, 0);
  std::vector<std::pair<std::string, Tensor>> out;
  if (!root) return out;
  for (const Slot& s : slots_) {
    const Param& p = *s.param;
    Tensor tm = Tensor::empty(p.value.shape()), tv = Tensor::empty(p.value.shape());
    std::memcpy(tm.data<float>(), m.data() + s.offset, tm.nbytes());
    std::memcpy(tv.data<float>(), v.data() + s.offset, tv.nbytes());
    out.emplace_back("exp_avg." + p.name, std::move(tm));
    out.emplace_back("exp_avg_sq." + p.name, std::move(tv));
  }
  return out;
}

void DataParallel::load_state(const std::map<std::string, Tensor>& tensors, int64_t step_count) {
  DSEEK_CHECK(step_count >= 0, "[optim] optimizer state: step count {} is negative", step_count);
  for (const Slot& s : slots_)
    for (const std::string kind : {"exp_avg.", "exp_avg_sq."})
      check_state_tensor(tensors, kind + s.param->name, s.param->value.shape());
  const int64_t lo = shard_.first, hi = shard_.first + shard_.count;
  for (const Slot& s : slots_) {
    const int64_t n = s.param->value.numel();
    const int64_t a = std::max(lo, s.offset), e = std::min(hi, s.offset + n);
    if (a >= e) continue;
    const Tensor tm = tensors.at("exp_avg." + s.param->name).to(DType::F32);
    const Tensor tv = tensors.at("exp_avg_sq." + s.param->name).to(DType::F32);
    std::memcpy(m_.data() + (a - lo), tm.data<float>() + (a - s.offset),
                size_t(e - a) * sizeof(float));
    std::memcpy(v_.data() + (a - lo), tv.data<float>() + (a - s.offset),
                size_t(e - a) * sizeof(float));
  }
  step_count_ = step_count;
}

}  // namespace dseek::train
