#include "ops/l2_prefetch.h"

#include <algorithm>
#include <atomic>

#include "core/env.h"
#include "core/error.h"
#include "ops/cuda/l2_prefetch.h"

namespace dseek::ops {

std::vector<L2Range> l2_ranges(std::span<const Tensor* const> tensors, int64_t max_bytes) {
  std::vector<L2Range> out;
  int64_t left = max_bytes;
  for (const Tensor* t : tensors) {
    if (left <= 0) break;
    if (!t || !t->defined() || !t->is_cuda() || !t->is_contiguous() || t->nbytes() == 0) continue;
    const int64_t bytes = std::min<int64_t>(int64_t(t->nbytes()), left);
    out.push_back({t->raw(), bytes});
    left -= bytes;
  }
  return out;
}

void prefetch_l2(std::span<const L2Range> ranges) {
  if (ranges.empty()) return;
#ifdef DSEEK_HAS_CUDA
  std::vector<const void*> data;
  std::vector<int64_t> bytes;
  for (const L2Range& r : ranges) {
    DSEEK_CHECK(r.data && r.bytes >= 0, "[prefetch_l2] a range of {} bytes at {}", r.bytes, r.data);
    data.push_back(r.data);
    bytes.push_back(r.bytes);
  }
  cuda::prefetch_l2(data.data(), bytes.data(), int64_t(ranges.size()));
#else
  fail("[prefetch_l2] dseek was built without CUDA");
#endif
}

namespace {

std::atomic<bool>& o_proj_switch() {
  static std::atomic<bool> on = [] { return env_is("DSEEK_PREFETCH_O_PROJ", "1"); }();
  return on;
}

}  // namespace

bool prefetch_o_proj() {
  return o_proj_switch().load();
}

void set_prefetch_o_proj(bool on) {
  o_proj_switch().store(on);
}

}  // namespace dseek::ops
