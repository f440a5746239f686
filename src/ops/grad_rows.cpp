#include "ops/grad_rows.h"

#include <fmt/format.h>

#include <cstring>
#include <string>

#include "core/error.h"
#include "ops/cuda/cuda_ops.h"
#include "ops/device.h"

namespace dseek::ops {

namespace {

std::string describe(const Tensor& t) {
  return t.defined() ? fmt::format("{} {} on {}", dtype_name(t.dtype()), shape_str(t.shape()),
                                   device_name(t.device()))
                     : std::string("undefined");
}

}  // namespace

void check_grad_rows(const Tensor& grad, const Tensor& flags, const std::string& what) {
  DSEEK_CHECK(
      grad.defined() && grad.dtype() == DType::F32 && grad.dim() == 2 && grad.is_contiguous(),
      "[grad_rows] {}: the gradient must be f32 contiguous [rows, cols], got {}", what,
      describe(grad));
  DSEEK_CHECK(flags.defined() && flags.dtype() == DType::U8 && flags.is_contiguous() &&
                  flags.shape() == Shape({grad.size(0)}) && flags.device() == grad.device(),
              "[grad_rows] {}: the row flags must be u8 contiguous [{}] on {}, got {}", what,
              grad.size(0), device_name(grad.device()), describe(flags));
}

void zero_flagged_rows(const Tensor& grad, const Tensor& flags) {
  check_grad_rows(grad, flags, "zero_flagged_rows");
  const int64_t rows = grad.size(0), cols = grad.size(1);
  if (grad.is_cuda()) {
#ifdef DSEEK_HAS_CUDA
    cuda::zero_flagged_rows(grad.data<float>(), flags.data<uint8_t>(), rows, cols);
    return;
#else
    cuda_not_built("zero_flagged_rows");
#endif
  }
  float* g = grad.data<float>();
  uint8_t* f = flags.data<uint8_t>();
  for (int64_t r = 0; r < rows; ++r)
    if (f[r] != 0) {
      std::memset(g + r * cols, 0, size_t(cols) * sizeof(float));
      f[r] = 0;
    }
}

void sum_of_squares_flagged_rows(const Tensor& grad, const Tensor& flags, double* out) {
  check_grad_rows(grad, flags, "sum_of_squares_flagged_rows");
  DSEEK_CHECK(out != nullptr, "[grad_rows] sum_of_squares_flagged_rows: no output");
  const int64_t rows = grad.size(0), cols = grad.size(1);
  if (grad.is_cuda()) {
#ifdef DSEEK_HAS_CUDA
    cuda::sum_of_squares_flagged_rows(grad.data<float>(), flags.data<uint8_t>(), rows, cols, out);
    return;
#else
    cuda_not_built("sum_of_squares_flagged_rows");
#endif
  }
  const float* g = grad.data<float>();
  const uint8_t* f = flags.data<uint8_t>();
  double sum = 0.0;
  for (int64_t r = 0; r < rows; ++r)
    if (f[r] != 0)
      for (int64_t j = 0; j < cols; ++j) sum += double(g[r * cols + j]) * double(g[r * cols + j]);
  *out = sum;
}

}  // namespace dseek::ops
