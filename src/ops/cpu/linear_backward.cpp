// linear backward, CPU. y = x·Wᵀ, so ∂L/∂x = ∂L/∂y · W and ∂L/∂W = (∂L/∂y)ᵀ · x: two OpenBLAS
// sgemms (f32 accumulation). dx reads a bf16/f16 W in converted blocks of rows (~4 MiB of f32),
// each block adding dy[:, block]·W[block, :]; dW needs no conversion (dy and x are f32). Kept apart
// from linear.cpp (the forward's GEMV/GEMM kernels) so each file stays one concern.
// Threading: like the forward, OpenBLAS runs single-threaded inside an OpenMP team (its own
// workers would fight the team for the cores); dx is split into blocks of token rows and dW into
// blocks of output rows, one sgemm per block, so every element is still one sgemm's dot product.
#include <cblas.h>
#include <omp.h>

#include <algorithm>
#include <vector>

#include "ops/cpu/cpu_ops.h"

namespace dseek::ops::cpu {
namespace {

// Splits [0, n) into about one block per thread, each at least `min_block` long.
int64_t block_size(int64_t n, int64_t min_block) {
  const int64_t threads = std::max(1, omp_get_max_threads());
  return std::max(min_block, (n + threads - 1) / threads);
}

// dx[T, in] (beta·dx +) = dy[T, k] · W[k, in] for f32 W (dy rows `ldy` apart), in blocks of
// token rows.
void dx_f32(const float* dy, int64_t ldy, int64_t T, int64_t k, const float* w, int64_t ldw,
            int64_t in, float* dx, float beta) {
  const int64_t rows = block_size(T, 16);
  const int64_t n_blocks = (T + rows - 1) / rows;
#pragma omp parallel for schedule(static) if (n_blocks > 1 && T * k * in >= (1 << 18))
  for (int64_t b = 0; b < n_blocks; ++b) {
    const int64_t t0 = b * rows, n = std::min(rows, T - t0);
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, int(n), int(in), int(k), 1.0f,
                dy + t0 * ldy, int(ldy), w, int(ldw), beta, dx + t0 * in, int(in));
  }
}

}  // namespace

void linear_backward_dx(const float* dy, int64_t T, int64_t out, const void* w, DType w_dtype,
                        int64_t ldw, int64_t in, float* dx, float beta) {
  // OpenBLAS's small-matrix kernels compute beta·C literally, so a NaN-poisoned C would survive
  // beta = 0: clear it instead.
  if (beta == 0.0f) std::fill_n(dx, T * in, 0.0f);
  use_single_threaded_blas();
  if (w_dtype == DType::F32) {
    dx_f32(dy, out, T, out, static_cast<const float*>(w), ldw, in, dx, beta);
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
    dx_f32(dy + o0, out, T, n, buf.data(), in, in, dx, o0 == 0 ? beta : 1.0f);
  }
}

void linear_backward_dw(const float* dy, const float* x, int64_t T, int64_t out, int64_t in,
                        float* dw, float beta) {
  if (beta == 0.0f) std::fill_n(dw, out * in, 0.0f);  // see linear_backward_dx
  use_single_threaded_blas();
  // dW[o0:o1] = dy[:, o0:o1]ᵀ · x, in blocks of output rows.
  const int64_t rows = block_size(out, 16);
  const int64_t n_blocks = (out + rows - 1) / rows;
#pragma omp parallel for schedule(static) if (n_blocks > 1 && T * out * in >= (1 << 18))
  for (int64_t b = 0; b < n_blocks; ++b) {
    const int64_t o0 = b * rows, n = std::min(rows, out - o0);
    cblas_sgemm(CblasRowMajor, CblasTrans, CblasNoTrans, int(n), int(in), int(T), 1.0f, dy + o0,
                int(out), x, int(in), beta, dw + o0 * in, int(in));
  }
}

}  // namespace dseek::ops::cpu
