// AdamW with decoupled weight decay, exactly as torch.optim.AdamW (default, non-amsgrad,
// non-maximize), plus global gradient-norm clipping as torch.nn.utils.clip_grad_norm_. The
// elementwise work is ops/adamw.h's (the formula is written out there): one fused multi-tensor
// step on the device the parameters live on, the same f32 arithmetic on the CPU and the GPU.
//
// Buffers (trainable == false) are never touched. The moments are tensors of
// AdamWConfig::moment_dtype (f32, or bf16 as DeepSeek-V3 keeps them) on the parameters' device:
// the constructor makes them there, and AdamW::to moves them after ParamSet::to.
//
// Clipping: n = √(Σ g²) over every trainable gradient (accumulated in double; on the GPU one
// device-side reduction and one synchronisation to read n); if n > max_norm all gradients are
// multiplied by max_norm / (n + 1e-6) where they live. A non-finite n is returned unscaled so the
// caller can skip the step.
#pragma once

#include <cstdint>
#include <functional>
#include <map>
#include <string>
#include <utility>
#include <vector>

#include "core/tensor.h"
#include "ops/adamw.h"
#include "ops/cpu/adamw_cpu.h"
#include "train/param.h"

namespace dseek::train {

struct AdamWConfig {
  double beta1 = 0.9, beta2 = 0.95, eps = 1e-8, weight_decay = 0.1;
  DType moment_dtype = DType::F32;  // or BF16 (AdamW only; the sharded optimizers keep f32)
};

class GradClip;

class AdamW {
 public:
  // Zero moments for every trainable parameter of `params` (on its device), which must outlive the
  // optimizer and gain no parameters afterwards. Throws on betas outside [0, 1), eps ≤ 0 or
  // weight_decay < 0.
  AdamW(ParamSet& params, AdamWConfig config);
  ~AdamW();  // waits (on the GPU's main stream) for an update still in flight
  AdamW(const AdamW&) = delete;
  AdamW& operator=(const AdamW&) = delete;

  // One update with learning rate lr (finite, ≥ 0) on every trainable param using its grad: one
  // multi-tensor launch on the GPU. Throws when a parameter and its moments are on different
  // devices (AdamW::to after ParamSet::to fixes that).
  // grad_scale multiplies every gradient as it is read (clip_factor's result: clipping without a
  // pass over the gradients). The bf16 compute copies of the updated parameters are re-rounded
  // from their new values in the same pass, so no ParamSet::refresh_compute is needed after it,
  // and on the GPU the FP8 linears' weight images the ParamSet keeps (ParamSet::fp8_images) are
  // rewritten from them too (ops::AdamWImage), so the next forward does not quantise the masters.
  // (Both step and step_async.)
  void step(double lr, float grad_scale = 1.0f);
  // The same update followed by params.zero_grad(defer_overwritten), queued on the GPU's
  // background stream (cuda::Background) one layer at a time, so that the next step's forward
  // runs beside it: ParamSet::at makes each reader wait for its own layer's update, and the
  // forward of layer 0 starts while layers 1… are still being updated. The same bits as step()
  // then zero_grad(). Returns at once. On the CPU: step(), then zero_grad().
  // next_lookup (GPU): the ids the next forward looks up in the embedding, where known (the
  // trainer peeks at its next batch). An untied embedding (Param::lookup_only) then has those
  // rows updated first and the rest of its rows last, after the head: the forward's lookup waits
  // for its rows alone (ParamSet::at_for_lookup) instead of for the whole table, first in the
  // update's order (V2-Lite: 0.84 GB of master and 0.42 GB of moments). Each row gets the whole
  // update's arithmetic (ops::adamw_step_rows), so the same bits. Off unless
  // set_lookup_rows_first(true) or DSEEK_LOOKUP_ROWS_FIRST=1: not yet timed on a GPU.
  void step_async(double lr, float grad_scale, bool defer_overwritten,
                  const std::vector<int32_t>& next_lookup = {});
  // step_async with the clip factor of `clip` (BackwardGradNorm::clip): on the GPU the kernels read
  // it from the device, so the update is queued without waiting for the gradient norm.
  void step_async(double lr, const GradClip& clip, bool defer_overwritten,
                  const std::vector<int32_t>& next_lookup = {});
  // Moves the moments to `device` (keeping their values).
  void to(Device device);
  int64_t step_count() const { return step_count_; }
  const AdamWConfig& config() const { return config_; }

