// A whole MLA attention layer (DeepSeek-V2/V3 shape: q_a → RMSNorm → q_b, kv_a_proj_with_mqa →
// RMSNorm of the latent → kv_b, decoupled RoPE on q_pe and the shared k_pe, YaRN frequencies and
// scaling, causal attention, o_proj) composed from the ops, with its backward composed from the
// ops' backward passes, checked against finite differences for the input and every weight.
// It exercises what the training issue's MLA backward needs: strided rope slices, the k_pe
// gradient summed over heads, and dx accumulated from the two projections that read x.
#include <gtest/gtest.h>

#include <algorithm>
#include <random>

#include "gradcheck.h"
#include "model/config.h"
#include "model/rope.h"
#include "ops/attention.h"
#include "ops/linear.h"
#include "ops/norm.h"
#include "ops/rope.h"

using namespace dseek;
using dseek::testing::check_gradients;
using dseek::testing::GradReport;
using dseek::testing::nonzero_tensor;

namespace {

struct Mla {
  int64_t D = 7, H = 3, qr = 5, kr = 6, dn = 3, dr = 4, dv = 5;
  double eps = 1e-6;
  float scale = 0.4f;
  RopeParams rope;
  Tensor wqa, qnorm, wqb, wkva, kvnorm, wkvb, wo;  // HF names: q_a_proj, q_a_layernorm, ...
};

// Columns [a, b) of the last dimension of a contiguous 3-D tensor, as a contiguous copy.
Tensor cols(const Tensor& t, int64_t a, int64_t b) {
  return t.slice(2, a, b).contiguous();
}

// Writes src [T, H, n] into columns [a, a + n) of dst [T, H, m] (dst contiguous).
void put_cols(Tensor& dst, const Tensor& src, int64_t a) {
  const int64_t T = dst.size(0), H = dst.size(1), m = dst.size(2), n = src.size(2);
  const std::vector<float> s = src.to_vector();
  float* d = dst.data<float>();
  for (int64_t t = 0; t < T; ++t)
    for (int64_t h = 0; h < H; ++h)
      for (int64_t j = 0; j < n; ++j) d[(t * H + h) * m + a + j] = s[size_t((t * H + h) * n + j)];
}

// [T, 1, n] repeated to [T, H, n].
Tensor broadcast_heads(const Tensor& t1, int64_t H) {
  const int64_t T = t1.size(0), n = t1.size(2);
  const std::vector<float> s = t1.to_vector();
  std::vector<float> out(size_t(T * H * n));
  for (int64_t t = 0; t < T; ++t)
    for (int64_t h = 0; h < H; ++h)
      for (int64_t j = 0; j < n; ++j) out[size_t((t * H + h) * n + j)] = s[size_t(t * n + j)];
  return Tensor::from_vector(out, {T, H, n});
}

struct Saved {
  Tensor q_a, q_n, q, kv, c, c_n, kvb, k, v, attn;
};

Tensor mla_forward(const Mla& m, const Tensor& x, Saved* saved = nullptr) {
  const int64_t T = x.size(0), dq = m.dn + m.dr;
  Saved s;
  s.q_a = ops::linear(x, m.wqa);
  s.q_n = ops::rms_norm(s.q_a, m.qnorm, m.eps);
  s.q = ops::linear(s.q_n, m.wqb).reshape({T, m.H, dq});
  ops::rope_inplace(s.q.slice(2, m.dn, dq), 0, m.rope.inv_freq, m.rope.attention_scaling, true);
  s.kv = ops::linear(x, m.wkva);  // [T, kr + dr]
  s.c = s.kv.slice(1, 0, m.kr).contiguous();
  Tensor k_pe = s.kv.slice(1, m.kr, m.kr + m.dr).contiguous().reshape({T, 1, m.dr});
  ops::rope_inplace(k_pe, 0, m.rope.inv_freq, m.rope.attention_scaling, true);
  s.c_n = ops::rms_norm(s.c, m.kvnorm, m.eps);
  s.kvb = ops::linear(s.c_n, m.wkvb).reshape({T, m.H, m.dn + m.dv});
  s.k = Tensor::empty({T, m.H, dq});
  put_cols(s.k, cols(s.kvb, 0, m.dn), 0);
  put_cols(s.k, broadcast_heads(k_pe, m.H), m.dn);  // one k_pe shared by every head
  s.v = cols(s.kvb, m.dn, m.dn + m.dv);
  s.attn = ops::causal_attention(s.q, s.k, s.v, m.scale).reshape({T, m.H * m.dv});
  Tensor out = ops::linear(s.attn, m.wo);
  if (saved) *saved = s;
  return out;
}

struct MlaGrads {
  Tensor dx, dwqa, dqnorm, dwqb, dwkva, dkvnorm, dwkvb, dwo;
};

// The chain rule through mla_forward, last op first.
MlaGrads mla_backward(const Mla& m, const Tensor& x, const Tensor& dout) {
  Saved s;
  mla_forward(m, x, &s);
  const int64_t T = x.size(0), dq = m.dn + m.dr;
  MlaGrads g;
  // o_proj.
  Tensor dattn = Tensor::poisoned({T, m.H * m.dv});
  g.dwo = Tensor::poisoned(m.wo.shape());
  ops::linear_backward_into(s.attn, m.wo, dout, &dattn, &g.dwo, nullptr, false);
  const ops::AttentionGrads ag =
      ops::causal_attention_backward(s.q, s.k, s.v, m.scale, dattn.reshape({T, m.H, m.dv}));
  // Query side: un-rotate dq_pe in place (a strided slice), then q_b, q_a_layernorm, q_a.
  Tensor dqf = ag.dq.clone();
  ops::rope_backward_inplace(dqf.slice(2, m.dn, dq), 0, m.rope.inv_freq, m.rope.attention_scaling,
                             true);
  Tensor dq_n = Tensor::poisoned({T, m.qr});
  g.dwqb = Tensor::poisoned(m.wqb.shape());
  ops::linear_backward_into(s.q_n, m.wqb, dqf.reshape({T, m.H * dq}), &dq_n, &g.dwqb, nullptr,
                            false);
  const ops::RmsNormGrads rq = ops::rms_norm_backward(s.q_a, m.qnorm, m.eps, dq_n);
  g.dqnorm = rq.dweight;
  g.dx = Tensor::poisoned(x.shape());
  g.dwqa = Tensor::poisoned(m.wqa.shape());
  ops::linear_backward_into(x, m.wqa, rq.dx, &g.dx, &g.dwqa, nullptr, false);
  // Key/value side: kv_b sees [dk_nope | dv] per head.
  Tensor dkvb = Tensor::poisoned({T, m.H, m.dn + m.dv});
  put_cols(dkvb, cols(ag.dk, 0, m.dn), 0);
  put_cols(dkvb, ag.dv, m.dn);
  Tensor dc_n = Tensor::poisoned({T, m.kr});
  g.dwkvb = Tensor::poisoned(m.wkvb.shape());
  ops::linear_backward_into(s.c_n, m.wkvb, dkvb.reshape({T, m.H * (m.dn + m.dv)}), &dc_n, &g.dwkvb,
                            nullptr, false);
  const ops::RmsNormGrads rc = ops::rms_norm_backward(s.c, m.kvnorm, m.eps, dc_n);
  g.dkvnorm = rc.dweight;
  // k_pe is shared by all heads: its gradient is the sum over heads, then un-rotated.
  const std::vector<float> dk = ag.dk.to_vector();
  std::vector<float> kpe(size_t(T * m.dr), 0.0f);
  for (int64_t t = 0; t < T; ++t)
    for (int64_t h = 0; h < m.H; ++h)
      for (int64_t j = 0; j < m.dr; ++j)
        kpe[size_t(t * m.dr + j)] += dk[size_t((t * m.H + h) * dq + m.dn + j)];
  Tensor dk_pe = Tensor::from_vector(kpe, {T, 1, m.dr});
  ops::rope_backward_inplace(dk_pe, 0, m.rope.inv_freq, m.rope.attention_scaling, true);
  Tensor dkv = Tensor::poisoned({T, 1, m.kr + m.dr});
  put_cols(dkv, rc.dx.reshape({T, 1, m.kr}), 0);
  put_cols(dkv, dk_pe, m.kr);
  // x feeds q_a_proj and kv_a_proj_with_mqa: the second gradient adds to the first.
  // (accumulate applies to every gradient of the call, so dW starts from zeros here)
  g.dwkva = Tensor::zeros(m.wkva.shape());
  ops::linear_backward_into(x, m.wkva, dkv.reshape({T, m.kr + m.dr}), &g.dx, &g.dwkva, nullptr,
                            /*accumulate=*/true);
  return g;
}

}  // namespace

