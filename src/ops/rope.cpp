#include "ops/rope.h"

#include <cmath>

#include "core/error.h"
#include "ops/cpu/cpu_ops.h"
#include "ops/cuda/cuda_ops.h"
#include "ops/device.h"

namespace dseek::ops {

namespace {

// Checks x and the frequencies; returns the activation dtype (f32 on the CPU, f32/bf16 on a GPU).
DType check_rope(const Tensor& x, int64_t pos0, const std::vector<float>& inv_freq) {
  DSEEK_CHECK(x.defined() && x.dim() == 3, "[rope] input must be [T, H, d], got {}",
              x.defined() ? shape_str(x.shape()) : std::string("undefined"));
  const DType act = activation_dtype("rope", x);
  const int64_t d = x.size(2);
  DSEEK_CHECK(d % 2 == 0 && int64_t(inv_freq.size()) == d / 2,
              "[rope] rotary dim {} needs {} inverse frequencies, got {}", d, d / 2,
              inv_freq.size());
  DSEEK_CHECK(d <= cpu::kMaxRopeDim, "[rope] rotary dim {} above the supported {}", d,
              cpu::kMaxRopeDim);
  DSEEK_CHECK(x.strides()[2] == 1 || d <= 1, "[rope] last dimension must be contiguous");
  DSEEK_CHECK(pos0 >= 0, "[rope] negative position {}", pos0);
  return act;
}

struct RopeTables {
  std::vector<float> cos, sin;  // [T, d/2]
};

// The cos/sin tables for positions pos0 .. pos0 + T − 1 (x already checked).
RopeTables rope_tables(const Tensor& x, int64_t pos0, const std::vector<float>& inv_freq,
                       float scaling) {
  const int64_t T = x.size(0), d = x.size(2);
  const int64_t half = d / 2;
  RopeTables tab{std::vector<float>(size_t(T * half)), std::vector<float>(size_t(T * half))};
  for (int64_t t = 0; t < T; ++t)
    for (int64_t j = 0; j < half; ++j) {
      // As transformers: the angle is one f32 product, cos/sin in f32, then the scaling.
      const float angle = inv_freq[size_t(j)] * float(pos0 + t);
      tab.cos[size_t(t * half + j)] = float(std::cos(double(angle))) * scaling;
      tab.sin[size_t(t * half + j)] = float(std::sin(double(angle))) * scaling;
    }
  return tab;
}

#ifdef DSEEK_HAS_CUDA
// The CUDA kernels compute cos/sin themselves (the same way as rope_tables); only the
// frequencies travel, to a small device buffer per call.
void rope_cuda(const Tensor& x, int64_t pos0, const std::vector<float>& inv_freq, float scaling,
               bool interleaved, bool backward, DType act) {
  const int64_t T = x.size(0), H = x.size(1), d = x.size(2);
  if (T * H * d == 0) return;
  const Tensor freq = Tensor::from_vector(inv_freq, {d / 2}).to(Device::CUDA);
  auto* kernel = backward ? cuda::rope_backward : cuda::rope;
  kernel(x.raw(), T, H, d, x.strides()[0], x.strides()[1], pos0, freq.data<float>(), scaling,
         interleaved, act);
}
#endif

// Applies `row_fn` (the rotation or its transpose) to every [t, h] row of x [T, H, d] in place.
template <typename RowFn>
void for_each_row(const Tensor& x, const RopeTables& tab, bool interleaved, RowFn row_fn) {
  const int64_t T = x.size(0), H = x.size(1), d = x.size(2), half = d / 2;
  float* base = x.data<float>();
  const int64_t st = x.strides()[0], sh = x.strides()[1];
#pragma omp parallel for collapse(2) schedule(static) if (T * H * d >= (1 << 15))
  for (int64_t t = 0; t < T; ++t)
    for (int64_t h = 0; h < H; ++h)
      row_fn(base + t * st + h * sh, d, &tab.cos[size_t(t * half)], &tab.sin[size_t(t * half)],
             interleaved);
}

}  // namespace

void rope_inplace(const Tensor& x, int64_t pos0, const std::vector<float>& inv_freq, float scaling,
                  bool interleaved) {
  [[maybe_unused]] const DType act = check_rope(x, pos0, inv_freq);
  if (x.is_cuda()) {
#ifdef DSEEK_HAS_CUDA
    rope_cuda(x, pos0, inv_freq, scaling, interleaved, false, act);
    return;
#else
    cuda_not_built("rope");
#endif
  }
  for_each_row(x, rope_tables(x, pos0, inv_freq, scaling), interleaved, cpu::rope_row);
}

void rope_backward_inplace(const Tensor& dy, int64_t pos0, const std::vector<float>& inv_freq,
                           float scaling, bool interleaved) {
  [[maybe_unused]] const DType act = check_rope(dy, pos0, inv_freq);
  if (dy.is_cuda()) {
#ifdef DSEEK_HAS_CUDA
    rope_cuda(dy, pos0, inv_freq, scaling, interleaved, true, act);
    return;
#else
    cuda_not_built("rope");
#endif
  }
  for_each_row(dy, rope_tables(dy, pos0, inv_freq, scaling), interleaved,
               cpu::rope_row_backward);
}

}  // namespace dseek::ops
