// The optimizer's elementwise ops: a fused multi-tensor AdamW step and the global gradient norm
// (sum of squares, then an in-place scale) that clipping needs. train/optimizer.h builds AdamW and
// clip_grad_norm on them; the CPU versions here are the reference the CUDA kernels are tested
// against (tests/backend/test_backend_optim.cpp).
//
// AdamW, exactly as torch.optim.AdamW (default, non-amsgrad, non-maximize). One step at learning
// rate lr, t = the step count after the increment (1 on the first step), for every tensor with
// value p, gradient g and moments m, v (all f32):
//   p ← p · (1 − lr·λ)                      only for tensors with decay (λ = weight_decay)
//   m ← β1·m + (1 − β1)·g
//   v ← β2·v + (1 − β2)·g²
//   p ← p − (lr / (1 − β1^t)) · m / (√v / √(1 − β2^t) + ε)
// ε is added after the bias correction of √v, as torch does. The per-step scalars are computed in
// double and rounded to f32 once on the host (AdamWStep, like torch's per-tensor Python floats);
// every element then runs the same f32 operations in the same order on either device:
//   m = β1·m + (1−β1)·g;  v = β2·v + ((1−β2)·g)·g;  denom = √v / bc2 + ε;
//   p = p·decay − (step_size·m) / denom          (bc2 = √(1 − β2^t), step_size = lr / (1 − β1^t))
// The GPU kernel uses round-to-nearest intrinsics for each operation (no fused multiply-add), so
// on an x86-64 host without FMA contraction the two agree bit for bit.
//
// Sum of squares: Σ over all tensors of Σ g², every g widened to double and squared in double.
//   CPU: per tensor one double sum (an OpenMP reduction for large ones), added in tensor order.
//   GPU: the tensors cut into chunks of kMultiTensorChunk elements; each chunk's sum (double, a
//   fixed tree inside one block) goes to a partial, and one block adds the partials in a fixed
//   order. Deterministic (no atomics); the result is copied to the host (one synchronisation).
// Scale: g ← g · scale in f32 (clipping's max_norm / (n + 1e-6)).
//
// Fusions of the training step: adamw_step takes the clipping factor as grad_scale (each g read
// as g · grad_scale, one f32 multiply: the bits scale_inplace would have left, without a pass over
// the gradients), and re-rounds each tensor's bf16 compute copy, where given, from its new value
// (round to nearest even, the bits of Tensor::to(BF16)), without a pass over the masters.
#pragma once

#include <cstdint>
#include <vector>

#include "core/tensor.h"

