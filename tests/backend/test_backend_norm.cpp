// RMSNorm on CUDA against the CPU op: forward, dx, and dw (overwritten and accumulated); the fused
// residual add + norm (add_rms_norm) against the CPU composition and, bit for bit, against the
// GPU's own add_inplace then rms_norm (the decode path switched to it without changing a logit).
#include "backend/backend_harness.h"
#include "ops/activation.h"
#include "ops/norm.h"

namespace dseek::backend_test {
namespace {

const std::vector<std::pair<int64_t, int64_t>> kShapes = {{1, 7}, {3, 64}, {130, 512}, {17, 7168}, {257, 2048}};

TEST(BackendOps, RmsNorm) {
  DSEEK_REQUIRE_CUDA();
  std::mt19937 rng(11);
  for (DType act : kActDtypes) {
    for (auto [rows, D] : kShapes) {
      const Shape shape{rows, D};
      Tensor x = rand(shape, rng, 2.0f), w = rand({D}, rng).to(DType::BF16);
      const Tensor want = ops::rms_norm(rounded(x, act), w, 1e-6);
      const Tensor got = ops::rms_norm(on_gpu(x, act), on_gpu(w, DType::BF16), 1e-6);
      EXPECT_EQ(got.dtype(), act);
      EXPECT_TRUE(got.is_cuda());
      expect_close("rms_norm", shape, act, want, got);
    }
  }
}

TEST(BackendOps, AddRmsNorm) {
  DSEEK_REQUIRE_CUDA();
  std::mt19937 rng(14);
  for (DType act : kActDtypes) {
    for (auto [rows, D] : kShapes) {
      const Shape shape{rows, D};
      const Tensor h = rand(shape, rng, 2.0f), x = rand(shape, rng, 2.0f);
      const Tensor w = rand({D}, rng).to(DType::BF16);
      Tensor h_cpu = rounded(h, act);
      const Tensor want = ops::add_rms_norm(h_cpu, rounded(x, act), w, 1e-6);
      Tensor h_gpu = on_gpu(h, act);
      const Tensor got = ops::add_rms_norm(h_gpu, on_gpu(x, act), on_gpu(w, DType::BF16), 1e-6);
      EXPECT_EQ(got.dtype(), act);
      expect_close("add_rms_norm", shape, act, want, got);
      expect_close("add_rms_norm h += x", shape, act, h_cpu, h_gpu);
      // The unfused GPU ops on the same inputs: the same bits in both outputs.
      Tensor h_two = on_gpu(h, act);
      ops::add_inplace(h_two, on_gpu(x, act));
      const Tensor two = ops::rms_norm(h_two, on_gpu(w, DType::BF16), 1e-6);
      EXPECT_EQ(h_two.to(DType::F32).to_vector(), h_gpu.to(DType::F32).to_vector());
      EXPECT_EQ(two.to(DType::F32).to_vector(), got.to(DType::F32).to_vector());
    }
  }
  Tensor h = rand({2, 8}, rng);
  EXPECT_THROW(ops::add_rms_norm(h, rand({2, 7}, rng), rand({8}, rng), 1e-6), Error);
}

TEST(BackendOps, RmsNormBackward) {
  DSEEK_REQUIRE_CUDA();
  std::mt19937 rng(12);
  for (DType act : kActDtypes) {
    for (auto [rows, D] : kShapes) {
      const Shape shape{rows, D};
      Tensor x = rand(shape, rng, 2.0f), w = rand({D}, rng), dy = rand(shape, rng);
      const Tensor xr = rounded(x, act), dyr = rounded(dy, act);
      const ops::RmsNormGrads want = ops::rms_norm_backward(xr, w, 1e-6, dyr);
      // Accumulating form: start dw from a known value and check it is added to.
      const Tensor dw0 = rand({D}, rng);
      Tensor dx = Tensor::poisoned(shape, act, Device::CUDA);
      Tensor dw = dw0.to(Device::CUDA);
      ops::rms_norm_backward_into(on_gpu(x, act), on_gpu(w), 1e-6, on_gpu(dy, act), dx, &dw, true);
      expect_close("rms_norm_backward dx", shape, act, want.dx, dx);
      std::vector<float> dw_want = want.dweight.to_vector(), base = dw0.to_vector();
      for (size_t j = 0; j < dw_want.size(); ++j) dw_want[j] += base[j];
      // dw sums rows·x·dy products: f32 accumulation in another order, bf16-rounded inputs only.
      expect_close("rms_norm_backward dw (+=)", shape, act, Tensor::from_vector(dw_want, {D}), dw,
                   {1e-3, 1e-3});
      const ops::RmsNormGrads fresh = ops::rms_norm_backward(on_gpu(x, act), on_gpu(w), 1e-6,
                                                             on_gpu(dy, act));
      expect_close("rms_norm_backward dw", shape, act, want.dweight, fresh.dweight, {1e-3, 1e-3});
    }
  }
}

TEST(BackendOps, MixedDevicesAreAnError) {
  DSEEK_REQUIRE_CUDA();
  std::mt19937 rng(13);
  Tensor x = rand({2, 8}, rng), w = rand({8}, rng);
  try {
    ops::rms_norm(x.to(Device::CUDA), w, 1e-6);
    FAIL() << "no error";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("different devices"), std::string::npos) << e.what();
  }
}

}  // namespace
}  // namespace dseek::backend_test
