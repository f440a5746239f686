// Trainable parameters: every tensor of a model being trained, under its Hugging Face name (the
// names of model/init_weights.h's checkpoint_layout), with an f32 master value and an f32 gradient
// of the same shape. Buffers (the noaux_tc gates' e_score_correction_bias) live here too so that
// checkpoints and export see one list, but they are not trainable: the optimizer skips them and
// auxiliary-loss-free balancing updates them directly.
//
// Mixed precision: set_compute_dtype(BF16) gives every trainable matrix a bf16 copy that the
// linear layers compute with (forward and input gradient), while the master value, the gradient
// and the optimizer stay f32; refresh_compute() re-rounds the copies after each optimizer step.
// The CUDA backend uses the same hook for its bf16 GEMMs.
//
// Devices: a ParamSet lives on one device. to(Device::CUDA) moves every value, gradient and
// compute copy to the GPU (masters and gradients stay f32); from then on the training layers run
// there (with bf16 activations when compute_dtype() is BF16, else f32), zero_grad clears on the
// device and refresh_compute rounds on the device, to nearest even as on the CPU.
//
// Split masters (ParamSet::split_masters, ops/split_master.h): on the GPU, a matrix with a bf16
// compute copy may keep its f32 master as that copy (the master's upper half, rounded) plus the
// master's low 16 bits (Param::low), 4 bytes a parameter instead of 6 and 8 bytes of the update's
// traffic instead of 10. The master is still exactly f32: master_value joins it. Its `value` is
// then undefined: code that reads masters goes through master_value / set_master_value (or
// Param::shape for the shape); the training layers multiply weight() as before.
#pragma once

#include <cstdint>
#include <deque>
#include <map>
#include <string>
#include <vector>

#include "core/tensor.h"
#include "ops/fp8_train.h"

namespace dseek::train {

struct Param {
  std::string name;        // HF tensor name, e.g. "model.layers.0.self_attn.kv_b_proj.weight"
  Tensor value;            // f32 contiguous master weight
  Tensor grad;             // f32 contiguous, same shape; undefined for buffers
  bool trainable = true;   // false: a buffer (no gradient, not touched by the optimizer)
  bool decay = true;       // decoupled weight decay applies (false for norms, biases, buffers)
  Tensor compute;          // optional lower-precision copy of value for compute (mixed precision)
  bool fp8 = false;        // its linear runs FP8 GEMMs from the master (ops/fp8_train.h)
  // Only its rows are looked up, never multiplied (an untied model's embedding, marked by
  // TrainModel::init_params / load_params): it gets no compute copy, which would cost the update
  // 2 bytes a parameter and never be read.
  bool lookup_only = false;
  // grad holds zero_grad's zeros and nothing was added since: set by zero_grad, cleared by every
  // writer (grad_to_add, overwrite_grad); the first writer of a step that can overwrite grad does
  // instead of adding to it (the linears' and the MoE experts' weight gradients: the same values
  // without reading dW).
  bool grad_zero = false;
  // Set by a writer that overwrote grad on grad_zero: zero_grad(true) may then leave the zeros to
  // it (grad_stale) instead of writing them, 4 bytes a parameter.
  bool grad_overwritten = false;
  // grad's memory was not zeroed (zero_grad(true) left it to the writer): its values are
  // grad_zero's zeros, not what the memory holds, until a writer overwrites it or settle_grad
  // zeros it. forward_backward ends with no stale gradient (ParamSet::settle_grads).
  bool grad_stale = false;
  // Where the grad's writer puts Σ grad² of what it wrote (a double on the grad's device), or
  // null: set by BackwardGradNorm for the routed experts' weights of a step's last backward (one
  // slot for all experts of a projection), taken and cleared by their grouped wgrad (moe_layer),
  // whose kernels add up the squares as they store dW instead of the norm reading it again.
  double* grad_squares = nullptr;
  // The gradient's row flags (ops/grad_rows.h), or undefined: where defined, a row whose flag is
  // 0 holds zeros, which lets AdamW, the gradient norm and the zeroing skip the rows a step did
  // not write. ParamSet::track_grad_rows gives them to a matrix whose writer touches few rows (the
  // embedding: the batch's tokens). The functions below keep the rule: grad_to_add and
  // overwrite_grad set every flag (their writers may touch any row), grad_rows_to_add leaves them
  // to its writer (ops::embedding_backward_accumulate sets its rows'), write_grad_zeros zeros the
  // flagged rows and clears their flags, and ParamSet::zero_grad zeros every row but sets every
  // flag, so that code writing the gradient directly after it stays right.
  Tensor grad_rows;
  // A split master's low 16 bits (16-bit storage, not numbers; see the top of this file), or
  // undefined: where defined, `value` is undefined and the master is (compute, low).
  Tensor low;

