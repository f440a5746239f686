// embedding: out[t, :] = table[ids[t], :], converted from the stored dtype. Backward:
// ∂out[t, :]/∂table[v, :] = [ids[t] == v]·I, so dtable[v] = Σ_{t: ids[t] = v} dy[t]. Rows are added
// in token order (deterministic; on the GPU too, see ops/cuda/embedding.cu).
#include "ops/embedding.h"

#include "core/error.h"
#include "ops/cuda/cuda_ops.h"
#include "ops/device.h"
#include "ops/grad_rows.h"

namespace dseek::ops {

namespace {

void check_ids(const std::vector<int32_t>& ids, int64_t V) {
  for (size_t t = 0; t < ids.size(); ++t)
    DSEEK_CHECK(ids[t] >= 0 && ids[t] < V,
                "[embedding] token id {} at position {} is outside [0, {})", ids[t], t, V);
}

}  // namespace

Tensor embedding(const Tensor& table, const std::vector<int32_t>& ids, DType act) {
  DSEEK_CHECK(table.defined() && table.dim() == 2, "[embedding] table must be [V, D], got {}",
              table.defined() ? shape_str(table.shape()) : std::string("undefined"));
  const DType dt = table.dtype();
  DSEEK_CHECK(dt == DType::F32 || dt == DType::BF16 || dt == DType::F16 || dt == DType::F8_E4M3,
              "[embedding] table dtype {} not supported", dtype_name(dt));
  DSEEK_CHECK(act == DType::F32 || (act == DType::BF16 && table.is_cuda()),
              "[embedding] output dtype {} not supported on {} (f32{})", dtype_name(act),
              device_name(table.device()), table.is_cuda() ? " or bf16" : "");
  const int64_t V = table.size(0), D = table.size(1);
  check_ids(ids, V);
  const Tensor tc = table.is_contiguous() ? table : table.contiguous();
  const int64_t T = int64_t(ids.size());
  Tensor out = Tensor::empty({T, D}, act, table.device());
  if (table.is_cuda()) {
#ifdef DSEEK_HAS_CUDA
    if (out.numel() == 0) return out;
    const Tensor dids = Tensor::from_ids(ids).to(Device::CUDA);
    cuda::embedding(tc.raw(), dt, dids.data<int32_t>(), T, D, out.raw(), act);
    return out;
#else
    cuda_not_built("embedding");
#endif
  }
  const char* base = static_cast<const char*>(tc.raw());
  const size_t row_bytes = size_t(D) * dtype_size(dt);
  for (size_t t = 0; t < ids.size(); ++t)
    convert_to_f32(base + size_t(ids[t]) * row_bytes, dt, out.data<float>() + t * size_t(D),
                   size_t(D));
  return out;
}

void embedding_backward_accumulate(const std::vector<int32_t>& ids, const Tensor& dy,
                                   Tensor& dtable, const Tensor& row_flags) {
  DSEEK_CHECK(dtable.defined() && dtable.dtype() == DType::F32 && dtable.dim() == 2 &&
                  dtable.is_contiguous(),
              "[embedding] gradient table must be f32 contiguous [V, D], got {}",
              dtable.defined() ? shape_str(dtable.shape()) : std::string("undefined"));
  const int64_t V = dtable.size(0), D = dtable.size(1);
  DSEEK_CHECK(dy.defined() && (dy.dtype() == DType::F32 || dy.is_cuda()) &&
                  dy.shape() == Shape({int64_t(ids.size()), D}),
              "[embedding] dy must be f32 (or bf16 on a GPU) [{}, {}], got {}", ids.size(), D,
              dy.defined() ? shape_str(dy.shape()) : std::string("undefined"));
  const Device device = op_device("embedding", {&dy, &dtable});
  [[maybe_unused]] const DType act = activation_dtype("embedding", dy);
  check_ids(ids, V);
  if (row_flags.defined()) check_grad_rows(dtable, row_flags, "embedding gradient");
  const Tensor g = dy.is_contiguous() ? dy : dy.contiguous();
  if (device == Device::CUDA) {
#ifdef DSEEK_HAS_CUDA
    if (ids.empty() || D == 0) return;
    const Tensor dids = Tensor::from_ids(ids).to(Device::CUDA);
    cuda::embedding_backward(dids.data<int32_t>(), int64_t(ids.size()), D, g.raw(), act,
                             dtable.data<float>(), V,
                             row_flags.defined() ? row_flags.data<uint8_t>() : nullptr);
    return;
#else
    cuda_not_built("embedding");
#endif
  }
  const float* src = g.data<float>();
  float* dst = dtable.data<float>();
  uint8_t* flags = row_flags.defined() ? row_flags.data<uint8_t>() : nullptr;
  for (size_t t = 0; t < ids.size(); ++t) {
    if (flags) flags[ids[t]] = 1;
    float* row = dst + size_t(ids[t]) * size_t(D);
    const float* d = src + t * size_t(D);
    for (int64_t i = 0; i < D; ++i) row[i] += d[i];
  }
}

Tensor embedding_device_ids(const Tensor& table, const Tensor& ids, DType act) {
  DSEEK_CHECK(ids.defined() && ids.dtype() == DType::I32 && ids.dim() == 1 &&
                  ids.device() == table.device(),
              "[embedding] ids must be i32 [T] on the table's device, got {} {} on {}",
              ids.defined() ? dtype_name(ids.dtype()) : "undefined",
              ids.defined() ? shape_str(ids.shape()) : "", device_name(ids.device()));
  if (!table.is_cuda()) {
    const int32_t* p = ids.contiguous().data<int32_t>();
    return embedding(table, std::vector<int32_t>(p, p + ids.numel()), act);
  }
#ifdef DSEEK_HAS_CUDA
  DSEEK_CHECK(table.defined() && table.dim() == 2, "[embedding] table must be [V, D], got {}",
              table.defined() ? shape_str(table.shape()) : std::string("undefined"));
  const DType dt = table.dtype();
  DSEEK_CHECK(dt == DType::F32 || dt == DType::BF16 || dt == DType::F16 || dt == DType::F8_E4M3,
              "[embedding] table dtype {} not supported", dtype_name(dt));
  DSEEK_CHECK(act == DType::F32 || act == DType::BF16,
              "[embedding] output dtype {} not supported on cuda (f32 or bf16)", dtype_name(act));
  const Tensor tc = table.is_contiguous() ? table : table.contiguous();
  const Tensor ic = ids.is_contiguous() ? ids : ids.contiguous();
  const int64_t T = ids.numel(), D = table.size(1);
  Tensor out = Tensor::empty({T, D}, act, table.device());
  if (out.numel() == 0) return out;
  cuda::embedding(tc.raw(), dt, ic.data<int32_t>(), T, D, out.raw(), act);
  return out;
#else
  cuda_not_built("embedding");
#endif
}

Tensor embedding_backward(const std::vector<int32_t>& ids, const Tensor& dy, int64_t vocab) {
  DSEEK_CHECK(vocab >= 0 && dy.defined() && dy.dim() == 2,
              "[embedding] dy must be [T, D] and the vocabulary size non-negative");
  Tensor dtable = Tensor::zeros({vocab, dy.size(1)}, DType::F32, dy.device());
  embedding_backward_accumulate(ids, dy, dtable);
  return dtable;
}

}  // namespace dseek::ops
