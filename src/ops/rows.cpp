#include "ops/rows.h"

#include <cstring>
#include <vector>

#include "core/error.h"
#include "ops/cuda/cuda_ops.h"
#include "ops/device.h"

namespace dseek::ops {

void scatter_rows(const Tensor& dst, const Tensor& src, const Tensor& rows) {
  DSEEK_CHECK(dst.defined() && src.defined() && rows.defined(), "[scatter_rows] undefined tensor");
  DSEEK_CHECK(dst.dim() == 2 && src.dim() == 2 && src.size(1) == dst.size(1),
              "[scatter_rows] dst [R, W] and src [N, W] needed, got {} and {}",
              shape_str(dst.shape()), shape_str(src.shape()));
  DSEEK_CHECK(rows.dtype() == DType::I64 && rows.dim() == 1 && rows.size(0) == src.size(0) &&
                  rows.is_contiguous(),
              "[scatter_rows] rows must be contiguous i64 [{}], got {} {}", src.size(0),
              dtype_name(rows.dtype()), shape_str(rows.shape()));
  DSEEK_CHECK(dst.device() == src.device() && dst.device() == rows.device(),
              "[scatter_rows] dst on the {}, src on the {}, rows on the {}",
              device_name(dst.device()), device_name(src.device()), device_name(rows.device()));
  DSEEK_CHECK(dst.strides()[1] == 1 || dst.size(1) <= 1,
              "[scatter_rows] dst's last dimension must be contiguous");
  const int64_t N = src.size(0), W = src.size(1), R = dst.size(0);
  if (N == 0 || W == 0) return;
  Tensor s = src.dtype() == dst.dtype() ? src : src.to(dst.dtype());
  if (!s.is_contiguous()) s = s.contiguous();
  const size_t row_bytes = size_t(W) * dtype_size(dst.dtype());
  const size_t dst_stride_bytes = size_t(dst.strides()[0]) * dtype_size(dst.dtype());
  if (dst.is_cuda()) {
#ifdef DSEEK_HAS_CUDA
    cuda::scatter_rows(dst.raw(), dst_stride_bytes, s.raw(), rows.data<int64_t>(), N, row_bytes);
    return;
#else
    cuda_not_built("scatter_rows");
#endif
  }
  const int64_t* idx = rows.data<int64_t>();
  std::vector<bool> seen(size_t(R), false);
  for (int64_t i = 0; i < N; ++i) {
    DSEEK_CHECK(idx[i] >= 0 && idx[i] < R, "[scatter_rows] rows[{}] = {} outside [0, {})", i,
                idx[i], R);
    DSEEK_CHECK(!seen[size_t(idx[i])], "[scatter_rows] rows[{}] = {} is written twice", i, idx[i]);
    seen[size_t(idx[i])] = true;
  }
  char* d = static_cast<char*>(dst.raw());
  const char* from = static_cast<const char*>(s.raw());
  for (int64_t i = 0; i < N; ++i)
    std::memcpy(d + size_t(idx[i]) * dst_stride_bytes, from + size_t(i) * row_bytes, row_bytes);
}

}  // namespace dseek::ops
