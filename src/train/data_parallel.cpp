#include "train/data_parallel.h"

#include <algorithm>
#include <cmath>
#include <cstring>

#include "core/cuda.h"
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

// n floats from src to dst, both on `device` (a stream-ordered copy on the GPU).
void copy_floats(float* dst, const float* src, int64_t n, Device device) {
  if (n <= 0) return;
  if (device == Device::CUDA)
    cuda::copy_on_device(dst, src, size_t(n) * sizeof(float));
  else
    std::memcpy(dst, src, size_t(n) * sizeof(float));
}

// Elements [from, from + n) of a contiguous tensor as a 1-D view.
Tensor piece(const Tensor& t, int64_t from, int64_t n) {
  return t.reshape({-1}).slice(0, from, from + n);
}

std::span<float> span_of(const Tensor& t) {
  return {t.data<float>(), size_t(t.numel())};
}

}  // namespace

DataParallel::DataParallel(dist::ProcessGroup& group, ParamSet& params, AdamWConfig config,
                           int64_t num_hidden_layers, int64_t bucket_elements,
                           const std::function<bool(const Param&)>& exclude)
    : group_(group),
      config_(config),
      num_hidden_layers_(num_hidden_layers),
      device_(group.device()) {
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
  grad_ = Tensor::zeros({shard_.count}, DType::F32, device_);
  m_ = Tensor::zeros({shard_.count}, DType::F32, device_);
  v_ = Tensor::zeros({shard_.count}, DType::F32, device_);
  value_ = Tensor::zeros({shard_.count}, DType::F32, device_);

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
    b.buffer = Tensor::zeros({b.last - b.first}, DType::F32, device_);
    buckets_.push_back(std::move(b));
  }
}

void DataParallel::check_devices() const {
  for (const Slot& s : slots_)
    DSEEK_CHECK(s.param->value.device() == device_ && s.param->grad.device() == device_,
                "[dist] parameter '{}' is on {}, the {} group's buffers on {} (move the "
                "parameters before the first step)",
                s.param->name, device_name(s.param->value.device()), group_.backend(),
                device_name(device_));
}

void DataParallel::arm() {
  check_devices();
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
    copy_floats(b.buffer.data<float>() + (a - b.first),
                s.param->grad.data<float>() + (a - s.offset), e - a, device_);
  }
  const int64_t mine = b.counts[size_t(group_.rank())];
  const int64_t at = mine > 0 ? std::max(b.first, shard_.first) - shard_.first : 0;
  b.work = group_.reduce_scatter_async(
      span_of(b.buffer), std::span<float>(grad_.data<float>() + at, size_t(mine)), b.counts);
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

const ops::AdamWTensors& DataParallel::shard_tensors() {
  // Rebuilt when a parameter has new storage (ParamSet::to after the first step).
  bool current = !shard_tensor_values_.empty() || slots_.empty();
  for (size_t i = 0; i < shard_tensor_values_.size() && current; ++i)
    current = shard_tensor_values_[i] == slots_[i].param->value.raw();
  if (current) return shard_tensors_;
  shard_tensor_values_.clear();
  for (const Slot& slot : slots_) shard_tensor_values_.push_back(slot.param->value.raw());
  std::vector<Tensor> values, grads, ms, vs;
  std::vector<uint8_t> decay;
  const int64_t lo = shard_.first, hi = shard_.first + shard_.count;
  for (const Slot& slot : slots_) {
    const int64_t a = std::max(lo, slot.offset),
                  e = std::min(hi, slot.offset + slot.param->value.numel());
    if (a >= e) continue;
    values.push_back(piece(slot.param->value, a - slot.offset, e - a));
    grads.push_back(piece(grad_, a - lo, e - a));
    ms.push_back(piece(m_, a - lo, e - a));
    vs.push_back(piece(v_, a - lo, e - a));
    decay.push_back(slot.param->decay ? 1 : 0);
  }
  shard_tensors_ = ops::adamw_tensors(std::move(values), std::move(grads), std::move(ms),
                                      std::move(vs), std::move(decay));
  return shard_tensors_;
}

double DataParallel::grad_sum_of_squares() {
  return global_sum_of_squares({}, false);
}

double DataParallel::global_sum_of_squares(const std::vector<Tensor>& extra, bool count_extra) {
  check_devices();
  // Per parameter, then summed, as clip_grad_norm groups it (one rank: the same bits).
  double sum = ops::sum_of_squares(shard_tensors().grads);
  for (const Tensor& g : extra) {
    DSEEK_CHECK(g.device() == device_,
                "[dist] gradients outside the flat space (expert parallelism) live on {}, the "
                "shard on {}",
                device_name(g.device()), device_name(device_));
    if (count_extra) sum += ops::sum_of_squares({g});
  }
  double total[1] = {sum};
  group_.all_reduce(std::span<double>(total, 1));
  return total[0];
}

