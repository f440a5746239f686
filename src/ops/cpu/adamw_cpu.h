// Raw-pointer CPU kernels of the optimizer ops (ops/adamw.h has the maths). f32 contiguous arrays
// of n elements; large arrays are split over OpenMP threads with a static schedule, so results do
// not depend on the thread count except for the order of sum_of_squares' partial sums.
#pragma once

#include <cstdint>

#include "ops/adamw.h"

namespace dseek::ops::cpu {

// One AdamW step of n elements with the step's scalars and this tensor's decay factor, on the
// gradient times grad_scale (one f32 multiply, as scale_inplace would have done; 1 is exact).
void adamw_update(const AdamWStep& s, float decay_factor, float* value, const float* grad, float* m,
                  float* v, int64_t n, float grad_scale = 1.0f);
// The same step with bf16 moments (optim.moment_dtype bf16): m and v are read as f32, updated in
// f32 exactly as above (the value update uses the f32 results), and stored rounded to nearest even.
void adamw_update_bf16_moments(const AdamWStep& s, float decay_factor, float* value,
                               const float* grad, uint16_t* m, uint16_t* v, int64_t n,
                               float grad_scale = 1.0f);
// Σ x[k]² in double.
double sum_of_squares(const float* x, int64_t n);
void scale_inplace(float* x, int64_t n, float scale);

}  // namespace dseek::ops::cpu
