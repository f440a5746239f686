// batched_matmul, CPU: one OpenBLAS sgemm per (batch, block of C's rows), in an OpenMP team
// (OpenBLAS runs single-threaded inside it, as in linear_backward.cpp), so every element is one
// sgemm's dot product whatever the thread count.
#include <cblas.h>
#include <omp.h>

#include <algorithm>
#include <climits>

#include "core/error.h"
#include "ops/cpu/batched_matmul_cpu.h"
#include "ops/cpu/cpu_ops.h"

namespace dseek::ops::cpu {

void batched_matmul(const float* a, MatrixStrides sa, const float* b, MatrixStrides sb, float* c,
                    MatrixStrides sc, int64_t batch, int64_t m, int64_t n, int64_t k) {
  if (sc.col != 1) {  // C column-major: compute Cᵀ = B·Aᵀ, row-major
    batched_matmul(b, sb, a, sa, c, MatrixStrides{sc.batch, sc.col, sc.row}, batch, n, m, k);
    return;
  }
  for (int64_t s : {sa.row, sa.col, sb.row, sb.col, sc.row})
    DSEEK_CHECK(s < INT_MAX, "[batched_matmul] leading dimension {} over OpenBLAS's int", s);
  // Row-major C_b [m, n] (ld sc.row) = A_b [m, k] · B_bᵀ [k, n].
  const bool a_trans = sa.col != 1;  // A stored [k, m]
  const int lda = int(a_trans ? sa.col : sa.row);
  const bool b_trans = sb.col == 1;  // B stored [n, k]: op(B) = its transpose
  const int ldb = int(b_trans ? sb.row : sb.col);
  const int64_t a_step = a_trans ? 1 : sa.row;  // a row of C is a row (or column) of A
  use_single_threaded_blas();
  const int64_t threads = std::max(1, omp_get_max_threads());
  const int64_t blocks = std::clamp<int64_t>((threads + batch - 1) / batch, 1,
                                             std::max<int64_t>(1, m / 16));
  const int64_t rows = (m + blocks - 1) / blocks;
  const int64_t tasks = batch * blocks;
  // OpenBLAS's small-matrix kernels compute beta·C literally (a NaN in C would survive beta 0,
  // see linear_backward.cpp): clear each block's rows first.
#pragma omp parallel for schedule(static) if (tasks > 1 && m * n * k * batch >= (1 << 18))
  for (int64_t task = 0; task < tasks; ++task) {
    const int64_t bi = task / blocks, i0 = (task % blocks) * rows;
    const int64_t mb = std::min(rows, m - i0);
    if (mb <= 0) continue;
    float* cb = c + bi * sc.batch + i0 * sc.row;
    for (int64_t i = 0; i < mb; ++i) std::fill_n(cb + i * sc.row, n, 0.0f);
    cblas_sgemm(CblasRowMajor, a_trans ? CblasTrans : CblasNoTrans,
                b_trans ? CblasTrans : CblasNoTrans, int(mb), int(n), int(k), 1.0f,
                a + bi * sa.batch + i0 * a_step, lda, b + bi * sb.batch, ldb, 0.0f, cb,
                int(sc.row));
  }
}

}  // namespace dseek::ops::cpu
