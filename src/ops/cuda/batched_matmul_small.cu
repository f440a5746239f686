// batched_matmul for short sums (see batched_matmul_small.h).
#include <algorithm>

#include "core/cuda.h"
#include "core/cuda/cuda_check.h"
#include "ops/cuda/batched_matmul_small.h"
#include "ops/cuda/element.cuh"

namespace dseek::ops::cuda {

using dseek::cuda::ceil_div;
using dseek::cuda::stream;

namespace {

constexpr int kThreads = 256;

struct View {
  int64_t batch, row, col;
};

// One thread per element of C, laid out without divisions (64-bit ones per element cost more
// than the loads: 60 µs for 8M elements in the first version): x runs along C's unit-stride dim
// (`inner`: rows when rows_inner, else columns), so consecutive threads write — and, for the
// operand sharing that dim, read — consecutive addresses; a block holds `rows_per` lines of
// `lanes` threads when that dim is short; grid y walks the other dim, grid z the batch.
template <typename T>
__global__ void small_k_kernel(const T* a, View sa, const T* b, View sb, T* c, View sc,
                               int64_t batch, int64_t m, int64_t n, int64_t k, bool rows_inner,
                               int lanes, int rows_per) {
  const int64_t inner = rows_inner ? m : n, outer = rows_inner ? n : m;
  const int sub = int(threadIdx.x) / lanes;
  const int64_t x = int64_t(blockIdx.x) * lanes + int(threadIdx.x) % lanes;
  if (x >= inner || sub >= rows_per) return;
  for (int64_t bi = blockIdx.z; bi < batch; bi += gridDim.z)
    for (int64_t o = int64_t(blockIdx.y) * rows_per + sub; o < outer;
         o += int64_t(gridDim.y) * rows_per) {
      const int64_t i = rows_inner ? x : o, j = rows_inner ? o : x;
      const T* ap = a + bi * sa.batch + i * sa.row;
      const T* bp = b + bi * sb.batch + j * sb.row;
      float s = 0.0f;
      for (int64_t q = 0; q < k; ++q) s += to_f32(ap[q * sa.col]) * to_f32(bp[q * sb.col]);
      c[bi * sc.batch + i * sc.row + j * sc.col] = from_f32<T>(s);
    }
}

}  // namespace

void batched_matmul_small_k(const void* a, int64_t a_batch, int64_t a_row, int64_t a_col,
                            const void* b, int64_t b_batch, int64_t b_row, int64_t b_col, void* c,
                            int64_t c_batch, int64_t c_row, int64_t c_col, int64_t batch, int64_t m,
                            int64_t n, int64_t k, DType act) {
  const int64_t total = batch * m * n;
  if (total == 0) return;
  const View sa{a_batch, a_row, a_col}, sb{b_batch, b_row, b_col}, sc{c_batch, c_row, c_col};
  const bool rows_inner = c_col != 1;
  const int64_t inner = rows_inner ? m : n, outer = rows_inner ? n : m;
  const int lanes = int(std::min<int64_t>(inner, kThreads)), rows_per = kThreads / lanes;
  const dim3 grid(unsigned(ceil_div<int64_t>(inner, lanes)),
                  unsigned(std::min<int64_t>(ceil_div<int64_t>(outer, rows_per), 65535)),
                  unsigned(std::min<int64_t>(batch, 65535)));
  DSEEK_DISPATCH_ACT(act, T_,
                     small_k_kernel<T_><<<grid, kThreads, 0, stream()>>>(
                         static_cast<const T_*>(a), sa, static_cast<const T_*>(b), sb,
                         static_cast<T_*>(c), sc, batch, m, n, k, rows_inner, lanes, rows_per));
  DSEEK_CUDA_CHECK_LAUNCH("batched_matmul small_k_kernel");
}

}  // namespace dseek::ops::cuda
