// embedding: out[t, :] = f32(table[ids[t], :]). Rows are converted from their stored dtype.
#include "ops/embedding.h"

#include "core/error.h"

namespace dseek::ops {

Tensor embedding(const Tensor& table, const std::vector<int32_t>& ids) {
  DSEEK_CHECK(table.defined() && table.dim() == 2, "[embedding] table must be [V, D], got {}",
              table.defined() ? shape_str(table.shape()) : std::string("undefined"));
  const DType dt = table.dtype();
  DSEEK_CHECK(dt == DType::F32 || dt == DType::BF16 || dt == DType::F16 || dt == DType::F8_E4M3,
              "[embedding] table dtype {} not supported", dtype_name(dt));
  const int64_t V = table.size(0), D = table.size(1);
  for (size_t t = 0; t < ids.size(); ++t)
    DSEEK_CHECK(ids[t] >= 0 && ids[t] < V,
                "[embedding] token id {} at position {} is outside [0, {})", ids[t], t, V);
  const Tensor tc = table.is_contiguous() ? table : table.contiguous();
  Tensor out = Tensor::empty({int64_t(ids.size()), D}, DType::F32);
  const char* base = static_cast<const char*>(tc.raw());
  const size_t row_bytes = size_t(D) * dtype_size(dt);
  for (size_t t = 0; t < ids.size(); ++t)
    convert_to_f32(base + size_t(ids[t]) * row_bytes, dt, out.data<float>() + t * size_t(D),
                   size_t(D));
  return out;
}

}  // namespace dseek::ops
