#include "ops/attention.h"

#include <cstdint>
#include <string>
#include <vector>

#include "core/error.h"
#include "ops/cpu/cpu_ops.h"
#include "ops/cuda/cuda_ops.h"
#include "ops/device.h"

namespace dseek::ops {

namespace {

// q, k, v after the checks both backends share: sizes, strides (elements) and raw pointers.
struct Checked {
  Device device;
  DType act;              // f32, or bf16 on the GPU
  cuda::AttentionArgs a;  // out left null
};

Checked attention_args(const Tensor& q, const Tensor& k, const Tensor& v, float scale) {
  DSEEK_CHECK(q.defined() && k.defined() && v.defined(), "[attention] undefined input");
  const Device device = op_device("attention", {&q, &k, &v});
  const DType act = activation_dtype("attention", q);
  DSEEK_CHECK(k.dtype() == act && v.dtype() == act, "[attention] q, k, v must be {}{}, got {}, {}",
              dtype_name(act), device == Device::CUDA ? " alike" : "", dtype_name(k.dtype()),
              dtype_name(v.dtype()));
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
  return Checked{device, act,
                 cuda::AttentionArgs{q.raw(), q.strides()[0], q.strides()[1], k.raw(),
                                     k.strides()[0], k.strides()[1], v.raw(), v.strides()[0],
                                     v.strides()[1], nullptr, T, S, H, Hk, dk, dv, scale}};
}

cpu::AttentionArgs cpu_args(const cuda::AttentionArgs& a) {
  return cpu::AttentionArgs{static_cast<const float*>(a.q),
                            a.q_t,
                            a.q_h,
                            static_cast<const float*>(a.k),
                            a.k_s,
                            a.k_h,
                            static_cast<const float*>(a.v),
                            a.v_s,
                            a.v_h,
                            static_cast<float*>(a.out),
                            a.T,
                            a.S,
                            a.H,
                            a.Hk,
                            a.dk,
                            a.dv,
                            a.scale};
}

// A [rows, heads, d] view whose rows overlap (row stride < d, e.g. an expanded dim): the CPU
// forward's sgemms read rows ld >= d apart (BLAS's rule), so it gets a contiguous copy.
bool rows_overlap(const Tensor& t) {
  return t.defined() && t.dim() == 3 && t.size(0) > 1 && t.strides()[0] < t.size(2);
}

// dout [T, H, dv] in the activation dtype on the inputs' device; returned contiguous.
Tensor checked_dout(const Checked& c, const Tensor& dout) {
  const cuda::AttentionArgs& a = c.a;
  DSEEK_CHECK(dout.defined() && dout.dtype() == c.act && dout.device() == c.device &&
                  dout.shape() == Shape({a.T, a.H, a.dv}),
              "[attention] dout must be {} [{}, {}, {}] on the inputs' device, got {}",
              dtype_name(c.act), a.T, a.H, a.dv,
              dout.defined() ? shape_str(dout.shape()) + " " + std::string(dtype_name(dout.dtype()))
                             : std::string("undefined"));
  return dout.is_contiguous() ? dout : dout.contiguous();
}

// Whether `saved` holds a forward's statistics (checked against the arguments: a kept forward of
// another shape is an error).
bool kept_forward(const Checked& c, const AttentionSaved* saved) {
  const cuda::AttentionArgs& a = c.a;
  if (!saved || !saved->lse2.defined()) return false;
  DSEEK_CHECK(saved->out.defined() && saved->out.dtype() == c.act && saved->out.is_contiguous() &&
                  saved->out.shape() == Shape({a.T, a.H, a.dv}) &&
                  saved->out.device() == c.device && saved->lse2.dtype() == DType::F32 &&
                  saved->lse2.is_contiguous() && saved->lse2.shape() == Shape({a.T, a.H}),
              "[attention] the saved forward does not match: out {} {}, lse2 {} (want {} "
              "[{}, {}, {}] and f32 [{}, {}])",
              dtype_name(saved->out.dtype()), shape_str(saved->out.shape()),
              shape_str(saved->lse2.shape()), dtype_name(c.act), a.T, a.H, a.dv, a.T, a.H);
  return true;
}

// Packed sequences: q, k, v of the same rows and lengths that sum to them.
void check_packed(const Checked& c, const std::vector<int64_t>& lengths) {
  DSEEK_CHECK(c.a.T == c.a.S, "[attention] packed sequences: q has {} rows but k and v {}", c.a.T,
              c.a.S);
  int64_t rows = 0;
  for (int64_t n : lengths) {
    DSEEK_CHECK(n >= 0, "[attention] packed sequences: a length of {}", n);
    rows += n;
  }
  DSEEK_CHECK(rows == c.a.T, "[attention] packed sequences: the lengths sum to {}, q has {} rows",
              rows, c.a.T);
}

// The tensor-core kernels take the packed sequences in one launch (their only path for them).
bool packed_on_gpu(const Checked& c) {
#ifdef DSEEK_HAS_CUDA
  return c.device == Device::CUDA && cuda::causal_attention_saves_stats(c.a, c.act);
#else
  (void)c;
  return false;
#endif
}

}  // namespace

Tensor causal_attention(const Tensor& q, const Tensor& k, const Tensor& v, float scale,
                        AttentionSaved* saved) {
  if (saved) *saved = AttentionSaved();
  if (q.defined() && !q.is_cuda() && (rows_overlap(q) || rows_overlap(k) || rows_overlap(v)))
    return causal_attention(rows_overlap(q) ? q.contiguous() : q,
                            rows_overlap(k) ? k.contiguous() : k,
                            rows_overlap(v) ? v.contiguous() : v, scale);
  Checked c = attention_args(q, k, v, scale);
  cuda::AttentionArgs& a = c.a;
  Tensor out = Tensor::empty({a.T, a.H, a.dv}, c.act, c.device);
  if (out.numel() == 0) return out;
  a.out = out.raw();
  if (c.device == Device::CUDA) {
#ifdef DSEEK_HAS_CUDA
    Tensor lse2;
    if (saved && cuda::causal_attention_saves_stats(a, c.act))
      lse2 = Tensor::empty({a.T, a.H}, DType::F32, c.device);
    cuda::causal_attention(a, c.act, lse2.defined() ? lse2.data<float>() : nullptr);
    if (lse2.defined()) *saved = AttentionSaved{out, lse2};
    return out;
#else
    cuda_not_built("attention");
#endif
  }
  cpu::causal_attention(cpu_args(a));
  return out;
}

AttentionGrads causal_attention_backward(const Tensor& q, const Tensor& k, const Tensor& v,
                                         float scale, const Tensor& dout,
                                         const AttentionSaved* saved) {
  const Checked c = attention_args(q, k, v, scale);
  const cuda::AttentionArgs& a = c.a;
  const Tensor dc = checked_dout(c, dout);
  if (c.device == Device::CUDA) {
#ifdef DSEEK_HAS_CUDA
    // The kernels write every element (zeros where no query sees a key).
    AttentionGrads g{Tensor::empty(q.shape(), c.act, c.device),
                     Tensor::empty(k.shape(), c.act, c.device),
                     Tensor::empty(v.shape(), c.act, c.device)};
    const bool kept = kept_forward(c, saved);
    cuda::causal_attention_backward(
        cuda::AttentionGradArgs{a, dc.raw(), g.dq.raw(), g.dk.raw(), g.dv.raw()}, c.act,
        kept ? saved->out.raw() : nullptr, kept ? saved->lse2.data<float>() : nullptr);
    return g;
#else
    cuda_not_built("attention");
#endif
  }
  (void)saved;  // the CPU recomputes what it needs
  AttentionGrads g{Tensor::zeros(q.shape()), Tensor::zeros(k.shape()), Tensor::zeros(v.shape())};
  if (a.T == 0 || a.H == 0) return g;
  cpu::causal_attention_backward(cpu::AttentionGradArgs{
      cpu_args(a), dc.data<float>(), g.dq.data<float>(), g.dk.data<float>(), g.dv.data<float>()});
  return g;
}

Tensor causal_attention_packed(const Tensor& q, const Tensor& k, const Tensor& v, float scale,
                               const std::vector<int64_t>& lengths, AttentionSaved* saved) {
  if (saved) *saved = AttentionSaved();
  Checked c = attention_args(q, k, v, scale);
  check_packed(c, lengths);
  if (lengths.size() == 1) return causal_attention(q, k, v, scale, saved);
  cuda::AttentionArgs& a = c.a;
  Tensor out = Tensor::empty({a.T, a.H, a.dv}, c.act, c.device);
  if (out.numel() == 0) return out;
  if (packed_on_gpu(c)) {
#ifdef DSEEK_HAS_CUDA
    const Tensor lse2 = saved ? Tensor::empty({a.T, a.H}, DType::F32, c.device) : Tensor();
    a.out = out.raw();
    a.seq_lengths = lengths.data();
    a.seq_count = int64_t(lengths.size());
    cuda::causal_attention(a, c.act, saved ? lse2.data<float>() : nullptr);
    if (saved) *saved = AttentionSaved{out, lse2};
    return out;
#endif
  }
  int64_t s = 0;
  for (int64_t n : lengths) {
    if (n > 0)
      out.slice(0, s, s + n)
          .copy_from(causal_attention(q.slice(0, s, s + n), k.slice(0, s, s + n),
                                      v.slice(0, s, s + n), scale));
    s += n;
  }
  return out;
}

AttentionGrads causal_attention_packed_backward(const Tensor& q, const Tensor& k, const Tensor& v,
                                                float scale, const Tensor& dout,
                                                const std::vector<int64_t>& lengths,
                                                const AttentionSaved* saved) {
  const Checked c = attention_args(q, k, v, scale);
  check_packed(c, lengths);
  if (lengths.size() == 1) return causal_attention_backward(q, k, v, scale, dout, saved);
  const Tensor dc = checked_dout(c, dout);
  const bool kept = kept_forward(c, saved);
  AttentionGrads g{Tensor::empty(q.shape(), c.act, c.device),
                   Tensor::empty(k.shape(), c.act, c.device),
                   Tensor::empty(v.shape(), c.act, c.device)};
  if (packed_on_gpu(c) && reinterpret_cast<uintptr_t>(dc.raw()) % 16 == 0) {
#ifdef DSEEK_HAS_CUDA
    cuda::AttentionArgs a = c.a;
    a.seq_lengths = lengths.data();
    a.seq_count = int64_t(lengths.size());
    cuda::causal_attention_backward(
        cuda::AttentionGradArgs{a, dc.raw(), g.dq.raw(), g.dk.raw(), g.dv.raw()}, c.act,
        kept ? saved->out.raw() : nullptr, kept ? saved->lse2.data<float>() : nullptr);
    return g;
#endif
  }
  int64_t s = 0;
  for (int64_t n : lengths) {
    if (n > 0) {
      const AttentionSaved part =
          kept ? AttentionSaved{saved->out.slice(0, s, s + n), saved->lse2.slice(0, s, s + n)}
               : AttentionSaved();
      const AttentionGrads gi = causal_attention_backward(
          q.slice(0, s, s + n), k.slice(0, s, s + n), v.slice(0, s, s + n), scale,
          dc.slice(0, s, s + n), kept ? &part : nullptr);
      g.dq.slice(0, s, s + n).copy_from(gi.dq);
      g.dk.slice(0, s, s + n).copy_from(gi.dk);
      g.dv.slice(0, s, s + n).copy_from(gi.dv);
    }
    s += n;
  }
  return g;
}

}  // namespace dseek::ops