  // Checkpoint state: "exp_avg.<param name>" and "exp_avg_sq.<param name>" (f32, the parameter's
  // shape) for every trainable parameter, in parameter order. f32 moments are the live state
  // itself, bf16 ones f32 copies of it (exact; checkpoints hold f32 tensors); on the moments'
  // device (save_checkpoint copies GPU tensors to the host).
  std::vector<std::pair<std::string, Tensor>> state_tensors() const;
  // Copies the moments back (converted to the moments' dtype, from any device onto the moments'
  // device: a checkpoint of either moment dtype loads) and sets the step count; throws naming a
  // missing tensor or a shape mismatch, and changes nothing unless every tensor is valid.
  void load_state(const std::map<std::string, Tensor>& tensors, int64_t step_count);

 private:
  ParamSet* params_;
  AdamWConfig config_;
  int64_t step_count_ = 0;
  std::vector<Tensor> exp_avg_;  // per parameter (same index); undefined for buffers
  std::vector<Tensor> exp_avg_sq_;
  // The multi-tensor tables of the last step, one per update group (update_group: a layer, or
  // the embedding, the final norm, the head), in parameter order; rebuilt when a tensor's storage
  // has changed. step() runs them back to back, step_async() marks each as it is queued.
  struct Group {
    ops::AdamWTensors tensors;
    std::vector<size_t> params;  // indices into the ParamSet
  };
  std::vector<Group> groups_;
  // The ParamSet's FP8 images the groups write (Fp8WeightImages::version when built), and per
  // image whether the groups cover all its masters (then the update makes it current).
  uint64_t images_version_ = 0;
  std::vector<uint8_t> image_covered_;
  void mark_images_current();
  // step_async's next_lookup: the group of an untied embedding that can be stepped by rows (-1:
  // none, or switched off), and its row set on the device (ops::AdamWRowSet, room for every row).
  int lookup_group() const;
  ops::AdamWRowSet lookup_rows_;
  uint64_t last_mark_ = 0;  // the last step_async's end on the background stream
  bool groups_current() const;
  void build_groups();
  void check_step(double lr) const;
  void await_updates() const;  // the current stream waits for the last step_async
};

// AdamW::step_async's next_lookup switch (process-wide; DSEEK_LOOKUP_ROWS_FIRST=1 at start-up
// turns it on).
void set_lookup_rows_first(bool on);
bool lookup_rows_first();

// The update group of parameter `name`: its layer ("model.layers.3"), or outside the layers the
// module it belongs to ("model.embed_tokens", "model.norm", "lm_head").
std::string update_group(const std::string& name);

// The per-step scalars of the update (t: the step count after the increment), rounded to f32 once
// like torch's per-tensor Python floats, and the elementwise update of n elements on the CPU
// (ops/adamw.h). AdamW and the ZeRO-1 sharded optimizer (train/data_parallel.h) both step through
// these, so a sharded step is the same arithmetic element by element.
using ops::AdamWStep;
AdamWStep adamw_step_scalars(const AdamWConfig& config, double lr, int64_t t);
using ops::cpu::adamw_update;

// Global L2 norm over all trainable grads; scales them to max_norm when it is exceeded (and
// max_norm > 0). Returns the pre-clip norm.
double clip_grad_norm(ParamSet& params, double max_norm);
// Its two halves, for a fused step: the global L2 norm of the trainable gradients, and the factor
// clipping to max_norm multiplies them by (1 when max_norm ≤ 0, the norm is not finite or within
// max_norm).
double grad_norm(const ParamSet& params);
// Throws naming `name` when `tensors` lacks it or holds it in another shape than `shape` (the
// check every optimizer's load_state makes of its moments before changing anything).
void check_state_tensor(const std::map<std::string, Tensor>& tensors, const std::string& name,
                        const Shape& shape);
float clip_factor(double norm, double max_norm);

// A step's gradient norm and clip factor (clip_factor's result). From a BackwardGradNorm on the
// GPU both are written by kernels into device memory, queued on the main stream after the norm's
// sums: AdamW::step_async(lr, clip, …) passes the factor's address to its kernels, so the update
// is queued at once, and norm() reads the norm back (waiting for the main stream) when it is
// wanted. On the CPU both are host values.
class GradClip {
 public:
  GradClip(double norm, float factor) : norm_(norm), factor_(factor) {}
  explicit GradClip(Tensor on_device);  // I64 [2]: the norm's f64 bits, the factor's f32 bits
  double norm() const;                  // the GPU's: read back once, then kept
  float factor() const;                 // likewise
  // The factor's address on the GPU, or nullptr (host values).
  const float* factor_on_device() const;

