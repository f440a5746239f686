#include "ops/paged_attention.h"

#include <algorithm>
#include <cstring>
#include <vector>

#include "core/cuda.h"
#include "core/error.h"
#include "ops/cpu/cpu_ops.h"
#include "ops/cuda/cuda_ops.h"
#include "ops/device.h"

namespace dseek::ops {

Tensor paged_attention(const Tensor& q, const Tensor& keys, const Tensor& values, int64_t kv_heads,
                       int64_t page_tokens, std::span<const PagedAttentionSeq> seqs, float scale) {
  DSEEK_CHECK(q.defined() && keys.defined() && values.defined(),
              "[paged_attention] undefined input");
  const Device device = op_device("paged_attention", {&q, &keys, &values});
  const DType act = activation_dtype("paged_attention", q);
  DSEEK_CHECK(keys.dtype() == act && values.dtype() == act,
              "[paged_attention] q, keys, values must be {}{}, got {}, {}", dtype_name(act),
              device == Device::CUDA ? " alike" : "", dtype_name(keys.dtype()),
              dtype_name(values.dtype()));
  DSEEK_CHECK(q.dim() == 3 && keys.dim() == 2 && values.dim() == 2,
              "[paged_attention] q must be [T, H, d] and keys, values [rows, width], got {}, {}, {}",
              shape_str(q.shape()), shape_str(keys.shape()), shape_str(values.shape()));
  const int64_t rows_total = q.size(0), H = q.size(1), dk = q.size(2), Hk = kv_heads;
  DSEEK_CHECK(Hk > 0 && H % Hk == 0,
              "[paged_attention] {} query heads not a multiple of {} key heads", H, Hk);
  DSEEK_CHECK(keys.size(1) == Hk * dk, "[paged_attention] key rows of {} values, expected {}·{}",
              keys.size(1), Hk, dk);
  DSEEK_CHECK(values.size(1) % Hk == 0 && values.size(1) > 0,
              "[paged_attention] value rows of {} values do not split into {} heads",
              values.size(1), Hk);
  const int64_t dv = values.size(1) / Hk;
  DSEEK_CHECK(page_tokens > 0 && keys.size(0) == values.size(0) && keys.size(0) % page_tokens == 0,
              "[paged_attention] pools of {} / {} rows are not whole pages of {}", keys.size(0),
              values.size(0), page_tokens);
  for (const Tensor* t : {&q, &keys, &values})
    DSEEK_CHECK(t->strides()[t->dim() - 1] == 1 || t->size(t->dim() - 1) <= 1,
                "[paged_attention] last dimension must be contiguous");
  const int64_t num_pages = keys.size(0) / page_tokens;

  std::vector<int64_t> q_start(1, 0), pos0, page_start(1, 0);
  std::vector<int32_t> page_table;
  for (size_t i = 0; i < seqs.size(); ++i) {
    const PagedAttentionSeq& s = seqs[i];
    DSEEK_CHECK(s.T >= 0 && s.pos0 >= 0, "[paged_attention] sequence {}: T {} at position {}", i,
                s.T, s.pos0);
    const int64_t used = (s.pos0 + s.T + page_tokens - 1) / page_tokens;
    DSEEK_CHECK(int64_t(s.pages.size()) >= used,
                "[paged_attention] sequence {}: {} pages do not cover {} positions", i,
                s.pages.size(), s.pos0 + s.T);
    for (int64_t p = 0; p < used; ++p)
      DSEEK_CHECK(s.pages[size_t(p)] >= 0 && s.pages[size_t(p)] < num_pages,
                  "[paged_attention] sequence {}: page {} outside [0, {})", i, s.pages[size_t(p)],
                  num_pages);
    page_table.insert(page_table.end(), s.pages.begin(), s.pages.begin() + used);
    q_start.push_back(q_start.back() + s.T);
    pos0.push_back(s.pos0);
    page_start.push_back(int64_t(page_table.size()));
  }
  DSEEK_CHECK(q_start.back() == rows_total, "[paged_attention] sequences bring {} queries, q has {}",
              q_start.back(), rows_total);

  Tensor out = Tensor::empty({rows_total, H, dv}, act, device);
  if (out.numel() == 0) return out;
  if (device == Device::CUDA) {
#ifdef DSEEK_HAS_CUDA
    // The sequence bounds and page tables travel to the device with every call, packed into one
    // buffer so that a call costs one copy: q_start | pos0 | page_start (i64), page_table (i32).
    int64_t max_T = 0, max_S = 0;
    for (const PagedAttentionSeq& s : seqs) {
      max_T = std::max(max_T, s.T);
      max_S = std::max(max_S, s.pos0 + s.T);
    }
    const size_t n_i64 = q_start.size() + pos0.size() + page_start.size();
    std::vector<int64_t> packed(n_i64 + (page_table.size() + 1) / 2);
    std::copy(q_start.begin(), q_start.end(), packed.begin());
    std::copy(pos0.begin(), pos0.end(), packed.begin() + ptrdiff_t(q_start.size()));
    std::copy(page_start.begin(), page_start.end(),
              packed.begin() + ptrdiff_t(q_start.size() + pos0.size()));
    std::memcpy(packed.data() + n_i64, page_table.data(), page_table.size() * sizeof(int32_t));
    const Tensor dev = Tensor::empty({int64_t(packed.size())}, DType::I64, Device::CUDA);
    dseek::cuda::copy_to_device(dev.raw(), packed.data(), packed.size() * sizeof(int64_t));
    const int64_t* d = dev.data<int64_t>();
    ops::cuda::paged_attention(
        ops::cuda::PagedAttentionArgs{
            q.raw(), q.strides()[0], q.strides()[1], keys.raw(), keys.strides()[0], values.raw(),
            values.strides()[0], out.raw(), H, Hk, dk, dv, page_tokens, scale,
            int64_t(seqs.size()), rows_total, max_T, max_S, d, d + q_start.size(),
            reinterpret_cast<const int32_t*>(d + n_i64), d + q_start.size() + pos0.size()},
        act);
    return out;
#else
    cuda_not_built("paged_attention");
#endif
  }
  cpu::paged_attention(cpu::PagedAttentionArgs{
      q.data<float>(), q.strides()[0], q.strides()[1], keys.data<float>(), keys.strides()[0],
      values.data<float>(), values.strides()[0], out.data<float>(), H, Hk, dk, dv, page_tokens,
      scale, int64_t(seqs.size()), q_start.data(), pos0.data(), page_table.data(),
      page_start.data()});
  return out;
}

}  // namespace dseek::ops