TEST(Grad, MlaLayerMatchesFiniteDifferences) {
  std::mt19937 rng(41);
  Mla m;
  ModelConfig c;
  c.model_type = "deepseek_v3";  // interleaved rope dims, as the checkpoints store them
  c.qk_rope_head_dim = m.dr;
  c.rope_scaling.type = "yarn";
  c.rope_scaling.factor = 4.0;
  c.rope_scaling.original_max_position_embeddings = 16;
  c.rope_scaling.mscale = 1.0;
  c.rope_scaling.mscale_all_dim = 0.5;
  m.rope = rope_params(c);
  ASSERT_TRUE(m.rope.interleaved);
  m.wqa = nonzero_tensor({m.qr, m.D}, rng, 0.6f);
  m.qnorm = nonzero_tensor({m.qr}, rng, 1.2f);
  m.wqb = nonzero_tensor({m.H * (m.dn + m.dr), m.qr}, rng, 0.6f);
  m.wkva = nonzero_tensor({m.kr + m.dr, m.D}, rng, 0.6f);
  m.kvnorm = nonzero_tensor({m.kr}, rng, 1.2f);
  m.wkvb = nonzero_tensor({m.H * (m.dn + m.dv), m.kr}, rng, 0.6f);
  m.wo = nonzero_tensor({m.D, m.H * m.dv}, rng, 0.6f);
  for (int64_t T : {1, 6}) {
    Tensor x = nonzero_tensor({T, m.D}, rng);
    Tensor r = nonzero_tensor({T, m.D}, rng);
    const MlaGrads g = mla_backward(m, x, r);
    const std::vector<dseek::testing::GradInput> inputs = {{"x", x, g.dx},
                                                           {"q_a_proj", m.wqa, g.dwqa},
                                                           {"q_a_layernorm", m.qnorm, g.dqnorm},
                                                           {"q_b_proj", m.wqb, g.dwqb},
                                                           {"kv_a_proj_with_mqa", m.wkva, g.dwkva},
                                                           {"kv_a_layernorm", m.kvnorm, g.dkvnorm},
                                                           {"kv_b_proj", m.wkvb, g.dwkvb},
                                                           {"o_proj", m.wo, g.dwo}};
    const GradReport rep = check_gradients([&] { return mla_forward(m, x); }, r, inputs, 3e-3f, 16);
    int64_t expect_checked = 0;
    for (const auto& in : inputs) expect_checked += std::min<int64_t>(16, in.value.numel());
    EXPECT_EQ(rep.checked, expect_checked);
    EXPECT_LE(rep.worst, 3e-2) << "T=" << T << " " << rep.where;
  }
}
