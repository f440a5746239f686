#include "ops/rope.h"

#include <cmath>
#include <mutex>
#include <utility>

#include "core/cuda.h"
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

// The cos/sin tables for the positions of x's T rows (x already checked): positions[t], or
// pos0 + t when positions is null.
RopeTables rope_tables(const Tensor& x, int64_t pos0, const int64_t* positions,
                       const std::vector<float>& inv_freq, float scaling) {
  const int64_t T = x.size(0), d = x.size(2);
  const int64_t half = d / 2;
  RopeTables tab{std::vector<float>(size_t(T * half)), std::vector<float>(size_t(T * half))};
  // Each entry on its own (double cos and sin): rows split over the team give the same tables.
#pragma omp parallel for schedule(static) if (T * half >= (1 << 13))
  for (int64_t t = 0; t < T; ++t) {
    const int64_t pos = positions ? positions[t] : pos0 + t;
    for (int64_t j = 0; j < half; ++j) {
      // As transformers: the angle is one f32 product, cos/sin in f32, then the scaling.
      const float angle = inv_freq[size_t(j)] * float(pos);
      tab.cos[size_t(t * half + j)] = float(std::cos(double(angle))) * scaling;
      tab.sin[size_t(t * half + j)] = float(std::sin(double(angle))) * scaling;
    }
  }
  return tab;
}

// Checks a positions tensor for x [T, H, d]: i64 [T] contiguous on x's device; on the CPU also
// that every position is ≥ 0.
void check_positions(const Tensor& x, const Tensor& positions) {
  DSEEK_CHECK(positions.defined() && positions.dtype() == DType::I64 && positions.dim() == 1 &&
                  positions.size(0) == x.size(0) && positions.is_contiguous(),
              "[rope] positions must be contiguous i64 [{}], got {}", x.size(0),
              positions.defined() ? fmt::format("{} {}", dtype_name(positions.dtype()),
                                                shape_str(positions.shape()))
                                  : std::string("undefined"));
  DSEEK_CHECK(positions.device() == x.device(), "[rope] positions on the {}, x on the {}",
              device_name(positions.device()), device_name(x.device()));
  if (positions.is_cuda()) return;
  const int64_t* p = positions.data<int64_t>();
  for (int64_t t = 0; t < positions.size(0); ++t)
    DSEEK_CHECK(p[t] >= 0, "[rope] negative position {} at row {}", p[t], t);
}

#ifdef DSEEK_HAS_CUDA
// The inverse frequencies on the device. A model has one or two sets, used by every layer of every
// step, so they are uploaded once and kept (a copy per call was a synchronous host-to-device copy
// per rotation: thousands per batched decode step). Keyed by value, a handful of entries; the
// cache lives until exit on purpose (freeing device memory from a static destructor would run after
// the CUDA runtime is torn down).
const float* device_frequencies_impl(const std::vector<float>& inv_freq) {
  static std::mutex mutex;
  static auto* cache = new std::vector<std::pair<std::vector<float>, Tensor>>();
  std::lock_guard<std::mutex> lock(mutex);
  for (const auto& [values, tensor] : *cache)
    if (values == inv_freq) return tensor.data<float>();
  constexpr size_t kMaxEntries = 16;  // a process with many models re-uploads, never grows
  if (cache->size() == kMaxEntries) cache->erase(cache->begin());
  const int64_t n = int64_t(inv_freq.size());
  cache->emplace_back(inv_freq, Tensor::from_vector(inv_freq, {n}).to(Device::CUDA));
  // The copy is ordered on the current stream, which may be a fork's side stream (core/cuda.h):
  // wait for it, so a kernel on another stream that finds the entry reads uploaded values. Once
  // per set of frequencies, in a step that runs eagerly (a decode graph's warm-up).
  dseek::cuda::synchronize();
  return cache->back().second.data<float>();
}

