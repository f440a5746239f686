#include "ops/swiglu.h"

#include <atomic>
#include <cstdint>

#include "core/error.h"
#include "ops/activation.h"
#include "ops/cuda/gemv.h"
#include "ops/cuda/grouped_gemv.h"
#include "ops/linear.h"

namespace dseek::ops {

namespace {

// gu's halves as silu_mul takes them, after checking gu is [T, 2I] for the weight's I columns.
std::pair<Tensor, Tensor> halves(const char* op, const Tensor& gu, int64_t I) {
  DSEEK_CHECK(gu.defined() && gu.dim() == 2 && gu.size(1) == 2 * I,
              "[{}] gate_up must be [T, {}] for {} weight columns, got {}", op, 2 * I, I,
              gu.defined() ? shape_str(gu.shape()) : std::string("undefined"));
  return {gu.slice(1, 0, I), gu.slice(1, I, 2 * I)};
}

std::atomic<bool> g_fused{true};

#ifdef DSEEK_HAS_CUDA
bool aligned16(const void* p) {
  return reinterpret_cast<uintptr_t>(p) % 16 == 0;
}
#endif

}  // namespace

void set_swiglu_fused(bool on) {
  g_fused = on;
}

Tensor linear_swiglu(const Tensor& gu, const Tensor& weight, const Tensor* bias) {
  DSEEK_CHECK(weight.defined() && weight.dim() == 2, "[linear_swiglu] weight must be [out, I]");
  const int64_t I = weight.size(1);
  const auto [gate, up] = halves("linear_swiglu", gu, I);
#ifdef DSEEK_HAS_CUDA
  const int64_t T = gu.size(0), out = weight.size(0);
  const int64_t ldw = out > 1 ? weight.strides()[0] : I;
  if (g_fused.load() && gu.is_cuda() && weight.is_cuda() && weight.dtype() == gu.dtype() &&
      gu.is_contiguous() && weight.strides()[1] == 1 && out > 0 && I > 0 &&
      (!bias || (bias->is_cuda() && bias->dtype() == gu.dtype() && bias->dim() == 1 &&
                 bias->size(0) == out && bias->is_contiguous())) &&
      cuda::gemv_swiglu_takes(T, I, gu.raw(), weight.raw(), ldw, gu.dtype())) {
    Tensor y = Tensor::empty({T, out}, gu.dtype(), Device::CUDA);
    cuda::gemv_swiglu(gu.raw(), T, I, weight.raw(), ldw, out, bias ? bias->raw() : nullptr, y.raw(),
                      gu.dtype());
    return y;
  }
#endif
  return linear(silu_mul(gate, up), weight, bias);
}

Tensor grouped_linear_swiglu(const Tensor& gu, const ExpertMatrices& w, const Tensor& offsets) {
  const int64_t I = w.cols;
  const auto [gate, up] = halves("grouped_linear_swiglu", gu, I);
#ifdef DSEEK_HAS_CUDA
  const int64_t N = gu.size(0);
  bool matrices_aligned = w.ld % 8 == 0;
  for (const Tensor& m : w.matrices) matrices_aligned = matrices_aligned && aligned16(m.raw());
  if (g_fused.load() && gu.is_cuda() && w.device == Device::CUDA && w.dtype == gu.dtype() &&
      gu.is_contiguous() && offsets.is_cuda() && offsets.dtype() == DType::I64 &&
      offsets.is_contiguous() && offsets.numel() == w.experts + 1 && N > 0 && I > 0 && w.rows > 0 &&
      matrices_aligned &&
      cuda::grouped_gemv_swiglu_takes(N, w.experts, gu.raw(), I, w.ld, gu.dtype())) {
    Tensor y = Tensor::empty({N, w.rows}, gu.dtype(), Device::CUDA);
    cuda::grouped_gemv_swiglu(gu.raw(), offsets.data<int64_t>(), w.experts, N, I,
                              static_cast<const void* const*>(w.table.raw()), w.ld, w.rows,
                              y.raw());
    return y;
  }
#endif
  return grouped_linear(silu_mul(gate, up), w, offsets);
}

}  // namespace dseek::ops
