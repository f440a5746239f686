// linear backward, CPU. y = x·Wᵀ, so ∂L/∂x = ∂L/∂y · W and ∂L/∂W = (∂L/∂y)ᵀ · x: two OpenBLAS
// sgemms (f32 accumulation). dx reads a bf16/f16 W in converted blocks of rows (~4 MiB of f32),
// each block adding dy[:, block]·W[block, :]; dW needs no conversion (dy and x are f32). Kept apart
// from linear.cpp (the forward's GEMV/GEMM kernels) so each file stays one concern.
#include <cblas.h>

#include <algorithm>
#include <vector>

#include "ops/cpu/cpu_ops.h"

namespace dseek::ops::cpu {

void linear_backward_dx(const float* dy, int64_t T, int64_t out, const void* w, DType w_dtype,
                        int64_t ldw, int64_t in, float* dx, float beta) {
  // OpenBLAS's small-matrix kernels compute beta·C literally, so a NaN-poisoned C would survive
  // beta = 0: clear it instead.
  if (beta == 0.0f) std::fill_n(dx, T * in, 0.0f);
  if (w_dtype == DType::F32) {
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, int(T), int(in), int(out), 1.0f, dy,
                int(out), static_cast<const float*>(w), int(ldw), beta, dx, int(in));
    return;
  }
  const int64_t rows = std::max<int64_t>(64, (int64_t(1) << 20) / std::max<int64_t>(in, 1));
  std::vector<float> buf(size_t(std::min(rows, out) * in));
  const size_t esize = dtype_size(w_dtype);
  for (int64_t o0 = 0; o0 < out; o0 += rows) {
    const int64_t n = std::min(rows, out - o0);
#pragma omp parallel for schedule(static)
    for (int64_t r = 0; r < n; ++r) {
      convert_to_f32(static_cast<const char*>(w) + size_t((o0 + r) * ldw) * esize, w_dtype,
                     buf.data() + r * in, size_t(in));
    }
    // The first block applies the caller's beta; later blocks add to it.
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, int(T), int(in), int(n), 1.0f, dy + o0,
                int(out), buf.data(), int(in), o0 == 0 ? beta : 1.0f, dx, int(in));
  }
}

void linear_backward_dw(const float* dy, const float* x, int64_t T, int64_t out, int64_t in,
                        float* dw, float beta) {
  if (beta == 0.0f) std::fill_n(dw, out * in, 0.0f);  // see linear_backward_dx
  cblas_sgemm(CblasRowMajor, CblasTrans, CblasNoTrans, int(out), int(in), int(T), 1.0f, dy,
              int(out), x, int(in), beta, dw, int(in));
}

}  // namespace dseek::ops::cpu
