#include "ops/attention.h"

#include "core/error.h"
#include "ops/cpu/cpu_ops.h"

namespace dseek::ops {

Tensor causal_attention(const Tensor& q, const Tensor& k, const Tensor& v, float scale) {
  DSEEK_CHECK(q.defined() && k.defined() && v.defined(), "[attention] undefined input");
  DSEEK_CHECK(q.dtype() == DType::F32 && k.dtype() == DType::F32 && v.dtype() == DType::F32,
              "[attention] q, k, v must be f32");
  DSEEK_CHECK(q.dim() == 3 && k.dim() == 3 && v.dim() == 3,
              "[attention] q, k, v must be [T, H, d], got {}, {}, {}", shape_str(q.shape()),
              shape_str(k.shape()), shape_str(v.shape()));
  const int64_t T = q.size(0), H = q.size(1), dk = q.size(2);
  const int64_t S = k.size(0), Hk = k.size(1), dv = v.size(2);
  DSEEK_CHECK(k.size(2) == dk && v.size(0) == S && v.size(1) == Hk,
              "[attention] k {} / v {} do not match q {}", shape_str(k.shape()),
              shape_str(v.shape()), shape_str(q.shape()));
  DSEEK_CHECK(Hk > 0 && H % Hk == 0, "[attention] {} query heads not a multiple of {} key heads", H,
              Hk);
  DSEEK_CHECK(S >= T, "[attention] {} queries but only {} keys", T, S);
  for (const Tensor* t : {&q, &k, &v})
    DSEEK_CHECK(t->strides()[2] == 1 || t->size(2) <= 1,
                "[attention] last dimension must be contiguous");
  Tensor out = Tensor::empty({T, H, dv}, DType::F32);
  if (out.numel() == 0) return out;
  cpu::AttentionArgs a{q.data<float>(),
                       q.strides()[0],
                       q.strides()[1],
                       k.data<float>(),
                       k.strides()[0],
                       k.strides()[1],
                       v.data<float>(),
                       v.strides()[0],
                       v.strides()[1],
                       out.data<float>(),
                       T,
                       S,
                       H,
                       Hk,
                       dk,
                       dv,
                       scale};
  cpu::causal_attention(a);
  return out;
}

}  // namespace dseek::ops
