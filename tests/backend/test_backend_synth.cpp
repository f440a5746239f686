// Lowered synthesised operators (synth/lower.h) on CUDA against the same plan on the CPU: the
// plan is device-agnostic (gathers through embedding, contractions through batched_matmul over
// strided views or linear and grouped_linear on copies, sums, broadcasts and permutes through
// Tensor copies), so the forward and every gradient of the backward must agree within f32 GEMM
// rounding — for the classic layers, for the operators around each lowering path, at awkward and
// larger sizes, for the operator files of docs/synth-ops, and for random operators.
#include <fstream>
#include <sstream>

#include "backend/backend_harness.h"
#include "synth/bench.h"
#include "synth/lower.h"
#include "synth/serialize.h"
#include "test_synth_util.h"

namespace dseek::backend_test {
namespace {

using namespace dseek::synth;
using namespace dseek::synth::test;

struct SynthCase {
  std::string name;
  Operator op;
  Valuation values;
};

std::vector<SynthCase> cases() {
  LinearProblem p;
  ConvProblem c;
  std::vector<SynthCase> out{
      {"dense", dense_linear(p), {257, 96, 130, 8, 4}},
      {"low_rank", low_rank(p), {257, 96, 130, 8, 2}},
      {"grouped", grouped_linear(p), {19, 96, 132, 8, 4}},
      {"conv2d", conv2d(c), {2, 5, 7, 9, 11, 3}},
      {"depthwise", depthwise_conv2d(c), {3, 7, 7, 13, 5, 3}},
      {"stride",
       build({p.sT, p.sdout},
             {share_action(1, 0), stride_action(1, Size::constant(2)), finalize_action({0, 1})}),
       {33, 6, 17, 2, 3}},
      {"broadcast_sum",
       build({p.sT, p.sdout}, {expand_action(1), reduce_action(p.sdin), finalize_action({0, 1})}),
       {33, 19, 5, 2, 3}},
      {"unused_reduce",
       build({p.sT, p.sdin},
             {reduce_action(p.sr), expand_action(2), share_action(1, 0), finalize_action({0, 1})}),
       {33, 19, 5, 3, 3}},
  };
  // The operator files of docs/synth-ops (a per-token broadcast product, rank-1 and rank-4
  // factorisations, a weight gathered transposed, a weight summed alone) at a shape where their
  // contractions take both of batched_matmul's GPU paths (k <= 16 and longer).
  for (const char* name : {"kron-g-48c8ebd6", "lowrank-r=din_g-5fb44bd6", "lowrank-r=g-e1a5d649",
                           "rank1-63a5697c"}) {
    std::ifstream in(std::string(DSEEK_SOURCE_DIR) + "/docs/synth-ops/" + name + ".json");
    std::stringstream text;
    text << in.rdbuf();
    BenchOperator b;
    b.label = name;
    b.record = operator_from_json(text.str());
    out.push_back({name, b.record.op, bench_valuation(b, 67, {"s", 96, 136})});
  }
  const Spec spec = random_linear_spec(p, {5, 6, 6, 2, 3});
  int i = 0;
  for (const Operator& op : random_operators(spec, 30, 23))
    out.push_back({"random " + std::to_string(i++), op, spec.valuations[0]});
  return out;
}

// A case lowered, with fresh random input and weights (drawn in that order) as the CPU reference
// sees them (rounded to `act`, in f32) and as the GPU gets them (in `act`).
struct LoweredInputs {
  LoweredPlan plan;
  Tensor x, x_gpu;
  std::vector<Tensor> w, w_gpu;
};

LoweredInputs lowered_inputs(const SynthCase& c, DType act, std::mt19937& rng) {
  LoweredInputs in;
  in.plan = lower(c.op, c.values);
  const Tensor x = rand(in.plan.input_shape, rng);
  in.x = rounded(x, act);
  in.x_gpu = on_gpu(x, act);
  for (const Shape& s : in.plan.weight_shapes) {
    const Tensor t = rand(s, rng);
    in.w.push_back(rounded(t, act));
    in.w_gpu.push_back(on_gpu(t, act));
  }
  return in;
}

TEST(BackendOps, SynthLoweredForwardBackward) {
  DSEEK_REQUIRE_CUDA();
  std::mt19937 rng(77);
  for (const SynthCase& c : cases()) {
    const LoweredInputs in = lowered_inputs(c, DType::F32, rng);
    const LoweredPlan& plan = in.plan;
    const Tensor dy = rand(plan.output_shape, rng);
    LoweredCache cpu_cache, gpu_cache;
    const Tensor want = lowered_forward(plan, in.x, in.w, &cpu_cache);
    const Tensor got = lowered_forward(plan, in.x_gpu, in.w_gpu, &gpu_cache);
    EXPECT_TRUE(got.is_cuda());
    expect_close("synth " + c.name, plan.output_shape, DType::F32, want, got);
    const LoweredGrads gw = lowered_backward(plan, cpu_cache, dy);
    const LoweredGrads gg = lowered_backward(plan, gpu_cache, dy.to(Device::CUDA));
    EXPECT_TRUE(gg.dinput.is_cuda());
    expect_close("synth " + c.name + " dx", plan.input_shape, DType::F32, gw.dinput, gg.dinput);
    for (size_t k = 0; k < in.w.size(); ++k)
      expect_close("synth " + c.name + " dw" + std::to_string(k), plan.weight_shapes[k], DType::F32,
                   gw.dweights[k], gg.dweights[k]);
  }
}

// The forward in bf16 (input and weights bf16, every register bf16, GEMMs accumulating in f32: the
// dtype `dseek synth bench --dtype bf16` times) against the CPU's f32 forward on the same
// bf16-rounded values. Each step rounds its output to bf16, and a plan chains up to a few steps,
// so the tolerance is relative to the output's largest magnitude.
TEST(BackendOps, SynthLoweredForwardBf16) {
  DSEEK_REQUIRE_CUDA();
  std::mt19937 rng(78);
  for (const SynthCase& c : cases()) {
    const LoweredInputs in = lowered_inputs(c, DType::BF16, rng);
    const Tensor want = lowered_forward(in.plan, in.x, in.w);
    const Tensor got = lowered_forward(in.plan, in.x_gpu, in.w_gpu);
    EXPECT_TRUE(got.is_cuda());
    EXPECT_EQ(got.dtype(), DType::BF16) << c.name;
    double scale = 0.0;
    for (float v : want.to_vector()) scale = std::max(scale, double(std::abs(v)));
    expect_close("synth bf16 " + c.name, in.plan.output_shape, DType::BF16, want, got,
                 Tolerance{3e-2 * scale, 1.6e-2});
  }
}

}  // namespace
}  // namespace dseek::backend_test
