// MoE ops on CUDA against the CPU ops (ops/moe.h): routing for every gate variant (E up to 1024,
// T = 1 and 257, exact ties), dispatch on ragged loads (empty experts, one expert taking most
// slots, T = 1 / 257 / 4099), permute, grouped_linear forward and both gradients, combine forward
// and backward, f32 and bf16 activations, and the routed MoE composed from them. The CPU side of
// each comparison is itself checked in tests/test_moe_ops.cpp (routing against its rules, the
// composed MoE against MoE::forward).
//
// Ops that return fresh tensors cannot be handed poisoned outputs; before each of them the CUDA
// pool is given back NaN-filled blocks of the output sizes (poison_pool), so a row a kernel fails
// to write reads as NaN rather than as a stale correct value. grouped_linear_backward_dw writes
// into caller buffers, which are poisoned directly.
#include <algorithm>
#include <cstring>
#include <tuple>
#include <utility>

#include "backend/backend_harness.h"
#include "backend/grouped_kernels.h"
#include "ops/activation.h"
#include "ops/moe.h"
#include "ops/swiglu.h"
#include "test_util.h"
#ifdef DSEEK_HAS_CUDA
#include "ops/cuda/gemv.h"
#endif

namespace dseek::backend_test {
namespace {

using ops::MoeScoring;
using ops::MoeTopK;

// Hands NaN-filled blocks back to the pool, so that the next allocations of these sizes likely
// reuse them.
void poison_pool(std::initializer_list<int64_t> floats) {
  std::vector<Tensor> blocks;
  for (int64_t n : floats)
    blocks.push_back(Tensor::poisoned({std::max<int64_t>(n, 1)}, DType::F32, Device::CUDA));
}

std::vector<int32_t> ints(const Tensor& t) {
  const Tensor c = t.to(Device::CPU);
  const int32_t* p = c.data<int32_t>();
  return std::vector<int32_t>(p, p + c.numel());
}

std::vector<int64_t> longs(const Tensor& t) {
  const Tensor c = t.to(Device::CPU);
  const int64_t* p = c.data<int64_t>();
  return std::vector<int64_t>(p, p + c.numel());
}

Tensor ids_tensor(const std::vector<int32_t>& ids, int64_t T, int64_t K) {
  return Tensor::from_ids(ids).reshape({T, K});
}

// ---- routing -----------------------------------------------------------------------------------

struct RouteCase {
  const char* name;
  int64_t E, K;
  MoeScoring scoring;
  MoeTopK method;
  int64_t n_group, topk_group;
  bool normalise, scale;
  float factor;
  bool bias;
};

const RouteCase kRouteCases[] = {
    {"softmax greedy", 64, 6, MoeScoring::Softmax, MoeTopK::Greedy, 1, 1, false, true, 1.0f, false},
    {"softmax greedy norm", 16, 4, MoeScoring::Softmax, MoeTopK::Greedy, 1, 1, true, false, 1.0f,
     false},
    {"softmax top-1", 8, 1, MoeScoring::Softmax, MoeTopK::Greedy, 1, 1, true, false, 1.0f, false},
    {"softmax group_limited", 64, 6, MoeScoring::Softmax, MoeTopK::GroupLimitedGreedy, 8, 3, false,
     true, 16.0f, false},
    {"sigmoid noaux_tc", 256, 8, MoeScoring::Sigmoid, MoeTopK::NoauxTc, 8, 4, true, true, 2.5f,
     true},
    {"sigmoid noaux_tc no bias", 64, 6, MoeScoring::Sigmoid, MoeTopK::NoauxTc, 4, 2, true, true,
     2.5f, false},
    {"sigmoid noaux_tc E1024 G32", 1024, 8, MoeScoring::Sigmoid, MoeTopK::NoauxTc, 32, 5, true,
     true, 2.5f, true},
};

ops::MoeRouteParams params_of(const RouteCase& c) {
  ops::MoeRouteParams p;
  p.experts = c.E;
  p.top_k = c.K;
  p.scoring = c.scoring;
  p.method = c.method;
  p.n_group = c.n_group;
  p.topk_group = c.topk_group;
  p.normalise = c.normalise;
  p.scale = c.scale;
  p.routed_scaling_factor = c.factor;
  return p;
}

// Compares a GPU routing with the CPU's. Ids must agree, except where two experts' selection
// values (s, + bias for noaux_tc) are within 1e-6 of each other: there the GPU's expf (within 2
// ulp of the CPU's) may order a near-tie the other way. Such tokens are counted and skip the
// weight comparison.
void expect_same_routing(const std::string& what, const RouteCase& c, int64_t T,
                         const ops::MoeRouting& want, const ops::MoeRouting& got,
                         const std::vector<float>& bias) {
  const std::vector<int32_t> wi = ints(want.ids), gi = ints(got.ids);
  const std::vector<float> ws = want.scores.to_vector(), ww = want.weights.to_vector(),
                           gw = got.weights.to_vector();
  auto selection = [&](int64_t t, int32_t e) {
    return ws[size_t(t * c.E + e)] +
           (c.method == MoeTopK::NoauxTc && c.bias ? bias[size_t(e)] : 0.f);
  };
  int64_t near_ties = 0, bad = 0;
  std::vector<float> w_keep, g_keep;
  for (int64_t t = 0; t < T; ++t) {
    bool same = true, tie = true;
    for (int64_t k = 0; k < c.K; ++k) {
      const int32_t a = wi[size_t(t * c.K + k)], b = gi[size_t(t * c.K + k)];
      if (a == b) continue;
      same = false;
      if (b < 0 || b >= c.E || std::abs(selection(t, a) - selection(t, b)) > 1e-6f) tie = false;
    }
    if (same) {
      for (int64_t k = 0; k < c.K; ++k) {
        w_keep.push_back(ww[size_t(t * c.K + k)]);
        g_keep.push_back(gw[size_t(t * c.K + k)]);
      }
    } else if (tie) {
      ++near_ties;
    } else {
      ++bad;
      ADD_FAILURE() << what << ": token " << t << " routed differently, first id got "
                    << gi[size_t(t * c.K)] << " want " << wi[size_t(t * c.K)];
    }
  }
  std::printf("[backend] %-28s %-22s ids: %lld tokens, %lld near-ties, %lld differ\n",
              "moe_route ids", what.c_str(), (long long)T, (long long)near_ties, (long long)bad);
  EXPECT_LE(near_ties * 100, T) << what << ": too many near-ties to be rounding";
  const int64_t n = int64_t(w_keep.size());
  expect_close("moe_route weights", {n}, DType::F32, Tensor::from_vector(w_keep, {n}),
               Tensor::from_vector(g_keep, {n}), {1e-6, 1e-5});
  expect_close("moe_route scores", want.scores.shape(), DType::F32, want.scores, got.scores,
               {1e-7, 1e-5});
}

// Router logits [T, E] in [-4, 4] and a correction bias [E] in [-0.3, 0.3]; with `ties`, on grids
// of 0.5 and 0.05: many exact ties, which every routing must break toward the lower index.
std::pair<std::vector<float>, std::vector<float>> route_inputs(int64_t T, int64_t E, bool ties,
                                                               std::mt19937& rng) {
  std::vector<float> z = rand({T, E}, rng, 4.0f).to_vector();
  std::vector<float> bias = rand({E}, rng, 0.3f).to_vector();
  if (ties) {
    for (float& v : z) v = std::round(v * 2) / 2;
    for (float& v : bias) v = std::round(v * 20) / 20;
  }
  return {z, bias};
}

TEST(BackendOps, MoeRoute) {
  DSEEK_REQUIRE_CUDA();
  std::mt19937 rng(21);
  for (const RouteCase& c : kRouteCases) {
    for (int64_t T : {1, 257}) {
      for (bool ties : {false, true}) {
        const auto [z, bias] = route_inputs(T, c.E, ties, rng);
        const Tensor logits = Tensor::from_vector(z, {T, c.E}),
                     b = Tensor::from_vector(bias, {c.E});
        const ops::MoeRouting want = ops::moe_route(logits, params_of(c), c.bias ? b : Tensor());
        poison_pool({T * c.K, T * c.K, T * c.E});
        const ops::MoeRouting got =
            ops::moe_route(on_gpu(logits), params_of(c), c.bias ? on_gpu(b) : Tensor());
        EXPECT_TRUE(got.ids.is_cuda() && got.weights.is_cuda() && got.scores.is_cuda());
        const std::string what =
            std::string(c.name) + " T" + std::to_string(T) + (ties ? " ties" : "");
        expect_same_routing(what, c, T, want, got, bias);
      }
    }
  }
}

// A decode step's routing, dispatch and permutation in one kernel (ops::moe_route_permute): bit
// for bit the three ops on the GPU (every output: ids, weights, scores, offsets, order, position,
// x_perm), and through them the CPU's routing; every routing rule, 1 to 8 tokens, with ties; rows
// of 2048 (the block's 16-byte copies) and 2050 (its element loop: 4100 bf16 bytes).
TEST(BackendOps, MoeRoutePermuteSmall) {
  DSEEK_REQUIRE_CUDA();
  std::mt19937 rng(25);
  for (const RouteCase& c : kRouteCases) {
    if (c.E > 256) continue;  // the one-block kernel's limit; larger runs the three ops
    for (int64_t T : {1, 3, 8}) {
      for (bool ties : {false, true}) {
        const auto [z, bias] = route_inputs(T, c.E, ties, rng);
        const Tensor logits = on_gpu(Tensor::from_vector(z, {T, c.E}));
        const Tensor b = c.bias ? on_gpu(Tensor::from_vector(bias, {c.E})) : Tensor();
        for (const auto& [act, D] :
             {std::pair{DType::BF16, int64_t(2048)}, std::pair{DType::F32, int64_t(2048)},
              std::pair{DType::BF16, int64_t(2050)}}) {
          const Tensor x = on_gpu(rand({T, D + 8}, rng), act).slice(1, 0, D);  // strided
          poison_pool({T * c.K, T * c.K, T * c.E, c.E + 1, T * c.K * D});
          const ops::MoeRouted fused = ops::moe_route_permute(x, logits, params_of(c), b);
          ops::set_moe_small_route(false);
          const ops::MoeRouted apart = ops::moe_route_permute(x, logits, params_of(c), b);
          ops::set_moe_small_route(true);
          const std::string what =
              fmt::format("{} T{}{} {} D{}", c.name, T, ties ? " ties" : "", dtype_name(act), D);
          EXPECT_EQ(ints(fused.routing.ids), ints(apart.routing.ids)) << what;
          EXPECT_EQ(fused.routing.weights.to_vector(), apart.routing.weights.to_vector()) << what;
          EXPECT_EQ(fused.routing.scores.to_vector(), apart.routing.scores.to_vector()) << what;
          EXPECT_EQ(longs(fused.dispatch.offsets), longs(apart.dispatch.offsets)) << what;
          EXPECT_EQ(ints(fused.dispatch.order), ints(apart.dispatch.order)) << what;
          EXPECT_EQ(ints(fused.dispatch.position), ints(apart.dispatch.position)) << what;
          expect_close("moe_route_permute x_perm " + what, {T * c.K, D}, act,
                       apart.x_perm.to(Device::CPU), fused.x_perm, {0, 0});
          const ops::MoeRouting want = ops::moe_route(logits.to(Device::CPU), params_of(c),
                                                      c.bias ? b.to(Device::CPU) : Tensor());
          expect_same_routing("fused " + what, c, T, want, fused.routing, bias);
        }
      }
    }
  }
}

// The router backward: the CPU op's routing (ids, scores) fed to both sides, so the comparison
// sees only the kernel's own rounding (double sums in another order); with and without the extra
// score gradient, T = 1, 257 and 4099 (many blocks).
TEST(BackendOps, MoeRouteBackward) {
  DSEEK_REQUIRE_CUDA();
  std::mt19937 rng(27);
  for (const RouteCase& c : kRouteCases) {
    for (int64_t T : {1, 257, 4099}) {
      for (bool with_extra : {false, true}) {
        const ops::MoeRouteParams p = params_of(c);
        const ops::MoeRouting r = ops::moe_route(rand({T, c.E}, rng, 4.0f), p,
                                                 c.bias ? rand({c.E}, rng, 0.3f) : Tensor());
        const Tensor dweights = rand({T, c.K}, rng), extra = rand({T, c.E}, rng, 0.1f);
        const Tensor want =
            ops::moe_route_backward(r.scores, r.ids, dweights, p, with_extra ? extra : Tensor());
        poison_pool({T * c.E});
        const Tensor got =
            ops::moe_route_backward(on_gpu(r.scores), r.ids.to(Device::CUDA), on_gpu(dweights), p,
                                    with_extra ? on_gpu(extra) : Tensor());
        EXPECT_TRUE(got.is_cuda());
        expect_close(std::string("moe_route_backward ") + c.name + (with_extra ? " +ds" : ""),
                     {T, c.E}, DType::F32, want, got, {1e-6, 1e-5});
      }
    }
  }
}

// ---- dispatch ----------------------------------------------------------------------------------

// Distinct experts per token from the lower half (the upper half stays empty); with `hot`, expert
// 0 is in nine tokens of ten (one expert taking most of the load).
std::vector<int32_t> ragged_ids(int64_t T, int64_t E, int64_t K, bool hot, std::mt19937& rng) {
  std::vector<int32_t> ids;
  std::vector<int32_t> pool;
  for (int32_t e = 1; e < E / 2; ++e) pool.push_back(e);
  for (int64_t t = 0; t < T; ++t) {
    std::shuffle(pool.begin(), pool.end(), rng);
    for (int64_t k = 0; k < K; ++k)
      ids.push_back(hot && t % 10 != 0 && k == K - 1 ? 0 : pool[size_t(k)]);
  }
  return ids;
}

// Up to 2048 slots over up to 1024 experts take the one-block kernel (a decode step's dispatch),
// the rest histogram, scan and place kernels: both sides of both limits.
const std::tuple<int64_t, int64_t, int64_t> kDispatchShapes[] = {
    {1, 64, 6},    {257, 64, 6},  {257, 256, 8}, {4099, 256, 8}, {300, 8, 2},
    {341, 160, 6}, {342, 160, 6}, {3, 1024, 8},  {3, 1025, 8},   {128, 64, 16}};

TEST(BackendOps, MoeDispatch) {
  DSEEK_REQUIRE_CUDA();
  std::mt19937 rng(22);
  for (auto [T, E, K] : kDispatchShapes) {
    for (bool hot : {false, true}) {
      const Tensor ids = ids_tensor(ragged_ids(T, E, K, hot, rng), T, K);
      const ops::MoeDispatch want = ops::moe_dispatch(ids, E);
      poison_pool({E + 1, T * K, T * K});
      const ops::MoeDispatch got = ops::moe_dispatch(ids.to(Device::CUDA), E);
      const bool same = longs(got.offsets) == longs(want.offsets) &&
                        ints(got.order) == ints(want.order) &&
                        ints(got.position) == ints(want.position);
      std::printf("[backend] %-28s %-22s %s %s\n", "moe_dispatch",
                  describe_shape({T, K, E}).c_str(), hot ? "hot " : "flat", same ? "ok" : "FAIL");
      EXPECT_TRUE(same) << "T " << T << " E " << E << " K " << K << (hot ? " hot" : "");
    }
  }
}

TEST(BackendOps, MoeDispatchLeavesInvalidIdsUnplaced) {
  DSEEK_REQUIRE_CUDA();
  // Expert 5 and −1 do not exist among 4: those slots get no row (order/position −1), and
  // permute gives zeros for the rows left over.
  const Tensor ids = ids_tensor({0, 5, 2, -1}, 2, 2).to(Device::CUDA);
  const ops::MoeDispatch d = ops::moe_dispatch(ids, 4);
  EXPECT_EQ(longs(d.offsets), (std::vector<int64_t>{0, 1, 1, 2, 2}));
  EXPECT_EQ(ints(d.order), (std::vector<int32_t>{0, 2, -1, -1}));
  EXPECT_EQ(ints(d.position), (std::vector<int32_t>{0, -1, 1, -1}));
  const Tensor x = Tensor::from_vector({1, 2, 3, 4}, {2, 2});
  EXPECT_EQ(ops::moe_permute(x.to(Device::CUDA), d).to_vector(),
            (std::vector<float>{1, 2, 3, 4, 0, 0, 0, 0}));
}

// The same on both dispatch kernels (one block up to 2048 slots, three kernels above): every 7th
// slot names an expert out of range; the valid ones are placed stably by expert, the rest −1.
TEST(BackendOps, MoeDispatchLeavesInvalidIdsUnplacedAtAnySize) {
  DSEEK_REQUIRE_CUDA();
  for (int64_t N : {int64_t(700), int64_t(4100)}) {
    const int64_t E = 16;
    std::vector<int32_t> ids(static_cast<size_t>(N));
    for (int64_t s = 0; s < N; ++s)
      ids[size_t(s)] = s % 7 == 3 ? (s % 2 ? int32_t(E) : -1) : int32_t((s * 5) % E);
    std::vector<int64_t> offsets(size_t(E + 1), 0);
    for (int32_t id : ids)
      if (id >= 0 && id < E) ++offsets[size_t(id) + 1];
    for (int64_t e = 0; e < E; ++e) offsets[size_t(e) + 1] += offsets[size_t(e)];
    std::vector<int32_t> order(size_t(N), -1), position(size_t(N), -1);
    std::vector<int64_t> next(offsets.begin(), offsets.end() - 1);
    for (int64_t s = 0; s < N; ++s) {
      const int32_t id = ids[size_t(s)];
      if (id < 0 || id >= E) continue;
      const int64_t i = next[size_t(id)]++;
      order[size_t(i)] = int32_t(s);
      position[size_t(s)] = int32_t(i);
    }
    poison_pool({E + 1, N, N});
    const ops::MoeDispatch d = ops::moe_dispatch(ids_tensor(ids, N, 1).to(Device::CUDA), E);
    EXPECT_EQ(longs(d.offsets), offsets) << N << " slots";
    EXPECT_EQ(ints(d.order), order) << N << " slots";
    EXPECT_EQ(ints(d.position), position) << N << " slots";
  }
}

// ---- permute, grouped_linear, combine ----------------------------------------------------------

// The forward of few rows per expert (T·K ≤ 8·E) takes the weight-streaming kernel
// (grouped_gemv.cu): the first case (6 rows), the last (bf16 rows of 136 = 17 vectors of 8,
// experts of more than 8 rows so several passes) and the 7×5 one (scalar loads). Otherwise bf16
// activations whose row lengths (in, out) are multiples of 8 take the tensor-core kernels
// (128 × 128 tiles: persistent warp-specialised wgmma with k steps of 64 on Hopper, mma.sync with
// steps of 32; every family this machine has is checked), the others and f32 the SIMT
// ones; dx and dW never take the weight-streaming kernel. ragged_ids leaves experts E/2 .. E − 1
// empty; hot sends most tokens to expert 0.
struct GemmCase {
  int64_t T, E, K, in, out;
  bool hot;
};
const GemmCase kGemmCases[] = {
    {1, 64, 6, 128, 96, false},    // forward: weight streaming; dx, dW: tensor cores
    {257, 64, 6, 72, 40, false},   // tensor cores: k and n tails inside one tile
    {257, 256, 8, 64, 48, true},   // tensor cores: 200+ empty experts, one hot expert
    {683, 32, 6, 256, 384, true},  // tensor cores: N = 4098, several full tiles per expert
    {300, 8, 2, 200, 130, true},   // SIMT fallback: out not a multiple of 8
    {33, 16, 3, 7, 5, false},      // forward: weight streaming, scalar loads; else SIMT
    {40, 16, 3, 136, 72, true},    // forward: weight streaming, several passes; else tensor cores
    {2, 16, 4, 1032, 64, false},   // forward: experts of one row (several loads in flight a lane,
                                   // a partial k pass) beside experts of two (the chunk loop)
};

// The down projection over a stacked gate_up product: the CPU's silu_mul then grouped_linear
// against the GPU's one kernel (few rows per expert in bf16 with aligned rows: h computed as the
// kernel reads it) or its two ops (the rest); and on the GPU, the fused kernel must give the
// same bits as its own silu_mul followed by grouped_linear (the same rounding of h, the same
// GEMV). Rows of I = in (the cases' input width) in each half.
TEST(BackendOps, GroupedLinearSwiglu) {
  DSEEK_REQUIRE_CUDA();
  std::mt19937 rng(26);
  for (DType act : kActDtypes) {
    for (const GemmCase& c : kGemmCases) {
      const int64_t N = c.T * c.K, I = c.in;
      const Tensor ids = ids_tensor(ragged_ids(c.T, c.E, c.K, c.hot, rng), c.T, c.K);
      const ops::MoeDispatch dc = ops::moe_dispatch(ids, c.E);
      const Tensor offsets = dc.offsets.to(Device::CUDA);
      std::vector<Tensor> w_cpu, w_gpu;
      for (int64_t e = 0; e < c.E; ++e) {
        const Tensor w = rounded(rand({c.out, I}, rng, 1.0f / std::sqrt(float(I))), act);
        w_cpu.push_back(w);
        w_gpu.push_back(on_gpu(w, act));
      }
      const ops::ExpertMatrices wc = ops::expert_matrices(w_cpu), wg = ops::expert_matrices(w_gpu);
      const Tensor gu = rand({N, 2 * I}, rng, 3.0f);
      const Tensor gu_c = rounded(gu, act);
      const Tensor want = ops::grouped_linear_swiglu(gu_c, wc, dc.offsets);
      EXPECT_EQ(want.to_vector(),
                ops::grouped_linear(ops::silu_mul(gu_c.slice(1, 0, I), gu_c.slice(1, I, 2 * I)), wc,
                                    dc.offsets)
                    .to_vector());
      const Tensor gu_g = on_gpu(gu, act);
      poison_pool({N * c.out});
      const Tensor got = ops::grouped_linear_swiglu(gu_g, wg, offsets);
      expect_close("grouped_linear_swiglu", {N, c.E, I, c.out}, act, want, got);
      const Tensor two_ops = ops::grouped_linear(
          ops::silu_mul(gu_g.slice(1, 0, I), gu_g.slice(1, I, 2 * I)), wg, offsets);
      EXPECT_EQ(got.to_vector(), two_ops.to_vector())
          << "fused and two-op GPU results differ at N " << N << " in " << I;
#ifdef DSEEK_HAS_CUDA
      ops::cuda::set_gemv_swiglu_shared(false);  // h recomputed by every warp: the same bits
      const Tensor recomputed = ops::grouped_linear_swiglu(gu_g, wg, offsets);
      ops::cuda::set_gemv_swiglu_shared(true);
      EXPECT_EQ(got.to_vector(), recomputed.to_vector())
          << "h in shared memory and recomputed differ at N " << N << " in " << I;
#endif
    }
  }
}

TEST(BackendOps, MoePermute) {
  DSEEK_REQUIRE_CUDA();
  std::mt19937 rng(23);
  for (DType act : kActDtypes) {
    for (const GemmCase& c : kGemmCases) {
      const Tensor ids = ids_tensor(ragged_ids(c.T, c.E, c.K, c.hot, rng), c.T, c.K);
      const ops::MoeDispatch dc = ops::moe_dispatch(ids, c.E);
      const ops::MoeDispatch dg = ops::moe_dispatch(ids.to(Device::CUDA), c.E);
      const Tensor x = rand({c.T, c.in}, rng), g = rand({c.T * c.K, c.in}, rng);
      poison_pool({c.T * c.K * c.in});
      const Tensor got = ops::moe_permute(on_gpu(x, act), dg);
      expect_close("moe_permute", {c.T, c.K, c.in}, act, ops::moe_permute(rounded(x, act), dc), got,
                   {0, 0});
      poison_pool({c.T * c.in});
      const Tensor dx = ops::moe_permute_backward(on_gpu(g, act), dg);
      expect_close("moe_permute_backward", {c.T, c.K, c.in}, act,
                   ops::moe_permute_backward(rounded(g, act), dc), dx);
    }
  }
}

TEST(BackendOps, GroupedLinear) {
  DSEEK_REQUIRE_CUDA();
  std::mt19937 rng(24);
  for (DType act : kActDtypes) {
    for (const GemmCase& c : kGemmCases) {
      const Shape shape{c.T * c.K, c.E, c.in, c.out};
      const Tensor ids = ids_tensor(ragged_ids(c.T, c.E, c.K, c.hot, rng), c.T, c.K);
      const ops::MoeDispatch dc = ops::moe_dispatch(ids, c.E);
      const Tensor offsets = dc.offsets.to(Device::CUDA);
      const int64_t N = c.T * c.K;
      std::vector<Tensor> w_cpu, w_gpu;
      for (int64_t e = 0; e < c.E; ++e) {
        const Tensor w = rounded(rand({c.out, c.in}, rng, 1.0f / std::sqrt(float(c.in))), act);
        w_cpu.push_back(w);
        w_gpu.push_back(on_gpu(w, act));
      }
      const ops::ExpertMatrices wc = ops::expert_matrices(w_cpu), wg = ops::expert_matrices(w_gpu);
      const Tensor x = rand({N, c.in}, rng), dy = rand({N, c.out}, rng);
      const Shape dw_shape{c.E, c.out, c.in};
      const Tensor base = rand(dw_shape, rng);

      // The CPU side once: y, dx, dW overwritten (into poisoned buffers: empty experts must
      // become zeros) and dW accumulated into a stacked f32 gradient.
      const Tensor y_want = ops::grouped_linear(rounded(x, act), wc, dc.offsets);
      const Tensor dx_want = ops::grouped_linear_backward_dx(rounded(dy, act), wc, dc.offsets);
      std::vector<Tensor> dw_cpu;
      for (int64_t e = 0; e < c.E; ++e) dw_cpu.push_back(Tensor::poisoned({c.out, c.in}));
      double squares_cpu = NAN;
      ops::grouped_linear_backward_dw(rounded(x, act), rounded(dy, act), dc.offsets,
                                      ops::expert_matrices(dw_cpu), false, &squares_cpu);
      expect_relative("grouped_linear dW squares (CPU)", squares_cpu, squares_of(dw_cpu), 1e-12);
      std::vector<float> want_all;
      for (const Tensor& t : dw_cpu) {
        const std::vector<float> a = t.to_vector();
        want_all.insert(want_all.end(), a.begin(), a.end());
      }
      const Tensor acc_cpu = base.clone();
      ops::grouped_linear_backward_dw(rounded(x, act), rounded(dy, act), dc.offsets,
                                      ops::expert_matrices(acc_cpu), true);

      for (const GroupedKernel& k : grouped_kernels()) {
        if (act != DType::BF16 && k.wgmma) continue;  // f32 runs the SIMT kernels
        const UseGroupedKernel use(k);                // cp.async / TMA: the wgrad's two forms
        poison_pool({N * c.out});
        expect_close(labelled("grouped_linear", k), shape, act, y_want,
                     ops::grouped_linear(on_gpu(x, act), wg, offsets));
        poison_pool({N * c.in});
        expect_close(labelled("grouped_linear dx", k), shape, act, dx_want,
                     ops::grouped_linear_backward_dx(on_gpu(dy, act), wg, offsets));

        std::vector<Tensor> dw_gpu, dw_again;
        for (int64_t e = 0; e < c.E; ++e) {
          dw_gpu.push_back(Tensor::poisoned({c.out, c.in}, DType::F32, Device::CUDA));
          dw_again.push_back(Tensor::poisoned({c.out, c.in}, DType::F32, Device::CUDA));
        }
        // With the squares of what is written (fused into the wgmma kernel, a second pass
        // elsewhere): Σ dW² of the GPU's own dW up to the order of the sums, and the CPU's up
        // to the GEMMs' rounding.
        const Tensor squares = nan_double_on_gpu();
        ops::grouped_linear_backward_dw(on_gpu(x, act), on_gpu(dy, act), offsets,
                                        ops::expert_matrices(dw_gpu), false,
                                        static_cast<double*>(squares.raw()));
        expect_relative(labelled("grouped_linear dW squares", k), double_of(squares),
                        squares_of(dw_gpu), 1e-12);
        expect_relative(labelled("grouped_linear dW squares vs CPU", k), double_of(squares),
                        squares_cpu, 2e-3);
        std::vector<float> got_all;
        for (const Tensor& t : dw_gpu) {
          const std::vector<float> b = t.to_vector();
          got_all.insert(got_all.end(), b.begin(), b.end());
        }
        expect_close(labelled("grouped_linear dW", k), shape, act,
                     Tensor::from_vector(want_all, dw_shape),
                     Tensor::from_vector(got_all, dw_shape), {1e-3, 1e-3});
        // Deterministic: a second run into fresh poisoned buffers gives the same bits.
        ops::grouped_linear_backward_dw(on_gpu(x, act), on_gpu(dy, act), offsets,
                                        ops::expert_matrices(dw_again), false);
        int64_t differ = 0;
        for (int64_t e = 0; e < c.E; ++e) {
          const std::vector<float> a = dw_gpu[size_t(e)].to_vector(),
                                   b = dw_again[size_t(e)].to_vector();
          if (std::memcmp(a.data(), b.data(), a.size() * sizeof(float)) != 0) ++differ;
        }
        std::printf("[backend] %-28s %-22s %-4s %lld experts differ between runs %s\n",
                    labelled("grouped_linear dW repeat", k).c_str(), describe_shape(shape).c_str(),
                    std::string(dtype_name(act)).c_str(), (long long)differ,
                    differ ? "FAIL" : "ok");
        EXPECT_EQ(differ, 0) << "grouped_linear dW not deterministic, " << describe_shape(shape)
                             << " " << dtype_name(act) << " " << k.label;
        const Tensor acc_gpu = base.to(Device::CUDA);
        const Tensor acc_squares = nan_double_on_gpu();
        ops::grouped_linear_backward_dw(on_gpu(x, act), on_gpu(dy, act), offsets,
                                        ops::expert_matrices(acc_gpu), true,
                                        static_cast<double*>(acc_squares.raw()));
        expect_close(labelled("grouped_linear dW (+=)", k), shape, act, acc_cpu, acc_gpu,
                     {1e-3, 1e-3});
        expect_relative(labelled("grouped_linear dW (+=) squares", k), double_of(acc_squares),
                        squares_of({acc_gpu}), 1e-12);
      }
    }
  }
}

// The bf16 grouped GEMMs' TMA kernels (persistent, warp-specialised) against the cp.async ones:
// the same products in the same order, so the same bits — the forward and dx over experts that
// are separate tensors (a tensor map each), the wgrad written and added (its expert's last partial
// step zeroed in shared memory), its squares up to their order. Offsets with empty experts,
// experts of one row, rows that do not start on a step, and tiles past out and in.
TEST(BackendOps, GroupedTmaEqualsCpAsync) {
  DSEEK_REQUIRE_CUDA();
#ifdef DSEEK_HAS_CUDA
  if (!ops::cuda::grouped_wgmma_available())
    GTEST_SKIP() << "no wgmma here (not an sm_90a build on a Hopper)";
  std::mt19937 rng(58);
  struct Case {
    int64_t out, in;
    std::vector<int64_t> offsets;
  };
  const bool before_wgmma = ops::cuda::grouped_gemm_wgmma(), before_tma = ops::cuda::tma_loads();
  ops::cuda::set_grouped_gemm_wgmma(true);
  auto report = [](const std::string& what, const std::vector<float>& a,
                   const std::vector<float>& b) {
    int64_t differ = 0, not_finite = 0;
    for (size_t i = 0; i < a.size(); ++i) {
      if (std::memcmp(&a[i], &b[i], sizeof(float)) != 0) ++differ;
      if (!std::isfinite(b[i])) ++not_finite;
    }
    std::printf("[backend] %-60s %lld of %zu differ, %lld not finite %s\n", what.c_str(),
                (long long)differ, a.size(), (long long)not_finite,
                differ || not_finite ? "FAIL" : "ok");
    EXPECT_EQ(differ, 0) << what;
    EXPECT_EQ(not_finite, 0) << what;
  };
  for (const Case& c : std::vector<Case>{{40, 48, {0, 0, 130, 131, 400, 533, 533}},
                                         {1408, 2048, {0, 300, 301, 301, 765}},
                                         {2048, 1408, {0, 1, 129, 500}},
                                         {264, 136, {0, 64, 128, 129, 1000}}}) {
    const int64_t E = int64_t(c.offsets.size()) - 1, N = c.offsets.back();
    const std::string shape = " out " + std::to_string(c.out) + " in " + std::to_string(c.in) +
                              " N " + std::to_string(N) + " E " + std::to_string(E);
    const Tensor x = on_gpu(rand({N, c.in}, rng), DType::BF16);
    const Tensor dy = on_gpu(rand({N, c.out}, rng), DType::BF16);
    const Tensor offsets = Tensor::from_i64(c.offsets).to(Device::CUDA);
    std::vector<Tensor> w;
    for (int64_t e = 0; e < E; ++e)
      w.push_back(on_gpu(rand({c.out, c.in}, rng, 1.0f / std::sqrt(float(c.in))), DType::BF16));
    const ops::ExpertMatrices wm = ops::expert_matrices(w);
    EXPECT_TRUE(wm.tma_maps.defined()) << "no tensor maps for aligned bf16 experts";
    std::vector<float> y[2], dx[2];
    for (int tma = 0; tma < 2; ++tma) {
      ops::cuda::set_tma_loads(tma == 1);
      poison_pool({N * c.out, N * c.in});
      y[tma] = ops::grouped_linear(x, wm, offsets).to(DType::F32).to_vector();
      dx[tma] = ops::grouped_linear_backward_dx(dy, wm, offsets).to(DType::F32).to_vector();
    }
    report("grouped forward, TMA vs cp.async" + shape, y[0], y[1]);
    report("grouped dx, TMA vs cp.async" + shape, dx[0], dx[1]);

    // dW written (the TMA kernel's bulk copies), added with the squares (its stores, which read
    // the old values) and added without them (its bulk copies' adds in L2).
    const Tensor base = rand({E, c.out, c.in}, rng);
    for (int mode = 0; mode < 3; ++mode) {
      const bool accumulate = mode > 0, with_squares = mode < 2;
      const std::string what = mode == 0   ? "grouped dW"
                               : mode == 1 ? "grouped dW (+=)"
                                           : "grouped dW (+=, no squares)";
      std::vector<float> got[2];
      for (int tma = 0; tma < 2; ++tma) {
        ops::cuda::set_tma_loads(tma == 1);
        const Tensor dw = accumulate ? base.to(Device::CUDA)
                                     : Tensor::poisoned({E, c.out, c.in}, DType::F32, Device::CUDA);
        const Tensor sq = nan_double_on_gpu();
        ops::grouped_linear_backward_dw(x, dy, offsets, ops::expert_matrices(dw), accumulate,
                                        with_squares ? static_cast<double*>(sq.raw()) : nullptr);
        got[tma] = dw.to_vector();
        // Sums of up to 11.5 M squares in two orders (each double sum is within ~n·2⁻⁵³ of
        // exact; measured up to 2.7e-12 apart).
        if (with_squares)
          expect_relative(what + " squares, TMA / cp.async", double_of(sq), squares_of({dw}),
                          1e-10);
      }
      report(what + ", TMA vs cp.async" + shape, got[0], got[1]);
    }
  }
  ops::cuda::set_grouped_gemm_wgmma(before_wgmma);
  ops::cuda::set_tma_loads(before_tma);
#endif
}

// bf16 expert gradients (ParamSet::bf16_expert_grads): the TMA kernel's rounded stores and the
// other kernels' f32 result rounded afterwards both give each f32 dW (old values added in f32
// first) rounded once to nearest even, and the squares of the stored values.
TEST(BackendOps, GroupedDwIntoBf16IsTheF32OneRounded) {
  DSEEK_REQUIRE_CUDA();
#ifdef DSEEK_HAS_CUDA
  std::mt19937 rng(61);
  const bool before_wgmma = ops::cuda::grouped_gemm_wgmma(), before_tma = ops::cuda::tma_loads();
  struct Case {
    int64_t out, in;
    std::vector<int64_t> offsets;
  };
  for (const Case& c : std::vector<Case>{{40, 48, {0, 0, 130, 131, 400, 533, 533}},
                                         {1408, 2048, {0, 300, 301, 301, 765}},
                                         {264, 136, {0, 64, 128, 129, 1000}}}) {
    const int64_t E = int64_t(c.offsets.size()) - 1, N = c.offsets.back();
    const std::string shape = " out " + std::to_string(c.out) + " in " + std::to_string(c.in) +
                              " N " + std::to_string(N) + " E " + std::to_string(E);
    const Tensor x = on_gpu(rand({N, c.in}, rng), DType::BF16);
    const Tensor dy = on_gpu(rand({N, c.out}, rng), DType::BF16);
    const Tensor offsets = Tensor::from_i64(c.offsets).to(Device::CUDA);
    // The old gradients of the accumulating case, bf16 values (exact in both dtypes).
    const Tensor base = rand({E, c.out, c.in}, rng).to(DType::BF16);
    // kernel 0: the TMA kernel (where the GPU has one), 1: cp.async wgmma, 2: no wgmma
    for (int kernel = 0; kernel < 3; ++kernel) {
      const bool wgmma = kernel < 2 && ops::cuda::grouped_wgmma_available();
      if (kernel < 2 && !wgmma) continue;
      ops::cuda::set_grouped_gemm_wgmma(wgmma);
      ops::cuda::set_tma_loads(kernel == 0);
      const std::string name = kernel == 0 ? "TMA" : kernel == 1 ? "cp.async" : "mma.sync";
      for (const bool accumulate : {false, true}) {
        const Tensor dw32 = accumulate
                                ? base.to(DType::F32).to(Device::CUDA)
                                : Tensor::poisoned({E, c.out, c.in}, DType::F32, Device::CUDA);
        const Tensor dw16 = accumulate
                                ? base.to(Device::CUDA)
                                : Tensor::poisoned({E, c.out, c.in}, DType::BF16, Device::CUDA);
        ops::grouped_linear_backward_dw(x, dy, offsets, ops::expert_matrices(dw32), accumulate);
        const Tensor sq = nan_double_on_gpu();
        std::vector<Tensor> experts;  // dw16's matrices, as the trainer's separate gradients
        for (int64_t e = 0; e < E; ++e)
          experts.push_back(dw16.slice(0, e, e + 1).reshape({c.out, c.in}));
        ops::grouped_linear_backward_dw(x, dy, offsets, ops::expert_matrices(experts), accumulate,
                                        static_cast<double*>(sq.raw()));
        const std::vector<float> want = dw32.to(DType::BF16).to(DType::F32).to_vector();
        const std::vector<float> got = dw16.to(DType::F32).to_vector();
        int64_t differ = 0;
        for (size_t i = 0; i < want.size(); ++i)
          if (std::memcmp(&want[i], &got[i], sizeof(float)) != 0) ++differ;
        const std::string what =
            std::string("grouped dW into bf16") + (accumulate ? " (+=), " : ", ") + name + shape;
        std::printf("[backend] %-60s %lld of %zu differ from the f32 dW rounded %s\n", what.c_str(),
                    (long long)differ, want.size(), differ ? "FAIL" : "ok");
        EXPECT_EQ(differ, 0) << what;
        expect_relative(what + " squares", double_of(sq), squares_of({dw16.to(DType::F32)}), 1e-10);
      }
    }
  }
  ops::cuda::set_grouped_gemm_wgmma(before_wgmma);
  ops::cuda::set_tma_loads(before_tma);
#endif
}

// Expert matrices as column slices of a stacked [E, out, in + 8] tensor: row stride in + 8, and
// with offset 1 every matrix starts 2 bytes past a 16-byte boundary (bf16: the tensor-core
// kernels read such weights with plain loads instead of cp.async).
TEST(BackendOps, GroupedLinearStridedWeights) {
  DSEEK_REQUIRE_CUDA();
  std::mt19937 rng(25);
  const int64_t T = 200, E = 8, K = 2, in = 64, out = 96, N = T * K;
  for (DType act : kActDtypes) {
    for (int64_t offset : {0, 1}) {
      const Shape shape{N, E, in, out, offset};
      const Tensor ids = ids_tensor(ragged_ids(T, E, K, true, rng), T, K);
      const ops::MoeDispatch dc = ops::moe_dispatch(ids, E);
      const Tensor offsets = dc.offsets.to(Device::CUDA);
      const Tensor full = rounded(rand({E, out, in + 8}, rng, 0.125f), act);
      const ops::ExpertMatrices wc = ops::expert_matrices(full.slice(2, offset, offset + in));
      const ops::ExpertMatrices wg =
          ops::expert_matrices(on_gpu(full, act).slice(2, offset, offset + in));
      const Tensor x = rand({N, in}, rng), dy = rand({N, out}, rng);
      const Tensor y_want = ops::grouped_linear(rounded(x, act), wc, dc.offsets);
      const Tensor dx_want = ops::grouped_linear_backward_dx(rounded(dy, act), wc, dc.offsets);
      for (const GroupedKernel& k : grouped_kernels()) {
        if (act != DType::BF16 && k.wgmma) continue;
        if (k.wgmma && !k.tma) continue;
        const UseGroupedKernel use(k);
        poison_pool({N * out});
        expect_close(labelled("grouped_linear strided W", k), shape, act, y_want,
                     ops::grouped_linear(on_gpu(x, act), wg, offsets));
        poison_pool({N * in});
        expect_close(labelled("grouped_linear dx strided W", k), shape, act, dx_want,
                     ops::grouped_linear_backward_dx(on_gpu(dy, act), wg, offsets));
      }
    }
  }
}

TEST(BackendOps, MoeCombine) {
  DSEEK_REQUIRE_CUDA();
  std::mt19937 rng(25);
  for (DType act : kActDtypes) {
    for (const GemmCase& c : kGemmCases) {
      const int64_t D = c.out, N = c.T * c.K;
      const Shape shape{c.T, c.K, D};
      const Tensor ids = ids_tensor(ragged_ids(c.T, c.E, c.K, c.hot, rng), c.T, c.K);
      const ops::MoeDispatch dc = ops::moe_dispatch(ids, c.E);
      const ops::MoeDispatch dg = ops::moe_dispatch(ids.to(Device::CUDA), c.E);
      const Tensor y = rand({N, D}, rng), w = rand({c.T, c.K}, rng), add = rand({c.T, D}, rng),
                   dout = rand({c.T, D}, rng);
      for (bool with_add : {false, true}) {
        poison_pool({c.T * D});
        const Tensor got = ops::moe_combine(on_gpu(y, act), w.to(Device::CUDA), dg,
                                            with_add ? on_gpu(add, act) : Tensor());
        expect_close(
            with_add ? "moe_combine (+ add)" : "moe_combine", shape, act,
            ops::moe_combine(rounded(y, act), w, dc, with_add ? rounded(add, act) : Tensor()), got);
      }
      const ops::MoeCombineGrads want =
          ops::moe_combine_backward(rounded(y, act), w, dc, rounded(dout, act));
      poison_pool({N * D, N});
      const ops::MoeCombineGrads got =
          ops::moe_combine_backward(on_gpu(y, act), w.to(Device::CUDA), dg, on_gpu(dout, act));
      expect_close("moe_combine_backward dy", shape, act, want.dy_perm, got.dy_perm);
      expect_close("moe_combine_backward dw", shape, act, want.dweights, got.dweights,
                   {1e-4, 1e-4});
    }
  }
}

// The end of a MoE layer in one kernel (ops::moe_combine_add_rms_norm: the combine, the residual
// add and the next layer's norm): the same bits as the GPU's two ops (moe_combine, add_rms_norm)
// into poisoned memory, and close to the CPU's, over the GEMM cases' ragged routings and a decode
// step's shape (one token, 6 of 64 experts, 2048 columns), with and without the shared experts'
// row, f32 and bf16 norm weights.
TEST(BackendOps, MoeCombineAddRmsNormIsTheTwoOps) {
  DSEEK_REQUIRE_CUDA();
  std::mt19937 rng(26);
  std::vector<GemmCase> cases(std::begin(kGemmCases), std::end(kGemmCases));
  cases.push_back({1, 64, 6, 1408, 2048, false});
  const auto bytes = [](const Tensor& t) {
    const Tensor h = t.to(Device::CPU);
    return std::string(static_cast<const char*>(h.raw()), size_t(h.nbytes()));
  };
  for (DType act : kActDtypes) {
    for (const GemmCase& c : cases) {
      const int64_t D = c.out, N = c.T * c.K;
      const Shape shape{c.T, c.K, D};
      const Tensor ids = ids_tensor(ragged_ids(c.T, c.E, c.K, c.hot, rng), c.T, c.K);
      const ops::MoeDispatch dc = ops::moe_dispatch(ids, c.E);
      const ops::MoeDispatch dg = ops::moe_dispatch(ids.to(Device::CUDA), c.E);
      const Tensor y = rand({N, D}, rng), w = rand({c.T, c.K}, rng), add = rand({c.T, D}, rng),
                   residual = rand({c.T, D}, rng, 4.0f), norm_w = rand({D}, rng);
      for (bool with_add : {false, true})
        for (DType w_dtype : {DType::F32, DType::BF16}) {
          const std::string what = std::string("moe_combine_add_rms_norm") +
                                   (with_add ? " (+ add)" : "") + ", " +
                                   std::string(dtype_name(w_dtype)) + " norm weight";
          const Tensor nw = rounded(norm_w, w_dtype);
          Tensor normed_want;
          const Tensor want = ops::moe_combine_add_rms_norm(
              rounded(y, act), w, dc, with_add ? rounded(add, act) : Tensor(),
              rounded(residual, act), nw, 1e-6, normed_want);
          const auto on_device = [&](bool fused, Tensor& normed) {
            const ScopedSwitch s(ops::moe_combine_norm_fused, ops::set_moe_combine_norm_fused,
                                 fused);
            poison_pool({c.T * D, c.T * D});
            return ops::moe_combine_add_rms_norm(
                on_gpu(y, act), w.to(Device::CUDA), dg, with_add ? on_gpu(add, act) : Tensor(),
                on_gpu(residual, act), nw.to(Device::CUDA), 1e-6, normed);
          };
          Tensor normed_two, normed_one;
          const Tensor two = on_device(false, normed_two), one = on_device(true, normed_one);
          EXPECT_TRUE(bytes(one) == bytes(two)) << what << ": the sum, T " << c.T << " D " << D;
          EXPECT_TRUE(bytes(normed_one) == bytes(normed_two))
              << what << ": the norm, T " << c.T << " D " << D;
          expect_close(what + ": sum", shape, act, want, one);
          expect_close(what + ": norm", shape, act, normed_want, normed_one);
        }
    }
  }
  // Bad inputs to the fused kernel: errors naming the op and the tensor at fault.
  const ScopedSwitch fused(ops::moe_combine_norm_fused, ops::set_moe_combine_norm_fused, true);
  const Tensor ids = ids_tensor({1, 2, 3, 0}, 2, 2);
  const ops::MoeDispatch dg = ops::moe_dispatch(ids.to(Device::CUDA), 4);
  const Tensor y = on_gpu(rand({4, 8}, rng), DType::BF16), w = rand({2, 2}, rng).to(Device::CUDA);
  const Tensor residual = on_gpu(rand({2, 8}, rng), DType::BF16);
  const Tensor norm_w = rand({8}, rng).to(Device::CUDA);
  const auto error = [&](const Tensor& r, const Tensor& nw, double eps) {
    Tensor normed;
    return dseek::testing::error_of(
        [&] { (void)ops::moe_combine_add_rms_norm(y, w, dg, Tensor(), r, nw, eps, normed); });
  };
  EXPECT_EQ(error(residual, norm_w, 1e-6), "(no error)");
  EXPECT_NE(error(on_gpu(rand({2, 7}, rng), DType::BF16), norm_w, 1e-6)
                .find("[moe_combine_add_rms_norm] residual: [2, 7] bf16, expected [2, 8] bf16"),
            std::string::npos);
  EXPECT_NE(error(Tensor(), norm_w, 1e-6).find("residual: undefined"), std::string::npos);
  EXPECT_NE(error(residual, rand({7}, rng).to(Device::CUDA), 1e-6)
                .find("norm weight [7] f32, expected [8] f32 or bf16"),
            std::string::npos);
  EXPECT_NE(error(residual, norm_w, -1.0).find("negative eps"), std::string::npos);
  EXPECT_NE(error(residual.to(Device::CPU), norm_w, 1e-6).find("tensors on different devices"),
            std::string::npos);
}

// route → dispatch → permute → grouped_linear (gate, up) → silu_mul → grouped_linear (down) →
// combine (+ a shared-expert output), all on the GPU, against the same chain of CPU ops
// (tests/test_moe_ops.cpp: equal to MoE::forward).
Tensor routed_moe(const Tensor& logits, const Tensor& bias, const ops::MoeRouteParams& p,
                  const Tensor& x, const std::vector<Tensor>& gate_w,
                  const std::vector<Tensor>& up_w, const std::vector<Tensor>& down_w,
                  const Tensor& shared, Tensor* ids_out) {
  const ops::MoeRouting r = ops::moe_route(logits, p, bias);
  *ids_out = r.ids;
  const ops::MoeDispatch d = ops::moe_dispatch(r.ids, p.experts);
  const Tensor x_perm = ops::moe_permute(x, d);
  const Tensor h =
      ops::silu_mul(ops::grouped_linear(x_perm, ops::expert_matrices(gate_w), d.offsets),
                    ops::grouped_linear(x_perm, ops::expert_matrices(up_w), d.offsets));
  const Tensor y_perm = ops::grouped_linear(h, ops::expert_matrices(down_w), d.offsets);
  return ops::moe_combine(y_perm, r.weights, d, shared);
}

TEST(BackendOps, MoeComposed) {
  DSEEK_REQUIRE_CUDA();
  std::mt19937 rng(26);
  const int64_t T = 64, D = 96, I = 40, E = 16, K = 4;
  ops::MoeRouteParams p;
  p.experts = E;
  p.top_k = K;
  p.scoring = MoeScoring::Sigmoid;
  p.method = MoeTopK::NoauxTc;
  p.n_group = 4;
  p.topk_group = 2;
  p.normalise = true;
  p.scale = true;
  p.routed_scaling_factor = 2.5f;
  for (DType act : kActDtypes) {
    std::vector<Tensor> gc, uc, dc, gg, ug, dg;
    for (int64_t e = 0; e < E; ++e) {
      for (auto [cpu, gpu, rows, cols] :
           {std::tuple{&gc, &gg, I, D}, std::tuple{&uc, &ug, I, D}, std::tuple{&dc, &dg, D, I}}) {
        const Tensor w = rounded(rand({rows, cols}, rng, 1.0f / std::sqrt(float(cols))), act);
        cpu->push_back(w);
        gpu->push_back(on_gpu(w, act));
      }
    }
    const Tensor logits = rand({T, E}, rng, 3.0f), bias = rand({E}, rng, 0.2f);
    const Tensor x = rand({T, D}, rng), shared = rand({T, D}, rng);
    Tensor ids_cpu, ids_gpu;
    const Tensor want =
        routed_moe(logits, bias, p, rounded(x, act), gc, uc, dc, rounded(shared, act), &ids_cpu);
    const Tensor got = routed_moe(on_gpu(logits), on_gpu(bias), p, on_gpu(x, act), gg, ug, dg,
                                  on_gpu(shared, act), &ids_gpu);
    ASSERT_EQ(ints(ids_cpu), ints(ids_gpu)) << "routing differs (a near-tie?)";
    // bf16: the GPU rounds the gate/up/down outputs to bf16, the CPU chain keeps them in f32.
    expect_close("moe composed", {T, D, E, K}, act, want, got,
                 act == DType::BF16 ? Tolerance{4e-2, 4e-2} : default_tolerance(act));
  }
}

}  // namespace
}  // namespace dseek::backend_test