// The CUDA kernels compute cos/sin themselves (the same way as rope_tables).
void rope_cuda(const Tensor& x, int64_t pos0, const int64_t* positions,
               const std::vector<float>& inv_freq, float scaling, bool interleaved, bool backward,
               DType act) {
  const int64_t T = x.size(0), H = x.size(1), d = x.size(2);
  if (T * H * d == 0) return;
  auto* kernel = backward ? cuda::rope_backward : cuda::rope;
  kernel(x.raw(), T, H, d, x.strides()[0], x.strides()[1], pos0, positions,
         device_frequencies_impl(inv_freq), scaling, interleaved, act);
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

// Both directions and both ways of giving positions: positions null means pos0 + t.
void rope_any(const Tensor& x, int64_t pos0, const int64_t* positions,
              const std::vector<float>& inv_freq, float scaling, bool interleaved, bool backward,
              [[maybe_unused]] DType act) {
  if (x.is_cuda()) {
#ifdef DSEEK_HAS_CUDA
    rope_cuda(x, pos0, positions, inv_freq, scaling, interleaved, backward, act);
    return;
#else
    cuda_not_built("rope");
#endif
  }
  const RopeTables tab = rope_tables(x, pos0, positions, inv_freq, scaling);
  if (backward) {
    for_each_row(x, tab, interleaved, cpu::rope_row_backward);
  } else {
    for_each_row(x, tab, interleaved, cpu::rope_row);
  }
}

}  // namespace

void rope_inplace(const Tensor& x, int64_t pos0, const std::vector<float>& inv_freq, float scaling,
                  bool interleaved) {
  const DType act = check_rope(x, pos0, inv_freq);
  rope_any(x, pos0, nullptr, inv_freq, scaling, interleaved, false, act);
}

void rope_inplace(const Tensor& x, const Tensor& positions, const std::vector<float>& inv_freq,
                  float scaling, bool interleaved) {
  const DType act = check_rope(x, 0, inv_freq);
  check_positions(x, positions);
  rope_any(x, 0, positions.data<int64_t>(), inv_freq, scaling, interleaved, false, act);
}

void check_rope_copy(const Tensor& src, const Tensor& dst, const Tensor& positions,
                     const std::vector<float>& inv_freq) {
  check_rope(dst, 0, inv_freq);
  check_positions(dst, positions);
  DSEEK_CHECK(src.defined(), "[rope_copy] undefined src");
  DSEEK_CHECK(
      src.shape() == dst.shape() && src.dtype() == dst.dtype() && src.device() == dst.device(),
      "[rope_copy] src {} {} on the {} does not match dst {} {} on the {}", dtype_name(src.dtype()),
      shape_str(src.shape()), device_name(src.device()), dtype_name(dst.dtype()),
      shape_str(dst.shape()), device_name(dst.device()));
  DSEEK_CHECK(src.strides()[2] == 1 || src.size(2) <= 1,
              "[rope_copy] src's last dimension must be contiguous");
}

void rope_copy(const Tensor& src, const Tensor& dst, const Tensor& positions,
               const std::vector<float>& inv_freq, float scaling, bool interleaved) {
  check_rope_copy(src, dst, positions, inv_freq);
  const DType act = dst.dtype();
  if (dst.is_cuda()) {
#ifdef DSEEK_HAS_CUDA
    const int64_t T = dst.size(0), H = dst.size(1), d = dst.size(2);
    if (T * H * d == 0) return;
    cuda::rope_copy(src.raw(), src.strides()[0], src.strides()[1], dst.raw(), dst.strides()[0],
                    dst.strides()[1], T, H, d, positions.data<int64_t>(),
                    device_frequencies_impl(inv_freq), scaling, interleaved, act);
    return;
#else
    cuda_not_built("rope_copy");
#endif
  }
  dst.copy_from(src);
  rope_any(dst, 0, positions.data<int64_t>(), inv_freq, scaling, interleaved, false, act);
}

const float* rope_device_frequencies([[maybe_unused]] const std::vector<float>& inv_freq) {
#ifdef DSEEK_HAS_CUDA
  return device_frequencies_impl(inv_freq);
#else
  cuda_not_built("rope");
#endif
}

void rope_backward_inplace(const Tensor& dy, int64_t pos0, const std::vector<float>& inv_freq,
                           float scaling, bool interleaved) {
  const DType act = check_rope(dy, pos0, inv_freq);
  rope_any(dy, pos0, nullptr, inv_freq, scaling, interleaved, true, act);
}

}  // namespace dseek::ops