  // What linear layers multiply with: the compute copy when there is one, else the master.
  const Tensor& weight() const { return compute.defined() ? compute : value; }
  bool split() const { return low.defined(); }
  const Shape& shape() const { return split() ? compute.shape() : value.shape(); }
  Device device() const { return split() ? compute.device() : value.device(); }
  int64_t numel() const { return split() ? compute.numel() : value.numel(); }
};

// Whether training splits the masters it can (ParamSet::split_masters): yes unless the
// environment sets DSEEK_SPLIT_MASTERS=0 (read once).
bool split_masters_enabled();

// The f32 master of p: its value, or a split master joined (a new tensor on its device).
Tensor master_value(const Param& p);
// A split master made whole again (p.value its f32, p.low undefined); nothing for a whole one.
void join_master(Param& p);
// Writes src (any float dtype and device, p's shape) into p's master: its value, or both halves
// of a split one. `what` names p in errors. Re-rounds nothing else (refresh_compute does).
void set_master_value(Param& p, const Tensor& src, const std::string& what);

class ParamSet {
 public:
  // Adds a parameter holding `value` (made f32 contiguous). Names must be unique.
  Param& add(const std::string& name, const Tensor& value, bool trainable, bool decay);

  bool has(const std::string& name) const { return index_.count(name) != 0; }
  // Throws "[train] no parameter '<name>'" when missing. Waits for the parameter's update if it
  // is still in flight (see set_pending).
  Param& at(const std::string& name);
  const Param& at(const std::string& name) const;
  // The value tensor of a parameter (shorthand for at(name).value).
  // Throws for a split master (read it with master_value(at(name))).
  const Tensor& value(const std::string& name) const;
  const Tensor& grad(const std::string& name) const { return at(name).grad; }

  // In insertion order (checkpoint_layout's order); references stay valid as parameters are added.
  // Both wait for every update still in flight (see set_pending).
  std::deque<Param>& all() {
    await_all();
    return params_;
  }
  const std::deque<Param>& all() const {
    await_all();
    return params_;
  }
  size_t size() const { return params_.size(); }

  // Moves every tensor to `device` (a no-op for tensors already there). References to Params stay
  // valid; Tensor handles taken earlier keep the old storage. The set starts on the CPU.
  void to(Device device);
  Device device() const { return device_; }

  // Zeros every grad and sets grad_zero. `defer_overwritten`: the grads whose writer overwrites
  // them (Param::grad_overwritten) are marked stale instead of written — the training step's
  // zeroing, followed by a forward_backward, which settles what its writers did not overwrite.
  void zero_grad(bool defer_overwritten = false);
  void settle_grads();  // zeros every stale grad (settle_grad)
  // Gives parameter `name` (a trainable matrix) gradient row flags (Param::grad_rows), all set.
  void track_grad_rows(const std::string& name);
  // F32: no compute copies. BF16: copies of every trainable 2-D parameter except the MoE routers,
  // the FP8 linears (which quantise their masters) and the lookup-only ones (an untied
  // embedding: Param::lookup_only), rounded to nearest even.
  void set_compute_dtype(DType dtype);
  DType compute_dtype() const { return compute_dtype_; }
  void refresh_compute();  // re-round the copies from the masters (after an optimizer step)
  // Splits the master of every parameter with a bf16 compute copy (see the top of this file;
  // the trainer does on one GPU, the CPU's step takes them too); returns how many. join_masters
  // undoes it (set_compute_dtype and mark_fp8_linears join first); to() moves both halves.
  // AdamW::step/step_async rebuild their tables for the new storage.
  int64_t split_masters();
  void join_masters();
  bool masters_split() const;
  // Keeps the routed experts' weight gradients in bf16 (zeros now; the trainer's
  // --expert-grads bf16, on one GPU): the grouped wgrad stores each rounded once from its f32
  // sum, and the update reads them as f32. Half the bytes the wgrad stores and 2 a parameter less
  // for the update to read, for most of a MoE model's parameters, at bf16's precision of a
  // gradient (PyTorch's bf16 training keeps every gradient so). The masters and the moments'
  // arithmetic stay as they were. Returns how many gradients it changed.
  int64_t bf16_expert_grads();
  // bf16_expert_grads and also every other trainable matrix with a bf16 compute copy but the
  // embedding (the attention and MLP projections, the shared experts, the head, MTP's eh_proj):
  // the weight gradients a GEMM writes (ops::linear_backward_into's bf16 dW: the f32 sum rounded,
  // on the GPU before an accumulated old value is added). The embedding's scatter-add, the norms
  // and the routers keep f32. Returns how many gradients it changed.
  int64_t bf16_matrix_grads();
  // On (the default), FP8 linears cache their inputs as their forward quantised them (layers.h's
  // LinearInput); off, they keep them in the activation dtype and quantise them again in the
  // backward, as the training layers did before: the same numerics with more memory, the
  // reference the tests hold the caches to.
  void set_fp8_input_cache(bool on) { fp8_input_cache_ = on; }
  bool fp8_input_cache() const { return fp8_input_cache_; }
  int64_t numel(bool trainable_only = true) const;

