// Flash-decoding's join of key splits, shared by the attention forward (attention_forward.cuh)
// and the absorbed MLA decode (mla_decode.cu): each split i of a row leaves its running max m_i,
// its sum l_i = Σ e^(s − m_i) and its unnormalised output acc_i (f32, split-major: split i of row
// `row` at [i·rows + row]). The row's softmax is then M = max_i m_i, L = Σ_i l_i e^(m_i − M),
// out = Σ_i acc_i e^(m_i − M) / L; a split that saw no key (m = −inf) weighs 0.
#pragma once

#include <cstdint>

namespace dseek::ops::cuda {

struct SplitTotals {
  float max;  // M
  float sum;  // L
};

// part_ml: (m_i, l_i) pairs of `rows` rows per split.
__device__ __forceinline__ SplitTotals split_totals(const float* part_ml, int n_splits,
                                                    int64_t rows, int64_t row) {
  float M = -INFINITY;
  for (int i = 0; i < n_splits; ++i) M = fmaxf(M, part_ml[2 * (i * rows + row)]);
  float L = 0.0f;
  for (int i = 0; i < n_splits; ++i) {
    const float* ml = part_ml + 2 * (i * rows + row);
    L += ml[0] == -INFINITY ? 0.0f : ml[1] * expf(ml[0] - M);
  }
  return {M, L};
}

// Σ_i acc_i[d] e^(m_i − M) (not yet divided by L); part_acc rows are `width` wide.
__device__ __forceinline__ float split_weighted_sum(const float* part_ml, const float* part_acc,
                                                    int n_splits, int64_t rows, int64_t row,
                                                    int64_t width, int64_t d, float M) {
  float y = 0.0f;
  for (int i = 0; i < n_splits; ++i) {
    const float mi = part_ml[2 * (i * rows + row)];
    if (mi != -INFINITY) y += part_acc[(i * rows + row) * width + d] * expf(mi - M);
  }
  return y;
}

}  // namespace dseek::ops::cuda
