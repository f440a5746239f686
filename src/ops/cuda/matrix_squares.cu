// Sums of squares of f32 matrices into one double on the device: the gradient norm's share of
// the experts' weight gradients (ops::grouped_linear_backward_dw's `squares`). The wgrad kernels
// that can add up the values they store do so into SquarePartials' slots; the others leave it to
// matrices_sum_of_squares, which reads the matrices again. Either way the partial sums are added
// in a fixed order (sum_partials), so the result does not depend on timing.
#include <algorithm>
#include <climits>

#include "core/cuda.h"
#include "core/cuda/cuda_check.h"
#include "core/error.h"
#include "ops/cuda/cuda_ops.h"
#include "ops/cuda/reduce.cuh"

namespace dseek::ops::cuda {

using dseek::cuda::ceil_div;
using dseek::cuda::stream;

namespace {

constexpr int kThreads = 256;
constexpr int64_t kValuesPerBlock = 65536;

// Block (s, e): Σ v² over rows [s·strip, (s + 1)·strip) of matrix e, into partial[e·gridDim.x + s].
__global__ void __launch_bounds__(kThreads)
    matrices_squares_kernel(float* const* m, int64_t rows, int64_t cols, int64_t strip,
                            double* partial) {
  __shared__ double scratch[32];
  const float* a = m[blockIdx.y];
  const int64_t r0 = int64_t(blockIdx.x) * strip, r1 = min(rows, r0 + strip);
  double sum = 0.0;
  for (int64_t i = r0 * cols + threadIdx.x; i < r1 * cols; i += blockDim.x) {
    const double v = a[i];
    sum += v * v;
  }
  sum = block_sum(sum, scratch);
  if (threadIdx.x == 0) partial[int64_t(blockIdx.y) * gridDim.x + blockIdx.x] = sum;
}

}  // namespace

SquarePartials::SquarePartials(int64_t slots) : slots_(std::max<int64_t>(slots, 1)) {
  data_ = static_cast<double*>(dseek::cuda::alloc(size_t(slots_) * sizeof(double)));
}

SquarePartials::~SquarePartials() {
  dseek::cuda::free(data_);  // stream-ordered: after the kernels that use it
}

void SquarePartials::finish(double* out) {
  sum_partials(data_, slots_, out);
}

void matrices_sum_of_squares(float* const* m, int64_t E, int64_t rows, int64_t cols, double* out) {
  if (E == 0 || rows == 0 || cols == 0) {
    dseek::cuda::fill_bytes(out, 0, sizeof(double));  // all-zero bytes are +0.0
    return;
  }
  const int64_t strip = std::max<int64_t>(1, kValuesPerBlock / cols);
  const int64_t strips = ceil_div(rows, strip);
  DSEEK_CHECK(strips <= INT_MAX && E <= 65535,
              "[sum_of_squares] {} matrices × [{}, {}] exceed the grid", E, rows, cols);
  SquarePartials partial(strips * E);
  matrices_squares_kernel<<<dim3(unsigned(strips), unsigned(E)), kThreads, 0, stream()>>>(
      m, rows, cols, strip, partial.data());
  DSEEK_CUDA_CHECK_LAUNCH("matrices_squares_kernel");
  partial.finish(out);
}

}  // namespace dseek::ops::cuda
