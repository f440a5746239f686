#include "ops/argmax.h"

#include <cmath>
#include <limits>
#include <utility>

#include "core/dtype.h"
#include "core/error.h"
#include "ops/cuda/cuda_ops.h"
#include "ops/device.h"

namespace dseek::ops {

namespace {

// One row's argmax, and whether it holds a NaN; `value(k)` gives element k as f32.
template <typename Value>
std::pair<int32_t, bool> row_argmax(int64_t V, const Value& value) {
  float best = -std::numeric_limits<float>::infinity();
  int64_t at = -1;
  bool nan = false;
  for (int64_t k = 0; k < V; ++k) {
    const float v = value(k);
    nan = nan || std::isnan(v);
    if (v > best || (v == best && at < 0)) {  // NaN compares false: skipped
      best = v;
      at = k;
    }
  }
  return {int32_t(at < 0 ? 0 : at), nan};
}

}  // namespace

void argmax_rows(const Tensor& x, const Tensor& out, const Tensor& nan_rows) {
  DSEEK_CHECK(x.defined() && out.defined(), "[argmax] undefined tensor");
  DSEEK_CHECK(x.dim() == 2 && x.size(1) >= 1 && (x.strides()[1] == 1 || x.size(1) == 1),
              "[argmax] x must be [R, V] with V ≥ 1 and contiguous rows, got {}",
              shape_str(x.shape()));
  DSEEK_CHECK(x.dtype() == DType::F32 || x.dtype() == DType::BF16, "[argmax] x of {}",
              dtype_name(x.dtype()));
  DSEEK_CHECK(out.dtype() == DType::I32 && out.dim() == 1 && out.size(0) == x.size(0) &&
                  out.is_contiguous(),
              "[argmax] out must be contiguous i32 [{}], got {} {}", x.size(0),
              dtype_name(out.dtype()), shape_str(out.shape()));
  DSEEK_CHECK(out.device() == x.device(), "[argmax] x on the {}, out on the {}",
              device_name(x.device()), device_name(out.device()));
  DSEEK_CHECK(x.size(1) <= std::numeric_limits<int32_t>::max(), "[argmax] {} columns", x.size(1));
  if (nan_rows.defined())
    DSEEK_CHECK(nan_rows.dtype() == DType::I32 && nan_rows.dim() == 1 &&
                    nan_rows.size(0) == x.size(0) && nan_rows.device() == x.device(),
                "[argmax] nan_rows must be i32 [{}] on the {}, got {} {} on the {}", x.size(0),
                device_name(x.device()), dtype_name(nan_rows.dtype()), shape_str(nan_rows.shape()),
                device_name(nan_rows.device()));
  const int64_t R = x.size(0), V = x.size(1), ld = x.size(0) > 1 ? x.strides()[0] : V;
  if (R == 0) return;
  if (x.is_cuda()) {
#ifdef DSEEK_HAS_CUDA
    cuda::argmax_rows(x.raw(), x.dtype(), ld, R, V, out.data<int32_t>(),
                      nan_rows.defined() ? nan_rows.data<int32_t>() : nullptr,
                      nan_rows.defined() ? nan_rows.strides()[0] : 0);
    return;
#else
    cuda_not_built("argmax");
#endif
  }
  int32_t* o = out.data<int32_t>();
  for (int64_t r = 0; r < R; ++r) {
    std::pair<int32_t, bool> pick;
    if (x.dtype() == DType::F32) {
      const float* row = x.data<float>() + r * ld;
      pick = row_argmax(V, [row](int64_t k) { return row[k]; });
    } else {
      const uint16_t* row = x.data<uint16_t>() + r * ld;
      pick = row_argmax(V, [row](int64_t k) { return bf16_to_f32(row[k]); });
    }
    o[r] = pick.first;
    if (nan_rows.defined()) nan_rows.data<int32_t>()[r * nan_rows.strides()[0]] = pick.second;
  }
}

}  // namespace dseek::ops