namespace dseek::ops {

// The per-step scalars of the update above, rounded to f32 once.
struct AdamWStep {
  float beta1, beta2, one_minus_beta1, one_minus_beta2, step_size, bias_correction2_sqrt, eps;
  double lr, weight_decay;
  float decay_factor(bool decay) const { return decay ? float(1.0 - lr * weight_decay) : 1.0f; }
};
AdamWStep adamw_step_scalars(double beta1, double beta2, double eps, double weight_decay, double lr,
                             int64_t t);

// A matrix's FP8 image that the step writes beside its update: the 128×128 blocks of the new
// master (ops/fp8_train.h, pow2 off; the bits quantize_fp8 would give): codes q F8 [rows, cols]
// and scale F32 [⌈rows/128⌉, ⌈cols/128⌉], and where q_t is defined Wᵀ's, q_t [cols, rows] and
// scale_t [⌈cols/128⌉, ⌈rows/128⌉], all contiguous on the value's device. For FP8 training, the
// next forward then multiplies the image instead of quantising the master again (a read of 4
// bytes a parameter and a write of 2 less a step; the update writes the 2 bytes of codes). The
// value must be 2-D with rows and cols multiples of 4 and no compute copy.
struct AdamWImage {
  Tensor q, scale, q_t, scale_t;
};
// The tensors one AdamW step updates, checked once and kept with the table of their addresses that
// the GPU kernel reads (one launch for all of them). values: f32 contiguous; grads: f32 or bf16
// contiguous (bf16 ones are read as f32, exactly; not where an FP8 image is written); exp_avgs,
// exp_avg_sqs: contiguous, all f32 or all bf16 (the moments' dtype: bf16 halves their memory and
// traffic, read and written as cpu::adamw_update_bf16_moments says); entry i of the four of one
// shape, everything on one device. computes: empty, or one
// per tensor, each undefined or a bf16 contiguous tensor of the value's shape and device (the
// compute copy the step re-rounds). The table stays valid while the tensors keep their storage
// (it holds references to them).
struct AdamWTensors {
  std::vector<Tensor> values, grads, exp_avgs, exp_avg_sqs, computes;
  std::vector<uint8_t> decay;  // per tensor: decoupled weight decay applies
  std::vector<AdamWImage> images;  // per tensor, or empty (see below)
  // Per tensor: undefined, or the gradient's row flags (ops/grad_rows.h): the GPU step reads no
  // row whose flag is 0 (it holds zeros); the CPU step reads every row (the same values).
  std::vector<Tensor> row_flags;
  // Per tensor: undefined, or a split master's low half (ops/split_master.h): the value is then
  // undefined and the compute copy is the master's high half; the step joins, updates and splits.
  std::vector<Tensor> lows;
  bool reads_rows = false;         // GPU: some entry of the table reads its gradient by row flags
  Tensor bad;                      // the images' non-finite flag (device i32), or undefined
  // GPU: cuda::MultiTensorEntry per non-empty tensor without an image, cuda::AdamWImageEntry per
  // one with (as i64 words).
  Tensor table, image_table;
  int64_t entries = 0, chunks = 0, image_entries = 0, image_tiles = 0;
  Device device = Device::CPU;
  DType moments = DType::F32;
};
AdamWTensors adamw_tensors(std::vector<Tensor> values, std::vector<Tensor> grads,
                           std::vector<Tensor> exp_avgs, std::vector<Tensor> exp_avg_sqs,
                           std::vector<uint8_t> decay, std::vector<Tensor> computes = {});

// adamw_tensors with images: images[i] is tensor i's (q undefined: none). `bad`: a device i32
// that the GPU step sets when an updated value with an image is NaN or Inf (that tile's codes are
// then not written); the CPU step throws naming the tensor instead. row_flags: empty, or one per
// tensor, each undefined or grad i's row flags (checked by ops::check_grad_rows; a tensor with
// an image, or whose rows are not a multiple of 4 long, reads every row). lows: empty, or one per
// tensor, each undefined or the low half of a split master (AdamWTensors::lows; no image).
AdamWTensors adamw_tensors(std::vector<Tensor> values, std::vector<Tensor> grads,
                           std::vector<Tensor> exp_avgs, std::vector<Tensor> exp_avg_sqs,
                           std::vector<uint8_t> decay, std::vector<Tensor> computes,
                           std::vector<AdamWImage> images, Tensor bad,
                           std::vector<Tensor> row_flags = {}, std::vector<Tensor> lows = {});
// One step of every tensor of `t` (values, moments and compute copies updated in place, grads read
// and multiplied by grad_scale).
// `short_blocks` (GPU): one chunk a block, so that the blocks of a launch on a low-priority stream
// give their SMs back often (AdamW::step_async); else a bounded grid loops over the chunks.
// `grad_scale_at` (GPU only): a device f32 read in place of grad_scale when the kernels run (the
// clip factor the gradient norm's kernels write: train::GradClip).
void adamw_step(const AdamWTensors& t, const AdamWStep& s, float grad_scale = 1.0f,
                bool short_blocks = false, const float* grad_scale_at = nullptr);

// A step of a one-tensor table in two parts by rows (train::AdamW::step_async updates the rows
// the next forward looks up first, and the rest of the table after every other group, so the
// forward need not wait for the whole table). `rows`: device (or, for CPU tables, host) i32 of
// which the first `count` are the set, unique and in range; `flags`: u8 [rows of the tensor], 1
// exactly at the set's rows. `listed` steps the set's rows, `rest` every other row; each element
// gets the whole step's arithmetic, so the two parts, in either order, give adamw_step's bits.
struct AdamWRowSet {
  Tensor rows, flags;
  int64_t count = 0;
};
enum class AdamWRowPart { listed, rest };
// Whether t can be stepped by rows: one tensor, 2-D, rows a multiple of 4 long, no FP8 image.
bool adamw_steps_rows(const AdamWTensors& t);
void adamw_step_rows(const AdamWTensors& t, const AdamWStep& s, const AdamWRowSet& set,
                     AdamWRowPart part, float grad_scale = 1.0f, bool short_blocks = false,
                     const float* grad_scale_at = nullptr);

// GPU: from a sum of squares on the device (SumOfSquaresParts::finish_on_device), a new I64 [2]
// tensor on the GPU holding the norm √sum (f64 bits) and train::clip_factor(√sum, max_norm) (f32
// bits), written by a kernel on the current stream: the same double operations as the host's, so
// the same bits (train::GradClip reads them).
Tensor clip_on_device(const double* sum, double max_norm);

// Σ g² over every element of `tensors` (f32 or bf16 contiguous, one device), accumulated in
// double.
double sum_of_squares(const std::vector<Tensor>& tensors);
// *out = sum_of_squares(tensors), where out is a double on the tensors' device (host memory for
// CPU tensors): on the GPU queued on the stream, without waiting for it.
void sum_of_squares_to(const std::vector<Tensor>& tensors, double* out);
// g ← g · scale for every element of `tensors` (f32 or bf16 contiguous, one device; a bf16 one's
// product is rounded back to bf16).
void scale_inplace(const std::vector<Tensor>& tensors, float scale);

// sum_of_squares(tensors) computed in parts as the tensors become final — a backward's layers,
// each on the GPU's background stream beside the layers still running (TrainModel's
// on_block_backward) — then finished: the same chunks, per-chunk sums and fixed-order total, so
// the same bits. add() takes each tensor at most once, in any order, on the current stream (the
// background stream inside a cuda::Background scope: the tensors are read once the main stream's
// work so far is done); finish() adds the rest on the current stream after waiting for `after`
// (a background mark, or 0) and returns the total (one synchronisation). On the CPU add() sums
// at once and finish() adds the tensors' sums in order, as sum_of_squares does.
// external() hands the sum of some tensors to their writer instead: it returns a slot (a double
// on the tensors' device, zero until written) for Σ g² of all of them, which finish() adds to
// the chunks' sums in a fixed place (the same value as sum_of_squares up to the order of sums).
class SumOfSquaresParts {
 public:
  explicit SumOfSquaresParts(std::vector<Tensor> tensors);
  void add(size_t first, size_t last);  // tensors [first, last)
  double* external(const std::vector<size_t>& tensors);
  double finish(uint64_t after = 0);
  // GPU: finish's sum left on the device (f64 bits), nothing read back; the pointer stays valid
  // while this object lives.
  const double* finish_on_device(uint64_t after = 0);
  size_t size() const { return tensors_.size(); }

 private:
  void add_rest();  // every tensor not added yet, a run of them at a time
  std::vector<Tensor> tensors_;
  std::vector<uint8_t> added_;
  std::vector<double> sums_;       // CPU: per tensor
  std::vector<int64_t> chunk_of_;  // GPU: tensor i's chunks start at chunk_of_[i] (end: i + 1)
  // GPU: the table, the per-chunk sums (then a slot per tensor for external sums: all zeros
  // until written), the total.
  Tensor table_, partial_, out_;
  [[maybe_unused]] int64_t entries_ = 0;  // GPU: the table's entries
  int64_t chunks_ = 0;
};

}  // namespace dseek::ops