 private:
  Tensor on_device_;
  mutable bool read_ = false;
  mutable double norm_ = 0.0;
  mutable float factor_ = 1.0f;
  void read() const;
};

// grad_norm taken during a step's last backward: after main layer l's block backward (TrainModel's
// LossOptions::on_block_backward) that layer's gradients — and, at the first layer, the head's,
// the final norm's and the MTP modules' — are final, and their sums of squares go to the GPU's
// background stream, beside the layers still running (ops::SumOfSquaresParts); norm() adds the
// embedding's and returns grad_norm's bits. One object a step; on the CPU the same sums at once.
// The routed experts' weight gradients are summed by their writer instead (Param::grad_squares:
// a slot for each projection's experts of a layer), so the norm does not read them again, and on
// the GPU a gradient with row flags (Param::grad_rows: the embedding's) is summed over its flagged
// rows only; their sums add to the others' in a fixed place: the same norm as grad_norm up to the
// order of sums.
class BackwardGradNorm {
 public:
  BackwardGradNorm(ParamSet& params, int64_t num_hidden_layers);
  ~BackwardGradNorm();
  BackwardGradNorm(const BackwardGradNorm&) = delete;
  BackwardGradNorm& operator=(const BackwardGradNorm&) = delete;
  void on_block_backward(int64_t layer);
  double norm();
  // norm() and clip_factor(norm, max_norm) without reading anything back on the GPU (GradClip).
  // Either this or norm(), once.
  GradClip clip(double max_norm);

 private:
  ParamSet* params_;
  int64_t layers_;
  std::vector<Param*> grads_;      // trainable parameters, grad_norm's order
  std::vector<int64_t> layer_of_;  // main layer index, -1 elsewhere, -2 for the embedding
  std::vector<uint8_t> by_writer_;  // summed by its writer (Param::grad_squares) or by rows
  ops::SumOfSquaresParts parts_;
  // GPU: the gradients with row flags (Param::grad_rows), each summed over its flagged rows into
  // its slot when the norm is taken.
  std::vector<std::pair<Param*, double*>> by_rows_;
  void release_slots();
  bool head_added_ = false;
  uint64_t last_mark_ = 0;
  void finish_rest();  // the slots released, the rest settled, the flagged rows summed
  void add_where(const std::function<bool(int64_t layer)>& take);
};

// Decay rule used when building ParamSets: false for norms (*norm.weight, which covers
// *layernorm.weight, enorm/hnorm of MTP) and biases (*.bias, *e_score_correction_bias); true for
// matrices and embeddings.
bool decays(const std::string& param_name);

}  // namespace dseek::train
