#include "train/optimizer.h"

#include <algorithm>
#include <atomic>
#include <cmath>
#include <cstdlib>
#include <cstring>
#include <map>

#include "core/cuda.h"
#include "core/env.h"
#include "core/error.h"
#include "ops/grad_rows.h"
#include "train/expert_parallel.h"

namespace dseek::train {

void check_state_tensor(const std::map<std::string, Tensor>& tensors, const std::string& name,
                        const Shape& shape) {
  auto it = tensors.find(name);
  DSEEK_CHECK(it != tensors.end(), "[optim] optimizer state: missing tensor '{}'", name);
  DSEEK_CHECK(it->second.defined() && it->second.shape() == shape,
              "[optim] optimizer state: tensor '{}' has shape {}, the parameter has {}", name,
              it->second.defined() ? shape_str(it->second.shape()) : "(undefined)",
              shape_str(shape));
}

AdamW::AdamW(ParamSet& params, AdamWConfig config) : params_(&params), config_(config) {
  DSEEK_CHECK(config.beta1 >= 0.0 && config.beta1 < 1.0, "[optim] AdamW: beta1 {} not in [0, 1)",
              config.beta1);
  DSEEK_CHECK(config.beta2 >= 0.0 && config.beta2 < 1.0, "[optim] AdamW: beta2 {} not in [0, 1)",
              config.beta2);
  DSEEK_CHECK(config.eps > 0.0 && std::isfinite(config.eps), "[optim] AdamW: eps {} must be > 0",
              config.eps);
  DSEEK_CHECK(config.weight_decay >= 0.0 && std::isfinite(config.weight_decay),
              "[optim] AdamW: weight_decay {} must be >= 0", config.weight_decay);
  DSEEK_CHECK(config.moment_dtype == DType::F32 || config.moment_dtype == DType::BF16,
              "[optim] AdamW: moments must be f32 or bf16, got {}",
              dtype_name(config.moment_dtype));
  const DType md = config.moment_dtype;
  for (const Param& p : params.all()) {
    const Device d = p.device();
    exp_avg_.push_back(p.trainable ? Tensor::zeros(p.shape(), md, d) : Tensor());
    exp_avg_sq_.push_back(p.trainable ? Tensor::zeros(p.shape(), md, d) : Tensor());
  }
}

AdamW::~AdamW() {
  try {
    await_updates();  // the moments are freed on the main stream after this
  } catch (...) {
  }
}

void AdamW::await_updates() const {
  if (last_mark_ != 0) cuda::wait_background(last_mark_);
}

void AdamW::to(Device device) {
  await_updates();
  for (size_t i = 0; i < exp_avg_.size(); ++i) {
    if (!exp_avg_[i].defined()) continue;
    exp_avg_[i] = exp_avg_[i].to(device);
    exp_avg_sq_[i] = exp_avg_sq_[i].to(device);
  }
  groups_.clear();  // their tables name the old storage
}

std::string update_group(const std::string& name) {
  const std::string layers = "model.layers.";
  if (name.rfind(layers, 0) == 0) {
    const size_t dot = name.find('.', layers.size());
    return name.substr(0, dot);
  }
  const size_t dot = name.rfind('.');
  return dot == std::string::npos ? name : name.substr(0, dot);
}

// The update's groups, each a mark the next forward can wait for, in the forward's order of reads.
// A layer's routed experts (most of its bytes) get two groups of their own after the rest of the
// layer (norms, attention, router, shared experts): their gate/up projections, then their down
// projections. The next forward then runs a layer's attention, router and shared experts while
// the update still writes that layer's experts, and its grouped gate/up GEMM while the down
// projections are updated, instead of waiting for the whole layer.
std::string update_order_key(const std::string& name) {
  const std::string group = update_group(name);
  if (routed_expert_of(name) < 0) return group;
  return group + (name.ends_with(".down_proj.weight") ? " experts down" : " experts gate/up");
}

// Whether groups_ still name every trainable parameter's current value, grad and moments (a
// ParamSet::to or a replaced tensor gives them new storage).
bool AdamW::groups_current() const {
  if (images_version_ != params_->fp8_images().version) return false;
  const std::deque<Param>& all = params_->all_in_flight();
  size_t trainable = 0, listed = 0;
  for (const Param& p : all) trainable += p.trainable ? 1 : 0;
  for (const Group& g : groups_) {
    const ops::AdamWTensors& t = g.tensors;
    for (size_t k = 0; k < g.params.size(); ++k) {
      const size_t index = g.params[k];
      if (index >= all.size()) return false;
      const Param& p = all[index];
      if (!p.trainable || t.values[k].raw() != p.value.raw() || t.lows[k].raw() != p.low.raw() ||
          t.grads[k].raw() != p.grad.raw() || t.exp_avgs[k].raw() != exp_avg_[index].raw() ||
          t.exp_avg_sqs[k].raw() != exp_avg_sq_[index].raw() ||
          t.computes[k].defined() != p.compute.defined() ||
          (p.compute.defined() && t.computes[k].raw() != p.compute.raw()) ||
          t.row_flags[k].defined() != p.grad_rows.defined() ||
          (p.grad_rows.defined() && t.row_flags[k].raw() != p.grad_rows.raw()))
        return false;
      ++listed;
    }
  }
  return listed == trainable;
}

void AdamW::build_groups() {
  groups_.clear();
  // The FP8 images by master address: expert e's slices of an image's blocks.
  ops::Fp8WeightImages& fp8 = params_->fp8_images();
  images_version_ = fp8.version;
  std::map<const void*, std::pair<size_t, ops::AdamWImage>> image_of;
  static const bool images_on = [] {  // DSEEK_FP8_IMAGES=0: the update writes no images
    return !env_is("DSEEK_FP8_IMAGES", "0");
  }();
  for (size_t i = 0; images_on && i < fp8.images.size(); ++i) {
    const ops::Fp8ExpertWeights& b = fp8.images[i].blocks;
    for (int64_t e = 0; e < b.experts; ++e) {
      const auto slice = [e](const Tensor& t) {
        return t.slice(0, e, e + 1).reshape({t.size(1), t.size(2)});
      };
      image_of[fp8.images[i].masters[size_t(e)].raw()] = {
          i, {slice(b.data), slice(b.scale), slice(b.data_t), slice(b.scale_t)}};
    }
  }
  std::vector<int64_t> covered(fp8.images.size(), 0);
  // A group: every parameter of one update_order_key, the groups in order of first appearance
  // (parameter order puts a layer's norms and attention before its experts).
  std::map<std::string, size_t> group_of;
  std::vector<std::vector<size_t>> members;
  size_t i = 0;
  for (const Param& p : params_->all()) {
    const size_t index = i++;
    if (!p.trainable) continue;
    DSEEK_CHECK(exp_avg_[index].device() == p.device(),
                "[optim] AdamW: parameter '{}' is on {}, its moments on {} (call AdamW::to after "
                "ParamSet::to)",
                p.name, device_name(p.device()), device_name(exp_avg_[index].device()));
    const auto [it, added] = group_of.emplace(update_order_key(p.name), members.size());
    if (added) members.emplace_back();
    members[it->second].push_back(index);
  }
  for (std::vector<size_t>& m : members) {
    std::vector<Tensor> values, grads, ms, vs, computes, row_flags, lows;
    std::vector<uint8_t> decay;
    std::vector<ops::AdamWImage> images;
    for (size_t index : m) {
      const Param& p = params_->all_in_flight()[index];
      values.push_back(p.value);
      grads.push_back(p.grad);
      ms.push_back(exp_avg_[index]);
      vs.push_back(exp_avg_sq_[index]);
      decay.push_back(p.decay ? 1 : 0);
      computes.push_back(p.compute);
      row_flags.push_back(p.grad_rows);  // the update reads only the rows a step wrote
      lows.push_back(p.low);             // a split master's low half, or undefined
      const auto it = p.split() ? image_of.end() : image_of.find(p.value.raw());
      const bool with_image = it != image_of.end() && !p.compute.defined() && p.value.is_cuda();
      images.push_back(with_image ? it->second.second : ops::AdamWImage{});
      if (with_image) ++covered[it->second.first];
    }
    groups_.push_back(
        {ops::adamw_tensors(std::move(values), std::move(grads), std::move(ms), std::move(vs),
                            std::move(decay), std::move(computes), std::move(images), fp8.bad,
                            std::move(row_flags), std::move(lows)),
         std::move(m)});
  }
  image_covered_.assign(fp8.images.size(), 0);
  for (size_t i = 0; i < fp8.images.size(); ++i)
    image_covered_[i] = covered[i] == fp8.images[i].blocks.experts ? 1 : 0;
}

void AdamW::mark_images_current() {
  ops::Fp8WeightImages& fp8 = params_->fp8_images();
  for (size_t i = 0; i < fp8.images.size(); ++i)
    fp8.images[i].current = i < image_covered_.size() && image_covered_[i] != 0;
}

void AdamW::check_step(double lr) const {
  DSEEK_CHECK(std::isfinite(lr) && lr >= 0.0, "[optim] AdamW: learning rate {} must be >= 0", lr);
  DSEEK_CHECK(params_->size() == exp_avg_.size(),
              "[optim] AdamW: the ParamSet has {} parameters, the optimizer was built for {}",
              params_->size(), exp_avg_.size());
}

void AdamW::step(double lr, float grad_scale) {
  check_step(lr);
  params_->await_all();  // an earlier step_async's update, before this one reads its results
  if (!groups_current()) build_groups();
  ++step_count_;
  const AdamWStep s = adamw_step_scalars(config_, lr, step_count_);
  for (const Group& g : groups_) ops::adamw_step(g.tensors, s, grad_scale);
  mark_images_current();
}

namespace {

// The SMs step_async keeps for its update while the next forward runs (cuda::compute_sms):
// DSEEK_UPDATE_SMS, else 32 of an H100's 132. V2-Lite's 4-layer step (docs/BENCHMARKS.md, run W):
// 53.6 ms keeping none, 52.7 with 32, 53.1 with 48 (each with DSEEK_UPDATE_PARTS=4). The update
// moves ~22 bytes a parameter; a forward GEMM on the other SMs is compute-bound.
int update_sms() {
  static const int sms = [] {
    const char* env = std::getenv("DSEEK_UPDATE_SMS");
    return env ? std::max(0, std::atoi(env)) : 32;
  }();
  return sms;
}

// Whether step_async updates the next forward's embedding rows first: DSEEK_LOOKUP_ROWS_FIRST=1
// at start-up, or set_lookup_rows_first. Off by default until it has been timed on a GPU.
std::atomic<bool>& lookup_rows_switch() {
  static std::atomic<bool> on = [] { return env_is("DSEEK_LOOKUP_ROWS_FIRST", "1"); }();
  return on;
}

}  // namespace

void set_lookup_rows_first(bool on) {
  lookup_rows_switch().store(on);
}

bool lookup_rows_first() {
  return lookup_rows_switch().load();
}

int AdamW::lookup_group() const {
  if (!lookup_rows_first()) return -1;
  const std::deque<Param>& all = params_->all_in_flight();
  for (size_t g = 0; g < groups_.size(); ++g) {
    const Group& group = groups_[g];
    if (group.params.size() == 1 && all[group.params[0]].lookup_only &&
        ops::adamw_steps_rows(group.tensors))
      return int(g);
  }
  return -1;
}

void AdamW::step_async(double lr, float grad_scale, bool defer_overwritten,
                       const std::vector<int32_t>& next_lookup) {
  step_async(lr, GradClip(0.0, grad_scale), defer_overwritten, next_lookup);
}

void AdamW::step_async(double lr, const GradClip& clip, bool defer_overwritten,
                       const std::vector<int32_t>& next_lookup) {
  if (params_->device() != Device::CUDA) {
    step(lr, clip.factor());
    params_->zero_grad(defer_overwritten);
    return;
  }
  // A factor still to be computed on the device is read there; host values pass as before.
  const float* grad_scale_at = clip.factor_on_device();
  const float grad_scale = grad_scale_at ? 1.0f : clip.factor();
  check_step(lr);
  params_->await_all();  // the order of two updates of one parameter (the background is in order,
                         // this only matters after a step() between them)
  if (!groups_current()) build_groups();  // allocates: before the background scope
  ++step_count_;
  const AdamWStep s = adamw_step_scalars(config_, lr, step_count_);
  std::deque<Param>& all = params_->all_in_flight();
  // zero_grad's flags for every gradient now (host state, read by the next step's writers in
  // program order); the zeros themselves follow each group's update.
  std::vector<uint8_t> write_zeros(all.size(), 0);
  for (size_t i = 0; i < all.size(); ++i)
    if (all[i].grad.defined()) write_zeros[i] = mark_grad_zero(all[i], defer_overwritten);
  for (size_t i = 0; i < all.size(); ++i)  // a gradient nothing updates: zeroed here, in order
    if (write_zeros[i] && !all[i].trainable) write_grad_zeros(all[i]);
  // The next forward's embedding rows first, the rest of the embedding last (next_lookup).
  int split = next_lookup.empty() ? -1 : lookup_group();
  std::vector<int32_t> rows;
  std::vector<uint8_t> flags;
  if (split >= 0) {
    const Param& e = all[groups_[size_t(split)].params[0]];
    const int64_t R = e.shape()[0];
    flags.assign(size_t(R), 0);
    for (int32_t id : next_lookup) {
      if (id < 0 || id >= R) {  // the lookup will name the bad id; here the whole table goes first
        split = -1;
        break;
      }
      if (!flags[size_t(id)]) rows.push_back(id);
      flags[size_t(id)] = 1;
    }
    std::sort(rows.begin(), rows.end());  // (in the table's order of addresses)
    if (split >= 0 && (!lookup_rows_.flags.defined() || lookup_rows_.flags.numel() != R)) {
      // Allocated outside the background scope, once: room for every row.
      lookup_rows_.rows = Tensor::empty({R}, DType::I32, Device::CUDA);
      lookup_rows_.flags = Tensor::empty({R}, DType::U8, Device::CUDA);
    }
  }
  uint64_t rest_mark = 0;
  {
    cuda::Background background;
    if (split >= 0) {  // on the background stream, after the last update that read the old set
      cuda::copy_to_device(lookup_rows_.rows.raw(), rows.data(), rows.size() * sizeof(int32_t));
      cuda::copy_to_device(lookup_rows_.flags.raw(), flags.data(), flags.size());
      lookup_rows_.count = int64_t(rows.size());
    }
    for (size_t g = 0; g < groups_.size(); ++g) {
      const Group& group = groups_[g];
      if (int(g) == split) {
        ops::adamw_step_rows(group.tensors, s, lookup_rows_, ops::AdamWRowPart::listed, grad_scale,
                             /*short_blocks=*/true, grad_scale_at);
        last_mark_ = background.mark();
        params_->set_lookup_ready(group.params[0], last_mark_, next_lookup);
        continue;
      }
      ops::adamw_step(group.tensors, s, grad_scale, /*short_blocks=*/true, grad_scale_at);
      for (size_t index : group.params)
        if (write_zeros[index]) write_grad_zeros(all[index]);
      last_mark_ = background.mark();
      for (size_t index : group.params) params_->set_pending(index, last_mark_);
    }
    rest_mark = last_mark_;
    if (split >= 0) {
      // The embedding's other rows, then its zeros; its readers other than the next forward's
      // lookup (the backward's gradient rows, a checkpoint) wait for this mark.
      const Group& group = groups_[size_t(split)];
      ops::adamw_step_rows(group.tensors, s, lookup_rows_, ops::AdamWRowPart::rest, grad_scale,
                           /*short_blocks=*/true, grad_scale_at);
      if (write_zeros[group.params[0]]) write_grad_zeros(all[group.params[0]]);
      last_mark_ = background.mark();
      params_->set_pending(group.params[0], last_mark_);
    }
  }
  // SMs kept until the forward reaches the head's update (not through the embedding's rest, which
  // the next backward would otherwise run without them until its end).
  cuda::keep_sms_for_background(update_sms(), rest_mark);
  mark_images_current();
}

AdamWStep adamw_step_scalars(const AdamWConfig& config, double lr, int64_t step) {
  return ops::adamw_step_scalars(config.beta1, config.beta2, config.eps, config.weight_decay, lr,
                                 step);
}

std::vector<std::pair<std::string, Tensor>> AdamW::state_tensors() const {
  await_updates();  // the moments of an update in flight
  std::vector<std::pair<std::string, Tensor>> out;
  size_t i = 0;
  for (const Param& p : params_->all()) {
    if (p.trainable && i < exp_avg_.size()) {
      // bf16 moments as f32 copies (exact): checkpoints hold f32 tensors.
      const auto f32 = [](const Tensor& t) {
        return t.dtype() == DType::F32 ? t : t.to(DType::F32);
      };
      out.emplace_back("exp_avg." + p.name, f32(exp_avg_[i]));
      out.emplace_back("exp_avg_sq." + p.name, f32(exp_avg_sq_[i]));
    }
    ++i;
  }
  return out;
}

void AdamW::load_state(const std::map<std::string, Tensor>& tensors, int64_t step_count) {
  DSEEK_CHECK(step_count >= 0, "[optim] optimizer state: step count {} is negative", step_count);
  DSEEK_CHECK(params_->size() == exp_avg_.size(),
              "[optim] AdamW: the ParamSet has {} parameters, the optimizer was built for {}",
              params_->size(), exp_avg_.size());
  await_updates();
  // Validate everything first so a bad checkpoint leaves the optimizer as it was.
  for (const Param& p : params_->all()) {
    if (!p.trainable) continue;
    check_state_tensor(tensors, "exp_avg." + p.name, p.shape());
    check_state_tensor(tensors, "exp_avg_sq." + p.name, p.shape());
  }
  size_t i = 0;
  for (const Param& p : params_->all()) {
    if (p.trainable) {
      // (converted to the moments' dtype: a checkpoint of either loads)
      copy_values(exp_avg_[i], tensors.at("exp_avg." + p.name), "exp_avg." + p.name);
      copy_values(exp_avg_sq_[i], tensors.at("exp_avg_sq." + p.name), "exp_avg_sq." + p.name);
    }
    ++i;
  }
  step_count_ = step_count;
}

double grad_norm(const ParamSet& params) {
  std::vector<Tensor> grads;
  for (const Param& p : params.all())
    if (p.trainable) grads.push_back(p.grad);
  return std::sqrt(ops::sum_of_squares(grads));
}

namespace {

std::vector<Param*> trainable(ParamSet& params) {
  std::vector<Param*> out;
  // Without waiting for updates in flight: only the gradients' addresses are taken here (their
  // readers are queued after those updates anyway).
  for (Param& p : params.all_in_flight())
    if (p.trainable) out.push_back(&p);
  return out;
}

std::vector<Tensor> grads_of(const std::vector<Param*>& ps) {
  std::vector<Tensor> out;
  for (const Param* p : ps) out.push_back(p->grad);
  return out;
}

}  // namespace

BackwardGradNorm::BackwardGradNorm(ParamSet& params, int64_t num_hidden_layers)
    : params_(&params),
      layers_(num_hidden_layers),
      grads_(trainable(params)),
      parts_(grads_of(grads_)) {
  const std::string layers = "model.layers.";
  for (const Param* p : grads_) {
    const std::string group = update_group(p->name);
    int64_t layer = group == "model.embed_tokens" ? -2 : -1;
    if (group.rfind(layers, 0) == 0) layer = std::stoll(group.substr(layers.size()));
    layer_of_.push_back(layer);
  }
  // The routed experts' weights, grouped by layer and projection: "<prefix>.experts.<e>.<proj>".
  // On the GPU only, where one grouped wgrad writes each group (the CPU's experts run one by one,
  // moe_layer_host.cpp).
  by_writer_.assign(grads_.size(), 0);
  if (params.device() != Device::CUDA) return;
  // A gradient with row flags (the embedding's): the squares of its flagged rows only, when the
  // norm is taken — a few MB instead of the whole matrix (0.84 GB for V2-Lite's embedding) on the
  // step's critical path. The CPU sums every gradient whole, for grad_norm's bits.
  for (size_t i = 0; i < grads_.size(); ++i)
    if (grads_[i]->grad_rows.defined()) {
      by_writer_[i] = 1;
      by_rows_.emplace_back(grads_[i], parts_.external({i}));
    }
  std::map<std::string, std::vector<size_t>> groups;  // "<prefix>.experts.*.<proj>.weight"
  for (size_t i = 0; i < grads_.size(); ++i) {
    const std::string& name = grads_[i]->name;
    const int64_t e = routed_expert_of(name);
    if (e < 0 || !name.ends_with("_proj.weight")) continue;
    const std::string index = ".experts." + std::to_string(e) + ".";
    const size_t at = name.find(index);
    groups[name.substr(0, at) + ".experts.*." + name.substr(at + index.size())].push_back(i);
  }
  for (const auto& [group, members] : groups) {
    double* slot = parts_.external(members);
    for (size_t i : members) {
      by_writer_[i] = 1;
      grads_[i]->grad_squares = slot;
    }
  }
}

BackwardGradNorm::~BackwardGradNorm() {
  release_slots();
}

void BackwardGradNorm::release_slots() {
  for (Param* p : grads_) p->grad_squares = nullptr;
}

void BackwardGradNorm::add_where(const std::function<bool(int64_t layer)>& take) {
  std::vector<std::pair<size_t, size_t>> runs;
  auto here = [&](size_t i) { return !by_writer_[i] && take(layer_of_[i]); };
  for (size_t i = 0; i < grads_.size();) {
    if (!here(i)) {
      ++i;
      continue;
    }
    size_t j = i;
    while (j < grads_.size() && here(j)) settle_grad(*grads_[j++]);  // stale zeros
    runs.emplace_back(i, j);
    i = j;
  }
  if (runs.empty()) return;
  if (params_->device() != Device::CUDA) {
    for (auto [a, b] : runs) parts_.add(a, b);
    return;
  }
  cuda::Background background;  // after the main stream's work so far: the layer's backward
  for (auto [a, b] : runs) parts_.add(a, b);
  last_mark_ = background.mark();
}

void BackwardGradNorm::on_block_backward(int64_t layer) {
  if (layer < 0 || layer >= layers_) return;  // an MTP block: added with the head, below
  if (!head_added_) {  // the head, the final norm and the MTP modules ran before the main layers
    head_added_ = true;
    add_where([this](int64_t l) { return l == -1 || l >= layers_; });
  }
  add_where([layer](int64_t l) { return l == layer; });
}

void BackwardGradNorm::finish_rest() {
  // A slot no wgrad took (an MTP module the loss leaves out) is still zero, as are the gradients
  // nothing wrote (settle_grad writes the zeros zero_grad left to their writer).
  release_slots();
  for (Param* p : grads_) settle_grad(*p);
  for (const auto& [p, slot] : by_rows_)
    ops::sum_of_squares_flagged_rows(p->grad, p->grad_rows, slot);
}

double BackwardGradNorm::norm() {
  finish_rest();
  return std::sqrt(parts_.finish(last_mark_));
}

GradClip BackwardGradNorm::clip(double max_norm) {
  if (params_->device() != Device::CUDA) {
    const double n = norm();
    return GradClip(n, clip_factor(n, max_norm));
  }
  finish_rest();
  return GradClip(ops::clip_on_device(parts_.finish_on_device(last_mark_), max_norm));
}

GradClip::GradClip(Tensor on_device) : on_device_(std::move(on_device)) {
  DSEEK_CHECK(on_device_.is_cuda() && on_device_.dtype() == DType::I64 && on_device_.numel() == 2,
              "[optim] GradClip: expected the GPU's two words (norm, factor), got {} {} on {}",
              dtype_name(on_device_.dtype()), shape_str(on_device_.shape()),
              on_device_.is_cuda() ? "the GPU" : "the CPU");
}

void GradClip::read() const {
  if (read_ || !on_device_.defined()) return;
  int64_t words[2] = {0, 0};
  cuda::copy_to_host(words, on_device_.raw(), sizeof(words));  // waits for the main stream
  std::memcpy(&norm_, &words[0], sizeof(double));
  std::memcpy(&factor_, &words[1], sizeof(float));
  read_ = true;
}

double GradClip::norm() const {
  read();
  return norm_;
}

float GradClip::factor() const {
  read();
  return factor_;
}

const float* GradClip::factor_on_device() const {
  if (!on_device_.defined()) return nullptr;
  return reinterpret_cast<const float*>(static_cast<const int64_t*>(on_device_.raw()) + 1);
}

float clip_factor(double norm, double max_norm) {
  return max_norm > 0.0 && std::isfinite(norm) && norm > max_norm ? float(max_norm / (norm + 1e-6))
                                                                  : 1.0f;
}

double clip_grad_norm(ParamSet& params, double max_norm) {
  const double norm = grad_norm(params);
  const float factor = clip_factor(norm, max_norm);
  if (factor != 1.0f) {
    std::vector<Tensor> grads;
    for (const Param& p : params.all())
      if (p.trainable) grads.push_back(p.grad);
    ops::scale_inplace(grads, factor);
  }
  return norm;
}

bool decays(const std::string& param_name) {
  return !(param_name.ends_with("norm.weight") || param_name.ends_with(".bias") ||
           param_name.ends_with("e_score_correction_bias"));
}

}  // namespace dseek::train
