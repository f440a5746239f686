#include "ops/batched_matmul.h"

#include <algorithm>
#include <array>
#include <climits>

#include "core/error.h"
#include "ops/cpu/batched_matmul_cpu.h"
#include "ops/device.h"
#ifdef DSEEK_HAS_CUDA
#include "ops/cuda/batched_matmul.h"
#endif

namespace dseek::ops {

bool gemm_view(MatrixStrides& s, int64_t batch, int64_t rows, int64_t cols) {
  if (batch <= 1) s.batch = 0;
  // An extent-1 dim is never stepped: give it the stride that makes the other dim's stride the
  // leading dimension (or the unit one, when the other is already 1).
  if (rows == 1) s.row = s.col == 1 ? std::max<int64_t>(cols, 1) : 1;
  if (cols == 1) s.col = s.row == 1 ? std::max<int64_t>(rows, 1) : 1;
  if (s.col == 1) return s.row >= std::max<int64_t>(cols, 1);
  if (s.row == 1) return s.col >= std::max<int64_t>(rows, 1);
  return false;
}

namespace {

// The largest element offset a view reaches (extents >= 1).
int64_t reach(MatrixStrides s, int64_t batch, int64_t rows, int64_t cols) {
  return (batch - 1) * s.batch + (rows - 1) * s.row + (cols - 1) * s.col;
}

// Every element of the view is a different one: sorted by stride, each stride steps past all
// the elements the smaller ones reach (a sufficient condition, exact for the layouts used).
bool injective(MatrixStrides s, int64_t batch, int64_t rows, int64_t cols) {
  std::array<std::pair<int64_t, int64_t>, 3> dims{
      {{s.batch, batch}, {s.row, rows}, {s.col, cols}}};
  std::sort(dims.begin(), dims.end());
  int64_t span = 1;  // elements the smaller dims reach, plus one
  for (const auto& [stride, extent] : dims) {
    if (extent == 1) continue;
    if (stride < span) return false;
    span = stride * (extent - 1) + span;
  }
  return true;
}

}  // namespace

void batched_matmul(const Tensor& a, MatrixStrides sa, const Tensor& b, MatrixStrides sb,
                    const Tensor& c, MatrixStrides sc, int64_t batch, int64_t m, int64_t n,
                    int64_t k) {
  DSEEK_CHECK(a.defined() && b.defined() && c.defined(), "[batched_matmul] undefined tensor");
  const Device device = op_device("batched_matmul", {&a, &b, &c});
  const DType act = c.dtype();
  DSEEK_CHECK(a.dtype() == act && b.dtype() == act,
              "[batched_matmul] a {}, b {}, c {}: one dtype for all three", dtype_name(a.dtype()),
              dtype_name(b.dtype()), dtype_name(act));
  DSEEK_CHECK(act == DType::F32 || (device == Device::CUDA && act == DType::BF16),
              "[batched_matmul] dtype {} on {} (f32, or bf16 on CUDA)", dtype_name(act),
              device_name(device));
  DSEEK_CHECK(a.is_contiguous() && b.is_contiguous() && c.is_contiguous(),
              "[batched_matmul] tensors must be contiguous (the strides describe the views)");
  DSEEK_CHECK(batch >= 0 && m >= 0 && n >= 0 && k >= 0 && batch <= INT32_MAX,
              "[batched_matmul] batch {} m {} n {} k {}: non-negative, batch at most 2^31-1",
              batch, m, n, k);
  DSEEK_CHECK(c.numel() == batch * m * n,
              "[batched_matmul] c has {} elements, the product {} x {} x {}", c.numel(), batch, m,
              n);
  if (c.numel() == 0) return;
  DSEEK_CHECK(gemm_view(sc, batch, m, n) && injective(sc, batch, m, n) &&
                  reach(sc, batch, m, n) < c.numel(),
              "[batched_matmul] c strides ({}, {}, {}) over [{}, {}, {}]: not a GEMM output "
              "covering c once",
              sc.batch, sc.row, sc.col, batch, m, n);
  if (k == 0) {  // an empty sum
    c.copy_from(Tensor::zeros(c.shape(), act, device));
    return;
  }
  DSEEK_CHECK(gemm_view(sa, batch, m, k) && reach(sa, batch, m, k) < a.numel(),
              "[batched_matmul] a strides ({}, {}, {}) over [{}, {}, {}] of {} elements: not a "
              "GEMM operand inside a",
              sa.batch, sa.row, sa.col, batch, m, k, a.numel());
  DSEEK_CHECK(gemm_view(sb, batch, n, k) && reach(sb, batch, n, k) < b.numel(),
              "[batched_matmul] b strides ({}, {}, {}) over [{}, {}, {}] of {} elements: not a "
              "GEMM operand inside b",
              sb.batch, sb.row, sb.col, batch, n, k, b.numel());
  DSEEK_CHECK(m <= INT32_MAX && n <= INT32_MAX && k <= INT32_MAX,
              "[batched_matmul] m {} n {} k {}: a GEMM dimension over 2^31-1", m, n, k);
  if (device == Device::CUDA) {
#ifdef DSEEK_HAS_CUDA
    cuda::batched_matmul(a.raw(), sa, b.raw(), sb, c.raw(), sc, batch, m, n, k, act);
    return;
#else
    cuda_not_built("batched_matmul");
#endif
  }
  cpu::batched_matmul(a.data<float>(), sa, b.data<float>(), sb, c.data<float>(), sc, batch, m, n,
                      k);
}

}  // namespace dseek::ops
