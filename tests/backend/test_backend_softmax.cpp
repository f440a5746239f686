// softmax (forward over rows, backward) on CUDA against the CPU ops, up to a vocabulary-sized
// row; the kernels are also run directly, with a row stride (ld > n) for the forward and into a
// NaN-poisoned dx for the backward.
#include "backend/backend_harness.h"
#include "ops/cuda/cuda_ops.h"
#include "ops/softmax.h"

namespace dseek::backend_test {
namespace {

const std::vector<Shape> kShapes = {{1, 1}, {3, 7}, {19, 111}, {257, 7168}, {2, 129280}};

// Probabilities of a 129280-wide row are ~1e-5, far below the harness's default absolute
// tolerance, so the bound here is mostly relative: f32 differs from the CPU only in the order of
// the sum (and expf's last ulp); bf16 adds one output rounding (2^-9).
Tolerance softmax_tolerance(DType act) {
  return act == DType::BF16 ? Tolerance{1e-5, 1.6e-2} : Tolerance{1e-6, 1e-4};
}

TEST(BackendOps, Softmax) {
  DSEEK_REQUIRE_CUDA();
  std::mt19937 rng(31);
  for (DType act : kActDtypes) {
    for (const Shape& shape : kShapes) {
      const Tensor x = rand(shape, rng, 8.0f);
      const Tensor want = ops::softmax(rounded(x, act));
      const Tensor xg = on_gpu(x, act);
      const Tensor got = ops::softmax(xg);
      EXPECT_EQ(got.dtype(), act);
      EXPECT_TRUE(got.is_cuda());
      expect_close("softmax", shape, act, want, got, softmax_tolerance(act));
      expect_close("softmax keeps its input", shape, act, rounded(x, act), xg, {0, 0});
    }
  }
  // A 3-d input is rows of its last dimension.
  const Tensor x = rand({2, 3, 5}, rng, 4.0f);
  expect_close("softmax 3-d", {2, 3, 5}, DType::F32, ops::softmax(x), ops::softmax(on_gpu(x)),
               softmax_tolerance(DType::F32));
}

#ifdef DSEEK_HAS_CUDA
TEST(BackendOps, SoftmaxRowsStrided) {
  DSEEK_REQUIRE_CUDA();
  std::mt19937 rng(32);
  for (DType act : kActDtypes) {
    for (const Shape& shape : kShapes) {
      const int64_t rows = shape[0], n = shape[1], ld = n + 5;
      const Tensor buf = rand({rows, ld}, rng, 8.0f);
      const Tensor want = ops::softmax(rounded(buf, act).slice(1, 0, n));
      Tensor got = on_gpu(buf, act);
      ops::cuda::softmax_rows(got.raw(), rows, n, ld, act);
      expect_close("softmax_rows ld=n+5", shape, act, want, got.slice(1, 0, n),
                   softmax_tolerance(act));
      // The 5 entries between rows are not touched.
      expect_close("softmax_rows ld=n+5 gap", shape, act, rounded(buf, act).slice(1, n, ld),
                   got.slice(1, n, ld), {0, 0});
    }
  }
}
#endif

TEST(BackendOps, SoftmaxBackward) {
  DSEEK_REQUIRE_CUDA();
  std::mt19937 rng(33);
  for (DType act : kActDtypes) {
    for (const Shape& shape : kShapes) {
      // y a real softmax output (rows summing to 1), dy arbitrary.
      const Tensor y = rounded(ops::softmax(rand(shape, rng, 4.0f)), act);
      const Tensor dy = rand(shape, rng);
      const Tensor want = ops::softmax_backward(y, rounded(dy, act));
      const Tensor yg = on_gpu(y, act), dyg = on_gpu(dy, act);
      const Tensor got = ops::softmax_backward(yg, dyg);
      EXPECT_EQ(got.dtype(), act);
      EXPECT_TRUE(got.is_cuda());
      expect_close("softmax_backward", shape, act, want, got, softmax_tolerance(act));
#ifdef DSEEK_HAS_CUDA
      Tensor dx = Tensor::poisoned(shape, act, Device::CUDA);
      ops::cuda::softmax_backward_rows(yg.raw(), dyg.raw(), dx.raw(), shape[0], shape[1], act);
      expect_close("softmax_backward (poisoned dx)", shape, act, want, dx, softmax_tolerance(act));
#endif
    }
  }
}

}  // namespace
}  // namespace dseek::backend_test