  // Updates in flight (AdamW::step_async): parameter `index` (insertion order) is being written on
  // the background stream until `mark` (cuda::Background::mark). at(), value(), grad(), all() and
  // the set's own methods first make the calling stream wait for it (cuda::wait_background), so
  // the next step's forward waits for a layer's update only when it reaches that layer. Holders of
  // a Tensor or Param& taken before the update must not use it without going through the set.
  void set_pending(size_t index, uint64_t mark);
  // An embedding whose rows that the next forward looks up (`ids`) are updated first
  // (AdamW::step_async's next_lookup): they are current once the background passes `mark`, before
  // the rest of its update (set_pending's mark) is. One such record at a time; cleared by the
  // lookup that uses it, by at() and by await_all().
  void set_lookup_ready(size_t index, uint64_t mark, std::vector<int32_t> ids);
  // at(name), except that a lookup of exactly the ids set_lookup_ready named for it waits only for
  // their rows' mark. The rest of the table may still be in flight: read only the rows of `ids`.
  const Param& at_for_lookup(const std::string& name, const std::vector<int32_t>& ids);
  // Whether set_lookup_ready's record (not yet used or cleared) names parameter `name`.
  bool lookup_ready(const std::string& name) const;
  void await_all() const;  // waits for every update in flight
  bool pending() const { return pending_count_ > 0; }
  // Parameters without waiting, for the optimizer queueing the updates themselves.
  std::deque<Param>& all_in_flight() { return params_; }

  // The FP8 linears' weight images kept between steps (ops::Fp8WeightImages): TrainModel::run's
  // scope keeps them, AdamW rewrites them as it updates the masters, the next run takes them.
  // Whoever writes a master otherwise (a checkpoint's values, a test) must drop them first; to()
  // drops them.
  ops::Fp8WeightImages& fp8_images() { return fp8_images_; }
  void drop_fp8_images() { fp8_images_.drop(); }

 private:
  void await(size_t index) const;
  mutable std::vector<uint64_t> pending_;  // per parameter: its update's mark, 0 when none
  mutable size_t pending_count_ = 0;
  mutable uint64_t waited_main_ = 0;  // the main stream has waited for marks up to this one
  void wait_mark(uint64_t mark) const;  // the calling stream waits for background mark `mark`
  // set_lookup_ready's record: the parameter (size(): none), its rows' mark and the ids.
  mutable size_t lookup_index_ = SIZE_MAX;
  uint64_t lookup_mark_ = 0;
  std::vector<int32_t> lookup_ids_;
  std::deque<Param> params_;
  std::map<std::string, size_t> index_;
  DType compute_dtype_ = DType::F32;
  Device device_ = Device::CPU;
  bool fp8_input_cache_ = true;
  ops::Fp8WeightImages fp8_images_;
};

// Writes the zeros zero_grad(true) deferred, if p's grad is stale (then no longer).
void settle_grad(Param& p);
// The writers' side of zero_grad's flags. A writer that adds to p's grad takes it through
// grad_to_add: the zeros left to the writers are written now (settle_grad) and grad_zero is
// cleared, so that a later writer of the step adds too. A writer that can overwrite it instead
// (a GEMM with β = 0) asks overwrite_grad: true while the grad still holds zero_grad's zeros,
// and then it is marked written (grad_overwritten: zero_grad(true) may leave the next step's
// zeros to it, 4 bytes a parameter not written); false after grad_to_add's work.
Tensor& grad_to_add(Param& p);
bool overwrite_grad(Param& p);
// grad_to_add for a writer that adds to some rows and sets their flags in Param::grad_rows itself
// (the flags are left as they are; the writer must set its rows' when they are defined).
Tensor& grad_rows_to_add(Param& p);
// zero_grad's work on one parameter with a gradient, in its two halves (AdamW::step_async writes
// the zeros on the background stream after the parameter's update): the flags — grad_zero, and
// grad_stale where `defer_overwritten` leaves the zeros to the gradient's writer — returning
// whether the memory must be written; then the writing.
bool mark_grad_zero(Param& p, bool defer_overwritten);
void write_grad_zeros(Param& p);

// FP8 training (train.precision fp8, DeepSeek-V3 §3.3): marks the projections of attention and
// of the dense, shared and routed expert MLPs — model.layers.<i>.self_attn.{q_proj, q_a_proj,
// q_b_proj, kv_a_proj_with_mqa, kv_b_proj, k_proj, v_proj, o_proj} and model.layers.<i>.mlp[...]
// .{gate,up,down}_proj — so the training layers run their three GEMMs in FP8. The embedding, the
// output head, the MoE routers, the MTP eh_proj, the norms and the attention core stay in higher
// precision. Drops the marked parameters' compute copies. Returns how many were marked.
int64_t mark_fp8_linears(ParamSet& params);

// Writes src (any float dtype, any device, dst's shape) into dst (f32 or bf16 contiguous, e.g. a
// Param's value or an optimizer moment; converted, bf16 rounding to nearest even), copying across
// devices as needed. `what` names dst in errors.
void copy_values(const Tensor& dst, const Tensor& src, const std::string& what);

}  // namespace dseek::train
