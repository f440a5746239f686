#include "ops/mla_cache.h"

#include <atomic>

#include "core/error.h"
#include "ops/cuda/cuda_ops.h"
#include "ops/device.h"
#include "ops/norm.h"
#include "ops/rope.h"
#include "ops/rows.h"

namespace dseek::ops {

namespace {

void check_index(const char* what, const Tensor& index, int64_t T, Device device) {
  DSEEK_CHECK(index.defined() && index.dtype() == DType::I64 && index.dim() == 1 &&
                  index.size(0) == T && index.is_contiguous() && index.device() == device,
              "[mla_cache_append] {} must be contiguous i64 [{}] on the {}, got {}", what, T,
              device_name(device),
              index.defined() ? fmt::format("{} {} on the {}", dtype_name(index.dtype()),
                                            shape_str(index.shape()), device_name(index.device()))
                              : std::string("undefined"));
}

std::atomic<bool> g_fused{true};

}  // namespace

void set_mla_cache_append_fused(bool on) {
  g_fused = on;
}
bool mla_cache_append_fused() {
  return g_fused.load();
}

void mla_cache_append(const Tensor& kv_a, const Tensor& weight, double eps, const Tensor& positions,
                      const std::vector<float>& inv_freq, float scaling, bool interleaved,
                      const Tensor& rows, const Tensor& slots) {
  DSEEK_CHECK(kv_a.defined() && weight.defined() && rows.defined(),
              "[mla_cache_append] undefined kv_a, weight or rows");
  const Device device = op_device("mla_cache_append", {&kv_a, &weight, &rows});
  [[maybe_unused]] const DType act = activation_dtype("mla_cache_append", kv_a);
  const int64_t d = 2 * int64_t(inv_freq.size());
  DSEEK_CHECK(weight.dim() == 1 && weight.size(0) > 0,
              "[mla_cache_append] weight must be [r], got {}", shape_str(weight.shape()));
  const int64_t r = weight.size(0);
  DSEEK_CHECK(kv_a.dim() == 2 && kv_a.size(1) == r + d && (kv_a.strides()[1] == 1),
              "[mla_cache_append] kv_a must be [T, {}] (r {} + rope {}) with a contiguous last "
              "dimension, got {}",
              r + d, r, d, shape_str(kv_a.shape()));
  DSEEK_CHECK(rows.dim() == 2 && rows.size(1) == r + d && rows.strides()[1] == 1,
              "[mla_cache_append] rows must be [R, {}] with a contiguous last dimension, got {}",
              r + d, shape_str(rows.shape()));
  DSEEK_CHECK(rows.dtype() == DType::F32 || rows.dtype() == DType::BF16,
              "[mla_cache_append] rows must be f32 or bf16, got {}", dtype_name(rows.dtype()));
  DSEEK_CHECK(eps >= 0, "[mla_cache_append] negative eps {}", eps);
  const int64_t T = kv_a.size(0);
  check_index("positions", positions, T, device);
  check_index("slots", slots, T, device);
  if (T == 0) return;
  if (device == Device::CUDA && g_fused.load()) {
#ifdef DSEEK_HAS_CUDA
    DSEEK_CHECK(d <= 1024, "[mla_cache_append] rope dim {} above the supported 1024", d);
    const Tensor w = weight.contiguous();
    cuda::mla_cache_append(kv_a.raw(), kv_a.strides()[0], w.raw(), w.dtype(), float(eps),
                           positions.data<int64_t>(), rope_device_frequencies(inv_freq), scaling,
                           interleaved, rows.raw(), rows.strides()[0], rows.dtype(),
                           slots.data<int64_t>(), T, r, d, act);
    return;
#else
    cuda_not_built("mla_cache_append");
#endif
  }
  // The CPU (or the GPU with the fused kernel switched off): the separate ops, which define the
  // result.
  const Tensor c_kv = rms_norm(kv_a.slice(1, 0, r), weight, eps);
  const Tensor k_pe = kv_a.slice(1, r, r + d).contiguous().reshape({T, 1, d});
  rope_inplace(k_pe, positions, inv_freq, scaling, interleaved);
  scatter_rows(rows.slice(1, 0, r), c_kv, slots);
  scatter_rows(rows.slice(1, r, r + d), k_pe.reshape({T, d}), slots);
}

}  // namespace dseek::ops
