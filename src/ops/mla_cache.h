// mla_cache_append: the absorbed MLA's cache write for new tokens, in one pass. For token t of
// kv_a = kv_a_proj_with_mqa(x) [T, r + d]:
//   rows[slots[t], :r]      = rms_norm(kv_a[t, :r], weight, eps)             (c_kv, ops/norm.h)
//   rows[slots[t], r:r + d] = RoPE(kv_a[t, r:r + d]) at position positions[t]  (k_pe, ops/rope.h)
// Each value is rounded to kv_a's dtype, as the separate ops' outputs are, then stored in the
// cache's dtype: the same bits as rms_norm, a copy and rope_inplace of k_pe, and two
// ops::scatter_rows. On the GPU it is one kernel instead of five (a decode step pays each launch
// once a layer). kv_a any row stride, last dimension contiguous; weight [r] in any float dtype;
// rows [R, r + d] (a cache layer), last dimension contiguous; positions and slots contiguous i64
// [T] on kv_a's device, slots distinct and in [0, R) (checked on the CPU; on a GPU they come from
// the cache's own bookkeeping).
#pragma once

#include <vector>

#include "core/tensor.h"

namespace dseek::ops {

void mla_cache_append(const Tensor& kv_a, const Tensor& weight, double eps, const Tensor& positions,
                      const std::vector<float>& inv_freq, float scaling, bool interleaved,
                      const Tensor& rows, const Tensor& slots);

// Whether the GPU runs the one kernel (default) or the separate ops (for comparisons: the decode
// benchmark times both in one process, and a test checks that they agree bit for bit).
void set_mla_cache_append_fused(bool on);
bool mla_cache_append_fused();

}  // namespace dseek::ops
