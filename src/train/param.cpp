#include "train/param.h"

#include <algorithm>
#include <cstdlib>
#include <cstring>

#include "core/cuda.h"
#include "core/env.h"
#include "core/error.h"
#include "ops/grad_rows.h"
#include "ops/split_master.h"
#include "train/expert_parallel.h"

namespace dseek::train {

Param& ParamSet::add(const std::string& name, const Tensor& value, bool trainable, bool decay) {
  DSEEK_CHECK(!has(name), "[train] parameter '{}' added twice", name);
  Param p;
  p.name = name;
  // Always a fresh contiguous copy (the master is our own), on the set's device.
  p.value = value.to(DType::F32).to(device_);
  p.trainable = trainable;
  p.decay = trainable && decay;
  if (trainable) p.grad = Tensor::zeros(p.value.shape(), DType::F32, device_);
  index_[name] = params_.size();
  params_.push_back(std::move(p));
  return params_.back();
}

Param& ParamSet::at(const std::string& name) {
  auto it = index_.find(name);
  DSEEK_CHECK(it != index_.end(), "[train] no parameter '{}'", name);
  await(it->second);
  return params_[it->second];
}

const Param& ParamSet::at(const std::string& name) const {
  auto it = index_.find(name);
  DSEEK_CHECK(it != index_.end(), "[train] no parameter '{}'", name);
  await(it->second);
  return params_[it->second];
}

const Tensor& ParamSet::value(const std::string& name) const {
  const Param& p = at(name);
  DSEEK_CHECK(!p.split(),
              "[train] parameter '{}' keeps a split master (ParamSet::split_masters): read it "
              "with master_value",
              name);
  return p.value;
}

void ParamSet::set_pending(size_t index, uint64_t mark) {
  DSEEK_CHECK(index < params_.size(), "[train] set_pending: parameter {} of {}", index,
              params_.size());
  if (pending_.size() < params_.size()) pending_.resize(params_.size(), 0);
  if (pending_[index] == 0 && mark != 0) ++pending_count_;
  if (pending_[index] != 0 && mark == 0) --pending_count_;
  pending_[index] = mark;
}

void ParamSet::wait_mark(uint64_t mark) const {
  // The main stream has waited through waited_main_ already (marks ascend and the background
  // stream runs in order): the 192 matrices of a layer's experts cost one wait, not 192.
  const bool main = !cuda::on_side_stream();
  if (!main || mark > waited_main_) {
    cuda::wait_background(mark);
    if (main) waited_main_ = mark;
  }
}

void ParamSet::await(size_t index) const {
  if (index == lookup_index_) lookup_index_ = SIZE_MAX;
  if (pending_count_ == 0 || index >= pending_.size() || pending_[index] == 0) return;
  wait_mark(pending_[index]);
  pending_[index] = 0;
  --pending_count_;
}

void ParamSet::set_lookup_ready(size_t index, uint64_t mark, std::vector<int32_t> ids) {
  DSEEK_CHECK(index < params_.size(), "[train] set_lookup_ready: parameter {} of {}", index,
              params_.size());
  lookup_index_ = index;
  lookup_mark_ = mark;
  lookup_ids_ = std::move(ids);
}

bool ParamSet::lookup_ready(const std::string& name) const {
  auto it = index_.find(name);
  return it != index_.end() && it->second == lookup_index_;
}

const Param& ParamSet::at_for_lookup(const std::string& name, const std::vector<int32_t>& ids) {
  auto it = index_.find(name);
  DSEEK_CHECK(it != index_.end(), "[train] no parameter '{}'", name);
  const size_t index = it->second;
  if (index == lookup_index_ && ids == lookup_ids_ && index < pending_.size() &&
      pending_[index] != 0) {
    lookup_index_ = SIZE_MAX;
    wait_mark(lookup_mark_);  // the ids' rows; the rest of the table stays pending
    return params_[index];
  }
  await(index);
  return params_[index];
}

void ParamSet::await_all() const {
  lookup_index_ = SIZE_MAX;
  if (pending_count_ == 0) return;
  // One wait for the latest mark covers every earlier one (the background stream is in order).
  uint64_t latest = 0;
  for (uint64_t& m : pending_) {
    latest = std::max(latest, m);
    m = 0;
  }
  pending_count_ = 0;
  cuda::wait_background(latest);
  if (!cuda::on_side_stream()) waited_main_ = std::max(waited_main_, latest);
}

void ParamSet::to(Device device) {
  if (device == Device::CUDA) cuda::require("ParamSet::to(cuda)");
  await_all();
  drop_fp8_images();  // they name the old storage
  for (Param& p : params_) {
    if (p.value.defined()) p.value = p.value.to(device);
    if (p.low.defined()) p.low = p.low.to(device);
    if (p.grad.defined()) p.grad = p.grad.to(device);
    if (p.compute.defined()) p.compute = p.compute.to(device);
    if (p.grad_rows.defined()) p.grad_rows = p.grad_rows.to(device);  // they follow the grad
  }
  device_ = device;
}

int64_t mark_fp8_linears(ParamSet& params) {
  static const char* const kProjections[] = {
      "q_proj",    "q_a_proj", "q_b_proj", "kv_a_proj_with_mqa", "kv_b_proj", "k_proj",
      "v_proj",    "o_proj",   "gate_proj", "up_proj",           "down_proj"};
  const std::string layers = "model.layers.", suffix = ".weight";
  int64_t marked = 0;
  for (Param& p : params.all()) {
    const std::string& n = p.name;
    if (!p.trainable || n.rfind(layers, 0) != 0 || n.size() <= suffix.size() ||
        n.compare(n.size() - suffix.size(), suffix.size(), suffix) != 0)
      continue;
    if (n.find(".self_attn.") == std::string::npos && n.find(".mlp.") == std::string::npos)
      continue;
    const std::string stem = n.substr(0, n.size() - suffix.size());
    const std::string proj = stem.substr(stem.rfind('.') + 1);
    for (const char* k : kProjections)
      if (proj == k) {
        join_master(p);  // (if split) the compute copy, the master's high half, is about to go
        p.fp8 = true;
        // Its GEMMs quantise the master: a compute copy would only cost the optimizer a write
        // and the GPU 2 bytes a parameter.
        p.compute = Tensor();
        ++marked;
      }
  }
  return marked;
}

namespace {

void zero_bytes(Tensor& grad) {
  if (grad.is_cuda())
    cuda::fill_bytes(grad.raw(), 0, grad.nbytes());  // +0.0f is all zeros
  else
    std::memset(grad.raw(), 0, grad.nbytes());
}

// Every row flag set (any row may be non-zero: always right).
void flag_all_rows(Param& p) {
  Tensor& f = p.grad_rows;
  if (!f.defined() || f.numel() == 0) return;
  if (f.is_cuda())
    cuda::fill_bytes(f.raw(), 1, size_t(f.numel()));
  else
    std::memset(f.raw(), 1, size_t(f.numel()));
}

}  // namespace

bool mark_grad_zero(Param& p, bool defer_overwritten) {
  p.grad_zero = true;
  p.grad_stale = defer_overwritten && p.grad_overwritten;
  return !p.grad_stale;
}

void write_grad_zeros(Param& p) {
  if (p.grad_rows.defined())
    ops::zero_flagged_rows(p.grad, p.grad_rows);  // the unflagged rows are zeros already
  else
    zero_bytes(p.grad);
}

void ParamSet::zero_grad(bool defer_overwritten) {
  await_all();
  for (Param& p : params_) {
    if (!p.grad.defined() || !mark_grad_zero(p, defer_overwritten)) continue;
    zero_bytes(p.grad);
    flag_all_rows(p);  // whoever writes the gradient next need not know about the flags
  }
}

void ParamSet::track_grad_rows(const std::string& name) {
  Param& p = at(name);
  DSEEK_CHECK(p.trainable && p.grad.defined() && p.grad.dim() == 2,
              "[train] gradient row flags for '{}': it must be a trainable matrix", name);
  if (p.grad_rows.defined()) return;
  p.grad_rows = Tensor::empty({p.grad.size(0)}, DType::U8, p.grad.device());
  flag_all_rows(p);
}

void settle_grad(Param& p) {
  if (!p.grad_stale) return;
  zero_bytes(p.grad);
  p.grad_stale = false;
}

Tensor& grad_rows_to_add(Param& p) {
  settle_grad(p);
  p.grad_zero = false;
  return p.grad;
}

Tensor& grad_to_add(Param& p) {
  flag_all_rows(p);
  return grad_rows_to_add(p);
}

bool overwrite_grad(Param& p) {
  flag_all_rows(p);
  if (!p.grad_zero) {
    settle_grad(p);
    return false;
  }
  p.grad_zero = false;
  p.grad_overwritten = true;
  p.grad_stale = false;
  return true;
}

void ParamSet::settle_grads() {
  await_all();
  for (Param& p : params_) settle_grad(p);
}

void ParamSet::set_compute_dtype(DType dtype) {
  DSEEK_CHECK(dtype == DType::F32 || dtype == DType::BF16,
              "[train] compute dtype: f32 or bf16, got {}", dtype_name(dtype));
  compute_dtype_ = dtype;
  await_all();
  join_masters();
  for (Param& p : params_) p.compute = Tensor();
  refresh_compute();
}

void ParamSet::refresh_compute() {
  if (compute_dtype_ == DType::F32) return;
  await_all();
  // Router weights stay f32, as DeepSeek-V3 keeps its gates in higher precision. FP8 linears
  // (mark_fp8_linears) multiply from the master. An untied embedding (lookup_only) is read row by
  // row from the master: a copy would cost the update 2 bytes a parameter (0.42 GB a step for
  // V2-Lite) for nothing — also on a pipeline stage that holds the embedding without the head.
  for (Param& p : params_)
    if (!p.split() && p.trainable && p.value.dim() == 2 && !p.name.ends_with(".gate.weight") &&
        !p.fp8 && !p.lookup_only)  // a split master's copy is its high half: always current
      p.compute = p.value.to(compute_dtype_);
}

int64_t ParamSet::split_masters() {
  await_all();
  int64_t split = 0;
  for (Param& p : params_) {
    if (p.split() || !p.compute.defined() || p.compute.dtype() != DType::BF16) continue;
    p.low = Tensor::empty(p.value.shape(), DType::BF16, p.value.device());
    ops::split_master(p.value, p.compute, p.low);
    p.value = Tensor();  // freed: the halves hold it
    ++split;
  }
  return split;
}

void ParamSet::join_masters() {
  await_all();
  for (Param& p : params_) join_master(p);
}

namespace {

// p's gradient as bf16 zeros (zero_grad's state).
void make_grad_bf16(Param& p) {
  p.grad = Tensor::zeros(p.grad.shape(), DType::BF16, p.grad.device());
  p.grad_zero = true;
  p.grad_overwritten = false;
  p.grad_stale = false;
}

}  // namespace

int64_t ParamSet::bf16_expert_grads() {
  await_all();
  int64_t changed = 0;
  for (Param& p : params_) {
    if (!p.trainable || !p.grad.defined() || p.grad.dtype() != DType::F32 ||
        routed_expert_of(p.name) < 0)
      continue;
    make_grad_bf16(p);
    ++changed;
  }
  return changed;
}

int64_t ParamSet::bf16_matrix_grads() {
  int64_t changed = bf16_expert_grads();
  for (Param& p : params_) {
    if (!p.trainable || !p.grad.defined() || p.grad.dtype() != DType::F32 || !p.compute.defined() ||
        p.grad.dim() != 2 || p.grad_rows.defined() || p.name.ends_with("embed_tokens.weight"))
      continue;
    make_grad_bf16(p);
    ++changed;
  }
  return changed;
}

bool ParamSet::masters_split() const {
  for (const Param& p : params_)
    if (p.split()) return true;
  return false;
}

bool split_masters_enabled() {
  static const bool on = [] { return !env_is("DSEEK_SPLIT_MASTERS", "0"); }();
  return on;
}

void join_master(Param& p) {
  if (!p.split()) return;
  p.value = master_value(p);
  p.low = Tensor();
  // The compute copy stays the high half (rounded half away from zero), until refreshed.
}

Tensor master_value(const Param& p) {
  return p.split() ? ops::join_master(p.compute, p.low) : p.value;
}

void set_master_value(Param& p, const Tensor& src, const std::string& what) {
  if (!p.split()) {
    copy_values(p.value, src, what);
    return;
  }
  DSEEK_CHECK(src.defined() && src.shape() == p.shape(), "[train] {}: source {}, expected {}", what,
              src.defined() ? shape_str(src.shape()) : "undefined", shape_str(p.shape()));
  Tensor f32 = Tensor::empty(p.shape(), DType::F32, p.device());
  copy_values(f32, src, what);
  ops::split_master(f32, p.compute, p.low);
}

void copy_values(const Tensor& dst, const Tensor& src, const std::string& what) {
  DSEEK_CHECK(dst.defined() && (dst.dtype() == DType::F32 || dst.dtype() == DType::BF16) &&
                  dst.is_contiguous(),
              "[train] {}: the destination must be f32 or bf16 contiguous", what);
  DSEEK_CHECK(src.defined() && src.shape() == dst.shape(), "[train] {}: source {}, expected {}",
              what, src.defined() ? shape_str(src.shape()) : "undefined", shape_str(dst.shape()));
  // dst's dtype, contiguous, on src's own device first (a no-op when it already is), then one
  // plain copy.
  const Tensor f = src.dtype() == dst.dtype() && src.is_contiguous() ? src : src.to(dst.dtype());
  if (dst.nbytes() == 0) return;
  if (!dst.is_cuda() && !f.is_cuda()) std::memcpy(dst.raw(), f.raw(), dst.nbytes());
  else if (dst.is_cuda() && f.is_cuda()) cuda::copy_on_device(dst.raw(), f.raw(), dst.nbytes());
  else if (dst.is_cuda()) cuda::copy_to_device(dst.raw(), f.raw(), dst.nbytes());
  else cuda::copy_to_host(dst.raw(), f.raw(), dst.nbytes());
}

int64_t ParamSet::numel(bool trainable_only) const {
  int64_t n = 0;
  for (const Param& p : params_)
    if (!trainable_only || p.trainable) n += p.numel();
  return n;
}

}  // namespace dseek::train
