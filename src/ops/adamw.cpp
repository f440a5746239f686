#include "ops/adamw.h"

#include <cmath>
#include <cstring>

#include "core/cuda.h"
#include "core/error.h"
#include "ops/cpu/adamw_cpu.h"
#include "ops/cpu/fp8_cpu.h"
#include "ops/cuda/cuda_ops.h"
#include "ops/device.h"
#include "ops/grad_rows.h"
#include "ops/split_master.h"

namespace dseek::ops {

namespace {

void check_f32_contiguous(const char* op, const char* what, size_t i, const Tensor& t) {
  DSEEK_CHECK(t.defined() && t.dtype() == DType::F32 && t.is_contiguous(),
              "[{}] {} {}: must be a defined f32 contiguous tensor, got {} {}", op, what, i,
              t.defined() ? dtype_name(t.dtype()) : "undefined",
              t.defined() ? shape_str(t.shape()) : "");
}

// A gradient: f32, or bf16 (ParamSet::bf16_expert_grads), contiguous.
void check_grad_tensor(const char* op, const char* what, size_t i, const Tensor& t) {
  DSEEK_CHECK(
      t.defined() && (t.dtype() == DType::F32 || t.dtype() == DType::BF16) && t.is_contiguous(),
      "[{}] {} {}: must be a defined f32 or bf16 contiguous tensor, got {} {}", op, what, i,
      t.defined() ? dtype_name(t.dtype()) : "undefined", t.defined() ? shape_str(t.shape()) : "");
}

// A gradient's values as f32 on the CPU: itself, or a bf16 one converted (exactly).
Tensor f32_grad(const Tensor& t) {
  return t.dtype() == DType::F32 ? t : t.to(DType::F32);
}

// The device of a list of tensors (a mix is an error naming the op); CPU for an empty list.
Device list_device(const char* op, const std::vector<Tensor>& tensors) {
  Device device = tensors.empty() ? Device::CPU : tensors.front().device();
  for (const Tensor& t : tensors)
    DSEEK_CHECK(t.device() == device,
                "[{}] tensors on different devices ({} and {}): move them with Tensor::to(Device)",
                op, device_name(device), device_name(t.device()));
  return device;
}

#ifdef DSEEK_HAS_CUDA
// Chunk bookkeeping of a multi-tensor table: entries for the non-empty tensors, in order.
// Stored in an i64 tensor on the GPU (the layout of cuda::MultiTensorEntry, eight-byte words).
static_assert(sizeof(cuda::MultiTensorEntry) % sizeof(int64_t) == 0);
struct MultiTensorTable {
  Tensor words;
  int64_t entries = 0, chunks = 0;
};

MultiTensorTable device_table(std::vector<cuda::MultiTensorEntry>& host) {
  MultiTensorTable t;
  for (cuda::MultiTensorEntry& e : host) {
    e.chunk_begin = t.chunks;
    t.chunks += (e.n + cuda::kMultiTensorChunk - 1) / cuda::kMultiTensorChunk;
  }
  t.entries = int64_t(host.size());
  const int64_t words = t.entries * int64_t(sizeof(cuda::MultiTensorEntry) / sizeof(int64_t));
  t.words = Tensor::empty({words}, DType::I64, Device::CUDA);
  dseek::cuda::copy_to_device(t.words.raw(), host.data(),
                              host.size() * sizeof(cuda::MultiTensorEntry));
  return t;
}

// Entries reading only `grad` (sum_of_squares, scale).
std::vector<cuda::MultiTensorEntry> grad_entries(const std::vector<Tensor>& tensors) {
  std::vector<cuda::MultiTensorEntry> host;
  for (const Tensor& t : tensors)
    if (t.numel() > 0)
      host.push_back({nullptr, static_cast<float*>(t.raw()), nullptr, nullptr, t.numel(), 0, 0,
                      nullptr, nullptr, 0, nullptr, t.dtype() == DType::BF16 ? 1 : 0});
  return host;
}

const cuda::MultiTensorEntry* entries_of(const Tensor& words) {
  return static_cast<const cuda::MultiTensorEntry*>(words.raw());
}
#endif

}  // namespace

AdamWStep adamw_step_scalars(double beta1, double beta2, double eps, double weight_decay, double lr,
                             int64_t step) {
  const double t = double(step);
  AdamWStep s;
  s.beta1 = float(beta1);
  s.beta2 = float(beta2);
  s.one_minus_beta1 = float(1.0 - beta1);
  s.one_minus_beta2 = float(1.0 - beta2);
  s.step_size = float(lr / (1.0 - std::pow(beta1, t)));
  s.bias_correction2_sqrt = float(std::sqrt(1.0 - std::pow(beta2, t)));
  s.eps = float(eps);
  s.lr = lr;
  s.weight_decay = weight_decay;
  return s;
}

AdamWTensors adamw_tensors(std::vector<Tensor> values, std::vector<Tensor> grads,
                           std::vector<Tensor> exp_avgs, std::vector<Tensor> exp_avg_sqs,
                           std::vector<uint8_t> decay, std::vector<Tensor> computes) {
  return adamw_tensors(std::move(values), std::move(grads), std::move(exp_avgs),
                       std::move(exp_avg_sqs), std::move(decay), std::move(computes), {}, {});
}

namespace {

// images[i] against value i (the layouts AdamWImage names), on `device`.
void check_image(const AdamWImage& im, const Tensor& value, const Tensor& compute, size_t i) {
  DSEEK_CHECK(value.dim() == 2 && value.size(0) % 4 == 0 && value.size(1) % 4 == 0,
              "[adamw] tensor {}: an FP8 image needs a matrix with rows and columns multiples of "
              "4, got {}",
              i, shape_str(value.shape()));
  DSEEK_CHECK(!compute.defined(), "[adamw] tensor {}: an FP8 image and a compute copy", i);
  const int64_t R = value.size(0), C = value.size(1), RB = (R + 127) / 128, CB = (C + 127) / 128;
  auto check = [&](const Tensor& t, const char* what, DType dtype, const Shape& shape) {
    DSEEK_CHECK(t.defined() && t.dtype() == dtype && t.shape() == shape && t.is_contiguous() &&
                    t.device() == value.device(),
                "[adamw] tensor {}: image {} must be contiguous {} {} on {}, got {}", i, what,
                dtype_name(dtype), shape_str(shape), device_name(value.device()),
                t.defined() ? std::string(dtype_name(t.dtype())) + " " + shape_str(t.shape()) +
                                  " on " + std::string(device_name(t.device()))
                            : std::string("undefined"));
  };
  check(im.q, "codes", DType::F8_E4M3, {R, C});
  check(im.scale, "scales", DType::F32, {RB, CB});
  if (im.q_t.defined()) {
    check(im.q_t, "transposed codes", DType::F8_E4M3, {C, R});
    check(im.scale_t, "transposed scales", DType::F32, {CB, RB});
  }
}

}  // namespace

AdamWTensors adamw_tensors(std::vector<Tensor> values, std::vector<Tensor> grads,
                           std::vector<Tensor> exp_avgs, std::vector<Tensor> exp_avg_sqs,
                           std::vector<uint8_t> decay, std::vector<Tensor> computes,
                           std::vector<AdamWImage> images, Tensor bad,
                           std::vector<Tensor> row_flags, std::vector<Tensor> lows) {
  const size_t n = values.size();
  DSEEK_CHECK(images.empty() || images.size() == n,
              "[adamw] {} values and {} FP8 images: one each, or none", n, images.size());
  if (images.empty()) images.resize(n);
  DSEEK_CHECK(grads.size() == n && exp_avgs.size() == n && exp_avg_sqs.size() == n &&
                  decay.size() == n && (computes.empty() || computes.size() == n),
              "[adamw] {} values, {} grads, {} exp_avgs, {} exp_avg_sqs, {} decay flags, {} "
              "compute copies: one each (no compute copies at all is fine too)",
              n, grads.size(), exp_avgs.size(), exp_avg_sqs.size(), decay.size(), computes.size());
  if (computes.empty()) computes.resize(n);
  DSEEK_CHECK(row_flags.empty() || row_flags.size() == n,
              "[adamw] {} values and {} gradient row flags: one each, or none", n,
              row_flags.size());
  if (row_flags.empty()) row_flags.resize(n);
  DSEEK_CHECK(lows.empty() || lows.size() == n,
              "[adamw] {} values and {} split masters' low halves: one each, or none", n,
              lows.size());
  if (lows.empty()) lows.resize(n);
  // Each tensor's master as far as shapes and devices go: the value, or a split master's high
  // half (its compute copy).
  std::vector<Tensor> masters(n);
  for (size_t i = 0; i < n; ++i) {
    if (lows[i].defined()) {
      DSEEK_CHECK(!values[i].defined() && computes[i].defined(),
                  "[adamw] tensor {}: a split master has no f32 value, its compute copy is the "
                  "high half",
                  i);
      check_split(computes[i], lows[i], "adamw tensor " + std::to_string(i));
    } else {
      check_f32_contiguous("adamw", "value", i, values[i]);
    }
    masters[i] = lows[i].defined() ? computes[i] : values[i];
  }
  AdamWTensors t;
  t.device = list_device("adamw", masters);
  if (!exp_avgs.empty() && exp_avgs.front().defined()) t.moments = exp_avgs.front().dtype();
  DSEEK_CHECK(t.moments == DType::F32 || t.moments == DType::BF16,
              "[adamw] moments must be f32 or bf16, got {}", dtype_name(t.moments));
  for (size_t i = 0; i < n; ++i) {
    check_grad_tensor("adamw", "grad", i, grads[i]);
    for (const Tensor* moment : {&exp_avgs[i], &exp_avg_sqs[i]})
      DSEEK_CHECK(moment->defined() && moment->dtype() == t.moments && moment->is_contiguous(),
                  "[adamw] {} {}: must be a defined {} contiguous tensor (the moments share one "
                  "dtype, f32 or bf16), got {} {}",
                  moment == &exp_avgs[i] ? "exp_avg" : "exp_avg_sq", i, dtype_name(t.moments),
                  moment->defined() ? dtype_name(moment->dtype()) : "undefined",
                  moment->defined() ? shape_str(moment->shape()) : "");
    const Shape& shape = masters[i].shape();
    DSEEK_CHECK(grads[i].shape() == shape && exp_avgs[i].shape() == shape &&
                    exp_avg_sqs[i].shape() == shape,
                "[adamw] tensor {}: value {}, grad {}, exp_avg {}, exp_avg_sq {}: one shape", i,
                shape_str(shape), shape_str(grads[i].shape()), shape_str(exp_avgs[i].shape()),
                shape_str(exp_avg_sqs[i].shape()));
    op_device("adamw", {&masters[i], &grads[i], &exp_avgs[i], &exp_avg_sqs[i]});
    if (computes[i].defined()) {
      DSEEK_CHECK(computes[i].dtype() == DType::BF16 && computes[i].is_contiguous() &&
                      computes[i].shape() == shape,
                  "[adamw] compute copy {}: must be bf16 contiguous {}, got {} {}", i,
                  shape_str(shape), dtype_name(computes[i].dtype()),
                  shape_str(computes[i].shape()));
      op_device("adamw", {&masters[i], &computes[i]});
    }
    if (row_flags[i].defined())
      check_grad_rows(grads[i], row_flags[i], "adamw gradient " + std::to_string(i));
  }
  bool any_image = false;
  for (size_t i = 0; i < n; ++i)
    if (images[i].q.defined()) {
      DSEEK_CHECK(!lows[i].defined(), "[adamw] tensor {}: an FP8 image and a split master", i);
      DSEEK_CHECK(grads[i].dtype() == DType::F32,
                  "[adamw] tensor {}: an FP8 image's update reads f32 gradients, got {}", i,
                  dtype_name(grads[i].dtype()));
      check_image(images[i], values[i], computes[i], i);
      any_image = true;
    }
  if (any_image && t.device == Device::CUDA)
    DSEEK_CHECK(bad.defined() && bad.dtype() == DType::I32 && bad.numel() == 1 && bad.is_cuda(),
                "[adamw] FP8 images on the GPU need a device i32 flag for non-finite values");
  if (t.device == Device::CUDA) {
#ifdef DSEEK_HAS_CUDA
    std::vector<cuda::AdamWImageEntry> with_image;
    for (size_t i = 0; i < n; ++i) {
      const AdamWImage& im = images[i];
      if (!im.q.defined() || values[i].numel() == 0) continue;
      const int64_t R = values[i].size(0), C = values[i].size(1);
      const auto aligned = [](const Tensor& x, uintptr_t a) {
        return reinterpret_cast<uintptr_t>(x.raw()) % a == 0;
      };
      DSEEK_CHECK(aligned(values[i], 16) && aligned(grads[i], 16) &&
                      aligned(exp_avgs[i], t.moments == DType::BF16 ? 8 : 16) &&
                      aligned(exp_avg_sqs[i], t.moments == DType::BF16 ? 8 : 16) &&
                      aligned(im.q, 4) && (!im.q_t.defined() || aligned(im.q_t, 4)),
                  "[adamw] tensor {}: an FP8 image's update needs 16-byte aligned values and "
                  "gradients (8 for bf16 moments) and 4-byte aligned codes",
                  i);
      with_image.push_back(
          {values[i].data<float>(), grads[i].data<float>(), static_cast<float*>(exp_avgs[i].raw()),
           static_cast<float*>(exp_avg_sqs[i].raw()), im.q.data<uint8_t>(), im.scale.data<float>(),
           im.q_t.defined() ? im.q_t.data<uint8_t>() : nullptr,
           im.q_t.defined() ? im.scale_t.data<float>() : nullptr, R, C, t.image_tiles,
           decay[i] ? 1 : 0});
      t.image_tiles += ((R + 127) / 128) * ((C + 127) / 128);
    }
    if (!with_image.empty()) {
      static_assert(sizeof(cuda::AdamWImageEntry) % sizeof(int64_t) == 0);
      t.image_entries = int64_t(with_image.size());
      t.image_table = Tensor::empty({t.image_entries * int64_t(sizeof(cuda::AdamWImageEntry) / 8)},
                                    DType::I64, Device::CUDA);
      dseek::cuda::copy_to_device(t.image_table.raw(), with_image.data(),
                                  with_image.size() * sizeof(cuda::AdamWImageEntry));
    }
    std::vector<cuda::MultiTensorEntry> host;
    for (size_t i = 0; i < n; ++i) {
      if (masters[i].numel() == 0 || images[i].q.defined()) continue;
      // Row flags where a row is whole quads (the kernel's loads never straddle two rows).
      const bool by_rows = row_flags[i].defined() && masters[i].size(1) % 4 == 0;
      t.reads_rows = t.reads_rows || by_rows;
      const bool split = lows[i].defined();
      host.push_back(
          {split ? nullptr : values[i].data<float>(), static_cast<float*>(grads[i].raw()),
           static_cast<float*>(exp_avgs[i].raw()),  // bf16 moments: read as such (t.moments)
           static_cast<float*>(exp_avg_sqs[i].raw()), masters[i].numel(), 0, decay[i] ? 1 : 0,
           computes[i].defined() ? static_cast<uint16_t*>(computes[i].raw()) : nullptr,
           by_rows ? row_flags[i].data<uint8_t>() : nullptr, by_rows ? masters[i].size(1) : 0,
           split ? static_cast<uint16_t*>(lows[i].raw()) : nullptr,
           grads[i].dtype() == DType::BF16 ? 1 : 0});
    }
    const MultiTensorTable table = device_table(host);
    t.table = table.words;
    t.entries = table.entries;
    t.chunks = table.chunks;
#else
    cuda_not_built("adamw");
#endif
  }
  t.values = std::move(values);
  t.grads = std::move(grads);
  t.exp_avgs = std::move(exp_avgs);
  t.exp_avg_sqs = std::move(exp_avg_sqs);
  t.decay = std::move(decay);
  t.computes = std::move(computes);
  t.images = std::move(images);
  t.bad = std::move(bad);
  t.row_flags = std::move(row_flags);
  t.lows = std::move(lows);
  return t;
}

namespace {

// The CPU step of tensor i of t whose f32 master is `value` (its own, or a split one's joined).
void step_f32(const AdamWTensors& t, size_t i, const Tensor& value, const AdamWStep& s,
              float grad_scale) {
  const Tensor grad = f32_grad(t.grads[i]);
  if (t.moments == DType::BF16)
    cpu::adamw_update_bf16_moments(s, s.decay_factor(t.decay[i] != 0), value.data<float>(),
                                   grad.data<float>(), static_cast<uint16_t*>(t.exp_avgs[i].raw()),
                                   static_cast<uint16_t*>(t.exp_avg_sqs[i].raw()), value.numel(),
                                   grad_scale);
  else
    cpu::adamw_update(s, s.decay_factor(t.decay[i] != 0), value.data<float>(), grad.data<float>(),
                      t.exp_avgs[i].data<float>(), t.exp_avg_sqs[i].data<float>(), value.numel(),
                      grad_scale);
}

#ifdef DSEEK_HAS_CUDA
cuda::AdamWScalars scalars_of(const AdamWStep& s, float grad_scale, const float* grad_scale_at) {
  return {s.beta1,
          s.beta2,
          s.one_minus_beta1,
          s.one_minus_beta2,
          s.step_size,
          s.bias_correction2_sqrt,
          s.eps,
          s.decay_factor(true),
          grad_scale,
          grad_scale_at};
}
#endif

}  // namespace

void adamw_step(const AdamWTensors& t, const AdamWStep& s, float grad_scale, bool short_blocks,
                const float* grad_scale_at) {
  if (t.device == Device::CUDA) {
#ifdef DSEEK_HAS_CUDA
    const cuda::AdamWScalars scalars = scalars_of(s, grad_scale, grad_scale_at);
    cuda::adamw_multi_tensor(entries_of(t.table), t.entries, t.chunks, scalars,
                             t.moments == DType::BF16, short_blocks, t.reads_rows);
    if (t.image_entries > 0)
      cuda::adamw_image_multi_tensor(static_cast<const cuda::AdamWImageEntry*>(t.image_table.raw()),
                                     t.image_entries, t.image_tiles, scalars,
                                     t.moments == DType::BF16, t.bad.data<int32_t>());
    return;
#else
    (void)short_blocks;
    (void)grad_scale_at;
    cuda_not_built("adamw");
#endif
  }
  DSEEK_CHECK(grad_scale_at == nullptr,
              "[adamw] a clip factor on the GPU for tensors on the CPU (pass grad_scale)");
  for (size_t i = 0; i < t.values.size(); ++i) {
    if (t.lows[i].defined()) {  // a split master: joined, stepped, split again (no image)
      const Tensor value = join_master(t.computes[i], t.lows[i]);
      step_f32(t, i, value, s, grad_scale);
      split_master(value, t.computes[i], t.lows[i]);
      continue;
    }
    step_f32(t, i, t.values[i], s, grad_scale);
    if (t.computes[i].defined() && t.computes[i].numel() > 0) {
      const Tensor rounded = t.values[i].to(DType::BF16);
      std::memcpy(t.computes[i].raw(), rounded.raw(), rounded.nbytes());
    }
    const AdamWImage& im = t.images.empty() ? AdamWImage{} : t.images[i];
    if (im.q.defined() && t.values[i].numel() > 0) {
      const int64_t R = t.values[i].size(0), C = t.values[i].size(1);
      const int64_t bad = cpu::quantize_fp8(t.values[i].data<float>(), R, C, 128, false,
                                            im.q.data<uint8_t>(), im.scale.data<float>());
      DSEEK_CHECK(bad < 0,
                  "[adamw] tensor {} [{}, {}]: element {} is NaN or Inf after the update "
                  "(its FP8 image is not written)",
                  i, R, C, bad);
      if (im.q_t.defined()) {  // Wᵀ's blocks: W's codes transposed, the scales too
        const uint8_t* q = im.q.data<uint8_t>();
        uint8_t* qt = im.q_t.data<uint8_t>();
        for (int64_t r = 0; r < R; ++r)
          for (int64_t c = 0; c < C; ++c) qt[c * R + r] = q[r * C + c];
        const int64_t RB = im.scale.size(0), CB = im.scale.size(1);
        const float* sc = im.scale.data<float>();
        float* st = im.scale_t.data<float>();
        for (int64_t a = 0; a < RB; ++a)
          for (int64_t b = 0; b < CB; ++b) st[b * RB + a] = sc[a * CB + b];
      }
    }
  }
}

bool adamw_steps_rows(const AdamWTensors& t) {
  if (t.values.size() != 1 || (!t.images.empty() && t.images[0].q.defined())) return false;
  const Tensor& master = t.lows[0].defined() ? t.computes[0] : t.values[0];
  return master.dim() == 2 && master.numel() > 0 && master.size(1) % 4 == 0 &&
         (t.device != Device::CUDA || t.entries == 1);
}

void adamw_step_rows(const AdamWTensors& t, const AdamWStep& s, const AdamWRowSet& set,
                     AdamWRowPart part, float grad_scale, bool short_blocks,
                     const float* grad_scale_at) {
  DSEEK_CHECK(adamw_steps_rows(t),
              "[adamw] a step by rows needs one 2-D tensor, rows a multiple of 4 long, no FP8 "
              "image ({} tensors)",
              t.values.size());
  const Tensor& master = t.lows[0].defined() ? t.computes[0] : t.values[0];
  const int64_t R = master.size(0), L = master.size(1);
  DSEEK_CHECK(
      set.rows.defined() && set.flags.defined() && set.rows.dtype() == DType::I32 &&
          set.flags.dtype() == DType::U8 && set.flags.numel() == R && set.count >= 0 &&
          set.count <= set.rows.numel() && set.rows.device() == t.device &&
          set.flags.device() == t.device,
      "[adamw] row set: {} of {} i32 rows and {} u8 flags on {} for a [{}, {}] tensor on {}",
      set.count, set.rows.defined() ? set.rows.numel() : 0,
      set.flags.defined() ? set.flags.numel() : 0,
      device_name(set.rows.defined() ? set.rows.device() : t.device), R, L, device_name(t.device));
  if (t.device == Device::CUDA) {
#ifdef DSEEK_HAS_CUDA
    const cuda::AdamWScalars scalars = scalars_of(s, grad_scale, grad_scale_at);
    if (part == AdamWRowPart::listed)
      cuda::adamw_rows(entries_of(t.table), set.rows.data<int32_t>(), set.count, L, scalars,
                       t.moments == DType::BF16, t.reads_rows);
    else
      cuda::adamw_multi_tensor(entries_of(t.table), t.entries, t.chunks, scalars,
                               t.moments == DType::BF16, short_blocks, t.reads_rows,
                               set.flags.data<uint8_t>(), L);
    return;
#else
    (void)short_blocks;
    (void)grad_scale_at;
    cuda_not_built("adamw");
#endif
  }
  DSEEK_CHECK(grad_scale_at == nullptr,
              "[adamw] a clip factor on the GPU for tensors on the CPU (pass grad_scale)");
  // The CPU's parts: each row a one-row table stepped whole (the same arithmetic per element).
  const auto row = [](const Tensor& x, int64_t r) {
    return x.defined() ? x.slice(0, r, r + 1) : Tensor();
  };
  const auto step_row = [&](int64_t r) {
    const AdamWTensors one =
        adamw_tensors({row(t.values[0], r)}, {row(t.grads[0], r)}, {row(t.exp_avgs[0], r)},
                      {row(t.exp_avg_sqs[0], r)}, {t.decay[0]}, {row(t.computes[0], r)}, {},
                      Tensor(), {row(t.row_flags[0], r)}, {row(t.lows[0], r)});
    adamw_step(one, s, grad_scale);
  };
  const uint8_t* flags = set.flags.data<uint8_t>();
  if (part == AdamWRowPart::listed) {
    const int32_t* rows = set.rows.data<int32_t>();
    for (int64_t i = 0; i < set.count; ++i) {
      DSEEK_CHECK(rows[i] >= 0 && rows[i] < R && flags[rows[i]] == 1,
                  "[adamw] row set entry {}: row {} is out of [0, {}) or not flagged", i, rows[i],
                  R);
      step_row(rows[i]);
    }
  } else {
    for (int64_t r = 0; r < R; ++r)
      if (flags[r] == 0) step_row(r);
  }
}

namespace {

// Σ g² over tensors on the GPU (checked) into the device double `out`, queued on the stream.
void queue_sum_of_squares([[maybe_unused]] const std::vector<Tensor>& tensors,
                          [[maybe_unused]] double* out) {
#ifdef DSEEK_HAS_CUDA
  std::vector<cuda::MultiTensorEntry> host = grad_entries(tensors);
  const MultiTensorTable table = device_table(host);  // freed in stream order after the launch
  cuda::sum_of_squares_multi_tensor(entries_of(table.words), table.entries, table.chunks, out);
#else
  cuda_not_built("sum_of_squares");
#endif
}

}  // namespace

double sum_of_squares(const std::vector<Tensor>& tensors) {
  for (size_t i = 0; i < tensors.size(); ++i)
    check_grad_tensor("sum_of_squares", "tensor", i, tensors[i]);
  double sum = 0.0;
  if (list_device("sum_of_squares", tensors) == Device::CUDA) {
    const Tensor out = Tensor::empty({1}, DType::I64, Device::CUDA);  // 8 bytes for one double
    queue_sum_of_squares(tensors, static_cast<double*>(out.raw()));
    dseek::cuda::copy_to_host(&sum, out.raw(), sizeof(double));  // waits for the stream
    return sum;
  }
  for (const Tensor& t : tensors) sum += cpu::sum_of_squares(f32_grad(t).data<float>(), t.numel());
  return sum;
}

void sum_of_squares_to(const std::vector<Tensor>& tensors, double* out) {
  for (size_t i = 0; i < tensors.size(); ++i)
    check_grad_tensor("sum_of_squares", "tensor", i, tensors[i]);
  if (list_device("sum_of_squares", tensors) == Device::CUDA)
    queue_sum_of_squares(tensors, out);
  else
    *out = sum_of_squares(tensors);
}

SumOfSquaresParts::SumOfSquaresParts(std::vector<Tensor> tensors) : tensors_(std::move(tensors)) {
  for (size_t i = 0; i < tensors_.size(); ++i)
    check_grad_tensor("sum_of_squares", "tensor", i, tensors_[i]);
  added_.assign(tensors_.size(), 0);
  sums_.assign(tensors_.size(), 0.0);
  if (list_device("sum_of_squares", tensors_) != Device::CUDA) return;
#ifdef DSEEK_HAS_CUDA
  std::vector<cuda::MultiTensorEntry> host = grad_entries(tensors_);
  const MultiTensorTable table = device_table(host);
  table_ = table.words;
  entries_ = table.entries;
  chunks_ = table.chunks;
  // Tensor i covers chunks [chunk_of_[i], chunk_of_[i + 1]) (none when empty), as device_table
  // numbered them.
  chunk_of_.assign(tensors_.size() + 1, 0);
  for (size_t i = 0; i < tensors_.size(); ++i)
    chunk_of_[i + 1] = chunk_of_[i] + (tensors_[i].numel() + cuda::kMultiTensorChunk - 1) /
                                          cuda::kMultiTensorChunk;
  DSEEK_CHECK(chunk_of_.back() == chunks_, "[sum_of_squares] chunk count {} against {}",
              chunk_of_.back(), chunks_);
  // Doubles: a chunk's slot is written by add(), a tensor's external one by its writer; zeros
  // (all-zero bytes are +0.0) stand for the chunks of external tensors and unused slots.
  partial_ = Tensor::empty({chunks_ + int64_t(tensors_.size())}, DType::I64, Device::CUDA);
  dseek::cuda::fill_bytes(partial_.raw(), 0, size_t(partial_.numel()) * sizeof(double));
  out_ = Tensor::empty({1}, DType::I64, Device::CUDA);
#else
  cuda_not_built("sum_of_squares");
#endif
}

void SumOfSquaresParts::add(size_t first, size_t last) {
  DSEEK_CHECK(first <= last && last <= tensors_.size(),
              "[sum_of_squares] parts [{}, {}) of {} tensors", first, last, tensors_.size());
  for (size_t i = first; i < last; ++i)
    DSEEK_CHECK(!added_[i], "[sum_of_squares] tensor {} added twice", i);
  for (size_t i = first; i < last; ++i) added_[i] = 1;
  if (table_.defined()) {
#ifdef DSEEK_HAS_CUDA
    cuda::sum_of_squares_chunks(entries_of(table_), entries_, chunk_of_[first], chunk_of_[last],
                                static_cast<double*>(partial_.raw()));
#endif
    return;
  }
  for (size_t i = first; i < last; ++i)
    sums_[i] = cpu::sum_of_squares(f32_grad(tensors_[i]).data<float>(), tensors_[i].numel());
}

double* SumOfSquaresParts::external(const std::vector<size_t>& tensors) {
  DSEEK_CHECK(!tensors.empty(), "[sum_of_squares] an external sum of no tensors");
  for (size_t i : tensors) {
    DSEEK_CHECK(i < tensors_.size(), "[sum_of_squares] tensor {} of {}", i, tensors_.size());
    DSEEK_CHECK(!added_[i], "[sum_of_squares] tensor {} added twice", i);
  }
  for (size_t i : tensors) added_[i] = 1;
  if (table_.defined()) return static_cast<double*>(partial_.raw()) + chunks_ + tensors[0];
  return &sums_[tensors[0]];  // the others' sums stay 0
}

Tensor clip_on_device([[maybe_unused]] const double* sum, [[maybe_unused]] double max_norm) {
  Tensor out = Tensor::empty({2}, DType::I64, Device::CUDA);
#ifdef DSEEK_HAS_CUDA
  auto* words = static_cast<int64_t*>(out.raw());
  cuda::clip_factor_from_sum(sum, max_norm, reinterpret_cast<double*>(words),
                             reinterpret_cast<float*>(words + 1));
#endif
  return out;
}

void SumOfSquaresParts::add_rest() {
  for (size_t i = 0; i < tensors_.size();) {  // a run of tensors at a time
    size_t j = i;
    while (j < tensors_.size() && !added_[j]) ++j;
    if (j > i) add(i, j);
    i = j + (j < tensors_.size() ? 1 : 0);
  }
}

const double* SumOfSquaresParts::finish_on_device([[maybe_unused]] uint64_t after) {
  DSEEK_CHECK(table_.defined(), "[sum_of_squares] finish_on_device: the tensors are not on a GPU");
  add_rest();
#ifdef DSEEK_HAS_CUDA
  if (after != 0) dseek::cuda::wait_background(after);
  cuda::sum_partials(static_cast<const double*>(partial_.raw()), partial_.numel(),
                     static_cast<double*>(out_.raw()));
#endif
  return static_cast<const double*>(out_.raw());
}

double SumOfSquaresParts::finish(uint64_t after) {
  if (table_.defined()) {
    const double* on_device = finish_on_device(after);
    double sum = 0.0;
    dseek::cuda::copy_to_host(&sum, on_device, sizeof(double));  // waits for the stream
    return sum;
  }
  add_rest();
  double sum = 0.0;
  for (double v : sums_) sum += v;
  return sum;
}

void scale_inplace(const std::vector<Tensor>& tensors, float scale) {
  for (size_t i = 0; i < tensors.size(); ++i)
    check_grad_tensor("scale_inplace", "tensor", i, tensors[i]);
  if (list_device("scale_inplace", tensors) == Device::CUDA) {
#ifdef DSEEK_HAS_CUDA
    std::vector<cuda::MultiTensorEntry> host = grad_entries(tensors);
    const MultiTensorTable table = device_table(host);
    cuda::scale_multi_tensor(entries_of(table.words), table.entries, table.chunks, scale);
    return;
#else
    cuda_not_built("scale_inplace");
#endif
  }
  for (const Tensor& t : tensors) {
    if (t.dtype() == DType::F32) {
      cpu::scale_inplace(t.data<float>(), t.numel(), scale);
      continue;
    }
    // bf16: scaled in f32 and rounded back (the GPU kernel's operations)
    const Tensor f = t.to(DType::F32);
    cpu::scale_inplace(f.data<float>(), f.numel(), scale);
    t.copy_from(f.to(DType::BF16));
  }
}

}  // namespace dseek::ops
