// Causal attention on CUDA against the CPU op, forward and backward: queries the last T of S
// positions (T = S, T = 1 decode, T < S chunk), grouped-query heads (H/Hk 4/4, 8/2, 16/1), head
// dims small and odd-sized, MLA's (192, 128) and its latent decode (576, 512) on one key head,
// contiguous inputs and strided views into wider buffers, f32 and bf16 activations. The bf16
// tensor-core kernels (attention_tc.cu) get their own cases: every (dk, dv) template, tails of
// the 64-row tiles, T < S, GQA and the MLA prefill shape, with bounds relative to the RMS of
// each row (vector) of the CPU f32 reference.
#include <algorithm>
#include <cmath>
#include <string>
#include <vector>

#include "backend/backend_harness.h"
#include "ops/attention.h"
#include "ops/cuda/attention_tc.cuh"

namespace dseek::backend_test {
namespace {

struct Shape2 {
  int64_t T, S;
};
struct Heads {
  int64_t H, Hk;
};
struct Dims {
  int64_t dk, dv;
};

const std::vector<Shape2> kLengths = {{1, 1}, {1, 300}, {7, 7}, {64, 64}, {33, 97}, {256, 256}};
const std::vector<Heads> kHeads = {{4, 4}, {8, 2}, {16, 1}};
const std::vector<Dims> kDims = {{16, 16}, {40, 24}, {192, 128}, {576, 512}};

// The cases: every length, head layout and head dims, with (576, 512) only on one key head (MLA's
// latent decode); every other case takes its inputs as strided views.
struct Case {
  Shape2 len;
  Heads heads;
  Dims dims;
  bool strided;
};
std::vector<Case> cases() {
  std::vector<Case> out;
  for (Shape2 len : kLengths)
    for (Heads heads : kHeads)
      for (Dims dims : kDims) {
        if (dims.dk == 576 && heads.Hk != 1) continue;
        out.push_back({len, heads, dims, out.size() % 2 == 1});
      }
  return out;
}

// Inputs on the CPU (f32, rounded to act) and the same on the GPU (in act). Strided: q is a
// slice of [T, H, dk + 8] and k, v are slices of one [S, Hk, dk + dv] buffer, as a fused
// projection leaves them.
struct Inputs {
  Tensor q, k, v;     // CPU reference inputs
  Tensor gq, gk, gv;  // GPU inputs (views of gpu buffers when strided)
};
Inputs make_inputs(const Case& c, DType act, std::mt19937& rng) {
  const auto [T, S] = c.len;
  const auto [H, Hk] = c.heads;
  const auto [dk, dv] = c.dims;
  Inputs in;
  if (c.strided) {
    const Tensor qbuf = rounded(rand({T, H, dk + 8}, rng, 1.5f), act);
    const Tensor kvbuf = rounded(rand({S, Hk, dk + dv}, rng, 1.5f), act);
    const Tensor gqbuf = on_gpu(qbuf, act), gkvbuf = on_gpu(kvbuf, act);
    in.q = qbuf.slice(2, 0, dk);
    in.k = kvbuf.slice(2, 0, dk);
    in.v = kvbuf.slice(2, dk, dk + dv);
    in.gq = gqbuf.slice(2, 0, dk);
    in.gk = gkvbuf.slice(2, 0, dk);
    in.gv = gkvbuf.slice(2, dk, dk + dv);
  } else {
    in.q = rounded(rand({T, H, dk}, rng, 1.5f), act);
    in.k = rounded(rand({S, Hk, dk}, rng, 1.5f), act);
    in.v = rounded(rand({S, Hk, dv}, rng, 1.5f), act);
    in.gq = on_gpu(in.q, act);
    in.gk = on_gpu(in.k, act);
    in.gv = on_gpu(in.v, act);
  }
  return in;
}

std::string describe(const Case& c) {
  return "T" + std::to_string(c.len.T) + " S" + std::to_string(c.len.S) + " H" +
         std::to_string(c.heads.H) + "/" + std::to_string(c.heads.Hk) + " d" +
         std::to_string(c.dims.dk) + "/" + std::to_string(c.dims.dv) + (c.strided ? " view" : "");
}

// Scores of a few units, so the softmax is far from uniform.
float scale_for(int64_t dk) {
  return 1.5f / std::sqrt(float(dk));
}

// Fresh GPU outputs come from the pool; freeing a NaN block of the size first makes it likely
// that an element the kernel fails to write reads NaN.
void prime_pool(int64_t n, DType act) {
  (void)Tensor::poisoned({n}, act, Device::CUDA);
}

TEST(BackendOps, CausalAttention) {
  DSEEK_REQUIRE_CUDA();
  std::mt19937 rng(21);
  for (DType act : kActDtypes) {
    for (const Case& c : cases()) {
      const Inputs in = make_inputs(c, act, rng);
      const float scale = scale_for(c.dims.dk);
      const Tensor want = ops::causal_attention(in.q, in.k, in.v, scale);
      prime_pool(want.numel(), act);
      const Tensor got = ops::causal_attention(in.gq, in.gk, in.gv, scale);
      EXPECT_EQ(got.dtype(), act);
      EXPECT_TRUE(got.is_cuda());
      expect_close("attention " + describe(c), want.shape(), act, want, got);
    }
  }
}

TEST(BackendOps, CausalAttentionBackward) {
  DSEEK_REQUIRE_CUDA();
  std::mt19937 rng(22);
  for (DType act : kActDtypes) {
    // Gradients sum over many rows: f32 in another order, plus one bf16 rounding of the result.
    const Tolerance tol = act == DType::BF16 ? Tolerance{2e-2, 1.6e-2} : Tolerance{2e-4, 2e-4};
    for (const Case& c : cases()) {
      const Inputs in = make_inputs(c, act, rng);
      const float scale = scale_for(c.dims.dk);
      const Tensor dout = rounded(rand({c.len.T, c.heads.H, c.dims.dv}, rng), act);
      const ops::AttentionGrads want =
          ops::causal_attention_backward(in.q, in.k, in.v, scale, dout);
      prime_pool(want.dk.numel(), act);
      const ops::AttentionGrads got =
          ops::causal_attention_backward(in.gq, in.gk, in.gv, scale, on_gpu(dout, act));
      for (const Tensor* t : {&got.dq, &got.dk, &got.dv}) {
        EXPECT_EQ(t->dtype(), act);
        EXPECT_TRUE(t->is_cuda());
        EXPECT_TRUE(t->is_contiguous());
      }
      const std::string name = describe(c);
      expect_close("attention_backward dq " + name, want.dq.shape(), act, want.dq, got.dq, tol);
      expect_close("attention_backward dk " + name, want.dk.shape(), act, want.dk, got.dk, tol);
      expect_close("attention_backward dv " + name, want.dv.shape(), act, want.dv, got.dv, tol);
    }
  }
}

// No float atomics: two runs give the same bits.
TEST(BackendOps, CausalAttentionBackwardIsDeterministic) {
  DSEEK_REQUIRE_CUDA();
  std::mt19937 rng(23);
  const Case c{{64, 97}, {16, 1}, {40, 24}, true};
  const Inputs in = make_inputs(c, DType::F32, rng);
  const Tensor dout = on_gpu(rand({64, 16, 24}, rng));
  const ops::AttentionGrads a = ops::causal_attention_backward(in.gq, in.gk, in.gv, 0.3f, dout);
  const ops::AttentionGrads b = ops::causal_attention_backward(in.gq, in.gk, in.gv, 0.3f, dout);
  EXPECT_EQ(a.dq.to_vector(), b.dq.to_vector());
  EXPECT_EQ(a.dk.to_vector(), b.dk.to_vector());
  EXPECT_EQ(a.dv.to_vector(), b.dv.to_vector());
}

// ---- bf16 tensor-core kernels ------------------------------------------------------------------
// Every (dk, dv) the tensor-core path templates on, at lengths around the 64-row tiles (1, 17, 64,
// 100), T < S (a chunk after a prefix, a decode step), one or four query heads per key head,
// contiguous and strided inputs; then long sequences: GQA 16/4 at 1000, a 300-query chunk of 1000
// keys, and MLA prefill (16 heads, dk 192 = 128 nope + 64 rope, dv 128) at 2048.
std::vector<Case> tc_cases() {
  const std::vector<Dims> dims = {{64, 64},   {64, 128}, {128, 64},
                                  {128, 128}, {192, 64}, {192, 128}};
  const std::vector<Shape2> lengths = {{1, 1}, {17, 17}, {64, 64}, {100, 100}, {33, 150}, {1, 300}};
  std::vector<Case> out;
  for (Dims d : dims)
    for (Shape2 len : lengths) {
      const bool gqa = out.size() % 2 == 0;
      out.push_back({len, gqa ? Heads{16, 4} : Heads{4, 4}, d, out.size() % 3 == 1});
    }
  out.push_back({{1000, 1000}, {16, 4}, {128, 128}, false});
  out.push_back({{300, 1000}, {8, 8}, {64, 64}, true});
  out.push_back({{2048, 2048}, {16, 16}, {192, 128}, false});
  return out;
}

// |got − want| ≤ abs_rms·rms(row) + rel·|want| + 1e-4 per element, rms(row) the RMS of the
// reference's vector it belongs to (the last dimension: one output, dq, dk or dv vector). bf16
// rounds the probabilities (and dS) before the second product of each pair, an error of 2^-9 of
// every term of a sum; a row's terms are of the size of the row (random directions do not
// cancel in its norm), but they can be much larger than the tensor's typical row: dq of a query
// that sees a few keys is a sum of a few large dS·k, that of a late query one of many small ones.
// So the bound scales per row, not per element (an element near zero keeps the absolute error of
// its row's terms). But a row can also be much smaller than its terms: dS = P·(dP − D) cancels
// when a query's dP values are close to their mean D (a query seeing two or three keys), and D
// comes from the forward's O, whose P·V product used bf16 probabilities, so D carries an error
// of 2^-9 of the tensor's typical dP. The row scale is therefore floored at a quarter of the
// tensor's RMS (measured on the H200: such rows of dq erred by ~2e-3 of the tensor RMS while
// their own RMS was ~1e-3 of it). The 1e-4 absolute floor covers tensors that are exactly zero
// (dq and dk of a query seeing a single key). Prints one line: the worst |got − want| /
// rms(row) and the number of elements out of bounds.
void expect_close_rows(const std::string& op, const Tensor& want, const Tensor& got, double abs_rms,
                       double rel) {
  ASSERT_EQ(got.shape(), want.shape()) << op;
  const std::vector<float> w = want.to_vector(), g = got.to_vector();
  const size_t n = size_t(want.size(want.dim() - 1));
  double total = 0;
  for (float x : w) total += double(x) * double(x);
  const double rms_floor = 0.25 * std::sqrt(total / double(std::max<size_t>(w.size(), 1)));
  double worst = 0;
  size_t bad = 0, worst_at = 0;
  for (size_t r0 = 0; r0 < w.size(); r0 += n) {
    double ss = 0;
    for (size_t i = r0; i < r0 + n; ++i) ss += double(w[i]) * double(w[i]);
    const double rms_row = std::sqrt(ss / double(n));
    const double row_scale = std::max(rms_row, rms_floor);
    for (size_t i = r0; i < r0 + n; ++i) {
      const double d = std::isfinite(g[i]) ? std::abs(double(g[i]) - double(w[i])) : INFINITY;
      if (!(d <= abs_rms * row_scale + rel * std::abs(double(w[i])) + 1e-4)) ++bad;
      const double ratio = d / std::max(rms_row, 1e-4);
      if (!(ratio <= worst)) {
        worst = ratio;
        worst_at = i;
      }
    }
  }
  std::printf("[backend] %-44s rms %.2e  max |err|/rms(row) %.2e (bound %.0e + %.0e·|x|) %s\n",
              op.c_str(), std::sqrt(total / double(std::max<size_t>(w.size(), 1))), worst, abs_rms,
              rel, bad ? "FAIL" : "ok");
  EXPECT_EQ(bad, 0u) << op << ": " << bad << " of " << w.size()
                     << " elements out of bounds; worst at " << worst_at << ": got "
                     << (w.empty() ? 0.f : g[worst_at]) << ", want "
                     << (w.empty() ? 0.f : w[worst_at]);
}

#ifdef DSEEK_HAS_CUDA
// The raw arguments of the GPU inputs, for calling the tensor-core kernels directly (outputs
// poisoned with NaN) and for checking that the op takes them for every case here.
ops::cuda::AttentionArgs tc_args(const Case& c, const Inputs& in, float scale, void* out) {
  return ops::cuda::AttentionArgs{in.gq.raw(),
                                  in.gq.strides()[0],
                                  in.gq.strides()[1],
                                  in.gk.raw(),
                                  in.gk.strides()[0],
                                  in.gk.strides()[1],
                                  in.gv.raw(),
                                  in.gv.strides()[0],
                                  in.gv.strides()[1],
                                  out,
                                  c.len.T,
                                  c.len.S,
                                  c.heads.H,
                                  c.heads.Hk,
                                  c.dims.dk,
                                  c.dims.dv,
                                  scale};
}
#endif

TEST(BackendOps, CausalAttentionTensorCoreBf16) {
  DSEEK_REQUIRE_CUDA();
  std::mt19937 rng(31);
  for (const Case& c : tc_cases()) {
    const Inputs in = make_inputs(c, DType::BF16, rng);
    const float scale = scale_for(c.dims.dk);
    const Tensor want = ops::causal_attention(in.q, in.k, in.v, scale);
    prime_pool(want.numel(), DType::BF16);
    const Tensor got = ops::causal_attention(in.gq, in.gk, in.gv, scale);
    EXPECT_EQ(got.dtype(), DType::BF16);
    expect_close_rows("attention tc " + describe(c), want, got, 2e-2, 1e-2);
#ifdef DSEEK_HAS_CUDA
    Tensor out = Tensor::poisoned(want.shape(), DType::BF16, Device::CUDA);
    const ops::cuda::AttentionArgs a = tc_args(c, in, scale, out.raw());
    ASSERT_TRUE(ops::cuda::attention_tc::tc_supported(a))
        << describe(c) << ": the op takes the scalar kernels for this case";
    ops::cuda::attention_tc::tc_forward(a);
    expect_close_rows("attention tc (poisoned) " + describe(c), want, out, 2e-2, 1e-2);
#endif
  }
}

TEST(BackendOps, CausalAttentionTensorCoreBf16Backward) {
  DSEEK_REQUIRE_CUDA();
  std::mt19937 rng(32);
  for (const Case& c : tc_cases()) {
    const Inputs in = make_inputs(c, DType::BF16, rng);
    const float scale = scale_for(c.dims.dk);
    const Tensor dout = rounded(rand({c.len.T, c.heads.H, c.dims.dv}, rng), DType::BF16);
    const ops::AttentionGrads want = ops::causal_attention_backward(in.q, in.k, in.v, scale, dout);
    prime_pool(want.dk.numel(), DType::BF16);
    const ops::AttentionGrads got =
        ops::causal_attention_backward(in.gq, in.gk, in.gv, scale, on_gpu(dout, DType::BF16));
    const std::string name = describe(c);
    expect_close_rows("attention tc dq " + name, want.dq, got.dq, 3e-2, 1.6e-2);
    expect_close_rows("attention tc dk " + name, want.dk, got.dk, 3e-2, 1.6e-2);
    expect_close_rows("attention tc dv " + name, want.dv, got.dv, 3e-2, 1.6e-2);
#ifdef DSEEK_HAS_CUDA
    ops::AttentionGrads poisoned{Tensor::poisoned(want.dq.shape(), DType::BF16, Device::CUDA),
                                 Tensor::poisoned(want.dk.shape(), DType::BF16, Device::CUDA),
                                 Tensor::poisoned(want.dv.shape(), DType::BF16, Device::CUDA)};
    const Tensor gdout = on_gpu(dout, DType::BF16);
    ops::cuda::attention_tc::tc_backward(
        ops::cuda::AttentionGradArgs{tc_args(c, in, scale, nullptr), gdout.raw(), poisoned.dq.raw(),
                                     poisoned.dk.raw(), poisoned.dv.raw()});
    expect_close_rows("attention tc (poisoned) dq " + name, want.dq, poisoned.dq, 3e-2, 1.6e-2);
    expect_close_rows("attention tc (poisoned) dk " + name, want.dk, poisoned.dk, 3e-2, 1.6e-2);
    expect_close_rows("attention tc (poisoned) dv " + name, want.dv, poisoned.dv, 3e-2, 1.6e-2);
#endif
  }
}

// The backward from the forward's kept output and row statistics (ops::AttentionSaved: no second
// forward pass, D = dout · out from the bf16 output, as FlashAttention-2 and torch's SDPA take it):
// dk against the CPU with the recomputing backward's bounds; dv the same bits as that backward (it
// does not read D); dq against the CPU with a wider bound. D from the rounded output errs by 2^-9
// of |dout|·|out| per term, and dq = scale·Σ P·(dP − D)·k takes that error whole on rows whose
// dP values sit close to their mean D (a query seeing a few keys), where the recomputing
// backward, whose D comes from the forward's f32 output, does not: on an H100 the worst dq
// element erred by 0.40 of its row's RMS against 0.22 recomputing, on a few elements of 14 of
// the 39 cases (bound 3e-2 of the row scale there). The forward with `saved` gives the same output
// bits as without.
TEST(BackendOps, CausalAttentionTensorCoreBf16BackwardFromSaved) {
  DSEEK_REQUIRE_CUDA();
  std::mt19937 rng(34);
  for (const Case& c : tc_cases()) {
    const Inputs in = make_inputs(c, DType::BF16, rng);
    const float scale = scale_for(c.dims.dk);
    const std::string name = describe(c);
    ops::AttentionSaved saved;
    saved.out = Tensor::poisoned({1}, DType::F32, Device::CUDA);  // replaced, not appended to
    const Tensor out = ops::causal_attention(in.gq, in.gk, in.gv, scale, &saved);
    ASSERT_TRUE(saved.lse2.defined()) << name << ": the tensor-core forward kept no statistics";
    EXPECT_EQ(saved.out.raw(), out.raw()) << name;
    EXPECT_EQ(saved.lse2.shape(), Shape({c.len.T, c.heads.H})) << name;
    EXPECT_EQ(out.to_vector(), ops::causal_attention(in.gq, in.gk, in.gv, scale).to_vector())
        << name;
    const Tensor dout = rounded(rand({c.len.T, c.heads.H, c.dims.dv}, rng), DType::BF16);
    const ops::AttentionGrads want = ops::causal_attention_backward(in.q, in.k, in.v, scale, dout);
    const Tensor gdout = on_gpu(dout, DType::BF16);
    prime_pool(want.dk.numel(), DType::BF16);
    const ops::AttentionGrads got =
        ops::causal_attention_backward(in.gq, in.gk, in.gv, scale, gdout, &saved);
    expect_close_rows("attention tc saved dq " + name, want.dq, got.dq, 0.5, 1.6e-2);
    expect_close_rows("attention tc saved dk " + name, want.dk, got.dk, 3e-2, 1.6e-2);
    expect_close_rows("attention tc saved dv " + name, want.dv, got.dv, 3e-2, 1.6e-2);
    const ops::AttentionGrads again =
        ops::causal_attention_backward(in.gq, in.gk, in.gv, scale, gdout);
    // dV does not read D: the same bits.
    EXPECT_EQ(again.dv.to_vector(), got.dv.to_vector()) << name;
  }
  // A kept forward of another shape is an error naming what it holds.
  std::mt19937 rng2(35);
  const Case c = tc_cases().front();
  const Inputs in = make_inputs(c, DType::BF16, rng2);
  ops::AttentionSaved wrong{
      Tensor::zeros({c.len.T + 1, c.heads.H, c.dims.dv}, DType::BF16, Device::CUDA),
      Tensor::zeros({c.len.T + 1, c.heads.H}, DType::F32, Device::CUDA)};
  const Tensor gdout = on_gpu(rand({c.len.T, c.heads.H, c.dims.dv}, rng2), DType::BF16);
  try {
    ops::causal_attention_backward(in.gq, in.gk, in.gv, 0.1f, gdout, &wrong);
    FAIL() << "no error";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("saved forward does not match"), std::string::npos)
        << e.what();
  }
}

// The tensor-core backward sums every gradient element in one thread in a fixed order (no
// atomics): two runs give the same bits, GQA included.
TEST(BackendOps, CausalAttentionTensorCoreBf16BackwardIsDeterministic) {
  DSEEK_REQUIRE_CUDA();
  std::mt19937 rng(33);
  const Case c{{150, 230}, {16, 4}, {192, 128}, true};
  const Inputs in = make_inputs(c, DType::BF16, rng);
  const Tensor dout = on_gpu(rand({150, 16, 128}, rng), DType::BF16);
  const ops::AttentionGrads a = ops::causal_attention_backward(in.gq, in.gk, in.gv, 0.1f, dout);
  const ops::AttentionGrads b = ops::causal_attention_backward(in.gq, in.gk, in.gv, 0.1f, dout);
  EXPECT_EQ(a.dq.to_vector(), b.dq.to_vector());
  EXPECT_EQ(a.dk.to_vector(), b.dk.to_vector());
  EXPECT_EQ(a.dv.to_vector(), b.dv.to_vector());
}

// ---- packed sequences (ops::causal_attention_packed)
// ---------------------------------------------- Ragged sequences back to back (an empty one, tails
// of the 64-row tiles, one longer than the rest), GQA and MHA, MLA's head dims and two others,
// contiguous and strided: the one-launch kernels against the CPU reference, and bit for bit against
// the one-sequence op on each sequence's rows — the forward's output and row statistics, and the
// backward from the kept forward and without it (each block computes what the one-sequence launch's
// block does). f32 goes through the per-sequence loop: checked against the CPU too.
TEST(BackendOps, CausalAttentionPackedEqualsPerSequence) {
  DSEEK_REQUIRE_CUDA();
  std::mt19937 rng(36);
  const std::vector<int64_t> lengths = {65, 1, 0, 200, 63, 64, 130};
  int64_t N = 0;
  for (int64_t n : lengths) N += n;
  struct PackedCase {
    Heads heads;
    Dims dims;
    bool strided;
  };
  const std::vector<PackedCase> packed_cases = {
      {{16, 16}, {192, 128}, false}, {{8, 2}, {64, 64}, true}, {{4, 4}, {128, 128}, true}};
  for (DType act : kActDtypes)
    for (const PackedCase& pc : packed_cases) {
      const Case c{{N, N}, pc.heads, pc.dims, pc.strided};
      const std::string name = std::string(dtype_name(act)) + " packed " + describe(c);
      const Inputs in = make_inputs(c, act, rng);
      const float scale = scale_for(c.dims.dk);
      const Tensor dout = rounded(rand({N, c.heads.H, c.dims.dv}, rng), act);
      const Tensor gdout = on_gpu(dout, act);

      const Tensor want = ops::causal_attention_packed(in.q, in.k, in.v, scale, lengths);
      const ops::AttentionGrads want_g =
          ops::causal_attention_packed_backward(in.q, in.k, in.v, scale, dout, lengths);
      prime_pool(want.numel(), act);
      ops::AttentionSaved saved;
      const Tensor got = ops::causal_attention_packed(in.gq, in.gk, in.gv, scale, lengths, &saved);
      prime_pool(want_g.dq.numel(), act);
      const ops::AttentionGrads got_g =
          ops::causal_attention_packed_backward(in.gq, in.gk, in.gv, scale, gdout, lengths, &saved);
      const ops::AttentionGrads got_recomputed =
          ops::causal_attention_packed_backward(in.gq, in.gk, in.gv, scale, gdout, lengths);
      const double a = act == DType::BF16 ? 3e-2 : 1e-4, r = act == DType::BF16 ? 1.6e-2 : 1e-4;
      expect_close_rows("attention " + name, want, got, a, r);
      // dq from the kept bf16 output: the wider bound of ...BackwardFromSaved.
      expect_close_rows("attention dq " + name, want_g.dq, got_g.dq,
                        act == DType::BF16 ? 0.5 : 1e-4, r);
      expect_close_rows("attention dk " + name, want_g.dk, got_g.dk, a, r);
      expect_close_rows("attention dv " + name, want_g.dv, got_g.dv, a, r);
      expect_close_rows("attention dq (recomputed) " + name, want_g.dq, got_recomputed.dq, a, r);
      EXPECT_EQ(saved.lse2.defined(), act == DType::BF16) << name;

      // Sequence by sequence through the one-sequence op: the same bits.
      int64_t s = 0;
      for (int64_t n : lengths) {
        if (n > 0) {
          const std::string at = name + " rows " + std::to_string(s) + "+" + std::to_string(n);
          const auto rows = [&](const Tensor& t) { return t.slice(0, s, s + n); };
          ops::AttentionSaved one;
          const Tensor o =
              ops::causal_attention(rows(in.gq), rows(in.gk), rows(in.gv), scale, &one);
          EXPECT_EQ(rows(got).to_vector(), o.to_vector()) << at;
          if (saved.lse2.defined()) {
            EXPECT_EQ(rows(saved.lse2).to_vector(), one.lse2.to_vector()) << at;
          }
          const ops::AttentionGrads g1 = ops::causal_attention_backward(
              rows(in.gq), rows(in.gk), rows(in.gv), scale, rows(gdout).contiguous(),
              one.lse2.defined() ? &one : nullptr);
          EXPECT_EQ(rows(got_g.dq).to_vector(), g1.dq.to_vector()) << at;
          EXPECT_EQ(rows(got_g.dk).to_vector(), g1.dk.to_vector()) << at;
          EXPECT_EQ(rows(got_g.dv).to_vector(), g1.dv.to_vector()) << at;
          const ops::AttentionGrads g2 = ops::causal_attention_backward(
              rows(in.gq), rows(in.gk), rows(in.gv), scale, rows(gdout).contiguous());
          EXPECT_EQ(rows(got_recomputed.dq).to_vector(), g2.dq.to_vector()) << at;
          EXPECT_EQ(rows(got_recomputed.dk).to_vector(), g2.dk.to_vector()) << at;
        }
        s += n;
      }
    }
}

// More sequences than one launch's table (kMaxSequences): the launches split them, every row
// still written (outputs from a NaN-primed pool), a launch of only empty sequences skipped.
TEST(BackendOps, CausalAttentionPackedManySequences) {
  DSEEK_REQUIRE_CUDA();
  std::mt19937 rng(37);
  std::vector<int64_t> lengths;
  for (int i = 0; i < 150; ++i) lengths.push_back(1 + (i * 37) % 23);
  // A whole launch's table of empty sequences (the second 64) has no grid to launch.
  std::fill(lengths.begin() + 64, lengths.begin() + 128, 0);
  int64_t N = 0;
  for (int64_t n : lengths) N += n;
  const Case c{{N, N}, {4, 2}, {64, 128}, false};
  const Inputs in = make_inputs(c, DType::BF16, rng);
  const Tensor dout = rounded(rand({N, 4, 128}, rng), DType::BF16);
  const float scale = scale_for(64);
  const Tensor want = ops::causal_attention_packed(in.q, in.k, in.v, scale, lengths);
  const ops::AttentionGrads want_g =
      ops::causal_attention_packed_backward(in.q, in.k, in.v, scale, dout, lengths);
  prime_pool(want.numel(), DType::BF16);
  const Tensor got = ops::causal_attention_packed(in.gq, in.gk, in.gv, scale, lengths);
  prime_pool(want_g.dk.numel(), DType::BF16);
  const ops::AttentionGrads got_g = ops::causal_attention_packed_backward(
      in.gq, in.gk, in.gv, scale, on_gpu(dout, DType::BF16), lengths);
  expect_close_rows("attention packed x150", want, got, 2e-2, 1e-2);
  expect_close_rows("attention packed x150 dq", want_g.dq, got_g.dq, 3e-2, 1.6e-2);
  expect_close_rows("attention packed x150 dk", want_g.dk, got_g.dk, 3e-2, 1.6e-2);
  expect_close_rows("attention packed x150 dv", want_g.dv, got_g.dv, 3e-2, 1.6e-2);
}

// Lengths that do not cover the rows are an error naming them.
TEST(BackendOps, CausalAttentionPackedChecksLengths) {
  DSEEK_REQUIRE_CUDA();
  std::mt19937 rng(38);
  const Tensor q = on_gpu(rand({10, 2, 64}, rng), DType::BF16);
  for (const std::vector<int64_t>& lengths :
       {std::vector<int64_t>{4, 5}, std::vector<int64_t>{4, 7}, std::vector<int64_t>{12, -2}}) {
    try {
      ops::causal_attention_packed(q, q, q, 0.1f, lengths);
      FAIL() << "no error";
    } catch (const Error& e) {
      EXPECT_NE(std::string(e.what()).find("packed sequences"), std::string::npos) << e.what();
    }
  }
}

// Head dims whose tiles do not fit a block's shared memory are refused with the op's name.
TEST(BackendOps, CausalAttentionHeadDimsBeyondSharedMemory) {
  DSEEK_REQUIRE_CUDA();
  std::mt19937 rng(24);
  const Tensor q = on_gpu(rand({2, 1, 8192}, rng)), k = on_gpu(rand({2, 1, 8192}, rng));
  try {
    ops::causal_attention(q, k, k, 0.01f);
    FAIL() << "no error";
  } catch (const Error& e) {
    EXPECT_EQ(std::string(e.what()).rfind("[attention]", 0), 0u) << e.what();
  }
}

}  // namespace
}  // namespace dseek::backend_test
