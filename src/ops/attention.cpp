#include "ops/attention.h"

#include <string>

#include "core/error.h"
#include "ops/cpu/cpu_ops.h"

namespace dseek::ops {

namespace {

// Checks q, k, v and fills the kernel arguments (out left null).
cpu::AttentionArgs attention_args(const Tensor& q, const Tensor& k, const Tensor& v, float scale) {
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
  return cpu::AttentionArgs{q.data<float>(),
                            q.strides()[0],
                            q.strides()[1],
                            k.data<float>(),
                            k.strides()[0],
                            k.strides()[1],
                            v.data<float>(),
                            v.strides()[0],
                            v.strides()[1],
                            nullptr,
                            T,
                            S,
                            H,
                            Hk,
                            dk,
                            dv,
                            scale};
}

}  // namespace

Tensor causal_attention(const Tensor& q, const Tensor& k, const Tensor& v, float scale) {
  cpu::AttentionArgs a = attention_args(q, k, v, scale);
  Tensor out = Tensor::empty({a.T, a.H, a.dv}, DType::F32);
  if (out.numel() == 0) return out;
  a.out = out.data<float>();
  cpu::causal_attention(a);
  return out;
}

AttentionGrads causal_attention_backward(const Tensor& q, const Tensor& k, const Tensor& v,
                                         float scale, const Tensor& dout) {
  const cpu::AttentionArgs a = attention_args(q, k, v, scale);
  DSEEK_CHECK(
      dout.defined() && dout.dtype() == DType::F32 && dout.shape() == Shape({a.T, a.H, a.dv}),
      "[attention] dout must be f32 [{}, {}, {}], got {}", a.T, a.H, a.dv,
      dout.defined() ? shape_str(dout.shape()) : std::string("undefined"));
  AttentionGrads g{Tensor::zeros(q.shape(), DType::F32), Tensor::zeros(k.shape(), DType::F32),
                   Tensor::zeros(v.shape(), DType::F32)};
  if (a.T == 0 || a.H == 0) return g;
  const Tensor dc = dout.is_contiguous() ? dout : dout.contiguous();
  cpu::causal_attention_backward(cpu::AttentionGradArgs{a, dc.data<float>(), g.dq.data<float>(),
                                                        g.dk.data<float>(), g.dv.data<float>()});
  return g;
}

}  // namespace dseek::ops