void DataParallel::scale_gradients(float factor) {
  if (factor != 1.0f) ops::scale_inplace({grad_}, factor);
}

double DataParallel::clip_grad_norm(double max_norm, const std::vector<Tensor>& extra,
                                    bool count_extra) {
  const double norm = std::sqrt(global_sum_of_squares(extra, count_extra));
  if (max_norm > 0.0 && std::isfinite(norm) && norm > max_norm) {
    const float scale = float(max_norm / (norm + 1e-6));
    scale_gradients(scale);
    if (!extra.empty()) ops::scale_inplace(extra, scale);
  }
  return norm;
}

void DataParallel::step(double lr) {
  DSEEK_CHECK(std::isfinite(lr) && lr >= 0.0, "[optim] AdamW: learning rate {} must be >= 0", lr);
  check_devices();
  ++step_count_;
  ops::adamw_step(shard_tensors(), adamw_step_scalars(config_, lr, step_count_));
  const int64_t lo = shard_.first, hi = shard_.first + shard_.count;
  for (const Slot& slot : slots_) {
    const int64_t n = slot.param->value.numel();
    const int64_t a = std::max(lo, slot.offset), e = std::min(hi, slot.offset + n);
    if (a >= e) continue;
    copy_floats(value_.data<float>() + (a - lo),
                slot.param->value.data<float>() + (a - slot.offset), e - a, device_);
  }
  // Every bucket's all-gather in flight at once, then each copied back into the parameters.
  for (Bucket& b : buckets_) {
    const int64_t mine = b.counts[size_t(group_.rank())];
    const int64_t at = mine > 0 ? std::max(b.first, lo) - lo : 0;
    b.work =
        group_.all_gather_async(std::span<const float>(value_.data<float>() + at, size_t(mine)),
                                span_of(b.buffer), b.counts);
  }
  for (Bucket& b : buckets_) {
    b.work->wait();
    b.work.reset();
    for (size_t i = b.slot_begin; i < b.slot_end; ++i) {
      const Slot& sl = slots_[i];
      const int64_t n = sl.param->value.numel();
      const int64_t a = std::max(b.first, sl.offset), e = std::min(b.last, sl.offset + n);
      copy_floats(sl.param->value.data<float>() + (a - sl.offset),
                  b.buffer.data<float>() + (a - b.first), e - a, device_);
    }
  }
}

std::vector<std::pair<std::string, Tensor>> DataParallel::gather_state() {
  std::vector<int64_t> counts;
  for (int r = 0; r < group_.size(); ++r)
    counts.push_back(dist::even_share(flat_size_, group_.size(), r).count);
  const bool root = group_.rank() == 0;
  std::vector<std::pair<std::string, Tensor>> out;
  // One moment at a time through a flat buffer on the group's device (rank 0 only), cut into the
  // parameters' host tensors.
  std::map<std::string, Tensor> moments;
  for (const auto& [kind, shard] : {std::pair<std::string, const Tensor*>{"exp_avg.", &m_},
                                    std::pair<std::string, const Tensor*>{"exp_avg_sq.", &v_}}) {
    const Tensor all = Tensor::empty({root ? flat_size_ : 0}, DType::F32, device_);
    group_.gather(span_of(*shard), span_of(all), counts, 0);
    if (!root) continue;
    const Tensor host = all.to(Device::CPU);
    for (const Slot& s : slots_) {
      const Param& p = *s.param;
      Tensor t = Tensor::empty(p.value.shape());
      std::memcpy(t.data<float>(), host.data<float>() + s.offset, t.nbytes());
      moments[kind + p.name] = std::move(t);
    }
  }
  if (!root) return out;
  for (const Slot& s : slots_)
    for (const std::string kind : {"exp_avg.", "exp_avg_sq."})
      out.emplace_back(kind + s.param->name, std::move(moments.at(kind + s.param->name)));
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
    copy_values(piece(m_, a - lo, e - a),
                piece(tensors.at("exp_avg." + s.param->name), a - s.offset, e - a),
                "exp_avg." + s.param->name);
    copy_values(piece(v_, a - lo, e - a),
                piece(tensors.at("exp_avg_sq." + s.param->name), a - s.offset, e - a),
                "exp_avg_sq." + s.param->name);
  }
  step_count_ = step_count;
}

}  // namespace dseek::train
